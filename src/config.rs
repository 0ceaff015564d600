//! Typed options from a configuration file (nats-server's format, parsed by `conf`).
//!
//! Options of features strait has take effect. Options of features not built yet are
//! refused with an error naming the key and where it is, so nobody believes a
//! setting is in force when it is not. Unknown top-level keys are errors, as they
//! are in nats-server (`unknown field "x"`).

use std::path::Path;
use std::time::Duration;

use strait_shards::ServerOptions;
use thiserror::Error;

use strait_conf::{self as conf, Entry, Kind, Map, Pos};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error(transparent)]
    Parse(#[from] conf::Error),
    #[error("{pos}: {key}: {message}")]
    Invalid {
        pos: Pos,
        key: String,
        message: String,
    },
    #[error("{pos}: {key}: not supported by strait yet")]
    Unsupported { pos: Pos, key: String },
    #[error("{pos}: unknown field \"{key}\"")]
    Unknown { pos: Pos, key: String },
    #[error(transparent)]
    Accounts(#[from] strait_shards::accounts::AccountError),
    #[error("{0}")]
    NoAuthUser(String),
    #[error("max_payload ({max_payload}) cannot be higher than max_pending ({max_pending})")]
    PayloadAbovePending {
        max_payload: usize,
        max_pending: usize,
    },
}

/// Settings of the process rather than the data plane.
#[derive(Debug, Default, Clone)]
pub struct ProcessOptions {
    pub debug: Option<bool>,
    pub trace: Option<bool>,
    pub logtime: Option<bool>,
    pub log_file: Option<String>,
    pub pid_file: Option<String>,
    pub store_dir: Option<String>,
    /// Monitoring listener (`http_port`, `http: host:port`); port 0 = off.
    pub http_host: Option<String>,
    pub http_port: Option<u16>,
    pub http_base_path: Option<String>,
    pub log_size_limit: Option<u64>,
    pub log_max_files: Option<usize>,
    pub ports_file_dir: Option<String>,
    pub syslog: Option<bool>,
    pub remote_syslog: Option<String>,
    /// The profiling endpoint's port (`prof_port`): -1 a free one, 0 off.
    pub prof_port: Option<i32>,
    /// strait's `prof_cpu_rate`: CPU samples per second per thread in a profile.
    pub prof_cpu_rate: Option<u32>,
    /// `authorization { timeout }` is set (otherwise TLS lengthens the default).
    pub auth_timeout_configured: bool,
    /// `jetstream`.
    pub jetstream: Option<crate::jetstream_config::JetStreamConfig>,
}

/// Top-level keys of features strait does not have yet.
const UNSUPPORTED: &[&str] = &[
    "operator",
    "operators",
    "trusted",
    "trusted_keys",
    "resolver",
    "resolver_preload",
    "resolver_tls",
    "cluster",
    "gateway",
    "leafnodes",
    "leaf",
    "websocket",
    "ws",
    "mqtt",
    "https",
    "https_port",
    "mappings",
    "default_js_domain",
];

pub(crate) fn invalid(entry: &Entry, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        pos: entry.value.pos.clone(),
        key: entry.key.clone(),
        message: message.into(),
    }
}

pub(crate) fn unknown(entry: &Entry) -> ConfigError {
    ConfigError::Unknown {
        pos: entry.key_pos.clone(),
        key: entry.key.clone(),
    }
}

pub(crate) fn unsupported(entry: &Entry) -> ConfigError {
    ConfigError::Unsupported {
        pos: entry.key_pos.clone(),
        key: entry.key.clone(),
    }
}

pub(crate) fn int(entry: &Entry) -> Result<i64, ConfigError> {
    entry.value.as_i64().ok_or_else(|| {
        invalid(
            entry,
            format!("expected an integer, got {}", entry.value.type_name()),
        )
    })
}

fn size(entry: &Entry) -> Result<usize, ConfigError> {
    let v = int(entry)?;
    usize::try_from(v).map_err(|_| invalid(entry, format!("must not be negative, got {v}")))
}

pub(crate) fn boolean(entry: &Entry) -> Result<bool, ConfigError> {
    entry.value.as_bool().ok_or_else(|| {
        invalid(
            entry,
            format!("expected a boolean, got {}", entry.value.type_name()),
        )
    })
}

pub(crate) fn string(entry: &Entry) -> Result<String, ConfigError> {
    match &entry.value.kind {
        Kind::String(s) => Ok(s.clone()),
        Kind::Int(i) => Ok(i.to_string()),
        _ => Err(invalid(
            entry,
            format!("expected a string, got {}", entry.value.type_name()),
        )),
    }
}

pub(crate) fn duration(entry: &Entry) -> Result<Duration, ConfigError> {
    if entry.value.as_i64().is_some() {
        tracing::warn!(
            "{}: {} should be converted to a duration",
            entry.key_pos,
            entry.key
        );
    }
    entry
        .value
        .as_duration()
        .map_err(|e| invalid(entry, e.to_string()))
}

fn port(entry: &Entry, v: i64) -> Result<u16, ConfigError> {
    match v {
        -1 | 0 => Ok(0),
        p if (1..=65535).contains(&p) => Ok(p as u16),
        p => Err(invalid(entry, format!("invalid port {p}"))),
    }
}

/// `listen: host:port`, `listen: :port`, `listen: port`.
fn listen(entry: &Entry, opts: &mut ServerOptions) -> Result<(), ConfigError> {
    match &entry.value.kind {
        Kind::Int(p) => opts.port = port(entry, *p)?,
        Kind::String(s) => {
            let (host, p) = s
                .rsplit_once(':')
                .ok_or_else(|| invalid(entry, format!("could not parse address string {s:?}")))?;
            let p: i64 = p
                .parse()
                .map_err(|_| invalid(entry, format!("could not parse port {p:?}")))?;
            opts.port = port(entry, p)?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if !host.is_empty() {
                opts.host = host.to_string();
            }
        }
        _ => return Err(invalid(entry, "expected host:port")),
    }
    Ok(())
}

/// Applies a parsed file to the options. Command-line flags are applied after this,
/// so they win.
pub fn apply(
    map: &Map,
    opts: &mut ServerOptions,
    process: &mut ProcessOptions,
) -> Result<(), ConfigError> {
    let mut auth = crate::auth_config::AuthEntries::default();
    for entry in map.iter() {
        let key = entry.key.to_ascii_lowercase();
        match key.as_str() {
            "listen" => listen(entry, opts)?,
            "host" | "net" => opts.host = string(entry)?,
            "port" => opts.port = port(entry, int(entry)?)?,
            "server_name" => opts.server_name = string(entry)?,
            "client_advertise" => {
                string(entry)?;
            }
            "max_payload" => opts.max_payload = size(entry)?,
            "max_control_line" => opts.max_control_line = size(entry)?,
            "max_connections" | "max_conn" => opts.max_connections = size(entry)?,
            "max_subscriptions" | "max_subs" => opts.max_subscriptions = size(entry)?,
            "max_pending" => opts.max_pending = size(entry)?,
            "write_deadline" => opts.write_deadline = duration(entry)?,
            "ping_interval" => opts.ping_interval = duration(entry)?,
            "ping_max" => {
                opts.ping_max = u32::try_from(int(entry)?)
                    .map_err(|_| invalid(entry, "must be a small positive integer"))?
            }
            "lame_duck_duration" => opts.lame_duck_duration = duration(entry)?,
            "lame_duck_grace_period" => opts.lame_duck_grace_period = duration(entry)?,
            "feature_flags" => feature_flags(entry, opts)?,
            "max_traced_msg_len" => opts.max_traced_msg_len = size(entry)?,
            "max_closed_clients" => opts.max_closed_clients = size(entry)?,
            "debug" => process.debug = Some(boolean(entry)?),
            "trace" | "trace_verbose" => process.trace = Some(boolean(entry)?),
            "logtime" => process.logtime = Some(boolean(entry)?),
            "log_file" | "logfile" => process.log_file = Some(string(entry)?),
            "pid_file" | "pidfile" => process.pid_file = Some(string(entry)?),
            "store_dir" => process.store_dir = Some(string(entry)?),
            "jetstream" => process.jetstream = Some(crate::jetstream_config::parse(entry)?),
            "http_port" | "monitor_port" => process.http_port = Some(port(entry, int(entry)?)?),
            "http" => match &entry.value.kind {
                Kind::Int(p) => process.http_port = Some(port(entry, *p)?),
                Kind::String(s) => {
                    let (host, p) = s.rsplit_once(':').ok_or_else(|| {
                        invalid(entry, format!("could not parse address string {s:?}"))
                    })?;
                    let p: i64 = p
                        .parse()
                        .map_err(|_| invalid(entry, format!("could not parse port {p:?}")))?;
                    process.http_port = Some(port(entry, p)?);
                    if !host.is_empty() {
                        process.http_host = Some(host.to_string());
                    }
                }
                _ => return Err(invalid(entry, "expected host:port")),
            },
            "http_base_path" => process.http_base_path = Some(string(entry)?),
            "prof_port" => {
                let p = int(entry)?;
                if !(-1..=65535).contains(&p) {
                    return Err(invalid(entry, format!("invalid port {p}")));
                }
                process.prof_port = Some(p as i32);
            }
            "prof_cpu_rate" => {
                let rate = int(entry)?;
                if !(1..=10_000).contains(&rate) {
                    return Err(invalid(
                        entry,
                        format!("prof_cpu_rate must be 1 to 10000 Hz, got {rate}"),
                    ));
                }
                process.prof_cpu_rate = Some(rate as u32);
            }
            "logfile_size_limit" | "log_size_limit" => {
                process.log_size_limit = Some(size(entry)? as u64)
            }
            "logfile_max_num" | "log_max_num" => process.log_max_files = Some(size(entry)?),
            "ports_file_dir" => process.ports_file_dir = Some(string(entry)?),
            "syslog" => process.syslog = Some(boolean(entry)?),
            "remote_syslog" => process.remote_syslog = Some(string(entry)?),
            "authorization" => auth.authorization = Some(entry),
            "accounts" => auth.accounts = Some(entry),
            "system_account" => auth.system_account = Some(entry),
            "no_system_account" => {
                if boolean(entry)? {
                    return Err(unsupported(entry));
                }
            }
            "no_auth_user" => opts.auth.no_auth_user = Some(string(entry)?),
            "tls" => crate::tls_config::apply(entry, opts)?,
            "allow_non_tls" => crate::tls_config::apply_allow_non_tls(entry, opts)?,
            "shards" => {
                let n = size(entry)?;
                if n == 0 {
                    return Err(invalid(entry, "must be at least 1"));
                }
                opts.shards = n;
            }
            k if UNSUPPORTED.contains(&k) => {
                return Err(ConfigError::Unsupported {
                    pos: entry.key_pos.clone(),
                    key: entry.key.clone(),
                })
            }
            // Keys referenced as `$key` are variable definitions, not options.
            _ if entry.used_as_variable => {}
            _ => {
                return Err(ConfigError::Unknown {
                    pos: entry.key_pos.clone(),
                    key: entry.key.clone(),
                })
            }
        }
    }
    crate::auth_config::apply(&auth, opts)?;
    if opts.max_payload > opts.max_pending {
        return Err(ConfigError::PayloadAbovePending {
            max_payload: opts.max_payload,
            max_pending: opts.max_pending,
        });
    }
    if opts.max_payload > 8 * 1024 * 1024 {
        tracing::warn!("Maximum payloads over 8.00 MB are generally discouraged and could lead to poor performance");
    }
    Ok(())
}

/// `feature_flags { name: bool }`. nats-server warns about a flag it does not
/// know and goes on; so does strait.
fn feature_flags(entry: &Entry, opts: &mut ServerOptions) -> Result<(), ConfigError> {
    let Kind::Map(flags) = &entry.value.kind else {
        return Err(invalid(entry, "expected a map of feature flags"));
    };
    for flag in flags.iter() {
        match flag.key.to_ascii_lowercase().as_str() {
            "js_ack_fc_v2" => opts.js_ack_fc_v2 = boolean(flag)?,
            // Raft is not there yet: nothing for this flag to change.
            "js_raft_delete_range" => {
                boolean(flag)?;
            }
            other => tracing::warn!("Unknown feature flag {other:?} ignored"),
        }
    }
    Ok(())
}

/// Reads and applies a configuration file.
pub fn load(
    path: &Path,
    opts: &mut ServerOptions,
    process: &mut ProcessOptions,
) -> Result<(), ConfigError> {
    let map = conf::parse_file(path)?;
    process.auth_timeout_configured = crate::tls_config::auth_timeout_configured(&map);
    apply(&map, opts, process)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<(ServerOptions, ProcessOptions), ConfigError> {
        let map = conf::parse_str(text, "test.conf", &conf::MemHost::new())?;
        let mut opts = ServerOptions::default();
        let mut process = ProcessOptions::default();
        apply(&map, &mut opts, &mut process)?;
        Ok((opts, process))
    }

    #[test]
    fn jetstream_limits_for_consumers() {
        let (_, p) = parse(
            "jetstream {\n  limits {\n    max_ack_pending: 100\n    max_request_batch: 250\n    max_ha_assets: 4\n    duplicate_window: \"1m\"\n  }\n}\n",
        )
        .expect("config");
        let js = p.jetstream.expect("jetstream");
        assert_eq!(
            (
                js.max_ack_pending,
                js.max_request_batch,
                js.max_duplicate_window
            ),
            (Some(100), Some(250), Some(60_000_000_000))
        );
    }

    #[test]
    fn limits_and_listen() {
        let (o, p) = parse(
            "listen: 127.0.0.1:24226\nping_interval: \"1s\"\nping_max: 2\nmax_connections: 2\n\
             max_subscriptions: 2\nmax_payload: 512\nwrite_deadline: \"1s\"\nmax_pending: 262144\n\
             debug: true\nlog_file: \"/tmp/x.log\"\n",
        )
        .unwrap();
        assert_eq!(o.host, "127.0.0.1");
        assert_eq!(o.port, 24226);
        assert_eq!(o.ping_interval, Duration::from_secs(1));
        assert_eq!(o.ping_max, 2);
        assert_eq!(o.max_connections, 2);
        assert_eq!(o.max_subscriptions, 2);
        assert_eq!(o.max_payload, 512);
        assert_eq!(o.write_deadline, Duration::from_secs(1));
        assert_eq!(o.max_pending, 262144);
        assert_eq!(p.debug, Some(true));
        assert_eq!(p.log_file.as_deref(), Some("/tmp/x.log"));
        let (o, _) = parse("max_payload = 128KB").unwrap();
        assert_eq!(o.max_payload, 128 * 1024);
        let (o, _) = parse("listen: \":4333\"").unwrap();
        assert_eq!(o.port, 4333);
    }

    #[test]
    fn accounts_users_and_permissions() {
        let text = r#"
accounts {
  A: {
    users: [ {user: a, password: a, permissions: {publish: {deny: "secret.>"}, subscribe: ["foo", "jobs v1"], allow_responses: {max: 2, expires: "1m"}}} ]
    imports: [ {stream: {account: B, subject: foo}, prefix: from_b}, {service: {account: B, subject: "req.*"}, to: "b.req.*"} ]
    limits: { max_connections: 2, max_payload: 100 }
  }
  B: {
    users: [ {user: b, password: b} ]
    exports: [ {stream: "foo"}, {service: "req.*", response_type: stream, accounts: [A]} ]
  }
  SYS: { users: [ {user: sys, password: sys} ] }
}
system_account: SYS
authorization { users: [ {user: g, password: g, account: B} ] }
"#;
        let (o, _) = parse(text).unwrap();
        let accounts = &o.accounts;
        assert_eq!(accounts.name(0), "$G");
        assert_eq!(accounts.name(accounts.system), "SYS");
        let a = accounts.index("A").unwrap();
        let b = accounts.index("B").unwrap();
        assert_eq!(o.auth.users["a"].account, a);
        assert_eq!(o.auth.users["g"].account, b);
        let perms = o.auth.users["a"].permissions.clone().unwrap();
        assert!(!perms.can_publish(b"secret.x"));
        assert!(
            !perms.can_publish(b"public"),
            "allow_responses closes the blanket allow"
        );
        assert!(perms.can_subscribe(b"foo", None));
        assert!(!perms.can_subscribe(b"jobs", Some(b"v2")));
        assert_eq!(perms.responses.unwrap().max_msgs, Some(2));
        let spec = &accounts.list[a as usize];
        assert_eq!(spec.limits.max_connections, Some(2));
        assert_eq!(spec.stream_imports.len(), 1);
        assert_eq!(spec.service_imports[0].local, "b.req.*");

        let err =
            parse("accounts { A: { imports: [ {stream: {account: B, subject: foo}} ] }, B: {} }")
                .unwrap_err();
        assert!(
            err.to_string()
                .ends_with("Error adding stream import \"foo\": stream import not authorized"),
            "{err}"
        );
        let err = parse("accounts { A: { imports: [ {stream: {account: B, subject: \"orders.*\"}, to: \"incoming.orders\"} ] }, B: { exports: [ {stream: \"orders.*\"} ] } }")
            .unwrap_err();
        assert!(
            err.to_string().ends_with("Error adding stream import \"orders.*\": failed to create mapping transform for stream import subject from \"orders.*\" to \"incoming.orders\": invalid mapping destination: not using all of the token wildcard(s) in incoming.orders"),
            "{err}"
        );
        let err = parse("accounts { A: { users: [ {user: x, password: y, account: NOPE} ] } }");
        assert!(err.is_err());
        let err = parse("accounts { $G: {} }").unwrap_err();
        assert!(err.to_string().contains("Reserved Account"), "{err}");
        let err = parse("authorization { user: u, password: p }\naccounts { A: { users: [ {user: a, password: a} ] } }")
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("Can not have a single user/pass and accounts"),
            "{err}"
        );
        let err = parse(
            "authorization { users: [ {user: a, permissions: {publish: {allow: [\"a..b\"]}}} ] }",
        )
        .unwrap_err();
        assert!(err.to_string().contains("not a valid subject"), "{err}");
        let err = parse("system_account: NOPE").unwrap_err();
        assert!(err.to_string().contains("system account"), "{err}");
    }

    #[test]
    fn feature_flags_switch_the_v2_ack_layout() {
        assert!(!parse("").unwrap().0.js_ack_fc_v2);
        let (opts, _) = parse("feature_flags { js_ack_fc_v2: true }").unwrap();
        assert!(opts.js_ack_fc_v2);
        // An unknown flag is only warned about, as nats-server does.
        let (opts, _) =
            parse("feature_flags { js_ack_fc_v2: false, js_something_new: true }").unwrap();
        assert!(!opts.js_ack_fc_v2);
        assert!(parse("feature_flags { js_ack_fc_v2: maybe }").is_err());
        assert!(parse("feature_flags: 1").is_err());
    }

    #[test]
    fn refusals_name_key_and_position() {
        let err = parse("port: 4222\ncluster {\n  port: 6222\n}\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "test.conf:2:1: cluster: not supported by strait yet"
        );
        let (o, _) =
            parse("authorization {\n  user: derek\n  password: s3cr3t\n  timeout: 1\n}\n").unwrap();
        assert!(o.auth.users.contains_key("derek"));
        assert_eq!(o.auth.timeout, Duration::from_secs(1));
        let (o, _) = parse("authorization { token: \"s3cr3t\", timeout: \"2s\" }").unwrap();
        assert_eq!(o.auth.token.as_deref(), Some("s3cr3t"));
        let (o, _) = parse("authorization: { users: [ { nkey: UAFHG6FUD2UU4SDFVAFUL5LDFO2XM4WYM76UNXTPJYJK7EEMYRBHT2VE } ] }").unwrap();
        assert_eq!(o.auth.nkeys.len(), 1);
        let err = parse("bogus_key: 1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "test.conf:1:1: unknown field \"bogus_key\""
        );
        let err = parse("max_payload: \"big\"").unwrap_err();
        assert!(
            err.to_string().starts_with("test.conf:1:14: max_payload:"),
            "{err}"
        );
        let err = parse("max_pending: 1000\nmax_payload: 2000").unwrap_err();
        assert_eq!(
            err.to_string(),
            "max_payload (2000) cannot be higher than max_pending (1000)"
        );
        assert!(parse("ping_interval: \"soon\"").is_err());
    }
}
