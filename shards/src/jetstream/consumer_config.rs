//! A consumer's configuration as nats-server 2.14 has it: the JSON fields in
//! its order, the defaults the server fills in, the checks a create must pass
//! and what an update may change, with its error codes and texts. Plain data,
//! no I/O: the consumer core and the API shell both build on it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::config::{
    is_valid_name, Retention, StreamConfig, API_LEVEL, MAX_DESCRIPTION_LEN, MAX_METADATA_LEN,
    MAX_NAME_LEN,
};
use super::errors::{self, ApiError};
use crate::subject;

/// How long a delivery waits for its ack before it is redelivered, by default.
pub const DEFAULT_ACK_WAIT_NS: i64 = 30_000_000_000;
/// Pull requests a consumer queues, by default.
pub const DEFAULT_MAX_WAITING: i64 = 512;
/// Unacknowledged deliveries a consumer allows, by default.
pub const DEFAULT_MAX_ACK_PENDING: i64 = 1000;
/// How long a pinned client keeps its pin without pulling, by default.
pub const DEFAULT_PINNED_TTL_NS: i64 = 120_000_000_000;
/// The heartbeat an `ack_policy: flow_control` consumer must use.
const FLOW_CONTROL_ACK_HEARTBEAT_NS: i64 = 1_000_000_000;
const MIN_HEARTBEAT_NS: i64 = 100_000_000;
const MIN_REQUEST_EXPIRES_NS: i64 = 1_000_000;
const MAX_GROUP_NAME_LEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliverPolicy {
    #[default]
    All,
    Last,
    New,
    #[serde(rename = "by_start_sequence")]
    ByStartSequence,
    #[serde(rename = "by_start_time")]
    ByStartTime,
    #[serde(rename = "last_per_subject")]
    LastPerSubject,
}

impl DeliverPolicy {
    /// The words nats-server uses for the policy in its error texts.
    fn words(self) -> &'static str {
        match self {
            DeliverPolicy::All => "all",
            DeliverPolicy::Last => "last",
            DeliverPolicy::New => "new",
            DeliverPolicy::ByStartSequence => "by start sequence",
            DeliverPolicy::ByStartTime => "by start time",
            DeliverPolicy::LastPerSubject => "last per subject",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckPolicy {
    #[default]
    None,
    All,
    Explicit,
    /// 2.14: acknowledged by the answers to flow control (sourcing consumers).
    FlowControl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayPolicy {
    #[default]
    Instant,
    Original,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PriorityPolicy {
    #[default]
    None,
    Overflow,
    PinnedClient,
    Prioritized,
}

impl PriorityPolicy {
    fn is_none(&self) -> bool {
        *self == PriorityPolicy::None
    }
}

/// `action` of a create request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    #[default]
    #[serde(rename = "")]
    CreateOrUpdate,
    Create,
    Update,
}

/// The fields in nats-server's order; durations in nanoseconds, times as the
/// RFC 3339 text the client sent (compared parsed, see [`same_instant`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerConfig {
    #[serde(
        rename = "durable_name",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub durable: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default)]
    pub deliver_policy: DeliverPolicy,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub opt_start_seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt_start_time: Option<String>,
    #[serde(default)]
    pub ack_policy: AckPolicy,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ack_wait: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_deliver: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backoff: Vec<i64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub filter_subject: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filter_subjects: Vec<String>,
    #[serde(default)]
    pub replay_policy: ReplayPolicy,
    #[serde(
        rename = "rate_limit_bps",
        default,
        skip_serializing_if = "is_zero_u64"
    )]
    pub rate_limit: u64,
    #[serde(
        rename = "sample_freq",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub sample_frequency: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_waiting: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_ack_pending: i64,
    #[serde(default, skip_serializing_if = "is_false")]
    pub flow_control: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub headers_only: bool,
    #[serde(rename = "max_batch", default, skip_serializing_if = "is_zero")]
    pub max_request_batch: i64,
    #[serde(rename = "max_expires", default, skip_serializing_if = "is_zero")]
    pub max_request_expires: i64,
    #[serde(rename = "max_bytes", default, skip_serializing_if = "is_zero")]
    pub max_request_bytes: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub deliver_subject: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub deliver_group: String,
    #[serde(rename = "idle_heartbeat", default, skip_serializing_if = "is_zero")]
    pub heartbeat: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inactive_threshold: i64,
    #[serde(default)]
    pub num_replicas: i64,
    #[serde(rename = "mem_storage", default, skip_serializing_if = "is_false")]
    pub memory_storage: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub direct: bool,
    /// 2.14: the consumer feeds a mirror or a source of another stream.
    #[serde(default, skip_serializing_if = "is_false")]
    pub sourcing: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_until: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub priority_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "PriorityPolicy::is_none")]
    pub priority_policy: PriorityPolicy,
    #[serde(rename = "priority_timeout", default, skip_serializing_if = "is_zero")]
    pub pinned_ttl: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}
fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}
fn is_false(v: &bool) -> bool {
    !*v
}

/// The server's and the account's ceilings that shape a consumer's defaults
/// (`jetstream { limits { max_ack_pending, max_request_batch } }` and the
/// account's `max_ack_pending`; 0 or below: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerServerLimits {
    pub server_max_ack_pending: i64,
    pub account_max_ack_pending: i64,
    pub max_request_batch: i64,
}

impl ConsumerConfig {
    /// `pause_until` as nanoseconds since the epoch; `None` when unset or Go's
    /// zero time (nats-server's "not paused").
    pub fn pause_until_ns(&self) -> Option<i64> {
        let t = self.pause_until.as_deref().and_then(parse_time)?;
        if t == time::macros::datetime!(0001-01-01 00:00 UTC) {
            return None;
        }
        Some(t.unix_timestamp_nanos().clamp(0, i64::MAX as i128) as i64)
    }

    /// `pause_until` is Go's zero time (or the epoch), which means no pause.
    pub fn is_zero_pause(&self) -> bool {
        self.pause_until
            .as_deref()
            .and_then(parse_time)
            .is_some_and(|t| t == time::macros::datetime!(0001-01-01 00:00 UTC))
    }
}

/// Parses an RFC 3339 time as Go's `time.Time` reads it.
fn parse_time(text: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

/// Two optional times that are the same instant, whatever offset each was
/// written with (Go compares `time.Time` values with `Equal`).
pub fn same_instant(a: &Option<String>, b: &Option<String>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a == b || matches!((parse_time(a), parse_time(b)), (Some(x), Some(y)) if x == y)
        }
        _ => false,
    }
}

fn invalid(text: impl std::fmt::Display) -> ApiError {
    errors::STREAM_INVALID_CONFIG.err(text)
}

fn pedantic(text: &str) -> ApiError {
    errors::PEDANTIC.err(text)
}

/// nats-server's priority group names: 1 to 16 of `[a-zA-Z0-9/_=-]`.
pub fn is_valid_group_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_GROUP_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_=-".contains(&b))
}

impl ConsumerConfig {
    /// The consumer's name: the durable name, else the name (empty for an
    /// ephemeral consumer that the server names).
    pub fn consumer_name(&self) -> &str {
        if self.durable.is_empty() {
            &self.name
        } else {
            &self.durable
        }
    }

    pub fn is_durable(&self) -> bool {
        !self.durable.is_empty()
    }

    pub fn is_pull(&self) -> bool {
        self.deliver_subject.is_empty()
    }

    /// The filters in one list, `filter_subject` or `filter_subjects`; empty
    /// means every subject of the stream.
    /// `sample_freq` as a percentage ("50%" or "50"); 0 when unset. Validated
    /// when the consumer is made.
    pub fn sample_percent(&self) -> u32 {
        let digits = self
            .sample_frequency
            .strip_suffix('%')
            .unwrap_or(&self.sample_frequency);
        digits.parse().unwrap_or(0)
    }

    pub fn filters(&self) -> Vec<&str> {
        if self.filter_subject.is_empty() {
            self.filter_subjects.iter().map(String::as_str).collect()
        } else {
            vec![self.filter_subject.as_str()]
        }
    }

    /// A requested configuration with nats-server's defaults filled in and its
    /// checks passed, as a create on `stream` does. With `pedantic` a default
    /// that would change the request is refused instead.
    pub fn normalized(
        &self,
        stream: &StreamConfig,
        limits: &ConsumerServerLimits,
        pedantic_mode: bool,
    ) -> Result<ConsumerConfig, ApiError> {
        let mut cfg = self.clone();
        cfg.fill_defaults(stream, limits, pedantic_mode)?;
        cfg.check(stream, limits)?;
        // A durable consumer is known by its durable name under both fields.
        if cfg.name.is_empty() {
            cfg.name = cfg.durable.clone();
        }
        cfg.set_version_metadata();
        Ok(cfg)
    }

    fn fill_defaults(
        &mut self,
        stream: &StreamConfig,
        limits: &ConsumerServerLimits,
        pedantic_mode: bool,
    ) -> Result<(), ApiError> {
        // Negative values mean "none" to nats-server; a pedantic request must say so exactly.
        let clamp = |v: &mut i64, floor: i64, what: &str| -> Result<(), ApiError> {
            if *v < floor {
                if pedantic_mode {
                    return Err(pedantic(what));
                }
                *v = if floor < 0 { -1 } else { 0 };
            }
            Ok(())
        };
        if self.max_deliver == 0 || self.max_deliver < -1 {
            if pedantic_mode && self.max_deliver < -1 {
                return Err(pedantic("max_deliver must be set to -1"));
            }
            self.max_deliver = -1;
        }
        clamp(&mut self.max_waiting, 0, "max_waiting must not be negative")?;
        clamp(
            &mut self.max_ack_pending,
            -1,
            "max_ack_pending must be set to -1",
        )?;
        clamp(
            &mut self.max_request_batch,
            0,
            "max_batch must not be negative",
        )?;
        clamp(
            &mut self.max_request_expires,
            0,
            "max_expires must not be negative",
        )?;
        clamp(
            &mut self.max_request_bytes,
            0,
            "max_bytes must not be negative",
        )?;
        clamp(
            &mut self.heartbeat,
            0,
            "idle_heartbeat must not be negative",
        )?;
        clamp(
            &mut self.inactive_threshold,
            0,
            "inactive_threshold must not be negative",
        )?;
        clamp(
            &mut self.pinned_ttl,
            0,
            "priority_timeout must not be negative",
        )?;

        if self.is_pull() && self.max_waiting == 0 {
            self.max_waiting = DEFAULT_MAX_WAITING;
        }
        if self.ack_wait == 0 && matches!(self.ack_policy, AckPolicy::Explicit | AckPolicy::All) {
            self.ack_wait = DEFAULT_ACK_WAIT_NS;
        }
        if let Some(&first) = self.backoff.first() {
            if pedantic_mode && self.ack_wait != first {
                return Err(pedantic("first backoff value has to equal batch AckWait"));
            }
            self.ack_wait = first;
        }
        let stream_limits = &stream.consumer_limits;
        if self.max_ack_pending == 0 {
            if pedantic_mode && stream_limits.max_ack_pending > 0 {
                return Err(pedantic(
                    "max_ack_pending must be set if it's configured in stream limits",
                ));
            }
            self.max_ack_pending = stream_limits.max_ack_pending;
        }
        if self.inactive_threshold == 0 {
            if pedantic_mode && stream_limits.inactive_threshold > 0 {
                return Err(pedantic(
                    "inactive_threshold must be set if it's configured in stream limits",
                ));
            }
            self.inactive_threshold = stream_limits.inactive_threshold;
        }
        if self.max_ack_pending == 0 && self.ack_policy != AckPolicy::None {
            let mut pending = DEFAULT_MAX_ACK_PENDING;
            for ceiling in [
                limits.server_max_ack_pending,
                limits.account_max_ack_pending,
            ] {
                if ceiling > 0 && ceiling < pending {
                    pending = ceiling;
                }
            }
            self.max_ack_pending = pending;
        }
        if self.is_pull() && self.max_request_batch == 0 && limits.max_request_batch > 0 {
            if pedantic_mode {
                return Err(pedantic(
                    "max_request_batch must be set if it's JetStream limits are set",
                ));
            }
            self.max_request_batch = limits.max_request_batch;
        }
        if self.priority_policy == PriorityPolicy::PinnedClient && self.pinned_ttl == 0 {
            self.pinned_ttl = DEFAULT_PINNED_TTL_NS;
        }
        if self.ack_policy == AckPolicy::FlowControl && !pedantic_mode {
            self.flow_control = true;
            self.heartbeat = FLOW_CONTROL_ACK_HEARTBEAT_NS;
        }
        Ok(())
    }

    fn check(&self, stream: &StreamConfig, limits: &ConsumerServerLimits) -> Result<(), ApiError> {
        if !self.name.is_empty() && !is_valid_name(&self.name) {
            return Err(invalid(
                "consumer name can not contain '.', '*', '>', '\\', '/'",
            ));
        }
        if !self.durable.is_empty() && !is_valid_name(&self.durable) {
            return Err(invalid(
                "consumer durable name can not contain '.', '*', '>', '\\', '/'",
            ));
        }
        if self.consumer_name().len() > MAX_NAME_LEN {
            return Err(errors::CONSUMER_NAME_TOO_LONG.with(&[("max", &MAX_NAME_LEN)]));
        }
        if self.num_replicas > 0 && self.num_replicas > stream.num_replicas {
            return Err(errors::CONSUMER_REPLICAS_EXCEEDS_STREAM.error());
        }
        if self.num_replicas < 0 {
            return Err(errors::REPLICAS_COUNT_CANNOT_BE_NEGATIVE.error());
        }
        if matches!(stream.retention, Retention::Interest | Retention::WorkQueue)
            && self.num_replicas != 0
            && self.num_replicas != stream.num_replicas
        {
            return Err(errors::CONSUMER_REPLICAS_SHOULD_MATCH_STREAM.error());
        }
        if self.backoff.iter().any(|&b| b < 0) {
            return Err(errors::CONSUMER_BACK_OFF_NEGATIVE.error());
        }
        if self.ack_wait < 0 {
            return Err(errors::CONSUMER_ACK_WAIT_NEGATIVE.error());
        }
        if self.ack_policy == AckPolicy::FlowControl {
            if self.is_pull() {
                return Err(errors::CONSUMER_ACK_FC_REQUIRES_PUSH.error());
            }
            if !self.flow_control {
                return Err(errors::CONSUMER_ACK_FC_REQUIRES_FC.error());
            }
            if self.heartbeat != FLOW_CONTROL_ACK_HEARTBEAT_NS {
                return Err(invalid("flow control ack policy heartbeat needs to be 1s"));
            }
            if self.max_ack_pending <= 0 {
                return Err(errors::CONSUMER_ACK_FC_REQUIRES_MAX_ACK_PENDING.error());
            }
            if self.ack_wait != 0 || !self.backoff.is_empty() {
                return Err(errors::CONSUMER_ACK_FC_REQUIRES_NO_ACK_WAIT.error());
            }
            if self.max_deliver > 0 {
                return Err(errors::CONSUMER_ACK_FC_REQUIRES_NO_MAX_DELIVER.error());
            }
        }
        self.check_backoff_fits()?;
        if self.description.len() > MAX_DESCRIPTION_LEN {
            return Err(
                errors::CONSUMER_DESCRIPTION_TOO_LONG.with(&[("max", &MAX_DESCRIPTION_LEN)])
            );
        }
        if self.is_pull() {
            self.check_pull(stream, limits)?;
        } else {
            self.check_push(stream)?;
        }
        for ceiling in [
            limits.server_max_ack_pending,
            limits.account_max_ack_pending,
            stream.consumer_limits.max_ack_pending,
        ] {
            if ceiling > 0 && self.max_ack_pending > ceiling {
                return Err(errors::CONSUMER_MAX_PENDING_ACK_EXCESS.with(&[("limit", &ceiling)]));
            }
        }
        let max_inactive = stream.consumer_limits.inactive_threshold;
        if max_inactive > 0 && self.inactive_threshold > max_inactive {
            return Err(errors::CONSUMER_INACTIVE_THRESHOLD_EXCESS
                .with(&[("limit", &go_duration(max_inactive))]));
        }
        if self.direct {
            if self.is_pull() {
                return Err(errors::CONSUMER_DIRECT_REQUIRES_PUSH.error());
            }
            if self.is_durable() {
                return Err(errors::CONSUMER_DIRECT_REQUIRES_EPHEMERAL.error());
            }
        }
        self.check_filters()?;
        self.check_start()?;
        if !self.sample_frequency.is_empty() {
            let digits = self
                .sample_frequency
                .strip_suffix('%')
                .unwrap_or(&self.sample_frequency);
            if let Err(e) = digits.parse::<u32>() {
                return Err(errors::CONSUMER_INVALID_SAMPLING.err(go_atoi_error(digits, &e)));
            }
        }
        if self.flow_control && self.heartbeat == 0 {
            return Err(errors::CONSUMER_WITH_FLOW_CONTROL_NEEDS_HEARTBEATS.error());
        }
        if !self.durable.is_empty() && !self.name.is_empty() && self.name != self.durable {
            return Err(errors::CONSUMER_CREATE_DURABLE_AND_NAME_MISMATCH.error());
        }
        let metadata_len: usize = self.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        if metadata_len > MAX_METADATA_LEN {
            return Err(errors::CONSUMER_METADATA_LENGTH
                .with(&[("limit", &format!("{}KB", MAX_METADATA_LEN / 1024))]));
        }
        self.check_priority()?;
        if stream
            .placement
            .as_ref()
            .and_then(|p| p.get("preferred"))
            .and_then(|p| p.as_str())
            .is_some_and(|p| !p.is_empty())
        {
            return Err(invalid("preferred server not permitted in placement"));
        }
        Ok(())
    }

    fn check_backoff_fits(&self) -> Result<(), ApiError> {
        let steps = self.backoff.len() as i64;
        if steps > 0 && self.max_deliver != -1 && steps > self.max_deliver {
            return Err(errors::CONSUMER_MAX_DELIVER_BACKOFF.error());
        }
        Ok(())
    }

    fn check_push(&self, stream: &StreamConfig) -> Result<(), ApiError> {
        if subject::has_wildcard(self.deliver_subject.as_bytes()) {
            return Err(errors::CONSUMER_DELIVER_TO_WILDCARDS.error());
        }
        if !subject::is_valid_subject(self.deliver_subject.as_bytes()) {
            return Err(errors::CONSUMER_INVALID_DELIVER_SUBJECT.error());
        }
        // Deliveries that land on the stream's own subjects would be stored again.
        if stream
            .subjects
            .iter()
            .any(|s| subject::subject_matches(s, &self.deliver_subject))
        {
            return Err(errors::CONSUMER_DELIVER_CYCLE.error());
        }
        if self.max_waiting != 0 {
            return Err(errors::CONSUMER_PUSH_MAX_WAITING.error());
        }
        if self.max_ack_pending > 0 && self.ack_policy == AckPolicy::None {
            return Err(errors::CONSUMER_MAX_PENDING_ACK_POLICY_REQUIRED.error());
        }
        if self.heartbeat > 0 && self.heartbeat < MIN_HEARTBEAT_NS {
            return Err(errors::CONSUMER_SMALL_HEARTBEAT.error());
        }
        Ok(())
    }

    fn check_pull(
        &self,
        stream: &StreamConfig,
        limits: &ConsumerServerLimits,
    ) -> Result<(), ApiError> {
        if self.ack_policy == AckPolicy::None && stream.retention == Retention::WorkQueue {
            return Err(errors::CONSUMER_PULL_REQUIRES_ACK.error());
        }
        if self.rate_limit > 0 {
            return Err(errors::CONSUMER_PULL_WITH_RATE_LIMIT.error());
        }
        if self.max_waiting < 0 {
            return Err(errors::CONSUMER_MAX_WAITING_NEGATIVE.error());
        }
        if self.heartbeat > 0 {
            return Err(errors::CONSUMER_HB_REQUIRES_PUSH.error());
        }
        if self.flow_control {
            return Err(errors::CONSUMER_FC_REQUIRES_PUSH.error());
        }
        if self.max_request_batch < 0 {
            return Err(errors::CONSUMER_MAX_REQUEST_BATCH_NEGATIVE.error());
        }
        if self.max_request_expires != 0 && self.max_request_expires < MIN_REQUEST_EXPIRES_NS {
            return Err(errors::CONSUMER_MAX_REQUEST_EXPIRES_TOO_SMALL.error());
        }
        if limits.max_request_batch > 0 && self.max_request_batch > limits.max_request_batch {
            return Err(errors::CONSUMER_MAX_REQUEST_BATCH_EXCEEDED
                .with(&[("limit", &limits.max_request_batch)]));
        }
        Ok(())
    }

    fn check_filters(&self) -> Result<(), ApiError> {
        if !self.filter_subject.is_empty() && !self.filter_subjects.is_empty() {
            return Err(errors::CONSUMER_DUPLICATE_FILTER_SUBJECTS.error());
        }
        if !self.filter_subject.is_empty()
            && !subject::is_valid_subject(self.filter_subject.as_bytes())
        {
            return Err(invalid("invalid subject"));
        }
        if self.filter_subjects.iter().any(String::is_empty) {
            return Err(errors::CONSUMER_EMPTY_FILTER.error());
        }
        let filters = self.filters();
        for (i, filter) in filters.iter().enumerate() {
            if !subject::is_valid_subject(filter.as_bytes()) {
                return Err(invalid("invalid subject"));
            }
            let overlaps = filters
                .iter()
                .enumerate()
                .any(|(j, other)| i != j && subject::is_subset_match(filter, other));
            if overlaps {
                return Err(errors::CONSUMER_OVERLAPPING_SUBJECT_FILTERS.error());
            }
        }
        Ok(())
    }

    fn check_start(&self) -> Result<(), ApiError> {
        let policy = self.deliver_policy.words();
        let bad_start = |start: &str| {
            errors::CONSUMER_INVALID_POLICY.err(format!(
                "consumer delivery policy is deliver {policy}, but optional start {start} is also set"
            ))
        };
        let not_set = |what: &str| {
            errors::CONSUMER_INVALID_POLICY.err(format!(
                "consumer delivery policy is deliver {policy}, but optional {what} is not set"
            ))
        };
        let has_time = self.opt_start_time.is_some();
        match self.deliver_policy {
            DeliverPolicy::All
            | DeliverPolicy::Last
            | DeliverPolicy::New
            | DeliverPolicy::LastPerSubject => {
                if self.opt_start_seq > 0 {
                    return Err(bad_start("sequence"));
                }
                if has_time {
                    return Err(bad_start("time"));
                }
                if self.deliver_policy == DeliverPolicy::LastPerSubject && self.filters().is_empty()
                {
                    return Err(not_set("filter subject"));
                }
            }
            DeliverPolicy::ByStartSequence => {
                if self.opt_start_seq == 0 {
                    return Err(not_set("start sequence"));
                }
                if has_time {
                    return Err(bad_start("time"));
                }
            }
            DeliverPolicy::ByStartTime => {
                if !has_time {
                    return Err(not_set("start time"));
                }
                if self.opt_start_seq != 0 {
                    return Err(bad_start("start sequence"));
                }
            }
        }
        Ok(())
    }

    fn check_priority(&self) -> Result<(), ApiError> {
        if self.priority_policy != PriorityPolicy::None {
            if !self.is_pull() {
                return Err(errors::CONSUMER_PUSH_WITH_PRIORITY_GROUP.error());
            }
            if self.priority_groups.is_empty() {
                return Err(errors::CONSUMER_PRIORITY_POLICY_WITHOUT_GROUP.error());
            }
            for group in &self.priority_groups {
                if group.is_empty() {
                    return Err(errors::CONSUMER_EMPTY_GROUP_NAME.error());
                }
                if !is_valid_group_name(group) {
                    return Err(errors::CONSUMER_INVALID_GROUP_NAME.error());
                }
            }
        } else {
            if !self.priority_groups.is_empty() {
                return Err(errors::CONSUMER_PRIORITY_GROUP_WITH_POLICY_NONE.error());
            }
            if self.pinned_ttl > 0 {
                return Err(errors::CONSUMER_PINNED_TTL_WITHOUT_PRIORITY_POLICY_NONE.error());
            }
        }
        Ok(())
    }

    /// The `_nats.req.level` key nats-server keeps in a consumer's configuration:
    /// the API level the features it uses require.
    pub fn set_version_metadata(&mut self) {
        let paused = self
            .pause_until
            .as_deref()
            .and_then(parse_time)
            .is_some_and(|t| {
                t != time::OffsetDateTime::UNIX_EPOCH
                    && t != time::macros::datetime!(0001-01-01 00:00 UTC)
            });
        let mut required = 0;
        if paused
            || self.priority_policy != PriorityPolicy::None
            || self.pinned_ttl != 0
            || !self.priority_groups.is_empty()
        {
            required = 1;
        }
        if self.ack_policy == AckPolicy::FlowControl {
            required = 4;
        }
        self.metadata
            .insert("_nats.req.level".into(), required.to_string());
        self.metadata.remove("_nats.level");
        self.metadata.remove("_nats.ver");
    }

    /// The configuration as info and create answers show it: with the server's
    /// API level and version added.
    pub fn with_dynamic_metadata(&self) -> ConsumerConfig {
        let mut cfg = self.clone();
        cfg.metadata
            .insert("_nats.level".into(), API_LEVEL.to_string());
        cfg.metadata
            .insert("_nats.ver".into(), crate::options::NATS_VERSION.to_string());
        cfg
    }

    /// nats-server's rules for what an update may change. `deliver_subject_in_use`
    /// says whether someone is subscribed to the new deliver subject already.
    pub fn check_update(
        &self,
        new: &ConsumerConfig,
        deliver_subject_in_use: bool,
    ) -> Result<(), ApiError> {
        if self == new {
            return Ok(());
        }
        let refuse = |text: &str| Err(errors::CONSUMER_CREATE.err(text));
        if self.deliver_policy != new.deliver_policy {
            return refuse("deliver policy can not be updated");
        }
        if self.memory_storage != new.memory_storage {
            return refuse("storage type can not be updated");
        }
        if self.direct != new.direct {
            return refuse("direct can not be updated");
        }
        if self.sourcing != new.sourcing {
            return refuse("sourcing can not be updated");
        }
        if self.opt_start_seq != new.opt_start_seq {
            return refuse("start sequence can not be updated");
        }
        if !same_instant(&self.opt_start_time, &new.opt_start_time) {
            return refuse("start time can not be updated");
        }
        if self.ack_policy != new.ack_policy {
            return refuse("ack policy can not be updated");
        }
        if self.replay_policy != new.replay_policy {
            return refuse("replay policy can not be updated");
        }
        if self.heartbeat != new.heartbeat {
            return refuse("heart beats can not be updated");
        }
        if self.flow_control != new.flow_control {
            return refuse("flow control can not be updated");
        }
        if self.deliver_subject != new.deliver_subject {
            if self.deliver_subject.is_empty() {
                return refuse("can not update pull consumer to push based");
            }
            if new.deliver_subject.is_empty() {
                return refuse("can not update push consumer to pull based");
            }
            if deliver_subject_in_use {
                return Err(errors::CONSUMER_NAME_EXIST.error());
            }
        }
        if self.max_waiting != new.max_waiting {
            return refuse("max waiting can not be updated");
        }
        new.check_backoff_fits()
    }
}

/// The body of `$JS.API.CONSUMER.CREATE.*` and `CONSUMER.DURABLE.CREATE.*`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct CreateRequest {
    #[serde(rename = "stream_name", default)]
    pub stream: String,
    #[serde(default)]
    pub config: ConsumerConfig,
    #[serde(default)]
    pub action: Action,
    #[serde(default)]
    pub pedantic: bool,
}

/// Which form of the create subject a request came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CreateForm {
    /// `CONSUMER.CREATE.<stream>`: ephemeral, the name (if any) from the body.
    LegacyEphemeral,
    /// `CONSUMER.DURABLE.CREATE.<stream>.<durable>`.
    LegacyDurable,
    /// `CONSUMER.CREATE.<stream>.<consumer>[.<filter>]`.
    Named,
}

impl CreateRequest {
    /// Checks a create request against the subject it came on (the tokens after
    /// `$JS.API.`) as nats-server does, and gives the consumer the name the
    /// subject carries.
    pub fn resolve(mut self, tokens: &[&str]) -> Result<CreateRequest, ApiError> {
        let (form, stream, consumer, filter) = match tokens {
            ["CONSUMER", "CREATE", stream] => (
                CreateForm::LegacyEphemeral,
                *stream,
                self.config.name.clone(),
                None,
            ),
            ["CONSUMER", "DURABLE", "CREATE", stream, durable] => (
                CreateForm::LegacyDurable,
                *stream,
                durable.to_string(),
                None,
            ),
            ["CONSUMER", "DURABLE", ..] => {
                return Err(errors::CONSUMER_DURABLE_NAME_NOT_IN_SUBJECT.error())
            }
            ["CONSUMER", "CREATE", stream, consumer, filter @ ..] => (
                CreateForm::Named,
                *stream,
                consumer.to_string(),
                (!filter.is_empty()).then(|| filter.join(".")),
            ),
            _ => return Err(errors::BAD_REQUEST.error()),
        };
        if stream != self.stream {
            return Err(errors::STREAM_MISMATCH.error());
        }
        if consumer.contains(['\\', '/']) {
            return Err(errors::CONSUMER_NAME_CONTAINS_PATH_SEPARATORS.error());
        }
        match form {
            CreateForm::LegacyDurable => {
                if self.config.durable.is_empty() {
                    return Err(errors::CONSUMER_DURABLE_NAME_NOT_SET.error());
                }
                if consumer != self.config.durable {
                    return Err(errors::CONSUMER_DURABLE_NAME_NOT_MATCH_SUBJECT.error());
                }
                self.config.name = consumer;
            }
            CreateForm::Named => {
                if !self.config.durable.is_empty() && consumer != self.config.durable {
                    return Err(errors::CONSUMER_DURABLE_NAME_NOT_MATCH_SUBJECT.error());
                }
                self.config.name = consumer;
            }
            CreateForm::LegacyEphemeral => {
                if !self.config.durable.is_empty() {
                    return Err(errors::CONSUMER_EPHEMERAL_WITH_DURABLE_NAME.error());
                }
            }
        }
        if let Some(filter) = filter {
            if !self.config.filter_subjects.is_empty() {
                return Err(errors::CONSUMER_MULTIPLE_FILTERS_NOT_ALLOWED.error());
            }
            if self.config.filter_subject != filter {
                return Err(errors::CONSUMER_CREATE_FILTER_SUBJECT_MISMATCH.error());
            }
        }
        // A single server has no replicas to give.
        if self.config.num_replicas > 1 {
            return Err(errors::STREAM_REPLICAS_NOT_SUPPORTED.error());
        }
        Ok(self)
    }
}

/// Go's `time.Duration.String()` for whole nanoseconds, as nats-server puts
/// durations in error texts.
pub fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let sign = if ns < 0 { "-" } else { "" };
    let n = ns.unsigned_abs();
    if n < 1_000_000_000 {
        let (unit, div) = if n < 1_000 {
            ("ns", 1)
        } else if n < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{sign}{}{unit}", trim_fraction(n, div));
    }
    let hours = n / 3_600_000_000_000;
    let minutes = n / 60_000_000_000 % 60;
    let seconds = trim_fraction(n % 60_000_000_000, 1_000_000_000);
    let mut out = String::from(sign);
    if hours > 0 {
        out.push_str(&format!("{hours}h{minutes}m"));
    } else if minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    out.push_str(&seconds);
    out.push('s');
    out
}

fn trim_fraction(n: u64, div: u64) -> String {
    let whole = n / div;
    let frac = n % div;
    if frac == 0 {
        return whole.to_string();
    }
    let width = div.ilog10() as usize;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// Go's `strconv.Atoi` error text, which nats-server passes on.
fn go_atoi_error(text: &str, e: &std::num::ParseIntError) -> String {
    let reason = match e.kind() {
        std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
            "value out of range"
        }
        _ => "invalid syntax",
    };
    format!(
        "strconv.Atoi: parsing {}: {reason}",
        crate::proto::go_quote(text.as_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> StreamConfig {
        serde_json::from_str(r#"{"name":"ORDERS","subjects":["ORDERS.*"]}"#).expect("stream")
    }

    fn parse(json: &str) -> ConsumerConfig {
        serde_json::from_str(json).expect("consumer config")
    }

    fn normalized(json: &str) -> Result<ConsumerConfig, ApiError> {
        parse(json).normalized(&stream(), &ConsumerServerLimits::default(), false)
    }

    fn err_code(json: &str) -> u16 {
        normalized(json).expect_err("refused").err_code
    }

    /// The defaults as nats-server 2.14 filled them in the captured creates.
    #[test]
    fn defaults_are_the_captured_ones() {
        let pull = normalized(
            r#"{"durable_name":"NEW","filter_subject":"ORDERS.new","ack_policy":"explicit","deliver_policy":"all","sample_freq":"100%"}"#,
        )
        .expect("pull");
        assert_eq!(
            serde_json::to_string(&pull.with_dynamic_metadata()).expect("text"),
            r#"{"durable_name":"NEW","name":"NEW","deliver_policy":"all","ack_policy":"explicit","ack_wait":30000000000,"max_deliver":-1,"filter_subject":"ORDERS.new","replay_policy":"instant","sample_freq":"100%","max_waiting":512,"max_ack_pending":1000,"num_replicas":0,"metadata":{"_nats.level":"4","_nats.req.level":"0","_nats.ver":"2.14.0"}}"#
        );
        let push = normalized(
            r#"{"durable_name":"MONITOR","deliver_subject":"deliver.monitor","ack_policy":"explicit","deliver_policy":"all","idle_heartbeat":1000000000,"flow_control":true}"#,
        )
        .expect("push");
        assert_eq!(push.max_waiting, 0, "push consumers queue no pulls");
        assert_eq!(
            (push.ack_wait, push.max_ack_pending),
            (DEFAULT_ACK_WAIT_NS, 1000)
        );
        let ephemeral = normalized(
            r#"{"ack_policy":"none","deliver_policy":"last","inactive_threshold":60000000000}"#,
        )
        .expect("ephemeral");
        assert_eq!(
            (
                ephemeral.ack_wait,
                ephemeral.max_ack_pending,
                ephemeral.max_deliver
            ),
            (0, 0, -1),
            "no ack wait or pending limit without acks"
        );
    }

    #[test]
    fn backoff_sets_the_ack_wait_and_must_fit_max_deliver() {
        let cfg = normalized(
            r#"{"durable_name":"B","ack_policy":"explicit","backoff":[1000000000,5000000000],"max_deliver":3}"#,
        )
        .expect("backoff");
        assert_eq!(cfg.ack_wait, 1_000_000_000);
        assert_eq!(
            err_code(r#"{"ack_policy":"explicit","backoff":[1,2,3],"max_deliver":2}"#),
            errors::CONSUMER_MAX_DELIVER_BACKOFF.err_code
        );
        assert_eq!(
            err_code(r#"{"ack_policy":"explicit","backoff":[-1]}"#),
            errors::CONSUMER_BACK_OFF_NEGATIVE.err_code
        );
    }

    #[test]
    fn start_positions_must_match_the_policy() {
        let e = normalized(r#"{"deliver_policy":"all","opt_start_seq":5}"#).expect_err("seq");
        assert_eq!(
            (e.err_code, e.description.as_str()),
            (
                10094,
                "consumer delivery policy is deliver all, but optional start sequence is also set"
            )
        );
        let e = normalized(r#"{"deliver_policy":"by_start_sequence"}"#).expect_err("no seq");
        assert_eq!(
            e.description,
            "consumer delivery policy is deliver by start sequence, but optional start sequence is not set"
        );
        let e = normalized(r#"{"deliver_policy":"last_per_subject"}"#).expect_err("no filter");
        assert_eq!(
            e.description,
            "consumer delivery policy is deliver last per subject, but optional filter subject is not set"
        );
        normalized(r#"{"deliver_policy":"by_start_time","opt_start_time":"2026-01-01T00:00:00Z"}"#)
            .expect("by time");
    }

    #[test]
    fn pull_and_push_options_stay_on_their_side() {
        for (json, kind) in [
            (
                r#"{"idle_heartbeat":1000000000}"#,
                errors::CONSUMER_HB_REQUIRES_PUSH,
            ),
            (
                r#"{"flow_control":true}"#,
                errors::CONSUMER_FC_REQUIRES_PUSH,
            ),
            (
                r#"{"rate_limit_bps":100}"#,
                errors::CONSUMER_PULL_WITH_RATE_LIMIT,
            ),
            (
                r#"{"max_expires":10}"#,
                errors::CONSUMER_MAX_REQUEST_EXPIRES_TOO_SMALL,
            ),
            (
                r#"{"deliver_subject":"d.*"}"#,
                errors::CONSUMER_DELIVER_TO_WILDCARDS,
            ),
            (
                r#"{"deliver_subject":"ORDERS.x"}"#,
                errors::CONSUMER_DELIVER_CYCLE,
            ),
            (
                r#"{"deliver_subject":"d","max_waiting":3}"#,
                errors::CONSUMER_PUSH_MAX_WAITING,
            ),
            (
                r#"{"deliver_subject":"d","idle_heartbeat":1000}"#,
                errors::CONSUMER_SMALL_HEARTBEAT,
            ),
            (
                r#"{"deliver_subject":"d","flow_control":true}"#,
                errors::CONSUMER_WITH_FLOW_CONTROL_NEEDS_HEARTBEATS,
            ),
            (
                r#"{"deliver_subject":"d","max_ack_pending":5}"#,
                errors::CONSUMER_MAX_PENDING_ACK_POLICY_REQUIRED,
            ),
        ] {
            assert_eq!(err_code(json), kind.err_code, "{json}");
        }
    }

    #[test]
    fn filters_are_checked() {
        for (json, kind) in [
            (
                r#"{"filter_subject":"a","filter_subjects":["b"]}"#,
                errors::CONSUMER_DUPLICATE_FILTER_SUBJECTS,
            ),
            (
                r#"{"filter_subjects":["a",""]}"#,
                errors::CONSUMER_EMPTY_FILTER,
            ),
            (
                r#"{"filter_subjects":["ORDERS.*","ORDERS.new"]}"#,
                errors::CONSUMER_OVERLAPPING_SUBJECT_FILTERS,
            ),
            (
                r#"{"filter_subject":"a..b"}"#,
                errors::STREAM_INVALID_CONFIG,
            ),
        ] {
            assert_eq!(err_code(json), kind.err_code, "{json}");
        }
        let cfg = normalized(r#"{"filter_subjects":["ORDERS.new","ORDERS.paid"]}"#).expect("two");
        assert_eq!(cfg.filters(), ["ORDERS.new", "ORDERS.paid"]);
    }

    #[test]
    fn names_priority_groups_and_sampling() {
        assert_eq!(
            err_code(r#"{"durable_name":"A","name":"B"}"#),
            errors::CONSUMER_CREATE_DURABLE_AND_NAME_MISMATCH.err_code
        );
        assert_eq!(err_code(r#"{"durable_name":"a.b"}"#), 10052);
        assert_eq!(
            err_code(r#"{"priority_policy":"pinned_client"}"#),
            errors::CONSUMER_PRIORITY_POLICY_WITHOUT_GROUP.err_code
        );
        assert_eq!(
            err_code(
                r#"{"priority_policy":"overflow","priority_groups":["way-too-long-group-name"]}"#
            ),
            errors::CONSUMER_INVALID_GROUP_NAME.err_code
        );
        assert_eq!(
            err_code(r#"{"priority_groups":["A"]}"#),
            errors::CONSUMER_PRIORITY_GROUP_WITH_POLICY_NONE.err_code
        );
        let pinned = normalized(r#"{"priority_policy":"pinned_client","priority_groups":["A"]}"#)
            .expect("pinned");
        assert_eq!(pinned.pinned_ttl, DEFAULT_PINNED_TTL_NS);
        assert_eq!(pinned.metadata["_nats.req.level"], "1");
        let e = normalized(r#"{"sample_freq":"abc%"}"#).expect_err("sampling");
        assert_eq!(
            e.description,
            "failed to parse consumer sampling configuration: strconv.Atoi: parsing \"abc\": invalid syntax"
        );
    }

    #[test]
    fn limits_cap_max_ack_pending() {
        let limits = ConsumerServerLimits {
            server_max_ack_pending: 100,
            ..Default::default()
        };
        let cfg = parse(r#"{"ack_policy":"explicit"}"#)
            .normalized(&stream(), &limits, false)
            .expect("capped");
        assert_eq!(cfg.max_ack_pending, 100);
        let e = parse(r#"{"ack_policy":"explicit","max_ack_pending":500}"#)
            .normalized(&stream(), &limits, false)
            .expect_err("over");
        assert_eq!(
            (e.err_code, e.description.as_str()),
            (
                10121,
                "consumer max ack pending exceeds system limit of 100"
            )
        );
        let e = parse(r#"{"max_deliver":-5}"#)
            .normalized(&stream(), &limits, true)
            .expect_err("pedantic");
        assert_eq!(
            e.description,
            "pedantic mode: max_deliver must be set to -1"
        );
    }

    #[test]
    fn updates_may_change_only_some_fields() {
        let old = normalized(r#"{"durable_name":"D","ack_policy":"explicit"}"#).expect("old");
        let mut new = old.clone();
        new.max_ack_pending = 20;
        new.description = "more".into();
        old.check_update(&new, false).expect("allowed");
        let mut new = old.clone();
        new.ack_policy = AckPolicy::All;
        let e = old.check_update(&new, false).expect_err("ack policy");
        assert_eq!(
            (e.err_code, e.description.as_str()),
            (10012, "ack policy can not be updated")
        );
        let mut new = old.clone();
        new.deliver_subject = "push.here".into();
        assert_eq!(
            old.check_update(&new, false)
                .expect_err("to push")
                .description,
            "can not update pull consumer to push based"
        );
        let mut a = old.clone();
        a.opt_start_time = Some("2026-01-01T01:00:00+01:00".into());
        let mut b = old.clone();
        b.opt_start_time = Some("2026-01-01T00:00:00Z".into());
        a.check_update(&b, false).expect("the same instant");
    }

    fn create(subject: &str, body: &str) -> Result<CreateRequest, ApiError> {
        let tokens: Vec<&str> = subject.split('.').skip(2).collect();
        serde_json::from_str::<CreateRequest>(body)
            .expect("body")
            .resolve(&tokens)
    }

    /// The subject forms and the captured refusals.
    #[test]
    fn create_subjects_are_checked_against_the_body() {
        let named = create(
            "$JS.API.CONSUMER.CREATE.ORDERS.NEW.ORDERS.new",
            r#"{"stream_name":"ORDERS","config":{"durable_name":"NEW","filter_subject":"ORDERS.new"},"action":"create"}"#,
        )
        .expect("named with filter");
        assert_eq!(
            (named.config.name.as_str(), named.action),
            ("NEW", Action::Create)
        );
        let e = create(
            "$JS.API.CONSUMER.CREATE.ORDERS.AAA",
            r#"{"stream_name":"ORDERS","config":{"durable_name":"BBB","ack_policy":"explicit"}}"#,
        )
        .expect_err("captured 38");
        assert_eq!(
            (e.code, e.err_code, e.description.as_str()),
            (
                400,
                10017,
                "consumer name in subject does not match durable name in request"
            )
        );
        let durable = create(
            "$JS.API.CONSUMER.DURABLE.CREATE.ORDERS.DISPATCH",
            r#"{"stream_name":"ORDERS","config":{"durable_name":"DISPATCH"}}"#,
        )
        .expect("legacy durable");
        assert_eq!(durable.config.name, "DISPATCH");
        for (subject, body, kind) in [
            (
                "$JS.API.CONSUMER.CREATE.OTHER",
                r#"{"stream_name":"ORDERS"}"#,
                errors::STREAM_MISMATCH,
            ),
            (
                "$JS.API.CONSUMER.CREATE.ORDERS",
                r#"{"stream_name":"ORDERS","config":{"durable_name":"D"}}"#,
                errors::CONSUMER_EPHEMERAL_WITH_DURABLE_NAME,
            ),
            (
                "$JS.API.CONSUMER.DURABLE.CREATE.ORDERS.D",
                r#"{"stream_name":"ORDERS","config":{}}"#,
                errors::CONSUMER_DURABLE_NAME_NOT_SET,
            ),
            (
                "$JS.API.CONSUMER.CREATE.ORDERS.C.ORDERS.x",
                r#"{"stream_name":"ORDERS","config":{"filter_subject":"ORDERS.y"}}"#,
                errors::CONSUMER_CREATE_FILTER_SUBJECT_MISMATCH,
            ),
            (
                "$JS.API.CONSUMER.CREATE.ORDERS.C.ORDERS.x",
                r#"{"stream_name":"ORDERS","config":{"filter_subjects":["ORDERS.x"]}}"#,
                errors::CONSUMER_MULTIPLE_FILTERS_NOT_ALLOWED,
            ),
            (
                "$JS.API.CONSUMER.CREATE.ORDERS.C",
                r#"{"stream_name":"ORDERS","config":{"num_replicas":3}}"#,
                errors::STREAM_REPLICAS_NOT_SUPPORTED,
            ),
        ] {
            assert_eq!(
                create(subject, body).expect_err(subject).err_code,
                kind.err_code,
                "{subject}"
            );
        }
    }

    #[test]
    fn go_durations_read_as_go_prints_them() {
        for (ns, text) in [
            (0, "0s"),
            (1_500_000_000, "1.5s"),
            (60_000_000_000, "1m0s"),
            (3_723_000_000_000, "1h2m3s"),
            (250_000_000, "250ms"),
            (5_000, "5µs"),
        ] {
            assert_eq!(go_duration(ns), text);
        }
    }
}
