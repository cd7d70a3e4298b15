//! End-to-end: the built `ballast-bench` binary against a real etcd (Debian's 3.4,
//! `/usr/bin/etcd`, or `$ETCD_BIN`), started on free loopback ports in a temp data dir.
//! The results are checked in the tool's JSON and, independently, in etcd itself through
//! a plain gRPC client. A missing etcd binary fails the test: CI installs it. The last
//! test runs the tool against its own `null-server` (no etcd needed).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ballast_proto::etcdserverpb::{
    kv_client::KvClient, lease_client::LeaseClient, LeaseLeasesRequest, RangeRequest,
};
use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_ballast-bench");

/// A running etcd; killed (and its data dir removed) on drop, also when a test panics.
struct Etcd {
    child: Child,
    client_url: String,
    dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // `dir` is removed by its own Drop after this.
    }
}

fn etcd_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("ETCD_BIN") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from("/usr/bin/etcd");
    assert!(
        p.exists(),
        "etcd binary not found at /usr/bin/etcd (set ETCD_BIN, or `apt-get install etcd-server`): \
         this test needs a real etcd and must not pass without one"
    );
    p
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

impl Etcd {
    /// Starts etcd on fresh ports; tries again on other ports when one of them was taken between
    /// picking and binding (tests in this binary pick ports concurrently).
    fn start() -> Etcd {
        for _ in 0..5 {
            match Etcd::try_start() {
                Ok(etcd) => return etcd,
                Err(log) if log.contains("address already in use") => continue,
                Err(log) => panic!("etcd exited early; log:\n{log}"),
            }
        }
        panic!("etcd: ports kept being taken, 5 attempts");
    }

    /// `Err(log)` when etcd exited before becoming healthy.
    fn try_start() -> Result<Etcd, String> {
        let bin = etcd_binary();
        let dir = tempfile::tempdir().expect("temp dir");
        let (cport, pport) = (free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{cport}");
        let peer_url = format!("http://127.0.0.1:{pport}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("log file");
        let child = Command::new(&bin)
            .arg("--name=default")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=default={peer_url}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let mut etcd = Etcd {
            child,
            client_url,
            dir,
        };
        etcd.wait_healthy(cport)?;
        Ok(etcd)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls etcd's `/health` on the client port until it reports healthy; `Err(log)` if it
    /// exited first.
    fn wait_healthy(&mut self, port: u16) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("({status})\n{}", self.log()));
            }
            if health_ok(port) {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "etcd not healthy after 30s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn health_ok(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

fn bench(args: &[&str]) -> Output {
    Command::new(BENCH)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ballast-bench")
}

/// Runs the tool with `--json` and returns the parsed object, failing on a non-zero exit.
fn bench_json(etcd: &Etcd, args: &[&str]) -> Value {
    let mut all = vec!["--endpoints", &etcd.client_url, "--json"];
    all.extend_from_slice(args);
    let out = bench(&all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ballast-bench {all:?} failed: {}\nstdout:\n{stdout}\nstderr:\n{}\netcd log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        etcd.log()
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("bad JSON ({e}): {stdout}"))
}

fn assert_clean_run(v: &Value, command: &str, total: u64) {
    assert_eq!(v["command"], command, "{v}");
    assert_eq!(v["total"], total, "{v}");
    assert_eq!(v["errors"], 0, "{v}");
    assert!(v["throughput"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["elapsed_s"].as_f64().unwrap() > 0.0, "{v}");
    let l = &v["latency_ms"];
    let (min, p50, p99, max) = (
        l["min"].as_f64().unwrap(),
        l["p50"].as_f64().unwrap(),
        l["p99"].as_f64().unwrap(),
        l["max"].as_f64().unwrap(),
    );
    assert!(0.0 < min && min <= p50 && p50 <= p99 && p99 <= max, "{l}");
}

/// Reads etcd directly (not through the tool): how many keys are in `[key, end)`, and
/// the value of `key`.
fn etcd_range(url: &str, key: &[u8], end: &[u8]) -> (i64, Vec<Vec<u8>>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut kv = KvClient::connect(url.to_string())
            .await
            .expect("connect to etcd");
        let resp = kv
            .range(RangeRequest {
                key: key.to_vec(),
                range_end: end.to_vec(),
                ..Default::default()
            })
            .await
            .expect("range")
            .into_inner();
        (
            resp.count,
            resp.kvs.into_iter().map(|kv| kv.value).collect(),
        )
    })
}

/// Reads etcd directly: how many leases exist.
fn etcd_lease_count(url: &str) -> usize {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut lease = LeaseClient::connect(url.to_string())
            .await
            .expect("connect to etcd");
        lease
            .lease_leases(LeaseLeasesRequest {})
            .await
            .expect("lease leases")
            .into_inner()
            .leases
            .len()
    })
}

/// Key count under `prefix`, read from etcd directly.
fn etcd_prefix_count(url: &str, prefix: &str) -> i64 {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    etcd_range(url, prefix.as_bytes(), &end).0
}

/// etcd's benchmark key encoding for index `i` in an 8-byte key (zigzag varint, padded).
fn bench_key(i: u64) -> Vec<u8> {
    let mut ux = i << 1;
    let mut k = Vec::new();
    while ux >= 0x80 {
        k.push((ux as u8) | 0x80);
        ux >>= 7;
    }
    k.push(ux as u8);
    k.resize(8, 0);
    k
}

#[test]
fn benchmarks_against_etcd() {
    let etcd = Etcd::start();
    let pid = etcd.pid().to_string();

    // put: 2000 sequential keys from 8 clients, with the target's memory sampled.
    let v = bench_json(
        &etcd,
        &[
            "--label",
            "etcd",
            "--target-pid",
            &pid,
            "put",
            "--total",
            "2000",
            "--clients",
            "8",
            "--sequential-keys",
            "--key-space-size",
            "2000",
            "--val-size",
            "16",
        ],
    );
    assert_clean_run(&v, "put", 2000);
    assert_eq!(v["label"], "etcd");
    assert_eq!(v["clients"], 8);
    assert_eq!(v["params"]["val_size"], 16);
    assert!(v["rss_kib"].as_u64().unwrap() > 0, "{v}");
    assert!(
        v["peak_rss_kib"].as_u64().unwrap() >= v["rss_kib"].as_u64().unwrap(),
        "{v}"
    );

    // The keys really are in etcd: all 2000, and with the encoding etcd's tool uses.
    let (count, _) = etcd_range(&etcd.client_url, &[0], &[0]);
    assert_eq!(count, 2000, "keys in etcd after the put benchmark");
    let (n, values) = etcd_range(&etcd.client_url, &bench_key(1999), &[]);
    assert_eq!(n, 1, "key 1999 exists");
    assert_eq!(values[0].len(), 16);

    // range, serializable, on a prefilled 256-byte value.
    let v = bench_json(
        &etcd,
        &[
            "range",
            "bench/range-key",
            "--consistency",
            "s",
            "--prefill",
            "1",
            "--prefill-val-size",
            "256",
            "--total",
            "1000",
            "--clients",
            "8",
            "--conns",
            "2",
        ],
    );
    assert_clean_run(&v, "range", 1000);
    assert_eq!(v["params"]["consistency"], "s");
    assert_eq!(v["conns"], 2);
    let (n, values) = etcd_range(&etcd.client_url, b"bench/range-key", &[]);
    assert_eq!((n, values[0].len()), (1, 256), "prefilled key");

    // range, linearizable, count-only over every key (binary key arguments).
    let v = bench_json(
        &etcd,
        &[
            "range",
            "\\x00",
            "\\x00",
            "--count-only",
            "--total",
            "200",
            "--clients",
            "4",
        ],
    );
    assert_clean_run(&v, "range", 200);
    assert_eq!(v["params"]["consistency"], "l");

    // txn-put: 4 puts per txn over 100 keys.
    let v = bench_json(
        &etcd,
        &[
            "txn-put",
            "--txn-ops",
            "4",
            "--key-space-size",
            "100",
            "--total",
            "300",
            "--clients",
            "4",
        ],
    );
    assert_clean_run(&v, "txn-put", 300);

    // --duration: runs about as long as asked, then stops by itself.
    let v = bench_json(
        &etcd,
        &[
            "put",
            "--duration",
            "1",
            "--clients",
            "4",
            "--key-space-size",
            "50",
        ],
    );
    assert_eq!(v["errors"], 0, "{v}");
    assert!(v["total"].as_u64().unwrap() > 0, "{v}");
    let elapsed = v["elapsed_s"].as_f64().unwrap();
    assert!((0.9..5.0).contains(&elapsed), "elapsed {elapsed}");

    // compare: both sides run and ratios are computed (same etcd on both sides here).
    let out = bench(&[
        "--json",
        "--total",
        "300",
        "--clients",
        "4",
        "compare",
        "--a-endpoints",
        &etcd.client_url,
        "--b-endpoints",
        &etcd.client_url,
        "--a-label",
        "etcd",
        "--b-label",
        "etcd-again",
        "--a-pid",
        &pid,
        "--b-pid",
        &pid,
        "put",
    ]);
    assert!(
        out.status.success(),
        "compare failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("compare JSON");
    assert_eq!(v["a"]["label"], "etcd");
    assert_eq!(v["b"]["label"], "etcd-again");
    assert_eq!(v["a"]["total"], 300);
    assert_eq!(v["b"]["errors"], 0);
    assert!(v["ratios"]["throughput"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["ratios"]["peak_rss_kib"].as_f64().unwrap() > 0.0, "{v}");

    // Text output (the default) has etcd's summary shape.
    let out = bench(&["--endpoints", &etcd.client_url, "put", "--total", "100"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for needle in [
        "Summary:",
        "Requests/sec:",
        "Latency distribution:",
        "99.9% in",
        "Response time histogram",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(etcd_data_dir_exists(etcd.dir.path()));
}

/// The watch and lease benchmarks, small: every count is checked in the JSON, and what
/// they leave behind (leases, keys) in etcd itself.
#[test]
fn watch_and_lease_benchmarks_against_etcd() {
    let etcd = Etcd::start();
    let pid = etcd.pid().to_string();
    let url = etcd.client_url.clone();

    // watch, same key: every put reaches every watcher.
    let v = bench_json(
        &etcd,
        &[
            "--target-pid",
            &pid,
            "--conns",
            "2",
            "--clients",
            "2",
            "--total",
            "10",
            "watch",
            "--watchers",
            "50",
            "--streams",
            "5",
        ],
    );
    assert_clean_run(&v, "watch", 500);
    assert_eq!(v["unit"], "events");
    let d = &v["details"];
    assert_eq!(d["events"]["expected"], 500, "{d}");
    assert_eq!(d["events"]["missing"], 0, "{d}");
    assert_eq!(d["puts"]["ok"], 10, "{d}");
    assert_eq!(
        (
            d["watch"]["watchers"].as_u64(),
            d["watch"]["streams"].as_u64()
        ),
        (Some(50), Some(5))
    );
    assert!(d["rss"]["after_watchers_kib"].as_u64().unwrap() > 0, "{d}");
    assert!(d["rss"]["per_watcher_bytes"].is_number(), "{d}");
    let (n, values) = etcd_range(&url, b"bench-watch/same", &[]);
    assert_eq!(
        (n, values[0].len()),
        (1, 16),
        "the watched key holds a stamped value"
    );

    // watch, distinct keys: one event per put; the default is one put per watcher.
    let v = bench_json(
        &etcd,
        &[
            "--clients",
            "4",
            "watch",
            "--watchers",
            "20",
            "--streams",
            "3",
            "--keys",
            "distinct",
        ],
    );
    assert_clean_run(&v, "watch", 20);
    assert_eq!(etcd_prefix_count(&url, "bench-watch/0"), 20);

    // lease-grant with attached keys; the cleanup revokes the leases, and with them the keys.
    let v = bench_json(
        &etcd,
        &[
            "--clients",
            "4",
            "--total",
            "50",
            "lease-grant",
            "--attach",
            "--ttl",
            "30",
        ],
    );
    assert_clean_run(&v, "lease-grant", 50);
    assert_eq!(v["details"]["granted_ttl_s"], 30);
    assert_eq!(v["details"]["cleanup_revoke"]["ok"], 50, "{v}");
    assert_eq!(etcd_lease_count(&url), 0, "lease-grant revoked its leases");
    assert_eq!(etcd_prefix_count(&url, "bench-lease-grant/"), 0);

    // --keep-leases leaves them.
    let v = bench_json(&etcd, &["--total", "5", "lease-grant", "--keep-leases"]);
    assert_clean_run(&v, "lease-grant", 5);
    assert_eq!(etcd_lease_count(&url), 5);

    // lease-keepalive over 4 streams.
    let v = bench_json(
        &etcd,
        &[
            "--clients",
            "4",
            "--conns",
            "2",
            "--total",
            "200",
            "lease-keepalive",
            "--leases",
            "20",
        ],
    );
    assert_clean_run(&v, "lease-keepalive", 200);
    assert_eq!(v["details"]["grant"]["leases"], 20);
    assert_eq!(v["details"]["cleanup_revoke"]["ok"], 20, "{v}");
    assert_eq!(etcd_lease_count(&url), 5, "only the kept leases remain");

    // lease-expire: 20 leases with 2 keys each expire under a put workload.
    let v = bench_json(
        &etcd,
        &[
            "--target-pid",
            &pid,
            "--clients",
            "2",
            "--rate",
            "200",
            "lease-expire",
            "--leases",
            "20",
            "--keys-per-lease",
            "2",
            "--ttl",
            "3",
            "--tail",
            "200ms",
        ],
    );
    assert_eq!(v["command"], "lease-expire");
    assert_eq!(v["errors"], 0, "{v}");
    let d = &v["details"];
    assert_eq!(d["expiry"]["complete"], true, "{d}");
    assert_eq!(d["expiry"]["keys_deleted"], 40, "{d}");
    assert_eq!(d["leases"]["ending"], "expire");
    assert!(
        d["puts_before"]["ok"].as_u64().unwrap() > 0,
        "a baseline was measured: {d}"
    );
    assert!(d["puts_all"]["ok"].as_u64().unwrap() >= v["total"].as_u64().unwrap());
    assert_eq!(etcd_prefix_count(&url, "bench-lease-expire/"), 0);
    assert_eq!(etcd_lease_count(&url), 5, "the expired leases are gone");

    // lease-expire --revoke: one lease with 100 keys, attached in txns, seen by polling.
    let v = bench_json(
        &etcd,
        &[
            "--clients",
            "2",
            "--rate",
            "200",
            "lease-expire",
            "--leases",
            "1",
            "--keys-per-lease",
            "100",
            "--attach-txn-ops",
            "30",
            "--revoke",
            "--ttl",
            "1",
            "--detect",
            "poll",
            "--poll-interval",
            "20ms",
            "--tail",
            "0s",
        ],
    );
    assert_eq!(v["errors"], 0, "{v}");
    let d = &v["details"];
    assert_eq!(d["expiry"]["complete"], true, "{d}");
    assert_eq!(d["expiry"]["keys_deleted"], 100, "{d}");
    assert_eq!(d["leases"]["ending"], "revoke");
    assert_eq!(d["revoke"]["ok"], 1, "{d}");
    assert_eq!(etcd_prefix_count(&url, "bench-lease-expire/"), 0);
    assert_eq!(etcd_lease_count(&url), 5);

    // Leftover keys under the prefix are refused rather than miscounted.
    let v = bench_json(&etcd, &["--total", "1", "put"]);
    assert_eq!(v["errors"], 0);
    let out = bench(&[
        "--endpoints",
        &url,
        "lease-expire",
        "--key-prefix",
        "bench-watch/",
        "--leases",
        "1",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already exist under --key-prefix"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn etcd_data_dir_exists(dir: &Path) -> bool {
    dir.join("data").join("member").is_dir()
}

#[test]
fn unreachable_endpoint_fails_clearly() {
    let port = free_port(); // nothing listens there any more
    let out = bench(&[
        "--endpoints",
        &format!("127.0.0.1:{port}"),
        "--dial-timeout",
        "2s",
        "put",
        "--total",
        "10",
    ]);
    assert!(!out.status.success(), "must fail without a server");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("connect to http://127.0.0.1:"), "{err}");
}

#[test]
fn bad_flags_are_rejected() {
    let out = bench(&["--endpoints", "https://127.0.0.1:2379", "put"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TLS"));
    let out = bench(&[
        "put",
        "--key-size",
        "1",
        "--key-space-size",
        "1000",
        "--total",
        "1",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--key-size 1 is too small"));
}

/// Kills the child process on drop.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn null_server_measures_the_tool_itself() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let server = KillOnDrop(
        Command::new(BENCH)
            .args(["null-server", "--listen", &addr])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start null-server"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "null-server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = server.0.id().to_string();
    for cmd in [
        &["put", "--val-size", "256"][..],
        &["range", "foo"],
        &["txn-put"],
    ] {
        let mut args = vec![
            "--endpoints",
            &addr,
            "--json",
            "--total",
            "2000",
            "--clients",
            "16",
            "--conns",
            "4",
            "--target-pid",
            &pid,
        ];
        args.extend_from_slice(cmd);
        let out = bench(&args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_clean_run(&v, cmd[0], 2000);
        assert!(v["client_cpu_s"].as_f64().is_some(), "{v}");
        assert!(v["target_cpu_s"].as_f64().is_some(), "{v}");
    }
}
