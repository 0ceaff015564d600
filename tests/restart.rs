//! Restarting on the same ports, as systemd's `Restart=`, rolling upgrades and test
//! harnesses do: at once after a stop (connections left in TIME_WAIT) and at once
//! after a crash (the dead process's listeners linger while the kernel tears its
//! io_uring down). A second live server on the same port is still refused, promptly
//! and with nats-server's words.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{http_get, Raw, CONNECT};

struct Proc {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &std::path::Path, tag: &str, port: i32, http: Option<i32>) -> Proc {
    let log = dir.join(format!("{tag}.log"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strait"));
    cmd.args(["-a", "127.0.0.1", "--shards", "2", "-p", &port.to_string()]);
    if let Some(http) = http {
        cmd.args(["-m", &http.to_string()]);
    }
    let child = cmd
        .arg("-l")
        .arg(&log)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strait");
    Proc { child, log }
}

/// Waits for "Server is ready" and returns the client and monitoring ports.
fn ready(p: &mut Proc) -> (u16, u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(&p.log).unwrap_or_default();
        if text.contains("Server is ready") {
            let port_after = |needle: &str| -> u16 {
                let line = text.lines().find(|l| l.contains(needle)).expect(needle);
                line.rsplit(':').next().unwrap().trim().parse().unwrap()
            };
            return (
                port_after("Listening for client connections on"),
                port_after("Starting http monitor on"),
            );
        }
        if let Ok(Some(status)) = p.child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = p.child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("strait exited with {status} at start: {err}\n{text}");
        }
        assert!(Instant::now() < deadline, "strait did not start:\n{text}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for a server that must fail to start and returns what it printed.
fn refusal(mut p: Proc) -> String {
    let status = p.child.wait().unwrap();
    assert!(!status.success(), "a second server started");
    let mut err = String::new();
    p.child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    err
}

/// Clients and a scrape, so that the stop leaves connections in TIME_WAIT on the
/// server's ports.
fn use_server(port: u16, http: u16) -> Vec<Raw> {
    let clients: Vec<Raw> = (0..4)
        .map(|_| {
            let mut raw = Raw::connect(port);
            raw.send(CONNECT);
            raw.send(b"SUB restart.> 1\r\nPUB restart.x 2\r\nhi\r\n");
            assert_eq!(raw.ping_sync(), b"MSG restart.x 1 2\r\nhi\r\n");
            raw
        })
        .collect();
    let (status, _, body) = http_get(http, "/varz");
    assert_eq!(status, 200, "{body}");
    clients
}

#[test]
fn restarts_at_once_on_the_same_ports_after_stop_and_crash() {
    let dir = std::env::temp_dir().join(format!("strait-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut first = spawn(&dir, "start-0", -1, Some(-1));
    let (port, http) = ready(&mut first);
    let mut current = first;
    for cycle in 1..=20 {
        let clients = use_server(port, http);
        if cycle % 2 == 0 {
            // SAFETY: kill(2) with the pid of a child we spawned and have not reaped.
            unsafe { libc::kill(current.child.id() as i32, libc::SIGKILL) };
        } else {
            // SAFETY: as above.
            unsafe { libc::kill(current.child.id() as i32, libc::SIGTERM) };
        }
        let status = current.child.wait().unwrap();
        assert!(
            cycle % 2 == 0 || status.success(),
            "cycle {cycle}: SIGTERM exit {status}"
        );
        drop(clients);
        let started = Instant::now();
        let mut next = spawn(
            &dir,
            &format!("start-{cycle}"),
            port as i32,
            Some(http as i32),
        );
        assert_eq!(
            ready(&mut next),
            (port, http),
            "cycle {cycle}: restart did not get the same ports"
        );
        eprintln!(
            "cycle {cycle} ({}): ready again after {:?}",
            if cycle % 2 == 0 { "SIGKILL" } else { "SIGTERM" },
            started.elapsed()
        );
        current = next;
    }
    // The last one still serves.
    drop(use_server(port, http));

    // A second live server on the client port: refused at once, nats-server's words.
    let started = Instant::now();
    let err = refusal(spawn(&dir, "second", port as i32, None));
    let expected = format!(
        "Error listening on port: 127.0.0.1:{port}, \"listen tcp 127.0.0.1:{port}: bind: address already in use\""
    );
    assert!(err.contains(&expected), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // And on the monitoring port.
    let err = refusal(spawn(&dir, "third", -1, Some(http as i32)));
    let expected = format!(
        "Can't start monitoring: can't listen to the monitor port: listen tcp 127.0.0.1:{http}: bind: address already in use"
    );
    assert!(err.contains(&expected), "{err}");

    // Nothing of the refused servers disturbed the running one.
    let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.write_all(b"PING\r\n").unwrap();
    drop(current);
    let _ = std::fs::remove_dir_all(&dir);
}
