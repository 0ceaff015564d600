//! JetStream load: publishes that wait for their PubAcks, restarts of a full stream,
//! and many small streams.
//!
//! The harness speaks JetStream's wire API itself (`$JS.API.STREAM.*` requests, and
//! PubAcks on a reply subject), so, as for core NATS, nothing stands between the load
//! and the server. Unlike the core scenarios it must read reply bodies, so it parses
//! what the server sends with [`Replies`] instead of the scanner that jumps over
//! payloads.
//!
//! A publisher keeps up to `window` publishes outstanding: it writes as many PUBs as
//! the window has room for in one write, then reads acks, so with a window of 1 it
//! measures the round trip of one durable publish and with 256 how well the server
//! batches many publishes into one disk flush. Disk flushes are read from the block
//! device under the server's working directory (its store), so they count what the
//! disk had to do whichever way the server syncs (fsync, fdatasync, O_DSYNC).

use std::collections::VecDeque;
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{json, Value};

use crate::conn::{payload_fits, read_some, Conn, Endpoint, POLL};
use crate::procstat;
use crate::run::{
    fmt_count, latency_histogram, sample_server, unique_subject, usage, DiskFlushes, ErrorSlot,
    Latency, Progress, RunResult, Target, Workers,
};
use crate::scenario::{JsAck, Kind, Limit, Scenario};
use crate::server::{ServerProc, ServerSpec};

/// An API request may take this long (a stream delete removes its files first).
const API_TIMEOUT: Duration = Duration::from_secs(60);
/// Outstanding publishes that see no ack for this long mean a broken run.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a restarted server may take to show its stream again.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(600);

/// One thing the server said, with the body of messages.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// `MSG`/`HMSG`: `headers` says whether `body` starts with a header block;
    /// `reply` is the message's reply subject, if it has one.
    Msg {
        headers: bool,
        reply: Option<&'a [u8]>,
        body: &'a [u8],
    },
    Ping,
    /// `-ERR 'text'`.
    Err(&'a [u8]),
}

/// Splits what the server sends into [`Reply`]s, keeping incomplete frames between
/// reads. Replies here are small (acks, API responses), so buffering them is cheap.
#[derive(Debug, Default)]
pub struct Replies {
    buf: Vec<u8>,
}

impl Replies {
    pub fn feed(&mut self, data: &[u8], on: &mut impl FnMut(Reply<'_>)) -> Result<()> {
        self.buf.extend_from_slice(data);
        let mut pos = 0;
        while let Some(nl) = memchr::memmem::find(&self.buf[pos..], b"\r\n") {
            let line = &self.buf[pos..pos + nl];
            let headers = line.starts_with(b"HMSG ");
            if headers || line.starts_with(b"MSG ") {
                let total: usize = line
                    .rsplit(|b| *b == b' ')
                    .next()
                    .and_then(|t| std::str::from_utf8(t).ok())
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(|| {
                        anyhow!(
                            "message line without a length: {:?}",
                            String::from_utf8_lossy(line)
                        )
                    })?;
                let start = pos + nl + 2;
                if self.buf.len() < start + total + 2 {
                    break;
                }
                // MSG subject sid [reply] size; HMSG subject sid [reply] hdr_size size.
                let with_reply = if headers { 6 } else { 5 };
                let mut fields = line.split(|b| *b == b' ').filter(|f| !f.is_empty());
                let reply = if fields.clone().count() == with_reply {
                    fields.nth(3)
                } else {
                    None
                };
                on(Reply::Msg {
                    headers,
                    reply,
                    body: &self.buf[start..start + total],
                });
                pos = start + total + 2;
                continue;
            }
            if line == b"PING" {
                on(Reply::Ping);
            } else if let Some(e) = line.strip_prefix(b"-ERR ") {
                on(Reply::Err(e));
            } else if !(line == b"PONG" || line == b"+OK" || line.starts_with(b"INFO ")) {
                bail!(
                    "unexpected line from the server: {:?}",
                    String::from_utf8_lossy(line)
                );
            }
            pos += nl + 2;
        }
        self.buf.drain(..pos);
        Ok(())
    }
}

/// A connection subscribed to its own inbox, for API requests and PubAcks.
pub struct JsConn {
    pub(crate) stream: TcpStream,
    max_payload: Option<u64>,
    pub(crate) replies: Replies,
    pub(crate) buf: Vec<u8>,
    /// Everything under `<inbox>.` reaches this connection.
    pub(crate) inbox: String,
    requests: u64,
    subscriptions: u64,
}

impl JsConn {
    pub fn connect(ep: &Endpoint, name: &str) -> Result<Self> {
        let mut c = Conn::connect(ep, name)?;
        let inbox = unique_subject("_INBOX.benchjs");
        c.send(format!("SUB {inbox}.* 1\r\n").as_bytes())?;
        c.sync().context("subscribing to the inbox")?;
        c.stream
            .set_read_timeout(Some(POLL))
            .context("setting read timeout")?;
        Ok(Self {
            max_payload: c.max_payload,
            stream: c.stream,
            replies: Replies::default(),
            buf: vec![0; 64 * 1024],
            inbox,
            requests: 0,
            subscriptions: 0,
        })
    }

    pub fn check_payload(&self, size: usize) -> Result<()> {
        payload_fits(self.max_payload, size)
    }

    /// Where this connection's PubAcks go.
    pub(crate) fn ack_subject(&self) -> String {
        format!("{}.ack", self.inbox)
    }

    /// Sends a JetStream API request and returns its JSON response; an API error
    /// (`{"error": ...}`) or a status reply (503 no responders) is an error.
    pub fn request(&mut self, subject: &str, body: &Value) -> Result<Value> {
        self.requests += 1;
        let reply = format!("{}.r{}", self.inbox, self.requests);
        let body = body.to_string();
        let mut frame = format!("PUB {subject} {reply} {}\r\n", body.len()).into_bytes();
        frame.extend_from_slice(body.as_bytes());
        frame.extend_from_slice(b"\r\n");
        self.stream
            .write_all(&frame)
            .with_context(|| format!("sending {subject}"))?;
        let deadline = Instant::now() + API_TIMEOUT;
        loop {
            if Instant::now() > deadline {
                bail!("no response to {subject} within {API_TIMEOUT:?}");
            }
            let n = read_some(&mut self.stream, &mut self.buf)?;
            let (mut answer, mut pings, mut err) = (None, 0, None);
            self.replies.feed(&self.buf[..n], &mut |r| match r {
                Reply::Msg {
                    headers: true,
                    body,
                    ..
                } => err = Some(format!("status reply: {}", first_line(body))),
                Reply::Msg { body, .. } => answer = Some(body.to_vec()),
                Reply::Ping => pings += 1,
                Reply::Err(e) => err = Some(format!("-ERR {}", String::from_utf8_lossy(e))),
            })?;
            for _ in 0..pings {
                self.stream.write_all(b"PONG\r\n").context("writing PONG")?;
            }
            if let Some(e) = err {
                bail!("{subject}: {e}");
            }
            if let Some(body) = answer {
                let v: Value = serde_json::from_slice(&body)
                    .with_context(|| format!("{subject}: response is not JSON"))?;
                if let Some(e) = v.get("error") {
                    bail!("{subject}: {e}");
                }
                return Ok(v);
            }
        }
    }

    pub fn create_stream(&mut self, name: &str, subjects: &[String]) -> Result<()> {
        self.create_stream_in(name, subjects, "file")
    }

    /// A stream in `storage`: `file` or `memory`.
    pub fn create_stream_in(
        &mut self,
        name: &str,
        subjects: &[String],
        storage: &str,
    ) -> Result<()> {
        let config = json!({
            "name": name,
            "subjects": subjects,
            "retention": "limits",
            "storage": storage,
            "discard": "old",
            "num_replicas": 1,
        });
        self.request(&format!("$JS.API.STREAM.CREATE.{name}"), &config)
            .map(drop)
    }

    pub fn delete_stream(&mut self, name: &str) -> Result<()> {
        self.request(&format!("$JS.API.STREAM.DELETE.{name}"), &json!({}))
            .map(drop)
    }

    /// Subscribes to `subject`; returns once the server has the subscription (an API
    /// request sent after it comes back after it).
    pub fn subscribe(&mut self, subject: &str) -> Result<()> {
        self.subscriptions += 1;
        let sid = self.subscriptions + 1;
        self.stream
            .write_all(format!("SUB {subject} {sid}\r\n").as_bytes())
            .with_context(|| format!("subscribing to {subject}"))?;
        self.request("$JS.API.INFO", &json!({})).map(drop)
    }

    /// Sends `total` requests built by `frame_of` (index 0..total), at most `window`
    /// awaiting their answer (recorded in `latency` if given). Each answer is one
    /// message: a PubAck or API response (one with `"error"` fails the run), or a
    /// stored message as a direct get returns it (HMSG whose first line is `NATS/1.0`
    /// alone; a status such as `404` fails the run).
    pub fn pipelined(
        &mut self,
        total: u64,
        window: usize,
        mut latency: Option<&mut Histogram<u64>>,
        frame_of: &mut dyn FnMut(&mut Vec<u8>, u64) -> Result<()>,
    ) -> Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        let mut frame = Vec::new();
        let mut sent_at: VecDeque<Instant> = VecDeque::with_capacity(window);
        let (mut sent, mut answered) = (0u64, 0u64);
        let mut last = Instant::now();
        let result = (|| {
            while answered < total {
                frame.clear();
                while sent < total && sent_at.len() < window.max(1) {
                    frame_of(&mut frame, sent)?;
                    sent_at.push_back(Instant::now());
                    sent += 1;
                }
                if !frame.is_empty() {
                    self.stream.write_all(&frame).context("writing")?;
                }
                let n = read_some(&mut self.stream, &mut buf)?;
                if n == 0 {
                    if last.elapsed() > ACK_TIMEOUT {
                        bail!("{answered} of {total} answered, then nothing for {ACK_TIMEOUT:?}");
                    }
                    continue;
                }
                last = Instant::now();
                let (mut pings, mut err) = (0, None);
                let now = Instant::now();
                self.replies.feed(&buf[..n], &mut |r| match r {
                    Reply::Msg { headers, body, .. } => {
                        let failed = if headers {
                            // A message carries `NATS/1.0` alone on its first line;
                            // a status has a code after it.
                            first_line(body).trim() != "NATS/1.0"
                        } else {
                            memchr::memmem::find(body, b"\"error\"").is_some()
                        };
                        if failed {
                            err.get_or_insert(if headers {
                                first_line(body)
                            } else {
                                String::from_utf8_lossy(body).into_owned()
                            });
                        }
                        if let Some(t0) = sent_at.pop_front() {
                            if let Some(h) = latency.as_deref_mut() {
                                let ns = u64::try_from((now - t0).as_nanos()).unwrap_or(u64::MAX);
                                h.saturating_record(ns.max(1));
                            }
                        }
                        answered += 1;
                    }
                    Reply::Ping => pings += 1,
                    Reply::Err(e) => {
                        err.get_or_insert(format!("-ERR {}", String::from_utf8_lossy(e)));
                    }
                })?;
                if let Some(e) = err {
                    return Err(anyhow!("answer {answered}: {e}"));
                }
                for _ in 0..pings {
                    self.stream.write_all(b"PONG\r\n")?;
                }
            }
            Ok(())
        })();
        self.buf = buf;
        result
    }

    /// The stream's message count, from `STREAM.INFO`.
    pub fn stream_messages(&mut self, name: &str) -> Result<u64> {
        let info = self.request(&format!("$JS.API.STREAM.INFO.{name}"), &json!({}))?;
        info.pointer("/state/messages")
            .and_then(Value::as_u64)
            .ok_or_else(|| anyhow!("STREAM.INFO.{name} has no state.messages: {info}"))
    }
}

pub(crate) fn first_line(body: &[u8]) -> String {
    let end = memchr::memchr(b'\r', body).unwrap_or(body.len());
    String::from_utf8_lossy(&body[..end]).into_owned()
}

/// When a publisher stops sending.
#[derive(Clone, Copy)]
pub struct Until {
    pub deadline: Option<Instant>,
    pub count: Option<u64>,
}

impl Until {
    fn from(limit: Limit, start: Instant) -> Self {
        match limit {
            Limit::Duration(d) => Self {
                deadline: Some(start + d),
                count: None,
            },
            Limit::Count(c) => Self {
                deadline: None,
                count: Some(c),
            },
        }
    }

    fn done(&self, sent: u64) -> bool {
        self.count.is_some_and(|c| sent >= c) || self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

/// What one publisher did.
pub struct Published {
    pub sent: u64,
    pub acked: u64,
    /// Publish-to-ack time of every ack, ns.
    pub latency: Histogram<u64>,
    pub end: Instant,
}

/// Publishes `size`-byte messages to `subject` with up to `window` awaiting their
/// PubAck, until `until`; then waits for the outstanding acks. `acked` is kept
/// current for progress lines.
pub fn publish_acked(
    c: &mut JsConn,
    subject: &str,
    size: usize,
    window: usize,
    until: Until,
    acked_now: &AtomicU64,
    stop: &AtomicBool,
) -> Result<Published> {
    let window = window.max(1);
    let reply = c.ack_subject();
    let mut frame = format!("PUB {subject} {reply} {size}\r\n").into_bytes();
    frame.resize(frame.len() + size, b'j');
    frame.extend_from_slice(b"\r\n");
    let frame_len = frame.len();
    let frames = frame.repeat(window);
    let mut latency = latency_histogram()?;
    let mut sent_at: VecDeque<Instant> = VecDeque::with_capacity(window);
    let (mut sent, mut acked) = (0u64, 0u64);
    let mut last_ack = Instant::now();
    let mut buf = std::mem::take(&mut c.buf);
    let result = loop {
        let sending = !until.done(sent) && !stop.load(Ordering::Relaxed);
        if !sending && acked == sent {
            break Ok(());
        }
        if sending {
            let mut room = window - sent_at.len();
            if let Some(count) = until.count {
                room = room.min(usize::try_from(count - sent).unwrap_or(usize::MAX));
            }
            if room > 0 {
                if let Err(e) = c.stream.write_all(&frames[..room * frame_len]) {
                    break Err(anyhow!(e).context("publishing"));
                }
                let now = Instant::now();
                sent_at.extend(std::iter::repeat_n(now, room));
                sent += room as u64;
            }
        }
        let n = match read_some(&mut c.stream, &mut buf) {
            Ok(n) => n,
            Err(e) => break Err(e.context("waiting for acks")),
        };
        if n == 0 {
            if !sent_at.is_empty() && last_ack.elapsed() > ACK_TIMEOUT {
                break Err(anyhow!(
                    "{} publishes without an ack for {ACK_TIMEOUT:?}",
                    sent_at.len()
                ));
            }
            continue;
        }
        let (mut pings, mut err) = (0, None);
        let now = Instant::now();
        let fed = c.replies.feed(&buf[..n], &mut |r| match r {
            Reply::Msg {
                headers: true,
                body,
                ..
            } => {
                err.get_or_insert(format!("status reply to a publish: {}", first_line(body)));
            }
            Reply::Msg { body, .. } => {
                if memchr::memmem::find(body, b"\"error\"").is_some() {
                    err.get_or_insert(format!(
                        "publish refused: {}",
                        String::from_utf8_lossy(body)
                    ));
                } else if let Some(t0) = sent_at.pop_front() {
                    let ns = u64::try_from((now - t0).as_nanos()).unwrap_or(u64::MAX);
                    latency.saturating_record(ns.max(1));
                    acked += 1;
                }
            }
            Reply::Ping => pings += 1,
            Reply::Err(e) => {
                err.get_or_insert(format!("-ERR {}", String::from_utf8_lossy(e)));
            }
        });
        if let Err(e) = fed {
            break Err(e);
        }
        if let Some(e) = err {
            break Err(anyhow!(e));
        }
        if let Err(e) = (0..pings).try_for_each(|_| c.stream.write_all(b"PONG\r\n")) {
            break Err(anyhow!(e).context("writing PONG"));
        }
        last_ack = now;
        acked_now.store(acked, Ordering::Relaxed);
    };
    c.buf = buf;
    result.map(|()| Published {
        sent,
        acked,
        latency,
        end: Instant::now(),
    })
}

/// The `js-pub` scenarios: a fresh file stream per run, `publishers` connections each
/// publishing to its own subject of it, the stream deleted afterwards.
pub fn run_js_pub(target: &Target, sc: &Scenario, progress: &Progress) -> Result<RunResult> {
    let window = match sc.kind {
        Kind::JsPub { ack: JsAck::Sync } => 1,
        Kind::JsPub {
            ack: JsAck::Async { window },
        } => usize::try_from(window).unwrap_or(usize::MAX),
        _ => bail!("not a JetStream publish scenario"),
    };
    let ep = &target.endpoint;
    let prefix = unique_subject("bench.js");
    let name = prefix.replace('.', "_").to_uppercase();
    let mut control = JsConn::connect(ep, "bench-js-control")?;
    control
        .create_stream(&name, &[format!("{prefix}.>")])
        .context("creating the stream (is JetStream enabled on the server?)")?;

    let stop = Arc::new(AtomicBool::new(false));
    let errors = ErrorSlot::default();
    let publishers = sc.publishers.max(1);
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..publishers).map(|_| AtomicU64::new(0)).collect());
    let mut conns = Vec::with_capacity(publishers);
    for i in 0..publishers {
        let c = JsConn::connect(ep, &format!("bench-js-pub-{i}"))?;
        c.check_payload(sc.size)?;
        conns.push(c);
    }
    let srv0 = sample_server(target.pid)?;
    let flushes0 = target.pid.and_then(procstat::disk_flushes);
    let cpu0 = procstat::self_cpu();
    let start = Instant::now();
    let until = Until::from(sc.limit, start);
    let mut workers: Workers<Result<Published>> = Workers::new(stop.clone());
    for (i, mut c) in conns.into_iter().enumerate() {
        workers
            .sockets
            .push(c.stream.try_clone().context("cloning socket")?);
        let (stop, acked, errors) = (stop.clone(), acked.clone(), errors.clone());
        let (subject, size) = (format!("{prefix}.{i}"), sc.size);
        workers.handles.push(
            std::thread::Builder::new()
                .name(format!("bench-js-pub-{i}"))
                .spawn(move || {
                    let r = publish_acked(&mut c, &subject, size, window, until, &acked[i], &stop);
                    if let Err(e) = &r {
                        errors.set(format!("publisher {i}: {e:#}"));
                    }
                    r
                })
                .context("spawning publisher")?,
        );
    }
    let total = || acked.iter().map(|a| a.load(Ordering::Relaxed)).sum::<u64>();
    let mut last_tick = (Instant::now(), 0u64);
    while !workers.all_finished() {
        if let Some(e) = errors.get() {
            bail!("{e}");
        }
        std::thread::sleep(Duration::from_millis(50));
        let now = Instant::now();
        if now - last_tick.0 >= Duration::from_millis(250) {
            let d = total();
            let rate = (d - last_tick.1) as f64 / (now - last_tick.0).as_secs_f64();
            progress.update(&format!(
                "{:5.1}s  acked {}  {} msgs/s",
                (now - start).as_secs_f64(),
                fmt_count(d as f64),
                fmt_count(rate)
            ));
            last_tick = (now, d);
        }
    }
    let done: Vec<Published> = workers.join()?.into_iter().collect::<Result<_>>()?;
    let cpu1 = procstat::self_cpu();
    let srv1 = sample_server(target.pid)?;
    let flushes1 = target.pid.and_then(procstat::disk_flushes);
    let end = done
        .iter()
        .map(|p| p.end)
        .max()
        .unwrap_or_else(Instant::now);
    control
        .delete_stream(&name)
        .context("deleting the stream")?;

    let elapsed = (end - start).as_secs_f64().max(1e-9);
    let (sent, acked): (u64, u64) = done
        .iter()
        .fold((0, 0), |(s, a), p| (s + p.sent, a + p.acked));
    let mut hist = latency_histogram()?;
    for p in &done {
        hist.add(&p.latency)
            .map_err(|e| anyhow!("merging histograms: {e:?}"))?;
    }
    let latency = Latency::from_histogram(&hist);
    let disk = flushes0.zip(flushes1).map(|(a, b)| {
        let flushes = b.saturating_sub(a);
        DiskFlushes {
            flushes,
            per_s: flushes as f64 / elapsed,
            msgs_per_flush: (flushes > 0).then(|| acked as f64 / flushes as f64),
        }
    });
    let harness_cpu = cpu1.saturating_sub(cpu0).as_secs_f64();
    Ok(RunResult {
        scenario: sc.name.clone(),
        description: sc.describe(),
        kind: sc.kind,
        size: sc.size,
        elapsed_s: elapsed,
        published: sent,
        delivered: acked,
        lost: sent - acked,
        msgs: acked,
        msgs_per_s: acked as f64 / elapsed,
        mb_per_s: acked as f64 * sc.size as f64 / elapsed / 1e6,
        harness_cpu_s: harness_cpu,
        harness_cores: harness_cpu / elapsed,
        server: usage(srv0, srv1, elapsed, acked),
        latency: Some(latency),
        disk,
    })
}

/// What one server did in `js-restart`.
#[derive(Debug, Clone, Serialize)]
pub struct RestartRun {
    pub server: String,
    /// Messages acknowledged while filling the stream.
    pub messages: u64,
    pub fill_s: f64,
    pub fill_msgs_per_s: f64,
    /// Bytes under the server's directory once filled (its store).
    pub store_bytes: u64,
    /// Restart after SIGKILL right after the last ack.
    pub after_kill: Recovery,
    /// How long the graceful stop (SIGTERM) took.
    pub stop_s: f64,
    /// Restart after that clean stop.
    pub after_stop: Recovery,
}

/// From starting the process to the stream answering with every message.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Recovery {
    pub seconds: f64,
    /// When STREAM.INFO first answered at all.
    pub first_answer_s: f64,
    /// Messages the stream held when the wait ended.
    pub found: u64,
}

pub struct RestartOptions {
    pub servers: Vec<ServerSpec>,
    pub messages: u64,
    pub size: usize,
    pub publishers: usize,
    pub window: usize,
}

const RESTART_STREAM: &str = "BENCH_RESTART";
/// After the stream first answers short of the acknowledged count, how long to keep
/// asking before reporting what it holds (a server that lost messages never gets there).
const SHORT_GRACE: Duration = Duration::from_secs(30);

pub fn run_restart(opts: &RestartOptions) -> Result<Vec<RestartRun>> {
    if opts.servers.len() != 2 {
        bail!("js-restart needs exactly two --server");
    }
    opts.servers
        .iter()
        .map(|spec| restart_one(spec, opts))
        .collect()
}

fn restart_one(spec: &ServerSpec, opts: &RestartOptions) -> Result<RestartRun> {
    let progress = Progress::new(format!("[js-restart {}]", spec.name));
    progress.update("starting server");
    let mut srv = ServerProc::start(spec)?;
    let ep = srv.endpoint();
    let mut control = JsConn::connect(&ep, "bench-js-control")?;
    control
        .create_stream(RESTART_STREAM, &["restart.>".to_string()])
        .context("creating the stream (is JetStream enabled on the server?)")?;
    let (messages, fill_s) = fill(&ep, opts, &progress)
        .with_context(|| format!("filling the stream on {}", spec.name))?;
    drop(control);
    let store_bytes = dir_bytes(srv.dir());

    progress.update("SIGKILL, restarting");
    srv.stop(libc::SIGKILL, Duration::from_secs(10))?;
    let after_kill = recover(&mut srv, messages)?;
    progress.update("SIGTERM, restarting");
    let t0 = Instant::now();
    srv.stop(libc::SIGTERM, Duration::from_secs(120))?;
    let stop_s = t0.elapsed().as_secs_f64();
    let after_stop = recover(&mut srv, messages)?;
    srv.check_alive()?;
    progress.finish(&format!(
        "{} msgs, {:.0} MB; restart after SIGKILL {:.2}s, after a clean stop {:.2}s",
        fmt_count(messages as f64),
        store_bytes as f64 / 1e6,
        after_kill.seconds,
        after_stop.seconds
    ));
    Ok(RestartRun {
        server: spec.name.clone(),
        messages,
        fill_s,
        fill_msgs_per_s: messages as f64 / fill_s.max(1e-9),
        store_bytes,
        after_kill,
        stop_s,
        after_stop,
    })
}

/// Publishes `opts.messages` in total from `opts.publishers` connections; returns
/// the acknowledged count and the seconds it took.
fn fill(ep: &Endpoint, opts: &RestartOptions, progress: &Progress) -> Result<(u64, f64)> {
    let publishers = opts.publishers.max(1) as u64;
    let stop = AtomicBool::new(false);
    let acked: Vec<AtomicU64> = (0..publishers).map(|_| AtomicU64::new(0)).collect();
    let mut conns = Vec::new();
    for i in 0..publishers {
        let c = JsConn::connect(ep, &format!("bench-js-fill-{i}"))?;
        c.check_payload(opts.size)?;
        conns.push(c);
    }
    let start = Instant::now();
    let results: Vec<Result<Published>> = std::thread::scope(|s| {
        let handles: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(i, mut c)| {
                let share =
                    opts.messages / publishers + u64::from((i as u64) < opts.messages % publishers);
                let until = Until {
                    deadline: None,
                    count: Some(share),
                };
                let (acked, stop) = (&acked[i], &stop);
                s.spawn(move || {
                    let subject = format!("restart.{i}");
                    let r =
                        publish_acked(&mut c, &subject, opts.size, opts.window, until, acked, stop);
                    if r.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    r
                })
            })
            .collect();
        while !handles.iter().all(|h| h.is_finished()) {
            std::thread::sleep(Duration::from_millis(250));
            let done: u64 = acked.iter().map(|a| a.load(Ordering::Relaxed)).sum();
            let secs = start.elapsed().as_secs_f64();
            progress.update(&format!(
                "filling: {} of {} acked, {} msgs/s",
                fmt_count(done as f64),
                fmt_count(opts.messages as f64),
                fmt_count(done as f64 / secs.max(1e-9))
            ));
        }
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow!("a publisher panicked"))?)
            .collect()
    });
    let done: Vec<Published> = results.into_iter().collect::<Result<_>>()?;
    Ok((
        done.iter().map(|p| p.acked).sum(),
        start.elapsed().as_secs_f64(),
    ))
}

/// Starts the stopped server again and waits until its stream holds `expected`
/// messages (or has answered short of it for [`SHORT_GRACE`]).
fn recover(srv: &mut ServerProc, expected: u64) -> Result<Recovery> {
    let t0 = Instant::now();
    srv.respawn(RECOVERY_TIMEOUT)?;
    let ep = srv.endpoint();
    let mut first_answer: Option<Duration> = None;
    loop {
        if t0.elapsed() > RECOVERY_TIMEOUT {
            bail!("stream {RESTART_STREAM} not back within {RECOVERY_TIMEOUT:?}");
        }
        srv.check_alive()?;
        let found = JsConn::connect(&ep, "bench-js-probe")
            .and_then(|mut c| c.stream_messages(RESTART_STREAM));
        if let Ok(found) = found {
            let now = t0.elapsed();
            let first = *first_answer.get_or_insert(now);
            if found >= expected || now - first > SHORT_GRACE {
                return Ok(Recovery {
                    seconds: now.as_secs_f64(),
                    first_answer_s: first.as_secs_f64(),
                    found,
                });
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Bytes of the regular files under `dir`, recursively.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

pub fn restart_table(runs: &[RestartRun]) -> String {
    let mut out = String::from(
        "server        messages  store MB  fill msgs/s  after SIGKILL s  found  clean stop s  after stop s  found\n",
    );
    for r in runs {
        out.push_str(&format!(
            "{:<12} {:>9} {:>9.0} {:>12} {:>16.3} {:>6} {:>13.3} {:>13.3} {:>6}\n",
            r.server,
            fmt_count(r.messages as f64),
            r.store_bytes as f64 / 1e6,
            fmt_count(r.fill_msgs_per_s),
            r.after_kill.seconds,
            fmt_count(r.after_kill.found as f64),
            r.stop_s,
            r.after_stop.seconds,
            fmt_count(r.after_stop.found as f64),
        ));
    }
    if let [a, b] = runs {
        let speedup = |x: f64, y: f64| y / x.max(1e-9);
        out.push_str(&format!(
            "restart speed-up {}/{}: after SIGKILL {:.2}x, after a clean stop {:.2}x (B's seconds / A's)\n",
            a.server,
            b.server,
            speedup(a.after_kill.seconds, b.after_kill.seconds),
            speedup(a.after_stop.seconds, b.after_stop.seconds),
        ));
    }
    out
}

/// What one server holds in `js-streams`.
#[derive(Debug, Clone, Serialize)]
pub struct StreamsRun {
    pub server: String,
    pub streams: usize,
    pub messages_each: u64,
    pub idle_rss_kb: u64,
    pub rss_kb: u64,
    pub create_s: f64,
    pub publish_s: f64,
}

pub struct StreamsOptions {
    pub servers: Vec<ServerSpec>,
    pub streams: usize,
    pub messages: u64,
    pub size: usize,
    pub settle: Duration,
}

pub fn run_streams(opts: &StreamsOptions) -> Result<Vec<StreamsRun>> {
    if opts.servers.len() != 2 {
        bail!("js-streams needs exactly two --server");
    }
    opts.servers
        .iter()
        .map(|spec| streams_one(spec, opts))
        .collect()
}

fn streams_one(spec: &ServerSpec, opts: &StreamsOptions) -> Result<StreamsRun> {
    let progress = Progress::new(format!("[js-streams {}]", spec.name));
    progress.update("starting server");
    let mut srv = ServerProc::start(spec)?;
    let idle_rss_kb = srv.idle_rss_kb(opts.settle)?;
    let ep = srv.endpoint();
    let mut c = JsConn::connect(&ep, "bench-js-streams")?;
    c.check_payload(opts.size)?;
    let t0 = Instant::now();
    for i in 0..opts.streams {
        c.create_stream(&format!("BENCH_S{i}"), &[format!("bench.s.{i}")])
            .with_context(|| format!("creating stream {i} on {}", spec.name))?;
        if i % 50 == 0 {
            progress.update(&format!("created {i} of {} streams", opts.streams));
        }
    }
    let create_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let (acked, stop) = (AtomicU64::new(0), AtomicBool::new(false));
    let until = Until {
        deadline: None,
        count: Some(opts.messages),
    };
    for i in 0..opts.streams {
        let p = publish_acked(
            &mut c,
            &format!("bench.s.{i}"),
            opts.size,
            256,
            until,
            &acked,
            &stop,
        )
        .with_context(|| format!("filling stream {i} on {}", spec.name))?;
        if p.acked != opts.messages {
            bail!(
                "stream {i} on {}: {} of {} acked",
                spec.name,
                p.acked,
                opts.messages
            );
        }
        if i % 50 == 0 {
            progress.update(&format!("filled {i} of {} streams", opts.streams));
        }
    }
    let publish_s = t1.elapsed().as_secs_f64();
    let last = format!("BENCH_S{}", opts.streams - 1);
    let held = c.stream_messages(&last)?;
    if held != opts.messages {
        bail!(
            "{last} on {} holds {held} of {} messages",
            spec.name,
            opts.messages
        );
    }
    let rss_kb = srv.idle_rss_kb(opts.settle)?;
    srv.check_alive()?;
    progress.finish(&format!(
        "{} streams x {} msgs: RSS {:.1} MiB (idle {:.1} MiB)",
        opts.streams,
        opts.messages,
        rss_kb as f64 / 1024.0,
        idle_rss_kb as f64 / 1024.0
    ));
    Ok(StreamsRun {
        server: spec.name.clone(),
        streams: opts.streams,
        messages_each: opts.messages,
        idle_rss_kb,
        rss_kb,
        create_s,
        publish_s,
    })
}

pub fn streams_table(runs: &[StreamsRun]) -> String {
    let mut out = String::from(
        "server        streams  msgs each  idle RSS MiB  RSS MiB  KiB/stream  create s  fill s\n",
    );
    for r in runs {
        out.push_str(&format!(
            "{:<12} {:>8} {:>10} {:>13.1} {:>8.1} {:>11.1} {:>9.2} {:>7.2}\n",
            r.server,
            r.streams,
            r.messages_each,
            r.idle_rss_kb as f64 / 1024.0,
            r.rss_kb as f64 / 1024.0,
            r.rss_kb.saturating_sub(r.idle_rss_kb) as f64 / r.streams.max(1) as f64,
            r.create_s,
            r.publish_s,
        ));
    }
    if let [a, b] = runs {
        out.push_str(&format!(
            "RSS {}/{}: {:.2}x (lower is better)\n",
            a.server,
            b.server,
            a.rss_kb as f64 / b.rss_kb.max(1) as f64
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(r: &mut Replies, data: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        r.feed(data, &mut |rep| {
            out.push(match rep {
                Reply::Msg {
                    headers,
                    reply,
                    body,
                } => format!(
                    "{}:{}{}",
                    headers,
                    reply.map_or(String::new(), |r| format!(
                        "[{}]",
                        String::from_utf8_lossy(r)
                    )),
                    String::from_utf8_lossy(body)
                ),
                Reply::Ping => "PING".into(),
                Reply::Err(e) => format!("ERR {}", String::from_utf8_lossy(e)),
            })
        })
        .expect("feed");
        out
    }

    #[test]
    fn replies_split_anywhere() {
        let ack = "{\"stream\":\"S\",\"seq\":1}";
        let status = "NATS/1.0 503\r\n\r\n";
        let wire = format!(
            "+OK\r\nMSG _INBOX.x.ack 1 {}\r\n{ack}\r\nPING\r\nHMSG _INBOX.x.r1 1 {n} {n}\r\n{status}\r\n-ERR 'Stale Connection'\r\nMSG d 2 $JS.ACK.S.C.1.1.1.0.0 2\r\nhi\r\nHMSG d 2 fc.1 {n} {n}\r\n{status}\r\n",
            ack.len(),
            n = status.len()
        );
        let wire = wire.as_bytes();
        let whole = collect(&mut Replies::default(), wire);
        assert_eq!(
            whole,
            [
                "false:{\"stream\":\"S\",\"seq\":1}",
                "PING",
                "true:NATS/1.0 503\r\n\r\n",
                "ERR 'Stale Connection'",
                "false:[$JS.ACK.S.C.1.1.1.0.0]hi",
                "true:[fc.1]NATS/1.0 503\r\n\r\n",
            ]
        );
        for cut in 1..wire.len() {
            let mut r = Replies::default();
            let mut got = collect(&mut r, &wire[..cut]);
            got.extend(collect(&mut r, &wire[cut..]));
            assert_eq!(got, whole, "split at {cut}");
        }
    }

    #[test]
    fn replies_reject_garbage() {
        assert!(Replies::default().feed(b"WHAT\r\n", &mut |_| {}).is_err());
        assert!(Replies::default()
            .feed(b"MSG a 1 x\r\n", &mut |_| {})
            .is_err());
    }

    #[test]
    fn until_counts_and_deadlines() {
        let u = Until {
            deadline: None,
            count: Some(3),
        };
        assert!(!u.done(2) && u.done(3));
        let past = Until::from(Limit::Duration(Duration::ZERO), Instant::now());
        assert!(past.done(0));
    }
}
