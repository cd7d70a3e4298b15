//! The `ballast` server: reads etcd-compatible flags, `ETCD_*` environment variables or an
//! etcd `--config-file` ([`flags`]), sets up etcd-shaped JSON logging ([`logging`]), and runs a
//! member with [`ballast_server::run`] until SIGINT or SIGTERM.
//!
//! Exit status, like etcd: 0 after a graceful stop (and for `--help`/`--version`), 2 for a
//! command-line syntax error, 1 for any other configuration error or a server failure,
//! including a fail-stop after a storage or thread fault (`ballast_server::fault`).
//! This file only wires things together; it makes no configuration decisions. It is a library
//! so that other binaries of the workspace (the failpoint build used by the fault tests) run
//! exactly the same server; `src/main.rs` only calls [`main`].

mod flags;
mod logging;

use std::process::ExitCode;

use flags::{Command, Notice, NoticeLevel, Resolved};

/// The whole server program: parses the process's arguments and environment, runs a member
/// until SIGINT/SIGTERM (or a fatal fault) and returns the exit status.
pub fn main() -> ExitCode {
    let args: Vec<String> = match std::env::args_os()
        .skip(1)
        .map(|a| a.into_string())
        .collect::<Result<_, _>>()
    {
        Ok(args) => args,
        Err(bad) => {
            eprintln!("ballast: argument {bad:?} is not valid UTF-8");
            return ExitCode::from(2);
        }
    };
    let env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();

    let resolved = match flags::parse(&args, &env) {
        Ok(Command::Run(resolved)) => resolved,
        Ok(Command::Help) => {
            print!("{}", flags::help_text());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version {
            emulated_etcd_version,
        }) => {
            print!("{}", flags::version_text(&emulated_etcd_version));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("ballast: {e}");
            if e.is_usage() {
                eprintln!("Run 'ballast --help' for the list of flags.");
            }
            return ExitCode::from(e.exit_code());
        }
    };

    if let Err(e) = logging::init(&resolved.logging) {
        eprintln!("ballast: {e}");
        return ExitCode::from(1);
    }
    for notice in &resolved.notices {
        log_notice(notice);
    }
    log_config(&resolved);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the tokio runtime");
            return ExitCode::from(1);
        }
    };
    let logs_to_stderr = resolved
        .logging
        .outputs
        .contains(&logging::LogOutput::Stderr);
    let cfg = resolved.server;
    let result = runtime.block_on(async move {
        let shutdown = shutdown_signal()?;
        ballast_server::run(cfg, shutdown).await
    });
    // Dropping a runtime waits for its blocking tasks without limit: a member thread stuck in
    // the kernel after a fault (a hung disk) must not keep the process from exiting.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => {
            tracing::info!("ballast stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            if e.downcast_ref::<ballast_server::fault::Fault>().is_some() {
                // Fail-stop: the fault's own line said what failed; exit so a supervisor
                // restarts the member.
                tracing::info!("ballast stopped after a fault; exiting with status 1");
            } else {
                tracing::error!(error = %e, "ballast failed");
            }
            if !logs_to_stderr {
                eprintln!("ballast: {e}");
            }
            ExitCode::from(1)
        }
    }
}

fn log_notice(n: &Notice) {
    let (flag, value, source, key, file) = (
        n.flag.as_deref(),
        n.value.as_deref(),
        n.source.as_deref(),
        n.key.as_deref(),
        n.file.as_deref(),
    );
    match n.level {
        NoticeLevel::Info => tracing::info!(flag, value, source, key, file, "{}", n.msg),
        NoticeLevel::Warn => tracing::warn!(flag, value, source, key, file, "{}", n.msg),
    }
}

/// One line with the whole resolved configuration, like etcd's "starting an etcd server".
fn log_config(r: &Resolved) {
    let c = &r.server;
    let members: Vec<String> = c
        .initial_cluster
        .iter()
        .flat_map(|m| m.peer_urls.iter().map(move |u| format!("{}={u}", m.name)))
        .collect();
    tracing::info!(
        "ballast-version" = env!("CARGO_PKG_VERSION"),
        "emulated-etcd-version" = %c.emulated_etcd_version,
        "name" = %c.name,
        "data-dir" = %c.data_dir.display(),
        "listen-client-urls" = ?c.listen_client_urls,
        "advertise-client-urls" = ?c.advertise_client_urls,
        "listen-peer-urls" = ?c.listen_peer_urls,
        "initial-advertise-peer-urls" = ?c.initial_advertise_peer_urls,
        "initial-cluster" = %members.join(","),
        "initial-cluster-state" = if c.initial_cluster_state == ballast_server::config::ClusterState::Existing { "existing" } else { "new" },
        "initial-cluster-token" = %c.initial_cluster_token,
        "snapshot-count" = c.snapshot_count,
        "quota-backend-bytes" = c.quota_backend_bytes,
        "max-request-bytes" = c.max_request_bytes as u64,
        "max-txn-ops" = c.max_txn_ops as u64,
        "heartbeat-interval" = %format!("{}ms", c.heartbeat_interval.as_millis()),
        "election-timeout" = %format!("{}ms", c.election_timeout.as_millis()),
        "log-level" = %r.logging.level.as_str().to_ascii_lowercase(),
        "config-file" = r.config_file.as_ref().map(|p| p.display().to_string()),
        "starting a Ballast member"
    );
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed before returning, so a signal that
/// arrives while the server starts up is not lost.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            let name = tokio::select! {
                _ = interrupt.recv() => "interrupt",
                _ = terminate.recv() => "terminated",
            };
            tracing::info!(signal = name, "received signal; shutting down");
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async move {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!(signal = "interrupt", "received signal; shutting down");
        })
    }
}
