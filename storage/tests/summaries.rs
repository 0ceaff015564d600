//! Segment summaries: a restart that reads them rebuilds exactly what a scan of every
//! segment rebuilds, and a segment written after its summary is scanned instead.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use strait_storage::{
    Cipher, Encryption, FileStore, FileStoreConfig, Limits, MsgTtl, Purge, Store, StoreError,
};

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

/// Everything a restart rebuilds that a user can see.
#[derive(Debug, PartialEq)]
struct Seen {
    state: strait_storage::StreamState,
    subjects: std::collections::BTreeMap<String, u64>,
    messages: Vec<strait_storage::StoredMessage>,
    next_expiry: Option<i64>,
    with_headers: Vec<u64>,
}

async fn seen(s: &FileStore) -> Seen {
    let state = s.state();
    let mut messages = Vec::new();
    for seq in state.first_seq..=state.last_seq {
        match s.load(seq).await {
            Ok(m) => messages.push(m),
            Err(StoreError::NotFound) => {}
            Err(e) => panic!("seq {seq}: {e}"),
        }
    }
    Seen {
        subjects: s.subjects_state(">"),
        next_expiry: s.next_expiry(),
        with_headers: s.with_headers_since(0),
        state,
        messages,
    }
}

/// Fills many small segments with everything a log holds: messages with and
/// without headers and TTLs, deletes, erases, purges, a compact and removals by
/// limits.
async fn fill(c: &FileStoreConfig) {
    let s = FileStore::open(c.clone()).await.unwrap();
    for i in 1..=8000u64 {
        let subject = format!("orders.{}.{}", i % 7, i % 3);
        let headers: &[u8] = if i % 5 == 0 {
            b"NATS/1.0\r\nNats-Msg-Id: x\r\n\r\n"
        } else {
            b""
        };
        let ttl = match i % 11 {
            0 => Some(MsgTtl::After(Duration::from_secs(3600))),
            1 => Some(MsgTtl::Never),
            _ => None,
        };
        let payload = vec![b'a' + (i % 26) as u8; (i % 300) as usize];
        s.append(&subject, headers, &payload, 1_000_000 + i as i64, ttl)
            .await
            .unwrap();
        match i {
            i if i % 97 == 0 => {
                s.delete(i - 3, false).await.unwrap();
            }
            i if i % 131 == 0 => {
                s.delete(i - 5, true).await.unwrap();
            }
            1500 => {
                s.purge(&Purge {
                    filter: "orders.3.*".into(),
                    up_to: 0,
                    keep: 2,
                })
                .await
                .unwrap();
            }
            2500 => {
                s.compact(200).await.unwrap();
            }
            _ => {}
        }
    }
    // Removals by a limit, logged as compact markers in the last segments.
    s.update_limits(
        Limits {
            max_msgs: Some(6000),
            allow_msg_ttl: true,
            ..Default::default()
        },
        2_000_000,
    )
    .await
    .unwrap();
    // Let the sealed segments settle, then one more append writes their summaries.
    std::thread::sleep(Duration::from_millis(60));
    s.append("orders.last", b"", b"last", 3_000_000, None)
        .await
        .unwrap();
    s.close().await.unwrap();
}

fn limits() -> Limits {
    Limits {
        max_msgs: Some(6000),
        allow_msg_ttl: true,
        ..Default::default()
    }
}

#[test]
fn a_restart_from_summaries_rebuilds_what_a_full_scan_rebuilds() {
    for encryption in [
        None,
        Some(Encryption {
            cipher: Cipher::ChaCha,
            key: b"summary-key".to_vec(),
        }),
    ] {
        let dir = tmpdir();
        let mut c = cfg(dir.path());
        c.limits = limits();
        c.encryption = encryption.clone();
        run(async {
            fill(&c).await;
            let segments = files(&c.dir, "seg").len();
            let summaries = files(&c.dir, "sum").len();
            assert!(segments >= 5, "{segments} segments");
            assert_eq!(summaries, segments - 1, "every sealed segment summarised");
            if encryption.is_some() {
                for sum in files(&c.dir, "sum") {
                    let bytes = std::fs::read(&sum).unwrap();
                    assert!(
                        !bytes.windows(7).any(|w| w == b"orders."),
                        "a subject in plaintext in {sum:?}"
                    );
                }
            }

            let s = FileStore::open(c.clone()).await.unwrap();
            let report = s.recovery_report().clone();
            assert_eq!(report.summarized, segments - 1, "{report:?}");
            let from_summaries = seen(&s).await;
            s.close().await.unwrap();

            for sum in files(&c.dir, "sum") {
                std::fs::remove_file(sum).unwrap();
            }
            let s = FileStore::open(c.clone()).await.unwrap();
            assert_eq!(s.recovery_report().summarized, 0);
            let scanned = seen(&s).await;
            assert_eq!(from_summaries, scanned);
            assert!(from_summaries.messages.len() > 2000);
            // The scan wrote the summaries again, for the next restart.
            s.close().await.unwrap();
            assert_eq!(files(&c.dir, "sum").len(), segments - 1);
        });
    }
}

#[test]
fn a_segment_written_after_its_summary_is_scanned() {
    let dir = tmpdir();
    let mut c = cfg(dir.path());
    c.limits = limits();
    run(async {
        fill(&c).await;
        let segments = files(&c.dir, "seg");
        // Damage a sealed segment by hand: its summary no longer describes it.
        let victim = &segments[1];
        let mut bytes = std::fs::read(victim).unwrap();
        bytes[4096 + 300] ^= 0x10;
        std::fs::write(victim, &bytes).unwrap();
        let s = FileStore::open(c.clone()).await.unwrap();
        let report = s.recovery_report().clone();
        assert_eq!(report.summarized, segments.len() - 2, "{report:?}");
        assert_eq!(report.corruptions.len(), 1, "{report:?}");
        let victim_id: u64 = victim
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(report.corruptions[0].segment, victim_id);
        s.close().await.unwrap();

        // An erase overwrites a record in a sealed, summarised segment.
        let s = FileStore::open(c.clone()).await.unwrap();
        let first = s.state().first_seq;
        let mut target = None;
        for q in first..first + 200 {
            if s.load(q).await.is_ok() {
                target = Some(q);
                break;
            }
        }
        let target = target.expect("a live message");
        assert!(s.delete(target, true).await.unwrap());
        s.close().await.unwrap();
        let s = FileStore::open(c.clone()).await.unwrap();
        assert!(matches!(s.load(target).await, Err(StoreError::NotFound)));
        s.close().await.unwrap();
    });
}

#[test]
fn stray_and_half_written_summaries_are_ignored_and_removed() {
    let dir = tmpdir();
    let mut c = cfg(dir.path());
    c.limits = limits();
    run(async {
        fill(&c).await;
        let sums = files(&c.dir, "sum");
        // A torn summary, a summary of a segment that is gone, a temporary file.
        let torn = std::fs::read(&sums[0]).unwrap();
        std::fs::write(&sums[0], &torn[..torn.len() / 2]).unwrap();
        std::fs::write(c.dir.join("00000000000000009999.sum"), b"junk").unwrap();
        std::fs::write(c.dir.join("00000000000000000001.sum.tmp"), b"junk").unwrap();
        // Written now, the torn summary is newer than its segment: only its CRC
        // can tell it is bad.
        let s = FileStore::open(c.clone()).await.unwrap();
        let report = s.recovery_report().clone();
        assert_eq!(report.summarized, sums.len() - 1, "{report:?}");
        assert!(report.corruptions.is_empty(), "{report:?}");
        let state = s.state();
        s.close().await.unwrap();
        assert!(!c.dir.join("00000000000000009999.sum").exists());
        assert!(!c.dir.join("00000000000000000001.sum.tmp").exists());
        for sum in files(&c.dir, "sum") {
            std::fs::remove_file(sum).unwrap();
        }
        let s = FileStore::open(c.clone()).await.unwrap();
        assert_eq!(s.state(), state);
        s.close().await.unwrap();
    });
}

/// A summary is read once, applied as it is decoded: one that passes its CRC yet
/// stops part way (what only a writer bug makes) has already put some of its
/// messages in the index, so recovery starts over without it and scans that
/// segment, and the result is what a full scan gives.
#[test]
fn a_summary_that_stops_part_way_is_dropped_and_its_segment_scanned() {
    let dir = tmpdir();
    let mut c = cfg(dir.path());
    c.limits = limits();
    run(async {
        fill(&c).await;
        let sums = files(&c.dir, "sum");
        let victim = &sums[sums.len() / 2];
        let data = std::fs::read(victim).unwrap();
        let body = match strait_storage::record::decode(&data, None) {
            Ok((strait_storage::record::Record::Meta(body), _)) => body,
            other => panic!("not a summary record: {other:?}"),
        };
        let mut framed = Vec::new();
        strait_storage::record::encode_meta(&mut framed, None, &body[..body.len() - 3]);
        std::fs::write(victim, &framed).unwrap();

        let s = FileStore::open(c.clone()).await.unwrap();
        let report = s.recovery_report().clone();
        assert_eq!(report.summarized, sums.len() - 1, "{report:?}");
        // Removed, and written again whole from the scan.
        assert_ne!(std::fs::read(victim).ok(), Some(framed));
        let recovered = seen(&s).await;
        s.close().await.unwrap();

        for sum in files(&c.dir, "sum") {
            std::fs::remove_file(sum).unwrap();
        }
        let s = FileStore::open(c.clone()).await.unwrap();
        assert_eq!(s.recovery_report().summarized, 0);
        assert_eq!(seen(&s).await, recovered);
        s.close().await.unwrap();
    });
}
