//! The client port's connection handling: HTTP/2 (gRPC) and HTTP/1 (JSON, health, metrics) on
//! one listener, served by hyper with the same settings tonic's own server uses, plus one that
//! tonic does not expose: the per-stream send buffer.
//!
//! That buffer is how much a stream may queue in the server beyond what the client's flow
//! control lets it send. hyper's default is 400 KiB per stream. A watch stream whose client
//! stops reading keeps its buffer full until it is cancelled, and every response put there
//! is CPU spent for nobody: with 100 such streams that was as much work as delivering events
//! to 900 healthy watchers. [`STREAM_SEND_BUFFER`] bounds it; a response larger than the
//! buffer still goes out whole, in pieces as the window opens.

use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tonic::codegen::{http, Service};
use tonic::service::Routes;

/// Bytes a stream may have queued beyond what flow control let it send.
pub const STREAM_SEND_BUFFER: usize = 64 * 1024;

/// HTTP/2 keep-alive pings: etcd's default server interval (2 h), and tonic's timeout.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(7200);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Accepts connections on `listener` and serves `routes` on them until `stop` turns true; then
/// stops accepting and lets open connections finish their requests for at most `drain`, as
/// etcd does (its request timeout). Watch, keep-alive and other long-lived streams never
/// finish on their own: the connections still open then are closed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    routes: Routes,
    mut stop: tokio::sync::watch::Receiver<bool>,
    drain: Duration,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(None)
        .keep_alive_interval(Some(KEEPALIVE_INTERVAL))
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .max_send_buf_size(STREAM_SEND_BUFFER);
    // hyper enforces its HTTP/1 header read timeout only with a timer.
    builder.http1().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = async { drop(stop.wait_for(|s| *s).await) } => break,
            accepted = listener.accept() => {
                let tcp = match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accepting a client connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Nagle would hold back the tail of a response for the peer's delayed ACK.
                let _ = tcp.set_nodelay(true);
                let routes = routes.clone();
                let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let mut routes = routes.clone();
                    // An axum router is always ready.
                    routes.call(req.map(tonic::body::Body::new))
                });
                let conn = builder.serve_connection(TokioIo::new(tcp), svc).into_owned();
                let conn = graceful.watch(conn);
                connections.spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "client connection ended with an error");
                    }
                });
                // Forget the connections that ended.
                while connections.try_join_next().is_some() {}
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!(
            waited_ms = drain.as_millis() as u64,
            connections = connections.len(),
            "closing client connections that still have open streams"
        );
    }
    connections.shutdown().await;
}
