//! Direct get (`$JS.API.DIRECT.GET.<stream>[.<subject>]`): the stream answers
//! with the stored messages themselves, its facts in `Nats-*` headers, and
//! statuses instead of JSON errors. This module is the sans-I/O part: what a
//! request asks for, whether it is well formed, and the header blocks.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;

/// Most subjects a `multi_last` request may match (nats-server's limit).
pub const MAX_MULTI_LAST: usize = 1024;

/// The body of a direct get (nats-server's JSApiMsgGetRequest).
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct DirectRequest {
    pub seq: u64,
    #[serde(rename = "last_by_subj")]
    pub last_for: String,
    #[serde(rename = "next_by_subj")]
    pub next_for: String,
    pub batch: usize,
    pub max_bytes: usize,
    /// Nanoseconds since the epoch, from an RFC 3339 `start_time`.
    #[serde(deserialize_with = "rfc3339_ns")]
    pub start_time: Option<i64>,
    pub multi_last: Vec<String>,
    pub up_to_seq: u64,
    #[serde(deserialize_with = "rfc3339_ns")]
    pub up_to_time: Option<i64>,
    #[serde(rename = "no_hdr")]
    pub no_headers: bool,
}

impl DirectRequest {
    /// The most a reply may send; unset, the server's max_pending (as nats-server).
    pub fn max_bytes_or(&self, max_pending: usize) -> usize {
        if self.max_bytes > 0 {
            self.max_bytes
        } else {
            max_pending
        }
    }
}

fn rfc3339_ns<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    let t = time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
        .map_err(serde::de::Error::custom)?;
    Ok(Some(t.unix_timestamp_nanos() as i64))
}

/// A status-only answer: `NATS/1.0 <code> <text>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub code: u16,
    pub text: &'static str,
}

pub const EMPTY_REQUEST: Status = Status {
    code: 408,
    text: "Empty Request",
};
pub const MALFORMED_REQUEST: Status = Status {
    code: 408,
    text: "Malformed Request",
};
pub const BAD_REQUEST: Status = Status {
    code: 408,
    text: "Bad Request",
};
pub const NOT_FOUND: Status = Status {
    code: 404,
    text: "Message Not Found",
};
pub const NO_RESULTS: Status = Status {
    code: 404,
    text: "No Results",
};
pub const TOO_MANY_RESULTS: Status = Status {
    code: 413,
    text: "Too Many Results",
};
pub const REQUIRED_API_LEVEL: Status = Status {
    code: 412,
    text: "Required Api Level",
};

impl Status {
    pub fn header(&self) -> Bytes {
        Bytes::from(format!("NATS/1.0 {} {}\r\n\r\n", self.code, self.text))
    }
}

fn is_empty_body(payload: &[u8]) -> bool {
    payload.iter().all(u8::is_ascii_whitespace)
}

/// A request on `$JS.API.DIRECT.GET.<stream>`: checked as nats-server checks it.
pub fn parse_request(payload: &[u8]) -> Result<DirectRequest, Status> {
    if is_empty_body(payload) {
        return Err(EMPTY_REQUEST);
    }
    let r: DirectRequest = serde_json::from_slice(payload).map_err(|_| MALFORMED_REQUEST)?;
    if r.seq == 0
        && r.last_for.is_empty()
        && r.next_for.is_empty()
        && r.multi_last.is_empty()
        && r.start_time.is_none()
    {
        return Err(EMPTY_REQUEST);
    }
    let last = !r.last_for.is_empty();
    let next = !r.next_for.is_empty();
    let multi = !r.multi_last.is_empty();
    let by_seq = r.seq > 0;
    let by_time = r.start_time.is_some();
    // Last-by-subject stands alone; the other ways to start exclude each other.
    let conflicting = (last && (by_seq || by_time || next || multi || r.batch > 0))
        || (by_seq && by_time)
        || (next && multi)
        || (r.up_to_seq > 0 && r.up_to_time.is_some());
    if conflicting {
        return Err(BAD_REQUEST);
    }
    Ok(r)
}

/// A request on `$JS.API.DIRECT.GET.<stream>.<subject>`: the last message on
/// the subject; a body may only carry the options that make sense with it.
pub fn parse_last_by_subject(api_subject: &str, payload: &[u8]) -> Result<DirectRequest, Status> {
    let mut r = if is_empty_body(payload) {
        DirectRequest::default()
    } else {
        serde_json::from_slice::<DirectRequest>(payload).map_err(|_| MALFORMED_REQUEST)?
    };
    // `$JS.API.DIRECT.GET.<stream>.` is five tokens; the rest is the subject.
    let key = api_subject.splitn(6, '.').nth(5).unwrap_or("");
    if key.is_empty() {
        return Err(BAD_REQUEST);
    }
    if !r.last_for.is_empty()
        || !r.next_for.is_empty()
        || !r.multi_last.is_empty()
        || r.seq != 0
        || r.batch != 0
        || r.start_time.is_some()
        || r.up_to_seq != 0
        || r.up_to_time.is_some()
    {
        return Err(BAD_REQUEST);
    }
    r.last_for = key.to_string();
    Ok(r)
}

/// Where a batch stands, for the `Nats-Num-Pending`/`Nats-Last-Sequence` pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPosition {
    pub pending: u64,
    pub last_seq: u64,
}

impl BatchPosition {
    /// The headers a message of a batch carries about its place in it.
    pub fn facts(self) -> [(&'static str, u64); 2] {
        [
            ("Nats-Num-Pending", self.pending),
            ("Nats-Last-Sequence", self.last_seq),
        ]
    }
}

/// The headers of a message as a stream hands it out (direct gets, republish):
/// its own headers first, then the stream's facts about it, then `more`.
pub fn message_headers(
    stored: &[u8],
    stream: &str,
    subject: &str,
    seq: u64,
    time: &str,
    more: &[(&str, u64)],
) -> Bytes {
    let mut out = BytesMut::with_capacity(stored.len() + 160);
    match stored.strip_suffix(b"\r\n\r\n") {
        Some(block) if !stored.is_empty() => {
            out.put_slice(block);
            out.put_slice(b"\r\n");
        }
        _ => out.put_slice(b"NATS/1.0\r\n"),
    }
    let mut field = |name: &str, value: &str| {
        out.put_slice(name.as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    };
    field("Nats-Stream", stream);
    field("Nats-Subject", subject);
    field("Nats-Sequence", itoa::Buffer::new().format(seq));
    field("Nats-Time-Stamp", time);
    for (name, value) in more {
        field(name, itoa::Buffer::new().format(*value));
    }
    out.put_slice(b"\r\n");
    out.freeze()
}

/// The `204 EOB` that ends a batch; `multi_last` batches also say up to which
/// sequence they looked.
pub fn end_of_batch(position: BatchPosition, up_to_seq: Option<u64>) -> Bytes {
    let mut text = format!(
        "NATS/1.0 204 EOB\r\nNats-Num-Pending: {}\r\nNats-Last-Sequence: {}\r\n",
        position.pending, position.last_seq
    );
    if let Some(up_to) = up_to_seq {
        text.push_str(&format!("Nats-UpTo-Sequence: {up_to}\r\n"));
    }
    text.push_str("\r\n");
    Bytes::from(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_as_nats_server_checks_them() {
        assert_eq!(parse_request(b""), Err(EMPTY_REQUEST));
        assert_eq!(parse_request(b"{}"), Err(EMPTY_REQUEST));
        assert_eq!(parse_request(b"{\"seq\":"), Err(MALFORMED_REQUEST));
        assert_eq!(
            parse_request(br#"{"seq":1,"last_by_subj":"a"}"#),
            Err(BAD_REQUEST)
        );
        assert_eq!(
            parse_request(br#"{"last_by_subj":"a","batch":2}"#),
            Err(BAD_REQUEST)
        );
        assert_eq!(
            parse_request(
                br#"{"multi_last":["a"],"up_to_seq":3,"up_to_time":"2026-01-01T00:00:00Z"}"#
            ),
            Err(BAD_REQUEST)
        );
        let r = parse_request(br#"{"seq":1,"batch":3,"max_bytes":10}"#).unwrap();
        assert_eq!((r.seq, r.batch, r.max_bytes), (1, 3, 10));
        let r = parse_request(br#"{"start_time":"1970-01-01T00:00:01.5Z"}"#).unwrap();
        assert_eq!(r.start_time, Some(1_500_000_000));
    }

    #[test]
    fn the_subject_form_takes_the_rest_of_the_api_subject() {
        let r = parse_last_by_subject("$JS.API.DIRECT.GET.ORDERS.ORDERS.shipped", b"").unwrap();
        assert_eq!(r.last_for, "ORDERS.shipped");
        assert_eq!(
            parse_last_by_subject("$JS.API.DIRECT.GET.ORDERS.a", br#"{"seq":2}"#),
            Err(BAD_REQUEST)
        );
        assert_eq!(
            parse_last_by_subject("$JS.API.DIRECT.GET.ORDERS.a", b"nope"),
            Err(MALFORMED_REQUEST)
        );
    }

    #[test]
    fn headers_follow_the_stored_ones_as_captured() {
        let h = message_headers(
            b"NATS/1.0\r\nNats-Msg-Id: order-100\r\n\r\n",
            "ORDERS",
            "ORDERS.new",
            6,
            "2026-11-26T15:23:36.173025919Z",
            &[],
        );
        assert_eq!(
            &h[..],
            b"NATS/1.0\r\nNats-Msg-Id: order-100\r\nNats-Stream: ORDERS\r\nNats-Subject: ORDERS.new\r\nNats-Sequence: 6\r\nNats-Time-Stamp: 2026-11-26T15:23:36.173025919Z\r\n\r\n"
        );
        let h = message_headers(
            b"",
            "ORDERS",
            "ORDERS.new",
            1,
            "t",
            &BatchPosition {
                pending: 9,
                last_seq: 0,
            }
            .facts(),
        );
        assert_eq!(
            &h[..],
            b"NATS/1.0\r\nNats-Stream: ORDERS\r\nNats-Subject: ORDERS.new\r\nNats-Sequence: 1\r\nNats-Time-Stamp: t\r\nNats-Num-Pending: 9\r\nNats-Last-Sequence: 0\r\n\r\n"
        );
        assert_eq!(
            &end_of_batch(
                BatchPosition {
                    pending: 7,
                    last_seq: 3
                },
                None
            )[..],
            b"NATS/1.0 204 EOB\r\nNats-Num-Pending: 7\r\nNats-Last-Sequence: 3\r\n\r\n"
        );
        assert_eq!(
            &NOT_FOUND.header()[..],
            b"NATS/1.0 404 Message Not Found\r\n\r\n"
        );
    }
}
