//! Authentication: users and passwords (plain and bcrypt), tokens, NKEYs, the
//! authentication timeout, and reloads that remove users. Byte-exact errors from
//! nats-server v2.14's captured answers.

mod common;

use std::time::{Duration, Instant};

use common::{Raw, Server};

fn info(raw: &Raw) -> serde_json::Value {
    serde_json::from_str(raw.info[5..].trim()).unwrap()
}

#[test]
fn wrong_password_is_an_authorization_violation() {
    let server = Server::start(&["--user", "ref", "--pass", "s3cret"]);
    let mut raw = Raw::connect(server.port);
    let i = info(&raw);
    assert_eq!(i["auth_required"], true);
    assert!(i.get("nonce").is_none(), "no nonce without NKEY users");
    raw.send(
        b"CONNECT {\"verbose\":false,\"pedantic\":false,\"user\":\"ref\",\"pass\":\"wrong\"}\r\n",
    );
    let (out, closed) = raw.read_until_close(Duration::from_secs(5));
    assert_eq!(out, b"-ERR 'Authorization Violation'\r\n");
    assert!(closed);
    assert!(server.wait_for_log("[ERR] 127.0.0.1:", Duration::from_secs(5)));
    assert!(server
        .log_text()
        .contains("authentication error - User \"ref\""));

    let mut ok = Raw::connect(server.port);
    ok.send(
        b"CONNECT {\"verbose\":false,\"pedantic\":false,\"user\":\"ref\",\"pass\":\"s3cret\"}\r\n",
    );
    ok.send(b"SUB a 1\r\nPUB a 1\r\nx\r\n");
    assert_eq!(ok.ping_sync(), b"MSG a 1 1\r\nx\r\n");
}

#[test]
fn missing_credentials_and_pub_before_connect() {
    let server = Server::start(&["--user", "ref", "--pass", "s3cret"]);
    let mut raw = Raw::connect(server.port);
    raw.send(b"PUB foo 1\r\nx\r\n");
    let (out, closed) = raw.read_until_close(Duration::from_secs(5));
    assert_eq!(out, b"-ERR 'Authorization Violation'\r\n");
    assert!(closed);
    let mut raw = Raw::connect(server.port);
    raw.send(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n");
    let (out, closed) = raw.read_until_close(Duration::from_secs(5));
    assert_eq!(out, b"-ERR 'Authorization Violation'\r\n");
    assert!(closed);
}

#[test]
fn authentication_timeout() {
    let server = Server::start_with_config(
        Some("authorization {\n  user: a\n  password: b\n  timeout: 1\n}\n"),
        &[],
    );
    let mut raw = Raw::connect(server.port);
    let start = Instant::now();
    let (out, closed) = raw.read_until_close(Duration::from_secs(5));
    assert_eq!(out, b"-ERR 'Authentication Timeout'\r\n");
    assert!(closed);
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn clients_authenticate_with_user_token_and_nkey() {
    let user = Server::start_with_config(
        Some("authorization {\n  user: derek\n  password: s3cr3t\n}\n"),
        &[],
    );
    let client =
        async_nats::ConnectOptions::with_user_and_password("derek".into(), "s3cr3t".into())
            .connect(user.url())
            .await
            .unwrap();
    client.flush().await.unwrap();
    assert!(
        async_nats::ConnectOptions::with_user_and_password("derek".into(), "nope".into())
            .connect(user.url())
            .await
            .is_err()
    );

    let hash = bcrypt::hash("pw", 4).unwrap();
    let hashed = Server::start_with_config(
        Some(&format!(
            "authorization {{\n  users: [ {{ user: h, password: \"{hash}\" }} ]\n}}\n"
        )),
        &[],
    );
    let client = async_nats::ConnectOptions::with_user_and_password("h".into(), "pw".into())
        .connect(hashed.url())
        .await
        .unwrap();
    client.flush().await.unwrap();

    let token = Server::start_with_config(
        Some("authorization {\n  token: \"s3cr3t\"\n  timeout: \"2s\"\n}\n"),
        &[],
    );
    let client = async_nats::ConnectOptions::with_token("s3cr3t".into())
        .connect(token.url())
        .await
        .unwrap();
    client.flush().await.unwrap();

    let key = nkeys::KeyPair::new_user();
    let nkey = Server::start_with_config(
        Some(&format!(
            "authorization: {{\n  users: [\n    {{ nkey: {} }}\n  ]\n}}\n",
            key.public_key()
        )),
        &[],
    );
    let raw = Raw::connect(nkey.port);
    assert!(info(&raw)["nonce"].is_string(), "NKEY users need a nonce");
    // nats.py signs the nonce in standard base64 ('+', '/', padding) where most
    // clients use base64url; nats-server accepts both.
    for _ in 0..20 {
        let mut raw = Raw::connect(nkey.port);
        let nonce = info(&raw)["nonce"].as_str().unwrap().to_string();
        let sig = data_encoding::BASE64.encode(&key.sign(nonce.as_bytes()).unwrap());
        raw.send(
            format!(
                "CONNECT {{\"verbose\":false,\"pedantic\":false,\"nkey\":\"{}\",\"sig\":\"{sig}\"}}\r\n",
                key.public_key()
            )
            .as_bytes(),
        );
        assert_eq!(raw.ping_sync(), b"", "standard base64 signature {sig}");
        if sig.contains(['+', '/']) {
            break;
        }
    }
    let seed = key.seed().unwrap();
    let client = async_nats::ConnectOptions::with_nkey(seed)
        .connect(nkey.url())
        .await
        .unwrap();
    let mut sub = client.subscribe("n").await.unwrap();
    client.publish("n", "x".into()).await.unwrap();
    use futures::StreamExt;
    assert!(tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .is_some());
    let other = nkeys::KeyPair::new_user().seed().unwrap();
    assert!(async_nats::ConnectOptions::with_nkey(other)
        .connect(nkey.url())
        .await
        .is_err());
}

#[test]
fn reload_removing_a_user_closes_its_connections() {
    let server = Server::start_with_config(
        Some(
            "authorization {\n  users: [ { user: a, password: a }, { user: b, password: b } ]\n}\n",
        ),
        &[],
    );
    let mut a = Raw::connect(server.port);
    a.send(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"user\":\"a\",\"pass\":\"a\"}\r\n");
    a.ping_sync();
    let mut b = Raw::connect(server.port);
    b.send(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"user\":\"b\",\"pass\":\"b\"}\r\n");
    b.ping_sync();
    std::fs::write(
        server.dir.join("strait.conf"),
        "authorization {\n  users: [ { user: a, password: a } ]\n}\n",
    )
    .unwrap();
    server.signal("reload");
    let (out, closed) = b.read_until_close(Duration::from_secs(5));
    assert!(closed, "removed user's connection survived the reload");
    assert!(common::strip_info(out).ends_with(b"-ERR 'Authorization Violation'\r\n"));
    // The remaining user's connection survives.
    a.send(b"SUB k 1\r\nPUB k 1\r\nx\r\n");
    assert_eq!(a.ping_sync(), b"MSG k 1 1\r\nx\r\n");
}

#[test]
fn allowed_connection_types() {
    let config = "authorization {\n  users: [\n    {user: web, password: w, allowed_connection_types: [\"WEBSOCKET\"]}\n    {user: app, password: a, allowed_connection_types: [\"standard\", \"mqtt\"]}\n  ]\n}\n";
    let server = Server::start_with_config(Some(config), &[]);
    let mut web = Raw::connect(server.port);
    web.send(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"user\":\"web\",\"pass\":\"w\"}\r\n");
    let (out, closed) = web.read_until_close(Duration::from_secs(5));
    assert_eq!(out, b"-ERR 'Authorization Violation'\r\n");
    assert!(closed);
    let mut app = Raw::connect(server.port);
    app.send(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"user\":\"app\",\"pass\":\"a\"}\r\n");
    app.send(b"SUB a 1\r\nPUB a 1\r\nx\r\n");
    assert_eq!(app.ping_sync(), b"MSG a 1 1\r\nx\r\n");

    let bad = server.dir.join("bad.conf");
    std::fs::write(
        &bad,
        "authorization { users: [ {user: x, password: y, allowed_connection_types: [\"CARRIER_PIGEON\"]} ] }\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strait"))
        .arg("-t")
        .arg("-c")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown connection type \"CARRIER_PIGEON\"")
    );
}
