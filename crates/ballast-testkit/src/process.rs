//! Real server processes (Debian's etcd or Ballast) for integration tests.
//!
//! A [`Server`] owns one child process, its temp dir (data dir + log file) and its two ports. It is
//! started with etcd's own flags (`--name --data-dir --listen-client-urls ...`), so the same code drives
//! both implementations. Guarantees:
//! - the child's stdout and stderr go to `server.log` in the temp dir; the tail is printed when a test
//!   panics while the server is alive, and included in every start/readiness panic;
//! - `Drop` SIGKILLs the child and removes the temp dir (set `BALLAST_TESTKIT_KEEP_DIRS=1` to keep it);
//!   dirs of test processes that died without dropping are swept by the next run;
//! - children are spawned from one long-lived helper thread with `PR_SET_PDEATHSIG = SIGKILL`, so even a
//!   test binary that aborts or is killed leaves no server running (statics are never dropped, and the
//!   death signal fires when the *spawning thread* exits, hence the dedicated thread).
//!
//! A single server listens on 127.0.0.1. [`crate::Cluster`] builds its members from the same type
//! ([`Server::prepare`] + [`Server::spawn_without_wait`] + [`Server::wait_ready`]), each on an address
//! 127.0.0.x of its own and with the multi-member flags of [`MemberFlags`].
//!
//! This module must never talk to a registry or the network beyond 127.0.0.0/8.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::ports::free_port;

/// How long a server gets to answer its first request.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `stop()` waits after SIGTERM before it SIGKILLs.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Lines of the server log shown in failure messages.
const LOG_TAIL_LINES: usize = 40;

/// Temp dirs are named `ballast-testkit-<kind>-XXXXXX`.
const DIR_PREFIX: &str = "ballast-testkit-";
/// Holds the pid of the test process that owns a temp dir.
const OWNER_FILE: &str = "owner.pid";

/// Once per process: remove temp dirs left behind by test processes that were killed before their
/// `Drop` ran (their servers died with them through the parent-death signal). A dir is stale when
/// its owner pid no longer exists; dirs without an owner file count as stale after a day.
fn sweep_stale_dirs() {
    static SWEPT: OnceLock<()> = OnceLock::new();
    SWEPT.get_or_init(|| {
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let is_ours = entry.file_name().to_string_lossy().starts_with(DIR_PREFIX);
            if !is_ours || !path.is_dir() {
                continue;
            }
            let stale = match std::fs::read_to_string(path.join(OWNER_FILE)) {
                Ok(pid) => !Path::new(&format!("/proc/{}", pid.trim())).exists(),
                Err(_) => entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > Duration::from_secs(24 * 3600)),
            };
            if stale {
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    });
}

/// Which implementation a [`Server`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerKind {
    /// Debian's etcd 3.4 (`/usr/bin/etcd`, or env `BALLAST_TEST_ETCD_BIN`).
    Etcd,
    /// Ballast (env `BALLAST_BIN`, or `<workspace>/target/release/ballast`).
    Ballast,
}

impl ServerKind {
    /// Short lowercase name, used in messages and temp dir names.
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Etcd => "etcd",
            ServerKind::Ballast => "ballast",
        }
    }

    /// The binary this kind runs; panics with instructions when it does not exist.
    pub fn binary(self) -> PathBuf {
        match self {
            ServerKind::Etcd => {
                let bin = std::env::var_os("BALLAST_TEST_ETCD_BIN")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
                assert!(
                    bin.is_file(),
                    "etcd binary {} not found: install Debian's etcd-server (or set BALLAST_TEST_ETCD_BIN)",
                    bin.display()
                );
                bin
            }
            ServerKind::Ballast => {
                let bin = ballast_binary();
                assert!(
                    bin.is_file(),
                    "Ballast binary {} not found: build it first: cargo build --release --bins \
                     (or point BALLAST_BIN at it)",
                    bin.display()
                );
                bin
            }
        }
    }
}

impl std::fmt::Display for ServerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Root of the Cargo workspace this crate lives in.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// `BALLAST_BIN`, else `$CARGO_TARGET_DIR/release/ballast`, else `<workspace>/target/release/ballast`.
pub fn ballast_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("BALLAST_BIN") {
        return PathBuf::from(bin);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| {
            if t.is_absolute() {
                t
            } else {
                workspace_root().join(t)
            }
        })
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("release").join("ballast")
}

/// Options for [`Server::start_with`].
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Member name (`--name`), also used in `--initial-cluster`.
    pub name: String,
    /// Appended after the standard flags.
    pub extra_args: Vec<String>,
    /// How long to wait for the first successful request.
    pub ready_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            name: "n1".to_owned(),
            extra_args: Vec::new(),
            ready_timeout: DEFAULT_READY_TIMEOUT,
        }
    }
}

/// The flags that make a [`Server`] one member of a multi-member cluster (set by [`crate::Cluster`]).
#[derive(Debug, Clone)]
pub(crate) struct MemberFlags {
    /// `--initial-advertise-peer-urls`: what the other members dial (a peer proxy's URL when there is
    /// one), and this member's entry in `--initial-cluster`.
    pub advertise_peer_url: String,
    /// `--initial-cluster`
    pub initial_cluster: String,
    /// `--initial-cluster-state`: `new` or `existing`.
    pub initial_cluster_state: &'static str,
    /// `--initial-cluster-token`
    pub initial_cluster_token: String,
}

/// One running (or stopped) server with its data dir, log file and ports: a single-member server, or
/// one member of a [`crate::Cluster`].
pub struct Server {
    kind: ServerKind,
    bin: PathBuf,
    opts: ServerOptions,
    dir: Option<TempDir>,
    data_dir: PathBuf,
    log_path: PathBuf,
    host: Ipv4Addr,
    client_port: u16,
    peer_port: u16,
    member: Option<MemberFlags>,
    child: Option<Child>,
}

/// `EtcdProcess::start()`: a fresh single-member etcd 3.4.
pub struct EtcdProcess;

impl EtcdProcess {
    /// Start a fresh etcd and wait until it serves a linearizable Range.
    pub fn start() -> Server {
        Server::start(ServerKind::Etcd)
    }
}

/// `BallastProcess::start()`: a fresh single-member Ballast.
pub struct BallastProcess;

impl BallastProcess {
    /// Start a fresh Ballast and wait until it serves a linearizable Range.
    pub fn start() -> Server {
        Server::start(ServerKind::Ballast)
    }
}

impl Server {
    /// Start a fresh server of `kind` with default options; panics (with the log tail) if it does not
    /// become ready.
    pub fn start(kind: ServerKind) -> Server {
        Self::start_with(kind, ServerOptions::default())
    }

    /// Start a fresh server of `kind`.
    pub fn start_with(kind: ServerKind, opts: ServerOptions) -> Server {
        Self::start_custom(kind, kind.binary(), None, opts)
    }

    /// Start a fresh server of `kind` from the binary `bin` (e.g. the failpoint build), with
    /// `data_dir` as its `--data-dir` when given (the caller owns it, e.g. a small mount),
    /// else one in the server's temp dir.
    pub fn start_custom(
        kind: ServerKind,
        bin: PathBuf,
        data_dir: Option<PathBuf>,
        opts: ServerOptions,
    ) -> Server {
        let mut server = Self::prepare(kind, bin, data_dir, opts, Ipv4Addr::LOCALHOST);
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            server.client_port = free_port();
            server.peer_port = free_port();
            server.spawn();
            match server.wait_ready() {
                Ok(()) => return server,
                Err(err) => {
                    let log = server.log_tail(LOG_TAIL_LINES);
                    let collision = server.port_collision();
                    if collision && attempt < ATTEMPTS {
                        server.kill();
                        let _ = std::fs::remove_dir_all(&server.data_dir);
                        server.note(&format!(
                            "--- port collision, retrying (attempt {})",
                            attempt + 1
                        ));
                        continue;
                    }
                    server.kill();
                    panic!(
                        "{} ({}) did not become ready on {}: {err}\n--- last lines of {} ---\n{log}",
                        kind,
                        server.bin.display(),
                        server.client_url(),
                        server.log_path.display()
                    );
                }
            }
        }
        unreachable!()
    }

    /// A server that is not started yet: its temp dir exists, its ports are not chosen (0) and it
    /// listens on `host` once they are ([`Server::set_ports`]).
    pub(crate) fn prepare(
        kind: ServerKind,
        bin: PathBuf,
        data_dir: Option<PathBuf>,
        opts: ServerOptions,
        host: Ipv4Addr,
    ) -> Server {
        sweep_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", kind.name()))
            .tempdir()
            .expect("create temp dir");
        // Lets a later run remove this dir if this process dies without running `Drop`.
        let _ = std::fs::write(dir.path().join(OWNER_FILE), std::process::id().to_string());
        let data_dir = data_dir.unwrap_or_else(|| dir.path().join("data"));
        let log_path = dir.path().join("server.log");
        Server {
            kind,
            bin,
            opts,
            data_dir,
            log_path,
            dir: Some(dir),
            host,
            client_port: 0,
            peer_port: 0,
            member: None,
            child: None,
        }
    }

    /// The client and peer ports the next start listens on.
    pub(crate) fn set_ports(&mut self, client_port: u16, peer_port: u16) {
        self.client_port = client_port;
        self.peer_port = peer_port;
    }

    /// Makes the next start one member of a multi-member cluster. Such a server counts as ready when
    /// it answers a *serializable* Range: a learner serves nothing else, and a linearizable read
    /// depends on the other members.
    pub(crate) fn set_member_flags(&mut self, flags: MemberFlags) {
        self.member = Some(flags);
    }

    /// Which implementation this is.
    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    /// `http://HOST:PORT` of the client listener (HOST is 127.0.0.1 for a single server).
    pub fn client_url(&self) -> String {
        format!("http://{}:{}", self.host, self.client_port)
    }

    /// `http://HOST:PORT` of the peer listener.
    pub fn peer_url(&self) -> String {
        format!("http://{}:{}", self.host, self.peer_port)
    }

    /// The loopback address the server listens on.
    pub fn host(&self) -> Ipv4Addr {
        self.host
    }

    /// Peer port (the real listener, not a proxy in front of it).
    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }

    /// Client port.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The `--data-dir`.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Where the child's stdout + stderr go.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The child's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the child is still running (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL the child and reap it (no-op when not running).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM the child and wait for it (SIGKILL after 10 s). Returns its exit status, or `None` when
    /// it was not running.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        // SAFETY: plain kill(2) on the pid of a child we have not reaped yet (so it cannot be reused).
        // SIGCONT after it: a paused child handles the SIGTERM instead of sitting on it.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            libc::kill(child.id() as libc::pid_t, libc::SIGCONT);
        }
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    return child.wait().ok();
                }
            }
        }
    }

    /// SIGSTOP the child: it stays alive, holds its sockets and answers nothing (no-op when not
    /// running). [`Server::resume`] continues it; `kill`, `stop` and `Drop` work on a paused child.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT the child after [`Server::pause`] (no-op when not running).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(child) = self.child.as_ref() {
            // SAFETY: kill(2) on the pid of a child we have not reaped yet (so it cannot be reused).
            unsafe {
                libc::kill(child.id() as libc::pid_t, sig);
            }
        }
    }

    /// The binary the next start or restart runs (e.g. the normal build after a fault test
    /// ran the failpoint build on the same data dir).
    pub fn set_binary(&mut self, bin: PathBuf) {
        self.bin = bin;
    }

    /// Waits up to `timeout` for the child to exit by itself; returns its exit status (the
    /// child is reaped), or `None` if it still runs (or was not running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => return None,
            }
        }
    }

    /// Stop (SIGTERM) if running, then start again on the same data dir and ports and wait until ready.
    pub fn restart(&mut self) {
        self.stop();
        self.note("--- restart");
        self.spawn();
        self.wait_ready_or_panic("after restart");
    }

    /// [`Server::wait_ready`], or kill the child and panic with the log tail; `when` says at what
    /// point it was (e.g. "after restart").
    pub(crate) fn wait_ready_or_panic(&mut self, when: &str) {
        if let Err(err) = self.wait_ready() {
            self.fail_not_ready(when, &err);
        }
    }

    /// Kill the child and panic with `err` (from [`Server::wait_ready`]) and the log tail.
    pub(crate) fn fail_not_ready(&mut self, when: &str, err: &str) -> ! {
        let log = self.log_tail(LOG_TAIL_LINES);
        self.kill();
        panic!(
            "{} ({}) did not become ready {when} on {}: {err}\n--- last lines of {} ---\n{log}",
            self.kind,
            self.opts.name,
            self.client_url(),
            self.log_path.display()
        );
    }

    /// Whether the log says a listener could not bind (another process took a port we chose).
    pub(crate) fn port_collision(&self) -> bool {
        self.log_tail(LOG_TAIL_LINES)
            .contains("address already in use")
    }

    /// Write `line` into the server log (e.g. what the harness did to the process).
    pub(crate) fn note(&self, line: &str) {
        if let Ok(mut f) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
        {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Start the child again after [`Server::kill`]/[`Server::stop`] without waiting for readiness.
    pub fn spawn_without_wait(&mut self) {
        assert!(self.child.is_none(), "server is already running");
        self.spawn();
    }

    /// Wait until the server answers a linearizable Range (a cluster member: a serializable one), or
    /// exits, or times out.
    pub fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + self.opts.ready_timeout;
        let addr: SocketAddr = (self.host, self.client_port).into();
        let serializable = self.member.is_some();
        let mut last_err = String::from("never attempted");
        loop {
            let child = self.child.as_mut().ok_or("server is not running")?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(format!(
                    "process exited with {status} before becoming ready"
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "timed out after {:?}; last error: {last_err}",
                    self.opts.ready_timeout
                ));
            }
            match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Err(e) => last_err = format!("tcp connect: {e}"),
                Ok(_) => match crate::block_on(probe(self.client_url(), serializable)) {
                    Ok(()) => return Ok(()),
                    Err(e) => last_err = format!("Range probe: {e}"),
                },
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last `n` lines of the server log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("<cannot read log: {e}>"));
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Run `etcdctl` (API v3) against this server.
    pub fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        crate::etcdctl(&self.client_url(), args)
    }

    fn args(&self) -> Vec<OsString> {
        let client = self.client_url();
        let peer = self.peer_url();
        let mut args: Vec<OsString> = vec![
            "--name".into(),
            self.opts.name.clone().into(),
            "--data-dir".into(),
            self.data_dir.clone().into(),
            "--listen-client-urls".into(),
            client.clone().into(),
            "--advertise-client-urls".into(),
            client.into(),
            "--listen-peer-urls".into(),
            peer.clone().into(),
        ];
        match &self.member {
            None => args.extend([
                "--initial-advertise-peer-urls".into(),
                peer.clone().into(),
                "--initial-cluster".into(),
                format!("{}={peer}", self.opts.name).into(),
            ]),
            Some(m) => args.extend([
                "--initial-advertise-peer-urls".into(),
                m.advertise_peer_url.clone().into(),
                "--initial-cluster".into(),
                m.initial_cluster.clone().into(),
                "--initial-cluster-state".into(),
                m.initial_cluster_state.into(),
                "--initial-cluster-token".into(),
                m.initial_cluster_token.clone().into(),
            ]),
        }
        args.extend(self.opts.extra_args.iter().map(OsString::from));
        args
    }

    fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open server log");
        let log_err = log.try_clone().expect("clone log handle");
        let mut cmd = Command::new(&self.bin);
        cmd.args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        // Both implementations read ETCD_* variables as flags: keep the caller's out.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD") {
                cmd.env_remove(key);
            }
        }
        let child = spawn_tied_to_process(cmd)
            .unwrap_or_else(|e| panic!("cannot spawn {} ({}): {e}", self.kind, self.bin.display()));
        self.child = Some(child);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let was_running = self.child.is_some();
        self.kill();
        if std::thread::panicking() && was_running {
            eprintln!(
                "--- {} on {}: last lines of {} ---\n{}\n--- end of {} log ---",
                self.kind,
                self.client_url(),
                self.log_path.display(),
                self.log_tail(LOG_TAIL_LINES),
                self.kind
            );
        }
        if std::env::var_os("BALLAST_TESTKIT_KEEP_DIRS").is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!("ballast-testkit: keeping {}", dir.keep().display());
            }
        }
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("kind", &self.kind)
            .field("client_url", &self.client_url())
            .field("pid", &self.pid())
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

/// One Range (linearizable, or serializable) over the KV API through the independent `etcd-client`
/// crate.
async fn probe(url: String, serializable: bool) -> Result<(), String> {
    let opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(500))
        .with_timeout(Duration::from_secs(2));
    let mut client = etcd_client::Client::connect([url], Some(opts))
        .await
        .map_err(|e| e.to_string())?;
    let opts = serializable.then(|| etcd_client::GetOptions::new().with_serializable());
    client
        .get("ballast-testkit/ready", opts)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawn `cmd` from a helper thread that lives as long as the process, with the parent-death signal
/// set to SIGKILL: the child dies with the test binary however the binary ends.
fn spawn_tied_to_process(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("ballast-testkit-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start spawner thread");
        Mutex::new(tx)
    });
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure only calls async-signal-safe functions (prctl, getppid, _exit).
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("spawner thread is gone"))?
}
