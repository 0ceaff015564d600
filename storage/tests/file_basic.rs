mod common;
use common::*;
use strait_storage::{Purge, Store, StoreError};

#[test]
fn append_load_reopen() {
    let dir = tmpdir();
    let c = cfg(dir.path());
    run(async {
        let s = open(&c).await;
        for i in 1..=2000u64 {
            let seq = s
                .append(
                    &format!("foo.{}", i % 7),
                    b"",
                    pl(i).as_bytes(),
                    i as i64,
                    None,
                )
                .await
                .unwrap();
            assert_eq!(seq, i);
        }
        assert!(s.segment_count() > 1, "expected a roll");
        let m = s.load(1234).await.unwrap();
        assert_eq!(&m.payload[..], pl(1234).as_bytes());
        assert!(s.delete(10, false).await.unwrap());
        assert!(s.delete(11, true).await.unwrap());
        assert!(s.delete(1999, true).await.unwrap());
        assert!(matches!(s.load(10).await, Err(StoreError::NotFound)));
        let st = s.state();
        s.close().await.unwrap();
        let s = open(&c).await;
        assert_eq!(s.state(), st);
        assert_eq!(
            &s.load(2000).await.unwrap().payload[..],
            pl(2000).as_bytes()
        );
        assert_eq!(s.load_last("foo.3").await.unwrap().seq, 1998);
        assert_eq!(s.load_next(12, "foo.*").await.unwrap().seq, 12);
        assert_eq!(
            s.purge(&Purge {
                filter: String::new(),
                up_to: 0,
                keep: 0
            })
            .await
            .unwrap(),
            1997
        );
        let st = s.state();
        assert_eq!((st.first_seq, st.last_seq, st.msgs), (2001, 2000, 0));
        s.close().await.unwrap();
        let s = open(&c).await;
        assert_eq!(s.state(), st);
        assert_eq!(s.append("a", b"", b"x", 5000, None).await.unwrap(), 2001);
        assert!(s.segment_count() <= 2, "segments: {}", s.segment_count());
        s.close().await.unwrap();
    });
}

fn pl(i: u64) -> String {
    format!("msg-{i}-{}", "x".repeat(150))
}

/// A small stream holds about what it stores, not a whole pre-allocated segment:
/// allocation grows ahead of the writes. A big segment size makes the difference
/// plain (1000 such streams would otherwise reserve 64 GB).
#[test]
fn a_small_stream_does_not_reserve_a_whole_segment() {
    use std::os::unix::fs::MetadataExt;
    let dir = tmpdir();
    let mut c = cfg(dir.path());
    c.segment_size = 64 << 20;
    run(async {
        let s = open(&c).await;
        for i in 1..=1000u64 {
            s.append("small", b"", &[7u8; 128], i as i64, None)
                .await
                .unwrap();
        }
        let allocated: u64 = std::fs::read_dir(&c.dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
            .map(|e| e.metadata().unwrap().blocks() * 512)
            .sum();
        assert!(
            allocated <= 2 << 20,
            "1000 x 128 B took {allocated} bytes of disk"
        );
        // Growing past the first allocation keeps working, and it all reads back.
        for i in 1001..=20_000u64 {
            s.append("small", b"", &[7u8; 128], i as i64, None)
                .await
                .unwrap();
        }
        s.close().await.unwrap();
        let s = open(&c).await;
        assert_eq!(s.state().msgs, 20_000);
        assert_eq!(s.load(19_999).await.unwrap().payload.len(), 128);
        s.close().await.unwrap();
    });
}

/// Loads that miss the cache together (a burst of direct gets, a consumer's
/// batch) read each window once, not once per load.
#[test]
fn concurrent_loads_of_one_window_read_it_once() {
    let dir = tmpdir();
    let c = cfg(dir.path());
    run(async {
        let s = open(&c).await;
        for i in 1..=300u64 {
            s.append("kv.key", b"", pl(i).as_bytes(), i as i64, None)
                .await
                .unwrap();
        }
        s.close().await.unwrap();
        // Reopened, nothing is in the write buffer or the cache.
        let s = open(&c).await;
        let before = s.segment_reads();
        let loads: Vec<_> = (1..=200u64)
            .map(|seq| {
                let s = s.clone();
                glommio::spawn_local(async move { s.load(seq).await.map(|m| (seq, m)) })
            })
            .collect();
        for load in loads {
            let (seq, m) = load.await.unwrap();
            assert_eq!(&m.payload[..], pl(seq).as_bytes());
        }
        let reads = s.segment_reads() - before;
        assert!(reads <= 2, "200 loads in one window took {reads} reads");
        s.close().await.unwrap();
    });
}

/// A mirror follows its origin past removed messages: the skipped sequences
/// are deleted ones, in memory and after a reopen, and an empty store just
/// starts later.
#[test]
fn skip_to_moves_the_last_sequence() {
    let dir = tmpdir();
    let c = cfg(dir.path());
    run(async {
        let s = open(&c).await;
        s.skip_to(9).await.unwrap();
        let st = s.state();
        assert_eq!((st.first_seq, st.last_seq, st.msgs), (10, 9, 0));
        assert_eq!(s.append("a", b"", b"x", 1, None).await.unwrap(), 10);
        s.skip_to(14).await.unwrap();
        s.skip_to(12).await.unwrap();
        assert_eq!(s.append("a", b"", b"y", 2, None).await.unwrap(), 15);
        let st = s.state();
        assert_eq!(
            (st.first_seq, st.last_seq, st.msgs, st.num_deleted),
            (10, 15, 2, 4)
        );
        s.close().await.unwrap();
        let s = open(&c).await;
        assert_eq!(s.state(), st);
        assert_eq!(s.append("a", b"", b"z", 3, None).await.unwrap(), 16);
        s.close().await.unwrap();
    });
    let mem = strait_storage::MemStore::new(Default::default());
    run(async {
        mem.append("a", b"", b"x", 1, None).await.unwrap();
        mem.skip_to(5).await.unwrap();
        assert_eq!(mem.append("a", b"", b"x", 1, None).await.unwrap(), 6);
        assert_eq!(mem.state().num_deleted, 4);
    });
}
