//! Where catch-up reads run: a few dedicated threads at a lower OS scheduling priority, shared
//! by every watch stream.
//!
//! A catch-up step reads up to [`super::CATCH_UP_EVENTS`] events from an MVCC snapshot. Run on
//! tokio's blocking pool, fifty streams catching up at once take fifty threads, and every one
//! of them competes with the Raft and apply threads for the CPU: writes slow down because some
//! watchers are behind. Here the steps queue (FIFO, so streams take turns: each has at most one
//! step queued) for at most [`threads`] workers, which run at niceness +10 so that the kernel
//! prefers the write path whenever both are runnable. A watcher behind is caught up by idle
//! CPU; a write never waits for one.

use std::panic::{catch_unwind, AssertUnwindSafe};

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// Niceness of the catch-up threads (0 is normal; higher runs when others do not).
const NICENESS: libc::c_int = 10;

/// Catch-up workers for this machine: half its CPUs, at least one, at most four.
pub fn threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get() / 2)
        .clamp(1, 4)
}

pub(crate) struct CatchUpPool {
    tx: flume::Sender<Job>,
}

impl CatchUpPool {
    /// Starts `threads` workers; they end when the pool is dropped.
    pub fn new(threads: usize) -> CatchUpPool {
        let (tx, rx) = flume::unbounded::<Job>();
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("ballast-watch-{i}"))
                .spawn(move || {
                    lower_priority();
                    while let Ok(job) = rx.recv() {
                        // A panicking step drops its answer; the stream waiting for it ends.
                        let _ = catch_unwind(AssertUnwindSafe(job));
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a watch catch-up thread");
            }
        }
        CatchUpPool { tx }
    }

    /// Runs `f` on a catch-up worker. `None` if it could not run or panicked.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (done, answer) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(f());
        });
        self.tx.send(job).ok()?;
        answer.await.ok()
    }
}

/// Raises this thread's niceness (Linux schedules threads individually). Failing to is harmless:
/// the thread then runs at normal priority.
fn lower_priority() {
    // SAFETY: gettid, getpriority and setpriority take plain integers and touch no memory of
    // ours (errno is thread-local).
    let r = unsafe {
        let tid = libc::gettid() as libc::id_t;
        *libc::__errno_location() = 0;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        // Never lower a niceness the process was started with.
        libc::setpriority(libc::PRIO_PROCESS, tid, now.max(NICENESS))
    };
    if r != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "watch catch-up thread keeps normal priority"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_at_lower_priority_and_a_panic_ends_only_its_own_job() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let pool = CatchUpPool::new(1);
        rt.block_on(async {
            let nice = pool
                .run(|| {
                    // SAFETY: as above.
                    unsafe {
                        *libc::__errno_location() = 0;
                        libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t)
                    }
                })
                .await
                .unwrap();
            assert!(nice >= NICENESS, "niceness {nice}");
            assert_eq!(pool.run(|| -> u32 { panic!("a bad step") }).await, None);
            // The one worker survived the panic.
            assert_eq!(pool.run(|| 7).await, Some(7));
        });
    }
}
