//! JetStream streams through a client we did not write (async-nats): create,
//! publish with PubAcks, deduplicate, expectations, info, get, purge, delete,
//! and everything surviving a SIGKILL.

mod common;

use async_nats::jetstream::{self, message::PublishMessage as Publish, stream};
use common::Server;

fn store_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("strait-js-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The same payment published again: its message id makes repeats duplicates.
async fn publish_payment(js: &jetstream::Context) -> jetstream::publish::PublishAck {
    js.send_publish(
        "ORDERS.paid",
        Publish::build().message_id("pay-1").payload("x".into()),
    )
    .await
    .expect("publish")
    .await
    .expect("ack")
}

fn start(dir: &std::path::Path) -> Server {
    Server::start(&["-js", "-sd", dir.to_str().expect("utf-8 path")])
}

#[tokio::test]
async fn streams_acknowledge_deduplicate_and_survive_a_kill() {
    let dir = store_dir("kill");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client);
    let mut orders = js
        .create_stream(stream::Config {
            name: "ORDERS".into(),
            subjects: vec!["ORDERS.*".into()],
            ..Default::default()
        })
        .await
        .expect("create");
    for i in 1..=5u64 {
        let ack = js
            .publish("ORDERS.new", format!("{{\"order\":{i}}}").into())
            .await
            .expect("publish")
            .await
            .expect("ack");
        assert_eq!(
            (ack.stream.as_str(), ack.sequence, ack.duplicate),
            ("ORDERS", i, false)
        );
    }
    let first = publish_payment(&js).await;
    let again = publish_payment(&js).await;
    assert_eq!((first.sequence, first.duplicate), (6, false));
    assert_eq!((again.sequence, again.duplicate), (6, true));
    // An expectation that does not hold is refused with nats-server's error.
    let refused = js
        .send_publish(
            "ORDERS.new",
            Publish::build()
                .expected_last_sequence(1)
                .payload("y".into()),
        )
        .await
        .unwrap()
        .await
        .expect_err("wrong last sequence");
    assert!(
        refused.to_string().contains("wrong last sequence: 6"),
        "{refused}"
    );
    let info = orders.info().await.expect("info");
    assert_eq!((info.state.messages, info.state.last_sequence), (6, 6));
    let got = orders.get_raw_message(3).await.expect("get");
    assert_eq!(&got.payload[..], b"{\"order\":3}");
    // A same-config create is not a conflict; another config is.
    js.create_stream(stream::Config {
        name: "ORDERS".into(),
        subjects: vec!["ORDERS.*".into()],
        ..Default::default()
    })
    .await
    .expect("same config again");
    let conflict = js
        .create_stream(stream::Config {
            name: "OTHER".into(),
            subjects: vec!["ORDERS.new".into()],
            ..Default::default()
        })
        .await
        .expect_err("overlap");
    assert!(
        conflict.to_string().contains("subjects overlap"),
        "{conflict}"
    );

    // SIGKILL: every acknowledged message, the dedupe window and the meta state
    // are back after the restart.
    drop(server);
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("reconnect");
    let js = jetstream::new(client);
    let mut orders = js.get_stream("ORDERS").await.expect("stream after restart");
    let info = orders.info().await.expect("info");
    assert_eq!((info.state.messages, info.state.last_sequence), (6, 6));
    let dup = publish_payment(&js).await;
    assert_eq!((dup.sequence, dup.duplicate), (6, true));
    let purged = orders.purge().filter("ORDERS.new").await.expect("purge");
    assert_eq!(purged.purged, 5);
    js.delete_stream("ORDERS").await.expect("delete");
    assert!(js.get_stream("ORDERS").await.is_err());
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_publish_no_stream_captures_gets_no_responders_and_bad_requests_get_errors() {
    let dir = store_dir("errors");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let err = client
        .request("nothing.here", "x".into())
        .await
        .expect_err("no responders");
    assert_eq!(err.kind(), async_nats::RequestErrorKind::NoResponders);
    let bad = client
        .request("$JS.API.STREAM.CREATE.BAD", "{".into())
        .await
        .expect("answer");
    let body: serde_json::Value = serde_json::from_slice(&bad.payload).unwrap();
    assert_eq!(body["error"]["err_code"], 10025);
    assert_eq!(body["error"]["description"], "invalid JSON: unexpected EOF");
    let mismatch = client
        .request("$JS.API.STREAM.CREATE.EMPTY", "".into())
        .await
        .expect("answer");
    let body: serde_json::Value = serde_json::from_slice(&mismatch.payload).unwrap();
    assert_eq!(body["error"]["err_code"], 10056);
    let missing = client
        .request("$JS.API.STREAM.INFO.NOPE", "".into())
        .await
        .expect("answer");
    let body: serde_json::Value = serde_json::from_slice(&missing.payload).unwrap();
    assert_eq!(body["error"]["err_code"], 10059);
    assert_eq!(
        body["type"],
        "io.nats.jetstream.api.v1.stream_info_response"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
