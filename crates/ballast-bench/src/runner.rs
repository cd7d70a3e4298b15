//! The closed-loop engine shared by every request/response benchmark.
//!
//! `clients` tokio tasks each issue requests back to back: take the next sequence number
//! from a shared atomic counter (so `--total` is exact however fast each client is), call
//! the [`Workload`], time it, record it in the task's own [`Recorder`]. Client `i` uses
//! connection `i % conns`. The run ends when `--total` requests were taken, the
//! `--duration` deadline passed or the caller raised [`Control::stop`] (requests in flight
//! then still complete and are counted).
//!
//! With `--rate R`, request `seq` is not issued before `start + seq / R`: the clients
//! together follow a fixed schedule (each still waits for its answer, so the rate is only
//! reached with enough clients; a late request is sent at once, and its latency is
//! measured from when it was sent, not from when it was due).
//!
//! Extension point: a new request/response benchmark (lease grant, a keep-alive on a
//! stream, ...) is a new [`Workload`]; benchmarks that receive on their own (watch events)
//! run their receivers beside this loop and reuse [`Recorder`] and [`crate::report::Report`].

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::report::{status_message, Recorder};
use crate::transport::Conn;

/// Error message of a request that hit `--request-timeout`.
const TIMEOUT_MSG: &str = "request timed out (--request-timeout)";

/// One kind of request, issued by many clients concurrently.
pub trait Workload: Send + Sync + 'static {
    /// Per-client state: gRPC stubs, an RNG, scratch buffers.
    type Client: Send + 'static;

    /// Builds client number `index`'s state on its connection.
    fn new_client(&self, conn: Conn, index: usize) -> Self::Client;

    /// Issues request number `seq` (0-based, unique across clients) and waits for the
    /// answer. Only the awaited time is measured, so do the heavy preparation up front.
    fn issue(
        &self,
        client: &mut Self::Client,
        seq: u64,
    ) -> impl Future<Output = Result<(), tonic::Status>> + Send;

    /// Called once with each client's state when the run ends (e.g. to collect the lease
    /// ids it was granted).
    fn finish(&self, _client: Self::Client) {}
}

/// When a run stops.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Stop after this many requests (`None`: unbounded, `duration` must be set).
    pub total: Option<u64>,
    /// Stop taking new requests after this long.
    pub duration: Option<Duration>,
    /// Fail a request that takes longer than this (`None`: wait forever).
    pub request_timeout: Option<Duration>,
    /// Requests per second over all clients (`None`: as fast as the clients go).
    pub rate: Option<f64>,
}

/// How a caller steers a run beyond [`Limits`].
#[derive(Clone, Default)]
pub struct Control {
    /// Raised by the caller to end the run (e.g. when a watched event has happened).
    pub stop: Option<Arc<AtomicBool>>,
    /// Keep every request's start time and latency ([`Outcome::timeline`]).
    pub timeline: bool,
}

/// One request of a timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// When it was sent, in microseconds after [`Outcome::start`].
    pub sent_us: u64,
    pub latency_us: u64,
    pub ok: bool,
}

/// Merged results of a run.
pub struct Outcome {
    pub recorder: Recorder,
    pub elapsed: Duration,
    /// When the run started.
    pub start: Instant,
    /// Every request, in no particular order (empty unless [`Control::timeline`]).
    pub timeline: Vec<Sample>,
}

/// Runs `workload` with `clients` closed-loop clients over `conns`.
pub async fn run<W: Workload>(
    workload: Arc<W>,
    conns: &[Conn],
    clients: usize,
    limits: Limits,
) -> Outcome {
    run_with(workload, conns, clients, limits, Control::default()).await
}

/// [`run`], stoppable by the caller and optionally keeping a timeline.
pub async fn run_with<W: Workload>(
    workload: Arc<W>,
    conns: &[Conn],
    clients: usize,
    limits: Limits,
    control: Control,
) -> Outcome {
    assert!(!conns.is_empty(), "at least one connection");
    assert!(
        limits.total.is_some() || limits.duration.is_some() || control.stop.is_some(),
        "a run needs --total, --duration or a stop flag"
    );
    let total = limits.total.unwrap_or(u64::MAX);
    let next = Arc::new(AtomicU64::new(0));
    let stop = control
        .stop
        .clone()
        .unwrap_or_else(|| Arc::new(AtomicBool::new(false)));
    // Seconds between two scheduled requests (`--rate`).
    let interval = limits.rate.filter(|r| *r > 0.0).map(|r| 1.0 / r);

    let start = Instant::now();
    let deadline = limits.duration.map(|d| start + d);
    let timer = limits.duration.map(|d| {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            stop.store(true, Ordering::Relaxed);
        })
    });

    let mut tasks = Vec::with_capacity(clients);
    for i in 0..clients.max(1) {
        let mut client = workload.new_client(conns[i % conns.len()].clone(), i);
        let (w, next, stop) = (workload.clone(), next.clone(), stop.clone());
        let keep_timeline = control.timeline;
        tasks.push(tokio::spawn(async move {
            let mut rec = Recorder::new();
            let mut timeline = Vec::new();
            let mut last_done = None;
            while !stop.load(Ordering::Relaxed) {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= total {
                    break;
                }
                if let Some(iv) = interval {
                    let due = start + Duration::from_secs_f64(seq as f64 * iv);
                    if deadline.is_some_and(|d| due >= d) {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
                let t0 = Instant::now();
                let res = match limits.request_timeout {
                    None => w.issue(&mut client, seq).await,
                    Some(t) => tokio::time::timeout(t, w.issue(&mut client, seq))
                        .await
                        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded(TIMEOUT_MSG))),
                };
                let done = Instant::now();
                last_done = Some(done);
                let us = done.duration_since(t0).as_micros() as u64;
                if keep_timeline {
                    timeline.push(Sample {
                        sent_us: t0.duration_since(start).as_micros() as u64,
                        latency_us: us,
                        ok: res.is_ok(),
                    });
                }
                match res {
                    Ok(()) => rec.record_ok(us),
                    Err(status) => rec.record_err(status_message(&status)),
                }
            }
            w.finish(client);
            (rec, timeline, last_done)
        }));
    }

    let mut recorder = Recorder::new();
    let mut timeline = Vec::new();
    let mut last_done: Option<Instant> = None;
    for t in tasks {
        match t.await {
            Ok((rec, tl, done)) => {
                recorder.merge(&rec);
                timeline.extend(tl);
                last_done = last_done.max(done);
            }
            Err(e) => recorder.record_err(format!("client task failed: {e}")),
        }
    }
    // Until the last answer: a paced client may still sleep towards a slot it will not use.
    let elapsed = last_done.unwrap_or_else(Instant::now).duration_since(start);
    if let Some(t) = timer {
        t.abort();
    }
    Outcome {
        recorder,
        elapsed,
        start,
        timeline,
    }
}
