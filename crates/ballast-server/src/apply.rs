//! The apply loop: the single writer of the MVCC store.
//!
//! Receives committed Raft entries from the raft thread in order, applies each
//! `InternalRaftRequest` as one etcd transaction (one revision when it writes), commits a whole
//! batch of entries in one backend transaction that also records the applied index, and only
//! then answers the waiting requests, so a client never sees an acknowledged write that a read
//! cannot. Linearizable reads parked here are released once the applied index reaches their read
//! index. Backend commits are made durable every second / every `DURABLE_EVERY` entries and before
//! a raft snapshot; between those, the WAL is what makes acknowledged writes durable, and entries
//! at or below the backend's applied index are skipped on replay.
//!
//! It must never block on a client, and never talk to the network.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_mvcc::{CompactJob, Store, WriteTxn};
use ballast_proto::etcdserverpb::{
    CompactionResponse, DeleteRangeResponse, PutResponse, ResponseHeader, TxnResponse,
};
use ballast_proto::internal::{internal_raft_request::Request, InternalRaftRequest};
use prost::Message as _;
use raft::prelude::{Entry, EntryType};
use tokio::sync::oneshot;

use crate::error::ServerError;
use crate::kv;
use crate::raft_node::{RaftStatus, ReadWaiter, Waiter};
use crate::watch::{RevEvents, WatchHub};

/// Entries applied between durable backend commits, at most.
const DURABLE_EVERY: u64 = 10_000;
/// Time between durable backend commits, at most (while writes keep coming).
const DURABLE_INTERVAL: Duration = Duration::from_secs(1);

/// What the apply loop answers a proposal with.
#[derive(Debug)]
pub enum ApplyOutput {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    /// With `physical`, resolves once the compacted revisions are gone from the backend.
    Compact(CompactionResponse, Option<oneshot::Receiver<()>>),
}

/// Messages from the raft thread, in raft order.
pub enum ApplyMsg {
    Register {
        id: u64,
        waiter: Waiter,
    },
    Entries(Vec<Entry>),
    Reads {
        index: u64,
        waiters: Vec<ReadWaiter>,
    },
}

pub struct Applier {
    store: Store,
    rx: flume::Receiver<ApplyMsg>,
    status: Arc<RaftStatus>,
    waiters: HashMap<u64, Waiter>,
    reads: Vec<(u64, Vec<ReadWaiter>)>,
    snapshot_count: u64,
    last_snapshot: u64,
    last_durable: Instant,
    compactor: crate::compactor::Compactor,
    hub: Arc<WatchHub>,
}

impl Applier {
    pub fn new(
        store: Store,
        rx: flume::Receiver<ApplyMsg>,
        status: Arc<RaftStatus>,
        snapshot_count: u64,
        compactor: crate::compactor::Compactor,
        hub: Arc<WatchHub>,
    ) -> Applier {
        let applied = store.applied_index();
        status.applied_index.store(applied, Ordering::SeqCst);
        Applier {
            store,
            rx,
            status,
            waiters: HashMap::new(),
            reads: Vec::new(),
            snapshot_count: snapshot_count.max(1),
            last_snapshot: applied,
            last_durable: Instant::now(),
            compactor,
            hub,
        }
    }

    pub fn run(mut self) {
        let mut batch: Vec<Entry> = Vec::new();
        while let Ok(msg) = self.rx.recv() {
            self.take(msg, &mut batch);
            while batch.len() < 8192 {
                match self.rx.try_recv() {
                    Ok(msg) => self.take(msg, &mut batch),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                if let Err(e) = self.apply_batch(std::mem::take(&mut batch)) {
                    tracing::error!(error = %e, "apply loop stopping: backend commit failed");
                    self.status.stopped.store(true, Ordering::SeqCst);
                    break;
                }
            }
            self.release_reads();
        }
        // Leave the backend durable at the last applied index, so a clean restart replays nothing.
        let applied = self.store.applied_index();
        if applied > self.store.durable_applied_index() {
            match self.store.write() {
                Ok(txn) => {
                    if let Err(e) = txn.commit(applied, true) {
                        tracing::error!(error = %e, "final durable commit failed");
                    }
                }
                Err(e) => tracing::error!(error = %e, "final durable commit failed"),
            }
        }
        self.fail_all();
    }

    fn fail_all(&mut self) {
        for (_, w) in self.waiters.drain() {
            let _ = w.send(Err(ServerError::Stopped));
        }
        for (_, ws) in self.reads.drain(..) {
            for w in ws {
                let _ = w.send(Err(ServerError::Stopped));
            }
        }
        // Anything still queued is answered too, so no client hangs.
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                ApplyMsg::Register { waiter, .. } => {
                    let _ = waiter.send(Err(ServerError::Stopped));
                }
                ApplyMsg::Reads { waiters, .. } => {
                    for w in waiters {
                        let _ = w.send(Err(ServerError::Stopped));
                    }
                }
                ApplyMsg::Entries(_) => {}
            }
        }
    }

    fn take(&mut self, msg: ApplyMsg, batch: &mut Vec<Entry>) {
        match msg {
            ApplyMsg::Register { id, waiter } => {
                self.waiters.insert(id, waiter);
            }
            ApplyMsg::Entries(mut es) => batch.append(&mut es),
            ApplyMsg::Reads { index, waiters } => self.reads.push((index, waiters)),
        }
    }

    fn release_reads(&mut self) {
        let applied = self.status.applied_index.load(Ordering::SeqCst);
        self.reads.retain_mut(|(index, waiters)| {
            if *index <= applied {
                for w in waiters.drain(..) {
                    let _ = w.send(Ok(()));
                }
                false
            } else {
                true
            }
        });
    }

    fn apply_batch(&mut self, entries: Vec<Entry>) -> Result<(), ServerError> {
        let Some(last_index) = entries.last().map(|e| e.index) else {
            return Ok(());
        };
        let already = self.store.applied_index();
        if last_index <= already {
            self.status
                .applied_index
                .fetch_max(last_index, Ordering::SeqCst);
            return Ok(());
        }
        let mut results: Vec<(Waiter, Result<ApplyOutput, ServerError>)> = Vec::new();
        let mut compactions: Vec<(CompactJob, oneshot::Sender<()>)> = Vec::new();
        let mut published: Vec<RevEvents> = Vec::new();
        let store = self.store.clone();
        let mut txn = store.write()?;
        let compact_rev = self.store.compact_revision();
        for e in &entries {
            if e.index <= already {
                continue;
            }
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    if e.data.is_empty() {
                        continue; // a new leader's empty entry
                    }
                    let req = match InternalRaftRequest::decode(e.data.as_ref()) {
                        Ok(r) => r,
                        Err(err) => {
                            tracing::error!(index = e.index, error = %err, "undecodable raft entry skipped");
                            continue;
                        }
                    };
                    let (out, events) =
                        apply_one(&mut txn, compact_rev, req.request, &mut compactions);
                    if !events.is_empty() {
                        published.push(RevEvents {
                            rev: txn.revision(),
                            events,
                        });
                    }
                    if let Some(w) = self.waiters.remove(&req.id) {
                        results.push((w, out));
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    tracing::warn!(
                        index = e.index,
                        "membership change entries are not applied yet"
                    );
                }
            }
        }
        let applied_since_durable = last_index.saturating_sub(self.store.durable_applied_index());
        let snapshot_due = last_index.saturating_sub(self.last_snapshot) >= self.snapshot_count;
        let durable = snapshot_due
            || applied_since_durable >= DURABLE_EVERY
            || self.last_durable.elapsed() >= DURABLE_INTERVAL;
        txn.commit(last_index, durable)?;
        // Watchers see a revision only once readers can (catch-up reads must find it), and
        // before any client is answered.
        self.hub.publish(published, store.current_revision());
        if durable {
            self.last_durable = Instant::now();
        }
        self.status
            .applied_index
            .store(last_index, Ordering::SeqCst);
        // Compaction jobs may only run once the batch that scheduled them is committed.
        for (job, done) in compactions {
            self.compactor.submit(job, done);
        }
        for (w, out) in results {
            let _ = w.send(out);
        }
        if snapshot_due {
            self.last_snapshot = last_index;
            self.status
                .snapshot_request
                .store(last_index, Ordering::Release);
        }
        Ok(())
    }
}

/// Applies one request as one etcd transaction of the batch; returns its answer and the events
/// of the revision it made (none if it changed nothing).
fn apply_one(
    txn: &mut WriteTxn<'_>,
    compact_rev: i64,
    req: Option<Request>,
    compactions: &mut Vec<(CompactJob, oneshot::Sender<()>)>,
) -> (Result<ApplyOutput, ServerError>, Vec<ballast_mvcc::Event>) {
    let mut w = kv::Writer::new(txn, compact_rev);
    let out = match req {
        Some(Request::Put(p)) => kv::apply_put(&mut w, &p).map(ApplyOutput::Put),
        Some(Request::DeleteRange(d)) => kv::delete_range(&mut w, &d).map(ApplyOutput::DeleteRange),
        Some(Request::Txn(t)) => kv::txn_write(&mut w, &t).map(ApplyOutput::Txn),
        Some(Request::Compaction(c)) => match w.txn().compact(c.revision) {
            Ok(job) => {
                let rev = w.txn().revision();
                let (tx, rx) = oneshot::channel();
                compactions.push((job, tx));
                Ok(ApplyOutput::Compact(
                    CompactionResponse {
                        header: Some(ResponseHeader {
                            revision: rev,
                            ..Default::default()
                        }),
                    },
                    c.physical.then_some(rx),
                ))
            }
            Err(e) => Err(e.into()),
        },
        Some(Request::Range(r)) => {
            // Not proposed today; answered so an old entry never stalls the loop.
            kv::range(&mut w, &r).map(|resp| {
                ApplyOutput::Txn(TxnResponse {
                    header: resp.header,
                    ..Default::default()
                })
            })
        }
        None => Err(ServerError::Internal("empty raft request".into())),
    };
    // Closes this request's etcd transaction (one revision if it wrote anything).
    let events = txn.end();
    (out, events)
}
