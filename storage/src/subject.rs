//! Subject syntax: validation and wildcard matching, as nats-server defines them.
//! The one definition for the data plane and the store.
//!
//! Subjects are byte strings of `.`-separated, non-empty tokens without whitespace.
//! `*` as a whole token matches exactly one token and `>` as the last whole token
//! matches one or more; inside a longer token both are ordinary characters.

use std::borrow::Borrow;
use std::cell::Cell;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::rc::Rc;

/// A stored subject, interned: one allocation per distinct subject, shared by the
/// index entries of its messages through a one-word pointer (an `Rc<str>` takes two,
/// and an entry is paid once per message). It also carries where the index keeps
/// its sequences, so appending a message to its subject hashes nothing. Compares and
/// hashes as its string.
#[derive(Clone)]
pub struct Subject(Rc<Interned>);

struct Interned {
    name: Box<str>,
    /// The index's slot for this subject's sequences; [`NO_SLOT`] while it has none.
    slot: Cell<u32>,
}

const NO_SLOT: u32 = u32::MAX;

impl Subject {
    pub fn new(subject: &str) -> Subject {
        Subject(Rc::new(Interned {
            name: subject.into(),
            slot: Cell::new(NO_SLOT),
        }))
    }

    pub fn as_str(&self) -> &str {
        &self.0.name
    }

    /// Identifies the shared allocation: equal for every clone, never reused while
    /// one lives.
    pub fn addr(&self) -> usize {
        Rc::as_ptr(&self.0) as usize
    }

    pub(crate) fn slot(&self) -> Option<usize> {
        let slot = self.0.slot.get();
        (slot != NO_SLOT).then_some(slot as usize)
    }

    /// Seen by every clone.
    pub(crate) fn set_slot(&self, slot: Option<usize>) {
        let slot = slot.map_or(NO_SLOT, |s| u32::try_from(s).unwrap_or(NO_SLOT));
        self.0.slot.set(slot);
    }
}

impl Deref for Subject {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Subject {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Subject {
    fn eq(&self, other: &Subject) -> bool {
        Rc::ptr_eq(&self.0, &other.0) || self.as_str() == other.as_str()
    }
}

impl Eq for Subject {}

impl Hash for Subject {
    /// As `str` hashes, which `Borrow<str>` lookups require.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Token separator.
pub const SEP: u8 = b'.';
/// Single-token wildcard.
pub const PWC: u8 = b'*';
/// Trailing multi-token wildcard.
pub const FWC: u8 = b'>';

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'\x0c')
}

/// A subject a client may subscribe to: wildcards allowed, `>` only last.
pub fn is_valid_subject(subject: &[u8]) -> bool {
    validate(subject, true)
}

/// A subject without empty or wildcard tokens: nats-server's check of what
/// pedantic clients publish to (it looks at nothing else).
pub fn is_valid_literal_subject(subject: &[u8]) -> bool {
    subject
        .split(|&b| b == SEP)
        .all(|t| !t.is_empty() && !(t.len() == 1 && (t[0] == PWC || t[0] == FWC)))
}

/// What nats-server's sublist accepts from a client's SUB: no empty token and
/// nothing after `>`. Any other byte is part of a token (the protocol parser has
/// already split the arguments on whitespace).
pub fn is_valid_subscription_subject(subject: &[u8]) -> bool {
    let mut tokens = subject.split(|&b| b == SEP).peekable();
    while let Some(token) = tokens.next() {
        if token.is_empty() || (token == [FWC] && tokens.peek().is_some()) {
            return false;
        }
    }
    true
}

fn validate(subject: &[u8], allow_wildcards: bool) -> bool {
    if subject.is_empty() {
        return false;
    }
    if std::str::from_utf8(subject).is_err() {
        return false;
    }
    let mut tokens = subject.split(|&b| b == SEP).peekable();
    while let Some(token) = tokens.next() {
        if token.is_empty() || token.iter().any(|&b| is_space(b) || b == 0) {
            return false;
        }
        if token.len() == 1 {
            match token[0] {
                PWC if !allow_wildcards => return false,
                FWC if !allow_wildcards || tokens.peek().is_some() => return false,
                _ => {}
            }
        }
    }
    true
}

/// True when the subject contains a wildcard token.
pub fn has_wildcard(subject: &[u8]) -> bool {
    subject
        .split(|&b| b == SEP)
        .any(|t| t.len() == 1 && (t[0] == PWC || t[0] == FWC))
}

/// Does the literal `subject` match the (possibly wildcard) `filter`?
pub fn matches(filter: &[u8], subject: &[u8]) -> bool {
    let mut f = filter.split(|&b| b == SEP);
    let mut s = subject.split(|&b| b == SEP);
    loop {
        match (f.next(), s.next()) {
            (None, None) => return true,
            (Some(ft), Some(st)) => {
                if ft.len() == 1 && ft[0] == FWC {
                    return true;
                }
                if !(ft.len() == 1 && ft[0] == PWC) && ft != st {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// True when a stream or consumer `filter` is empty or `>`: everything matches.
pub fn is_match_all(filter: &str) -> bool {
    filter.is_empty() || filter == ">"
}

/// Whether the literal `subject` matches a stream or consumer `filter`, where an
/// empty filter means everything.
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    filter.is_empty() || matches(filter.as_bytes(), subject.as_bytes())
}

/// A literal subject a message may be stored under: non-empty tokens, no wildcards,
/// no whitespace, short enough for the record format.
pub fn is_valid_literal(subject: &str) -> bool {
    !subject.is_empty()
        && subject.len() <= u16::MAX as usize
        && subject.split('.').all(|t| {
            !t.is_empty() && t != "*" && t != ">" && !t.bytes().any(|b| b.is_ascii_whitespace())
        })
}

/// Whether some literal subject matches both patterns (nats-server's
/// `SubjectsCollide`): two streams may not both capture it.
pub fn collide(a: &str, b: &str) -> bool {
    let mut ta = a.split('.');
    let mut tb = b.split('.');
    loop {
        match (ta.next(), tb.next()) {
            (None, None) => return true,
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (None, _) | (_, None) => return false,
            (Some(x), Some(y)) if x == "*" || y == "*" || x == y => {}
            _ => return false,
        }
    }
}

/// Whether every subject `subject` matches is also matched by `test`
/// (nats-server's `subjectIsSubsetMatch`).
pub fn is_subset_match(subject: &str, test: &str) -> bool {
    let s: Vec<&str> = subject.split('.').collect();
    for (i, t) in test.split('.').enumerate() {
        if t == ">" {
            return s.len() > i;
        }
        match s.get(i) {
            None | Some(&">") => return false,
            Some(_) if t == "*" => {}
            Some(&x) if x == "*" || x != t => return false,
            Some(_) => {}
        }
    }
    s.len() == test.split('.').count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collisions_and_subsets() {
        assert!(collide("a.*", "a.b"));
        assert!(collide("a.>", "*.b.c"));
        assert!(!collide("a.>", "a"));
        assert!(!collide("a.b", "a.c"));
        assert!(!collide("a.*", "a.b.c"));
        assert!(collide(">", "x"));
        assert!(is_subset_match("$JS.EVENT.x", "$JS.EVENT.>"));
        assert!(is_subset_match("a.b", "a.*"));
        assert!(is_subset_match("a.*.c", "a.>"));
        assert!(!is_subset_match("a.*", "a.b"));
        assert!(!is_subset_match("a.>", "a.*"));
        assert!(!is_subset_match("$JS.>", "$JS.EVENT.>"));
        assert!(!is_subset_match("a", "a.>"));
    }

    #[test]
    fn validation() {
        for ok in [
            "foo",
            "foo.bar",
            "foo.*",
            "foo.>",
            "*",
            ">",
            "*.*.>",
            "a*.b>",
            "$JS.API.>",
        ] {
            assert!(is_valid_subject(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            ".",
            "foo.",
            ".foo",
            "foo..bar",
            "foo.>.bar",
            "foo bar",
            "foo\tbar",
            ">.a",
        ] {
            assert!(!is_valid_subject(bad.as_bytes()), "{bad:?}");
        }
        assert!(is_valid_literal_subject(b"foo.bar"));
        assert!(is_valid_literal_subject(b"a*.b>"));
        assert!(is_valid_literal_subject(b"t.\x00\xff"));
        assert!(!is_valid_literal_subject(b"foo.*"));
        assert!(!is_valid_literal_subject(b"foo.>"));
        assert!(!is_valid_literal_subject(b"foo..bar"));
        for ok in [&b"a.\x00"[..], b"\xff.b", b">", b"a.*.>", b"a\rb"] {
            assert!(is_valid_subscription_subject(ok), "{ok:?}");
        }
        for bad in [&b""[..], b".a", b"a.", b"a..b", b"a.>.b", b">.a"] {
            assert!(!is_valid_subscription_subject(bad), "{bad:?}");
        }
        assert!(!is_valid_subject(&[0xff, 0xfe]));
    }

    #[test]
    fn matching() {
        assert!(matches(b"foo.*", b"foo.bar"));
        assert!(!matches(b"foo.*", b"foo.bar.baz"));
        assert!(matches(b"foo.>", b"foo.bar.baz"));
        assert!(!matches(b"foo.>", b"foo"));
        assert!(matches(b">", b"foo"));
        assert!(matches(b"*.bar", b"foo.bar"));
        assert!(!matches(b"foo", b"foo.bar"));
        assert!(matches(b"foo.bar", b"foo.bar"));
        assert!(has_wildcard(b"a.*"));
        assert!(!has_wildcard(b"a*.b"));
    }

    #[test]
    fn stream_filters() {
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
        assert!(has_wildcard(b"a.*.c"));
        assert!(!has_wildcard(b"a.b"));
    }
}
