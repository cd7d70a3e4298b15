//! Segment files: names, directory listing and creation.

use std::io;
use std::path::{Path, PathBuf};

use crate::failpoint;
use crate::vfs::{WalFile, WalFs};

pub(crate) const SEGMENT_EXT: &str = ".wal";
pub(crate) const TMP_EXT: &str = ".wal.tmp";
pub(crate) const LOCK_FILE: &str = "LOCK";

/// `{seq:016x}-{first_index:016x}.wal`
pub(crate) fn segment_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}{SEGMENT_EXT}")
}

/// Parses a segment file name into `(seq, first_index)`.
pub(crate) fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(SEGMENT_EXT)?;
    let (seq, first) = stem.split_once('-')?;
    if seq.len() != 16 || first.len() != 16 {
        return None;
    }
    let hex = |s: &str| {
        if s.bytes().all(|b| b.is_ascii_hexdigit()) {
            u64::from_str_radix(s, 16).ok()
        } else {
            None
        }
    };
    Some((hex(seq)?, hex(first)?))
}

#[derive(Debug)]
pub(crate) struct Listing {
    /// `(seq, path)`, sorted by seq.
    pub segments: Vec<(u64, PathBuf)>,
    /// Leftover `*.wal.tmp` files from an interrupted segment creation.
    pub temporaries: Vec<PathBuf>,
}

pub(crate) fn list(fs: &dyn WalFs, dir: &Path) -> io::Result<Listing> {
    let mut segments = Vec::new();
    let mut temporaries = Vec::new();
    for name in fs.list_dir(dir)? {
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(TMP_EXT) {
            temporaries.push(dir.join(name));
        } else if let Some((seq, _)) = parse_segment_name(name) {
            segments.push((seq, dir.join(name)));
        } else if name.ends_with(SEGMENT_EXT) {
            tracing::warn!(file = %dir.join(name).display(), "ignoring file with a malformed segment name");
        }
    }
    segments.sort();
    Ok(Listing {
        segments,
        temporaries,
    })
}

/// Creates segment `seq` holding exactly `contents` (which starts with the segment header),
/// atomically: written and fdatasync'ed under a temporary name, renamed, then the directory is
/// fsync'ed. With `prealloc > 0` the file is preallocated to that size first.
///
/// Returns the open file, positioned just after `contents`, and the final path.
pub(crate) fn create(
    fs: &dyn WalFs,
    dir: &Path,
    seq: u64,
    first_index: u64,
    contents: &[u8],
    prealloc: u64,
) -> io::Result<(Box<dyn WalFile>, PathBuf)> {
    failpoint::check(failpoint::BEFORE_SEGMENT_CUT)?;
    let name = segment_name(seq, first_index);
    let path = dir.join(&name);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = fs.create_file(&tmp)?;
    file.preallocate(prealloc.max(contents.len() as u64))?;
    file.write_all(contents)?;
    file.sync_data()?;
    fs.rename(&tmp, &path)?;
    fs.sync_dir(dir)?;
    failpoint::check(failpoint::AFTER_SEGMENT_CUT)?;
    Ok((file, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_by_seq() {
        let n = segment_name(0x1f, 0xabc);
        assert_eq!(n, "000000000000001f-0000000000000abc.wal");
        assert_eq!(parse_segment_name(&n), Some((0x1f, 0xabc)));
        assert!(segment_name(9, u64::MAX) < segment_name(10, 0));
        for bad in [
            "LOCK",
            "000000000000001f-0000000000000abc.wal.tmp",
            "1f-abc.wal",
            "000000000000001f_0000000000000abc.wal",
            "000000000000001g-0000000000000abc.wal",
            "+00000000000001f-0000000000000abc.wal",
        ] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn preallocate_extends_with_zeros_and_never_shrinks() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let (mut file, path) = create(&crate::StdFs, dir.path(), 3, 7, b"hello", 4096)?;
        assert_eq!(file.size()?, 4096);
        let data = std::fs::read(&path)?;
        assert_eq!(&data[..5], b"hello");
        assert!(data[5..].iter().all(|&b| b == 0));
        file.preallocate(100)?;
        assert_eq!(file.size()?, 4096);
        assert!(!dir
            .path()
            .join(format!("{}.tmp", segment_name(3, 7)))
            .exists());
        Ok(())
    }
}
