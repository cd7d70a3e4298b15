//! Multi-member clusters of real processes on loopback: Debian's etcd, or Ballast once it clusters.
//!
//! A [`Cluster`] owns members `m1..mn`, each a [`Server`] on a loopback address 127.0.0.x of its own
//! ([`crate::loopback_host`]) with a client and a peer port, started with etcd's clustering flags
//! exactly as etcd takes them (`--initial-advertise-peer-urls`, `--initial-cluster`,
//! `--initial-cluster-state`, and an `--initial-cluster-token` unique to the cluster);
//! `--heartbeat-interval` and `--election-timeout` stay at their defaults unless
//! [`ClusterOptions::extra_args`] sets them. With [`ClusterOptions::peer_proxy`] every member has a
//! [`PeerProxy`] in front of its peer listener and advertises the proxy (see [`crate::proxy`]).
//!
//! What it gives a test: process control of one member (SIGKILL, SIGTERM, SIGSTOP/SIGCONT, restart on
//! the same data dir, replacement after a lost data dir), membership changes through `etcdctl member`
//! (the new process started with `--initial-cluster-state existing`), `etcdctl` against one member or
//! all, and the leader as the members' `Status` answers report it.
//!
//! Indices: member `i` (0-based, in order of addition) is named `m{i+1}`; a removed member keeps its
//! index. Every wait gives up after [`ClusterOptions::ready_timeout`] and panics with what each member
//! answered. A member counts as ready when it answers a serializable Range (etcd answers clients only
//! once it has joined its cluster; a learner serves nothing else).
//!
//! `Drop` SIGKILLs every member, removes their temp dirs and stops the proxies. The cluster never
//! builds binaries and only talks to 127.0.0.0/8.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ballast_proto::etcdserverpb::StatusResponse;
use tokio::runtime::Runtime;

use crate::grpc::status_within;
use crate::ports::{free_port_on, loopback_host};
use crate::process::{MemberFlags, Server, ServerKind, ServerOptions, DEFAULT_READY_TIMEOUT};
use crate::proxy::PeerProxy;

/// How long one member gets to answer a `Status`.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between two looks at the cluster while waiting.
const POLL: Duration = Duration::from_millis(100);
/// How long a removed member gets to exit by itself (etcd does) before it is stopped.
const REMOVED_EXIT_GRACE: Duration = Duration::from_secs(5);

/// etcd's answers to a membership change it refuses *for now* (strict reconfiguration checks, a
/// learner still catching up): the harness retries those until the ready timeout.
const RETRYABLE_RECONFIG: &[&str] = &[
    "unhealthy cluster",
    "not enough started members",
    "can only promote a learner member which is in sync with leader",
];

/// Options for [`Cluster::start`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Appended to every member's flags (e.g. `--election-timeout`, `--heartbeat-interval`).
    pub extra_args: Vec<String>,
    /// Put a [`PeerProxy`] in front of every member's peer listener and advertise it.
    pub peer_proxy: bool,
    /// How long each wait gets: a member answering, a leader appearing, a membership change.
    pub ready_timeout: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            extra_args: Vec::new(),
            peer_proxy: false,
            ready_timeout: DEFAULT_READY_TIMEOUT,
        }
    }
}

/// One member of a [`Cluster`]: its process, its proxy, and what the harness knows of it.
#[derive(Debug)]
pub struct ClusterMember {
    name: String,
    // Before `proxy`: on drop the process dies before its proxy closes.
    server: Server,
    proxy: Option<PeerProxy>,
    id: Option<u64>,
    learner: bool,
    paused: bool,
    removed: bool,
}

impl ClusterMember {
    /// `--name`: `m1`, `m2`, ... or the name given to [`Cluster::add_member`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `http://127.0.0.x:PORT` of the client listener.
    pub fn client_url(&self) -> String {
        self.server.client_url()
    }

    /// `http://127.0.0.x:PORT` of the real peer listener (`--listen-peer-urls`).
    pub fn peer_url(&self) -> String {
        self.server.peer_url()
    }

    /// The peer URL the others dial (`--initial-advertise-peer-urls`): the proxy's when there is one.
    pub fn advertised_peer_url(&self) -> String {
        self.proxy
            .as_ref()
            .map_or_else(|| self.server.peer_url(), PeerProxy::url)
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    /// The raft member id (from its `Status` answers, or `member add`), once known.
    pub fn id(&self) -> Option<u64> {
        self.id
    }

    /// Added as a learner and not promoted since.
    pub fn is_learner(&self) -> bool {
        self.learner
    }

    /// SIGSTOPped by [`Cluster::pause`] and not resumed.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Removed by [`Cluster::remove_member`].
    pub fn is_removed(&self) -> bool {
        self.removed
    }

    /// Started, not reaped, not paused, not removed: expected to answer.
    pub fn is_up(&self) -> bool {
        !self.removed && !self.paused && self.server.pid().is_some()
    }

    /// `--data-dir`.
    pub fn data_dir(&self) -> &Path {
        self.server.data_dir()
    }

    /// The member's stdout + stderr.
    pub fn log_path(&self) -> &Path {
        self.server.log_path()
    }

    /// The process.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// The proxy in front of its peer listener, with [`ClusterOptions::peer_proxy`].
    pub fn proxy(&self) -> Option<&PeerProxy> {
        self.proxy.as_ref()
    }
}

/// A running multi-member cluster; see the module docs.
pub struct Cluster {
    kind: ServerKind,
    opts: ClusterOptions,
    token: String,
    members: Vec<ClusterMember>,
    /// Runs the peer proxies (one worker thread); created with the first proxy.
    runtime: Option<Runtime>,
}

impl Cluster {
    /// Start `n` members `m1..mn` of `kind` as a new cluster and wait until every member answers and a
    /// leader exists. A start that fails because another process took a chosen port is retried on
    /// fresh addresses; any other failure panics with the member's log tail.
    pub fn start(kind: ServerKind, n: usize, opts: ClusterOptions) -> Cluster {
        assert!(n >= 1, "a cluster needs at least one member");
        // Fail fast (with instructions) when the binary is missing.
        kind.binary();
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            let mut cluster = Cluster {
                kind,
                opts: opts.clone(),
                token: unique_token(),
                members: Vec::new(),
                runtime: None,
            };
            for i in 1..=n {
                let member = cluster.new_member(format!("m{i}"));
                cluster.members.push(member);
            }
            let initial_cluster = cluster.initial_cluster();
            for i in 0..n {
                let flags = cluster.member_flags(i, &initial_cluster, "new");
                let server = &mut cluster.members[i].server;
                server.set_member_flags(flags);
                server.spawn_without_wait();
            }
            let failed =
                (0..n).find_map(|i| cluster.members[i].server.wait_ready().err().map(|e| (i, e)));
            let Some((i, err)) = failed else {
                cluster.learn_ids();
                cluster.wait_leader();
                return cluster;
            };
            if attempt < ATTEMPTS && cluster.members.iter().any(|m| m.server.port_collision()) {
                for m in &cluster.members {
                    m.server.note(&format!(
                        "--- port collision, retrying the cluster (attempt {})",
                        attempt + 1
                    ));
                }
                continue;
            }
            cluster.members[i]
                .server
                .fail_not_ready("at cluster start", &err);
        }
        unreachable!()
    }

    /// Which implementation the members run.
    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    /// The `--initial-cluster-token`.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// How many members were ever added (removed ones included: indices stay valid).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Never true: a cluster has at least one member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Member `i` (`m{i+1}` for the initial members).
    pub fn member(&self, i: usize) -> &ClusterMember {
        &self.members[i]
    }

    /// Every member, in index order.
    pub fn members(&self) -> &[ClusterMember] {
        &self.members
    }

    /// The proxy of member `i`; panics when the cluster has no proxies.
    pub fn proxy(&self, i: usize) -> &PeerProxy {
        self.members[i]
            .proxy
            .as_ref()
            .expect("the cluster was started without peer_proxy")
    }

    /// Client URLs of every member not removed (running or not, learners included), in index order.
    pub fn client_urls(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| !m.removed)
            .map(ClusterMember::client_url)
            .collect()
    }

    /// `etcdctl ARGS...` against member `i` only.
    pub fn etcdctl(&self, i: usize, args: &[&str]) -> Output {
        crate::etcdctl(&self.members[i].client_url(), args)
    }

    /// `etcdctl ARGS...` with every voting member that is up as an endpoint (etcdctl picks one, and
    /// fails over; learners are left out: they refuse most requests).
    pub fn etcdctl_all(&self, args: &[&str]) -> Output {
        crate::etcdctl(&self.up_endpoints(None), args)
    }

    // -----------------------------------------------------------------------------------------------
    // Leader and status
    // -----------------------------------------------------------------------------------------------

    /// `Maintenance.Status` of every member, asked concurrently; `None` for a member that is not up
    /// or did not answer within a second.
    pub fn statuses(&self) -> Vec<Option<StatusResponse>> {
        let urls: Vec<Option<String>> = self
            .members
            .iter()
            .map(|m| m.is_up().then(|| m.client_url()))
            .collect();
        crate::block_on(async move {
            let asks: Vec<_> = urls
                .into_iter()
                .map(|url| {
                    tokio::spawn(async move { status_within(&url?, STATUS_TIMEOUT).await.ok() })
                })
                .collect();
            let mut answers = Vec::with_capacity(asks.len());
            for ask in asks {
                answers.push(ask.await.ok().flatten());
            }
            answers
        })
    }

    /// The leader as the members report it now: the leader named in the answers with the highest raft
    /// term, if that member answers too and calls itself the leader at that term.
    pub fn leader(&self) -> Option<usize> {
        leader_in(&self.statuses())
    }

    /// Wait until there is a [`Cluster::leader`]; returns its index.
    pub fn wait_leader(&self) -> usize {
        self.wait_until("a leader", |_, st| leader_in(st))
    }

    /// Wait until there is a [`Cluster::leader`] other than member `old`; returns its index.
    pub fn wait_new_leader(&self, old: usize) -> usize {
        self.wait_until(&format!("a leader other than m{}", old + 1), |_, st| {
            leader_in(st).filter(|&i| i != old)
        })
    }

    /// Wait until every member that is up answers and all of them follow the same leader at the same
    /// term (the leader among them); returns the leader's index.
    pub fn wait_converged(&self) -> usize {
        self.wait_until(
            "every member up, answering and agreeing on one leader",
            |c, st| {
                let leader = leader_in(st)?;
                let l = st[leader].as_ref()?;
                let agree = c.members.iter().zip(st).all(|(m, s)| {
                    !m.is_up()
                        || s.as_ref()
                            .is_some_and(|s| s.leader == l.leader && s.raft_term == l.raft_term)
                });
                agree.then_some(leader)
            },
        )
    }

    fn wait_until<T>(
        &self,
        what: &str,
        check: impl Fn(&Cluster, &[Option<StatusResponse>]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + self.opts.ready_timeout;
        loop {
            let st = self.statuses();
            if let Some(found) = check(self, &st) {
                return found;
            }
            if Instant::now() > deadline {
                panic!(
                    "no {what} within {:?}; the members answered:\n{}",
                    self.opts.ready_timeout,
                    self.describe(&st)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// One line per member: its state and its Status answer.
    fn describe(&self, st: &[Option<StatusResponse>]) -> String {
        let mut out = String::new();
        for (m, s) in self.members.iter().zip(st) {
            let state = match () {
                _ if m.removed => "removed",
                _ if m.paused => "paused",
                _ if m.pid().is_none() => "down",
                _ => "up",
            };
            let _ = write!(
                out,
                "  {} ({state}, pid {:?}, id {:x?}): ",
                m.name,
                m.pid(),
                m.id
            );
            let _ = match s {
                Some(s) => writeln!(
                    out,
                    "term {}, leader {:x}, raft index {}, learner {}",
                    s.raft_term, s.leader, s.raft_index, s.is_learner
                ),
                None => writeln!(out, "no answer"),
            };
        }
        out
    }

    // -----------------------------------------------------------------------------------------------
    // Process control
    // -----------------------------------------------------------------------------------------------

    /// SIGKILL member `i` (no-op when it is not running).
    pub fn kill(&mut self, i: usize) {
        let m = &mut self.members[i];
        m.server.note("--- harness: SIGKILL");
        m.server.kill();
        m.paused = false;
    }

    /// SIGTERM member `i` and wait for it to exit (SIGKILL after 10 s); its exit status, or `None`
    /// when it was not running.
    pub fn stop(&mut self, i: usize) -> Option<ExitStatus> {
        let m = &mut self.members[i];
        m.server.note("--- harness: SIGTERM");
        m.paused = false;
        m.server.stop()
    }

    /// SIGSTOP member `i`: it keeps its sockets and answers nothing until [`Cluster::resume`].
    pub fn pause(&mut self, i: usize) {
        let m = &mut self.members[i];
        m.server.pause();
        m.paused = m.server.pid().is_some();
    }

    /// SIGCONT member `i` after [`Cluster::pause`].
    pub fn resume(&mut self, i: usize) {
        let m = &mut self.members[i];
        m.server.resume();
        m.paused = false;
    }

    /// Stop member `i` if it runs, start it again on the same data dir, ports and flags, and wait until
    /// it answers (which, for etcd, takes a quorum: a restarted member answers once it has rejoined).
    /// The flags are those of its first start: etcd ignores the `--initial-cluster*` flags once its
    /// data dir has a WAL.
    pub fn restart(&mut self, i: usize) {
        self.restart_without_wait(i);
        self.wait_ready(i);
    }

    /// [`Cluster::restart`] without waiting for an answer (e.g. to restart members that only have a
    /// quorum together); [`Cluster::wait_ready`] waits.
    pub fn restart_without_wait(&mut self, i: usize) {
        let m = &mut self.members[i];
        assert!(!m.removed, "{} was removed from the cluster", m.name);
        m.server.stop();
        m.paused = false;
        m.server.note("--- harness: restart");
        m.server.spawn_without_wait();
    }

    /// Wait until member `i` answers a serializable Range; panics with its log tail.
    pub fn wait_ready(&mut self, i: usize) {
        self.members[i].server.wait_ready_or_panic("");
        self.learn_ids();
    }

    /// Member `i` loses its disk and is brought back the way etcd's runtime-reconfiguration guide
    /// says: `member remove` (the process exits or is stopped), its data dir deleted, `member add`
    /// under the same name and peer URL, and a start with `--initial-cluster-state existing`. It gets
    /// a new member id; waits until it answers. (Restarting with the old id and an empty log is not a
    /// recovery etcd supports: etcd 3.4 panics with "tocommit(N) is out of range [lastIndex(0)]" at
    /// the leader's first heartbeat.)
    pub fn wipe_and_restart(&mut self, i: usize) {
        self.remove_member(i);
        self.kill(i);
        let dir = self.members[i].data_dir().to_path_buf();
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::NotFound,
                "wipe {}: {e}",
                dir.display()
            );
        }
        let m = &mut self.members[i];
        m.server
            .note("--- harness: data dir wiped, rejoining as a new member");
        m.removed = false;
        m.id = None;
        self.join(i, false);
    }

    // -----------------------------------------------------------------------------------------------
    // Membership
    // -----------------------------------------------------------------------------------------------

    /// `etcdctl member add NAME --peer-urls=URL [--learner]` through the voting members that are up, then
    /// start the new member on an address of its own with the `ETCD_INITIAL_CLUSTER` etcdctl printed
    /// and `--initial-cluster-state existing`; waits until it answers. Returns its index. Refusals
    /// etcd means as "not yet" (strict reconfiguration checks) are retried until the ready timeout.
    pub fn add_member(&mut self, name: &str, learner: bool) -> usize {
        let member = self.new_member(name.to_owned());
        self.members.push(member);
        let i = self.members.len() - 1;
        self.join(i, learner);
        i
    }

    /// `member add` for member `i` (not running, not in the cluster), then its start as an existing
    /// member; waits until it answers.
    fn join(&mut self, i: usize, learner: bool) {
        let m = &self.members[i];
        let peer_urls = format!("--peer-urls={}", m.advertised_peer_url());
        let mut args = vec!["member", "add", m.name(), &peer_urls];
        if learner {
            args.push("--learner");
        }
        let out = self.reconfigure(Some(i), &args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let id = stdout
            .lines()
            .find_map(|l| {
                let mut words = l.split_whitespace();
                (words.next() == Some("Member")).then(|| words.next())?
            })
            .and_then(|hex| u64::from_str_radix(hex, 16).ok());
        let initial_cluster = stdout.lines().find_map(|l| {
            let v = l.strip_prefix("ETCD_INITIAL_CLUSTER=")?;
            Some(v.trim_matches('"').to_owned())
        });
        let (Some(id), Some(initial_cluster)) = (id, initial_cluster) else {
            panic!("cannot read the member id and ETCD_INITIAL_CLUSTER from `etcdctl member add`: {out:?}");
        };
        let flags = self.member_flags(i, &initial_cluster, "existing");
        let m = &mut self.members[i];
        m.id = Some(id);
        m.learner = learner;
        m.server.set_member_flags(flags);
        m.server.spawn_without_wait();
        self.wait_ready(i);
    }

    /// `etcdctl member promote ID` of learner `i`, retried while etcd answers that the learner is
    /// not in sync yet.
    pub fn promote_member(&mut self, i: usize) {
        let id = self.member_id(i);
        self.reconfigure(None, &["member", "promote", &format!("{id:x}")]);
        self.members[i].learner = false;
    }

    /// `etcdctl member remove ID` of member `i` through the other voting members that are up; then the
    /// removed process gets a few seconds to exit by itself (etcd does) before it is stopped. Its
    /// index stays, marked removed.
    pub fn remove_member(&mut self, i: usize) {
        let id = self.member_id(i);
        self.reconfigure(Some(i), &["member", "remove", &format!("{id:x}")]);
        let m = &mut self.members[i];
        m.removed = true;
        if m.server.wait_exit(REMOVED_EXIT_GRACE).is_none() {
            m.server.note("--- harness: removed, stopping");
            m.server.stop();
        }
        m.paused = false;
    }

    /// Run a membership `etcdctl` command through the voting members that are up (but `except`), retrying
    /// the refusals of [`RETRYABLE_RECONFIG`] until the ready timeout; panics on any other failure.
    fn reconfigure(&self, except: Option<usize>, args: &[&str]) -> Output {
        let deadline = Instant::now() + self.opts.ready_timeout;
        loop {
            let out = crate::etcdctl(&self.up_endpoints(except), args);
            if out.status.success() {
                return out;
            }
            let stderr = String::from_utf8_lossy(&out.stderr);
            let retry = RETRYABLE_RECONFIG.iter().any(|r| stderr.contains(r));
            if !retry || Instant::now() > deadline {
                panic!("etcdctl {args:?} failed: {out:?}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Member `i`'s raft id, asked of the member if not known yet.
    fn member_id(&mut self, i: usize) -> u64 {
        if self.members[i].id.is_none() {
            self.learn_ids();
        }
        self.members[i]
            .id
            .unwrap_or_else(|| panic!("{} never told its member id", self.members[i].name))
    }

    /// Record the member id of every member that answers and whose id is not known yet.
    fn learn_ids(&mut self) {
        if self.members.iter().all(|m| m.id.is_some() || !m.is_up()) {
            return;
        }
        let statuses = self.statuses();
        for (m, s) in self.members.iter_mut().zip(statuses) {
            if m.id.is_none() {
                m.id = s.and_then(|s| s.header).map(|h| h.member_id);
            }
        }
    }

    // -----------------------------------------------------------------------------------------------
    // Building members
    // -----------------------------------------------------------------------------------------------

    /// A member not started yet: its own loopback address, free ports there, its proxy if wanted.
    fn new_member(&mut self, name: String) -> ClusterMember {
        let host = loopback_host();
        let opts = ServerOptions {
            name: name.clone(),
            extra_args: self.opts.extra_args.clone(),
            ready_timeout: self.opts.ready_timeout,
        };
        let mut server = Server::prepare(self.kind, self.kind.binary(), None, opts, host);
        server.set_ports(free_port_on(host), free_port_on(host));
        let proxy = self.opts.peer_proxy.then(|| {
            let runtime = self.runtime.get_or_insert_with(proxy_runtime);
            let target = SocketAddr::from((host, server.peer_port()));
            PeerProxy::start(runtime.handle(), host, target)
                .unwrap_or_else(|e| panic!("cannot start the peer proxy of {name} on {host}: {e}"))
        });
        ClusterMember {
            name,
            server,
            proxy,
            id: None,
            learner: false,
            paused: false,
            removed: false,
        }
    }

    /// `NAME=ADVERTISED_PEER_URL,...` of every member not removed.
    fn initial_cluster(&self) -> String {
        let entries: Vec<String> = self
            .members
            .iter()
            .filter(|m| !m.removed)
            .map(|m| format!("{}={}", m.name, m.advertised_peer_url()))
            .collect();
        entries.join(",")
    }

    fn member_flags(&self, i: usize, initial_cluster: &str, state: &'static str) -> MemberFlags {
        MemberFlags {
            advertise_peer_url: self.members[i].advertised_peer_url(),
            initial_cluster: initial_cluster.to_owned(),
            initial_cluster_state: state,
            initial_cluster_token: self.token.clone(),
        }
    }

    /// `--endpoints` value: client URLs of the voting members that are up, but `except` (a learner
    /// refuses everything but serializable reads and Status, so etcdctl must not pick one).
    fn up_endpoints(&self, except: Option<usize>) -> String {
        let urls: Vec<String> = self
            .members
            .iter()
            .enumerate()
            .filter(|&(i, m)| m.is_up() && !m.learner && Some(i) != except)
            .map(|(_, m)| m.client_url())
            .collect();
        assert!(!urls.is_empty(), "no voting member of the cluster is up");
        urls.join(",")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Each member's process is killed (its log tail printed if the test panicked) and its dir
        // removed, then its proxy closed; then the proxies' runtime goes, without blocking (a test may
        // drop the cluster inside its own runtime).
        self.members.clear();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("kind", &self.kind)
            .field("token", &self.token)
            .field("members", &self.members)
            .finish()
    }
}

/// The leader named in the answers with the highest raft term, if it answered too and calls itself
/// the leader at that term.
fn leader_in(statuses: &[Option<StatusResponse>]) -> Option<usize> {
    let (term, leader) = statuses
        .iter()
        .flatten()
        .filter(|s| s.leader != 0)
        .map(|s| (s.raft_term, s.leader))
        .max()?;
    statuses.iter().position(|s| {
        s.as_ref().is_some_and(|s| {
            s.header.as_ref().is_some_and(|h| h.member_id == leader)
                && s.leader == leader
                && s.raft_term == term
        })
    })
}

/// `--initial-cluster-token`: unique per cluster (process, counter, clock), so members of different
/// clusters never take each other for peers.
fn unique_token() -> String {
    static CLUSTERS: AtomicU64 = AtomicU64::new(0);
    let n = CLUSTERS.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("ballast-testkit-{}-{n}-{nanos:x}", std::process::id())
}

fn proxy_runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("ballast-testkit-proxy")
        .enable_all()
        .build()
        .expect("build the peer proxies' runtime")
}
