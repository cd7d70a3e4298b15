//! The benchmarks: one [`Workload`](crate::runner::Workload) per request kind, and
//! [`run_bench`], which connects, prepares (prefill), measures and builds the report.
//! The KV benchmarks are a workload each; `watch`, `lease` (grant, keep-alive) and
//! `lease_expire` also set things up around the measurement and return their own [`Run`].
//!
//! Extension point: add a module here, a variant to [`crate::cli::BenchCommand`], and an
//! arm to [`run_bench`].

mod lease;
mod lease_expire;
mod put;
mod range;
mod txn_put;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use ballast_proto::etcdserverpb::kv_client::KvClient;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::cli::{BenchCommand, GlobalArgs};
use crate::endpoint::{connect_all, ConnectOptions};
use crate::procfs;
use crate::report::{Recorder, Report, RunMeta};
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

/// What one benchmark hands back for its report.
pub struct Run {
    /// The main measurement: the report's counts, throughput and latencies.
    pub recorder: Recorder,
    pub elapsed: Duration,
    pub conns: usize,
    pub clients: usize,
    /// What `recorder` counts (`requests` when empty).
    pub unit: &'static str,
    pub cpu: CpuUse,
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl Run {
    fn of(m: Measured, conns: usize, clients: usize) -> Self {
        Self {
            recorder: m.outcome.recorder,
            elapsed: m.outcome.elapsed,
            conns,
            clients,
            unit: "",
            cpu: m.cpu,
            details: serde_json::Map::new(),
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
    let connect = || connect_n(target, g.conns as usize, g);

    // Each arm validates its flags (building the workload) before dialing.
    let run = match cmd {
        BenchCommand::Put(a) => {
            let w = Arc::new(PutWorkload::new(a)?);
            let conns = connect().await?;
            let compactor = Compactor::start(a, conns[0].clone());
            let m = measure(w, &conns, clients, limits, target.pid).await;
            drop(compactor);
            Run::of(m, conns.len(), clients)
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
            let m = measure(w, &conns, clients, limits, target.pid).await;
            Run::of(m, conns.len(), clients)
        }
        BenchCommand::TxnPut(a) => {
            let w = Arc::new(TxnPutWorkload::new(a)?);
            let conns = connect().await?;
            let m = measure(w, &conns, clients, limits, target.pid).await;
            Run::of(m, conns.len(), clients)
        }
        BenchCommand::Watch(a) => watch::run(a, g, target).await?,
        BenchCommand::LeaseKeepalive(a) => lease::run_keepalive(a, g, target).await?,
        BenchCommand::LeaseGrant(a) => lease::run_grant(a, g, target).await?,
        BenchCommand::LeaseExpire(a) => lease_expire::run(a, g, target).await?,
    };

    let meta = RunMeta {
        label: target.label.clone(),
        command: cmd.name().to_string(),
        unit: run.unit.to_string(),
        endpoints: target.endpoints.clone(),
        conns: run.conns,
        clients: run.clients,
        params: params_json(cmd, g),
    };
    let mut report = Report::new(meta, run.recorder, run.elapsed.as_secs_f64());
    report.client_cpu_s = run.cpu.client_s;
    report.target_cpu_s = run.cpu.target_s;
    report.details = run.details;
    if let Some(pid) = target.pid {
        let m =
            procfs::memory(pid).map_err(|e| format!("--target-pid {pid} after the run: {e}"))?;
        report.rss_kib = Some(m.rss_kib);
        report.peak_rss_kib = Some(m.peak_rss_kib);
    }
    Ok(report)
}

/// Opens `n` connections round-robin over the target's endpoints.
async fn connect_n(target: &Target, n: usize, g: &GlobalArgs) -> Result<Vec<Conn>, String> {
    let opts = ConnectOptions {
        dial_timeout: g.dial_timeout,
    };
    connect_all(&target.endpoints, n, &opts).await
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
    setup_run(fill, conns, clients, n, limits, "--prefill").await?;
    Ok(())
}

/// Runs `total` requests of an unmeasured setup or cleanup step (`what` names it in the
/// error); any failed request aborts the benchmark.
async fn setup_run<W: Workload>(
    w: Arc<W>,
    conns: &[Conn],
    clients: usize,
    total: u64,
    limits: Limits,
    what: &str,
) -> Result<Outcome, String> {
    let limits = Limits {
        total: Some(total),
        duration: None,
        rate: None,
        ..limits
    };
    let clients = clients.clamp(1, total.max(1) as usize);
    let o = runner::run(w, conns, clients, limits).await;
    if o.recorder.failed() > 0 {
        return Err(format!(
            "{what} failed: {} of {total} requests: {}",
            o.recorder.failed(),
            o.recorder.errors_brief(5)
        ));
    }
    Ok(o)
}

struct Measured {
    outcome: Outcome,
    cpu: CpuUse,
}

/// CPU seconds used during a measurement by this tool and by the target.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuUse {
    pub client_s: Option<f64>,
    pub target_s: Option<f64>,
}

/// Starts CPU accounting of this tool and of the target (`pid`); [`CpuMeter::stop`] reads
/// what they used since.
pub struct CpuMeter {
    pid: Option<u32>,
    own0: Option<f64>,
    target0: Option<f64>,
}

impl CpuMeter {
    pub fn start(pid: Option<u32>) -> Self {
        Self {
            pid,
            own0: procfs::cpu_seconds(None).ok(),
            target0: pid.and_then(|p| procfs::cpu_seconds(Some(p)).ok()),
        }
    }

    pub fn stop(&self) -> CpuUse {
        let delta =
            |before: Option<f64>, who: Option<u32>| Some(procfs::cpu_seconds(who).ok()? - before?);
        CpuUse {
            client_s: delta(self.own0, None),
            target_s: self.pid.and_then(|p| delta(self.target0, Some(p))),
        }
    }
}

/// Runs the measured phase, with CPU accounting of this tool and of the target around it.
async fn measure<W: Workload>(
    w: Arc<W>,
    conns: &[Conn],
    clients: usize,
    limits: Limits,
    pid: Option<u32>,
) -> Measured {
    let meter = CpuMeter::start(pid);
    let outcome = runner::run(w, conns, clients, limits).await;
    Measured {
        outcome,
        cpu: meter.stop(),
    }
}
