//! `etcdserverpb.Maintenance`: Status, Alarm (the member's `alarm` role method), Defragment,
//! Hash and HashKV; the rest answers Unimplemented until its issue lands.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ballast_proto::etcdserverpb as pb;
use ballast_proto::etcdserverpb::maintenance_server::Maintenance;
use futures::Stream;
use tonic::{Request, Response, Status};

use super::unimplemented::maintenance_unimplemented as unimplemented;
use crate::error::ServerError;
use crate::member::Member;
use crate::schema;

pub struct MaintenanceService {
    member: Arc<Member>,
}

impl MaintenanceService {
    pub fn new(member: Arc<Member>) -> Self {
        MaintenanceService { member }
    }
}

/// The Status answer shared by gRPC and HTTP callers.
pub fn status(member: &Member) -> pb::StatusResponse {
    let st = &member.status;
    let mut errors = Vec::new();
    if member.is_stopped() {
        errors.push("ballast: member stopped after a storage failure".to_string());
    }
    if st.leader() == 0 {
        errors.push(ServerError::NoLeader.to_string());
    }
    // etcd lists every raised alarm here, in the protobuf text form of the alarm.
    errors.extend(
        member
            .alarms
            .get(pb::AlarmType::None as i32)
            .iter()
            .map(crate::alarm::status_error),
    );
    pb::StatusResponse {
        header: Some(member.header(member.store.current_revision())),
        version: member.cfg.emulated_etcd_version.clone(),
        db_size: member.store.db_size() as i64,
        leader: st.leader(),
        raft_index: st.commit_index.load(Ordering::Relaxed),
        raft_term: st.term(),
        raft_applied_index: st.applied_index.load(Ordering::Relaxed),
        errors,
        db_size_in_use: member.store.db_size_in_use() as i64,
        is_learner: member.is_learner(),
        storage_version: storage_version(&member.cfg.emulated_etcd_version),
        db_size_quota: member.quota.bytes() as i64,
        downgrade_info: Some(pb::DowngradeInfo::default()),
    }
}

/// etcd reports the storage schema version as "major.minor.0".
fn storage_version(version: &str) -> String {
    let mut parts = version.split('.');
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => format!("{a}.{b}.0"),
        _ => version.to_string(),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        req: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        Ok(Response::new(self.member.alarm(req.into_inner()).await?))
    }

    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(status(&self.member)))
    }

    /// etcd's Defragment: gives the space compaction freed back to the file system (writes
    /// pause during the copy, as etcd's do), off the async workers.
    async fn defragment(
        &self,
        _req: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        tracing::info!("starting defragment");
        let store = self.member.store.clone();
        // The store logs the sizes and the pause.
        tokio::task::spawn_blocking(move || store.defragment())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| {
                tracing::warn!(error = %e, "failed to defragment");
                ServerError::from(e)
            })?;
        self.member.quota.set_size(self.member.store.db_size());
        tracing::info!("finished defragment");
        Ok(Response::new(pb::DefragmentResponse {
            header: Some(self.member.header(self.member.store.current_revision())),
        }))
    }

    /// etcd's Hash: the whole backend's hash and the revision it was taken at (this member's
    /// own id is left out, so members holding the same data agree).
    async fn hash(
        &self,
        _req: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        let store = self.member.store.clone();
        let (hash, rev) =
            tokio::task::spawn_blocking(move || store.hash_ignoring(&[schema::META_MEMBER_ID]))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(ServerError::from)?;
        Ok(Response::new(pb::HashResponse {
            header: Some(self.member.header(rev)),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        req: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        let rev = req.get_ref().revision;
        let store = self.member.store.clone();
        let (hash, compact_revision, hash_revision) =
            tokio::task::spawn_blocking(move || store.hash_kv(rev))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(ServerError::from)?;
        Ok(Response::new(pb::HashKvResponse {
            header: Some(self.member.header(self.member.store.current_revision())),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    type SnapshotStream = BoxStream<pb::SnapshotResponse>;
    async fn snapshot(
        &self,
        _req: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(unimplemented("Maintenance.Snapshot"))
    }

    async fn move_leader(
        &self,
        _req: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        Err(unimplemented("Maintenance.MoveLeader"))
    }

    async fn downgrade(
        &self,
        _req: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(unimplemented("Maintenance.Downgrade"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn storage_version_is_major_minor_zero() {
        assert_eq!(super::storage_version("3.6.4"), "3.6.0");
        assert_eq!(super::storage_version("3"), "3");
    }
}
