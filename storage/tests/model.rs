//! Model-based test: random operations (with restarts) applied to the file store, the
//! memory store and a trivial model; their states and messages must agree.

mod common;
use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use strait_storage::{
    AnyStore, Cipher, Discard, Encryption, FileStore, Limits, MemStore, MsgTtl, Purge, Store,
    StoreError, StreamState,
};

const SUBJECTS: &[&str] = &["a", "b.c", "b.d", "e.f.g", "e.h.g"];
const FILTERS: &[&str] = &["", ">", "a", "b.*", "b.>", "e.*.g", "*.c", "zz"];

#[derive(Debug, Clone)]
enum Op {
    Append {
        subj: usize,
        hdr: usize,
        len: usize,
        dt: i64,
        ttl: Option<u8>,
    },
    Delete {
        back: u64,
        erase: bool,
    },
    Purge {
        filter: usize,
        up_to_back: Option<u64>,
        keep: u64,
    },
    Compact {
        back: i64,
    },
    Expire {
        dt: i64,
    },
    Restart,
    Next {
        back: u64,
        filter: usize,
    },
    Last {
        filter: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0..SUBJECTS.len(), prop_oneof![Just(0usize), 1..20usize], 0..300usize, 0..3i64, prop::option::weighted(0.2, 0..3u8))
            .prop_map(|(subj, hdr, len, dt, ttl)| Op::Append { subj, hdr, len, dt, ttl }),
        3 => (0..40u64, any::<bool>()).prop_map(|(back, erase)| Op::Delete { back, erase }),
        1 => (0..FILTERS.len(), prop::option::of(0..10u64), prop_oneof![Just(0u64), 1..5u64])
            .prop_map(|(filter, up_to_back, keep)| Op::Purge { filter, up_to_back, keep }),
        1 => (-3..8i64).prop_map(|back| Op::Compact { back }),
        1 => (0..20i64).prop_map(|dt| Op::Expire { dt }),
        2 => Just(Op::Restart),
        2 => (0..15u64, 0..FILTERS.len()).prop_map(|(back, filter)| Op::Next { back, filter }),
        1 => (0..FILTERS.len()).prop_map(|filter| Op::Last { filter }),
    ]
}

fn limits() -> impl Strategy<Value = Limits> {
    (
        prop::option::weighted(0.3, 3..20u64),
        prop::option::weighted(0.2, 500..3000u64),
        prop::option::weighted(0.2, 5..40u64),
        prop::option::weighted(0.3, 1..4u64),
        prop::option::weighted(0.2, 50..250u64),
        prop_oneof![Just(Discard::Old), Just(Discard::New)],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(mm, mb, age, per, size, discard, dnp, ttl)| Limits {
            max_msgs: mm,
            max_bytes: mb,
            max_age: age.map(Duration::from_nanos),
            max_msgs_per_subject: per,
            max_msg_size: size,
            discard,
            discard_new_per_subject: dnp,
            allow_msg_ttl: ttl,
            subject_delete_markers: false,
        })
}

#[derive(Debug, Clone)]
struct M {
    subj: String,
    hdr: Vec<u8>,
    data: Vec<u8>,
    ts: i64,
    exp: Option<i64>,
    never: bool,
}

/// The trivial model: a map and the rules spelled out plainly.
struct Model {
    l: Limits,
    /// nats-server's file-store byte accounting (else its memory store's).
    file: bool,
    msgs: BTreeMap<u64, M>,
    last: u64,
    last_ts: i64,
}

fn matches(f: &str, s: &str) -> bool {
    strait_storage::subject::subject_matches(f, s)
}

impl Model {
    fn size(&self, m: &M) -> u64 {
        if self.file {
            let headers = if m.hdr.is_empty() { 0 } else { 4 + m.hdr.len() };
            (22 + m.subj.len() + headers + m.data.len() + 8) as u64
        } else {
            (m.subj.len() + m.hdr.len() + m.data.len() + 16) as u64
        }
    }
    fn bytes(&self) -> u64 {
        self.msgs.values().map(|m| self.size(m)).sum()
    }
    fn count(&self, subj: &str) -> u64 {
        self.msgs.values().filter(|m| m.subj == subj).count() as u64
    }
    fn expire(&mut self, now: i64) {
        let age = self.l.max_age.map(|a| a.as_nanos() as i64);
        self.msgs.retain(|_, m| {
            !(m.exp.is_some_and(|e| e <= now) || (!m.never && age.is_some_and(|a| m.ts <= now - a)))
        });
    }
    fn append(&mut self, m: M, ttl: bool) -> Result<u64, &'static str> {
        self.expire(m.ts);
        let l = &self.l;
        if l.max_msg_size
            .is_some_and(|x| (m.hdr.len() + m.data.len()) as u64 > x)
        {
            return Err("size");
        }
        if ttl && !l.allow_msg_ttl {
            return Err("ttl");
        }
        if l.discard == Discard::New {
            let asl = l
                .max_msgs_per_subject
                .is_some_and(|p| self.count(&m.subj) >= p);
            if asl && l.discard_new_per_subject {
                return Err("per");
            }
            if !asl {
                if l.max_msgs.is_some_and(|x| self.msgs.len() as u64 >= x) {
                    return Err("msgs");
                }
                if l.max_bytes
                    .is_some_and(|x| self.bytes() + self.size(&m) > x)
                {
                    return Err("bytes");
                }
            }
        }
        self.last += 1;
        self.last_ts = m.ts;
        let seq = self.last;
        let subj = m.subj.clone();
        self.msgs.insert(seq, m);
        if let Some(p) = self.l.max_msgs_per_subject {
            while self.count(&subj) > p {
                let s = *self.msgs.iter().find(|(_, m)| m.subj == subj).unwrap().0;
                self.msgs.remove(&s);
            }
        }
        if let Some(x) = self.l.max_msgs {
            while self.msgs.len() as u64 > x {
                self.msgs.pop_first();
            }
        }
        if let Some(x) = self.l.max_bytes {
            while self.bytes() > x {
                self.msgs.pop_first();
            }
        }
        Ok(seq)
    }
    fn purge(&mut self, f: &str, up_to: u64, keep: u64) {
        let m: Vec<u64> = self
            .msgs
            .iter()
            .filter(|(_, m)| matches(f, &m.subj))
            .map(|(s, _)| *s)
            .collect();
        let total = m.len() as u64;
        if keep > 0 && keep >= total {
            return;
        }
        for s in m.into_iter().take((total - keep) as usize) {
            if up_to > 0 && s >= up_to {
                break;
            }
            self.msgs.remove(&s);
        }
    }
    fn compact(&mut self, seq: u64) {
        if seq > self.last + 1 {
            self.msgs.clear();
            self.last = seq - 1;
        } else {
            self.msgs.retain(|s, _| *s >= seq);
        }
    }
    fn first(&self) -> u64 {
        match self.msgs.keys().next() {
            Some(s) => *s,
            None if self.last == 0 => 0,
            None => self.last + 1,
        }
    }
    fn check(&self, st: &StreamState) {
        let first = self.first();
        assert_eq!(st.msgs, self.msgs.len() as u64, "msgs");
        assert_eq!(st.bytes, self.bytes(), "bytes");
        assert_eq!(st.first_seq, first, "first_seq");
        assert_eq!(st.last_seq, self.last, "last_seq");
        assert_eq!(st.last_ts, self.last_ts, "last_ts");
        assert_eq!(
            st.first_ts,
            self.msgs.values().next().map(|m| m.ts).unwrap_or(0),
            "first_ts"
        );
        let deleted: Vec<u64> = if self.msgs.is_empty() {
            vec![]
        } else {
            (first..=self.last)
                .filter(|s| !self.msgs.contains_key(s))
                .collect()
        };
        assert_eq!(st.deleted, deleted, "deleted");
        assert_eq!(st.num_deleted, deleted.len() as u64);
        let mut subs: Vec<&str> = self.msgs.values().map(|m| m.subj.as_str()).collect();
        subs.sort();
        subs.dedup();
        assert_eq!(st.num_subjects, subs.len() as u64, "num_subjects");
    }
}

fn err_kind(e: &StoreError) -> &'static str {
    match e {
        StoreError::MsgTooLarge => "size",
        StoreError::TtlDisabled => "ttl",
        StoreError::MaxMsgsPerSubject => "per",
        StoreError::MaxMsgs => "msgs",
        StoreError::MaxBytes => "bytes",
        other => panic!("unexpected error {other}"),
    }
}

/// Runs `ops` on the file store (`file`, restarts included) or the memory store,
/// checking every answer and the state after every step against the model.
async fn run_case(limits: Limits, enc: Option<Cipher>, ops: Vec<Op>, file: bool) {
    let dir = tmpdir();
    let mut c = cfg(dir.path());
    c.segment_size = 64 << 10;
    c.limits = limits.clone();
    c.encryption = enc.map(|cipher| Encryption {
        cipher,
        key: b"model-key".to_vec(),
    });
    let mut store = if file {
        AnyStore::File(FileStore::open(c.clone()).await.unwrap())
    } else {
        AnyStore::Memory(Box::new(MemStore::new(limits.clone())))
    };
    let mut model = Model {
        l: limits,
        file,
        msgs: BTreeMap::new(),
        last: 0,
        last_ts: 0,
    };
    let mut now: i64 = 1;
    for (i, op) in ops.into_iter().enumerate() {
        match op {
            Op::Append {
                subj,
                hdr,
                len,
                dt,
                ttl,
            } => {
                now += dt;
                let subj = SUBJECTS[subj];
                let h: Vec<u8> = (0..hdr).map(|j| (i + j) as u8).collect();
                let d: Vec<u8> = (0..len).map(|j| (i * 7 + j) as u8).collect();
                let ttl = ttl.map(|t| {
                    if t == 0 {
                        MsgTtl::Never
                    } else {
                        MsgTtl::After(Duration::from_nanos(t as u64 * 4))
                    }
                });
                let m = M {
                    subj: subj.into(),
                    hdr: h.clone(),
                    data: d.clone(),
                    ts: now,
                    exp: match ttl {
                        Some(MsgTtl::After(x)) => Some(now + x.as_nanos() as i64),
                        _ => None,
                    },
                    never: ttl == Some(MsgTtl::Never),
                };
                let want = model.append(m, ttl.is_some());
                let a = store.append(subj, &h, &d, now, ttl).await;
                match want {
                    Ok(seq) => assert_eq!(a.unwrap(), seq),
                    Err(k) => assert_eq!(err_kind(&a.unwrap_err()), k),
                }
            }
            Op::Delete { back, erase } => {
                let seq = model.last.saturating_sub(back);
                let want = model.msgs.remove(&seq).is_some();
                assert_eq!(store.delete(seq, erase).await.unwrap(), want);
            }
            Op::Purge {
                filter,
                up_to_back,
                keep,
            } => {
                let up_to = up_to_back
                    .map(|b| model.last.saturating_sub(b).max(1))
                    .unwrap_or(0);
                let req = Purge {
                    filter: FILTERS[filter].into(),
                    up_to,
                    keep,
                };
                let before = model.msgs.len();
                if strait_storage::subject::is_match_all(&req.filter) && up_to == 0 && keep == 0 {
                    model.msgs.clear();
                } else {
                    model.purge(&req.filter, up_to, keep);
                }
                let n = (before - model.msgs.len()) as u64;
                assert_eq!(store.purge(&req).await.unwrap(), n);
            }
            Op::Compact { back } => {
                let seq = (model.last as i64 - back).max(1) as u64;
                let before = model.msgs.len();
                model.compact(seq);
                let n = (before - model.msgs.len()) as u64;
                assert_eq!(store.compact(seq).await.unwrap(), n);
            }
            Op::Expire { dt } => {
                now += dt;
                let before = model.msgs.len();
                model.expire(now);
                let n = (before - model.msgs.len()) as u64;
                assert_eq!(store.expire(now).await.unwrap(), n);
            }
            Op::Restart => {
                if let AnyStore::File(fs) = &store {
                    fs.close().await.unwrap();
                    let fs = FileStore::open(c.clone()).await.unwrap();
                    assert!(fs.recovery_report().corruptions.is_empty());
                    assert!(fs.recovery_report().torn_tail.is_none());
                    store = AnyStore::File(fs);
                }
            }
            Op::Next { back, filter } => {
                let start = model.last.saturating_sub(back);
                let f = FILTERS[filter];
                let want = model
                    .msgs
                    .range(start..)
                    .find(|(_, m)| matches(f, &m.subj))
                    .map(|(s, _)| *s);
                let a = store.load_next(start, f).await.ok().map(|m| m.seq);
                assert_eq!(a, want, "load_next({start}, {f:?})");
            }
            Op::Last { filter } => {
                let f = FILTERS[filter];
                let want = model
                    .msgs
                    .iter()
                    .rev()
                    .find(|(_, m)| matches(f, &m.subj))
                    .map(|(s, _)| *s);
                let a = store.load_last(f).await.ok().map(|m| m.seq);
                assert_eq!(a, want, "load_last({f:?})");
            }
        }
        model.check(&store.state());
        let mut subjects = BTreeMap::new();
        for m in model.msgs.values() {
            *subjects.entry(m.subj.clone()).or_insert(0u64) += 1;
        }
        assert_eq!(store.subjects_state(">"), subjects, "subjects after op {i}");
    }
    if file {
        store.close().await.unwrap();
        store = AnyStore::File(FileStore::open(c.clone()).await.unwrap());
        model.check(&store.state());
    }
    for (seq, m) in &model.msgs {
        let a = store.load(*seq).await.unwrap();
        assert_eq!(
            (a.subject.as_str(), &a.headers[..], &a.payload[..], a.ts),
            (m.subj.as_str(), &m.hdr[..], &m.data[..], m.ts)
        );
    }
    store.close().await.unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, max_shrink_iters: 200, ..ProptestConfig::default() })]
    #[test]
    fn stores_agree_with_model(
        limits in limits(),
        enc in prop::option::weighted(0.25, prop_oneof![Just(Cipher::ChaCha), Just(Cipher::Aes)]),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        run(run_case(limits.clone(), enc, ops.clone(), true));
        run(run_case(limits, None, ops, false));
    }
}
