//! The thin shell that hosts streams on a shard: it opens a stream's store,
//! subscribes the stream as an internal client on its subjects (so publishes
//! from every shard reach it through the mesh), runs each message through the
//! stream's state machine, appends what it accepts and answers with the PubAck
//! once the store says the message is durable. Appends are pipelined: each is
//! staged in order at once and completes with the group commit it rides, so
//! many publishes in flight share one fdatasync.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{json, Value};
use strait_storage::{
    index::Accounting, AnyStore, Encryption, FileStore, FileStoreConfig, Limits, MemStore, MsgTtl,
    Purge, Store, StoreError, SyncPolicy,
};

use super::config::{Discard, StorageType, StreamConfig};
use super::direct::{self, BatchPosition, DirectRequest, Status};
use super::errors::{self, ApiError};
use super::stream::{Decision, Ingest, Rollup, StoreView, Stream};
use super::usage::{Ledger, StreamUsage};
use crate::internal::{InternalMsg, InternalReceiver};
use crate::router::SubscriberId;
use crate::shard::Shard;

mod batches;
mod consumers;
pub(crate) use consumers::write_kept_state;
mod sourcing;
pub(super) use consumers::PAUSE_ADVISORY_TYPE;

/// Direct gets: `$JS.API.DIRECT.GET.<stream>` and `...<stream>.<subject>`.
pub const DIRECT_GET_PREFIX: &str = "$JS.API.DIRECT.GET.";
/// nats-server's queue group for a stream's direct get subscriptions.
pub(super) const DIRECT_GET_GROUP: &[u8] = b"_sys_";

/// Messages taken from a stream's queue before the acknowledgements so far are
/// flushed to the mesh.
const BATCH: usize = 256;

/// Nanoseconds since the Unix epoch, as the store timestamps messages.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// RFC 3339 of a store timestamp; Go's zero time for 0.
pub fn ts_rfc3339(ns: i64) -> String {
    if ns <= 0 {
        return super::GO_ZERO_TIME.into();
    }
    crate::rfc3339(UNIX_EPOCH + Duration::from_nanos(ns as u64))
}

/// Everything a shard needs to host one stream.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub account: u32,
    pub config: StreamConfig,
    /// The stream's directory (file storage).
    pub dir: PathBuf,
    pub sync: SyncPolicy,
    pub encryption: Option<Encryption>,
    pub domain: Option<String>,
    /// The account's name and its and the server's byte ledgers.
    pub account_name: String,
    pub account_usage: Arc<Ledger>,
    pub server_usage: Arc<Ledger>,
    /// Where the stream tells the service what it decided on its own.
    pub events: flume::Sender<HostEvent>,
    pub batch_limits: super::batch::BatchLimits,
}

/// What a hosted stream tells the JetStream service unasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    /// The consumer made at `created` was not used for its inactive
    /// threshold: the service deletes it, as it does when asked to.
    ConsumerInactive {
        account: String,
        stream: String,
        consumer: String,
        created: i64,
    },
}

/// A request about one hosted stream.
#[derive(Debug)]
pub enum StreamOp {
    /// The `state` object of a stream info.
    State {
        subjects_filter: Option<String>,
        deleted_details: bool,
    },
    Update(Box<StreamConfig>),
    Purge(Purge),
    /// By sequence, or the last or next (from `seq`) on `subject`.
    GetMsg {
        seq: u64,
        last_by_subject: Option<String>,
        next_by_subject: Option<String>,
        /// Instead of `seq`: the first sequence stored at or after this time (ns).
        start_time: Option<i64>,
    },
    DeleteMsg {
        seq: u64,
        erase: bool,
    },
    /// Stops the stream and removes its data.
    Delete,
    /// Runs a consumer (or updates its configuration); answers its info.
    PutConsumer {
        config: Box<super::consumer_config::ConsumerConfig>,
        created: i64,
    },
    ConsumerInfo {
        name: String,
    },
    DeleteConsumer {
        name: String,
    },
    /// Gives up the pin of a `pinned_client` consumer's group.
    UnpinConsumer {
        name: String,
        group: String,
    },
    /// Delivers again from a sequence (0: from past the ack floor); answers
    /// the consumer's info with `reset_seq`.
    ResetConsumer {
        name: String,
        seq: u64,
    },
    /// Once its consumers are back after a restart: drops what none of them
    /// needs (interest and work queue retention); answers how many went.
    CheckRetention,
    /// The `mirror` and `sources` sections of the stream info.
    Sourcing,
    /// Writes the stream's archive (see [`super::backup`]) to `path`;
    /// answers the state it holds.
    Snapshot {
        path: PathBuf,
        created: i64,
        consumers: bool,
    },
}

impl StreamOp {
    /// The plain state: no subjects, no deleted list.
    pub fn state() -> StreamOp {
        StreamOp::State {
            subjects_filter: None,
            deleted_details: false,
        }
    }
}

pub type OpReply = flume::Sender<Result<Value, ApiError>>;

/// What the JetStream service tells a shard.
pub enum StreamCommand {
    Open {
        spec: Box<StreamSpec>,
        reply: flume::Sender<Result<(), ApiError>>,
    },
    Op(Box<StreamRequest>),
}

/// One request about a hosted stream, and where its answer goes.
pub struct StreamRequest {
    pub account: u32,
    pub name: String,
    pub op: StreamOp,
    pub reply: OpReply,
}

/// The streams one shard hosts, by (account, name).
pub type Streams = RefCell<HashMap<(u32, String), Rc<Hosted>>>;

pub struct Hosted {
    account: u32,
    stream: RefCell<Stream>,
    store: Rc<AnyStore>,
    internal: SubscriberId,
    /// The subscriptions on the stream's subjects: what arrives on them is stored.
    subject_sids: RefCell<Vec<Bytes>>,
    /// The subscriptions that serve direct gets (when `allow_direct`).
    direct_sids: RefCell<Vec<Bytes>>,
    dir: PathBuf,
    /// The key the stream's files (its consumers' state too) are sealed with.
    encryption: Option<Encryption>,
    closed: Cell<bool>,
    usage: StreamUsage,
    /// Appends staged but not yet durable, oldest first, and the task that
    /// acknowledges them when it waits for more.
    pending: RefCell<std::collections::VecDeque<PendingAck>>,
    acker: Cell<Option<std::task::Waker>>,
    /// The last sequence whose append has completed (durable under the
    /// `always` sync policy): how far consumers see the stream.
    committed: Cell<u64>,
    consumers: consumers::Consumers,
    sourcing: sourcing::Sourcing,
    events: flume::Sender<HostEvent>,
    /// Atomic batches waiting for their commit.
    batches: RefCell<super::batch::AtomicBatches>,
    batch_limits: super::batch::BatchLimits,
}

/// A staged append and what its acknowledgement needs.
struct PendingAck {
    append: Append,
    /// The subject it is stored under, for the consumers.
    subject: Bytes,
    reply: Bytes,
    republish: Option<Republish>,
    ack: AckWith,
}

/// What an acknowledgement says besides the sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AckWith {
    Nothing,
    /// A counter's total.
    Counter(String),
    /// The atomic batch this message committed, and its size.
    Batch {
        id: String,
        count: u64,
    },
}

/// How a message is staged: what its acknowledgement says, and whether the
/// stream still has to count it as stored (a batch's messages were counted
/// when the batch was checked).
struct Staging {
    ack: AckWith,
    record: bool,
}

impl StoreView for AnyStore {
    fn last_seq(&self) -> u64 {
        self.fast_state().last_seq
    }
    fn last_seq_for(&self, subject: &str) -> u64 {
        self.filtered_state(subject).last
    }
}

/// What a consumer sees of its stream: the index, never the messages, and of
/// the index only what is durable. An append is staged (and readable) before
/// its group commit; a consumer that handed it out then could have its
/// delivery outlive the message in a crash, and see the sequence reused for
/// another one after the restart.
pub(crate) struct Committed<'a> {
    pub(crate) store: &'a AnyStore,
    /// The last sequence whose append has completed.
    pub(crate) up_to: u64,
}

impl Committed<'_> {
    fn staged_beyond(&self) -> bool {
        self.store.fast_state().last_seq > self.up_to
    }
}

impl super::consumer::Source for Committed<'_> {
    fn next_match(&self, start: u64, filters: &[String]) -> Option<(u64, u64)> {
        if start > self.up_to {
            return None;
        }
        self.store
            .next_matching(start, filters)
            .filter(|&(seq, _)| seq <= self.up_to)
    }
    fn size_of(&self, seq: u64) -> Option<u64> {
        self.store.stored_size(seq)
    }
    fn num_pending(&self, start: u64, filters: &[String]) -> u64 {
        let from = |start: u64| -> u64 {
            if filters.is_empty() {
                return Store::num_pending(self.store, start, ">");
            }
            // A consumer's filters never overlap: the counts add up.
            filters
                .iter()
                .map(|f| Store::num_pending(self.store, start, f))
                .sum()
        };
        let all = from(start);
        if !self.staged_beyond() {
            return all;
        }
        let start = start.max(self.up_to + 1);
        all.saturating_sub(from(start))
    }
    fn last_seq(&self) -> u64 {
        self.store.fast_state().last_seq.min(self.up_to)
    }
    fn time_of(&self, seq: u64) -> Option<i64> {
        self.store.stored_time(seq)
    }
    fn last_per_subject(&self, filters: &[String]) -> Vec<u64> {
        let every = [">".to_string()];
        let filters = if filters.is_empty() {
            &every[..]
        } else {
            filters
        };
        let mut lasts = self
            .store
            .multi_last(filters, 0, usize::MAX)
            .unwrap_or_default();
        lasts.retain(|&seq| seq <= self.up_to);
        lasts
    }
    fn seq_from_time(&self, ts: i64) -> u64 {
        Store::seq_from_time(self.store, ts)
    }
}

/// The store limits a stream configuration asks for.
pub fn store_limits(cfg: &StreamConfig) -> Limits {
    let positive = |v: i64| (v > 0).then_some(v as u64);
    Limits {
        max_msgs: positive(cfg.max_msgs),
        max_bytes: positive(cfg.max_bytes),
        max_age: (cfg.max_age > 0).then(|| Duration::from_nanos(cfg.max_age as u64)),
        max_msgs_per_subject: positive(cfg.max_msgs_per_subject),
        max_msg_size: positive(i64::from(cfg.max_msg_size)),
        discard: match cfg.discard {
            Discard::Old => strait_storage::Discard::Old,
            Discard::New => strait_storage::Discard::New,
        },
        discard_new_per_subject: cfg.discard_new_per_subject,
        allow_msg_ttl: cfg.allow_msg_ttl,
        subject_delete_markers: cfg.subject_delete_marker_ttl > 0,
    }
}

fn store_error(e: &StoreError) -> ApiError {
    match e {
        StoreError::NotFound | StoreError::Eof => errors::NO_MESSAGE_FOUND.error(),
        other => errors::STREAM_STORE_FAILED.err(other),
    }
}

/// Serves one command on `shard`.
pub(crate) async fn handle(shard: &Rc<Shard>, command: StreamCommand) {
    match command {
        StreamCommand::Open { spec, reply } => {
            let _ = reply.send(open(shard, *spec).await);
        }
        StreamCommand::Op(request) => {
            let StreamRequest {
                account,
                name,
                op,
                reply,
            } = *request;
            let hosted = shard.streams.borrow().get(&(account, name)).cloned();
            let result = match hosted {
                None => Err(errors::STREAM_NOT_FOUND.error()),
                Some(h) => {
                    let result = h.op(shard, op).await;
                    if !h.closed.get() {
                        h.report_usage();
                    }
                    result
                }
            };
            let _ = reply.send(result);
        }
    }
}

async fn open(shard: &Rc<Shard>, spec: StreamSpec) -> Result<(), ApiError> {
    let key = (spec.account, spec.config.name.clone());
    if shard.streams.borrow().contains_key(&key) {
        return Ok(());
    }
    let limits = store_limits(&spec.config);
    let store = match spec.config.storage {
        StorageType::Memory => AnyStore::Memory(Box::new(MemStore::new(limits))),
        StorageType::File => {
            let mut cfg = FileStoreConfig::new(spec.config.name.clone(), spec.dir.clone());
            cfg.limits = limits;
            cfg.sync = spec.sync;
            cfg.encryption = spec.encryption.clone();
            AnyStore::File(FileStore::open(cfg).await.map_err(|e| {
                // nats-server's words for a stream its key cannot open.
                match &e {
                    StoreError::WrongKey { .. } => tracing::warn!(
                        "  Error decrypting our stream metafile: unable to recover keys"
                    ),
                    StoreError::KeyRequired { .. } => {
                        tracing::warn!(
                            "  Error decrypting our stream metafile: encryption not enabled"
                        )
                    }
                    _ => {}
                }
                errors::STREAM_CREATE.err(e)
            })?)
        }
    };
    let (internal, receiver) = shard.add_internal(spec.account);
    let hosted = Rc::new(Hosted {
        account: spec.account,
        stream: RefCell::new(Stream::new(spec.config.clone(), spec.domain)),
        committed: Cell::new(store.fast_state().last_seq),
        store: Rc::new(store),
        internal,
        subject_sids: RefCell::new(Vec::new()),
        direct_sids: RefCell::new(Vec::new()),
        dir: spec.dir,
        encryption: spec.encryption.clone(),
        closed: Cell::new(false),
        usage: StreamUsage::new(
            spec.account_name,
            spec.account_usage,
            spec.server_usage,
            spec.config.storage,
        ),
        pending: RefCell::default(),
        acker: Cell::new(None),
        consumers: consumers::Consumers::default(),
        sourcing: sourcing::Sourcing::default(),
        events: spec.events,
        batches: RefCell::default(),
        batch_limits: spec.batch_limits,
    });
    if let Err(e) = hosted.subscribe(shard, &spec.config) {
        shard.remove_internal(internal);
        return Err(e);
    }
    shard.barrier().await;
    hosted.recover_msg_ids().await;
    hosted.recover_counters().await;
    hosted.report_usage();
    hosted.configure_sourcing(shard, &spec.config).await;
    shard.streams.borrow_mut().insert(key, hosted.clone());
    if !hosted.sourcing.is_empty() {
        glommio::spawn_local(sourcing::run(shard.clone(), hosted.clone())).detach();
    }
    glommio::spawn_local(run(shard.clone(), hosted.clone(), receiver)).detach();
    glommio::spawn_local(hosted.clone().acknowledge(shard.clone())).detach();
    glommio::spawn_local(expire(shard.clone(), hosted)).detach();
    Ok(())
}

/// Takes the stream's messages off its queue, in order, until it is closed.
async fn run(shard: Rc<Shard>, hosted: Rc<Hosted>, receiver: InternalReceiver) {
    while let Some(msg) = receiver.recv().await {
        if hosted.closed.get() {
            break;
        }
        hosted.take(&shard, msg);
        for _ in 1..BATCH {
            match receiver.try_recv() {
                Some(msg) => hosted.take(&shard, msg),
                None => break,
            }
        }
        shard.flush_lanes().await;
    }
}

/// Removes what `max_age` and per-message TTLs expire, when they do, and
/// replaces the last message of a subject with a delete marker when the stream
/// asks for markers.
async fn expire(shard: Rc<Shard>, hosted: Rc<Hosted>) {
    const IDLE: Duration = Duration::from_secs(1);
    while !hosted.closed.get() {
        let due = match (
            hosted.store.next_expiry(),
            hosted.batches.borrow().next_deadline(),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let wait = due
            .map(|at| Duration::from_nanos((at - now_ns()).max(0) as u64))
            .unwrap_or(IDLE)
            .min(IDLE);
        glommio::timer::sleep(wait).await;
        if hosted.closed.get() {
            break;
        }
        let now = now_ns();
        if hosted.abandon_idle_batches(&shard, now) {
            shard.flush_lanes().await;
        }
        let expired = hosted.store.expire(now).await;
        if expired.as_ref().is_ok_and(|removed| *removed > 0) {
            hosted.recount_consumers();
        }
        let mut result = expired.map(drop);
        if result.is_ok() {
            result = hosted.replace_with_markers(&shard, now).await;
        }
        hosted.report_usage();
        if let Err(e) = result {
            tracing::warn!("JetStream stream expiry failed: {e}");
            // What failed is still due: do not spin on it.
            glommio::timer::sleep(IDLE).await;
        }
    }
}

/// A stored message to publish again once it is durable.
struct Republish {
    destination: Vec<u8>,
    headers_only: bool,
    /// What it was stored under.
    subject: String,
    /// The sequence of the subject's previous message (0 when none).
    last_seq: u64,
    headers: Bytes,
    payload: Bytes,
    ts: i64,
}

type Append = Pin<Box<dyn std::future::Future<Output = Result<u64, StoreError>>>>;

impl Hosted {
    /// How this stream's store counts a message's bytes.
    fn accounting(&self) -> Accounting {
        match self.store.as_ref() {
            AnyStore::Memory(_) => Accounting::Memory,
            AnyStore::File(_) => Accounting::File,
        }
    }

    /// Tells the account's and the server's ledgers what the stream holds now.
    fn report_usage(&self) {
        self.usage.report(self.store.fast_state().bytes, true);
    }

    /// The expired messages that are the last of their subjects become delete
    /// markers (a marker that expires is simply removed).
    async fn replace_with_markers(&self, shard: &Shard, now: i64) -> Result<(), StoreError> {
        for seq in self.store.expired_last_of_subjects(now) {
            let m = match self.store.load(seq).await {
                Ok(m) => m,
                Err(StoreError::NotFound) => continue,
                Err(e) => return Err(e),
            };
            // A publish on the subject while the message was read makes it no
            // longer the last: then it simply expires.
            let still_last = self.store.filtered_state(&m.subject).msgs == 1;
            let marker = if still_last && !super::stream::is_delete_marker(&m.headers) {
                self.stream.borrow().delete_marker()
            } else {
                None
            };
            match marker {
                Some((headers, accepted)) => {
                    let append = self.append(
                        Bytes::from(m.subject.clone()),
                        Bytes::from(headers),
                        Bytes::new(),
                        now_ns(),
                        &accepted,
                    );
                    let seq = append.await?;
                    self.offer(shard, seq, &m.subject);
                }
                None => {
                    self.store.delete(seq, false).await?;
                }
            }
        }
        Ok(())
    }

    /// A counter stream reads the total of each of its subjects back.
    async fn recover_counters(&self) {
        if !self.stream.borrow().config().allow_msg_counter {
            return;
        }
        let lasts = self
            .store
            .multi_last(&[">".to_string()], 0, usize::MAX)
            .unwrap_or_default();
        for seq in lasts {
            self.learn_counter(seq).await;
        }
    }

    /// Tells the stream's counters what message `seq` holds.
    async fn learn_counter(&self, seq: u64) {
        match self.store.load(seq).await {
            Ok(m) => self
                .stream
                .borrow_mut()
                .learn_counter(&m.subject, m.seq, &m.headers, &m.payload),
            Err(e) => tracing::warn!("JetStream counter message {seq} unreadable: {e}"),
        }
    }

    /// Before the last message of a counter's subject is deleted, the counter
    /// learns what the one before it holds: the total it goes back to.
    async fn before_deleting_counter(&self, seq: u64) {
        if !self.stream.borrow().config().allow_msg_counter {
            return;
        }
        let Some(subject) = self.store.stored_subject(seq) else {
            return;
        };
        let subject = subject.to_string();
        if self.store.last_seq_for(&subject) != seq || seq <= 1 {
            return;
        }
        let before = self
            .store
            .multi_last(std::slice::from_ref(&subject), seq - 1, 1)
            .and_then(|seqs| seqs.last().copied());
        if let Some(before) = before {
            self.learn_counter(before).await;
        }
    }

    /// A restart keeps deduplicating what came within the window: the message
    /// ids are in the stored headers.
    async fn recover_msg_ids(&self) {
        let (window, state) = {
            let s = self.stream.borrow();
            (s.config().duplicate_window, self.store.fast_state())
        };
        if state.msgs == 0 || window <= 0 {
            return;
        }
        let now = now_ns();
        // Only messages with headers can carry an id; the index knows which they
        // are, so a stream of header-less messages reads nothing back.
        let mut found = Vec::new();
        for seq in self.store.with_headers_since(now - window) {
            match self.store.load(seq).await {
                Ok(m) => {
                    if let Some(id) = super::stream::header(&m.headers, super::stream::MSG_ID) {
                        found.push((id.to_string(), m.seq, m.ts));
                    }
                }
                Err(StoreError::NotFound) => {}
                Err(_) => break,
            }
        }
        let mut s = self.stream.borrow_mut();
        for (id, seq, ts) in found {
            s.remember_msg_id(&id, seq, ts, now);
        }
    }

    /// Subscribes the stream on its subjects and, when it allows direct gets,
    /// on its direct get subjects (in nats-server's queue group, so replicas and
    /// mirrors can share them later).
    fn subscribe(&self, shard: &Shard, config: &StreamConfig) -> Result<(), ApiError> {
        let mut subject_sids = self.subject_sids.borrow_mut();
        subject_sids.clear();
        for subject in &config.subjects {
            match shard.internal_subscribe(self.internal, subject.as_bytes(), None) {
                Some(sid) => subject_sids.push(sid),
                None => {
                    return Err(errors::STREAM_CREATE.err(format!("invalid subject {subject:?}")))
                }
            }
        }
        let mut direct_sids = self.direct_sids.borrow_mut();
        direct_sids.clear();
        if config.allow_direct {
            let base = format!("{DIRECT_GET_PREFIX}{}", config.name);
            for subject in [base.clone(), format!("{base}.>")] {
                let sid = shard
                    .internal_subscribe(self.internal, subject.as_bytes(), Some(DIRECT_GET_GROUP))
                    .ok_or_else(|| errors::STREAM_CREATE.err("invalid stream name"))?;
                direct_sids.push(sid);
            }
        }
        Ok(())
    }

    /// One message off the stream's queue: a publish to store, or a direct get.
    fn take(self: &Rc<Self>, shard: &Rc<Shard>, msg: InternalMsg) {
        if self.consumers.owns(&msg.sid) {
            self.consumer_message(shard, msg);
        } else if self.sourcing.owns(&msg.sid) {
            self.sourced_message(shard, msg);
        } else if self.direct_sids.borrow().contains(&msg.sid)
            || self.sourcing.is_mirror_direct(&msg.sid)
        {
            let hosted = self.clone();
            let shard = shard.clone();
            glommio::spawn_local(async move {
                hosted.direct_get(&shard, msg).await;
                shard.flush_lanes().await;
            })
            .detach();
        } else if self.subject_sids.borrow().contains(&msg.sid) {
            self.accept(shard, msg);
        }
        // Anything else was queued for a subscription that is gone.
    }

    async fn direct_get(&self, shard: &Shard, msg: InternalMsg) {
        if msg.reply.is_empty() {
            return;
        }
        let subject = String::from_utf8_lossy(&msg.subject);
        let by_subject = subject.matches('.').count() > 4;
        let request = if super::stream::requires_newer_api(msg.headers()) {
            Err(direct::REQUIRED_API_LEVEL)
        } else if by_subject {
            direct::parse_last_by_subject(&subject, msg.payload())
        } else {
            direct::parse_request(msg.payload())
        };
        let answer = match request {
            Ok(req) if !req.multi_last.is_empty() => {
                self.direct_multi_last(shard, &req, &msg.reply).await
            }
            Ok(req) => self.direct_messages(shard, &req, &msg.reply).await,
            Err(status) => Err(status),
        };
        if let Err(status) = answer {
            self.send(shard, &msg.reply, &status.header(), &[]);
        }
    }

    /// Publishes one answer: `headers` then `payload` as one message.
    fn send(&self, shard: &Shard, subject: &[u8], headers: &[u8], payload: &[u8]) {
        self.send_with_reply(shard, subject, b"", headers, payload);
    }

    fn send_with_reply(
        &self,
        shard: &Shard,
        subject: &[u8],
        reply: &[u8],
        headers: &[u8],
        payload: &[u8],
    ) {
        let mut message = Vec::with_capacity(headers.len() + payload.len());
        message.extend_from_slice(headers);
        message.extend_from_slice(payload);
        shard.internal_publish(
            Some(self.internal),
            self.account,
            subject,
            reply,
            headers.len(),
            &Bytes::from(message),
        );
    }

    fn direct_message(
        &self,
        shard: &Shard,
        reply: &[u8],
        m: &strait_storage::StoredMessage,
        req: &DirectRequest,
        batch: Option<BatchPosition>,
    ) {
        if req.no_headers {
            self.send(shard, reply, &[], &m.payload);
            return;
        }
        let facts = batch.map(BatchPosition::facts);
        let headers = {
            let s = self.stream.borrow();
            direct::message_headers(
                &m.headers,
                &s.config().name,
                &m.subject,
                m.seq,
                &ts_rfc3339(m.ts),
                facts.as_ref().map_or(&[][..], |f| &f[..]),
            )
        };
        self.send(shard, reply, &headers, &m.payload);
    }

    /// By sequence, last or next by subject, from a time, singly or in a batch.
    async fn direct_messages(
        &self,
        shard: &Shard,
        req: &DirectRequest,
        reply: &[u8],
    ) -> Result<(), Status> {
        let mut seq = match req.start_time {
            Some(ts) => self.store.seq_from_time(ts),
            None => req.seq,
        };
        let is_batch = req.batch > 0;
        let next_filter = if req.next_for.is_empty() {
            ">"
        } else {
            req.next_for.as_str()
        };
        let mut position = BatchPosition {
            pending: if is_batch {
                self.store.num_pending(seq, next_filter)
            } else {
                0
            },
            last_seq: 0,
        };
        let max_bytes = req.max_bytes_or(shard.max_pending());
        let mut sent_bytes = 0;
        for i in 0..req.batch.max(1) {
            let found = if !req.last_for.is_empty() {
                self.store.load_last(&req.last_for).await
            } else if i == 0 && !is_batch && req.next_for.is_empty() {
                self.store.load(seq).await
            } else {
                self.store.load_next(seq, next_filter).await
            };
            let m = match found {
                Ok(m) => m,
                Err(_) if i > 0 => break,
                Err(_) => return Err(direct::NOT_FOUND),
            };
            seq = m.seq + 1;
            let batch = is_batch.then(|| {
                position.pending = position.pending.saturating_sub(1);
                position
            });
            self.direct_message(shard, reply, &m, req, batch);
            position.last_seq = m.seq;
            sent_bytes += m.subject.len() + m.headers.len() + m.payload.len();
            if sent_bytes >= max_bytes {
                break;
            }
        }
        if is_batch {
            position.pending = self.store.num_pending(seq, next_filter);
            self.send(shard, reply, &direct::end_of_batch(position, None), &[]);
        }
        Ok(())
    }

    /// The last message of each subject matching `multi_last`, up to a sequence
    /// or a time, oldest first, then the EOB.
    async fn direct_multi_last(
        &self,
        shard: &Shard,
        req: &DirectRequest,
        reply: &[u8],
    ) -> Result<(), Status> {
        let state = self.store.fast_state();
        let mut up_to = req.up_to_seq;
        if let Some(ts) = req.up_to_time {
            up_to = self.store.seq_from_time(ts);
            if up_to <= state.first_seq {
                return Err(direct::NO_RESULTS);
            }
            // The first sequence at the time is past the ceiling.
            up_to -= 1;
        }
        if up_to == 0 {
            up_to = state.last_seq;
        }
        let seqs = self
            .store
            .multi_last(&req.multi_last, up_to, direct::MAX_MULTI_LAST)
            .ok_or(direct::TOO_MANY_RESULTS)?;
        if seqs.is_empty() {
            return Err(direct::NO_RESULTS);
        }
        let max_bytes = req.max_bytes_or(shard.max_pending());
        let mut position = BatchPosition {
            pending: seqs.len() as u64,
            last_seq: 0,
        };
        let (mut sent, mut sent_bytes) = (0, 0);
        for seq in seqs {
            position.pending = position.pending.saturating_sub(1);
            if seq < req.seq {
                continue;
            }
            let m = self.store.load(seq).await.map_err(|_| direct::NOT_FOUND)?;
            self.direct_message(shard, reply, &m, req, Some(position));
            position.last_seq = m.seq;
            sent_bytes += m.subject.len() + m.headers.len() + m.payload.len();
            sent += 1;
            if sent_bytes >= max_bytes || (req.batch > 0 && sent >= req.batch) {
                break;
            }
        }
        self.send(
            shard,
            reply,
            &direct::end_of_batch(position, Some(up_to)),
            &[],
        );
        Ok(())
    }

    fn reply(&self, shard: &Shard, reply: &[u8], body: &impl serde::Serialize) {
        if reply.is_empty() {
            return;
        }
        let body = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
        shard.internal_publish(Some(self.internal), self.account, reply, b"", 0, &body);
    }

    /// One published message: checked, staged in the store at once, and
    /// acknowledged when its append completes.
    fn accept(self: &Rc<Self>, shard: &Rc<Shard>, msg: InternalMsg) {
        let headers = msg.message.slice(..msg.header_len);
        let payload = msg.message.slice(msg.header_len..);
        if let Some(id) = (!headers.is_empty())
            .then(|| super::stream::header(&headers, super::batch::BATCH_ID))
            .flatten()
        {
            let id = id.to_string();
            let batched = super::batch::BatchMsg {
                subject: msg.subject,
                headers,
                payload,
            };
            self.batch_message(shard, &id, batched, msg.reply);
            return;
        }
        self.ingest(
            shard,
            Ingest::Publish,
            msg.subject,
            headers,
            payload,
            msg.reply,
            None,
        );
    }

    /// Checks a message as `ingest` says and stages it (acknowledged on
    /// `reply` once durable); `ts` stores it with its origin's timestamp.
    /// Whether it was taken (stored, or a duplicate of what was).
    #[allow(clippy::too_many_arguments)]
    fn ingest(
        self: &Rc<Self>,
        shard: &Rc<Shard>,
        ingest: Ingest,
        subject: Bytes,
        headers: Bytes,
        payload: Bytes,
        reply: Bytes,
        ts: Option<i64>,
    ) -> bool {
        let Ok(subject_text) = std::str::from_utf8(&subject) else {
            return false;
        };
        let now = now_ns();
        let stored_as = self.stream.borrow().stored_subject(subject_text);
        let decision = self.stream.borrow_mut().check_from(
            ingest,
            &stored_as,
            &headers,
            &payload,
            now,
            self.store.as_ref(),
        );
        let no_ack = self.stream.borrow().config().no_ack;
        let reply = if no_ack { Bytes::new() } else { reply };
        let accepted = match decision {
            Decision::Refuse(e) => {
                let refusal = self.stream.borrow().refusal(e);
                self.reply(shard, &reply, &refusal);
                return false;
            }
            Decision::Duplicate(seq) => {
                let ack = self.stream.borrow().ack(seq, true);
                self.reply(shard, &reply, &ack);
                return true;
            }
            Decision::Store(a) => a,
        };
        let total = accepted
            .counter
            .as_ref()
            .map(|c| AckWith::Counter(c.counter.total.to_string()));
        let stored_as = match stored_as {
            std::borrow::Cow::Borrowed(_) => subject,
            std::borrow::Cow::Owned(mapped) => Bytes::from(mapped),
        };
        self.stage(
            shard,
            accepted,
            stored_as,
            headers,
            payload,
            reply,
            ts.unwrap_or(now),
            now,
            Staging {
                ack: total.unwrap_or(AckWith::Nothing),
                record: true,
            },
        )
    }

    /// Stages an accepted message (its subject as stored) in the store, to be
    /// acknowledged on `reply` with what `staging` says once durable. Whether
    /// it was taken.
    #[allow(clippy::too_many_arguments)]
    fn stage(
        self: &Rc<Self>,
        shard: &Rc<Shard>,
        mut accepted: super::stream::Accepted,
        subject: Bytes,
        headers: Bytes,
        payload: Bytes,
        reply: Bytes,
        stamp: i64,
        now: i64,
        staging: Staging,
    ) -> bool {
        // Checked as UTF-8 when it was accepted (a transform maps UTF-8 to UTF-8).
        let text = subject.clone();
        let stored_as = std::str::from_utf8(&text).unwrap_or_default();
        if accepted.skip && self.consumers_take(stored_as) {
            accepted.skip = false;
        }
        let size = self
            .accounting()
            .size_of(stored_as.len(), headers.len(), payload.len());
        if let Err(e) = self
            .usage
            .room_for(self.store.fast_state().bytes, size, now)
        {
            let refusal = self.stream.borrow().refusal(e);
            self.reply(shard, &reply, &refusal);
            return false;
        }
        let predicted = self.store.fast_state().last_seq + 1;
        let (mut headers, payload) = match accepted.counter.as_deref() {
            Some(increment) => (
                Bytes::from(increment.headers.clone()),
                Bytes::from(increment.payload.clone()),
            ),
            None => (headers, payload),
        };
        if accepted.ttl_raised {
            let ttl = accepted.ttl.unwrap_or_default().to_string();
            headers = Bytes::from(super::stream::with_header(
                &headers,
                super::stream::TTL,
                &ttl,
            ));
        }
        let republish = (!accepted.skip)
            .then(|| self.stream.borrow().republish_subject(stored_as))
            .flatten()
            .map(|(destination, headers_only)| Republish {
                destination,
                headers_only,
                subject: stored_as.to_string(),
                last_seq: self.store.last_seq_for(stored_as),
                headers: headers.clone(),
                payload: payload.clone(),
                ts: stamp,
            });
        let mut append = self.append(subject.clone(), headers, payload, stamp, &accepted);
        // The first poll stages the record (its sequence and index entry) before
        // the next message is checked against the store; the rest waits for the
        // group commit in its own task.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let first = append.as_mut().poll(&mut cx);
        let staged = self.store.fast_state();
        let taken = staged.last_seq == predicted;
        if taken && staging.record {
            self.stream
                .borrow_mut()
                .stored(&accepted, stored_as, predicted, now);
        }
        self.usage.report(staged.bytes, false);
        match first {
            std::task::Poll::Ready(result) => {
                let ok = result.is_ok();
                self.appended(shard, &subject, &reply, result, republish, staging.ack);
                ok
            }
            std::task::Poll::Pending => {
                self.pending.borrow_mut().push_back(PendingAck {
                    append,
                    subject,
                    reply,
                    republish,
                    ack: staging.ack,
                });
                if let Some(waker) = self.acker.take() {
                    waker.wake();
                }
                taken
            }
        }
    }

    /// Acknowledges the appends still waiting for their group commit, in order:
    /// one task per stream rather than one per message, and one flush to the
    /// mesh for all the acknowledgements a commit releases.
    async fn acknowledge(self: Rc<Self>, shard: Rc<Shard>) {
        loop {
            let next = std::future::poll_fn(|cx| {
                if let Some(item) = self.pending.borrow_mut().pop_front() {
                    return std::task::Poll::Ready(Some(item));
                }
                if self.closed.get() {
                    return std::task::Poll::Ready(None);
                }
                self.acker.set(Some(cx.waker().clone()));
                std::task::Poll::Pending
            })
            .await;
            let Some(mut item) = next else {
                return;
            };
            // What is ready now is acknowledged before the lanes are flushed.
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            let result = match item.append.as_mut().poll(&mut cx) {
                std::task::Poll::Ready(result) => result,
                std::task::Poll::Pending => {
                    shard.flush_lanes().await;
                    item.append.await
                }
            };
            self.appended(
                &shard,
                &item.subject,
                &item.reply,
                result,
                item.republish,
                item.ack,
            );
            if self.pending.borrow().is_empty() {
                shard.flush_lanes().await;
            }
        }
    }

    /// Appends an accepted message (and rolls its subject or the stream up when
    /// it asks to). The first poll stages the record; the future completes with
    /// the group commit.
    fn append(
        &self,
        subject: Bytes,
        headers: Bytes,
        payload: Bytes,
        now: i64,
        accepted: &super::stream::Accepted,
    ) -> Append {
        let store = self.store.clone();
        let ttl = accepted.ttl.map(|t| match t {
            t if t < 0 => MsgTtl::Never,
            t => MsgTtl::After(Duration::from_secs(t as u64)),
        });
        let rollup = accepted.rollup;
        let skip = accepted.skip;
        Box::pin(async move {
            // Checked as UTF-8 when the message was accepted.
            let subject = std::str::from_utf8(&subject).map_err(|_| StoreError::InvalidSubject)?;
            let seq = if skip {
                // The next sequence is taken without a message; this part runs
                // at the first poll, before the next publish is checked. Into an
                // empty stream that is a move of its first sequence; messages
                // kept from before (a limits stream turned interest) stay, so
                // there it is stored and removed again.
                let state = store.fast_state();
                if state.msgs == 0 {
                    let seq = state.last_seq + 1;
                    store.compact(seq + 1).await?;
                    seq
                } else {
                    let seq = store.append(subject, &headers, &payload, now, ttl).await?;
                    store.delete(seq, false).await?;
                    seq
                }
            } else {
                store.append(subject, &headers, &payload, now, ttl).await?
            };
            if let Some(rollup) = rollup {
                let filter = match rollup {
                    Rollup::Subject => subject.to_string(),
                    Rollup::All => String::new(),
                };
                store
                    .purge(&Purge {
                        filter,
                        up_to: seq,
                        keep: 0,
                    })
                    .await?;
            }
            Ok(seq)
        })
    }

    fn appended(
        &self,
        shard: &Shard,
        subject: &[u8],
        reply: &[u8],
        result: Result<u64, StoreError>,
        republish: Option<Republish>,
        with: AckWith,
    ) {
        match result {
            Ok(seq) => {
                if let Ok(subject) = std::str::from_utf8(subject) {
                    self.offer(shard, seq, subject);
                }
                if let Some(r) = republish {
                    self.republish(shard, r, seq);
                }
                let stream = self.stream.borrow();
                let ack = match with {
                    AckWith::Nothing => stream.ack(seq, false),
                    AckWith::Counter(total) => stream.counter_ack(seq, total),
                    AckWith::Batch { id, count } => stream.batch_ack(seq, id, count),
                };
                drop(stream);
                self.reply(shard, reply, &ack);
            }
            Err(e) => {
                let refusal = self.stream.borrow().refusal(store_error(&e));
                self.reply(shard, reply, &refusal);
            }
        }
    }

    /// Publishes a stored message again on the republish destination, with the
    /// stream's facts about it (nats-server's headers, in its order); headers
    /// only when so configured, with the size of the payload left out.
    fn republish(&self, shard: &Shard, r: Republish, seq: u64) {
        let size = r.payload.len() as u64;
        let mut facts = vec![("Nats-Last-Sequence", r.last_seq)];
        if r.headers_only {
            facts.push(("Nats-Msg-Size", size));
        }
        let headers = direct::message_headers(
            &r.headers,
            &self.stream.borrow().config().name,
            &r.subject,
            seq,
            &ts_rfc3339(r.ts),
            &facts,
        );
        let payload = if r.headers_only {
            &[][..]
        } else {
            &r.payload[..]
        };
        self.send(shard, &r.destination, &headers, payload);
    }

    async fn op(self: &Rc<Self>, shard: &Rc<Shard>, op: StreamOp) -> Result<Value, ApiError> {
        match op {
            StreamOp::State {
                subjects_filter,
                deleted_details,
            } => Ok(self.state_json(subjects_filter.as_deref(), deleted_details)),
            StreamOp::Update(config) => {
                let config = *config;
                self.store
                    .update_limits(store_limits(&config), now_ns())
                    .await
                    .map_err(|e| errors::STREAM_UPDATE.err(e))?;
                let resubscribe = {
                    let s = self.stream.borrow();
                    let old = s.config();
                    old.subjects != config.subjects || old.allow_direct != config.allow_direct
                };
                if resubscribe {
                    let mut kept = self.consumers.sids();
                    kept.extend(self.sourcing.sids());
                    for sid in shard.internal_sids(self.internal) {
                        if !kept.contains(&sid) {
                            shard.internal_unsubscribe(self.internal, &sid);
                        }
                    }
                    self.subscribe(shard, &config)?;
                    shard.barrier().await;
                }
                let refeed = {
                    let s = self.stream.borrow();
                    let old = s.config();
                    old.mirror != config.mirror || old.sources != config.sources
                };
                let was_fed = !self.sourcing.is_empty();
                self.stream.borrow_mut().set_config(config.clone());
                if refeed {
                    self.configure_sourcing(shard, &config).await;
                    if !was_fed && !self.sourcing.is_empty() {
                        glommio::spawn_local(sourcing::run(shard.clone(), self.clone())).detach();
                    }
                }
                self.retention_changed();
                Ok(self.state_json(None, false))
            }
            StreamOp::Purge(req) => {
                let purged = self
                    .store
                    .purge(&req)
                    .await
                    .map_err(|e| errors::STREAM_PURGE_FAILED.err(e))?;
                self.recount_consumers();
                Ok(json!(purged))
            }
            StreamOp::GetMsg {
                seq,
                last_by_subject,
                next_by_subject,
                start_time,
            } => {
                let seq = start_time.map_or(seq, |ts| self.store.seq_from_time(ts));
                let found = match (last_by_subject, next_by_subject) {
                    (Some(subject), _) => self.store.load_last(&subject).await,
                    (None, Some(subject)) => self.store.load_next(seq, &subject).await,
                    (None, None) => self.store.load(seq).await,
                };
                let m = found.map_err(|e| store_error(&e))?;
                let mut out = serde_json::Map::new();
                out.insert("subject".into(), json!(m.subject));
                out.insert("seq".into(), json!(m.seq));
                if !m.headers.is_empty() {
                    out.insert("hdrs".into(), json!(base64(&m.headers)));
                }
                if !m.payload.is_empty() {
                    out.insert("data".into(), json!(base64(&m.payload)));
                }
                out.insert("time".into(), json!(ts_rfc3339(m.ts)));
                Ok(Value::Object(out))
            }
            StreamOp::DeleteMsg { seq, erase } => {
                self.before_deleting_counter(seq).await;
                let state = self.store.fast_state();
                match self.store.delete(seq, erase).await {
                    Ok(true) => {
                        self.recount_consumers();
                        Ok(json!(true))
                    }
                    // As nats-server tells them apart: past the end of the stream,
                    // before it (or 0), and a sequence in it already deleted.
                    Ok(false) | Err(StoreError::NotFound) if seq > state.last_seq => {
                        Err(errors::STREAM_MSG_DELETE_FAILED.err("stream store EOF"))
                    }
                    Ok(false) | Err(StoreError::NotFound) if seq < state.first_seq.max(1) => {
                        Err(errors::STREAM_MSG_DELETE_FAILED.err("no message found"))
                    }
                    Ok(false) | Err(StoreError::NotFound) => {
                        Err(errors::SEQUENCE_NOT_FOUND.with(&[("seq", &seq)]))
                    }
                    Err(e) => Err(errors::STREAM_MSG_DELETE_FAILED.err(e)),
                }
            }
            StreamOp::Delete => {
                self.closed.set(true);
                self.drop_batches();
                self.close_consumers();
                self.close_sourcing();
                if let Some(waker) = self.acker.take() {
                    waker.wake();
                }
                shard.remove_internal(self.internal);
                let name = self.stream.borrow().config().name.clone();
                shard.streams.borrow_mut().remove(&(self.account, name));
                let _ = self.store.close().await;
                self.usage.release();
                if self.dir.exists() {
                    let _ = std::fs::remove_dir_all(&self.dir);
                }
                Ok(json!(true))
            }
            StreamOp::PutConsumer { config, created } => {
                self.put_consumer(shard, *config, created).await
            }
            StreamOp::ConsumerInfo { name } => self.consumer_info(&name),
            StreamOp::DeleteConsumer { name } => self.delete_consumer(shard, &name).await,
            StreamOp::UnpinConsumer { name, group } => self.unpin_consumer(shard, &name, &group),
            StreamOp::ResetConsumer { name, seq } => {
                let (mut info, reset_to) = self.reset_consumer(shard, &name, seq).await?;
                info["reset_seq"] = json!(reset_to);
                Ok(info)
            }
            StreamOp::CheckRetention => Ok(json!(self.check_retention().await)),
            StreamOp::Sourcing => Ok(self.sourcing_info()),
            StreamOp::Snapshot {
                path,
                created,
                consumers,
            } => self.snapshot(&path, created, consumers).await,
        }
    }

    /// The archive of the stream: its durable consumers' states first, then
    /// the store's files (appends wait while those are read), so that no
    /// consumer is ahead of the messages it has.
    async fn snapshot(
        &self,
        path: &Path,
        created: i64,
        consumers: bool,
    ) -> Result<Value, ApiError> {
        let AnyStore::File(store) = self.store.as_ref() else {
            return Err(errors::STREAM_SNAPSHOT.err("memory streams can not be snapshotted"));
        };
        let manifest = super::backup::Manifest {
            created,
            consumers: if consumers {
                self.archived_consumers()
            } else {
                Vec::new()
            },
        };
        let write = async {
            let file = std::fs::File::create(path).map_err(|e| e.to_string())?;
            let mut out = super::backup::compressing(std::io::BufWriter::new(file));
            super::backup::write_head(&mut out, &manifest).map_err(|e| e.to_string())?;
            store.snapshot(&mut out).await.map_err(|e| e.to_string())?;
            let buffered = out.into_inner().map_err(|e| e.to_string())?;
            buffered.into_inner().map_err(|e| e.to_string())?;
            Ok::<(), String>(())
        };
        if let Err(e) = write.await {
            let _ = std::fs::remove_file(path);
            return Err(errors::STREAM_SNAPSHOT.err(e));
        }
        Ok(json!({ "state": self.state_json(None, false) }))
    }

    fn state_json(&self, subjects_filter: Option<&str>, deleted_details: bool) -> Value {
        let st = if deleted_details {
            self.store.state()
        } else {
            self.store.fast_state()
        };
        let mut out = serde_json::Map::new();
        out.insert("messages".into(), json!(st.msgs));
        out.insert("bytes".into(), json!(st.bytes));
        out.insert("first_seq".into(), json!(st.first_seq));
        out.insert("first_ts".into(), json!(ts_rfc3339(st.first_ts)));
        out.insert("last_seq".into(), json!(st.last_seq));
        out.insert("last_ts".into(), json!(ts_rfc3339(st.last_ts)));
        if st.num_subjects > 0 {
            out.insert("num_subjects".into(), json!(st.num_subjects));
        }
        if let Some(filter) = subjects_filter.filter(|f| !f.is_empty()) {
            let subjects = self.store.subjects_state(filter);
            if !subjects.is_empty() {
                out.insert("subjects".into(), json!(subjects));
            }
        }
        if st.num_deleted > 0 {
            out.insert("num_deleted".into(), json!(st.num_deleted));
        }
        if deleted_details && !st.deleted.is_empty() {
            out.insert("deleted".into(), json!(st.deleted));
        }
        out.insert("consumer_count".into(), json!(self.consumers.len()));
        Value::Object(out)
    }
}

fn base64(bytes: &[u8]) -> String {
    data_encoding::BASE64.encode(bytes)
}
