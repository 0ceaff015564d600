//! JetStream consumers through a client we did not write (async-nats) and
//! through the raw API: create, info, names, list, delete, pull requests with
//! their statuses, every ack kind, redelivery and advisories.

mod common;

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream, AckKind};
use common::Server;
use futures::StreamExt;

fn store_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("strait-cons-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn start(dir: &std::path::Path) -> Server {
    Server::start(&["-js", "-sd", dir.to_str().expect("utf-8 path")])
}

async fn api(client: &async_nats::Client, subject: &str, body: &str) -> serde_json::Value {
    let answer = client
        .request(subject.to_string(), body.to_string().into())
        .await
        .expect("answer");
    serde_json::from_slice(&answer.payload).expect("JSON")
}

/// ORDERS on `ORDERS.*` with `n` messages alternating `ORDERS.new` (odd
/// sequences) and `ORDERS.paid` (even).
async fn orders(js: &jetstream::Context, n: u64) -> stream::Stream {
    let stream = js
        .create_stream(stream::Config {
            name: "ORDERS".into(),
            subjects: vec!["ORDERS.*".into()],
            ..Default::default()
        })
        .await
        .expect("create stream");
    for i in 1..=n {
        let subject = if i % 2 == 1 {
            "ORDERS.new"
        } else {
            "ORDERS.paid"
        };
        js.publish(subject, format!("order {i}").into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    stream
}

async fn fetch(c: &consumer::PullConsumer, n: usize) -> Vec<jetstream::Message> {
    let mut batch = c
        .fetch()
        .max_messages(n)
        .expires(Duration::from_millis(500))
        .messages()
        .await
        .expect("fetch");
    let mut got = Vec::new();
    while let Some(m) = batch.next().await {
        got.push(m.expect("message"));
    }
    got
}

#[tokio::test]
async fn a_pull_consumer_fetches_filtered_messages_and_its_acks_show_in_info() {
    let dir = store_dir("pull");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    let stream = orders(&js, 10).await;
    let created = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("NEW".into()),
            filter_subject: "ORDERS.new".into(),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("create consumer");
    let mut c: consumer::PullConsumer = created;
    let info = c.info().await.expect("info").clone();
    assert_eq!(info.name, "NEW");
    assert_eq!(info.num_pending, 5, "five of the ten match the filter");
    assert_eq!(info.delivered.consumer_sequence, 0);

    let got = fetch(&c, 3).await;
    let seen: Vec<(String, u64, u64, i64)> = got
        .iter()
        .map(|m| {
            let i = m.info().expect("ack metadata");
            (
                m.subject.to_string(),
                i.stream_sequence,
                i.consumer_sequence,
                i.delivered,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("ORDERS.new".to_string(), 1, 1, 1),
            ("ORDERS.new".to_string(), 3, 2, 1),
            ("ORDERS.new".to_string(), 5, 3, 1)
        ],
        "shown with the stored subject, numbered in the ack subject"
    );
    assert_eq!(&got[0].payload[..], b"order 1");
    assert_eq!(got[2].info().expect("info").pending, 2);
    // A double ack is answered once it is applied.
    got[0].double_ack().await.expect("double ack");
    got[1].ack().await.expect("ack");
    got[2].ack_with(AckKind::Nak(None)).await.expect("nak");
    let info = c.info().await.expect("info").clone();
    assert_eq!(info.delivered.consumer_sequence, 3);
    assert_eq!(info.delivered.stream_sequence, 5);
    assert_eq!(
        (
            info.ack_floor.consumer_sequence,
            info.ack_floor.stream_sequence
        ),
        (2, 4),
        "as nats-server moves it: to just below the first pending stream sequence"
    );
    assert_eq!(info.num_ack_pending, 1);
    assert_eq!(info.num_pending, 2);

    // The nak'd message comes first again, delivered twice now.
    let again = fetch(&c, 1).await;
    let i = again[0].info().expect("info");
    assert_eq!(
        (i.stream_sequence, i.consumer_sequence, i.delivered),
        (5, 4, 2)
    );
    again[0].ack_with(AckKind::Term).await.expect("term");
    let rest = fetch(&c, 10).await;
    let seqs: Vec<u64> = rest
        .iter()
        .map(|m| m.info().expect("info").stream_sequence)
        .collect();
    assert_eq!(seqs, [7, 9], "a fetch ends at what there is");
    for m in &rest {
        m.ack().await.expect("ack");
    }
    client.flush().await.expect("flush");

    // A message published while a request waits is handed to it.
    let waiting = {
        let c = c.clone();
        tokio::spawn(async move { fetch(&c, 1).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    js.publish("ORDERS.new", "late".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    let late = waiting.await.expect("task");
    assert_eq!(late.len(), 1);
    assert_eq!(&late[0].payload[..], b"late");
    late[0].double_ack().await.expect("ack");

    let info = c.info().await.expect("info").clone();
    assert_eq!(info.num_ack_pending, 0);
    assert_eq!(info.num_pending, 0);
    assert_eq!(info.ack_floor.stream_sequence, 11);

    // Listed, counted, then deleted.
    let names = api(&client, "$JS.API.CONSUMER.NAMES.ORDERS", "").await;
    assert_eq!(names["consumers"], serde_json::json!(["NEW"]), "{names}");
    assert_eq!(names["total"], 1);
    let list = api(&client, "$JS.API.CONSUMER.LIST.ORDERS", "").await;
    assert_eq!(list["consumers"][0]["name"], "NEW", "{list}");
    assert_eq!(
        list["consumers"][0]["config"]["filter_subject"],
        "ORDERS.new"
    );
    let account = api(&client, "$JS.API.INFO", "").await;
    assert_eq!(account["consumers"], 1, "{account}");
    let stream_info = api(&client, "$JS.API.STREAM.INFO.ORDERS", "").await;
    assert_eq!(stream_info["state"]["consumer_count"], 1, "{stream_info}");
    stream.delete_consumer("NEW").await.expect("delete");
    let gone = api(&client, "$JS.API.CONSUMER.INFO.ORDERS.NEW", "").await;
    assert_eq!(gone["error"]["err_code"], 10014, "{gone}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Pull requests as nats-server answers them on the wire: 404 for an empty
/// no-wait request, 408 with the pending counts at expiry, 409 for a batch over
/// the consumer's limit, and an unacked message back after its ack wait.
#[tokio::test]
async fn pull_statuses_and_redelivery_after_the_ack_wait() {
    let dir = store_dir("statuses");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    orders(&js, 2).await;
    let create = r#"{"stream_name":"ORDERS","config":{"durable_name":"W","ack_policy":"explicit",
        "ack_wait":300000000,"max_deliver":2,"max_batch":5},"action":"create"}"#;
    let v = api(&client, "$JS.API.CONSUMER.CREATE.ORDERS.W", create).await;
    assert_eq!(
        v["type"],
        "io.nats.jetstream.api.v1.consumer_create_response"
    );
    assert_eq!(v["config"]["ack_wait"], 300_000_000, "{v}");
    assert_eq!(v["num_pending"], 2, "{v}");
    // Only the advisory under test: the CREATED advisory may still be in
    // flight when this subscription starts.
    let mut advisories = client
        .subscribe("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>")
        .await
        .expect("subscribe");

    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.expect("subscribe");
    let next = "$JS.API.CONSUMER.MSG.NEXT.ORDERS.W";
    client
        .publish_with_reply(next, inbox.clone(), r#"{"batch":6}"#.into())
        .await
        .expect("publish");
    let m = replies.next().await.expect("status");
    let status = m.status.expect("a status");
    assert_eq!(status.as_u16(), 409);
    assert_eq!(
        m.description.as_deref(),
        Some("Exceeded MaxRequestBatch of 5")
    );

    client
        .publish_with_reply(next, inbox.clone(), r#"{"batch":2}"#.into())
        .await
        .expect("publish");
    for seq in 1..=2u64 {
        let m = replies.next().await.expect("message");
        assert!(m.status.is_none(), "{m:?}");
        let reply = m.reply.as_deref().expect("ack subject");
        assert!(
            reply.starts_with(&format!("$JS.ACK.ORDERS.W.1.{seq}.{seq}.")),
            "{reply}"
        );
    }
    // Nothing acked: both come back after the ack wait, then again, then the
    // second delivery is the last (max_deliver 2).
    tokio::time::sleep(Duration::from_millis(400)).await;
    client
        .publish_with_reply(
            next,
            inbox.clone(),
            r#"{"batch":2,"expires":2000000000}"#.into(),
        )
        .await
        .expect("publish");
    for seq in 1..=2u64 {
        let m = replies.next().await.expect("redelivery");
        let reply = m.reply.as_deref().expect("ack subject");
        assert!(
            reply.starts_with(&format!("$JS.ACK.ORDERS.W.2.{seq}.{}.", seq + 2)),
            "{reply}"
        );
    }
    let advisory = tokio::time::timeout(Duration::from_secs(2), advisories.next())
        .await
        .expect("max deliveries advisory")
        .expect("message");
    assert_eq!(
        advisory.subject.as_str(),
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.ORDERS.W"
    );
    let body: serde_json::Value = serde_json::from_slice(&advisory.payload).expect("JSON");
    assert_eq!(body["type"], "io.nats.jetstream.advisory.v1.max_deliver");
    assert_eq!(
        (body["stream_seq"].as_u64(), body["deliveries"].as_u64()),
        (Some(1), Some(2))
    );

    // Nothing left: a no-wait request hears 404, one that expires hears 408.
    client
        .publish_with_reply(next, inbox.clone(), r#"{"batch":1,"no_wait":true}"#.into())
        .await
        .expect("publish");
    let m = replies.next().await.expect("status");
    assert_eq!(m.status.map(|s| s.as_u16()), Some(404), "{m:?}");
    client
        .publish_with_reply(
            next,
            inbox.clone(),
            r#"{"batch":3,"expires":200000000}"#.into(),
        )
        .await
        .expect("publish");
    let m = tokio::time::timeout(Duration::from_secs(2), replies.next())
        .await
        .expect("timeout status")
        .expect("message");
    assert_eq!(m.status.map(|s| s.as_u16()), Some(408), "{m:?}");
    let headers = m.headers.expect("headers");
    assert_eq!(
        headers.get("Nats-Pending-Messages").map(|v| v.as_str()),
        Some("3")
    );
    let info = api(&client, "$JS.API.CONSUMER.INFO.ORDERS.W", "").await;
    assert_eq!(
        info["num_ack_pending"], 0,
        "both ran out of deliveries: {info}"
    );
    assert_eq!(info["delivered"]["consumer_seq"], 4, "{info}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// nats-server's create rules: `action`, ephemeral names, limits, work queues,
/// and the errors of each.
#[tokio::test]
async fn consumer_create_rules_and_their_errors() {
    let dir = store_dir("rules");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    orders(&js, 0).await;
    let body = |config: &str, action: &str| {
        format!(r#"{{"stream_name":"ORDERS","config":{config},"action":"{action}"}}"#)
    };
    let d = r#"{"durable_name":"D","ack_policy":"explicit"}"#;
    let v = api(
        &client,
        "$JS.API.CONSUMER.CREATE.ORDERS.D",
        &body(d, "update"),
    )
    .await;
    assert_eq!(v["error"]["err_code"], 10149, "{v}");
    let v = api(
        &client,
        "$JS.API.CONSUMER.CREATE.ORDERS.D",
        &body(d, "create"),
    )
    .await;
    assert_eq!(v["name"], "D", "{v}");
    // The same again is fine; another configuration is not, unless an update.
    let v = api(
        &client,
        "$JS.API.CONSUMER.CREATE.ORDERS.D",
        &body(d, "create"),
    )
    .await;
    assert!(v["error"].is_null(), "{v}");
    let changed = r#"{"durable_name":"D","ack_policy":"explicit","description":"x"}"#;
    let v = api(
        &client,
        "$JS.API.CONSUMER.CREATE.ORDERS.D",
        &body(changed, "create"),
    )
    .await;
    assert_eq!(v["error"]["err_code"], 10148, "{v}");
    let v = api(
        &client,
        "$JS.API.CONSUMER.CREATE.ORDERS.D",
        &body(changed, ""),
    )
    .await;
    assert_eq!(v["config"]["description"], "x", "{v}");
    let pushed = r#"{"durable_name":"D","ack_policy":"explicit","deliver_subject":"out"}"#;
    let v = api(
        &client,
        "$JS.API.CONSUMER.CREATE.ORDERS.D",
        &body(pushed, ""),
    )
    .await;
    assert_eq!(
        v["error"]["description"], "can not update pull consumer to push based",
        "{v}"
    );
    // An ephemeral consumer gets an eight-character name.
    let v = api(
        &client,
        "$JS.API.CONSUMER.CREATE.ORDERS",
        &body(r#"{"ack_policy":"none"}"#, ""),
    )
    .await;
    let name = v["name"].as_str().expect("a name");
    assert_eq!(name.len(), 8, "{v}");
    assert_eq!(v["config"]["inactive_threshold"], 5_000_000_000u64, "{v}");
    let names = api(&client, "$JS.API.CONSUMER.NAMES.ORDERS", "").await;
    assert_eq!(names["total"], 2, "{names}");
    let v = api(&client, "$JS.API.CONSUMER.LEADER.STEPDOWN.ORDERS.D", "").await;
    assert_eq!(v["error"]["err_code"], 10010, "{v}");
    let v = api(&client, "$JS.API.CONSUMER.CREATE.NOPE.D", &body(d, "")).await;
    assert_eq!(v["error"]["err_code"], 10056, "the body names ORDERS: {v}");
    let nope = r#"{"stream_name":"NOPE","config":{"durable_name":"D"}}"#;
    let v = api(&client, "$JS.API.CONSUMER.CREATE.NOPE.D", nope).await;
    assert_eq!(v["error"]["err_code"], 10059, "{v}");
    let v = api(&client, "$JS.API.CONSUMER.INFO.ORDERS.NOPE", "").await;
    assert_eq!(v["error"]["err_code"], 10014, "{v}");
    let v = api(&client, "$JS.API.CONSUMER.NAMES.NOPE", "").await;
    assert_eq!(v["error"]["err_code"], 10059, "{v}");
    assert!(v["consumers"].is_null(), "{v}");

    // A stream's max_consumers.
    let v = api(
        &client,
        "$JS.API.STREAM.CREATE.ONE",
        r#"{"name":"ONE","subjects":["one"],"max_consumers":1}"#,
    )
    .await;
    assert!(v["error"].is_null(), "{v}");
    let one =
        |name: &str| format!(r#"{{"stream_name":"ONE","config":{{"durable_name":"{name}"}}}}"#);
    let v = api(&client, "$JS.API.CONSUMER.CREATE.ONE.A", &one("A")).await;
    assert!(v["error"].is_null(), "{v}");
    let v = api(&client, "$JS.API.CONSUMER.CREATE.ONE.B", &one("B")).await;
    assert_eq!(v["error"]["err_code"], 10026, "{v}");

    // A work queue: explicit acks, and one consumer per subject.
    let v = api(
        &client,
        "$JS.API.STREAM.CREATE.WQ",
        r#"{"name":"WQ","subjects":["wq.*"],"retention":"workqueue"}"#,
    )
    .await;
    assert!(v["error"].is_null(), "{v}");
    let wq = |name: &str, extra: &str| {
        format!(r#"{{"stream_name":"WQ","config":{{"durable_name":"{name}"{extra}}}}}"#)
    };
    let v = api(
        &client,
        "$JS.API.CONSUMER.CREATE.WQ.A",
        &wq("A", r#","ack_policy":"none""#),
    )
    .await;
    assert_eq!(v["error"]["err_code"], 10084, "{v}");
    let v = api(
        &client,
        "$JS.API.CONSUMER.CREATE.WQ.A",
        &wq("A", r#","ack_policy":"none","deliver_subject":"out""#),
    )
    .await;
    assert_eq!(v["error"]["err_code"], 10098, "{v}");
    let v = api(
        &client,
        "$JS.API.CONSUMER.CREATE.WQ.A",
        &wq("A", r#","ack_policy":"explicit","filter_subject":"wq.a""#),
    )
    .await;
    assert!(v["error"].is_null(), "{v}");
    let v = api(
        &client,
        "$JS.API.CONSUMER.CREATE.WQ.B",
        &wq("B", r#","ack_policy":"explicit","filter_subject":"wq.*""#),
    )
    .await;
    assert_eq!(v["error"]["err_code"], 10100, "{v}");
    let v = api(
        &client,
        "$JS.API.CONSUMER.CREATE.WQ.B",
        &wq("B", r#","ack_policy":"explicit""#),
    )
    .await;
    assert_eq!(v["error"]["err_code"], 10099, "{v}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Durable consumers are kept in the meta state and are back after a SIGKILL;
/// ephemeral ones are not (their clients make them again).
#[tokio::test]
async fn durable_consumers_survive_a_kill_and_ephemeral_ones_do_not() {
    let dir = store_dir("restart");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    let stream = orders(&js, 4).await;
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("KEEP".into()),
            filter_subject: "ORDERS.paid".into(),
            ..Default::default()
        })
        .await
        .expect("durable");
    stream
        .create_consumer(consumer::pull::Config::default())
        .await
        .expect("ephemeral");
    let names = api(&client, "$JS.API.CONSUMER.NAMES.ORDERS", "").await;
    assert_eq!(names["total"], 2, "{names}");
    drop(server);
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("reconnect");
    let names = api(&client, "$JS.API.CONSUMER.NAMES.ORDERS", "").await;
    assert_eq!(names["consumers"], serde_json::json!(["KEEP"]), "{names}");
    let info = api(&client, "$JS.API.CONSUMER.INFO.ORDERS.KEEP", "").await;
    assert_eq!(info["num_pending"], 2, "{info}");
    assert_eq!(info["config"]["filter_subject"], "ORDERS.paid", "{info}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A consumer hands out only what is durable: appends are staged before
/// their group commit, and one delivered from there could outlive its message
/// in a crash (then the restarted stream reuses its sequence for another).
/// A publish without a reply (nothing waits for its commit) races the ordered
/// consumer's subscription, whose interest makes the consumer deliver; SIGKILL
/// once it is delivered: the delivery must be in the stream after the restart.
#[tokio::test]
async fn a_consumer_never_delivers_what_a_crash_can_lose() {
    for round in 0..4 {
        let dir = store_dir(&format!("durable-delivery-{round}"));
        let server = start(&dir);
        let client = async_nats::connect(server.url()).await.expect("connect");
        let js = jetstream::new(client.clone());
        let stream = js
            .get_or_create_stream(stream::Config {
                name: "EVENTS".into(),
                subjects: vec!["events.>".into()],
                ..Default::default()
            })
            .await
            .expect("stream");
        let first = stream.get_info().await.expect("info").state.last_sequence + 1;
        // async-nats' ordered push consumer, as its own suite drives it.
        let ordered: consumer::OrderedPushConsumer = stream
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: client.new_inbox(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: first,
                },
                ..Default::default()
            })
            .await
            .expect("ordered consumer");
        let mut messages = ordered.messages().await.expect("messages");
        client
            .publish(format!("events.{round}"), format!("event {round}").into())
            .await
            .expect("publish");
        let delivered = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("delivered")
            .expect("message")
            .expect("no error");
        drop(server);
        let server = start(&dir);
        let client = async_nats::connect(server.url()).await.expect("reconnect");
        let js = jetstream::new(client);
        let mut stream = js.get_stream("EVENTS").await.expect("stream is back");
        let last = stream.info().await.expect("info").state.last_sequence;
        let seq = delivered.info().expect("metadata").stream_sequence;
        assert!(
            seq <= last,
            "round {round}: delivered sequence {seq} is gone after the kill (last {last})"
        );
        let stored = stream
            .get_raw_message(seq)
            .await
            .expect("delivered message");
        assert_eq!(
            stored.payload, delivered.payload,
            "round {round}: sequence {seq}"
        );
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The crash loop: a pull consumer fetches and acks (double acks, so it knows
/// what was applied) while the server is SIGKILLed again and again. After each
/// restart nothing acknowledged comes back, and every message delivered but
/// not acknowledged does, as a redelivery.
#[tokio::test]
async fn consumer_state_survives_repeated_kills() {
    let dir = store_dir("crash-loop");
    let mut server = start(&dir);
    let mut client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    orders(&js, 0).await;
    js.get_stream("ORDERS")
        .await
        .expect("stream")
        .create_consumer(consumer::pull::Config {
            durable_name: Some("WORK".into()),
            ack_wait: Duration::from_secs(1),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut acked = std::collections::BTreeSet::new();
    let mut published = 0u64;
    for round in 0..6u64 {
        let js = jetstream::new(client.clone());
        for _ in 0..10 {
            js.publish("ORDERS.new", "x".into())
                .await
                .expect("publish")
                .await
                .expect("ack");
            published += 1;
        }
        let c: consumer::PullConsumer = js
            .get_stream("ORDERS")
            .await
            .expect("stream")
            .get_consumer("WORK")
            .await
            .expect("consumer after restart");
        let got = fetch(&c, 8).await;
        assert!(!got.is_empty(), "round {round}");
        for m in &got {
            let i = m.info().expect("info");
            assert!(
                !acked.contains(&i.stream_sequence),
                "round {round}: acknowledged {} came back",
                i.stream_sequence
            );
            // The even sequences are acknowledged, the odd ones left pending.
            if i.stream_sequence % 2 == 0 {
                m.double_ack().await.expect("double ack");
                acked.insert(i.stream_sequence);
            }
        }
        let before = c.clone().info().await.expect("info").clone();
        drop(server);
        server = start(&dir);
        client = async_nats::connect(server.url()).await.expect("reconnect");
        let info = api(&client, "$JS.API.CONSUMER.INFO.ORDERS.WORK", "").await;
        assert_eq!(
            info["delivered"]["stream_seq"], before.delivered.stream_sequence,
            "round {round}: {info}"
        );
        assert_eq!(
            info["num_ack_pending"].as_u64(),
            Some(before.num_ack_pending as u64),
            "round {round}: {info}"
        );
    }
    // What is left arrives (the pending ones once their ack wait from before
    // the kill runs out): everything not acknowledged, nothing acknowledged.
    let js = jetstream::new(client.clone());
    let c: consumer::PullConsumer = js
        .get_stream("ORDERS")
        .await
        .expect("stream")
        .get_consumer("WORK")
        .await
        .expect("consumer");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        for m in fetch(&c, 50).await {
            let seq = m.info().expect("info").stream_sequence;
            assert!(!acked.contains(&seq), "acknowledged {seq} came back");
            m.double_ack().await.expect("ack");
            seen.insert(seq);
        }
        if seen.len() + acked.len() == published as usize {
            break;
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    assert_eq!(
        seen.len() + acked.len(),
        published as usize,
        "every unacknowledged message is delivered again"
    );
    let info = api(&client, "$JS.API.CONSUMER.INFO.ORDERS.WORK", "").await;
    assert_eq!(info["delivered"]["stream_seq"], published, "{info}");
    assert_eq!(info["num_pending"], 0, "{info}");
    assert_eq!(info["num_ack_pending"], 0, "{info}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A push consumer with nobody on its deliver subject holds its messages;
/// a subscriber arriving later gets them, then what the stream stores next.
#[tokio::test]
async fn a_push_consumer_delivers_once_someone_listens() {
    let dir = store_dir("push");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    let stream = orders(&js, 4).await;
    // The seed's MONITOR: everything since the last message, acks off.
    let mut monitor = stream
        .create_consumer(consumer::push::Config {
            durable_name: Some("MONITOR".into()),
            deliver_subject: "monitor.ORDERS".into(),
            deliver_policy: consumer::DeliverPolicy::Last,
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("create push consumer");
    let info = monitor.info().await.expect("info").clone();
    assert!(!info.push_bound, "nobody listens yet");
    assert_eq!(info.num_pending, 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        monitor
            .info()
            .await
            .expect("info")
            .delivered
            .consumer_sequence,
        0,
        "nothing delivered"
    );

    let mut sub = client.subscribe("monitor.ORDERS").await.expect("subscribe");
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("delivered once subscribed")
        .expect("message");
    assert_eq!(m.subject.as_str(), "ORDERS.paid", "shown as stored");
    assert_eq!(&m.payload[..], b"order 4");
    js.publish("ORDERS.new", "order 5".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("the next one")
        .expect("message");
    assert_eq!(&m.payload[..], b"order 5");
    let info = monitor.info().await.expect("info").clone();
    assert!(info.push_bound);
    assert_eq!(info.delivered.stream_sequence, 5);
    assert_eq!(info.num_pending, 0);

    // async-nats' own push consumer, with explicit acks.
    let acked = stream
        .create_consumer(consumer::push::Config {
            durable_name: Some("NEW".into()),
            deliver_subject: client.new_inbox(),
            filter_subject: "ORDERS.new".into(),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("create push consumer");
    let mut messages = acked.messages().await.expect("messages");
    for want in ["order 1", "order 3", "order 5"] {
        let m = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("in time")
            .expect("message")
            .expect("no error");
        assert_eq!(&m.payload[..], want.as_bytes());
        m.double_ack().await.expect("ack");
    }
    let info = acked.clone().info().await.expect("info").clone();
    assert_eq!(info.ack_floor.stream_sequence, 5);
    assert_eq!(info.num_ack_pending, 0);
}

/// A deliver group shares the messages among its members, each once; a
/// subscriber outside the group does not make the consumer deliver.
#[tokio::test]
async fn a_deliver_group_shares_the_messages() {
    let dir = store_dir("group");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    orders(&js, 0).await;
    let mut outsider = client.subscribe("work.ORDERS").await.expect("subscribe");
    client.flush().await.expect("flush");
    let create = r#"{"stream_name":"ORDERS","config":{"durable_name":"WORK","ack_policy":"none",
        "deliver_subject":"work.ORDERS","deliver_group":"workers"},"action":"create"}"#;
    let v = api(&client, "$JS.API.CONSUMER.CREATE.ORDERS.WORK", create).await;
    assert_eq!(v["config"]["deliver_group"], "workers", "{v}");
    assert!(
        v.get("push_bound").is_none(),
        "not a member of the group: {v}"
    );

    let mut members = Vec::new();
    for _ in 0..3 {
        let c = async_nats::connect(server.url()).await.expect("connect");
        let sub = c
            .queue_subscribe("work.ORDERS", "workers".into())
            .await
            .expect("subscribe");
        c.flush().await.expect("flush");
        members.push((c, sub));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let v = api(&client, "$JS.API.CONSUMER.INFO.ORDERS.WORK", "").await;
        if v["push_bound"] == true {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never bound: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 1..=30 {
        js.publish("ORDERS.new", format!("{i}").into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    let mut seen = Vec::new();
    for (_, sub) in members.iter_mut() {
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
            seen.push(
                String::from_utf8_lossy(&m.payload)
                    .parse::<u32>()
                    .expect("number"),
            );
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=30).collect::<Vec<_>>(), "each message once");
    let mut outside = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), outsider.next()).await
    {
        outside += 1;
    }
    assert_eq!(outside, 30, "a plain subscriber hears every delivery");
}

/// Flow control: deliveries stop once the window is in flight until the
/// subscriber answers the request, and idle heartbeats say what it waits on.
#[tokio::test]
async fn flow_control_holds_a_push_consumer_until_answered() {
    let dir = store_dir("flow");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    orders(&js, 0).await;
    let payload = bytes::Bytes::from(vec![b'x'; 100 * 1024]);
    for _ in 0..40 {
        js.publish("ORDERS.new", payload.clone())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    let mut sub = client.subscribe("flow.ORDERS").await.expect("subscribe");
    client.flush().await.expect("flush");
    let create = r#"{"stream_name":"ORDERS","config":{"durable_name":"FLOW","ack_policy":"none",
        "deliver_subject":"flow.ORDERS","flow_control":true,"idle_heartbeat":300000000},"action":"create"}"#;
    let v = api(&client, "$JS.API.CONSUMER.CREATE.ORDERS.FLOW", create).await;
    assert_eq!(v["config"]["flow_control"], true, "{v}");

    let mut data = 0;
    let mut request = None;
    let mut stalled = None;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
        match m.status.map(|s| s.as_u16()) {
            None => data += 1,
            Some(100) if m.description.as_deref() == Some("FlowControl Request") => {
                request = m.reply.clone();
            }
            Some(100) => {
                let header = m.headers.as_ref().and_then(|h| {
                    h.get("Nats-Consumer-Stalled")
                        .map(|v| v.as_str().to_string())
                });
                if header.is_some() {
                    stalled = header;
                    break;
                }
            }
            other => panic!("unexpected status {other:?}"),
        }
    }
    let request = request.expect("a flow control request");
    assert!(request.starts_with("$JS.FC.ORDERS.FLOW."), "{request}");
    assert!(
        (10..40).contains(&data),
        "held at the window: {data} of 40 delivered"
    );
    assert_eq!(stalled.as_deref(), Some(request.as_str()));

    client
        .publish(request, bytes::Bytes::new())
        .await
        .expect("answer");
    while data < 40 {
        let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("the rest after the answer")
            .expect("message");
        match m.status {
            None => data += 1,
            Some(_) if m.description.as_deref() == Some("FlowControl Request") => {
                let reply = m.reply.clone().expect("a reply subject");
                client
                    .publish(reply, bytes::Bytes::new())
                    .await
                    .expect("answer");
            }
            Some(_) => {}
        }
    }

    // async-nats' ordered push consumer: flow control and heartbeats, answered
    // by the client.
    let stream = js.get_stream("ORDERS").await.expect("stream");
    let ordered = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    let mut messages = ordered.messages().await.expect("messages");
    for seq in 1..=40 {
        let m = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("in time")
            .expect("message")
            .expect("no error");
        assert_eq!(m.info().expect("info").stream_sequence, seq);
    }
}

/// An unused ephemeral consumer goes after its inactive threshold, with the
/// DELETED advisory; a push consumer only once its subscriber leaves.
#[tokio::test]
async fn unused_consumers_go_after_their_inactive_threshold() {
    let dir = store_dir("inactive");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    orders(&js, 1).await;
    let mut deleted = client
        .subscribe("$JS.EVENT.ADVISORY.CONSUMER.DELETED.ORDERS.>")
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");

    let create = r#"{"stream_name":"ORDERS","config":{"name":"EPH","ack_policy":"explicit",
        "inactive_threshold":500000000},"action":"create"}"#;
    let v = api(&client, "$JS.API.CONSUMER.CREATE.ORDERS.EPH", create).await;
    assert_eq!(v["config"]["inactive_threshold"], 500_000_000, "{v}");
    let mut listened = client.subscribe("watch.ORDERS").await.expect("subscribe");
    client.flush().await.expect("flush");
    let create = r#"{"stream_name":"ORDERS","config":{"name":"WATCH","ack_policy":"none",
        "deliver_subject":"watch.ORDERS","inactive_threshold":500000000},"action":"create"}"#;
    let v = api(&client, "$JS.API.CONSUMER.CREATE.ORDERS.WATCH", create).await;
    assert_eq!(v["push_bound"], true, "{v}");
    listened.next().await.expect("the stored message");

    let m = tokio::time::timeout(Duration::from_secs(5), deleted.next())
        .await
        .expect("deleted in time")
        .expect("advisory");
    assert_eq!(
        m.subject.as_str(),
        "$JS.EVENT.ADVISORY.CONSUMER.DELETED.ORDERS.EPH"
    );
    let body: serde_json::Value = serde_json::from_slice(&m.payload).expect("JSON");
    assert_eq!(body["action"], "delete");
    let v = api(&client, "$JS.API.CONSUMER.INFO.ORDERS.EPH", "").await;
    assert_eq!(v["error"]["err_code"], 10014, "{v}");

    // Listened to: still there well past its threshold.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let v = api(&client, "$JS.API.CONSUMER.INFO.ORDERS.WATCH", "").await;
    assert_eq!(v["name"], "WATCH", "{v}");
    drop(listened);
    client.flush().await.expect("flush");
    let m = tokio::time::timeout(Duration::from_secs(5), deleted.next())
        .await
        .expect("deleted once its subscriber left")
        .expect("advisory");
    assert_eq!(
        m.subject.as_str(),
        "$JS.EVENT.ADVISORY.CONSUMER.DELETED.ORDERS.WATCH"
    );
    let v = api(&client, "$JS.API.CONSUMER.NAMES.ORDERS", "").await;
    assert_eq!(v["total"], 0, "{v}");
}

async fn stream_messages(client: &async_nats::Client, stream: &str) -> (u64, u64) {
    let info = api(client, &format!("$JS.API.STREAM.INFO.{stream}"), "").await;
    let state = &info["state"];
    (
        state["messages"].as_u64().expect("messages"),
        state["first_seq"].as_u64().expect("first_seq"),
    )
}

/// Work queue retention: a message stays until its consumer acknowledges
/// (or terminates) it, whatever else happens to it, and across a kill.
#[tokio::test]
async fn a_work_queue_keeps_each_message_until_it_is_acknowledged() {
    let dir = store_dir("workqueue");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    let stream = js
        .create_stream(stream::Config {
            name: "JOBS".into(),
            subjects: vec!["jobs.*".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .expect("work queue stream");
    for i in 1..=10 {
        js.publish("jobs.run", format!("job {i}").into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    assert_eq!(
        stream_messages(&client, "JOBS").await,
        (10, 1),
        "nothing goes without a consumer"
    );
    let workers = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("W".into()),
            ack_wait: Duration::from_secs(2),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let got = fetch(&workers, 10).await;
    assert_eq!(got.len(), 10);
    for m in &got[..6] {
        m.double_ack().await.expect("ack");
    }
    got[6].ack_with(AckKind::Term).await.expect("term");
    got[7].ack_with(AckKind::Progress).await.expect("progress");
    got[8].ack_with(AckKind::Nak(None)).await.expect("nak");
    // The double ack of the last one: everything before it is applied.
    got[9].double_ack().await.expect("ack");
    assert_eq!(
        stream_messages(&client, "JOBS").await,
        (2, 8),
        "acked and terminated messages are gone; in progress and naked stay"
    );
    drop(server);
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("reconnect");
    assert_eq!(
        stream_messages(&client, "JOBS").await,
        (2, 8),
        "the same after a kill"
    );
    let js = jetstream::new(client.clone());
    let workers: consumer::PullConsumer = js
        .get_stream("JOBS")
        .await
        .expect("stream")
        .get_consumer("W")
        .await
        .expect("consumer");
    // Both come back once their ack wait runs out (counted from their last
    // delivery, as nats-server does after a restart); the worker finishes them.
    let mut finished = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while finished.len() < 2 && tokio::time::Instant::now() < deadline {
        for m in fetch(&workers, 10).await {
            finished.push(m.info().expect("metadata").stream_sequence);
            m.double_ack().await.expect("ack");
        }
    }
    finished.sort_unstable();
    assert_eq!(finished, vec![8, 9], "only the unfinished ones come back");
    assert_eq!(stream_messages(&client, "JOBS").await, (0, 11), "all done");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Interest retention: a message is kept only while a consumer that takes
/// its subject has not acknowledged it; a consumer that goes takes its
/// interest with it.
#[tokio::test]
async fn an_interest_stream_keeps_messages_until_every_interested_consumer_acked() {
    let dir = store_dir("interest");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    let stream = js
        .create_stream(stream::Config {
            name: "EVENTS".into(),
            subjects: vec!["events.*".into()],
            retention: stream::RetentionPolicy::Interest,
            ..Default::default()
        })
        .await
        .expect("interest stream");
    let publish = |subject: &'static str| {
        let js = js.clone();
        async move {
            js.publish(subject, "e".into())
                .await
                .expect("publish")
                .await
                .expect("ack")
                .sequence
        }
    };
    publish("events.a").await;
    assert_eq!(
        stream_messages(&client, "EVENTS").await.0,
        0,
        "nobody is interested"
    );
    let only_a = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("A".into()),
            filter_subject: "events.a".into(),
            ..Default::default()
        })
        .await
        .expect("A");
    let every = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("B".into()),
            ..Default::default()
        })
        .await
        .expect("B");
    let mut seqs = Vec::new();
    for subject in ["events.a", "events.b", "events.a", "events.b"] {
        seqs.push(publish(subject).await);
    }
    assert_eq!(seqs, [2, 3, 4, 5]);
    assert_eq!(stream_messages(&client, "EVENTS").await, (4, 2));
    for m in fetch(&only_a, 10).await {
        m.double_ack().await.expect("ack");
    }
    assert_eq!(
        stream_messages(&client, "EVENTS").await.0,
        4,
        "B still needs them all"
    );
    let b = fetch(&every, 2).await;
    for m in &b {
        m.double_ack().await.expect("ack");
    }
    assert_eq!(
        stream_messages(&client, "EVENTS").await,
        (2, 4),
        "acked by both (2) and by B, the only one taking events.b (3)"
    );
    stream.delete_consumer("B").await.expect("delete B");
    assert_eq!(
        stream_messages(&client, "EVENTS").await.0,
        0,
        "4 was acked by A, and nobody else takes 5"
    );
    publish("events.b").await;
    publish("events.a").await;
    assert_eq!(
        stream_messages(&client, "EVENTS").await,
        (1, 7),
        "only A's subject is kept"
    );
    stream.delete_consumer("A").await.expect("delete A");
    assert_eq!(
        stream_messages(&client, "EVENTS").await.0,
        0,
        "without consumers it empties"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `CONSUMER.PAUSE` through async-nats: nothing is delivered until the pause
/// runs out (a waiting pull is served then, with the resume advisory), the
/// pause shows in the info and survives a kill, and a resume lifts it.
#[tokio::test]
async fn a_paused_consumer_delivers_once_its_pause_runs_out() {
    let dir = store_dir("pause");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    let stream = orders(&js, 2).await;
    let pulls = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("P".into()),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut advisories = client
        .subscribe("$JS.EVENT.ADVISORY.CONSUMER.PAUSE.ORDERS.P")
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");

    let until = time::OffsetDateTime::now_utc() + Duration::from_secs(2);
    let paused = stream.pause_consumer("P", until).await.expect("pause");
    assert!(paused.paused);
    assert_eq!(paused.pause_until, until);
    let remaining = paused.pause_remaining.expect("remaining");
    assert!(remaining > Duration::from_secs(1) && remaining <= Duration::from_secs(2));
    let m = advisories.next().await.expect("pause advisory");
    let body: serde_json::Value = serde_json::from_slice(&m.payload).expect("JSON");
    assert_eq!(body["type"], "io.nats.jetstream.advisory.v1.consumer_pause");
    assert_eq!(body["paused"], true);
    assert!(body["pause_until"].is_string(), "{body}");
    let info = api(&client, "$JS.API.CONSUMER.INFO.ORDERS.P", "").await;
    assert_eq!(info["paused"], true, "{info}");
    assert!(info["pause_remaining"].as_i64().expect("remaining") > 0);
    assert!(info["config"]["pause_until"].is_string(), "{info}");
    assert_eq!(info["config"]["metadata"]["_nats.req.level"], "1");

    assert!(fetch(&pulls, 2).await.is_empty(), "nothing while paused");
    let mut batch = pulls
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .expect("fetch");
    let first = batch.next().await.expect("a message").expect("message");
    assert!(
        time::OffsetDateTime::now_utc() >= until,
        "delivered only after the pause"
    );
    first.ack().await.expect("ack");
    let m = tokio::time::timeout(Duration::from_secs(2), advisories.next())
        .await
        .expect("resume advisory in time")
        .expect("advisory");
    let body: serde_json::Value = serde_json::from_slice(&m.payload).expect("JSON");
    assert_eq!(body["paused"], false, "{body}");
    let info = api(&client, "$JS.API.CONSUMER.INFO.ORDERS.P", "").await;
    assert!(info.get("paused").is_none(), "{info}");

    // A long pause is kept with the consumer across a kill, until resumed.
    let far = time::macros::datetime!(2099-01-01 00:00 UTC);
    assert!(stream.pause_consumer("P", far).await.expect("pause").paused);
    drop(batch);
    drop(server);
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("reconnect");
    let info = api(&client, "$JS.API.CONSUMER.INFO.ORDERS.P", "").await;
    assert_eq!(info["paused"], true, "{info}");
    let js = jetstream::new(client.clone());
    let stream = js.get_stream("ORDERS").await.expect("stream");
    let resumed = stream.resume_consumer("P").await.expect("resume");
    assert!(!resumed.paused);
    assert!(resumed.pause_remaining.is_none());
    let v = api(&client, "$JS.API.CONSUMER.PAUSE.ORDERS.P", "").await;
    assert_eq!(v["pause_until"], "0001-01-01T00:00:00Z", "{v}");
    let pulls: consumer::PullConsumer = stream.get_consumer("P").await.expect("consumer");
    assert_eq!(
        fetch(&pulls, 5).await.len(),
        1,
        "the one left comes at once"
    );
    let v = api(&client, "$JS.API.CONSUMER.PAUSE.ORDERS.NOPE", "").await;
    assert_eq!(v["error"]["err_code"], 10014, "{v}");
    let v = api(
        &client,
        "$JS.API.CONSUMER.PAUSE.ORDERS.P",
        "{\"pause_until\":",
    )
    .await;
    assert_eq!(v["error"]["err_code"], 10025, "{v}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One pull on a raw inbox: what came back (message or status) within `wait`.
async fn pull_raw(
    client: &async_nats::Client,
    subject: &str,
    body: &str,
    wait: Duration,
) -> Vec<async_nats::Message> {
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await.expect("subscribe");
    client
        .publish_with_reply(subject.to_string(), inbox, body.to_string().into())
        .await
        .expect("pull");
    let mut got = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(wait, sub.next()).await {
        let status = m.status.is_some();
        got.push(m);
        if status {
            break;
        }
    }
    got
}

fn header(m: &async_nats::Message, name: &str) -> Option<String> {
    m.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_string())
}

#[tokio::test]
async fn a_pinned_client_consumer_serves_one_puller_until_unpinned() {
    let dir = store_dir("pinned");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    orders(&js, 4).await;
    let v = api(
        &client,
        "$JS.API.CONSUMER.CREATE.ORDERS.G",
        r#"{"stream_name":"ORDERS","config":{"durable_name":"G","ack_policy":"none",
            "priority_policy":"pinned_client","priority_groups":["A"],"priority_timeout":30000000000}}"#,
    )
    .await;
    assert_eq!(v["config"]["priority_policy"], "pinned_client", "{v}");
    assert_eq!(v["config"]["metadata"]["_nats.req.level"], "1", "{v}");
    let mut pinned = client
        .subscribe("$JS.EVENT.ADVISORY.CONSUMER.PINNED.ORDERS.G")
        .await
        .expect("subscribe");
    let mut unpinned = client
        .subscribe("$JS.EVENT.ADVISORY.CONSUMER.UNPINNED.ORDERS.G")
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    let next = "$JS.API.CONSUMER.MSG.NEXT.ORDERS.G";
    let first = pull_raw(
        &client,
        next,
        r#"{"group":"A","batch":1}"#,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(first.len(), 1);
    let pin = header(&first[0], "Nats-Pin-Id").expect("a pin id");
    assert_eq!(pin.len(), 22, "a NUID: {pin}");
    let advisory = tokio::time::timeout(Duration::from_secs(2), pinned.next())
        .await
        .expect("pinned advisory")
        .expect("message");
    let advisory: serde_json::Value = serde_json::from_slice(&advisory.payload).expect("JSON");
    assert_eq!(
        advisory["type"],
        "io.nats.jetstream.advisory.v1.consumer_group_pinned"
    );
    assert_eq!(advisory["pinned_id"], pin.as_str(), "{advisory}");
    assert_eq!(advisory["group"], "A");
    let info = api(&client, "$JS.API.CONSUMER.INFO.ORDERS.G", "").await;
    assert_eq!(
        info["priority_groups"][0]["pinned_client_id"],
        pin.as_str(),
        "{info}"
    );
    // Someone else gets nothing while the pin holds; a made-up pin is refused.
    let other = pull_raw(
        &client,
        next,
        r#"{"group":"A","batch":1,"expires":300000000}"#,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].status.map(|s| s.as_u16()), Some(408));
    let wrong = pull_raw(
        &client,
        next,
        r#"{"group":"A","id":"NOPE"}"#,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(wrong[0].status.map(|s| s.as_u16()), Some(423));
    assert_eq!(
        wrong[0].description.as_deref(),
        Some("Nats-Pin-Id mismatch")
    );
    let again = pull_raw(
        &client,
        next,
        &format!(r#"{{"group":"A","batch":1,"id":"{pin}"}}"#),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(
        header(&again[0], "Nats-Pin-Id").as_deref(),
        Some(pin.as_str())
    );
    // The unpin request, its errors and advisory; then a new client is pinned.
    let v = api(
        &client,
        "$JS.API.CONSUMER.UNPIN.ORDERS.G",
        r#"{"group":"B"}"#,
    )
    .await;
    assert_eq!(v["error"]["err_code"], 10160, "{v}");
    let v = api(&client, "$JS.API.CONSUMER.UNPIN.ORDERS.G", "{}").await;
    assert_eq!(v["error"]["err_code"], 10025, "{v}");
    let v = api(
        &client,
        "$JS.API.CONSUMER.UNPIN.ORDERS.G",
        r#"{"group":"A"}"#,
    )
    .await;
    assert_eq!(
        v,
        serde_json::json!({"type": "io.nats.jetstream.api.v1.consumer_unpin_response"})
    );
    let advisory = tokio::time::timeout(Duration::from_secs(2), unpinned.next())
        .await
        .expect("unpinned advisory")
        .expect("message");
    let advisory: serde_json::Value = serde_json::from_slice(&advisory.payload).expect("JSON");
    assert_eq!(advisory["reason"], "admin", "{advisory}");
    let stale = pull_raw(
        &client,
        next,
        &format!(r#"{{"group":"A","batch":1,"id":"{pin}"}}"#),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(stale.len(), 1);
    assert_eq!(
        stale[0].status.map(|s| s.as_u16()),
        Some(423),
        "the old pin is wrong now"
    );
    let fresh = pull_raw(
        &client,
        next,
        r#"{"group":"A","batch":1}"#,
        Duration::from_secs(2),
    )
    .await;
    let new_pin = header(&fresh[0], "Nats-Pin-Id").expect("pinned again");
    assert_ne!(new_pin, pin);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_overflow_consumer_spills_only_while_behind() {
    let dir = store_dir("overflow");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    orders(&js, 3).await;
    let v = api(
        &client,
        "$JS.API.CONSUMER.CREATE.ORDERS.O",
        r#"{"stream_name":"ORDERS","config":{"durable_name":"O","ack_policy":"explicit",
            "priority_policy":"overflow","priority_groups":["A"]}}"#,
    )
    .await;
    assert_eq!(v["config"]["priority_policy"], "overflow", "{v}");
    let next = "$JS.API.CONSUMER.MSG.NEXT.ORDERS.O";
    let wait = Duration::from_secs(2);
    // Three pending: a spill-over asking for five waits until it expires.
    let spill = r#"{"group":"A","batch":10,"min_pending":5,"expires":300000000}"#;
    let got = pull_raw(&client, next, spill, wait).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].status.map(|s| s.as_u16()), Some(408));
    let spill = r#"{"group":"A","batch":10,"min_pending":2,"expires":300000000}"#;
    let got = pull_raw(&client, next, spill, wait).await;
    let messages = got.iter().filter(|m| m.status.is_none()).count();
    assert_eq!(messages, 2, "served while 2 or more were pending");
    let bad = pull_raw(&client, next, r#"{"group":"A","id":"x"}"#, wait).await;
    assert_eq!(
        bad[0].description.as_deref(),
        Some("Bad Request - Not a Pinned Client Priority consumer")
    );
    let bad = pull_raw(&client, next, r#"{"batch":1,"min_pending":1}"#, wait).await;
    assert_eq!(bad[0].status.map(|s| s.as_u16()), Some(400));
    assert_eq!(
        bad[0].description.as_deref(),
        Some("Bad Request - Priority Group missing")
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client that pulled and went away takes nothing: nats-server drops a
/// waiting request once its inbox has no subscriber, and so does strait.
#[tokio::test]
async fn a_pull_request_whose_client_went_away_takes_nothing() {
    let dir = store_dir("unheard");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    orders(&js, 0).await;
    api(
        &client,
        "$JS.API.CONSUMER.CREATE.ORDERS.W",
        r#"{"stream_name":"ORDERS","config":{"durable_name":"W","ack_policy":"explicit"}}"#,
    )
    .await;
    let next = "$JS.API.CONSUMER.MSG.NEXT.ORDERS.W";
    let gone = async_nats::connect(server.url()).await.expect("connect");
    let inbox = gone.new_inbox();
    let sub = gone.subscribe(inbox.clone()).await.expect("subscribe");
    gone.publish_with_reply(next, inbox, r#"{"batch":10,"expires":30000000000}"#.into())
        .await
        .expect("pull");
    gone.flush().await.expect("flush");
    drop(sub);
    drop(gone);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let alive = client.new_inbox();
    let mut waiting = client.subscribe(alive.clone()).await.expect("subscribe");
    client
        .publish_with_reply(next, alive, r#"{"batch":10,"expires":30000000000}"#.into())
        .await
        .expect("pull");
    client.flush().await.expect("flush");
    for i in 0..3 {
        js.publish("ORDERS.new", format!("{i}").into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    for _ in 0..3 {
        let m = tokio::time::timeout(Duration::from_secs(2), waiting.next())
            .await
            .expect("the live request is served")
            .expect("message");
        assert!(m.status.is_none(), "{m:?}");
    }
    let info = api(&client, "$JS.API.CONSUMER.INFO.ORDERS.W", "").await;
    assert_eq!(
        info["num_waiting"], 1,
        "only the live request waits: {info}"
    );
    assert_eq!(info["delivered"]["stream_seq"], 3, "{info}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `replay_policy: original` hands out the stored messages at the pace they
/// were stored in; `rate_limit_bps` caps a push consumer's bytes per second.
#[tokio::test]
async fn replay_original_and_rate_limits_pace_deliveries() {
    let dir = store_dir("pacing");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    let stream = js
        .create_stream(stream::Config {
            name: "PACED".into(),
            subjects: vec!["paced.>".into()],
            max_message_size: 1000,
            ..Default::default()
        })
        .await
        .expect("create stream");
    for i in 0..3 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        js.publish("paced.a", "x".into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    let pull = |name: &str, replay| consumer::pull::Config {
        durable_name: Some(name.into()),
        replay_policy: replay,
        ack_policy: consumer::AckPolicy::None,
        ..Default::default()
    };
    for (name, replay, slowest) in [
        ("INSTANT", consumer::ReplayPolicy::Instant, 300),
        ("ORIGINAL", consumer::ReplayPolicy::Original, u128::MAX),
    ] {
        let c = stream
            .create_consumer(pull(name, replay))
            .await
            .expect("create");
        let started = std::time::Instant::now();
        let mut batch = c
            .fetch()
            .max_messages(3)
            .expires(Duration::from_secs(3))
            .messages()
            .await
            .expect("fetch");
        let mut got = Vec::new();
        while let Some(m) = batch.next().await {
            got.push(m.expect("message"));
        }
        let took = started.elapsed().as_millis();
        assert_eq!(got.len(), 3, "{name}");
        if replay == consumer::ReplayPolicy::Original {
            assert!(took >= 700, "two gaps of 400 ms kept: {took} ms");
        } else {
            assert!(took < slowest, "{name} took {took} ms");
        }
    }
    // A rate limit is for push consumers only, as in nats-server.
    let v = api(
        &client,
        "$JS.API.CONSUMER.CREATE.PACED.RL",
        r#"{"stream_name":"PACED","config":{"durable_name":"RL","ack_policy":"none","rate_limit_bps":8000}}"#,
    )
    .await;
    assert_eq!(v["error"]["err_code"], 10086, "{v}");
    // 8000 bits a second: 1000 bytes, with bursts of one max_msg_size.
    let payload = "p".repeat(480);
    for _ in 0..4 {
        js.publish("paced.b", payload.clone().into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    let mut sub = client.subscribe("rate.out").await.expect("subscribe");
    let started = std::time::Instant::now();
    stream
        .create_consumer(consumer::push::Config {
            durable_name: Some("RATE".into()),
            deliver_subject: "rate.out".into(),
            filter_subject: "paced.b".into(),
            ack_policy: consumer::AckPolicy::None,
            rate_limit: 8000,
            ..Default::default()
        })
        .await
        .expect("create push consumer");
    for _ in 0..4 {
        tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("delivered")
            .expect("message");
    }
    let took = started.elapsed().as_millis();
    // Four messages of ~490 bytes: two in the first burst, one more each
    // ~490 ms after.
    assert!(took >= 800, "paced at 1000 bytes a second: {took} ms");
    assert!(took < 3000, "{took} ms");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A stream update may not lower `consumer_limits` below what a consumer
/// already has: nats-server names the consumers in the way.
#[tokio::test]
async fn stream_consumer_limits_may_not_leave_a_consumer_above_them() {
    let dir = store_dir("limits");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    orders(&js, 0).await;
    api(
        &client,
        "$JS.API.CONSUMER.CREATE.ORDERS.BIG",
        r#"{"stream_name":"ORDERS","config":{"durable_name":"BIG","ack_policy":"explicit"}}"#,
    )
    .await;
    let update = |limits: &str| {
        format!(r#"{{"name":"ORDERS","subjects":["ORDERS.*"],"consumer_limits":{limits}}}"#)
    };
    let v = api(
        &client,
        "$JS.API.STREAM.UPDATE.ORDERS",
        &update(r#"{"max_ack_pending":10}"#),
    )
    .await;
    assert_eq!(v["error"]["err_code"], 10069, "{v}");
    assert_eq!(
        v["error"]["description"],
        "change to limits violates consumers: BIG"
    );
    let v = api(
        &client,
        "$JS.API.STREAM.UPDATE.ORDERS",
        &update(r#"{"max_ack_pending":1000,"inactive_threshold":2000000000}"#),
    )
    .await;
    assert!(v["error"].is_null(), "BIG is within both: {v}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A pull request for a consumer that is not there finds no responders (the
/// JetStream API passes pull requests by, as nats-server's import does).
#[tokio::test]
async fn a_pull_request_for_a_missing_consumer_finds_no_responders() {
    let dir = store_dir("noresponders");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    orders(&js, 1).await;
    let err = client
        .request("$JS.API.CONSUMER.MSG.NEXT.ORDERS.NONE", "1".into())
        .await
        .expect_err("nobody serves it");
    assert_eq!(
        err.kind(),
        async_nats::client::RequestErrorKind::NoResponders,
        "{err}"
    );
    // The API still answers everything else under CONSUMER.
    let v = api(&client, "$JS.API.CONSUMER.NAMES.ORDERS", "").await;
    assert_eq!(v["total"], 0, "{v}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A wildcard filter over many subjects: the count at creation, the messages
/// in order, those on subjects that appear later, and a filter changed by an
/// update, all as a walk of the stream would give them.
#[tokio::test]
async fn a_wildcard_filter_over_many_subjects_reads_exactly_its_matches() {
    let dir = store_dir("wildcard");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    let stream = js
        .create_stream(stream::Config {
            name: "W".into(),
            subjects: vec!["W.>".into()],
            ..Default::default()
        })
        .await
        .expect("stream");
    let mut acks = Vec::new();
    for i in 0..600u64 {
        let subject = format!("W.{}.{}", i % 10, i % 97);
        acks.push(
            js.publish(subject, i.to_string().into())
                .await
                .expect("pub"),
        );
    }
    for ack in acks {
        ack.await.expect("ack");
    }
    // Sequence i + 1 holds i; W.3.* holds every i with i % 10 == 3.
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("THREES".into()),
            filter_subject: "W.3.*".into(),
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let info = api(&client, "$JS.API.CONSUMER.INFO.W.THREES", "").await;
    assert_eq!(info["num_pending"], 60, "{info}");
    // A message on a new matching subject, and one removed before it is read.
    js.publish("W.3.new", "late".into())
        .await
        .expect("pub")
        .await
        .expect("ack");
    stream
        .delete_message(4)
        .await
        .expect("delete seq 4 (i = 3)");
    let got = fetch(&consumer, 100).await;
    let bodies: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    let mut want: Vec<String> = (13..600).step_by(10).map(|i| i.to_string()).collect();
    want.push("late".into());
    assert_eq!(bodies, want);
    // Changing the filter recounts from where the consumer stands.
    let updated = api(
        &client,
        "$JS.API.CONSUMER.CREATE.W.THREES",
        r#"{"stream_name":"W","action":"update","config":{"durable_name":"THREES","filter_subject":"W.*.5","ack_policy":"none","deliver_policy":"all"}}"#,
    )
    .await;
    assert_eq!(updated["num_pending"], 0, "{updated}");
    js.publish("W.8.5", "five".into())
        .await
        .expect("pub")
        .await
        .expect("ack");
    let got = fetch(&consumer, 10).await;
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"five");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Thousands of durable consumers must not each hold descriptors open: the
/// open-files limit would refuse the next one (nats-server has no such limit).
#[tokio::test]
async fn durable_consumers_hold_no_files_open() {
    let dir = store_dir("fds");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    let stream = orders(&js, 2).await;
    let before = open_files(server.pid());
    assert!(before > 0, "cannot read /proc/{}/fd", server.pid());
    for i in 0..200 {
        let c = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(format!("D{i}")),
                ..Default::default()
            })
            .await
            .expect("durable");
        // A delivery and an ack make the consumer write its state.
        if i % 20 == 0 {
            for m in fetch(&c, 1).await {
                m.double_ack().await.expect("ack");
            }
        }
    }
    let after = open_files(server.pid());
    assert!(
        after < before + 50,
        "{before} descriptors open before 200 durable consumers, {after} after"
    );
    drop(server);
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("reconnect");
    let info = api(&client, "$JS.API.CONSUMER.INFO.ORDERS.D20", "").await;
    assert_eq!(info["ack_floor"]["stream_seq"], 1, "{info}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `sample_freq` publishes `$JS.EVENT.METRIC.CONSUMER.ACK.<stream>.<consumer>`
/// for the acks it picks, with the fields nats-server's capture shows.
#[tokio::test]
async fn sampled_acks_publish_the_ack_metric() {
    let dir = store_dir("metric");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    let stream = orders(&js, 2).await;
    let mut metrics = client
        .subscribe("$JS.EVENT.METRIC.CONSUMER.ACK.ORDERS.>")
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    for (name, freq) in [("NEW", "100%"), ("QUIET", "")] {
        let c = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(name.into()),
                filter_subject: "ORDERS.new".into(),
                sample_frequency: if freq.is_empty() { 0 } else { 100 },
                ..Default::default()
            })
            .await
            .expect("consumer");
        for m in fetch(&c, 1).await {
            m.double_ack().await.expect("ack");
        }
    }
    let m = tokio::time::timeout(Duration::from_secs(2), metrics.next())
        .await
        .expect("a metric")
        .expect("subscription open");
    assert_eq!(&*m.subject, "$JS.EVENT.METRIC.CONSUMER.ACK.ORDERS.NEW");
    let body: serde_json::Value = serde_json::from_slice(&m.payload).expect("JSON");
    assert_eq!(
        body["type"], "io.nats.jetstream.metric.v1.consumer_ack",
        "{body}"
    );
    assert_eq!(body["stream"], "ORDERS");
    assert_eq!(body["consumer"], "NEW");
    assert_eq!(body["consumer_seq"], 1);
    assert_eq!(body["stream_seq"], 1);
    assert_eq!(body["deliveries"], 1);
    assert!(body["ack_time"].as_i64().is_some_and(|t| t > 0), "{body}");
    assert!(
        body["id"].is_string() && body["timestamp"].is_string(),
        "{body}"
    );
    let quiet = tokio::time::timeout(Duration::from_millis(300), metrics.next()).await;
    assert!(quiet.is_err(), "no sample_freq, no metric: {quiet:?}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `/jsz?consumers=1` lists each stream's consumers as nats-server does (their
/// info; the config only with `config=1`), and `/metrics` turns them into the
/// exporter's `jetstream_consumer_*` gauges.
#[tokio::test]
async fn consumers_show_in_jsz_and_metrics() {
    let dir = store_dir("jsz");
    let (server, http) =
        Server::start_monitored(None, &["-js", "-sd", dir.to_str().expect("utf-8 path")]);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    let stream = orders(&js, 4).await;
    let c = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("NEW".into()),
            description: Some("new orders".into()),
            filter_subject: "ORDERS.new".into(),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let got = fetch(&c, 1).await;
    got[0].double_ack().await.expect("ack");

    let jsz = common::http_json(http, "/jsz?consumers=1");
    let detail = &jsz["account_details"][0]["stream_detail"][0]["consumer_detail"];
    assert_eq!(detail.as_array().map(Vec::len), Some(1), "{jsz}");
    let new = &detail[0];
    assert_eq!(new["stream_name"], "ORDERS", "{new}");
    assert_eq!(new["name"], "NEW");
    assert_eq!(new["delivered"]["stream_seq"], 1);
    assert_eq!(new["ack_floor"]["stream_seq"], 1);
    assert_eq!(new["num_pending"], 1, "{new}");
    assert!(
        new.get("type").is_none() && new.get("config").is_none(),
        "{new}"
    );
    let with_config = common::http_json(http, "/jsz?consumers=1&config=1");
    let config =
        &with_config["account_details"][0]["stream_detail"][0]["consumer_detail"][0]["config"];
    assert_eq!(config["filter_subject"], "ORDERS.new", "{with_config}");
    let without = common::http_json(http, "/jsz?streams=1");
    assert!(
        without["account_details"][0]["stream_detail"][0]
            .get("consumer_detail")
            .is_none(),
        "{without}"
    );

    let (status, _, metrics) = common::http_get(http, "/metrics");
    assert_eq!(status, 200);
    for (gauge, value) in [
        ("jetstream_consumer_num_pending", 1),
        ("jetstream_consumer_delivered_stream_seq", 1),
        ("jetstream_consumer_ack_floor_stream_seq", 1),
        ("jetstream_consumer_num_ack_pending", 0),
        ("jetstream_consumer_num_waiting", 0),
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(&format!("{gauge}{{"))
                && l.contains(",stream_name=\"ORDERS\",")
                && l.contains(",consumer_name=\"NEW\",")
                && l.contains(",is_consumer_leader=\"true\",")
                && l.contains("consumer_desc=\"new orders\"")
                && l.ends_with(&format!("}} {value}"))),
            "no {gauge} of {value} for NEW in:\n{metrics}"
        );
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `feature_flags { js_ack_fc_v2: true }`: deliveries carry the v2 ack
/// subject (domain and account hash, as nats-server's capture shows for `$G`),
/// acks on it and on the v1 layout both count, flow control uses the v2 form,
/// and a client we did not write reads the metadata of either.
#[tokio::test]
async fn the_v2_ack_and_flow_control_layout_behind_its_feature_flag() {
    let dir = store_dir("v2ack");
    let config = format!(
        "jetstream {{ store_dir: {:?}, domain: hub }}\nfeature_flags {{ js_ack_fc_v2: true }}\n",
        dir.to_str().expect("utf-8 path")
    );
    let (server, http) = Server::start_monitored(Some(&config), &[]);
    let varz = common::http_json(http, "/varz");
    assert_eq!(varz["feature_flags"]["js_ack_fc_v2"], true, "{varz}");
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    let stream = orders(&js, 4).await;
    let c = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("NEW".into()),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let got = fetch(&c, 2).await;
    let reply = got[0].reply.as_deref().expect("reply").to_string();
    assert!(
        reply.starts_with("$JS.ACK.hub.szMpdrwD.ORDERS.NEW.1.1.1."),
        "{reply}"
    );
    assert!(reply.ends_with(".3"), "3 pending after the first: {reply}");
    let info = got[1].info().expect("v2 metadata");
    assert_eq!(
        (info.stream, info.consumer, info.stream_sequence),
        ("ORDERS", "NEW", 2)
    );
    got[0].double_ack().await.expect("v2 double ack");
    // The v1 layout of the second delivery is still taken.
    let v1 = format!(
        "$JS.ACK.ORDERS.NEW.1.2.2.{}.2",
        got[1]
            .info()
            .expect("info")
            .published
            .unix_timestamp_nanos()
    );
    let answer = client.request(v1, "+ACK".into()).await.expect("v1 ack");
    assert!(answer.payload.is_empty());
    let info = api(&client, "$JS.API.CONSUMER.INFO.ORDERS.NEW", "").await;
    assert_eq!(info["ack_floor"]["stream_seq"], 2, "{info}");

    // Flow control requests come on the v2 subject and are answered there.
    let mut push = client.subscribe("deliver.v2").await.expect("subscribe");
    client.flush().await.expect("flush");
    api(
        &client,
        "$JS.API.CONSUMER.CREATE.ORDERS.PUSH",
        r#"{"stream_name":"ORDERS","config":{"durable_name":"PUSH","deliver_subject":"deliver.v2","ack_policy":"none","flow_control":true,"idle_heartbeat":1000000000}}"#,
    )
    .await;
    let mut flow = None;
    let mut data = 0;
    while flow.is_none() || data < 4 {
        let m = tokio::time::timeout(Duration::from_secs(5), push.next())
            .await
            .expect("push delivery")
            .expect("open");
        if m.status.map(|s| s.as_u16()) == Some(100) {
            // A heartbeat has no reply; a flow control request does.
            if let Some(reply) = &m.reply {
                assert!(
                    reply.starts_with("$JS.FC.hub.szMpdrwD.ORDERS.PUSH."),
                    "{reply}"
                );
                client
                    .publish(reply.clone(), "".into())
                    .await
                    .expect("answer");
                flow = Some(reply.to_string());
            }
        } else {
            let reply = m.reply.as_deref().expect("ack subject");
            assert!(
                reply.starts_with("$JS.ACK.hub.szMpdrwD.ORDERS.PUSH."),
                "{reply}"
            );
            data += 1;
        }
        if data == 4 && flow.is_none() {
            // Four small messages need no flow control: publish enough that it asks.
            for _ in 0..40 {
                js.publish("ORDERS.new", vec![b'x'; 32 * 1024].into())
                    .await
                    .expect("pub")
                    .await
                    .expect("ack");
            }
            data = 0;
        }
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends a request and waits `wait` for an answer that may never come.
async fn maybe_answer(
    client: &async_nats::Client,
    subject: &str,
    body: &str,
    wait: Duration,
) -> Option<serde_json::Value> {
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await.expect("subscribe");
    client
        .publish_with_reply(subject.to_string(), inbox, body.to_string().into())
        .await
        .expect("publish");
    let answer = tokio::time::timeout(wait, answers.next()).await.ok()??;
    Some(serde_json::from_slice(&answer.payload).expect("JSON"))
}

#[tokio::test]
async fn a_reset_consumer_delivers_again_from_its_sequence_and_keeps_it_across_a_kill() {
    let dir = store_dir("reset");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    let stream = orders(&js, 6).await;
    let reset = "$JS.API.CONSUMER.RESET.ORDERS";
    // As nats-server: the consumer itself answers, so a missing one is silent.
    let wait = Duration::from_millis(300);
    assert_eq!(
        maybe_answer(&client, &format!("{reset}.NOPE"), "", wait).await,
        None
    );
    assert_eq!(
        maybe_answer(&client, "$JS.API.CONSUMER.RESET.NOPE.C", "", wait).await,
        None
    );

    api(
        &client,
        "$JS.API.CONSUMER.CREATE.ORDERS.NEW",
        r#"{"stream_name":"ORDERS","config":{"durable_name":"NEW","deliver_policy":"new","ack_policy":"explicit"}}"#,
    )
    .await;
    let refused = api(&client, &format!("{reset}.NEW"), r#"{"seq":3}"#).await;
    assert_eq!(
        refused,
        serde_json::json!({
            "type": "io.nats.jetstream.api.v1.consumer_reset_response",
            "error": {"code": 400, "err_code": 10204, "description": "invalid reset: not allowed"},
            "reset_seq": 0,
        })
    );
    let bad = api(&client, &format!("{reset}.NEW"), "{bad").await;
    assert_eq!(bad["error"]["err_code"], 10025, "{bad}");
    let to_floor = api(&client, &format!("{reset}.NEW"), "").await;
    assert_eq!(
        to_floor["type"],
        "io.nats.jetstream.api.v1.consumer_reset_response"
    );
    // A consumer of new messages starts with its ack floor at the stream's end.
    assert_eq!(to_floor["reset_seq"], 7, "{to_floor}");
    assert_eq!(to_floor["num_pending"], 0, "{to_floor}");
    assert_eq!(to_floor["name"], "NEW");
    assert!(to_floor.get("error").is_none());

    let all = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("ALL".into()),
            ..Default::default()
        })
        .await
        .expect("consumer");
    for m in fetch(&all, 4).await {
        m.ack().await.expect("ack");
    }
    let back = api(&client, &format!("{reset}.ALL"), r#"{"seq":2}"#).await;
    assert_eq!(back["reset_seq"], 2, "{back}");
    assert_eq!(back["ack_floor"]["stream_seq"], 1, "{back}");
    assert_eq!(back["delivered"]["consumer_seq"], 0, "{back}");
    let again = fetch(&all, 2).await;
    let seqs: Vec<u64> = again
        .iter()
        .map(|m| m.info().expect("info").stream_sequence)
        .collect();
    assert_eq!(seqs, [2, 3], "delivered again from 2");
    assert_eq!(
        again[0].info().expect("info").delivered,
        1,
        "as a first delivery"
    );
    let forward = api(&client, &format!("{reset}.ALL"), r#"{"seq":6}"#).await;
    assert_eq!(forward["num_pending"], 1, "{forward}");
    // The state file is written at once; a kill keeps the reset.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(client);
    drop(server);
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let info = api(&client, "$JS.API.CONSUMER.INFO.ORDERS.ALL", "").await;
    assert_eq!(info["ack_floor"]["stream_seq"], 5, "{info}");
    assert_eq!(info["num_pending"], 1, "{info}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_reset_past_messages_of_a_work_queue_removes_them() {
    let dir = store_dir("resetwq");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    js.create_stream(stream::Config {
        name: "JOBS".into(),
        subjects: vec!["jobs.*".into()],
        retention: stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await
    .expect("stream");
    for i in 0..5 {
        js.publish("jobs.a", format!("{i}").into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    api(
        &client,
        "$JS.API.CONSUMER.CREATE.JOBS.W",
        r#"{"stream_name":"JOBS","config":{"durable_name":"W","ack_policy":"explicit"}}"#,
    )
    .await;
    let reset = api(&client, "$JS.API.CONSUMER.RESET.JOBS.W", r#"{"seq":4}"#).await;
    assert_eq!(reset["reset_seq"], 4, "{reset}");
    let info = api(&client, "$JS.API.STREAM.INFO.JOBS", "").await;
    assert_eq!(info["state"]["messages"], 2, "{info}");
    assert_eq!(info["state"]["first_seq"], 4, "{info}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
