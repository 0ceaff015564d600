//! A stream's configuration as nats-server 2.14 has it: the JSON fields, the
//! defaults the server fills in, and the checks a create or an update must pass
//! (nats-server's `checkStreamCfg` and `stream.update` rules), with its error
//! codes and texts. Plain data, no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::errors::{self, ApiError};
use super::sourcing::StreamSource;
use crate::accounts::JetStreamLimits;
use crate::subject;

/// Longest stream name nats-server accepts.
pub const MAX_NAME_LEN: usize = 255;
pub const MAX_DESCRIPTION_LEN: usize = 4 * 1024;
pub const MAX_METADATA_LEN: usize = 128 * 1024;
/// nats-server's default duplicate window: two minutes, in nanoseconds.
pub const DEFAULT_DUPLICATE_WINDOW_NS: i64 = 120_000_000_000;
const MIN_WINDOW_NS: i64 = 100_000_000;
const SECOND_NS: i64 = 1_000_000_000;

/// The JetStream API level this server implements (2.14's), and its version
/// string as streams' metadata carry it.
pub const API_LEVEL: u32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    #[default]
    Limits,
    Interest,
    #[serde(rename = "workqueue")]
    WorkQueue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Discard {
    #[default]
    Old,
    New,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageType {
    #[default]
    File,
    Memory,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    S2,
}

/// Defaults a stream gives its consumers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerLimits {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inactive_threshold: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_ack_pending: i64,
}

/// `subject_transform`: applied to every message before it is stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectTransform {
    #[serde(rename = "src", default)]
    pub source: String,
    #[serde(rename = "dest", default)]
    pub destination: String,
}

/// `republish`: stored messages are published again on `dest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RePublish {
    #[serde(rename = "src", default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    #[serde(rename = "dest", default)]
    pub destination: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub headers_only: bool,
}

/// nats-server's rules for `subject_transform` and `republish`, with its
/// defaults: an empty republish source is `>`, and `>` to `>` on a stream whose
/// one subject is the transform's source republishes the transformed subjects.
fn check_transforms(cfg: &mut StreamConfig) -> Result<(), ApiError> {
    if let Some(t) = &cfg.subject_transform {
        if !t.source.is_empty() && !subject::is_valid_subject(t.source.as_bytes()) {
            return Err(errors::STREAM_TRANSFORM_INVALID_SOURCE
                .err(format!("invalid subject {}", t.source)));
        }
        if !t.destination.is_empty() {
            SubjectTransform::compile(t)
                .map_err(|e| errors::STREAM_TRANSFORM_INVALID_DESTINATION.err(e))?;
        }
    }
    let Some(republish) = cfg.republish.as_mut() else {
        return Ok(());
    };
    if republish.source.is_empty() {
        republish.source = ">".into();
    }
    if let Some(t) = &cfg.subject_transform {
        let implicit = republish.source == ">"
            && republish.destination == ">"
            && cfg.subjects.len() == 1
            && t.source == cfg.subjects[0];
        if implicit {
            republish.source.clone_from(&t.destination);
            republish.destination.clone_from(&t.destination);
        }
    }
    if cfg
        .subjects
        .iter()
        .any(|s| subject::collide(&republish.destination, s))
    {
        return Err(invalid(
            "stream configuration for republish destination forms a cycle",
        ));
    }
    if crate::accounts::SubjectTransform::for_stream(&republish.source, &republish.destination)
        .is_err()
    {
        return Err(invalid(format!(
            "stream configuration for republish with transform from '{}' to '{}' not valid",
            republish.source, republish.destination
        )));
    }
    Ok(())
}

impl SubjectTransform {
    /// The transform this configuration describes.
    pub fn compile(&self) -> Result<crate::accounts::SubjectTransform, String> {
        crate::accounts::SubjectTransform::for_stream(&self.source, &self.destination)
    }
}

/// The stream configuration, field for field as nats-server writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamConfig {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
    #[serde(default)]
    pub retention: Retention,
    #[serde(default = "unlimited")]
    pub max_consumers: i64,
    #[serde(default = "unlimited")]
    pub max_msgs: i64,
    #[serde(default = "unlimited")]
    pub max_bytes: i64,
    /// Nanoseconds; 0 is no limit.
    #[serde(default)]
    pub max_age: i64,
    #[serde(default = "unlimited")]
    pub max_msgs_per_subject: i64,
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub max_msg_size: i32,
    #[serde(default)]
    pub discard: Discard,
    #[serde(default)]
    pub storage: StorageType,
    #[serde(default)]
    pub num_replicas: i64,
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_ack: bool,
    /// Nanoseconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub duplicate_window: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<StreamSource>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "super::sourcing::null_as_empty"
    )]
    pub sources: Vec<StreamSource>,
    #[serde(default)]
    pub compression: Compression,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub first_seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_transform: Option<SubjectTransform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub republish: Option<RePublish>,
    #[serde(default)]
    pub allow_direct: bool,
    #[serde(default)]
    pub mirror_direct: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub discard_new_per_subject: bool,
    #[serde(default)]
    pub sealed: bool,
    #[serde(default)]
    pub deny_delete: bool,
    #[serde(default)]
    pub deny_purge: bool,
    #[serde(default)]
    pub allow_rollup_hdrs: bool,
    #[serde(default)]
    pub consumer_limits: ConsumerLimits,
    #[serde(default)]
    pub allow_msg_ttl: bool,
    /// Nanoseconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub subject_delete_marker_ttl: i64,
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_msg_counter: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_atomic: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_msg_schedules: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_batched: bool,
    /// `default` or `async` (2.12); strait has only the default, where a
    /// PubAck follows the write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persist_mode: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Part of a create or update request, not of the stream (nats-server's
    /// `StreamConfigRequest`): read so strict parsing takes it, never kept.
    #[serde(default, skip_serializing)]
    pub pedantic: bool,
}

fn unlimited() -> i64 {
    -1
}
fn is_zero(v: &i64) -> bool {
    *v == 0
}
fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}
fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}
fn is_false(v: &bool) -> bool {
    !*v
}

impl Default for StreamConfig {
    fn default() -> Self {
        serde_json::from_str("{}").unwrap_or_else(|_| unreachable!("every field has a default"))
    }
}

/// What the server's own limits add to a stream's checks.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerLimits {
    /// `jetstream { limits { duplicate_window } }`, nanoseconds (0: none).
    pub max_duplicate_window: i64,
    /// The account needs `max_bytes` set on every stream.
    pub max_bytes_required: bool,
    /// The account's per-stream byte ceiling for this storage type (-1: none).
    pub max_stream_bytes: i64,
}

impl ServerLimits {
    /// The limits a stream of `storage` gets in an account with `account`'s.
    pub fn for_account(
        max_duplicate_window: i64,
        account: &JetStreamLimits,
        storage: StorageType,
    ) -> ServerLimits {
        ServerLimits {
            max_duplicate_window,
            max_bytes_required: account.max_bytes_required,
            max_stream_bytes: match storage {
                StorageType::Memory => account.memory_max_stream_bytes,
                StorageType::File => account.store_max_stream_bytes,
            },
        }
    }
}

/// nats-server's account checks on a new stream (`existing` are the account's
/// other streams): the stream count, `max_consumers`, and the bytes the
/// streams' `max_bytes` reserve against the account's memory or storage.
pub fn check_account_room(
    limits: &JetStreamLimits,
    config: &StreamConfig,
    existing: &[&StreamConfig],
) -> Result<(), ApiError> {
    if limits.max_streams >= 0 && existing.len() as i64 >= limits.max_streams {
        return Err(errors::MAXIMUM_STREAMS_LIMIT.error());
    }
    if config.max_consumers > 0
        && limits.max_consumers > 0
        && config.max_consumers > limits.max_consumers
    {
        return Err(errors::MAXIMUM_CONSUMERS_LIMIT.error());
    }
    check_reservation(limits.max_memory, limits.max_store, config, existing)
}

/// nats-server's server-wide check on a new stream: the bytes every account's
/// streams reserve with `max_bytes`, against `max_memory_store` /
/// `max_file_store` (`all` are the server's other streams).
pub fn check_server_room(
    max_memory: i64,
    max_store: i64,
    config: &StreamConfig,
    all: &[&StreamConfig],
) -> Result<(), ApiError> {
    check_reservation(max_memory, max_store, config, all)
}

/// Whether `config`'s `max_bytes` (a byte when it has none) fits beside what
/// `existing` reserve, under the ceiling for its storage (-1: none).
fn check_reservation(
    max_memory: i64,
    max_store: i64,
    config: &StreamConfig,
    existing: &[&StreamConfig],
) -> Result<(), ApiError> {
    let reserved: i64 = existing
        .iter()
        .filter(|c| c.storage == config.storage && c.max_bytes > 0)
        .map(|c| c.max_bytes.saturating_mul(c.num_replicas.max(1)))
        .fold(0, i64::saturating_add);
    // A stream without max_bytes still needs a byte of room.
    let wanted = config.max_bytes.max(1);
    let (limit, exceeded) = match config.storage {
        StorageType::Memory => (max_memory, errors::MEMORY_RESOURCES_EXCEEDED),
        StorageType::File => (max_store, errors::STORAGE_RESOURCES_EXCEEDED),
    };
    if limit >= 0 && (reserved > limit || wanted > limit - reserved) {
        return Err(exceeded.error());
    }
    Ok(())
}

fn invalid(text: impl std::fmt::Display) -> ApiError {
    errors::STREAM_INVALID_CONFIG.err(text)
}

/// nats-server's `isValidAssetName`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| " \t\r\n\u{c}.*>\\/".contains(c))
}

impl StreamConfig {
    /// Checks a requested configuration and fills in nats-server's defaults, as a
    /// create does. Features strait does not have yet are refused by name.
    pub fn normalized(&self, limits: &ServerLimits) -> Result<StreamConfig, ApiError> {
        if !is_valid_name(&self.name) {
            return Err(invalid(
                "stream name is required and can not contain '.', '*', '>', '\\', '/'",
            ));
        }
        if self.name.len() > MAX_NAME_LEN {
            return Err(invalid(format!(
                "stream name is too long, maximum allowed is {MAX_NAME_LEN}"
            )));
        }
        if self.description.len() > MAX_DESCRIPTION_LEN {
            return Err(invalid(format!(
                "stream description is too long, maximum allowed is {MAX_DESCRIPTION_LEN}"
            )));
        }
        let metadata_len: usize = self.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        if metadata_len > MAX_METADATA_LEN {
            return Err(invalid(format!(
                "stream metadata exceeds maximum size of {MAX_METADATA_LEN} bytes"
            )));
        }
        let mut cfg = self.clone();
        cfg.pedantic = false;
        if cfg.num_replicas == 0 {
            cfg.num_replicas = 1;
        }
        if cfg.num_replicas > 5 {
            return Err(invalid("maximum replicas is 5"));
        }
        if cfg.num_replicas < 0 {
            return Err(errors::REPLICAS_COUNT_CANNOT_BE_NEGATIVE.error());
        }
        if cfg.num_replicas > 1 {
            return Err(errors::STREAM_REPLICAS_NOT_SUPPORTED.error());
        }
        for v in [
            &mut cfg.max_msgs,
            &mut cfg.max_bytes,
            &mut cfg.max_msgs_per_subject,
            &mut cfg.max_consumers,
        ] {
            if *v == 0 || *v < -1 {
                *v = -1;
            }
        }
        if cfg.max_msg_size == 0 || cfg.max_msg_size < -1 {
            cfg.max_msg_size = -1;
        }
        if cfg.max_age < 0 {
            return Err(invalid("max age can not be negative"));
        }
        if cfg.max_age != 0 && cfg.max_age < MIN_WINDOW_NS {
            return Err(invalid("max age needs to be >= 100ms"));
        }
        if cfg.duplicate_window == 0 && cfg.mirror.is_none() && cfg.sources.is_empty() {
            let mut window = DEFAULT_DUPLICATE_WINDOW_NS;
            if limits.max_duplicate_window > 0 {
                window = window.min(limits.max_duplicate_window);
            }
            cfg.duplicate_window = if cfg.max_age != 0 && cfg.max_age < window {
                cfg.max_age
            } else {
                window
            };
        }
        if cfg.duplicate_window < 0 {
            return Err(invalid("duplicates window can not be negative"));
        }
        if cfg.max_age != 0 && cfg.duplicate_window > cfg.max_age {
            return Err(invalid("duplicates window can not be larger then max age"));
        }
        if limits.max_duplicate_window > 0 && cfg.duplicate_window > limits.max_duplicate_window {
            return Err(invalid(format!(
                "duplicates window can not be larger then server limit of {}",
                crate::format_duration(std::time::Duration::from_nanos(
                    limits.max_duplicate_window as u64
                ))
            )));
        }
        if cfg.duplicate_window > 0 && cfg.duplicate_window < MIN_WINDOW_NS {
            return Err(invalid("duplicates window needs to be >= 100ms"));
        }
        if cfg.deny_purge && cfg.allow_rollup_hdrs {
            return Err(invalid("roll-ups require the purge permission"));
        }
        // A counter's value is its subject's last message: nothing may refuse
        // an increment for room, expire it, or keep only what consumers want.
        if cfg.allow_msg_counter {
            if cfg.discard == Discard::New {
                return Err(invalid("counter stream cannot use discard new"));
            }
            if cfg.allow_msg_ttl {
                return Err(invalid("counter stream cannot use message TTLs"));
            }
            if cfg.allow_msg_schedules {
                return Err(invalid("counter stream cannot use message schedules"));
            }
            if cfg.retention != Retention::Limits {
                return Err(invalid("counter stream can only use limits retention"));
            }
        }
        if cfg.discard_new_per_subject {
            if cfg.discard != Discard::New {
                return Err(invalid(
                    "discard new per subject requires discard new policy to be set",
                ));
            }
            if cfg.max_msgs_per_subject <= 0 {
                return Err(invalid(
                    "discard new per subject requires max msgs per subject > 0",
                ));
            }
        }
        if cfg.subject_delete_marker_ttl > 0 {
            if cfg.subject_delete_marker_ttl < SECOND_NS {
                return Err(invalid(
                    "subject delete marker TTL must be at least 1 second",
                ));
            }
            // What markers need comes with them, as nats-server does for every
            // request that is not pedantic.
            cfg.allow_msg_ttl = true;
            if !cfg.allow_rollup_hdrs {
                cfg.allow_rollup_hdrs = true;
                cfg.deny_purge = false;
            }
        } else if cfg.subject_delete_marker_ttl < 0 {
            return Err(invalid("subject delete marker TTL must not be negative"));
        }
        self.refuse_missing_features(&cfg)?;
        if let Some(mirror) = &cfg.mirror {
            super::sourcing::check_mirror(mirror, cfg.first_seq, !cfg.subjects.is_empty())?;
            if !cfg.sources.is_empty() {
                return Err(errors::MIRROR_WITH_SOURCES.error());
            }
            if cfg.allow_msg_counter {
                return Err(errors::MIRROR_WITH_COUNTERS.error());
            }
            if cfg.allow_atomic {
                return Err(errors::MIRROR_WITH_ATOMIC_PUBLISH.error());
            }
            if cfg.allow_batched {
                return Err(errors::MIRROR_WITH_BATCH_PUBLISH.error());
            }
            if cfg.allow_msg_schedules {
                return Err(errors::MIRROR_WITH_MSG_SCHEDULES.error());
            }
            if cfg.subject_delete_marker_ttl > 0 {
                return Err(invalid("subject delete markers forbidden on mirrors"));
            }
        }
        if !cfg.sources.is_empty() {
            if cfg.allow_msg_schedules {
                return Err(errors::SOURCE_WITH_MSG_SCHEDULES.error());
            }
            super::sourcing::check_sources(&cfg.sources)?;
        }
        let fed = cfg.mirror.is_some() || !cfg.sources.is_empty();
        if cfg.subjects.is_empty() {
            // A mirror or a stream of sources needs no subjects of its own.
            if !fed {
                cfg.subjects.push(cfg.name.clone());
            }
        } else {
            for (i, subj) in cfg.subjects.iter().enumerate() {
                if !subject::is_valid_subject(subj.as_bytes()) {
                    return Err(invalid("invalid subject"));
                }
                if cfg.subjects[..i].contains(subj) {
                    return Err(invalid("duplicate subjects detected"));
                }
                if subj == ">" {
                    if !cfg.no_ack {
                        return Err(invalid("capturing all subjects requires no-ack to be true"));
                    }
                } else if !cfg.no_ack {
                    let api = ["$JS.>", "$JSC.>", "$NRG.>"]
                        .iter()
                        .any(|ns| subject::collide(subj, ns));
                    if api && !subject::is_subset_match(subj, "$JS.EVENT.>") {
                        return Err(invalid(
                            "subjects that overlap with jetstream api require no-ack to be true",
                        ));
                    }
                    if subject::collide(subj, "$SYS.>")
                        && !subject::is_subset_match(subj, "$SYS.ACCOUNT.>")
                    {
                        return Err(invalid(
                            "subjects that overlap with system api require no-ack to be true",
                        ));
                    }
                }
                for later in &cfg.subjects[i + 1..] {
                    if subject::collide(later, subj) {
                        return Err(invalid(format!("subject {subj:?} overlaps with {later:?}")));
                    }
                }
            }
        }
        check_transforms(&mut cfg)?;
        if limits.max_bytes_required && cfg.max_bytes <= 0 {
            return Err(errors::STREAM_MAX_BYTES_REQUIRED.error());
        }
        if limits.max_stream_bytes > 0 && cfg.max_bytes > limits.max_stream_bytes {
            return Err(errors::STREAM_MAX_STREAM_BYTES_EXCEEDED.error());
        }
        cfg.set_version_metadata();
        Ok(cfg)
    }

    /// What strait cannot do yet answers with a clear error, never a silent echo.
    fn refuse_missing_features(&self, cfg: &StreamConfig) -> Result<(), ApiError> {
        let missing = if cfg.compression == Compression::S2 {
            Some("s2 compression")
        } else if cfg.persist_mode.as_deref() == Some("async") {
            Some("the async persist mode")
        } else if cfg.allow_batched {
            Some("fast batch publishing")
        } else if cfg.allow_msg_schedules {
            Some("message schedules")
        } else {
            None
        };
        match missing {
            Some(what) => {
                Err(errors::STREAM_CREATE.err(format!("this server does not support {what} yet")))
            }
            None => Ok(()),
        }
    }

    /// The `_nats.*` key nats-server keeps in a stream's configuration: the API
    /// level its features require. The server's own level and version are not
    /// stored (they change with the server): see [`Self::with_dynamic_metadata`].
    fn set_version_metadata(&mut self) {
        let required = if self.allow_msg_counter || self.allow_atomic {
            2
        } else if self.allow_msg_ttl || self.subject_delete_marker_ttl > 0 {
            1
        } else {
            0
        };
        self.metadata
            .insert("_nats.req.level".into(), required.to_string());
        self.metadata.remove("_nats.level");
        self.metadata.remove("_nats.ver");
    }

    /// The configuration as stream info, create and update answers show it: with
    /// the server's API level and version added (stream lists show it without).
    pub fn with_dynamic_metadata(&self) -> StreamConfig {
        let mut cfg = self.clone();
        cfg.metadata
            .insert("_nats.level".into(), API_LEVEL.to_string());
        cfg.metadata
            .insert("_nats.ver".into(), crate::options::NATS_VERSION.to_string());
        cfg
    }

    /// The configuration as a stream list shows it (also for one stored by an
    /// earlier strait that kept the server's level and version).
    pub fn without_dynamic_metadata(&self) -> StreamConfig {
        let mut cfg = self.clone();
        cfg.metadata.remove("_nats.level");
        cfg.metadata.remove("_nats.ver");
        cfg
    }

    /// Equal apart from the metadata the server maintains: a create repeated with
    /// the same request is not a conflict.
    pub fn same_as_requested(&self, other: &StreamConfig) -> bool {
        let strip = |c: &StreamConfig| {
            let mut c = c.clone();
            c.metadata.retain(|k, _| !k.starts_with("_nats."));
            c
        };
        strip(self) == strip(other)
    }

    /// nats-server's rules for what an update may change (`stream.update`).
    /// `self` is the running configuration, `new` the normalized request.
    pub fn check_update(&self, new: &StreamConfig) -> Result<(), ApiError> {
        let refuse = |what: &str| {
            Err(invalid(format!(
                "stream configuration update can not change {what}"
            )))
        };
        if new.name != self.name {
            return Err(errors::STREAM_MISMATCH.error());
        }
        if new.storage != self.storage {
            return refuse("storage type");
        }
        // Limits and interest may change into each other, not to or from a
        // work queue.
        if new.retention != self.retention
            && (new.retention == Retention::WorkQueue || self.retention == Retention::WorkQueue)
        {
            return refuse("retention policy to/from workqueue");
        }
        if self.sealed && !new.sealed {
            return refuse("sealed state");
        }
        if self.deny_delete && !new.deny_delete {
            return refuse("deny delete");
        }
        if self.deny_purge && !new.deny_purge {
            return refuse("deny purge");
        }
        if self.allow_msg_counter != new.allow_msg_counter {
            return refuse("message counter setting");
        }
        if new.first_seq != self.first_seq && new.first_seq != 0 {
            return refuse("first sequence");
        }
        // A mirror may be promoted to a plain stream, never pointed elsewhere.
        if new.mirror.is_some() && new.mirror != self.mirror {
            return Err(errors::STREAM_MIRROR_NOT_UPDATABLE.error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_limits_bound_streams_and_reserved_bytes() {
        let limits = JetStreamLimits {
            max_streams: 2,
            max_store: 1000,
            max_consumers: 5,
            ..Default::default()
        };
        let sized = |bytes: i64| StreamConfig {
            max_bytes: bytes,
            ..Default::default()
        };
        let a = sized(600);
        assert!(check_account_room(&limits, &sized(400), &[&a]).is_ok());
        let e = check_account_room(&limits, &sized(401), &[&a]).unwrap_err();
        assert_eq!(e.err_code, 10047);
        let b = sized(-1);
        let e = check_account_room(&limits, &sized(1), &[&a, &b]).unwrap_err();
        assert_eq!(e.err_code, 10027);
        let many = StreamConfig {
            max_consumers: 6,
            ..Default::default()
        };
        assert_eq!(
            check_account_room(&limits, &many, &[])
                .unwrap_err()
                .err_code,
            10026
        );
        let memory = StreamConfig {
            storage: StorageType::Memory,
            max_bytes: 10,
            ..Default::default()
        };
        let tight = JetStreamLimits {
            max_memory: 5,
            ..Default::default()
        };
        assert_eq!(
            check_account_room(&tight, &memory, &[])
                .unwrap_err()
                .err_code,
            10028
        );
    }

    fn parse(json: &str) -> StreamConfig {
        serde_json::from_str(json).expect("config")
    }

    /// nats-server turns on what markers need (message TTLs, roll-ups) unless the
    /// request is pedantic.
    #[test]
    fn subject_delete_markers_bring_what_they_need() {
        let cfg = parse(r#"{"name":"M","subject_delete_marker_ttl":2000000000,"deny_purge":true}"#)
            .normalized(&ServerLimits::default())
            .unwrap();
        assert!(cfg.allow_msg_ttl && cfg.allow_rollup_hdrs && !cfg.deny_purge);
        let short = parse(r#"{"name":"M","subject_delete_marker_ttl":1000}"#);
        let e = short.normalized(&ServerLimits::default()).unwrap_err();
        assert_eq!(
            e.description,
            "subject delete marker TTL must be at least 1 second"
        );
    }

    #[test]
    fn a_minimal_request_gets_nats_servers_defaults() {
        let cfg = parse(
            r#"{"name":"ORDERS","subjects":["ORDERS.*"],"storage":"file","allow_direct":true,"allow_rollup_hdrs":true}"#,
        )
        .normalized(&ServerLimits::default())
        .unwrap()
        .with_dynamic_metadata();
        let want: serde_json::Value = serde_json::from_str(
            r#"{"name":"ORDERS","subjects":["ORDERS.*"],"retention":"limits","max_consumers":-1,
            "max_msgs":-1,"max_bytes":-1,"max_age":0,"max_msgs_per_subject":-1,"max_msg_size":-1,
            "discard":"old","storage":"file","num_replicas":1,"duplicate_window":120000000000,
            "compression":"none","allow_direct":true,"mirror_direct":false,"sealed":false,
            "deny_delete":false,"deny_purge":false,"allow_rollup_hdrs":true,"consumer_limits":{},
            "allow_msg_ttl":false,"metadata":{"_nats.level":"4","_nats.req.level":"0","_nats.ver":"2.14.0"}}"#,
        )
        .unwrap();
        assert_eq!(serde_json::to_value(&cfg).unwrap(), want);
        // The field order is nats-server's.
        let text = serde_json::to_string(&cfg).unwrap();
        assert!(text.starts_with(r#"{"name":"ORDERS","subjects":["ORDERS.*"],"retention":"limits","max_consumers":-1"#), "{text}");
    }

    #[test]
    fn no_subjects_means_the_name_and_bad_ones_are_refused() {
        let limits = ServerLimits::default();
        assert_eq!(
            parse(r#"{"name":"S"}"#)
                .normalized(&limits)
                .unwrap()
                .subjects,
            ["S"]
        );
        for (json, text) in [
            (
                r#"{"name":"a.b"}"#,
                "stream name is required and can not contain '.', '*', '>', '\\', '/'",
            ),
            (r#"{"name":"S","subjects":["a..b"]}"#, "invalid subject"),
            (
                r#"{"name":"S","subjects":["a","a"]}"#,
                "subject \"a\" overlaps with \"a\"",
            ),
            (
                r#"{"name":"S","subjects":["a.*","a.b"]}"#,
                "subject \"a.*\" overlaps with \"a.b\"",
            ),
            (
                r#"{"name":"S","subjects":["$JS.API.>"]}"#,
                "subjects that overlap with jetstream api require no-ack to be true",
            ),
            (
                r#"{"name":"S","max_age":1000}"#,
                "max age needs to be >= 100ms",
            ),
            (
                r#"{"name":"S","max_age":1000000000,"duplicate_window":2000000000}"#,
                "duplicates window can not be larger then max age",
            ),
            (
                r#"{"name":"S","deny_purge":true,"allow_rollup_hdrs":true}"#,
                "roll-ups require the purge permission",
            ),
        ] {
            let e = parse(json).normalized(&limits).unwrap_err();
            assert_eq!(
                (e.err_code, e.description.as_str()),
                (10052, text),
                "{json}"
            );
        }
        let e = parse(r#"{"name":"S","num_replicas":3}"#)
            .normalized(&limits)
            .unwrap_err();
        assert_eq!(e.err_code, 10074);
        let e = parse(r#"{"name":"S","compression":"s2"}"#)
            .normalized(&limits)
            .unwrap_err();
        assert_eq!(e.err_code, 10049);
        assert!(e.description.contains("s2 compression"), "{e}");
    }

    #[test]
    fn the_duplicate_window_follows_max_age_and_the_server_limit() {
        let mut limits = ServerLimits::default();
        let cfg = parse(r#"{"name":"S","max_age":1000000000}"#)
            .normalized(&limits)
            .unwrap();
        assert_eq!(cfg.duplicate_window, 1_000_000_000);
        limits.max_duplicate_window = 30_000_000_000;
        let cfg = parse(r#"{"name":"S"}"#).normalized(&limits).unwrap();
        assert_eq!(cfg.duplicate_window, 30_000_000_000);
        let e = parse(r#"{"name":"S","duplicate_window":60000000000}"#)
            .normalized(&limits)
            .unwrap_err();
        assert_eq!(
            e.description,
            "duplicates window can not be larger then server limit of 30s"
        );
    }

    #[test]
    fn updates_may_not_change_storage_or_undo_protections() {
        let limits = ServerLimits::default();
        let old = parse(r#"{"name":"S","deny_delete":true}"#)
            .normalized(&limits)
            .unwrap();
        let new = parse(r#"{"name":"S","storage":"memory","deny_delete":true}"#)
            .normalized(&limits)
            .unwrap();
        assert_eq!(
            old.check_update(&new).unwrap_err().description,
            "stream configuration update can not change storage type"
        );
        let new = parse(r#"{"name":"S"}"#).normalized(&limits).unwrap();
        assert!(old.check_update(&new).is_err());
        let new = parse(r#"{"name":"S","deny_delete":true,"max_msgs":5}"#)
            .normalized(&limits)
            .unwrap();
        assert!(old.check_update(&new).is_ok());
    }
}
