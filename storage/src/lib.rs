//! JetStream stores: the store under every stream.
//!
//! Two implementations behind one async API ([`Store`]): [`MemStore`] (sync work behind
//! async fns) and [`FileStore`] (direct-I/O log segments on glommio, group commit,
//! recovery, encryption at rest). The deterministic cores — the record format
//! ([`record`]) and the index with the limits logic ([`index`]) — have no I/O and no
//! clock in them. Everything is single-shard: `Rc`/`RefCell`, `!Send` futures, no locks.
//! See README.md for the design and the on-disk format.

pub mod config;
pub mod error;
pub mod file;
pub mod index;
pub mod mem;
pub mod record;
pub mod seqset;
pub mod snapshot;
pub mod state_file;
pub mod subject;
pub mod summary;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

pub use config::{Cipher, Discard, Encryption, FileStoreConfig, Limits, SyncPolicy};
pub use error::{Result, StoreError};
pub use file::{Corruption, FileStore, RecoveryReport};
pub use mem::MemStore;
pub use state_file::StateFile;

/// A per-message TTL (nats-server's `Nats-TTL` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgTtl {
    /// Never expires, not even by `max_age`.
    Never,
    /// Expires this long after the message's timestamp.
    After(Duration),
}

impl MsgTtl {
    /// Encoded as nanoseconds: -1 never, >0 after.
    pub(crate) fn to_nanos(self) -> i64 {
        match self {
            MsgTtl::Never => -1,
            MsgTtl::After(d) => d.as_nanos().clamp(1, i64::MAX as u128) as i64,
        }
    }
    pub(crate) fn from_nanos(n: i64) -> Option<Self> {
        match n {
            0 => None,
            n if n < 0 => Some(MsgTtl::Never),
            n => Some(MsgTtl::After(Duration::from_nanos(n as u64))),
        }
    }
}

/// A message as loaded from a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub seq: u64,
    pub subject: String,
    pub headers: Bytes,
    pub payload: Bytes,
    /// Nanoseconds since the Unix epoch.
    pub ts: i64,
}

/// A stream's state (nats-server's StreamState).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamState {
    pub msgs: u64,
    pub bytes: u64,
    pub first_seq: u64,
    pub first_ts: i64,
    pub last_seq: u64,
    pub last_ts: i64,
    pub num_deleted: u64,
    /// Deleted sequences between first and last (empty from `fast_state`).
    pub deleted: Vec<u64>,
    pub num_subjects: u64,
}

/// Messages matching a filter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FilteredState {
    pub msgs: u64,
    pub first: u64,
    pub last: u64,
}

/// A purge request (nats-server's PurgeEx): messages matching `filter` (empty = all) with
/// sequence below `up_to` (0 = no bound), keeping the newest `keep` matches (0 = none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Purge {
    pub filter: String,
    pub up_to: u64,
    pub keep: u64,
}

/// The store API every stream uses.
#[allow(async_fn_in_trait)]
pub trait Store {
    /// Appends a message with timestamp `ts` (ns since the epoch; also the "now" used to
    /// expire old messages) and returns its sequence. With the default sync policy it
    /// completes once the record is on stable storage.
    async fn append(
        &self,
        subject: &str,
        headers: &[u8],
        payload: &[u8],
        ts: i64,
        ttl: Option<MsgTtl>,
    ) -> Result<u64>;
    /// The message at `seq`; `NotFound` if deleted or never stored.
    async fn load(&self, seq: u64) -> Result<StoredMessage>;
    /// The newest message whose subject matches `filter`.
    async fn load_last(&self, filter: &str) -> Result<StoredMessage>;
    /// The first message at or after `start` whose subject matches `filter`; `Eof` if none.
    async fn load_next(&self, start: u64, filter: &str) -> Result<StoredMessage>;
    /// Removes a message; with `erase` its bytes are overwritten on disk too. Returns
    /// false if it did not exist.
    async fn delete(&self, seq: u64, erase: bool) -> Result<bool>;
    /// Purges; returns how many messages were removed.
    async fn purge(&self, req: &Purge) -> Result<u64>;
    /// Removes every message below `seq`; returns how many were removed.
    async fn compact(&self, seq: u64) -> Result<u64>;
    /// Moves the last sequence up to `seq` without storing anything: the
    /// sequences in between are deleted ones (a mirror following its origin
    /// past messages the origin removed). Into an empty store it is a move of
    /// the first sequence to `seq + 1`. Nothing happens at or below the last.
    async fn skip_to(&self, seq: u64) -> Result<()>;
    /// Applies `max_age` and per-message TTLs at `now` (ns); returns how many were removed.
    async fn expire(&self, now: i64) -> Result<u64>;
    /// Replaces the limits and applies them at `now`.
    async fn update_limits(&self, limits: Limits, now: i64) -> Result<()>;
    /// State including the list of deleted sequences.
    fn state(&self) -> StreamState;
    /// State without the deleted list.
    fn fast_state(&self) -> StreamState;
    /// Message counts per subject matching `filter`.
    fn subjects_state(&self, filter: &str) -> BTreeMap<String, u64>;
    /// Count, first and last sequence of messages matching `filter`.
    fn filtered_state(&self, filter: &str) -> FilteredState;
    /// How many messages at or after `start` match `filter`.
    fn num_pending(&self, start: u64, filter: &str) -> u64;
    /// The first message at or after `start` matching one of `filters` (none:
    /// every subject), with its accounted size; from the index, without I/O.
    fn next_matching(&self, start: u64, filters: &[String]) -> Option<(u64, u64)>;
    /// A consumer reads by `filter` from now on: keep its matches at hand, so that
    /// `next_matching` and `num_pending` for it need not walk subjects or messages.
    /// Each call is paired with an `unwatch` once that reader is gone.
    fn watch(&self, filter: &str);
    fn unwatch(&self, filter: &str);
    /// The accounted size of message `seq`; `None` if it is not stored.
    fn stored_size(&self, seq: u64) -> Option<u64>;
    /// The subject message `seq` is stored under; `None` if it is not stored.
    fn stored_subject(&self, seq: u64) -> Option<subject::Subject>;
    /// When message `seq` was stored (ns); `None` if it is not stored.
    fn stored_time(&self, seq: u64) -> Option<i64>;
    /// The first sequence stored at or after `ts` (ns); `last_seq + 1` if none.
    fn seq_from_time(&self, ts: i64) -> u64;
    /// The last sequence per subject matching any of `filters`, at or below `up_to`
    /// (0 = no bound), ascending; `None` when more than `max` subjects match.
    fn multi_last(&self, filters: &[String], up_to: u64, max: usize) -> Option<Vec<u64>>;
    /// The sequences stored at or after `ts` (ns) whose messages carry headers,
    /// ascending.
    fn with_headers_since(&self, ts: i64) -> Vec<u64>;
    /// The messages past their age or TTL at `now` (ns) that `expire` left because
    /// each is the last of its subject and subject delete markers are on; the stream
    /// replaces each with a marker (or removes it, when it is a marker). Ascending.
    fn expired_last_of_subjects(&self, now: i64) -> Vec<u64>;
    /// When `expire` next has work to do (ns), for the shard's timer.
    fn next_expiry(&self) -> Option<i64>;
    /// Makes everything appended so far durable.
    async fn sync(&self) -> Result<()>;
    /// Syncs and closes; later calls fail with `Closed`.
    async fn close(&self) -> Result<()>;
}

/// Either store, so a stream can hold one without generics (async-fn traits are not
/// object safe).
pub enum AnyStore {
    Memory(Box<MemStore>),
    File(FileStore),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Memory($s) => $e,
            AnyStore::File($s) => $e,
        }
    };
}

impl Store for AnyStore {
    async fn append(
        &self,
        subject: &str,
        headers: &[u8],
        payload: &[u8],
        ts: i64,
        ttl: Option<MsgTtl>,
    ) -> Result<u64> {
        delegate!(self, s => s.append(subject, headers, payload, ts, ttl).await)
    }
    async fn load(&self, seq: u64) -> Result<StoredMessage> {
        delegate!(self, s => s.load(seq).await)
    }
    async fn load_last(&self, filter: &str) -> Result<StoredMessage> {
        delegate!(self, s => s.load_last(filter).await)
    }
    async fn load_next(&self, start: u64, filter: &str) -> Result<StoredMessage> {
        delegate!(self, s => s.load_next(start, filter).await)
    }
    async fn delete(&self, seq: u64, erase: bool) -> Result<bool> {
        delegate!(self, s => s.delete(seq, erase).await)
    }
    async fn purge(&self, req: &Purge) -> Result<u64> {
        delegate!(self, s => s.purge(req).await)
    }
    async fn compact(&self, seq: u64) -> Result<u64> {
        delegate!(self, s => s.compact(seq).await)
    }
    async fn skip_to(&self, seq: u64) -> Result<()> {
        delegate!(self, s => s.skip_to(seq).await)
    }
    async fn expire(&self, now: i64) -> Result<u64> {
        delegate!(self, s => s.expire(now).await)
    }
    async fn update_limits(&self, limits: Limits, now: i64) -> Result<()> {
        delegate!(self, s => s.update_limits(limits, now).await)
    }
    fn state(&self) -> StreamState {
        delegate!(self, s => s.state())
    }
    fn fast_state(&self) -> StreamState {
        delegate!(self, s => s.fast_state())
    }
    fn subjects_state(&self, filter: &str) -> BTreeMap<String, u64> {
        delegate!(self, s => s.subjects_state(filter))
    }
    fn filtered_state(&self, filter: &str) -> FilteredState {
        delegate!(self, s => s.filtered_state(filter))
    }
    fn num_pending(&self, start: u64, filter: &str) -> u64 {
        delegate!(self, s => s.num_pending(start, filter))
    }
    fn next_matching(&self, start: u64, filters: &[String]) -> Option<(u64, u64)> {
        delegate!(self, s => s.next_matching(start, filters))
    }
    fn watch(&self, filter: &str) {
        delegate!(self, s => s.watch(filter))
    }
    fn unwatch(&self, filter: &str) {
        delegate!(self, s => s.unwatch(filter))
    }
    fn stored_size(&self, seq: u64) -> Option<u64> {
        delegate!(self, s => s.stored_size(seq))
    }
    fn stored_subject(&self, seq: u64) -> Option<subject::Subject> {
        delegate!(self, s => s.stored_subject(seq))
    }
    fn stored_time(&self, seq: u64) -> Option<i64> {
        delegate!(self, s => s.stored_time(seq))
    }
    fn seq_from_time(&self, ts: i64) -> u64 {
        delegate!(self, s => s.seq_from_time(ts))
    }
    fn multi_last(&self, filters: &[String], up_to: u64, max: usize) -> Option<Vec<u64>> {
        delegate!(self, s => s.multi_last(filters, up_to, max))
    }
    fn with_headers_since(&self, ts: i64) -> Vec<u64> {
        delegate!(self, s => s.with_headers_since(ts))
    }
    fn expired_last_of_subjects(&self, now: i64) -> Vec<u64> {
        delegate!(self, s => s.expired_last_of_subjects(now))
    }
    fn next_expiry(&self) -> Option<i64> {
        delegate!(self, s => s.next_expiry())
    }
    async fn sync(&self) -> Result<()> {
        delegate!(self, s => s.sync().await)
    }
    async fn close(&self) -> Result<()> {
        delegate!(self, s => s.close().await)
    }
}
