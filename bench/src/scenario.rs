//! What a benchmark run does, the named scenarios `compare` runs, and their goals.
//!
//! Extension point: a new kind of load gets a [`Kind`] variant, an arm in
//! [`crate::run::run`], and (if it should be part of comparisons) an entry in
//! [`NAMED`]. The JetStream kinds are declared already and answer "not implemented yet".

use std::time::Duration;

use anyhow::{bail, Result};
use serde::Serialize;

/// How a JetStream publisher waits for its acks (for the later JetStream scenarios).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JsAck {
    /// One publish, wait for its ack, next.
    Sync,
    /// Up to `window` publishes outstanding.
    Async { window: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Publishers only, no subscribers: the server reads and discards.
    Pub,
    /// Publishers and `subs` subscribers on one subject (fan-out, or a queue group).
    PubSub,
    /// One requester with one request in flight, `subs` responders.
    ReqRep,
    /// JetStream publish with acks.
    JsPub { ack: JsAck },
}

/// When a run stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Duration(Duration),
    /// Messages per publisher, or requests for request/reply.
    Count(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    pub name: String,
    pub kind: Kind,
    /// Payload bytes per message.
    pub size: usize,
    pub publishers: usize,
    /// Subscribers (or responders for request/reply).
    pub subs: usize,
    /// Subscribers form one queue group instead of each getting every message.
    pub queue: bool,
    pub limit: Limit,
    /// Flow-control window in messages; None picks one from the message size.
    pub window: Option<u64>,
}

impl Scenario {
    /// One line saying what the scenario does, for tables and JSON.
    pub fn describe(&self) -> String {
        let limit = match self.limit {
            Limit::Duration(d) => format!("{:.3}s", d.as_secs_f64()),
            Limit::Count(n) => format!("{n} msgs"),
        };
        match self.kind {
            Kind::Pub => format!("{} pub, no subs, {} B, {limit}", self.publishers, self.size),
            Kind::PubSub if self.queue => format!(
                "{} pub -> queue group of {}, {} B, {limit}",
                self.publishers, self.subs, self.size
            ),
            Kind::PubSub => format!(
                "{} pub -> {} sub, {} B, {limit}",
                self.publishers, self.subs, self.size
            ),
            Kind::ReqRep => format!(
                "request/reply, 1 in flight, {} responder, {} B, {limit}",
                self.subs, self.size
            ),
            Kind::JsPub { ack: JsAck::Sync } => format!(
                "{} JetStream pub, 1 ack awaited, {} B, {limit}",
                self.publishers, self.size
            ),
            Kind::JsPub {
                ack: JsAck::Async { window },
            } => format!(
                "{} JetStream pub, {window} acks in flight each, {} B, {limit}",
                self.publishers, self.size
            ),
        }
    }
}

/// A named scenario for `compare`.
pub struct Named {
    pub name: &'static str,
    kind: Kind,
    size: usize,
    publishers: usize,
    subs: usize,
    queue: bool,
}

/// Every named scenario; the first seven are the goal set that `--scenarios all` runs.
pub const NAMED: &[Named] = &[
    Named::new("pubsub-16", Kind::PubSub, 16, 1, 1, false),
    Named::new("fanout4-16", Kind::PubSub, 16, 1, 4, false),
    Named::new("fanout4-128", Kind::PubSub, 128, 1, 4, false),
    Named::new("queue4-16", Kind::PubSub, 16, 1, 4, true),
    Named::new("pubsub-1k", Kind::PubSub, 1024, 1, 1, false),
    Named::new("pub2-16", Kind::Pub, 16, 2, 0, false),
    Named::new("reqrep-16", Kind::ReqRep, 16, 1, 1, false),
    // Extras, run only when named.
    Named::new("pub1-16", Kind::Pub, 16, 1, 0, false),
    Named::new("fanout4-1k", Kind::PubSub, 1024, 1, 4, false),
    // JetStream (start both servers with JetStream on and a store directory in
    // their working directory, e.g. `-js -sd js`).
    Named::new(
        "js-pub1-128",
        Kind::JsPub { ack: JsAck::Sync },
        128,
        1,
        0,
        false,
    ),
    Named::new(
        "js-pub256-128",
        Kind::JsPub {
            ack: JsAck::Async { window: 256 },
        },
        128,
        1,
        0,
        false,
    ),
    Named::new(
        "js-pub4x256-128",
        Kind::JsPub {
            ack: JsAck::Async { window: 256 },
        },
        128,
        4,
        0,
        false,
    ),
];

/// How many leading entries of [`NAMED`] make up `all`.
pub const ALL_COUNT: usize = 7;

impl Named {
    const fn new(
        name: &'static str,
        kind: Kind,
        size: usize,
        publishers: usize,
        subs: usize,
        queue: bool,
    ) -> Self {
        Self {
            name,
            kind,
            size,
            publishers,
            subs,
            queue,
        }
    }

    pub fn build(&self, limit: Limit) -> Scenario {
        Scenario {
            name: self.name.to_string(),
            kind: self.kind,
            size: self.size,
            publishers: self.publishers,
            subs: self.subs,
            queue: self.queue,
            limit,
            window: None,
        }
    }
}

/// Resolves `all` or a comma-separated list of names.
pub fn select(spec: &str, limit: Limit) -> Result<Vec<Scenario>> {
    let mut out: Vec<Scenario> = Vec::new();
    for name in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if name == "all" {
            out.extend(NAMED[..ALL_COUNT].iter().map(|n| n.build(limit)));
            continue;
        }
        let Some(n) = NAMED.iter().find(|n| n.name == name) else {
            let known: Vec<&str> = NAMED.iter().map(|n| n.name).collect();
            bail!(
                "unknown scenario {name:?}; known: all, {}",
                known.join(", ")
            );
        };
        out.push(n.build(limit));
    }
    if out.is_empty() {
        bail!("no scenarios selected");
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|s| seen.insert(s.name.clone()));
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cmp {
    AtLeast,
    AtMost,
}

/// A target for the ratio A/B (A is the server under test, B the reference).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Goal {
    pub cmp: Cmp,
    pub ratio: f64,
}

impl Goal {
    pub fn met(&self, ratio: f64) -> bool {
        match self.cmp {
            Cmp::AtLeast => ratio >= self.ratio,
            Cmp::AtMost => ratio <= self.ratio,
        }
    }

    pub fn label(&self) -> String {
        match self.cmp {
            Cmp::AtLeast => format!(">={:.2}x", self.ratio),
            Cmp::AtMost => format!("<={:.2}x", self.ratio),
        }
    }
}

/// Metric names used in summaries.
pub const M_RATE: &str = "msgs/s";
pub const M_P50: &str = "p50 us";
pub const M_P99: &str = "p99 us";
pub const M_IDLE_RSS: &str = "idle RSS MiB";

/// The project's performance goals (issue #3), as ratios strait / nats-server.
pub fn goal_for(scenario: &str, metric: &str) -> Option<Goal> {
    let at_least = |r| {
        Some(Goal {
            cmp: Cmp::AtLeast,
            ratio: r,
        })
    };
    let at_most = |r| {
        Some(Goal {
            cmp: Cmp::AtMost,
            ratio: r,
        })
    };
    match (scenario, metric) {
        ("pubsub-16", M_RATE) => at_least(2.0),
        ("fanout4-16" | "fanout4-128", M_RATE) => at_least(2.0),
        ("queue4-16", M_RATE) => at_least(1.5),
        ("pubsub-1k", M_RATE) => at_least(1.3),
        ("pub2-16", M_RATE) => at_least(2.0),
        ("reqrep-16", M_P50 | M_P99) => at_most(0.8),
        ("server", M_IDLE_RSS) => at_most(0.75),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_the_goal_set() {
        let limit = Limit::Duration(Duration::from_secs(1));
        let names: Vec<String> = select("all", limit)
            .expect("all")
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(
            names,
            [
                "pubsub-16",
                "fanout4-16",
                "fanout4-128",
                "queue4-16",
                "pubsub-1k",
                "pub2-16",
                "reqrep-16"
            ]
        );
        for n in &names {
            let has_goal = goal_for(n, M_RATE).is_some() || goal_for(n, M_P50).is_some();
            assert!(has_goal, "{n} has no goal");
        }
    }

    #[test]
    fn select_lists_dedups_and_rejects_unknown() {
        let limit = Limit::Count(10);
        let s = select("reqrep-16, pub1-16,reqrep-16", limit).expect("list");
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].kind, Kind::Pub);
        assert!(select("nope", limit).is_err());
        assert!(select(" , ", limit).is_err());
    }

    #[test]
    fn goals_compare() {
        let g = goal_for("reqrep-16", M_P99).expect("goal");
        assert!(g.met(0.5) && !g.met(0.9));
        let g = goal_for("queue4-16", M_RATE).expect("goal");
        assert!(g.met(1.5) && !g.met(1.2));
        assert_eq!(g.label(), ">=1.50x");
        assert!(goal_for("pub1-16", M_RATE).is_none());
    }
}
