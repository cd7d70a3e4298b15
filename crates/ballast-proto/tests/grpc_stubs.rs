//! With the `grpc` feature: the generated clients hit etcd's exact HTTP/2 paths and the
//! generated servers register under etcd's service names.
#![cfg(feature = "grpc")]

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use ballast_proto::etcdserverpb::{
    auth_client::AuthClient, cluster_client::ClusterClient, kv_client::KvClient,
    lease_client::LeaseClient, maintenance_client::MaintenanceClient, watch_client::WatchClient,
    AuthUserAddRequest, HashKvRequest, LeaseKeepAliveRequest, MemberListRequest, RangeRequest,
    SnapshotRequest, TxnRequest, WatchRequest,
};
use ballast_proto::v3electionpb::{election_client::ElectionClient, LeaderRequest};
use ballast_proto::v3lockpb::{lock_client::LockClient, LockRequest};
use tonic::body::Body;
use tonic::codegen::{http, Service};

/// A fake channel: records each request path and answers "unimplemented" (trailers-only).
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>);

impl Service<http::Request<Body>> for Recorder {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        self.0.lock().unwrap().push(req.uri().path().to_string());
        let resp = http::Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "12")
            .body(Body::empty())
            .unwrap();
        ready(Ok(resp))
    }
}

#[tokio::test]
async fn clients_use_etcd_paths() {
    let rec = Recorder::default();
    let unimpl = tonic::Code::Unimplemented;

    let mut kv = KvClient::new(rec.clone());
    assert_eq!(status(kv.range(RangeRequest::default()).await), unimpl);
    assert_eq!(
        status(kv.range_stream(RangeRequest::default()).await),
        unimpl
    );
    assert_eq!(status(kv.txn(TxnRequest::default()).await), unimpl);
    let mut watch = WatchClient::new(rec.clone());
    assert_eq!(
        status(
            watch
                .watch(tokio_stream_once(WatchRequest::default()))
                .await
        ),
        unimpl
    );
    let mut lease = LeaseClient::new(rec.clone());
    let ka = tokio_stream_once(LeaseKeepAliveRequest::default());
    assert_eq!(status(lease.lease_keep_alive(ka).await), unimpl);
    let mut cluster = ClusterClient::new(rec.clone());
    assert_eq!(
        status(cluster.member_list(MemberListRequest::default()).await),
        unimpl
    );
    let mut maint = MaintenanceClient::new(rec.clone());
    assert_eq!(
        status(maint.hash_kv(HashKvRequest::default()).await),
        unimpl
    );
    assert_eq!(
        status(maint.snapshot(SnapshotRequest::default()).await),
        unimpl
    );
    let mut auth = AuthClient::new(rec.clone());
    assert_eq!(
        status(auth.user_add(AuthUserAddRequest::default()).await),
        unimpl
    );
    let mut lock = LockClient::new(rec.clone());
    assert_eq!(status(lock.lock(LockRequest::default()).await), unimpl);
    let mut election = ElectionClient::new(rec.clone());
    assert_eq!(
        status(election.observe(LeaderRequest::default()).await),
        unimpl
    );

    assert_eq!(
        *rec.0.lock().unwrap(),
        [
            "/etcdserverpb.KV/Range",
            "/etcdserverpb.KV/RangeStream",
            "/etcdserverpb.KV/Txn",
            "/etcdserverpb.Watch/Watch",
            "/etcdserverpb.Lease/LeaseKeepAlive",
            "/etcdserverpb.Cluster/MemberList",
            "/etcdserverpb.Maintenance/HashKV",
            "/etcdserverpb.Maintenance/Snapshot",
            "/etcdserverpb.Auth/UserAdd",
            "/v3lockpb.Lock/Lock",
            "/v3electionpb.Election/Observe",
        ]
    );
}

fn status<T>(r: Result<T, tonic::Status>) -> tonic::Code {
    match r {
        Ok(_) => panic!("the recorder never answers OK"),
        Err(s) => s.code(),
    }
}

/// A one-item request stream without pulling in tokio-stream/futures as dev-dependencies.
fn tokio_stream_once<T: Send + 'static>(item: T) -> tonic::codegen::tokio_stream::Once<T> {
    tonic::codegen::tokio_stream::once(item)
}

#[test]
fn servers_register_under_etcd_service_names() {
    use ballast_proto::{etcdserverpb as pb, v3electionpb, v3lockpb};
    assert_eq!(pb::kv_server::SERVICE_NAME, "etcdserverpb.KV");
    assert_eq!(pb::watch_server::SERVICE_NAME, "etcdserverpb.Watch");
    assert_eq!(pb::lease_server::SERVICE_NAME, "etcdserverpb.Lease");
    assert_eq!(pb::cluster_server::SERVICE_NAME, "etcdserverpb.Cluster");
    assert_eq!(
        pb::maintenance_server::SERVICE_NAME,
        "etcdserverpb.Maintenance"
    );
    assert_eq!(pb::auth_server::SERVICE_NAME, "etcdserverpb.Auth");
    assert_eq!(v3lockpb::lock_server::SERVICE_NAME, "v3lockpb.Lock");
    assert_eq!(
        v3electionpb::election_server::SERVICE_NAME,
        "v3electionpb.Election"
    );
    // The constant is what tonic's router keys on.
    fn name<S: tonic::server::NamedService>() -> &'static str {
        S::NAME
    }
    assert_eq!(name::<pb::kv_server::KvServer<()>>(), "etcdserverpb.KV");
}
