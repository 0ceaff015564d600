//! Many connections: the open-files limit as Go raises it, accept errors when it
//! is reached (backed off and logged as nats-server does), and 10 000 clients.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{http_json, Raw, CONNECT};

struct Proc {
    child: Child,
    dir: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn hard_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct on our stack.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim.rlim_max
}

/// Starts strait with the open-files limit set to `soft`/`hard` for it alone, as a
/// shell's `ulimit` or systemd's `LimitNOFILE=` would.
fn start_with_limit(tag: &str, soft: u64, hard: u64, config: &str, args: &[&str]) -> (Proc, u16) {
    let dir = std::env::temp_dir().join(format!("strait-conns-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("strait.log");
    std::fs::write(dir.join("strait.conf"), config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strait"));
    cmd.args(["-a", "127.0.0.1", "-p", "-1", "--shards", "2", "-D", "-c"])
        .arg(dir.join("strait.conf"))
        .arg("-l")
        .arg(&log)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // setrlimit(2), which is async-signal-safe; it touches no memory of ours but the
    // struct it builds on its own stack.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn strait");
    let p = Proc { child, dir, log };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&p.log).unwrap_or_default();
        if text.contains("Server is ready") {
            let line = text
                .lines()
                .find(|l| l.contains("Listening for client connections on"))
                .unwrap();
            let port = line.rsplit(':').next().unwrap().trim().parse().unwrap();
            return (p, port);
        }
        assert!(Instant::now() < deadline, "strait did not start:\n{text}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn open_files_limits(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut numbers = line
        .split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok());
    (numbers.next().unwrap(), numbers.next().unwrap())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn soft_open_files_limit_is_raised_to_the_hard_one() {
    let hard = hard_limit().min(20_000);
    let (p, port) = start_with_limit("raise", 1024.min(hard), hard, "", &[]);
    assert_eq!(open_files_limits(p.child.id()), (hard, hard));
    let log = std::fs::read_to_string(&p.log).unwrap();
    if hard > 1024 {
        assert!(
            log.contains(&format!(
                "Raised the open files limit from 1024 to {hard} (the hard limit)"
            )),
            "{log}"
        );
    }
    let mut raw = Raw::connect(port);
    raw.send(CONNECT);
    assert_eq!(raw.ping_sync(), b"");
}

#[test]
fn accept_errors_back_off_and_recover() {
    // Room for the server's own descriptors and a few clients only.
    let (p, port) = start_with_limit("exhaust", 40, 40, "", &[]);
    let log = std::fs::read_to_string(&p.log).unwrap();
    assert!(
        log.contains(
            "[WRN] The open files limit of 40 is below what max_connections (65536) needs"
        ),
        "{log}"
    );
    // More connections than descriptors: the rest wait in the backlog.
    let held: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(3000));
    let log = std::fs::read_to_string(&p.log).unwrap();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Temporary Client Accept Error("))
        .collect();
    // 10, 20, 40, ... ms up to a second: a handful of lines in three seconds, not
    // one every few milliseconds on every shard.
    assert!(
        (3..=12).contains(&errors.len()),
        "{} accept error lines in {:?}:\n{}",
        errors.len(),
        started.elapsed(),
        errors.join("\n")
    );
    assert!(
        errors[0].contains(&format!(
            "[ERR] Temporary Client Accept Error(accept tcp 127.0.0.1:{port}: accept4: too many open files), sleeping 10ms"
        )),
        "{}",
        errors[0]
    );
    assert!(errors.iter().any(|l| l.contains("sleeping 1000ms")) || errors.len() < 9);
    // Once clients go, the server accepts again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        let _ = s.write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n");
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = s.read(&mut chunk) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
            if got.windows(6).any(|w| w == b"PONG\r\n") {
                return;
            }
        }
        assert!(Instant::now() < deadline, "never accepted again");
    }
}

/// One client of the 10 000: logged in, subscribed, PONG read.
fn client(port: u16, i: usize) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let login = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"user\":\"u\",\"pass\":\"p\"}}\r\nSUB all 1\r\nSUB one.{i} 2\r\nPING\r\n"
    );
    s.write_all(login.as_bytes()).unwrap();
    read_until(&mut s, b"PONG\r\n");
    s
}

fn read_until(s: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while !got.windows(needle.len()).any(|w| w == needle) {
        let n = s.read(&mut chunk).expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    got
}

/// Named so that scripts/test.sh can skip it, saying why, on a machine whose hard
/// open-files limit is below what it needs.
#[test]
fn many_connections_10k() {
    // STRAIT_MANY_CLIENTS tries it with another count.
    let clients_wanted: usize = std::env::var("STRAIT_MANY_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let hard = hard_limit();
    assert!(
        hard >= clients_wanted as u64 + 200,
        "needs a hard open-files limit of {} (this machine's is {hard}); \
         scripts/test.sh skips this test where the limit is lower",
        clients_wanted + 200
    );
    // The test holds the client ends.
    let lim = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct on our stack.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    let (p, port) = start_with_limit(
        "10k",
        1024,
        hard,
        "authorization { user: u, password: p }\n",
        &["-m", "-1"],
    );
    let log = std::fs::read_to_string(&p.log).unwrap();
    let http: u16 = log
        .lines()
        .find(|l| l.contains("Starting http monitor on"))
        .and_then(|l| l.rsplit(':').next()?.trim().parse().ok())
        .unwrap();
    let pid = p.child.id();
    let before = rss_kib(pid);
    let started = Instant::now();
    let threads = 8;
    let mut clients: Vec<TcpStream> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (t..clients_wanted)
                        .step_by(threads)
                        .map(|i| (i, client(port, i)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<(usize, TcpStream)> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_by_key(|(i, _)| *i);
        all.into_iter().map(|(_, s)| s).collect()
    });
    let connect_time = started.elapsed();
    assert_eq!(http_json(http, "/varz")["connections"], clients_wanted);
    let during = rss_kib(pid);

    // One message to all of them, and one to each.
    let mut publisher = Raw::connect(port);
    publisher.send(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"user\":\"u\",\"pass\":\"p\"}\r\nPUB all 5\r\nhello\r\n");
    for i in 0..clients_wanted {
        publisher.send(format!("PUB one.{i} 2\r\nhi\r\n").as_bytes());
    }
    assert_eq!(publisher.ping_sync(), b"");
    std::thread::scope(|s| {
        for chunk in clients.chunks_mut(clients_wanted / threads) {
            s.spawn(move || {
                for c in chunk {
                    let got = read_until(c, b"hi\r\n");
                    let text = String::from_utf8_lossy(&got);
                    assert!(
                        text.contains("MSG all ") && text.contains("hello"),
                        "{text}"
                    );
                }
            });
        }
    });
    let delivered = rss_kib(pid);
    drop(clients);
    drop(publisher);
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_json(http, "/varz")["connections"] != 0 {
        assert!(Instant::now() < deadline, "connections did not close");
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = rss_kib(pid);
    let per_connection = (during.saturating_sub(before)) * 1024 / clients_wanted as u64;
    eprintln!(
        "{clients_wanted} clients connected in {connect_time:?} ({:.0}/s); RSS before {before} KiB, \
         connected {during} KiB ({per_connection} B per connection), after delivery {delivered} KiB, \
         after close {after} KiB",
        clients_wanted as f64 / connect_time.as_secs_f64()
    );
    // Bounds well above what is measured, to catch a regression by a multiple.
    assert!(
        per_connection < 64 * 1024,
        "{per_connection} B per idle connection"
    );
    assert!(
        after < during + 16 * 1024,
        "memory grew after closing: {after} KiB"
    );
}
