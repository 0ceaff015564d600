//! Parser for the nats-server configuration file format (sans-I/O core).
//!
//! The syntax follows nats-server v2's `conf` package: `key: value`, `key = value` and
//! `key value`; maps `{}`; arrays `[]`; `#` and `//` comments; quoted and unquoted
//! strings; `( ... )` block strings; integers with size suffixes (`1k` = 1000,
//! `1kb`/`1ki`/`1kib` = 1024, up to `e`/`eb`); floats; Zulu datetimes; booleans
//! (`true/false/yes/no/on/off`, any case); `include` of other files; `$variables`
//! resolved against earlier keys of enclosing maps, then the environment.
//!
//! The result is a tree of [`Value`]s in which every key and value carries its
//! [`Pos`] (file, line, column), for error messages of the typed-options layer.
//! Durations stay strings (or integers meaning seconds) as in nats-server; see
//! [`Value::as_duration`] and [`parse_duration`].
//!
//! File and environment access go through the [`Host`] trait so the core can be tested
//! and fuzzed without touching the file system; [`parse_file`] is the thin std wrapper.

mod duration;
mod lexer;
mod parser;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

// Re-exported API; in the server binary some of it is not used yet.
#[allow(unused_imports)]
pub use duration::{parse_duration, parse_go_duration_nanos, DurationError};

/// Maximum nesting depth of maps and arrays (nats-server has none; a limit keeps
/// recursive walks of the tree, including `Drop`, far from the stack limit).
pub const MAX_DEPTH: usize = 128;
/// Maximum depth of nested `include`s (nats-server recurses until it crashes).
pub const MAX_INCLUDE_DEPTH: usize = 32;
/// Maximum number of tree nodes that `$variable` substitution may copy in one parse,
/// so that a small file cannot expand exponentially (`b = [$a, $a], c = [$b, $b]...`).
pub const MAX_SUBSTITUTED_NODES: usize = 1 << 20;

/// A location in a configuration file. Lines and columns are 1-based; columns count
/// characters. `file` is empty for text parsed without a file name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pos {
    pub file: Arc<str>,
    pub line: u32,
    pub col: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.file.is_empty() {
            write!(f, "{}:{}", self.line, self.col)
        } else {
            write!(f, "{}:{}:{}", self.file, self.line, self.col)
        }
    }
}

/// A configuration value with the position where it was written. For a value that
/// came from a `$variable`, `pos` is the position of the reference (its children keep
/// the positions of the definition).
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    pub kind: Kind,
    pub pos: Pos,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Map(Map),
    Array(Vec<Value>),
    String(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    DateTime(DateTime),
}

/// One `key: value` of a map.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_pos: Pos,
    pub value: Value,
    /// The key was referenced as `$key`. nats-server does not report such keys as
    /// unknown fields (they are variable definitions).
    pub used_as_variable: bool,
}

/// A map that keeps keys in the order they were first written. A later definition of
/// the same key replaces the value (and position) in place, as nats-server overwrites.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Map {
    entries: Vec<Entry>,
    index: HashMap<String, usize>,
}

impl Map {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries in definition order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Entry> {
        self.entries.iter()
    }

    /// Exact-case lookup (variables are exact-case in nats-server).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entry(key).map(|e| &e.value)
    }

    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.index.get(key).and_then(|&i| self.entries.get(i))
    }

    fn entry_mut(&mut self, key: &str) -> Option<&mut Entry> {
        match self.index.get(key) {
            Some(&i) => self.entries.get_mut(i),
            None => None,
        }
    }

    /// Case-insensitive lookup, the way nats-server matches option names; if several
    /// spellings exist, the last-defined one wins, as it would in nats-server's loop.
    pub fn get_ignore_case(&self, key: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.key.eq_ignore_ascii_case(key))
    }

    /// Inserts or replaces `key`; replacing keeps the first position in the order but
    /// takes the new key position and clears `used_as_variable`.
    pub fn insert(&mut self, key: String, key_pos: Pos, value: Value) {
        self.insert_entry(Entry {
            key,
            key_pos,
            value,
            used_as_variable: false,
        });
    }

    fn insert_entry(&mut self, entry: Entry) {
        match self.index.get(&entry.key) {
            Some(&i) => {
                if let Some(slot) = self.entries.get_mut(i) {
                    *slot = entry;
                }
            }
            None => {
                self.index.insert(entry.key.clone(), self.entries.len());
                self.entries.push(entry);
            }
        }
    }

    /// Entries whose key (case-insensitively) is not in `known` and that were not used
    /// as variables: what nats-server reports as `unknown field`.
    pub fn unknown_keys<'a>(&'a self, known: &'a [&'a str]) -> impl Iterator<Item = &'a Entry> {
        self.entries.iter().filter(move |e| {
            !e.used_as_variable && !known.iter().any(|k| k.eq_ignore_ascii_case(&e.key))
        })
    }
}

impl<'a> IntoIterator for &'a Map {
    type Item = &'a Entry;
    type IntoIter = std::slice::Iter<'a, Entry>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter()
    }
}

/// A `YYYY-MM-DDTHH:MM:SSZ` datetime (UTC), validated like Go's `time.Parse`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DateTime {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl DateTime {
    /// Parses exactly `YYYY-MM-DDTHH:MM:SSZ`.
    pub fn parse(s: &str) -> Option<DateTime> {
        let b = s.as_bytes();
        if b.len() != 20
            || b[4] != b'-'
            || b[7] != b'-'
            || b[10] != b'T'
            || b[13] != b':'
            || b[16] != b':'
            || b[19] != b'Z'
        {
            return None;
        }
        let num = |r: std::ops::Range<usize>| -> Option<u16> {
            let part = s.get(r)?;
            if !part.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            part.parse().ok()
        };
        let year = num(0..4)?;
        // Each of these has two digits, so it fits in a u8.
        let two = |r| num(r).and_then(|v| u8::try_from(v).ok());
        let dt = DateTime {
            year,
            month: two(5..7)?,
            day: two(8..10)?,
            hour: two(11..13)?,
            minute: two(14..16)?,
            second: two(17..19)?,
        };
        let days_in_month = match dt.month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if is_leap(dt.year) => 29,
            2 => 28,
            _ => return None,
        };
        if dt.day == 0 || dt.day > days_in_month || dt.hour > 23 || dt.minute > 59 || dt.second > 59
        {
            return None;
        }
        Some(dt)
    }

    /// Seconds since 1970-01-01T00:00:00Z.
    pub fn unix_timestamp(&self) -> i64 {
        // Days from civil (Howard Hinnant's algorithm), proleptic Gregorian calendar.
        let y = i64::from(self.year) - i64::from(self.month <= 2);
        let m = i64::from(self.month);
        let d = i64::from(self.day);
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }
}

fn is_leap(y: u16) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

impl fmt::Display for DateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

impl Value {
    /// A short name of the value's type for error messages.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            Kind::Map(_) => "map",
            Kind::Array(_) => "array",
            Kind::String(_) => "string",
            Kind::Int(_) => "integer",
            Kind::Float(_) => "float",
            Kind::Bool(_) => "boolean",
            Kind::DateTime(_) => "datetime",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self.kind {
            Kind::Int(i) => Some(i),
            _ => None,
        }
    }

    /// Floats, and integers converted to float (nats-server accepts both for some
    /// options, e.g. `timeout: 1` and `timeout: 0.5`).
    pub fn as_f64(&self) -> Option<f64> {
        match self.kind {
            Kind::Float(f) => Some(f),
            // Precision loss above 2^53 is acceptable for the options that use this.
            Kind::Int(i) => Some(i as f64),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self.kind {
            Kind::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&Map> {
        match &self.kind {
            Kind::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match &self.kind {
            Kind::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_datetime(&self) -> Option<DateTime> {
        match self.kind {
            Kind::DateTime(d) => Some(d),
            _ => None,
        }
    }

    /// A duration option the way nats-server reads one: a string in Go's
    /// `time.ParseDuration` syntax (`"2s"`, `1h30m`, `500ms`), or, for backward
    /// compatibility, an integer number of seconds (nats-server then warns
    /// "<field> should be converted to a duration"; check [`Value::as_i64`] to do so).
    /// Note that an unquoted `1m` is the integer 1000000 (the `m` size suffix), i.e.
    /// 1000000 seconds, exactly as in nats-server; write `"1m"` for a minute.
    pub fn as_duration(&self) -> Result<Duration, DurationError> {
        match &self.kind {
            Kind::String(s) => parse_duration(s),
            Kind::Int(i) => u64::try_from(*i)
                .map(Duration::from_secs)
                .map_err(|_| DurationError::Negative(i.to_string())),
            _ => Err(DurationError::WrongType(self.type_name())),
        }
    }

    /// The value as JSON (maps with sorted keys, datetimes as RFC 3339 strings);
    /// for tests and config dumps.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.kind {
            Kind::Map(m) => m.to_json(),
            Kind::Array(a) => J::Array(a.iter().map(Value::to_json).collect()),
            Kind::String(s) => J::String(s.clone()),
            Kind::Int(i) => J::from(*i),
            // The lexer only produces finite floats; a non-finite one would be null.
            Kind::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Kind::Bool(b) => J::Bool(*b),
            Kind::DateTime(d) => J::String(d.to_string()),
        }
    }
}

impl Map {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.entries
                .iter()
                .map(|e| (e.key.clone(), e.value.to_json()))
                .collect(),
        )
    }
}

/// Errors from parsing a configuration. Display gives `file:line:col: message`,
/// except for the lexer's errors, which keep nats-server's wording (tools and
/// test harnesses look for it) with the position after it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A lexical error, worded as nats-server's lexer words it.
    #[error("Parse error on line {}: '{message}' ({pos})", pos.line)]
    Lex { pos: Pos, message: String },
    /// A structural error (nats-server's wording where it has one).
    #[error("{pos}: {message}")]
    Syntax { pos: Pos, message: String },
    /// A `$variable` that is undefined, cyclic, or whose environment value does not parse.
    #[error("{pos}: {message}")]
    Variable {
        pos: Pos,
        name: String,
        message: String,
    },
    /// An included file could not be read or parsed; `source` says why.
    #[error("{pos}: error parsing include file '{include}', {source}")]
    Include {
        pos: Pos,
        include: String,
        #[source]
        source: Box<Error>,
    },
    /// An include that (directly or not) includes itself.
    #[error("{pos}: include cycle: {}", chain.join(" -> "))]
    IncludeCycle { pos: Pos, chain: Vec<String> },
    /// Reading a configuration file failed.
    #[error("error opening config file '{}': {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// Where the error was detected, if it is tied to a position.
    pub fn pos(&self) -> Option<&Pos> {
        match self {
            Error::Lex { pos, .. }
            | Error::Syntax { pos, .. }
            | Error::Variable { pos, .. }
            | Error::Include { pos, .. }
            | Error::IncludeCycle { pos, .. } => Some(pos),
            Error::Read { .. } => None,
        }
    }
}

/// The parser's window on the outside world: included files and environment variables.
pub trait Host {
    /// Returns the text of an included file. `path` is already joined with the including
    /// file's directory.
    fn read_file(&self, path: &Path) -> io::Result<String>;
    /// Looks up an environment variable (fallback for `$NAME` not defined in the file).
    fn env_var(&self, name: &str) -> Option<String>;
}

/// [`Host`] backed by `std::fs` and the process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdHost;

impl Host for StdHost {
    fn read_file(&self, path: &Path) -> io::Result<String> {
        // nats-server reads bytes; invalid UTF-8 only ever matters inside strings, so a
        // lossy conversion accepts the same files.
        let bytes = std::fs::read(path)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn env_var(&self, name: &str) -> Option<String> {
        // std may panic on names the OS cannot represent; such variables cannot exist.
        if name.is_empty() || name.contains(['=', '\0']) {
            return None;
        }
        std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
    }
}

/// In-memory [`Host`] for tests and fuzzing.
#[derive(Clone, Debug, Default)]
pub struct MemHost {
    pub files: HashMap<PathBuf, String>,
    pub env: HashMap<String, String>,
}

impl MemHost {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_file(mut self, path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        self.files.insert(path.into(), text.into());
        self
    }

    pub fn with_env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(name.into(), value.into());
        self
    }
}

impl Host for MemHost {
    fn read_file(&self, path: &Path) -> io::Result<String> {
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
    }

    fn env_var(&self, name: &str) -> Option<String> {
        self.env.get(name).cloned()
    }
}

/// Parses configuration text. `file` names it in positions and is the base for
/// relative includes (empty: the current directory, as nats-server does for text).
pub fn parse_str(text: &str, file: &str, host: &dyn Host) -> Result<Map, Error> {
    parser::parse_root(text, file, host)
}

/// Reads and parses a configuration file through `host`.
pub fn parse_file_with(path: &Path, host: &dyn Host) -> Result<Map, Error> {
    let text = host.read_file(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_str(&text, &path.to_string_lossy(), host)
}

/// Reads and parses a configuration file from disk, with the process environment.
pub fn parse_file(path: impl AsRef<Path>) -> Result<Map, Error> {
    parse_file_with(path.as_ref(), &StdHost)
}
