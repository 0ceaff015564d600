//! Byte-for-byte protocol behaviour, replayed from the nats-server v2.14 captures in
//! `tests/fixtures/reference/protocol/`: the client's bytes are sent as captured
//! and strait's answer must equal the reference server's (INFO lines compared by
//! shape, since ids and ports differ).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Raw, Server};

fn captures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference/protocol")
}

fn unescape(s: &str) -> Vec<u8> {
    s.replace("\\r", "\r").replace("\\n", "\n").into_bytes()
}

struct Transcript {
    client: Vec<u8>,
    server: Vec<String>,
    closed: bool,
}

fn load(name: &str) -> Transcript {
    let path = captures_dir().join(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut t = Transcript {
        client: Vec::new(),
        server: Vec::new(),
        closed: false,
    };
    let mut first_info = true;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("C>S ") {
            t.client.extend(unescape(rest));
        } else if let Some(rest) = line.strip_prefix("S>C ") {
            if rest.starts_with("<<connection closed") {
                t.closed = true;
            } else if rest.starts_with("INFO ") && first_info {
                first_info = false; // the greeting, read by Raw::connect
            } else {
                t.server
                    .push(normalize_frame(&String::from_utf8_lossy(&unescape(rest))));
            }
        }
    }
    t
}

/// INFO lines differ in ids and ports; keep only what must match.
fn normalize_frame(frame: &str) -> String {
    if let Some(json) = frame.strip_prefix("INFO ") {
        let v: serde_json::Value = serde_json::from_str(json.trim()).expect("INFO json");
        return format!(
            "INFO connect_info={} remote_account={}",
            v["connect_info"], v["remote_account"]
        );
    }
    frame.to_string()
}

/// Splits server output into frames: control lines plus their payloads.
fn frames(mut out: &[u8]) -> Vec<String> {
    let mut frames = Vec::new();
    while !out.is_empty() {
        let Some(nl) = common::find(out, b"\r\n") else {
            frames.push(String::from_utf8_lossy(out).into_owned());
            break;
        };
        let line = &out[..nl + 2];
        let text = String::from_utf8_lossy(line);
        let mut end = nl + 2;
        let parts: Vec<&str> = text.split_whitespace().collect();
        if parts[0] == "MSG" || parts[0] == "HMSG" {
            let size: usize = parts.last().unwrap().parse().unwrap();
            end += size + 2;
        }
        let end = end.min(out.len());
        frames.push(normalize_frame(&String::from_utf8_lossy(&out[..end])));
        out = &out[end..];
    }
    frames
}

fn replay(name: &str) {
    let t = load(name);
    let server = Server::start(&["--shards", "1"]);
    let mut raw = Raw::connect(server.port);
    raw.send(&t.client);
    let (out, closed) = raw.read_until_close(Duration::from_millis(600));
    let got = frames(&out);
    assert_eq!(got, t.server, "{name}: server output differs");
    assert_eq!(closed, t.closed, "{name}: connection closed = {closed}");
}

macro_rules! capture_tests {
    ($($test:ident => $file:expr,)*) => {
        $(
            #[test]
            fn $test() {
                replay($file);
            }
        )*
    };
}

capture_tests! {
    connect_empty_object_defaults => "connect_empty_object_defaults.txt",
    connect_protocol_0 => "connect_protocol_0.txt",
    err_bad_connect_json => "err_bad_connect_json.txt",
    err_hpub_without_headers => "err_hpub_without_headers.txt",
    err_invalid_subject_sub => "err_invalid_subject_sub.txt",
    err_invalid_subject_sub_fwc_not_last => "err_invalid_subject_sub_fwc_not_last.txt",
    err_max_control_line => "err_max_control_line.txt",
    err_max_payload => "err_max_payload.txt",
    err_max_payload_hpub => "err_max_payload_hpub.txt",
    err_no_responders_requires_headers => "err_no_responders_requires_headers.txt",
    err_pub_bad_size => "err_pub_bad_size.txt",
    err_pub_payload_too_long => "err_pub_payload_too_long.txt",
    err_pub_wildcard_pedantic => "err_pub_wildcard_pedantic.txt",
    err_sub_missing_args => "err_sub_missing_args.txt",
    err_unknown_protocol_op => "err_unknown_protocol_op.txt",
    err_unsub_bad_sid => "err_unsub_bad_sid.txt",
    no_responders_plain_pub => "no_responders_plain_pub.txt",
    no_responders_queue_only => "no_responders_queue_only.txt",
    pub_wildcard_not_pedantic => "pub_wildcard_not_pedantic.txt",
    session_echo_false => "session_echo_false.txt",
    session_headers_hpub_hmsg => "session_headers_hpub_hmsg.txt",
    session_lowercase_ops => "session_lowercase_ops.txt",
    session_no_connect_ping => "session_no_connect_ping.txt",
    session_tabs_and_spaces => "session_tabs_and_spaces.txt",
    session_verbose_mode => "session_verbose_mode.txt",
}

#[test]
fn info_line_shape_matches_reference() {
    let reference = std::fs::read_to_string(captures_dir().join("info.pretty.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&reference).unwrap();
    let server = Server::start(&[]);
    let raw = Raw::connect(server.port);
    assert!(raw.info.ends_with("} \r\n"), "space before CRLF");
    let ours: serde_json::Value = serde_json::from_str(raw.info[5..].trim()).unwrap();
    for key in [
        "server_id",
        "server_name",
        "version",
        "proto",
        "go",
        "host",
        "port",
        "headers",
        "max_payload",
        "client_id",
        "client_ip",
        "api_lvl",
        "xkey",
    ] {
        assert!(ours.get(key).is_some(), "INFO lacks {key}");
        assert_eq!(
            std::mem::discriminant(&ours[key]),
            std::mem::discriminant(&reference[key]),
            "INFO {key} has another type"
        );
    }
    let id = ours["server_id"].as_str().unwrap();
    assert_eq!(id.len(), 56);
    assert!(id.starts_with('N'));
    assert_eq!(ours["version"], "2.14.0");
    assert_eq!(ours["server_name"], ours["server_id"]);
}

#[test]
fn server_name_flag() {
    let server = Server::start(&["-n", "strait-1"]);
    let raw = Raw::connect(server.port);
    let info: serde_json::Value = serde_json::from_str(raw.info[5..].trim()).unwrap();
    assert_eq!(info["server_name"], "strait-1");
}
