#![cfg(feature = "failpoints")]
//! Arms every `wal::*` failpoint (docs/failpoints.md) and checks that the WAL fails safe: an
//! injected I/O error poisons it and acknowledges nothing new, a panic after a durable step keeps
//! that step, and reopening always finds every acknowledged record.
//!
//! Run with `cargo test --release -p ballast-wal --features failpoints --test failpoints`.
//! Failpoints are process-global: every test holds a `fail::FailScenario`, which serialises them
//! and disarms everything when dropped.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

use ballast_wal::{Record, Wal, WalError};
use common::*;

const SEG: u64 = 8 << 10;

/// A log with three acknowledged batches; returns the open WAL and the acknowledged records.
fn acked_log(dir: &Path) -> Result<(Wal, Vec<Record>), Box<dyn std::error::Error>> {
    let (mut wal, _) = open(dir, SEG)?;
    let mut acked = Vec::new();
    for i in 1..=3 {
        let batch = vec![entry(i, 1, 200), hard_state(i, 1)];
        wal.append(&batch)?;
        wal.sync()?;
        acked.extend(batch);
    }
    Ok((wal, acked))
}

/// A batch that fits in the current segment.
fn small_batch() -> Vec<Record> {
    vec![entry(4, 1, 300), hard_state(4, 1)]
}

/// A batch that makes the WAL cut exactly one new segment.
fn rotating_batch() -> Vec<Record> {
    (4..12).map(|i| entry(i, 1, 900)).collect()
}

/// Reopens `dir` and checks that the replay starts with `acked` and that whatever follows is a
/// prefix of `unacked` (records appended but never acknowledged may or may not be there).
fn reopen_has(dir: &Path, acked: &[Record], unacked: &[Record], what: &str) -> TestResult {
    let (mut wal, replay) = open(dir, SEG)?;
    let n = acked.len();
    assert!(
        replay.records.len() >= n,
        "{what}: lost acknowledged records"
    );
    assert_eq!(&replay.records[..n], acked, "{what}");
    let rest = &replay.records[n..];
    assert!(
        rest.len() <= unacked.len() && rest == &unacked[..rest.len()],
        "{what}: unexpected records after the acknowledged ones: {rest:?}"
    );
    // The reopened log takes writes again.
    wal.append(&[entry(100, 2, 10)])?;
    wal.sync()?;
    Ok(())
}

fn assert_poisoned(wal: &mut Wal, what: &str) {
    assert!(wal.is_poisoned(), "{what}: not poisoned");
    assert!(matches!(wal.sync(), Err(WalError::Poisoned)), "{what}");
    assert!(
        matches!(wal.append(&[entry(99, 1, 1)]), Err(WalError::Poisoned)),
        "{what}"
    );
    assert!(
        matches!(wal.purge_before(u64::MAX), Err(WalError::Poisoned)),
        "{what}"
    );
}

fn arm(name: &str, action: &str) -> TestResult {
    fail::cfg(name, action).map_err(|e| format!("fail::cfg({name}, {action}): {e}"))?;
    Ok(())
}

#[test]
fn sync_step_errors_poison_and_lose_nothing_acknowledged() -> TestResult {
    let _scenario = fail::FailScenario::setup();
    let cases = [
        ("wal::before_write", "return", false),
        ("wal::before_write", "return(ENOSPC)", true),
        ("wal::before_fsync", "return(EIO)", false),
        ("wal::after_fsync", "return", false),
        ("wal::before_segment_cut", "return(EIO)", true),
        ("wal::before_segment_cut", "return(ENOSPC)", true),
        ("wal::after_segment_cut", "return(ENOSPC)", true),
    ];
    for (name, action, rotate) in cases {
        let what = format!("{name}={action}");
        let tmp = tempfile::tempdir()?;
        let (mut wal, acked) = acked_log(tmp.path())?;
        let segments_before = segment_files(tmp.path()).len();
        let batch = if rotate {
            rotating_batch()
        } else {
            small_batch()
        };
        wal.append(&batch)?;
        arm(name, action)?;
        assert!(
            matches!(wal.sync(), Err(WalError::Io(_))),
            "{what}: sync did not fail with its cause"
        );
        fail::remove(name);
        assert_poisoned(&mut wal, &what);
        drop(wal);
        if rotate && name == "wal::before_segment_cut" {
            assert_eq!(segment_files(tmp.path()).len(), segments_before, "{what}");
        }
        reopen_has(tmp.path(), &acked, &batch, &what)?;
    }
    Ok(())
}

#[test]
fn enospc_at_a_segment_cut_is_a_storage_fault_not_a_lost_write() -> TestResult {
    let _scenario = fail::FailScenario::setup();
    let tmp = tempfile::tempdir()?;
    let (mut wal, mut acked) = acked_log(tmp.path())?;
    // The second cut runs out of space: the first rotating batch stays acknowledged.
    arm("wal::before_segment_cut", "1*off->return(ENOSPC)")?;
    let first = rotating_batch();
    wal.append(&first)?;
    wal.sync()?;
    acked.extend(first);
    let second: Vec<Record> = (12..20).map(|i| entry(i, 1, 900)).collect();
    wal.append(&second)?;
    assert!(matches!(wal.sync(), Err(WalError::Io(_))));
    fail::remove("wal::before_segment_cut");
    assert_poisoned(&mut wal, "ENOSPC at the second cut");
    drop(wal);
    reopen_has(tmp.path(), &acked, &second, "ENOSPC at the second cut")
}

#[test]
fn append_step_errors_poison_and_buffer_nothing_durable() -> TestResult {
    let _scenario = fail::FailScenario::setup();
    for name in ["wal::before_append", "wal::after_append"] {
        let tmp = tempfile::tempdir()?;
        let (mut wal, acked) = acked_log(tmp.path())?;
        arm(name, "return(EIO)")?;
        let batch = small_batch();
        match wal.append(&batch) {
            Err(WalError::Io(e)) => assert_eq!(e.raw_os_error(), Some(5), "{name}"),
            other => panic!("{name}: expected an I/O error, got {other:?}"),
        }
        fail::remove(name);
        assert_poisoned(&mut wal, name);
        drop(wal);
        // Nothing of the failed append reached the disk.
        reopen_has(tmp.path(), &acked, &[], name)?;
    }
    Ok(())
}

#[test]
fn panic_after_a_durable_step_keeps_it() -> TestResult {
    let _scenario = fail::FailScenario::setup();
    // (failpoint, batch rotates, the batch is durable when the failpoint fires)
    let cases = [
        ("wal::after_fsync", false, true),
        ("wal::after_segment_cut", true, true),
        ("wal::before_fsync", false, false),
        ("wal::before_write", false, false),
        ("wal::before_segment_cut", true, false),
        ("wal::after_append", false, false),
    ];
    for (name, rotate, durable) in cases {
        let tmp = tempfile::tempdir()?;
        let (mut wal, mut acked) = acked_log(tmp.path())?;
        let batch = if rotate {
            rotating_batch()
        } else {
            small_batch()
        };
        arm(name, "panic")?;
        let result = catch_unwind(AssertUnwindSafe(|| {
            wal.append(&batch)?;
            wal.sync()
        }));
        fail::remove(name);
        assert!(result.is_err(), "{name}: the failpoint did not panic");
        // A WAL whose step panicked half way refuses further use.
        if name != "wal::after_append" {
            assert_poisoned(&mut wal, name);
        }
        drop(wal);
        if durable {
            acked.extend(batch.iter().cloned());
            reopen_has(tmp.path(), &acked, &[], name)?;
        } else {
            reopen_has(tmp.path(), &acked, &batch, name)?;
        }
    }
    Ok(())
}

#[test]
fn purge_failpoints() -> TestResult {
    let _scenario = fail::FailScenario::setup();
    let build = |dir: &Path| -> Result<(Wal, Vec<Record>), Box<dyn std::error::Error>> {
        let (mut wal, _) = open(dir, SEG)?;
        let mut acked = Vec::new();
        for i in 1..=40 {
            let batch = vec![entry(i, 1, 700), hard_state(i, 1)];
            wal.append(&batch)?;
            wal.sync()?;
            acked.extend(batch);
        }
        Ok((wal, acked))
    };
    // Before: nothing is removed and the WAL stays usable.
    let tmp = tempfile::tempdir()?;
    let (mut wal, acked) = build(tmp.path())?;
    let files = segment_files(tmp.path());
    assert!(files.len() > 3);
    arm("wal::before_purge", "return(EIO)")?;
    assert!(matches!(wal.purge_before(30), Err(WalError::Io(_))));
    fail::remove("wal::before_purge");
    assert_eq!(segment_files(tmp.path()), files);
    assert!(!wal.is_poisoned());
    assert!(wal.purge_before(30)? > 0);
    drop(wal);
    let (_, replay) = open(tmp.path(), SEG)?;
    assert_eq!(replay.records.last(), acked.last());

    // After (an error or a panic once the segments are gone): poisoned; a reopen still holds
    // every entry at or above the purge index and the latest hard state.
    for action in ["return(EIO)", "panic"] {
        let tmp = tempfile::tempdir()?;
        let (mut wal, acked) = build(tmp.path())?;
        arm("wal::after_purge", action)?;
        let result = catch_unwind(AssertUnwindSafe(|| wal.purge_before(30)));
        fail::remove("wal::after_purge");
        assert!(
            !matches!(result, Ok(Ok(_))),
            "after_purge={action}: purge succeeded"
        );
        assert_poisoned(&mut wal, action);
        drop(wal);
        assert!(segment_files(tmp.path()).len() < 4, "nothing was purged");
        let (_, replay) = open(tmp.path(), SEG)?;
        let kept: Vec<&Record> = acked.iter().filter(|r| r.index >= 30).collect();
        let replayed: Vec<&Record> = replay.records.iter().filter(|r| r.index >= 30).collect();
        assert_eq!(replayed, kept, "after_purge={action}");
    }
    Ok(())
}

#[test]
fn sleep_and_pause_delay_the_step() -> TestResult {
    let _scenario = fail::FailScenario::setup();
    let tmp = tempfile::tempdir()?;
    let (mut wal, mut acked) = acked_log(tmp.path())?;
    arm("wal::before_fsync", "sleep(300)")?;
    wal.append(&small_batch())?;
    let start = Instant::now();
    wal.sync()?;
    assert!(start.elapsed() >= Duration::from_millis(300));
    fail::remove("wal::before_fsync");
    acked.extend(small_batch());

    // `pause` holds the sync until the failpoint is disarmed.
    arm("wal::before_fsync", "pause")?;
    let batch = vec![entry(5, 1, 30)];
    wal.append(&batch)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let r = wal.sync();
        let _ = tx.send(());
        (wal, r)
    });
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    fail::remove("wal::before_fsync");
    let (wal, r) = worker.join().map_err(|_| "sync thread panicked")?;
    r?;
    acked.extend(batch);
    drop(wal);
    reopen_has(tmp.path(), &acked, &[], "pause")
}
