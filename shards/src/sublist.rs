//! The subscription index: a trie over subject tokens with `*` and `>` branches,
//! plus a cache of match results for hot literal subjects.
//!
//! It is generic over the entry type so the same structure indexes a shard's local
//! subscriptions and its replica of the other shards' interest (see `interest.rs`).
//! Single-threaded by design: each shard owns its own index.

use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;

use crate::subject::{FWC, PWC, SEP};

type Map<K, V> = HashMap<K, V, ahash::RandomState>;

/// Most cached results kept before the cache is dropped wholesale. Request/reply
/// traffic on unique inboxes would otherwise grow it without bound.
const CACHE_LIMIT: usize = 4096;

/// What a literal subject matched: plain subscriptions, and queue groups merged by name.
#[derive(Debug)]
pub struct Matches<T> {
    pub plain: Vec<T>,
    pub queues: Vec<QueueGroup<T>>,
}

impl<T> Matches<T> {
    pub fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.queues.is_empty()
    }
}

/// Members of one queue group that matched a subject.
#[derive(Debug)]
pub struct QueueGroup<T> {
    pub name: Bytes,
    pub members: Vec<T>,
}

#[derive(Debug)]
struct Node<T> {
    next: Option<Box<Level<T>>>,
    plain: Vec<T>,
    queues: Vec<(Bytes, Vec<T>)>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            next: None,
            plain: Vec::new(),
            queues: Vec::new(),
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.plain.is_empty()
            && self.queues.is_empty()
            && self.next.as_ref().is_none_or(|l| l.is_empty())
    }
}

#[derive(Debug)]
struct Level<T> {
    literal: Map<Box<[u8]>, Node<T>>,
    pwc: Option<Box<Node<T>>>,
    fwc: Option<Box<Node<T>>>,
}

impl<T> Default for Level<T> {
    fn default() -> Self {
        Level {
            literal: Map::default(),
            pwc: None,
            fwc: None,
        }
    }
}

impl<T> Level<T> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty() && self.pwc.is_none() && self.fwc.is_none()
    }
}

/// Counters for monitoring (/subsz).
#[derive(Debug, Clone, Copy, Default)]
pub struct SublistStats {
    pub cache_entries: usize,
    /// Largest and summed fan-out (plain entries plus queue groups) of cached results.
    pub max_fanout: usize,
    pub total_fanout: usize,
    pub inserts: u64,
    pub removes: u64,
    pub matches: u64,
    pub cache_hits: u64,
}

/// The subscription index.
#[derive(Debug)]
pub struct Sublist<T> {
    root: Level<T>,
    count: usize,
    cache: Map<Box<[u8]>, Rc<Matches<T>>>,
    stats: SublistStats,
}

impl<T> Default for Sublist<T> {
    fn default() -> Self {
        Sublist {
            root: Level::default(),
            count: 0,
            cache: Map::default(),
            stats: SublistStats::default(),
        }
    }
}

impl<T: Clone + PartialEq> Sublist<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries in the index.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds `entry` under `subject` (already validated), in queue group `queue` if given.
    pub fn insert(&mut self, subject: &[u8], queue: Option<&[u8]>, entry: T) {
        let mut level = &mut self.root;
        let mut tokens = subject.split(|&b| b == SEP).peekable();
        let node = loop {
            let token = tokens.next().unwrap_or_default();
            let node: &mut Node<T> = match token {
                [PWC] => level.pwc.get_or_insert_with(Box::default),
                [FWC] => level.fwc.get_or_insert_with(Box::default),
                _ => level.literal.entry(token.into()).or_default(),
            };
            if tokens.peek().is_none() {
                break node;
            }
            level = node.next.get_or_insert_with(Box::default);
        };
        match queue {
            None => node.plain.push(entry),
            Some(q) => match node.queues.iter_mut().find(|(name, _)| &name[..] == q) {
                Some((_, members)) => members.push(entry),
                None => node.queues.push((Bytes::copy_from_slice(q), vec![entry])),
            },
        }
        self.count += 1;
        self.stats.inserts += 1;
        self.cache.clear();
    }

    /// Removes one `entry` previously inserted with the same subject and queue.
    /// Returns false when it was not there.
    pub fn remove(&mut self, subject: &[u8], queue: Option<&[u8]>, entry: &T) -> bool {
        let tokens: Vec<&[u8]> = subject.split(|&b| b == SEP).collect();
        let removed = remove_from(&mut self.root, &tokens, queue, entry);
        if removed {
            self.count -= 1;
            self.stats.removes += 1;
            self.cache.clear();
        }
        removed
    }

    /// Everything that a literal subject matches. Results are cached until the index
    /// changes, so hot subjects cost one hash lookup.
    pub fn matches(&mut self, subject: &[u8]) -> Rc<Matches<T>> {
        self.stats.matches += 1;
        if let Some(hit) = self.cache.get(subject) {
            self.stats.cache_hits += 1;
            return hit.clone();
        }
        let mut result = Matches {
            plain: Vec::new(),
            queues: Vec::new(),
        };
        let tokens: Vec<&[u8]> = subject.split(|&b| b == SEP).collect();
        // A subject with an empty token matches nothing, as in nats-server.
        if tokens.iter().all(|t| !t.is_empty()) {
            collect(&self.root, &tokens, &mut result);
        }
        let result = Rc::new(result);
        if self.cache.len() >= CACHE_LIMIT {
            self.cache.clear();
        }
        self.cache.insert(subject.into(), result.clone());
        result
    }

    /// Counters for monitoring.
    pub fn stats(&self) -> SublistStats {
        let fanouts = self.cache.values().map(|m| m.plain.len() + m.queues.len());
        let (max_fanout, total_fanout) =
            fanouts.fold((0, 0), |(max, sum), f| (max.max(f), sum + f));
        SublistStats {
            cache_entries: self.cache.len(),
            max_fanout,
            total_fanout,
            ..self.stats
        }
    }

    /// Visits every entry with its subject and queue (for monitoring and resync).
    pub fn for_each(&self, mut f: impl FnMut(&[u8], Option<&[u8]>, &T)) {
        let mut path = Vec::new();
        walk(&self.root, &mut path, &mut f);
    }
}

fn add_node<T: Clone>(node: &Node<T>, result: &mut Matches<T>) {
    result.plain.extend(node.plain.iter().cloned());
    for (name, members) in &node.queues {
        match result.queues.iter_mut().find(|g| g.name == *name) {
            Some(group) => group.members.extend(members.iter().cloned()),
            None => result.queues.push(QueueGroup {
                name: name.clone(),
                members: members.clone(),
            }),
        }
    }
}

/// Walks the levels as nats-server's `matchLevel` does, so that results come in
/// its order: at each level the `>` node, then what lies under `*`, then the
/// literal path; at the last level the literal node before the `*` node.
fn collect<T: Clone>(mut level: &Level<T>, tokens: &[&[u8]], result: &mut Matches<T>) {
    let mut literal = None;
    let mut pwc = None;
    for (i, token) in tokens.iter().enumerate() {
        if let Some(fwc) = &level.fwc {
            add_node(fwc, result);
        }
        pwc = level.pwc.as_deref();
        if let Some(next) = pwc.and_then(|p| p.next.as_deref()) {
            collect(next, &tokens[i + 1..], result);
        }
        literal = level.literal.get(*token);
        let last = i + 1 == tokens.len();
        match literal.and_then(|n| n.next.as_deref()) {
            Some(next) if !last => level = next,
            _ if !last => return,
            _ => {}
        }
    }
    if let Some(node) = literal {
        add_node(node, result);
    }
    if let Some(node) = pwc {
        add_node(node, result);
    }
}

fn remove_from<T: PartialEq>(
    level: &mut Level<T>,
    tokens: &[&[u8]],
    queue: Option<&[u8]>,
    entry: &T,
) -> bool {
    let Some((first, rest)) = tokens.split_first() else {
        return false;
    };
    let node: &mut Node<T> = match *first {
        [PWC] => match level.pwc.as_deref_mut() {
            Some(n) => n,
            None => return false,
        },
        [FWC] => match level.fwc.as_deref_mut() {
            Some(n) => n,
            None => return false,
        },
        literal => match level.literal.get_mut(literal) {
            Some(n) => n,
            None => return false,
        },
    };
    let removed = if rest.is_empty() {
        remove_entry(node, queue, entry)
    } else {
        match node.next.as_deref_mut() {
            Some(next) => remove_from(next, rest, queue, entry),
            None => false,
        }
    };
    if removed && node.is_empty() {
        match *first {
            [PWC] => level.pwc = None,
            [FWC] => level.fwc = None,
            literal => {
                level.literal.remove(literal);
            }
        }
    } else if removed {
        if let Some(next) = &node.next {
            if next.is_empty() {
                node.next = None;
            }
        }
    }
    removed
}

fn remove_entry<T: PartialEq>(node: &mut Node<T>, queue: Option<&[u8]>, entry: &T) -> bool {
    match queue {
        None => match node.plain.iter().position(|e| e == entry) {
            Some(i) => {
                node.plain.swap_remove(i);
                true
            }
            None => false,
        },
        Some(q) => {
            let Some(gi) = node.queues.iter().position(|(n, _)| &n[..] == q) else {
                return false;
            };
            let members = &mut node.queues[gi].1;
            let Some(i) = members.iter().position(|e| e == entry) else {
                return false;
            };
            members.swap_remove(i);
            if members.is_empty() {
                node.queues.swap_remove(gi);
            }
            true
        }
    }
}

fn walk<T>(level: &Level<T>, path: &mut Vec<u8>, f: &mut impl FnMut(&[u8], Option<&[u8]>, &T)) {
    let mut visit = |token: &[u8], node: &Node<T>, path: &mut Vec<u8>| {
        let mark = path.len();
        if !path.is_empty() {
            path.push(SEP);
        }
        path.extend_from_slice(token);
        for e in &node.plain {
            f(path, None, e);
        }
        for (q, members) in &node.queues {
            for e in members {
                f(path, Some(q), e);
            }
        }
        if let Some(next) = &node.next {
            walk(next, path, f);
        }
        path.truncate(mark);
    };
    for (token, node) in &level.literal {
        visit(token, node, path);
    }
    if let Some(n) = &level.pwc {
        visit(b"*", n, path);
    }
    if let Some(n) = &level.fwc {
        visit(b">", n, path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subject;
    use proptest::prelude::*;

    fn plain(sl: &mut Sublist<u32>, s: &str) -> Vec<u32> {
        let mut v = sl.matches(s.as_bytes()).plain.clone();
        v.sort();
        v
    }

    #[test]
    fn literal_and_wildcards() {
        let mut sl = Sublist::new();
        sl.insert(b"foo.bar", None, 1);
        sl.insert(b"foo.*", None, 2);
        sl.insert(b"foo.>", None, 3);
        sl.insert(b">", None, 4);
        sl.insert(b"*.bar", None, 5);
        sl.insert(b"foo.bar.baz", None, 6);
        assert_eq!(plain(&mut sl, "foo.bar"), vec![1, 2, 3, 4, 5]);
        assert_eq!(plain(&mut sl, "foo.bar.baz"), vec![3, 4, 6]);
        assert_eq!(plain(&mut sl, "foo"), vec![4]);
        assert_eq!(plain(&mut sl, "bar.baz"), vec![4]);
        assert_eq!(sl.len(), 6);
        assert!(sl.remove(b"foo.*", None, &2));
        assert!(!sl.remove(b"foo.*", None, &2));
        assert_eq!(plain(&mut sl, "foo.bar"), vec![1, 3, 4, 5]);
    }

    #[test]
    fn queues_merge_by_name() {
        let mut sl = Sublist::new();
        sl.insert(b"orders.new", Some(b"workers"), 1);
        sl.insert(b"orders.*", Some(b"workers"), 2);
        sl.insert(b"orders.>", Some(b"audit"), 3);
        sl.insert(b"orders.>", None, 4);
        let m = sl.matches(b"orders.new");
        assert_eq!(m.plain, vec![4]);
        assert_eq!(m.queues.len(), 2);
        let workers = m.queues.iter().find(|g| &g.name[..] == b"workers").unwrap();
        let mut members = workers.members.clone();
        members.sort();
        assert_eq!(members, vec![1, 2]);
        assert!(sl.remove(b"orders.new", Some(b"workers"), &1));
        assert!(!sl.remove(b"orders.new", Some(b"other"), &2));
        let m = sl.matches(b"orders.new");
        assert_eq!(m.queues.iter().map(|g| g.members.len()).sum::<usize>(), 2);
    }

    #[test]
    fn removal_prunes_nodes() {
        let mut sl = Sublist::new();
        sl.insert(b"a.b.c.d", None, 1);
        sl.insert(b"a.*.c", Some(b"q"), 2);
        assert!(sl.remove(b"a.b.c.d", None, &1));
        assert!(sl.remove(b"a.*.c", Some(b"q"), &2));
        assert!(sl.root.is_empty());
        assert!(sl.is_empty());
    }

    #[test]
    fn cache_is_invalidated() {
        let mut sl = Sublist::new();
        sl.insert(b"x", None, 1);
        assert_eq!(plain(&mut sl, "x"), vec![1]);
        sl.insert(b"x", None, 2);
        assert_eq!(plain(&mut sl, "x"), vec![1, 2]);
        sl.remove(b"x", None, &1);
        assert_eq!(plain(&mut sl, "x"), vec![2]);
    }

    #[test]
    fn for_each_visits_all() {
        let mut sl = Sublist::new();
        sl.insert(b"a.>", None, 1);
        sl.insert(b"a.*.c", Some(b"q"), 2);
        let mut seen = Vec::new();
        sl.for_each(|s, q, e| {
            seen.push((String::from_utf8_lossy(s).into_owned(), q.is_some(), *e))
        });
        seen.sort();
        assert_eq!(
            seen,
            vec![("a.*.c".into(), true, 2), ("a.>".into(), false, 1)]
        );
    }

    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("c".to_string()),
            Just("*".to_string()),
            Just(">".to_string())
        ]
    }

    fn filter() -> impl Strategy<Value = String> {
        prop::collection::vec(token(), 1..4).prop_filter_map("valid", |t| {
            let s = t.join(".");
            subject::is_valid_subject(s.as_bytes()).then_some(s)
        })
    }

    fn literal() -> impl Strategy<Value = String> {
        prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c")], 1..5)
            .prop_map(|t| t.join("."))
    }

    proptest! {
        // The trie must agree with brute-force matching over any insert/remove history.
        #[test]
        fn agrees_with_brute_force(
            ops in prop::collection::vec((filter(), any::<bool>()), 1..40),
            probes in prop::collection::vec(literal(), 1..10),
        ) {
            let mut sl = Sublist::new();
            let mut model: Vec<(String, u32)> = Vec::new();
            for (i, (f, remove)) in ops.iter().enumerate() {
                if *remove {
                    if let Some(pos) = model.iter().position(|(m, _)| m == f) {
                        let (_, id) = model.remove(pos);
                        prop_assert!(sl.remove(f.as_bytes(), None, &id));
                    }
                } else {
                    sl.insert(f.as_bytes(), None, i as u32);
                    model.push((f.clone(), i as u32));
                }
                for p in &probes {
                    let mut want: Vec<u32> = model.iter()
                        .filter(|(f, _)| subject::matches(f.as_bytes(), p.as_bytes()))
                        .map(|(_, id)| *id).collect();
                    want.sort();
                    prop_assert_eq!(plain(&mut sl, p), want);
                }
            }
            prop_assert_eq!(sl.len(), model.len());
        }
    }
}
