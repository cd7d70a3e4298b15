//! The member's KV operations as the gRPC KV service performs them (checks, linearizable read
//! barrier, proposal, header), for that service and for the server-side recipes (Lock,
//! Election) that are etcd clients of their own member.

use ballast_proto::etcdserverpb::{
    DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest, LeaseGrantResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use ballast_proto::internal::internal_raft_request::Request as Internal;

use crate::apply::ApplyOutput;
use crate::error::ServerError;
use crate::kv;
use crate::lease::MAX_LEASE_TTL;
use crate::member::Member;

impl Member {
    /// etcd's Range: linearizable unless `serializable`.
    pub async fn kv_range(&self, r: &RangeRequest) -> Result<RangeResponse, ServerError> {
        kv::check_range(r)?;
        if !r.serializable {
            self.read_barrier().await?;
        }
        let mut view = self.store.read().map_err(ServerError::from)?;
        let mut resp = kv::range(&mut view, r)?;
        self.fill_header(&mut resp.header);
        Ok(resp)
    }

    pub async fn kv_put(&self, r: PutRequest) -> Result<PutResponse, ServerError> {
        kv::check_put(&r)?;
        match self.propose(Internal::Put(r)).await? {
            ApplyOutput::Put(mut resp) => {
                self.fill_header(&mut resp.header);
                Ok(resp)
            }
            other => Err(other.unexpected()),
        }
    }

    pub async fn kv_delete(
        &self,
        r: DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, ServerError> {
        kv::check_delete(&r)?;
        match self.propose(Internal::DeleteRange(r)).await? {
            ApplyOutput::DeleteRange(mut resp) => {
                self.fill_header(&mut resp.header);
                Ok(resp)
            }
            other => Err(other.unexpected()),
        }
    }

    /// etcd's Txn: read-only ones are served locally after the read barrier.
    pub async fn kv_txn(&self, r: TxnRequest) -> Result<TxnResponse, ServerError> {
        kv::check_txn(&r, self.cfg.max_txn_ops)?;
        if kv::txn_is_read_only(&r) {
            self.read_barrier().await?;
            let mut view = self.store.read().map_err(ServerError::from)?;
            let mut resp = kv::txn_read(&mut view, &r)?;
            self.fill_header(&mut resp.header);
            return Ok(resp);
        }
        match self.propose(Internal::Txn(r)).await? {
            ApplyOutput::Txn(mut resp) => {
                self.fill_header(&mut resp.header);
                Ok(resp)
            }
            other => Err(other.unexpected()),
        }
    }

    /// etcd's LeaseGrant: TTL raised to the minimum, ID picked here when 0 (so every member
    /// applies the same lease).
    pub async fn lease_grant(
        &self,
        mut r: LeaseGrantRequest,
    ) -> Result<LeaseGrantResponse, ServerError> {
        if r.ttl > MAX_LEASE_TTL {
            return Err(ServerError::LeaseTtlTooLarge);
        }
        r.ttl = r.ttl.max(self.lessor.config().min_ttl);
        if r.id == 0 {
            r.id = self.lessor.next_id();
        }
        match self.propose(Internal::LeaseGrant(r)).await? {
            ApplyOutput::LeaseGrant(mut resp) => {
                self.fill_header(&mut resp.header);
                Ok(resp)
            }
            other => Err(other.unexpected()),
        }
    }
}
