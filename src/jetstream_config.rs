//! The `jetstream` configuration: `jetstream: enabled|disabled|true|false` or
//! `jetstream { store_dir, max_memory_store, max_file_store, domain,
//! sync_interval, cipher, key, limits { duplicate_window } }`, as nats-server
//! reads it.

use strait_conf::{Entry, Kind};
use strait_storage::{Cipher, Encryption, SyncPolicy};

use crate::config::{boolean, duration, int, invalid, string, ConfigError};

/// What the configuration file says about JetStream.
#[derive(Debug, Clone, Default)]
pub struct JetStreamConfig {
    pub enabled: bool,
    pub store_dir: Option<String>,
    pub max_memory: Option<i64>,
    pub max_store: Option<i64>,
    pub domain: Option<String>,
    pub sync: Option<SyncPolicy>,
    pub cipher: Option<Cipher>,
    pub key: Option<String>,
    pub max_duplicate_window: Option<i64>,
    /// `limits { max_ack_pending, max_request_batch }`: ceilings for consumers.
    pub max_ack_pending: Option<i64>,
    pub max_request_batch: Option<i64>,
    /// `limits { batch { max_inflight_per_stream, max_inflight_total,
    /// max_msgs, timeout } }`: atomic batch publishing (0 keeps a default).
    pub batch: strait_shards::jetstream::batch::BatchLimits,
    /// `strict`: API requests with unknown fields refused (the default).
    pub strict: Option<bool>,
}

impl JetStreamConfig {
    /// The encryption the configuration asks for: a cipher needs a key.
    pub fn encryption(&self) -> Result<Option<Encryption>, String> {
        match (&self.cipher, &self.key) {
            (_, None) => Ok(None),
            (cipher, Some(key)) if !key.is_empty() => Ok(Some(Encryption {
                cipher: cipher.unwrap_or(Cipher::ChaCha),
                key: key.as_bytes().to_vec(),
            })),
            _ => Err("jetstream: an empty encryption key is not allowed".into()),
        }
    }
}

/// `limits { batch { ... } }`; a zero or negative value keeps the default,
/// as in nats-server.
fn parse_batch_limits(
    entry: &Entry,
    limits: &mut strait_shards::jetstream::batch::BatchLimits,
) -> Result<(), ConfigError> {
    let map = entry
        .value
        .as_map()
        .ok_or_else(|| invalid(entry, "Expected a map to define batch limits"))?;
    for e in map.iter() {
        match e.key.to_ascii_lowercase().as_str() {
            "max_inflight_per_stream" => {
                limits.per_stream = usize::try_from(int(e)?)
                    .ok()
                    .filter(|n| *n > 0)
                    .unwrap_or(limits.per_stream)
            }
            "max_inflight_total" => {
                limits.total = usize::try_from(int(e)?)
                    .ok()
                    .filter(|n| *n > 0)
                    .unwrap_or(limits.total)
            }
            "max_msgs" => {
                limits.max_msgs = u64::try_from(int(e)?)
                    .ok()
                    .filter(|n| *n > 0)
                    .unwrap_or(limits.max_msgs)
            }
            "timeout" => {
                let timeout = duration(e)?.as_nanos() as i64;
                if timeout > 0 {
                    limits.timeout_ns = timeout;
                }
            }
            _ => return Err(invalid(e, format!("unknown field {:?}", e.key))),
        }
    }
    Ok(())
}

pub fn parse(entry: &Entry) -> Result<JetStreamConfig, ConfigError> {
    let mut js = JetStreamConfig::default();
    match &entry.value.kind {
        Kind::Bool(b) => js.enabled = *b,
        Kind::String(s) => {
            js.enabled = match s.to_ascii_lowercase().as_str() {
                "enabled" | "enable" | "true" | "on" | "yes" => true,
                "disabled" | "disable" | "false" | "off" | "no" => false,
                other => return Err(invalid(entry, format!("invalid jetstream value {other:?}"))),
            }
        }
        Kind::Map(map) => {
            js.enabled = true;
            for e in map.iter() {
                match e.key.to_ascii_lowercase().as_str() {
                    "store_dir" | "store" | "storedir" => js.store_dir = Some(string(e)?),
                    "max_memory_store" | "max_mem_store" | "max_mem" => {
                        js.max_memory = Some(int(e)?)
                    }
                    "max_file_store" | "max_file" => js.max_store = Some(int(e)?),
                    "domain" => js.domain = Some(string(e)?).filter(|d| !d.is_empty()),
                    "enabled" | "enable" => js.enabled = boolean(e)?,
                    "sync_interval" | "sync" => {
                        js.sync = Some(match &e.value.kind {
                            Kind::String(s) if s.eq_ignore_ascii_case("always") => {
                                SyncPolicy::Always
                            }
                            _ => SyncPolicy::Interval(duration(e)?),
                        })
                    }
                    "cipher" => {
                        js.cipher = Some(match string(e)?.to_ascii_lowercase().as_str() {
                            "chacha" | "chachapoly" => Cipher::ChaCha,
                            "aes" => Cipher::Aes,
                            other => return Err(invalid(e, format!("unknown cipher {other:?}"))),
                        })
                    }
                    "key" | "ek" | "prev_key" => {
                        if e.key.eq_ignore_ascii_case("prev_key") {
                            return Err(invalid(e, "prev_key is not supported by strait yet"));
                        }
                        js.key = Some(string(e)?)
                    }
                    "limits" => {
                        let limits = e
                            .value
                            .as_map()
                            .ok_or_else(|| invalid(e, "expected a map"))?;
                        for l in limits.iter() {
                            match l.key.to_ascii_lowercase().as_str() {
                                "duplicate_window" => {
                                    js.max_duplicate_window = Some(duration(l)?.as_nanos() as i64)
                                }
                                "max_ack_pending" => js.max_ack_pending = Some(int(l)?),
                                "max_request_batch" => js.max_request_batch = Some(int(l)?),
                                "batch" => parse_batch_limits(l, &mut js.batch)?,
                                // Meaningful once JetStream is clustered.
                                "max_ha_assets" => {
                                    int(l)?;
                                }
                                _ => return Err(invalid(l, format!("unknown field {:?}", l.key))),
                            }
                        }
                    }
                    "strict" => js.strict = Some(boolean(e)?),
                    "unique_tag" => {
                        string(e)?;
                    }
                    _ => return Err(invalid(e, format!("unknown field {:?}", e.key))),
                }
            }
        }
        _ => {
            return Err(invalid(
                entry,
                format!(
                    "expected a boolean, string or map, got {}",
                    entry.value.type_name()
                ),
            ))
        }
    }
    Ok(js)
}
