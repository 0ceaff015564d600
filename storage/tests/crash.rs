//! Crash test: a child process appends with durable acks and prints each acknowledged
//! sequence; the parent SIGKILLs it at random moments, reopens the store and checks
//! that every acknowledged message is present and intact.

mod common;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};
use strait_storage::{FileStore, FileStoreConfig, Store};

const ENV_DIR: &str = "STRAIT_CRASH_CHILD_DIR";

fn payload(tag: &str) -> Vec<u8> {
    let mut v = tag.as_bytes().to_vec();
    let n = 40 + (crc32c::crc32c(tag.as_bytes()) % 700) as usize;
    let k = v.len() as u8;
    v.extend((0..n).map(|i| (i as u8) ^ k));
    v
}

fn child_cfg(dir: &str) -> FileStoreConfig {
    let mut c = FileStoreConfig::new("CRASH", dir);
    c.segment_size = 256 << 10;
    c
}

/// The child: runs only when re-invoked by `kill9_never_loses_acked_messages`.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(ENV_DIR) else {
        return;
    };
    run(async move {
        let s = Rc::new(FileStore::open(child_cfg(&dir)).await.expect("child open"));
        println!("READY");
        let mut tasks = Vec::new();
        for t in 0..8 {
            let s = s.clone();
            tasks.push(glommio::spawn_local(async move {
                for n in 0.. {
                    let tag = format!("{}-{t}-{n}", std::process::id());
                    let subj = format!("crash.{t}");
                    let seq = s
                        .append(&subj, b"", &payload(&tag), n, None)
                        .await
                        .expect("append");
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "ACK {seq} {subj} {tag}");
                }
            }));
        }
        for t in tasks {
            t.await;
        }
    });
}

#[test]
fn kill9_never_loses_acked_messages() {
    let dir = tmpdir();
    let sdir = dir.path().join("stream");
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut acked: Vec<(u64, String, String)> = Vec::new();
    let t0 = Instant::now();
    let cycles: usize = std::env::var("STRAIT_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    for cycle in 0..cycles {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(ENV_DIR, &sdir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for l in BufReader::new(stdout).lines() {
                match l {
                    Ok(l) => lines.push(l),
                    Err(_) => break,
                }
            }
            lines
        });
        let wait = Duration::from_millis(rng.gen_range(30..250));
        std::thread::sleep(wait);
        // SIGKILL: no chance to flush or clean up.
        child.kill().unwrap();
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        for l in lines {
            let mut it = l.split(' ');
            if it.next() == Some("ACK") {
                let seq: u64 = it.next().unwrap().parse().unwrap();
                acked.push((
                    seq,
                    it.next().unwrap().to_string(),
                    it.next().unwrap().to_string(),
                ));
            }
        }
        // Reopen in this process and check everything acknowledged so far.
        let c = child_cfg(sdir.to_str().unwrap());
        let acked_ref = &acked;
        run(async move {
            let s = FileStore::open(c).await.expect("reopen after kill");
            let r = s.recovery_report();
            assert!(
                r.corruptions.is_empty(),
                "cycle {cycle}: {:?}",
                r.corruptions
            );
            for (seq, subj, tag) in acked_ref {
                let m = s
                    .load(*seq)
                    .await
                    .unwrap_or_else(|e| panic!("cycle {cycle}: acked seq {seq} lost: {e}"));
                assert_eq!(&m.subject, subj);
                assert_eq!(&m.payload[..], &payload(tag)[..], "seq {seq} damaged");
            }
            s.close().await.unwrap();
        });
    }
    assert!(
        acked.len() > 100,
        "too few acknowledged appends: {}",
        acked.len()
    );
    eprintln!(
        "{cycles} kill cycles, {} acked messages verified, {:?}",
        acked.len(),
        t0.elapsed()
    );
}
