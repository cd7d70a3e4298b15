//! Behaviour tests for flag / env / config-file resolution, checked against etcd's rules.

use std::path::PathBuf;
use std::time::Duration;

use ballast_server::config::{ClusterState, InitialMember, ServerConfig};
use tracing::Level;

use super::table::{Disposition, Kind, Yaml, FEATURE_GATES, FLAGS};
use super::*;
use crate::logging::{LogFormat, LogOutput};

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn env_of(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn run_env(args: &[&str], env: &[(&str, &str)]) -> Result<Resolved, ConfigError> {
    match parse(&strings(args), &env_of(env))? {
        Command::Run(r) => Ok(*r),
        other => panic!("expected a run command for {args:?}, got {other:?}"),
    }
}

fn run(args: &[&str]) -> Resolved {
    run_env(args, &[]).unwrap_or_else(|e| panic!("{args:?} failed: {e}"))
}

fn fail_env(args: &[&str], env: &[(&str, &str)]) -> ConfigError {
    match parse(&strings(args), &env_of(env)) {
        Err(e) => e,
        Ok(other) => panic!("{args:?} / {env:?} should fail, got {other:?}"),
    }
}

fn fail(args: &[&str]) -> ConfigError {
    fail_env(args, &[])
}

fn usage(args: &[&str]) -> String {
    match fail(args) {
        ConfigError::Usage(m) => m,
        other => panic!("{args:?}: expected a usage error, got {other:?}"),
    }
}

fn invalid(args: &[&str]) -> String {
    match fail(args) {
        ConfigError::Invalid(m) => m,
        other => panic!("{args:?}: expected an invalid-config error, got {other:?}"),
    }
}

fn warnings(r: &Resolved) -> Vec<String> {
    r.notices
        .iter()
        .filter(|n| n.level == NoticeLevel::Warn)
        .map(|n| n.msg.clone())
        .collect()
}

fn has_warning(r: &Resolved, msg: &str) -> bool {
    warnings(r).iter().any(|w| w == msg)
}

fn not_active(name: &str) -> String {
    format!("flag --{name} is accepted but not active yet in Ballast")
}

fn members(items: &[(&str, &[&str])]) -> Vec<InitialMember> {
    items
        .iter()
        .map(|(name, urls)| InitialMember {
            name: name.to_string(),
            peer_urls: strings(urls),
        })
        .collect()
}

/// A config file in a temp dir (kept alive by the returned guard).
fn config_file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("etcd.conf.yml");
    std::fs::write(&path, text).unwrap();
    let path = path.to_str().unwrap().to_string();
    (dir, path)
}

fn run_yaml(text: &str) -> Result<Resolved, ConfigError> {
    let (_dir, path) = config_file(text);
    run_env(&["--config-file", &path], &[])
}

// ------------------------------------------------------------------ defaults

#[test]
fn defaults_equal_etcd_and_server_defaults() {
    let r = run(&[]);
    let c = &r.server;
    assert_eq!(format!("{c:?}"), format!("{:?}", ServerConfig::default()));
    assert_eq!(c.name, "default");
    assert_eq!(c.data_dir, PathBuf::from("default.etcd"));
    assert_eq!(c.listen_client_urls, ["http://localhost:2379"]);
    assert_eq!(c.advertise_client_urls, ["http://localhost:2379"]);
    assert_eq!(c.listen_peer_urls, ["http://localhost:2380"]);
    assert_eq!(c.initial_advertise_peer_urls, ["http://localhost:2380"]);
    assert_eq!(
        c.initial_cluster,
        members(&[("default", &["http://localhost:2380"])])
    );
    assert_eq!(c.initial_cluster_state, ClusterState::New);
    assert_eq!(c.initial_cluster_token, "etcd-cluster");
    assert_eq!(c.snapshot_count, 10_000);
    assert_eq!(c.quota_backend_bytes, 2 * 1024 * 1024 * 1024);
    assert_eq!(c.max_request_bytes, 1_572_864);
    assert_eq!(c.max_txn_ops, 128);
    assert_eq!(c.heartbeat_interval, Duration::from_millis(100));
    assert_eq!(c.election_timeout, Duration::from_millis(1000));
    assert_eq!(c.emulated_etcd_version, "3.6.0");
    assert_eq!(r.logging.level, Level::INFO);
    assert_eq!(r.logging.format, LogFormat::Json);
    assert_eq!(r.logging.outputs, [LogOutput::Stderr]);
    assert_eq!(r.config_file, None);
    // etcd 3.6 warns about the default name and the defaulted data dir; nothing else.
    assert_eq!(
        warnings(&r),
        [
            "it isn't recommended to use default name, please set a value for --name. Note that etcd might run into issue when multiple members have the same default name",
            "'data-dir' was empty; using default",
        ]
    );
}

#[test]
fn table_is_well_formed() {
    let mut names = std::collections::HashSet::new();
    let mut yaml_keys = std::collections::HashSet::new();
    for f in FLAGS {
        assert!(names.insert(f.name), "duplicate flag {}", f.name);
        assert!(
            f.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "flag name {} is not kebab-case",
            f.name
        );
        let default = values::parse(&f.kind, f.default)
            .unwrap_or_else(|e| panic!("default of --{} does not parse: {e}", f.name));
        if let Some(check) = f.check {
            check(&default)
                .unwrap_or_else(|e| panic!("default of --{} fails its check: {e}", f.name));
        }
        let key = match f.yaml {
            Yaml::Same => Some(f.name.to_string()),
            Yaml::Nested(s, k) => Some(format!("{s}.{k}")),
            Yaml::No => None,
        };
        if let Some(key) = key {
            assert!(yaml_keys.insert(key.clone()), "duplicate yaml key {key}");
        }
        if let Some(r) = f.replaced_by {
            assert!(
                table::lookup(r).is_some(),
                "--{} replaced by unknown --{r}",
                f.name
            );
        }
    }
    for g in FEATURE_GATES {
        if let Some(flag) = g.experimental_flag {
            assert!(
                table::lookup(flag).is_some(),
                "gate {} maps to unknown --{flag}",
                g.name
            );
        }
    }
    // Implemented flags are the ones this crate wires into ServerConfig / LogConfig.
    let implemented: Vec<&str> = FLAGS
        .iter()
        .filter(|f| f.disposition == Disposition::Implemented)
        .map(|f| f.name)
        .collect();
    assert_eq!(
        implemented,
        [
            "name",
            "data-dir",
            "snapshot-count",
            "heartbeat-interval",
            "election-timeout",
            "listen-peer-urls",
            "listen-client-urls",
            "quota-backend-bytes",
            "max-txn-ops",
            "max-request-bytes",
            "max-concurrent-streams",
            "grpc-keepalive-min-time",
            "grpc-keepalive-interval",
            "grpc-keepalive-timeout",
            "initial-advertise-peer-urls",
            "initial-cluster",
            "initial-cluster-state",
            "initial-cluster-token",
            "advertise-client-urls",
            "logger",
            "log-outputs",
            "log-level",
            "log-format",
            "watch-progress-notify-interval",
            "experimental-watch-progress-notify-interval",
            "emulated-etcd-version",
            "watch-stall-timeout",
            "client-handshake-timeout",
            "range-stall-timeout",
            "watch-batch-interval",
        ]
    );
}

/// The etcd 3.6 inventory (etcd-surface.md §3.2 and kubeadm's manifest) is all there.
#[test]
fn etcd_inventory_is_recognised() {
    let inventory = [
        "name",
        "data-dir",
        "wal-dir",
        "snapshot-count",
        "heartbeat-interval",
        "election-timeout",
        "initial-election-tick-advance",
        "listen-peer-urls",
        "listen-client-urls",
        "listen-client-http-urls",
        "max-wals",
        "memory-mlock",
        "quota-backend-bytes",
        "backend-bbolt-freelist-type",
        "backend-batch-interval",
        "backend-batch-limit",
        "max-txn-ops",
        "max-request-bytes",
        "max-concurrent-streams",
        "grpc-keepalive-min-time",
        "grpc-keepalive-interval",
        "grpc-keepalive-timeout",
        "socket-reuse-port",
        "socket-reuse-address",
        "enable-grpc-gateway",
        "raft-read-timeout",
        "raft-write-timeout",
        "feature-gates",
        "initial-advertise-peer-urls",
        "initial-cluster",
        "initial-cluster-state",
        "initial-cluster-token",
        "advertise-client-urls",
        "discovery",
        "discovery-endpoints",
        "discovery-token",
        "discovery-user",
        "discovery-password",
        "discovery-srv",
        "strict-reconfig-check",
        "pre-vote",
        "auto-compaction-retention",
        "auto-compaction-mode",
        "cert-file",
        "key-file",
        "client-cert-auth",
        "client-cert-file",
        "client-key-file",
        "client-crl-file",
        "client-cert-allowed-hostname",
        "trusted-ca-file",
        "auto-tls",
        "peer-cert-file",
        "peer-key-file",
        "peer-client-cert-auth",
        "peer-client-cert-file",
        "peer-client-key-file",
        "peer-trusted-ca-file",
        "peer-cert-allowed-cn",
        "peer-cert-allowed-hostname",
        "peer-auto-tls",
        "self-signed-cert-validity",
        "peer-crl-file",
        "cipher-suites",
        "cors",
        "host-whitelist",
        "tls-min-version",
        "tls-max-version",
        "auth-token",
        "bcrypt-cost",
        "auth-token-ttl",
        "enable-pprof",
        "metrics",
        "listen-metrics-urls",
        "logger",
        "log-outputs",
        "log-level",
        "log-format",
        "enable-log-rotation",
        "log-rotation-config-json",
        "warning-unary-request-duration",
        "enable-distributed-tracing",
        "distributed-tracing-address",
        "distributed-tracing-service-name",
        "distributed-tracing-instance-id",
        "distributed-tracing-sampling-rate",
        "corrupt-check-time",
        "compact-hash-check-time",
        "compaction-batch-limit",
        "peer-skip-client-san-verification",
        "watch-progress-notify-interval",
        "warning-apply-duration",
        "bootstrap-defrag-threshold-megabytes",
        "max-learners",
        "compaction-sleep-interval",
        "downgrade-check-time",
        "snapshot-catchup-entries",
        "force-new-cluster",
        "unsafe-no-fsync",
        "max-snapshots",
        "enable-v2",
        "v2-deprecation",
        "proxy",
        "discovery-fallback",
        "experimental-initial-corrupt-check",
        "experimental-compact-hash-check-enabled",
        "experimental-watch-progress-notify-interval",
        "experimental-enable-lease-checkpoint",
        "experimental-enable-lease-checkpoint-persist",
        "experimental-enable-v2v3",
        "experimental-stop-grpc-service-on-defrag",
        "experimental-txn-mode-write-with-shared-buffer",
        "experimental-memory-mlock",
        "experimental-max-learners",
        "experimental-snapshot-catchup-entries",
        "experimental-warning-unary-request-duration",
        "experimental-compaction-sleep-interval",
        "experimental-downgrade-check-time",
        "experimental-bootstrap-defrag-threshold-megabytes",
        "experimental-backend-bbolt-freelist-type",
        "experimental-peer-skip-client-san-verification",
        "experimental-corrupt-check-time",
        "experimental-compact-hash-check-time",
        "experimental-compaction-batch-limit",
        "experimental-warning-apply-duration",
        "experimental-distributed-tracing-address",
        "experimental-enable-distributed-tracing",
        "config-file",
        "version",
    ];
    for name in inventory {
        assert!(
            table::lookup(name).is_some(),
            "--{name} is not in the flag table"
        );
    }
}

// ------------------------------------------------------------------ every flag

#[test]
fn every_flag_is_accepted_at_its_default_without_warning() {
    for f in FLAGS {
        if f.name == "version" {
            continue;
        }
        let arg = match f.kind {
            Kind::Ignored => format!("--{}", f.name),
            _ => format!("--{}={}", f.name, f.default),
        };
        let args = [
            "--advertise-client-urls=http://localhost:2379",
            arg.as_str(),
        ];
        let r = run_env(&args, &[]).unwrap_or_else(|e| panic!("{arg} failed: {e}"));
        assert!(
            !has_warning(&r, &not_active(f.name)),
            "{arg} warned although it is etcd's default"
        );
    }
}

/// A valid non-default value for `f` (used to exercise dispositions).
fn sample(f: &FlagSpec) -> String {
    let special = match f.name {
        "auto-compaction-retention" => Some("1h"),
        "auto-compaction-mode" => Some("revision"),
        "tls-min-version" | "tls-max-version" => Some("TLS1.3"),
        "metrics" => Some("extensive"),
        "backend-bbolt-freelist-type" | "experimental-backend-bbolt-freelist-type" => Some("other"),
        "log-rotation-config-json" => Some("{}"),
        "auth-token" => Some("jwt,pub-key=app.rsa.pub,priv-key=app.rsa,sign-method=RS256"),
        "feature-gates" => Some("InitialCorruptCheck=true"),
        _ => None,
    };
    if let Some(s) = special {
        return s.to_string();
    }
    match f.kind {
        Kind::Bool => (!values::parse_bool(f.default).unwrap()).to_string(),
        Kind::Uint | Kind::Uint32 | Kind::Int => {
            let d: i64 = f.default.parse().unwrap();
            if d >= u32::MAX as i64 {
                "1".into()
            } else {
                (d + 1).to_string()
            }
        }
        Kind::Duration => "7s".into(),
        Kind::Str => "x".into(),
        Kind::Choice(valids) => valids
            .iter()
            .find(|v| **v != f.default)
            .unwrap()
            .to_string(),
        Kind::Urls => "http://127.0.0.1:4001".into(),
        Kind::Strings | Kind::UniqueStrings => "a,b".into(),
        Kind::FeatureGates | Kind::Ignored => unreachable!("handled above / skipped"),
    }
}

#[test]
fn harmless_flags_warn_and_rejected_flags_fail() {
    let mut harmless = 0;
    let mut rejected = 0;
    for f in FLAGS {
        let value = match f.disposition {
            Disposition::Harmless | Disposition::Reject(_) => sample(f),
            _ => continue,
        };
        let arg = format!("--{}={value}", f.name);
        let mut args = vec![arg.as_str()];
        if f.name == "experimental-enable-lease-checkpoint-persist" {
            args.push("--experimental-enable-lease-checkpoint");
        }
        match f.disposition {
            Disposition::Harmless => {
                harmless += 1;
                let r = run_env(&args, &[]).unwrap_or_else(|e| panic!("{arg} failed: {e}"));
                if f.kind == Kind::FeatureGates {
                    assert!(has_warning(
                        &r,
                        "feature gate InitialCorruptCheck=true is accepted but not active yet in Ballast"
                    ));
                    continue;
                }
                let notice = r
                    .notices
                    .iter()
                    .find(|n| n.msg == not_active(f.name))
                    .unwrap_or_else(|| panic!("{arg} did not warn: {:?}", r.notices));
                assert_eq!(notice.level, NoticeLevel::Warn);
                assert_eq!(notice.flag.as_deref(), Some(f.name));
                let shown = if f.name.contains("password") {
                    "<redacted>"
                } else {
                    value.as_str()
                };
                assert_eq!(notice.value.as_deref(), Some(shown));
                assert_eq!(notice.source.as_deref(), Some("command line"));
            }
            Disposition::Reject(why) => {
                rejected += 1;
                let msg = invalid(&args);
                let want = format!("flag --{} is not supported yet by Ballast: {why}", f.name);
                assert!(
                    msg.contains(&want),
                    "{arg}: {msg:?} does not contain {want:?}"
                );
            }
            _ => unreachable!(),
        }
    }
    assert!(harmless > 80, "{harmless} harmless flags");
    assert!(rejected > 25, "{rejected} rejected flags");
}

#[test]
fn rejections_name_their_source() {
    let msg = invalid(&["--force-new-cluster"]);
    assert_eq!(
        msg,
        "flag --force-new-cluster is not supported yet by Ballast: forcing a new one-member cluster from existing data is not implemented (set to \"true\" on the command line)"
    );
    let msg = match fail_env(&[], &[("ETCD_CLIENT_CERT_AUTH", "true")]) {
        ConfigError::Invalid(m) => m,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        msg,
        "flag --client-cert-auth is not supported yet by Ballast: TLS is not supported yet (set to \"true\" by environment variable ETCD_CLIENT_CERT_AUTH)"
    );
    // Several problems are reported together.
    let msg = invalid(&["--unsafe-no-fsync", "--enable-v2"]);
    assert!(
        msg.contains("--unsafe-no-fsync") && msg.contains("--enable-v2"),
        "{msg}"
    );
    // Setting a rejected flag to its default is fine.
    run(&[
        "--client-cert-auth=false",
        "--auth-token=simple",
        "--proxy=off",
        "--cert-file=",
    ]);
}

#[test]
fn legacy_ignored_flags_warn_like_etcd() {
    let r = run(&["-peer-heartbeat-interval", "--config=etcd.conf"]);
    assert!(has_warning(
        &r,
        "flag \"-peer-heartbeat-interval\" is no longer supported - ignoring."
    ));
    assert!(has_warning(
        &r,
        "flag \"-config\" is no longer supported - ignoring."
    ));
}

#[test]
fn deprecated_experimental_flags_point_to_their_replacement() {
    let r = run(&[
        "--experimental-watch-progress-notify-interval=5s",
        "--experimental-initial-corrupt-check=true",
    ]);
    assert!(has_warning(
        &r,
        "--experimental-watch-progress-notify-interval is deprecated in etcd v3.6 and removed in v3.7; use --watch-progress-notify-interval instead"
    ));
    assert!(has_warning(
        &r,
        "--experimental-initial-corrupt-check is deprecated in etcd v3.6 and removed in v3.7; use --feature-gates=InitialCorruptCheck=true instead"
    ));
    // The old spelling of an implemented flag still takes effect.
    assert!(!has_warning(
        &r,
        &not_active("experimental-watch-progress-notify-interval")
    ));
    assert_eq!(
        r.server.watch_progress_notify_interval,
        std::time::Duration::from_secs(5)
    );
    assert!(has_warning(
        &r,
        &not_active("experimental-initial-corrupt-check")
    ));
}

// ------------------------------------------------------------------ Go flag syntax

#[test]
fn go_flag_forms() {
    for args in [
        &["-name", "a"][..],
        &["-name=a"],
        &["--name", "a"],
        &["--name=a"],
    ] {
        assert_eq!(run(args).server.name, "a", "{args:?}");
    }
    // Booleans.
    assert!(has_warning(
        &run(&["--enable-pprof"]),
        &not_active("enable-pprof")
    ));
    assert!(has_warning(
        &run(&["-enable-pprof=true"]),
        &not_active("enable-pprof")
    ));
    assert!(has_warning(
        &run(&["--enable-pprof=1"]),
        &not_active("enable-pprof")
    ));
    assert!(!has_warning(
        &run(&["-enable-pprof=false"]),
        &not_active("enable-pprof")
    ));
    // `--flag false` leaves a stray argument, as in Go (etcd: "'false' is not a valid flag").
    assert_eq!(
        invalid(&["--enable-pprof", "false"]),
        "\"false\" is not a valid flag"
    );
    assert_eq!(
        usage(&["--enable-v2=maybe"]),
        "invalid boolean value \"maybe\" for -enable-v2: parse error"
    );
    // The last occurrence wins; a value may start with a dash.
    assert_eq!(run(&["--name=a", "-name", "b"]).server.name, "b");
    assert_eq!(run(&["--name", "--data-dir"]).server.name, "--data-dir");
    // Values may contain '='.
    assert_eq!(
        run(&["--initial-cluster-token=a=b"])
            .server
            .initial_cluster_token,
        "a=b"
    );
    assert_eq!(usage(&["--name"]), "flag needs an argument: -name");
    assert_eq!(usage(&["---name=a"]), "bad flag syntax: ---name=a");
    assert_eq!(usage(&["-=a"]), "bad flag syntax: -=a");
    // "--" ends the flags; anything after it is a stray argument.
    run(&["--name=a", "--"]);
    assert_eq!(
        invalid(&["--", "--name=a"]),
        "\"--name=a\" is not a valid flag"
    );
    assert_eq!(invalid(&["stray"]), "\"stray\" is not a valid flag");
    assert_eq!(invalid(&["-"]), "\"-\" is not a valid flag");
}

#[test]
fn unknown_flags_are_named_like_go_does() {
    for args in [
        &["--foo"][..],
        &["-foo"],
        &["--foo=1"],
        &["--foo", "x"],
        &["--name=a", "-foo"],
    ] {
        let e = fail(args);
        assert_eq!(
            e,
            ConfigError::Usage("flag provided but not defined: -foo".into())
        );
        assert_eq!(e.exit_code(), 2);
    }
}

#[test]
fn help_and_version() {
    for args in [
        &["-h"][..],
        &["--help"],
        &["-help"],
        &["--help=1"],
        &["--name", "x", "-h", "--bogus"],
    ] {
        assert!(
            matches!(parse(&strings(args), &[]), Ok(Command::Help)),
            "{args:?}"
        );
    }
    assert!(parse(&strings(&["--bogus", "-h"]), &[]).is_err());
    let help = help_text();
    for f in FLAGS {
        assert!(
            help.contains(&format!("  --{} ", f.name))
                || help.contains(&format!("  --{}\n", f.name)),
            "--{} missing from help",
            f.name
        );
    }
    assert!(help.contains("--force-new-cluster 'false' [not supported yet]"));
    assert!(help.contains("--max-wals 5 [accepted, not active yet]"));

    match parse(&strings(&["--version"]), &[]).unwrap() {
        Command::Version {
            emulated_etcd_version,
        } => assert_eq!(emulated_etcd_version, "3.6.0"),
        other => panic!("{other:?}"),
    }
    match parse(
        &strings(&["-version", "--emulated-etcd-version=3.5.17"]),
        &[],
    )
    .unwrap()
    {
        Command::Version {
            emulated_etcd_version,
        } => assert_eq!(emulated_etcd_version, "3.5.17"),
        other => panic!("{other:?}"),
    }
    let text = version_text("3.6.0");
    assert!(
        text.starts_with(&format!(
            "ballast Version: {}\netcd API Version: 3.6.0\n",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    // --version=false does not print the version.
    run(&["--version=false"]);
}

// ------------------------------------------------------------------ values

#[test]
fn bad_values_have_clear_errors() {
    assert_eq!(
        usage(&["--snapshot-count", "abc"]),
        "invalid value \"abc\" for flag -snapshot-count: parse error (want an unsigned integer)"
    );
    assert_eq!(
        usage(&["--snapshot-count=-5"]),
        "invalid value \"-5\" for flag -snapshot-count: parse error (want an unsigned integer)"
    );
    assert_eq!(
        usage(&["--initial-cluster-state=foo"]),
        "invalid value \"foo\" for flag -initial-cluster-state: invalid value (valid values: \"new\", \"existing\")"
    );
    assert!(usage(&["--grpc-keepalive-timeout=soon"])
        .starts_with("invalid value \"soon\" for flag -grpc-keepalive-timeout: parse error"));
    assert_eq!(
        usage(&["--listen-peer-urls=localhost:2380"]),
        "invalid value \"localhost:2380\" for flag -listen-peer-urls: URL scheme must be http, https, unix, or unixs: localhost:2380"
    );
    assert_eq!(
        invalid(&["--heartbeat-interval=300"]),
        "--election-timeout[1000ms] should be at least as 5 times as --heartbeat-interval[300ms]"
    );
    assert_eq!(
        invalid(&["--heartbeat-interval=0"]),
        "--heartbeat-interval must be >0 (set to 0ms)"
    );
    assert_eq!(
        invalid(&["--election-timeout=0"]),
        "--election-timeout must be >0 (set to 0ms)"
    );
    assert_eq!(
        invalid(&["--election-timeout=60000"]),
        "--election-timeout[60000ms] is too long, and should be set less than 50000ms"
    );
    assert_eq!(
        invalid(&["--log-level=verbose"]),
        "unrecognized level: \"verbose\""
    );
    assert_eq!(
        invalid(&["--logger=capnslog"]),
        "--logger=capnslog is removed in v3.5"
    );
    assert_eq!(
        invalid(&["--logger=glog"]),
        "unknown logger option \"glog\""
    );
    assert_eq!(
        invalid(&["--log-outputs=default,stdout"]),
        "multi logoutput for \"default\" is not supported yet"
    );
    assert_eq!(
        invalid(&["--auto-compaction-mode=hourly"]),
        "unknown auto-compaction-mode \"hourly\""
    );
    assert_eq!(
        invalid(&["--auto-compaction-retention=abc"]),
        "error parsing CompactionRetention: time: invalid duration \"abc\""
    );
    assert_eq!(
        invalid(&["--compact-hash-check-time=0s"]),
        "--compact-hash-check-time must be >0 (set to 0s)"
    );
    assert!(invalid(&["--bcrypt-cost=3"]).contains("must be between 4 and 31"));
    assert!(invalid(&["--tls-min-version=TLS1.0"]).starts_with("unexpected TLS version"));
    assert!(invalid(&["--quota-backend-bytes=-1"]).contains("negative value"));
    for bad in [
        "3.6", "3.6.0.1", "4.0.0", "v3.6.0", "3.06.0", "3.6.0-", "3.6.x",
    ] {
        let arg = format!("--emulated-etcd-version={bad}");
        assert!(
            invalid(&[&arg]).starts_with("invalid --emulated-etcd-version"),
            "{bad} accepted"
        );
    }
    for good in ["3.4.23", "3.5.0", "3.6.0-rc.1", "3.10.100"] {
        let arg = format!("--emulated-etcd-version={good}");
        assert_eq!(run(&[&arg]).server.emulated_etcd_version, good);
    }
}

#[test]
fn numbers_and_durations_land_in_server_config() {
    let r = run(&[
        "--snapshot-count=0x10",
        "--quota-backend-bytes=4294967296",
        "--max-request-bytes=10485760",
        "--max-txn-ops=1024",
        "--heartbeat-interval=250",
        "--election-timeout=2500",
        "--initial-cluster-state=new",
        "--initial-cluster-token=tkn",
    ]);
    let c = &r.server;
    assert_eq!(c.snapshot_count, 16);
    assert_eq!(c.quota_backend_bytes, 4 * 1024 * 1024 * 1024);
    assert_eq!(c.max_request_bytes, 10 * 1024 * 1024);
    assert_eq!(c.max_txn_ops, 1024);
    assert_eq!(c.heartbeat_interval, Duration::from_millis(250));
    assert_eq!(c.election_timeout, Duration::from_millis(2500));
    assert_eq!(c.initial_cluster_state, ClusterState::New);
    assert_eq!(c.initial_cluster_token, "tkn");
    // Joining an existing cluster.
    let r = run(&["--initial-cluster-state=existing"]);
    assert_eq!(r.server.initial_cluster_state, ClusterState::Existing);

    // 0 means the default, as in etcd.
    let r = run(&["--snapshot-count=0", "--quota-backend-bytes=0"]);
    assert_eq!(r.server.snapshot_count, 10_000);
    assert_eq!(r.server.quota_backend_bytes, 2 * 1024 * 1024 * 1024);
    // The client ping min time: 5 s by default; at 0 etcd sets no policy and grpc-go's own
    // default, 5 min, applies.
    assert_eq!(
        run(&[]).server.grpc_keepalive_min_time,
        Duration::from_secs(5)
    );
    let r = run(&["--grpc-keepalive-min-time=200ms"]);
    assert_eq!(r.server.grpc_keepalive_min_time, Duration::from_millis(200));
    let r = run(&["--grpc-keepalive-min-time=0"]);
    assert_eq!(r.server.grpc_keepalive_min_time, Duration::from_secs(300));
    // etcd warns above its suggested 8 GiB maximum.
    let r = run(&["--quota-backend-bytes=17179869184"]);
    assert!(has_warning(
        &r,
        "quota exceeds the maximum value; the suggested maximum is 8 GiB"
    ));
}

#[test]
fn logging_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("etcd.log");
    let outputs = format!("--log-outputs=stdout,{}", file.display());
    let r = run(&["--log-level=debug", "--log-format=console", &outputs]);
    assert_eq!(r.logging.level, Level::DEBUG);
    assert_eq!(r.logging.format, LogFormat::Console);
    assert_eq!(
        r.logging.outputs,
        [LogOutput::File(file.clone()), LogOutput::Stdout]
    );
    let r = run(&["--log-outputs=systemd/journal"]);
    assert_eq!(r.logging.outputs, [LogOutput::Stderr]);
    assert!(has_warning(
        &r,
        "log output systemd/journal is not supported yet; logging to stderr"
    ));
}

// ------------------------------------------------------------------ data dir, URLs, cluster

#[test]
fn data_dir_defaults_to_name() {
    assert_eq!(
        run(&["--name=infra1"]).server.data_dir,
        PathBuf::from("infra1.etcd")
    );
    assert_eq!(
        run(&["--name=infra1", "--data-dir=/var/lib/etcd"])
            .server
            .data_dir,
        PathBuf::from("/var/lib/etcd")
    );
    assert_eq!(
        run(&["--data-dir="]).server.data_dir,
        PathBuf::from("default.etcd")
    );
    let r = run(&["--name=infra1", "--data-dir=/d"]);
    assert!(warnings(&r).is_empty(), "{:?}", warnings(&r));
}

#[test]
fn listen_and_advertise_urls() {
    let r = run(&[
        "--listen-client-urls=http://0.0.0.0:2379,http://127.0.0.1:2379,http://0.0.0.0:2379",
        "--advertise-client-urls=http://10.0.0.1:2379",
        "--listen-peer-urls=http://[::]:2380",
        "--initial-advertise-peer-urls=http://node1.example.com:2380",
    ]);
    let c = &r.server;
    assert_eq!(
        c.listen_client_urls,
        ["http://0.0.0.0:2379", "http://127.0.0.1:2379"]
    );
    assert_eq!(c.advertise_client_urls, ["http://10.0.0.1:2379"]);
    assert_eq!(c.listen_peer_urls, ["http://[::]:2380"]);
    assert_eq!(
        c.initial_advertise_peer_urls,
        ["http://node1.example.com:2380"]
    );

    assert_eq!(
        invalid(&["--listen-client-urls=http://0.0.0.0:2379"]),
        "--advertise-client-urls is required when --listen-client-urls is set explicitly"
    );
    // Env vars count as set, as in etcd.
    let e = fail_env(&[], &[("ETCD_LISTEN_CLIENT_URLS", "http://0.0.0.0:2379")]);
    assert!(e
        .to_string()
        .contains("--advertise-client-urls is required"));

    assert_eq!(
        invalid(&["--listen-peer-urls=http://example.com:2380"]),
        "expected IP in URL for binding (http://example.com:2380)"
    );
    assert_eq!(
        invalid(&[
            "--listen-client-urls=https://127.0.0.1:2379",
            "--advertise-client-urls=https://127.0.0.1:2379"
        ]),
        "--listen-client-urls https://127.0.0.1:2379: TLS is not supported yet by Ballast; use an http:// URL; --advertise-client-urls https://127.0.0.1:2379: TLS is not supported yet by Ballast; use an http:// URL"
    );
    assert!(
        invalid(&["--initial-advertise-peer-urls=unix://localhost:1"])
            .contains("unix socket URLs are not supported yet by Ballast")
    );
    assert_eq!(
        invalid(&["--advertise-client-urls=http://:2379"]),
        "--advertise-client-urls \"http://:2379\" must be \"host:port\" (unexpected empty host (http://:2379))"
    );
    assert_eq!(
        usage(&["--advertise-client-urls=http://a:1/v3"]),
        "invalid value \"http://a:1/v3\" for flag -advertise-client-urls: URL must not contain a path: http://a:1/v3"
    );
}

#[test]
fn initial_cluster_parsing() {
    assert_eq!(
        parse_initial_cluster(
            "b=http://10.0.0.2:2380,a=http://10.0.0.3:2380,,a=http://10.0.0.1:2380"
        )
        .unwrap(),
        members(&[
            ("b", &["http://10.0.0.2:2380"]),
            ("a", &["http://10.0.0.1:2380", "http://10.0.0.3:2380"]),
        ])
    );
    assert_eq!(parse_initial_cluster("").unwrap(), vec![]);
    assert_eq!(
        parse_initial_cluster("a").unwrap_err(),
        "URL scheme must be http, https, unix, or unixs: "
    );

    let r = run(&[
        "--name=infra2",
        "--initial-advertise-peer-urls=http://10.0.0.2:2380",
        "--initial-cluster=infra1=http://10.0.0.1:2380,infra2=http://10.0.0.2:2380,infra3=http://10.0.0.3:2380",
    ]);
    assert_eq!(
        r.server.initial_cluster,
        members(&[
            ("infra1", &["http://10.0.0.1:2380"]),
            ("infra2", &["http://10.0.0.2:2380"]),
            ("infra3", &["http://10.0.0.3:2380"]),
        ])
    );

    assert_eq!(
        invalid(&["--initial-cluster=a=https://10.0.0.1:2380"]),
        "--initial-cluster https://10.0.0.1:2380: TLS is not supported yet by Ballast; use an http:// URL"
    );
    assert_eq!(
        invalid(&["--initial-cluster=a=http://10.0.0.1:2380/x"]),
        "--initial-cluster \"a=http://10.0.0.1:2380/x\": URL must not contain a path: http://10.0.0.1:2380/x"
    );
}

/// etcd rewrites the default `--initial-cluster` as `${name}=${initial-advertise-peer-urls}`
/// when the name is not "default" (`UpdateDefaultClusterFromName`).
#[test]
fn initial_cluster_default_follows_name() {
    assert_eq!(
        run(&["--name=infra1"]).server.initial_cluster,
        members(&[("infra1", &["http://localhost:2380"])])
    );
    assert_eq!(
        run(&[
            "--name=infra1",
            "--initial-advertise-peer-urls=http://10.0.0.1:2381,http://10.0.0.1:2380"
        ])
        .server
        .initial_cluster,
        members(&[("infra1", &["http://10.0.0.1:2380", "http://10.0.0.1:2381"])])
    );
    // Spelling out etcd's default string counts as the default (etcd compares strings).
    assert_eq!(
        run(&[
            "--name=infra1",
            "--initial-cluster=default=http://localhost:2380"
        ])
        .server
        .initial_cluster,
        members(&[("infra1", &["http://localhost:2380"])])
    );
    // With the default name nothing is rewritten (etcd then fails its bootstrap check).
    assert_eq!(
        run(&["--initial-advertise-peer-urls=http://10.0.0.1:2380"])
            .server
            .initial_cluster,
        members(&[("default", &["http://localhost:2380"])])
    );
}

// ------------------------------------------------------------------ env

#[test]
fn env_vars_mirror_flags() {
    let r = run_env(
        &["--name=flag"],
        &[
            ("ETCD_SNAPSHOT_COUNT", "5000"),
            ("ETCD_INITIAL_CLUSTER_STATE", "new"),
            ("ETCD_ENABLE_PPROF", "true"),
            ("ETCDCTL_API", "3"),
            ("PATH", "/bin"),
        ],
    )
    .unwrap();
    assert_eq!(r.server.name, "flag");
    assert_eq!(r.server.snapshot_count, 5000);
    assert_eq!(r.server.initial_cluster_state, ClusterState::New);
    let used: Vec<_> = r
        .notices
        .iter()
        .filter(|n| n.msg == "recognized and used environment variable")
        .map(|n| (n.key.clone().unwrap(), n.value.clone().unwrap()))
        .collect();
    assert_eq!(used.len(), 3, "{used:?}");
    let pprof = r
        .notices
        .iter()
        .find(|n| n.msg == not_active("enable-pprof"))
        .unwrap();
    assert_eq!(pprof.source.as_deref(), Some("env ETCD_ENABLE_PPROF"));
    assert!(!warnings(&r).iter().any(|w| w.contains("unrecognized")));
}

#[test]
fn flags_and_env_for_the_same_flag_conflict() {
    let e = fail_env(&["--name=a"], &[("ETCD_NAME", "b")]);
    assert_eq!(
        e,
        ConfigError::Invalid(
            "conflicting environment variable \"ETCD_NAME\" is shadowed by corresponding command-line flag (either unset environment variable or disable flag)".into()
        )
    );
    assert_eq!(e.exit_code(), 1);
}

#[test]
fn env_var_errors_and_warnings() {
    assert_eq!(
        fail_env(&[], &[("ETCD_SNAPSHOT_COUNT", "abc")]),
        ConfigError::Invalid(
            "invalid value \"abc\" for ETCD_SNAPSHOT_COUNT: parse error (want an unsigned integer)"
                .into()
        )
    );
    let r = run_env(
        &[],
        &[
            ("ETCD_FOO", "1"),
            ("ETCD_NAME", ""),
            ("ETCD_VERSION", "true"),
            ("ETCD_DISCOVERY_PASSWORD", ""),
        ],
    )
    .unwrap();
    let unrecognized: Vec<_> = r
        .notices
        .iter()
        .filter(|n| n.msg == "unrecognized environment variable")
        .map(|n| n.key.clone().unwrap())
        .collect();
    // An empty value is not used, so etcd reports it as unrecognized too.
    assert_eq!(
        unrecognized,
        ["ETCD_FOO", "ETCD_NAME", "ETCD_DISCOVERY_PASSWORD"]
    );
    assert!(has_warning(&r, "cannot set special environment variable"));
    assert_eq!(r.server.name, "default");
    // Passwords are not echoed.
    let r = run_env(&[], &[("ETCD_DISCOVERY_PASSWORD", "s3cret")]).unwrap();
    assert!(has_warning(&r, &not_active("discovery-password")));
    assert!(r
        .notices
        .iter()
        .all(|n| n.value.as_deref() != Some("s3cret")));
}

// ------------------------------------------------------------------ config file

const SAMPLE_YAML: &str = r#"
# etcd.conf.yml.sample style
name: 'infra1'
data-dir: /var/lib/etcd
snapshot-count: 5000
heartbeat-interval: 200
election-timeout: 2000
quota-backend-bytes: 4294967296
max-request-bytes: 2097152
max-txn-ops: 256
listen-peer-urls: http://10.0.0.1:2380
listen-client-urls: http://10.0.0.1:2379,http://127.0.0.1:2379
initial-advertise-peer-urls: http://10.0.0.1:2380
advertise-client-urls: http://10.0.0.1:2379
initial-cluster: infra1=http://10.0.0.1:2380,infra2=http://10.0.0.2:2380
initial-cluster-token: 'etcd-cluster-1'
initial-cluster-state: 'new'
discovery:
discovery-fallback: 'proxy'
enable-v2: false
enable-pprof: true
strict-reconfig-check: on
grpc-keepalive-min-time: 10000000000
log-level: debug
logger: zap
log-outputs: [stdout]
emulated-etcd-version: 3.5.9
client-transport-security:
  cert-file:
  key-file:
  client-cert-auth: false
  trusted-ca-file:
  auto-tls: false
peer-transport-security:
  cert-file:
  client-cert-auth: false
unknown-key: 1
cert-file: /etc/x.crt
"#;

#[test]
fn config_file_is_read_with_etcd_keys() {
    let r = run_yaml(SAMPLE_YAML).unwrap();
    let c = &r.server;
    assert_eq!(c.name, "infra1");
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/etcd"));
    assert_eq!(c.snapshot_count, 5000);
    assert_eq!(c.heartbeat_interval, Duration::from_millis(200));
    assert_eq!(c.election_timeout, Duration::from_millis(2000));
    assert_eq!(c.quota_backend_bytes, 4 * 1024 * 1024 * 1024);
    assert_eq!(c.max_request_bytes, 2 * 1024 * 1024);
    assert_eq!(c.max_txn_ops, 256);
    assert_eq!(c.listen_peer_urls, ["http://10.0.0.1:2380"]);
    assert_eq!(
        c.listen_client_urls,
        ["http://10.0.0.1:2379", "http://127.0.0.1:2379"]
    );
    assert_eq!(c.advertise_client_urls, ["http://10.0.0.1:2379"]);
    assert_eq!(
        c.initial_cluster,
        members(&[
            ("infra1", &["http://10.0.0.1:2380"]),
            ("infra2", &["http://10.0.0.2:2380"]),
        ])
    );
    assert_eq!(c.initial_cluster_token, "etcd-cluster-1");
    assert_eq!(c.initial_cluster_state, ClusterState::New);
    assert_eq!(c.emulated_etcd_version, "3.5.9");
    assert_eq!(r.logging.level, Level::DEBUG);
    assert_eq!(r.logging.outputs, [LogOutput::Stdout]);
    assert!(r.config_file.is_some());

    let w = warnings(&r);
    assert!(has_warning(&r, &not_active("enable-pprof")), "{w:?}");
    assert_eq!(c.grpc_keepalive_min_time, Duration::from_secs(10));
    assert!(
        !has_warning(&r, &not_active("grpc-keepalive-min-time")),
        "{w:?}"
    );
    assert!(has_warning(&r, &not_active("discovery-fallback")), "{w:?}");
    assert!(
        !has_warning(&r, &not_active("strict-reconfig-check")),
        "{w:?}"
    );
    let pprof = r
        .notices
        .iter()
        .find(|n| n.msg == not_active("enable-pprof"))
        .unwrap();
    assert!(pprof.source.as_deref().unwrap().ends_with("(enable-pprof)"));
    let unknown: Vec<_> = r
        .notices
        .iter()
        .filter(|n| n.level == NoticeLevel::Warn && n.msg.contains("key"))
        .map(|n| (n.key.clone().unwrap(), n.msg.clone()))
        .collect();
    assert_eq!(
        unknown,
        [
            (
                "unknown-key".to_string(),
                "unrecognized configuration key in config file; ignored".to_string()
            ),
            (
                "cert-file".to_string(),
                "configuration key is ignored: etcd reads it as client-transport-security.cert-file in a config file".to_string()
            ),
        ]
    );
    assert!(r
        .notices
        .iter()
        .any(|n| n.msg.starts_with("loaded server configuration")));
}

#[test]
fn config_file_overrides_flags_and_env() {
    let (_dir, path) = config_file("name: from-file\n");
    let r = run_env(
        &[
            "--config-file",
            &path,
            "--name=from-flag",
            "--snapshot-count=1",
        ],
        &[
            ("ETCD_NAME", "from-env"),
            ("ETCD_MAX_WALS", "3"),
            ("ETCD_CONFIG_FILE", "/nope"),
        ],
    )
    .unwrap();
    assert_eq!(r.server.name, "from-file");
    assert_eq!(r.server.snapshot_count, 10_000);
    assert!(!has_warning(&r, &not_active("max-wals")));
    let ignored_flags = r
        .notices
        .iter()
        .find(|n| n.msg == "command-line flags are ignored because a config file is given")
        .unwrap();
    assert_eq!(
        ignored_flags.value.as_deref(),
        Some("--name,--snapshot-count")
    );
    let ignored_env = r
        .notices
        .iter()
        .find(|n| n.msg == "environment variables are ignored because a config file is given")
        .unwrap();
    assert_eq!(
        ignored_env.value.as_deref(),
        Some("ETCD_NAME,ETCD_MAX_WALS")
    );

    // ETCD_CONFIG_FILE works when --config-file is not given.
    let r = run_env(&[], &[("ETCD_CONFIG_FILE", path.as_str())]).unwrap();
    assert_eq!(r.server.name, "from-file");
    // Flag syntax is still checked.
    assert!(fail_env(&["--config-file", &path, "--bogus"], &[]).is_usage());

    let e = fail(&["--config-file=/no/such/file.yml"]);
    assert!(
        e.to_string()
            .starts_with("cannot read config file /no/such/file.yml: "),
        "{e}"
    );
}

#[test]
fn config_file_values_and_errors() {
    // The "listen without advertise" rule only applies to flags, as in etcd.
    let r = run_yaml("listen-client-urls: http://0.0.0.0:2379\n").unwrap();
    assert_eq!(r.server.advertise_client_urls, ["http://localhost:2379"]);
    // Empty file, nulls and empty state keep etcd's defaults.
    let r = run_yaml("").unwrap();
    assert_eq!(
        format!("{:?}", r.server),
        format!("{:?}", ServerConfig::default())
    );
    let r = run_yaml("name:\ninitial-cluster-state: ''\n").unwrap();
    assert_eq!(r.server.name, "default");
    assert_eq!(r.server.initial_cluster_state, ClusterState::New);
    // Scalars become strings for string keys; keys match case-insensitively (Go's json).
    assert_eq!(run_yaml("Name: 123\n").unwrap().server.name, "123");
    // The derived initial cluster and data dir apply to files too.
    let r = run_yaml("name: n1\ninitial-advertise-peer-urls: http://10.0.0.1:2380\n").unwrap();
    assert_eq!(
        r.server.initial_cluster,
        members(&[("n1", &["http://10.0.0.1:2380"])])
    );
    assert_eq!(r.server.data_dir, PathBuf::from("n1.etcd"));
    // Durations: integer nanoseconds like etcd, or Go duration strings.
    for text in [
        "watch-progress-notify-interval: 5000000000\n",
        "watch-progress-notify-interval: 5s\n",
    ] {
        let r = run_yaml(text).unwrap();
        assert_eq!(
            r.server.watch_progress_notify_interval,
            std::time::Duration::from_secs(5)
        );
    }
    // Lists as sequences or comma-separated strings.
    assert_eq!(
        run_yaml("listen-peer-urls: [http://10.0.0.1:2380, http://10.0.0.1:2381]\n")
            .unwrap()
            .server
            .listen_peer_urls,
        ["http://10.0.0.1:2380", "http://10.0.0.1:2381"]
    );
    assert_eq!(
        run_yaml("log-outputs: stdout,stderr\n")
            .unwrap()
            .logging
            .outputs,
        [LogOutput::Stderr, LogOutput::Stdout]
    );
    // Feature gates, as a string or a mapping.
    for text in [
        "feature-gates: InitialCorruptCheck=true\n",
        "feature-gates: {InitialCorruptCheck: true}\n",
    ] {
        let r = run_yaml(text).unwrap();
        assert!(has_warning(
            &r,
            "feature gate InitialCorruptCheck=true is accepted but not active yet in Ballast"
        ));
    }

    let err = |text: &str| match run_yaml(text) {
        Err(ConfigError::Invalid(m)) => m,
        other => panic!("{text:?}: {other:?}"),
    };
    let m = err("snapshot-count: abc\n");
    assert!(
        m.ends_with(
            "invalid value \"abc\" for snapshot-count: parse error (want an unsigned integer)"
        ),
        "{m}"
    );
    let m = err("heartbeat-interval: -1\n");
    assert!(
        m.ends_with("invalid value \"-1\" for heartbeat-interval: want an unsigned integer"),
        "{m}"
    );
    let m = err("initial-cluster-state: foo\n");
    assert!(
        m.contains("for initial-cluster-state: invalid value"),
        "{m}"
    );
    let m = err("enable-v2: perhaps\n");
    assert!(m.ends_with("for enable-v2: want true or false"), "{m}");
    let m = err("listen-client-urls: localhost:2379\n");
    assert!(
        m.ends_with("URL scheme must be http, https, unix, or unixs: localhost:2379"),
        "{m}"
    );
    let m = err("- name\n");
    assert!(m.contains("expected a mapping"), "{m}");
    let m = err("name: [\n");
    assert!(m.starts_with("cannot parse config file"), "{m}");
    let m = err("client-transport-security:\n  cert-file: /etc/etcd/server.crt\n");
    assert!(
        m.starts_with("flag --cert-file is not supported yet by Ballast: TLS is not supported yet (set to \"/etc/etcd/server.crt\" in config file ")
            && m.ends_with(" as client-transport-security.cert-file)"),
        "{m}"
    );
    let m = err("discovery-config:\n  discovery-endpoints: [http://10.0.0.9:2379]\n");
    assert!(
        m.starts_with("config key discovery-config is not supported yet by Ballast"),
        "{m}"
    );
    let m = err("force-new-cluster: true\n");
    assert!(
        m.starts_with("flag --force-new-cluster is not supported yet by Ballast"),
        "{m}"
    );
    let m = err("heartbeat-interval: 500\n");
    assert_eq!(
        m,
        "--election-timeout[1000ms] should be at least as 5 times as --heartbeat-interval[500ms]"
    );
}

// ------------------------------------------------------------------ feature gates

#[test]
fn feature_gates_follow_etcd_rules() {
    let r = run(&["--feature-gates=InitialCorruptCheck=true,TxnModeWriteWithSharedBuffer=true"]);
    assert!(has_warning(
        &r,
        "feature gate InitialCorruptCheck=true is accepted but not active yet in Ballast"
    ));
    // At its default a gate is silent.
    assert!(!warnings(&r)
        .iter()
        .any(|w| w.contains("TxnModeWriteWithSharedBuffer")));
    assert_eq!(
        usage(&["--feature-gates=Bogus=true"]),
        "invalid value \"Bogus=true\" for flag -feature-gates: unrecognized feature gate: Bogus"
    );
    assert!(invalid(&[
        "--experimental-initial-corrupt-check=true",
        "--feature-gates=InitialCorruptCheck=true"
    ])
    .starts_with("cannot specify both --experimental-initial-corrupt-check and --feature-gates=InitialCorruptCheck"));
    assert_eq!(
        invalid(&["--experimental-enable-lease-checkpoint-persist"]),
        "setting experimental-enable-lease-checkpoint-persist requires experimental-enable-lease-checkpoint"
    );
    assert_eq!(
        invalid(&["--feature-gates=LeaseCheckpointPersist=true"]),
        "enabling feature gate LeaseCheckpointPersist requires enabling feature gate LeaseCheckpoint"
    );
    run(&["--feature-gates=LeaseCheckpoint=true,LeaseCheckpointPersist=true"]);
    run(&[
        "--experimental-enable-lease-checkpoint",
        "--experimental-enable-lease-checkpoint-persist",
    ]);
}

// ------------------------------------------------------------------ real-world command lines

/// kubeadm's stacked-etcd manifest (etcd-surface.md §3.1), minus TLS, starts with warnings only.
#[test]
fn kubeadm_manifest_without_tls() {
    let r = run(&[
        "etcd",
        "--name=node1",
        "--feature-gates=InitialCorruptCheck=true",
        "--listen-client-urls=http://127.0.0.1:2379,http://10.0.0.1:2379",
        "--advertise-client-urls=http://10.0.0.1:2379",
        "--listen-peer-urls=http://10.0.0.1:2380",
        "--initial-advertise-peer-urls=http://10.0.0.1:2380",
        "--data-dir=/var/lib/etcd",
        "--snapshot-count=10000",
        "--watch-progress-notify-interval=5s",
        "--initial-cluster=node1=http://10.0.0.1:2380",
    ][1..]);
    assert_eq!(r.server.name, "node1");
    assert_eq!(
        r.server.initial_cluster,
        members(&[("node1", &["http://10.0.0.1:2380"])])
    );
    assert_eq!(
        r.server.watch_progress_notify_interval,
        std::time::Duration::from_secs(5)
    );
    // The peer and advertise URLs are acted on; the feature gate is not yet.
    assert_eq!(
        warnings(&r),
        [
            "feature gate InitialCorruptCheck=true is accepted but not active yet in Ballast"
                .to_string(),
        ]
    );
    // The pre-3.6 spelling works too.
    let r = run(&[
        "--experimental-initial-corrupt-check=true",
        "--experimental-watch-progress-notify-interval=5s",
        "--name=node1",
        "--data-dir=/d",
    ]);
    assert!(has_warning(
        &r,
        &not_active("experimental-initial-corrupt-check")
    ));
    assert_eq!(
        r.server.watch_progress_notify_interval,
        std::time::Duration::from_secs(5)
    );
}

/// The same manifest with its TLS and metrics flags fails with clear reasons.
#[test]
fn kubeadm_manifest_with_tls_is_rejected() {
    let msg = invalid(&[
        "--name=node1",
        "--listen-client-urls=https://127.0.0.1:2379",
        "--advertise-client-urls=https://10.0.0.1:2379",
        "--cert-file=/etc/kubernetes/pki/etcd/server.crt",
        "--key-file=/etc/kubernetes/pki/etcd/server.key",
        "--trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt",
        "--client-cert-auth=true",
        "--peer-client-cert-auth=true",
        "--listen-metrics-urls=http://127.0.0.1:2381",
    ]);
    for part in [
        "flag --cert-file is not supported yet by Ballast: TLS is not supported yet",
        "flag --client-cert-auth is not supported yet by Ballast: TLS is not supported yet",
        "flag --peer-client-cert-auth is not supported yet by Ballast",
        "flag --listen-metrics-urls is not supported yet by Ballast",
        "--listen-client-urls https://127.0.0.1:2379: TLS is not supported yet by Ballast",
    ] {
        assert!(msg.contains(part), "{part:?} missing from {msg:?}");
    }
}

#[test]
fn watch_batch_interval_is_10ms_unless_set_and_zero_turns_it_off() {
    use std::time::Duration;
    assert_eq!(
        run(&[]).server.watch_batch_interval,
        Duration::from_millis(10)
    );
    assert_eq!(
        run(&["--watch-batch-interval=25ms"])
            .server
            .watch_batch_interval,
        Duration::from_millis(25)
    );
    assert_eq!(
        run(&["--watch-batch-interval=0"])
            .server
            .watch_batch_interval,
        Duration::ZERO
    );
}
