//! Reading a stream through consumers: pull fetches with and without acks, push and
//! ordered push delivery, a filter that matches few of a stream's many subjects, and
//! what thousands of idle consumers cost while nothing happens.
//!
//! Every server gets the same stream: `messages` messages spread round-robin over
//! `subjects` subjects `bench.c.<s % 100>.<s>`, so the filter `bench.c.7.*` matches
//! 1 % of the subjects and 1 % of the messages, scattered through the whole stream.
//! Each case reads with a fresh consumer from the first message to the last; a
//! consumer that loses or repeats messages fails the run instead of looking fast.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};

use crate::conn::read_some;
use crate::js::{first_line, JsConn, Reply};
use crate::procstat;
use crate::run::{fmt_count, Progress};
use crate::server::{ServerProc, ServerSpec};

const STREAM: &str = "BENCH_C";
const IDLE_STREAM: &str = "BENCH_IDLE";
/// The filter of the filtered case: one subject in a hundred.
const FILTER: &str = "bench.c.7.*";
/// A reader that sees nothing for this long means a broken run.
const STALL: Duration = Duration::from_secs(30);
/// Publishes in flight while filling the stream.
const FILL_WINDOW: usize = 256;
/// Expiry of every pull request: long enough that no fetch ends early.
const PULL_EXPIRES: Duration = Duration::from_secs(10);

pub struct ConsumeOptions {
    pub servers: Vec<ServerSpec>,
    pub messages: u64,
    pub subjects: u64,
    pub size: usize,
    /// Where the read stream lives: `file` (read from disk) or `memory`.
    pub storage: String,
    /// Leave out the push consumer without flow control (from a memory stream
    /// it outruns a reader on a shared core, which then goes as a slow consumer).
    pub skip_push: bool,
    pub idle_consumers: usize,
    /// How long idle CPU is measured, with and without the idle consumers.
    pub idle_for: Duration,
    pub settle: Duration,
}

/// How one consumer read the stream.
#[derive(Debug, Clone, Serialize)]
pub struct CaseRun {
    pub case: String,
    pub messages: u64,
    pub seconds: f64,
    pub msgs_per_s: f64,
}

/// What one server did in `js-consume`.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumeRun {
    pub server: String,
    pub messages: u64,
    pub subjects: u64,
    pub fill_s: f64,
    pub cases: Vec<CaseRun>,
    /// CONSUMER.CREATE round trip of a pull consumer over the whole stream, ms.
    pub create_all_ms: f64,
    /// The same for the consumer filtered to 1 % of the subjects, ms.
    pub create_filtered_ms: f64,
    pub idle: IdleCost,
}

/// Server CPU while nothing happens, before and after creating the idle consumers.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct IdleCost {
    pub consumers: usize,
    pub create_s: f64,
    /// CPU milliseconds per second of wall time (10 = 1 % of a core).
    pub cpu_ms_per_s_without: f64,
    pub cpu_ms_per_s_with: f64,
    pub rss_kb_without: u64,
    pub rss_kb_with: u64,
}

#[derive(Clone, Copy)]
pub(crate) enum Read {
    Pull { batch: u64, ack: bool },
    Push { ordered: bool },
}

pub fn run(opts: &ConsumeOptions) -> Result<Vec<ConsumeRun>> {
    if opts.servers.len() != 2 {
        bail!("js-consume needs exactly two --server");
    }
    if opts.subjects == 0 || opts.messages == 0 {
        bail!("js-consume needs at least one message and one subject");
    }
    opts.servers
        .iter()
        .map(|spec| run_one(spec, opts))
        .collect()
}

fn run_one(spec: &ServerSpec, opts: &ConsumeOptions) -> Result<ConsumeRun> {
    let progress = Progress::new(format!("[js-consume {}]", spec.name));
    progress.update("starting server");
    let mut srv = ServerProc::start(spec)?;
    let ep = srv.endpoint();
    let mut control = JsConn::connect(&ep, "bench-consume-control")?;
    control.check_payload(opts.size)?;
    control
        .create_stream_in(STREAM, &["bench.c.>".to_string()], opts.storage.as_str())
        .context("creating the stream (is JetStream enabled on the server?)")?;
    let fill_s = fill(&mut control, opts, &progress)
        .with_context(|| format!("filling the stream on {}", spec.name))?;
    let held = control.stream_messages(STREAM)?;
    if held != opts.messages {
        bail!("{STREAM} holds {held} of {} messages", opts.messages);
    }

    let mut reader = JsConn::connect(&ep, "bench-consume-reader")?;
    let cases = [
        (
            "pull 100, explicit acks",
            Read::Pull {
                batch: 100,
                ack: true,
            },
        ),
        (
            "pull 1000, explicit acks",
            Read::Pull {
                batch: 1000,
                ack: true,
            },
        ),
        (
            "pull 100, no acks",
            Read::Pull {
                batch: 100,
                ack: false,
            },
        ),
        (
            "pull 1000, no acks",
            Read::Pull {
                batch: 1000,
                ack: false,
            },
        ),
        ("push, no acks", Read::Push { ordered: false }),
        ("ordered push", Read::Push { ordered: true }),
    ];
    let mut runs = Vec::new();
    for (i, (case, read)) in cases.into_iter().enumerate() {
        if opts.skip_push && matches!(read, Read::Push { ordered: false }) {
            continue;
        }
        progress.update(&format!("reading: {case}"));
        let name = format!("C{i}");
        if let Read::Push { .. } = read {
            reader.subscribe(&deliver_subject(&name, &reader))?;
        }
        let config = consumer_config(&name, read, None, &reader);
        let (created, _) = create_consumer(&mut control, STREAM, &config)?;
        let seconds = consume(&mut reader, STREAM, &created, read, opts.messages)
            .with_context(|| format!("{case} on {}", spec.name))?;
        runs.push(case_run(case, opts.messages, seconds));
    }

    progress.update("creating the filtered consumer");
    let all_read = Read::Pull {
        batch: 1000,
        ack: false,
    };
    let (_, create_all) = create_consumer(
        &mut control,
        STREAM,
        &consumer_config("ALL", all_read, None, &reader),
    )?;
    let (filtered, create_filtered) = create_consumer(
        &mut control,
        STREAM,
        &consumer_config("FILTERED", all_read, Some(FILTER), &reader),
    )?;
    let matching = matching_messages(opts.messages, opts.subjects);
    if filtered.pending != matching {
        bail!(
            "the filtered consumer on {} counts {} pending messages, the stream has {matching}",
            spec.name,
            filtered.pending
        );
    }
    progress.update("reading through the filter");
    let seconds = consume(&mut reader, STREAM, &filtered, all_read, matching)
        .with_context(|| format!("the filtered consumer on {}", spec.name))?;
    runs.push(case_run(
        "pull 1000, no acks, 1 % filter",
        matching,
        seconds,
    ));
    control.delete_stream(STREAM)?;

    let idle = idle_cost(&mut srv, &mut control, opts, &progress)
        .with_context(|| format!("idle consumers on {}", spec.name))?;
    srv.check_alive()?;
    progress.finish(&format!(
        "{} msgs: {}; filtered consumer created in {:.1} ms; idle CPU with {} consumers {:.1} ms/s",
        fmt_count(opts.messages as f64),
        runs.iter()
            .map(|r| format!("{} {}/s", r.case, fmt_count(r.msgs_per_s)))
            .collect::<Vec<_>>()
            .join(", "),
        create_filtered.as_secs_f64() * 1e3,
        idle.consumers,
        idle.cpu_ms_per_s_with
    ));
    Ok(ConsumeRun {
        server: spec.name.clone(),
        messages: opts.messages,
        subjects: opts.subjects,
        fill_s,
        cases: runs,
        create_all_ms: create_all.as_secs_f64() * 1e3,
        create_filtered_ms: create_filtered.as_secs_f64() * 1e3,
        idle,
    })
}

fn case_run(case: &str, messages: u64, seconds: f64) -> CaseRun {
    CaseRun {
        case: case.to_string(),
        messages,
        seconds,
        msgs_per_s: messages as f64 / seconds.max(1e-9),
    }
}

/// How many of the first `messages` messages land on a subject the filter matches.
fn matching_messages(messages: u64, subjects: u64) -> u64 {
    let full_rounds = messages / subjects;
    let per_round = |n: u64| n / 100 + u64::from(n % 100 > 7);
    full_rounds * per_round(subjects) + per_round(messages % subjects)
}

fn subject_of(i: u64, subjects: u64) -> String {
    let s = i % subjects;
    format!("bench.c.{}.{s}", s % 100)
}

/// Publishes the stream's messages with `FILL_WINDOW` PubAcks in flight.
fn fill(c: &mut JsConn, opts: &ConsumeOptions, progress: &Progress) -> Result<f64> {
    let reply = c.ack_subject();
    let payload = vec![b'c'; opts.size];
    let start = Instant::now();
    c.pipelined(opts.messages, FILL_WINDOW, None, &mut |frame, i| {
        let subject = subject_of(i, opts.subjects);
        write!(frame, "PUB {subject} {reply} {}\r\n", opts.size)?;
        frame.extend_from_slice(&payload);
        frame.extend_from_slice(b"\r\n");
        if i > 0 && i % 50_000 == 0 {
            progress.update(&format!(
                "filling: {} of {}",
                fmt_count(i as f64),
                fmt_count(opts.messages as f64)
            ));
        }
        Ok(())
    })?;
    Ok(start.elapsed().as_secs_f64())
}

pub(crate) fn consumer_config(
    name: &str,
    read: Read,
    filter: Option<&str>,
    reader: &JsConn,
) -> Value {
    let mut config = json!({
        "durable_name": name,
        "deliver_policy": "all",
        "replay_policy": "instant",
    });
    match read {
        Read::Pull { ack, .. } => {
            config["ack_policy"] = json!(if ack { "explicit" } else { "none" });
        }
        Read::Push { ordered } => {
            config["ack_policy"] = json!("none");
            config["deliver_subject"] = json!(deliver_subject(name, reader));
            if ordered {
                // As the clients create an ordered consumer: ephemeral, in memory,
                // flow controlled, with heartbeats.
                config.as_object_mut().map(|c| c.remove("durable_name"));
                config["max_deliver"] = json!(1);
                config["flow_control"] = json!(true);
                config["idle_heartbeat"] = json!(5_000_000_000u64);
                config["mem_storage"] = json!(true);
                config["num_replicas"] = json!(1);
                config["inactive_threshold"] = json!(300_000_000_000u64);
            }
        }
    }
    if let Some(f) = filter {
        config["filter_subject"] = json!(f);
    }
    config
}

/// Where a push consumer delivers: a subject of its own, which the reader subscribes
/// to before the consumer exists (nats-server looks for interest in that subject
/// itself; a wildcard subscription made earlier does not wake a push consumer).
pub(crate) fn deliver_subject(name: &str, reader: &JsConn) -> String {
    format!("bench.deliver.{}.{name}", reader.inbox.replace('.', "_"))
}

/// A consumer as CONSUMER.CREATE described it.
pub(crate) struct Created {
    name: String,
    pub(crate) pending: u64,
}

pub(crate) fn create_consumer(
    c: &mut JsConn,
    stream: &str,
    config: &Value,
) -> Result<(Created, Duration)> {
    let subject = match config.get("durable_name").and_then(Value::as_str) {
        Some(name) => format!("$JS.API.CONSUMER.CREATE.{stream}.{name}"),
        None => format!("$JS.API.CONSUMER.CREATE.{stream}"),
    };
    let t0 = Instant::now();
    let info = c.request(
        &subject,
        &json!({"stream_name": stream, "config": config, "action": "create"}),
    )?;
    let took = t0.elapsed();
    let name = info
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("CONSUMER.CREATE answered without a name: {info}"))?
        .to_string();
    let pending = info.get("num_pending").and_then(Value::as_u64).unwrap_or(0);
    Ok((Created { name, pending }, took))
}

/// Reads `total` messages through the consumer; returns the seconds from the first
/// request (or the consumer's creation, for push) to the last message.
pub(crate) fn consume(
    c: &mut JsConn,
    stream: &str,
    consumer: &Created,
    read: Read,
    total: u64,
) -> Result<f64> {
    let next = format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{}", consumer.name);
    let pull_reply = format!("{}.pull", c.inbox);
    let expires = PULL_EXPIRES.as_nanos();
    let mut out = Vec::with_capacity(64 * 1024);
    let mut buf = std::mem::take(&mut c.buf);
    let start = Instant::now();
    let (mut got, mut awaited) = (0u64, 0u64);
    let mut last = Instant::now();
    let result = (|| {
        while got < total {
            if let Read::Pull { batch, .. } = read {
                if awaited == 0 {
                    awaited = batch.min(total - got);
                    let body = format!(r#"{{"batch":{awaited},"expires":{expires}}}"#);
                    write!(out, "PUB {next} {pull_reply} {}\r\n{body}\r\n", body.len())?;
                }
            }
            if !out.is_empty() {
                c.stream.write_all(&out).context("writing")?;
                out.clear();
            }
            let n = read_some(&mut c.stream, &mut buf)?;
            if n == 0 {
                if last.elapsed() > STALL {
                    bail!("{got} of {total} messages, then nothing for {STALL:?}");
                }
                continue;
            }
            last = Instant::now();
            let mut err = None;
            c.replies.feed(&buf[..n], &mut |r| match r {
                Reply::Msg {
                    headers: true,
                    reply,
                    body,
                } => {
                    let status = first_line(body);
                    if status.starts_with("NATS/1.0 100") {
                        // A flow control request wants an empty reply; a heartbeat none.
                        if let Some(reply) = reply {
                            out.extend_from_slice(b"PUB ");
                            out.extend_from_slice(reply);
                            out.extend_from_slice(b" 0\r\n\r\n");
                        }
                    } else {
                        err.get_or_insert(format!("status {status} after {got} messages"));
                    }
                }
                Reply::Msg { reply, .. } => {
                    got += 1;
                    awaited = awaited.saturating_sub(1);
                    if let (Read::Pull { ack: true, .. }, Some(reply)) = (read, reply) {
                        out.extend_from_slice(b"PUB ");
                        out.extend_from_slice(reply);
                        out.extend_from_slice(b" 4\r\n+ACK\r\n");
                    }
                }
                Reply::Ping => out.extend_from_slice(b"PONG\r\n"),
                Reply::Err(e) => {
                    err.get_or_insert(format!("-ERR {}", String::from_utf8_lossy(e)));
                }
            })?;
            if let Some(e) = err {
                bail!(e);
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        if got > total {
            bail!("{got} messages delivered, the stream holds {total}");
        }
        if !out.is_empty() {
            c.stream.write_all(&out).context("writing the last acks")?;
        }
        Ok(seconds)
    })();
    c.buf = buf;
    result
}

fn idle_cost(
    srv: &mut ServerProc,
    c: &mut JsConn,
    opts: &ConsumeOptions,
    progress: &Progress,
) -> Result<IdleCost> {
    c.create_stream(IDLE_STREAM, &["bench.idle".to_string()])?;
    progress.update("measuring idle CPU without consumers");
    let (cpu_without, rss_without) = idle_cpu(srv.pid, opts)?;
    let t0 = Instant::now();
    for i in 0..opts.idle_consumers {
        let name = format!("IDLE{i}");
        c.request(
            &format!("$JS.API.CONSUMER.CREATE.{IDLE_STREAM}.{name}"),
            &json!({"stream_name": IDLE_STREAM, "config": {
                "durable_name": name, "ack_policy": "explicit", "deliver_policy": "all",
            }}),
        )?;
        if i % 500 == 0 {
            progress.update(&format!(
                "created {i} of {} idle consumers",
                opts.idle_consumers
            ));
        }
    }
    let create_s = t0.elapsed().as_secs_f64();
    progress.update(&format!(
        "measuring idle CPU with {} consumers",
        opts.idle_consumers
    ));
    let (cpu_with, rss_with) = idle_cpu(srv.pid, opts)?;
    srv.check_alive()?;
    Ok(IdleCost {
        consumers: opts.idle_consumers,
        create_s,
        cpu_ms_per_s_without: cpu_without,
        cpu_ms_per_s_with: cpu_with,
        rss_kb_without: rss_without,
        rss_kb_with: rss_with,
    })
}

/// CPU milliseconds per second over `idle_for` after `settle`, and the RSS then.
fn idle_cpu(pid: u32, opts: &ConsumeOptions) -> Result<(f64, u64)> {
    std::thread::sleep(opts.settle);
    let before = procstat::sample(pid)?;
    let t0 = Instant::now();
    std::thread::sleep(opts.idle_for);
    let after = procstat::sample(pid)?;
    let cpu = after.cpu.saturating_sub(before.cpu).as_secs_f64() * 1e3;
    Ok((cpu / t0.elapsed().as_secs_f64(), after.rss_kb))
}

pub fn table(runs: &[ConsumeRun]) -> String {
    let mut out = String::new();
    let [a, b] = runs else {
        return out;
    };
    out.push_str(&format!(
        "{:<32} {:>12} {:>12} {:>8}\n",
        "case (msgs/s)", a.server, b.server, "ratio"
    ));
    for (x, y) in a.cases.iter().zip(&b.cases) {
        out.push_str(&format!(
            "{:<32} {:>12} {:>12} {:>7.2}x\n",
            x.case,
            fmt_count(x.msgs_per_s),
            fmt_count(y.msgs_per_s),
            x.msgs_per_s / y.msgs_per_s.max(1e-9)
        ));
    }
    let filtered_share = |r: &ConsumeRun| {
        let rate = |name: &str| {
            r.cases
                .iter()
                .find(|c| c.case.starts_with(name))
                .map_or(0.0, |c| c.msgs_per_s)
        };
        100.0 * rate("pull 1000, no acks, 1 %") / rate("pull 1000, no acks").max(1e-9)
    };
    type Row<'a> = (&'a str, &'a dyn Fn(&ConsumeRun) -> String);
    let rows: [Row; 7] = [
        ("filtered rate, % of unfiltered", &|r| {
            format!("{:.0} %", filtered_share(r))
        }),
        ("create, whole stream (ms)", &|r| {
            format!("{:.2}", r.create_all_ms)
        }),
        ("create, 1 % filter (ms)", &|r| {
            format!("{:.2}", r.create_filtered_ms)
        }),
        ("idle consumers created (s)", &|r| {
            format!("{:.1}", r.idle.create_s)
        }),
        ("idle CPU, no consumers (ms/s)", &|r| {
            format!("{:.2}", r.idle.cpu_ms_per_s_without)
        }),
        ("idle CPU, with them (ms/s)", &|r| {
            format!("{:.2}", r.idle.cpu_ms_per_s_with)
        }),
        ("RSS with them (MiB)", &|r| {
            format!("{:.1}", r.idle.rss_kb_with as f64 / 1024.0)
        }),
    ];
    for (label, value) in rows {
        out.push_str(&format!("{label:<32} {:>12} {:>12}\n", value(a), value(b)));
    }
    out.push_str(&format!(
        "({} messages over {} subjects; {} idle consumers)\n",
        fmt_count(a.messages as f64),
        fmt_count(a.subjects as f64),
        a.idle.consumers
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_matches_what_the_subjects_say() {
        let subjects = 1000;
        for messages in [1, 7, 8, 100, 999, 1000, 1007, 1008, 12_345] {
            let counted = (0..messages)
                .filter(|&i| subject_of(i, subjects).starts_with("bench.c.7."))
                .count() as u64;
            assert_eq!(matching_messages(messages, subjects), counted, "{messages}");
        }
    }
}
