//! The client protocol parser must never panic, and must frame a byte stream the
//! same way however it is split across reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_shards::proto::{parse, ParseLimits, Parsed};

fn frame_all(chunks: &[&[u8]], limits: &ParseLimits) -> (Vec<String>, bool) {
    let mut buf = Vec::new();
    let mut ops = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        let mut pos = 0;
        loop {
            match parse(&buf[pos..], limits) {
                Ok(Parsed::Op(op, n)) => {
                    assert!(n > 0 && pos + n <= buf.len());
                    ops.push(format!("{op:?}"));
                    pos += n;
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
    let limits = ParseLimits {
        max_control_line: 256,
        max_payload: 4096,
    };
    let split = data[0] as usize % data.len();
    let body = &data[1..];
    let split = split.min(body.len());
    let (whole, whole_err) = frame_all(&[body], &limits);
    let (parts, parts_err) = frame_all(&[&body[..split], &body[split..]], &limits);
    // A stream split in two frames identically, except that a control line
    // limit violation may be seen earlier when a line is still incomplete.
    if !whole_err && !parts_err {
        assert_eq!(whole, parts);
    }
});
