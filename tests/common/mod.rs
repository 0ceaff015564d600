//! Test support: start the real `strait` binary on a free port and talk to it.
// Each test binary uses a different part of this module.
#![allow(dead_code)]

pub mod reference;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running strait process, killed on drop.
pub struct Server {
    child: Child,
    pub port: u16,
    /// The monitoring port, when monitoring is on (`-m -1` picks a free one).
    pub http: Option<u16>,
    pub dir: PathBuf,
    pub log: PathBuf,
}

static NEXT_DIR: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn temp_dir() -> PathBuf {
    let n = NEXT_DIR.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("strait-test-{}-{}", std::process::id(), n));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

impl Server {
    /// Starts strait with `--shards 2` (unless `args` say otherwise) on a random port.
    pub fn start(args: &[&str]) -> Server {
        Self::start_with_config(None, args)
    }

    pub fn start_with_config(config: Option<&str>, args: &[&str]) -> Server {
        let dir = temp_dir();
        let log = dir.join("strait.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_strait"));
        cmd.args(["-a", "127.0.0.1", "-p", "-1", "-l"])
            .arg(&log)
            .arg("-P")
            .arg(dir.join("strait.pid"));
        if !args.contains(&"--shards") {
            cmd.args(["--shards", "2"]);
        }
        if let Some(text) = config {
            let path = dir.join("strait.conf");
            std::fs::write(&path, text).expect("write config");
            cmd.arg("-c").arg(path);
        }
        cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
        let child = cmd.spawn().expect("spawn strait");
        let mut server = Server {
            child,
            port: 0,
            http: None,
            dir,
            log,
        };
        server.wait_until_ready();
        server
    }

    /// Starts strait with monitoring on a port of its choosing (`-m -1`), so that
    /// tests running in parallel cannot race for a free port.
    pub fn start_monitored(config: Option<&str>, args: &[&str]) -> (Server, u16) {
        let mut all = vec!["-m", "-1"];
        all.extend_from_slice(args);
        let server = Self::start_with_config(config, &all);
        let http = server.http.expect("monitoring port in the log");
        (server, http)
    }

    /// Waits for "Server is ready" and reads the ports from the log lines before it.
    fn wait_until_ready(&mut self) {
        fn port_after(text: &str, needle: &str) -> Option<u16> {
            let line = text.lines().find(|l| l.contains(needle))?;
            line.rsplit(':').next()?.trim().parse().ok()
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.contains("Server is ready") {
                self.port = port_after(&text, "Listening for client connections on")
                    .expect("client port in the log");
                self.http = port_after(&text, "Starting http monitor on");
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("strait exited with {status}: {err}\nlog:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("strait did not start listening");
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends `strait --signal <command>=<pid file>`, as an operator would.
    pub fn signal(&self, command: &str) {
        let status = Command::new(env!("CARGO_BIN_EXE_strait"))
            .arg("--signal")
            .arg(format!(
                "{command}={}",
                self.dir.join("strait.pid").display()
            ))
            .status()
            .expect("run strait --signal");
        assert!(status.success(), "--signal {command} failed");
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) with a pid we spawned and have not yet reaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "strait did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A raw protocol connection, for byte-exact checks.
/// A child process (a server, a Prometheus) killed when the test ends, however it ends.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Raw {
    pub stream: TcpStream,
    pub info: String,
    buf: Vec<u8>,
}

impl Raw {
    pub fn connect(port: u16) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut raw = Raw {
            stream,
            info: String::new(),
            buf: Vec::new(),
        };
        raw.info = raw.read_line();
        assert!(raw.info.starts_with("INFO {"), "{}", raw.info);
        raw
    }

    /// The `client_id` in this connection's INFO.
    pub fn cid(&self) -> u64 {
        let json = &self.info[5..];
        let v: serde_json::Value = serde_json::from_str(json.trim()).expect("INFO json");
        v["client_id"].as_u64().expect("client_id")
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => false,
        }
    }

    pub fn read_line(&mut self) -> String {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..pos + 2).collect();
                return String::from_utf8_lossy(&line).into_owned();
            }
            if !self.fill() {
                let rest: Vec<u8> = self.buf.drain(..).collect();
                return String::from_utf8_lossy(&rest).into_owned();
            }
        }
    }

    /// Reads exactly `n` bytes (or fewer if the connection ends).
    pub fn read_exact_n(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            if !self.fill() {
                break;
            }
        }
        let take = n.min(self.buf.len());
        self.buf.drain(..take).collect()
    }

    /// Reads until the server closes the connection or `timeout` passes.
    /// Returns what was read and whether the connection was closed.
    pub fn read_until_close(&mut self, timeout: Duration) -> (Vec<u8>, bool) {
        self.stream
            .set_read_timeout(Some(timeout))
            .expect("timeout");
        let mut closed = false;
        loop {
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    closed = true;
                    break;
                }
                Err(_) => break,
            }
        }
        (self.buf.drain(..).collect(), closed)
    }

    /// Sends PING and returns everything received before the PONG.
    pub fn ping_sync(&mut self) -> Vec<u8> {
        self.send(b"PING\r\n");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(pos) = find(&self.buf, b"PONG\r\n") {
                let before: Vec<u8> = self.buf.drain(..pos).collect();
                self.buf.drain(..6);
                return strip_info(before);
            }
            assert!(Instant::now() < deadline, "no PONG");
            assert!(self.fill(), "connection closed before PONG");
        }
    }
}

/// Drops asynchronous INFO lines (the connect_info one after the first PONG).
pub fn strip_info(mut bytes: Vec<u8>) -> Vec<u8> {
    while let Some(start) = find(&bytes, b"INFO {") {
        let end = find(&bytes[start..], b"\r\n").map_or(bytes.len(), |e| start + e + 2);
        bytes.drain(start..end);
    }
    bytes
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub const CONNECT: &[u8] = b"CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"headers\":true,\"no_responders\":true}\r\n";

/// Opens raw connections until one lands on each of `shards` shards
/// (`client_id % shards` is the owning shard). Returns them indexed by shard.
pub fn raw_per_shard(port: u16, shards: u64) -> Vec<Raw> {
    let mut found: Vec<Option<Raw>> = (0..shards).map(|_| None).collect();
    for _ in 0..200 {
        let raw = Raw::connect(port);
        let shard = (raw.cid() % shards) as usize;
        if found[shard].is_none() {
            found[shard] = Some(raw);
        }
        if found.iter().all(Option::is_some) {
            return found.into_iter().map(Option::unwrap).collect();
        }
    }
    panic!("connections never spread over {shards} shards");
}

/// Same for async-nats clients.
pub async fn clients_per_shard(url: &str, shards: u64) -> Vec<async_nats::Client> {
    let mut found: Vec<Option<async_nats::Client>> = (0..shards).map(|_| None).collect();
    for _ in 0..200 {
        let client = async_nats::connect(url).await.expect("connect");
        let shard = (client.server_info().client_id % shards) as usize;
        if found[shard].is_none() {
            found[shard] = Some(client);
        }
        if found.iter().all(Option::is_some) {
            return found.into_iter().map(Option::unwrap).collect();
        }
    }
    panic!("connections never spread over {shards} shards");
}

/// async-nats's `flush` only writes the client's buffer; it does not wait for the
/// server. To know that `subscriber`'s earlier SUBs are visible on `publisher`'s
/// shard, subscribe to a probe subject on `subscriber` (after those SUBs, on the
/// same connection) and publish probes from `publisher` until one arrives: lanes
/// between shards are FIFO, so the earlier interest has arrived too.
pub async fn await_interest(subscriber: &async_nats::Client, publisher: &async_nats::Client) {
    use futures::StreamExt;
    static PROBE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let subject = format!(
        "_probe.{}.{}",
        std::process::id(),
        PROBE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut probe = subscriber
        .subscribe(subject.clone())
        .await
        .expect("probe sub");
    subscriber.flush().await.expect("flush");
    for _ in 0..500 {
        publisher
            .publish(subject.clone(), "probe".into())
            .await
            .expect("probe pub");
        publisher.flush().await.expect("flush");
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(10), probe.next()).await {
            probe.unsubscribe().await.expect("unsub");
            return;
        }
    }
    panic!("interest never propagated");
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.1 GET; returns (status, content type, body).
pub fn http_get(port: u16, path: &str) -> (u16, String, String) {
    let (status, ctype, body) = http_get_bytes(port, path, Duration::from_secs(5));
    (status, ctype, String::from_utf8_lossy(&body).into_owned())
}

/// The same with the body as bytes (profiles are binary) and a read timeout.
pub fn http_get_bytes(port: u16, path: &str, timeout: Duration) -> (u16, String, Vec<u8>) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new(), Vec::new());
    };
    s.set_read_timeout(Some(timeout)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let head_end = find(&raw, b"\r\n\r\n").unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let body = raw.get(head_end + 4..).unwrap_or(&[]);
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let ctype = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("content-type: ")
                .or_else(|| l.strip_prefix("Content-Type: "))
        })
        .unwrap_or("")
        .to_string();
    // hyper may chunk the body; de-chunk when needed.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = Vec::new();
        let mut rest = body;
        while let Some(nl) = find(rest, b"\r\n") {
            let size = String::from_utf8_lossy(&rest[..nl]);
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || rest.len() < nl + 2 + n {
                break;
            }
            out.extend_from_slice(&rest[nl + 2..nl + 2 + n]);
            rest = rest.get(nl + 4 + n..).unwrap_or(&[]);
        }
        out
    } else {
        body.to_vec()
    };
    (status, ctype, body)
}

/// GET that must answer 200 with JSON.
pub fn http_json(port: u16, path: &str) -> serde_json::Value {
    let (status, _, body) = http_get(port, path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// A JetStream API request and its JSON answer, whatever it says.
pub async fn api(client: &async_nats::Client, subject: &str, body: &str) -> serde_json::Value {
    let answer = client
        .request(subject.to_string(), body.to_string().into())
        .await
        .expect("answer");
    serde_json::from_slice(&answer.payload).expect("JSON")
}

/// A base64 field of an API answer (a message's `data` or `hdrs`) as text.
pub fn decode(b64: &serde_json::Value) -> String {
    let bytes = data_encoding::BASE64
        .decode(b64.as_str().unwrap_or_default().as_bytes())
        .expect("base64");
    String::from_utf8(bytes).expect("utf-8")
}
