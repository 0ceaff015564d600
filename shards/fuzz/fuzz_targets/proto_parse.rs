//! The client protocol parser must never panic, and must frame a byte stream the
//! same way however it is split across reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_shards::proto::{ClientOp, ParseContext, ParseLimits, Parsed, Parser};

fn frame_all(chunks: &[&[u8]], cx: &ParseContext) -> (Vec<String>, bool) {
    let mut parser = Parser::new();
    let mut buf = Vec::new();
    let mut ops = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        let mut pos = 0;
        let mut heads = 0;
        while pos < buf.len() {
            match parser.parse(&buf[pos..], cx) {
                Ok(Parsed::Op(op, n)) => {
                    assert!(n > 0 && pos + n <= buf.len());
                    // Whether the head was reported first depends on the split.
                    let op = match op {
                        ClientOp::Pub { subject, reply, header_len, message, hpub, .. } => {
                            format!("Pub {subject:?} {reply:?} {header_len} {message:?} {hpub}")
                        }
                        op => format!("{op:?}"),
                    };
                    ops.push(op);
                    pos += n;
                    heads = 0;
                }
                Ok(Parsed::Skipped(n)) => {
                    assert!(n > 0 && pos + n <= buf.len());
                    pos += n;
                }
                Ok(Parsed::PubHead { .. }) => {
                    heads += 1;
                    assert_eq!(heads, 1, "a head is reported once");
                }
                Ok(Parsed::Incomplete { .. }) => break,
                Err(e) => {
                    ops.push(format!("error {e:?}"));
                    return (ops, true);
                }
            }
        }
        buf.drain(..pos);
    }
    (ops, false)
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let cx = ParseContext {
        limits: ParseLimits {
            max_control_line: 256,
            max_payload: 4096,
        },
        awaiting_auth: data[0] & 1 == 1,
        headers: data[0] & 2 == 2,
    };
    let split = data[0] as usize % data.len();
    let body = &data[1..];
    let split = split.min(body.len());
    let (whole, whole_err) = frame_all(&[body], &cx);
    let (parts, parts_err) = frame_all(&[&body[..split], &body[split..]], &cx);
    // nats-server decides byte by byte, so a split changes nothing at all.
    assert_eq!((whole, whole_err), (parts, parts_err));
});
