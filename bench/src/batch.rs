//! Atomic batch publishing (`allow_atomic`) against one publish at a time:
//! the same messages, each awaiting its PubAck, then in batches whose commit
//! alone is acknowledged (the batch's other messages carry no reply subject,
//! as the clients send them). With acknowledgements after the sync, a batch
//! costs one group commit where single publishes cost one each.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use serde_json::json;

use crate::js::JsConn;
use crate::run::{fmt_count, Progress};
use crate::server::{ServerProc, ServerSpec};

pub struct BatchOptions {
    pub servers: Vec<ServerSpec>,
    pub messages: u64,
    pub batch: u64,
    pub size: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct BatchRun {
    pub server: String,
    pub messages: u64,
    pub batch: u64,
    pub size: usize,
    /// One publish in flight, each acknowledged.
    pub single_msgs_per_s: f64,
    /// One batch in flight, its commit acknowledged.
    pub batched_msgs_per_s: f64,
}

pub fn run(opts: &BatchOptions) -> Result<Vec<BatchRun>> {
    if opts.servers.len() != 2 {
        bail!("js-batch needs exactly two --server");
    }
    opts.servers
        .iter()
        .map(|spec| run_one(spec, opts))
        .collect()
}

fn create(c: &mut JsConn, name: &str) -> Result<()> {
    c.request(
        &format!("$JS.API.STREAM.CREATE.{name}"),
        &json!({
            "name": name,
            "subjects": [format!("{}.>", name.to_lowercase())],
            "allow_atomic": true,
            "storage": "file",
            "num_replicas": 1,
        }),
    )
    .with_context(|| format!("creating {name} (does the server have atomic batches?)"))?;
    Ok(())
}

fn stored(c: &mut JsConn, name: &str) -> Result<u64> {
    let info = c.request(&format!("$JS.API.STREAM.INFO.{name}"), &json!({}))?;
    Ok(info["state"]["messages"].as_u64().unwrap_or(0))
}

fn run_one(spec: &ServerSpec, opts: &BatchOptions) -> Result<BatchRun> {
    let progress = Progress::new(format!("[js-batch {}]", spec.name));
    progress.update("starting server");
    let mut srv = ServerProc::start(spec)?;
    let mut c = JsConn::connect(&srv.endpoint(), "bench-batch")?;
    c.check_payload(opts.size)?;
    create(&mut c, "SINGLE")?;
    create(&mut c, "BATCHED")?;
    let payload = vec![b'b'; opts.size];
    let ack = c.ack_subject();

    progress.update("single publishes");
    let t0 = Instant::now();
    c.pipelined(opts.messages, 1, None, &mut |frame, _| {
        write!(frame, "PUB single.m {ack} {}\r\n", payload.len())?;
        frame.extend_from_slice(&payload);
        frame.extend_from_slice(b"\r\n");
        Ok(())
    })
    .context("single publishes")?;
    let single_msgs_per_s = opts.messages as f64 / t0.elapsed().as_secs_f64().max(1e-9);

    progress.update("atomic batches");
    let batches = opts.messages / opts.batch;
    let t1 = Instant::now();
    c.pipelined(batches, 1, None, &mut |frame, b| {
        for seq in 1..=opts.batch {
            let commit = if seq == opts.batch {
                "Nats-Batch-Commit: 1\r\n"
            } else {
                ""
            };
            let headers = format!(
                "NATS/1.0\r\nNats-Batch-Id: b{b}\r\nNats-Batch-Sequence: {seq}\r\n{commit}\r\n"
            );
            let reply = if seq == opts.batch { ack.as_str() } else { "" };
            write!(
                frame,
                "HPUB batched.m {reply} {} {}\r\n{headers}",
                headers.len(),
                headers.len() + payload.len()
            )?;
            frame.extend_from_slice(&payload);
            frame.extend_from_slice(b"\r\n");
        }
        Ok(())
    })
    .context("atomic batches")?;
    let sent = batches * opts.batch;
    let batched_msgs_per_s = sent as f64 / t1.elapsed().as_secs_f64().max(1e-9);
    ensure!(
        stored(&mut c, "SINGLE")? == opts.messages && stored(&mut c, "BATCHED")? == sent,
        "not every message was stored"
    );
    srv.check_alive()?;
    progress.finish(&format!(
        "{} messages: one at a time {}/s, in batches of {} {}/s",
        fmt_count(opts.messages as f64),
        fmt_count(single_msgs_per_s),
        opts.batch,
        fmt_count(batched_msgs_per_s)
    ));
    Ok(BatchRun {
        server: spec.name.clone(),
        messages: opts.messages,
        batch: opts.batch,
        size: opts.size,
        single_msgs_per_s,
        batched_msgs_per_s,
    })
}

pub fn table(runs: &[BatchRun]) -> String {
    let [a, b] = runs else {
        return String::new();
    };
    let mut out = format!(
        "{:<34} {:>12} {:>12} {:>8}\n",
        "msgs/s", a.server, b.server, "ratio"
    );
    for (label, x, y) in [
        (
            "1 publish in flight",
            a.single_msgs_per_s,
            b.single_msgs_per_s,
        ),
        (
            "atomic batches, 1 in flight",
            a.batched_msgs_per_s,
            b.batched_msgs_per_s,
        ),
    ] {
        out.push_str(&format!(
            "{label:<34} {:>12} {:>12} {:>7.2}x\n",
            fmt_count(x),
            fmt_count(y),
            x / y.max(1e-9)
        ));
    }
    let gain = |r: &BatchRun| r.batched_msgs_per_s / r.single_msgs_per_s.max(1e-9);
    out.push_str(&format!(
        "{:<34} {:>11.1}x {:>11.1}x\n",
        "batches over single publishes",
        gain(a),
        gain(b)
    ));
    out.push_str(&format!(
        "({} messages of {} B; batches of {})\n",
        fmt_count(a.messages as f64),
        a.size,
        a.batch
    ));
    out
}
