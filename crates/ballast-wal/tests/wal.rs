//! Round trips, rotation, purge, locking and limits.

mod common;

use std::fs;

use ballast_wal::{Record, RecordKind, WalError, WalOptions, MAX_RECORD_DATA};
use common::*;

#[test]
fn empty_dir_round_trip() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("a/b/wal");
    let (mut wal, replay) = open(&dir, 1 << 20)?;
    assert_eq!(replay.records, vec![]);
    assert!(!replay.repaired_tail);
    assert_eq!(wal.dir(), dir);
    assert_eq!(segment_files(&dir).len(), 1);
    let batch = vec![
        entry(1, 1, 0),
        entry(2, 1, 5),
        hard_state(2, 1),
        snapshot(0, 0),
    ];
    wal.append(&batch)?;
    wal.sync()?;
    wal.sync()?; // nothing pending: a no-op
    drop(wal);
    let (_, replay) = open(&dir, 1 << 20)?;
    assert_eq!(replay.records, batch);
    assert!(!replay.repaired_tail);
    Ok(())
}

#[test]
fn default_options() {
    assert_eq!(WalOptions::default().segment_size, 64 << 20);
}

#[test]
fn round_trip_across_many_rotations() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (mut wal, _) = open(tmp.path(), 4096)?;
    let mut all = Vec::new();
    let mut index = 0;
    for batch_no in 0..300u64 {
        let mut batch = Vec::new();
        for _ in 0..(batch_no % 7 + 1) {
            index += 1;
            batch.push(entry(
                index,
                1 + batch_no / 100,
                (index * 37 % 500) as usize,
            ));
        }
        batch.push(hard_state(index, 1 + batch_no / 100));
        if batch_no % 50 == 49 {
            batch.push(snapshot(index - 3, 1));
        }
        wal.append(&batch)?;
        all.extend(batch);
        if batch_no % 3 != 0 {
            wal.sync()?; // some syncs cover several appends
        }
    }
    wal.sync()?;
    drop(wal);
    let files = segment_files(tmp.path());
    assert!(files.len() > 50, "only {} segments", files.len());

    let (_, replay) = open(tmp.path(), 4096)?;
    assert!(!replay.repaired_tail);
    assert_eq!(replay.records, all);

    // On disk: every segment but the first starts with COPY frames of the latest snapshot and hard
    // state appended before it, and only there.
    let mut latest_snap: Option<Record> = None;
    let mut latest_hs: Option<Record> = None;
    for (n, file) in files.iter().enumerate() {
        let frames = decode_file(file);
        let copies: Vec<Record> = frames
            .iter()
            .take_while(|f| f.copy)
            .map(|f| f.record.clone())
            .collect();
        let expected: Vec<Record> = if n == 0 {
            vec![]
        } else {
            latest_snap
                .iter()
                .chain(latest_hs.iter())
                .cloned()
                .collect()
        };
        assert_eq!(
            copies,
            expected,
            "copies at the start of {}",
            file.display()
        );
        for f in frames.iter().skip(copies.len()) {
            assert!(!f.copy);
            match f.record.kind {
                RecordKind::HardState => latest_hs = Some(f.record.clone()),
                RecordKind::Snapshot => latest_snap = Some(f.record.clone()),
                RecordKind::Entry => {}
            }
        }
    }
    Ok(())
}

#[test]
fn appending_after_reopen_continues_the_log() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let mut all = Vec::new();
    for round in 0..10u64 {
        let (mut wal, replay) = open(tmp.path(), 2048)?;
        assert_eq!(replay.records, all);
        for i in 0..10 {
            let r = entry(round * 10 + i + 1, 1, 100);
            wal.append(std::slice::from_ref(&r))?;
            all.push(r);
        }
        wal.sync()?;
    }
    Ok(())
}

#[test]
fn unsynced_records_are_not_written() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (mut wal, _) = open(tmp.path(), 4096)?;
    wal.append(&[entry(1, 1, 10)])?;
    wal.sync()?;
    wal.append(&(2..100).map(|i| entry(i, 1, 100)).collect::<Vec<_>>())?;
    drop(wal);
    let (_, replay) = open(tmp.path(), 4096)?;
    assert_eq!(replay.records, vec![entry(1, 1, 10)]);
    assert_eq!(segment_files(tmp.path()).len(), 1);
    Ok(())
}

#[test]
fn purge_removes_exactly_the_segments_below_the_index() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (mut wal, _) = open(tmp.path(), 4096)?;
    for i in 1..=400u64 {
        let mut batch = vec![entry(i, 2, 200), hard_state(i - 1, 2)];
        if i % 100 == 0 {
            batch.push(snapshot(i - 10, 2));
        }
        wal.append(&batch)?;
        wal.sync()?;
    }
    let files = segment_files(tmp.path());
    let max_index = |p: &std::path::Path| {
        decode_file(p)
            .iter()
            .filter(|f| f.record.kind == RecordKind::Entry)
            .map(|f| f.record.index)
            .max()
    };
    for purge_at in [1u64, 50, 123, 250, 399] {
        let before = segment_files(tmp.path());
        let (current, older) = before.split_last().ok_or("no segments")?;
        let expected: Vec<_> = older
            .iter()
            .take_while(|p| max_index(p).is_none_or(|m| m < purge_at))
            .cloned()
            .collect();
        let removed = wal.purge_before(purge_at)?;
        assert_eq!(removed, expected.len(), "purge_before({purge_at})");
        let after = segment_files(tmp.path());
        assert_eq!(after, before[expected.len()..].to_vec());
        assert!(after.contains(current));
        // Everything at or above the purge index survives, and the latest state is replayed.
        let frames: Vec<RawFrame> = after.iter().flat_map(|p| decode_file(p)).collect();
        for i in purge_at..=400 {
            assert!(frames.iter().any(|f| f.record == entry(i, 2, 200)), "{i}");
        }
    }
    assert!(segment_files(tmp.path()).len() < files.len() / 4);
    // Purging past the end keeps the current segment.
    wal.purge_before(u64::MAX)?;
    assert_eq!(segment_files(tmp.path()).len(), 1);
    drop(wal);

    let (_, replay) = open(tmp.path(), 4096)?;
    let last_snap = replay
        .records
        .iter()
        .rev()
        .find(|r| r.kind == RecordKind::Snapshot);
    let last_hs = replay
        .records
        .iter()
        .rev()
        .find(|r| r.kind == RecordKind::HardState);
    assert_eq!(last_snap, Some(&snapshot(390, 2)));
    assert_eq!(last_hs, Some(&hard_state(399, 2)));
    // The replay starts with the copies made when the current segment was created: snapshot,
    // then hard state.
    assert_eq!(replay.records[0].kind, RecordKind::Snapshot);
    assert_eq!(replay.records[1].kind, RecordKind::HardState);
    Ok(())
}

#[test]
fn purge_then_reopen_and_rotate_again_keeps_latest_state() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (mut wal, _) = open(tmp.path(), 2048)?;
    wal.append(&[snapshot(5, 1), hard_state(5, 1)])?;
    for i in 6..=60 {
        wal.append(&[entry(i, 1, 150)])?;
        wal.sync()?;
    }
    wal.purge_before(61)?;
    drop(wal);
    let (mut wal, replay) = open(tmp.path(), 2048)?;
    assert_eq!(replay.records[..2], [snapshot(5, 1), hard_state(5, 1)]);
    for i in 61..=120 {
        wal.append(&[entry(i, 1, 150)])?;
        wal.sync()?;
    }
    wal.purge_before(121)?;
    drop(wal);
    let (_, replay) = open(tmp.path(), 2048)?;
    assert_eq!(replay.records[..2], [snapshot(5, 1), hard_state(5, 1)]);
    assert!(replay.records[2..]
        .iter()
        .all(|r| r.kind == RecordKind::Entry));
    Ok(())
}

#[test]
fn purge_only_removes_a_prefix() -> TestResult {
    // Raft truncation: a later segment re-writes lower indexes. A segment whose entries are all
    // below the purge index must not be removed while an older one still has to stay.
    let tmp = tempfile::tempdir()?;
    let (mut wal, _) = open(tmp.path(), 1024)?;
    // 4 entries of 200 bytes fit in a 1 KiB segment: [1..4] [5..8] [9..12] [3'..6'] [7' 8']
    for i in 1..=12 {
        wal.append(&[entry(i, 1, 200)])?;
    }
    for i in 3..=8 {
        wal.append(&[entry(i, 2, 200)])?;
    }
    wal.sync()?;
    assert_eq!(segment_files(tmp.path()).len(), 5);
    assert_eq!(wal.purge_before(9)?, 2);
    let files = segment_files(tmp.path());
    assert_eq!(files.len(), 3);
    let frames: Vec<RawFrame> = files.iter().flat_map(|p| decode_file(p)).collect();
    for i in 3..=8 {
        assert!(frames.iter().any(|f| f.record == entry(i, 2, 200)), "{i}");
    }
    drop(wal);
    let (_, replay) = open(tmp.path(), 1024)?;
    let expected: Vec<Record> = (9..=12)
        .map(|i| entry(i, 1, 200))
        .chain((3..=8).map(|i| entry(i, 2, 200)))
        .collect();
    assert_eq!(replay.records, expected);
    Ok(())
}

#[test]
fn second_open_of_the_same_dir_fails() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (wal, _) = open(tmp.path(), 4096)?;
    match open(tmp.path(), 4096) {
        Err(WalError::Locked(p)) => {
            assert_eq!(p, tmp.path());
            let msg = WalError::Locked(p).to_string();
            assert!(msg.contains("already open"), "{msg}");
        }
        other => panic!("expected Locked, got {:?}", other.map(|_| ())),
    }
    drop(wal);
    let (_wal, _) = open(tmp.path(), 4096)?;
    Ok(())
}

#[test]
fn record_too_large_is_rejected_and_nothing_is_buffered() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (mut wal, _) = open(tmp.path(), 4096)?;
    let huge = Record {
        kind: RecordKind::Entry,
        index: 2,
        term: 1,
        data: vec![0; MAX_RECORD_DATA + 1],
    };
    match wal.append(&[entry(1, 1, 10), huge]) {
        Err(WalError::RecordTooLarge(n)) => assert_eq!(n, MAX_RECORD_DATA + 1),
        other => panic!("expected RecordTooLarge, got {other:?}"),
    }
    wal.sync()?;
    drop(wal);
    let (_, replay) = open(tmp.path(), 4096)?;
    assert!(replay.records.is_empty());
    Ok(())
}

#[test]
fn records_larger_than_a_segment_get_their_own_segment() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (mut wal, _) = open(tmp.path(), 4096)?;
    let batch = vec![
        entry(1, 1, 100),
        entry(2, 1, 100_000),
        entry(3, 1, 10),
        entry(4, 1, 50_000),
    ];
    wal.append(&batch)?;
    wal.sync()?;
    drop(wal);
    let (_, replay) = open(tmp.path(), 4096)?;
    assert_eq!(replay.records, batch);
    // [1] [2: 100 KB] [3] [4: 50 KB]: a segment that already holds a record rolls over.
    assert_eq!(segment_files(tmp.path()).len(), 4);
    Ok(())
}

#[test]
fn tiny_segment_size_still_works() -> TestResult {
    // Smaller than header + copies: every segment holds exactly one record after its copies.
    let tmp = tempfile::tempdir()?;
    let (mut wal, _) = open(tmp.path(), 1)?;
    let mut all = Vec::new();
    for i in 1..=20 {
        let batch = vec![entry(i, 1, 30), hard_state(i, 1)];
        wal.append(&batch)?;
        all.extend(batch);
    }
    wal.sync()?;
    drop(wal);
    assert_eq!(segment_files(tmp.path()).len(), 40);
    let (_, replay) = open(tmp.path(), 1)?;
    assert_eq!(replay.records, all);
    Ok(())
}

#[test]
fn missing_middle_segment_is_an_error() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (mut wal, _) = open(tmp.path(), 1024)?;
    for i in 1..=30 {
        wal.append(&[entry(i, 1, 200)])?;
        wal.sync()?;
    }
    drop(wal);
    let files = segment_files(tmp.path());
    fs::remove_file(&files[2])?;
    match open(tmp.path(), 1024) {
        Err(WalError::MissingSegment { expected, found }) => {
            assert_eq!(expected, 2);
            assert_eq!(found, files[3]);
        }
        other => panic!("expected MissingSegment, got {:?}", other.map(|_| ())),
    }
    Ok(())
}

#[test]
fn segment_header_mismatch_is_corrupt() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (mut wal, _) = open(tmp.path(), 1024)?;
    for i in 1..=30 {
        wal.append(&[entry(i, 1, 200)])?;
        wal.sync()?;
    }
    drop(wal);
    let files = segment_files(tmp.path());
    // The last segment's header names another sequence number than its file name.
    let last = files.last().ok_or("no segments")?;
    let mut data = fs::read(last)?;
    data[8] ^= 0x40;
    fs::write(last, &data)?;
    match open(tmp.path(), 1024) {
        Err(WalError::Corrupt { segment, offset }) => {
            assert_eq!((segment, offset), (last.clone(), 0));
        }
        other => panic!("expected Corrupt, got {:?}", other.map(|_| ())),
    }
    Ok(())
}
