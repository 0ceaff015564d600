//! Corruption and encryption tests: damaged segment files are detected, reported and
//! skipped without losing anything else; encrypted stores keep no plaintext on disk.

mod common;
use std::path::{Path, PathBuf};

use common::*;
use rand::{Rng, SeedableRng};
use strait_storage::{Cipher, Encryption, FileStore, FileStoreConfig, Store, StoreError};

fn pl(i: u64) -> Vec<u8> {
    format!("payload-{i}-{}", "z".repeat((i % 50) as usize)).into_bytes()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

async fn fill(c: &FileStoreConfig, n: u64) {
    let s = FileStore::open(c.clone()).await.unwrap();
    for i in 1..=n {
        s.append(&format!("d.{}", i % 5), b"hdr", &pl(i), i as i64, None)
            .await
            .unwrap();
    }
    s.close().await.unwrap();
}

/// Every message either loads intact or is missing; returns the missing ones.
async fn check_all(s: &FileStore, n: u64) -> Vec<u64> {
    let mut missing = Vec::new();
    for i in 1..=n {
        match s.load(i).await {
            Ok(m) => {
                assert_eq!(&m.payload[..], &pl(i)[..], "seq {i} altered");
                assert_eq!(m.subject, format!("d.{}", i % 5));
            }
            Err(StoreError::NotFound) => missing.push(i),
            Err(e) => panic!("seq {i}: {e}"),
        }
    }
    missing
}

#[test]
fn bit_flip_in_a_record_is_reported_and_skipped() {
    let dir = tmpdir();
    let c = cfg(dir.path());
    run(async {
        fill(&c, 3000).await;
        let segs = segments(&c.dir);
        assert!(segs.len() >= 2);
        // Flip one bit in the middle of the first segment's records.
        let mut b = std::fs::read(&segs[0]).unwrap();
        let at = 4096 + 50_000;
        b[at] ^= 0x04;
        std::fs::write(&segs[0], &b).unwrap();
        let s = FileStore::open(c.clone()).await.unwrap();
        let r = s.recovery_report().clone();
        assert_eq!(r.corruptions.len(), 1, "{r:?}");
        let k = &r.corruptions[0];
        assert_eq!(k.stream, "TEST");
        assert_eq!(k.segment, 1);
        assert!(k.offset <= at as u64 && at as u64 <= k.offset + k.len);
        let missing = check_all(&s, 3000).await;
        assert_eq!(
            missing.len(),
            1,
            "only the damaged record is lost: {missing:?}"
        );
        assert_eq!(Some(missing[0] + 1), k.next_seq);
        assert_eq!(missing[0], k.after_seq + 1);
        // The store keeps working.
        assert_eq!(
            s.append("d.x", b"", b"after", 9999, None).await.unwrap(),
            3001
        );
        s.close().await.unwrap();
    });
}

#[test]
fn random_damage_never_panics_or_alters_data() {
    let dir = tmpdir();
    let c = cfg(dir.path());
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    run(async {
        fill(&c, 1500).await;
        let pristine: Vec<(PathBuf, Vec<u8>)> = segments(&c.dir)
            .into_iter()
            .map(|p| {
                let b = std::fs::read(&p).unwrap();
                (p, b)
            })
            .collect();
        for round in 0..25 {
            for (p, b) in &pristine {
                std::fs::write(p, b).unwrap();
            }
            let (p, b) = &pristine[rng.gen_range(0..pristine.len())];
            let mut b = b.clone();
            let data_end = b.iter().rposition(|&x| x != 0).unwrap_or(0) + 1;
            let flips = rng.gen_range(1..6);
            for _ in 0..flips {
                let at = rng.gen_range(0..data_end);
                b[at] ^= 1 << rng.gen_range(0..8);
            }
            let truncated = round % 5 == 4;
            if truncated {
                b.truncate(rng.gen_range(4096..data_end));
            }
            std::fs::write(p, &b).unwrap();
            let s = FileStore::open(c.clone()).await.unwrap();
            let r = s.recovery_report().clone();
            let missing = check_all(&s, 1500).await;
            if !missing.is_empty() {
                assert!(
                    !r.corruptions.is_empty() || r.torn_tail.is_some(),
                    "loss without a report"
                );
            }
            if !truncated {
                // Each flip damages at most one record.
                assert!(
                    missing.len() <= flips,
                    "round {round}: lost {missing:?} after {flips} flips"
                );
            }
            s.close().await.unwrap();
        }
    });
}

#[test]
fn torn_tail_is_truncated_and_appends_continue() {
    let dir = tmpdir();
    let c = cfg(dir.path());
    run(async {
        fill(&c, 100).await;
        let segs = segments(&c.dir);
        let last = segs.last().unwrap();
        let b = std::fs::read(last).unwrap();
        let data_end = b.iter().rposition(|&x| x != 0).unwrap() + 1;
        // Cut the last record in half, as a write torn by a crash would.
        std::fs::write(last, &b[..data_end - 20]).unwrap();
        let s = FileStore::open(c.clone()).await.unwrap();
        let r = s.recovery_report().clone();
        assert!(r.torn_tail.is_some(), "{r:?}");
        assert!(r.corruptions.is_empty());
        assert_eq!(check_all(&s, 100).await, vec![100]);
        assert_eq!(s.state().last_seq, 99);
        for i in 100..=150 {
            assert_eq!(
                s.append(&format!("d.{}", i % 5), b"hdr", &pl(i), i as i64, None)
                    .await
                    .unwrap(),
                i
            );
        }
        s.close().await.unwrap();
        let s = FileStore::open(c.clone()).await.unwrap();
        let r = s.recovery_report();
        assert!(r.torn_tail.is_none() && r.corruptions.is_empty(), "{r:?}");
        assert!(check_all(&s, 150).await.is_empty());
        s.close().await.unwrap();
    });
}

#[test]
fn damaged_segment_header_and_truncated_middle_segment() {
    let dir = tmpdir();
    let c = cfg(dir.path());
    run(async {
        fill(&c, 8000).await;
        let segs = segments(&c.dir);
        assert!(segs.len() >= 3);
        let mut b = std::fs::read(&segs[0]).unwrap();
        b[3] ^= 0xff;
        std::fs::write(&segs[0], &b).unwrap();
        let b = std::fs::read(&segs[1]).unwrap();
        std::fs::write(&segs[1], &b[..100_000]).unwrap();
        let s = FileStore::open(c.clone()).await.unwrap();
        let r = s.recovery_report().clone();
        assert!(
            r.corruptions
                .iter()
                .any(|k| k.segment == 1 && k.offset == 0),
            "{r:?}"
        );
        assert!(r.corruptions.iter().any(|k| k.segment == 2), "{r:?}");
        let missing = check_all(&s, 8000).await;
        assert!(!missing.is_empty());
        // Everything in the first and the last segment survived.
        assert!(s.load(1).await.is_ok());
        assert!(s.load(8000).await.is_ok());
        assert_eq!(s.state().last_seq, 8000);
        s.close().await.unwrap();
    });
}

fn enc(cipher: Cipher, key: &[u8]) -> Option<Encryption> {
    Some(Encryption {
        cipher,
        key: key.to_vec(),
    })
}

#[test]
fn encryption_at_rest() {
    let dir = tmpdir();
    let mut c = cfg(dir.path());
    c.encryption = enc(Cipher::ChaCha, b"secret key");
    run(async {
        let s = FileStore::open(c.clone()).await.unwrap();
        for i in 1..=200u64 {
            s.append(
                "secret.subject.PLAINSUBJ",
                b"PLAINHDR",
                format!("PLAINPAYLOAD-{i}").as_bytes(),
                i as i64,
                None,
            )
            .await
            .unwrap();
        }
        s.delete(5, true).await.unwrap();
        s.delete(6, false).await.unwrap();
        s.close().await.unwrap();
        for e in std::fs::read_dir(&c.dir).unwrap() {
            let b = std::fs::read(e.unwrap().path()).unwrap();
            for needle in [
                &b"PLAINSUBJ"[..],
                b"PLAINHDR",
                b"PLAINPAYLOAD",
                b"key check",
            ] {
                assert!(
                    !b.windows(needle.len()).any(|w| w == needle),
                    "plaintext on disk"
                );
            }
        }
        // Wrong key: a clear error naming the stream.
        let mut wrong = c.clone();
        wrong.encryption = enc(Cipher::ChaCha, b"other key");
        let err = FileStore::open(wrong)
            .await
            .err()
            .expect("wrong key must fail");
        assert!(matches!(err, StoreError::WrongKey { .. }));
        assert!(err.to_string().contains("TEST") && err.to_string().contains("wrong key"));
        let mut none = c.clone();
        none.encryption = None;
        assert!(matches!(
            FileStore::open(none).await,
            Err(StoreError::KeyRequired { .. })
        ));
        // Cipher change with the same key keeps old data readable.
        let mut aes = c.clone();
        aes.encryption = enc(Cipher::Aes, b"secret key");
        let s = FileStore::open(aes.clone()).await.unwrap();
        assert_eq!(&s.load(7).await.unwrap().payload[..], b"PLAINPAYLOAD-7");
        s.append("x", b"", b"PLAINAES", 1000, None).await.unwrap();
        s.close().await.unwrap();
        let s = FileStore::open(c.clone()).await.unwrap();
        assert_eq!(&s.load(7).await.unwrap().payload[..], b"PLAINPAYLOAD-7");
        assert_eq!(&s.load(201).await.unwrap().payload[..], b"PLAINAES");
        assert!(s.load(5).await.is_err() && s.load(6).await.is_err());
        assert_eq!(s.state().msgs, 199);
        s.close().await.unwrap();
    });
}

#[test]
fn snapshot_and_restore() {
    let dir = tmpdir();
    let c = cfg(dir.path());
    run(async {
        fill(&c, 2500).await;
        let s = FileStore::open(c.clone()).await.unwrap();
        s.delete(10, false).await.unwrap();
        let mut snap = Vec::new();
        s.snapshot(&mut snap).await.unwrap();
        let st = s.state();
        s.close().await.unwrap();
        let mut c2 = c.clone();
        c2.dir = dir.path().join("restored");
        FileStore::restore(&c2.dir, &mut &snap[..]).unwrap();
        let r = FileStore::open(c2.clone()).await.unwrap();
        assert_eq!(r.state(), st);
        assert_eq!(check_all(&r, 2500).await, vec![10]);
        r.close().await.unwrap();
        let mut bad = snap.clone();
        let n = bad.len();
        bad[n / 2] ^= 1;
        assert!(FileStore::restore(&dir.path().join("bad"), &mut &bad[..]).is_err());
    });
}
