//! Physical compaction off the apply loop: the apply loop schedules a compaction (logical part,
//! committed with the batch) and hands the job here; this thread removes the old revisions from
//! the index and backend in bounded steps, so a huge compaction never stalls writes.

use ballast_mvcc::{CompactJob, Store};
use tokio::sync::oneshot;

type Job = (CompactJob, Option<oneshot::Sender<()>>);

pub struct Compactor {
    tx: flume::Sender<Job>,
}

impl Compactor {
    /// Starts the compaction thread; a compaction a crash interrupted is resumed first.
    pub fn start(store: Store) -> Compactor {
        let (tx, rx) = flume::unbounded::<Job>();
        if let Some(job) = store.take_pending_compaction() {
            tracing::info!(revision = job.revision(), "resuming interrupted compaction");
            let _ = tx.send((job, None));
        }
        let spawned = std::thread::Builder::new()
            .name("ballast-compact".into())
            .spawn(move || {
                while let Ok((job, done)) = rx.recv() {
                    let started = std::time::Instant::now();
                    match job.run() {
                        Ok(()) => tracing::info!(
                            revision = job.revision(),
                            took_ms = started.elapsed().as_millis() as u64,
                            "finished scheduled compaction"
                        ),
                        Err(e) => tracing::error!(revision = job.revision(), error = %e, "compaction failed"),
                    }
                    if let Some(d) = done {
                        let _ = d.send(());
                    }
                }
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
