//! The control lanes: how the control executor asks shards for their state
//! (monitoring, later `$SYS` requests). Statistics stay in each shard's cells, with
//! no locks or shared atomics on the message path; they are copied out only when
//! someone asks.

use std::rc::Rc;
use std::time::{Instant, SystemTime};

use glommio::channels::shared_channel::{self, ConnectedReceiver, ConnectedSender};

use crate::shard::{Interest, Shard};
use crate::sublist::SublistStats;

/// What the control executor can ask a shard.
#[derive(Debug, Clone, Copy)]
pub enum ControlRequest {
    /// Counters, connections (open and recently closed) and, with `subs`, each
    /// connection's subscriptions.
    Snapshot { subs: bool },
}

/// One subscription, as /connz and /subsz show it.
#[derive(Debug, Clone)]
pub struct SubSnapshot {
    pub subject: String,
    pub queue: Option<String>,
    pub sid: String,
    pub msgs: u64,
    pub max: u64,
    pub cid: u64,
    pub account: String,
}

/// One connection, open or closed.
#[derive(Debug, Clone)]
pub struct ConnSnapshot {
    pub cid: u64,
    pub shard: usize,
    pub ip: String,
    pub port: u16,
    pub start: SystemTime,
    pub last_activity: SystemTime,
    pub stop: Option<SystemTime>,
    pub reason: Option<String>,
    pub pending_bytes: usize,
    pub in_msgs: u64,
    pub out_msgs: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
    pub subscriptions: usize,
    pub name: String,
    pub lang: String,
    pub version: String,
    pub account: String,
    /// Who it authenticated as (user name, NKEY), when it did.
    pub user: Option<String>,
    pub subs: Vec<SubSnapshot>,
    /// What TLS negotiated (open connections only).
    pub tls: Option<crate::tls::TlsState>,
}

/// One account on one shard.
#[derive(Debug, Clone, Default)]
pub struct AccountSnapshot {
    pub name: String,
    pub connections: usize,
    pub sublist: SublistSnapshot,
    pub sent_msgs: u64,
    pub sent_bytes: u64,
    pub received_msgs: u64,
    pub received_bytes: u64,
}

/// Index statistics, summed over accounts; `subscriptions` counts local ones only
/// (the index also holds the other shards' interest).
#[derive(Debug, Clone, Copy, Default)]
pub struct SublistSnapshot {
    pub subscriptions: usize,
    pub stats: SublistStats,
}

impl SublistSnapshot {
    /// Adds another index's figures (fan-out maximum is the larger one).
    pub fn add(&mut self, other: &SublistSnapshot) {
        let (sum, st) = (&mut self.stats, &other.stats);
        self.subscriptions += other.subscriptions;
        sum.cache_entries += st.cache_entries;
        sum.max_fanout = sum.max_fanout.max(st.max_fanout);
        sum.total_fanout += st.total_fanout;
        sum.inserts += st.inserts;
        sum.removes += st.removes;
        sum.matches += st.matches;
        sum.cache_hits += st.cache_hits;
    }
}

/// Everything one shard reports.
#[derive(Debug, Clone)]
pub struct ShardSnapshot {
    pub shard: usize,
    pub in_msgs: u64,
    pub in_bytes: u64,
    pub out_msgs: u64,
    pub out_bytes: u64,
    pub slow_consumers: u64,
    pub stale_connections: u64,
    pub max_loop_lag_us: u64,
    pub sublist: SublistSnapshot,
    /// Per account, in the options' account order.
    pub accounts: Vec<AccountSnapshot>,
    pub connections: Vec<ConnSnapshot>,
    pub closed: Vec<ConnSnapshot>,
}

/// The control executor's ends of one shard's lanes (unconnected until
/// `connect` runs on the control executor).
pub struct ControlEnds {
    pub requests: shared_channel::SharedSender<ControlRequest>,
    pub replies: shared_channel::SharedReceiver<ShardSnapshot>,
}

/// A shard's ends.
pub(crate) struct ShardControlEnds {
    pub requests: shared_channel::SharedReceiver<ControlRequest>,
    pub replies: shared_channel::SharedSender<ShardSnapshot>,
}

pub(crate) fn lanes() -> (ControlEnds, ShardControlEnds) {
    let (req_tx, req_rx) = shared_channel::new_bounded(16);
    let (rep_tx, rep_rx) = shared_channel::new_bounded(16);
    (
        ControlEnds {
            requests: req_tx,
            replies: rep_rx,
        },
        ShardControlEnds {
            requests: req_rx,
            replies: rep_tx,
        },
    )
}

/// Connected ends on the control executor: one request at a time per shard.
pub struct ShardLink {
    requests: ConnectedSender<ControlRequest>,
    replies: ConnectedReceiver<ShardSnapshot>,
}

impl ControlEnds {
    pub async fn connect(self) -> ShardLink {
        let replies = glommio::spawn_local(self.replies.connect());
        let requests = self.requests.connect().await;
        ShardLink {
            requests,
            replies: replies.await,
        }
    }
}

impl ShardLink {
    /// Asks the shard; `None` if it has stopped.
    pub async fn ask(&self, request: ControlRequest) -> Option<ShardSnapshot> {
        self.requests.send(request).await.ok()?;
        self.replies.recv().await
    }
}

fn wall_clock(at: Instant, now: Instant, wall_now: SystemTime) -> SystemTime {
    wall_now
        .checked_sub(now.saturating_duration_since(at))
        .unwrap_or(wall_now)
}

fn account_name(shard: &Shard, account: u32) -> String {
    shard
        .account(account)
        .map_or_else(String::new, |a| a.name.clone())
}

pub(crate) fn snapshot(shard: &Shard, subs: bool) -> ShardSnapshot {
    let now = Instant::now();
    let wall_now = SystemTime::now();
    let mut connections = Vec::new();
    for client in shard.clients.borrow().values() {
        let (name, lang, version) = client.identity();
        let (in_msgs, out_msgs, in_bytes, out_bytes) = client.counts();
        let sub_list = if subs {
            client
                .subscriptions()
                .into_iter()
                .map(|s| SubSnapshot {
                    subject: String::from_utf8_lossy(&s.subject).into_owned(),
                    queue: s
                        .queue
                        .as_ref()
                        .map(|q| String::from_utf8_lossy(q).into_owned()),
                    sid: String::from_utf8_lossy(&s.sid).into_owned(),
                    msgs: s.delivered.get(),
                    max: s.max.get(),
                    cid: client.cid,
                    account: account_name(shard, client.account()),
                })
                .collect()
        } else {
            Vec::new()
        };
        connections.push(ConnSnapshot {
            cid: client.cid,
            shard: shard.id,
            ip: client.addr.ip().to_string(),
            port: client.addr.port(),
            start: client.start,
            last_activity: wall_clock(client.last_activity(), now, wall_now),
            stop: None,
            reason: None,
            pending_bytes: client.pending_chunks().1,
            in_msgs,
            out_msgs,
            in_bytes,
            out_bytes,
            subscriptions: client.subscription_count(),
            name,
            lang,
            version,
            account: account_name(shard, client.account()),
            user: client.authenticated_as().map(|w| w.raw()),
            subs: sub_list,
            tls: client.tls_state(),
        });
    }
    let closed = shard
        .closed
        .borrow()
        .iter()
        .map(|c| ConnSnapshot {
            cid: c.cid,
            shard: shard.id,
            ip: c.addr.ip().to_string(),
            port: c.addr.port(),
            start: c.start,
            last_activity: c.stop,
            stop: Some(c.stop),
            reason: Some(c.reason.to_string()),
            pending_bytes: 0,
            in_msgs: c.in_msgs,
            out_msgs: c.out_msgs,
            in_bytes: c.in_bytes,
            out_bytes: c.out_bytes,
            subscriptions: 0,
            name: c.name.clone(),
            lang: c.lang.clone(),
            version: c.version.clone(),
            account: account_name(shard, c.account),
            user: c.user.clone(),
            subs: Vec::new(),
            tls: c.tls.clone(),
        })
        .collect();
    let mut sublist = SublistSnapshot::default();
    let mut accounts = Vec::with_capacity(shard.accounts.borrow().len());
    for acc in shard.accounts.borrow().iter() {
        let sl = acc.sublist.borrow();
        let mut local = 0;
        sl.for_each(|_, _, e| {
            if matches!(e, Interest::Local(_)) {
                local += 1;
            }
        });
        let one = SublistSnapshot {
            subscriptions: local,
            stats: sl.stats(),
        };
        sublist.add(&one);
        accounts.push(AccountSnapshot {
            name: acc.name.clone(),
            connections: acc.clients.get(),
            sublist: one,
            sent_msgs: acc.stats.sent_msgs.get(),
            sent_bytes: acc.stats.sent_bytes.get(),
            received_msgs: acc.stats.received_msgs.get(),
            received_bytes: acc.stats.received_bytes.get(),
        });
    }
    let stats = &shard.stats;
    ShardSnapshot {
        shard: shard.id,
        in_msgs: stats.in_msgs.get(),
        in_bytes: stats.in_bytes.get(),
        out_msgs: stats.out_msgs.get(),
        out_bytes: stats.out_bytes.get(),
        slow_consumers: stats.slow_consumers.get(),
        stale_connections: stats.stale_connections.get(),
        max_loop_lag_us: stats.max_loop_lag_us.get(),
        sublist,
        accounts,
        connections,
        closed,
    }
}

/// Serves the control executor's requests on a shard.
pub(crate) async fn serve(shard: Rc<Shard>, ends: ShardControlEnds) {
    let replies = glommio::spawn_local(ends.replies.connect());
    let requests = ends.requests.connect().await;
    let replies = replies.await;
    while let Some(request) = requests.recv().await {
        let ControlRequest::Snapshot { subs } = request;
        if replies.send(snapshot(&shard, subs)).await.is_err() {
            break;
        }
    }
}
