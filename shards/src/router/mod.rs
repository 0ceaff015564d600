//! The router: one shard's routing core, without I/O (as quinn-proto is to
//! quinn). It owns the shard's accounts with their subscription indexes, the
//! replica of its peers' interest, the routes accounts' imports add and the
//! routes back of service requests, and decides where a message goes: local
//! subscribers (by handle, through [`RouterIo::deliver`]) and peers (as
//! [`PeerMsg`]s through [`RouterIo::send`]). Time comes from `RouterIo::now`,
//! randomness from a seed, so a test drives several routers deterministically.
//!
//! The shell (`shard.rs`) keeps what needs a runtime: sockets, lanes, timers,
//! and the waits of backpressure.

pub mod interest;
pub mod summary;
pub mod wire;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::accounts::{Accounts, ResponseType};
use crate::proto;
use crate::sublist::{Matches, Sublist};

pub use interest::{
    Interest, RemoteInterest, ResponseRoute, ServiceImportRoute, StreamImportRoute, SubscriberId,
    Subscription,
};
pub use wire::{Batch, Envelope, PeerId, PeerMsg, QueueName, QueueNames};

/// A message being routed. Its parts borrow from `owner` where they can, so peers
/// get them as one shared buffer without a copy.
#[derive(Clone, Copy)]
pub struct Message<'a> {
    /// What the message is routed by.
    pub subject: &'a [u8],
    /// The subject its receivers see when it differs from `subject` (empty
    /// otherwise): a JetStream consumer routes a delivery by the consumer's
    /// deliver subject or the pull request's inbox, shown as the stored subject.
    pub deliver_as: &'a [u8],
    pub reply: &'a [u8],
    pub header_len: usize,
    /// Headers and payload.
    pub message: &'a [u8],
    pub owner: &'a Bytes,
    /// The publisher's leading zeros on the sizes, echoed in MSG lines.
    pub zeros: proto::SizeZeros,
}

impl Message<'_> {
    /// The subject receivers see.
    pub fn shown_subject(&self) -> &[u8] {
        if self.deliver_as.is_empty() {
            self.subject
        } else {
            self.deliver_as
        }
    }

    /// `part` as its own `Bytes`: a slice of `owner` when it lies there, else a copy.
    pub fn share(&self, part: &[u8]) -> Bytes {
        let owner = self.owner.as_ptr() as usize;
        let at = part.as_ptr() as usize;
        if !part.is_empty() && at >= owner && at + part.len() <= owner + self.owner.len() {
            self.owner.slice_ref(part)
        } else {
            Bytes::copy_from_slice(part)
        }
    }
}

/// JetStream API requests that nats-server audits: all but direct gets and
/// pull requests, which are on the data path.
pub fn is_audited_api(subject: &[u8]) -> bool {
    subject.starts_with(b"$JS.API.")
        && !subject.starts_with(b"$JS.API.DIRECT.")
        && !subject.starts_with(b"$JS.API.CONSUMER.MSG.NEXT.")
}

/// Who a `share` service import tells the exporter the requester is.
#[derive(Debug, Clone, Default)]
pub struct RequesterInfo {
    /// RFC 3339, as nats-server writes it.
    pub start: String,
    pub host: String,
    pub id: u64,
    pub user: Option<String>,
    pub name: String,
    pub lang: String,
    pub version: String,
}

/// Who is publishing: a local subscriber (client or internal) or nobody local
/// (a message that came from a peer, or forwarded by an import).
#[derive(Clone, Copy, Default)]
pub struct Publisher<'a> {
    pub id: Option<SubscriberId>,
    /// False: the publisher's own subscriptions do not get its messages.
    pub echo: bool,
    /// Called only when a `share` service import needs it.
    pub requester: Option<&'a dyn Fn() -> RequesterInfo>,
    /// A request whose publisher (`id`) wants a no-responders status when
    /// nothing receives it.
    pub no_responders: bool,
}

impl Publisher<'_> {
    /// An internal publisher without identity.
    pub fn internal(id: Option<SubscriberId>) -> Self {
        Publisher {
            id,
            echo: true,
            requester: None,
            no_responders: false,
        }
    }
}

/// What a router needs from its shell.
pub trait RouterIo {
    /// The time now (for response-route expiry; read only when one is opened).
    fn now(&self) -> Instant;
    /// Hands one message to a local subscriber. Returns the bytes it took
    /// (counted as sent), or `None` when it took nothing.
    fn deliver(&mut self, sub: &Subscription, msg: &Message<'_>) -> Option<usize>;
    /// `sub` reached its delivery limit and left the index.
    fn unsubscribed(&mut self, sub: &Rc<Subscription>);
    /// Queues a message for a peer.
    fn send(&mut self, peer: PeerId, msg: PeerMsg);
    /// Every peer acknowledged barrier `id`.
    fn barrier_done(&mut self, id: u64);
}

/// Where a published message went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Routed {
    pub local: bool,
    /// Sent to a peer (the publisher then owes a barrier before its next PONG).
    pub remote: bool,
    /// A peer's subscription (not only a pattern folding its interest) matched.
    pub remote_certain: bool,
}

impl Routed {
    /// Whether anything may receive it.
    pub fn any(self) -> bool {
        self.local || self.remote
    }

    fn merge(&mut self, other: Routed) {
        self.local |= other.local;
        self.remote |= other.remote;
        self.remote_certain |= other.remote_certain;
    }
}

/// A request sent only where folded patterns matched, waiting to learn whether
/// anyone received it.
struct Probe {
    unanswered: usize,
    publisher: SubscriberId,
    account: u32,
    subject: Bytes,
    reply: Bytes,
}

/// Open probes per shard; past this the oldest is dropped (its requester then
/// times out instead of hearing that nobody responds).
const MAX_PROBES: usize = 10_000;

/// Subjects a shard remembers its peers' folded patterns do not want; past
/// this it forgets them all and learns again.
pub const MAX_REMEMBERED_MISSES: usize = 8_192;

type MissSet = std::collections::HashSet<Bytes, ahash::RandomState>;

/// Per-account message counters of one shard (/accstatz).
#[derive(Debug, Default, Clone, Copy)]
pub struct AccountStats {
    pub received_msgs: u64,
    pub received_bytes: u64,
    pub sent_msgs: u64,
    pub sent_bytes: u64,
}

/// Messages in and out of one shard.
#[derive(Debug, Default, Clone, Copy)]
pub struct TrafficStats {
    pub in_msgs: u64,
    pub in_bytes: u64,
    pub out_msgs: u64,
    pub out_bytes: u64,
    /// Messages a peer sent here, because a folded pattern of ours matched,
    /// that no local subscriber wanted: the price of summarized interest.
    pub wasted_hops: u64,
    /// Messages not sent to a peer whose folded pattern matched, because the
    /// peer had said nothing there wants that subject.
    pub hops_saved: u64,
}

type InterestKey = (Bytes, Option<Bytes>);
type Map<K, V> = HashMap<K, V, ahash::RandomState>;

/// An account as one router sees it: its own subject namespace.
#[derive(Debug)]
pub struct Account {
    pub name: String,
    pub sublist: Sublist<Interest>,
    /// Local queue subscriptions per (subject, queue), to tell the peers.
    local_counts: Map<InterestKey, u32>,
    /// Local plain subscriptions, and what the peers are told of them (only kept
    /// when there are peers).
    local_plain: usize,
    summary: summary::InterestSummary,
    /// The replica of the peers' interest.
    remote: Map<(InterestKey, PeerId), Rc<RemoteInterest>>,
    pub stats: AccountStats,
    /// Connections of this account on this shard.
    pub connections: usize,
    /// The import routes this index holds (replaced at reload).
    imports: Vec<(Bytes, Interest)>,
    /// A peer was told (`PeerMsg::Miss`) that a subject finds nobody here since
    /// the last announcement: a subscription a folded pattern already covers
    /// must then say that interest grew (`PeerMsg::Grew`).
    misses_told: bool,
}

impl Account {
    fn new(name: &str) -> Self {
        Account {
            name: name.to_string(),
            sublist: Sublist::new(),
            local_counts: Map::default(),
            local_plain: 0,
            summary: summary::InterestSummary::default(),
            remote: Map::default(),
            stats: AccountStats::default(),
            connections: 0,
            imports: Vec::new(),
            misses_told: false,
        }
    }

    /// Local subscriptions in the index (it also holds peers' interest and routes).
    pub fn local_subscriptions(&self) -> usize {
        self.local_plain
            + self
                .local_counts
                .values()
                .map(|&n| n as usize)
                .sum::<usize>()
    }
}

/// Which queue groups a peer must serve for one message.
struct PeerTarget {
    plain: bool,
    queues: QueueNames,
}

/// Imports that feed each other are cut off after this many hops.
const MAX_IMPORT_HOPS: u8 = 8;

/// Open routes back per shard: a client flooding requests that nobody answers
/// cannot grow them without bound; past this the oldest go first.
pub const MAX_RESPONSE_ROUTES: usize = 100_000;

pub struct Router {
    me: PeerId,
    /// The peers interest goes to and barriers wait for (the other shards).
    peers: Vec<PeerId>,
    /// Indexed as `Accounts::list`; a reload only appends.
    accounts: Vec<Account>,
    account_spec: Arc<Accounts>,
    server_name: String,
    rng: SmallRng,
    /// Per-message scratch, by peer index: the peers that must get the message.
    targets: Vec<Option<PeerTarget>>,
    /// Routes back of service-import requests forwarded from here, and the same in
    /// the order they were opened (expiry and the cap go oldest first).
    responses: Map<Bytes, Rc<ResponseRoute>>,
    response_order: VecDeque<Rc<ResponseRoute>>,
    /// Barriers waiting for acknowledgements: how many are still owed, and the
    /// interest changes sent before each began.
    barriers: Map<u64, (usize, u64)>,
    next_barrier: u64,
    /// Interest changes sent to the peers, and how many of them a completed
    /// barrier has shown applied everywhere: a subscription that needs no change
    /// of its own may still rely on one in flight.
    interest_sent: u64,
    interest_applied: u64,
    probes: Map<u64, Probe>,
    /// Probe ids, oldest first (answered ones included, until they come up).
    probe_order: VecDeque<u64>,
    next_probe: u64,
    /// Subjects each peer said nothing of its wants, per (peer, account): its
    /// folded patterns need not send them there until its interest grows.
    misses: Map<(PeerId, u32), MissSet>,
    remembered_misses: usize,
    /// By peer index: the last miss told to it, so a run of messages on one
    /// subject is answered once.
    last_miss_told: Vec<Option<(u32, Bytes)>>,
    /// Scratch for the summary's changes.
    changes: Vec<summary::Change>,
    /// Summary bounds for new accounts: (max fan-out, max nodes).
    summary_limits: (usize, usize),
    pub stats: TrafficStats,
    /// Bumped by every change that can alter what [`Router::has_interest`]
    /// answers, so that watchers recheck only after one.
    interest_epoch: u64,
    /// Simulation only: a bug the simulation must catch.
    #[cfg(test)]
    pub(crate) planted: sim::Planted,
}

impl Router {
    /// A router for peer `me`, exchanging interest with `peers`.
    pub fn new(
        me: PeerId,
        peers: Vec<PeerId>,
        accounts: Arc<Accounts>,
        server_name: String,
        seed: u64,
    ) -> Router {
        let slots = peers
            .iter()
            .map(|p| p.index() + 1)
            .max()
            .unwrap_or(0)
            .max(me.index() + 1);
        let mut router = Router {
            me,
            peers,
            accounts: Vec::new(),
            account_spec: Arc::new(Accounts::default()),
            server_name,
            rng: SmallRng::seed_from_u64(seed),
            targets: (0..slots).map(|_| None).collect(),
            responses: Map::default(),
            response_order: VecDeque::new(),
            barriers: Map::default(),
            next_barrier: 1,
            interest_sent: 0,
            interest_applied: 0,
            probes: Map::default(),
            probe_order: VecDeque::new(),
            next_probe: 1,
            misses: Map::default(),
            remembered_misses: 0,
            last_miss_told: (0..slots).map(|_| None).collect(),
            changes: Vec::new(),
            summary_limits: (summary::DEFAULT_MAX_FANOUT, summary::DEFAULT_MAX_NODES),
            stats: TrafficStats::default(),
            interest_epoch: 0,
            #[cfg(test)]
            planted: sim::Planted::None,
        };
        router.set_accounts(accounts);
        router
    }

    pub fn me(&self) -> PeerId {
        self.me
    }

    pub fn accounts(&self) -> &[Account] {
        &self.accounts
    }

    pub fn account(&self, index: u32) -> Option<&Account> {
        self.accounts.get(index as usize)
    }

    pub fn account_mut(&mut self, index: u32) -> Option<&mut Account> {
        self.accounts.get_mut(index as usize)
    }

    pub fn account_name(&self, index: u32) -> &str {
        self.account(index).map_or("", |a| a.name.as_str())
    }

    /// Bounds of the summaries of plain interest (every account's; set before
    /// anything subscribes).
    pub fn set_summary_limits(&mut self, max_fanout: usize, max_nodes: usize) {
        self.summary_limits = (max_fanout, max_nodes);
        for acc in &mut self.accounts {
            acc.summary = summary::InterestSummary::new(max_fanout, max_nodes);
        }
    }

    pub fn set_server_name(&mut self, name: String) {
        self.server_name = name;
    }

    /// Takes a (reloaded) account configuration: accounts only ever get appended
    /// (the control plane keeps indexes stable), and every import route is replaced.
    pub fn set_accounts(&mut self, spec: Arc<Accounts>) {
        self.interest_epoch += 1;
        for a in spec.list.iter().skip(self.accounts.len()) {
            let mut acc = Account::new(&a.name);
            acc.summary =
                summary::InterestSummary::new(self.summary_limits.0, self.summary_limits.1);
            self.accounts.push(acc);
        }
        for acc in &mut self.accounts {
            for (subject, route) in std::mem::take(&mut acc.imports) {
                acc.sublist.remove(&subject, None, &route);
            }
        }
        for (importer, a) in spec.list.iter().enumerate() {
            let importer = importer as u32;
            for import in &a.stream_imports {
                let route = Interest::StreamImport(Rc::new(StreamImportRoute {
                    to_account: importer,
                    transform: import.to.clone(),
                }));
                self.add_import(import.from, &import.subject, route);
            }
            for import in &a.service_imports {
                let route = Interest::ServiceImport(Rc::new(ServiceImportRoute {
                    importer,
                    to_account: import.to_account,
                    transform: import.transform.clone(),
                    response_type: import.response_type,
                    response_threshold: import.response_threshold,
                    share: import.share,
                }));
                self.add_import(importer, &import.local, route);
            }
        }
        self.account_spec = spec;
    }

    fn add_import(&mut self, account: u32, subject: &str, route: Interest) {
        if let Some(acc) = self.accounts.get_mut(account as usize) {
            let subject = Bytes::copy_from_slice(subject.as_bytes());
            acc.sublist.insert(&subject, None, route.clone());
            acc.imports.push((subject, route));
        }
    }

    /// Counts a message received from a local publisher.
    pub fn note_received(&mut self, account: u32, bytes: usize) {
        self.stats.in_msgs += 1;
        self.stats.in_bytes += bytes as u64;
        if let Some(acc) = self.accounts.get_mut(account as usize) {
            acc.stats.received_msgs += 1;
            acc.stats.received_bytes += bytes as u64;
        }
    }

    // -----------------------------------------------------------------------------
    // Interest

    /// Registers `sub` in the index. Returns true when the subscriber owes a
    /// barrier before it may rely on the peers' traffic: they were told, or what
    /// already covers it may not have reached them all yet.
    pub fn subscribe(
        &mut self,
        io: &mut impl RouterIo,
        account: u32,
        sub: Rc<Subscription>,
    ) -> bool {
        let Some(acc) = self.accounts.get_mut(account as usize) else {
            return false;
        };
        self.interest_epoch += 1;
        acc.sublist.insert(
            &sub.subject,
            sub.queue.as_deref(),
            Interest::Local(sub.clone()),
        );
        let Some(queue) = &sub.queue else {
            acc.local_plain += 1;
            if self.peers.is_empty() {
                return false;
            }
            let mut changes = std::mem::take(&mut self.changes);
            acc.summary.insert(&sub.subject, &mut changes);
            let covered = !changes
                .iter()
                .any(|c| matches!(c, summary::Change::Add { .. }));
            if covered && acc.misses_told {
                self.announce_growth(io, account);
            }
            self.announce_changes(io, account, &mut changes);
            self.changes = changes;
            // Covered by what was told before, which the peers may not have
            // applied yet: the subscriber owes a barrier until they have.
            return self.interest_applied < self.interest_sent;
        };
        // Queue members are weights: every change goes to the peers.
        let key = (sub.subject.clone(), Some(queue.clone()));
        let count = {
            let c = acc.local_counts.entry(key).or_insert(0);
            *c += 1;
            *c
        };
        self.announce(io, account, &sub.subject, sub.queue.as_ref(), count, false)
    }

    /// Tells every peer what changed in the summary of the plain interest.
    fn announce_changes(
        &mut self,
        io: &mut impl RouterIo,
        account: u32,
        changes: &mut Vec<summary::Change>,
    ) -> bool {
        let told = !changes.is_empty();
        for change in changes.drain(..) {
            let (pattern, count, folded) = match change {
                summary::Change::Add { pattern, folded } => (pattern, 1, folded),
                summary::Change::Remove(pattern) => (pattern, 0, false),
            };
            self.announce(io, account, &pattern, None, count, folded);
        }
        told
    }

    /// Removes `sub` from the index; same return value as `subscribe`.
    pub fn unsubscribe(
        &mut self,
        io: &mut impl RouterIo,
        account: u32,
        sub: &Rc<Subscription>,
    ) -> bool {
        let Some(acc) = self.accounts.get_mut(account as usize) else {
            return false;
        };
        let entry = Interest::Local(sub.clone());
        if !acc
            .sublist
            .remove(&sub.subject, sub.queue.as_deref(), &entry)
        {
            return false;
        }
        self.interest_epoch += 1;
        if sub.queue.is_none() {
            acc.local_plain = acc.local_plain.saturating_sub(1);
            if self.peers.is_empty() {
                return false;
            }
            let mut changes = std::mem::take(&mut self.changes);
            acc.summary.remove(&sub.subject, &mut changes);
            let told = self.announce_changes(io, account, &mut changes);
            self.changes = changes;
            return told;
        }
        let key = (sub.subject.clone(), sub.queue.clone());
        let count = match acc.local_counts.get_mut(&key) {
            Some(c) if *c > 1 => {
                *c -= 1;
                *c
            }
            _ => {
                acc.local_counts.remove(&key);
                0
            }
        };
        self.announce(io, account, &sub.subject, sub.queue.as_ref(), count, false)
    }

    /// Tells every peer that this account's interest grew under a pattern they
    /// already hold, so the misses they remember of this shard are stale.
    fn announce_growth(&mut self, io: &mut impl RouterIo, account: u32) {
        #[cfg(test)]
        if self.planted == sim::Planted::GrowthUntold {
            return;
        }
        self.interest_sent += 1;
        self.forget_misses_told(account);
        for &peer in &self.peers {
            io.send(peer, PeerMsg::Grew { account });
        }
    }

    /// Whatever a peer remembers of misses told in `account` is about to be
    /// dropped there: the next miss must be told again.
    fn forget_misses_told(&mut self, account: u32) {
        if let Some(acc) = self.accounts.get_mut(account as usize) {
            acc.misses_told = false;
        }
        for told in &mut self.last_miss_told {
            if told.as_ref().is_some_and(|(a, _)| *a == account) {
                *told = None;
            }
        }
    }

    /// Tells every peer how many local subscriptions (subject, queue) now has.
    fn announce(
        &mut self,
        io: &mut impl RouterIo,
        account: u32,
        subject: &Bytes,
        queue: Option<&Bytes>,
        count: u32,
        folded: bool,
    ) -> bool {
        self.interest_sent += 1;
        if count > 0 {
            self.forget_misses_told(account);
        }
        for &peer in &self.peers {
            io.send(
                peer,
                PeerMsg::Interest {
                    account,
                    subject: subject.clone(),
                    queue: queue.cloned(),
                    count,
                    folded,
                },
            );
        }
        !self.peers.is_empty()
    }

    fn apply_interest(
        &mut self,
        from: PeerId,
        account: u32,
        subject: Bytes,
        queue: Option<Bytes>,
        count: u32,
        folded: bool,
    ) {
        if count > 0 {
            self.forget_misses_of(from, account);
        }
        let Some(acc) = self.accounts.get_mut(account as usize) else {
            return;
        };
        self.interest_epoch += 1;
        let key = ((subject, queue), from);
        if count == 0 {
            if let Some(ri) = acc.remote.remove(&key) {
                let ((subject, queue), _) = &key;
                acc.sublist
                    .remove(subject, queue.as_deref(), &Interest::Remote(ri));
            }
            return;
        }
        match acc.remote.get(&key) {
            Some(ri) => {
                ri.members.set(count);
                ri.folded.set(folded);
            }
            None => {
                let ri = Rc::new(RemoteInterest {
                    peer: from,
                    members: std::cell::Cell::new(count),
                    folded: std::cell::Cell::new(folded),
                });
                let ((subject, queue), _) = &key;
                acc.sublist
                    .insert(subject, queue.as_deref(), Interest::Remote(ri.clone()));
                acc.remote.insert(key, ri);
            }
        }
    }

    // -----------------------------------------------------------------------------
    // Barriers

    /// Starts an interest barrier: done (`RouterIo::barrier_done`) once every peer
    /// has applied everything this router sent it before now. `None` without peers.
    pub fn begin_barrier(&mut self, io: &mut impl RouterIo) -> Option<u64> {
        if self.peers.is_empty() {
            return None;
        }
        let id = self.next_barrier;
        self.next_barrier += 1;
        #[cfg(not(test))]
        let owed = self.peers.len();
        #[cfg(test)]
        let owed = sim::planted_initial_count(self.peers.len(), self.planted);
        for &peer in &self.peers {
            io.send(peer, PeerMsg::Barrier { id });
        }
        if owed == 0 {
            self.interest_applied = self.interest_applied.max(self.interest_sent);
            io.barrier_done(id);
        } else {
            self.barriers.insert(id, (owed, self.interest_sent));
        }
        Some(id)
    }

    /// True while barrier `id` waits for acknowledgements.
    pub fn barrier_pending(&self, id: u64) -> bool {
        self.barriers.contains_key(&id)
    }

    // -----------------------------------------------------------------------------
    // Peers

    /// Applies one batch received from `from`, in order.
    pub fn handle_batch(&mut self, io: &mut impl RouterIo, from: PeerId, batch: Batch) {
        for msg in batch {
            self.handle(io, from, msg);
        }
    }

    /// Applies one message received from `from`.
    pub fn handle(&mut self, io: &mut impl RouterIo, from: PeerId, msg: PeerMsg) {
        match msg {
            PeerMsg::Deliver {
                account,
                envelope,
                plain,
                queues,
                origin: _,
                probe,
            } => {
                let matched = self.deliver_from_peer(io, from, account, &envelope, plain, &queues);
                if let Some(id) = probe {
                    io.send(from, PeerMsg::ProbeAnswer { id, matched });
                }
            }
            PeerMsg::Interest {
                account,
                subject,
                queue,
                count,
                folded,
            } => self.apply_interest(from, account, subject, queue, count, folded),
            PeerMsg::ProbeAnswer { id, matched } => self.probe_answered(io, id, matched),
            PeerMsg::Miss { account, subject } => self.remember_miss(from, account, subject),
            PeerMsg::Grew { account } => self.forget_misses_of(from, account),
            PeerMsg::Barrier { id } => io.send(from, PeerMsg::BarrierAck { id }),
            PeerMsg::BarrierAck { id } => {
                if let Some((remaining, sent)) = self.barriers.get_mut(&id) {
                    *remaining = remaining.saturating_sub(1);
                    if *remaining == 0 {
                        self.interest_applied = self.interest_applied.max(*sent);
                        self.barriers.remove(&id);
                        io.barrier_done(id);
                    }
                }
            }
        }
    }

    /// True when a message names an account this router does not have yet (a peer
    /// applied a reload first).
    pub fn needs_accounts_for(&self, msg: &PeerMsg) -> bool {
        match msg {
            PeerMsg::Deliver { account, .. }
            | PeerMsg::Interest { account, .. }
            | PeerMsg::Miss { account, .. }
            | PeerMsg::Grew { account } => *account as usize >= self.accounts.len(),
            _ => false,
        }
    }

    // -----------------------------------------------------------------------------
    // Routing

    fn matches(&mut self, account: u32, subject: &[u8]) -> Option<Rc<Matches<Interest>>> {
        // A subject with an empty token matches nothing (nats-server does the same).
        if subject.is_empty()
            || subject[0] == b'.'
            || subject[subject.len() - 1] == b'.'
            || memchr::memmem::find(subject, b"..").is_some()
        {
            return None;
        }
        Some(
            self.accounts
                .get_mut(account as usize)?
                .sublist
                .matches(subject),
        )
    }

    /// Changes since the start that may alter what [`Router::has_interest`] answers.
    pub fn interest_epoch(&self) -> u64 {
        self.interest_epoch
    }

    /// Whether a message on `subject` in `account` would reach a subscriber,
    /// here or on a peer, or go on through an import; with `group`, only a
    /// member of that queue group counts. A peer's folded pattern counts until
    /// that peer has said nobody there wants the subject (so a push consumer
    /// whose only match is a pattern learns after one wasted message).
    pub fn has_interest(&mut self, account: u32, subject: &[u8], group: Option<&[u8]>) -> bool {
        let Some(m) = self.matches(account, subject) else {
            return false;
        };
        let counts = |entry: &Interest| match entry {
            Interest::Local(sub) => !sub.detached.get(),
            Interest::Remote(ri) => !ri.folded.get() || !self.known_miss(ri.peer, account, subject),
            _ => true,
        };
        let queued = |name: &[u8]| group.is_none_or(|g| g == name);
        (group.is_none() && m.plain.iter().any(counts))
            || m.queues
                .iter()
                .any(|q| queued(&q.name) && q.members.iter().any(counts))
    }

    /// Routes a message published here in `account`: to local subscribers, to the
    /// peers with interest, and through the account's imports.
    pub fn publish(
        &mut self,
        io: &mut impl RouterIo,
        publisher: Publisher<'_>,
        account: u32,
        msg: Message<'_>,
    ) -> Routed {
        // JetStream's API learns who asks (its audit advisories name the
        // client), as nats-server's import of the API gives it
        // `Nats-Request-Info`; clients subscribed to the API do not see it.
        let stamped;
        let msg = match publisher.requester {
            Some(describe) if is_audited_api(msg.subject) => {
                let (message, header_len) = self.request_info(account, Some(describe), msg, 0);
                stamped = Bytes::from(message);
                Message {
                    message: &stamped,
                    owner: &stamped,
                    header_len,
                    zeros: proto::SizeZeros::default(),
                    ..msg
                }
            }
            _ => msg,
        };
        let routed = self.route(io, publisher, account, msg, 0);
        if publisher.no_responders && !routed.any() && !msg.reply.is_empty() {
            if let Some(id) = publisher.id {
                self.no_responders(io, id, account, msg.subject, msg.reply);
            }
        }
        routed
    }

    fn route(
        &mut self,
        io: &mut impl RouterIo,
        publisher: Publisher<'_>,
        account: u32,
        msg: Message<'_>,
        hops: u8,
    ) -> Routed {
        let Some(m) = self.matches(account, msg.subject) else {
            return Routed::default();
        };
        let skip_own = if publisher.echo { None } else { publisher.id };
        let mut routed = Routed::default();
        // Imports route on after this level is done (they reuse the scratch).
        let mut onward: smallvec::SmallVec<[&Interest; 2]> = smallvec::SmallVec::new();
        for entry in &m.plain {
            match entry {
                Interest::Local(sub) => {
                    if skip_own == Some(sub.owner) {
                        continue;
                    }
                    routed.local = true;
                    self.deliver_local(io, account, sub, &msg);
                }
                Interest::Remote(ri) => {
                    if ri.folded.get() && self.known_miss(ri.peer, account, msg.subject) {
                        self.stats.hops_saved += 1;
                        continue;
                    }
                    routed.remote = true;
                    routed.remote_certain |= !ri.folded.get();
                    self.target(ri.peer).plain = true;
                }
                other => onward.push(other),
            }
        }
        for group in &m.queues {
            match self.pick_member(&group.members) {
                Some(Interest::Local(sub)) => {
                    routed.local = true;
                    self.deliver_local(io, account, sub, &msg);
                }
                Some(Interest::Remote(ri)) => {
                    routed.remote = true;
                    routed.remote_certain = true;
                    self.target(ri.peer)
                        .queues
                        .push(QueueName::from_slice(&group.name));
                }
                _ => {}
            }
        }
        if routed.remote {
            // Only folded patterns matched: whether anyone is there, the peers say.
            let uncertain = !routed.local && !routed.remote_certain && onward.is_empty();
            let probe = (uncertain && hops == 0 && publisher.no_responders)
                .then(|| publisher.id.map(|id| self.open_probe(id, account, &msg)))
                .flatten();
            self.send_to_targets(io, account, &msg, self.me, probe);
        }
        for entry in onward {
            routed.merge(self.route_onward(io, publisher, entry, msg, hops));
        }
        routed
    }

    fn target(&mut self, peer: PeerId) -> &mut PeerTarget {
        let slot = peer.index();
        if slot >= self.targets.len() {
            self.targets.resize_with(slot + 1, || None);
        }
        self.targets[slot].get_or_insert_with(|| PeerTarget {
            plain: false,
            queues: QueueNames::new(),
        })
    }

    /// Hands the message to every peer chosen in the scratch targets, except the
    /// one it came from.
    fn send_to_targets(
        &mut self,
        io: &mut impl RouterIo,
        account: u32,
        msg: &Message<'_>,
        origin: PeerId,
        probe: Option<u64>,
    ) {
        let last = self.targets.iter().rposition(Option::is_some);
        // One reference per receiving peer: the last one takes the packed envelope
        // itself (every extra count is an atomic on a line the receivers also write).
        let mut envelope = Some(Envelope::pack(
            msg.owner,
            msg.subject,
            msg.deliver_as,
            msg.reply,
            msg.header_len,
            msg.message,
            msg.zeros,
        ));
        for (slot, target) in self.targets.iter_mut().enumerate() {
            let Some(target) = target.take() else {
                continue;
            };
            let peer = PeerId(slot as u16);
            if peer == origin {
                continue;
            }
            let envelope = if Some(slot) == last {
                envelope.take()
            } else {
                envelope.clone()
            };
            if let Some(envelope) = envelope {
                io.send(
                    peer,
                    PeerMsg::Deliver {
                        account,
                        envelope,
                        plain: target.plain,
                        queues: target.queues,
                        origin,
                        probe,
                    },
                );
            }
        }
    }

    /// Follows an import or a response route out of the account a message was
    /// published in.
    fn route_onward(
        &mut self,
        io: &mut impl RouterIo,
        publisher: Publisher<'_>,
        entry: &Interest,
        msg: Message<'_>,
        hops: u8,
    ) -> Routed {
        if hops >= MAX_IMPORT_HOPS {
            return Routed::default();
        }
        let forwarded = Publisher::default();
        match entry {
            Interest::StreamImport(route) => {
                let mapped = route.transform.as_ref().and_then(|t| t.apply(msg.subject));
                let subject = mapped.as_deref().unwrap_or(msg.subject);
                self.route(
                    io,
                    forwarded,
                    route.to_account,
                    Message { subject, ..msg },
                    hops + 1,
                )
            }
            Interest::ServiceImport(route) => {
                let mapped = route.transform.as_ref().and_then(|t| t.apply(msg.subject));
                let subject = mapped.as_deref().unwrap_or(msg.subject);
                let requester = publisher.requester.filter(|_| route.share);
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
                        io,
                        forwarded,
                        route.to_account,
                        Message { subject, ..msg },
                        hops + 1,
                    );
                }
                let back = self.open_response_route(io, route, msg.reply);
                let routed = self.route(
                    io,
                    forwarded,
                    route.to_account,
                    Message {
                        subject,
                        reply: &back.subject,
                        ..msg
                    },
                    hops + 1,
                );
                if !routed.any() {
                    self.close_response_route(io, &back);
                }
                routed
            }
            Interest::Response(back) => {
                if back.singleton {
                    self.close_response_route(io, back);
                }
                self.route(
                    io,
                    forwarded,
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
        shared: Option<&dyn Fn() -> RequesterInfo>,
        msg: Message<'_>,
        hops: u8,
    ) -> (Vec<u8>, usize) {
        use serde_json::Value;
        const KEY: &str = "Nats-Request-Info";
        let account = self.account_spec.name(importer).to_string();
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
            (None, Some(describe)) => {
                let who = describe();
                let mut info = serde_json::Map::new();
                info.insert("start".into(), Value::String(who.start));
                info.insert("host".into(), Value::String(who.host));
                info.insert("id".into(), Value::from(who.id));
                info.insert("acc".into(), Value::String(account));
                let optional = [
                    ("user", who.user),
                    ("name", Some(who.name)),
                    ("lang", Some(who.lang)),
                    ("ver", Some(who.version)),
                    ("server", Some(self.server_name.clone())),
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
    /// account, announced to the peers like a subscription.
    fn open_response_route(
        &mut self,
        io: &mut impl RouterIo,
        route: &ServiceImportRoute,
        reply: &[u8],
    ) -> Rc<ResponseRoute> {
        let subject = response_subject(&mut self.rng);
        let back = Rc::new(ResponseRoute {
            exporter: route.to_account,
            subject: subject.clone(),
            to_account: route.importer,
            reply: Bytes::copy_from_slice(reply),
            singleton: route.response_type == ResponseType::Singleton,
            expires: io.now() + route.response_threshold,
        });
        if let Some(acc) = self.accounts.get_mut(route.to_account as usize) {
            acc.sublist
                .insert(&subject, None, Interest::Response(back.clone()));
        }
        self.responses.insert(subject.clone(), back.clone());
        self.response_order.push_back(back.clone());
        self.announce(io, route.to_account, &subject, None, 1, false);
        if self.responses.len() > MAX_RESPONSE_ROUTES {
            tracing::warn!(
                "More than {MAX_RESPONSE_ROUTES} service import responses pending on shard {}, dropping the oldest",
                self.me.0
            );
            while self.responses.len() > MAX_RESPONSE_ROUTES {
                match self.response_order.pop_front() {
                    Some(oldest) => self.close_response_route(io, &oldest),
                    None => break,
                }
            }
        }
        back
    }

    fn close_response_route(&mut self, io: &mut impl RouterIo, back: &Rc<ResponseRoute>) {
        if !self
            .responses
            .get(&back.subject)
            .is_some_and(|r| Rc::ptr_eq(r, back))
        {
            return;
        }
        self.responses.remove(&back.subject);
        if let Some(acc) = self.accounts.get_mut(back.exporter as usize) {
            acc.sublist
                .remove(&back.subject, None, &Interest::Response(back.clone()));
        }
        self.announce(io, back.exporter, &back.subject, None, 0, false);
    }

    /// Open routes back of service requests.
    pub fn open_responses(&self) -> usize {
        self.responses.len()
    }

    /// Forgets routes back whose responses did not come in time, oldest first (a
    /// route with a longer threshold ahead in line may hold a few back a little).
    pub fn expire_responses(&mut self, io: &mut impl RouterIo, now: Instant) {
        while let Some(front) = self.response_order.front() {
            if front.expires > now {
                break;
            }
            if let Some(back) = self.response_order.pop_front() {
                self.close_response_route(io, &back);
            }
        }
        // Routes closed by their response leave their place in line behind.
        if self.response_order.len() > 2 * self.responses.len() + 64 {
            let open = &self.responses;
            self.response_order
                .retain(|r| open.get(&r.subject).is_some_and(|o| Rc::ptr_eq(o, r)));
        }
    }

    /// Picks one queue member; local members weigh 1, a peer weighs as many
    /// members as it has.
    fn pick_member<'a>(&mut self, members: &'a [Interest]) -> Option<&'a Interest> {
        let weight = |e: &Interest| match e {
            Interest::Local(sub) if !sub.detached.get() => 1,
            Interest::Remote(ri) => ri.members.get() as u64,
            _ => 0,
        };
        let total: u64 = members.iter().map(weight).sum();
        if total == 0 {
            return None;
        }
        let mut pick = self.rng.gen_range(0..total);
        for e in members {
            let w = weight(e);
            if pick < w {
                return Some(e);
            }
            pick -= w;
        }
        None
    }

    /// Serves a message a peer routed here: local subscribers, and the routes back
    /// that live here. Imports were applied where it was published.
    fn deliver_from_peer(
        &mut self,
        io: &mut impl RouterIo,
        from: PeerId,
        account: u32,
        envelope: &Envelope,
        plain: bool,
        queues: &[QueueName],
    ) -> bool {
        let msg = Message {
            subject: envelope.subject(),
            deliver_as: envelope.deliver_as(),
            reply: envelope.reply(),
            header_len: envelope.header_len as usize,
            message: envelope.message(),
            owner: envelope.owner(),
            zeros: envelope.zeros,
        };
        let Some(m) = self.matches(account, msg.subject) else {
            if plain {
                self.stats.wasted_hops += 1;
                self.tell_miss(io, from, account, msg.subject);
            }
            return false;
        };
        let mut matched = false;
        if plain {
            for entry in &m.plain {
                match entry {
                    Interest::Local(sub) => {
                        matched = true;
                        self.deliver_local(io, account, sub, &msg);
                    }
                    // A response to a request forwarded from here: it is routed on
                    // into the requester's account as a new message from here.
                    Interest::Response(_) => {
                        matched = true;
                        self.route_onward(io, Publisher::default(), entry, msg, 1);
                    }
                    _ => {}
                }
            }
            if !matched {
                if queues.is_empty() {
                    self.stats.wasted_hops += 1;
                }
                self.tell_miss(io, from, account, msg.subject);
            }
        }
        for name in queues {
            let Some(group) = m.queues.iter().find(|g| g.name.as_ref() == name.as_slice()) else {
                continue;
            };
            // The peer chose this shard; any live local member will do.
            let live = |e: &&Interest| matches!(e, Interest::Local(s) if !s.detached.get());
            let n = group.members.iter().filter(live).count();
            if n == 0 {
                continue;
            }
            let pick = self.rng.gen_range(0..n);
            if let Some(Interest::Local(sub)) = group.members.iter().filter(live).nth(pick) {
                matched = true;
                self.deliver_local(io, account, sub, &msg);
            }
        }
        matched
    }

    /// Tells `peer` that no plain subscription here wants `subject`, unless that
    /// was the last thing told to it and nothing changed since.
    fn tell_miss(&mut self, io: &mut impl RouterIo, peer: PeerId, account: u32, subject: &[u8]) {
        let Some(acc) = self.accounts.get_mut(account as usize) else {
            return;
        };
        let slot = peer.index();
        if slot >= self.last_miss_told.len() {
            self.last_miss_told.resize_with(slot + 1, || None);
        }
        let last = &mut self.last_miss_told[slot];
        if last
            .as_ref()
            .is_some_and(|(a, s)| *a == account && s.as_ref() == subject)
        {
            return;
        }
        // A copy: a slice would keep the whole message buffer alive.
        let subject = Bytes::copy_from_slice(subject);
        *last = Some((account, subject.clone()));
        acc.misses_told = true;
        io.send(peer, PeerMsg::Miss { account, subject });
    }

    /// Whether `peer` said nothing there wants `subject` in `account`.
    fn known_miss(&self, peer: PeerId, account: u32, subject: &[u8]) -> bool {
        !self.misses.is_empty()
            && self
                .misses
                .get(&(peer, account))
                .is_some_and(|set| set.contains(subject))
    }

    fn remember_miss(&mut self, peer: PeerId, account: u32, subject: Bytes) {
        self.interest_epoch += 1;
        if self.remembered_misses >= MAX_REMEMBERED_MISSES {
            self.misses.clear();
            self.remembered_misses = 0;
        }
        if self
            .misses
            .entry((peer, account))
            .or_default()
            .insert(subject)
        {
            self.remembered_misses += 1;
        }
    }

    /// `peer`'s interest in `account` grew: what it said it misses may be wanted now.
    fn forget_misses_of(&mut self, peer: PeerId, account: u32) {
        if let Some(set) = self.misses.remove(&(peer, account)) {
            self.interest_epoch += 1;
            self.remembered_misses -= set.len();
        }
    }

    /// Opens a probe for a request about to go only where folded patterns
    /// matched: one answer is owed per peer in the scratch targets.
    fn open_probe(&mut self, publisher: SubscriberId, account: u32, msg: &Message<'_>) -> u64 {
        let id = self.next_probe;
        self.next_probe += 1;
        let unanswered = self.targets.iter().filter(|t| t.is_some()).count();
        self.probes.insert(
            id,
            Probe {
                unanswered,
                publisher,
                account,
                subject: Bytes::copy_from_slice(msg.subject),
                reply: Bytes::copy_from_slice(msg.reply),
            },
        );
        self.probe_order.push_back(id);
        while self.probe_order.len() > MAX_PROBES {
            if let Some(oldest) = self.probe_order.pop_front() {
                self.probes.remove(&oldest);
            }
        }
        id
    }

    /// A peer said whether a probed request found anyone; when none did, the
    /// requester hears that nobody responds.
    fn probe_answered(&mut self, io: &mut impl RouterIo, id: u64, matched: bool) {
        let Some(probe) = self.probes.get_mut(&id) else {
            return;
        };
        probe.unanswered = probe.unanswered.saturating_sub(1);
        if !matched && probe.unanswered > 0 {
            return;
        }
        // Its id stays in `probe_order` until it is the oldest: dropping an id
        // already answered there is a no-op, and nothing here walks the queue.
        let Some(probe) = self.probes.remove(&id) else {
            return;
        };
        if !matched {
            self.no_responders(
                io,
                probe.publisher,
                probe.account,
                &probe.subject,
                &probe.reply,
            );
        }
    }

    /// Delivers a routed message to a local subscriber, honouring its limit.
    #[inline]
    fn deliver_local(
        &mut self,
        io: &mut impl RouterIo,
        account: u32,
        sub: &Rc<Subscription>,
        msg: &Message<'_>,
    ) {
        let max = sub.max.get();
        let delivered = sub.delivered.get() + 1;
        if max > 0 && delivered > max {
            return;
        }
        let Some(bytes) = io.deliver(sub, msg) else {
            return;
        };
        sub.delivered.set(delivered);
        self.stats.out_msgs += 1;
        self.stats.out_bytes += bytes as u64;
        if let Some(acc) = self.accounts.get_mut(account as usize) {
            acc.stats.sent_msgs += 1;
            acc.stats.sent_bytes += bytes as u64;
        }
        if max > 0 && delivered >= max {
            self.unsubscribe(io, account, sub);
            io.unsubscribed(sub);
        }
    }

    /// Sends a no-responders status to the requester itself: one status, on the
    /// first of its subscriptions the reply matches (nats-server's `subForReply`).
    pub fn no_responders(
        &mut self,
        io: &mut impl RouterIo,
        publisher: SubscriberId,
        account: u32,
        subject: &[u8],
        reply: &[u8],
    ) {
        let Some(m) = self.matches(account, reply) else {
            return;
        };
        let first = m.plain.iter().find_map(|entry| match entry {
            Interest::Local(sub) if sub.owner == publisher => Some(sub),
            _ => None,
        });
        if let Some(sub) = first {
            let header = Bytes::from(proto::no_responders_header(subject));
            let msg = Message {
                subject: reply,
                deliver_as: b"",
                reply: b"",
                header_len: header.len(),
                message: &header,
                owner: &header,
                zeros: proto::SizeZeros::default(),
            };
            self.deliver_local(io, account, sub, &msg);
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
