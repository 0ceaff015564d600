//! One client connection's protocol, as quinn-proto is to quinn: CONNECT and
//! authentication, PUB/SUB/UNSUB semantics, permissions, limits and the ping and
//! authentication deadlines, with no socket, task or shard in it. Time comes in as
//! arguments; what the connection says goes out through [`ConnectionEnv::send`];
//! what needs the router (subscribing, binding an account, checking credentials)
//! is asked of the environment, and a publish is handed back as a [`Step`] for the
//! shell to route once the connection is no longer borrowed (routing may deliver
//! to this very connection).
//!
//! The rules themselves (nats-server's checks and texts, the deadlines) are in
//! `rules`; the shell that feeds sockets through this is `client::tasks`.

mod rules;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::accounts::AccountLimits;
use crate::auth::{AuthFailure, Authenticated, Identity};
use crate::permissions::Permissions;
use crate::proto::{self, ClientOp, ConnectInfo, ParseContext, ParseLimits, SizeZeros};
use crate::router::{SubscriberId, Subscription};
use crate::subject;

pub use rules::{
    check_connect, check_publish, check_subscribe, pong_carries_connect_info, CloseReason,
    ConnectViolation, Due, Liveness, PublishViolation, SubscribeVerdict,
};

/// Reply permits kept before the expired ones are pruned.
const REPLY_PERMITS_PRUNE_AT: usize = 4096;

/// Reply subjects a client may publish to (`allow_responses`): uses and since when.
type ReplyPermits = HashMap<Bytes, (u32, Instant), ahash::RandomState>;

/// The account a connection tried to join is at its connection limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountFull;

/// Where what the connection says to its client goes.
pub trait Outbound {
    /// Queues protocol bytes for the client.
    fn send(&mut self, bytes: &[u8]);
    /// Queues `-ERR '<text>'`.
    fn send_err(&mut self, text: &str);
}

/// What the connection needs from the server around it.
pub trait ConnectionEnv: Outbound {
    /// Checks CONNECT's credentials (signing `nonce`), logging as `log_prefix`;
    /// `Ok(None)` when the server requires none.
    fn authenticate(
        &mut self,
        info: &ConnectInfo,
        nonce: &[u8],
        log_prefix: &str,
    ) -> Result<Option<Authenticated>, AuthFailure>;
    /// Moves the connection into `account`, returning the account's limits.
    fn bind_account(&mut self, account: u32) -> Result<AccountLimits, AccountFull>;
    fn account_name(&self, account: u32) -> String;
    /// Whether the connection is in the system account (which may use `$NRG.`).
    fn in_system_account(&self) -> bool;
    /// The handle the connection's subscriptions name.
    fn owner(&self) -> SubscriberId;
    /// Registers a subscription; true when other peers were told.
    fn subscribe(&mut self, sub: Rc<Subscription>) -> bool;
    /// Removes a subscription; true when other peers were told.
    fn unsubscribe(&mut self, sub: &Rc<Subscription>) -> bool;
    /// A refused publish still counts as received by the account.
    fn publish_refused(&mut self, bytes: usize);
}

/// A publish the connection accepted, for the shell to route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish<'a> {
    pub subject: &'a [u8],
    pub reply: &'a [u8],
    pub header_len: usize,
    pub zeros: SizeZeros,
    pub message: &'a [u8],
    /// When nothing receives it, the requester wants a no-responders status.
    pub no_responders: bool,
}

/// What one operation asks of the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a> {
    Continue,
    /// Answer a PING: after the interest barrier when `barrier`, and with the INFO
    /// carrying `connect_info` when asked.
    Pong {
        barrier: bool,
        connect_info: bool,
    },
    Publish(Publish<'a>),
    Close(CloseReason),
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct Connection {
    addr: SocketAddr,
    cid: u64,
    connect: ConnectInfo,
    /// A CONNECT was processed (a later one replaces the options and, as in
    /// nats-server, drops the subscriptions).
    connect_seen: bool,
    /// The first PONG after CONNECT went out (with the connect_info INFO for
    /// protocol 1 clients).
    first_pong_sent: bool,
    liveness: Liveness,
    /// The nonce sent in INFO (empty without NKEY users); every CONNECT signs it.
    nonce: String,
    identity: Option<Identity>,
    /// `"ACC/user:name"`, which nats-server adds to client log lines after CONNECT.
    auth_label: Option<String>,
    permissions: Option<Arc<Permissions>>,
    /// Reply subjects this client may answer (`allow_responses`).
    replies: Option<ReplyPermits>,
    /// Limits of the connection, lowered by its account's.
    max_payload: usize,
    max_subscriptions: usize,
    subs: HashMap<Bytes, Rc<Subscription>, ahash::RandomState>,
    /// Something went to other peers (interest changes or messages) since the last
    /// PONG; the next PONG waits for them to be applied.
    mesh_dirty: bool,
    in_msgs: u64,
    in_bytes: u64,
}

impl Connection {
    /// A connection that has sent nothing yet; `limits` are the server's
    /// (max_payload, max_subscriptions; 0 is unlimited).
    pub fn new(addr: SocketAddr, cid: u64, first_ping: Instant, limits: (usize, usize)) -> Self {
        Connection {
            addr,
            cid,
            connect: ConnectInfo::implicit(),
            connect_seen: false,
            first_pong_sent: false,
            liveness: Liveness::new(first_ping),
            nonce: String::new(),
            identity: None,
            auth_label: None,
            permissions: None,
            replies: None,
            max_payload: limits.0,
            max_subscriptions: limits.1,
            subs: HashMap::default(),
            mesh_dirty: false,
            in_msgs: 0,
            in_bytes: 0,
        }
    }

    // -----------------------------------------------------------------------------
    // What the parser and the shell read

    /// How the parser must read what comes next: CONNECT may lower the payload
    /// limit to its account's and turn headers on; authentication ends the
    /// CONNECT-only phase.
    pub fn parse_context(&self, max_control_line: usize) -> ParseContext {
        ParseContext {
            limits: ParseLimits {
                max_control_line,
                max_payload: self.max_payload,
            },
            awaiting_auth: self.awaiting_auth(),
            headers: self.connect.headers,
        }
    }

    pub fn connect_info(&self) -> &ConnectInfo {
        &self.connect
    }

    pub fn echo(&self) -> bool {
        self.connect.echo
    }

    pub fn headers(&self) -> bool {
        self.connect.headers
    }

    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    pub fn permissions(&self) -> Option<&Arc<Permissions>> {
        self.permissions.as_ref()
    }

    /// True while CONNECT with valid credentials has not passed.
    pub fn awaiting_auth(&self) -> bool {
        self.liveness.awaiting_auth()
    }

    /// (in_msgs, in_bytes)
    pub fn received(&self) -> (u64, u64) {
        (self.in_msgs, self.in_bytes)
    }

    pub fn subscription_count(&self) -> usize {
        self.subs.len()
    }

    pub fn subscriptions(&self) -> impl Iterator<Item = &Rc<Subscription>> {
        self.subs.values()
    }

    /// `127.0.0.1:50482 - cid:6`, as nats-server starts its client log lines.
    pub fn log_prefix_short(&self) -> String {
        format!("{} - cid:{}", self.addr, self.cid)
    }

    /// The short prefix plus `"v<version>:<lang>:<name>"` once CONNECT said who it
    /// is, and `"ACCOUNT/user:name"` once it authenticated, as nats-server logs.
    pub fn log_prefix(&self) -> String {
        let c = &self.connect;
        let mut prefix = self.log_prefix_short();
        if !(c.lang.is_empty() && c.name.is_empty() && c.version.is_empty()) {
            prefix.push_str(&format!(" - \"v{}:{}:{}\"", c.version, c.lang, c.name));
        }
        if let Some(label) = &self.auth_label {
            prefix.push_str(&format!(" - {label:?}"));
        }
        prefix
    }

    // -----------------------------------------------------------------------------
    // Deadlines

    /// Requires CONNECT with valid credentials, signing `nonce`, before `deadline`.
    pub fn require_auth(&mut self, nonce: String, deadline: Instant) {
        self.nonce = nonce;
        self.liveness.require_auth(deadline);
    }

    /// Moves the authentication deadline (nats-server starts it after the TLS
    /// handshake).
    pub fn restart_auth_deadline(&mut self, deadline: Instant) {
        self.liveness.restart_auth(deadline);
    }

    /// When `handle_timeout` has something to do next.
    pub fn poll_timeout(&self) -> Instant {
        self.liveness.poll_timeout()
    }

    /// Does what is due at `now`: a PING goes out; for the two that end the
    /// connection the client is told why and the shell closes it.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        (ping_interval, ping_max): (Duration, u32),
        out: &mut impl Outbound,
    ) -> Option<Due> {
        let due = self.liveness.handle_timeout(now, ping_interval, ping_max)?;
        match due {
            Due::Ping => out.send(proto::PING),
            Due::AuthTimeout => out.send_err("Authentication Timeout"),
            Due::Stale => out.send_err("Stale Connection"),
        }
        Some(due)
    }

    /// Something came from the client after a PING of ours: it is alive.
    fn heard_from(&mut self) {
        self.liveness.heard_from();
    }

    /// A routed publish or interest change reached other peers.
    pub fn note_mesh_traffic(&mut self) {
        self.mesh_dirty = true;
    }

    // -----------------------------------------------------------------------------
    // Permissions

    /// New permissions (at authentication or on reload); reply permits start over.
    pub fn set_permissions(&mut self, permissions: Option<Arc<Permissions>>) {
        let tracks_replies = permissions.as_ref().is_some_and(|p| p.responses.is_some());
        self.replies = tracks_replies.then(HashMap::default);
        self.permissions = permissions;
    }

    /// Whether requests delivered to this client grant it reply permits.
    pub fn tracks_replies(&self) -> bool {
        self.replies.is_some()
    }

    /// Remembers a request's reply subject, delivered at `now`, that this client
    /// may then publish to.
    pub fn note_request(&mut self, reply: &[u8], now: Instant) {
        let Some(replies) = self.replies.as_mut() else {
            return;
        };
        replies.insert(Bytes::copy_from_slice(reply), (0, now));
        // Requests never answered would pile up: past a bound, the expired go (as
        // nats-server prunes its reply permissions).
        if replies.len() > REPLY_PERMITS_PRUNE_AT {
            let ttl = self
                .permissions
                .as_ref()
                .and_then(|p| p.responses)
                .and_then(|r| r.expires);
            if let Some(ttl) = ttl {
                replies.retain(|_, (_, since)| now.duration_since(*since) <= ttl);
            }
        }
    }

    /// Whether a publish to `subject` at `now` answers a request within
    /// `allow_responses`; it uses one of the permit's replies.
    fn response_allowed(
        replies: &mut Option<ReplyPermits>,
        perms: &Permissions,
        subject: &[u8],
        now: Instant,
    ) -> bool {
        let (Some(p), Some(replies)) = (perms.responses, replies.as_mut()) else {
            return false;
        };
        let Some((uses, since)) = replies.get_mut(subject) else {
            return false;
        };
        *uses += 1;
        let over = p.max_msgs.is_some_and(|max| *uses > max);
        let expired = p
            .expires
            .is_some_and(|ttl| now.duration_since(*since) > ttl);
        if over || expired {
            replies.remove(subject);
            return false;
        }
        true
    }

    /// The delivery-time deny check for subscriptions that overlap the deny list.
    pub fn delivery_denied(&self, subject: &[u8]) -> bool {
        self.permissions
            .as_ref()
            .is_some_and(|p| p.delivery_denied(subject))
    }

    // -----------------------------------------------------------------------------
    // Subscriptions the shell ends

    /// The router removed a subscription (its auto-unsubscribe count was reached,
    /// or a reload no longer allows it).
    pub fn forget_sub(&mut self, sid: &[u8]) {
        self.subs.remove(sid);
    }

    /// Every subscription, for the shell to remove from the router.
    pub fn take_subs(&mut self) -> Vec<Rc<Subscription>> {
        self.subs.drain().map(|(_, s)| s).collect()
    }

    // -----------------------------------------------------------------------------
    // Operations

    /// Processes one operation received at `now`.
    #[inline]
    pub fn handle_op<'a>(
        &mut self,
        op: ClientOp<'a>,
        now: Instant,
        env: &mut impl ConnectionEnv,
    ) -> Step<'a> {
        match op {
            ClientOp::Ping => {
                self.heard_from();
                // nats-server: the first PING after CONNECT, from a client of
                // protocol 1, also gets the INFO with connect_info; the first PONG
                // counts only once CONNECT was seen.
                let pong_sent =
                    self.connect_seen && std::mem::replace(&mut self.first_pong_sent, true);
                Step::Pong {
                    barrier: std::mem::take(&mut self.mesh_dirty),
                    connect_info: pong_carries_connect_info(
                        self.connect_seen,
                        pong_sent,
                        self.connect.protocol,
                    ),
                }
            }
            ClientOp::Pong => {
                self.heard_from();
                Step::Continue
            }
            ClientOp::Ok => Step::Continue,
            ClientOp::Info(json) => self.info(json),
            ClientOp::Err(text) => {
                tracing::error!(
                    "{} - Client Error {}",
                    self.log_prefix(),
                    String::from_utf8_lossy(text)
                );
                Step::Close(CloseReason::ParseError)
            }
            ClientOp::Connect(json) => match self.connect(json, env) {
                Ok(()) => Step::Continue,
                Err(reason) => Step::Close(reason),
            },
            ClientOp::Pub {
                subject,
                reply,
                header_len,
                message,
                head_checked,
                zeros,
                ..
            } => {
                if !head_checked {
                    self.check_publish_head(subject, env);
                }
                self.in_msgs += 1;
                self.in_bytes += message.len() as u64;
                let replies = &mut self.replies;
                let checked = check_publish(
                    subject,
                    reply,
                    self.permissions.as_deref(),
                    |perms| Self::response_allowed(replies, perms, subject, now),
                    || env.in_system_account(),
                );
                if let Err(violation) = checked {
                    env.publish_refused(message.len());
                    env.send_err(&violation.client_text());
                    tracing::error!("{} - {}", self.log_prefix(), violation.log_text());
                    return Step::Continue;
                }
                self.ok(env);
                Step::Publish(Publish {
                    subject,
                    reply,
                    header_len,
                    zeros,
                    message,
                    no_responders: !reply.is_empty() && self.connect.no_responders,
                })
            }
            ClientOp::Sub {
                subject,
                queue,
                sid,
            } => {
                self.subscribe(subject, queue, sid, env);
                Step::Continue
            }
            ClientOp::Unsub { sid, max } => {
                if let Some(sub) = self.subs.get(sid).cloned() {
                    match max {
                        Some(max) if max > 0 && sub.delivered.get() < max => sub.max.set(max),
                        _ => {
                            self.subs.remove(sid);
                            self.mesh_dirty |= env.unsubscribe(&sub);
                        }
                    }
                }
                self.ok(env);
                Step::Continue
            }
        }
    }

    /// In pedantic mode a PUB's subject must be a valid literal one. nats-server
    /// reports it and still delivers the message. The parser may ask this before
    /// the payload is there, so that a large message is not waited for.
    pub fn check_publish_head(&self, subject: &[u8], env: &mut impl Outbound) {
        if self.connect.pedantic && !subject::is_valid_literal_subject(subject) {
            env.send_err("Invalid Publish Subject");
        }
    }

    /// `+OK` in verbose mode.
    fn ok(&self, env: &mut impl Outbound) {
        if self.connect.verbose {
            env.send(proto::OK);
        }
    }

    /// nats-server decodes a client's INFO into its INFO type: null or an object.
    fn info(&self, json: &[u8]) -> Step<'static> {
        match serde_json::from_slice::<serde_json::Value>(json) {
            Ok(serde_json::Value::Null | serde_json::Value::Object(_)) => Step::Continue,
            Ok(_) => {
                tracing::error!(
                    "{} - Client parser ERROR: INFO is not an object",
                    self.log_prefix()
                );
                Step::Close(CloseReason::ProtocolViolation)
            }
            Err(e) => {
                tracing::error!("{} - Client parser ERROR: {}", self.log_prefix(), e);
                Step::Close(CloseReason::ProtocolViolation)
            }
        }
    }

    fn connect(&mut self, json: &[u8], env: &mut impl ConnectionEnv) -> Result<(), CloseReason> {
        let info = self.connect.decode_over(json).map_err(|e| {
            tracing::error!("{} - Client parser ERROR: {}", self.log_prefix(), e);
            CloseReason::ProtocolViolation
        })?;
        // A later CONNECT starts over: nats-server drops the subscriptions
        // registered so far (they could belong to another account).
        if std::mem::replace(&mut self.connect_seen, true) {
            for sub in self.take_subs() {
                self.mesh_dirty |= env.unsubscribe(&sub);
            }
        }
        self.connect = info;
        let info = self.connect.clone();
        self.authenticate(&info, env)?;
        if let Err(violation) = check_connect(&info) {
            if violation == ConnectViolation::AccountRequested {
                tracing::error!("{} - authentication error", self.log_prefix_short());
            }
            env.send_err(violation.client_text());
            return Err(violation.close_reason());
        }
        self.ok(env);
        Ok(())
    }

    /// Authenticates `info`'s credentials when the server requires any and binds
    /// the connection to their account; nats-server runs this on every CONNECT,
    /// and for a client that skips CONNECT when a `no_auth_user` lets it in.
    pub fn authenticate(
        &mut self,
        info: &ConnectInfo,
        env: &mut impl ConnectionEnv,
    ) -> Result<(), CloseReason> {
        match env.authenticate(info, self.nonce.as_bytes(), &self.log_prefix_short()) {
            Ok(None) => {}
            Ok(Some(standing)) => {
                let Ok(limits) = env.bind_account(standing.account) else {
                    tracing::error!(
                        "{} - maximum account active connections exceeded",
                        self.log_prefix()
                    );
                    env.send_err("maximum account active connections exceeded");
                    return Err(CloseReason::MaxAccountConnectionsExceeded);
                };
                self.apply_account_limits(limits);
                self.auth_label = Some(format!(
                    "{}/{}",
                    env.account_name(standing.account),
                    standing.identity.label()
                ));
                self.set_permissions(standing.permissions);
                self.identity = Some(standing.identity);
            }
            Err(failure) => {
                tracing::error!("{} - {}", self.log_prefix_short(), failure.detail);
                env.send_err("Authorization Violation");
                return Err(CloseReason::AuthenticationViolation);
            }
        }
        self.liveness.authenticated();
        Ok(())
    }

    /// Lowers the connection's payload and subscription limits to its account's.
    fn apply_account_limits(&mut self, limits: AccountLimits) {
        if let Some(max) = limits.max_payload {
            self.max_payload = self.max_payload.min(max);
        }
        if let Some(max) = limits.max_subscriptions {
            self.max_subscriptions = match self.max_subscriptions {
                0 => max,
                current => current.min(max),
            };
        }
    }

    fn subscribe(
        &mut self,
        subject: &[u8],
        queue: Option<&[u8]>,
        sid: &[u8],
        env: &mut impl ConnectionEnv,
    ) {
        let verdict = check_subscribe(
            subject,
            queue,
            self.permissions.as_deref(),
            (self.subs.len(), self.max_subscriptions),
            self.subs.contains_key(sid),
        );
        if let Some(text) = verdict.client_text() {
            env.send_err(&text);
        }
        match &verdict {
            SubscribeVerdict::Accept => {}
            SubscribeVerdict::Ignore => return self.ok(env),
            SubscribeVerdict::Denied { subject, queue } => {
                let sid = String::from_utf8_lossy(sid);
                match queue {
                    Some(queue) => tracing::error!(
                        "{} - Subscription Violation - Subject {}, Queue: {}, SID {}",
                        self.log_prefix(),
                        subject,
                        queue,
                        sid
                    ),
                    None => tracing::error!(
                        "{} - Subscription Violation - Subject {}, SID {}",
                        self.log_prefix(),
                        subject,
                        sid
                    ),
                }
                return;
            }
            SubscribeVerdict::MaxSubscriptions(max) => {
                tracing::error!(
                    "{} - Maximum Subscriptions Exceeded (max {})",
                    self.log_prefix(),
                    max
                );
                return;
            }
            SubscribeVerdict::InvalidSubject => return,
        }
        // Copied so the subscription does not pin the whole read buffer.
        let mut sub = Subscription::new(
            env.owner(),
            Bytes::copy_from_slice(sid),
            Bytes::copy_from_slice(subject),
            queue.map(Bytes::copy_from_slice),
        );
        sub.delivery_filter = self
            .permissions
            .as_ref()
            .is_some_and(|p| p.needs_delivery_filter(subject, queue.is_some()));
        let sub = Rc::new(sub);
        self.subs.insert(sub.sid.clone(), sub.clone());
        self.mesh_dirty |= env.subscribe(sub);
        self.ok(env);
    }
}
