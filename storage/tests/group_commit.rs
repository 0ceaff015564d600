//! Concurrent durable appends share fdatasyncs.

mod common;
use std::rc::Rc;

use common::*;
use strait_storage::{FileStore, Store};

#[test]
fn concurrent_appends_share_fdatasyncs() {
    let dir = tmpdir();
    let c = cfg(dir.path());
    run(async {
        let s = Rc::new(FileStore::open(c.clone()).await.unwrap());
        let mut tasks = Vec::new();
        for t in 0..64 {
            let s = s.clone();
            tasks.push(glommio::spawn_local(async move {
                for n in 0..20 {
                    s.append(&format!("gc.{t}"), b"", &[7u8; 100], n, None)
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await;
        }
        let flushes = s.flush_count();
        eprintln!("1280 appends, {flushes} flushes");
        assert_eq!(s.state().msgs, 1280);
        assert!(
            flushes < 1280 / 4,
            "group commit did not batch: {flushes} flushes"
        );
        s.close().await.unwrap();
    });
}
