//! `null-server`: an etcd KV endpoint that does nothing. Every unary KV call (Range, Put,
//! DeleteRange, Txn, Compact) is answered at once with an empty message, which decodes as
//! the default response. Benchmarking it measures this tool's own ceiling (requests/s and
//! CPU per request), so we know the generator is not the bottleneck of a real run.
//!
//! It is independent of the generated server traits: requests are decoded as the empty
//! message `()` (all fields skipped), so it keeps working whatever RPCs the proto grows.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::net::SocketAddr;

use tonic::codegen::{http, Body, BoxFuture, Context, Poll, Service, StdError};
use tonic::server::{NamedService, UnaryService};
use tonic_prost::ProstCodec;

/// Serves until the process is killed.
pub async fn serve(addr: SocketAddr) -> Result<(), String> {
    eprintln!("null-server: etcdserverpb.KV answering empty responses on {addr}");
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(NullKv)
        .serve(addr)
        .await
        .map_err(|e| {
            format!(
                "null-server on {addr}: {}",
                crate::endpoint::error_chain(&e)
            )
        })
}

#[derive(Clone, Copy, Debug, Default)]
pub struct NullKv;

impl NamedService for NullKv {
    const NAME: &'static str = "etcdserverpb.KV";
}

impl<B> Service<http::Request<B>> for NullKv
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<(), ()>::default());
            Ok(grpc.unary(EmptyReply, req).await)
        })
    }
}

struct EmptyReply;

impl UnaryService<()> for EmptyReply {
    type Response = ();
    type Future = Ready<Result<tonic::Response<()>, tonic::Status>>;

    fn call(&mut self, _request: tonic::Request<()>) -> Self::Future {
        ready(Ok(tonic::Response::new(())))
    }
}
