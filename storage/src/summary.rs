//! Segment summaries: what recovery needs of a sealed segment, without its payloads.
//!
//! A sealed segment only changes by an erase, and an erase also logs a tombstone, so
//! the list of its records (where each message lives, its sequence, time, TTL,
//! subject and sizes; its tombstones and compact markers) rebuilds the index exactly
//! as a scan of the segment would. The store writes that list beside the segment once
//! the segment is sealed and synced, and a restart reads it instead of the segment:
//! about 10 bytes per message instead of the message, so restarting a big stream
//! costs its summaries and the scan of the one active segment, not every record.
//!
//! Sans-I/O: [`SummaryBuilder`] takes records as they are appended (or recovered),
//! [`SummaryBuilder::finish`] gives the body, [`Summary::parse`] reads one back.
//! The store frames the body as a meta record (CRC32C, sealed when encrypted: the
//! subjects are in it).

use crate::subject::Subject;
use std::collections::HashMap;

const MAGIC: &[u8; 8] = b"STRAITSM";
const VERSION: u8 = 1;

/// An erased message: only its sequence and time are left.
const KIND_ERASED: u8 = 0;
const KIND_MSG: u8 = 1;
const KIND_TOMBSTONES: u8 = 2;
const KIND_COMPACT: u8 = 3;
const KIND_MASK: u8 = 0x03;
/// The record starts where the previous one ended.
const CONTIGUOUS: u8 = 0x04;
/// The message's sequence follows the previous message's.
const NEXT_SEQ: u8 = 0x08;
const HAS_TTL: u8 = 0x10;
const HAS_HEADERS: u8 = 0x20;
/// The message's padded length is the previous message's.
const SAME_LEN: u8 = 0x40;
/// The message's payload length is the previous message's.
const SAME_PAYLOAD: u8 = 0x80;

/// Why a summary cannot be used (the store then scans the segment).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("segment summary unusable: {0}")]
pub struct SummaryError(&'static str);

/// The segment a summary describes: its header's facts and where its data ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentFacts {
    pub id: u64,
    /// The stream's next sequence when the segment was started.
    pub next_seq: u64,
    pub last_ts: i64,
    /// End of the last record.
    pub end: u64,
}

/// One record of a summarised segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SummaryRecord {
    Msg {
        seq: u64,
        off: u64,
        /// Padded record length.
        len: u32,
        ts: i64,
        /// As in the message record: 0 none, -1 never, >0 nanoseconds.
        ttl: i64,
        /// Index into [`Summary::subjects`].
        subject: u32,
        hdr_len: u32,
        payload_len: u32,
    },
    Tombstones(Vec<(u64, u64)>),
    Compact {
        first: u64,
        last_seq: u64,
        last_ts: i64,
    },
    Erased {
        seq: u64,
        ts: i64,
    },
}

/// Collects one segment's records as they are written.
#[derive(Debug)]
pub struct SummaryBuilder {
    id: u64,
    next_seq: u64,
    last_ts: i64,
    /// Subjects by the address of their interned string; the `Subject` held in
    /// `subjects` keeps the address from being reused.
    subject_ids: HashMap<usize, u32, ahash::RandomState>,
    subjects: Vec<Subject>,
    records: Vec<u8>,
    count: u64,
    prev_end: u64,
    prev_seq: u64,
    prev_ts: i64,
    prev_len: u32,
    prev_payload: usize,
}

impl SummaryBuilder {
    /// A segment whose header says `next_seq` and `last_ts` (records start after
    /// the header page).
    pub fn new(id: u64, next_seq: u64, last_ts: i64) -> SummaryBuilder {
        SummaryBuilder {
            id,
            next_seq,
            last_ts,
            subject_ids: HashMap::default(),
            subjects: Vec::new(),
            records: Vec::new(),
            count: 0,
            prev_end: crate::record::PAGE as u64,
            prev_seq: next_seq.saturating_sub(1),
            prev_ts: last_ts,
            prev_len: 0,
            prev_payload: 0,
        }
    }

    fn tag(&mut self, kind: u8, off: u64, flags: u8) {
        let contiguous = off == self.prev_end;
        self.records
            .push(kind | flags | if contiguous { CONTIGUOUS } else { 0 });
        if !contiguous {
            put_varint(&mut self.records, off);
        }
        self.count += 1;
    }

    /// A message record at `off` (padded length `len`).
    #[allow(clippy::too_many_arguments)]
    pub fn msg(
        &mut self,
        seq: u64,
        off: u64,
        len: u32,
        ts: i64,
        ttl: i64,
        subject: &Subject,
        hdr_len: usize,
        payload_len: usize,
    ) {
        let next = seq == self.prev_seq.wrapping_add(1);
        let same_len = len == self.prev_len;
        let same_payload = payload_len == self.prev_payload;
        let flags = if next { NEXT_SEQ } else { 0 }
            | if ttl != 0 { HAS_TTL } else { 0 }
            | if hdr_len > 0 { HAS_HEADERS } else { 0 }
            | if same_len { SAME_LEN } else { 0 }
            | if same_payload { SAME_PAYLOAD } else { 0 };
        self.tag(KIND_MSG, off, flags);
        let out = &mut self.records;
        if !next {
            put_varint(out, seq);
        }
        if !same_len {
            put_varint(out, u64::from(len));
        }
        put_varint(out, zigzag(ts.wrapping_sub(self.prev_ts)));
        if ttl != 0 {
            put_varint(out, zigzag(ttl));
        }
        let key = subject.addr();
        let id = match self.subject_ids.get(&key) {
            Some(&id) => id,
            None => {
                let id = self.subjects.len() as u32;
                self.subjects.push(subject.clone());
                self.subject_ids.insert(key, id);
                id
            }
        };
        put_varint(out, u64::from(id));
        if hdr_len > 0 {
            put_varint(out, hdr_len as u64);
        }
        if !same_payload {
            put_varint(out, payload_len as u64);
        }
        self.prev_seq = seq;
        self.prev_ts = ts;
        self.prev_len = len;
        self.prev_payload = payload_len;
        self.prev_end = off + u64::from(len);
    }

    /// A tombstones record at `off` of length `len`.
    pub fn tombstones(&mut self, off: u64, len: u32, ranges: &[(u64, u64)]) {
        self.tag(KIND_TOMBSTONES, off, 0);
        let out = &mut self.records;
        put_varint(out, u64::from(len));
        put_varint(out, ranges.len() as u64);
        for &(a, b) in ranges {
            put_varint(out, a);
            put_varint(out, b.saturating_sub(a));
        }
        self.prev_end = off + u64::from(len);
    }

    /// A compact marker at `off` of length `len`.
    pub fn compact(&mut self, off: u64, len: u32, first: u64, last_seq: u64, last_ts: i64) {
        self.tag(KIND_COMPACT, off, 0);
        let out = &mut self.records;
        put_varint(out, u64::from(len));
        put_varint(out, first);
        put_varint(out, last_seq);
        put_varint(out, zigzag(last_ts));
        self.prev_end = off + u64::from(len);
    }

    /// An erased message record at `off` of length `len`.
    pub fn erased(&mut self, off: u64, len: u32, seq: u64, ts: i64) {
        self.tag(KIND_ERASED, off, 0);
        let out = &mut self.records;
        put_varint(out, u64::from(len));
        put_varint(out, seq);
        put_varint(out, zigzag(ts));
        self.prev_end = off + u64::from(len);
    }

    /// Bytes the summary takes so far (about).
    pub fn len(&self) -> usize {
        self.records.len() + self.subjects.iter().map(|s| s.len() + 2).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The summary body of the segment, whose data ends at `end`.
    pub fn finish(&self, end: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len() + 64);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.next_seq.to_le_bytes());
        out.extend_from_slice(&self.last_ts.to_le_bytes());
        out.extend_from_slice(&end.to_le_bytes());
        put_varint(&mut out, self.subjects.len() as u64);
        for s in &self.subjects {
            put_varint(&mut out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        put_varint(&mut out, self.count);
        out.extend_from_slice(&self.records);
        out
    }
}

/// A checked summary. Its records are decoded as they are visited
/// ([`Summary::for_each`]): a segment's worth of them as one `Vec` cost more in
/// allocation, page faults and unmapping than the replay itself.
#[derive(Debug)]
pub struct Summary<'a> {
    pub facts: SegmentFacts,
    pub subjects: Vec<String>,
    count: usize,
    records: &'a [u8],
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], SummaryError> {
        if self.buf.len() < n {
            return Err(SummaryError("cut short"));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    fn u64_le(&mut self) -> Result<u64, SummaryError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn varint(&mut self) -> Result<u64, SummaryError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.take(1)?.first().ok_or(SummaryError("cut short"))?;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(SummaryError("varint too long"))
    }

    fn u32_varint(&mut self) -> Result<u32, SummaryError> {
        u32::try_from(self.varint()?).map_err(|_| SummaryError("value out of range"))
    }
}

impl<'a> Summary<'a> {
    /// Checks the whole summary; a summary that parses replays without error.
    pub fn parse(body: &'a [u8]) -> Result<Summary<'a>, SummaryError> {
        let summary = Summary::open(body)?;
        summary.for_each(|_| {})?;
        Ok(summary)
    }

    /// Reads the header and the subjects; the records are checked as
    /// [`Summary::for_each`] visits them, so a replay may stop part way (recovery
    /// reads each summary once, and starts over without it when that happens).
    pub fn open(body: &'a [u8]) -> Result<Summary<'a>, SummaryError> {
        let mut r = Reader { buf: body };
        if r.take(8)? != MAGIC {
            return Err(SummaryError("not a summary"));
        }
        if r.take(1)? != [VERSION] {
            return Err(SummaryError("unknown version"));
        }
        let facts = SegmentFacts {
            id: r.u64_le()?,
            next_seq: r.u64_le()?,
            last_ts: r.u64_le()? as i64,
            end: r.u64_le()?,
        };
        let n_subjects = r.varint()? as usize;
        // Every subject takes at least two bytes: a bound before allocating.
        if n_subjects > r.buf.len() / 2 {
            return Err(SummaryError("subject count out of range"));
        }
        let mut subjects = Vec::with_capacity(n_subjects);
        for _ in 0..n_subjects {
            let n = r.varint()? as usize;
            let s =
                std::str::from_utf8(r.take(n)?).map_err(|_| SummaryError("subject not UTF-8"))?;
            subjects.push(s.to_string());
        }
        let count = r.varint()? as usize;
        if count > r.buf.len() {
            return Err(SummaryError("record count out of range"));
        }
        Ok(Summary {
            facts,
            subjects,
            count,
            records: r.buf,
        })
    }

    /// How many records there are.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Visits the records in log order.
    pub fn for_each(&self, mut visit: impl FnMut(SummaryRecord)) -> Result<(), SummaryError> {
        let facts = self.facts;
        let subjects = self.subjects.len();
        let count = self.count;
        let mut r = Reader { buf: self.records };
        let mut prev_end = crate::record::PAGE as u64;
        let mut prev_seq = facts.next_seq.saturating_sub(1);
        let mut prev_ts = facts.last_ts;
        let (mut prev_len, mut prev_payload) = (0u32, 0u32);
        for _ in 0..count {
            let tag = *r.take(1)?.first().ok_or(SummaryError("cut short"))?;
            let off = if tag & CONTIGUOUS != 0 {
                prev_end
            } else {
                r.varint()?
            };
            let record = match tag & KIND_MASK {
                KIND_MSG => {
                    let seq = if tag & NEXT_SEQ != 0 {
                        prev_seq.wrapping_add(1)
                    } else {
                        r.varint()?
                    };
                    let len = if tag & SAME_LEN != 0 {
                        prev_len
                    } else {
                        r.u32_varint()?
                    };
                    let ts = prev_ts.wrapping_add(unzigzag(r.varint()?));
                    let ttl = if tag & HAS_TTL != 0 {
                        unzigzag(r.varint()?)
                    } else {
                        0
                    };
                    let subject = r.u32_varint()?;
                    if subject as usize >= subjects {
                        return Err(SummaryError("subject out of range"));
                    }
                    let hdr_len = if tag & HAS_HEADERS != 0 {
                        r.u32_varint()?
                    } else {
                        0
                    };
                    let payload_len = if tag & SAME_PAYLOAD != 0 {
                        prev_payload
                    } else {
                        r.u32_varint()?
                    };
                    prev_seq = seq;
                    prev_ts = ts;
                    prev_len = len;
                    prev_payload = payload_len;
                    prev_end = off + u64::from(len);
                    SummaryRecord::Msg {
                        seq,
                        off,
                        len,
                        ts,
                        ttl,
                        subject,
                        hdr_len,
                        payload_len,
                    }
                }
                KIND_TOMBSTONES => {
                    let len = r.u32_varint()?;
                    let n = r.varint()? as usize;
                    if n > r.buf.len() {
                        return Err(SummaryError("range count out of range"));
                    }
                    let mut ranges = Vec::with_capacity(n);
                    for _ in 0..n {
                        let a = r.varint()?;
                        let span = r.varint()?;
                        ranges.push((a, a.saturating_add(span)));
                    }
                    prev_end = off + u64::from(len);
                    SummaryRecord::Tombstones(ranges)
                }
                KIND_COMPACT => {
                    let len = r.u32_varint()?;
                    let first = r.varint()?;
                    let last_seq = r.varint()?;
                    let last_ts = unzigzag(r.varint()?);
                    prev_end = off + u64::from(len);
                    SummaryRecord::Compact {
                        first,
                        last_seq,
                        last_ts,
                    }
                }
                KIND_ERASED => {
                    let len = r.u32_varint()?;
                    let seq = r.varint()?;
                    let ts = unzigzag(r.varint()?);
                    prev_end = off + u64::from(len);
                    SummaryRecord::Erased { seq, ts }
                }
                _ => return Err(SummaryError("unknown record kind")),
            };
            if prev_end > facts.end {
                return Err(SummaryError("record past the segment's end"));
            }
            visit(record);
        }
        if !r.buf.is_empty() {
            return Err(SummaryError("trailing bytes"));
        }
        Ok(())
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::PAGE;

    #[test]
    fn records_round_trip_compactly() {
        let page = PAGE as u64;
        let mut b = SummaryBuilder::new(7, 101, 5_000);
        let a = Subject::new("orders.new");
        let c = Subject::new("orders.paid");
        b.msg(101, page, 176, 6_000, 0, &a, 0, 128);
        b.msg(102, page + 176, 176, 6_900, 0, &c, 0, 128);
        b.msg(103, page + 352, 200, 7_000, -1, &a, 22, 128);
        b.tombstones(page + 552, 40, &[(101, 101), (5, 9)]);
        // A gap (a record the summary does not need) and a jump in sequence.
        b.msg(110, page + 600, 176, 6_500, 3_000_000_000, &c, 0, 128);
        b.compact(page + 776, 48, 103, 110, 6_500);
        b.erased(page + 824, 176, 111, 6_600);
        let body = b.finish(page + 1000);
        let s = Summary::parse(&body).unwrap();
        assert_eq!(
            s.facts,
            SegmentFacts {
                id: 7,
                next_seq: 101,
                last_ts: 5_000,
                end: page + 1000
            }
        );
        assert_eq!(s.subjects, vec!["orders.new", "orders.paid"]);
        assert_eq!(s.len(), 7);
        let mut records = Vec::new();
        s.for_each(|r| records.push(r)).unwrap();
        assert_eq!(
            records[6],
            SummaryRecord::Erased {
                seq: 111,
                ts: 6_600
            }
        );
        assert_eq!(
            records[2],
            SummaryRecord::Msg {
                seq: 103,
                off: page + 352,
                len: 200,
                ts: 7_000,
                ttl: -1,
                subject: 0,
                hdr_len: 22,
                payload_len: 128
            }
        );
        assert_eq!(
            records[3],
            SummaryRecord::Tombstones(vec![(101, 101), (5, 9)])
        );
        assert_eq!(
            records[4],
            SummaryRecord::Msg {
                seq: 110,
                off: page + 600,
                len: 176,
                ts: 6_500,
                ttl: 3_000_000_000,
                subject: 1,
                hdr_len: 0,
                payload_len: 128
            }
        );
        assert_eq!(
            records[5],
            SummaryRecord::Compact {
                first: 103,
                last_seq: 110,
                last_ts: 6_500
            }
        );
        // A plain message costs a handful of bytes.
        let mut many = SummaryBuilder::new(1, 1, 0);
        let mut off = page;
        for seq in 1..=10_000u64 {
            many.msg(seq, off, 176, seq as i64 * 20_000, 0, &a, 0, 128);
            off += 176;
        }
        assert!(many.finish(off).len() < 10_000 * 6, "{}", many.len());
    }

    #[test]
    fn damaged_summaries_are_refused() {
        let page = PAGE as u64;
        let mut b = SummaryBuilder::new(1, 1, 0);
        let a = Subject::new("a");
        b.msg(1, page, 64, 1, 0, &a, 0, 1);
        let body = b.finish(page + 64);
        assert!(Summary::parse(&body).is_ok());
        for cut in 0..body.len() {
            assert!(Summary::parse(&body[..cut]).is_err(), "cut at {cut}");
        }
        // A record past the end the summary claims.
        let short = b.finish(page + 8);
        assert!(Summary::parse(&short).is_err());
        let mut trailing = body.clone();
        trailing.push(0);
        assert!(Summary::parse(&trailing).is_err());
    }
}
