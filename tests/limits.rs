//! Limits and liveness, configured through a configuration file as in the
//! nats-server v2.14's captured answers.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{Raw, Server, CONNECT};

#[test]
fn max_connections() {
    let server = Server::start_with_config(Some("max_connections: 2\n"), &[]);
    let mut a = Raw::connect(server.port);
    let mut b = Raw::connect(server.port);
    a.send(CONNECT);
    b.send(CONNECT);
    a.ping_sync();
    b.ping_sync();
    let mut third = Raw::connect(server.port);
    let (out, closed) = third.read_until_close(Duration::from_secs(5));
    assert_eq!(out, b"-ERR 'maximum connections exceeded'\r\n");
    assert!(closed);
    // Closing one frees a slot.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = Raw::connect(server.port);
        let _ = c.stream.write_all(b"PING\r\n");
        let line = c.read_line();
        if line == "PONG\r\n" {
            break;
        }
        assert!(Instant::now() < deadline, "slot was not freed: {line}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn max_subscriptions() {
    let server = Server::start_with_config(Some("max_subscriptions: 2\n"), &[]);
    let mut raw = Raw::connect(server.port);
    raw.send(CONNECT);
    raw.send(b"SUB a 1\r\nSUB b 2\r\nSUB c 3\r\n");
    assert_eq!(
        raw.ping_sync(),
        b"-ERR 'maximum subscriptions exceeded'\r\n"
    );
    // The connection stays open and the first two subscriptions work.
    raw.send(b"PUB b 1\r\nx\r\nPUB c 1\r\ny\r\n");
    assert_eq!(raw.ping_sync(), b"MSG b 2 1\r\nx\r\n");
}

#[test]
fn stale_connection() {
    let server = Server::start_with_config(Some("ping_interval: \"1s\"\nping_max: 2\n"), &[]);
    let mut raw = Raw::connect(server.port);
    raw.send(CONNECT);
    let start = Instant::now();
    let (out, closed) = raw.read_until_close(Duration::from_secs(8));
    let elapsed = start.elapsed();
    assert!(closed);
    assert_eq!(
        common::strip_info(out),
        b"PING\r\nPING\r\n-ERR 'Stale Connection'\r\n"
    );
    assert!(
        elapsed >= Duration::from_millis(2500) && elapsed < Duration::from_secs(5),
        "closed after {elapsed:?}"
    );
}

#[test]
fn server_pings_and_client_pongs_keep_connection() {
    let server = Server::start_with_config(Some("ping_interval: \"1s\"\nping_max: 2\n"), &[]);
    let mut raw = Raw::connect(server.port);
    raw.send(CONNECT);
    for _ in 0..4 {
        let line = raw.read_line();
        assert_eq!(line, "PING\r\n");
        raw.send(b"PONG\r\n");
    }
}

#[test]
fn max_payload_from_config() {
    let server = Server::start_with_config(Some("max_payload: 512\n"), &[]);
    let raw = Raw::connect(server.port);
    assert!(raw.info.contains("\"max_payload\":512"), "{}", raw.info);
    let mut raw = Raw::connect(server.port);
    raw.send(CONNECT);
    raw.send(b"PUB foo 513\r\n");
    let (out, closed) = raw.read_until_close(Duration::from_secs(5));
    assert_eq!(out, b"-ERR 'Maximum Payload Violation'\r\n");
    assert!(closed);
}

/// A subscriber with a tiny receive buffer that stops reading once its SUB is in
/// place (its PONG read).
fn stuck_subscriber(port: u16, name: &str) -> std::net::TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket
        .connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    let mut stream: std::net::TcpStream = socket.into();
    let connect = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"name\":\"{name}\",\"lang\":\"raw\",\"version\":\"1\"}}\r\nSUB big.> 1\r\nPING\r\n"
    );
    stream.write_all(connect.as_bytes()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut seen = Vec::new();
    while common::find(&seen, b"PONG\r\n").is_none() {
        let mut chunk = [0u8; 512];
        let n = std::io::Read::read(&mut stream, &mut chunk).expect("read the PONG");
        assert!(n > 0, "closed before PONG");
        seen.extend_from_slice(&chunk[..n]);
    }
    stream
}

fn flood(port: u16, count: usize, size: usize) {
    let mut publisher = Raw::connect(port);
    publisher.send(CONNECT);
    let mut frame = format!("PUB big.x {size}\r\n").into_bytes();
    frame.extend(std::iter::repeat_n(b'y', size));
    frame.extend_from_slice(b"\r\n");
    for _ in 0..count {
        publisher.send(&frame);
    }
    publisher.ping_sync();
}

#[test]
fn slow_consumer_max_pending() {
    let server = Server::start_with_config(
        Some("max_pending: 262144\nmax_payload: 65536\n"),
        &["--shards", "1"],
    );
    let _slow = stuck_subscriber(server.port, "slow-sub");
    flood(server.port, 500, 60_000);
    assert!(
        server.wait_for_log(
            "\"v1:raw:slow-sub\" - Slow Consumer Detected: MaxPending of 262144 Exceeded",
            Duration::from_secs(10)
        ),
        "{}",
        server.log_text()
    );
    assert!(server.log_text().contains("[INF] 127.0.0.1:"));
}

#[test]
fn slow_consumer_write_deadline() {
    let server = Server::start_with_config(
        Some("write_deadline: \"1s\"\nmax_pending: 268435456\n"),
        &["--shards", "1"],
    );
    let _slow = stuck_subscriber(server.port, "slow-sub-wd");
    flood(server.port, 200, 60_000);
    assert!(
        server.wait_for_log(
            "\"v1:raw:slow-sub-wd\" - Slow Consumer Detected: WriteDeadline of 1s exceeded with",
            Duration::from_secs(10)
        ),
        "{}",
        server.log_text()
    );
}

fn run_strait(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_strait"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn config_errors_are_clear() {
    let dir = std::env::temp_dir().join(format!("strait-conf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.conf");
    std::fs::write(&bad, "port: 4222\nbogus: true\n").unwrap();
    let out = run_strait(&["-c", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.conf:2:1: unknown field \"bogus\""),
        "{err}"
    );

    // A lexer error in nats-server's words ("Parse error on line N: '...'"), which
    // test harnesses look for; the column follows.
    let syntax = dir.join("syntax.conf");
    std::fs::write(&syntax, "port: 4222\nfoo = \"bar\" \"baz\"\n").unwrap();
    for args in [&["-t", "-c"][..], &["-c"][..]] {
        let mut args = args.to_vec();
        args.push(syntax.to_str().unwrap());
        let out = run_strait(&args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("Parse error on line 2: 'Expected a top-level value to end with a new line, comment or EOF, but got '\"' instead.'"),
            "{err}"
        );
    }

    let cluster = dir.join("cluster.conf");
    std::fs::write(&cluster, "cluster {\n  port: 6222\n}\n").unwrap();
    let out = run_strait(&["-c", cluster.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cluster.conf:1:1: cluster: not supported by strait yet"),
        "{err}"
    );

    // An import the exporter does not allow stops the server with nats-server's text.
    let accounts = dir.join("accounts.conf");
    std::fs::write(
        &accounts,
        "accounts {\n  A: { imports: [ {stream: {account: B, subject: foo}} ] }\n  B: { exports: [ {stream: bar} ] }\n}\n",
    )
    .unwrap();
    let out = run_strait(&["-c", accounts.to_str().unwrap(), "-t"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Error adding stream import \"foo\": stream import not authorized"),
        "{err}"
    );

    let good = dir.join("good.conf");
    std::fs::write(&good, "listen: 127.0.0.1:4999\nmax_payload: 128KB\n").unwrap();
    let out = run_strait(&["-c", good.to_str().unwrap(), "-t"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("is valid"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn flags_override_config() {
    let server = Server::start_with_config(
        Some("server_name: from-file\nport: 4999\n"),
        &["-n", "from-flag"],
    );
    let raw = Raw::connect(server.port);
    assert!(
        raw.info.contains("\"server_name\":\"from-flag\""),
        "{}",
        raw.info
    );
    assert_ne!(server.port, 4999);
}

fn max_payload_in_info(port: u16) -> String {
    let raw = Raw::connect(port);
    let info: serde_json::Value = serde_json::from_str(raw.info[5..].trim()).unwrap();
    info["max_payload"].to_string()
}

#[test]
fn reload_applies_new_limits_and_logging() {
    let server = Server::start_with_config(Some("max_payload: 1024\n"), &[]);
    assert_eq!(max_payload_in_info(server.port), "1024");
    let conf = server.dir.join("strait.conf");
    std::fs::write(&conf, "max_payload: 2048\ndebug: true\n").unwrap();
    server.signal("reload");
    assert!(server.wait_for_log("Reloaded server configuration", Duration::from_secs(5)));
    // Shards pick the snapshot up on their next tick.
    let deadline = Instant::now() + Duration::from_secs(5);
    while max_payload_in_info(server.port) != "2048" {
        assert!(Instant::now() < deadline, "reload not applied");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Debug logging is on now.
    assert!(server.wait_for_log("Client connection created", Duration::from_secs(5)));
}

#[test]
fn refused_reload_keeps_running_config() {
    let server = Server::start_with_config(Some("max_payload: 1024\n"), &[]);
    let conf = server.dir.join("strait.conf");
    std::fs::write(&conf, "max_payload: 4096\nmax_pending: 1000\n").unwrap();
    server.signal("reload");
    assert!(server.wait_for_log(
        "Failed to reload server configuration: max_payload (4096) cannot be higher than max_pending (1000)",
        Duration::from_secs(5)
    ));
    std::fs::write(&conf, "max_payload: 2048\nbogus: 1\n").unwrap();
    server.signal("reload");
    assert!(server.wait_for_log("unknown field \"bogus\"", Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(max_payload_in_info(server.port), "1024");
}

#[test]
fn ports_file_is_written_and_removed() {
    let dir = std::env::temp_dir().join(format!("strait-ports-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let server = Server::start(&["--ports_file_dir", dir.to_str().unwrap()]);
    let path = dir.join(format!("strait_{}.ports", server.pid()));
    let ports: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        ports["nats"],
        serde_json::json!([format!("nats://127.0.0.1:{}", server.port)])
    );
    assert!(server.terminate().success());
    assert!(!path.exists(), "ports file left behind");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn log_file_rotates_at_size_limit() {
    let server = Server::start_with_config(
        Some("logfile_size_limit: 2KB\nlogfile_max_num: 3\ntrace: true\n"),
        &[],
    );
    // What logrotate or an operator left beside the log is not strait's to prune.
    let foreign = ["strait.log.1.gz", "strait.log.old", "strait.log.2026.01.01"];
    for name in foreign {
        std::fs::write(server.dir.join(name), "not strait's").unwrap();
    }
    let mut raw = Raw::connect(server.port);
    raw.send(CONNECT);
    for i in 0..200 {
        raw.send(format!("PUB rotate.{i} 10\r\n0123456789\r\n").as_bytes());
    }
    raw.ping_sync();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let backups: Vec<_> = std::fs::read_dir(&server.dir)
            .unwrap()
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("strait.log.") && !foreign.contains(&name.as_str())
            })
            .collect();
        // At most logfile_max_num files in all: the live one plus two backups.
        if backups.len() == 2 {
            for name in foreign {
                assert!(server.dir.join(name).exists(), "{name} was removed");
            }
            assert!(server.log_text().contains("Rotated log, backup saved as"));
            assert!(std::fs::metadata(&server.log).unwrap().len() < 4096);
            break;
        }
        assert!(backups.len() <= 2, "too many backups: {}", backups.len());
        assert!(Instant::now() < deadline, "log never rotated");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn lame_duck_mode_ends_with_exit_zero() {
    let mut server = Server::start_with_config(
        Some("lame_duck_grace_period: \"200ms\"\nlame_duck_duration: \"1s\"\n"),
        &[],
    );
    let mut raw = Raw::connect(server.port);
    raw.send(CONNECT);
    raw.ping_sync();
    // SAFETY: kill(2) with the pid of the child we started.
    unsafe {
        libc::kill(server.pid() as i32, libc::SIGUSR2);
    }
    let (out, closed) = raw.read_until_close(Duration::from_secs(5));
    assert!(closed, "client not closed during lame duck mode");
    assert!(String::from_utf8_lossy(&out).contains("\"ldm\":true"));
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("server did not exit after lame duck mode");
    assert!(status.success(), "{status}");
}

#[test]
fn lame_duck_mode_closes_few_clients_at_most_a_second_apart() {
    let mut server = Server::start_with_config(
        Some("lame_duck_grace_period: \"1s\"\nlame_duck_duration: \"30s\"\n"),
        &[],
    );
    let mut clients: Vec<Raw> = (0..2).map(|_| Raw::connect(server.port)).collect();
    for raw in &mut clients {
        raw.send(CONNECT);
        raw.ping_sync();
    }
    let start = Instant::now();
    server.signal("ldm");
    for raw in &mut clients {
        let left = Duration::from_secs(5).saturating_sub(start.elapsed());
        let (_, closed) = raw.read_until_close(left);
        assert!(
            closed,
            "a client was still connected after {:?}",
            start.elapsed()
        );
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("server did not exit after its last client");
    assert!(status.success(), "{status}");
}

#[test]
fn remote_syslog() {
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sink.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let port = sink.local_addr().unwrap().port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_strait"))
        .args(["-a", "127.0.0.1", "-p", "-1", "--shards", "1", "-r"])
        .arg(format!("udp://127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut lines = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let Ok(n) = sink.recv(&mut buf) else { break };
        let line = String::from_utf8_lossy(&buf[..n]).into_owned();
        let ready = line.contains("Server is ready");
        lines.push(line);
        if ready {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    // Facility daemon, priority info; syslog adds time and pid, the text is nats-server's.
    assert!(
        lines.contains(&format!("<30>strait[{pid}]: [INF] Server is ready")),
        "{lines:#?}"
    );
}
