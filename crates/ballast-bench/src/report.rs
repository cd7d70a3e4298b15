//! Result collection and the final report (text like etcd's `benchmark`, or JSON).
//!
//! Each client task owns a [`Recorder`] (an HdrHistogram of successful latencies in
//! microseconds plus an error count by message), so recording costs no locking; the
//! recorders are merged once when the run ends.
//!
//! Stream benchmarks count something other than requests (watch events, puts during a
//! lease expiry): [`RunMeta::unit`] names it, and mode-specific results (setup times, RSS
//! per watcher, a second latency distribution) go into [`Report::details`], printed after
//! the summary.
//!
//! Percentiles are HdrHistogram's: `pN` is the smallest recorded value such that at
//! least N% of the samples are at or below it, exact below 2.048 ms and within 0.1%
//! above (3 significant digits).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency the histogram tracks exactly (larger values are clamped to it): 1 hour.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Percentiles printed in the text report (etcd's list).
const TEXT_PERCENTILES: [f64; 8] = [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9];

/// Per-client results.
#[derive(Clone, Debug)]
pub struct Recorder {
    hist: Histogram<u64>,
    sum_us: u128,
    errors: HashMap<String, u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("static histogram bounds are valid"),
            sum_us: 0,
            errors: HashMap::new(),
        }
    }

    /// Records a successful request that took `us` microseconds.
    #[inline]
    pub fn record_ok(&mut self, us: u64) {
        self.hist.saturating_record(us);
        self.sum_us += u128::from(us);
    }

    /// Records a failed request by its message.
    pub fn record_err(&mut self, msg: String) {
        *self.errors.entry(msg).or_insert(0) += 1;
    }

    pub fn merge(&mut self, other: &Recorder) {
        self.hist
            .add(&other.hist)
            .expect("histograms with identical bounds always merge");
        self.sum_us += other.sum_us;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_insert(0) += v;
        }
    }

    /// Adds `other`'s errors (not its latencies), each message prefixed with `prefix`.
    pub fn merge_errors(&mut self, other: &Recorder, prefix: &str) {
        for (k, v) in &other.errors {
            *self.errors.entry(format!("{prefix}{k}")).or_insert(0) += v;
        }
    }

    pub fn succeeded(&self) -> u64 {
        self.hist.len()
    }

    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The most frequent error messages, for a one-line error: `[count] message; ...`,
    /// at most `max` of them, then how many other messages there were.
    pub fn errors_brief(&self, max: usize) -> String {
        let mut all: Vec<_> = self.errors.iter().collect();
        all.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let mut s = all
            .iter()
            .take(max)
            .map(|(m, n)| format!("[{n}] {m}"))
            .collect::<Vec<_>>()
            .join("; ");
        if all.len() > max {
            let _ = write!(s, "; and {} other messages", all.len() - max);
        }
        s
    }

    /// The latency summary of the successes.
    pub fn latency_ms(&self) -> LatencyMs {
        LatencyMs::from_recorder(self)
    }

    /// Counts and latencies of this recorder as a details entry: `ok`, `errors`, `per_s`
    /// (successes per second over `elapsed_s`), `latency_ms` and the error messages.
    pub fn summary_json(&self, elapsed_s: f64) -> serde_json::Value {
        let errors: BTreeMap<_, _> = self.errors.iter().collect();
        serde_json::json!({
            "ok": self.succeeded(),
            "errors": self.failed(),
            "elapsed_s": elapsed_s,
            "per_s": if elapsed_s > 0.0 { self.succeeded() as f64 / elapsed_s } else { 0.0 },
            "latency_ms": self.latency_ms(),
            "error_dist": errors,
        })
    }
}

/// Formats a gRPC error the way Go clients print it, so error tables read like etcd's.
pub fn status_message(s: &tonic::Status) -> String {
    format!("rpc error: code = {:?} desc = {}", s.code(), s.message())
}

/// Latency summary in milliseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct LatencyMs {
    pub min: f64,
    pub avg: f64,
    pub stddev: f64,
    pub p10: f64,
    pub p25: f64,
    pub p50: f64,
    pub p75: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

fn us_to_ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl LatencyMs {
    fn from_recorder(r: &Recorder) -> Self {
        let h = &r.hist;
        if h.is_empty() {
            return Self::default();
        }
        // The small downward nudge absorbs float error (0.999 * 1000 = 999.0000000000001 would
        // otherwise select the 1000th sample instead of the 999th).
        let q = |p: f64| us_to_ms(h.value_at_quantile((p / 100.0 - 1e-12).max(0.0)));
        Self {
            min: us_to_ms(h.min()),
            avg: r.sum_us as f64 / h.len() as f64 / 1000.0,
            stddev: h.stdev() / 1000.0,
            p10: q(10.0),
            p25: q(25.0),
            p50: q(50.0),
            p75: q(75.0),
            p90: q(90.0),
            p95: q(95.0),
            p99: q(99.0),
            p999: q(99.9),
            max: us_to_ms(h.max()),
        }
    }
}

/// What was run, for the report header and the JSON `params`.
#[derive(Clone, Debug, Default)]
pub struct RunMeta {
    pub label: Option<String>,
    pub command: String,
    /// What the counted items are (`requests` when empty).
    pub unit: String,
    pub endpoints: Vec<String>,
    pub conns: usize,
    pub clients: usize,
    pub params: serde_json::Value,
}

/// The result of one benchmark run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub label: Option<String>,
    pub command: String,
    /// What `total` counts: `requests`, or e.g. `events` for watch.
    pub unit: String,
    pub endpoints: Vec<String>,
    pub conns: usize,
    pub clients: usize,
    /// Requests completed (successes + errors).
    pub total: u64,
    pub errors: u64,
    pub error_dist: BTreeMap<String, u64>,
    pub elapsed_s: f64,
    /// Successful requests per second.
    pub throughput: f64,
    pub latency_ms: LatencyMs,
    pub rss_kib: Option<u64>,
    pub peak_rss_kib: Option<u64>,
    /// CPU seconds (user + system) the target process used during the run.
    pub target_cpu_s: Option<f64>,
    /// CPU seconds this tool used during the run (its own cost per request).
    pub client_cpu_s: Option<f64>,
    pub params: serde_json::Value,
    /// Mode-specific results (setup, RSS per watcher, baseline latencies, ...).
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub details: serde_json::Map<String, serde_json::Value>,
    #[serde(skip)]
    recorder: Recorder,
}

impl Report {
    pub fn new(meta: RunMeta, recorder: Recorder, elapsed_s: f64) -> Self {
        let ok = recorder.succeeded();
        let errors = recorder.failed();
        Self {
            label: meta.label,
            command: meta.command,
            unit: if meta.unit.is_empty() {
                "requests".to_string()
            } else {
                meta.unit
            },
            endpoints: meta.endpoints,
            conns: meta.conns,
            clients: meta.clients,
            total: ok + errors,
            errors,
            error_dist: recorder
                .errors
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            elapsed_s,
            throughput: if elapsed_s > 0.0 {
                ok as f64 / elapsed_s
            } else {
                0.0
            },
            latency_ms: LatencyMs::from_recorder(&recorder),
            rss_kib: None,
            peak_rss_kib: None,
            target_cpu_s: None,
            client_cpu_s: None,
            params: meta.params,
            details: serde_json::Map::new(),
            recorder,
        }
    }

    pub fn succeeded(&self) -> u64 {
        self.total - self.errors
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("report serialises")
    }

    /// etcd-`benchmark`-style text summary.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let l = &self.latency_ms;
        let label = self
            .label
            .as_deref()
            .map(|l| format!(" [{l}]"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "\n{}{label}: {} conns, {} clients -> {}",
            self.command,
            self.conns,
            self.clients,
            self.endpoints.join(",")
        );
        let _ = writeln!(s, "\nSummary:");
        let _ = writeln!(s, "  Total:\t{:.4} secs.", self.elapsed_s);
        let unit = capitalized(&self.unit);
        let _ = writeln!(
            s,
            "  {unit}:\t{} ({} ok, {} errors).",
            self.total,
            self.succeeded(),
            self.errors
        );
        if self.succeeded() > 0 {
            let _ = writeln!(s, "  Slowest:\t{:.4} ms.", l.max);
            let _ = writeln!(s, "  Fastest:\t{:.4} ms.", l.min);
            let _ = writeln!(s, "  Average:\t{:.4} ms.", l.avg);
            let _ = writeln!(s, "  Stddev:\t{:.4} ms.", l.stddev);
        }
        let _ = writeln!(s, "  {unit}/sec:\t{:.4}", self.throughput);
        if self.succeeded() > 0 {
            s.push_str(&self.histogram_text());
            let _ = writeln!(s, "\nLatency distribution:");
            let vals = [l.p10, l.p25, l.p50, l.p75, l.p90, l.p95, l.p99, l.p999];
            for (p, v) in TEXT_PERCENTILES.iter().zip(vals) {
                let _ = writeln!(s, "  {p}% in {v:.4} ms.");
            }
        }
        if !self.error_dist.is_empty() {
            let _ = writeln!(s, "\nError distribution:");
            for (msg, n) in &self.error_dist {
                let _ = writeln!(s, "  [{n}]\t{msg}");
            }
        }
        if self.rss_kib.is_some() || self.target_cpu_s.is_some() {
            let _ = writeln!(s, "\nTarget process:");
            if let (Some(rss), Some(peak)) = (self.rss_kib, self.peak_rss_kib) {
                let _ = writeln!(s, "  RSS:\t{rss} KiB (peak {peak} KiB).");
            }
            if let Some(cpu) = self.target_cpu_s {
                let _ = writeln!(
                    s,
                    "  CPU:\t{cpu:.2} s ({:.1} us/req).",
                    per_req_us(cpu, self.total)
                );
            }
        }
        if let Some(cpu) = self.client_cpu_s {
            let _ = writeln!(
                s,
                "\nClient (this tool) CPU:\t{cpu:.2} s ({:.1} us/req).",
                per_req_us(cpu, self.total)
            );
        }
        if !self.details.is_empty() {
            let _ = writeln!(s, "\nDetails:");
            details_text(&mut s, &self.details, 1);
        }
        s
    }

    /// etcd's "Response time histogram": 10 equal buckets between fastest and slowest.
    fn histogram_text(&self) -> String {
        const BUCKETS: usize = 10;
        let h = &self.recorder.hist;
        let (min, max) = (h.min(), h.max());
        let width = (max - min) as f64 / BUCKETS as f64;
        let mut counts = [0u64; BUCKETS + 1];
        for v in h.iter_recorded() {
            let value = v.value_iterated_to().clamp(min, max);
            let idx = if width > 0.0 {
                (((value - min) as f64 / width).ceil() as usize).min(BUCKETS)
            } else {
                0
            };
            counts[idx] += v.count_at_value();
        }
        let most = counts.iter().copied().max().unwrap_or(0).max(1);
        let mut s = String::from("\nResponse time histogram (ms):\n");
        for (i, n) in counts.iter().enumerate() {
            let edge = if i == BUCKETS {
                max as f64
            } else {
                min as f64 + width * i as f64
            };
            let bar = "∎".repeat((n * 40 / most) as usize);
            let _ = writeln!(s, "  {:.4} [{n}]\t|{bar}", edge / 1000.0);
        }
        s
    }
}

fn capitalized(word: &str) -> String {
    let mut c = word.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// Prints `details` as an indented list; a latency summary (an object with `p50`, `p99`
/// and `max`) fits on one line.
fn details_text(s: &mut String, map: &serde_json::Map<String, serde_json::Value>, depth: usize) {
    use serde_json::Value;
    let pad = "  ".repeat(depth);
    for (k, v) in map {
        match v {
            Value::Object(o) if o.is_empty() => {}
            Value::Object(o) if ["p50", "p99", "max"].iter().all(|q| o.contains_key(*q)) => {
                let ms = |q: &str| o[q].as_f64().unwrap_or(0.0);
                let _ = writeln!(
                    s,
                    "{pad}{k}:\tp50 {:.3}, p99 {:.3}, p99.9 {:.3}, max {:.3}",
                    ms("p50"),
                    ms("p99"),
                    ms("p999"),
                    ms("max")
                );
            }
            Value::Object(o) => {
                let _ = writeln!(s, "{pad}{k}:");
                details_text(s, o, depth + 1);
            }
            Value::Null => {}
            Value::Number(n) if n.is_f64() => {
                let _ = writeln!(s, "{pad}{k}:\t{:.3}", n.as_f64().unwrap_or(0.0));
            }
            Value::String(t) => {
                let _ = writeln!(s, "{pad}{k}:\t{t}");
            }
            other => {
                let _ = writeln!(s, "{pad}{k}:\t{other}");
            }
        }
    }
}

fn per_req_us(cpu_s: f64, reqs: u64) -> f64 {
    if reqs == 0 {
        0.0
    } else {
        cpu_s * 1e6 / reqs as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report_of(samples_us: impl IntoIterator<Item = u64>, elapsed_s: f64) -> Report {
        let mut r = Recorder::new();
        for us in samples_us {
            r.record_ok(us);
        }
        Report::new(RunMeta::default(), r, elapsed_s)
    }

    #[test]
    fn percentiles_of_uniform_sample() {
        // 1..=1000 us: the k-th percentile is k*10 us.
        let rep = report_of(1..=1000, 2.0);
        let l = &rep.latency_ms;
        assert_eq!(l.min, 0.001);
        assert_eq!(l.max, 1.0);
        assert_eq!(l.p10, 0.1);
        assert_eq!(l.p50, 0.5);
        assert_eq!(l.p90, 0.9);
        assert_eq!(l.p99, 0.99);
        assert_eq!(l.p999, 0.999);
        assert!((l.avg - 0.5005).abs() < 1e-12);
        // population stddev of 1..=1000 is sqrt((1000^2-1)/12) = 288.675 us
        assert!((l.stddev - 0.288_675).abs() < 0.001, "{}", l.stddev);
        assert_eq!(rep.total, 1000);
        assert_eq!(rep.errors, 0);
        assert!((rep.throughput - 500.0).abs() < 1e-9);
    }

    #[test]
    fn percentiles_of_skewed_sample() {
        // 990 fast requests at 100 us, 10 slow ones at 50 ms.
        let rep = report_of(
            std::iter::repeat_n(100, 990).chain(std::iter::repeat_n(50_000, 10)),
            1.0,
        );
        let l = &rep.latency_ms;
        assert_eq!(l.p50, 0.1);
        assert_eq!(l.p99, 0.1);
        // 50 ms is above the exact range: HdrHistogram reports the bucket's upper edge (+0.1%)
        assert!((l.p999 - 50.0).abs() <= 0.05, "{}", l.p999);
        assert!((l.max - 50.0).abs() <= 0.05);
        assert!((l.avg - (990.0 * 0.1 + 10.0 * 50.0) / 1000.0).abs() < 1e-9);
    }

    #[test]
    fn errors_are_counted_by_message_and_excluded_from_throughput() {
        let mut a = Recorder::new();
        a.record_ok(100);
        a.record_err("boom".into());
        let mut b = Recorder::new();
        b.record_ok(300);
        b.record_err("boom".into());
        b.record_err("bang".into());
        a.merge(&b);
        let rep = Report::new(RunMeta::default(), a.clone(), 1.0);
        assert_eq!(rep.total, 5);
        assert_eq!(rep.errors, 3);
        assert_eq!(rep.error_dist["boom"], 2);
        assert_eq!(rep.error_dist["bang"], 1);
        assert_eq!(a.errors_brief(1), "[2] boom; and 1 other messages");
        assert_eq!(a.errors_brief(5), "[2] boom; [1] bang");
        assert_eq!(rep.throughput, 2.0);
        assert_eq!(rep.latency_ms.avg, 0.2);
        let text = rep.to_text();
        assert!(text.contains("[2]\tboom"), "{text}");
    }

    #[test]
    fn empty_report() {
        let rep = report_of([], 0.0);
        assert_eq!(rep.total, 0);
        assert_eq!(rep.throughput, 0.0);
        assert_eq!(rep.latency_ms, LatencyMs::default());
        assert!(rep.to_text().contains("Requests/sec"));
    }

    #[test]
    fn json_shape() {
        let mut rep = report_of([1000, 2000], 1.0);
        rep.label = Some("etcd".into());
        rep.rss_kib = Some(10);
        let v = rep.to_json();
        for k in [
            "label",
            "command",
            "endpoints",
            "conns",
            "clients",
            "total",
            "errors",
            "elapsed_s",
            "throughput",
            "latency_ms",
            "rss_kib",
            "peak_rss_kib",
            "params",
        ] {
            assert!(v.get(k).is_some(), "missing {k} in {v}");
        }
        for k in ["min", "avg", "p50", "p90", "p99", "p999", "max"] {
            assert!(v["latency_ms"][k].is_number(), "missing latency_ms.{k}");
        }
        assert_eq!(v["label"], "etcd");
        assert_eq!(v["total"], 2);
        assert_eq!(v["latency_ms"]["max"], 2.0);
    }

    #[test]
    fn text_histogram_counts_every_sample() {
        let rep = report_of((1..=100).map(|i| i * 10), 1.0);
        let text = rep.histogram_text();
        let total: u64 = text
            .lines()
            .filter_map(|l| l.split_once('[').and_then(|(_, r)| r.split_once(']')))
            .map(|(n, _)| n.parse::<u64>().unwrap())
            .sum();
        assert_eq!(total, 100, "{text}");
        assert!(rep.to_text().contains("99.9% in 1.0000 ms."));
    }
}
