//! Connection storms: how fast a server takes N new clients (plain, TLS, NKEY) and
//! how much memory it holds for them once they are idle, server against server in
//! one run.
//!
//! Each mode starts every server with its own configuration: TLS with a
//! certificate made for the run (`allow_non_tls`, so that the harness's plaintext
//! readiness probe still works), NKEY with one user key (plus a probe user through
//! `no_auth_user`). Clients connect from several threads; each one reads INFO,
//! (TLS) handshakes, sends CONNECT (NKEY: signs the nonce), subscribes, PINGs and
//! waits for its PONG, so a connection counts once the server serves it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use crate::procstat;
use crate::server::{ServerProc, ServerSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Plain,
    Tls,
    Nkey,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Tls => "tls",
            Mode::Nkey => "nkey",
        }
    }
}

pub struct ConnsOptions {
    pub servers: Vec<ServerSpec>,
    pub count: usize,
    pub threads: usize,
    pub reps: usize,
    pub modes: Vec<Mode>,
    pub settle: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnsRun {
    pub server: String,
    pub mode: Mode,
    pub rep: usize,
    pub connections: usize,
    pub seconds: f64,
    pub connects_per_sec: f64,
    pub idle_rss_kb: u64,
    pub rss_with_connections_kb: u64,
    pub bytes_per_connection: u64,
}

/// What one mode needs on both sides: the server's configuration and what the
/// clients use.
struct Setup {
    config: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    nkey: Option<Arc<nkeys::KeyPair>>,
}

fn setup(mode: Mode, dir: &std::path::Path) -> Result<Setup> {
    match mode {
        Mode::Plain => Ok(Setup {
            config: String::new(),
            tls: None,
            nkey: None,
        }),
        Mode::Nkey => {
            let key = nkeys::KeyPair::new_user();
            Ok(Setup {
                config: format!(
                    "authorization {{ users: [ {{ user: probe, password: probe }}, {{ nkey: {} }} ] }}\nno_auth_user: probe\n",
                    key.public_key()
                ),
                tls: None,
                nkey: Some(Arc::new(key)),
            })
        }
        Mode::Tls => {
            let cert =
                rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                    .context("making a certificate")?;
            let cert_path = dir.join("cert.pem");
            let key_path = dir.join("key.pem");
            std::fs::write(&cert_path, cert.cert.pem())?;
            std::fs::write(&key_path, cert.key_pair.serialize_pem())?;
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(cert.cert.der().clone())
                .context("trusting the certificate")?;
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .context("TLS versions")?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(Setup {
                config: format!(
                    "tls {{ cert_file: \"{}\", key_file: \"{}\" }}\nallow_non_tls: true\n",
                    cert_path.display(),
                    key_path.display()
                ),
                tls: Some(Arc::new(config)),
                nkey: None,
            })
        }
    }
}

/// A client: plain stream or TLS over it.
enum Client {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Client {
    fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Client::Plain(s) => s.write_all(b),
            Client::Tls(s) => {
                s.write_all(b)?;
                s.flush()
            }
        }
    }

    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Client::Plain(s) => s.read(b),
            Client::Tls(s) => s.read(b),
        }
    }
}

fn connect_one(port: u16, setup: &Setup, i: usize) -> Result<Client> {
    let stream = TcpStream::connect(("127.0.0.1", port)).context("connect")?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    // INFO comes first in plaintext, also with TLS (the client starts the handshake).
    let mut reader = BufReader::new(stream);
    let mut info = String::new();
    reader.read_line(&mut info).context("reading INFO")?;
    if !info.starts_with("INFO ") {
        bail!("expected INFO, got {info:?}");
    }
    let stream = reader.into_inner();
    let nonce = info
        .split("\"nonce\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .map(str::to_string);
    let mut client = match &setup.tls {
        Some(config) => {
            let name =
                rustls::pki_types::ServerName::try_from("localhost").map_err(|e| anyhow!("{e}"))?;
            let conn = rustls::ClientConnection::new(config.clone(), name)?;
            Client::Tls(Box::new(rustls::StreamOwned::new(conn, stream)))
        }
        None => Client::Plain(stream),
    };
    let auth = match (&setup.nkey, nonce) {
        (Some(key), Some(nonce)) => {
            let sig = key
                .sign(nonce.as_bytes())
                .map_err(|e| anyhow!("signing: {e}"))?;
            format!(
                ",\"nkey\":\"{}\",\"sig\":\"{}\"",
                key.public_key(),
                data_encoding::BASE64URL_NOPAD.encode(&sig)
            )
        }
        (Some(_), None) => bail!("no nonce in INFO for an NKEY login"),
        _ => String::new(),
    };
    let login = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"protocol\":1{auth}}}\r\nSUB idle.{i} 1\r\nPING\r\n"
    );
    client.write_all(login.as_bytes()).context("CONNECT")?;
    let mut got = Vec::new();
    let mut chunk = [0u8; 512];
    while !got.windows(6).any(|w| w == b"PONG\r\n") {
        let n = client.read(&mut chunk).context("waiting for PONG")?;
        if n == 0 {
            bail!("closed: {}", String::from_utf8_lossy(&got));
        }
        got.extend_from_slice(&chunk[..n]);
        if got.starts_with(b"-ERR") {
            bail!("refused: {}", String::from_utf8_lossy(&got));
        }
    }
    Ok(client)
}

/// The harness holds one descriptor per client too.
fn raise_own_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one struct on our stack.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn one_run(spec: &ServerSpec, mode: Mode, rep: usize, opts: &ConnsOptions) -> Result<ConnsRun> {
    let dir = std::env::temp_dir().join(format!(
        "strait-bench-conns-{}-{}-{rep}-{}",
        std::process::id(),
        mode.name(),
        spec.name
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let setup = setup(mode, &dir)?;
    let config = dir.join("server.conf");
    std::fs::write(&config, &setup.config)?;
    let mut with_config = spec.clone();
    with_config.command.push("-c".into());
    with_config.command.push(config.display().to_string());
    let server = ServerProc::start(&with_config)?;
    let idle = server.idle_rss_kb(opts.settle)?;
    let started = Instant::now();
    let clients: Vec<Client> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..opts.threads)
            .map(|t| {
                let setup = &setup;
                let port = server.port;
                s.spawn(move || {
                    (t..opts.count)
                        .step_by(opts.threads)
                        .map(|i| connect_one(port, setup, i))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(opts.count);
        for h in handles {
            all.extend(h.join().map_err(|_| anyhow!("client thread panicked"))??);
        }
        Ok::<_, anyhow::Error>(all)
    })
    .with_context(|| format!("{} ({})", spec.name, mode.name()))?;
    let seconds = started.elapsed().as_secs_f64();
    std::thread::sleep(opts.settle);
    let with = procstat::sample(server.pid)?.rss_kb;
    drop(clients);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ConnsRun {
        server: spec.name.clone(),
        mode,
        rep,
        connections: opts.count,
        seconds,
        connects_per_sec: opts.count as f64 / seconds,
        idle_rss_kb: idle,
        rss_with_connections_kb: with,
        bytes_per_connection: with.saturating_sub(idle) * 1024 / opts.count as u64,
    })
}

/// Runs every mode on every server, alternating servers within each repetition.
pub fn run(opts: &ConnsOptions) -> Result<Vec<ConnsRun>> {
    raise_own_open_files_limit();
    let mut runs = Vec::new();
    for &mode in &opts.modes {
        for rep in 0..opts.reps {
            // ABBA: which server goes first alternates.
            let order: Vec<&ServerSpec> = if rep % 2 == 0 {
                opts.servers.iter().collect()
            } else {
                opts.servers.iter().rev().collect()
            };
            for spec in order {
                let r = one_run(spec, mode, rep, opts)?;
                eprintln!(
                    "  {:<6} {:<8} rep {}: {:.0} connects/s, RSS {} -> {} KiB",
                    mode.name(),
                    r.server,
                    rep,
                    r.connects_per_sec,
                    r.idle_rss_kb,
                    r.rss_with_connections_kb
                );
                runs.push(r);
            }
        }
    }
    Ok(runs)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Reads one figure of a run.
type Metric = dyn Fn(&ConnsRun) -> f64;

/// Medians per mode and server, with A/B ratios, as a Markdown table.
pub fn table(opts: &ConnsOptions, runs: &[ConnsRun]) -> String {
    let mut out = format!(
        "| mode | metric | {} | {} | ratio |\n| --- | --- | --- | --- | --- |\n",
        opts.servers[0].name, opts.servers[1].name
    );
    for &mode in &opts.modes {
        let of = |name: &str, f: &Metric| {
            median(
                runs.iter()
                    .filter(|r| r.mode == mode && r.server == name)
                    .map(f)
                    .collect(),
            )
        };
        let metrics: [(&str, &Metric); 3] = [
            ("connects/s", &|r| r.connects_per_sec),
            ("RSS with N idle, MiB", &|r| {
                r.rss_with_connections_kb as f64 / 1024.0
            }),
            ("bytes per connection", &|r| r.bytes_per_connection as f64),
        ];
        for (metric, f) in metrics {
            let a = of(&opts.servers[0].name, f);
            let b = of(&opts.servers[1].name, f);
            out.push_str(&format!(
                "| {} | {metric} | {a:.1} | {b:.1} | {:.2}x |\n",
                mode.name(),
                if b > 0.0 { a / b } else { 0.0 }
            ));
        }
    }
    out
}
