//! Subscription scale: how long a server takes to register many subscriptions
//! (time from the first SUB to the PONG that follows the last), what it holds for
//! them (RSS), how fast it then routes a publish to one matching subscriber and to
//! none, and how much memory comes back when the subscribers leave. Every server
//! in one run, the last named being the reference the ratios divide by.
//!
//! Subjects, for subscription `i`: `literal` is `dev.<i mod 1000>.temp.<i>`,
//! `star` is `dev.*.temp.<i>`, `tail` is `dev.<i>.>`. The matching publish goes
//! to a subject only subscription 7 matches; the unmatched one to `dev.none.x`,
//! which shares the subjects' first token and matches none of them.

use std::io::Read;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::conn::Conn;
use crate::procstat;
use crate::server::{ServerProc, ServerSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Literal,
    Star,
    Tail,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Literal => "literal",
            Kind::Star => "star",
            Kind::Tail => "tail",
        }
    }

    fn subject(self, i: usize) -> String {
        match self {
            Kind::Literal => format!("dev.{}.temp.{i}", i % 1000),
            Kind::Star => format!("dev.*.temp.{i}"),
            Kind::Tail => format!("dev.{i}.>"),
        }
    }

    /// A subject only subscription 7 matches.
    fn matching(self) -> &'static str {
        match self {
            Kind::Literal => "dev.7.temp.7",
            Kind::Star => "dev.x.temp.7",
            Kind::Tail => "dev.7.x",
        }
    }
}

const UNMATCHED: &str = "dev.none.x";

pub struct SubsOptions {
    pub servers: Vec<ServerSpec>,
    pub counts: Vec<usize>,
    pub kinds: Vec<Kind>,
    pub connections: Vec<usize>,
    pub publish_for: Duration,
    pub settle: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct SubsRun {
    pub server: String,
    pub kind: Kind,
    pub subscriptions: usize,
    pub connections: usize,
    pub seconds_to_pong: f64,
    pub idle_rss_kb: u64,
    pub rss_kb: u64,
    pub publish_matched_per_sec: f64,
    pub publish_unmatched_per_sec: f64,
    pub rss_after_close_kb: u64,
}

/// Connections tried to place a publisher on another shard than the subscriber.
const PLACEMENT_TRIES: usize = 64;

/// Publishes to `subject` for `period`, synchronizing with a PING every batch so
/// the figure is what the server processed. Messages per second. With `away`
/// (a subscriber's client id and the shard count), the publisher is on another
/// shard than that subscriber, so the figure is the cross-shard one whatever
/// the kernel's spreading of connections.
fn publish_rate(
    server: &ServerProc,
    subject: &str,
    period: Duration,
    away: Option<(u64, u64)>,
) -> Result<f64> {
    let mut conn = Conn::connect(&server.endpoint(), "subs-publisher")?;
    if let Some((home, shards)) = away.filter(|&(_, shards)| shards > 1) {
        let mut tries = 1;
        while conn.client_id.map(|id| id % shards) == Some(home % shards) {
            if tries == PLACEMENT_TRIES {
                bail!("no publisher connection landed off shard {}", home % shards);
            }
            conn = Conn::connect(&server.endpoint(), "subs-publisher")?;
            tries += 1;
        }
    }
    let batch: Vec<u8> = (0..500)
        .flat_map(|_| format!("PUB {subject} 16\r\n0123456789abcdef\r\n").into_bytes())
        .collect();
    conn.sync()?;
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < period {
        conn.send(&batch)?;
        conn.sync()?;
        sent += 500;
    }
    Ok(sent as f64 / started.elapsed().as_secs_f64())
}

fn one_run(
    spec: &ServerSpec,
    kind: Kind,
    count: usize,
    connections: usize,
    opts: &SubsOptions,
) -> Result<SubsRun> {
    let mut server = ServerProc::start(spec)?;
    let idle = server.idle_rss_kb(opts.settle)?;
    let mut conns: Vec<Conn> = (0..connections)
        .map(|i| Conn::connect(&server.endpoint(), &format!("subs-{i}")))
        .collect::<Result<_>>()?;
    // Every connection's SUB lines are ready before the clock starts.
    let mut scripts: Vec<Vec<u8>> = vec![Vec::new(); connections];
    for i in 0..count {
        let script = &mut scripts[i % connections];
        script.extend_from_slice(format!("SUB {} {}\r\n", kind.subject(i), i + 1).as_bytes());
    }
    let started = Instant::now();
    // The server answers nothing before a PING, so writing every script first
    // cannot block on our unread input.
    for (conn, script) in conns.iter_mut().zip(&scripts) {
        conn.send(script)?;
    }
    for conn in &mut conns {
        conn.sync()
            .with_context(|| format!("{} subscribing", spec.name))?;
    }
    let seconds_to_pong = started.elapsed().as_secs_f64();
    std::thread::sleep(opts.settle);
    let rss = procstat::sample(server.pid)?.rss_kb;
    // The matching subscriber's connection must keep reading.
    let mut matched_conn = conns[7 % connections].stream.try_clone()?;
    let draining = std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        while matches!(matched_conn.read(&mut buf), Ok(n) if n > 0) {}
    });
    let away = conns[7 % connections].client_id.zip(spec.shards());
    let matched = publish_rate(&server, kind.matching(), opts.publish_for, away)?;
    let unmatched = publish_rate(&server, UNMATCHED, opts.publish_for, away)?;
    server.check_alive()?;
    for c in &conns {
        let _ = c.stream.shutdown(std::net::Shutdown::Both);
    }
    drop(conns);
    let _ = draining.join();
    let after = rss_after_close(&server, idle, rss)?;
    Ok(SubsRun {
        server: spec.name.clone(),
        kind,
        subscriptions: count,
        connections,
        seconds_to_pong,
        idle_rss_kb: idle,
        rss_kb: rss,
        publish_matched_per_sec: matched,
        publish_unmatched_per_sec: unmatched,
        rss_after_close_kb: after,
    })
}

/// How long memory may take to come back after the subscribers leave: closing
/// a million subscriptions takes a moment, and allocators return freed pages
/// on their own schedule (jemalloc's decay, Go's scavenger).
const RELEASE_WAIT: Duration = Duration::from_secs(10);

/// The lowest RSS within `RELEASE_WAIT` of the close, or the first reading
/// within 10 % of the growth over `idle`.
fn rss_after_close(server: &ServerProc, idle: u64, with: u64) -> Result<u64> {
    let deadline = Instant::now() + RELEASE_WAIT;
    let mut lowest = u64::MAX;
    loop {
        std::thread::sleep(Duration::from_millis(250));
        lowest = lowest.min(procstat::sample(server.pid)?.rss_kb);
        if lowest.saturating_sub(idle) * 10 <= with.saturating_sub(idle)
            || Instant::now() >= deadline
        {
            return Ok(lowest);
        }
    }
}

pub fn run(opts: &SubsOptions) -> Result<Vec<SubsRun>> {
    let mut runs = Vec::new();
    for &kind in &opts.kinds {
        for &count in &opts.counts {
            for &connections in &opts.connections {
                for spec in &opts.servers {
                    let r = one_run(spec, kind, count, connections, opts)?;
                    eprintln!(
                        "  {:<8} {:<7} {count} subs / {connections} conns: PONG after {:.2}s, RSS {} MiB, pub {:.0}/{:.0} msgs/s, after close {} MiB",
                        r.server,
                        kind.name(),
                        r.seconds_to_pong,
                        r.rss_kb / 1024,
                        r.publish_matched_per_sec,
                        r.publish_unmatched_per_sec,
                        r.rss_after_close_kb / 1024
                    );
                    runs.push(r);
                }
            }
        }
    }
    Ok(runs)
}

/// One row per run, with ratios to the reference (the last server) of the same
/// kind, count and connections, as a Markdown table.
pub fn table(opts: &SubsOptions, runs: &[SubsRun]) -> String {
    let reference = opts.servers.last().map(|s| s.name.as_str()).unwrap_or("");
    let mut out = String::from(
        "| server | kind | subs | conns | s to PONG | ratio | RSS MiB | ratio | pub 1 match/s | ratio | pub 0 match/s | ratio | idle MiB | RSS after close MiB |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for r in runs {
        let base = runs.iter().find(|b| {
            b.server == reference
                && b.kind == r.kind
                && b.subscriptions == r.subscriptions
                && b.connections == r.connections
        });
        let ratio = |f: &dyn Fn(&SubsRun) -> f64| match base {
            Some(b) if f(b) > 0.0 => format!("{:.2}x", f(r) / f(b)),
            _ => "-".into(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} | {} | {:.0} | {} | {:.0} | {} | {:.0} | {} | {:.0} | {:.0} |\n",
            r.server,
            r.kind.name(),
            r.subscriptions,
            r.connections,
            r.seconds_to_pong,
            ratio(&|x| x.seconds_to_pong),
            r.rss_kb as f64 / 1024.0,
            ratio(&|x| x.rss_kb as f64),
            r.publish_matched_per_sec,
            ratio(&|x| x.publish_matched_per_sec),
            r.publish_unmatched_per_sec,
            ratio(&|x| x.publish_unmatched_per_sec),
            r.idle_rss_kb as f64 / 1024.0,
            r.rss_after_close_kb as f64 / 1024.0,
        ));
    }
    out
}
