//! The sending end of the peer transport: raft messages from the raft thread to the other
//! members, over the `ballast.peer.Raft` service ([`super::peer_service`] receives them).
//!
//! Per peer there is one bounded queue and one tokio task that owns the peer's `Send` stream:
//! it connects on the first message (trying the peer's URLs in order), then puts whatever is
//! queued when the stream can take more into one batch. When the stream fails it reports the
//! peer unreachable (what the stream had taken is lost; raft retransmits) and reconnects with
//! an exponential backoff from 50 ms to 1 s; what is queued meanwhile goes when it is back. A `MsgSnapshot` does not go through the queue: it
//! starts a transfer of the current backend on its own connection ([`super::snapshot`]),
//! whose outcome is reported as a [`PeerEvent::SnapshotStatus`].
//!
//! Invariants:
//! - [`Transport::send`] never blocks the raft thread: a full queue drops the message and
//!   reports the peer unreachable once (until the peer's task takes messages again).
//! - Messages to one peer leave in the order raft sent them (one stream at a time per peer).
//! - At most one snapshot transfer per peer is in flight.
//! - Removing a peer (or dropping every [`Transport`] handle) ends its tasks and streams.
//!
//! Moves bytes only: it knows nothing of raft's logic, and nothing of members beyond an id
//! and its peer URLs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_proto::peer::{raft_client::RaftClient, PeerBatch, StreamHeader};
use parking_lot::RwLock;
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::snapshot::{self, SnapshotSource};

/// What the transport and the peer service tell the raft thread.
#[derive(Debug)]
pub enum PeerEvent {
    /// A message from a peer, to step into raft.
    Message(Message),
    /// A peer could not be reached (`RawNode::report_unreachable`).
    Unreachable(u64),
    /// The outcome of a snapshot sent to a peer (`RawNode::report_snapshot`).
    SnapshotStatus(u64, raft::SnapshotStatus),
}

/// How the transport talks to peers. [`TransportConfig::new`] gives etcd-like defaults.
#[derive(Clone)]
pub struct TransportConfig {
    /// This member's id, sent in every stream header.
    pub local_id: u64,
    pub cluster_id: u64,
    /// The backend to stream to a follower that needs a snapshot.
    pub snapshots: Arc<dyn SnapshotSource>,
    /// Messages queued per peer before [`Transport::send`] drops them.
    pub queue_capacity: usize,
    /// A batch stops taking queued messages once it holds this many bytes (a single larger
    /// message still goes, alone). Keep it well below the peer service's
    /// [`super::peer_service::PeerServiceConfig::max_message_bytes`].
    pub max_batch_bytes: usize,
    /// How long to wait for one URL's connection.
    pub dial_timeout: Duration,
    /// HTTP/2 pings on idle connections, and how long an unanswered one may stay so: a peer
    /// that vanished without closing its connections is noticed this way.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Reconnect delays: the first after a failure, doubled up to the last.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl TransportConfig {
    pub fn new(local_id: u64, cluster_id: u64, snapshots: Arc<dyn SnapshotSource>) -> Self {
        TransportConfig {
            local_id,
            cluster_id,
            snapshots,
            queue_capacity: 4096,
            max_batch_bytes: 4 * 1024 * 1024,
            dial_timeout: Duration::from_secs(2),
            keepalive_interval: Duration::from_secs(2),
            keepalive_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
        }
    }
}

/// Why a connection to a peer could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("peer has no URL")]
    NoUrls,
    #[error("unsupported peer URL {0:?}: only http:// and https:// are")]
    BadUrl(String),
    #[error("peer URL {0:?} is https:// but no peer TLS is configured")]
    NoTls(String),
    #[error("dial {url}: {reason}")]
    Dial { url: String, reason: String },
}

/// The raft thread's handle on the peer connections; cheap to clone.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    peers: RwLock<HashMap<u64, Peer>>,
}

/// What every peer task reads.
struct Shared {
    cfg: TransportConfig,
    events: flume::Sender<PeerEvent>,
    runtime: tokio::runtime::Handle,
}

/// One peer's end of its tasks. Dropping it stops them: the queue closes and the URL watch
/// (which the tasks also read as their stop signal) goes away.
struct Peer {
    queue: flume::Sender<Message>,
    /// Set when the full queue dropped a message (and reported it); cleared by the peer's
    /// task when it takes messages again.
    dropping: Arc<AtomicBool>,
    urls: watch::Sender<Vec<String>>,
    snapshot_in_flight: Arc<AtomicBool>,
    /// Set by the peer's task while its stream is up.
    active_since: Arc<parking_lot::Mutex<Option<Instant>>>,
}

impl Transport {
    /// A transport with no peers; tasks run on `runtime`.
    pub fn new(
        cfg: TransportConfig,
        events: flume::Sender<PeerEvent>,
        runtime: tokio::runtime::Handle,
    ) -> Transport {
        Transport {
            inner: Arc::new(Inner {
                shared: Arc::new(Shared {
                    cfg,
                    events,
                    runtime,
                }),
                peers: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// Adds peer `id` reachable at `urls` (tried in order), or changes the URLs of a known
    /// peer: its stream then reconnects to the new ones. This member's own id is ignored.
    pub fn set_peer(&self, id: u64, urls: Vec<String>) {
        if id == self.inner.shared.cfg.local_id {
            return;
        }
        let mut peers = self.inner.peers.write();
        if let Some(peer) = peers.get(&id) {
            peer.urls.send_if_modified(|old| {
                let changed = *old != urls;
                *old = urls;
                changed
            });
            return;
        }
        let shared = &self.inner.shared;
        let (queue, rx) = flume::bounded(shared.cfg.queue_capacity);
        let (urls, urls_rx) = watch::channel(urls);
        let dropping = Arc::new(AtomicBool::new(false));
        let active_since = Arc::new(parking_lot::Mutex::new(None));
        let task = PeerTask {
            id,
            shared: shared.clone(),
            queue: rx,
            dropping: dropping.clone(),
            urls: urls_rx,
            active: false,
            active_since: active_since.clone(),
            last_error: None,
        };
        shared.runtime.spawn(task.run());
        peers.insert(
            id,
            Peer {
                queue,
                dropping,
                urls,
                snapshot_in_flight: Arc::new(AtomicBool::new(false)),
                active_since,
            },
        );
    }

    /// Since when the stream to peer `id` has been up (None: down, or not yet known to be
    /// up); what etcd's `ActiveSince` tells its reconfiguration checks.
    pub fn active_since(&self, id: u64) -> Option<Instant> {
        *self.inner.peers.read().get(&id)?.active_since.lock()
    }

    /// Forgets peer `id`: its queue, stream and snapshot transfer end.
    pub fn remove_peer(&self, id: u64) {
        self.inner.peers.write().remove(&id);
    }

    /// Hands `msgs` to their peers' queues (by `msg.to`); never blocks. A message for an
    /// unknown peer is dropped.
    pub fn send(&self, msgs: Vec<Message>) {
        let peers = self.inner.peers.read();
        for msg in msgs {
            let to = msg.to;
            let is_snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
            match peers.get(&to) {
                Some(peer) if is_snapshot => self.start_snapshot(peer, msg),
                Some(peer) => peer.enqueue(msg, &self.inner.shared.events),
                None if is_snapshot => {
                    // raft waits for the outcome of every snapshot it sent.
                    tracing::warn!(to = %format_args!("{to:x}"), "snapshot for an unknown peer");
                    let _ = self
                        .inner
                        .shared
                        .events
                        .try_send(PeerEvent::SnapshotStatus(to, raft::SnapshotStatus::Failure));
                }
                None => {
                    tracing::debug!(to = %format_args!("{to:x}"), "message for an unknown peer dropped")
                }
            }
        }
    }

    fn start_snapshot(&self, peer: &Peer, msg: Message) {
        let shared = self.inner.shared.clone();
        let to = msg.to;
        if peer.snapshot_in_flight.swap(true, Ordering::AcqRel) {
            tracing::warn!(to = %format_args!("{to:x}"), "a snapshot is already being sent to this peer");
            let _ = shared
                .events
                .try_send(PeerEvent::SnapshotStatus(to, raft::SnapshotStatus::Failure));
            return;
        }
        let in_flight = peer.snapshot_in_flight.clone();
        let urls = peer.urls.subscribe();
        let runtime = shared.runtime.clone();
        runtime.spawn(async move {
            let list = urls.borrow().clone();
            let transfer = async {
                let client = client(&connect(&list, &shared.cfg).await?);
                let header = shared.header(to);
                let sent =
                    snapshot::send(client, header, &msg, shared.cfg.snapshots.clone()).await?;
                Ok::<u64, Box<dyn std::error::Error + Send + Sync>>(sent)
            };
            let outcome = tokio::select! {
                outcome = transfer => Some(outcome),
                () = stopped(urls) => None,
            };
            in_flight.store(false, Ordering::Release);
            let status = match outcome {
                // The peer was removed: nobody waits for the outcome.
                None => return,
                Some(Ok(size)) => {
                    tracing::info!(to = %format_args!("{to:x}"), size, "snapshot sent");
                    raft::SnapshotStatus::Finish
                }
                Some(Err(e)) => {
                    tracing::warn!(to = %format_args!("{to:x}"), error = %e, "snapshot not sent");
                    raft::SnapshotStatus::Failure
                }
            };
            let _ = shared
                .events
                .send_async(PeerEvent::SnapshotStatus(to, status))
                .await;
        });
    }
}

impl Peer {
    fn enqueue(&self, msg: Message, events: &flume::Sender<PeerEvent>) {
        match self.queue.try_send(msg) {
            Ok(()) => {}
            Err(flume::TrySendError::Full(msg)) => {
                if !self.dropping.swap(true, Ordering::AcqRel) {
                    tracing::warn!(to = %format_args!("{:x}", msg.to), "peer queue full: dropping messages");
                    let _ = events.try_send(PeerEvent::Unreachable(msg.to));
                }
            }
            // The task ended: the transport is being dropped.
            Err(flume::TrySendError::Disconnected(_)) => {}
        }
    }
}

impl Shared {
    fn header(&self, to: u64) -> StreamHeader {
        StreamHeader {
            cluster_id: self.cfg.cluster_id,
            from: self.cfg.local_id,
            to,
        }
    }

    fn report_unreachable(&self, id: u64) {
        let _ = self.events.try_send(PeerEvent::Unreachable(id));
    }
}

/// Resolves when the peer's [`Peer`] is dropped.
async fn stopped(mut urls: watch::Receiver<Vec<String>>) {
    while urls.changed().await.is_ok() {}
}

/// Connects to the first of `urls` that answers.
async fn connect(urls: &[String], cfg: &TransportConfig) -> Result<Channel, ConnectError> {
    let mut last = ConnectError::NoUrls;
    for url in urls {
        let attempt = match endpoint(url, cfg) {
            Ok(ep) => ep.connect().await.map_err(|e| ConnectError::Dial {
                url: url.clone(),
                reason: error_chain(&e),
            }),
            Err(e) => Err(e),
        };
        match attempt {
            Ok(channel) => return Ok(channel),
            Err(e) => {
                tracing::debug!(url = %url, error = %e, "peer URL not reachable");
                last = e;
            }
        }
    }
    Err(last)
}

fn endpoint(url: &str, cfg: &TransportConfig) -> Result<Endpoint, ConnectError> {
    match url.split_once("://").map(|(scheme, _)| scheme) {
        Some("http") => {}
        // TLS seam: the `ballast-tls` crate will give a rustls client config built from the
        // --peer-* TLS flags (TransportConfig gains it), and an https:// URL is then dialled
        // with `Endpoint::connect_with_connector` and a rustls connector checking the peer's
        // certificate; everything after the connection is the same.
        Some("https") => return Err(ConnectError::NoTls(url.to_string())),
        _ => return Err(ConnectError::BadUrl(url.to_string())),
    }
    let ep = Endpoint::from_shared(url.to_string())
        .map_err(|_| ConnectError::BadUrl(url.to_string()))?;
    Ok(ep
        .connect_timeout(cfg.dial_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(cfg.keepalive_interval)
        .keep_alive_timeout(cfg.keepalive_timeout)
        .keep_alive_while_idle(true))
}

fn client(channel: &Channel) -> RaftClient<Channel> {
    RaftClient::new(channel.clone()).max_encoding_message_size(usize::MAX)
}

/// How a peer's stream ended.
enum StreamEnd {
    /// The peer was removed or the transport dropped.
    Stopped,
    /// The peer's URLs changed: reconnect at once.
    UrlsChanged,
    Failed(String),
}

/// The task owning one peer's `Send` stream.
struct PeerTask {
    id: u64,
    shared: Arc<Shared>,
    queue: flume::Receiver<Message>,
    dropping: Arc<AtomicBool>,
    urls: watch::Receiver<Vec<String>>,
    /// Whether the stream is up and has been for a while (a peer that refuses the stream ends
    /// it at once), and the last failure logged: a peer that stays away, or keeps refusing
    /// us, is logged once rather than at every retry.
    active: bool,
    /// When the stream became active (shared with [`Transport::active_since`]).
    active_since: Arc<parking_lot::Mutex<Option<Instant>>>,
    last_error: Option<String>,
}

impl PeerTask {
    async fn run(mut self) {
        let mut backoff = self.shared.cfg.backoff_min;
        loop {
            // Connect on the first message: a quiet peer needs no stream.
            let first = tokio::select! {
                m = self.queue.recv_async() => match m {
                    Ok(m) => m,
                    Err(_) => return,
                },
                changed = self.urls.changed() => match changed {
                    Ok(()) => continue,
                    Err(_) => return,
                },
            };
            let error = match self.stream(first).await {
                StreamEnd::Stopped => return,
                StreamEnd::UrlsChanged => {
                    backoff = self.shared.cfg.backoff_min;
                    continue;
                }
                StreamEnd::Failed(e) => e,
            };
            self.shared.report_unreachable(self.id);
            let peer = format!("{:x}", self.id);
            if self.active {
                tracing::warn!(%peer, %error, "peer became inactive");
                // It was up: start the backoff over.
                backoff = self.shared.cfg.backoff_min;
            } else if self.last_error.as_ref() != Some(&error) {
                tracing::warn!(%peer, %error, "peer unreachable");
            } else {
                tracing::debug!(%peer, %error, "peer still unreachable");
            }
            self.active = false;
            *self.active_since.lock() = None;
            self.last_error = Some(error);
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                changed = self.urls.changed() => if changed.is_err() {
                    return;
                },
            }
            backoff = (backoff * 2).min(self.shared.cfg.backoff_max);
        }
    }

    /// Connects and streams until the stream fails or the peer changes; `first` goes first.
    async fn stream(&mut self, first: Message) -> StreamEnd {
        let urls = self.urls.borrow_and_update().clone();
        let channel = tokio::select! {
            c = connect(&urls, &self.shared.cfg) => match c {
                Ok(c) => c,
                Err(e) => return StreamEnd::Failed(e.to_string()),
            },
            changed = self.urls.changed() => return changed_end(changed),
        };
        let opened = Instant::now();
        let mut client = client(&channel);
        // One batch waits here while the stream sends the previous one; meanwhile the queue
        // fills up, and the next batch takes all of it.
        let (tx, rx) = mpsc::channel::<PeerBatch>(1);
        let call = client.send(ReceiverStream::new(rx));
        tokio::pin!(call);
        let mut header = Some(self.shared.header(self.id));
        let mut next = Some(first);
        loop {
            let msg = match next.take() {
                Some(m) => m,
                None => tokio::select! {
                    answer = &mut call => return call_end(answer),
                    m = self.queue.recv_async() => match m {
                        Ok(m) => m,
                        Err(_) => return StreamEnd::Stopped,
                    },
                    changed = self.urls.changed() => return changed_end(changed),
                },
            };
            let permit = tokio::select! {
                answer = &mut call => return call_end(answer),
                permit = tx.reserve() => match permit {
                    Ok(p) => p,
                    Err(_) => return StreamEnd::Failed("stream closed".into()),
                },
                changed = self.urls.changed() => return changed_end(changed),
            };
            let batch = self.batch(header.take(), msg);
            self.dropping.store(false, Ordering::Release);
            permit.send(batch);
            if !self.active && opened.elapsed() >= self.shared.cfg.backoff_max {
                tracing::info!(peer = %format_args!("{:x}", self.id), "peer became active");
                self.active = true;
                *self.active_since.lock() = Some(opened);
                self.last_error = None;
            }
        }
    }

    /// `first` and whatever else is queued, up to the batch size.
    fn batch(&self, header: Option<StreamHeader>, first: Message) -> PeerBatch {
        let mut batch = PeerBatch {
            header,
            messages: Vec::new(),
        };
        let mut bytes = 0;
        let mut msg = Some(first);
        while let Some(m) = msg.take() {
            match m.write_to_bytes() {
                Ok(b) => {
                    bytes += b.len();
                    batch.messages.push(b);
                }
                // Only a message missing a required field fails; raft's have none.
                Err(e) => tracing::error!(error = %e, "raft message does not encode"),
            }
            if bytes < self.shared.cfg.max_batch_bytes {
                msg = self.queue.try_recv().ok();
            }
        }
        batch
    }
}

fn changed_end(changed: Result<(), watch::error::RecvError>) -> StreamEnd {
    match changed {
        Ok(()) => StreamEnd::UrlsChanged,
        Err(_) => StreamEnd::Stopped,
    }
}

fn call_end<T>(answer: Result<T, tonic::Status>) -> StreamEnd {
    match answer {
        Ok(_) => StreamEnd::Failed("peer ended the stream".into()),
        Err(status) => StreamEnd::Failed(error_chain(&status)),
    }
}

/// An error and its sources: tonic's own say little ("transport error") without them.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Members for the transport's tests: a transport and (when serving) the peer service on a
/// real socket on 127.0.0.1, sharing one events channel as in a member.
#[cfg(test)]
pub(crate) mod test_support {
    use std::io;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use raft::prelude::{Message, MessageType};

    use super::{PeerEvent, Transport, TransportConfig};
    use crate::raft::peer_service::{peer_routes, PeerServiceConfig};
    use crate::raft::snapshot::SnapshotSource;

    pub const CLUSTER: u64 = 0xc1a5;
    /// Generous: these tests share a noisy machine; nothing asserts that anything is fast.
    pub const DEADLINE: Duration = Duration::from_secs(60);

    /// A source for members that never send a snapshot.
    pub struct NoSnapshots;

    impl SnapshotSource for NoSnapshots {
        fn open(&self) -> io::Result<(Box<dyn io::Read + Send>, u64)> {
            Err(io::Error::other("no snapshot in this test"))
        }
    }

    pub fn msg(from: u64, to: u64, kind: MessageType, index: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.from = from;
        m.to = to;
        m.index = index;
        m
    }

    pub fn snapshot_msg(from: u64, to: u64, index: u64) -> Message {
        let mut m = msg(from, to, MessageType::MsgSnapshot, 0);
        m.mut_snapshot().mut_metadata().index = index;
        m.mut_snapshot().mut_metadata().term = 3;
        m
    }

    pub struct TestMember {
        pub id: u64,
        pub transport: Transport,
        pub events: flume::Receiver<PeerEvent>,
        pub snap_dir: tempfile::TempDir,
        events_tx: flume::Sender<PeerEvent>,
        cluster_id: u64,
        server: Option<(
            tokio::task::JoinHandle<()>,
            tokio::sync::watch::Sender<bool>,
        )>,
        addr: Option<SocketAddr>,
    }

    impl TestMember {
        /// A member that does not serve yet; `tweak` adjusts its transport's config.
        pub fn new(
            id: u64,
            cluster_id: u64,
            source: Arc<dyn SnapshotSource>,
            tweak: impl FnOnce(&mut TransportConfig),
        ) -> TestMember {
            let (events_tx, events) = flume::bounded(100_000);
            let mut cfg = TransportConfig::new(id, cluster_id, source);
            tweak(&mut cfg);
            let transport =
                Transport::new(cfg, events_tx.clone(), tokio::runtime::Handle::current());
            TestMember {
                id,
                transport,
                events,
                snap_dir: tempfile::tempdir().unwrap(),
                events_tx,
                cluster_id,
                server: None,
                addr: None,
            }
        }

        /// A member serving on a free port, with default transport settings.
        pub async fn serving(id: u64) -> TestMember {
            let mut m = TestMember::new(id, CLUSTER, Arc::new(NoSnapshots), |_| {});
            m.serve(bind("127.0.0.1:0".parse().unwrap()).await);
            m
        }

        pub fn serve(&mut self, listener: tokio::net::TcpListener) {
            self.addr = Some(listener.local_addr().unwrap());
            let cfg = PeerServiceConfig::new(
                self.id,
                self.cluster_id,
                self.snap_dir.path().to_path_buf(),
            );
            let routes = peer_routes(cfg, self.events_tx.clone()).unwrap();
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let opts = crate::serve::ServeOptions {
                max_concurrent_streams: u32::MAX,
                keepalive_interval: Duration::from_secs(2),
                keepalive_timeout: Duration::from_secs(20),
                handshake_timeout: Duration::from_secs(20),
                ..crate::serve::ServeOptions::default()
            };
            let server = tokio::spawn(crate::serve::serve(
                listener,
                routes,
                stop_rx,
                Duration::from_secs(1),
                opts,
            ));
            self.server = Some((server, stop_tx));
        }

        /// Stops serving at once: the listener and every connection close.
        pub fn kill(&mut self) {
            if let Some((server, _)) = self.server.take() {
                server.abort();
            }
        }

        pub fn url(&self) -> String {
            format!("http://{}", self.addr.expect("member serves"))
        }

        /// Tells this member's transport where `other` is.
        pub fn knows(&self, other: &TestMember) {
            self.transport.set_peer(other.id, vec![other.url()]);
        }

        /// Fills the events channel (as a busy raft thread would leave it) with events no
        /// test waits for; how many.
        pub fn fill_events(&self) -> usize {
            let mut n = 0;
            while self.events_tx.try_send(PeerEvent::Unreachable(0)).is_ok() {
                n += 1;
            }
            n
        }

        /// The next event `pick` accepts (others are skipped); panics after [`DEADLINE`].
        pub async fn next_event<T>(&self, mut pick: impl FnMut(PeerEvent) -> Option<T>) -> T {
            let wait = async {
                loop {
                    let ev = self.events.recv_async().await.expect("events channel open");
                    if let Some(t) = pick(ev) {
                        return t;
                    }
                }
            };
            tokio::time::timeout(DEADLINE, wait)
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "member {:x}: no expected event within {DEADLINE:?}",
                        self.id
                    )
                })
        }
    }

    impl Drop for TestMember {
        fn drop(&mut self) {
            self.kill();
        }
    }

    /// Binds `addr` (a port just freed may take a moment to be free again).
    pub async fn bind(addr: SocketAddr) -> tokio::net::TcpListener {
        let mut tries = 0;
        loop {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_reuseaddr(true).unwrap();
            match socket.bind(addr).and_then(|()| socket.listen(1024)) {
                Ok(l) => return l,
                Err(e) if tries < 100 => {
                    tries += 1;
                    tracing::debug!(error = %e, "bind retry");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("bind {addr}: {e}"),
            }
        }
    }

    /// The message `ev` carries, if it is one.
    pub fn message(ev: PeerEvent) -> Option<Message> {
        match ev {
            PeerEvent::Message(m) => Some(m),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use raft::prelude::MessageType;

    use super::test_support::*;
    use super::*;

    /// Appends only: heartbeats sent to wake a reconnection may arrive too.
    fn append(ev: PeerEvent) -> Option<Message> {
        message(ev).filter(|m| m.get_msg_type() == MessageType::MsgAppend)
    }

    fn unreachable(id: u64) -> impl FnMut(PeerEvent) -> Option<()> {
        move |ev| matches!(ev, PeerEvent::Unreachable(p) if p == id).then_some(())
    }

    /// Sends `n` appends from `a` to `b` in calls of 100 and checks `b` gets them all in order.
    async fn deliver_in_order(a: &TestMember, b: &TestMember, n: u64) {
        for start in (1..=n).step_by(100) {
            let end = (start + 99).min(n);
            a.transport.send(
                (start..=end)
                    .map(|i| msg(a.id, b.id, MessageType::MsgAppend, i))
                    .collect(),
            );
        }
        for i in 1..=n {
            let m = b.next_event(append).await;
            assert_eq!(
                (m.from, m.to, m.index),
                (a.id, b.id, i),
                "message {i} of {n}"
            );
        }
    }

    /// Sends heartbeats from `a` until `b` gets one, as raft does while a peer is away.
    async fn until_reached(a: &TestMember, b: &TestMember) {
        let beat = async {
            loop {
                a.transport
                    .send(vec![msg(a.id, b.id, MessageType::MsgHeartbeat, 0)]);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            m = b.next_event(message) => assert_eq!((m.from, m.to), (a.id, b.id)),
            () = beat => unreachable!(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_flow_both_ways() {
        let a = TestMember::serving(1).await;
        let b = TestMember::serving(2).await;
        a.knows(&b);
        b.knows(&a);
        let (ab, ba) = tokio::join!(
            deliver_in_order(&a, &b, 3000),
            deliver_in_order(&b, &a, 3000)
        );
        let ((), ()) = (ab, ba);
        // The streams stay up: more goes through.
        deliver_in_order(&a, &b, 10).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn down_peer_is_unreachable_then_reconnects() {
        let a = TestMember::serving(1).await;
        let mut b = TestMember::new(2, CLUSTER, Arc::new(NoSnapshots), |_| {});
        // A port nobody listens on (for now).
        let addr = bind("127.0.0.1:0".parse().unwrap())
            .await
            .local_addr()
            .unwrap();
        a.transport.set_peer(2, vec![format!("http://{addr}")]);
        a.transport
            .send(vec![msg(1, 2, MessageType::MsgHeartbeat, 0)]);
        a.next_event(unreachable(2)).await;

        b.serve(bind(addr).await);
        // One gets through once the backoff lets it.
        until_reached(&a, &b).await;

        // Down again: reported again, and back again.
        b.kill();
        let beat = async {
            loop {
                a.transport
                    .send(vec![msg(1, 2, MessageType::MsgHeartbeat, 0)]);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            () = a.next_event(unreachable(2)) => {}
            () = beat => unreachable!(),
        }
        b.serve(bind(addr).await);
        until_reached(&a, &b).await;
        deliver_in_order(&a, &b, 10).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn urls_are_tried_in_order() {
        let a = TestMember::serving(1).await;
        let b = TestMember::serving(2).await;
        let dead = bind("127.0.0.1:0".parse().unwrap())
            .await
            .local_addr()
            .unwrap();
        a.transport
            .set_peer(2, vec![format!("http://{dead}"), b.url()]);
        deliver_in_order(&a, &b, 10).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changed_urls_reconnect() {
        let a = TestMember::serving(1).await;
        let mut b = TestMember::serving(2).await;
        a.knows(&b);
        deliver_in_order(&a, &b, 10).await;
        // b moves to another port; the old one goes dark.
        b.kill();
        b.serve(bind("127.0.0.1:0".parse().unwrap()).await);
        a.knows(&b);
        until_reached(&a, &b).await;
        deliver_in_order(&a, &b, 10).await;
    }

    #[test]
    fn full_queue_drops_and_reports_once() {
        let (queue, taken) = flume::bounded(4);
        let (events_tx, events) = flume::unbounded();
        let (urls, _) = watch::channel(vec![]);
        let peer = Peer {
            queue,
            dropping: Arc::new(AtomicBool::new(false)),
            urls,
            snapshot_in_flight: Arc::new(AtomicBool::new(false)),
            active_since: Arc::default(),
        };
        for i in 0..100 {
            peer.enqueue(msg(1, 2, MessageType::MsgAppend, i), &events_tx);
        }
        assert_eq!(taken.len(), 4, "the first messages stay queued");
        let reported: Vec<_> = events.drain().collect();
        assert!(
            matches!(reported[..], [PeerEvent::Unreachable(2)]),
            "{reported:?}"
        );
        // The peer's task took messages again: the next overflow is reported again.
        let _ = taken.try_recv();
        peer.dropping.store(false, Ordering::Release);
        for i in 0..10 {
            peer.enqueue(msg(1, 2, MessageType::MsgAppend, i), &events_tx);
        }
        assert_eq!(events.drain().count(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn send_never_blocks_on_a_stuck_peer() {
        let a = TestMember::new(1, CLUSTER, Arc::new(NoSnapshots), |c| c.queue_capacity = 64);
        // Accepts connections (the kernel does) but never reads them.
        let stuck = bind("127.0.0.1:0".parse().unwrap()).await;
        a.transport
            .set_peer(2, vec![format!("http://{}", stuck.local_addr().unwrap())]);
        let big = vec![0u8; 1024];
        for round in 0..50u64 {
            let msgs = (0..1000)
                .map(|i| {
                    let mut m = msg(1, 2, MessageType::MsgAppend, round * 1000 + i);
                    m.mut_entries().push(raft::prelude::Entry {
                        data: big.clone().into(),
                        ..Default::default()
                    });
                    m
                })
                .collect();
            a.transport.send(msgs);
        }
        a.next_event(unreachable(2)).await;
        drop(stuck);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_cluster_is_refused() {
        let a = TestMember::new(1, CLUSTER + 1, Arc::new(NoSnapshots), |_| {});
        let b = TestMember::serving(2).await;
        a.transport.set_peer(2, vec![b.url()]);
        a.transport
            .send(vec![msg(1, 2, MessageType::MsgHeartbeat, 0)]);
        a.next_event(unreachable(2)).await;
        assert!(
            b.events.is_empty(),
            "nothing from another cluster reaches raft"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn removed_peer_stops_and_unknown_peer_is_dropped() {
        let a = TestMember::serving(1).await;
        let b = TestMember::serving(2).await;
        a.knows(&b);
        deliver_in_order(&a, &b, 10).await;
        a.transport.remove_peer(2);
        a.transport
            .send(vec![msg(1, 2, MessageType::MsgHeartbeat, 0)]);
        // A snapshot to an unknown peer is answered, so raft does not wait for it forever.
        a.transport.send(vec![snapshot_msg(1, 2, 7)]);
        let status = a
            .next_event(|ev| match ev {
                PeerEvent::SnapshotStatus(2, s) => Some(s),
                _ => None,
            })
            .await;
        assert_eq!(status, raft::SnapshotStatus::Failure);
        assert!(b.events.is_empty());
    }
}
