//! Segment files: names, directory listing, creation, preallocation and directory fsync.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

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

pub(crate) fn list(dir: &Path) -> io::Result<Listing> {
    let mut segments = Vec::new();
    let mut temporaries = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(TMP_EXT) {
            temporaries.push(entry.path());
        } else if let Some((seq, _)) = parse_segment_name(name) {
            segments.push((seq, entry.path()));
        } else if name.ends_with(SEGMENT_EXT) {
            tracing::warn!(file = %entry.path().display(), "ignoring file with a malformed segment name");
        }
    }
    segments.sort();
    Ok(Listing {
        segments,
        temporaries,
    })
}

/// Makes creations, renames and removals of entries in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Makes sure `[0, len)` of `file` is allocated (zero-filled where never written), so later
/// writes neither change the file size nor run out of space. Never shrinks the file.
pub(crate) fn preallocate(file: &File, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let Ok(off_len) = libc::off_t::try_from(len) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "segment size too large",
            ));
        };
        // SAFETY: fallocate only reads its integer arguments; the fd is owned by `file`, which is
        // borrowed for the duration of the call.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, off_len) };
        if r == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            // Filesystem without fallocate: fall back to a sparse extension below.
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => {}
            _ => return Err(err),
        }
    }
    if file.metadata()?.len() < len {
        file.set_len(len)?;
    }
    Ok(())
}

/// Creates segment `seq` holding exactly `contents` (which starts with the segment header),
/// atomically: written and fdatasync'ed under a temporary name, renamed, then the directory is
/// fsync'ed. With `prealloc > 0` the file is preallocated to that size first.
///
/// Returns the open file, positioned just after `contents`, and the final path.
pub(crate) fn create(
    dir: &Path,
    seq: u64,
    first_index: u64,
    contents: &[u8],
    prealloc: u64,
) -> io::Result<(File, PathBuf)> {
    crate::failpoint::check(crate::failpoint::BEFORE_SEGMENT_CUT)?;
    let name = segment_name(seq, first_index);
    let path = dir.join(&name);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    preallocate(&file, prealloc.max(contents.len() as u64))?;
    file.write_all(contents)?;
    file.sync_data()?;
    fs::rename(&tmp, &path)?;
    sync_dir(dir)?;
    crate::failpoint::check(crate::failpoint::AFTER_SEGMENT_CUT)?;
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
        let (file, path) = create(dir.path(), 3, 7, b"hello", 4096)?;
        assert_eq!(file.metadata()?.len(), 4096);
        let data = fs::read(&path)?;
        assert_eq!(&data[..5], b"hello");
        assert!(data[5..].iter().all(|&b| b == 0));
        preallocate(&file, 100)?;
        assert_eq!(file.metadata()?.len(), 4096);
        assert!(!dir
            .path()
            .join(format!("{}.tmp", segment_name(3, 7)))
            .exists());
        Ok(())
    }
}
