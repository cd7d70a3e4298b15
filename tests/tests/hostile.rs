//! Hostile clients: no client can exhaust the member (docs/limits.md).
//!
//! Each test runs against Ballast and asserts bounds (RSS of the server process, measured from
//! /proc/<pid>/status: VmHWM, or VmRSS sampled every 20 ms during a phase), then runs the same
//! client against etcd 3.4 and prints etcd's figures next to Ballast's (measured, not asserted).
//! Every figure is printed with `eprintln!` (`--nocapture` to see them):
//!
//! - `progress_requests_that_are_never_read`: a watch stream sends 100,000 progress requests and
//!   reads nothing. The server stops reading its requests once 16 answers are pending (HTTP/2
//!   flow control then stops the client), keeps serving others, and the answers it made before
//!   the client started reading are few.
//! - `idle_connections_that_never_send_the_preface`: 10,000 TCP connections that send nothing.
//! - `large_ranges_requested_at_once_while_puts_run`: a range of 256 × 1 MiB values (256 MiB;
//!   `BALLAST_HOSTILE_RANGE_MIB` changes it) fetched by 3 clients at once, twice, while a put
//!   loop on its own connection measures its latency.
//! - `ten_thousand_watchers_on_one_stream`.
//! - `max_concurrent_streams_queues_further_streams`, `unresponsive_connection_is_closed_by_keepalive`
//!   and `lease_lock_election_take_requests_up_to_max_request_bytes`: the flags behind the bounds.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_proto::etcdserverpb::kv_client::KvClient;
use ballast_proto::etcdserverpb::{PutRequest, RangeRequest, WatchRequest};
use ballast_proto::v3electionpb::election_client::ElectionClient;
use ballast_proto::v3electionpb::CampaignRequest;
use ballast_proto::v3lockpb::lock_client::LockClient;
use ballast_proto::v3lockpb::LockRequest;
use ballast_testkit::watch::{self, Windows};
use ballast_testkit::{Server, ServerKind, ServerOptions};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Channel, Endpoint};

// ---------------------------------------------------------------------------------------------
// Measuring.

/// (VmRSS, VmHWM) of `pid`, KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Samples a process's VmRSS every 20 ms until dropped or [`Sampler::stop`]ped; keeps the peak.
struct Sampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_kib(pid).0, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Sampler {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    /// Peak VmRSS seen, KiB.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------------------------
// Servers and clients.

fn start(kind: ServerKind, args: &[&str]) -> Server {
    Server::start_with(
        kind,
        ServerOptions {
            extra_args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
    )
}

fn pid(s: &Server) -> u32 {
    s.pid().expect("server is running")
}

async fn channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_owned())
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

async fn kv(url: &str) -> KvClient<Channel> {
    KvClient::new(channel(url).await)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

async fn put(c: &mut KvClient<Channel>, key: &str, value: Vec<u8>) -> i64 {
    c.put(PutRequest {
        key: key.as_bytes().to_vec(),
        value,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("put {key}: {e}"))
    .into_inner()
    .header
    .map_or(0, |h| h.revision)
}

/// How long a put and a get on a fresh connection take (another client being served).
async fn other_client_latency(url: &str) -> Duration {
    let t = Instant::now();
    let work = async {
        let mut c = kv(url).await;
        put(&mut c, "hostile/other", b"v".to_vec()).await;
        c.range(RangeRequest {
            key: b"hostile/other".to_vec(),
            ..Default::default()
        })
        .await
        .expect("get")
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .expect("another client was not served within 10 s");
    t.elapsed()
}

/// Runs `f` on a fresh multi-thread runtime of its own (2 workers).
fn run<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

// ---------------------------------------------------------------------------------------------
// 100,000 progress requests, never read.

const PROGRESS_REQUESTS: usize = 100_000;

struct ProgressFigures {
    /// Peak VmRSS while the requests were sent and held, KiB.
    peak_rss: u64,
    /// Put + get on another connection while the hostile stream held its requests.
    other: Duration,
    /// Progress answers made before the client started reading (their revision is the one
    /// before the other client's put).
    answered_before_read: usize,
    /// All answers, once the client read.
    answered: usize,
    /// Requests the client library had taken from the request stream before the read.
    pulled_before_read: usize,
}

async fn progress_flood(server: &Server) -> ProgressFigures {
    let url = server.client_url();
    let sampler = Sampler::start(pid(server));
    let mut c = kv(&url).await;
    let before = put(&mut c, "hostile/p", b"x".to_vec()).await;
    // The hostile client: small stream window (it reads nothing, so the server's sends stall
    // after 64 KiB), 100,000 progress requests as fast as flow control takes them.
    let client = watch::watch_client_on(watch::watch_channel(&url, Windows::small()).await);
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = pulled.clone();
    let requests = futures::stream::iter(0..PROGRESS_REQUESTS).map(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
        watch::progress()
    });
    let mut client2 = client.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        // etcd sends the response headers with the first answer; Ballast at once.
        let r = client2.watch(requests).await;
        let _ = tx.send(r);
    });
    let responses = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("the watch stream opened")
        .expect("task")
        .expect("watch")
        .into_inner();
    // Time for an unbounded server to have read (and answered into memory) every request.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let other = other_client_latency(&url).await;
    let pulled_before_read = pulled.load(Ordering::Relaxed);
    let peak_rss = sampler.stop();
    // Now read everything: answers made before the other client's put carry a revision below
    // it.
    let mut responses = responses;
    let (mut answered, mut answered_before_read) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(120);
    while answered < PROGRESS_REQUESTS && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(10), responses.message()).await {
            Ok(Ok(Some(r))) => {
                if r.created || r.canceled || !r.events.is_empty() {
                    continue;
                }
                answered += 1;
                if r.header.map_or(0, |h| h.revision) <= before {
                    answered_before_read += 1;
                }
            }
            _ => break,
        }
    }
    ProgressFigures {
        peak_rss,
        other,
        answered_before_read,
        answered,
        pulled_before_read,
    }
}


#[test]
fn progress_requests_that_are_never_read() {
    let mut ballast = start(ServerKind::Ballast, &[]);
    let b = run(progress_flood(&ballast));
    let (_, b_hwm) = rss_kib(pid(&ballast));
    ballast.stop();
    let mut etcd = start(ServerKind::Etcd, &[]);
    let e = run(progress_flood(&etcd));
    let (_, e_hwm) = rss_kib(pid(&etcd));
    etcd.stop();
    for (name, f, hwm) in [("ballast", &b, b_hwm), ("etcd 3.4", &e, e_hwm)] {
        eprintln!(
            "progress flood [{name}]: peak VmRSS {:.1} MiB (VmHWM {:.1} MiB); other client put+get {:.1} ms; \
             requests taken by the client library before it read {}; answers made before the read {}; answers in all {}",
            mib(f.peak_rss),
            mib(hwm),
            ms(f.other),
            f.pulled_before_read,
            f.answered_before_read,
            f.answered
        );
    }
    assert_eq!(b.answered, PROGRESS_REQUESTS, "every request is answered once read");
    // 16 queued + one drained batch + what the 64 KiB stream window and the 64 KiB send buffer
    // hold (about 1,100 answers each): an unbounded server would have answered all 100,000.
    assert!(
        b.answered_before_read <= 5_000,
        "the server kept reading requests it could not answer: {} answers before the client read",
        b.answered_before_read
    );
    assert!(b.other < Duration::from_secs(1), "other client: {:?}", b.other);
    assert!(
        b_hwm <= 32 * 1024,
        "Ballast VmHWM {:.1} MiB over 32 MiB (measured: 9.9)",
        mib(b_hwm)
    );
}
