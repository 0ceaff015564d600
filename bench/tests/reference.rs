//! Runs the harness against the reference nats-server
//! (scripts/reference-server.sh installs it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use strait_bench::run::{self, Progress, Target};
use strait_bench::scenario::{JsAck, Kind, Limit, Scenario};
use strait_bench::server::{ServerProc, ServerSpec};

/// The reference binary: `STRAIT_REFERENCE_SERVER` (scripts/test.sh sets it),
/// `STRAIT_BENCH_REFERENCE`, or what `scripts/reference-server.sh` installs. A test
/// that cannot have it fails with the reason; scripts/test.sh skips it only when
/// `STRAIT_SKIP_REFERENCE=1` asks, and says so.
fn reference_server() -> PathBuf {
    for var in ["STRAIT_REFERENCE_SERVER", "STRAIT_BENCH_REFERENCE"] {
        if let Some(p) = std::env::var_os(var) {
            return PathBuf::from(p);
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/reference-server.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "the reference nats-server could not be installed ({}): {}\n\
         (STRAIT_SKIP_REFERENCE=1 scripts/test.sh skips the *_vs_nats_server tests)",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn scenario(kind: Kind, publishers: usize, subs: usize, queue: bool, limit: Limit) -> Scenario {
    Scenario {
        name: format!("{kind:?}"),
        kind,
        size: 16,
        publishers,
        subs,
        queue,
        limit,
        window: None,
    }
}

#[test]
fn harness_vs_nats_server() {
    let bin = reference_server();
    let spec = ServerSpec {
        name: "ref".into(),
        command: vec![bin.to_string_lossy().into_owned()],
    };
    let srv = ServerProc::start(&spec).expect("start reference server");
    assert!(srv.idle_rss_kb(Duration::ZERO).expect("idle rss") > 0);
    let target = Target {
        endpoint: srv.endpoint(),
        pid: Some(srv.pid),
    };
    let progress = Progress::new("[test]");
    let count = Limit::Count(20_000);

    let r = run::run(
        &target,
        &scenario(Kind::PubSub, 1, 1, false, count),
        &progress,
    )
    .expect("1:1");
    assert_eq!((r.published, r.delivered, r.lost), (20_000, 20_000, 0));
    let s = r.server.expect("server usage");
    assert!(s.peak_rss_kb > 0 && s.cpu_s >= 0.0);

    let r = run::run(
        &target,
        &scenario(Kind::PubSub, 2, 4, false, count),
        &progress,
    )
    .expect("fan-out");
    assert_eq!((r.published, r.delivered, r.lost), (40_000, 160_000, 0));

    let r = run::run(
        &target,
        &scenario(Kind::PubSub, 1, 4, true, count),
        &progress,
    )
    .expect("queue");
    assert_eq!((r.published, r.delivered, r.lost), (20_000, 20_000, 0));

    // A window smaller than a batch is raised to one batch: heavy flow control.
    let mut tight = scenario(Kind::PubSub, 1, 2, false, Limit::Count(50_000));
    tight.window = Some(1);
    tight.size = 1024;
    let r = run::run(&target, &tight, &progress).expect("tight window");
    assert_eq!((r.delivered, r.lost), (100_000, 0));

    let r = run::run(&target, &scenario(Kind::Pub, 2, 0, false, count), &progress).expect("pub");
    assert_eq!((r.published, r.msgs), (40_000, 40_000));

    let r = run::run(
        &target,
        &scenario(Kind::ReqRep, 1, 1, false, Limit::Count(500)),
        &progress,
    )
    .expect("reqrep");
    let l = r.latency.expect("latency");
    assert_eq!(l.count, 500);
    assert!(l.p50_us > 0.0 && l.p50_us <= l.p99_us && l.p99_us <= l.max_us);

    let r = run::run(
        &target,
        &scenario(
            Kind::PubSub,
            1,
            1,
            false,
            Limit::Duration(Duration::from_millis(300)),
        ),
        &progress,
    )
    .expect("timed");
    assert!(r.msgs > 0 && r.elapsed_s >= 0.3 && r.lost == 0);

    // Without JetStream the stream cannot be created, and the run says why.
    let js = scenario(Kind::JsPub { ack: JsAck::Sync }, 1, 0, false, count);
    let err = run::run(&target, &js, &progress).expect_err("no JetStream on this server");
    assert!(
        format!("{err:#}").contains("is JetStream enabled"),
        "{err:#}"
    );
}

#[test]
fn jetstream_scenarios_vs_nats_server() {
    let bin = reference_server();
    let spec = |name: &str| ServerSpec {
        name: name.into(),
        command: vec![
            bin.to_string_lossy().into_owned(),
            "-js".into(),
            "-sd".into(),
            "js".into(),
        ],
    };
    let srv = ServerProc::start(&spec("ref")).expect("start reference server");
    let target = Target {
        endpoint: srv.endpoint(),
        pid: Some(srv.pid),
    };
    let progress = Progress::new("[test]");

    let mut one = scenario(
        Kind::JsPub { ack: JsAck::Sync },
        1,
        0,
        false,
        Limit::Count(200),
    );
    one.size = 128;
    let r = run::run(&target, &one, &progress).expect("sync acks");
    assert_eq!((r.published, r.msgs, r.lost), (200, 200, 0));
    let l = r.latency.expect("ack latency");
    assert_eq!(l.count, 200);
    assert!(l.p50_us > 0.0 && l.p50_us <= l.max_us);

    let windowed = scenario(
        Kind::JsPub {
            ack: JsAck::Async { window: 64 },
        },
        3,
        0,
        false,
        Limit::Count(2_000),
    );
    let r = run::run(&target, &windowed, &progress).expect("windowed acks");
    assert_eq!((r.published, r.msgs, r.lost), (6_000, 6_000, 0));
    if let Some(d) = r.disk {
        assert!(d.per_s >= 0.0 && d.msgs_per_flush.is_none_or(|m| m > 0.0));
    }
    drop(srv);

    // Restart and many-streams runs, the reference against itself.
    let servers = vec![spec("ref-a"), spec("ref-b")];
    let runs = strait_bench::js::run_restart(&strait_bench::js::RestartOptions {
        servers: servers.clone(),
        messages: 20_000,
        size: 128,
        publishers: 2,
        window: 256,
    })
    .expect("restart runs");
    assert_eq!(runs.len(), 2);
    for r in &runs {
        assert_eq!(r.messages, 20_000);
        assert_eq!((r.after_kill.found, r.after_stop.found), (20_000, 20_000));
        assert!(r.store_bytes > 20_000 * 128, "{} bytes", r.store_bytes);
        assert!(r.after_kill.seconds > 0.0 && r.after_stop.seconds > 0.0);
    }
    assert!(strait_bench::js::restart_table(&runs).contains("restart speed-up ref-a/ref-b"));

    let runs = strait_bench::js::run_streams(&strait_bench::js::StreamsOptions {
        servers,
        streams: 20,
        messages: 50,
        size: 128,
        settle: Duration::from_millis(100),
    })
    .expect("streams runs");
    assert!(runs.iter().all(|r| r.streams == 20 && r.rss_kb > 0));
}

#[test]
fn compare_cli_vs_nats_server() {
    let bin = reference_server();
    let dir = std::env::temp_dir().join(format!("strait-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let (json, csv, svg) = (
        dir.join("out.json"),
        dir.join("out.csv"),
        dir.join("out.svg"),
    );
    let a = format!("a={}", bin.display());
    let b = format!("b={}", bin.display());
    let out = Command::new(env!("CARGO_BIN_EXE_strait-bench"))
        .args(["compare", "--server", &a, "--server", &b, "--reps", "2"])
        .args(["--duration", "200ms", "--settle", "10ms"])
        .args(["--scenarios", "pubsub-16,reqrep-16"])
        .arg("--json")
        .arg(&json)
        .arg("--csv")
        .arg(&csv)
        .arg("--plot")
        .arg(&svg)
        .output()
        .expect("run strait-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "compare failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("pubsub-16") && stdout.contains("p99 us") && stdout.contains("idle RSS")
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("valid json");
    assert_eq!(report["runs"].as_array().map(Vec::len), Some(8));
    let rows = report["rows"].as_array().expect("rows");
    let rate = rows
        .iter()
        .find(|r| r["scenario"] == "pubsub-16" && r["metric"] == "msgs/s")
        .expect("rate row");
    assert!(rate["ratio"].as_f64().expect("ratio") > 0.0);
    assert_eq!(rate["goal"]["ratio"].as_f64(), Some(2.0));
    let csv_body = std::fs::read_to_string(&csv).expect("csv");
    assert_eq!(csv_body.lines().count(), 9);
    assert!(dir.join("out-summary.csv").exists());
    assert!(std::fs::read_to_string(&svg).expect("svg").contains("<svg"));
    let _ = std::fs::remove_dir_all(&dir);
}
