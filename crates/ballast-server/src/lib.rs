//! A Ballast member: the Raft node (raft-rs over our WAL), the apply loop (single writer of the
//! MVCC store), the etcd v3 gRPC services and the HTTP endpoints of the client port.
//!
//! Map: [`member`] wires everything and is the services' handle; [`raft`] owns raft-rs and
//! the WAL; [`apply`] owns writes to the store; [`kv`] holds etcd's KV/Txn semantics; [`lease`]
//! is the lessor (lease state, expiry, checkpoints); [`cluster`] the member list and ids;
//! [`service`] are thin gRPC adapters; [`error`] is the one place etcd's error codes and messages
//! are spelled. Entry point: [`run`].

pub mod alarm;
pub mod apply;
pub mod cluster;
pub mod cluster_ops;
pub mod compactor;
pub mod config;
pub mod error;
#[cfg(feature = "failpoints")]
pub mod failpoints_http;
pub mod fault;
pub mod grpc_status;
pub mod http;
pub mod kv;
pub mod lease;
pub mod local_client;
pub mod member;
pub mod quota;
pub mod raft;
pub mod recipes;
pub mod schema;
pub mod serve;
pub mod service;
pub mod wait;
pub mod watch;

use std::net::SocketAddr;

use ballast_proto::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer,
};
use ballast_proto::{
    v3electionpb::election_server::ElectionServer, v3lockpb::lock_server::LockServer,
};
use tonic::service::Routes;

pub use config::ServerConfig;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// gRPC's allowance on top of `--max-request-bytes` for the envelope (etcd uses 512 KiB).
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Resolves `http://host:port` to socket addresses to listen on.
pub async fn listen_addrs(url: &str) -> Result<Vec<SocketAddr>, BoxError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("unsupported listen URL {url:?}: only http:// is supported yet"))?;
    let hostport = rest.trim_end_matches('/');
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host(hostport).await?.collect();
    // "localhost" should mean 127.0.0.1 first, as for etcd (clients dial 127.0.0.1:2379).
    addrs.sort_by_key(|a| !a.is_ipv4());
    if addrs.is_empty() {
        return Err(format!("listen URL {url:?} resolves to no address").into());
    }
    Ok(addrs)
}

/// Binds one listener per URL, at its first resolved address (as etcd does for a host name);
/// `serving` names the traffic in the log line and in the error.
async fn bind_all(
    urls: &[String],
    serving: &str,
) -> Result<Vec<tokio::net::TcpListener>, BoxError> {
    let mut listeners = Vec::new();
    for url in urls {
        let addr = listen_addrs(url).await?[0];
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("listen on {addr} ({serving}): {e}"))?;
        tracing::info!(address = %addr, "serving {serving}");
        listeners.push(l);
    }
    Ok(listeners)
}

/// Starts the member and serves clients until `shutdown` resolves, then stops cleanly.
pub async fn run(
    cfg: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError> {
    // A fault-test build arms FAILPOINTS before the member opens anything.
    #[cfg(feature = "failpoints")]
    {
        tracing::warn!("this build has failpoints compiled in: for fault tests only");
        failpoints_http::arm_from_env()?;
    }
    // Bind first: a port in use fails the start before any data dir is touched.
    let listeners = bind_all(&cfg.listen_client_urls, "client requests").await?;
    let peer_listeners = bind_all(&cfg.listen_peer_urls, "peer traffic").await?;
    let max_recv = cfg.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let member_cfg = cfg.clone();
    let member = tokio::task::spawn_blocking(move || member::Member::start(member_cfg)).await??;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;

    // Set when the member starts stopping: long-lived streams end so the servers can drain.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let unimpl = service::unimplemented::Unimplemented;
    let http_routes = http::router(member.clone());
    #[cfg(feature = "failpoints")]
    let http_routes = http_routes.merge(failpoints_http::router());
    let routes = Routes::from(http_routes)
        .add_service(service::kv::KvRouter::new(member.clone(), max_recv))
        .add_service(
            MaintenanceServer::new(service::maintenance::MaintenanceService::new(
                member.clone(),
            ))
            .max_decoding_message_size(max_recv)
            .max_encoding_message_size(usize::MAX),
        )
        .add_service(service::watch::WatchServer::new(
            service::watch::WatchService::new(member.watch_hub.clone()),
            max_recv,
        ))
        .add_service(
            LeaseServer::new(service::lease::LeaseService::new(
                member.clone(),
                stop_rx.clone(),
            ))
            .max_decoding_message_size(max_recv)
            .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            ClusterServer::new(service::cluster::ClusterService::new(member.clone()))
                .max_decoding_message_size(max_recv),
        )
        .add_service(AuthServer::new(unimpl))
        .add_service(
            LockServer::new(service::lock::LockService::new(member.clone()))
                .max_decoding_message_size(max_recv)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            ElectionServer::new(service::election::ElectionService::new(member.clone()))
                .max_decoding_message_size(max_recv)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(health_service);
    // grpc-go's wording for transport-level request errors, which clients match on; and the
    // one gate that refuses every request once the member has stopped.
    let routes = Routes::from(
        routes
            .into_axum_router()
            .layer(axum::middleware::map_response(grpc_status::etcd_wording))
            .layer(axum::middleware::from_fn_with_state(
                member.clone(),
                refuse_when_stopped,
            )),
    );

    let peer_routes = member.peer_routes()?.add_service(
        ballast_proto::peer::membership_server::MembershipServer::new(
            service::peer_members::PeerMembers::new(member.clone()),
        ),
    );
    let mut peer_servers = Vec::new();
    for l in peer_listeners {
        let routes = peer_routes.clone();
        let mut stop = stop_rx.clone();
        peer_servers.push(tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
            {
                tracing::error!(error = %e, "peer server failed");
            }
        }));
    }
    let lessor_task = tokio::spawn(lease::driver::run(member.clone()));
    let publish_task = tokio::spawn(publish(member.clone()));

    // A signal stops the member gracefully; a fault (crate::fault) first tells health checkers,
    // then ends the servers the same way.
    let status = member.status.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown => {}
            _ = status.fault.wait() => {
                health_reporter
                    .set_service_status("", tonic_health::ServingStatus::NotServing)
                    .await;
                // For a moment the stopped member still answers: health checkers read
                // NOT_SERVING and `/health` false, clients get `server stopped` from the gate
                // (and go to another member) instead of a refused connection.
                tokio::time::sleep(FAULT_REFUSING).await;
            }
        }
        let _ = stop_tx.send(true);
    });
    let mut servers = Vec::new();
    for l in listeners {
        servers.push(tokio::spawn(serve::serve(
            l,
            routes.clone(),
            stop_rx.clone(),
            member.request_timeout(),
            serve::ServeOptions {
                max_concurrent_streams: cfg.max_concurrent_streams,
                keepalive_min_time: cfg.grpc_keepalive_min_time,
                keepalive_interval: cfg.grpc_keepalive_interval,
                keepalive_timeout: cfg.grpc_keepalive_timeout,
                handshake_timeout: cfg.client_handshake_timeout,
            },
        )));
    }
    let mut result: Result<(), BoxError> = Ok(());
    let aborts: Vec<_> = servers.iter().map(|s| s.abort_handle()).collect();
    let all_servers = futures::future::join_all(servers);
    tokio::pin!(all_servers);
    let drained = tokio::select! {
        done = &mut all_servers => Some(done),
        // After a fault, the requests in flight got their error at once: once the servers
        // are told to stop, close what is still open (watch and health streams) soon.
        _ = async {
            member.status.fault.wait().await;
            tokio::time::sleep(FAULT_REFUSING + FAULT_DRAIN).await;
        } => None,
    };
    match drained {
        Some(done) => {
            for s in done {
                if let Err(e) = s {
                    result = Err(format!("client server task: {e}").into());
                }
            }
        }
        None => aborts.iter().for_each(|a| a.abort()),
    }
    if let Some(fault) = member.status.fault().cloned() {
        lessor_task.abort();
        // The threads have stopped, or stop within a raft tick; one stuck in the kernel (a
        // hung disk) must not keep the process alive.
        let m = member.clone();
        let stopping = tokio::task::spawn_blocking(move || m.stop());
        if tokio::time::timeout(FAULT_DRAIN, stopping).await.is_err() {
            tracing::warn!("member threads did not stop in time; exiting anyway");
        }
        return Err(Box::new(fault));
    }
    publish_task.abort();
    lease::driver::final_checkpoint(&member, member.request_timeout()).await;
    tracing::info!("stopping member");
    lessor_task.abort();
    let m = member.clone();
    tokio::task::spawn_blocking(move || m.stop()).await?;
    // A fault while stopping still fails the process.
    if let Some(fault) = member.status.fault().cloned() {
        return Err(Box::new(fault));
    }
    result
}

/// Publishes this member's name and client URLs through Raft, retrying until it is applied
/// (etcd publishes at every start; until then the member is listed unstarted).
async fn publish(member: std::sync::Arc<member::Member>) {
    let mut delay = std::time::Duration::from_millis(100);
    loop {
        match member.publish().await {
            Ok(()) => {
                tracing::info!(
                    name = %member.cfg.name,
                    client_urls = ?member.cfg.advertise_client_urls,
                    "published local member to cluster through raft"
                );
                return;
            }
            Err(error::ServerError::Stopped) => return,
            Err(e) => {
                tracing::warn!(error = %e, "publishing the local member failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(2));
            }
        }
    }
}

/// How long a failed member goes on answering (health false, every request refused) before
/// its servers stop.
const FAULT_REFUSING: std::time::Duration = std::time::Duration::from_secs(2);
/// Then how long it lets its servers close their connections, and waits for its threads.
const FAULT_DRAIN: std::time::Duration = std::time::Duration::from_secs(1);

/// The gate in front of every gRPC service: once the member has stopped (a fault, or the end
/// of a graceful stop), every request but a health check gets etcd's `server stopped`
/// (Unavailable), serializable reads included — a stopped member's store no longer applies.
async fn refuse_when_stopped(
    axum::extract::State(member): axum::extract::State<std::sync::Arc<member::Member>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let grpc = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc && member.is_stopped() && !req.uri().path().starts_with("/grpc.health.v1.Health/") {
        return tonic::Status::from(error::ServerError::Stopped).into_http();
    }
    next.run(req).await
}
