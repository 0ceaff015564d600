//! File store benchmark: durable appends with group commit (1/16/256 appenders) for
//! 128 B and 1 KiB records, against a plain buffered write + fdatasync loop in the same
//! run; sequential read throughput; recovery time of a large stream.
//!
//! cargo run --release -p strait-storage --example store_bench -- \
//!     [--dir /tmp/strait-store-bench] [--seconds 3] [--recovery-mb 1024] [--recovery-size 1024]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use strait_storage::{FileStore, FileStoreConfig, Store, SyncPolicy};

struct Args {
    dir: PathBuf,
    seconds: f64,
    recovery_mb: u64,
    /// Payload bytes of the big stream's messages.
    recovery_size: usize,
}

fn args() -> Args {
    let mut a = Args {
        dir: PathBuf::from("/tmp/strait-store-bench"),
        seconds: 3.0,
        recovery_mb: 1024,
        recovery_size: 1024,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let val = v.get(i + 1).cloned().unwrap_or_default();
        match v[i].as_str() {
            "--dir" => a.dir = PathBuf::from(val),
            "--seconds" => a.seconds = val.parse().expect("--seconds"),
            "--recovery-mb" => a.recovery_mb = val.parse().expect("--recovery-mb"),
            "--recovery-size" => a.recovery_size = val.parse().expect("--recovery-size"),
            other => panic!("unknown flag {other}"),
        }
        i += 2;
    }
    a
}

fn fresh(dir: &Path, name: &str) -> FileStoreConfig {
    let d = dir.join(name);
    let _ = std::fs::remove_dir_all(&d);
    FileStoreConfig::new(name, d)
}

async fn appenders(cfg: FileStoreConfig, size: usize, conc: usize, secs: f64) -> (f64, f64, f64) {
    let s = Rc::new(FileStore::open(cfg.clone()).await.expect("open"));
    let payload = Rc::new(vec![0xabu8; size]);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..conc {
        let s = s.clone();
        let p = payload.clone();
        tasks.push(glommio::spawn_local(async move {
            let subj = format!("bench.{t}");
            let mut n = 0u64;
            while Instant::now() < deadline {
                s.append(&subj, b"", &p, n as i64, None)
                    .await
                    .expect("append");
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await;
    }
    let el = t0.elapsed().as_secs_f64();
    let batch = total as f64 / s.flush_count().max(1) as f64;
    s.close().await.expect("close");
    let _ = std::fs::remove_dir_all(&cfg.dir);
    (
        total as f64 / el,
        total as f64 * size as f64 / el / 1e6,
        batch,
    )
}

fn baseline(dir: &Path, size: usize, secs: f64) -> (f64, f64) {
    let path = dir.join("baseline.log");
    let mut f = std::fs::File::create(&path).expect("create");
    let rec = vec![0xabu8; size + 32];
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let t0 = Instant::now();
    let mut n = 0u64;
    while Instant::now() < deadline {
        f.write_all(&rec).expect("write");
        f.sync_data().expect("fdatasync");
        n += 1;
    }
    let el = t0.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    (n as f64 / el, n as f64 * size as f64 / el / 1e6)
}

fn main() {
    let a = args();
    std::fs::create_dir_all(&a.dir).expect("bench dir");
    let ex = glommio::LocalExecutorBuilder::default()
        .io_memory(2 << 20)
        .make()
        .expect("executor");
    ex.run(async move {
        println!("| record | appenders | appends/s | MB/s | appends per fdatasync |");
        println!("|---|---|---|---|---|");
        for size in [128usize, 1024] {
            let (bo, bm) = baseline(&a.dir, size, a.seconds);
            println!("| {size} B | baseline: buffered write + fdatasync loop | {bo:.0} | {bm:.2} | 1 |");
            for conc in [1usize, 16, 256] {
                let cfg = fresh(&a.dir, "append");
                let (ops, mb, batch) = appenders(cfg, size, conc, a.seconds).await;
                println!("| {size} B | {conc} | {ops:.0} | {mb:.2} | {batch:.1} |");
            }
        }

        // Large stream: filled with `recovery_size` records (interval sync to fill fast), then
        // read back sequentially, then reopened cold to time recovery.
        let mut cfg = fresh(&a.dir, "big");
        cfg.sync = SyncPolicy::Interval(Duration::from_millis(100));
        let size = a.recovery_size;
        let n = a.recovery_mb * (1 << 20) / (size as u64 + 64);
        let s = FileStore::open(cfg.clone()).await.expect("open big");
        let payload = vec![0x5au8; size];
        let t0 = Instant::now();
        for i in 0..n {
            s.append(&format!("big.{}", i % 100), b"", &payload, i as i64, None)
                .await
                .expect("append");
        }
        s.sync().await.expect("sync");
        let fill = t0.elapsed().as_secs_f64();
        println!();
        println!(
            "fill (interval sync): {n} x {size} B in {fill:.2} s = {:.0} appends/s, {:.0} MB/s",
            n as f64 / fill,
            n as f64 * size as f64 / fill / 1e6
        );
        let t0 = Instant::now();
        let mut seq = 1;
        let mut bytes = 0usize;
        let mut count = 0u64;
        while let Ok(m) = s.load_next(seq, "").await {
            bytes += m.payload.len();
            count += 1;
            seq = m.seq + 1;
        }
        let el = t0.elapsed().as_secs_f64();
        println!(
            "sequential read: {count} msgs in {el:.2} s = {:.0} msgs/s, {:.0} MB/s",
            count as f64 / el,
            bytes as f64 / el / 1e6
        );
        s.close().await.expect("close");
        drop(s);
        let on_disk: u64 = std::fs::read_dir(&cfg.dir)
            .expect("dir")
            .filter_map(|e| e.ok())
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        let t0 = Instant::now();
        let s = FileStore::open(cfg.clone()).await.expect("reopen");
        let el = t0.elapsed().as_secs_f64();
        let st = s.fast_state();
        let r = s.recovery_report();
        println!(
            "recovery: {} msgs, {:.0} MiB scanned ({:.0} MiB of files), {} segments, in {el:.2} s ({:.0} MB/s)",
            st.msgs,
            r.bytes_scanned as f64 / 1048576.0,
            on_disk as f64 / 1048576.0,
            r.segments,
            r.bytes_scanned as f64 / el / 1e6
        );
        s.close().await.expect("close");
        let _ = std::fs::remove_dir_all(&cfg.dir);
    });
}
