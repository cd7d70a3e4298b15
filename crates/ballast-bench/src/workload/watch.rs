//! `watch`: event delivery throughput and put → event delay, plus the watch-stream helpers
//! `lease-expire` uses to see its keys go.
//!
//! Phases: (1) `--streams` watch streams are opened over `--conns` connections, each with
//! its share of the `--watchers` create requests queued, and every creation is confirmed;
//! the target's RSS is read before and after. (2) Put clients on their own connections
//! write the watched keys through the ordinary closed loop ([`crate::runner`]); each value
//! starts with the send time (nanoseconds on this process's monotonic clock, see
//! [`crate::clock`]), so a receiver computes every event's delay without any shared table.
//! (3) When the puts end, the receivers keep reading until every expected event arrived
//! or none came for `--drain-timeout`.
//!
//! Throughput is events received over all watchers divided by the time from the first put
//! to the last event. The delay includes this tool's own queueing: each stream is read by
//! one task, on the same cores as the server.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_proto::etcdserverpb::{
    watch_client::WatchClient, watch_request::RequestUnion, PutRequest, WatchCreateRequest,
    WatchRequest, WatchResponse,
};
use ballast_proto::mvccpb::event::EventType;
use serde_json::json;
use tokio::sync::{mpsc, watch as signal};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::{connect_n, CpuMeter, KvState, Run, Target};
use crate::cli::{GlobalArgs, WatchArgs, WatchKeys};
use crate::clock::{now_ns, ns_at};
use crate::procfs;
use crate::report::{status_message, Recorder};
use crate::runner::{self, Limits, Workload};
use crate::transport::Conn;

/// Puts used when neither --total nor --duration is given, with `--keys same`.
const DEFAULT_SAME_KEY_PUTS: u64 = 100;

pub fn watch_client(conn: &Conn) -> WatchClient<Conn> {
    WatchClient::with_origin(conn.clone(), conn.origin()).max_decoding_message_size(usize::MAX)
}

/// An open watch stream. Keep `requests` while reading: dropping it ends the request side.
pub struct WatchStream {
    pub requests: mpsc::Sender<WatchRequest>,
    pub responses: Streaming<WatchResponse>,
}

/// Opens a watch stream with `creates` already queued on it.
pub async fn open_watch_stream(
    conn: &Conn,
    creates: Vec<WatchCreateRequest>,
) -> Result<WatchStream, Status> {
    let (requests, rx) = mpsc::channel(creates.len() + 1);
    for c in creates {
        let req = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(c)),
        };
        // Cannot fail: the channel has room for every create and its receiver is here.
        let _ = requests.try_send(req);
    }
    let responses = watch_client(conn)
        .watch(ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok(WatchStream {
        requests,
        responses,
    })
}

/// Reads the answers to `n` create requests; a refused creation is an error.
pub async fn await_created(s: &mut WatchStream, n: u64) -> Result<(), String> {
    let mut created = 0;
    while created < n {
        match s.responses.message().await {
            Ok(Some(r)) if r.canceled => {
                return Err(format!("watch creation refused: {}", r.cancel_reason))
            }
            Ok(Some(r)) if r.created => created += 1,
            Ok(Some(_)) => {}
            Ok(None) => return Err("watch stream ended before the watchers were created".into()),
            Err(e) => return Err(format!("watch: {}", status_message(&e))),
        }
    }
    Ok(())
}

pub async fn run(a: &WatchArgs, g: &GlobalArgs, target: &Target) -> Result<Run, String> {
    if a.val_size < 8 {
        return Err(format!(
            "--val-size {} is too small: watch puts carry an 8-byte send time",
            a.val_size
        ));
    }
    let watchers = a.watchers;
    let streams = a.streams.min(watchers);
    let keys = watched_keys(a);
    let limits = put_limits(a, g);
    let put = Arc::new(StampedPut {
        keys: keys.clone(),
        pad: crate::keys::random_value(a.val_size - 8),
    });
    let watch_conns = connect_n(target, g.conns as usize, g).await?;
    let put_conns = connect_n(target, a.put_conns as usize, g).await?;

    // Phase 1: create the watchers.
    let rss_before = rss_kib(target.pid)?;
    let created_at = Instant::now();
    let progress = Arc::new(Progress::default());
    let (stop_tx, stop_rx) = signal::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<(), String>>(streams as usize);
    let mut tasks = Vec::with_capacity(streams as usize);
    for s in 0..streams {
        // Watcher i is on stream i mod streams and watches key i mod keys.len().
        let creates: Vec<_> = (s..watchers)
            .step_by(streams as usize)
            .map(|i| WatchCreateRequest {
                key: keys[(i % keys.len() as u64) as usize].clone(),
                ..Default::default()
            })
            .collect();
        let conn = watch_conns[s as usize % watch_conns.len()].clone();
        let (progress, stop, ready) = (progress.clone(), stop_rx.clone(), ready_tx.clone());
        tasks.push(tokio::spawn(async move {
            let n = creates.len() as u64;
            let mut stream = match open_watch_stream(&conn, creates).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready
                        .send(Err(format!("watch: {}", status_message(&e))))
                        .await;
                    return Tally::default();
                }
            };
            if let Err(e) = await_created(&mut stream, n).await {
                let _ = ready.send(Err(e)).await;
                return Tally::default();
            }
            let _ = ready.send(Ok(())).await;
            receive_events(stream, &progress, stop).await
        }));
    }
    drop(ready_tx);
    let deadline = created_at + a.create_timeout;
    for _ in 0..streams {
        match tokio::time::timeout_at(deadline.into(), ready_rx.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => return Err(e),
            Ok(None) => return Err("a watch stream task failed".into()),
            Err(_) => {
                return Err(format!(
                    "the watchers were not all created within --create-timeout {:?} (does the \
                     server limit concurrent HTTP/2 streams below --streams / --conns?)",
                    a.create_timeout
                ))
            }
        }
    }
    let create_s = created_at.elapsed().as_secs_f64();
    let rss_after = rss_kib(target.pid)?;

    // Phase 2: the puts.
    let meter = CpuMeter::start(target.pid);
    let clients = g.clients as usize;
    let puts = runner::run(put, &put_conns, clients, limits).await;
    let puts_done = Instant::now();
    let fanout = match a.keys {
        WatchKeys::Same => watchers,
        WatchKeys::Distinct => 1,
    };
    let expected = puts.recorder.succeeded() * fanout;

    // Phase 3: drain.
    loop {
        if progress.events.load(Ordering::Relaxed) >= expected {
            break;
        }
        let last = progress
            .last_ns
            .load(Ordering::Relaxed)
            .max(ns_at(puts_done));
        if now_ns().saturating_sub(last) > a.drain_timeout.as_nanos() as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = stop_tx.send(true);
    let mut events = Recorder::new();
    let mut foreign = 0;
    for t in tasks {
        match t.await {
            Ok(tally) => {
                events.merge(&tally.delays);
                foreign += tally.foreign;
            }
            Err(e) => events.record_err(format!("watch stream task failed: {e}")),
        }
    }
    let cpu = meter.stop();
    let received = progress.events.load(Ordering::Relaxed);
    let last_event = progress.last_ns.load(Ordering::Relaxed);
    let first_put = ns_at(puts.start);
    let elapsed = if received > 0 && last_event > first_put {
        Duration::from_nanos(last_event - first_put)
    } else {
        puts.elapsed
    };
    events.merge_errors(&puts.recorder, "put: ");

    let mut details = serde_json::Map::new();
    details.insert(
        "watch".into(),
        json!({
            "watchers": watchers,
            "streams": streams,
            "conns": watch_conns.len(),
            "keys": keys.len(),
            "create_s": create_s,
            "created_per_s": watchers as f64 / create_s.max(1e-9),
        }),
    );
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        details.insert(
            "rss".into(),
            json!({
                "before_watchers_kib": before,
                "after_watchers_kib": after,
                "per_watcher_bytes": (after as f64 - before as f64) * 1024.0 / watchers as f64,
            }),
        );
    }
    details.insert(
        "events".into(),
        json!({
            "expected": expected,
            "received": received,
            "missing": expected.saturating_sub(received),
            "foreign": foreign,
            "drain_s": (last_event.saturating_sub(ns_at(puts_done))) as f64 / 1e9,
        }),
    );
    details.insert(
        "puts".into(),
        puts.recorder.summary_json(puts.elapsed.as_secs_f64()),
    );
    Ok(Run {
        recorder: events,
        elapsed,
        conns: watch_conns.len(),
        clients,
        unit: "events",
        cpu,
        details,
    })
}

fn rss_kib(pid: Option<u32>) -> Result<Option<u64>, String> {
    pid.map(|p| procfs::memory(p).map(|m| m.rss_kib))
        .transpose()
        .map_err(|e| format!("--target-pid: {e}"))
}

/// The watched keys: one (`same`) or one per watcher (`distinct`).
fn watched_keys(a: &WatchArgs) -> Vec<Vec<u8>> {
    match a.keys {
        WatchKeys::Same => vec![format!("{}same", a.key_prefix).into_bytes()],
        WatchKeys::Distinct => (0..a.watchers)
            .map(|i| format!("{}{i:08}", a.key_prefix).into_bytes())
            .collect(),
    }
}

/// --total/--duration as given, otherwise a default that keeps the run short.
fn put_limits(a: &WatchArgs, g: &GlobalArgs) -> Limits {
    let mut limits = g.limits();
    if g.total.is_none() && g.duration.is_none() {
        limits.total = Some(match a.keys {
            WatchKeys::Same => DEFAULT_SAME_KEY_PUTS,
            WatchKeys::Distinct => a.watchers,
        });
    }
    limits
}

/// Progress shared by the receivers, read by the drain loop.
#[derive(Default)]
struct Progress {
    events: AtomicU64,
    /// [`now_ns`] of the latest event.
    last_ns: AtomicU64,
}

/// What one stream received.
#[derive(Default)]
struct Tally {
    /// Put → event delays (and the stream's error, if it broke).
    delays: Recorder,
    /// Put events whose value carries no send time (someone else's writes).
    foreign: u64,
}

async fn receive_events(
    mut s: WatchStream,
    progress: &Progress,
    mut stop: signal::Receiver<bool>,
) -> Tally {
    let mut tally = Tally::default();
    loop {
        let msg = tokio::select! {
            _ = stop.changed() => break,
            m = s.responses.message() => m,
        };
        let resp = match msg {
            Ok(Some(r)) => r,
            Ok(None) => {
                tally
                    .delays
                    .record_err("watch stream ended by the server".into());
                break;
            }
            Err(e) => {
                tally.delays.record_err(status_message(&e));
                break;
            }
        };
        if resp.canceled {
            tally
                .delays
                .record_err(format!("watcher canceled: {}", resp.cancel_reason));
        }
        let now = now_ns();
        let mut n = 0;
        for ev in &resp.events {
            if ev.r#type != EventType::Put as i32 {
                continue;
            }
            match ev.kv.as_ref().and_then(|kv| sent_ns(&kv.value)) {
                Some(sent) => {
                    tally.delays.record_ok(now.saturating_sub(sent) / 1000);
                    n += 1;
                }
                None => tally.foreign += 1,
            }
        }
        if n > 0 {
            progress.events.fetch_add(n, Ordering::Relaxed);
            progress.last_ns.fetch_max(now, Ordering::Relaxed);
        }
    }
    drop(s.requests);
    tally
}

/// The send time a [`StampedPut`] value starts with.
fn sent_ns(value: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(value.get(..8)?.try_into().ok()?))
}

/// Put `seq` writes `keys[seq mod len]` with a value starting with its send time.
struct StampedPut {
    keys: Vec<Vec<u8>>,
    pad: Vec<u8>,
}

impl StampedPut {
    fn value(&self, sent: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + self.pad.len());
        v.extend_from_slice(&sent.to_le_bytes());
        v.extend_from_slice(&self.pad);
        v
    }
}

impl Workload for StampedPut {
    type Client = KvState;

    fn new_client(&self, conn: Conn, _index: usize) -> KvState {
        KvState::new(conn)
    }

    async fn issue(&self, c: &mut KvState, seq: u64) -> Result<(), Status> {
        let key = self.keys[(seq % self.keys.len() as u64) as usize].clone();
        let req = PutRequest {
            key,
            value: self.value(now_ns()),
            ..Default::default()
        };
        c.kv.put(req).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{BenchCommand, Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> (WatchArgs, GlobalArgs) {
        let cli = Cli::try_parse_from(["b"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Bench(BenchCommand::Watch(w)) => (w, cli.global),
            _ => unreachable!(),
        }
    }

    #[test]
    fn stamped_values_round_trip() {
        let p = StampedPut {
            keys: vec![b"k".to_vec()],
            pad: vec![7; 8],
        };
        let v = p.value(123_456_789);
        assert_eq!(v.len(), 16);
        assert_eq!(sent_ns(&v), Some(123_456_789));
        assert_eq!(sent_ns(b"short"), None);
        assert!(ns_at(Instant::now()) <= now_ns());
    }

    #[test]
    fn keys_and_default_puts() {
        let (a, g) = parse(&["watch", "--watchers", "3", "--keys", "distinct"]);
        assert_eq!(
            watched_keys(&a),
            vec![
                b"bench-watch/00000000".to_vec(),
                b"bench-watch/00000001".to_vec(),
                b"bench-watch/00000002".to_vec()
            ]
        );
        assert_eq!(put_limits(&a, &g).total, Some(3));
        let (a, g) = parse(&["watch", "--watchers", "3"]);
        assert_eq!(watched_keys(&a), vec![b"bench-watch/same".to_vec()]);
        assert_eq!(put_limits(&a, &g).total, Some(DEFAULT_SAME_KEY_PUTS));
        let (a, g) = parse(&["--total", "7", "watch"]);
        assert_eq!(put_limits(&a, &g).total, Some(7));
        let (a, g) = parse(&["--duration", "2s", "watch"]);
        assert_eq!(put_limits(&a, &g).total, None);
    }
}
