//! Monitoring endpoints, compared with nats-server's captures by shape
//! (`tests/fixtures/reference/monitor/`), and their counters with the traffic.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{http_get as get, http_json as json, Raw, Server, CONNECT};
use serde_json::Value;

fn capture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/reference/monitor")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every key of the reference is present with the same JSON type (keys of
/// features strait does not have are listed in `skip`).
fn same_shape(ours: &Value, reference: &Value, skip: &[&str], path: &str) {
    let r = reference
        .as_object()
        .unwrap_or_else(|| panic!("{path}: the reference is not an object: {reference}"));
    let o = ours
        .as_object()
        .unwrap_or_else(|| panic!("{path}: not an object: {ours}"));
    for (k, rv) in r {
        if skip.contains(&k.as_str()) {
            continue;
        }
        let ov = o
            .get(k)
            .unwrap_or_else(|| panic!("{path}: missing key {k:?}"));
        assert_eq!(kind(ov), kind(rv), "{path}.{k}: type differs");
        if rv.is_object() && !rv.as_object().unwrap().is_empty() {
            same_shape(ov, rv, skip, &format!("{path}.{k}"));
        }
    }
}

fn start() -> (Server, u16) {
    Server::start_monitored(None, &[])
}

#[test]
fn endpoints_have_reference_shape() {
    let (server, http) = start();
    let mut raw = Raw::connect(server.port);
    raw.send(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"mon\",\"lang\":\"raw\",\"version\":\"1\"}\r\nSUB foo 1\r\n");
    raw.ping_sync();
    // JetStream and the features behind these keys are not in strait yet.
    let skip = [
        "git_commit",
        "feature_flags",
        "system_account",
        "jetstream",
        "config",
        "http_req_stats",
        "connections",
    ];
    same_shape(&json(http, "/varz"), &capture("varz.json"), &skip, "varz");
    let connz = json(http, "/connz");
    same_shape(&connz, &capture("connz.json"), &skip, "connz");
    let reference = capture("connz.json");
    let ref_conn = &reference["connections"][0];
    same_shape(
        &connz["connections"][0],
        ref_conn,
        &skip,
        "connz.connections[0]",
    );
    same_shape(
        &json(http, "/subsz"),
        &capture("subsz.json"),
        &skip,
        "subsz",
    );
    same_shape(
        &json(http, "/routez"),
        &capture("routez.json"),
        &skip,
        "routez",
    );
    same_shape(
        &json(http, "/gatewayz"),
        &capture("gatewayz.json"),
        &skip,
        "gatewayz",
    );
    same_shape(
        &json(http, "/leafz"),
        &capture("leafz.json"),
        &skip,
        "leafz",
    );
    same_shape(
        &json(http, "/accstatz"),
        &capture("accstatz.json"),
        &skip,
        "accstatz",
    );
    let reference_jsz: Value = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/reference/limits/d_jsz_without_js.json"),
        )
        .unwrap(),
    )
    .unwrap();
    same_shape(&json(http, "/jsz"), &reference_jsz, &[], "jsz");
    let (status, _, body) = get(http, "/healthz");
    assert_eq!((status, body.as_str()), (200, "{\"status\":\"ok\"}"));
    let (status, _, body) = get(http, "/nosuchpath");
    assert_eq!(status, 404);
    assert_eq!(body, "404 page not found\n");
    let (status, ctype, _) = get(http, "/");
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/html"));
}

#[test]
fn counters_follow_traffic() {
    let (server, http) = start();
    let mut sub = Raw::connect(server.port);
    sub.send(CONNECT);
    sub.send(b"SUB c.> 1\r\n");
    sub.ping_sync();
    let mut publ = Raw::connect(server.port);
    publ.send(CONNECT);
    for _ in 0..10 {
        publ.send(b"PUB c.x 5\r\nhello\r\n");
    }
    publ.ping_sync();
    // Wait until all ten arrived (they may cross shards).
    let mut got = Vec::new();
    while got.len() < 10 * "MSG c.x 1 5\r\nhello\r\n".len() {
        got.extend(sub.ping_sync());
    }
    let varz = json(http, "/varz");
    assert_eq!(varz["in_msgs"], 10);
    assert_eq!(varz["in_bytes"], 50);
    assert_eq!(varz["out_msgs"], 10);
    assert_eq!(varz["out_bytes"], 50);
    assert_eq!(varz["connections"], 2);
    assert_eq!(varz["subscriptions"], 1);
    assert_eq!(varz["version"], "2.14.0");
    let connz = json(http, "/connz?subs=1");
    assert_eq!(connz["num_connections"], 2);
    let conns = connz["connections"].as_array().unwrap();
    let subscriber = conns.iter().find(|c| c["subscriptions"] == 1).unwrap();
    assert_eq!(subscriber["out_msgs"], 10);
    assert_eq!(subscriber["subscriptions_list"], serde_json::json!(["c.>"]));
    let publisher = conns.iter().find(|c| c["in_msgs"] == 10).unwrap();
    assert_eq!(publisher["in_bytes"], 50);
    let metrics = get(http, "/metrics").2;
    assert!(
        metrics.contains("gnatsd_varz_in_msgs{server_id=\""),
        "{metrics}"
    );
    assert!(metrics.contains("} 10\n"));
    assert!(metrics.contains("strait_shard_connections{server_id=\""));
    let prefixed = get(http, "/metrics?prefix=nats").2;
    assert!(prefixed.contains("nats_varz_in_msgs{"));
}

#[test]
fn connz_paging_sorting_closed_and_jsonp() {
    let (server, http) = start();
    let mut conns = Vec::new();
    for i in 0..4 {
        let mut c = Raw::connect(server.port);
        c.send(CONNECT);
        for j in 0..i {
            c.send(format!("SUB s.{j} {j}\r\n").as_bytes());
        }
        c.ping_sync();
        conns.push(c);
    }
    let page = json(http, "/connz?limit=2&offset=1&sort=subs");
    assert_eq!(page["total"], 4);
    assert_eq!(page["offset"], 1);
    assert_eq!(page["limit"], 2);
    let subs: Vec<i64> = page["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["subscriptions"].as_i64().unwrap())
        .collect();
    assert_eq!(subs, vec![2, 1]);
    let by_cid = json(http, "/connz");
    let cids: Vec<u64> = by_cid["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["cid"].as_u64().unwrap())
        .collect();
    let mut sorted = cids.clone();
    sorted.sort();
    assert_eq!(cids, sorted);
    let one = json(http, &format!("/connz?cid={}", cids[0]));
    assert_eq!(one["total"], 1);
    // Close one; it shows up as closed with its reason.
    drop(conns.pop());
    let mut closed = Value::Null;
    for _ in 0..100 {
        closed = json(http, "/connz?state=closed");
        if closed["total"] == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(closed["connections"][0]["reason"], "Client Closed");
    assert!(closed["connections"][0]["stop"].is_string());
    let (status, _, body) = get(http, "/connz?subs=bogus");
    assert_eq!(status, 400);
    assert_eq!(
        body,
        "Error decoding boolean for 'subs': strconv.ParseBool: parsing \"bogus\": invalid syntax"
    );
    let (status, ctype, body) = get(http, "/varz?callback=cb");
    assert_eq!(status, 200);
    assert_eq!(ctype, "application/javascript");
    assert!(body.starts_with("cb({") && body.ends_with("})"), "{body}");
}

#[test]
fn slow_consumers_are_counted() {
    let (server, http) = Server::start_monitored(
        Some("max_pending: 262144\nmax_payload: 65536\n"),
        &["--shards", "1"],
    );
    // Subscribes, waits for its PONG, then never reads again.
    let mut slow = Raw::connect(server.port);
    slow.send(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nSUB big.> 1\r\n");
    slow.ping_sync();
    let mut publisher = Raw::connect(server.port);
    publisher.send(CONNECT);
    let mut frame = b"PUB big.x 60000\r\n".to_vec();
    frame.extend(std::iter::repeat_n(b'y', 60_000));
    frame.extend_from_slice(b"\r\n");
    for _ in 0..300 {
        publisher.send(&frame);
    }
    publisher.ping_sync();
    assert!(server.wait_for_log("Slow Consumer Detected", Duration::from_secs(10)));
    let varz = json(http, "/varz");
    assert_eq!(varz["slow_consumers"], 1);
    assert_eq!(varz["slow_consumer_stats"]["clients"], 1);
    let closed = json(http, "/connz?state=closed");
    assert_eq!(
        closed["connections"][0]["reason"],
        "Slow Consumer (Pending Bytes)"
    );
}

#[test]
fn healthz_variants_and_filters() {
    let (server, http) = start();
    let mut raw = Raw::connect(server.port);
    raw.send(CONNECT);
    raw.send(b"SUB f.x 1\r\n");
    raw.ping_sync();
    for q in [
        "",
        "?js-enabled-only=true",
        "?js-server-only=true",
        "?details=true",
    ] {
        let (status, _, body) = get(http, &format!("/healthz{q}"));
        assert_eq!((status, body.as_str()), (200, "{\"status\":\"ok\"}"), "{q}");
    }
    // Without JetStream there are no streams to check, as nats-server answers;
    // a malformed probe is refused all the same.
    let (status, _, body) = get(http, "/healthz?stream=NOSUCH&account=$G");
    assert_eq!((status, body.as_str()), (200, "{\"status\":\"ok\"}"));
    let (status, _, body) = get(http, "/healthz?stream=NOSUCH");
    assert_eq!(status, 400);
    assert_eq!(
        body,
        r#"{"status":"error","error":"\"account\" must not be empty when checking stream health"}"#
    );
    assert_eq!(json(http, "/connz?acc=$G")["total"], 1);
    assert_eq!(json(http, "/connz?acc=OTHER")["total"], 0);
    assert_eq!(json(http, "/subsz?subs=1&test=f.x")["total"], 1);
    // A publish fills the match cache: one subscriber, fan-out 1.
    raw.send(b"PUB f.x 1\r\na\r\n");
    raw.ping_sync();
    let subsz = json(http, "/subsz");
    assert_eq!(subsz["max_fanout"], 1);
    assert_eq!(subsz["avg_fanout"], 1.0);
    assert_eq!(json(http, "/subsz?subs=1&test=f.y")["total"], 0);
    let varz = json(http, "/varz");
    assert!(varz["http_req_stats"]["/connz"].as_u64().unwrap() >= 2);
}
