//! The table of every etcd server flag Ballast recognises (etcd 3.4, 3.5, 3.6 and 3.7), with its
//! kind, etcd's default, how the YAML config file spells it, and what Ballast does with it.
//!
//! # Dispositions
//!
//! * **Implemented** — used: the value lands in `ServerConfig` or in the logging setup.
//! * **Harmless** — accepted and validated like etcd does; a non-default value logs the structured
//!   warning "flag --X is accepted but not active yet in Ballast". These are tuning knobs,
//!   observability extras, retention counts, options that only matter together with a rejected
//!   feature (TLS tuning without TLS, discovery timeouts without discovery), and safety options
//!   whose *absence* leaves Ballast at least as strict as asked (`--strict-reconfig-check=false`,
//!   `--pre-vote=false`, CORS which we never answer with allow headers).
//! * **Reject** — a non-default value fails startup with "flag X is not supported yet by Ballast:
//!   <why>". Used when ignoring the value would silently change safety or semantics: TLS
//!   (serving plaintext when the operator asked for TLS), client/peer certificate auth, JWT auth
//!   tokens, discovery and proxy modes (a different bootstrap/serving mode), the v2 API,
//!   `--force-new-cluster` and `--unsafe-no-fsync`, a dedicated `--wal-dir`, extra listeners
//!   (`--listen-metrics-urls`, `--listen-client-http-urls`: probes would hit a closed port) and
//!   `--host-whitelist` (we would answer any Host header).
//! * **Ignored** — etcd's own legacy `ignored` list (`-config`, `-peer-heartbeat-interval`, ...):
//!   accepted and warned about exactly like etcd does.
//! * **Meta** — `--config-file`, `--version` (handled by the parser itself).
//!
//! `--feature-gates` is harmless gate by gate (see [`FEATURE_GATES`]); unknown gates are errors,
//! as in etcd.

use super::values::Value;

/// How etcd parses a flag's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Str,
    /// A string restricted to a set (etcd's `SelectiveStringValue`; error "invalid value").
    Choice(&'static [&'static str]),
    /// Go `uint`/`uint64`.
    Uint,
    /// etcd's `Uint32Value`.
    Uint32,
    /// Go `int`/`int64`.
    Int,
    /// Go `time.Duration` (on the command line also bare whole seconds).
    Duration,
    /// Comma-separated URLs (etcd's `UniqueURLs`).
    Urls,
    /// Comma-separated strings, order kept.
    Strings,
    /// Comma-separated strings, sorted and de-duplicated (etcd's `UniqueStringsValue`).
    UniqueStrings,
    /// `Name=bool,...`.
    FeatureGates,
    /// etcd's `IgnoredFlag`: a boolean-style flag whose value is discarded.
    Ignored,
}

impl Kind {
    /// Go's flag package lets boolean flags stand alone (`--flag` means `--flag=true`).
    pub fn is_bool(&self) -> bool {
        matches!(self, Kind::Bool | Kind::Ignored)
    }
}

/// What Ballast does with a flag. See the module docs for the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Implemented,
    Harmless,
    /// The reason shown after "flag --X is not supported yet by Ballast: ".
    Reject(&'static str),
    Ignored,
    Meta,
}

/// How the `--config-file` YAML spells a flag (etcd's `embed.Config` json tags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Yaml {
    /// A top-level key with the flag's own name.
    Same,
    /// A key inside a nested mapping, e.g. `client-transport-security: {cert-file: ...}`.
    Nested(&'static str, &'static str),
    /// Not settable from the config file in etcd (command line / env only).
    No,
}

/// Groups for `--help`, following etcd's help sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Member,
    Clustering,
    Security,
    Auth,
    Monitoring,
    Logging,
    Tracing,
    Experimental,
    Unsafe,
    V2Proxy,
    Legacy,
    Ballast,
}

impl Section {
    pub fn title(self) -> &'static str {
        match self {
            Section::Member => "Member",
            Section::Clustering => "Clustering",
            Section::Security => "Security",
            Section::Auth => "Auth",
            Section::Monitoring => "Profiling and Monitoring",
            Section::Logging => "Logging",
            Section::Tracing => "Distributed tracing",
            Section::Experimental => "Experimental (deprecated in etcd 3.6, removed in 3.7)",
            Section::Unsafe => "Unsafe",
            Section::V2Proxy => "v2 proxy (removed in etcd 3.6)",
            Section::Legacy => "Legacy (etcd 3.4 only)",
            Section::Ballast => "Ballast",
        }
    }

    pub const ALL: [Section; 12] = [
        Section::Member,
        Section::Clustering,
        Section::Security,
        Section::Auth,
        Section::Monitoring,
        Section::Logging,
        Section::Tracing,
        Section::Experimental,
        Section::Unsafe,
        Section::V2Proxy,
        Section::Legacy,
        Section::Ballast,
    ];
}

/// Extra validation of an explicitly given value (etcd's `Validate` rules); returns the error.
pub type Check = fn(&Value) -> Result<(), String>;

/// One flag.
#[derive(Debug, Clone, Copy)]
pub struct FlagSpec {
    /// The name without dashes, e.g. `listen-client-urls`.
    pub name: &'static str,
    pub kind: Kind,
    /// etcd's default, as flag text (parsed with `kind`; `""` = empty).
    pub default: &'static str,
    pub disposition: Disposition,
    pub yaml: Yaml,
    pub section: Section,
    pub help: &'static str,
    pub check: Option<Check>,
    /// For the deprecated `--experimental-*` flags: the etcd 3.6 replacement.
    pub replaced_by: Option<&'static str>,
}

const fn flag(
    name: &'static str,
    kind: Kind,
    default: &'static str,
    section: Section,
    help: &'static str,
) -> FlagSpec {
    FlagSpec {
        name,
        kind,
        default,
        disposition: Disposition::Harmless,
        yaml: Yaml::Same,
        section,
        help,
        check: None,
        replaced_by: None,
    }
}

impl FlagSpec {
    const fn implemented(self) -> Self {
        FlagSpec {
            disposition: Disposition::Implemented,
            ..self
        }
    }
    const fn reject(self, why: &'static str) -> Self {
        FlagSpec {
            disposition: Disposition::Reject(why),
            ..self
        }
    }
    const fn meta(self) -> Self {
        FlagSpec {
            disposition: Disposition::Meta,
            yaml: Yaml::No,
            ..self
        }
    }
    const fn yaml(self, yaml: Yaml) -> Self {
        FlagSpec { yaml, ..self }
    }
    const fn check(self, check: Check) -> Self {
        FlagSpec {
            check: Some(check),
            ..self
        }
    }
    const fn replaced_by(self, name: &'static str) -> Self {
        FlagSpec {
            replaced_by: Some(name),
            ..self
        }
    }
}

const fn legacy_ignored(name: &'static str) -> FlagSpec {
    FlagSpec {
        name,
        kind: Kind::Ignored,
        default: "false",
        disposition: Disposition::Ignored,
        yaml: Yaml::No,
        section: Section::Legacy,
        help: "No longer supported by etcd; ignored with a warning.",
        check: None,
        replaced_by: None,
    }
}

const TLS: &str = "TLS is not supported yet";
const DISCOVERY: &str = "cluster discovery is not supported yet; bootstrap with --initial-cluster";
const V2: &str = "the etcd v2 API is not supported (etcd 3.6 removed it too)";
const PROXY: &str = "the v2 proxy mode is not supported (etcd 3.6 removed it too)";

use Kind::*;
use Section::*;

/// Every flag, grouped like etcd's `--help`.
pub static FLAGS: &[FlagSpec] = &[
    // ---------------------------------------------------------------- Member
    flag("name", Str, "default", Member, "Human-readable name for this member.").implemented(),
    flag("data-dir", Str, "", Member, "Path to the data directory (default '${name}.etcd').")
        .implemented(),
    flag("wal-dir", Str, "", Member, "Path to the dedicated wal directory.").reject(
        "the write-ahead log always lives under --data-dir",
    ),
    flag("snapshot-count", Uint, "10000", Member, "Number of committed transactions to trigger a snapshot to disk.")
        .implemented(),
    flag("heartbeat-interval", Uint, "100", Member, "Time (in milliseconds) of a heartbeat interval.")
        .implemented(),
    flag("election-timeout", Uint, "1000", Member, "Time (in milliseconds) for an election to timeout.")
        .implemented(),
    flag("initial-election-tick-advance", Bool, "true", Member, "Whether to fast-forward initial election ticks on boot for faster election."),
    flag("listen-peer-urls", Urls, "http://localhost:2380", Member, "List of URLs to listen on for peer traffic.")
        .implemented(),
    flag("listen-client-urls", Urls, "http://localhost:2379", Member, "List of URLs to listen on for client traffic.")
        .implemented(),
    flag("listen-client-http-urls", Urls, "", Member, "List of URLs to listen on for http only client traffic.").reject(
        "HTTP endpoints are served on --listen-client-urls only; a separate HTTP listener is not wired yet",
    ),
    flag("max-snapshots", Uint, "5", Member, "Maximum number of snapshot files to retain (0 is unlimited)."),
    flag("max-wals", Uint, "5", Member, "Maximum number of wal files to retain (0 is unlimited)."),
    flag("quota-backend-bytes", Int, "0", Member, "Raise alarms when backend size exceeds the given quota (0 defaults to 2 GiB).")
        .implemented(),
    flag("backend-bbolt-freelist-type", Str, "map", Member, "The type of freelist that boltdb backend uses (array and map)."),
    flag("backend-batch-interval", Duration, "0s", Member, "The maximum time before commit the backend transaction."),
    flag("backend-batch-limit", Int, "0", Member, "The maximum operations before commit the backend transaction."),
    flag("max-txn-ops", Uint, "128", Member, "Maximum number of operations permitted in a transaction.")
        .implemented(),
    flag("max-request-bytes", Uint, "1572864", Member, "Maximum client request size in bytes the server will accept.")
        .implemented(),
    flag("max-concurrent-streams", Uint32, "4294967295", Member, "Maximum concurrent streams that each client can open at a time.")
        .implemented(),
    flag("enable-grpc-gateway", Bool, "true", Member, "Enable GRPC gateway."),
    flag("grpc-keepalive-min-time", Duration, "5s", Member, "Minimum duration interval that a client should wait before pinging server.")
        .implemented(),
    flag("grpc-keepalive-interval", Duration, "2h", Member, "Frequency duration of server-to-client ping to check if a connection is alive (0 to disable).")
        .implemented(),
    flag("grpc-keepalive-timeout", Duration, "20s", Member, "Additional duration of wait before closing a non-responsive connection (0 to disable).")
        .implemented(),
    flag("socket-reuse-port", Bool, "false", Member, "Enable to set socket option SO_REUSEPORT on listeners.")
        .yaml(Yaml::Nested("socket-options", "reuse-port")),
    flag("socket-reuse-address", Bool, "false", Member, "Enable to set socket option SO_REUSEADDR on listeners.")
        .yaml(Yaml::Nested("socket-options", "reuse-address")),
    flag("raft-read-timeout", Duration, "5s", Member, "Read timeout set on each rafthttp connection.")
        .yaml(Yaml::No),
    flag("raft-write-timeout", Duration, "5s", Member, "Write timeout set on each rafthttp connection.")
        .yaml(Yaml::No),
    flag("memory-mlock", Bool, "false", Member, "Enable to enforce etcd pages (in particular bbolt) to stay in RAM."),
    flag("snapshot-catchup-entries", Uint, "5000", Member, "Number of entries for a slow follower to catch up after compacting the raft storage entries."),
    flag("feature-gates", FeatureGates, "", Member, "Comma-separated list of Name=true|false feature gates."),
    // ---------------------------------------------------------------- Clustering
    flag("initial-advertise-peer-urls", Urls, "http://localhost:2380", Clustering, "List of this member's peer URLs to advertise to the rest of the cluster.")
        .implemented(),
    flag("initial-cluster", Str, "default=http://localhost:2380", Clustering, "Initial cluster configuration for bootstrapping (name=url,...).")
        .implemented(),
    flag("initial-cluster-state", Choice(&["new", "existing"]), "new", Clustering, "Initial cluster state ('new' or 'existing').")
        .implemented(),
    flag("initial-cluster-token", Str, "etcd-cluster", Clustering, "Initial cluster token for the etcd cluster during bootstrap.")
        .implemented(),
    flag("advertise-client-urls", Urls, "http://localhost:2379", Clustering, "List of this member's client URLs to advertise to the public.")
        .implemented(),
    flag("discovery", Str, "", Clustering, "Discovery URL used to bootstrap the cluster (v2 discovery).").reject(DISCOVERY),
    flag("discovery-fallback", Choice(&["exit", "proxy"]), "exit", Clustering, "Expected behavior ('exit' or 'proxy') when discovery services fails."),
    flag("discovery-proxy", Str, "", Clustering, "HTTP proxy to use for traffic to discovery service.").reject(DISCOVERY),
    flag("discovery-srv", Str, "", Clustering, "DNS srv domain used to bootstrap the cluster.").reject(DISCOVERY),
    flag("discovery-srv-name", Str, "", Clustering, "Suffix to the dns srv name queried when bootstrapping.").reject(DISCOVERY),
    flag("discovery-endpoints", UniqueStrings, "", Clustering, "V3 discovery: List of gRPC endpoints of the discovery service.")
        .yaml(Yaml::No).reject(DISCOVERY),
    flag("discovery-token", Str, "", Clustering, "V3 discovery: discovery token for the etcd cluster to be bootstrapped.")
        .yaml(Yaml::No).reject(DISCOVERY),
    flag("discovery-dial-timeout", Duration, "2s", Clustering, "V3 discovery: dial timeout for client connections.").yaml(Yaml::No),
    flag("discovery-request-timeout", Duration, "5s", Clustering, "V3 discovery: timeout for discovery requests (excluding dial timeout).").yaml(Yaml::No),
    flag("discovery-keepalive-time", Duration, "2s", Clustering, "V3 discovery: keepalive time for client connections.").yaml(Yaml::No),
    flag("discovery-keepalive-timeout", Duration, "6s", Clustering, "V3 discovery: keepalive timeout for client connections.").yaml(Yaml::No),
    flag("discovery-insecure-transport", Bool, "true", Clustering, "V3 discovery: disable transport security for client connections.").yaml(Yaml::No),
    flag("discovery-insecure-skip-tls-verify", Bool, "false", Clustering, "V3 discovery: skip server certificate verification.").yaml(Yaml::No),
    flag("discovery-cert", Str, "", Clustering, "V3 discovery: identify secure client using this TLS certificate file.").yaml(Yaml::No),
    flag("discovery-key", Str, "", Clustering, "V3 discovery: identify secure client using this TLS key file.").yaml(Yaml::No),
    flag("discovery-cacert", Str, "", Clustering, "V3 discovery: verify certificates of TLS-enabled secure servers using this CA bundle.").yaml(Yaml::No),
    flag("discovery-user", Str, "", Clustering, "V3 discovery: username[:password] for authentication.").yaml(Yaml::No),
    flag("discovery-password", Str, "", Clustering, "V3 discovery: password for authentication.").yaml(Yaml::No),
    flag("strict-reconfig-check", Bool, "true", Clustering, "Reject reconfiguration requests that would cause quorum loss."),
    flag("pre-vote", Bool, "true", Clustering, "Enable to run an additional Raft election phase."),
    flag("auto-compaction-retention", Str, "0", Clustering, "Auto compaction retention length. 0 means disable auto compaction.")
        .check(check_compaction_retention),
    flag("auto-compaction-mode", Str, "periodic", Clustering, "Interpret 'auto-compaction-retention' one of: periodic|revision.")
        .check(check_compaction_mode),
    flag("enable-v2", Bool, "false", Clustering, "Accept etcd V2 client requests.").reject(V2),
    flag("v2-deprecation", Choice(&["not-yet", "write-only", "write-only-drop-data", "gone"]), "write-only", Clustering, "Phase of v2store deprecation."),
    // ---------------------------------------------------------------- Security
    flag("cert-file", Str, "", Security, "Path to the client server TLS cert file.")
        .yaml(Yaml::Nested("client-transport-security", "cert-file")).reject(TLS),
    flag("key-file", Str, "", Security, "Path to the client server TLS key file.")
        .yaml(Yaml::Nested("client-transport-security", "key-file")).reject(TLS),
    flag("client-cert-auth", Bool, "false", Security, "Enable client cert authentication.")
        .yaml(Yaml::Nested("client-transport-security", "client-cert-auth")).reject(TLS),
    flag("client-cert-file", Str, "", Security, "Path to an explicit peer client TLS cert file.")
        .yaml(Yaml::Nested("client-transport-security", "client-cert-file")).reject(TLS),
    flag("client-key-file", Str, "", Security, "Path to an explicit peer client TLS key file.")
        .yaml(Yaml::Nested("client-transport-security", "client-key-file")).reject(TLS),
    flag("client-crl-file", Str, "", Security, "Path to the client certificate revocation list file.")
        .yaml(Yaml::No).reject(TLS),
    flag("client-cert-allowed-hostname", Strings, "", Security, "Comma-separated list of SAN hostnames for client cert authentication.")
        .yaml(Yaml::Nested("client-transport-security", "allowed-hostname")).reject(TLS),
    flag("trusted-ca-file", Str, "", Security, "Path to the client server TLS trusted CA cert file.")
        .yaml(Yaml::Nested("client-transport-security", "trusted-ca-file")).reject(TLS),
    flag("auto-tls", Bool, "false", Security, "Client TLS using generated certificates.")
        .yaml(Yaml::Nested("client-transport-security", "auto-tls")).reject(TLS),
    flag("peer-cert-file", Str, "", Security, "Path to the peer server TLS cert file.")
        .yaml(Yaml::Nested("peer-transport-security", "cert-file")).reject(TLS),
    flag("peer-key-file", Str, "", Security, "Path to the peer server TLS key file.")
        .yaml(Yaml::Nested("peer-transport-security", "key-file")).reject(TLS),
    flag("peer-client-cert-auth", Bool, "false", Security, "Enable peer client cert authentication.")
        .yaml(Yaml::Nested("peer-transport-security", "client-cert-auth")).reject(TLS),
    flag("peer-client-cert-file", Str, "", Security, "Path to an explicit peer client TLS cert file.")
        .yaml(Yaml::Nested("peer-transport-security", "client-cert-file")).reject(TLS),
    flag("peer-client-key-file", Str, "", Security, "Path to an explicit peer client TLS key file.")
        .yaml(Yaml::Nested("peer-transport-security", "client-key-file")).reject(TLS),
    flag("peer-trusted-ca-file", Str, "", Security, "Path to the peer server TLS trusted CA file.")
        .yaml(Yaml::Nested("peer-transport-security", "trusted-ca-file")).reject(TLS),
    flag("peer-cert-allowed-cn", Strings, "", Security, "Comma-separated list of allowed CNs for inter-peer TLS authentication.")
        .yaml(Yaml::Nested("peer-transport-security", "allowed-cn")).reject(TLS),
    flag("peer-cert-allowed-hostname", Strings, "", Security, "Comma-separated list of allowed SAN hostnames for inter-peer TLS authentication.")
        .yaml(Yaml::Nested("peer-transport-security", "allowed-hostname")).reject(TLS),
    flag("peer-auto-tls", Bool, "false", Security, "Peer TLS using self-generated certificates.")
        .yaml(Yaml::Nested("peer-transport-security", "auto-tls")).reject(TLS),
    flag("peer-crl-file", Str, "", Security, "Path to the peer certificate revocation list file.")
        .yaml(Yaml::No).reject(TLS),
    flag("peer-skip-client-san-verification", Bool, "false", Security, "Skip verification of SAN field in client certificate for peer connections.")
        .yaml(Yaml::Nested("peer-transport-security", "skip-client-san-verification")),
    flag("self-signed-cert-validity", Uint, "1", Security, "The validity period (in years) of auto-generated client and peer certificates."),
    flag("cipher-suites", Strings, "", Security, "Comma-separated list of supported TLS cipher suites between client/server and peers."),
    flag("tls-min-version", Str, "TLS1.2", Security, "Minimum TLS version supported by etcd. Possible values: TLS1.2, TLS1.3.")
        .check(check_tls_version),
    flag("tls-max-version", Str, "", Security, "Maximum TLS version supported by etcd. Possible values: TLS1.2, TLS1.3.")
        .check(check_tls_version),
    flag("cors", UniqueStrings, "*", Security, "Comma-separated whitelist of origins for CORS (empty or * means allow all)."),
    flag("host-whitelist", UniqueStrings, "*", Security, "Acceptable hostnames from HTTP client requests, if server is not secure.")
        .reject("Host header filtering is not implemented; Ballast would answer requests for any host"),
    // ---------------------------------------------------------------- Auth
    flag("auth-token", Str, "simple", Auth, "Specify a v3 authentication token type and its options ('simple' or 'jwt').")
        .reject("only 'simple' auth tokens are implemented"),
    flag("bcrypt-cost", Uint, "10", Auth, "The cost / strength of the bcrypt algorithm for hashing auth passwords (4-31).")
        .check(check_bcrypt_cost),
    flag("auth-token-ttl", Uint, "300", Auth, "Time (in seconds) of the auth-token-ttl."),
    // ---------------------------------------------------------------- Profiling and monitoring
    flag("enable-pprof", Bool, "false", Monitoring, "Enable runtime profiling data via HTTP server."),
    flag("metrics", Str, "basic", Monitoring, "Set level of detail for exported metrics ('basic' or 'extensive')."),
    flag("listen-metrics-urls", Urls, "", Monitoring, "List of URLs to listen on for the /metrics and /health endpoints.")
        .reject("a separate metrics/health listener is not wired yet; /metrics and /health are served on --listen-client-urls"),
    // ---------------------------------------------------------------- Logging
    flag("logger", Str, "zap", Logging, "Currently only supports 'zap' for structured logging.").implemented(),
    flag("log-outputs", UniqueStrings, "default", Logging, "'default', 'stderr', 'stdout' or file paths, comma separated.")
        .implemented(),
    flag("log-level", Str, "info", Logging, "Configures log level. Only supports debug, info, warn, error, panic, or fatal.")
        .implemented(),
    flag("log-format", Str, "json", Logging, "Configures log format. Only supports json, console.").implemented(),
    flag("enable-log-rotation", Bool, "false", Logging, "Enable log rotation of a single log-outputs file target."),
    flag("log-rotation-config-json", Str, r#"{"maxsize": 100, "maxage": 0, "maxbackups": 0, "localtime": false, "compress": false}"#, Logging, "Configures log rotation if enabled with a JSON logger config."),
    flag("disable-log-sampling", Bool, "false", Logging, "Disable log sampling."),
    flag("warning-apply-duration", Duration, "100ms", Logging, "Warning is generated if requests take more than this duration."),
    flag("warning-unary-request-duration", Duration, "300ms", Logging, "Warning is generated if a unary request takes more than this duration."),
    // ---------------------------------------------------------------- Distributed tracing
    flag("enable-distributed-tracing", Bool, "false", Tracing, "Enable distributed tracing using OpenTelemetry Tracing."),
    flag("distributed-tracing-address", Str, "localhost:4317", Tracing, "Address for distributed tracing used for OpenTelemetry Tracing."),
    flag("distributed-tracing-service-name", Str, "etcd", Tracing, "Service name for distributed tracing."),
    flag("distributed-tracing-instance-id", Str, "", Tracing, "Service instance ID for distributed tracing."),
    flag("distributed-tracing-sampling-rate", Int, "0", Tracing, "Number of samples to collect per million spans."),
    flag("experimental-enable-distributed-tracing", Bool, "false", Tracing, "Deprecated: use --enable-distributed-tracing.")
        .replaced_by("enable-distributed-tracing"),
    flag("experimental-distributed-tracing-address", Str, "localhost:4317", Tracing, "Deprecated: use --distributed-tracing-address.")
        .replaced_by("distributed-tracing-address"),
    flag("experimental-distributed-tracing-service-name", Str, "etcd", Tracing, "Deprecated: use --distributed-tracing-service-name.")
        .replaced_by("distributed-tracing-service-name"),
    flag("experimental-distributed-tracing-instance-id", Str, "", Tracing, "Deprecated: use --distributed-tracing-instance-id.")
        .replaced_by("distributed-tracing-instance-id"),
    flag("experimental-distributed-tracing-sampling-rate", Int, "0", Tracing, "Deprecated: use --distributed-tracing-sampling-rate.")
        .replaced_by("distributed-tracing-sampling-rate"),
    // ---------------------------------------------------------------- Former experimental, un-prefixed in 3.6
    flag("corrupt-check-time", Duration, "0s", Experimental, "Duration of time between cluster corruption check passes."),
    flag("compact-hash-check-time", Duration, "1m", Experimental, "Duration of time between leader checks followers compaction hashes.")
        .check(check_positive_duration),
    flag("compaction-batch-limit", Int, "0", Experimental, "Sets the maximum revisions deleted in each compaction batch."),
    flag("compaction-sleep-interval", Duration, "0s", Experimental, "Sets the sleep interval between each compaction batch."),
    flag("watch-progress-notify-interval", Duration, "10m", Experimental, "Duration of periodic watch progress notifications.")
        .implemented(),
    flag("downgrade-check-time", Duration, "5s", Experimental, "Duration of time between two downgrade status checks."),
    flag("bootstrap-defrag-threshold-megabytes", Uint, "0", Experimental, "Defrag during bootstrap if it frees at least this many megabytes."),
    flag("max-learners", Int, "1", Experimental, "Sets the maximum number of learners that can be available in the cluster membership."),
    // ---------------------------------------------------------------- Experimental (3.4/3.5/3.6)
    flag("experimental-initial-corrupt-check", Bool, "false", Experimental, "Deprecated: use --feature-gates=InitialCorruptCheck=true."),
    flag("experimental-corrupt-check-time", Duration, "0s", Experimental, "Deprecated: use --corrupt-check-time.")
        .replaced_by("corrupt-check-time"),
    flag("experimental-compact-hash-check-enabled", Bool, "false", Experimental, "Deprecated: use --feature-gates=CompactHashCheck=true."),
    flag("experimental-compact-hash-check-time", Duration, "1m", Experimental, "Deprecated: use --compact-hash-check-time.")
        .replaced_by("compact-hash-check-time").check(check_positive_duration),
    flag("experimental-enable-v2v3", Str, "", Experimental, "Serve v2 requests through the v3 backend under a given prefix.").reject(V2),
    flag("experimental-enable-lease-checkpoint", Bool, "false", Experimental, "Deprecated: use --feature-gates=LeaseCheckpoint=true."),
    flag("experimental-enable-lease-checkpoint-persist", Bool, "false", Experimental, "Deprecated: use --feature-gates=LeaseCheckpointPersist=true."),
    flag("experimental-compaction-batch-limit", Int, "1000", Experimental, "Deprecated: use --compaction-batch-limit.")
        .replaced_by("compaction-batch-limit"),
    flag("experimental-compaction-sleep-interval", Duration, "10ms", Experimental, "Deprecated: use --compaction-sleep-interval.")
        .replaced_by("compaction-sleep-interval"),
    flag("experimental-peer-skip-client-san-verification", Bool, "false", Experimental, "Deprecated: use --peer-skip-client-san-verification.")
        .replaced_by("peer-skip-client-san-verification"),
    flag("experimental-watch-progress-notify-interval", Duration, "10m", Experimental, "Deprecated: use --watch-progress-notify-interval.")
        .replaced_by("watch-progress-notify-interval").implemented(),
    flag("experimental-warning-apply-duration", Duration, "100ms", Experimental, "Deprecated: use --warning-apply-duration.")
        .replaced_by("warning-apply-duration"),
    flag("experimental-warning-unary-request-duration", Duration, "300ms", Experimental, "Deprecated: use --warning-unary-request-duration.")
        .replaced_by("warning-unary-request-duration"),
    flag("experimental-txn-mode-write-with-shared-buffer", Bool, "true", Experimental, "Deprecated: use --feature-gates=TxnModeWriteWithSharedBuffer=true."),
    flag("experimental-bootstrap-defrag-threshold-megabytes", Uint, "0", Experimental, "Deprecated: use --bootstrap-defrag-threshold-megabytes.")
        .replaced_by("bootstrap-defrag-threshold-megabytes"),
    flag("experimental-max-learners", Int, "1", Experimental, "Deprecated: use --max-learners.")
        .replaced_by("max-learners"),
    flag("experimental-snapshot-catchup-entries", Uint, "5000", Experimental, "Deprecated: use --snapshot-catchup-entries.")
        .replaced_by("snapshot-catchup-entries"),
    flag("experimental-downgrade-check-time", Duration, "5s", Experimental, "Deprecated: use --downgrade-check-time.")
        .replaced_by("downgrade-check-time"),
    flag("experimental-memory-mlock", Bool, "false", Experimental, "Deprecated: use --memory-mlock.")
        .replaced_by("memory-mlock"),
    flag("experimental-stop-grpc-service-on-defrag", Bool, "false", Experimental, "Deprecated: use --feature-gates=StopGRPCServiceOnDefrag=true."),
    flag("experimental-wait-cluster-ready-timeout", Duration, "5s", Experimental, "Maximum duration to wait for the cluster to be ready."),
    flag("experimental-set-member-localaddr", Bool, "false", Experimental, "Deprecated: use --feature-gates=SetMemberLocalAddr=true."),
    flag("experimental-backend-bbolt-freelist-type", Str, "array", Experimental, "etcd 3.4 name of --backend-bbolt-freelist-type.")
        .replaced_by("backend-bbolt-freelist-type"),
    // ---------------------------------------------------------------- Unsafe
    flag("force-new-cluster", Bool, "false", Unsafe, "Force to create a new one-member cluster.")
        .reject("forcing a new one-member cluster from existing data is not implemented"),
    flag("unsafe-no-fsync", Bool, "false", Unsafe, "Disables fsync, unsafe, will cause data loss.")
        .reject("Ballast always fsyncs its write-ahead log"),
    // ---------------------------------------------------------------- v2 proxy
    flag("proxy", Choice(&["off", "readonly", "on"]), "off", V2Proxy, "Proxy mode setting ('off', 'readonly' or 'on').").reject(PROXY),
    flag("proxy-failure-wait", Uint, "5000", V2Proxy, "Time (in milliseconds) an endpoint will be held in a failed state."),
    flag("proxy-refresh-interval", Uint, "30000", V2Proxy, "Time (in milliseconds) of the endpoints refresh interval."),
    flag("proxy-dial-timeout", Uint, "1000", V2Proxy, "Time (in milliseconds) for a dial to timeout."),
    flag("proxy-write-timeout", Uint, "5000", V2Proxy, "Time (in milliseconds) for a write to timeout."),
    flag("proxy-read-timeout", Uint, "0", V2Proxy, "Time (in milliseconds) for a read to timeout."),
    // ---------------------------------------------------------------- etcd 3.4 only
    flag("debug", Bool, "false", Legacy, "etcd 3.4: enable debug-level logging (use --log-level=debug)."),
    flag("log-package-levels", Str, "", Legacy, "etcd 3.4: per-package log levels."),
    flag("log-output", UniqueStrings, "default", Legacy, "etcd 3.4: use --log-outputs."),
    legacy_ignored("cluster-active-size"),
    legacy_ignored("cluster-remove-delay"),
    legacy_ignored("cluster-sync-interval"),
    legacy_ignored("config"),
    legacy_ignored("force"),
    legacy_ignored("max-result-buffer"),
    legacy_ignored("max-retry-attempts"),
    legacy_ignored("peer-heartbeat-interval"),
    legacy_ignored("peer-election-timeout"),
    legacy_ignored("retry-interval"),
    legacy_ignored("snapshot"),
    legacy_ignored("v"),
    legacy_ignored("vv"),
    // ---------------------------------------------------------------- Ballast
    flag("emulated-etcd-version", Str, ballast_server::config::DEFAULT_EMULATED_ETCD_VERSION, Ballast, "The etcd version Ballast reports (Status.version, /version); x.y.z with x = 3.")
        .implemented(),
    flag("watch-stall-timeout", Duration, "5m", Ballast, "Cancel a watch stream (with a reason on each of its watches) whose client takes no response for this long while some are pending.")
        .implemented(),
    flag("client-handshake-timeout", Duration, "10s", Ballast, "Close a client connection that has not sent the start of a request (the HTTP/2 preface or an HTTP/1 request line) this long after it was accepted.")
        .implemented(),
    flag("range-stall-timeout", Duration, "5m", Ballast, "End a Range or RangeStream response (with an error) whose client takes nothing for this long while rows are left to send, releasing the snapshot it reads from (0: never).")
        .implemented(),
    flag("watch-batch-interval", Duration, "10ms", Ballast, "A busy watch stream (fed at least twice per interval on average) that was woken for new events less than this long ago is woken again at its next slot, at most this much later, so that its events leave together: less CPU per event and steadier write latency under heavy watch load; other streams are woken at once (0: every write wakes every stream at once, like etcd).")
        .implemented(),
    flag("config-file", Str, "", Ballast, "Path to the server configuration file. If given, other command line flags and environment variables are ignored.")
        .meta(),
    flag("version", Bool, "false", Ballast, "Print the version and exit.").meta(),
];

/// Looks a flag up by name (without dashes).
pub fn lookup(name: &str) -> Option<&'static FlagSpec> {
    FLAGS.iter().find(|f| f.name == name)
}

/// A server feature gate (`E: server/features/etcd_features.go`).
#[derive(Debug, Clone, Copy)]
pub struct FeatureGate {
    pub name: &'static str,
    pub default: bool,
    /// The etcd 3.5 `--experimental-*` flag this gate replaced, if any.
    pub experimental_flag: Option<&'static str>,
}

const fn gate(
    name: &'static str,
    default: bool,
    experimental_flag: Option<&'static str>,
) -> FeatureGate {
    FeatureGate {
        name,
        default,
        experimental_flag,
    }
}

/// etcd 3.6/3.7 server feature gates, plus the `AllAlpha`/`AllBeta` meta gates of the
/// featuregate package. All are accepted; none changes Ballast's behaviour yet.
pub static FEATURE_GATES: &[FeatureGate] = &[
    gate("AllAlpha", false, None),
    gate("AllBeta", false, None),
    gate(
        "CompactHashCheck",
        false,
        Some("experimental-compact-hash-check-enabled"),
    ),
    gate("FastLeaseKeepAlive", false, None),
    gate(
        "InitialCorruptCheck",
        false,
        Some("experimental-initial-corrupt-check"),
    ),
    gate(
        "LeaseCheckpoint",
        false,
        Some("experimental-enable-lease-checkpoint"),
    ),
    gate(
        "LeaseCheckpointPersist",
        false,
        Some("experimental-enable-lease-checkpoint-persist"),
    ),
    gate("PriorityRequest", false, None),
    gate(
        "SetMemberLocalAddr",
        false,
        Some("experimental-set-member-localaddr"),
    ),
    gate(
        "StopGRPCServiceOnDefrag",
        false,
        Some("experimental-stop-grpc-service-on-defrag"),
    ),
    gate(
        "TxnModeWriteWithSharedBuffer",
        true,
        Some("experimental-txn-mode-write-with-shared-buffer"),
    ),
];

fn check_compaction_mode(v: &Value) -> Result<(), String> {
    match v.as_str() {
        "periodic" | "revision" => Ok(()),
        "" => Err("undefined auto-compaction-mode".into()),
        other => Err(format!("unknown auto-compaction-mode {other:?}")),
    }
}

/// etcd's `parseCompactionRetention`: a non-negative integer (hours, or revisions), or a duration.
fn check_compaction_retention(v: &Value) -> Result<(), String> {
    let s = v.as_str();
    if s.parse::<i64>().is_ok_and(|h| h >= 0) {
        return Ok(());
    }
    super::values::parse_go_duration(s)
        .map(|_| ())
        .map_err(|e| format!("error parsing CompactionRetention: {e}"))
}

fn check_tls_version(v: &Value) -> Result<(), String> {
    match v.as_str() {
        "" | "TLS1.2" | "TLS1.3" => Ok(()),
        other => Err(format!(
            "unexpected TLS version {other:?} (must be one of: TLS1.2, TLS1.3)"
        )),
    }
}

fn check_bcrypt_cost(v: &Value) -> Result<(), String> {
    match v.as_u64() {
        4..=31 => Ok(()),
        other => Err(format!(
            "invalid --bcrypt-cost {other}: must be between 4 and 31"
        )),
    }
}

fn check_positive_duration(v: &Value) -> Result<(), String> {
    if v.as_duration_nanos() > 0 {
        Ok(())
    } else {
        Err(format!("--compact-hash-check-time must be >0 (set to {v})"))
    }
}
