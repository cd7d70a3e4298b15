//! `etcdserverpb.Watch`: one bidirectional stream carrying many watchers. Requests are handed to
//! the watch hub as they arrive; responses come from the stream's queue (see [`crate::watch`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use ballast_proto::etcdserverpb::watch_request::RequestUnion;
use ballast_proto::etcdserverpb::WatchRequest;
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::server::{NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};

use crate::error::ServerError;
use crate::watch::wire::{WatchCodec, WatchFrame};
use crate::watch::{WatchHub, WatchResponseStream};

pub struct WatchService {
    hub: Arc<WatchHub>,
}

impl WatchService {
    pub fn new(hub: Arc<WatchHub>) -> Self {
        WatchService { hub }
    }
}

/// etcd clients put `hasleader: true` in the metadata of streams that must fail rather than
/// wait while the member has no leader (`clientv3.WithRequireLeader`; Kubernetes sets it).
fn requires_leader<T>(req: &Request<T>) -> bool {
    req.metadata()
        .get("hasleader")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "true")
}

impl WatchService {
    /// Opens a watch stream: its requests are handed to the hub as they arrive, its responses
    /// come from the stream's queue.
    fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<WatchResponseStream>, Status> {
        let require_leader = requires_leader(&req);
        if require_leader && !self.hub.has_leader() {
            return Err(ServerError::NoLeader.into());
        }
        let connection = req
            .extensions()
            .get::<crate::serve::ConnectionId>()
            .map(|c| c.0);
        let mut requests = req.into_inner();
        let (stream, responses) = self.hub.open_stream_on(require_leader, connection);
        let hub = self.hub.clone();
        tokio::spawn(async move {
            // Like etcd, the client closing its send side ends nothing: responses keep flowing
            // until the client goes away.
            // A client that sends requests but takes no answer stops being read once its
            // stream has CONTROL_QUEUE answers pending (flow control then stops its sends).
            while let Ok(Some(r)) = requests.message().await {
                match r.request_union {
                    Some(RequestUnion::CreateRequest(c)) => hub.create(&stream, &c),
                    Some(RequestUnion::CancelRequest(c)) => hub.cancel(&stream, c.watch_id),
                    Some(RequestUnion::ProgressRequest(_)) => hub.request_progress(&stream),
                    None => {}
                }
                stream.control_room().await;
            }
        });
        Ok(Response::new(responses))
    }
}

/// The `etcdserverpb.Watch` gRPC service, written here rather than generated so that its
/// responses go out through [`WatchCodec`]: events encoded once and shared by every watcher
/// that gets them (`watch/wire.rs`). Requests are decoded as the generated service would.
#[derive(Clone)]
pub struct WatchServer {
    service: Arc<WatchService>,
    max_decoding_message_size: usize,
}

impl WatchServer {
    pub fn new(service: WatchService, max_decoding_message_size: usize) -> WatchServer {
        WatchServer {
            service: Arc::new(service),
            max_decoding_message_size,
        }
    }
}

impl NamedService for WatchServer {
    const NAME: &'static str = "etcdserverpb.Watch";
}

/// The one method, as tonic's streaming handler wants it.
struct WatchMethod(Arc<WatchService>);

impl StreamingService<WatchRequest> for WatchMethod {
    type Response = WatchFrame;
    type ResponseStream = WatchResponseStream;
    type Future = BoxFuture<Response<WatchResponseStream>, Status>;

    fn call(&mut self, req: Request<Streaming<WatchRequest>>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.watch(req) })
    }
}

impl<B> Service<http::Request<B>> for WatchServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            if req.uri().path() != "/etcdserverpb.Watch/Watch" {
                return Ok(Status::unimplemented("").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(WatchCodec).apply_max_message_size_config(
                Some(me.max_decoding_message_size),
                Some(usize::MAX),
            );
            Ok(grpc.streaming(WatchMethod(me.service), req).await)
        })
    }
}
