//! The receiving end of the peer transport: the `ballast.peer.Raft` gRPC service a member
//! serves on `--listen-peer-urls`.
//!
//! `Send` streams carry batches of raft messages; each is decoded and handed to the raft
//! thread as a [`PeerEvent::Message`] on the member's bounded events channel. `Snapshot`
//! streams carry a backend db, written to disk by [`SnapshotReceiver`] before its raft message
//! is handed on.
//!
//! Invariants:
//! - A stream is served only if its first message names this member's cluster and this member
//!   (etcd's rafthttp checks, with its wording: `FAILED_PRECONDITION` "cluster ID mismatch" or
//!   "to field mismatch"), so members of clusters with different `--initial-cluster-token` never
//!   exchange a message.
//! - Never blocks the sender on the raft thread for ordinary messages: when the events channel
//!   is full the rest of the batch is dropped (raft retransmits). A snapshot's message is the
//!   exception: it waits for room, since the transfer behind it is costly to repeat.
//!
//! Knows nothing of raft's logic or of membership: binding and serving the port is the
//! member's, and so is deciding what a message means.

use std::io;
use std::path::PathBuf;

use ballast_proto::peer::raft_server::{Raft, RaftServer};
use ballast_proto::peer::{PeerAck, PeerBatch, SnapshotAck, SnapshotChunk, StreamHeader};
use protobuf::Message as _;
use raft::prelude::Message;
use tonic::service::Routes;
use tonic::{Request, Response, Status, Streaming};

use super::snapshot::{SnapshotError, SnapshotReceiver};
use super::transport::PeerEvent;

/// Largest gRPC message the service accepts (a batch of raft messages or a snapshot chunk);
/// see [`PeerServiceConfig::max_message_bytes`].
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct PeerServiceConfig {
    /// This member's id.
    pub local_id: u64,
    pub cluster_id: u64,
    /// Where received snapshots go (`<data dir>/member/snap`).
    pub snap_dir: PathBuf,
    /// Largest batch accepted. Must exceed the largest raft message (a log entry of
    /// `--max-request-bytes` plus overhead); a sender's batches stay well below it
    /// ([`super::transport::TransportConfig::max_batch_bytes`]) unless one message is larger.
    pub max_message_bytes: usize,
}

impl PeerServiceConfig {
    pub fn new(local_id: u64, cluster_id: u64, snap_dir: PathBuf) -> PeerServiceConfig {
        PeerServiceConfig {
            local_id,
            cluster_id,
            snap_dir,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// Why a peer's stream was refused or ended; mapped to a `Status` once, in [`From`].
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("cluster ID mismatch")]
    ClusterIdMismatch,
    /// etcd's wording for a stream addressed to another member id (rafthttp's "X-Raft-To").
    #[error("to field mismatch")]
    MemberIdMismatch,
    #[error("stream header missing")]
    NoHeader,
    #[error("malformed raft message")]
    BadMessage,
    #[error("server stopped")]
    Stopped,
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

impl From<PeerError> for Status {
    fn from(e: PeerError) -> Status {
        match e {
            PeerError::ClusterIdMismatch | PeerError::MemberIdMismatch => {
                Status::failed_precondition(e.to_string())
            }
            PeerError::NoHeader | PeerError::BadMessage => Status::invalid_argument(e.to_string()),
            PeerError::Stopped => Status::unavailable(e.to_string()),
            PeerError::Snapshot(SnapshotError::Stream(status)) => status,
            PeerError::Snapshot(SnapshotError::Busy(_)) => Status::aborted(e.to_string()),
            PeerError::Snapshot(SnapshotError::Io(_)) => Status::internal(e.to_string()),
            PeerError::Snapshot(_) => Status::invalid_argument(e.to_string()),
        }
    }
}

/// The service; one per member.
pub struct PeerService {
    cfg: PeerServiceConfig,
    events: flume::Sender<PeerEvent>,
    snapshots: SnapshotReceiver,
}

impl PeerService {
    /// Creates the snapshot directory if needed and removes partial snapshots left in it.
    pub fn new(
        cfg: PeerServiceConfig,
        events: flume::Sender<PeerEvent>,
    ) -> io::Result<PeerService> {
        let snapshots = SnapshotReceiver::new(cfg.snap_dir.clone(), cfg.local_id)?;
        Ok(PeerService {
            cfg,
            events,
            snapshots,
        })
    }

    /// The generated tonic server with this service's message size limit.
    pub fn into_server(self) -> RaftServer<PeerService> {
        let max = self.cfg.max_message_bytes;
        RaftServer::new(self)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max)
    }

    /// Checks a stream's header; the sender's member id if it may talk to us.
    fn check_header(&self, header: Option<&StreamHeader>) -> Result<u64, PeerError> {
        let h = header.ok_or(PeerError::NoHeader)?;
        if h.cluster_id != self.cfg.cluster_id {
            tracing::warn!(
                local_member_id = %format_args!("{:x}", self.cfg.local_id),
                local_cluster_id = %format_args!("{:x}", self.cfg.cluster_id),
                remote_member_id = %format_args!("{:x}", h.from),
                remote_cluster_id = %format_args!("{:x}", h.cluster_id),
                "refused a peer stream: cluster ID mismatch"
            );
            return Err(PeerError::ClusterIdMismatch);
        }
        if h.to != self.cfg.local_id {
            tracing::warn!(
                local_member_id = %format_args!("{:x}", self.cfg.local_id),
                remote_member_id = %format_args!("{:x}", h.from),
                to = %format_args!("{:x}", h.to),
                "refused a peer stream: member ID mismatch"
            );
            return Err(PeerError::MemberIdMismatch);
        }
        Ok(h.from)
    }

    /// Hands a batch's messages to raft, in order; drops the rest when the channel is full.
    fn deliver(&self, from: u64, batch: PeerBatch) -> Result<(), PeerError> {
        let total = batch.messages.len();
        for (i, bytes) in batch.messages.iter().enumerate() {
            let msg = Message::parse_from_bytes(bytes).map_err(|_| PeerError::BadMessage)?;
            if msg.from != from || msg.to != self.cfg.local_id {
                tracing::debug!(
                    from = msg.from,
                    to = msg.to,
                    "dropped a raft message with foreign ids"
                );
                continue;
            }
            match self.events.try_send(PeerEvent::Message(msg)) {
                Ok(()) => {}
                Err(flume::TrySendError::Full(_)) => {
                    tracing::debug!(
                        from,
                        dropped = total - i,
                        "raft is busy: dropped peer messages"
                    );
                    return Ok(());
                }
                Err(flume::TrySendError::Disconnected(_)) => return Err(PeerError::Stopped),
            }
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Raft for PeerService {
    async fn send(&self, req: Request<Streaming<PeerBatch>>) -> Result<Response<PeerAck>, Status> {
        let mut stream = req.into_inner();
        let Some(first) = stream.message().await? else {
            return Ok(Response::new(PeerAck {}));
        };
        let from = self.check_header(first.header.as_ref())?;
        let mut batch = first;
        loop {
            self.deliver(from, batch)?;
            match stream.message().await? {
                Some(next) => batch = next,
                None => return Ok(Response::new(PeerAck {})),
            }
        }
    }

    async fn snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SnapshotAck>, Status> {
        let mut stream = req.into_inner();
        let Some(first) = stream.message().await? else {
            return Err(PeerError::Snapshot(SnapshotError::Malformed("empty stream")).into());
        };
        let from = self.check_header(first.header.as_ref())?;
        let index = first.index;
        tracing::info!(from = %format_args!("{from:x}"), index, size = first.size, "receiving a snapshot");
        let msg = match self.snapshots.receive(first, stream).await {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!(from = %format_args!("{from:x}"), index, error = %e, "snapshot not received");
                return Err(PeerError::from(e).into());
            }
        };
        tracing::info!(from = %format_args!("{from:x}"), index, "snapshot received and durable");
        self.events
            .send_async(PeerEvent::Message(msg))
            .await
            .map_err(|_| PeerError::Stopped)?;
        Ok(Response::new(SnapshotAck {}))
    }
}

/// The peer service as routes, for the member to serve on its peer listeners.
pub fn peer_routes(cfg: PeerServiceConfig, events: flume::Sender<PeerEvent>) -> io::Result<Routes> {
    Ok(Routes::new(PeerService::new(cfg, events)?.into_server()))
}

#[cfg(test)]
mod tests {
    use ballast_proto::peer::raft_client::RaftClient;
    use ballast_proto::peer::{PeerBatch, SnapshotChunk, StreamHeader};
    use protobuf::Message as _;
    use raft::prelude::MessageType;
    use tonic::Code;

    use crate::raft::transport::test_support::*;
    use crate::raft::transport::PeerEvent;

    async fn client(m: &TestMember) -> RaftClient<tonic::transport::Channel> {
        RaftClient::connect(m.url()).await.unwrap()
    }

    fn batch(cluster_id: u64, to: u64) -> PeerBatch {
        PeerBatch {
            header: Some(StreamHeader {
                cluster_id,
                from: 1,
                to,
            }),
            messages: vec![msg(1, to, MessageType::MsgHeartbeat, 0)
                .write_to_bytes()
                .unwrap()],
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wrong_cluster_or_member_is_refused() {
        let b = TestMember::serving(2).await;
        let mut c = client(&b).await;

        let refused = |batch| {
            let mut c = c.clone();
            async move {
                let err = c
                    .send(futures::stream::iter(vec![batch]))
                    .await
                    .unwrap_err();
                (err.code(), err.message().to_string())
            }
        };
        assert_eq!(
            refused(batch(CLUSTER + 1, 2)).await,
            (Code::FailedPrecondition, "cluster ID mismatch".into())
        );
        assert_eq!(
            refused(batch(CLUSTER, 3)).await,
            (Code::FailedPrecondition, "to field mismatch".into())
        );
        assert_eq!(
            refused(PeerBatch::default()).await,
            (Code::InvalidArgument, "stream header missing".into())
        );

        let first = SnapshotChunk {
            header: Some(StreamHeader {
                cluster_id: CLUSTER + 1,
                from: 1,
                to: 2,
            }),
            index: 5,
            size: 0,
            ..Default::default()
        };
        let err = c
            .snapshot(futures::stream::iter(vec![first]))
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), err.message()),
            (Code::FailedPrecondition, "cluster ID mismatch")
        );

        assert!(b.events.is_empty(), "a refused stream delivers nothing");
        assert_eq!(std::fs::read_dir(b.snap_dir.path()).unwrap().count(), 0);

        // The right ids pass.
        c.send(futures::stream::iter(vec![batch(CLUSTER, 2)]))
            .await
            .unwrap();
        let m = b.next_event(message).await;
        assert_eq!((m.from, m.to), (1, 2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn busy_raft_drops_the_batch_without_blocking_the_stream() {
        let b = TestMember::serving(2).await;
        let filled = b.fill_events();
        let mut c = client(&b).await;
        // Answered once the stream ended: every batch was taken (and dropped).
        c.send(futures::stream::iter(vec![
            batch(CLUSTER, 2),
            batch(CLUSTER, 2),
        ]))
        .await
        .unwrap();
        let left: Vec<_> = b.events.drain().collect();
        assert_eq!(left.len(), filled);
        assert!(left.iter().all(|ev| !matches!(ev, PeerEvent::Message(_))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn undecodable_message_ends_the_stream() {
        let b = TestMember::serving(2).await;
        let mut c = client(&b).await;
        let mut bad = batch(CLUSTER, 2);
        bad.messages.push(vec![0xff; 7]);
        let err = c.send(futures::stream::iter(vec![bad])).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }
}
