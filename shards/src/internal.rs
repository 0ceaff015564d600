//! Internal clients: subscribers and publishers inside the server (the system
//! account's services, JetStream, advisories). One lives on one shard, next to the
//! client connections; it subscribes like a client and routes its publishes
//! through the same router, imports and no-responders rules as a client publish.
//!
//! What it receives goes into a bounded queue that any thread can read (`recv`
//! from a glommio task, a tokio task or a plain thread). Filling that queue never
//! blocks the shard: above half of it the publishers feeding it are held back, as
//! for a slow client, and what still does not fit is dropped and counted.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;

use crate::router::{Message, SubscriberId, Subscription};

/// Messages an internal client's queue holds before publishers are held back
/// (at half) and messages are dropped (when full).
pub const INTERNAL_QUEUE: usize = 8192;

/// One message delivered to an internal client.
#[derive(Debug, Clone)]
pub struct InternalMsg {
    /// The subscription it matched (as `InternalHandle::subscribe` returned it).
    pub sid: Bytes,
    pub subject: Bytes,
    pub reply: Bytes,
    pub header_len: usize,
    /// Headers and payload, shared with the publisher's buffer where possible.
    pub message: Bytes,
}

impl InternalMsg {
    pub fn headers(&self) -> &[u8] {
        &self.message[..self.header_len]
    }

    pub fn payload(&self) -> &[u8] {
        &self.message[self.header_len..]
    }
}

/// The receiving end of an internal client's queue. `Send`: it may be read on any
/// thread or executor.
#[derive(Debug, Clone)]
pub struct InternalReceiver {
    rx: flume::Receiver<InternalMsg>,
}

impl InternalReceiver {
    /// The next message; `None` once the client is gone and the queue is empty.
    pub async fn recv(&self) -> Option<InternalMsg> {
        self.rx.recv_async().await.ok()
    }

    /// The next message, waiting at most `timeout` (for threads without a runtime).
    pub fn recv_timeout(&self, timeout: Duration) -> Option<InternalMsg> {
        self.rx.recv_timeout(timeout).ok()
    }

    pub fn try_recv(&self) -> Option<InternalMsg> {
        self.rx.try_recv().ok()
    }
}

/// An internal client as its shard holds it.
#[derive(Debug)]
pub(crate) struct InternalClient {
    pub id: SubscriberId,
    pub account: u32,
    tx: flume::Sender<InternalMsg>,
    subs: RefCell<HashMap<Bytes, Rc<Subscription>, ahash::RandomState>>,
    next_sid: Cell<u64>,
    dropped: Cell<u64>,
    stall_marked: Cell<bool>,
}

impl InternalClient {
    pub fn new(id: SubscriberId, account: u32) -> (InternalClient, InternalReceiver) {
        let (tx, rx) = flume::bounded(INTERNAL_QUEUE);
        let client = InternalClient {
            id,
            account,
            tx,
            subs: RefCell::default(),
            next_sid: Cell::new(1),
            dropped: Cell::new(0),
            stall_marked: Cell::new(false),
        };
        (client, InternalReceiver { rx })
    }

    /// A subscription of this client, not yet in any index.
    pub fn new_subscription(&self, subject: Bytes, queue: Option<Bytes>) -> Rc<Subscription> {
        let seq = self.next_sid.get();
        self.next_sid.set(seq + 1);
        let sid = Bytes::from(seq.to_string());
        let sub = Rc::new(Subscription::new(self.id, sid.clone(), subject, queue));
        self.subs.borrow_mut().insert(sid, sub.clone());
        sub
    }

    pub fn subscription(&self, sid: &[u8]) -> Option<Rc<Subscription>> {
        self.subs.borrow().get(sid).cloned()
    }

    pub fn forget(&self, sid: &[u8]) {
        self.subs.borrow_mut().remove(sid);
    }

    pub fn sids(&self) -> Vec<Bytes> {
        self.subs.borrow().keys().cloned().collect()
    }

    pub fn take_subs(&self) -> Vec<Rc<Subscription>> {
        self.subs.borrow_mut().drain().map(|(_, s)| s).collect()
    }

    /// Messages dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// Queues one message. `None` when the queue is full (or the reader is gone).
    pub fn deliver(&self, sub: &Subscription, msg: &Message<'_>) -> Option<usize> {
        let item = InternalMsg {
            sid: sub.sid.clone(),
            subject: msg.share(msg.shown_subject()),
            reply: msg.share(msg.reply),
            header_len: msg.header_len,
            message: msg.share(msg.message),
        };
        match self.tx.try_send(item) {
            Ok(()) => Some(msg.message.len()),
            Err(flume::TrySendError::Full(_)) => {
                let dropped = self.dropped.get() + 1;
                self.dropped.set(dropped);
                if dropped == 1 || dropped % 10_000 == 0 {
                    tracing::warn!(
                        "Internal subscriber in account {} is slow, {dropped} messages dropped",
                        self.account
                    );
                }
                None
            }
            Err(flume::TrySendError::Disconnected(_)) => None,
        }
    }

    pub fn queued(&self) -> usize {
        self.tx.len()
    }

    /// True the first time the queue passes half: the shard holds its feeders back.
    pub fn mark_stalling(&self) -> bool {
        self.queued() > INTERNAL_QUEUE / 2 && !self.stall_marked.replace(true)
    }

    pub fn clear_stall(&self) {
        self.stall_marked.set(false);
    }

    /// Nobody reads the queue any more.
    pub fn is_abandoned(&self) -> bool {
        self.tx.is_disconnected()
    }
}
