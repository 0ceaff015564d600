//! The monitoring HTTP server (`-m`, `http_port`, `http`), on the control executor.
//!
//! Endpoints answer with nats-server's JSON (field names, order, units), gathered
//! from the shards over the control lanes when asked. `/metrics` serves the same
//! numbers in the Prometheus text format, named as prometheus-nats-exporter names
//! them, plus strait's per-shard metrics.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use strait_shards::control::{AccountSnapshot, Command, Commander, ConnSnapshot, ShardSnapshot};
use strait_shards::global::Global;
use strait_shards::health::{self, HealthStatus, HealthzOptions};
use strait_shards::jetstream::service::{JetStream, JszOptions};
use strait_shards::options::{API_LEVEL, NATS_VERSION, STRAIT_VERSION};
use strait_shards::{format_duration, rfc3339, ServerOptions};

/// What the monitor needs to know about the server.
pub struct MonitorContext {
    pub opts: RefCell<ServerOptions>,
    pub client_port: u16,
    pub http_host: String,
    pub http_port: u16,
    /// The profiling endpoint's port, when it is on (for /varz).
    pub profiling_port: Cell<Option<u16>>,
    pub base_path: String,
    pub start: SystemTime,
    pub config_load_time: Cell<SystemTime>,
    pub global: Arc<Global>,
    pub shards: Commander,
    req_stats: RefCell<BTreeMap<String, u64>>,
    /// The JetStream service once it runs (it starts after monitoring).
    pub jetstream: RefCell<Option<JetStream>>,
}

impl MonitorContext {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        opts: ServerOptions,
        client_port: u16,
        http_host: String,
        http_port: u16,
        base_path: String,
        start: SystemTime,
        global: Arc<Global>,
        shards: Commander,
    ) -> Self {
        MonitorContext {
            opts: RefCell::new(opts),
            client_port,
            http_host,
            http_port,
            profiling_port: Cell::new(None),
            base_path,
            start,
            config_load_time: Cell::new(start),
            global,
            shards,
            req_stats: RefCell::default(),
            jetstream: RefCell::new(None),
        }
    }

    async fn gather(&self, subs: bool) -> Vec<ShardSnapshot> {
        self.shards
            .gather(
                |reply| Command::Snapshot { subs, reply },
                GATHER_TIMEOUT,
                glommio::timer::sleep,
            )
            .await
    }
}

/// How long a monitoring request waits for the shards' figures.
const GATHER_TIMEOUT: Duration = Duration::from_secs(5);

/// nats-server's compact uptime: `27s`, `1m5s`, `2h3m4s`, `1d2h3m4s`, `1y2d...`.
fn uptime(d: Duration) -> String {
    let mut secs = d.as_secs();
    let years = secs / (365 * 86400);
    secs %= 365 * 86400;
    let days = secs / 86400;
    secs %= 86400;
    let hours = secs / 3600;
    secs %= 3600;
    let mins = secs / 60;
    secs %= 60;
    if years > 0 {
        format!("{years}y{days}d{hours}h{mins}m{secs}s")
    } else if days > 0 {
        format!("{days}d{hours}h{mins}m{secs}s")
    } else if hours > 0 {
        format!("{hours}h{mins}m{secs}s")
    } else if mins > 0 {
        format!("{mins}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

/// Seconds as Go marshals a float64: `2`, not `2.0`.
fn go_seconds(d: Duration) -> Value {
    if d.subsec_nanos() == 0 {
        json!(d.as_secs())
    } else {
        json!(d.as_secs_f64())
    }
}

fn since(a: SystemTime, b: SystemTime) -> Duration {
    b.duration_since(a).unwrap_or_default()
}

/// Resident memory and CPU time of this process, from /proc.
fn process_usage() -> (u64, f64) {
    let rss_pages: u64 = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0);
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let ticks: f64 = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ut: f64 = f.get(11)?.parse().ok()?;
            let st: f64 = f.get(12)?.parse().ok()?;
            Some(ut + st)
        })
        .unwrap_or(0.0);
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (rss_pages * page, ticks / hz)
}

#[derive(Default)]
struct Totals {
    in_msgs: u64,
    in_bytes: u64,
    out_msgs: u64,
    out_bytes: u64,
    slow_consumers: u64,
    stale_connections: u64,
    subscriptions: usize,
    connections: usize,
}

fn totals(snaps: &[ShardSnapshot]) -> Totals {
    let mut t = Totals::default();
    for s in snaps {
        t.in_msgs += s.in_msgs;
        t.in_bytes += s.in_bytes;
        t.out_msgs += s.out_msgs;
        t.out_bytes += s.out_bytes;
        t.slow_consumers += s.slow_consumers;
        t.stale_connections += s.stale_connections;
        t.subscriptions += s.sublist.subscriptions;
        t.connections += s.connections.len();
    }
    t
}

async fn varz(ctx: &MonitorContext) -> Value {
    let snaps = ctx.gather(false).await;
    let mut v = varz_from(ctx, &snaps);
    let js = ctx.jetstream.borrow().clone();
    if let Some(js) = js {
        v["jetstream"] = js.varz().await;
    }
    v
}

/// /varz from figures already gathered, without the fields nats-server omits.
fn varz_from(ctx: &MonitorContext, snaps: &[ShardSnapshot]) -> Value {
    let mut v = varz_full(ctx, snaps);
    if let Some(obj) = v.as_object_mut() {
        obj.retain(|_, value| !value.is_null());
    }
    v
}

/// The figures /varz and /metrics share, read once per request.
struct ServerFigures {
    totals: Totals,
    total_connections: u64,
    now: SystemTime,
    up: Duration,
    /// Resident memory, bytes.
    mem: u64,
    /// CPU use since start, percent with two decimals.
    cpu: f64,
    cores: usize,
}

impl ServerFigures {
    fn read(ctx: &MonitorContext, snaps: &[ShardSnapshot]) -> Self {
        let now = SystemTime::now();
        let (mem, cpu_secs) = process_usage();
        let up = since(ctx.start, now);
        let cpu = if up.as_secs_f64() > 0.0 {
            (cpu_secs / up.as_secs_f64() * 100.0 * 100.0).round() / 100.0
        } else {
            0.0
        };
        ServerFigures {
            totals: totals(snaps),
            total_connections: ctx.global.total_connections.load(Ordering::Relaxed),
            now,
            up,
            mem,
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// The /varz numbers that /metrics exports as `<prefix>_varz_<field>` gauges:
    /// (field, help, value).
    fn varz_gauges(&self, opts: &ServerOptions) -> [(&'static str, &'static str, f64); 20] {
        let t = &self.totals;
        [
            (
                "connections",
                "Current number of client connections",
                t.connections as f64,
            ),
            (
                "total_connections",
                "Connections accepted since start",
                self.total_connections as f64,
            ),
            (
                "in_msgs",
                "Messages received from clients",
                t.in_msgs as f64,
            ),
            ("out_msgs", "Messages sent to clients", t.out_msgs as f64),
            ("in_bytes", "Bytes received from clients", t.in_bytes as f64),
            ("out_bytes", "Bytes sent to clients", t.out_bytes as f64),
            (
                "slow_consumers",
                "Slow consumers disconnected",
                t.slow_consumers as f64,
            ),
            (
                "stale_connections",
                "Stale connections closed",
                t.stale_connections as f64,
            ),
            (
                "subscriptions",
                "Current subscriptions",
                t.subscriptions as f64,
            ),
            ("mem", "Resident memory in bytes", self.mem as f64),
            ("cpu", "CPU usage in percent", self.cpu),
            ("cores", "CPU cores", self.cores as f64),
            (
                "max_connections",
                "Configured maximum connections",
                opts.max_connections as f64,
            ),
            (
                "max_payload",
                "Configured maximum payload",
                opts.max_payload as f64,
            ),
            (
                "max_pending",
                "Configured maximum pending bytes",
                opts.max_pending as f64,
            ),
            (
                "max_control_line",
                "Configured maximum control line",
                opts.max_control_line as f64,
            ),
            (
                "ping_max",
                "Configured maximum outstanding pings",
                f64::from(opts.ping_max),
            ),
            ("routes", "Current routes", 0.0),
            ("remotes", "Current remote servers", 0.0),
            ("leafnodes", "Current leaf node connections", 0.0),
        ]
    }
}

fn varz_full(ctx: &MonitorContext, snaps: &[ShardSnapshot]) -> Value {
    let figures = ServerFigures::read(ctx, snaps);
    let t = &figures.totals;
    let opts = ctx.opts.borrow().clone();
    let (now, up, mem, cpu, cores) = (
        figures.now,
        figures.up,
        figures.mem,
        figures.cpu,
        figures.cores,
    );
    // nats-server shows max_subscriptions only when it is set.
    let max_subscriptions = (opts.max_subscriptions > 0).then_some(opts.max_subscriptions);
    let req_stats: BTreeMap<String, u64> = ctx.req_stats.borrow().clone();
    json!({
        "server_id": opts.server_id,
        "server_name": opts.name(),
        "version": NATS_VERSION,
        "proto": 1,
        "go": format!("strait-{STRAIT_VERSION}"),
        "host": opts.host,
        "port": ctx.client_port,
        // Omitted when false, as nats-server's omitempty does; INFO's rule.
        "auth_required": opts.auth.advertised().then_some(true),
        "tls_required": opts.tls_required().then_some(true),
        "tls_verify": opts.tls.as_ref().is_some_and(|t| t.verify()).then_some(true),
        "max_connections": opts.max_connections,
        "max_subscriptions": max_subscriptions,
        "ping_interval": opts.ping_interval.as_nanos() as u64,
        "ping_max": opts.ping_max,
        "http_host": ctx.http_host,
        "http_port": ctx.http_port,
        "http_base_path": ctx.base_path,
        "https_port": 0,
        "auth_timeout": go_seconds(opts.auth.timeout),
        "max_control_line": opts.max_control_line,
        "max_payload": opts.max_payload,
        "max_pending": opts.max_pending,
        "cluster": {},
        "gateway": {},
        "leaf": {},
        "mqtt": {},
        "websocket": {},
        "jetstream": {},
        "tls_timeout": go_seconds(opts.tls.as_ref().map_or(strait_shards::tls::DEFAULT_TLS_TIMEOUT, |t| t.timeout())),
        "write_deadline": opts.write_deadline.as_nanos() as u64,
        "start": rfc3339(ctx.start),
        "now": rfc3339(now),
        "uptime": uptime(up),
        "mem": mem,
        "cores": cores,
        "gomaxprocs": cores,
        "cpu": cpu,
        "connections": t.connections,
        "total_connections": figures.total_connections,
        "routes": 0,
        "remotes": 0,
        "leafnodes": 0,
        "in_msgs": t.in_msgs,
        "out_msgs": t.out_msgs,
        "in_bytes": t.in_bytes,
        "out_bytes": t.out_bytes,
        "slow_consumers": t.slow_consumers,
        "stale_connections": t.stale_connections,
        "stalled_clients": 0,
        "subscriptions": t.subscriptions,
        "http_req_stats": req_stats,
        "config_load_time": rfc3339(ctx.config_load_time.get()),
        "config_digest": "",
        "system_account": opts.accounts.name(opts.accounts.system),
        "feature_flags": {"js_ack_fc_v2": opts.js_ack_fc_v2, "js_raft_delete_range": false},
        "slow_consumer_stats": {"clients": t.slow_consumers, "routes": 0, "gateways": 0, "leafs": 0},
        "stale_connection_stats": {"clients": t.stale_connections, "routes": 0, "gateways": 0, "leafs": 0},
        "strait": {
            "version": STRAIT_VERSION,
            "shards": snaps.len(),
            "api_level": API_LEVEL,
            "profile_port": ctx.profiling_port.get(),
        },
    })
}

type Query = BTreeMap<String, String>;

fn parse_query(q: Option<&str>) -> Query {
    let mut out = Query::new();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(k.to_string(), v.to_string());
    }
    out
}

/// Go's strconv.ParseBool.
fn parse_bool(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!(
            "Error decoding boolean for '{key}': strconv.ParseBool: parsing \"{v}\": invalid syntax"
        )),
    }
}

fn parse_int(key: &str, v: &str) -> Result<i64, String> {
    v.parse().map_err(|_| {
        format!("Error decoding integer for '{key}': strconv.Atoi: parsing \"{v}\": invalid syntax")
    })
}

fn conn_json(c: &ConnSnapshot, now: SystemTime, subs: u8, auth: bool) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("cid".into(), json!(c.cid));
    m.insert("kind".into(), json!("Client"));
    m.insert("type".into(), json!("nats"));
    m.insert("ip".into(), json!(c.ip));
    m.insert("port".into(), json!(c.port));
    m.insert("start".into(), json!(rfc3339(c.start)));
    m.insert("last_activity".into(), json!(rfc3339(c.last_activity)));
    if let Some(stop) = c.stop {
        m.insert("stop".into(), json!(rfc3339(stop)));
    }
    if let Some(reason) = &c.reason {
        m.insert("reason".into(), json!(reason));
    }
    m.insert("rtt".into(), json!("0s"));
    let end = c.stop.unwrap_or(now);
    m.insert("uptime".into(), json!(uptime(since(c.start, end))));
    m.insert(
        "idle".into(),
        json!(format_duration(Duration::from_secs(
            since(c.last_activity, end).as_secs()
        ))),
    );
    m.insert("pending_bytes".into(), json!(c.pending_bytes));
    m.insert("in_msgs".into(), json!(c.in_msgs));
    m.insert("out_msgs".into(), json!(c.out_msgs));
    m.insert("in_bytes".into(), json!(c.in_bytes));
    m.insert("out_bytes".into(), json!(c.out_bytes));
    m.insert("subscriptions".into(), json!(c.subscriptions));
    if !c.name.is_empty() {
        m.insert("name".into(), json!(c.name));
    }
    if !c.lang.is_empty() {
        m.insert("lang".into(), json!(c.lang));
    }
    if !c.version.is_empty() {
        m.insert("version".into(), json!(c.version));
    }
    if auth {
        if let Some(user) = &c.user {
            m.insert("authorized_user".into(), json!(user));
        }
        if c.account != strait_shards::accounts::GLOBAL_ACCOUNT_NAME {
            m.insert("account".into(), json!(c.account));
        }
        m.insert("name_tag".into(), json!(c.account));
    }
    if let Some(tls) = &c.tls {
        m.insert("tls_version".into(), json!(tls.version));
        m.insert("tls_cipher_suite".into(), json!(tls.cipher));
        if !tls.peer_certs.is_empty() {
            let certs: Vec<Value> = tls
                .peer_certs
                .iter()
                .map(|p| {
                    json!({
                        "subject": p.subject,
                        "spki_sha256": p.spki_sha256,
                        "cert_sha256": p.cert_sha256,
                    })
                })
                .collect();
            m.insert("tls_peer_certs".into(), json!(certs));
        }
        if tls.handshake_first {
            m.insert("tls_first".into(), json!(true));
        }
    }
    if subs == 1 && !c.subs.is_empty() {
        let list: Vec<&str> = c.subs.iter().map(|s| s.subject.as_str()).collect();
        m.insert("subscriptions_list".into(), json!(list));
    }
    if subs == 2 && !c.subs.is_empty() {
        let list: Vec<Value> = c
            .subs
            .iter()
            .map(|s| {
                let mut d = serde_json::Map::new();
                d.insert("subject".into(), json!(s.subject));
                if let Some(q) = &s.queue {
                    d.insert("qgroup".into(), json!(q));
                }
                d.insert("sid".into(), json!(s.sid));
                d.insert("msgs".into(), json!(s.msgs));
                if s.max > 0 {
                    d.insert("max".into(), json!(s.max));
                }
                d.insert("cid".into(), json!(s.cid));
                Value::Object(d)
            })
            .collect();
        m.insert("subscriptions_list_detail".into(), json!(list));
    }
    Value::Object(m)
}

async fn connz(ctx: &MonitorContext, q: &Query) -> Result<Value, String> {
    let subs = match q.get("subs").map(String::as_str) {
        None => 0,
        Some("detail") => 2,
        Some(v) => u8::from(parse_bool("subs", v)?),
    };
    let offset = match q.get("offset") {
        Some(v) => parse_int("offset", v)?.max(0) as usize,
        None => 0,
    };
    let limit = match q.get("limit") {
        Some(v) => parse_int("limit", v)?.max(0) as usize,
        None => 1024,
    };
    let limit = if limit == 0 { 1024 } else { limit };
    let state = q.get("state").map(String::as_str).unwrap_or("open");
    let sort = q.get("sort").map(String::as_str).unwrap_or("cid");
    let snaps = ctx.gather(subs > 0).await;
    let mut conns: Vec<ConnSnapshot> = Vec::new();
    for s in &snaps {
        match state {
            "open" => conns.extend(s.connections.iter().cloned()),
            "closed" => conns.extend(s.closed.iter().cloned()),
            "all" | "any" => {
                conns.extend(s.connections.iter().cloned());
                conns.extend(s.closed.iter().cloned());
            }
            other => return Err(format!("Error decoding connection state for '{other}'")),
        }
    }
    if let Some(cid) = q.get("cid") {
        let cid = parse_int("cid", cid)? as u64;
        conns.retain(|c| c.cid == cid);
    }
    let auth = match q.get("auth") {
        Some(v) => parse_bool("auth", v)?,
        None => false,
    };
    if let Some(acc) = q.get("acc").filter(|a| !a.is_empty()) {
        conns.retain(|c| c.account == *acc);
    }
    // No connection is an MQTT client.
    if q.contains_key("mqtt_client") {
        conns.clear();
    }
    let now = SystemTime::now();
    let key = |c: &ConnSnapshot| -> i128 {
        match sort {
            "start" => c
                .start
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as i128,
            "subs" => c.subscriptions as i128,
            "pending" => c.pending_bytes as i128,
            "msgs_to" => c.out_msgs as i128,
            "msgs_from" => c.in_msgs as i128,
            "bytes_to" => c.out_bytes as i128,
            "bytes_from" => c.in_bytes as i128,
            "last" => c
                .last_activity
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as i128,
            "idle" => since(c.last_activity, now).as_nanos() as i128,
            "uptime" => since(c.start, now).as_nanos() as i128,
            "stop" => c
                .stop
                .and_then(|s| s.duration_since(SystemTime::UNIX_EPOCH).ok())
                .unwrap_or_default()
                .as_nanos() as i128,
            _ => c.cid as i128,
        }
    };
    let valid = [
        "cid",
        "start",
        "subs",
        "pending",
        "msgs_to",
        "msgs_from",
        "bytes_to",
        "bytes_from",
        "last",
        "idle",
        "uptime",
        "stop",
        "reason",
        "rtt",
    ];
    if !valid.contains(&sort) {
        return Err(format!("Invalid sorting option: {sort}"));
    }
    if (sort == "stop" || sort == "reason") && state == "open" {
        return Err(format!(
            "Invalid sorting option: {sort}, only valid for closed connections"
        ));
    }
    if sort == "cid" || sort == "start" {
        conns.sort_by_key(|c| key(c));
    } else if sort == "reason" {
        conns.sort_by(|a, b| a.reason.cmp(&b.reason));
    } else {
        // nats-server sorts the other keys in descending order.
        conns.sort_by_key(|c| std::cmp::Reverse(key(c)));
    }
    let total = conns.len();
    let page: Vec<Value> = conns
        .iter()
        .skip(offset)
        .take(limit)
        .map(|c| conn_json(c, now, subs, auth))
        .collect();
    Ok(json!({
        "server_id": ctx.opts.borrow().server_id,
        "now": rfc3339(now),
        "num_connections": page.len(),
        "total": total,
        "offset": offset,
        "limit": limit,
        "connections": page,
    }))
}

async fn subsz(ctx: &MonitorContext, q: &Query) -> Result<Value, String> {
    let want_subs = match q.get("subs") {
        Some(v) => parse_bool("subs", v)?,
        None => false,
    };
    let snaps = ctx.gather(want_subs || q.contains_key("test")).await;
    let account = q.get("acc").filter(|a| !a.is_empty());
    let mut num_subs = 0;
    let mut cache = 0;
    let (mut max_fanout, mut total_fanout) = (0usize, 0usize);
    let (mut inserts, mut removes, mut matches, mut hits) = (0u64, 0u64, 0u64, 0u64);
    for s in &snaps {
        num_subs += s.sublist.subscriptions;
        cache += s.sublist.stats.cache_entries;
        max_fanout = max_fanout.max(s.sublist.stats.max_fanout);
        total_fanout += s.sublist.stats.total_fanout;
        inserts += s.sublist.stats.inserts;
        removes += s.sublist.stats.removes;
        matches += s.sublist.stats.matches;
        hits += s.sublist.stats.cache_hits;
    }
    let hit_rate = if matches > 0 {
        hits as f64 / matches as f64
    } else {
        0.0
    };
    let mut out = json!({
        "server_id": ctx.opts.borrow().server_id,
        "now": rfc3339(SystemTime::now()),
        "num_subscriptions": num_subs,
        "num_cache": cache,
        "num_inserts": inserts,
        "num_removes": removes,
        "num_matches": matches,
        "cache_hit_rate": hit_rate,
        "max_fanout": max_fanout,
        "avg_fanout": if cache > 0 { total_fanout as f64 / cache as f64 } else { 0.0 },
    });
    if want_subs || q.contains_key("test") {
        let mut list: Vec<Value> = Vec::new();
        for s in &snaps {
            for c in &s.connections {
                for sub in &c.subs {
                    if account.is_some_and(|a| *a != sub.account) {
                        continue;
                    }
                    if let Some(test) = q.get("test") {
                        if !strait_shards::subject::matches(sub.subject.as_bytes(), test.as_bytes())
                        {
                            continue;
                        }
                    }
                    list.push(json!({
                        "account": sub.account,
                        "subject": sub.subject,
                        "sid": sub.sid,
                        "msgs": sub.msgs,
                        "cid": sub.cid,
                    }));
                }
            }
        }
        let offset = q
            .get("offset")
            .map(|v| parse_int("offset", v))
            .transpose()?
            .unwrap_or(0)
            .max(0) as usize;
        let limit = q
            .get("limit")
            .map(|v| parse_int("limit", v))
            .transpose()?
            .unwrap_or(1024)
            .max(1) as usize;
        let total = list.len();
        let page: Vec<Value> = list.into_iter().skip(offset).take(limit).collect();
        out["total"] = json!(total);
        out["offset"] = json!(offset);
        out["limit"] = json!(limit);
        out["subscriptions_list"] = json!(page);
    } else {
        out["total"] = json!(0);
        out["offset"] = json!(0);
        out["limit"] = json!(1024);
    }
    Ok(out)
}

/// `/jsz`: JetStream's usage, config and (on request) accounts and streams.
async fn jsz(ctx: &MonitorContext, q: &Query) -> Result<Value, String> {
    let js = ctx.jetstream.borrow().clone();
    let Some(js) = js else {
        return Ok(jsz_disabled(ctx));
    };
    let flag = |key: &str| q.get(key).map_or(Ok(false), |v| parse_bool(key, v));
    let number = |key: &str| {
        q.get(key)
            .map_or(Ok(0), |v| parse_int(key, v))
            .map(|n| n.max(0) as usize)
    };
    let options = JszOptions {
        accounts: flag("accounts")?,
        streams: flag("streams")?,
        consumers: flag("consumers")?,
        config: flag("config")?,
        direct_consumers: flag("direct-consumers")?,
        raft: flag("raft")?,
        offset: number("offset")?,
        limit: number("limit")?,
        account: q.get("acc").cloned(),
    };
    // A single server leads its own meta state and every stream: the leader
    // filters change nothing.
    flag("leader-only")?;
    flag("stream-leader-only")?;
    Ok(js.jsz(options).await)
}

/// `/healthz`: the server, and JetStream's assets unless told otherwise.
fn healthz(ctx: &MonitorContext, q: &Query) -> Result<HealthStatus, String> {
    let flag = |key: &str| q.get(key).map_or(Ok(false), |v| parse_bool(key, v));
    let deprecated = flag("js-enabled")?;
    if deprecated {
        tracing::warn!("Healthcheck: js-enabled deprecated, use js-enabled-only instead");
    }
    let text = |key: &str| q.get(key).cloned().unwrap_or_default();
    let opts = HealthzOptions {
        js_enabled_only: deprecated || flag("js-enabled-only")?,
        js_server_only: flag("js-server-only")?,
        js_meta_only: flag("js-meta-only")?,
        account: text("account"),
        stream: text("stream"),
        consumer: text("consumer"),
        details: flag("details")?,
    };
    let js = ctx.jetstream.borrow().clone();
    let assets = js.map(|js| js.assets());
    Ok(health::healthz(&opts, assets.as_deref()))
}

fn jsz_disabled(ctx: &MonitorContext) -> Value {
    json!({
        "memory": 0, "storage": 0, "reserved_memory": 0, "reserved_storage": 0,
        "accounts": 0, "ha_assets": 0,
        "api": {"level": 0, "total": 0, "errors": 0},
        "server_id": ctx.opts.borrow().server_id,
        "now": rfc3339(SystemTime::now()),
        "disabled": true,
        "config": {"max_memory": 0, "max_storage": 0},
        "streams": 0, "consumers": 0, "messages": 0, "bytes": 0, "total": 0,
    })
}

/// Per-account figures summed over shards, with the account's index, for the
/// accounts still configured (a reload may have removed some).
async fn account_totals(ctx: &MonitorContext) -> Vec<(usize, AccountSnapshot)> {
    account_sums(ctx, &ctx.gather(false).await)
}

/// Every configured account's figures summed over the shards, with its index.
fn account_sums(ctx: &MonitorContext, snaps: &[ShardSnapshot]) -> Vec<(usize, AccountSnapshot)> {
    let mut sums: Vec<AccountSnapshot> = Vec::new();
    for s in snaps {
        for (i, a) in s.accounts.iter().enumerate() {
            if sums.len() <= i {
                sums.resize_with(i + 1, AccountSnapshot::default);
            }
            let sum = &mut sums[i];
            sum.name.clone_from(&a.name);
            sum.connections += a.connections;
            sum.sublist.add(&a.sublist);
            sum.sent_msgs += a.sent_msgs;
            sum.sent_bytes += a.sent_bytes;
            sum.received_msgs += a.received_msgs;
            sum.received_bytes += a.received_bytes;
        }
    }
    let opts = ctx.opts.borrow();
    sums.into_iter()
        .enumerate()
        .filter(|(i, _)| opts.accounts.list.get(*i).is_some_and(|a| !a.removed))
        .collect()
}

/// `/accstatz`: accounts with connections (`unused=1`: all of them).
async fn accstatz(ctx: &MonitorContext, q: &Query) -> Result<Value, String> {
    let unused = match q.get("unused") {
        Some(v) => parse_bool("unused", v)?,
        None => false,
    };
    let filter: Option<Vec<&str>> = q.get("accounts").map(|a| a.split(',').collect());
    let sums = account_totals(ctx).await;
    let zero = json!({"msgs": 0, "bytes": 0});
    let mut list = Vec::new();
    for (i, a) in &sums {
        let i = *i;
        if filter
            .as_ref()
            .is_some_and(|f| !f.contains(&a.name.as_str()))
        {
            continue;
        }
        if a.connections == 0 && !unused {
            continue;
        }
        let total = ctx
            .global
            .account_counters(i as u32)
            .map_or(0, |n| n.total.load(Ordering::Relaxed));
        list.push(json!({
            "acc": a.name, "name": a.name,
            "conns": a.connections, "leafnodes": 0,
            "total_conns": total,
            "num_subscriptions": a.sublist.subscriptions,
            "sent": {"msgs": a.sent_msgs, "bytes": a.sent_bytes, "gateways": zero, "routes": zero, "leafs": zero},
            "received": {"msgs": a.received_msgs, "bytes": a.received_bytes, "gateways": zero, "routes": zero, "leafs": zero},
            "slow_consumers": 0,
        }));
    }
    Ok(json!({
        "server_id": ctx.opts.borrow().server_id,
        "now": rfc3339(SystemTime::now()),
        "account_statz": list,
    }))
}

/// `/accountz`: the account names, or one account's detail with `acc=`.
async fn accountz(ctx: &MonitorContext, q: &Query) -> Result<Value, String> {
    let (id, accounts) = {
        let opts = ctx.opts.borrow();
        (opts.server_id.clone(), opts.accounts.clone())
    };
    let now = rfc3339(SystemTime::now());
    let system = accounts.name(accounts.system).to_string();
    let Some(name) = q.get("acc").filter(|a| !a.is_empty()) else {
        let names: Vec<&str> = accounts.active().map(|(_, a)| a.name.as_str()).collect();
        return Ok(
            json!({"server_id": id, "now": now, "system_account": system, "accounts": names}),
        );
    };
    let Some(index) = accounts
        .index(name)
        .filter(|i| !accounts.list[*i as usize].removed)
    else {
        return Err(format!("Account {name} does not exist"));
    };
    let spec = &accounts.list[index as usize];
    let jetstream_enabled = ctx.jetstream.borrow().is_some() && accounts.jetstream(index).is_some();
    let sums = account_totals(ctx).await;
    let mine = sums
        .into_iter()
        .find(|(i, _)| *i == index as usize)
        .map(|(_, a)| a)
        .unwrap_or_default();
    let st = &mine.sublist.stats;
    let mut imports: Vec<Value> = Vec::new();
    for i in &spec.stream_imports {
        let local =
            i.to.as_ref()
                .and_then(|t| t.apply(i.subject.as_bytes()))
                .map(|s| String::from_utf8_lossy(&s).into_owned())
                .unwrap_or_else(|| i.subject.clone());
        imports.push(json!({
            "subject": i.subject, "account": accounts.name(i.from), "local_subject": local,
            "type": "stream", "invalid": false, "share": false, "tracking": false,
        }));
    }
    for i in &spec.service_imports {
        imports.push(json!({
            "subject": i.local, "account": accounts.name(i.to_account), "to": i.subject,
            "local_subject": i.local, "type": "service", "invalid": false, "share": false,
            "tracking": false,
        }));
    }
    let exports: Vec<Value> = spec
        .exports
        .iter()
        .map(|e| {
            let mut v = json!({
                "subject": e.subject,
                "type": if e.service { "service" } else { "stream" },
            });
            if let Some(accs) = &e.accounts {
                v["approved_accounts"] = json!(accs);
            }
            if e.service {
                v["response_type"] = json!(e.response_type.name());
                v["response_threshold"] = json!(e.response_threshold.as_nanos() as u64);
            }
            v
        })
        .collect();
    let mut detail = json!({
        "account_name": spec.name, "update_time": now, "expired": false,
        "complete": true, "jetstream_enabled": jetstream_enabled, "leafnode_connections": 0,
        "client_connections": mine.connections,
        "subscriptions": mine.sublist.subscriptions,
        "name_tag": spec.name,
        "sublist_stats": {
            "num_subscriptions": mine.sublist.subscriptions,
            "num_cache": st.cache_entries,
            "num_inserts": st.inserts,
            "num_removes": st.removes,
            "num_matches": st.matches,
            "cache_hit_rate": if st.matches > 0 { st.cache_hits as f64 / st.matches as f64 } else { 0.0 },
            "max_fanout": st.max_fanout,
            "avg_fanout": if st.cache_entries > 0 { st.total_fanout as f64 / st.cache_entries as f64 } else { 0.0 },
        },
    });
    if !imports.is_empty() {
        detail["imports"] = json!(imports);
    }
    if !exports.is_empty() {
        detail["exports"] = json!(exports);
    }
    Ok(json!({"server_id": id, "now": now, "system_account": system, "account_detail": detail}))
}

/// Prometheus exposition, with prometheus-nats-exporter's metric names.
/// `prefix` (the `?prefix=` asked for) replaces `gnatsd` and `jetstream` both, as the
/// exporter's `-prefix` does.
async fn metrics(ctx: &MonitorContext, asked_prefix: Option<&str>) -> String {
    let prefix = asked_prefix.unwrap_or("gnatsd");
    let js_system = asked_prefix.unwrap_or("jetstream");
    // One gather for the whole scrape.
    let snaps = ctx.gather(false).await;
    let figures = ServerFigures::read(ctx, &snaps);
    let opts = ctx.opts.borrow().clone();
    let id = opts.server_id.clone();
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, kind: &str, value: f64, labels: &str| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        out.push_str(&format!("{name}{{server_id=\"{id}\"{labels}}} {value}\n"));
    };
    for (field, help, value) in figures.varz_gauges(&opts) {
        gauge(&format!("{prefix}_varz_{field}"), help, "gauge", value, "");
    }
    let t = &figures.totals;
    gauge(
        &format!("{prefix}_connz_num_connections"),
        "Open connections",
        "gauge",
        t.connections as f64,
        "",
    );
    gauge(
        &format!("{prefix}_subsz_num_subscriptions"),
        "Subscriptions",
        "gauge",
        t.subscriptions as f64,
        "",
    );
    gauge(
        &format!("{prefix}_routez_num_routes"),
        "Routes",
        "gauge",
        0.0,
        "",
    );
    gauge(
        &format!("{prefix}_healthz_status"),
        "Health: 0 is ok",
        "gauge",
        0.0,
        "",
    );
    // strait's own, per shard.
    let per_shard: [(&str, &str, &str); 8] = [
        (
            "strait_shard_connections",
            "gauge",
            "Open connections on the shard",
        ),
        (
            "strait_shard_in_msgs_total",
            "counter",
            "Messages published by the shard's clients",
        ),
        (
            "strait_shard_out_msgs_total",
            "counter",
            "Messages delivered by the shard",
        ),
        (
            "strait_shard_in_bytes_total",
            "counter",
            "Bytes published by the shard's clients",
        ),
        (
            "strait_shard_out_bytes_total",
            "counter",
            "Bytes delivered by the shard",
        ),
        (
            "strait_shard_wasted_hops_total",
            "counter",
            "Messages peers sent the shard, on a summarized interest pattern, that no subscriber wanted",
        ),
        (
            "strait_shard_hops_saved_total",
            "counter",
            "Messages the shard kept from a peer whose summarized interest matched, because the peer had said nothing there wants the subject",
        ),
        (
            "strait_shard_loop_lag_max_seconds",
            "gauge",
            "Longest gap between two housekeeping ticks",
        ),
    ];
    for (name, kind, help) in per_shard {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for s in &snaps {
            let value = match name {
                "strait_shard_connections" => s.connections.len() as f64,
                "strait_shard_in_msgs_total" => s.in_msgs as f64,
                "strait_shard_out_msgs_total" => s.out_msgs as f64,
                "strait_shard_in_bytes_total" => s.in_bytes as f64,
                "strait_shard_out_bytes_total" => s.out_bytes as f64,
                "strait_shard_wasted_hops_total" => s.wasted_hops as f64,
                "strait_shard_hops_saved_total" => s.hops_saved as f64,
                _ => s.max_loop_lag_us as f64 / 1e6,
            };
            out.push_str(&format!(
                "{name}{{server_id=\"{id}\",shard=\"{}\"}} {value}\n",
                s.shard
            ));
        }
    }
    // Per account, as prometheus-nats-exporter's `-accstatz` names them (every
    // account, as its `/accstatz?unused=1` scrape sees them).
    let accounts = account_sums(ctx, &snaps);
    let per_account: [(&str, &str); 8] = [
        ("current_connections", "current_connections"),
        ("total_connections", "total_connections"),
        ("subscriptions", "subscriptions"),
        ("leaf_nodes", "leaf_nodes"),
        ("sent_messages", "sent_messages"),
        ("sent_bytes", "sent_bytes"),
        ("received_messages", "received_messages"),
        ("received_bytes", "received_bytes"),
    ];
    for (field, help) in per_account {
        let name = format!("{prefix}_accstatz_{field}");
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for (i, a) in &accounts {
            let i = *i;
            let value = match field {
                "current_connections" => a.connections as u64,
                "total_connections" => ctx
                    .global
                    .account_counters(i as u32)
                    .map_or(0, |n| n.total.load(Ordering::Relaxed)),
                "subscriptions" => a.sublist.subscriptions as u64,
                "sent_messages" => a.sent_msgs,
                "sent_bytes" => a.sent_bytes,
                "received_messages" => a.received_msgs,
                "received_bytes" => a.received_bytes,
                _ => 0,
            };
            let acc = label_value(&a.name);
            out.push_str(&format!(
                "{name}{{server_id=\"{id}\",account=\"{acc}\",account_id=\"{acc}\",account_name=\"{acc}\"}} {value}\n"
            ));
        }
    }
    // JetStream, from the same /jsz the exporter's `-jsz=all` scrapes.
    let js = ctx.jetstream.borrow().clone();
    let jsz = match js {
        Some(js) => {
            js.jsz(JszOptions {
                accounts: true,
                streams: true,
                consumers: true,
                config: true,
                limit: usize::MAX,
                ..JszOptions::default()
            })
            .await
        }
        None => jsz_disabled(ctx),
    };
    jetstream_metrics(&mut out, js_system, &jsz, opts.name());
    out
}

/// One gauge family in the exposition format; nothing when it has no samples.
fn gauge_family(out: &mut String, name: &str, help: &str, samples: &[(String, f64)]) {
    if samples.is_empty() {
        return;
    }
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
    for (labels, value) in samples {
        out.push_str(&format!("{name}{{{labels}}} {value}\n"));
    }
}

/// `/jsz?accounts&streams&consumers&config` as the gauges prometheus-nats-exporter
/// makes of it: `<system>_server_*` (system `jetstream` unless a prefix is asked
/// for), then `_account_*`, `_stream_*` and `_consumer_*` with its labels. A single
/// server leads its own meta state, every stream and every consumer, so the leader
/// labels name this server.
fn jetstream_metrics(out: &mut String, system: &str, jsz: &Value, server_name: &str) {
    let number = |v: &Value| v.as_f64().unwrap_or(0.0);
    let text = |v: &Value| label_value(v.as_str().unwrap_or(""));
    let server = format!(
        "server_id=\"{}\",server_name=\"{}\",cluster=\"\",domain=\"{}\",meta_leader=\"\",is_meta_leader=\"true\"",
        text(&jsz["server_id"]),
        label_value(server_name),
        text(&jsz["config"]["domain"]),
    );
    let disabled = if jsz["disabled"].as_bool() == Some(true) {
        1.0
    } else {
        0.0
    };
    let server_gauges: [(&str, &str, f64); 7] = [
        (
            "jetstream_disabled",
            "1 when JetStream is off on this server",
            disabled,
        ),
        (
            "max_memory",
            "Memory JetStream may use, bytes",
            number(&jsz["config"]["max_memory"]),
        ),
        (
            "max_storage",
            "Disk JetStream may use, bytes",
            number(&jsz["config"]["max_storage"]),
        ),
        (
            "total_streams",
            "Streams on this server",
            number(&jsz["streams"]),
        ),
        (
            "total_consumers",
            "Consumers on this server",
            number(&jsz["consumers"]),
        ),
        (
            "total_messages",
            "Messages stored in every stream",
            number(&jsz["messages"]),
        ),
        (
            "total_message_bytes",
            "Bytes stored in every stream",
            number(&jsz["bytes"]),
        ),
    ];
    for (suffix, help, value) in server_gauges {
        let name = format!("{system}_server_{suffix}");
        gauge_family(out, &name, help, &[(server.clone(), value)]);
    }
    let accounts: &[Value] = jsz["account_details"].as_array().map_or(&[], Vec::as_slice);
    let account_labels = |a: &Value| {
        let name = text(&a["name"]);
        format!(
            "{server},account=\"{name}\",account_name=\"{name}\",account_id=\"{}\"",
            text(&a["id"])
        )
    };
    let account_gauges: [(&str, &str, &str); 4] = [
        (
            "max_memory",
            "Memory reserved for the account's streams, bytes",
            "reserved_memory",
        ),
        (
            "max_storage",
            "Disk reserved for the account's streams, bytes",
            "reserved_storage",
        ),
        (
            "storage_used",
            "Bytes the account's file streams hold",
            "storage",
        ),
        (
            "memory_used",
            "Bytes the account's memory streams hold",
            "memory",
        ),
    ];
    for (suffix, help, field) in account_gauges {
        let samples: Vec<(String, f64)> = accounts
            .iter()
            .map(|a| (account_labels(a), number(&a[field])))
            .collect();
        gauge_family(out, &format!("{system}_account_{suffix}"), help, &samples);
    }
    let streams: Vec<(String, &Value)> = accounts
        .iter()
        .flat_map(|a| {
            let labels = account_labels(a);
            a["stream_detail"]
                .as_array()
                .map_or(&[][..], Vec::as_slice)
                .iter()
                .map(move |s| {
                    let leader = s["cluster"]["leader"].as_str().unwrap_or("");
                    (
                        format!(
                            "{labels},stream_name=\"{}\",stream_leader=\"{}\",is_stream_leader=\"{}\",stream_raft_group=\"\"",
                            text(&s["name"]),
                            label_value(leader),
                            leader == server_name,
                        ),
                        s,
                    )
                })
        })
        .collect();
    let stream_gauges: [(&str, &str, Read); 8] = [
        ("total_messages", "Messages in the stream", |s| {
            &s["state"]["messages"]
        }),
        ("total_bytes", "Bytes in the stream", |s| {
            &s["state"]["bytes"]
        }),
        ("first_seq", "Sequence of the stream's first message", |s| {
            &s["state"]["first_seq"]
        }),
        ("last_seq", "Sequence of the stream's last message", |s| {
            &s["state"]["last_seq"]
        }),
        ("consumer_count", "Consumers of the stream", |s| {
            &s["state"]["consumer_count"]
        }),
        ("subject_count", "Distinct subjects in the stream", |s| {
            &s["state"]["num_subjects"]
        }),
        (
            "limit_bytes",
            "The stream's max_bytes (-1: no limit)",
            |s| &s["config"]["max_bytes"],
        ),
        (
            "limit_messages",
            "The stream's max_msgs (-1: no limit)",
            |s| &s["config"]["max_msgs"],
        ),
    ];
    labelled_gauges(out, &format!("{system}_stream_"), &stream_gauges, &streams);
    // What a mirror or source has yet to copy from its origin, one sample per origin.
    let mut lag: Vec<(String, f64)> = Vec::new();
    let mut active: Vec<(String, f64)> = Vec::new();
    for (labels, s) in &streams {
        let mirror = s.get("mirror").map(|m| ("mirror", m));
        let sources = s["sources"]
            .as_array()
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .map(|m| ("source", m));
        for (kind, origin) in mirror.into_iter().chain(sources) {
            let origin_labels = format!(
                "{labels},origin_kind=\"{kind}\",origin_stream=\"{}\"",
                text(&origin["name"])
            );
            lag.push((origin_labels.clone(), number(&origin["lag"])));
            // `active`: ns since the origin was last heard from, -1 never.
            active.push((origin_labels, number(&origin["active"]) / 1e9));
        }
    }
    gauge_family(
        out,
        &format!("{system}_stream_origin_lag"),
        "Messages a mirror or source has yet to copy from its origin",
        &lag,
    );
    gauge_family(
        out,
        &format!("{system}_stream_origin_last_active_seconds"),
        "Seconds since a mirror or source last heard from its origin (negative: never)",
        &active,
    );
    // A single server leads every consumer it has.
    let consumers: Vec<(String, &Value)> = streams
        .iter()
        .flat_map(|(labels, s)| {
            s["consumer_detail"]
                .as_array()
                .map_or(&[][..], Vec::as_slice)
                .iter()
                .map(move |c| {
                    (
                        format!(
                            "{labels},consumer_name=\"{}\",consumer_leader=\"{}\",is_consumer_leader=\"true\",consumer_desc=\"{}\"",
                            text(&c["name"]),
                            label_value(server_name),
                            text(&c["config"]["description"]),
                        ),
                        c,
                    )
                })
        })
        .collect();
    let consumer_gauges: [(&str, &str, Read); 8] = [
        (
            "delivered_consumer_seq",
            "The consumer sequence of the consumer's last delivery",
            |c| &c["delivered"]["consumer_seq"],
        ),
        (
            "delivered_stream_seq",
            "The stream sequence of the consumer's last delivery",
            |c| &c["delivered"]["stream_seq"],
        ),
        (
            "num_ack_pending",
            "Messages delivered and not yet acknowledged",
            |c| &c["num_ack_pending"],
        ),
        (
            "num_redelivered",
            "Messages delivered more than once",
            |c| &c["num_redelivered"],
        ),
        ("num_waiting", "Pull requests waiting for messages", |c| {
            &c["num_waiting"]
        }),
        (
            "num_pending",
            "Messages the consumer has yet to deliver",
            |c| &c["num_pending"],
        ),
        (
            "ack_floor_stream_seq",
            "The stream sequence below which every delivery is acknowledged",
            |c| &c["ack_floor"]["stream_seq"],
        ),
        (
            "ack_floor_consumer_seq",
            "The consumer sequence below which every delivery is acknowledged",
            |c| &c["ack_floor"]["consumer_seq"],
        ),
    ];
    labelled_gauges(
        out,
        &format!("{system}_consumer_"),
        &consumer_gauges,
        &consumers,
    );
}

/// Reads one figure out of a `/jsz` detail object.
type Read = fn(&Value) -> &Value;

/// One gauge family per `(suffix, help, read)`, with a sample per labelled object.
fn labelled_gauges(
    out: &mut String,
    prefix: &str,
    gauges: &[(&str, &str, Read)],
    objects: &[(String, &Value)],
) {
    for (suffix, help, read) in gauges {
        let samples: Vec<(String, f64)> = objects
            .iter()
            .map(|(labels, o)| (labels.clone(), read(o).as_f64().unwrap_or(0.0)))
            .collect();
        gauge_family(out, &format!("{prefix}{suffix}"), help, &samples);
    }
}

/// Escapes a Prometheus label value.
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

const INDEX: &str = r#"<html lang="en">
<head><title>strait monitoring</title></head>
<body>
<h1>strait</h1>
<a href=./varz>General /varz</a><br/>
<a href=./jsz>JetStream /jsz</a><br/>
<a href=./connz>Connections /connz</a><br/>
<a href=./accountz>Accounts /accountz</a><br/>
<a href=./accstatz>Account Stats /accstatz</a><br/>
<a href=./subsz>Subscriptions /subsz</a><br/>
<a href=./routez>Routes /routez</a><br/>
<a href=./leafz>LeafNodes /leafz</a><br/>
<a href=./gatewayz>Gateways /gatewayz</a><br/>
<a href=./healthz>Health Probe /healthz</a><br/>
<a href=./metrics>Prometheus /metrics</a><br/>
</body>
</html>
"#;

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    if let Ok(v) = content_type.parse() {
        h.insert(hyper::header::CONTENT_TYPE, v);
    }
    if content_type != "text/html; charset=utf-8" {
        h.insert(
            hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN,
            hyper::header::HeaderValue::from_static("*"),
        );
    }
    r
}

fn json_response(q: &Query, value: &Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_string_pretty(value).unwrap_or_default();
    match q.get("callback") {
        Some(cb) if !cb.is_empty() => respond(
            StatusCode::OK,
            "application/javascript",
            format!("{cb}({body})"),
        ),
        _ => respond(StatusCode::OK, "application/json", body),
    }
}

async fn handle(
    ctx: Rc<MonitorContext>,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let path = path
        .strip_prefix(ctx.base_path.trim_end_matches('/'))
        .unwrap_or(&path)
        .to_string();
    let path = if path.is_empty() {
        "/".to_string()
    } else {
        path
    };
    let q = parse_query(req.uri().query());
    let known = [
        "/",
        "/varz",
        "/connz",
        "/routez",
        "/gatewayz",
        "/leafz",
        "/subsz",
        "/subscriptionsz",
        "/accountz",
        "/accstatz",
        "/jsz",
        "/healthz",
        "/metrics",
    ];
    if known.contains(&path.as_str()) {
        *ctx.req_stats.borrow_mut().entry(path.clone()).or_insert(0) += 1;
    }
    let now = rfc3339(SystemTime::now());
    let id = ctx.opts.borrow().server_id.clone();
    let result: Result<Value, String> = match path.as_str() {
        "/" => {
            return respond(
                StatusCode::OK,
                "text/html; charset=utf-8",
                INDEX.to_string(),
            );
        }
        "/varz" => Ok(varz(&ctx).await),
        "/connz" => connz(&ctx, &q).await,
        "/subsz" | "/subscriptionsz" => subsz(&ctx, &q).await,
        "/routez" => Ok(json!({
            "server_id": id, "server_name": ctx.opts.borrow().name(),
            "now": now, "num_routes": 0, "routes": [],
        })),
        "/gatewayz" => Ok(json!({
            "server_id": id, "now": now, "outbound_gateways": {}, "inbound_gateways": {},
        })),
        "/leafz" => Ok(json!({"server_id": id, "now": now, "leafnodes": 0, "leafs": []})),
        "/accountz" => accountz(&ctx, &q).await,
        "/accstatz" => accstatz(&ctx, &q).await,
        "/jsz" => jsz(&ctx, &q).await,
        "/healthz" => {
            let status = match healthz(&ctx, &q) {
                Ok(status) => status,
                Err(e) => return respond(StatusCode::BAD_REQUEST, "text/plain; charset=utf-8", e),
            };
            if !status.is_healthy() {
                if status.error.is_empty() {
                    tracing::warn!("Healthcheck failed: {} errors", status.errors.len());
                } else {
                    tracing::warn!("Healthcheck failed: {:?}", status.error);
                }
            }
            let code = StatusCode::from_u16(status.code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return respond(code, "application/json", status.body());
        }
        "/metrics" => {
            let body = metrics(&ctx, q.get("prefix").map(String::as_str)).await;
            return respond(StatusCode::OK, "text/plain; version=0.0.4", body);
        }
        _ => {
            return respond(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "404 page not found\n".into(),
            )
        }
    };
    match result {
        Ok(v) => json_response(&q, &v),
        Err(e) => respond(StatusCode::BAD_REQUEST, "text/plain; charset=utf-8", e),
    }
}

/// Adapts a glommio socket to hyper's I/O traits.
struct Io(glommio::net::TcpStream);

impl hyper::rt::Read for Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        use futures_lite::AsyncRead;
        let mut tmp = [0u8; 8192];
        match Pin::new(&mut self.0).poll_read(cx, &mut tmp) {
            Poll::Ready(Ok(n)) => {
                buf.put_slice(&tmp[..n]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl hyper::rt::Write for Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        use futures_lite::AsyncWrite;
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        use futures_lite::AsyncWrite;
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        use futures_lite::AsyncWrite;
        Pin::new(&mut self.0).poll_close(cx)
    }
}

/// Serves HTTP until the listener fails. Runs on the control executor.
pub async fn serve(ctx: Rc<MonitorContext>, listener: glommio::net::TcpListener) {
    serve_http(listener, "monitoring", move |req| handle(ctx.clone(), req)).await
}

/// An HTTP/1 server on the control executor: one task per connection, each
/// request answered by `handler`.
pub(crate) async fn serve_http<H, F>(
    listener: glommio::net::TcpListener,
    what: &'static str,
    handler: H,
) where
    H: Fn(Request<hyper::body::Incoming>) -> F + Clone + 'static,
    F: std::future::Future<Output = Response<Full<Bytes>>> + 'static,
{
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{what}: accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = handler.clone();
        glommio::spawn_local(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = handler(req);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(Io(stream), service)
                .await;
        })
        .detach();
    }
}

/// Listens on `addr` as nats-server does: refused at once when another process
/// holds the port (Go's error text in the result), at once after a restart.
/// Returns the listener and its port (the chosen one for port 0).
pub(crate) fn exclusive_listener(
    addr: std::net::SocketAddr,
) -> Result<(glommio::net::TcpListener, u16), String> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    use strait_shards::listen;
    let port = listen::claim_port(addr).map_err(|e| listen::go_listen_error(addr, &e))?;
    let addr = std::net::SocketAddr::new(addr.ip(), port);
    let listener = listen::shared_listener(addr).map_err(|e| listen::go_listen_error(addr, &e))?;
    // SAFETY: the descriptor comes from a listening socket we own and hand over
    // whole (into_raw_fd), so glommio's listener is its only owner.
    let listener = unsafe { glommio::net::TcpListener::from_raw_fd(listener.into_raw_fd()) };
    Ok((listener, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_format() {
        assert_eq!(uptime(Duration::from_secs(27)), "27s");
        assert_eq!(uptime(Duration::from_secs(65)), "1m5s");
        assert_eq!(uptime(Duration::from_secs(7384)), "2h3m4s");
        assert_eq!(uptime(Duration::from_secs(93784)), "1d2h3m4s");
    }

    #[test]
    fn bools_like_go() {
        assert!(parse_bool("subs", "1").unwrap());
        assert!(!parse_bool("subs", "false").unwrap());
        assert_eq!(
            parse_bool("subs", "bogus").unwrap_err(),
            "Error decoding boolean for 'subs': strconv.ParseBool: parsing \"bogus\": invalid syntax"
        );
    }
}
