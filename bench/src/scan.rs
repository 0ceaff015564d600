//! Incremental scanner for what a NATS server sends to a client.
//!
//! Subscribers in a benchmark must count messages far faster than the server can send
//! them, so the scanner only parses control lines (`MSG`, `HMSG`, `PING`, ...) and jumps
//! over payloads by their announced length without looking at them. Even the control
//! line of a message is only read from its end (the length) on the hot path; subject,
//! sid and reply are split out only when asked for ([`MsgLine::fields`]). It keeps its
//! state between calls to [`Scanner::feed`], so a control line or payload may be split
//! across reads at any byte.

use anyhow::{bail, Result};

/// The longest control line accepted; nats-server's `max_control_line` default is 4 KiB,
/// but INFO lines (which are not bound by it) can be longer with many connect URLs.
const MAX_LINE: usize = 64 * 1024;

/// The arguments of a `MSG`/`HMSG` line before its length field(s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsgLine<'a> {
    /// `subject sid [reply]`, separators as sent.
    pub args: &'a [u8],
    /// Headers and body together.
    pub payload_len: usize,
}

/// The arguments of a message line, split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsgFields<'a> {
    pub subject: &'a [u8],
    pub sid: &'a [u8],
    pub reply: Option<&'a [u8]>,
}

impl<'a> MsgLine<'a> {
    /// Subject, sid and reply; None when the line does not have 2 or 3 arguments.
    pub fn fields(&self) -> Option<MsgFields<'a>> {
        let mut a = [&[][..]; 3];
        let n = split_args(self.args, &mut a)?;
        (n == 2 || n == 3).then(|| MsgFields {
            subject: a[0],
            sid: a[1],
            reply: (n == 3).then_some(a[2]),
        })
    }
}

/// One thing the server said. Borrowed slices live only for the callback.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// `MSG` or `HMSG`.
    Msg(MsgLine<'a>),
    Ping,
    Pong,
    Ok,
    /// `-ERR 'text'`, with the text as the server sent it.
    Err(&'a [u8]),
    /// `INFO {json}`, the JSON only.
    Info(&'a [u8]),
}

#[derive(Debug, Default)]
pub struct Scanner {
    /// A control line whose end has not arrived yet.
    partial: Vec<u8>,
    /// Payload bytes (plus the trailing CRLF) still to jump over.
    skip: usize,
}

impl Scanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes `buf`, calling `on_event` for every complete control line in it.
    pub fn feed<F: FnMut(Event<'_>)>(&mut self, mut buf: &[u8], on_event: &mut F) -> Result<()> {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(buf.len());
                self.skip -= n;
                buf = &buf[n..];
            }
            if buf.is_empty() {
                return Ok(());
            }
            let Some(nl) = memchr::memchr(b'\n', buf) else {
                if self.partial.len() + buf.len() > MAX_LINE {
                    bail!("control line longer than {MAX_LINE} bytes: stream out of sync");
                }
                self.partial.extend_from_slice(buf);
                return Ok(());
            };
            let skip = if self.partial.is_empty() {
                parse_line(&buf[..nl], on_event)?
            } else {
                // Taken out and put back so its capacity is reused for the next split line.
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&buf[..nl]);
                let skip = parse_line(&line, on_event);
                line.clear();
                self.partial = line;
                skip?
            };
            self.skip = skip;
            buf = &buf[nl + 1..];
        }
    }
}

fn is_sep(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Splits `line` at its last argument, which must be a decimal length: returns the
/// part before the separator(s) and the length. Reads only the end of the line.
#[inline]
fn split_len(line: &[u8]) -> Option<(&[u8], usize)> {
    let mut i = line.len();
    let mut v: usize = 0;
    let mut mul: usize = 1;
    while i > 0 && line[i - 1].is_ascii_digit() {
        if line.len() - i >= 10 {
            return None;
        }
        v += usize::from(line[i - 1] - b'0') * mul;
        mul *= 10;
        i -= 1;
    }
    if i == line.len() || i == 0 || !is_sep(line[i - 1]) {
        return None;
    }
    let mut j = i - 1;
    while j > 0 && is_sep(line[j - 1]) {
        j -= 1;
    }
    Some((&line[..j], v))
}

/// Parses one control line (without its `\n`) and returns how many bytes follow it
/// that belong to it (payload and CRLF), which are 0 for everything but messages.
#[inline]
fn parse_line<F: FnMut(Event<'_>)>(line: &[u8], on_event: &mut F) -> Result<usize> {
    let line = match line.split_last() {
        Some((b'\r', rest)) => rest,
        _ => line,
    };
    // MSG is by far the most frequent line: test for it first, on whole bytes.
    if line.len() > 4 && line[..3].eq_ignore_ascii_case(b"MSG") && is_sep(line[3]) {
        let Some((args, payload_len)) = split_len(&line[4..]) else {
            bail!("malformed MSG line: {}", lossy(line));
        };
        on_event(Event::Msg(MsgLine { args, payload_len }));
        return Ok(payload_len + 2);
    }
    parse_other(line, on_event)
}

/// Everything but MSG: rare, so clarity over speed.
fn parse_other<F: FnMut(Event<'_>)>(line: &[u8], on_event: &mut F) -> Result<usize> {
    let (op, rest) = match line.iter().position(|b| is_sep(*b)) {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &line[line.len()..]),
    };
    if op.eq_ignore_ascii_case(b"HMSG") {
        let parsed = split_len(rest).and_then(|(before, total)| {
            let (args, hdr) = split_len(before)?;
            (hdr <= total).then_some((args, total))
        });
        let Some((args, payload_len)) = parsed else {
            bail!("malformed HMSG line: {}", lossy(line));
        };
        on_event(Event::Msg(MsgLine { args, payload_len }));
        Ok(payload_len + 2)
    } else if op.eq_ignore_ascii_case(b"PING") {
        on_event(Event::Ping);
        Ok(0)
    } else if op.eq_ignore_ascii_case(b"PONG") {
        on_event(Event::Pong);
        Ok(0)
    } else if op.eq_ignore_ascii_case(b"+OK") {
        on_event(Event::Ok);
        Ok(0)
    } else if op.eq_ignore_ascii_case(b"-ERR") {
        on_event(Event::Err(rest.trim_ascii()));
        Ok(0)
    } else if op.eq_ignore_ascii_case(b"INFO") {
        on_event(Event::Info(rest.trim_ascii()));
        Ok(0)
    } else if line.is_empty() {
        // Tolerated: some servers have sent a bare CRLF between frames.
        Ok(0)
    } else {
        bail!("unexpected line from server: {}", lossy(line))
    }
}

fn lossy(line: &[u8]) -> String {
    String::from_utf8_lossy(line).into_owned()
}

/// Splits on runs of spaces/tabs into `out`, returning the count, or None when there
/// are more arguments than `out` holds.
fn split_args<'a>(rest: &'a [u8], out: &mut [&'a [u8]]) -> Option<usize> {
    let mut n = 0;
    let mut start: Option<usize> = None;
    for (i, &b) in rest.iter().enumerate() {
        match (is_sep(b), start) {
            (true, Some(s)) => {
                *out.get_mut(n)? = &rest[s..i];
                n += 1;
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        *out.get_mut(n)? = &rest[s..];
        n += 1;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq, Clone)]
    enum Owned {
        Msg(String, String, Option<String>, usize),
        BadArgs(String),
        Ping,
        Pong,
        Ok,
        Err(String),
        Info(String),
    }

    fn own(ev: Event<'_>) -> Owned {
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match ev {
            Event::Msg(m) => match m.fields() {
                Some(f) => Owned::Msg(s(f.subject), s(f.sid), f.reply.map(s), m.payload_len),
                None => Owned::BadArgs(s(m.args)),
            },
            Event::Ping => Owned::Ping,
            Event::Pong => Owned::Pong,
            Event::Ok => Owned::Ok,
            Event::Err(e) => Owned::Err(s(e)),
            Event::Info(i) => Owned::Info(s(i)),
        }
    }

    fn scan_chunks(chunks: &[&[u8]]) -> Result<Vec<Owned>> {
        let mut sc = Scanner::new();
        let mut out = Vec::new();
        for c in chunks {
            sc.feed(c, &mut |ev| out.push(own(ev)))?;
        }
        Ok(out)
    }

    /// A stream with payloads that contain things that look like control lines, so a
    /// scanner that looked inside payloads would miscount.
    const STREAM: &[u8] = b"INFO {\"server_id\":\"x\",\"max_payload\":1048576}\r\n\
        +OK\r\n\
        MSG foo 1 5\r\nhello\r\n\
        MSG foo.bar 22 _INBOX.abc 11\r\nMSG x 1 2\r\n\r\n\
        PING\r\n\
        HMSG h 3 12 18\r\nNATS/1.0\r\n\r\nPONG\r\n\r\n\
        HMSG h 3 rep.ly 12 12\r\nNATS/1.0\r\n\r\n\r\n\
        msg lower 9 0\r\n\r\n\
        MSG\ttab  7 3\r\nabc\r\n\
        PONG\r\n\
        -ERR 'Slow Consumer Detected'\r\n";

    fn expected() -> Vec<Owned> {
        vec![
            Owned::Info("{\"server_id\":\"x\",\"max_payload\":1048576}".into()),
            Owned::Ok,
            Owned::Msg("foo".into(), "1".into(), None, 5),
            Owned::Msg("foo.bar".into(), "22".into(), Some("_INBOX.abc".into()), 11),
            Owned::Ping,
            Owned::Msg("h".into(), "3".into(), None, 18),
            Owned::Msg("h".into(), "3".into(), Some("rep.ly".into()), 12),
            Owned::Msg("lower".into(), "9".into(), None, 0),
            Owned::Msg("tab".into(), "7".into(), None, 3),
            Owned::Pong,
            Owned::Err("'Slow Consumer Detected'".into()),
        ]
    }

    #[test]
    fn whole_stream() {
        assert_eq!(scan_chunks(&[STREAM]).expect("scan"), expected());
    }

    #[test]
    fn every_single_split_point() {
        for i in 0..=STREAM.len() {
            let (a, b) = STREAM.split_at(i);
            assert_eq!(
                scan_chunks(&[a, b]).expect("scan"),
                expected(),
                "split at {i}"
            );
        }
    }

    #[test]
    fn every_pair_of_split_points() {
        for i in 0..=STREAM.len() {
            for j in i..=STREAM.len() {
                let parts = [&STREAM[..i], &STREAM[i..j], &STREAM[j..]];
                assert_eq!(
                    scan_chunks(&parts).expect("scan"),
                    expected(),
                    "splits {i},{j}"
                );
            }
        }
    }

    #[test]
    fn byte_at_a_time() {
        let chunks: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(scan_chunks(&chunks).expect("scan"), expected());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(scan_chunks(&[b"BOGUS line\r\n"]).is_err());
        assert!(scan_chunks(&[b"MSG foo 1 x\r\n"]).is_err());
        assert!(scan_chunks(&[b"MSG 5\r\n"]).is_err());
        assert!(scan_chunks(&[b"MSG foo 1 12345678901\r\n"]).is_err());
        assert!(scan_chunks(&[b"HMSG a 1 9 5\r\n"]).is_err());
        assert!(scan_chunks(&[b"HMSG a 5\r\n"]).is_err());
    }

    #[test]
    fn argument_count_is_checked_when_fields_are_read() {
        // The hot path reads only the length; the argument count is checked by fields().
        let got = scan_chunks(&[b"MSG foo 0\r\n\r\nMSG a b c d 0\r\n\r\n"]).expect("scan");
        assert_eq!(
            got,
            [
                Owned::BadArgs("foo".into()),
                Owned::BadArgs("a b c d".into())
            ]
        );
    }

    #[test]
    fn overlong_line_is_an_error() {
        let long = vec![b'A'; MAX_LINE + 1];
        assert!(scan_chunks(&[&long]).is_err());
    }

    #[test]
    fn split_args_runs_and_overflow() {
        let mut out = [&[][..]; 3];
        assert_eq!(split_args(b"  a\t b  c ", &mut out), Some(3));
        assert_eq!(out, [&b"a"[..], b"b", b"c"]);
        assert_eq!(split_args(b"", &mut out), Some(0));
        assert_eq!(split_args(b"a b c d", &mut out), None);
    }

    #[test]
    fn split_len_bounds() {
        assert_eq!(split_len(b"a 0"), Some((&b"a"[..], 0)));
        assert_eq!(split_len(b"a b \t 1048576"), Some((&b"a b"[..], 1_048_576)));
        assert_eq!(split_len(b"a 1234567890"), Some((&b"a"[..], 1_234_567_890)));
        assert_eq!(split_len(b"a 12345678901"), None);
        assert_eq!(split_len(b"a "), None);
        assert_eq!(split_len(b"5"), None);
        assert_eq!(split_len(b"a -1"), None);
        assert_eq!(split_len(b"a1"), None);
    }
}
