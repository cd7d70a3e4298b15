//! The closed-loop engine shared by every request/response benchmark.
//!
//! `clients` tokio tasks each issue requests back to back: take the next sequence number
//! from a shared atomic counter (so `--total` is exact however fast each client is), call
//! the [`Workload`], time it, record it in the task's own [`Recorder`]. Client `i` uses
//! connection `i % conns`. The run ends when `--total` requests were taken or the
//! `--duration` deadline passed (requests in flight at the deadline still complete and
//! are counted).
//!
//! Extension point: a new unary benchmark (lease grant, txn-mixed, ...) is a new
//! [`Workload`]; stream benchmarks (watch, lease keep-alive) will need their own runner
//! but can reuse [`Recorder`], [`crate::report::Report`] and [`crate::endpoint`].

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
}

/// Merged results of a run.
pub struct Outcome {
    pub recorder: Recorder,
    pub elapsed: Duration,
}

/// Runs `workload` with `clients` closed-loop clients over `conns`.
pub async fn run<W: Workload>(
    workload: Arc<W>,
    conns: &[Conn],
    clients: usize,
    limits: Limits,
) -> Outcome {
    assert!(!conns.is_empty(), "at least one connection");
    assert!(
        limits.total.is_some() || limits.duration.is_some(),
        "a run needs --total or --duration"
    );
    let total = limits.total.unwrap_or(u64::MAX);
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    let start = Instant::now();
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
        tasks.push(tokio::spawn(async move {
            let mut rec = Recorder::new();
            while !stop.load(Ordering::Relaxed) {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= total {
                    break;
                }
                let t0 = Instant::now();
                let res = match limits.request_timeout {
                    None => w.issue(&mut client, seq).await,
                    Some(t) => tokio::time::timeout(t, w.issue(&mut client, seq))
                        .await
                        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded(TIMEOUT_MSG))),
                };
                let us = t0.elapsed().as_micros() as u64;
                match res {
                    Ok(()) => rec.record_ok(us),
                    Err(status) => rec.record_err(status_message(&status)),
                }
            }
            rec
        }));
    }

    let mut recorder = Recorder::new();
    for t in tasks {
        match t.await {
            Ok(rec) => recorder.merge(&rec),
            Err(e) => recorder.record_err(format!("client task failed: {e}")),
        }
    }
    let elapsed = start.elapsed();
    if let Some(t) = timer {
        t.abort();
    }
    Outcome { recorder, elapsed }
}
