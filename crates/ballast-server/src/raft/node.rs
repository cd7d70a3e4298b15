//! The Raft node: one OS thread that owns raft-rs's `RawNode` and the WAL.
//!
//! Each loop turn it collects proposals and read requests from the request path, ticks, and
//! processes one `Ready`: new entries and the hard state go to the WAL with ONE fdatasync for the
//! whole batch (group commit), committed entries go to the apply thread, read states are handed
//! to the apply thread to release once applied. The apply loop, not this thread, touches MVCC.
//!
//! Invariants: an entry reaches raft-rs's storage (and so can be committed) only after it is
//! durable in the WAL; a WAL failure (write, fsync, snapshot marker, purge) fail-stops the member
//! ([`crate::fault`]): no more proposals are accepted, waiters get `server stopped`, the process
//! exits, since after a failed fsync nothing about the log can be trusted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_wal::Wal;
use raft::prelude::*;
use raft::{RawNode, StateRole};
use tokio::sync::oneshot;

use crate::apply::{ApplyMsg, ApplyOutput};
use crate::error::ServerError;
use crate::fault::Fault;
use super::log::{self as raft_log, RaftLog};
use super::status::RaftStatus;

pub type Waiter = oneshot::Sender<Result<ApplyOutput, ServerError>>;
pub type ReadWaiter = oneshot::Sender<Result<(), ServerError>>;

/// Requests to the raft thread.
pub enum RaftMsg {
    /// Propose an encoded `InternalRaftRequest` whose id is `id`.
    Propose {
        id: u64,
        data: Vec<u8>,
        waiter: Waiter,
    },
    /// Linearizable read barrier: answered once the apply loop has caught up with a read index.
    ReadIndex { waiter: ReadWaiter },
    /// Graceful stop: the thread exits, which in turn ends the apply loop.
    Stop,
}

pub struct RaftNodeConfig {
    pub id: u64,
    pub tick: Duration,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    pub applied: u64,
    /// The WAL directory (named by a fault's log line).
    pub wal_dir: PathBuf,
}

pub struct RaftNode {
    node: RawNode<RaftLog>,
    wal: Wal,
    rx: flume::Receiver<RaftMsg>,
    apply_tx: flume::Sender<ApplyMsg>,
    status: Arc<RaftStatus>,
    tick: Duration,
    pending_reads: Vec<ReadWaiter>,
    read_seq: u64,
    reads_in_flight: HashMap<u64, Vec<ReadWaiter>>,
    /// Proposals that arrived while no leader was known; proposed once one is (or failed by the
    /// requester's own timeout, like etcd's).
    waiting_for_leader: Vec<(u64, Vec<u8>, Waiter)>,
    records: Vec<ballast_wal::Record>,
    wal_dir: PathBuf,
}

/// Proposals and reads parked while there is no leader, at most.
const MAX_WAITING_FOR_LEADER: usize = 16 * 1024;

/// Forwards raft-rs's slog records to `tracing`.
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, record: &slog::Record, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        struct Kv(String);
        impl slog::Serializer for Kv {
            fn emit_arguments(
                &mut self,
                key: slog::Key,
                val: &std::fmt::Arguments,
            ) -> slog::Result {
                use std::fmt::Write;
                let _ = write!(self.0, " {key}={val}");
                Ok(())
            }
        }
        let mut kv = Kv(String::new());
        let _ = slog::KV::serialize(&record.kv(), record, &mut kv);
        let _ = slog::KV::serialize(values, record, &mut kv);
        let msg = format!("{}{}", record.msg(), kv.0);
        match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::error!(target: "raft", "{msg}"),
            slog::Level::Warning => tracing::warn!(target: "raft", "{msg}"),
            slog::Level::Info => tracing::info!(target: "raft", "{msg}"),
            _ => tracing::debug!(target: "raft", "{msg}"),
        }
        Ok(())
    }
}

impl RaftNode {
    pub fn new(
        cfg: RaftNodeConfig,
        log: RaftLog,
        wal: Wal,
        rx: flume::Receiver<RaftMsg>,
        apply_tx: flume::Sender<ApplyMsg>,
        status: Arc<RaftStatus>,
    ) -> Result<RaftNode, String> {
        let config = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            applied: cfg.applied,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            read_only_option: raft::ReadOnlyOption::Safe,
            ..Default::default()
        };
        config.validate().map_err(|e| format!("raft config: {e}"))?;
        let logger = slog::Logger::root(slog::Fuse(TracingDrain), slog::o!("raft_id" => cfg.id));
        let mut node = RawNode::new(&config, log, &logger).map_err(|e| format!("raft: {e}"))?;
        status.term.store(node.raft.term, Ordering::Relaxed);
        // A member alone in its configuration need not wait an election timeout.
        let voters = node.store().conf_state().voters.clone();
        if voters == [cfg.id] {
            node.campaign().map_err(|e| format!("raft campaign: {e}"))?;
        }
        Ok(RaftNode {
            node,
            wal,
            rx,
            apply_tx,
            status,
            tick: cfg.tick,
            pending_reads: Vec::new(),
            read_seq: 0,
            reads_in_flight: HashMap::new(),
            waiting_for_leader: Vec::new(),
            records: Vec::new(),
            wal_dir: cfg.wal_dir,
        })
    }

    /// Runs until every sender is gone, a stop, or a fault (its own or another thread's).
    pub fn run(mut self) {
        let mut next_tick = Instant::now() + self.tick;
        loop {
            let now = Instant::now();
            let wait = next_tick.saturating_duration_since(now);
            match self.rx.recv_timeout(wait) {
                Ok(RaftMsg::Stop) => break,
                Ok(msg) => self.handle(msg),
                Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => break,
            }
            // Group commit: everything that queued up while we were busy goes into this Ready.
            for _ in 0..8192 {
                match self.rx.try_recv() {
                    Ok(msg) => self.handle(msg),
                    Err(_) => break,
                }
            }
            let is_leader = self.node.raft.state == StateRole::Leader;
            if is_leader && !self.waiting_for_leader.is_empty() {
                for (id, data, waiter) in std::mem::take(&mut self.waiting_for_leader) {
                    self.propose(id, data, waiter);
                }
            }
            // Reads wait (up to the requester's timeout) while no leader is known, and until a
            // new leader has committed an entry of its term: raft-rs silently drops a ReadIndex
            // before that.
            let can_read = if is_leader {
                self.node.raft.commit_to_current_term()
            } else {
                self.status.leader() != 0
            };
            if !self.pending_reads.is_empty() && can_read {
                self.read_seq += 1;
                let waiters = std::mem::take(&mut self.pending_reads);
                self.reads_in_flight.insert(self.read_seq, waiters);
                self.node.read_index(self.read_seq.to_be_bytes().to_vec());
            }
            let snap = self.status.snapshot_request.swap(0, Ordering::AcqRel);
            if snap != 0 {
                if let Err(fault) = self.snapshot(snap) {
                    self.status.fail_stop(fault);
                    break;
                }
            }
            if Instant::now() >= next_tick {
                self.node.tick();
                next_tick += self.tick;
                if next_tick < Instant::now() {
                    next_tick = Instant::now() + self.tick;
                }
            }
            if let Err(fault) = self.on_ready() {
                self.status.fail_stop(fault);
                break;
            }
            if self.status.stopped.load(Ordering::SeqCst) {
                break;
            }
        }
        self.fail_all_waiters();
    }

    fn fail_all_waiters(&mut self) {
        self.status.stopped.store(true, Ordering::SeqCst);
        for (_, _, w) in self.waiting_for_leader.drain(..) {
            let _ = w.send(Err(ServerError::Stopped));
        }
        for w in self.pending_reads.drain(..) {
            let _ = w.send(Err(ServerError::Stopped));
        }
        for (_, ws) in self.reads_in_flight.drain() {
            for w in ws {
                let _ = w.send(Err(ServerError::Stopped));
            }
        }
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                RaftMsg::Propose { waiter, .. } => {
                    let _ = waiter.send(Err(ServerError::Stopped));
                }
                RaftMsg::ReadIndex { waiter } => {
                    let _ = waiter.send(Err(ServerError::Stopped));
                }
                RaftMsg::Stop => {}
            }
        }
    }

    fn handle(&mut self, msg: RaftMsg) {
        match msg {
            RaftMsg::Propose { id, data, waiter } => {
                if self.node.raft.state == StateRole::Leader {
                    self.propose(id, data, waiter);
                } else if self.waiting_for_leader.len() >= MAX_WAITING_FOR_LEADER {
                    let _ = waiter.send(Err(ServerError::TooManyRequests));
                } else {
                    // Forwarding to a remote leader arrives with peers; until then a member
                    // waits to become the leader itself.
                    self.waiting_for_leader.push((id, data, waiter));
                }
            }
            RaftMsg::ReadIndex { waiter } => {
                if self.pending_reads.len() >= MAX_WAITING_FOR_LEADER {
                    let _ = waiter.send(Err(ServerError::TooManyRequests));
                } else {
                    self.pending_reads.push(waiter);
                }
            }
            RaftMsg::Stop => self.status.stopped.store(true, Ordering::SeqCst),
        }
    }

    fn propose(&mut self, id: u64, data: Vec<u8>, waiter: Waiter) {
        match self.node.propose(Vec::new(), data) {
            Ok(()) => {
                // Ordered before any Ready that can commit this entry.
                let _ = self.apply_tx.send(ApplyMsg::Register { id, waiter });
            }
            Err(raft::Error::ProposalDropped) => {
                let _ = waiter.send(Err(ServerError::NoLeader));
            }
            Err(e) => {
                let _ = waiter.send(Err(ServerError::Internal(e.to_string())));
            }
        }
    }

    /// Marks a snapshot at `index` in the WAL, compacts the in-memory log and removes WAL
    /// segments that only hold entries before it. The backend already holds `index` durably.
    fn snapshot(&mut self, index: u64) -> Result<(), Fault> {
        let wal_dir = self.wal_dir.clone();
        let store = self.node.mut_store();
        if index <= store.snapshot_index() || index > store.last_index() {
            return Ok(());
        }
        let Some(meta) = store.snapshot_metadata_at(index) else {
            return Ok(());
        };
        let save = |wal: &mut Wal| -> Result<(), ballast_wal::WalError> {
            fail::fail_point!("raft::before_snapshot_save", |arg| Err(
                ballast_wal::WalError::Io(crate::fault::failpoint_io_error(arg))
            ));
            wal.append(&[raft_log::snapshot_record(&meta)])?;
            wal.sync()?;
            fail::fail_point!("raft::after_snapshot_save", |arg| Err(
                ballast_wal::WalError::Io(crate::fault::failpoint_io_error(arg))
            ));
            Ok(())
        };
        save(&mut self.wal)
            .map_err(|e| wal_fault("raft snapshot save (wal append + fdatasync)", &wal_dir, e))?;
        let store = self.node.mut_store();
        store.compact_to(meta);
        let removed = self
            .wal
            .purge_before(index)
            .map_err(|e| wal_fault("wal purge", &wal_dir, e))?;
        tracing::info!(
            index,
            removed_segments = removed,
            "raft snapshot taken, wal purged"
        );
        Ok(())
    }

    fn on_ready(&mut self) -> Result<(), Fault> {
        if !self.node.has_ready() {
            return Ok(());
        }
        let mut ready = self.node.ready();
        if let Some(ss) = ready.ss() {
            self.status.leader.store(ss.leader_id, Ordering::Relaxed);
        }
        // Before any committed entry goes to the apply loop: applying a new leader's empty
        // entry compares its term with this one (the lessor's promotion).
        if let Some(hs) = ready.hs() {
            self.status.term.store(hs.term, Ordering::Relaxed);
        }
        if !ready.snapshot().is_empty() {
            // Only a leader sends snapshots, to followers; membership arrives in a later issue.
            tracing::error!("received a raft snapshot, which a single member never expects");
        }
        let committed = ready.take_committed_entries();
        self.send_committed(committed);

        self.records.clear();
        for e in ready.entries() {
            self.records.push(raft_log::entry_record(e));
        }
        if let Some(hs) = ready.hs() {
            self.records.push(raft_log::hard_state_record(hs));
        }
        if !self.records.is_empty() {
            self.wal
                .append(&self.records)
                .map_err(|e| wal_fault("wal append", &self.wal_dir, e))?;
            // Only entries, term and vote need to be durable before we go on; a hard state that
            // only moved the commit index rides along with the next sync (etcd does the same).
            if ready.must_sync() {
                self.wal
                    .sync()
                    .map_err(|e| wal_fault("wal sync (write + fdatasync)", &self.wal_dir, e))?;
            }
        }
        let store = self.node.mut_store();
        store.append(ready.entries());
        if let Some(hs) = ready.hs() {
            store.set_hard_state(hs.clone());
        }
        for rs in ready.take_read_states() {
            self.release_read(rs);
        }
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.node.mut_store().set_commit(commit);
            self.status.commit_index.store(commit, Ordering::Relaxed);
        }
        let committed = light.take_committed_entries();
        self.send_committed(committed);
        self.node.advance_apply();
        Ok(())
    }

    fn release_read(&mut self, rs: ReadState) {
        let mut seq = [0u8; 8];
        if rs.request_ctx.len() == 8 {
            seq.copy_from_slice(&rs.request_ctx);
        }
        if let Some(waiters) = self.reads_in_flight.remove(&u64::from_be_bytes(seq)) {
            let _ = self.apply_tx.send(ApplyMsg::Reads {
                index: rs.index,
                waiters,
            });
        }
    }

    fn send_committed(&mut self, entries: Vec<Entry>) {
        if let Some(last) = entries.last() {
            self.status
                .commit_index
                .fetch_max(last.index, Ordering::Relaxed);
            let _ = self.apply_tx.send(ApplyMsg::Entries(entries));
        }
    }
}

/// The fault for a failed WAL `step`. The WAL returns the cause of its first write or fsync
/// failure (which the fault line names) and only `Poisoned` after that.
fn wal_fault(step: &str, wal_dir: &std::path::Path, e: ballast_wal::WalError) -> Fault {
    match e {
        ballast_wal::WalError::Poisoned => Fault::new(
            step,
            Some(wal_dir),
            "the write-ahead log is poisoned by an earlier write or fsync failure",
        ),
        other => Fault::new(step, Some(wal_dir), other),
    }
}
