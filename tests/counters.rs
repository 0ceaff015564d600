//! Counter streams (`allow_msg_counter`) through async-nats: totals in the
//! PubAcks and the stored messages, a total kept over a SIGKILL, a deleted
//! last increment undone after a restart, and a stream summing the counters of
//! the streams it sources.

mod common;

use std::time::Duration;

use common::{api, decode, Server};

const INCR: &str = "Nats-Incr";

fn store_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("strait-ctr-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn start(dir: &std::path::Path) -> Server {
    Server::start(&["-js", "-sd", dir.to_str().expect("utf-8 path")])
}

/// Adds `by` to the counter on `subject`; the PubAck as JSON.
async fn add(client: &async_nats::Client, subject: &str, by: &str) -> serde_json::Value {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(INCR, by);
    let ack = client
        .request_with_headers(subject.to_string(), headers, "".into())
        .await
        .expect("PubAck");
    serde_json::from_slice(&ack.payload).expect("JSON PubAck")
}

/// The counter's last message on `subject`: its total and its headers.
async fn last(client: &async_nats::Client, stream: &str, subject: &str) -> (String, String) {
    let got = api(
        client,
        &format!("$JS.API.STREAM.MSG.GET.{stream}"),
        &format!(r#"{{"last_by_subj":"{subject}"}}"#),
    )
    .await;
    let message = &got["message"];
    (decode(&message["data"]), decode(&message["hdrs"]))
}

#[tokio::test]
async fn a_counter_keeps_its_total_over_a_kill_and_a_deleted_increment_is_undone() {
    let dir = store_dir("kill");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let created = api(
        &client,
        "$JS.API.STREAM.CREATE.HITS",
        r#"{"name":"HITS","subjects":["hits.>"],"allow_msg_counter":true}"#,
    )
    .await;
    assert_eq!(created["config"]["allow_msg_counter"], true, "{created}");
    assert_eq!(created["config"]["metadata"]["_nats.req.level"], "2");
    let ack = add(&client, "hits.home", "+1").await;
    assert_eq!(ack, serde_json::json!({"stream":"HITS","seq":1,"val":"1"}));
    add(&client, "hits.home", "41").await;
    let big = "99999999999999999999999999";
    add(&client, "hits.about", big).await;
    assert_eq!(
        add(&client, "hits.about", "1").await["val"],
        "100000000000000000000000000"
    );
    let refused = add(&client, "hits.home", "one").await;
    assert_eq!(refused["error"]["err_code"], 10171, "{refused}");
    let (total, headers) = last(&client, "HITS", "hits.home").await;
    assert_eq!(total, r#"{"val":"42"}"#);
    assert!(headers.contains("Nats-Incr: 41"), "{headers}");

    // SIGKILL: the totals come back from the store.
    drop(server);
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("reconnect");
    let ack = add(&client, "hits.home", "-2").await;
    assert_eq!(ack, serde_json::json!({"stream":"HITS","seq":5,"val":"40"}));
    assert_eq!(add(&client, "hits.about", "-1").await["val"], big);

    // Deleting the last increment after another restart goes back to the
    // total before it, which the restarted server had not read.
    drop(server);
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("reconnect");
    let deleted = api(&client, "$JS.API.STREAM.MSG.DELETE.HITS", r#"{"seq":5}"#).await;
    assert_eq!(deleted["success"], true, "{deleted}");
    assert_eq!(add(&client, "hits.home", "+1").await["val"], "43");
    // A purged subject counts from zero.
    api(
        &client,
        "$JS.API.STREAM.PURGE.HITS",
        r#"{"filter":"hits.home"}"#,
    )
    .await;
    assert_eq!(add(&client, "hits.home", "+1").await["val"], "1");
    let update = api(
        &client,
        "$JS.API.STREAM.UPDATE.HITS",
        r#"{"name":"HITS","subjects":["hits.>"]}"#,
    )
    .await;
    assert_eq!(
        update["error"]["description"],
        "stream configuration update can not change message counter setting"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_stream_sourcing_counters_sums_them_and_remembers_what_it_saw() {
    let dir = store_dir("sources");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    for region in ["EU", "US"] {
        let lower = region.to_lowercase();
        api(
            &client,
            &format!("$JS.API.STREAM.CREATE.{region}"),
            &format!(
                r#"{{"name":"{region}","subjects":["{lower}.>"],"allow_msg_counter":true,"subject_transform":{{"src":"{lower}.>","dest":"views.>"}}}}"#
            ),
        )
        .await;
    }
    let created = api(
        &client,
        "$JS.API.STREAM.CREATE.ALL",
        r#"{"name":"ALL","allow_msg_counter":true,"sources":[{"name":"EU"},{"name":"US"}]}"#,
    )
    .await;
    assert!(created.get("error").is_none(), "{created}");
    add(&client, "eu.page", "5").await;
    add(&client, "us.page", "7").await;
    add(&client, "eu.page", "+3").await;
    let until = |want: &'static str| {
        let client = client.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let (total, headers) = last(&client, "ALL", "views.page").await;
                if total.contains(want) || std::time::Instant::now() > deadline {
                    return (total, headers);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let (total, headers) = until("15").await;
    assert_eq!(total, r#"{"val":"15"}"#);
    assert!(
        headers
            .contains(r#"Nats-Counter-Sources: {"EU":{"views.page":"8"},"US":{"views.page":"7"}}"#),
        "{headers}"
    );

    // The aggregate keeps what it saw over a kill: what the origins add after
    // the restart is added once.
    drop(server);
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("reconnect");
    add(&client, "us.page", "+10").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let total = loop {
        let (total, _) = last(&client, "ALL", "views.page").await;
        if total.contains("25") || std::time::Instant::now() > deadline {
            break total;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(total, r#"{"val":"25"}"#);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
