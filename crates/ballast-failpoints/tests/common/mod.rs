//! The fault-test harness: one real `ballast-failpoints` process per case, armed by name over
//! its HTTP endpoint, driven by independent clients (`etcd-client`, tonic's health client).
//!
//! [`run_case`] does what every case checks:
//! 1. start the member (small `--snapshot-count`), write keys with success;
//! 2. open a `grpc.health.v1.Health/Watch` stream (SERVING);
//! 3. arm the failpoint, start concurrent writers (requests in flight) and the case's trigger;
//! 4. the writers get errors, never a success that is not there after the restart;
//! 5. once stopped, a serializable Range is refused and `/health` is not healthy;
//! 6. the health stream delivers NOT_SERVING before the process exits, non-zero (1);
//! 7. the log has ONE fault line naming the fault;
//! 8. restarted (nothing armed), the member has every acknowledged write with its value.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ballast_testkit::client::{etcd_client, put_until_error, read_from_key, Acked};
use ballast_testkit::{Server, ServerKind, ServerOptions};
use etcd_client::GetOptions;
use tokio::runtime::Runtime;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The fault-test build of the server.
pub fn failpoint_binary() -> std::path::PathBuf {
    env!("CARGO_BIN_EXE_ballast-failpoints").into()
}

/// Keys written (and acknowledged) before the failpoint is armed.
const KEYS_BEFORE: usize = 40;
/// Concurrent writers while the failpoint is armed.
const WRITERS: usize = 4;
/// How long the writers keep going at most (the fault must come well before).
const WRITE_FOR: Duration = Duration::from_secs(40);
/// How long the stopped member may take to exit.
const EXIT_WITHIN: Duration = Duration::from_secs(20);

/// What sets off the armed failpoint besides the writers' puts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The writers' puts alone (WAL writes, backend commits, snapshots, purges).
    Puts,
    /// A physical Compact call to the revision reached before arming.
    Compact,
    /// A lease granted after arming (its checkpoint follows within half an election timeout).
    LeaseCheckpoint,
}

pub struct Case {
    pub failpoint: &'static str,
    pub action: &'static str,
    pub trigger: Trigger,
    /// `--snapshot-count`.
    pub snapshot_count: u64,
    /// Bytes per value the writers put.
    pub value_size: usize,
    /// Substrings the one fault line must contain.
    pub fault_line: &'static [&'static str],
    /// The cause (e.g. "No space left on device"): in the fault line, or on an error line of
    /// the failing layer's own (the WAL logs its cause and reports itself poisoned).
    pub cause: &'static str,
}

impl Case {
    pub fn new(failpoint: &'static str, action: &'static str) -> Case {
        Case {
            failpoint,
            action,
            trigger: Trigger::Puts,
            snapshot_count: 100,
            value_size: 64,
            fault_line: &[],
            cause: "",
        }
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// One HTTP/1.1 request on the client port; (status code, body).
pub fn http(port: u16, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// Arms `name` with `action` on the running member and checks it is listed.
pub fn arm(server: &Server, name: &str, action: &str) {
    let port = server.client_port();
    let (code, body) = http(port, "PUT", &format!("/debug/failpoints/{name}"), action)
        .unwrap_or_else(|e| panic!("arm {name}: {e}"));
    assert!(
        (200..300).contains(&code),
        "arm {name}={action}: {code} {body}"
    );
    let (_, listed) = http(port, "GET", "/debug/failpoints", "").expect("list failpoints");
    assert!(
        listed.lines().any(|l| l == format!("{name}={action}")),
        "{name}={action} not in the armed list: {listed:?}"
    );
}

fn value(prefix: &str, i: usize, size: usize) -> String {
    let mut v = format!("{prefix}-{i}-");
    while v.len() < size {
        v.push('x');
    }
    v
}

/// Runs one fault case end to end (see the module docs).
pub fn run_case(case: Case) {
    let rt = runtime();
    let mut server = Server::start_custom(
        ServerKind::Ballast,
        failpoint_binary(),
        None,
        ServerOptions {
            extra_args: vec![
                "--snapshot-count".into(),
                case.snapshot_count.to_string(),
                // Room for large values (the segment-cut case).
                "--max-request-bytes".into(),
                (2 << 20).to_string(),
            ],
            ..ServerOptions::default()
        },
    );
    let url = server.client_url();
    let acked: Acked = Arc::default();

    // 1. Acknowledged writes before the fault.
    let compact_to = rt.block_on({
        let (url, acked) = (url.clone(), acked.clone());
        async move {
            let mut c = etcd_client(&url).await;
            let mut rev = 0;
            for i in 0..KEYS_BEFORE {
                let (k, v) = (format!("before/{i:04}"), value("before", i, 64));
                let r = c.put(k.clone(), v.clone(), None).await.expect("put before");
                rev = r.header().map_or(0, |h| h.revision());
                acked.lock().unwrap().insert(k, v);
            }
            rev
        }
    });

    // 2. The health stream, SERVING first.
    let not_serving_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    rt.block_on({
        let (url, not_serving_at) = (url.clone(), not_serving_at.clone());
        async move {
            let channel = tonic::transport::Endpoint::from_shared(url)
                .expect("endpoint")
                .connect()
                .await
                .expect("health channel");
            let mut health = HealthClient::new(channel);
            let mut stream = health
                .watch(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .expect("health watch")
                .into_inner();
            let first = stream.message().await.expect("health status").expect("one");
            assert_eq!(first.status, ServingStatus::Serving as i32);
            tokio::spawn(async move {
                while let Ok(Some(m)) = stream.message().await {
                    if m.status == ServingStatus::NotServing as i32 {
                        *not_serving_at.lock().unwrap() = Some(Instant::now());
                        break;
                    }
                }
            });
        }
    });

    // 3. Arm, then requests in flight.
    arm(&server, case.failpoint, case.action);
    let started = Instant::now();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (url, acked, errors) = (url.clone(), acked.clone(), errors.clone());
        let size = case.value_size;
        writers.push(rt.spawn(async move {
            let kv = |i| (format!("w{w}/{i:06}"), value(&format!("w{w}"), i, size));
            put_until_error(&url, started + WRITE_FOR, kv, acked, errors).await;
        }));
    }
    let trigger = rt.spawn({
        let (url, acked) = (url.clone(), acked.clone());
        let trigger = case.trigger;
        async move {
            let mut c = etcd_client(&url).await;
            match trigger {
                Trigger::Puts => Ok(()),
                Trigger::Compact => c
                    .compact(
                        compact_to,
                        Some(etcd_client::CompactionOptions::new().with_physical()),
                    )
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
                Trigger::LeaseCheckpoint => {
                    let lease = c.lease_grant(600, None).await.map_err(|e| e.to_string())?;
                    let (k, v) = ("leased".to_string(), format!("lease-{:x}", lease.id()));
                    c.put(
                        k.clone(),
                        v.clone(),
                        Some(etcd_client::PutOptions::new().with_lease(lease.id())),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                    acked.lock().unwrap().insert(k, v);
                    Ok(())
                }
            }
        }
    });

    // 4. The writers stop on their first error.
    let triggered = rt.block_on(trigger).expect("trigger task");
    if case.trigger != Trigger::Puts {
        eprintln!(
            "{}: the {:?} trigger got {triggered:?}",
            case.failpoint, case.trigger
        );
    }
    for w in writers {
        rt.block_on(w).expect("writer task");
    }
    let errors = errors.lock().unwrap().clone();
    assert!(
        !errors.is_empty(),
        "{}={} never stopped the member: every write succeeded for {WRITE_FOR:?}\n{}",
        case.failpoint,
        case.action,
        server.log_tail(30)
    );

    // 5. Stopped: reads refused too, /health not healthy (or the port already closed).
    let read = rt.block_on({
        let url = url.clone();
        async move {
            let mut c = etcd_client(&url).await;
            c.get("before/0000", Some(GetOptions::new().with_serializable()))
                .await
                .map(|r| r.kvs().len())
                .map_err(|e| e.to_string())
        }
    });
    // Refused by the member (its gate), or by a closed port once it has stopped serving.
    match &read {
        Ok(n) => panic!("a serializable read after the fault got {n} keys"),
        Err(e) => assert!(
            e.contains("etcdserver: server stopped") || e.contains("transport error"),
            "a serializable read after the fault: {e}"
        ),
    }
    if let Ok((code, body)) = http(server.client_port(), "GET", "/health", "") {
        assert!(
            code == 503 && body.contains("\"false\""),
            "/health after the fault: {code} {body}"
        );
    }

    // 6. Exit, non-zero, after health said NOT_SERVING.
    let status = server
        .wait_exit(EXIT_WITHIN)
        .unwrap_or_else(|| panic!("the stopped member did not exit within {EXIT_WITHIN:?}"));
    let exited_at = Instant::now();
    assert_eq!(status.code(), Some(1), "exit status {status}");
    let not_serving = *not_serving_at.lock().unwrap();
    let not_serving = not_serving.expect("health stream delivered NOT_SERVING");
    assert!(not_serving < exited_at, "NOT_SERVING before the exit");

    // 7. One fault line naming the fault.
    let log = server.log_tail(100_000);
    let fault_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("stopping the member"))
        .collect();
    assert_eq!(fault_lines.len(), 1, "one fault line: {fault_lines:#?}");
    let line = fault_lines[0];
    assert!(line.contains("\"level\":\"error\""), "{line}");
    for want in case.fault_line {
        assert!(line.contains(want), "fault line names {want:?}: {line}");
    }
    let cause_logged = line.contains(case.cause)
        || log
            .lines()
            .any(|l| l.contains("\"level\":\"error\"") && l.contains(case.cause));
    assert!(cause_logged, "the cause {:?} is logged:\n{log}", case.cause);
    for e in &errors {
        assert!(
            e.contains("etcdserver: server stopped"),
            "a request in flight gets etcd's ErrStopped: {e}"
        );
    }

    // 8. Restart (nothing armed): every acknowledged write is there.
    server.restart();
    let acked = acked.lock().unwrap().clone();
    let found = rt.block_on({
        let url = url.clone();
        async move {
            let mut c = etcd_client(&url).await;
            // In pages of 4: the values may be large (512 KiB).
            let m = read_from_key(&mut c, b"\0", 4).await;
            c.put("after-restart", "ok", None)
                .await
                .expect("a write after the restart");
            m
        }
    });
    let mut missing = Vec::new();
    for (k, v) in &acked {
        if found.get(k) != Some(v) {
            missing.push(k.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost or changed after the restart: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
    eprintln!(
        "{}={}: {} acknowledged writes kept, {} requests in flight failed (server stopped); read after the fault: {read:?}; fault line: {line}",
        case.failpoint,
        case.action,
        acked.len(),
        errors.len()
    );
    if case.trigger == Trigger::LeaseCheckpoint {
        let ttl = rt.block_on(async move {
            let mut c = etcd_client(&url).await;
            let leased = c.get("leased", None).await.expect("get leased");
            let lease = leased.kvs().first().map(|kv| kv.lease()).unwrap_or(0);
            c.lease_time_to_live(lease, None)
                .await
                .map(|r| r.ttl())
                .unwrap_or(-1)
        });
        assert!(ttl > 0, "the lease survives the fault: TTL {ttl}");
    }
    server.stop();
}
