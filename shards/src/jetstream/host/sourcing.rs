//! The shell around [`sourcing::Origin`](super::super::sourcing::Origin): one
//! task per fed stream asks each origin for its consumer and watches its
//! health; the deliveries arrive on the stream's own queue like publishes do
//! and are stored in order, through the same checks. Each origin listens on
//! one subscription at a time — the consumer request's reply, then the
//! deliveries — so anything an old consumer still sends falls on nothing.

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use strait_storage::{Store, StoreError};

use super::super::config::StreamConfig;
use super::super::sourcing::{self, Control, Delivery, Kind, Origin, StoreFacts};
use super::super::stream::Ingest;
use super::{now_ns, Hosted};
use crate::internal::InternalMsg;
use crate::shard::Shard;
use crate::signal::Signal;

/// A status message (heartbeat, flow control) rather than a delivery.
const CONTROL_STATUS: &[u8] = b"NATS/1.0 100 ";
/// Headers a stored copy does not keep: what the origin checked already.
const DROPPED_PREFIXES: &[&str] = &["Nats-Expected-", "Nats-Batch-"];

struct Fed {
    core: Origin,
    /// The subjects this origin listens on now, and their subscriptions.
    listening: Vec<(String, Bytes)>,
    /// Deliveries that came before the consumer's answer, in order.
    early: Vec<InternalMsg>,
}

/// Deliveries held for a consumer whose answer is late; past this the rest
/// are dropped, and the gap they leave makes the origin ask again.
const MAX_EARLY: usize = 4096;

/// A stream's mirror or sources.
#[derive(Default)]
pub(super) struct Sourcing {
    origins: RefCell<Vec<Fed>>,
    /// Direct get subscriptions for the mirror's origin, once caught up.
    mirror_direct: RefCell<Vec<Bytes>>,
    wake: Signal,
    /// Flow control answers (to, headers) for durable origin consumers, held
    /// until the stream sequence with them is durable: an answer tells such a
    /// consumer what it may forget, so it must not run ahead of the commit.
    answers: RefCell<std::collections::VecDeque<(u64, String, String)>>,
    /// The stream sequence of the last sourced message staged.
    staged: std::cell::Cell<u64>,
}

impl Sourcing {
    pub(super) fn owns(&self, sid: &Bytes) -> bool {
        self.origins
            .borrow()
            .iter()
            .any(|f| f.listening.iter().any(|(_, s)| s == sid))
    }

    pub(super) fn sids(&self) -> Vec<Bytes> {
        let mut out: Vec<Bytes> = self
            .origins
            .borrow()
            .iter()
            .flat_map(|f| f.listening.iter().map(|(_, s)| s.clone()))
            .collect();
        out.extend(self.mirror_direct.borrow().iter().cloned());
        out
    }

    pub(super) fn is_mirror_direct(&self, sid: &Bytes) -> bool {
        self.mirror_direct.borrow().contains(sid)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.origins.borrow().is_empty()
    }
}

fn facts(store: &impl Store) -> StoreFacts {
    let st = store.fast_state();
    StoreFacts {
        msgs: st.msgs,
        first_seq: st.first_seq,
        last_seq: st.last_seq,
        last_ts: st.last_ts,
    }
}

impl Hosted {
    /// Sets the origins up from the configuration: kept where the index name
    /// stays, new ones resuming from what the stream holds of them.
    pub(super) async fn configure_sourcing(&self, shard: &Shard, config: &StreamConfig) {
        let now = now_ns();
        let wanted: Vec<(Kind, sourcing::StreamSource)> = match &config.mirror {
            Some(m) => vec![(Kind::Mirror, m.clone())],
            None => config
                .sources
                .iter()
                .map(|s| (Kind::Source, s.clone()))
                .collect(),
        };
        let mut fresh = Vec::new();
        {
            let mut origins = self.sourcing.origins.borrow_mut();
            let mut kept = Vec::new();
            for fed in origins.drain(..) {
                let stays = wanted
                    .iter()
                    .any(|(k, s)| *k == fed.core.kind && *s == fed.core.config);
                if stays {
                    kept.push(fed);
                } else {
                    for (_, sid) in fed.listening {
                        shard.internal_unsubscribe(self.internal, &sid);
                    }
                }
            }
            for (kind, source) in wanted {
                if !kept
                    .iter()
                    .any(|f| f.core.kind == kind && f.core.config == source)
                {
                    fresh.push(Origin::new(kind, source, now));
                }
            }
            *origins = kept;
        }
        if config.mirror.is_none() {
            for sid in self.sourcing.mirror_direct.borrow_mut().drain(..) {
                shard.internal_unsubscribe(self.internal, &sid);
            }
        }
        self.recover_source_positions(&mut fresh).await;
        self.sourcing
            .origins
            .borrow_mut()
            .extend(fresh.into_iter().map(|core| Fed {
                core,
                listening: Vec::new(),
                early: Vec::new(),
            }));
        self.sourcing.wake.raise();
    }

    /// Where each new source resumes: the last message the stream holds from
    /// it names it in `Nats-Stream-Source` (nats-server reads them the same way).
    async fn recover_source_positions(&self, origins: &mut [Origin]) {
        let mut missing: Vec<usize> = (0..origins.len())
            .filter(|&i| origins[i].kind == Kind::Source)
            .collect();
        if missing.is_empty() || self.store.fast_state().msgs == 0 {
            return;
        }
        for seq in self.store.with_headers_since(0).into_iter().rev() {
            let m = match self.store.load(seq).await {
                Ok(m) => m,
                Err(StoreError::NotFound) => continue,
                Err(_) => break,
            };
            let Some(found) = super::super::stream::header(&m.headers, sourcing::STREAM_SOURCE)
                .and_then(sourcing::parse_source_header)
            else {
                continue;
            };
            if let Some(pos) = missing
                .iter()
                .position(|&i| origins[i].index_name == found.0)
            {
                origins[missing[pos]].sseq = found.1;
                missing.swap_remove(pos);
                if missing.is_empty() {
                    return;
                }
            }
        }
    }

    /// Listens where each origin needs to now, and nowhere else. A subject
    /// listened on before and still wanted keeps its subscription, so that
    /// nothing is missed between the consumer's answer and its deliveries.
    fn sync_listening(&self, shard: &Shard) {
        for fed in self.sourcing.origins.borrow_mut().iter_mut() {
            let wanted: Vec<String> = fed
                .core
                .listening_on()
                .into_iter()
                .chain(fed.core.early_deliveries_on())
                .map(str::to_string)
                .collect();
            if !fed.core.is_active() && fed.core.early_deliveries_on().is_none() {
                fed.early.clear();
            }
            fed.listening.retain(|(subject, sid)| {
                let keep = wanted.contains(subject);
                if !keep {
                    shard.internal_unsubscribe(self.internal, sid);
                }
                keep
            });
            for subject in wanted {
                if fed.listening.iter().any(|(s, _)| *s == subject) {
                    continue;
                }
                match shard.internal_subscribe(self.internal, subject.as_bytes(), None) {
                    Some(sid) => fed.listening.push((subject, sid)),
                    None => tracing::warn!(
                        "JetStream could not subscribe to {subject:?} for a stream source"
                    ),
                }
            }
        }
    }

    /// A message on one of the origins' subscriptions.
    pub(super) fn sourced_message(self: &Rc<Self>, shard: &Rc<Shard>, msg: InternalMsg) {
        let now = now_ns();
        let found = self
            .sourcing
            .origins
            .borrow()
            .iter()
            .position(|f| f.listening.iter().any(|(_, s)| *s == msg.sid));
        let Some(i) = found else { return };
        let early = {
            let mut origins = self.sourcing.origins.borrow_mut();
            let fed = &mut origins[i];
            if fed.core.is_active() {
                None
            } else {
                let on_reply = fed
                    .listening
                    .iter()
                    .any(|(s, sid)| *sid == msg.sid && Some(s.as_str()) == fed.core.listening_on());
                if !on_reply {
                    if fed.early.len() < MAX_EARLY {
                        fed.early.push(msg);
                    }
                    return;
                }
                Some(std::mem::take(&mut fed.early))
            }
        };
        if let Some(held) = early {
            self.consumer_created(shard, i, &msg, now);
            if self
                .sourcing
                .origins
                .borrow()
                .get(i)
                .is_some_and(|f| f.core.is_active())
            {
                for m in held {
                    self.sourced_message(shard, m);
                }
            }
            return;
        }
        let is_control = msg.payload().is_empty() && msg.headers().starts_with(CONTROL_STATUS);
        if is_control {
            let reply = String::from_utf8_lossy(&msg.reply);
            let control =
                self.sourcing.origins.borrow_mut()[i]
                    .core
                    .control(msg.headers(), &reply, now);
            match control {
                Control::Reply { to, headers } => {
                    // Only a durable origin consumer forgets what an answer
                    // covers (the ones strait makes ack nothing, and waiting for
                    // the commit would slow every window). Against the last
                    // message copied, not the stream's end: a mirror's skip
                    // alone commits with the message that follows.
                    let durable = self.sourcing.origins.borrow()[i]
                        .core
                        .config
                        .consumer
                        .is_some();
                    let staged = self.sourcing.staged.get();
                    if !durable || self.committed.get() >= staged {
                        self.send(shard, to.as_bytes(), headers.as_bytes(), &[]);
                    } else {
                        self.sourcing
                            .answers
                            .borrow_mut()
                            .push_back((staged, to, headers));
                    }
                }
                Control::Retry => self.sync_listening(shard),
                Control::Nothing => {}
            }
            return;
        }
        let subject = String::from_utf8_lossy(&msg.subject);
        let reply = String::from_utf8_lossy(&msg.reply);
        let delivery = self.sourcing.origins.borrow_mut()[i]
            .core
            .delivered(&subject, &reply, now);
        match delivery {
            Delivery::Store {
                seq,
                ts,
                subject,
                header,
            } => {
                let kind = self.sourcing.origins.borrow()[i].core.kind;
                if self.store_sourced(shard, kind, &msg, seq, ts, subject, header) {
                    self.sourcing.staged.set(self.store.fast_state().last_seq);
                } else {
                    self.sourcing.origins.borrow_mut()[i]
                        .core
                        .store_failed(seq, now);
                    self.sync_listening(shard);
                }
                if kind == Kind::Mirror {
                    self.check_mirror_direct(shard);
                }
            }
            Delivery::Ignore => {}
            Delivery::Retry => self.sync_listening(shard),
        }
    }

    /// Sends the flow control answers whose messages are now durable.
    pub(super) fn answer_committed(&self, shard: &Shard) {
        let committed = self.committed.get();
        loop {
            let ready = {
                let mut answers = self.sourcing.answers.borrow_mut();
                match answers.front() {
                    Some((seq, _, _)) if *seq <= committed => answers.pop_front(),
                    _ => None,
                }
            };
            let Some((_, to, headers)) = ready else {
                return;
            };
            self.send(shard, to.as_bytes(), headers.as_bytes(), &[]);
        }
    }

    fn consumer_created(&self, shard: &Shard, i: usize, msg: &InternalMsg, now: i64) {
        let held = facts(self.store.as_ref());
        let outcome = self.sourcing.origins.borrow_mut()[i]
            .core
            .created(msg.payload(), held, now);
        match outcome {
            Ok(Some(seq)) => self.skip_to(seq),
            Ok(None) => {}
            Err(e) => {
                let origins = self.sourcing.origins.borrow();
                let core = &origins[i].core;
                tracing::warn!(
                    "JetStream error response for stream {} create {} consumer {}: {}",
                    self.stream.borrow().config().name,
                    if core.kind == Kind::Mirror {
                        "mirror"
                    } else {
                        "source"
                    },
                    core.config.name,
                    e
                );
            }
        }
        self.sync_listening(shard);
    }

    /// Moves the stream up to `seq` before the next message is stored: the
    /// move is staged at once, its commit rides with what follows.
    fn skip_to(&self, seq: u64) {
        let store = self.store.clone();
        let mut skip = Box::pin(async move { store.skip_to(seq).await });
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if skip.as_mut().poll(&mut cx).is_pending() {
            glommio::spawn_local(async move {
                if let Err(e) = skip.await {
                    tracing::warn!("JetStream mirror could not skip to {seq}: {e}");
                }
            })
            .detach();
        }
        self.recount_consumers();
    }

    /// Stores a delivery as the mirror's message `seq` or the source's next;
    /// false when the stream refused it.
    #[allow(clippy::too_many_arguments)]
    fn store_sourced(
        self: &Rc<Self>,
        shard: &Rc<Shard>,
        kind: Kind,
        msg: &InternalMsg,
        seq: u64,
        ts: i64,
        subject: String,
        source_header: Option<String>,
    ) -> bool {
        let original = msg.headers();
        let payload = msg.message.slice(msg.header_len..);
        match kind {
            Kind::Mirror => {
                let last = self.store.fast_state().last_seq;
                if seq <= last {
                    return true;
                }
                if seq > last + 1 {
                    self.skip_to(seq - 1);
                }
                let headers = if original.is_empty() {
                    Bytes::new()
                } else {
                    Bytes::from(sourcing::without_headers(original, &[], DROPPED_PREFIXES))
                };
                let subject = Bytes::from(subject);
                self.ingest(
                    shard,
                    Ingest::Mirrored,
                    subject,
                    headers,
                    payload,
                    Bytes::new(),
                    Some(ts),
                ) && self.store.fast_state().last_seq >= seq
            }
            Kind::Source => {
                let base = if original.is_empty() {
                    b"NATS/1.0\r\n\r\n".to_vec()
                } else {
                    sourcing::without_headers(
                        original,
                        &[sourcing::STREAM_SOURCE],
                        DROPPED_PREFIXES,
                    )
                };
                let headers = super::super::stream::with_header(
                    &base,
                    sourcing::STREAM_SOURCE,
                    source_header.as_deref().unwrap_or_default(),
                );
                self.ingest(
                    shard,
                    Ingest::Sourced,
                    Bytes::from(subject),
                    Bytes::from(headers),
                    payload,
                    Bytes::new(),
                    None,
                )
            }
        }
    }

    /// `mirror_direct`: once the mirror is close behind, it answers direct
    /// gets for its origin too, in the same queue group as the origin.
    fn check_mirror_direct(&self, shard: &Shard) {
        let (wanted, origin) = {
            let s = self.stream.borrow();
            let cfg = s.config();
            match &cfg.mirror {
                Some(m) if cfg.mirror_direct => (true, m.name.clone()),
                _ => (false, String::new()),
            }
        };
        if !wanted || !self.sourcing.mirror_direct.borrow().is_empty() {
            return;
        }
        let caught_up = self
            .sourcing
            .origins
            .borrow()
            .first()
            .is_some_and(|f| f.core.caught_up());
        if !caught_up {
            return;
        }
        let base = format!("{}{origin}", super::DIRECT_GET_PREFIX);
        let mut sids = self.sourcing.mirror_direct.borrow_mut();
        for subject in [base.clone(), format!("{base}.>")] {
            if let Some(sid) = shard.internal_subscribe(
                self.internal,
                subject.as_bytes(),
                Some(super::DIRECT_GET_GROUP),
            ) {
                sids.push(sid);
            }
        }
    }

    /// `mirror` and `sources` of the stream info.
    pub(super) fn sourcing_info(&self) -> Value {
        let now = now_ns();
        let origins = self.sourcing.origins.borrow();
        let mirror = origins
            .iter()
            .find(|f| f.core.kind == Kind::Mirror)
            .map(|f| f.core.info(now));
        let sources: Vec<Value> = origins
            .iter()
            .filter(|f| f.core.kind == Kind::Source)
            .map(|f| f.core.info(now))
            .collect();
        json!({ "mirror": mirror, "sources": sources })
    }

    /// Stops listening to every origin (the stream goes).
    pub(super) fn close_sourcing(&self) {
        self.sourcing.origins.borrow_mut().clear();
        self.sourcing.mirror_direct.borrow_mut().clear();
        self.sourcing.wake.raise();
    }
}

/// Asks each origin for a consumer when due and gives up on silent ones,
/// sleeping until the earliest deadline (or a change of configuration).
pub(super) async fn run(shard: Rc<Shard>, hosted: Rc<Hosted>) {
    const IDLE: Duration = Duration::from_secs(1);
    while !hosted.closed.get() {
        let now = now_ns();
        let (name, account) = {
            let s = hosted.stream.borrow();
            (
                s.config().name.clone(),
                hosted.usage.account_name().to_string(),
            )
        };
        let mut requests = Vec::new();
        {
            let held = facts(hosted.store.as_ref());
            let domain = hosted.stream.borrow().domain().map(str::to_string);
            for (i, fed) in hosted.sourcing.origins.borrow_mut().iter_mut().enumerate() {
                fed.core.tick(now);
                if fed.core.due(now) {
                    let reply = format!("$JS.R.{}", crate::nuid());
                    let unique = crate::nuid();
                    requests.push((
                        i,
                        fed.core.request(
                            &name,
                            &account,
                            domain.as_deref(),
                            held,
                            reply,
                            &unique,
                            now,
                        ),
                    ));
                }
            }
        }
        hosted.sync_listening(&shard);
        for (i, r) in requests {
            // A consumer reset goes with no body: back to past the ack floor.
            let body = if r.body.is_null() {
                Vec::new()
            } else {
                serde_json::to_vec(&r.body).unwrap_or_default()
            };
            let routed = shard.internal_publish(
                Some(hosted.internal),
                hosted.account,
                r.subject.as_bytes(),
                r.reply.as_bytes(),
                0,
                &Bytes::from(body),
            );
            if !routed.any() {
                hosted.sourcing.origins.borrow_mut()[i]
                    .core
                    .unanswered(now_ns());
            }
        }
        hosted.sync_listening(&shard);
        shard.flush_lanes().await;
        let next = hosted
            .sourcing
            .origins
            .borrow()
            .iter()
            .map(|f| f.core.next_deadline())
            .min();
        let wait = next
            .map(|at| Duration::from_nanos((at - now_ns()).max(0) as u64))
            .unwrap_or(IDLE)
            .clamp(Duration::from_millis(10), IDLE);
        futures_lite::future::or(glommio::timer::sleep(wait), hosted.sourcing.wake.wait()).await;
    }
}
