//! `lease-grant` and `lease-keepalive`, plus the lease steps `lease-expire` shares with
//! them: granting N leases, renewing them on keep-alive streams, revoking them.
//!
//! A keep-alive stream carries one renewal at a time (send, then wait for its answer), so
//! a renewal's latency is the round trip of one `LeaseKeepAliveRequest`; concurrency comes
//! from the number of streams (`--clients`), like unary requests from the number of clients.
//! The stream is opened lazily by the first renewal (an etcd server sends the response
//! headers only with the first answer) and reopened after an error.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ballast_proto::etcdserverpb::{
    kv_client::KvClient, lease_client::LeaseClient, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseRevokeRequest, PutRequest,
};
use serde_json::json;
use tokio::sync::{mpsc, watch as signal};
use tokio::task::JoinHandle;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::{connect_n, measure, setup_run, Run, Target};
use crate::cli::{GlobalArgs, LeaseGrantArgs, LeaseKeepaliveArgs, LeaseSetupArgs};
use crate::keys::random_value;
use crate::report::Recorder;
use crate::runner::{Limits, Workload};
use crate::transport::Conn;

pub fn lease_client(conn: &Conn) -> LeaseClient<Conn> {
    LeaseClient::with_origin(conn.clone(), conn.origin())
}

/// `lease-grant`: grant leases, optionally attaching a key to each.
pub async fn run_grant(a: &LeaseGrantArgs, g: &GlobalArgs, target: &Target) -> Result<Run, String> {
    let attach = a.attach.then(|| Attach {
        prefix: a.key_prefix.as_bytes().to_vec(),
        value: random_value(a.val_size),
    });
    let w = Arc::new(GrantWorkload::new(a.ttl, attach));
    let conns = connect_n(target, g.conns as usize, g).await?;
    let clients = g.clients as usize;
    let m = measure(w.clone(), &conns, clients, g.limits(), target.pid).await;
    let mut run = Run::of(m, conns.len(), clients);
    run.unit = "grants";
    run.details
        .insert("granted_ttl_s".into(), w.granted_ttl().into());
    cleanup(&a.setup, &conns, w.take_granted(), g.limits(), &mut run).await;
    Ok(run)
}

/// `lease-keepalive`: grant `--leases` leases, then renew them round-robin.
pub async fn run_keepalive(
    a: &LeaseKeepaliveArgs,
    g: &GlobalArgs,
    target: &Target,
) -> Result<Run, String> {
    let conns = connect_n(target, g.conns as usize, g).await?;
    let limits = g.limits();
    let granted = grant_leases(
        &conns,
        a.leases,
        a.ttl,
        a.setup.setup_clients as usize,
        limits,
    )
    .await?;
    let w = Arc::new(KeepAliveWorkload::new(granted.ids.clone()));
    let clients = g.clients as usize;
    let m = measure(w, &conns, clients, limits, target.pid).await;
    let mut run = Run::of(m, conns.len(), clients);
    run.unit = "keep-alives";
    run.details.insert(
        "grant".into(),
        json!({
            "leases": a.leases,
            "ttl_s": granted.ttl,
            "elapsed_s": granted.elapsed.as_secs_f64(),
            "per_s": a.leases as f64 / granted.elapsed.as_secs_f64().max(1e-9),
        }),
    );
    cleanup(&a.setup, &conns, granted.ids, limits, &mut run).await;
    Ok(run)
}

/// Revokes `ids` after a run (not measured) unless --keep-leases; the outcome goes into
/// the details, failures included (a lease that expired meanwhile is not an error of the
/// benchmark itself).
async fn cleanup(s: &LeaseSetupArgs, conns: &[Conn], ids: Vec<i64>, limits: Limits, run: &mut Run) {
    if s.keep_leases || ids.is_empty() {
        return;
    }
    let (rec, elapsed) = revoke_leases(conns, ids, s.setup_clients as usize, limits).await;
    run.details.insert(
        "cleanup_revoke".into(),
        rec.summary_json(elapsed.as_secs_f64()),
    );
}

/// Leases granted by [`grant_leases`].
pub struct Granted {
    pub ids: Vec<i64>,
    /// The TTL the server granted (it may raise a short one to its minimum).
    pub ttl: i64,
    pub elapsed: Duration,
}

/// Grants `n` leases with `ttl` seconds (not measured) with `clients` concurrent requests;
/// any error aborts the benchmark.
pub async fn grant_leases(
    conns: &[Conn],
    n: u64,
    ttl: i64,
    clients: usize,
    limits: Limits,
) -> Result<Granted, String> {
    grant_leases_kept(conns, n, ttl, clients, limits, None).await
}

/// [`grant_leases`], handing every lease to `keeper` as soon as it is granted.
pub async fn grant_leases_kept(
    conns: &[Conn],
    n: u64,
    ttl: i64,
    clients: usize,
    limits: Limits,
    keeper: Option<&Keeper>,
) -> Result<Granted, String> {
    let mut w = GrantWorkload::new(ttl, None);
    w.keeper = keeper.map(|k| k.granted.clone());
    let w = Arc::new(w);
    let o = setup_run(w.clone(), conns, clients, n, limits, "granting the leases").await?;
    Ok(Granted {
        ids: w.take_granted(),
        ttl: w.granted_ttl(),
        elapsed: o.elapsed,
    })
}

/// Revokes every lease of `ids` with `clients` concurrent requests; returns the revokes'
/// latencies and errors, and how long it took.
pub async fn revoke_leases(
    conns: &[Conn],
    ids: Vec<i64>,
    clients: usize,
    limits: Limits,
) -> (Recorder, Duration) {
    let n = ids.len() as u64;
    let limits = Limits {
        total: Some(n),
        duration: None,
        rate: None,
        ..limits
    };
    let w = Arc::new(RevokeWorkload { ids });
    let o = crate::runner::run(w, conns, clients.clamp(1, n.max(1) as usize), limits).await;
    (o.recorder, o.elapsed)
}

/// A key put with each granted lease (`lease-grant --attach`).
pub struct Attach {
    prefix: Vec<u8>,
    value: Vec<u8>,
}

/// Each request grants one lease (server-chosen id) and, with [`Attach`], puts
/// `<prefix><id in hex>` with it. The ids are collected for the cleanup.
pub struct GrantWorkload {
    ttl: i64,
    attach: Option<Attach>,
    /// (request number, lease id) of every grant.
    granted: Mutex<Vec<(u64, i64)>>,
    granted_ttl: AtomicI64,
    /// Where a [`Keeper`] picks up each lease when it is granted.
    keeper: Option<GrantLog>,
}

pub struct GrantClient {
    lease: LeaseClient<Conn>,
    kv: KvClient<Conn>,
    granted: Vec<(u64, i64)>,
}

impl GrantWorkload {
    pub fn new(ttl: i64, attach: Option<Attach>) -> Self {
        Self {
            ttl,
            attach,
            granted: Mutex::new(Vec::new()),
            granted_ttl: AtomicI64::new(0),
            keeper: None,
        }
    }

    /// The ids granted so far (by clients that finished), in request order, which is
    /// about the order they were granted in.
    pub fn take_granted(&self) -> Vec<i64> {
        let mut all = std::mem::take(&mut *lock(&self.granted));
        all.sort_unstable();
        all.into_iter().map(|(_, id)| id).collect()
    }

    /// The largest TTL the server answered.
    pub fn granted_ttl(&self) -> i64 {
        self.granted_ttl.load(Ordering::Relaxed)
    }
}

impl Workload for GrantWorkload {
    type Client = GrantClient;

    fn new_client(&self, conn: Conn, _index: usize) -> GrantClient {
        GrantClient {
            lease: lease_client(&conn),
            kv: KvClient::with_origin(conn.clone(), conn.origin()),
            granted: Vec::new(),
        }
    }

    async fn issue(&self, c: &mut GrantClient, seq: u64) -> Result<(), Status> {
        let resp = c
            .lease
            .lease_grant(LeaseGrantRequest {
                ttl: self.ttl,
                id: 0,
            })
            .await?
            .into_inner();
        if !resp.error.is_empty() {
            return Err(Status::unknown(format!("lease grant: {}", resp.error)));
        }
        c.granted.push((seq, resp.id));
        if let Some(k) = &self.keeper {
            lock(k).push((resp.id, Instant::now()));
        }
        self.granted_ttl.fetch_max(resp.ttl, Ordering::Relaxed);
        if let Some(a) = &self.attach {
            let mut key = a.prefix.clone();
            key.extend_from_slice(format!("{:016x}", resp.id).as_bytes());
            c.kv.put(PutRequest {
                key,
                value: a.value.clone(),
                lease: resp.id,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }

    fn finish(&self, c: GrantClient) {
        lock(&self.granted).extend(c.granted);
    }
}

/// Request `seq` renews lease `ids[seq mod len]` on the client's keep-alive stream.
pub struct KeepAliveWorkload {
    ids: Vec<i64>,
    /// How often a renewal answered `Unavailable` is tried again (0 when measuring).
    retries: u32,
}

impl KeepAliveWorkload {
    pub fn new(ids: Vec<i64>) -> Self {
        assert!(!ids.is_empty(), "keep-alive needs at least one lease");
        Self { ids, retries: 0 }
    }

    pub fn with_retries(self, retries: u32) -> Self {
        Self { retries, ..self }
    }

    async fn renew_once(&self, c: &mut KeepAliveClient, id: i64) -> Result<(), Status> {
        let resp = match c.renew(id).await {
            Ok(r) => r,
            Err(e) => {
                c.stream = None;
                return Err(e);
            }
        };
        if resp.id != id {
            c.stream = None;
            return Err(Status::internal(
                "a keep-alive was answered for another lease",
            ));
        }
        if resp.ttl <= 0 {
            // etcd answers an unknown or expired lease with TTL 0 rather than an error.
            return Err(Status::not_found(
                "requested lease not found (keep-alive answered TTL 0)",
            ));
        }
        Ok(())
    }
}

pub struct KeepAliveClient {
    lease: LeaseClient<Conn>,
    stream: Option<KeepAliveStream>,
    /// A renewal was sent and its answer not read: the request was abandoned (timed out),
    /// and its late answer must not be taken for the next one's.
    pending: bool,
}

struct KeepAliveStream {
    /// Kept while the stream is in use: dropping it ends the request side.
    requests: mpsc::Sender<LeaseKeepAliveRequest>,
    responses: Streaming<LeaseKeepAliveResponse>,
}

impl KeepAliveClient {
    /// Sends one renewal and waits for its answer, opening the stream first if needed.
    async fn renew(&mut self, id: i64) -> Result<LeaseKeepAliveResponse, Status> {
        if std::mem::replace(&mut self.pending, true) {
            self.stream = None;
        }
        let answer = self.send_and_receive(id).await;
        self.pending = false;
        answer
    }

    async fn send_and_receive(&mut self, id: i64) -> Result<LeaseKeepAliveResponse, Status> {
        let req = LeaseKeepAliveRequest { id };
        let answer = match &mut self.stream {
            Some(s) => {
                s.requests
                    .send(req)
                    .await
                    .map_err(|_| Status::unavailable("keep-alive stream closed"))?;
                s.responses.message().await?
            }
            None => {
                let (requests, rx) = mpsc::channel(4);
                // Cannot fail: the receiver is right here and the channel is empty.
                let _ = requests.try_send(req);
                let mut responses = self
                    .lease
                    .lease_keep_alive(ReceiverStream::new(rx))
                    .await?
                    .into_inner();
                let first = responses.message().await?;
                self.stream = Some(KeepAliveStream {
                    requests,
                    responses,
                });
                first
            }
        };
        answer.ok_or_else(|| Status::unavailable("keep-alive stream ended by the server"))
    }
}

impl Workload for KeepAliveWorkload {
    type Client = KeepAliveClient;

    fn new_client(&self, conn: Conn, _index: usize) -> KeepAliveClient {
        KeepAliveClient {
            lease: lease_client(&conn),
            stream: None,
            pending: false,
        }
    }

    async fn issue(&self, c: &mut KeepAliveClient, seq: u64) -> Result<(), Status> {
        let id = self.ids[(seq % self.ids.len() as u64) as usize];
        let mut tries = 0;
        loop {
            match self.renew_once(c, id).await {
                Err(e) if e.code() == tonic::Code::Unavailable && tries < self.retries => {
                    tries += 1;
                }
                other => return other,
            }
        }
    }
}

/// Request `seq` revokes lease `ids[seq]`.
pub struct RevokeWorkload {
    ids: Vec<i64>,
}

impl Workload for RevokeWorkload {
    type Client = LeaseClient<Conn>;

    fn new_client(&self, conn: Conn, _index: usize) -> LeaseClient<Conn> {
        lease_client(&conn)
    }

    async fn issue(&self, c: &mut LeaseClient<Conn>, seq: u64) -> Result<(), Status> {
        let id = self.ids[(seq % self.ids.len() as u64) as usize];
        c.lease_revoke(LeaseRevokeRequest { id }).await.map(drop)
    }
}

/// Leases as they are granted: (id, when), in grant order.
type GrantLog = Arc<Mutex<Vec<(i64, Instant)>>>;

/// A poisoned lock only means another client task panicked; its data is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps leases alive while a long setup runs: every lease handed to it (in grant order)
/// is renewed once two thirds of its TTL have passed since its grant or last renewal, over
/// `streams` keep-alive streams, until [`Keeper::stop`]. Leases granted early thus survive however
/// long granting and attaching take, and `lease-expire`'s TTL only has to cover the time
/// from its final renewal sweep to the expiry.
pub struct Keeper {
    granted: GrantLog,
    stop: signal::Sender<bool>,
    tasks: Vec<JoinHandle<Recorder>>,
}

impl Keeper {
    /// Starts `streams` renewing tasks (stream i on connection i mod len).
    pub fn start(conns: &[Conn], streams: usize, ttl: Duration) -> Self {
        let granted = Arc::new(Mutex::new(Vec::new()));
        let (stop, stop_rx) = signal::channel(false);
        let streams = streams.max(1);
        let tasks = (0..streams)
            .map(|k| {
                let mut client = KeepAliveClient {
                    lease: lease_client(&conns[k % conns.len()]),
                    stream: None,
                    pending: false,
                };
                let (granted, mut stop) = (granted.clone(), stop_rx.clone());
                tokio::spawn(async move {
                    let mut rec = Recorder::new();
                    // This task's leases (every streams-th), earliest renewal due first.
                    let mut due = BinaryHeap::new();
                    let mut next = k;
                    loop {
                        {
                            let all = lock(&granted);
                            while next < all.len() {
                                let (id, at) = all[next];
                                due.push(Reverse((at + ttl * 2 / 3, id)));
                                next += streams;
                            }
                        }
                        let wake = match due.peek() {
                            Some(Reverse((at, _))) => *at,
                            None => Instant::now() + Duration::from_millis(100),
                        };
                        tokio::select! {
                            _ = stop.changed() => return rec,
                            _ = tokio::time::sleep_until(wake.into()) => {}
                        }
                        let Some(Reverse((at, id))) = due.peek().copied() else {
                            continue;
                        };
                        if at > Instant::now() {
                            continue;
                        }
                        due.pop();
                        let t0 = Instant::now();
                        let answer = tokio::select! {
                            _ = stop.changed() => return rec,
                            a = client.renew(id) => a,
                        };
                        match answer {
                            Ok(r) if r.ttl > 0 => rec.record_ok(t0.elapsed().as_micros() as u64),
                            Ok(_) => rec.record_err("lease expired before its renewal".into()),
                            Err(e) => {
                                client.stream = None;
                                rec.record_err(crate::report::status_message(&e));
                            }
                        }
                        due.push(Reverse((Instant::now() + ttl * 2 / 3, id)));
                    }
                })
            })
            .collect();
        Self {
            granted,
            stop,
            tasks,
        }
    }

    /// Stops renewing; returns the renewals made (latencies and errors). Dropping the
    /// keeper stops it too.
    pub async fn stop(self) -> Recorder {
        let _ = self.stop.send(true);
        let mut rec = Recorder::new();
        for t in self.tasks {
            match t.await {
                Ok(r) => rec.merge(&r),
                Err(e) => rec.record_err(format!("keeper task failed: {e}")),
            }
        }
        rec
    }
}
