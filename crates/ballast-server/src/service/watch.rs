//! `etcdserverpb.Watch`: one bidirectional stream carrying many watchers. Requests are handed to
//! the watch hub as they arrive; responses come from the stream's queue (see [`crate::watch`]).

use std::sync::Arc;

use ballast_proto::etcdserverpb::watch_request::RequestUnion;
use ballast_proto::etcdserverpb::watch_server::Watch;
use ballast_proto::etcdserverpb::{WatchRequest, WatchResponse};
use tonic::{Request, Response, Status, Streaming};

use crate::error::ServerError;
use crate::watch::{WatchHub, WatchResponseStream};

pub struct WatchService {
    hub: Arc<WatchHub>,
}

impl WatchService {
    pub fn new(hub: Arc<WatchHub>) -> Self {
        WatchService { hub }
    }
}

/// etcd clients put `hasleader: true` in the metadata of streams that must fail rather than
/// wait while the member has no leader (`clientv3.WithRequireLeader`; Kubernetes sets it).
fn requires_leader<T>(req: &Request<T>) -> bool {
    req.metadata()
        .get("hasleader")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "true")
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchResponseStream;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let require_leader = requires_leader(&req);
        if require_leader && !self.hub.has_leader() {
            return Err(ServerError::NoLeader.into());
        }
        let mut requests = req.into_inner();
        let (stream, responses) = self.hub.open_stream(require_leader);
        let hub = self.hub.clone();
        tokio::spawn(async move {
            // Like etcd, the client closing its send side ends nothing: responses keep flowing
            // until the client goes away.
            while let Ok(Some(r)) = requests.message().await {
                match r.request_union {
                    Some(RequestUnion::CreateRequest(c)) => hub.create(&stream, &c),
                    Some(RequestUnion::CancelRequest(c)) => hub.cancel(&stream, c.watch_id),
                    Some(RequestUnion::ProgressRequest(_)) => hub.request_progress(&stream),
                    None => {}
                }
            }
        });
        Ok(Response::new(responses))
    }
}

/// For the type checker: the stream tonic gets yields what etcd's Watch yields.
#[allow(dead_code)]
fn _assert_item(
    s: WatchResponseStream,
) -> impl futures::Stream<Item = Result<WatchResponse, Status>> {
    s
}
