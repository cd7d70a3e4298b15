//! `lease-expire`: put latency while many leases, and the keys attached to them, expire
//! (or are revoked) together.
//!
//! Timeline: grant `--leases` leases and attach `--keys-per-lease` keys to each (setup, not
//! measured, with a [`Keeper`] renewing the leases that would otherwise expire before the
//! setup ends); start a detector that sees the lease keys go (a watcher on the key prefix
//! counting delete events, or a count-only Range poll); renew every lease once (the
//! sweep), so that all expire within the sweep's duration of `deadline = sweep start +
//! TTL`; run the put workload from then on, with every put's send time and latency kept;
//! stop it `--tail` after the last lease key is gone. With `--revoke` there is no sweep:
//! the leases get `--ttl` + 60 s and the tool revokes them at `deadline = now + --ttl`.
//!
//! The puts in flight at any moment of `[deadline, last deletion]` are the report's main
//! numbers (the expiry window); those answered before it are the baseline, those sent
//! after it the recovery.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_proto::etcdserverpb::{
    kv_client::KvClient, request_op, watch_create_request::FilterType, PutRequest, RangeRequest,
    RequestOp, TxnRequest, WatchCreateRequest,
};
use ballast_proto::mvccpb::event::EventType;
use serde_json::json;
use tokio::sync::watch as signal;
use tokio::task::JoinHandle;
use tonic::Status;

use super::lease::{grant_leases_kept, revoke_leases, KeepAliveWorkload, Keeper};
use super::watch::{await_created, open_watch_stream, WatchStream};
use super::{connect_n, setup_run, CpuMeter, KvState, PutWorkload, Run, Target};
use crate::cli::{ExpiryDetect, GlobalArgs, LeaseExpireArgs, PutArgs};
use crate::clock::{now_ns, ns_at};
use crate::keys::{prefix_range_end, random_value};
use crate::report::{status_message, Recorder};
use crate::runner::{self, Control, Limits, Workload};
use crate::transport::Conn;

/// A renewal of the sweep that fails as unavailable (etcd 3.4 answers so when its applied
/// index lags for more than a second) is retried this many times.
const SWEEP_RETRIES: u32 = 5;

/// With --revoke, leases live this much longer than --ttl so that none expires before the
/// tool revokes it.
const REVOKE_TTL_MARGIN_S: i64 = 60;

pub async fn run(a: &LeaseExpireArgs, g: &GlobalArgs, target: &Target) -> Result<Run, String> {
    let put = Arc::new(PutWorkload::new(&PutArgs {
        key_size: a.put_key_size,
        val_size: a.put_val_size,
        sequential_keys: false,
        key_space_size: a.put_key_space_size,
        compact_interval: Duration::ZERO,
        compact_index_delta: 0,
    })?);
    let total_keys = a
        .leases
        .checked_mul(a.keys_per_lease)
        .ok_or("--leases * --keys-per-lease overflows")?;
    let prefix = a.key_prefix.as_bytes().to_vec();
    if prefix.is_empty() {
        return Err("--key-prefix must not be empty".into());
    }
    let conns = connect_n(target, g.conns as usize, g).await?;
    // The detector has its own connection: its events must not queue behind put answers.
    let detect_conn = connect_n(target, 1, g).await?.remove(0);
    let existing = count_keys(&detect_conn, &prefix).await?;
    if existing > 0 {
        return Err(format!(
            "{existing} keys already exist under --key-prefix {:?}: delete them or pick another prefix",
            a.key_prefix
        ));
    }
    let limits = g.limits();
    let setup = a.setup_clients as usize;

    let lease_ttl = if a.revoke {
        a.ttl + REVOKE_TTL_MARGIN_S
    } else {
        a.ttl
    };
    // Open the watcher first: a server without Watch fails here, before anything is written.
    let detector = Detector::open(a, &detect_conn, &prefix).await?;
    let keeper = Keeper::start(&conns, setup, secs(lease_ttl));
    let granted =
        grant_leases_kept(&conns, a.leases, lease_ttl, setup, limits, Some(&keeper)).await?;
    progress(format_args!(
        "granted {} leases (TTL {} s) in {:.1} s",
        a.leases,
        granted.ttl,
        granted.elapsed.as_secs_f64()
    ));
    let result = async {
        let attach = Arc::new(AttachWorkload {
            ids: granted.ids.clone(),
            per_lease: a.keys_per_lease,
            total_keys,
            txn_ops: a.attach_txn_ops,
            prefix: prefix.clone(),
            value: random_value(a.val_size),
        });
        let txns = attach.txns();
        let attached = setup_run(attach, &conns, setup, txns, limits, "attaching the keys").await?;
        progress(format_args!(
            "attached {total_keys} keys in {:.1} s",
            attached.elapsed.as_secs_f64()
        ));
        let kept = keeper.stop().await;
        if kept.succeeded() > 0 || kept.failed() > 0 {
            progress(format_args!(
                "renewed {} leases while setting up ({} failed)",
                kept.succeeded(),
                kept.failed()
            ));
        }
        let sweep = if a.revoke {
            None
        } else {
            let w =
                Arc::new(KeepAliveWorkload::new(granted.ids.clone()).with_retries(SWEEP_RETRIES));
            let o = setup_run(w, &conns, setup, a.leases, limits, "the renewal sweep")
                .await
                .map_err(|e| {
                    format!(
                        "{e} (granting and attaching took {:.1} s; leases were renewed \
                         meanwhile, {} of those renewals failed)",
                        granted.elapsed.as_secs_f64() + attached.elapsed.as_secs_f64(),
                        kept.failed()
                    )
                })?;
            Some((o.start, o.elapsed))
        };
        Ok::<_, String>((attached.elapsed, kept, sweep))
    }
    .await;
    let (attach_time, kept, sweep) = match result {
        Ok(r) => r,
        Err(e) => {
            // Leave nothing behind that would fail the next run's check of the prefix.
            progress(format_args!("revoking the leases after: {e}"));
            revoke_leases(&conns, granted.ids.clone(), setup, limits).await;
            return Err(e);
        }
    };
    let deadline = match sweep {
        // The server may have raised a short TTL to its minimum.
        Some((started, _)) => started + secs(granted.ttl),
        None => Instant::now() + secs(a.ttl),
    };
    let sweep = sweep.map(|(_, took)| took);
    let deletions = Arc::new(Deletions::default());
    let (stop_detector, stop_rx) = signal::channel(false);
    let detector = detector.spawn(total_keys, deletions.clone(), stop_rx);

    if let Some(d) = sweep {
        progress(format_args!(
            "renewed every lease in {:.1} s",
            d.as_secs_f64()
        ));
    }
    progress(format_args!(
        "putting; the leases {} in {:.1} s",
        if a.revoke { "are revoked" } else { "expire" },
        deadline
            .saturating_duration_since(Instant::now())
            .as_secs_f64()
    ));

    // The put workload runs until we stop it.
    let meter = CpuMeter::start(target.pid);
    let stop_puts = Arc::new(AtomicBool::new(false));
    let clients = g.clients as usize;
    let put_task = {
        let conns = conns.clone();
        let limits = Limits {
            total: None,
            duration: None,
            ..limits
        };
        let control = Control {
            stop: Some(stop_puts.clone()),
            timeline: true,
        };
        tokio::spawn(async move { runner::run_with(put, &conns, clients, limits, control).await })
    };
    let revoke_task = a.revoke.then(|| {
        let (conns, ids) = (conns.clone(), granted.ids.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline.into()).await;
            revoke_leases(&conns, ids, setup, limits).await
        })
    });

    // Wait for the keys to go.
    let give_up = deadline + a.max_window;
    let complete = loop {
        if deletions.count.load(Ordering::Relaxed) >= total_keys {
            break true;
        }
        if Instant::now() >= give_up || detector.is_finished() {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    progress(format_args!(
        "{} of {total_keys} lease keys deleted, {:.1} s after the deadline",
        deletions.count.load(Ordering::Relaxed),
        Instant::now()
            .saturating_duration_since(deadline)
            .as_secs_f64()
    ));
    let deadline_ns = ns_at(deadline);
    let end_ns = if complete {
        deletions.last_ns.load(Ordering::Relaxed)
    } else {
        now_ns()
    };
    tokio::time::sleep(a.tail).await;
    stop_puts.store(true, Ordering::Relaxed);
    let puts = put_task
        .await
        .map_err(|e| format!("put workload failed: {e}"))?;
    let cpu = meter.stop();
    let _ = stop_detector.send(true);
    let detector_error = match detector.await {
        Ok(r) => r.err(),
        Err(e) => Some(format!("detector failed: {e}")),
    };
    let revoked = match revoke_task {
        Some(t) => Some(t.await.map_err(|e| format!("revoke task failed: {e}"))?),
        None => None,
    };

    // Split the puts: in flight at some moment of the window, done before, sent after.
    let start_ns = ns_at(puts.start);
    let (mut before, mut window, mut after) = (Recorder::new(), Recorder::new(), Recorder::new());
    for s in &puts.timeline {
        let sent = start_ns + s.sent_us * 1000;
        let done = sent + s.latency_us * 1000;
        let r = if done < deadline_ns {
            &mut before
        } else if sent <= end_ns {
            &mut window
        } else {
            &mut after
        };
        if s.ok {
            r.record_ok(s.latency_us);
        } else {
            r.record_err("put failed (see details.puts_all)".into());
        }
    }
    let deleted = deletions.count.load(Ordering::Relaxed);
    if !complete {
        window.record_err(format!(
            "lease keys not all deleted within --max-window: {deleted} of {total_keys} seen deleted{}",
            detector_error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ));
    }
    let secs_between = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1e9;
    let after_deadline = |t: u64| (t as f64 - deadline_ns as f64) / 1e9;
    let first = deletions.first_ns.load(Ordering::Relaxed);

    let mut details = serde_json::Map::new();
    details.insert(
        "leases".into(),
        json!({
            "leases": a.leases,
            "keys_per_lease": a.keys_per_lease,
            "keys": total_keys,
            "ttl_s": if a.revoke { a.ttl } else { granted.ttl },
            "ending": if a.revoke { "revoke" } else { "expire" },
            "detect": a.detect,
        }),
    );
    details.insert(
        "setup".into(),
        json!({
            "grant_s": granted.elapsed.as_secs_f64(),
            "attach_s": attach_time.as_secs_f64(),
            "sweep_s": sweep.map(|d| d.as_secs_f64()),
            "renewals_during_setup": kept.succeeded(),
            "renewal_errors_during_setup": kept.failed(),
        }),
    );
    details.insert(
        "expiry".into(),
        json!({
            "complete": complete,
            "keys_deleted": deleted,
            "first_delete_after_deadline_s": (first > 0).then(|| after_deadline(first)),
            "last_delete_after_deadline_s": complete.then(|| after_deadline(end_ns)),
        }),
    );
    details.insert(
        "puts_before".into(),
        before.summary_json(secs_between(start_ns, deadline_ns)),
    );
    details.insert(
        "puts_after".into(),
        after.summary_json(secs_between(
            end_ns,
            start_ns + puts.elapsed.as_nanos() as u64,
        )),
    );
    details.insert(
        "puts_all".into(),
        puts.recorder.summary_json(puts.elapsed.as_secs_f64()),
    );
    if let Some((rec, took)) = revoked {
        window.merge_errors(&rec, "revoke: ");
        details.insert("revoke".into(), rec.summary_json(took.as_secs_f64()));
    }
    Ok(Run {
        recorder: window,
        elapsed: Duration::from_nanos(end_ns.saturating_sub(deadline_ns)),
        conns: conns.len(),
        clients,
        unit: "puts",
        cpu,
        details,
    })
}

/// A line on stderr about the run's progress (the report itself goes to stdout).
fn progress(msg: std::fmt::Arguments) {
    eprintln!("lease-expire: {msg}");
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(s.max(0) as u64)
}

/// How many keys exist under `prefix` (serializable, count only).
async fn count_keys(conn: &Conn, prefix: &[u8]) -> Result<i64, String> {
    KvState::new(conn.clone())
        .kv
        .range(count_request(prefix))
        .await
        .map(|r| r.into_inner().count)
        .map_err(|e| {
            format!(
                "counting the keys under --key-prefix: {}",
                status_message(&e)
            )
        })
}

fn count_request(prefix: &[u8]) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_range_end(prefix),
        count_only: true,
        serializable: true,
        ..Default::default()
    }
}

/// Deletions of lease keys seen so far; times are [`now_ns`], 0 = none yet.
#[derive(Default)]
struct Deletions {
    count: AtomicU64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
}

impl Deletions {
    fn record(&self, n: u64, now: u64) {
        if n == 0 {
            return;
        }
        let _ = self
            .first_ns
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        self.last_ns.fetch_max(now, Ordering::Relaxed);
        self.count.fetch_add(n, Ordering::Relaxed);
    }
}

/// What sees the lease keys go; opened before the setup, started after it.
enum Detector {
    /// A watcher on the prefix that filters out puts.
    Watch(WatchStream),
    /// A count-only Range of the prefix every interval.
    Poll {
        kv: KvClient<Conn>,
        req: RangeRequest,
        interval: Duration,
    },
}

impl Detector {
    async fn open(a: &LeaseExpireArgs, conn: &Conn, prefix: &[u8]) -> Result<Self, String> {
        match a.detect {
            ExpiryDetect::Watch => {
                let create = WatchCreateRequest {
                    key: prefix.to_vec(),
                    range_end: prefix_range_end(prefix),
                    filters: vec![FilterType::Noput as i32],
                    ..Default::default()
                };
                let mut s = open_watch_stream(conn, vec![create])
                    .await
                    .map_err(|e| format!("--detect watch: {}", status_message(&e)))?;
                await_created(&mut s, 1)
                    .await
                    .map_err(|e| format!("--detect watch: {e}"))?;
                Ok(Self::Watch(s))
            }
            ExpiryDetect::Poll => Ok(Self::Poll {
                kv: KvClient::with_origin(conn.clone(), conn.origin()),
                req: count_request(prefix),
                interval: a.poll_interval.max(Duration::from_millis(1)),
            }),
        }
    }

    /// Counts deletions until `stop` is raised; the task ends with an error if it cannot
    /// go on.
    fn spawn(
        self,
        total_keys: u64,
        deletions: Arc<Deletions>,
        mut stop: signal::Receiver<bool>,
    ) -> JoinHandle<Result<(), String>> {
        match self {
            Self::Watch(mut s) => tokio::spawn(async move {
                loop {
                    let msg = tokio::select! {
                        _ = stop.changed() => return Ok(()),
                        m = s.responses.message() => m,
                    };
                    match msg {
                        Ok(Some(r)) if r.canceled => {
                            return Err(format!("watcher canceled: {}", r.cancel_reason))
                        }
                        Ok(Some(r)) => {
                            let n = r
                                .events
                                .iter()
                                .filter(|e| e.r#type == EventType::Delete as i32)
                                .count();
                            deletions.record(n as u64, now_ns());
                        }
                        Ok(None) => return Err("watch stream ended by the server".into()),
                        Err(e) => return Err(status_message(&e)),
                    }
                }
            }),
            Self::Poll {
                mut kv,
                req,
                interval,
            } => tokio::spawn(async move {
                let mut seen = 0;
                loop {
                    tokio::select! {
                        _ = stop.changed() => return Ok(()),
                        _ = tokio::time::sleep(interval) => {}
                    }
                    let left = kv
                        .range(req.clone())
                        .await
                        .map_err(|e| status_message(&e))?
                        .into_inner()
                        .count;
                    let gone = total_keys.saturating_sub(left.max(0) as u64);
                    if gone > seen {
                        deletions.record(gone - seen, now_ns());
                        seen = gone;
                    }
                }
            }),
        }
    }
}

/// Attaches the keys in txns of `txn_ops` puts: key `i` is `<prefix><lease index:08>/<key
/// index:08>` with lease `i / per_lease`, and request `seq` puts keys `[seq * txn_ops,
/// (seq + 1) * txn_ops)` (fewer in the last txn).
struct AttachWorkload {
    ids: Vec<i64>,
    per_lease: u64,
    total_keys: u64,
    txn_ops: u64,
    prefix: Vec<u8>,
    value: Vec<u8>,
}

impl AttachWorkload {
    fn txns(&self) -> u64 {
        self.total_keys.div_ceil(self.txn_ops)
    }

    fn key(&self, i: u64) -> (Vec<u8>, i64) {
        let (lease, k) = (i / self.per_lease, i % self.per_lease);
        let mut key = self.prefix.clone();
        key.extend_from_slice(format!("{lease:08}/{k:08}").as_bytes());
        (key, self.ids[lease as usize % self.ids.len()])
    }

    fn request(&self, seq: u64) -> TxnRequest {
        let first = seq * self.txn_ops;
        let last = (first + self.txn_ops).min(self.total_keys);
        let success = (first..last)
            .map(|i| {
                let (key, lease) = self.key(i);
                RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key,
                        value: self.value.clone(),
                        lease,
                        ..Default::default()
                    })),
                }
            })
            .collect();
        TxnRequest {
            success,
            ..Default::default()
        }
    }
}

impl Workload for AttachWorkload {
    type Client = KvState;

    fn new_client(&self, conn: Conn, _index: usize) -> KvState {
        KvState::new(conn)
    }

    async fn issue(&self, c: &mut KvState, seq: u64) -> Result<(), Status> {
        c.kv.txn(self.request(seq)).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_keys_follow_their_lease() {
        let w = AttachWorkload {
            ids: vec![10, 20],
            per_lease: 3,
            total_keys: 6,
            txn_ops: 4,
            prefix: b"p/".to_vec(),
            value: vec![],
        };
        assert_eq!(w.key(0), (b"p/00000000/00000000".to_vec(), 10));
        assert_eq!(w.key(2), (b"p/00000000/00000002".to_vec(), 10));
        assert_eq!(w.key(3), (b"p/00000001/00000000".to_vec(), 20));
        assert_eq!(w.key(5), (b"p/00000001/00000002".to_vec(), 20));
        assert_eq!(w.txns(), 2);
        let puts = |seq| -> Vec<(Vec<u8>, i64)> {
            w.request(seq)
                .success
                .into_iter()
                .map(|op| match op.request {
                    Some(request_op::Request::RequestPut(p)) => (p.key, p.lease),
                    other => panic!("not a put: {other:?}"),
                })
                .collect()
        };
        let (a, b) = (puts(0), puts(1));
        assert_eq!((a.len(), b.len()), (4, 2));
        assert_eq!(a[3], w.key(3));
        assert_eq!(b[1], w.key(5));
    }

    #[test]
    fn deletions_keep_first_and_last() {
        let d = Deletions::default();
        d.record(0, 5);
        assert_eq!(d.first_ns.load(Ordering::Relaxed), 0);
        d.record(2, 10);
        d.record(3, 30);
        assert_eq!(d.count.load(Ordering::Relaxed), 5);
        assert_eq!(d.first_ns.load(Ordering::Relaxed), 10);
        assert_eq!(d.last_ns.load(Ordering::Relaxed), 30);
    }
}
