//! The in-memory key index: key -> generations of revisions (etcd's `keyIndex` / `treeIndex`).
//!
//! A key's history is a list of generations. A generation starts with the put that created the
//! key (version 1) and, unless it is the last one, ends with the tombstone that deleted it; the
//! last generation is empty while the key is deleted. The index is fully multi-version: every
//! lookup takes an `at` revision and ignores revisions newer than it, which is what lets readers
//! at an older revision share the index with the writer that is appending newer revisions.
//!
//! Compaction at `C` drops, per key, every generation whose tombstone is `<= C` and, in the first
//! remaining generation, every revision older than the newest one `<= C`. A key left with only an
//! empty generation is removed. After compaction the index holds exactly the backend rows that
//! must survive, which is how the physical compaction decides what to delete.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::revision::Revision;

/// One generation of a key: from its creation to (and including) its tombstone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Generation {
    /// Revision of the put that created this generation (kept even after that row is compacted).
    pub created: Revision,
    /// Version of the newest revision in `revs` (the tombstone counts, like etcd).
    pub ver: i64,
    pub revs: Vec<Revision>,
}

/// History of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeyIndex {
    /// Never empty; the last generation is empty iff the key is currently deleted.
    pub gens: Vec<Generation>,
}

/// What a lookup at a revision finds.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Found {
    pub modified: Revision,
    pub created: Revision,
    pub version: i64,
}

impl Default for KeyIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyIndex {
    pub fn new() -> Self {
        KeyIndex {
            gens: vec![Generation::default()],
        }
    }

    fn last_gen(&mut self) -> &mut Generation {
        let n = self.gens.len() - 1;
        &mut self.gens[n]
    }

    /// Newest revision in the index (of any generation).
    pub fn modified(&self) -> Option<Revision> {
        self.gens.iter().rev().find_map(|g| g.revs.last().copied())
    }

    /// Records a put at `rev` (must be newer than every recorded revision).
    pub fn put(&mut self, rev: Revision) {
        if let Some(m) = self.modified() {
            assert!(
                rev > m,
                "key index: put at {rev:?} not newer than modified {m:?}"
            );
        }
        let g = self.last_gen();
        if g.revs.is_empty() {
            g.created = rev;
        }
        g.revs.push(rev);
        g.ver += 1;
    }

    /// Records a put found while rebuilding from the backend: `created`/`version` come from the
    /// row itself, so rows lost to an interrupted compaction do not skew them.
    pub fn restore_put(&mut self, rev: Revision, created: Revision, version: i64) {
        let g = self.last_gen();
        if g.revs.is_empty() {
            g.created = created;
        }
        g.revs.push(rev);
        g.ver = version;
    }

    /// Records a delete at `rev`. Returns false (and changes nothing) if the key is not live.
    pub fn tombstone(&mut self, rev: Revision) -> bool {
        if self.last_gen().revs.is_empty() {
            return false;
        }
        self.put(rev);
        self.gens.push(Generation::default());
        true
    }

    /// True if the key has no revisions at all.
    pub fn is_empty(&self) -> bool {
        self.gens.len() == 1 && self.gens[0].revs.is_empty()
    }

    /// The key as of revision `at`: the newest revision `<= at` of the generation alive at `at`.
    pub fn get(&self, at: i64) -> Option<Found> {
        let last = self.gens.len() - 1;
        for (gi, g) in self.gens.iter().enumerate().rev() {
            let Some(first) = g.revs.first() else {
                continue;
            };
            if gi != last {
                // A finished generation: its last revision is the tombstone.
                if g.revs[g.revs.len() - 1].main <= at {
                    return None;
                }
            }
            if first.main <= at {
                let n = g.revs.iter().rposition(|r| r.main <= at)?;
                return Some(Found {
                    modified: g.revs[n],
                    created: g.created,
                    version: g.ver - (g.revs.len() - n - 1) as i64,
                });
            }
        }
        None
    }

    /// True if `rev` is still recorded (after compaction: the backend row must be kept).
    pub fn contains(&self, rev: Revision) -> bool {
        self.gens.iter().any(|g| {
            matches!((g.revs.first(), g.revs.last()), (Some(f), Some(l)) if *f <= rev && rev <= *l)
                && g.revs.binary_search(&rev).is_ok()
        })
    }

    /// etcd's keyIndex.compact: see the module docs. The caller removes the key if it becomes
    /// empty.
    pub fn compact(&mut self, at: i64) {
        let last = self.gens.len() - 1;
        let mut gi = 0;
        while gi < last {
            match self.gens[gi].revs.last() {
                Some(tomb) if tomb.main <= at => gi += 1,
                None => gi += 1,
                _ => break,
            }
        }
        let g = &mut self.gens[gi];
        if !g.revs.is_empty() {
            if let Some(n) = g.revs.iter().rposition(|r| r.main <= at) {
                if n > 0 {
                    g.revs.drain(..n);
                }
            }
            if g.revs.len() == 1 && gi != last && g.revs[0].main <= at {
                gi += 1;
            }
        }
        if gi > 0 {
            self.gens.drain(..gi);
        }
    }

    /// Forgets every revision with `main > after` (undo of an uncommitted write batch).
    pub fn rollback(&mut self, after: i64) {
        loop {
            let n = self.gens.len();
            let g = &mut self.gens[n - 1];
            match g.revs.last() {
                Some(r) if r.main > after => {
                    g.revs.pop();
                    g.ver -= 1;
                    if g.revs.is_empty() {
                        *g = Generation::default();
                    }
                }
                Some(_) => return,
                None => {
                    if n == 1 {
                        return;
                    }
                    // The previous generation ended with a tombstone: undo it if it is new.
                    match self.gens[n - 2].revs.last() {
                        Some(r) if r.main > after => {
                            self.gens.pop();
                        }
                        _ => return,
                    }
                }
            }
        }
    }
}

/// Normalised `[key, range_end)` as etcd interprets it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum KeyRange<'a> {
    /// `range_end` empty: exactly `key`.
    Single(&'a [u8]),
    /// `[start, end)`, `end == None` meaning unbounded (`range_end == "\0"`).
    Span(&'a [u8], Option<&'a [u8]>),
}

impl<'a> KeyRange<'a> {
    pub fn new(key: &'a [u8], range_end: &'a [u8]) -> Self {
        if range_end.is_empty() {
            KeyRange::Single(key)
        } else if range_end == [0] {
            KeyRange::Span(key, None)
        } else {
            KeyRange::Span(key, Some(range_end))
        }
    }

    #[cfg(test)]
    pub fn contains(&self, k: &[u8]) -> bool {
        match *self {
            KeyRange::Single(key) => k == key,
            KeyRange::Span(start, end) => k >= start && end.is_none_or(|e| k < e),
        }
    }
}

/// One backend row, as the index rebuild needs it.
#[derive(Debug)]
pub(crate) struct RestoreRow {
    /// First 8 key bytes, big-endian, zero padded: cheap first comparison for the sort.
    prefix: u64,
    key: Box<[u8]>,
    rev: Revision,
    created: i64,
    version: i64,
    tombstone: bool,
}

impl RestoreRow {
    pub fn new(key: &[u8], rev: Revision, created: i64, version: i64, tombstone: bool) -> Self {
        let mut p = [0u8; 8];
        let n = key.len().min(8);
        p[..n].copy_from_slice(&key[..n]);
        RestoreRow {
            prefix: u64::from_be_bytes(p),
            key: key.into(),
            rev,
            created,
            version,
            tombstone,
        }
    }
}

/// The ordered map of all keys.
#[derive(Default, Debug)]
pub(crate) struct TreeIndex {
    map: BTreeMap<Box<[u8]>, KeyIndex>,
}

impl TreeIndex {
    /// Builds the index from every backend row (any order): sorts by (key, revision), builds
    /// each key's generations, then bulk-loads the map. Much faster than inserting rows in
    /// revision order into the map (random keys make every insert a chain of cache misses).
    /// A tombstone whose key has no earlier put (its puts were removed by an interrupted
    /// compaction) is skipped.
    pub fn from_rows(mut rows: Vec<RestoreRow>) -> Self {
        rows.sort_unstable_by(|a, b| {
            a.prefix
                .cmp(&b.prefix)
                .then_with(|| a.key.cmp(&b.key))
                .then(a.rev.cmp(&b.rev))
        });
        let mut out: Vec<(Box<[u8]>, KeyIndex)> = Vec::with_capacity(rows.len());
        let mut cur: Option<(Box<[u8]>, KeyIndex)> = None;
        for row in rows {
            if let Some((k, ki)) = &mut cur {
                if *k == row.key {
                    if row.tombstone {
                        ki.tombstone(row.rev);
                    } else {
                        ki.restore_put(row.rev, Revision::new(row.created, 0), row.version);
                    }
                    continue;
                }
            }
            if let Some((k, ki)) = cur.take() {
                if !ki.is_empty() {
                    out.push((k, ki));
                }
            }
            let mut ki = KeyIndex::new();
            if !row.tombstone {
                ki.restore_put(row.rev, Revision::new(row.created, 0), row.version);
            }
            cur = Some((row.key, ki));
        }
        if let Some((k, ki)) = cur {
            if !ki.is_empty() {
                out.push((k, ki));
            }
        }
        TreeIndex {
            map: out.into_iter().collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn get_key(&self, key: &[u8]) -> Option<&KeyIndex> {
        self.map.get(key)
    }

    pub fn get(&self, key: &[u8], at: i64) -> Option<Found> {
        self.map.get(key).and_then(|ki| ki.get(at))
    }

    #[cfg(test)]
    pub fn put(&mut self, key: &[u8], rev: Revision) {
        if let Some(ki) = self.map.get_mut(key) {
            ki.put(rev);
        } else {
            let mut ki = KeyIndex::new();
            ki.put(rev);
            self.map.insert(key.into(), ki);
        }
    }

    /// Records a put at `rev` and returns what the key was at `at` before it (one map
    /// traversal for an existing key).
    pub fn put_get(&mut self, key: &[u8], rev: Revision, at: i64) -> Option<Found> {
        if let Some(ki) = self.map.get_mut(key) {
            let found = ki.get(at);
            ki.put(rev);
            found
        } else {
            let mut ki = KeyIndex::new();
            ki.put(rev);
            self.map.insert(key.into(), ki);
            None
        }
    }

    /// Returns false if the key is not live.
    pub fn tombstone(&mut self, key: &[u8], rev: Revision) -> bool {
        self.map.get_mut(key).is_some_and(|ki| ki.tombstone(rev))
    }

    pub fn rollback_key(&mut self, key: &[u8], after: i64) {
        if let Some(ki) = self.map.get_mut(key) {
            ki.rollback(after);
            if ki.is_empty() {
                self.map.remove(key);
            }
        }
    }

    /// Visits, in key order, the keys of `range` strictly after `resume` (if any), calling
    /// `f(key, found)` for each key alive at `at`, for at most `max_keys` index entries.
    /// Returns the last key visited if the scan stopped early (resume point), else None.
    pub fn scan<F: FnMut(&[u8], Found)>(
        &self,
        range: KeyRange<'_>,
        at: i64,
        resume: Option<&[u8]>,
        max_keys: usize,
        mut f: F,
    ) -> Option<Box<[u8]>> {
        match range {
            KeyRange::Single(key) => {
                if resume.is_none() {
                    if let Some(found) = self.get(key, at) {
                        f(key, found);
                    }
                }
                None
            }
            KeyRange::Span(start, end) => {
                let lower = match resume {
                    Some(r) => Bound::Excluded(r),
                    None => Bound::Included(start),
                };
                let upper = match end {
                    Some(e) => {
                        if e <= start {
                            return None;
                        }
                        Bound::Excluded(e)
                    }
                    None => Bound::Unbounded,
                };
                if let (Bound::Excluded(l), Bound::Excluded(u)) = (lower, upper) {
                    if l >= u {
                        return None;
                    }
                }
                let mut last: Option<&Box<[u8]>> = None;
                for (n, (k, ki)) in self.map.range::<[u8], _>((lower, upper)).enumerate() {
                    if n == max_keys {
                        return last.cloned();
                    }
                    last = Some(k);
                    if let Some(found) = ki.get(at) {
                        f(k, found);
                    }
                }
                None
            }
        }
    }

    /// Compacts at most `max_keys` keys starting at `from` (inclusive; None = first key) and
    /// returns the first key not yet processed, or None when the end of the index was reached.
    pub fn compact_chunk(
        &mut self,
        at: i64,
        from: Option<&[u8]>,
        max_keys: usize,
    ) -> Option<Box<[u8]>> {
        let lower = match from {
            Some(r) => Bound::Included(r),
            None => Bound::Unbounded,
        };
        let mut emptied: Vec<Box<[u8]>> = Vec::new();
        let mut next = None;
        for (n, (k, ki)) in self
            .map
            .range_mut::<[u8], _>((lower, Bound::Unbounded))
            .enumerate()
        {
            if n == max_keys {
                next = Some(k.clone());
                break;
            }
            ki.compact(at);
            if ki.is_empty() {
                emptied.push(k.clone());
            }
        }
        for k in &emptied {
            self.map.remove(k);
        }
        next
    }

    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &KeyIndex)> {
        self.map.iter().map(|(k, v)| (&**k, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    /// etcd's key_index_test scenario: puts at 2,4,6, tombstone at 6? Here: create 2, put 4,
    /// tombstone 6, create 8, put 10, tombstone 12, create 14, put 16.
    fn sample() -> KeyIndex {
        let mut ki = KeyIndex::new();
        ki.put(r(2));
        ki.put(r(4));
        assert!(ki.tombstone(r(6)));
        ki.put(r(8));
        ki.put(r(10));
        assert!(ki.tombstone(r(12)));
        ki.put(r(14));
        ki.put(r(16));
        ki
    }

    #[test]
    fn get_across_generations() {
        let ki = sample();
        assert_eq!(ki.get(1), None);
        let f = ki.get(2).unwrap();
        assert_eq!((f.modified, f.created, f.version), (r(2), r(2), 1));
        let f = ki.get(5).unwrap();
        assert_eq!((f.modified, f.created, f.version), (r(4), r(2), 2));
        assert_eq!(ki.get(6), None);
        assert_eq!(ki.get(7), None);
        let f = ki.get(9).unwrap();
        assert_eq!((f.modified, f.created, f.version), (r(8), r(8), 1));
        let f = ki.get(11).unwrap();
        assert_eq!((f.modified, f.created, f.version), (r(10), r(8), 2));
        assert_eq!(ki.get(12), None);
        assert_eq!(ki.get(13), None);
        let f = ki.get(100).unwrap();
        assert_eq!((f.modified, f.created, f.version), (r(16), r(14), 2));
    }

    #[test]
    fn tombstone_of_deleted_key_fails() {
        let mut ki = KeyIndex::new();
        assert!(!ki.tombstone(r(1)));
        ki.put(r(2));
        assert!(ki.tombstone(r(3)));
        assert!(!ki.tombstone(r(4)));
        assert_eq!(ki.gens.len(), 2);
    }

    #[test]
    #[should_panic]
    fn put_must_increase() {
        let mut ki = KeyIndex::new();
        ki.put(r(5));
        ki.put(r(5));
    }

    #[test]
    fn sub_revisions_in_one_txn() {
        let mut ki = KeyIndex::new();
        ki.put(Revision::new(2, 0));
        ki.put(Revision::new(2, 1));
        let f = ki.get(2).unwrap();
        assert_eq!((f.modified, f.version), (Revision::new(2, 1), 2));
    }

    #[test]
    fn compaction_keep_rules() {
        // Compact below everything: nothing changes.
        let mut ki = sample();
        ki.compact(1);
        assert_eq!(ki, sample());

        // At 2: keep 2 (latest <= 2).
        let mut ki = sample();
        ki.compact(2);
        assert_eq!(ki, sample());

        // At 5: drop nothing before 4... revs [4, 6] remain in gen 0.
        let mut ki = sample();
        ki.compact(5);
        assert_eq!(ki.gens[0].revs, vec![r(4), r(6)]);
        assert!(ki.contains(r(4)) && !ki.contains(r(2)));
        assert_eq!(ki.get(5).unwrap().version, 2);
        assert_eq!(ki.get(5).unwrap().created, r(2));

        // At 6 (the tombstone): whole first generation goes.
        let mut ki = sample();
        ki.compact(6);
        assert_eq!(ki.gens.len(), 2);
        assert_eq!(ki.gens[0].revs, vec![r(8), r(10), r(12)]);
        assert!(!ki.contains(r(6)));

        // At 7: same.
        let mut ki = sample();
        ki.compact(7);
        assert_eq!(ki.gens[0].revs, vec![r(8), r(10), r(12)]);

        // At 11: keep 10 and the tombstone 12.
        let mut ki = sample();
        ki.compact(11);
        assert_eq!(ki.gens[0].revs, vec![r(10), r(12)]);
        assert_eq!(ki.get(11).unwrap().version, 2);

        // At 15: last generation, keep 14 and 16.
        let mut ki = sample();
        ki.compact(15);
        assert_eq!(ki.gens.len(), 1);
        assert_eq!(ki.gens[0].revs, vec![r(14), r(16)]);
        assert_eq!(ki.get(20).unwrap().version, 2);
        assert_eq!(ki.get(20).unwrap().created, r(14));

        // At 100: keep only 16.
        let mut ki = sample();
        ki.compact(100);
        assert_eq!(ki.gens[0].revs, vec![r(16)]);
        assert_eq!(ki.get(100).unwrap().version, 2);
        assert!(!ki.is_empty());

        // A deleted key compacted at its tombstone disappears.
        let mut ki = KeyIndex::new();
        ki.put(r(2));
        ki.tombstone(r(3));
        ki.compact(3);
        assert!(ki.is_empty());
        let mut ki = KeyIndex::new();
        ki.put(r(2));
        ki.tombstone(r(3));
        ki.compact(2);
        assert_eq!(ki.gens[0].revs, vec![r(2), r(3)]);
    }

    #[test]
    fn rollback_undoes_suffix() {
        let full = sample();
        for after in 0..=16 {
            let mut ki = sample();
            ki.rollback(after);
            // Rebuild expected by replaying only revs <= after.
            let mut exp = KeyIndex::new();
            for (m, op) in [
                (2, 'p'),
                (4, 'p'),
                (6, 't'),
                (8, 'p'),
                (10, 'p'),
                (12, 't'),
                (14, 'p'),
                (16, 'p'),
            ] {
                if m <= after {
                    if op == 'p' {
                        exp.put(r(m));
                    } else {
                        exp.tombstone(r(m));
                    }
                }
            }
            assert_eq!(ki, exp, "after {after}");
        }
        let mut ki = full.clone();
        ki.rollback(100);
        assert_eq!(ki, full);
    }

    #[test]
    fn key_range_rules() {
        assert!(matches!(KeyRange::new(b"a", b""), KeyRange::Single(_)));
        assert!(KeyRange::new(b"a", b"\0").contains(b"zzz"));
        assert!(!KeyRange::new(b"b", b"\0").contains(b"a"));
        assert!(KeyRange::new(b"\0", b"\0").contains(b"\x01"));
        assert!(KeyRange::new(b"a", b"b").contains(b"a\xff"));
        assert!(!KeyRange::new(b"a", b"b").contains(b"b"));
    }

    #[test]
    fn tree_scan_and_compact_chunks() {
        let mut t = TreeIndex::default();
        for i in 0..100u8 {
            t.put(&[i], Revision::new(i64::from(i) + 2, 0));
        }
        for i in (0..100u8).step_by(2) {
            assert!(t.tombstone(&[i], Revision::new(i64::from(i) + 200, 0)));
        }
        let mut seen = Vec::new();
        let mut resume: Option<Box<[u8]>> = None;
        loop {
            resume = t.scan(
                KeyRange::new(&[10], &[90]),
                1000,
                resume.as_deref(),
                7,
                |k, _| seen.push(k[0]),
            );
            if resume.is_none() {
                break;
            }
        }
        let exp: Vec<u8> = (10..90).filter(|i| i % 2 == 1).collect();
        assert_eq!(seen, exp);

        let mut from: Option<Box<[u8]>> = None;
        loop {
            from = t.compact_chunk(1000, from.as_deref(), 9);
            if from.is_none() {
                break;
            }
        }
        assert_eq!(t.len(), 50);
        for (k, ki) in t.iter() {
            assert_eq!(k[0] % 2, 1);
            assert_eq!(ki.gens.len(), 1);
            assert_eq!(ki.gens[0].revs.len(), 1);
        }
    }
}
