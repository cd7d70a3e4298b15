//! ballast-testkit: the harness for tests that run real servers over real sockets.
//!
//! It owns process management and nothing else: it starts Debian's etcd 3.4 or Ballast as child
//! processes with etcd's flags ([`Server`], [`EtcdProcess`], [`BallastProcess`]), hands out free ports
//! ([`free_port`]), keeps each server's data dir and log in a temp dir, waits for readiness, and cleans
//! everything up on `Drop` (the child is SIGKILLed; it is also tied to the test process with a
//! parent-death signal so nothing outlives a crashed test binary). It also wraps `etcdctl`
//! ([`etcdctl()`]), hands out connected raw gRPC clients ([`kv_client`], [`lease_client`], [`maintenance_client`]), and
//! picks the server pair compatibility tests compare ([`compat_pair`]). Beside the harness it holds the
//! checkers that judge what a test recorded, without talking to any server: the watch guarantees
//! ([`watch_check`]) and the linearizability of client answers ([`linearizability`]).
//!
//! Multi-member clusters ([`Cluster`]) are built from the same servers, each member on a loopback
//! address of its own ([`loopback_host`]), optionally behind an in-process TCP proxy on its peer
//! port ([`PeerProxy`]) that can blackhole, delay or cut the peer traffic to it.
//!
//! Compatibility tests run every script against a *reference* (always etcd) and a *candidate*: Ballast,
//! or a second etcd when `BALLAST_COMPAT_SELFTEST=1` (that mode validates the harness itself: every
//! comparison must pass etcd-vs-etcd).
//!
//! Environment:
//! - `BALLAST_BIN`: the Ballast binary (default `<workspace>/target/release/ballast`; build it first
//!   with `cargo build --release --bins`);
//! - `BALLAST_TEST_ETCD_BIN`, `BALLAST_TEST_ETCDCTL_BIN`: reference binaries (default `/usr/bin/...`);
//! - `BALLAST_COMPAT_SELFTEST=1`: candidate = etcd;
//! - `BALLAST_TESTKIT_KEEP_DIRS=1`: keep temp dirs (data + `server.log`) for inspection.
//!
//! It never builds binaries, never touches anything outside its temp dirs, and never talks to
//! anything but loopback addresses (127.0.0.1 for single servers, 127.0.0.x for cluster members).

/// The `etcd-client` crate set up for the fault tests, and reading everything back.
pub mod client;
/// Multi-member clusters of real processes, with process control and membership changes.
pub mod cluster;
mod grpc;
// Documented inside (an outer doc here would resolve its links from the crate root).
pub mod linearizability;
mod ports;
mod process;
/// A TCP proxy in front of a member's peer listener, with network faults.
pub mod proxy;
/// Raw `Watch` streams for tests (continuously read, slowly read, or never read).
pub mod watch;
/// Checks etcd's watch guarantees against a recorded write history.
pub mod watch_check;

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

pub use cluster::{Cluster, ClusterMember, ClusterOptions};
pub use grpc::{kv_client, lease_client, maintenance_client, GrpcChannel};
pub use ports::{free_port, free_port_on, loopback_host};
pub use process::{
    ballast_binary, workspace_root, BallastProcess, EtcdProcess, Server, ServerKind, ServerOptions,
    DEFAULT_READY_TIMEOUT,
};
pub use proxy::{PeerProxy, ProxyMode, ProxyStats};

/// Run `fut` to completion on a fresh current-thread runtime in a new OS thread, so it works from
/// synchronous code and from inside another runtime alike.
pub fn block_on<F>(fut: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build tokio runtime")
            .block_on(fut)
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// True when `BALLAST_COMPAT_SELFTEST=1`: compatibility tests compare etcd with a second etcd.
pub fn selftest() -> bool {
    std::env::var("BALLAST_COMPAT_SELFTEST").is_ok_and(|v| v == "1")
}

/// The implementation under test: Ballast, or etcd in selftest mode.
pub fn candidate_kind() -> ServerKind {
    if selftest() {
        ServerKind::Etcd
    } else {
        ServerKind::Ballast
    }
}

/// Start the implementation under test (see [`candidate_kind`]).
pub fn start_candidate() -> Server {
    Server::start(candidate_kind())
}

/// The two servers a compatibility test compares.
#[derive(Debug)]
pub struct CompatPair {
    /// Always etcd 3.4: its answers are the expected ones.
    pub reference: Server,
    /// Ballast, or a second etcd in selftest mode.
    pub candidate: Server,
}

/// Start a fresh reference etcd and a fresh candidate concurrently.
pub fn compat_pair() -> CompatPair {
    compat_pair_with(ServerOptions::default())
}

/// [`compat_pair`], both servers started with `opts` (e.g. the same extra flags).
pub fn compat_pair_with(opts: ServerOptions) -> CompatPair {
    let candidate_kind = candidate_kind();
    // Fail fast (before starting etcd) when the Ballast binary is missing.
    candidate_kind.binary();
    let (reference, candidate) = std::thread::scope(|s| {
        let r = s.spawn(|| Server::start_with(ServerKind::Etcd, opts.clone()));
        let c = s.spawn(|| Server::start_with(candidate_kind, opts.clone()));
        (r.join(), c.join())
    });
    match (reference, candidate) {
        (Ok(reference), Ok(candidate)) => CompatPair {
            reference,
            candidate,
        },
        // The other server (if it started) is dropped, hence killed, here.
        (Err(p), _) | (_, Err(p)) => std::panic::resume_unwind(p),
    }
}

/// The `etcdctl` binary (env `BALLAST_TEST_ETCDCTL_BIN`, default `/usr/bin/etcdctl`).
pub fn etcdctl_binary() -> PathBuf {
    std::env::var_os("BALLAST_TEST_ETCDCTL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcdctl"))
}

/// Run `etcdctl --endpoints=ENDPOINT ARGS...` with `ETCDCTL_API=3` (no stdin).
pub fn etcdctl(endpoint: &str, args: &[&str]) -> Output {
    etcdctl_with_stdin(endpoint, args, None)
}

/// Run `etcdctl --endpoints=ENDPOINT ARGS...` with `ETCDCTL_API=3`, feeding `stdin` when given
/// (e.g. `txn --interactive=false`).
pub fn etcdctl_with_stdin(endpoint: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let bin = etcdctl_binary();
    let mut cmd = Command::new(&bin);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ETCD") {
            cmd.env_remove(key);
        }
    }
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--dial-timeout=5s")
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(input.as_bytes())
            .expect("write etcdctl stdin");
    }
    child.wait_with_output().expect("wait for etcdctl")
}
