//! `ballast.peer.Membership` on the peer port: the cluster id and member list, for a member
//! joining with `--initial-cluster-state existing` (etcd serves the same on its peer port's
//! `/members`).

use std::sync::Arc;

use ballast_proto::internal;
use ballast_proto::peer::membership_server::Membership;
use ballast_proto::peer::{MembersRequest, MembersResponse};
use tonic::{Request, Response, Status};

use crate::member::Member;

pub struct PeerMembers {
    member: Arc<Member>,
}

impl PeerMembers {
    pub fn new(member: Arc<Member>) -> Self {
        PeerMembers { member }
    }
}

#[tonic::async_trait]
impl Membership for PeerMembers {
    async fn members(
        &self,
        _req: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let members = self
            .member
            .members()
            .read()
            .members()
            .map(internal::Member::from)
            .collect();
        Ok(Response::new(MembersResponse {
            cluster_id: self.member.cluster_id,
            member_id: self.member.member_id,
            members,
        }))
    }
}
