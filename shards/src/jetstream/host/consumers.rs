//! A stream's consumers, hosted with it on its shard (docs/consumers.md). The
//! sans-I/O cores (`jetstream::consumer`) decide; this shell feeds them what
//! arrives (pull requests, acks, stored messages, time) and carries out what
//! they decide, in order, from one task per stream: it loads each message to
//! deliver, publishes it with its ack subject, and sends the statuses and
//! advisories. One timer per stream sleeps until the earliest deadline any
//! consumer has; a consumer that waits for nothing costs nothing.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

use super::super::ack::{name_hash, AckPrefix, AckReply};
use super::super::backup::ArchivedConsumer;
use super::super::config::Retention;
use super::super::consumer::{
    AckKind, Action, Consumer, ConsumerState, Listeners, PullRequest, Source, Status,
};
use super::super::consumer_config::ConsumerConfig;
use super::super::errors::{self, ApiError};
use super::super::stream::with_header;
use super::{now_ns, ts_rfc3339, Committed, HostEvent, Hosted};
use crate::internal::InternalMsg;
use crate::shard::{InternalDelivery, Shard};
use crate::signal::Signal;
use strait_storage::record::Keys;
use strait_storage::{AnyStore, StateFile, Store};

/// Pull requests for a consumer: `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`.
const NEXT_PREFIX: &str = "$JS.API.CONSUMER.MSG.NEXT.";
const ADVISORY_PREFIX: &str = "$JS.EVENT.ADVISORY.CONSUMER.";
const METRIC_PREFIX: &str = "$JS.EVENT.METRIC.CONSUMER.";

/// `$JS.EVENT.ADVISORY.CONSUMER.PAUSE.<stream>.<consumer>`'s type, sent by the
/// API when a consumer is paused or resumed and here when a pause runs out.
pub(in crate::jetstream) const PAUSE_ADVISORY_TYPE: &str =
    "io.nats.jetstream.advisory.v1.consumer_pause";
/// Answers to push consumers' flow control requests:
/// `$JS.FC.<stream>.<consumer>.<request>`.
const FLOW_PREFIX: &str = "$JS.FC.";
const FLOW_REQUEST: &[u8] = b"NATS/1.0 100 FlowControl Request\r\n\r\n";
const LAST_STREAM: &str = "Nats-Last-Stream";
/// nats-server's header of a headers-only delivery.
const MSG_SIZE: &str = "Nats-Msg-Size";
/// The pin a `pinned_client` consumer delivers under.
const PIN_ID: &str = "Nats-Pin-Id";

/// What deliveries and advisories of one consumer need, shared with the
/// queue of things to send so that sending does not borrow the consumer.
pub(super) struct Facts {
    name: Rc<str>,
    created: i64,
    ack: AckPrefix,
    headers_only: bool,
}

struct HostedConsumer {
    core: Consumer,
    created: i64,
    facts: Rc<Facts>,
    /// The subscription its pull requests come on (pull consumers).
    next_sid: Option<Bytes>,
    /// Where its state is kept (durable consumers of file streams).
    state_file: Option<Rc<StateFile>>,
    /// Changed since its state was last written.
    dirty: bool,
}

/// What a consumer core sees when it may hand out messages: its stream, and
/// whether a pull request's inbox still has a subscriber in the account.
struct Surroundings<'a> {
    store: Committed<'a>,
    shard: &'a Shard,
    account: u32,
}

impl Source for Surroundings<'_> {
    fn next_match(&self, start: u64, filters: &[String]) -> Option<(u64, u64)> {
        self.store.next_match(start, filters)
    }
    fn size_of(&self, seq: u64) -> Option<u64> {
        self.store.size_of(seq)
    }
    fn num_pending(&self, start: u64, filters: &[String]) -> u64 {
        self.store.num_pending(start, filters)
    }
    fn last_seq(&self) -> u64 {
        self.store.last_seq()
    }
    fn time_of(&self, seq: u64) -> Option<i64> {
        self.store.time_of(seq)
    }
    fn last_per_subject(&self, filters: &[String]) -> Vec<u64> {
        self.store.last_per_subject(filters)
    }
    fn seq_from_time(&self, ts: i64) -> u64 {
        self.store.seq_from_time(ts)
    }
}

impl Listeners for Surroundings<'_> {
    fn listens(&self, inbox: &str) -> bool {
        self.shard
            .has_interest(self.account, inbox.as_bytes(), None)
    }
}

/// What a consumer's state file holds: the state, and which consumer it is
/// (a consumer made again under the same name starts afresh).
#[derive(serde::Serialize, serde::Deserialize)]
struct KeptState {
    created: i64,
    state: ConsumerState,
}

/// Writes a restored consumer's state where [`Hosted::open_consumer`] finds
/// it: `obs/<name>/` in the stream's directory, sealed with the stream's key.
pub(crate) async fn write_kept_state(
    stream_dir: &std::path::Path,
    stream: &str,
    consumer: &ArchivedConsumer,
    encryption: Option<&strait_storage::Encryption>,
) -> Result<(), strait_storage::StoreError> {
    let name = consumer.config.consumer_name();
    let keys = state_keys(encryption, stream, name);
    let dir = stream_dir.join("obs").join(name);
    let (file, _) = StateFile::open(&dir, &format!("{stream} > {name}"), keys).await?;
    let kept = KeptState {
        created: consumer.created,
        state: consumer.state.clone(),
    };
    let body = serde_json::to_vec(&kept)
        .map_err(|e| strait_storage::StoreError::Snapshot(e.to_string()))?;
    file.write(&body).await
}

/// The keys a consumer's state file is sealed with, under the stream's key.
fn state_keys(
    encryption: Option<&strait_storage::Encryption>,
    stream: &str,
    name: &str,
) -> Option<Keys> {
    encryption.map(|e| Keys::derive(e.cipher, &e.key, &format!("{stream}/obs/{name}")))
}

/// The consumers of one stream.
#[derive(Default)]
pub(super) struct Consumers {
    by_name: RefCell<BTreeMap<Rc<str>, HostedConsumer>>,
    by_sid: RefCell<HashMap<Bytes, Rc<str>>>,
    /// The stream's one subscription for the acks of all its consumers.
    /// (v1, and with `js_ack_fc_v2` the v2 layout too: clients may use either).
    ack_sids: RefCell<Vec<Bytes>>,
    /// The same for the answers to its push consumers' flow control.
    flow_sid: RefCell<Option<Bytes>>,
    /// What the cores decided, in order, for the sender.
    outbox: RefCell<VecDeque<(Rc<Facts>, Action)>>,
    /// Empty-payload replies to acks sent as requests, after what they acked.
    ack_replies: RefCell<VecDeque<Rc<str>>>,
    sender: Signal,
    /// Raised when states may need writing; their own task writes them, so
    /// that no delivery waits behind a state's sync.
    persister: Signal,
    /// Also raised by the shard when interest changes, once a push consumer
    /// watches it.
    timer: Rc<Signal>,
    watching_interest: Cell<bool>,
    /// The shard's interest epoch when push consumers last looked.
    interest_seen: Cell<u64>,
    /// The deadline the timer sleeps to; `i64::MAX`: none.
    armed: Cell<i64>,
    started: Cell<bool>,
}

impl Consumers {
    /// The consumers the API shows (not those feeding mirrors and sources).
    pub(super) fn len(&self) -> usize {
        self.by_name
            .borrow()
            .values()
            .filter(|c| !c.core.config().direct)
            .count()
    }

    /// Whether `sid` is one of the consumers' subscriptions.
    pub(super) fn owns(&self, sid: &Bytes) -> bool {
        self.by_sid.borrow().contains_key(sid)
            || self.ack_sids.borrow().contains(sid)
            || self.flow_sid.borrow().as_ref() == Some(sid)
    }

    pub(super) fn sids(&self) -> Vec<Bytes> {
        let mut sids: Vec<Bytes> = self.by_sid.borrow().keys().cloned().collect();
        sids.extend(self.ack_sids.borrow().iter().cloned());
        sids.extend(self.flow_sid.borrow().iter().cloned());
        sids
    }
}

impl Hosted {
    fn stream_name(&self) -> String {
        self.stream.borrow().config().name.clone()
    }

    /// With `js_ack_fc_v2`, the `<domain>.<account hash>.` that ack and flow
    /// control subjects carry before the stream's name (`_` for no domain).
    fn v2_tag(&self, shard: &Shard) -> Option<String> {
        if !shard.opts().js_ack_fc_v2 {
            return None;
        }
        let domain = self.stream.borrow().domain().map(str::to_string);
        let domain = domain.filter(|d| !d.is_empty());
        Some(format!(
            "{}.{}.",
            domain.as_deref().unwrap_or("_"),
            name_hash(self.usage.account_name())
        ))
    }

    fn ack_prefix(&self, shard: &Shard, stream: &str, consumer: &str) -> AckPrefix {
        if shard.opts().js_ack_fc_v2 {
            let domain = self.stream.borrow().domain().map(str::to_string);
            AckPrefix::v2(
                domain.as_deref(),
                self.usage.account_name(),
                stream,
                consumer,
            )
        } else {
            AckPrefix::v1(stream, consumer)
        }
    }

    /// Runs a new consumer, or gives a running one its updated configuration;
    /// answers with its info.
    pub(super) async fn put_consumer(
        self: &Rc<Self>,
        shard: &Rc<Shard>,
        config: ConsumerConfig,
        created: i64,
    ) -> Result<Value, ApiError> {
        let name: Rc<str> = Rc::from(config.consumer_name());
        let stream = self.stream_name();
        let exists = self.consumers.by_name.borrow().contains_key(&name);
        let mut refilter_from = None;
        if exists {
            let mut by_name = self.consumers.by_name.borrow_mut();
            if let Some(c) = by_name.get_mut(&name) {
                c.facts = Rc::new(Facts {
                    name: name.clone(),
                    created: c.created,
                    ack: self.ack_prefix(shard, &stream, &name),
                    headers_only: config.headers_only,
                });
                let filters_before = c.core.filters().to_vec();
                config.filters().iter().for_each(|f| self.store.watch(f));
                c.core.set_config(config, &self.committed_view(), now_ns());
                filters_before.iter().for_each(|f| self.store.unwatch(f));
                if c.core.filters() != filters_before.as_slice() {
                    refilter_from = Some(c.core.ack_floor().stream + 1);
                }
            }
            drop(by_name);
            self.watch_push(shard, &stream)?;
            self.refresh_interest(shard, Some(&name));
        } else {
            let next_sid = if config.is_pull() {
                let subject = format!("{NEXT_PREFIX}{stream}.{name}");
                let sid = shard
                    .internal_subscribe(self.internal, subject.as_bytes(), None)
                    .ok_or_else(|| errors::CONSUMER_CREATE.err("invalid consumer name"))?;
                self.consumers
                    .by_sid
                    .borrow_mut()
                    .insert(sid.clone(), name.clone());
                Some(sid)
            } else {
                None
            };
            if self.consumers.ack_sids.borrow().is_empty() {
                let v2 = self
                    .v2_tag(shard)
                    .map(|tag| format!("$JS.ACK.{tag}{stream}.>"));
                for subject in std::iter::once(format!("$JS.ACK.{stream}.>")).chain(v2) {
                    let sid = shard
                        .internal_subscribe(self.internal, subject.as_bytes(), None)
                        .ok_or_else(|| errors::CONSUMER_CREATE.err("invalid stream name"))?;
                    self.consumers.ack_sids.borrow_mut().push(sid);
                }
            }
            let facts = Rc::new(Facts {
                name: name.clone(),
                created,
                ack: self.ack_prefix(shard, &stream, &name),
                headers_only: config.headers_only,
            });
            // Watched before the consumer counts what is pending for it.
            let filters: Vec<String> = config.filters().into_iter().map(String::from).collect();
            filters.iter().for_each(|f| self.store.watch(f));
            let (mut core, state_file) = match self.open_consumer(config, created, &stream).await {
                Ok(opened) => opened,
                Err(e) => {
                    filters.iter().for_each(|f| self.store.unwatch(f));
                    return Err(e);
                }
            };
            // A NUID's random part: pins of different consumers and runs differ.
            let tag = self.v2_tag(shard).unwrap_or_default();
            core.begin(
                now_ns(),
                &format!("{FLOW_PREFIX}{tag}{stream}.{name}."),
                &crate::nuid()[..12],
            );
            let max_msg_size = self.stream.borrow().config().max_msg_size;
            if max_msg_size > 0 {
                core.set_rate_limit(max_msg_size as u64, now_ns());
            }
            core.report_releases(self.keeps_for_consumers().is_some());
            self.consumers.by_name.borrow_mut().insert(
                name.clone(),
                HostedConsumer {
                    core,
                    created,
                    facts,
                    next_sid,
                    state_file,
                    dirty: false,
                },
            );
            // Pull requests sent once the create is answered must find the
            // subscription on every shard.
            shard.barrier().await;
            if !self.consumers.started.replace(true) {
                glommio::spawn_local(self.clone().send_decisions(shard.clone())).detach();
                glommio::spawn_local(self.clone().keep_time(shard.clone())).detach();
                glommio::spawn_local(self.clone().persist_states(shard.clone())).detach();
            }
            self.watch_push(shard, &stream)?;
            self.refresh_interest(shard, Some(&name));
        }
        // An interest stream drops what the old filters held and the new ones
        // do not take, unless another consumer needs it.
        if let (Some(from), Some(Retention::Interest)) = (refilter_from, self.keeps_for_consumers())
        {
            self.drop_unneeded(from..u64::MAX, &[]).await;
        }
        self.consumer_info(&name)
    }

    /// The stream's retention when it keeps messages only for its consumers
    /// (interest or work queue); `None` for limits.
    pub(super) fn keeps_for_consumers(&self) -> Option<Retention> {
        let retention = self.stream.borrow().config().retention;
        (retention != Retention::Limits).then_some(retention)
    }

    /// The stream's retention changed (limits and interest can turn into
    /// each other): its consumers report releases from now on, or stop.
    pub(super) fn retention_changed(&self) {
        let on = self.keeps_for_consumers().is_some();
        for c in self.consumers.by_name.borrow_mut().values_mut() {
            c.core.report_releases(on);
        }
    }

    /// Whether a message on `subject` is for some consumer (interest
    /// retention stores nothing else).
    pub(super) fn consumers_take(&self, subject: &str) -> bool {
        self.consumers
            .by_name
            .borrow()
            .values()
            .any(|c| c.core.takes(subject))
    }

    /// Removes message `seq` if the stream keeps messages for its consumers
    /// and none of them needs it. Whether it went.
    async fn drop_if_unneeded(&self, seq: u64) -> bool {
        if self.keeps_for_consumers().is_none() {
            return false;
        }
        let Some(subject) = self.store.stored_subject(seq) else {
            return false;
        };
        let needed = self
            .consumers
            .by_name
            .borrow()
            .values()
            .any(|c| c.core.needs(seq, subject.as_str()));
        if needed {
            return false;
        }
        match self.store.delete(seq, false).await {
            Ok(removed) => {
                self.usage.report(self.store.fast_state().bytes, false);
                removed
            }
            Err(e) => {
                tracing::warn!(
                    "JetStream could not remove acknowledged message {seq} of stream '{}': {e}",
                    self.stream_name()
                );
                false
            }
        }
    }

    /// Removes, in `range`, the messages on `filters` (none: all) that no
    /// consumer needs. Work is bounded by the messages stored in the range.
    async fn drop_unneeded(&self, range: std::ops::Range<u64>, filters: &[String]) -> u64 {
        let mut next = range.start.max(self.store.fast_state().first_seq);
        let mut dropped = 0;
        while let Some((seq, _)) = self
            .store
            .next_matching(next, filters)
            .filter(|(seq, _)| *seq < range.end)
        {
            next = seq + 1;
            if self.drop_if_unneeded(seq).await {
                dropped += 1;
            }
            if seq % 1024 == 0 {
                glommio::yield_if_needed().await;
            }
        }
        dropped
    }

    /// After a restart: a crash may have come between an ack and the removal
    /// it allowed, so what no consumer needs any more goes now (up to the
    /// furthest any consumer delivered; past that everything is needed).
    pub(super) async fn check_retention(&self) -> u64 {
        if self.keeps_for_consumers().is_none() || self.consumers.len() == 0 {
            return 0;
        }
        let reach = self
            .consumers
            .by_name
            .borrow()
            .values()
            .map(|c| c.core.delivered().stream)
            .max()
            .unwrap_or(0);
        let mut next = self.store.fast_state().first_seq;
        let mut dropped = 0;
        while let Some((seq, _)) = self.store.next_matching(next, &[]) {
            if seq > reach {
                break;
            }
            next = seq + 1;
            if self.drop_if_unneeded(seq).await {
                dropped += 1;
            }
            if seq % 1024 == 0 {
                glommio::yield_if_needed().await;
            }
        }
        dropped
    }

    /// The consumer's core, resumed from its kept state when it has one (a
    /// durable consumer of a file stream keeps its state in `obs/<name>/`).
    async fn open_consumer(
        &self,
        config: ConsumerConfig,
        created: i64,
        stream: &str,
    ) -> Result<(Consumer, Option<Rc<StateFile>>), ApiError> {
        let kept = config.is_durable()
            && !config.memory_storage
            && matches!(self.store.as_ref(), AnyStore::File(_));
        if !kept {
            return Ok((Consumer::new(config, &self.committed_view()), None));
        }
        let name = config.consumer_name().to_string();
        let keys = state_keys(self.encryption.as_ref(), stream, &name);
        let dir = self.dir.join("obs").join(&name);
        let (file, body) = StateFile::open(&dir, &format!("{stream} > {name}"), keys)
            .await
            .map_err(|e| errors::CONSUMER_STORE_FAILED.err(e))?;
        let state = body
            .and_then(|b| serde_json::from_slice::<KeptState>(&b).ok())
            .filter(|k| k.created == created);
        let core = match state {
            Some(k) => Consumer::restore(config, &k.state, &self.committed_view()),
            None => Consumer::new(config, &self.committed_view()),
        };
        Ok((core, Some(Rc::new(file))))
    }

    /// The durable consumers whose state is kept, as an archive holds them.
    pub(super) fn archived_consumers(&self) -> Vec<ArchivedConsumer> {
        self.consumers
            .by_name
            .borrow()
            .values()
            .filter(|c| c.state_file.is_some() && !c.core.config().direct)
            .map(|c| ArchivedConsumer {
                config: c.core.config().clone(),
                created: c.created,
                state: c.core.state(),
            })
            .collect()
    }

    pub(super) fn consumer_info(&self, name: &str) -> Result<Value, ApiError> {
        let by_name = self.consumers.by_name.borrow();
        let c = by_name
            .get(name)
            .ok_or_else(|| errors::CONSUMER_NOT_FOUND.error())?;
        let info = c.core.info(&self.stream_name(), c.created, now_ns());
        serde_json::to_value(info).map_err(|e| errors::CONSUMER_CREATE.err(e))
    }

    /// `$JS.API.CONSUMER.UNPIN`: the group's pin is given up (the service
    /// checked the group against the configuration).
    pub(super) fn unpin_consumer(
        &self,
        shard: &Shard,
        name: &str,
        group: &str,
    ) -> Result<Value, ApiError> {
        let facts = {
            let mut by_name = self.consumers.by_name.borrow_mut();
            let c = by_name
                .get_mut(name)
                .ok_or_else(|| errors::CONSUMER_NOT_FOUND.error())?;
            let mut out = Vec::new();
            c.core
                .unpin(group, &self.surroundings(shard), now_ns(), &mut out);
            c.dirty |= delivers(&out);
            self.arm(c.core.next_deadline());
            (c.facts.clone(), out)
        };
        self.queue(&facts.0, facts.1);
        Ok(json!({}))
    }

    /// Stops a consumer; its waiting pull requests are told it is gone.
    pub(super) async fn delete_consumer(
        &self,
        shard: &Shard,
        name: &str,
    ) -> Result<Value, ApiError> {
        let removed = self
            .consumers
            .by_name
            .borrow_mut()
            .remove(name)
            .ok_or_else(|| errors::CONSUMER_NOT_FOUND.error())?;
        for f in removed.core.filters() {
            self.store.unwatch(f);
        }
        if let Some(sid) = &removed.next_sid {
            shard.internal_unsubscribe(self.internal, sid);
            self.consumers.by_sid.borrow_mut().remove(sid);
        }
        let mut out = Vec::new();
        removed.core.close(&mut out);
        self.queue(&removed.facts, out);
        if self.consumers.len() == 0 {
            let ack = std::mem::take(&mut *self.consumers.ack_sids.borrow_mut());
            let flow = self.consumers.flow_sid.borrow_mut().take();
            for sid in ack.iter().chain(flow.iter()) {
                shard.internal_unsubscribe(self.internal, sid);
            }
        }
        if let Some(file) = removed.state_file.and_then(|f| Rc::try_unwrap(f).ok()) {
            file.remove().await;
        }
        // An interest stream keeps nothing nobody needs: without consumers
        // it empties; otherwise what only this one held goes.
        if self.keeps_for_consumers() == Some(Retention::Interest) {
            if self.consumers.len() == 0 {
                let last = self.store.fast_state().last_seq;
                if let Err(e) = self.store.compact(last + 1).await {
                    tracing::warn!(
                        "JetStream could not empty interest stream '{}': {e}",
                        self.stream_name()
                    );
                }
                self.usage.report(self.store.fast_state().bytes, true);
            } else {
                let from = removed.core.ack_floor().stream + 1;
                self.drop_unneeded(from..u64::MAX, removed.core.filters())
                    .await;
            }
        }
        Ok(json!(true))
    }

    /// `$JS.API.CONSUMER.RESET`: the consumer delivers again from `seq` (0:
    /// from past its ack floor). Pull requests waiting get what is there at
    /// once; on an interest or work queue stream, what the consumer skipped
    /// goes unless another needs it. Answers the consumer's info, and the
    /// sequence it was reset to.
    pub(super) async fn reset_consumer(
        &self,
        shard: &Shard,
        name: &str,
        seq: u64,
    ) -> Result<(Value, u64), ApiError> {
        let (facts, out, old_floor, reset_to, filters) = {
            let mut by_name = self.consumers.by_name.borrow_mut();
            let c = by_name
                .get_mut(name)
                .ok_or_else(|| errors::CONSUMER_NOT_FOUND.error())?;
            let old_floor = c.core.ack_floor().stream;
            let reset_to = c
                .core
                .reset(seq, &self.committed_view())
                .map_err(|e| errors::CONSUMER_INVALID_RESET.err(e))?;
            c.dirty = true;
            let mut out = Vec::new();
            c.core
                .deliver(&self.surroundings(shard), now_ns(), &mut out);
            self.arm(c.core.next_deadline());
            let filters = c.core.filters().to_vec();
            (c.facts.clone(), out, old_floor, reset_to, filters)
        };
        self.queue(&facts, out);
        self.consumers.persister.raise();
        if self.keeps_for_consumers().is_some() && reset_to > old_floor + 1 {
            self.drop_unneeded(old_floor + 1..reset_to, &filters).await;
            self.usage.report(self.store.fast_state().bytes, true);
        }
        Ok((self.consumer_info(name)?, reset_to))
    }

    /// Stops every consumer (the stream is going away).
    pub(super) fn close_consumers(&self) {
        self.consumers.by_name.borrow_mut().clear();
        self.consumers.by_sid.borrow_mut().clear();
        self.consumers.sender.raise();
        self.consumers.timer.raise();
        self.consumers.persister.raise();
    }

    /// One message on a consumer subscription: a pull request, an ack, or
    /// the answer to a flow control request.
    pub(super) fn consumer_message(&self, shard: &Shard, msg: InternalMsg) {
        let name = self.consumers.by_sid.borrow().get(&msg.sid).cloned();
        match name {
            Some(name) => self.pull(shard, &name, msg),
            None if self.consumers.flow_sid.borrow().as_ref() == Some(&msg.sid) => {
                self.flow_answer(msg)
            }
            None => self.ack(shard, msg),
        }
    }

    fn surroundings<'a>(&'a self, shard: &'a Shard) -> Surroundings<'a> {
        Surroundings {
            store: self.committed_view(),
            shard,
            account: self.account,
        }
    }

    /// Push consumers need the answers to their flow control requests, and
    /// to hear when interest in their deliver subjects changes.
    fn watch_push(&self, shard: &Shard, stream: &str) -> Result<(), ApiError> {
        let (push, flow) =
            self.consumers
                .by_name
                .borrow()
                .values()
                .fold((false, false), |(push, flow), c| {
                    let cfg = c.core.config();
                    (push || !cfg.is_pull(), flow || cfg.flow_control)
                });
        if push && !self.consumers.watching_interest.replace(true) {
            shard.watch_interest(&self.consumers.timer);
        }
        if flow && self.consumers.flow_sid.borrow().is_none() {
            let tag = self.v2_tag(shard).unwrap_or_default();
            let subject = format!("{FLOW_PREFIX}{tag}{stream}.>");
            let sid = shard
                .internal_subscribe(self.internal, subject.as_bytes(), None)
                .ok_or_else(|| errors::CONSUMER_CREATE.err("invalid stream name"))?;
            *self.consumers.flow_sid.borrow_mut() = Some(sid);
        }
        Ok(())
    }

    /// Tells push consumers (`only` one, or all) whether anyone listens on
    /// their deliver subjects now.
    fn refresh_interest(&self, shard: &Shard, only: Option<&str>) {
        if !self.consumers.watching_interest.get() {
            return;
        }
        if only.is_none() {
            let epoch = shard.router().interest_epoch();
            if self.consumers.interest_seen.replace(epoch) == epoch {
                return;
            }
        }
        let now = now_ns();
        let mut decided = Vec::new();
        {
            let mut by_name = self.consumers.by_name.borrow_mut();
            for (name, c) in by_name.iter_mut() {
                if only.is_some_and(|o| o != &**name) {
                    continue;
                }
                let Some((subject, group)) = c.core.deliver_to() else {
                    continue;
                };
                let active =
                    shard.has_interest(self.account, subject.as_bytes(), group.map(str::as_bytes));
                let mut out = Vec::new();
                c.core
                    .set_interest(active, &self.committed_view(), now, &mut out);
                c.dirty |= delivers(&out);
                self.arm(c.core.next_deadline());
                if !out.is_empty() {
                    decided.push((c.facts.clone(), out));
                }
            }
        }
        for (facts, out) in decided {
            self.queue(&facts, out);
        }
    }

    /// `$JS.FC.<stream>.<consumer>.<request>`: a push subscriber took what
    /// came before the request; its `Nats-Last-Stream` header (when it sends
    /// one) is what it took.
    fn flow_answer(&self, msg: InternalMsg) {
        let Ok(subject) = std::str::from_utf8(&msg.subject) else {
            return;
        };
        // `$JS.FC.[<domain>.<account hash>.]<stream>.<consumer>.<token>`
        let Some(name) = subject.rsplit('.').nth(1) else {
            return;
        };
        let last_stream = crate::proto::header_value(msg.headers(), LAST_STREAM)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse().ok());
        let now = now_ns();
        let mut out = Vec::new();
        let facts = {
            let mut by_name = self.consumers.by_name.borrow_mut();
            let Some(c) = by_name.get_mut(name) else {
                return;
            };
            c.dirty |=
                c.core
                    .flow_answered(subject, last_stream, &self.committed_view(), now, &mut out);
            c.dirty |= delivers(&out);
            self.arm(c.core.next_deadline());
            c.facts.clone()
        };
        self.queue(&facts, out);
    }

    fn pull(&self, shard: &Shard, name: &str, msg: InternalMsg) {
        let Ok(reply) = std::str::from_utf8(&msg.reply) else {
            return;
        };
        if reply.is_empty() {
            return;
        }
        let reply: Rc<str> = Rc::from(reply);
        let now = now_ns();
        let mut out = Vec::new();
        let facts = {
            let mut by_name = self.consumers.by_name.borrow_mut();
            let Some(c) = by_name.get_mut(name) else {
                return;
            };
            match PullRequest::parse(msg.payload()) {
                Ok(req) => c
                    .core
                    .pull(reply, req, &self.surroundings(shard), now, &mut out),
                Err(text) => out.push(Action::Status {
                    to: reply,
                    status: Status::BadRequest(text),
                }),
            }
            c.dirty |= delivers(&out);
            self.arm(c.core.next_deadline());
            c.facts.clone()
        };
        self.queue(&facts, out);
    }

    fn ack(&self, shard: &Shard, msg: InternalMsg) {
        let Ok(subject) = std::str::from_utf8(&msg.subject) else {
            return;
        };
        let Some(ack) = AckReply::parse(subject) else {
            return;
        };
        let kind = AckKind::parse(msg.payload());
        let reply = std::str::from_utf8(&msg.reply)
            .ok()
            .filter(|r| !r.is_empty())
            .map(Rc::from);
        let next = matches!(kind, AckKind::Next(_));
        let now = now_ns();
        let mut out = Vec::new();
        let facts = {
            let mut by_name = self.consumers.by_name.borrow_mut();
            let Some(c) = by_name.get_mut(ack.consumer) else {
                return;
            };
            c.dirty |= c.core.ack(
                ack.stream_seq,
                kind,
                reply.clone().filter(|_| next),
                &self.surroundings(shard),
                now,
                &mut out,
            );
            c.dirty |= delivers(&out);
            self.arm(c.core.next_deadline());
            c.facts.clone()
        };
        self.queue(&facts, out);
        // An ack sent as a request is answered once it is applied.
        if let Some(reply) = reply.filter(|_| !next) {
            self.consumers.ack_replies.borrow_mut().push_back(reply);
        }
        self.consumers.persister.raise();
    }

    /// The stream as its consumers see it: up to the last completed append.
    fn committed_view(&self) -> Committed<'_> {
        Committed {
            store: self.store.as_ref(),
            up_to: self.committed.get(),
        }
    }

    /// The stream stored `seq` on `subject` and it is durable (its append
    /// completed): consumers waiting for it get it.
    pub(super) fn offer(&self, shard: &Shard, seq: u64, subject: &str) {
        self.committed.set(self.committed.get().max(seq));
        self.answer_committed(shard);
        if self.consumers.len() == 0 {
            return;
        }
        let now = now_ns();
        let mut decided = Vec::new();
        {
            let mut by_name = self.consumers.by_name.borrow_mut();
            for c in by_name.values_mut() {
                c.core.on_append(seq, subject);
                if c.core.wants_messages() {
                    let mut out = Vec::new();
                    c.core.deliver(&self.surroundings(shard), now, &mut out);
                    c.dirty |= delivers(&out);
                    self.arm(c.core.next_deadline());
                    if !out.is_empty() {
                        decided.push((c.facts.clone(), out));
                    }
                }
            }
        }
        for (facts, out) in decided {
            self.queue(&facts, out);
        }
    }

    /// Messages went away (purge, delete, expiry): the counts follow.
    pub(super) fn recount_consumers(&self) {
        for c in self.consumers.by_name.borrow_mut().values_mut() {
            c.core.recount(&self.committed_view());
        }
    }

    fn queue(&self, facts: &Rc<Facts>, out: Vec<Action>) {
        if out.is_empty() {
            return;
        }
        let mut outbox = self.consumers.outbox.borrow_mut();
        outbox.extend(out.into_iter().map(|a| (facts.clone(), a)));
        self.consumers.sender.raise();
    }

    /// Makes the timer wake by `at` if it would sleep past it.
    fn arm(&self, at: Option<i64>) {
        if let Some(at) = at {
            if at < self.consumers.armed.get() {
                self.consumers.armed.set(at);
                self.consumers.timer.raise();
            }
        }
    }

    /// The stream's one timer: ticks the consumers whose deadline has come,
    /// then sleeps until the earliest one left (or until one comes earlier).
    async fn keep_time(self: Rc<Self>, shard: Rc<Shard>) {
        while !self.closed.get() {
            self.refresh_interest(&shard, None);
            let now = now_ns();
            let mut earliest = i64::MAX;
            let mut decided = Vec::new();
            {
                let mut by_name = self.consumers.by_name.borrow_mut();
                for c in by_name.values_mut() {
                    let Some(at) = c.core.next_deadline() else {
                        continue;
                    };
                    if at <= now {
                        let mut out = Vec::new();
                        c.core.tick(&self.surroundings(&shard), now, &mut out);
                        c.dirty |= delivers(&out);
                        if !out.is_empty() {
                            decided.push((c.facts.clone(), out));
                        }
                    }
                    if let Some(at) = c.core.next_deadline() {
                        earliest = earliest.min(at);
                    }
                }
            }
            for (facts, out) in decided {
                self.queue(&facts, out);
            }
            self.consumers.armed.set(earliest);
            if earliest == i64::MAX {
                self.consumers.timer.wait().await;
                continue;
            }
            let sleep = Duration::from_nanos((earliest - now_ns()).max(0) as u64);
            futures_lite::future::or(glommio::timer::sleep(sleep), self.consumers.timer.wait())
                .await;
        }
    }

    /// Carries out what the cores decided, in order, until the stream closes.
    async fn send_decisions(self: Rc<Self>, shard: Rc<Shard>) {
        let mut reply = String::new();
        while !self.closed.get() {
            let next = self.consumers.outbox.borrow_mut().pop_front();
            let Some((facts, action)) = next else {
                shard.flush_lanes().await;
                self.consumers.persister.raise();
                if self.consumers.outbox.borrow().is_empty() {
                    self.consumers.sender.wait().await;
                }
                continue;
            };
            match action {
                Action::Deliver {
                    to,
                    stream_seq,
                    consumer_seq,
                    deliveries,
                    pending,
                    pin,
                } => {
                    let Ok(m) = self.store.load(stream_seq).await else {
                        // Gone since it was chosen: nothing to send.
                        continue;
                    };
                    facts.ack.write(
                        &mut reply,
                        deliveries,
                        stream_seq,
                        consumer_seq,
                        m.ts,
                        pending,
                    );
                    // One buffer per delivery, so that it crosses shards as one
                    // reference: routed by `to`, shown as the stored subject.
                    let mut frame = Vec::with_capacity(
                        to.len()
                            + m.subject.len()
                            + reply.len()
                            + m.headers.len()
                            + m.payload.len()
                            + 32,
                    );
                    frame.extend_from_slice(to.as_bytes());
                    frame.extend_from_slice(m.subject.as_bytes());
                    frame.extend_from_slice(reply.as_bytes());
                    let pinned = pin.map(|id| with_header(&m.headers, PIN_ID, &id));
                    let headers = pinned.as_deref().unwrap_or(&m.headers);
                    let header_len = if facts.headers_only {
                        let size = m.payload.len().to_string();
                        let headers = with_header(headers, MSG_SIZE, &size);
                        frame.extend_from_slice(&headers);
                        headers.len()
                    } else {
                        frame.extend_from_slice(headers);
                        frame.extend_from_slice(&m.payload);
                        headers.len()
                    };
                    let owner = Bytes::from(frame);
                    let (t, s, r) = (to.len(), m.subject.len(), reply.len());
                    shard.internal_deliver(
                        Some(self.internal),
                        self.account,
                        InternalDelivery {
                            subject: &owner[..t],
                            deliver_as: &owner[t..t + s],
                            reply: &owner[t + s..t + s + r],
                            header_len,
                            message: &owner[t + s + r..],
                            owner: &owner,
                        },
                    );
                }
                Action::Status { to, status } => {
                    self.send(&shard, to.as_bytes(), status.header().as_bytes(), &[]);
                }
                Action::FlowControl { to, reply } => {
                    self.send_with_reply(
                        &shard,
                        to.as_bytes(),
                        reply.as_bytes(),
                        FLOW_REQUEST,
                        &[],
                    );
                }
                Action::Inactive => {
                    // The service deletes it, as if asked; gone already when
                    // the service is (the server is stopping).
                    let _ = self.events.send(HostEvent::ConsumerInactive {
                        account: self.usage.account_name().to_string(),
                        stream: self.stream_name(),
                        consumer: facts.name.to_string(),
                        created: facts.created,
                    });
                }
                Action::Release { stream_seq } => {
                    self.drop_if_unneeded(stream_seq).await;
                }
                Action::Pinned { group, id } => self.advise(
                    &shard,
                    "PINNED",
                    &facts.name,
                    json!({
                        "type": "io.nats.jetstream.advisory.v1.consumer_group_pinned",
                        "account": self.usage.account_name(),
                        "group": group,
                        "pinned_id": &*id,
                    }),
                ),
                Action::Unpinned { group, reason } => self.advise(
                    &shard,
                    "UNPINNED",
                    &facts.name,
                    json!({
                        "type": "io.nats.jetstream.advisory.v1.consumer_group_unpinned",
                        "account": self.usage.account_name(),
                        "group": group,
                        "reason": reason.as_str(),
                    }),
                ),
                Action::Resumed => self.advise(
                    &shard,
                    "PAUSE",
                    &facts.name,
                    json!({
                        "type": PAUSE_ADVISORY_TYPE,
                        "paused": false,
                    }),
                ),
                Action::MaxDeliveries {
                    stream_seq,
                    deliveries,
                } => self.advise(
                    &shard,
                    "MAX_DELIVERIES",
                    &facts.name,
                    json!({
                        "type": "io.nats.jetstream.advisory.v1.max_deliver",
                        "stream_seq": stream_seq,
                        "deliveries": deliveries,
                    }),
                ),
                Action::AckSampled {
                    stream_seq,
                    consumer_seq,
                    deliveries,
                    ack_time,
                } => self.publish_event(
                    &shard,
                    METRIC_PREFIX,
                    "ACK",
                    &facts.name,
                    json!({
                        "type": "io.nats.jetstream.metric.v1.consumer_ack",
                        "consumer_seq": consumer_seq,
                        "stream_seq": stream_seq,
                        "ack_time": ack_time,
                        "deliveries": deliveries,
                    }),
                ),
                Action::Naked {
                    stream_seq,
                    consumer_seq,
                    deliveries,
                } => self.advise(
                    &shard,
                    "MSG_NAKED",
                    &facts.name,
                    json!({
                        "type": "io.nats.jetstream.advisory.v1.nak",
                        "consumer_seq": consumer_seq,
                        "stream_seq": stream_seq,
                        "deliveries": deliveries,
                    }),
                ),
                Action::Terminated {
                    stream_seq,
                    consumer_seq,
                    deliveries,
                    reason,
                } => {
                    let mut body = json!({
                        "type": "io.nats.jetstream.advisory.v1.terminated",
                        "consumer_seq": consumer_seq,
                        "stream_seq": stream_seq,
                        "deliveries": deliveries,
                    });
                    if !reason.is_empty() {
                        body["reason"] = json!(reason);
                    }
                    self.advise(&shard, "MSG_TERMINATED", &facts.name, body)
                }
            }
        }
    }

    /// Writes the consumers' states as they change, each write carrying every
    /// change since the one before (group commit), and answers the acks sent
    /// as requests once a write holding them returned.
    async fn persist_states(self: Rc<Self>, shard: Rc<Shard>) {
        while !self.closed.get() {
            self.consumers.persister.wait().await;
            // The acks answered are those the state about to be written holds.
            let replies: Vec<Rc<str>> = self.consumers.ack_replies.borrow_mut().drain(..).collect();
            if self.persist_consumers().await && !replies.is_empty() {
                for to in replies {
                    self.send(&shard, to.as_bytes(), &[], &[]);
                }
                shard.flush_lanes().await;
            }
        }
    }

    /// Writes the state of every consumer that changed since its last write
    /// (one write and fdatasync for all the changes since, however many).
    /// Whether every write succeeded.
    async fn persist_consumers(&self) -> bool {
        let writes: Vec<(Rc<StateFile>, Vec<u8>)> = {
            let mut by_name = self.consumers.by_name.borrow_mut();
            by_name
                .values_mut()
                .filter_map(|c| {
                    if !std::mem::take(&mut c.dirty) {
                        return None;
                    }
                    let file = c.state_file.clone()?;
                    let kept = KeptState {
                        created: c.created,
                        state: c.core.state(),
                    };
                    Some((file, serde_json::to_vec(&kept).ok()?))
                })
                .collect()
        };
        let mut ok = true;
        for (file, body) in writes {
            if let Err(e) = file.write(&body).await {
                tracing::warn!("JetStream consumer state could not be written: {e}");
                ok = false;
            }
        }
        ok
    }

    /// Publishes `$JS.EVENT.ADVISORY.CONSUMER.<event>.<stream>.<consumer>` with
    /// nats-server's common fields around `fields` (its `type` first).
    fn advise(&self, shard: &Shard, event: &str, consumer: &str, fields: Value) {
        self.publish_event(shard, ADVISORY_PREFIX, event, consumer, fields);
    }

    /// An event on `<prefix><event>.<stream>.<consumer>`, its `type` first, then
    /// the common fields, then the rest.
    fn publish_event(
        &self,
        shard: &Shard,
        prefix: &str,
        event: &str,
        consumer: &str,
        fields: Value,
    ) {
        let stream = self.stream_name();
        let Value::Object(fields) = fields else {
            return;
        };
        let mut body = serde_json::Map::new();
        let mut fields = fields.into_iter();
        if let Some((k, v)) = fields.next() {
            body.insert(k, v);
        }
        body.insert("id".into(), json!(crate::nuid()));
        body.insert("timestamp".into(), json!(ts_rfc3339(now_ns())));
        body.insert("stream".into(), json!(stream));
        body.insert("consumer".into(), json!(consumer));
        body.extend(fields);
        if let Some(domain) = self.stream.borrow().domain() {
            body.insert("domain".into(), json!(domain));
        }
        let subject = format!("{prefix}{event}.{stream}.{consumer}");
        let payload = serde_json::to_vec(&Value::Object(body)).unwrap_or_default();
        self.send(shard, subject.as_bytes(), &[], &payload);
    }
}

/// Whether the core handed something out (which changes its state).
fn delivers(out: &[Action]) -> bool {
    out.iter().any(|a| {
        matches!(
            a,
            Action::Deliver { .. } | Action::MaxDeliveries { .. } | Action::Terminated { .. }
        )
    })
}
