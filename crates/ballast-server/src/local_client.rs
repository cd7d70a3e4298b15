//! The member's KV, lease and alarm operations as the gRPC services perform them (checks,
//! quota, linearizable read barrier, proposal, header), for those services and for the
//! server-side recipes (Lock, Election) that are etcd clients of their own member.
//!
//! The quota is checked here, once for every caller, as etcd's quota KV/lease servers do: a
//! Put, a Txn with puts or a LeaseGrant over `--quota-backend-bytes` raises NOSPACE for this
//! member through Raft and fails with `NoSpace`; so does one the apply loop's quota layer
//! answers with `NoSpace`.

use ballast_proto::etcdserverpb::alarm_request::AlarmAction;
use ballast_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, AlarmType, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, LeaseGrantResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    TxnRequest, TxnResponse,
};
use ballast_proto::internal::internal_raft_request::Request as Internal;

use crate::apply::ApplyOutput;
use crate::error::ServerError;
use crate::kv;
use crate::lease::MAX_LEASE_TTL;
use crate::member::Member;
use crate::quota;

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
        self.check_quota(quota::cost_put(&r)).await?;
        kv::check_put(&r)?;
        match self.propose_charged(Internal::Put(r)).await? {
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
        self.check_quota(quota::cost_txn(&r)).await?;
        kv::check_txn(&r, self.cfg.max_txn_ops)?;
        if kv::txn_is_read_only(&r) {
            self.read_barrier().await?;
            let mut view = self.store.read().map_err(ServerError::from)?;
            let mut resp = kv::txn_read(&mut view, &r)?;
            self.fill_header(&mut resp.header);
            return Ok(resp);
        }
        match self.propose_charged(Internal::Txn(r)).await? {
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
        self.check_quota(quota::LEASE_OVERHEAD).await?;
        if r.ttl > MAX_LEASE_TTL {
            return Err(ServerError::LeaseTtlTooLarge);
        }
        r.ttl = r.ttl.max(self.lessor.config().min_ttl);
        if r.id == 0 {
            r.id = self.lessor.next_id();
        }
        match self.propose_charged(Internal::LeaseGrant(r)).await? {
            ApplyOutput::LeaseGrant(mut resp) => {
                self.fill_header(&mut resp.header);
                Ok(resp)
            }
            other => Err(other.unexpected()),
        }
    }

    /// etcd's Maintenance.Alarm: GET answers from this member's table after a read barrier
    /// (the same answer etcd gives by ordering the GET through Raft); ACTIVATE and DEACTIVATE
    /// go through Raft.
    pub async fn alarm(&self, r: AlarmRequest) -> Result<AlarmResponse, ServerError> {
        let mut resp = if r.action == AlarmAction::Get as i32 {
            self.read_barrier().await?;
            AlarmResponse {
                header: None,
                alarms: self.alarms.get(r.alarm),
            }
        } else {
            match self.propose(Internal::Alarm(r)).await? {
                ApplyOutput::Alarm(resp) => resp,
                other => return Err(other.unexpected()),
            }
        };
        self.fill_header(&mut resp.header);
        Ok(resp)
    }

    /// etcd's check before proposing a request that adds data: over the quota, raise NOSPACE
    /// for this member (unless it is raised already) and refuse.
    async fn check_quota(&self, cost: u64) -> Result<(), ServerError> {
        if self.quota.available(cost) {
            return Ok(());
        }
        if !self.alarms.nospace_of(self.member_id) {
            self.raise_nospace().await;
        }
        Err(ServerError::NoSpace)
    }

    /// Proposes a request the apply loop's quota layer may answer with `NoSpace` (it did not
    /// fit when applied): then, as etcd, NOSPACE is raised before the client hears of it,
    /// unless some NOSPACE alarm is raised already.
    async fn propose_charged(&self, req: Internal) -> Result<ApplyOutput, ServerError> {
        match self.propose(req).await {
            Err(ServerError::NoSpace) => {
                if !self.alarms.nospace() {
                    self.raise_nospace().await;
                }
                Err(ServerError::NoSpace)
            }
            other => other,
        }
    }

    /// Proposes ACTIVATE NOSPACE for this member; a failure is logged (the request it came
    /// from fails with `NoSpace` either way, and the next one over the quota tries again).
    async fn raise_nospace(&self) {
        tracing::warn!(
            quota_size_bytes = self.quota.bytes(),
            backend_size_bytes = self.quota.size(),
            "request exceeded backend quota; raising alarm"
        );
        let req = AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: self.member_id,
            alarm: AlarmType::Nospace as i32,
        };
        if let Err(e) = self.propose(Internal::Alarm(req)).await {
            tracing::warn!(error = %e, "raising the NOSPACE alarm failed");
        }
    }
}
