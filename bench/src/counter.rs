//! Counter streams (`allow_msg_counter`): increments (`Nats-Incr: +1`, a
//! PubAck each carrying the new total) on one subject, where every increment
//! reads the total the previous one stored, and spread over many subjects,
//! with a window of them in flight; the totals are checked afterwards.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use serde_json::json;

use crate::js::JsConn;
use crate::run::{fmt_count, Progress};
use crate::server::{ServerProc, ServerSpec};

const STREAM: &str = "COUNTERS";
const HEADERS: &[u8] = b"NATS/1.0\r\nNats-Incr: +1\r\n\r\n";

pub struct CounterOptions {
    pub servers: Vec<ServerSpec>,
    pub increments: u64,
    /// The subject counts to run, each on a fresh stream.
    pub subjects: Vec<u64>,
    pub window: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct CounterRun {
    pub server: String,
    pub subjects: u64,
    pub increments: u64,
    pub increments_per_s: f64,
}

pub fn run(opts: &CounterOptions) -> Result<Vec<CounterRun>> {
    if opts.servers.len() != 2 {
        bail!("js-counter needs exactly two --server");
    }
    let mut runs = Vec::new();
    for &subjects in &opts.subjects {
        for spec in &opts.servers {
            runs.push(run_one(spec, opts, subjects)?);
        }
    }
    Ok(runs)
}

fn run_one(spec: &ServerSpec, opts: &CounterOptions, subjects: u64) -> Result<CounterRun> {
    let progress = Progress::new(format!("[js-counter {} {subjects}]", spec.name));
    progress.update("starting server");
    let mut srv = ServerProc::start(spec)?;
    let mut c = JsConn::connect(&srv.endpoint(), "bench-counter")?;
    c.request(
        &format!("$JS.API.STREAM.CREATE.{STREAM}"),
        &json!({
            "name": STREAM,
            "subjects": ["count.>"],
            "allow_msg_counter": true,
            "max_msgs_per_subject": 1,
            "storage": "file",
            "num_replicas": 1,
        }),
    )
    .context("creating the counter stream (does the server have counters?)")?;
    progress.update("incrementing");
    let ack = c.ack_subject();
    let t0 = Instant::now();
    c.pipelined(opts.increments, opts.window, None, &mut |frame, i| {
        let subject = i % subjects;
        write!(
            frame,
            "HPUB count.{subject} {ack} {len} {len}\r\n",
            len = HEADERS.len()
        )?;
        frame.extend_from_slice(HEADERS);
        frame.extend_from_slice(b"\r\n");
        Ok(())
    })
    .context("incrementing")?;
    let increments_per_s = opts.increments as f64 / t0.elapsed().as_secs_f64().max(1e-9);
    // Subject 0 got every `subjects`-th increment, starting with the first.
    let want = opts.increments.div_ceil(subjects);
    let got = c
        .request(
            &format!("$JS.API.STREAM.MSG.GET.{STREAM}"),
            &json!({"last_by_subj": "count.0"}),
        )
        .context("reading a total back")?;
    let data = got["message"]["data"].as_str().unwrap_or_default();
    let body = data_encoding::BASE64
        .decode(data.as_bytes())
        .context("the total's body")?;
    ensure!(
        body == format!("{{\"val\":\"{want}\"}}").as_bytes(),
        "count.0 holds {}, not {want}",
        String::from_utf8_lossy(&body)
    );
    srv.check_alive()?;
    progress.finish(&format!(
        "{} increments on {subjects} subjects: {}/s",
        fmt_count(opts.increments as f64),
        fmt_count(increments_per_s)
    ));
    Ok(CounterRun {
        server: spec.name.clone(),
        subjects,
        increments: opts.increments,
        increments_per_s,
    })
}

pub fn table(runs: &[CounterRun]) -> String {
    let Some(first) = runs.first() else {
        return String::new();
    };
    let second = runs.get(1).map_or("", |r| r.server.as_str());
    let mut out = format!(
        "{:<30} {:>12} {:>12} {:>8}\n",
        "increments/s", first.server, second, "ratio"
    );
    for pair in runs.chunks(2) {
        let [a, b] = pair else { continue };
        out.push_str(&format!(
            "{:<30} {:>12} {:>12} {:>7.2}x\n",
            format!("{} subject(s)", a.subjects),
            fmt_count(a.increments_per_s),
            fmt_count(b.increments_per_s),
            a.increments_per_s / b.increments_per_s.max(1e-9)
        ));
    }
    out.push_str(&format!(
        "({} increments each, a PubAck each)\n",
        fmt_count(first.increments as f64)
    ));
    out
}
