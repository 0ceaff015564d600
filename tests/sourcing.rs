//! Mirrors and sources through a client we did not write (async-nats) and the
//! raw API: start positions, filters and transforms, the `Nats-Stream-Source`
//! header, lag and errors in stream info, restarts of either side, origins
//! that go and come back, cross-account origins, many sources into one.

mod common;

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use common::{api, decode, Server};
use serde_json::Value;

fn store_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("strait-src-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn start(dir: &std::path::Path) -> Server {
    Server::start(&["-js", "-sd", dir.to_str().expect("utf-8 path")])
}

async fn info(client: &async_nats::Client, stream: &str) -> Value {
    api(client, &format!("$JS.API.STREAM.INFO.{stream}"), "").await
}

/// Waits until the stream holds `n` messages (and returns its info).
async fn wait_for(client: &async_nats::Client, stream: &str, n: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let i = info(client, stream).await;
        if i["state"]["messages"].as_u64() == Some(n) {
            return i;
        }
        assert!(
            Instant::now() < deadline,
            "{stream} never reached {n} messages: {i}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn publish(js: &jetstream::Context, subject: &str, n: u64, tag: &str) {
    for i in 1..=n {
        js.publish(subject.to_string(), format!("{tag} {i}").into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
}

async fn get(client: &async_nats::Client, stream: &str, seq: u64) -> Value {
    api(
        client,
        &format!("$JS.API.STREAM.MSG.GET.{stream}"),
        &format!(r#"{{"seq":{seq}}}"#),
    )
    .await
}

#[tokio::test]
async fn a_mirror_copies_sequences_and_times_and_follows_removals() {
    let dir = store_dir("mirror");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    js.create_stream(stream::Config {
        name: "ORDERS".into(),
        subjects: vec!["orders.>".into()],
        allow_direct: true,
        ..Default::default()
    })
    .await
    .expect("origin");
    publish(&js, "orders.new", 5, "o").await;
    // Interior removals at the origin before the mirror exists.
    api(&client, "$JS.API.STREAM.MSG.DELETE.ORDERS", r#"{"seq":2}"#).await;
    let created = api(
        &client,
        "$JS.API.STREAM.CREATE.BACKUP",
        r#"{"name":"BACKUP","mirror":{"name":"ORDERS"}}"#,
    )
    .await;
    assert!(created["error"].is_null(), "{created}");
    assert_eq!(created["config"]["mirror"]["name"], "ORDERS");
    assert_eq!(
        created["config"]["mirror_direct"], true,
        "follows allow_direct"
    );
    assert!(created["config"]["subjects"].is_null(), "{created}");
    let i = wait_for(&client, "BACKUP", 4).await;
    assert_eq!(i["state"]["first_seq"], 1);
    assert_eq!(i["state"]["last_seq"], 5);
    assert_eq!(i["mirror"]["name"], "ORDERS");
    assert_eq!(i["mirror"]["lag"], 0);
    assert!(i["mirror"]["active"].as_i64().unwrap() >= 0, "{i}");
    let (a, b) = (
        get(&client, "ORDERS", 5).await,
        get(&client, "BACKUP", 5).await,
    );
    assert_eq!(
        a["message"]["time"], b["message"]["time"],
        "origin timestamps"
    );
    assert_eq!(b["message"]["subject"], "orders.new");
    assert!(get(&client, "BACKUP", 2).await["error"].is_object());
    // The origin goes on: new messages and a gap from a deletion.
    publish(&js, "orders.paid", 3, "p").await;
    api(&client, "$JS.API.STREAM.MSG.DELETE.ORDERS", r#"{"seq":7}"#).await;
    publish(&js, "orders.paid", 1, "q").await;
    let i = wait_for(&client, "BACKUP", 7).await;
    assert_eq!(i["state"]["last_seq"], 9);
    // Direct gets addressed to the origin can be served by the mirror too;
    // either way the answer is right.
    let direct = client
        .request("$JS.API.DIRECT.GET.ORDERS", r#"{"seq":9}"#.into())
        .await
        .expect("direct get");
    assert_eq!(&direct.payload[..], b"q 1");
    // The API shows no consumer for the mirror on the origin.
    let names = api(&client, "$JS.API.CONSUMER.NAMES.ORDERS", "").await;
    assert_eq!(names["total"], 0, "{names}");
    assert_eq!(info(&client, "ORDERS").await["state"]["consumer_count"], 0);
    // A mirror refuses another origin, but may be promoted.
    let moved = api(
        &client,
        "$JS.API.STREAM.UPDATE.BACKUP",
        r#"{"name":"BACKUP","mirror":{"name":"OTHER"}}"#,
    )
    .await;
    assert_eq!(moved["error"]["err_code"], 10055, "{moved}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn mirror_configurations_are_checked_as_nats_server_does() {
    let dir = store_dir("mirror-checks");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    for (body, code) in [
        (
            r#"{"name":"M","subjects":["a"],"mirror":{"name":"O"}}"#,
            10034,
        ),
        (
            r#"{"name":"M","mirror":{"name":"O"},"sources":[{"name":"P"}]}"#,
            10031,
        ),
        (r#"{"name":"M","first_seq":5,"mirror":{"name":"O"}}"#, 10143),
        (
            r#"{"name":"M","mirror":{"name":"O","filter_subject":"a","subject_transforms":[{"src":"b","dest":"c"}]}}"#,
            10150,
        ),
        (
            r#"{"name":"M","sources":[{"name":"O"},{"name":"O"}]}"#,
            10140,
        ),
        (
            r#"{"name":"M","sources":[{"name":"O","external":{"api":"$JS.API"}}]}"#,
            10021,
        ),
    ] {
        let r = api(&client, "$JS.API.STREAM.CREATE.M", body).await;
        assert_eq!(r["error"]["err_code"], code, "{body}: {r}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn sources_filter_transform_and_name_their_origin() {
    let dir = store_dir("sources");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    for (name, subject) in [("ORDERS", "orders.>"), ("RETURNS", "returns.>")] {
        js.create_stream(stream::Config {
            name: name.into(),
            subjects: vec![subject.into()],
            ..Default::default()
        })
        .await
        .expect("origin");
    }
    publish(&js, "orders.eu", 3, "o").await;
    publish(&js, "orders.us", 2, "u").await;
    publish(&js, "returns.eu", 2, "r").await;
    let created = api(
        &client,
        "$JS.API.STREAM.CREATE.ARCHIVE",
        r#"{"name":"ARCHIVE","subjects":["archive.>"],"sources":[
            {"name":"ORDERS","filter_subject":"orders.eu"},
            {"name":"RETURNS","subject_transforms":[{"src":"returns.*","dest":"archive.returns.{{wildcard(1)}}"}]},
            {"name":"ORDERS","opt_start_seq":5,"filter_subject":"orders.us"}
        ]}"#,
    )
    .await;
    assert!(created["error"].is_null(), "{created}");
    // orders.eu 1..3, returns 1..2, orders.us from origin sequence 5 only.
    let i = wait_for(&client, "ARCHIVE", 6).await;
    let sources = i["sources"].as_array().expect("sources");
    assert_eq!(sources.len(), 3);
    assert!(
        sources
            .iter()
            .all(|s| s["lag"] == 0 && s["error"].is_null()),
        "{i}"
    );
    assert_eq!(sources[1]["subject_transforms"][0]["src"], "returns.*");
    let mut seen = Vec::new();
    for seq in 1..=6 {
        let m = get(&client, "ARCHIVE", seq).await;
        let subject = m["message"]["subject"].as_str().unwrap().to_string();
        let headers = decode(&m["message"]["hdrs"]);
        let source = headers
            .lines()
            .find_map(|l| l.strip_prefix("Nats-Stream-Source: "))
            .unwrap_or_else(|| panic!("no source header: {headers:?}"))
            .to_string();
        seen.push((subject, source));
    }
    let has = |subject: &str, header: &str| seen.iter().any(|(s, h)| s == subject && h == header);
    assert!(
        has("orders.eu", "ORDERS 1 orders.eu > orders.eu"),
        "{seen:?}"
    );
    assert!(
        has("orders.eu", "ORDERS 3 orders.eu > orders.eu"),
        "{seen:?}"
    );
    assert!(
        has(
            "archive.returns.eu",
            "RETURNS 2 returns.* archive.returns.{{wildcard(1)}} returns.eu"
        ),
        "{seen:?}"
    );
    assert!(
        has("orders.us", "ORDERS 5 orders.us > orders.us"),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|(_, h)| h.starts_with("ORDERS 4 ")),
        "{seen:?}"
    );
    // Order per source is kept.
    let eu: Vec<&String> = seen
        .iter()
        .filter(|(s, _)| s == "orders.eu")
        .map(|(_, h)| h)
        .collect();
    assert_eq!(eu[0], "ORDERS 1 orders.eu > orders.eu");
    // A publish carrying a source header of its own is stored as sent by the
    // stream's own subjects; messages keep flowing from the sources too.
    publish(&js, "archive.manual", 1, "m").await;
    publish(&js, "orders.eu", 1, "late").await;
    wait_for(&client, "ARCHIVE", 8).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn sources_resume_after_restarts_without_gaps_or_duplicates() {
    let dir = store_dir("restart");
    let server = start(&dir);
    {
        let client = async_nats::connect(server.url()).await.expect("connect");
        let js = jetstream::new(client.clone());
        js.create_stream(stream::Config {
            name: "ORDERS".into(),
            subjects: vec!["orders.>".into()],
            ..Default::default()
        })
        .await
        .expect("origin");
        publish(&js, "orders.a", 10, "a").await;
        for (name, body) in [
            ("AGG", r#"{"name":"AGG","sources":[{"name":"ORDERS"}]}"#),
            ("COPY", r#"{"name":"COPY","mirror":{"name":"ORDERS"}}"#),
        ] {
            let r = api(&client, &format!("$JS.API.STREAM.CREATE.{name}"), body).await;
            assert!(r["error"].is_null(), "{r}");
            wait_for(&client, name, 10).await;
        }
    }
    // Killed (drop is a SIGKILL), not stopped: what was stored is there after
    // a restart, and both feeds go on from where they were.
    drop(server);
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    publish(&js, "orders.b", 5, "b").await;
    let agg = wait_for(&client, "AGG", 15).await;
    assert_eq!(agg["state"]["last_seq"], 15);
    let copy = wait_for(&client, "COPY", 15).await;
    assert_eq!(copy["state"]["last_seq"], 15);
    // No duplicates: each origin sequence exactly once, in order.
    for seq in 1..=15u64 {
        let m = get(&client, "AGG", seq).await;
        let headers = decode(&m["message"]["hdrs"]);
        assert!(
            headers.contains(&format!("Nats-Stream-Source: ORDERS {seq} > > ")),
            "{seq}: {headers:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(info(&client, "AGG").await["state"]["messages"], 15);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn twenty_sources_into_one_keep_their_order() {
    let dir = store_dir("twenty");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    let mut sources = Vec::new();
    for i in 0..20 {
        js.create_stream(stream::Config {
            name: format!("S{i}"),
            subjects: vec![format!("s.{i}")],
            ..Default::default()
        })
        .await
        .expect("origin");
        sources.push(format!(r#"{{"name":"S{i}"}}"#));
    }
    let body = format!(r#"{{"name":"ALL","sources":[{}]}}"#, sources.join(","));
    let r = api(&client, "$JS.API.STREAM.CREATE.ALL", &body).await;
    assert!(r["error"].is_null(), "{r}");
    for round in 1..=25 {
        for i in 0..20 {
            js.publish(format!("s.{i}"), format!("{round}").into())
                .await
                .expect("publish");
        }
    }
    wait_for(&client, "ALL", 500).await;
    let mut last = [0u64; 20];
    for seq in 1..=500 {
        let m = get(&client, "ALL", seq).await;
        let subject = m["message"]["subject"].as_str().unwrap();
        let i: usize = subject["s.".len()..].parse().unwrap();
        let round: u64 = decode(&m["message"]["data"]).parse().unwrap();
        assert_eq!(round, last[i] + 1, "source {i} out of order at {seq}");
        last[i] = round;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_lag_of_mirrors_and_sources_is_in_jsz_and_metrics() {
    let dir = store_dir("lagmetrics");
    let (server, http) =
        Server::start_monitored(None, &["-js", "-sd", dir.to_str().expect("utf-8 path")]);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    js.create_stream(stream::Config {
        name: "ORIGIN".into(),
        subjects: vec!["origin.>".into()],
        ..Default::default()
    })
    .await
    .expect("origin");
    publish(&js, "origin.a", 5, "m").await;
    js.create_stream(stream::Config {
        name: "COPY".into(),
        mirror: Some(stream::Source {
            name: "ORIGIN".into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("mirror");
    js.create_stream(stream::Config {
        name: "ALL".into(),
        sources: Some(vec![stream::Source {
            name: "ORIGIN".into(),
            ..Default::default()
        }]),
        ..Default::default()
    })
    .await
    .expect("sourced");
    wait_for(&client, "COPY", 5).await;
    wait_for(&client, "ALL", 5).await;
    let jsz = common::http_json(http, "/jsz?streams=1");
    let details = jsz["account_details"][0]["stream_detail"]
        .as_array()
        .expect("stream details")
        .clone();
    let detail = |name: &str| {
        details
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {jsz}"))
    };
    assert_eq!(detail("COPY")["mirror"]["name"], "ORIGIN");
    assert_eq!(detail("COPY")["mirror"]["lag"], 0);
    assert_eq!(detail("ALL")["sources"][0]["name"], "ORIGIN");
    assert!(detail("ORIGIN").get("mirror").is_none());
    // The consumers made for the mirror and the source are direct ones: not
    // counted or listed with the API's, only on request.
    let jsz = common::http_json(http, "/jsz?consumers=1&raft=1");
    assert_eq!(jsz["consumers"], 0, "{jsz}");
    assert_eq!(jsz["streams_leader"], 3, "{jsz}");
    let origin = |jsz: &Value| {
        jsz["account_details"][0]["stream_detail"]
            .as_array()
            .and_then(|l| l.iter().find(|s| s["name"] == "ORIGIN").cloned())
            .expect("ORIGIN detail")
    };
    assert!(origin(&jsz).get("consumer_detail").is_none(), "{jsz}");
    let jsz = common::http_json(http, "/jsz?consumers=1&direct-consumers=1");
    let direct = origin(&jsz)["direct_consumer_detail"].clone();
    assert_eq!(direct.as_array().map(Vec::len), Some(2), "{jsz}");
    assert!(direct[0].get("config").is_none(), "{direct}");
    assert_eq!(info(&client, "ORIGIN").await["state"]["consumer_count"], 0);
    let account = api(&client, "$JS.API.INFO", "").await;
    assert_eq!(account["consumers"], 0, "{account}");
    let (status, _, metrics) = common::http_get(http, "/metrics");
    assert_eq!(status, 200);
    let sample = |kind: &str, stream: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("jetstream_stream_origin_lag{")
                    && l.contains(&format!("stream_name=\"{stream}\""))
                    && l.contains(&format!("origin_kind=\"{kind}\",origin_stream=\"ORIGIN\""))
            })
            .unwrap_or_else(|| panic!("no {kind} lag for {stream} in\n{metrics}"))
            .rsplit(' ')
            .next()
            .expect("value")
            .to_string()
    };
    assert_eq!(sample("mirror", "COPY"), "0");
    assert_eq!(sample("source", "ALL"), "0");
    assert!(metrics.contains("# TYPE jetstream_stream_origin_last_active_seconds gauge"));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_source_in_another_account_is_read_through_imports() {
    let dir = store_dir("external");
    let config = format!(
        r#"
        jetstream {{ store_dir: "{}" }}
        accounts {{
            A: {{
                jetstream: enabled
                users: [{{user: a, password: a}}]
                exports: [
                    {{service: "$JS.API.>"}}
                    {{service: "$JS.FC.>"}}
                    {{stream: "deliver.A.>"}}
                ]
            }}
            B: {{
                jetstream: enabled
                users: [{{user: b, password: b}}]
                imports: [
                    {{service: {{account: A, subject: "$JS.API.>"}}, to: "$JS.A.API.>"}}
                    {{service: {{account: A, subject: "$JS.FC.>"}}}}
                    {{stream: {{account: A, subject: "deliver.A.>"}}}}
                ]
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
    let a = connect("a").await;
    let b = connect("b").await;
    let js_a = jetstream::new(a.clone());
    js_a.create_stream(stream::Config {
        name: "ORDERS".into(),
        subjects: vec!["orders.>".into()],
        ..Default::default()
    })
    .await
    .expect("origin in A");
    publish(&js_a, "orders.new", 20, "a").await;
    let created = api(
        &b,
        "$JS.API.STREAM.CREATE.COPY",
        &serde_json::json!({
            "name": "COPY",
            "sources": [{
                "name": "ORDERS",
                "filter_subject": "orders.>",
                "external": {"api": "$JS.A.API", "deliver": "deliver.A.copy"}
            }]
        })
        .to_string(),
    )
    .await;
    assert!(created["error"].is_null(), "{created}");
    let i = wait_for(&b, "COPY", 20).await;
    assert_eq!(i["sources"][0]["external"]["api"], "$JS.A.API", "{i}");
    assert_eq!(i["sources"][0]["lag"], 0, "{i}");
    // More in the origin arrive in B too, in order.
    publish(&js_a, "orders.new", 10, "late").await;
    wait_for(&b, "COPY", 30).await;
    let last = get(&b, "COPY", 30).await;
    assert_eq!(decode(&last["message"]["data"]), "late 10");
    let hdrs = decode(&last["message"]["hdrs"]);
    // An external origin is named with the hash of its API prefix, as
    // nats-server names it.
    assert!(hdrs.contains("Nats-Stream-Source: ORDERS:"), "{hdrs}");
    assert!(hdrs.contains(" 30 orders.> > orders.new"), "{hdrs}");
    // B's own stream list knows nothing of A's stream, nor A of B's.
    let names = api(&a, "$JS.API.STREAM.NAMES", "").await;
    assert_eq!(names["streams"], serde_json::json!(["ORDERS"]), "{names}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits until `check` holds for the stream's info.
async fn wait_until(
    client: &async_nats::Client,
    stream: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let i = info(client, stream).await;
        if check(&i) {
            return i;
        }
        assert!(Instant::now() < deadline, "{stream} never {what}: {i}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_durable_source_drains_a_work_queue_and_resumes_after_a_kill() {
    let dir = store_dir("durable");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    js.create_stream(stream::Config {
        name: "JOBS".into(),
        subjects: vec!["jobs.>".into()],
        retention: stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await
    .expect("origin");
    publish(&js, "jobs.a", 5, "job").await;
    // The user makes the consumer the source will read (ADR-60): acked by
    // the flow control answers, so the work queue lets go of what was copied.
    let made = api(
        &client,
        "$JS.API.CONSUMER.CREATE.JOBS.SRC",
        r#"{"stream_name":"JOBS","config":{"durable_name":"SRC","deliver_subject":"deliver.src","ack_policy":"flow_control","flow_control":true,"idle_heartbeat":1000000000}}"#,
    )
    .await;
    assert!(made.get("error").is_none(), "{made}");
    let sourced = r#"{"name":"ALL","sources":[{"name":"JOBS","consumer":{"name":"SRC","deliver_subject":"deliver.src"}}]}"#;
    let created = api(&client, "$JS.API.STREAM.CREATE.ALL", sourced).await;
    assert!(created.get("error").is_none(), "{created}");
    assert_eq!(created["config"]["sources"][0]["consumer"]["name"], "SRC");
    wait_for(&client, "ALL", 5).await;
    wait_until(&client, "JOBS", "let go of what was copied", |i| {
        i["state"]["messages"] == 0
    })
    .await;
    let first = get(&client, "ALL", 1).await;
    assert!(
        // The origin's index name carries the consumer, as nats-server's does.
        decode(&first["message"]["hdrs"]).contains("Nats-Stream-Source: JOBS:C="),
        "{first}"
    );

    drop(client);
    drop(server);
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    publish(&js, "jobs.b", 3, "later").await;
    let all = wait_for(&client, "ALL", 8).await;
    assert_eq!(all["state"]["last_seq"], 8, "{all}");
    let last = get(&client, "ALL", 8).await;
    assert_eq!(decode(&last["message"]["data"]), "later 3");
    wait_until(&client, "JOBS", "let go after the restart", |i| {
        i["state"]["messages"] == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        info(&client, "ALL").await["state"]["messages"],
        8,
        "no duplicates"
    );

    // A consumer acked any other way cannot tell the origin what was copied.
    js.create_stream(stream::Config {
        name: "LOG".into(),
        subjects: vec!["log.>".into()],
        ..Default::default()
    })
    .await
    .expect("limits origin");
    let made = api(
        &client,
        "$JS.API.CONSUMER.CREATE.LOG.EXPLICIT",
        r#"{"stream_name":"LOG","config":{"durable_name":"EXPLICIT","deliver_subject":"deliver.x","ack_policy":"explicit"}}"#,
    )
    .await;
    assert!(made.get("error").is_none(), "{made}");
    let mirror = r#"{"name":"COPY","mirror":{"name":"LOG","consumer":{"name":"EXPLICIT","deliver_subject":"deliver.x"}}}"#;
    let created = api(&client, "$JS.API.STREAM.CREATE.COPY", mirror).await;
    assert!(created.get("error").is_none(), "{created}");
    let copy = wait_until(&client, "COPY", "reported its consumer", |i| {
        !i["mirror"]["error"].is_null()
    })
    .await;
    assert_eq!(copy["mirror"]["error"]["err_code"], 10214, "{copy}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn durable_sourcing_configurations_are_checked_as_nats_server_does() {
    let dir = store_dir("durablecfg");
    let server = start(&dir);
    let client = async_nats::connect(server.url()).await.expect("connect");
    for (body, code) in [
        (
            r#"{"name":"A","sources":[{"name":"O","opt_start_seq":3,"consumer":{"name":"C","deliver_subject":"d"}}]}"#,
            10215,
        ),
        (
            r#"{"name":"A","sources":[{"name":"O","consumer":{"name":"C","deliver_subject":"d.*"}}]}"#,
            10215,
        ),
        (
            r#"{"name":"A","sources":[{"name":"O","consumer":{"name":"C","deliver_subject":"d"}},{"name":"O","filter_subject":"x","consumer":{"name":"C","deliver_subject":"e"}}]}"#,
            10215,
        ),
        (
            r#"{"name":"A","sources":[{"name":"O","subject_transforms":[{"src":"a","dest":"b"}],"consumer":{"name":"C","deliver_subject":"d"}},{"name":"O","consumer":{"name":"C","deliver_subject":"e"}}]}"#,
            10216,
        ),
        (
            r#"{"name":"A","mirror":{"name":"O","filter_subject":"x","consumer":{"name":"C","deliver_subject":"d"}}}"#,
            10213,
        ),
    ] {
        let answer = api(&client, "$JS.API.STREAM.CREATE.A", body).await;
        assert_eq!(answer["error"]["err_code"], code, "{body}: {answer}");
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
