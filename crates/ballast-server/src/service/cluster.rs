//! `etcdserverpb.Cluster`: the member list and membership changes, over the member's
//! Cluster operations (`cluster_ops.rs`).

use std::sync::Arc;

use ballast_proto::etcdserverpb as pb;
use ballast_proto::etcdserverpb::cluster_server::Cluster;
use tonic::{Request, Response, Status};

use crate::member::Member;

pub struct ClusterService {
    member: Arc<Member>,
}

impl ClusterService {
    pub fn new(member: Arc<Member>) -> Self {
        ClusterService { member }
    }

    fn header(&self) -> Option<pb::ResponseHeader> {
        Some(self.member.header(self.member.store.current_revision()))
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        req: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        let r = req.into_inner();
        let (member, members) = self.member.member_add(r.peer_ur_ls, r.is_learner).await?;
        Ok(Response::new(pb::MemberAddResponse {
            header: self.header(),
            member: Some(member),
            members,
        }))
    }

    async fn member_remove(
        &self,
        req: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let members = self.member.member_remove(req.into_inner().id).await?;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: self.header(),
            members,
        }))
    }

    async fn member_update(
        &self,
        req: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        let r = req.into_inner();
        let members = self.member.member_update(r.id, r.peer_ur_ls).await?;
        Ok(Response::new(pb::MemberUpdateResponse {
            header: self.header(),
            members,
        }))
    }

    async fn member_list(
        &self,
        req: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        if req.into_inner().linearizable {
            self.member.read_barrier().await?;
        }
        Ok(Response::new(pb::MemberListResponse {
            header: self.header(),
            members: self.member.member_list(),
        }))
    }

    async fn member_promote(
        &self,
        req: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let members = self.member.member_promote(req.into_inner().id).await?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: self.header(),
            members,
        }))
    }
}
