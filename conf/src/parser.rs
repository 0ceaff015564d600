//! Builds the [`Value`] tree from the lexer's items: map/array nesting, `$variable`
//! lookup (enclosing maps first, then the environment), `include` and number/datetime
//! conversion. Semantics follow nats-server's `conf/parse.go`; deviations are marked
//! `DEVIATION`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use super::lexer::{Lexer, Tok, Token};
use super::{
    DateTime, Error, Host, Kind, Map, Pos, Value, MAX_DEPTH, MAX_INCLUDE_DEPTH,
    MAX_SUBSTITUTED_NODES,
};

/// Bound on nested environment-variable references (`A=$B`, `B=$C`, ...), which each
/// recurse into a sub-parse.
const MAX_ENV_DEPTH: usize = 32;

/// State shared by a parse and all parses it starts (includes, environment values).
struct Shared<'h> {
    host: &'h dyn Host,
    /// Files being parsed, outermost first (cleaned paths), for cycle detection.
    include_chain: Vec<String>,
    /// Environment variables being expanded, for cycle detection (as nats-server).
    env_refs: HashSet<String>,
    /// Nodes that `$variable` substitution may still copy.
    copy_budget: usize,
}

enum Frame {
    Map {
        map: Map,
        pos: Pos,
        /// The key whose value comes next.
        pending: Option<(String, Pos)>,
    },
    Array {
        items: Vec<Value>,
        pos: Pos,
    },
}

struct Parser<'a, 's, 'h> {
    lexer: Lexer<'a>,
    file: Arc<str>,
    /// Directory that relative includes are joined to.
    dir: String,
    shared: &'s mut Shared<'h>,
    frames: Vec<Frame>,
    /// Nesting depth of the place this text is spliced into (includes, env values).
    base_depth: usize,
}

pub(super) fn parse_root(text: &str, file: &str, host: &dyn Host) -> Result<Map, Error> {
    let mut shared = Shared {
        host,
        include_chain: Vec::new(),
        env_refs: HashSet::new(),
        copy_budget: MAX_SUBSTITUTED_NODES,
    };
    if !file.is_empty() {
        shared.include_chain.push(go_clean(file));
    }
    Parser::new(text, file, &mut shared, 0).run()
}

impl<'a, 's, 'h> Parser<'a, 's, 'h> {
    fn new(text: &'a str, file: &str, shared: &'s mut Shared<'h>, base_depth: usize) -> Self {
        Parser {
            lexer: Lexer::new(text),
            file: Arc::from(file),
            dir: go_dir(file),
            shared,
            frames: Vec::new(),
            base_depth,
        }
    }

    fn pos(&self, t: &Token) -> Pos {
        Pos {
            file: self.file.clone(),
            line: t.line,
            col: t.col,
        }
    }

    fn syntax(&self, pos: Pos, message: impl Into<String>) -> Error {
        Error::Syntax {
            pos,
            message: message.into(),
        }
    }

    fn depth(&self) -> usize {
        // The root map is frame 0 and does not count as nesting.
        self.base_depth + self.frames.len().saturating_sub(1)
    }

    fn run(mut self) -> Result<Map, Error> {
        self.frames.push(Frame::Map {
            map: Map::new(),
            pos: Pos {
                file: self.file.clone(),
                line: 1,
                col: 1,
            },
            pending: None,
        });
        loop {
            let t = self.lexer.next_token();
            let pos = self.pos(&t);
            match t.tok {
                Tok::Eof => return self.finish(pos),
                Tok::Error(message) => return Err(Error::Lex { pos, message }),
                Tok::Key(key) => match self.frames.last_mut() {
                    Some(Frame::Map { pending, .. }) if pending.is_none() => {
                        *pending = Some((key, pos));
                    }
                    // The lexer never emits two keys in a row or a key in an array.
                    _ => return Err(self.syntax(pos, format!("unexpected key '{key}'"))),
                },
                Tok::MapStart | Tok::ArrayStart => {
                    if self.depth() >= MAX_DEPTH {
                        return Err(self.syntax(
                            pos,
                            format!("maps and arrays are nested deeper than {MAX_DEPTH} levels"),
                        ));
                    }
                    self.frames.push(if t.tok == Tok::MapStart {
                        Frame::Map {
                            map: Map::new(),
                            pos,
                            pending: None,
                        }
                    } else {
                        Frame::Array {
                            items: Vec::new(),
                            pos,
                        }
                    });
                }
                Tok::MapEnd | Tok::ArrayEnd => {
                    // Frame 0 (the root map) is never closed by the lexer.
                    let frame = if self.frames.len() > 1 {
                        self.frames.pop()
                    } else {
                        None
                    };
                    let value = match frame {
                        Some(Frame::Map {
                            map,
                            pos,
                            pending: None,
                        }) if t.tok == Tok::MapEnd => Value {
                            kind: Kind::Map(map),
                            pos,
                        },
                        // DEVIATION: nats-server mis-assigns `{ key }` (a key without a
                        // value directly before '}') to an outer key; we reject it.
                        Some(Frame::Map {
                            pending: Some((key, kpos)),
                            ..
                        }) => {
                            return Err(self.syntax(kpos, format!("key '{key}' has no value")));
                        }
                        Some(Frame::Array { items, pos }) if t.tok == Tok::ArrayEnd => Value {
                            kind: Kind::Array(items),
                            pos,
                        },
                        _ => return Err(self.syntax(pos, "unbalanced '}' or ']'")),
                    };
                    self.set_value(value, &pos)?;
                }
                Tok::Str(s) => self.set_value(mk(Kind::String(s), &pos), &pos)?,
                Tok::Bool(b) => self.set_value(mk(Kind::Bool(b), &pos), &pos)?,
                Tok::Integer(raw) => {
                    let i = parse_integer(&raw).map_err(|m| self.syntax(pos.clone(), m))?;
                    self.set_value(mk(Kind::Int(i), &pos), &pos)?;
                }
                Tok::Float(raw) => {
                    let f = parse_float(&raw).map_err(|m| self.syntax(pos.clone(), m))?;
                    self.set_value(mk(Kind::Float(f), &pos), &pos)?;
                }
                Tok::DateTime(raw) => {
                    let d = DateTime::parse(&raw).ok_or_else(|| {
                        self.syntax(
                            pos.clone(),
                            format!("expected Zulu formatted DateTime, but got '{raw}'"),
                        )
                    })?;
                    self.set_value(mk(Kind::DateTime(d), &pos), &pos)?;
                }
                Tok::Variable(name) => {
                    let v = self.lookup(&name, &pos, t.line)?;
                    self.set_value(v, &pos)?;
                }
                Tok::Include(path) => self.include(&path, pos)?,
            }
        }
    }

    /// End of input: the root map is the result.
    fn finish(mut self, pos: Pos) -> Result<Map, Error> {
        if self.frames.len() != 1 {
            // DEVIATION: nats-server silently drops a value left open when input ends
            // quietly (e.g. `a = [ '`); we report it.
            let what = match self.frames.last() {
                Some(Frame::Array { pos, .. }) => format!("array opened at {pos}"),
                Some(Frame::Map { pos, .. }) => format!("map opened at {pos}"),
                None => "value".to_string(),
            };
            return Err(self.syntax(pos, format!("unexpected end of input: unclosed {what}")));
        }
        match self.frames.pop() {
            Some(Frame::Map { map, pending, .. }) => match pending {
                // A stray final '}' lexes as a key; nats-server allows it for JSON-like
                // files whose opening '{' was not at the top.
                Some((key, _)) if key == "}" => Ok(map),
                Some(_) => Err(self.syntax(pos, "config is invalid")),
                None => Ok(map),
            },
            _ => Err(self.syntax(pos, "config is invalid")),
        }
    }

    /// Stores a finished value in the innermost map (under its pending key) or array.
    fn set_value(&mut self, value: Value, pos: &Pos) -> Result<(), Error> {
        match self.frames.last_mut() {
            Some(Frame::Array { items, .. }) => {
                items.push(value);
                Ok(())
            }
            Some(Frame::Map { map, pending, .. }) => match pending.take() {
                Some((key, key_pos)) => {
                    map.insert(key, key_pos, value);
                    Ok(())
                }
                None => Err(self.syntax(pos.clone(), "value without a key")),
            },
            None => Err(self.syntax(pos.clone(), "value outside of any map")),
        }
    }

    /// Resolves `$name`: a bcrypt hash, else the nearest enclosing map that already has
    /// the key, else the environment (whose value is parsed as a config value).
    fn lookup(&mut self, name: &str, pos: &Pos, line: u32) -> Result<Value, Error> {
        // Unquoted bcrypt hashes look like variables; nats-server special-cases `$2a$`
        // only (not `$2b$`/`$2y$`, which must be quoted there and here).
        if name.starts_with("2a$") {
            return Ok(mk(Kind::String(format!("${name}")), pos));
        }
        let depth = self.depth();
        for frame in self.frames.iter_mut().rev() {
            // Arrays do not define variables.
            let Frame::Map { map, .. } = frame else {
                continue;
            };
            if let Some(entry) = map.entry_mut(name) {
                entry.used_as_variable = true;
                let mut v = copy_value(&entry.value, depth, &mut self.shared.copy_budget)
                    .map_err(|why| Error::Variable {
                        pos: pos.clone(),
                        name: name.to_string(),
                        message: format!(
                            "variable reference for '{name}' on line {line} can not be expanded: {why}"
                        ),
                    })?;
                v.pos = pos.clone();
                return Ok(v);
            }
        }
        self.lookup_env(name, pos, line)
    }

    fn lookup_env(&mut self, name: &str, pos: &Pos, line: u32) -> Result<Value, Error> {
        let var_err = |message: String| Error::Variable {
            pos: pos.clone(),
            name: name.to_string(),
            message,
        };
        let parse_err = |why: String| {
            var_err(format!(
                "variable reference for '{name}' on line {line} could not be parsed: {why}"
            ))
        };
        if self.shared.env_refs.contains(name) {
            return Err(parse_err(format!("variable reference cycle for '{name}'")));
        }
        let Some(text) = self.shared.host.env_var(name) else {
            return Err(var_err(format!(
                "variable reference for '{name}' on line {line} can not be found"
            )));
        };
        if self.shared.env_refs.len() >= MAX_ENV_DEPTH {
            return Err(parse_err(format!(
                "environment variables nest deeper than {MAX_ENV_DEPTH} levels"
            )));
        }
        // The value is parsed as the right-hand side of `pk=`, like nats-server does, so
        // `4222` is an integer, `'3xyz'` a string, `{a: 1}` a map and `$OTHER` recurses.
        let text = format!("pk={text}");
        let file = format!("<env ${name}>");
        let depth = self.depth();
        self.shared.env_refs.insert(name.to_string());
        let result = Parser::new(&text, &file, self.shared, depth).run();
        self.shared.env_refs.remove(name);
        let mut map = result.map_err(|e| parse_err(e.to_string()))?;
        match map.index.get("pk").copied() {
            Some(i) if i < map.entries.len() => {
                let mut v = map.entries.swap_remove(i).value;
                v.pos = pos.clone();
                Ok(v)
            }
            _ => Err(var_err(format!(
                "variable reference for '{name}' on line {line} can not be found"
            ))),
        }
    }

    /// Parses an included file and merges its top-level keys into the current map.
    fn include(&mut self, include: &str, pos: Pos) -> Result<(), Error> {
        let path = go_join(&self.dir, include);
        let wrap = |source: Error| Error::Include {
            pos: pos.clone(),
            include: include.to_string(),
            source: Box::new(source),
        };
        // DEVIATION: nats-server has no cycle detection and recurses until it crashes.
        if self.shared.include_chain.contains(&path) {
            let mut chain = self.shared.include_chain.clone();
            chain.push(path);
            return Err(Error::IncludeCycle { pos, chain });
        }
        if self.shared.include_chain.len() > MAX_INCLUDE_DEPTH {
            return Err(self.syntax(
                pos,
                format!("includes are nested deeper than {MAX_INCLUDE_DEPTH} levels"),
            ));
        }
        let text = self
            .shared
            .host
            .read_file(std::path::Path::new(&path))
            .map_err(|source| {
                wrap(Error::Read {
                    path: PathBuf::from(&path),
                    source,
                })
            })?;
        let depth = self.depth();
        self.shared.include_chain.push(path.clone());
        let result = Parser::new(&text, &path, self.shared, depth).run();
        self.shared.include_chain.pop();
        let included = result.map_err(wrap)?;
        match self.frames.last_mut() {
            Some(Frame::Map { map, .. }) => {
                for entry in included.entries {
                    map.insert_entry(entry);
                }
                Ok(())
            }
            // `include` is only recognised in key position, so this cannot happen.
            _ => Err(self.syntax(pos, "include outside of a map")),
        }
    }
}

fn mk(kind: Kind, pos: &Pos) -> Value {
    Value {
        kind,
        pos: pos.clone(),
    }
}

/// Copies a variable's value, charging its node count to `budget` and checking that it
/// still fits under [`MAX_DEPTH`] at `depth`. The walk stops as soon as either limit is
/// exceeded, so it never costs more than the budget allows.
fn copy_value(v: &Value, depth: usize, budget: &mut usize) -> Result<Value, String> {
    fn measure(v: &Value, depth: usize, left: &mut usize) -> Result<(), String> {
        if *left == 0 {
            return Err(format!(
                "substitutions copy more than {MAX_SUBSTITUTED_NODES} values"
            ));
        }
        *left -= 1;
        let children: &[Value] = match &v.kind {
            Kind::Array(a) => a,
            Kind::Map(m) => {
                if depth >= MAX_DEPTH {
                    return Err(format!("nested deeper than {MAX_DEPTH} levels"));
                }
                for e in m.entries() {
                    measure(&e.value, depth + 1, left)?;
                }
                return Ok(());
            }
            _ => return Ok(()),
        };
        if depth >= MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH} levels"));
        }
        for c in children {
            measure(c, depth + 1, left)?;
        }
        Ok(())
    }
    measure(v, depth, budget)?;
    Ok(v.clone())
}

/// Converts an integer item: digits (and sign), then an optional size suffix.
fn parse_integer(raw: &str) -> Result<i64, String> {
    let split = raw
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(raw.len());
    let (digits, suffix) = raw.split_at(split);
    let out_of_range = || format!("integer '{raw}' is out of the range");
    let num: i64 = digits.parse().map_err(|e: std::num::ParseIntError| {
        use std::num::IntErrorKind::{NegOverflow, PosOverflow};
        match e.kind() {
            PosOverflow | NegOverflow => out_of_range(),
            _ => format!("expected integer, but got '{raw}'"),
        }
    })?;
    const K: i64 = 1000;
    const KI: i64 = 1024;
    let mult = match suffix.trim().to_ascii_lowercase().as_str() {
        "" => 1,
        "k" => K,
        "kb" | "ki" | "kib" => KI,
        "m" => K.pow(2),
        "mb" | "mi" | "mib" => KI.pow(2),
        "g" => K.pow(3),
        "gb" | "gi" | "gib" => KI.pow(3),
        "t" => K.pow(4),
        "tb" | "ti" | "tib" => KI.pow(4),
        "p" => K.pow(5),
        "pb" | "pi" | "pib" => KI.pow(5),
        "e" => K.pow(6),
        "eb" | "ei" | "eib" => KI.pow(6),
        // DEVIATION: nats-server silently drops a key whose value has an unknown
        // suffix such as `1kbb` (and can then mis-assign later values); we reject it.
        _ => return Err(format!("invalid size suffix in integer '{raw}'")),
    };
    // DEVIATION: nats-server lets the multiplication wrap around; we reject overflow.
    num.checked_mul(mult).ok_or_else(out_of_range)
}

fn parse_float(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(f),
        Ok(_) => Err(format!("float '{raw}' is out of the range")),
        Err(_) => Err(format!("expected float, but got '{raw}'")),
    }
}

/// Go's `filepath.Clean` (Unix): lexical normalisation of `.`, `..` and slashes.
pub(super) fn go_clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// Go's `filepath.Dir`: the cleaned directory part, "." when there is none.
pub(super) fn go_dir(path: &str) -> String {
    match path.rfind('/') {
        Some(i) => go_clean(&path[..=i]),
        None => ".".to_string(),
    }
}

/// Go's `filepath.Join(dir, name)`. Note that an absolute `name` is still placed under
/// `dir`: nats-server resolves `include /x.conf` in `/etc/nats/a.conf` to
/// `/etc/nats/x.conf`, and so do we.
pub(super) fn go_join(dir: &str, name: &str) -> String {
    if name.is_empty() {
        return go_clean(dir);
    }
    if dir.is_empty() {
        return go_clean(name);
    }
    go_clean(&format!("{dir}/{name}"))
}
