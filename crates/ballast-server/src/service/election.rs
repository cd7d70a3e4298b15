//! `v3electionpb.Election` over [`crate::recipes`].

use std::pin::Pin;
use std::sync::Arc;

use ballast_proto::v3electionpb::election_server::Election;
use ballast_proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::error::ServerError;
use crate::member::Member;
use crate::recipes::{self, as_etcd};

pub struct ElectionService {
    member: Arc<Member>,
}

impl ElectionService {
    pub fn new(member: Arc<Member>) -> Self {
        ElectionService { member }
    }
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let r = req.into_inner();
        let lease = recipes::session_lease(&self.member, r.lease)
            .await
            .map_err(as_etcd)?;
        let (header, leader) = recipes::campaign(&self.member, &r.name, lease, &r.value)
            .await
            .map_err(as_etcd)?;
        Ok(Response::new(CampaignResponse {
            header: Some(header),
            leader: Some(leader),
        }))
    }

    async fn proclaim(
        &self,
        req: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let r = req.into_inner();
        let leader = r
            .leader
            .ok_or(ServerError::MissingLeaderKey)
            .map_err(as_etcd)?;
        let header = recipes::proclaim(&self.member, &leader, &r.value)
            .await
            .map_err(as_etcd)?;
        Ok(Response::new(ProclaimResponse {
            header: Some(header),
        }))
    }

    async fn leader(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let (header, kv) = recipes::leader(&self.member, &req.get_ref().name)
            .await
            .map_err(as_etcd)?;
        Ok(Response::new(LeaderResponse {
            header: Some(header),
            kv: Some(kv),
        }))
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let name = req.into_inner().name;
        let member = self.member.clone();
        let (tx, rx) = mpsc::channel::<Result<LeaderResponse, Status>>(16);
        tokio::spawn(async move {
            let sink = tx.clone();
            let observing = recipes::observe(&member, &name, |header, kv| {
                let sink = sink.clone();
                async move {
                    sink.send(Ok(LeaderResponse {
                        header: Some(header),
                        kv: Some(kv),
                    }))
                    .await
                    .is_ok()
                }
            });
            // Stop as soon as the client goes away, not at the next leader change.
            let res = tokio::select! {
                r = observing => r,
                _ = tx.closed() => Ok(()),
            };
            if let Err(e) = res {
                let _ = tx.send(Err(as_etcd(e))).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn resign(
        &self,
        req: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let leader = req
            .into_inner()
            .leader
            .ok_or(ServerError::MissingLeaderKey)
            .map_err(as_etcd)?;
        let header = recipes::resign(&self.member, &leader)
            .await
            .map_err(as_etcd)?;
        Ok(Response::new(ResignResponse {
            header: Some(header),
        }))
    }
}
