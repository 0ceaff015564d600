//! Counter streams (`allow_msg_counter`, ADR-49): each subject's last message
//! holds a total, `{"val":"<decimal>"}`, and a publish with `Nats-Incr: ±N`
//! and no body stores the subject's next total. A stream that sources counter
//! streams adds what each origin's total moved by since the last one it saw,
//! remembered per origin and subject in `Nats-Counter-Sources`.
//!
//! The totals of the subjects are kept here, each with the sequence of the
//! message that holds it, so a publish is checked without reading the store:
//! the shell fills them when the stream opens and tells them what a deletion
//! reveals (see [`Counters::learn`]).

use std::collections::{BTreeMap, HashMap};

use num_bigint::BigInt;

use super::errors::{self, ApiError};
use super::stream::{header, with_header};

pub const INCR: &str = "Nats-Incr";
pub const COUNTER_SOURCES: &str = "Nats-Counter-Sources";

/// `Nats-Counter-Sources`: origin stream, then origin subject, then the last
/// total seen from it. Ordered, as nats-server's JSON of a Go map is.
pub type CounterSources = BTreeMap<String, BTreeMap<String, String>>;

/// One subject's counter, as its last message holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counter {
    pub total: BigInt,
    pub sources: CounterSources,
}

/// `Nats-Incr`: a decimal integer with an optional sign, as Go's
/// `big.Int.SetString(s, 10)` reads it. `Ok(None)` when there is none.
pub fn parse_incr(headers: &[u8]) -> Result<Option<BigInt>, ApiError> {
    let Some(value) = header(headers, INCR).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let digits = value.strip_prefix(['+', '-']).unwrap_or(value);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(errors::MESSAGE_INCR_INVALID.error());
    }
    value
        .trim_start_matches('+')
        .parse::<BigInt>()
        .map(Some)
        .map_err(|_| errors::MESSAGE_INCR_INVALID.error())
}

/// The body of a counter message.
pub fn body(total: &BigInt) -> Vec<u8> {
    format!("{{\"val\":\"{total}\"}}").into_bytes()
}

/// The total a counter message's body holds; `None` when it holds none.
pub fn read_total(payload: &[u8]) -> Option<BigInt> {
    #[derive(serde::Deserialize)]
    struct Value {
        val: String,
    }
    let value: Value = serde_json::from_slice(payload).ok()?;
    value.val.parse().ok()
}

/// A stored message read as a counter; `None` when it is not one (the
/// counter is broken).
pub fn read(headers: &[u8], payload: &[u8]) -> Option<Counter> {
    let total = read_total(payload)?;
    let sources = match header(headers, COUNTER_SOURCES) {
        Some(json) if !json.is_empty() => serde_json::from_str(json).ok()?,
        _ => CounterSources::new(),
    };
    Some(Counter { total, sources })
}

/// What a stored counter message looks like once an increment is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Increment {
    pub counter: Counter,
    pub headers: Vec<u8>,
    pub payload: Vec<u8>,
}

/// Applies `incr` to `current` for a message with `headers`. A sourced
/// message (`Nats-Stream-Source` in `source`) carries its origin's total in
/// `payload`: what is added is how far that total moved since this stream last
/// saw it, and its `Nats-Incr` is rewritten to say so.
pub fn apply(
    current: &Counter,
    incr: BigInt,
    headers: &[u8],
    payload: &[u8],
    subject: &str,
    source: Option<&str>,
) -> Result<Increment, ApiError> {
    let mut sources = current.sources.clone();
    let mut headers = headers.to_vec();
    let incr = match source {
        None => incr,
        Some(source) => {
            let fields: Vec<&str> = source.split(' ').collect();
            let origin = fields.first().copied().unwrap_or_default();
            let origin_subject = fields.get(4).copied().unwrap_or(subject);
            let sourced =
                read_total(payload).ok_or_else(|| errors::MESSAGE_COUNTER_BROKEN.error())?;
            let seen = sources
                .entry(origin.to_string())
                .or_default()
                .insert(origin_subject.to_string(), sourced.to_string());
            let previous = seen
                .and_then(|s| s.parse::<BigInt>().ok())
                .unwrap_or_default();
            let moved = sourced - previous;
            headers = with_header(&headers, INCR, &moved.to_string());
            moved
        }
    };
    let total = &current.total + incr;
    if !sources.is_empty() {
        let json =
            serde_json::to_string(&sources).map_err(|_| errors::MESSAGE_COUNTER_BROKEN.error())?;
        headers = with_header(&headers, COUNTER_SOURCES, &json);
    }
    Ok(Increment {
        payload: body(&total),
        counter: Counter { total, sources },
        headers,
    })
}

/// A subject's counter as the shell last told it, or that the message holding
/// it is not a counter.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Known {
    seq: u64,
    counter: Option<Counter>,
}

/// One subject's counter as it was (see [`Counters::save`]).
#[derive(Debug)]
pub struct SavedCounter {
    subject: String,
    last: Option<Known>,
    before_last: Option<Known>,
}

/// The counters of a stream's subjects.
#[derive(Debug, Default)]
pub struct Counters {
    last: HashMap<String, Known, ahash::RandomState>,
    /// What the message before a subject's last holds, learnt before that last
    /// one is deleted, so a publish between the deletion and its completion
    /// finds it.
    before_last: HashMap<String, Known, ahash::RandomState>,
}

impl Counters {
    /// The shell read message `seq` on `subject`: it holds this counter
    /// (`None`: it holds no counter).
    pub fn learn(&mut self, subject: &str, seq: u64, counter: Option<Counter>) {
        let known = Known { seq, counter };
        match self.last.get(subject) {
            Some(last) if last.seq > seq => {
                self.before_last.insert(subject.to_string(), known);
            }
            _ => {
                self.last.insert(subject.to_string(), known);
            }
        }
    }

    /// The counter on `subject` when the store's last message there is
    /// `last_seq` (0: none, so the counter starts at zero).
    pub fn current(&mut self, subject: &str, last_seq: u64) -> Result<Counter, ApiError> {
        if last_seq == 0 {
            self.last.remove(subject);
            self.before_last.remove(subject);
            return Ok(Counter::default());
        }
        let known = match self.last.get(subject) {
            Some(k) if k.seq == last_seq => k.clone(),
            _ => match self.before_last.remove(subject) {
                Some(k) if k.seq == last_seq => {
                    self.last.insert(subject.to_string(), k.clone());
                    k
                }
                // The shell did not tell what the last message holds: refuse
                // rather than count from a wrong total.
                _ => return Err(errors::MESSAGE_COUNTER_BROKEN.error()),
            },
        };
        known
            .counter
            .ok_or_else(|| errors::MESSAGE_COUNTER_BROKEN.error())
    }

    /// What `subject`'s counter is now, to put back with [`Self::restore`]
    /// (a batch that fails after counting).
    pub fn save(&self, subject: &str) -> SavedCounter {
        SavedCounter {
            subject: subject.to_string(),
            last: self.last.get(subject).cloned(),
            before_last: self.before_last.get(subject).cloned(),
        }
    }

    pub fn restore(&mut self, saved: SavedCounter) {
        let SavedCounter {
            subject,
            last,
            before_last,
        } = saved;
        match before_last {
            Some(k) => self.before_last.insert(subject.clone(), k),
            None => self.before_last.remove(&subject),
        };
        match last {
            Some(k) => self.last.insert(subject, k),
            None => self.last.remove(&subject),
        };
    }

    /// An increment was stored at `seq`. The total before it is kept as the
    /// one before the last: an append that fails after being counted leaves
    /// the store's last where it was, and the counter with it.
    pub fn stored(&mut self, subject: &str, seq: u64, counter: Counter) {
        let known = Known {
            seq,
            counter: Some(counter),
        };
        match self.last.insert(subject.to_string(), known) {
            Some(previous) => self.before_last.insert(subject.to_string(), previous),
            None => self.before_last.remove(subject),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdrs(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut h = b"NATS/1.0\r\n".to_vec();
        for (k, v) in pairs {
            h.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        h.extend_from_slice(b"\r\n");
        h
    }

    #[test]
    fn increments_read_as_go_reads_big_integers() {
        let big = "123456789012345678901234567890";
        assert_eq!(
            parse_incr(&hdrs(&[(INCR, big)])).unwrap(),
            Some(big.parse().unwrap())
        );
        assert_eq!(parse_incr(&hdrs(&[(INCR, "+5")])).unwrap(), Some(5.into()));
        assert_eq!(
            parse_incr(&hdrs(&[(INCR, "-5")])).unwrap(),
            Some((-5).into())
        );
        assert_eq!(parse_incr(&hdrs(&[("Other", "1")])).unwrap(), None);
        assert_eq!(parse_incr(b"").unwrap(), None);
        for bad in ["x", "1_000", "+", "1.5", "--1", "0x10"] {
            assert_eq!(
                parse_incr(&hdrs(&[(INCR, bad)])).unwrap_err().err_code,
                10171,
                "{bad}"
            );
        }
    }

    #[test]
    fn sourced_totals_add_what_moved_since_the_last_seen() {
        let current = Counter::default();
        let src = "ORIGIN 7 > > counter.a";
        let first = apply(
            &current,
            1.into(),
            &hdrs(&[(INCR, "+1")]),
            br#"{"val":"10"}"#,
            "agg.a",
            Some(src),
        )
        .unwrap();
        assert_eq!(first.counter.total, 10.into());
        assert_eq!(first.payload, br#"{"val":"10"}"#);
        assert_eq!(header(&first.headers, INCR), Some("10"));
        assert_eq!(
            header(&first.headers, COUNTER_SOURCES),
            Some(r#"{"ORIGIN":{"counter.a":"10"}}"#)
        );
        let second = apply(
            &first.counter,
            1.into(),
            &hdrs(&[(INCR, "+1")]),
            br#"{"val":"12"}"#,
            "agg.a",
            Some(src),
        )
        .unwrap();
        assert_eq!(second.counter.total, 12.into());
        assert_eq!(header(&second.headers, INCR), Some("2"));
        let local = apply(
            &second.counter,
            (-3).into(),
            &hdrs(&[(INCR, "-3")]),
            b"",
            "agg.a",
            None,
        )
        .unwrap();
        assert_eq!(local.payload, br#"{"val":"9"}"#);
        assert_eq!(
            header(&local.headers, COUNTER_SOURCES),
            Some(r#"{"ORIGIN":{"counter.a":"12"}}"#)
        );
        let broken = apply(&current, 1.into(), b"", b"nope", "agg.a", Some(src));
        assert_eq!(broken.unwrap_err().err_code, 10172);
    }

    #[test]
    fn the_counter_follows_the_subjects_last_message() {
        let mut c = Counters::default();
        assert_eq!(c.current("a", 0).unwrap(), Counter::default());
        let five = Counter {
            total: 5.into(),
            sources: CounterSources::new(),
        };
        c.stored("a", 3, five.clone());
        assert_eq!(c.current("a", 3).unwrap(), five);
        // Not told what message 2 holds.
        assert_eq!(c.current("a", 2).unwrap_err().err_code, 10172);
        c.learn("a", 2, read(b"", br#"{"val":"4"}"#));
        assert_eq!(c.current("a", 3).unwrap(), five);
        assert_eq!(c.current("a", 2).unwrap().total, 4.into());
        c.learn("b", 9, read(b"", b"not a counter"));
        assert_eq!(c.current("b", 9).unwrap_err().err_code, 10172);
        assert_eq!(c.current("a", 0).unwrap(), Counter::default());
    }
}
