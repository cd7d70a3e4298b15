#![cfg(feature = "sim")]
//! Power-loss simulation: the WAL runs over `ballast_wal::sim::SimDisk`, which keeps written but
//! unsynced data apart from durable data. Random workloads (appends of varied sizes, group
//! commits, rotations with small segments, hard states, snapshot markers, purges) are cut short
//! at a random operation (the process dies) or by a full disk, the disk loses power (`crash`:
//! unsynced sectors and directory operations kept or lost at random), and the log is reopened.
//! Checked after every crash:
//! - open never fails with `Corrupt` (a crash must never make the log unopenable);
//! - every acknowledged record (its `sync` returned `Ok`) is replayed, in order;
//! - records appended but never acknowledged are absent or present as a prefix, in order: never
//!   a record with wrong contents, never a gap;
//! - nothing at or above a purge index is lost, and the latest hard state / snapshot marker is
//!   replayed (as a record or as a segment-start copy).
//!
//! Run: `cargo test --release -p ballast-wal --features sim --test power_loss`.
//! A failure prints its seed; `BALLAST_SEED=<seed>` replays that one iteration, and
//! `BALLAST_POWER_LOSS_ITERATIONS=<n>` changes how many run (default 10 000;
//! `BALLAST_FLIP_ITERATIONS`, default 2000, for the bit flips).
//! (`kill -9` keeps the page cache and cannot prove fsync placement; this can.)

mod common;

use std::path::Path;
use std::sync::Arc;

use ballast_wal::sim::{SimDisk, SimRng};
use ballast_wal::{Record, RecordKind, Wal, WalError, WalOptions};

const DIR: &str = "/member/wal";
const DEFAULT_ITERATIONS: u64 = 10_000;

/// What the test knows of the log: every record appended, in order, and how many of them were
/// acknowledged (a prefix).
#[derive(Debug, Default)]
struct Model {
    log: Vec<Record>,
    acked: usize,
    /// Highest index passed to `purge_before` (entries below it may be gone).
    purge_floor: u64,
    next_index: u64,
    next_unique: u64,
}

impl Model {
    fn record(&mut self, rng: &mut SimRng, segment_size: u64) -> Record {
        self.next_unique += 1;
        let roll = rng.below(100);
        let (kind, index) = match roll {
            0..=69 => {
                self.next_index += 1;
                (RecordKind::Entry, self.next_index)
            }
            70..=91 => (RecordKind::HardState, self.next_index),
            _ => (
                RecordKind::Snapshot,
                self.next_index.saturating_sub(rng.below(5)),
            ),
        };
        let len = match rng.below(80) {
            0 => (segment_size + rng.below(2 * segment_size)) as usize, // bigger than a segment
            1..=30 => rng.below(3000) as usize,
            _ => rng.below(300) as usize,
        };
        let mut data = self.next_unique.to_le_bytes().to_vec();
        let zeros = rng.below(8) == 0; // some records hold runs of zeros
        data.extend((0..len).map(|i| {
            if zeros && i % 1024 < 600 {
                0
            } else {
                (rng.next_u64() & 0xff) as u8
            }
        }));
        Record {
            kind,
            index,
            term: 1 + self.next_unique / 50,
            data,
        }
    }
}

/// Checks a replay against the model; returns how many records of `model.log` it holds.
fn check(replay: &[Record], m: &Model) -> Result<usize, String> {
    let mut why = Vec::new();
    for skip in 0..=replay.len().min(2) {
        if replay[..skip].iter().any(|r| r.kind == RecordKind::Entry) {
            break;
        }
        let (copies, rest) = replay.split_at(skip);
        let p = match rest.first() {
            Some(first) => match m.log.iter().position(|r| r == first) {
                Some(p) => p,
                None => {
                    why.push(format!(
                        "skip {skip}: replayed record not in the log: {first:?}"
                    ));
                    continue;
                }
            },
            // Only copies (or nothing): the records before them are all gone.
            None => m.acked,
        };
        let end = p + rest.len();
        match interpretation(copies, rest, p, end, m) {
            Ok(()) => return Ok(end),
            Err(e) => why.push(format!("skip {skip}: {e}")),
        }
    }
    Err(why.join("; "))
}

fn interpretation(
    copies: &[Record],
    rest: &[Record],
    p: usize,
    end: usize,
    m: &Model,
) -> Result<(), String> {
    if end > m.log.len() || m.log[p..end] != *rest {
        return Err(format!(
            "records from log position {p} do not match the log (a gap or wrong contents)"
        ));
    }
    if end < m.acked {
        return Err(format!(
            "only {end} of {} acknowledged records replayed",
            m.acked
        ));
    }
    if let Some(lost) = m.log[..p]
        .iter()
        .find(|r| r.kind == RecordKind::Entry && r.index >= m.purge_floor)
    {
        return Err(format!(
            "entry {} (>= purge floor {}) is gone",
            lost.index, m.purge_floor
        ));
    }
    for kind in [RecordKind::HardState, RecordKind::Snapshot] {
        let latest_before = m.log[..p].iter().rev().find(|r| r.kind == kind);
        let copy = copies.iter().find(|r| r.kind == kind);
        match (latest_before, copy) {
            (_, Some(c)) if Some(c) != latest_before => {
                return Err(format!("copy {c:?} is not the latest {kind:?} before it"))
            }
            (Some(l), None) if !rest.iter().any(|r| r.kind == kind) => {
                return Err(format!("latest {kind:?} {l:?} lost"))
            }
            _ => {}
        }
    }
    Ok(())
}

fn open(disk: &SimDisk, segment_size: u64) -> Result<(Wal, ballast_wal::Replay), WalError> {
    Wal::open_with(
        Path::new(DIR),
        WalOptions { segment_size },
        Arc::new(disk.clone()),
    )
}

/// What the runs went through, to check that the workload reaches the interesting cases.
#[derive(Debug, Default)]
struct Stats {
    crashes: u64,
    deaths: u64,
    disk_full: u64,
    failed_opens: u64,
    repaired_tails: u64,
    /// Reopens that found unacknowledged records (a prefix of them).
    unacked_kept: u64,
    /// Reopens that lost some unacknowledged records.
    unacked_lost: u64,
    purged_segments: u64,
    /// Reopens that started with segment-start copies (earlier segments purged).
    replays_after_purge: u64,
    max_segments: u64,
}

/// One seeded run: a few lives, each ending in a crash. `Err` describes what went wrong.
fn run(seed: u64, stats: &mut Stats) -> Result<(), String> {
    let mut rng = SimRng::new(seed);
    let segment_size = [2048, 8192, 32768][rng.below(3) as usize];
    let mut disk = SimDisk::new();
    let mut m = Model::default();
    let lives = 1 + rng.below(4);
    for life in 0..=lives {
        let last_life = life == lives;
        // How this life ends: the process dies (while running, or while opening and
        // repairing), the disk fills up, or power is cut between operations. The last life only
        // opens and checks.
        let ending = if last_life {
            3
        } else {
            [0, 0, 0, 0, 1, 1, 2, 4][rng.below(8) as usize]
        };
        match ending {
            4 => disk.die_after(rng.below(30)),
            1 => disk.set_capacity(Some(disk.used() + rng.below(4 * segment_size))),
            _ => {}
        }
        let (mut wal, replay) = match open(&disk, segment_size) {
            Ok(x) => x,
            Err(e @ WalError::Corrupt { .. }) => {
                return Err(format!("life {life}: open after a crash: {e}"))
            }
            Err(_) if ending == 1 || ending == 4 => {
                // Died or out of space during open (repair, first segment): crash again.
                stats.failed_opens += 1;
                stats.crashes += 1;
                disk = disk.crash(rng.next_u64());
                disk.set_capacity(None);
                continue;
            }
            Err(e) => return Err(format!("life {life}: open failed: {e}")),
        };
        let end = check(&replay.records, &m).map_err(|e| format!("life {life}: {e}"))?;
        stats.repaired_tails += u64::from(replay.repaired_tail);
        stats.unacked_kept += u64::from(end > m.acked);
        stats.unacked_lost += u64::from(end < m.log.len());
        stats.replays_after_purge += u64::from(
            replay
                .records
                .first()
                .is_some_and(|r| r.kind != RecordKind::Entry)
                && m.log.first() != replay.records.first(),
        );
        m.log.truncate(end);
        m.acked = end;
        if ending == 0 {
            disk.die_after(rng.below(60));
        }
        if last_life {
            // The log takes writes again after the last crash.
            let r = m.record(&mut rng, segment_size);
            wal.append(std::slice::from_ref(&r))
                .and_then(|()| wal.sync())
                .map_err(|e| format!("write after reopen: {e}"))?;
            return Ok(());
        }
        let steps = rng.below(60);
        for _ in 0..steps {
            let ok = match rng.below(10) {
                0 => {
                    // Purge below a recent snapshot marker, as the server does.
                    let floor = m.log[..m.acked]
                        .iter()
                        .rev()
                        .find(|r| r.kind == RecordKind::Snapshot)
                        .map(|r| r.index);
                    match floor {
                        Some(f) => {
                            m.purge_floor = m.purge_floor.max(f);
                            match wal.purge_before(f) {
                                Ok(n) => {
                                    stats.purged_segments += n as u64;
                                    true
                                }
                                Err(_) => false,
                            }
                        }
                        None => true,
                    }
                }
                _ => {
                    let n = 1 + rng.below(8);
                    let batch: Vec<Record> =
                        (0..n).map(|_| m.record(&mut rng, segment_size)).collect();
                    let appended = wal.append(&batch).is_ok();
                    if appended {
                        m.log.extend(batch);
                    }
                    // Mostly one sync per batch; sometimes several batches per sync.
                    appended
                        && (rng.below(4) == 0 || {
                            let synced = wal.sync().is_ok();
                            if synced {
                                m.acked = m.log.len();
                            }
                            synced
                        })
                }
            };
            if !ok {
                break;
            }
        }
        drop(wal);
        stats.deaths += u64::from(disk.is_dead());
        stats.disk_full += u64::from(ending == 1 && !disk.is_dead());
        stats.max_segments = stats.max_segments.max(
            disk.files_in(Path::new(DIR))
                .iter()
                .filter(|p| p.extension().is_some_and(|x| x == "wal"))
                .count() as u64,
        );
        stats.crashes += 1;
        disk = disk.crash(rng.next_u64());
        disk.set_capacity(None);
    }
    Ok(())
}

#[test]
fn power_loss_at_random_points_keeps_every_acknowledged_record() {
    let seeds: Vec<u64> = match std::env::var("BALLAST_SEED") {
        Ok(s) => match s.trim().parse() {
            Ok(seed) => vec![seed],
            Err(e) => panic!("BALLAST_SEED={s:?}: {e}"),
        },
        Err(_) => {
            let n = std::env::var("BALLAST_POWER_LOSS_ITERATIONS")
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(DEFAULT_ITERATIONS);
            (0..n).map(|i| 0x00ba_11a5_7000_0000 + i).collect()
        }
    };
    let thousands = seeds.len() as u64 / 1000;
    let mut stats = Stats::default();
    for seed in seeds {
        if let Err(e) = run(seed, &mut stats) {
            panic!("power-loss run failed; replay with BALLAST_SEED={seed}: {e}");
        }
    }
    eprintln!("power-loss: {stats:?}");
    if thousands > 0 {
        // The workload must reach the cases this test is about (per 1000 runs; about a third
        // of what the default seeds reach).
        let n = thousands;
        assert!(stats.deaths > 300 * n, "{stats:?}");
        assert!(stats.disk_full > 100 * n, "{stats:?}");
        assert!(stats.failed_opens > 50 * n, "{stats:?}");
        assert!(stats.repaired_tails > 20 * n, "{stats:?}");
        assert!(stats.unacked_kept > 300 * n, "{stats:?}");
        assert!(stats.unacked_lost > 300 * n, "{stats:?}");
        assert!(stats.purged_segments > 1000 * n, "{stats:?}");
        assert!(stats.replays_after_purge > 100 * n, "{stats:?}");
        assert!(stats.max_segments > 5, "{stats:?}");
    }
}

/// Corruption after a successful sync (a bit flip in durable data) is reported as `Corrupt`:
/// never replayed as valid, never dropped as a torn tail.
#[test]
fn bit_flip_in_synced_data_is_corrupt() {
    let iterations = match std::env::var("BALLAST_SEED") {
        Ok(_) => 1,
        Err(_) => std::env::var("BALLAST_FLIP_ITERATIONS")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(2000),
    };
    let base = std::env::var("BALLAST_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0x00f1_1b00_0000_0000u64);
    for seed in base..base + iterations {
        if let Err(e) = flip_one(seed) {
            panic!("bit flip run failed; replay with BALLAST_SEED={seed}: {e}");
        }
    }
}

fn flip_one(seed: u64) -> Result<(), String> {
    let mut rng = SimRng::new(seed);
    let segment_size = [1024, 4096][rng.below(2) as usize];
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, segment_size).map_err(|e| e.to_string())?;
    let mut m = Model::default();
    for _ in 0..1 + rng.below(30) {
        let batch: Vec<Record> = (0..1 + rng.below(4))
            .map(|_| m.record(&mut rng, segment_size))
            .collect();
        wal.append(&batch).map_err(|e| e.to_string())?;
        wal.sync().map_err(|e| e.to_string())?;
    }
    drop(wal);
    // A byte inside the written part (header and frames) of a random segment.
    let segments: Vec<_> = disk
        .files_in(Path::new(DIR))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    let seg = &segments[rng.below(segments.len() as u64) as usize];
    let data = disk.contents(seg).unwrap_or_default();
    let frames = common::decode_segment(&data);
    let end = frames.last().map_or(16, |f| f.offset + f.len);
    let at = rng.below(end as u64);
    let bit = rng.below(8) as u8;
    if !disk.flip_bit(seg, at, bit) {
        return Err(format!("no byte {at} in {}", seg.display()));
    }
    // The damage is on the disk itself: a power loss changes nothing about it.
    let disk = disk.crash(rng.next_u64());
    match open(&disk, segment_size) {
        Err(WalError::Corrupt { segment, offset }) => {
            if segment != *seg || offset > at {
                return Err(format!(
                    "flip at {} offset {at}: Corrupt names {} offset {offset}",
                    seg.display(),
                    segment.display()
                ));
            }
            Ok(())
        }
        Err(e) => Err(format!(
            "flip at {} offset {at}: unexpected error {e}",
            seg.display()
        )),
        Ok((_, replay)) => Err(format!(
            "flip at {} offset {at} bit {bit}: opened with {} records (repaired_tail {})",
            seg.display(),
            replay.records.len(),
            replay.repaired_tail
        )),
    }
}
