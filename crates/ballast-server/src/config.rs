//! The member's configuration, as the server library sees it.
//!
//! The `ballast` binary owns the mapping from etcd's flags, `ETCD_*` env vars and `--config-file`
//! YAML to this struct; this module only holds the resolved values and their etcd defaults.

use std::path::PathBuf;
use std::time::Duration;

/// etcd's default `--max-request-bytes` (1.5 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// etcd's default `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;
/// etcd's default `--snapshot-count`.
pub const DEFAULT_SNAPSHOT_COUNT: u64 = 10_000;
/// etcd's default `--quota-backend-bytes` (2 GiB).
pub const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// etcd's default `--watch-progress-notify-interval`.
pub const DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL: Duration = Duration::from_secs(600);
/// How long a watch stream may refuse to take responses while it has some pending before it is
/// cancelled (`--watch-stall-timeout`, Ballast's own flag).
pub const DEFAULT_WATCH_STALL_TIMEOUT: Duration = Duration::from_secs(300);
/// A busy watch stream (fed at least twice per interval) woken for new events less than
/// this long ago waits for the next point of its connection's grid of this period
/// (`--watch-batch-interval`, Ballast's own flag; 0 turns batching off). Its events wait up
/// to the interval; other streams' are not delayed (docs/watch.md).
pub const DEFAULT_WATCH_BATCH_INTERVAL: Duration = Duration::from_millis(10);
/// etcd's default `--max-concurrent-streams` (no limit).
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = u32::MAX;
/// etcd's default `--grpc-keepalive-min-time`.
pub const DEFAULT_GRPC_KEEPALIVE_MIN_TIME: Duration = Duration::from_secs(5);
/// The min time when `--grpc-keepalive-min-time` is zero or less: etcd then sets no
/// enforcement policy and grpc-go applies its own default, 5 minutes.
pub const GRPC_DEFAULT_KEEPALIVE_MIN_TIME: Duration = Duration::from_secs(5 * 60);
/// etcd's default `--grpc-keepalive-interval`.
pub const DEFAULT_GRPC_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2 * 3600);
/// etcd's default `--grpc-keepalive-timeout`.
pub const DEFAULT_GRPC_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// A client connection that sends no request bytes this long after it was accepted is closed
/// (`--client-handshake-timeout`, Ballast's own flag).
pub const DEFAULT_CLIENT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A Range or RangeStream response whose client asks for nothing this long while rows are
/// left to send is ended with an error, releasing its snapshot (`--range-stall-timeout`,
/// Ballast's own flag).
pub const DEFAULT_RANGE_STALL_TIMEOUT: Duration = Duration::from_secs(300);
/// The etcd API version Ballast reports in `Status.version` and `/version` unless told otherwise.
pub const DEFAULT_EMULATED_ETCD_VERSION: &str = "3.6.0";

/// A member of the initial cluster, as given by `--initial-cluster name=url,...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialMember {
    pub name: String,
    pub peer_urls: Vec<String>,
}

/// `--initial-cluster-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClusterState {
    #[default]
    New,
    Existing,
}

/// Everything a member needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `--name` (default "default").
    pub name: String,
    /// `--data-dir` (default "${name}.etcd").
    pub data_dir: PathBuf,
    /// `--listen-client-urls` (default http://localhost:2379). Only `http://host:port` for now.
    pub listen_client_urls: Vec<String>,
    /// `--advertise-client-urls` (default http://localhost:2379).
    pub advertise_client_urls: Vec<String>,
    /// `--listen-peer-urls` (default http://localhost:2380).
    pub listen_peer_urls: Vec<String>,
    /// `--initial-advertise-peer-urls` (default http://localhost:2380).
    pub initial_advertise_peer_urls: Vec<String>,
    /// `--initial-cluster` (default "default=http://localhost:2380").
    pub initial_cluster: Vec<InitialMember>,
    /// `--initial-cluster-state`.
    pub initial_cluster_state: ClusterState,
    /// `--initial-cluster-token` (default "etcd-cluster").
    pub initial_cluster_token: String,
    /// `--snapshot-count`.
    pub snapshot_count: u64,
    /// `--quota-backend-bytes` (0 means the default).
    pub quota_backend_bytes: u64,
    /// `--max-request-bytes`.
    pub max_request_bytes: usize,
    /// `--max-txn-ops`.
    pub max_txn_ops: usize,
    /// `--heartbeat-interval` (default 100 ms).
    pub heartbeat_interval: Duration,
    /// `--election-timeout` (default 1000 ms).
    pub election_timeout: Duration,
    /// The etcd version Ballast reports (`--emulated-etcd-version`, Ballast's own flag).
    pub emulated_etcd_version: String,
    /// `--watch-progress-notify-interval` (etcd's default 10 min; kubeadm sets 5 s).
    pub watch_progress_notify_interval: Duration,
    /// `--watch-stall-timeout` (Ballast's own flag): a watch stream whose client takes no
    /// response for this long while responses are pending is cancelled with a reason.
    pub watch_stall_timeout: Duration,
    /// `--watch-batch-interval` (Ballast's own flag): how long events for a busy watch stream
    /// may wait to leave together; zero sends every publish at once.
    pub watch_batch_interval: Duration,
    /// `--max-concurrent-streams`: streams per client connection (`u32::MAX`: no limit).
    pub max_concurrent_streams: u32,
    /// `--grpc-keepalive-min-time`: a client that pings more often than this is sent GOAWAY
    /// `too_many_pings` (grpc-go's keepalive enforcement policy, see serve.rs).
    pub grpc_keepalive_min_time: Duration,
    /// `--grpc-keepalive-interval` (zero: no server pings).
    pub grpc_keepalive_interval: Duration,
    /// `--grpc-keepalive-timeout`.
    pub grpc_keepalive_timeout: Duration,
    /// `--client-handshake-timeout` (Ballast's own flag): a client connection that sends
    /// nothing this long after it was accepted is closed.
    pub client_handshake_timeout: Duration,
    /// `--range-stall-timeout` (Ballast's own flag): a Range or RangeStream response whose
    /// client takes nothing for this long is ended (its snapshot released); zero: never.
    pub range_stall_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            name: "default".into(),
            data_dir: PathBuf::from("default.etcd"),
            listen_client_urls: vec!["http://localhost:2379".into()],
            advertise_client_urls: vec!["http://localhost:2379".into()],
            listen_peer_urls: vec!["http://localhost:2380".into()],
            initial_advertise_peer_urls: vec!["http://localhost:2380".into()],
            initial_cluster: vec![InitialMember {
                name: "default".into(),
                peer_urls: vec!["http://localhost:2380".into()],
            }],
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: "etcd-cluster".into(),
            snapshot_count: DEFAULT_SNAPSHOT_COUNT,
            quota_backend_bytes: DEFAULT_QUOTA_BACKEND_BYTES,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            emulated_etcd_version: DEFAULT_EMULATED_ETCD_VERSION.into(),
            watch_progress_notify_interval: DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL,
            watch_stall_timeout: DEFAULT_WATCH_STALL_TIMEOUT,
            watch_batch_interval: DEFAULT_WATCH_BATCH_INTERVAL,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            grpc_keepalive_min_time: DEFAULT_GRPC_KEEPALIVE_MIN_TIME,
            grpc_keepalive_interval: DEFAULT_GRPC_KEEPALIVE_INTERVAL,
            grpc_keepalive_timeout: DEFAULT_GRPC_KEEPALIVE_TIMEOUT,
            client_handshake_timeout: DEFAULT_CLIENT_HANDSHAKE_TIMEOUT,
            range_stall_timeout: DEFAULT_RANGE_STALL_TIMEOUT,
        }
    }
}
