//! Fail-stop: what a member does when its storage or one of its threads fails.
//!
//! A WAL write or fsync error, a backend commit error, a raft entry that does not decode, a
//! failed raft snapshot or WAL purge, a failed compaction step, or a panic in the raft, apply
//! or compaction thread is a [`Fault`]. The thread that meets it calls
//! [`RaftStatus::fail_stop`], which, for the first fault only:
//! - logs ONE error line naming the fault and the file or directory;
//! - marks the member stopped, so every new request is refused (the gate in front of all gRPC
//!   services answers `etcdserver: server stopped`, `/health` answers false);
//! - wakes [`crate::run`], which marks gRPC health `NOT_SERVING`, ends open streams, lets the
//!   requests in flight get their error, and returns the fault so the process exits non-zero.
//!
//! After a failed fsync nothing about the file can be trusted (its dirty pages may be gone), so
//! the member never retries and never goes on applying: a supervisor restarts it, and the
//! restart replays the WAL. An entry is never skipped. This is etcd's behaviour (it panics or
//! exits on the same errors); a panic is caught at the thread boundary instead of aborting
//! the process so that the log line and the health status go out first.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use crate::error::ServerError;
use crate::raft::RaftStatus;

/// One storage or thread failure that stops the member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The step that failed, e.g. "wal sync (write + fdatasync)", "backend commit".
    pub step: String,
    /// The file or directory the step works on, when there is one.
    pub file: Option<PathBuf>,
    /// The error, as the failing layer reported it.
    pub error: String,
}

impl Fault {
    pub fn new(
        step: impl Into<String>,
        file: Option<&Path>,
        error: impl std::fmt::Display,
    ) -> Self {
        Fault {
            step: step.into(),
            file: file.map(Path::to_path_buf),
            error: error.to_string(),
        }
    }

    /// A panic caught at the boundary of `thread`, with its message.
    pub fn panic(thread: &str, payload: &(dyn std::any::Any + Send)) -> Self {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string());
        Fault::new(format!("{thread} thread"), None, format!("panicked: {msg}"))
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.file {
            Some(file) => write!(
                f,
                "{} failed: {}: {}",
                self.step,
                file.display(),
                self.error
            ),
            None => write!(f, "{} failed: {}", self.step, self.error),
        }
    }
}

impl std::error::Error for Fault {}

/// The member's fault slot: the first fault, and the wake-up for [`crate::run`].
#[derive(Default)]
pub struct FaultSlot {
    first: OnceLock<Fault>,
    notify: tokio::sync::Notify,
    /// The backend file, so the apply thread's faults can name it.
    backend_path: OnceLock<PathBuf>,
}

impl FaultSlot {
    /// The first fault, if the member failed.
    pub fn get(&self) -> Option<&Fault> {
        self.first.get()
    }

    /// Resolves once a fault is recorded (at once if one already is).
    pub async fn wait(&self) -> Fault {
        loop {
            let notified = self.notify.notified();
            if let Some(f) = self.first.get() {
                return f.clone();
            }
            notified.await;
        }
    }

    pub fn set_backend_path(&self, path: PathBuf) {
        let _ = self.backend_path.set(path);
    }

    pub fn backend_path(&self) -> Option<&Path> {
        self.backend_path.get().map(PathBuf::as_path)
    }
}

impl RaftStatus {
    /// Stops the member for `fault` (see the module docs). Only the first fault is logged and
    /// kept; later ones (the consequences of the first) are ignored. Returns the error the
    /// caller's waiters get.
    pub fn fail_stop(&self, fault: Fault) -> ServerError {
        self.stopped.store(true, Ordering::SeqCst);
        if self.fault.first.set(fault.clone()).is_ok() {
            tracing::error!(
                step = %fault.step,
                file = fault.file.as_ref().map(|f| f.display().to_string()),
                error = %fault.error,
                "{fault}; stopping the member"
            );
            self.fault.notify.notify_waiters();
            self.fault.notify.notify_one();
        }
        ServerError::Stopped
    }

    /// [`RaftStatus::fail_stop`] for a failed backend `step` (names the backend file).
    pub fn fail_stop_backend(&self, step: &str, error: impl std::fmt::Display) -> ServerError {
        self.fail_stop(Fault::new(step, self.fault.backend_path(), error))
    }

    /// The first fault, if the member failed.
    pub fn fault(&self) -> Option<&Fault> {
        self.fault.get()
    }
}

thread_local! {
    /// The member (and thread name) a panic on this thread fail-stops.
    static FAIL_ON_PANIC: std::cell::RefCell<Option<(String, Arc<RaftStatus>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `body` (a thread's whole life); a panic in it fail-stops the member instead of ending
/// the thread silently. The fault is recorded by a panic hook, before unwinding drops the
/// thread's waiters: a client told `server stopped` then always finds the member stopped.
pub fn catch_panics(thread: &str, status: &Arc<RaftStatus>, body: impl FnOnce()) {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = FAIL_ON_PANIC.try_with(|slot| {
                if let Ok(slot) = slot.try_borrow() {
                    if let Some((thread, status)) = slot.as_ref() {
                        let msg = info
                            .payload_as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| "a panic without a message".to_string());
                        let at = info
                            .location()
                            .map(|l| format!(" at {}:{}", l.file(), l.line()))
                            .unwrap_or_default();
                        status.fail_stop(Fault::new(
                            format!("{thread} thread"),
                            None,
                            format!("panicked: {msg}{at}"),
                        ));
                    }
                }
            });
            previous(info);
        }));
    });
    FAIL_ON_PANIC.with(|slot| *slot.borrow_mut() = Some((thread.to_string(), status.clone())));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
    FAIL_ON_PANIC.with(|slot| *slot.borrow_mut() = None);
    if let Err(payload) = result {
        // Already recorded by the hook; this covers a hook replaced by someone else.
        status.fail_stop(Fault::panic(thread, payload.as_ref()));
    }
}

/// The I/O error a failpoint's `return(ARG)` asks for (docs/failpoints.md): none or `EIO` is
/// EIO, otherwise the errno named by ARG (`ENOSPC`, `EROFS`, ... or a number).
#[cfg(feature = "failpoints")]
pub fn failpoint_io_error(arg: Option<String>) -> std::io::Error {
    let name = arg.unwrap_or_default();
    let name = name.trim();
    let errno = match name {
        "" | "EIO" => libc::EIO,
        "ENOSPC" => libc::ENOSPC,
        "EDQUOT" => libc::EDQUOT,
        "EROFS" => libc::EROFS,
        "EFBIG" => libc::EFBIG,
        "EACCES" => libc::EACCES,
        "EPERM" => libc::EPERM,
        "ENOENT" => libc::ENOENT,
        "ENOMEM" => libc::ENOMEM,
        "EBADF" => libc::EBADF,
        "EINVAL" => libc::EINVAL,
        "EAGAIN" => libc::EAGAIN,
        "EINTR" => libc::EINTR,
        "ENXIO" => libc::ENXIO,
        "ENODEV" => libc::ENODEV,
        "EMFILE" => libc::EMFILE,
        "ENFILE" => libc::ENFILE,
        "ESTALE" => libc::ESTALE,
        "ETIMEDOUT" => libc::ETIMEDOUT,
        other => other.parse().unwrap_or(libc::EIO),
    };
    std::io::Error::from_raw_os_error(errno)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use ballast_mvcc::{Store, StoreOptions};
    use raft::prelude::{Entry, EntryType};

    use super::*;
    use crate::apply::test_support::{applier, put_entry};
    use crate::raft::node::ToApply;

    #[test]
    fn only_the_first_fault_is_kept_and_the_member_is_stopped() {
        let status = RaftStatus::default();
        assert!(status.fault().is_none());
        let e = status.fail_stop(Fault::new(
            "wal sync",
            Some(Path::new("d/member/wal")),
            "No space left on device (os error 28)",
        ));
        assert_eq!(e, ServerError::Stopped);
        status.fail_stop(Fault::new("backend commit", None, "later"));
        assert!(status.stopped.load(Ordering::SeqCst));
        let f = status.fault().cloned();
        assert_eq!(
            f.map(|f| f.to_string()),
            Some("wal sync failed: d/member/wal: No space left on device (os error 28)".into())
        );
    }

    #[test]
    fn a_panic_at_a_thread_boundary_becomes_a_fault() {
        let status = Arc::new(RaftStatus::default());
        let s = status.clone();
        std::thread::spawn(move || catch_panics("apply", &s, || panic!("boom {}", 7)))
            .join()
            .unwrap();
        let f = status.fault().cloned().unwrap();
        assert!(
            f.to_string()
                .starts_with("apply thread failed: panicked: boom 7 at "),
            "{f}"
        );
        assert!(status.stopped.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_waiter_wakes_for_a_fault_recorded_before_or_after_it_waits() {
        let status = Arc::new(RaftStatus::default());
        let s = status.clone();
        let waiter = tokio::spawn(async move { s.fault.wait().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        status.fail_stop(Fault::new("raft snapshot save", None, "EIO"));
        let f = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(f.step, "raft snapshot save");
        // Already recorded: resolves at once.
        let again = tokio::time::timeout(Duration::from_secs(5), status.fault.wait())
            .await
            .unwrap();
        assert_eq!(again, f);
    }

    /// An entry that does not decode stops the apply loop with a fault naming its index: the
    /// batch holding it is not committed, nothing after it is applied, its waiters get
    /// `server stopped`, and the loop ends.
    #[test]
    fn an_undecodable_entry_stops_the_apply_loop_and_is_never_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), StoreOptions::default()).unwrap();
        let (applier, tx, status, wait) = applier(&store);
        let loop_thread = std::thread::spawn(move || applier.run());
        tx.send(ToApply::Entries(vec![put_entry(1, "a")])).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.applied_index() < 1 {
            assert!(Instant::now() < deadline, "entry 1 applied within 10 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut bad = Entry::new();
        bad.set_entry_type(EntryType::EntryNormal);
        bad.term = 1;
        bad.index = 3;
        bad.data = vec![0xff, 0xff, 0xff, 0xff].into();
        let r2 = wait.register(2).unwrap();
        let r4 = wait.register(4).unwrap();
        tx.send(ToApply::Entries(vec![
            put_entry(2, "b"),
            bad,
            put_entry(4, "c"),
        ]))
        .unwrap();
        // The loop ends by itself (its sender is still open).
        loop_thread.join().unwrap();
        drop(tx);
        let fault = status.fault().cloned().expect("a fault");
        assert!(
            fault.to_string().contains("raft entry 3"),
            "fault names the entry: {fault}"
        );
        assert!(status.stopped.load(Ordering::SeqCst));
        assert_eq!(
            store.applied_index(),
            1,
            "nothing at or after the bad entry"
        );
        let keys = store
            .read()
            .unwrap()
            .range(&ballast_mvcc::RangeOptions::range(
                b"\0".to_vec(),
                b"\0".to_vec(),
            ))
            .unwrap();
        assert_eq!(keys.kvs.len(), 1);
        for r in [r2, r4] {
            match r.blocking_recv() {
                Ok(Ok(out)) => panic!("a waiter got a success: {out:?}"),
                Ok(Err(e)) => assert_eq!(e, ServerError::Stopped),
                Err(_) => {} // dropped unanswered: the client sees `server stopped` too
            }
        }
    }
}
