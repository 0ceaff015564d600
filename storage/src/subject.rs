//! NATS subject matching: tokens split on `.`, `*` matches exactly one token, `>` matches
//! one or more trailing tokens.

/// True when `filter` is empty or `>`: everything matches.
pub fn is_match_all(filter: &str) -> bool {
    filter.is_empty() || filter == ">"
}

/// True when the filter contains a wildcard token.
pub fn has_wildcard(filter: &str) -> bool {
    filter.split('.').any(|t| t == "*" || t == ">")
}

/// Whether the literal `subject` matches `filter`. An empty filter matches everything.
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    if filter.is_empty() {
        return true;
    }
    let mut st = subject.split('.');
    let mut ft = filter.split('.').peekable();
    while let Some(f) = ft.next() {
        match f {
            ">" => return ft.peek().is_none() && st.next().is_some(),
            "*" => {
                if st.next().is_none() {
                    return false;
                }
            }
            lit => match st.next() {
                Some(s) if s == lit => {}
                _ => return false,
            },
        }
    }
    st.next().is_none()
}

/// A literal subject a message may be stored under: non-empty tokens, no wildcards,
/// no whitespace.
pub fn is_valid_literal(subject: &str) -> bool {
    !subject.is_empty()
        && subject.len() <= u16::MAX as usize
        && subject.split('.').all(|t| {
            !t.is_empty() && t != "*" && t != ">" && !t.bytes().any(|b| b.is_ascii_whitespace())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching() {
        assert!(subject_matches("", "a.b"));
        assert!(subject_matches(">", "a"));
        assert!(subject_matches("a.>", "a.b.c"));
        assert!(!subject_matches("a.>", "a"));
        assert!(subject_matches("a.*", "a.b"));
        assert!(!subject_matches("a.*", "a.b.c"));
        assert!(subject_matches("*.b.*", "x.b.y"));
        assert!(!subject_matches("a.b", "a.b.c"));
        assert!(!subject_matches("a.b.c", "a.b"));
        assert!(subject_matches("a.b", "a.b"));
        assert!(!is_valid_literal("a..b"));
        assert!(!is_valid_literal("a.*"));
        assert!(is_valid_literal("a.b"));
        assert!(has_wildcard("a.*.c"));
        assert!(!has_wildcard("a.b"));
    }
}
