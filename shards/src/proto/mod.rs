//! The NATS client protocol: a sans-I/O, zero-copy parser for what clients send and
//! the encoder for what the server sends. Byte-exact with nats-server v2.14.
//!
//! nats-server parses byte by byte with a state machine; this parser works on whole
//! lines and frames (so that a message is handed on as one slice of the read
//! buffer, never copied piecemeal) but decides every case as that state machine
//! does: which op names exist, which byte after a name is an error, where an
//! argument starts and ends, which limits apply to what, and which errors are
//! reported before a payload arrives. The little state it keeps between calls
//! ([`Parser`]) is what lets it consume input that nats-server consumes without
//! buffering it (spaces after an op name, the tail of a PING line).

mod connect;

pub use connect::ConnectInfo;

use bytes::{BufMut, BytesMut};
use thiserror::Error;

/// One operation sent by a client. Slices borrow from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientOp<'a> {
    Connect(&'a [u8]),
    /// PUB or HPUB. `message` is the header block followed by the payload;
    /// `header_len` is 0 for PUB. `head_checked` says that [`Parsed::PubHead`] was
    /// already returned for this message, so its control-line checks are done.
    Pub {
        subject: &'a [u8],
        reply: &'a [u8],
        header_len: usize,
        message: &'a [u8],
        hpub: bool,
        head_checked: bool,
        zeros: SizeZeros,
    },
    Sub {
        subject: &'a [u8],
        queue: Option<&'a [u8]>,
        sid: &'a [u8],
    },
    /// `max` is `None` when absent or not a number: nats-server then removes the
    /// subscription at once.
    Unsub {
        sid: &'a [u8],
        max: Option<u64>,
    },
    Ping,
    Pong,
    /// INFO from a client: its JSON must decode, then it is ignored.
    Info(&'a [u8]),
    /// `+OK` from a client, ignored.
    Ok,
    /// `-ERR` from a client: nats-server logs it and closes the connection.
    Err(&'a [u8]),
}

/// Leading zeros a publisher wrote before its sizes (`PUB s 05`): nats-server
/// copies the size fields into MSG as they were sent, so they come back so.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SizeZeros {
    pub header: u8,
    pub total: u8,
}

impl SizeZeros {
    /// Leading zeros of a size field that [`parse_size`] accepted.
    fn of(digits: &[u8]) -> u8 {
        let zeros = digits.iter().take_while(|&&d| d == b'0').count();
        // "0" itself, or "000" for 0, keeps one digit.
        zeros.min(digits.len() - 1) as u8
    }
}

/// Protocol violations. Each one closes the connection; `client_text` says whether
/// nats-server sends an `-ERR` first and with which text.
#[derive(Debug, Error, PartialEq, Eq, Clone, Copy)]
pub enum ProtoError {
    #[error("maximum control line exceeded")]
    MaxControlLine,
    #[error("maximum payload exceeded: {size} vs {max}")]
    MaxPayload { size: usize, max: usize },
    #[error("unknown protocol operation")]
    UnknownOp,
    /// An op other than CONNECT from a client that has not authenticated.
    #[error("authorization violation")]
    Authorization,
    #[error("processPub Bad or Missing Size")]
    BadPubSize,
    #[error("processPub Parse Error")]
    BadPubArgs,
    #[error("processHeaderPub Parse Error")]
    BadHpubArgs,
    #[error("message headers not supported")]
    HeadersNotSupported,
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
            ProtoError::MaxPayload { .. } => Some("Maximum Payload Violation"),
            ProtoError::UnknownOp => Some("Unknown Protocol Operation"),
            ProtoError::Authorization => Some("Authorization Violation"),
            _ => None,
        }
    }
}

/// Result of one parse attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A complete operation and the number of input bytes it used.
    Op(ClientOp<'a>, usize),
    /// A PUB or HPUB control line is complete but its message is not, or is
    /// malformed. nats-server checks the control line (the subject in pedantic
    /// mode) before the payload arrives, so the connection does that now; nothing
    /// is consumed, and the next call goes on with the same input.
    PubHead { subject: &'a [u8], hpub: bool },
    /// More input is needed; at least `need` bytes in total (0 when unknown).
    Incomplete { need: usize },
    /// Input consumed without completing an op (spaces after an op name, the
    /// tail of a PING, PONG or +OK line).
    Skipped(usize),
}

/// What the parser must know of the connection.
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

/// The connection's state that decides how input parses.
#[derive(Debug, Clone, Copy)]
pub struct ParseContext {
    pub limits: ParseLimits,
    /// No CONNECT has authenticated the client yet: any other op is a violation.
    pub awaiting_auth: bool,
    /// The client's CONNECT asked for headers (HPUB is refused otherwise).
    pub headers: bool,
}

impl Default for ParseContext {
    fn default() -> Self {
        ParseContext {
            limits: ParseLimits::default(),
            awaiting_auth: false,
            headers: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Pub,
    Hpub,
    Sub,
    Unsub,
    Ping,
    Pong,
    Connect,
    Info,
    Ok,
    Err,
}

impl Op {
    fn name(self) -> &'static [u8] {
        match self {
            Op::Pub => b"PUB",
            Op::Hpub => b"HPUB",
            Op::Sub => b"SUB",
            Op::Unsub => b"UNSUB",
            Op::Ping => b"PING",
            Op::Pong => b"PONG",
            Op::Connect => b"CONNECT",
            Op::Info => b"INFO",
            Op::Ok => b"+OK",
            Op::Err => b"-ERR",
        }
    }

    /// Ops whose name must be followed by a space or tab (nats-server's `OP_PUB`
    /// and the like); CONNECT and INFO may be followed by their argument at once.
    fn needs_space(self) -> bool {
        matches!(self, Op::Pub | Op::Hpub | Op::Sub | Op::Unsub | Op::Err)
    }

    /// Ops that ignore everything up to the end of their line.
    fn takes_rest_of_line(self) -> bool {
        matches!(self, Op::Ping | Op::Pong | Op::Ok)
    }
}

/// Where a parse resumes: at an op, after an op name whose argument has not
/// started, or inside a line whose bytes are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Resume {
    #[default]
    Start,
    /// The name (and the space it needs) was consumed; spaces and tabs follow.
    BeforeArg(Op),
    /// A PING/PONG/+OK whose line has not ended yet.
    RestOfLine(Op),
}

/// The protocol parser of one connection.
#[derive(Debug, Default)]
pub struct Parser {
    resume: Resume,
    /// [`Parsed::PubHead`] was returned for the PUB at the start of the input.
    head_reported: bool,
}

#[inline(always)]
fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Which op a name starts, from its first bytes; `Ok(None)` when more bytes are
/// needed to know, `Err` when no op starts so.
#[inline]
fn op_for(buf: &[u8]) -> Result<Option<Op>, ()> {
    let upper = |i: usize| buf.get(i).map(u8::to_ascii_uppercase);
    let op = match upper(0) {
        Some(b'P') => match upper(1) {
            None => return Ok(None),
            Some(b'U') => Op::Pub,
            Some(b'I') => Op::Ping,
            Some(b'O') => Op::Pong,
            Some(_) => return Err(()),
        },
        Some(b'H') => Op::Hpub,
        Some(b'S') => Op::Sub,
        Some(b'U') => Op::Unsub,
        Some(b'C') => Op::Connect,
        Some(b'I') => Op::Info,
        Some(b'+') => Op::Ok,
        Some(b'-') => Op::Err,
        Some(_) => return Err(()),
        None => return Ok(None),
    };
    Ok(Some(op))
}

/// The argument of a control line that starts at `start`: `Ok(Some((end, next)))`
/// with the argument in `buf[start..end]` and the line's end before `next`;
/// `Ok(None)` when the line has not ended. As in nats-server, the byte at
/// `start` is never the line's end, and a CR anywhere in the argument drops the
/// argument's last byte (normally that CR itself).
fn control_arg(
    buf: &[u8],
    start: usize,
    max_control_line: usize,
) -> Result<Option<(usize, usize)>, ProtoError> {
    let after = start + 1;
    let tail = buf.get(after..).unwrap_or(&[]);
    match memchr::memchr(b'\n', tail) {
        Some(i) => {
            let nl = after + i;
            // Nearly always the line ends in CRLF: no need to look further.
            let drop = if nl > after && buf[nl - 1] == b'\r' {
                1
            } else {
                usize::from(memchr::memchr(b'\r', &buf[after..nl]).is_some())
            };
            let end = nl - drop;
            if end - start > max_control_line {
                return Err(ProtoError::MaxControlLine);
            }
            Ok(Some((end, nl + 1)))
        }
        None => {
            let drop = usize::from(memchr::memchr(b'\r', tail).is_some());
            if buf.len().saturating_sub(start + drop) > max_control_line {
                return Err(ProtoError::MaxControlLine);
            }
            Ok(None)
        }
    }
}

/// Splits an argument on runs of the given separators into `args`; returns the
/// count, or `args.len() + 1` when there are more.
#[inline(always)]
fn split_on<'a, const N: usize>(
    mut arg: &'a [u8],
    args: &mut [&'a [u8]; N],
    is_sep: impl Fn(u8) -> bool,
) -> usize {
    let mut n = 0;
    loop {
        let Some(start) = arg.iter().position(|&b| !is_sep(b)) else {
            return n;
        };
        arg = &arg[start..];
        let end = arg.iter().position(|&b| is_sep(b)).unwrap_or(arg.len());
        if n == N {
            return N + 1;
        }
        args[n] = &arg[..end];
        n += 1;
        arg = &arg[end..];
    }
}

/// PUB and HPUB arguments split on spaces and tabs only.
#[inline]
fn split_pub_args<'a>(arg: &'a [u8], args: &mut [&'a [u8]; 4]) -> usize {
    split_on(arg, args, is_ws)
}

/// SUB and UNSUB arguments also split on CR and LF (nats-server's `splitArg`).
fn split_sub_args<'a>(arg: &'a [u8], args: &mut [&'a [u8]; 3]) -> usize {
    split_on(arg, args, |b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

/// Parses a decimal size as nats-server does: 1 to 9 digits, nothing else.
pub fn parse_size(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || digits.len() > 9 {
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

impl Parser {
    pub fn new() -> Parser {
        Parser::default()
    }

    /// Parses one operation from the start of `buf`.
    pub fn parse<'a>(
        &mut self,
        buf: &'a [u8],
        cx: &ParseContext,
    ) -> Result<Parsed<'a>, ProtoError> {
        let (op, arg_from) = match self.resume {
            Resume::RestOfLine(op) => {
                return Ok(match memchr::memchr(b'\n', buf) {
                    Some(nl) => {
                        self.resume = Resume::Start;
                        Parsed::Op(line_op(op), nl + 1)
                    }
                    None => Parsed::Skipped(buf.len()),
                });
            }
            Resume::BeforeArg(op) => (op, 0),
            Resume::Start => {
                let Some(&first) = buf.first() else {
                    return Ok(Parsed::Incomplete { need: 0 });
                };
                if cx.awaiting_auth && first != b'C' && first != b'c' {
                    return Err(ProtoError::Authorization);
                }
                let op = match op_for(buf) {
                    Ok(Some(op)) => op,
                    Ok(None) => return Ok(Parsed::Incomplete { need: 0 }),
                    Err(()) => return Err(ProtoError::UnknownOp),
                };
                let name = op.name();
                let seen = buf.len().min(name.len());
                if !buf[..seen].eq_ignore_ascii_case(&name[..seen]) {
                    return Err(ProtoError::UnknownOp);
                }
                if buf.len() < name.len() {
                    return Ok(Parsed::Incomplete { need: 0 });
                }
                if op.takes_rest_of_line() {
                    return Ok(match memchr::memchr(b'\n', &buf[name.len()..]) {
                        Some(i) => Parsed::Op(line_op(op), name.len() + i + 1),
                        None => {
                            self.resume = Resume::RestOfLine(op);
                            Parsed::Skipped(buf.len())
                        }
                    });
                }
                if op.needs_space() {
                    match buf.get(name.len()) {
                        None => return Ok(Parsed::Incomplete { need: 0 }),
                        Some(&b) if is_ws(b) => (op, name.len() + 1),
                        Some(_) => return Err(ProtoError::UnknownOp),
                    }
                } else {
                    (op, name.len())
                }
            }
        };
        // Spaces and tabs before the argument.
        let Some(start) = buf[arg_from..]
            .iter()
            .position(|&b| !is_ws(b))
            .map(|i| arg_from + i)
        else {
            self.resume = Resume::BeforeArg(op);
            return Ok(Parsed::Skipped(buf.len()));
        };
        let Some((end, next)) = control_arg(buf, start, cx.limits.max_control_line)? else {
            return Ok(Parsed::Incomplete { need: 0 });
        };
        let arg = &buf[start..end];
        if matches!(op, Op::Pub | Op::Hpub) {
            return self.message(buf, op, arg, next, cx);
        }
        self.resume = Resume::Start;
        match op {
            Op::Sub => {
                let mut args: [&[u8]; 3] = [&[]; 3];
                let sub = match split_sub_args(arg, &mut args) {
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
                Ok(Parsed::Op(sub, next))
            }
            Op::Unsub => {
                let mut args: [&[u8]; 3] = [&[]; 3];
                let unsub = match split_sub_args(arg, &mut args) {
                    1 => ClientOp::Unsub {
                        sid: args[0],
                        max: None,
                    },
                    2 => ClientOp::Unsub {
                        sid: args[0],
                        max: parse_size(args[1]).map(|n| n as u64),
                    },
                    _ => return Err(ProtoError::BadUnsubArgs),
                };
                Ok(Parsed::Op(unsub, next))
            }
            Op::Connect => Ok(Parsed::Op(ClientOp::Connect(arg), next)),
            Op::Info => Ok(Parsed::Op(ClientOp::Info(arg), next)),
            Op::Err => Ok(Parsed::Op(ClientOp::Err(arg), next)),
            Op::Pub | Op::Hpub | Op::Ping | Op::Pong | Op::Ok => {
                unreachable!("handled above")
            }
        }
    }

    /// A PUB or HPUB whose control line ends before `body`: checks the arguments
    /// as nats-server's `processPub`/`processHeaderPub` do, then frames the
    /// message.
    fn message<'a>(
        &mut self,
        buf: &'a [u8],
        op: Op,
        arg: &'a [u8],
        body: usize,
        cx: &ParseContext,
    ) -> Result<Parsed<'a>, ProtoError> {
        let hpub = op == Op::Hpub;
        if hpub && !cx.headers {
            return Err(ProtoError::HeadersNotSupported);
        }
        let mut args: [&[u8]; 4] = [&[]; 4];
        let n = split_pub_args(arg, &mut args);
        let (subject, reply, header_len, size, zeros) = if hpub {
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
            let zeros = SizeZeros {
                header: SizeZeros::of(hsize),
                total: SizeZeros::of(tsize),
            };
            (subject, reply, header_len, size, zeros)
        } else {
            let (subject, reply, tsize) = match n {
                2 => (args[0], &[][..], args[1]),
                3 => (args[0], args[1], args[2]),
                _ => return Err(ProtoError::BadPubArgs),
            };
            let size = parse_size(tsize).ok_or(ProtoError::BadPubSize)?;
            let zeros = SizeZeros {
                header: 0,
                total: SizeZeros::of(tsize),
            };
            (subject, reply, 0, size, zeros)
        };
        if size > cx.limits.max_payload {
            return Err(ProtoError::MaxPayload {
                size,
                max: cx.limits.max_payload,
            });
        }
        let end = body + size;
        let framed = match buf.get(end..end + 2) {
            Some(b"\r\n") => Some(true),
            Some(_) => Some(false),
            // A wrong byte where CR belongs is already a framing error.
            None if buf.len() > end && buf[end] != b'\r' => Some(false),
            None => None,
        };
        let head_checked = self.head_reported;
        if framed != Some(true) && !head_checked {
            // Nothing consumed: the same input comes back next time.
            self.head_reported = true;
            return Ok(Parsed::PubHead { subject, hpub });
        }
        match framed {
            Some(true) => {
                self.head_reported = false;
                self.resume = Resume::Start;
                Ok(Parsed::Op(
                    ClientOp::Pub {
                        subject,
                        reply,
                        header_len,
                        message: &buf[body..end],
                        hpub,
                        head_checked,
                        zeros,
                    },
                    end + 2,
                ))
            }
            Some(false) => Err(ProtoError::UnknownOp),
            None => Ok(Parsed::Incomplete { need: end + 2 }),
        }
    }
}

fn line_op(op: Op) -> ClientOp<'static> {
    match op {
        Op::Ping => ClientOp::Ping,
        Op::Pong => ClientOp::Pong,
        _ => ClientOp::Ok,
    }
}

/// Bytes quoted as Go's `%q` quotes them, which nats-server uses for subjects in
/// its errors: printable characters as they are, invalid UTF-8 as `\xNN`, control
/// characters as Go escapes them.
pub fn go_quote(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\u{7}' => out.push_str("\\a"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{b}' => out.push_str("\\v"),
                c if c == ' ' || !(c.is_control() || c.is_whitespace()) => out.push(c),
                c if (c as u32) < 0x80 => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c if (c as u32) < 0x10000 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => {
                    let _ = write!(out, "\\U{:08x}", c as u32);
                }
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out.push('"');
    out
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
/// Sizes carry the publisher's leading zeros.
pub fn write_msg(
    out: &mut BytesMut,
    subject: &[u8],
    sid: &[u8],
    reply: &[u8],
    header_len: usize,
    message: &[u8],
    zeros: SizeZeros,
) {
    const ZEROS: &[u8; 9] = b"000000000";
    out.reserve(msg_frame_len(subject, sid, reply, message) + 18);
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
        out.put_slice(&ZEROS[..zeros.header as usize]);
        out.put_slice(num.format(header_len).as_bytes());
        out.put_u8(b' ');
    }
    out.put_slice(&ZEROS[..zeros.total as usize]);
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

/// Appends the header block of `message` without its status line's end and
/// without any `key` line (a bare `NATS/1.0` line when there is no block).
fn header_lines_without(out: &mut Vec<u8>, message: &[u8], header_len: usize, key: &str) {
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
}

/// A message (headers and payload) with header `key` set to `value`: the existing
/// header block without any `key` line, then `key: value`, as nats-server's
/// `setHeader` writes it. Returns the message and its new header length.
pub fn set_header(message: &[u8], header_len: usize, key: &str, value: &str) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(message.len() + key.len() + value.len() + 16);
    header_lines_without(&mut out, message, header_len, key);
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    let new_header_len = out.len();
    out.extend_from_slice(&message[header_len.min(message.len())..]);
    (out, new_header_len)
}

/// The message without header `key`; without any header block when nothing but
/// a plain `NATS/1.0` line would be left. Returns it and its header length.
pub fn remove_header(message: &[u8], header_len: usize, key: &str) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(message.len());
    header_lines_without(&mut out, message, header_len, key);
    let new_header_len = if out == b"NATS/1.0\r\n" {
        out.clear();
        0
    } else {
        out.extend_from_slice(b"\r\n");
        out.len()
    };
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
    fn a_header_is_removed_and_an_empty_block_with_it() {
        let (m, n) = set_header(b"payload", 0, "Nats-Request-Info", "{}");
        assert_eq!(
            remove_header(&m, n, "nats-request-info"),
            (b"payload".to_vec(), 0)
        );
        let m = b"NATS/1.0\r\nX: 1\r\nNats-Request-Info: {}\r\n\r\nbody";
        let (out, n) = remove_header(m, m.len() - 4, "Nats-Request-Info");
        assert_eq!(out, b"NATS/1.0\r\nX: 1\r\n\r\nbody");
        assert_eq!(&out[n..], b"body");
        let m = b"NATS/1.0 503\r\n\r\n";
        assert_eq!(remove_header(m, m.len(), "X").0, m.to_vec());
    }

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

    /// Parses one op from `input` as a connection does: a PubHead is answered by
    /// parsing again.
    fn one_with<'a>(
        input: &'a [u8],
        cx: &ParseContext,
    ) -> Result<(ClientOp<'a>, usize), ProtoError> {
        let mut parser = Parser::new();
        let mut heads = 0;
        loop {
            match parser.parse(input, cx)? {
                Parsed::Op(op, n) => return Ok((op, n)),
                Parsed::PubHead { .. } => {
                    heads += 1;
                    assert_eq!(heads, 1, "PubHead twice");
                }
                other => panic!("not one op: {other:?}"),
            }
        }
    }

    fn one(input: &[u8]) -> Result<(ClientOp<'_>, usize), ProtoError> {
        one_with(input, &ParseContext::default())
    }

    fn publish<'a>(subject: &'a [u8], reply: &'a [u8], message: &'a [u8]) -> ClientOp<'a> {
        ClientOp::Pub {
            subject,
            reply,
            header_len: 0,
            message,
            hpub: false,
            head_checked: false,
            zeros: SizeZeros::default(),
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
            (publish(b"foo.bar", b"reply.x", b"hello"), 30)
        );
        assert_eq!(
            one(b"PUB foo 0\r\n\r\n").unwrap().0,
            publish(b"foo", b"", b"")
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
                    hpub: true,
                    head_checked: false,
                    zeros: SizeZeros::default(),
                },
                h.len()
            )
        );
        assert_eq!(one(b"+OK\r\n").unwrap(), (ClientOp::Ok, 5));
        assert_eq!(one(b"-ERR 'x'\r\n").unwrap().0, ClientOp::Err(b"'x'"));
        assert_eq!(one(b"INFO {}\r\n").unwrap().0, ClientOp::Info(b"{}"));
        // CONNECT and INFO need no space before their argument.
        assert_eq!(one(b"CONNECT{}\r\n").unwrap().0, ClientOp::Connect(b"{}"));
    }

    #[test]
    fn lines_as_nats_server_reads_them() {
        // PING, PONG and +OK ignore the rest of their line, however long.
        assert_eq!(one(b"PINGX\r\n").unwrap().0, ClientOp::Ping);
        assert_eq!(one(b"PING foo bar\r\n").unwrap().0, ClientOp::Ping);
        assert_eq!(one(b"+OKAY\r\n").unwrap().0, ClientOp::Ok);
        let mut long = b"PING ".to_vec();
        long.extend(std::iter::repeat_n(b'z', 10_000));
        long.extend_from_slice(b"\r\n");
        assert_eq!(one(&long).unwrap(), (ClientOp::Ping, long.len()));
        // A bad UNSUB max means none: nats-server unsubscribes at once.
        assert_eq!(
            one(b"UNSUB 1 x\r\n").unwrap().0,
            ClientOp::Unsub {
                sid: b"1",
                max: None
            }
        );
        // The first byte of an argument is never its line's end.
        assert_eq!(
            one(b"CONNECT\n{}\r\n").unwrap().0,
            ClientOp::Connect(b"\n{}")
        );
        // A CR inside the argument drops its last byte.
        assert_eq!(one(b"PUB a\rb 1\n"), Err(ProtoError::BadPubArgs));
        // SUB splits on CR too; PUB does not.
        assert_eq!(
            one(b"SUB a\rb 1\r\n").unwrap().0,
            ClientOp::Sub {
                subject: b"a",
                queue: Some(b"b"),
                sid: b"1"
            }
        );
        assert_eq!(
            one(b"PUB a\x00\xff 1\r\nx\r\n").unwrap().0,
            publish(b"a\x00\xff", b"", b"x")
        );
        // Leading zeros of a size are kept for the MSG lines.
        assert!(matches!(
            one(b"HPUB a 02 0004\r\n\r\nhi\r\n").unwrap().0,
            ClientOp::Pub {
                zeros: SizeZeros {
                    header: 1,
                    total: 3
                },
                ..
            }
        ));
        assert!(matches!(
            one(b"PUB a 000\r\n\r\n").unwrap().0,
            ClientOp::Pub {
                zeros: SizeZeros {
                    header: 0,
                    total: 2
                },
                ..
            }
        ));
    }

    #[test]
    fn errors_match_reference() {
        assert_eq!(one(b"FOO bar\r\n"), Err(ProtoError::UnknownOp));
        assert_eq!(one(b"PUX"), Err(ProtoError::UnknownOp));
        assert_eq!(one(b" PING\r\n"), Err(ProtoError::UnknownOp));
        assert_eq!(one(b"MSG a 1 1\r\n"), Err(ProtoError::UnknownOp));
        assert_eq!(one(b"PUB\r\n"), Err(ProtoError::UnknownOp));
        assert_eq!(one(b"SUB\r\n"), Err(ProtoError::UnknownOp));
        assert_eq!(one(b"PUB \r\n"), Err(ProtoError::BadPubArgs));
        assert_eq!(one(b"SUB \r\n"), Err(ProtoError::BadSubArgs));
        assert_eq!(one(b"UNSUB \r\n"), Err(ProtoError::BadUnsubArgs));
        assert_eq!(one(b"PUB foo abc\r\n"), Err(ProtoError::BadPubSize));
        assert_eq!(one(b"PUB foo 1234567890\r\n"), Err(ProtoError::BadPubSize));
        assert_eq!(one(b"PUB foo 3\r\nabcdef\r\n"), Err(ProtoError::UnknownOp));
        assert_eq!(one(b"SUB foo\r\n"), Err(ProtoError::BadSubArgs));
        assert_eq!(
            one(b"PUB foo 2000000\r\n"),
            Err(ProtoError::MaxPayload {
                size: 2_000_000,
                max: 1_048_576
            })
        );
        assert_eq!(
            one(b"HPUB foo 12 1048600\r\n").unwrap_err().to_string(),
            "maximum payload exceeded: 1048600 vs 1048576"
        );
        assert_eq!(one(b"HPUB foo 14 12\r\n"), Err(ProtoError::BadHpubArgs));
        let no_headers = ParseContext {
            headers: false,
            ..ParseContext::default()
        };
        assert_eq!(
            one_with(b"HPUB foo 12 1048600\r\n", &no_headers),
            Err(ProtoError::HeadersNotSupported)
        );
        let mut long = b"PUB ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 5000));
        assert_eq!(
            Parser::new()
                .parse(&long, &ParseContext::default())
                .unwrap_err(),
            ProtoError::MaxControlLine
        );
        long.extend_from_slice(b" 1\r\nx\r\n");
        assert_eq!(one(&long), Err(ProtoError::MaxControlLine));
        // The limit is on the argument, not on the op name before it.
        let mut at_limit = b"SUB ".to_vec();
        at_limit.extend(std::iter::repeat_n(b'a', 4094));
        at_limit.extend_from_slice(b" 1\r\n");
        assert!(one(&at_limit).is_ok());
        assert_eq!(
            ProtoError::MaxControlLine.client_text(),
            Some("maximum control line exceeded")
        );
        assert_eq!(ProtoError::BadPubSize.client_text(), None);
        assert_eq!(ProtoError::BadSubArgs.client_text(), None);
    }

    #[test]
    fn only_connect_before_authentication() {
        let awaiting = ParseContext {
            awaiting_auth: true,
            ..ParseContext::default()
        };
        for input in [
            &b"PING\r\n"[..],
            b"\x16\x03\x01",
            b"GET / HTTP/1.1\r\n",
            b"+OK\r\n",
            b"\r\n",
        ] {
            assert_eq!(
                one_with(input, &awaiting),
                Err(ProtoError::Authorization),
                "{input:?}"
            );
        }
        assert_eq!(
            one_with(b"connect {}\r\n", &awaiting).unwrap().0,
            ClientOp::Connect(b"{}")
        );
        // Any op that starts with C goes on to be parsed as CONNECT.
        assert_eq!(one_with(b"CX\r\n", &awaiting), Err(ProtoError::UnknownOp));
    }

    #[test]
    fn control_line_checks_come_before_the_payload() {
        let cx = ParseContext::default();
        let mut parser = Parser::new();
        assert_eq!(
            parser.parse(b"PUB a.* 5\r\nhel", &cx).unwrap(),
            Parsed::PubHead {
                subject: b"a.*",
                hpub: false
            }
        );
        assert_eq!(
            parser.parse(b"PUB a.* 5\r\nhel", &cx).unwrap(),
            Parsed::Incomplete { need: 18 }
        );
        let (op, n) = match parser.parse(b"PUB a.* 5\r\nhello\r\n", &cx).unwrap() {
            Parsed::Op(op, n) => (op, n),
            other => panic!("{other:?}"),
        };
        assert_eq!(n, 18);
        assert!(matches!(
            op,
            ClientOp::Pub {
                head_checked: true,
                ..
            }
        ));
        // The next message starts over.
        assert!(matches!(
            parser.parse(b"PUB b 1\r\nx\r\n", &cx).unwrap(),
            Parsed::Op(
                ClientOp::Pub {
                    head_checked: false,
                    ..
                },
                12
            )
        ));
        // A framing error still reports the head first.
        let mut parser = Parser::new();
        assert!(matches!(
            parser.parse(b"PUB a 1\r\nxYZ", &cx).unwrap(),
            Parsed::PubHead { .. }
        ));
        assert_eq!(
            parser.parse(b"PUB a 1\r\nxYZ", &cx),
            Err(ProtoError::UnknownOp)
        );
    }

    /// Parses a whole stream the way a connection does: accumulate, parse, consume.
    fn parse_stream(chunks: &[&[u8]]) -> Result<Vec<String>, ProtoError> {
        let cx = ParseContext::default();
        let mut parser = Parser::new();
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            let mut pos = 0;
            loop {
                match parser.parse(&buf[pos..], &cx)? {
                    Parsed::Op(op, n) => {
                        // Whether the head was seen first depends on the split.
                        let op = match op {
                            ClientOp::Pub {
                                subject,
                                reply,
                                header_len,
                                message,
                                hpub,
                                zeros,
                                ..
                            } => ClientOp::Pub {
                                subject,
                                reply,
                                header_len,
                                message,
                                hpub,
                                head_checked: false,
                                zeros,
                            },
                            op => op,
                        };
                        out.push(format!("{op:?}"));
                        pos += n;
                    }
                    Parsed::Skipped(n) => pos += n,
                    Parsed::PubHead { .. } => {}
                    Parsed::Incomplete { .. } => break,
                }
                if pos == buf.len() {
                    break;
                }
            }
            buf.drain(..pos);
        }
        Ok(out)
    }

    #[test]
    fn every_split_point() {
        let stream: &[u8] = b"CONNECT {\"verbose\":false,\"headers\":true}\r\nSUB foo.* q 1\r\n\
            PUB foo.bar reply 5\r\nhello\r\nHPUB h.a 38 43\r\nNATS/1.0\r\nX-A: 1\r\nX-A: 2\r\nX-Bb: hi\r\n\r\nhello\r\n\
            PUB foo 0\r\n\r\nUNSUB 1 10\r\nPING junk\r\npong\r\nSUB    \t  spaced 2\r\n+OK\r\n";
        let whole = parse_stream(&[stream]).unwrap();
        assert_eq!(whole.len(), 10);
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
    fn quotes_as_go() {
        assert_eq!(go_quote(b"a.b"), "\"a.b\"");
        assert_eq!(go_quote(b"t.\x00"), "\"t.\\x00\"");
        assert_eq!(go_quote(b"t.\xff\xfe"), "\"t.\\xff\\xfe\"");
        assert_eq!(go_quote("t.é".as_bytes()), "\"t.é\"");
        assert_eq!(
            go_quote(b"a\"b\\c\r\n\t\x7f"),
            "\"a\\\"b\\\\c\\r\\n\\t\\x7f\""
        );
    }

    #[test]
    fn encode_msg() {
        let mut out = BytesMut::new();
        write_msg(
            &mut out,
            b"orders.new",
            b"1",
            b"",
            0,
            b"order-1",
            SizeZeros::default(),
        );
        assert_eq!(&out[..], b"MSG orders.new 1 7\r\norder-1\r\n");
        out.clear();
        write_msg(
            &mut out,
            b"foo.baz",
            b"1",
            b"reply.x",
            0,
            b"",
            SizeZeros::default(),
        );
        assert_eq!(&out[..], b"MSG foo.baz 1 reply.x 0\r\n\r\n");
        out.clear();
        let zeros = SizeZeros {
            header: 1,
            total: 2,
        };
        write_msg(&mut out, b"z", b"1", b"", 2, b"\r\nhi", zeros);
        assert_eq!(&out[..], b"HMSG z 1 02 004\r\n\r\nhi\r\n");
        out.clear();
        write_msg(
            &mut out,
            b"h.b",
            b"1",
            b"",
            12,
            b"NATS/1.0\r\n\r\n",
            SizeZeros::default(),
        );
        assert_eq!(&out[..], b"HMSG h.b 1 12 12\r\nNATS/1.0\r\n\r\n\r\n");
        out.clear();
        let hdr = no_responders_header(b"nobody.home");
        write_msg(
            &mut out,
            b"_INBOX.nr.1",
            b"1",
            b"",
            hdr.len(),
            &hdr,
            SizeZeros::default(),
        );
        assert_eq!(
            &out[..],
            &b"HMSG _INBOX.nr.1 1 43 43\r\nNATS/1.0 503\r\nNats-Subject: nobody.home\r\n\r\n\r\n"[..]
        );
        out.clear();
        write_err(&mut out, "Invalid Subject");
        assert_eq!(&out[..], b"-ERR 'Invalid Subject'\r\n");
    }
}
