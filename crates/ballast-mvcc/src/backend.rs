//! What sits between the store and redb's storage: a size-tracking wrapper around any
//! [`StorageBackend`] (so [`Store::db_size`](crate::Store::db_size) is an atomic load, not a
//! `stat` per request), the failpoint helper, and the errno names failpoints accept.

use std::fmt;
use std::io;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use redb::{BackendError, StorageBackend};

use crate::MvccError;

/// Forwards every call to `inner` and remembers the storage length (set by `len`, `set_len` and
/// writes past the end), readable through the shared `len` counter without any I/O.
pub(crate) struct SizeTracked<B> {
    inner: B,
    len: Arc<AtomicU64>,
}

impl<B: StorageBackend> SizeTracked<B> {
    /// Wraps `inner`; the counter starts at its current length (0 if that cannot be read: redb's
    /// open calls `len` first and corrects it).
    pub(crate) fn new(inner: B) -> (Self, Arc<AtomicU64>) {
        let start = inner.len().unwrap_or(0);
        let len = Arc::new(AtomicU64::new(start));
        (
            SizeTracked {
                inner,
                len: len.clone(),
            },
            len,
        )
    }
}

impl<B: fmt::Debug> fmt::Debug for SizeTracked<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SizeTracked")
            .field("inner", &self.inner)
            .field("len", &self.len.load(Ordering::Relaxed))
            .finish()
    }
}

impl<B: StorageBackend> StorageBackend for SizeTracked<B> {
    fn len(&self) -> Result<u64, io::Error> {
        let n = self.inner.len()?;
        self.len.store(n, Ordering::Relaxed);
        Ok(n)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.inner.set_len(len)?;
        self.len.store(len, Ordering::Relaxed);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.inner.write(offset, data)?;
        self.len
            .fetch_max(offset.saturating_add(data.len() as u64), Ordering::Relaxed);
        Ok(())
    }

    fn close(&self) -> Result<(), io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

/// The Linux errno of a name such as `ENOSPC` (what `return(ENOSPC)` at a failpoint means).
/// Unknown names and no name at all are EIO.
#[cfg_attr(not(any(test, feature = "failpoints")), allow(dead_code))]
pub(crate) fn errno_named(name: Option<&str>) -> i32 {
    match name.map(str::trim).unwrap_or("EIO") {
        "EPERM" => 1,
        "ENOENT" => 2,
        "EINTR" => 4,
        "EIO" => 5,
        "ENXIO" => 6,
        "EBADF" => 9,
        "EAGAIN" => 11,
        "ENOMEM" => 12,
        "EACCES" => 13,
        "EFAULT" => 14,
        "EBUSY" => 16,
        "EEXIST" => 17,
        "ENODEV" => 19,
        "EINVAL" => 22,
        "ENFILE" => 23,
        "EMFILE" => 24,
        "EFBIG" => 27,
        "ENOSPC" => 28,
        "ESPIPE" => 29,
        "EROFS" => 30,
        "EDQUOT" => 122,
        other => other.parse().unwrap_or(5),
    }
}

/// The I/O error a failpoint's `return(ARG)` stands for, as a backend error.
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
pub(crate) fn failpoint_error(name: &str, arg: Option<String>) -> MvccError {
    let e = io::Error::from_raw_os_error(errno_named(arg.as_deref()));
    tracing::warn!(failpoint = name, error = %e, "failpoint returned an error");
    MvccError::Backend(redb::Error::Io(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_names() {
        assert_eq!(errno_named(None), 5);
        assert_eq!(errno_named(Some("ENOSPC")), 28);
        assert_eq!(errno_named(Some(" EROFS ")), 30);
        assert_eq!(errno_named(Some("28")), 28);
        assert_eq!(errno_named(Some("nonsense")), 5);
        let e = io::Error::from_raw_os_error(errno_named(Some("ENOSPC")));
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
    }
}
