//! The profiling endpoint (`prof_port`, `--profile`) from the real binary under
//! load: CPU and heap profiles decoded as pprof protobuf, the index, the answers
//! nats-server (Go) gives for a second CPU profile and for unknown profiles.

mod common;

// The profile.proto messages strait writes, read back here.
#[path = "../src/profile_proto.rs"]
mod profile_proto;

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Raw, Server, CONNECT};
use prost::Message;

fn get(port: u16, path: &str) -> (u16, Vec<u8>) {
    let (status, _, body) = common::http_get_bytes(port, path, Duration::from_secs(30));
    (status, body)
}

fn decode(gzipped: &[u8]) -> profile_proto::Profile {
    assert_eq!(&gzipped[..2], b"\x1f\x8b", "not gzip");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gzipped)
        .read_to_end(&mut raw)
        .unwrap();
    profile_proto::Profile::decode(&raw[..]).expect("a pprof profile")
}

fn profiling_port(server: &Server) -> u16 {
    assert!(server.wait_for_log("profiling port: ", Duration::from_secs(5)));
    let log = server.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("profiling port: "))
        .unwrap();
    line.rsplit(' ').next().unwrap().trim().parse().unwrap()
}

/// Publishes to a subscriber as fast as it can until stopped.
fn load(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut sub = Raw::connect(port);
        sub.send(CONNECT);
        sub.send(b"SUB load.> 1\r\n");
        sub.ping_sync();
        let reader = std::thread::spawn({
            let mut stream = sub.stream.try_clone().unwrap();
            let stop = stop.clone();
            move || {
                let mut chunk = vec![0u8; 1 << 16];
                while !stop.load(Ordering::Relaxed) {
                    if stream.read(&mut chunk).unwrap_or(0) == 0 {
                        break;
                    }
                }
            }
        });
        let mut publisher = Raw::connect(port);
        publisher.send(CONNECT);
        let batch: Vec<u8> = (0..200)
            .flat_map(|i| format!("PUB load.{} 16\r\n0123456789abcdef\r\n", i % 7).into_bytes())
            .collect();
        while !stop.load(Ordering::Relaxed) {
            publisher.send(&batch);
            publisher.ping_sync();
        }
        drop(sub);
        let _ = reader.join();
    })
}

#[test]
fn cpu_and_heap_profiles_under_load() {
    let server = Server::start(&["--profile", "-1"]);
    let prof = profiling_port(&server);
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(server.port, stop.clone());

    let (status, index) = get(prof, "/debug/pprof/");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&index).contains("profile"));

    // A second CPU profile while one is running is refused, as Go refuses it.
    let second = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        get(prof, "/debug/pprof/profile?seconds=1")
    });
    let started = Instant::now();
    let (status, body) = get(prof, "/debug/pprof/profile?seconds=2");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(started.elapsed() >= Duration::from_secs(2));
    let (refused, text) = second.join().unwrap();
    assert_eq!(refused, 500);
    assert_eq!(
        String::from_utf8_lossy(&text),
        "Could not enable CPU profiling: cpu profiling already in use\n"
    );

    let cpu = decode(&body);
    let strings = &cpu.string_table;
    let s = |i: i64| strings[i as usize].as_str();
    assert_eq!(
        cpu.sample_type
            .iter()
            .map(|t| (s(t.r#type), s(t.unit)))
            .collect::<Vec<_>>(),
        [("samples", "count"), ("cpu", "nanoseconds")]
    );
    assert!(!cpu.sample.is_empty(), "no CPU samples");
    let names: Vec<&str> = cpu.function.iter().map(|f| s(f.name)).collect();
    for hot in ["strait_shards::proto::", "strait_shards::shard::Shard::"] {
        assert!(
            names.iter().any(|n| n.contains(hot)),
            "no {hot} function among {} functions",
            names.len()
        );
    }
    let threads: Vec<&str> = cpu
        .sample
        .iter()
        .flat_map(|smp| smp.label.iter().map(|l| s(l.str)))
        .collect();
    assert!(
        threads.iter().any(|t| t.starts_with("shard-")),
        "{threads:?}"
    );

    // An allocation burst: many subscriptions, kept while the heap is dumped.
    let mut subs = Raw::connect(server.port);
    subs.send(CONNECT);
    let burst: Vec<u8> = (0..50_000)
        .flat_map(|i| format!("SUB burst.{i}.x {i}\r\n").into_bytes())
        .collect();
    subs.send(&burst);
    subs.ping_sync();
    for path in ["/debug/pprof/heap", "/debug/pprof/allocs"] {
        let (status, body) = get(prof, path);
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
        let heap = decode(&body);
        let live: i64 = heap.sample.iter().filter_map(|smp| smp.value.last()).sum();
        assert!(
            !heap.sample.is_empty() && live > 0,
            "{path}: no heap samples"
        );
    }
    let (status, body) = get(prof, "/debug/pprof/goroutine");
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).starts_with("Unknown profile: goroutine"));

    stop.store(true, Ordering::Relaxed);
    loader.join().unwrap();
}

#[test]
fn prof_port_in_the_ports_file_and_not_reloadable() {
    let dir = std::env::temp_dir().join(format!("strait-prof-ports-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (server, http) = Server::start_monitored(
        Some("prof_port: -1\n"),
        &["--ports_file_dir", dir.to_str().unwrap()],
    );
    let prof = profiling_port(&server);
    let ports_file = dir.join(format!("strait_{}.ports", server.pid()));
    let ports: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ports_file).unwrap()).unwrap();
    assert_eq!(ports["profile"][0], format!("http://127.0.0.1:{prof}"));
    // A monitoring port picked at start (-m -1) is listed too, as nats-server lists it.
    assert_eq!(ports["monitoring"][0], format!("http://127.0.0.1:{http}"));
    assert_eq!(
        common::http_json(http, "/varz")["strait"]["profile_port"],
        prof
    );
    std::fs::write(server.dir.join("strait.conf"), "prof_port: 1\n").unwrap();
    server.signal("reload");
    assert!(server.wait_for_log(
        "config reload not supported for ProfPort: old=-1, new=1",
        Duration::from_secs(5)
    ));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
