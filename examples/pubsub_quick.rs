//! A quick 1 publisher → 1 subscriber throughput probe over raw TCP, used for the
//! first side-by-side figure before the full harness (`bench/`) existed.
//!
//! usage: pubsub_quick <port> <payload-bytes> <messages>
//!
//! The publisher writes pipelined PUBs in large writes and is held back while it is
//! more than a window ahead of what the subscriber has counted, so the server never
//! has to cut the subscriber off.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Connects; with `want = Some((shards, shard))`, retries until the server's
/// `client_id % shards == shard` (strait's shard of the connection).
fn connect_on(port: u16, want: Option<(u64, u64)>) -> TcpStream {
    loop {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).expect("INFO");
        if let Some((shards, shard)) = want {
            let info = String::from_utf8_lossy(&buf[..n]);
            let cid: u64 = info
                .split("\"client_id\":")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|d| d.parse().ok())
                .unwrap_or(0);
            if cid % shards != shard {
                continue;
            }
        }
        return handshake(s);
    }
}

fn handshake(mut s: TcpStream) -> TcpStream {
    s.set_nodelay(true).expect("nodelay");
    let mut buf = [0u8; 4096];
    s.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1}\r\nPING\r\n")
        .expect("CONNECT");
    let mut seen = Vec::new();
    while !seen.windows(6).any(|w| w == b"PONG\r\n") {
        let n = s.read(&mut buf).expect("PONG");
        seen.extend_from_slice(&buf[..n]);
    }
    s
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(4222);
    let size: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(16);
    let total: u64 = args
        .get(3)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5_000_000);

    // CROSS_SHARDS=n puts the subscriber on shard 0 and the publisher on shard 1.
    let shards: Option<u64> = std::env::var("CROSS_SHARDS")
        .ok()
        .and_then(|v| v.parse().ok());
    let mut sub = connect_on(port, shards.map(|n| (n, 0)));
    sub.write_all(b"SUB bench 1\r\nPING\r\n").expect("SUB");
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let frame_len = format!("MSG bench 1 {size}\r\n").len() + size + 2;
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        let mut bytes: u64 = 0;
        let mut skipped_pong = false;
        let mut start = None;
        loop {
            let n = sub.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            let mut data = &buf[..n];
            if !skipped_pong {
                if let Some(p) = data.windows(6).position(|w| w == b"PONG\r\n") {
                    data = &data[p + 6..];
                    skipped_pong = true;
                } else {
                    continue;
                }
            }
            // The second INFO (connect_info) may precede the first MSG.
            if data.starts_with(b"INFO") {
                if let Some(p) = data.windows(2).position(|w| w == b"\r\n") {
                    data = &data[p + 2..];
                }
            }
            if start.is_none() && !data.is_empty() {
                start = Some(Instant::now());
            }
            bytes += data.len() as u64;
            let msgs = bytes / frame_len as u64;
            counter.store(msgs, Ordering::Release);
            if msgs >= total {
                break;
            }
        }
        start
    });

    let pub_shard = if std::env::var("SAME_SHARD").is_ok() {
        0
    } else {
        1
    };
    let mut publ = connect_on(port, shards.map(|n| (n, pub_shard)));
    let frame = {
        let mut f = format!("PUB bench {size}\r\n").into_bytes();
        f.extend(std::iter::repeat_n(b'x', size));
        f.extend_from_slice(b"\r\n");
        f
    };
    let batch: usize = (64 * 1024 / frame.len()).max(1);
    let chunk: Vec<u8> = frame.repeat(batch);
    let window: u64 = 200_000;
    let t0 = Instant::now();
    let mut sent: u64 = 0;
    while sent < total {
        while sent.saturating_sub(received.load(Ordering::Acquire)) > window {
            std::hint::spin_loop();
        }
        let n = (batch as u64).min(total - sent) as usize;
        publ.write_all(&chunk[..n * frame.len()]).expect("PUB");
        sent += n as u64;
    }
    let _ = reader.join();
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{:.0} msgs/s ({:.1} MB/s payload) {} msgs of {} B in {:.2}s",
        total as f64 / secs,
        total as f64 * size as f64 / secs / 1e6,
        total,
        size,
        secs
    );
}
