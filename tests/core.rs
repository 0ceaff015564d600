//! Core NATS behaviour across shards, driven with the async-nats client.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use common::{await_interest, clients_per_shard, raw_per_shard, Raw, Server, CONNECT};
use futures::StreamExt;

const SHARDS: u64 = 2;

async fn next_msg(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("timed out waiting for a message")
        .expect("subscription ended")
}

#[tokio::test]
async fn pubsub_across_shards() {
    let server = Server::start(&[]);
    let clients = clients_per_shard(&server.url(), SHARDS).await;
    let (a, b) = (&clients[0], &clients[1]);
    assert_ne!(
        a.server_info().client_id % SHARDS,
        b.server_info().client_id % SHARDS
    );
    let mut sub = a.subscribe("cross.shard").await.unwrap();
    await_interest(a, b).await;
    b.publish("cross.shard", "hello".into()).await.unwrap();
    b.flush().await.unwrap();
    let msg = next_msg(&mut sub).await;
    assert_eq!(msg.payload, Bytes::from("hello"));
    assert_eq!(msg.subject.as_str(), "cross.shard");
}

#[tokio::test]
async fn wildcards_across_shards() {
    let server = Server::start(&[]);
    let clients = clients_per_shard(&server.url(), SHARDS).await;
    let (a, b) = (&clients[0], &clients[1]);
    let mut star = a.subscribe("orders.*").await.unwrap();
    let mut gt = a.subscribe("orders.>").await.unwrap();
    let mut exact = b.subscribe("orders.new.eu").await.unwrap();
    await_interest(a, b).await;
    await_interest(b, a).await;
    b.publish("orders.new", "1".into()).await.unwrap();
    a.publish("orders.new.eu", "2".into()).await.unwrap();
    a.flush().await.unwrap();
    b.flush().await.unwrap();
    assert_eq!(next_msg(&mut star).await.payload, Bytes::from("1"));
    // Two publishers: no order between their messages.
    let mut both = vec![
        next_msg(&mut gt).await.payload,
        next_msg(&mut gt).await.payload,
    ];
    both.sort();
    assert_eq!(both, vec![Bytes::from("1"), Bytes::from("2")]);
    assert_eq!(next_msg(&mut exact).await.payload, Bytes::from("2"));
    // `orders.*` must not see the three-token subject.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), star.next())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn queue_group_exactly_once_across_shards() {
    let server = Server::start(&[]);
    let clients = clients_per_shard(&server.url(), SHARDS).await;
    let mut members = Vec::new();
    for i in 0..4 {
        let c = &clients[i % 2];
        members.push(c.queue_subscribe("work", "workers".into()).await.unwrap());
    }
    // A plain subscriber sees every message besides the group.
    let mut watcher = clients[1].subscribe("work").await.unwrap();
    let publisher = async_nats::connect(server.url()).await.unwrap();
    for c in &clients {
        await_interest(c, &publisher).await;
    }
    const N: usize = 10_000;
    for i in 0..N {
        publisher
            .publish("work", i.to_string().into())
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();

    let mut seen: HashMap<usize, usize> = HashMap::new();
    let mut per_member = [0usize; 4];
    let mut total = 0;
    while total < N {
        let mut progressed = false;
        for (i, m) in members.iter_mut().enumerate() {
            while let Ok(Some(msg)) =
                tokio::time::timeout(Duration::from_millis(50), m.next()).await
            {
                let n: usize = std::str::from_utf8(&msg.payload).unwrap().parse().unwrap();
                *seen.entry(n).or_default() += 1;
                per_member[i] += 1;
                total += 1;
                progressed = true;
            }
        }
        assert!(progressed, "queue group stalled after {total} messages");
    }
    // Nothing more may arrive: each message went to exactly one member.
    for m in members.iter_mut() {
        assert!(tokio::time::timeout(Duration::from_millis(200), m.next())
            .await
            .is_err());
    }
    assert_eq!(seen.len(), N);
    assert!(seen.values().all(|&c| c == 1));
    assert!(
        per_member.iter().all(|&c| c > N / 10),
        "unbalanced: {per_member:?}"
    );
    let mut watched = 0;
    while watched < N {
        next_msg(&mut watcher).await;
        watched += 1;
    }
}

#[tokio::test]
async fn request_reply_across_shards() {
    let server = Server::start(&[]);
    let clients = clients_per_shard(&server.url(), SHARDS).await;
    let (responder, requester) = (clients[0].clone(), clients[1].clone());
    let mut service = responder.subscribe("svc.echo").await.unwrap();
    await_interest(&responder, &requester).await;
    let task = tokio::spawn(async move {
        while let Some(msg) = service.next().await {
            if let Some(reply) = msg.reply {
                let mut answer = b"echo:".to_vec();
                answer.extend_from_slice(&msg.payload);
                responder.publish(reply, answer.into()).await.unwrap();
            }
        }
    });
    for i in 0..100 {
        let resp = tokio::time::timeout(
            Duration::from_secs(5),
            requester.request("svc.echo", format!("{i}").into()),
        )
        .await
        .expect("request timed out")
        .expect("request failed");
        assert_eq!(resp.payload, Bytes::from(format!("echo:{i}")));
    }
    task.abort();
}

#[tokio::test]
async fn headers_round_trip() {
    let server = Server::start(&[]);
    let clients = clients_per_shard(&server.url(), SHARDS).await;
    let mut sub = clients[0].subscribe("h.x").await.unwrap();
    await_interest(&clients[0], &clients[1]).await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("X-A", "1");
    headers.append("X-A", "2");
    headers.insert("Nats-Msg-Id", "abc");
    clients[1]
        .publish_with_headers("h.x", headers, "body".into())
        .await
        .unwrap();
    clients[1].flush().await.unwrap();
    let msg = next_msg(&mut sub).await;
    let h = msg.headers.expect("headers");
    let values: Vec<&str> = h.get_all("X-A").map(|v| v.as_str()).collect();
    assert_eq!(values, vec!["1", "2"]);
    assert_eq!(h.get("Nats-Msg-Id").unwrap().as_str(), "abc");
    assert_eq!(msg.payload, Bytes::from("body"));
}

#[tokio::test]
async fn no_responders() {
    let server = Server::start(&[]);
    let client = async_nats::connect(server.url()).await.unwrap();
    let err = client
        .request("nobody.listens", "x".into())
        .await
        .expect_err("request must fail");
    assert_eq!(err.kind(), async_nats::RequestErrorKind::NoResponders);
}

/// The interest barrier: SUB and PING on one shard's connection, then PUB on another
/// shard's connection as soon as the PONG arrives — the message must never be missed.
#[test]
fn interest_barrier_no_misses() {
    let server = Server::start(&[]);
    let mut raws = raw_per_shard(server.port, SHARDS);
    let mut publisher = raws.pop().unwrap();
    let mut subscriber = raws.pop().unwrap();
    subscriber.send(CONNECT);
    publisher.send(CONNECT);
    subscriber.ping_sync();
    publisher.ping_sync();
    for i in 0..1000 {
        subscriber.send(format!("SUB barrier.{i} {i}\r\n").as_bytes());
        subscriber.ping_sync();
        publisher.send(format!("PUB barrier.{i} 1\r\nx\r\n").as_bytes());
        publisher.ping_sync();
        subscriber.send(format!("UNSUB {i}\r\n").as_bytes());
        let got = subscriber.ping_sync();
        assert_eq!(
            String::from_utf8_lossy(&got),
            format!("MSG barrier.{i} {i} 1\r\nx\r\n"),
            "iteration {i}: message missed"
        );
    }
}

#[tokio::test]
async fn per_publisher_order_across_shards() {
    let server = Server::start(&[]);
    let clients = clients_per_shard(&server.url(), SHARDS).await;
    let mut sub = clients[0].subscribe("ordered").await.unwrap();
    await_interest(&clients[0], &clients[1]).await;
    const N: u64 = 50_000;
    let publisher = clients[1].clone();
    let pubtask = tokio::spawn(async move {
        for i in 0..N {
            publisher
                .publish("ordered", i.to_string().into())
                .await
                .unwrap();
        }
        publisher.flush().await.unwrap();
    });
    for expect in 0..N {
        let msg = next_msg(&mut sub).await;
        let n: u64 = std::str::from_utf8(&msg.payload).unwrap().parse().unwrap();
        assert_eq!(n, expect, "out of order");
    }
    pubtask.await.unwrap();
}

#[tokio::test]
async fn unsubscribe_stops_delivery_across_shards() {
    let server = Server::start(&[]);
    let mut raws = raw_per_shard(server.port, SHARDS);
    let (mut sub, mut publ) = {
        let mut it = raws.drain(..);
        (it.next().unwrap(), it.next().unwrap())
    };
    sub.send(CONNECT);
    publ.send(CONNECT);
    sub.send(b"SUB u.x 1\r\n");
    sub.ping_sync();
    publ.send(b"PUB u.x 1\r\na\r\n");
    publ.ping_sync();
    sub.send(b"UNSUB 1\r\n");
    let got = sub.ping_sync();
    assert_eq!(got, b"MSG u.x 1 1\r\na\r\n");
    publ.send(b"PUB u.x 1\r\nb\r\n");
    publ.ping_sync();
    assert_eq!(sub.ping_sync(), b"");
}

#[tokio::test]
async fn auto_unsubscribe_after_max() {
    let server = Server::start(&[]);
    let mut raw = Raw::connect(server.port);
    raw.send(CONNECT);
    raw.send(b"SUB m 1\r\nUNSUB 1 2\r\nPUB m 1\r\na\r\nPUB m 1\r\nb\r\nPUB m 1\r\nc\r\n");
    assert_eq!(raw.ping_sync(), b"MSG m 1 1\r\na\r\nMSG m 1 1\r\nb\r\n");
}

#[tokio::test]
async fn slow_consumer_is_cut_off_and_others_get_everything() {
    let server = Server::start(&[]);
    // The slow consumer subscribes and never reads again.
    let mut slow = Raw::connect(server.port);
    slow.send(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"slow-sub\",\"lang\":\"raw\",\"version\":\"1\"}\r\n");
    slow.send(b"SUB big.> 1\r\n");
    slow.ping_sync();

    let healthy = async_nats::connect(server.url()).await.unwrap();
    let mut good = healthy.subscribe("big.>").await.unwrap();
    let publisher = async_nats::connect(server.url()).await.unwrap();
    await_interest(&healthy, &publisher).await;
    const N: usize = 1600;
    let payload = Bytes::from(vec![b'y'; 60_000]);
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while n < N {
            match tokio::time::timeout(Duration::from_secs(20), good.next()).await {
                Ok(Some(msg)) => {
                    assert_eq!(msg.payload.len(), 60_000);
                    n += 1;
                }
                _ => break,
            }
        }
        n
    });
    for _ in 0..N {
        publisher.publish("big.x", payload.clone()).await.unwrap();
    }
    publisher.flush().await.unwrap();
    assert_eq!(reader.await.unwrap(), N, "healthy subscriber lost messages");
    assert!(
        server.wait_for_log(
            "\"v1:raw:slow-sub\" - Slow Consumer Detected: MaxPending of 67108864 Exceeded",
            Duration::from_secs(10)
        ),
        "no slow consumer log line:\n{}",
        server.log_text()
    );
    // The slow consumer's socket is closed without an -ERR.
    let (rest, closed) = slow.read_until_close(Duration::from_secs(10));
    assert!(closed, "slow consumer was not disconnected");
    assert!(common::find(&rest, b"-ERR").is_none());
}

#[tokio::test]
async fn max_payload_is_enforced_and_advertised() {
    let server = Server::start(&[]);
    let client = async_nats::connect(server.url()).await.unwrap();
    assert_eq!(client.server_info().max_payload, 1024 * 1024);
    let mut raw = Raw::connect(server.port);
    raw.send(CONNECT);
    raw.send(b"PUB foo 1048577\r\n");
    let (out, closed) = raw.read_until_close(Duration::from_secs(5));
    assert_eq!(out, b"-ERR 'Maximum Payload Violation'\r\n");
    assert!(closed);
    // Exactly max_payload is fine.
    let mut raw = Raw::connect(server.port);
    raw.send(CONNECT);
    raw.send(b"SUB big 1\r\nPUB big 1048576\r\n");
    raw.send(&vec![b'z'; 1048576]);
    raw.send(b"\r\n");
    let got = raw.ping_sync();
    assert!(got.starts_with(b"MSG big 1 1048576\r\n"));
    assert_eq!(got.len(), 19 + 1048576 + 2);
}

#[test]
fn second_instance_on_same_port_fails() {
    let server = Server::start(&[]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strait"))
        .args(["-a", "127.0.0.1", "-p", &server.port.to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("address already in use") || stderr.contains("Address already in use"),
        "{stderr}"
    );
}

#[test]
fn graceful_stop_on_sigterm() {
    let server = Server::start(&[]);
    let mut raw = Raw::connect(server.port);
    raw.send(CONNECT);
    raw.ping_sync();
    let pid_file = server.dir.join("strait.pid");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    assert_eq!(pid, server.pid().to_string(), "pid file holds the bare pid");
    let status = server.terminate();
    assert!(status.success(), "exit status {status}");
    let (_, closed) = raw.read_until_close(Duration::from_secs(5));
    assert!(closed);
}

#[test]
fn log_format_debug_and_trace() {
    let server = Server::start(&["-DV", "--max_traced_msg_len", "4"]);
    let mut raw = Raw::connect(server.port);
    raw.send(CONNECT);
    raw.send(b"SUB log.x 1\r\nPUB log.x 10\r\n0123456789\r\n");
    raw.ping_sync();
    drop(raw);
    assert!(server.wait_for_log("Client connection closed", Duration::from_secs(5)));
    let log = server.log_text();
    let pid = server.pid();
    let ready = log
        .lines()
        .find(|l| l.ends_with("[INF] Server is ready"))
        .expect("ready line");
    // [pid] YYYY/MM/DD HH:MM:SS.ffffff [INF] ...
    let prefix = format!("[{pid}] ");
    assert!(ready.starts_with(&prefix), "{ready}");
    let ts = &ready[prefix.len()..prefix.len() + 26];
    assert_eq!(ts.as_bytes()[4], b'/');
    assert_eq!(ts.as_bytes()[10], b' ');
    assert_eq!(ts.as_bytes()[19], b'.');
    assert!(log.contains("Client connection created (shard "), "{log}");
    assert!(log.contains("[TRC] 127.0.0.1:"), "{log}");
    assert!(log.contains(" - <<- [SUB log.x 1]"), "{log}");
    assert!(log.contains("<<- MSG_PAYLOAD: [\"0123\"...]"), "{log}");
    assert!(log.contains("[DBG] 127.0.0.1:"), "{log}");
}

#[tokio::test]
async fn lame_duck_mode_via_signal_command() {
    let server = Server::start(&[]);
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let client = async_nats::ConnectOptions::new()
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::LameDuckMode = event {
                    let _ = tx.send(()).await;
                }
            }
        })
        .connect(server.url())
        .await
        .unwrap();
    let mut raw = Raw::connect(server.port);
    raw.send(CONNECT);
    raw.ping_sync();
    server.signal("ldm");
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("no lame duck event")
        .unwrap();
    let mut line = raw.read_line();
    if line.contains("\"connect_info\":true") {
        line = raw.read_line();
    }
    assert!(
        line.starts_with("INFO {") && line.contains("\"ldm\":true"),
        "{line}"
    );
    assert!(server.wait_for_log(
        "Entering lame duck mode, stop accepting new clients",
        Duration::from_secs(5)
    ));
    // New connections are refused (each shard stops accepting on its next tick).
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while std::net::TcpStream::connect(("127.0.0.1", server.port)).is_ok() {
        assert!(std::time::Instant::now() < deadline, "still accepting");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(client);
}

#[test]
fn reopen_log_file_after_rotation() {
    let server = Server::start(&[]);
    let rotated = server.dir.join("strait.log.1");
    std::fs::rename(&server.log, &rotated).unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_strait"))
        .arg("--signal")
        .arg(format!("reopen={}", server.pid()))
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        server.wait_for_log("File log re-opened", Duration::from_secs(5)),
        "new log file was not written"
    );
}
