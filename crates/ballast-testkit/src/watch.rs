//! Watch streams for tests: raw `Watch` bidi streams over the `ballast-proto` stubs.
//!
//! [`WatchStream`] opens one gRPC `Watch` stream and reads its responses in a background task as
//! fast as they come, stamping each with its arrival time, so a test can send creates, cancels and
//! progress requests at any moment and inspect what arrived in order. [`SilentStream`] opens a stream,
//! sends its requests and never reads a response: HTTP/2 flow control then fills up and the server
//! sees a consumer that stopped reading (the slow-consumer case).
//!
//! Every stream gets its own HTTP/2 connection unless the caller passes a shared [`WatchClient`]: an
//! unread stream holds on to the connection-level flow-control window in the client, so silent
//! streams must never share a connection with streams that are expected to make progress.
//!
//! This module only drives clients; it never starts processes and talks to 127.0.0.1 only.

use std::future::Future;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use ballast_proto::etcdserverpb::watch_client::WatchClient;
use ballast_proto::etcdserverpb::watch_create_request::FilterType;
use ballast_proto::etcdserverpb::watch_request::RequestUnion;
use ballast_proto::etcdserverpb::{
    WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// Flow-control windows of a watch connection (`None` = the client library's defaults).
#[derive(Debug, Clone, Copy, Default)]
pub struct Windows {
    /// HTTP/2 initial stream window, bytes.
    pub stream: Option<u32>,
    /// HTTP/2 initial connection window, bytes.
    pub connection: Option<u32>,
}

impl Windows {
    /// The smallest stream window HTTP/2 allows by default (64 KiB - 1): a stream that is not read
    /// stalls the server's sends after that much unread data.
    ///
    /// The connection window stays large on purpose: the client's HTTP/2 library tears the
    /// connection down (GOAWAY `too_many_data_frames`) when it holds more unread small DATA frames
    /// than a budget of half the connection window allows, and servers that send one frame per
    /// watch response (etcd) would trip it long before the stream window is full.
    pub fn small() -> Windows {
        Windows {
            stream: Some(65_535),
            connection: Some(16 << 20),
        }
    }
}

/// A fresh HTTP/2 connection to `url` for watch streams (no per-request timeout: watch streams live
/// as long as the test wants).
pub async fn watch_channel(url: &str, windows: Windows) -> Channel {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .unwrap_or_else(|e| panic!("bad endpoint {url}: {e}"))
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if let Some(w) = windows.stream {
        endpoint = endpoint.initial_stream_window_size(w);
    }
    if let Some(w) = windows.connection {
        endpoint = endpoint.initial_connection_window_size(w);
    }
    endpoint
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

/// A `Watch` client on a fresh connection to `url`, with message size limits lifted.
pub async fn watch_client(url: &str) -> WatchClient<Channel> {
    watch_client_on(watch_channel(url, Windows::default()).await)
}

/// A `Watch` client on `channel`, with message size limits lifted.
pub fn watch_client_on(channel: Channel) -> WatchClient<Channel> {
    WatchClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

/// A create request for `[key, range_end)` (see [`WatchCreateRequest`] for the conventions:
/// empty `range_end` = the single key, `"\0"` = every key `>= key`).
pub fn create_request(key: impl AsRef<[u8]>, range_end: impl AsRef<[u8]>) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.as_ref().to_vec(),
        range_end: range_end.as_ref().to_vec(),
        ..Default::default()
    }
}

/// `WatchRequest{create_request}`.
pub fn create(req: WatchCreateRequest) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(req)),
    }
}

/// `WatchRequest{cancel_request{watch_id}}`.
pub fn cancel(watch_id: i64) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CancelRequest(WatchCancelRequest { watch_id })),
    }
}

/// `WatchRequest{progress_request{}}`.
pub fn progress() -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
    }
}

/// `NOPUT` / `NODELETE` as the wire value.
pub fn filter(f: FilterType) -> i32 {
    f as i32
}

/// One thing that came out of a watch stream.
#[derive(Debug, Clone)]
pub enum Received {
    /// A response.
    Response(WatchResponse),
    /// The stream ended with an error status.
    Error(tonic::Status),
    /// The server closed the stream cleanly.
    End,
}

impl Received {
    /// What one read of a gRPC response stream gave.
    fn from_message(m: Result<Option<WatchResponse>, tonic::Status>) -> Received {
        match m {
            Ok(Some(resp)) => Received::Response(resp),
            Ok(None) => Received::End,
            Err(status) => Received::Error(status),
        }
    }

    /// Nothing comes after this item.
    fn ends_stream(&self) -> bool {
        !matches!(self, Received::Response(_))
    }
}

/// Opens a watch stream on `client` fed by `requests` and hands `on` every item with its arrival
/// time, in order, until `on` breaks or the stream ends (`on` sees the end or the error, including
/// a failure to open the stream).
async fn read_watch<Fut>(
    client: &mut WatchClient<Channel>,
    requests: mpsc::UnboundedReceiver<WatchRequest>,
    mut on: impl FnMut(Instant, Received) -> Fut,
) where
    Fut: Future<Output = ControlFlow<()>>,
{
    let mut stream = match client.watch(UnboundedReceiverStream::new(requests)).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            let _ = on(Instant::now(), Received::Error(status)).await;
            return;
        }
    };
    loop {
        let item = Received::from_message(stream.message().await);
        let last = item.ends_stream();
        if on(Instant::now(), item).await.is_break() || last {
            return;
        }
    }
}

/// Responses a [`WatchStream`] buffers by default: effectively unbounded.
const DEFAULT_BUFFER: usize = 1 << 20;

/// A watch stream whose responses are read continuously by a background task.
pub struct WatchStream {
    tx: mpsc::UnboundedSender<WatchRequest>,
    rx: mpsc::Receiver<(Instant, Received)>,
    task: JoinHandle<()>,
    closed: bool,
}

impl WatchStream {
    /// Open a stream on `client` (cloned; pass a client per connection you want).
    ///
    /// Does not wait for the server: gRPC servers send the response headers with the first
    /// response, so opening must not block on them.
    pub fn open(client: &WatchClient<Channel>) -> WatchStream {
        WatchStream::open_buffered(client, DEFAULT_BUFFER)
    }

    /// Like [`WatchStream::open`], but the background task stops reading from gRPC while `buffer`
    /// responses are waiting for the test: a test that consumes slowly then pushes back on the
    /// server through HTTP/2 flow control (a slow consumer, as opposed to one that never reads).
    pub fn open_buffered(client: &WatchClient<Channel>, buffer: usize) -> WatchStream {
        let (tx, req_rx) = mpsc::unbounded_channel::<WatchRequest>();
        let (resp_tx, rx) = mpsc::channel(buffer.max(1));
        let mut client = client.clone();
        let task = tokio::spawn(async move {
            let resp_tx = &resp_tx;
            read_watch(&mut client, req_rx, |at, item| async move {
                match resp_tx.send((at, item)).await {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(_) => ControlFlow::Break(()),
                }
            })
            .await;
        });
        WatchStream {
            tx,
            rx,
            task,
            closed: false,
        }
    }

    /// Open a stream on a fresh connection to `url`.
    pub async fn connect(url: &str) -> WatchStream {
        WatchStream::open(&watch_client(url).await)
    }

    /// Send any request (panics if the stream's request side is gone).
    pub fn send(&self, req: WatchRequest) {
        self.tx
            .send(req)
            .unwrap_or_else(|_| panic!("watch stream is closed"));
    }

    /// Send a create request.
    pub fn create(&self, req: WatchCreateRequest) {
        self.send(create(req));
    }

    /// Send a cancel request.
    pub fn cancel(&self, watch_id: i64) {
        self.send(cancel(watch_id));
    }

    /// Send a progress request.
    pub fn request_progress(&self) {
        self.send(progress());
    }

    /// The next item, waiting at most `timeout`; `None` on timeout or after the stream ended.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Option<(Instant, Received)> {
        if self.closed {
            return None;
        }
        match tokio::time::timeout(timeout, self.rx.recv()).await {
            Ok(Some(item)) => {
                if item.1.ends_stream() {
                    self.closed = true;
                }
                Some(item)
            }
            Ok(None) => {
                self.closed = true;
                None
            }
            Err(_) => None,
        }
    }

    /// The next item until `deadline`.
    pub async fn recv_until(&mut self, deadline: Instant) -> Option<(Instant, Received)> {
        self.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .await
    }

    /// The next item if one has already arrived.
    pub fn try_recv(&mut self) -> Option<(Instant, Received)> {
        if self.closed {
            return None;
        }
        let item = self.rx.try_recv().ok()?;
        if item.1.ends_stream() {
            self.closed = true;
        }
        Some(item)
    }

    /// Whether the stream has ended (error or clean end seen by [`WatchStream::recv_timeout`]).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Half-close the request side (the server may then end the stream).
    pub fn close_send(&mut self) {
        let (tx, _) = mpsc::unbounded_channel();
        self.tx = tx;
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A watch stream read in its own task by a handler called with each item as it arrives: no
/// channel or timer between gRPC and the handler. For tests where the client's own CPU matters
/// (it shares the machine with the server being measured); [`WatchStream`] is simpler otherwise.
pub struct ConsumedStream<S> {
    tx: mpsc::UnboundedSender<WatchRequest>,
    stop: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<S>,
}

impl<S: Send + 'static> ConsumedStream<S> {
    /// Open a stream on `client`; `handle(&mut state, arrival, item)` sees every item in order
    /// until it breaks, the stream ends (after the handler saw the end or error) or
    /// [`ConsumedStream::stop`] is called.
    pub fn open<F>(client: &WatchClient<Channel>, mut state: S, mut handle: F) -> Self
    where
        F: FnMut(&mut S, Instant, Received) -> ControlFlow<()> + Send + 'static,
    {
        let (tx, req_rx) = mpsc::unbounded_channel::<WatchRequest>();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let mut client = client.clone();
        let task = tokio::spawn(async move {
            tokio::select! {
                _ = read_watch(&mut client, req_rx, |at, item| {
                    std::future::ready(handle(&mut state, at, item))
                }) => {}
                _ = stopped.changed() => {}
            }
            state
        });
        ConsumedStream { tx, stop, task }
    }

    /// Send a create request.
    pub fn create(&self, req: WatchCreateRequest) {
        let _ = self.tx.send(create(req));
    }

    /// Stop reading and hand back the handler's state.
    pub async fn stop(self) -> S {
        let _ = self.stop.send(true);
        self.task.await.expect("watch consumer task panicked")
    }
}

/// A watch stream that sends requests and never reads a response after the first.
pub struct SilentStream {
    tx: mpsc::UnboundedSender<WatchRequest>,
    opened: Option<oneshot::Receiver<Result<(), tonic::Status>>>,
    _stop: oneshot::Sender<()>,
}

impl SilentStream {
    /// Open a stream on `client`. The response stream is held but never polled once the first
    /// response (which carries the headers) has arrived.
    pub fn open(client: &WatchClient<Channel>) -> SilentStream {
        let (tx, req_rx) = mpsc::unbounded_channel::<WatchRequest>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (opened_tx, opened_rx) = oneshot::channel();
        let mut client = client.clone();
        tokio::spawn(async move {
            let requests = UnboundedReceiverStream::new(req_rx);
            match client.watch(requests).await {
                Ok(held) => {
                    let _ = opened_tx.send(Ok(()));
                    // Never poll `held`: the server's sends stall once the windows are full.
                    let _ = stop_rx.await;
                    drop(held);
                }
                Err(status) => {
                    let _ = opened_tx.send(Err(status));
                }
            }
        });
        SilentStream {
            tx,
            opened: Some(opened_rx),
            _stop: stop_tx,
        }
    }

    /// Send a create request.
    pub fn create(&self, req: WatchCreateRequest) {
        let _ = self.tx.send(create(req));
    }

    /// Wait until the server has answered for the first time (the headers came with it).
    pub async fn wait_opened(&mut self, timeout: Duration) -> Result<(), String> {
        let Some(rx) = self.opened.take() else {
            return Ok(());
        };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(status))) => Err(format!("watch stream failed: {status}")),
            Ok(Err(_)) => Err("watch stream task ended".to_owned()),
            Err(_) => Err(format!("no response within {timeout:?}")),
        }
    }
}
