//! A client connection in its shard: its protocol state machine
//! ([`Connection`]), its handle, account and coalesced outbound buffer, and what
//! the writer and backpressure need. The tasks that move its bytes and feed what
//! it sends through the state machine are in `tasks`.

pub(crate) mod tasks;

use std::cell::{Cell, RefCell};
use std::fmt;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Instant, SystemTime};

use bytes::BytesMut;

use crate::connection::{Connection, Due, Outbound};
use crate::permissions::Permissions;
use crate::proto;
use crate::router::{RequesterInfo, SubscriberId, Subscription};

pub use crate::connection::CloseReason;

/// What was written to the client (what it sent is counted by its `Connection`).
#[derive(Debug, Default)]
struct Sent {
    msgs: Cell<u64>,
    bytes: Cell<u64>,
}

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
    /// Borrowed only for one call at a time and never across an await; a publish
    /// is routed after `handle_op` returns, so delivering to this very connection
    /// can borrow it again.
    conn: RefCell<Connection>,
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
    last_activity: Cell<Instant>,
    /// Set once a TLS handshake completed.
    tls: RefCell<Option<crate::tls::TlsState>>,
    sent: Sent,
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
        Client {
            cid,
            addr,
            subscriber: Cell::new(SubscriberId(u32::MAX)),
            account: Cell::new(account),
            in_account: Cell::new(false),
            start: SystemTime::now(),
            fd,
            conn: RefCell::new(Connection::new(addr, cid, first_ping, limits)),
            out: RefCell::new(BytesMut::with_capacity(4096)),
            in_flight: Cell::new(0),
            writer: Cell::new(None),
            drain_waiters: RefCell::new(Vec::new()),
            stall_marked: Cell::new(false),
            write_started: Cell::new(None),
            last_progress: Cell::new(Instant::now()),
            closing: Cell::new(None),
            cleaned_up: Cell::new(false),
            last_activity: Cell::new(Instant::now()),
            tls: RefCell::new(None),
            sent: Sent::default(),
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
        let conn = self.conn.borrow();
        let c = conn.connect_info();
        RequesterInfo {
            start: crate::rfc3339(self.start),
            host: self.addr.ip().to_string(),
            id: self.cid,
            user: conn.identity().map(|w| w.raw()),
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
        self.conn.borrow().permissions().cloned()
    }

    pub(crate) fn set_permissions(&self, permissions: Option<Arc<Permissions>>) {
        self.conn.borrow_mut().set_permissions(permissions);
    }

    /// Remembers a request's reply subject this client may then publish to.
    pub(crate) fn note_request(&self, reply: &[u8]) {
        let mut conn = self.conn.borrow_mut();
        // Most clients have no `allow_responses`: no clock read per delivery.
        if conn.tracks_replies() {
            conn.note_request(reply, Instant::now());
        }
    }

    /// The delivery-time deny check for subscriptions that overlap the deny list.
    pub(crate) fn delivery_denied(&self, subject: &[u8]) -> bool {
        self.conn.borrow().delivery_denied(subject)
    }

    pub fn is_closing(&self) -> bool {
        self.closing.get().is_some()
    }

    pub fn echo(&self) -> bool {
        self.conn.borrow().echo()
    }

    pub fn headers(&self) -> bool {
        self.conn.borrow().headers()
    }

    /// `127.0.0.1:50482 - cid:6`, as nats-server starts its client log lines.
    pub fn log_prefix_short(&self) -> String {
        self.conn.borrow().log_prefix_short()
    }

    /// With what CONNECT and authentication said of the client.
    pub fn log_prefix(&self) -> String {
        self.conn.borrow().log_prefix()
    }

    /// Name, language and version from CONNECT.
    pub fn identity(&self) -> (String, String, String) {
        let conn = self.conn.borrow();
        let c = conn.connect_info();
        (c.name.clone(), c.lang.clone(), c.version.clone())
    }

    /// (in_msgs, out_msgs, in_bytes, out_bytes)
    pub fn counts(&self) -> (u64, u64, u64, u64) {
        let (in_msgs, in_bytes) = self.conn.borrow().received();
        (
            in_msgs,
            self.sent.msgs.get(),
            in_bytes,
            self.sent.bytes.get(),
        )
    }

    pub fn subscriptions(&self) -> Vec<Rc<Subscription>> {
        self.conn.borrow().subscriptions().cloned().collect()
    }

    /// The protocol state machine, for the shell that feeds it.
    pub(crate) fn connection(&self) -> std::cell::RefMut<'_, Connection> {
        self.conn.borrow_mut()
    }

    /// Requires CONNECT with valid credentials before anything else.
    pub(crate) fn require_auth(&self, nonce: String, deadline: Instant) {
        self.conn.borrow_mut().require_auth(nonce, deadline);
    }

    /// True while CONNECT with valid credentials has not passed.
    pub(crate) fn awaiting_auth(&self) -> bool {
        self.conn.borrow().awaiting_auth()
    }

    /// What the connection's deadlines ask for at `now`, already told to the
    /// client (a PING, or why it is being closed).
    pub(crate) fn handle_timeout(
        &self,
        now: Instant,
        ping_interval: std::time::Duration,
        ping_max: u32,
    ) -> Option<Due> {
        self.conn
            .borrow_mut()
            .handle_timeout(now, (ping_interval, ping_max), &mut QueueOut(self))
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
        self.conn.borrow().identity().cloned()
    }

    /// When the client last sent something.
    pub fn last_activity(&self) -> Instant {
        self.last_activity.get()
    }

    pub fn subscription_count(&self) -> usize {
        self.conn.borrow().subscription_count()
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
        self.sent.msgs.set(self.sent.msgs.get() + 1);
        self.sent
            .bytes
            .set(self.sent.bytes.get() + message.len() as u64);
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
        self.conn.borrow_mut().forget_sub(sid);
    }

    pub(crate) fn take_subs(&self) -> Vec<Rc<Subscription>> {
        self.conn.borrow_mut().take_subs()
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
        for sub in self.conn.borrow().subscriptions() {
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
        let conn = self.conn.borrow();
        let c = conn.connect_info();
        let subs = if subs {
            conn.subscriptions()
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
            in_msgs: conn.received().0,
            out_msgs: self.sent.msgs.get(),
            in_bytes: conn.received().1,
            out_bytes: self.sent.bytes.get(),
            subscriptions: if reason.is_some() {
                0
            } else {
                conn.subscription_count()
            },
            name: c.name.clone(),
            lang: c.lang.clone(),
            version: c.version.clone(),
            account,
            user: conn.identity().map(|w| w.raw()),
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
        self.conn.borrow_mut().restart_auth_deadline(auth_deadline);
    }
}

/// The connection's words to its client go to its outbound buffer.
pub(crate) struct QueueOut<'a>(pub(crate) &'a Client);

impl Outbound for QueueOut<'_> {
    fn send(&mut self, bytes: &[u8]) {
        self.0.queue_bytes(bytes);
    }

    fn send_err(&mut self, text: &str) {
        self.0.queue_err(text);
    }
}
