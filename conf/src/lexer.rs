//! Tokenizer for the nats-server configuration format.
//!
//! The format is context sensitive (an unquoted `127.0.0.1:4222` is one string, `1k` is
//! an integer, `1ks` a string, a key ends at the first blank, ...), so the lexer is a
//! state machine with an explicit stack of "where to go after this value" states, the
//! same shape nats-server's `conf/lex.go` has. Keeping that shape is what makes the
//! corner cases come out the same as the reference server; places where we knowingly
//! differ are marked `DEVIATION`.
//!
//! The stack lives on the heap, so arbitrarily deep input cannot overflow the Rust stack
//! here; the parser bounds the nesting depth of the value tree it builds.

use std::collections::VecDeque;

/// One lexical item. Integer/float/datetime keep their source text; the parser converts
/// them so that conversion errors carry the item's position.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    Key(String),
    Str(String),
    Bool(bool),
    Integer(String),
    Float(String),
    DateTime(String),
    Variable(String),
    Include(String),
    ArrayStart,
    ArrayEnd,
    MapStart,
    MapEnd,
    Eof,
    Error(String),
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Token {
    pub tok: Tok,
    /// 1-based line of the item's first character.
    pub line: u32,
    /// 1-based column (in characters) of the item's first character.
    pub col: u32,
}

/// Lexer states that can be resumed from the stack (or jumped to directly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Top,
    TopValueEnd,
    BlockStart,
    BlockValueEnd,
    BlockEnd,
    KeyStart,
    Key,
    KeyEnd,
    IncludeStart,
    Value,
    ArrayValue,
    ArrayValueEnd,
    MapKeyStart,
    MapKey,
    MapKeyEnd,
    MapValue,
    MapValueEnd,
}

/// Size suffixes that turn a number into a "convenient number" (`1k`, `2GiB`).
fn is_size_suffix(c: char) -> bool {
    matches!(
        c,
        'k' | 'K' | 'm' | 'M' | 'g' | 'G' | 't' | 'T' | 'p' | 'P' | 'e' | 'E'
    )
}

/// Blanks that may separate tokens on one line (nats-server's `isWhitespace`).
fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn is_nl(c: char) -> bool {
    c == '\n' || c == '\r'
}

/// Renders the offending character in an error message; nats-server escapes only '\n'.
fn show(c: Option<char>) -> String {
    match c {
        None => "EOF".to_string(),
        Some('\n') => "\\n".to_string(),
        Some('\r') => "\\r".to_string(),
        Some(c) => c.to_string(),
    }
}

/// `include` is a keyword only for an unquoted key followed by whitespace. nats-server
/// compares after Go's `strings.ToLower`, which maps e.g. 'İ' to 'i', so compare
/// character-wise on the first lowercase mapping rather than with ASCII folding only.
fn is_include_keyword(s: &str) -> bool {
    let mut n = 0;
    for (c, want) in s.chars().zip("include".chars()) {
        n += 1;
        if c != want && c.to_lowercase().next() != Some(want) {
            return false;
        }
    }
    n == 7 && s.chars().count() == 7
}

fn is_bool_word(s: &str) -> Option<bool> {
    const TRUE: [&str; 3] = ["true", "yes", "on"];
    const FALSE: [&str; 3] = ["false", "no", "off"];
    if TRUE.iter().any(|w| s.eq_ignore_ascii_case(w)) {
        Some(true)
    } else if FALSE.iter().any(|w| s.eq_ignore_ascii_case(w)) {
        Some(false)
    } else {
        None
    }
}

pub(super) struct Lexer<'a> {
    src: &'a str,
    /// Byte offset of the next character.
    pos: usize,
    line: u32,
    /// 1-based column (in characters) of the next character. Tracked incrementally so
    /// that positions cost O(1) even on one very long line (minified JSON configs).
    col: u32,
    stack: Vec<State>,
    /// `None` once EOF or an error has been emitted.
    state: Option<State>,
    queue: VecDeque<Token>,
    /// Start (byte offset and position) of the key being lexed across states.
    key_start: usize,
    key_mark: (u32, u32),
}

impl<'a> Lexer<'a> {
    pub(super) fn new(src: &'a str) -> Self {
        // nats-server's lexer uses rune 0 as its end-of-input marker, so everything
        // after a NUL byte is ignored there; do the same so both accept the same files.
        let src = match src.find('\0') {
            Some(i) => &src[..i],
            None => src,
        };
        Lexer {
            src,
            pos: 0,
            line: 1,
            col: 1,
            stack: Vec::new(),
            state: Some(State::Top),
            queue: VecDeque::new(),
            key_start: 0,
            key_mark: (1, 1),
        }
    }

    /// Returns the next item; after `Eof` or `Error` it keeps returning `Eof`.
    pub(super) fn next_token(&mut self) -> Token {
        loop {
            if let Some(t) = self.queue.pop_front() {
                return t;
            }
            match self.state {
                Some(s) => self.state = self.run(s),
                None => {
                    let (line, col) = self.mark();
                    return Token {
                        tok: Tok::Eof,
                        line,
                        col,
                    };
                }
            }
        }
    }

    fn run(&mut self, s: State) -> Option<State> {
        match s {
            State::Top => self.top(),
            State::TopValueEnd => self.top_value_end(),
            State::BlockStart => self.block_start(),
            State::BlockValueEnd => self.block_value_end(),
            State::BlockEnd => self.block_end(),
            State::KeyStart => self.key_start(),
            State::Key => self.key(),
            State::KeyEnd => self.key_end(),
            State::IncludeStart => self.include(),
            State::Value => self.value(),
            State::ArrayValue => self.array_value(),
            State::ArrayValueEnd => self.array_value_end(),
            State::MapKeyStart => self.map_key_start(),
            State::MapKey => self.map_key(),
            State::MapKeyEnd => self.map_key_end(),
            State::MapValue => self.map_value(),
            State::MapValueEnd => self.map_value_end(),
        }
    }

    // ---- character helpers -------------------------------------------------------

    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn peek2(&self) -> Option<char> {
        let mut it = self.src[self.pos..].chars();
        it.next();
        it.next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        if c == '\n' {
            self.line = self.line.saturating_add(1);
            self.col = 1;
        } else {
            self.col = self.col.saturating_add(1);
        }
        Some(c)
    }

    /// Current (line, column), both 1-based; columns count characters.
    fn mark(&self) -> (u32, u32) {
        (self.line, self.col)
    }

    fn emit(&mut self, tok: Tok, (line, col): (u32, u32)) {
        self.queue.push_back(Token { tok, line, col });
    }

    /// Emits an error at the current position and stops lexing.
    fn error(&mut self, msg: impl Into<String>) -> Option<State> {
        let m = self.mark();
        self.emit(Tok::Error(msg.into()), m);
        None
    }

    /// Emits an error at `at` (the start of the offending construct) and stops lexing.
    fn error_at(&mut self, at: (u32, u32), msg: impl Into<String>) -> Option<State> {
        self.emit(Tok::Error(msg.into()), at);
        None
    }

    fn eof(&mut self) -> Option<State> {
        let m = self.mark();
        self.emit(Tok::Eof, m);
        None
    }

    fn pop(&mut self) -> Option<State> {
        match self.stack.pop() {
            Some(s) => Some(s),
            None => self.error("BUG in lexer: no states to pop."),
        }
    }

    /// Consumes a comment up to (not including) the end of the line.
    fn skip_comment(&mut self) {
        while let Some(c) = self.peek() {
            if is_nl(c) {
                break;
            }
            self.bump();
        }
    }

    /// At a '/', consumes a `//` comment if there is one.
    fn try_slash_comment(&mut self) -> bool {
        if self.peek2() == Some('/') {
            self.skip_comment();
            true
        } else {
            false
        }
    }

    // ---- top level ---------------------------------------------------------------

    fn top(&mut self) -> Option<State> {
        loop {
            match self.peek() {
                Some(c) if c.is_whitespace() => {
                    self.bump();
                }
                // A top-level `{ ... }` wrapper (JSON-style configs) is transparent.
                Some('{') => {
                    self.bump();
                    self.stack.push(State::Top);
                    return Some(State::BlockStart);
                }
                Some('#') => self.skip_comment(),
                Some('/') => {
                    if !self.try_slash_comment() {
                        self.bump();
                        return self.error("Unexpected EOF.");
                    }
                }
                None => return self.eof(),
                Some(_) => {
                    self.stack.push(State::TopValueEnd);
                    return Some(State::KeyStart);
                }
            }
        }
    }

    fn top_value_end(&mut self) -> Option<State> {
        loop {
            match self.peek() {
                Some('#') => {
                    self.skip_comment();
                    return Some(State::Top);
                }
                Some('/') => {
                    if self.try_slash_comment() {
                        return Some(State::Top);
                    }
                    // nats-server treats a lone '/' here like a blank.
                    self.bump();
                }
                Some(c) if is_blank(c) => {
                    self.bump();
                }
                None => return Some(State::Top),
                Some('\n' | '\r' | ';' | ',' | '}') => {
                    self.bump();
                    return Some(State::Top);
                }
                c => {
                    return self.error(format!(
                        "Expected a top-level value to end with a new line, comment or EOF, but got '{}' instead.",
                        show(c)
                    ));
                }
            }
        }
    }

    fn block_start(&mut self) -> Option<State> {
        loop {
            match self.peek() {
                Some(c) if c.is_whitespace() => {
                    self.bump();
                }
                Some('{') => {
                    self.bump();
                    self.stack.push(State::BlockEnd);
                }
                Some('}') => {
                    self.bump();
                    return self.pop();
                }
                Some('#') => self.skip_comment(),
                Some('/') => {
                    if !self.try_slash_comment() {
                        self.bump();
                        return self.error("Unexpected EOF.");
                    }
                }
                // nats-server accepts a missing closing '}' of the wrapper.
                None => return self.eof(),
                Some(_) => {
                    self.stack.push(State::BlockValueEnd);
                    return Some(State::KeyStart);
                }
            }
        }
    }

    fn block_value_end(&mut self) -> Option<State> {
        loop {
            match self.peek() {
                Some('#') => self.skip_comment(),
                Some('/') => {
                    if !self.try_slash_comment() {
                        self.bump();
                    }
                }
                Some(c) if is_blank(c) => {
                    self.bump();
                }
                Some('\n' | '\r' | ';' | ',') => {
                    self.bump();
                    return Some(State::BlockStart);
                }
                Some('}') => return Some(State::BlockEnd),
                c => {
                    return self.error(format!(
                        "Expected a block-level value to end with a new line, comment or EOF, but got '{}' instead.",
                        show(c)
                    ));
                }
            }
        }
    }

    fn block_end(&mut self) -> Option<State> {
        loop {
            match self.peek() {
                Some('#') => {
                    self.skip_comment();
                    return Some(State::BlockStart);
                }
                Some('/') => {
                    if self.try_slash_comment() {
                        return Some(State::BlockStart);
                    }
                    self.bump();
                }
                Some(c) if is_nl(c) || is_blank(c) => {
                    self.bump();
                }
                Some(';' | ',') => {
                    self.bump();
                    return Some(State::BlockStart);
                }
                Some('}') => {
                    self.bump();
                    return self.pop();
                }
                c => {
                    return self.error(format!(
                        "Expected a block-level to end with a '}}', but got '{}' instead.",
                        show(c)
                    ));
                }
            }
        }
    }

    // ---- keys at top/block level -------------------------------------------------

    fn key_start(&mut self) -> Option<State> {
        loop {
            match self.peek() {
                Some(c @ ('=' | ':')) => {
                    return self.error(format!("Unexpected key separator '{c}'"));
                }
                Some(c) if c.is_whitespace() => {
                    self.bump();
                }
                Some(q @ ('"' | '\'')) => {
                    let m = self.mark();
                    self.bump();
                    return self.quoted_key(q, m, State::KeyEnd, false);
                }
                _ => {
                    self.key_start = self.pos;
                    self.key_mark = self.mark();
                    self.bump();
                    return Some(State::Key);
                }
            }
        }
    }

    /// A quoted key: no escapes, ends at the matching quote.
    fn quoted_key(&mut self, q: char, m: (u32, u32), next: State, in_map: bool) -> Option<State> {
        let start = self.pos;
        loop {
            match self.peek() {
                Some(c) if c == q => {
                    let key = self.src[start..self.pos].to_string();
                    self.emit(Tok::Key(key), m);
                    self.bump();
                    return Some(next);
                }
                None if in_map => {
                    return self.error(if q == '"' {
                        "Unexpected EOF processing double quoted map key."
                    } else {
                        "Unexpected EOF processing quoted map key."
                    });
                }
                // At top level nats-server ends quietly when nothing followed the quote.
                None if self.pos > start => return self.error("Unexpected EOF."),
                None => return self.eof(),
                Some(_) => {
                    self.bump();
                }
            }
        }
    }

    fn key(&mut self) -> Option<State> {
        loop {
            match self.peek() {
                Some(c) if c.is_whitespace() => return self.key_or_keyword(State::KeyEnd, None),
                Some('=' | ':') | None => {
                    let key = self.src[self.key_start..self.pos].to_string();
                    self.emit(Tok::Key(key), self.key_mark);
                    return Some(State::KeyEnd);
                }
                Some(_) => {
                    self.bump();
                }
            }
        }
    }

    /// An unquoted key followed by whitespace may be the `include` keyword.
    fn key_or_keyword(&mut self, next: State, after_include: Option<State>) -> Option<State> {
        let key = &self.src[self.key_start..self.pos];
        if is_include_keyword(key) {
            if let Some(s) = after_include {
                self.stack.push(s);
            }
            return Some(State::IncludeStart);
        }
        let key = key.to_string();
        self.emit(Tok::Key(key), self.key_mark);
        Some(next)
    }

    fn key_end(&mut self) -> Option<State> {
        loop {
            match self.peek() {
                Some(c) if c.is_whitespace() => {
                    self.bump();
                }
                Some('=' | ':') => {
                    self.bump();
                    return Some(State::Value);
                }
                None => return self.eof(),
                Some(_) => return Some(State::Value),
            }
        }
    }

    fn include(&mut self) -> Option<State> {
        while self.peek().is_some_and(is_blank) {
            self.bump();
        }
        let m = self.mark();
        match self.peek() {
            Some(q @ ('"' | '\'')) => {
                self.bump();
                let start = self.pos;
                loop {
                    match self.bump() {
                        Some(c) if c == q => {
                            let path = self.src[start..self.pos - 1].to_string();
                            self.emit(Tok::Include(path), m);
                            return self.pop();
                        }
                        None if q == '"' => {
                            return self.error("Unexpected EOF in double quoted include")
                        }
                        None => return self.error("Unexpected EOF in quoted include"),
                        Some(_) => {}
                    }
                }
            }
            Some(c) => {
                let what = match c {
                    '[' => Some("start of an array"),
                    '{' => Some("start of a map"),
                    '(' => Some("start of a block"),
                    '-' => Some("start of a number"),
                    c if c.is_ascii_digit() => Some("start of a number"),
                    '\\' => Some("escape sequence"),
                    c if is_nl(c) => Some("new line"),
                    _ => None,
                };
                if let Some(what) = what {
                    return self.error(format!("Expected include value but found {what}"));
                }
            }
            None => {}
        }
        let start = self.pos;
        loop {
            match self.peek() {
                None | Some('\n' | '\r' | ';' | '}' | ' ' | '\t') => {
                    let path = self.src[start..self.pos].to_string();
                    self.emit(Tok::Include(path), m);
                    return self.pop();
                }
                Some('\'') => {
                    let path = self.src[start..self.pos].to_string();
                    self.emit(Tok::Include(path), m);
                    self.bump();
                    return self.pop();
                }
                Some(_) => {
                    self.bump();
                }
            }
        }
    }

    // ---- values --------------------------------------------------------------------

    fn value(&mut self) -> Option<State> {
        loop {
            let m = self.mark();
            match self.peek() {
                Some(c) if is_blank(c) => {
                    self.bump();
                }
                Some('[') => {
                    self.bump();
                    self.emit(Tok::ArrayStart, m);
                    return Some(State::ArrayValue);
                }
                Some('{') => {
                    self.bump();
                    self.emit(Tok::MapStart, m);
                    return Some(State::MapKeyStart);
                }
                Some('\'') => return self.sq_string(),
                Some('"') => return self.dq_string(),
                Some('-') => return self.neg_number(),
                Some('(') => return self.block_string(),
                Some(c) if c.is_ascii_digit() => return self.number(),
                Some('.') => {
                    return self.error("Floats must start with a digit");
                }
                Some(c) if is_nl(c) => {
                    return self.error("Expected value but found new line");
                }
                _ => return self.unquoted(self.pos, m),
            }
        }
    }

    /// Single-quoted string: raw, may span lines.
    fn sq_string(&mut self) -> Option<State> {
        let m = self.mark();
        self.bump();
        let start = self.pos;
        loop {
            match self.bump() {
                Some('\'') => {
                    let s = self.src[start..self.pos - 1].to_string();
                    self.emit(Tok::Str(s), m);
                    return self.pop();
                }
                None if self.pos > start => return self.error("Unexpected EOF."),
                None => return self.eof(),
                Some(_) => {}
            }
        }
    }

    /// Double-quoted string with `\t \n \r \" \\ \xXX` escapes; may span lines.
    fn dq_string(&mut self) -> Option<State> {
        let m = self.mark();
        self.bump();
        let mut buf = Vec::new();
        let mut seg = self.pos;
        loop {
            let at = self.mark();
            match self.bump() {
                Some('\\') => {
                    buf.extend_from_slice(&self.src.as_bytes()[seg..self.pos - 1]);
                    self.escape(&mut buf, at)?;
                    seg = self.pos;
                }
                Some('"') => {
                    buf.extend_from_slice(&self.src.as_bytes()[seg..self.pos - 1]);
                    let s = String::from_utf8_lossy(&buf).into_owned();
                    self.emit(Tok::Str(s), m);
                    return self.pop();
                }
                // Like nats-server: quiet end of input if nothing followed the last
                // quote or escape, an error otherwise.
                None if self.pos > seg => return self.error("Unexpected EOF."),
                None => return self.eof(),
                Some(_) => {}
            }
        }
    }

    /// Decodes one escape (the backslash is already consumed) into `buf`. `\xXX` yields
    /// a raw byte, so strings are assembled as bytes and decoded (lossily) at the end.
    /// Returns `None` after emitting an error located at the backslash, `at`.
    fn escape(&mut self, buf: &mut Vec<u8>, at: (u32, u32)) -> Option<()> {
        let c = self.bump();
        let byte = match c {
            Some('t') => b'\t',
            Some('n') => b'\n',
            Some('r') => b'\r',
            Some('"') => b'"',
            Some('\\') => b'\\',
            Some('x') => {
                let a = self.bump();
                if a.is_some_and(is_nl) {
                    self.error_at(
                        at,
                        "Expected two hexadecimal digits after '\\x', but hit end of line",
                    );
                    return None;
                }
                let b = self.bump();
                if b.is_some_and(is_nl) {
                    self.error_at(
                        at,
                        "Expected two hexadecimal digits after '\\x', but hit end of line",
                    );
                    return None;
                }
                match (
                    a.and_then(|a| a.to_digit(16)),
                    b.and_then(|b| b.to_digit(16)),
                ) {
                    // Two hex digits are at most 0xff, so the cast cannot truncate.
                    (Some(hi), Some(lo)) => (hi * 16 + lo) as u8,
                    _ => {
                        let got: String = a.into_iter().chain(b).collect();
                        self.error_at(
                            at,
                            format!("Expected two hexadecimal digits after '\\x', but got '{got}'"),
                        );
                        return None;
                    }
                }
            }
            c => {
                self.error_at(at, format!(
                    "Invalid escape character '{}'. Only the following escape characters are allowed: \\xXX, \\t, \\n, \\r, \\\", \\\\.",
                    show(c)
                ));
                return None;
            }
        };
        buf.push(byte);
        Some(())
    }

    /// An unquoted string (also booleans and `$variables`) starting at byte `start`;
    /// the characters between `start` and the current position are plain text already.
    fn unquoted(&mut self, start: usize, m: (u32, u32)) -> Option<State> {
        let mut buf = Vec::new();
        let mut seg = start;
        let mut escaped = false;
        loop {
            match self.peek() {
                Some('\\') => {
                    buf.extend_from_slice(&self.src.as_bytes()[seg..self.pos]);
                    let at = self.mark();
                    self.bump();
                    self.escape(&mut buf, at)?;
                    seg = self.pos;
                    escaped = true;
                }
                None | Some('\n' | '\r' | ';' | ',' | ']' | '}' | ' ' | '\t') => {
                    let raw = &self.src[start..self.pos];
                    let tok = if escaped {
                        buf.extend_from_slice(&self.src.as_bytes()[seg..self.pos]);
                        Tok::Str(String::from_utf8_lossy(&buf).into_owned())
                    } else if let Some(b) = is_bool_word(raw) {
                        Tok::Bool(b)
                    } else if let Some(name) = raw.strip_prefix('$') {
                        Tok::Variable(name.to_string())
                    } else {
                        Tok::Str(raw.to_string())
                    };
                    self.emit(tok, m);
                    return self.pop();
                }
                // A quote ends an unquoted string (and is dropped), as in nats-server.
                Some('\'') => {
                    buf.extend_from_slice(&self.src.as_bytes()[seg..self.pos]);
                    let s = String::from_utf8_lossy(&buf).into_owned();
                    self.emit(Tok::Str(s), m);
                    self.bump();
                    return self.pop();
                }
                Some(_) => {
                    self.bump();
                }
            }
        }
    }

    /// `( ... )` block string: everything up to a `)` alone at the start of a line
    /// (followed by a new line or the end of input). The text keeps its new lines.
    fn block_string(&mut self) -> Option<State> {
        let m = self.mark();
        self.bump();
        let start = self.pos;
        loop {
            match self.bump() {
                None => return self.error("Unexpected EOF processing block."),
                Some(')') => {
                    let close = self.pos - 1;
                    let after_nl = close > start && self.src.as_bytes()[close - 1] == b'\n';
                    // DEVIATION: at the very end of input nats-server keeps the ')' in
                    // the string (an off-by-one in its lexer); we never include it.
                    if after_nl && matches!(self.peek(), None | Some('\n')) {
                        let s = self.src[start..close].to_string();
                        self.emit(Tok::Str(s), m);
                        return self.pop();
                    }
                }
                Some(_) => {}
            }
        }
    }

    /// Whether `c` ends a number. DEVIATION: nats-server does not count ']' here, so
    /// `[1, 2]` lexes its last element as the string "2]" and then fails; inside an
    /// array we end the number at ']' so such arrays work. Outside arrays `1]` stays the
    /// string "1]" as in nats-server.
    fn ends_number(&self, c: Option<char>) -> bool {
        match c {
            None => true,
            Some(c) => {
                is_nl(c)
                    || is_blank(c)
                    || matches!(c, '}' | ';' | ',')
                    || (c == ']' && self.stack.last() == Some(&State::ArrayValueEnd))
            }
        }
    }

    /// A value starting with a digit: integer, sized integer, float, datetime, an
    /// IP-like string (`127.0.0.1:4222`) or any other string starting with a digit.
    fn number(&mut self) -> Option<State> {
        let m = self.mark();
        let start = self.pos;
        self.bump();
        loop {
            match self.peek() {
                Some('-') => {
                    self.bump();
                    if self.pos - start != 5 {
                        return self.error("All ISO8601 dates must be in full Zulu form.");
                    }
                    return self.datetime(start, m);
                }
                Some(c) if c.is_ascii_digit() => {
                    self.bump();
                }
                Some('.') => {
                    self.bump();
                    return self.float(start, m);
                }
                Some(c) if is_size_suffix(c) => {
                    self.bump();
                    return self.sized_number(start, m);
                }
                c if self.ends_number(c) => {
                    let raw = self.src[start..self.pos].to_string();
                    self.emit(Tok::Integer(raw), m);
                    return self.pop();
                }
                // Anything else makes it a string; like nats-server the character is
                // taken literally (no escape or quote handling for it).
                // (`None` ends the number, so this is always some other character.)
                _ => {
                    self.bump();
                    return self.unquoted(start, m);
                }
            }
        }
    }

    /// After a size suffix letter: more `b`/`i` letters, then the end of the number.
    fn sized_number(&mut self, start: usize, m: (u32, u32)) -> Option<State> {
        loop {
            match self.peek() {
                Some('b' | 'B' | 'i' | 'I') => {
                    self.bump();
                }
                c if self.ends_number(c) || c.is_some_and(|c| c.is_ascii_digit()) => {
                    let raw = self.src[start..self.pos].to_string();
                    self.emit(Tok::Integer(raw), m);
                    return self.pop();
                }
                // (`None` ends the number, so this is always some other character.)
                _ => {
                    self.bump();
                    return self.unquoted(start, m);
                }
            }
        }
    }

    /// `YYYY-` has been consumed; the rest must be exactly `MM-DDTHH:MM:SSZ`.
    fn datetime(&mut self, start: usize, m: (u32, u32)) -> Option<State> {
        for want in "00-00T00:00:00Z".chars() {
            let got = self.peek();
            if want == '0' {
                if !got.is_some_and(|c| c.is_ascii_digit()) {
                    return self.error(format!(
                        "Expected digit in ISO8601 datetime, but found '{}' instead.",
                        show(got)
                    ));
                }
            } else if got != Some(want) {
                return self.error(format!(
                    "Expected '{want}' in ISO8601 datetime, but found '{}' instead.",
                    show(got)
                ));
            }
            self.bump();
        }
        let raw = self.src[start..self.pos].to_string();
        self.emit(Tok::DateTime(raw), m);
        self.pop()
    }

    /// The '.' has been consumed: a float, or an IP address if another '.' follows.
    fn float(&mut self, start: usize, m: (u32, u32)) -> Option<State> {
        let c = self.peek();
        if !c.is_some_and(|c| c.is_ascii_digit()) {
            return self.error(format!(
                "Floats must have a digit after the '.', but got '{}' instead.",
                show(c)
            ));
        }
        self.bump();
        loop {
            match self.peek() {
                Some(c) if c.is_ascii_digit() => {
                    self.bump();
                }
                Some('.') => {
                    self.bump();
                    while self
                        .peek()
                        .is_some_and(|c| c.is_ascii_digit() || matches!(c, '.' | ':' | '-'))
                    {
                        self.bump();
                    }
                    let raw = self.src[start..self.pos].to_string();
                    self.emit(Tok::Str(raw), m);
                    return self.pop();
                }
                _ => {
                    let raw = self.src[start..self.pos].to_string();
                    self.emit(Tok::Float(raw), m);
                    return self.pop();
                }
            }
        }
    }

    fn neg_number(&mut self) -> Option<State> {
        let m = self.mark();
        let start = self.pos;
        self.bump();
        match self.peek() {
            Some(c) if c.is_ascii_digit() => {
                self.bump();
            }
            Some('.') => return self.error("Floats must start with a digit, not '.'."),
            c => return self.error(format!("Expected a digit but got '{}'.", show(c))),
        }
        loop {
            match self.peek() {
                Some(c) if c.is_ascii_digit() => {
                    self.bump();
                }
                Some('.') => {
                    self.bump();
                    return self.float(start, m);
                }
                Some(c) if is_size_suffix(c) => {
                    self.bump();
                    return self.sized_number(start, m);
                }
                _ => {
                    let raw = self.src[start..self.pos].to_string();
                    self.emit(Tok::Integer(raw), m);
                    return self.pop();
                }
            }
        }
    }

    // ---- arrays --------------------------------------------------------------------

    fn array_value(&mut self) -> Option<State> {
        loop {
            let m = self.mark();
            match self.peek() {
                Some(c) if c.is_whitespace() => {
                    self.bump();
                }
                Some('#') => self.skip_comment(),
                Some('/') if self.try_slash_comment() => {}
                Some('/' | ',') => {
                    return self.error("Unexpected array value terminator ','.");
                }
                Some(']') => {
                    self.bump();
                    self.emit(Tok::ArrayEnd, m);
                    return self.pop();
                }
                _ => {
                    self.stack.push(State::ArrayValueEnd);
                    return Some(State::Value);
                }
            }
        }
    }

    fn array_value_end(&mut self) -> Option<State> {
        loop {
            let m = self.mark();
            match self.peek() {
                Some(c) if is_blank(c) => {
                    self.bump();
                }
                Some('#') => self.skip_comment(),
                Some('/') if self.try_slash_comment() => {}
                // A lone '/' separates values like ',' does in nats-server.
                Some('/' | ',' | '\n' | '\r') => {
                    self.bump();
                    return Some(State::ArrayValue);
                }
                Some(']') => {
                    self.bump();
                    self.emit(Tok::ArrayEnd, m);
                    return self.pop();
                }
                c => {
                    return self.error(format!(
                        "Expected an array value terminator ',' or an array terminator ']', but got '{}' instead.",
                        show(c)
                    ));
                }
            }
        }
    }

    // ---- maps ----------------------------------------------------------------------

    fn map_key_start(&mut self) -> Option<State> {
        loop {
            let m = self.mark();
            match self.peek() {
                Some(c @ ('=' | ':')) => {
                    return self.error(format!("Unexpected key separator '{c}'."));
                }
                Some(']') => return self.error("Unexpected array end ']' processing map."),
                Some(c) if c.is_whitespace() => {
                    self.bump();
                }
                Some('}') => {
                    self.bump();
                    self.emit(Tok::MapEnd, m);
                    return self.pop();
                }
                Some('#') => self.skip_comment(),
                Some('/') if self.try_slash_comment() => {}
                // nats-server drops a lone '/' before a map key and starts the key at
                // the next character, whatever it is.
                Some('/') => {
                    self.bump();
                    self.key_start = self.pos;
                    self.key_mark = self.mark();
                    self.bump();
                    return Some(State::MapKey);
                }
                Some(q @ ('"' | '\'')) => {
                    self.bump();
                    return self.quoted_key(q, m, State::MapKeyEnd, true);
                }
                None => return self.error("Unexpected EOF processing map."),
                Some(_) => {
                    self.key_start = self.pos;
                    self.key_mark = m;
                    self.bump();
                    return Some(State::MapKey);
                }
            }
        }
    }

    fn map_key(&mut self) -> Option<State> {
        loop {
            match self.peek() {
                None => return self.error("Unexpected EOF processing map key."),
                Some(c) if c.is_whitespace() => {
                    return self.key_or_keyword(State::MapKeyEnd, Some(State::MapValueEnd))
                }
                Some('=' | ':') => {
                    let key = self.src[self.key_start..self.pos].to_string();
                    self.emit(Tok::Key(key), self.key_mark);
                    return Some(State::MapKeyEnd);
                }
                Some(_) => {
                    self.bump();
                }
            }
        }
    }

    fn map_key_end(&mut self) -> Option<State> {
        loop {
            match self.peek() {
                Some(c) if c.is_whitespace() => {
                    self.bump();
                }
                Some('=' | ':') => {
                    self.bump();
                    return Some(State::MapValue);
                }
                _ => return Some(State::MapValue),
            }
        }
    }

    fn map_value(&mut self) -> Option<State> {
        loop {
            let m = self.mark();
            match self.peek() {
                Some(c) if c.is_whitespace() => {
                    self.bump();
                }
                Some(',') => return self.error("Unexpected map value terminator ','."),
                // A key directly followed by '}' has no value; the parser reports it.
                Some('}') => {
                    self.bump();
                    self.emit(Tok::MapEnd, m);
                    return self.pop();
                }
                _ => {
                    self.stack.push(State::MapValueEnd);
                    return Some(State::Value);
                }
            }
        }
    }

    fn map_value_end(&mut self) -> Option<State> {
        loop {
            let m = self.mark();
            match self.peek() {
                Some(c) if is_blank(c) => {
                    self.bump();
                }
                Some('#') => self.skip_comment(),
                Some('/') if self.try_slash_comment() => {}
                Some('/' | ';' | ',' | '\n' | '\r') => {
                    self.bump();
                    return Some(State::MapKeyStart);
                }
                Some('}') => {
                    self.bump();
                    self.emit(Tok::MapEnd, m);
                    return self.pop();
                }
                c => {
                    return self.error(format!(
                        "Expected a map value terminator ',' or a map terminator '}}', but got '{}' instead.",
                        show(c)
                    ));
                }
            }
        }
    }
}
