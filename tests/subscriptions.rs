//! Subscriptions at scale: with several shards they cost about one copy (the
//! other shards hold a bounded summary), the monitoring figures stay exact,
//! messages still reach them from every shard, and their memory comes back when
//! the connection holding them closes.

mod common;

use std::time::{Duration, Instant};

use common::{http_get, http_json, raw_per_shard, Raw, Server, CONNECT};

const COUNT: usize = 200_000;

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// `SUB dev.<i mod 1000>.temp.<i>` for every i, then a PING answered once every
/// shard may rely on them.
fn subscribe_all(raw: &mut Raw) {
    let mut script = CONNECT.to_vec();
    for i in 0..COUNT {
        script.extend_from_slice(format!("SUB dev.{}.temp.{i} {}\r\n", i % 1000, i + 1).as_bytes());
    }
    raw.stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    raw.send(&script);
    raw.ping_sync();
}

/// RSS growth for `COUNT` subscriptions on one connection, and what is left of it
/// once the connection closes (the smallest reading within ten seconds).
fn growth_and_leftover(shards: &str) -> (u64, u64) {
    let (server, http) = Server::start_monitored(None, &["--shards", shards]);
    let pid = server.pid();
    std::thread::sleep(Duration::from_millis(300));
    let idle = rss_kb(pid);
    let mut raw = Raw::connect(server.port);
    subscribe_all(&mut raw);
    // What the peers were told and then told to forget while the summary folded
    // is freed by now: the reading is what the subscriptions hold.
    std::thread::sleep(Duration::from_millis(1500));
    let with = rss_kb(pid);
    // The figures count each subscription once, whatever the shard count.
    assert_eq!(http_json(http, "/subsz")["num_subscriptions"], COUNT);
    assert_eq!(http_json(http, "/varz")["subscriptions"], COUNT);
    drop(raw);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = u64::MAX;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        if http_json(http, "/subsz")["num_subscriptions"] != 0 {
            continue;
        }
        after = after.min(rss_kb(pid));
        if after.saturating_sub(idle) * 10 <= with - idle {
            break;
        }
    }
    (with.saturating_sub(idle), after.saturating_sub(idle))
}

#[test]
fn subscriptions_cost_about_one_copy_whatever_the_shards_and_their_memory_comes_back() {
    let (one, one_left) = growth_and_leftover("1");
    let (four, four_left) = growth_and_leftover("4");
    // Replicated interest made four shards cost about four copies.
    assert!(
        four * 10 <= one * 13,
        "{COUNT} subscriptions: {one} KiB on one shard, {four} KiB on four"
    );
    for (growth, left) in [(one, one_left), (four, four_left)] {
        assert!(
            left * 10 <= growth,
            "{left} KiB of {growth} KiB still held after the connection closed"
        );
    }
}

#[test]
fn folded_interest_still_delivers_from_every_shard_exactly_once() {
    let server = Server::start(&["--shards", "4"]);
    let mut raws = raw_per_shard(server.port, 4);
    let mut subscriber = raws.remove(0);
    subscribe_all(&mut subscriber);
    for publisher in &mut raws {
        publisher.send(CONNECT);
        // One matching, two under a folded prefix that nothing matches, one more.
        publisher.send(
            b"PUB dev.7.temp.7 1\r\na\r\nPUB dev.7.temp.none 1\r\nb\r\nPUB dev.none.x 1\r\nc\r\nPUB dev.8.temp.8 1\r\nd\r\n",
        );
        publisher.ping_sync();
        let got = String::from_utf8(subscriber.ping_sync()).expect("utf-8");
        assert_eq!(
            got, "MSG dev.7.temp.7 8 1\r\na\r\nMSG dev.8.temp.8 9 1\r\nd\r\n",
            "from another shard"
        );
    }
}

#[test]
fn a_request_only_a_folded_pattern_matches_gets_no_responders() {
    let server = Server::start(&["--shards", "2"]);
    let mut raws = raw_per_shard(server.port, 2);
    let mut subscriber = raws.remove(0);
    subscribe_all(&mut subscriber);
    let mut requester = raws.remove(0);
    requester.send(CONNECT);
    requester.send(b"SUB inbox.> 1\r\nPUB dev.7.temp.none inbox.1 0\r\n\r\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    while Instant::now() < deadline && common::find(&got, b"503").is_none() {
        got.extend(requester.ping_sync());
    }
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HMSG inbox.1 1 ") && text.contains("NATS/1.0 503"),
        "{text}"
    );
    // One that a subscription answers gets no status.
    requester.send(b"PUB dev.7.temp.7 inbox.2 0\r\n\r\n");
    let text = String::from_utf8(requester.ping_sync()).expect("utf-8");
    assert!(!text.contains("503"), "{text}");
}

/// The sum over the shards of one `/metrics` counter.
fn metric_sum(http: u16, name: &str) -> f64 {
    let (status, _, body) = http_get(http, "/metrics");
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_shard_keeps_back_what_the_folded_pattern_of_another_does_not_want() {
    let (server, http) = Server::start_monitored(None, &["--shards", "2"]);
    let mut raws = raw_per_shard(server.port, 2);
    let mut subscriber = raws.remove(0);
    // Five thousand prefixes under `dev` fold to `dev.>` on the other shard.
    let mut script = CONNECT.to_vec();
    for i in 0..5000 {
        script.extend_from_slice(format!("SUB dev.{i}.> {}\r\n", i + 1).as_bytes());
    }
    subscriber.send(&script);
    subscriber.ping_sync();
    let mut publisher = raws.remove(0);
    publisher.send(CONNECT);
    // The PONG waits until the other shard has handled the message, and so
    // until its answer that nothing there wants `dev.none` is back.
    publisher.send(b"PUB dev.none 1\r\nx\r\n");
    publisher.ping_sync();
    let wasted = metric_sum(http, "strait_shard_wasted_hops_total");
    assert_eq!(wasted, 1.0, "the folded pattern sent the first one over");
    let burst = b"PUB dev.none 1\r\nx\r\n".repeat(10_000);
    publisher.send(&burst);
    publisher.ping_sync();
    assert_eq!(
        metric_sum(http, "strait_shard_wasted_hops_total"),
        wasted,
        "later ones stay on the publisher's shard"
    );
    assert_eq!(metric_sum(http, "strait_shard_hops_saved_total"), 10_000.0);
    // A subscription the folded pattern covers reaches the publisher's shard
    // before its PONG.
    subscriber.send(b"SUB dev.none 99999\r\n");
    subscriber.ping_sync();
    publisher.send(b"PUB dev.none 1\r\ny\r\n");
    publisher.ping_sync();
    let got = String::from_utf8(subscriber.ping_sync()).expect("utf-8");
    assert_eq!(got, "MSG dev.none 99999 1\r\ny\r\n");
}
