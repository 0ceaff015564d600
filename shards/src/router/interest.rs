//! What a router's subscription index holds: local subscriptions (by the handle of
//! their subscriber, never a pointer to a connection), the interest of peers, and
//! the routes accounts' imports add.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::wire::PeerId;
use crate::accounts::{ResponseType, SubjectTransform};

/// A local subscriber, as its shard numbers it: a client connection or an
/// internal client. The shell maps it to the object that takes the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriberId(pub u32);

/// One local subscription.
#[derive(Debug)]
pub struct Subscription {
    pub owner: SubscriberId,
    pub sid: Bytes,
    pub subject: Bytes,
    pub queue: Option<Bytes>,
    /// Auto-unsubscribe after this many deliveries; 0 = never.
    pub max: Cell<u64>,
    pub delivered: Cell<u64>,
    /// The subscriber's deny list overlaps this wildcard or queue subscription, so
    /// each delivery is checked against it.
    pub delivery_filter: bool,
    /// Its subscriber is going away: it weighs nothing when a queue member is
    /// picked (kept here, next to what routing reads anyway).
    pub detached: Cell<bool>,
}

impl Subscription {
    pub fn new(owner: SubscriberId, sid: Bytes, subject: Bytes, queue: Option<Bytes>) -> Self {
        Subscription {
            owner,
            sid,
            subject,
            queue,
            max: Cell::new(0),
            delivered: Cell::new(0),
            delivery_filter: false,
            detached: Cell::new(false),
        }
    }
}

/// A peer's interest in a subject: it has `members` subscriptions on it (queue
/// members are counted so queue groups can be balanced across peers).
#[derive(Debug)]
pub struct RemoteInterest {
    pub peer: PeerId,
    pub members: Cell<u32>,
    /// A pattern summarizing the peer's plain interest, not one of its
    /// subscriptions: a match is only a maybe.
    pub folded: Cell<bool>,
}

/// A stream import as the exporting account's index holds it: what matches goes
/// on into `to_account`. Every shard holds the same entries, so the shard where a
/// message is published applies them.
#[derive(Debug)]
pub struct StreamImportRoute {
    pub to_account: u32,
    pub transform: Option<SubjectTransform>,
}

/// A service import as the importing account's index holds it: requests go to
/// `to_account`, with a route back for the responses.
#[derive(Debug)]
pub struct ServiceImportRoute {
    /// The importing account, where responses go back to.
    pub importer: u32,
    pub to_account: u32,
    pub transform: Option<SubjectTransform>,
    pub response_type: ResponseType,
    pub response_threshold: Duration,
    pub share: bool,
}

/// The way back of one request sent through a service import: responses published
/// in the exporting account on `subject` (a `_R_.` subject) reach the requester's
/// reply subject in `to_account`. Lives on the shard that forwarded the request;
/// the other shards see it as that shard's interest.
#[derive(Debug)]
pub struct ResponseRoute {
    pub exporter: u32,
    pub subject: Bytes,
    pub to_account: u32,
    pub reply: Bytes,
    pub singleton: bool,
    pub expires: Instant,
}

/// An entry of a router's subscription index.
#[derive(Debug, Clone)]
pub enum Interest {
    Local(Rc<Subscription>),
    Remote(Rc<RemoteInterest>),
    StreamImport(Rc<StreamImportRoute>),
    ServiceImport(Rc<ServiceImportRoute>),
    Response(Rc<ResponseRoute>),
}

impl PartialEq for Interest {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Interest::Local(a), Interest::Local(b)) => Rc::ptr_eq(a, b),
            (Interest::Remote(a), Interest::Remote(b)) => Rc::ptr_eq(a, b),
            (Interest::StreamImport(a), Interest::StreamImport(b)) => Rc::ptr_eq(a, b),
            (Interest::ServiceImport(a), Interest::ServiceImport(b)) => Rc::ptr_eq(a, b),
            (Interest::Response(a), Interest::Response(b)) => Rc::ptr_eq(a, b),
            _ => false,
        }
    }
}
