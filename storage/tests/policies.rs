//! Sync policy, limits-driven segment removal, TTLs and the AnyStore wrapper.

mod common;
use std::time::Duration;

use common::*;
use strait_storage::{
    AnyStore, Discard, FileStore, Limits, MemStore, MsgTtl, Store, StoreError, SyncPolicy,
};

#[test]
fn interval_sync_flushes_in_the_background() {
    let dir = tmpdir();
    let mut c = cfg(dir.path());
    c.sync = SyncPolicy::Interval(Duration::from_millis(20));
    run(async {
        let s = FileStore::open(c.clone()).await.unwrap();
        for i in 1..=500 {
            s.append("i.x", b"", &[1u8; 64], i, None).await.unwrap();
        }
        assert!(
            s.flush_count() <= 1,
            "interval policy must not sync per append"
        );
        glommio::timer::sleep(Duration::from_millis(100)).await;
        assert!(s.flush_count() >= 1);
        s.close().await.unwrap();
        let s = FileStore::open(c.clone()).await.unwrap();
        assert_eq!(s.state().msgs, 500);
        s.close().await.unwrap();
    });
}

#[test]
fn discard_old_limits_remove_old_segments() {
    let dir = tmpdir();
    let mut c = cfg(dir.path());
    c.segment_size = 64 << 10;
    c.limits = Limits {
        max_msgs: Some(300),
        ..Default::default()
    };
    run(async {
        let s = FileStore::open(c.clone()).await.unwrap();
        for i in 1..=2500 {
            s.append("lim", b"", &[2u8; 300], i, None).await.unwrap();
        }
        let st = s.state();
        assert_eq!((st.msgs, st.first_seq, st.last_seq), (300, 2201, 2500));
        // ~100 KiB of live data: a few segments, not the ~12 written.
        assert!(s.segment_count() <= 5, "segments: {}", s.segment_count());
        s.close().await.unwrap();
        let s = FileStore::open(c.clone()).await.unwrap();
        assert_eq!(s.state(), st);
        s.close().await.unwrap();
    });
}

#[test]
fn ttl_and_max_age() {
    run(async {
        let limits = Limits {
            max_age: Some(Duration::from_nanos(1000)),
            allow_msg_ttl: true,
            ..Default::default()
        };
        let dir = tmpdir();
        let mut c = cfg(dir.path());
        c.limits = limits.clone();
        let stores = [
            AnyStore::Memory(Box::new(MemStore::new(limits))),
            AnyStore::File(FileStore::open(c).await.unwrap()),
        ];
        for s in &stores {
            s.append("t.a", b"", b"1", 100, None).await.unwrap();
            s.append(
                "t.b",
                b"",
                b"2",
                100,
                Some(MsgTtl::After(Duration::from_nanos(50))),
            )
            .await
            .unwrap();
            s.append("t.c", b"", b"3", 100, Some(MsgTtl::Never))
                .await
                .unwrap();
            assert_eq!(s.next_expiry(), Some(150));
            assert_eq!(s.expire(150).await.unwrap(), 1);
            assert!(matches!(s.load(2).await, Err(StoreError::NotFound)));
            assert_eq!(s.next_expiry(), Some(1100));
            assert_eq!(s.expire(5000).await.unwrap(), 1);
            let st = s.state();
            assert_eq!((st.msgs, st.first_seq), (1, 3));
            assert_eq!(&s.load_next(0, "t.*").await.unwrap().payload[..], b"3");
            assert!(matches!(s.load_next(4, "").await, Err(StoreError::Eof)));
            s.close().await.unwrap();
        }
    });
}

#[test]
fn discard_new_errors() {
    run(async {
        let s = MemStore::new(Limits {
            max_msgs: Some(2),
            max_msg_size: Some(10),
            max_msgs_per_subject: Some(1),
            discard: Discard::New,
            discard_new_per_subject: true,
            ..Default::default()
        });
        assert_eq!(
            s.append("a", b"", &[0; 11], 1, None)
                .await
                .unwrap_err()
                .to_string(),
            "message size exceeds maximum allowed"
        );
        assert!(matches!(
            s.append("a", b"", b"x", 1, Some(MsgTtl::Never)).await,
            Err(StoreError::TtlDisabled)
        ));
        s.append("a", b"", b"x", 1, None).await.unwrap();
        assert_eq!(
            s.append("a", b"", b"x", 1, None)
                .await
                .unwrap_err()
                .to_string(),
            "maximum messages per subject exceeded"
        );
        s.append("b", b"", b"x", 1, None).await.unwrap();
        let e = s.append("c", b"", b"x", 1, None).await.unwrap_err();
        assert_eq!(e.to_string(), "maximum messages exceeded");
        assert_eq!(e.js_error_code(), (503, 10077));
    });
}
