//! The member's Cluster operations as the gRPC service performs them: etcd's checks before a
//! membership change (`--strict-reconfig-check`), the proposal (a raft conf change, or a
//! normal entry for an update), and the member list.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ballast_proto::etcdserverpb as pb;
use ballast_proto::internal::{self, internal_raft_request::Request, MemberChange};
use prost::Message as _;
use raft::prelude::{ConfChange, ConfChangeType};
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};

use crate::apply::membership::members_of;
use crate::apply::ApplyOutput;
use crate::cluster::membership::check_learner_ready;
use crate::cluster::MemberRecord;
use crate::error::ServerError;
use crate::member::Member;
use crate::raft::RaftMsg;

impl Member {
    /// The member list, in id order.
    pub fn member_list(&self) -> Vec<pb::Member> {
        self.members().read().to_pb()
    }

    /// Whether this member is a learner (as of its applied member list).
    pub fn is_learner(&self) -> bool {
        self.members()
            .read()
            .get(self.member_id)
            .is_some_and(|m| m.is_learner)
    }

    /// `MemberAdd`: a new member (voter or learner) with etcd's id for it, unstarted until it
    /// publishes its name.
    pub async fn member_add(
        &self,
        peer_urls: Vec<String>,
        is_learner: bool,
    ) -> Result<(pb::Member, Vec<pb::Member>), ServerError> {
        check_urls(&peer_urls)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let record = MemberRecord::added(peer_urls, is_learner, now);
        {
            let list = self.members().read();
            list.validate_add(&record)?;
            list.check_add(is_learner, self.member_id, |id| self.peer_link(id))?;
        }
        let change = if is_learner {
            ConfChangeType::AddLearnerNode
        } else {
            ConfChangeType::AddNode
        };
        let added = crate::cluster::to_pb(&record);
        let members = self.conf_change(change, &record, false).await?;
        Ok((added, members))
    }

    /// `MemberRemove`.
    pub async fn member_remove(&self, id: u64) -> Result<Vec<pb::Member>, ServerError> {
        let record = {
            let list = self.members().read();
            list.validate_remove(id)?;
            list.check_remove(id, self.member_id, |p| self.peer_link(p))?;
            list.get(id).cloned().ok_or(ServerError::MemberNotFound)?
        };
        self.conf_change(ConfChangeType::RemoveNode, &record, false)
            .await
    }

    /// `MemberPromote`: decided by the leader, which knows how far the learner is.
    pub async fn member_promote(&self, id: u64) -> Result<Vec<pb::Member>, ServerError> {
        let record = {
            let list = self.members().read();
            list.validate_promote(id)?;
            list.get(id).cloned().ok_or(ServerError::MemberNotFound)?
        };
        if !self.status.is_leader() {
            // Only the leader knows how far the learner is: etcd forwards the request there.
            return self.forward_promote(id).await;
        }
        let (tx, rx) = oneshot::channel();
        self.raft_send(RaftMsg::Progress { id, reply: tx }).await?;
        let (learner_match, leader_match) = rx.await.map_err(|_| ServerError::Stopped)?;
        check_learner_ready(learner_match, leader_match)?;
        self.members().read().check_promote()?;
        let mut voter = record;
        voter.is_learner = false;
        self.conf_change(ConfChangeType::AddNode, &voter, true).await
    }

    /// Asks the leader (at its published client URLs) to promote `id`.
    async fn forward_promote(&self, id: u64) -> Result<Vec<pb::Member>, ServerError> {
        let (_, channel) = self.connect_leader().await.map_err(|e| match e {
            LeaderUnreachable::Unknown => ServerError::NoLeader,
            LeaderUnreachable::NoAnswer => ServerError::NotLeader,
        })?;
        let mut client = pb::cluster_client::ClusterClient::new(channel);
        match client.member_promote(pb::MemberPromoteRequest { id }).await {
            Ok(resp) => Ok(resp.into_inner().members),
            Err(status) => Err(ServerError::from_status(&status)),
        }
    }

    /// A connection to the leader's client service (for what only the leader can answer):
    /// the leader's id and the first of its published client URLs that answers.
    pub(crate) async fn connect_leader(&self) -> Result<(u64, Channel), LeaderUnreachable> {
        let leader = self.status.leader();
        let urls = self
            .members()
            .read()
            .get(leader)
            .map(|m| m.client_urls.clone())
            .unwrap_or_default();
        if leader == 0 || urls.is_empty() {
            // No leader, or it has not published its client URLs yet.
            return Err(LeaderUnreachable::Unknown);
        }
        for url in urls {
            let Ok(endpoint) = Endpoint::from_shared(url) else {
                continue;
            };
            let endpoint = endpoint
                .connect_timeout(Duration::from_secs(2))
                .timeout(self.request_timeout());
            if let Ok(channel) = endpoint.connect().await {
                return Ok((leader, channel));
            }
        }
        Err(LeaderUnreachable::NoAnswer)
    }

    /// `MemberUpdate`: new peer URLs (a normal entry: raft's configuration is unchanged).
    pub async fn member_update(
        &self,
        id: u64,
        peer_urls: Vec<String>,
    ) -> Result<Vec<pb::Member>, ServerError> {
        check_urls(&peer_urls)?;
        self.members().read().validate_update(id, &peer_urls)?;
        let out = self
            .propose(Request::MemberUpdate(internal::Member {
                id,
                peer_urls,
                ..Default::default()
            }))
            .await?;
        members_of(out)
    }

    /// Publishes this member's name and client URLs (etcd does at every start).
    pub async fn publish(&self) -> Result<(), ServerError> {
        let out = self
            .propose(Request::MemberPublish(internal::Member {
                id: self.member_id,
                name: self.cfg.name.clone(),
                client_urls: self.cfg.advertise_client_urls.clone(),
                ..Default::default()
            }))
            .await?;
        members_of(out).map(drop)
    }

    async fn conf_change(
        &self,
        change: ConfChangeType,
        record: &MemberRecord,
        is_promote: bool,
    ) -> Result<Vec<pb::Member>, ServerError> {
        let mut cc = ConfChange::default();
        cc.set_change_type(change);
        cc.node_id = record.id;
        cc.context = MemberChange {
            member: Some(record.into()),
            is_promote,
        }
        .encode_to_vec()
        .into();
        let out: ApplyOutput = self.propose_conf_change(cc).await?;
        members_of(out)
    }
}

/// Why [`Member::connect_leader`] found no way to the leader.
pub(crate) enum LeaderUnreachable {
    /// No leader known, or it has not published its client URLs.
    Unknown,
    /// None of its client URLs answered.
    NoAnswer,
}

/// etcd refuses peer URLs that do not parse as URLs (`etcdserver: given member URLs are
/// invalid`).
fn check_urls(urls: &[String]) -> Result<(), ServerError> {
    let ok = !urls.is_empty()
        && urls.iter().all(|u| {
            let rest = u
                .strip_prefix("http://")
                .or_else(|| u.strip_prefix("https://"))
                .or_else(|| u.strip_prefix("unix://"))
                .or_else(|| u.strip_prefix("unixs://"));
            rest.is_some_and(|r| !r.is_empty() && !r.contains('/'))
        });
    if ok {
        Ok(())
    } else {
        Err(ServerError::MemberBadUrls)
    }
}
