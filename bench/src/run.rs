//! Executes one scenario against one server and measures it.
//!
//! Every worker is a std thread with a blocking socket. Publishers write one prebuilt
//! buffer of many `PUB` frames over and over; subscribers count `MSG` frames with
//! [`crate::scan::Scanner`]. Flow control keeps the publishers at most `window`
//! messages ahead of the subscribers, so no server ever has to cut a subscriber off as
//! a slow consumer and both servers are measured at the rate they can sustain.

use std::io::{IsTerminal, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::conn::{backoff, read_some, Conn, Endpoint, PubConn, POLL};
use crate::procstat::{self, ProcSample};
use crate::scan::Event;
use crate::scenario::{Kind, Limit, Scenario};

/// Bytes of frames per publisher write: large enough that syscalls are a small cost,
/// small enough to stay well inside socket buffers and the flow-control window.
const BATCH_BYTES: usize = 64 * 1024;
/// Default window: this many bytes of MSG frames may be in flight per subscriber.
/// Far below nats-server's 64 MiB max_pending, far above what keeps the pipe busy.
const WINDOW_BYTES: usize = 4 * 1024 * 1024;
/// Longest nap of a publisher blocked by flow control: short against the time the
/// window takes to drain, so the server never runs dry while the publisher sleeps.
const MAX_NAP: Duration = Duration::from_micros(200);
/// Subscribers that make no progress for this long mean a broken run.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long subscribers may take to receive what was published after the last PONG.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// One request may wait this long for its reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Hard cap on a count-limited run.
const COUNT_RUN_CAP: Duration = Duration::from_secs(3600);

/// The server being measured.
#[derive(Debug, Clone)]
pub struct Target {
    pub endpoint: Endpoint,
    /// When known, the server's CPU and memory are read from /proc.
    pub pid: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ServerUsage {
    pub pid: u32,
    pub cpu_s: f64,
    /// Average cores busy during the run (cpu_s / elapsed_s).
    pub cores: f64,
    /// Server CPU time per counted message, nanoseconds.
    pub cpu_ns_per_msg: f64,
    pub rss_kb: u64,
    /// VmHWM: peak resident set since the server started.
    pub peak_rss_kb: u64,
}

/// A histogram of nanoseconds, 1 ns to 60 s at 3 significant digits.
pub(crate) fn latency_histogram() -> Result<Histogram<u64>> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| anyhow!("creating histogram: {e:?}"))
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Latency {
    /// Percentiles of a histogram of nanoseconds, in microseconds.
    pub(crate) fn from_histogram(hist: &Histogram<u64>) -> Self {
        let us = |v: u64| v as f64 / 1000.0;
        Latency {
            count: hist.len(),
            mean_us: hist.mean() / 1000.0,
            p50_us: us(hist.value_at_quantile(0.50)),
            p90_us: us(hist.value_at_quantile(0.90)),
            p99_us: us(hist.value_at_quantile(0.99)),
            p999_us: us(hist.value_at_quantile(0.999)),
            max_us: us(hist.max()),
        }
    }
}

/// Cache flushes of the disk under the server's store during a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct DiskFlushes {
    pub flushes: u64,
    pub per_s: f64,
    /// Acknowledged messages per flush: how well the server batches (None without
    /// flushes: the server acknowledged without syncing).
    pub msgs_per_flush: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunResult {
    pub scenario: String,
    pub description: String,
    pub kind: Kind,
    pub size: usize,
    pub elapsed_s: f64,
    pub published: u64,
    /// Messages received by all subscribers together (fan-out counts each copy).
    pub delivered: u64,
    /// Expected deliveries that never arrived (should always be 0).
    pub lost: u64,
    /// The counted messages: delivered for pub/sub, published for publish-only,
    /// completed requests for request/reply.
    pub msgs: u64,
    pub msgs_per_s: f64,
    /// Payload megabytes (10^6 bytes) of the counted messages per second.
    pub mb_per_s: f64,
    pub harness_cpu_s: f64,
    pub harness_cores: f64,
    pub server: Option<ServerUsage>,
    pub latency: Option<Latency>,
    /// JetStream runs: what the disk flushed (None where the kernel does not say).
    pub disk: Option<DiskFlushes>,
}

/// A progress line on stderr: rewritten in place on a terminal, silent otherwise.
pub struct Progress {
    label: String,
    tty: bool,
}

impl Progress {
    pub fn new(label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            tty: std::io::stderr().is_terminal(),
        }
    }

    pub fn update(&self, text: &str) {
        if self.tty {
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "\r\x1b[2K{} {text}", self.label);
            let _ = e.flush();
        }
    }

    pub fn finish(&self, text: &str) {
        let mut e = std::io::stderr().lock();
        if self.tty {
            let _ = write!(e, "\r\x1b[2K");
        }
        let _ = writeln!(e, "{} {text}", self.label);
    }
}

pub fn run(target: &Target, sc: &Scenario, progress: &Progress) -> Result<RunResult> {
    if sc.size > 64 * 1024 * 1024 {
        bail!("payload size {} is too large", sc.size);
    }
    let res = match sc.kind {
        Kind::Pub | Kind::PubSub => run_pubsub(target, sc, progress),
        Kind::ReqRep => run_reqrep(target, sc, progress),
        Kind::JsPub { .. } => crate::js::run_js_pub(target, sc, progress),
    }
    .with_context(|| format!("scenario {} ({})", sc.name, sc.describe()))?;
    let lost = if res.lost > 0 {
        format!(", {} LOST", res.lost)
    } else {
        String::new()
    };
    progress.finish(&format!(
        "{} msgs/s, harness {:.2} cores{}{lost}",
        fmt_count(res.msgs_per_s),
        res.harness_cores,
        res.server
            .map(|s| format!(", server {:.2} cores", s.cores))
            .unwrap_or_default(),
    ));
    Ok(res)
}

/// Subjects unique per run, so a run never sees traffic left over from another.
pub(crate) fn unique_subject(prefix: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}.{}.{seq}", std::process::id())
}

/// Threads and sockets of a run. Dropping it stops and joins everything, on success
/// and on every error path alike.
pub(crate) struct Workers<T> {
    stop: Arc<AtomicBool>,
    pub(crate) sockets: Vec<TcpStream>,
    pub(crate) handles: Vec<JoinHandle<T>>,
}

impl<T> Workers<T> {
    pub(crate) fn new(stop: Arc<AtomicBool>) -> Self {
        Self {
            stop,
            sockets: Vec::new(),
            handles: Vec::new(),
        }
    }

    pub(crate) fn all_finished(&self) -> bool {
        self.handles.iter().all(|h| h.is_finished())
    }

    fn stop_all(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for s in &self.sockets {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Joins all threads; a panicked thread becomes an error.
    pub(crate) fn join(&mut self) -> Result<Vec<T>> {
        let mut out = Vec::new();
        for h in self.handles.drain(..) {
            out.push(h.join().map_err(|_| anyhow!("a worker thread panicked"))?);
        }
        Ok(out)
    }
}

impl<T> Drop for Workers<T> {
    fn drop(&mut self) {
        self.stop_all();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// First error reported by any worker.
#[derive(Default, Clone)]
pub(crate) struct ErrorSlot(Arc<Mutex<Option<String>>>);

impl ErrorSlot {
    pub(crate) fn set(&self, e: String) {
        if let Ok(mut g) = self.0.lock() {
            g.get_or_insert(e);
        }
    }
    pub(crate) fn get(&self) -> Option<String> {
        self.0.lock().ok().and_then(|g| g.clone())
    }
}

/// Which subscriber count the publishers must not run ahead of.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Every subscriber gets every message: the slowest one.
    Min,
    /// A queue group shares the messages: their total.
    Sum,
}

fn flow_position(flow: Flow, received: &[AtomicU64]) -> u64 {
    let it = received.iter().map(|r| r.load(Ordering::Acquire));
    match flow {
        Flow::Min => it.min().unwrap_or(0),
        Flow::Sum => it.sum(),
    }
}

/// Everything a publisher thread needs.
struct PubPlan {
    batch: Arc<Vec<u8>>,
    frame_len: usize,
    per_batch: u64,
    deadline: Option<Instant>,
    count: Option<u64>,
    window: u64,
    flow: Option<Flow>,
    published: Arc<AtomicU64>,
    received: Arc<Vec<AtomicU64>>,
    stop: Arc<AtomicBool>,
}

/// Returns messages sent and when the server confirmed having processed them.
fn publisher(mut pc: PubConn, p: PubPlan) -> Result<(u64, Instant)> {
    let mut sent: u64 = 0;
    'outer: loop {
        if p.stop.load(Ordering::Relaxed) {
            break;
        }
        let n = match (p.deadline, p.count) {
            (_, Some(c)) if sent >= c => break,
            (_, Some(c)) => p.per_batch.min(c - sent),
            (Some(d), None) if Instant::now() >= d => break,
            _ => p.per_batch,
        };
        if let Some(flow) = p.flow {
            let ahead = |received: &[AtomicU64]| {
                p.published
                    .load(Ordering::Acquire)
                    .saturating_sub(flow_position(flow, received))
            };
            if ahead(&p.received) + n > p.window {
                // Blocked: resume only once a quarter of the window has drained, and
                // sleep with growing naps meanwhile, so that waiting costs a few
                // wakeups per window rather than one per batch.
                let resume = (p.window - p.window / 4).saturating_sub(n);
                let mut nap = Duration::from_micros(20);
                let mut last = flow_position(flow, &p.received);
                let mut last_progress = Instant::now();
                loop {
                    if p.stop.load(Ordering::Relaxed) {
                        break 'outer;
                    }
                    let now = Instant::now();
                    if p.deadline.is_some_and(|d| now >= d) {
                        break 'outer;
                    }
                    let pos = flow_position(flow, &p.received);
                    if pos != last {
                        last = pos;
                        last_progress = now;
                    } else if now - last_progress > STALL_TIMEOUT {
                        bail!(
                            "subscribers made no progress for {STALL_TIMEOUT:?} ({} messages outstanding)",
                            ahead(&p.received)
                        );
                    }
                    std::thread::sleep(nap);
                    nap = (nap * 2).min(MAX_NAP);
                    if ahead(&p.received) <= resume {
                        break;
                    }
                }
            }
        }
        let bytes = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(p.frame_len))
            .ok_or_else(|| anyhow!("batch too large"))?;
        pc.stream
            .write_all(&p.batch[..bytes])
            .context("publishing")?;
        sent += n;
        p.published.fetch_add(n, Ordering::Release);
        pc.service()?;
    }
    pc.flush().context("flushing publisher")?;
    Ok((sent, Instant::now()))
}

fn subscriber(
    mut c: Conn,
    idx: usize,
    received: Arc<Vec<AtomicU64>>,
    stop: Arc<AtomicBool>,
    err: ErrorSlot,
) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut count: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let n = match read_some(&mut c.stream, &mut buf) {
            Ok(n) => n,
            Err(e) => {
                if !stop.load(Ordering::Relaxed) {
                    err.set(format!("subscriber {idx}: {e:#}"));
                }
                return;
            }
        };
        if n == 0 {
            continue;
        }
        let (mut pings, mut server_err) = (0u32, None);
        let res = c.scanner.feed(&buf[..n], &mut |ev| match ev {
            Event::Msg(_) => count += 1,
            Event::Ping => pings += 1,
            Event::Err(e) => server_err = Some(String::from_utf8_lossy(e).into_owned()),
            _ => {}
        });
        received[idx].store(count, Ordering::Release);
        if let Err(e) = res {
            err.set(format!("subscriber {idx}: {e:#}"));
            return;
        }
        if let Some(e) = server_err {
            err.set(format!("subscriber {idx}: server error: {e}"));
            return;
        }
        for _ in 0..pings {
            if let Err(e) = c.stream.write_all(b"PONG\r\n") {
                err.set(format!("subscriber {idx}: writing PONG: {e}"));
                return;
            }
        }
    }
}

pub(crate) fn sample_server(pid: Option<u32>) -> Result<Option<(u32, ProcSample)>> {
    pid.map(|p| procstat::sample(p).map(|s| (p, s)))
        .transpose()
        .context("reading the server's /proc entries (is --server-pid right?)")
}

pub(crate) fn usage(
    before: Option<(u32, ProcSample)>,
    after: Option<(u32, ProcSample)>,
    elapsed: f64,
    msgs: u64,
) -> Option<ServerUsage> {
    let ((pid, b), (_, a)) = (before?, after?);
    let cpu_s = a.cpu.saturating_sub(b.cpu).as_secs_f64();
    Some(ServerUsage {
        pid,
        cpu_s,
        cores: cpu_s / elapsed.max(1e-9),
        cpu_ns_per_msg: cpu_s * 1e9 / (msgs.max(1) as f64),
        rss_kb: a.rss_kb,
        peak_rss_kb: a.hwm_kb,
    })
}

/// The default flow-control window for a message size, at least a few batches.
pub fn default_window(size: usize, subject_len: usize, per_batch: u64) -> u64 {
    // "MSG <subject> <sid> <size>\r\n" + payload + "\r\n", sid and size short.
    let msg_frame = subject_len + size + 20;
    ((WINDOW_BYTES / msg_frame) as u64).max(per_batch * 4)
}

fn run_pubsub(target: &Target, sc: &Scenario, progress: &Progress) -> Result<RunResult> {
    let ep = &target.endpoint;
    let subject = unique_subject("bench");
    let stop = Arc::new(AtomicBool::new(false));
    let subs = if sc.kind == Kind::Pub { 0 } else { sc.subs };
    if sc.publishers == 0 {
        bail!("at least one publisher is needed");
    }
    let received: Arc<Vec<AtomicU64>> = Arc::new((0..subs).map(|_| AtomicU64::new(0)).collect());
    let errors = ErrorSlot::default();

    let mut sub_workers: Workers<()> = Workers::new(stop.clone());
    for i in 0..subs {
        let mut c = Conn::connect(ep, &format!("bench-sub-{i}"))?;
        c.check_payload(sc.size)?;
        let sub = if sc.queue {
            format!("SUB {subject} q 1\r\n")
        } else {
            format!("SUB {subject} 1\r\n")
        };
        c.send(sub.as_bytes())?;
        c.sync().context("subscribing")?;
        c.stream
            .set_read_timeout(Some(POLL))
            .context("setting read timeout")?;
        sub_workers
            .sockets
            .push(c.stream.try_clone().context("cloning socket")?);
        let (received, stop, errors) = (received.clone(), stop.clone(), errors.clone());
        sub_workers.handles.push(
            std::thread::Builder::new()
                .name(format!("bench-sub-{i}"))
                .spawn(move || subscriber(c, i, received, stop, errors))
                .context("spawning subscriber")?,
        );
    }

    let mut frame = format!("PUB {subject} {}\r\n", sc.size).into_bytes();
    frame.resize(frame.len() + sc.size, b'x');
    frame.extend_from_slice(b"\r\n");
    let per_batch = (BATCH_BYTES / frame.len()).max(1) as u64;
    let batch = Arc::new(frame.repeat(per_batch as usize));
    let window = sc
        .window
        .unwrap_or_else(|| default_window(sc.size, subject.len(), per_batch))
        .max(per_batch);
    let flow = match (subs, sc.queue) {
        (0, _) => None,
        (_, true) => Some(Flow::Sum),
        (_, false) => Some(Flow::Min),
    };

    let mut conns = Vec::new();
    for i in 0..sc.publishers {
        let mut c = Conn::connect(ep, &format!("bench-pub-{i}"))?;
        c.check_payload(sc.size)?;
        c.sync().context("connecting publisher")?;
        conns.push(PubConn::new(c)?);
    }

    let published = Arc::new(AtomicU64::new(0));
    let srv0 = sample_server(target.pid)?;
    let cpu0 = procstat::self_cpu();
    let start = Instant::now();
    let (deadline, count) = match sc.limit {
        Limit::Duration(d) => (Some(start + d), None),
        Limit::Count(c) => (None, Some(c)),
    };
    let hard_cap = start
        + match sc.limit {
            Limit::Duration(d) => d + STALL_TIMEOUT + crate::conn::SYNC_TIMEOUT * 2,
            Limit::Count(_) => COUNT_RUN_CAP,
        };
    let mut pub_workers: Workers<Result<(u64, Instant)>> = Workers::new(stop.clone());
    for (i, pc) in conns.into_iter().enumerate() {
        pub_workers
            .sockets
            .push(pc.stream.try_clone().context("cloning socket")?);
        let plan = PubPlan {
            batch: batch.clone(),
            frame_len: frame.len(),
            per_batch,
            deadline,
            count,
            window,
            flow,
            published: published.clone(),
            received: received.clone(),
            stop: stop.clone(),
        };
        pub_workers.handles.push(
            std::thread::Builder::new()
                .name(format!("bench-pub-{i}"))
                .spawn(move || publisher(pc, plan))
                .context("spawning publisher")?,
        );
    }

    let delivered_now = || {
        received
            .iter()
            .map(|r| r.load(Ordering::Acquire))
            .sum::<u64>()
    };
    let mut last_tick = (Instant::now(), 0u64);
    while !pub_workers.all_finished() {
        if let Some(e) = errors.get() {
            bail!("{e}");
        }
        if Instant::now() > hard_cap {
            bail!("run did not finish by its hard cap");
        }
        std::thread::sleep(Duration::from_millis(50));
        let now = Instant::now();
        if now - last_tick.0 >= Duration::from_millis(250) {
            let p = published.load(Ordering::Relaxed);
            let rate = (p - last_tick.1) as f64 / (now - last_tick.0).as_secs_f64();
            progress.update(&format!(
                "{:5.1}s  published {}  delivered {}  {} msgs/s published",
                (now - start).as_secs_f64(),
                fmt_count(p as f64),
                fmt_count(delivered_now() as f64),
                fmt_count(rate)
            ));
            last_tick = (now, p);
        }
    }
    let mut total_pub = 0u64;
    let mut pub_end = start;
    for r in pub_workers.join()? {
        let (n, end) = r?;
        total_pub += n;
        pub_end = pub_end.max(end);
    }

    // Everything was routed when the PONGs came back; give it time to arrive.
    let (end, lost) = if let Some(flow) = flow {
        let want = total_pub;
        let drain_deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut spins = 0;
        loop {
            if let Some(e) = errors.get() {
                bail!("{e}");
            }
            if flow_position(flow, &received) >= want {
                break (Instant::now(), 0);
            }
            if Instant::now() > drain_deadline {
                let expected = want * if flow == Flow::Min { subs as u64 } else { 1 };
                break (Instant::now(), expected.saturating_sub(delivered_now()));
            }
            backoff(&mut spins);
        }
    } else {
        (pub_end, 0)
    };
    let cpu1 = procstat::self_cpu();
    let srv1 = sample_server(target.pid)?;
    sub_workers.stop_all();
    sub_workers.join()?;
    if let Some(e) = errors.get() {
        bail!("{e}");
    }

    let elapsed = (end - start).as_secs_f64().max(1e-9);
    let delivered = delivered_now();
    let msgs = if subs == 0 { total_pub } else { delivered };
    let harness_cpu = cpu1.saturating_sub(cpu0).as_secs_f64();
    Ok(RunResult {
        scenario: sc.name.clone(),
        description: sc.describe(),
        kind: sc.kind,
        size: sc.size,
        elapsed_s: elapsed,
        published: total_pub,
        delivered,
        lost,
        msgs,
        msgs_per_s: msgs as f64 / elapsed,
        mb_per_s: msgs as f64 * sc.size as f64 / elapsed / 1e6,
        harness_cpu_s: harness_cpu,
        harness_cores: harness_cpu / elapsed,
        server: usage(srv0, srv1, elapsed, msgs),
        latency: None,
        disk: None,
    })
}

fn responder(mut c: Conn, idx: usize, size: usize, stop: Arc<AtomicBool>, err: ErrorSlot) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    let payload = vec![b'r'; size];
    while !stop.load(Ordering::Relaxed) {
        let n = match read_some(&mut c.stream, &mut buf) {
            Ok(n) => n,
            Err(e) => {
                if !stop.load(Ordering::Relaxed) {
                    err.set(format!("responder {idx}: {e:#}"));
                }
                return;
            }
        };
        if n == 0 {
            continue;
        }
        out.clear();
        let (mut server_err, mut bad) = (None, false);
        let res = c.scanner.feed(&buf[..n], &mut |ev| match ev {
            Event::Msg(m) => {
                let Some(reply) = m.fields().and_then(|f| f.reply) else {
                    bad = true;
                    return;
                };
                out.extend_from_slice(b"PUB ");
                out.extend_from_slice(reply);
                out.extend_from_slice(format!(" {size}\r\n").as_bytes());
                out.extend_from_slice(&payload);
                out.extend_from_slice(b"\r\n");
            }
            Event::Ping => out.extend_from_slice(b"PONG\r\n"),
            Event::Err(e) => server_err = Some(String::from_utf8_lossy(e).into_owned()),
            _ => {}
        });
        if let Err(e) = res {
            err.set(format!("responder {idx}: {e:#}"));
            return;
        }
        if let Some(e) = server_err {
            err.set(format!("responder {idx}: server error: {e}"));
            return;
        }
        if bad {
            err.set(format!("responder {idx}: request without a reply subject"));
            return;
        }
        if !out.is_empty() {
            if let Err(e) = c.stream.write_all(&out) {
                err.set(format!("responder {idx}: replying: {e}"));
                return;
            }
        }
    }
}

struct ReqPlan {
    request: Vec<u8>,
    deadline: Option<Instant>,
    count: Option<u64>,
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

fn requester(mut c: Conn, p: ReqPlan) -> Result<(Histogram<u64>, Instant)> {
    let mut hist = latency_histogram()?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut n_done: u64 = 0;
    loop {
        if p.stop.load(Ordering::Relaxed) {
            break;
        }
        match (p.deadline, p.count) {
            (_, Some(c)) if n_done >= c => break,
            (Some(d), None) if Instant::now() >= d => break,
            _ => {}
        }
        let t0 = Instant::now();
        c.stream.write_all(&p.request).context("sending request")?;
        let mut got = false;
        while !got {
            let n = read_some(&mut c.stream, &mut buf).context("waiting for reply")?;
            if n == 0 {
                if t0.elapsed() > REPLY_TIMEOUT {
                    bail!("no reply within {REPLY_TIMEOUT:?}");
                }
                if p.stop.load(Ordering::Relaxed) {
                    break;
                }
                continue;
            }
            let (mut pings, mut server_err) = (0u32, None);
            c.scanner.feed(&buf[..n], &mut |ev| match ev {
                Event::Msg(_) => got = true,
                Event::Ping => pings += 1,
                Event::Err(e) => server_err = Some(String::from_utf8_lossy(e).into_owned()),
                _ => {}
            })?;
            if let Some(e) = server_err {
                bail!("server error: {e}");
            }
            for _ in 0..pings {
                c.stream.write_all(b"PONG\r\n").context("writing PONG")?;
            }
        }
        if !got {
            break;
        }
        let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        hist.saturating_record(ns.max(1));
        n_done += 1;
        p.done.store(n_done, Ordering::Relaxed);
    }
    Ok((hist, Instant::now()))
}

fn run_reqrep(target: &Target, sc: &Scenario, progress: &Progress) -> Result<RunResult> {
    let ep = &target.endpoint;
    let subject = unique_subject("bench.req");
    let inbox = unique_subject("_INBOX.bench");
    let stop = Arc::new(AtomicBool::new(false));
    let errors = ErrorSlot::default();
    let responders = sc.subs.max(1);

    let mut resp_workers: Workers<()> = Workers::new(stop.clone());
    for i in 0..responders {
        let mut c = Conn::connect(ep, &format!("bench-responder-{i}"))?;
        c.check_payload(sc.size)?;
        let sub = if responders > 1 {
            format!("SUB {subject} q 1\r\n")
        } else {
            format!("SUB {subject} 1\r\n")
        };
        c.send(sub.as_bytes())?;
        c.sync().context("subscribing responder")?;
        c.stream
            .set_read_timeout(Some(POLL))
            .context("setting read timeout")?;
        resp_workers
            .sockets
            .push(c.stream.try_clone().context("cloning socket")?);
        let (stop, errors, size) = (stop.clone(), errors.clone(), sc.size);
        resp_workers.handles.push(
            std::thread::Builder::new()
                .name(format!("bench-responder-{i}"))
                .spawn(move || responder(c, i, size, stop, errors))
                .context("spawning responder")?,
        );
    }

    let mut c = Conn::connect(ep, "bench-requester")?;
    c.check_payload(sc.size)?;
    c.send(format!("SUB {inbox} 1\r\n").as_bytes())?;
    c.sync().context("subscribing requester")?;
    c.stream
        .set_read_timeout(Some(POLL))
        .context("setting read timeout")?;
    let mut request = format!("PUB {subject} {inbox} {}\r\n", sc.size).into_bytes();
    request.resize(request.len() + sc.size, b'q');
    request.extend_from_slice(b"\r\n");

    let done = Arc::new(AtomicU64::new(0));
    let srv0 = sample_server(target.pid)?;
    let cpu0 = procstat::self_cpu();
    let start = Instant::now();
    let (deadline, count) = match sc.limit {
        Limit::Duration(d) => (Some(start + d), None),
        Limit::Count(c) => (None, Some(c)),
    };
    let hard_cap = start
        + match sc.limit {
            Limit::Duration(d) => d + REPLY_TIMEOUT * 2,
            Limit::Count(_) => COUNT_RUN_CAP,
        };
    let mut req_workers: Workers<Result<(Histogram<u64>, Instant)>> = Workers::new(stop.clone());
    req_workers
        .sockets
        .push(c.stream.try_clone().context("cloning socket")?);
    let plan = ReqPlan {
        request,
        deadline,
        count,
        done: done.clone(),
        stop: stop.clone(),
    };
    req_workers.handles.push(
        std::thread::Builder::new()
            .name("bench-requester".into())
            .spawn(move || requester(c, plan))
            .context("spawning requester")?,
    );
    let mut last_tick = (Instant::now(), 0u64);
    while !req_workers.all_finished() {
        if let Some(e) = errors.get() {
            bail!("{e}");
        }
        if Instant::now() > hard_cap {
            bail!("run did not finish by its hard cap");
        }
        std::thread::sleep(Duration::from_millis(50));
        let now = Instant::now();
        if now - last_tick.0 >= Duration::from_millis(250) {
            let d = done.load(Ordering::Relaxed);
            let rate = (d - last_tick.1) as f64 / (now - last_tick.0).as_secs_f64();
            progress.update(&format!(
                "{:5.1}s  requests {}  {} req/s",
                (now - start).as_secs_f64(),
                fmt_count(d as f64),
                fmt_count(rate)
            ));
            last_tick = (now, d);
        }
    }
    let (hist, end) = req_workers
        .join()?
        .pop()
        .ok_or_else(|| anyhow!("requester vanished"))??;
    let cpu1 = procstat::self_cpu();
    let srv1 = sample_server(target.pid)?;
    resp_workers.stop_all();
    resp_workers.join()?;
    if let Some(e) = errors.get() {
        bail!("{e}");
    }

    let elapsed = (end - start).as_secs_f64().max(1e-9);
    let msgs = hist.len();
    let latency = Latency::from_histogram(&hist);
    let harness_cpu = cpu1.saturating_sub(cpu0).as_secs_f64();
    Ok(RunResult {
        scenario: sc.name.clone(),
        description: sc.describe(),
        kind: sc.kind,
        size: sc.size,
        elapsed_s: elapsed,
        published: msgs,
        delivered: msgs,
        lost: 0,
        msgs,
        msgs_per_s: msgs as f64 / elapsed,
        mb_per_s: msgs as f64 * sc.size as f64 / elapsed / 1e6,
        harness_cpu_s: harness_cpu,
        harness_cores: harness_cpu / elapsed,
        server: usage(srv0, srv1, elapsed, msgs),
        latency: Some(latency),
        disk: None,
    })
}

/// 1234567 -> "1.23M".
pub fn fmt_count(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_positions() {
        let r: Vec<AtomicU64> = [5u64, 3, 9].iter().map(|v| AtomicU64::new(*v)).collect();
        assert_eq!(flow_position(Flow::Min, &r), 3);
        assert_eq!(flow_position(Flow::Sum, &r), 17);
        assert_eq!(flow_position(Flow::Min, &[]), 0);
    }

    #[test]
    fn window_is_at_least_four_batches() {
        assert_eq!(default_window(1024 * 1024, 10, 1), 4);
        assert!(default_window(16, 10, 1000) > 4000);
    }

    #[test]
    fn counts_format() {
        assert_eq!(fmt_count(999.0), "999");
        assert_eq!(fmt_count(1500.0), "1.5k");
        assert_eq!(fmt_count(2_345_678.0), "2.35M");
    }
}
