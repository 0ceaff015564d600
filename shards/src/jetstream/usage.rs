//! The bytes JetStream holds, against the server's `max_memory_store` /
//! `max_file_store` and each account's `max_memory` / `max_file`, checked at
//! every publish as nats-server checks them.
//!
//! An account's streams live on many shards, so its total is a ledger the
//! shards share. A stream does not touch it per message: it keeps the bytes it
//! has not reported yet to itself and reports them in steps of
//! [`REPORT_STEP`] (and after every purge, delete, expiry and once a second).
//! A publish checks the ledger plus its own stream's unreported bytes, which
//! is exact for the streams of one shard and at most a step behind for each
//! stream on another.

use std::cell::Cell;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use super::config::StorageType;
use super::errors::{self, ApiError};

/// How far a stream's bytes may drift from what its ledgers know.
pub const REPORT_STEP: i64 = 64 * 1024;

/// How often a refused publish may log that a limit was reached, per ledger.
const LOG_EVERY_NS: i64 = 10_000_000_000;

/// The bytes in use in memory and on file by one account's streams, or by the
/// whole server's, and their ceilings (-1: none).
#[derive(Debug)]
pub struct Ledger {
    used: [AtomicI64; 2],
    max: [i64; 2],
    next_log_ns: AtomicI64,
}

fn slot(storage: StorageType) -> usize {
    match storage {
        StorageType::Memory => 0,
        StorageType::File => 1,
    }
}

impl Ledger {
    pub fn new(max_memory: i64, max_store: i64) -> Arc<Ledger> {
        Arc::new(Ledger {
            used: [AtomicI64::new(0), AtomicI64::new(0)],
            max: [max_memory, max_store],
            next_log_ns: AtomicI64::new(0),
        })
    }

    /// The bytes the ledger knows of for `storage`.
    pub fn used(&self, storage: StorageType) -> i64 {
        self.used[slot(storage)].load(Ordering::Relaxed)
    }

    fn max(&self, storage: StorageType) -> i64 {
        self.max[slot(storage)]
    }

    fn add(&self, storage: StorageType, delta: i64) {
        self.used[slot(storage)].fetch_add(delta, Ordering::Relaxed);
    }

    /// True at most once per [`LOG_EVERY_NS`], whichever shard asks.
    fn log_due(&self, now_ns: i64) -> bool {
        let next = self.next_log_ns.load(Ordering::Relaxed);
        now_ns >= next
            && self
                .next_log_ns
                .compare_exchange(
                    next,
                    now_ns + LOG_EVERY_NS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }
}

fn storage_word(storage: StorageType) -> &'static str {
    match storage {
        StorageType::Memory => "memory",
        StorageType::File => "file",
    }
}

/// One stream's share of its account's and the server's ledgers.
#[derive(Debug)]
pub struct StreamUsage {
    account_name: String,
    account: Arc<Ledger>,
    server: Arc<Ledger>,
    storage: StorageType,
    /// The stream's bytes as last reported to both ledgers.
    reported: Cell<i64>,
}

impl StreamUsage {
    pub fn account_name(&self) -> &str {
        &self.account_name
    }

    pub fn new(
        account_name: String,
        account: Arc<Ledger>,
        server: Arc<Ledger>,
        storage: StorageType,
    ) -> StreamUsage {
        StreamUsage {
            account_name,
            account,
            server,
            storage,
            reported: Cell::new(0),
        }
    }

    /// Whether a message of `size` bytes (as this storage counts them) fits, the
    /// stream holding `bytes` now: nats-server refuses it when the server is
    /// already past its ceiling (10023), or when the account would be (10002).
    pub fn room_for(&self, bytes: u64, size: u64, now_ns: i64) -> Result<(), ApiError> {
        let unreported = bytes as i64 - self.reported.get();
        let server_max = self.server.max(self.storage);
        if server_max >= 0 && self.server.used(self.storage) + unreported > server_max {
            if self.server.log_due(now_ns) {
                tracing::error!(
                    "JetStream {} resource limits exceeded for server",
                    storage_word(self.storage)
                );
            }
            return Err(errors::INSUFFICIENT_RESOURCES.error());
        }
        let account_max = self.account.max(self.storage);
        if account_max >= 0
            && self.account.used(self.storage) + unreported + size as i64 > account_max
        {
            if self.account.log_due(now_ns) {
                tracing::warn!(
                    "JetStream {} resource limits exceeded for account: {:?}",
                    storage_word(self.storage),
                    self.account_name
                );
            }
            return Err(errors::ACCOUNT_RESOURCES_EXCEEDED.error());
        }
        Ok(())
    }

    /// Tells the ledgers the stream now holds `bytes`, when that is a step away
    /// from what they know or `now` is asked for.
    pub fn report(&self, bytes: u64, now: bool) {
        let delta = bytes as i64 - self.reported.get();
        if delta == 0 || (!now && delta.abs() < REPORT_STEP) {
            return;
        }
        self.account.add(self.storage, delta);
        self.server.add(self.storage, delta);
        self.reported.set(bytes as i64);
    }

    /// The stream is gone: what it reported is no longer in use.
    pub fn release(&self) {
        self.report(0, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(account: &Arc<Ledger>, server: &Arc<Ledger>) -> StreamUsage {
        StreamUsage::new(
            "A".into(),
            account.clone(),
            server.clone(),
            StorageType::File,
        )
    }

    #[test]
    fn an_account_past_its_ceiling_refuses_with_10002_counting_unreported_bytes() {
        let account = Ledger::new(-1, 1000);
        let server = Ledger::new(-1, -1);
        let one = usage(&account, &server);
        one.room_for(0, 1000, 0).unwrap();
        // Not reported yet (below a step), still counted for this stream.
        one.report(900, false);
        assert_eq!(account.used(StorageType::File), 0);
        assert_eq!(one.room_for(900, 100, 0), Ok(()));
        let e = one.room_for(900, 101, 0).unwrap_err();
        assert_eq!(e.err_code, 10002);
        // Another stream of the account sees what the first reported.
        one.report(900, true);
        let other = usage(&account, &server);
        assert_eq!(other.room_for(0, 101, 0).unwrap_err().err_code, 10002);
        // Memory has its own ceiling (none here).
        let mem = StreamUsage::new("A".into(), account.clone(), server, StorageType::Memory);
        assert_eq!(mem.room_for(0, 1 << 40, 0), Ok(()));
        one.release();
        assert_eq!(account.used(StorageType::File), 0);
        other.room_for(0, 1000, 0).unwrap();
    }

    #[test]
    fn a_server_past_its_ceiling_refuses_with_10023_once_it_is_over() {
        let account = Ledger::new(-1, -1);
        let server = Ledger::new(-1, 1000);
        let a = usage(&account, &server);
        // As nats-server: the publish that crosses the ceiling is taken...
        a.room_for(1000, 5000, 0).unwrap();
        a.report(1200, true);
        // ...and the next one, on any stream, is refused.
        let b = usage(&Ledger::new(-1, -1), &server);
        assert_eq!(b.room_for(0, 1, 0).unwrap_err().err_code, 10023);
        a.report(100, true);
        b.room_for(0, 1, 0).unwrap();
    }

    #[test]
    fn reports_go_out_in_steps() {
        let account = Ledger::new(-1, -1);
        let server = Ledger::new(-1, -1);
        let a = usage(&account, &server);
        a.report(REPORT_STEP as u64 - 1, false);
        assert_eq!(server.used(StorageType::File), 0);
        a.report(REPORT_STEP as u64, false);
        assert_eq!(server.used(StorageType::File), REPORT_STEP);
        // Shrinking by less than a step waits too; by a step, it goes out.
        a.report(10, false);
        assert_eq!(account.used(StorageType::File), REPORT_STEP);
        a.report(0, false);
        assert_eq!(account.used(StorageType::File), 0);
    }
}
