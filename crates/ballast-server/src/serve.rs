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
//!
//! The socket is handed to hyper as [`Unvectored`], which tells it not to use vectored writes.
//! With vectored writes, HTTP/2 keeps every DATA payload over 256 bytes as a buffer of its own
//! and writes the connection's buffer out before it takes the next frame, so each watch
//! response of a few hundred bytes became its own `writev`. Without them payloads up to 1 KiB
//! are copied into the connection's 16 KiB write buffer, and the responses queued on the
//! connection's streams leave in one write. [`WritesLast`] makes sure they are queued: it lets
//! the streams woken together run before their connection writes. Together they cut the write
//! calls of 100,000 small reads over 16 connections from about 195,000 to about 45,000.
//!
//! A client that pings more often than `--grpc-keepalive-min-time` is sent GOAWAY
//! `ENHANCE_YOUR_CALM` "too_many_pings" and its connection is closed, as grpc-go's keepalive
//! enforcement policy does for etcd. The policy lives in our copy of h2 (third_party/h2,
//! BALLAST-PATCH.md), where PINGs are received; hyper creates h2's builder itself and has no
//! setting for it, so each connection's future is polled inside
//! `h2::server::with_client_ping_min_time`, which gives the builder hyper creates there its
//! default.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tonic::codegen::{http, Service};
use tonic::service::Routes;

/// Which client connection a request came on (a request extension; unique per process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionId(pub u64);

static NEXT_CONNECTION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Bytes a stream may have queued beyond what flow control let it send.
pub const STREAM_SEND_BUFFER: usize = 64 * 1024;

/// How the client port treats its connections: etcd's `--max-concurrent-streams`,
/// `--grpc-keepalive-min-time`, `--grpc-keepalive-interval` and `--grpc-keepalive-timeout`,
/// and Ballast's own `--client-handshake-timeout`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Streams a client may have open at once on one connection (HTTP/2
    /// SETTINGS_MAX_CONCURRENT_STREAMS); `u32::MAX` (etcd's default) means no limit. A client
    /// that honours the setting queues its further streams; one that does not gets them
    /// refused (RST_STREAM REFUSED_STREAM), as from grpc-go.
    pub max_concurrent_streams: u32,
    /// A client may ping this often while it has a stream open (grpc-go's rule, in
    /// third_party/h2/src/proto/ping_policy.rs); more often, and it is sent GOAWAY
    /// `too_many_pings`.
    pub keepalive_min_time: Duration,
    /// The server pings a connection idle this long (zero: never).
    pub keepalive_interval: Duration,
    /// ... and closes it if the ping is not answered within this.
    pub keepalive_timeout: Duration,
    /// A connection that has not sent the start of a request (the HTTP/2 preface and the
    /// header of the SETTINGS frame after it, or the first bytes of an HTTP/1 request) this
    /// long after it was accepted is closed.
    pub handshake_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_concurrent_streams: crate::config::DEFAULT_MAX_CONCURRENT_STREAMS,
            keepalive_min_time: crate::config::DEFAULT_GRPC_KEEPALIVE_MIN_TIME,
            keepalive_interval: crate::config::DEFAULT_GRPC_KEEPALIVE_INTERVAL,
            keepalive_timeout: crate::config::DEFAULT_GRPC_KEEPALIVE_TIMEOUT,
            handshake_timeout: crate::config::DEFAULT_CLIENT_HANDSHAKE_TIMEOUT,
        }
    }
}

/// The HTTP/2 client preface; the first bytes a gRPC client sends.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The preface and the header of the SETTINGS frame every HTTP/2 client sends after it.
const HANDSHAKE: usize = PREFACE.len() + 9;

/// Waits until `tcp` has sent the whole HTTP/2 preface and the header of its first frame
/// (the client's SETTINGS), or bytes that are not a preface (HTTP/1: hyper's own header read
/// timeout takes over), without consuming anything. False if the peer closed or did not get
/// that far within `limit`.
async fn first_bytes(tcp: &tokio::net::TcpStream, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; HANDSHAKE];
    let mut seen = 0;
    loop {
        let n = match tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => return false,
        };
        if n == 0 {
            return false;
        }
        let m = n.min(PREFACE.len());
        if n == HANDSHAKE || buf[..m] != PREFACE[..m] {
            return true;
        }
        if n == seen {
            // peek returns at once while the bytes already there stay unread: wait a little
            // for more instead of spinning.
            if tokio::time::timeout_at(deadline, tokio::time::sleep(Duration::from_millis(5)))
                .await
                .is_err()
            {
                return false;
            }
        }
        seen = n;
    }
}

/// Raises the soft limit on open files to the hard limit, once (each client connection is a
/// descriptor; Go, and so etcd, does the same at start).
fn raise_open_files_limit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit on a valid rlimit struct of our own.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= lim.rlim_max {
                return;
            }
            let soft = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                tracing::info!(
                    from = soft,
                    to = lim.rlim_max,
                    "raised the open files limit"
                );
            }
        }
    });
}

/// Accepts connections on `listener` and serves `routes` on them until `stop` turns true; then
/// stops accepting and lets open connections finish their requests for at most `drain`, as
/// etcd does (its request timeout). Watch, keep-alive and other long-lived streams never
/// finish on their own: the connections still open then are closed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    routes: Routes,
    mut stop: tokio::sync::watch::Receiver<bool>,
    drain: Duration,
    opts: ServeOptions,
) {
    raise_open_files_limit();
    let mut builder = Builder::new(TokioExecutor::new());
    let max_streams =
        (opts.max_concurrent_streams != u32::MAX).then_some(opts.max_concurrent_streams);
    let interval = (!opts.keepalive_interval.is_zero()).then_some(opts.keepalive_interval);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(max_streams)
        .keep_alive_interval(interval)
        .keep_alive_timeout(opts.keepalive_timeout)
        .max_send_buf_size(STREAM_SEND_BUFFER);
    // hyper enforces its HTTP/1 header read timeout only with a timer.
    builder.http1().timer(TokioTimer::new());
    let builder = std::sync::Arc::new(builder);
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
                let conn_id = ConnectionId(
                    NEXT_CONNECTION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                );
                let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let mut routes = routes.clone();
                    let mut req = req.map(tonic::body::Body::new);
                    req.extensions_mut().insert(conn_id);
                    // An axum router is always ready.
                    routes.call(req)
                });
                let builder = builder.clone();
                let graceful_watcher = graceful.watcher();
                let handshake = opts.handshake_timeout;
                let ping_min_time = Some(opts.keepalive_min_time);
                connections.spawn(async move {
                    // Nothing of hyper's (buffers, HTTP/2 state) exists for a connection until
                    // it has said something; one that says nothing is closed.
                    if !first_bytes(&tcp, handshake).await {
                        tracing::debug!("closing a client connection that sent no request");
                        return;
                    }
                    let conn = builder
                        .serve_connection(TokioIo::new(Unvectored(tcp)), svc)
                        .into_owned();
                    let mut conn = Box::pin(graceful_watcher.watch(conn));
                    // hyper-util creates the connection's h2 builder in this poll, once it
                    // has read the preface (tested by hostile.rs
                    // `client_pings_are_held_to_grpc_keepalive_min_time`).
                    let conn = std::future::poll_fn(move |cx| {
                        h2::server::with_client_ping_min_time(ping_min_time, || {
                            std::future::Future::poll(conn.as_mut(), cx)
                        })
                    });
                    if let Err(e) = (WritesLast { conn: Box::pin(conn), deferred: false }).await {
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

/// A socket that reports it has no vectored writes (see the module's documentation); reads and
/// writes go straight to the socket.
struct Unvectored(tokio::net::TcpStream);

impl tokio::io::AsyncRead for Unvectored {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Unvectored {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// A connection's future that, each time it is woken, first lets the tasks already queued on
/// its worker run: then the streams woken together (a revision's watch responses, the answers
/// to a batch of writes) have all handed their frames to HTTP/2 before the connection writes,
/// and the frames leave in one write. Polled straight away, the connection would write after
/// the first stream, since a task woken by the running one runs next.
struct WritesLast<F> {
    conn: Pin<Box<F>>,
    deferred: bool,
}

impl<F: std::future::Future> std::future::Future for WritesLast<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if !self.deferred {
            // Waking itself while running puts the task at the back of the worker's queue.
            self.deferred = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.deferred = false;
        self.conn.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Sends `GET /conn` on `tcp` and returns the body: the connection id the handler saw.
    async fn ask(tcp: &mut tokio::net::TcpStream) -> u64 {
        tcp.write_all(b"GET /conn HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "connection closed: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .expect("content-length");
                if body.len() >= len {
                    return body[..len].parse().unwrap();
                }
            }
        }
    }

    #[tokio::test]
    async fn every_request_carries_the_id_of_its_connection() {
        let router = axum::Router::new().route(
            "/conn",
            axum::routing::get(
                |c: axum::Extension<ConnectionId>| async move { c.0 .0.to_string() },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(serve(
            listener,
            Routes::from(router),
            stop_rx,
            Duration::from_secs(1),
            ServeOptions::default(),
        ));
        let mut one = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut two = tokio::net::TcpStream::connect(addr).await.unwrap();
        let a = ask(&mut one).await;
        let b = ask(&mut two).await;
        assert_eq!(ask(&mut one).await, a, "the same connection, the same id");
        assert_eq!(ask(&mut two).await, b);
        assert_ne!(a, b, "two connections, two ids");
        drop((one, two));
        stop_tx.send(true).unwrap();
        server.await.unwrap();
    }
}
