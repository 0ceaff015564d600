#![recursion_limit = "256"]
//! strait: a NATS-compatible message broker, thread-per-core and shared-nothing.
//!
//! This binary is the control plane: command line, configuration, logging, process
//! lifecycle and the control executor. The data plane lives in `strait-shards`.

mod auth_config;
mod cli;
mod config;
mod jetstream_config;
mod logging;
mod monitor;
mod profile_proto;
mod profiling;
mod rlimit;
mod signals;
mod tls_config;

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use glommio::{LocalExecutorBuilder, Placement};
use strait_shards::control::{Command, Commander};
use strait_shards::options::{NATS_VERSION, STRAIT_VERSION};
use strait_shards::ServerOptions;

use crate::cli::Cli;

/// jemalloc, for its allocation sampling (heap profiles); measured against the
/// system allocator in BENCHMARKS.md.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts: sampling is built in but inactive
/// (it costs nothing then) until the profiling endpoint turns it on; a sample
/// every 512 KiB on average, as Go's heap profiles. Freed memory goes back to the
/// system within about a second, from jemalloc's own background thread: decay
/// is otherwise driven by allocations, so an idle server that just dropped half a
/// million subscriptions would keep their pages.
// SAFETY: jemalloc reads this symbol by name as a `const char *` to a
// NUL-terminated string before the first allocation. A reference to an array is
// a thin pointer (one word, the address of the first byte), the static is
// immutable, and the literal ends with NUL.
#[cfg(feature = "jemalloc")]
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "malloc_conf")]
pub static malloc_conf: &[u8; 106] =
    b"prof:true,prof_active:false,lg_prof_sample:19,dirty_decay_ms:1000,muzzy_decay_ms:0,background_thread:true\0";

/// What `-v` prints. Tools parse the first ` v<major.minor.patch>` as the server
/// version (the nats.c test harness, install scripts), so the compatible
/// nats-server version comes first and strait's own follows it.
fn version_line() -> String {
    format!("nats-server: v{NATS_VERSION} (strait v{STRAIT_VERSION})")
}

fn main() -> ExitCode {
    let cli = match Cli::parse_args(std::env::args()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("strait: {e}");
            eprintln!("{}", cli::HELP);
            return ExitCode::from(1);
        }
    };
    if cli.help {
        print!("{}", cli::HELP);
        return ExitCode::SUCCESS;
    }
    if cli.help_tls {
        print!("{}", cli::TLS_HELP);
        return ExitCode::SUCCESS;
    }
    if cli.version {
        println!("{}", version_line());
        return ExitCode::SUCCESS;
    }
    if let Some(spec) = &cli.signal {
        return match signals::send(spec) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("strait: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Logging may not be up yet; nats-server prints fatal start errors plainly.
            tracing::error!("{e:#}");
            eprintln!("strait: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Builds the options: embedded defaults, then the configuration file, then flags.
fn options_from_cli(cli: &Cli) -> anyhow::Result<(ServerOptions, config::ProcessOptions)> {
    if let Some(feature) = cli.unsupported() {
        bail!("{feature} is not supported by strait yet");
    }
    let mut opts = ServerOptions {
        shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ..ServerOptions::default()
    };
    let mut process = config::ProcessOptions::default();
    if let Some(path) = &cli.config {
        config::load(std::path::Path::new(path), &mut opts, &mut process)?;
    }
    if let Some(addr) = &cli.addr {
        opts.host = addr.clone();
    }
    if let Some(port) = cli.port {
        opts.port = match port {
            -1 | 0 => 0,
            p if (1..=65535).contains(&p) => p as u16,
            p => bail!("invalid port {p}"),
        };
    }
    let server_key = nkeys::KeyPair::new_server();
    opts.server_id = server_key.public_key();
    opts.xkey = nkeys::XKey::new().public_key();
    if let Some(name) = &cli.name {
        opts.server_name = name.clone();
    }
    if let Some(user) = &cli.user {
        opts.auth.users.clear();
        opts.auth.users.insert(
            user.clone(),
            strait_shards::auth::User::new(user, cli.pass.as_deref().unwrap_or_default()),
        );
    }
    if let Some(token) = &cli.auth {
        opts.auth.token = Some(token.clone());
    }
    let tls_flags = tls_config::TlsFlags {
        tls: cli.tls,
        cert: cli.tlscert.clone(),
        key: cli.tlskey.clone(),
        verify: cli.tlsverify,
        ca_cert: cli.tlscacert.clone(),
    };
    tls_flags.apply(&mut opts)?;
    if let Some(tls) = &opts.tls {
        if !process.auth_timeout_configured {
            // nats-server: the TLS timeout plus a second, unless configured.
            opts.auth.timeout = tls.timeout() + Duration::from_secs(1);
        }
    }
    match cli.shards {
        Some(0) => bail!("--shards must be at least 1"),
        Some(n) => opts.shards = n,
        None => {}
    }
    if cli.debug {
        process.debug = Some(true);
    }
    if cli.trace || cli.verbose_trace {
        process.trace = Some(true);
    }
    if let Some(t) = cli.logtime {
        process.logtime = Some(t);
    }
    if let Some(l) = &cli.log {
        process.log_file = Some(l.clone());
    }
    if let Some(p) = &cli.pid {
        process.pid_file = Some(p.clone());
    }
    if let Some(d) = &cli.store_dir {
        process.store_dir = Some(d.clone());
    }
    if let Some(limit) = &cli.log_size_limit {
        process.log_size_limit = Some(parse_size(limit)?);
    }
    if let Some(dir) = &cli.ports_file_dir {
        process.ports_file_dir = Some(dir.clone());
    }
    if cli.syslog {
        process.syslog = Some(true);
    }
    if let Some(remote) = &cli.remote_syslog {
        process.remote_syslog = Some(remote.clone());
    }
    if let Some(p) = cli.profile {
        if !(-1..=65535).contains(&p) {
            bail!("invalid profiling port {p}");
        }
        process.prof_port = Some(p);
    }
    if let Some(p) = cli.http_port {
        process.http_port = Some(match p {
            -1 | 0 => 0,
            p if (1..=65535).contains(&p) => p as u16,
            p => bail!("invalid http port {p}"),
        });
        // nats-server uses -1 for "pick a free port".
        if p == -1 {
            process.http_port = Some(u16::MAX);
        }
    }
    opts.trace = process.trace.unwrap_or(false);
    if let Some(len) = cli.max_traced_msg_len {
        opts.max_traced_msg_len = len;
    }
    if let Some(spin) = &cli.spin_before_park {
        opts.spin_before_park = Some(parse_go_duration(spin)?);
    }
    opts.jetstream = jetstream_options(cli, &process)?;
    Ok((opts, process))
}

/// JetStream is on with `-js` or a `jetstream` block; its store is `-sd`, the
/// block's `store_dir`, the top-level `store_dir`, or a directory under the
/// system's temporary directory, as nats-server picks it.
fn jetstream_options(
    cli: &Cli,
    process: &config::ProcessOptions,
) -> anyhow::Result<Option<strait_shards::options::JetStreamOptions>> {
    let file = process.jetstream.clone().unwrap_or_default();
    if !(cli.jetstream || file.enabled) {
        return Ok(None);
    }
    let store_dir = cli
        .store_dir
        .clone()
        .or_else(|| file.store_dir.clone())
        .or_else(|| process.store_dir.clone())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("strait"));
    let mut js = strait_shards::options::JetStreamOptions::new(store_dir);
    js.max_memory = file.max_memory.unwrap_or(-1);
    js.max_store = file.max_store.unwrap_or(-1);
    js.domain = file.domain.clone();
    if let Some(sync) = file.sync {
        js.sync = sync;
    }
    js.encryption = file.encryption().map_err(anyhow::Error::msg)?;
    js.max_duplicate_window = file.max_duplicate_window.unwrap_or(0);
    js.max_ack_pending = file.max_ack_pending.unwrap_or(0);
    js.max_request_batch = file.max_request_batch.unwrap_or(0);
    js.batch = file.batch;
    js.strict = file.strict.unwrap_or(true);
    Ok(Some(js))
}

/// Parses a size from the command line with the configuration file's suffix rules
/// (`10MB`, `512k`, `1GiB`).
fn parse_size(s: &str) -> anyhow::Result<u64> {
    let map = strait_conf::parse_str(&format!("size: {s}"), "", &strait_conf::MemHost::new())
        .map_err(|e| anyhow::anyhow!("invalid size {s:?}: {e}"))?;
    map.get("size")
        .and_then(|v| v.as_i64())
        .and_then(|v| u64::try_from(v).ok())
        .with_context(|| format!("invalid size {s:?}"))
}

/// Parses a Go duration from the command line (`50us`, `1ms`, `2s`).
fn parse_go_duration(s: &str) -> anyhow::Result<Duration> {
    strait_conf::parse_duration(s).map_err(|e| anyhow::anyhow!("invalid duration {s:?}: {e}"))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let (opts, process) = options_from_cli(&cli)?;
    if cli.test_config {
        match &cli.config {
            Some(path) => println!("strait: configuration file {path} is valid"),
            None => println!("strait: configuration is valid"),
        }
        return Ok(());
    }
    logging::init(&logging::LogOptions {
        debug: process.debug.unwrap_or(false),
        trace: process.trace.unwrap_or(false),
        timestamps: process.logtime.unwrap_or(true),
        file: process.log_file.clone(),
        size_limit: process.log_size_limit.unwrap_or(0),
        max_files: process.log_max_files.unwrap_or(0),
        syslog: process.syslog.unwrap_or(false),
        remote_syslog: process.remote_syslog.clone(),
    })?;

    tracing::info!("Starting strait");
    tracing::info!("  Version:  {NATS_VERSION} (strait {STRAIT_VERSION})");
    tracing::info!("  Name:     {}", opts.name());
    tracing::info!("  ID:       {}", opts.server_id);
    tracing::info!("  Shards:   {}", opts.shards);
    if let Some(path) = &cli.config {
        tracing::info!("Using configuration file: {path}");
    }

    let host = opts.host.clone();
    let opts_snapshot = opts.clone();
    let start_time = std::time::SystemTime::now();
    let lame_duck = (opts.lame_duck_duration, opts.lame_duck_grace_period);
    rlimit::apply(opts.max_connections);
    let handle = strait_shards::start_closed(opts)?;
    if let Some(pid_file) = &process.pid_file {
        std::fs::write(pid_file, std::process::id().to_string())
            .with_context(|| format!("could not write pid file {pid_file}"))?;
    }
    let monitoring = process.http_port.map(|port| MonitorSetup {
        host: process.http_host.clone().unwrap_or_else(|| host.clone()),
        port: if port == u16::MAX { 0 } else { port },
        base_path: process.http_base_path.clone().unwrap_or_default(),
        client_port: handle.port,
        start: start_time,
    });
    let profiling = process
        .prof_port
        .filter(|&p| p != 0)
        .map(|p| profiling::ProfilingSetup {
            host: host.clone(),
            port: if p < 0 { 0 } else { p as u16 },
            cpu_rate_hz: process
                .prof_cpu_rate
                .unwrap_or(profiling::DEFAULT_CPU_RATE_HZ),
        });
    // (TLS available to all, required of all, handshake first), for the log lines.
    let tls_mode = opts_snapshot.tls.as_ref().map(|tls| {
        (
            opts_snapshot.allow_non_tls && !tls.handshake_first_only(),
            tls.handshake_first_only(),
        )
    });
    let reloader = Reloader {
        cli: cli.clone(),
        running: opts_snapshot,
        prof_port: process.prof_port,
    };
    let (control, ports) = spawn_control(
        handle.commander.clone(),
        handle.global.clone(),
        lame_duck,
        reloader,
        (monitoring, profiling),
    )?;
    // JetStream is up (spawn_control returns once it is): clients may come in.
    handle.open_for_clients();
    tracing::info!(
        "Listening for client connections on {}",
        host_port(&host, handle.port)
    );
    if let Some((optional, handshake_first)) = tls_mode {
        if optional {
            tracing::info!("TLS available for client connections");
        } else {
            tracing::info!("TLS required for client connections");
        }
        if handshake_first {
            tracing::warn!(
                "Clients that are not using \"TLS Handshake First\" option will fail to connect"
            );
        }
    }
    // After every listener is up, so that random ports (-m -1, --profile -1) are in it.
    let ports_file = match &process.ports_file_dir {
        Some(dir) => Some(write_ports_file(dir, &host, handle.port, ports)?),
        None => None,
    };
    tracing::info!("Server is ready");
    handle.join();
    let _ = control.join();
    if let Some(path) = ports_file {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("Server Exiting..");
    Ok(())
}

/// `<dir>/<executable>_<pid>.ports`, as nats-server writes it for test harnesses
/// that start it on random ports.
fn write_ports_file(
    dir: &str,
    host: &str,
    port: u16,
    ports: ControlPorts,
) -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "strait".into());
    let path = std::path::Path::new(dir).join(format!("{exe}_{}.ports", std::process::id()));
    let advertised = if host == "0.0.0.0" || host == "::" {
        "127.0.0.1"
    } else {
        host
    };
    let mut listed = serde_json::Map::new();
    listed.insert(
        "nats".into(),
        serde_json::json!([format!("nats://{}", host_port(advertised, port))]),
    );
    if let Some(http) = ports.monitoring {
        listed.insert(
            "monitoring".into(),
            serde_json::json!([format!("http://{}", host_port(advertised, http))]),
        );
    }
    if let Some(prof) = ports.profiling {
        listed.insert(
            "profile".into(),
            serde_json::json!([format!("http://{}", host_port(advertised, prof))]),
        );
    }
    std::fs::write(&path, serde_json::Value::Object(listed).to_string())
        .with_context(|| format!("could not write ports file {}", path.display()))?;
    Ok(path)
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The control executor: off the data path, unpinned. It turns signals into
/// actions and paces lame duck mode; monitoring and `$SYS` work will live here too.
/// Where and how to serve monitoring.
struct MonitorSetup {
    host: String,
    port: u16,
    base_path: String,
    client_port: u16,
    start: std::time::SystemTime,
}

fn spawn_control(
    commander: Commander,
    global: Arc<strait_shards::global::Global>,
    (ldm_duration, ldm_grace): (Duration, Duration),
    mut reloader: Reloader,
    (monitoring, profiling): (Option<MonitorSetup>, Option<profiling::ProfilingSetup>),
) -> anyhow::Result<(glommio::ExecutorJoinHandle<()>, ControlPorts)> {
    // Answers the ports once they listen.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<ControlPorts>>();
    let signals = SignalPipes::trap()?;
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .name("control")
        .io_memory(64 * 1024)
        .spawn(move || async move {
            let signals = signals.forward();
            let monitor_ctx = match monitoring {
                Some(setup) => {
                    match start_monitoring(setup, &reloader, global.clone(), commander.clone()) {
                        Ok(ctx) => Some(ctx),
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            commander.broadcast(|| Command::Shutdown);
                            return;
                        }
                    }
                }
                None => None,
            };
            let profiling_port = match profiling.map(profiling::start).transpose() {
                Ok(port) => port,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    commander.broadcast(|| Command::Shutdown);
                    return;
                }
            };
            if let Some(ctx) = &monitor_ctx {
                ctx.profiling_port.set(profiling_port);
            }
            let running = Arc::new(reloader.running.clone());
            match strait_shards::jetstream::service::start(commander.clone(), running).await {
                Ok(js) => {
                    if let Some(ctx) = &monitor_ctx {
                        *ctx.jetstream.borrow_mut() = js;
                    }
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::Error::new(e)));
                    commander.broadcast(|| Command::Shutdown);
                    return;
                }
            }
            let _ = ready_tx.send(Ok(ControlPorts {
                monitoring: monitor_ctx.as_ref().map(|ctx| ctx.http_port),
                profiling: profiling_port,
            }));
            let mut lame_duck_since: Option<std::time::Instant> = None;
            loop {
                // Signals arrive as they are trapped; in lame duck mode the loop also
                // wakes to see whether the clients are gone.
                let next = async { signals.recv_async().await.ok() };
                let sig = match lame_duck_since {
                    None => match next.await {
                        Some(sig) => Some(sig),
                        None => break,
                    },
                    Some(_) => {
                        let pace = async {
                            glommio::timer::sleep(LAME_DUCK_CHECK).await;
                            None
                        };
                        futures_lite::future::or(next, pace).await
                    }
                };
                if let Some(sig) = sig {
                    let flow = handle_signal(
                        sig,
                        &commander,
                        &global,
                        &mut lame_duck_since,
                        &mut reloader,
                    );
                    if flow == Flow::Stop {
                        break;
                    }
                    if sig == signal_hook::consts::SIGHUP {
                        if let Some(ctx) = &monitor_ctx {
                            *ctx.opts.borrow_mut() = reloader.running.clone();
                            ctx.config_load_time.set(std::time::SystemTime::now());
                        }
                    }
                }
                if let Some(since) = lame_duck_since {
                    let elapsed = since.elapsed();
                    let no_clients = global.connections.load(Ordering::Relaxed) == 0;
                    if elapsed >= ldm_duration.max(ldm_grace) || no_clients {
                        tracing::info!("Initiating Shutdown...");
                        commander.broadcast(|| Command::Shutdown);
                        break;
                    }
                }
            }
        })
        .map_err(|e| anyhow::anyhow!("could not start the control executor: {e}"))?;
    match ready_rx.recv() {
        Ok(Ok(ports)) => Ok((handle, ports)),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => bail!("the control executor stopped while starting"),
    }
}

/// How often lame duck mode checks whether every client has gone.
const LAME_DUCK_CHECK: Duration = Duration::from_millis(100);

/// Trapped signals, one self-pipe each: the handler writes a byte, the control
/// executor reads it like any other input (no thread, no polling).
struct SignalPipes(Vec<(i32, std::os::unix::net::UnixStream)>);

impl SignalPipes {
    fn trap() -> anyhow::Result<SignalPipes> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
        let mut pipes = Vec::new();
        for sig in [SIGINT, SIGTERM, SIGUSR1, SIGHUP, SIGUSR2] {
            let (read, write) =
                std::os::unix::net::UnixStream::pair().context("could not trap signals")?;
            signal_hook::low_level::pipe::register(sig, write).context("could not trap signals")?;
            pipes.push((sig, read));
        }
        Ok(SignalPipes(pipes))
    }

    /// Starts one reader per signal on the current executor; each signal arrives
    /// on the returned channel (several of one kind in a row may arrive as one).
    fn forward(self) -> flume::Receiver<i32> {
        use futures_lite::AsyncReadExt;
        use std::os::fd::{FromRawFd, IntoRawFd};
        let (tx, rx) = flume::unbounded();
        for (sig, read) in self.0 {
            // SAFETY: `into_raw_fd` hands over the only owner of a socket we just
            // created, so the glommio stream becomes its sole owner and closes it.
            let mut stream = unsafe { glommio::net::UnixStream::from_raw_fd(read.into_raw_fd()) };
            let tx = tx.clone();
            glommio::spawn_local(async move {
                let mut buf = [0u8; 16];
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {
                    if tx.send(sig).is_err() {
                        break;
                    }
                }
            })
            .detach();
        }
        rx
    }
}

/// Whether the control loop goes on after a signal.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

fn start_monitoring(
    setup: MonitorSetup,
    reloader: &Reloader,
    global: Arc<strait_shards::global::Global>,
    commander: Commander,
) -> anyhow::Result<std::rc::Rc<monitor::MonitorContext>> {
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(setup.host.as_str(), setup.port))
        .ok()
        .and_then(|mut a| a.next())
        .with_context(|| format!("invalid monitoring address {}:{}", setup.host, setup.port))?;
    let (listener, port) = monitor::exclusive_listener(addr).map_err(|e| {
        anyhow::anyhow!("Can't start monitoring: can't listen to the monitor port: {e}")
    })?;
    tracing::info!("Starting http monitor on {}", host_port(&setup.host, port));
    let ctx = std::rc::Rc::new(monitor::MonitorContext::new(
        reloader.running.clone(),
        setup.client_port,
        setup.host,
        port,
        setup.base_path,
        setup.start,
        global,
        commander,
    ));
    glommio::spawn_local(monitor::serve(ctx.clone(), listener)).detach();
    Ok(ctx)
}

fn handle_signal(
    sig: i32,
    commander: &Commander,
    global: &strait_shards::global::Global,
    lame_duck_since: &mut Option<std::time::Instant>,
    reloader: &mut Reloader,
) -> Flow {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
    match sig {
        SIGINT | SIGTERM => {
            let name = if sig == SIGINT {
                "interrupt"
            } else {
                "terminated"
            };
            tracing::info!("Trapped \"{name}\" signal");
            tracing::info!("Initiating Shutdown...");
            commander.broadcast(|| Command::Shutdown);
            return Flow::Stop;
        }
        SIGUSR1 => match logging::reopen() {
            Ok(true) => tracing::info!("File log re-opened"),
            Ok(false) => {}
            Err(e) => tracing::error!("Error re-opening log file: {e:#}"),
        },
        SIGHUP => match reloader.reload(global, commander) {
            Ok(()) => tracing::info!("Reloaded server configuration"),
            Err(e) => tracing::error!("Failed to reload server configuration: {e:#}"),
        },
        SIGUSR2 if lame_duck_since.is_none() => {
            tracing::info!("Entering lame duck mode, stop accepting new clients");
            *lame_duck_since = Some(std::time::Instant::now());
            commander.broadcast(|| Command::LameDuck);
        }
        _ => {}
    }
    Flow::Continue
}

/// The ports the control executor listens on.
#[derive(Debug, Clone, Copy, Default)]
struct ControlPorts {
    monitoring: Option<u16>,
    profiling: Option<u16>,
}

/// Configuration reload: re-reads the file, refuses what cannot change while
/// running (the old configuration stays in force), and publishes the rest.
struct Reloader {
    cli: Cli,
    running: ServerOptions,
    /// As configured (nats-server cannot change it on reload either).
    prof_port: Option<i32>,
}

impl Reloader {
    fn reload(
        &mut self,
        global: &strait_shards::global::Global,
        commander: &Commander,
    ) -> anyhow::Result<()> {
        if self.cli.config.is_none() {
            bail!("config reload not supported without a configuration file");
        }
        let (mut new, process) = options_from_cli(&self.cli)?;
        // Identity is not configuration.
        new.server_id = self.running.server_id.clone();
        new.xkey = self.running.xkey.clone();
        let old = &self.running;
        let fixed: [(&str, String, String); 3] = [
            ("host", old.host.clone(), new.host.clone()),
            ("port", old.port.to_string(), new.port.to_string()),
            ("shards", old.shards.to_string(), new.shards.to_string()),
        ];
        if process.prof_port != self.prof_port {
            let show = |p: Option<i32>| p.unwrap_or(0).to_string();
            bail!(
                "config reload not supported for ProfPort: old={}, new={}",
                show(self.prof_port),
                show(process.prof_port)
            );
        }
        for (name, was, now) in fixed {
            // A random port (-p -1) stays whatever was picked.
            if was != now && !(name == "port" && was == "0") {
                bail!("config reload not supported for {name}: old={was}, new={now}");
            }
        }
        stabilize_accounts(&mut new, old)?;
        global.ensure_accounts(new.accounts.len());
        new.port = old.port;
        logging::set_levels(
            process.debug.unwrap_or(false),
            process.trace.unwrap_or(false),
        );
        log_tls_reload(old.tls.as_deref(), new.tls.as_deref());
        let options = Arc::new(new.clone());
        global.set_latest_options(options.clone());
        commander.broadcast(|| Command::Reload {
            options: options.clone(),
            done: None,
        });
        self.running = new;
        Ok(())
    }
}

/// Keeps every account of the running configuration at its index (shards and
/// connections refer to accounts by index), and points the users at the new ones.
fn stabilize_accounts(new: &mut ServerOptions, old: &ServerOptions) -> anyhow::Result<()> {
    let mut accounts = (*new.accounts).clone();
    let map = accounts
        .stabilize(&old.accounts)
        .map_err(|e| anyhow::anyhow!("config reload not supported for accounts: {e}"))?;
    let moved = |index: u32| map.get(index as usize).copied().unwrap_or(index);
    for user in new.auth.users.values_mut() {
        user.account = moved(user.account);
    }
    for user in &mut new.auth.nkeys {
        user.account = moved(user.account);
    }
    if accounts != *old.accounts {
        tracing::info!("Reloaded: accounts");
    }
    new.accounts = Arc::new(accounts);
    Ok(())
}

/// nats-server's notices for TLS options a reload changed. New certificates apply
/// to new connections; established ones keep their session.
fn log_tls_reload(
    old: Option<&strait_shards::tls::TlsSettings>,
    new: Option<&strait_shards::tls::TlsSettings>,
) {
    match (old, new) {
        (None, None) => {}
        (Some(_), None) => tracing::info!("Reloaded: tls = disabled"),
        (None, Some(_)) => tracing::info!("Reloaded: tls = enabled"),
        (Some(o), Some(n)) => {
            if !o.same_as(n) {
                tracing::info!("Reloaded: tls = enabled");
            }
            if o.timeout() != n.timeout() {
                tracing::info!("Reloaded: tls timeout = {}", n.timeout().as_secs_f64());
            }
            if o.spec.handshake_first != n.spec.handshake_first {
                tracing::info!(
                    "Reloaded: Client TLS handshake first: {}",
                    n.spec.handshake_first
                );
            }
        }
    }
}
