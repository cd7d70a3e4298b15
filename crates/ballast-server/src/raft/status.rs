//! Raft facts the rest of the member reads without asking the raft thread: term, leader,
//! commit and applied indexes, the stop flag and the fault slot ([`crate::fault`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::fault::FaultSlot;

/// Raft facts the rest of the member reads without asking the raft thread.
#[derive(Default)]
pub struct RaftStatus {
    pub term: AtomicU64,
    pub leader: AtomicU64,
    /// Whether this member is the leader (raft-rs's role, as of the last Ready).
    pub is_leader: AtomicBool,
    pub commit_index: AtomicU64,
    pub applied_index: AtomicU64,
    /// Term of the last applied entry (set by the apply loop). Equal to `term` on the leader
    /// once it has applied an entry of its own term, hence every entry of earlier terms.
    pub applied_term: AtomicU64,
    pub stopped: AtomicBool,
    /// Set with `stopped` when this member applied its own removal from the cluster.
    pub removed: AtomicBool,
    /// Set by the apply loop: the backend holds this index durably, snapshot there. A flag
    /// rather than a message so a full request queue can never drop it.
    pub snapshot_request: AtomicU64,
    /// The first storage or thread fault; set through [`RaftStatus::fail_stop`].
    pub fault: FaultSlot,
}

impl RaftStatus {
    pub fn term(&self) -> u64 {
        self.term.load(Ordering::Relaxed)
    }
    pub fn leader(&self) -> u64 {
        self.leader.load(Ordering::Relaxed)
    }
    pub fn is_leader(&self) -> bool {
        self.is_leader.load(Ordering::Relaxed)
    }
}
