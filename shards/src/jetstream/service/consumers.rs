//! The consumer half of the JetStream API: create (and update), info, names,
//! list and delete. What a consumer is lives in the meta state, next to its
//! stream; what it has delivered lives on the stream's shard, which answers
//! the info.

use serde_json::{json, Map, Value};

use crate::internal::InternalMsg;

use super::super::ack::name_hash;
use super::super::config::Retention;
use super::super::consumer_config::{
    is_valid_group_name, Action, ConsumerConfig, ConsumerServerLimits, CreateRequest,
};
use super::super::errors::{self, ApiError};
use super::super::host::{now_ns, ts_rfc3339, StreamOp, PAUSE_ADVISORY_TYPE};
use super::super::meta::{ConsumerAssignment, MetaChange, StreamAssignment};
use super::super::GO_ZERO_TIME;
use super::{parse, ListRequest, Service, LIST_LIMIT, NAMES_LIMIT};

/// How long an ephemeral consumer that did not ask for a threshold lives
/// unused (nats-server's `JsDeleteWaitTimeDefault`).
const EPHEMERAL_INACTIVE_THRESHOLD: i64 = 5_000_000_000;

/// `CONSUMER.PAUSE`'s body.
#[derive(Debug, Default, serde::Deserialize)]
struct PauseRequest {
    #[serde(default)]
    pause_until: Option<String>,
}

/// Moves `keys` (those present) to the end of `map`, in this order.
fn move_to_end(map: &mut Map<String, Value>, keys: &[&str]) {
    for &key in keys {
        if let Some(value) = map.remove(key) {
            map.insert(key.into(), value);
        }
    }
}

const RESET_RESPONSE_TYPE: &str = "io.nats.jetstream.api.v1.consumer_reset_response";

/// `CONSUMER.RESET`'s body: no sequence (or none at all) resets to past the
/// ack floor.
#[derive(Debug, Default, serde::Deserialize)]
struct ResetRequest {
    #[serde(default)]
    seq: u64,
}

/// `CONSUMER.UNPIN`'s body.
#[derive(Debug, Default, serde::Deserialize)]
struct UnpinRequest {
    #[serde(default)]
    group: String,
}

/// A consumer the server made for itself (a mirror's or a source's): not
/// listed, not counted against `max_consumers`, free of work queue rules.
fn created_internal(config: &ConsumerConfig) -> bool {
    config.direct || config.sourcing
}

/// How many times a fresh ephemeral name is drawn before giving up.
const NAME_TRIES: usize = 16;

impl Service {
    /// `$JS.API.CONSUMER.*` (the tokens after `$JS.API.`).
    pub(super) async fn consumer_request(
        &self,
        account: &str,
        tokens: &[&str],
        payload: &[u8],
    ) -> Result<Value, ApiError> {
        match tokens {
            ["CONSUMER", "CREATE", ..] | ["CONSUMER", "DURABLE", "CREATE", ..] => {
                self.consumer_create(account, tokens, payload).await
            }
            ["CONSUMER", "INFO", stream, name] => {
                let (_, c) = self.consumer_assignment(account, stream, name)?;
                self.consumer_info(&c).await
            }
            ["CONSUMER", "DELETE", stream, name] => {
                self.consumer_delete(account, stream, name).await
            }
            ["CONSUMER", "NAMES", stream] => self.consumer_names(account, stream, payload),
            ["CONSUMER", "LIST", stream] => self.consumer_list(account, stream, payload).await,
            ["CONSUMER", "PAUSE", stream, name] => {
                self.consumer_pause(account, stream, name, payload).await
            }
            ["CONSUMER", "UNPIN", stream, name] => {
                self.consumer_unpin(account, stream, name, payload).await
            }
            // A single server leads every consumer and has nobody to hand it to.
            ["CONSUMER", "LEADER", "STEPDOWN", _, _] => Err(errors::CLUSTER_REQUIRED.error()),
            _ => Err(errors::BAD_REQUEST.error()),
        }
    }

    /// `CONSUMER.RESET.<stream>.<consumer>`, which nats-server's consumer
    /// answers itself, not its API: so a consumer that is not there answers
    /// nothing, and the request is neither counted nor audited.
    pub(super) async fn reset_consumer(
        &self,
        account: &str,
        enabled: bool,
        stream: &str,
        name: &str,
        msg: &InternalMsg,
    ) -> Option<Value> {
        let assignment = {
            let meta = self.meta.borrow();
            meta.consumer(account, stream, name)
                .filter(|c| enabled && c.is_public())?;
            meta.stream(account, stream)?.clone()
        };
        let result = if super::super::stream::requires_newer_api(msg.headers()) {
            Err(errors::REQUIRED_API_LEVEL.error())
        } else {
            match parse::<ResetRequest>(msg.payload(), self.js.strict) {
                Ok(req) => {
                    let op = StreamOp::ResetConsumer {
                        name: name.to_string(),
                        seq: req.seq,
                    };
                    self.send_op(&assignment, op).await
                }
                Err(e) => Err(e),
            }
        };
        let mut out = Map::new();
        out.insert("type".into(), json!(RESET_RESPONSE_TYPE));
        match result {
            Ok(Value::Object(mut info)) => {
                // `ts`, `priority_groups`, then `reset_seq`, in nats-server's order.
                move_to_end(&mut info, &["ts", "priority_groups", "reset_seq"]);
                out.extend(info);
            }
            Ok(_) => {}
            Err(e) => {
                out.insert("error".into(), json!(e));
                out.insert("reset_seq".into(), json!(0));
            }
        }
        Some(Value::Object(out))
    }

    /// `CONSUMER.UNPIN`: the group's pinned client loses its pin, and the next
    /// request without one takes it. Checked in nats-server's order.
    async fn consumer_unpin(
        &self,
        account: &str,
        stream: &str,
        name: &str,
        payload: &[u8],
    ) -> Result<Value, ApiError> {
        let req: UnpinRequest = parse(payload, self.js.strict)?;
        if req.group.is_empty() {
            return Err(errors::INVALID_JSON.err("consumer group not specified"));
        }
        if !is_valid_group_name(&req.group) {
            return Err(errors::CONSUMER_INVALID_GROUP_NAME.error());
        }
        let (stream, existing) = self.consumer_assignment(account, stream, name)?;
        if !existing.config.priority_groups.contains(&req.group) {
            return Err(errors::CONSUMER_INVALID_PRIORITY_GROUP.error());
        }
        let op = StreamOp::UnpinConsumer {
            name: name.to_string(),
            group: req.group,
        };
        self.send_op(&stream, op).await
    }

    /// `CONSUMER.PAUSE`: holds deliveries back until `pause_until`; no time,
    /// the zero time or one already past resumes. The pause is part of the
    /// configuration, so it survives a restart as nats-server's does.
    async fn consumer_pause(
        &self,
        account: &str,
        stream: &str,
        name: &str,
        payload: &[u8],
    ) -> Result<Value, ApiError> {
        let req: PauseRequest = parse(payload, self.js.strict)?;
        let (stream, existing) = self.consumer_assignment(account, stream, name)?;
        let mut config = existing.config.clone();
        config.pause_until = req.pause_until;
        let until = config.pause_until_ns();
        if config.pause_until.is_some() && until.is_none() && !config.is_zero_pause() {
            return Err(errors::INVALID_JSON.err("pause_until is not an RFC 3339 time"));
        }
        if until.is_none() {
            config.pause_until = None;
        }
        // A pause needs API level 1, as nats-server records.
        config.set_version_metadata();
        let now = now_ns();
        let paused = until.is_some_and(|t| t > now);
        if config != existing.config {
            let updated = ConsumerAssignment { config, ..existing };
            self.put_on_shard(&stream, &updated).await?;
            self.commit(MetaChange::PutConsumer(Box::new(updated)))?;
        }
        let mut advisory = json!({
            "type": PAUSE_ADVISORY_TYPE,
            "id": crate::nuid(),
            "timestamp": ts_rfc3339(now),
            "stream": stream.config.name,
            "consumer": name,
            "paused": paused,
        });
        if paused {
            advisory["pause_until"] = json!(until.map(ts_rfc3339));
        }
        if let Some(domain) = &self.js.domain {
            advisory["domain"] = json!(domain);
        }
        self.advisories.borrow_mut().push((
            account.to_string(),
            format!(
                "$JS.EVENT.ADVISORY.CONSUMER.PAUSE.{}.{name}",
                stream.config.name
            ),
            advisory,
        ));
        let mut out = json!({
            "paused": paused,
            "pause_until": until.map_or_else(|| GO_ZERO_TIME.to_string(), ts_rfc3339),
        });
        if paused {
            out["pause_remaining"] = json!(until.map_or(0, |t| t - now));
        }
        Ok(out)
    }

    fn consumer_assignment(
        &self,
        account: &str,
        stream: &str,
        name: &str,
    ) -> Result<(StreamAssignment, ConsumerAssignment), ApiError> {
        let meta = self.meta.borrow();
        let s = meta
            .stream(account, stream)
            .ok_or_else(|| errors::STREAM_NOT_FOUND.error())?;
        let c = meta
            .consumer(account, stream, name)
            .ok_or_else(|| errors::CONSUMER_NOT_FOUND.error())?;
        Ok((s.clone(), c.clone()))
    }

    fn consumer_limits(&self, account: &str) -> ConsumerServerLimits {
        ConsumerServerLimits {
            server_max_ack_pending: self.js.max_ack_pending,
            account_max_ack_pending: self
                .account_limits(account)
                .map_or(-1, |l| l.max_ack_pending),
            max_request_batch: self.js.max_request_batch,
        }
    }

    async fn consumer_create(
        &self,
        account: &str,
        tokens: &[&str],
        payload: &[u8],
    ) -> Result<Value, ApiError> {
        let req: CreateRequest = parse(payload, self.js.strict)?;
        let mut req = req.resolve(tokens)?;
        // A mirror or source asks under a stable name; each of its consumers
        // gets its own (nats-server appends a random suffix the same way).
        if req.config.direct && req.config.sourcing && !req.config.name.is_empty() {
            req.config.name = format!("{}-{}", req.config.name, name_hash(&crate::nuid()));
        }
        let stream = self.assignment(account, &req.stream)?;
        let mut config =
            req.config
                .normalized(&stream.config, &self.consumer_limits(account), req.pedantic)?;
        if config.name.is_empty() {
            config.name = self.fresh_consumer_name(account, &stream.config.name)?;
        }
        // An ephemeral consumer goes once nobody has used it for a while.
        if !config.is_durable() && config.inactive_threshold <= 0 {
            config.inactive_threshold = EPHEMERAL_INACTIVE_THRESHOLD;
        }
        let existing = self
            .meta
            .borrow()
            .consumer(account, &stream.config.name, &config.name)
            .cloned();
        match existing {
            Some(existing) => {
                // A create does not pause or resume a consumer.
                config.pause_until = existing.config.pause_until.clone();
                if config == existing.config {
                    return self.consumer_info(&existing).await;
                }
                if req.action == Action::Create {
                    return Err(errors::CONSUMER_ALREADY_EXISTS.error());
                }
                if stream.config.retention == Retention::WorkQueue && !created_internal(&config) {
                    self.check_partition(&stream, &config)?;
                }
                existing.config.check_update(&config, false)?;
                let updated = ConsumerAssignment { config, ..existing };
                let info = self.put_on_shard(&stream, &updated).await?;
                self.commit(MetaChange::PutConsumer(Box::new(updated)))?;
                Ok(info)
            }
            None => {
                if req.action == Action::Update {
                    return Err(errors::CONSUMER_DOES_NOT_EXIST.error());
                }
                let internal = created_internal(&config);
                if !internal {
                    self.check_room(account, &stream)?;
                }
                if stream.config.retention == Retention::WorkQueue && !internal {
                    self.check_work_queue(&stream, &config)?;
                }
                let created = ConsumerAssignment {
                    account: account.to_string(),
                    stream: stream.config.name.clone(),
                    config,
                    created: now_ns(),
                };
                self.commit(MetaChange::PutConsumer(Box::new(created.clone())))?;
                match self.put_on_shard(&stream, &created).await {
                    Ok(info) => {
                        self.advise_consumer(account, &created.stream, created.name(), "create");
                        Ok(info)
                    }
                    Err(e) => {
                        let _ = self.commit(MetaChange::DeleteConsumer {
                            account: account.to_string(),
                            stream: created.stream.clone(),
                            name: created.name().to_string(),
                        });
                        Err(e)
                    }
                }
            }
        }
    }

    /// An ephemeral consumer's name: nats-server's eight characters of a
    /// hashed unique id, not yet taken on the stream.
    fn fresh_consumer_name(&self, account: &str, stream: &str) -> Result<String, ApiError> {
        let meta = self.meta.borrow();
        (0..NAME_TRIES)
            .map(|_| name_hash(&crate::nuid()))
            .find(|name| meta.consumer(account, stream, name).is_none())
            .ok_or_else(|| errors::CONSUMER_CREATE.err("could not name the consumer"))
    }

    /// The stream's and the account's `max_consumers`.
    fn check_room(&self, account: &str, stream: &StreamAssignment) -> Result<(), ApiError> {
        let meta = self.meta.borrow();
        let on_stream = meta
            .consumers_of(account, &stream.config.name)
            .filter(|c| c.is_public())
            .count() as i64;
        let mut most = stream.config.max_consumers;
        let account_most = self.account_limits(account).map_or(-1, |l| l.max_consumers);
        if most <= 0 || (account_most > 0 && account_most < most) {
            most = account_most;
        }
        if most > 0 && on_stream >= most {
            return Err(errors::MAXIMUM_CONSUMERS_LIMIT.error());
        }
        Ok(())
    }

    /// A work queue hands each message to one consumer: every consumer acks
    /// explicitly, starts at the beginning, and filters on subjects no other
    /// consumer of the stream has.
    fn check_work_queue(
        &self,
        stream: &StreamAssignment,
        config: &ConsumerConfig,
    ) -> Result<(), ApiError> {
        use super::super::consumer_config::{AckPolicy, DeliverPolicy};
        if !matches!(
            config.ack_policy,
            AckPolicy::Explicit | AckPolicy::FlowControl
        ) {
            return Err(errors::CONSUMER_WQ_REQUIRES_EXPLICIT_ACK.error());
        }
        if config.deliver_policy != DeliverPolicy::All {
            return Err(errors::CONSUMER_WQ_CONSUMER_NOT_DELIVER_ALL.error());
        }
        let others = self
            .meta
            .borrow()
            .consumers_of(&stream.account, &stream.config.name)
            .count();
        if others > 0 && config.filters().is_empty() {
            return Err(errors::CONSUMER_WQ_MULTIPLE_UNFILTERED.error());
        }
        self.check_partition(stream, config)
    }

    /// No other consumer of the work queue `stream` filters on a subject that
    /// collides with one of `config`'s (an unfiltered one collides with all).
    fn check_partition(
        &self,
        stream: &StreamAssignment,
        config: &ConsumerConfig,
    ) -> Result<(), ApiError> {
        let every = [">"];
        let mine = config.filters();
        let mine: &[&str] = if mine.is_empty() { &every } else { &mine };
        let meta = self.meta.borrow();
        for other in meta.consumers_of(&stream.account, &stream.config.name) {
            if other.name() == config.name {
                continue;
            }
            let theirs = other.config.filters();
            let theirs: &[&str] = if theirs.is_empty() { &every } else { &theirs };
            let collides = mine
                .iter()
                .any(|a| theirs.iter().any(|b| crate::subject::collide(a, b)));
            if collides {
                return Err(errors::CONSUMER_WQ_CONSUMER_NOT_UNIQUE.error());
            }
        }
        Ok(())
    }

    /// Tells the stream's shard to run the consumer (or to take its new
    /// configuration) and answers with its info.
    pub(super) async fn put_on_shard(
        &self,
        stream: &StreamAssignment,
        c: &ConsumerAssignment,
    ) -> Result<Value, ApiError> {
        let op = StreamOp::PutConsumer {
            config: Box::new(c.config.clone()),
            created: c.created,
        };
        self.send_op(stream, op).await
    }

    async fn consumer_info(&self, c: &ConsumerAssignment) -> Result<Value, ApiError> {
        let stream = self.assignment(&c.account, &c.stream)?;
        let op = StreamOp::ConsumerInfo {
            name: c.name().to_string(),
        };
        let mut info = self.send_op(&stream, op).await?;
        if let Value::Object(body) = &mut info {
            // The leader, as a single server names itself.
            body.insert("cluster".into(), json!({ "leader": self.opts.name() }));
            // `ts` and `priority_groups` come after it, in nats-server's order.
            move_to_end(body, &["ts", "priority_groups"]);
        }
        Ok(info)
    }

    async fn consumer_delete(
        &self,
        account: &str,
        stream: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let (s, _) = self.consumer_assignment(account, stream, name)?;
        self.remove_consumer(&s, name).await?;
        Ok(json!({ "success": true }))
    }

    /// Forgets a consumer in the meta state, then stops it on its shard.
    pub(super) async fn remove_consumer(
        &self,
        stream: &StreamAssignment,
        name: &str,
    ) -> Result<(), ApiError> {
        self.commit(MetaChange::DeleteConsumer {
            account: stream.account.clone(),
            stream: stream.config.name.clone(),
            name: name.to_string(),
        })
        .map_err(|e| errors::STREAM_GENERAL_ERROR.err(e.description))?;
        let op = StreamOp::DeleteConsumer {
            name: name.to_string(),
        };
        // The stream may be going away with its consumers: nothing left to stop.
        match self.send_op(stream, op).await {
            Ok(_) => {}
            Err(e) if e.err_code == errors::CONSUMER_NOT_FOUND.err_code => {}
            Err(e) => return Err(e),
        }
        self.advise_consumer(&stream.account, &stream.config.name, name, "delete");
        Ok(())
    }

    /// A consumer that went unused for its inactive threshold goes, unless it
    /// is another consumer by now (deleted and made again under its name).
    pub(super) async fn remove_inactive(
        &self,
        account: &str,
        stream: &str,
        name: &str,
        created: i64,
    ) {
        let Ok((s, c)) = self.consumer_assignment(account, stream, name) else {
            return;
        };
        if c.created != created {
            return;
        }
        match self.remove_consumer(&s, name).await {
            Ok(()) => tracing::debug!(
                "JetStream consumer '{account} > {stream} > {name}' deleted after its inactive threshold"
            ),
            Err(e) => tracing::warn!(
                "JetStream could not delete inactive consumer '{account} > {stream} > {name}': {}",
                e.description
            ),
        }
    }

    fn consumer_names(
        &self,
        account: &str,
        stream: &str,
        payload: &[u8],
    ) -> Result<Value, ApiError> {
        let req: ListRequest = parse(payload, self.js.strict)?;
        let meta = self.meta.borrow();
        if meta.stream(account, stream).is_none() {
            return Err(errors::STREAM_NOT_FOUND.error());
        }
        let all: Vec<&str> = meta
            .consumers_of(account, stream)
            .filter(|c| c.is_public())
            .map(ConsumerAssignment::name)
            .collect();
        let page: Vec<&str> = all
            .iter()
            .skip(req.offset)
            .take(NAMES_LIMIT)
            .copied()
            .collect();
        Ok(json!({
            "total": all.len(),
            "offset": req.offset,
            "limit": NAMES_LIMIT,
            "consumers": page,
        }))
    }

    async fn consumer_list(
        &self,
        account: &str,
        stream: &str,
        payload: &[u8],
    ) -> Result<Value, ApiError> {
        let req: ListRequest = parse(payload, self.js.strict)?;
        let all: Vec<ConsumerAssignment> = {
            let meta = self.meta.borrow();
            if meta.stream(account, stream).is_none() {
                return Err(errors::STREAM_NOT_FOUND.error());
            }
            meta.consumers_of(account, stream)
                .filter(|c| c.is_public())
                .cloned()
                .collect()
        };
        let mut infos = Vec::new();
        let mut missing = Vec::new();
        for c in all.iter().skip(req.offset).take(LIST_LIMIT) {
            match self.consumer_info(c).await {
                Ok(mut info) => {
                    // A list shows the stored metadata, without the server's
                    // level and version (as nats-server's does).
                    if let Some(m) = info["config"]["metadata"].as_object_mut() {
                        m.remove("_nats.level");
                        m.remove("_nats.ver");
                    }
                    infos.push(info)
                }
                Err(_) => missing.push(c.name().to_string()),
            }
        }
        let mut out = json!({
            "total": all.len(),
            "offset": req.offset,
            "limit": LIST_LIMIT,
            "consumers": infos,
        });
        if !missing.is_empty() {
            out["missing"] = json!(missing);
        }
        Ok(out)
    }

    /// Queues `$JS.EVENT.ADVISORY.CONSUMER.CREATED|DELETED.<stream>.<consumer>`.
    pub(super) fn advise_consumer(&self, account: &str, stream: &str, name: &str, action: &str) {
        let event = if action == "create" {
            "CREATED"
        } else {
            "DELETED"
        };
        let mut body = json!({
            "type": "io.nats.jetstream.advisory.v1.consumer_action",
            "id": crate::nuid(),
            "timestamp": ts_rfc3339(now_ns()),
            "stream": stream,
            "consumer": name,
            "action": action,
        });
        if let Some(domain) = &self.js.domain {
            body["domain"] = json!(domain);
        }
        self.advisories.borrow_mut().push((
            account.to_string(),
            format!("$JS.EVENT.ADVISORY.CONSUMER.{event}.{stream}.{name}"),
            body,
        ));
    }
}
