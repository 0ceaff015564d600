//! Differential tests: the same byte stream sent to strait and to the reference
//! nats-server (see `common::reference`) must get the same answers.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::reference::{Reference, Rng};
use common::Server;

/// A connection that sends a batch then PING and returns everything before PONG.
struct Session {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Session {
    fn open(port: u16, connect: &[u8]) -> Session {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut s = Session {
            stream,
            buf: Vec::new(),
        };
        s.exchange(connect);
        s
    }

    fn exchange(&mut self, batch: &[u8]) -> Vec<u8> {
        self.stream.write_all(batch).unwrap();
        self.stream.write_all(b"PING\r\n").unwrap();
        loop {
            if let Some(pos) = common::find(&self.buf, b"PONG\r\n") {
                let out: Vec<u8> = self.buf.drain(..pos + 6).collect();
                return common::strip_info(out[..out.len() - 6].to_vec());
            }
            let mut chunk = [0u8; 65536];
            let n = self.stream.read(&mut chunk).expect("read");
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The answers as events: `-ERR` lines in order, and the messages between two of
/// them as a sorted run without their sids (the order in which one message
/// reaches several subscriptions, and which member of a queue group gets it, are
/// not part of the protocol; how many get it is).
fn events(out: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(out);
    let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
    let mut events = Vec::new();
    let mut run: Vec<String> = Vec::new();
    while let Some(line) = lines.next() {
        if let Some(rest) = line.strip_prefix("MSG ") {
            let payload = lines.next().unwrap_or("");
            let subject = rest.split(' ').next().unwrap_or("");
            run.push(format!("MSG {subject} | {payload}"));
        } else if line != "PING" {
            // (nats-server also PINGs new clients to measure their RTT; strait does not.)
            run.sort();
            events.append(&mut run);
            events.push(line.to_string());
        }
    }
    run.sort();
    events.append(&mut run);
    events
}

const PERMISSIONS: &str = r#"
authorization {
  users: [
    {user: p, password: p, permissions: {
      publish: {allow: ["a.>", "b.*", "c", "q.*"], deny: ["a.secret", "b.x", "a.deny.>"]}
      subscribe: {allow: ["a.>", "b.*", "q.* v1", "q.* v.*", "r", "c"], deny: ["a.deny.>", "b.y", "q.z v1", "a.*.x"]}
    }}
  ]
}
"#;

#[test]
fn permissions_vs_nats_server() {
    let strait = Server::start_with_config(Some(PERMISSIONS), &["--shards", "1"]);
    let config = strait.dir.join("strait.conf");
    let reference = Reference::start(&config);
    let connect = b"CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"headers\":true,\"no_responders\":false,\"user\":\"p\",\"pass\":\"p\"}\r\n";
    for seed in [0x5eed_cafe_f00d_0001u64, 42, 0xdead_beef] {
        compare_permission_traffic(strait.port, reference.port, connect, seed);
    }
}

fn compare_permission_traffic(ours: u16, theirs: u16, connect: &[u8], seed: u64) {
    let mut ours = Session::open(ours, connect);
    let mut theirs = Session::open(theirs, connect);

    let tokens = ["a", "b", "c", "q", "r", "x", "y", "z", "secret", "deny"];
    let wild = ["a", "b", "q", "x", "y", "z", "deny", "*", ">"];
    let queues = ["v1", "v2", "v.1", "w"];
    let mut rng = Rng(seed);
    let mut sid = 0;
    for round in 0..200 {
        let mut batch = Vec::new();
        for _ in 0..8 {
            let depth = 1 + rng.next() % 3;
            if rng.next() % 2 == 0 {
                let mut subject: Vec<&str> = Vec::new();
                for i in 0..depth {
                    let t = rng.pick(&wild);
                    // '>' only last.
                    let t = if t == ">" && i + 1 < depth { "*" } else { t };
                    subject.push(t);
                }
                sid += 1;
                let queue = (rng.next() % 3 == 0).then(|| rng.pick(&queues));
                match queue {
                    Some(q) => batch.extend_from_slice(
                        format!("SUB {} {q} {sid}\r\n", subject.join(".")).as_bytes(),
                    ),
                    None => batch.extend_from_slice(
                        format!("SUB {} {sid}\r\n", subject.join(".")).as_bytes(),
                    ),
                }
            } else {
                let subject: Vec<&str> = (0..depth).map(|_| rng.pick(&tokens)).collect();
                batch.extend_from_slice(format!("PUB {} 1\r\n.\r\n", subject.join(".")).as_bytes());
            }
        }
        let a = ours.exchange(&batch);
        let b = theirs.exchange(&batch);
        assert_eq!(
            events(&a),
            events(&b),
            "seed {seed}, round {round}, batch:\n{}",
            String::from_utf8_lossy(&batch)
        );
    }
}

const ACCOUNTS: &str = r#"
accounts: {
  A: {
    users: [{user: a, password: a}]
    imports: [
      {stream: {account: B, subject: "events.>"}, prefix: "b"}
      {stream: {account: B, subject: "orders.*"}, to: "incoming.*"}
      {stream: {account: B, subject: "alerts"}}
    ]
  }
  B: {
    users: [{user: b, password: b}]
    exports: [{stream: "events.>"}, {stream: "orders.*"}, {stream: "alerts"}, {stream: "private.>", accounts: [C]}]
  }
  C: {
    users: [{user: c, password: c}]
    imports: [{stream: {account: B, subject: "private.>"}}]
  }
}
"#;

fn login(port: u16, user: &str) -> Session {
    let connect = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"user\":\"{user}\",\"pass\":\"{user}\"}}\r\n"
    );
    Session::open(port, connect.as_bytes())
}

#[test]
fn stream_imports_vs_nats_server() {
    let strait = Server::start_with_config(Some(ACCOUNTS), &["--shards", "1"]);
    let reference = Reference::start(&strait.dir.join("strait.conf"));
    let mut sessions: Vec<[Session; 4]> = [strait.port, reference.port]
        .into_iter()
        .map(|port| {
            [
                login(port, "a"),
                login(port, "b"),
                login(port, "c"),
                login(port, "b"),
            ]
        })
        .collect();
    for s in &mut sessions {
        for (i, watcher) in s.iter_mut().enumerate().filter(|(i, _)| *i != 1) {
            watcher.exchange(format!("SUB > {i}\r\n").as_bytes());
        }
    }
    let subjects = [
        "events.x",
        "events.x.y",
        "events",
        "orders.new",
        "orders.new.eu",
        "alerts",
        "private.k",
        "private",
        "other",
        "b.events.x",
    ];
    let mut rng = Rng(7);
    for round in 0..100 {
        let mut batch = Vec::new();
        for _ in 0..6 {
            let subject = rng.pick(&subjects);
            batch.extend_from_slice(format!("PUB {subject} 1\r\n.\r\n").as_bytes());
        }
        let mut seen = Vec::new();
        for s in &mut sessions {
            s[1].exchange(&batch);
            let received: Vec<Vec<String>> = [0usize, 2, 3]
                .iter()
                .map(|&i| events(&s[i].exchange(b"")))
                .collect();
            seen.push(received);
        }
        assert_eq!(
            seen[0],
            seen[1],
            "round {round} (A, C, B's own subscriber), batch:\n{}",
            String::from_utf8_lossy(&batch)
        );
    }
}

/// Keys whose values differ between any two servers or runs (times, ids, the
/// server's name and version): compared by type only.
const VOLATILE: &[&str] = &[
    "created",
    "ts",
    "time",
    "first_ts",
    "last_ts",
    "server",
    "server_id",
    "id",
    "leader",
    "timestamp",
    "_nats.ver",
    "leader_since",
];

/// A JSON answer with every volatile value replaced by its type, so two servers'
/// answers compare by keys and types everywhere and by value elsewhere.
fn comparable(value: &serde_json::Value, key: &str) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), comparable(v, k)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| comparable(v, key)).collect()),
        other if VOLATILE.contains(&key) => Value::String(
            match other {
                Value::String(_) => "<string>",
                Value::Number(_) => "<number>",
                Value::Bool(_) => "<bool>",
                _ => "<other>",
            }
            .into(),
        ),
        other => other.clone(),
    }
}

/// The same JetStream API requests and publishes, in the same order, to strait and
/// to nats-server: every answer must have the same keys, the same types and the
/// same deterministic values (configs with their defaults, states, PubAcks, error
/// codes and texts, the account's usage and API counts).
#[tokio::test]
async fn jetstream_api_vs_nats_server() {
    let (base, strait, reference, clients) = jetstream_pair("strait-jsdiff").await;
    let requests: &[(&str, &str)] = &[
        ("$JS.API.INFO", ""),
        (
            "$JS.API.STREAM.CREATE.ORDERS",
            r#"{"name":"ORDERS","subjects":["orders.*"],"storage":"file","num_replicas":1}"#,
        ),
        (
            "$JS.API.STREAM.CREATE.ORDERS",
            r#"{"name":"ORDERS","subjects":["orders.*"],"storage":"file","num_replicas":1}"#,
        ),
        (
            "$JS.API.STREAM.CREATE.ORDERS",
            r#"{"name":"ORDERS","subjects":["orders.*"],"storage":"memory"}"#,
        ),
        ("orders.new", "first"),
        ("orders.new", "second"),
        ("orders.paid", "third"),
        ("orders.none.deeper", "no stream"),
        ("$JS.API.STREAM.INFO.ORDERS", ""),
        ("$JS.API.STREAM.INFO.ORDERS", r#"{"subjects_filter":">"}"#),
        ("$JS.API.STREAM.NAMES", ""),
        ("$JS.API.STREAM.LIST", ""),
        ("$JS.API.STREAM.MSG.GET.ORDERS", r#"{"seq":1}"#),
        (
            "$JS.API.STREAM.MSG.GET.ORDERS",
            r#"{"last_by_subj":"orders.new"}"#,
        ),
        ("$JS.API.STREAM.MSG.GET.ORDERS", r#"{"seq":99}"#),
        ("$JS.API.STREAM.MSG.DELETE.ORDERS", r#"{"seq":2}"#),
        ("$JS.API.STREAM.MSG.DELETE.ORDERS", r#"{"seq":2}"#),
        ("$JS.API.STREAM.INFO.ORDERS", r#"{"deleted_details":true}"#),
        (
            "$JS.API.STREAM.UPDATE.ORDERS",
            r#"{"name":"ORDERS","subjects":["orders.*"],"max_msgs":10,"storage":"file"}"#,
        ),
        (
            "$JS.API.STREAM.UPDATE.ORDERS",
            r#"{"name":"ORDERS","subjects":["orders.*"],"storage":"memory"}"#,
        ),
        ("$JS.API.STREAM.PURGE.ORDERS", r#"{"filter":"orders.paid"}"#),
        (
            "$JS.API.STREAM.CREATE.OVERLAP",
            r#"{"name":"OVERLAP","subjects":["orders.new"]}"#,
        ),
        (
            "$JS.API.STREAM.CREATE.REPLICAS",
            r#"{"name":"REPLICAS","subjects":["rep.>"],"num_replicas":3}"#,
        ),
        ("$JS.API.STREAM.CREATE.BAD", "{not json"),
        (
            "$JS.API.STREAM.CREATE.TYPO",
            r#"{"name":"TYPO","subjects":["typo.>"],"max_msg":5}"#,
        ),
        ("$JS.API.STREAM.INFO.ORDERS", r#"{"subject_filter":">"}"#),
        ("$JS.API.STREAM.CREATE.NAME", r#"{"name":"OTHER"}"#),
        (
            "$JS.API.STREAM.CREATE.KV_cfg",
            r#"{"name":"KV_cfg","subjects":["$KV.cfg.>"],"max_msgs_per_subject":5,"allow_rollup_hdrs":true,"deny_delete":true,"allow_direct":true,"discard":"new","duplicate_window":120000000000}"#,
        ),
        ("$KV.cfg.a", "1"),
        ("$JS.API.STREAM.INFO.NOPE", ""),
        ("$JS.API.STREAM.DELETE.KV_cfg", ""),
        ("$JS.API.STREAM.PURGE.ORDERS", ""),
        ("$JS.API.STREAM.DELETE.ORDERS", ""),
        ("$JS.API.STREAM.DELETE.ORDERS", ""),
        (
            "$JS.API.STREAM.CREATE.MARKED",
            r#"{"name":"MARKED","subjects":["marked.>"],"max_age":60000000000,"subject_delete_marker_ttl":5000000000}"#,
        ),
        (
            "$JS.API.STREAM.CREATE.SHAPED",
            r#"{"name":"SHAPED","subjects":["in.*"],"subject_transform":{"src":"in.*","dest":"kept.$1"},"republish":{"dest":"out.>","headers_only":true}}"#,
        ),
        ("in.a", "transformed"),
        ("$JS.API.STREAM.MSG.GET.SHAPED", r#"{"seq":1}"#),
        (
            "$JS.API.STREAM.CREATE.CYCLE",
            r#"{"name":"CYCLE","subjects":["loop.>"],"republish":{"src":">","dest":"loop.x.>"}}"#,
        ),
        ("$JS.API.STREAM.DELETE.MARKED", ""),
        ("$JS.API.STREAM.DELETE.SHAPED", ""),
        ("$JS.API.INFO", ""),
    ];
    for (i, (subject, body)) in requests.iter().enumerate() {
        let mut answers = Vec::new();
        for client in &clients {
            let answer = tokio::time::timeout(
                Duration::from_secs(5),
                client.request(subject.to_string(), body.to_string().into()),
            )
            .await
            .unwrap_or_else(|_| panic!("request {i} {subject}: no answer in time"));
            answers.push(match answer {
                Ok(m) => match serde_json::from_slice::<serde_json::Value>(&m.payload) {
                    Ok(json) => {
                        let mut json = comparable(&json, "");
                        // Go's and serde's JSON parsers word their complaints
                        // differently; the code and the prefix are nats-server's.
                        if json["error"]["err_code"] == 10025 {
                            json["error"]["description"] = "invalid JSON: <parser>".into();
                        }
                        json
                    }
                    Err(_) => serde_json::json!({"not json": String::from_utf8_lossy(&m.payload)}),
                },
                Err(e) => serde_json::json!({"request error": format!("{:?}", e.kind())}),
            });
        }
        assert_eq!(
            answers[0], answers[1],
            "request {i}: {subject} {body}\nstrait (left) and nats-server (right) differ"
        );
    }
    drop(strait);
    drop(reference);
    let _ = std::fs::remove_dir_all(&base);
}

/// Counter streams against nats-server: creation rules, every increment error,
/// the PubAcks with their totals, dedupe, a deletion and a purge under a
/// counter, and a stream that sources counters, message for message.
#[tokio::test]
async fn counters_vs_nats_server() {
    let (base, strait, reference, clients) = jetstream_pair("strait-ctrdiff").await;
    const INCR: &str = "Nats-Incr";
    let create = |cfg: &'static str| ("$JS.API.STREAM.CREATE.C", cfg, vec![]);
    let incr = |subject: &'static str, by: &'static str| (subject, "", vec![(INCR, by)]);
    let requests: Vec<HeaderedRequest> = vec![
        create(r#"{"name":"C","subjects":["c.>"],"allow_msg_counter":true,"discard":"new"}"#),
        create(r#"{"name":"C","subjects":["c.>"],"allow_msg_counter":true,"allow_msg_ttl":true}"#),
        create(
            r#"{"name":"C","subjects":["c.>"],"allow_msg_counter":true,"retention":"interest"}"#,
        ),
        create(r#"{"name":"C","allow_msg_counter":true,"mirror":{"name":"X"}}"#),
        create(
            r#"{"name":"C","subjects":["c.>"],"allow_msg_counter":true,"max_msgs_per_subject":5}"#,
        ),
        (
            "$JS.API.STREAM.UPDATE.C",
            r#"{"name":"C","subjects":["c.>"],"max_msgs_per_subject":5}"#,
            vec![],
        ),
        (
            "$JS.API.STREAM.CREATE.P",
            r#"{"name":"P","subjects":["p.>"]}"#,
            vec![],
        ),
        incr("c.a", "+1"),
        incr("c.a", "5"),
        incr("c.a", "-10"),
        incr("c.b", "123456789012345678901234567890"),
        incr("c.b", "+1"),
        incr("c.a", "x"),
        incr("c.a", "1_0"),
        incr("c.a", ""),
        incr("c.a", "+0"),
        ("c.a", "payload", vec![(INCR, "1")]),
        ("c.a", "", vec![(INCR, "1"), ("Nats-Rollup", "sub")]),
        (
            "c.a",
            "",
            vec![(INCR, "1"), ("Nats-Expected-Last-Sequence", "1")],
        ),
        ("c.a", "", vec![(INCR, "1"), ("Nats-Expected-Stream", "C")]),
        ("c.a", "", vec![(INCR, "1"), ("Nats-TTL", "5s")]),
        ("c.a", "", vec![("Other", "1")]),
        ("c.a", "no header", vec![]),
        incr("p.a", "1"),
        incr("p.a", "zz"),
        ("c.a", "", vec![(INCR, "2"), ("Nats-Msg-Id", "m1")]),
        ("c.a", "", vec![(INCR, "2"), ("Nats-Msg-Id", "m1")]),
        (
            "$JS.API.STREAM.MSG.GET.C",
            r#"{"last_by_subj":"c.b"}"#,
            vec![],
        ),
        ("$JS.API.STREAM.MSG.DELETE.C", r#"{"seq":7}"#, vec![]),
        incr("c.a", "1"),
        ("$JS.API.STREAM.PURGE.C", r#"{"filter":"c.a"}"#, vec![]),
        incr("c.a", "1"),
        (
            "$JS.API.STREAM.CREATE.AGG",
            r#"{"name":"AGG","subjects":["agg.>"],"allow_msg_counter":true,"sources":[{"name":"C"}]}"#,
            vec![],
        ),
    ];
    for (i, (subject, body, headers)) in requests.iter().enumerate() {
        let mut answers = Vec::new();
        for client in &clients {
            answers.push(headered_request(client, subject, body, headers).await);
        }
        assert_eq!(
            answers[0], answers[1],
            "request {i}: {subject} {headers:?} {body}\nstrait (left) and nats-server (right) differ"
        );
    }
    // What the aggregate holds once it caught up: the same totals, headers
    // and all, on both servers.
    let mut held = Vec::new();
    for client in &clients {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let got = loop {
            let last = headered_request(
                client,
                "$JS.API.STREAM.MSG.GET.AGG",
                r#"{"last_by_subj":"c.a"}"#,
                &[],
            )
            .await;
            if last["message"]["seq"] == 3 || std::time::Instant::now() > deadline {
                break headered_request(
                    client,
                    "$JS.API.STREAM.MSG.GET.AGG",
                    r#"{"last_by_subj":"c.b"}"#,
                    &[],
                )
                .await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        held.push(got);
    }
    assert_eq!(held[0], held[1], "the aggregate's last c.b differs");
    assert_eq!(held[0]["message"]["seq"], 2, "{}", held[0]);
    let mut own = Vec::new();
    for client in &clients {
        own.push(headered_request(client, "agg.own", "", &[(INCR, "3")]).await);
    }
    assert_eq!(own[0], own[1], "a local increment on the aggregate differs");
    drop(strait);
    drop(reference);
    let _ = std::fs::remove_dir_all(&base);
}

/// A subject, a body and the headers sent with it.
type HeaderedRequest = (
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
);

/// A request with headers, its JSON answer made comparable (see [`comparable`]);
/// an empty answer (a staged batch message) as `"<empty>"`.
async fn headered_request(
    client: &async_nats::Client,
    subject: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> serde_json::Value {
    let mut map = async_nats::HeaderMap::new();
    for (name, value) in headers {
        map.insert(*name, *value);
    }
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        client.request_with_headers(subject.to_string(), map, body.to_string().into()),
    )
    .await
    .unwrap_or_else(|_| panic!("{subject}: no answer in time"))
    .expect("answer");
    if answer.payload.is_empty() {
        return serde_json::json!("<empty>");
    }
    let mut json: serde_json::Value = serde_json::from_slice(&answer.payload).expect("JSON answer");
    // The client writes a header map in no fixed order: compare the lines.
    if let Some(hdrs) = json["message"].get("hdrs").filter(|h| h.is_string()) {
        let text = common::decode(hdrs);
        let mut lines: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
        lines.sort_unstable();
        json["message"]["hdrs"] = serde_json::json!(lines);
    }
    comparable(&json, "")
}

/// Atomic batches against nats-server: the commit's PubAck, every refusal of
/// the batch rules, a batch refused at its commit storing nothing, and what
/// the stored messages carry.
#[tokio::test]
async fn atomic_batches_vs_nats_server() {
    let (base, strait, reference, clients) = jetstream_pair("strait-batchdiff").await;
    const ID: &str = "Nats-Batch-Id";
    const SEQ: &str = "Nats-Batch-Sequence";
    const COMMIT: &str = "Nats-Batch-Commit";
    let part = |subject: &'static str, id: &'static str, seq: &'static str| -> HeaderedRequest {
        (subject, "data", vec![(ID, id), (SEQ, seq)])
    };
    let commit = |subject: &'static str,
                  id: &'static str,
                  seq: &'static str,
                  how: &'static str|
     -> HeaderedRequest {
        (subject, "data", vec![(ID, id), (SEQ, seq), (COMMIT, how)])
    };
    let with = |mut r: HeaderedRequest, name: &'static str, value: &'static str| {
        r.2.push((name, value));
        r
    };
    let requests: Vec<HeaderedRequest> = vec![
        (
            "$JS.API.STREAM.CREATE.B",
            r#"{"name":"B","subjects":["b.>"],"allow_atomic":true}"#,
            vec![],
        ),
        (
            "$JS.API.STREAM.CREATE.N",
            r#"{"name":"N","subjects":["n.>"]}"#,
            vec![],
        ),
        part("n.a", "x", "1"),
        part("b.a", "a", "1"),
        part("b.b", "a", "2"),
        commit("b.c", "a", "3", "1"),
        part("b.a", "e", "1"),
        commit("b.a", "e", "2", "eob"),
        part("b.a", "g", "1"),
        part("b.a", "g", "3"),
        part("b.a", "u", "2"),
        part("b.a", "big", "1001"),
        part("b.a", "c", "1"),
        commit("b.a", "c", "2", "yes"),
        ("b.a", "data", vec![(ID, "s")]),
        commit("b.a", "eo", "1", "eob"),
        with(part("b.a", "m", "1"), "Nats-Expected-Last-Msg-Id", "z"),
        commit("b.a", "m", "2", "1"),
        with(part("b.a", "d", "1"), "Nats-Msg-Id", "dup"),
        with(commit("b.a", "d", "2", "1"), "Nats-Msg-Id", "dup"),
        with(part("b.a", "q", "1"), "Nats-Msg-Id", "q1"),
        commit("b.a", "q", "2", "1"),
        with(commit("b.a", "q2", "1", "1"), "Nats-Msg-Id", "q1"),
        with(part("b.a", "l", "1"), "Nats-Expected-Last-Sequence", "99"),
        commit("b.a", "l", "2", "1"),
        part("b.a", "l2", "1"),
        with(
            commit("b.a", "l2", "2", "1"),
            "Nats-Expected-Last-Sequence",
            "12",
        ),
        part("b.a", "l3", "1"),
        with(
            commit("b.a", "l3", "2", "1"),
            "Nats-Expected-Last-Sequence",
            "7",
        ),
        part("b.z", "ls", "1"),
        with(
            commit("b.z", "ls", "2", "1"),
            "Nats-Expected-Last-Subject-Sequence",
            "0",
        ),
        with(
            commit("b.a", "lv", "1", "1"),
            "Nats-Required-Api-Level",
            "9",
        ),
        commit("b.a", "one", "1", "1"),
        ("$JS.API.STREAM.INFO.B", "", vec![]),
        ("$JS.API.STREAM.MSG.GET.B", r#"{"seq":3}"#, vec![]),
        ("$JS.API.STREAM.MSG.GET.B", r#"{"seq":4}"#, vec![]),
    ];
    for (i, (subject, body, headers)) in requests.iter().enumerate() {
        let mut answers = Vec::new();
        for client in &clients {
            answers.push(headered_request(client, subject, body, headers).await);
        }
        assert_eq!(
            answers[0], answers[1],
            "request {i}: {subject} {headers:?} {body}\nstrait (left) and nats-server (right) differ"
        );
    }
    drop(strait);
    drop(reference);
    let _ = std::fs::remove_dir_all(&base);
}

/// strait (one shard) and nats-server, each with JetStream in its own store
/// under a fresh directory, and a client of each.
async fn jetstream_pair(
    prefix: &str,
) -> (
    std::path::PathBuf,
    Server,
    Reference,
    [async_nats::Client; 2],
) {
    let base = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("dir");
    let store = |name: &str| base.join(name).display().to_string();
    let strait = Server::start_with_config(
        Some(&format!(
            "jetstream {{ store_dir: {:?} }}\n",
            store("strait")
        )),
        &["--shards", "1"],
    );
    let reference_conf = base.join("reference.conf");
    std::fs::write(
        &reference_conf,
        format!("jetstream {{ store_dir: {:?} }}\n", store("reference")),
    )
    .expect("reference config");
    let reference = Reference::start(&reference_conf);
    let clients = [
        async_nats::connect(format!("127.0.0.1:{}", strait.port))
            .await
            .expect("connect strait"),
        async_nats::connect(format!("127.0.0.1:{}", reference.port))
            .await
            .expect("connect nats-server"),
    ];
    (base, strait, reference, clients)
}
