//! A mirror catching up: one file stream filled first, then a mirror of it
//! made (as `nats stream add REPORT --mirror ARCHIVE` makes one), timed from its
//! creation until its stream info counts every message of the origin.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};

use crate::js::JsConn;
use crate::run::{fmt_count, Progress};
use crate::server::{ServerProc, ServerSpec};

const ORIGIN: &str = "ARCHIVE";
const MIRROR: &str = "REPORT";
/// A mirror that stops moving for this long has stalled.
const STALL: Duration = Duration::from_secs(30);

pub struct MirrorOptions {
    pub servers: Vec<ServerSpec>,
    /// Messages in the origin before the mirror is made.
    pub messages: u64,
    pub size: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct MirrorRun {
    pub server: String,
    pub messages: u64,
    pub catch_up_s: f64,
    pub msgs_per_s: f64,
}

pub fn run(opts: &MirrorOptions) -> Result<Vec<MirrorRun>> {
    if opts.servers.len() != 2 {
        bail!("js-mirror needs exactly two --server");
    }
    opts.servers
        .iter()
        .map(|spec| run_one(spec, opts))
        .collect()
}

fn run_one(spec: &ServerSpec, opts: &MirrorOptions) -> Result<MirrorRun> {
    let progress = Progress::new(format!("[js-mirror {}]", spec.name));
    progress.update("starting server");
    let mut srv = ServerProc::start(spec)?;
    let mut c = JsConn::connect(&srv.endpoint(), "bench-mirror")?;
    c.check_payload(opts.size)?;
    c.create_stream(ORIGIN, &["archive.>".to_string()])?;
    progress.update(&format!(
        "filling {} messages",
        fmt_count(opts.messages as f64)
    ));
    let payload = vec![b'm'; opts.size];
    let ack = c.ack_subject();
    c.pipelined(opts.messages, 256, None, &mut |frame, i| {
        write!(
            frame,
            "PUB archive.{} {ack} {}\r\n",
            i % 1024,
            payload.len()
        )?;
        frame.extend_from_slice(&payload);
        frame.extend_from_slice(b"\r\n");
        Ok(())
    })
    .context("filling")?;

    progress.update("mirror catching up");
    let t0 = Instant::now();
    c.request(
        &format!("$JS.API.STREAM.CREATE.{MIRROR}"),
        &json!({
            "name": MIRROR,
            "mirror": {"name": ORIGIN},
            "storage": "file",
            "num_replicas": 1,
        }),
    )
    .context("creating the mirror")?;
    let (mut held, mut moved) = (0, Instant::now());
    while held < opts.messages {
        std::thread::sleep(Duration::from_millis(5));
        let info = c.request(&format!("$JS.API.STREAM.INFO.{MIRROR}"), &json!({}))?;
        let now = info
            .pointer("/state/messages")
            .and_then(Value::as_u64)
            .unwrap_or_default();
        if now > held {
            held = now;
            moved = Instant::now();
            progress.update(&format!("mirror holds {}", fmt_count(held as f64)));
        } else if moved.elapsed() > STALL {
            bail!("the mirror stalled at {held} of {} messages", opts.messages);
        }
    }
    let catch_up_s = t0.elapsed().as_secs_f64();
    srv.check_alive()?;
    let run = MirrorRun {
        server: spec.name.clone(),
        messages: opts.messages,
        catch_up_s,
        msgs_per_s: opts.messages as f64 / catch_up_s.max(1e-9),
    };
    progress.finish(&format!(
        "{} messages mirrored in {:.2} s ({}/s)",
        fmt_count(opts.messages as f64),
        run.catch_up_s,
        fmt_count(run.msgs_per_s)
    ));
    Ok(run)
}

pub fn table(runs: &[MirrorRun]) -> String {
    let [a, b] = runs else {
        return String::new();
    };
    format!(
        "{:<28} {:>12} {:>12} {:>8}\n{:<28} {:>12.2} {:>12.2} {:>7.2}x\n{:<28} {:>12} {:>12} {:>7.2}x\n({} messages; time: lower is better)\n",
        "",
        a.server,
        b.server,
        "ratio",
        "mirror catch-up (s)",
        a.catch_up_s,
        b.catch_up_s,
        a.catch_up_s / b.catch_up_s.max(1e-9),
        "mirrored (msgs/s)",
        fmt_count(a.msgs_per_s),
        fmt_count(b.msgs_per_s),
        a.msgs_per_s / b.msgs_per_s.max(1e-9),
        fmt_count(a.messages as f64),
    )
}
