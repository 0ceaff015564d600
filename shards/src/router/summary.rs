//! What a router tells its peers about its plain (non-queue) subscriptions: a
//! summary of them, not a copy.
//!
//! Every peer used to hold every other peer's subjects, so half a million
//! subscriptions cost half a million index entries on each shard. Instead, the
//! owner keeps a small trie of its own plain interest and advertises patterns that
//! cover it: a subject as it is while its part of the trie is small, and
//! `<prefix>.>` once a node fans out past `max_fanout` children or the whole trie
//! past `max_nodes` nodes (then branching nodes are folded deepest level first,
//! which loses the least precision, until half the budget is left). A folded node counts what lies below it and keeps no
//! children, so the trie's size has a bound whatever the number of subscriptions,
//! and a subscription covered by an advertised pattern costs the peers nothing.
//!
//! The advertised patterns are a superset of the real interest: a peer may send a
//! message that matches no subscription here (a wasted hop, which the receiving
//! router counts) but never withholds one that matches. The receiving router
//! matches every message against its exact local index anyway. Queue
//! subscriptions are not summarized: picking one member across peers needs exact
//! member counts.
//!
//! A folded node is never unfolded while anything below it remains (what it
//! covered is no longer known); when its count reaches zero its pattern is
//! withdrawn and the node goes, so memory comes back when subscriptions do.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};

/// A change in what is advertised: tell the peers about `Add`, and that `Remove`
/// no longer holds. Folding sends the covering `Add` before the `Remove`s of what
/// it covers, so a peer never lacks interest in between.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Change {
    /// `folded`: the pattern covers subscriptions rather than being one.
    Add {
        pattern: Bytes,
        folded: bool,
    },
    Remove(Bytes),
}

/// Children past which a node is folded into `<prefix>.>`.
pub const DEFAULT_MAX_FANOUT: usize = 1024;
/// Leaves past which a node folds once the trie holds a quarter of its budget.
pub const LEAF_FANOUT: usize = 8;
/// Nodes past which branching nodes are folded, deepest first.
pub const DEFAULT_MAX_NODES: usize = 4 * 1024;

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Bytes, Node, ahash::RandomState>,
    /// Subscriptions whose subject ends at this node.
    terminal: u32,
    /// Folded: the subscriptions below this node, advertised as `<prefix>.>`.
    folded: Option<u32>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.terminal == 0 && self.folded.is_none() && self.children.is_empty()
    }

    /// Nodes below this one.
    fn descendants(&self) -> usize {
        self.children
            .values()
            .map(|c| 1 + c.descendants())
            .sum::<usize>()
    }

    /// Subscriptions below this node (its own terminal ones excluded).
    fn count_below(&self) -> u32 {
        self.children
            .values()
            .map(|c| c.terminal + c.folded.unwrap_or(0) + c.count_below())
            .sum()
    }

    /// Every pattern advertised for this node's subtree (this node's terminal one
    /// excluded); `prefix` is the node's subject.
    fn patterns_below(&self, prefix: &[u8], out: &mut Vec<Bytes>) {
        for (token, child) in &self.children {
            let subject = join(prefix, token);
            if child.terminal > 0 {
                out.push(Bytes::copy_from_slice(&subject));
            }
            if child.folded.is_some() {
                out.push(folded_pattern(&subject));
            }
            child.patterns_below(&subject, out);
        }
    }
}

fn join(prefix: &[u8], token: &[u8]) -> Vec<u8> {
    let mut s = Vec::with_capacity(prefix.len() + 1 + token.len());
    if !prefix.is_empty() {
        s.extend_from_slice(prefix);
        s.push(b'.');
    }
    s.extend_from_slice(token);
    s
}

/// `<prefix>.>`, or `>` for the root.
fn folded_pattern(prefix: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(prefix.len() + 2);
    if !prefix.is_empty() {
        b.put_slice(prefix);
        b.put_u8(b'.');
    }
    b.put_u8(b'>');
    b.freeze()
}

/// The summary of one account's plain interest on one router.
#[derive(Debug)]
pub struct InterestSummary {
    root: Node,
    nodes: usize,
    max_fanout: usize,
    max_nodes: usize,
}

impl Default for InterestSummary {
    fn default() -> Self {
        InterestSummary::new(DEFAULT_MAX_FANOUT, DEFAULT_MAX_NODES)
    }
}

impl InterestSummary {
    pub fn new(max_fanout: usize, max_nodes: usize) -> Self {
        InterestSummary {
            root: Node::default(),
            nodes: 0,
            max_fanout: max_fanout.max(1),
            max_nodes: max_nodes.max(1),
        }
    }

    /// Nodes held (the bound the summary keeps).
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// Counts one more subscription on `subject` (a valid subscription subject);
    /// what the peers must be told is appended to `changes`. The tokens kept are
    /// slices of `subject`, not copies.
    pub fn insert(&mut self, subject: &Bytes, changes: &mut Vec<Change>) {
        let tokens: Vec<Bytes> = tokens(subject);
        let mut node = &mut self.root;
        let mut created = 0;
        for token in &tokens {
            if let Some(n) = node.folded.as_mut() {
                *n += 1;
                return;
            }
            node = node.children.entry(token.clone()).or_insert_with(|| {
                created += 1;
                Node::default()
            });
        }
        self.nodes += created;
        node.terminal += 1;
        if node.terminal == 1 {
            changes.push(Change::Add {
                pattern: subject.clone(),
                folded: false,
            });
        }
        // Once the trie is large, a node whose children are all leaves folds
        // early: interest this big is rarely exact-matched usefully, and waiting
        // for the budget would advertise, then withdraw, nearly every leaf.
        if self.nodes > self.max_nodes / 4 && !tokens.is_empty() {
            let parent = &tokens[..tokens.len() - 1];
            let leafy = self.node_at(parent).is_some_and(|n| {
                n.children.len() > LEAF_FANOUT && n.children.values().all(|c| c.children.is_empty())
            });
            if leafy {
                self.fold(parent, changes);
                return;
            }
        }
        // Fold a node that fans out too far, the deepest first.
        for depth in (0..tokens.len()).rev() {
            let fanout = self
                .node_at(&tokens[..depth])
                .map_or(0, |n| n.children.len());
            if fanout > self.max_fanout {
                self.fold(&tokens[..depth], changes);
                break;
            }
        }
        if self.nodes > self.max_nodes {
            self.fold_to_fit(changes);
        }
    }

    /// Folds until the trie holds at most half its budget, so that this happens
    /// rarely (the walk is over the whole trie) and what is advertised settles:
    /// every branching node at the deepest level first, which loses the least
    /// precision (`dev.<n>.temp.>` for each `n` rather than `dev.>`), then the
    /// level above, and so on; the root last.
    fn fold_to_fit(&mut self, changes: &mut Vec<Change>) {
        let mut by_depth: Vec<Vec<Vec<Bytes>>> = Vec::new();
        collect_branching(&self.root, &mut Vec::new(), &mut by_depth);
        while let Some(level) = by_depth.pop() {
            for path in level {
                self.fold(&path, changes);
            }
            if self.nodes <= self.max_nodes / 2 {
                return;
            }
        }
        // Only chains are left: the root goes.
        if self.nodes > self.max_nodes {
            self.fold(&[], changes);
        }
    }

    /// Counts one subscription on `subject` less; what the peers must be told is
    /// appended to `changes`. Removing what was never inserted does nothing.
    pub fn remove(&mut self, subject: &[u8], changes: &mut Vec<Change>) {
        let tokens: Vec<&[u8]> = subject.split(|&b| b == b'.').collect();
        let mut removed_nodes = 0;
        remove_at(&mut self.root, &tokens, 0, &[], changes, &mut removed_nodes);
        self.nodes -= removed_nodes;
    }

    /// Every pattern advertised now (for a peer that joins, and for tests).
    pub fn patterns(&self) -> Vec<Bytes> {
        let mut out = Vec::new();
        if self.root.folded.is_some() {
            out.push(folded_pattern(b""));
        }
        self.root.patterns_below(b"", &mut out);
        out
    }

    fn node_at(&self, path: &[Bytes]) -> Option<&Node> {
        let mut node = &self.root;
        for token in path {
            node = node.children.get(token)?;
        }
        Some(node)
    }

    /// Folds the node at `path` into `<path>.>`.
    fn fold(&mut self, path: &[Bytes], changes: &mut Vec<Change>) {
        let prefix = path.iter().map(|t| &t[..]).collect::<Vec<_>>().join(&b'.');
        let mut node = &mut self.root;
        for token in path {
            match node.children.get_mut(token) {
                Some(n) => node = n,
                None => return,
            }
        }
        if node.children.is_empty() {
            return;
        }
        let mut covered = Vec::new();
        node.patterns_below(&prefix, &mut covered);
        let below = node.count_below();
        let dropped = node.descendants();
        node.children.clear();
        node.folded = Some(below);
        self.nodes -= dropped;
        let pattern = folded_pattern(&prefix);
        // A subscription on `<path>.>` itself was advertised already: it is
        // advertised again, now as folded.
        changes.push(Change::Add {
            pattern: pattern.clone(),
            folded: true,
        });
        changes.extend(
            covered
                .into_iter()
                .filter(|p| *p != pattern)
                .map(Change::Remove),
        );
    }
}

/// The paths of the nodes with two children or more, by depth.
fn collect_branching(node: &Node, path: &mut Vec<Bytes>, by_depth: &mut Vec<Vec<Vec<Bytes>>>) {
    if node.children.len() >= 2 {
        if by_depth.len() <= path.len() {
            by_depth.resize_with(path.len() + 1, Vec::new);
        }
        by_depth[path.len()].push(path.clone());
    }
    for (token, child) in &node.children {
        path.push(token.clone());
        collect_branching(child, path, by_depth);
        path.pop();
    }
}

fn tokens(subject: &Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, &b) in subject.iter().enumerate() {
        if b == b'.' {
            out.push(subject.slice(start..i));
            start = i + 1;
        }
    }
    out.push(subject.slice(start..));
    out
}

/// Removes one subscription on `tokens[depth..]` below `node` (whose subject is
/// `prefix`), pruning what empties. Returns whether `node` is now empty.
fn remove_at(
    node: &mut Node,
    tokens: &[&[u8]],
    depth: usize,
    prefix: &[u8],
    changes: &mut Vec<Change>,
    removed_nodes: &mut usize,
) -> bool {
    if depth == tokens.len() {
        if node.terminal > 0 {
            node.terminal -= 1;
            if node.terminal == 0 {
                changes.push(Change::Remove(Bytes::copy_from_slice(prefix)));
            }
        }
        return node.is_empty();
    }
    if let Some(n) = node.folded.as_mut() {
        *n = n.saturating_sub(1);
        if *n == 0 {
            node.folded = None;
            changes.push(Change::Remove(folded_pattern(prefix)));
        }
        return node.is_empty();
    }
    let token = tokens[depth];
    let Some(child) = node.children.get_mut(token) else {
        return node.is_empty();
    };
    let subject = join(prefix, token);
    if remove_at(child, tokens, depth + 1, &subject, changes, removed_nodes) {
        node.children.remove(token);
        *removed_nodes += 1;
    }
    node.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sublist::Sublist;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use std::collections::{BTreeSet, HashMap as StdMap};

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    /// Applies changes to a peer's view: the advertised set.
    fn apply(view: &mut BTreeSet<Bytes>, changes: &mut Vec<Change>) {
        for c in changes.drain(..) {
            match c {
                Change::Add { pattern, folded } => {
                    let again = !view.insert(pattern.clone());
                    // Only a subscription on a pattern that then folds is
                    // advertised twice: first as itself, then as folded.
                    assert!(!again || folded, "added twice: {pattern:?}");
                }
                Change::Remove(p) => assert!(view.remove(&p), "removed what was not there"),
            }
        }
    }

    #[test]
    fn small_interest_is_advertised_as_it_is() {
        let mut s = InterestSummary::new(4, 100);
        let mut ch = Vec::new();
        s.insert(&b("a.b"), &mut ch);
        s.insert(&b("a.b"), &mut ch);
        s.insert(&b("a.*"), &mut ch);
        let add = |p: &str| Change::Add {
            pattern: b(p),
            folded: false,
        };
        assert_eq!(ch, vec![add("a.b"), add("a.*")]);
        ch.clear();
        s.remove(b"a.b", &mut ch);
        assert!(ch.is_empty(), "one a.b is left");
        s.remove(b"a.b", &mut ch);
        s.remove(b"a.*", &mut ch);
        assert_eq!(ch, vec![Change::Remove(b("a.b")), Change::Remove(b("a.*"))]);
        assert_eq!(s.nodes(), 0);
        assert!(s.patterns().is_empty());
    }

    #[test]
    fn a_wide_node_folds_and_covered_subscriptions_cost_nothing() {
        let mut s = InterestSummary::new(3, 100);
        let mut view = BTreeSet::new();
        let mut ch = Vec::new();
        for i in 0..4 {
            s.insert(&b(&format!("dev.{i}.temp")), &mut ch);
        }
        apply(&mut view, &mut ch);
        assert_eq!(view, BTreeSet::from([b("dev.>")]));
        assert_eq!(s.nodes(), 1);
        for i in 4..1000 {
            s.insert(&b(&format!("dev.{i}.temp")), &mut ch);
        }
        assert!(ch.is_empty());
        // `dev` itself is not covered by `dev.>`.
        s.insert(&b("dev"), &mut ch);
        apply(&mut view, &mut ch);
        assert!(view.contains(&b("dev")));
        for i in 0..1000 {
            s.remove(format!("dev.{i}.temp").as_bytes(), &mut ch);
        }
        apply(&mut view, &mut ch);
        assert_eq!(view, BTreeSet::from([b("dev")]));
        s.remove(b"dev", &mut ch);
        apply(&mut view, &mut ch);
        assert!(view.is_empty());
        assert_eq!(s.nodes(), 0);
    }

    #[test]
    fn a_subscription_on_the_folded_pattern_itself() {
        let mut s = InterestSummary::new(2, 100);
        let mut view = BTreeSet::new();
        let mut ch = Vec::new();
        for subject in ["a.>", "a.x", "a.y"] {
            s.insert(&b(subject), &mut ch);
        }
        apply(&mut view, &mut ch);
        assert_eq!(view, BTreeSet::from([b("a.>")]));
        for subject in ["a.x", "a.>", "a.y"] {
            s.remove(subject.as_bytes(), &mut ch);
        }
        apply(&mut view, &mut ch);
        assert!(view.is_empty());
    }

    #[test]
    fn the_node_budget_holds() {
        let mut s = InterestSummary::new(1000, 50);
        let mut view = BTreeSet::new();
        let mut ch = Vec::new();
        for i in 0..10_000 {
            s.insert(&b(&format!("t.{}.{}.{i}", i % 7, i % 13)), &mut ch);
            assert!(s.nodes() <= 50, "{}", s.nodes());
        }
        apply(&mut view, &mut ch);
        assert!(view.len() <= 50, "{}", view.len());
    }

    /// Against a model: after every step the advertised patterns, as a peer holds
    /// them, cover every subject of a live subscription, and nothing is left once
    /// every subscription is gone.
    #[test]
    fn advertised_patterns_always_cover_the_interest() {
        let words = ["a", "b", "c", "d", "e", "*", ">"];
        for seed in 0..200u64 {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut s = InterestSummary::new(rng.gen_range(1..5), rng.gen_range(2..40));
            let mut view = BTreeSet::new();
            let mut live: StdMap<Bytes, u32> = StdMap::new();
            let mut ch = Vec::new();
            for _ in 0..300 {
                if live.is_empty() || rng.gen_bool(0.6) {
                    let len = rng.gen_range(1..5);
                    let mut toks: Vec<&str> = (0..len)
                        .map(|_| words[rng.gen_range(0..words.len() - 1)])
                        .collect();
                    if rng.gen_bool(0.2) {
                        toks.push(">");
                    }
                    let subject = b(&toks.join("."));
                    s.insert(&subject, &mut ch);
                    *live.entry(subject).or_default() += 1;
                } else {
                    let keys: Vec<Bytes> = live.keys().cloned().collect();
                    let subject = keys[rng.gen_range(0..keys.len())].clone();
                    s.remove(&subject, &mut ch);
                    let n = live.get_mut(&subject).unwrap();
                    *n -= 1;
                    if *n == 0 {
                        live.remove(&subject);
                    }
                }
                apply(&mut view, &mut ch);
                assert_eq!(view, s.patterns().into_iter().collect(), "seed {seed}");
                let mut index: Sublist<u32> = Sublist::new();
                for p in &view {
                    index.insert(p, None, 0);
                }
                // A subscription's subject, read as a literal, must be covered:
                // every subject it matches is then too.
                for subject in live.keys() {
                    let covered =
                        view.contains(subject) || !index.matches(subject).plain.is_empty();
                    assert!(covered, "seed {seed}: {subject:?} not covered by {view:?}");
                }
            }
            let keys: Vec<(Bytes, u32)> = live.into_iter().collect();
            for (subject, n) in keys {
                for _ in 0..n {
                    s.remove(&subject, &mut ch);
                }
            }
            apply(&mut view, &mut ch);
            assert!(view.is_empty(), "seed {seed}: {view:?}");
            assert_eq!(s.nodes(), 0, "seed {seed}");
        }
    }
}
