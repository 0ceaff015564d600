//! Atomic batch publishing (`allow_atomic`, ADR-50) as a state machine without
//! I/O: messages carrying `Nats-Batch-Id` and `Nats-Batch-Sequence` are held
//! until the one with `Nats-Batch-Commit`, and then the whole batch is checked
//! and stored together or not at all ([`super::stream::Stream::check_batch`]).
//! Time comes in as nanoseconds; the shell answers, advises and stores.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

use super::errors::{self, ApiError};
use super::sourcing::without_headers;
use super::stream::{header, requires_newer_api, REQUIRED_API_LEVEL};

pub const BATCH_ID: &str = "Nats-Batch-Id";
pub const BATCH_SEQ: &str = "Nats-Batch-Sequence";
pub const BATCH_COMMIT: &str = "Nats-Batch-Commit";
/// The advisory of a batch given up, `.<stream>` appended.
pub const ABANDONED_ADVISORY: &str = "$JS.EVENT.ADVISORY.STREAM.BATCH_ABANDONED";
const MAX_ID_LEN: usize = 64;

/// The open batches of every stream in this server (`max_inflight_total`):
/// a process is one server, and its streams live on several shards.
pub static SERVER_INFLIGHT: AtomicUsize = AtomicUsize::new(0);

/// `jetstream { limits { batch { ... } } }`, with nats-server's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// `max_inflight_per_stream`: open batches per stream.
    pub per_stream: usize,
    /// `max_inflight_total`: open batches in the server.
    pub total: usize,
    /// `max_msgs`: messages in one batch.
    pub max_msgs: u64,
    /// `timeout`: how long a batch waits for its next message (ns).
    pub timeout_ns: i64,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            per_stream: 50,
            total: 1000,
            max_msgs: 1000,
            timeout_ns: 10_000_000_000,
        }
    }
}

/// Why a batch was given up, as the advisory says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abandoned {
    Timeout,
    Large,
    Incomplete,
    Unsupported,
}

impl Abandoned {
    pub fn reason(self) -> &'static str {
        match self {
            Abandoned::Timeout => "timeout",
            Abandoned::Large => "large",
            Abandoned::Incomplete => "incomplete",
            Abandoned::Unsupported => "unsupported",
        }
    }
}

/// One message of a batch, as published (the subject before any transform).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchMsg {
    pub subject: Bytes,
    pub headers: Bytes,
    pub payload: Bytes,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Held for the commit; the publisher gets an empty answer.
    Staged,
    /// The commit: the whole batch, in order, to check and store together.
    Commit { id: String, msgs: Vec<BatchMsg> },
    /// Refused; `abandoned` when this gave up an open batch.
    Refuse {
        error: ApiError,
        abandoned: Option<Abandoned>,
    },
}

#[derive(Debug)]
struct Open {
    last_seq: u64,
    msgs: Vec<BatchMsg>,
    idle_until: i64,
}

/// A stream's open batches. Each one counts in `inflight`, the server's total.
#[derive(Debug, Default)]
pub struct AtomicBatches {
    open: HashMap<String, Open>,
}

fn refuse(error: ApiError, abandoned: Option<Abandoned>) -> Step {
    Step::Refuse { error, abandoned }
}

impl AtomicBatches {
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    fn close(&mut self, id: &str, inflight: &AtomicUsize) {
        if self.open.remove(id).is_some() {
            inflight.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Gives up every open batch (the stream goes away).
    pub fn clear(&mut self, inflight: &AtomicUsize) {
        inflight.fetch_sub(self.open.len(), Ordering::Relaxed);
        self.open.clear();
    }

    /// The batches that waited too long at `now`, given up.
    pub fn expire(&mut self, now: i64, inflight: &AtomicUsize) -> Vec<String> {
        let expired: Vec<String> = self
            .open
            .iter()
            .filter(|(_, b)| b.idle_until <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.close(id, inflight);
        }
        expired
    }

    /// When the next open batch times out.
    pub fn next_deadline(&self) -> Option<i64> {
        self.open.values().map(|b| b.idle_until).min()
    }

    /// One message with `Nats-Batch-Id: id`, in nats-server's order of checks.
    #[allow(clippy::too_many_arguments)]
    pub fn offer(
        &mut self,
        allowed: bool,
        limits: &BatchLimits,
        inflight: &AtomicUsize,
        id: &str,
        mut msg: BatchMsg,
        now: i64,
    ) -> Step {
        if !allowed {
            return refuse(errors::ATOMIC_PUBLISH_DISABLED.error(), None);
        }
        if id.len() > MAX_ID_LEN {
            return refuse(errors::ATOMIC_PUBLISH_INVALID_BATCH_ID.error(), None);
        }
        let Some(seq) = header(&msg.headers, BATCH_SEQ).and_then(|s| s.parse::<u64>().ok()) else {
            return refuse(errors::ATOMIC_PUBLISH_MISSING_SEQ.error(), None);
        };
        let commit = header(&msg.headers, BATCH_COMMIT);
        let end_of_batch = commit == Some("eob");
        let commit_invalid = commit.is_some_and(|c| c != "eob" && c != "1");
        let commit = commit.is_some();
        // The end-of-batch marker is not a message of the batch.
        let size = seq - u64::from(end_of_batch);
        let too_large =
            || errors::ATOMIC_PUBLISH_TOO_LARGE_BATCH.with(&[("size", &limits.max_msgs)]);
        if !self.open.contains_key(id) {
            if seq != 1 {
                if size > limits.max_msgs {
                    return refuse(too_large(), None);
                }
                return refuse(errors::ATOMIC_PUBLISH_INCOMPLETE_BATCH.error(), None);
            }
            if self.open.len() + 1 > limits.per_stream {
                return refuse(errors::ATOMIC_PUBLISH_TOO_MANY_INFLIGHT.error(), None);
            }
            if inflight.fetch_add(1, Ordering::Relaxed) + 1 > limits.total {
                inflight.fetch_sub(1, Ordering::Relaxed);
                return refuse(errors::ATOMIC_PUBLISH_TOO_MANY_INFLIGHT.error(), None);
            }
            self.open.insert(
                id.to_string(),
                Open {
                    last_seq: 0,
                    msgs: Vec::new(),
                    idle_until: now,
                },
            );
        }
        if commit_invalid {
            self.close(id, inflight);
            return refuse(errors::ATOMIC_PUBLISH_INVALID_BATCH_COMMIT.error(), None);
        }
        if header(&msg.headers, REQUIRED_API_LEVEL).is_some() {
            if requires_newer_api(&msg.headers) {
                self.close(id, inflight);
                return refuse(
                    errors::REQUIRED_API_LEVEL.error(),
                    Some(Abandoned::Unsupported),
                );
            }
            msg.headers = Bytes::from(without_headers(&msg.headers, &[REQUIRED_API_LEVEL], &[]));
        }
        let Some(open) = self.open.get_mut(id) else {
            return refuse(errors::ATOMIC_PUBLISH_INCOMPLETE_BATCH.error(), None);
        };
        open.last_seq += 1;
        if open.last_seq != seq || (seq == 1 && end_of_batch) {
            self.close(id, inflight);
            return refuse(
                errors::ATOMIC_PUBLISH_INCOMPLETE_BATCH.error(),
                Some(Abandoned::Incomplete),
            );
        }
        if size > limits.max_msgs {
            self.close(id, inflight);
            return refuse(too_large(), Some(Abandoned::Large));
        }
        if !commit {
            open.msgs.push(msg);
            open.idle_until = now + limits.timeout_ns;
            return Step::Staged;
        }
        let mut msgs = std::mem::take(&mut open.msgs);
        self.close(id, inflight);
        if !end_of_batch {
            msgs.push(msg);
        } else if let Some(last) = msgs.last_mut() {
            // The last message stored says it committed the batch.
            last.headers =
                Bytes::from(super::stream::with_header(&last.headers, BATCH_COMMIT, "1"));
        }
        Step::Commit {
            id: id.to_string(),
            msgs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn msg(id: &str, seq: u64, commit: Option<&str>) -> BatchMsg {
        let mut h = format!("NATS/1.0\r\n{BATCH_ID}: {id}\r\n{BATCH_SEQ}: {seq}\r\n");
        if let Some(c) = commit {
            h.push_str(&format!("{BATCH_COMMIT}: {c}\r\n"));
        }
        h.push_str("\r\n");
        BatchMsg {
            subject: Bytes::from_static(b"orders.new"),
            headers: Bytes::from(h),
            payload: Bytes::from(format!("m{seq}")),
        }
    }

    fn offer(b: &mut AtomicBatches, n: &AtomicUsize, m: BatchMsg, now: i64) -> Step {
        let id = header(&m.headers, BATCH_ID).unwrap_or_default().to_string();
        b.offer(true, &BatchLimits::default(), n, &id, m, now)
    }

    fn code(step: Step) -> (u16, Option<Abandoned>) {
        match step {
            Step::Refuse { error, abandoned } => (error.err_code, abandoned),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_batch_is_held_until_its_commit_and_given_whole() {
        let (mut b, n) = (AtomicBatches::default(), AtomicUsize::new(0));
        assert_eq!(offer(&mut b, &n, msg("a", 1, None), 0), Step::Staged);
        assert_eq!(offer(&mut b, &n, msg("a", 2, None), 0), Step::Staged);
        assert_eq!(n.load(Ordering::Relaxed), 1);
        match offer(&mut b, &n, msg("a", 3, Some("1")), 0) {
            Step::Commit { id, msgs } => {
                assert_eq!(id, "a");
                let bodies: Vec<_> = msgs.iter().map(|m| m.payload.clone()).collect();
                assert_eq!(bodies, ["m1", "m2", "m3"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(b.is_empty());
        assert_eq!(n.load(Ordering::Relaxed), 0);
        // An end-of-batch marker is not stored; the last message says commit.
        offer(&mut b, &n, msg("e", 1, None), 0);
        match offer(&mut b, &n, msg("e", 2, Some("eob")), 0) {
            Step::Commit { msgs, .. } => {
                assert_eq!(msgs.len(), 1);
                assert_eq!(header(&msgs[0].headers, BATCH_COMMIT), Some("1"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn gaps_unknown_batches_limits_and_timeouts_refuse_as_nats_server_does() {
        let (mut b, n) = (AtomicBatches::default(), AtomicUsize::new(0));
        assert_eq!(code(offer(&mut b, &n, msg("x", 2, None), 0)), (10176, None));
        assert_eq!(
            code(offer(&mut b, &n, msg("x", 1001, None), 0)),
            (10199, None)
        );
        offer(&mut b, &n, msg("g", 1, None), 0);
        assert_eq!(
            code(offer(&mut b, &n, msg("g", 3, None), 0)),
            (10176, Some(Abandoned::Incomplete))
        );
        assert_eq!(
            code(offer(&mut b, &n, msg("e", 1, Some("eob")), 0)).1,
            Some(Abandoned::Incomplete)
        );
        offer(&mut b, &n, msg("c", 1, None), 0);
        assert_eq!(
            code(offer(&mut b, &n, msg("c", 2, Some("yes")), 0)),
            (10200, None)
        );
        let mut no_seq = msg("s", 1, None);
        no_seq.headers = Bytes::from(format!("NATS/1.0\r\n{BATCH_ID}: s\r\n\r\n"));
        assert_eq!(code(offer(&mut b, &n, no_seq, 0)), (10175, None));
        let long = "x".repeat(65);
        assert_eq!(
            code(offer(&mut b, &n, msg(&long, 1, None), 0)),
            (10179, None)
        );
        let refused = b.offer(
            false,
            &BatchLimits::default(),
            &n,
            "d",
            msg("d", 1, None),
            0,
        );
        assert_eq!(code(refused), (10174, None));
        // Fifty open per stream, a thousand in the server.
        for i in 0..50 {
            assert_eq!(
                offer(&mut b, &n, msg(&format!("o{i}"), 1, None), 0),
                Step::Staged
            );
        }
        assert_eq!(
            code(offer(&mut b, &n, msg("one-more", 1, None), 0)),
            (10210, None)
        );
        let full = AtomicUsize::new(1000);
        let mut other = AtomicBatches::default();
        assert_eq!(
            code(offer(&mut other, &full, msg("z", 1, None), 0)),
            (10210, None)
        );
        assert_eq!(full.load(Ordering::Relaxed), 1000);
        // Idle for ten seconds: given up, and what follows is incomplete.
        assert_eq!(b.next_deadline(), Some(10 * S));
        assert_eq!(b.expire(10 * S - 1, &n), Vec::<String>::new());
        assert_eq!(b.expire(10 * S, &n).len(), 50);
        assert_eq!(n.load(Ordering::Relaxed), 0);
        assert_eq!(
            code(offer(&mut b, &n, msg("o1", 2, None), 11 * S)),
            (10176, None)
        );
        // A batch larger than the limit is given up when it grows past it.
        let small = BatchLimits {
            max_msgs: 2,
            ..Default::default()
        };
        offer(&mut b, &n, msg("big", 1, None), 0);
        b.offer(true, &small, &n, "big", msg("big", 2, None), 0);
        let step = b.offer(true, &small, &n, "big", msg("big", 3, None), 0);
        assert_eq!(code(step), (10199, Some(Abandoned::Large)));
    }
}
