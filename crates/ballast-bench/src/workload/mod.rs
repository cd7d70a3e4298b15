//! The benchmarks: one [`Workload`](crate::runner::Workload) per request kind, and
//! [`run_bench`], which connects, prepares (prefill), measures and builds the report.
//!
//! Extension point: add a module here (e.g. `watch`, `lease`), a variant to
//! [`crate::cli::BenchCommand`], and an arm to [`run_bench`].

mod put;
mod range;
mod txn_put;

use std::sync::Arc;

use ballast_proto::etcdserverpb::kv_client::KvClient;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::cli::{BenchCommand, GlobalArgs};
use crate::endpoint::{connect_all, ConnectOptions};
use crate::procfs;
use crate::report::{Report, RunMeta};
use crate::runner::{self, Limits, Outcome, Workload};
use crate::transport::Conn;

pub use put::{Compactor, KeyListPut, PutWorkload};
pub use range::RangeWorkload;
pub use txn_put::TxnPutWorkload;

/// The server under test for one run.
#[derive(Clone, Debug)]
pub struct Target {
    pub endpoints: Vec<String>,
    pub label: Option<String>,
    /// Its process, for RSS and CPU (must be on this machine).
    pub pid: Option<u32>,
}

/// A KV stub plus a private RNG: the client state of every KV workload.
pub struct KvState {
    pub kv: KvClient<Conn>,
    pub rng: StdRng,
}

impl KvState {
    pub fn new(conn: Conn) -> Self {
        Self {
            kv: KvClient::with_origin(conn.clone(), conn.origin())
                .max_decoding_message_size(usize::MAX),
            rng: StdRng::from_rng(&mut rand::rng()),
        }
    }
}

/// Runs one benchmark against `target` and returns its report.
pub async fn run_bench(
    cmd: &BenchCommand,
    g: &GlobalArgs,
    target: &Target,
) -> Result<Report, String> {
    if let Some(pid) = target.pid {
        procfs::memory(pid).map_err(|e| format!("--target-pid {pid}: {e}"))?;
    }
    let clients = g.clients as usize;
    let limits = g.limits();
    let opts = ConnectOptions {
        dial_timeout: g.dial_timeout,
    };
    let connect = || connect_all(&target.endpoints, g.conns as usize, &opts);

    // Each arm validates its flags (building the workload) before dialing.
    let (measured, conns) = match cmd {
        BenchCommand::Put(a) => {
            let w = Arc::new(PutWorkload::new(a)?);
            let conns = connect().await?;
            let compactor = Compactor::start(a, conns[0].clone());
            let m = measure(w, &conns, clients, limits, target.pid).await;
            drop(compactor);
            (m, conns.len())
        }
        BenchCommand::Range(a) => {
            let w = Arc::new(RangeWorkload::new(a)?);
            let conns = connect().await?;
            if a.prefill > 0 {
                prefill(
                    w.prefill_keys(a.prefill),
                    a.prefill_val_size,
                    &conns,
                    clients,
                    limits,
                )
                .await?;
            }
            (
                measure(w, &conns, clients, limits, target.pid).await,
                conns.len(),
            )
        }
        BenchCommand::TxnPut(a) => {
            let w = Arc::new(TxnPutWorkload::new(a)?);
            let conns = connect().await?;
            (
                measure(w, &conns, clients, limits, target.pid).await,
                conns.len(),
            )
        }
    };

    let meta = RunMeta {
        label: target.label.clone(),
        command: cmd.name().to_string(),
        endpoints: target.endpoints.clone(),
        conns,
        clients,
        params: params_json(cmd, g),
    };
    let mut report = Report::new(
        meta,
        measured.outcome.recorder,
        measured.outcome.elapsed.as_secs_f64(),
    );
    report.client_cpu_s = measured.client_cpu_s;
    report.target_cpu_s = measured.target_cpu_s;
    if let Some(pid) = target.pid {
        let m =
            procfs::memory(pid).map_err(|e| format!("--target-pid {pid} after the run: {e}"))?;
        report.rss_kib = Some(m.rss_kib);
        report.peak_rss_kib = Some(m.peak_rss_kib);
    }
    Ok(report)
}

fn params_json(cmd: &BenchCommand, g: &GlobalArgs) -> serde_json::Value {
    let mut p = cmd.params();
    if let Some(obj) = p.as_object_mut() {
        let limits = g.limits();
        obj.insert("requested_total".into(), limits.total.into());
        obj.insert(
            "duration_s".into(),
            limits.duration.map(|d| d.as_secs_f64()).into(),
        );
    }
    p
}

/// Writes `keys` once each (not measured); any error aborts the benchmark.
async fn prefill(
    keys: Vec<Vec<u8>>,
    val_size: usize,
    conns: &[Conn],
    clients: usize,
    limits: Limits,
) -> Result<(), String> {
    let n = keys.len() as u64;
    let fill = Arc::new(KeyListPut::new(keys, val_size));
    let limits = Limits {
        total: Some(n),
        duration: None,
        ..limits
    };
    let o = runner::run(fill, conns, clients.min(n as usize), limits).await;
    if o.recorder.failed() > 0 {
        let r = Report::new(RunMeta::default(), o.recorder, 0.0);
        return Err(format!("--prefill failed: {:?}", r.error_dist));
    }
    Ok(())
}

struct Measured {
    outcome: Outcome,
    client_cpu_s: Option<f64>,
    target_cpu_s: Option<f64>,
}

/// Runs the measured phase, with CPU accounting of this tool and of the target around it.
async fn measure<W: Workload>(
    w: Arc<W>,
    conns: &[Conn],
    clients: usize,
    limits: Limits,
    pid: Option<u32>,
) -> Measured {
    let self0 = procfs::cpu_seconds(None).ok();
    let target0 = pid.and_then(|p| procfs::cpu_seconds(Some(p)).ok());
    let outcome = runner::run(w, conns, clients, limits).await;
    let delta =
        |before: Option<f64>, who: Option<u32>| Some(procfs::cpu_seconds(who).ok()? - before?);
    Measured {
        outcome,
        client_cpu_s: delta(self0, None),
        target_cpu_s: pid.and_then(|p| delta(target0, Some(p))),
    }
}
