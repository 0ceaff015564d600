//! The file store: per stream a directory of pre-allocated log segments written with
//! O_DIRECT through glommio DMA files, with group commit, recovery and encryption.
//!
//! Layout of a stream directory:
//! - `probe`: a non-empty 4 KiB file opened first (glommio guardrail, see DESIGN.md §3);
//! - `meta`: one record (see [`crate::record`]) holding a key check, encrypted when the
//!   store is;
//! - `NNNNNNNNNNNNNNNNNNNN.seg`: log segments; page 0 is the segment header, records
//!   follow from offset 4096;
//! - `NNNNNNNNNNNNNNNNNNNN.sum`: the summary of a sealed segment (see
//!   [`crate::summary`]), which a restart reads instead of the segment.
//!
//! Writing: records are encoded into the active segment's in-memory tail (`buf`, which
//! starts at the last 4 KiB boundary that is on disk). A flush writes `buf` padded to
//! whole pages at that boundary — so only the tail page is ever rewritten — then
//! fdatasyncs. One flush runs at a time (the I/O lock), which orders writes that
//! overlap the same page; every append that arrives while one runs rides the next
//! (group commit).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use glommio::io::{DmaFile, OpenOptions, ReadResult};

use crate::config::{FileStoreConfig, Limits, SyncPolicy};
use crate::error::{Result, StoreError};
use crate::index::{Accounting, Index, Removed};
use crate::mem::{entry_with, new_entry};
use crate::record::{self, DecodeError, Keys, Record, SegmentHeader, PAGE};
use crate::subject::Subject;
use crate::summary::{Summary, SummaryBuilder, SummaryRecord};
use crate::{FilteredState, MsgTtl, Purge, Store, StoredMessage, StreamState};

const META_CHECK: &[u8] = b"strait-storage key check v1";
/// With `SyncPolicy::Interval`, an appender flushes itself once this much is buffered.
const MAX_UNFLUSHED: usize = 8 << 20;
/// Reads fetch at least this much around a record, for sequential consumers.
const READ_WINDOW: u64 = 64 << 10;
/// A read that continues where the last one ended doubles the window, up to
/// this (as the kernel's readahead does): a consumer reading a big stream from
/// disk pays one I/O per megabyte, while random reads (a KV get) stay small.
const MAX_READ_WINDOW: u64 = 1 << 20;
/// Recovery reads segments in chunks of this size.
const SCAN_CHUNK: usize = 4 << 20;
/// How long a sealed segment must have been left alone before its summary is
/// written. Summaries are trusted only when strictly newer than their segment, and
/// file times tick coarsely (milliseconds): the wait makes a summary's time fall in
/// a later tick than the segment's last write, so any later write to the segment (an
/// erase, a hand edit) is seen as one and the segment is scanned instead.
const SUMMARY_SETTLE: Duration = Duration::from_millis(25);

fn align_down(v: u64) -> u64 {
    v & !(PAGE as u64 - 1)
}
fn align_up(v: u64) -> u64 {
    (v + PAGE as u64 - 1) & !(PAGE as u64 - 1)
}
/// A totally ordered log position: segment id and offset.
fn pos(seg: u64, off: u64) -> u64 {
    (seg << 40) | off
}

/// Where a message record lives. Every message has one in the index, so it is
/// kept small: offsets fit 32 bits because segments are capped at
/// [`MAX_SEGMENT_SIZE`] (plus one oversized record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    /// Segment ids count up from 1: 2^32 segments are exabytes.
    seg: u32,
    off: u32,
    /// Padded record length.
    pub len: u32,
}

impl Loc {
    fn new(seg: u64, off: u64, len: u32) -> Loc {
        debug_assert!(off <= u64::from(u32::MAX));
        debug_assert!(seg <= u64::from(u32::MAX));
        Loc {
            seg: seg as u32,
            off: off as u32,
            len,
        }
    }

    pub fn seg(&self) -> u64 {
        u64::from(self.seg)
    }

    pub fn off(&self) -> u64 {
        u64::from(self.off)
    }
}

/// The largest segment (a configured size above is lowered to it).
pub const MAX_SEGMENT_SIZE: u64 = 2 << 30;

/// Damage found at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    pub stream: String,
    pub segment: u64,
    /// Byte offset of the damaged region in the segment file.
    pub offset: u64,
    /// Length of the skipped region.
    pub len: u64,
    /// The last good sequence before the damage (0 if none).
    pub after_seq: u64,
    /// The first good message sequence after it, if any.
    pub next_seq: Option<u64>,
    pub reason: String,
}

/// What recovery found and did at open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    /// Segments read from their summaries instead of scanned.
    pub summarized: usize,
    pub records: u64,
    pub bytes_scanned: u64,
    /// A torn write at the end of the last segment, `(segment, offset, len)`; it was
    /// zeroed on disk.
    pub torn_tail: Option<(u64, u64, u64)>,
    /// Damaged regions that were skipped.
    pub corruptions: Vec<Corruption>,
    pub elapsed: Duration,
}

struct Segment {
    file: Option<Rc<DmaFile>>,
    /// Live messages in it.
    live: u64,
    /// Lowest message sequence recorded in it.
    first_msg_seq: Option<u64>,
    /// Highest sequence its tombstones and compact markers refer to.
    tomb_max_ref: u64,
    /// Bytes of data (end of the last record).
    end: u64,
    /// Offset of `buf[0]`: a page boundary at or below `synced`.
    buf_base: u64,
    /// `[buf_base, end)`; empty for sealed segments.
    buf: Vec<u8>,
    /// Everything below is written and synced.
    synced: u64,
    /// Rewrite `buf` even if nothing was appended (an erase patched it).
    force: bool,
    /// Bytes of the file allocated so far. Allocation grows ahead of the writes, in
    /// doublings up to the segment size, so appends rarely extend the file (which an
    /// fdatasync would have to journal) and a small stream does not hold a whole
    /// segment of disk: a thousand streams of a thousand messages would otherwise
    /// reserve 64 GB.
    allocated: u64,
    /// The records written so far, until the sealed segment's summary is written
    /// (`None` once it is, or when the segment must be scanned: it was damaged).
    summary: Option<SummaryBuilder>,
    /// When the segment was found sealed and synced (for [`SUMMARY_SETTLE`]).
    settled_since: Option<Instant>,
}

impl Segment {
    fn pending(&self) -> bool {
        self.end > self.synced || self.force
    }
}

/// What `cached` found for a record.
enum Cached {
    Hit(Vec<u8>),
    Miss {
        file: Rc<DmaFile>,
        written: u64,
        window: u64,
    },
}

struct ReadCache {
    seg: u64,
    start: u64,
    valid_end: u64,
    data: ReadResult,
    /// The window this read asked for.
    window: u64,
}

struct State {
    index: Index<Loc>,
    segs: BTreeMap<u64, Segment>,
    active: u64,
    synced_pos: u64,
    io_busy: bool,
    io_gen: u64,
    waiters: Vec<Waker>,
    closed: bool,
    failed: Option<String>,
    cache: Option<ReadCache>,
    /// fdatasyncs issued by flushes (for group-commit statistics).
    flushes: u64,
    /// Reads of segment files (the read cache's misses).
    segment_reads: u64,
    /// Some sealed segment may still want its summary written.
    summaries_due: bool,
}

struct Inner {
    cfg: FileStoreConfig,
    keys: Option<Keys>,
    st: RefCell<State>,
    /// One read of a segment at a time (see `read_record`).
    read_gate: glommio::sync::Semaphore,
    report: RecoveryReport,
    _probe: DmaFile,
}

/// A stream store on disk. Cloning shares the store.
#[derive(Clone)]
pub struct FileStore {
    inner: Rc<Inner>,
}

fn seg_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

fn sum_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.sum"))
}

fn parse_sum_name(name: &str) -> Option<u64> {
    parse_seg_name(&format!("{}.seg", name.strip_suffix(".sum")?))
}

fn parse_seg_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".seg")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // An index entry keeps the id in 32 bits: a larger one is no segment of ours.
    stem.parse::<u32>().ok().map(u64::from)
}

async fn open_dma(path: &Path) -> std::io::Result<DmaFile> {
    // Read + write: DmaFile::create opens write-only and later reads fail with EBADF.
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .dma_open(path)
        .await
        .map_err(std::io::Error::from)
}

struct GenWait<'a> {
    inner: &'a Inner,
    gen: u64,
}

impl Future for GenWait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.inner.st.borrow_mut();
        if st.io_gen != self.gen {
            Poll::Ready(())
        } else {
            st.waiters.push(cx.waker().clone());
            Poll::Pending
        }
    }
}

/// Exclusive right to write to the store's files. Dropping it (also when the holder's
/// future is cancelled) releases it and wakes the waiters.
struct IoGuard<'a> {
    inner: &'a Inner,
}

impl Drop for IoGuard<'_> {
    fn drop(&mut self) {
        let waiters = {
            let mut st = self.inner.st.borrow_mut();
            st.io_busy = false;
            st.io_gen += 1;
            std::mem::take(&mut st.waiters)
        };
        for w in waiters {
            w.wake();
        }
    }
}

/// Collapses sorted sequences into inclusive ranges.
fn ranges(seqs: &mut [u64]) -> Vec<(u64, u64)> {
    seqs.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &s in seqs.iter() {
        match out.last_mut() {
            Some((_, b)) if *b + 1 == s => *b = s,
            _ => out.push((s, s)),
        }
    }
    out
}

impl State {
    fn usable(&self) -> Result<()> {
        if self.closed || self.failed.is_some() {
            return Err(StoreError::Closed);
        }
        Ok(())
    }

    fn end_pos(&self) -> u64 {
        let end = self.segs.get(&self.active).map(|s| s.end).unwrap_or(0);
        pos(self.active, end)
    }

    fn pending_bytes(&self) -> usize {
        self.segs
            .values()
            .map(|s| (s.end - s.synced) as usize)
            .sum()
    }

    /// Room for `len` bytes in the active segment, rolling to a new one if needed.
    fn reserve(&mut self, len: usize, segment_size: u64) -> (u64, u64) {
        let need_roll = match self.segs.get(&self.active) {
            Some(s) => s.end > PAGE as u64 && s.end + len as u64 > segment_size,
            None => true,
        };
        if need_roll {
            self.roll(self.active + 1);
        }
        let active = self.active;
        let end = self.segs.get(&active).map(|s| s.end).unwrap_or(0);
        (active, end)
    }

    /// Starts segment `id` (in memory; its file is created by the first flush).
    fn roll(&mut self, id: u64) {
        self.summaries_due = true;
        {
            let hdr = SegmentHeader {
                id,
                next_seq: self.index.next_seq(),
                last_ts: self.index.last_ts(),
            };
            let buf = hdr.encode();
            self.segs.insert(
                id,
                Segment {
                    file: None,
                    live: 0,
                    first_msg_seq: None,
                    tomb_max_ref: 0,
                    end: buf.len() as u64,
                    buf_base: 0,
                    buf,
                    synced: 0,
                    force: false,
                    allocated: 0,
                    summary: Some(SummaryBuilder::new(id, hdr.next_seq, hdr.last_ts)),
                    settled_since: None,
                },
            );
            self.active = id;
        }
    }

    fn push_bytes(&mut self, bytes: &[u8]) {
        if let Some(s) = self.segs.get_mut(&self.active) {
            s.buf.extend_from_slice(bytes);
            s.end += bytes.len() as u64;
        }
    }

    /// Accounts removed messages against their segments and logs their removal.
    fn persist_removals(&mut self, mut removed: Removed<Loc>, keys: Option<&Keys>, seg_size: u64) {
        if removed.is_empty() {
            return;
        }
        let mut seqs = Vec::with_capacity(removed.len());
        for (seq, e) in removed.drain(..) {
            if let Some(s) = self.segs.get_mut(&e.loc.seg()) {
                s.live = s.live.saturating_sub(1);
            }
            seqs.push(seq);
        }
        let max = seqs.iter().copied().max().unwrap_or(0);
        let first = self.index.first_seq();
        let mut out = Vec::new();
        let (last_seq, last_ts) = (self.index.last_seq(), self.index.last_ts());
        let tombstones = if max < first {
            // A prefix is gone: one marker however many there were.
            record::encode_compact(&mut out, keys, first, last_seq, last_ts);
            None
        } else {
            let r = ranges(&mut seqs);
            record::encode_tombstones(&mut out, keys, &r);
            Some(r)
        };
        let (seg, off) = self.reserve(out.len(), seg_size);
        self.push_bytes(&out);
        let refmax = max.max(first.saturating_sub(1));
        if let Some(s) = self.segs.get_mut(&seg) {
            s.tomb_max_ref = s.tomb_max_ref.max(refmax);
            if let Some(b) = s.summary.as_mut() {
                let len = out.len() as u32;
                match &tombstones {
                    Some(r) => b.tombstones(off, len, r),
                    None => b.compact(off, len, first, last_seq, last_ts),
                }
            }
        }
        if self
            .cache
            .as_ref()
            .is_some_and(|c| !self.segs.contains_key(&c.seg))
        {
            self.cache = None;
        }
    }

    /// Sealed, synced segments that hold no live message and whose tombstones refer only
    /// to records that no longer exist on disk.
    fn dead_segments(&self) -> Vec<u64> {
        let mut dead = Vec::new();
        // Every commit asks: answer the common "none" without allocating.
        let candidate = self
            .segs
            .iter()
            .any(|(&id, s)| id != self.active && s.live == 0 && !s.pending());
        if !candidate {
            return dead;
        }
        let ids: Vec<u64> = self.segs.keys().copied().collect();
        for &id in &ids {
            if id == self.active {
                continue;
            }
            let Some(s) = self.segs.get(&id) else {
                continue;
            };
            if s.live > 0 || s.pending() {
                continue;
            }
            let oldest_other = ids
                .iter()
                .filter(|&&o| o != id && !dead.contains(&o))
                .filter_map(|o| self.segs.get(o).and_then(|s| s.first_msg_seq))
                .min()
                .unwrap_or(u64::MAX);
            if s.tomb_max_ref < oldest_other {
                dead.push(id);
            }
        }
        dead
    }
}

impl FileStore {
    /// Opens (creating if needed) the store in `cfg.dir`, recovering what is there.
    /// Must run inside a glommio executor.
    pub async fn open(cfg: FileStoreConfig) -> Result<FileStore> {
        let t0 = Instant::now();
        let name = cfg.name.clone();
        let mut cfg = cfg;
        cfg.segment_size = cfg
            .segment_size
            .clamp(64 << 10, MAX_SEGMENT_SIZE)
            .div_ceil(64 << 10)
            * (64 << 10);
        std::fs::create_dir_all(&cfg.dir).map_err(|e| StoreError::io(&name, "create dir", e))?;
        let probe = open_probe(&cfg.dir, &name).await?;
        let keys = match &cfg.encryption {
            Some(enc) => {
                if enc.key.is_empty() {
                    return Err(StoreError::InvalidKey("empty key".into()));
                }
                Some(Keys::derive(enc.cipher, &enc.key, &name))
            }
            None => None,
        };
        check_meta(&cfg.dir, &name, keys.as_ref())?;

        let mut ids: Vec<u64> = std::fs::read_dir(&cfg.dir)
            .map_err(|e| StoreError::io(&name, "list dir", e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(parse_seg_name))
            .collect();
        ids.sort_unstable();

        let mut st = State {
            index: Index::with_accounting(cfg.limits.clone(), Accounting::File),
            segs: BTreeMap::new(),
            active: 0,
            synced_pos: 0,
            io_busy: false,
            io_gen: 0,
            waiters: Vec::new(),
            closed: false,
            failed: None,
            cache: None,
            flushes: 0,
            segment_reads: 0,
            summaries_due: true,
        };
        let mut report = RecoveryReport {
            segments: ids.len(),
            ..Default::default()
        };
        st.index
            .reserve(expected_records(&cfg.dir, &ids, &name).await);
        let mut last_tail: Option<Vec<u8>> = None;
        let mut scratch = Vec::new();
        remove_stray_summaries(&cfg.dir, &ids);
        for (i, &id) in ids.iter().enumerate() {
            let is_last = i + 1 == ids.len();
            if !is_last {
                match recover_from_summary(&cfg, keys.as_ref(), id, &mut st, &mut report).await {
                    Some(SummaryReplay::Applied) => continue,
                    Some(SummaryReplay::Broken) => {
                        // Each retry has one summary fewer: this ends.
                        std::fs::remove_file(sum_path(&cfg.dir, id))
                            .map_err(|e| StoreError::io(&name, "remove summary", e))?;
                        drop((st, probe));
                        return Box::pin(FileStore::open(cfg)).await;
                    }
                    None => {}
                }
            }
            let tail = recover_segment(
                &cfg,
                keys.as_ref(),
                id,
                is_last,
                &mut st,
                &mut report,
                &mut scratch,
            )
            .await?;
            if is_last {
                last_tail = tail;
            }
        }
        // The last segment keeps taking appends if it is healthy and has room.
        if let (Some(&id), Some(tail)) = (ids.last(), last_tail) {
            if let Some(s) = st.segs.get_mut(&id) {
                if s.end < cfg.segment_size {
                    s.buf_base = align_down(s.end);
                    s.buf = tail;
                    st.active = id;
                    st.synced_pos = pos(id, s.end);
                    // It takes appends again: a summary from when it was sealed
                    // would soon be stale.
                    let _ = std::fs::remove_file(sum_path(&cfg.dir, id));
                }
            }
        }
        if st.active == 0 {
            // No healthy segment to continue: appends start a fresh one.
            let last = ids.last().copied().unwrap_or(0);
            st.synced_pos = pos(last, (1 << 40) - 1);
            st.roll(last + 1);
        }
        let removed = st.index.enforce_limits(None);
        let had_removals = !removed.is_empty();
        st.persist_removals(removed, keys.as_ref(), cfg.segment_size);
        report.elapsed = t0.elapsed();
        if !report.corruptions.is_empty() || report.torn_tail.is_some() {
            tracing::warn!(stream = %name, corruptions = report.corruptions.len(), torn_tail = ?report.torn_tail, "store recovered with damage");
        }
        tracing::debug!(stream = %name, msgs = st.index.msgs(), elapsed = ?report.elapsed, "file store opened");
        let sync = cfg.sync;
        let fs = FileStore {
            inner: Rc::new(Inner {
                cfg,
                keys,
                st: RefCell::new(st),
                read_gate: glommio::sync::Semaphore::new(1),
                report,
                _probe: probe,
            }),
        };
        if had_removals {
            fs.sync().await?;
        }
        fs.remove_dead_segments().await;
        fs.write_summaries();
        if let SyncPolicy::Interval(every) = sync {
            let weak = Rc::downgrade(&fs.inner);
            glommio::spawn_local(interval_flusher(weak, every)).detach();
        }
        Ok(fs)
    }

    /// What recovery found at open.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.report
    }

    /// The stream's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.cfg.dir
    }

    /// How many write + fdatasync rounds flushes have done since open; appends divided
    /// by this is the average group-commit batch.
    pub fn flush_count(&self) -> u64 {
        self.inner.st.borrow().flushes
    }

    /// How many reads of segment files loads have done since open (the read
    /// cache's misses).
    pub fn segment_reads(&self) -> u64 {
        self.inner.st.borrow().segment_reads
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.inner.st.borrow().segs.len()
    }

    fn name(&self) -> &str {
        &self.inner.cfg.name
    }

    async fn lock_io(&self) -> IoGuard<'_> {
        loop {
            let gen = {
                let mut st = self.inner.st.borrow_mut();
                if !st.io_busy {
                    st.io_busy = true;
                    return IoGuard { inner: &self.inner };
                }
                st.io_gen
            };
            GenWait {
                inner: &self.inner,
                gen,
            }
            .await;
        }
    }

    fn fail(&self, e: &StoreError) {
        tracing::error!(stream = %self.name(), error = %e, "file store failed; fencing it off");
        self.inner.st.borrow_mut().failed = Some(e.to_string());
    }

    /// Waits until everything up to `target` is on stable storage, flushing as the
    /// leader when no flush is running.
    async fn flush_until(&self, target: u64) -> Result<()> {
        loop {
            // Re-check durability on every wake-up, not only once the lock is free:
            // a waiter whose record rode the last flush must not queue for the next.
            let gen = {
                let mut st = self.inner.st.borrow_mut();
                if st.synced_pos >= target {
                    return Ok(());
                }
                if st.failed.is_some() {
                    return Err(StoreError::Closed);
                }
                if st.io_busy {
                    Some(st.io_gen)
                } else {
                    st.io_busy = true;
                    None
                }
            };
            match gen {
                Some(gen) => {
                    GenWait {
                        inner: &self.inner,
                        gen,
                    }
                    .await
                }
                None => {
                    let _g = IoGuard { inner: &self.inner };
                    if let Err(e) = self.flush_pending().await {
                        self.fail(&e);
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Writes and syncs every pending segment, oldest first. Caller holds the I/O lock.
    async fn flush_pending(&self) -> Result<()> {
        // One pass over what is pending now; the leader then checks its own target and
        // hands over, so it is not kept flushing for later arrivals.
        let ids: Vec<u64> = {
            let st = self.inner.st.borrow();
            st.segs
                .iter()
                .filter(|(_, s)| s.pending())
                .map(|(&id, _)| id)
                .collect()
        };
        for id in ids {
            let file = match self.inner.st.borrow().segs.get(&id) {
                Some(s) => s.file.clone(),
                None => continue,
            };
            let file = match file {
                Some(f) => f,
                None => self.create_segment_file(id).await?,
            };
            self.allocate_ahead(id, &file).await;
            let (base, end, mut dbuf) = {
                let st = self.inner.st.borrow();
                let Some(s) = st.segs.get(&id) else { continue };
                let len = (align_up(s.end) - s.buf_base) as usize;
                let mut d = file.alloc_dma_buffer(len);
                let bytes = d.as_bytes_mut();
                bytes[..s.buf.len()].copy_from_slice(&s.buf);
                bytes[s.buf.len()..].fill(0);
                (s.buf_base, s.end, d)
            };
            let len = dbuf.len();
            let _ = &mut dbuf;
            let n = file
                .write_at(dbuf, base)
                .await
                .map_err(|e| StoreError::io(self.name(), "write segment", e))?;
            if n != len {
                return Err(StoreError::io(
                    self.name(),
                    "write segment",
                    std::io::Error::new(std::io::ErrorKind::WriteZero, "short write"),
                ));
            }
            file.fdatasync()
                .await
                .map_err(|e| StoreError::io(self.name(), "fdatasync", e))?;
            let mut st = self.inner.st.borrow_mut();
            st.flushes += 1;
            let active = st.active;
            if let Some(s) = st.segs.get_mut(&id) {
                s.synced = end;
                s.force = false;
                let new_base = align_down(end);
                let cut = (new_base - s.buf_base) as usize;
                s.buf.drain(..cut.min(s.buf.len()));
                s.buf_base = new_base;
                if id != active && s.synced == s.end {
                    s.buf = Vec::new();
                    s.buf_base = s.end;
                }
            }
            let p = pos(id, end);
            if p > st.synced_pos {
                st.synced_pos = p;
            }
        }
        Ok(())
    }

    /// Grows the segment's allocation to cover what the next write reaches: at
    /// least [`FIRST_ALLOCATION`], doubling, at most the segment size. A failure
    /// (a filesystem without fallocate) only costs the optimisation.
    async fn allocate_ahead(&self, id: u64, file: &DmaFile) {
        let segment_size = self.inner.cfg.segment_size;
        let (allocated, reach) = match self.inner.st.borrow().segs.get(&id) {
            Some(s) => (s.allocated, align_up(s.end)),
            None => return,
        };
        if reach <= allocated {
            return;
        }
        let target = reach
            .max(allocated.saturating_mul(2))
            .max(FIRST_ALLOCATION)
            .min(segment_size.max(reach));
        if let Err(e) = file.pre_allocate(target, false).await {
            tracing::debug!(stream = %self.name(), error = %e, "segment pre-allocation failed");
        }
        if let Some(s) = self.inner.st.borrow_mut().segs.get_mut(&id) {
            s.allocated = target;
        }
    }

    async fn create_segment_file(&self, id: u64) -> Result<Rc<DmaFile>> {
        let path = seg_path(&self.inner.cfg.dir, id);
        let f = open_dma(&path)
            .await
            .map_err(|e| StoreError::io(self.name(), "create segment", e))?;
        sync_dir(&self.inner.cfg.dir);
        let f = Rc::new(f);
        if let Some(s) = self.inner.st.borrow_mut().segs.get_mut(&id) {
            s.file = Some(f.clone());
        }
        Ok(f)
    }

    /// Unlinks segments that no longer hold anything needed.
    async fn remove_dead_segments(&self) {
        let dead = {
            let mut st = self.inner.st.borrow_mut();
            let dead = st.dead_segments();
            for id in &dead {
                st.segs.remove(id);
                if st.cache.as_ref().is_some_and(|c| c.seg == *id) {
                    st.cache = None;
                }
            }
            dead
        };
        if dead.is_empty() {
            return;
        }
        for id in &dead {
            // The summary first: a summary without its segment is ignored, a
            // segment without its summary is scanned.
            let _ = std::fs::remove_file(sum_path(&self.inner.cfg.dir, *id));
            let path = seg_path(&self.inner.cfg.dir, *id);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(stream = %self.name(), segment = id, error = %e, "removing segment failed");
            } else {
                tracing::debug!(stream = %self.name(), segment = id, "segment removed");
            }
        }
        sync_dir(&self.inner.cfg.dir);
    }

    /// Writes the summary of every sealed segment that is synced and has been left
    /// alone for [`SUMMARY_SETTLE`]. A summary is a hint, never needed for
    /// correctness: it is written to a temporary name and renamed, and one that
    /// fails its CRC, is older than its segment or is missing gets the segment
    /// scanned instead.
    fn write_summaries(&self) {
        if !self.inner.st.borrow().summaries_due {
            return;
        }
        let now = Instant::now();
        let ready: Vec<(u64, Vec<u8>)> = {
            let mut st = self.inner.st.borrow_mut();
            let active = st.active;
            let mut ready = Vec::new();
            let mut waiting = false;
            for (&id, seg) in st.segs.iter_mut() {
                if id == active || seg.summary.is_none() {
                    continue;
                }
                waiting = true;
                if seg.pending() || seg.synced < seg.end {
                    continue;
                }
                let since = *seg.settled_since.get_or_insert(now);
                if now.duration_since(since) < SUMMARY_SETTLE {
                    continue;
                }
                if let Some(b) = seg.summary.take() {
                    ready.push((id, b.finish(seg.end)));
                }
            }
            st.summaries_due = waiting;
            ready
        };
        for (id, body) in ready {
            let mut framed = Vec::with_capacity(body.len() + 64);
            record::encode_meta(&mut framed, self.inner.keys.as_ref(), &body);
            if framed.len() > record::MAX_RECORD {
                // Too big for one record: this segment is always scanned.
                continue;
            }
            let dir = &self.inner.cfg.dir;
            let tmp = dir.join(format!("{id:020}.sum.tmp"));
            let written = std::fs::write(&tmp, &framed)
                .and_then(|()| std::fs::rename(&tmp, sum_path(dir, id)));
            if let Err(e) = written {
                let _ = std::fs::remove_file(&tmp);
                tracing::debug!(stream = %self.name(), segment = id, error = %e, "segment summary not written");
            }
        }
    }

    /// Waits for durability according to the sync policy.
    async fn commit(&self, target: u64) -> Result<()> {
        match self.inner.cfg.sync {
            SyncPolicy::Always => self.flush_until(target).await?,
            SyncPolicy::Interval(_) => {
                if self.inner.st.borrow().pending_bytes() > MAX_UNFLUSHED {
                    self.flush_until(target).await?;
                }
            }
        }
        self.remove_dead_segments().await;
        self.write_summaries();
        Ok(())
    }

    async fn read_record(&self, loc: Loc) -> Result<Vec<u8>> {
        if let Cached::Hit(record) = self.cached(loc)? {
            return Ok(record);
        }
        // Misses that arrive together mostly want the same window (a burst of
        // direct gets, a consumer's batch): one of them reads it, and the
        // others find it in the cache instead of each reading it again.
        // Uncontended, the gate is taken without yielding.
        let _gate = match self.inner.read_gate.try_acquire_permit(1) {
            Ok(permit) => permit,
            Err(_) => self
                .inner
                .read_gate
                .acquire_permit(1)
                .await
                .map_err(|_| StoreError::Closed)?,
        };
        let (file, written, window) = match self.cached(loc)? {
            Cached::Hit(record) => return Ok(record),
            Cached::Miss {
                file,
                written,
                window,
            } => (file, written, window),
        };
        self.read_window(loc, file, written, window).await
    }

    /// A record from the write buffer or the read cache, or what reading it takes.
    fn cached(&self, loc: Loc) -> Result<Cached> {
        let (file, written, window) = {
            let st = self.inner.st.borrow();
            let seg = st.segs.get(&loc.seg()).ok_or(StoreError::NotFound)?;
            let end = loc.off() + loc.len as u64;
            if loc.off() >= seg.buf_base && end <= seg.buf_base + seg.buf.len() as u64 {
                let a = (loc.off() - seg.buf_base) as usize;
                return Ok(Cached::Hit(seg.buf[a..a + loc.len as usize].to_vec()));
            }
            let mut window = READ_WINDOW;
            if let Some(c) = &st.cache {
                if c.seg == loc.seg() && loc.off() >= c.start && end <= c.valid_end {
                    let a = (loc.off() - c.start) as usize;
                    return Ok(Cached::Hit(c.data[a..a + loc.len as usize].to_vec()));
                }
                let continues = c.seg == loc.seg()
                    && loc.off() >= c.start
                    && loc.off() < c.valid_end.saturating_add(c.window);
                if continues {
                    window = (c.window * 2).min(MAX_READ_WINDOW);
                }
            }
            let file = seg.file.clone().ok_or(StoreError::NotFound)?;
            (file, seg.synced.min(seg.buf_base.max(seg.synced)), window)
        };
        Ok(Cached::Miss {
            file,
            written,
            window,
        })
    }

    async fn read_window(
        &self,
        loc: Loc,
        file: Rc<DmaFile>,
        written: u64,
        window: u64,
    ) -> Result<Vec<u8>> {
        let start = align_down(loc.off());
        let end = loc.off() + loc.len as u64;
        let size = (align_up(end) - start).max(window);
        let data = file
            .read_at_aligned(start, size as usize)
            .await
            .map_err(|e| StoreError::io(self.name(), "read segment", e))?;
        if (data.len() as u64) < end - start {
            return Err(StoreError::Corrupt {
                stream: self.name().to_string(),
                detail: format!("segment {} is shorter than its index says", loc.seg()),
            });
        }
        let a = (loc.off() - start) as usize;
        let out = data[a..a + loc.len as usize].to_vec();
        let valid_end = (start + data.len() as u64).min(written);
        let mut st = self.inner.st.borrow_mut();
        st.segment_reads += 1;
        st.cache = Some(ReadCache {
            seg: loc.seg(),
            start,
            valid_end,
            data,
            window,
        });
        Ok(out)
    }

    async fn load_loc(&self, seq: u64, loc: Loc) -> Result<StoredMessage> {
        let raw = self.read_record(loc).await?;
        match record::decode(&raw, self.inner.keys.as_ref()) {
            Ok((Record::Msg(m), _)) if m.seq == seq => Ok(StoredMessage {
                seq,
                subject: m.subject,
                headers: m.headers,
                payload: m.payload,
                ts: m.ts,
            }),
            Ok(_) => Err(self.corrupt_read(seq, loc, "record does not hold the message")),
            Err(DecodeError::WrongKey) => Err(StoreError::WrongKey {
                stream: self.name().to_string(),
            }),
            Err(DecodeError::KeyRequired) => Err(StoreError::KeyRequired {
                stream: self.name().to_string(),
            }),
            Err(_) => Err(self.corrupt_read(seq, loc, "record failed validation")),
        }
    }

    fn corrupt_read(&self, seq: u64, loc: Loc, what: &str) -> StoreError {
        tracing::warn!(stream = %self.name(), segment = loc.seg(), offset = loc.off(), seq, "{what}");
        StoreError::Corrupt {
            stream: self.name().to_string(),
            detail: format!(
                "segment {} offset {} seq {seq}: {what}",
                loc.seg(),
                loc.off()
            ),
        }
    }

    async fn load_seq(&self, seq: u64) -> Result<StoredMessage> {
        let loc = {
            let st = self.inner.st.borrow();
            st.usable()?;
            st.index
                .get(seq)
                .map(|e| e.loc)
                .ok_or(StoreError::NotFound)?
        };
        self.load_loc(seq, loc).await
    }

    /// Applies an index mutation and logs it durably; returns how many were removed.
    async fn mutate(&self, f: impl FnOnce(&mut Index<Loc>) -> Removed<Loc>) -> Result<u64> {
        let target = {
            let mut st = self.inner.st.borrow_mut();
            st.usable()?;
            let removed = f(&mut st.index);
            let n = removed.len() as u64;
            if n == 0 {
                return Ok(0);
            }
            st.persist_removals(
                removed,
                self.inner.keys.as_ref(),
                self.inner.cfg.segment_size,
            );
            (st.end_pos(), n)
        };
        self.commit(target.0).await?;
        Ok(target.1)
    }

    /// Overwrites a message's record on disk (secure erase) and removes it.
    async fn erase(&self, seq: u64) -> Result<bool> {
        let _g = self.lock_io().await;
        let (loc, file, patch_disk) = {
            let mut st = self.inner.st.borrow_mut();
            st.usable()?;
            let Some(e) = st.index.remove(seq) else {
                return Ok(false);
            };
            let (loc, ts) = (e.loc, e.ts);
            st.cache = None;
            // Logged like any removal as well: a segment summary written before
            // the overwrite still lists the message, and the tombstone after it
            // removes it again.
            st.persist_removals(
                vec![(seq, e)],
                self.inner.keys.as_ref(),
                self.inner.cfg.segment_size,
            );
            let bytes = record::encode_erased(seq, ts, loc.len as usize);
            match st.segs.get_mut(&loc.seg()) {
                None => (loc, None, Vec::new()),
                Some(s) => {
                    // The part inside the in-memory tail is patched there; the rest
                    // on disk.
                    let mut disk = Vec::new();
                    for (i, b) in bytes.iter().enumerate() {
                        let off = loc.off() + i as u64;
                        if off >= s.buf_base && off < s.buf_base + s.buf.len() as u64 {
                            s.buf[(off - s.buf_base) as usize] = *b;
                            s.force = true;
                        } else {
                            disk.push((off, *b));
                        }
                    }
                    (loc, s.file.clone(), disk)
                }
            }
        };
        if !patch_disk.is_empty() {
            let file = file.ok_or(StoreError::NotFound)?;
            let (first, last) = (patch_disk[0].0, patch_disk[patch_disk.len() - 1].0);
            let start = align_down(first);
            let len = (align_up(last + 1) - start) as usize;
            let res: Result<()> = async {
                let old = file
                    .read_at_aligned(start, len)
                    .await
                    .map_err(|e| StoreError::io(self.name(), "read for erase", e))?;
                let mut d = file.alloc_dma_buffer(len);
                let b = d.as_bytes_mut();
                b.fill(0);
                b[..old.len().min(len)].copy_from_slice(&old[..old.len().min(len)]);
                for (off, v) in &patch_disk {
                    b[(off - start) as usize] = *v;
                }
                file.write_at(d, start)
                    .await
                    .map_err(|e| StoreError::io(self.name(), "erase", e))?;
                file.fdatasync()
                    .await
                    .map_err(|e| StoreError::io(self.name(), "fdatasync", e))?;
                Ok(())
            }
            .await;
            if let Err(e) = res {
                self.fail(&e);
                return Err(e);
            }
        }
        if let Err(e) = self.flush_pending().await {
            self.fail(&e);
            return Err(e);
        }
        tracing::debug!(stream = %self.name(), seq, segment = loc.seg(), "message erased");
        drop(_g);
        self.remove_dead_segments().await;
        Ok(true)
    }

    /// Writes a snapshot of the store's files to `out`: everything needed to restore
    /// the stream elsewhere (still encrypted if the store is), with the summaries of
    /// its sealed segments. Appends wait meanwhile.
    pub async fn snapshot<W: std::io::Write>(&self, out: &mut W) -> Result<()> {
        self.sync().await?;
        let _g = self.lock_io().await;
        let meta = std::fs::read(self.inner.cfg.dir.join("meta"))
            .map_err(|e| StoreError::io(self.name(), "read meta", e))?;
        let mut w = crate::snapshot::Writer::new(out)?;
        w.file("meta", &meta)?;
        let segs: Vec<(u64, u64, Option<Rc<DmaFile>>)> = {
            let st = self.inner.st.borrow();
            st.segs
                .iter()
                .map(|(&id, s)| (id, s.synced, s.file.clone()))
                .collect()
        };
        for (id, synced, file) in segs {
            let Some(file) = file else { continue };
            let mut data = Vec::with_capacity(synced as usize);
            let mut off = 0u64;
            while off < synced {
                let n = ((synced - off) as usize).min(SCAN_CHUNK);
                let r = file
                    .read_at_aligned(off, align_up(n as u64) as usize)
                    .await
                    .map_err(|e| StoreError::io(self.name(), "read segment", e))?;
                let take = r.len().min(n);
                if take == 0 {
                    break;
                }
                data.extend_from_slice(&r[..take]);
                off += take as u64;
            }
            w.file(&format!("{id:020}.seg"), &data)?;
            // A sealed segment's summary, as a restart would read it, so that
            // the restored store opens without scanning the segment.
            if let Ok(summary) = std::fs::read(sum_path(&self.inner.cfg.dir, id)) {
                w.file(&format!("{id:020}.sum"), &summary)?;
            }
        }
        w.finish()
    }

    /// Restores a snapshot written by [`FileStore::snapshot`] into `dir` (which must not
    /// hold a store); open it afterwards with [`FileStore::open`].
    pub fn restore<R: std::io::Read>(dir: &Path, input: &mut R) -> Result<()> {
        crate::snapshot::restore(dir, input)
    }
}

/// Summaries without their segment (removed by a crash between the two
/// unlinks) and half-written ones.
fn remove_stray_summaries(dir: &Path, ids: &[u64]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let stray = name.ends_with(".sum.tmp")
            || parse_sum_name(name).is_some_and(|id| ids.binary_search(&id).is_err());
        if stray {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

async fn interval_flusher(weak: Weak<Inner>, every: Duration) {
    loop {
        glommio::timer::sleep(every).await;
        let Some(inner) = weak.upgrade() else { return };
        let fs = FileStore { inner };
        if fs.inner.st.borrow().closed {
            return;
        }
        let target = fs.inner.st.borrow().end_pos();
        if fs.flush_until(target).await.is_err() {
            return;
        }
    }
}

fn sync_dir(dir: &Path) {
    // A new or removed segment must survive a crash along with the data in it.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

async fn open_probe(dir: &Path, name: &str) -> Result<DmaFile> {
    let path = dir.join("probe");
    let ok = std::fs::metadata(&path)
        .map(|m| m.len() >= PAGE as u64)
        .unwrap_or(false);
    if !ok {
        std::fs::write(&path, vec![0x5au8; PAGE])
            .map_err(|e| StoreError::io(name, "write probe", e))?;
    }
    let f = open_dma(&path)
        .await
        .map_err(|e| StoreError::io(name, "open probe", e))?;
    f.read_at_aligned(0, PAGE)
        .await
        .map_err(|e| StoreError::io(name, "read probe", e))?;
    Ok(f)
}

fn check_meta(dir: &Path, name: &str, keys: Option<&Keys>) -> Result<()> {
    let path = dir.join("meta");
    let write = |keys: Option<&Keys>| -> Result<()> {
        let mut out = Vec::new();
        record::encode_meta(&mut out, keys, META_CHECK);
        let tmp = dir.join("meta.tmp");
        std::fs::write(&tmp, &out).map_err(|e| StoreError::io(name, "write meta", e))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| StoreError::io(name, "sync meta", e))?;
        std::fs::rename(&tmp, &path).map_err(|e| StoreError::io(name, "write meta", e))?;
        sync_dir(dir);
        Ok(())
    };
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return write(keys),
        Err(e) => return Err(StoreError::io(name, "read meta", e)),
    };
    let encrypted = data.get(2).is_some_and(|&c| c != 0);
    match record::decode(&data, keys) {
        Ok((Record::Meta(body), _)) if body == META_CHECK => {
            // Re-seal when encryption was switched on or the cipher changed.
            let want = keys.map(|k| k.cipher);
            let same = matches!(
                (want, data.get(2)),
                (None, Some(0))
                    | (Some(crate::Cipher::ChaCha), Some(1))
                    | (Some(crate::Cipher::Aes), Some(2))
            );
            if !same && (keys.is_some() || !encrypted) {
                write(keys)?;
            }
            Ok(())
        }
        Err(DecodeError::WrongKey) => Err(StoreError::WrongKey {
            stream: name.into(),
        }),
        Err(DecodeError::KeyRequired) => Err(StoreError::KeyRequired {
            stream: name.into(),
        }),
        _ => Err(StoreError::Corrupt {
            stream: name.into(),
            detail: "meta file failed validation".into(),
        }),
    }
}

/// Reads a whole segment file (up to the end of its data).
/// A new segment's first allocation.
const FIRST_ALLOCATION: u64 = 1 << 20;

/// About how many sequences the segments span, from the first and last segment
/// headers (the sequence each starts at) and the last segment's size, so the index
/// is sized once instead of doubling (and copying) all through the scan. A guess
/// only: unreadable headers make it 0, and the scan still grows as needed.
async fn expected_records(dir: &Path, ids: &[u64], name: &str) -> usize {
    async fn starts_at(dir: &Path, id: u64) -> Option<(u64, u64)> {
        let file = open_dma(&seg_path(dir, id)).await.ok()?;
        let size = file.file_size().await.ok()?;
        let page = file.read_at_aligned(0, PAGE).await.ok()?;
        let header = SegmentHeader::decode(&page)?;
        (header.id == id).then_some((header.next_seq, size))
    }
    let (Some(&first), Some(&last)) = (ids.first(), ids.last()) else {
        return 0;
    };
    let (Some((first_seq, _)), Some((last_seq, last_size))) =
        (starts_at(dir, first).await, starts_at(dir, last).await)
    else {
        tracing::debug!(
            stream = name,
            "segment headers unreadable; index not presized"
        );
        return 0;
    };
    // The smallest record is a header and a little: 64 bytes bounds the last
    // segment's share from above.
    let span = last_seq.saturating_sub(first_seq) + last_size / 64;
    usize::try_from(span).unwrap_or(0).min(1 << 30)
}

/// Reads a segment's written data into `data` (cleared first). One buffer serves
/// every segment of a recovery: growing a fresh one per segment costs a copy and
/// page faults per doubling, which dominated the scan of a big stream.
async fn read_segment(file: &DmaFile, name: &str, data: &mut Vec<u8>) -> Result<()> {
    let size = file
        .file_size()
        .await
        .map_err(|e| StoreError::io(name, "stat segment", e))?;
    data.clear();
    data.reserve(size as usize);
    let mut off = 0u64;
    while off < size {
        let n = ((size - off) as usize).min(SCAN_CHUNK);
        let r = file
            .read_at_aligned(off, align_up(n as u64) as usize)
            .await
            .map_err(|e| StoreError::io(name, "read segment", e))?;
        let take = r.len().min(n);
        if take == 0 {
            break;
        }
        let chunk = &r[..take];
        let all_zero = off >= PAGE as u64 && chunk.iter().all(|&b| b == 0);
        data.extend_from_slice(chunk);
        off += take as u64;
        // Past the written data a pre-allocated segment is zeros.
        if all_zero {
            break;
        }
    }
    Ok(())
}

/// Scans one segment into the index. Returns the tail (from the last page boundary to
/// the end of the data) when it is the last segment and can keep taking appends.
async fn recover_segment(
    cfg: &FileStoreConfig,
    keys: Option<&Keys>,
    id: u64,
    is_last: bool,
    st: &mut State,
    report: &mut RecoveryReport,
    data: &mut Vec<u8>,
) -> Result<Option<Vec<u8>>> {
    let name = cfg.name.as_str();
    let path = seg_path(&cfg.dir, id);
    let file = open_dma(&path)
        .await
        .map_err(|e| StoreError::io(name, "open segment", e))?;
    read_segment(&file, name, data).await?;
    let data: &[u8] = data;
    report.bytes_scanned += data.len() as u64;
    if data.iter().all(|&b| b == 0) {
        // Created (and pre-allocated) but killed before its first write reached the
        // disk: it never held anything.
        tracing::debug!(
            stream = name,
            segment = id,
            "removing a segment that was never written"
        );
        drop(file);
        std::fs::remove_file(&path).map_err(|e| StoreError::io(name, "remove empty segment", e))?;
        sync_dir(&cfg.dir);
        return Ok(None);
    }
    let mut healthy = true;
    let mut summary = None;
    match SegmentHeader::decode(data) {
        Some(h) if h.id == id => {
            st.index
                .advance_last(h.next_seq.saturating_sub(1), h.last_ts);
            summary = Some(SummaryBuilder::new(id, h.next_seq, h.last_ts));
        }
        _ => {
            healthy = false;
            let c = Corruption {
                stream: name.into(),
                segment: id,
                offset: 0,
                len: PAGE as u64,
                after_seq: st.index.last_seq(),
                next_seq: None,
                reason: "bad segment header".into(),
            };
            tracing::warn!(
                stream = name,
                segment = id,
                "segment header damaged; scanning its records anyway"
            );
            report.corruptions.push(c);
        }
    }
    let mut seg = Segment {
        file: Some(Rc::new(file)),
        live: 0,
        first_msg_seq: None,
        tomb_max_ref: 0,
        end: PAGE as u64,
        buf_base: 0,
        buf: Vec::new(),
        synced: 0,
        force: false,
        allocated: 0,
        summary,
        // Found sealed and synced: nothing is waiting for it to settle.
        settled_since: Instant::now().checked_sub(SUMMARY_SETTLE),
    };
    let mut off = PAGE;
    let mut torn: Option<(usize, usize)> = None;
    while off < data.len() {
        match record::decode(&data[off..], keys) {
            Ok((rec, n)) => {
                report.records += 1;
                apply_record(st, &mut seg, id, off as u64, n, rec, name);
                off += n;
            }
            Err(DecodeError::End) => break,
            Err(DecodeError::KeyRequired) => {
                return Err(StoreError::KeyRequired {
                    stream: name.into(),
                })
            }
            Err(DecodeError::WrongKey) => {
                return Err(StoreError::WrongKey {
                    stream: name.into(),
                })
            }
            Err(DecodeError::Incomplete { .. }) | Err(DecodeError::Corrupt(_)) => {
                let reason = match record::check_frame(&data[off..]) {
                    Err(DecodeError::Corrupt(r)) => r.to_string(),
                    Err(DecodeError::Incomplete { .. }) => "record cut short".to_string(),
                    _ => "malformed record".to_string(),
                };
                // Resynchronise: the next 8-byte-aligned offset holding a valid frame.
                let mut probe = off + 8;
                let mut found = None;
                while probe + record::HEADER_LEN <= data.len() {
                    if data[probe] == record::MAGIC && record::check_frame(&data[probe..]).is_ok() {
                        found = Some(probe);
                        break;
                    }
                    probe += 8;
                }
                match found {
                    Some(next) => {
                        let next_seq = match record::decode(&data[next..], keys) {
                            Ok((Record::Msg(m), _)) => Some(m.seq),
                            _ => None,
                        };
                        let c = Corruption {
                            stream: name.into(),
                            segment: id,
                            offset: off as u64,
                            len: (next - off) as u64,
                            after_seq: st.index.last_seq(),
                            next_seq,
                            reason,
                        };
                        tracing::warn!(stream = name, segment = id, offset = off, after_seq = c.after_seq, next_seq = ?next_seq, reason = %c.reason, "damaged records skipped");
                        report.corruptions.push(c);
                        healthy = false;
                        off = next;
                    }
                    None => {
                        let extent = data
                            .iter()
                            .rposition(|&b| b != 0)
                            .map(|p| p + 1)
                            .unwrap_or(off);
                        torn = Some((off, extent.max(off)));
                        if !is_last {
                            let c = Corruption {
                                stream: name.into(),
                                segment: id,
                                offset: off as u64,
                                len: (extent.max(off) - off) as u64,
                                after_seq: st.index.last_seq(),
                                next_seq: None,
                                reason,
                            };
                            tracing::warn!(stream = name, segment = id, offset = off, after_seq = c.after_seq, reason = %c.reason, "damaged tail of a segment skipped");
                            report.corruptions.push(c);
                        }
                        break;
                    }
                }
            }
        }
    }
    seg.end = off.min(data.len()).max(PAGE) as u64;
    if let Some((t, extent)) = torn {
        seg.end = t as u64;
        if is_last {
            // A torn write: zero it so later scans (and appends here) never see it.
            let file = seg.file.clone().ok_or(StoreError::NotFound)?;
            let start = align_down(t as u64);
            let stop = align_up(extent.max(t + 1) as u64);
            let len = (stop - start) as usize;
            let mut d = file.alloc_dma_buffer(len);
            let b = d.as_bytes_mut();
            b.fill(0);
            let keep = t - start as usize;
            b[..keep].copy_from_slice(&data[start as usize..t]);
            file.write_at(d, start)
                .await
                .map_err(|e| StoreError::io(name, "truncate torn write", e))?;
            file.fdatasync()
                .await
                .map_err(|e| StoreError::io(name, "fdatasync", e))?;
            report.torn_tail = Some((id, t as u64, (extent.max(t) - t) as u64));
            tracing::warn!(
                stream = name,
                segment = id,
                offset = t,
                len = extent.max(t) - t,
                after_seq = st.index.last_seq(),
                "torn write at the end of the log truncated"
            );
        }
    }
    seg.synced = seg.end;
    seg.buf_base = seg.end;
    if !healthy || (torn.is_some() && !is_last) {
        // Damage is reported at every open: such a segment is always scanned (a
        // torn tail of the last segment is zeroed above, and gone).
        seg.summary = None;
    }
    let end = seg.end as usize;
    st.segs.insert(id, seg);
    if is_last && healthy {
        let base = align_down(end as u64) as usize;
        let mut tail = data.get(base..end).map(|s| s.to_vec()).unwrap_or_default();
        if tail.len() != end - base {
            tail.resize(end - base, 0);
        }
        Ok(Some(tail))
    } else {
        Ok(None)
    }
}

fn apply_record(
    st: &mut State,
    seg: &mut Segment,
    id: u64,
    off: u64,
    len: usize,
    rec: Record,
    name: &str,
) {
    let len = len as u32;
    match rec {
        Record::Msg(m) => {
            let subject = st.index.intern(&m.subject);
            let msg = RecoveredMsg {
                seq: m.seq,
                off,
                len,
                ts: m.ts,
                ttl: m.ttl,
                hdr_len: m.headers.len(),
                payload_len: m.payload.len(),
            };
            apply_msg(st, seg, id, msg, subject, name);
        }
        Record::Tombstones(rs) => {
            if let Some(b) = seg.summary.as_mut() {
                b.tombstones(off, len, &rs);
            }
            apply_tombstones(st, seg, id, &rs);
        }
        Record::Compact {
            first,
            last_seq,
            last_ts,
        } => {
            if let Some(b) = seg.summary.as_mut() {
                b.compact(off, len, first, last_seq, last_ts);
            }
            apply_compact(st, seg, id, first, last_seq, last_ts);
        }
        Record::Erased { seq, ts } => {
            if let Some(b) = seg.summary.as_mut() {
                b.erased(off, len, seq, ts);
            }
            st.index.advance_last(seq, ts);
        }
        Record::Meta(_) => {}
    }
}

/// A message record as recovery needs it (from a scan or a summary).
struct RecoveredMsg {
    seq: u64,
    off: u64,
    len: u32,
    ts: i64,
    ttl: i64,
    hdr_len: usize,
    payload_len: usize,
}

fn apply_msg(
    st: &mut State,
    seg: &mut Segment,
    id: u64,
    m: RecoveredMsg,
    subject: Subject,
    name: &str,
) {
    if m.seq <= st.index.last_seq() {
        tracing::warn!(
            stream = name,
            segment = id,
            seq = m.seq,
            "out-of-order record ignored"
        );
        return;
    }
    if let Some(b) = seg.summary.as_mut() {
        b.msg(
            m.seq,
            m.off,
            m.len,
            m.ts,
            m.ttl,
            &subject,
            m.hdr_len,
            m.payload_len,
        );
    }
    let loc = Loc::new(id, m.off, m.len);
    let ttl = MsgTtl::from_nanos(m.ttl);
    let size = st.index.size_of(subject.len(), m.hdr_len, m.payload_len);
    let (e, expires) = entry_with(subject, size, m.hdr_len > 0, m.ts, ttl, loc);
    st.index.insert(m.seq, e, expires);
    seg.live += 1;
    seg.first_msg_seq.get_or_insert(m.seq);
}

fn apply_tombstones(st: &mut State, seg: &mut Segment, id: u64, ranges: &[(u64, u64)]) {
    for &(a, b) in ranges {
        seg.tomb_max_ref = seg.tomb_max_ref.max(b);
        let lo = a.max(st.index.first_seq());
        let hi = b.min(st.index.last_seq());
        let mut s = lo;
        while s <= hi {
            remove_recovered(st, seg, id, s);
            s += 1;
        }
    }
}

fn apply_compact(
    st: &mut State,
    seg: &mut Segment,
    id: u64,
    first: u64,
    last_seq: u64,
    last_ts: i64,
) {
    seg.tomb_max_ref = seg.tomb_max_ref.max(first.saturating_sub(1));
    let removed = st.index.compact(first);
    for (_, e) in removed {
        if e.loc.seg() == id {
            seg.live = seg.live.saturating_sub(1);
        } else if let Some(s) = st.segs.get_mut(&e.loc.seg()) {
            s.live = s.live.saturating_sub(1);
        }
    }
    st.index.advance_last(last_seq, last_ts);
}

/// Rebuilds segment `id` into the index from its summary instead of scanning it,
/// when the summary can be trusted: newer than the segment file (which has not
/// been written since), intact (its record's CRC, or its seal), and describing this
/// very segment (its header). `None` when it cannot: the caller scans.
async fn recover_from_summary(
    cfg: &FileStoreConfig,
    keys: Option<&Keys>,
    id: u64,
    st: &mut State,
    report: &mut RecoveryReport,
) -> Option<SummaryReplay> {
    let name = cfg.name.as_str();
    let path = sum_path(&cfg.dir, id);
    let sum_time = std::fs::metadata(&path).ok()?.modified().ok()?;
    let seg_file = seg_path(&cfg.dir, id);
    let seg_meta = std::fs::metadata(&seg_file).ok()?;
    if seg_meta.modified().ok()? >= sum_time {
        tracing::debug!(
            stream = name,
            segment = id,
            "segment written after its summary; scanning it"
        );
        return None;
    }
    let data = std::fs::read(&path).ok()?;
    let body = match record::decode(&data, keys) {
        Ok((Record::Meta(body), _)) => body,
        _ => {
            tracing::debug!(
                stream = name,
                segment = id,
                "segment summary unreadable; scanning the segment"
            );
            return None;
        }
    };
    let summary = match Summary::open(&body) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(stream = name, segment = id, error = %e, "scanning the segment");
            return None;
        }
    };
    let facts = summary.facts;
    if facts.id != id || facts.end > seg_meta.len() {
        return None;
    }
    let file = open_dma(&seg_file).await.ok()?;
    let page = file.read_at_aligned(0, PAGE).await.ok()?;
    let header = SegmentHeader::decode(&page)?;
    if (header.id, header.next_seq, header.last_ts) != (id, facts.next_seq, facts.last_ts) {
        return None;
    }
    st.index
        .advance_last(facts.next_seq.saturating_sub(1), facts.last_ts);
    let subjects: Vec<Subject> = summary
        .subjects
        .iter()
        .map(|s| st.index.intern(s))
        .collect();
    let mut seg = Segment {
        file: Some(Rc::new(file)),
        live: 0,
        first_msg_seq: None,
        tomb_max_ref: 0,
        end: facts.end,
        buf_base: facts.end,
        buf: Vec::new(),
        synced: facts.end,
        force: false,
        allocated: 0,
        summary: None,
        settled_since: None,
    };
    report.records += summary.len() as u64;
    report.bytes_scanned += data.len() as u64;
    report.summarized += 1;
    let replayed = summary.for_each(|r| match r {
        SummaryRecord::Msg {
            seq,
            off,
            len,
            ts,
            ttl,
            subject,
            hdr_len,
            payload_len,
        } => {
            let msg = RecoveredMsg {
                seq,
                off,
                len,
                ts,
                ttl,
                hdr_len: hdr_len as usize,
                payload_len: payload_len as usize,
            };
            let subject = subjects[subject as usize].clone();
            apply_msg(st, &mut seg, id, msg, subject, name);
        }
        SummaryRecord::Tombstones(rs) => apply_tombstones(st, &mut seg, id, &rs),
        SummaryRecord::Compact {
            first,
            last_seq,
            last_ts,
        } => apply_compact(st, &mut seg, id, first, last_seq, last_ts),
        SummaryRecord::Erased { seq, ts } => st.index.advance_last(seq, ts),
    });
    if let Err(e) = replayed {
        // Past its CRC yet not what the writer writes: the index holds part of it.
        tracing::warn!(stream = name, segment = id, error = %e, "segment summary inconsistent; recovering again by scanning the segment");
        return Some(SummaryReplay::Broken);
    }
    st.segs.insert(id, seg);
    Some(SummaryReplay::Applied)
}

/// How a summary's replay went, when it was used at all.
enum SummaryReplay {
    Applied,
    /// It stopped part way: what it applied cannot be taken back, so recovery
    /// starts over without that summary.
    Broken,
}

fn remove_recovered(st: &mut State, seg: &mut Segment, id: u64, seq: u64) {
    if let Some(e) = st.index.remove(seq) {
        if e.loc.seg() == id {
            seg.live = seg.live.saturating_sub(1);
        } else if let Some(s) = st.segs.get_mut(&e.loc.seg()) {
            s.live = s.live.saturating_sub(1);
        }
    }
}

impl Store for FileStore {
    async fn append(
        &self,
        subject: &str,
        headers: &[u8],
        payload: &[u8],
        ts: i64,
        ttl: Option<MsgTtl>,
    ) -> Result<u64> {
        let (seq, target, refused) = {
            let mut st = self.inner.st.borrow_mut();
            st.usable()?;
            let keys = self.inner.keys.as_ref();
            let seg_size = self.inner.cfg.segment_size;
            let expired = st.index.expire(ts);
            st.persist_removals(expired, keys, seg_size);
            match st
                .index
                .check_append(subject, headers.len(), payload.len(), ttl)
            {
                Err(e) => (0, st.end_pos(), Some(e)),
                Ok(()) => {
                    let seq = st.index.next_seq();
                    let mut rec =
                        Vec::with_capacity(64 + subject.len() + headers.len() + payload.len());
                    let n = record::encode_msg(
                        &mut rec,
                        keys,
                        seq,
                        ts,
                        ttl.map(MsgTtl::to_nanos).unwrap_or(0),
                        subject,
                        headers,
                        payload,
                    );
                    let (seg, off) = st.reserve(n, seg_size);
                    st.push_bytes(&rec);
                    let loc = Loc::new(seg, off, n as u32);
                    let (e, expires) = new_entry(
                        &st.index,
                        subject,
                        headers.len(),
                        payload.len(),
                        ts,
                        ttl,
                        loc,
                    );
                    let interned = e.subject.clone();
                    st.index.insert(seq, e, expires);
                    if let Some(s) = st.segs.get_mut(&seg) {
                        s.live += 1;
                        s.first_msg_seq.get_or_insert(seq);
                        if let Some(b) = s.summary.as_mut() {
                            b.msg(
                                seq,
                                off,
                                n as u32,
                                ts,
                                ttl.map(MsgTtl::to_nanos).unwrap_or(0),
                                &interned,
                                headers.len(),
                                payload.len(),
                            );
                        }
                    }
                    let removed = st.index.enforce_limits(Some(subject));
                    st.persist_removals(removed, keys, seg_size);
                    (seq, st.end_pos(), None)
                }
            }
        };
        if let Some(e) = refused {
            // Expired messages may have been logged before the refusal.
            if self.inner.st.borrow().synced_pos < target {
                self.commit(target).await?;
            }
            return Err(e);
        }
        self.commit(target).await?;
        Ok(seq)
    }

    async fn load(&self, seq: u64) -> Result<StoredMessage> {
        self.load_seq(seq).await
    }

    async fn load_last(&self, filter: &str) -> Result<StoredMessage> {
        let seq = {
            let st = self.inner.st.borrow();
            st.usable()?;
            st.index.last_match(filter).ok_or(StoreError::NotFound)?
        };
        self.load_seq(seq).await
    }

    async fn load_next(&self, start: u64, filter: &str) -> Result<StoredMessage> {
        let seq = {
            let st = self.inner.st.borrow();
            st.usable()?;
            st.index.next_match(start, filter).ok_or(StoreError::Eof)?
        };
        self.load_seq(seq).await
    }

    async fn delete(&self, seq: u64, erase: bool) -> Result<bool> {
        if erase {
            return self.erase(seq).await;
        }
        let n = self
            .mutate(|ix| ix.remove(seq).map(|e| vec![(seq, e)]).unwrap_or_default())
            .await?;
        Ok(n > 0)
    }

    async fn purge(&self, req: &Purge) -> Result<u64> {
        self.mutate(|ix| ix.purge(&req.filter, req.up_to, req.keep))
            .await
    }

    async fn compact(&self, seq: u64) -> Result<u64> {
        let beyond = {
            let st = self.inner.st.borrow();
            seq > st.index.last_seq() + 1
        };
        if beyond {
            // Moves the last sequence even when nothing is removed: always log it.
            let target = {
                let mut st = self.inner.st.borrow_mut();
                st.usable()?;
                let removed = st.index.compact(seq);
                let n = removed.len() as u64;
                let mut out = Vec::new();
                for (_, e) in removed {
                    if let Some(s) = st.segs.get_mut(&e.loc.seg()) {
                        s.live = s.live.saturating_sub(1);
                    }
                }
                let (first, last, ts) = (
                    st.index.first_seq(),
                    st.index.last_seq(),
                    st.index.last_ts(),
                );
                record::encode_compact(&mut out, self.inner.keys.as_ref(), first, last, ts);
                st.reserve(out.len(), self.inner.cfg.segment_size);
                st.push_bytes(&out);
                let active = st.active;
                if let Some(s) = st.segs.get_mut(&active) {
                    s.tomb_max_ref = s.tomb_max_ref.max(first - 1);
                }
                (st.end_pos(), n)
            };
            self.commit(target.0).await?;
            return Ok(target.1);
        }
        self.mutate(|ix| ix.compact(seq)).await
    }

    async fn skip_to(&self, seq: u64) -> Result<()> {
        let (msgs, last) = {
            let st = self.inner.st.borrow();
            (st.index.msgs(), st.index.last_seq())
        };
        if seq <= last {
            return Ok(());
        }
        if msgs == 0 {
            return self.compact(seq + 1).await.map(drop);
        }
        // A compact record that keeps the first sequence and moves the last:
        // recovery replays it as the same move.
        let target = {
            let mut st = self.inner.st.borrow_mut();
            st.usable()?;
            let (first, ts) = (st.index.first_seq(), st.index.last_ts());
            st.index.advance_last(seq, ts);
            let mut out = Vec::new();
            record::encode_compact(&mut out, self.inner.keys.as_ref(), first, seq, ts);
            st.reserve(out.len(), self.inner.cfg.segment_size);
            st.push_bytes(&out);
            let active = st.active;
            if let Some(s) = st.segs.get_mut(&active) {
                s.tomb_max_ref = s.tomb_max_ref.max(first - 1);
            }
            st.end_pos()
        };
        self.commit(target).await
    }

    async fn expire(&self, now: i64) -> Result<u64> {
        self.mutate(|ix| ix.expire(now)).await
    }

    async fn update_limits(&self, limits: Limits, now: i64) -> Result<()> {
        self.mutate(|ix| {
            ix.set_limits(limits);
            let mut r = ix.enforce_limits(None);
            r.extend(ix.expire(now));
            r
        })
        .await?;
        Ok(())
    }

    fn state(&self) -> StreamState {
        self.inner.st.borrow().index.state(true)
    }

    fn fast_state(&self) -> StreamState {
        self.inner.st.borrow().index.state(false)
    }

    fn subjects_state(&self, filter: &str) -> BTreeMap<String, u64> {
        self.inner.st.borrow().index.subjects_state(filter)
    }

    fn filtered_state(&self, filter: &str) -> FilteredState {
        let (msgs, first, last) = self.inner.st.borrow().index.filtered_state(filter);
        FilteredState { msgs, first, last }
    }

    fn num_pending(&self, start: u64, filter: &str) -> u64 {
        self.inner.st.borrow().index.num_pending(start, filter)
    }

    fn seq_from_time(&self, ts: i64) -> u64 {
        self.inner.st.borrow().index.seq_from_time(ts)
    }

    fn next_matching(&self, start: u64, filters: &[String]) -> Option<(u64, u64)> {
        self.inner.st.borrow().index.next_match_any(start, filters)
    }

    fn watch(&self, filter: &str) {
        self.inner.st.borrow_mut().index.watch(filter);
    }

    fn unwatch(&self, filter: &str) {
        self.inner.st.borrow_mut().index.unwatch(filter);
    }

    fn stored_size(&self, seq: u64) -> Option<u64> {
        self.inner
            .st
            .borrow()
            .index
            .get(seq)
            .map(|e| e.size() as u64)
    }

    fn stored_time(&self, seq: u64) -> Option<i64> {
        self.inner.st.borrow().index.get(seq).map(|e| e.ts)
    }

    fn stored_subject(&self, seq: u64) -> Option<Subject> {
        self.inner
            .st
            .borrow()
            .index
            .get(seq)
            .map(|e| e.subject.clone())
    }

    fn multi_last(&self, filters: &[String], up_to: u64, max: usize) -> Option<Vec<u64>> {
        self.inner.st.borrow().index.multi_last(filters, up_to, max)
    }

    fn with_headers_since(&self, ts: i64) -> Vec<u64> {
        self.inner.st.borrow().index.with_headers_since(ts)
    }

    fn expired_last_of_subjects(&self, now: i64) -> Vec<u64> {
        self.inner.st.borrow().index.expired_last_of_subjects(now)
    }

    fn next_expiry(&self) -> Option<i64> {
        self.inner.st.borrow().index.next_expiry()
    }

    async fn sync(&self) -> Result<()> {
        let target = {
            let st = self.inner.st.borrow();
            if st.failed.is_some() {
                return Err(StoreError::Closed);
            }
            st.end_pos()
        };
        // Nothing pending when the active segment is not even created yet.
        let pending = self
            .inner
            .st
            .borrow()
            .segs
            .values()
            .any(|s| s.pending() && s.end > PAGE as u64);
        if !pending {
            return Ok(());
        }
        self.flush_until(target).await
    }

    async fn close(&self) -> Result<()> {
        if self.inner.st.borrow().closed {
            return Ok(());
        }
        let r = self.sync().await;
        let files: Vec<Rc<DmaFile>> = {
            let mut st = self.inner.st.borrow_mut();
            st.closed = true;
            st.cache = None;
            st.segs.values_mut().filter_map(|s| s.file.take()).collect()
        };
        for f in files {
            if let Ok(f) = Rc::try_unwrap(f) {
                let _ = f.close().await;
            }
        }
        r
    }
}
