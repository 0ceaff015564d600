//! The sequences of one subject, ascending.
//!
//! A stream's sequence only grows, so a subject's new sequence is always above every
//! one it has: the set is a run of sorted chunks appended at the end, and an append is
//! a push (a `BTreeSet` insert walked and split nodes, and was the biggest cost of
//! rebuilding a big stream's index). Removals, mostly at the front (limits, expiry,
//! acknowledged work), find their chunk by binary search; a chunk that empties is
//! dropped.

use std::collections::VecDeque;

/// Sequences per chunk before a new one starts.
const CHUNK: usize = 512;

#[derive(Debug, Clone, Default)]
pub struct SeqSet {
    /// Non-empty, sorted chunks; every sequence of a chunk is below the next chunk's.
    chunks: VecDeque<Vec<u64>>,
    len: usize,
    /// The highest sequence: kept inline
    /// because a scan over many subjects' last sequences (a KV watch, the
    /// last per subject) would otherwise chase two pointers per subject.
    highest: Option<u64>,
}

impl SeqSet {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn first(&self) -> Option<u64> {
        self.chunks.front().and_then(|c| c.first().copied())
    }

    pub fn last(&self) -> Option<u64> {
        self.highest
    }

    /// Adds `seq`; false when it was there already.
    pub fn insert(&mut self, seq: u64) -> bool {
        match self.chunks.back_mut() {
            Some(last) if last.last().is_some_and(|&l| l < seq) => {
                if last.len() < CHUNK {
                    last.push(seq);
                } else {
                    // A subject this big keeps growing: its later chunks are
                    // allocated whole rather than by doubling (a small subject's
                    // only chunk stays small).
                    let mut chunk = Vec::with_capacity(CHUNK);
                    chunk.push(seq);
                    self.chunks.push_back(chunk);
                }
            }
            None => self.chunks.push_back(vec![seq]),
            Some(_) => {
                // Below the last: not how a stream appends, but kept correct.
                let i = self.chunk_for(seq).min(self.chunks.len() - 1);
                let chunk = &mut self.chunks[i];
                match chunk.binary_search(&seq) {
                    Ok(_) => return false,
                    Err(at) => chunk.insert(at, seq),
                }
                if chunk.len() > 2 * CHUNK {
                    let upper = chunk.split_off(CHUNK);
                    self.chunks.insert(i + 1, upper);
                }
            }
        }
        self.len += 1;
        self.highest = self.highest.max(Some(seq));
        true
    }

    /// Removes `seq`; false when it was not there.
    pub fn remove(&mut self, seq: u64) -> bool {
        let i = self.chunk_for(seq);
        let Some(chunk) = self.chunks.get_mut(i) else {
            return false;
        };
        let Ok(at) = chunk.binary_search(&seq) else {
            return false;
        };
        if at == 0 && i == 0 && chunk.len() > 1 && chunk.capacity() > 4 * chunk.len() {
            // The front drains one by one under limits: give back what it no
            // longer needs now and then.
            chunk.shrink_to_fit();
        }
        chunk.remove(at);
        if chunk.is_empty() {
            self.chunks.remove(i);
        }
        self.len -= 1;
        if Some(seq) == self.highest {
            self.highest = self.chunks.back().and_then(|c| c.last().copied());
        }
        true
    }

    /// The first chunk whose last sequence is at or above `seq` (`chunks.len()` when
    /// none is).
    fn chunk_for(&self, seq: u64) -> usize {
        self.chunks
            .partition_point(|c| c.last().is_some_and(|&l| l < seq))
    }

    /// The lowest sequence at or above `start`.
    pub fn first_from(&self, start: u64) -> Option<u64> {
        let chunk = self.chunks.get(self.chunk_for(start))?;
        let at = chunk.partition_point(|&s| s < start);
        chunk.get(at).copied()
    }

    /// The highest sequence at or below `up_to`.
    pub fn last_up_to(&self, up_to: u64) -> Option<u64> {
        // Mostly asked with the stream's last sequence: the set's last it is.
        if let Some(last) = self.last().filter(|&last| last <= up_to) {
            return Some(last);
        }
        let i = self.chunk_for(up_to);
        if let Some(chunk) = self.chunks.get(i) {
            let at = chunk.partition_point(|&s| s <= up_to);
            if at > 0 {
                return Some(chunk[at - 1]);
            }
        }
        i.checked_sub(1)
            .and_then(|p| self.chunks.get(p))
            .and_then(|c| c.last().copied())
    }

    /// How many are at or above `start`.
    pub fn count_from(&self, start: u64) -> usize {
        let i = self.chunk_for(start);
        let below: usize = self.chunks.iter().take(i).map(Vec::len).sum();
        let within = self
            .chunks
            .get(i)
            .map_or(0, |c| c.partition_point(|&s| s < start));
        self.len - below - within
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = u64> + '_ {
        self.chunks.iter().flat_map(|c| c.iter().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeSet;

    #[test]
    fn behaves_as_a_btreeset_under_appends_and_removals() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        for round in 0..20 {
            let mut ours = SeqSet::default();
            let mut model = BTreeSet::new();
            let mut next = 1u64;
            for _ in 0..5_000 {
                match rng.gen_range(0..10) {
                    0..=5 => {
                        next += rng.gen_range(1..4);
                        assert_eq!(ours.insert(next), model.insert(next));
                    }
                    6 | 7 => {
                        // Front removals, as limits do.
                        if let Some(&f) = model.first() {
                            assert!(ours.remove(f));
                            model.remove(&f);
                        }
                    }
                    8 => {
                        let s = rng.gen_range(0..=next + 1);
                        assert_eq!(ours.remove(s), model.remove(&s), "round {round}");
                    }
                    _ => {
                        // Out of order (never from a stream, still right).
                        let s = rng.gen_range(0..=next);
                        assert_eq!(ours.insert(s), model.insert(s));
                    }
                }
                let probe = rng.gen_range(0..=next + 2);
                assert_eq!(ours.len(), model.len());
                assert_eq!(ours.first(), model.first().copied());
                assert_eq!(ours.last(), model.last().copied());
                assert_eq!(ours.first_from(probe), model.range(probe..).next().copied());
                assert_eq!(
                    ours.last_up_to(probe),
                    model.range(..=probe).next_back().copied()
                );
                assert_eq!(ours.count_from(probe), model.range(probe..).count());
            }
            assert!(ours.iter().eq(model.iter().copied()));
        }
    }
}
