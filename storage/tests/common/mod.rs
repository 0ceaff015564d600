#![allow(dead_code)]
use std::future::Future;

use strait_storage::{FileStore, FileStoreConfig};

/// Runs a future on a fresh glommio executor on this thread.
pub fn run<T>(f: impl Future<Output = T>) -> T {
    glommio::LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .make()
        .expect("executor")
        .run(f)
}

pub fn cfg(dir: &std::path::Path) -> FileStoreConfig {
    let mut c = FileStoreConfig::new("TEST", dir.join("stream"));
    c.segment_size = 256 << 10;
    c
}

pub async fn open(c: &FileStoreConfig) -> FileStore {
    FileStore::open(c.clone()).await.expect("open store")
}

pub fn tmpdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("strait-storage-")
        .tempdir_in("/tmp")
        .expect("tempdir")
}
