//! The membership layer of the apply loop: conf-change entries (add, remove, promote) and the
//! normal entries that publish a member's attributes or update its peer URLs.
//!
//! A conf change is validated against the member list ([`crate::cluster::Membership`], the
//! same on every member, so every member decides the same); a valid one goes to raft-rs
//! (the raft thread applies it and answers the new conf state), then the member list and the
//! conf state are written in the entry's batch. An invalid one is answered with etcd's
//! error and never reaches raft-rs. A conf change at or below the backend's applied index
//! (the backend came from a snapshot ahead of the log) goes to raft-rs only.
//!
//! Never: write the member list without the conf state raft-rs answered, or tell raft-rs of
//! a change the member list refused.

use std::sync::Arc;

use ballast_mvcc::WriteTxn;
use ballast_proto::etcdserverpb;
use ballast_proto::internal;
use parking_lot::RwLock;
use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, ConfState, Entry};

use super::ApplyOutput;
use crate::cluster::{persist, MemberRecord, Membership};
use crate::error::ServerError;
use crate::fault::Fault;
use crate::raft::RaftMsg;

/// Told of every applied membership change (the transport's peer list follows it).
pub type OnChange = Box<dyn Fn(&Membership) + Send + Sync>;

/// What the membership layer works with: the member list (shared with the Cluster service,
/// written only here) and the raft thread.
pub struct Members {
    pub list: Arc<RwLock<Membership>>,
    pub raft_tx: flume::Sender<RaftMsg>,
    pub local_id: u64,
    pub on_change: OnChange,
}

/// What applying one conf change came to.
pub struct Applied {
    /// The proposal id (the waiter), and the answer.
    pub id: u64,
    pub out: Result<ApplyOutput, ServerError>,
    /// This member was removed: it must stop.
    pub removed_self: bool,
}

impl Members {
    /// Members with no raft thread behind them (tests of the other layers).
    #[cfg(test)]
    pub fn detached() -> Members {
        let (raft_tx, _) = flume::unbounded();
        Members {
            list: Arc::default(),
            raft_tx,
            local_id: 1,
            on_change: Box::new(|_| {}),
        }
    }

    /// Applies the conf change in `e` (above the backend's applied index) into `txn`.
    pub fn apply_conf_change(&self, txn: &mut WriteTxn<'_>, e: &Entry) -> Result<Applied, Fault> {
        let cc = decode_conf_change(e)?;
        let change = internal::MemberChange::decode(cc.context.as_ref())
            .map_err(|err| Fault::new(format!("decoding the member change at {}", e.index), None, err))?;
        let record: MemberRecord = change.member.unwrap_or_default().into();
        let mut list = self.list.write();
        let checked = match (cc.get_change_type(), change.is_promote) {
            (ConfChangeType::AddNode, true) => list.promote(cc.node_id).map(drop),
            (ConfChangeType::AddNode | ConfChangeType::AddLearnerNode, _) => list.add(record),
            (ConfChangeType::RemoveNode, _) => list.remove(cc.node_id).map(drop),
        };
        if let Err(err) = checked {
            return Ok(Applied {
                id: cc.id,
                out: Err(err),
                removed_self: false,
            });
        }
        let cs = self.to_raft(e.index, cc.clone())?;
        persist::save(txn, &list, &cs);
        (self.on_change)(&list);
        let removed_self =
            cc.get_change_type() == ConfChangeType::RemoveNode && cc.node_id == self.local_id;
        Ok(Applied {
            id: cc.id,
            out: Ok(ApplyOutput::Members(list.to_pb())),
            removed_self,
        })
    }

    /// A conf change the backend already holds: raft-rs still has to hear of it.
    pub fn replay_conf_change(&self, e: &Entry) -> Result<(), Fault> {
        let cc = decode_conf_change(e)?;
        let cs = self.to_raft(e.index, cc)?;
        let list = self.list.read();
        let voters_known = cs.voters.iter().all(|v| list.get(*v).is_some());
        if !voters_known {
            tracing::warn!(index = e.index, "replayed conf change names members the backend does not know");
        }
        Ok(())
    }

    /// A member publishing its name and client URLs (etcd's publish at start).
    pub fn publish(&self, txn: &mut WriteTxn<'_>, m: internal::Member) -> Result<ApplyOutput, ServerError> {
        let mut list = self.list.write();
        if let Some(rec) = list.publish(m.id, m.name, m.client_urls)? {
            persist::put_member(txn, rec);
        }
        (self.on_change)(&list);
        Ok(ApplyOutput::Members(list.to_pb()))
    }

    /// MemberUpdate: new peer URLs for a member.
    pub fn update(&self, txn: &mut WriteTxn<'_>, m: internal::Member) -> Result<ApplyOutput, ServerError> {
        let mut list = self.list.write();
        let rec = list.update_peer_urls(m.id, m.peer_urls)?;
        persist::put_member(txn, rec);
        (self.on_change)(&list);
        Ok(ApplyOutput::Members(list.to_pb()))
    }

    /// Has the raft thread apply `cc` (committed at `index`) and waits for the conf state.
    fn to_raft(&self, index: u64, cc: ConfChange) -> Result<ConfState, Fault> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let step = format!("applying the conf change at {index}");
        self.raft_tx
            .send(RaftMsg::ApplyConfChange { index, cc, reply })
            .map_err(|_| Fault::new(&step, None, "the raft thread is gone"))?;
        answer
            .recv()
            .map_err(|_| Fault::new(&step, None, "the raft thread is gone"))?
            .map_err(|e| Fault::new(&step, None, e))
    }
}

fn decode_conf_change(e: &Entry) -> Result<ConfChange, Fault> {
    ConfChange::parse_from_bytes(&e.data)
        .map_err(|err| Fault::new(format!("decoding the conf change at {}", e.index), None, err))
}

/// The members of an answer, for the Cluster service.
pub fn members_of(out: ApplyOutput) -> Result<Vec<etcdserverpb::Member>, ServerError> {
    match out {
        ApplyOutput::Members(m) => Ok(m),
        other => Err(other.unexpected()),
    }
}
