//! A client connection's state: who it is, what it may do, its subscriptions and
//! its coalesced outbound buffer. The tasks that move its bytes and process what
//! it sends are in `tasks`.

pub(crate) mod tasks;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Instant, SystemTime};

use bytes::{Bytes, BytesMut};

use crate::connection::{Due, Liveness};
use crate::permissions::Permissions;
use crate::proto;
use crate::proto::ConnectInfo;
use crate::router::{RequesterInfo, SubscriberId, Subscription};

pub use crate::connection::CloseReason;

#[derive(Debug, Default)]
struct Counters {
    in_msgs: Cell<u64>,
    in_bytes: Cell<u64>,
    out_msgs: Cell<u64>,
    out_bytes: Cell<u64>,
}

/// Reply permits kept before the expired ones are pruned.
const REPLY_PERMITS_PRUNE_AT: usize = 4096;

/// Reply subjects a client may publish to (`allow_responses`): uses and since when.
type ReplyPermits = HashMap<Bytes, (u32, Instant), ahash::RandomState>;

/// One client connection, owned by one shard.
pub struct Client {
    pub cid: u64,
    pub addr: SocketAddr,
    /// Its handle on its shard (what its subscriptions name); unset until registered.
    subscriber: Cell<SubscriberId>,
    account: Cell<u32>,
    /// Counted among its account's connections.
    in_account: Cell<bool>,
    pub start: SystemTime,
    fd: RawFd,
    connect: RefCell<ConnectInfo>,
    /// Echo and header support are read per delivery; kept apart from `connect`.
    echo: Cell<bool>,
    headers: Cell<bool>,
    subs: RefCell<HashMap<Bytes, Rc<Subscription>, ahash::RandomState>>,
    /// Outbound frames not yet handed to the writer.
    out: RefCell<BytesMut>,
    /// Bytes the writer is writing now.
    in_flight: Cell<usize>,
    writer: Cell<Option<Waker>>,
    /// Producers waiting for this connection's pending output to drain.
    drain_waiters: RefCell<Vec<Waker>>,
    /// Already in its shard's list of stalling subscribers.
    stall_marked: Cell<bool>,
    write_started: Cell<Option<Instant>>,
    /// When a write last completed; a producer stops waiting for a subscriber that
    /// makes no progress.
    last_progress: Cell<Instant>,
    closing: Cell<Option<CloseReason>>,
    /// The shard has removed the connection's subscriptions and records.
    cleaned_up: Cell<bool>,
    /// Something went to other shards (interest changes or messages) since the
    /// last PONG; the next PONG waits for them to be applied.
    mesh_dirty: Cell<bool>,
    /// The first PONG after CONNECT went out (with the connect_info INFO for
    /// protocol 1 clients).
    first_pong_sent: Cell<bool>,
    /// Ping and authentication deadlines.
    liveness: Cell<Liveness>,
    last_activity: Cell<Instant>,
    /// The nonce sent in INFO (empty without NKEY users); every CONNECT signs it.
    nonce: RefCell<String>,
    /// A CONNECT was processed (a later one replaces the options and, as in
    /// nats-server, drops the subscriptions).
    connect_seen: Cell<bool>,
    identity: RefCell<Option<crate::auth::Identity>>,
    /// `"ACC/user:name"`, which nats-server adds to client log lines after CONNECT.
    auth_label: RefCell<Option<String>>,
    permissions: RefCell<Option<Arc<Permissions>>>,
    /// Reply subjects this client may answer (`allow_responses`): uses and when.
    replies: RefCell<Option<ReplyPermits>>,
    /// Limits of the connection, lowered by its account's.
    max_payload: Cell<usize>,
    max_subscriptions: Cell<usize>,
    /// Set once a TLS handshake completed.
    tls: RefCell<Option<crate::tls::TlsState>>,
    counters: Counters,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("cid", &self.cid)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub(crate) fn new(
        cid: u64,
        addr: SocketAddr,
        fd: RawFd,
        account: u32,
        first_ping: Instant,
        limits: (usize, usize),
    ) -> Self {
        let connect = ConnectInfo::implicit();
        Client {
            cid,
            addr,
            subscriber: Cell::new(SubscriberId(u32::MAX)),
            account: Cell::new(account),
            in_account: Cell::new(false),
            start: SystemTime::now(),
            fd,
            echo: Cell::new(connect.echo),
            headers: Cell::new(connect.headers),
            connect: RefCell::new(connect),
            subs: RefCell::default(),
            out: RefCell::new(BytesMut::with_capacity(4096)),
            in_flight: Cell::new(0),
            writer: Cell::new(None),
            drain_waiters: RefCell::new(Vec::new()),
            stall_marked: Cell::new(false),
            write_started: Cell::new(None),
            last_progress: Cell::new(Instant::now()),
            closing: Cell::new(None),
            cleaned_up: Cell::new(false),
            mesh_dirty: Cell::new(false),
            first_pong_sent: Cell::new(false),
            liveness: Cell::new(Liveness::new(first_ping)),
            last_activity: Cell::new(Instant::now()),
            nonce: RefCell::new(String::new()),
            connect_seen: Cell::new(false),
            identity: RefCell::new(None),
            auth_label: RefCell::new(None),
            permissions: RefCell::new(None),
            replies: RefCell::new(None),
            max_payload: Cell::new(limits.0),
            max_subscriptions: Cell::new(limits.1),
            tls: RefCell::new(None),
            counters: Counters::default(),
        }
    }

    pub(crate) fn subscriber_id(&self) -> SubscriberId {
        self.subscriber.get()
    }

    pub(crate) fn set_subscriber_id(&self, id: SubscriberId) {
        self.subscriber.set(id);
    }

    /// Who this client is, for a `share` service import's `Nats-Request-Info`.
    pub(crate) fn requester_info(&self) -> RequesterInfo {
        let c = self.connect.borrow();
        RequesterInfo {
            start: crate::rfc3339(self.start),
            host: self.addr.ip().to_string(),
            id: self.cid,
            user: self.authenticated_as().map(|w| w.raw()),
            name: c.name.clone(),
            lang: c.lang.clone(),
            version: c.version.clone(),
        }
    }

    /// The server's INFO as this connection gets it (its id and address filled in).
    pub(crate) fn info_line(&self, template: &crate::info::ServerInfo) -> Vec<u8> {
        let mut info = template.clone();
        info.client_id = Some(self.cid);
        info.client_ip = Some(self.addr.ip().to_string());
        info.to_line()
    }

    /// The account the connection is in (an index into the options' accounts).
    pub fn account(&self) -> u32 {
        self.account.get()
    }

    pub(crate) fn in_account(&self) -> bool {
        self.in_account.get()
    }

    pub(crate) fn set_account(&self, account: u32, counted: bool) {
        self.account.set(account);
        self.in_account.set(counted);
    }

    pub fn permissions(&self) -> Option<Arc<Permissions>> {
        self.permissions.borrow().clone()
    }

    pub(crate) fn set_permissions(&self, permissions: Option<Arc<Permissions>>) {
        let tracks_replies = permissions.as_ref().is_some_and(|p| p.responses.is_some());
        *self.replies.borrow_mut() = tracks_replies.then(HashMap::default);
        *self.permissions.borrow_mut() = permissions;
    }

    /// Remembers a request's reply subject this client may then publish to.
    pub(crate) fn note_request(&self, reply: &[u8]) {
        let mut replies = self.replies.borrow_mut();
        let Some(replies) = replies.as_mut() else {
            return;
        };
        replies.insert(Bytes::copy_from_slice(reply), (0, Instant::now()));
        // Requests never answered would pile up: past a bound, the expired go (as
        // nats-server prunes its reply permissions).
        if replies.len() > REPLY_PERMITS_PRUNE_AT {
            let expires = self
                .permissions
                .borrow()
                .as_ref()
                .and_then(|p| p.responses)
                .and_then(|r| r.expires);
            if let Some(ttl) = expires {
                replies.retain(|_, (_, since)| since.elapsed() <= ttl);
            }
        }
    }

    /// Whether a publish to `subject` answers a request within `allow_responses`.
    fn response_allowed(&self, perms: &Permissions, subject: &[u8]) -> bool {
        let Some(p) = perms.responses else {
            return false;
        };
        let mut replies = self.replies.borrow_mut();
        let Some(replies) = replies.as_mut() else {
            return false;
        };
        let Some((uses, since)) = replies.get_mut(subject) else {
            return false;
        };
        *uses += 1;
        let over = p.max_msgs.is_some_and(|max| *uses > max);
        let expired = p.expires.is_some_and(|ttl| since.elapsed() > ttl);
        if over || expired {
            replies.remove(subject);
            return false;
        }
        true
    }

    /// The delivery-time deny check for subscriptions that overlap the deny list.
    pub(crate) fn delivery_denied(&self, subject: &[u8]) -> bool {
        self.permissions
            .borrow()
            .as_ref()
            .is_some_and(|p| p.delivery_denied(subject))
    }

    pub fn is_closing(&self) -> bool {
        self.closing.get().is_some()
    }

    pub fn echo(&self) -> bool {
        self.echo.get()
    }

    pub fn headers(&self) -> bool {
        self.headers.get()
    }

    /// `127.0.0.1:50482 - cid:6`, as nats-server starts its client log lines.
    pub fn log_prefix_short(&self) -> String {
        format!("{} - cid:{}", self.addr, self.cid)
    }

    /// The short prefix plus `"v<version>:<lang>:<name>"` once CONNECT said who it
    /// is, and `"ACCOUNT/user:name"` once it authenticated, as nats-server logs.
    pub fn log_prefix(&self) -> String {
        let c = self.connect.borrow();
        let mut prefix = self.log_prefix_short();
        if !(c.lang.is_empty() && c.name.is_empty() && c.version.is_empty()) {
            prefix.push_str(&format!(" - \"v{}:{}:{}\"", c.version, c.lang, c.name));
        }
        if let Some(label) = self.auth_label.borrow().as_ref() {
            prefix.push_str(&format!(" - {label:?}"));
        }
        prefix
    }

    /// Name, language and version from CONNECT.
    pub fn identity(&self) -> (String, String, String) {
        let c = self.connect.borrow();
        (c.name.clone(), c.lang.clone(), c.version.clone())
    }

    /// (in_msgs, out_msgs, in_bytes, out_bytes)
    pub fn counts(&self) -> (u64, u64, u64, u64) {
        let c = &self.counters;
        (
            c.in_msgs.get(),
            c.out_msgs.get(),
            c.in_bytes.get(),
            c.out_bytes.get(),
        )
    }

    pub fn subscriptions(&self) -> Vec<Rc<Subscription>> {
        self.subs.borrow().values().cloned().collect()
    }

    /// Requires CONNECT with valid credentials before anything else.
    pub(crate) fn require_auth(&self, nonce: String, deadline: Instant) {
        *self.nonce.borrow_mut() = nonce;
        self.update_liveness(|l| l.require_auth(deadline));
    }

    /// True while CONNECT with valid credentials has not passed.
    pub(crate) fn awaiting_auth(&self) -> bool {
        self.liveness.get().awaiting_auth()
    }

    pub(crate) fn authenticated(&self) {
        self.update_liveness(Liveness::authenticated);
    }

    /// Moves the authentication deadline (nats-server starts it after the TLS handshake).
    pub(crate) fn restart_auth_deadline(&self, deadline: Instant) {
        self.update_liveness(|l| l.restart_auth(deadline));
    }

    /// The client sent PING or PONG.
    pub(crate) fn heard_from(&self) {
        self.update_liveness(Liveness::heard_from);
    }

    /// What the connection's deadlines ask for at `now`; a PING due is queued.
    pub(crate) fn handle_timeout(
        &self,
        now: Instant,
        ping_interval: std::time::Duration,
        ping_max: u32,
    ) -> Option<Due> {
        let mut liveness = self.liveness.get();
        let due = liveness.handle_timeout(now, ping_interval, ping_max);
        self.liveness.set(liveness);
        if due == Some(Due::Ping) {
            self.queue_bytes(proto::PING);
        }
        due
    }

    fn update_liveness(&self, f: impl FnOnce(&mut Liveness)) {
        let mut liveness = self.liveness.get();
        f(&mut liveness);
        self.liveness.set(liveness);
    }

    /// What the TLS handshake negotiated; `None` for plaintext connections.
    pub fn tls_state(&self) -> Option<crate::tls::TlsState> {
        self.tls.borrow().clone()
    }

    pub(crate) fn set_tls_state(&self, state: crate::tls::TlsState) {
        *self.tls.borrow_mut() = Some(state);
    }

    /// Takes what is queued, for writing before the writer runs (INFO before TLS).
    pub(crate) fn take_output(&self) -> BytesMut {
        self.out.borrow_mut().split()
    }

    /// Resolves when the connection starts closing. Only for use before the writer
    /// task runs: it borrows the writer's wake-up slot.
    pub(crate) async fn closing(&self) {
        std::future::poll_fn(|cx| {
            if self.is_closing() {
                Poll::Ready(())
            } else {
                self.writer.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    pub fn authenticated_as(&self) -> Option<crate::auth::Identity> {
        self.identity.borrow().clone()
    }

    /// When the client last sent something.
    pub fn last_activity(&self) -> Instant {
        self.last_activity.get()
    }

    pub fn subscription_count(&self) -> usize {
        self.subs.borrow().len()
    }

    /// Appends a MSG/HMSG and wakes the writer. Returns the bytes now pending.
    pub(crate) fn queue_msg(
        &self,
        subject: &[u8],
        sid: &[u8],
        reply: &[u8],
        header_len: usize,
        message: &[u8],
        zeros: proto::SizeZeros,
    ) -> usize {
        let mut out = self.out.borrow_mut();
        proto::write_msg(&mut out, subject, sid, reply, header_len, message, zeros);
        self.counters.out_msgs.set(self.counters.out_msgs.get() + 1);
        self.counters
            .out_bytes
            .set(self.counters.out_bytes.get() + message.len() as u64);
        let pending = out.len() + self.in_flight.get();
        drop(out);
        self.wake_writer();
        pending
    }

    /// Bytes queued or being written.
    pub(crate) fn pending(&self) -> usize {
        self.out.borrow().len() + self.in_flight.get()
    }

    /// Marks the connection as one producers should wait for; true the first time.
    pub(crate) fn mark_stalling(&self) -> bool {
        !self.stall_marked.replace(true)
    }

    pub(crate) fn clear_stall(&self) {
        self.stall_marked.set(false);
    }

    /// Whether the writer completed a write within `window`.
    pub(crate) fn progressed_within(&self, window: std::time::Duration) -> bool {
        self.last_progress.get().elapsed() <= window
    }

    /// Waits until at most `mark` bytes are pending, or the connection closes.
    pub(crate) async fn wait_below(&self, mark: usize) {
        std::future::poll_fn(|cx| {
            if self.is_closing() || self.pending() <= mark {
                Poll::Ready(())
            } else {
                self.drain_waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    fn notify_drained(&self) {
        let waiters = std::mem::take(&mut *self.drain_waiters.borrow_mut());
        for w in waiters {
            w.wake();
        }
    }

    pub(crate) fn queue_bytes(&self, bytes: &[u8]) {
        self.out.borrow_mut().extend_from_slice(bytes);
        self.wake_writer();
    }

    pub(crate) fn queue_err(&self, text: &str) {
        proto::write_err(&mut self.out.borrow_mut(), text);
        self.wake_writer();
    }

    fn wake_writer(&self) {
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }

    pub(crate) fn pending_chunks(&self) -> (usize, usize) {
        let queued = self.out.borrow().len();
        let in_flight = self.in_flight.get();
        (
            usize::from(queued > 0) + usize::from(in_flight > 0),
            queued + in_flight,
        )
    }

    pub(crate) fn write_started(&self) -> Option<Instant> {
        self.write_started.get()
    }

    pub(crate) fn forget_sub(&self, sid: &[u8]) {
        self.subs.borrow_mut().remove(sid);
    }

    pub(crate) fn take_subs(&self) -> Vec<Rc<Subscription>> {
        self.subs.borrow_mut().drain().map(|(_, s)| s).collect()
    }

    /// The reason the connection is closing, if it is.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.closing.get()
    }

    /// True exactly once: the caller must remove the connection's state.
    pub(crate) fn claim_cleanup(&self) -> bool {
        !self.cleaned_up.replace(true)
    }

    /// Marks the connection closing. False if it already was.
    pub(crate) fn begin_close(&self, reason: CloseReason) -> bool {
        if self.closing.get().is_some() {
            return false;
        }
        self.closing.set(Some(reason));
        for sub in self.subs.borrow().values() {
            sub.detached.set(true);
        }
        if reason.discards_output() {
            self.out.borrow_mut().clear();
            self.shutdown_socket();
        }
        self.wake_writer();
        true
    }

    /// Unblocks both tasks: pending reads and writes fail at once.
    fn shutdown_socket(&self) {
        // SAFETY: shutdown(2) only changes the state of the socket behind `fd`; it
        // reads no memory of ours. The fd stays open (owned by the TcpStream that
        // both tasks hold) until after this call, so it cannot name another file.
        unsafe {
            libc::shutdown(self.fd, libc::SHUT_RDWR);
        }
    }

    /// What monitoring shows of this connection: open (`reason` None) or just
    /// closed, with its subscriptions when `subs`.
    pub(crate) fn record(
        &self,
        (shard, account): (usize, String),
        reason: Option<CloseReason>,
        subs: bool,
    ) -> crate::snapshot::ConnSnapshot {
        let c = self.connect.borrow();
        let subs = if subs {
            self.subscriptions()
                .into_iter()
                .map(|s| crate::snapshot::SubSnapshot {
                    subject: String::from_utf8_lossy(&s.subject).into_owned(),
                    queue: s
                        .queue
                        .as_ref()
                        .map(|q| String::from_utf8_lossy(q).into_owned()),
                    sid: String::from_utf8_lossy(&s.sid).into_owned(),
                    msgs: s.delivered.get(),
                    max: s.max.get(),
                    cid: self.cid,
                    account: account.clone(),
                })
                .collect()
        } else {
            Vec::new()
        };
        let now = SystemTime::now();
        let stop = reason.map(|_| now);
        let idle = self.last_activity.get().elapsed();
        crate::snapshot::ConnSnapshot {
            cid: self.cid,
            shard,
            ip: self.addr.ip().to_string(),
            port: self.addr.port(),
            start: self.start,
            last_activity: stop.unwrap_or_else(|| now.checked_sub(idle).unwrap_or(now)),
            stop,
            reason: reason.map(|r| r.to_string()),
            pending_bytes: if reason.is_some() {
                0
            } else {
                self.pending_chunks().1
            },
            in_msgs: self.counters.in_msgs.get(),
            out_msgs: self.counters.out_msgs.get(),
            in_bytes: self.counters.in_bytes.get(),
            out_bytes: self.counters.out_bytes.get(),
            subscriptions: if reason.is_some() {
                0
            } else {
                self.subscription_count()
            },
            name: c.name.clone(),
            lang: c.lang.clone(),
            version: c.version.clone(),
            account,
            user: self.authenticated_as().map(|w| w.raw()),
            subs,
            tls: self.tls_state(),
        }
    }
}

impl crate::tls::HandshakePeer for Client {
    fn is_closing(&self) -> bool {
        Client::is_closing(self)
    }

    fn closing(&self) -> impl std::future::Future<Output = ()> {
        Client::closing(self)
    }

    fn log_prefix_short(&self) -> String {
        Client::log_prefix_short(self)
    }

    fn take_output(&self) -> BytesMut {
        Client::take_output(self)
    }

    fn handshake_done(&self, state: crate::tls::TlsState, auth_deadline: Instant) {
        self.set_tls_state(state);
        self.restart_auth_deadline(auth_deadline);
    }
}
