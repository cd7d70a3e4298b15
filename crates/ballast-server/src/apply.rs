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

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_mvcc::{CompactJob, Store, WriteTxn};
use ballast_proto::etcdserverpb::{
    AlarmResponse, CompactionResponse, DeleteRangeResponse, LeaseGrantResponse,
    LeaseRevokeResponse, PutResponse, ResponseHeader, TxnResponse,
};
use ballast_proto::internal::{internal_raft_request::Request, InternalRaftRequest};
use prost::Message as _;
use raft::prelude::{Entry, EntryType};
use tokio::sync::oneshot;

use crate::alarm::{self, Alarms};
use crate::error::ServerError;
use crate::kv;
use crate::lease::{self, Lessor};
use crate::quota::{self, Quota};
use crate::raft::RaftStatus;
use crate::raft::node::{ReadWaiter, Waiter};
use crate::watch::{RevEvents, WatchHub};

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
}

impl ApplyOutput {
    /// The error for an answer of the wrong kind (a bug: each request has one answer kind).
    pub fn unexpected(self) -> ServerError {
        ServerError::Internal(format!("unexpected apply result {self:?}"))
    }
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

/// The state the apply layers share with the member (lessor, alarm table, quota).
pub struct Layers {
    pub lessor: Arc<Lessor>,
    pub alarms: Arc<Alarms>,
    pub quota: Arc<Quota>,
}

impl Applier {
    pub fn new(
        store: Store,
        rx: flume::Receiver<ApplyMsg>,
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
            waiters: HashMap::new(),
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
                    self.take(msg, &mut batch);
                    while batch.len() < 8192 {
                        match self.rx.try_recv() {
                            Ok(msg) => self.take(msg, &mut batch),
                            Err(_) => break,
                        }
                    }
                    if batch.is_empty() {
                        Ok(())
                    } else {
                        self.apply_batch(std::mem::take(&mut batch))
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
        let last_term = entries.last().map_or(0, |e| e.term);
        let already = self.store.applied_index();
        if last_index <= already {
            self.status
                .applied_index
                .fetch_max(last_index, Ordering::SeqCst);
            self.status.applied_term.store(last_term, Ordering::Release);
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
                        },
                        req.request,
                    );
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
        for (w, out) in results {
            let _ = w.send(out);
        }
        drop(wakes);
        if snapshot_due {
            self.last_snapshot = last_index;
            self.status
                .snapshot_request
                .store(last_index, Ordering::Release);
        }
        Ok(())
    }
}

/// What one request's application works with inside a batch.
struct Batch<'a, 'b> {
    txn: &'a mut WriteTxn<'b>,
    compact_rev: i64,
    lessor: &'a Lessor,
    compactions: &'a mut Vec<(CompactJob, oneshot::Sender<()>)>,
    published: &'a mut Vec<RevEvents>,
    alarms: &'a Alarms,
    quota: &'a Quota,
}

impl Batch<'_, '_> {
    /// Closes the open etcd transaction (one revision if it wrote anything): lease attachments
    /// follow its events, and its events go to the watchers with the batch.
    fn end_txn(&mut self) {
        let events = self.txn.end();
        if events.is_empty() {
            return;
        }
        self.lessor.track(&events);
        self.published.push(RevEvents {
            rev: self.txn.revision(),
            events,
        });
    }

    fn header(&self) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            revision: self.txn.revision(),
            ..Default::default()
        })
    }
}

/// Applies one request through etcd's apply layers, in order: the alarm gate (what the raised
/// alarms refuse), auth (a pass-through until auth lands), the quota (judged before applying,
/// answered after, as etcd's quota applier), then the request itself.
fn apply_one(b: &mut Batch<'_, '_>, req: Option<Request>) -> Result<ApplyOutput, ServerError> {
    let Some(req) = req else {
        return Err(ServerError::Internal("empty raft request".into()));
    };
    alarm::gate(b.alarms.active(), &req)?;
    let fits = b.quota.available(quota::cost(&req));
    let out = apply_request(b, req)?;
    if !fits {
        // Applied, as etcd does; the member raises NOSPACE on this answer.
        return Err(ServerError::NoSpace);
    }
    Ok(out)
}

/// Applies one request as one etcd transaction of the batch (a lease expiry: one per lease).
fn apply_request(b: &mut Batch<'_, '_>, req: Request) -> Result<ApplyOutput, ServerError> {
    let mut w = kv::Writer::new(b.txn, b.compact_rev, b.lessor);
    let out = match req {
        Request::Put(p) => kv::apply_put(&mut w, &p).map(ApplyOutput::Put),
        Request::DeleteRange(d) => kv::delete_range(&mut w, &d).map(ApplyOutput::DeleteRange),
        Request::Txn(t) => kv::txn_write(&mut w, &t).map(ApplyOutput::Txn),
        Request::Compaction(c) => match w.txn().compact(c.revision) {
            Ok(job) => {
                let rev = w.txn().revision();
                let (tx, rx) = oneshot::channel();
                b.compactions.push((job, tx));
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
        Request::Range(r) => {
            // Not proposed today; answered so an old entry never stalls the loop.
            kv::range(&mut w, &r).map(|resp| {
                ApplyOutput::Txn(TxnResponse {
                    header: resp.header,
                    ..Default::default()
                })
            })
        }
        Request::LeaseGrant(g) => lease::apply::grant(b.txn, b.lessor, &g).map(|mut r| {
            r.header = b.header();
            ApplyOutput::LeaseGrant(r)
        }),
        Request::LeaseRevoke(r) => {
            let res = lease::apply::revoke(b.txn, b.lessor, r.id);
            b.end_txn();
            res.map(|()| ApplyOutput::LeaseRevoke(LeaseRevokeResponse { header: b.header() }))
        }
        Request::LeaseCheckpoint(c) => {
            lease::apply::checkpoint(b.txn, b.lessor, &c);
            Ok(ApplyOutput::Lease)
        }
        Request::LeaseRevokeRest(r) => {
            lease::apply::revoke_rest(b.txn, b.lessor, r.id).map(|()| ApplyOutput::Lease)
        }
        Request::LeaseExpire(e) => {
            for id in e.ids {
                // Gone already (revoked by a client meanwhile): nothing to do.
                if lease::apply::revoke(b.txn, b.lessor, id).is_ok() {
                    b.end_txn();
                }
            }
            Ok(ApplyOutput::Lease)
        }
        Request::Alarm(a) => Ok(ApplyOutput::Alarm(alarm::apply(b.txn, b.alarms, &a))),
    };
    // Closes this request's etcd transaction (one revision if it wrote anything).
    b.end_txn();
    out
}

/// What tests of the apply loop (here and in other modules) start it with.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use ballast_proto::etcdserverpb::PutRequest;

    use crate::lease::{LeaseTable, LessorConfig};
    use crate::watch::{HeaderSource, WatchOptions};

    /// An apply loop over `store` with default layers (no quota, no snapshots), the sender
    /// that feeds it and the raft status it reports to. Run it with `applier.run()`.
    pub(crate) fn applier(store: &Store) -> (Applier, flume::Sender<ApplyMsg>, Arc<RaftStatus>) {
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
        let applier = Applier::new(
            store.clone(),
            rx,
            status.clone(),
            u64::MAX,
            crate::compactor::Compactor::start(store.clone()),
            hub,
            Layers {
                lessor,
                alarms: Arc::new(Alarms::default()),
                quota: Arc::new(Quota::new(u64::MAX, 0)),
            },
        );
        (applier, tx, status)
    }

    /// A committed entry at `index` (term 1) putting `key` = "v", with request id `index`.
    pub(crate) fn put_entry(index: u64, key: &str) -> Entry {
        let mut e = Entry::new();
        e.set_entry_type(EntryType::EntryNormal);
        e.term = 1;
        e.index = index;
        e.data = InternalRaftRequest {
            id: index,
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
mod tests {
    use super::*;
    use ballast_mvcc::{EventKind, StoreOptions};
    use ballast_proto::etcdserverpb::alarm_request::AlarmAction;
    use ballast_proto::etcdserverpb::{
        AlarmMember, AlarmRequest, AlarmType, LeaseGrantRequest, LeaseRevokeRequest, PutRequest,
    };
    use ballast_proto::internal::{LeaseCheckpoint, LeaseDeadline, LeaseExpire};

    use crate::lease::{LeaseTable, LessorConfig};

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        lessor: Lessor,
        index: u64,
        alarms: Alarms,
        quota: Quota,
    }

    impl Fixture {
        /// Every live key, as a full-range read sees it.
        fn all_keys(&self) -> ballast_mvcc::RangeResult {
            self.store
                .read()
                .unwrap()
                .range(&ballast_mvcc::RangeOptions::range(
                    b"\0".to_vec(),
                    b"\0".to_vec(),
                ))
                .unwrap()
        }

        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("db"), StoreOptions::default()).unwrap();
            let cfg = LessorConfig::from_server(&crate::config::ServerConfig::default());
            Fixture {
                _dir: dir,
                store,
                lessor: Lessor::new(cfg, 1, LeaseTable::default()),
                index: 0,
                alarms: Alarms::default(),
                quota: Quota::new(crate::config::DEFAULT_QUOTA_BACKEND_BYTES, 0),
            }
        }

        /// Applies `reqs` as one batch; returns the answers and the published revisions.
        fn apply(
            &mut self,
            reqs: Vec<Request>,
        ) -> (Vec<Result<ApplyOutput, ServerError>>, Vec<RevEvents>) {
            let mut txn = self.store.write().unwrap();
            let mut compactions = Vec::new();
            let mut published = Vec::new();
            let mut outs = Vec::new();
            for r in reqs {
                let mut b = Batch {
                    txn: &mut txn,
                    compact_rev: -1,
                    lessor: &self.lessor,
                    compactions: &mut compactions,
                    published: &mut published,
                    alarms: &self.alarms,
                    quota: &self.quota,
                };
                outs.push(apply_one(&mut b, Some(r)));
            }
            self.index += 1;
            txn.commit(self.index, false).unwrap();
            (outs, published)
        }
    }

    fn grant(id: i64, ttl: i64) -> Request {
        Request::LeaseGrant(LeaseGrantRequest { id, ttl })
    }
    fn put(key: &str, lease: i64) -> Request {
        Request::Put(PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            lease,
            ..Default::default()
        })
    }
    fn revoke(id: i64) -> Request {
        Request::LeaseRevoke(LeaseRevokeRequest { id })
    }
    fn err(o: &Result<ApplyOutput, ServerError>) -> Option<ServerError> {
        o.as_ref().err().cloned()
    }

    #[test]
    fn revoke_deletes_attached_keys_in_one_revision() {
        let mut f = Fixture::new();
        let (outs, _) = f.apply(vec![
            grant(1, 10),
            grant(1, 10),
            put("c", 1),
            put("a", 1),
            put("b", 1),
            put("z", 1),
            put("z", 0), // moved off the lease
            put("x", 77),
        ]);
        match &outs[0] {
            Ok(ApplyOutput::LeaseGrant(r)) => {
                assert_eq!(
                    (r.id, r.ttl, r.header.as_ref().unwrap().revision),
                    (1, 10, 1)
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(err(&outs[1]), Some(ServerError::LeaseExist));
        assert_eq!(err(&outs[7]), Some(ServerError::LeaseNotFound));
        assert_eq!(f.store.current_revision(), 6);

        let (outs, published) = f.apply(vec![revoke(1), revoke(1)]);
        match &outs[0] {
            Ok(ApplyOutput::LeaseRevoke(r)) => assert_eq!(r.header.as_ref().unwrap().revision, 7),
            other => panic!("{other:?}"),
        }
        assert_eq!(err(&outs[1]), Some(ServerError::LeaseNotFound));
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].rev, 7);
        let deleted: Vec<&[u8]> = published[0]
            .events
            .iter()
            .map(|e| {
                assert_eq!(e.kind, EventKind::Delete);
                assert_eq!(e.kv.mod_revision, 7);
                assert_eq!(e.prev_kv.as_ref().unwrap().lease, 1);
                e.kv.key.as_slice()
            })
            .collect();
        assert_eq!(deleted, vec![b"a".as_slice(), b"b", b"c"]);
        let left = f.all_keys();
        assert_eq!(left.kvs.len(), 1);
        assert_eq!(left.kvs[0].key, b"z");
        assert!(!f.lessor.exists(1));
        assert!(crate::lease::persist::recover(&f.store).unwrap().is_empty());
    }

    #[test]
    fn expiry_revokes_each_lease_as_its_own_revision() {
        let mut f = Fixture::new();
        f.apply(vec![
            grant(2, 5),
            grant(3, 5),
            grant(4, 5),
            put("k2", 2),
            put("k4", 4),
        ]);
        let (outs, published) = f.apply(vec![Request::LeaseExpire(LeaseExpire {
            ids: vec![2, 3, 9, 4],
        })]);
        assert!(matches!(outs[0], Ok(ApplyOutput::Lease)));
        // Lease 3 had no key: it goes without a revision; 9 does not exist.
        let revs: Vec<(i64, usize)> = published.iter().map(|r| (r.rev, r.events.len())).collect();
        assert_eq!(revs, vec![(4, 1), (5, 1)]);
        assert_eq!(f.lessor.len(), 0);
    }

    #[test]
    fn a_lease_with_very_many_keys_is_revoked_in_bounded_revisions() {
        use crate::lease::apply::REVOKE_MAX_KEYS;
        let mut f = Fixture::new();
        let n = REVOKE_MAX_KEYS + 5;
        let mut reqs = vec![grant(1, 10)];
        reqs.extend((0..n).map(|i| put(&format!("k{i:06}"), 1)));
        f.apply(reqs);
        let base = f.store.current_revision();
        let rest = |id| Request::LeaseRevokeRest(LeaseRevokeRequest { id });
        let (outs, published) = f.apply(vec![
            revoke(1),
            // Overwritten before the rest is deleted: no longer the lease's key.
            put(&format!("k{:06}", n - 1), 0),
            grant(1, 10),
        ]);
        assert!(matches!(outs[0], Ok(ApplyOutput::LeaseRevoke(_))));
        assert_eq!(err(&outs[2]), Some(ServerError::LeaseExist));
        assert_eq!(published[0].events.len(), REVOKE_MAX_KEYS);
        assert_eq!(published[0].rev, base + 1);
        assert!(!f.lessor.fully_revoked(1));
        assert_eq!(f.lessor.first_leftover(), Some(1));
        let (outs, published) = f.apply(vec![rest(1), rest(1)]);
        assert!(outs.iter().all(|o| matches!(o, Ok(ApplyOutput::Lease))));
        // The 4 remaining keys in one revision; the second entry finds nothing left.
        let revs: Vec<(i64, usize)> = published.iter().map(|r| (r.rev, r.events.len())).collect();
        assert_eq!(revs, vec![(base + 3, 4)]);
        assert!(f.lessor.fully_revoked(1));
        let left = f.all_keys();
        assert_eq!(left.kvs.len(), 1);
        // Recovery finds interrupted leftovers: keys carrying a lease that is gone.
        let mut f = Fixture::new();
        let mut reqs = vec![grant(2, 10)];
        reqs.extend((0..n).map(|i| put(&format!("j{i:06}"), 2)));
        reqs.push(revoke(2));
        f.apply(reqs);
        let t = crate::lease::persist::recover(&f.store).unwrap();
        assert!(t.is_empty());
        assert_eq!((t.first_leftover(), t.leftover_len()), (Some(2), 5));
    }

    #[test]
    fn lease_state_survives_reload() {
        let mut f = Fixture::new();
        f.apply(vec![
            grant(5, 30),
            grant(6, 60),
            put("a", 5),
            put("b", 6),
            Request::LeaseCheckpoint(LeaseCheckpoint {
                clock_ms: 4000,
                deadlines: vec![LeaseDeadline {
                    id: 6,
                    deadline_ms: 50_000,
                }],
            }),
        ]);
        let t = crate::lease::persist::recover(&f.store).unwrap();
        assert_eq!(t.clock_ms(), 4000);
        let (l5, l6) = (t.get(5).unwrap(), t.get(6).unwrap());
        assert_eq!((l5.ttl, l5.deadline_ms), (30, 30_000));
        assert_eq!((l6.ttl, l6.deadline_ms), (60, 50_000));
        assert_eq!(l6.keys.iter().collect::<Vec<_>>(), vec![&b"b".to_vec()]);
        // A txn put checks the lease too.
        let txn = ballast_proto::etcdserverpb::TxnRequest {
            success: vec![ballast_proto::etcdserverpb::RequestOp {
                request: Some(
                    ballast_proto::etcdserverpb::request_op::Request::RequestPut(PutRequest {
                        key: b"t".to_vec(),
                        lease: 8,
                        ..Default::default()
                    }),
                ),
            }],
            ..Default::default()
        };
        let (outs, _) = f.apply(vec![Request::Txn(txn)]);
        assert_eq!(err(&outs[0]), Some(ServerError::LeaseNotFound));
    }

    fn alarm(action: AlarmAction, kind: AlarmType) -> Request {
        Request::Alarm(AlarmRequest {
            action: action as i32,
            member_id: 1,
            alarm: kind as i32,
        })
    }

    /// The layers in order: a raised NOSPACE refuses puts and grants but not deletes; the
    /// alarm is in the backend (a reload finds it); disarming opens the gate again.
    #[test]
    fn the_alarm_gate_follows_raised_alarms_and_survives_reload() {
        let mut f = Fixture::new();
        let (outs, _) = f.apply(vec![
            put("a", 0),
            alarm(AlarmAction::Activate, AlarmType::Nospace),
            alarm(AlarmAction::Activate, AlarmType::Nospace),
            put("b", 0),
            grant(1, 10),
            Request::DeleteRange(ballast_proto::etcdserverpb::DeleteRangeRequest {
                key: b"a".to_vec(),
                ..Default::default()
            }),
        ]);
        let raised = AlarmMember {
            member_id: 1,
            alarm: AlarmType::Nospace as i32,
        };
        for o in &outs[1..3] {
            match o {
                Ok(ApplyOutput::Alarm(r)) => assert_eq!(r.alarms, vec![raised]),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(err(&outs[3]), Some(ServerError::NoSpace));
        assert_eq!(err(&outs[4]), Some(ServerError::NoSpace));
        assert!(matches!(outs[5], Ok(ApplyOutput::DeleteRange(ref d)) if d.deleted == 1));
        assert_eq!(
            f.store.current_revision(),
            3,
            "put a (2), delete a (3); nothing else"
        );
        let reloaded = Alarms::load(&f.store).unwrap();
        assert_eq!(reloaded.get(AlarmType::None as i32), vec![raised]);
        assert!(reloaded.active().nospace);

        let (outs, _) = f.apply(vec![
            alarm(AlarmAction::Deactivate, AlarmType::Nospace),
            alarm(AlarmAction::Deactivate, AlarmType::Nospace),
            put("b", 0),
        ]);
        match (&outs[0], &outs[1]) {
            (Ok(ApplyOutput::Alarm(first)), Ok(ApplyOutput::Alarm(second))) => {
                assert_eq!(first.alarms, vec![raised]);
                assert!(second.alarms.is_empty(), "not raised: nothing cleared");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(outs[2], Ok(ApplyOutput::Put(_))));
        assert!(Alarms::load(&f.store).unwrap().get(0).is_empty());
    }

    /// etcd's quota applier: a request that did not fit is applied, and answered NoSpace.
    #[test]
    fn the_quota_layer_applies_then_answers_no_space() {
        let mut f = Fixture::new();
        f.quota = Quota::new(1000, 600);
        let big = Request::Put(PutRequest {
            key: b"big".to_vec(),
            value: vec![0; 200],
            ..Default::default()
        });
        let (outs, _) = f.apply(vec![put("small", 0), big, grant(3, 10)]);
        assert!(matches!(outs[0], Ok(ApplyOutput::Put(_))));
        assert_eq!(err(&outs[1]), Some(ServerError::NoSpace));
        assert!(matches!(outs[2], Ok(ApplyOutput::LeaseGrant(_))));
        assert_eq!(
            f.all_keys().kvs.len(),
            2,
            "the refused put is applied anyway"
        );
        assert!(f.lessor.exists(3));
    }

    /// A run of writes leaves the backend not durable (the WAL covers it); once the loop has
    /// been idle for `DURABLE_WHEN_IDLE`, it is made durable without any further entry, and the
    /// loop goes on applying.
    #[test]
    fn the_backend_becomes_durable_when_the_loop_goes_idle() {
        use super::test_support::{applier, put_entry as entry};
        let f = Fixture::new();
        let (applier, tx, _status) = applier(&f.store);
        let loop_thread = std::thread::spawn(move || applier.run());
        let wait_for = |what: &str, done: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !done() {
                assert!(Instant::now() < deadline, "{what} within 10 s");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        tx.send(ApplyMsg::Entries(vec![entry(1, "a"), entry(2, "b")]))
            .unwrap();
        wait_for("entries applied", &|| f.store.applied_index() == 2);
        wait_for("the backend durable at the applied index", &|| {
            f.store.durable_applied_index() == 2
        });
        tx.send(ApplyMsg::Entries(vec![entry(3, "c")])).unwrap();
        wait_for("the next entry applied", &|| f.store.applied_index() == 3);
        drop(tx);
        loop_thread.join().unwrap();
        // A clean stop leaves it durable too.
        assert_eq!(f.store.durable_applied_index(), 3);
        assert_eq!(f.all_keys().kvs.len(), 3);
    }
}
