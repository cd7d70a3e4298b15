//! Named failpoints (docs/failpoints.md) around the WAL's durable steps.
//!
//! Compiled to nothing unless the `failpoints` feature is on. An armed `return` action fails the
//! step with an I/O error: `return` / `return(EIO)` is EIO, `return(ENOSPC)` is ENOSPC, and any
//! errno name in [`errno`]'s table (or a plain number) gives that errno. The caller treats the
//! error exactly like the same error from the file system (a failed write or fsync poisons the
//! WAL). `panic`, `sleep(MS)`, `pause` and `print` behave as the `fail` crate defines them.

use std::io;

pub(crate) const BEFORE_APPEND: &str = "wal::before_append";
pub(crate) const AFTER_APPEND: &str = "wal::after_append";
pub(crate) const BEFORE_WRITE: &str = "wal::before_write";
pub(crate) const BEFORE_FSYNC: &str = "wal::before_fsync";
pub(crate) const AFTER_FSYNC: &str = "wal::after_fsync";
pub(crate) const BEFORE_SEGMENT_CUT: &str = "wal::before_segment_cut";
pub(crate) const AFTER_SEGMENT_CUT: &str = "wal::after_segment_cut";
pub(crate) const BEFORE_PURGE: &str = "wal::before_purge";
pub(crate) const AFTER_PURGE: &str = "wal::after_purge";

/// Evaluates the failpoint `name`; an armed `return(ARG)` fails the step with [`io_error`]`(ARG)`.
#[inline]
pub(crate) fn check(name: &str) -> io::Result<()> {
    #[cfg(feature = "failpoints")]
    fail::fail_point!(name, |arg: Option<String>| Err(io_error(arg.as_deref())));
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
    Ok(())
}

/// The I/O error a `return(ARG)` action stands for: an errno name or number; EIO when absent.
#[cfg(feature = "failpoints")]
pub(crate) fn io_error(arg: Option<&str>) -> io::Error {
    let arg = arg
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .unwrap_or("EIO");
    match errno(arg) {
        Some(code) => io::Error::from_raw_os_error(code),
        None => {
            tracing::warn!(arg, "unknown errno name in a failpoint action; using EIO");
            io::Error::from_raw_os_error(EIO)
        }
    }
}

#[cfg(all(feature = "failpoints", target_os = "linux"))]
const EIO: i32 = libc::EIO;
#[cfg(all(feature = "failpoints", not(target_os = "linux")))]
const EIO: i32 = 5;

/// Maps an errno name (`ENOSPC`) or number (`28`) to its value.
#[cfg(feature = "failpoints")]
pub(crate) fn errno(name: &str) -> Option<i32> {
    if let Ok(n) = name.parse::<i32>() {
        return (n > 0).then_some(n);
    }
    errno_by_name(name)
}

#[cfg(all(feature = "failpoints", target_os = "linux"))]
fn errno_by_name(name: &str) -> Option<i32> {
    use libc::*;
    let code = match name {
        "EPERM" => EPERM,
        "ENOENT" => ENOENT,
        "EINTR" => EINTR,
        "EIO" => EIO,
        "ENXIO" => ENXIO,
        "EBADF" => EBADF,
        "EAGAIN" | "EWOULDBLOCK" => EAGAIN,
        "ENOMEM" => ENOMEM,
        "EACCES" => EACCES,
        "EFAULT" => EFAULT,
        "EBUSY" => EBUSY,
        "EEXIST" => EEXIST,
        "EXDEV" => EXDEV,
        "ENODEV" => ENODEV,
        "ENOTDIR" => ENOTDIR,
        "EISDIR" => EISDIR,
        "EINVAL" => EINVAL,
        "ENFILE" => ENFILE,
        "EMFILE" => EMFILE,
        "ETXTBSY" => ETXTBSY,
        "EFBIG" => EFBIG,
        "ENOSPC" => ENOSPC,
        "ESPIPE" => ESPIPE,
        "EROFS" => EROFS,
        "EMLINK" => EMLINK,
        "EPIPE" => EPIPE,
        "ENAMETOOLONG" => ENAMETOOLONG,
        "ENOLCK" => ENOLCK,
        "ENOSYS" => ENOSYS,
        "ENOTEMPTY" => ENOTEMPTY,
        "ELOOP" => ELOOP,
        "ENODATA" => ENODATA,
        "EOVERFLOW" => EOVERFLOW,
        "EBADMSG" => EBADMSG,
        "EOPNOTSUPP" | "ENOTSUP" => EOPNOTSUPP,
        "ETIMEDOUT" => ETIMEDOUT,
        "ESTALE" => ESTALE,
        "EUCLEAN" => EUCLEAN,
        "EDQUOT" => EDQUOT,
        "ECANCELED" => ECANCELED,
        "EKEYEXPIRED" => EKEYEXPIRED,
        "ENOMEDIUM" => ENOMEDIUM,
        "EREMOTEIO" => EREMOTEIO,
        "ENOTRECOVERABLE" => ENOTRECOVERABLE,
        "EHWPOISON" => EHWPOISON,
        _ => return None,
    };
    Some(code)
}

#[cfg(all(feature = "failpoints", not(target_os = "linux")))]
fn errno_by_name(name: &str) -> Option<i32> {
    match name {
        "EIO" => Some(EIO),
        "ENOSPC" => Some(28),
        _ => None,
    }
}

#[cfg(all(test, feature = "failpoints", target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn return_arguments_map_to_errnos() {
        let code = |arg: Option<&str>| io_error(arg).raw_os_error();
        assert_eq!(code(None), Some(libc::EIO));
        assert_eq!(code(Some("")), Some(libc::EIO));
        assert_eq!(code(Some("EIO")), Some(libc::EIO));
        assert_eq!(code(Some("ENOSPC")), Some(libc::ENOSPC));
        assert_eq!(code(Some(" EDQUOT ")), Some(libc::EDQUOT));
        assert_eq!(code(Some("28")), Some(libc::ENOSPC));
        assert_eq!(code(Some("ENOSUCHTHING")), Some(libc::EIO));
        assert_eq!(io_error(Some("ENOSPC")).kind(), io::ErrorKind::StorageFull);
    }
}
