//! Connected raw gRPC clients (the `ballast-proto` tonic stubs) for tests that need every request field.

use std::time::Duration;

use ballast_proto::etcdserverpb::kv_client::KvClient;
use ballast_proto::etcdserverpb::lease_client::LeaseClient;
use ballast_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use ballast_proto::etcdserverpb::{StatusRequest, StatusResponse};
use tonic::transport::{Channel, Endpoint};

/// The channel type the clients are generic over.
pub type GrpcChannel = Channel;

/// Per-request timeout of the clients handed out here.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

async fn channel(url: &str) -> Channel {
    connect(url, Duration::from_secs(5), REQUEST_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn connect(
    url: &str,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<Channel, String> {
    Endpoint::from_shared(url.to_owned())
        .map_err(|e| format!("bad endpoint {url}: {e}"))?
        .connect_timeout(connect_timeout)
        .timeout(timeout)
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))
}

/// One `Maintenance.Status` of `url`, given up after `timeout` (connecting included): the error text
/// when the member does not answer in time (down, paused, or refusing).
pub(crate) async fn status_within(url: &str, timeout: Duration) -> Result<StatusResponse, String> {
    let call = async {
        let mut client = MaintenanceClient::new(connect(url, timeout, timeout).await?);
        client
            .status(StatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|e| format!("Status on {url}: {e}"))
    };
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| Err(format!("Status on {url}: no answer within {timeout:?}")))
}

/// A connected `KV` client for `url` (`http://127.0.0.1:PORT`), with etcd's message size limits lifted
/// on the client side (so oversize requests reach the server and get *its* error).
pub async fn kv_client(url: &str) -> KvClient<Channel> {
    KvClient::new(channel(url).await)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

/// A connected `Maintenance` client for `url`.
pub async fn maintenance_client(url: &str) -> MaintenanceClient<Channel> {
    MaintenanceClient::new(channel(url).await)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

/// A connected `Lease` client for `url`.
pub async fn lease_client(url: &str) -> LeaseClient<Channel> {
    LeaseClient::new(channel(url).await)
}
