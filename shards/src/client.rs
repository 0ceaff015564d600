//! A client connection: its state, the processing of what it sends, and the two
//! tasks that move its bytes (a reader that parses and routes, a writer that
//! flushes the coalesced outbound buffer).

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

use crate::info::ConnectInfo;
use crate::permissions::Permissions;
use crate::proto::{self, ClientOp, ParseContext, ParseLimits, Parsed, Parser, ProtoError};
use crate::router::{RequesterInfo, SubscriberId, Subscription};
use crate::shard::Shard;
use crate::subject;
use crate::tls::Conn;

/// Why a connection was closed, spelled as nats-server reports it in /connz.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    ClientClosed,
    ServerShutdown,
    AuthenticationTimeout,
    AuthenticationViolation,
    SlowConsumerPendingBytes,
    SlowConsumerWriteDeadline,
    StaleConnection,
    ProtocolViolation,
    ParseError,
    MaxPayloadExceeded,
    MaxControlLineExceeded,
    MaxConnectionsExceeded,
    MaxAccountConnectionsExceeded,
    ReadError,
    WriteError,
    TlsHandshakeError,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CloseReason::ClientClosed => "Client Closed",
            CloseReason::ServerShutdown => "Server Shutdown",
            CloseReason::AuthenticationTimeout => "Authentication Timeout",
            CloseReason::AuthenticationViolation => "Authentication Failure",
            CloseReason::SlowConsumerPendingBytes => "Slow Consumer (Pending Bytes)",
            CloseReason::SlowConsumerWriteDeadline => "Slow Consumer (Write Deadline)",
            CloseReason::StaleConnection => "Stale Connection",
            CloseReason::ProtocolViolation => "Protocol Violation",
            CloseReason::ParseError => "Parse Error",
            CloseReason::MaxPayloadExceeded => "Maximum Message Payload Exceeded",
            CloseReason::MaxControlLineExceeded => "Maximum Control Line Exceeded",
            CloseReason::MaxConnectionsExceeded => "Maximum Connections Exceeded",
            CloseReason::MaxAccountConnectionsExceeded => "Maximum Account Connections Exceeded",
            CloseReason::ReadError => "Read Error",
            CloseReason::WriteError => "Write Error",
            CloseReason::TlsHandshakeError => "TLS Handshake Failure",
        })
    }
}

impl CloseReason {
    /// Slow consumers lose what is pending; everyone else gets it flushed.
    fn discards_output(self) -> bool {
        matches!(
            self,
            CloseReason::SlowConsumerPendingBytes
                | CloseReason::SlowConsumerWriteDeadline
                | CloseReason::WriteError
        )
    }
}

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
    pings_out: Cell<u32>,
    next_ping_at: Cell<Instant>,
    last_activity: Cell<Instant>,
    /// The authentication deadline, while authentication is required and no
    /// CONNECT has passed yet.
    pending_auth: Cell<Option<Instant>>,
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
            pings_out: Cell::new(0),
            next_ping_at: Cell::new(first_ping),
            last_activity: Cell::new(Instant::now()),
            pending_auth: Cell::new(None),
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
        self.pending_auth.set(Some(deadline));
    }

    /// The authentication deadline, while CONNECT has not passed.
    pub(crate) fn auth_deadline(&self) -> Option<Instant> {
        self.pending_auth.get()
    }

    /// Moves the authentication deadline (nats-server starts it after the TLS handshake).
    pub(crate) fn restart_auth_deadline(&self, deadline: Instant) {
        if self.pending_auth.get().is_some() {
            self.pending_auth.set(Some(deadline));
        }
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

    pub(crate) fn next_ping_at(&self) -> Instant {
        self.next_ping_at.get()
    }

    pub(crate) fn pings_outstanding(&self) -> u32 {
        self.pings_out.get()
    }

    pub(crate) fn send_ping(&self, next: Instant) {
        self.pings_out.set(self.pings_out.get() + 1);
        self.next_ping_at.set(next);
        self.queue_bytes(proto::PING);
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
        shard: &Shard,
        reason: Option<CloseReason>,
        subs: bool,
    ) -> crate::control::ConnSnapshot {
        let c = self.connect.borrow();
        let account = shard.account_name(self.account());
        let subs = if subs {
            self.subscriptions()
                .into_iter()
                .map(|s| crate::control::SubSnapshot {
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
        crate::control::ConnSnapshot {
            cid: self.cid,
            shard: shard.id,
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

/// What processing one operation asks of the read loop.
enum Next {
    Continue,
    /// PING: answer after the interest barrier if one is owed.
    Pong,
    Close(CloseReason),
}

/// Bytes asked of the socket per read, and the allocation they come from.
const READ_SIZE: usize = 64 * 1024;
/// The smallest read offered.
const READ_MIN: usize = 4 * 1024;
const READ_ALLOC: usize = 256 * 1024;

/// Runs a connection until it closes. The writer runs as its own task.
pub(crate) async fn run_client(
    shard: Rc<Shard>,
    client: Rc<Client>,
    stream: glommio::net::TcpStream,
) {
    shard.connection_started();
    let (tls, allow_non_tls, auth_timeout) = {
        let opts = shard.opts();
        (opts.tls.clone(), opts.allow_non_tls, opts.auth.timeout)
    };
    let stream = match tls {
        None => Conn::Plain(stream),
        Some(tls) => {
            match crate::tls::establish(&client, stream, &tls, allow_non_tls, auth_timeout).await {
                Some(conn) => conn,
                None => {
                    shard.close_client(&client, CloseReason::TlsHandshakeError);
                    shard.connection_ended();
                    return;
                }
            }
        }
    };
    let stream = Rc::new(RefCell::new(stream));
    let writer = glommio::spawn_local(write_loop(client.clone(), stream.clone())).detach();
    let reason = read_loop(&shard, &client, &stream).await;
    shard.close_client(&client, reason);
    shard.flush_lanes().await;
    writer.await;
    shard.connection_ended();
}

async fn read_some(stream: &RefCell<Conn>, buf: &mut [u8]) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| stream.borrow_mut().poll_read(cx, buf)).await
}

async fn write_some(stream: &RefCell<Conn>, buf: &[u8]) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| stream.borrow_mut().poll_write(cx, buf)).await
}

async fn flush(stream: &RefCell<Conn>) -> std::io::Result<()> {
    std::future::poll_fn(|cx| stream.borrow_mut().poll_flush(cx)).await
}

async fn read_loop(shard: &Rc<Shard>, client: &Rc<Client>, stream: &RefCell<Conn>) -> CloseReason {
    let max_control_line = shard.opts().max_control_line;
    let mut parser = Parser::new();
    let mut buf = BytesMut::with_capacity(READ_ALLOC);
    let mut need = 0usize;
    // The room offered to a read is zeroed first, so it follows what reads return:
    // a request/reply client does not pay for zeroing 64 KiB per message.
    let mut read_hint = READ_MIN;
    loop {
        // Read until a whole frame may be there.
        loop {
            let want = READ_SIZE.max(need.saturating_sub(buf.len()));
            if buf.capacity() - buf.len() < want.min(READ_SIZE) || need > buf.capacity() {
                buf.reserve(want.max(READ_ALLOC / 2));
            }
            let filled = buf.len();
            let wanted = read_hint.max(need.saturating_sub(filled));
            let room = (buf.capacity() - filled).min(wanted);
            buf.resize(filled + room, 0);
            let n = match read_some(stream, &mut buf[filled..]).await {
                Ok(0) => return CloseReason::ClientClosed,
                Ok(n) => n,
                Err(_) if client.is_closing() => return CloseReason::ClientClosed,
                Err(_) => return CloseReason::ReadError,
            };
            buf.truncate(filled + n);
            read_hint = if n == room {
                (read_hint * 4).min(READ_SIZE)
            } else {
                (n * 2).clamp(READ_MIN, READ_SIZE)
            };
            client.last_activity.set(Instant::now());
            if client.is_closing() {
                return CloseReason::ClientClosed;
            }
            if buf.len() >= need {
                break;
            }
        }
        let frame = buf.split().freeze();
        let mut pos = 0;
        need = 0;
        // CONNECT may lower the payload limit to its account's and turn headers
        // on; authentication ends the CONNECT-only phase.
        let context = |client: &Client| ParseContext {
            limits: ParseLimits {
                max_control_line,
                max_payload: client.max_payload.get(),
            },
            awaiting_auth: client.pending_auth.get().is_some(),
            headers: client.headers(),
        };
        let mut cx = context(client);
        while pos < frame.len() {
            let parsed = match parser.parse(&frame[pos..], &cx) {
                Ok(p) => p,
                Err(ProtoError::Authorization) if shard.opts().auth.no_auth_user.is_some() => {
                    // nats-server lets such a client in as the no_auth_user.
                    if let Next::Close(reason) =
                        authenticate(shard, client, &ConnectInfo::implicit())
                    {
                        return reason;
                    }
                    cx = context(client);
                    continue;
                }
                Err(e) => return protocol_error(client, e),
            };
            let (op, n) = match parsed {
                Parsed::Op(op, n) => (op, n),
                Parsed::Incomplete { need: more } => {
                    need = more;
                    break;
                }
                Parsed::Skipped(n) => {
                    pos += n;
                    continue;
                }
                Parsed::PubHead { subject, .. } => {
                    check_publish_subject(client, subject);
                    continue;
                }
            };
            let (trace, max_traced) = {
                let opts = shard.opts();
                (opts.trace, opts.max_traced_msg_len)
            };
            if trace {
                trace_op(client, &frame[pos..pos + n], max_traced);
            }
            pos += n;
            let connect = matches!(op, ClientOp::Connect(_));
            let next = process_op(shard, client, op, &frame);
            if connect {
                cx = context(client);
            }
            match next {
                Next::Continue => {}
                Next::Pong => {
                    if client.mesh_dirty.replace(false) {
                        shard.barrier().await;
                    }
                    client.pings_out.set(0);
                    client.queue_bytes(proto::PONG);
                    // nats-server: the first PING after CONNECT, from a client of
                    // protocol 1, also gets the INFO with connect_info.
                    let connect_info = client.connect_seen.get()
                        && !client.first_pong_sent.replace(true)
                        && client.connect.borrow().protocol >= 1;
                    if connect_info {
                        let mut info = shard.info();
                        info.connect_info = true;
                        info.remote_account = Some(shard.account_name(client.account()));
                        client.queue_bytes(&client.info_line(&info));
                    }
                }
                Next::Close(reason) => return reason,
            }
            if client.is_closing() {
                return CloseReason::ClientClosed;
            }
        }
        if pos < frame.len() {
            // Keep the partial frame; it is copied once, then completed in place.
            buf.reserve(need.max(frame.len() - pos));
            buf.extend_from_slice(&frame[pos..]);
        }
        shard.flush_lanes().await;
        shard.wait_for_stalled().await;
    }
}

fn trace_op(client: &Client, frame: &[u8], max_len: usize) {
    let line_end = memchr::memchr(b'\n', frame).unwrap_or(frame.len());
    let line = String::from_utf8_lossy(&frame[..line_end]);
    let line = line.trim_end_matches('\r');
    tracing::trace!("{} - <<- [{}]", client.log_prefix(), line);
    if line_end + 1 < frame.len() {
        let payload = &frame[line_end + 1..frame.len().saturating_sub(2)];
        let shown = if max_len > 0 && payload.len() > max_len {
            &payload[..max_len]
        } else {
            payload
        };
        let ellipsis = if shown.len() < payload.len() {
            "..."
        } else {
            ""
        };
        tracing::trace!(
            "{} - <<- MSG_PAYLOAD: [{:?}{}]",
            client.log_prefix(),
            String::from_utf8_lossy(shown),
            ellipsis
        );
    }
}

fn protocol_error(client: &Client, e: ProtoError) -> CloseReason {
    if let Some(text) = e.client_text() {
        client.queue_err(text);
    }
    match e {
        ProtoError::Authorization => {
            tracing::error!("{} - authentication error", client.log_prefix_short());
            CloseReason::AuthenticationViolation
        }
        ProtoError::MaxPayload { .. } => {
            tracing::error!("{} - {}", client.log_prefix(), e);
            CloseReason::MaxPayloadExceeded
        }
        ProtoError::MaxControlLine => {
            tracing::error!("{} - Client parser ERROR: {}", client.log_prefix(), e);
            CloseReason::MaxControlLineExceeded
        }
        _ => {
            tracing::error!("{} - Client parser ERROR: {}", client.log_prefix(), e);
            CloseReason::ProtocolViolation
        }
    }
}

/// In pedantic mode a PUB's subject must be a valid literal one. nats-server
/// reports it and still delivers the message.
fn check_publish_subject(client: &Client, subject: &[u8]) {
    if client.connect.borrow().pedantic && !subject::is_valid_literal_subject(subject) {
        client.queue_err("Invalid Publish Subject");
    }
}

/// Authenticates `info`'s credentials when the server requires any and binds the
/// client to the account they belong to; nats-server runs this on every CONNECT.
fn authenticate(shard: &Rc<Shard>, client: &Rc<Client>, info: &ConnectInfo) -> Next {
    let opts = shard.opts();
    if opts.auth.required() {
        let nonce = client.nonce.borrow().clone();
        match crate::tls::authenticate(&opts, client, info, nonce.as_bytes()) {
            Ok(standing) => {
                if shard.bind_account(client, standing.account).is_err() {
                    tracing::error!(
                        "{} - maximum account active connections exceeded",
                        client.log_prefix()
                    );
                    client.queue_err("maximum account active connections exceeded");
                    return Next::Close(CloseReason::MaxAccountConnectionsExceeded);
                }
                apply_account_limits(shard, client);
                *client.auth_label.borrow_mut() = Some(format!(
                    "{}/{}",
                    opts.accounts.name(standing.account),
                    standing.identity.label()
                ));
                client.set_permissions(standing.permissions);
                *client.identity.borrow_mut() = Some(standing.identity);
            }
            Err(failure) => {
                tracing::error!("{} - {}", client.log_prefix_short(), failure.detail);
                client.queue_err("Authorization Violation");
                return Next::Close(CloseReason::AuthenticationViolation);
            }
        }
    }
    client.pending_auth.set(None);
    Next::Continue
}

fn process_op(shard: &Rc<Shard>, client: &Rc<Client>, op: ClientOp<'_>, frame: &Bytes) -> Next {
    let verbose = || client.connect.borrow().verbose;
    match op {
        ClientOp::Ping => Next::Pong,
        ClientOp::Pong => {
            client.pings_out.set(0);
            Next::Continue
        }
        ClientOp::Ok => Next::Continue,
        ClientOp::Info(json) => {
            // nats-server decodes it into its INFO type: null or an object.
            match serde_json::from_slice::<serde_json::Value>(json) {
                Ok(serde_json::Value::Null | serde_json::Value::Object(_)) => Next::Continue,
                Ok(_) => {
                    tracing::error!(
                        "{} - Client parser ERROR: INFO is not an object",
                        client.log_prefix()
                    );
                    Next::Close(CloseReason::ProtocolViolation)
                }
                Err(e) => {
                    tracing::error!("{} - Client parser ERROR: {}", client.log_prefix(), e);
                    Next::Close(CloseReason::ProtocolViolation)
                }
            }
        }
        ClientOp::Err(text) => {
            tracing::error!(
                "{} - Client Error {}",
                client.log_prefix(),
                String::from_utf8_lossy(text)
            );
            Next::Close(CloseReason::ParseError)
        }
        ClientOp::Connect(json) => {
            let decoded = client.connect.borrow().decode_over(json);
            let info = match decoded {
                Ok(i) => i,
                Err(e) => {
                    tracing::error!("{} - Client parser ERROR: {}", client.log_prefix(), e);
                    return Next::Close(CloseReason::ProtocolViolation);
                }
            };
            // A later CONNECT starts over: nats-server drops the subscriptions
            // registered so far (they could belong to another account).
            let first_connect = !client.connect_seen.replace(true);
            if !first_connect {
                for sub in client.take_subs() {
                    if shard.remove_subscription(client.account(), &sub) {
                        client.mesh_dirty.set(true);
                    }
                }
            }
            *client.connect.borrow_mut() = info.clone();
            if let Next::Close(reason) = authenticate(shard, client, &info) {
                return Next::Close(reason);
            }
            if info.account.as_deref().is_some_and(|a| !a.is_empty()) || info.new_account {
                tracing::error!("{} - authentication error", client.log_prefix_short());
                client.queue_err("Authorization Violation");
                return Next::Close(CloseReason::AuthenticationViolation);
            }
            if info.protocol < 0 || info.protocol > 1 {
                client.queue_err("invalid client protocol");
                return Next::Close(CloseReason::ProtocolViolation);
            }
            if info.no_responders && !info.headers {
                client.queue_err("no responders requires headers support");
                return Next::Close(CloseReason::ProtocolViolation);
            }
            client.echo.set(info.echo);
            client.headers.set(info.headers);
            if info.verbose {
                client.queue_bytes(proto::OK);
            }
            Next::Continue
        }
        ClientOp::Pub {
            subject,
            reply,
            header_len,
            message,
            head_checked,
            zeros,
            ..
        } => {
            let (pedantic, no_responders, verbose) = {
                let c = client.connect.borrow();
                (c.pedantic, c.no_responders, c.verbose)
            };
            if pedantic && !head_checked && !subject::is_valid_literal_subject(subject) {
                client.queue_err("Invalid Publish Subject");
            }
            client
                .counters
                .in_msgs
                .set(client.counters.in_msgs.get() + 1);
            client
                .counters
                .in_bytes
                .set(client.counters.in_bytes.get() + message.len() as u64);
            let account = client.account();
            shard.note_received(account, message.len());
            // nats-server's order: gateway-routed subjects, permissions, Raft
            // subjects outside the system account, reserved replies.
            let denied = is_gateway_routed(subject)
                || client.permissions.borrow().as_ref().is_some_and(|perms| {
                    perms.restricts_publish()
                        && !perms.can_publish(subject)
                        && !client.response_allowed(perms, subject)
                })
                || (subject.starts_with(b"$NRG.") && account != shard.opts().accounts.system);
            if denied {
                let subject = proto::go_quote(subject);
                client.queue_err(&format!("Permissions Violation for Publish to {subject}"));
                tracing::error!(
                    "{} - Publish Violation - Subject {}",
                    client.log_prefix(),
                    subject
                );
                return Next::Continue;
            }
            if !reply.is_empty() && is_reserved_reply(reply) {
                let reply = proto::go_quote(reply);
                client.queue_err(&format!(
                    "Permissions Violation for Publish with Reply of {reply}"
                ));
                tracing::error!(
                    "{} - Publish Violation - Reply {}",
                    client.log_prefix(),
                    reply
                );
                return Next::Continue;
            }
            if verbose {
                client.queue_bytes(proto::OK);
            }
            let routed = shard.publish(
                client,
                account,
                subject,
                reply,
                (header_len, zeros),
                message,
                frame,
            );
            if routed.remote {
                client.mesh_dirty.set(true);
            }
            if !routed.any() && !reply.is_empty() && no_responders {
                shard.no_responders(client, subject, reply);
            }
            Next::Continue
        }
        ClientOp::Sub {
            subject: subj,
            queue,
            sid,
        } => {
            // nats-server's order: permissions (and the reserved `_sys_` queue), the
            // subscription limit, a repeated sid (ignored), then the subject.
            let permissions = client.permissions();
            let allowed = queue != Some(SYSTEM_QUEUE)
                && permissions
                    .as_ref()
                    .is_none_or(|perms| perms.can_subscribe(subj, queue));
            if !allowed {
                let subject = proto::go_quote(subj);
                let sid = String::from_utf8_lossy(sid);
                match queue.map(proto::go_quote) {
                    Some(queue) => {
                        client.queue_err(&format!(
                            "Permissions Violation for Subscription to {subject} using queue {queue}"
                        ));
                        tracing::error!(
                            "{} - Subscription Violation - Subject {}, Queue: {}, SID {}",
                            client.log_prefix(),
                            subject,
                            queue,
                            sid
                        );
                    }
                    None => {
                        client.queue_err(&format!(
                            "Permissions Violation for Subscription to {subject}"
                        ));
                        tracing::error!(
                            "{} - Subscription Violation - Subject {}, SID {}",
                            client.log_prefix(),
                            subject,
                            sid
                        );
                    }
                }
                return Next::Continue;
            }
            let max_subs = client.max_subscriptions.get();
            if max_subs > 0 && client.subs.borrow().len() >= max_subs {
                client.queue_err("maximum subscriptions exceeded");
                tracing::error!(
                    "{} - Maximum Subscriptions Exceeded (max {})",
                    client.log_prefix(),
                    max_subs
                );
                return Next::Continue;
            }
            // A repeated sid is ignored, as nats-server ignores it.
            if !client.subs.borrow().contains_key(sid) {
                if !subject::is_valid_subscription_subject(subj) {
                    client.queue_err("Invalid Subject");
                    return Next::Continue;
                }
                // Copied so the subscription does not pin the whole read buffer.
                let sub = Rc::new(Subscription {
                    owner: client.subscriber_id(),
                    sid: Bytes::copy_from_slice(sid),
                    subject: Bytes::copy_from_slice(subj),
                    queue: queue.map(Bytes::copy_from_slice),
                    max: Cell::new(0),
                    delivered: Cell::new(0),
                    delivery_filter: permissions
                        .as_ref()
                        .is_some_and(|p| p.needs_delivery_filter(subj, queue.is_some())),
                });
                client
                    .subs
                    .borrow_mut()
                    .insert(sub.sid.clone(), sub.clone());
                if shard.add_subscription(client.account(), sub) {
                    client.mesh_dirty.set(true);
                }
            }
            if verbose() {
                client.queue_bytes(proto::OK);
            }
            Next::Continue
        }
        ClientOp::Unsub { sid, max } => {
            let sub = client.subs.borrow().get(sid).cloned();
            if let Some(sub) = sub {
                match max {
                    Some(max) if max > 0 && sub.delivered.get() < max => sub.max.set(max),
                    _ => {
                        client.forget_sub(sid);
                        if shard.remove_subscription(client.account(), &sub) {
                            client.mesh_dirty.set(true);
                        }
                    }
                }
            }
            if verbose() {
                client.queue_bytes(proto::OK);
            }
            Next::Continue
        }
    }
}

/// The queue group nats-server reserves for itself.
const SYSTEM_QUEUE: &[u8] = b"_sys_";

/// The prefix of replies routed through gateways (`_GR_.<cluster>.<server>.`).
const GATEWAY_REPLY_PREFIX: &[u8] = b"_GR_.";

/// Replies only the server may hand out: service-import routes back (`_R_.`),
/// JetStream acks and gateway-routed replies.
fn is_reserved_reply(reply: &[u8]) -> bool {
    reply.starts_with(b"_R_.") || reply.starts_with(b"$JS.ACK.") || is_gateway_routed(reply)
}

/// A subject in the gateways' reply space, which clients may not publish to.
fn is_gateway_routed(subject: &[u8]) -> bool {
    subject.len() > GATEWAY_REPLY_PREFIX.len() && subject.starts_with(GATEWAY_REPLY_PREFIX)
}

/// Lowers the connection's payload and subscription limits to its account's.
fn apply_account_limits(shard: &Shard, client: &Client) {
    let opts = shard.opts();
    let Some(spec) = opts.accounts.list.get(client.account() as usize) else {
        return;
    };
    if let Some(max) = spec.limits.max_payload {
        client.max_payload.set(client.max_payload.get().min(max));
    }
    if let Some(max) = spec.limits.max_subscriptions {
        let current = client.max_subscriptions.get();
        client
            .max_subscriptions
            .set(if current == 0 { max } else { current.min(max) });
    }
}

async fn write_loop(client: Rc<Client>, stream: Rc<RefCell<Conn>>) {
    let tls = stream.borrow().is_tls();
    let mut spare = BytesMut::with_capacity(4096);
    loop {
        std::future::poll_fn(|cx| {
            if !client.out.borrow().is_empty() || client.is_closing() {
                Poll::Ready(())
            } else {
                client.writer.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
        std::mem::swap(&mut spare, &mut *client.out.borrow_mut());
        if spare.is_empty() {
            break; // closing, nothing left to flush
        }
        client.in_flight.set(spare.len());
        client.write_started.set(Some(Instant::now()));
        let mut written = 0;
        let mut failed = false;
        while written < spare.len() {
            match write_some(&stream, &spare[written..]).await {
                Ok(0) | Err(_) => {
                    failed = true;
                    break;
                }
                Ok(n) => {
                    written += n;
                    client.in_flight.set(spare.len() - written);
                    client.last_progress.set(Instant::now());
                    client.notify_drained();
                }
            }
        }
        // TLS may hold the last records back until flushed.
        if tls && !failed && flush(&stream).await.is_err() {
            failed = true;
        }
        client.write_started.set(None);
        client.in_flight.set(0);
        client.notify_drained();
        spare.clear();
        // Do not keep a huge buffer around after a burst.
        if spare.capacity() > 4 * 1024 * 1024 {
            spare = BytesMut::with_capacity(4096);
        }
        if failed {
            client.begin_close(CloseReason::WriteError);
            break;
        }
    }
    client.notify_drained();
    if tls {
        // Go's tls.Conn.Close sends close_notify; a peer that does not read loses it.
        stream.borrow_mut().send_close_notify();
        let give_up = async {
            glommio::timer::sleep(crate::tls::LAST_WORDS).await;
            Ok(())
        };
        let _ = futures_lite::future::or(flush(&stream), give_up).await;
    }
    client.shutdown_socket();
}
