//! The in-memory Raft log that raft-rs reads through the [`raft::Storage`] trait, and its rebuild
//! from the write-ahead log on restart.
//!
//! Owns: the unstable-free tail of the log (entries after the last raft snapshot), the hard state
//! and the snapshot point (index, term, conf state). Durability is not its concern: the raft node
//! writes every entry and hard state to the WAL (and fsyncs) *before* it appends them here.
//! It must never hand raft-rs an entry that is not in the WAL.

use std::collections::VecDeque;

use ballast_wal::{Record, RecordKind};
use protobuf::Message as _;
use raft::prelude::{
    ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState, Snapshot,
    SnapshotMetadata,
};
use raft::{GetEntriesContext, RaftState, StorageError};

/// Raft's view of the log: entries `(snapshot.index, last]`, the hard state and the snapshot point.
#[derive(Default)]
pub struct RaftLog {
    hard_state: HardState,
    snapshot: SnapshotMetadata,
    /// `entries[i].index == snapshot.index + 1 + i`.
    entries: VecDeque<Entry>,
    /// Conf states applied after the snapshot point, by the index of their conf change (the
    /// first one: the state raft-rs starts from on restart, from the backend). A snapshot at
    /// index i records the last one at or below i.
    conf_states: Vec<(u64, ConfState)>,
}

impl RaftLog {
    /// A brand-new log whose configuration is `conf_state` (bootstrap of a new member).
    pub fn bootstrap(conf_state: ConfState) -> RaftLog {
        let mut log = RaftLog::default();
        log.snapshot.set_conf_state(conf_state);
        log
    }

    /// A new cluster's first log, the same on every initial member (etcd's bootstrap): one
    /// conf change per initial member at term 1, indexes 1..=n, all committed; the conf
    /// state starts empty and each member learns the configuration by applying them, as a
    /// member that joins later does from the same entries.
    pub fn bootstrap_cluster(changes: &[ConfChange]) -> RaftLog {
        let mut log = RaftLog::default();
        for (i, cc) in changes.iter().enumerate() {
            let mut e = Entry::default();
            e.set_entry_type(EntryType::EntryConfChange);
            e.index = i as u64 + 1;
            e.term = 1;
            e.data = cc.write_to_bytes().unwrap_or_default().into();
            log.entries.push_back(e);
        }
        log.hard_state.term = 1;
        log.hard_state.commit = changes.len() as u64;
        log
    }

    /// The WAL records that make a fresh log durable: its snapshot point, its entries and its
    /// hard state.
    pub fn initial_records(&self) -> Vec<Record> {
        let mut out = vec![snapshot_record(&self.snapshot)];
        out.extend(self.entries.iter().map(entry_record));
        out.push(hard_state_record(&self.hard_state));
        out
    }

    /// Rebuilds the log from WAL records in write order: the latest snapshot marker sets the
    /// starting point, later entries overwrite earlier ones at the same or higher index (a new
    /// leader's log replaces a conflicting tail), the last hard state wins.
    pub fn from_wal(records: &[Record]) -> Result<RaftLog, String> {
        let mut log = RaftLog::default();
        // The latest snapshot point first: a segment purged after a later snapshot leaves the
        // surviving segments starting with an older snapshot copy followed by entries past a
        // gap that the later marker covers.
        for r in records.iter().filter(|r| r.kind == RecordKind::Snapshot) {
            let meta = SnapshotMetadata::parse_from_bytes(&r.data)
                .map_err(|e| format!("bad snapshot record at index {}: {e}", r.index))?;
            if meta.index >= log.snapshot.index {
                log.snapshot = meta;
            }
        }
        for r in records {
            match r.kind {
                RecordKind::Snapshot => {}
                RecordKind::HardState => {
                    log.hard_state = HardState::parse_from_bytes(&r.data)
                        .map_err(|e| format!("bad hard state record: {e}"))?;
                }
                RecordKind::Entry => {
                    if r.index <= log.snapshot.index {
                        continue; // compacted: applied and durable in the backend
                    }
                    let e = Entry::parse_from_bytes(&r.data)
                        .map_err(|e| format!("bad entry record at index {}: {e}", r.index))?;
                    log.truncate_from(e.index);
                    if e.index != log.last_index() + 1 {
                        return Err(format!(
                            "wal has a gap: entry {} follows {}",
                            e.index,
                            log.last_index()
                        ));
                    }
                    log.entries.push_back(e);
                }
            }
        }
        if log.hard_state.commit < log.snapshot.index {
            log.hard_state.commit = log.snapshot.index;
        }
        if log.hard_state.commit > log.last_index() {
            // The commit index in the last hard state can never be ahead of the durable log.
            log.hard_state.commit = log.last_index();
        }
        if log.hard_state.term < log.snapshot.term {
            log.hard_state.term = log.snapshot.term;
        }
        Ok(log)
    }

    fn truncate_from(&mut self, index: u64) {
        let first = self.snapshot.index + 1;
        if index < first {
            self.entries.clear();
        } else {
            self.entries.truncate((index - first) as usize);
        }
    }

    /// Appends (durable) entries, replacing any conflicting tail.
    pub fn append(&mut self, ents: &[Entry]) {
        let Some(first) = ents.first() else { return };
        self.truncate_from(first.index);
        debug_assert_eq!(first.index, self.last_index() + 1, "raft log gap");
        self.entries.extend(ents.iter().cloned());
    }

    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    pub fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = commit;
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The latest conf state (applied at or after the snapshot point).
    pub fn conf_state(&self) -> &ConfState {
        self.conf_states
            .last()
            .map_or_else(|| self.snapshot.get_conf_state(), |(_, cs)| cs)
    }

    /// The conf state as of `index` (at or after the snapshot point).
    fn conf_state_at(&self, index: u64) -> &ConfState {
        self.conf_states
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map_or_else(|| self.snapshot.get_conf_state(), |(_, cs)| cs)
    }

    /// The configuration once every committed conf change after `from` is applied to `base`
    /// (the configuration at `from`). A restarted member gives raft-rs this one rather than
    /// `base`: replaying the changes one by one would pass through configurations the cluster
    /// left long ago (a new cluster's first change adds one member alone, which would elect
    /// itself). Uncommitted changes are left out: they may yet be replaced.
    pub fn committed_conf_state(&self, from: u64, base: &ConfState) -> ConfState {
        let mut cs = base.clone();
        let start = from.max(self.snapshot.index) + 1;
        for e in self.entries.iter().filter(|e| e.index >= start && e.index <= self.hard_state.commit) {
            if e.get_entry_type() != EntryType::EntryConfChange {
                continue;
            }
            let Ok(cc) = ConfChange::parse_from_bytes(&e.data) else {
                continue; // the apply loop stops the member on it
            };
            let id = cc.node_id;
            cs.voters.retain(|v| *v != id);
            cs.learners.retain(|v| *v != id);
            match cc.get_change_type() {
                ConfChangeType::AddNode => cs.voters.push(id),
                ConfChangeType::AddLearnerNode => cs.learners.push(id),
                ConfChangeType::RemoveNode => {}
            }
        }
        cs.voters.sort_unstable();
        cs.learners.sort_unstable();
        cs
    }

    /// Records the conf state that applies from `index` on: a conf change applied there, or
    /// on restart the state the backend holds at its applied index.
    pub fn set_conf_state(&mut self, index: u64, cs: ConfState) {
        self.conf_states.retain(|(i, _)| *i < index);
        self.conf_states.push((index, cs));
    }

    /// Metadata for a snapshot at `index` (must be in the log or be the current snapshot point).
    pub fn snapshot_metadata_at(&self, index: u64) -> Option<SnapshotMetadata> {
        let term = raft::Storage::term(self, index).ok()?;
        Some(SnapshotMetadata {
            index,
            term,
            conf_state: Some(self.conf_state_at(index).clone()).into(),
            ..Default::default()
        })
    }

    /// Restarts the log at a snapshot the leader sent: every entry goes (those after it were
    /// not committed, or raft-rs would not have asked for it), `meta` is the new snapshot
    /// point with its configuration, and the commit index is at least its index.
    pub fn apply_snapshot(&mut self, meta: SnapshotMetadata) {
        self.entries.clear();
        self.conf_states.clear();
        if self.hard_state.commit < meta.index {
            self.hard_state.commit = meta.index;
        }
        if self.hard_state.term < meta.term {
            self.hard_state.term = meta.term;
        }
        self.snapshot = meta;
    }

    /// Drops entries up to and including `meta.index`, which becomes the new snapshot point.
    pub fn compact_to(&mut self, meta: SnapshotMetadata) {
        if meta.index <= self.snapshot.index {
            return;
        }
        while self.entries.front().is_some_and(|e| e.index <= meta.index) {
            self.entries.pop_front();
        }
        // The snapshot's own conf state now stands for every change up to its index.
        self.conf_states.retain(|(i, _)| *i > meta.index);
        self.snapshot = meta;
    }

    pub fn first_index(&self) -> u64 {
        self.snapshot.index + 1
    }

    pub fn last_index(&self) -> u64 {
        self.snapshot.index + self.entries.len() as u64
    }

    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.index
    }
}

impl raft::Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state().clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into().unwrap_or(u64::MAX);
        let start = (low - self.first_index()) as usize;
        let end = (high - self.first_index()) as usize;
        let mut out = Vec::with_capacity(end - start);
        let mut size = 0u64;
        for e in self.entries.range(start..end) {
            size += e.compute_size() as u64;
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snapshot.index {
            return Ok(self.snapshot.term);
        }
        if idx < self.snapshot.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_index() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.entries[(idx - self.first_index()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(RaftLog::first_index(self))
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(RaftLog::last_index(self))
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // The snapshot point's metadata; the data (the backend) is streamed by the transport.
        if self.snapshot.index > 0 {
            let mut s = Snapshot::default();
            s.set_metadata(self.snapshot.clone());
            return Ok(s);
        }
        // Sending snapshots to peers arrives with membership; a single member never asks.
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

/// Encodes an entry as its WAL record.
pub fn entry_record(e: &Entry) -> Record {
    Record {
        kind: RecordKind::Entry,
        index: e.index,
        term: e.term,
        data: e.write_to_bytes().unwrap_or_default(),
    }
}

pub fn hard_state_record(hs: &HardState) -> Record {
    Record {
        kind: RecordKind::HardState,
        index: hs.commit,
        term: hs.term,
        data: hs.write_to_bytes().unwrap_or_default(),
    }
}

pub fn snapshot_record(meta: &SnapshotMetadata) -> Record {
    Record {
        kind: RecordKind::Snapshot,
        index: meta.index,
        term: meta.term,
        data: meta.write_to_bytes().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn ent(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8].into(),
            ..Default::default()
        }
    }

    #[test]
    fn rebuild_applies_overwrites_snapshots_and_last_hard_state() {
        let cs = ConfState {
            voters: vec![7],
            ..Default::default()
        };
        let boot = SnapshotMetadata {
            conf_state: Some(cs).into(),
            ..Default::default()
        };
        let hs = HardState {
            term: 2,
            commit: 3,
            ..Default::default()
        };
        let recs = vec![
            snapshot_record(&boot),
            entry_record(&ent(1, 1)),
            entry_record(&ent(2, 1)),
            entry_record(&ent(3, 1)),
            // a new leader overwrote index 3 onwards
            entry_record(&ent(3, 2)),
            entry_record(&ent(4, 2)),
            hard_state_record(&hs),
        ];
        let log = RaftLog::from_wal(&recs).unwrap();
        assert_eq!(log.first_index(), 1);
        assert_eq!(log.last_index(), 4);
        assert_eq!(log.term(3).unwrap(), 2);
        assert_eq!(log.hard_state().commit, 3);
        assert_eq!(log.conf_state().voters, vec![7]);

        let meta = log.snapshot_metadata_at(3).unwrap();
        let mut recs2 = recs.clone();
        recs2.push(snapshot_record(&meta));
        let log2 = RaftLog::from_wal(&recs2).unwrap();
        assert_eq!(log2.first_index(), 4);
        assert_eq!(log2.term(3).unwrap(), 2);
        assert!(log2.term(2).is_err());
        assert_eq!(
            log2.entries(4, 5, None, GetEntriesContext::empty(false))
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn purged_segment_covered_by_a_later_snapshot_is_not_a_gap() {
        // Surviving segment: copy of an old snapshot (2), entries 5.., then the newer snapshot
        // (4) that covered the purged segment holding 3..4.
        let old = SnapshotMetadata {
            index: 2,
            term: 1,
            ..Default::default()
        };
        let newer = SnapshotMetadata {
            index: 4,
            term: 1,
            ..Default::default()
        };
        let recs = vec![
            snapshot_record(&old),
            entry_record(&ent(5, 1)),
            entry_record(&ent(6, 1)),
            snapshot_record(&newer),
            entry_record(&ent(7, 1)),
        ];
        let log = RaftLog::from_wal(&recs).unwrap();
        assert_eq!(log.first_index(), 5);
        assert_eq!(log.last_index(), 7);
        assert_eq!(log.term(4).unwrap(), 1);
    }

    #[test]
    fn a_bootstrapped_cluster_log_survives_the_wal_round_trip() {
        let changes: Vec<ConfChange> = [3u64, 5, 9]
            .iter()
            .map(|id| {
                let mut cc = ConfChange::default();
                cc.set_change_type(raft::prelude::ConfChangeType::AddNode);
                cc.node_id = *id;
                cc.context = vec![*id as u8].into();
                cc
            })
            .collect();
        let log = RaftLog::bootstrap_cluster(&changes);
        assert_eq!((log.first_index(), log.last_index()), (1, 3));
        assert_eq!((log.hard_state().term, log.hard_state().commit), (1, 3));
        assert!(log.conf_state().voters.is_empty(), "learned by applying");
        let back = RaftLog::from_wal(&log.initial_records()).unwrap();
        let ents = back
            .entries(1, 4, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(ents.len(), 3);
        for (e, cc) in ents.iter().zip(&changes) {
            assert_eq!(e.get_entry_type(), EntryType::EntryConfChange);
            assert_eq!(ConfChange::parse_from_bytes(&e.data).unwrap(), *cc);
        }
        assert_eq!(back.hard_state().commit, 3);
    }

    #[test]
    fn conf_states_follow_their_index_and_snapshots_record_the_right_one() {
        let mut log = RaftLog::bootstrap(ConfState::default());
        log.append(&[ent(1, 1), ent(2, 1), ent(3, 1)]);
        let one = ConfState {
            voters: vec![1],
            ..Default::default()
        };
        let two = ConfState {
            voters: vec![1, 2],
            ..Default::default()
        };
        log.set_conf_state(1, one.clone());
        log.set_conf_state(3, two.clone());
        assert_eq!(log.conf_state(), &two);
        assert_eq!(log.snapshot_metadata_at(2).unwrap().get_conf_state(), &one);
        log.compact_to(log.snapshot_metadata_at(2).unwrap());
        assert_eq!(log.conf_state(), &two, "the later change survives");
        assert_eq!(log.initial_state().unwrap().conf_state, two);
    }

    #[test]
    fn a_restart_starts_from_every_committed_conf_change() {
        let cc = |id: u64, t: ConfChangeType| {
            let mut cc = ConfChange::default();
            cc.set_change_type(t);
            cc.node_id = id;
            cc
        };
        let mut log = RaftLog::bootstrap_cluster(&[
            cc(1, ConfChangeType::AddNode),
            cc(2, ConfChangeType::AddNode),
            cc(3, ConfChangeType::AddNode),
        ]);
        let mut e4 = Entry::default();
        e4.set_entry_type(EntryType::EntryConfChange);
        e4.index = 4;
        e4.term = 1;
        e4.data = cc(2, ConfChangeType::RemoveNode).write_to_bytes().unwrap().into();
        log.append(&[e4]);
        // Index 4 is not committed: member 2 is still in.
        let cs = log.committed_conf_state(0, &ConfState::default());
        assert_eq!(cs.voters, vec![1, 2, 3]);
        log.set_commit(4);
        assert_eq!(log.committed_conf_state(0, &ConfState::default()).voters, vec![1, 3]);
        // From the backend's state at 3: only the later change applies.
        let at3 = ConfState {
            voters: vec![1, 2, 3],
            ..Default::default()
        };
        assert_eq!(log.committed_conf_state(3, &at3).voters, vec![1, 3]);
    }

    #[test]
    fn gap_in_wal_is_an_error() {
        let recs = vec![entry_record(&ent(1, 1)), entry_record(&ent(3, 1))];
        assert!(RaftLog::from_wal(&recs).is_err());
    }

    #[test]
    fn compact_keeps_term_of_snapshot_point() {
        let mut log = RaftLog::bootstrap(ConfState::default());
        log.append(&[ent(1, 1), ent(2, 1), ent(3, 3)]);
        let meta = log.snapshot_metadata_at(2).unwrap();
        log.compact_to(meta);
        assert_eq!(log.first_index(), 3);
        assert_eq!(log.term(2).unwrap(), 1);
        assert_eq!(log.term(3).unwrap(), 3);
        assert!(matches!(
            log.entries(1, 3, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
    }
}
