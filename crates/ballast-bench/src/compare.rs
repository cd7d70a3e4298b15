//! `compare`: the same benchmark against two targets in turn (A, then B — e.g. etcd then
//! Ballast on the same machine), and a side-by-side table with B/A ratios. The runs are
//! sequential so they never compete for CPU; run each side on a fresh server for fairness.

use std::fmt::Write as _;

use serde_json::json;

use crate::cli::{CompareArgs, GlobalArgs};
use crate::report::Report;
use crate::workload::{run_bench, Target};

/// Both sides' reports.
pub struct Comparison {
    pub a: Report,
    pub b: Report,
}

pub async fn run(c: &CompareArgs, g: &GlobalArgs) -> Result<Comparison, String> {
    let side = |endpoints: &[String], label: &str, pid| Target {
        endpoints: endpoints.to_vec(),
        label: Some(label.to_string()),
        pid,
    };
    let a = run_bench(&c.bench, g, &side(&c.a_endpoints.0, &c.a_label, c.a_pid))
        .await
        .map_err(|e| format!("{}: {e}", c.a_label))?;
    if !c.pause.is_zero() {
        tokio::time::sleep(c.pause).await;
    }
    let b = run_bench(&c.bench, g, &side(&c.b_endpoints.0, &c.b_label, c.b_pid))
        .await
        .map_err(|e| format!("{}: {e}", c.b_label))?;
    Ok(Comparison { a, b })
}

/// `b / a`, or `None` when it has no meaning (missing value or `a == 0`).
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if a != 0.0 => Some(b / a),
        _ => None,
    }
}

/// Per-request CPU of the target in microseconds.
fn cpu_us_per_req(r: &Report) -> Option<f64> {
    let cpu = r.target_cpu_s?;
    (r.total > 0).then(|| cpu * 1e6 / r.total as f64)
}

struct Row {
    name: &'static str,
    a: Option<f64>,
    b: Option<f64>,
    decimals: usize,
    /// Whether a larger value is better (throughput) or worse (latency, memory).
    higher_is_better: bool,
}

impl Comparison {
    fn rows(&self) -> Vec<Row> {
        let (a, b) = (&self.a, &self.b);
        let row = |name, f: &dyn Fn(&Report) -> Option<f64>, decimals, higher_is_better| Row {
            name,
            a: f(a),
            b: f(b),
            decimals,
            higher_is_better,
        };
        vec![
            row("throughput (req/s)", &|r| Some(r.throughput), 1, true),
            row("latency avg (ms)", &|r| Some(r.latency_ms.avg), 4, false),
            row("latency p50 (ms)", &|r| Some(r.latency_ms.p50), 4, false),
            row("latency p90 (ms)", &|r| Some(r.latency_ms.p90), 4, false),
            row("latency p99 (ms)", &|r| Some(r.latency_ms.p99), 4, false),
            row("latency p99.9 (ms)", &|r| Some(r.latency_ms.p999), 4, false),
            row("latency max (ms)", &|r| Some(r.latency_ms.max), 4, false),
            row("errors", &|r| Some(r.errors as f64), 0, false),
            row(
                "server RSS (KiB)",
                &|r| r.rss_kib.map(|v| v as f64),
                0,
                false,
            ),
            row(
                "server peak RSS (KiB)",
                &|r| r.peak_rss_kib.map(|v| v as f64),
                0,
                false,
            ),
            row("server CPU (us/req)", &cpu_us_per_req, 1, false),
        ]
    }

    pub fn to_text(&self) -> String {
        let (la, lb) = (label(&self.a, "a"), label(&self.b, "b"));
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\n{} — {} conns, {} clients, {} vs {} requests",
            self.a.command, self.a.conns, self.a.clients, self.a.total, self.b.total
        );
        let _ = writeln!(
            s,
            "{:<24}{:>16}{:>16}{:>10}",
            "",
            la,
            lb,
            format!("{lb}/{la}")
        );
        for r in self.rows() {
            if r.a.is_none() && r.b.is_none() {
                continue;
            }
            let cell =
                |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.*}", r.decimals));
            let rat = ratio(r.a, r.b).map_or("-".to_string(), |x| format!("{x:.2}x"));
            let better = match ratio(r.a, r.b) {
                Some(x) if (x > 1.0) == r.higher_is_better && x != 1.0 => " +",
                _ => "",
            };
            let _ = writeln!(
                s,
                "{:<24}{:>16}{:>16}{:>10}{better}",
                r.name,
                cell(r.a),
                cell(r.b),
                rat
            );
        }
        let _ = writeln!(s, "(+ marks rows where {lb} is better than {la})");
        s
    }

    pub fn to_json(&self) -> serde_json::Value {
        let (a, b) = (&self.a, &self.b);
        let f = |x: Option<f64>| x.map_or(serde_json::Value::Null, |v| json!(v));
        json!({
            "command": a.command,
            "a": a.to_json(),
            "b": b.to_json(),
            "ratios": {
                "throughput": f(ratio(Some(a.throughput), Some(b.throughput))),
                "avg": f(ratio(Some(a.latency_ms.avg), Some(b.latency_ms.avg))),
                "p50": f(ratio(Some(a.latency_ms.p50), Some(b.latency_ms.p50))),
                "p99": f(ratio(Some(a.latency_ms.p99), Some(b.latency_ms.p99))),
                "p999": f(ratio(Some(a.latency_ms.p999), Some(b.latency_ms.p999))),
                "peak_rss_kib": f(ratio(a.peak_rss_kib.map(|v| v as f64), b.peak_rss_kib.map(|v| v as f64))),
                "cpu_per_req": f(ratio(cpu_us_per_req(a), cpu_us_per_req(b))),
            }
        })
    }
}

fn label<'a>(r: &'a Report, default: &'a str) -> &'a str {
    r.label.as_deref().unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Recorder, RunMeta};

    fn report(label: &str, lat_us: u64, n: u64, elapsed: f64) -> Report {
        let mut rec = Recorder::new();
        for _ in 0..n {
            rec.record_ok(lat_us);
        }
        let meta = RunMeta {
            label: Some(label.into()),
            command: "put".into(),
            ..Default::default()
        };
        Report::new(meta, rec, elapsed)
    }

    #[test]
    fn ratios_and_table() {
        let mut a = report("etcd", 1000, 1000, 1.0);
        let mut b = report("ballast", 500, 1000, 0.5);
        a.peak_rss_kib = Some(100_000);
        b.peak_rss_kib = Some(25_000);
        let c = Comparison { a, b };
        let j = c.to_json();
        assert_eq!(j["ratios"]["throughput"], 2.0);
        assert_eq!(j["ratios"]["p99"], 0.5);
        assert_eq!(j["ratios"]["peak_rss_kib"], 0.25);
        assert!(j["ratios"]["cpu_per_req"].is_null());
        assert_eq!(j["a"]["label"], "etcd");
        let t = c.to_text();
        assert!(t.contains("ballast/etcd"), "{t}");
        let tput = t.lines().find(|l| l.starts_with("throughput")).unwrap();
        assert!(
            tput.contains("1000.0") && tput.contains("2000.0") && tput.contains("2.00x +"),
            "{tput}"
        );
        let p99 = t.lines().find(|l| l.starts_with("latency p99 ")).unwrap();
        assert!(p99.contains("0.50x +"), "{p99}");
        assert!(
            !t.contains("server CPU"),
            "rows without data are hidden:\n{t}"
        );
    }

    #[test]
    fn ratio_edge_cases() {
        assert_eq!(ratio(Some(0.0), Some(1.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(ratio(Some(2.0), Some(1.0)), Some(0.5));
    }
}
