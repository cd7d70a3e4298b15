//! Command-line interface (clap derive). Flags are documented here once; `--help` shows them.
//!
//! Global flags may be given before or after the subcommand
//! (`ballast-bench --clients 8 put` = `ballast-bench put --clients 8`).
//!
//! Extension point: a new benchmark is a new variant of [`BenchCommand`] plus its
//! [`crate::runner::Workload`] in `workload/`; `compare` picks it up automatically.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::{Serialize, Serializer};

use crate::endpoint::parse_endpoints;
use crate::runner::Limits;

#[derive(Parser, Debug)]
#[command(
    name = "ballast-bench",
    version,
    about = "Load generator for etcd v3 endpoints (etcd or Ballast), like etcd's `benchmark` tool",
    after_help = "Text output mirrors etcd's benchmark summary; --json prints one JSON object instead."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags shared by every benchmark.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Comma-separated endpoints, `host:port` or `http://host:port`.
    #[arg(long, global = true, default_value = "127.0.0.1:2379", value_parser = parse_endpoint_list)]
    pub endpoints: EndpointList,
    /// Number of gRPC (HTTP/2) connections, opened round-robin over the endpoints.
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub conns: u32,
    /// Number of concurrent clients, each issuing requests back to back; clients share
    /// the connections round-robin.
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub clients: u32,
    /// Total number of requests [default: 10000, or unbounded with --duration].
    #[arg(long, global = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub total: Option<u64>,
    /// Run for this long instead of (or, with --total, at most until) a request count:
    /// seconds, or with a unit (`500ms`, `30s`, `2m`).
    #[arg(long, global = true, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Requests per second over all clients (open schedule; each client still waits for
    /// its answer, so give enough clients). Default: as fast as the clients go.
    #[arg(long, global = true, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Print one JSON object with the results instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Free text copied into the results (e.g. `etcd`, `ballast`).
    #[arg(long, global = true)]
    pub label: Option<String>,
    /// PID of the server under test: report its RSS and peak RSS (VmRSS/VmHWM) at the end
    /// and the CPU time it used during the run.
    #[arg(long, global = true)]
    pub target_pid: Option<u32>,
    /// Connection timeout.
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    pub dial_timeout: Duration,
    /// Per-request deadline; `0` waits forever.
    #[arg(long, global = true, default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Worker threads of the tool's runtime [default: number of CPUs].
    #[arg(long, global = true, value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
}

/// Default request count when neither --total nor --duration is given.
pub const DEFAULT_TOTAL: u64 = 10_000;

impl GlobalArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            total: match (self.total, self.duration) {
                (Some(t), _) => Some(t),
                (None, Some(_)) => None,
                (None, None) => Some(DEFAULT_TOTAL),
            },
            duration: self.duration,
            request_timeout: (!self.request_timeout.is_zero()).then_some(self.request_timeout),
            rate: self.rate,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    #[command(flatten)]
    Bench(BenchCommand),
    /// Run one benchmark against two endpoints in turn (e.g. etcd, then Ballast) and
    /// print a side-by-side table with ratios (b/a). --endpoints, --label and
    /// --target-pid are replaced by the --a-*/--b-* flags.
    Compare(CompareArgs),
    /// Serve a do-nothing etcd KV service, to measure how many requests per second this
    /// tool itself can generate (`ballast-bench --endpoints ADDR put` against it).
    NullServer(NullServerArgs),
}

/// The benchmarks.
#[derive(Subcommand, Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum BenchCommand {
    /// Benchmark Put: each request puts one key.
    Put(PutArgs),
    /// Benchmark Range: each request reads `key` (or `[key, end)`).
    Range(RangeArgs),
    /// Benchmark Txn: each request is a txn putting --txn-ops keys.
    TxnPut(TxnPutArgs),
    /// Benchmark Watch: event delivery throughput and put → event delay.
    ///
    /// Creates --watchers watchers spread over --streams watch streams (stream i on
    /// connection i mod --conns), on one key (--keys same) or one key each (--keys
    /// distinct). Then --clients clients put to the watched keys (--total puts, or for
    /// --duration, optionally at --rate puts/s) and every event received by every watcher
    /// is counted and timed from the moment its put was sent. Reports events/s received
    /// over all watchers, the delay distribution, the puts' own latency and, with
    /// --target-pid, the server's RSS before and after creating the watchers (RSS per
    /// watcher). Without --total/--duration: 100 puts (same) or one put per watcher
    /// (distinct). For a delay measurement the server can keep up with, give a --rate.
    ///
    /// Example: ballast-bench --conns 10 --clients 4 --total 100 watch --watchers 10000
    /// --streams 100 --keys same
    Watch(WatchArgs),
    /// Benchmark LeaseKeepAlive: renewals/s and latency over keep-alive streams.
    ///
    /// Grants --leases leases (not measured), then --clients keep-alive streams (over
    /// --conns connections) each renew one lease at a time, round-robin over the leases:
    /// --total renewals or for --duration, optionally at --rate. The leases are revoked
    /// afterwards unless --keep-leases.
    ///
    /// Example: ballast-bench --conns 4 --clients 64 --duration 10s lease-keepalive
    /// --leases 10000
    LeaseKeepalive(LeaseKeepaliveArgs),
    /// Benchmark LeaseGrant: each request grants a lease (with --attach, and puts a key on it).
    ///
    /// The granted leases are revoked after the run (not measured) unless --keep-leases.
    ///
    /// Example: ballast-bench --conns 16 --clients 256 --total 100000 lease-grant --attach
    LeaseGrant(LeaseGrantArgs),
    /// Benchmark mass lease expiry: put latency while many leases (and their keys) expire.
    ///
    /// Grants --leases leases with --ttl, attaches --keys-per-lease keys to each (renewing
    /// leases as needed meanwhile), renews every lease once so they all expire within a
    /// short window, then runs a steady put
    /// workload (--clients clients over --conns, at --rate puts/s: give one) until the
    /// leases' keys are gone plus --tail. The report's main numbers are the puts in flight
    /// during the expiry window (from the expiry deadline until the last lease key is
    /// seen deleted); the puts answered before the deadline are the baseline. With --revoke the leases are not
    /// left to expire: the tool revokes them at the deadline instead. --total and
    /// --duration do not apply.
    ///
    /// Examples: ballast-bench --conns 4 --clients 32 --rate 500 lease-expire --leases 100000
    /// --ttl 40 --setup-clients 256; ballast-bench --conns 4 --clients 32 --rate 500
    /// lease-expire --leases 1 --keys-per-lease 100000 --attach-txn-ops 100 --revoke
    LeaseExpire(LeaseExpireArgs),
}

impl BenchCommand {
    pub fn name(&self) -> &'static str {
        match self {
            BenchCommand::Put(_) => "put",
            BenchCommand::Range(_) => "range",
            BenchCommand::TxnPut(_) => "txn-put",
            BenchCommand::Watch(_) => "watch",
            BenchCommand::LeaseKeepalive(_) => "lease-keepalive",
            BenchCommand::LeaseGrant(_) => "lease-grant",
            BenchCommand::LeaseExpire(_) => "lease-expire",
        }
    }

    /// The command's own flags, for the JSON `params`.
    pub fn params(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct PutArgs {
    /// Key size in bytes.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Use keys 0,1,2,... (modulo --key-space-size) instead of random ones.
    #[arg(long)]
    pub sequential_keys: bool,
    /// Number of distinct keys; keys are the integers [0, N) encoded as etcd's benchmark
    /// does (varint, zero-padded to --key-size).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub key_space_size: u64,
    /// Compact every interval during the run (`0`: never), e.g. `10s`.
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_secs")]
    pub compact_interval: Duration,
    /// Each compaction keeps this many revisions behind the current one.
    #[arg(long, default_value_t = 1000)]
    pub compact_index_delta: i64,
}

/// Range consistency.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Consistency {
    /// Linearizable.
    #[value(name = "l", alias = "linearizable")]
    #[serde(rename = "l")]
    Linearizable,
    /// Serializable.
    #[value(name = "s", alias = "serializable")]
    #[serde(rename = "s")]
    Serializable,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct RangeArgs {
    /// Key to read; `\xNN` escapes allowed for binary keys.
    pub key: String,
    /// Range end (exclusive); `\xNN` escapes allowed; `\x00` means "to the end".
    pub end: Option<String>,
    /// Read all keys with prefix `key`.
    #[arg(long, conflicts_with = "end")]
    pub prefix: bool,
    /// Consistency: `l` (linearizable) or `s` (serializable).
    #[arg(long, value_enum, default_value_t = Consistency::Linearizable)]
    pub consistency: Consistency,
    /// Maximum number of keys returned (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
    /// Return only the count of keys.
    #[arg(long)]
    pub count_only: bool,
    /// Before measuring, write this many keys (not measured): `key` itself when 1,
    /// otherwise `key` followed by an 8-digit index (read them with --prefix).
    #[arg(long, default_value_t = 0)]
    pub prefill: u64,
    /// Value size in bytes of the --prefill keys.
    #[arg(long, default_value_t = 8)]
    pub prefill_val_size: usize,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct TxnPutArgs {
    /// Key size in bytes.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Number of distinct keys; txn i puts keys (i*txn-ops + j) mod N, j < txn-ops.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub key_space_size: u64,
    /// Puts per txn (must not exceed --key-space-size: a txn cannot put a key twice).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub txn_ops: u64,
}

/// Which keys the watchers of `watch` watch.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchKeys {
    /// All watchers on one key; every put reaches every watcher.
    Same,
    /// One key per watcher; put n writes key n mod --watchers and reaches one watcher.
    Distinct,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct WatchArgs {
    /// Number of watchers.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub watchers: u64,
    /// Number of watch streams; watcher i is created on stream i mod --streams.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub streams: u64,
    /// Which keys the watchers watch.
    #[arg(long, value_enum, default_value_t = WatchKeys::Same)]
    pub keys: WatchKeys,
    /// Prefix of the watched keys (`<prefix>0`, or `<prefix>00000000`... with distinct).
    #[arg(long, default_value = "bench-watch/")]
    pub key_prefix: String,
    /// Value size of the puts in bytes (at least 8: the value carries the send time).
    #[arg(long, default_value_t = 16)]
    pub val_size: usize,
    /// Connections of the put clients, apart from the watch streams' --conns.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub put_conns: u32,
    /// After the puts, stop waiting for missing events once none arrived for this long.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_secs")]
    pub drain_timeout: Duration,
    /// Fail when the watchers are not all created after this long.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_secs")]
    pub create_timeout: Duration,
}

/// Flags of the unmeasured lease grant/revoke around the lease benchmarks.
#[derive(Args, Debug, Clone, Serialize)]
pub struct LeaseSetupArgs {
    /// Concurrent requests when granting or revoking leases outside the measurement.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub setup_clients: u32,
    /// Leave the leases on the server (by default they are revoked after the run).
    #[arg(long)]
    pub keep_leases: bool,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct LeaseKeepaliveArgs {
    /// Leases granted before the run; renewal n renews lease n mod --leases.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub leases: u64,
    /// TTL of the leases in seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(i64).range(1..))]
    pub ttl: i64,
    #[command(flatten)]
    #[serde(flatten)]
    pub setup: LeaseSetupArgs,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct LeaseGrantArgs {
    /// TTL of the leases in seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(i64).range(1..))]
    pub ttl: i64,
    /// After each grant, put the key `<--key-prefix><lease id>` with the lease (measured
    /// with the grant: one request = grant + put).
    #[arg(long)]
    pub attach: bool,
    /// Prefix of the --attach keys.
    #[arg(long, default_value = "bench-lease-grant/")]
    pub key_prefix: String,
    /// Value size of the --attach keys in bytes.
    #[arg(long, default_value_t = 16)]
    pub val_size: usize,
    #[command(flatten)]
    #[serde(flatten)]
    pub setup: LeaseSetupArgs,
}

/// How `lease-expire` sees the lease keys go.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpiryDetect {
    /// A watcher on the key prefix counts the delete events (exact times).
    Watch,
    /// A count-only serializable Range of the prefix every --poll-interval.
    Poll,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct LeaseExpireArgs {
    /// Number of leases.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub leases: u64,
    /// Keys attached to each lease (`<--key-prefix><lease index>/<key index>`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub keys_per_lease: u64,
    /// Lease TTL in seconds: the leases expire this long after the renewal sweep starts,
    /// and the put workload runs from the end of the sweep until then (the baseline), so
    /// it should exceed the sweep (about 15 s for 100,000 leases on etcd 3.4). During the
    /// setup, leases are renewed whenever two thirds of their TTL have passed.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i64).range(1..))]
    pub ttl: i64,
    /// Revoke the leases with LeaseRevoke at the deadline instead of letting them expire
    /// (they are granted with --ttl + 60 s so that they cannot expire first).
    #[arg(long)]
    pub revoke: bool,
    /// Prefix of the lease keys (nothing else may be written under it during the run).
    #[arg(long, default_value = "bench-lease-expire/")]
    pub key_prefix: String,
    /// Value size of the lease keys in bytes.
    #[arg(long, default_value_t = 16)]
    pub val_size: usize,
    /// Attach the keys in txns of this many puts (each with its lease) instead of one put
    /// each: a faster setup, at most the server's --max-txn-ops (128 by default). Note:
    /// after txn attaches, etcd 3.4 renewed leases about 5x slower (its LeaseRenew waits
    /// for the applied index), which lengthens the renewal sweep.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub attach_txn_ops: u64,
    /// Key size of the put workload (etcd benchmark keys, random in --put-key-space-size).
    #[arg(long, default_value_t = 8)]
    pub put_key_size: usize,
    /// Value size of the put workload.
    #[arg(long, default_value_t = 256)]
    pub put_val_size: usize,
    /// Number of distinct keys of the put workload.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub put_key_space_size: u64,
    /// Keep putting this long after the last lease key is gone.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_secs")]
    pub tail: Duration,
    /// Give up (and report the run as failed) when the keys are not all gone this long
    /// after the deadline.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_secs")]
    pub max_window: Duration,
    /// How the tool sees the keys go.
    #[arg(long, value_enum, default_value_t = ExpiryDetect::Watch)]
    pub detect: ExpiryDetect,
    /// Interval of --detect poll.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_secs")]
    pub poll_interval: Duration,
    /// Concurrent requests when granting, attaching, renewing (the sweep, and the
    /// keep-alive streams during the setup) and revoking.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub setup_clients: u32,
}

#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// Endpoints of side A (e.g. etcd).
    #[arg(long, value_parser = parse_endpoint_list)]
    pub a_endpoints: EndpointList,
    /// Endpoints of side B (e.g. Ballast).
    #[arg(long, value_parser = parse_endpoint_list)]
    pub b_endpoints: EndpointList,
    /// Name of side A in the table.
    #[arg(long, default_value = "a")]
    pub a_label: String,
    /// Name of side B in the table.
    #[arg(long, default_value = "b")]
    pub b_label: String,
    /// Server PID of side A (RSS and CPU).
    #[arg(long)]
    pub a_pid: Option<u32>,
    /// Server PID of side B (RSS and CPU).
    #[arg(long)]
    pub b_pid: Option<u32>,
    /// Pause between the two runs (e.g. `5s`), to let the machine settle.
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    pub pause: Duration,
    #[command(subcommand)]
    pub bench: BenchCommand,
}

#[derive(Args, Debug, Clone)]
pub struct NullServerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:23790")]
    pub listen: std::net::SocketAddr,
}

/// A parsed, normalised `--endpoints` list (`http://host:port` each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointList(pub Vec<String>);

fn parse_endpoint_list(s: &str) -> Result<EndpointList, String> {
    parse_endpoints(s).map(EndpointList)
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("invalid rate {s:?}: requests per second, > 0")),
    }
}

/// Parses `1.5` (seconds), `250ms`, `30s`, `2m`, `1h`, `100us`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (examples: 10, 1.5s, 250ms, 2m)"))?;
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "invalid duration unit in {s:?} (use us, ms, s, m, h)"
            ))
        }
    };
    Duration::try_from_secs_f64(n * scale).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

fn ser_secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("ballast-bench").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let cli = parse(&["put"]);
        let g = &cli.global;
        assert_eq!(g.endpoints.0, vec!["http://127.0.0.1:2379"]);
        assert_eq!((g.conns, g.clients), (1, 1));
        assert_eq!(g.limits().total, Some(DEFAULT_TOTAL));
        assert_eq!(g.limits().duration, None);
        assert!(!g.json);
        assert_eq!(g.limits().request_timeout, Some(Duration::from_secs(30)));
        let Command::Bench(BenchCommand::Put(p)) = cli.command else {
            panic!("not put")
        };
        assert_eq!((p.key_size, p.val_size, p.key_space_size), (8, 8, 1));
        assert!(!p.sequential_keys);
        assert!(p.compact_interval.is_zero());
    }

    #[test]
    fn global_flags_before_or_after_subcommand() {
        let a = parse(&[
            "--clients",
            "8",
            "--conns",
            "2",
            "put",
            "--total",
            "2000",
            "--json",
        ]);
        let b = parse(&[
            "put",
            "--total",
            "2000",
            "--clients",
            "8",
            "--json",
            "--conns=2",
        ]);
        for cli in [a, b] {
            assert_eq!(cli.global.clients, 8);
            assert_eq!(cli.global.conns, 2);
            assert_eq!(cli.global.total, Some(2000));
            assert!(cli.global.json);
        }
    }

    #[test]
    fn endpoints_and_duration() {
        let cli = parse(&[
            "--endpoints",
            "http://127.0.0.1:1,127.0.0.1:2",
            "--duration",
            "1.5",
            "range",
            "foo",
        ]);
        assert_eq!(
            cli.global.endpoints.0,
            vec!["http://127.0.0.1:1", "http://127.0.0.1:2"]
        );
        let l = cli.global.limits();
        assert_eq!(l.total, None);
        assert_eq!(l.duration, Some(Duration::from_millis(1500)));
        let cli = parse(&["--duration", "2s", "--total", "5", "range", "foo"]);
        assert_eq!(cli.global.limits().total, Some(5));
        assert!(Cli::try_parse_from(["b", "--endpoints", "https://x:1", "put"]).is_err());
    }

    #[test]
    fn range_flags() {
        let cli = parse(&[
            "range",
            "foo",
            "fop",
            "--consistency",
            "s",
            "--limit",
            "10",
            "--count-only",
        ]);
        let Command::Bench(BenchCommand::Range(r)) = cli.command else {
            panic!("not range")
        };
        assert_eq!((r.key.as_str(), r.end.as_deref()), ("foo", Some("fop")));
        assert_eq!(r.consistency, Consistency::Serializable);
        assert_eq!(r.limit, 10);
        assert!(r.count_only);
        let cli = parse(&["range", "foo"]);
        let Command::Bench(BenchCommand::Range(r)) = cli.command else {
            panic!("not range")
        };
        assert_eq!(r.consistency, Consistency::Linearizable);
        let cli = parse(&["range", "foo", "--consistency", "linearizable"]);
        let Command::Bench(BenchCommand::Range(r)) = cli.command else {
            panic!("not range")
        };
        assert_eq!(r.consistency, Consistency::Linearizable);
        assert!(Cli::try_parse_from(["b", "range", "foo", "--consistency", "x"]).is_err());
        assert!(Cli::try_parse_from(["b", "range", "foo", "bar", "--prefix"]).is_err());
        assert!(Cli::try_parse_from(["b", "range"]).is_err());
    }

    #[test]
    fn txn_put_and_compare() {
        let cli = parse(&[
            "txn-put",
            "--txn-ops",
            "4",
            "--key-space-size",
            "100",
            "--val-size",
            "256",
        ]);
        let Command::Bench(BenchCommand::TxnPut(t)) = cli.command else {
            panic!("not txn-put")
        };
        assert_eq!((t.txn_ops, t.key_space_size, t.val_size), (4, 100, 256));

        let cli = parse(&[
            "--clients",
            "64",
            "compare",
            "--a-endpoints",
            "127.0.0.1:2379",
            "--a-label",
            "etcd",
            "--b-endpoints",
            "127.0.0.1:2479",
            "--b-label",
            "ballast",
            "range",
            "foo",
            "--consistency",
            "s",
        ]);
        assert_eq!(cli.global.clients, 64);
        let Command::Compare(c) = cli.command else {
            panic!("not compare")
        };
        assert_eq!(c.a_endpoints.0, vec!["http://127.0.0.1:2379"]);
        assert_eq!(c.b_label, "ballast");
        assert_eq!(c.bench.name(), "range");
    }

    #[test]
    fn watch_and_lease_flags() {
        let cli = parse(&[
            "--conns",
            "10",
            "--rate",
            "20",
            "watch",
            "--watchers",
            "10000",
        ]);
        assert_eq!(cli.global.rate, Some(20.0));
        assert_eq!(cli.global.limits().rate, Some(20.0));
        let Command::Bench(BenchCommand::Watch(w)) = cli.command else {
            panic!("not watch")
        };
        assert_eq!(
            (w.watchers, w.streams, w.keys),
            (10_000, 10, WatchKeys::Same)
        );
        assert_eq!(w.put_conns, 1);
        let cli = parse(&["watch", "--keys", "distinct", "--streams", "3"]);
        let Command::Bench(b @ BenchCommand::Watch(_)) = cli.command else {
            panic!("not watch")
        };
        assert_eq!(b.name(), "watch");
        assert_eq!(b.params()["keys"], "distinct");
        assert_eq!(b.params()["drain_timeout"], 10.0);

        let cli = parse(&["lease-keepalive", "--leases", "5", "--keep-leases"]);
        let Command::Bench(b @ BenchCommand::LeaseKeepalive(_)) = cli.command else {
            panic!("not lease-keepalive")
        };
        assert_eq!(b.params()["leases"], 5);
        assert_eq!(b.params()["keep_leases"], true);
        assert_eq!(b.params()["setup_clients"], 64);

        let cli = parse(&["lease-grant", "--attach", "--ttl", "5"]);
        let Command::Bench(BenchCommand::LeaseGrant(g)) = cli.command else {
            panic!("not lease-grant")
        };
        assert!(g.attach && !g.setup.keep_leases);
        assert_eq!(g.ttl, 5);

        let cli = parse(&[
            "lease-expire",
            "--leases",
            "1",
            "--keys-per-lease",
            "100000",
            "--revoke",
        ]);
        let Command::Bench(BenchCommand::LeaseExpire(e)) = cli.command else {
            panic!("not lease-expire")
        };
        assert_eq!((e.leases, e.keys_per_lease, e.ttl), (1, 100_000, 10));
        assert!(e.revoke);
        assert_eq!(e.detect, ExpiryDetect::Watch);
        assert_eq!(e.attach_txn_ops, 1);
    }

    #[test]
    fn rejects_zero_counts() {
        for args in [
            &["b", "--clients", "0", "put"][..],
            &["b", "--conns", "0", "put"],
            &["b", "--total", "0", "put"],
            &["b", "put", "--key-space-size", "0"],
            &["b", "txn-put", "--txn-ops", "0"],
            &["b", "--rate", "0", "put"],
            &["b", "--rate", "-1", "put"],
            &["b", "watch", "--watchers", "0"],
            &["b", "watch", "--streams", "0"],
            &["b", "lease-keepalive", "--leases", "0"],
            &["b", "lease-grant", "--ttl", "0"],
            &["b", "lease-expire", "--keys-per-lease", "0"],
            &["b", "lease-expire", "--detect", "guess"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn params_json() {
        let cli = parse(&["put", "--val-size", "256", "--compact-interval", "500ms"]);
        let Command::Bench(b) = cli.command else {
            panic!()
        };
        let p = b.params();
        assert_eq!(p["val_size"], 256);
        assert_eq!(p["compact_interval"], 0.5);
        assert_eq!(b.name(), "put");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("100us").unwrap(), Duration::from_micros(100));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in ["", "s", "-1", "10x", "1..2"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
