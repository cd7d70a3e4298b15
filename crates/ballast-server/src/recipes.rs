//! etcd's Lock and Election services: server-side recipes over this member's own KV, leases and
//! watches, with etcd's key layout so that etcd's client-side recipes (clientv3 `concurrency`,
//! etcdctl `lock`/`elect`) and these services interoperate on the same names.
//!
//! Layout: a contender under name `N` owns the key `N/<lease id in lowercase hex>`, attached to
//! its lease; contenders are ordered by the key's create revision (fair: first come, first
//! served). A contender waits until every key under `N/` created before its own is deleted
//! (by unlock, resign or lease expiry), watching only the newest of them at a time.
//!
//! A waiting Lock or Campaign whose client goes away removes its key (like etcd's recipes do on
//! a cancelled context), so an abandoned waiter never becomes the owner.

use std::sync::Arc;

use ballast_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use ballast_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use ballast_proto::etcdserverpb::request_op::Request as Op;
use ballast_proto::etcdserverpb::response_op::Response as OpResp;
use ballast_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, TxnRequest, TxnResponse, WatchCreateRequest,
};
use ballast_proto::mvccpb::{self, event::EventType};
use ballast_proto::v3electionpb::LeaderKey;
use futures::StreamExt;

use crate::error::ServerError;
use crate::member::Member;

/// etcd runs these recipes as a client of itself, so every error reaches the caller with gRPC
/// code Unknown and etcd's message (`etcdserver: requested lease not found`, `election: no
/// leader`, ...); Lock and Election answer the same way.
pub fn as_etcd(e: ServerError) -> tonic::Status {
    tonic::Status::unknown(e.to_string())
}

/// etcd's prefix end: the key + 1 at the last byte below 0xff; `"\0"` (all keys) if none.
pub fn prefix_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The contender key of `lease` under `name`.
pub fn contender_key(name: &[u8], lease: i64) -> Vec<u8> {
    let mut k = name.to_vec();
    k.push(b'/');
    k.extend_from_slice(format!("{lease:x}").as_bytes());
    k
}

fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

fn op(r: Op) -> RequestOp {
    RequestOp { request: Some(r) }
}

fn get(key: &[u8]) -> Op {
    Op::RequestRange(RangeRequest {
        key: key.to_vec(),
        ..Default::default()
    })
}

/// The key under `pfx` with the lowest create revision (etcd's `WithFirstCreate`).
fn first_created(pfx: &[u8]) -> RangeRequest {
    RangeRequest {
        key: pfx.to_vec(),
        range_end: prefix_end(pfx),
        limit: 1,
        sort_order: SortOrder::Ascend as i32,
        sort_target: SortTarget::Create as i32,
        ..Default::default()
    }
}

fn create_rev_is(key: &[u8], rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(TargetUnion::CreateRevision(rev)),
        ..Default::default()
    }
}

fn range_of(resp: &TxnResponse, i: usize) -> Option<&RangeResponse> {
    match resp.responses.get(i)?.response.as_ref()? {
        OpResp::ResponseRange(r) => Some(r),
        _ => None,
    }
}

/// Deletes a contender key when dropped while armed (the request was abandoned mid-wait).
struct Withdraw {
    member: Arc<Member>,
    key: Option<Vec<u8>>,
    /// Only delete if the key is still the one created at this revision.
    rev: i64,
}

impl Withdraw {
    fn disarm(mut self) {
        self.key = None;
    }
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let member = self.member.clone();
            let rev = self.rev;
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = delete_if_created_at(&member, &key, rev).await;
                });
            }
        }
    }
}

async fn delete_if_created_at(
    member: &Member,
    key: &[u8],
    rev: i64,
) -> Result<TxnResponse, ServerError> {
    member
        .kv_txn(TxnRequest {
            compare: vec![create_rev_is(key, rev)],
            success: vec![op(Op::RequestDeleteRange(DeleteRangeRequest {
                key: key.to_vec(),
                ..Default::default()
            }))],
            failure: vec![],
        })
        .await
}

/// Waits for a DELETE of `key` at or after revision `rev`.
async fn wait_delete(member: &Member, key: &[u8], rev: i64) -> Result<(), ServerError> {
    let hub = &member.watch_hub;
    let (stream, responses) = hub.open_stream(false);
    let mut responses = responses.decoded();
    hub.create(
        &stream,
        &WatchCreateRequest {
            key: key.to_vec(),
            start_revision: rev,
            ..Default::default()
        },
    );
    while let Some(r) = responses.next().await {
        let r = r.map_err(|s| ServerError::Internal(s.message().to_string()))?;
        if r.canceled {
            return Err(if r.compact_revision != 0 {
                ServerError::Compacted
            } else {
                ServerError::Internal(format!("watch cancelled: {}", r.cancel_reason))
            });
        }
        if r.events
            .iter()
            .any(|e| e.r#type == EventType::Delete as i32)
        {
            return Ok(());
        }
    }
    Err(ServerError::Stopped)
}

/// Waits until no key under `pfx` has a create revision at or below `max_create_rev`.
async fn wait_deletes(
    member: &Member,
    pfx: &[u8],
    max_create_rev: i64,
) -> Result<ResponseHeader, ServerError> {
    loop {
        let resp = member
            .kv_range(&RangeRequest {
                key: pfx.to_vec(),
                range_end: prefix_end(pfx),
                limit: 1,
                sort_order: SortOrder::Descend as i32,
                sort_target: SortTarget::Create as i32,
                max_create_revision: max_create_rev,
                ..Default::default()
            })
            .await?;
        let header = resp.header.unwrap_or_default();
        let Some(last) = resp.kvs.first() else {
            return Ok(header);
        };
        wait_delete(member, &last.key, header.revision).await?;
    }
}

/// `v3lockpb.Lock`: returns once `lease` owns the lock `name` (the owner key exists while the
/// lock is held).
pub async fn lock(
    member: &Arc<Member>,
    name: &[u8],
    lease: i64,
) -> Result<(ResponseHeader, Vec<u8>), ServerError> {
    let pfx = prefix_of(name);
    let key = contender_key(name, lease);
    let resp = member
        .kv_txn(TxnRequest {
            compare: vec![create_rev_is(&key, 0)],
            success: vec![
                op(Op::RequestPut(PutRequest {
                    key: key.clone(),
                    lease,
                    ..Default::default()
                })),
                op(Op::RequestRange(first_created(&pfx))),
            ],
            failure: vec![op(get(&key)), op(Op::RequestRange(first_created(&pfx)))],
        })
        .await?;
    let header = resp.header.unwrap_or_default();
    let my_rev = if resp.succeeded {
        header.revision
    } else {
        range_of(&resp, 0)
            .and_then(|r| r.kvs.first())
            .map(|kv| kv.create_revision)
            .ok_or_else(|| ServerError::Internal("lock key vanished".into()))?
    };
    let owner = range_of(&resp, 1).and_then(|r| r.kvs.first());
    if owner.is_none_or(|o| o.create_revision == my_rev) {
        return Ok((header, key));
    }
    let guard = Withdraw {
        member: member.clone(),
        key: Some(key.clone()),
        rev: my_rev,
    };
    match wait_deletes(member, &pfx, my_rev - 1).await {
        Ok(h) => {
            guard.disarm();
            Ok((h, key))
        }
        Err(e) => Err(e), // the guard withdraws the key
    }
}

/// `v3lockpb.Unlock`: deletes the owner key.
pub async fn unlock(member: &Member, key: &[u8]) -> Result<ResponseHeader, ServerError> {
    let resp = member
        .kv_delete(DeleteRangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })
        .await?;
    Ok(resp.header.unwrap_or_default())
}

/// `v3electionpb.Campaign`: returns once `lease` leads election `name`, with `value` proclaimed.
pub async fn campaign(
    member: &Arc<Member>,
    name: &[u8],
    lease: i64,
    value: &[u8],
) -> Result<(ResponseHeader, LeaderKey), ServerError> {
    let pfx = prefix_of(name);
    let key = contender_key(name, lease);
    let resp = member
        .kv_txn(TxnRequest {
            compare: vec![create_rev_is(&key, 0)],
            success: vec![op(Op::RequestPut(PutRequest {
                key: key.clone(),
                value: value.to_vec(),
                lease,
                ..Default::default()
            }))],
            failure: vec![op(get(&key))],
        })
        .await?;
    let header = resp.header.unwrap_or_default();
    let mut leader = LeaderKey {
        name: name.to_vec(),
        key: key.clone(),
        rev: header.revision,
        lease,
    };
    if !resp.succeeded {
        let kv = range_of(&resp, 0)
            .and_then(|r| r.kvs.first())
            .ok_or_else(|| ServerError::Internal("election key vanished".into()))?;
        leader.rev = kv.create_revision;
        if kv.value != value {
            if let Err(e) = proclaim(member, &leader, value).await {
                let _ = resign(member, &leader).await;
                return Err(e);
            }
        }
    }
    let guard = Withdraw {
        member: member.clone(),
        key: Some(key),
        rev: leader.rev,
    };
    wait_deletes(member, &pfx, leader.rev - 1).await?;
    guard.disarm();
    Ok((header, leader))
}

/// `v3electionpb.Proclaim`: replaces the leader's value if it still leads.
pub async fn proclaim(
    member: &Member,
    leader: &LeaderKey,
    value: &[u8],
) -> Result<ResponseHeader, ServerError> {
    let resp = member
        .kv_txn(TxnRequest {
            compare: vec![create_rev_is(&leader.key, leader.rev)],
            success: vec![op(Op::RequestPut(PutRequest {
                key: leader.key.clone(),
                value: value.to_vec(),
                lease: leader.lease,
                ..Default::default()
            }))],
            failure: vec![],
        })
        .await?;
    if !resp.succeeded {
        return Err(ServerError::ElectionNotLeader);
    }
    Ok(resp.header.unwrap_or_default())
}

/// `v3electionpb.Resign`: gives up leadership (no error if it was already lost).
pub async fn resign(member: &Member, leader: &LeaderKey) -> Result<ResponseHeader, ServerError> {
    let resp = delete_if_created_at(member, &leader.key, leader.rev).await?;
    Ok(resp.header.unwrap_or_default())
}

/// `v3electionpb.Leader`: the current leader's key-value.
pub async fn leader(
    member: &Member,
    name: &[u8],
) -> Result<(ResponseHeader, mvccpb::KeyValue), ServerError> {
    let resp = member.kv_range(&first_created(&prefix_of(name))).await?;
    let header = resp.header.unwrap_or_default();
    let kv = resp
        .kvs
        .into_iter()
        .next()
        .ok_or(ServerError::ElectionNoLeader)?;
    Ok((header, kv))
}

/// `v3electionpb.Observe`: sends the leader now and on every change (new value, new leader)
/// until `send` fails (the client went away).
pub async fn observe<F, Fut>(member: &Member, name: &[u8], mut send: F) -> Result<(), ServerError>
where
    F: FnMut(ResponseHeader, mvccpb::KeyValue) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let pfx = prefix_of(name);
    let hub = &member.watch_hub;
    loop {
        let resp = member.kv_range(&first_created(&pfx)).await?;
        let header = resp.header.unwrap_or_default();
        let (mut hdr, kv) = match resp.kvs.into_iter().next() {
            Some(kv) => (header, kv),
            None => {
                // No leader yet: the first key put under the prefix is the next one.
                let (stream, responses) = hub.open_stream(false);
                let mut responses = responses.decoded();
                hub.create(
                    &stream,
                    &WatchCreateRequest {
                        key: pfx.clone(),
                        range_end: prefix_end(&pfx),
                        start_revision: header.revision,
                        ..Default::default()
                    },
                );
                let mut found = None;
                while found.is_none() {
                    let Some(Ok(r)) = responses.next().await else {
                        return Ok(());
                    };
                    if r.canceled {
                        return Ok(());
                    }
                    let h = r.header.unwrap_or_default();
                    if let Some(e) = r
                        .events
                        .into_iter()
                        .find(|e| e.r#type == EventType::Put as i32)
                    {
                        let kv = e.kv.unwrap_or_default();
                        let mut h = h;
                        h.revision = kv.mod_revision;
                        found = Some((h, kv));
                    }
                }
                found.expect("loop exits with a leader")
            }
        };
        if !send(hdr, kv.clone()).await {
            return Ok(());
        }
        // Follow this leader's key until it is deleted.
        let (stream, responses) = hub.open_stream(false);
        let mut responses = responses.decoded();
        hub.create(
            &stream,
            &WatchCreateRequest {
                key: kv.key.clone(),
                start_revision: hdr.revision + 1,
                ..Default::default()
            },
        );
        'follow: loop {
            let Some(Ok(r)) = responses.next().await else {
                return Ok(());
            };
            if r.canceled {
                return Ok(());
            }
            if r.created {
                continue;
            }
            hdr = r.header.unwrap_or_default();
            for e in r.events {
                if e.r#type == EventType::Delete as i32 {
                    break 'follow;
                }
                if !send(hdr, e.kv.unwrap_or_default()).await {
                    return Ok(());
                }
            }
        }
    }
}

/// The lease a recipe's key is attached to: the request's, or (lease 0, like etcd's recipes)
/// a new lease of [`SESSION_TTL_SECS`] that nobody keeps alive.
pub async fn session_lease(member: &Member, lease: i64) -> Result<i64, ServerError> {
    if lease != 0 {
        return Ok(lease);
    }
    let resp = member
        .lease_grant(ballast_proto::etcdserverpb::LeaseGrantRequest {
            ttl: SESSION_TTL_SECS,
            id: 0,
        })
        .await?;
    Ok(resp.id)
}

/// etcd's default session TTL.
pub const SESSION_TTL_SECS: i64 = 60;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_etcds_layout() {
        assert_eq!(
            contender_key(b"mylock", 0x694d7a1b2c3d4e5f),
            b"mylock/694d7a1b2c3d4e5f"
        );
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }
}
