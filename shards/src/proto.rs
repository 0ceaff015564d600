//! The NATS client protocol: a sans-I/O, zero-copy parser for what clients send and
//! the encoder for what the server sends. Byte-exact with nats-server v2.14.
//!
//! The parser works on whole frames: `parse` either returns one complete operation
//! borrowing from the input, or says how many bytes it needs before it is worth
//! calling again. A frame split across reads is therefore never copied piecemeal:
//! the caller accumulates bytes until `need` is met.

use bytes::{BufMut, BytesMut};
use thiserror::Error;

/// One operation sent by a client. Slices borrow from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientOp<'a> {
    Connect(&'a [u8]),
    /// PUB or HPUB. `message` is the header block followed by the payload;
    /// `header_len` is 0 for PUB.
    Pub {
        subject: &'a [u8],
        reply: &'a [u8],
        header_len: usize,
        message: &'a [u8],
        hpub: bool,
    },
    Sub {
        subject: &'a [u8],
        queue: Option<&'a [u8]>,
        sid: &'a [u8],
    },
    Unsub {
        sid: &'a [u8],
        max: Option<u64>,
    },
    Ping,
    Pong,
    /// INFO from a client is accepted and ignored, as nats-server does.
    Info,
}

/// Protocol violations. Each one closes the connection; `client_text` says whether
/// nats-server sends an `-ERR` first and with which text.
#[derive(Debug, Error, PartialEq, Eq, Clone, Copy)]
pub enum ProtoError {
    #[error("maximum control line exceeded")]
    MaxControlLine,
    #[error("maximum payload violation")]
    MaxPayload,
    #[error("unknown protocol operation")]
    UnknownOp,
    #[error("processPub Bad or Missing Size")]
    BadPubSize,
    #[error("processPub Parse Error")]
    BadPubArgs,
    #[error("processHeaderPub Parse Error")]
    BadHpubArgs,
    #[error("processSub Parse Error")]
    BadSubArgs,
    #[error("processUnsub Parse Error")]
    BadUnsubArgs,
}

impl ProtoError {
    /// The `-ERR` text nats-server sends before closing, if it sends one.
    pub fn client_text(self) -> Option<&'static str> {
        match self {
            ProtoError::MaxControlLine => Some("maximum control line exceeded"),
            ProtoError::MaxPayload => Some("Maximum Payload Violation"),
            ProtoError::UnknownOp => Some("Unknown Protocol Operation"),
            _ => None,
        }
    }
}

/// Result of one parse attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A complete operation and the number of input bytes it used.
    Op(ClientOp<'a>, usize),
    /// More input is needed; at least `need` bytes in total (0 when unknown).
    Incomplete { need: usize },
}

/// Limits the parser enforces while framing.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    pub max_control_line: usize,
    pub max_payload: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        ParseLimits {
            max_control_line: 4096,
            max_payload: 1024 * 1024,
        }
    }
}

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Splits a control line's arguments on runs of spaces and tabs. Returns the
/// number of arguments; more than `args.len()` yields `args.len() + 1`.
fn split_args<'a>(mut line: &'a [u8], args: &mut [&'a [u8]; 4]) -> usize {
    let mut n = 0;
    loop {
        while let [b, rest @ ..] = line {
            if !is_ws(*b) {
                break;
            }
            line = rest;
        }
        if line.is_empty() {
            return n;
        }
        let end = line.iter().position(|&b| is_ws(b)).unwrap_or(line.len());
        if n == args.len() {
            return n + 1;
        }
        args[n] = &line[..end];
        n += 1;
        line = &line[end..];
    }
}

/// Parses a decimal size as nats-server does: digits only, no sign, no overflow.
pub fn parse_size(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut n: usize = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + (d - b'0') as usize;
    }
    Some(n)
}

/// Parses one operation from the start of `buf`.
pub fn parse<'a>(buf: &'a [u8], limits: &ParseLimits) -> Result<Parsed<'a>, ProtoError> {
    let Some(nl) = memchr::memchr(b'\n', buf) else {
        // CONNECT may carry a JWT longer than a control line; bound it by max_payload.
        let limit = if buf.len() >= 7 && buf[..7].eq_ignore_ascii_case(b"CONNECT") {
            limits.max_payload.max(limits.max_control_line)
        } else {
            limits.max_control_line
        };
        if buf.len() > limit {
            return Err(ProtoError::MaxControlLine);
        }
        return Ok(Parsed::Incomplete { need: 0 });
    };
    let mut line = &buf[..nl];
    if let [head @ .., b'\r'] = line {
        line = head;
    }
    let op_end = line.iter().position(|&b| is_ws(b)).unwrap_or(line.len());
    let (op, rest) = line.split_at(op_end);
    let after_line = nl + 1;

    // Op names are case-insensitive; compare on an upper-cased copy of at most 7 bytes.
    let mut name = [0u8; 7];
    if op.len() > name.len() {
        return Err(unknown_or_long(line, limits));
    }
    for (d, s) in name.iter_mut().zip(op) {
        *d = s.to_ascii_uppercase();
    }
    let name = &name[..op.len()];

    if name != b"CONNECT" && name != b"INFO" && line.len() > limits.max_control_line {
        return Err(ProtoError::MaxControlLine);
    }
    let mut args: [&[u8]; 4] = [&[]; 4];
    match name {
        b"PUB" => {
            let n = split_args(rest, &mut args);
            let (subject, reply, size) = match n {
                2 => (args[0], &[][..], args[1]),
                3 => (args[0], args[1], args[2]),
                _ => return Err(ProtoError::BadPubArgs),
            };
            let size = parse_size(size).ok_or(ProtoError::BadPubSize)?;
            if size > limits.max_payload {
                return Err(ProtoError::MaxPayload);
            }
            let message = match payload(buf, after_line, size)? {
                Some(m) => m,
                None => {
                    return Ok(Parsed::Incomplete {
                        need: after_line + size + 2,
                    })
                }
            };
            Ok(Parsed::Op(
                ClientOp::Pub {
                    subject,
                    reply,
                    header_len: 0,
                    message,
                    hpub: false,
                },
                after_line + size + 2,
            ))
        }
        b"HPUB" => {
            let n = split_args(rest, &mut args);
            let (subject, reply, hsize, tsize) = match n {
                3 => (args[0], &[][..], args[1], args[2]),
                4 => (args[0], args[1], args[2], args[3]),
                _ => return Err(ProtoError::BadHpubArgs),
            };
            let header_len = parse_size(hsize).ok_or(ProtoError::BadHpubArgs)?;
            let size = parse_size(tsize).ok_or(ProtoError::BadHpubArgs)?;
            if header_len > size {
                return Err(ProtoError::BadHpubArgs);
            }
            if size > limits.max_payload {
                return Err(ProtoError::MaxPayload);
            }
            let message = match payload(buf, after_line, size)? {
                Some(m) => m,
                None => {
                    return Ok(Parsed::Incomplete {
                        need: after_line + size + 2,
                    })
                }
            };
            Ok(Parsed::Op(
                ClientOp::Pub {
                    subject,
                    reply,
                    header_len,
                    message,
                    hpub: true,
                },
                after_line + size + 2,
            ))
        }
        b"SUB" => {
            let n = split_args(rest, &mut args);
            let op = match n {
                2 => ClientOp::Sub {
                    subject: args[0],
                    queue: None,
                    sid: args[1],
                },
                3 => ClientOp::Sub {
                    subject: args[0],
                    queue: Some(args[1]),
                    sid: args[2],
                },
                _ => return Err(ProtoError::BadSubArgs),
            };
            Ok(Parsed::Op(op, after_line))
        }
        b"UNSUB" => {
            let n = split_args(rest, &mut args);
            let op = match n {
                1 => ClientOp::Unsub {
                    sid: args[0],
                    max: None,
                },
                2 => ClientOp::Unsub {
                    sid: args[0],
                    max: Some(parse_size(args[1]).ok_or(ProtoError::BadUnsubArgs)? as u64),
                },
                _ => return Err(ProtoError::BadUnsubArgs),
            };
            Ok(Parsed::Op(op, after_line))
        }
        b"PING" | b"PONG" if rest.iter().all(|&b| is_ws(b)) => {
            let op = if name == b"PING" {
                ClientOp::Ping
            } else {
                ClientOp::Pong
            };
            Ok(Parsed::Op(op, after_line))
        }
        b"CONNECT" => Ok(Parsed::Op(ClientOp::Connect(trim(rest)), after_line)),
        b"INFO" => Ok(Parsed::Op(ClientOp::Info, after_line)),
        _ => Err(unknown_or_long(line, limits)),
    }
}

fn unknown_or_long(line: &[u8], limits: &ParseLimits) -> ProtoError {
    if line.len() > limits.max_control_line {
        ProtoError::MaxControlLine
    } else {
        ProtoError::UnknownOp
    }
}

/// The `size` bytes after the control line, if they and their `\r\n` have arrived.
fn payload(buf: &[u8], start: usize, size: usize) -> Result<Option<&[u8]>, ProtoError> {
    let end = start + size;
    match buf.get(end..end + 2) {
        Some(b"\r\n") => Ok(Some(&buf[start..end])),
        Some(_) => Err(ProtoError::UnknownOp),
        None => {
            // A wrong byte where CR belongs is already a framing error.
            if buf.len() > end && buf[end] != b'\r' {
                return Err(ProtoError::UnknownOp);
            }
            Ok(None)
        }
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b, rest @ ..] = s {
        if !is_ws(*b) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., b] = s {
        if !is_ws(*b) {
            break;
        }
        s = rest;
    }
    s
}

// ---------------------------------------------------------------------------------
// Encoding (server → client)

pub const PONG: &[u8] = b"PONG\r\n";
pub const PING: &[u8] = b"PING\r\n";
pub const OK: &[u8] = b"+OK\r\n";

/// `-ERR '<text>'\r\n`
pub fn write_err(out: &mut BytesMut, text: &str) {
    out.reserve(text.len() + 9);
    out.put_slice(b"-ERR '");
    out.put_slice(text.as_bytes());
    out.put_slice(b"'\r\n");
}

/// Frame length of a MSG/HMSG, for reserving before writing.
pub fn msg_frame_len(subject: &[u8], sid: &[u8], reply: &[u8], message: &[u8]) -> usize {
    // op + 4 separators + 2 numbers (at most 20 digits each) + 2 CRLFs
    6 + subject.len() + sid.len() + reply.len() + message.len() + 4 + 40 + 4
}

/// `MSG <subject> <sid> [reply] <n>\r\n<payload>\r\n`, or `HMSG` when `header_len > 0`.
pub fn write_msg(
    out: &mut BytesMut,
    subject: &[u8],
    sid: &[u8],
    reply: &[u8],
    header_len: usize,
    message: &[u8],
) {
    out.reserve(msg_frame_len(subject, sid, reply, message));
    let mut num = itoa::Buffer::new();
    if header_len > 0 {
        out.put_slice(b"HMSG ");
    } else {
        out.put_slice(b"MSG ");
    }
    out.put_slice(subject);
    out.put_u8(b' ');
    out.put_slice(sid);
    out.put_u8(b' ');
    if !reply.is_empty() {
        out.put_slice(reply);
        out.put_u8(b' ');
    }
    if header_len > 0 {
        out.put_slice(num.format(header_len).as_bytes());
        out.put_u8(b' ');
    }
    out.put_slice(num.format(message.len()).as_bytes());
    out.put_slice(b"\r\n");
    out.put_slice(message);
    out.put_slice(b"\r\n");
}

/// The 503 no-responders status header block, exactly as nats-server 2.14 sends it.
pub fn no_responders_header(subject: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(subject.len() + 40);
    h.extend_from_slice(b"NATS/1.0 503\r\nNats-Subject: ");
    h.extend_from_slice(subject);
    h.extend_from_slice(b"\r\n\r\n");
    h
}

/// A message (headers and payload) with header `key` set to `value`: the existing
/// header block without any `key` line, then `key: value`, as nats-server's
/// `setHeader` writes it. Returns the message and its new header length.
pub fn set_header(message: &[u8], header_len: usize, key: &str, value: &str) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(message.len() + key.len() + value.len() + 16);
    if header_len > 2 && header_len <= message.len() {
        let block = &message[..header_len - 2];
        let mut lines = block.split_inclusive(|&b| b == b'\n');
        if let Some(status) = lines.next() {
            out.extend_from_slice(status);
        }
        for line in lines {
            let name = line.split(|&b| b == b':').next().unwrap_or(b"");
            if !name.eq_ignore_ascii_case(key.as_bytes()) {
                out.extend_from_slice(line);
            }
        }
    } else {
        out.extend_from_slice(b"NATS/1.0\r\n");
    }
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    let new_header_len = out.len();
    out.extend_from_slice(&message[header_len.min(message.len())..]);
    (out, new_header_len)
}

/// The value of header `key` in a header block, if present.
pub fn header_value<'a>(headers: &'a [u8], key: &str) -> Option<&'a [u8]> {
    headers.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        line[..colon]
            .eq_ignore_ascii_case(key.as_bytes())
            .then(|| line[colon + 1..].trim_ascii_start())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_set_and_replaced() {
        let (m, n) = set_header(b"payload", 0, "Nats-Request-Info", "{\"acc\":\"A\"}");
        assert_eq!(
            m,
            b"NATS/1.0\r\nNats-Request-Info: {\"acc\":\"A\"}\r\n\r\npayload"
        );
        assert_eq!(&m[n..], b"payload");
        let existing = b"NATS/1.0\r\nNats-Request-Info: old\r\nX: 1\r\n\r\nbody";
        let (m, n) = set_header(existing, existing.len() - 4, "Nats-Request-Info", "new");
        assert_eq!(m, b"NATS/1.0\r\nX: 1\r\nNats-Request-Info: new\r\n\r\nbody");
        assert_eq!(&m[n..], b"body");
        assert_eq!(header_value(&m[..n], "x"), Some(&b"1"[..]));
        assert_eq!(
            header_value(&m[..n], "nats-request-info"),
            Some(&b"new"[..])
        );
        assert_eq!(header_value(&m[..n], "missing"), None);
    }

    fn lim() -> ParseLimits {
        ParseLimits::default()
    }

    fn one(input: &[u8]) -> Result<(ClientOp<'_>, usize), ProtoError> {
        match parse(input, &lim())? {
            Parsed::Op(op, n) => Ok((op, n)),
            Parsed::Incomplete { need } => panic!("incomplete, need {need}"),
        }
    }

    #[test]
    fn basic_ops() {
        assert_eq!(one(b"PING\r\n").unwrap(), (ClientOp::Ping, 6));
        assert_eq!(one(b"ping\r\n").unwrap(), (ClientOp::Ping, 6));
        assert_eq!(one(b"PONG\n").unwrap(), (ClientOp::Pong, 5));
        assert_eq!(
            one(b"CONNECT {\"verbose\":false}\r\n").unwrap().0,
            ClientOp::Connect(b"{\"verbose\":false}")
        );
        assert_eq!(
            one(b"SUB  ws.x \t 7\r\n").unwrap().0,
            ClientOp::Sub {
                subject: b"ws.x",
                queue: None,
                sid: b"7"
            }
        );
        assert_eq!(
            one(b"sub foo q 1\r\n").unwrap().0,
            ClientOp::Sub {
                subject: b"foo",
                queue: Some(b"q"),
                sid: b"1"
            }
        );
        assert_eq!(
            one(b"UNSUB 1 5\r\n").unwrap().0,
            ClientOp::Unsub {
                sid: b"1",
                max: Some(5)
            }
        );
        assert_eq!(
            one(b"PUB foo.bar reply.x 5\r\nhello\r\n").unwrap(),
            (
                ClientOp::Pub {
                    subject: b"foo.bar",
                    reply: b"reply.x",
                    header_len: 0,
                    message: b"hello",
                    hpub: false
                },
                30
            )
        );
        assert_eq!(
            one(b"PUB foo 0\r\n\r\n").unwrap().0,
            ClientOp::Pub {
                subject: b"foo",
                reply: b"",
                header_len: 0,
                message: b"",
                hpub: false
            }
        );
        let h = b"HPUB h.a 12 14\r\nNATS/1.0\r\n\r\nhi\r\n";
        assert_eq!(
            one(h).unwrap(),
            (
                ClientOp::Pub {
                    subject: b"h.a",
                    reply: b"",
                    header_len: 12,
                    message: b"NATS/1.0\r\n\r\nhi",
                    hpub: true
                },
                h.len()
            )
        );
    }

    #[test]
    fn errors_match_reference() {
        assert_eq!(one(b"FOO bar\r\n"), Err(ProtoError::UnknownOp));
        assert_eq!(one(b"PUB foo abc\r\n"), Err(ProtoError::BadPubSize));
        assert_eq!(one(b"PUB foo 3\r\nabcdef\r\n"), Err(ProtoError::UnknownOp));
        assert_eq!(one(b"SUB foo\r\n"), Err(ProtoError::BadSubArgs));
        assert_eq!(one(b"PUB foo 2000000\r\n"), Err(ProtoError::MaxPayload));
        assert_eq!(one(b"HPUB foo 12 1048600\r\n"), Err(ProtoError::MaxPayload));
        assert_eq!(one(b"HPUB foo 14 12\r\n"), Err(ProtoError::BadHpubArgs));
        assert_eq!(one(b"PINGX\r\n"), Err(ProtoError::UnknownOp));
        let mut long = b"PUB ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 5000));
        assert_eq!(
            parse(&long, &lim()).unwrap_err(),
            ProtoError::MaxControlLine
        );
        long.extend_from_slice(b" 1\r\nx\r\n");
        assert_eq!(one(&long), Err(ProtoError::MaxControlLine));
        assert_eq!(
            ProtoError::MaxControlLine.client_text(),
            Some("maximum control line exceeded")
        );
        assert_eq!(ProtoError::BadPubSize.client_text(), None);
        assert_eq!(ProtoError::BadSubArgs.client_text(), None);
    }

    #[test]
    fn incomplete_reports_need() {
        assert_eq!(
            parse(b"PUB foo 5\r\nhel", &lim()).unwrap(),
            Parsed::Incomplete { need: 18 }
        );
        assert_eq!(
            parse(b"PUB foo", &lim()).unwrap(),
            Parsed::Incomplete { need: 0 }
        );
        assert_eq!(
            parse(b"PUB foo 5\r\nhello\r", &lim()).unwrap(),
            Parsed::Incomplete { need: 18 }
        );
        assert_eq!(
            parse(b"PUB foo 5\r\nhellox", &lim()),
            Err(ProtoError::UnknownOp)
        );
    }

    /// Parses a whole stream the way a connection does: accumulate, parse, consume.
    fn parse_stream(chunks: &[&[u8]]) -> Result<Vec<String>, ProtoError> {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            let mut pos = 0;
            while let Parsed::Op(op, n) = parse(&buf[pos..], &lim())? {
                out.push(format!("{op:?}"));
                pos += n;
            }
            buf.drain(..pos);
        }
        Ok(out)
    }

    #[test]
    fn every_split_point() {
        let stream: &[u8] = b"CONNECT {\"verbose\":false,\"headers\":true}\r\nSUB foo.* q 1\r\n\
            PUB foo.bar reply 5\r\nhello\r\nHPUB h.a 38 43\r\nNATS/1.0\r\nX-A: 1\r\nX-A: 2\r\nX-Bb: hi\r\n\r\nhello\r\n\
            PUB foo 0\r\n\r\nUNSUB 1 10\r\nPING\r\npong\r\n";
        let whole = parse_stream(&[stream]).unwrap();
        assert_eq!(whole.len(), 8);
        for i in 0..=stream.len() {
            let split = parse_stream(&[&stream[..i], &stream[i..]]).unwrap();
            assert_eq!(split, whole, "split at {i}");
            for j in i..=stream.len() {
                let three = parse_stream(&[&stream[..i], &stream[i..j], &stream[j..]]).unwrap();
                assert_eq!(three, whole, "split at {i},{j}");
            }
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(parse_stream(&bytes).unwrap(), whole);
    }

    #[test]
    fn encode_msg() {
        let mut out = BytesMut::new();
        write_msg(&mut out, b"orders.new", b"1", b"", 0, b"order-1");
        assert_eq!(&out[..], b"MSG orders.new 1 7\r\norder-1\r\n");
        out.clear();
        write_msg(&mut out, b"foo.baz", b"1", b"reply.x", 0, b"");
        assert_eq!(&out[..], b"MSG foo.baz 1 reply.x 0\r\n\r\n");
        out.clear();
        write_msg(&mut out, b"h.b", b"1", b"", 12, b"NATS/1.0\r\n\r\n");
        assert_eq!(&out[..], b"HMSG h.b 1 12 12\r\nNATS/1.0\r\n\r\n\r\n");
        out.clear();
        let hdr = no_responders_header(b"nobody.home");
        write_msg(&mut out, b"_INBOX.nr.1", b"1", b"", hdr.len(), &hdr);
        assert_eq!(
            &out[..],
            &b"HMSG _INBOX.nr.1 1 43 43\r\nNATS/1.0 503\r\nNats-Subject: nobody.home\r\n\r\n\r\n"[..]
        );
        out.clear();
        write_err(&mut out, "Invalid Subject");
        assert_eq!(&out[..], b"-ERR 'Invalid Subject'\r\n");
    }
}
