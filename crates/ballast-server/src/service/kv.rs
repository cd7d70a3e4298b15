//! `etcdserverpb.KV`.

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

    async fn do_range(&self, r: &RangeRequest) -> Result<RangeResponse, ServerError> {
        kv::check_range(r)?;
        if !r.serializable {
            self.member.read_barrier().await?;
        }
        let mut view = self.member.store.read().map_err(ServerError::from)?;
        let mut resp = kv::range(&mut view, r)?;
        self.member.fill_header(&mut resp.header);
        Ok(resp)
    }
}

fn unexpected(out: ApplyOutput) -> Status {
    Status::internal(format!("ballast: unexpected apply result {out:?}"))
}

type RangeStream =
    Pin<Box<dyn Stream<Item = Result<RangeStreamResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        Ok(Response::new(self.do_range(req.get_ref()).await?))
    }

    type RangeStreamStream = RangeStream;

    async fn range_stream(
        &self,
        req: Request<RangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        let mut full = self.do_range(req.get_ref()).await?;
        // Chunks carry disjoint slices of kvs; header, more and count ride on the last one.
        let mut chunks = Vec::new();
        let kvs = std::mem::take(&mut full.kvs);
        let mut it = kvs.into_iter().peekable();
        while it.peek().is_some() {
            let part: Vec<_> = it.by_ref().take(RANGE_STREAM_CHUNK).collect();
            chunks.push(RangeResponse {
                kvs: part,
                ..Default::default()
            });
        }
        match chunks.last_mut() {
            Some(last) => {
                last.header = full.header;
                last.more = full.more;
                last.count = full.count;
            }
            None => chunks.push(full),
        }
        let items = chunks.into_iter().map(|c| {
            Ok(RangeStreamResponse {
                range_response: Some(c),
            })
        });
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let r = req.into_inner();
        kv::check_put(&r)?;
        match self.member.propose(Internal::Put(r)).await? {
            ApplyOutput::Put(mut resp) => {
                self.member.fill_header(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let r = req.into_inner();
        kv::check_delete(&r)?;
        match self.member.propose(Internal::DeleteRange(r)).await? {
            ApplyOutput::DeleteRange(mut resp) => {
                self.member.fill_header(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let r = req.into_inner();
        kv::check_txn(&r, self.member.cfg.max_txn_ops)?;
        if kv::txn_is_read_only(&r) {
            self.member.read_barrier().await?;
            let mut view = self.member.store.read().map_err(ServerError::from)?;
            let mut resp = kv::txn_read(&mut view, &r)?;
            self.member.fill_header(&mut resp.header);
            return Ok(Response::new(resp));
        }
        match self.member.propose(Internal::Txn(r)).await? {
            ApplyOutput::Txn(mut resp) => {
                self.member.fill_header(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let r = req.into_inner();
        match self.member.propose(Internal::Compaction(r)).await? {
            ApplyOutput::Compact(mut resp, physical) => {
                if let Some(done) = physical {
                    // The backend rows are gone once the compaction thread reports done.
                    let _ = done.await;
                }
                self.member.fill_header(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }
}
