//! The hub's index of range and from-key watchers: which distinct ranges contain a key, without
//! looking at every range.
//!
//! Ranges are kept sorted by start key, and over those positions sits a binary tree in which
//! every node knows the range with the largest end below it. A key `k` can only be in a range
//! that starts at or before it (a prefix of the positions, found by binary search), and of
//! those exactly the ones whose end lies beyond `k` contain it. The search descends only into
//! subtrees whose largest end lies beyond `k`, so it costs about log n steps per range found,
//! however the ranges nest or overlap: a wide range at the front (a from-key watch, or a prefix
//! around everything) no longer makes every key look at every range before it.
//!
//! Adding or removing a distinct range is linear in the number of distinct ranges (the tree is
//! rebuilt); adding or removing a watcher of an existing range is not.

use std::cmp::Ordering;

use super::KeyRange;

/// Where a range ends: at a key (exclusive), or never.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    At(Vec<u8>),
    Unbounded,
}

impl End {
    fn of(r: &KeyRange) -> End {
        match r {
            KeyRange::Single(k) => {
                let mut next = k.clone();
                next.push(0);
                End::At(next)
            }
            KeyRange::From(_) => End::Unbounded,
            KeyRange::Range(_, end) => End::At(end.clone()),
        }
    }

    fn beyond(&self, k: &[u8]) -> bool {
        match self {
            End::At(e) => e.as_slice() > k,
            End::Unbounded => true,
        }
    }
}

fn start(r: &KeyRange) -> &[u8] {
    match r {
        KeyRange::Single(k) | KeyRange::From(k) | KeyRange::Range(k, _) => k,
    }
}

/// The index's order: by start key, then by kind and end (any order that tells distinct ranges
/// apart will do; this one needs no allocation).
fn order(a: &KeyRange, b: &KeyRange) -> Ordering {
    fn rest(r: &KeyRange) -> (u8, &[u8]) {
        match r {
            KeyRange::Single(_) => (0, &[]),
            KeyRange::Range(_, end) => (1, end),
            KeyRange::From(_) => (2, &[]),
        }
    }
    start(a).cmp(start(b)).then_with(|| rest(a).cmp(&rest(b)))
}

/// Distinct ranges, each with a value (the hub keeps a group of watchers there).
pub(super) struct RangeIndex<V> {
    entries: Vec<(KeyRange, V)>,
    /// `ends[i]`: where `entries[i]` ends.
    ends: Vec<End>,
    /// Leaves at `leaves..leaves + entries.len()`, node `n`'s children at `2n` and `2n + 1`;
    /// each node holds the position of the range with the largest end below it
    /// ([`NONE`] below an empty subtree).
    tree: Vec<u32>,
    leaves: usize,
}

/// An empty subtree.
const NONE: u32 = u32::MAX;

impl<V> Default for RangeIndex<V> {
    fn default() -> Self {
        RangeIndex {
            entries: Vec::new(),
            ends: Vec::new(),
            tree: Vec::new(),
            leaves: 0,
        }
    }
}

impl<V> RangeIndex<V> {
    fn position(&self, r: &KeyRange) -> Result<usize, usize> {
        self.entries.binary_search_by(|(e, _)| order(e, r))
    }

    /// The value of `r`, created with `new` if `r` is not there yet.
    pub(super) fn get_or_insert_with(&mut self, r: KeyRange, new: impl FnOnce() -> V) -> &mut V {
        let i = match self.position(&r) {
            Ok(i) => i,
            Err(i) => {
                self.ends.insert(i, End::of(&r));
                self.entries.insert(i, (r, new()));
                self.rebuild();
                i
            }
        };
        &mut self.entries[i].1
    }

    pub(super) fn get_mut(&mut self, r: &KeyRange) -> Option<&mut V> {
        let i = self.position(r).ok()?;
        Some(&mut self.entries[i].1)
    }

    pub(super) fn remove(&mut self, r: &KeyRange) -> Option<V> {
        let i = self.position(r).ok()?;
        let (_, v) = self.entries.remove(i);
        self.ends.remove(i);
        self.rebuild();
        Some(v)
    }

    /// Keeps the entries for which `keep` (which may change the value) returns true, in one
    /// rebuild.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&KeyRange, &mut V) -> bool) {
        let entries = std::mem::take(&mut self.entries);
        let ends = std::mem::take(&mut self.ends);
        for ((r, mut v), end) in entries.into_iter().zip(ends) {
            if keep(&r, &mut v) {
                self.entries.push((r, v));
                self.ends.push(end);
            }
        }
        self.rebuild();
    }

    fn rebuild(&mut self) {
        let n = self.entries.len();
        self.leaves = n.next_power_of_two();
        self.tree.clear();
        self.tree.resize(2 * self.leaves, NONE);
        for i in 0..n {
            self.tree[self.leaves + i] = i as u32;
        }
        for node in (1..self.leaves).rev() {
            let (a, b) = (self.tree[2 * node], self.tree[2 * node + 1]);
            self.tree[node] = match (a, b) {
                (NONE, x) | (x, NONE) => x,
                (a, b) if self.ends[b as usize] > self.ends[a as usize] => b,
                (a, _) => a,
            };
        }
    }

    /// Calls `f` with the position of every range that contains `k`, in ascending order
    /// (positions stay valid until the index changes; see [`RangeIndex::at`]).
    pub(super) fn containing(&self, k: &[u8], mut f: impl FnMut(usize)) {
        // Ranges at positions below `before` start at or before `k`.
        let before = self.entries.partition_point(|(r, _)| start(r) <= k);
        if before == 0 {
            return;
        }
        // (node, first position below it, positions below it). Depth first, left child on
        // top: at most one pending sibling per level, and positions are below 2^32.
        let mut stack = [(0usize, 0usize, 0usize); 34];
        stack[0] = (1, 0, self.leaves);
        let mut depth = 1;
        while depth > 0 {
            depth -= 1;
            let (node, lo, width) = stack[depth];
            let best = self.tree[node];
            if lo >= before || best == NONE || !self.ends[best as usize].beyond(k) {
                continue;
            }
            if width == 1 {
                // Starts at or before `k` and ends beyond it: contains it.
                f(lo);
                continue;
            }
            let half = width / 2;
            stack[depth] = (2 * node + 1, lo + half, half);
            stack[depth + 1] = (2 * node, lo, half);
            depth += 2;
        }
    }

    pub(super) fn at(&self, i: usize) -> &V {
        &self.entries[i].1
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn key(rng: &mut StdRng) -> Vec<u8> {
        let len = rng.random_range(0..4);
        (0..len).map(|_| rng.random_range(b'a'..b'e')).collect()
    }

    fn range(rng: &mut StdRng) -> KeyRange {
        let a = key(rng);
        match rng.random_range(0..3) {
            0 => KeyRange::Single(a),
            1 => KeyRange::From(a),
            _ => {
                let mut b = key(rng);
                if b <= a {
                    b = a.clone();
                    b.push(b'z');
                }
                KeyRange::Range(a, b)
            }
        }
    }

    /// Against a linear scan, through random adds and removes (one by one, and a few
    /// [`RangeIndex::retain`]s) of overlapping, nested and unbounded ranges.
    #[test]
    fn finds_exactly_the_ranges_a_linear_scan_finds() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut index: RangeIndex<KeyRange> = RangeIndex::default();
        let mut all: Vec<KeyRange> = Vec::new();
        for step in 0..3000 {
            if step % 500 == 499 {
                let mut dropped = Vec::new();
                index.retain(|r, v| {
                    assert_eq!(v, r);
                    let keep = rng.random_range(0..2) == 0;
                    if !keep {
                        dropped.push(r.clone());
                    }
                    keep
                });
                all.retain(|r| !dropped.contains(r));
            } else if !all.is_empty() && rng.random_range(0..3) == 0 {
                let r = all.swap_remove(rng.random_range(0..all.len()));
                assert_eq!(index.remove(&r), Some(r.clone()));
            } else {
                let r = range(&mut rng);
                if !all.contains(&r) {
                    all.push(r.clone());
                }
                let v = index.get_or_insert_with(r.clone(), || r.clone());
                assert_eq!(*v, r);
            }
            assert_eq!(index.len(), all.len());
            for _ in 0..20 {
                let k = key(&mut rng);
                let mut found: Vec<KeyRange> = Vec::new();
                index.containing(&k, |i| found.push(index.at(i).clone()));
                let mut want: Vec<KeyRange> =
                    all.iter().filter(|r| r.contains(&k)).cloned().collect();
                found.sort_by(order);
                want.sort_by(order);
                assert_eq!(found, want, "step {step}, key {k:?}");
            }
        }
    }

    #[test]
    fn a_missing_range_is_neither_found_nor_removed() {
        let mut index: RangeIndex<u32> = RangeIndex::default();
        *index.get_or_insert_with(KeyRange::From(b"b".to_vec()), || 0) += 1;
        assert!(index.get_mut(&KeyRange::From(b"a".to_vec())).is_none());
        assert_eq!(index.remove(&KeyRange::Single(b"b".to_vec())), None);
        let mut hits: Vec<u32> = Vec::new();
        index.containing(b"a", |i| hits.push(*index.at(i)));
        assert!(hits.is_empty());
        index.containing(b"zz", |i| hits.push(*index.at(i)));
        assert_eq!(hits, vec![1]);
        assert_eq!(index.remove(&KeyRange::From(b"b".to_vec())), Some(1));
        assert!(index.is_empty());
    }
}
