//! Stream snapshots and restores driven as natscli and the Go client's jsm
//! drive them (`nats stream backup` / `restore`): the snapshot request, the
//! chunks with their flow-control acks and the 204 that ends them; the
//! restore request, chunks sent as requests, the empty one that ends them and
//! the stream create response. Round trips keep messages, headers, sequences,
//! deleted sequences and durable consumers with their pending acks; a restore
//! over a stream refuses, and one cut off (client gone, server killed) leaves
//! nothing behind.

mod common;

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use common::{api, decode, Server};
use futures::StreamExt;
use serde_json::{json, Value};

fn store_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("strait-backup-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn start(dir: &std::path::Path) -> Server {
    Server::start(&["-js", "-sd", dir.to_str().expect("utf-8 path")])
}

/// What `nats stream backup` keeps: the response (config and state) and the
/// archive's bytes.
async fn backup(client: &async_nats::Client, stream: &str, chunk_size: usize) -> (Value, Vec<u8>) {
    let inbox = client.new_inbox();
    let request = json!({"deliver_subject": inbox, "chunk_size": chunk_size, "jsck": false});
    let response = api(
        client,
        &format!("$JS.API.STREAM.SNAPSHOT.{stream}"),
        &request.to_string(),
    )
    .await;
    assert_eq!(
        response["type"], "io.nats.jetstream.api.v1.stream_snapshot_response",
        "{response}"
    );
    assert!(response.get("error").is_none(), "{response}");
    // As jsm does: subscribed only once the response is in.
    let mut chunks = client.subscribe(inbox).await.expect("subscribe");
    let mut data = Vec::new();
    let mut acked = 0;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), chunks.next())
            .await
            .expect("a chunk in time")
            .expect("subscription open");
        if msg.payload.is_empty() {
            let status = msg.status.map(|s| s.as_u16());
            assert_eq!(status, Some(204), "the transfer ends with 204: {msg:?}");
            break;
        }
        assert!(msg.payload.len() <= chunk_size.max(1024));
        data.extend_from_slice(&msg.payload);
        if let Some(reply) = msg.reply {
            assert!(reply.starts_with(&format!("$JS.SNAPSHOT.ACK.{stream}.")));
            client.publish(reply, "".into()).await.expect("ack");
            acked += 1;
        }
    }
    assert!(acked > 0, "chunks carry the subject of their ack");
    (response, data)
}

/// What `nats stream restore` does with a backup: the final create response.
async fn restore(client: &async_nats::Client, backup: &Value, data: &[u8]) -> Value {
    let name = backup["config"]["name"].as_str().expect("name");
    let request = json!({"config": backup["config"], "state": backup["state"]});
    let response = api(
        client,
        &format!("$JS.API.STREAM.RESTORE.{name}"),
        &request.to_string(),
    )
    .await;
    if response.get("error").is_some() {
        return response;
    }
    assert_eq!(
        response["type"],
        "io.nats.jetstream.api.v1.stream_restore_response"
    );
    let deliver = response["deliver_subject"]
        .as_str()
        .expect("deliver subject");
    assert!(deliver.starts_with(&format!("$JS.SNAPSHOT.RESTORE.{name}.")));
    for chunk in data.chunks(64 * 1024) {
        let ack = client
            .request(deliver.to_string(), chunk.to_vec().into())
            .await
            .expect("chunk acked");
        assert!(ack.payload.is_empty(), "{:?}", ack.payload);
    }
    let done = client
        .request(deliver.to_string(), "".into())
        .await
        .expect("final response");
    serde_json::from_slice(&done.payload).expect("JSON")
}

async fn fill(js: &jetstream::Context, subject: &str, n: u64) {
    for i in 1..=n {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Order", i.to_string().as_str());
        js.publish_with_headers(
            format!("{subject}.{}", i % 7),
            headers,
            format!("msg {i}").into(),
        )
        .await
        .expect("publish")
        .await
        .expect("ack");
    }
}

#[tokio::test]
async fn a_stream_round_trips_with_its_consumers_and_their_acks() {
    let dir = store_dir("round");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    js.create_stream(stream::Config {
        name: "ORDERS".into(),
        subjects: vec!["orders.>".into()],
        ..Default::default()
    })
    .await
    .expect("stream");
    fill(&js, "orders", 2000).await;
    for seq in [5u64, 6, 700] {
        let r = api(
            &client,
            "$JS.API.STREAM.MSG.DELETE.ORDERS",
            &format!(r#"{{"seq":{seq}}}"#),
        )
        .await;
        assert_eq!(r["success"], true, "{r}");
    }
    let stream = js.get_stream("ORDERS").await.expect("stream");
    let durable = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("WORKER".into()),
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut batch = durable
        .fetch()
        .max_messages(10)
        .messages()
        .await
        .expect("fetch");
    let mut n = 0;
    while let Some(m) = batch.next().await {
        let m = m.expect("message");
        n += 1;
        if n <= 4 {
            m.ack().await.expect("ack");
        }
    }
    assert_eq!(n, 10);
    let before = api(&client, "$JS.API.CONSUMER.INFO.ORDERS.WORKER", "").await;
    assert_eq!(before["num_ack_pending"], 6, "{before}");

    let original = api(&client, "$JS.API.STREAM.INFO.ORDERS", "").await;
    let mut advisories = client
        .subscribe("$JS.EVENT.ADVISORY.STREAM.*.ORDERS")
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    let (saved, data) = backup(&client, "ORDERS", 4096).await;
    assert_eq!(saved["state"]["messages"], 1997, "{saved}");
    assert_eq!(saved["config"]["name"], "ORDERS");
    assert!(data.len() > 4096, "several chunks: {}", data.len());

    // Over the stream that is still there: refused as nats-server refuses it.
    let refused = restore(&client, &saved, &data).await;
    assert_eq!(refused["error"]["err_code"], 10130, "{refused}");

    let deleted = api(&client, "$JS.API.STREAM.DELETE.ORDERS", "").await;
    assert_eq!(deleted["success"], true);
    let restored = restore(&client, &saved, &data).await;
    assert_eq!(
        restored["type"], "io.nats.jetstream.api.v1.stream_create_response",
        "{restored}"
    );
    assert!(restored.get("error").is_none(), "{restored}");
    let state = &restored["state"];
    assert_eq!(state["messages"], 1997, "{restored}");
    // The four advisories, each naming the client that asked, as nats-server's.
    let mut seen = Vec::new();
    loop {
        let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(5), advisories.next()).await
        else {
            break;
        };
        let body: Value = serde_json::from_slice(&m.payload).expect("JSON");
        let kind = m
            .subject
            .as_str()
            .split('.')
            .nth(4)
            .unwrap_or_default()
            .to_string();
        if kind.starts_with("SNAPSHOT") || kind.starts_with("RESTORE") {
            assert!(body["client"].is_object(), "{kind}: {body}");
            assert_eq!(body["stream"], "ORDERS");
            let expected = format!("io.nats.jetstream.advisory.v1.{}", kind.to_lowercase());
            assert_eq!(body["type"], expected, "{body}");
            if kind == "RESTORE_COMPLETE" {
                assert_eq!(body["bytes"], data.len() as u64);
            }
            seen.push(kind);
        }
        if seen.len() == 4 {
            break;
        }
    }
    // The restore refused over the existing stream published none.
    for kind in [
        "SNAPSHOT_CREATE",
        "SNAPSHOT_COMPLETE",
        "RESTORE_CREATE",
        "RESTORE_COMPLETE",
    ] {
        assert!(seen.iter().any(|k| k == kind), "{kind} in {seen:?}");
    }
    assert_eq!(state["first_seq"], 1);
    assert_eq!(state["last_seq"], 2000);
    assert_eq!(state["num_deleted"], 3);
    assert_eq!(restored["created"], original["created"]);

    let got = api(&client, "$JS.API.STREAM.MSG.GET.ORDERS", r#"{"seq":1234}"#).await;
    assert_eq!(got["message"]["subject"], "orders.2");
    let hdrs = decode(&got["message"]["hdrs"]);
    assert!(hdrs.contains("Order: 1234"), "{hdrs}");
    let gone = api(&client, "$JS.API.STREAM.MSG.GET.ORDERS", r#"{"seq":700}"#).await;
    assert_eq!(gone["error"]["err_code"], 10037, "{gone}");

    let after = api(&client, "$JS.API.CONSUMER.INFO.ORDERS.WORKER", "").await;
    assert_eq!(after["num_ack_pending"], 6, "{after}");
    assert_eq!(after["delivered"]["stream_seq"], 12, "{after}");
    for section in ["delivered", "ack_floor"] {
        for seq in ["consumer_seq", "stream_seq"] {
            assert_eq!(
                after[section][seq], before[section][seq],
                "{section} {after}"
            );
        }
    }
    assert_eq!(after["created"], before["created"]);
    assert_eq!(after["config"]["ack_wait"], before["config"]["ack_wait"]);

    // The restored stream takes new messages after its last sequence, and
    // survives a restart.
    let ack = js
        .publish("orders.new", "after".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    assert_eq!(ack.sequence, 2001);
    drop(client);
    drop(server);
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let info = api(&client, "$JS.API.STREAM.INFO.ORDERS", "").await;
    assert_eq!(info["state"]["messages"], 1998, "{info}");
    let consumer = api(&client, "$JS.API.CONSUMER.INFO.ORDERS.WORKER", "").await;
    assert_eq!(consumer["num_ack_pending"], 6, "{consumer}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn requests_are_checked_as_nats_server_checks_them() {
    let dir = store_dir("checks");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    js.create_stream(stream::Config {
        name: "MEM".into(),
        subjects: vec!["mem".into()],
        storage: stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .expect("stream");
    let e = api(
        &client,
        "$JS.API.STREAM.SNAPSHOT.NOPE",
        r#"{"deliver_subject":"x"}"#,
    )
    .await;
    assert_eq!(e["error"]["err_code"], 10059, "{e}");
    let e = api(&client, "$JS.API.STREAM.SNAPSHOT.MEM", "").await;
    assert_eq!(e["error"]["err_code"], 10003, "{e}");
    let e = api(
        &client,
        "$JS.API.STREAM.SNAPSHOT.MEM",
        r#"{"deliver_subject":"a.*"}"#,
    )
    .await;
    assert_eq!(e["error"]["err_code"], 10015, "{e}");
    let e = api(
        &client,
        "$JS.API.STREAM.SNAPSHOT.MEM",
        r#"{"deliver_subject":"a"}"#,
    )
    .await;
    assert_eq!(
        e["error"]["err_code"], 10064,
        "memory streams are not snapshotted: {e}"
    );
    let e = api(
        &client,
        "$JS.API.STREAM.RESTORE.X",
        r#"{"config":{"name":"Y","subjects":["y"]}}"#,
    )
    .await;
    assert_eq!(e["error"]["err_code"], 10056, "{e}");
    // What is not an archive of this server's is refused at the end, and
    // leaves no stream.
    let bogus = json!({"config": {"name": "BOGUS", "subjects": ["bogus"]}});
    let r = restore(&client, &bogus, b"this is not a snapshot").await;
    assert_eq!(r["error"]["err_code"], 10062, "{r}");
    let info = api(&client, "$JS.API.STREAM.INFO.BOGUS", "").await;
    assert_eq!(info["error"]["err_code"], 10059, "{info}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts a restore and sends part of the archive; answers the deliver subject.
async fn start_restore(client: &async_nats::Client, saved: &Value, part: &[u8]) -> String {
    let name = saved["config"]["name"].as_str().expect("name");
    let request = json!({"config": saved["config"], "state": saved["state"]});
    let response = api(
        client,
        &format!("$JS.API.STREAM.RESTORE.{name}"),
        &request.to_string(),
    )
    .await;
    let deliver = response["deliver_subject"]
        .as_str()
        .unwrap_or_else(|| panic!("a deliver subject: {response}"))
        .to_string();
    client
        .request(deliver.clone(), part.to_vec().into())
        .await
        .expect("chunk acked");
    deliver
}

#[tokio::test]
async fn a_restore_cut_off_leaves_nothing_half_restored() {
    let dir = store_dir("cut");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    js.create_stream(stream::Config {
        name: "S".into(),
        subjects: vec!["s.>".into()],
        ..Default::default()
    })
    .await
    .expect("stream");
    fill(&js, "s", 300).await;
    let (saved, data) = backup(&client, "S", 1024).await;
    api(&client, "$JS.API.STREAM.DELETE.S", "").await;

    // The client goes away: the restore stalls and is given up.
    start_restore(&client, &saved, &data[..data.len() / 2]).await;
    let busy = api(
        &client,
        "$JS.API.STREAM.RESTORE.S",
        &json!({"config": saved["config"]}).to_string(),
    )
    .await;
    assert_eq!(
        busy["error"]["err_code"], 10130,
        "one restore at a time: {busy}"
    );
    assert!(server.wait_for_log("is stalled", Duration::from_secs(15)));
    let info = api(&client, "$JS.API.STREAM.INFO.S", "").await;
    assert_eq!(info["error"]["err_code"], 10059, "{info}");

    // The server is killed in the middle: nothing is there after the restart.
    start_restore(&client, &saved, &data[..data.len() / 2]).await;
    drop(client);
    drop(server);
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let info = api(&client, "$JS.API.STREAM.INFO.S", "").await;
    assert_eq!(info["error"]["err_code"], 10059, "{info}");
    assert!(!dir.join("jetstream/.transfers").exists());
    let restored = restore(&client, &saved, &data).await;
    assert_eq!(restored["state"]["messages"], 300, "{restored}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_receiver_that_stops_acking_ends_the_transfer_with_408() {
    let dir = store_dir("noack");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    js.create_stream(stream::Config {
        name: "BIG".into(),
        subjects: vec!["big".into()],
        ..Default::default()
    })
    .await
    .expect("stream");
    let payload = vec![b'x'; 8192];
    for _ in 0..200 {
        js.publish("big", payload.clone().into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    let inbox = client.new_inbox();
    let mut chunks = client.subscribe(inbox.clone()).await.expect("subscribe");
    let request = json!({"deliver_subject": inbox, "chunk_size": 1024, "window_size": 4096});
    let response = api(&client, "$JS.API.STREAM.SNAPSHOT.BIG", &request.to_string()).await;
    assert!(response.get("error").is_none(), "{response}");
    let began = Instant::now();
    let mut data_chunks = 0;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(15), chunks.next())
            .await
            .expect("in time")
            .expect("open");
        if msg.payload.is_empty() {
            assert_eq!(msg.status.map(|s| s.as_u16()), Some(408), "{msg:?}");
            assert_eq!(msg.description.as_deref(), Some("No Flow Response"));
            break;
        }
        data_chunks += 1;
    }
    assert_eq!(data_chunks, 4, "no more than the window without acks");
    assert!(began.elapsed() >= Duration::from_secs(4));
    let _ = std::fs::remove_dir_all(&dir);
}
