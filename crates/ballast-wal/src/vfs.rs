//! The file layer: every file-system operation the WAL makes, behind [`WalFs`] / [`WalFile`].
//!
//! [`StdFs`] is the real one (std + `fallocate`/`fdatasync`), used by [`crate::Wal::open`].
//! A test can pass another implementation to [`crate::Wal::open_with`] — the simulated
//! power-loss disk in `sim` (cargo feature `sim`) keeps written-but-unsynced data apart so a
//! crash can be simulated faithfully, which `kill -9` cannot (it keeps the page cache).
//!
//! The WAL calls the layer only per sync, per segment and at open, never per record: one
//! dynamic call per step is noise next to the system call behind it.
//!
//! What an implementation must guarantee (what the WAL relies on):
//! - `sync_data` returns only once everything written to the file (and its size) is durable;
//! - `sync_dir` returns only once the creations, renames and removals of entries in the
//!   directory are durable;
//! - space obtained with `preallocate` reads as zeros until written, and later writes inside it
//!   do not fail for lack of space;
//! - a failed operation is reported as an error (the WAL then poisons itself; it never retries).

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;

/// The directory-level operations of the WAL.
pub trait WalFs: fmt::Debug + Send + Sync {
    /// Creates `dir` and its missing parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Makes the creations, renames and removals of entries in `dir` durable (fsync of the dir).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// The names of the entries of `dir` (any order).
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<OsString>>;
    /// Creates `path` if missing and takes an exclusive lock on it, held until the returned
    /// value is dropped. Fails with [`io::ErrorKind::WouldBlock`] if it is locked already.
    fn lock(&self, path: &Path) -> io::Result<Box<dyn WalLock>>;
    /// The whole content of a file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Opens an existing file for reading and writing; the write position is 0.
    fn open_file(&self, path: &Path) -> io::Result<Box<dyn WalFile>>;
    /// Creates a file, or truncates an existing one to 0, for reading and writing.
    fn create_file(&self, path: &Path) -> io::Result<Box<dyn WalFile>>;
    /// Renames `from` to `to`, replacing `to` (atomic).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
}

/// An open file of the WAL.
pub trait WalFile: fmt::Debug + Send + Sync {
    /// The file's current size.
    fn size(&self) -> io::Result<u64>;
    /// Moves the write position.
    fn seek(&mut self, pos: u64) -> io::Result<()>;
    /// Writes all of `buf` at the write position and advances it.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Truncates or extends (with zeros) the file to `len`.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Makes sure `[0, len)` is allocated (zeros where never written) so later writes inside it
    /// neither change the size nor run out of space. Never shrinks the file.
    fn preallocate(&mut self, len: u64) -> io::Result<()>;
    /// `fdatasync`: the file's data and size are durable when this returns `Ok`.
    fn sync_data(&mut self) -> io::Result<()>;
}

/// A held directory lock (released on drop).
pub trait WalLock: fmt::Debug + Send + Sync {}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdFs;

#[derive(Debug)]
struct StdFile(File);

#[derive(Debug)]
struct StdLock(#[allow(dead_code)] File);

impl WalLock for StdLock {}

impl WalFs for StdFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
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

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect()
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn WalLock>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Box::new(StdLock(file))),
            Err(TryLockError::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn open_file(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Box::new(StdFile(file)))
    }

    fn create_file(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Box::new(StdFile(file)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
}

impl WalFile for StdFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn seek(&mut self, pos: u64) -> io::Result<()> {
        self.0.seek(SeekFrom::Start(pos)).map(drop)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn preallocate(&mut self, len: u64) -> io::Result<()> {
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
            // SAFETY: fallocate only reads its integer arguments; the fd is owned by `self.0`,
            // which is borrowed for the duration of the call.
            let r = unsafe { libc::fallocate(self.0.as_raw_fd(), 0, 0, off_len) };
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
        if self.0.metadata()?.len() < len {
            self.0.set_len(len)?;
        }
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
}
