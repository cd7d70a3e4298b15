//! Slow consumers must not hurt anyone else: 1,000 watchers, 100 of them on streams whose client
//! never reads, against the candidate server.
//!
//! Layout:
//! - 900 *reading* watchers on 9 HTTP/2 connections, each connection with 100 of them, each
//!   watching one of 100 key groups (so every group has 9 watchers, one per connection), all
//!   created "now". By default a connection carries 10 streams of 10 watchers (90 streams), so a
//!   put's responses go out on several streams of each connection.
//!   `BALLAST_WATCH_SLOW_STREAMS_PER_CONNECTION=1` puts each connection's 100 watchers on one
//!   stream instead, as etcd's Go client does with watches that carry the same metadata (it
//!   keys its streams by the request's metadata; Kubernetes' watches all carry `hasleader`);
//! - 100 *silent* watchers: 100 streams × 1 watcher, each stream on its own connection with 64 KiB
//!   HTTP/2 windows, watching every key of the test; half start from revision 1 (a backlog that can
//!   never be delivered), half from "now". The client never polls their responses, so once the
//!   windows are full the server cannot send them anything. (They get their own connections because
//!   an unread stream keeps the client's *connection* window consumed: sharing a connection with
//!   reading streams would stall those in the client, whatever the server does.)
//!
//! `silent_streams_do_not_hold_back_other_watchers` (run by CI) makes one round of puts with
//! the 1,000 watchers and checks delivery only. `silent_streams_do_not_slow_down_writes` (the
//! Watch issue's latency bound, a timing measurement for a quiet machine: `--ignored`) measures
//! put latency for the same workload (3,000 puts from 8 concurrent clients, one
//! connection each) on the same server without any watcher and with all 1,000 watchers. One
//! measurement is two rounds (without, with; without, with: the watchers are created for each
//! "with" phase and dropped after it), pooling the samples of each condition; there are three
//! measurements. Each phase starts once the server has settled (it used at most 10 ms of CPU in
//! 500 ms): after the creates, because the 50 silent watchers that start at revision 1 replay
//! history until their windows are full, a one-time cost of its own, not the steady cost of slow
//! consumers this test is about; after the previous round's watchers were dropped, for the same
//! reason. It asserts that
//! - every reading watcher receives every event of its group, all within 5 s of the last put;
//! - the p99 put latency with watchers stays within 2× of the p99 without (the median of the
//!   three measurements' ratios).
//!
//! This targets Ballast. With `BALLAST_COMPAT_SELFTEST=1` it runs against etcd 3.4 and only prints
//! the numbers (etcd's shared-stream/victim design is what the test is about; it may fail there).

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_proto::etcdserverpb::kv_client::KvClient;
use ballast_proto::etcdserverpb::{PutRequest, WatchCreateRequest};
use ballast_testkit::watch::{self, ConsumedStream, Received, SilentStream, Windows};
use ballast_testkit::{candidate_kind, selftest, start_candidate, ServerKind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

const GROUPS: usize = 100;
const READING_CONNECTIONS: usize = 9;
/// Reading watchers per connection.
const WATCHERS_PER_CONNECTION: usize = 100;
const SILENT_STREAMS: usize = 100;
const PUTS: usize = 3000;
const CLIENTS: usize = 8;
const VALUE_BYTES: usize = 200;
/// Every event must have arrived this long after the last put was acknowledged.
const DELIVERY_BOUND: Duration = Duration::from_secs(5);
/// p99 put latency with watchers / without.
const MAX_SLOWDOWN: f64 = 2.0;

fn group_prefix(g: usize) -> Vec<u8> {
    format!("slow/g{g:02}/").into_bytes()
}

fn prefix_end(p: &[u8]) -> Vec<u8> {
    let mut end = p.to_vec();
    *end.last_mut().expect("non-empty") += 1;
    end
}

/// Latencies and acknowledged (revision, group, ack time) of one put run.
struct PutRun {
    latencies: Vec<Duration>,
    acked: Vec<(i64, usize, Instant)>,
}

/// The nearest-rank `p` quantile of `samples` (zero for none).
fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut l = samples.to_vec();
    l.sort();
    let i = ((p * l.len() as f64).ceil() as usize).clamp(1, l.len().max(1)) - 1;
    l.get(i).copied().unwrap_or_default()
}

impl PutRun {
    fn percentile(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }
    fn last_ack(&self) -> Instant {
        // Only meaningful for a run that made puts.
        self.acked.iter().map(|a| a.2).max().expect("puts")
    }
}

/// The put clients' connections, one each, opened once and kept for every phase, as real
/// writers keep theirs (a phase measures puts, not connection set-up).
struct Writers(Vec<KvClient<Channel>>);

impl Writers {
    async fn connect(url: &str) -> Writers {
        let mut kv = Vec::new();
        for _ in 0..CLIENTS {
            kv.push(ballast_testkit::kv_client(url).await);
        }
        Writers(kv)
    }
}

async fn put_run(writers: &Writers, seed: u64, tag: &str) -> PutRun {
    let mut tasks = Vec::new();
    for (c, kv) in writers.0.iter().enumerate() {
        let mut kv = kv.clone();
        let tag = tag.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ (c as u64 + 1));
            let mut lat = Vec::new();
            let mut acked = Vec::new();
            for i in 0..PUTS / CLIENTS {
                let g = rng.random_range(0..GROUPS);
                let mut key = group_prefix(g);
                key.extend_from_slice(format!("k{}", rng.random_range(0..10)).as_bytes());
                let mut value = format!("{tag}-{c}-{i}-").into_bytes();
                value.resize(VALUE_BYTES, b'.');
                let req = PutRequest {
                    key,
                    value,
                    ..Default::default()
                };
                let t0 = Instant::now();
                let resp = kv
                    .put(req)
                    .await
                    .unwrap_or_else(|e| panic!("put failed: {e}"))
                    .into_inner();
                let now = Instant::now();
                lat.push(now - t0);
                acked.push((resp.header.map_or(0, |h| h.revision), g, now));
            }
            (lat, acked)
        }));
    }
    let mut run = PutRun {
        latencies: Vec::new(),
        acked: Vec::new(),
    };
    for t in tasks {
        let (l, a) = t.await.expect("put client");
        run.latencies.extend(l);
        run.acked.extend(a);
    }
    run
}

/// What a reading stream's watchers received: per watcher (index on the stream), the revision
/// and arrival time of every event, in arrival order (checked after the round, not while the
/// test process competes with the server for CPU).
type Arrivals = Vec<Vec<(i64, Instant)>>;

/// Watch streams per reading connection (see the module's documentation).
fn streams_per_connection() -> usize {
    match std::env::var("BALLAST_WATCH_SLOW_STREAMS_PER_CONNECTION") {
        Ok(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 && WATCHERS_PER_CONNECTION.is_multiple_of(n) => n,
            _ => panic!("BALLAST_WATCH_SLOW_STREAMS_PER_CONNECTION={v}: a divisor of 100"),
        },
        Err(_) => 10,
    }
}

/// One reading stream's state, updated by its consumer as each response arrives.
struct Reader {
    /// Watchers created on the stream.
    watchers: usize,
    /// Watch ids in the order their created responses came (they answer the creates in order).
    ids: HashMap<i64, usize>,
    arrivals: Arrivals,
    problem: Option<String>,
    created: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
}

impl Reader {
    fn on(&mut self, item: Received, at: Instant) -> ControlFlow<()> {
        let r = match item {
            Received::Response(r) => r,
            other => return self.fail(format!("reading stream ended: {other:?}")),
        };
        if r.canceled {
            return self.fail(format!(
                "reading watcher {} cancelled: compact {} reason {:?}",
                r.watch_id, r.compact_revision, r.cancel_reason
            ));
        }
        if r.created {
            if self.ids.len() == self.watchers {
                return self.fail(format!("unexpected created response {}", r.watch_id));
            }
            let n = self.ids.len();
            self.ids.insert(r.watch_id, n);
            self.created.fetch_add(1, Ordering::SeqCst);
            return ControlFlow::Continue(());
        }
        let Some(&w) = self.ids.get(&r.watch_id) else {
            return self.fail(format!("response for unknown watch id {}", r.watch_id));
        };
        let got = &mut self.arrivals[w];
        for ev in &r.events {
            if let Some(kv) = &ev.kv {
                got.push((kv.mod_revision, at));
            }
        }
        self.received.fetch_add(r.events.len(), Ordering::SeqCst);
        ControlFlow::Continue(())
    }

    fn fail(&mut self, problem: String) -> ControlFlow<()> {
        self.problem = Some(problem);
        ControlFlow::Break(())
    }
}

/// The 1,000 watchers of one round.
struct Watchers {
    _silent: Vec<SilentStream>,
    readers: Vec<ConsumedStream<Reader>>,
    groups_of_stream: Vec<Vec<usize>>,
    received: Arc<AtomicUsize>,
}

async fn start_watchers(url: &str) -> Watchers {
    // 100 silent streams, each on its own connection with small windows.
    let mut silent = Vec::new();
    for i in 0..SILENT_STREAMS {
        let client = watch::watch_client_on(watch::watch_channel(url, Windows::small()).await);
        let mut s = SilentStream::open(&client);
        s.create(WatchCreateRequest {
            key: b"slow/".to_vec(),
            range_end: prefix_end(b"slow/"),
            start_revision: if i % 2 == 0 { 1 } else { 0 },
            prev_kv: true,
            ..Default::default()
        });
        s.wait_opened(Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("silent stream {i}: {e}"));
        silent.push(s);
    }

    // 900 reading watchers. Each stream is read by a handler called as responses arrive (the
    // test process shares the 2 cores with the server: no extra task hop per response).
    let mut clients = Vec::new();
    for _ in 0..READING_CONNECTIONS {
        clients.push(watch::watch_client(url).await);
    }
    let created = Arc::new(AtomicUsize::new(0));
    let received = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    let mut groups_of_stream = Vec::new();
    let streams = streams_per_connection();
    let per_stream = WATCHERS_PER_CONNECTION / streams;
    for s in 0..READING_CONNECTIONS * streams {
        let reader = Reader {
            watchers: per_stream,
            ids: HashMap::new(),
            arrivals: vec![Vec::new(); per_stream],
            problem: None,
            created: created.clone(),
            received: received.clone(),
        };
        let stream = ConsumedStream::open(
            &clients[s % READING_CONNECTIONS],
            reader,
            |r: &mut Reader, at, item| r.on(item, at),
        );
        let mut groups = Vec::new();
        for w in 0..per_stream {
            let g = (s * per_stream + w) % GROUPS;
            let p = group_prefix(g);
            stream.create(WatchCreateRequest {
                range_end: prefix_end(&p),
                key: p,
                ..Default::default()
            });
            groups.push(g);
        }
        groups_of_stream.push(groups);
        readers.push(stream);
    }
    let want = READING_CONNECTIONS * WATCHERS_PER_CONNECTION;
    let deadline = Instant::now() + Duration::from_secs(10);
    while created.load(Ordering::SeqCst) < want {
        assert!(
            Instant::now() < deadline,
            "only {} of {want} reading watchers created in 10 s",
            created.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Watchers {
        _silent: silent,
        readers,
        groups_of_stream,
        received,
    }
}

/// How delivery went in one round.
#[derive(Default)]
struct Delivery {
    delays: Vec<Duration>,
    missing: usize,
    late: usize,
    problems: Vec<String>,
}

/// Wait until every put of `loaded` reached its reading watchers (or the bound passed), stop the
/// readers and drop every watcher.
async fn finish(w: Watchers, loaded: &PutRun, out: &mut Delivery) {
    let last_put = loaded.last_ack();
    let mut expected: Vec<Vec<i64>> = vec![Vec::new(); GROUPS];
    let mut acked_at: HashMap<i64, Instant> = HashMap::new();
    for &(rev, g, at) in &loaded.acked {
        expected[g].push(rev);
        acked_at.insert(rev, at);
    }
    let due: usize = w
        .groups_of_stream
        .iter()
        .flatten()
        .map(|&g| expected[g].len())
        .sum();
    while w.received.load(Ordering::SeqCst) < due && Instant::now() < last_put + DELIVERY_BOUND {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A little longer, to catch duplicates or strays.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (s, stream) in w.readers.into_iter().enumerate() {
        let reader = stream.stop().await;
        if let Some(e) = reader.problem {
            out.problems.push(format!("reading stream {s}: {e}"));
            continue;
        }
        let arrivals = reader.arrivals;
        for (i, events) in arrivals.iter().enumerate() {
            let g = w.groups_of_stream[s][i];
            let mut got: HashMap<i64, Instant> = HashMap::with_capacity(events.len());
            for &(rev, at) in events {
                if got.insert(rev, at).is_some() {
                    out.problems.push(format!(
                        "reading stream {s} watcher {i}: revision {rev} arrived twice"
                    ));
                }
            }
            for rev in &expected[g] {
                match got.get(rev) {
                    Some(&at) => {
                        out.delays.push(at.saturating_duration_since(acked_at[rev]));
                        if at > last_put + DELIVERY_BOUND {
                            out.late += 1;
                        }
                    }
                    None => out.missing += 1,
                }
            }
            if got.len() > expected[g].len() {
                out.problems.push(format!(
                    "reading stream {s} watcher {i}: {} events for {} puts in its group",
                    got.len(),
                    expected[g].len()
                ));
            }
        }
    }
}

/// CPU time (user + system) a process has used so far, from `/proc/<pid>/stat` (USER_HZ = 100).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Waits (at most 15 s) until the process used at most 10 ms of CPU in 500 ms. A shorter
/// window is not enough: the replays of the silent streams that start at revision 1 go on for
/// a second or more after the creates, in steps with quiet gaps between them (each step waits
/// for the client to take the last one), and a 100 ms window fell into such a gap.
async fn settle(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let before = cpu_time(pid);
        tokio::time::sleep(Duration::from_millis(500)).await;
        if cpu_time(pid) - before <= Duration::from_millis(10) {
            return;
        }
    }
}

/// A measurement is two rounds, each: the workload without watchers, then with 1,000 watchers
/// (created for the round and dropped after it). Latencies are pooled per condition, so a burst
/// of load from elsewhere on the machine during one phase weighs less.
const ROUNDS: usize = 2;
/// Measurements; the bound applies to the median of their ratios (one p99 of 6,000 samples on a
/// shared 2-core machine moves by more than 2x between identical runs; the median of three does
/// not).
const MEASUREMENTS: usize = 3;

/// One measurement's put latencies with and without watchers.
struct Measurement {
    baseline: PutRun,
    loaded: PutRun,
    /// CPU used during the put phases: (server, test process) without and with watchers.
    cpu_base: (Duration, Duration),
    cpu_loaded: (Duration, Duration),
}

impl Measurement {
    fn ratio(&self) -> f64 {
        self.loaded.percentile(0.99).as_secs_f64() / self.baseline.percentile(0.99).as_secs_f64()
    }
}

async fn measure(
    url: &str,
    writers: &Writers,
    seed: u64,
    server_pid: u32,
    delivery: &mut Delivery,
) -> Measurement {
    let me = std::process::id();
    let empty = || PutRun {
        latencies: Vec::new(),
        acked: Vec::new(),
    };
    let mut m = Measurement {
        baseline: empty(),
        loaded: empty(),
        cpu_base: (Duration::ZERO, Duration::ZERO),
        cpu_loaded: (Duration::ZERO, Duration::ZERO),
    };
    for round in 0..ROUNDS {
        let seed = seed ^ ((round as u64) << 8);
        settle(server_pid).await;
        let (s0, t0) = (cpu_time(server_pid), cpu_time(me));
        let base = put_run(writers, seed, "base").await;
        m.cpu_base.0 += cpu_time(server_pid) - s0;
        m.cpu_base.1 += cpu_time(me) - t0;
        m.baseline.latencies.extend(base.latencies);
        let watchers = start_watchers(url).await;
        settle(server_pid).await;
        let (s0, t0) = (cpu_time(server_pid), cpu_time(me));
        let loaded = put_run(writers, seed ^ 0x10AD, "load").await;
        m.cpu_loaded.0 += cpu_time(server_pid) - s0;
        m.cpu_loaded.1 += cpu_time(me) - t0;
        finish(watchers, &loaded, delivery).await;
        m.loaded.latencies.extend(loaded.latencies);
    }
    m
}

/// Prints how delivery went and returns what was wrong with it.
fn delivery_problems(kind: &ServerKind, delivery: Delivery) -> Vec<String> {
    let mut problems = delivery.problems;
    let delays = delivery.delays;
    let delay_p99 = percentile(&delays, 0.99);
    let delay_max = delays.iter().max().copied().unwrap_or_default();
    eprintln!(
        "watch_slow ({kind}): {} events delivered to 900 reading watchers ({} streams per \
         connection), delay p99 {delay_p99:?} max {delay_max:?}; {} missing, {} later than \
         {DELIVERY_BOUND:?} after the last put",
        delays.len(),
        streams_per_connection(),
        delivery.missing,
        delivery.late,
    );
    if delays.is_empty() {
        problems.push("no event was delivered".to_owned());
    }
    if delivery.missing > 0 {
        problems.push(format!(
            "{} events never reached their reading watcher",
            delivery.missing
        ));
    }
    if delivery.late > 0 {
        problems.push(format!(
            "{} events arrived later than {DELIVERY_BOUND:?} after the last put",
            delivery.late
        ));
    }
    problems
}

/// Fails the test with `problems`, or (against etcd) only prints them.
fn judge(kind: &ServerKind, problems: Vec<String>) {
    if selftest() {
        if !problems.is_empty() {
            eprintln!(
                "watch_slow: etcd (not asserted):\n  {}",
                problems.join("\n  ")
            );
        }
        return;
    }
    assert!(problems.is_empty(), "{kind}:\n  {}", problems.join("\n  "));
}

/// One round of puts with the 1,000 watchers: every reading watcher gets every event of its
/// group, promptly, however many streams never read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_streams_do_not_hold_back_other_watchers() {
    let server = start_candidate();
    let url = server.client_url();
    let writers = Writers::connect(&url).await;
    let watchers = start_watchers(&url).await;
    let loaded = put_run(&writers, 0x5106, "load").await;
    let mut delivery = Delivery::default();
    finish(watchers, &loaded, &mut delivery).await;
    let kind = candidate_kind();
    judge(&kind, delivery_problems(&kind, delivery));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "timing bound for a quiet machine (the Watch issue's 2x: met there by default, median 1.7x; BENCHMARKS.md and docs/watch.md have the numbers). Run with --ignored."]
async fn silent_streams_do_not_slow_down_writes() {
    let seed = 0x5105_u64;
    let server = start_candidate();
    let url = server.client_url();
    let kind = candidate_kind();

    // Warm-up (connections, first allocations).
    let writers = Writers::connect(&url).await;
    let _ = put_run(&writers, seed ^ 0xAAAA, "warm").await;
    let server_pid = server.pid().expect("server pid");
    let mut delivery = Delivery::default();
    let mut ratios = Vec::new();
    for i in 0..MEASUREMENTS {
        let m = measure(
            &url,
            &writers,
            seed ^ ((i as u64) << 16),
            server_pid,
            &mut delivery,
        )
        .await;
        eprintln!(
            "watch_slow ({kind}) measurement {i}: put p50/p99 without watchers {:?}/{:?}, with \
             1,000 watchers (100 silent) {:?}/{:?} (x{:.2}); CPU during the puts (server/test \
             process): without watchers {:?}/{:?}, with {:?}/{:?}",
            m.baseline.percentile(0.5),
            m.baseline.percentile(0.99),
            m.loaded.percentile(0.5),
            m.loaded.percentile(0.99),
            m.ratio(),
            m.cpu_base.0,
            m.cpu_base.1,
            m.cpu_loaded.0,
            m.cpu_loaded.1,
        );
        ratios.push(m.ratio());
    }
    ratios.sort_by(f64::total_cmp);
    let ratio = ratios[ratios.len() / 2];
    eprintln!(
        "watch_slow ({kind}): p99 put latency with 1,000 watchers (100 silent) / without: median \
         x{ratio:.2} of {ratios:.2?}"
    );
    let mut problems = delivery_problems(&kind, delivery);
    if ratio > MAX_SLOWDOWN {
        problems.push(format!(
            "p99 put latency with watchers is x{ratio:.2} the one without (median of \
             {ratios:.2?}), above x{MAX_SLOWDOWN}"
        ));
    }
    judge(&kind, problems);
}
