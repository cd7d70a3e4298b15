//! Physical compaction off the apply loop: the apply loop schedules a compaction (logical part,
//! committed with the batch) and hands the job here; this thread removes the old revisions from
//! the index and backend in bounded steps, so a huge compaction never stalls writes.

use std::sync::Arc;

use ballast_mvcc::{CompactJob, Store};
use tokio::sync::oneshot;

use crate::fault::catch_panics;
use crate::raft::RaftStatus;

type Job = (CompactJob, Option<oneshot::Sender<()>>);

pub struct Compactor {
    tx: flume::Sender<Job>,
}

impl Compactor {
    /// Starts the compaction thread with a status of its own: its faults stop only itself
    /// (for tests of other parts; a member uses [`Compactor::start_for`]).
    pub fn start(store: Store) -> Compactor {
        Self::start_for(store, Arc::new(RaftStatus::default()))
    }

    /// Starts the compaction thread of the member whose status is `status`; a compaction a
    /// crash interrupted is resumed first. A failed step or a panic fail-stops the member
    /// ([`crate::fault`]): the compaction is committed, so the restart resumes it.
    pub fn start_for(store: Store, status: Arc<RaftStatus>) -> Compactor {
        let (tx, rx) = flume::unbounded::<Job>();
        if let Some(job) = store.take_pending_compaction() {
            tracing::info!(revision = job.revision(), "resuming interrupted compaction");
            let _ = tx.send((job, None));
        }
        let spawned = std::thread::Builder::new()
            .name("ballast-compact".into())
            .spawn(move || {
                catch_panics("compaction", &status, || {
                    while let Ok((job, done)) = rx.recv() {
                        let started = std::time::Instant::now();
                        if let Err(e) = job.run() {
                            // `done` is dropped: a waiting Compact call is not told it finished.
                            status.fail_stop_backend(
                                &format!("compaction at revision {}", job.revision()),
                                e,
                            );
                            return;
                        }
                        tracing::info!(
                            revision = job.revision(),
                            took_ms = started.elapsed().as_millis() as u64,
                            "finished scheduled compaction"
                        );
                        if let Some(d) = done {
                            let _ = d.send(());
                        }
                    }
                })
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the compaction thread");
        }
        Compactor { tx }
    }

    /// Queues a committed compaction; `done` fires when its rows are gone.
    /// (One job per Compact request, which goes through Raft: the queue is bounded by them.)
    pub fn submit(&self, job: CompactJob, done: oneshot::Sender<()>) {
        let _ = self.tx.send((job, Some(done)));
    }
}
