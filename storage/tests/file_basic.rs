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
