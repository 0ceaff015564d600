//! What monitoring sees of a shard: plain copies of its figures, made when the
//! control executor asks (see `control`).

use std::time::SystemTime;

use crate::sublist::SublistStats;

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
    /// Messages peers sent here on a folded interest pattern that nothing wanted.
    pub wasted_hops: u64,
    /// Messages not sent to a peer that had said nothing there wants their subject.
    pub hops_saved: u64,
    pub slow_consumers: u64,
    pub stale_connections: u64,
    pub max_loop_lag_us: u64,
    pub sublist: SublistSnapshot,
    /// Per account, in the options' account order.
    pub accounts: Vec<AccountSnapshot>,
    pub connections: Vec<ConnSnapshot>,
    pub closed: Vec<ConnSnapshot>,
}
