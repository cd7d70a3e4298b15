//! The Raft node: one OS thread that owns raft-rs's `RawNode` and the WAL.
//!
//! Each loop turn it collects proposals, read requests and peer messages, ticks, and processes
//! one `Ready` in the order written down in `docs/cluster.md` (raft thesis §10.2.1): a leader's
//! messages go out before its own fsync, new entries and the hard state go to the WAL with ONE
//! fdatasync for the whole batch (group commit), a follower's messages go out only after that
//! fsync, committed entries go to the apply loop, read states are handed to the apply loop to
//! release once applied. The apply loop, not this thread, touches MVCC.
//!
//! It knows nothing of KV: a proposal is an id and opaque bytes; a proposal it cannot hand to
//! raft-rs is failed through [`Reject`] (the member's pending-proposal table). It never blocks
//! on the apply loop (the queue to it is unbounded; the member refuses new proposals while the
//! apply loop lags far behind the commit index), so heartbeats keep flowing while apply is slow.
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

use super::log::{self as raft_log, RaftLog};
use super::status::RaftStatus;
use crate::error::ServerError;
use crate::fault::Fault;
use crate::wait::Reject;

pub type ReadWaiter = oneshot::Sender<Result<(), ServerError>>;

/// What the raft thread hands the apply loop, in raft order.
pub enum ToApply {
    /// Committed entries, in index order.
    Entries(Vec<Entry>),
    /// Install the backend received with the raft snapshot at `index` (its file is durable in
    /// the snapshot directory), after everything sent before.
    Snapshot { index: u64 },
    /// Linearizable reads to release once the applied index reaches `index`.
    Reads {
        index: u64,
        waiters: Vec<ReadWaiter>,
    },
}

/// Where the raft thread sends messages for other members (the peer transport). It must not
/// block: a message it cannot queue is dropped (raft retries).
pub trait Outbox: Send {
    fn send(&mut self, msgs: Vec<Message>);
}

/// The outbox of a member alone in its cluster: raft-rs never addresses anyone.
pub struct NoPeers;

impl Outbox for NoPeers {
    fn send(&mut self, msgs: Vec<Message>) {
        if !msgs.is_empty() {
            tracing::warn!(count = msgs.len(), to = msgs[0].to, "raft message for a member with no transport dropped");
        }
    }
}

/// Requests to the raft thread.
pub enum RaftMsg {
    /// Propose opaque `data` whose waiter the member registered under `id`.
    Propose { id: u64, data: Vec<u8> },
    /// A message from a peer.
    Step(Message),
    /// A peer could not be reached (raft backs off sending to it).
    Unreachable(u64),
    /// How sending a snapshot to a peer ended.
    SnapshotStatus(u64, raft::SnapshotStatus),
    /// How far member `id` is (its match index, if raft tracks it) and this leader's last
    /// index: a learner's promotion needs both.
    Progress {
        id: u64,
        reply: oneshot::Sender<(Option<u64>, u64)>,
    },
    /// Propose a membership change whose waiter the member registered under `id`.
    ProposeConfChange { id: u64, cc: ConfChange },
    /// Apply the conf change committed at `index` (from the apply loop, which waits for the
    /// new conf state).
    ApplyConfChange {
        index: u64,
        cc: ConfChange,
        reply: std::sync::mpsc::SyncSender<Result<ConfState, String>>,
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

/// How the raft thread reaches beyond itself: other members, and the proposers it fails.
pub struct Peers {
    pub outbox: Box<dyn Outbox>,
    pub reject: Arc<dyn Reject>,
}

pub struct RaftNode {
    node: RawNode<RaftLog>,
    wal: Wal,
    rx: flume::Receiver<RaftMsg>,
    apply_tx: flume::Sender<ToApply>,
    outbox: Box<dyn Outbox>,
    reject: Arc<dyn Reject>,
    status: Arc<RaftStatus>,
    tick: Duration,
    pending_reads: Vec<ReadWaiter>,
    read_seq: u64,
    reads_in_flight: HashMap<u64, Vec<ReadWaiter>>,
    /// Proposals that arrived while no leader was known; proposed once one is (or failed by the
    /// requester's own timeout, like etcd's).
    waiting_for_leader: Vec<(u64, Vec<u8>)>,
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
        apply_tx: flume::Sender<ToApply>,
        peers: Peers,
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
            outbox: peers.outbox,
            reject: peers.reject,
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
            if self.node.raft.leader_id != raft::INVALID_ID && !self.waiting_for_leader.is_empty()
            {
                for (id, data) in std::mem::take(&mut self.waiting_for_leader) {
                    self.propose(id, data);
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
        for (id, _) in self.waiting_for_leader.drain(..) {
            self.reject.reject(id, ServerError::Stopped);
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
                RaftMsg::Propose { id, .. } | RaftMsg::ProposeConfChange { id, .. } => {
                    self.reject.reject(id, ServerError::Stopped)
                }
                RaftMsg::ReadIndex { waiter } => {
                    let _ = waiter.send(Err(ServerError::Stopped));
                }
                RaftMsg::ApplyConfChange { reply, .. } => {
                    let _ = reply.send(Err("the raft node stopped".into()));
                }
                RaftMsg::Step(_)
                | RaftMsg::Progress { .. }
                | RaftMsg::Unreachable(_)
                | RaftMsg::SnapshotStatus(..)
                | RaftMsg::Stop => {}
            }
        }
    }

    fn handle(&mut self, msg: RaftMsg) {
        match msg {
            RaftMsg::Propose { id, data } => {
                if self.node.raft.leader_id != raft::INVALID_ID {
                    // A follower's raft-rs forwards it to the leader (MsgProp).
                    self.propose(id, data);
                } else if self.waiting_for_leader.len() >= MAX_WAITING_FOR_LEADER {
                    self.reject.reject(id, ServerError::TooManyRequests);
                } else {
                    // No leader known (an election is on): proposed once one is, or failed by
                    // the requester's own timeout, as etcd's proposals wait.
                    self.waiting_for_leader.push((id, data));
                }
            }
            RaftMsg::Step(m) => {
                // A message from a peer this member no longer knows, or a stale one, is
                // refused by raft-rs; that is not an error of ours.
                if let Err(e) = self.node.step(m) {
                    tracing::debug!(error = %e, "raft message not stepped");
                }
            }
            RaftMsg::Unreachable(id) => self.node.report_unreachable(id),
            RaftMsg::SnapshotStatus(id, st) => self.node.report_snapshot(id, st),
            RaftMsg::ProposeConfChange { id, cc } => {
                if self.node.raft.leader_id == raft::INVALID_ID {
                    self.reject.reject(id, ServerError::NoLeader);
                } else if let Err(e) = self.node.propose_conf_change(Vec::new(), cc) {
                    // raft-rs refuses a second change while one is pending.
                    self.reject.reject(id, match e {
                        raft::Error::ProposalDropped => ServerError::NoLeader,
                        other => ServerError::Internal(other.to_string()),
                    });
                }
            }
            RaftMsg::ApplyConfChange { index, cc, reply } => {
                let r = self.apply_conf_change(index, &cc);
                let _ = reply.send(r);
            }
            RaftMsg::Progress { id, reply } => {
                let matched = self.node.raft.prs().get(id).map(|p| p.matched);
                let _ = reply.send((matched, self.node.raft.raft_log.last_index()));
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

    /// Applies a committed conf change to raft-rs, remembers the conf state from `index` on
    /// (for the snapshots taken there), and lets a member left alone in its configuration by
    /// the last entry of its log (a new one-member cluster) lead at once rather than after an
    /// election timeout. Never while older entries replay: a configuration passed through on
    /// the way must not elect anyone.
    fn apply_conf_change(&mut self, index: u64, cc: &ConfChange) -> Result<ConfState, String> {
        let cs = self
            .node
            .apply_conf_change(cc)
            .map_err(|e| format!("apply conf change at {index}: {e}"))?;
        self.node.mut_store().set_conf_state(index, cs.clone());
        let me = self.node.raft.id;
        let at_tip = index == self.node.raft.raft_log.last_index();
        if at_tip && cs.voters == [me] && self.node.raft.state != StateRole::Leader {
            self.node.campaign().map_err(|e| format!("raft campaign: {e}"))?;
        }
        Ok(cs)
    }

    fn propose(&mut self, id: u64, data: Vec<u8>) {
        match self.node.propose(Vec::new(), data) {
            Ok(()) => {}
            // A leader transferring leadership, or a follower that lost its leader between
            // the check and now.
            Err(raft::Error::ProposalDropped) => self.reject.reject(id, ServerError::NoLeader),
            Err(e) => self.reject.reject(id, ServerError::Internal(e.to_string())),
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

    /// One Ready, in the order of `docs/cluster.md` (raft thesis §10.2.1).
    fn on_ready(&mut self) -> Result<(), Fault> {
        if !self.node.has_ready() {
            return Ok(());
        }
        let mut ready = self.node.ready();
        if let Some(ss) = ready.ss() {
            self.status.leader.store(ss.leader_id, Ordering::Relaxed);
            self.status
                .is_leader
                .store(ss.raft_state == StateRole::Leader, Ordering::Relaxed);
        }
        // Before any committed entry goes to the apply loop: applying a new leader's empty
        // entry compares its term with this one (the lessor's promotion).
        if let Some(hs) = ready.hs() {
            self.status.term.store(hs.term, Ordering::Relaxed);
        }
        // 1. A leader's appends and heartbeats leave before its own fsync: it counts itself
        // towards the quorum only once durable (raft-rs puts only those in `messages`).
        if !ready.messages().is_empty() {
            self.outbox.send(ready.take_messages());
        }
        // 2. A snapshot from the leader (this member was too far behind): its backend file is
        // durable already (raft/snapshot.rs); the WAL marker makes the new log start durable,
        // then the log restarts there and the apply loop installs the file.
        if !ready.snapshot().is_empty() {
            let meta = ready.snapshot().get_metadata().clone();
            self.wal
                .append(&[raft_log::snapshot_record(&meta)])
                .and_then(|()| self.wal.sync())
                .map_err(|e| wal_fault("raft snapshot from the leader (wal marker)", &self.wal_dir, e))?;
            let index = meta.index;
            self.node.mut_store().apply_snapshot(meta);
            self.status.commit_index.fetch_max(index, Ordering::Relaxed);
            let _ = self.apply_tx.send(ToApply::Snapshot { index });
        }
        // Committed entries a leader may apply before its own append is durable (they are
        // durable on a quorum).
        let committed = ready.take_committed_entries();
        self.send_committed(committed);

        // 3. Entries and hard state: one append, one fdatasync.
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
        // 4. A follower's answers (append responses, votes) only once durable.
        if !ready.persisted_messages().is_empty() {
            self.outbox.send(ready.take_persisted_messages());
        }
        for rs in ready.take_read_states() {
            self.release_read(rs);
        }
        // 5-6. Advance; the light ready carries what the append made possible.
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.node.mut_store().set_commit(commit);
            self.status.commit_index.store(commit, Ordering::Relaxed);
        }
        if !light.messages().is_empty() {
            self.outbox.send(light.take_messages());
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
            let _ = self.apply_tx.send(ToApply::Reads {
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
            let _ = self.apply_tx.send(ToApply::Entries(entries));
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
