//! A shard: everything one core owns — its client connections and internal
//! clients, its router, its lanes to the other shards. This is the shell around
//! the sans-I/O router: it maps subscriber handles to connections, moves peer
//! messages over the mesh lanes, and holds producers back for slow subscribers.
//! Nothing here is shared mutably with another thread; shards talk only through
//! the mesh.

use std::cell::{Cell, Ref, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use slab::Slab;

use crate::client::{Client, CloseReason};
use crate::connection::Due;
use crate::global::Global;
use crate::info::ServerInfo;
use crate::internal::{InternalClient, InternalReceiver};
use crate::mesh::Lane;
use crate::options::ServerOptions;
use crate::proto;
use crate::router::{
    Batch, Message, PeerId, PeerMsg, Publisher, Routed, Router, RouterIo, SubscriberId,
    Subscription,
};
use crate::signal::Signal;
use crate::snapshot::ConnSnapshot;

pub use crate::accounts::GLOBAL_ACCOUNT;

/// Counters the shell keeps (the router counts messages).
#[derive(Debug, Default)]
pub struct ShardStats {
    pub slow_consumers: Cell<u64>,
    pub stale_connections: Cell<u64>,
    /// Longest gap between two housekeeping ticks seen, in microseconds.
    pub max_loop_lag_us: Cell<u64>,
}

/// A local subscriber: what a `SubscriberId` names.
#[derive(Debug, Clone)]
pub(crate) enum Subscriber {
    Client(Rc<Client>),
    Internal(Rc<InternalClient>),
}

/// Longest a producer is held back for slow subscribers at a time.
const STALL_MAX: std::time::Duration = std::time::Duration::from_millis(1000);
/// A subscriber that completed no write for this long is not waited for.
const STALL_PROGRESS_WINDOW: std::time::Duration = std::time::Duration::from_millis(20);

pub struct Shard {
    pub id: usize,
    pub nshards: usize,
    /// The options snapshot in force; replaced on reload.
    opts: RefCell<Arc<ServerOptions>>,
    /// INFO template with the listen port filled in.
    info: RefCell<ServerInfo>,
    pub global: Arc<Global>,
    router: RefCell<Router>,
    /// Senders to the other shards, by shard index.
    pub(crate) lanes: Vec<Option<Lane>>,
    /// Client connections and internal clients, by subscriber handle.
    subscribers: RefCell<Slab<Subscriber>>,
    pub closed: RefCell<VecDeque<ConnSnapshot>>,
    pub stats: ShardStats,
    next_cid_seq: Cell<u64>,
    barrier_wakers: RefCell<HashMap<u64, Waker>>,
    live: Cell<usize>,
    /// The JetStream streams this shard hosts.
    pub(crate) streams: crate::jetstream::host::Streams,
    /// Subscribers over half their max_pending since the last check: whoever fed
    /// them waits for them before reading more (nats-server stalls producers too).
    stalled: RefCell<Vec<Subscriber>>,
    /// Connections found over max_pending while routing, closed once it is done.
    slow: RefCell<Vec<Rc<Client>>>,
    /// `max_pending` of the options in force, read on every delivery.
    max_pending: Cell<usize>,
    /// Told to enter lame duck mode / to stop (commands; the tick acts on them).
    lame_duck: Cell<bool>,
    stopping: Cell<bool>,
    /// Held until the server opens for clients (JetStream up, as nats-server does
    /// before it accepts); dropping it releases the accept loop.
    clients_gate: RefCell<Option<flume::Sender<()>>>,
    /// Raised when interest may have changed (JetStream push consumers
    /// wait for their deliver subject's), with the epoch they last saw.
    interest_watchers: RefCell<Vec<std::rc::Weak<Signal>>>,
    interest_seen: Cell<u64>,
}

/// The router's view of its shard while it routes.
struct ShardIo<'a> {
    shard: &'a Shard,
    subscribers: Ref<'a, Slab<Subscriber>>,
    max_pending: usize,
}

impl ShardIo<'_> {
    #[inline]
    fn deliver_to_client(
        &self,
        client: &Rc<Client>,
        sub: &Subscription,
        msg: &Message<'_>,
    ) -> Option<usize> {
        if client.is_closing() {
            return None;
        }
        if sub.delivery_filter && client.delivery_denied(msg.subject) {
            return None;
        }
        // The requester's identity stamped on a JetStream API request is for the
        // server's own API, not for clients listening in.
        let unstamped;
        let msg = &if msg.header_len > 0 && crate::router::is_audited_api(msg.subject) {
            let (message, header_len) =
                proto::remove_header(msg.message, msg.header_len, "Nats-Request-Info");
            unstamped = Bytes::from(message);
            Message {
                message: &unstamped,
                owner: &unstamped,
                header_len,
                zeros: proto::SizeZeros::default(),
                ..*msg
            }
        } else {
            *msg
        };
        // Clients that did not ask for headers get the payload alone, with its
        // size as nats-server computes it.
        let (header_len, message, zeros) = if msg.header_len > 0 && !client.headers() {
            (
                0,
                &msg.message[msg.header_len..],
                proto::SizeZeros::default(),
            )
        } else {
            (msg.header_len, msg.message, msg.zeros)
        };
        if !msg.reply.is_empty() {
            client.note_request(msg.reply);
        }
        let pending = client.queue_msg(
            msg.shown_subject(),
            &sub.sid,
            msg.reply,
            header_len,
            message,
            zeros,
        );
        let max_pending = self.max_pending;
        if pending > max_pending {
            if self
                .shard
                .note_slow_consumer(client, CloseReason::SlowConsumerPendingBytes)
            {
                self.shard.slow.borrow_mut().push(client.clone());
            }
        } else if pending > max_pending / 2 {
            if client.mark_stalling() {
                self.shard
                    .stalled
                    .borrow_mut()
                    .push(Subscriber::Client(client.clone()));
            }
        } else if pending < max_pending / 4 {
            client.clear_stall();
        }
        Some(message.len())
    }
}

impl RouterIo for ShardIo<'_> {
    #[inline]
    fn now(&self) -> Instant {
        Instant::now()
    }

    #[inline]
    fn deliver(&mut self, sub: &Subscription, msg: &Message<'_>) -> Option<usize> {
        match self.subscribers.get(sub.owner.0 as usize)? {
            Subscriber::Client(client) => self.deliver_to_client(client, sub, msg),
            Subscriber::Internal(internal) => {
                let n = internal.deliver(sub, msg)?;
                if internal.mark_stalling() {
                    self.shard
                        .stalled
                        .borrow_mut()
                        .push(Subscriber::Internal(internal.clone()));
                }
                Some(n)
            }
        }
    }

    fn unsubscribed(&mut self, sub: &Rc<Subscription>) {
        match self.subscribers.get(sub.owner.0 as usize) {
            Some(Subscriber::Client(c)) => c.forget_sub(&sub.sid),
            Some(Subscriber::Internal(i)) => i.forget(&sub.sid),
            None => {}
        }
    }

    #[inline]
    fn send(&mut self, peer: PeerId, msg: PeerMsg) {
        if let Some(Some(lane)) = self.shard.lanes.get(peer.index()) {
            lane.push(msg);
        }
    }

    fn barrier_done(&mut self, id: u64) {
        if let Some(waker) = self.shard.barrier_wakers.borrow_mut().remove(&id) {
            waker.wake();
        }
    }
}

/// One message an internal client publishes (see [`Shard::internal_deliver`]).
pub struct InternalDelivery<'a> {
    pub subject: &'a [u8],
    /// Empty: shown as `subject`.
    pub deliver_as: &'a [u8],
    pub reply: &'a [u8],
    pub header_len: usize,
    /// Headers and payload.
    pub message: &'a [u8],
    pub owner: &'a Bytes,
}

impl Shard {
    pub(crate) fn new(
        id: usize,
        opts: Arc<ServerOptions>,
        info: ServerInfo,
        global: Arc<Global>,
        lanes: Vec<Option<Lane>>,
    ) -> Self {
        let nshards = opts.shards;
        let peers = (0..nshards)
            .filter(|&p| p != id)
            .map(|p| PeerId(p as u16))
            .collect();
        let router = Router::new(
            PeerId(id as u16),
            peers,
            opts.accounts.clone(),
            info.server_name.clone(),
            rand::random(),
        );
        let opts_max_pending = opts.max_pending;
        Shard {
            id,
            nshards,
            opts: RefCell::new(opts),
            info: RefCell::new(info),
            global,
            router: RefCell::new(router),
            lanes,
            subscribers: RefCell::new(Slab::new()),
            closed: RefCell::new(VecDeque::new()),
            stats: ShardStats::default(),
            next_cid_seq: Cell::new(1),
            barrier_wakers: RefCell::default(),
            live: Cell::new(0),
            streams: Default::default(),
            stalled: RefCell::new(Vec::new()),
            slow: RefCell::new(Vec::new()),
            max_pending: Cell::new(opts_max_pending),
            lame_duck: Cell::new(false),
            stopping: Cell::new(false),
            clients_gate: RefCell::new(None),
            interest_watchers: RefCell::default(),
            interest_seen: Cell::new(0),
        }
    }

    /// Runs `f` on the router with this shard as its I/O, then closes the
    /// connections it found too slow.
    #[inline]
    fn with_router<R>(&self, f: impl FnOnce(&mut Router, &mut ShardIo<'_>) -> R) -> R {
        let result = {
            let mut router = self.router.borrow_mut();
            let mut io = ShardIo {
                shard: self,
                subscribers: self.subscribers.borrow(),
                max_pending: self.max_pending.get(),
            };
            let result = f(&mut router, &mut io);
            let epoch = router.interest_epoch();
            if epoch != self.interest_seen.get() {
                self.interest_seen.set(epoch);
                self.tell_interest_watchers();
            }
            result
        };
        if !self.slow.borrow().is_empty() {
            let slow = std::mem::take(&mut *self.slow.borrow_mut());
            for client in slow {
                self.close_client(&client, CloseReason::SlowConsumerPendingBytes);
            }
        }
        result
    }

    fn tell_interest_watchers(&self) {
        let mut watchers = self.interest_watchers.borrow_mut();
        if watchers.is_empty() {
            return;
        }
        watchers.retain(|w| match w.upgrade() {
            Some(signal) => {
                signal.raise();
                true
            }
            None => false,
        });
    }

    /// Raises `signal` whenever interest on this shard may have changed, for
    /// as long as the signal lives.
    pub fn watch_interest(&self, signal: &Rc<Signal>) {
        self.interest_watchers
            .borrow_mut()
            .push(Rc::downgrade(signal));
    }

    /// Whether a message on `subject` in `account` would reach anyone now
    /// (see [`Router::has_interest`]).
    pub fn has_interest(&self, account: u32, subject: &[u8], group: Option<&[u8]>) -> bool {
        self.router
            .borrow_mut()
            .has_interest(account, subject, group)
    }

    /// The router, for reading (monitoring).
    pub fn router(&self) -> Ref<'_, Router> {
        self.router.borrow()
    }

    /// An account's name, empty for an unknown index.
    pub fn account_name(&self, index: u32) -> String {
        self.router.borrow().account_name(index).to_string()
    }

    /// The options in force.
    pub fn opts(&self) -> Ref<'_, Arc<ServerOptions>> {
        self.opts.borrow()
    }

    /// A copy of the INFO template.
    pub fn info(&self) -> ServerInfo {
        self.info.borrow().clone()
    }

    /// The accept loop waits on the receiver until [`Shard::open_for_clients`].
    pub(crate) fn close_for_clients(&self) -> flume::Receiver<()> {
        let (tx, rx) = flume::bounded(1);
        *self.clients_gate.borrow_mut() = Some(tx);
        rx
    }

    pub(crate) fn open_for_clients(&self) {
        self.clients_gate.borrow_mut().take();
    }

    pub(crate) fn enter_lame_duck(&self) {
        self.lame_duck.set(true);
    }

    pub(crate) fn in_lame_duck(&self) -> bool {
        self.lame_duck.get()
    }

    pub(crate) fn stop(&self) {
        self.stopping.set(true);
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.get()
    }

    /// Catches up with a reload another shard applied first (its messages name
    /// accounts this one does not have yet).
    fn catch_up_options(&self) {
        let latest = self.global.latest_options();
        if let Some(opts) = latest {
            if !Arc::ptr_eq(&opts, &self.opts.borrow()) {
                self.apply_options(opts);
            }
        }
    }

    /// Takes a reloaded configuration: accounts, imports, INFO, and the
    /// credentials and permissions of every connection.
    pub(crate) fn apply_options(&self, opts: Arc<ServerOptions>) {
        if Arc::ptr_eq(&opts, &self.opts.borrow()) {
            return;
        }
        let port = self.info.borrow().port;
        let info = ServerInfo::from_options(&opts, port);
        {
            let mut router = self.router.borrow_mut();
            router.set_server_name(info.server_name.clone());
            if self.opts.borrow().accounts != opts.accounts {
                router.set_accounts(opts.accounts.clone());
            }
        }
        self.tell_interest_watchers();
        *self.info.borrow_mut() = info;
        self.max_pending.set(opts.max_pending);
        let old = std::mem::replace(&mut *self.opts.borrow_mut(), opts.clone());
        if old.auth != opts.auth {
            // Connections whose credentials the new configuration no longer accepts go.
            for client in self.clients() {
                let standing = match client.authenticated_as() {
                    Some(who) if opts.auth.still_allows(&who, &old.auth) => {
                        opts.auth.standing(&who)
                    }
                    Some(_) => None,
                    None if !opts.auth.required() => continue,
                    None => None,
                };
                match standing {
                    Some(s) if s.account == client.account() => {
                        if s.permissions != client.permissions() {
                            self.apply_permissions(&client, s.permissions);
                        }
                    }
                    _ => {
                        client.queue_err("Authorization Violation");
                        self.close_client(&client, CloseReason::AuthenticationViolation);
                    }
                }
            }
        }
    }

    /// Gives a connection new permissions (a reload) and drops the subscriptions they
    /// no longer allow, telling the client as nats-server does.
    fn apply_permissions(
        &self,
        client: &Rc<Client>,
        permissions: Option<Arc<crate::permissions::Permissions>>,
    ) {
        client.set_permissions(permissions.clone());
        let Some(perms) = permissions else {
            return;
        };
        let who = client
            .authenticated_as()
            .map_or_else(|| "User \"N/A\"".to_string(), |w| w.describe());
        for sub in client.subscriptions() {
            if perms.can_subscribe(&sub.subject, sub.queue.as_deref()) {
                continue;
            }
            client.forget_sub(&sub.sid);
            self.remove_subscription(client.account(), &sub);
            let subject = String::from_utf8_lossy(&sub.subject);
            let sid = String::from_utf8_lossy(&sub.sid);
            match sub.queue.as_deref().map(String::from_utf8_lossy) {
                Some(queue) => {
                    client.queue_err(&format!(
                        "Permissions Violation for Subscription to {subject:?} using queue {queue:?} (sid {sid:?})"
                    ));
                    tracing::info!(
                        "Removed sub {subject:?} using queue {queue:?} (sid {sid:?}) for {who} - not authorized"
                    );
                }
                None => {
                    client.queue_err(&format!(
                        "Permissions Violation for Subscription to {subject:?} (sid {sid:?})"
                    ));
                    tracing::info!(
                        "Removed sub {subject:?} (sid {sid:?}) for {who} - not authorized"
                    );
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

    /// The client connections of this shard.
    pub fn clients(&self) -> Vec<Rc<Client>> {
        self.subscribers
            .borrow()
            .iter()
            .filter_map(|(_, s)| match s {
                Subscriber::Client(c) => Some(c.clone()),
                Subscriber::Internal(_) => None,
            })
            .collect()
    }

    pub fn client_count(&self) -> usize {
        self.subscribers
            .borrow()
            .iter()
            .filter(|(_, s)| matches!(s, Subscriber::Client(_)))
            .count()
    }

    // -----------------------------------------------------------------------------
    // Subscriptions and publishing

    /// Registers `sub` in the index. Returns true when the other shards were told
    /// (the connection then owes a barrier before its next PONG).
    pub(crate) fn add_subscription(&self, account: u32, sub: Rc<Subscription>) -> bool {
        self.with_router(|r, io| r.subscribe(io, account, sub))
    }

    /// Removes `sub` from the index; same return value as `add_subscription`.
    pub(crate) fn remove_subscription(&self, account: u32, sub: &Rc<Subscription>) -> bool {
        self.with_router(|r, io| r.unsubscribe(io, account, sub))
    }

    /// Counts a message a client published that permissions then refused
    /// (nats-server counts those too; `publish` counts the others).
    pub(crate) fn note_received(&self, account: u32, bytes: usize) {
        self.router.borrow_mut().note_received(account, bytes);
    }

    /// Counts and routes a message published by a local client. `frame` is the
    /// read buffer the slices point into, so other shards get the payload without
    /// a copy.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(crate) fn publish(
        &self,
        publisher: &Client,
        account: u32,
        subject: &[u8],
        reply: &[u8],
        (header_len, zeros): (usize, proto::SizeZeros),
        message: &[u8],
        frame: &Bytes,
        no_responders: bool,
    ) -> Routed {
        let msg = Message {
            subject,
            deliver_as: b"",
            reply,
            header_len,
            message,
            owner: frame,
            zeros,
        };
        let describe = || publisher.requester_info();
        let from = Publisher {
            id: Some(publisher.subscriber_id()),
            echo: publisher.echo(),
            requester: Some(&describe),
            no_responders,
        };
        self.with_router(|r, io| {
            r.note_received(account, message.len());
            r.publish(io, from, account, msg)
        })
    }

    /// Counts and logs a slow consumer and starts closing it; false if it already
    /// was closing. The caller finishes the close (`close_client`).
    fn note_slow_consumer(&self, client: &Client, reason: CloseReason) -> bool {
        if client.is_closing() {
            return false;
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
        client.begin_close(reason);
        true
    }

    pub(crate) fn slow_consumer(&self, client: &Rc<Client>, reason: CloseReason) {
        if self.note_slow_consumer(client, reason) {
            self.close_client(client, reason);
        }
    }

    // -----------------------------------------------------------------------------
    // Internal clients

    /// Adds an internal client in `account`; it lives until `remove_internal`.
    pub fn add_internal(&self, account: u32) -> (SubscriberId, InternalReceiver) {
        let mut subscribers = self.subscribers.borrow_mut();
        let entry = subscribers.vacant_entry();
        let id = SubscriberId(entry.key() as u32);
        let (client, receiver) = InternalClient::new(id, account);
        entry.insert(Subscriber::Internal(Rc::new(client)));
        (id, receiver)
    }

    fn internal(&self, id: SubscriberId) -> Option<Rc<InternalClient>> {
        match self.subscribers.borrow().get(id.0 as usize) {
            Some(Subscriber::Internal(i)) => Some(i.clone()),
            _ => None,
        }
    }

    /// Subscribes an internal client; the sid its messages will carry. `None` for
    /// an unknown client or an invalid subject.
    pub fn internal_subscribe(
        &self,
        id: SubscriberId,
        subject: &[u8],
        queue: Option<&[u8]>,
    ) -> Option<Bytes> {
        let internal = self.internal(id)?;
        if !crate::subject::is_valid_subscription_subject(subject) {
            return None;
        }
        let sub = internal.new_subscription(
            Bytes::copy_from_slice(subject),
            queue.map(Bytes::copy_from_slice),
        );
        let sid = sub.sid.clone();
        self.add_subscription(internal.account, sub);
        Some(sid)
    }

    pub fn internal_unsubscribe(&self, id: SubscriberId, sid: &[u8]) {
        let Some(internal) = self.internal(id) else {
            return;
        };
        if let Some(sub) = internal.subscription(sid) {
            internal.forget(sid);
            self.remove_subscription(internal.account, &sub);
        }
    }

    /// Publishes from inside the server: routed, imported and answered with
    /// no-responders like a client's publish. `from` is the internal client whose
    /// subscriptions may get the no-responders status (and its own messages).
    /// The `max_pending` in force: also the most a direct get sends at once.
    pub fn max_pending(&self) -> usize {
        self.max_pending.get()
    }

    pub fn internal_publish(
        &self,
        from: Option<SubscriberId>,
        account: u32,
        subject: &[u8],
        reply: &[u8],
        header_len: usize,
        message: &Bytes,
    ) -> Routed {
        self.internal_deliver(
            from,
            account,
            InternalDelivery {
                subject,
                deliver_as: b"",
                reply,
                header_len,
                message,
                owner: message,
            },
        )
    }

    /// Publishes a message routed by one subject and shown as another (a
    /// JetStream consumer's delivery). Parts that lie in `owner` cross shards
    /// without a copy.
    pub fn internal_deliver(
        &self,
        from: Option<SubscriberId>,
        account: u32,
        d: InternalDelivery<'_>,
    ) -> Routed {
        let InternalDelivery {
            subject,
            deliver_as,
            reply,
            header_len,
            message,
            owner,
        } = d;
        if header_len > message.len() || !crate::subject::is_valid_literal_subject(subject) {
            return Routed::default();
        }
        let msg = Message {
            subject,
            deliver_as,
            reply,
            header_len,
            message,
            owner,
            zeros: proto::SizeZeros::default(),
        };
        // As for a client that asked for it: a request with headers support.
        let publisher = Publisher {
            no_responders: header_len > 0,
            ..Publisher::internal(from)
        };
        self.with_router(|r, io| {
            r.note_received(account, message.len());
            r.publish(io, publisher, account, msg)
        })
    }

    /// Removes an internal client and its subscriptions.
    pub fn remove_internal(&self, id: SubscriberId) {
        let Some(internal) = self.internal(id) else {
            return;
        };
        for sub in internal.take_subs() {
            self.remove_subscription(internal.account, &sub);
        }
        self.subscribers.borrow_mut().try_remove(id.0 as usize);
    }

    /// The sids of an internal client's subscriptions.
    pub fn internal_sids(&self, id: SubscriberId) -> Vec<Bytes> {
        self.internal(id).map_or_else(Vec::new, |i| i.sids())
    }

    /// Messages an internal client's full queue made it drop.
    pub fn internal_dropped(&self, id: SubscriberId) -> u64 {
        self.internal(id).map_or(0, |i| i.dropped())
    }

    // -----------------------------------------------------------------------------
    // Connection lifecycle

    /// Registers a new connection. One that must authenticate joins its account
    /// at CONNECT (`bind_account`); the others are in the global account now.
    pub(crate) fn register_client(&self, client: Rc<Client>) {
        if !client.awaiting_auth() {
            self.enter_account(&client, client.account());
        }
        let mut subscribers = self.subscribers.borrow_mut();
        let entry = subscribers.vacant_entry();
        client.set_subscriber_id(SubscriberId(entry.key() as u32));
        entry.insert(Subscriber::Client(client));
    }

    fn enter_account(&self, client: &Client, account: u32) {
        if let Some(acc) = self.router.borrow_mut().account_mut(account) {
            acc.connections += 1;
        }
        if let Some(n) = self.global.account_counters(account) {
            n.connections.fetch_add(1, Ordering::Relaxed);
            n.total.fetch_add(1, Ordering::Relaxed);
        }
        client.set_account(account, true);
    }

    fn leave_account(&self, client: &Client) {
        if !client.in_account() {
            return;
        }
        let account = client.account();
        client.set_account(account, false);
        if let Some(acc) = self.router.borrow_mut().account_mut(account) {
            acc.connections = acc.connections.saturating_sub(1);
        }
        if let Some(n) = self.global.account_counters(account) {
            n.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Moves an authenticated connection into its account. Fails, leaving it where it
    /// was, when the account is at its connection limit.
    pub(crate) fn bind_account(&self, client: &Client, account: u32) -> Result<(), ()> {
        if client.in_account() && account == client.account() {
            return Ok(());
        }
        let limit = self
            .opts()
            .accounts
            .list
            .get(account as usize)
            .and_then(|a| a.limits.max_connections);
        if let (Some(limit), Some(n)) = (limit, self.global.account_counters(account)) {
            if n.connections.load(Ordering::Relaxed) >= limit {
                return Err(());
            }
        }
        self.leave_account(client);
        self.enter_account(client, account);
        Ok(())
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
            self.remove_subscription(client.account(), &sub);
        }
        let slot = client.subscriber_id().0 as usize;
        let registered = {
            let mut subscribers = self.subscribers.borrow_mut();
            let ours = matches!(subscribers.get(slot), Some(Subscriber::Client(c)) if Rc::ptr_eq(c, client));
            if ours {
                subscribers.remove(slot);
            }
            ours
        };
        if registered {
            self.global.connections.fetch_sub(1, Ordering::Relaxed);
            self.leave_account(client);
        }
        tracing::debug!(
            "{} - Client connection closed: {}",
            client.log_prefix_short(),
            reason
        );
        let record = client.record(
            (self.id, self.account_name(client.account())),
            Some(reason),
            false,
        );
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
        for subscriber in stalled {
            match subscriber {
                Subscriber::Client(client) => wait_for_client(&client, low_water, deadline).await,
                Subscriber::Internal(internal) => wait_for_internal(&internal, deadline).await,
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
        let Some(id) = self.with_router(|r, io| r.begin_barrier(io)) else {
            return;
        };
        self.flush_lanes().await;
        std::future::poll_fn(|cx| {
            if self.router.borrow().barrier_pending(id) {
                self.barrier_wakers
                    .borrow_mut()
                    .insert(id, cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }

    /// Applies one batch received from shard `from`.
    pub(crate) fn handle_batch(&self, from: usize, batch: Batch) {
        // Another shard already runs with accounts a reload added: catch up.
        let behind = {
            let router = self.router.borrow();
            batch.iter().any(|m| router.needs_accounts_for(m))
        };
        if behind {
            self.catch_up_options();
        }
        self.with_router(|r, io| r.handle_batch(io, PeerId(from as u16), batch));
    }

    // -----------------------------------------------------------------------------
    // Housekeeping

    /// Server PINGs, stale connections and write deadlines; run from the tick.
    pub(crate) fn sweep_clients(&self, now: Instant) {
        self.with_router(|r, io| r.expire_responses(io, now));
        for client in self.clients() {
            let (interval, max) = (self.opts().ping_interval, self.opts().ping_max);
            let due = client.handle_timeout(now, interval, max);
            // The client was already told why (the connection sent it).
            if due == Some(Due::AuthTimeout) {
                self.close_client(&client, CloseReason::AuthenticationTimeout);
                continue;
            }
            let stuck = client
                .write_started()
                .is_some_and(|started| now.duration_since(started) > self.opts().write_deadline);
            if stuck {
                self.slow_consumer(&client, CloseReason::SlowConsumerWriteDeadline);
                continue;
            }
            if due == Some(Due::Stale) {
                self.stats
                    .stale_connections
                    .set(self.stats.stale_connections.get() + 1);
                tracing::debug!(
                    "{} - Stale Client Connection - Closing",
                    client.log_prefix()
                );
                self.close_client(&client, CloseReason::StaleConnection);
            }
        }
    }

    /// Tells every client that the server is in lame duck mode.
    pub(crate) fn announce_lame_duck(&self) {
        let mut info = self.info();
        info.ldm = true;
        for client in self.clients() {
            client.queue_bytes(&client.info_line(&info));
        }
    }

    /// Closes up to `n` connections (lame duck mode's gradual close).
    pub(crate) fn close_some(&self, n: usize, reason: CloseReason) {
        for client in self.clients().into_iter().take(n) {
            self.close_client(&client, reason);
        }
    }

    /// Closes every connection for shutdown.
    pub(crate) fn close_all(&self, reason: CloseReason) {
        for client in self.clients() {
            self.close_client(&client, reason);
        }
    }
}

/// Waits for a client's pending output to drain to `low_water`, while it makes
/// progress, until `deadline`.
async fn wait_for_client(client: &Client, low_water: usize, deadline: Instant) {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            client.clear_stall();
            return;
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
            return;
        }
        if !client.progressed_within(STALL_PROGRESS_WINDOW) {
            // Stuck: stays marked, so nobody waits for it again.
            return;
        }
    }
}

/// Waits for an internal client's reader to take its queue down to a quarter,
/// while it makes progress, until `deadline`.
async fn wait_for_internal(internal: &InternalClient, deadline: Instant) {
    const POLL: std::time::Duration = std::time::Duration::from_millis(1);
    let low_water = crate::internal::INTERNAL_QUEUE / 4;
    let mut last = (internal.queued(), Instant::now());
    loop {
        let queued = internal.queued();
        if queued <= low_water || internal.is_abandoned() || Instant::now() >= deadline {
            internal.clear_stall();
            return;
        }
        if queued < last.0 {
            last = (queued, Instant::now());
        } else if last.1.elapsed() > STALL_PROGRESS_WINDOW {
            return;
        }
        glommio::timer::sleep(POLL).await;
    }
}
