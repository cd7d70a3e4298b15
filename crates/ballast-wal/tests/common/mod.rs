//! Shared helpers for the integration tests. `decode_segment` re-implements the on-disk format
//! from the crate docs independently of the crate, so the docs are tested too.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use ballast_wal::{Record, RecordKind, Replay, Wal, WalError, WalOptions};

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Deterministic, never-zero payload for entry `index`.
pub fn payload(index: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (index.wrapping_mul(31).wrapping_add(j as u64) as u8) | 1)
        .collect()
}

pub fn entry(index: u64, term: u64, len: usize) -> Record {
    Record {
        kind: RecordKind::Entry,
        index,
        term,
        data: payload(index, len),
    }
}

pub fn hard_state(commit: u64, term: u64) -> Record {
    Record {
        kind: RecordKind::HardState,
        index: commit,
        term,
        data: format!("hs vote=1 term={term} commit={commit}").into_bytes(),
    }
}

pub fn snapshot(index: u64, term: u64) -> Record {
    Record {
        kind: RecordKind::Snapshot,
        index,
        term,
        data: format!("snapshot meta {index}/{term}").into_bytes(),
    }
}

pub fn opts(segment_size: u64) -> WalOptions {
    WalOptions { segment_size }
}

pub fn open(dir: &Path, segment_size: u64) -> Result<(Wal, Replay), WalError> {
    Wal::open(dir, opts(segment_size))
}

/// Segment files of `dir`, oldest first.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "wal"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[derive(Debug, Clone)]
pub struct RawFrame {
    pub offset: usize,
    /// Header + body + padding.
    pub len: usize,
    pub synced: bool,
    pub copy: bool,
    pub record: Record,
}

/// Decodes a segment per the documented format; stops at the first zero length word or bad frame.
pub fn decode_segment(data: &[u8]) -> Vec<RawFrame> {
    let u32_at = |o: usize| u32::from_le_bytes([data[o], data[o + 1], data[o + 2], data[o + 3]]);
    let u64_at = |o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&data[o..o + 8]);
        u64::from_le_bytes(a)
    };
    assert_eq!(&data[..4], b"BWAL");
    assert_eq!(u32_at(4), 1);
    let mut frames = Vec::new();
    let mut off = 16;
    while off + 8 <= data.len() {
        let word = u32_at(off);
        let len = (word & 0x7fff_ffff) as usize;
        if len == 0 {
            break;
        }
        let padded = len.div_ceil(8) * 8;
        if off + 8 + padded > data.len() {
            break;
        }
        let body = &data[off + 8..off + 8 + len];
        let crc = crc32c::crc32c_append(crc32c::crc32c(body), &word.to_le_bytes());
        if crc != u32_at(off + 4) {
            break;
        }
        let kind = match body[0] & 0x7f {
            1 => RecordKind::Entry,
            2 => RecordKind::HardState,
            3 => RecordKind::Snapshot,
            _ => break,
        };
        frames.push(RawFrame {
            offset: off,
            len: 8 + padded,
            synced: word & 0x8000_0000 != 0,
            copy: body[0] & 0x80 != 0,
            record: Record {
                kind,
                index: u64_at(off + 9),
                term: u64_at(off + 17),
                data: body[17..].to_vec(),
            },
        });
        off += 8 + padded;
    }
    frames
}

pub fn decode_file(path: &Path) -> Vec<RawFrame> {
    decode_segment(&fs::read(path).unwrap_or_default())
}

/// Copies every file of `from` into `to` (flat).
pub fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for e in fs::read_dir(from)? {
        let e = e?;
        fs::copy(e.path(), to.join(e.file_name()))?;
    }
    Ok(())
}
