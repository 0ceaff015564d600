//! The reference nats-server, for differential tests: the same input goes to
//! strait and to nats-server v2.14, and what a client sees must be the same.
//!
//! The binary comes from `STRAIT_REFERENCE_SERVER` (scripts/test.sh sets it) or
//! from `scripts/reference-server.sh`. When it cannot be had the test fails with
//! the reason; scripts/test.sh skips these tests (named `*_vs_nats_server`) only
//! when `STRAIT_SKIP_REFERENCE=1` says so, and prints that it did.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The reference binary, found or installed once per test process.
pub fn binary() -> PathBuf {
    static BINARY: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("STRAIT_REFERENCE_SERVER") {
                let path = PathBuf::from(path);
                return if path.exists() {
                    Ok(path)
                } else {
                    Err(format!(
                        "STRAIT_REFERENCE_SERVER={} does not exist",
                        path.display()
                    ))
                };
            }
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/reference-server.sh");
            let out = Command::new("bash")
                .arg(&script)
                .output()
                .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
            if !out.status.success() {
                return Err(format!(
                    "{} failed: {}",
                    script.display(),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if path.exists() {
                Ok(path)
            } else {
                Err(format!("{} printed no binary", script.display()))
            }
        })
        .clone()
        .unwrap_or_else(|reason| {
            panic!(
                "this test needs the reference nats-server, which could not be had: {reason}\n\
                 (scripts/test.sh installs it; STRAIT_SKIP_REFERENCE=1 scripts/test.sh skips these tests)"
            )
        })
}

/// A running nats-server, killed on drop.
pub struct Reference {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Reference {
    /// Starts nats-server with `config` on a port of its choosing (`-p -1`) and
    /// reads the port from its log, so that concurrent tests cannot race for one.
    pub fn start(config: &Path) -> Reference {
        let log = config.with_extension("nats.log");
        let _ = std::fs::remove_file(&log);
        let child = Command::new(binary())
            .args(["-a", "127.0.0.1", "-p", "-1", "-l"])
            .arg(&log)
            .arg("-c")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        // Killed and reaped on drop, also when the start fails below.
        let mut reference = Reference {
            child,
            port: 0,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&reference.log).unwrap_or_default();
            let port = text
                .lines()
                .find_map(|l| l.split("Listening for client connections on ").nth(1))
                .and_then(|addr| addr.trim().rsplit(':').next()?.parse().ok());
            if let Some(port) = port {
                reference.port = port;
                return reference;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not start: {text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// xorshift64*: a fixed sequence per seed, so a failure can be replayed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.below(items.len() as u64) as usize]
    }
}
