//! Raw NATS client connections over blocking TCP sockets.
//!
//! The harness speaks the protocol itself instead of using a client library so that the
//! client side costs as little CPU as possible and nothing (client-side buffering, flush
//! timers, reconnect logic) stands between the load and the server.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;

use crate::scan::{Event, Scanner};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a PING may wait for its PONG; generous because a loaded server on a shared
/// machine can take a while to work through a deep pipeline.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// Read timeout that lets blocked reader loops look at their stop flag.
pub const POLL: Duration = Duration::from_millis(100);

/// Where to connect, parsed from a NATS URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub user: Option<String>,
    pub pass: Option<String>,
    pub token: Option<String>,
}

impl Endpoint {
    /// Accepts `nats://[user:pass@|token@]host[:port]`, `tcp://…` or a bare `host[:port]`.
    pub fn parse(url: &str) -> Result<Self> {
        let rest = if let Some((scheme, rest)) = url.split_once("://") {
            if scheme != "nats" && scheme != "tcp" {
                bail!("unsupported URL scheme {scheme:?} in {url:?} (TLS is not supported by the harness)");
            }
            rest
        } else {
            url
        };
        let rest = rest.trim_end_matches('/');
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let (user, pass, token) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => (Some(user.to_string()), Some(pass.to_string()), None),
                None => (None, None, Some(u.to_string())),
            },
            None => (None, None, None),
        };
        if hostport.is_empty() {
            bail!("no host in URL {url:?}");
        }
        // A bare IPv6 address needs brackets to carry a port; a name or IPv4 address
        // without ':' gets the NATS default port.
        let with_port = if hostport.starts_with('[') {
            if hostport.ends_with(']') {
                format!("{hostport}:4222")
            } else {
                hostport.to_string()
            }
        } else if hostport.contains(':') {
            hostport.to_string()
        } else {
            format!("{hostport}:4222")
        };
        let addr = with_port
            .to_socket_addrs()
            .with_context(|| format!("resolving {with_port:?} from URL {url:?}"))?
            .next()
            .ok_or_else(|| anyhow!("{with_port:?} resolved to no address"))?;
        Ok(Self {
            addr,
            user,
            pass,
            token,
        })
    }

    pub fn loopback(port: u16) -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            user: None,
            pass: None,
            token: None,
        }
    }
}

/// A connected client that has seen INFO and sent CONNECT.
pub struct Conn {
    pub stream: TcpStream,
    pub scanner: Scanner,
    pub max_payload: Option<u64>,
    /// The `client_id` of the server's INFO (strait: its shard is this modulo
    /// the shard count).
    pub client_id: Option<u64>,
    buf: Vec<u8>,
}

impl Conn {
    pub fn connect(ep: &Endpoint, name: &str) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&ep.addr, CONNECT_TIMEOUT)
            .with_context(|| format!("connecting to {}", ep.addr))?;
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        stream
            .set_read_timeout(Some(CONNECT_TIMEOUT))
            .context("setting read timeout")?;
        let mut conn = Self {
            stream,
            scanner: Scanner::new(),
            max_payload: None,
            client_id: None,
            buf: vec![0; 64 * 1024],
        };
        let mut info: Option<String> = None;
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        while info.is_none() {
            if Instant::now() > deadline {
                bail!("no INFO from {} within {:?}", ep.addr, CONNECT_TIMEOUT);
            }
            let n = read_some(&mut conn.stream, &mut conn.buf)
                .with_context(|| format!("waiting for INFO from {}", ep.addr))?;
            if n == 0 {
                continue;
            }
            let mut err = None;
            conn.scanner.feed(&conn.buf[..n], &mut |ev| match ev {
                Event::Info(j) => info = Some(String::from_utf8_lossy(j).into_owned()),
                Event::Err(e) => err = Some(String::from_utf8_lossy(e).into_owned()),
                _ => {}
            })?;
            if let Some(e) = err {
                bail!("server {} refused the connection: {e}", ep.addr);
            }
        }
        let info: serde_json::Value = info
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .context("INFO is not JSON")?
            .unwrap_or_default();
        conn.max_payload = info.get("max_payload").and_then(|v| v.as_u64());
        conn.client_id = info.get("client_id").and_then(|v| v.as_u64());
        let mut connect = json!({
            "verbose": false,
            "pedantic": false,
            "protocol": 1,
            "headers": true,
            "echo": false,
            "no_responders": false,
            "lang": "rust-strait-bench",
            "version": env!("CARGO_PKG_VERSION"),
            "name": name,
        });
        if let Some(u) = &ep.user {
            connect["user"] = json!(u);
        }
        if let Some(p) = &ep.pass {
            connect["pass"] = json!(p);
        }
        if let Some(t) = &ep.token {
            connect["auth_token"] = json!(t);
        }
        let line = format!("CONNECT {connect}\r\n");
        conn.stream
            .write_all(line.as_bytes())
            .context("sending CONNECT")?;
        Ok(conn)
    }

    /// Fails early when the payload would be refused by the server.
    pub fn check_payload(&self, size: usize) -> Result<()> {
        payload_fits(self.max_payload, size)
    }

    pub fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).context("writing to server")
    }

    /// PING and wait for the PONG: afterwards the server has processed everything sent
    /// before (subscriptions are in place, publications routed). Messages that arrive
    /// meanwhile are handed to `on_msg`.
    pub fn sync_with(&mut self, on_msg: &mut dyn FnMut()) -> Result<()> {
        self.send(b"PING\r\n")?;
        let deadline = Instant::now() + SYNC_TIMEOUT;
        loop {
            if Instant::now() > deadline {
                bail!("no PONG within {SYNC_TIMEOUT:?}");
            }
            let n = read_some(&mut self.stream, &mut self.buf).context("waiting for PONG")?;
            let (mut pong, mut pings, mut err) = (false, 0, None);
            self.scanner.feed(&self.buf[..n], &mut |ev| match ev {
                Event::Pong => pong = true,
                Event::Ping => pings += 1,
                Event::Err(e) => err = Some(String::from_utf8_lossy(e).into_owned()),
                Event::Msg(_) => on_msg(),
                _ => {}
            })?;
            if let Some(e) = err {
                bail!("server error: {e}");
            }
            for _ in 0..pings {
                self.send(b"PONG\r\n")?;
            }
            if pong {
                return Ok(());
            }
        }
    }

    pub fn sync(&mut self) -> Result<()> {
        self.sync_with(&mut || {})
    }
}

/// Fails when a payload of `size` bytes exceeds the `max_payload` a server announced.
pub fn payload_fits(max_payload: Option<u64>, size: usize) -> Result<()> {
    match max_payload {
        Some(max) if size as u64 > max => {
            bail!("payload of {size} bytes exceeds the server's max_payload of {max}")
        }
        _ => Ok(()),
    }
}

/// One read that treats a timeout as "nothing yet" (0 bytes) and end of stream as an
/// error, since the harness never expects the server to hang up.
pub fn read_some(stream: &mut TcpStream, buf: &mut [u8]) -> Result<usize> {
    match stream.read(buf) {
        Ok(0) => bail!("server closed the connection"),
        Ok(n) => Ok(n),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(0),
        Err(e) if e.kind() == ErrorKind::Interrupted => Ok(0),
        Err(e) => Err(e).context("reading from server"),
    }
}

/// What a background reader saw on a publisher's connection.
#[derive(Default)]
pub struct ReaderState {
    pub pongs: AtomicU64,
    pub pings: AtomicU64,
    pub stop: AtomicBool,
    pub error: Mutex<Option<String>>,
}

impl ReaderState {
    pub fn error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|e| e.clone())
    }
    fn set_error(&self, e: String) {
        if let Ok(mut slot) = self.error.lock() {
            slot.get_or_insert(e);
        }
    }
}

/// A publishing connection: the owning thread writes, a background thread reads. The
/// reader never writes, so PONGs owed to the server are sent by the writer between its
/// large writes and can never land inside a half-written frame.
pub struct PubConn {
    pub stream: TcpStream,
    pub state: Arc<ReaderState>,
    reader: Option<JoinHandle<()>>,
    pings_sent: u64,
    pongs_sent: u64,
}

impl PubConn {
    pub fn new(mut conn: Conn) -> Result<Self> {
        let mut rstream = conn.stream.try_clone().context("cloning socket")?;
        rstream
            .set_read_timeout(Some(POLL))
            .context("setting read timeout")?;
        let state = Arc::new(ReaderState::default());
        let st = state.clone();
        let mut scanner = std::mem::take(&mut conn.scanner);
        let reader = std::thread::Builder::new()
            .name("bench-pub-reader".into())
            .spawn(move || {
                let mut buf = vec![0u8; 16 * 1024];
                while !st.stop.load(Ordering::Relaxed) {
                    let n = match read_some(&mut rstream, &mut buf) {
                        Ok(n) => n,
                        Err(e) => {
                            if !st.stop.load(Ordering::Relaxed) {
                                st.set_error(format!("{e:#}"));
                            }
                            return;
                        }
                    };
                    let res = scanner.feed(&buf[..n], &mut |ev| match ev {
                        Event::Pong => {
                            st.pongs.fetch_add(1, Ordering::Release);
                        }
                        Event::Ping => {
                            st.pings.fetch_add(1, Ordering::Release);
                        }
                        Event::Err(e) => {
                            st.set_error(format!("server error: {}", String::from_utf8_lossy(e)))
                        }
                        _ => {}
                    });
                    if let Err(e) = res {
                        st.set_error(format!("{e:#}"));
                        return;
                    }
                }
            })
            .context("spawning reader thread")?;
        Ok(Self {
            stream: conn.stream,
            state,
            reader: Some(reader),
            pings_sent: 0,
            pongs_sent: 0,
        })
    }

    /// Answers the server's keepalive PINGs and surfaces any `-ERR`; called between writes.
    pub fn service(&mut self) -> Result<()> {
        if let Some(e) = self.state.error() {
            bail!("{e}");
        }
        let pings = self.state.pings.load(Ordering::Acquire);
        while self.pongs_sent < pings {
            self.stream.write_all(b"PONG\r\n").context("writing PONG")?;
            self.pongs_sent += 1;
        }
        Ok(())
    }

    /// Round trip through the server: when it returns, all publications sent before were
    /// processed (and routed to subscribers' outbound buffers).
    pub fn flush(&mut self) -> Result<()> {
        self.service()?;
        self.stream.write_all(b"PING\r\n").context("writing PING")?;
        self.pings_sent += 1;
        let deadline = Instant::now() + SYNC_TIMEOUT;
        let mut spins = 0u32;
        while self.state.pongs.load(Ordering::Acquire) < self.pings_sent {
            if let Some(e) = self.state.error() {
                bail!("{e}");
            }
            if Instant::now() > deadline {
                bail!("no PONG within {SYNC_TIMEOUT:?}");
            }
            backoff(&mut spins);
        }
        Ok(())
    }
}

impl Drop for PubConn {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        // Unblocks the reader at once instead of after its poll timeout.
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// Waiting policy for the harness's own threads: a few yields, then short sleeps, so a
/// waiting publisher does not take CPU from the server on a small machine.
pub fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 8 {
        std::thread::yield_now();
    } else {
        std::thread::sleep(Duration::from_micros(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        let e = Endpoint::parse("nats://127.0.0.1:4333").expect("url");
        assert_eq!(e.addr, SocketAddr::from(([127, 0, 0, 1], 4333)));
        assert_eq!(e.token, None);
        let e = Endpoint::parse("127.0.0.1").expect("bare");
        assert_eq!(e.addr.port(), 4222);
        let e = Endpoint::parse("nats://u:p@127.0.0.1:1/").expect("userinfo");
        assert_eq!(
            (e.user.as_deref(), e.pass.as_deref()),
            (Some("u"), Some("p"))
        );
        let e = Endpoint::parse("tcp://tok@127.0.0.1:2").expect("token");
        assert_eq!(e.token.as_deref(), Some("tok"));
        let e = Endpoint::parse("nats://[::1]").expect("v6");
        assert_eq!(e.addr.port(), 4222);
        assert!(Endpoint::parse("tls://127.0.0.1:1").is_err());
        assert!(Endpoint::parse("nats://").is_err());
    }
}
