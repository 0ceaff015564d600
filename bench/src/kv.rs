//! Key-value buckets as the clients make them: puts (a PubAck each), and gets by
//! key through `$JS.API.DIRECT.GET.<stream>.<subject>` (the last message of the
//! key's subject), one in flight as `kv.get()` awaits it and many in flight as a
//! busy service issues them; then a watch of every key, as `kv.watch_all()`
//! makes it (an ordered push consumer delivering the last value of each key).

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::json;

use crate::consume::{consume, consumer_config, create_consumer, deliver_subject, Read};
use crate::js::JsConn;
use crate::run::{fmt_count, latency_histogram, Progress};
use crate::server::{ServerProc, ServerSpec};

const BUCKET: &str = "BENCH";
const STREAM: &str = "KV_BENCH";

pub struct KvOptions {
    pub servers: Vec<ServerSpec>,
    pub keys: u64,
    pub size: usize,
    /// Requests in flight in the pipelined get and the put.
    pub window: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct KvRun {
    pub server: String,
    pub keys: u64,
    pub puts_per_s: f64,
    /// One get in flight.
    pub gets_per_s: f64,
    pub get_p50_us: f64,
    pub get_p99_us: f64,
    /// `window` gets in flight.
    pub pipelined_gets_per_s: f64,
    /// Keys a watch of every key delivers per second, from its creation to
    /// the last key's value.
    pub watched_keys_per_s: f64,
}

pub fn run(opts: &KvOptions) -> Result<Vec<KvRun>> {
    if opts.servers.len() != 2 {
        bail!("js-kv needs exactly two --server");
    }
    opts.servers
        .iter()
        .map(|spec| run_one(spec, opts))
        .collect()
}

fn key_subject(i: u64) -> String {
    format!("$KV.{BUCKET}.key{i}")
}

fn run_one(spec: &ServerSpec, opts: &KvOptions) -> Result<KvRun> {
    let progress = Progress::new(format!("[js-kv {}]", spec.name));
    progress.update("starting server");
    let mut srv = ServerProc::start(spec)?;
    let mut c = JsConn::connect(&srv.endpoint(), "bench-kv")?;
    c.check_payload(opts.size)?;
    // As the clients create a bucket (history 1).
    c.request(
        &format!("$JS.API.STREAM.CREATE.{STREAM}"),
        &json!({
            "name": STREAM,
            "subjects": [format!("$KV.{BUCKET}.>")],
            "max_msgs_per_subject": 1,
            "discard": "new",
            "allow_rollup_hdrs": true,
            "deny_delete": true,
            "allow_direct": true,
            "storage": "file",
            "num_replicas": 1,
        }),
    )
    .context("creating the bucket (is JetStream enabled on the server?)")?;
    progress.update("putting");
    let payload = vec![b'v'; opts.size];
    let ack = c.ack_subject();
    let t0 = Instant::now();
    c.pipelined(opts.keys, opts.window, None, &mut |frame, i| {
        write!(frame, "PUB {} {ack} {}\r\n", key_subject(i), payload.len())?;
        frame.extend_from_slice(&payload);
        frame.extend_from_slice(b"\r\n");
        Ok(())
    })
    .context("putting")?;
    let puts_per_s = opts.keys as f64 / t0.elapsed().as_secs_f64().max(1e-9);

    progress.update("getting, one in flight");
    let reply = format!("{}.get", c.inbox);
    let get = |frame: &mut Vec<u8>, i: u64| -> Result<()> {
        write!(
            frame,
            "PUB $JS.API.DIRECT.GET.{STREAM}.{} {reply} 0\r\n\r\n",
            key_subject(i)
        )?;
        Ok(())
    };
    let mut latency = latency_histogram()?;
    let t1 = Instant::now();
    c.pipelined(opts.keys, 1, Some(&mut latency), &mut |f, i| get(f, i))
        .context("getting")?;
    let gets_per_s = opts.keys as f64 / t1.elapsed().as_secs_f64().max(1e-9);

    progress.update("getting, pipelined");
    let t2 = Instant::now();
    c.pipelined(opts.keys, opts.window, None, &mut |f, i| get(f, i))
        .context("pipelined gets")?;
    let pipelined_gets_per_s = opts.keys as f64 / t2.elapsed().as_secs_f64().max(1e-9);

    progress.update("watching every key");
    let watch = Read::Push { ordered: true };
    let mut watcher = JsConn::connect(&srv.endpoint(), "bench-kv-watch")?;
    let mut config = consumer_config("WATCH", watch, Some(&format!("$KV.{BUCKET}.>")), &watcher);
    config["deliver_policy"] = json!("last_per_subject");
    watcher.subscribe(&deliver_subject("WATCH", &watcher))?;
    let t3 = Instant::now();
    let (created, _) = create_consumer(&mut c, STREAM, &config).context("creating the watch")?;
    // Delivery starts with the creation (someone listens already): what the
    // answer counts as pending is what was left then, so only the deliveries count.
    consume(&mut watcher, STREAM, &created, watch, opts.keys).context("watching")?;
    let watched_keys_per_s = opts.keys as f64 / t3.elapsed().as_secs_f64().max(1e-9);
    srv.check_alive()?;
    let us = |q: f64| latency.value_at_quantile(q) as f64 / 1e3;
    let run = KvRun {
        server: spec.name.clone(),
        keys: opts.keys,
        puts_per_s,
        gets_per_s,
        get_p50_us: us(0.5),
        get_p99_us: us(0.99),
        pipelined_gets_per_s,
        watched_keys_per_s,
    };
    progress.finish(&format!(
        "{} keys: put {}/s, get {}/s (p50 {:.0} µs), pipelined get {}/s, watch {}/s",
        fmt_count(opts.keys as f64),
        fmt_count(run.puts_per_s),
        fmt_count(run.gets_per_s),
        run.get_p50_us,
        fmt_count(run.pipelined_gets_per_s),
        fmt_count(run.watched_keys_per_s)
    ));
    Ok(run)
}

pub fn table(runs: &[KvRun]) -> String {
    let [a, b] = runs else {
        return String::new();
    };
    let mut out = format!(
        "{:<28} {:>12} {:>12} {:>8}\n",
        "", a.server, b.server, "ratio"
    );
    let rows: [(&str, f64, f64, bool); 6] = [
        ("put (msgs/s)", a.puts_per_s, b.puts_per_s, true),
        ("get, 1 in flight (/s)", a.gets_per_s, b.gets_per_s, true),
        ("get p50 (µs)", a.get_p50_us, b.get_p50_us, false),
        ("get p99 (µs)", a.get_p99_us, b.get_p99_us, false),
        (
            "get, pipelined (/s)",
            a.pipelined_gets_per_s,
            b.pipelined_gets_per_s,
            true,
        ),
        (
            "watch of every key (/s)",
            a.watched_keys_per_s,
            b.watched_keys_per_s,
            true,
        ),
    ];
    for (label, x, y, rate) in rows {
        let shown = |v: f64| {
            if rate {
                fmt_count(v)
            } else {
                format!("{v:.0}")
            }
        };
        out.push_str(&format!(
            "{label:<28} {:>12} {:>12} {:>7.2}x\n",
            shown(x),
            shown(y),
            x / y.max(1e-9)
        ));
    }
    out.push_str(&format!(
        "({} keys; latencies: lower is better)\n",
        fmt_count(a.keys as f64)
    ));
    out
}
