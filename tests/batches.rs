//! Atomic batch publishing (`allow_atomic`) through async-nats: a batch is
//! stored whole with one PubAck or not at all, survives a SIGKILL once
//! acknowledged, an open batch does not survive a restart, and the
//! `limits { batch { ... } }` configuration bounds batches, with the
//! `BATCH_ABANDONED` advisory when one times out.

mod common;

use std::time::Duration;

use async_nats::HeaderMap;
use common::{api, Server};
use futures::StreamExt;

fn store_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("strait-batch-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(dir: &std::path::Path, limits: &str) -> String {
    format!("jetstream {{ store_dir: {dir:?}\n limits {{ {limits} }} }}\n")
}

/// Publishes message `seq` of batch `id` (the commit when `commit` says how)
/// and returns the answer: empty while the batch is open, the PubAck at the
/// commit, an error when refused.
async fn part(
    client: &async_nats::Client,
    subject: &str,
    id: &str,
    seq: u64,
    commit: Option<&str>,
    extra: &[(&str, &str)],
) -> String {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Batch-Id", id);
    headers.insert("Nats-Batch-Sequence", seq.to_string().as_str());
    if let Some(how) = commit {
        headers.insert("Nats-Batch-Commit", how);
    }
    for (name, value) in extra {
        headers.insert(*name, *value);
    }
    let answer = client
        .request_with_headers(subject.to_string(), headers, format!("m{seq}").into())
        .await
        .expect("answer");
    String::from_utf8_lossy(&answer.payload).into_owned()
}

async fn messages(client: &async_nats::Client, stream: &str) -> u64 {
    let info = api(client, &format!("$JS.API.STREAM.INFO.{stream}"), "").await;
    info["state"]["messages"].as_u64().expect("messages")
}

#[tokio::test]
async fn a_batch_is_stored_whole_or_not_at_all_and_an_open_one_ends_with_a_restart() {
    let dir = store_dir("whole");
    let conf = config(&dir, "");
    let server = Server::start_with_config(Some(&conf), &[]);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let created = api(
        &client,
        "$JS.API.STREAM.CREATE.ORDERS",
        r#"{"name":"ORDERS","subjects":["orders.>"],"allow_atomic":true}"#,
    )
    .await;
    assert_eq!(created["config"]["metadata"]["_nats.req.level"], "2");
    // A consumer sees nothing of a batch before its commit, then all of it.
    let mut watched = client.subscribe("watch").await.expect("subscribe");
    api(
        &client,
        "$JS.API.CONSUMER.CREATE.ORDERS.W",
        r#"{"stream_name":"ORDERS","config":{"name":"W","deliver_subject":"watch","ack_policy":"none"}}"#,
    )
    .await;
    for seq in 1..=9 {
        let answer = part(&client, "orders.new", "b1", seq, None, &[]).await;
        assert_eq!(answer, "", "message {seq} of an open batch");
    }
    assert_eq!(messages(&client, "ORDERS").await, 0);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), watched.next())
            .await
            .is_err(),
        "delivered before the commit"
    );
    let ack = part(&client, "orders.paid", "b1", 10, Some("1"), &[]).await;
    assert_eq!(
        ack,
        r#"{"stream":"ORDERS","seq":10,"batch":"b1","count":10}"#
    );
    for seq in 1..=10 {
        let m = tokio::time::timeout(Duration::from_secs(5), watched.next())
            .await
            .expect("delivered")
            .expect("message");
        assert_eq!(m.payload, format!("m{seq}"));
    }
    // Refused at the commit: none of it is stored.
    part(&client, "orders.new", "b2", 1, None, &[]).await;
    part(
        &client,
        "orders.new",
        "b2",
        2,
        None,
        &[("Nats-Msg-Id", "x")],
    )
    .await;
    let refused = part(
        &client,
        "orders.new",
        "b2",
        3,
        Some("1"),
        &[("Nats-Msg-Id", "x")],
    )
    .await;
    assert!(refused.contains("10201"), "{refused}");
    assert_eq!(messages(&client, "ORDERS").await, 10);

    // SIGKILL with a batch open: the committed one is all there, the open
    // one is gone, and going on with it is refused.
    part(&client, "orders.new", "b3", 1, None, &[]).await;
    drop(server);
    let server = Server::start_with_config(Some(&conf), &[]);
    let client = async_nats::connect(server.url()).await.expect("reconnect");
    assert_eq!(messages(&client, "ORDERS").await, 10);
    let refused = part(&client, "orders.new", "b3", 2, Some("1"), &[]).await;
    assert!(
        refused.contains("atomic publish batch is incomplete"),
        "{refused}"
    );
    assert_eq!(messages(&client, "ORDERS").await, 10);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn batch_limits_come_from_the_configuration_and_an_idle_batch_is_abandoned() {
    let dir = store_dir("limits");
    let conf = config(
        &dir,
        r#"batch { max_msgs: 3, max_inflight_per_stream: 2, timeout: "1s" }"#,
    );
    let server = Server::start_with_config(Some(&conf), &[]);
    let client = async_nats::connect(server.url()).await.expect("connect");
    api(
        &client,
        "$JS.API.STREAM.CREATE.B",
        r#"{"name":"B","subjects":["b.>"],"allow_atomic":true}"#,
    )
    .await;
    let mut advisories = client
        .subscribe("$JS.EVENT.ADVISORY.STREAM.BATCH_ABANDONED.B")
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    for seq in 1..=3 {
        part(&client, "b.x", "big", seq, None, &[]).await;
    }
    let refused = part(&client, "b.x", "big", 4, None, &[]).await;
    assert!(
        refused.contains("atomic publish batch is too large: 3"),
        "{refused}"
    );
    let advisory = tokio::time::timeout(Duration::from_secs(5), advisories.next())
        .await
        .expect("advisory")
        .expect("message");
    let advisory: serde_json::Value = serde_json::from_slice(&advisory.payload).expect("JSON");
    assert_eq!(
        (&advisory["batch"], &advisory["reason"], &advisory["type"]),
        (
            &serde_json::json!("big"),
            &serde_json::json!("large"),
            &serde_json::json!("io.nats.jetstream.advisory.v1.stream_batch_abandoned")
        )
    );
    part(&client, "b.x", "one", 1, None, &[]).await;
    part(&client, "b.x", "two", 1, None, &[]).await;
    let refused = part(&client, "b.x", "three", 1, None, &[]).await;
    assert!(refused.contains("10210"), "{refused}");
    // One second without a message: both are abandoned.
    let mut reasons = Vec::new();
    for _ in 0..2 {
        let advisory = tokio::time::timeout(Duration::from_secs(5), advisories.next())
            .await
            .expect("advisory")
            .expect("message");
        let advisory: serde_json::Value = serde_json::from_slice(&advisory.payload).expect("JSON");
        reasons.push(format!("{} {}", advisory["batch"], advisory["reason"]));
    }
    reasons.sort();
    assert_eq!(reasons, [r#""one" "timeout""#, r#""two" "timeout""#]);
    let refused = part(&client, "b.x", "one", 2, Some("1"), &[]).await;
    assert!(refused.contains("incomplete"), "{refused}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
