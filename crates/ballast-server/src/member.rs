//! The member: wires the WAL, the MVCC store, the raft thread and the apply thread together, and
//! is the handle the gRPC/HTTP services use (propose, read barrier, headers, status).
//!
//! Data dir layout: `member/wal/` (raft log), `member/snap/db` (the MVCC backend), as etcd lays it
//! out, so operators find things where they expect them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ballast_mvcc::{Store, StoreOptions};
use ballast_proto::etcdserverpb::ResponseHeader;
use ballast_proto::internal::{
    internal_raft_request::Request, InternalRaftRequest, MemberChange, RequestHeader,
};
use ballast_wal::{StdFs, Wal, WalFs, WalOptions};
use prost::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, ConfState};
use tokio::sync::oneshot;

use crate::apply::{membership::Members, Applier, ApplyOutput};
use crate::cluster::Membership;
use crate::config::ServerConfig;
use crate::error::ServerError;
use crate::fault::catch_panics;
use crate::lease::{self, Lessor, LessorConfig};
use crate::raft::log::RaftLog;
use crate::raft::node::{NoPeers, Outbox, Peers};
use crate::raft::peer_service::{peer_routes, PeerServiceConfig};
use crate::raft::snapshot::SnapshotSource;
use crate::raft::transport::{PeerEvent, Transport, TransportConfig};
use crate::raft::{RaftMsg, RaftNode, RaftNodeConfig, RaftStatus};
use crate::wait::{IdGenerator, Wait};
use crate::watch::{HeaderSource, WatchHub, WatchOptions};

/// Proposals are refused (`too many requests`) while the apply loop is more than this many
/// entries behind the commit index (etcd's maxGapBetweenApplyAndCommitIndex).
const MAX_APPLY_LAG: u64 = 5000;

/// How long a request waits for its proposal to apply before `request timed out`.
/// etcd: 5 s + 2 × election timeout.
fn request_timeout(cfg: &ServerConfig) -> Duration {
    Duration::from_secs(5) + 2 * cfg.election_timeout
}

use crate::alarm::Alarms;
use crate::quota::Quota;
use crate::schema::{META_CLUSTER_ID, META_MEMBER_ID};

pub struct Member {
    pub cfg: ServerConfig,
    pub store: Store,
    pub member_id: u64,
    pub cluster_id: u64,
    pub status: Arc<RaftStatus>,
    pub watch_hub: Arc<WatchHub>,
    pub lessor: Arc<Lessor>,
    /// The raised alarms (written only by the apply loop).
    pub alarms: Arc<Alarms>,
    /// `--quota-backend-bytes` and the backend size the apply loop last saw.
    pub quota: Arc<Quota>,
    raft_tx: flume::Sender<RaftMsg>,
    /// Pending proposals (answered by the apply loop).
    wait: Arc<Wait>,
    /// The member list (written by the apply loop).
    members: Arc<parking_lot::RwLock<Membership>>,
    /// The peer transport (None outside a tokio runtime: a test's member alone).
    transport: Option<Transport>,
    /// Where the peer service hands what peers send (to the raft thread).
    peer_events: flume::Sender<PeerEvent>,
    /// `member/snap`: the backend and snapshots received from the leader.
    snap_dir: std::path::PathBuf,
    ids: IdGenerator,
    timeout: Duration,
    threads: parking_lot::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

fn read_u64_meta(store: &Store, key: &str) -> Option<u64> {
    let v = store.get_meta(key).ok()??;
    let b: [u8; 8] = v.as_slice().try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// The storage a member runs over: [`Member::start`] uses the real file system,
/// [`Member::start_with_storage`] takes this from a test (simulated disks, injected faults).
pub struct MemberStorage {
    /// The backend, already open (e.g. `Store::open_with_backend` over a simulated disk).
    pub backend: Store,
    /// The file layer the WAL is opened in.
    pub wal_fs: Arc<dyn WalFs>,
    /// WAL options (a test may want small segments, so that they roll over and get purged).
    pub wal_options: WalOptions,
}

impl Member {
    /// Opens (or creates) the member's data dir, replays the WAL and starts the raft and apply
    /// threads. Returns once the member is ready to take requests (leadership may follow).
    pub fn start(cfg: ServerConfig) -> Result<Arc<Member>, String> {
        let snap_dir = cfg.data_dir.join("member").join("snap");
        std::fs::create_dir_all(&snap_dir)
            .map_err(|e| format!("create {}: {e}", snap_dir.display()))?;
        let store = Store::open(&snap_dir.join("db"), StoreOptions::default())
            .map_err(|e| format!("open backend: {e}"))?;
        Self::start_over(
            cfg,
            MemberStorage {
                backend: store,
                wal_fs: Arc::new(StdFs),
                wal_options: WalOptions::default(),
            },
        )
    }

    /// [`Member::start`] over injected storage: the seam for storage fault tests (e.g. the
    /// power-loss simulation in `tests/power_loss.rs`, which gives it simulated disks). The WAL
    /// is opened in `storage.wal_fs` at `<data-dir>/member/wal`; the data dir is only used for
    /// names (fault messages), nothing is created on the real file system.
    pub fn start_with_storage(
        cfg: ServerConfig,
        storage: MemberStorage,
    ) -> Result<Arc<Member>, String> {
        Self::start_over(cfg, storage)
    }

    /// Everything [`Member::start`] does once the backend is open.
    fn start_over(cfg: ServerConfig, storage: MemberStorage) -> Result<Arc<Member>, String> {
        let member_dir = cfg.data_dir.join("member");
        let wal_dir = member_dir.join("wal");
        let snap_dir = member_dir.join("snap");
        let MemberStorage {
            backend: store,
            wal_fs,
            wal_options,
        } = storage;
        let (mut wal, replay) =
            Wal::open_with(&wal_dir, wal_options, wal_fs).map_err(|e| format!("open wal: {e}"))?;
        if replay.repaired_tail {
            tracing::warn!("write-ahead log had a torn tail (crash during a write); repaired");
        }

        let (mut known, mut known_cs) =
            crate::cluster::persist::load(&store).map_err(|e| e.to_string())?;
        // A joining member's first view of the cluster (whom to talk to before it has applied
        // the log that lists them).
        let mut joined_members: Option<Membership> = None;
        let (member_id, cluster_id) = match (
            read_u64_meta(&store, META_MEMBER_ID),
            read_u64_meta(&store, META_CLUSTER_ID),
        ) {
            // A member that started before: its flags' cluster no longer matters (as etcd).
            (Some(m), Some(c)) => (m, c),
            _ => {
                let (m, c) = if cfg.initial_cluster_state == crate::config::ClusterState::Existing
                {
                    let remote = fetch_remote_cluster(&cfg)?;
                    joined_members = Some(remote.members);
                    (remote.local_id, remote.cluster_id)
                } else {
                    bootstrap_ids(&cfg)?
                };
                let mut txn = store.write().map_err(|e| format!("backend: {e}"))?;
                txn.put_meta(META_MEMBER_ID, &m.to_be_bytes());
                txn.put_meta(META_CLUSTER_ID, &c.to_be_bytes());
                let applied = store.applied_index();
                txn.commit(applied, true)
                    .map_err(|e| format!("backend: {e}"))?;
                (m, c)
            }
        };

        let mut log = if replay.records.is_empty() {
            // The first start (or a crash before the first log was durable): every initial
            // member writes the same first entries, one conf change per initial member; a
            // member joining an existing cluster starts empty and gets the log (or a snapshot)
            // from the leader.
            let log = if cfg.initial_cluster_state == crate::config::ClusterState::Existing {
                RaftLog::bootstrap(ConfState::default())
            } else {
                RaftLog::bootstrap_cluster(&bootstrap_changes(&cfg)?)
            };
            wal.append(&log.initial_records())
                .map_err(|e| format!("wal: {e}"))?;
            wal.sync().map_err(|e| format!("wal: {e}"))?;
            log
        } else {
            RaftLog::from_wal(&replay.records)?
        };
        let mut applied = store.applied_index();
        if applied < log.snapshot_index() {
            // A crash between the leader's snapshot reaching the WAL and its install: the file
            // is in the snapshot directory, durable; install it now (as etcd does at start).
            let file = crate::raft::snapshot::snap_db_path(&snap_dir, log.snapshot_index());
            if file.exists() {
                tracing::warn!(file = %file.display(), "installing the leader's snapshot left by a crash");
                store
                    .install_snapshot(&file)
                    .map_err(|e| format!("install {}: {e}", file.display()))?;
                applied = store.applied_index();
                (known, known_cs) =
                    crate::cluster::persist::load(&store).map_err(|e| e.to_string())?;
            }
        }
        if applied < log.snapshot_index() {
            return Err(format!(
                "backend applied index {applied} is behind the raft snapshot {}: the backend lost data",
                log.snapshot_index()
            ));
        }
        if applied > log.last_index() {
            return Err(format!(
                "backend applied index {applied} is ahead of the write-ahead log ({}): the wal lost data",
                log.last_index()
            ));
        }
        // Whatever the backend applied was committed; the last hard state in the WAL may predate
        // that (commit-only hard states are not fsynced on their own).
        if log.hard_state().commit < applied {
            log.set_commit(applied);
        }
        // raft-rs starts from the configuration after every committed conf change (those the
        // backend applied are in its conf state; later ones are read from the log), so it never
        // passes again through the configurations the cluster has left.
        let base = known_cs.unwrap_or_else(|| log.conf_state().clone());
        let cs = log.committed_conf_state(applied, &base);
        log.set_conf_state(applied, cs);
        tracing::info!(
            member_id = format!("{member_id:x}"),
            cluster_id = format!("{cluster_id:x}"),
            applied_index = applied,
            wal_last_index = log.last_index(),
            revision = store.current_revision(),
            "member starting"
        );

        let leases = lease::persist::recover(&store)?;
        let lessor = Arc::new(Lessor::new(
            LessorConfig::from_server(&cfg),
            member_id,
            leases,
        ));
        let alarms = Arc::new(Alarms::load(&store).map_err(|e| format!("load alarms: {e}"))?);
        let quota_bytes = match cfg.quota_backend_bytes {
            0 => crate::config::DEFAULT_QUOTA_BACKEND_BYTES,
            q => q,
        };
        tracing::info!(quota_size_bytes = quota_bytes, "enabled backend quota");
        let quota = Arc::new(Quota::new(quota_bytes, store.db_size()));
        let status = Arc::new(RaftStatus::default());
        status.fault.set_backend_path(snap_dir.join("db"));
        let (raft_tx, raft_rx) = flume::bounded(16 * 1024);
        // Unbounded so the raft thread never waits for the apply loop; `propose` bounds it by
        // refusing new proposals while the apply loop lags (MAX_APPLY_LAG).
        let (apply_tx, apply_rx) = flume::unbounded();
        let wait = Arc::new(Wait::default());
        let members = Arc::new(parking_lot::RwLock::new(known));
        let tick = cfg.heartbeat_interval.max(Duration::from_millis(1));
        let election_ticks =
            ((cfg.election_timeout.as_millis() / tick.as_millis().max(1)) as usize).max(2);
        // Peers: the transport sends what raft addresses to others; what peers send (and the
        // transport's reports) reaches the raft thread through `peer_events`.
        let (peer_events, peer_rx) = flume::bounded(4096);
        let transport = tokio::runtime::Handle::try_current().ok().map(|rt| {
            let snapshots = Arc::new(StoreSnapshots {
                store: store.clone(),
                dir: snap_dir.clone(),
            });
            let t = Transport::new(
                TransportConfig::new(member_id, cluster_id, snapshots),
                peer_events.clone(),
                rt.clone(),
            );
            rt.spawn(forward_peer_events(peer_rx, raft_tx.clone()));
            t
        });
        let follow_members = {
            let transport = transport.clone();
            move |ms: &Membership| {
                if let Some(t) = &transport {
                    for m in ms.members() {
                        t.set_peer(m.id, m.peer_urls.clone());
                    }
                    for id in ms.removed() {
                        t.remove_peer(id);
                    }
                }
            }
        };
        follow_members(&members.read());
        if let Some(remote) = &joined_members {
            follow_members(remote);
        }
        let node = RaftNode::new(
            RaftNodeConfig {
                id: member_id,
                tick,
                election_ticks,
                heartbeat_ticks: 1,
                applied,
                wal_dir: wal_dir.clone(),
            },
            log,
            wal,
            raft_rx,
            apply_tx,
            Peers {
                outbox: match &transport {
                    Some(t) => Box::new(TransportOutbox(t.clone())),
                    None => Box::new(NoPeers),
                },
                reject: wait.clone(),
            },
            status.clone(),
        )?;
        let compactor = crate::compactor::Compactor::start_for(store.clone(), status.clone());
        let watch_hub = Arc::new(WatchHub::new(
            store.clone(),
            WatchOptions {
                progress_interval: cfg.watch_progress_notify_interval,
                // etcd splits fragments at --max-request-bytes plus its 512 KiB gRPC allowance.
                max_request_bytes: cfg.max_request_bytes + 512 * 1024,
                stall_timeout: cfg.watch_stall_timeout,
                batch_interval: cfg.watch_batch_interval,
                // etcd ends `hasleader` streams after 3 election timeouts without a leader.
                no_leader_timeout: 3 * cfg.election_timeout,
                ..WatchOptions::default()
            },
            HeaderSource {
                cluster_id,
                member_id,
                status: status.clone(),
            },
        ));
        let applier = Applier::new(
            store.clone(),
            apply_rx,
            status.clone(),
            cfg.snapshot_count,
            compactor,
            watch_hub.clone(),
            crate::apply::Layers {
                wait: wait.clone(),
                snap_dir: snap_dir.clone(),
                members: Members {
                    list: members.clone(),
                    raft_tx: raft_tx.clone(),
                    local_id: member_id,
                    on_change: Box::new(follow_members),
                },
                lessor: lessor.clone(),
                alarms: alarms.clone(),
                quota: quota.clone(),
            },
        );
        // A panic in either thread fail-stops the member (crate::fault) instead of ending the
        // thread silently.
        // When either thread ends (a stop, a fault, a panic caught here), the member has
        // stopped: every pending proposal is answered `server stopped` at once rather than at
        // its timeout (a panic unwinds past the loop's own clean-up).
        let (s, w) = (status.clone(), wait.clone());
        let raft_thread = std::thread::Builder::new()
            .name("ballast-raft".into())
            .spawn(move || {
                catch_panics("raft", &s, move || node.run());
                w.close(ServerError::Stopped);
            })
            .map_err(|e| format!("spawn raft thread: {e}"))?;
        let (s, w) = (status.clone(), wait.clone());
        let apply_thread = std::thread::Builder::new()
            .name("ballast-apply".into())
            .spawn(move || {
                catch_panics("apply", &s, move || applier.run());
                w.close(ServerError::Stopped);
            })
            .map_err(|e| format!("spawn apply thread: {e}"))?;

        Ok(Arc::new(Member {
            timeout: request_timeout(&cfg),
            cfg,
            store,
            member_id,
            cluster_id,
            status,
            watch_hub,
            lessor,
            alarms,
            quota,
            raft_tx,
            wait,
            members,
            transport,
            peer_events,
            snap_dir,
            ids: IdGenerator::new(member_id, SystemTime::now()),
            threads: parking_lot::Mutex::new(vec![raft_thread, apply_thread]),
        }))
    }

    /// The response header for a response at store revision `revision`.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.status.term(),
        }
    }

    /// Fills the member fields of a header an apply or read produced (keeps its revision).
    pub fn fill_header(&self, h: &mut Option<ResponseHeader>) {
        let rev = h
            .as_ref()
            .map(|h| h.revision)
            .unwrap_or_else(|| self.store.current_revision());
        *h = Some(self.header(rev));
    }

    /// How long a request waits for its proposal to apply (etcd's request timeout).
    pub fn request_timeout(&self) -> Duration {
        self.timeout
    }

    /// Proposes a request through Raft and waits for the apply loop's answer.
    pub async fn propose(&self, request: Request) -> Result<ApplyOutput, ServerError> {
        if self.status.stopped.load(Ordering::Relaxed) {
            return Err(ServerError::Stopped);
        }
        // etcd refuses new proposals while the apply loop is this far behind the commit
        // index, which bounds the raft thread's queue to the apply loop.
        let commit = self.status.commit_index.load(Ordering::Relaxed);
        let applied = self.status.applied_index.load(Ordering::Relaxed);
        if commit.saturating_sub(applied) > MAX_APPLY_LAG {
            return Err(ServerError::TooManyRequests);
        }
        let id = self.ids.next();
        let data = InternalRaftRequest {
            id,
            header: Some(RequestHeader {
                member_id: self.member_id,
                ..Default::default()
            }),
            request: Some(request),
        }
        .encode_to_vec();
        if data.len() > self.cfg.max_request_bytes {
            return Err(ServerError::RequestTooLarge);
        }
        let term = self.status.term();
        self.submit(id, RaftMsg::Propose { id, data }, || {
            // etcd tells a client whose proposal was lost with a leader apart.
            if self.status.term() != term {
                ServerError::TimeoutDueToLeaderFail
            } else {
                ServerError::Timeout
            }
        })
        .await
    }

    /// Proposes a membership change through Raft and waits for the apply loop's answer.
    pub async fn propose_conf_change(
        &self,
        mut cc: ConfChange,
    ) -> Result<ApplyOutput, ServerError> {
        if self.status.stopped.load(Ordering::Relaxed) {
            return Err(ServerError::Stopped);
        }
        let id = self.ids.next();
        cc.id = id;
        self.submit(id, RaftMsg::ProposeConfChange { id, cc }, || ServerError::Timeout)
            .await
    }

    /// Registers a waiter under `id` (before the raft thread can see the proposal: its entry
    /// may apply at once), hands `msg` to the raft thread and waits for the apply loop's
    /// answer; past the request timeout the waiter is dropped and `timed_out` says why.
    async fn submit(
        &self,
        id: u64,
        msg: RaftMsg,
        timed_out: impl FnOnce() -> ServerError,
    ) -> Result<ApplyOutput, ServerError> {
        let rx = self.wait.register(id)?;
        if self.raft_tx.send_async(msg).await.is_err() {
            self.wait.cancel(id);
            return Err(ServerError::Stopped);
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(out)) => out,
            Ok(Err(_)) => Err(ServerError::Stopped),
            Err(_) => {
                self.wait.cancel(id);
                Err(timed_out())
            }
        }
    }

    /// Sends `msg` to the raft thread.
    pub(crate) async fn raft_send(&self, msg: RaftMsg) -> Result<(), ServerError> {
        self.raft_tx
            .send_async(msg)
            .await
            .map_err(|_| ServerError::Stopped)
    }

    /// The member list (written by the apply loop).
    pub(crate) fn members(&self) -> &parking_lot::RwLock<Membership> {
        &self.members
    }

    /// What the transport knows of peer `id` (etcd's health interval: 5 s up).
    pub(crate) fn peer_link(&self, id: u64) -> crate::cluster::membership::PeerLink {
        use crate::cluster::membership::PeerLink;
        match self.transport.as_ref().and_then(|t| t.active_since(id)) {
            None => PeerLink::Down,
            Some(t) if t.elapsed() >= Duration::from_secs(5) => PeerLink::Healthy,
            Some(_) => PeerLink::Recent,
        }
    }

    /// The peer service for `--listen-peer-urls`, feeding this member's raft thread.
    pub fn peer_routes(&self) -> std::io::Result<tonic::service::Routes> {
        let mut cfg = PeerServiceConfig::new(self.member_id, self.cluster_id, self.snap_dir.clone());
        // A raft message carries entries of up to --max-request-bytes each, batched.
        cfg.max_message_bytes = cfg.max_message_bytes.max(4 * self.cfg.max_request_bytes);
        peer_routes(cfg, self.peer_events.clone())
    }

    /// Waits until this member has applied everything committed before now (ReadIndex);
    /// all reads waiting at one moment share one round.
    pub async fn read_barrier(&self) -> Result<(), ServerError> {
        if self.status.stopped.load(Ordering::Relaxed) {
            return Err(ServerError::Stopped);
        }
        let (tx, rx) = oneshot::channel();
        self.raft_tx
            .send_async(RaftMsg::ReadIndex { waiter: tx })
            .await
            .map_err(|_| ServerError::Stopped)?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ServerError::Stopped),
            Err(_) => Err(ServerError::Timeout),
        }
    }

    /// Stops the raft and apply threads and waits for them (the backend is left durable).
    pub fn stop(&self) {
        let _ = self.raft_tx.send(RaftMsg::Stop);
        let threads = std::mem::take(&mut *self.threads.lock());
        for t in threads {
            let _ = t.join();
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.status.stopped.load(Ordering::Relaxed)
    }
}

/// The raft thread's outbox over the peer transport.
struct TransportOutbox(Transport);

impl Outbox for TransportOutbox {
    fn send(&mut self, msgs: Vec<raft::prelude::Message>) {
        self.0.send(msgs);
    }
}

/// What the transport streams to a follower that needs a snapshot: the current backend.
struct StoreSnapshots {
    store: Store,
    dir: std::path::PathBuf,
}

impl SnapshotSource for StoreSnapshots {
    fn open(&self) -> std::io::Result<(Box<dyn std::io::Read + Send>, u64)> {
        let stream = self
            .store
            .export_snapshot_stream(&self.dir)
            .map_err(std::io::Error::other)?;
        let size = stream.info().size;
        Ok((Box::new(stream), size))
    }
}

/// Moves what peers send (and the transport's reports) to the raft thread, in order.
async fn forward_peer_events(events: flume::Receiver<PeerEvent>, raft: flume::Sender<RaftMsg>) {
    while let Ok(ev) = events.recv_async().await {
        let msg = match ev {
            PeerEvent::Message(m) => RaftMsg::Step(m),
            PeerEvent::Unreachable(id) => RaftMsg::Unreachable(id),
            PeerEvent::SnapshotStatus(id, st) => RaftMsg::SnapshotStatus(id, st),
        };
        if raft.send_async(msg).await.is_err() {
            return;
        }
    }
}

/// This member's id and the cluster's, from `--initial-cluster` (a new cluster), derived
/// as etcd derives them, with etcd's checks of the flags.
fn bootstrap_ids(cfg: &ServerConfig) -> Result<(u64, u64), String> {
    let (ms, cluster_id) = Membership::bootstrap(&cfg.initial_cluster, &cfg.initial_cluster_token)
        .map_err(|e| e.to_string())?;
    let me = ms
        .members()
        .find(|m| m.name == cfg.name)
        .ok_or_else(|| {
            format!(
                "couldn't find local name {:?} in the initial cluster configuration",
                cfg.name
            )
        })?;
    let mut advertised = cfg.initial_advertise_peer_urls.clone();
    advertised.sort();
    if advertised != me.peer_urls {
        return Err(format!(
            "--initial-cluster has {}={} but missing from --initial-advertise-peer-urls={}",
            cfg.name,
            me.peer_urls.join(","),
            cfg.initial_advertise_peer_urls.join(",")
        ));
    }
    Ok((me.id, cluster_id))
}

/// What a joining member learns from a member of the cluster it joins.
struct RemoteCluster {
    cluster_id: u64,
    local_id: u64,
    members: Membership,
}

/// Asks the other members of `--initial-cluster` (their peer URLs, in order) for the
/// cluster's id and members, and finds this member among them by its peer URLs (the
/// `MemberAdd` that made room for it gave them), as etcd's joining member does.
fn fetch_remote_cluster(cfg: &ServerConfig) -> Result<RemoteCluster, String> {
    let rt = tokio::runtime::Handle::try_current()
        .map_err(|_| "joining an existing cluster needs the server's runtime".to_string())?;
    let urls: Vec<String> = cfg
        .initial_cluster
        .iter()
        .filter(|m| m.name != cfg.name)
        .flat_map(|m| m.peer_urls.clone())
        .collect();
    let mut errors = Vec::new();
    for url in &urls {
        let fetched = rt.block_on(async {
            let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
                .map_err(|e| e.to_string())?
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(2));
            let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
            let mut client =
                ballast_proto::peer::membership_client::MembershipClient::new(channel);
            client
                .members(ballast_proto::peer::MembersRequest {})
                .await
                .map(|r| r.into_inner())
                .map_err(|e| e.message().to_string())
        });
        match fetched {
            Ok(resp) => {
                let members = Membership::restored(
                    resp.members.into_iter().map(crate::cluster::MemberRecord::from),
                    [],
                );
                let mut mine = cfg.initial_advertise_peer_urls.clone();
                mine.sort();
                let local = members
                    .members()
                    .find(|m| {
                        let mut theirs = m.peer_urls.clone();
                        theirs.sort();
                        theirs == mine
                    })
                    .ok_or_else(|| {
                        format!(
                            "error validating peerURLs: member with peer URLs {} is not in the cluster {:x} (add it with `member add` first)",
                            cfg.initial_advertise_peer_urls.join(","),
                            resp.cluster_id
                        )
                    })?;
                return Ok(RemoteCluster {
                    cluster_id: resp.cluster_id,
                    local_id: local.id,
                    members,
                });
            }
            Err(e) => errors.push(format!("{url}: {e}")),
        }
    }
    Err(format!(
        "cannot fetch cluster info from peer urls: could not retrieve cluster information from the given URLs ({})",
        errors.join("; ")
    ))
}

/// A new cluster's first entries: one conf change adding each initial member (in id order,
/// the same on every member), carrying its record.
fn bootstrap_changes(cfg: &ServerConfig) -> Result<Vec<ConfChange>, String> {
    let (ms, _) = Membership::bootstrap(&cfg.initial_cluster, &cfg.initial_cluster_token)
        .map_err(|e| e.to_string())?;
    Ok(ms
        .members()
        .map(|m| {
            let mut cc = ConfChange::default();
            cc.set_change_type(ConfChangeType::AddNode);
            cc.node_id = m.id;
            cc.context = MemberChange {
                member: Some(m.into()),
                is_promote: false,
            }
            .encode_to_vec()
            .into();
            cc
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InitialMember;

    fn three() -> ServerConfig {
        let url = |i: u16| format!("http://127.0.0.1:{}", 2380 + i);
        ServerConfig {
            name: "m2".into(),
            initial_advertise_peer_urls: vec![url(2)],
            initial_cluster: (1..=3)
                .map(|i| InitialMember {
                    name: format!("m{i}"),
                    peer_urls: vec![url(i)],
                })
                .collect(),
            ..ServerConfig::default()
        }
    }

    #[test]
    fn bootstrap_finds_this_member_by_name_and_checks_its_urls() {
        let cfg = three();
        let (me, cluster) = bootstrap_ids(&cfg).unwrap();
        let changes = bootstrap_changes(&cfg).unwrap();
        assert_eq!(changes.len(), 3);
        assert!(changes.iter().any(|c| c.node_id == me));
        let ids: Vec<u64> = changes.iter().map(|c| c.node_id).collect();
        assert_eq!(cluster, crate::cluster::ids::cluster_id(&ids));
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted, "the same order on every member");

        let mut stranger = three();
        stranger.name = "m9".into();
        assert_eq!(
            bootstrap_ids(&stranger).unwrap_err(),
            "couldn't find local name \"m9\" in the initial cluster configuration"
        );
        let mut wrong_url = three();
        wrong_url.initial_advertise_peer_urls = vec!["http://127.0.0.1:9999".into()];
        assert!(bootstrap_ids(&wrong_url)
            .unwrap_err()
            .starts_with("--initial-cluster has m2=http://127.0.0.1:2382 but missing"));
    }
}
