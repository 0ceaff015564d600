//! The memory store: the index with message bodies as its locations.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use bytes::Bytes;

use crate::config::Limits;
use crate::error::{Result, StoreError};
use crate::index::{Entry, Index};
use crate::subject::Subject;
use crate::{FilteredState, MsgTtl, Purge, Store, StoredMessage, StreamState};

/// Headers and payload of a message held in memory.
#[derive(Debug, Clone)]
pub struct Body {
    headers: Bytes,
    payload: Bytes,
}

/// A stream store in memory.
#[derive(Debug)]
pub struct MemStore {
    index: RefCell<Index<Body>>,
    closed: Cell<bool>,
}

/// Builds an index entry and its expiry (0 for none); shared with the file store so
/// both account identically.
pub(crate) fn new_entry<L>(
    index: &Index<L>,
    subject: &str,
    hdr_len: usize,
    payload_len: usize,
    ts: i64,
    ttl: Option<MsgTtl>,
    loc: L,
) -> (Entry<L>, i64) {
    let size = index.size_of(subject.len(), hdr_len, payload_len);
    entry_with(index.intern(subject), size, hdr_len > 0, ts, ttl, loc)
}

/// An index entry for a subject already interned, counting `size` bytes, and its
/// expiry.
pub(crate) fn entry_with<L>(
    subject: Subject,
    size: u64,
    has_headers: bool,
    ts: i64,
    ttl: Option<MsgTtl>,
    loc: L,
) -> (Entry<L>, i64) {
    let (expires, no_age) = match ttl {
        None => (0, false),
        Some(MsgTtl::Never) => (0, true),
        Some(MsgTtl::After(d)) => (
            ts.saturating_add(d.as_nanos().min(i64::MAX as u128) as i64)
                .max(1),
            false,
        ),
    };
    (
        Entry::new(subject, ts, size, has_headers, no_age, loc),
        expires,
    )
}

impl MemStore {
    pub fn new(limits: Limits) -> Self {
        MemStore {
            index: RefCell::new(Index::new(limits)),
            closed: Cell::new(false),
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.get() {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }

    fn msg(seq: u64, e: &Entry<Body>) -> StoredMessage {
        StoredMessage {
            seq,
            subject: e.subject.to_string(),
            headers: e.loc.headers.clone(),
            payload: e.loc.payload.clone(),
            ts: e.ts,
        }
    }

    fn load_sync(&self, seq: u64) -> Result<StoredMessage> {
        self.check_open()?;
        let ix = self.index.borrow();
        ix.get(seq)
            .map(|e| Self::msg(seq, e))
            .ok_or(StoreError::NotFound)
    }
}

impl Store for MemStore {
    async fn append(
        &self,
        subject: &str,
        headers: &[u8],
        payload: &[u8],
        ts: i64,
        ttl: Option<MsgTtl>,
    ) -> Result<u64> {
        self.check_open()?;
        let mut ix = self.index.borrow_mut();
        ix.expire(ts);
        ix.check_append(subject, headers.len(), payload.len(), ttl)?;
        let body = Body {
            headers: Bytes::copy_from_slice(headers),
            payload: Bytes::copy_from_slice(payload),
        };
        let (e, expires) = new_entry(&ix, subject, headers.len(), payload.len(), ts, ttl, body);
        let seq = ix.next_seq();
        ix.insert(seq, e, expires);
        ix.enforce_limits(Some(subject));
        Ok(seq)
    }

    async fn load(&self, seq: u64) -> Result<StoredMessage> {
        self.load_sync(seq)
    }

    async fn load_last(&self, filter: &str) -> Result<StoredMessage> {
        self.check_open()?;
        let seq = self
            .index
            .borrow()
            .last_match(filter)
            .ok_or(StoreError::NotFound)?;
        self.load_sync(seq)
    }

    async fn load_next(&self, start: u64, filter: &str) -> Result<StoredMessage> {
        self.check_open()?;
        let seq = self
            .index
            .borrow()
            .next_match(start, filter)
            .ok_or(StoreError::Eof)?;
        self.load_sync(seq)
    }

    async fn delete(&self, seq: u64, _erase: bool) -> Result<bool> {
        self.check_open()?;
        Ok(self.index.borrow_mut().remove(seq).is_some())
    }

    async fn purge(&self, req: &Purge) -> Result<u64> {
        self.check_open()?;
        Ok(self
            .index
            .borrow_mut()
            .purge(&req.filter, req.up_to, req.keep)
            .len() as u64)
    }

    async fn compact(&self, seq: u64) -> Result<u64> {
        self.check_open()?;
        Ok(self.index.borrow_mut().compact(seq).len() as u64)
    }

    async fn skip_to(&self, seq: u64) -> Result<()> {
        self.check_open()?;
        let mut ix = self.index.borrow_mut();
        if ix.msgs() == 0 {
            if seq > ix.last_seq() {
                ix.compact(seq + 1);
            }
        } else {
            let ts = ix.last_ts();
            ix.advance_last(seq, ts);
        }
        Ok(())
    }

    async fn expire(&self, now: i64) -> Result<u64> {
        self.check_open()?;
        Ok(self.index.borrow_mut().expire(now).len() as u64)
    }

    async fn update_limits(&self, limits: Limits, now: i64) -> Result<()> {
        self.check_open()?;
        let mut ix = self.index.borrow_mut();
        ix.set_limits(limits);
        ix.enforce_limits(None);
        ix.expire(now);
        Ok(())
    }

    fn state(&self) -> StreamState {
        self.index.borrow().state(true)
    }

    fn fast_state(&self) -> StreamState {
        self.index.borrow().state(false)
    }

    fn subjects_state(&self, filter: &str) -> BTreeMap<String, u64> {
        self.index.borrow().subjects_state(filter)
    }

    fn filtered_state(&self, filter: &str) -> FilteredState {
        let (msgs, first, last) = self.index.borrow().filtered_state(filter);
        FilteredState { msgs, first, last }
    }

    fn num_pending(&self, start: u64, filter: &str) -> u64 {
        self.index.borrow().num_pending(start, filter)
    }

    fn next_matching(&self, start: u64, filters: &[String]) -> Option<(u64, u64)> {
        self.index.borrow().next_match_any(start, filters)
    }

    fn watch(&self, filter: &str) {
        self.index.borrow_mut().watch(filter);
    }

    fn unwatch(&self, filter: &str) {
        self.index.borrow_mut().unwatch(filter);
    }

    fn stored_size(&self, seq: u64) -> Option<u64> {
        self.index.borrow().get(seq).map(|e| e.size() as u64)
    }

    fn stored_subject(&self, seq: u64) -> Option<Subject> {
        self.index.borrow().get(seq).map(|e| e.subject.clone())
    }

    fn stored_time(&self, seq: u64) -> Option<i64> {
        self.index.borrow().get(seq).map(|e| e.ts)
    }

    fn seq_from_time(&self, ts: i64) -> u64 {
        self.index.borrow().seq_from_time(ts)
    }

    fn multi_last(&self, filters: &[String], up_to: u64, max: usize) -> Option<Vec<u64>> {
        self.index.borrow().multi_last(filters, up_to, max)
    }

    fn with_headers_since(&self, ts: i64) -> Vec<u64> {
        self.index.borrow().with_headers_since(ts)
    }

    fn expired_last_of_subjects(&self, now: i64) -> Vec<u64> {
        self.index.borrow().expired_last_of_subjects(now)
    }

    fn next_expiry(&self) -> Option<i64> {
        self.index.borrow().next_expiry()
    }

    async fn sync(&self) -> Result<()> {
        self.check_open()
    }

    async fn close(&self) -> Result<()> {
        self.closed.set(true);
        Ok(())
    }
}
