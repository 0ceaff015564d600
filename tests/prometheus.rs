//! A real Prometheus scrapes strait's /metrics; `promtool check metrics` accepts it.
//! Needs Debian's `prometheus` package (scripts/test.sh unpacks it under target/).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, KillOnDrop, Raw, Server, CONNECT};

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

#[test]
fn prometheus_scrapes_metrics() {
    let store = std::env::temp_dir().join(format!("strait-prom-js-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    let (server, http) =
        Server::start_monitored(None, &["-js", "-sd", store.to_str().expect("utf-8 path")]);
    let mut publ = Raw::connect(server.port);
    publ.send(CONNECT);
    for _ in 0..7 {
        publ.send(b"PUB p.x 2\r\nhi\r\n");
    }
    // A stream with three messages, each acknowledged (so stored) before the scrape.
    let config = br#"{"name":"ORDERS","subjects":["ORDERS.*"],"max_msgs":1000}"#;
    publ.send(b"SUB _INBOX.prom 1\r\n");
    publ.send(
        format!(
            "PUB $JS.API.STREAM.CREATE.ORDERS _INBOX.prom {}\r\n",
            config.len()
        )
        .as_bytes(),
    );
    publ.send(config);
    publ.send(b"\r\n");
    let answer = |publ: &mut Raw| {
        let line = publ.read_line();
        assert!(line.starts_with("MSG _INBOX.prom 1 "), "{line}");
        let len: usize = line.trim_end().rsplit(' ').next().unwrap().parse().unwrap();
        let body = publ.read_exact_n(len + 2);
        assert!(
            common::find(&body, b"\"error\"").is_none(),
            "{}",
            String::from_utf8_lossy(&body)
        );
    };
    answer(&mut publ);
    for _ in 0..3 {
        publ.send(b"PUB ORDERS.new _INBOX.prom 5\r\norder\r\n");
        answer(&mut publ);
    }

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
    // prometheus-nats-exporter named two stream gauges `*_count`, which promtool's
    // naming lint dislikes; dashboards query those names, so strait keeps them. Any
    // other complaint (a parse error, another lint) fails.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let exporter_names = [
        "jetstream_stream_consumer_count non-histogram and non-summary metrics should not have \"_count\" suffix",
        "jetstream_stream_subject_count non-histogram and non-summary metrics should not have \"_count\" suffix",
    ];
    let other: Vec<&str> = said
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !exporter_names.contains(l))
        .collect();
    assert!(
        other.is_empty() && (out.status.success() || said.contains(exporter_names[0])),
        "promtool: {said}"
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
    let _prom = KillOnDrop(
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
    let body = http_get(http, "/metrics");
    for line in [
        "jetstream_server_total_streams{",
        "jetstream_server_jetstream_disabled{",
        "jetstream_account_storage_used{",
        "jetstream_stream_limit_messages{",
    ] {
        assert!(body.contains(line), "no {line} in:\n{body}");
    }
    assert!(
        body.lines()
            .any(|l| l.starts_with("jetstream_stream_total_messages{")
                && l.contains(
                    ",account=\"$G\",account_name=\"$G\",account_id=\"$G\",stream_name=\"ORDERS\","
                )
                && l.contains("is_stream_leader=\"true\"")
                && l.ends_with("} 3")),
        "{body}"
    );
    assert!(
        body.lines()
            .any(|l| l.starts_with("jetstream_stream_limit_messages{") && l.ends_with("} 1000")),
        "{body}"
    );

    // Every series deploy/'s Grafana dashboard plots is one strait exports.
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../deploy/grafana/strait-dashboard.json"))
            .expect("dashboard JSON");
    let exprs: Vec<&str> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    assert!(
        exprs.iter().any(|e| e.contains("jetstream_")),
        "no JetStream row"
    );
    for expr in exprs {
        for name in expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| {
                ["gnatsd_", "jetstream_", "strait_"]
                    .iter()
                    .any(|p| w.starts_with(p))
            })
        {
            assert!(
                body.lines().any(|l| l.starts_with(&format!("{name}{{"))),
                "the dashboard plots {name} ({expr}), which /metrics does not have"
            );
        }
    }

    // Nothing moves any more: what Prometheus stores is what /varz says.
    let in_msgs = common::http_json(http, "/varz")["in_msgs"]
        .as_u64()
        .expect("in_msgs");
    assert!(in_msgs >= 7, "{in_msgs}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = http_get(prom_port, "/api/v1/query?query=gnatsd_varz_in_msgs");
        if answer.contains("\"value\":[") {
            assert!(answer.contains(&format!("\"{in_msgs}\"]")), "{answer}");
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
    // The dashboard's JetStream row reads these, by these labels.
    let query =
        "/api/v1/query?query=jetstream_stream_total_messages%7Bstream_name%3D%22ORDERS%22%7D";
    loop {
        let answer = http_get(prom_port, query);
        if answer.contains("\"value\":[") {
            assert!(answer.contains("\"3\"]"), "{answer}");
            assert!(answer.contains("\"account\":\"$G\""), "{answer}");
            break;
        }
        assert!(Instant::now() < deadline, "no JetStream series: {answer}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let _ = std::fs::remove_dir_all(&store);
}
