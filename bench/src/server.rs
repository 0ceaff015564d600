//! Starting and always stopping the servers of a side-by-side run.
//!
//! Three layers make sure no server outlives the harness: the [`ServerProc`] guard kills
//! on drop (normal return and error paths); a panic hook kills every registered server
//! (the workspace builds with `panic = "abort"`, where drops do not run); and each child
//! asks the kernel for SIGKILL when the harness itself dies (PR_SET_PDEATHSIG).

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};

use crate::conn::{Conn, Endpoint};
use crate::procstat;

const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// `NAME=COMMAND`: a label and a command line (split on whitespace, no shell quoting)
/// to which `-a 127.0.0.1 -p PORT -P PIDFILE` are appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    pub name: String,
    pub command: Vec<String>,
}

impl ServerSpec {
    /// The `--shards N` of a strait command line, if it has one.
    pub fn shards(&self) -> Option<u64> {
        self.command
            .windows(2)
            .find(|w| w[0] == "--shards")
            .and_then(|w| w[1].parse().ok())
    }
}

impl FromStr for ServerSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (name, cmd) = s
            .split_once('=')
            .ok_or_else(|| format!("expected NAME=COMMAND, got {s:?}"))?;
        let name = name.trim();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "server name {name:?} must be non-empty letters, digits, '-', '_' or '.'"
            ));
        }
        let command: Vec<String> = cmd.split_whitespace().map(str::to_string).collect();
        if command.is_empty() {
            return Err(format!("no command given for server {name:?}"));
        }
        Ok(Self {
            name: name.to_string(),
            command,
        })
    }
}

/// Pids of servers alive right now, for the panic hook.
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static HOOK: Once = Once::new();

fn kill_pid(pid: u32) {
    send_signal(pid, libc::SIGKILL);
}

fn send_signal(pid: u32, signal: libc::c_int) {
    if let Ok(p) = libc::pid_t::try_from(pid) {
        if p > 0 {
            // SAFETY: kill has no memory-safety preconditions; the pid is one we
            // started and have not yet reaped, so it cannot name a recycled process.
            unsafe {
                libc::kill(p, signal);
            }
        }
    }
}

const PIDFILE: &str = "server.pid";
const LOG: &str = "server.log";

/// Runs the command in `dir` on `port`, output to `server.log` there (appended, so a
/// restarted server's log follows its predecessor's).
fn spawn(spec: &ServerSpec, dir: &Path, port: u16) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(LOG))
        .context("opening server log")?;
    let log2 = log.try_clone().context("cloning log handle")?;
    let mut cmd = Command::new(&spec.command[0]);
    cmd.args(&spec.command[1..])
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-P"])
        .arg(dir.join(PIDFILE))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: the closure runs in the forked child before exec; prctl is
    // async-signal-safe and the closure neither allocates nor takes locks.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("starting server {} ({:?})", spec.name, spec.command))
}

fn install_panic_hook() {
    HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Ok(live) = LIVE.lock() {
                live.iter().copied().for_each(kill_pid);
            }
            prev(info);
        }));
    });
}

fn register(pid: u32) {
    if let Ok(mut live) = LIVE.lock() {
        live.push(pid);
    }
}

fn unregister(pid: u32) {
    if let Ok(mut live) = LIVE.lock() {
        live.retain(|p| *p != pid);
    }
}

/// A running server in its own temp dir on a free loopback port; killed on drop.
pub struct ServerProc {
    pub name: String,
    pub port: u16,
    /// The server's pid: from its pid file when it wrote one (the command may be a
    /// wrapper), else the child's.
    pub pid: u32,
    child: Child,
    dir: PathBuf,
    spec: ServerSpec,
    /// Stopped and reaped by [`ServerProc::stop`]: its pid may belong to another
    /// process by now, so nothing may signal it.
    stopped: bool,
}

pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
    Ok(l.local_addr().context("reading bound port")?.port())
}

fn unique_dir() -> Result<PathBuf> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "strait-bench-{}-{nanos}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

impl ServerProc {
    /// Starts the server on a free port. The port is free when picked but can be
    /// taken (by another test's client, as its ephemeral port) before the server
    /// binds it; then the start is tried again on another port.
    pub fn start(spec: &ServerSpec) -> Result<Self> {
        let mut attempt = 0;
        loop {
            match Self::start_once(spec) {
                Err(e) if attempt < 3 && format!("{e:#}").contains("address already in use") => {
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn start_once(spec: &ServerSpec) -> Result<Self> {
        install_panic_hook();
        let dir = unique_dir()?;
        let port = free_port()?;
        let child = match spawn(spec, &dir, port) {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let child_pid = child.id();
        register(child_pid);
        let mut me = Self {
            name: spec.name.clone(),
            port,
            pid: child_pid,
            child,
            dir,
            spec: spec.clone(),
            stopped: false,
        };
        me.wait_ready(READY_TIMEOUT)
            .with_context(|| format!("server {} ({:?})", spec.name, spec.command))?;
        Ok(me)
    }

    /// Sends `signal` (SIGTERM: a graceful stop; SIGKILL: a crash) and waits up to
    /// `timeout` for the process to exit; then SIGKILL, so it never outlives the call.
    pub fn stop(&mut self, signal: libc::c_int, timeout: Duration) -> Result<ExitStatus> {
        send_signal(self.pid, signal);
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().context("polling server")? {
                break status;
            }
            if Instant::now() > deadline {
                kill_pid(self.pid);
                let status = self.child.wait().context("reaping server")?;
                unregister(self.pid);
                self.stopped = true;
                bail!(
                    "server {} did not exit within {timeout:?} of signal {signal} ({status})",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        unregister(self.pid);
        unregister(self.child.id());
        self.stopped = true;
        Ok(status)
    }

    /// Starts the same command again in the same directory on the same port, as
    /// systemd restarts a service: the store the last process left is what this one
    /// opens. Returns once the port accepts clients (at most `ready` later).
    pub fn respawn(&mut self, ready: Duration) -> Result<()> {
        if self.child.try_wait().context("polling server")?.is_none() {
            bail!("server {} is still running", self.name);
        }
        // The old pid file must not be mistaken for the new process's.
        let _ = std::fs::remove_file(self.dir.join(PIDFILE));
        self.child = spawn(&self.spec, &self.dir, self.port)?;
        self.pid = self.child.id();
        self.stopped = false;
        register(self.pid);
        self.wait_ready(ready)
            .with_context(|| format!("restarting server {}", self.name))
    }

    /// The directory the server runs in (its relative store directory lives here).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Until the port answers with INFO; fails early if the process exits.
    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let pidfile = self.dir.join(PIDFILE);
        let deadline = Instant::now() + timeout;
        let ep = self.endpoint();
        loop {
            if let Some(status) = self.child.try_wait().context("polling server")? {
                bail!(
                    "exited with {status} before accepting connections; log:\n{}",
                    self.log_tail()
                );
            }
            if Conn::connect(&ep, "bench-probe").is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "not accepting connections on 127.0.0.1:{} after {timeout:?}; log:\n{}",
                    self.port,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        {
            if pid != self.pid {
                register(pid);
                self.pid = pid;
            }
        }
        Ok(())
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint::loopback(self.port)
    }

    /// Resident set after letting the fresh server settle, KiB.
    pub fn idle_rss_kb(&self, settle: Duration) -> Result<u64> {
        std::thread::sleep(settle);
        Ok(procstat::sample(self.pid)
            .with_context(|| format!("sampling idle RSS of {}", self.name))?
            .rss_kb)
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join(LOG)).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Fails if the server died during a run (a crash must not pass as a slow result).
    pub fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait().context("polling server")? {
            Some(status) => Err(anyhow!(
                "server {} exited with {status}; log:\n{}",
                self.name,
                self.log_tail()
            )),
            None => Ok(()),
        }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let child_pid = self.child.id();
        if self.pid != child_pid && !self.stopped {
            kill_pid(self.pid);
            unregister(self.pid);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        unregister(child_pid);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parsing() {
        let s: ServerSpec = "strait=target/release/strait --x 1".parse().expect("spec");
        assert_eq!(s.name, "strait");
        assert_eq!(s.command, ["target/release/strait", "--x", "1"]);
        let s: ServerSpec = "b=/p/nats-server=odd".parse().expect("= in command");
        assert_eq!(s.command, ["/p/nats-server=odd"]);
        assert!("nocommand".parse::<ServerSpec>().is_err());
        assert!("=x".parse::<ServerSpec>().is_err());
        assert!("a=  ".parse::<ServerSpec>().is_err());
        assert!("a b=x".parse::<ServerSpec>().is_err());
    }

    #[test]
    fn missing_binary_is_an_error_and_leaves_nothing() {
        let spec: ServerSpec = "x=/nonexistent/strait-bench-no-such-binary"
            .parse()
            .expect("spec");
        let err = ServerProc::start(&spec).err().expect("must fail");
        assert!(format!("{err:#}").contains("starting server x"));
    }

    #[test]
    fn early_exit_is_reported() {
        // `false` ignores its arguments and exits 1 at once.
        let spec: ServerSpec = "f=false".parse().expect("spec");
        let err = ServerProc::start(&spec).err().expect("must fail");
        assert!(format!("{err:#}").contains("exited"), "{err:#}");
    }
}
