//! A shard: everything one core owns — its client connections, its subscription
//! index with the replica of the other shards' interest, its lanes to the other
//! shards — and the routing of messages through them. Nothing here is shared
//! mutably with another thread; shards talk only through the mesh.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::client::{Client, CloseReason};
use crate::info::ServerInfo;
use crate::mesh::{Lane, MeshMsg};
use crate::options::ServerOptions;
use crate::proto;
use crate::sublist::{Matches, Sublist};

/// Process-wide state shared by all shards. Touched at connect, close and
/// shutdown only — never per message.
#[derive(Debug, Default)]
pub struct Global {
    pub shutdown: AtomicBool,
    /// Lame duck mode: stop accepting, tell clients, close them gradually.
    pub lame_duck: AtomicBool,
    /// Options published by a reload; shards pick them up on their next tick.
    pub options: std::sync::Mutex<Option<Arc<ServerOptions>>>,
    pub options_generation: AtomicU64,
    pub connections: AtomicUsize,
    pub total_connections: AtomicU64,
    pub slow_consumers: AtomicU64,
}

impl Global {
    /// Publishes a new options snapshot (a reload); every shard applies it on its
    /// next tick. Options that cannot change at runtime are the caller's to refuse.
    pub fn publish_options(&self, opts: ServerOptions) {
        if let Ok(mut current) = self.options.lock() {
            *current = Some(Arc::new(opts));
        }
        self.options_generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// One client subscription.
#[derive(Debug)]
pub struct Subscription {
    pub client: Rc<Client>,
    pub sid: Bytes,
    pub subject: Bytes,
    pub queue: Option<Bytes>,
    /// Auto-unsubscribe after this many deliveries; 0 = never.
    pub max: Cell<u64>,
    pub delivered: Cell<u64>,
}

/// Another shard's interest in a subject: it has `members` local subscriptions on
/// it (queue members are counted so queue groups can be balanced across shards).
#[derive(Debug)]
pub struct RemoteInterest {
    pub shard: usize,
    pub members: Cell<u32>,
}

/// An entry of a shard's subscription index.
#[derive(Debug, Clone)]
pub enum Interest {
    Local(Rc<Subscription>),
    Remote(Rc<RemoteInterest>),
}

impl PartialEq for Interest {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Interest::Local(a), Interest::Local(b)) => Rc::ptr_eq(a, b),
            (Interest::Remote(a), Interest::Remote(b)) => Rc::ptr_eq(a, b),
            _ => false,
        }
    }
}

type InterestKey = (Bytes, Option<Bytes>);

/// An account as one shard sees it: its own subject namespace.
#[derive(Debug)]
pub struct Account {
    pub name: String,
    pub sublist: RefCell<Sublist<Interest>>,
    /// Local subscriptions per (subject, queue), to tell the other shards.
    local_counts: RefCell<HashMap<InterestKey, u32, ahash::RandomState>>,
    /// This shard's replica of the other shards' interest.
    remote: RefCell<HashMap<(InterestKey, usize), Rc<RemoteInterest>, ahash::RandomState>>,
}

impl Account {
    pub fn new(name: &str) -> Self {
        Account {
            name: name.to_string(),
            sublist: RefCell::new(Sublist::new()),
            local_counts: RefCell::default(),
            remote: RefCell::default(),
        }
    }
}

/// Counters kept by one shard; gathered on request for monitoring.
#[derive(Debug, Default)]
pub struct ShardStats {
    pub in_msgs: Cell<u64>,
    pub in_bytes: Cell<u64>,
    pub out_msgs: Cell<u64>,
    pub out_bytes: Cell<u64>,
    pub slow_consumers: Cell<u64>,
    pub stale_connections: Cell<u64>,
    /// Longest gap between two housekeeping ticks seen, in microseconds.
    pub max_loop_lag_us: Cell<u64>,
}

/// What monitoring shows of a closed connection.
#[derive(Debug, Clone)]
pub struct ClosedClient {
    pub cid: u64,
    pub addr: SocketAddr,
    pub name: String,
    pub lang: String,
    pub version: String,
    pub start: SystemTime,
    pub stop: SystemTime,
    pub reason: CloseReason,
    pub in_msgs: u64,
    pub out_msgs: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
}

struct BarrierWait {
    remaining: usize,
    waker: Option<Waker>,
}

/// Where a published message went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Routed {
    pub local: bool,
    pub remote: bool,
}

impl Routed {
    pub fn any(self) -> bool {
        self.local || self.remote
    }
}

/// Which queue groups a remote shard must serve for one message.
struct RemoteTarget {
    plain: bool,
    queues: Vec<Bytes>,
}

pub struct Shard {
    pub id: usize,
    pub nshards: usize,
    /// The options snapshot in force; replaced on reload (see `refresh_options`).
    opts: RefCell<Arc<ServerOptions>>,
    options_generation: Cell<u64>,
    /// INFO template with the listen port filled in.
    info: RefCell<ServerInfo>,
    pub global: Arc<Global>,
    pub accounts: Vec<Account>,
    pub(crate) lanes: Vec<Option<Lane>>,
    pub(crate) clients: RefCell<HashMap<u64, Rc<Client>, ahash::RandomState>>,
    pub closed: RefCell<VecDeque<ClosedClient>>,
    pub stats: ShardStats,
    next_cid_seq: Cell<u64>,
    barriers: RefCell<HashMap<u64, BarrierWait>>,
    next_barrier: Cell<u64>,
    rng: RefCell<SmallRng>,
    /// Per-message scratch: remote shards that must get the message being routed.
    targets: RefCell<Vec<Option<RemoteTarget>>>,
    live: Cell<usize>,
    /// Subscribers over half their max_pending since the last check: whoever fed
    /// them waits for them before reading more (nats-server stalls producers too).
    stalled: RefCell<Vec<Rc<Client>>>,
}

/// Longest a producer is held back for slow subscribers at a time.
const STALL_MAX: std::time::Duration = std::time::Duration::from_millis(1000);
/// A subscriber that completed no write for this long is not waited for.
const STALL_PROGRESS_WINDOW: std::time::Duration = std::time::Duration::from_millis(20);

/// The global account every client lands in until accounts are configured.
pub const GLOBAL_ACCOUNT: u32 = 0;

impl Shard {
    pub(crate) fn new(
        id: usize,
        opts: Arc<ServerOptions>,
        info: ServerInfo,
        global: Arc<Global>,
        lanes: Vec<Option<Lane>>,
    ) -> Self {
        let nshards = opts.shards;
        Shard {
            id,
            nshards,
            opts: RefCell::new(opts),
            options_generation: Cell::new(0),
            info: RefCell::new(info),
            global,
            accounts: vec![Account::new("$G")],
            lanes,
            clients: RefCell::default(),
            closed: RefCell::new(VecDeque::new()),
            stats: ShardStats::default(),
            next_cid_seq: Cell::new(1),
            barriers: RefCell::default(),
            next_barrier: Cell::new(1),
            rng: RefCell::new(SmallRng::from_entropy()),
            targets: RefCell::new((0..nshards).map(|_| None).collect()),
            live: Cell::new(0),
            stalled: RefCell::new(Vec::new()),
        }
    }

    /// The options in force.
    pub fn opts(&self) -> std::cell::Ref<'_, Arc<ServerOptions>> {
        self.opts.borrow()
    }

    /// A copy of the INFO template.
    pub fn info(&self) -> ServerInfo {
        self.info.borrow().clone()
    }

    /// Picks up options published by a reload (checked from the tick).
    pub(crate) fn refresh_options(&self) {
        let generation = self.global.options_generation.load(Ordering::Acquire);
        if generation == self.options_generation.get() {
            return;
        }
        let Ok(current) = self.global.options.lock() else {
            return;
        };
        let Some(opts) = current.clone() else {
            return;
        };
        drop(current);
        let port = self.info.borrow().port;
        *self.info.borrow_mut() = ServerInfo::from_options(&opts, port);
        let old = std::mem::replace(&mut *self.opts.borrow_mut(), opts.clone());
        self.options_generation.set(generation);
        if old.auth != opts.auth {
            // Connections whose credentials the new configuration no longer accepts go.
            let clients: Vec<Rc<Client>> = self.clients.borrow().values().cloned().collect();
            for client in clients {
                let allowed = match client.authenticated_as() {
                    Some(who) => opts.auth.still_allows(&who, &old.auth),
                    None => !opts.auth.required(),
                };
                if !allowed {
                    client.queue_err("Authorization Violation");
                    self.close_client(&client, CloseReason::AuthenticationViolation);
                }
            }
        }
    }

    /// Connection ids are unique across shards without coordination:
    /// `cid % shards` is the shard that owns the connection.
    pub(crate) fn next_cid(&self) -> u64 {
        let seq = self.next_cid_seq.get();
        self.next_cid_seq.set(seq + 1);
        seq * self.nshards as u64 + self.id as u64
    }

    pub fn client_count(&self) -> usize {
        self.clients.borrow().len()
    }

    // -----------------------------------------------------------------------------
    // Subscriptions and interest

    /// Registers `sub` in the index. Returns true when the other shards were told
    /// (the connection then owes a barrier before its next PONG).
    pub(crate) fn add_subscription(&self, account: u32, sub: Rc<Subscription>) -> bool {
        let acc = &self.accounts[account as usize];
        acc.sublist.borrow_mut().insert(
            &sub.subject,
            sub.queue.as_deref(),
            Interest::Local(sub.clone()),
        );
        let key = (sub.subject.clone(), sub.queue.clone());
        let count = {
            let mut counts = acc.local_counts.borrow_mut();
            let c = counts.entry(key).or_insert(0);
            *c += 1;
            *c
        };
        // Plain interest only matters when it appears; queue members are weights.
        if sub.queue.is_some() || count == 1 {
            self.broadcast_interest(account, &sub.subject, sub.queue.as_ref(), count)
        } else {
            false
        }
    }

    /// Removes `sub` from the index; same return value as `add_subscription`.
    pub(crate) fn remove_subscription(&self, account: u32, sub: &Rc<Subscription>) -> bool {
        let acc = &self.accounts[account as usize];
        let removed = acc.sublist.borrow_mut().remove(
            &sub.subject,
            sub.queue.as_deref(),
            &Interest::Local(sub.clone()),
        );
        if !removed {
            return false;
        }
        let key = (sub.subject.clone(), sub.queue.clone());
        let count = {
            let mut counts = acc.local_counts.borrow_mut();
            match counts.get_mut(&key) {
                Some(c) if *c > 1 => {
                    *c -= 1;
                    *c
                }
                _ => {
                    counts.remove(&key);
                    0
                }
            }
        };
        if sub.queue.is_some() || count == 0 {
            self.broadcast_interest(account, &sub.subject, sub.queue.as_ref(), count)
        } else {
            false
        }
    }

    fn broadcast_interest(
        &self,
        account: u32,
        subject: &Bytes,
        queue: Option<&Bytes>,
        count: u32,
    ) -> bool {
        let mut sent = false;
        for lane in self.lanes.iter().flatten() {
            lane.push(MeshMsg::Interest {
                account,
                subject: subject.clone(),
                queue: queue.cloned(),
                count,
            });
            sent = true;
        }
        sent
    }

    fn apply_remote_interest(
        &self,
        from: usize,
        account: u32,
        subject: Bytes,
        queue: Option<Bytes>,
        count: u32,
    ) {
        let Some(acc) = self.accounts.get(account as usize) else {
            return;
        };
        let key = ((subject, queue), from);
        let mut remote = acc.remote.borrow_mut();
        if count == 0 {
            if let Some(ri) = remote.remove(&key) {
                let ((subject, queue), _) = &key;
                acc.sublist
                    .borrow_mut()
                    .remove(subject, queue.as_deref(), &Interest::Remote(ri));
            }
            return;
        }
        match remote.get(&key) {
            Some(ri) => ri.members.set(count),
            None => {
                let ri = Rc::new(RemoteInterest {
                    shard: from,
                    members: Cell::new(count),
                });
                let ((subject, queue), _) = &key;
                acc.sublist.borrow_mut().insert(
                    subject,
                    queue.as_deref(),
                    Interest::Remote(ri.clone()),
                );
                remote.insert(key, ri);
            }
        }
    }

    // -----------------------------------------------------------------------------
    // Routing

    fn matches(&self, account: u32, subject: &[u8]) -> Option<Rc<Matches<Interest>>> {
        // A subject with an empty token matches nothing (nats-server does the same).
        if subject.is_empty()
            || subject[0] == b'.'
            || subject[subject.len() - 1] == b'.'
            || memchr::memmem::find(subject, b"..").is_some()
        {
            return None;
        }
        let acc = self.accounts.get(account as usize)?;
        let m = acc.sublist.borrow_mut().matches(subject);
        Some(m)
    }

    /// Routes a message published by a local client. `frame` is the read buffer the
    /// slices point into, so other shards get the payload without a copy.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn publish(
        &self,
        publisher: &Client,
        account: u32,
        subject: &[u8],
        reply: &[u8],
        header_len: usize,
        message: &[u8],
        frame: &Bytes,
    ) -> Routed {
        let Some(m) = self.matches(account, subject) else {
            return Routed::default();
        };
        let no_echo = !publisher.echo();
        let mut any = false;
        let mut any_remote = false;
        {
            let mut targets = self.targets.borrow_mut();
            for entry in &m.plain {
                match entry {
                    Interest::Local(sub) => {
                        if no_echo && std::ptr::eq(&*sub.client, publisher) {
                            continue;
                        }
                        any = true;
                        self.deliver(sub, subject, reply, header_len, message);
                    }
                    Interest::Remote(ri) => {
                        any_remote = true;
                        targets[ri.shard]
                            .get_or_insert_with(|| RemoteTarget {
                                plain: false,
                                queues: Vec::new(),
                            })
                            .plain = true;
                    }
                }
            }
            for group in &m.queues {
                match self.pick_member(&group.members) {
                    Some(Interest::Local(sub)) => {
                        any = true;
                        self.deliver(sub, subject, reply, header_len, message);
                    }
                    Some(Interest::Remote(ri)) => {
                        any_remote = true;
                        targets[ri.shard]
                            .get_or_insert_with(|| RemoteTarget {
                                plain: false,
                                queues: Vec::new(),
                            })
                            .queues
                            .push(group.name.clone());
                    }
                    None => {}
                }
            }
        }
        if any_remote {
            let subject = frame.slice_ref(subject);
            let reply = if reply.is_empty() {
                Bytes::new()
            } else {
                frame.slice_ref(reply)
            };
            let message = if message.is_empty() {
                Bytes::new()
            } else {
                frame.slice_ref(message)
            };
            let mut targets = self.targets.borrow_mut();
            for (shard, target) in targets.iter_mut().enumerate() {
                let Some(target) = target.take() else {
                    continue;
                };
                if let Some(lane) = &self.lanes[shard] {
                    lane.push(MeshMsg::Deliver {
                        account,
                        subject: subject.clone(),
                        reply: reply.clone(),
                        header_len: header_len as u32,
                        message: message.clone(),
                        plain: target.plain,
                        queues: target.queues,
                    });
                }
            }
        }
        Routed {
            local: any,
            remote: any_remote,
        }
    }

    /// Picks one queue member; local members weigh 1, a remote shard weighs as many
    /// members as it has.
    fn pick_member<'a>(&self, members: &'a [Interest]) -> Option<&'a Interest> {
        let weight = |e: &Interest| match e {
            Interest::Local(sub) if sub.client.is_closing() => 0,
            Interest::Local(_) => 1,
            Interest::Remote(ri) => ri.members.get() as u64,
        };
        let total: u64 = members.iter().map(weight).sum();
        if total == 0 {
            return None;
        }
        let mut pick = self.rng.borrow_mut().gen_range(0..total);
        for e in members {
            let w = weight(e);
            if pick < w {
                return Some(e);
            }
            pick -= w;
        }
        None
    }

    /// Serves a message that another shard routed here.
    #[allow(clippy::too_many_arguments)]
    fn deliver_remote(
        &self,
        account: u32,
        subject: &[u8],
        reply: &[u8],
        header_len: usize,
        message: &[u8],
        plain: bool,
        queues: &[Bytes],
    ) {
        let Some(m) = self.matches(account, subject) else {
            return;
        };
        if plain {
            for entry in &m.plain {
                if let Interest::Local(sub) = entry {
                    self.deliver(sub, subject, reply, header_len, message);
                }
            }
        }
        for name in queues {
            let Some(group) = m.queues.iter().find(|g| g.name == name) else {
                continue;
            };
            let live = |e: &&Interest| matches!(e, Interest::Local(s) if !s.client.is_closing());
            let n = group.members.iter().filter(live).count();
            if n == 0 {
                continue;
            }
            let pick = self.rng.borrow_mut().gen_range(0..n);
            if let Some(Interest::Local(sub)) = group.members.iter().filter(live).nth(pick) {
                self.deliver(sub, subject, reply, header_len, message);
            }
        }
    }

    /// Writes one MSG/HMSG to a local subscriber.
    pub(crate) fn deliver(
        &self,
        sub: &Rc<Subscription>,
        subject: &[u8],
        reply: &[u8],
        header_len: usize,
        message: &[u8],
    ) {
        let client = &sub.client;
        if client.is_closing() {
            return;
        }
        let max = sub.max.get();
        let delivered = sub.delivered.get() + 1;
        if max > 0 && delivered > max {
            return;
        }
        sub.delivered.set(delivered);
        // Clients that did not ask for headers get the payload alone.
        let (header_len, message) = if header_len > 0 && !client.headers() {
            (0, &message[header_len..])
        } else {
            (header_len, message)
        };
        let pending = client.queue_msg(subject, &sub.sid, reply, header_len, message);
        self.stats.out_msgs.set(self.stats.out_msgs.get() + 1);
        self.stats
            .out_bytes
            .set(self.stats.out_bytes.get() + message.len() as u64);
        if max > 0 && delivered >= max {
            client.forget_sub(&sub.sid);
            self.remove_subscription(client.account, sub);
        }
        let max_pending = self.opts().max_pending;
        if pending > max_pending {
            self.slow_consumer(client, CloseReason::SlowConsumerPendingBytes);
        } else if pending > max_pending / 2 {
            if client.mark_stalling() {
                self.stalled.borrow_mut().push(client.clone());
            }
        } else if pending < max_pending / 4 {
            client.clear_stall();
        }
    }

    /// Sends a no-responders status to the requester itself.
    pub(crate) fn no_responders(&self, publisher: &Rc<Client>, subject: &[u8], reply: &[u8]) {
        let Some(m) = self.matches(publisher.account, reply) else {
            return;
        };
        let header = proto::no_responders_header(subject);
        for entry in &m.plain {
            if let Interest::Local(sub) = entry {
                if Rc::ptr_eq(&sub.client, publisher) {
                    self.deliver(sub, reply, b"", header.len(), &header);
                }
            }
        }
    }

    pub(crate) fn slow_consumer(&self, client: &Rc<Client>, reason: CloseReason) {
        if client.is_closing() {
            return;
        }
        self.stats
            .slow_consumers
            .set(self.stats.slow_consumers.get() + 1);
        self.global.slow_consumers.fetch_add(1, Ordering::Relaxed);
        let detail = match reason {
            CloseReason::SlowConsumerWriteDeadline => {
                let (chunks, bytes) = client.pending_chunks();
                format!(
                    "WriteDeadline of {} exceeded with {} chunks of {} total bytes.",
                    crate::format_duration(self.opts().write_deadline),
                    chunks,
                    bytes
                )
            }
            _ => format!("MaxPending of {} Exceeded", self.opts().max_pending),
        };
        tracing::info!(
            "{} - Slow Consumer Detected: {}",
            client.log_prefix(),
            detail
        );
        self.close_client(client, reason);
    }

    // -----------------------------------------------------------------------------
    // Connection lifecycle

    pub(crate) fn register_client(&self, client: Rc<Client>) {
        self.clients.borrow_mut().insert(client.cid, client);
    }

    /// Closes a connection: its subscriptions go, the other shards are told, and
    /// its writer flushes what is pending (unless the reason discards it).
    pub(crate) fn close_client(&self, client: &Rc<Client>, reason: CloseReason) {
        client.begin_close(reason);
        if !client.claim_cleanup() {
            return;
        }
        let reason = client.close_reason().unwrap_or(reason);
        for sub in client.take_subs() {
            self.remove_subscription(client.account, &sub);
        }
        if self.clients.borrow_mut().remove(&client.cid).is_some() {
            self.global.connections.fetch_sub(1, Ordering::Relaxed);
        }
        tracing::debug!(
            "{} - Client connection closed: {}",
            client.log_prefix_short(),
            reason
        );
        let record = client.closed_record(reason);
        let mut closed = self.closed.borrow_mut();
        let keep = (self.opts().max_closed_clients / self.nshards).max(1);
        while closed.len() >= keep {
            closed.pop_front();
        }
        closed.push_back(record);
    }

    // -----------------------------------------------------------------------------
    // Mesh

    /// Sends every open batch. Called after each unit of input is processed.
    pub(crate) async fn flush_lanes(&self) {
        for lane in self.lanes.iter().flatten() {
            lane.flush().await;
        }
    }

    /// Sends what can go without waiting; the rest stays for the next tick.
    pub(crate) fn try_flush_lanes(&self) {
        for lane in self.lanes.iter().flatten() {
            lane.try_flush();
        }
    }

    /// Stalls the caller (a publisher's reader or a mesh receiver) while the
    /// subscribers it pushed over half of max_pending drain to a quarter, as long as
    /// they make progress, for at most STALL_MAX. Not reading is what pushes back:
    /// on the publisher through TCP, on a remote publisher through the full lane.
    /// A subscriber that makes no progress is not waited for again until it drains:
    /// it is left to reach max_pending and be cut off, as nats-server does.
    pub(crate) async fn wait_for_stalled(&self) {
        if self.stalled.borrow().is_empty() {
            return;
        }
        let stalled = std::mem::take(&mut *self.stalled.borrow_mut());
        let low_water = self.opts().max_pending / 4;
        let deadline = Instant::now() + STALL_MAX;
        for client in stalled {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    client.clear_stall();
                    break;
                }
                let step = left.min(STALL_PROGRESS_WINDOW);
                let drained = glommio::timer::timeout(step, async {
                    client.wait_below(low_water).await;
                    Ok(())
                })
                .await
                .is_ok();
                if drained {
                    client.clear_stall();
                    break;
                }
                if !client.progressed_within(STALL_PROGRESS_WINDOW) {
                    // Stuck: stays marked, so nobody waits for it again.
                    break;
                }
            }
        }
    }

    /// Connection tasks still running (their writers may still be flushing).
    pub fn live_connections(&self) -> usize {
        self.live.get()
    }

    pub(crate) fn connection_started(&self) {
        self.live.set(self.live.get() + 1);
    }

    pub(crate) fn connection_ended(&self) {
        self.live.set(self.live.get().saturating_sub(1));
    }

    /// Waits until every other shard has applied everything this shard sent it
    /// before now (the interest barrier).
    pub(crate) async fn barrier(&self) {
        if self.nshards < 2 {
            return;
        }
        let id = self.next_barrier.get();
        self.next_barrier.set(id + 1);
        self.barriers.borrow_mut().insert(
            id,
            BarrierWait {
                remaining: self.nshards - 1,
                waker: None,
            },
        );
        for lane in self.lanes.iter().flatten() {
            lane.push(MeshMsg::Barrier { id });
        }
        self.flush_lanes().await;
        std::future::poll_fn(|cx| {
            let mut barriers = self.barriers.borrow_mut();
            match barriers.get_mut(&id) {
                Some(w) if w.remaining > 0 => {
                    w.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
                _ => {
                    barriers.remove(&id);
                    Poll::Ready(())
                }
            }
        })
        .await
    }

    /// Applies one batch received from shard `from`.
    pub(crate) fn handle_batch(&self, from: usize, batch: Vec<MeshMsg>) {
        for msg in batch {
            match msg {
                MeshMsg::Deliver {
                    account,
                    subject,
                    reply,
                    header_len,
                    message,
                    plain,
                    queues,
                } => self.deliver_remote(
                    account,
                    &subject,
                    &reply,
                    header_len as usize,
                    &message,
                    plain,
                    &queues,
                ),
                MeshMsg::Interest {
                    account,
                    subject,
                    queue,
                    count,
                } => self.apply_remote_interest(from, account, subject, queue, count),
                MeshMsg::Barrier { id } => {
                    if let Some(lane) = &self.lanes[from] {
                        lane.push(MeshMsg::BarrierAck { id });
                    }
                }
                MeshMsg::BarrierAck { id } => {
                    if let Some(w) = self.barriers.borrow_mut().get_mut(&id) {
                        w.remaining = w.remaining.saturating_sub(1);
                        if w.remaining == 0 {
                            if let Some(waker) = w.waker.take() {
                                waker.wake();
                            }
                        }
                    }
                }
            }
        }
    }

    // -----------------------------------------------------------------------------
    // Housekeeping

    /// Server PINGs, stale connections and write deadlines; run from the tick.
    pub(crate) fn sweep_clients(&self, now: Instant) {
        let clients: Vec<Rc<Client>> = self.clients.borrow().values().cloned().collect();
        for client in clients {
            if client.auth_deadline().is_some_and(|d| now >= d) {
                client.queue_err("Authentication Timeout");
                self.close_client(&client, CloseReason::AuthenticationTimeout);
                continue;
            }
            if let Some(started) = client.write_started() {
                if now.duration_since(started) > self.opts().write_deadline {
                    self.slow_consumer(&client, CloseReason::SlowConsumerWriteDeadline);
                    continue;
                }
            }
            if now < client.next_ping_at() {
                continue;
            }
            if client.pings_outstanding() >= self.opts().ping_max {
                client.queue_err("Stale Connection");
                self.stats
                    .stale_connections
                    .set(self.stats.stale_connections.get() + 1);
                tracing::debug!(
                    "{} - Stale Client Connection - Closing",
                    client.log_prefix()
                );
                self.close_client(&client, CloseReason::StaleConnection);
                continue;
            }
            client.send_ping(now + self.opts().ping_interval);
        }
    }

    /// Tells every client that the server is in lame duck mode.
    pub(crate) fn announce_lame_duck(&self) {
        let mut info = self.info();
        info.ldm = true;
        let clients: Vec<Rc<Client>> = self.clients.borrow().values().cloned().collect();
        for client in clients {
            let mut info = info.clone();
            info.client_id = Some(client.cid);
            info.client_ip = Some(client.addr.ip().to_string());
            client.queue_bytes(&info.to_line());
        }
    }

    /// Closes up to `n` connections (lame duck mode's gradual close).
    pub(crate) fn close_some(&self, n: usize, reason: CloseReason) {
        let clients: Vec<Rc<Client>> = self.clients.borrow().values().take(n).cloned().collect();
        for client in clients {
            self.close_client(&client, reason);
        }
    }

    /// Closes every connection for shutdown.
    pub(crate) fn close_all(&self, reason: CloseReason) {
        let clients: Vec<Rc<Client>> = self.clients.borrow().values().cloned().collect();
        for client in clients {
            self.close_client(&client, reason);
        }
    }
}
