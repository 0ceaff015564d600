//! Accounts, imports and exports, per-account limits and per-user permissions,
//! across shards. Byte-exact errors from nats-server v2.14's captured answers.

mod common;

use std::time::Duration;

use common::{find, http_json, strip_info, Raw, Server};

/// The seed's example: accounts A and B, A importing B's stream `foo`.
const SEED_ACCOUNTS: &str = r#"
accounts: {
  A: {
    users: [{user: a, password: a}],
    imports: [{stream: {account: B, subject: "foo"}}]
  },
  B: {
    users: [{user: b, password: b}],
    exports: [{stream: "foo"}]
  }
}
"#;

fn connect_line(user: &str, pass: &str) -> Vec<u8> {
    format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"headers\":true,\"no_responders\":true,\"name\":\"{user}-client\",\"lang\":\"raw\",\"version\":\"1\",\"user\":\"{user}\",\"pass\":\"{pass}\"}}\r\n"
    )
    .into_bytes()
}

/// A logged-in raw connection on the given shard (`cid % shards`).
fn login_on(port: u16, user: &str, pass: &str, shard: u64) -> Raw {
    for _ in 0..200 {
        let mut raw = Raw::connect(port);
        if raw.cid() % 2 != shard {
            continue;
        }
        raw.send(&connect_line(user, pass));
        assert_eq!(raw.ping_sync(), b"", "login of {user}");
        return raw;
    }
    panic!("no connection landed on shard {shard}");
}

#[test]
fn seed_accounts_are_isolated_and_import_one_way() {
    let server = Server::start_with_config(Some(SEED_ACCOUNTS), &[]);
    // Every combination of shards for subscriber and publisher.
    for (sub_shard, pub_shard) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        let mut a = login_on(server.port, "a", "a", sub_shard);
        let mut b_sub = login_on(server.port, "b", "b", sub_shard);
        a.send(b"SUB > 1\r\n");
        b_sub.send(b"SUB > 1\r\n");
        a.ping_sync();
        b_sub.ping_sync();

        let mut b = login_on(server.port, "b", "b", pub_shard);
        b.send(b"PUB foo 6\r\nuser b\r\nPUB bar 6\r\nnot it\r\n");
        b.ping_sync();
        let mut a_pub = login_on(server.port, "a", "a", pub_shard);
        a_pub.send(b"PUB foo 6\r\nuser a\r\n");
        a_pub.ping_sync();

        // A gets B's foo through the import, and its own foo; not B's bar.
        let got_a = a.ping_sync();
        assert_eq!(
            got_a,
            b"MSG foo 1 6\r\nuser b\r\nMSG foo 1 6\r\nuser a\r\n",
            "shards {sub_shard}/{pub_shard}: {}",
            String::from_utf8_lossy(&got_a)
        );
        // B sees only its own account: never A's foo.
        let got_b = b_sub.ping_sync();
        assert_eq!(
            got_b,
            b"MSG foo 1 6\r\nuser b\r\nMSG bar 1 6\r\nnot it\r\n",
            "shards {sub_shard}/{pub_shard}: {}",
            String::from_utf8_lossy(&got_b)
        );
    }
}

#[test]
fn seed_nkey_users_in_accounts() {
    let a = nkeys::KeyPair::new_user();
    let b = nkeys::KeyPair::new_user();
    let config = format!(
        "accounts: {{\n  A: {{\n    users: [{{nkey:{}}}],\n    imports: [{{stream: {{account: B, subject: \"foo\"}}}}]\n  }},\n  B: {{\n    users: [{{nkey:{}}}],\n    exports: [{{stream: \"foo\"}}]\n  }}\n}}\n",
        a.public_key(),
        b.public_key()
    );
    let server = Server::start_with_config(Some(&config), &[]);
    let login = |key: &nkeys::KeyPair| {
        let mut raw = Raw::connect(server.port);
        let info: serde_json::Value = serde_json::from_str(raw.info[5..].trim()).unwrap();
        let nonce = info["nonce"].as_str().expect("nonce").to_string();
        let sig = data_encoding::BASE64URL_NOPAD.encode(&key.sign(nonce.as_bytes()).unwrap());
        raw.send(
            format!(
                "CONNECT {{\"verbose\":false,\"pedantic\":false,\"nkey\":\"{}\",\"sig\":\"{}\"}}\r\n",
                key.public_key(),
                sig
            )
            .as_bytes(),
        );
        assert_eq!(raw.ping_sync(), b"");
        raw
    };
    let mut sub = login(&a);
    sub.send(b"SUB > 1\r\n");
    sub.ping_sync();
    let mut publisher = login(&b);
    publisher.send(b"PUB foo 4\r\nnkey\r\n");
    publisher.ping_sync();
    assert_eq!(sub.ping_sync(), b"MSG foo 1 4\r\nnkey\r\n");
}

const SERVICES: &str = r#"
accounts: {
  A: {
    users: [{user: a, password: a}],
    imports: [
      {stream: {account: B, subject: "events.>"}, prefix: "b"},
      {service: {account: B, subject: "help"}, to: "b.help"},
      {service: {account: B, subject: "feed"}, to: "b.feed"},
      {service: {account: B, subject: "quiet"}},
      {service: {account: B, subject: "who"}, to: "b.who", share: true}
    ]
  },
  B: {
    users: [{user: b, password: b}],
    exports: [
      {stream: "events.>"},
      {service: "help", accounts: [A]},
      {service: "feed", response_type: stream},
      {service: "quiet"},
      {service: "who"}
    ]
  }
}
"#;

/// The `_R_.` reply subject of a request a responder received.
fn reply_of(msg: &[u8]) -> String {
    let line = String::from_utf8_lossy(&msg[..find(msg, b"\r\n").unwrap()]).into_owned();
    let reply = line.split(' ').nth(3).unwrap().to_string();
    assert!(reply.starts_with("_R_."), "{line}");
    reply
}

#[test]
fn service_import_request_reply_across_accounts_and_shards() {
    let server = Server::start_with_config(Some(SERVICES), &[]);
    for (req_shard, svc_shard) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        let mut responder = login_on(server.port, "b", "b", svc_shard);
        responder.send(b"SUB help 1\r\nSUB feed 2\r\n");
        responder.ping_sync();
        let mut requester = login_on(server.port, "a", "a", req_shard);
        requester.send(b"SUB _INBOX.r.* 9\r\n");
        requester.ping_sync();

        // Singleton: one answer goes back, a second one does not.
        requester.send(b"PUB b.help _INBOX.r.1 3\r\nhi?\r\n");
        requester.ping_sync();
        let request = responder.ping_sync();
        // The responder learns the requester's account, as from nats-server.
        assert!(request.starts_with(b"HMSG help 1 _R_."), "{request:?}");
        assert!(
            request.ends_with(
                b" 44 47\r\nNATS/1.0\r\nNats-Request-Info: {\"acc\":\"A\"}\r\n\r\nhi?\r\n"
            ),
            "{}",
            String::from_utf8_lossy(&request)
        );
        let reply = reply_of(&request);
        responder.send(format!("PUB {reply} 2\r\nok\r\nPUB {reply} 4\r\nmore\r\n").as_bytes());
        responder.ping_sync();
        assert_eq!(
            requester.ping_sync(),
            b"MSG _INBOX.r.1 9 2\r\nok\r\n",
            "shards {req_shard}/{svc_shard}"
        );

        // Stream responses: every answer goes back.
        requester.send(b"PUB b.feed _INBOX.r.2 0\r\n\r\n");
        requester.ping_sync();
        let request = responder.ping_sync();
        let reply = reply_of(&request);
        responder.send(format!("PUB {reply} 1\r\n1\r\nPUB {reply} 1\r\n2\r\n").as_bytes());
        responder.ping_sync();
        assert_eq!(
            requester.ping_sync(),
            b"MSG _INBOX.r.2 9 1\r\n1\r\nMSG _INBOX.r.2 9 1\r\n2\r\n"
        );
    }

    // A requester cannot pass itself off as another account.
    let mut responder = login_on(server.port, "b", "b", 0);
    responder.send(b"SUB help 1\r\n");
    responder.ping_sync();
    let mut requester = login_on(server.port, "a", "a", 1);
    requester.send(b"HPUB b.help _INBOX.x 47 48\r\nNATS/1.0\r\nNats-Request-Info: {\"acc\":\"EVIL\"}\r\n\r\n!\r\n");
    requester.ping_sync();
    let request = responder.ping_sync();
    assert!(
        find(&request, b"Nats-Request-Info: {\"acc\":\"A\"}\r\n").is_some()
            && find(&request, b"EVIL").is_none(),
        "{}",
        String::from_utf8_lossy(&request)
    );

    // `share`: the exporter learns who asked.
    responder.send(b"SUB who 2\r\n");
    responder.ping_sync();
    requester.send(b"PUB b.who _INBOX.x 0\r\n\r\n");
    requester.ping_sync();
    let request = responder.ping_sync();
    let text = String::from_utf8_lossy(&request).into_owned();
    let json = text
        .split("Nats-Request-Info: ")
        .nth(1)
        .and_then(|rest| rest.split("\r\n").next())
        .unwrap_or_else(|| panic!("{text}"));
    let info: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(info["acc"], "A");
    assert_eq!(info["user"], "a");
    assert_eq!(info["name"], "a-client");
    assert_eq!(info["lang"], "raw");
    assert_eq!(info["host"], "127.0.0.1");
    assert_eq!(info["id"], requester.cid());
    assert_eq!(info["kind"], "Client");
    assert!(
        info["start"].as_str().is_some_and(|s| s.ends_with('Z')),
        "{info}"
    );

    // No responder in the exporting account: the requester hears 503.
    let mut requester = login_on(server.port, "a", "a", 0);
    requester.send(b"SUB _INBOX.nr 1\r\nPUB quiet _INBOX.nr 0\r\n\r\n");
    let got = requester.ping_sync();
    assert!(
        got.starts_with(b"HMSG _INBOX.nr 1 ") && find(&got, b"NATS/1.0 503").is_some(),
        "{}",
        String::from_utf8_lossy(&got)
    );

    // The stream import with a prefix.
    let mut sub = login_on(server.port, "a", "a", 1);
    sub.send(b"SUB b.events.> 1\r\n");
    sub.ping_sync();
    let mut publisher = login_on(server.port, "b", "b", 0);
    publisher.send(b"PUB events.x.y 1\r\n!\r\n");
    publisher.ping_sync();
    assert_eq!(sub.ping_sync(), b"MSG b.events.x.y 1 1\r\n!\r\n");

    // Clients may not forge the service-import reply subjects.
    publisher.send(b"PUB foo _R_.abc 0\r\n\r\n");
    assert_eq!(
        publisher.ping_sync(),
        b"-ERR 'Permissions Violation for Publish with Reply of \"_R_.abc\"'\r\n"
    );
}

#[tokio::test]
async fn async_nats_request_through_a_service_import() {
    use futures::StreamExt;
    let server = Server::start_with_config(Some(SERVICES), &[]);
    let b = async_nats::ConnectOptions::with_user_and_password("b".into(), "b".into())
        .connect(server.url())
        .await
        .unwrap();
    let mut service = b.subscribe("help").await.unwrap();
    let responder = b.clone();
    tokio::spawn(async move {
        while let Some(msg) = service.next().await {
            if let Some(reply) = msg.reply {
                let mut answer = b"re: ".to_vec();
                answer.extend_from_slice(&msg.payload);
                responder.publish(reply, answer.into()).await.unwrap();
            }
        }
    });
    let a = async_nats::ConnectOptions::with_user_and_password("a".into(), "a".into())
        .connect(server.url())
        .await
        .unwrap();
    common::await_interest(&b, &b).await;
    for i in 0..20 {
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            a.request("b.help", format!("q{i}").into()),
        )
        .await
        .expect("answer in time")
        .expect("request");
        assert_eq!(answer.payload, format!("re: q{i}").as_bytes());
    }
    // B cannot reach A's subjects: no import that way.
    let err = b.request("b.help", "x".into()).await.unwrap_err();
    assert_eq!(err.kind(), async_nats::RequestErrorKind::NoResponders);
}

/// the reference capture's b2_server.conf, without JetStream.
const B2: &str = r#"
authorization { timeout: 1 }
accounts {
  APP {
    users: [
      {user: app, password: secret}
      {user: limited, password: limited, permissions: {publish: {deny: ["secret.>"]}, subscribe: {deny: ["secret.>"]}}}
    ]
  }
  SYS { users: [ {user: sys, password: sys} ] }
}
system_account: SYS
"#;

#[test]
fn permission_violations_match_the_capture() {
    let server = Server::start_with_config(Some(B2), &[]);
    let mut raw = Raw::connect(server.port);
    raw.send(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"tls_required\":false,\"name\":\"limited-client\",\"lang\":\"python-raw\",\"version\":\"0.0.1\",\"protocol\":1,\"echo\":true,\"headers\":true,\"no_responders\":true,\"user\":\"limited\",\"pass\":\"limited\"}\r\n");
    raw.send(b"PUB secret.x 1\r\nx\r\n");
    raw.send(b"SUB secret.> 1\r\n");
    raw.send(b"SUB secret.q workers 2\r\n");
    raw.send(b"SUB _INBOX.lim.* 3\r\n");
    raw.send(b"PUB public.x _INBOX.lim.1 1\r\nx\r\n");
    let got = raw.ping_sync();
    let expected: &[u8] = b"-ERR 'Permissions Violation for Publish to \"secret.x\"'\r\n\
-ERR 'Permissions Violation for Subscription to \"secret.>\"'\r\n\
-ERR 'Permissions Violation for Subscription to \"secret.q\" using queue \"workers\"'\r\n\
HMSG _INBOX.lim.1 3 40 40\r\nNATS/1.0 503\r\nNats-Subject: public.x\r\n\r\n\r\n";
    assert_eq!(got, expected, "{}", String::from_utf8_lossy(&got));
    // The connection stays open and usable.
    raw.send(b"SUB public.> 4\r\nPUB public.y 2\r\nok\r\n");
    assert_eq!(raw.ping_sync(), b"MSG public.y 4 2\r\nok\r\n");
    let info: serde_json::Value = {
        let line = raw.info.clone();
        serde_json::from_str(line[5..].trim()).unwrap()
    };
    assert_eq!(info["auth_required"], true);
    let log = server.log_text();
    for line in [
        "- \"v0.0.1:python-raw:limited-client\" - \"APP/user:limited\" - Publish Violation - Subject \"secret.x\"",
        "- \"v0.0.1:python-raw:limited-client\" - \"APP/user:limited\" - Subscription Violation - Subject \"secret.>\", SID 1",
        "- \"v0.0.1:python-raw:limited-client\" - \"APP/user:limited\" - Subscription Violation - Subject \"secret.q\", Queue: \"workers\", SID 2",
    ] {
        assert!(log.contains(line), "log lacks {line:?}:\n{log}");
    }
}

#[test]
fn allow_lists_queues_responses_and_delivery_filter() {
    let config = r#"
authorization {
  users: [
    {user: svc, password: svc, permissions: {subscribe: ["help", "jobs v1"], allow_responses: true}}
    {user: watcher, password: w, permissions: {subscribe: {allow: "foo.*", deny: "foo.secret"}}}
    {user: client, password: c}
  ]
}
"#;
    let server = Server::start_with_config(Some(config), &[]);
    let mut svc = login_on(server.port, "svc", "svc", 0);
    svc.send(b"SUB help 1\r\nSUB jobs v1 2\r\nSUB jobs v2 3\r\nSUB jobs 4\r\n");
    assert_eq!(
        svc.ping_sync(),
        b"-ERR 'Permissions Violation for Subscription to \"jobs\" using queue \"v2\"'\r\n\
-ERR 'Permissions Violation for Subscription to \"jobs\"'\r\n"
    );
    let mut watcher = login_on(server.port, "watcher", "w", 1);
    watcher.send(b"SUB foo.* 1\r\n");
    watcher.ping_sync();

    let mut client = login_on(server.port, "client", "c", 1);
    client.send(b"SUB _INBOX.c 1\r\nPUB help _INBOX.c 1\r\n?\r\n");
    client.ping_sync();
    let request = svc.ping_sync();
    assert_eq!(request, b"MSG help 1 _INBOX.c 1\r\n?\r\n");
    // One response is allowed, the second is not, and nothing else may be published.
    svc.send(b"PUB _INBOX.c 1\r\n1\r\nPUB _INBOX.c 1\r\n2\r\nPUB foo.x 0\r\n\r\n");
    assert_eq!(
        svc.ping_sync(),
        b"-ERR 'Permissions Violation for Publish to \"_INBOX.c\"'\r\n\
-ERR 'Permissions Violation for Publish to \"foo.x\"'\r\n"
    );
    assert_eq!(client.ping_sync(), b"MSG _INBOX.c 1 1\r\n1\r\n");

    // The wildcard subscription overlaps the denied subject: that delivery is filtered.
    client.send(b"PUB foo.secret 1\r\ns\r\nPUB foo.public 1\r\np\r\n");
    client.ping_sync();
    assert_eq!(watcher.ping_sync(), b"MSG foo.public 1 1\r\np\r\n");
}

#[test]
fn account_limits() {
    let config = r#"
accounts: {
  A: {
    users: [{user: a, password: a}]
    limits: { max_connections: 1, max_subscriptions: 1, max_payload: 8 }
  }
}
"#;
    let server = Server::start_with_config(Some(config), &[]);
    let mut first = Raw::connect(server.port);
    first.send(&connect_line("a", "a"));
    first.send(b"SUB x 1\r\nSUB y 2\r\n");
    assert_eq!(
        first.ping_sync(),
        b"-ERR 'maximum subscriptions exceeded'\r\n"
    );
    let mut second = Raw::connect(server.port);
    second.send(&connect_line("a", "a"));
    let (out, closed) = second.read_until_close(Duration::from_secs(5));
    assert_eq!(
        out,
        b"-ERR 'maximum account active connections exceeded'\r\n"
    );
    assert!(closed);
    first.send(b"PUB x 9\r\n123456789\r\n");
    let (out, closed) = first.read_until_close(Duration::from_secs(5));
    assert_eq!(strip_info(out), b"-ERR 'Maximum Payload Violation'\r\n");
    assert!(closed);
    // The slot is free again.
    let mut third = Raw::connect(server.port);
    third.send(&connect_line("a", "a"));
    assert_eq!(third.ping_sync(), b"");
}

#[test]
fn monitoring_shows_accounts() {
    let (server, http) = Server::start_monitored(Some(B2), &[]);
    let mut app = login_on(server.port, "app", "secret", 0);
    app.send(b"SUB orders.> 1\r\nPUB orders.new 2\r\nhi\r\n");
    assert_eq!(app.ping_sync(), b"MSG orders.new 1 2\r\nhi\r\n");

    let accountz = http_json(http, "/accountz");
    assert_eq!(accountz["system_account"], "SYS");
    assert_eq!(
        accountz["accounts"],
        serde_json::json!(["$G", "SYS", "APP"])
    );
    let detail = http_json(http, "/accountz?acc=APP");
    assert_eq!(detail["account_detail"]["account_name"], "APP");
    assert_eq!(detail["account_detail"]["client_connections"], 1);
    assert_eq!(detail["account_detail"]["subscriptions"], 1);

    let connz = http_json(http, "/connz?auth=1&acc=APP");
    assert_eq!(connz["num_connections"], 1);
    let conn = &connz["connections"][0];
    assert_eq!(conn["authorized_user"], "app");
    assert_eq!(conn["account"], "APP");
    assert_eq!(http_json(http, "/connz?acc=SYS")["num_connections"], 0);

    let statz = http_json(http, "/accstatz");
    let list = statz["account_statz"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{statz}");
    assert_eq!(list[0]["acc"], "APP");
    assert_eq!(list[0]["conns"], 1);
    assert_eq!(list[0]["received"]["msgs"], 1);
    assert_eq!(list[0]["sent"]["msgs"], 1);
    let varz = http_json(http, "/varz");
    assert_eq!(varz["system_account"], "SYS");
    // Users only inside accounts {}: authentication is still required, as INFO says.
    assert_eq!(varz["auth_required"], true, "{varz}");
    let subsz = http_json(http, "/subsz?subs=1&acc=APP");
    assert_eq!(subsz["subscriptions_list"][0]["account"], "APP");
    let (_, _, metrics) = common::http_get(http, "/metrics");
    for line in [
        ",account=\"APP\",account_id=\"APP\",account_name=\"APP\"} 1\n",
        "gnatsd_accstatz_received_messages{server_id=",
    ] {
        assert!(metrics.contains(line), "{line:?} not in:\n{metrics}");
    }
    let app_connections = metrics
        .lines()
        .find(|l| l.starts_with("gnatsd_accstatz_current_connections{") && l.contains("\"APP\""))
        .unwrap();
    assert!(app_connections.ends_with(" 1"), "{app_connections}");
}

#[test]
fn reload_applies_new_permissions_in_place() {
    let before = "authorization { users: [ {user: u, password: p} ] }\n";
    let server = Server::start_with_config(Some(before), &[]);
    let mut raw = login_on(server.port, "u", "p", 0);
    raw.send(b"SUB secret.x 1\r\nSUB public.x 2\r\n");
    raw.ping_sync();
    std::fs::write(
        server.dir.join("strait.conf"),
        "authorization { users: [ {user: u, password: p, permissions: {subscribe: {deny: \"secret.>\"}}} ] }\n",
    )
    .unwrap();
    server.signal("reload");
    let (line, _) = {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let got = raw.ping_sync();
            if !got.is_empty() || std::time::Instant::now() > deadline {
                break (got, ());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert_eq!(
        line,
        b"-ERR 'Permissions Violation for Subscription to \"secret.x\" (sid \"1\")'\r\n"
    );
    // Still connected, and the allowed subscription still works.
    raw.send(b"PUB public.x 1\r\n1\r\nPUB secret.x 1\r\n2\r\n");
    assert_eq!(raw.ping_sync(), b"MSG public.x 2 1\r\n1\r\n");
}

#[test]
fn response_routes_expire_after_the_threshold() {
    let config = r#"
accounts: {
  A: {
    users: [{user: a, password: a}],
    imports: [{service: {account: B, subject: "slow"}}]
  },
  B: {
    users: [{user: b, password: b}],
    exports: [{service: "slow", response_type: stream, threshold: "300ms"}]
  }
}
"#;
    let server = Server::start_with_config(Some(config), &[]);
    // Both on one shard: every step below is synchronous, so each PONG means the
    // message before it was delivered (or dropped).
    let mut responder = login_on(server.port, "b", "b", 0);
    responder.send(b"SUB slow 1\r\n");
    responder.ping_sync();
    let mut requester = login_on(server.port, "a", "a", 0);
    let asked = std::time::Instant::now();
    requester.send(b"SUB _INBOX.s 1\r\nPUB slow _INBOX.s 0\r\n\r\n");
    requester.ping_sync();
    let reply = reply_of(&responder.ping_sync());
    responder.send(format!("PUB {reply} 5\r\nearly\r\n").as_bytes());
    responder.ping_sync();
    assert_eq!(requester.ping_sync(), b"MSG _INBOX.s 1 5\r\nearly\r\n");
    // Responses keep arriving until the threshold (300 ms) and a sweep have
    // passed; then the route back is gone.
    loop {
        responder.send(format!("PUB {reply} 4\r\nlate\r\n").as_bytes());
        responder.ping_sync();
        let got = requester.ping_sync();
        if got.is_empty() {
            break;
        }
        assert_eq!(got, b"MSG _INBOX.s 1 4\r\nlate\r\n");
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "route never expired"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        asked.elapsed() >= Duration::from_millis(300),
        "expired early: {:?}",
        asked.elapsed()
    );
}

#[test]
fn system_account_users_alone_keep_anonymous_clients_in_the_global_account() {
    let config =
        "accounts { SYS { users: [ {user: sys, password: sys} ] } }\nsystem_account: SYS\n";
    let server = Server::start_with_config(Some(config), &[]);
    let mut anonymous = Raw::connect(server.port);
    let info: serde_json::Value = serde_json::from_str(anonymous.info[5..].trim()).unwrap();
    assert_eq!(info["auth_required"], true);
    anonymous
        .send(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nSUB x 1\r\nPUB x 1\r\n!\r\n");
    assert_eq!(anonymous.ping_sync(), b"MSG x 1 1\r\n!\r\n");
    // The system user is in SYS: it does not see $G's traffic. It is on the
    // publisher's shard, where every delivery of a publish happens before the
    // publisher's PONG, so a wrong delivery would be read before its own PONG.
    let shard = anonymous.cid() % 2;
    let mut sys = login_on(server.port, "sys", "sys", shard);
    sys.send(b"SUB x 1\r\n");
    sys.ping_sync();
    anonymous.send(b"PUB x 1\r\n?\r\n");
    assert_eq!(anonymous.ping_sync(), b"MSG x 1 1\r\n?\r\n");
    assert_eq!(sys.ping_sync(), b"");
    // A wrong password is still refused.
    let mut wrong = Raw::connect(server.port);
    wrong.send(&connect_line("sys", "nope"));
    let (out, _) = wrong.read_until_close(Duration::from_secs(5));
    assert_eq!(out, b"-ERR 'Authorization Violation'\r\n");
}

#[test]
fn no_auth_user_clears_auth_required_in_info() {
    let config = "accounts { A { users: [ {user: a, password: a} ] } }\nno_auth_user: a\n";
    let server = Server::start_with_config(Some(config), &[]);
    let mut raw = Raw::connect(server.port);
    let info: serde_json::Value = serde_json::from_str(raw.info[5..].trim()).unwrap();
    assert!(info.get("auth_required").is_none(), "{info}");
    raw.send(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nSUB y 1\r\nPUB y 0\r\n\r\n");
    assert_eq!(raw.ping_sync(), b"MSG y 1 0\r\n\r\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strait"))
        .args(["-t", "-c"])
        .arg({
            let path = server.dir.join("bad.conf");
            std::fs::write(
                &path,
                "authorization { users: [ {user: a, password: a} ] }\nno_auth_user: b\n",
            )
            .unwrap();
            path
        })
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "no_auth_user: \"b\" not present as user or nkey in authorization block or account configuration"
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn reload_adds_changes_and_removes_accounts() {
    let (server, http) = Server::start_monitored(Some(SEED_ACCOUNTS), &[]);
    let mut a = login_on(server.port, "a", "a", 0);
    a.send(b"SUB foo 1\r\n");
    a.ping_sync();
    let mut b = login_on(server.port, "b", "b", 1);
    b.send(b"SUB b.local 1\r\n");
    b.ping_sync();

    // C is new and imports B's foo with a prefix; A is gone; B stays.
    let after = r#"
accounts: {
  B: {
    users: [{user: b, password: b}],
    exports: [{stream: "foo"}]
  },
  C: {
    users: [{user: c, password: c}],
    imports: [{stream: {account: B, subject: "foo"}, prefix: "from_b"}]
  }
}
"#;
    std::fs::write(
        server.dir.join("strait.conf"),
        format!("{after}\nhttp_port: {http}\n"),
    )
    .unwrap();
    server.signal("reload");
    assert!(server.wait_for_log("Reloaded: accounts", Duration::from_secs(5)));
    // A's user is gone: its connection is closed.
    let (out, closed) = a.read_until_close(Duration::from_secs(5));
    assert!(closed);
    assert!(find(&out, b"-ERR 'Authorization Violation'").is_some());
    // B's connection and subscriptions carry on.
    b.send(b"PUB b.local 1\r\n1\r\n");
    assert_eq!(b.ping_sync(), b"MSG b.local 1 1\r\n1\r\n");
    // C works on both shards, with its import.
    for shard in [0, 1] {
        let mut c = login_on(server.port, "c", "c", shard);
        c.send(b"SUB from_b.foo 1\r\n");
        c.ping_sync();
        let mut publisher = login_on(server.port, "b", "b", 1 - shard);
        publisher.send(b"PUB foo 2\r\nhi\r\n");
        publisher.ping_sync();
        assert_eq!(
            c.ping_sync(),
            b"MSG from_b.foo 1 2\r\nhi\r\n",
            "shard {shard}"
        );
    }
    let accountz = http_json(http, "/accountz");
    assert_eq!(
        accountz["accounts"],
        serde_json::json!(["$G", "$SYS", "B", "C"])
    );
    assert!(common::http_get(http, "/accountz?acc=A")
        .2
        .contains("does not exist"));

    // Renaming the system account is refused, and the running configuration stays.
    std::fs::write(
        server.dir.join("strait.conf"),
        format!("{after}\nsystem_account: C\n"),
    )
    .unwrap();
    server.signal("reload");
    assert!(server.wait_for_log("system_account cannot change", Duration::from_secs(5)));
    let mut c = login_on(server.port, "c", "c", 0);
    c.send(b"SUB x 1\r\nPUB x 0\r\n\r\n");
    assert_eq!(c.ping_sync(), b"MSG x 1 0\r\n\r\n");
}
