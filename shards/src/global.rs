//! Process-wide state shared by all shards: counters touched at connect, close
//! and shutdown, never per message.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::options::ServerOptions;

/// Process-wide state shared by all shards. Touched at connect, close and
/// shutdown only — never per message.
#[derive(Debug, Default)]
pub struct Global {
    /// The options of the latest reload. Shards get them as a command; this copy
    /// is read only by a shard that meets a reload's effects (another shard's
    /// messages in a new account) before its own command arrives.
    latest_options: std::sync::Mutex<Option<Arc<ServerOptions>>>,
    pub connections: AtomicUsize,
    pub total_connections: AtomicU64,
    pub slow_consumers: AtomicU64,
    /// Connection counts per account (index as in `ServerOptions::accounts`), for
    /// account connection limits; a reload may add accounts.
    accounts: std::sync::RwLock<Vec<Arc<AccountCounters>>>,
    /// When the next accept error may be logged (microseconds since `epoch`).
    next_accept_error_log: AtomicU64,
    epoch: std::sync::OnceLock<Instant>,
}

/// One account's connections over all shards.
#[derive(Debug, Default)]
pub struct AccountCounters {
    pub connections: AtomicUsize,
    pub total: AtomicU64,
}

impl Global {
    pub fn new(accounts: usize) -> Self {
        let global = Global::default();
        global.ensure_accounts(accounts);
        global
    }

    /// True when a failed accept should be logged now: at most once per `delay`
    /// for the whole server, whichever shard sees it.
    pub fn accept_error_log_due(&self, delay: Duration) -> bool {
        let epoch = *self.epoch.get_or_init(Instant::now);
        let now = epoch.elapsed().as_micros() as u64;
        let next = self.next_accept_error_log.load(Ordering::Relaxed);
        now >= next
            && self
                .next_accept_error_log
                .compare_exchange(
                    next,
                    now + delay.as_micros() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Makes room for counters of `n` accounts (a reload added some).
    pub fn ensure_accounts(&self, n: usize) {
        if let Ok(mut list) = self.accounts.write() {
            while list.len() < n {
                list.push(Arc::default());
            }
        }
    }

    pub fn account_counters(&self, account: u32) -> Option<Arc<AccountCounters>> {
        self.accounts.read().ok()?.get(account as usize).cloned()
    }

    /// The options of the latest reload (see `latest_options`).
    pub fn latest_options(&self) -> Option<Arc<ServerOptions>> {
        self.latest_options.lock().ok()?.clone()
    }

    /// Records a reload's options before the shards are told to apply them.
    pub fn set_latest_options(&self, opts: Arc<ServerOptions>) {
        if let Ok(mut latest) = self.latest_options.lock() {
            *latest = Some(opts);
        }
    }
}
