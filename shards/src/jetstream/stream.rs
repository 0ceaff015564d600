//! A stream's publish path as a state machine, without I/O: a message comes in
//! with the time, and out comes what to do with it — store it (with its TTL and
//! rollup), answer that it is a duplicate, or refuse it with nats-server's error.
//! The store is only read through [`StoreView`]; the shell appends and then tells
//! the stream the sequence it got. A replicated stream will feed the same machine
//! from its Raft log.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use super::config::{Retention, StreamConfig};
use super::counter::{self, Counters, Increment};
use super::errors::{self, ApiError};
use crate::accounts::SubjectTransform;

pub const MSG_ID: &str = "Nats-Msg-Id";
pub const EXPECTED_STREAM: &str = "Nats-Expected-Stream";
pub const EXPECTED_LAST_SEQ: &str = "Nats-Expected-Last-Sequence";
pub const EXPECTED_LAST_SUBJECT_SEQ: &str = "Nats-Expected-Last-Subject-Sequence";
pub const EXPECTED_LAST_SUBJECT_SEQ_SUBJECT: &str = "Nats-Expected-Last-Subject-Sequence-Subject";
pub const EXPECTED_LAST_MSG_ID: &str = "Nats-Expected-Last-Msg-Id";
pub const ROLLUP: &str = "Nats-Rollup";
pub const TTL: &str = "Nats-TTL";
pub const MARKER_REASON: &str = "Nats-Marker-Reason";
/// The KV operation header; a `PURGE` is a delete marker written by a client.
pub const KV_OPERATION: &str = "KV-Operation";

/// What the stream needs to know of its store to check a message.
pub trait StoreView {
    /// The last sequence stored (0 when none ever was).
    fn last_seq(&self) -> u64;
    /// The last sequence stored on `subject` (0 when none is there).
    fn last_seq_for(&self, subject: &str) -> u64;
}

/// Which messages a rollup replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollup {
    /// Every earlier message on the same subject (`Nats-Rollup: sub`).
    Subject,
    /// Every earlier message in the stream (`Nats-Rollup: all`).
    All,
}

/// A message the stream accepted, and how to store it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Seconds; -1 never expires.
    pub ttl: Option<i64>,
    pub rollup: Option<Rollup>,
    pub msg_id: Option<String>,
    /// The TTL was raised to the subject delete marker TTL, so the stored
    /// `Nats-TTL` header must say so.
    pub ttl_raised: bool,
    /// Interest retention: unless the shell finds a consumer that takes it,
    /// the message takes its sequence and is acknowledged, but is not kept.
    pub skip: bool,
    /// A counter stream stores this instead of what was published.
    pub counter: Option<Box<Increment>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Store(Accepted),
    /// Already stored within the duplicate window, at this sequence.
    Duplicate(u64),
    Refuse(ApiError),
}

/// The acknowledgement of a publish, field for field as nats-server sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PubAck {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
    pub stream: String,
    pub seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    /// A counter's total after the increment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val: Option<String>,
    /// The atomic batch this commit stored, and how many messages it had.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// The message ids seen within the duplicate window, oldest first.
#[derive(Debug, Default)]
struct Dedupe {
    by_id: HashMap<String, (u64, i64), ahash::RandomState>,
    order: VecDeque<(i64, String)>,
}

impl Dedupe {
    fn expire(&mut self, now: i64, window: i64) {
        while let Some((ts, _)) = self.order.front() {
            if now - ts < window {
                break;
            }
            if let Some((ts, id)) = self.order.pop_front() {
                if self.by_id.get(&id).is_some_and(|&(_, t)| t == ts) {
                    self.by_id.remove(&id);
                }
            }
        }
    }

    fn insert(&mut self, id: String, seq: u64, ts: i64) {
        self.order.push_back((ts, id.clone()));
        self.by_id.insert(id, (seq, ts));
    }
}

/// What checking a batch changed, to put back when it fails.
struct BatchUndo {
    last_msg_id: String,
    ids: Vec<String>,
    counters: Vec<counter::SavedCounter>,
}

/// The store as a batch's next message sees it: the messages of the batch
/// before it stored.
struct BatchView<'a, V> {
    store: &'a V,
    staged: HashMap<&'a str, u64>,
    base: u64,
    added: u64,
}

impl<V: StoreView> StoreView for BatchView<'_, V> {
    fn last_seq(&self) -> u64 {
        self.base + self.added
    }
    fn last_seq_for(&self, subject: &str) -> u64 {
        match self.staged.get(subject) {
            Some(&seq) => seq,
            None => self.store.last_seq_for(subject),
        }
    }
}

/// Where a message to store comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingest {
    /// A client (or the server) published it on the stream's subjects.
    Publish,
    /// One of the stream's sources had it.
    Sourced,
    /// The stream mirrors the stream that had it.
    Mirrored,
}

/// One stream's publish-side state.
#[derive(Debug)]
pub struct Stream {
    config: StreamConfig,
    /// `subject_transform`, compiled: what a message is stored under.
    ingest: Option<SubjectTransform>,
    /// `republish`, compiled.
    republish: Option<SubjectTransform>,
    /// The server's JetStream domain, echoed in PubAcks.
    domain: Option<String>,
    dedupe: Dedupe,
    last_msg_id: String,
    counters: Counters,
}

/// A header's value in a `NATS/1.0` block (names compare case-insensitively).
pub fn header<'a>(headers: &'a [u8], name: &str) -> Option<&'a str> {
    let text = std::str::from_utf8(headers).ok()?;
    text.split("\r\n").skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Whether a stored message is a subject delete marker: one the server wrote
/// (`Nats-Marker-Reason`) or a KV purge.
pub fn is_delete_marker(headers: &[u8]) -> bool {
    !headers.is_empty()
        && (header(headers, MARKER_REASON).is_some_and(|r| !r.is_empty())
            || header(headers, KV_OPERATION) == Some("PURGE"))
}

/// A header block with `name` set to `value`: in the place of its first
/// earlier value (others removed), as nats-server's `setHeader` does, or last.
pub fn with_header(headers: &[u8], name: &str, value: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(headers);
    let mut lines = text.split("\r\n");
    let status = lines.next().filter(|l| !l.is_empty()).unwrap_or("NATS/1.0");
    let mut out = format!("{status}\r\n");
    let mut set = false;
    for line in lines.filter(|l| !l.is_empty()) {
        let key = line.split_once(':').map_or(line, |(k, _)| k).trim();
        if !key.eq_ignore_ascii_case(name) {
            out.push_str(line);
            out.push_str("\r\n");
        } else if !set {
            out.push_str(&format!("{name}: {value}\r\n"));
            set = true;
        }
    }
    if !set {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

pub const REQUIRED_API_LEVEL: &str = "Nats-Required-Api-Level";

/// Whether a request's `Nats-Required-Api-Level` asks for more than this
/// server's API level (an unreadable level counts as more, as in nats-server).
pub fn requires_newer_api(headers: &[u8]) -> bool {
    header(headers, REQUIRED_API_LEVEL).is_some_and(|level| {
        level
            .parse::<u32>()
            .map_or(true, |l| l > super::config::API_LEVEL)
    })
}

impl Stream {
    /// The server's JetStream domain, if it has one.
    pub fn domain(&self) -> Option<&str> {
        self.domain.as_deref()
    }

    pub fn new(config: StreamConfig, domain: Option<String>) -> Stream {
        let mut stream = Stream {
            config: StreamConfig::default(),
            ingest: None,
            republish: None,
            domain,
            dedupe: Dedupe::default(),
            last_msg_id: String::new(),
            counters: Counters::default(),
        };
        stream.set_config(config);
        stream
    }

    pub fn config(&self) -> &StreamConfig {
        &self.config
    }

    /// Takes a validated configuration (its transforms compile: `normalized`
    /// checked them).
    pub fn set_config(&mut self, config: StreamConfig) {
        self.ingest = config
            .subject_transform
            .as_ref()
            .filter(|t| !t.destination.is_empty())
            .and_then(|t| t.compile().ok());
        self.republish = config
            .republish
            .as_ref()
            .and_then(|r| SubjectTransform::for_stream(&r.source, &r.destination).ok());
        self.config = config;
    }

    /// The subject a message published on `subject` is stored under.
    pub fn stored_subject<'a>(&self, subject: &'a str) -> std::borrow::Cow<'a, str> {
        match self
            .ingest
            .as_ref()
            .and_then(|t| t.apply(subject.as_bytes()))
        {
            Some(mapped) => match String::from_utf8(mapped) {
                Ok(mapped) => std::borrow::Cow::Owned(mapped),
                Err(_) => std::borrow::Cow::Borrowed(subject),
            },
            None => std::borrow::Cow::Borrowed(subject),
        }
    }

    /// Where a message stored under `subject` is published again, and whether
    /// only its headers go (`republish`); `None` when it is not.
    pub fn republish_subject(&self, subject: &str) -> Option<(Vec<u8>, bool)> {
        let mapped = self.republish.as_ref()?.apply(subject.as_bytes())?;
        if !crate::subject::is_valid_literal_subject(&mapped) {
            return None;
        }
        let headers_only = self
            .config
            .republish
            .as_ref()
            .is_some_and(|r| r.headers_only);
        Some((mapped, headers_only))
    }

    /// Decides what to do with a message published at `now` (ns since the epoch).
    pub fn check(
        &mut self,
        subject: &str,
        headers: &[u8],
        payload: &[u8],
        now: i64,
        store: &impl StoreView,
    ) -> Decision {
        self.check_from(Ingest::Publish, subject, headers, payload, now, store)
    }

    /// [`Self::check`] for a message that came from where `ingest` says: what
    /// another stream already accepted may roll up without the permission, and
    /// a mirror does not deduplicate (its origin did).
    pub fn check_from(
        &mut self,
        ingest: Ingest,
        subject: &str,
        headers: &[u8],
        payload: &[u8],
        now: i64,
        store: &impl StoreView,
    ) -> Decision {
        let refuse = |e: ApiError| Decision::Refuse(e);
        if self.config.sealed {
            return refuse(errors::STREAM_SEALED.error());
        }
        let hdr = |name| {
            if headers.is_empty() {
                None
            } else {
                header(headers, name)
            }
        };
        let incr = match counter::parse_incr(headers) {
            Ok(incr) => incr,
            Err(e) => return refuse(e),
        };
        // What a source or mirror already counted is not checked again.
        if incr.is_some() && ingest == Ingest::Publish {
            if !self.config.allow_msg_counter {
                return refuse(errors::MESSAGE_INCR_DISABLED.error());
            }
            if !payload.is_empty() {
                return refuse(errors::MESSAGE_INCR_PAYLOAD.error());
            }
            let conflicting = [
                ROLLUP,
                EXPECTED_STREAM,
                EXPECTED_LAST_MSG_ID,
                EXPECTED_LAST_SUBJECT_SEQ_SUBJECT,
                EXPECTED_LAST_SEQ,
                EXPECTED_LAST_SUBJECT_SEQ,
            ];
            if conflicting.iter().any(|name| hdr(name).is_some()) {
                return refuse(errors::MESSAGE_INCR_INVALID.error());
            }
        }
        if let Some(name) = hdr(EXPECTED_STREAM) {
            if name != self.config.name {
                return refuse(errors::STREAM_NOT_MATCH.error());
            }
        }
        let ttl = match hdr(TTL).map(parse_ttl) {
            None => None,
            Some(Err(e)) => {
                if !self.config.allow_msg_ttl {
                    return refuse(errors::MESSAGE_TTL_DISABLED.error());
                }
                return refuse(e);
            }
            Some(Ok(0)) => None,
            Some(Ok(t)) => {
                if !self.config.allow_msg_ttl {
                    return refuse(errors::MESSAGE_TTL_DISABLED.error());
                }
                Some(t)
            }
        };
        // A message must outlive the marker its subject may already have, or that
        // marker could be missed (nats-server's rule; one message per subject
        // cannot miss one).
        let marker_ttl = self.marker_ttl_secs();
        let ttl_raised = matches!(ttl, Some(t) if t > 0 && t < marker_ttl)
            && self.config.max_msgs_per_subject != 1;
        let ttl = if ttl_raised { Some(marker_ttl) } else { ttl };
        if let Some(expected) = hdr(EXPECTED_LAST_SUBJECT_SEQ) {
            let on = hdr(EXPECTED_LAST_SUBJECT_SEQ_SUBJECT).unwrap_or(subject);
            let last = store.last_seq_for(on);
            if expected.parse::<u64>().ok() != Some(last) {
                return refuse(errors::STREAM_WRONG_LAST_SEQUENCE.with(&[("seq", &last)]));
            }
        } else if hdr(EXPECTED_LAST_SUBJECT_SEQ_SUBJECT).is_some() {
            return refuse(errors::STREAM_EXPECTED_LAST_SEQ_PER_SUBJECT_INVALID.error());
        }
        if let Some(expected) = hdr(EXPECTED_LAST_SEQ) {
            let last = store.last_seq();
            if expected.parse::<u64>().ok() != Some(last) {
                return refuse(errors::STREAM_WRONG_LAST_SEQUENCE.with(&[("seq", &last)]));
            }
        }
        let msg_id = hdr(MSG_ID).filter(|id| !id.is_empty() && ingest != Ingest::Mirrored);
        if let Some(id) = msg_id {
            self.dedupe.expire(now, self.config.duplicate_window);
            if let Some(&(seq, _)) = self.dedupe.by_id.get(id) {
                return Decision::Duplicate(seq);
            }
        }
        if let Some(expected) = hdr(EXPECTED_LAST_MSG_ID) {
            if expected != self.last_msg_id {
                return refuse(errors::STREAM_WRONG_LAST_MSG_ID.with(&[("id", &self.last_msg_id)]));
            }
        }
        let rollup = match hdr(ROLLUP) {
            None => None,
            Some(_) if !self.config.allow_rollup_hdrs && ingest == Ingest::Publish => {
                return refuse(errors::STREAM_ROLLUP_FAILED.err("rollup not permitted"));
            }
            Some("sub") => Some(Rollup::Subject),
            Some("all") => Some(Rollup::All),
            Some(other) => {
                return refuse(
                    errors::STREAM_ROLLUP_FAILED.err(format!("rollup value invalid: {other:?}")),
                );
            }
        };
        let counted = self.config.allow_msg_counter && ingest != Ingest::Mirrored;
        let counter = match (counted, incr) {
            (false, _) => None,
            (true, None) => return refuse(errors::MESSAGE_INCR_MISSING.error()),
            (true, Some(incr)) => {
                let source = match ingest {
                    Ingest::Sourced => hdr(super::sourcing::STREAM_SOURCE),
                    _ => None,
                };
                let applied = self
                    .counters
                    .current(subject, store.last_seq_for(subject))
                    .and_then(|current| {
                        counter::apply(&current, incr, headers, payload, subject, source)
                    });
                match applied {
                    Ok(increment) => Some(Box::new(increment)),
                    Err(e) => return refuse(e),
                }
            }
        };
        let size = counter.as_ref().map_or(headers.len() + payload.len(), |c| {
            c.headers.len() + c.payload.len()
        });
        let max = self.config.max_msg_size;
        if max > 0 && size > max as usize {
            return refuse(errors::STREAM_MESSAGE_EXCEEDS_MAXIMUM.error());
        }
        Decision::Store(Accepted {
            ttl,
            rollup,
            msg_id: msg_id.map(str::to_string),
            ttl_raised,
            // Interest retention keeps only what a consumer takes, which the
            // shell, holding the consumers, decides.
            skip: self.config.retention == Retention::Interest,
            counter,
        })
    }

    /// Checks the messages of an atomic batch (subjects as stored) as if
    /// each were stored right after the one before it, with the rules a batch
    /// adds (nats-server's `checkMsgHeadersPreClusteredProposal`). All of
    /// them are accepted, and the stream counts them as stored at the
    /// sequences following `store`'s last; or none is, and nothing changed.
    pub fn check_batch(
        &mut self,
        msgs: &[(&str, &[u8], &[u8])],
        now: i64,
        store: &impl StoreView,
    ) -> Result<Vec<Accepted>, ApiError> {
        let mut undo = BatchUndo {
            last_msg_id: self.last_msg_id.clone(),
            ids: Vec::new(),
            counters: Vec::new(),
        };
        let mut view = BatchView {
            store,
            staged: HashMap::default(),
            base: store.last_seq(),
            added: 0,
        };
        let mut accepted = Vec::with_capacity(msgs.len());
        for (i, (subject, headers, payload)) in msgs.iter().enumerate() {
            match self.check_in_batch(i, subject, headers, payload, now, &view) {
                Ok(a) => {
                    view.added += 1;
                    let seq = view.base + view.added;
                    view.staged.insert(subject, seq);
                    if let Some(id) = &a.msg_id {
                        undo.ids.push(id.clone());
                    }
                    if a.counter.is_some() {
                        undo.counters.push(self.counters.save(subject));
                    }
                    self.stored(&a, subject, seq, now);
                    accepted.push(a);
                }
                Err(e) => {
                    self.undo(undo);
                    return Err(e);
                }
            }
        }
        Ok(accepted)
    }

    fn check_in_batch(
        &mut self,
        index: usize,
        subject: &str,
        headers: &[u8],
        payload: &[u8],
        now: i64,
        view: &BatchView<'_, impl StoreView>,
    ) -> Result<Accepted, ApiError> {
        let hdr = |name| {
            if headers.is_empty() {
                None
            } else {
                header(headers, name)
            }
        };
        if hdr(EXPECTED_LAST_MSG_ID).is_some() {
            return Err(errors::ATOMIC_PUBLISH_UNSUPPORTED_HEADER_BATCH
                .with(&[("header", &EXPECTED_LAST_MSG_ID)]));
        }
        // Expectations hold for the batch as a whole: on the stream's last
        // sequence only first, on a subject only before the batch writes it.
        // (One that does not hold gets the ordinary error, from the check below.)
        if index > 0 && hdr(EXPECTED_LAST_SEQ).and_then(|v| v.parse().ok()) == Some(view.last_seq())
        {
            return Err(errors::STREAM_WRONG_LAST_SEQUENCE_CONSTANT.error());
        }
        if hdr(EXPECTED_LAST_SUBJECT_SEQ).is_some() {
            let on = hdr(EXPECTED_LAST_SUBJECT_SEQ_SUBJECT).unwrap_or(subject);
            if view.staged.contains_key(on) {
                return Err(errors::STREAM_WRONG_LAST_SEQUENCE_CONSTANT.error());
            }
        }
        match hdr(ROLLUP) {
            Some("sub") if view.staged.contains_key(subject) => {
                return Err(errors::STREAM_ROLLUP_FAILED.err("batch rollup sub invalid"));
            }
            Some("all") if index > 0 => {
                return Err(errors::STREAM_ROLLUP_FAILED.err("batch rollup all invalid"));
            }
            _ => {}
        }
        match self.check_from(Ingest::Publish, subject, headers, payload, now, view) {
            Decision::Store(a) => Ok(a),
            Decision::Duplicate(_) => {
                Err(errors::ATOMIC_PUBLISH_CONTAINS_DUPLICATE_MESSAGE.error())
            }
            Decision::Refuse(e) => Err(e),
        }
    }

    fn undo(&mut self, undo: BatchUndo) {
        for id in undo.ids {
            self.dedupe.by_id.remove(&id);
        }
        self.last_msg_id = undo.last_msg_id;
        for saved in undo.counters.into_iter().rev() {
            self.counters.restore(saved);
        }
    }

    /// `subject_delete_marker_ttl` in whole seconds; 0 when markers are off.
    fn marker_ttl_secs(&self) -> i64 {
        self.config.subject_delete_marker_ttl.max(0) / 1_000_000_000
    }

    /// The message that replaces the last one of a subject when it expires, as
    /// nats-server writes it: a marker with its own TTL that rolls the subject up.
    /// `None` when the stream has no subject delete markers.
    pub fn delete_marker(&self) -> Option<(Vec<u8>, Accepted)> {
        let secs = self.marker_ttl_secs();
        if secs <= 0 {
            return None;
        }
        let ttl = crate::format_duration(std::time::Duration::from_secs(secs as u64));
        let headers =
            format!("NATS/1.0\r\n{MARKER_REASON}: MaxAge\r\n{TTL}: {ttl}\r\n{ROLLUP}: sub\r\n\r\n");
        let accepted = Accepted {
            ttl: Some(secs),
            rollup: Some(Rollup::Subject),
            msg_id: None,
            ttl_raised: false,
            skip: false,
            counter: None,
        };
        Some((headers.into_bytes(), accepted))
    }

    /// The store took an accepted message at `seq`, under `subject`.
    pub fn stored(&mut self, accepted: &Accepted, subject: &str, seq: u64, now: i64) {
        if let Some(id) = &accepted.msg_id {
            self.dedupe.insert(id.clone(), seq, now);
            self.last_msg_id.clone_from(id);
        }
        if let Some(increment) = &accepted.counter {
            self.counters
                .stored(subject, seq, increment.counter.clone());
        }
    }

    /// Tells the counters what message `seq` on `subject` holds (read when the
    /// stream opens, and before a deletion reveals it).
    pub fn learn_counter(&mut self, subject: &str, seq: u64, headers: &[u8], payload: &[u8]) {
        self.counters
            .learn(subject, seq, counter::read(headers, payload));
    }

    /// Takes back a message id found in the store at restart, so the duplicate
    /// window spans the restart.
    pub fn remember_msg_id(&mut self, id: &str, seq: u64, ts: i64, now: i64) {
        if now - ts < self.config.duplicate_window {
            self.dedupe.insert(id.to_string(), seq, ts);
        }
        self.last_msg_id = id.to_string();
    }

    pub fn ack(&self, seq: u64, duplicate: bool) -> PubAck {
        PubAck {
            error: None,
            stream: self.config.name.clone(),
            seq,
            domain: self.domain.clone(),
            duplicate,
            val: None,
            batch: None,
            count: None,
        }
    }

    /// The acknowledgement of a counter increment: with the total.
    pub fn counter_ack(&self, seq: u64, total: String) -> PubAck {
        PubAck {
            val: Some(total),
            ..self.ack(seq, false)
        }
    }

    /// The acknowledgement of an atomic batch's commit.
    pub fn batch_ack(&self, seq: u64, id: String, count: u64) -> PubAck {
        PubAck {
            batch: Some(id),
            count: Some(count),
            ..self.ack(seq, false)
        }
    }

    pub fn refusal(&self, error: ApiError) -> PubAck {
        PubAck {
            error: Some(error),
            stream: self.config.name.clone(),
            seq: 0,
            domain: None,
            duplicate: false,
            val: None,
            batch: None,
            count: None,
        }
    }
}

/// `Nats-TTL`: `never`, a Go duration of at least a second, or whole seconds.
/// Seconds, -1 for never.
pub fn parse_ttl(value: &str) -> Result<i64, ApiError> {
    if value.eq_ignore_ascii_case("never") {
        return Ok(-1);
    }
    if let Some(ns) = parse_go_duration(value) {
        if ns < 1_000_000_000 {
            return Err(errors::MESSAGE_TTL_INVALID.error());
        }
        return Ok(ns / 1_000_000_000);
    }
    match value.parse::<i64>() {
        Ok(t) if t >= 0 => Ok(t),
        _ => Err(errors::MESSAGE_TTL_INVALID.error()),
    }
}

/// Go's `time.ParseDuration`: `[-]` then one or more `<number><unit>`, units
/// ns, us (µs), ms, s, m, h. Nanoseconds.
pub fn parse_go_duration(text: &str) -> Option<i64> {
    let (neg, mut rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return None;
        }
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    if total > i64::MAX as f64 {
        return None;
    }
    Some(if neg { -(total as i64) } else { total as i64 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jetstream::config::ServerLimits;

    struct View {
        last: u64,
        per_subject: HashMap<String, u64>,
    }

    impl StoreView for View {
        fn last_seq(&self) -> u64 {
            self.last
        }
        fn last_seq_for(&self, subject: &str) -> u64 {
            self.per_subject.get(subject).copied().unwrap_or(0)
        }
    }

    fn stream(json: &str) -> Stream {
        let cfg: StreamConfig = serde_json::from_str(json).unwrap();
        Stream::new(cfg.normalized(&ServerLimits::default()).unwrap(), None)
    }

    fn hdrs(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut h = b"NATS/1.0\r\n".to_vec();
        for (k, v) in pairs {
            h.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        h.extend_from_slice(b"\r\n");
        h
    }

    const SEC: i64 = 1_000_000_000;

    /// Feeds a message through check and, when accepted, a store at the next sequence.
    fn publish(s: &mut Stream, view: &mut View, subject: &str, h: &[u8], now: i64) -> Decision {
        let d = s.check(subject, h, b"x", now, view);
        if let Decision::Store(a) = &d {
            view.last += 1;
            view.per_subject.insert(subject.to_string(), view.last);
            s.stored(a, subject, view.last, now);
        }
        d
    }

    #[test]
    fn message_ids_deduplicate_within_the_window_only() {
        let mut s = stream(r#"{"name":"S","subjects":["s.>"],"duplicate_window":2000000000}"#);
        let mut v = View {
            last: 0,
            per_subject: HashMap::new(),
        };
        let h = hdrs(&[(MSG_ID, "a")]);
        assert!(matches!(
            publish(&mut s, &mut v, "s.1", &h, 0),
            Decision::Store(_)
        ));
        assert_eq!(
            publish(&mut s, &mut v, "s.1", &h, SEC),
            Decision::Duplicate(1)
        );
        assert!(matches!(
            publish(&mut s, &mut v, "s.1", &h, 3 * SEC),
            Decision::Store(_)
        ));
        assert_eq!(
            serde_json::to_string(&s.ack(1, true)).unwrap(),
            r#"{"stream":"S","seq":1,"duplicate":true}"#
        );
    }

    #[test]
    fn expectations_are_checked_with_nats_servers_errors() {
        let mut s = stream(r#"{"name":"ORDERS","subjects":["ORDERS.*"]}"#);
        let mut v = View {
            last: 0,
            per_subject: HashMap::new(),
        };
        for i in 0..10 {
            let id = format!("m{i}");
            publish(&mut s, &mut v, "ORDERS.new", &hdrs(&[(MSG_ID, &id)]), 0);
        }
        let cases = [
            (
                hdrs(&[(EXPECTED_LAST_SEQ, "1")]),
                10071,
                "wrong last sequence: 10",
            ),
            (
                hdrs(&[(EXPECTED_LAST_SUBJECT_SEQ, "1")]),
                10071,
                "wrong last sequence: 10",
            ),
            (
                hdrs(&[(EXPECTED_STREAM, "OTHER")]),
                10060,
                "expected stream does not match",
            ),
            (
                hdrs(&[(EXPECTED_LAST_MSG_ID, "nope")]),
                10070,
                "wrong last msg ID: m9",
            ),
            (hdrs(&[(TTL, "5s")]), 10166, "per-message TTL is disabled"),
            (hdrs(&[(ROLLUP, "sub")]), 10111, "rollup not permitted"),
        ];
        for (h, code, text) in cases {
            match s.check("ORDERS.new", &h, b"x", 0, &v) {
                Decision::Refuse(e) => {
                    assert_eq!((e.err_code, e.description.as_str()), (code, text))
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        for h in [
            hdrs(&[(EXPECTED_LAST_SEQ, "10")]),
            hdrs(&[(EXPECTED_LAST_SUBJECT_SEQ, "10")]),
            hdrs(&[
                (EXPECTED_LAST_SUBJECT_SEQ, "0"),
                (EXPECTED_LAST_SUBJECT_SEQ_SUBJECT, "ORDERS.other"),
            ]),
            hdrs(&[(EXPECTED_LAST_MSG_ID, "m9")]),
            hdrs(&[(EXPECTED_STREAM, "ORDERS")]),
        ] {
            assert!(matches!(
                s.check("ORDERS.new", &h, b"x", 0, &v),
                Decision::Store(_)
            ));
        }
        let refusal = s.refusal(errors::STREAM_WRONG_LAST_SEQUENCE.with(&[("seq", &10)]));
        assert_eq!(
            serde_json::to_string(&refusal).unwrap(),
            r#"{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 10"},"stream":"ORDERS","seq":0}"#
        );
    }

    #[test]
    fn ttls_and_rollups_when_allowed() {
        let mut s = stream(
            r#"{"name":"E","subjects":["events.*"],"allow_msg_ttl":true,"allow_rollup_hdrs":true}"#,
        );
        let v = View {
            last: 0,
            per_subject: HashMap::new(),
        };
        let check = |s: &mut Stream, h: &[(&str, &str)]| s.check("events.a", &hdrs(h), b"x", 0, &v);
        assert_eq!(
            check(&mut s, &[(TTL, "1s")]),
            Decision::Store(Accepted {
                ttl: Some(1),
                rollup: None,
                msg_id: None,
                ttl_raised: false,
                skip: false,
                counter: None,
            })
        );
        assert!(matches!(
            check(&mut s, &[(TTL, "never")]),
            Decision::Store(Accepted { ttl: Some(-1), .. })
        ));
        assert!(matches!(
            check(&mut s, &[(TTL, "60")]),
            Decision::Store(Accepted { ttl: Some(60), .. })
        ));
        for bad in ["bogus", "500ms", "-3"] {
            match check(&mut s, &[(TTL, bad)]) {
                Decision::Refuse(e) => {
                    assert_eq!(e.description, "invalid per-message TTL", "{bad}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(matches!(
            check(&mut s, &[(ROLLUP, "all")]),
            Decision::Store(Accepted {
                rollup: Some(Rollup::All),
                ..
            })
        ));
        match check(&mut s, &[(ROLLUP, "x")]) {
            Decision::Refuse(e) => assert_eq!(e.description, "rollup value invalid: \"x\""),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn delete_markers_and_the_ttls_they_raise() {
        let mut s = stream(
            r#"{"name":"KV_b","subjects":["$KV.b.>"],"subject_delete_marker_ttl":5000000000}"#,
        );
        let (headers, accepted) = s.delete_marker().unwrap();
        assert_eq!(
            headers,
            b"NATS/1.0\r\nNats-Marker-Reason: MaxAge\r\nNats-TTL: 5s\r\nNats-Rollup: sub\r\n\r\n"
        );
        assert_eq!(
            (accepted.ttl, accepted.rollup),
            (Some(5), Some(Rollup::Subject))
        );
        assert!(is_delete_marker(&headers));
        assert!(is_delete_marker(&hdrs(&[(KV_OPERATION, "PURGE")])));
        assert!(!is_delete_marker(&hdrs(&[(KV_OPERATION, "DEL")])));
        assert!(!is_delete_marker(b""));
        let v = View {
            last: 0,
            per_subject: HashMap::new(),
        };
        match s.check("$KV.b.k", &hdrs(&[(TTL, "1s")]), b"x", 0, &v) {
            Decision::Store(a) => assert_eq!((a.ttl, a.ttl_raised), (Some(5), true)),
            other => panic!("{other:?}"),
        }
        match s.check("$KV.b.k", &hdrs(&[(TTL, "9s")]), b"x", 0, &v) {
            Decision::Store(a) => assert_eq!((a.ttl, a.ttl_raised), (Some(9), false)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            with_header(&hdrs(&[("A", "1"), (TTL, "1s")]), TTL, "5"),
            b"NATS/1.0\r\nA: 1\r\nNats-TTL: 5\r\n\r\n"
        );
        assert!(stream(r#"{"name":"P"}"#).delete_marker().is_none());
    }

    #[test]
    fn a_batch_is_checked_as_stored_in_order_and_leaves_nothing_when_refused() {
        let mut s = stream(
            r#"{"name":"B","subjects":["b.>"],"allow_atomic":true,"allow_msg_counter":true}"#,
        );
        let v = View {
            last: 0,
            per_subject: HashMap::new(),
        };
        let incr = hdrs(&[(counter::INCR, "+1"), (MSG_ID, "a")]);
        let again = hdrs(&[(counter::INCR, "+1")]);
        let bad = hdrs(&[(counter::INCR, "+1"), (EXPECTED_LAST_MSG_ID, "a")]);
        let refused = s.check_batch(
            &[
                ("b.x", &incr, b""),
                ("b.x", &again, b""),
                ("b.x", &bad, b""),
            ],
            0,
            &v,
        );
        assert_eq!(refused.unwrap_err().err_code, 10177);
        // Nothing of the refused batch counts: not its id, not its increments.
        let batch = s
            .check_batch(&[("b.x", &incr, b""), ("b.x", &again, b"")], 0, &v)
            .expect("accepted");
        let totals: Vec<String> = batch
            .iter()
            .map(|a| a.counter.as_ref().unwrap().counter.total.to_string())
            .collect();
        assert_eq!(totals, ["1", "2"]);
        let dup = s.check_batch(
            &[("b.y", &hdrs(&[(counter::INCR, "1"), (MSG_ID, "a")]), b"")],
            0,
            &v,
        );
        assert_eq!(dup.unwrap_err().err_code, 10201);
        let twice = hdrs(&[(counter::INCR, "1"), (MSG_ID, "c")]);
        let dup = s.check_batch(&[("b.y", &twice, b""), ("b.z", &twice, b"")], 0, &v);
        assert_eq!(dup.unwrap_err().err_code, 10201);
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_go_duration("1h2m3.5s"), Some(3_723_500_000_000));
        assert_eq!(parse_go_duration("300ms"), Some(300_000_000));
        assert_eq!(parse_go_duration("1.5us"), Some(1_500));
        assert_eq!(parse_go_duration("5"), None);
        assert_eq!(parse_go_duration(""), None);
        assert_eq!(
            header(b"NATS/1.0\r\nnats-msg-id: x \r\n\r\n", MSG_ID),
            Some("x")
        );
    }
}
