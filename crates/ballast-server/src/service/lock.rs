//! `v3lockpb.Lock` over [`crate::recipes`].

use std::sync::Arc;

use ballast_proto::v3lockpb::lock_server::Lock;
use ballast_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use tonic::{Request, Response, Status};

use crate::member::Member;
use crate::recipes::{self, as_etcd};

pub struct LockService {
    member: Arc<Member>,
}

impl LockService {
    pub fn new(member: Arc<Member>) -> Self {
        LockService { member }
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let r = req.into_inner();
        let lease = recipes::session_lease(&self.member, r.lease)
            .await
            .map_err(as_etcd)?;
        let (header, key) = recipes::lock(&self.member, &r.name, lease)
            .await
            .map_err(as_etcd)?;
        Ok(Response::new(LockResponse {
            header: Some(header),
            key,
        }))
    }

    async fn unlock(
        &self,
        req: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let header = recipes::unlock(&self.member, &req.get_ref().key)
            .await
            .map_err(as_etcd)?;
        Ok(Response::new(UnlockResponse {
            header: Some(header),
        }))
    }
}
