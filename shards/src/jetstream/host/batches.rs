//! The shell of atomic batch publishing: the batch state machine
//! ([`super::super::batch`]) holds a batch until its commit; then the whole
//! batch is checked at once and staged in the store back to back, so one
//! group commit makes all of it durable, and only the commit is acknowledged.

use std::rc::Rc;

use bytes::Bytes;
use serde_json::json;
use strait_storage::{Store, StoreError};

use super::super::batch::{Abandoned, BatchMsg, Step, ABANDONED_ADVISORY, SERVER_INFLIGHT};
use super::super::config::Discard;
use super::super::errors;
use super::{now_ns, store_error, ts_rfc3339, AckWith, Hosted, Staging};
use crate::shard::Shard;

impl Hosted {
    /// A published message carrying `Nats-Batch-Id: id`.
    pub(super) fn batch_message(
        self: &Rc<Self>,
        shard: &Rc<Shard>,
        id: &str,
        msg: BatchMsg,
        reply: Bytes,
    ) {
        let now = now_ns();
        self.abandon_idle_batches(shard, now);
        let (allowed, reply, refused) = {
            let s = self.stream.borrow();
            let cfg = s.config();
            let reply = if cfg.no_ack { Bytes::new() } else { reply };
            let size = msg.headers.len() + msg.payload.len();
            // What nats-server checks before the batch's own rules.
            let refused = if cfg.sealed {
                Some(errors::STREAM_SEALED.error())
            } else if cfg.max_msg_size > 0 && size > cfg.max_msg_size as usize {
                Some(errors::STREAM_MESSAGE_EXCEEDS_MAXIMUM.error())
            } else {
                None
            };
            (cfg.allow_atomic, reply, refused)
        };
        if let Some(e) = refused {
            let refusal = self.stream.borrow().refusal(e);
            self.reply(shard, &reply, &refusal);
            return;
        }
        let step = self.batches.borrow_mut().offer(
            allowed,
            &self.batch_limits,
            &SERVER_INFLIGHT,
            id,
            msg,
            now,
        );
        match step {
            Step::Staged => {
                // Held: an empty answer says so.
                if !reply.is_empty() {
                    self.send(shard, &reply, &[], &[]);
                }
            }
            Step::Refuse { error, abandoned } => {
                if let Some(reason) = abandoned {
                    self.advise_abandoned(shard, id, reason);
                }
                let refusal = self.stream.borrow().refusal(error);
                self.reply(shard, &reply, &refusal);
            }
            Step::Commit { id, msgs } => self.commit_batch(shard, id, msgs, reply, now),
        }
    }

    /// Checks a whole batch, then stages every message of it before anything
    /// else reaches the store; the last one's acknowledgement is the batch's.
    fn commit_batch(
        self: &Rc<Self>,
        shard: &Rc<Shard>,
        id: String,
        msgs: Vec<BatchMsg>,
        reply: Bytes,
        now: i64,
    ) {
        let refuse = |e| {
            let refusal = self.stream.borrow().refusal(e);
            self.reply(shard, &reply, &refusal);
        };
        let mut subjects = Vec::with_capacity(msgs.len());
        for m in &msgs {
            let Ok(text) = std::str::from_utf8(&m.subject) else {
                return refuse(errors::ATOMIC_PUBLISH_INCOMPLETE_BATCH.error());
            };
            let stored_as = self.stream.borrow().stored_subject(text).into_owned();
            subjects.push(stored_as);
        }
        if let Err(e) = self.room_for_batch(&subjects, &msgs, now) {
            return refuse(e);
        }
        let views: Vec<(&str, &[u8], &[u8])> = subjects
            .iter()
            .zip(&msgs)
            .map(|(s, m)| (s.as_str(), &m.headers[..], &m.payload[..]))
            .collect();
        let checked = self
            .stream
            .borrow_mut()
            .check_batch(&views, now, self.store.as_ref());
        let accepted = match checked {
            Ok(accepted) => accepted,
            Err(e) => return refuse(e),
        };
        let count = accepted.len() as u64;
        let last = accepted.len().saturating_sub(1);
        for (i, ((a, subject), m)) in accepted.into_iter().zip(subjects).zip(msgs).enumerate() {
            let (reply, ack) = if i == last {
                (
                    reply.clone(),
                    AckWith::Batch {
                        id: id.clone(),
                        count,
                    },
                )
            } else {
                (Bytes::new(), AckWith::Nothing)
            };
            self.stage(
                shard,
                a,
                Bytes::from(subject),
                m.headers,
                m.payload,
                reply,
                now,
                now,
                Staging { ack, record: false },
            );
        }
    }

    /// Whether the whole batch fits the stream's and the account's limits:
    /// checked before the first message, so none is stored when the last
    /// would not be.
    fn room_for_batch(
        &self,
        subjects: &[String],
        msgs: &[BatchMsg],
        now: i64,
    ) -> Result<(), errors::ApiError> {
        let state = self.store.fast_state();
        let accounting = self.accounting();
        let size: u64 = subjects
            .iter()
            .zip(msgs)
            .map(|(s, m)| accounting.size_of(s.len(), m.headers.len(), m.payload.len()))
            .sum();
        self.usage.room_for(state.bytes, size, now)?;
        let s = self.stream.borrow();
        let cfg = s.config();
        if cfg.discard == Discard::New {
            let count = msgs.len() as u64;
            if cfg.max_msgs > 0 && state.msgs + count > cfg.max_msgs as u64 {
                return Err(store_error(&StoreError::MaxMsgs));
            }
            if cfg.max_bytes > 0 && state.bytes + size > cfg.max_bytes as u64 {
                return Err(store_error(&StoreError::MaxBytes));
            }
        }
        Ok(())
    }

    /// Gives up the batches idle for longer than the timeout, with an
    /// advisory each; whether there were any.
    pub(super) fn abandon_idle_batches(&self, shard: &Shard, now: i64) -> bool {
        let expired = self.batches.borrow_mut().expire(now, &SERVER_INFLIGHT);
        for id in &expired {
            self.advise_abandoned(shard, id, Abandoned::Timeout);
        }
        !expired.is_empty()
    }

    /// `$JS.EVENT.ADVISORY.STREAM.BATCH_ABANDONED.<stream>`, as nats-server
    /// sends it to the stream's account.
    fn advise_abandoned(&self, shard: &Shard, id: &str, reason: Abandoned) {
        let s = self.stream.borrow();
        let stream = s.config().name.clone();
        let mut body = serde_json::Map::new();
        body.insert(
            "type".into(),
            json!("io.nats.jetstream.advisory.v1.stream_batch_abandoned"),
        );
        body.insert("id".into(), json!(crate::nuid()));
        body.insert("timestamp".into(), json!(ts_rfc3339(now_ns())));
        body.insert("stream".into(), json!(stream));
        if let Some(domain) = s.domain() {
            body.insert("domain".into(), json!(domain));
        }
        body.insert("batch".into(), json!(id));
        body.insert("reason".into(), json!(reason.reason()));
        drop(s);
        let subject = format!("{ABANDONED_ADVISORY}.{stream}");
        let payload = serde_json::to_vec(&body).unwrap_or_default();
        self.send(shard, subject.as_bytes(), &[], &payload);
    }

    /// The stream goes away or closes: its open batches are given up.
    pub(super) fn drop_batches(&self) {
        self.batches.borrow_mut().clear(&SERVER_INFLIGHT);
    }
}
