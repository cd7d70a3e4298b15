//! Torn tails, corruption and interrupted rotations.

mod common;

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use ballast_wal::{Record, WalError};
use common::*;

const SEG: u64 = 64 << 10;

/// A single-segment log: three synced batches of entries; returns (records, last segment path).
fn build(dir: &Path) -> Result<(Vec<Record>, PathBuf), Box<dyn std::error::Error>> {
    let (mut wal, _) = open(dir, SEG)?;
    let mut all = Vec::new();
    let mut index = 0;
    for batch_len in [5, 3, 4] {
        let batch: Vec<Record> = (0..batch_len)
            .map(|_| {
                index += 1;
                entry(index, 1, 300)
            })
            .collect();
        wal.append(&batch)?;
        wal.sync()?;
        all.extend(batch);
    }
    let files = segment_files(dir);
    assert_eq!(files.len(), 1);
    Ok((all, files[0].clone()))
}

/// Opens a damaged copy, expects a repaired tail with `expected` records, then checks that
/// appending and reopening gives a clean log.
fn expect_repaired(dir: &Path, expected: &[Record], what: &str) -> TestResult {
    let (mut wal, replay) = open(dir, SEG)?;
    assert!(replay.repaired_tail, "{what}: not reported as repaired");
    assert_eq!(replay.records, expected, "{what}");
    let more = vec![entry(100, 2, 50), hard_state(100, 2)];
    wal.append(&more)?;
    wal.sync()?;
    drop(wal);
    let (_, replay) = open(dir, SEG)?;
    assert!(!replay.repaired_tail, "{what}: second open repaired again");
    let mut all = expected.to_vec();
    all.extend(more);
    assert_eq!(replay.records, all, "{what}: after append + reopen");
    Ok(())
}

fn expect_corrupt(dir: &Path, segment: &Path, offset: usize, what: &str) {
    match open(dir, SEG) {
        Err(WalError::Corrupt {
            segment: s,
            offset: o,
        }) => assert_eq!((s.as_path(), o), (segment, offset as u64), "{what}"),
        other => panic!("{what}: expected Corrupt, got {:?}", other.map(|r| r.1)),
    }
}

fn set_len(path: &Path, len: u64) -> std::io::Result<()> {
    OpenOptions::new().write(true).open(path)?.set_len(len)
}

#[test]
fn truncation_at_every_offset_inside_the_last_record_is_repaired() -> TestResult {
    let pristine = tempfile::tempdir()?;
    let (all, seg) = build(pristine.path())?;
    let frames = decode_file(&seg);
    let last = frames.last().ok_or("no frames")?;
    for cut in last.offset + 1..last.offset + last.len {
        let work = tempfile::tempdir()?;
        copy_dir(pristine.path(), work.path())?;
        let name = seg.file_name().ok_or("name")?;
        set_len(&work.path().join(name), cut as u64)?;
        expect_repaired(work.path(), &all[..all.len() - 1], &format!("cut at {cut}"))?;
    }
    Ok(())
}

/// `build` plus a last synced record spanning several sectors; returns (records, segment path).
fn build_big_last(dir: &Path) -> Result<(Vec<Record>, PathBuf), Box<dyn std::error::Error>> {
    let (mut all, seg) = build(dir)?;
    let (mut wal, _) = open(dir, SEG)?;
    let big = entry(13, 1, 1800);
    wal.append(std::slice::from_ref(&big))?;
    wal.sync()?;
    all.push(big);
    Ok((all, seg))
}

#[test]
fn zeroed_trailing_sectors_of_the_last_record_are_repaired() -> TestResult {
    // What an interrupted write into preallocated space looks like: the file keeps its length and
    // the sectors that never reached the disk read as zeros.
    let pristine = tempfile::tempdir()?;
    let (all, seg) = build_big_last(pristine.path())?;
    let name = seg.file_name().ok_or("name")?;
    let last = decode_file(&seg).last().cloned().ok_or("no frames")?;
    let end = last.offset + last.len;
    let data = fs::read(&seg)?;
    let first_sector = (last.offset / 512 + 1) * 512;
    assert!(
        end - first_sector > 1024,
        "the last record spans at least three sectors"
    );
    let mut damaged = Vec::new();
    for s in (first_sector..end).step_by(512) {
        let mut d = data.clone();
        d[s..].fill(0);
        damaged.push((format!("zeroed from sector {s}"), d));
    }
    // One middle sector lost, the later ones written.
    let mut d = data.clone();
    d[first_sector..first_sector + 512].fill(0);
    damaged.push(("one zeroed sector".to_string(), d));
    // The record's part of the sector it shares with the record before it lost.
    let mut d = data.clone();
    d[last.offset..first_sector].fill(0);
    damaged.push(("zeroed first sector part".to_string(), d));
    for (what, d) in damaged {
        let work = tempfile::tempdir()?;
        copy_dir(pristine.path(), work.path())?;
        fs::write(work.path().join(name), &d)?;
        expect_repaired(work.path(), &all[..all.len() - 1], &what)?;
    }
    Ok(())
}

#[test]
fn zero_length_word_followed_by_zeros_is_the_normal_end() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (all, seg) = build_big_last(tmp.path())?;
    let last = decode_file(&seg).last().cloned().ok_or("no frames")?;
    let mut d = fs::read(&seg)?;
    d[last.offset..].fill(0);
    fs::write(&seg, &d)?;
    let (_, replay) = open(tmp.path(), SEG)?;
    assert!(!replay.repaired_tail);
    assert_eq!(replay.records, &all[..all.len() - 1]);
    Ok(())
}

#[test]
fn zeros_that_are_not_an_unwritten_sector_in_the_last_record_are_corrupt() -> TestResult {
    // Zeros inside a sector whose other bytes were written cannot come from a crash.
    let tmp = tempfile::tempdir()?;
    let (_, seg) = build_big_last(tmp.path())?;
    let last = decode_file(&seg).last().cloned().ok_or("no frames")?;
    let first_sector = (last.offset / 512 + 1) * 512;
    let mut d = fs::read(&seg)?;
    d[first_sector + 8..first_sector + 500].fill(0);
    fs::write(&seg, &d)?;
    expect_corrupt(
        tmp.path(),
        &seg,
        last.offset,
        "zeros inside a written sector",
    );
    Ok(())
}

#[test]
fn every_byte_flip_in_the_complete_last_record_is_corrupt() -> TestResult {
    // The last record was synced (acknowledged) and every sector of it is written: a flipped
    // bit is changed durable data, never a torn write to drop.
    let pristine = tempfile::tempdir()?;
    let (_, seg) = build(pristine.path())?;
    let frames = decode_file(&seg);
    let last = frames.last().ok_or("no frames")?;
    let data = fs::read(&seg)?;
    let name = seg.file_name().ok_or("name")?;
    for at in last.offset..last.offset + last.len {
        let work = tempfile::tempdir()?;
        copy_dir(pristine.path(), work.path())?;
        let mut d = data.clone();
        d[at] ^= 0x10;
        fs::write(work.path().join(name), &d)?;
        expect_corrupt(
            work.path(),
            &work.path().join(name),
            last.offset,
            &format!("flip at {at}"),
        );
    }
    Ok(())
}

#[test]
fn garbage_after_the_last_record_is_corrupt() -> TestResult {
    // Space after the end of data is zero-filled and a crash only leaves zeros or our own bytes:
    // a non-zero, out-of-range length word means something else wrote into the segment.
    let tmp = tempfile::tempdir()?;
    let (_, seg) = build(tmp.path())?;
    let end = decode_file(&seg).last().map_or(0, |f| f.offset + f.len);
    let mut d = fs::read(&seg)?;
    d[end..end + 100].fill(0xab);
    fs::write(&seg, &d)?;
    expect_corrupt(tmp.path(), &seg, end, "garbage after the end");
    Ok(())
}

#[test]
fn corrupt_error_names_the_segment_the_offset_and_what_to_do() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (_, seg) = build(tmp.path())?;
    let frames = decode_file(&seg);
    let mut d = fs::read(&seg)?;
    d[frames[6].offset + 30] ^= 1;
    fs::write(&seg, &d)?;
    let err = match open(tmp.path(), SEG) {
        Err(e) => e,
        Ok(_) => return Err("opened a corrupt log".into()),
    };
    let msg = err.to_string();
    for part in [
        seg.display().to_string(),
        format!("offset {}", frames[6].offset),
        "synced".to_string(),
        "docs/recovery.md".to_string(),
    ] {
        assert!(msg.contains(&part), "{msg:?} lacks {part:?}");
    }
    Ok(())
}

#[test]
fn flip_in_the_middle_of_the_last_segment_is_corrupt() -> TestResult {
    // Record 2 belongs to the first of three synced writes: two completed writes follow it.
    let tmp = tempfile::tempdir()?;
    let (_, seg) = build(tmp.path())?;
    let frames = decode_file(&seg);
    let mut d = fs::read(&seg)?;
    d[frames[2].offset + 40] ^= 1;
    fs::write(&seg, &d)?;
    expect_corrupt(
        tmp.path(),
        &seg,
        frames[2].offset,
        "flip in the first write",
    );
    Ok(())
}

#[test]
fn flip_in_the_last_write_but_not_its_last_record_is_corrupt() -> TestResult {
    // A torn write leaves zeros, never a flipped bit followed by the rest of the write.
    let tmp = tempfile::tempdir()?;
    let (_, seg) = build(tmp.path())?;
    let frames = decode_file(&seg);
    let at = frames[frames.len() - 3].offset;
    let mut d = fs::read(&seg)?;
    d[at + 30] ^= 1;
    fs::write(&seg, &d)?;
    expect_corrupt(tmp.path(), &seg, at, "flip in the last write");
    Ok(())
}

#[test]
fn unwritten_sector_inside_the_last_write_is_repaired() -> TestResult {
    // The final write's later pages reached the disk, an earlier sector of it did not.
    let tmp = tempfile::tempdir()?;
    let (mut wal, _) = open(tmp.path(), SEG)?;
    let first: Vec<Record> = (1..=3).map(|i| entry(i, 1, 300)).collect();
    let second: Vec<Record> = (4..=30).map(|i| entry(i, 1, 300)).collect();
    wal.append(&first)?;
    wal.sync()?;
    wal.append(&second)?;
    wal.sync()?;
    drop(wal);
    let seg = &segment_files(tmp.path())[0];
    let frames = decode_file(seg);
    let mut d = fs::read(seg)?;
    let sector = (frames[10].offset / 512 + 1) * 512;
    d[sector..sector + 512].fill(0);
    fs::write(seg, &d)?;
    let survivors = frames
        .iter()
        .take_while(|f| f.offset + f.len <= sector)
        .count();
    let mut expected = first.clone();
    expected.extend_from_slice(&second[..survivors - 3]);
    expect_repaired(tmp.path(), &expected, "zeroed sector in the last write")?;

    // The same damage in a write that is followed by two completed writes is corruption.
    let tmp = tempfile::tempdir()?;
    let (mut wal, _) = open(tmp.path(), SEG)?;
    for batch in [&second, &first, &first] {
        wal.append(batch)?;
        wal.sync()?;
    }
    drop(wal);
    let seg = &segment_files(tmp.path())[0];
    let frames = decode_file(seg);
    let mut d = fs::read(seg)?;
    let sector = (frames[10].offset / 512 + 1) * 512;
    d[sector..sector + 512].fill(0);
    fs::write(seg, &d)?;
    let bad = frames
        .iter()
        .find(|f| f.offset + f.len > sector)
        .ok_or("frame")?;
    expect_corrupt(
        tmp.path(),
        seg,
        bad.offset,
        "zeroed sector before two writes",
    );
    Ok(())
}

/// A log of several segments; returns its files.
fn build_segments(dir: &Path) -> Result<(Vec<Record>, Vec<PathBuf>), Box<dyn std::error::Error>> {
    let (mut wal, _) = open(dir, 2048)?;
    let mut all = Vec::new();
    for i in 1..=40 {
        let batch = vec![entry(i, 1, 200), hard_state(i, 1)];
        wal.append(&batch)?;
        wal.sync()?;
        all.extend(batch);
    }
    let files = segment_files(dir);
    assert!(files.len() > 4);
    Ok((all, files))
}

#[test]
fn any_damage_in_a_non_last_segment_is_corrupt() -> TestResult {
    let pristine = tempfile::tempdir()?;
    let (_, files) = build_segments(pristine.path())?;
    let victim = &files[1];
    let frames = decode_file(victim);
    let data = fs::read(victim)?;
    let name = victim.file_name().ok_or("name")?;
    // Flip one byte in each frame (header, body, last byte), including the final frame.
    for f in &frames {
        for at in [f.offset, f.offset + 5, f.offset + 20, f.offset + f.len - 1] {
            let work = tempfile::tempdir()?;
            copy_dir(pristine.path(), work.path())?;
            let mut d = data.clone();
            d[at] ^= 0x04;
            fs::write(work.path().join(name), &d)?;
            expect_corrupt(work.path(), &work.path().join(name), f.offset, "flip");
        }
    }
    // Truncated (a torn tail is only possible in the last segment).
    let work = tempfile::tempdir()?;
    copy_dir(pristine.path(), work.path())?;
    let last = frames.last().ok_or("frames")?;
    set_len(&work.path().join(name), (last.offset + 3) as u64)?;
    expect_corrupt(
        work.path(),
        &work.path().join(name),
        last.offset,
        "truncated",
    );
    // Zeros in the middle of a non-last segment are not an end of data.
    let work = tempfile::tempdir()?;
    copy_dir(pristine.path(), work.path())?;
    let mut d = data.clone();
    d[frames[2].offset..].fill(0);
    fs::write(work.path().join(name), &d)?;
    expect_corrupt(
        work.path(),
        &work.path().join(name),
        frames[2].offset,
        "zeroed",
    );
    // A damaged segment header.
    let work = tempfile::tempdir()?;
    copy_dir(pristine.path(), work.path())?;
    let mut d = data.clone();
    d[1] ^= 1;
    fs::write(work.path().join(name), &d)?;
    expect_corrupt(work.path(), &work.path().join(name), 0, "header");
    Ok(())
}

#[test]
fn leftover_temporary_segment_is_removed() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (all, files) = build_segments(tmp.path())?;
    let last = files.last().ok_or("files")?;
    let name = last.file_name().and_then(|n| n.to_str()).ok_or("name")?;
    let next = format!("{:016x}{}.tmp", files.len(), &name[16..]);
    fs::write(tmp.path().join(&next), b"half a segment \x01\x02")?;
    let (_, replay) = open(tmp.path(), 2048)?;
    assert_eq!(replay.records, all);
    assert!(!replay.repaired_tail);
    assert!(!tmp.path().join(&next).exists());
    Ok(())
}

#[test]
fn unfinished_last_segment_is_removed_and_rotation_resumes() -> TestResult {
    // A crash between creating the next segment and writing its header (which the tmp + rename
    // protocol prevents, but a filesystem might still show): empty, partial header, zero-filled.
    let pristine = tempfile::tempdir()?;
    let (all, files) = build_segments(pristine.path())?;
    let last = files.last().ok_or("files")?;
    let name = last.file_name().and_then(|n| n.to_str()).ok_or("name")?;
    let seq = files.len() as u64;
    let next = format!("{seq:016x}{}", &name[16..]);
    let mut header = b"BWAL".to_vec();
    header.extend_from_slice(&1u32.to_le_bytes());
    header.extend_from_slice(&seq.to_le_bytes());
    // (A header prefix of 9 bytes or more followed by zeros is a complete header for this seq.)
    let mut zero_filled = header[..6].to_vec();
    zero_filled.resize(4096, 0);
    for contents in [vec![], header[..7].to_vec(), zero_filled, vec![0; 100]] {
        let work = tempfile::tempdir()?;
        copy_dir(pristine.path(), work.path())?;
        fs::write(work.path().join(&next), &contents)?;
        let (mut wal, replay) = open(work.path(), 2048)?;
        assert!(replay.repaired_tail);
        assert_eq!(replay.records, all);
        assert!(!work.path().join(&next).exists());
        let mut expected = all.clone();
        for i in 41..=60 {
            let batch = vec![entry(i, 1, 200), hard_state(i, 1)];
            wal.append(&batch)?;
            wal.sync()?;
            expected.extend(batch);
        }
        drop(wal);
        let (_, replay) = open(work.path(), 2048)?;
        assert!(!replay.repaired_tail);
        assert_eq!(replay.records, expected);
        assert!(segment_files(work.path()).len() > files.len());
    }
    Ok(())
}

#[test]
fn segment_with_only_header_and_copies_is_a_clean_log() -> TestResult {
    // A crash right after a rotation completed, before anything else was written to the new
    // segment: purge the old ones and the log still holds the latest state.
    let tmp = tempfile::tempdir()?;
    let (mut wal, _) = open(tmp.path(), 1024)?;
    wal.append(&[snapshot(3, 1), hard_state(3, 1)])?;
    for i in 4..=20 {
        wal.append(&[entry(i, 1, 200)])?;
        wal.sync()?;
    }
    // Force a rotation whose only user record is a hard state, then purge everything else.
    wal.append(&[entry(21, 1, 900)])?;
    wal.sync()?;
    wal.purge_before(u64::MAX)?;
    drop(wal);
    let (_, replay) = open(tmp.path(), 1024)?;
    assert!(!replay.repaired_tail);
    assert_eq!(
        replay.records,
        vec![snapshot(3, 1), hard_state(3, 1), entry(21, 1, 900)]
    );
    Ok(())
}

#[test]
fn unfinished_only_segment_after_purge_is_corrupt() -> TestResult {
    // If the only segment left looks unfinished, earlier segments (and their state) were purged:
    // deleting it would lose the latest hard state, so refuse.
    let tmp = tempfile::tempdir()?;
    let (_, files) = build_segments(tmp.path())?;
    for f in &files[..files.len() - 1] {
        fs::remove_file(f)?;
    }
    let last = files.last().ok_or("files")?;
    fs::write(last, vec![0u8; 2048])?;
    expect_corrupt(tmp.path(), last, 0, "only segment unfinished");
    Ok(())
}

#[test]
fn current_segment_without_copies_gets_them_back() -> TestResult {
    // A filesystem that kept the rename of a new segment but lost the copies written before it
    // (exact-sized predecessor, valid header, nothing else). Purging the predecessor must still
    // not lose the latest state.
    let tmp = tempfile::tempdir()?;
    let (all, files) = build_segments(tmp.path())?;
    let last = files.last().ok_or("files")?;
    let end = decode_file(last).last().map_or(16, |f| f.offset + f.len);
    set_len(last, end as u64)?;
    let name = last.file_name().and_then(|n| n.to_str()).ok_or("name")?;
    let seq = files.len() as u64;
    let mut header = b"BWAL".to_vec();
    header.extend_from_slice(&1u32.to_le_bytes());
    header.extend_from_slice(&seq.to_le_bytes());
    header.resize(2048, 0);
    fs::write(
        tmp.path().join(format!("{seq:016x}{}", &name[16..])),
        &header,
    )?;

    let (mut wal, replay) = open(tmp.path(), 2048)?;
    assert_eq!(replay.records, all);
    wal.purge_before(u64::MAX)?;
    drop(wal);
    let (_, replay) = open(tmp.path(), 2048)?;
    assert_eq!(replay.records, vec![hard_state(40, 1)]);
    Ok(())
}
