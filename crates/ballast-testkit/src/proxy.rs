//! An in-process TCP proxy in front of one cluster member's peer listener, with network faults.
//!
//! With [`crate::ClusterOptions::peer_proxy`], member *i* listens for peers on its real peer port and
//! advertises its proxy's address instead (`--initial-advertise-peer-urls` and its `--initial-cluster`
//! entry), so every connection another member **dials to** member *i* goes through *i*'s proxy.
//! Which raft traffic that is depends on who dials whom:
//! - etcd 3.4 (rafthttp): a member reads its peer's messages from a stream it opened to that peer, so
//!   *i*'s proxy carries everything *i* sends on streams, plus the pipeline and snapshot requests others
//!   post to *i*;
//! - Ballast (`docs/cluster.md`, "Peer connections"): a sender streams to the receiver, so *i*'s proxy
//!   carries everything the others send to *i*.
//!
//! Connections *i* dials go through the other members' proxies. A blackholed leader proxy is enough
//! for the followers of an etcd cluster to stop hearing their leader and elect another.
//!
//! Faults, deterministic (no randomness; the only timer is the delay):
//! - [`PeerProxy::blackhole`]: connections stay open and are still accepted, bytes are read and
//!   discarded in both directions, nothing is forwarded (a connection accepted while blackholed does
//!   not even dial the member);
//! - [`PeerProxy::delay`]: every chunk read from then on is written out that much later, in order;
//! - [`PeerProxy::cut`]: every open connection is closed, new ones are accepted and closed at once;
//! - [`PeerProxy::heal`]: forwarding resumes with no delay. After a blackhole or a cut, every connection
//!   opened before the heal is closed (a blackholed stream has lost bytes, so it cannot resume); the
//!   members reconnect through a clean proxy.
//!
//! The proxy runs on a tokio runtime the caller owns ([`crate::Cluster`]'s). It binds and dials only
//! loopback addresses. Dropping it closes its listener and every connection.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// Bytes read at a time.
const CHUNK: usize = 64 * 1024;
/// Chunks in flight per direction of a connection (waiting out a delay); a full queue stops reading.
const QUEUE: usize = 256;

/// What a proxy does with the bytes it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward both ways (after the configured delay).
    Forward,
    /// Read and discard both ways.
    Blackhole,
    /// Close every connection, accept and close new ones.
    Cut,
}

#[derive(Debug, Clone, Copy)]
struct Faults {
    mode: ProxyMode,
    delay: Duration,
    /// Bumped by a heal that ends a blackhole or a cut: connections of an older epoch close.
    epoch: u64,
}

/// What one proxy has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted (including those closed at once while cut).
    pub accepted: u64,
    /// Connections open now.
    pub open: u64,
    /// Bytes written out (both directions).
    pub forwarded: u64,
    /// Bytes read and thrown away (both directions).
    pub discarded: u64,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    open: AtomicU64,
    forwarded: AtomicU64,
    discarded: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// A TCP proxy on `HOST:PORT` that forwards to a member's real peer listener, with faults. See the
/// module docs for what it carries and how the faults behave.
pub struct PeerProxy {
    addr: SocketAddr,
    target: SocketAddr,
    faults: watch::Sender<Faults>,
    counters: Arc<Counters>,
    accept: AbortHandle,
}

impl PeerProxy {
    /// Listen on a free port of `host` and forward every connection to `target`, on `runtime`.
    pub fn start(
        runtime: &Handle,
        host: Ipv4Addr,
        target: SocketAddr,
    ) -> std::io::Result<PeerProxy> {
        // Port 0 is safe here (unlike for a child's flags): the listener is held from now on.
        let listener = std::net::TcpListener::bind((host, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (faults, rx) = watch::channel(Faults {
            mode: ProxyMode::Forward,
            delay: Duration::ZERO,
            epoch: 0,
        });
        let counters = Arc::new(Counters::default());
        let accept = runtime
            .spawn(accept_loop(listener, target, rx, counters.clone()))
            .abort_handle();
        Ok(PeerProxy {
            addr,
            target,
            faults,
            counters,
            accept,
        })
    }

    /// Where the proxy listens (what the member advertises).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://HOST:PORT` of [`PeerProxy::addr`].
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The member's real peer listener.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        self.faults.borrow().mode
    }

    /// Read and discard everything, both ways, on open and new connections.
    pub fn blackhole(&self) {
        self.faults.send_modify(|f| f.mode = ProxyMode::Blackhole);
    }

    /// Write every chunk read from now on `delay` after it was read (both ways).
    pub fn delay(&self, delay: Duration) {
        self.faults.send_modify(|f| f.delay = delay);
    }

    /// Close every open connection and close new ones as soon as they are accepted.
    pub fn cut(&self) {
        self.faults.send_modify(|f| f.mode = ProxyMode::Cut);
    }

    /// Forward again with no delay; after a blackhole or a cut, close every older connection.
    pub fn heal(&self) {
        self.faults.send_modify(|f| {
            if f.mode != ProxyMode::Forward {
                f.epoch += 1;
            }
            f.mode = ProxyMode::Forward;
            f.delay = Duration::ZERO;
        });
    }

    /// Counters so far.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.counters;
        ProxyStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            open: c.open.load(Ordering::Relaxed),
            forwarded: c.forwarded.load(Ordering::Relaxed),
            discarded: c.discarded.load(Ordering::Relaxed),
        }
    }
}

impl Drop for PeerProxy {
    fn drop(&mut self) {
        // The listener goes with the accept task; dropping `faults` closes every connection.
        self.accept.abort();
    }
}

impl std::fmt::Debug for PeerProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerProxy")
            .field("addr", &self.addr)
            .field("target", &self.target)
            .field("mode", &self.mode())
            .field("stats", &self.stats())
            .finish()
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    target: SocketAddr,
    faults: watch::Receiver<Faults>,
    counters: Arc<Counters>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ballast-testkit: peer proxy for {target} cannot listen: {e}");
            return;
        }
    };
    loop {
        match listener.accept().await {
            Ok((conn, _)) => {
                Counters::add(&counters.accepted, 1);
                tokio::spawn(serve(conn, target, faults.clone(), counters.clone()));
            }
            // Out of descriptors and the like: let the peers retry.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Counts a connection as open while alive.
struct OpenGuard(Arc<Counters>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One accepted connection, until it ends by itself or a fault closes it.
async fn serve(
    client: TcpStream,
    target: SocketAddr,
    mut faults: watch::Receiver<Faults>,
    counters: Arc<Counters>,
) {
    Counters::add(&counters.open, 1);
    let _open = OpenGuard(counters.clone());
    let at_accept = *faults.borrow_and_update();
    let mut closer = faults.clone();
    // Resolves when this connection must close (a cut, a heal after a fault, or the proxy dropped).
    let closed = closer.wait_for(|f| f.mode == ProxyMode::Cut || f.epoch != at_accept.epoch);
    tokio::pin!(closed);
    match at_accept.mode {
        ProxyMode::Cut => return,
        ProxyMode::Blackhole => {
            tokio::select! {
                _ = discard(client, &counters) => {}
                _ = &mut closed => {}
            }
            return;
        }
        ProxyMode::Forward => {}
    }
    let upstream = tokio::select! {
        conn = TcpStream::connect(target) => conn,
        _ = &mut closed => return,
    };
    let Ok(upstream) = upstream else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let both_ways = async {
        tokio::join!(
            pipe(client_read, upstream_write, faults.clone(), &counters),
            pipe(upstream_read, client_write, faults.clone(), &counters),
        )
    };
    tokio::select! {
        _ = both_ways => {}
        _ = &mut closed => {}
    }
}

/// Read `conn` until it ends, throwing everything away.
async fn discard(mut conn: TcpStream, counters: &Counters) {
    let mut buf = vec![0; CHUNK];
    while let Ok(n @ 1..) = conn.read(&mut buf).await {
        Counters::add(&counters.discarded, n);
    }
}

/// One direction of a connection: read chunks, queue them with their due time, write them when due
/// unless the proxy is not forwarding then. An end of input is passed on as a write shutdown.
async fn pipe(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    faults: watch::Receiver<Faults>,
    counters: &Counters,
) {
    let (queue, due) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE);
    let read = async {
        let mut buf = vec![0; CHUNK];
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            let f = *faults.borrow();
            if f.mode != ProxyMode::Forward {
                Counters::add(&counters.discarded, n);
                continue;
            }
            if queue
                .send((Instant::now() + f.delay, buf[..n].to_vec()))
                .await
                .is_err()
            {
                return;
            }
        }
        drop(queue);
    };
    let write = async {
        // Owned here, so that a write error closes the queue and ends `read` too.
        let mut due = due;
        while let Some((at, chunk)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if faults.borrow().mode != ProxyMode::Forward {
                Counters::add(&counters.discarded, chunk.len());
                continue;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
            Counters::add(&counters.forwarded, chunk.len());
        }
        let _ = to.shutdown().await;
    };
    // A failed write ends `write`, which drops `due`: the next chunk read ends `read`.
    tokio::join!(read, write);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;
    use tokio::time::timeout;

    /// An echo server on 127.0.0.1 and a proxy in front of it.
    async fn echo_and_proxy() -> PeerProxy {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = conn.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        PeerProxy::start(&Handle::current(), Ipv4Addr::LOCALHOST, target).unwrap()
    }

    /// Write `msg` and read back as many bytes, within `within`.
    async fn round_trip(
        conn: &mut TcpStream,
        msg: &[u8],
        within: Duration,
    ) -> std::io::Result<Vec<u8>> {
        conn.write_all(msg).await?;
        let mut back = vec![0; msg.len()];
        timeout(within, conn.read_exact(&mut back))
            .await
            .map_err(|_| std::io::Error::new(ErrorKind::TimedOut, "no answer"))??;
        Ok(back)
    }

    /// `msg` comes back through the proxy within 2 s.
    async fn echoes(conn: &mut TcpStream, msg: &[u8]) {
        let back = round_trip(conn, msg, Duration::from_secs(2)).await.unwrap();
        assert_eq!(back, msg);
    }

    /// `msg` does not come back within 300 ms.
    async fn swallowed(conn: &mut TcpStream, msg: &[u8]) {
        let err = round_trip(conn, msg, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TimedOut);
    }

    /// A new connection through the proxy (it may be closed at once while the proxy is cut).
    async fn connect(proxy: &PeerProxy) -> TcpStream {
        TcpStream::connect(proxy.addr()).await.unwrap()
    }

    /// A proxy in front of an echo server, and a connection through it that was shown to work.
    async fn proxy_with_working_connection() -> (PeerProxy, TcpStream) {
        let proxy = echo_and_proxy().await;
        let mut conn = connect(&proxy).await;
        echoes(&mut conn, b"a").await;
        (proxy, conn)
    }

    /// True when the proxy closed `conn` (EOF or reset) within 2 s.
    async fn closed_by_proxy(conn: &mut TcpStream) -> bool {
        let mut buf = [0u8; 16];
        matches!(
            timeout(Duration::from_secs(2), conn.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn forwards_both_ways_and_passes_on_the_end() {
        let proxy = echo_and_proxy().await;
        let mut conn = connect(&proxy).await;
        echoes(&mut conn, b"hello").await;
        conn.shutdown().await.unwrap();
        // The echo server sees the end, finishes, and its end comes back through the proxy.
        assert!(closed_by_proxy(&mut conn).await);
        let s = proxy.stats();
        assert_eq!((s.accepted, s.forwarded, s.discarded), (1, 10, 0));
    }

    #[tokio::test]
    async fn delay_applies_to_each_direction() {
        let proxy = echo_and_proxy().await;
        let mut conn = connect(&proxy).await;
        proxy.delay(Duration::from_millis(150));
        let start = std::time::Instant::now();
        echoes(&mut conn, b"x").await;
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        // heal() drops the delay and keeps the connection (it lost nothing).
        proxy.heal();
        let start = std::time::Instant::now();
        echoes(&mut conn, b"y").await;
        assert!(start.elapsed() < Duration::from_millis(150));
    }

    #[tokio::test]
    async fn blackhole_discards_then_heal_closes_old_connections() {
        let (proxy, mut before) = proxy_with_working_connection().await;
        proxy.blackhole();
        swallowed(&mut before, b"lost").await;
        // New connections are accepted and swallowed too.
        let mut during = connect(&proxy).await;
        swallowed(&mut during, b"lost").await;
        assert_eq!(proxy.stats().discarded, 8);
        assert_eq!(proxy.mode(), ProxyMode::Blackhole);
        proxy.heal();
        assert!(closed_by_proxy(&mut before).await);
        assert!(closed_by_proxy(&mut during).await);
        echoes(&mut connect(&proxy).await, b"ok").await;
    }

    #[tokio::test]
    async fn cut_closes_and_refuses_until_healed() {
        let (proxy, mut before) = proxy_with_working_connection().await;
        proxy.cut();
        assert!(closed_by_proxy(&mut before).await);
        assert!(closed_by_proxy(&mut connect(&proxy).await).await);
        proxy.heal();
        let mut after = connect(&proxy).await;
        echoes(&mut after, b"ok").await;
        // Closed connections are no longer counted as open.
        drop(after);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(proxy.stats().open, 0);
    }
}
