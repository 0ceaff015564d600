//! Mirrors and sources: a stream fed from other streams, as nats-server 2.14
//! does it. Each origin (the mirror, or one source) is read by an ephemeral,
//! flow-controlled push consumer that this stream asks the origin's JetStream
//! API for, through the router like any client would; so an origin on another
//! shard, in another account (`external`) or — later — on another server is
//! reached the same way.
//!
//! This module is the part without I/O: the configuration and its checks, and
//! one [`Origin`]'s state machine — when to ask for a consumer, what a
//! delivery, a heartbeat or a flow-control request means, where to resume.
//! The shell (`host::sourcing`) moves the messages.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::ack::{name_hash, AckReply};
use super::config::SubjectTransform;
use super::errors::{self, ApiError};
use crate::subject;

/// The header a sourced message carries: where it came from.
pub const STREAM_SOURCE: &str = "Nats-Stream-Source";
/// The idle heartbeat the origin consumer sends (nats-server's `sourceHealthHB`).
pub const HEARTBEAT_NS: i64 = 1_000_000_000;
/// Silence after which an origin consumer counts as lost
/// (`sourceHealthCheckInterval`), and the consumer's inactive threshold.
pub const HEALTH_CHECK_NS: i64 = 10_000_000_000;
/// The least time between two consumer requests (`sourceConsumerRetryThreshold`).
const RETRY_THRESHOLD_NS: i64 = 2_000_000_000;
/// How long an answer to a consumer request is waited for (`srcConsumerWaitTime`).
const CREATE_TIMEOUT_NS: i64 = 30_000_000_000;
/// A durable consumer only has to be reset, so its answer is awaited less
/// (`srcDurableConsumerWaitTime`).
const RESET_TIMEOUT_NS: i64 = 5_000_000_000;
/// Backoff after failures: 10 s per failure, at most two minutes (`calculateRetryBackoff`).
const BACKOFF_NS: i64 = 5_000_000_000;
const BACKOFF_MAX_NS: i64 = 120_000_000_000;
/// A mirror serves direct gets for its origin once this close (`dgetCaughtUpThresh`).
pub const DIRECT_CAUGHT_UP: u64 = 10;

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// `external`: the origin is in another account or JetStream domain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalStream {
    /// Where that JetStream's API is imported (`$JS.<domain>.API`).
    #[serde(rename = "api", default)]
    pub api_prefix: String,
    /// Where its deliveries are imported.
    #[serde(rename = "deliver", default)]
    pub deliver_prefix: String,
}

/// 2.14's durable sourcing: a consumer that already exists on the origin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableSource {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub deliver_subject: String,
}

/// A `mirror` or one of `sources`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSource {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub opt_start_seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt_start_time: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub filter_subject: String,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub subject_transforms: Vec<SubjectTransform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<DurableSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalStream>,
}

pub(super) fn null_as_empty<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

impl StreamSource {
    /// nats-server's index name: the origin (with a hash of the API prefix
    /// when external), its filters and their destinations. Two sources are the
    /// same when their index names are, and sourced messages name theirs.
    pub fn index_name(&self) -> String {
        let mut origin = self.name.clone();
        if let Some(ext) = &self.external {
            origin = format!("{origin}:{}", name_hash(&ext.api_prefix));
        }
        if let Some(c) = &self.consumer {
            origin = format!("{origin}:C={}", name_hash(&c.name));
        }
        let or_all = |s: &str| {
            if s.is_empty() {
                ">".to_string()
            } else {
                s.to_string()
            }
        };
        let (filter, destination) = if self.subject_transforms.is_empty() {
            (or_all(&self.filter_subject), ">".to_string())
        } else {
            let sources: Vec<String> = self
                .subject_transforms
                .iter()
                .map(|t| or_all(&t.source))
                .collect();
            let destinations: Vec<String> = self
                .subject_transforms
                .iter()
                .map(|t| or_all(&t.destination))
                .collect();
            (sources.join("\u{c}"), destinations.join("\u{c}"))
        };
        format!("{origin} {filter} {destination}")
    }

    fn opt_start_ns(&self) -> Option<i64> {
        let text = self.opt_start_time.as_deref()?;
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(|t| t.unix_timestamp_nanos() as i64)
    }
}

/// Which errors a check gives: the mirror's or a source's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Mirror,
    Source,
}

/// The checks of `checkStreamCfg` that need nothing but the stream's own
/// configuration; `mirror_with` names what a mirror may not have alongside.
pub fn check_mirror(
    mirror: &StreamSource,
    first_seq: u64,
    has_subjects: bool,
) -> Result<(), ApiError> {
    if first_seq > 0 {
        return Err(errors::MIRROR_WITH_FIRST_SEQ.error());
    }
    if has_subjects {
        return Err(errors::MIRROR_WITH_SUBJECTS.error());
    }
    if let Some(c) = &mirror.consumer {
        if !durable_is_valid(c) || mirror.opt_start_seq != 0 || mirror.opt_start_time.is_some() {
            return Err(errors::MIRROR_DURABLE_CONSUMER_CFG_INVALID.error());
        }
        if !mirror.filter_subject.is_empty() {
            return Err(errors::MIRROR_DURABLE_CONSUMER_CFG_INVALID.error());
        }
    }
    if !mirror.filter_subject.is_empty() && !mirror.subject_transforms.is_empty() {
        return Err(errors::MIRROR_MULTIPLE_FILTERS_NOT_ALLOWED.error());
    }
    check_transforms(&mirror.subject_transforms, Kind::Mirror)?;
    if mirror.external.is_none() && !super::config::is_valid_name(&mirror.name) {
        return Err(errors::MIRROR_INVALID_STREAM_NAME.error());
    }
    check_external(mirror.external.as_ref())
}

/// `sources`: each valid, none twice, durable consumers named once.
pub fn check_sources(sources: &[StreamSource]) -> Result<(), ApiError> {
    let mut seen = std::collections::HashSet::new();
    let mut durables = std::collections::HashSet::new();
    for src in sources {
        if !super::config::is_valid_name(&src.name) {
            return Err(errors::SOURCE_INVALID_STREAM_NAME.error());
        }
        if !seen.insert(src.index_name()) {
            return Err(errors::SOURCE_DUPLICATE_DETECTED.error());
        }
        if !src.filter_subject.is_empty() && !src.subject_transforms.is_empty() {
            return Err(errors::SOURCE_MULTIPLE_FILTERS_NOT_ALLOWED.error());
        }
        check_transforms(&src.subject_transforms, Kind::Source)?;
        if let Some(c) = &src.consumer {
            if !durable_is_valid(c)
                || src.opt_start_seq != 0
                || src.opt_start_time.is_some()
                || !src.filter_subject.is_empty()
            {
                return Err(errors::SOURCE_DURABLE_CONSUMER_CFG_INVALID.error());
            }
            let api = src.external.as_ref().map(|e| e.api_prefix.as_str());
            if !durables.insert((src.name.clone(), api, c.name.clone())) {
                return Err(errors::SOURCE_DURABLE_CONSUMER_DUPLICATE_DETECTED.error());
            }
        }
        check_external(src.external.as_ref())?;
    }
    Ok(())
}

fn durable_is_valid(c: &DurableSource) -> bool {
    super::config::is_valid_name(&c.name)
        && subject::is_valid_subject(c.deliver_subject.as_bytes())
        && !subject::has_wildcard(c.deliver_subject.as_bytes())
}

fn check_transforms(transforms: &[SubjectTransform], kind: Kind) -> Result<(), ApiError> {
    let (bad_filter, bad_destination, overlapping) = match kind {
        Kind::Mirror => (
            errors::MIRROR_INVALID_SUBJECT_FILTER,
            errors::MIRROR_INVALID_TRANSFORM_DESTINATION,
            errors::MIRROR_OVERLAPPING_SUBJECT_FILTERS,
        ),
        Kind::Source => (
            errors::SOURCE_INVALID_SUBJECT_FILTER,
            errors::SOURCE_INVALID_TRANSFORM_DESTINATION,
            errors::SOURCE_OVERLAPPING_SUBJECT_FILTERS,
        ),
    };
    for (i, t) in transforms.iter().enumerate() {
        if !t.source.is_empty() && !subject::is_valid_subject(t.source.as_bytes()) {
            return Err(bad_filter.err(format!("invalid subject {}", t.source)));
        }
        if !t.destination.is_empty() {
            t.compile().map_err(|e| bad_destination.err(e))?;
        }
        for (j, other) in transforms.iter().enumerate() {
            if i == j {
                continue;
            }
            let overlaps = match kind {
                Kind::Mirror => subject::collide(&t.source, &other.source),
                Kind::Source => subject::is_subset_match(&t.source, &other.source),
            };
            if overlaps {
                return Err(overlapping.error());
            }
        }
    }
    Ok(())
}

fn check_external(ext: Option<&ExternalStream>) -> Result<(), ApiError> {
    let Some(ext) = ext else { return Ok(()) };
    if !ext.deliver_prefix.is_empty() && !is_publish_subject(&ext.deliver_prefix) {
        return Err(
            errors::STREAM_INVALID_EXTERNAL_DELIVERY_SUBJ.with(&[("prefix", &ext.deliver_prefix)])
        );
    }
    if !ext.api_prefix.is_empty() {
        if !is_publish_subject(&ext.api_prefix) {
            return Err(errors::STREAM_INVALID_CONFIG.err(format!(
                "stream external api prefix {:?} must be a valid subject without wildcards",
                ext.api_prefix
            )));
        }
        if subject::collide(&ext.api_prefix, "$JS.API") {
            return Err(errors::STREAM_EXTERNAL_API_OVERLAP
                .with(&[("prefix", &ext.api_prefix), ("subject", &"$JS.API")]));
        }
    }
    Ok(())
}

fn is_publish_subject(s: &str) -> bool {
    subject::is_valid_subject(s.as_bytes()) && !subject::has_wildcard(s.as_bytes())
}

/// A delivery prefix may not catch the stream's own subjects again.
pub fn check_deliver_prefix(
    ext: &ExternalStream,
    stream_subjects: &[String],
) -> Result<(), ApiError> {
    if ext.deliver_prefix.is_empty() {
        return Ok(());
    }
    for s in stream_subjects {
        if subject::collide(s, &format!("{}.{s}", ext.deliver_prefix)) {
            return Err(errors::STREAM_EXTERNAL_DEL_PREFIX_OVERLAPS
                .with(&[("prefix", &ext.deliver_prefix), ("subject", s)]));
        }
    }
    Ok(())
}

/// Where an origin's consumer stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// No consumer; the next request goes out at `at` (ns).
    Waiting { at: i64 },
    /// A consumer was asked for; its answer comes on `reply`, and its first
    /// deliveries may come on `deliver` before it.
    Creating {
        reply: String,
        deliver: String,
        sent: i64,
    },
    /// Deliveries come on `deliver` from the consumer named `consumer`.
    Active { deliver: String, consumer: String },
}

/// A consumer request to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub subject: String,
    pub reply: String,
    /// `Null`: sent without a body.
    pub body: Value,
}

/// What the store looks like when a consumer is asked for or answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreFacts {
    pub msgs: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub last_ts: i64,
}

/// What the shell does with a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Store it: a mirror at `seq` (skipping what lies between), a source as
    /// the next message, with `header` as its `Nats-Stream-Source`.
    Store {
        seq: u64,
        ts: i64,
        subject: String,
        header: Option<String>,
    },
    /// Already stored, from an older consumer, or redelivered.
    Ignore,
    /// Something was missed: a new consumer from where the stream is.
    Retry,
}

/// What the shell does with a status message (heartbeat or flow control).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Answer on `to` with these headers.
    Reply {
        to: String,
        headers: String,
    },
    Retry,
    Nothing,
}

/// One origin — the mirror or one source — and how far it has been read.
#[derive(Debug, Clone)]
pub struct Origin {
    pub kind: Kind,
    pub config: StreamSource,
    pub index_name: String,
    transforms: Vec<(String, Option<crate::accounts::SubjectTransform>)>,
    /// The origin's last sequence stored here, and the consumer's last delivery.
    pub sseq: u64,
    dseq: u64,
    lag: u64,
    /// When the origin was last heard from (ns; 0: never).
    last_contact: i64,
    error: Option<ApiError>,
    phase: Phase,
    fails: u32,
    last_request: i64,
}

impl Origin {
    pub fn new(kind: Kind, config: StreamSource, now: i64) -> Origin {
        let transforms = config
            .subject_transforms
            .iter()
            .map(|t| {
                let filter = if t.source.is_empty() { ">" } else { &t.source };
                let compiled = (!t.destination.is_empty())
                    .then(|| {
                        crate::accounts::SubjectTransform::for_stream(filter, &t.destination).ok()
                    })
                    .flatten();
                (filter.to_string(), compiled)
            })
            .collect();
        Origin {
            kind,
            index_name: config.index_name(),
            config,
            transforms,
            sseq: 0,
            dseq: 0,
            lag: 0,
            last_contact: 0,
            error: None,
            phase: Phase::Waiting { at: now },
            fails: 0,
            last_request: 0,
        }
    }

    /// The subject this origin needs a subscription on now: the consumer
    /// request's reply, or the deliveries.
    pub fn listening_on(&self) -> Option<&str> {
        match &self.phase {
            Phase::Waiting { .. } => None,
            Phase::Creating { reply, .. } => Some(reply),
            Phase::Active { deliver, .. } => Some(deliver),
        }
    }

    /// Where deliveries may come before the consumer's answer (an origin in
    /// another account or domain delivers as soon as the consumer exists,
    /// whoever is listening): they are held until the answer. Not for a
    /// durable consumer: it delivers only while listened to, and listening
    /// before its reset is applied would take deliveries from before it.
    pub fn early_deliveries_on(&self) -> Option<&str> {
        match &self.phase {
            Phase::Creating { deliver, .. } if self.config.consumer.is_none() => Some(deliver),
            _ => None,
        }
    }

    fn answer_timeout(&self) -> i64 {
        if self.config.consumer.is_some() {
            RESET_TIMEOUT_NS
        } else {
            CREATE_TIMEOUT_NS
        }
    }

    /// Durable sourcing (2.14): the origin's consumer exists already, made by
    /// the user; it is reset to past its ack floor (which the flow control
    /// answers move) and read on its own deliver subject.
    fn reset_request(&mut self, durable: &DurableSource, reply: String, now: i64) -> Request {
        let subject = format!(
            "$JS.API.CONSUMER.RESET.{}.{}",
            self.config.name, durable.name
        );
        self.asked(reply.clone(), durable.deliver_subject.clone(), now);
        Request {
            subject: self.through_api(subject),
            reply,
            body: Value::Null,
        }
    }

    /// An API subject under the external API prefix, when there is one.
    fn through_api(&self, subject: String) -> String {
        match self
            .config
            .external
            .as_ref()
            .filter(|e| !e.api_prefix.is_empty())
        {
            Some(e) => subject
                .replacen("$JS.API", &e.api_prefix, 1)
                .replace("..", "."),
            None => subject,
        }
    }

    /// A consumer was asked for: its answer comes on `reply`, its deliveries on `deliver`.
    fn asked(&mut self, reply: String, deliver: String, now: i64) {
        self.last_request = now;
        self.error = None;
        self.phase = Phase::Creating {
            reply,
            deliver,
            sent: now,
        };
    }

    pub fn is_active(&self) -> bool {
        matches!(self.phase, Phase::Active { .. })
    }

    /// Whether a consumer should be asked for now.
    pub fn due(&self, now: i64) -> bool {
        matches!(self.phase, Phase::Waiting { at } if now >= at)
    }

    /// When [`Self::tick`] next has something to do.
    pub fn next_deadline(&self) -> i64 {
        match &self.phase {
            Phase::Waiting { at } => *at,
            Phase::Creating { sent, .. } => sent + self.answer_timeout(),
            Phase::Active { .. } => self.last_contact + HEALTH_CHECK_NS,
        }
    }

    /// Gives up on a consumer that does not answer or went quiet; true when it did.
    pub fn tick(&mut self, now: i64) -> bool {
        let lost = match &self.phase {
            Phase::Waiting { .. } => false,
            Phase::Creating { sent, .. } => now - sent >= self.answer_timeout(),
            Phase::Active { .. } => now - self.last_contact > HEALTH_CHECK_NS,
        };
        if lost {
            self.fails += 1;
            self.retry(now);
        }
        lost
    }

    /// Drops the consumer and asks for a new one as soon as nats-server would:
    /// not within two seconds of the last request, later after failures.
    pub fn retry(&mut self, now: i64) {
        let mut at = (self.last_request + RETRY_THRESHOLD_NS).max(now);
        if self.fails > 0 {
            at += (BACKOFF_NS * 2 * i64::from(self.fails)).min(BACKOFF_MAX_NS);
        }
        self.phase = Phase::Waiting { at };
    }

    /// The consumer request: from the sequence after the last one stored here,
    /// or the configured start on a first read. `reply` is a fresh inbox and
    /// `deliver` a fresh delivery subject (under the external prefix, if any).
    #[allow(clippy::too_many_arguments)]
    pub fn request(
        &mut self,
        stream: &str,
        account: &str,
        domain: Option<&str>,
        store: StoreFacts,
        reply: String,
        unique: &str,
        now: i64,
    ) -> Request {
        if let Some(durable) = self.config.consumer.clone() {
            return self.reset_request(&durable, reply, now);
        }
        let (tag, meta_key) = match self.kind {
            Kind::Mirror => ("M", "mirror"),
            Kind::Source => ("S", "src"),
        };
        let ext = self.config.external.as_ref();
        let deliver = match ext.filter(|e| !e.deliver_prefix.is_empty()) {
            Some(e) => format!("{}.{tag}.{unique}", e.deliver_prefix),
            None => format!("$JS.{tag}.{unique}"),
        }
        .replace("..", ".");
        let mut id = format!("{account} {stream}");
        if let Some(d) = domain {
            id = format!("{id} {d}");
        }
        let name = match self.kind {
            Kind::Mirror => format!("JS_MIRROR_{}", name_hash(&id)),
            Kind::Source => format!("JS_SRC_{}", name_hash(&format!("{id} {}", self.index_name))),
        };
        let mut metadata = serde_json::Map::new();
        metadata.insert(format!("_nats.{meta_key}.stream"), json!(stream));
        metadata.insert(format!("_nats.{meta_key}.acc"), json!(account));
        if let Some(d) = domain {
            metadata.insert(format!("_nats.{meta_key}.domain"), json!(d));
        }
        let mut config = json!({
            "name": name,
            "deliver_subject": deliver,
            "ack_policy": "none",
            "ack_wait": 22 * 3600 * 1_000_000_000i64,
            "max_deliver": 1,
            "idle_heartbeat": HEARTBEAT_NS,
            "flow_control": true,
            "direct": true,
            "sourcing": true,
            "inactive_threshold": HEALTH_CHECK_NS,
            "metadata": metadata,
        });
        let (policy, start_seq, start_time) = self.start(store);
        config["deliver_policy"] = json!(policy);
        if start_seq > 0 {
            config["opt_start_seq"] = json!(start_seq);
        }
        if let Some(t) = start_time {
            config["opt_start_time"] = json!(super::host::ts_rfc3339(t));
        }
        let mut filters: Vec<String> = self.transforms.iter().map(|(f, _)| f.clone()).collect();
        if !self.config.filter_subject.is_empty() {
            filters = vec![self.config.filter_subject.clone()];
        }
        let mut subject = format!("$JS.API.CONSUMER.CREATE.{}", self.config.name);
        match filters.len() {
            0 => {}
            1 => {
                config["filter_subject"] = json!(filters[0]);
                // A wildcard cannot be published to: such a filter stays in the body.
                if !subject::has_wildcard(filters[0].as_bytes()) {
                    subject = format!("{subject}.{name}.{}", filters[0]);
                }
            }
            _ => config["filter_subjects"] = json!(filters),
        }
        self.asked(reply.clone(), deliver, now);
        Request {
            subject: self.through_api(subject),
            reply,
            body: json!({ "stream_name": self.config.name, "config": config }),
        }
    }

    /// Deliver policy, start sequence and start time of the next consumer.
    fn start(&self, store: StoreFacts) -> (&'static str, u64, Option<i64>) {
        match self.kind {
            Kind::Mirror => {
                if store.last_seq > 0 {
                    return ("by_start_sequence", store.last_seq + 1, None);
                }
                if self.config.opt_start_seq > 0 {
                    ("by_start_sequence", self.config.opt_start_seq, None)
                } else if let Some(t) = self.config.opt_start_ns() {
                    ("by_start_time", 0, Some(t))
                } else {
                    ("all", 0, None)
                }
            }
            Kind::Source => {
                if self.sseq > 0 {
                    return ("by_start_sequence", self.sseq + 1, None);
                }
                if self.config.opt_start_seq > 0 {
                    return ("by_start_sequence", self.config.opt_start_seq, None);
                }
                if let Some(t) = self.config.opt_start_ns() {
                    let t = if store.last_ts > 0 {
                        t.max(store.last_ts)
                    } else {
                        t
                    };
                    return ("by_start_time", 0, Some(t));
                }
                // Nothing of this origin is here but the stream went on without
                // it (purged, or the source was added later): from now on.
                if store.first_seq > 1 && store.last_ts > 0 {
                    return ("by_start_time", 0, Some(store.last_ts));
                }
                ("all", 0, None)
            }
        }
    }

    /// The origin's answer to the consumer request. `Ok(Some(seq))` for a
    /// mirror whose consumer starts past what it holds: the shell moves the
    /// stream up to `seq` first.
    /// The consumer's answer. Its `delivered` position is taken only when the
    /// consumer had delivered nothing yet: the origin was listened to from
    /// the request on, so whatever it delivered before answering comes (or
    /// came, and was held) on the deliver subject, and taking the answer's
    /// position would skip it.
    pub fn created(
        &mut self,
        body: &[u8],
        store: StoreFacts,
        now: i64,
    ) -> Result<Option<u64>, ApiError> {
        if !matches!(self.phase, Phase::Creating { .. }) {
            return Ok(None);
        }
        let setup_failed = match self.kind {
            Kind::Mirror => errors::MIRROR_CONSUMER_SETUP_FAILED,
            Kind::Source => errors::SOURCE_CONSUMER_SETUP_FAILED,
        };
        let answer: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(_) => {
                return Err(self.failed(
                    errors::INVALID_JSON.err("bad consumer create response"),
                    now,
                ))
            }
        };
        if let Some(e) = answer.get("error") {
            let error = serde_json::from_value::<ApiError>(e.clone())
                .unwrap_or_else(|_| setup_failed.err("invalid consumer create response"));
            return Err(self.failed(error, now));
        }
        let deliver = answer["config"]["deliver_subject"]
            .as_str()
            .unwrap_or_default();
        let consumer = answer["name"].as_str().unwrap_or_default();
        if deliver.is_empty() || consumer.is_empty() {
            return Err(self.failed(setup_failed.err("invalid consumer create response"), now));
        }
        // Only acks by flow control let the origin know what is stored here.
        if self.config.consumer.is_some() && answer["config"]["ack_policy"] != "flow_control" {
            let error = match self.kind {
                Kind::Mirror => errors::MIRROR_CONSUMER_REQUIRES_ACK_FC.error(),
                Kind::Source => errors::SOURCE_CONSUMER_REQUIRES_ACK_FC.error(),
            };
            return Err(self.failed(error, now));
        }
        let delivered = if answer["delivered"]["consumer_seq"].as_u64().unwrap_or(0) > 0 {
            0
        } else {
            answer["delivered"]["stream_seq"].as_u64().unwrap_or(0)
        };
        self.fails = 0;
        self.dseq = 0;
        self.last_contact = now;
        self.phase = Phase::Active {
            deliver: deliver.to_string(),
            consumer: consumer.to_string(),
        };
        match self.kind {
            Kind::Mirror => {
                self.sseq = delivered.max(store.last_seq);
                Ok((store.last_seq < delivered).then_some(delivered))
            }
            Kind::Source => {
                self.sseq = self.sseq.max(delivered);
                Ok(None)
            }
        }
    }

    /// Nothing answers the origin's API (not there yet at startup, or not
    /// imported): asked again shortly, without counting it as a failure.
    pub fn unanswered(&mut self, now: i64) {
        if matches!(self.phase, Phase::Creating { .. }) {
            self.retry(now);
        }
    }

    fn failed(&mut self, error: ApiError, now: i64) -> ApiError {
        self.error = Some(error.clone());
        self.fails += 1;
        self.retry(now);
        error
    }

    /// A message on the delivery subject: `reply` is its ack subject.
    pub fn delivered(&mut self, subject: &str, reply: &str, now: i64) -> Delivery {
        let Phase::Active { consumer, .. } = &self.phase else {
            return Delivery::Ignore;
        };
        let Some(ack) = AckReply::parse(reply) else {
            return Delivery::Ignore;
        };
        if ack.consumer != consumer.as_str() || ack.deliveries > 1 {
            return Delivery::Ignore;
        }
        self.last_contact = now;
        let (sseq, dseq) = (ack.stream_seq, ack.consumer_seq);
        if sseq <= self.sseq {
            if dseq == self.dseq + 1 {
                self.dseq += 1;
            }
            return Delivery::Ignore;
        }
        let contiguous = dseq == self.dseq + 1;
        match self.kind {
            // A gap in the origin's sequences with no gap in the deliveries:
            // the origin removed those messages; the mirror skips them too.
            Kind::Mirror if contiguous => {}
            Kind::Source if contiguous => {}
            _ => {
                self.retry(now);
                return Delivery::Retry;
            }
        }
        self.dseq = dseq;
        self.sseq = sseq;
        self.lag = ack.pending.saturating_sub(1);
        let subject = self.transformed(subject);
        let header = (self.kind == Kind::Source).then(|| self.source_header(sseq, subject.1));
        Delivery::Store {
            seq: sseq,
            ts: ack.ts,
            subject: subject.0,
            header,
        }
    }

    /// A store that failed takes the origin back to before the message, and
    /// asks again from there.
    pub fn store_failed(&mut self, seq: u64, now: i64) {
        self.sseq = self.sseq.min(seq.saturating_sub(1));
        self.retry(now);
    }

    /// The subject as stored (the first transform that matches), and the original.
    fn transformed<'a>(&self, subject: &'a str) -> (String, &'a str) {
        for (_, t) in &self.transforms {
            if let Some(t) = t {
                if let Some(mapped) = t.apply(subject.as_bytes()) {
                    return (String::from_utf8_lossy(&mapped).into_owned(), subject);
                }
            }
        }
        (subject.to_string(), subject)
    }

    /// `Nats-Stream-Source`: `<origin> <seq> <filters> <destinations> <subject>`.
    fn source_header(&self, seq: u64, original: &str) -> String {
        let mut parts = self.index_name.splitn(3, ' ');
        let origin = parts.next().unwrap_or_default();
        let filter = parts.next().unwrap_or(">");
        let destination = parts.next().unwrap_or(">");
        format!("{origin} {seq} {filter} {destination} {original}")
    }

    /// A status message on the delivery subject: flow control (with a reply)
    /// or an idle heartbeat.
    pub fn control(&mut self, headers: &[u8], reply: &str, now: i64) -> Control {
        if !self.is_active() {
            return Control::Nothing;
        }
        self.last_contact = now;
        if !reply.is_empty() {
            return Control::Reply {
                to: reply.to_string(),
                headers: format!(
                    "NATS/1.0\r\nNats-Last-Consumer: {}\r\nNats-Last-Stream: {}\r\n\r\n",
                    self.dseq, self.sseq
                ),
            };
        }
        let last = super::stream::header(headers, "Nats-Last-Consumer")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if last > 0 && last != self.dseq {
            self.retry(now);
            return Control::Retry;
        }
        match super::stream::header(headers, "Nats-Consumer-Stalled") {
            Some(to) if !to.is_empty() => Control::Reply {
                to: to.to_string(),
                headers: String::new(),
            },
            _ => Control::Nothing,
        }
    }

    /// The consumer's name while one is delivering (for the shell to drop it).
    pub fn consumer(&self) -> Option<&str> {
        match &self.phase {
            Phase::Active { consumer, .. } => Some(consumer),
            _ => None,
        }
    }

    /// Whether the mirror has caught up enough to answer direct gets for its origin.
    pub fn caught_up(&self) -> bool {
        self.is_active() && self.lag < DIRECT_CAUGHT_UP
    }

    /// Stream info's `mirror` / `sources` entry.
    pub fn info(&self, now: i64) -> Value {
        let mut out = serde_json::Map::new();
        out.insert("name".into(), json!(self.config.name));
        if !self.config.filter_subject.is_empty() {
            out.insert("filter_subject".into(), json!(self.config.filter_subject));
        }
        if !self.config.subject_transforms.is_empty() {
            out.insert(
                "subject_transforms".into(),
                json!(self.config.subject_transforms),
            );
        }
        out.insert("lag".into(), json!(self.lag));
        let active = if self.last_contact == 0 {
            -1
        } else {
            (now - self.last_contact).max(0)
        };
        out.insert("active".into(), json!(active));
        if let Some(ext) = &self.config.external {
            out.insert("external".into(), json!(ext));
        }
        if let Some(e) = &self.error {
            out.insert("error".into(), json!(e));
        }
        Value::Object(out)
    }
}

/// What a sourced message's `Nats-Stream-Source` says: the origin's index name
/// and the sequence it had there (nats-server's `streamAndSeq`).
pub fn parse_source_header(value: &str) -> Option<(String, u64)> {
    let fields: Vec<&str> = value.split(' ').collect();
    if fields.len() < 4 {
        return None;
    }
    let seq = fields[1].parse().ok()?;
    Some((format!("{} {} {}", fields[0], fields[2], fields[3]), seq))
}

/// A header block without the headers named `name` or, with `prefix`, starting with it.
pub fn without_headers(headers: &[u8], names: &[&str], prefixes: &[&str]) -> Vec<u8> {
    let text = String::from_utf8_lossy(headers);
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or("NATS/1.0");
    let mut out = format!("{status}\r\n");
    for line in lines.filter(|l| !l.is_empty()) {
        let key = line.split_once(':').map_or(line, |(k, _)| k).trim();
        let drop = names.iter().any(|n| key.eq_ignore_ascii_case(n))
            || prefixes
                .iter()
                .any(|p| key.len() >= p.len() && key[..p.len()].eq_ignore_ascii_case(p));
        if !drop {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("\r\n");
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(json: &str) -> StreamSource {
        serde_json::from_str(json).unwrap()
    }

    const SEC: i64 = 1_000_000_000;

    fn active(kind: Kind, cfg: &str) -> Origin {
        let mut o = Origin::new(kind, source(cfg), 0);
        let r = o.request(
            "M",
            "$G",
            None,
            StoreFacts::default(),
            "_INBOX.r".into(),
            "u",
            0,
        );
        assert_eq!(o.listening_on(), Some("_INBOX.r"));
        let name = r.body["config"]["name"].as_str().unwrap().to_string();
        let answer = json!({"name": format!("{name}-x"), "config": {"deliver_subject": "$JS.M.u"}, "delivered": {"stream_seq": 0}});
        assert_eq!(
            o.created(answer.to_string().as_bytes(), StoreFacts::default(), SEC),
            Ok(None)
        );
        o
    }

    fn ack(o: &Origin, sseq: u64, dseq: u64, pending: u64) -> String {
        format!(
            "$JS.ACK.O.{}.1.{sseq}.{dseq}.{}.{pending}",
            o.consumer().unwrap(),
            sseq * 10
        )
    }

    #[test]
    fn a_durable_source_resets_its_consumer_and_skips_what_it_holds() {
        let cfg = r#"{"name":"O","consumer":{"name":"SRC","deliver_subject":"deliver.src"}}"#;
        let mut o = Origin::new(Kind::Mirror, source(cfg), 0);
        let held = StoreFacts {
            msgs: 5,
            first_seq: 1,
            last_seq: 5,
            last_ts: 1,
        };
        let r = o.request("M", "$G", None, held, "_INBOX.r".into(), "u", 0);
        assert_eq!(r.subject, "$JS.API.CONSUMER.RESET.O.SRC");
        assert!(r.body.is_null(), "reset to past the ack floor");
        // Only the answer is listened to: the consumer delivers once heard.
        assert_eq!(o.listening_on(), Some("_INBOX.r"));
        assert_eq!(o.early_deliveries_on(), None);
        assert_eq!(o.next_deadline(), RESET_TIMEOUT_NS);
        let answer = |policy: &str| {
            json!({"type": "io.nats.jetstream.api.v1.consumer_reset_response", "name": "SRC",
                "config": {"deliver_subject": "deliver.src", "ack_policy": policy},
                "delivered": {"consumer_seq": 0, "stream_seq": 3}, "reset_seq": 4})
            .to_string()
        };
        assert_eq!(
            o.created(answer("explicit").as_bytes(), held, SEC),
            Err(errors::MIRROR_CONSUMER_REQUIRES_ACK_FC.error())
        );
        o.retry(SEC);
        o.request("M", "$G", None, held, "_INBOX.r2".into(), "u", 3 * SEC);
        assert_eq!(
            o.created(answer("flow_control").as_bytes(), held, 3 * SEC),
            Ok(None)
        );
        assert_eq!(o.listening_on(), Some("deliver.src"));
        // Redelivered from the ack floor: what the mirror holds is skipped.
        let delivery =
            |sseq: u64, dseq: u64| format!("$JS.ACK.O.SRC.1.{sseq}.{dseq}.{}.0", sseq * 10);
        assert_eq!(o.delivered("a", &delivery(4, 1), 4 * SEC), Delivery::Ignore);
        assert_eq!(o.delivered("a", &delivery(5, 2), 4 * SEC), Delivery::Ignore);
        assert!(matches!(
            o.delivered("a", &delivery(6, 3), 4 * SEC),
            Delivery::Store { seq: 6, .. }
        ));
        // Through another domain's API, as a created consumer is.
        let ext = r#"{"name":"O","external":{"api":"$JS.hub.API","deliver":""},"consumer":{"name":"SRC","deliver_subject":"d"}}"#;
        let mut e = Origin::new(Kind::Source, source(ext), 0);
        let r = e.request("M", "$G", None, held, "r".into(), "u", 0);
        assert_eq!(r.subject, "$JS.hub.API.CONSUMER.RESET.O.SRC");
    }

    #[test]
    fn index_names_are_nats_servers() {
        assert_eq!(source(r#"{"name":"O"}"#).index_name(), "O > >");
        assert_eq!(
            source(r#"{"name":"O","filter_subject":"a.*"}"#).index_name(),
            "O a.* >"
        );
        assert_eq!(
            source(r#"{"name":"O","subject_transforms":[{"src":"a.>","dest":"b.>"},{"src":"c","dest":""}]}"#)
                .index_name(),
            "O a.>\u{c}c b.>\u{c}>"
        );
        let ext = source(r#"{"name":"O","external":{"api":"$JS.hub.API","deliver":""}}"#);
        assert_eq!(
            ext.index_name(),
            format!("O:{} > >", name_hash("$JS.hub.API"))
        );
    }

    #[test]
    fn a_first_request_uses_the_configured_start_then_resumes() {
        let mut o = Origin::new(
            Kind::Mirror,
            source(r#"{"name":"O","opt_start_seq":5,"filter_subject":"a.b"}"#),
            0,
        );
        let r = o.request("M", "$G", None, StoreFacts::default(), "r".into(), "u", 0);
        assert!(
            r.subject
                .starts_with("$JS.API.CONSUMER.CREATE.O.JS_MIRROR_"),
            "{}",
            r.subject
        );
        assert!(r.subject.ends_with(".a.b"));
        // A wildcard filter cannot be published to: it stays in the body.
        let mut w = Origin::new(
            Kind::Source,
            source(r#"{"name":"O","filter_subject":"a.>"}"#),
            0,
        );
        let r2 = w.request("M", "$G", None, StoreFacts::default(), "r".into(), "u", 0);
        assert_eq!(r2.subject, "$JS.API.CONSUMER.CREATE.O");
        assert_eq!(r2.body["config"]["filter_subject"], "a.>");
        assert_eq!(r.body["config"]["opt_start_seq"], 5);
        assert_eq!(r.body["config"]["deliver_policy"], "by_start_sequence");
        assert_eq!(r.body["config"]["flow_control"], true);
        o.retry(0);
        let held = StoreFacts {
            msgs: 3,
            first_seq: 5,
            last_seq: 7,
            last_ts: 1,
        };
        let r = o.request("M", "$G", None, held, "r".into(), "u", 3 * SEC);
        assert_eq!(r.body["config"]["opt_start_seq"], 8);
    }

    #[test]
    fn external_prefixes_replace_the_api_and_deliver_subjects() {
        let mut o = Origin::new(
            Kind::Source,
            source(r#"{"name":"O","external":{"api":"$JS.A.API","deliver":"from.a"}}"#),
            0,
        );
        let r = o.request("S", "B", None, StoreFacts::default(), "r".into(), "u", 0);
        assert_eq!(r.subject, "$JS.A.API.CONSUMER.CREATE.O");
        assert_eq!(r.body["config"]["deliver_subject"], "from.a.S.u");
    }

    #[test]
    fn a_mirror_skips_what_the_origin_removed_and_retries_on_lost_deliveries() {
        let mut o = active(Kind::Mirror, r#"{"name":"O"}"#);
        let a = ack(&o, 1, 1, 5);
        assert!(matches!(
            o.delivered("x", &a, 2 * SEC),
            Delivery::Store { seq: 1, .. }
        ));
        // Origin sequences 2..4 are gone: the delivery is still the next one.
        let a = ack(&o, 5, 2, 3);
        assert!(matches!(
            o.delivered("x", &a, 2 * SEC),
            Delivery::Store { seq: 5, ts: 50, .. }
        ));
        assert_eq!(o.info(3 * SEC)["lag"], 2);
        // Old news is ignored.
        assert_eq!(o.delivered("x", &a, 2 * SEC), Delivery::Ignore);
        // A delivery went missing (dseq 4 without 3): ask again.
        let a = ack(&o, 7, 4, 0);
        assert_eq!(o.delivered("x", &a, 2 * SEC), Delivery::Retry);
        assert!(!o.is_active());
        assert_eq!(o.sseq, 5);
    }

    #[test]
    fn sources_name_their_origin_and_transform_subjects() {
        let mut o = active(
            Kind::Source,
            r#"{"name":"O","subject_transforms":[{"src":"a.*","dest":"b.{{wildcard(1)}}"}]}"#,
        );
        let a = ack(&o, 3, 1, 0);
        match o.delivered("a.x", &a, 2 * SEC) {
            Delivery::Store {
                subject, header, ..
            } => {
                assert_eq!(subject, "b.x");
                assert_eq!(header.as_deref(), Some("O 3 a.* b.{{wildcard(1)}} a.x"));
                let (iname, seq) = parse_source_header(header.as_deref().unwrap()).unwrap();
                assert_eq!((iname.as_str(), seq), (o.index_name.as_str(), 3));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn heartbeats_and_flow_control() {
        let mut o = active(Kind::Source, r#"{"name":"O"}"#);
        let a = ack(&o, 1, 1, 0);
        o.delivered("x", &a, SEC);
        assert_eq!(
            o.control(b"NATS/1.0 100 FlowControl Request\r\n\r\n", "fc.1", SEC),
            Control::Reply {
                to: "fc.1".into(),
                headers: "NATS/1.0\r\nNats-Last-Consumer: 1\r\nNats-Last-Stream: 1\r\n\r\n".into()
            }
        );
        let hb = b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 1\r\nNats-Last-Stream: 1\r\nNats-Consumer-Stalled: fc.2\r\n\r\n";
        assert_eq!(
            o.control(hb, "", SEC),
            Control::Reply {
                to: "fc.2".into(),
                headers: String::new()
            }
        );
        let missed = b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 3\r\n\r\n";
        assert_eq!(o.control(missed, "", SEC), Control::Retry);
    }

    #[test]
    fn silence_and_failures_back_off() {
        let mut o = active(Kind::Mirror, r#"{"name":"O"}"#);
        assert!(!o.tick(5 * SEC));
        assert!(o.tick(12 * SEC), "ten seconds without a heartbeat");
        assert!(!o.due(12 * SEC));
        assert!(o.due(12 * SEC + 2 * BACKOFF_NS));
        o.request(
            "M",
            "$G",
            None,
            StoreFacts::default(),
            "r".into(),
            "u",
            30 * SEC,
        );
        let refused = br#"{"type":"x","error":{"code":404,"err_code":10059,"description":"stream not found"}}"#;
        let e = o
            .created(refused, StoreFacts::default(), 30 * SEC)
            .unwrap_err();
        assert_eq!(e.err_code, 10059);
        assert_eq!(o.info(31 * SEC)["error"]["description"], "stream not found");
        assert!(
            !o.due(30 * SEC + 3 * BACKOFF_NS),
            "second failure waits 20 s"
        );
        // Two seconds after the last request, plus the backoff.
        assert!(o.due(32 * SEC + 4 * BACKOFF_NS));
    }

    #[test]
    fn a_mirror_starting_late_moves_up_first() {
        let mut o = Origin::new(Kind::Mirror, source(r#"{"name":"O"}"#), 0);
        o.request("M", "$G", None, StoreFacts::default(), "r".into(), "u", 0);
        let answer =
            br#"{"name":"c","config":{"deliver_subject":"d"},"delivered":{"stream_seq":99}}"#;
        assert_eq!(o.created(answer, StoreFacts::default(), 1), Ok(Some(99)));
        assert_eq!(o.sseq, 99);
    }

    #[test]
    fn deliveries_held_from_before_the_answer_are_not_skipped() {
        let mut o = Origin::new(Kind::Mirror, source(r#"{"name":"O"}"#), 0);
        o.request("M", "$G", None, StoreFacts::default(), "r".into(), "u", 0);
        assert_eq!(o.early_deliveries_on(), Some("$JS.M.u"));
        // Three delivered before the answer: they come on the deliver subject.
        let answer = br#"{"name":"c","config":{"deliver_subject":"$JS.M.u"},"delivered":{"consumer_seq":3,"stream_seq":3}}"#;
        assert_eq!(o.created(answer, StoreFacts::default(), 1), Ok(None));
        assert_eq!(o.sseq, 0);
        assert_eq!(o.early_deliveries_on(), None);
    }

    #[test]
    fn config_checks_are_nats_servers() {
        let m = source(
            r#"{"name":"O","filter_subject":"a","subject_transforms":[{"src":"b","dest":"c"}]}"#,
        );
        assert_eq!(
            check_mirror(&m, 0, false).unwrap_err().err_code,
            errors::MIRROR_MULTIPLE_FILTERS_NOT_ALLOWED.err_code
        );
        assert_eq!(
            check_mirror(&source(r#"{"name":"O"}"#), 0, true).unwrap_err(),
            errors::MIRROR_WITH_SUBJECTS.error()
        );
        assert_eq!(
            check_mirror(&source(r#"{"name":"O"}"#), 3, false).unwrap_err(),
            errors::MIRROR_WITH_FIRST_SEQ.error()
        );
        assert_eq!(
            check_mirror(&source(r#"{"name":"a.b"}"#), 0, false).unwrap_err(),
            errors::MIRROR_INVALID_STREAM_NAME.error()
        );
        let twice = [source(r#"{"name":"O"}"#), source(r#"{"name":"O"}"#)];
        assert_eq!(
            check_sources(&twice).unwrap_err(),
            errors::SOURCE_DUPLICATE_DETECTED.error()
        );
        let filtered = [
            source(r#"{"name":"O"}"#),
            source(r#"{"name":"O","filter_subject":"x"}"#),
        ];
        assert!(check_sources(&filtered).is_ok());
        let overlap = [source(
            r#"{"name":"O","subject_transforms":[{"src":"a.>","dest":""},{"src":"a.b","dest":""}]}"#,
        )];
        assert_eq!(
            check_sources(&overlap).unwrap_err(),
            errors::SOURCE_OVERLAPPING_SUBJECT_FILTERS.error()
        );
        let api = source(r#"{"name":"O","external":{"api":"$JS.API","deliver":""}}"#);
        assert_eq!(
            check_sources(&[api]).unwrap_err().err_code,
            errors::STREAM_EXTERNAL_API_OVERLAP.err_code
        );
        let wild = source(r#"{"name":"O","external":{"api":"$JS.x.API","deliver":"d.*"}}"#);
        assert_eq!(
            check_sources(&[wild]).unwrap_err().err_code,
            errors::STREAM_INVALID_EXTERNAL_DELIVERY_SUBJ.err_code
        );
    }

    #[test]
    fn expected_headers_are_dropped() {
        let h = b"NATS/1.0\r\nNats-Expected-Last-Sequence: 3\r\nA: 1\r\nNats-Stream-Source: x 1 > > y\r\n\r\n";
        let out = without_headers(h, &[STREAM_SOURCE], &["Nats-Expected-"]);
        assert_eq!(out, b"NATS/1.0\r\nA: 1\r\n\r\n");
    }
}
