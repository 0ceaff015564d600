//! The sans-I/O core of every store: which sequences exist, their subjects, sizes and
//! timestamps, the per-subject index, and the stream limits. Deterministic: time is
//! always passed in. The memory store keeps message bodies as the location `L`; the file
//! store keeps where the record lives on disk.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use crate::config::{Discard, Limits};
use crate::error::{Result, StoreError};
use crate::seqset::SeqSet;
use crate::subject::{has_wildcard, is_match_all, is_valid_literal, subject_matches, Subject};
use crate::{MsgTtl, StreamState};

/// Bytes a message counts for against `max_bytes` and in the state (nats-server's
/// memory-store accounting: subject + headers + payload + 16).
pub fn msg_size(subject_len: usize, hdr_len: usize, payload_len: usize) -> u64 {
    (subject_len + hdr_len + payload_len + 16) as u64
}

/// The same in nats-server's file store: its record's length (length, sequence,
/// time, subject length: 22 bytes), the subject, the header length (4) and headers
/// when there are any, the payload and its 8-byte hash.
pub fn file_msg_size(subject_len: usize, hdr_len: usize, payload_len: usize) -> u64 {
    let headers = if hdr_len > 0 { 4 + hdr_len } else { 0 };
    (22 + subject_len + headers + payload_len + 8) as u64
}

/// Which of nats-server's two byte accountings a store follows, so that
/// `max_bytes` and the state's `bytes` read as they would there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accounting {
    #[default]
    Memory,
    File,
}

impl Accounting {
    /// The bytes a message counts for under this accounting.
    pub fn size_of(self, subject_len: usize, hdr_len: usize, payload_len: usize) -> u64 {
        match self {
            Accounting::Memory => msg_size(subject_len, hdr_len, payload_len),
            Accounting::File => file_msg_size(subject_len, hdr_len, payload_len),
        }
    }
}

/// One stored message's metadata. Every message has one, so it is kept to 32 bytes
/// in the file store: a one-word subject, the flags folded into the size, and a
/// per-message TTL's expiry kept beside the index (few messages have one).
#[derive(Debug, Clone)]
pub struct Entry<L> {
    pub subject: Subject,
    pub ts: i64,
    /// The counted size in the low bits, [`HAS_HEADERS`] and [`NO_AGE`] above.
    size_flags: u32,
    pub loc: L,
}

/// The message carries headers (only those can hold a `Nats-Msg-Id`, so a restart
/// reads only those back to rebuild deduplication).
const HAS_HEADERS: u32 = 1 << 31;
/// TTL "never": exempt from `max_age`.
const NO_AGE: u32 = 1 << 30;
const SIZE_MASK: u32 = NO_AGE - 1;

impl<L> Entry<L> {
    /// `size` is what the message counts for; a message is at most a record
    /// (64 MiB), far below the 1 GiB the size field holds.
    pub fn new(
        subject: Subject,
        ts: i64,
        size: u64,
        has_headers: bool,
        no_age: bool,
        loc: L,
    ) -> Self {
        debug_assert!(size <= u64::from(SIZE_MASK));
        let mut size_flags = size.min(u64::from(SIZE_MASK)) as u32;
        if has_headers {
            size_flags |= HAS_HEADERS;
        }
        if no_age {
            size_flags |= NO_AGE;
        }
        Entry {
            subject,
            ts,
            size_flags,
            loc,
        }
    }

    pub fn size(&self) -> u32 {
        self.size_flags & SIZE_MASK
    }

    pub fn has_headers(&self) -> bool {
        self.size_flags & HAS_HEADERS != 0
    }

    pub fn no_age(&self) -> bool {
        self.size_flags & NO_AGE != 0
    }
}

/// Wildcard filters that consumers read by, each with the sequences it matches,
/// kept current on every append and removal: a consumer that wants few of many
/// subjects jumps from match to match, and counts what is pending, without
/// walking the stream's subjects or its messages.
#[derive(Debug, Default)]
struct Watched {
    /// A slab: a filter's place stays its own while it is watched.
    filters: Vec<Option<WatchedFilter>>,
    by_filter: HashMap<String, usize, ahash::RandomState>,
    /// Per subject slot (as `Index::sets`): the places of the filters matching it.
    of_slot: Vec<Vec<usize>>,
}

#[derive(Debug)]
struct WatchedFilter {
    watchers: usize,
    seqs: SeqSet,
}

impl Watched {
    fn get(&self, filter: &str) -> Option<&SeqSet> {
        let &at = self.by_filter.get(filter)?;
        self.filters.get(at)?.as_ref().map(|w| &w.seqs)
    }

    /// A subject took `slot`: which watched filters match it.
    fn slot_taken(&mut self, slot: usize, subject: &str) {
        if self.by_filter.is_empty() {
            // Nothing watched: no per-subject list (a stream may have millions).
            if let Some(matching) = self.of_slot.get_mut(slot) {
                matching.clear();
            }
            return;
        }
        if self.of_slot.len() <= slot {
            self.of_slot.resize_with(slot + 1, Vec::new);
        }
        let matching = &mut self.of_slot[slot];
        matching.clear();
        matching.extend(
            self.by_filter
                .iter()
                .filter(|(f, _)| subject_matches(f, subject))
                .map(|(_, &at)| at),
        );
    }

    fn inserted(&mut self, slot: usize, seq: u64) {
        let Some(places) = self.of_slot.get(slot) else {
            return;
        };
        for &at in places {
            if let Some(Some(w)) = self.filters.get_mut(at) {
                w.seqs.insert(seq);
            }
        }
    }

    fn removed(&mut self, slot: usize, seq: u64, slot_emptied: bool) {
        let Some(places) = self.of_slot.get_mut(slot) else {
            return;
        };
        for &at in places.iter() {
            if let Some(Some(w)) = self.filters.get_mut(at) {
                w.seqs.remove(seq);
            }
        }
        if slot_emptied {
            places.clear();
        }
    }

    /// Everything went (a purge): the filters stay watched, with nothing to match.
    fn cleared(&mut self) {
        self.of_slot.clear();
        for w in self.filters.iter_mut().flatten() {
            w.seqs = SeqSet::default();
        }
    }
}

/// Removed messages, returned so the store shell can release what backs them.
pub type Removed<L> = Vec<(u64, Entry<L>)>;

/// Sequence/subject index plus limits.
#[derive(Debug)]
pub struct Index<L> {
    limits: Limits,
    accounting: Accounting,
    /// Sequence of `slots[0]`; when empty, `last_seq + 1`.
    base: u64,
    /// Slots for `[base, last_seq]`; the front slot is always occupied.
    slots: VecDeque<Option<Entry<L>>>,
    /// Keyed with ahash (randomly seeded, so clients cannot aim collisions): every
    /// append and every recovered record hashes its subject here, twice.
    subjects: HashSet<Subject, ahash::RandomState>,
    /// Each subject's sequences, at the slot its `Subject` names; `free_sets` are
    /// the slots of subjects that emptied, for the next new subject.
    sets: Vec<SeqSet>,
    free_sets: Vec<usize>,
    watched: Watched,
    /// Per-message TTLs by expiry, and each such message's expiry by sequence.
    ttls: BTreeSet<(i64, u64)>,
    expiries: HashMap<u64, i64, ahash::RandomState>,
    msgs: u64,
    bytes: u64,
    last_seq: u64,
    last_ts: i64,
}

impl<L> Index<L> {
    pub fn new(limits: Limits) -> Self {
        Index::with_accounting(limits, Accounting::Memory)
    }

    pub fn with_accounting(limits: Limits, accounting: Accounting) -> Self {
        Index {
            limits,
            accounting,
            base: 1,
            slots: VecDeque::new(),
            subjects: HashSet::default(),
            sets: Vec::new(),
            free_sets: Vec::new(),
            watched: Watched::default(),
            ttls: BTreeSet::new(),
            expiries: HashMap::default(),
            msgs: 0,
            bytes: 0,
            last_seq: 0,
            last_ts: 0,
        }
    }

    /// The bytes a message counts for in this store.
    pub fn size_of(&self, subject_len: usize, hdr_len: usize, payload_len: usize) -> u64 {
        self.accounting.size_of(subject_len, hdr_len, payload_len)
    }

    /// Makes room for `additional` more sequences at once (a recovery's estimate).
    pub fn reserve(&mut self, additional: usize) {
        self.slots.reserve(additional);
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Replace the limits; the caller then runs `enforce_limits`/`expire`.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    pub fn msgs(&self) -> u64 {
        self.msgs
    }
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }
    pub fn last_ts(&self) -> i64 {
        self.last_ts
    }
    /// The first live sequence, or `last_seq + 1` when empty (0 for a new stream).
    pub fn first_seq(&self) -> u64 {
        if self.msgs == 0 && self.last_seq == 0 && self.base <= 1 {
            0
        } else {
            self.base
        }
    }
    pub fn next_seq(&self) -> u64 {
        self.last_seq + 1
    }

    pub fn get(&self, seq: u64) -> Option<&Entry<L>> {
        if seq < self.base {
            return None;
        }
        self.slots.get((seq - self.base) as usize)?.as_ref()
    }

    pub fn get_mut(&mut self, seq: u64) -> Option<&mut Entry<L>> {
        if seq < self.base {
            return None;
        }
        self.slots.get_mut((seq - self.base) as usize)?.as_mut()
    }

    /// Interns a subject so the many entries of one subject share one allocation.
    pub fn intern(&self, subject: &str) -> Subject {
        match self.subjects.get(subject) {
            Some(k) => k.clone(),
            None => Subject::new(subject),
        }
    }

    /// The sequences of a literal subject.
    fn set_of(&self, subject: &str) -> Option<&SeqSet> {
        self.sets.get(self.subjects.get(subject)?.slot()?)
    }

    /// Every subject with its sequences.
    fn subject_sets(&self) -> impl Iterator<Item = (&Subject, &SeqSet)> + '_ {
        self.subjects
            .iter()
            .filter_map(|s| Some((s, self.sets.get(s.slot()?)?)))
    }

    /// The slot of `subject`'s sequences, made the one `Subject` of its name that
    /// this index keeps them under (a subject interned twice before its first
    /// message, or one that emptied and came back, is replaced by the registered one).
    fn register(&mut self, subject: &mut Subject) -> usize {
        if let Some(canon) = self.subjects.get(subject.as_str()) {
            if let Some(slot) = canon.slot() {
                *subject = canon.clone();
                return slot;
            }
        }
        let slot = match self.free_sets.pop() {
            Some(slot) => slot,
            None => {
                self.sets.push(SeqSet::default());
                self.sets.len() - 1
            }
        };
        subject.set_slot(Some(slot));
        self.subjects.replace(subject.clone());
        self.watched.slot_taken(slot, subject.as_str());
        slot
    }

    /// Keeps the sequences matching `filter` at hand while a consumer reads by it
    /// (one call per reader; literal and match-all filters need none). Costs one
    /// pass over the subjects and the matching sequences, once.
    pub fn watch(&mut self, filter: &str) {
        if is_match_all(filter) || !has_wildcard(filter.as_bytes()) {
            return;
        }
        if let Some(&at) = self.watched.by_filter.get(filter) {
            if let Some(Some(w)) = self.watched.filters.get_mut(at) {
                w.watchers += 1;
            }
            return;
        }
        let at = match self.watched.filters.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                self.watched.filters.push(None);
                self.watched.filters.len() - 1
            }
        };
        if self.watched.of_slot.len() < self.sets.len() {
            self.watched.of_slot.resize_with(self.sets.len(), Vec::new);
        }
        let mut seqs: Vec<u64> = Vec::new();
        for subject in &self.subjects {
            let Some(slot) = subject.slot() else {
                continue;
            };
            if subject_matches(filter, subject) {
                self.watched.of_slot[slot].push(at);
                seqs.extend(self.sets[slot].iter());
            }
        }
        seqs.sort_unstable();
        let mut set = SeqSet::default();
        for seq in seqs {
            set.insert(seq);
        }
        self.watched.filters[at] = Some(WatchedFilter {
            watchers: 1,
            seqs: set,
        });
        self.watched.by_filter.insert(filter.to_string(), at);
    }

    /// A reader of `filter` went (its consumer was deleted or changed filters).
    pub fn unwatch(&mut self, filter: &str) {
        let Some(&at) = self.watched.by_filter.get(filter) else {
            return;
        };
        let Some(Some(w)) = self.watched.filters.get_mut(at) else {
            return;
        };
        w.watchers -= 1;
        if w.watchers > 0 {
            return;
        }
        self.watched.by_filter.remove(filter);
        self.watched.filters[at] = None;
        for places in &mut self.watched.of_slot {
            places.retain(|&p| p != at);
        }
    }

    /// Checks a new message against the limits that refuse rather than discard.
    pub fn check_append(
        &self,
        subject: &str,
        hdr_len: usize,
        payload_len: usize,
        ttl: Option<MsgTtl>,
    ) -> Result<()> {
        if !is_valid_literal(subject) {
            return Err(StoreError::InvalidSubject);
        }
        if let Some(max) = self.limits.max_msg_size {
            if (hdr_len + payload_len) as u64 > max {
                return Err(StoreError::MsgTooLarge);
            }
        }
        if ttl.is_some() && !self.limits.allow_msg_ttl {
            return Err(StoreError::TtlDisabled);
        }
        if self.limits.discard == Discard::New {
            // At the per-subject limit the new message replaces that subject's oldest, so
            // it does not grow the stream (nats-server's "asl").
            let at_subject_limit = match self.limits.max_msgs_per_subject {
                Some(maxp) => self.set_of(subject).is_some_and(|s| s.len() as u64 >= maxp),
                None => false,
            };
            if at_subject_limit && self.limits.discard_new_per_subject {
                return Err(StoreError::MaxMsgsPerSubject);
            }
            if !at_subject_limit {
                if let Some(max) = self.limits.max_msgs {
                    if self.msgs >= max {
                        return Err(StoreError::MaxMsgs);
                    }
                }
                if let Some(max) = self.limits.max_bytes {
                    if self.bytes + self.size_of(subject.len(), hdr_len, payload_len) > max {
                        return Err(StoreError::MaxBytes);
                    }
                }
            }
        }
        Ok(())
    }

    /// Inserts a message at `seq` (> last sequence; gaps become deleted slots),
    /// expiring at `expires` (ns; 0 for no per-message TTL).
    /// Limits are not applied: see `enforce_limits`.
    pub fn insert(&mut self, seq: u64, mut entry: Entry<L>, expires: i64) {
        debug_assert!(seq > self.last_seq);
        if seq <= self.last_seq {
            return;
        }
        if self.slots.is_empty() {
            self.base = seq;
        } else {
            while self.base + (self.slots.len() as u64) < seq {
                self.slots.push_back(None);
            }
        }
        self.msgs += 1;
        self.bytes += u64::from(entry.size());
        if expires != 0 {
            self.ttls.insert((expires, seq));
            self.expiries.insert(seq, expires);
        }
        let slot = match entry.subject.slot() {
            Some(slot) => slot,
            None => self.register(&mut entry.subject),
        };
        self.sets[slot].insert(seq);
        self.watched.inserted(slot, seq);
        self.last_seq = seq;
        self.last_ts = entry.ts;
        self.slots.push_back(Some(entry));
    }

    /// Moves the last sequence forward without a message (recovery of a purged stream,
    /// or `compact` beyond the end).
    pub fn advance_last(&mut self, last_seq: u64, last_ts: i64) {
        if last_seq > self.last_seq {
            self.last_seq = last_seq;
            if self.slots.is_empty() {
                self.base = last_seq + 1;
            } else {
                while self.base + (self.slots.len() as u64) <= last_seq {
                    self.slots.push_back(None);
                }
            }
        }
        if last_ts > self.last_ts {
            self.last_ts = last_ts;
        }
    }

    /// Removes one message.
    pub fn remove(&mut self, seq: u64) -> Option<Entry<L>> {
        if seq < self.base {
            return None;
        }
        let i = (seq - self.base) as usize;
        let e = self.slots.get_mut(i)?.take()?;
        self.msgs -= 1;
        self.bytes -= u64::from(e.size());
        if !self.expiries.is_empty() {
            if let Some(expires) = self.expiries.remove(&seq) {
                self.ttls.remove(&(expires, seq));
            }
        }
        if let Some(slot) = e.subject.slot() {
            let set = &mut self.sets[slot];
            set.remove(seq);
            let emptied = set.is_empty();
            self.watched.removed(slot, seq, emptied);
            if emptied {
                self.subjects.remove(e.subject.as_str());
                e.subject.set_slot(None);
                self.free_sets.push(slot);
            }
        }
        self.trim_front();
        Some(e)
    }

    fn trim_front(&mut self) {
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.base += 1;
        }
        if self.slots.is_empty() {
            self.base = self.last_seq + 1;
        }
    }

    fn remove_into(&mut self, seq: u64, out: &mut Removed<L>) {
        if let Some(e) = self.remove(seq) {
            out.push((seq, e));
        }
    }

    /// Applies discard-old limits after appending a message on `subject`.
    pub fn enforce_limits(&mut self, subject: Option<&str>) -> Removed<L> {
        let mut out = Vec::new();
        if let Some(maxp) = self.limits.max_msgs_per_subject {
            let subjects: Vec<Subject> = match subject {
                Some(s) => self.subjects.get(s).cloned().into_iter().collect(),
                None => self
                    .subject_sets()
                    .filter(|(_, v)| v.len() as u64 > maxp)
                    .map(|(k, _)| k.clone())
                    .collect(),
            };
            for s in subjects {
                loop {
                    let first = match s.slot().and_then(|slot| self.sets.get(slot)) {
                        Some(set) if set.len() as u64 > maxp => set.first(),
                        _ => None,
                    };
                    match first {
                        Some(seq) => self.remove_into(seq, &mut out),
                        None => break,
                    }
                }
            }
        }
        if let Some(max) = self.limits.max_msgs {
            while self.msgs > max {
                let seq = self.base;
                self.remove_into(seq, &mut out);
            }
        }
        if let Some(max) = self.limits.max_bytes {
            while self.bytes > max && self.msgs > 0 {
                let seq = self.base;
                self.remove_into(seq, &mut out);
            }
        }
        out
    }

    /// Removes messages older than `max_age` and those whose TTL has passed, at `now`
    /// (ns), oldest first. With subject delete markers on, the last message of each
    /// subject stays: see `expired_last_of_subjects`.
    pub fn expire(&mut self, now: i64) -> Removed<L> {
        let mut out = Vec::new();
        let leave_last = self.limits.subject_delete_markers;
        for seq in self.expired(now) {
            if leave_last && self.is_last_of_subject(seq) {
                continue;
            }
            self.remove_into(seq, &mut out);
        }
        out
    }

    /// The messages past their age or TTL at `now` that `expire` leaves because each
    /// is the last of its subject (only with subject delete markers on), ascending.
    pub fn expired_last_of_subjects(&self, now: i64) -> Vec<u64> {
        if !self.limits.subject_delete_markers {
            return Vec::new();
        }
        let mut left = self.expired(now);
        left.retain(|&seq| self.is_last_of_subject(seq));
        left
    }

    fn is_last_of_subject(&self, seq: u64) -> bool {
        self.get(seq)
            .and_then(|e| self.sets.get(e.subject.slot()?))
            .is_some_and(|set| set.len() == 1)
    }

    /// Sequences past their TTL or `max_age` at `now`, ascending; allocates only
    /// when there are some.
    fn expired(&self, now: i64) -> Vec<u64> {
        let mut seqs: Vec<u64> = self
            .ttls
            .iter()
            .take_while(|(exp, _)| *exp <= now)
            .map(|&(_, seq)| seq)
            .collect();
        if let Some(age) = self.limits.max_age {
            let cutoff = now.saturating_sub(age.as_nanos().min(i64::MAX as u128) as i64);
            seqs.extend(
                self.iter_from(self.base)
                    .take_while(|(_, e)| e.ts <= cutoff)
                    .filter(|(_, e)| !e.no_age())
                    .map(|(s, _)| s),
            );
        }
        seqs.sort_unstable();
        seqs.dedup();
        seqs
    }

    /// The earliest time (ns) at which `expire` would remove something.
    pub fn next_expiry(&self) -> Option<i64> {
        let ttl = self.ttls.first().map(|(e, _)| *e);
        let age = self.limits.max_age.and_then(|age| {
            let a = age.as_nanos().min(i64::MAX as u128) as i64;
            self.iter_from(self.base)
                .find(|(_, e)| !e.no_age())
                .map(|(_, e)| e.ts.saturating_add(a))
        });
        match (ttl, age) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Live messages from `start` on, in sequence order.
    pub fn iter_from(&self, start: u64) -> impl Iterator<Item = (u64, &Entry<L>)> + '_ {
        let skip = start.saturating_sub(self.base) as usize;
        let base = self.base;
        self.slots
            .iter()
            .enumerate()
            .skip(skip)
            .filter_map(move |(i, e)| e.as_ref().map(|e| (base + i as u64, e)))
    }

    /// First sequence ≥ `start` whose subject matches `filter`.
    pub fn next_match(&self, start: u64, filter: &str) -> Option<u64> {
        let start = start.max(self.base);
        if start > self.last_seq {
            return None;
        }
        if is_match_all(filter) {
            return self.iter_from(start).map(|(s, _)| s).next();
        }
        if !has_wildcard(filter.as_bytes()) {
            return self.set_of(filter)?.first_from(start);
        }
        if let Some(seqs) = self.watched.get(filter) {
            return seqs.first_from(start);
        }
        let remaining = self.last_seq - start + 1;
        if (self.subjects.len() as u64) < remaining {
            self.subject_sets()
                .filter(|(s, _)| subject_matches(filter, s))
                .filter_map(|(_, set)| set.first_from(start))
                .min()
        } else {
            self.iter_from(start)
                .find(|(_, e)| subject_matches(filter, &e.subject))
                .map(|(s, _)| s)
        }
    }

    /// First sequence ≥ `start` whose subject matches one of `filters` (none:
    /// every subject), with the size the stream accounts for it. A consumer's
    /// filters never overlap, so the earliest of each filter's next is the answer.
    pub fn next_match_any(&self, start: u64, filters: &[String]) -> Option<(u64, u64)> {
        let seq = if filters.is_empty() {
            self.next_match(start, ">")
        } else {
            filters
                .iter()
                .filter_map(|f| self.next_match(start, f))
                .min()
        }?;
        Some((seq, self.get(seq)?.size() as u64))
    }

    /// Highest sequence whose subject matches `filter`.
    pub fn last_match(&self, filter: &str) -> Option<u64> {
        if is_match_all(filter) {
            return (self.msgs > 0).then(|| {
                let mut s = self.last_seq;
                while self.get(s).is_none() {
                    s -= 1;
                }
                s
            });
        }
        if !has_wildcard(filter.as_bytes()) {
            return self.set_of(filter)?.last();
        }
        if let Some(seqs) = self.watched.get(filter) {
            return seqs.last();
        }
        self.subject_sets()
            .filter(|(s, _)| subject_matches(filter, s))
            .filter_map(|(_, set)| set.last())
            .max()
    }

    /// How many messages at or after `start` match `filter`.
    pub fn num_pending(&self, start: u64, filter: &str) -> u64 {
        let start = start.max(self.base);
        if start > self.last_seq {
            return 0;
        }
        if is_match_all(filter) {
            // Walk the shorter side of `start`: a consumer starting at the first
            // or the last message counts in O(1), not O(stream).
            let before = start - self.base;
            let after = self.last_seq - start + 1;
            if before <= after {
                let live_before = self
                    .slots
                    .iter()
                    .take(before as usize)
                    .filter(|e| e.is_some())
                    .count() as u64;
                return self.msgs - live_before;
            }
            return self.iter_from(start).count() as u64;
        }
        if !has_wildcard(filter.as_bytes()) {
            return self
                .set_of(filter)
                .map_or(0, |set| set.count_from(start) as u64);
        }
        if let Some(seqs) = self.watched.get(filter) {
            return seqs.count_from(start) as u64;
        }
        self.subject_sets()
            .filter(|(s, _)| subject_matches(filter, s))
            .map(|(_, set)| set.count_from(start) as u64)
            .sum()
    }

    /// The first sequence stored at or after `ts` (ns); `last_seq + 1` when every
    /// message is older. Timestamps grow with sequences, so this bisects the slots.
    pub fn seq_from_time(&self, ts: i64) -> u64 {
        let ts_at = |i: usize| {
            // Deleted slots take the timestamp of the next live one.
            self.slots
                .range(i..)
                .find_map(|e| e.as_ref().map(|e| e.ts))
                .unwrap_or(i64::MAX)
        };
        let (mut lo, mut hi) = (0usize, self.slots.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if ts_at(mid) < ts {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        match self.iter_from(self.base + lo as u64).next() {
            Some((seq, _)) => seq,
            None => self.last_seq + 1,
        }
    }

    /// The sequences stored at or after `ts` (ns) whose messages carry headers.
    pub fn with_headers_since(&self, ts: i64) -> Vec<u64> {
        self.iter_from(self.seq_from_time(ts))
            .filter(|(_, e)| e.has_headers())
            .map(|(seq, _)| seq)
            .collect()
    }

    /// The last sequence of every subject matching one of `filters`, at or below
    /// `up_to` (0 = the last sequence), ascending; `None` when there are more than
    /// `max` of them.
    pub fn multi_last(&self, filters: &[String], up_to: u64, max: usize) -> Option<Vec<u64>> {
        let up_to = if up_to == 0 { self.last_seq } else { up_to };
        let mut seqs = Vec::new();
        for filter in filters {
            if is_match_all(filter) {
                // Every subject: no need to match their names.
                seqs.extend(self.sets.iter().filter_map(|set| set.last_up_to(up_to)));
            } else {
                seqs.extend(
                    self.subject_sets()
                        .filter(|(subject, _)| subject_matches(filter, subject))
                        .filter_map(|(_, set)| set.last_up_to(up_to)),
                );
            }
            if seqs.len() > max.saturating_mul(filters.len()) {
                return None;
            }
        }
        seqs.sort_unstable();
        // Overlapping filters find a subject more than once.
        seqs.dedup();
        (seqs.len() <= max).then_some(seqs)
    }

    /// Matching sequences, ascending.
    fn matching(&self, filter: &str) -> Vec<u64> {
        if is_match_all(filter) {
            return self.iter_from(self.base).map(|(s, _)| s).collect();
        }
        let mut v: Vec<u64> = self
            .subject_sets()
            .filter(|(s, _)| subject_matches(filter, s))
            .flat_map(|(_, set)| set.iter())
            .collect();
        v.sort_unstable();
        v
    }

    /// nats-server's PurgeEx: removes messages matching `filter` with sequence below
    /// `up_to` (0 = no bound), keeping the newest `keep` matches (0 = none kept).
    pub fn purge(&mut self, filter: &str, up_to: u64, keep: u64) -> Removed<L> {
        let mut out = Vec::new();
        if is_match_all(filter) && up_to == 0 && keep == 0 {
            return self.purge_all();
        }
        let m = self.matching(filter);
        let total = m.len() as u64;
        if keep >= total && keep > 0 {
            return out;
        }
        let max_remove = total - keep;
        for seq in m.into_iter().take(max_remove as usize) {
            if up_to > 0 && seq >= up_to {
                break;
            }
            self.remove_into(seq, &mut out);
        }
        out
    }

    /// Removes everything; the first sequence becomes `last + 1`.
    pub fn purge_all(&mut self) -> Removed<L> {
        let mut out = Vec::with_capacity(self.msgs as usize);
        let base = self.base;
        for (i, e) in std::mem::take(&mut self.slots).into_iter().enumerate() {
            if let Some(e) = e {
                out.push((base + i as u64, e));
            }
        }
        for s in self.subjects.drain() {
            s.set_slot(None);
        }
        self.sets.clear();
        self.free_sets.clear();
        self.watched.cleared();
        self.ttls.clear();
        self.expiries.clear();
        self.msgs = 0;
        self.bytes = 0;
        self.base = self.last_seq + 1;
        out
    }

    /// Removes every message below `seq`; past the end, the stream continues at `seq`.
    pub fn compact(&mut self, seq: u64) -> Removed<L> {
        if seq > self.last_seq + 1 {
            let out = self.purge_all();
            self.last_seq = seq - 1;
            self.base = seq;
            return out;
        }
        let mut out = Vec::new();
        while self.msgs > 0 && self.base < seq {
            let s = self.base;
            self.remove_into(s, &mut out);
        }
        out
    }

    /// Deleted (interior) sequences between first and last.
    pub fn deleted(&self) -> Vec<u64> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, e)| e.is_none())
            .map(|(i, _)| self.base + i as u64)
            .collect()
    }

    pub fn num_subjects(&self) -> u64 {
        self.subjects.len() as u64
    }

    /// Message count per subject matching `filter`.
    pub fn subjects_state(&self, filter: &str) -> BTreeMap<String, u64> {
        self.subject_sets()
            .filter(|(s, _)| subject_matches(filter, s))
            .map(|(s, set)| (s.to_string(), set.len() as u64))
            .collect()
    }

    /// `(msgs, first, last)` of messages matching `filter`.
    pub fn filtered_state(&self, filter: &str) -> (u64, u64, u64) {
        if is_match_all(filter) {
            let last = self.last_match(filter).unwrap_or(0);
            return (self.msgs, if self.msgs > 0 { self.base } else { 0 }, last);
        }
        // One subject is one set: no walk over the others (a KV update's
        // expected revision and a counter's increment ask this per message).
        if !has_wildcard(filter.as_bytes()) {
            return match self.set_of(filter) {
                Some(set) if !set.is_empty() => (
                    set.len() as u64,
                    set.first().unwrap_or(0),
                    set.last().unwrap_or(0),
                ),
                _ => (0, 0, 0),
            };
        }
        let mut n = 0;
        let mut first = u64::MAX;
        let mut last = 0;
        for (s, set) in self.subject_sets() {
            if subject_matches(filter, s) {
                n += set.len() as u64;
                first = first.min(set.first().unwrap_or(u64::MAX));
                last = last.max(set.last().unwrap_or(0));
            }
        }
        (n, if n == 0 { 0 } else { first }, last)
    }

    pub fn state(&self, with_deleted: bool) -> StreamState {
        let first_ts = self
            .slots
            .front()
            .and_then(|e| e.as_ref())
            .map(|e| e.ts)
            .unwrap_or(0);
        let num_deleted = (self.slots.len() as u64) - self.msgs;
        StreamState {
            msgs: self.msgs,
            bytes: self.bytes,
            first_seq: self.first_seq(),
            first_ts,
            last_seq: self.last_seq,
            last_ts: self.last_ts,
            num_deleted,
            deleted: if with_deleted {
                self.deleted()
            } else {
                Vec::new()
            },
            num_subjects: self.subjects.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Discard;

    fn e(subject: &str, ts: i64) -> Entry<()> {
        Entry::new(
            Subject::new(subject),
            ts,
            msg_size(subject.len(), 0, 1),
            false,
            false,
            (),
        )
    }

    #[test]
    fn limits_discard_old_and_new() {
        let mut ix: Index<()> = Index::new(Limits {
            max_msgs: Some(2),
            ..Default::default()
        });
        for s in 1..=3 {
            ix.insert(s, e("a", s as i64), 0);
            ix.enforce_limits(Some("a"));
        }
        assert_eq!(ix.state(true).first_seq, 2);
        assert_eq!(ix.msgs(), 2);
        ix.set_limits(Limits {
            max_msgs: Some(2),
            discard: Discard::New,
            ..Default::default()
        });
        assert!(matches!(
            ix.check_append("a", 0, 1, None),
            Err(StoreError::MaxMsgs)
        ));
    }

    /// Every message has an entry: its size is the index's memory per message.
    #[test]
    fn an_entry_stays_small() {
        assert!(std::mem::size_of::<Option<Entry<crate::file::Loc>>>() <= 32);
    }

    #[test]
    fn expiry_with_delete_markers_leaves_each_subjects_last_message() {
        let mut ix: Index<()> = Index::new(Limits {
            max_age: Some(std::time::Duration::from_nanos(10)),
            subject_delete_markers: true,
            ..Default::default()
        });
        // a: 1, 2, 3 all expire; b: 4 expires but 6 does not; c: 5 expires alone.
        for (seq, subject, ts) in [(1, "a", 0), (2, "a", 1), (3, "a", 2), (4, "b", 3)] {
            ix.insert(seq, e(subject, ts), 0);
        }
        ix.insert(5, e("c", 4), 0);
        ix.insert(6, e("b", 100), 0);
        let removed: Vec<u64> = ix.expire(50).into_iter().map(|(s, _)| s).collect();
        assert_eq!(removed, vec![1, 2, 4]);
        assert_eq!(ix.expired_last_of_subjects(50), vec![3, 5]);
        assert_eq!(ix.msgs(), 3);
        // Without markers the same expiry removes them all.
        ix.set_limits(Limits {
            max_age: Some(std::time::Duration::from_nanos(10)),
            ..Default::default()
        });
        assert!(ix.expired_last_of_subjects(50).is_empty());
        assert_eq!(ix.expire(50).len(), 2);
    }

    /// A subject's sequences live at the slot its `Subject` carries: two interned
    /// copies of one name, a subject that empties and comes back, and a purge all
    /// keep one set per name.
    #[test]
    fn one_set_per_subject_however_it_was_interned() {
        let mut ix: Index<()> = Index::new(Limits::default());
        let (a1, a2) = (ix.intern("a"), ix.intern("a"));
        ix.insert(1, Entry::new(a1, 1, 10, false, false, ()), 0);
        ix.insert(2, Entry::new(a2, 2, 10, false, false, ()), 0);
        ix.insert(3, e("b", 3), 0);
        assert_eq!(ix.num_subjects(), 2);
        assert_eq!(ix.num_pending(1, "a"), 2);
        ix.remove(3);
        assert_eq!(ix.num_subjects(), 1);
        let kept_b = ix.get(2).map(|e| e.subject.clone());
        ix.insert(4, e("b", 4), 0);
        ix.insert(5, e("c", 5), 0);
        assert_eq!(ix.num_pending(1, "b"), 1);
        assert_eq!(ix.num_pending(1, "c"), 1);
        assert_eq!(
            ix.subjects_state(">").into_iter().collect::<Vec<_>>(),
            vec![("a".into(), 2), ("b".into(), 1), ("c".into(), 1)]
        );
        ix.purge_all();
        assert_eq!(ix.num_subjects(), 0);
        ix.insert(
            6,
            Entry::new(
                kept_b.unwrap_or_else(|| Subject::new("a")),
                6,
                10,
                false,
                false,
                (),
            ),
            0,
        );
        ix.insert(7, e("a", 7), 0);
        assert_eq!(ix.num_subjects(), 1);
        assert_eq!(ix.num_pending(1, "a"), 2);
        assert_eq!(ix.last_match("a"), Some(7));
    }

    /// A TTL is kept beside the entry: removing the message, however it goes,
    /// drops its expiry too.
    #[test]
    fn a_removed_message_takes_its_expiry_along() {
        let mut ix: Index<()> = Index::new(Limits::default());
        let ttl = Some(MsgTtl::After(std::time::Duration::from_nanos(100)));
        for seq in 1..=4u64 {
            let (entry, expires) =
                crate::mem::entry_with(Subject::new("t"), 10, false, seq as i64, ttl, ());
            ix.insert(seq, entry, expires);
        }
        assert_eq!(ix.next_expiry(), Some(101));
        ix.remove(1);
        assert_eq!(ix.next_expiry(), Some(102));
        ix.purge("t", 3, 0);
        assert_eq!(ix.next_expiry(), Some(103));
        assert_eq!(ix.expire(103).len(), 1);
        assert_eq!(ix.next_expiry(), Some(104));
        ix.purge_all();
        assert_eq!(ix.next_expiry(), None);
        assert!(ix.expiries.is_empty() && ix.ttls.is_empty());
    }

    /// Counting from either end of the stream gives what a walk would.
    #[test]
    fn pending_for_every_subject_counts_from_the_nearer_end() {
        let mut ix: Index<()> = Index::new(Limits::default());
        for s in 1..=10 {
            ix.insert(s, e("x", 0), 0);
        }
        ix.remove(2);
        ix.remove(9);
        for start in 0..=12 {
            let walked = ix.iter_from(start.max(1)).count() as u64;
            assert_eq!(ix.num_pending(start, ">"), walked, "from {start}");
        }
        ix.compact(4);
        assert_eq!(ix.num_pending(1, ">"), 6);
        assert_eq!(ix.num_pending(5, ">"), 5);
    }

    #[test]
    fn purge_compact_deleted() {
        let mut ix: Index<()> = Index::new(Limits::default());
        for s in 1..=10 {
            ix.insert(s, e(if s % 2 == 0 { "even" } else { "odd" }, 0), 0);
        }
        ix.remove(5);
        assert_eq!(ix.deleted(), vec![5]);
        assert_eq!(ix.purge("even", 0, 2).len(), 3);
        assert_eq!(ix.next_match(1, "even"), Some(8));
        assert_eq!(ix.compact(8).len(), 3);
        assert_eq!(ix.first_seq(), 8);
        ix.purge_all();
        assert_eq!(ix.first_seq(), 11);
        ix.compact(20);
        assert_eq!((ix.first_seq(), ix.last_seq()), (20, 19));
    }

    #[test]
    fn messages_with_headers_since_a_time() {
        let mut ix: Index<()> = Index::new(Limits::default());
        for s in 1..=6u64 {
            let entry = Entry::new(Subject::new("a"), s as i64 * 10, 10, s % 2 == 0, false, ());
            ix.insert(s, entry, 0);
        }
        ix.remove(4);
        assert_eq!(ix.with_headers_since(0), vec![2, 6]);
        assert_eq!(ix.with_headers_since(30), vec![6]);
        assert!(ix.with_headers_since(61).is_empty());
    }

    #[test]
    fn pending_time_and_last_per_subject() {
        let mut ix: Index<()> = Index::new(Limits::default());
        // seq 1..=9 at ts 10, 20, ..., subjects a.1 a.2 b.1 repeating.
        let subjects = ["a.1", "a.2", "b.1"];
        for s in 1..=9u64 {
            ix.insert(s, e(subjects[(s as usize - 1) % 3], s as i64 * 10), 0);
        }
        ix.remove(4);
        ix.remove(5);
        assert_eq!(ix.num_pending(1, ">"), 7);
        assert_eq!(ix.num_pending(3, "a.*"), 2);
        assert_eq!(ix.num_pending(7, "a.1"), 1);
        assert_eq!(ix.num_pending(10, ">"), 0);
        assert_eq!(ix.seq_from_time(0), 1);
        assert_eq!(ix.seq_from_time(35), 6, "4 and 5 are deleted");
        assert_eq!(ix.seq_from_time(60), 6);
        assert_eq!(ix.seq_from_time(61), 7);
        assert_eq!(ix.seq_from_time(1000), 10);
        let all = vec![">".to_string()];
        assert_eq!(ix.multi_last(&all, 0, 1024), Some(vec![7, 8, 9]));
        assert_eq!(ix.multi_last(&all, 6, 1024), Some(vec![1, 2, 6]));
        assert_eq!(
            ix.multi_last(&["a.*".into(), "a.1".into()], 0, 1024),
            Some(vec![7, 8])
        );
        assert_eq!(ix.multi_last(&all, 0, 2), None);
    }
}

#[cfg(test)]
mod watched_tests {
    use super::*;

    fn insert(ix: &mut Index<()>, seq: u64, subject: &str) {
        let entry = Entry::new(Subject::new(subject), seq as i64, 1, false, false, ());
        ix.insert(seq, entry, 0);
    }

    /// What a walk of the messages says, to hold the watched answers against.
    fn walked(ix: &Index<()>, start: u64, filter: &str) -> (Option<u64>, u64, Option<u64>) {
        let matches: Vec<u64> = ix
            .iter_from(start.max(ix.base))
            .filter(|(_, e)| subject_matches(filter, &e.subject))
            .map(|(s, _)| s)
            .collect();
        let last = ix
            .iter_from(ix.base)
            .filter(|(_, e)| subject_matches(filter, &e.subject))
            .map(|(s, _)| s)
            .last();
        (matches.first().copied(), matches.len() as u64, last)
    }

    fn answers(ix: &Index<()>, start: u64, filter: &str) -> (Option<u64>, u64, Option<u64>) {
        (
            ix.next_match(start, filter),
            ix.num_pending(start, filter),
            ix.last_match(filter),
        )
    }

    fn check(ix: &Index<()>, filter: &str) {
        for start in 0..=ix.last_seq() + 1 {
            assert_eq!(
                answers(ix, start, filter),
                walked(ix, start, filter),
                "{filter} from {start}"
            );
        }
    }

    #[test]
    fn a_watched_filter_follows_appends_removals_and_purges() {
        let filter = "o.*.7";
        let mut ix: Index<()> = Index::new(Limits::default());
        for seq in 1..=200 {
            insert(&mut ix, seq, &format!("o.{}.{}", seq % 13, seq % 10));
        }
        ix.watch(filter);
        ix.watch(filter);
        assert!(ix.watched.get(filter).is_some());
        check(&ix, filter);
        // New subjects after the watch began, and messages on known ones.
        for seq in 201..=260 {
            insert(&mut ix, seq, &format!("o.new{}.{}", seq % 3, seq % 10));
        }
        check(&ix, filter);
        for seq in (1..=260).step_by(3) {
            ix.remove(seq);
        }
        check(&ix, filter);
        // A subject that emptied takes its slot back with another name.
        for seq in (1..=260).filter(|s| s % 10 == 7) {
            ix.remove(seq);
        }
        insert(&mut ix, 261, "o.back.7");
        insert(&mut ix, 262, "o.back.8");
        check(&ix, filter);
        assert_eq!(ix.next_match(0, filter), Some(261));
        ix.purge_all();
        check(&ix, filter);
        insert(&mut ix, 300, "o.x.7");
        check(&ix, filter);
        assert_eq!(ix.num_pending(0, filter), 1);
        // The first of two watchers leaving keeps it; the second ends it.
        ix.unwatch(filter);
        assert!(ix.watched.get(filter).is_some());
        ix.unwatch(filter);
        assert!(ix.watched.get(filter).is_none());
        insert(&mut ix, 301, "o.y.7");
        check(&ix, filter);
    }

    #[test]
    fn literal_and_match_all_filters_are_not_watched() {
        let mut ix: Index<()> = Index::new(Limits::default());
        insert(&mut ix, 1, "a");
        ix.watch("a");
        ix.watch(">");
        assert!(ix.watched.by_filter.is_empty());
        ix.unwatch("a");
        assert_eq!(ix.next_match(0, "a"), Some(1));
    }
}
