//! Random sequences of appends, syncs, reopens and purges against an in-memory model.

mod common;

use std::path::Path;

use ballast_wal::{Record, RecordKind, Replay, Wal};
use common::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Records described as (what, rewind, data length); see `Runner::materialize`.
    Append(Vec<(u8, u8, usize)>),
    Sync,
    /// Drop the Wal (losing unsynced records) and open it again.
    Reopen,
    /// Purge below `last entry index + 1 - back` (saturating).
    Purge(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec((0u8..10, 0u8..4, 0usize..300), 1..12).prop_map(Op::Append),
        4 => Just(Op::Sync),
        1 => Just(Op::Reopen),
        1 => (0u64..30).prop_map(Op::Purge),
    ]
}

struct Runner {
    segment_size: u64,
    wal: Option<Wal>,
    /// Records made durable by a successful sync, in order.
    synced: Vec<Record>,
    pending: Vec<Record>,
    last_index: u64,
    term: u64,
    max_purge: u64,
}

impl Runner {
    fn materialize(&mut self, specs: &[(u8, u8, usize)]) -> Vec<Record> {
        specs
            .iter()
            .map(|&(what, rewind, len)| match what {
                0..=6 => {
                    // Mostly the next index; sometimes raft truncates and rewrites (new term).
                    if what == 6 && rewind > 0 && self.last_index > rewind as u64 {
                        self.term += 1;
                        self.last_index -= rewind as u64;
                    } else {
                        self.last_index += 1;
                    }
                    entry(self.last_index, self.term, len)
                }
                7 | 8 => hard_state(self.last_index, self.term),
                _ => snapshot(self.last_index.saturating_sub(rewind as u64), self.term),
            })
            .collect()
    }

    fn reopen(&mut self, dir: &Path) -> Result<Replay, TestCaseError> {
        self.wal = None;
        self.pending.clear();
        let (wal, replay) =
            open(dir, self.segment_size).map_err(|e| TestCaseError::fail(e.to_string()))?;
        self.wal = Some(wal);
        Ok(replay)
    }

    fn wal(&mut self) -> &mut Wal {
        match self.wal.as_mut() {
            Some(w) => w,
            None => panic!("wal not open"),
        }
    }

    /// The replay must be: copies of the latest snapshot and hard state before some cut point
    /// (the start of the oldest surviving segment), then every synced record from that point.
    /// Everything before the cut point must have been purgeable.
    fn check(&self, replay: &Replay) -> Result<(), TestCaseError> {
        prop_assert!(!replay.repaired_tail);
        let latest = |rs: &[Record], kind| rs.iter().rev().find(|r| r.kind == kind).cloned();
        let cut = (0..=self.synced.len()).find(|&c| {
            let before = &self.synced[..c];
            let mut expected: Vec<Record> = latest(before, RecordKind::Snapshot)
                .into_iter()
                .chain(latest(before, RecordKind::HardState))
                .collect();
            expected.extend_from_slice(&self.synced[c..]);
            replay.records == expected
        });
        let Some(cut) = cut else {
            return Err(TestCaseError::fail(format!(
                "replay of {} records matches no suffix of the {} synced records",
                replay.records.len(),
                self.synced.len()
            )));
        };
        for r in &self.synced[..cut] {
            if r.kind == RecordKind::Entry {
                prop_assert!(
                    r.index < self.max_purge,
                    "entry {} was dropped but the highest purge was below {}",
                    r.index,
                    self.max_purge
                );
            }
        }
        Ok(())
    }
}

fn run(segment_size: u64, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let tmp = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let dir = tmp.path();
    let mut r = Runner {
        segment_size,
        wal: None,
        synced: Vec::new(),
        pending: Vec::new(),
        last_index: 0,
        term: 1,
        max_purge: 0,
    };
    r.reopen(dir)?;
    for op in ops {
        match op {
            Op::Append(specs) => {
                let records = r.materialize(&specs);
                r.wal()
                    .append(&records)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                r.pending.extend(records);
            }
            Op::Sync => {
                r.wal()
                    .sync()
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let pending = std::mem::take(&mut r.pending);
                r.synced.extend(pending);
            }
            Op::Reopen => {
                let replay = r.reopen(dir)?;
                r.check(&replay)?;
                // Continue numbering after what survived (unsynced entries are gone).
                r.last_index = replay
                    .records
                    .iter()
                    .rev()
                    .find(|x| x.kind == RecordKind::Entry)
                    .map_or(r.last_index, |x| x.index);
            }
            Op::Purge(back) => {
                let index = (r.last_index + 1).saturating_sub(back);
                r.wal()
                    .purge_before(index)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                r.max_purge = r.max_purge.max(index);
            }
        }
    }
    let replay = r.reopen(dir)?;
    r.check(&replay)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn wal_matches_model(
        segment_size in prop_oneof![Just(1u64), Just(512), Just(2048), Just(8192)],
        ops in prop::collection::vec(op(), 1..60),
    ) {
        run(segment_size, ops)?;
    }
}
