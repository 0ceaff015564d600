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

/// A direct get's answer: status (0 for a message), a header, and the payload.
async fn direct(
    client: &async_nats::Client,
    subject: &str,
    body: &str,
) -> Vec<(u16, async_nats::HeaderMap, Vec<u8>)> {
    use futures::StreamExt as _;
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await.expect("subscribe");
    client
        .publish_with_reply(subject.to_string(), inbox, body.to_string().into())
        .await
        .expect("request");
    let mut out = Vec::new();
    loop {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(5), sub.next())
            .await
            .expect("an answer")
            .expect("open");
        let status = msg.status.map_or(0, |s| s.as_u16());
        let done = status != 0 || !body.contains("batch") && !body.contains("multi_last");
        out.push((
            status,
            msg.headers.unwrap_or_default(),
            msg.payload.to_vec(),
        ));
        if done {
            return out;
        }
    }
}

fn header<'a>(headers: &'a async_nats::HeaderMap, name: &str) -> &'a str {
    headers.get(name).map_or("", |v| v.as_str())
}

#[tokio::test]
async fn direct_get_answers_every_form_with_headers_and_statuses() {
    let dir = store_dir("direct");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    let orders = js
        .create_stream(stream::Config {
            name: "ORDERS".into(),
            subjects: vec!["ORDERS.*".into()],
            allow_direct: true,
            ..Default::default()
        })
        .await
        .expect("create");
    for (subject, body) in [
        ("ORDERS.new", "1"),
        ("ORDERS.new", "2"),
        ("ORDERS.shipped", "3"),
        ("ORDERS.new", "4"),
        ("ORDERS.paid", "5"),
    ] {
        js.publish(subject, body.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let ack = publish_payment(&js).await;
    assert_eq!(ack.sequence, 6);

    // The client's own calls.
    let m = orders.direct_get(3).await.expect("by sequence");
    assert_eq!(
        (m.subject.as_str(), &m.payload[..]),
        ("ORDERS.shipped", &b"3"[..])
    );
    let m = orders
        .direct_get_last_for_subject("ORDERS.new")
        .await
        .expect("last");
    assert_eq!(m.sequence, 4);
    let m = orders
        .direct_get_next_for_subject("ORDERS.new", Some(2))
        .await
        .expect("next");
    assert_eq!(m.sequence, 2);

    // Headers as captured: the stored ones first, then the stream's.
    let got = direct(&client, "$JS.API.DIRECT.GET.ORDERS", r#"{"seq":6}"#).await;
    let (status, headers, payload) = &got[0];
    assert_eq!((*status, &payload[..]), (0, &b"x"[..]));
    assert_eq!(header(headers, "Nats-Msg-Id"), "pay-1");
    assert_eq!(header(headers, "Nats-Stream"), "ORDERS");
    assert_eq!(header(headers, "Nats-Subject"), "ORDERS.paid");
    assert_eq!(header(headers, "Nats-Sequence"), "6");
    assert!(header(headers, "Nats-Time-Stamp").ends_with('Z'));
    let got = direct(&client, "$JS.API.DIRECT.GET.ORDERS.ORDERS.shipped", "").await;
    assert_eq!(header(&got[0].1, "Nats-Sequence"), "3");

    // A batch: each message with what is still pending, then the EOB.
    let got = direct(
        &client,
        "$JS.API.DIRECT.GET.ORDERS",
        r#"{"seq":1,"batch":3}"#,
    )
    .await;
    assert_eq!(got.len(), 4);
    let seqs: Vec<(&str, &str, &str)> = got[..3]
        .iter()
        .map(|(_, h, _)| {
            (
                header(h, "Nats-Sequence"),
                header(h, "Nats-Num-Pending"),
                header(h, "Nats-Last-Sequence"),
            )
        })
        .collect();
    assert_eq!(seqs, [("1", "5", "0"), ("2", "4", "1"), ("3", "3", "2")]);
    assert_eq!(got[3].0, 204);
    assert_eq!(header(&got[3].1, "Nats-Num-Pending"), "3");
    assert_eq!(header(&got[3].1, "Nats-Last-Sequence"), "3");
    // Next by a wildcard subject, in a batch.
    let got = direct(
        &client,
        "$JS.API.DIRECT.GET.ORDERS",
        r#"{"next_by_subj":"ORDERS.new","seq":2,"batch":10}"#,
    )
    .await;
    let seqs: Vec<&str> = got
        .iter()
        .map(|(_, h, _)| header(h, "Nats-Sequence"))
        .collect();
    assert_eq!(seqs, ["2", "4", ""]);
    // max_bytes stops a batch after the message that reaches it.
    let got = direct(
        &client,
        "$JS.API.DIRECT.GET.ORDERS",
        r#"{"seq":1,"batch":10,"max_bytes":11}"#,
    )
    .await;
    assert_eq!(got.len(), 2, "one message of 11 bytes, then the EOB");

    // multi_last: the last of each subject, oldest first, with the ceiling.
    let got = direct(
        &client,
        "$JS.API.DIRECT.GET.ORDERS",
        r#"{"multi_last":["ORDERS.*"]}"#,
    )
    .await;
    let seqs: Vec<&str> = got
        .iter()
        .map(|(_, h, _)| header(h, "Nats-Sequence"))
        .collect();
    assert_eq!(seqs, ["3", "4", "6", ""]);
    assert_eq!(header(&got[3].1, "Nats-UpTo-Sequence"), "6");
    let got = direct(
        &client,
        "$JS.API.DIRECT.GET.ORDERS",
        r#"{"multi_last":["ORDERS.new","ORDERS.paid"],"up_to_seq":5}"#,
    )
    .await;
    let seqs: Vec<&str> = got
        .iter()
        .map(|(_, h, _)| header(h, "Nats-Sequence"))
        .collect();
    assert_eq!(seqs, ["4", "5", ""]);
    // From a time: everything is newer than the epoch.
    let got = direct(
        &client,
        "$JS.API.DIRECT.GET.ORDERS",
        r#"{"start_time":"1970-01-01T00:00:00Z"}"#,
    )
    .await;
    assert_eq!(header(&got[0].1, "Nats-Sequence"), "1");
    let got = direct(
        &client,
        "$JS.API.DIRECT.GET.ORDERS",
        r#"{"multi_last":["ORDERS.*"],"up_to_time":"1970-01-01T00:00:00Z"}"#,
    )
    .await;
    assert_eq!((got[0].0, got.len()), (404, 1));

    // Statuses, as nats-server sends them.
    for (subject, body, status) in [
        ("$JS.API.DIRECT.GET.ORDERS", r#"{"seq":9999}"#, 404),
        ("$JS.API.DIRECT.GET.ORDERS", "", 408),
        ("$JS.API.DIRECT.GET.ORDERS", "{", 408),
        (
            "$JS.API.DIRECT.GET.ORDERS",
            r#"{"seq":1,"last_by_subj":"a"}"#,
            408,
        ),
        ("$JS.API.DIRECT.GET.ORDERS.ORDERS.gone", "", 404),
        (
            "$JS.API.DIRECT.GET.ORDERS",
            r#"{"multi_last":["nothing"]}"#,
            404,
        ),
    ] {
        let got = direct(&client, subject, body).await;
        assert_eq!(got[0].0, status, "{subject} {body}");
    }
    let texts = direct(&client, "$JS.API.DIRECT.GET.ORDERS", r#"{"seq":9999}"#).await;
    assert_eq!(texts.len(), 1);

    // Without allow_direct nobody answers.
    js.create_stream(stream::Config {
        name: "EVENTS".into(),
        subjects: vec!["events.*".into()],
        ..Default::default()
    })
    .await
    .expect("create");
    let err = client
        .request("$JS.API.DIRECT.GET.EVENTS", r#"{"seq":1}"#.into())
        .await
        .expect_err("no responders");
    assert_eq!(err.kind(), async_nats::RequestErrorKind::NoResponders);
    drop(orders);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

async fn api(client: &async_nats::Client, subject: &str, body: &str) -> serde_json::Value {
    let answer = client
        .request(subject.to_string(), body.to_string().into())
        .await
        .expect("answer");
    serde_json::from_slice(&answer.payload).expect("JSON")
}

#[tokio::test]
async fn jetstream_is_per_account_with_the_account_limits() {
    let dir = store_dir("accounts");
    let config = format!(
        r#"
        jetstream {{ store_dir: "{}" }}
        accounts {{
            ON: {{ jetstream: enabled, users: [{{user: alpha, password: alpha}}] }}
            OFF: {{ users: [{{user: beta, password: beta}}] }}
            SMALL: {{
                jetstream: {{ max_streams: 2, max_file: 1000, max_consumers: 3 }}
                users: [{{user: small, password: small}}]
            }}
        }}
        "#,
        dir.display()
    );
    let server = Server::start_with_config(Some(&config), &[]);
    let connect = |user: &'static str| {
        let url = server.url();
        async move {
            async_nats::ConnectOptions::with_user_and_password(user.into(), user.into())
                .connect(url)
                .await
                .expect("connect")
        }
    };
    let on = connect("alpha").await;
    let off = connect("beta").await;
    let small = connect("small").await;

    let body = api(&off, "$JS.API.STREAM.NAMES", "").await;
    assert_eq!(body["error"]["err_code"], 10039, "{body}");
    let body = api(&off, "$JS.API.STREAM.CREATE.X", r#"{"name":"X"}"#).await;
    assert_eq!(body["error"]["err_code"], 10039, "{body}");
    let body = api(&on, "$JS.API.STREAM.CREATE.X", r#"{"name":"X"}"#).await;
    assert!(body["error"].is_null(), "{body}");
    // The same name in another account is another stream.
    let create = |name: &str, extra: &str| {
        format!(r#"{{"name":"{name}","subjects":["small.{name}"]{extra}}}"#)
    };
    let body = api(
        &small,
        "$JS.API.STREAM.CREATE.X",
        &create("X", r#","max_bytes":600"#),
    )
    .await;
    assert!(body["error"].is_null(), "{body}");
    let body = api(
        &small,
        "$JS.API.STREAM.CREATE.Y",
        &create("Y", r#","max_bytes":401"#),
    )
    .await;
    assert_eq!(body["error"]["err_code"], 10047, "{body}");
    let body = api(
        &small,
        "$JS.API.STREAM.CREATE.Y",
        &create("Y", r#","max_consumers":4"#),
    )
    .await;
    assert_eq!(body["error"]["err_code"], 10026, "{body}");
    let body = api(
        &small,
        "$JS.API.STREAM.CREATE.Y",
        &create("Y", r#","max_bytes":400"#),
    )
    .await;
    assert!(body["error"].is_null(), "{body}");
    let body = api(&small, "$JS.API.STREAM.CREATE.Z", &create("Z", "")).await;
    assert_eq!(body["error"]["err_code"], 10027, "{body}");
    let info = api(&small, "$JS.API.INFO", "").await;
    assert_eq!(info["streams"], 2);
    assert_eq!(info["limits"]["max_streams"], 2);
    assert_eq!(info["limits"]["max_storage"], 1000);
    assert_eq!(info["limits"]["max_consumers"], 3);
    let info = api(&on, "$JS.API.INFO", "").await;
    assert_eq!(
        (
            info["streams"].clone(),
            info["limits"]["max_streams"].clone()
        ),
        (1.into(), (-1).into())
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn monitoring_shows_jetstream_usage_accounts_and_streams() {
    let dir = store_dir("jsz");
    let (server, http) =
        Server::start_monitored(None, &["-js", "-sd", dir.to_str().expect("utf-8 path")]);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    js.create_stream(stream::Config {
        name: "ORDERS".into(),
        subjects: vec!["ORDERS.*".into()],
        ..Default::default()
    })
    .await
    .expect("create");
    for _ in 0..3 {
        js.publish("ORDERS.new", "abc".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let _ = api(&client, "$JS.API.STREAM.INFO.NOPE", "").await;

    let jsz = common::http_json(http, "/jsz");
    assert!(jsz.get("disabled").is_none(), "{jsz}");
    assert_eq!(
        (jsz["streams"].clone(), jsz["messages"].clone()),
        (1.into(), 3.into())
    );
    assert!(jsz["storage"].as_u64().unwrap() > 0);
    assert_eq!(jsz["accounts"], 1);
    assert_eq!(jsz["api"]["level"], 4);
    assert!(jsz["api"]["errors"].as_u64().unwrap() >= 1);
    assert_eq!(jsz["config"]["sync_always"], true);
    assert!(jsz["config"]["max_memory"].as_i64().unwrap() > 0);
    assert!(jsz["config"]["store_dir"]
        .as_str()
        .unwrap()
        .ends_with("jetstream"));
    assert!(jsz.get("account_details").is_none());
    assert_eq!(jsz["total"], 1);

    let detailed = common::http_json(http, "/jsz?streams=true&config=true");
    let account = &detailed["account_details"][0];
    assert_eq!(account["name"], "$G");
    let stream = &account["stream_detail"][0];
    assert_eq!(stream["name"], "ORDERS");
    assert_eq!(stream["state"]["messages"], 3);
    assert_eq!(stream["config"]["subjects"][0], "ORDERS.*");
    let without_config = common::http_json(http, "/jsz?streams=1");
    assert!(without_config["account_details"][0]["stream_detail"][0]
        .get("config")
        .is_none());
    let one = common::http_json(http, "/jsz?acc=$G");
    assert_eq!(one["account_details"].as_array().map(Vec::len), Some(1));
    let paged = common::http_json(http, "/jsz?accounts=true&offset=1");
    assert!(paged.get("account_details").is_none(), "{paged}");

    let varz = common::http_json(http, "/varz");
    assert_eq!(varz["jetstream"]["config"]["sync_always"], true);
    assert_eq!(varz["jetstream"]["stats"]["accounts"], 1);
    assert!(varz["jetstream"]["stats"]["storage"].as_u64().unwrap() > 0);

    let (status, _, _) = common::http_get(http, "/healthz?js-enabled-only=true");
    assert_eq!(status, 200);
    let (status, _, _) = common::http_get(http, "/healthz?account=$G&stream=ORDERS");
    assert_eq!(status, 200);
    let (status, _, body) = common::http_get(http, "/healthz?account=$G&stream=NOPE");
    assert_eq!(status, 404, "{body}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn healthz_reports_a_stream_that_did_not_open_and_checks_named_assets() {
    let dir = store_dir("healthz");
    let args = ["-js", "-sd", dir.to_str().expect("utf-8 path")];
    let (server, http) = Server::start_monitored(None, &args);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    // As nats-server: an account is found in the store once it has had a stream.
    let (status, _, body) = common::http_get(http, "/healthz?account=$G");
    assert_eq!(
        (status, body.as_str()),
        (
            404,
            r#"{"status":"unavailable","error":"JetStream account \"$G\" not found"}"#
        )
    );
    for name in ["BROKEN", "ORDERS"] {
        js.create_stream(stream::Config {
            name: name.into(),
            subjects: vec![format!("{name}.*")],
            ..Default::default()
        })
        .await
        .expect("create");
    }
    js.publish("BROKEN.x", "a".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    js.create_consumer_on_stream(
        jetstream::consumer::pull::Config {
            durable_name: Some("C1".into()),
            ..Default::default()
        },
        "ORDERS",
    )
    .await
    .expect("consumer");
    let (status, _, body) = common::http_get(http, "/healthz");
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    for (query, want) in [
        ("?account=$G&stream=ORDERS&consumer=C1", 200),
        ("?account=$G&stream=ORDERS&consumer=C2", 404),
        ("?account=NOPE", 404),
        ("?stream=ORDERS", 400),
        ("?account=$G&consumer=C1", 400),
    ] {
        let (status, _, body) = common::http_get(http, &format!("/healthz{query}"));
        assert_eq!(status, want, "{query}: {body}");
    }
    drop(client);
    drop(server);

    // A stream whose store cannot open: its directory is now a file.
    let broken = dir
        .join("jetstream")
        .join("$G")
        .join("streams")
        .join("BROKEN");
    std::fs::remove_dir_all(&broken).expect("remove the stream's directory");
    std::fs::write(&broken, b"not a stream").expect("write");
    let (server, http) = Server::start_monitored(None, &args);
    let (status, _, body) = common::http_get(http, "/healthz");
    assert_eq!(
        (status, body.as_str()),
        (
            503,
            r#"{"status":"unavailable","error":"JetStream stream '$G > BROKEN' could not be recovered"}"#
        )
    );
    let (status, _, body) = common::http_get(http, "/healthz?details=true");
    assert_eq!(status, 503);
    let details: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(details["status"], "error");
    assert_eq!(details["errors"][0]["type"], "STREAM");
    assert_eq!(details["errors"][0]["stream"], "BROKEN");
    // The other stream, and probes that stop short of the streams, are healthy.
    for query in [
        "?account=$G&stream=ORDERS&consumer=C1",
        "?js-enabled-only=true",
        "?js-server-only=true",
    ] {
        let (status, _, body) = common::http_get(http, &format!("/healthz{query}"));
        assert_eq!(status, 200, "{query}: {body}");
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn stream_changes_are_advised_as_nats_server_advises_them() {
    use futures::StreamExt as _;
    let dir = store_dir("advisories");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let mut events = client
        .subscribe("$JS.EVENT.ADVISORY.STREAM.>")
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    let js = jetstream::new(client.clone());
    let config = stream::Config {
        name: "TMP".into(),
        subjects: vec!["tmp.*".into()],
        ..Default::default()
    };
    js.create_stream(config.clone()).await.expect("create");
    js.create_stream(config.clone())
        .await
        .expect("same again: no advisory");
    js.update_stream(stream::Config {
        max_messages: 10,
        ..config
    })
    .await
    .expect("update");
    js.delete_stream("TMP").await.expect("delete");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(5), events.next())
            .await
            .expect("an advisory")
            .expect("open");
        let body: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(body["type"], "io.nats.jetstream.advisory.v1.stream_action");
        assert_eq!(body["stream"], "TMP");
        assert_eq!(body["id"].as_str().map(str::len), Some(22));
        assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
        seen.push((
            msg.subject.to_string(),
            body["action"].as_str().unwrap().to_string(),
        ));
    }
    assert_eq!(
        seen,
        [
            (
                "$JS.EVENT.ADVISORY.STREAM.CREATED.TMP".to_string(),
                "create".to_string()
            ),
            (
                "$JS.EVENT.ADVISORY.STREAM.UPDATED.TMP".to_string(),
                "modify".to_string()
            ),
            (
                "$JS.EVENT.ADVISORY.STREAM.DELETED.TMP".to_string(),
                "delete".to_string()
            ),
        ]
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Publishes up to 3000 `round.<n>` payloads with up to 256 PubAcks in flight
/// until the connection fails; returns the (payload, sequence) pairs that were acknowledged.
async fn publish_until_killed(js: &jetstream::Context, round: usize) -> Vec<(String, u64)> {
    use futures::StreamExt as _;
    let mut acked = Vec::new();
    let mut in_flight = futures::stream::FuturesUnordered::new();
    // Bounded so that reading everything back each round stays quick.
    for n in 0..3000 {
        let payload = format!("{round}.{n}");
        match js.publish("CRASH.x", payload.clone().into()).await {
            Ok(ack) => in_flight.push(async move { (payload, ack.await) }),
            Err(_) => break,
        }
        while in_flight.len() >= 256 {
            match in_flight.next().await {
                Some((payload, Ok(ack))) => acked.push((payload, ack.sequence)),
                _ => return acked,
            }
        }
    }
    while let Some((payload, result)) = in_flight.next().await {
        if let Ok(ack) = result {
            acked.push((payload, ack.sequence));
        }
    }
    acked
}

#[tokio::test]
async fn no_acknowledged_message_is_lost_or_doubled_over_thirty_kills() {
    let dir = store_dir("crashloop");
    let mut acknowledged: Vec<(String, u64)> = Vec::new();
    let mut killed_in_flight = 0;
    for round in 0..30 {
        let server = start(&dir);
        let client = async_nats::ConnectOptions::new()
            .max_reconnects(Some(0))
            .connect(server.url())
            .await
            .expect("connect");
        // In-flight PubAcks fail soon after the kill instead of after 5 s.
        let js = jetstream::ContextBuilder::new()
            .timeout(std::time::Duration::from_millis(500))
            .build(client.clone());
        if round == 0 {
            js.create_stream(stream::Config {
                name: "CRASH".into(),
                subjects: vec!["CRASH.*".into()],
                allow_direct: true,
                ..Default::default()
            })
            .await
            .expect("create");
        }
        // Every message acknowledged so far is at its sequence.
        let mut stored: Vec<(String, u64)> = Vec::new();
        let mut next = 1;
        loop {
            let got = direct(
                &client,
                "$JS.API.DIRECT.GET.CRASH",
                &format!(r#"{{"seq":{next},"batch":10000,"max_bytes":100000000}}"#),
            )
            .await;
            let before = stored.len();
            for (status, headers, payload) in &got {
                if *status == 0 {
                    let seq: u64 = header(headers, "Nats-Sequence").parse().expect("seq");
                    stored.push((String::from_utf8_lossy(payload).into_owned(), seq));
                    next = seq + 1;
                }
            }
            if stored.len() == before {
                break;
            }
        }
        let mut payloads: Vec<&str> = stored.iter().map(|(p, _)| p.as_str()).collect();
        payloads.sort_unstable();
        let total = payloads.len();
        payloads.dedup();
        assert_eq!(
            payloads.len(),
            total,
            "round {round}: a message stored twice"
        );
        let at: std::collections::HashMap<u64, &str> =
            stored.iter().map(|(p, s)| (*s, p.as_str())).collect();
        for (payload, seq) in &acknowledged {
            assert_eq!(
                at.get(seq),
                Some(&payload.as_str()),
                "round {round}: lost {payload}@{seq}"
            );
        }
        // Publish, and kill the server while PubAcks are in flight.
        let publisher = {
            let js = js.clone();
            tokio::spawn(async move { publish_until_killed(&js, round).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        drop(server);
        let acked = publisher.await.expect("publisher");
        killed_in_flight += usize::from(acked.len() < 3000);
        acknowledged.extend(acked);
    }
    assert!(
        acknowledged.len() > 1000,
        "only {} acknowledged",
        acknowledged.len()
    );
    assert!(
        killed_in_flight >= 10,
        "only {killed_in_flight} kills hit PubAcks in flight"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A harness that connects the moment the port answers and asks the JetStream API
/// at once (as the nats CLI in a systemd `ExecStartPost`, or a test suite, does)
/// gets its answer: the server accepts clients only once JetStream is up, as
/// nats-server does, instead of answering "no responders" from a half-started server.
#[test]
fn the_first_client_finds_jetstream_already_up() {
    use std::io::{Read, Write};
    for round in 0..3 {
        let dir = store_dir(&format!("first-{round}"));
        let port = common::free_port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_strait"))
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn strait");
        let _server = common::KillOnDrop(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut stream = loop {
            if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                break s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "strait never listened"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        stream
            .write_all(
                b"CONNECT {\"verbose\":false,\"headers\":true,\"no_responders\":true}\r\n\
                  SUB _INBOX.first 1\r\nPUB $JS.API.INFO _INBOX.first 0\r\n\r\n",
            )
            .expect("write");
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while common::find(&got, b"MSG _INBOX.first").is_none() {
            let n = stream.read(&mut chunk).expect("an answer to $JS.API.INFO");
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        let at = text.find("MSG _INBOX.first").expect("reply line");
        assert!(
            text[at.saturating_sub(1)..].starts_with("\nMSG"),
            "round {round}: a status (no responders) instead of the account info: {text}"
        );
        assert!(
            text.contains("\"type\":\"io.nats.jetstream.api.v1.account_info_response\""),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A stream's subject details come in pages, as nats-server sends them: `total`,
/// `offset` and `limit` (100 000) say where a page sits, and an `offset` request
/// gets the sorted subjects from there (async-nats pages `info_with_subjects` so).
#[tokio::test]
async fn stream_info_pages_its_subjects_by_offset() {
    let dir = store_dir("subject-pages");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    js.create_stream(stream::Config {
        name: "PAGED".into(),
        subjects: vec!["paged.>".into()],
        ..Default::default()
    })
    .await
    .expect("create stream");
    for i in [5, 3, 1, 4, 2] {
        js.publish(format!("paged.{i}"), "x".into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    let first = api(
        &client,
        "$JS.API.STREAM.INFO.PAGED",
        r#"{"subjects_filter":">"}"#,
    )
    .await;
    assert_eq!(
        (
            first["total"].as_u64(),
            first["offset"].as_u64(),
            first["limit"].as_u64()
        ),
        (Some(5), Some(0), Some(100_000)),
        "{first}"
    );
    assert_eq!(
        first["state"]["subjects"].as_object().map(|m| m.len()),
        Some(5),
        "{first}"
    );
    let rest = api(
        &client,
        "$JS.API.STREAM.INFO.PAGED",
        r#"{"subjects_filter":"paged.*","offset":3}"#,
    )
    .await;
    assert_eq!(
        (rest["total"].as_u64(), rest["offset"].as_u64()),
        (Some(5), Some(3)),
        "{rest}"
    );
    assert_eq!(
        rest["state"]["subjects"],
        serde_json::json!({"paged.4": 1, "paged.5": 1}),
        "{rest}"
    );
    let plain = api(&client, "$JS.API.STREAM.INFO.PAGED", "").await;
    assert_eq!(
        (plain["total"].as_u64(), plain["limit"].as_u64()),
        (Some(0), Some(0)),
        "{plain}"
    );
    // The client's own paging sees every subject once.
    let stream = js.get_stream("PAGED").await.expect("stream");
    let mut info = stream.info_with_subjects("paged.>").await.expect("info");
    let mut seen = 0;
    while let Some(subject) = futures::StreamExt::next(&mut info).await {
        subject.expect("subject");
        seen += 1;
    }
    assert_eq!(seen, 5);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Polls a stream's info until `done` holds, for up to `secs` seconds.
async fn info_until(
    stream: &mut jetstream::stream::Stream,
    secs: u64,
    done: impl Fn(&stream::State) -> bool,
) -> stream::State {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let state = stream.info().await.expect("info").state.clone();
        if done(&state) || std::time::Instant::now() > deadline {
            return state;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// With `subject_delete_marker_ttl`, the last message of a subject that ages out
/// is replaced by a marker saying so (as KV watchers expect), which expires in
/// turn; a shorter message TTL is raised to the marker's.
#[tokio::test]
async fn expired_subjects_leave_delete_markers_that_expire_in_turn() {
    let dir = store_dir("markers");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    let created = api(
        &client,
        "$JS.API.STREAM.CREATE.MARKED",
        r#"{"name":"MARKED","subjects":["marked.>"],"max_age":1000000000,"subject_delete_marker_ttl":2000000000}"#,
    )
    .await;
    assert_eq!(
        (
            created["config"]["allow_msg_ttl"].as_bool(),
            created["config"]["allow_rollup_hdrs"].as_bool()
        ),
        (Some(true), Some(true)),
        "{created}"
    );
    for subject in ["marked.a", "marked.a", "marked.b"] {
        js.publish(subject, "x".into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    let mut short = async_nats::HeaderMap::new();
    short.insert("Nats-TTL", "1s");
    js.publish_with_headers("marked.t", short, "x".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    let mut stream = js.get_stream("MARKED").await.expect("stream");
    let raised = stream.get_raw_message(4).await.expect("message 4");
    assert_eq!(header(&raised.headers, "Nats-TTL"), "2");

    let state = info_until(&mut stream, 5, |s| s.last_sequence == 7).await;
    assert_eq!((state.messages, state.last_sequence), (3, 7), "{state:?}");
    for (subject, seq) in [("marked.a", 5), ("marked.b", 6), ("marked.t", 7)] {
        let marker = stream
            .get_last_raw_message_by_subject(subject)
            .await
            .expect("marker");
        assert_eq!(marker.sequence, seq, "{subject}");
        assert!(marker.payload.is_empty());
        assert_eq!(header(&marker.headers, "Nats-Marker-Reason"), "MaxAge");
        assert_eq!(header(&marker.headers, "Nats-TTL"), "2s");
        assert_eq!(header(&marker.headers, "Nats-Rollup"), "sub");
    }
    // The markers age out like any message, and leave no marker behind.
    let state = info_until(&mut stream, 5, |s| s.messages == 0).await;
    assert_eq!((state.messages, state.last_sequence), (0, 7), "{state:?}");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let state = stream.info().await.expect("info").state.clone();
    assert_eq!((state.messages, state.last_sequence), (0, 7), "{state:?}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `subject_transform` changes what a message is stored under; `republish`
/// publishes every stored message again, once durable, with the stream's facts
/// in nats-server's headers (or only those, with the size, when headers only).
#[tokio::test]
async fn subject_transforms_and_republish() {
    use futures::StreamExt as _;
    let dir = store_dir("republish");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    let mut seen = client.subscribe("seen.>").await.expect("subscribe");
    let mut sizes = client.subscribe("sizes.>").await.expect("subscribe");
    client.flush().await.expect("flush");
    let created = api(
        &client,
        "$JS.API.STREAM.CREATE.ORIGIN",
        r#"{"name":"ORIGIN","subjects":["orders.*"],"subject_transform":{"src":"orders.*","dest":"stored.orders.$1"},"republish":{"dest":"seen.>"}}"#,
    )
    .await;
    assert_eq!(
        created["config"]["republish"],
        serde_json::json!({"src": ">", "dest": "seen.>"}),
        "{created}"
    );
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Order-Kind", "rush");
    for _ in 0..2 {
        js.publish_with_headers("orders.new", headers.clone(), "first".into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    let stream = js.get_stream("ORIGIN").await.expect("stream");
    let stored = stream.get_raw_message(1).await.expect("message 1");
    assert_eq!(stored.subject.as_str(), "stored.orders.new");
    for (seq, last) in [(1, 0), (2, 1)] {
        let m = tokio::time::timeout(std::time::Duration::from_secs(5), seen.next())
            .await
            .expect("republished in time")
            .expect("message");
        assert_eq!(m.subject.as_str(), "seen.stored.orders.new");
        assert_eq!(&m.payload[..], b"first");
        let h = m.headers.as_ref().expect("headers");
        assert_eq!(header(h, "Order-Kind"), "rush");
        assert_eq!(header(h, "Nats-Stream"), "ORIGIN");
        assert_eq!(header(h, "Nats-Subject"), "stored.orders.new");
        assert_eq!(header(h, "Nats-Sequence"), seq.to_string());
        assert_eq!(header(h, "Nats-Last-Sequence"), last.to_string());
        assert!(!header(h, "Nats-Time-Stamp").is_empty());
        assert_eq!(header(h, "Nats-Msg-Size"), "");
    }

    api(
        &client,
        "$JS.API.STREAM.CREATE.LIGHT",
        r#"{"name":"LIGHT","subjects":["light.>"],"republish":{"src":"light.*","dest":"sizes.$1","headers_only":true}}"#,
    )
    .await;
    js.publish("light.a", "12345".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    js.publish("light.a.b", "not republished".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    let m = tokio::time::timeout(std::time::Duration::from_secs(5), sizes.next())
        .await
        .expect("republished in time")
        .expect("message");
    assert_eq!(m.subject.as_str(), "sizes.a");
    assert!(m.payload.is_empty());
    assert_eq!(
        header(m.headers.as_ref().expect("headers"), "Nats-Msg-Size"),
        "5"
    );
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), sizes.next())
            .await
            .is_err(),
        "only subjects matching the republish source go out"
    );

    let refusals = [
        (
            r#"{"name":"CYCLE","subjects":["loop.>"],"republish":{"src":">","dest":"loop.again.>"}}"#,
            10052,
            "stream configuration for republish destination forms a cycle",
        ),
        (
            r#"{"name":"BADDEST","subjects":["bad.*"],"subject_transform":{"src":"bad.*","dest":"worse.*"}}"#,
            10156,
            "stream transform: invalid subject",
        ),
        (
            r#"{"name":"BADSRC","subjects":["src.*"],"subject_transform":{"src":"src..x","dest":"dst"}}"#,
            10155,
            "stream transform source: invalid subject src..x",
        ),
    ];
    for (config, code, description) in refusals {
        let name = serde_json::from_str::<serde_json::Value>(config).expect("json")["name"]
            .as_str()
            .expect("name")
            .to_string();
        let answer = api(&client, &format!("$JS.API.STREAM.CREATE.{name}"), config).await;
        assert_eq!(
            (
                answer["error"]["err_code"].as_u64(),
                answer["error"]["description"].as_str()
            ),
            (Some(code), Some(description)),
            "{answer}"
        );
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Publishes `payload` on `subject` with a reply and returns the PubAck body.
async fn publish_raw(
    client: &async_nats::Client,
    subject: &str,
    payload: &[u8],
) -> serde_json::Value {
    api(
        client,
        subject,
        std::str::from_utf8(payload).expect("utf-8"),
    )
    .await
}

/// Publishes 100-byte messages on `subject` until one is refused; returns how
/// many were stored and the refusal.
async fn fill(client: &async_nats::Client, subject: &str) -> (usize, serde_json::Value) {
    let payload = [b'x'; 100];
    for stored in 0..10_000 {
        let ack = publish_raw(client, subject, &payload).await;
        if !ack["error"].is_null() {
            return (stored, ack);
        }
    }
    panic!("{subject}: no limit was reached");
}

#[tokio::test]
async fn publishes_past_the_account_or_server_storage_are_refused() {
    let dir = store_dir("usage");
    let config = format!(
        r#"
        jetstream {{ store_dir: "{}", max_file_store: 6000 }}
        accounts {{
            SMALL: {{
                jetstream: {{ max_file: 2000 }}
                users: [{{user: small, password: small}}]
            }}
            BIG: {{ jetstream: enabled, users: [{{user: big, password: big}}] }}
        }}
        "#,
        dir.display()
    );
    let connect = |url: String, user: &'static str| async move {
        async_nats::ConnectOptions::with_user_and_password(user.into(), user.into())
            .connect(url)
            .await
            .expect("connect")
    };
    let server = Server::start_with_config(Some(&config), &[]);
    let small = connect(server.url(), "small").await;
    let big = connect(server.url(), "big").await;
    for (client, name, subject) in [(&small, "L", "l.x"), (&big, "B", "b.x")] {
        let body = api(
            client,
            &format!("$JS.API.STREAM.CREATE.{name}"),
            &format!(r#"{{"name":"{name}","subjects":["{subject}"]}}"#),
        )
        .await;
        assert!(body["error"].is_null(), "{body}");
    }
    // A 100-byte payload on "l.x" counts 22 + 3 + 100 + 8 = 133 bytes on file:
    // 15 fit in the account's 2000, the 16th does not.
    let (stored, refusal) = fill(&small, "l.x").await;
    assert_eq!(stored, 15, "{refusal}");
    assert_eq!(refusal["error"]["err_code"], 10002, "{refusal}");
    assert_eq!(
        refusal["error"]["description"],
        "resource limits exceeded for account"
    );
    assert_eq!(refusal["stream"], "L");
    let info = api(&small, "$JS.API.STREAM.INFO.L", "").await;
    assert_eq!(info["state"]["messages"], 15);
    assert_eq!(info["state"]["bytes"], 15 * 133);
    // A purge gives the room back.
    let body = api(&small, "$JS.API.STREAM.PURGE.L", "").await;
    assert_eq!(body["purged"], 15, "{body}");
    let ack = publish_raw(&small, "l.x", &[b'x'; 100]).await;
    assert!(ack["error"].is_null(), "{ack}");
    // Streams on other shards see a stream's bytes within a step; any request
    // to it (here an info) brings its ledgers up to date at once.
    let info = api(&small, "$JS.API.STREAM.INFO.L", "").await;
    assert_eq!(info["state"]["bytes"], 133);

    // The server's 6000 bytes: the other account's stream may take what is left
    // (the publish that crosses the ceiling is taken, as in nats-server)...
    let (stored, refusal) = fill(&big, "b.x").await;
    assert_eq!(refusal["error"]["err_code"], 10023, "{refusal}");
    assert_eq!(refusal["error"]["description"], "insufficient resources");
    assert_eq!(stored, (6000 - 133) / 133 + 1, "{refusal}");
    // ...and then nothing fits anywhere, the small account included.
    let info = api(&big, "$JS.API.STREAM.INFO.B", "").await;
    assert_eq!(info["state"]["messages"], stored as u64);
    let ack = publish_raw(&small, "l.x", &[b'x'; 100]).await;
    assert_eq!(ack["error"]["err_code"], 10023, "{ack}");
    assert!(server.wait_for_log(
        "JetStream file resource limits exceeded for server",
        std::time::Duration::from_secs(5)
    ));
    // Deleting the big stream frees the server.
    let body = api(&big, "$JS.API.STREAM.DELETE.B", "").await;
    assert_eq!(body["success"], true, "{body}");
    let (stored, refusal) = fill(&small, "l.x").await;
    assert_eq!(
        (stored, refusal["error"]["err_code"].clone()),
        (14, 10002.into())
    );
    // What streams reserve with max_bytes, in any account, against the server's
    // 6000 (nats-server's answers, checked side by side).
    for (name, max_bytes, refused) in [
        ("H1", 6001, true),
        ("H2", 5000, false),
        ("H3", 1001, true),
        ("H4", 1000, false),
        ("H5", -1, true),
    ] {
        let body = api(
            &big,
            &format!("$JS.API.STREAM.CREATE.{name}"),
            &format!(r#"{{"name":"{name}","max_bytes":{max_bytes}}}"#),
        )
        .await;
        let code = body["error"]["err_code"].as_u64();
        assert_eq!(code, refused.then_some(10047), "{name}: {body}");
    }

    // A restart counts what the streams hold again.
    drop(small);
    drop(big);
    drop(server);
    let server = Server::start_with_config(Some(&config), &[]);
    let small = connect(server.url(), "small").await;
    let ack = publish_raw(&small, "l.x", &[b'x'; 100]).await;
    assert_eq!(ack["error"]["err_code"], 10002, "{ack}");
    let body = api(&small, "$JS.API.STREAM.PURGE.L", "").await;
    assert_eq!(body["purged"], 15, "{body}");
    let ack = publish_raw(&small, "l.x", &[b'x'; 100]).await;
    assert!(ack["error"].is_null(), "{ack}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every file under `dir` that holds `needle`.
fn files_holding(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else if std::fs::read(&path)
                .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
            {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test]
async fn encryption_at_rest_hides_everything_and_a_wrong_key_loads_nothing_it_cannot_read() {
    let dir = store_dir("encryption");
    let config = |encryption: &str| {
        format!(
            "jetstream {{\n store_dir: \"{}\"\n {encryption}\n}}",
            dir.display()
        )
    };
    let stored = |client: async_nats::Client, stream: &'static str, seq: u64| async move {
        let body = api(
            &client,
            &format!("$JS.API.STREAM.MSG.GET.{stream}"),
            &format!(r#"{{"seq":{seq}}}"#),
        )
        .await;
        body["message"]["data"].as_str().map(|d| {
            String::from_utf8(data_encoding::BASE64.decode(d.as_bytes()).expect("base64"))
                .expect("utf-8")
        })
    };
    let create = |client: async_nats::Client, name: &'static str, subjects: &'static str| async move {
        let body = api(
            &client,
            &format!("$JS.API.STREAM.CREATE.{name}"),
            &format!(r#"{{"name":"{name}","subjects":["{subjects}"],"description":"confidential-{name}"}}"#),
        )
        .await;
        assert!(body["error"].is_null(), "{body}");
    };

    // A plaintext stream, before encryption is switched on.
    let server = Server::start_with_config(Some(&config("")), &[]);
    let client = async_nats::connect(server.url()).await.expect("connect");
    create(client.clone(), "PLAIN", "plain.>").await;
    let ack = publish_raw(&client, "plain.one", b"visible-payload").await;
    assert_eq!(ack["seq"], 1, "{ack}");
    drop(client);
    drop(server);

    let right = config(r#"cipher: chachapoly, key: "s3cr3t-key""#);
    let server = Server::start_with_config(Some(&right), &[]);
    let client = async_nats::connect(server.url()).await.expect("connect");
    assert_eq!(
        stored(client.clone(), "PLAIN", 1).await.as_deref(),
        Some("visible-payload")
    );
    let ack = publish_raw(&client, "plain.two", b"later-payload").await;
    assert_eq!(ack["seq"], 2, "{ack}");
    create(client.clone(), "SECRET", "hidden.subject.>").await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("X-Secret", "header-value");
    let answer = client
        .request_with_headers("hidden.subject.one", headers, "payload-secret".into())
        .await
        .expect("ack");
    let ack: serde_json::Value = serde_json::from_slice(&answer.payload).expect("JSON");
    assert_eq!(ack["seq"], 1, "{ack}");
    drop(client);
    server.terminate();
    // Nothing written under the key is readable on disk: not the new stream's
    // configuration, subjects, headers or payloads, nor what the old stream got.
    for needle in [
        &b"hidden.subject"[..],
        b"header-value",
        b"payload-secret",
        b"later-payload",
        b"plain.two",
        b"confidential-SECRET",
    ] {
        let holding = files_holding(&dir, needle);
        assert!(
            holding.is_empty(),
            "{} in {holding:?}",
            String::from_utf8_lossy(needle)
        );
    }

    // A wrong key, then no key: nats-server's log line, nothing it cannot read
    // is loaded, and the server serves new streams.
    for (encryption, reason) in [
        (
            r#"cipher: chachapoly, key: "wrong-key""#,
            "unable to recover keys",
        ),
        ("", "encryption not enabled"),
    ] {
        let server = Server::start_with_config(Some(&config(encryption)), &[]);
        assert!(
            server.wait_for_log(
                &format!("Error decrypting our stream metafile: {reason}"),
                std::time::Duration::from_secs(5)
            ),
            "{}",
            server.log_text()
        );
        let client = async_nats::connect(server.url()).await.expect("connect");
        let info = api(&client, "$JS.API.STREAM.INFO.SECRET", "").await;
        assert_eq!(info["error"]["err_code"], 10059, "{info}");
        // Its configuration was plain, its messages are not.
        let info = api(&client, "$JS.API.STREAM.INFO.PLAIN", "").await;
        assert_eq!(info["error"]["err_code"], 10059, "{info}");
        let body = api(&client, "$JS.API.STREAM.CREATE.NEW", r#"{"name":"NEW"}"#).await;
        assert!(body["error"].is_null(), "{body}");
        let ack = publish_raw(&client, "NEW", b"x").await;
        assert_eq!(ack["seq"], 1, "{ack}");
        let body = api(&client, "$JS.API.STREAM.DELETE.NEW", "").await;
        assert_eq!(body["success"], true, "{body}");
        drop(client);
        server.terminate();
    }

    // The right key again, with the other cipher: everything is back.
    let server = Server::start_with_config(Some(&config(r#"cipher: aes, key: "s3cr3t-key""#)), &[]);
    let client = async_nats::connect(server.url()).await.expect("connect");
    assert_eq!(
        stored(client.clone(), "PLAIN", 1).await.as_deref(),
        Some("visible-payload")
    );
    assert_eq!(
        stored(client.clone(), "PLAIN", 2).await.as_deref(),
        Some("later-payload")
    );
    assert_eq!(
        stored(client.clone(), "SECRET", 1).await.as_deref(),
        Some("payload-secret")
    );
    let info = api(&client, "$JS.API.STREAM.INFO.SECRET", "").await;
    assert_eq!(info["config"]["subjects"][0], "hidden.subject.>", "{info}");
    assert!(server
        .log_text()
        .contains("Restored 2 messages for stream '$G > PLAIN'"));
    drop(client);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_api_and_stream_subjects_imported_from_another_account_act_there() {
    let dir = store_dir("imports");
    let config = format!(
        r#"
        jetstream {{ store_dir: "{}" }}
        accounts {{
            JS: {{
                jetstream: enabled
                users: [{{user: js, password: js}}]
                exports: [{{service: "$JS.API.>"}}, {{service: "ord.>"}}]
            }}
            IU: {{
                users: [{{user: iu, password: iu}}]
                imports: [
                    {{service: {{subject: "$JS.API.>", account: JS}}, to: "jsapi.>"}}
                    {{service: {{subject: "ord.>", account: JS}}}}
                ]
            }}
            OWN: {{
                jetstream: enabled
                users: [{{user: own, password: own}}]
                imports: [{{service: {{subject: "$JS.API.>", account: JS}}}}]
            }}
        }}
        "#,
        dir.display()
    );
    let server = Server::start_with_config(Some(&config), &[]);
    let connect = |user: &'static str| {
        let url = server.url();
        async move {
            async_nats::ConnectOptions::with_user_and_password(user.into(), user.into())
                .connect(url)
                .await
                .expect("connect")
        }
    };
    let js = connect("js").await;
    let iu = connect("iu").await;
    let own = connect("own").await;
    let body = api(
        &js,
        "$JS.API.STREAM.CREATE.ORD",
        r#"{"name":"ORD","subjects":["ord.>"]}"#,
    )
    .await;
    assert!(body["error"].is_null(), "{body}");
    // An account without JetStream uses the exporter's through its mapping.
    let info = api(&iu, "jsapi.INFO", "").await;
    assert!(info["error"].is_null(), "{info}");
    assert_eq!(info["streams"], 1);
    let body = api(
        &iu,
        "jsapi.STREAM.CREATE.FROMIU",
        r#"{"name":"FROMIU","subjects":["fromiu"]}"#,
    )
    .await;
    assert!(body["error"].is_null(), "{body}");
    let names = api(&js, "$JS.API.STREAM.NAMES", "").await;
    assert_eq!(names["streams"], serde_json::json!(["FROMIU", "ORD"]));
    // Its own `$JS.API` unmapped, and no JetStream of its own: not enabled.
    let body = api(&iu, "$JS.API.INFO", "").await;
    assert_eq!(body["error"]["err_code"], 10039, "{body}");
    // An account with JetStream that imports the API gets the exporter's.
    let names = api(&own, "$JS.API.STREAM.NAMES", "").await;
    assert_eq!(names["streams"], serde_json::json!(["FROMIU", "ORD"]));
    // A stream subject imported as a service: stored there, acknowledged here.
    let ack = publish_raw(&iu, "ord.new", b"from-iu").await;
    assert_eq!(
        (ack["stream"].clone(), ack["seq"].clone()),
        ("ORD".into(), 1.into()),
        "{ack}"
    );
    let info = api(&js, "$JS.API.STREAM.INFO.ORD", "").await;
    assert_eq!(info["state"]["messages"], 1);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn every_api_request_is_audited_with_the_client_that_made_it() {
    use futures::StreamExt as _;
    let dir = store_dir("audit");
    let server = start(&dir);
    let monitor = async_nats::connect(server.url()).await.expect("connect");
    let mut audits = monitor
        .subscribe("$JS.EVENT.ADVISORY.API")
        .await
        .expect("subscribe");
    let mut listened = monitor.subscribe("$JS.API.>").await.expect("subscribe");
    monitor.flush().await.expect("flush");
    // Two clients on each shard (the API is served on one of them): the kernel
    // spreads connections over the shards' listeners, so keep connecting until
    // both shards hold two.
    let mut clients = Vec::new();
    let mut per_shard = [0usize; 2];
    for _ in 0..200 {
        let i = clients.len();
        let client = async_nats::ConnectOptions::new()
            .name(format!("app-{i}"))
            .connect(server.url())
            .await
            .expect("connect");
        let shard = (client.server_info().client_id % 2) as usize;
        if per_shard[shard] == 2 {
            continue;
        }
        per_shard[shard] += 1;
        common::await_interest(&monitor, &client).await;
        clients.push(client);
        if clients.len() == 4 {
            break;
        }
    }
    assert_eq!(per_shard, [2, 2], "clients on both shards");
    for (i, client) in clients.iter().enumerate() {
        let body = format!(r#"{{"name":"S{i}"}}"#);
        let answer = api(client, &format!("$JS.API.STREAM.CREATE.S{i}"), &body).await;
        assert!(answer["error"].is_null(), "{answer}");
        let audit = tokio::time::timeout(std::time::Duration::from_secs(5), audits.next())
            .await
            .expect("an audit")
            .expect("open");
        let audit: serde_json::Value = serde_json::from_slice(&audit.payload).expect("JSON");
        assert_eq!(audit["type"], "io.nats.jetstream.advisory.v1.api_audit");
        assert_eq!(audit["subject"], format!("$JS.API.STREAM.CREATE.S{i}"));
        assert_eq!(audit["request"], body);
        let response: serde_json::Value =
            serde_json::from_str(audit["response"].as_str().expect("a string")).expect("JSON");
        assert_eq!(response, answer);
        assert_eq!(audit["server"], server_id(client));
        let who = &audit["client"];
        assert_eq!(who["id"], client.server_info().client_id, "{audit}");
        assert_eq!(who["name"], format!("app-{i}"));
        assert_eq!(who["acc"], "$G");
        assert_eq!(who["lang"], "rust");
        assert_eq!(who["kind"], "Client");
        // A client listening on the API sees the request as it was sent.
        let heard = tokio::time::timeout(std::time::Duration::from_secs(5), listened.next())
            .await
            .expect("the request")
            .expect("open");
        assert!(
            heard
                .headers
                .as_ref()
                .is_none_or(|h| h.get("Nats-Request-Info").is_none()),
            "{heard:?}"
        );
        assert_eq!(heard.payload, body.as_bytes());
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

fn server_id(client: &async_nats::Client) -> String {
    client.server_info().server_id
}

#[tokio::test]
async fn interest_streams_keep_nothing_without_consumers_and_work_queues_keep_all() {
    let dir = store_dir("retention");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let state = |client: async_nats::Client, name: &'static str| async move {
        let info = api(&client, &format!("$JS.API.STREAM.INFO.{name}"), "").await;
        let s = &info["state"];
        (
            s["messages"].clone(),
            s["first_seq"].clone(),
            s["last_seq"].clone(),
        )
    };
    let n = |v: u64| serde_json::Value::from(v);
    for (name, retention) in [("I", "interest"), ("W", "workqueue")] {
        let body = api(
            &client,
            &format!("$JS.API.STREAM.CREATE.{name}"),
            &format!(
                r#"{{"name":"{name}","subjects":["{}.>"],"retention":"{retention}"}}"#,
                name.to_lowercase()
            ),
        )
        .await;
        assert_eq!(body["config"]["retention"], retention, "{body}");
    }
    let js = jetstream::new(client.clone());
    for seq in 1..=2 {
        let ack = js
            .publish("i.a", "x".into())
            .await
            .expect("publish")
            .await
            .expect("ack");
        assert_eq!(ack.sequence, seq);
    }
    let first = js
        .send_publish(
            "i.a",
            Publish::build().message_id("one").payload("x".into()),
        )
        .await
        .expect("publish")
        .await
        .expect("ack");
    let again = js
        .send_publish(
            "i.a",
            Publish::build().message_id("one").payload("x".into()),
        )
        .await
        .expect("publish")
        .await
        .expect("ack");
    assert_eq!(
        (first.sequence, again.sequence, again.duplicate),
        (3, 3, true)
    );
    js.publish("w.a", "x".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    assert_eq!(state(client.clone(), "I").await, (n(0), n(4), n(3)));
    assert_eq!(state(client.clone(), "W").await, (n(1), n(1), n(1)));
    // nats-server's update rules: limits and interest change into each other.
    for (name, to) in [("W", "limits"), ("I", "workqueue")] {
        let body = api(
            &client,
            &format!("$JS.API.STREAM.UPDATE.{name}"),
            &format!(
                r#"{{"name":"{name}","subjects":["{}.>"],"retention":"{to}"}}"#,
                name.to_lowercase()
            ),
        )
        .await;
        assert_eq!(
            body["error"]["description"],
            "stream configuration update can not change retention policy to/from workqueue",
            "{body}"
        );
    }
    let update = |client: async_nats::Client, retention: &'static str| async move {
        let body = api(
            &client,
            "$JS.API.STREAM.UPDATE.I",
            &format!(r#"{{"name":"I","subjects":["i.>"],"retention":"{retention}"}}"#),
        )
        .await;
        assert!(body["error"].is_null(), "{body}");
    };
    update(client.clone(), "limits").await;
    js.publish("i.a", "kept".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    update(client.clone(), "interest").await;
    // What was kept stays; what nobody wants is not kept.
    let ack = js
        .publish("i.a", "x".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    assert_eq!(ack.sequence, 5);
    assert_eq!(state(client.clone(), "I").await, (n(1), n(4), n(5)));
    drop(client);
    drop(server);
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    assert_eq!(state(client.clone(), "I").await, (n(1), n(4), n(5)));
    let js = jetstream::new(client.clone());
    let ack = js
        .publish("i.a", "x".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    assert_eq!(ack.sequence, 6);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Debug lines from the store carry structured fields; written to a file they
/// must be plain text like nats-server's, without terminal escape codes.
#[tokio::test]
async fn debug_log_lines_are_plain_text() {
    let dir = store_dir("plainlog");
    let server = Server::start(&["-js", "-sd", dir.to_str().expect("utf-8 path"), "-D"]);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: "LOGGED".into(),
        ..Default::default()
    })
    .await
    .expect("create");
    assert!(server.wait_for_log("file store opened", std::time::Duration::from_secs(5)));
    let log = server.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("file store opened"))
        .expect("store line");
    assert!(line.contains("stream=LOGGED"), "{line}");
    assert!(!log.contains('\u{1b}'), "escape codes in the log:\n{log}");
}

/// `jetstream { strict }`, on by default as in nats-server 2.12+: a request
/// with a field its type does not have is refused with Go's decoder's words;
/// `strict: false` takes it and ignores the field.
#[tokio::test]
async fn strict_api_requests_refuse_unknown_fields_unless_turned_off() {
    for (strict, dir) in [
        (None, store_dir("strict")),
        (Some(false), store_dir("lenient")),
    ] {
        let setting = strict.map_or(String::new(), |s| format!("strict: {s}\n"));
        let conf = format!("jetstream {{ store_dir: {dir:?}\n{setting} }}\n");
        let server = Server::start_with_config(Some(&conf), &[]);
        let client = async_nats::connect(server.url()).await.expect("connect");
        api(
            &client,
            "$JS.API.STREAM.CREATE.S",
            r#"{"name":"S","subjects":["s.>"]}"#,
        )
        .await;
        let created = api(
            &client,
            "$JS.API.STREAM.CREATE.T",
            r#"{"name":"T","subjects":["t.>"],"retension":"limits"}"#,
        )
        .await;
        let consumer = api(
            &client,
            "$JS.API.CONSUMER.CREATE.S.C",
            r#"{"stream_name":"S","config":{"name":"C","ack_policy":"explicit","ack_wiat":1}}"#,
        )
        .await;
        // Fields nats-server's request types have are taken either way.
        let get = api(
            &client,
            "$JS.API.STREAM.MSG.GET.S",
            r#"{"last_by_subj":"s.a","no_hdr":true,"up_to_seq":0}"#,
        )
        .await;
        if strict.is_none() {
            assert_eq!(
                created["error"],
                serde_json::json!({"code":400,"err_code":10025,"description":"invalid JSON: json: unknown field \"retension\""})
            );
            assert_eq!(
                consumer["error"]["description"],
                "invalid JSON: json: unknown field \"ack_wiat\""
            );
            assert!(server.log_text().contains("Strict:          true"));
        } else {
            assert!(created.get("error").is_none(), "{created}");
            assert!(consumer.get("error").is_none(), "{consumer}");
        }
        assert_eq!(get["error"]["err_code"], 10037, "{get}");
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
