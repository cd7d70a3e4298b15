//! The apply loop: the single writer of the MVCC store.
//!
//! Receives committed Raft entries from the raft thread in order, applies each
//! `InternalRaftRequest` as one etcd transaction (one revision when it writes), commits a whole
//! batch of entries in one backend transaction that also records the applied index, and only
//! then answers the waiting requests, so a client never sees an acknowledged write that a read
//! cannot. Linearizable reads parked here are released once the applied index reaches their read
//! index. Backend commits are made durable once the loop has been idle for `DURABLE_WHEN_IDLE`;
//! during a run of writes, a second after its first non-durable commit or every `DURABLE_EVERY`
//! entries; and before a raft snapshot. Between those, the WAL is what makes
//! acknowledged writes durable, and entries at or below the backend's applied index are skipped
//! on replay. Making the backend durable when idle keeps that fsync out of the first batch of
//! the next burst of writes.
//!
//! Each request passes etcd's apply layers in order ([`apply_one`]): the alarm gate
//! ([`crate::alarm`]), auth (a pass-through for now), the quota ([`crate::quota`]), then the
//! KV / lease / alarm request itself.
//!
//! It must never block on a client, and never talk to the network.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_mvcc::{CompactJob, Store};
use ballast_proto::etcdserverpb::{
    AlarmResponse, CompactionResponse, DeleteRangeResponse, LeaseGrantResponse,
    LeaseRevokeResponse, PutResponse, TxnResponse,
};
use ballast_proto::internal::InternalRaftRequest;
use prost::Message as _;
use raft::prelude::{Entry, EntryType};
use tokio::sync::oneshot;

use crate::alarm::Alarms;
use crate::error::ServerError;
use crate::lease::Lessor;
use crate::quota::Quota;
use crate::raft::node::{ReadWaiter, ToApply};
use crate::raft::RaftStatus;
use crate::wait::Wait;
use crate::watch::{RevEvents, WatchHub};

mod layers;
pub mod membership;
pub(crate) mod reload;

use layers::{apply_one, Batch};

/// Entries applied between durable backend commits, at most.
const DURABLE_EVERY: u64 = 10_000;
/// Time from a commit that is not durable to the next durable one, at most (while writes keep
/// coming).
const DURABLE_INTERVAL: Duration = Duration::from_secs(1);
/// The backend is made durable once no entries came for this long. Long enough that writes
/// arriving a few times a second do not each get a backend fsync of their own (at most five
/// of these a second), short enough that a burst after a pause rarely starts with one.
const DURABLE_WHEN_IDLE: Duration = Duration::from_millis(200);

/// What the apply loop answers a proposal with.
#[derive(Debug)]
pub enum ApplyOutput {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    /// With `physical`, resolves once the compacted revisions are gone from the backend.
    Compact(CompactionResponse, Option<oneshot::Receiver<()>>),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    /// A checkpoint or an expiry (proposed by the lessor itself): nothing to answer.
    Lease,
    Alarm(AlarmResponse),
    /// A membership change or publish: the member list after it.
    Members(Vec<ballast_proto::etcdserverpb::Member>),
}

impl ApplyOutput {
    /// The error for an answer of the wrong kind (a bug: each request has one answer kind).
    pub fn unexpected(self) -> ServerError {
        ServerError::Internal(format!("unexpected apply result {self:?}"))
    }
}

pub struct Applier {
    store: Store,
    rx: flume::Receiver<ToApply>,
    status: Arc<RaftStatus>,
    /// This member's pending proposals (answered here once applied and committed).
    wait: Arc<Wait>,
    /// The member list and the way to the raft thread for conf changes.
    members: membership::Members,
    snap_dir: std::path::PathBuf,
    reads: Vec<(u64, Vec<ReadWaiter>)>,
    snapshot_count: u64,
    last_snapshot: u64,
    /// When the first commit since the last durable one was made (None: the backend is durable
    /// at the applied index).
    dirty_since: Option<Instant>,
    compactor: crate::compactor::Compactor,
    hub: Arc<WatchHub>,
    lessor: Arc<Lessor>,
    /// The alarm gate's state (this loop is its only writer).
    alarms: Arc<Alarms>,
    /// The quota layer's limit and the backend size this loop refreshes after each commit.
    quota: Arc<Quota>,
}

/// The state the apply layers share with the member (lessor, alarm table, quota), and the
/// member's pending proposals.
pub struct Layers {
    pub wait: Arc<Wait>,
    /// Where the peer transport leaves the snapshots the leader sends.
    pub snap_dir: std::path::PathBuf,
    pub members: membership::Members,
    pub lessor: Arc<Lessor>,
    pub alarms: Arc<Alarms>,
    pub quota: Arc<Quota>,
}

impl Applier {
    pub fn new(
        store: Store,
        rx: flume::Receiver<ToApply>,
        status: Arc<RaftStatus>,
        snapshot_count: u64,
        compactor: crate::compactor::Compactor,
        hub: Arc<WatchHub>,
        layers: Layers,
    ) -> Applier {
        let applied = store.applied_index();
        status.applied_index.store(applied, Ordering::SeqCst);
        Applier {
            store,
            rx,
            status,
            wait: layers.wait,
            members: layers.members,
            snap_dir: layers.snap_dir,
            reads: Vec::new(),
            snapshot_count: snapshot_count.max(1),
            last_snapshot: applied,
            dirty_since: None,
            compactor,
            hub,
            lessor: layers.lessor,
            alarms: layers.alarms,
            quota: layers.quota,
        }
    }

    pub fn run(mut self) {
        let mut batch: Vec<Entry> = Vec::new();
        loop {
            let waited = match self.dirty_since {
                // Not durable yet: wait only so long for more, then make it durable.
                Some(_) => self.rx.recv_timeout(DURABLE_WHEN_IDLE),
                None => self
                    .rx
                    .recv()
                    .map_err(|_| flume::RecvTimeoutError::Disconnected),
            };
            let committed = match waited {
                Ok(msg) => {
                    // A snapshot ends the batch: what came before it is applied first.
                    let mut snapshot = self.take(msg, &mut batch);
                    while snapshot.is_none() && batch.len() < 8192 {
                        match self.rx.try_recv() {
                            Ok(msg) => snapshot = self.take(msg, &mut batch),
                            Err(_) => break,
                        }
                    }
                    let applied = if batch.is_empty() {
                        Ok(())
                    } else {
                        self.apply_batch(std::mem::take(&mut batch))
                    };
                    match (applied, snapshot) {
                        (Ok(()), Some(index)) => self.install(index),
                        (other, _) => other,
                    }
                }
                Err(flume::RecvTimeoutError::Timeout) => self.make_durable(),
                Err(flume::RecvTimeoutError::Disconnected) => break,
            };
            if let Err(e) = committed {
                // Fail-stop (crate::fault; a fault already recorded, e.g. an undecodable
                // entry, is the one reported): no further backend commit is tried.
                self.status.fail_stop_backend("backend commit", e);
                self.fail_all();
                return;
            }
            self.release_reads();
        }
        // Leave the backend durable at the last applied index, so a clean restart replays nothing.
        if let Err(e) = self.make_durable() {
            tracing::error!(error = %e, "final durable commit failed");
        }
        self.fail_all();
    }

    /// Makes the backend durable at the applied index (an empty commit), if it is not already.
    fn make_durable(&mut self) -> Result<(), ServerError> {
        let applied = self.store.applied_index();
        if applied > self.store.durable_applied_index() {
            self.store.write()?.commit(applied, true)?;
        }
        self.dirty_since = None;
        Ok(())
    }

    fn fail_all(&mut self) {
        self.wait.close(ServerError::Stopped);
        for (_, ws) in self.reads.drain(..) {
            for w in ws {
                let _ = w.send(Err(ServerError::Stopped));
            }
        }
        // Anything still queued is answered too, so no client hangs.
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                ToApply::Reads { waiters, .. } => {
                    for w in waiters {
                        let _ = w.send(Err(ServerError::Stopped));
                    }
                }
                ToApply::Entries(_) | ToApply::Snapshot { .. } => {}
            }
        }
    }

    /// Takes one message into the batch; a snapshot's index is returned instead.
    fn take(&mut self, msg: ToApply, batch: &mut Vec<Entry>) -> Option<u64> {
        match msg {
            ToApply::Entries(mut es) => batch.append(&mut es),
            ToApply::Reads { index, waiters } => self.reads.push((index, waiters)),
            ToApply::Snapshot { index } => return Some(index),
        }
        None
    }

    /// Installs the backend the leader sent with its raft snapshot at `index` (received and
    /// made durable by the peer transport), then rebuilds everything kept beside the store
    /// from it: leases, alarms, watchers, quota size, the member list. Entries at or below
    /// its applied index are skipped afterwards, as etcd's consistent index.
    fn install(&mut self, index: u64) -> Result<(), ServerError> {
        let path = crate::raft::snapshot::snap_db_path(&self.snap_dir, index);
        let step = format!("installing the leader's snapshot at {index}");
        self.store.install_snapshot(&path).map_err(|e| {
            self.status
                .fail_stop(crate::fault::Fault::new(&step, Some(&path), e))
        })?;
        reload::after_install(&self.store, &self.hub, &self.lessor, &self.alarms, &self.quota)
            .map_err(|e| self.status.fail_stop(crate::fault::Fault::new(&step, None, e)))?;
        let (list, _) = crate::cluster::persist::load(&self.store).map_err(|e| {
            self.status
                .fail_stop(crate::fault::Fault::new(&step, None, e))
        })?;
        (self.members.on_change)(&list);
        *self.members.list.write() = list;
        let applied = self.store.applied_index();
        self.status.applied_index.store(applied, Ordering::SeqCst);
        self.last_snapshot = applied;
        tracing::info!(
            snapshot_index = index,
            applied_index = applied,
            revision = self.store.current_revision(),
            "installed the leader's snapshot"
        );
        Ok(())
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
        let last_term = entries.last().map_or(0, |e| e.term);
        let already = self.store.applied_index();
        // Conf changes the backend already holds still go to raft-rs.
        for e in entries.iter().filter(|e| e.index <= already) {
            if e.get_entry_type() == EntryType::EntryConfChange {
                self.members
                    .replay_conf_change(e)
                    .map_err(|f| self.status.fail_stop(f))?;
            }
        }
        if last_index <= already {
            self.status
                .applied_index
                .fetch_max(last_index, Ordering::SeqCst);
            self.status.applied_term.store(last_term, Ordering::Release);
            return Ok(());
        }
        let mut results: Vec<(u64, Result<ApplyOutput, ServerError>)> = Vec::new();
        let mut compactions: Vec<(CompactJob, oneshot::Sender<()>)> = Vec::new();
        let mut published: Vec<RevEvents> = Vec::new();
        let mut removed_self = false;
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
                        // A new leader's empty entry: every entry of earlier terms is applied,
                        // so a leader's lessor can take over now (as etcd promotes it here).
                        self.status.applied_term.store(e.term, Ordering::Release);
                        self.lessor.sync_leadership(&self.status);
                        continue;
                    }
                    let req = match InternalRaftRequest::decode(e.data.as_ref()) {
                        Ok(r) => r,
                        // Never skipped: the member stops, and this batch is not committed.
                        Err(err) => {
                            return Err(self.status.fail_stop(crate::fault::Fault::new(
                                format!("decoding raft entry {}", e.index),
                                None,
                                err,
                            )))
                        }
                    };
                    let out = apply_one(
                        &mut Batch {
                            txn: &mut txn,
                            compact_rev,
                            lessor: &self.lessor,
                            compactions: &mut compactions,
                            published: &mut published,
                            alarms: &self.alarms,
                            quota: &self.quota,
                            members: &self.members,
                        },
                        req.request,
                    );
                    results.push((req.id, out));
                }
                EntryType::EntryConfChange => {
                    let applied = self
                        .members
                        .apply_conf_change(&mut txn, e)
                        .map_err(|f| self.status.fail_stop(f))?;
                    removed_self |= applied.removed_self;
                    results.push((applied.id, applied.out));
                }
                EntryType::EntryConfChangeV2 => {
                    // Ballast proposes v1 changes only; one of these is not ours to skip.
                    return Err(self.status.fail_stop(crate::fault::Fault::new(
                        format!("raft entry {}", e.index),
                        None,
                        "a v2 conf change, which Ballast never proposes",
                    )));
                }
            }
        }
        let applied_since_durable = last_index.saturating_sub(self.store.durable_applied_index());
        let snapshot_due = last_index.saturating_sub(self.last_snapshot) >= self.snapshot_count;
        let durable = snapshot_due
            || applied_since_durable >= DURABLE_EVERY
            || self
                .dirty_since
                .is_some_and(|t| t.elapsed() >= DURABLE_INTERVAL);
        // A failed commit stops the member before this batch's waiters hear `server stopped`.
        txn.commit(last_index, durable)
            .map_err(|e| self.status.fail_stop_backend("backend commit", e))?;
        // Watchers see a revision only once readers can (catch-up reads must find it), and
        // before any client is answered; their streams are woken after the answers.
        let wakes = self.hub.publish(published, store.current_revision());
        if durable {
            self.dirty_since = None;
        } else if self.dirty_since.is_none() {
            self.dirty_since = Some(Instant::now());
        }
        self.status
            .applied_index
            .store(last_index, Ordering::SeqCst);
        self.status.applied_term.store(last_term, Ordering::Release);
        // The quota layer and the role methods judge the next requests by the new size.
        self.quota.set_size(self.store.db_size());
        // Compaction jobs may only run once the batch that scheduled them is committed.
        for (job, done) in compactions {
            self.compactor.submit(job, done);
        }
        for (id, out) in results {
            // Only the proposing member has a waiter; the others find none.
            self.wait.trigger(id, out);
        }
        drop(wakes);
        if removed_self {
            // etcd's member stops once it applied its own removal; the others go on.
            tracing::warn!("this member has been permanently removed from the cluster; stopping");
            self.status.removed.store(true, Ordering::SeqCst);
            self.status.stopped.store(true, Ordering::SeqCst);
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

/// What tests of the apply loop (here and in other modules) start it with.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use ballast_proto::etcdserverpb::PutRequest;
    use ballast_proto::internal::internal_raft_request::Request;

    use crate::lease::{LeaseTable, LessorConfig};
    use crate::watch::{HeaderSource, WatchOptions};

    /// An apply loop over `store` with default layers (no quota, no snapshots), the sender
    /// that feeds it and the raft status it reports to. Run it with `applier.run()`.
    pub(crate) fn applier(store: &Store) -> (Applier, flume::Sender<ToApply>, Arc<RaftStatus>, Arc<Wait>) {
        let status = Arc::new(RaftStatus::default());
        let hub = Arc::new(WatchHub::new(
            store.clone(),
            WatchOptions::default(),
            HeaderSource {
                cluster_id: 1,
                member_id: 1,
                status: status.clone(),
            },
        ));
        let cfg = LessorConfig::from_server(&crate::config::ServerConfig::default());
        let lessor = Arc::new(Lessor::new(cfg, 1, LeaseTable::default()));
        let (tx, rx) = flume::unbounded();
        let wait = Arc::new(Wait::default());
        let applier = Applier::new(
            store.clone(),
            rx,
            status.clone(),
            u64::MAX,
            crate::compactor::Compactor::start(store.clone()),
            hub,
            Layers {
                wait: wait.clone(),
                snap_dir: std::env::temp_dir(),
                members: membership::Members::detached(),
                lessor,
                alarms: Arc::new(Alarms::default()),
                quota: Arc::new(Quota::new(u64::MAX, 0)),
            },
        );
        (applier, tx, status, wait)
    }

    /// A committed entry at `index` (term 1) putting `key` = "v", with request id `index`.
    pub(crate) fn put_entry(index: u64, key: &str) -> Entry {
        let mut e = Entry::new();
        e.set_entry_type(EntryType::EntryNormal);
        e.term = 1;
        e.index = index;
        e.data = InternalRaftRequest {
            id: index,
            header: None,
            request: Some(Request::Put(PutRequest {
                key: key.into(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
        }
        .encode_to_vec()
        .into();
        e
    }
}

#[cfg(test)]
mod tests;
