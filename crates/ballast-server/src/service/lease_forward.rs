//! Lease requests only the leader can answer, forwarded from a follower: a keep-alive (only
//! the leader's lessor renews) and a time-to-live (only it knows the remaining time). etcd
//! forwards both to the leader over its peer port; Ballast asks the leader's Lease service at
//! the client URLs it published, over one cached connection per leader.

use ballast_proto::etcdserverpb::lease_client::LeaseClient;
use ballast_proto::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use parking_lot::Mutex;
use tonic::transport::Channel;

use crate::error::ServerError;
use crate::member::Member;

/// A connection to the current leader, made when first needed.
#[derive(Default)]
pub struct LeaderLeases {
    cached: Mutex<Option<(u64, Channel)>>,
}

/// Whether another member leads: this one's lessor cannot answer.
pub fn led_by_another(member: &Member) -> bool {
    let leader = member.status.leader();
    leader != 0 && leader != member.member_id
}

impl LeaderLeases {
    async fn channel(&self, member: &Member) -> Result<Channel, ServerError> {
        let leader = member.status.leader();
        if let Some((id, ch)) = self.cached.lock().as_ref() {
            if *id == leader {
                return Ok(ch.clone());
            }
        }
        // No leader, none published, or none answers: the client retries elsewhere.
        let (leader, ch) = member
            .connect_leader()
            .await
            .map_err(|_| ServerError::NoLeader)?;
        *self.cached.lock() = Some((leader, ch.clone()));
        Ok(ch)
    }

    fn forget(&self) {
        *self.cached.lock() = None;
    }

    /// One keep-alive of lease `id` at the leader: the TTL it granted (0: no such lease).
    pub async fn keep_alive(&self, member: &Member, id: i64) -> Result<i64, ServerError> {
        let ch = self.channel(member).await?;
        let mut client = LeaseClient::new(ch);
        let answer = async {
            let mut answers = client
                .lease_keep_alive(futures::stream::iter([LeaseKeepAliveRequest { id }]))
                .await?
                .into_inner();
            answers.message().await
        }
        .await;
        match answer {
            Ok(Some(resp)) => Ok(resp.ttl),
            Ok(None) => {
                self.forget();
                Err(ServerError::NoLeader)
            }
            Err(status) => {
                self.forget();
                Err(ServerError::from_status(&status))
            }
        }
    }

    /// TimeToLive of a lease, from the leader.
    pub async fn time_to_live(
        &self,
        member: &Member,
        req: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, ServerError> {
        let ch = self.channel(member).await?;
        match LeaseClient::new(ch).lease_time_to_live(req).await {
            Ok(resp) => Ok(resp.into_inner()),
            Err(status) => {
                self.forget();
                Err(ServerError::from_status(&status))
            }
        }
    }
}
