//! Snapshot and restore of one big stream as natscli drives them (`nats stream
//! backup` / `restore`): the snapshot's chunks acked as they come, the restore's
//! chunks sent one request at a time (64 KiB each, as jsm sends them), then the
//! final empty request whose answer is the restored stream.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};

use crate::conn::read_some;
use crate::js::{first_line, JsConn, Reply};
use crate::run::{fmt_count, Progress};
use crate::server::{ServerProc, ServerSpec};

const STREAM: &str = "BACKUP";
/// jsm's restore chunk.
const RESTORE_CHUNK: usize = 64 * 1024;
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(120);

pub struct BackupOptions {
    pub servers: Vec<ServerSpec>,
    /// Messages stored before the snapshot.
    pub messages: u64,
    pub size: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupRun {
    pub server: String,
    pub messages: u64,
    pub stream_bytes: u64,
    pub archive_bytes: u64,
    pub snapshot_s: f64,
    pub restore_s: f64,
}

pub fn run(opts: &BackupOptions) -> Result<Vec<BackupRun>> {
    if opts.servers.len() != 2 {
        bail!("js-backup needs exactly two --server");
    }
    opts.servers
        .iter()
        .map(|spec| run_one(spec, opts))
        .collect()
}

fn run_one(spec: &ServerSpec, opts: &BackupOptions) -> Result<BackupRun> {
    let progress = Progress::new(format!("[js-backup {}]", spec.name));
    progress.update("starting server");
    let mut srv = ServerProc::start(spec)?;
    let mut api = JsConn::connect(&srv.endpoint(), "bench-backup")?;
    api.check_payload(opts.size)?;
    api.create_stream(STREAM, &["backup.>".to_string()])?;
    let messages = opts.messages;
    progress.update(&format!("filling {} messages", fmt_count(messages as f64)));
    let payload = vec![b'b'; opts.size];
    let ack = api.ack_subject();
    api.pipelined(messages, 256, None, &mut |frame, i| {
        write!(frame, "PUB backup.{} {ack} {}\r\n", i % 1024, payload.len())?;
        frame.extend_from_slice(&payload);
        frame.extend_from_slice(b"\r\n");
        Ok(())
    })
    .context("filling")?;
    let info = api.request(&format!("$JS.API.STREAM.INFO.{STREAM}"), &json!({}))?;
    let stream_bytes = info
        .pointer("/state/bytes")
        .and_then(Value::as_u64)
        .unwrap_or_default();

    progress.update("snapshot");
    let archive_path = srv.dir().join("bench-backup.archive");
    let mut data = JsConn::connect(&srv.endpoint(), "bench-backup-data")?;
    let deliver = format!("{}.snapshot", data.inbox);
    let t0 = Instant::now();
    let saved = api.request(
        &format!("$JS.API.STREAM.SNAPSHOT.{STREAM}"),
        &json!({"deliver_subject": deliver, "chunk_size": 128 * 1024}),
    )?;
    let archive_bytes = receive(&mut data, &archive_path)?;
    let snapshot_s = t0.elapsed().as_secs_f64();

    api.delete_stream(STREAM)?;
    progress.update("restore");
    let t1 = Instant::now();
    let answer = api.request(
        &format!("$JS.API.STREAM.RESTORE.{STREAM}"),
        &json!({"config": saved["config"], "state": saved["state"]}),
    )?;
    let to = answer["deliver_subject"]
        .as_str()
        .ok_or_else(|| anyhow!("restore response without deliver_subject: {answer}"))?
        .to_string();
    let mut file = std::fs::File::open(&archive_path).context("opening the archive")?;
    let mut chunks = Vec::new();
    let mut chunk = vec![0u8; RESTORE_CHUNK];
    loop {
        let n = file.read(&mut chunk).context("reading the archive")?;
        if n == 0 {
            break;
        }
        chunks.push(chunk[..n].to_vec());
    }
    let reply = format!("{}.restore", api.inbox);
    let total = chunks.len() as u64 + 1;
    api.pipelined(total, 1, None, &mut |frame, i| {
        let body: &[u8] = chunks.get(i as usize).map_or(&[], Vec::as_slice);
        write!(frame, "PUB {to} {reply} {}\r\n", body.len())?;
        frame.extend_from_slice(body);
        frame.extend_from_slice(b"\r\n");
        Ok(())
    })
    .context("restoring")?;
    let restore_s = t1.elapsed().as_secs_f64();
    let restored = api.stream_messages(STREAM)?;
    if restored != messages {
        bail!("restored {restored} messages of {messages}");
    }
    let _ = std::fs::remove_file(&archive_path);
    srv.check_alive()?;
    let run = BackupRun {
        server: spec.name.clone(),
        messages,
        stream_bytes,
        archive_bytes,
        snapshot_s,
        restore_s,
    };
    progress.finish(&format!(
        "{} messages, {} MiB: snapshot {:.2} s ({} MiB archive), restore {:.2} s",
        fmt_count(messages as f64),
        stream_bytes >> 20,
        snapshot_s,
        archive_bytes >> 20,
        restore_s
    ));
    Ok(run)
}

/// Takes the snapshot's chunks into `path`, acking each that asks, until the
/// empty message that ends them (a status other than 204 fails the run).
fn receive(data: &mut JsConn, path: &std::path::Path) -> Result<u64> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).context("archive file")?);
    let mut buf = std::mem::take(&mut data.buf);
    let mut total = 0u64;
    let mut last = Instant::now();
    let result = (|| loop {
        let n = read_some(&mut data.stream, &mut buf)?;
        if n == 0 {
            if last.elapsed() > TRANSFER_TIMEOUT {
                bail!("snapshot stalled after {total} bytes");
            }
            continue;
        }
        last = Instant::now();
        let (mut acks, mut end, mut pings) = (Vec::new(), None, 0);
        let mut written: std::io::Result<()> = Ok(());
        data.replies.feed(&buf[..n], &mut |r| match r {
            Reply::Msg {
                headers: true,
                body,
                ..
            } => end = Some(first_line(body)),
            Reply::Msg { reply, body, .. } => {
                total += body.len() as u64;
                if written.is_ok() {
                    written = out.write_all(body);
                }
                if let Some(reply) = reply {
                    acks.extend_from_slice(b"PUB ");
                    acks.extend_from_slice(reply);
                    acks.extend_from_slice(b" 0\r\n\r\n");
                }
            }
            Reply::Ping => pings += 1,
            Reply::Err(_) => {}
        })?;
        written.context("writing the archive")?;
        for _ in 0..pings {
            acks.extend_from_slice(b"PONG\r\n");
        }
        if !acks.is_empty() {
            data.stream.write_all(&acks).context("acking chunks")?;
        }
        if let Some(status) = end {
            if !status.contains("204") {
                bail!("snapshot ended with {status}");
            }
            out.flush()?;
            return Ok(total);
        }
    })();
    data.buf = buf;
    result
}

pub fn table(runs: &[BackupRun]) -> String {
    let [a, b] = runs else {
        return String::new();
    };
    let mut out = format!(
        "{:<28} {:>12} {:>12} {:>8}\n",
        "", a.server, b.server, "ratio"
    );
    let mib = |x: u64| x as f64 / (1 << 20) as f64;
    let rows = [
        ("snapshot (s)", a.snapshot_s, b.snapshot_s),
        ("restore (s)", a.restore_s, b.restore_s),
        (
            "snapshot (MiB/s of stream)",
            mib(a.stream_bytes) / a.snapshot_s.max(1e-9),
            mib(b.stream_bytes) / b.snapshot_s.max(1e-9),
        ),
        (
            "restore (MiB/s of stream)",
            mib(a.stream_bytes) / a.restore_s.max(1e-9),
            mib(b.stream_bytes) / b.restore_s.max(1e-9),
        ),
        ("archive (MiB)", mib(a.archive_bytes), mib(b.archive_bytes)),
    ];
    for (label, x, y) in rows {
        out.push_str(&format!(
            "{label:<28} {x:>12.2} {y:>12.2} {:>7.2}x\n",
            x / y.max(1e-9)
        ));
    }
    out.push_str(&format!(
        "({} messages, {:.0} MiB stored; times: lower is better)\n",
        fmt_count(a.messages as f64),
        mib(a.stream_bytes)
    ));
    out
}
