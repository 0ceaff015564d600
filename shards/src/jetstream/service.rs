//! The JetStream API service, on the control executor: one internal client per
//! account answers `$JS.API.>` requests. Account-wide requests (INFO, NAMES,
//! LIST) and creation are decided here, against the meta state; the rest go to
//! the shard hosting the stream. Every change of the meta state is written to
//! the meta log before it is applied and before the shard is told.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::config::{ServerLimits, StorageType, StreamConfig};
use super::errors::{self, ApiError};
use super::host::{
    now_ns, ts_rfc3339, HostEvent, StreamCommand, StreamOp, StreamRequest, StreamSpec,
};
use super::meta::{MetaChange, MetaLog, MetaState, StreamAssignment};
use super::usage::Ledger;
use crate::accounts::JetStreamLimits;
use crate::control::{Command, Commander, InternalHandle};
use crate::internal::InternalMsg;
use crate::options::{JetStreamOptions, ServerOptions};
use crate::permissions::is_subset;

mod backup;
mod consumers;

const API_PREFIX: &str = "$JS.API.";
/// What the service answers (an unknown subject under these gets no answer, as
/// from nats-server). Pull requests (`CONSUMER.MSG.NEXT`) are left to the consumers' own
/// subscriptions: one for a consumer that is not there finds no responders,
/// as nats-server's JetStream import passes them by.
const API_SUBJECTS: [&str; 15] = [
    "$JS.API.INFO",
    "$JS.API.STREAM.>",
    "$JS.API.CONSUMER.CREATE.>",
    "$JS.API.CONSUMER.DURABLE.>",
    "$JS.API.CONSUMER.NAMES.>",
    "$JS.API.CONSUMER.LIST.>",
    "$JS.API.CONSUMER.INFO.>",
    "$JS.API.CONSUMER.DELETE.>",
    "$JS.API.CONSUMER.PAUSE.>",
    "$JS.API.CONSUMER.UNPIN.>",
    "$JS.API.CONSUMER.RESET.>",
    "$JS.API.CONSUMER.LEADER.>",
    "$JS.API.ACCOUNT.>",
    "$JS.API.META.>",
    "$JS.API.SERVER.>",
];
/// Where every answered API request is audited.
const AUDIT_SUBJECT: &str = "$JS.EVENT.ADVISORY.API";
const TYPE_PREFIX: &str = "io.nats.jetstream.api.v1.";
/// How long a shard may take to answer for a stream.
const SHARD_TIMEOUT: Duration = Duration::from_secs(10);
const NAMES_LIMIT: usize = 1024;
const LIST_LIMIT: usize = 256;

/// Why JetStream could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Meta(#[from] super::meta::MetaLogError),
    #[error("could not use the JetStream store directory {dir:?}: {source}")]
    StoreDir {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// Per-account API counters (the `api` block of account info).
#[derive(Debug, Default, Clone, Copy)]
struct ApiStats {
    total: u64,
    errors: u64,
}

struct Service {
    commander: Commander,
    opts: Arc<ServerOptions>,
    js: JetStreamOptions,
    meta: RefCell<MetaState>,
    log: RefCell<MetaLog>,
    stats: RefCell<std::collections::HashMap<u32, ApiStats>>,
    /// Advisories (account, subject, body) of the requests being answered, each
    /// published in its account after the response.
    advisories: RefCell<Vec<(String, String, Value)>>,
    /// The bytes all streams hold, against `max_memory_store` / `max_file_store`.
    server_usage: Arc<Ledger>,
    /// The same per account, against the account's `max_memory` / `max_file`.
    account_usage: RefCell<std::collections::HashMap<String, Arc<Ledger>>>,
    /// What the hosted streams decide on their own (an inactive consumer).
    events: (flume::Sender<HostEvent>, flume::Receiver<HostEvent>),
    /// Each account's API client, which also publishes its advisories.
    handles: RefCell<std::collections::HashMap<String, Rc<InternalHandle>>>,
    /// The (account, stream) of the restores under way.
    restoring: RefCell<std::collections::HashSet<(String, String)>>,
    /// The (account, stream) of the streams that did not open at start, as
    /// `/healthz` reports them until they are deleted.
    unrecovered: RefCell<std::collections::HashSet<(String, String)>>,
    /// Who sent the request being answered (its `Nats-Request-Info`), for the
    /// advisories of what it starts.
    requester: RefCell<Option<Value>>,
}

/// The stream directory of `account`'s stream `name` under the store.
fn stream_dir(js: &JetStreamOptions, account: &str, name: &str) -> PathBuf {
    js.store_dir
        .join("jetstream")
        .join(account)
        .join("streams")
        .join(name)
}

/// Opens the meta log, reopens every stream on its shard, and answers the API
/// in every account until the shards stop. Errors are returned before any
/// request is answered.
pub async fn start(
    commander: Commander,
    opts: Arc<ServerOptions>,
) -> Result<Option<JetStream>, StartError> {
    let Some(mut js) = opts.jetstream.clone() else {
        return Ok(None);
    };
    let started = std::time::Instant::now();
    tracing::info!("Starting JetStream");
    let meta_dir = js.store_dir.join("jetstream");
    std::fs::create_dir_all(&meta_dir).map_err(|source| StartError::StoreDir {
        dir: meta_dir.clone(),
        source,
    })?;
    if js.max_memory < 0 {
        js.max_memory = default_max_memory();
    }
    if js.max_store < 0 {
        js.max_store = default_max_store(&meta_dir);
    }
    banner(&js, &meta_dir);
    let (log, meta) = MetaLog::open(&meta_dir, js.encryption.as_ref())?;
    let service = Rc::new(Service {
        commander,
        opts,
        meta: RefCell::new(meta),
        log: RefCell::new(log),
        stats: RefCell::default(),
        advisories: RefCell::default(),
        server_usage: Ledger::new(js.max_memory, js.max_store),
        account_usage: RefCell::default(),
        events: flume::unbounded(),
        handles: RefCell::default(),
        restoring: RefCell::default(),
        unrecovered: RefCell::default(),
        requester: RefCell::default(),
        js,
    });
    backup::sweep_transfers(&service.js, &service.meta.borrow());
    let assignments: Vec<StreamAssignment> = service.meta.borrow().all().cloned().collect();
    for a in assignments {
        let name = a.config.name.clone();
        tracing::info!("  Starting restore for stream '{} > {name}'", a.account);
        let began = std::time::Instant::now();
        if let Err(e) = service.open_on_shard(&a).await {
            tracing::error!(
                "JetStream could not restore stream '{} > {name}': {}",
                a.account,
                e.description
            );
            service
                .unrecovered
                .borrow_mut()
                .insert((a.account.clone(), name.clone()));
            continue;
        }
        let consumers: Vec<_> = service
            .meta
            .borrow()
            .consumers_of(&a.account, &name)
            .cloned()
            .collect();
        for c in &consumers {
            if let Err(e) = service.put_on_shard(&a, c).await {
                tracing::error!(
                    "JetStream could not restore consumer '{} > {name} > {}': {}",
                    a.account,
                    c.name(),
                    e.description
                );
            }
        }
        if !consumers.is_empty() {
            if let Err(e) = service.send_op(&a, StreamOp::CheckRetention).await {
                tracing::warn!(
                    "JetStream could not check the retention of stream '{} > {name}': {}",
                    a.account,
                    e.description
                );
            }
        }
        let messages = match service.send_op(&a, StreamOp::state()).await {
            Ok(state) => state["messages"].as_u64().unwrap_or(0),
            Err(_) => 0,
        };
        tracing::info!(
            "  Restored {} messages for stream '{} > {name}' in {}",
            with_commas(messages),
            a.account,
            crate::format_duration(std::time::Duration::from_millis(
                began.elapsed().as_millis() as u64
            ))
        );
    }
    let accounts: Vec<(u32, String)> = service
        .opts
        .accounts
        .list
        .iter()
        .enumerate()
        .filter(|(_, a)| !a.removed)
        .map(|(i, a)| (i as u32, a.name.clone()))
        .collect();
    for (index, name) in accounts {
        let Some(handle) = service.commander.internal_client(0, index).await else {
            continue;
        };
        // Everything but direct gets, which the streams that allow them answer
        // themselves (without one, a direct get finds no responders). What the
        // account imports from another account is that account's JetStream, as
        // in nats-server, where an account's own API is an import that an
        // explicit one replaces.
        let imported: Vec<String> = service
            .opts
            .accounts
            .list
            .get(index as usize)
            .map(|a| a.service_imports.iter().map(|i| i.local.clone()).collect())
            .unwrap_or_default();
        let mut subscribed = true;
        let mut any = false;
        for subject in API_SUBJECTS {
            if imported.iter().any(|local| is_subset(subject, local)) {
                continue;
            }
            any = true;
            subscribed &= handle.subscribe(subject, None).await.is_some();
        }
        if !subscribed || !any {
            continue;
        }
        let handle = Rc::new(handle);
        service
            .handles
            .borrow_mut()
            .insert(name.clone(), handle.clone());
        let service = service.clone();
        glommio::spawn_local(async move { service.serve(handle, name).await }).detach();
    }
    glommio::spawn_local(service.clone().handle_events()).detach();
    tracing::info!(
        "Took {} to start JetStream",
        crate::format_duration(started.elapsed())
    );
    Ok(Some(JetStream(service)))
}

/// `1234567` as `1,234,567`, as nats-server writes counts in its logs.
fn with_commas(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// nats-server's default memory limit: three quarters of the machine's memory.
fn default_max_memory() -> i64 {
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<i64>().ok()
        });
    match total_kib {
        Some(kib) => kib * 1024 / 4 * 3,
        None => JETSTREAM_MAX_MEMORY_DEFAULT,
    }
}

/// nats-server's default storage limit: three quarters of what the store's
/// file system has available, or 1 TB when that cannot be told.
fn default_max_store(dir: &std::path::Path) -> i64 {
    match rustix::fs::statvfs(dir) {
        Ok(fs) => (fs.f_bavail.saturating_mul(fs.f_frsize) / 4 * 3) as i64,
        Err(_) => JETSTREAM_MAX_STORE_DEFAULT,
    }
}

const JETSTREAM_MAX_MEMORY_DEFAULT: i64 = 256 << 20;
const JETSTREAM_MAX_STORE_DEFAULT: i64 = 1 << 40;

/// The running JetStream service, for monitoring (on the control executor).
#[derive(Clone)]
pub struct JetStream(Rc<Service>);

/// `/jsz`'s options.
#[derive(Debug, Clone, Default)]
pub struct JszOptions {
    pub accounts: bool,
    pub streams: bool,
    pub consumers: bool,
    pub config: bool,
    /// The consumers this server made for mirrors and sources, as
    /// `direct_consumer_detail` (with `consumers`).
    pub direct_consumers: bool,
    /// Raft figures: a single server leads every asset it has, and has no groups.
    pub raft: bool,
    pub offset: usize,
    pub limit: usize,
    pub account: Option<String>,
}

/// A JetStream-enabled account's streams, for health checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountAssets {
    pub name: String,
    /// By name.
    pub streams: Vec<StreamAssets>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAssets {
    pub name: String,
    /// False for a stream that is configured but did not open at start.
    pub recovered: bool,
    /// The consumers the API lists, by name.
    pub consumers: Vec<String>,
}

/// A stream's consumers as `/jsz` details them.
#[derive(Default)]
struct ConsumerDetails {
    public: Vec<Value>,
    /// The ones made for mirrors and sources.
    direct: Vec<Value>,
}

/// One stream's figures, as usage reports need them.
struct StreamFigures {
    assignment: StreamAssignment,
    state: Value,
}

/// Bytes held in memory and in files by these streams.
fn memory_and_storage<'a>(streams: impl IntoIterator<Item = &'a StreamFigures>) -> (u64, u64) {
    let (mut memory, mut storage) = (0u64, 0u64);
    for f in streams {
        let bytes = f.state["bytes"].as_u64().unwrap_or(0);
        match f.assignment.config.storage {
            StorageType::Memory => memory += bytes,
            StorageType::File => storage += bytes,
        }
    }
    (memory, storage)
}

impl JetStream {
    async fn figures(&self) -> Vec<StreamFigures> {
        self.0.figures(None).await
    }

    /// The JetStream-enabled accounts, by name.
    fn accounts(&self) -> Vec<(u32, String)> {
        let accounts = &self.0.opts.accounts;
        let mut out: Vec<(u32, String)> = accounts
            .active()
            .filter(|(i, _)| accounts.jetstream(*i).is_some())
            .map(|(i, a)| (i, a.name.clone()))
            .collect();
        out.sort_by(|a, b| a.1.cmp(&b.1));
        out
    }

    /// nats-server's JetStreamConfig as monitoring shows it.
    pub fn config_json(&self) -> Value {
        let js = &self.0.js;
        let mut out = Map::new();
        out.insert("max_memory".into(), json!(js.max_memory));
        out.insert("max_storage".into(), json!(js.max_store));
        out.insert(
            "store_dir".into(),
            json!(js.store_dir.join("jetstream").display().to_string()),
        );
        match js.sync {
            strait_storage::SyncPolicy::Always => {
                out.insert("sync_always".into(), json!(true));
            }
            strait_storage::SyncPolicy::Interval(d) => {
                out.insert("sync_interval".into(), json!(d.as_nanos() as u64));
            }
        }
        if let Some(domain) = &js.domain {
            out.insert("domain".into(), json!(domain));
        }
        out.insert("strict".into(), json!(true));
        Value::Object(out)
    }

    /// The usage block shared by `/jsz` and `/varz` (nats-server's JetStreamStats).
    fn stats_json(&self, figures: &[StreamFigures]) -> Value {
        let (memory, storage) = memory_and_storage(figures);
        let stats = self.0.stats.borrow();
        let total: u64 = stats.values().map(|s| s.total).sum();
        let errors: u64 = stats.values().map(|s| s.errors).sum();
        json!({
            "memory": memory,
            "storage": storage,
            "reserved_memory": 0,
            "reserved_storage": 0,
            "accounts": self.accounts().len(),
            "ha_assets": 0,
            "api": { "level": super::config::API_LEVEL, "total": total, "errors": errors },
        })
    }

    /// The `jetstream` section of `/varz`.
    pub async fn varz(&self) -> Value {
        let figures = self.figures().await;
        json!({
            "config": self.config_json(),
            "stats": self.stats_json(&figures),
            "limits": {},
        })
    }

    /// `/jsz`.
    pub async fn jsz(&self, mut o: JszOptions) -> Value {
        if o.limit == 0 {
            o.limit = 1024;
        }
        if o.consumers {
            o.streams = true;
        }
        if o.streams && o.account.is_none() {
            o.accounts = true;
        }
        let figures = self.figures().await;
        let Value::Object(mut out) = self.stats_json(&figures) else {
            return Value::Null;
        };
        out.insert("server_id".into(), json!(self.0.opts.server_id));
        out.insert("now".into(), json!(ts_rfc3339(now_ns())));
        out.insert("config".into(), self.config_json());
        out.insert("limits".into(), json!({}));
        out.insert("streams".into(), json!(figures.len()));
        if o.raft {
            out.insert("streams_leader".into(), json!(figures.len()));
        }
        let consumers = self.0.meta.borrow().public_consumers_total();
        out.insert("consumers".into(), json!(consumers));
        if o.raft {
            out.insert("consumers_leader".into(), json!(consumers));
        }
        let messages: u64 = figures
            .iter()
            .filter_map(|f| f.state["messages"].as_u64())
            .sum();
        let bytes: u64 = figures
            .iter()
            .filter_map(|f| f.state["bytes"].as_u64())
            .sum();
        out.insert("messages".into(), json!(messages));
        out.insert("bytes".into(), json!(bytes));
        let accounts = self.accounts();
        let total = accounts.len();
        let shown: Vec<(u32, String)> = match &o.account {
            Some(name) if accounts.iter().any(|(_, n)| n == name) => {
                accounts.into_iter().filter(|(_, n)| n == name).collect()
            }
            _ if o.accounts => accounts.into_iter().skip(o.offset).take(o.limit).collect(),
            _ => Vec::new(),
        };
        if !shown.is_empty() {
            let consumers = if o.consumers {
                self.consumer_details(&figures, &shown, o.config, o.direct_consumers)
                    .await
            } else {
                HashMap::new()
            };
            let fed = if o.streams {
                self.sourcing_details(&figures, &shown).await
            } else {
                HashMap::new()
            };
            let details: Vec<Value> = shown
                .iter()
                .map(|(index, name)| {
                    self.account_detail(*index, name, &figures, &consumers, &fed, &o)
                })
                .collect();
            out.insert("account_details".into(), json!(details));
        }
        out.insert("total".into(), json!(total));
        Value::Object(out)
    }

    /// The `mirror` and `sources` sections (as stream info has them) of the shown
    /// accounts' streams that have any, keyed by account and stream.
    async fn sourcing_details(
        &self,
        figures: &[StreamFigures],
        shown: &[(u32, String)],
    ) -> HashMap<(String, String), Value> {
        let mut out = HashMap::new();
        for f in figures {
            let a = &f.assignment;
            let fed = a.config.mirror.is_some() || !a.config.sources.is_empty();
            if !fed || !shown.iter().any(|(_, name)| *name == a.account) {
                continue;
            }
            if let Ok(sections) = self.0.send_op(a, StreamOp::Sourcing).await {
                out.insert((a.account.clone(), a.config.name.clone()), sections);
            }
        }
        out
    }

    /// The consumers of the shown accounts' streams as `/jsz?consumers=1` lists
    /// them: their info, without the API's `type`, and their config only when
    /// asked for, keyed by account and stream; the public ones first, then (when
    /// asked for) the direct ones.
    async fn consumer_details(
        &self,
        figures: &[StreamFigures],
        shown: &[(u32, String)],
        with_config: bool,
        with_direct: bool,
    ) -> HashMap<(String, String), ConsumerDetails> {
        let mut out: HashMap<(String, String), ConsumerDetails> = HashMap::new();
        for f in figures {
            let a = &f.assignment;
            if !shown.iter().any(|(_, name)| *name == a.account) {
                continue;
            }
            let names: Vec<(String, bool)> = self
                .0
                .meta
                .borrow()
                .consumers_of(&a.account, &a.config.name)
                .filter(|c| with_direct || c.is_public())
                .map(|c| (c.config.consumer_name().to_string(), c.is_public()))
                .collect();
            for (name, public) in names {
                let Ok(Value::Object(mut info)) =
                    self.0.send_op(a, StreamOp::ConsumerInfo { name }).await
                else {
                    // Deleted meanwhile.
                    continue;
                };
                info.remove("type");
                if !with_config {
                    info.remove("config");
                }
                let details = out
                    .entry((a.account.clone(), a.config.name.clone()))
                    .or_default();
                if public {
                    details.public.push(Value::Object(info));
                } else {
                    details.direct.push(Value::Object(info));
                }
            }
        }
        out
    }

    fn account_detail(
        &self,
        index: u32,
        name: &str,
        figures: &[StreamFigures],
        consumers: &HashMap<(String, String), ConsumerDetails>,
        fed: &HashMap<(String, String), Value>,
        o: &JszOptions,
    ) -> Value {
        let mine: Vec<&StreamFigures> = figures
            .iter()
            .filter(|f| f.assignment.account == name)
            .collect();
        let (memory, storage) = memory_and_storage(mine.iter().copied());
        let stats = self
            .0
            .stats
            .borrow()
            .get(&index)
            .copied()
            .unwrap_or_default();
        let mut out = Map::new();
        out.insert("name".into(), json!(name));
        out.insert("id".into(), json!(name));
        out.insert("memory".into(), json!(memory));
        out.insert("storage".into(), json!(storage));
        // nats-server shows an account without reservations this way.
        out.insert("reserved_memory".into(), json!(u64::MAX));
        out.insert("reserved_storage".into(), json!(u64::MAX));
        out.insert("accounts".into(), json!(0));
        out.insert("ha_assets".into(), json!(0));
        out.insert(
            "api".into(),
            json!({"level": 0, "total": stats.total, "errors": stats.errors}),
        );
        if o.streams && !mine.is_empty() {
            let streams: Vec<Value> = mine
                .iter()
                .map(|f| {
                    let mut s = Map::new();
                    s.insert("name".into(), json!(f.assignment.config.name));
                    s.insert("created".into(), json!(ts_rfc3339(f.assignment.created)));
                    s.insert("cluster".into(), json!({ "leader": self.0.opts.name() }));
                    if o.config {
                        s.insert("config".into(), json!(f.assignment.config));
                    }
                    s.insert("state".into(), f.state.clone());
                    let key = (name.to_string(), f.assignment.config.name.clone());
                    if let Some(details) = consumers.get(&key) {
                        if !details.public.is_empty() {
                            s.insert("consumer_detail".into(), json!(details.public));
                        }
                        if !details.direct.is_empty() {
                            s.insert("direct_consumer_detail".into(), json!(details.direct));
                        }
                    }
                    if let Some(sections) = fed.get(&key) {
                        if !sections["mirror"].is_null() {
                            s.insert("mirror".into(), sections["mirror"].clone());
                        }
                        if sections["sources"]
                            .as_array()
                            .is_some_and(|l| !l.is_empty())
                        {
                            s.insert("sources".into(), sections["sources"].clone());
                        }
                    }
                    Value::Object(s)
                })
                .collect();
            out.insert("stream_detail".into(), json!(streams));
        }
        Value::Object(out)
    }

    /// What `/healthz` checks: every JetStream-enabled account with a place in
    /// the store, its streams and their consumers, by name.
    pub fn assets(&self) -> Vec<AccountAssets> {
        let meta = self.0.meta.borrow();
        let unrecovered = self.0.unrecovered.borrow();
        // nats-server looks for accounts in the store: one that has never had
        // a stream has no directory there, and is not found.
        let store = self.0.js.store_dir.join("jetstream");
        self.accounts()
            .into_iter()
            .filter(|(_, account)| store.join(account).is_dir())
            .map(|(_, account)| {
                let streams = meta
                    .streams_of(&account)
                    .map(|a| StreamAssets {
                        recovered: !unrecovered.contains(&(account.clone(), a.config.name.clone())),
                        consumers: meta
                            .consumers_of(&account, &a.config.name)
                            .filter(|c| c.is_public())
                            .map(|c| c.name().to_string())
                            .collect(),
                        name: a.config.name.clone(),
                    })
                    .collect();
                AccountAssets {
                    name: account,
                    streams,
                }
            })
            .collect()
    }
}

fn banner(js: &JetStreamOptions, meta_dir: &std::path::Path) {
    let size = |v: i64| {
        if v < 0 {
            "unlimited".to_string()
        } else {
            format!("{:.2} GB", v as f64 / (1u64 << 30) as f64)
        }
    };
    for line in [
        r"    _ ___ _____ ___ _____ ___ ___   _   __  __",
        r" _ | | __|_   _/ __|_   _| _ \ __| /_\ |  \/  |",
        r"| || | _|  | | \__ \ | | |   / _| / _ \| |\/| |",
        r" \__/|___| |_| |___/ |_| |_|_\___/_/ \_\_|  |_|",
        "",
        "         https://docs.nats.io/jetstream",
        "",
        "---------------- JETSTREAM ----------------",
    ] {
        tracing::info!("{line}");
    }
    tracing::info!("  Strict:          {}", js.strict);
    tracing::info!("  Max Memory:      {}", size(js.max_memory));
    tracing::info!("  Max Storage:     {}", size(js.max_store));
    tracing::info!("  Store Directory: {meta_dir:?}");
    if let Some(domain) = &js.domain {
        tracing::info!("  Domain:          {domain}");
    }
    let sync = match js.sync {
        strait_storage::SyncPolicy::Always => "always (every PubAck after fdatasync)".to_string(),
        strait_storage::SyncPolicy::Interval(d) => crate::format_duration(d),
    };
    tracing::info!("  Sync:            {sync}");
    tracing::info!("  API Level:       {}", super::config::API_LEVEL);
    tracing::info!("-------------------------------------------");
}

/// The request's JSON body, or nats-server's error for bad JSON. `strict`
/// (`jetstream { strict }`, on by default as in nats-server 2.12+) refuses a
/// field the request does not have, as Go's `DisallowUnknownFields` does.
fn parse<T: for<'de> Deserialize<'de> + Default>(
    payload: &[u8],
    strict: bool,
) -> Result<T, ApiError> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let invalid = |e: serde_json::Error| {
        let text = if e.is_eof() {
            "unexpected EOF".to_string()
        } else {
            e.to_string()
        };
        errors::INVALID_JSON.err(text)
    };
    let mut value: Value = serde_json::from_slice(payload).map_err(invalid)?;
    if value.is_null() {
        return Ok(T::default());
    }
    drop_nulls(&mut value);
    let mut unknown: Option<String> = None;
    let parsed = serde_ignored::deserialize(value, |path| {
        if unknown.is_none() {
            unknown = Some(unknown_field(&path));
        }
    })
    .map_err(invalid)?;
    match unknown {
        Some(field) if strict => Err(errors::INVALID_JSON.err(format!(
            "json: unknown field {}",
            serde_json::Value::String(field)
        ))),
        _ => Ok(parsed),
    }
}

/// The name Go gives an unknown field: the key itself, wherever it is nested.
fn unknown_field(path: &serde_ignored::Path<'_>) -> String {
    match path {
        serde_ignored::Path::Map { key, .. } => key.clone(),
        serde_ignored::Path::Some { parent }
        | serde_ignored::Path::NewtypeStruct { parent }
        | serde_ignored::Path::NewtypeVariant { parent }
        | serde_ignored::Path::Seq { parent, .. } => unknown_field(parent),
        other => other.to_string(),
    }
}

/// A `null` field is the zero value in Go's decoding, which clients rely on.
/// The response type of an API subject (after `$JS.API.`); `None` for the
/// subjects nobody answers.
fn response_kind(tokens: &[&str]) -> Option<&'static str> {
    Some(match tokens {
        ["INFO"] => "account_info_response",
        ["STREAM", "CREATE", _] => "stream_create_response",
        ["STREAM", "UPDATE", _] => "stream_update_response",
        ["STREAM", "INFO", _] => "stream_info_response",
        ["STREAM", "DELETE", _] => "stream_delete_response",
        ["STREAM", "PURGE", _] => "stream_purge_response",
        ["STREAM", "NAMES"] => "stream_names_response",
        ["STREAM", "LIST"] => "stream_list_response",
        ["STREAM", "MSG", "GET", _] => "stream_msg_get_response",
        ["STREAM", "MSG", "DELETE", _] => "stream_msg_delete_response",
        ["STREAM", "SNAPSHOT", _] => "stream_snapshot_response",
        ["STREAM", "RESTORE", _] => "stream_restore_response",
        // The filter after the consumer name may have dots of its own.
        ["CONSUMER", "CREATE", _, ..] => "consumer_create_response",
        ["CONSUMER", "DURABLE", "CREATE", _, _] => "consumer_create_response",
        ["CONSUMER", "INFO", _, _] => "consumer_info_response",
        ["CONSUMER", "DELETE", _, _] => "consumer_delete_response",
        ["CONSUMER", "NAMES", _] => "consumer_names_response",
        ["CONSUMER", "LIST", _] => "consumer_list_response",
        ["CONSUMER", "PAUSE", _, _] => "consumer_pause_response",
        ["CONSUMER", "UNPIN", _, _] => "consumer_unpin_response",
        ["CONSUMER", "LEADER", "STEPDOWN", _, _] => "consumer_leader_stepdown_response",
        _ => return None,
    })
}

fn drop_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct InfoRequest {
    subjects_filter: Option<String>,
    deleted_details: bool,
    offset: usize,
}

/// Most subjects one stream info response lists (nats-server's JSMaxSubjectDetails);
/// clients page through the rest with `offset`.
const SUBJECTS_PAGE: usize = 100_000;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ListRequest {
    offset: usize,
    subject: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PurgeRequest {
    filter: String,
    seq: u64,
    keep: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MsgGetRequest {
    seq: u64,
    last_by_subj: Option<String>,
    next_by_subj: Option<String>,
    /// Direct get's fields: batches are refused here, as by nats-server.
    batch: i64,
    max_bytes: i64,
    start_time: Option<String>,
    no_hdr: bool,
    /// Read (the request type is direct get's too) and, as by nats-server's
    /// message get, not used.
    #[allow(dead_code)]
    multi_last: Option<Vec<String>>,
    #[allow(dead_code)]
    up_to_seq: u64,
    #[allow(dead_code)]
    up_to_time: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MsgDeleteRequest {
    seq: u64,
    no_erase: bool,
}

impl Service {
    /// The JetStream limits of `account` (`None`: not enabled there).
    fn account_limits(&self, account: &str) -> Option<JetStreamLimits> {
        self.opts.accounts.jetstream(self.account_index(account)?)
    }

    /// What the server and the account add to the checks of a stream.
    fn limits(&self, account: &str, storage: StorageType) -> ServerLimits {
        let account = self.account_limits(account).unwrap_or_default();
        ServerLimits::for_account(self.js.max_duplicate_window, &account, storage)
    }

    fn account_index(&self, name: &str) -> Option<u32> {
        self.opts.accounts.index(name)
    }

    /// The shard a stream runs on: as assigned, folded onto today's shard count.
    fn shard_of(&self, a: &StreamAssignment) -> usize {
        a.shard % self.commander.shards().max(1)
    }

    async fn open_on_shard(&self, a: &StreamAssignment) -> Result<(), ApiError> {
        let account = self
            .account_index(&a.account)
            .ok_or_else(|| errors::STREAM_CREATE.err(format!("account {:?} is gone", a.account)))?;
        let shard = self.shard_of(a);
        let account_usage = self
            .account_usage
            .borrow_mut()
            .entry(a.account.clone())
            .or_insert_with(|| {
                let limits = self.account_limits(&a.account).unwrap_or_default();
                Ledger::new(limits.max_memory, limits.max_store)
            })
            .clone();
        let spec = StreamSpec {
            account_name: a.account.clone(),
            account_usage,
            server_usage: self.server_usage.clone(),
            account,
            config: a.config.clone(),
            dir: stream_dir(&self.js, &a.account, &a.config.name),
            sync: self.js.sync,
            encryption: self.js.encryption.clone(),
            domain: self.js.domain.clone(),
            events: self.events.0.clone(),
            batch_limits: self.js.batch,
        };
        let (reply, rx) = flume::bounded(1);
        let command = Command::JetStream(StreamCommand::Open {
            spec: Box::new(spec),
            reply,
        });
        if !self.commander.send(shard, command) {
            return Err(errors::STREAM_CREATE.err("the stream's shard has stopped"));
        }
        rx.recv_async()
            .await
            .unwrap_or_else(|_| Err(errors::STREAM_CREATE.err("the stream's shard has stopped")))
    }

    async fn stream_op(&self, account: &str, name: &str, op: StreamOp) -> Result<Value, ApiError> {
        let a = self.assignment(account, name)?;
        self.send_op(&a, op).await
    }

    /// Asks the shard hosting `a` to do `op`, waiting at most `SHARD_TIMEOUT`.
    async fn send_op(&self, a: &StreamAssignment, op: StreamOp) -> Result<Value, ApiError> {
        let index = self
            .account_index(&a.account)
            .ok_or_else(|| errors::STREAM_NOT_FOUND.error())?;
        let (reply, rx) = flume::bounded(1);
        let command = Command::JetStream(StreamCommand::Op(Box::new(StreamRequest {
            account: index,
            name: a.config.name.clone(),
            op,
            reply,
        })));
        if !self.commander.send(self.shard_of(a), command) {
            return Err(errors::STREAM_NOT_FOUND.error());
        }
        let wait = async { rx.recv_async().await.ok() };
        let timeout = async {
            glommio::timer::sleep(SHARD_TIMEOUT).await;
            None
        };
        futures_lite::future::or(wait, timeout)
            .await
            .unwrap_or_else(|| {
                Err(errors::STREAM_STORE_FAILED.err("the stream's shard did not answer"))
            })
    }

    /// Carries out what the streams decided on their own.
    async fn handle_events(self: Rc<Self>) {
        while let Ok(event) = self.events.1.recv_async().await {
            match event {
                HostEvent::ConsumerInactive {
                    account,
                    stream,
                    consumer,
                    created,
                } => {
                    self.remove_inactive(&account, &stream, &consumer, created)
                        .await;
                    self.publish_advisories(&account).await;
                }
            }
        }
    }

    /// Publishes the advisories queued for `account`, in order.
    async fn publish_advisories(&self, account: &str) {
        let Some(handle) = self.handles.borrow().get(account).cloned() else {
            return;
        };
        let advisories: Vec<(String, String, Value)> = {
            let mut all = self.advisories.borrow_mut();
            let (mine, others) = std::mem::take(&mut *all)
                .into_iter()
                .partition(|(a, _, _)| *a == account);
            *all = others;
            mine
        };
        for (_, subject, body) in advisories {
            let body = serde_json::to_vec(&body).unwrap_or_default();
            handle.publish(&subject, "", None, &body).await;
        }
    }

    async fn serve(self: Rc<Self>, handle: Rc<InternalHandle>, account: String) {
        let index = handle.account;
        let enabled = self.opts.accounts.jetstream(index).is_some();
        while let Some(msg) = handle.next().await {
            if msg.reply.is_empty() {
                continue;
            }
            let Some(response) = self.respond(&account, index, enabled, &msg).await else {
                continue;
            };
            let body = serde_json::to_vec(&response).unwrap_or_default();
            let reply = String::from_utf8_lossy(&msg.reply).into_owned();
            handle.publish(&reply, "", None, &body).await;
            self.publish_advisories(&account).await;
            // After the stream's own advisories, as nats-server sends them.
            let audit = serde_json::to_vec(&self.audit(&msg, &body)).unwrap_or_default();
            handle.publish(AUDIT_SUBJECT, "", None, &audit).await;
        }
    }

    /// nats-server's audit of one answered request: who asked (the
    /// `Nats-Request-Info` the router stamped on it), what, and the answer.
    fn audit(&self, msg: &InternalMsg, response: &[u8]) -> Value {
        let mut body = Map::new();
        body.insert(
            "type".into(),
            json!("io.nats.jetstream.advisory.v1.api_audit"),
        );
        body.insert("id".into(), json!(crate::nuid()));
        body.insert("timestamp".into(), json!(ts_rfc3339(now_ns())));
        body.insert("server".into(), json!(self.opts.server_id));
        if let Some(client) = crate::proto::header_value(msg.headers(), "Nats-Request-Info")
            .and_then(|v| serde_json::from_slice::<Value>(v).ok())
        {
            body.insert("client".into(), client);
        }
        body.insert(
            "subject".into(),
            json!(String::from_utf8_lossy(&msg.subject)),
        );
        if !msg.payload().is_empty() {
            body.insert(
                "request".into(),
                json!(String::from_utf8_lossy(msg.payload())),
            );
        }
        body.insert("response".into(), json!(String::from_utf8_lossy(response)));
        if let Some(domain) = &self.js.domain {
            body.insert("domain".into(), json!(domain));
        }
        Value::Object(body)
    }

    /// The response to one request, or `None` where nats-server sends none (an
    /// API subject it does not know).
    async fn respond(
        self: &Rc<Self>,
        account: &str,
        index: u32,
        enabled: bool,
        msg: &InternalMsg,
    ) -> Option<Value> {
        let subject = std::str::from_utf8(&msg.subject).ok()?;
        let api = subject.strip_prefix(API_PREFIX)?;
        let tokens: Vec<&str> = api.split('.').collect();
        if let ["CONSUMER", "RESET", stream, name] = tokens[..] {
            return self
                .reset_consumer(account, enabled, stream, name, msg)
                .await;
        }
        let kind = response_kind(&tokens)?;
        // Refusals come before anything is done.
        let result = if !enabled {
            Err(errors::NOT_ENABLED_FOR_ACCOUNT.error())
        } else if super::stream::requires_newer_api(msg.headers()) {
            Err(errors::REQUIRED_API_LEVEL.error())
        } else {
            *self.requester.borrow_mut() =
                crate::proto::header_value(msg.headers(), "Nats-Request-Info")
                    .and_then(|v| serde_json::from_slice::<Value>(v).ok());
            self.execute(&tokens, account, index, msg.payload()).await
        };
        {
            // Counted as nats-server counts them: a message got answers without
            // going through its API accounting, and a failed message delete is
            // answered as a response that carries an error, not as an error.
            let counted = !(kind == "stream_msg_get_response" && result.is_ok());
            let error = result.is_err() && kind != "stream_msg_delete_response";
            let mut stats = self.stats.borrow_mut();
            let s = stats.entry(index).or_default();
            s.total += u64::from(counted);
            s.errors += u64::from(error);
        }
        let mut out = Map::new();
        out.insert("type".into(), json!(format!("{TYPE_PREFIX}{kind}")));
        match result {
            Ok(Value::Object(body)) => out.extend(body),
            Ok(_) => {}
            Err(e) => {
                out.insert("error".into(), json!(e));
                // Paged responses keep their paging fields with an error.
                match kind {
                    "stream_info_response" => {
                        out.insert("total".into(), json!(0));
                        out.insert("offset".into(), json!(0));
                        out.insert("limit".into(), json!(0));
                    }
                    "stream_names_response" | "stream_list_response" => {
                        out.insert("total".into(), json!(0));
                        out.insert("offset".into(), json!(0));
                        out.insert("limit".into(), json!(0));
                        out.insert("streams".into(), Value::Null);
                    }
                    "consumer_names_response" | "consumer_list_response" => {
                        out.insert("total".into(), json!(0));
                        out.insert("offset".into(), json!(0));
                        out.insert("limit".into(), json!(0));
                        out.insert("consumers".into(), Value::Null);
                    }
                    _ => {}
                }
            }
        }
        Some(Value::Object(out))
    }

    async fn execute(
        self: &Rc<Self>,
        tokens: &[&str],
        account: &str,
        index: u32,
        payload: &[u8],
    ) -> Result<Value, ApiError> {
        match tokens {
            ["INFO"] => self.account_info(account, index).await,
            ["STREAM", "CREATE", name] => self.create(account, name, payload).await,
            ["STREAM", "UPDATE", name] => self.update(account, name, payload).await,
            ["STREAM", "INFO", name] => self.info(account, name, payload).await,
            ["STREAM", "DELETE", name] => self.delete(account, name).await,
            ["STREAM", "PURGE", name] => self.purge(account, name, payload).await,
            ["STREAM", "NAMES"] => self.names(account, payload),
            ["STREAM", "LIST"] => self.list(account, payload).await,
            ["STREAM", "MSG", "GET", name] => self.msg_get(account, name, payload).await,
            ["STREAM", "MSG", "DELETE", name] => self.msg_delete(account, name, payload).await,
            ["STREAM", "SNAPSHOT", name] => self.snapshot(account, index, name, payload).await,
            ["STREAM", "RESTORE", name] => self.restore(account, index, name, payload).await,
            ["CONSUMER", ..] => self.consumer_request(account, tokens, payload).await,
            _ => Err(errors::BAD_REQUEST.error()),
        }
    }

    /// The streams (of one account, or all) with their states, in account then
    /// name order.
    async fn figures(&self, account: Option<&str>) -> Vec<StreamFigures> {
        let assignments: Vec<StreamAssignment> = {
            let meta = self.meta.borrow();
            match account {
                Some(account) => meta.streams_of(account).cloned().collect(),
                None => meta.all().cloned().collect(),
            }
        };
        let mut out = Vec::with_capacity(assignments.len());
        for a in assignments {
            let state = self
                .send_op(&a, StreamOp::state())
                .await
                .unwrap_or_else(|_| json!({}));
            out.push(StreamFigures {
                assignment: a,
                state,
            });
        }
        out
    }

    async fn account_info(&self, account: &str, index: u32) -> Result<Value, ApiError> {
        let streams = self.figures(Some(account)).await;
        let (memory, storage) = memory_and_storage(&streams);
        let stats = self.stats.borrow().get(&index).copied().unwrap_or_default();
        let limits = self.account_limits(account).unwrap_or_default();
        Ok(json!({
            "memory": memory,
            "storage": storage,
            "reserved_memory": 0,
            "reserved_storage": 0,
            "streams": streams.len(),
            "consumers": self.meta.borrow().consumer_count(account),
            "limits": {
                "max_memory": limits.max_memory,
                "max_storage": limits.max_store,
                "max_streams": limits.max_streams,
                "max_consumers": limits.max_consumers,
                "max_ack_pending": limits.max_ack_pending,
                "memory_max_stream_bytes": limits.memory_max_stream_bytes,
                "storage_max_stream_bytes": limits.store_max_stream_bytes,
                "max_bytes_required": limits.max_bytes_required
            },
            "api": { "level": super::config::API_LEVEL, "total": stats.total, "errors": stats.errors }
        }))
    }

    /// The config, created, state (and with `cluster`, the leader) of a stream.
    /// A stream's info; `listing` for a stream list (no cluster section, and the
    /// configuration without the server's level and version, as nats-server).
    async fn info_body(
        &self,
        a: &StreamAssignment,
        op: StreamOp,
        cluster: bool,
        listing: bool,
    ) -> Result<Map<String, Value>, ApiError> {
        let state = self.send_op(a, op).await?;
        let mut out = Map::new();
        let config = if listing {
            a.config.without_dynamic_metadata()
        } else {
            a.config.with_dynamic_metadata()
        };
        out.insert("config".into(), json!(config));
        out.insert("created".into(), json!(ts_rfc3339(a.created)));
        out.insert("state".into(), state);
        if cluster {
            out.insert("cluster".into(), json!({ "leader": self.opts.name() }));
        }
        if a.config.mirror.is_some() || !a.config.sources.is_empty() {
            let mut fed = self.send_op(a, StreamOp::Sourcing).await?;
            for key in ["mirror", "sources"] {
                let section = fed[key].take();
                let present = match &section {
                    Value::Array(list) => !list.is_empty(),
                    other => !other.is_null(),
                };
                if present {
                    out.insert(key.into(), section);
                }
            }
        }
        out.insert("ts".into(), json!(ts_rfc3339(now_ns())));
        Ok(out)
    }

    fn assignment(&self, account: &str, name: &str) -> Result<StreamAssignment, ApiError> {
        self.meta
            .borrow()
            .stream(account, name)
            .cloned()
            .ok_or_else(|| errors::STREAM_NOT_FOUND.error())
    }

    fn commit(&self, change: MetaChange) -> Result<(), ApiError> {
        if let MetaChange::DeleteStream { account, name } = &change {
            self.unrecovered
                .borrow_mut()
                .remove(&(account.clone(), name.clone()));
        }
        let mut meta = self.meta.borrow_mut();
        self.log
            .borrow_mut()
            .commit(&mut meta, change)
            .map_err(|e| errors::STREAM_CREATE.err(e))
    }

    /// The checks of a mirror or sources that look at the origins: message
    /// sizes, `mirror_direct` following the origin's `allow_direct`, delivery
    /// prefixes that would catch an origin's subjects, and cycles.
    fn check_origins(&self, account: &str, cfg: &mut StreamConfig) -> Result<(), ApiError> {
        use super::sourcing;
        let meta = self.meta.borrow();
        let origin = |name: &str| meta.stream(account, name).map(|a| &a.config);
        let too_big = |o: &StreamConfig| {
            cfg.max_msg_size > 0 && o.max_msg_size > 0 && cfg.max_msg_size < o.max_msg_size
        };
        let mut origin_subjects = Vec::new();
        let mut externals = Vec::new();
        if let Some(m) = &cfg.mirror {
            match &m.external {
                None => {
                    if let Some(o) = origin(&m.name) {
                        if too_big(o) {
                            return Err(errors::MIRROR_MAX_MESSAGE_SIZE_TOO_BIG.error());
                        }
                        origin_subjects.extend(o.subjects.iter().cloned());
                        cfg.mirror_direct = o.allow_direct;
                    }
                }
                Some(ext) => externals.push(ext.clone()),
            }
        }
        for src in &cfg.sources {
            match &src.external {
                None => {
                    if let Some(o) = origin(&src.name) {
                        if too_big(o) {
                            return Err(errors::SOURCE_MAX_MESSAGE_SIZE_TOO_BIG.error());
                        }
                        origin_subjects.extend(o.subjects.iter().cloned());
                    }
                }
                Some(ext) => externals.push(ext.clone()),
            }
        }
        for ext in &externals {
            sourcing::check_deliver_prefix(ext, &origin_subjects)?;
        }
        // A stream may not feed itself, directly or through others.
        let mut to_visit = vec![cfg.clone()];
        let mut visited = std::collections::HashSet::new();
        while let Some(c) = to_visit.pop() {
            visited.insert(c.name.clone());
            for src in c.sources.iter().filter(|s| s.external.is_none()) {
                if visited.contains(&src.name) {
                    let overlaps = src.filter_subject.is_empty()
                        || c.subjects
                            .iter()
                            .any(|s| crate::subject::collide(s, &src.filter_subject));
                    if overlaps {
                        return Err(errors::STREAM_INVALID_CONFIG.err("detected cycle"));
                    }
                } else if let Some(o) = origin(&src.name) {
                    to_visit.push(o.clone());
                }
            }
            if let Some(m) = c.mirror.as_ref().filter(|m| m.external.is_none()) {
                if visited.contains(&m.name) {
                    return Err(errors::STREAM_INVALID_CONFIG.err("detected cycle"));
                }
                if let Some(o) = origin(&m.name) {
                    to_visit.push(o.clone());
                }
            }
        }
        Ok(())
    }

    async fn create(&self, account: &str, name: &str, payload: &[u8]) -> Result<Value, ApiError> {
        let requested: StreamConfig = parse(payload, self.js.strict)?;
        if requested.name != name {
            return Err(errors::STREAM_MISMATCH.error());
        }
        let mut config = requested.normalized(&self.limits(account, requested.storage))?;
        self.check_origins(account, &mut config)?;
        if let Ok(existing) = self.assignment(account, name) {
            if !existing.config.same_as_requested(&config) {
                return Err(errors::STREAM_NAME_EXIST.error());
            }
            let mut body = self
                .info_body(&existing, StreamOp::state(), false, false)
                .await?;
            body.insert("did_create".into(), json!(true));
            return Ok(Value::Object(body));
        }
        self.check_stream_room(account, &config)?;
        let a = StreamAssignment {
            account: account.to_string(),
            config,
            created: now_ns(),
            shard: self
                .meta
                .borrow()
                .least_loaded_shard(self.commander.shards()),
        };
        self.commit(MetaChange::AddStream(a.clone()))?;
        if let Err(e) = self.open_on_shard(&a).await {
            let _ = self.commit(MetaChange::DeleteStream {
                account: account.to_string(),
                name: name.to_string(),
            });
            return Err(e);
        }
        tracing::debug!(
            "JetStream created stream '{account} > {name}' on shard {}",
            a.shard
        );
        self.advise(account, name, "create");
        let mut body = self.info_body(&a, StreamOp::state(), false, false).await?;
        body.insert("did_create".into(), json!(true));
        Ok(Value::Object(body))
    }

    /// The checks of a new stream against the others: subjects that overlap,
    /// and the room left in the account and the server.
    fn check_stream_room(&self, account: &str, config: &StreamConfig) -> Result<(), ApiError> {
        self.check_overlap(account, config)?;
        let meta = self.meta.borrow();
        let others: Vec<&StreamConfig> = meta.streams_of(account).map(|a| &a.config).collect();
        let limits = self.account_limits(account).unwrap_or_default();
        super::config::check_account_room(&limits, config, &others)?;
        let all: Vec<&StreamConfig> = meta.all().map(|a| &a.config).collect();
        super::config::check_server_room(self.js.max_memory, self.js.max_store, config, &all)
    }

    /// Queues `$JS.EVENT.ADVISORY.STREAM.CREATED|UPDATED|DELETED.<stream>`.
    fn advise(&self, account: &str, stream: &str, action: &str) {
        let event = match action {
            "create" => "CREATED",
            "modify" => "UPDATED",
            _ => "DELETED",
        };
        let mut body = json!({
            "type": "io.nats.jetstream.advisory.v1.stream_action",
            "id": crate::nuid(),
            "timestamp": ts_rfc3339(now_ns()),
            "stream": stream,
            "action": action,
        });
        if let Some(domain) = &self.js.domain {
            body["domain"] = json!(domain);
        }
        self.advisories.borrow_mut().push((
            account.to_string(),
            format!("$JS.EVENT.ADVISORY.STREAM.{event}.{stream}"),
            body,
        ));
    }

    fn check_overlap(&self, account: &str, config: &StreamConfig) -> Result<(), ApiError> {
        let meta = self.meta.borrow();
        for other in meta.streams_of(account) {
            if other.config.name == config.name {
                continue;
            }
            let collides = other.config.subjects.iter().any(|a| {
                config
                    .subjects
                    .iter()
                    .any(|b| crate::subject::collide(a, b))
            });
            if collides {
                return Err(errors::STREAM_SUBJECT_OVERLAP.error());
            }
        }
        Ok(())
    }

    /// New `consumer_limits` may not leave a consumer above them (nats-server
    /// names the consumers that are).
    fn check_consumer_limits(
        &self,
        account: &str,
        name: &str,
        old: &StreamConfig,
        new: &StreamConfig,
    ) -> Result<(), ApiError> {
        let (was, now) = (&old.consumer_limits, &new.consumer_limits);
        let inactive = (now.inactive_threshold > 0
            && now.inactive_threshold != was.inactive_threshold)
            .then_some(now.inactive_threshold);
        let ack_pending = (now.max_ack_pending > 0 && now.max_ack_pending != was.max_ack_pending)
            .then_some(now.max_ack_pending);
        if inactive.is_none() && ack_pending.is_none() {
            return Ok(());
        }
        let meta = self.meta.borrow();
        let over: Vec<&str> = meta
            .consumers_of(account, name)
            .filter(|c| {
                inactive.is_some_and(|limit| c.config.inactive_threshold > limit)
                    || ack_pending.is_some_and(|limit| c.config.max_ack_pending > limit)
            })
            .map(|c| c.config.consumer_name())
            .collect();
        if over.is_empty() {
            return Ok(());
        }
        Err(errors::STREAM_UPDATE.err(format!(
            "change to limits violates consumers: {}",
            over.join(", ")
        )))
    }

    async fn update(&self, account: &str, name: &str, payload: &[u8]) -> Result<Value, ApiError> {
        let requested: StreamConfig = parse(payload, self.js.strict)?;
        if requested.name != name {
            return Err(errors::STREAM_MISMATCH.error());
        }
        let existing = self.assignment(account, name)?;
        let mut config = requested.normalized(&self.limits(account, requested.storage))?;
        self.check_origins(account, &mut config)?;
        existing.config.check_update(&config)?;
        self.check_consumer_limits(account, name, &existing.config, &config)?;
        self.check_overlap(account, &config)?;
        self.stream_op(account, name, StreamOp::Update(Box::new(config.clone())))
            .await?;
        self.commit(MetaChange::UpdateStream {
            account: account.to_string(),
            config: config.clone(),
        })?;
        let a = StreamAssignment { config, ..existing };
        self.advise(account, name, "modify");
        let body = self.info_body(&a, StreamOp::state(), false, false).await?;
        Ok(Value::Object(body))
    }

    async fn info(&self, account: &str, name: &str, payload: &[u8]) -> Result<Value, ApiError> {
        let req: InfoRequest = parse(payload, self.js.strict)?;
        let a = self.assignment(account, name)?;
        let op = StreamOp::State {
            subjects_filter: req.subjects_filter,
            deleted_details: req.deleted_details,
        };
        let mut body = self.info_body(&a, op, true, false).await?;
        let mut out = Map::new();
        out.insert("total".into(), json!(0));
        out.insert("offset".into(), json!(0));
        out.insert("limit".into(), json!(0));
        if let Some(Value::Object(subjects)) = body
            .get_mut("state")
            .and_then(|state| state.get_mut("subjects"))
        {
            let total = subjects.len();
            if total > 0 {
                out.insert("total".into(), json!(total));
                out.insert("offset".into(), json!(req.offset));
                out.insert("limit".into(), json!(SUBJECTS_PAGE));
                if req.offset > 0 || total > SUBJECTS_PAGE {
                    let mut names: Vec<String> = subjects.keys().cloned().collect();
                    names.sort_unstable();
                    let start = req.offset.min(total);
                    let end = (start + SUBJECTS_PAGE).min(total);
                    let page: Map<String, Value> = names[start..end]
                        .iter()
                        .filter_map(|n| subjects.get(n).map(|v| (n.clone(), v.clone())))
                        .collect();
                    *subjects = page;
                }
            }
        }
        out.extend(body);
        Ok(Value::Object(out))
    }

    async fn delete(&self, account: &str, name: &str) -> Result<Value, ApiError> {
        let a = self.assignment(account, name)?;
        // Gone from the meta state first: a crash from here on does not bring it back.
        self.commit(MetaChange::DeleteStream {
            account: account.to_string(),
            name: name.to_string(),
        })
        .map_err(|e| errors::STREAM_DELETE.err(e.description))?;
        // The shard stops the stream and removes its files.
        self.send_op(&a, StreamOp::Delete).await?;
        self.advise(account, name, "delete");
        Ok(json!({ "success": true }))
    }

    async fn purge(&self, account: &str, name: &str, payload: &[u8]) -> Result<Value, ApiError> {
        let req: PurgeRequest = parse(payload, self.js.strict)?;
        let a = self.assignment(account, name)?;
        if a.config.deny_purge || a.config.sealed {
            return Err(errors::STREAM_PURGE_FAILED.err("stream purge not permitted"));
        }
        if req.seq > 0 && req.keep > 0 {
            return Err(errors::BAD_REQUEST.error());
        }
        let purge = strait_storage::Purge {
            filter: req.filter,
            up_to: req.seq,
            keep: req.keep,
        };
        let purged = self
            .stream_op(account, name, StreamOp::Purge(purge))
            .await?;
        Ok(json!({ "success": true, "purged": purged }))
    }

    fn names(&self, account: &str, payload: &[u8]) -> Result<Value, ApiError> {
        let req: ListRequest = parse(payload, self.js.strict)?;
        let meta = self.meta.borrow();
        let matching: Vec<&StreamAssignment> = meta
            .streams_of(account)
            .filter(|a| Self::wants(a, req.subject.as_deref()))
            .collect();
        let names: Vec<&str> = matching
            .iter()
            .skip(req.offset)
            .take(NAMES_LIMIT)
            .map(|a| a.config.name.as_str())
            .collect();
        Ok(json!({
            "total": matching.len(),
            "offset": req.offset,
            "limit": NAMES_LIMIT,
            "streams": names,
        }))
    }

    fn wants(a: &StreamAssignment, subject: Option<&str>) -> bool {
        subject.is_none_or(|s| {
            s.is_empty()
                || a.config
                    .subjects
                    .iter()
                    .any(|mine| crate::subject::collide(mine, s))
        })
    }

    async fn list(&self, account: &str, payload: &[u8]) -> Result<Value, ApiError> {
        let req: ListRequest = parse(payload, self.js.strict)?;
        let matching: Vec<StreamAssignment> = self
            .meta
            .borrow()
            .streams_of(account)
            .filter(|a| Self::wants(a, req.subject.as_deref()))
            .cloned()
            .collect();
        let mut streams = Vec::new();
        for a in matching.iter().skip(req.offset).take(LIST_LIMIT) {
            let op = StreamOp::state();
            if let Ok(body) = self.info_body(a, op, false, true).await {
                streams.push(Value::Object(body));
            }
        }
        Ok(json!({
            "total": matching.len(),
            "offset": req.offset,
            "limit": LIST_LIMIT,
            "streams": streams,
        }))
    }

    async fn msg_get(&self, account: &str, name: &str, payload: &[u8]) -> Result<Value, ApiError> {
        let req: MsgGetRequest = parse(payload, self.js.strict)?;
        if req.batch > 0 || req.max_bytes > 0 {
            return Err(errors::BAD_REQUEST.error());
        }
        let start_time = match &req.start_time {
            None => None,
            Some(t) => Some(
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| errors::INVALID_JSON.err(e))?
                    .unix_timestamp_nanos() as i64,
            ),
        };
        // nats-server's rules: a sequence, a last subject or a start time,
        // with a next subject as a filter for the sequence or the time.
        let (seq, last, next) = (
            req.seq > 0,
            req.last_by_subj.is_some(),
            req.next_by_subj.is_some(),
        );
        let timed = start_time.is_some();
        if (seq && last)
            || (!seq && !last && !next && !timed)
            || (seq && timed)
            || (timed && last)
            || (last && next)
        {
            return Err(errors::BAD_REQUEST.error());
        }
        self.assignment(account, name)?;
        let op = StreamOp::GetMsg {
            seq: req.seq,
            last_by_subject: req.last_by_subj,
            next_by_subject: req.next_by_subj,
            start_time,
        };
        let mut message = self.stream_op(account, name, op).await?;
        if req.no_hdr {
            if let Some(m) = message.as_object_mut() {
                m.remove("hdrs");
            }
        }
        Ok(json!({ "message": message }))
    }

    async fn msg_delete(
        &self,
        account: &str,
        name: &str,
        payload: &[u8],
    ) -> Result<Value, ApiError> {
        let req: MsgDeleteRequest = parse(payload, self.js.strict)?;
        let a = self.assignment(account, name)?;
        if a.config.deny_delete || a.config.sealed {
            return Err(errors::STREAM_MSG_DELETE_FAILED.err("message delete not permitted"));
        }
        let op = StreamOp::DeleteMsg {
            seq: req.seq,
            erase: !req.no_erase,
        };
        self.stream_op(account, name, op).await?;
        Ok(json!({ "success": true }))
    }
}
