//! A consumer as a state machine without I/O: which stream sequence it hands
//! out next, to which waiting pull request, what is pending acknowledgement
//! and when it is due again, and what each ack does. Time is passed in (ns
//! since the epoch) and the stream is seen through [`Source`], so the same
//! core runs under the shard's task today and under a Raft log later. The
//! host loads the messages, builds the ack subjects and sends; the core says
//! what to send through [`Action`]s.
//!
//! Priority groups follow nats-server (ADR-42): `overflow` serves a request
//! only once the consumer is behind by its `min_pending` or
//! `min_ack_pending`, `pinned_client` hands everything to one puller until it
//! stops asking for `priority_timeout` (or is unpinned), and `prioritized`
//! serves the waiting requests of the lowest `priority` first.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use super::consumer_config::{
    AckPolicy, ConsumerConfig, DeliverPolicy, PriorityPolicy, ReplayPolicy,
};
use super::stream::parse_go_duration;
use super::GO_ZERO_TIME;

/// What the core needs to know of its stream.
pub trait Source {
    /// The first message at or after `start` whose subject matches one of
    /// `filters` (none: every subject), with its size as `max_bytes` counts it.
    fn next_match(&self, start: u64, filters: &[String]) -> Option<(u64, u64)>;
    /// The size of a stored message; `None` once it is gone.
    fn size_of(&self, seq: u64) -> Option<u64>;
    /// How many messages at or after `start` match `filters`.
    fn num_pending(&self, start: u64, filters: &[String]) -> u64;
    /// The last sequence the stream has assigned.
    fn last_seq(&self) -> u64;
    /// When a stored message was stored (ns); `None` once it is gone.
    fn time_of(&self, seq: u64) -> Option<i64>;
    /// The last sequence of each subject matching `filters`, ascending.
    fn last_per_subject(&self, filters: &[String]) -> Vec<u64>;
    /// The first sequence stored at or after `ts` (ns).
    fn seq_from_time(&self, ts: i64) -> u64;
}

/// Who still listens on a pull request's inbox. A request whose client went
/// away (its inbox lost its subscriber) is dropped, as nats-server drops it,
/// so that what it asked for goes to those still asking.
pub trait Listeners {
    fn listens(&self, inbox: &str) -> bool;
}

/// A consumer and a stream sequence, as consumer info reports `delivered`
/// and `ack_floor`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequencePair {
    pub consumer: u64,
    pub stream: u64,
}

/// What a consumer must keep across a restart (and what a replicated
/// consumer will replicate): nats-server's `ConsumerState`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerState {
    pub delivered: SequencePair,
    pub ack_floor: SequencePair,
    /// Stream sequence → (consumer sequence of its latest delivery, when, ns).
    pub pending: BTreeMap<u64, (u64, i64)>,
    /// Stream sequence → deliveries, for those delivered more than once.
    pub redelivered: BTreeMap<u64, u64>,
    /// Delivered `max_deliver` times and never acknowledged: a stream that
    /// keeps messages for its consumers keeps these (as nats-server does).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub exhausted: BTreeSet<u64>,
}

/// `delivered` and `ack_floor` as consumer info shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SequenceInfo {
    pub consumer_seq: u64,
    pub stream_seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_active: Option<String>,
}

/// nats-server's `ConsumerInfo`, in its field order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConsumerInfo {
    pub stream_name: String,
    pub name: String,
    pub created: String,
    pub config: ConsumerConfig,
    pub delivered: SequenceInfo,
    pub ack_floor: SequenceInfo,
    pub num_ack_pending: usize,
    pub num_redelivered: usize,
    pub num_waiting: usize,
    pub num_pending: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub push_bound: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    #[serde(skip_serializing_if = "is_zero")]
    pub pause_remaining: i64,
    pub ts: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub priority_groups: Vec<PriorityGroupState>,
}

/// A priority group in consumer info. nats-server reports the first group
/// only, with the consumer's one pin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PriorityGroupState {
    pub group: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pinned_client_id: String,
    /// Go's zero time while nobody is pinned, as nats-server writes it.
    pub pinned_ts: String,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// RFC 3339 of a time in ns since the epoch, as Go prints `time.Time`.
fn rfc3339(ns: i64) -> String {
    let ns = ns.max(0) as u64;
    crate::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns))
}

/// A delivery waiting for its ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// The consumer sequence of its latest delivery.
    pub consumer_seq: u64,
    /// When it was last delivered (ns).
    pub delivered_at: i64,
    /// How many times it has been delivered.
    pub deliveries: u64,
    /// When it is due for redelivery (ns).
    pub due: i64,
}

/// The body of `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>` (or of `+NXT`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PullRequest {
    #[serde(default)]
    pub batch: i64,
    /// Nanoseconds from now; 0: no expiry.
    #[serde(default)]
    pub expires: i64,
    #[serde(default)]
    pub no_wait: bool,
    #[serde(default)]
    pub max_bytes: i64,
    #[serde(default, rename = "idle_heartbeat")]
    pub heartbeat: i64,
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub min_pending: i64,
    #[serde(default)]
    pub min_ack_pending: i64,
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub priority: i64,
    /// It came as JSON. nats-server reads priority group fields (and so
    /// checks them) only then: a bare batch number pulls without a group.
    #[serde(skip)]
    pub grouped: bool,
}

impl PullRequest {
    /// Reads a request as nats-server does: empty is one message, a number is
    /// a batch of that many, otherwise JSON. Errors are the text after
    /// `Bad Request - `.
    pub fn parse(body: &[u8]) -> Result<PullRequest, String> {
        let body = body.trim_ascii();
        let mut req = match body.first() {
            None => PullRequest::default(),
            Some(b'{') => {
                // Clients send `null` for what they leave out (Go reads it as zero).
                let mut value: serde_json::Value =
                    serde_json::from_slice(body).map_err(|e| e.to_string())?;
                if let serde_json::Value::Object(fields) = &mut value {
                    fields.retain(|_, v| !v.is_null());
                }
                let mut req =
                    serde_json::from_value::<PullRequest>(value).map_err(|e| e.to_string())?;
                req.grouped = true;
                req
            }
            Some(_) => PullRequest {
                batch: std::str::from_utf8(body)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(1),
                ..Default::default()
            },
        };
        if req.heartbeat > 0 && req.heartbeat.saturating_mul(2) > req.expires {
            return Err("heartbeat value too large".into());
        }
        if req.batch <= 0 {
            req.batch = 1;
        }
        Ok(req)
    }
}

/// What an ack message says, from its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckKind {
    Ack,
    /// Redeliver, after the delay (ns) when there is one.
    Nak(Option<i64>),
    /// Still working: restart the ack wait.
    Progress,
    /// Ack, then treat the body as a pull request from the ack's reply subject.
    Next(PullRequest),
    /// Never redeliver; the reason goes into the advisory.
    Term(String),
}

impl AckKind {
    /// nats-server's reading of an ack body: anything it does not know acks.
    pub fn parse(body: &[u8]) -> AckKind {
        let text = std::str::from_utf8(body).unwrap_or("").trim();
        let (word, rest) = match text.find(|c: char| c.is_ascii_whitespace()) {
            Some(i) => (&text[..i], text[i..].trim()),
            None => (text, ""),
        };
        match word {
            "-NAK" => AckKind::Nak(parse_nak_delay(rest)),
            "+WPI" => AckKind::Progress,
            "+NXT" => AckKind::Next(PullRequest::parse(rest.as_bytes()).unwrap_or(PullRequest {
                batch: 1,
                ..Default::default()
            })),
            "+TERM" => AckKind::Term(rest.to_string()),
            _ => AckKind::Ack,
        }
    }
}

fn parse_nak_delay(rest: &str) -> Option<i64> {
    #[derive(Deserialize)]
    struct Delay {
        #[serde(default)]
        delay: i64,
    }
    if rest.is_empty() {
        return None;
    }
    let delay = if rest.starts_with('{') {
        serde_json::from_str::<Delay>(rest).ok()?.delay
    } else {
        parse_go_duration(rest)?
    };
    (delay > 0).then_some(delay)
}

/// A pull status line as nats-server writes it: `NATS/1.0 <code> <text>` with
/// the pending counts where it adds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    NoMessages,
    RequestTimeout {
        messages: u64,
        bytes: u64,
    },
    MessageSizeExceedsMaxBytes {
        messages: u64,
        bytes: u64,
    },
    IdleHeartbeat {
        last_consumer: u64,
        last_stream: u64,
        /// A push consumer waiting for the answer to this flow control request.
        stalled: Option<Rc<str>>,
    },
    ExceededMaxWaiting,
    RequestsPending,
    PushBased,
    BadRequest(String),
    /// 423: the request names a pin that is not the current one.
    PinIdMismatch,
    /// 423: a waiting request holds a pin that was given up meanwhile.
    WrongPinId {
        messages: u64,
        bytes: u64,
    },
    /// 409 with a text of nats-server's (`Exceeded MaxRequestBatch of 10` ...).
    Conflict(String),
}

impl Status {
    /// The header block, ready to send with an empty payload.
    pub fn header(&self) -> String {
        let counts = |code: &str, messages: &u64, bytes: &u64| {
            format!(
                "NATS/1.0 {code}\r\nNats-Pending-Messages: {messages}\r\nNats-Pending-Bytes: {bytes}\r\n\r\n"
            )
        };
        match self {
            Status::NoMessages => "NATS/1.0 404 No Messages\r\n\r\n".into(),
            Status::RequestTimeout { messages, bytes } => {
                counts("408 Request Timeout", messages, bytes)
            }
            Status::MessageSizeExceedsMaxBytes { messages, bytes } => {
                counts("409 Message Size Exceeds MaxBytes", messages, bytes)
            }
            Status::IdleHeartbeat {
                last_consumer,
                last_stream,
                stalled,
            } => {
                let mut text = format!(
                    "NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: {last_consumer}\r\nNats-Last-Stream: {last_stream}\r\n"
                );
                if let Some(reply) = stalled {
                    text.push_str(&format!("Nats-Consumer-Stalled: {reply}\r\n"));
                }
                text.push_str("\r\n");
                text
            }
            Status::ExceededMaxWaiting => "NATS/1.0 409 Exceeded MaxWaiting\r\n\r\n".into(),
            Status::RequestsPending => "NATS/1.0 408 Requests Pending\r\n\r\n".into(),
            Status::PushBased => "NATS/1.0 409 Consumer is push based\r\n\r\n".into(),
            Status::BadRequest(text) => format!("NATS/1.0 400 Bad Request - {text}\r\n\r\n"),
            Status::PinIdMismatch => "NATS/1.0 423 Nats-Pin-Id mismatch\r\n\r\n".into(),
            Status::WrongPinId { messages, bytes } => {
                counts("423 Nats-Wrong-Pin-Id", messages, bytes)
            }
            Status::Conflict(text) => format!("NATS/1.0 409 {text}\r\n\r\n"),
        }
    }
}

/// What the host is to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Load `stream_seq` and send it to `to` with the ack subject these numbers make.
    Deliver {
        to: Rc<str>,
        stream_seq: u64,
        consumer_seq: u64,
        deliveries: u64,
        /// Messages left for the consumer after this one (the ack subject's last token).
        pending: u64,
        /// `pinned_client`: the pin it goes under (the `Nats-Pin-Id` header).
        pin: Option<Rc<str>>,
    },
    /// Send this status to `to` (headers only).
    Status { to: Rc<str>, status: Status },
    /// Ask the push subscriber to answer on `reply` once it has taken what
    /// came before (`NATS/1.0 100 FlowControl Request`).
    FlowControl { to: Rc<str>, reply: Rc<str> },
    /// Nothing used the consumer for its inactive threshold: it is to go.
    Inactive,
    /// `pinned_client`: the request on `group` that was served first is
    /// pinned (`$JS.EVENT.ADVISORY.CONSUMER.PINNED`).
    Pinned { group: String, id: Rc<str> },
    /// `pinned_client`: the pin is given up (`…CONSUMER.UNPINNED`).
    Unpinned { group: String, reason: UnpinReason },
    /// Its `pause_until` has passed: it delivers again
    /// (`$JS.EVENT.ADVISORY.CONSUMER.PAUSE` with `paused: false`).
    Resumed,
    /// The consumer no longer needs `stream_seq` (acknowledged, terminated,
    /// or delivered without acks): a stream that keeps messages only for its
    /// consumers (interest and work queue retention) drops it unless another
    /// consumer still needs it. Given only after [`Consumer::report_releases`].
    Release { stream_seq: u64 },
    /// `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES`: no more redeliveries.
    MaxDeliveries { stream_seq: u64, deliveries: u64 },
    /// `$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED`.
    Terminated {
        stream_seq: u64,
        consumer_seq: u64,
        deliveries: u64,
        reason: String,
    },
    /// `$JS.EVENT.ADVISORY.CONSUMER.MSG_NAKED`.
    Naked {
        stream_seq: u64,
        consumer_seq: u64,
        deliveries: u64,
    },
    /// `$JS.EVENT.METRIC.CONSUMER.ACK`: an explicit ack that `sample_freq` picked,
    /// `ack_time` (ns) after the delivery it acknowledges.
    AckSampled {
        stream_seq: u64,
        consumer_seq: u64,
        deliveries: u64,
        ack_time: i64,
    },
}

/// Why a pin was given up, as the unpinned advisory says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnpinReason {
    /// `$JS.API.CONSUMER.UNPIN`.
    Admin,
    /// The pinned client sent no request for `priority_timeout`.
    Timeout,
}

impl UnpinReason {
    pub fn as_str(self) -> &'static str {
        match self {
            UnpinReason::Admin => "admin",
            UnpinReason::Timeout => "timeout",
        }
    }
}

/// The priority group fields of a waiting request (one sent as JSON).
#[derive(Debug, Clone)]
struct GroupAsk {
    group: String,
    /// The pin it claims; empty: none.
    pin: String,
    min_pending: i64,
    min_ack_pending: i64,
    priority: i64,
}

/// `pinned_client`: who holds the pin.
#[derive(Debug, Clone)]
struct Pin {
    id: Rc<str>,
    group: String,
    /// When it was given (ns), for consumer info.
    since: i64,
    /// When it lapses unless the pinned client asks again (ns).
    lapses_at: i64,
}

/// A pull request waiting for messages.
#[derive(Debug, Clone)]
struct Waiting {
    reply: Rc<str>,
    /// Messages still wanted.
    remaining: u64,
    /// Bytes still allowed; 0: no byte limit.
    bytes_left: u64,
    has_byte_limit: bool,
    no_wait: bool,
    delivered: u64,
    expires_at: Option<i64>,
    heartbeat: i64,
    next_heartbeat: i64,
    ask: Option<GroupAsk>,
}

impl Waiting {
    /// Its place among requests served lowest priority first; one without a
    /// group comes after all of them.
    fn priority(&self) -> i64 {
        self.ask.as_ref().map_or(i64::MAX, |a| a.priority)
    }

    fn claims_pin(&self) -> &str {
        self.ask.as_ref().map_or("", |a| a.pin.as_str())
    }
}

/// What becomes of the request at the head of the queue when a message
/// comes up for it.
enum Verdict {
    Serve,
    /// Not this one now: it goes behind the others.
    Skip,
    /// It ends with this status.
    End(Status),
    /// Nobody listens for it any more: it goes without a word.
    Unheard,
}

/// How deliveries are paced: `replay_policy: original` replays the stream at
/// the pace it was stored in until the consumer reaches what the stream held
/// when it started, and `rate_limit_bps` caps the bytes sent per second.
#[derive(Debug, Default)]
struct Pacing {
    /// Replaying until the stream sequence delivered reaches this.
    replay_through: Option<u64>,
    /// The stored time of the message replayed last, and when it was sent.
    last_replayed: Option<(i64, i64)>,
    bucket: Option<TokenBucket>,
    /// When the message held back may go, for the timer.
    held_until: Option<i64>,
}

/// Bytes allowed per second, with a burst of one message of the largest size
/// the stream takes, as nats-server's limiter has.
#[derive(Debug)]
struct TokenBucket {
    bytes_per_second: f64,
    burst: f64,
    tokens: f64,
    refilled_at: i64,
}

impl TokenBucket {
    fn new(bits_per_second: u64, burst: u64, now: i64) -> TokenBucket {
        TokenBucket {
            bytes_per_second: (bits_per_second / 8).max(1) as f64,
            burst: burst.max(1) as f64,
            tokens: burst.max(1) as f64,
            refilled_at: now,
        }
    }

    /// When `size` bytes may go (`now` or later); takes them when that is now.
    fn take(&mut self, size: u64, now: i64) -> i64 {
        let elapsed = now.saturating_sub(self.refilled_at).max(0) as f64 / 1e9;
        self.tokens = (self.tokens + elapsed * self.bytes_per_second).min(self.burst);
        self.refilled_at = now;
        // A message over the burst waits for a full bucket, not forever.
        let need = (size as f64).min(self.burst);
        if self.tokens >= need {
            self.tokens -= need;
            return now;
        }
        let wait = (need - self.tokens) / self.bytes_per_second * 1e9;
        now.saturating_add(wait.ceil() as i64)
    }
}

/// A gap between stored messages that replay waits out (nats-server's).
const REPLAY_MIN_GAP: i64 = 1_000_000;
/// The burst of `rate_limit_bps` when the stream sets no `max_msg_size`:
/// nats-server's default `max_payload`.
const DEFAULT_RATE_BURST: u64 = 1024 * 1024;

/// The delivery side of a push consumer.
#[derive(Debug)]
struct Push {
    to: Rc<str>,
    /// Someone listens on the deliver subject (in the deliver group, with one).
    active: bool,
    next_heartbeat: i64,
    flow: Option<Flow>,
    /// What flow control requests reply under.
    flow_prefix: Rc<str>,
}

/// nats-server's flow control: the bytes in flight to a push subscriber are
/// held under a window that starts at 1/16 of its limit and doubles with each
/// request answered; a request goes out once half the window is in flight.
#[derive(Debug)]
struct Flow {
    limit: u64,
    window: u64,
    /// Delivered and not yet covered by an answered request.
    in_flight: u64,
    /// The request waiting for its answer, and the bytes its answer releases.
    outstanding: Option<(Rc<str>, u64)>,
    prefix: Rc<str>,
    requests: u64,
    /// The least a message counts for: a sourcing consumer delivers into a
    /// stream's internal queue, bounded in messages, not bytes.
    least: u64,
}

/// nats-server's flow control limit (`JsFlowControlMaxPending`).
pub const FLOW_CONTROL_LIMIT: u64 = 32 * 1024 * 1024;

/// At most this many deliveries of a sourcing consumer are in flight: a
/// mirror or source reads them from its stream's internal queue, which drops
/// what overflows it (small messages under a 32 MiB window overflowed it, and
/// a catching-up mirror lost deliveries and started over, again and again).
pub const SOURCING_IN_FLIGHT: u64 = 2048;
const _: () = assert!(SOURCING_IN_FLIGHT as usize * 4 <= crate::internal::INTERNAL_QUEUE);

impl Flow {
    fn new(prefix: Rc<str>, sourcing: bool) -> Flow {
        Flow {
            limit: FLOW_CONTROL_LIMIT,
            window: FLOW_CONTROL_LIMIT / 16,
            in_flight: 0,
            outstanding: None,
            prefix,
            requests: 0,
            least: if sourcing {
                FLOW_CONTROL_LIMIT / SOURCING_IN_FLIGHT
            } else {
                0
            },
        }
    }

    fn stalled(&self) -> bool {
        self.in_flight > self.window
    }

    /// Counts `size` bytes sent; a request to send when half the window is used.
    fn sent(&mut self, size: u64) -> Option<Rc<str>> {
        let size = size.max(self.least);
        self.in_flight += size;
        match &mut self.outstanding {
            None if self.in_flight > self.window / 2 => Some(self.request()),
            Some((_, covered)) if self.in_flight - *covered >= self.window => {
                *covered += size;
                None
            }
            _ => None,
        }
    }

    fn request(&mut self) -> Rc<str> {
        self.requests += 1;
        let reply: Rc<str> = Rc::from(format!("{}{}", self.prefix, self.requests));
        self.outstanding = Some((reply.clone(), self.in_flight));
        reply
    }

    /// The subscriber answered on `reply`; whether it was the request waited for.
    fn answered(&mut self, reply: &str) -> bool {
        match self.outstanding.take() {
            Some((r, covered)) if &*r == reply => {
                self.window = (self.window * 2).min(self.limit);
                self.in_flight = self.in_flight.saturating_sub(covered);
                true
            }
            other => {
                self.outstanding = other;
                false
            }
        }
    }
}

/// The consumer's state and its rules.
#[derive(Debug)]
pub struct Consumer {
    cfg: ConsumerConfig,
    /// The state of the generator that picks the acks `sample_freq` reports.
    sampler: u64,
    filters: Vec<String>,
    /// The next stream sequence a new delivery starts looking at.
    next_seq: u64,
    delivered: SequencePair,
    ack_floor: SequencePair,
    pending: BTreeMap<u64, Pending>,
    /// (due, stream sequence) of every pending delivery, for the next deadline.
    due: BTreeSet<(i64, u64)>,
    /// Sequences to redeliver, in the order they became due.
    redeliver: VecDeque<u64>,
    waiting: VecDeque<Waiting>,
    /// `deliver_policy: last_per_subject`: the last message of each subject,
    /// handed out before anything newer.
    starting: VecDeque<u64>,
    /// Matching messages not delivered yet, kept up to date by appends.
    num_pending: u64,
    /// When something was last delivered and last acknowledged (ns).
    last_delivered_at: Option<i64>,
    last_acked_at: Option<i64>,
    push: Option<Push>,
    /// Since when nothing has used the consumer (a pull request or a
    /// delivery; for push, since it lost its subscriber), for the inactive
    /// threshold.
    idle_since: i64,
    /// When a full queue was last swept of requests nobody hears.
    unheard_swept: i64,
    pacing: Pacing,
    /// `Action::Inactive` was given (once).
    inactive_told: bool,
    /// The stream keeps messages for its consumers: give `Action::Release`.
    releases: bool,
    /// See [`ConsumerState::exhausted`]; kept only when `releases`.
    exhausted: BTreeSet<u64>,
    /// Delivers nothing before this time (ns), from `pause_until`; cleared
    /// by the tick that passes it.
    paused_until: Option<i64>,
    /// `pinned_client`: the current pin; not kept across restarts (nor by
    /// nats-server): the first puller after one is pinned afresh.
    pin: Option<Pin>,
    /// Pin ids are this (random, from the host) and a count, as NUIDs are.
    pin_prefix: Rc<str>,
    pins_made: u64,
}

/// The first sequence stored at or after `opt_start_time` (1 without one).
fn start_time_seq(cfg: &ConsumerConfig, source: &impl Source) -> u64 {
    cfg.opt_start_time
        .as_deref()
        .and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .map_or(1, |t| {
            source.seq_from_time(t.unix_timestamp_nanos().clamp(0, i64::MAX as i128) as i64)
        })
}

/// Why a reset is refused (`JSConsumerInvalidResetErr`'s `{err}`, in
/// nats-server's words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResetError {
    #[error("below start seq")]
    BelowStartSeq,
    #[error("below start time")]
    BelowStartTime,
    #[error("not allowed")]
    NotAllowed,
}

/// A due time that never comes.
const NEVER: i64 = i64::MAX;

/// Where the next delivery comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Redelivery,
    Starting,
    New,
}

impl Consumer {
    /// A new consumer on `source`, positioned as its deliver policy says.
    pub fn new(cfg: ConsumerConfig, source: &impl Source) -> Consumer {
        let filters: Vec<String> = cfg.filters().into_iter().map(str::to_string).collect();
        let last = source.last_seq();
        let mut starting = VecDeque::new();
        let start = match cfg.deliver_policy {
            DeliverPolicy::All => 1,
            DeliverPolicy::New => last + 1,
            DeliverPolicy::Last => source
                .last_per_subject(&filters)
                .last()
                .copied()
                .unwrap_or(last + 1),
            DeliverPolicy::LastPerSubject => {
                starting = source.last_per_subject(&filters).into();
                last + 1
            }
            DeliverPolicy::ByStartSequence => cfg.opt_start_seq.max(1),
            DeliverPolicy::ByStartTime => start_time_seq(&cfg, source),
        };
        let before = starting.front().copied().unwrap_or(start).saturating_sub(1);
        let mut consumer = Consumer {
            num_pending: starting.len() as u64 + source.num_pending(start, &filters),
            cfg,
            sampler: 1,
            filters,
            next_seq: start,
            delivered: SequencePair {
                consumer: 0,
                stream: before,
            },
            ack_floor: SequencePair {
                consumer: 0,
                stream: before,
            },
            pending: BTreeMap::new(),
            due: BTreeSet::new(),
            redeliver: VecDeque::new(),
            waiting: VecDeque::new(),
            starting,
            last_delivered_at: None,
            last_acked_at: None,
            push: None,
            idle_since: 0,
            unheard_swept: i64::MIN,
            pacing: Pacing::default(),
            inactive_told: false,
            releases: false,
            exhausted: BTreeSet::new(),
            paused_until: None,
            pin: None,
            pin_prefix: Rc::from(""),
            pins_made: 0,
        };
        consumer.paused_until = consumer.cfg.pause_until_ns();
        if consumer.cfg.replay_policy == ReplayPolicy::Original {
            consumer.pacing.replay_through = Some(source.last_seq());
        }
        consumer
    }

    /// The consumer starts serving at `now`. A push consumer's flow control
    /// requests are replies under `flow_prefix`, and it delivers nothing until
    /// [`Self::set_interest`] says someone listens. Pins it gives start with
    /// `pin_prefix` (random, so that no pin of an earlier run matches).
    pub fn begin(&mut self, now: i64, flow_prefix: &str, pin_prefix: &str) {
        self.idle_since = now;
        self.set_rate_limit(DEFAULT_RATE_BURST, now);
        self.pin_prefix = Rc::from(pin_prefix);
        // FNV-1a of the random pin prefix seeds the ack sampler (never zero).
        self.sampler = pin_prefix.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        }) | 1;
        // A pause already over says nothing when it ends.
        self.paused_until = self.paused_until.filter(|&until| until > now);
        let flow_prefix: Rc<str> = Rc::from(flow_prefix);
        self.push = (!self.cfg.is_pull()).then(|| Push {
            to: Rc::from(self.cfg.deliver_subject.as_str()),
            active: false,
            next_heartbeat: now.saturating_add(self.cfg.heartbeat),
            flow: self
                .cfg
                .flow_control
                .then(|| Flow::new(flow_prefix.clone(), self.cfg.sourcing)),
            flow_prefix,
        });
    }

    /// Where a push consumer delivers: its deliver subject and group.
    pub fn deliver_to(&self) -> Option<(&str, Option<&str>)> {
        self.push.as_ref().map(|_| {
            let group = &self.cfg.deliver_group;
            (
                self.cfg.deliver_subject.as_str(),
                (!group.is_empty()).then_some(group.as_str()),
            )
        })
    }

    /// Whether anyone listens on a push consumer's deliver subject now. Gaining
    /// a subscriber starts delivery; losing one starts the inactive threshold.
    pub fn set_interest(
        &mut self,
        active: bool,
        source: &impl Source,
        now: i64,
        out: &mut Vec<Action>,
    ) {
        let heartbeat = self.cfg.heartbeat;
        let Some(push) = &mut self.push else {
            return;
        };
        if push.active == active {
            return;
        }
        push.active = active;
        if active {
            push.next_heartbeat = now.saturating_add(heartbeat);
            self.inactive_told = false;
            self.deliver_push(source, now, out);
        } else {
            self.idle_since = now;
        }
    }

    /// A push subscriber answered a flow control request on `reply`; with
    /// `ack_policy: flow_control` the answer's last stream sequence acks
    /// everything up to it.
    pub fn flow_answered(
        &mut self,
        reply: &str,
        last_stream: Option<u64>,
        source: &impl Source,
        now: i64,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(flow) = self.push.as_mut().and_then(|p| p.flow.as_mut()) else {
            return false;
        };
        if !flow.answered(reply) {
            return false;
        }
        let mut changed = false;
        if self.cfg.ack_policy == AckPolicy::FlowControl {
            if let Some(seq) = last_stream.filter(|&s| s > 0) {
                changed = self.acknowledge(seq, now, out);
            }
        }
        self.deliver_push(source, now, out);
        changed
    }

    /// Whether appending a message may give it something to send now.
    pub fn wants_messages(&self) -> bool {
        match &self.push {
            Some(push) => push.active,
            None => !self.waiting.is_empty(),
        }
    }

    /// The subjects it takes (none: every subject).
    pub fn filters(&self) -> &[String] {
        &self.filters
    }

    pub fn config(&self) -> &ConsumerConfig {
        &self.cfg
    }
    pub fn delivered(&self) -> SequencePair {
        self.delivered
    }
    pub fn ack_floor(&self) -> SequencePair {
        self.ack_floor
    }
    pub fn num_ack_pending(&self) -> usize {
        self.pending.len()
    }
    pub fn num_redelivered(&self) -> usize {
        self.pending.values().filter(|p| p.deliveries > 1).count()
    }
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }
    /// Messages not yet delivered that match the filters.
    pub fn num_pending(&self) -> u64 {
        self.num_pending
    }
    pub fn pending(&self, stream_seq: u64) -> Option<&Pending> {
        self.pending.get(&stream_seq)
    }

    /// Consumer info for `stream_name` at `now` (ns); `created` (ns) is when the
    /// consumer was made. The configuration carries the server's API level and version.
    pub fn info(&self, stream_name: &str, created: i64, now: i64) -> ConsumerInfo {
        let sequences = |pair: SequencePair, at: Option<i64>| SequenceInfo {
            consumer_seq: pair.consumer,
            stream_seq: pair.stream,
            last_active: at.map(rfc3339),
        };
        ConsumerInfo {
            stream_name: stream_name.to_string(),
            name: self.cfg.consumer_name().to_string(),
            created: rfc3339(created),
            config: self.cfg.with_dynamic_metadata(),
            delivered: sequences(self.delivered, self.last_delivered_at),
            ack_floor: sequences(self.ack_floor, self.last_acked_at),
            num_ack_pending: self.num_ack_pending(),
            num_redelivered: self.num_redelivered(),
            num_waiting: self.num_waiting(),
            num_pending: self.num_pending,
            push_bound: self.push.as_ref().is_some_and(|p| p.active),
            paused: self.is_paused(now),
            pause_remaining: self
                .paused_until
                .filter(|&until| until > now)
                .map_or(0, |until| until - now),
            ts: rfc3339(now),
            priority_groups: self
                .cfg
                .priority_groups
                .first()
                .map(|group| PriorityGroupState {
                    group: group.clone(),
                    pinned_client_id: self
                        .pin
                        .as_ref()
                        .map_or(String::new(), |p| p.id.to_string()),
                    pinned_ts: self
                        .pin
                        .as_ref()
                        .map_or_else(|| GO_ZERO_TIME.to_string(), |p| rfc3339(p.since)),
                })
                .into_iter()
                .collect(),
        }
    }

    /// The state to keep.
    pub fn state(&self) -> ConsumerState {
        ConsumerState {
            delivered: self.delivered,
            ack_floor: self.ack_floor,
            pending: self
                .pending
                .iter()
                .map(|(&seq, p)| (seq, (p.consumer_seq, p.delivered_at)))
                .collect(),
            redelivered: self
                .pending
                .iter()
                .filter(|(_, p)| p.deliveries > 1)
                .map(|(&seq, p)| (seq, p.deliveries))
                .collect(),
            exhausted: self.exhausted.clone(),
        }
    }

    /// The consumer as it was when `state` was kept. Pending deliveries are due
    /// when their ack wait from the original delivery runs out, so a restart
    /// long after a crash redelivers them at the first tick; acknowledged
    /// messages are never handed out again.
    pub fn restore(cfg: ConsumerConfig, state: &ConsumerState, source: &impl Source) -> Consumer {
        let mut consumer = Consumer::new(cfg, source);
        consumer.delivered = state.delivered;
        consumer.ack_floor = state.ack_floor;
        consumer.exhausted = state.exhausted.clone();
        if consumer.cfg.deliver_policy == DeliverPolicy::LastPerSubject {
            consumer
                .starting
                .retain(|&seq| seq > state.delivered.stream);
        }
        if consumer.starting.is_empty() {
            consumer.next_seq = state.delivered.stream + 1;
        }
        if consumer.acks() {
            for (&seq, &(consumer_seq, delivered_at)) in &state.pending {
                let deliveries = state.redelivered.get(&seq).copied().unwrap_or(1);
                let due = delivered_at.saturating_add(consumer.ack_wait_for(deliveries));
                consumer.pending.insert(
                    seq,
                    Pending {
                        consumer_seq,
                        delivered_at,
                        deliveries,
                        due,
                    },
                );
                consumer.due.insert((due, seq));
            }
        }
        consumer.recount(source);
        consumer
    }

    /// `CONSUMER.RESET`: delivers again from stream sequence `seq`, or (with 0)
    /// from just past the ack floor, as if nothing after it had ever been
    /// delivered: pending acks, redeliveries and counts start afresh, and the
    /// ack floor moves to just before `seq`. A consumer that starts at a given
    /// sequence or time may not go back before it; one that starts at the
    /// newest or last messages may only go back to its ack floor. Answers the
    /// sequence it resets to.
    pub fn reset(&mut self, seq: u64, source: &impl Source) -> Result<u64, ResetError> {
        let seq = if seq == 0 {
            self.ack_floor.stream + 1
        } else {
            match self.cfg.deliver_policy {
                DeliverPolicy::All => seq,
                DeliverPolicy::ByStartSequence if seq < self.cfg.opt_start_seq => {
                    return Err(ResetError::BelowStartSeq)
                }
                DeliverPolicy::ByStartSequence => seq,
                DeliverPolicy::ByStartTime if seq < start_time_seq(&self.cfg, source) => {
                    return Err(ResetError::BelowStartTime)
                }
                DeliverPolicy::ByStartTime => seq,
                _ => return Err(ResetError::NotAllowed),
            }
        }
        .max(1);
        self.pending.clear();
        self.due.clear();
        self.redeliver.clear();
        self.starting.clear();
        self.exhausted.clear();
        self.next_seq = seq;
        self.delivered = SequencePair {
            consumer: 0,
            stream: seq - 1,
        };
        self.ack_floor = self.delivered;
        self.last_delivered_at = None;
        self.last_acked_at = None;
        self.recount(source);
        Ok(seq)
    }

    /// An update: the new configuration (which [`ConsumerConfig::check_update`]
    /// allowed) takes effect from the next delivery; what was delivered stays.
    /// Takes an updated configuration. A push consumer's deliver subject may
    /// have changed: it waits for [`Self::set_interest`] again.
    pub fn set_config(&mut self, cfg: ConsumerConfig, source: &impl Source, now: i64) {
        self.filters = cfg.filters().into_iter().map(str::to_string).collect();
        if let Some(push) = &mut self.push {
            push.to = Rc::from(cfg.deliver_subject.as_str());
            push.active = false;
            match (&push.flow, cfg.flow_control) {
                (None, true) => push.flow = Some(Flow::new(push.flow_prefix.clone(), cfg.sourcing)),
                (Some(_), false) => push.flow = None,
                _ => {}
            }
        }
        self.paused_until = cfg.pause_until_ns().filter(|&until| until > now);
        if cfg.priority_policy != PriorityPolicy::PinnedClient {
            self.pin = None;
        }
        let burst = self
            .pacing
            .bucket
            .as_ref()
            .map_or(DEFAULT_RATE_BURST, |b| b.burst as u64);
        self.cfg = cfg;
        self.set_rate_limit(burst, now);
        self.recount(source);
    }

    /// Limits deliveries to the configured `rate_limit_bps`, with bursts of
    /// up to `burst` bytes (the stream's `max_msg_size`, when it sets one).
    pub fn set_rate_limit(&mut self, burst: u64, now: i64) {
        self.pacing.bucket =
            (self.cfg.rate_limit > 0).then(|| TokenBucket::new(self.cfg.rate_limit, burst, now));
    }

    /// Whether message `seq` of `size` bytes may go now. If not, it is held
    /// until the replay pace or the rate limit lets it, and the timer wakes
    /// the consumer then.
    fn paced(&mut self, seq: u64, size: u64, source: &impl Source, now: i64) -> bool {
        let pacing = &mut self.pacing;
        if pacing
            .replay_through
            .is_some_and(|through| self.delivered.stream >= through)
        {
            pacing.replay_through = None;
            pacing.last_replayed = None;
        }
        let stored = pacing.replay_through.and_then(|_| source.time_of(seq));
        let mut ready = now;
        if let (Some(ts), Some((last_ts, sent_at))) = (stored, pacing.last_replayed) {
            let gap = ts.saturating_sub(last_ts);
            if gap > REPLAY_MIN_GAP {
                ready = ready.max(sent_at.saturating_add(gap));
            }
        }
        if ready == now {
            if let Some(bucket) = &mut pacing.bucket {
                ready = bucket.take(size, now);
            }
        }
        if ready > now {
            pacing.held_until = Some(ready);
            return false;
        }
        pacing.held_until = None;
        if let Some(ts) = stored {
            pacing.last_replayed = Some((ts, now));
        }
        true
    }

    /// Whether it holds back deliveries at `now` (`pause_until` ahead).
    pub fn is_paused(&self, now: i64) -> bool {
        self.paused_until.is_some_and(|until| until > now)
    }

    /// The consumer is deleted: its waiting pull requests hear so.
    pub fn close(&self, out: &mut Vec<Action>) {
        for req in &self.waiting {
            out.push(Action::Status {
                to: req.reply.clone(),
                status: Status::Conflict("Consumer Deleted".into()),
            });
        }
    }

    /// Counts the undelivered messages again, after a purge or a delete.
    pub fn recount(&mut self, source: &impl Source) {
        self.starting.retain(|&seq| source.size_of(seq).is_some());
        self.exhausted.retain(|&seq| source.size_of(seq).is_some());
        self.num_pending =
            self.starting.len() as u64 + source.num_pending(self.next_seq, &self.filters);
    }

    /// The stream stored `seq` on `subject`.
    pub fn on_append(&mut self, seq: u64, subject: &str) {
        if seq >= self.next_seq && self.takes(subject) {
            self.num_pending += 1;
        }
    }

    /// Whether the consumer's filters take `subject`.
    pub fn takes(&self, subject: &str) -> bool {
        self.filters.is_empty()
            || self
                .filters
                .iter()
                .any(|f| crate::subject::subject_matches(f, subject))
    }

    /// The stream keeps messages only while its consumers need them: the
    /// consumer says, with `Action::Release`, when it is done with one
    /// (`on` false: a limits stream, which needs not hear it).
    pub fn report_releases(&mut self, on: bool) {
        self.releases = on;
        if !on {
            self.exhausted.clear();
        }
    }

    /// Whether the consumer still needs message `seq`, stored on `subject`:
    /// one it takes that it has not delivered yet, that waits for its ack or
    /// its redelivery, or that ran out of deliveries unacknowledged.
    /// nats-server's `needAck`.
    pub fn needs(&self, seq: u64, subject: &str) -> bool {
        if !self.takes(subject) {
            return false;
        }
        if self.exhausted.contains(&seq) || seq >= self.next_seq || self.starting.contains(&seq) {
            return true;
        }
        self.acks() && seq > self.ack_floor.stream && self.pending.contains_key(&seq)
    }

    fn release(&self, seq: u64, out: &mut Vec<Action>) {
        if self.releases {
            out.push(Action::Release { stream_seq: seq });
        }
    }

    /// How long a delivery waits for its ack before it goes again. Never, for
    /// a consumer acked by flow control answers: its reader (a durable
    /// source) resets it when it misses something.
    fn ack_wait_for(&self, deliveries: u64) -> i64 {
        if self.cfg.ack_policy == AckPolicy::FlowControl {
            return NEVER;
        }
        match self.cfg.backoff.len() {
            0 => self.cfg.ack_wait,
            n => self.cfg.backoff[(deliveries.saturating_sub(1) as usize).min(n - 1)],
        }
    }

    fn acks(&self) -> bool {
        self.cfg.ack_policy != AckPolicy::None
    }

    fn max_ack_pending_reached(&self) -> bool {
        self.acks()
            && self.cfg.max_ack_pending > 0
            && self.pending.len() as i64 >= self.cfg.max_ack_pending
    }

    /// A pull request arrived on `reply`. Answers at once what nats-server
    /// refuses; queues the rest and delivers what is there.
    pub fn pull(
        &mut self,
        reply: Rc<str>,
        req: PullRequest,
        source: &(impl Source + Listeners),
        now: i64,
        out: &mut Vec<Action>,
    ) {
        let refuse = |out: &mut Vec<Action>, status: Status| {
            out.push(Action::Status {
                to: reply.clone(),
                status,
            })
        };
        if !self.cfg.is_pull() {
            return refuse(out, Status::PushBased);
        }
        let cfg = &self.cfg;
        if cfg.max_request_batch > 0 && req.batch > cfg.max_request_batch {
            return refuse(
                out,
                Status::Conflict(format!(
                    "Exceeded MaxRequestBatch of {}",
                    cfg.max_request_batch
                )),
            );
        }
        if req.expires > 0 && cfg.max_request_expires > 0 && req.expires > cfg.max_request_expires {
            return refuse(
                out,
                Status::Conflict(format!(
                    "Exceeded MaxRequestExpires of {}",
                    super::consumer_config::go_duration(cfg.max_request_expires)
                )),
            );
        }
        if req.max_bytes > 0 && cfg.max_request_bytes > 0 && req.max_bytes > cfg.max_request_bytes {
            return refuse(
                out,
                Status::Conflict(format!(
                    "Exceeded MaxRequestMaxBytes of {}",
                    cfg.max_request_bytes
                )),
            );
        }
        if let Err(status) = self.check_group(&req, now) {
            return refuse(out, status);
        }
        self.expire_requests(now, out);
        self.idle_since = now;
        self.inactive_told = false;
        if req.no_wait {
            let available = self.num_pending + self.redeliver.len() as u64;
            if available == 0 && req.expires == 0 {
                return refuse(out, Status::NoMessages);
            }
        }
        let full = |c: &Self| c.cfg.max_waiting > 0 && c.waiting.len() as i64 >= c.cfg.max_waiting;
        // Requests of clients gone make room, looked for at most once a
        // second (as nats-server does) so that a flood of requests on a full
        // queue costs no lookup each.
        if full(self) && now.saturating_sub(self.unheard_swept) >= 1_000_000_000 {
            self.unheard_swept = now;
            self.drop_unheard(source);
        }
        if full(self) {
            if req.heartbeat == 0 {
                refuse(out, Status::ExceededMaxWaiting);
            }
            return;
        }
        let max_bytes = req.max_bytes.max(0) as u64;
        let ask = req.grouped.then_some(GroupAsk {
            group: req.group,
            pin: req.id,
            min_pending: req.min_pending,
            min_ack_pending: req.min_ack_pending,
            priority: req.priority,
        });
        self.enqueue(Waiting {
            reply,
            remaining: req.batch.max(1) as u64,
            bytes_left: max_bytes,
            has_byte_limit: max_bytes > 0,
            no_wait: req.no_wait,
            delivered: 0,
            expires_at: (req.expires > 0).then(|| now.saturating_add(req.expires)),
            heartbeat: req.heartbeat,
            next_heartbeat: now.saturating_add(req.heartbeat),
            ask,
        });
        self.deliver(source, now, out);
    }

    /// nats-server's checks of a request's priority group fields, in its
    /// order. A request from the pinned client keeps the pin from lapsing.
    fn check_group(&mut self, req: &PullRequest, now: i64) -> Result<(), Status> {
        if !req.grouped {
            return Ok(());
        }
        let policy = self.cfg.priority_policy;
        let bad = |text: &str| Err(Status::BadRequest(text.into()));
        if (req.min_pending != 0 || req.min_ack_pending != 0) && policy != PriorityPolicy::Overflow
        {
            return bad("Not a Overflow Priority consumer");
        }
        if !req.id.is_empty() && policy != PriorityPolicy::PinnedClient {
            return bad("Not a Pinned Client Priority consumer");
        }
        if !(0..=9).contains(&req.priority) {
            return bad("Priority must be between 0 and 9");
        }
        if policy == PriorityPolicy::None {
            return Ok(());
        }
        if req.group.is_empty() {
            return bad("Priority Group missing");
        }
        if !self.cfg.priority_groups.contains(&req.group) {
            return bad("Invalid Priority Group");
        }
        let ttl = self.cfg.pinned_ttl;
        if let Some(pin) = &mut self.pin {
            if *req.id == *pin.id {
                pin.lapses_at = now.saturating_add(ttl);
            } else if !req.id.is_empty() {
                return Err(Status::PinIdMismatch);
            }
        }
        Ok(())
    }

    /// Queues a request: last, or with `prioritized` after every request of
    /// the same or a lower priority number.
    fn enqueue(&mut self, req: Waiting) {
        if self.cfg.priority_policy == PriorityPolicy::Prioritized {
            let priority = req.priority();
            let at = self
                .waiting
                .iter()
                .position(|w| w.priority() > priority)
                .unwrap_or(self.waiting.len());
            self.waiting.insert(at, req);
        } else {
            self.waiting.push_back(req);
        }
    }

    /// What the head request makes of a message of `size` bytes, as
    /// nats-server's `nextWaiting` decides: pins first, then the overflow
    /// thresholds, then the byte limit. May pin the request.
    fn judge_head(
        &mut self,
        size: u64,
        origin: Origin,
        listeners: &impl Listeners,
        now: i64,
        out: &mut Vec<Action>,
    ) -> Verdict {
        let Some(req) = self.waiting.front() else {
            return Verdict::Skip;
        };
        let policy = self.cfg.priority_policy;
        let mut pinned_now = false;
        if policy == PriorityPolicy::PinnedClient {
            let wrong_pin = Verdict::End(Status::WrongPinId {
                messages: req.remaining,
                bytes: req.bytes_left,
            });
            match (&self.pin, &req.ask) {
                (None, Some(ask)) if ask.pin.is_empty() => {
                    let group = ask.group.clone();
                    self.pins_made += 1;
                    let id: Rc<str> =
                        Rc::from(format!("{}{:010}", self.pin_prefix, self.pins_made));
                    out.push(Action::Pinned {
                        group: group.clone(),
                        id: id.clone(),
                    });
                    if let Some(ask) = self.waiting.front_mut().and_then(|r| r.ask.as_mut()) {
                        ask.pin = id.to_string();
                    }
                    self.pin = Some(Pin {
                        id,
                        group,
                        since: now,
                        lapses_at: now.saturating_add(self.cfg.pinned_ttl),
                    });
                    pinned_now = true;
                }
                // A pin given up since it asked.
                (None, Some(_)) => return wrong_pin,
                // A bare request on a pinned client consumer takes what comes
                // while nobody is pinned, as in nats-server.
                (None, None) => {}
                (Some(pin), _) if *pin.id == *req.claims_pin() => {}
                (Some(_), _) if req.claims_pin().is_empty() => return Verdict::Skip,
                (Some(_), _) => return wrong_pin,
            }
        }
        let Some(req) = self.waiting.front() else {
            return Verdict::Skip;
        };
        if policy == PriorityPolicy::Overflow {
            if let Some(ask) = &req.ask {
                // nats-server counts the message about to go as still pending.
                let pending = match origin {
                    Origin::Redelivery => self.num_pending + 1,
                    _ => self.num_pending,
                } as i64;
                let behind = (ask.min_pending > 0 && ask.min_pending <= pending)
                    || (ask.min_ack_pending > 0
                        && ask.min_ack_pending <= self.pending.len() as i64);
                if (ask.min_pending > 0 || ask.min_ack_pending > 0) && !behind {
                    return Verdict::Skip;
                }
            }
        }
        if req.has_byte_limit && size > req.bytes_left {
            let status = Status::MessageSizeExceedsMaxBytes {
                messages: req.remaining,
                bytes: req.bytes_left,
            };
            if pinned_now {
                self.pin = None;
            }
            return Verdict::End(status);
        }
        if !listeners.listens(&req.reply) {
            // nats-server keeps a pin it just gave to a request nobody hears,
            // and so starves the others until it lapses; nobody holds it.
            if pinned_now {
                self.pin = None;
            }
            return Verdict::Unheard;
        }
        Verdict::Serve
    }

    /// Brings the request to serve a message of `size` bytes to the head of
    /// the queue; false when no waiting request may take it. Requests that
    /// end on the way hear why.
    fn choose_request(
        &mut self,
        size: u64,
        origin: Origin,
        listeners: &impl Listeners,
        now: i64,
        out: &mut Vec<Action>,
    ) -> bool {
        let mut skipped = 0;
        while !self.waiting.is_empty() {
            match self.judge_head(size, origin, listeners, now, out) {
                Verdict::Serve => return true,
                Verdict::Skip => {
                    self.waiting.rotate_left(1);
                    skipped += 1;
                    if skipped >= self.waiting.len() {
                        return false;
                    }
                }
                Verdict::End(status) => {
                    if let Some(req) = self.waiting.pop_front() {
                        out.push(Action::Status {
                            to: req.reply,
                            status,
                        });
                    }
                }
                Verdict::Unheard => {
                    self.waiting.pop_front();
                }
            }
        }
        false
    }

    /// The head request took a message: it goes behind the others (behind
    /// those of its priority with `prioritized`), or away once done.
    fn requeue_head(&mut self, done: bool) {
        let Some(req) = self.waiting.pop_front() else {
            return;
        };
        if !done {
            self.enqueue(req);
        }
    }

    /// `$JS.API.CONSUMER.UNPIN`: gives up the pin (if any), so that the next
    /// request without one is pinned; waiting requests of the old pin hear
    /// they hold the wrong one. nats-server advises it even with no pin.
    pub fn unpin(
        &mut self,
        group: &str,
        source: &(impl Source + Listeners),
        now: i64,
        out: &mut Vec<Action>,
    ) {
        self.pin = None;
        out.push(Action::Unpinned {
            group: group.to_string(),
            reason: UnpinReason::Admin,
        });
        self.deliver(source, now, out);
    }

    /// The next sequence to hand out, redeliveries first; `None` when nothing
    /// is ready. A redelivery taken here is put back by the caller if unsent.
    fn next_candidate(&mut self, source: &impl Source) -> Option<(u64, u64, Origin)> {
        while let Some(seq) = self.redeliver.pop_front() {
            if !self.pending.contains_key(&seq) {
                continue;
            }
            match source.size_of(seq) {
                Some(size) => return Some((seq, size, Origin::Redelivery)),
                // Gone from the stream (deleted, purged, expired): nothing to redeliver.
                None => self.forget(seq),
            }
        }
        while let Some(seq) = self.starting.pop_front() {
            match source.size_of(seq) {
                Some(size) => return Some((seq, size, Origin::Starting)),
                None => self.num_pending = self.num_pending.saturating_sub(1),
            }
        }
        source
            .next_match(self.next_seq, &self.filters)
            .map(|(seq, size)| (seq, size, Origin::New))
    }

    /// Puts back a candidate that was not sent.
    fn put_back(&mut self, seq: u64, origin: Origin) {
        match origin {
            Origin::Redelivery => self.redeliver.push_front(seq),
            Origin::Starting => self.starting.push_front(seq),
            Origin::New => {}
        }
    }

    /// Hands out messages: to the waiting requests while there are both, or
    /// to a push consumer's subscriber while flow control and the ack limit
    /// allow.
    pub fn deliver(&mut self, source: &(impl Source + Listeners), now: i64, out: &mut Vec<Action>) {
        if self.is_paused(now) {
            // Pull requests wait for the resume (or their expiry); one that
            // would not wait hears there is nothing now.
            self.finish_no_wait(out);
            return;
        }
        if self.push.is_some() {
            return self.push_messages(source, now, out);
        }
        while !self.waiting.is_empty() && !self.max_ack_pending_reached() {
            let Some((seq, size, origin)) = self.next_candidate(source) else {
                self.finish_no_wait(out);
                return;
            };
            if !self.paced(seq, size, source, now) {
                self.put_back(seq, origin);
                return;
            }
            if !self.choose_request(size, origin, source, now, out) {
                self.put_back(seq, origin);
                return;
            }
            let pin = self.pin.as_ref().map(|p| p.id.clone());
            let Some(req) = self.waiting.front_mut() else {
                self.put_back(seq, origin);
                return;
            };
            let to = req.reply.clone();
            req.remaining -= 1;
            req.delivered += 1;
            if req.has_byte_limit {
                req.bytes_left -= size;
            }
            req.next_heartbeat = now.saturating_add(req.heartbeat);
            let done = req.remaining == 0 || (req.has_byte_limit && req.bytes_left == 0);
            self.requeue_head(done);
            self.record_delivery(seq, origin, to, pin, now, out);
        }
    }

    /// What a push consumer may send now (nothing while paused).
    fn deliver_push(&mut self, source: &impl Source, now: i64, out: &mut Vec<Action>) {
        if !self.is_paused(now) {
            self.push_messages(source, now, out);
        }
    }

    fn push_messages(&mut self, source: &impl Source, now: i64, out: &mut Vec<Action>) {
        loop {
            let Some(push) = &self.push else {
                return;
            };
            let stalled = push.flow.as_ref().is_some_and(Flow::stalled);
            if !push.active || stalled || self.max_ack_pending_reached() {
                return;
            }
            let to = push.to.clone();
            let Some((seq, size, origin)) = self.next_candidate(source) else {
                return;
            };
            if !self.paced(seq, size, source, now) {
                self.put_back(seq, origin);
                return;
            }
            self.record_delivery(seq, origin, to.clone(), None, now, out);
            let acks_by_flow =
                self.cfg.ack_policy == AckPolicy::FlowControl && self.max_ack_pending_reached();
            let heartbeat = self.cfg.heartbeat;
            let Some(push) = &mut self.push else {
                return;
            };
            push.next_heartbeat = now.saturating_add(heartbeat);
            if let Some(flow) = &mut push.flow {
                let mut request = flow.sent(size);
                // Acked by flow control: the ack limit is reached, so ask now.
                if request.is_none() && acks_by_flow && flow.outstanding.is_none() {
                    request = Some(flow.request());
                }
                if let Some(reply) = request {
                    out.push(Action::FlowControl { to, reply });
                }
            }
        }
    }

    fn record_delivery(
        &mut self,
        seq: u64,
        origin: Origin,
        to: Rc<str>,
        pin: Option<Rc<str>>,
        now: i64,
        out: &mut Vec<Action>,
    ) {
        self.delivered.consumer += 1;
        self.last_delivered_at = Some(now);
        self.idle_since = now;
        let consumer_seq = self.delivered.consumer;
        match origin {
            Origin::Redelivery => {}
            Origin::Starting => {
                self.delivered.stream = seq;
                self.num_pending = self.num_pending.saturating_sub(1);
            }
            Origin::New => {
                self.next_seq = seq + 1;
                self.delivered.stream = seq;
                self.num_pending = self.num_pending.saturating_sub(1);
            }
        }
        let deliveries = if self.acks() {
            let previous = self.pending.get(&seq).map_or(0, |p| p.deliveries);
            if let Some(p) = self.pending.get(&seq) {
                self.due.remove(&(p.due, seq));
            }
            let deliveries = previous + 1;
            let due = now.saturating_add(self.ack_wait_for(deliveries));
            self.pending.insert(
                seq,
                Pending {
                    consumer_seq,
                    delivered_at: now,
                    deliveries,
                    due,
                },
            );
            self.due.insert((due, seq));
            deliveries
        } else {
            self.ack_floor = self.delivered;
            1
        };
        out.push(Action::Deliver {
            to,
            stream_seq: seq,
            consumer_seq,
            deliveries,
            pending: self.num_pending,
            pin,
        });
        if !self.acks() {
            self.release(seq, out);
        }
    }

    /// No-wait requests end once nothing is left to deliver: 404 if they got
    /// nothing and had no expiry, or whatever they got.
    fn finish_no_wait(&mut self, out: &mut Vec<Action>) {
        let mut kept = VecDeque::with_capacity(self.waiting.len());
        for req in self.waiting.drain(..) {
            if !req.no_wait {
                kept.push_back(req);
            } else if req.expires_at.is_none() || req.delivered > 0 {
                out.push(Action::Status {
                    to: req.reply,
                    status: Status::NoMessages,
                });
            } else {
                kept.push_back(req);
            }
        }
        self.waiting = kept;
    }

    /// Drops the waiting requests nobody listens for any more.
    fn drop_unheard(&mut self, listeners: &impl Listeners) {
        self.waiting.retain(|req| listeners.listens(&req.reply));
    }

    fn expire_requests(&mut self, now: i64, out: &mut Vec<Action>) {
        self.waiting.retain(|req| match req.expires_at {
            Some(at) if at <= now => {
                out.push(Action::Status {
                    to: req.reply.clone(),
                    status: Status::RequestTimeout {
                        messages: req.remaining,
                        bytes: req.bytes_left,
                    },
                });
                false
            }
            _ => true,
        });
    }

    /// An ack for `stream_seq` arrived. Returns whether it changed anything.
    pub fn ack(
        &mut self,
        stream_seq: u64,
        kind: AckKind,
        reply: Option<Rc<str>>,
        source: &(impl Source + Listeners),
        now: i64,
        out: &mut Vec<Action>,
    ) -> bool {
        let changed = match kind {
            AckKind::Ack => self.acknowledge(stream_seq, now, out),
            AckKind::Next(req) => {
                let changed = self.acknowledge(stream_seq, now, out);
                if let Some(reply) = reply {
                    self.pull(reply, req, source, now, out);
                }
                changed
            }
            AckKind::Nak(delay) => {
                let Some(p) = self.pending.get(&stream_seq).copied() else {
                    return false;
                };
                out.push(Action::Naked {
                    stream_seq,
                    consumer_seq: p.consumer_seq,
                    deliveries: p.deliveries,
                });
                self.due.remove(&(p.due, stream_seq));
                match delay {
                    Some(delay) => {
                        let due = now.saturating_add(delay);
                        self.reschedule(stream_seq, due);
                    }
                    None => self.make_due(stream_seq, p.deliveries, out),
                }
                true
            }
            AckKind::Progress => {
                let Some(p) = self.pending.get(&stream_seq).copied() else {
                    return false;
                };
                self.due.remove(&(p.due, stream_seq));
                let due = now.saturating_add(self.ack_wait_for(p.deliveries));
                self.reschedule(stream_seq, due);
                true
            }
            AckKind::Term(reason) => {
                let Some(p) = self.pending.get(&stream_seq).copied() else {
                    return false;
                };
                self.forget(stream_seq);
                out.push(Action::Terminated {
                    stream_seq,
                    consumer_seq: p.consumer_seq,
                    deliveries: p.deliveries,
                    reason,
                });
                self.release(stream_seq, out);
                true
            }
        };
        if changed {
            self.deliver(source, now, out);
        }
        changed
    }

    /// Whether `sample_freq` picks this ack for a metric.
    fn sampled(&mut self) -> bool {
        match self.cfg.sample_percent() {
            0 => false,
            100.. => true,
            percent => {
                // xorshift64: the seed came in with `begin`; no clock or OS
                // randomness in the core.
                let mut x = self.sampler;
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                self.sampler = x;
                x % 100 < u64::from(percent)
            }
        }
    }

    fn reschedule(&mut self, seq: u64, due: i64) {
        if let Some(p) = self.pending.get_mut(&seq) {
            p.due = due;
            self.due.insert((due, seq));
        }
    }

    fn acknowledge(&mut self, stream_seq: u64, now: i64, out: &mut Vec<Action>) -> bool {
        let changed = match self.cfg.ack_policy {
            AckPolicy::None => false,
            AckPolicy::Explicit => {
                let pending = self.pending.get(&stream_seq).copied();
                let known = pending.is_some();
                if let Some(p) = pending.filter(|_| self.sampled()) {
                    out.push(Action::AckSampled {
                        stream_seq,
                        consumer_seq: p.consumer_seq,
                        deliveries: p.deliveries,
                        ack_time: now.saturating_sub(p.delivered_at),
                    });
                }
                self.forget(stream_seq);
                if known {
                    self.release(stream_seq, out);
                }
                known
            }
            AckPolicy::All | AckPolicy::FlowControl => {
                let covered: Vec<u64> =
                    self.pending.range(..=stream_seq).map(|(s, _)| *s).collect();
                for &seq in &covered {
                    self.forget(seq);
                    self.release(seq, out);
                }
                !covered.is_empty()
            }
        };
        if changed {
            self.last_acked_at = Some(now);
        }
        changed
    }

    /// Drops `seq` from pending (acked, terminated, out of deliveries, or gone)
    /// and moves the ack floor up to the first delivery still pending.
    fn forget(&mut self, seq: u64) {
        if let Some(p) = self.pending.remove(&seq) {
            self.due.remove(&(p.due, seq));
        }
        self.ack_floor = match self.pending.iter().next() {
            None => self.delivered,
            Some((&first, p)) => SequencePair {
                consumer: p
                    .consumer_seq
                    .saturating_sub(1)
                    .max(self.ack_floor.consumer),
                stream: (first - 1).max(self.ack_floor.stream),
            },
        };
    }

    /// A pending delivery's ack wait ran out (or it was naked): it is
    /// redelivered, unless it has been delivered `max_deliver` times.
    fn make_due(&mut self, seq: u64, deliveries: u64, out: &mut Vec<Action>) {
        if self.cfg.max_deliver > 0 && deliveries as i64 >= self.cfg.max_deliver {
            self.forget(seq);
            if self.releases {
                self.exhausted.insert(seq);
            }
            out.push(Action::MaxDeliveries {
                stream_seq: seq,
                deliveries,
            });
            return;
        }
        if !self.redeliver.contains(&seq) {
            self.redeliver.push_back(seq);
        }
    }

    /// Time passed: requests expire, heartbeats are due, acks time out.
    pub fn tick(&mut self, source: &(impl Source + Listeners), now: i64, out: &mut Vec<Action>) {
        self.expire_requests(now, out);
        self.drop_unheard(source);
        let (last_consumer, last_stream) = (self.delivered.consumer, self.delivered.stream);
        for req in self.waiting.iter_mut() {
            if req.heartbeat > 0 && req.next_heartbeat <= now {
                out.push(Action::Status {
                    to: req.reply.clone(),
                    status: Status::IdleHeartbeat {
                        last_consumer,
                        last_stream,
                        stalled: None,
                    },
                });
                req.next_heartbeat = now.saturating_add(req.heartbeat);
            }
        }
        self.push_heartbeat(now, out);
        if self.inactive_at().is_some_and(|at| at <= now) {
            self.inactive_told = true;
            out.push(Action::Inactive);
        }
        while let Some(&(due, seq)) = self.due.first() {
            if due > now {
                break;
            }
            self.due.remove(&(due, seq));
            let deliveries = self.pending.get(&seq).map_or(0, |p| p.deliveries);
            self.make_due(seq, deliveries, out);
        }
        if self.paused_until.is_some_and(|until| until <= now) {
            self.paused_until = None;
            out.push(Action::Resumed);
        }
        if let Some(pin) = self.pin.take_if(|p| p.lapses_at <= now) {
            out.push(Action::Unpinned {
                group: pin.group,
                reason: UnpinReason::Timeout,
            });
        }
        self.deliver(source, now, out);
    }

    /// A push consumer idle for its heartbeat interval tells its subscriber
    /// where it is (and, stalled, which flow control request it waits on).
    fn push_heartbeat(&mut self, now: i64, out: &mut Vec<Action>) {
        let heartbeat = self.cfg.heartbeat;
        let acks_by_flow =
            self.cfg.ack_policy == AckPolicy::FlowControl && !self.pending.is_empty();
        let (last_consumer, last_stream) = (self.delivered.consumer, self.delivered.stream);
        let Some(push) = &mut self.push else {
            return;
        };
        if heartbeat <= 0 || !push.active || push.next_heartbeat > now {
            return;
        }
        push.next_heartbeat = now.saturating_add(heartbeat);
        out.push(Action::Status {
            to: push.to.clone(),
            status: Status::IdleHeartbeat {
                last_consumer,
                last_stream,
                stalled: push
                    .flow
                    .as_ref()
                    .and_then(|f| f.outstanding.as_ref().map(|(r, _)| r.clone())),
            },
        });
        // Acked by flow control: what is pending is acked by the answer.
        if let Some(flow) = &mut push.flow {
            if acks_by_flow && flow.outstanding.is_none() {
                let reply = flow.request();
                out.push(Action::FlowControl {
                    to: push.to.clone(),
                    reply,
                });
            }
        }
    }

    /// When the inactive threshold runs out: for a push consumer, that long
    /// after it lost its subscriber; for a pull consumer, that long after its
    /// last request or delivery with no request waiting, and no sooner than
    /// that long after the last ack wait it still waits on.
    fn inactive_at(&self) -> Option<i64> {
        let threshold = self.cfg.inactive_threshold;
        if threshold <= 0 || self.inactive_told {
            return None;
        }
        match &self.push {
            Some(push) if push.active => None,
            Some(_) => Some(self.idle_since.saturating_add(threshold)),
            None if !self.waiting.is_empty() => None,
            None => {
                let last_due = self.due.last().map_or(i64::MIN, |(due, _)| *due);
                Some(self.idle_since.max(last_due).saturating_add(threshold))
            }
        }
    }

    /// When [`Self::tick`] next has work: the earliest request expiry,
    /// heartbeat, ack deadline or inactive threshold. `None` while nothing
    /// waits on time, so an idle consumer arms no timer.
    pub fn next_deadline(&self) -> Option<i64> {
        let requests = self.waiting.iter().flat_map(|r| {
            let heartbeat = (r.heartbeat > 0).then_some(r.next_heartbeat);
            r.expires_at.into_iter().chain(heartbeat)
        });
        let ack = self
            .due
            .first()
            .map(|(due, _)| *due)
            .filter(|&due| due != NEVER);
        let push = self
            .push
            .as_ref()
            .filter(|p| p.active && self.cfg.heartbeat > 0)
            .map(|p| p.next_heartbeat);
        requests
            .chain(ack)
            .chain(push)
            .chain(self.inactive_at())
            .chain(self.paused_until)
            .chain(self.pin.as_ref().map(|p| p.lapses_at))
            .chain(self.pacing.held_until)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream as a list of (subject, size); sequence = index + 1.
    struct Fake {
        msgs: Vec<Option<(String, u64)>>,
        /// Inboxes whose subscriber went away.
        gone: Vec<String>,
    }

    impl Fake {
        fn with(subjects: &[&str]) -> Fake {
            Fake {
                msgs: subjects.iter().map(|s| Some((s.to_string(), 10))).collect(),
                gone: Vec::new(),
            }
        }
        fn matches(filters: &[String], subject: &str) -> bool {
            filters.is_empty()
                || filters
                    .iter()
                    .any(|f| crate::subject::subject_matches(f, subject))
        }
    }

    impl Source for Fake {
        fn next_match(&self, start: u64, filters: &[String]) -> Option<(u64, u64)> {
            (start.max(1)..=self.msgs.len() as u64).find_map(|seq| {
                let (subject, size) = self.msgs[seq as usize - 1].as_ref()?;
                Fake::matches(filters, subject).then_some((seq, *size))
            })
        }
        fn size_of(&self, seq: u64) -> Option<u64> {
            self.msgs
                .get(seq.checked_sub(1)? as usize)?
                .as_ref()
                .map(|m| m.1)
        }
        fn num_pending(&self, start: u64, filters: &[String]) -> u64 {
            (start.max(1)..=self.msgs.len() as u64)
                .filter(|&seq| {
                    self.msgs[seq as usize - 1]
                        .as_ref()
                        .is_some_and(|(s, _)| Fake::matches(filters, s))
                })
                .count() as u64
        }
        fn last_seq(&self) -> u64 {
            self.msgs.len() as u64
        }
        fn last_per_subject(&self, filters: &[String]) -> Vec<u64> {
            let mut last = BTreeMap::new();
            for (i, m) in self.msgs.iter().enumerate() {
                if let Some((s, _)) = m {
                    if Fake::matches(filters, s) {
                        last.insert(s.clone(), i as u64 + 1);
                    }
                }
            }
            let mut seqs: Vec<u64> = last.into_values().collect();
            seqs.sort_unstable();
            seqs
        }
        /// Stored at `seq` seconds, as [`Self::time_of`] has it.
        fn seq_from_time(&self, ts: i64) -> u64 {
            (ts.max(0) as u64).div_ceil(1_000_000_000).max(1)
        }
        /// Fake messages were stored a second apart.
        fn time_of(&self, seq: u64) -> Option<i64> {
            self.size_of(seq).map(|_| seq as i64 * 1_000_000_000)
        }
    }

    /// The memory-store test has no clients to lose.
    impl Listeners for crate::jetstream::host::Committed<'_> {
        fn listens(&self, _inbox: &str) -> bool {
            true
        }
    }

    impl Listeners for Fake {
        fn listens(&self, inbox: &str) -> bool {
            !self.gone.iter().any(|g| g == inbox)
        }
    }

    const S: i64 = 1_000_000_000;

    fn config(json: &str) -> ConsumerConfig {
        let stream = serde_json::from_str(r#"{"name":"O","subjects":["O.*"]}"#).expect("stream");
        serde_json::from_str::<ConsumerConfig>(json)
            .expect("json")
            .normalized(&stream, &Default::default(), false)
            .expect("valid")
    }

    fn request(json: &str) -> PullRequest {
        PullRequest::parse(json.as_bytes()).expect("request")
    }

    fn reply(name: &str) -> Rc<str> {
        Rc::from(name)
    }

    fn delivered(out: &[Action]) -> Vec<(u64, u64, u64)> {
        out.iter()
            .filter_map(|a| match a {
                Action::Deliver {
                    stream_seq,
                    consumer_seq,
                    deliveries,
                    ..
                } => Some((*stream_seq, *consumer_seq, *deliveries)),
                _ => None,
            })
            .collect()
    }

    fn statuses(out: &[Action]) -> Vec<String> {
        out.iter()
            .filter_map(|a| match a {
                Action::Status { status, .. } => Some(status.header()),
                _ => None,
            })
            .collect()
    }

    /// The captured exchange: a batch of two, each with the messages left after it.
    #[test]
    fn a_pull_gets_its_batch_with_the_pending_count() {
        let src = Fake::with(&["O.new", "O.new", "O.paid", "O.new"]);
        let mut c = Consumer::new(
            config(r#"{"durable_name":"N","ack_policy":"explicit","filter_subject":"O.new"}"#),
            &src,
        );
        assert_eq!(c.num_pending(), 3);
        let mut out = Vec::new();
        c.pull(
            reply("r1"),
            request(r#"{"batch":2,"expires":2000000000}"#),
            &src,
            0,
            &mut out,
        );
        let pendings: Vec<u64> = out
            .iter()
            .filter_map(|a| match a {
                Action::Deliver { pending, .. } => Some(*pending),
                _ => None,
            })
            .collect();
        assert_eq!(delivered(&out), [(1, 1, 1), (2, 2, 1)]);
        assert_eq!(pendings, [2, 1]);
        assert_eq!(c.num_waiting(), 0, "the batch is complete");
        assert_eq!(
            c.delivered(),
            SequencePair {
                consumer: 2,
                stream: 2
            }
        );
        assert_eq!(
            c.ack_floor(),
            SequencePair {
                consumer: 0,
                stream: 0
            }
        );
        assert!(c.ack(2, AckKind::Ack, None, &src, 1, &mut out));
        assert_eq!(
            c.ack_floor(),
            SequencePair {
                consumer: 0,
                stream: 0
            },
            "1 is still pending"
        );
        assert!(c.ack(1, AckKind::Ack, None, &src, 1, &mut out));
        assert_eq!(
            c.ack_floor(),
            SequencePair {
                consumer: 2,
                stream: 2
            }
        );
        assert!(
            !c.ack(1, AckKind::Ack, None, &src, 1, &mut out),
            "acked twice"
        );
    }

    #[test]
    fn a_reset_delivers_again_from_its_sequence_as_if_nothing_came_after() {
        let src = Fake::with(&["O.a"; 6]);
        let mut c = Consumer::new(
            config(r#"{"durable_name":"N","ack_policy":"explicit"}"#),
            &src,
        );
        let mut out = Vec::new();
        c.pull(reply("r1"), request(r#"{"batch":4}"#), &src, 0, &mut out);
        assert!(c.ack(1, AckKind::Ack, None, &src, 1, &mut out));
        assert_eq!(c.num_ack_pending(), 3);
        // To past the ack floor: 2..=4 come again, as first deliveries.
        assert_eq!(c.reset(0, &src), Ok(2));
        assert_eq!(c.num_ack_pending(), 0);
        assert_eq!(c.num_pending(), 5);
        let floor = SequencePair {
            consumer: 0,
            stream: 1,
        };
        assert_eq!((c.delivered(), c.ack_floor()), (floor, floor));
        out.clear();
        c.pull(reply("r2"), request(r#"{"batch":2}"#), &src, 2, &mut out);
        assert_eq!(delivered(&out), [(2, 1, 1), (3, 2, 1)]);
        // Forward past what was delivered: the ack floor follows.
        assert_eq!(c.reset(6, &src), Ok(6));
        assert_eq!(c.ack_floor().stream, 5);
        assert_eq!(c.num_pending(), 1);
        // Back to the start, as a deliver-all consumer may.
        assert_eq!(c.reset(1, &src), Ok(1));
        assert_eq!(c.num_pending(), 6);
    }

    #[test]
    fn a_reset_may_not_go_before_where_the_consumer_starts() {
        let src = Fake::with(&["O.a"; 6]);
        let mut by_seq = Consumer::new(
            config(
                r#"{"durable_name":"N","deliver_policy":"by_start_sequence","opt_start_seq":3}"#,
            ),
            &src,
        );
        assert_eq!(by_seq.reset(2, &src), Err(ResetError::BelowStartSeq));
        assert_eq!(by_seq.reset(3, &src), Ok(3));
        // The fake stores sequence n at n seconds.
        let mut by_time = Consumer::new(
            config(
                r#"{"durable_name":"N","deliver_policy":"by_start_time","opt_start_time":"1970-01-01T00:00:04Z"}"#,
            ),
            &src,
        );
        assert_eq!(by_time.reset(3, &src), Err(ResetError::BelowStartTime));
        assert_eq!(by_time.reset(5, &src), Ok(5));
        let mut new = Consumer::new(
            config(r#"{"durable_name":"N","deliver_policy":"new"}"#),
            &src,
        );
        assert_eq!(new.reset(2, &src), Err(ResetError::NotAllowed));
        assert_eq!(
            new.reset(0, &src),
            Ok(7),
            "its ack floor is the stream's end"
        );
        assert_eq!(ResetError::NotAllowed.to_string(), "not allowed");
    }

    #[test]
    fn no_wait_ends_with_404_and_expiry_with_408() {
        let src = Fake::with(&["O.a"]);
        let mut c = Consumer::new(
            config(r#"{"durable_name":"N","ack_policy":"explicit"}"#),
            &src,
        );
        let mut out = Vec::new();
        c.pull(
            reply("r"),
            request(r#"{"batch":10,"no_wait":true}"#),
            &src,
            0,
            &mut out,
        );
        assert_eq!(delivered(&out).len(), 1);
        assert_eq!(statuses(&out), ["NATS/1.0 404 No Messages\r\n\r\n"]);
        out.clear();
        c.pull(
            reply("r"),
            request(r#"{"batch":1,"no_wait":true}"#),
            &src,
            0,
            &mut out,
        );
        assert_eq!(
            statuses(&out),
            ["NATS/1.0 404 No Messages\r\n\r\n"],
            "nothing left"
        );
        out.clear();
        c.pull(
            reply("t"),
            request(r#"{"batch":1,"expires":500000000}"#),
            &src,
            0,
            &mut out,
        );
        assert!(out.is_empty());
        assert_eq!(
            c.next_deadline(),
            Some(S / 2),
            "the request expires before the ack wait"
        );
        c.tick(&src, S / 2, &mut out);
        assert_eq!(
            statuses(&out),
            ["NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 1\r\nNats-Pending-Bytes: 0\r\n\r\n"]
        );
    }

    #[test]
    fn a_message_too_big_for_the_request_is_refused_with_409() {
        let src = Fake::with(&["O.a"]);
        let mut c = Consumer::new(
            config(r#"{"durable_name":"N","ack_policy":"explicit"}"#),
            &src,
        );
        let mut out = Vec::new();
        c.pull(
            reply("r"),
            request(r#"{"batch":1,"max_bytes":5,"expires":1000000000}"#),
            &src,
            0,
            &mut out,
        );
        assert_eq!(
            statuses(&out),
            ["NATS/1.0 409 Message Size Exceeds MaxBytes\r\nNats-Pending-Messages: 1\r\nNats-Pending-Bytes: 5\r\n\r\n"]
        );
        out.clear();
        c.pull(reply("r"), request(r#"{"batch":1}"#), &src, 0, &mut out);
        assert_eq!(
            delivered(&out),
            [(1, 1, 1)],
            "the message waited for a request it fits"
        );
    }

    #[test]
    fn unacked_messages_come_back_after_ack_wait_following_backoff() {
        let src = Fake::with(&["O.a", "O.b"]);
        let mut c = Consumer::new(
            config(
                r#"{"durable_name":"N","ack_policy":"explicit","backoff":[1000000000,3000000000],"max_deliver":3}"#,
            ),
            &src,
        );
        let mut out = Vec::new();
        c.pull(reply("r"), request(r#"{"batch":1}"#), &src, 0, &mut out);
        assert_eq!(c.next_deadline(), Some(S), "first backoff step");
        c.pull(
            reply("r"),
            request(r#"{"batch":5,"expires":60000000000}"#),
            &src,
            0,
            &mut out,
        );
        assert_eq!(delivered(&out), [(1, 1, 1), (2, 2, 1)]);
        c.ack(2, AckKind::Ack, None, &src, 0, &mut out);
        out.clear();
        c.tick(&src, S, &mut out);
        assert_eq!(
            delivered(&out),
            [(1, 3, 2)],
            "redelivered with a new consumer sequence"
        );
        assert_eq!(c.num_redelivered(), 1);
        assert_eq!(
            c.pending(1).map(|p| p.due),
            Some(4 * S),
            "second backoff step"
        );
        out.clear();
        c.tick(&src, 4 * S, &mut out);
        assert_eq!(delivered(&out), [(1, 4, 3)]);
        out.clear();
        c.tick(&src, 7 * S, &mut out);
        assert_eq!(
            out,
            [Action::MaxDeliveries {
                stream_seq: 1,
                deliveries: 3
            }],
            "three deliveries and no more"
        );
        assert_eq!(c.num_ack_pending(), 0);
        assert_eq!(
            c.ack_floor(),
            SequencePair {
                consumer: 4,
                stream: 2
            }
        );
        assert_eq!(
            c.next_deadline(),
            Some(60 * S),
            "only the open request waits"
        );
    }

    #[test]
    fn nak_progress_and_term() {
        let src = Fake::with(&["O.a", "O.b", "O.c"]);
        let mut c = Consumer::new(
            config(r#"{"durable_name":"N","ack_policy":"explicit"}"#),
            &src,
        );
        let mut out = Vec::new();
        c.pull(reply("r"), request(r#"{"batch":3}"#), &src, 0, &mut out);
        out.clear();
        c.ack(1, AckKind::parse(b"-NAK"), None, &src, S, &mut out);
        assert_eq!(
            out,
            [Action::Naked {
                stream_seq: 1,
                consumer_seq: 1,
                deliveries: 1
            }]
        );
        c.pull(reply("r"), request(r#"{"batch":1}"#), &src, S, &mut out);
        assert_eq!(
            delivered(&out),
            [(1, 4, 2)],
            "a nak without delay redelivers at once"
        );
        out.clear();
        c.ack(
            2,
            AckKind::parse(br#"-NAK {"delay": 5000000000}"#),
            None,
            &src,
            S,
            &mut out,
        );
        assert_eq!(c.pending(2).map(|p| p.due), Some(6 * S));
        c.ack(3, AckKind::parse(b"+WPI"), None, &src, 10 * S, &mut out);
        assert_eq!(
            c.pending(3).map(|p| p.due),
            Some(40 * S),
            "the ack wait starts again"
        );
        out.clear();
        c.ack(
            3,
            AckKind::parse(b"+TERM done with it"),
            None,
            &src,
            10 * S,
            &mut out,
        );
        assert_eq!(
            out,
            [Action::Terminated {
                stream_seq: 3,
                consumer_seq: 3,
                deliveries: 1,
                reason: "done with it".into()
            }]
        );
        assert_eq!(AckKind::parse(b"-NAK 2s"), AckKind::Nak(Some(2 * S)));
        assert_eq!(AckKind::parse(b""), AckKind::Ack);
    }

    #[test]
    fn max_ack_pending_holds_delivery_back() {
        let src = Fake::with(&["O.a", "O.b", "O.c"]);
        let mut c = Consumer::new(
            config(r#"{"durable_name":"N","ack_policy":"explicit","max_ack_pending":2}"#),
            &src,
        );
        let mut out = Vec::new();
        c.pull(
            reply("r"),
            request(r#"{"batch":3,"expires":10000000000}"#),
            &src,
            0,
            &mut out,
        );
        assert_eq!(delivered(&out).len(), 2);
        assert_eq!(c.num_waiting(), 1);
        out.clear();
        c.ack(1, AckKind::Ack, None, &src, 0, &mut out);
        assert_eq!(delivered(&out), [(3, 3, 1)], "an ack makes room");
    }

    fn sampled(out: &[Action]) -> Vec<(u64, i64)> {
        out.iter()
            .filter_map(|a| match a {
                Action::AckSampled {
                    stream_seq,
                    ack_time,
                    ..
                } => Some((*stream_seq, *ack_time)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn sample_freq_reports_that_share_of_explicit_acks() {
        let subjects: Vec<String> = (0..1000).map(|i| format!("O.{i}")).collect();
        let subjects: Vec<&str> = subjects.iter().map(String::as_str).collect();
        let src = Fake::with(&subjects);
        let acks_sampled = |freq: &str| {
            let mut c = Consumer::new(
                config(&format!(
                    r#"{{"durable_name":"N","ack_policy":"explicit","sample_freq":"{freq}"}}"#
                )),
                &src,
            );
            c.begin(0, "$JS.FC.S.N.", "seed");
            let mut out = Vec::new();
            c.pull(reply("r"), request(r#"{"batch":1000}"#), &src, S, &mut out);
            assert_eq!(delivered(&out).len(), 1000);
            let mut samples = Vec::new();
            for seq in 1..=1000 {
                out.clear();
                c.ack(seq, AckKind::Ack, None, &src, 3 * S, &mut out);
                samples.extend(sampled(&out));
            }
            // Acking again, or a sequence never delivered, reports nothing.
            out.clear();
            c.ack(1, AckKind::Ack, None, &src, 3 * S, &mut out);
            assert!(sampled(&out).is_empty());
            samples
        };
        let all = acks_sampled("100%");
        assert_eq!(all.len(), 1000);
        assert!(
            all.iter().all(|&(_, t)| t == 2 * S),
            "delivered at 1 s, acked at 3 s"
        );
        assert!(acks_sampled("").is_empty());
        assert!(acks_sampled("0").is_empty());
        let half = acks_sampled("50").len();
        assert!((400..=600).contains(&half), "{half} of 1000 acks at 50 %");
        let tenth = acks_sampled("10%").len();
        assert!((50..=150).contains(&tenth), "{tenth} of 1000 acks at 10 %");
    }

    #[test]
    fn ack_all_and_ack_none() {
        let src = Fake::with(&["O.a", "O.b", "O.c"]);
        let mut all = Consumer::new(config(r#"{"durable_name":"A","ack_policy":"all"}"#), &src);
        let mut out = Vec::new();
        all.pull(reply("r"), request("3"), &src, 0, &mut out);
        all.ack(2, AckKind::Ack, None, &src, 0, &mut out);
        assert_eq!(all.num_ack_pending(), 1);
        assert_eq!(
            all.ack_floor(),
            SequencePair {
                consumer: 2,
                stream: 2
            }
        );
        let mut none = Consumer::new(
            config(r#"{"ack_policy":"none","deliver_policy":"last"}"#),
            &src,
        );
        out.clear();
        none.pull(reply("r"), request(""), &src, 0, &mut out);
        assert_eq!(
            delivered(&out),
            [(3, 1, 1)],
            "deliver last starts at the last message"
        );
        assert_eq!(
            (none.num_ack_pending(), none.ack_floor()),
            (0, none.delivered())
        );
        assert_eq!(
            none.next_deadline(),
            None,
            "an idle consumer waits on nothing"
        );
    }

    #[test]
    fn requests_are_checked_as_nats_server_does() {
        let src = Fake::with(&[]);
        let mut c = Consumer::new(
            config(r#"{"durable_name":"N","ack_policy":"explicit","max_batch":5,"max_waiting":1}"#),
            &src,
        );
        let mut out = Vec::new();
        c.pull(reply("r"), request(r#"{"batch":6}"#), &src, 0, &mut out);
        c.pull(
            reply("r"),
            request(r#"{"batch":1,"expires":10000000000}"#),
            &src,
            0,
            &mut out,
        );
        c.pull(
            reply("r"),
            request(r#"{"batch":1,"expires":10000000000}"#),
            &src,
            0,
            &mut out,
        );
        assert_eq!(
            statuses(&out),
            [
                "NATS/1.0 409 Exceeded MaxRequestBatch of 5\r\n\r\n",
                "NATS/1.0 409 Exceeded MaxWaiting\r\n\r\n"
            ]
        );
        assert_eq!(
            PullRequest::parse(br#"{"expires":1000000000,"idle_heartbeat":1000000000}"#),
            Err("heartbeat value too large".into())
        );
        let push = config(r#"{"durable_name":"P","deliver_subject":"d"}"#);
        let mut push = Consumer::new(push, &src);
        out.clear();
        push.pull(reply("r"), request(""), &src, 0, &mut out);
        assert_eq!(
            statuses(&out),
            ["NATS/1.0 409 Consumer is push based\r\n\r\n"]
        );
    }

    #[test]
    fn idle_heartbeats_while_a_request_waits() {
        let src = Fake::with(&[]);
        let mut c = Consumer::new(
            config(r#"{"durable_name":"N","ack_policy":"explicit"}"#),
            &src,
        );
        let mut out = Vec::new();
        c.pull(
            reply("r"),
            request(r#"{"batch":1,"expires":2500000000,"idle_heartbeat":1000000000}"#),
            &src,
            0,
            &mut out,
        );
        assert_eq!(c.next_deadline(), Some(S));
        c.tick(&src, S, &mut out);
        c.tick(&src, 2 * S, &mut out);
        c.tick(&src, 5 * S / 2, &mut out);
        let hb =
            "NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 0\r\nNats-Last-Stream: 0\r\n\r\n";
        assert_eq!(
            statuses(&out),
            [
                hb,
                hb,
                "NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 1\r\nNats-Pending-Bytes: 0\r\n\r\n"
            ]
        );
    }

    /// Info as the captured `CONSUMER.INFO` shows it, field for field.
    #[test]
    fn info_has_nats_servers_shape() {
        let src = Fake::with(&["O.new", "O.new"]);
        let mut c = Consumer::new(
            config(r#"{"durable_name":"NEW","filter_subject":"O.new","ack_policy":"explicit"}"#),
            &src,
        );
        let text = serde_json::to_string(&c.info("O", 1, 2)).expect("json");
        let fresh: serde_json::Value = serde_json::from_str(&text).expect("parse");
        // Top-level keys in the order they are written (`config` is one object).
        let mut keys: Vec<&str> = fresh
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_by_key(|k| text.find(&format!("\"{k}\":")).unwrap_or(usize::MAX));
        assert_eq!(
            keys,
            [
                "stream_name",
                "name",
                "created",
                "config",
                "delivered",
                "ack_floor",
                "num_ack_pending",
                "num_redelivered",
                "num_waiting",
                "num_pending",
                "ts"
            ]
        );
        assert_eq!(
            fresh["delivered"],
            serde_json::json!({"consumer_seq": 0, "stream_seq": 0})
        );
        assert_eq!(fresh["num_pending"], 2);
        assert_eq!(fresh["config"]["metadata"]["_nats.level"], "4");
        let mut out = Vec::new();
        c.pull(reply("r"), request("1"), &src, 5 * S, &mut out);
        let info = c.info("O", 1, 6 * S);
        assert_eq!(
            (
                info.delivered.last_active.as_deref(),
                info.ack_floor.last_active.as_deref()
            ),
            (Some("1970-01-01T00:00:05Z"), None)
        );
        assert_eq!((info.num_ack_pending, info.num_pending), (1, 1));
    }

    /// Kept state brings back exactly what was pending, and nothing acknowledged.
    #[test]
    fn restored_state_redelivers_the_unacknowledged_only() {
        let src = Fake::with(&["O.a", "O.b", "O.c", "O.d"]);
        let cfg = config(r#"{"durable_name":"N","ack_policy":"explicit","ack_wait":5000000000}"#);
        let mut c = Consumer::new(cfg.clone(), &src);
        let mut out = Vec::new();
        c.pull(reply("r"), request("3"), &src, 0, &mut out);
        c.ack(1, AckKind::Ack, None, &src, S, &mut out);
        c.ack(3, AckKind::Nak(None), None, &src, S, &mut out);
        c.pull(reply("r"), request("1"), &src, S, &mut out);
        assert_eq!(
            delivered(&out),
            [(1, 1, 1), (2, 2, 1), (3, 3, 1), (3, 4, 2)]
        );
        let kept = c.state();
        assert_eq!(kept.pending, BTreeMap::from([(2, (2, 0)), (3, (4, S))]));
        assert_eq!(kept.redelivered, BTreeMap::from([(3, 2)]));
        let json = serde_json::to_string(&kept).expect("encode");
        let kept: ConsumerState = serde_json::from_str(&json).expect("decode");

        let mut back = Consumer::restore(cfg, &kept, &src);
        assert_eq!(
            (back.delivered(), back.ack_floor()),
            (c.delivered(), c.ack_floor())
        );
        assert_eq!(back.num_pending(), 1, "only 4 was never delivered");
        assert_eq!(
            back.next_deadline(),
            Some(5 * S),
            "2's ack wait from its first delivery"
        );
        out.clear();
        back.pull(
            reply("r"),
            request(r#"{"batch":3,"expires":60000000000}"#),
            &src,
            5 * S,
            &mut out,
        );
        assert_eq!(
            delivered(&out),
            [(4, 5, 1)],
            "new messages first; the rest is not due"
        );
        out.clear();
        back.tick(&src, 6 * S, &mut out);
        assert_eq!(
            delivered(&out),
            [(2, 6, 2), (3, 7, 3)],
            "both come back, counted"
        );
    }

    /// The same core on a real store: the index answers without loading
    /// messages, and the core sees only what is committed.
    #[test]
    fn a_filtered_consumer_on_a_memory_store() {
        use crate::jetstream::host::Committed;
        use strait_storage::{AnyStore, Limits, MemStore, Store};
        let store = AnyStore::Memory(Box::new(MemStore::new(Limits::default())));
        let append = |subject: &str, ts: i64| {
            futures_lite::future::block_on(store.append(subject, b"", b"payload", ts, None))
                .expect("append")
        };
        for (i, subject) in ["O.a", "O.b", "O.a", "O.c", "O.a"].iter().enumerate() {
            append(subject, i as i64 + 1);
        }
        let committed = Committed {
            store: &store,
            up_to: 5,
        };
        let mut c = Consumer::new(
            config(
                r#"{"durable_name":"N","ack_policy":"explicit","filter_subjects":["O.a","O.c"]}"#,
            ),
            &committed,
        );
        assert_eq!(c.num_pending(), 4);
        let mut out = Vec::new();
        c.pull(reply("r"), request("3"), &committed, 0, &mut out);
        assert_eq!(delivered(&out), [(1, 1, 1), (3, 2, 1), (4, 3, 1)]);
        let last = Consumer::new(
            config(
                r#"{"ack_policy":"none","deliver_policy":"last_per_subject","filter_subject":"O.*"}"#,
            ),
            &committed,
        );
        assert_eq!(last.num_pending(), 3, "the last of a, b and c");
        let mut last = last;
        out.clear();
        last.pull(reply("r"), request("5"), &committed, 0, &mut out);
        assert_eq!(delivered(&out), [(2, 1, 1), (4, 2, 1), (5, 3, 1)]);
        assert_eq!(last.num_pending(), 0);

        // Staged but not committed: not there for a consumer.
        append("O.a", 6);
        let late = Consumer::new(config(r#"{"ack_policy":"none"}"#), &committed);
        assert_eq!(late.num_pending(), 5, "sequence 6 is not counted");
        let mut late = late;
        out.clear();
        late.pull(reply("r"), request("10"), &committed, 0, &mut out);
        assert_eq!(delivered(&out).len(), 5, "sequence 6 is not delivered");
        let new = Consumer::new(
            config(r#"{"ack_policy":"none","deliver_policy":"new"}"#),
            &committed,
        );
        let committed = Committed {
            store: &store,
            up_to: 6,
        };
        let mut new = new;
        new.on_append(6, "O.a");
        out.clear();
        new.pull(reply("r"), request("10"), &committed, 0, &mut out);
        assert_eq!(
            delivered(&out),
            [(6, 1, 1)],
            "a consumer made while 6 was staged gets it once committed"
        );
    }

    #[test]
    fn appends_reach_waiting_requests_and_deleted_messages_are_not_redelivered() {
        let mut src = Fake::with(&["O.a"]);
        let mut c = Consumer::new(
            config(r#"{"durable_name":"N","ack_policy":"explicit","ack_wait":1000000000}"#),
            &src,
        );
        let mut out = Vec::new();
        c.pull(
            reply("r"),
            request(r#"{"batch":2,"expires":60000000000}"#),
            &src,
            0,
            &mut out,
        );
        assert_eq!(delivered(&out), [(1, 1, 1)]);
        src.msgs.push(Some(("O.b".into(), 10)));
        c.on_append(2, "O.b");
        assert_eq!(c.num_pending(), 1);
        out.clear();
        c.deliver(&src, 0, &mut out);
        assert_eq!(delivered(&out), [(2, 2, 1)]);
        src.msgs[0] = None;
        out.clear();
        c.pull(
            reply("r"),
            request(r#"{"batch":1,"expires":60000000000}"#),
            &src,
            0,
            &mut out,
        );
        c.tick(&src, S, &mut out);
        assert_eq!(delivered(&out), [(2, 3, 2)], "1 is gone, 2 comes back");
        assert_eq!(c.pending(1), None);
    }

    fn push(json: &str, src: &Fake) -> Consumer {
        let mut c = Consumer::new(config(json), src);
        c.begin(0, "$JS.FC.O.P.", "P");
        c
    }

    fn flow_requests(out: &[Action]) -> Vec<String> {
        out.iter()
            .filter_map(|a| match a {
                Action::FlowControl { reply, .. } => Some(reply.to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_push_consumer_delivers_only_while_someone_listens() {
        let mut src = Fake::with(&["O.a", "O.b", "O.c"]);
        let mut c = push(r#"{"durable_name":"P","deliver_subject":"out"}"#, &src);
        assert_eq!(c.deliver_to(), Some(("out", None)));
        let mut out = Vec::new();
        c.deliver(&src, 0, &mut out);
        assert!(out.is_empty(), "nobody listens yet");
        assert!(!c.wants_messages());
        c.set_interest(true, &src, 1, &mut out);
        assert_eq!(delivered(&out), [(1, 1, 1), (2, 2, 1), (3, 3, 1)]);
        assert!(out
            .iter()
            .all(|a| matches!(a, Action::Deliver { to, .. } if &**to == "out")));
        c.set_interest(false, &src, 2, &mut out);
        src.msgs.push(Some(("O.d".into(), 10)));
        c.on_append(4, "O.d");
        assert!(!c.wants_messages(), "the subscriber left");
        out.clear();
        c.set_interest(true, &src, 3, &mut out);
        assert_eq!(delivered(&out), [(4, 4, 1)], "resumed where it stopped");
    }

    #[test]
    fn an_idle_push_consumer_sends_heartbeats_to_its_subscriber() {
        let src = Fake::with(&[]);
        let mut c = push(
            r#"{"durable_name":"P","deliver_subject":"out","idle_heartbeat":1000000000}"#,
            &src,
        );
        assert_eq!(
            c.next_deadline(),
            None,
            "no heartbeats with nobody listening"
        );
        let mut out = Vec::new();
        c.set_interest(true, &src, 0, &mut out);
        assert_eq!(c.next_deadline(), Some(S));
        c.tick(&src, S, &mut out);
        assert_eq!(
            statuses(&out),
            ["NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 0\r\nNats-Last-Stream: 0\r\n\r\n"]
        );
        assert!(matches!(&out[0], Action::Status { to, .. } if &**to == "out"));
        assert_eq!(c.next_deadline(), Some(2 * S));
    }

    #[test]
    fn flow_control_holds_deliveries_until_the_subscriber_answers() {
        let src = Fake {
            msgs: (0..10)
                .map(|_| Some(("O.a".to_string(), 600_000)))
                .collect(),
            gone: Vec::new(),
        };
        let mut c = push(
            r#"{"durable_name":"P","deliver_subject":"out","flow_control":true,"idle_heartbeat":1000000000}"#,
            &src,
        );
        let mut out = Vec::new();
        c.set_interest(true, &src, 0, &mut out);
        // The window starts at 2 MiB: a request once 1 MiB is in flight, and
        // nothing more once the window is full.
        assert_eq!(delivered(&out).len(), 4);
        assert_eq!(flow_requests(&out), ["$JS.FC.O.P.1"]);
        out.clear();
        c.tick(&src, S, &mut out);
        assert_eq!(
            statuses(&out),
            ["NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 4\r\nNats-Last-Stream: 4\r\nNats-Consumer-Stalled: $JS.FC.O.P.1\r\n\r\n"],
            "stalled, the heartbeat says on what"
        );
        assert!(delivered(&out).is_empty());
        out.clear();
        assert!(!c.flow_answered("$JS.FC.O.P.9", None, &src, S, &mut out));
        assert!(out.is_empty(), "not the request waited for");
        c.flow_answered("$JS.FC.O.P.1", None, &src, S, &mut out);
        // The window doubled to 4 MiB.
        assert_eq!(
            delivered(&out).iter().map(|d| d.0).collect::<Vec<_>>(),
            [5, 6, 7, 8, 9]
        );
        assert_eq!(flow_requests(&out), ["$JS.FC.O.P.2"]);
    }

    /// A sourcing consumer feeds a stream's internal queue, bounded in
    /// messages: however small they are, no more than `SOURCING_IN_FLIGHT`
    /// go out unanswered, while a client's consumer counts bytes only.
    #[test]
    fn a_sourcing_consumer_bounds_its_deliveries_in_flight_in_messages() {
        let src = Fake {
            msgs: (0..50_000)
                .map(|_| Some(("O.a".to_string(), 100)))
                .collect(),
            gone: Vec::new(),
        };
        let config = |sourcing: bool| {
            format!(
                r#"{{"durable_name":"P","deliver_subject":"out","flow_control":true,"idle_heartbeat":1000000000,"ack_policy":"none","sourcing":{sourcing}}}"#
            )
        };
        let mut client = push(&config(false), &src);
        let mut out = Vec::new();
        client.set_interest(true, &src, 0, &mut out);
        assert!(
            delivered(&out).len() as u64 > SOURCING_IN_FLIGHT,
            "a client's window is in bytes"
        );

        let mut c = push(&config(true), &src);
        out.clear();
        c.set_interest(true, &src, 0, &mut out);
        let mut total = 0;
        for _ in 0..12 {
            let sent = delivered(&out).len() as u64;
            assert!(
                sent <= SOURCING_IN_FLIGHT,
                "{sent} deliveries sent between answers"
            );
            total += sent;
            let requests = flow_requests(&out);
            out.clear();
            for r in requests {
                c.flow_answered(&r, None, &src, S, &mut out);
            }
        }
        assert!(
            total > 4 * SOURCING_IN_FLIGHT,
            "answers keep it going: {total}"
        );
    }

    #[test]
    fn acks_by_flow_control_ack_up_to_the_answers_last_sequence() {
        let src = Fake::with(&["O.a", "O.b", "O.c"]);
        let mut c = push(
            r#"{"durable_name":"P","deliver_subject":"out","flow_control":true,"idle_heartbeat":1000000000,"ack_policy":"flow_control","max_ack_pending":2}"#,
            &src,
        );
        let mut out = Vec::new();
        c.set_interest(true, &src, 0, &mut out);
        assert_eq!(delivered(&out).len(), 2, "held at max_ack_pending");
        let requests = flow_requests(&out);
        assert_eq!(requests.len(), 1, "asked at once for the acks");
        out.clear();
        assert!(c.flow_answered(&requests[0], Some(2), &src, 1, &mut out));
        assert_eq!(c.ack_floor().stream, 2);
        assert_eq!(delivered(&out), [(3, 3, 1)]);
        // Its ack wait is 0, which means no timer: nothing is redelivered,
        // however long the answer takes.
        out.clear();
        c.tick(&src, 3600 * S, &mut out);
        assert!(delivered(&out).is_empty(), "{out:?}");
        assert_eq!(c.num_redelivered(), 0);
        assert!(c.next_deadline().is_none_or(|at| at < 3600 * S + 10 * S));
    }

    #[test]
    fn a_paused_consumer_holds_deliveries_until_its_pause_runs_out() {
        let src = Fake::with(&["O.a", "O.b"]);
        let mut c = Consumer::new(
            config(
                r#"{"durable_name":"P","ack_policy":"explicit","pause_until":"1970-01-01T00:00:10Z"}"#,
            ),
            &src,
        );
        c.begin(0, "", "P");
        let mut out = Vec::new();
        c.pull(
            reply("waits"),
            request(r#"{"batch":5,"expires":60000000000}"#),
            &src,
            S,
            &mut out,
        );
        c.pull(
            reply("now"),
            request(r#"{"batch":1,"no_wait":true}"#),
            &src,
            S,
            &mut out,
        );
        assert!(delivered(&out).is_empty(), "nothing while paused");
        assert_eq!(
            statuses(&out),
            ["NATS/1.0 404 No Messages\r\n\r\n"],
            "no_wait hears so"
        );
        assert_eq!(c.num_waiting(), 1);
        let info = c.info("O", 0, 4 * S);
        assert!(info.paused);
        assert_eq!(info.pause_remaining, 6 * S);
        assert_eq!(c.next_deadline(), Some(10 * S), "wakes at the resume");
        out.clear();
        c.tick(&src, 10 * S, &mut out);
        assert_eq!(out.iter().filter(|a| **a == Action::Resumed).count(), 1);
        assert_eq!(
            delivered(&out),
            [(1, 1, 1), (2, 2, 1)],
            "the waiting pull is served"
        );
        assert!(!c.info("O", 0, 10 * S).paused);
        out.clear();
        c.tick(&src, 11 * S, &mut out);
        assert!(!out.contains(&Action::Resumed), "told once");

        // A pause already over when it is set says nothing and holds nothing.
        let mut late = Consumer::new(
            config(
                r#"{"durable_name":"L","ack_policy":"explicit","pause_until":"1970-01-01T00:00:01Z"}"#,
            ),
            &src,
        );
        late.begin(5 * S, "", "P");
        assert_eq!(late.next_deadline(), None);
        late.tick(&src, 6 * S, &mut out);
        assert!(!out.contains(&Action::Resumed));
    }

    #[test]
    fn an_unused_pull_consumer_is_told_inactive_after_its_threshold() {
        let src = Fake::with(&["O.a"]);
        let mut c = Consumer::new(
            config(r#"{"ack_policy":"none","inactive_threshold":5000000000}"#),
            &src,
        );
        c.begin(0, "", "P");
        assert_eq!(c.next_deadline(), Some(5 * S));
        let mut out = Vec::new();
        c.pull(
            reply("r"),
            request(r#"{"batch":5,"expires":2000000000}"#),
            &src,
            S,
            &mut out,
        );
        // A waiting request keeps it in use; the threshold counts from its last use.
        c.tick(&src, 3 * S, &mut out);
        assert!(!out.contains(&Action::Inactive));
        c.tick(&src, 5 * S + 1, &mut out);
        assert!(!out.contains(&Action::Inactive), "used at 1 s");
        c.tick(&src, 6 * S, &mut out);
        assert_eq!(out.iter().filter(|a| **a == Action::Inactive).count(), 1);
        c.tick(&src, 7 * S, &mut out);
        assert_eq!(
            out.iter().filter(|a| **a == Action::Inactive).count(),
            1,
            "told once"
        );
        assert_eq!(c.next_deadline(), None);
    }

    #[test]
    fn a_push_consumer_is_inactive_only_after_losing_its_subscriber() {
        let src = Fake::with(&[]);
        let mut c = push(
            r#"{"deliver_subject":"out","inactive_threshold":5000000000}"#,
            &src,
        );
        let mut out = Vec::new();
        c.set_interest(true, &src, S, &mut out);
        c.tick(&src, 20 * S, &mut out);
        assert!(!out.contains(&Action::Inactive), "listened to");
        c.set_interest(false, &src, 20 * S, &mut out);
        assert_eq!(c.next_deadline(), Some(25 * S));
        c.tick(&src, 25 * S, &mut out);
        assert!(out.contains(&Action::Inactive));
    }

    fn releases(out: &[Action]) -> Vec<u64> {
        out.iter()
            .filter_map(|a| match a {
                Action::Release { stream_seq } => Some(*stream_seq),
                _ => None,
            })
            .collect()
    }

    /// Interest and work queue retention: what a consumer is done with, it
    /// says; what it still needs, it answers for.
    #[test]
    fn a_consumer_releases_what_it_is_done_with() {
        let src = Fake::with(&["O.a", "O.b", "O.c", "O.d", "O.x"]);
        let mut c = Consumer::new(
            config(
                r#"{"durable_name":"N","ack_policy":"explicit","filter_subjects":["O.a","O.b","O.c","O.d"]}"#,
            ),
            &src,
        );
        let mut out = Vec::new();
        c.pull(reply("r"), request("3"), &src, 0, &mut out);
        c.ack(1, AckKind::Ack, None, &src, 0, &mut out);
        assert!(releases(&out).is_empty(), "a limits stream hears nothing");
        c.report_releases(true);
        out.clear();
        c.ack(2, AckKind::Term(String::new()), None, &src, 0, &mut out);
        c.ack(2, AckKind::Ack, None, &src, 0, &mut out);
        assert_eq!(releases(&out), [2], "terminated counts, once");
        assert!(!c.needs(1, "O.a") && !c.needs(2, "O.b"), "done with");
        assert!(c.needs(3, "O.c"), "waits for its ack");
        assert!(c.needs(4, "O.d"), "not delivered yet");
        assert!(!c.needs(5, "O.x"), "not its subject");
        out.clear();
        c.ack(3, AckKind::Nak(None), None, &src, 0, &mut out);
        assert!(
            releases(&out).is_empty() && c.needs(3, "O.c"),
            "naked: still needed"
        );

        let mut all = Consumer::new(config(r#"{"durable_name":"A","ack_policy":"all"}"#), &src);
        all.report_releases(true);
        out.clear();
        all.pull(reply("r"), request("3"), &src, 0, &mut out);
        all.ack(2, AckKind::Ack, None, &src, 0, &mut out);
        assert_eq!(
            releases(&out),
            [1, 2],
            "an ack of all covers what came before"
        );

        let mut none = Consumer::new(config(r#"{"ack_policy":"none"}"#), &src);
        none.report_releases(true);
        out.clear();
        none.pull(reply("r"), request("2"), &src, 0, &mut out);
        assert_eq!(releases(&out), [1, 2], "without acks, delivered is done");
        assert!(matches!(
            out.last(),
            Some(Action::Release { stream_seq: 2 })
        ));
        assert!(
            matches!(
                out.iter()
                    .position(|a| matches!(a, Action::Deliver { stream_seq: 1, .. })),
                Some(0)
            ),
            "delivered before it is released: {out:?}"
        );
    }

    /// nats-server keeps a message that ran out of deliveries for the
    /// consumer that never acknowledged it, also across a restart.
    #[test]
    fn a_message_out_of_deliveries_stays_needed() {
        let src = Fake::with(&["O.a"]);
        let cfg =
            r#"{"durable_name":"N","ack_policy":"explicit","ack_wait":1000000000,"max_deliver":1}"#;
        let mut c = Consumer::new(config(cfg), &src);
        c.report_releases(true);
        let mut out = Vec::new();
        c.pull(reply("r"), request("1"), &src, 0, &mut out);
        out.clear();
        c.tick(&src, S, &mut out);
        assert!(
            matches!(out[..], [Action::MaxDeliveries { stream_seq: 1, .. }]),
            "{out:?}"
        );
        assert!(c.needs(1, "O.a"));
        let restored = Consumer::restore(config(cfg), &c.state(), &src);
        assert!(restored.needs(1, "O.a"), "kept in the state");
        assert!(!Consumer::restore(
            config(cfg),
            &ConsumerState {
                delivered: c.delivered(),
                ack_floor: c.ack_floor(),
                ..Default::default()
            },
            &src
        )
        .needs(1, "O.a"));
    }

    /// Who got which stream sequence, and under which pin.
    fn recipients(out: &[Action]) -> Vec<(String, u64, Option<String>)> {
        out.iter()
            .filter_map(|a| match a {
                Action::Deliver {
                    to,
                    stream_seq,
                    pin,
                    ..
                } => Some((
                    to.to_string(),
                    *stream_seq,
                    pin.as_deref().map(str::to_string),
                )),
                _ => None,
            })
            .collect()
    }

    fn grouped(policy: &str) -> Consumer {
        let mut c = Consumer::new(
            config(&format!(
                r#"{{"durable_name":"G","ack_policy":"explicit","priority_policy":"{policy}","priority_groups":["A"],"priority_timeout":5000000000}}"#
            )),
            &Fake::with(&[]),
        );
        c.begin(0, "", "PIN");
        c
    }

    #[test]
    fn requests_with_priority_fields_are_checked_as_nats_server_does() {
        let src = Fake::with(&["a"]);
        let mut plain = Consumer::new(
            config(r#"{"durable_name":"N","ack_policy":"explicit"}"#),
            &src,
        );
        let mut out = Vec::new();
        for (req, text) in [
            (r#"{"min_pending":1}"#, "Not a Overflow Priority consumer"),
            (r#"{"id":"x"}"#, "Not a Pinned Client Priority consumer"),
            (r#"{"priority":10}"#, "Priority must be between 0 and 9"),
        ] {
            plain.pull(reply("r"), request(req), &src, 0, &mut out);
            assert_eq!(
                statuses(&out),
                [format!("NATS/1.0 400 Bad Request - {text}\r\n\r\n")]
            );
            out.clear();
        }
        let mut c = grouped("overflow");
        for (req, text) in [
            (r#"{"batch":1}"#, "Priority Group missing"),
            (r#"{"group":"B"}"#, "Invalid Priority Group"),
        ] {
            c.pull(reply("r"), request(req), &src, 0, &mut out);
            assert_eq!(
                statuses(&out),
                [format!("NATS/1.0 400 Bad Request - {text}\r\n\r\n")]
            );
            out.clear();
        }
        // A bare batch number carries no group, and nats-server lets it pull.
        c.pull(reply("r"), request("1"), &src, 0, &mut out);
        assert_eq!(delivered(&out), [(1, 1, 1)]);
    }

    #[test]
    fn overflow_serves_a_request_only_once_the_consumer_is_behind() {
        let mut src = Fake::with(&[]);
        let mut c = grouped("overflow");
        let mut out = Vec::new();
        c.pull(
            reply("spill"),
            request(r#"{"group":"A","batch":10,"min_pending":3}"#),
            &src,
            0,
            &mut out,
        );
        c.pull(
            reply("main"),
            request(r#"{"group":"A","batch":10}"#),
            &src,
            0,
            &mut out,
        );
        // Three messages arrive while nobody pulls them: the spill-over is behind enough.
        src.msgs.extend([
            Some(("a".into(), 10)),
            Some(("a".into(), 10)),
            Some(("a".into(), 10)),
        ]);
        for seq in 1..=3 {
            c.on_append(seq, "a");
        }
        c.deliver(&src, 0, &mut out);
        let to: Vec<String> = recipients(&out).into_iter().map(|r| r.0).collect();
        // The spill-over takes the first (3 pending); then the backlog is too
        // small for it, and the main request takes the rest.
        assert_eq!(to, ["spill", "main", "main"]);
        out.clear();
        // With no backlog the spill-over request waits; the main one takes each message.
        let mut lone = grouped("overflow");
        lone.recount(&src);
        lone.pull(
            reply("spill"),
            request(r#"{"group":"A","min_pending":2}"#),
            &src,
            0,
            &mut out,
        );
        assert_eq!(recipients(&out).len(), 1, "3 pending: served at once");
        out.clear();
        let mut ack_bound = grouped("overflow");
        ack_bound.pull(
            reply("spill"),
            request(r#"{"group":"A","min_ack_pending":1}"#),
            &Fake::with(&["a"]),
            0,
            &mut out,
        );
        assert!(recipients(&out).is_empty(), "nothing awaits an ack yet");
    }

    const SECOND: i64 = 1_000_000_000;

    #[test]
    fn replay_original_keeps_the_stored_pace_until_it_catches_up() {
        // Stored a second apart (see `Fake::time_of`).
        let mut src = Fake::with(&["a", "a", "a"]);
        let mut c = Consumer::new(
            config(r#"{"durable_name":"R","ack_policy":"none","replay_policy":"original"}"#),
            &src,
        );
        c.begin(0, "", "");
        let mut out = Vec::new();
        c.pull(reply("r"), request("10"), &src, 0, &mut out);
        assert_eq!(delivered(&out), [(1, 1, 1)], "the first goes at once");
        assert_eq!(
            c.next_deadline(),
            Some(SECOND),
            "the next one a second later"
        );
        out.clear();
        c.tick(&src, SECOND / 2, &mut out);
        assert!(delivered(&out).is_empty());
        c.tick(&src, SECOND, &mut out);
        assert_eq!(delivered(&out), [(2, 2, 1)]);
        out.clear();
        c.tick(&src, 2 * SECOND, &mut out);
        assert_eq!(delivered(&out), [(3, 3, 1)]);
        // Caught up with what the stream held at the start: later messages
        // go as they come.
        out.clear();
        src.msgs.push(Some(("a".into(), 10)));
        c.on_append(4, "a");
        c.deliver(&src, 2 * SECOND, &mut out);
        assert_eq!(delivered(&out), [(4, 4, 1)]);
        // Instant replay (the default) does not wait.
        let src = Fake::with(&["a", "a", "a"]);
        let mut instant =
            Consumer::new(config(r#"{"durable_name":"I","ack_policy":"none"}"#), &src);
        instant.pull(reply("r"), request("10"), &src, 0, &mut out);
        assert_eq!(delivered(&out).len(), 4);
    }

    #[test]
    fn a_rate_limit_caps_the_bytes_sent_per_second() {
        let src = Fake::with(&["a", "a", "a", "a"]);
        // 80 bits a second: 10 bytes, one fake message.
        let mut c = push(
            r#"{"durable_name":"P","deliver_subject":"out","ack_policy":"none","rate_limit_bps":80}"#,
            &src,
        );
        c.set_rate_limit(20, 0);
        let mut out = Vec::new();
        c.set_interest(true, &src, 0, &mut out);
        assert_eq!(delivered(&out).len(), 2, "a burst of 20 bytes");
        assert_eq!(c.next_deadline(), Some(SECOND));
        out.clear();
        c.tick(&src, SECOND, &mut out);
        assert_eq!(delivered(&out), [(3, 3, 1)]);
        out.clear();
        c.tick(&src, 3 * SECOND / 2, &mut out);
        assert!(delivered(&out).is_empty(), "half the bytes are back");
        c.tick(&src, 2 * SECOND, &mut out);
        assert_eq!(delivered(&out), [(4, 4, 1)]);
    }

    #[test]
    fn a_request_nobody_listens_for_is_dropped_and_the_next_one_served() {
        let mut src = Fake::with(&[]);
        let mut c = Consumer::new(
            config(r#"{"durable_name":"D","ack_policy":"explicit","max_waiting":2}"#),
            &src,
        );
        c.begin(0, "", "");
        let mut out = Vec::new();
        for inbox in ["crashed", "alive"] {
            c.pull(reply(inbox), request(r#"{"batch":5}"#), &src, 0, &mut out);
        }
        src.gone.push("crashed".into());
        src.msgs.push(Some(("a".into(), 10)));
        c.on_append(1, "a");
        c.deliver(&src, 0, &mut out);
        assert_eq!(recipients(&out), [("alive".into(), 1, None)]);
        assert!(statuses(&out).is_empty(), "the gone request hears nothing");
        assert_eq!(c.num_waiting(), 1);
        // A full queue makes room by the requests nobody hears.
        c.pull(reply("other"), request(r#"{"batch":5}"#), &src, 1, &mut out);
        out.clear();
        c.pull(reply("late"), request(r#"{"batch":5}"#), &src, 1, &mut out);
        assert_eq!(statuses(&out), ["NATS/1.0 409 Exceeded MaxWaiting\r\n\r\n"]);
        src.gone.push("alive".into());
        out.clear();
        c.pull(reply("late"), request(r#"{"batch":5}"#), &src, 2, &mut out);
        assert_eq!(
            statuses(&out),
            ["NATS/1.0 409 Exceeded MaxWaiting\r\n\r\n"],
            "swept at most once a second"
        );
        out.clear();
        c.pull(
            reply("late"),
            request(r#"{"batch":5}"#),
            &src,
            2_000_000_000,
            &mut out,
        );
        assert!(statuses(&out).is_empty(), "{out:?}");
        assert_eq!(c.num_waiting(), 2);
    }

    #[test]
    fn a_pin_given_to_a_request_nobody_hears_is_not_kept() {
        let mut src = Fake::with(&[]);
        let mut c = grouped("pinned_client");
        let mut out = Vec::new();
        for inbox in ["gone", "standby"] {
            c.pull(
                reply(inbox),
                request(r#"{"group":"A","batch":5}"#),
                &src,
                0,
                &mut out,
            );
        }
        src.gone.push("gone".into());
        src.msgs.push(Some(("a".into(), 10)));
        c.on_append(1, "a");
        c.deliver(&src, 0, &mut out);
        let to: Vec<String> = recipients(&out).into_iter().map(|r| r.0).collect();
        assert_eq!(to, ["standby"], "{out:?}");
    }

    #[test]
    fn a_pinned_client_gets_everything_until_its_pin_lapses_or_is_taken() {
        let src = Fake::with(&["a", "a", "a", "a"]);
        let mut c = grouped("pinned_client");
        c.recount(&src);
        let mut out = Vec::new();
        c.pull(
            reply("first"),
            request(r#"{"group":"A","batch":1}"#),
            &src,
            0,
            &mut out,
        );
        let Some(Action::Pinned { group, id }) = out.first().cloned() else {
            panic!("pinned: {out:?}");
        };
        assert_eq!(group, "A");
        assert_eq!(&*id, "PIN0000000001");
        assert_eq!(
            recipients(&out),
            [("first".into(), 1, Some(id.to_string()))]
        );
        assert_eq!(c.info("S", 0, 0).priority_groups[0].pinned_client_id, &*id);
        out.clear();
        // Another client without the pin waits; a wrong pin is refused.
        c.pull(
            reply("other"),
            request(r#"{"group":"A","batch":5}"#),
            &src,
            S,
            &mut out,
        );
        assert!(recipients(&out).is_empty());
        c.pull(
            reply("stale"),
            request(r#"{"group":"A","id":"OLD"}"#),
            &src,
            S,
            &mut out,
        );
        assert_eq!(
            statuses(&out),
            ["NATS/1.0 423 Nats-Pin-Id mismatch\r\n\r\n"]
        );
        out.clear();
        // The pinned client asks again at 2 s: its pin now lapses at 7 s.
        let pinned = format!(r#"{{"group":"A","batch":1,"id":"{id}"}}"#);
        c.pull(reply("first"), request(&pinned), &src, 2 * S, &mut out);
        assert_eq!(
            recipients(&out),
            [("first".into(), 2, Some(id.to_string()))]
        );
        assert_eq!(c.next_deadline(), Some(7 * S));
        out.clear();
        c.tick(&src, 7 * S, &mut out);
        assert!(matches!(
            &out[0],
            Action::Unpinned { group, reason: UnpinReason::Timeout } if group == "A"
        ));
        // The waiting client is pinned in turn and served.
        let served = recipients(&out);
        assert_eq!(served.len(), 2);
        assert!(served
            .iter()
            .all(|r| r.0 == "other" && r.2.as_deref() == Some("PIN0000000002")));
        out.clear();
        // An admin unpin: the old pin's request hears it holds the wrong one.
        let old = r#"{"group":"A","batch":1,"id":"PIN0000000002","expires":9000000000}"#;
        c.pull(reply("other"), request(old), &src, 8 * S, &mut out);
        assert!(out.is_empty(), "nothing left to deliver: it waits");
        c.unpin("A", &src, 8 * S, &mut out);
        assert!(matches!(
            &out[0],
            Action::Unpinned {
                reason: UnpinReason::Admin,
                ..
            }
        ));
        assert!(c.info("S", 0, 8 * S).priority_groups[0]
            .pinned_client_id
            .is_empty());
        out.clear();
        let mut more = src;
        more.msgs.push(Some(("a".into(), 10)));
        c.on_append(5, "a");
        c.deliver(&more, 8 * S, &mut out);
        let wrong = |n: u64| {
            format!("NATS/1.0 423 Nats-Wrong-Pin-Id\r\nNats-Pending-Messages: {n}\r\nNats-Pending-Bytes: 0\r\n\r\n")
        };
        assert_eq!(statuses(&out), [wrong(3), wrong(1)]);
        assert_eq!(c.num_waiting(), 0);
    }

    #[test]
    fn prioritized_serves_the_lowest_priority_number_first() {
        let src = Fake::with(&["a", "a", "a"]);
        let mut c = Consumer::new(
            config(
                r#"{"durable_name":"P","ack_policy":"explicit","priority_policy":"prioritized","priority_groups":["A"]}"#,
            ),
            &Fake::with(&[]),
        );
        c.begin(0, "", "P");
        let mut out = Vec::new();
        let empty = Fake::with(&[]);
        c.pull(
            reply("low"),
            request(r#"{"group":"A","batch":5,"priority":5}"#),
            &empty,
            0,
            &mut out,
        );
        c.pull(
            reply("high"),
            request(r#"{"group":"A","batch":2,"priority":1}"#),
            &empty,
            0,
            &mut out,
        );
        c.recount(&src);
        c.deliver(&src, 0, &mut out);
        let to: Vec<String> = recipients(&out).into_iter().map(|r| r.0).collect();
        assert_eq!(to, ["high", "high", "low"]);
    }

    #[test]
    fn waiting_requests_take_turns() {
        let src = Fake::with(&["a", "a", "a", "a"]);
        let mut c = Consumer::new(
            config(r#"{"durable_name":"N","ack_policy":"explicit"}"#),
            &Fake::with(&[]),
        );
        let mut out = Vec::new();
        let empty = Fake::with(&[]);
        c.pull(reply("one"), request(r#"{"batch":3}"#), &empty, 0, &mut out);
        c.pull(reply("two"), request(r#"{"batch":3}"#), &empty, 0, &mut out);
        c.recount(&src);
        c.deliver(&src, 0, &mut out);
        let to: Vec<String> = recipients(&out).into_iter().map(|r| r.0).collect();
        assert_eq!(to, ["one", "two", "one", "two"]);
    }
}
