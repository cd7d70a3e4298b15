//! `etcdserverpb.Lease`: grants and revokes go through raft; keep-alives and time-to-live are
//! answered by the primary lessor (the leader's; a follower forwards them,
//! [`super::lease_forward`]); the lease list by any member after a read barrier.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ballast_proto::etcdserverpb::lease_server::Lease;
use ballast_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use ballast_proto::internal::internal_raft_request::Request as Internal;
use futures::Stream;
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

use crate::apply::ApplyOutput;
use crate::error::ServerError;
use crate::lease::Renewal;
use crate::member::Member;
use super::lease_forward::{led_by_another, LeaderLeases};

/// Keep-alive answers buffered per stream before the stream waits for its client.
const KEEPALIVE_BUFFER: usize = 16;

pub struct LeaseService {
    member: Arc<Member>,
    /// Becomes true when the server stops: keep-alive streams end then.
    stopping: tokio::sync::watch::Receiver<bool>,
    /// The way to the leader's lessor, for a follower.
    leader: Arc<LeaderLeases>,
}

impl LeaseService {
    pub fn new(member: Arc<Member>, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        LeaseService {
            member,
            stopping,
            leader: Arc::default(),
        }
    }
}

/// Waits (until `deadline`) for this member to be the primary lessor: right after a start or a
/// leader change it first applies the entries of earlier terms.
async fn wait_primary(member: &Member, deadline: Instant) -> Result<(), ServerError> {
    loop {
        if member.is_stopped() {
            return Err(ServerError::Stopped);
        }
        if member.lessor.sync_leadership(&member.status) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            // Forwarding to a remote leader arrives with multi-member clusters.
            return Err(if member.status.leader() == 0 {
                ServerError::NoLeader
            } else {
                ServerError::Timeout
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One keep-alive: the granted TTL, or 0 when the lease does not exist (or expired: then only
/// once its revocation has applied, so its keys are gone when the client learns it). On a
/// follower, the leader answers it.
async fn renew(member: &Member, leader: &LeaderLeases, id: i64) -> Result<i64, ServerError> {
    if led_by_another(member) {
        return leader.keep_alive(member, id).await;
    }
    let deadline = Instant::now() + member.request_timeout();
    let mut revocations = member.lessor.revocations();
    loop {
        wait_primary(member, deadline).await?;
        match member.lessor.renew(id) {
            Renewal::Renewed(ttl) => return Ok(ttl),
            Renewal::NotFound => return Ok(0),
            Renewal::NotPrimary => {}
            Renewal::Expired => {
                let wait = tokio::time::timeout_at(deadline, revocations.changed()).await;
                if wait.is_err() {
                    return Err(ServerError::Timeout);
                }
            }
        }
    }
}

/// Waits (up to the request timeout) until revoked lease `id` has no key left to delete.
async fn wait_fully_revoked(member: &Member, id: i64) -> Result<(), ServerError> {
    let deadline = Instant::now() + member.request_timeout();
    let mut revocations = member.lessor.revocations();
    while !member.lessor.fully_revoked(id) {
        if tokio::time::timeout_at(deadline, revocations.changed())
            .await
            .is_err()
        {
            return Err(ServerError::Timeout);
        }
    }
    Ok(())
}

type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        Ok(Response::new(
            self.member.lease_grant(req.into_inner()).await?,
        ))
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let r = req.into_inner();
        let id = r.id;
        match self.member.propose(Internal::LeaseRevoke(r)).await? {
            ApplyOutput::LeaseRevoke(mut resp) => {
                if !self.member.lessor.fully_revoked(id) {
                    // A lease with very many keys: answer once the rest of them are deleted.
                    wait_fully_revoked(&self.member, id).await?;
                    self.member.read_barrier().await?;
                    resp.header = Some(self.member.header(self.member.store.current_revision()));
                }
                self.member.fill_header(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(other.unexpected().into()),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(KEEPALIVE_BUFFER);
        let member = self.member.clone();
        let leader = self.leader.clone();
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = inbound.message() => match m {
                        Ok(Some(m)) => m,
                        // The client closed its side, or the stream broke: nothing to answer.
                        Ok(None) | Err(_) => return,
                    },
                    _ = stopping.wait_for(|s| *s) => return,
                };
                // The header comes before the renewal, as on etcd: a lease revoked at revision
                // R is never reported alive at a later revision.
                let header = member.header(member.store.current_revision());
                let answer = renew(&member, &leader, msg.id)
                    .await
                    .map(|ttl| LeaseKeepAliveResponse {
                        header: Some(header),
                        id: msg.id,
                        ttl,
                    });
                let failed = answer.is_err();
                if tx.send(answer.map_err(Status::from)).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let r = req.into_inner();
        if led_by_another(&self.member) {
            // Only the leader knows how long a lease has left.
            let mut resp = self.leader.time_to_live(&self.member, r).await?;
            resp.header = Some(self.member.header(self.member.store.current_revision()));
            return Ok(Response::new(resp));
        }
        let deadline = Instant::now() + self.member.request_timeout();
        wait_primary(&self.member, deadline).await?;
        // Everything committed before now is applied: a lease granted or revoked by another
        // client before this call is seen.
        self.member.read_barrier().await?;
        let header = Some(self.member.header(self.member.store.current_revision()));
        let resp = match self.member.lessor.time_to_live(r.id, r.keys) {
            Some(t) => LeaseTimeToLiveResponse {
                header,
                id: r.id,
                ttl: t.remaining,
                granted_ttl: t.granted,
                keys: t.keys,
            },
            None => LeaseTimeToLiveResponse {
                header,
                id: r.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
        };
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.member.read_barrier().await?;
        let leases = self
            .member
            .lessor
            .leases()
            .into_iter()
            .map(|id| LeaseStatus { id })
            .collect();
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(self.member.header(self.member.store.current_revision())),
            leases,
        }))
    }
}
