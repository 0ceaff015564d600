//! Side-by-side runs of two servers.
//!
//! Every (repetition, scenario, server) run gets a freshly started server on a fresh
//! port and temp dir, killed right after: no run inherits another's heap, connections
//! or peak RSS, and VmHWM is that run's peak. For each scenario the two servers run
//! back to back, in the order A,B on even repetitions and B,A on odd ones (ABBA), so a
//! slow drift of the shared machine's load does not favour the server that always
//! goes first. Only ratios from one run mean anything on a noisy machine.

use std::time::Duration;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::run::{self, Progress, RunResult, Target};
use crate::scenario::{self, Goal, Kind, Limit, Scenario, M_IDLE_RSS, M_P50, M_P99, M_RATE};
use crate::server::{ServerProc, ServerSpec};
use crate::stats::{ratio, Summary};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Higher,
    Lower,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo {
    pub name: String,
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompareRun {
    pub rep: usize,
    pub server: String,
    pub scenario: String,
    pub idle_rss_kb: Option<u64>,
    pub result: Option<RunResult>,
    pub error: Option<String>,
}

/// One line of the comparison: a metric of a scenario on both servers.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub metric: String,
    pub better: Better,
    pub a: Option<Summary>,
    pub b: Option<Summary>,
    /// median(A) / median(B).
    pub ratio: Option<f64>,
    /// Range of A/B over repetitions, pairing each repetition's A with its B.
    pub ratio_min: Option<f64>,
    pub ratio_max: Option<f64>,
    /// The per-repetition ratios differ by more than [`NOISY_SPREAD`]: don't trust it.
    pub noisy: bool,
    pub goal: Option<Goal>,
    pub met: Option<bool>,
}

/// Median cores used during a scenario, per server: the server's and the harness's.
#[derive(Debug, Clone, Serialize)]
pub struct CpuRow {
    pub scenario: String,
    pub a_server_cores: Option<f64>,
    pub a_harness_cores: Option<f64>,
    pub b_server_cores: Option<f64>,
    pub b_harness_cores: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    pub servers: Vec<ServerInfo>,
    pub reps: usize,
    pub duration_s: Option<f64>,
    pub count: Option<u64>,
    pub scenarios: Vec<String>,
    pub method: String,
    /// /proc/loadavg (1, 5, 15 minutes) before and after: how busy the machine was.
    pub loadavg_before: Option<[f64; 3]>,
    pub loadavg_after: Option<[f64; 3]>,
    pub runs: Vec<CompareRun>,
    pub rows: Vec<Row>,
    pub cpu: Vec<CpuRow>,
}

pub struct CompareOptions {
    pub servers: Vec<ServerSpec>,
    pub reps: usize,
    pub limit: Limit,
    pub scenarios: Vec<Scenario>,
    pub settle: Duration,
}

/// max/min of the per-repetition ratios above which a row is flagged noisy.
pub const NOISY_SPREAD: f64 = 1.3;

fn is_noisy(range: Option<Summary>) -> bool {
    range.is_some_and(|s| s.min > 0.0 && s.max / s.min > NOISY_SPREAD)
}

pub fn loadavg() -> Option<[f64; 3]> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = s.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

pub const METHOD: &str =
    "fresh server per run; per scenario A,B on even reps and B,A on odd reps (ABBA)";

pub fn compare(opts: &CompareOptions) -> Result<CompareReport> {
    if opts.servers.len() != 2 {
        bail!(
            "compare needs exactly two --server NAME=COMMAND (got {})",
            opts.servers.len()
        );
    }
    if opts.servers[0].name == opts.servers[1].name {
        bail!("the two servers need different names");
    }
    let loadavg_before = loadavg();
    let total = opts.reps * opts.scenarios.len() * 2;
    let mut runs = Vec::with_capacity(total);
    for rep in 0..opts.reps {
        for sc in &opts.scenarios {
            let order: [usize; 2] = if rep % 2 == 0 { [0, 1] } else { [1, 0] };
            for si in order {
                let spec = &opts.servers[si];
                let label = format!(
                    "[{}/{total}] rep {} {} on {}",
                    runs.len() + 1,
                    rep + 1,
                    sc.name,
                    spec.name
                );
                let progress = Progress::new(label);
                let (idle, result) = one_run(spec, sc, opts.settle, &progress);
                if let Err(e) = &result {
                    progress.finish(&format!("FAILED: {e:#}"));
                }
                runs.push(CompareRun {
                    rep,
                    server: spec.name.clone(),
                    scenario: sc.name.clone(),
                    idle_rss_kb: idle,
                    error: result.as_ref().err().map(|e| format!("{e:#}")),
                    result: result.ok(),
                });
            }
        }
    }
    let (duration_s, count) = match opts.limit {
        Limit::Duration(d) => (Some(d.as_secs_f64()), None),
        Limit::Count(c) => (None, Some(c)),
    };
    let names = [opts.servers[0].name.as_str(), opts.servers[1].name.as_str()];
    let scen_names: Vec<String> = opts.scenarios.iter().map(|s| s.name.clone()).collect();
    Ok(CompareReport {
        servers: opts
            .servers
            .iter()
            .map(|s| ServerInfo {
                name: s.name.clone(),
                command: s.command.clone(),
            })
            .collect(),
        reps: opts.reps,
        duration_s,
        count,
        rows: summarize(&runs, names, &scen_names),
        cpu: cpu_rows(&runs, names, &scen_names),
        scenarios: scen_names,
        method: METHOD.to_string(),
        loadavg_before,
        loadavg_after: loadavg(),
        runs,
    })
}

/// Starts the server, reads its idle RSS, runs, checks it survived, kills it.
fn one_run(
    spec: &ServerSpec,
    sc: &Scenario,
    settle: Duration,
    progress: &Progress,
) -> (Option<u64>, Result<RunResult>) {
    progress.update("starting server");
    let mut srv = match ServerProc::start(spec) {
        Ok(s) => s,
        Err(e) => return (None, Err(e)),
    };
    let idle = srv.idle_rss_kb(settle).ok();
    let target = Target {
        endpoint: srv.endpoint(),
        pid: Some(srv.pid),
    };
    let res = run::run(&target, sc, progress);
    let res = match (res, srv.check_alive()) {
        (Ok(r), Ok(())) => Ok(r),
        (Err(e), Ok(())) => Err(e),
        (_, Err(dead)) => Err(dead),
    };
    (idle, res)
}

/// Disk cache flushes per second during a run.
pub const M_FLUSHES: &str = "flushes/s";

/// (metric, which way is better, value) of a run.
pub fn metrics(r: &RunResult) -> Vec<(&'static str, Better, f64)> {
    let mut m = Vec::new();
    // Request/reply is about its latency; everything else about its rate first.
    if r.kind != Kind::ReqRep {
        m.push((M_RATE, Better::Higher, r.msgs_per_s));
    }
    if let Some(l) = &r.latency {
        m.push((M_P50, Better::Lower, l.p50_us));
        m.push(("p90 us", Better::Lower, l.p90_us));
        m.push((M_P99, Better::Lower, l.p99_us));
        m.push(("p99.9 us", Better::Lower, l.p999_us));
        m.push(("max us", Better::Lower, l.max_us));
    }
    if r.kind == Kind::ReqRep {
        m.push(("req/s", Better::Higher, r.msgs_per_s));
    }
    if let Some(d) = &r.disk {
        // Fewer flushes for the same acknowledged messages is better batching.
        m.push((M_FLUSHES, Better::Lower, d.per_s));
        if let Some(per_flush) = d.msgs_per_flush {
            m.push(("msgs/flush", Better::Higher, per_flush));
        }
    }
    if let Some(s) = &r.server {
        m.push(("server ns/msg", Better::Lower, s.cpu_ns_per_msg));
        m.push(("peak RSS MiB", Better::Lower, s.peak_rss_kb as f64 / 1024.0));
    }
    m
}

/// Samples of one metric for one server, by repetition.
fn samples(runs: &[CompareRun], server: &str, scenario: &str, metric: &str) -> Vec<(usize, f64)> {
    runs.iter()
        .filter(|r| r.server == server && r.scenario == scenario)
        .filter_map(|r| {
            let res = r.result.as_ref()?;
            metrics(res)
                .into_iter()
                .find(|(name, _, _)| *name == metric)
                .map(|(_, _, v)| (r.rep, v))
        })
        .collect()
}

fn make_row(
    scenario: &str,
    metric: &str,
    better: Better,
    a: &[(usize, f64)],
    b: &[(usize, f64)],
) -> Row {
    let vals = |s: &[(usize, f64)]| s.iter().map(|(_, v)| *v).collect::<Vec<_>>();
    let sa = Summary::of(&vals(a));
    let sb = Summary::of(&vals(b));
    let r = match (sa, sb) {
        (Some(x), Some(y)) => ratio(x.median, y.median),
        _ => None,
    };
    let per_rep: Vec<f64> = a
        .iter()
        .filter_map(|(rep, va)| {
            b.iter()
                .find(|(rb, _)| rb == rep)
                .and_then(|(_, vb)| ratio(*va, *vb))
        })
        .collect();
    let range = Summary::of(&per_rep);
    let goal = scenario::goal_for(scenario, metric);
    Row {
        scenario: scenario.to_string(),
        metric: metric.to_string(),
        better,
        a: sa,
        b: sb,
        ratio: r,
        ratio_min: range.map(|s| s.min),
        ratio_max: range.map(|s| s.max),
        noisy: is_noisy(range),
        met: goal.zip(r).map(|(g, r)| g.met(r)),
        goal,
    }
}

pub fn summarize(runs: &[CompareRun], names: [&str; 2], scenarios: &[String]) -> Vec<Row> {
    let mut rows = Vec::new();
    for sc in scenarios {
        // Every metric any successful run of the scenario has, in first-seen order
        // (a run without disk flushes has no messages per flush).
        let mut listed: Vec<(&'static str, Better)> = Vec::new();
        for res in runs
            .iter()
            .filter(|r| &r.scenario == sc)
            .filter_map(|r| r.result.as_ref())
        {
            for (metric, better, _) in metrics(res) {
                if !listed.iter().any(|(m, _)| *m == metric) {
                    listed.push((metric, better));
                }
            }
        }
        if listed.is_empty() {
            rows.push(make_row(sc, M_RATE, Better::Higher, &[], &[]));
            continue;
        }
        for (metric, better) in listed {
            let a = samples(runs, names[0], sc, metric);
            let b = samples(runs, names[1], sc, metric);
            rows.push(make_row(sc, metric, better, &a, &b));
        }
    }
    let idle = |server: &str| -> Vec<(usize, f64)> {
        // Several starts per repetition: keep them all, keyed by repetition for pairing.
        runs.iter()
            .filter(|r| r.server == server)
            .filter_map(|r| r.idle_rss_kb.map(|kb| (r.rep, kb as f64 / 1024.0)))
            .collect()
    };
    let (a, b) = (idle(names[0]), idle(names[1]));
    let mut row = make_row("server", M_IDLE_RSS, Better::Lower, &a, &b);
    // Pairing by repetition is ambiguous with several starts per repetition; use the
    // per-repetition medians instead.
    let per_rep_median = |s: &[(usize, f64)], rep: usize| {
        crate::stats::median(
            &s.iter()
                .filter(|(r, _)| *r == rep)
                .map(|(_, v)| *v)
                .collect::<Vec<_>>(),
        )
    };
    let reps: std::collections::BTreeSet<usize> = a.iter().map(|(r, _)| *r).collect();
    let paired: Vec<f64> = reps
        .into_iter()
        .filter_map(|rep| ratio(per_rep_median(&a, rep)?, per_rep_median(&b, rep)?))
        .collect();
    let range = Summary::of(&paired);
    row.ratio_min = range.map(|s| s.min);
    row.ratio_max = range.map(|s| s.max);
    row.noisy = is_noisy(range);
    rows.push(row);
    rows
}

fn cpu_rows(runs: &[CompareRun], names: [&str; 2], scenarios: &[String]) -> Vec<CpuRow> {
    let med = |server: &str, sc: &str, f: &dyn Fn(&RunResult) -> Option<f64>| {
        let v: Vec<f64> = runs
            .iter()
            .filter(|r| r.server == server && r.scenario == sc)
            .filter_map(|r| r.result.as_ref().and_then(f))
            .collect();
        crate::stats::median(&v)
    };
    let server_cores = |r: &RunResult| r.server.map(|s| s.cores);
    let harness_cores = |r: &RunResult| Some(r.harness_cores);
    scenarios
        .iter()
        .map(|sc| CpuRow {
            scenario: sc.clone(),
            a_server_cores: med(names[0], sc, &server_cores),
            a_harness_cores: med(names[0], sc, &harness_cores),
            b_server_cores: med(names[1], sc, &server_cores),
            b_harness_cores: med(names[1], sc, &harness_cores),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::ServerUsage;

    fn result(sc: &str, rate: f64, ns: f64) -> RunResult {
        RunResult {
            scenario: sc.into(),
            description: String::new(),
            kind: Kind::PubSub,
            size: 16,
            elapsed_s: 1.0,
            published: 1,
            delivered: 1,
            lost: 0,
            msgs: 1,
            msgs_per_s: rate,
            mb_per_s: 0.0,
            harness_cpu_s: 0.1,
            harness_cores: 0.1,
            server: Some(ServerUsage {
                pid: 1,
                cpu_s: 1.0,
                cores: 1.0,
                cpu_ns_per_msg: ns,
                rss_kb: 1024,
                peak_rss_kb: 2048,
            }),
            latency: None,
            disk: None,
        }
    }

    fn run(rep: usize, server: &str, rate: f64, idle: u64) -> CompareRun {
        CompareRun {
            rep,
            server: server.into(),
            scenario: "pubsub-16".into(),
            idle_rss_kb: Some(idle),
            result: Some(result("pubsub-16", rate, 100.0)),
            error: None,
        }
    }

    #[test]
    fn summary_rows_ratios_and_goals() {
        let runs = vec![
            run(0, "a", 400.0, 5120),
            run(0, "b", 100.0, 10240),
            run(1, "b", 200.0, 10240),
            run(1, "a", 300.0, 5120),
            run(2, "a", 500.0, 5120),
            run(2, "b", 200.0, 10240),
        ];
        let rows = summarize(&runs, ["a", "b"], &["pubsub-16".to_string()]);
        let rate = rows.iter().find(|r| r.metric == M_RATE).expect("rate row");
        assert_eq!(rate.a.map(|s| s.median), Some(400.0));
        assert_eq!(rate.b.map(|s| s.median), Some(200.0));
        assert_eq!(rate.ratio, Some(2.0));
        assert_eq!((rate.ratio_min, rate.ratio_max), (Some(1.5), Some(4.0)));
        assert!(rate.noisy);
        assert_eq!(rate.met, Some(true));
        let idle = rows
            .iter()
            .find(|r| r.metric == M_IDLE_RSS)
            .expect("idle row");
        assert_eq!(idle.ratio, Some(0.5));
        assert_eq!(idle.met, Some(true));
        let ns = rows
            .iter()
            .find(|r| r.metric == "server ns/msg")
            .expect("ns row");
        assert_eq!((ns.ratio, ns.goal), (Some(1.0), None));
        assert!(!ns.noisy && !idle.noisy);
    }

    #[test]
    fn failed_runs_leave_gaps_not_panics() {
        let mut runs = vec![run(0, "a", 100.0, 1), run(0, "b", 100.0, 1)];
        runs[1].result = None;
        runs[1].error = Some("boom".into());
        let rows = summarize(&runs, ["a", "b"], &["pubsub-16".to_string()]);
        let rate = rows.iter().find(|r| r.metric == M_RATE).expect("rate row");
        assert!(rate.b.is_none() && rate.ratio.is_none() && rate.met.is_none());
        let rows = summarize(&[], ["a", "b"], &["x".to_string()]);
        assert_eq!(rows.len(), 2);
    }
}
