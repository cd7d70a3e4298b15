//! `etcdserverpb.KV`. Range is served by [`range`] (sent as it is read); the rest by the
//! generated service over [`KvService`].

mod range;

pub use range::KvRouter;

use std::pin::Pin;
use std::sync::Arc;

use ballast_proto::etcdserverpb::kv_server::Kv;
use ballast_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RangeStreamResponse, TxnRequest, TxnResponse,
};
use ballast_proto::internal::internal_raft_request::Request as Internal;
use futures::Stream;
use tonic::{Request, Response, Status};

use crate::apply::ApplyOutput;
use crate::error::ServerError;
use crate::kv;
use crate::member::Member;

/// Keys per chunk of a `RangeStream` response.
const RANGE_STREAM_CHUNK: usize = 1000;

pub struct KvService {
    member: Arc<Member>,
}

impl KvService {
    pub fn new(member: Arc<Member>) -> Self {
        KvService { member }
    }

    /// etcd's Range, its read on the blocking pool: a range of many keys or large values
    /// never holds an async worker (and the clients it serves) for the length of the read.
    async fn do_range(&self, r: RangeRequest) -> Result<RangeResponse, ServerError> {
        kv::check_range(&r)?;
        if !r.serializable {
            self.member.read_barrier().await?;
        }
        let member = self.member.clone();
        off_workers(move || {
            let mut view = member.store.read().map_err(ServerError::from)?;
            let mut resp = kv::range(&mut view, &r)?;
            member.fill_header(&mut resp.header);
            Ok(resp)
        })
        .await
    }

    /// A read-only Txn (its reads may scan): read on the blocking pool like [`Self::do_range`].
    async fn do_txn_read(&self, r: TxnRequest) -> Result<TxnResponse, ServerError> {
        kv::check_txn(&r, self.member.cfg.max_txn_ops)?;
        self.member.read_barrier().await?;
        let member = self.member.clone();
        off_workers(move || {
            let mut view = member.store.read().map_err(ServerError::from)?;
            let mut resp = kv::txn_read(&mut view, &r)?;
            member.fill_header(&mut resp.header);
            Ok(resp)
        })
        .await
    }
}

/// Runs a blocking read on tokio's blocking pool.
pub(crate) async fn off_workers<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, ServerError> + Send + 'static,
) -> Result<T, ServerError> {
    match tokio::task::spawn_blocking(read).await {
        Ok(r) => r,
        Err(e) => Err(ServerError::Internal(format!("read failed: {e}"))),
    }
}

type RangeStream =
    Pin<Box<dyn Stream<Item = Result<RangeStreamResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        Ok(Response::new(self.do_range(req.into_inner()).await?))
    }

    type RangeStreamStream = RangeStream;

    async fn range_stream(
        &self,
        req: Request<RangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        let r = req.into_inner();
        kv::check_range(&r)?;
        if !r.serializable {
            self.member.read_barrier().await?;
        }
        let chunks = range::stream_chunks(self.member.clone(), r).await?;
        Ok(Response::new(chunks))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        Ok(Response::new(self.member.kv_put(req.into_inner()).await?))
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        Ok(Response::new(
            self.member.kv_delete(req.into_inner()).await?,
        ))
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let r = req.into_inner();
        if kv::txn_is_read_only(&r) {
            return Ok(Response::new(self.do_txn_read(r).await?));
        }
        Ok(Response::new(self.member.kv_txn(r).await?))
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let r = req.into_inner();
        match self.member.propose(Internal::Compaction(r)).await? {
            ApplyOutput::Compact(mut resp, physical) => {
                if let Some(done) = physical {
                    // The backend rows are gone once the compaction thread reports done. A
                    // dropped sender means the step failed and the member stopped: never
                    // answer a physical compaction as done when it is not.
                    if done.await.is_err() {
                        return Err(ServerError::Stopped.into());
                    }
                }
                self.member.fill_header(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(other.unexpected().into()),
        }
    }
}
