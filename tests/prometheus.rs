//! A real Prometheus scrapes strait's /metrics; `promtool check metrics` accepts it.
//! Needs Debian's `prometheus` package (scripts/test.sh unpacks it under target/).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, Raw, Server, CONNECT};

fn http_get(port: u16, path: &str) -> String {
    common::http_get(port, path).2
}

/// Where scripts/test.sh unpacked Prometheus (`STRAIT_PROMETHEUS_BIN`), else the
/// system's.
fn tool(name: &str) -> std::path::PathBuf {
    let unpacked = std::env::var_os("STRAIT_PROMETHEUS_BIN").map(std::path::PathBuf::from);
    let system = ["/usr/bin", "/usr/local/bin"].map(std::path::PathBuf::from);
    for dir in unpacked.into_iter().chain(system) {
        let p = dir.join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not found: run scripts/test.sh, which fetches Debian's prometheus package");
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn prometheus_scrapes_metrics() {
    let (server, http) = Server::start_monitored(None, &[]);
    let mut publ = Raw::connect(server.port);
    publ.send(CONNECT);
    for _ in 0..7 {
        publ.send(b"PUB p.x 2\r\nhi\r\n");
    }
    publ.ping_sync();

    // promtool lints the exposition.
    let body = http_get(http, "/metrics");
    let mut check = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A real Prometheus on loopback scrapes it.
    let prom_port = free_port();
    let dir = server.dir.join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: strait\n    static_configs:\n      - targets: [\"127.0.0.1:{http}\"]\n"
        ),
    )
    .unwrap();
    let _prom = Kill(
        Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = http_get(prom_port, "/api/v1/query?query=gnatsd_varz_in_msgs");
        if answer.contains("\"value\":[") {
            assert!(answer.contains("\"7\"]"), "{answer}");
            assert!(
                answer.contains(&format!("\"instance\":\"127.0.0.1:{http}\"")),
                "{answer}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped strait: {answer}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
