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
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::accounts::{ResponseType, SubjectTransform};
use crate::client::{Client, CloseReason};
use crate::info::ServerInfo;
use crate::mesh::{Envelope, Lane, MeshMsg};
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
    /// The subscriber's deny list overlaps this wildcard or queue subscription, so
    /// each delivery is checked against it.
    pub delivery_filter: bool,
}

/// Another shard's interest in a subject: it has `members` local subscriptions on
/// it (queue members are counted so queue groups can be balanced across shards).
#[derive(Debug)]
pub struct RemoteInterest {
    pub shard: usize,
    pub members: Cell<u32>,
}

/// A stream import as the exporting account's index holds it: what matches goes
/// on into `to_account`. Every shard holds the same entries, so the shard where a
/// message is published applies them.
#[derive(Debug)]
pub struct StreamRoute {
    pub to_account: u32,
    pub transform: Option<SubjectTransform>,
}

/// A service import as the importing account's index holds it: requests go to
/// `to_account`, with a route back for the responses.
#[derive(Debug)]
pub struct ServiceRoute {
    /// The importing account, where responses go back to.
    pub importer: u32,
    pub to_account: u32,
    pub transform: Option<SubjectTransform>,
    pub response_type: ResponseType,
    pub response_threshold: std::time::Duration,
    pub share: bool,
}

/// The way back of one request sent through a service import: responses published
/// in the exporting account on `subject` (a `_R_.` subject) reach the requester's
/// reply subject in `to_account`. Lives on the shard that forwarded the request;
/// the other shards see it as that shard's interest.
#[derive(Debug)]
pub struct ResponseRoute {
    pub exporter: u32,
    pub subject: Bytes,
    pub to_account: u32,
    pub reply: Bytes,
    pub singleton: bool,
    pub expires: Instant,
}

/// An entry of a shard's subscription index.
#[derive(Debug, Clone)]
pub enum Interest {
    Local(Rc<Subscription>),
    Remote(Rc<RemoteInterest>),
    Stream(Rc<StreamRoute>),
    Service(Rc<ServiceRoute>),
    Response(Rc<ResponseRoute>),
}

impl PartialEq for Interest {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Interest::Local(a), Interest::Local(b)) => Rc::ptr_eq(a, b),
            (Interest::Remote(a), Interest::Remote(b)) => Rc::ptr_eq(a, b),
            (Interest::Stream(a), Interest::Stream(b)) => Rc::ptr_eq(a, b),
            (Interest::Service(a), Interest::Service(b)) => Rc::ptr_eq(a, b),
            (Interest::Response(a), Interest::Response(b)) => Rc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// A message being routed. Its parts borrow from `owner` where they can, so other
/// shards get them as one shared buffer without a copy.
#[derive(Clone, Copy)]
pub(crate) struct Message<'a> {
    pub subject: &'a [u8],
    pub reply: &'a [u8],
    pub header_len: usize,
    /// Headers and payload.
    pub message: &'a [u8],
    pub owner: &'a Bytes,
    /// The publisher's leading zeros on the sizes, echoed in MSG lines.
    pub zeros: proto::SizeZeros,
}

/// Imports that feed each other are cut off after this many hops.
const MAX_IMPORT_HOPS: u8 = 8;

/// Per-account message counters of one shard (/accstatz).
#[derive(Debug, Default)]
pub struct AccountStats {
    pub received_msgs: Cell<u64>,
    pub received_bytes: Cell<u64>,
    pub sent_msgs: Cell<u64>,
    pub sent_bytes: Cell<u64>,
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
    pub stats: AccountStats,
    /// Connections of this account on this shard.
    pub clients: Cell<usize>,
    /// The import routes this index holds (replaced at reload).
    imports: RefCell<Vec<(Bytes, Interest)>>,
}

impl Account {
    pub fn new(name: &str) -> Self {
        Account {
            name: name.to_string(),
            sublist: RefCell::new(Sublist::new()),
            local_counts: RefCell::default(),
            remote: RefCell::default(),
            stats: AccountStats::default(),
            clients: Cell::new(0),
            imports: RefCell::default(),
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
    pub account: u32,
    pub user: Option<String>,
    pub tls: Option<crate::tls::TlsState>,
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

    fn merge(&mut self, other: Routed) {
        self.local |= other.local;
        self.remote |= other.remote;
    }
}

/// Which queue groups a remote shard must serve for one message.
struct RemoteTarget {
    plain: bool,
    queues: crate::mesh::QueueNames,
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
    /// Indexed as `ServerOptions::accounts`; a reload only appends.
    pub accounts: RefCell<Vec<Rc<Account>>>,
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
    /// Routes back of service-import requests forwarded from this shard, and the
    /// same in the order they were opened (expiry and the cap go oldest first).
    responses: RefCell<HashMap<Bytes, Rc<ResponseRoute>, ahash::RandomState>>,
    response_order: RefCell<VecDeque<Rc<ResponseRoute>>>,
}

/// Open routes back per shard: a client flooding requests that nobody answers
/// cannot grow them without bound; past this the oldest go first.
const MAX_RESPONSE_ROUTES: usize = 100_000;

/// Longest a producer is held back for slow subscribers at a time.
const STALL_MAX: std::time::Duration = std::time::Duration::from_millis(1000);
/// A subscriber that completed no write for this long is not waited for.
const STALL_PROGRESS_WINDOW: std::time::Duration = std::time::Duration::from_millis(20);

pub use crate::accounts::GLOBAL_ACCOUNT;

/// One shard's accounts, with the import routes every shard holds alike.
fn build_accounts(spec: &crate::accounts::Accounts) -> Vec<Rc<Account>> {
    let accounts: Vec<Rc<Account>> = spec
        .list
        .iter()
        .map(|a| Rc::new(Account::new(&a.name)))
        .collect();
    install_imports(&accounts, spec);
    accounts
}

/// Replaces the import routes in every account's index with those of `spec`.
fn install_imports(accounts: &[Rc<Account>], spec: &crate::accounts::Accounts) {
    for acc in accounts {
        let old = std::mem::take(&mut *acc.imports.borrow_mut());
        let mut sublist = acc.sublist.borrow_mut();
        for (subject, route) in old {
            sublist.remove(&subject, None, &route);
        }
    }
    let add = |account: u32, subject: &str, route: Interest| {
        if let Some(acc) = accounts.get(account as usize) {
            let subject = Bytes::copy_from_slice(subject.as_bytes());
            acc.sublist
                .borrow_mut()
                .insert(&subject, None, route.clone());
            acc.imports.borrow_mut().push((subject, route));
        }
    };
    for (importer, a) in spec.list.iter().enumerate() {
        let importer = importer as u32;
        for import in &a.stream_imports {
            let route = Interest::Stream(Rc::new(StreamRoute {
                to_account: importer,
                transform: import.to.clone(),
            }));
            add(import.from, &import.subject, route);
        }
        for import in &a.service_imports {
            let route = Interest::Service(Rc::new(ServiceRoute {
                importer,
                to_account: import.to_account,
                transform: import.transform.clone(),
                response_type: import.response_type,
                response_threshold: import.response_threshold,
                share: import.share,
            }));
            add(importer, &import.local, route);
        }
    }
}

/// A fresh reply subject for a request forwarded through a service import.
fn response_subject(rng: &mut SmallRng) -> Bytes {
    const DIGITS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut s = Vec::with_capacity(4 + 22);
    s.extend_from_slice(b"_R_.");
    for i in 0..21 {
        if i == 10 {
            s.push(b'.');
        }
        s.push(DIGITS[rng.gen_range(0..DIGITS.len())]);
    }
    Bytes::from(s)
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
        let accounts = build_accounts(&opts.accounts);
        Shard {
            id,
            nshards,
            opts: RefCell::new(opts),
            options_generation: Cell::new(0),
            info: RefCell::new(info),
            global,
            accounts: RefCell::new(accounts),
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
            responses: RefCell::default(),
            response_order: RefCell::default(),
        }
    }

    /// An account of this shard by index.
    pub fn account(&self, index: u32) -> Option<Rc<Account>> {
        self.accounts.borrow().get(index as usize).cloned()
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
        if old.accounts != opts.accounts {
            self.apply_accounts(&opts.accounts);
        }
        if old.auth != opts.auth {
            // Connections whose credentials the new configuration no longer accepts go.
            let clients: Vec<Rc<Client>> = self.clients.borrow().values().cloned().collect();
            for client in clients {
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

    /// Takes a reloaded account configuration: accounts only ever get appended (the
    /// control plane keeps indexes stable), and every import route is replaced.
    fn apply_accounts(&self, spec: &crate::accounts::Accounts) {
        {
            let mut accounts = self.accounts.borrow_mut();
            for a in spec.list.iter().skip(accounts.len()) {
                accounts.push(Rc::new(Account::new(&a.name)));
            }
        }
        install_imports(&self.accounts.borrow(), spec);
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

    pub fn client_count(&self) -> usize {
        self.clients.borrow().len()
    }

    // -----------------------------------------------------------------------------
    // Subscriptions and interest

    /// Registers `sub` in the index. Returns true when the other shards were told
    /// (the connection then owes a barrier before its next PONG).
    pub(crate) fn add_subscription(&self, account: u32, sub: Rc<Subscription>) -> bool {
        let Some(acc) = self.account(account) else {
            return false;
        };
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
        let Some(acc) = self.account(account) else {
            return false;
        };
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
        let Some(acc) = self.account(account) else {
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
        let accounts = self.accounts.borrow();
        let m = accounts
            .get(account as usize)?
            .sublist
            .borrow_mut()
            .matches(subject);
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
        (header_len, zeros): (usize, proto::SizeZeros),
        message: &[u8],
        frame: &Bytes,
    ) -> Routed {
        let msg = Message {
            subject,
            reply,
            header_len,
            message,
            owner: frame,
            zeros,
        };
        self.route(Some(publisher), account, msg, 0)
    }

    /// Routes a message in `account`: to local subscribers, to the shards with
    /// interest, and through the account's imports.
    fn route(
        &self,
        publisher: Option<&Client>,
        account: u32,
        msg: Message<'_>,
        hops: u8,
    ) -> Routed {
        let Some(m) = self.matches(account, msg.subject) else {
            return Routed::default();
        };
        let no_echo = publisher.is_some_and(|p| !p.echo());
        let mut any = false;
        let mut any_remote = false;
        // Imports route on after this level is done (they reuse the scratch).
        let mut onward: Vec<Interest> = Vec::new();
        {
            let mut targets = self.targets.borrow_mut();
            for entry in &m.plain {
                match entry {
                    Interest::Local(sub) => {
                        if no_echo && publisher.is_some_and(|p| std::ptr::eq(&*sub.client, p)) {
                            continue;
                        }
                        any = true;
                        self.deliver_message(sub, &msg);
                    }
                    Interest::Remote(ri) => {
                        any_remote = true;
                        targets[ri.shard]
                            .get_or_insert_with(|| RemoteTarget {
                                plain: false,
                                queues: Default::default(),
                            })
                            .plain = true;
                    }
                    other => onward.push(other.clone()),
                }
            }
            for group in &m.queues {
                match self.pick_member(&group.members) {
                    Some(Interest::Local(sub)) => {
                        any = true;
                        self.deliver_message(sub, &msg);
                    }
                    Some(Interest::Remote(ri)) => {
                        any_remote = true;
                        targets[ri.shard]
                            .get_or_insert_with(|| RemoteTarget {
                                plain: false,
                                queues: Default::default(),
                            })
                            .queues
                            .push(crate::mesh::QueueName::from_slice(&group.name));
                    }
                    _ => {}
                }
            }
        }
        if any_remote {
            self.send_to_targets(account, &msg);
        }
        let mut routed = Routed {
            local: any,
            remote: any_remote,
        };
        for entry in onward {
            routed.merge(self.route_onward(publisher, &entry, msg, hops));
        }
        routed
    }

    /// Hands the message to every shard chosen in the scratch targets.
    fn send_to_targets(&self, account: u32, msg: &Message<'_>) {
        let mut targets = self.targets.borrow_mut();
        let last = targets.iter().rposition(Option::is_some);
        // One reference per receiving shard: the last one takes the packed envelope
        // itself (every extra count is an atomic on a line the receivers also write).
        let mut envelope = Some(Envelope::pack(
            msg.owner,
            msg.subject,
            msg.reply,
            msg.header_len,
            msg.message,
            msg.zeros,
        ));
        for (shard, target) in targets.iter_mut().enumerate() {
            let Some(target) = target.take() else {
                continue;
            };
            let envelope = if Some(shard) == last {
                envelope.take()
            } else {
                envelope.clone()
            };
            if let (Some(lane), Some(envelope)) = (&self.lanes[shard], envelope) {
                lane.push(MeshMsg::Deliver {
                    account,
                    envelope,
                    plain: target.plain,
                    queues: target.queues,
                });
            }
        }
    }

    /// Follows an import or a response route out of the account a message was
    /// published in.
    fn route_onward(
        &self,
        publisher: Option<&Client>,
        entry: &Interest,
        msg: Message<'_>,
        hops: u8,
    ) -> Routed {
        if hops >= MAX_IMPORT_HOPS {
            return Routed::default();
        }
        match entry {
            Interest::Stream(route) => {
                let mapped = route.transform.as_ref().and_then(|t| t.apply(msg.subject));
                let subject = mapped.as_deref().unwrap_or(msg.subject);
                self.route(None, route.to_account, Message { subject, ..msg }, hops + 1)
            }
            Interest::Service(route) => {
                let mapped = route.transform.as_ref().and_then(|t| t.apply(msg.subject));
                let subject = mapped.as_deref().unwrap_or(msg.subject);
                let requester = publisher.filter(|_| route.share);
                let (message, header_len) = self.request_info(route.importer, requester, msg, hops);
                // The header changed the sizes: they are written plainly now.
                let msg = Message {
                    message: &message,
                    header_len,
                    zeros: proto::SizeZeros::default(),
                    ..msg
                };
                if msg.reply.is_empty() {
                    return self.route(
                        None,
                        route.to_account,
                        Message { subject, ..msg },
                        hops + 1,
                    );
                }
                let back = self.open_response_route(route, msg);
                let routed = self.route(
                    None,
                    route.to_account,
                    Message {
                        subject,
                        reply: &back.subject,
                        ..msg
                    },
                    hops + 1,
                );
                if !routed.any() {
                    self.close_response_route(&back);
                }
                routed
            }
            Interest::Response(back) => {
                if back.singleton {
                    self.close_response_route(back);
                }
                self.route(
                    None,
                    back.to_account,
                    Message {
                        subject: &back.reply,
                        ..msg
                    },
                    hops + 1,
                )
            }
            Interest::Local(_) | Interest::Remote(_) => Routed::default(),
        }
    }

    /// The request with nats-server's `Nats-Request-Info` header: the requester's
    /// account, or, for a request already forwarded by another service import,
    /// that header with the forwarding account as `svc`. A client cannot set it.
    fn request_info(
        &self,
        importer: u32,
        shared: Option<&Client>,
        msg: Message<'_>,
        hops: u8,
    ) -> (Vec<u8>, usize) {
        use serde_json::Value;
        const KEY: &str = "Nats-Request-Info";
        let account = self.opts().accounts.name(importer).to_string();
        let previous = (hops > 0)
            .then(|| proto::header_value(&msg.message[..msg.header_len], KEY))
            .flatten()
            .and_then(|v| serde_json::from_slice::<serde_json::Map<String, Value>>(v).ok());
        let info = match (previous, shared) {
            (Some(mut info), _) => {
                info.insert("svc".into(), Value::String(account));
                info
            }
            // `share`: nats-server's detailed client info, in its field order.
            (None, Some(client)) => {
                let (name, lang, version) = client.identity();
                let start = crate::rfc3339(client.start);
                let mut info = serde_json::Map::new();
                info.insert("start".into(), Value::String(start));
                info.insert("host".into(), Value::String(client.addr.ip().to_string()));
                info.insert("id".into(), Value::from(client.cid));
                info.insert("acc".into(), Value::String(account));
                let optional = [
                    ("user", client.authenticated_as().map(|w| w.raw())),
                    ("name", Some(name)),
                    ("lang", Some(lang)),
                    ("ver", Some(version)),
                    ("server", Some(self.info.borrow().server_name.clone())),
                ];
                for (key, value) in optional {
                    if let Some(v) = value.filter(|v| !v.is_empty()) {
                        info.insert(key.into(), Value::String(v));
                    }
                }
                info.insert("kind".into(), Value::String("Client".into()));
                info.insert("client_type".into(), Value::String("nats".into()));
                info
            }
            (None, None) => {
                let mut info = serde_json::Map::new();
                info.insert("acc".into(), Value::String(account));
                info
            }
        };
        let value = Value::Object(info).to_string();
        proto::set_header(msg.message, msg.header_len, KEY, &value)
    }

    /// Registers the way back for one request: a `_R_.` subject in the exporting
    /// account, announced to the other shards like a subscription.
    fn open_response_route(&self, route: &ServiceRoute, msg: Message<'_>) -> Rc<ResponseRoute> {
        let subject = response_subject(&mut self.rng.borrow_mut());
        let back = Rc::new(ResponseRoute {
            exporter: route.to_account,
            subject: subject.clone(),
            to_account: route.importer,
            reply: Bytes::copy_from_slice(msg.reply),
            singleton: route.response_type == ResponseType::Singleton,
            expires: Instant::now() + route.response_threshold,
        });
        if let Some(acc) = self.account(route.to_account) {
            acc.sublist
                .borrow_mut()
                .insert(&subject, None, Interest::Response(back.clone()));
        }
        self.responses
            .borrow_mut()
            .insert(subject.clone(), back.clone());
        self.response_order.borrow_mut().push_back(back.clone());
        self.broadcast_interest(route.to_account, &subject, None, 1);
        if self.responses.borrow().len() > MAX_RESPONSE_ROUTES {
            tracing::warn!(
                "More than {MAX_RESPONSE_ROUTES} service import responses pending on shard {}, dropping the oldest",
                self.id
            );
            while self.responses.borrow().len() > MAX_RESPONSE_ROUTES {
                let oldest = self.response_order.borrow_mut().pop_front();
                match oldest {
                    Some(oldest) => self.close_response_route(&oldest),
                    None => break,
                }
            }
        }
        back
    }

    fn close_response_route(&self, back: &Rc<ResponseRoute>) {
        {
            let mut open = self.responses.borrow_mut();
            if !open.get(&back.subject).is_some_and(|r| Rc::ptr_eq(r, back)) {
                return;
            }
            open.remove(&back.subject);
        }
        if let Some(acc) = self.account(back.exporter) {
            acc.sublist
                .borrow_mut()
                .remove(&back.subject, None, &Interest::Response(back.clone()));
        }
        self.broadcast_interest(back.exporter, &back.subject, None, 0);
    }

    /// Forgets routes back whose responses did not come in time, oldest first (a
    /// route with a longer threshold ahead in line may hold a few back a little).
    fn expire_response_routes(&self, now: Instant) {
        loop {
            let front = {
                let mut order = self.response_order.borrow_mut();
                match order.front() {
                    Some(r) if r.expires <= now => order.pop_front(),
                    _ => None,
                }
            };
            let Some(back) = front else {
                break;
            };
            self.close_response_route(&back);
        }
        // Routes closed by their response leave their place in line behind.
        let mut order = self.response_order.borrow_mut();
        if order.len() > 2 * self.responses.borrow().len() + 64 {
            let open = self.responses.borrow();
            order.retain(|r| open.get(&r.subject).is_some_and(|o| Rc::ptr_eq(o, r)));
        }
    }

    /// Picks one queue member; local members weigh 1, a remote shard weighs as many
    /// members as it has.
    fn pick_member<'a>(&self, members: &'a [Interest]) -> Option<&'a Interest> {
        let weight = |e: &Interest| match e {
            Interest::Local(sub) if sub.client.is_closing() => 0,
            Interest::Local(_) => 1,
            Interest::Remote(ri) => ri.members.get() as u64,
            _ => 0,
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

    /// Serves a message that another shard routed here: local subscribers, and the
    /// routes back that live here. Imports were applied where it was published.
    fn deliver_remote(
        &self,
        account: u32,
        envelope: &Envelope,
        plain: bool,
        queues: &[crate::mesh::QueueName],
    ) {
        let (subject, reply, message) = (envelope.subject(), envelope.reply(), envelope.message());
        let header_len = envelope.header_len as usize;
        let sizes = (header_len, envelope.zeros);
        let Some(m) = self.matches(account, subject) else {
            return;
        };
        if plain {
            for entry in &m.plain {
                match entry {
                    Interest::Local(sub) => {
                        self.deliver(sub, subject, reply, sizes, message);
                    }
                    Interest::Response(_) => {
                        let msg = Message {
                            subject,
                            reply,
                            header_len,
                            message,
                            owner: envelope.owner(),
                            zeros: envelope.zeros,
                        };
                        self.route_onward(None, entry, msg, 1);
                    }
                    _ => {}
                }
            }
        }
        for name in queues {
            let Some(group) = m.queues.iter().find(|g| g.name.as_ref() == name.as_slice()) else {
                continue;
            };
            let live = |e: &&Interest| matches!(e, Interest::Local(s) if !s.client.is_closing());
            let n = group.members.iter().filter(live).count();
            if n == 0 {
                continue;
            }
            let pick = self.rng.borrow_mut().gen_range(0..n);
            if let Some(Interest::Local(sub)) = group.members.iter().filter(live).nth(pick) {
                self.deliver(sub, subject, reply, sizes, message);
            }
        }
    }

    /// Delivers a routed message to a local subscriber.
    fn deliver_message(&self, sub: &Rc<Subscription>, msg: &Message<'_>) {
        self.deliver(
            sub,
            msg.subject,
            msg.reply,
            (msg.header_len, msg.zeros),
            msg.message,
        );
    }

    /// Writes one MSG/HMSG to a local subscriber.
    pub(crate) fn deliver(
        &self,
        sub: &Rc<Subscription>,
        subject: &[u8],
        reply: &[u8],
        (header_len, zeros): (usize, proto::SizeZeros),
        message: &[u8],
    ) {
        let client = &sub.client;
        if client.is_closing() {
            return;
        }
        if sub.delivery_filter && client.delivery_denied(subject) {
            return;
        }
        let max = sub.max.get();
        let delivered = sub.delivered.get() + 1;
        if max > 0 && delivered > max {
            return;
        }
        sub.delivered.set(delivered);
        // Clients that did not ask for headers get the payload alone, with its
        // size as nats-server computes it.
        let (header_len, message, zeros) = if header_len > 0 && !client.headers() {
            (0, &message[header_len..], proto::SizeZeros::default())
        } else {
            (header_len, message, zeros)
        };
        if !reply.is_empty() {
            client.note_request(reply);
        }
        let pending = client.queue_msg(subject, &sub.sid, reply, header_len, message, zeros);
        self.stats.out_msgs.set(self.stats.out_msgs.get() + 1);
        self.stats
            .out_bytes
            .set(self.stats.out_bytes.get() + message.len() as u64);
        let account = client.account();
        if let Some(acc) = self.accounts.borrow().get(account as usize) {
            acc.stats.sent_msgs.set(acc.stats.sent_msgs.get() + 1);
            acc.stats
                .sent_bytes
                .set(acc.stats.sent_bytes.get() + message.len() as u64);
        }
        if max > 0 && delivered >= max {
            client.forget_sub(&sub.sid);
            self.remove_subscription(account, sub);
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
        let Some(m) = self.matches(publisher.account(), reply) else {
            return;
        };
        // One status, on the first of the publisher's subscriptions the reply
        // matches (nats-server's `subForReply`).
        let first = m.plain.iter().find_map(|entry| match entry {
            Interest::Local(sub) if Rc::ptr_eq(&sub.client, publisher) => Some(sub),
            _ => None,
        });
        if let Some(sub) = first {
            let header = proto::no_responders_header(subject);
            self.deliver(sub, reply, b"", (header.len(), Default::default()), &header);
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

    /// Registers a new connection. One that must authenticate joins its account
    /// at CONNECT (`bind_account`); the others are in the global account now.
    pub(crate) fn register_client(&self, client: Rc<Client>) {
        if client.auth_deadline().is_none() {
            self.enter_account(&client, client.account());
        }
        self.clients.borrow_mut().insert(client.cid, client);
    }

    fn enter_account(&self, client: &Client, account: u32) {
        if let Some(acc) = self.accounts.borrow().get(account as usize) {
            acc.clients.set(acc.clients.get() + 1);
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
        if let Some(acc) = self.accounts.borrow().get(account as usize) {
            acc.clients.set(acc.clients.get().saturating_sub(1));
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
        if self.clients.borrow_mut().remove(&client.cid).is_some() {
            self.global.connections.fetch_sub(1, Ordering::Relaxed);
            self.leave_account(client);
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
            // Another shard already runs with accounts a reload added: catch up.
            if let MeshMsg::Deliver { account, .. } | MeshMsg::Interest { account, .. } = &msg {
                if *account as usize >= self.accounts.borrow().len() {
                    self.refresh_options();
                }
            }
            match msg {
                MeshMsg::Deliver {
                    account,
                    envelope,
                    plain,
                    queues,
                } => self.deliver_remote(account, &envelope, plain, &queues),
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
        self.expire_response_routes(now);
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
