//! KV operation scripts run side by side against a reference etcd and a candidate server.
//!
//! A script is a list of [`Step`]s, each an [`Op`] (one KV RPC with every request field available) plus
//! an optional expectation on the *reference* answer (so a case cannot silently stop testing what it
//! claims to test, and so the expected etcd behaviour is written down next to the case). Each op runs
//! on both servers; both outcomes are normalized ([`normalize`]: `cluster_id`, `member_id`, `raft_term`
//! zeroed in the top-level header; headers nested in Txn answers compared exactly; errors reduced to
//! gRPC code + exact message) and must be
//! equal. A mismatch report names the script, the op index, the op, both outcomes and the differing
//! fields.
//!
//! Scripts are built at run time from a [`Ctx`]: a fresh key prefix and the store revision at the start
//! of the script (checked equal on both servers), so many scripts can share one server pair as long as
//! every script runs on both servers in the same order.
//!
//! This module only drives clients; it never starts processes (that is `ballast-testkit`'s job).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use ballast_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use ballast_proto::etcdserverpb::kv_client::KvClient;
use ballast_proto::etcdserverpb::lease_client::LeaseClient;
use ballast_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use ballast_proto::etcdserverpb::request_op::Request;
use ballast_proto::etcdserverpb::response_op::Response;
use ballast_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, TxnRequest, TxnResponse,
};
use ballast_proto::mvccpb::KeyValue;
use serde_json::{json, Map, Value};
use tonic::transport::Channel;
use tonic::Code;

pub use ballast_testkit::CompatPair;

// ---------------------------------------------------------------------------------------------------
// Operations and their builders
// ---------------------------------------------------------------------------------------------------

/// One KV RPC with its full request.
#[derive(Clone, PartialEq)]
pub enum Op {
    /// `KV.Put`
    Put(PutRequest),
    /// `KV.Range`
    Range(RangeRequest),
    /// `KV.DeleteRange`
    DeleteRange(DeleteRangeRequest),
    /// `KV.Txn`
    Txn(TxnRequest),
    /// `KV.Compact`
    Compact(CompactionRequest),
    /// `Lease.LeaseGrant` (with an explicit ID, so both servers use the same one)
    LeaseGrant(LeaseGrantRequest),
    /// `Lease.LeaseRevoke`
    LeaseRevoke(LeaseRevokeRequest),
    /// `Lease.LeaseTimeToLive`
    LeaseTimeToLive(LeaseTimeToLiveRequest),
    /// `Lease.LeaseLeases`
    LeaseLeases(LeaseLeasesRequest),
    /// `Lease.LeaseKeepAlive`: one request on a fresh stream, its first answer.
    LeaseKeepAlive(LeaseKeepAliveRequest),
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", op_json(self))
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", op_json(self))
    }
}

/// `key + 1` in the last byte that is not 0xff (etcd's prefix end); `"\0"` when there is none.
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

/// Builder for a [`PutRequest`].
#[derive(Clone, Debug)]
pub struct Put(pub PutRequest);

/// `Put key value`.
pub fn put(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Put {
    Put(PutRequest {
        key: key.as_ref().to_vec(),
        value: value.as_ref().to_vec(),
        ..Default::default()
    })
}

impl Put {
    /// Attach lease `id`.
    pub fn lease(mut self, id: i64) -> Self {
        self.0.lease = id;
        self
    }
    /// Return the previous key-value.
    pub fn prev_kv(mut self) -> Self {
        self.0.prev_kv = true;
        self
    }
    /// Keep the current value.
    pub fn ignore_value(mut self) -> Self {
        self.0.ignore_value = true;
        self
    }
    /// Keep the current lease.
    pub fn ignore_lease(mut self) -> Self {
        self.0.ignore_lease = true;
        self
    }
}

/// Builder for a [`RangeRequest`].
#[derive(Clone, Debug)]
pub struct Range(pub RangeRequest);

/// `Range key` (single key until an end is set).
pub fn range(key: impl AsRef<[u8]>) -> Range {
    Range(RangeRequest {
        key: key.as_ref().to_vec(),
        ..Default::default()
    })
}

impl Range {
    /// `range_end`.
    pub fn end(mut self, end: impl AsRef<[u8]>) -> Self {
        self.0.range_end = end.as_ref().to_vec();
        self
    }
    /// Every key with `key` as prefix.
    pub fn prefix(mut self) -> Self {
        self.0.range_end = prefix_end(&self.0.key);
        self
    }
    /// Every key `>= key` (`range_end = "\0"`).
    pub fn from_key(mut self) -> Self {
        self.0.range_end = vec![0];
        self
    }
    /// `limit`.
    pub fn limit(mut self, n: i64) -> Self {
        self.0.limit = n;
        self
    }
    /// `revision`.
    pub fn rev(mut self, rev: i64) -> Self {
        self.0.revision = rev;
        self
    }
    /// `sort_order` + `sort_target`.
    pub fn sort(mut self, order: SortOrder, target: SortTarget) -> Self {
        self.0.sort_order = order as i32;
        self.0.sort_target = target as i32;
        self
    }
    /// `serializable`.
    pub fn serializable(mut self) -> Self {
        self.0.serializable = true;
        self
    }
    /// `keys_only`.
    pub fn keys_only(mut self) -> Self {
        self.0.keys_only = true;
        self
    }
    /// `count_only`.
    pub fn count_only(mut self) -> Self {
        self.0.count_only = true;
        self
    }
    /// `min_mod_revision`.
    pub fn min_mod(mut self, rev: i64) -> Self {
        self.0.min_mod_revision = rev;
        self
    }
    /// `max_mod_revision`.
    pub fn max_mod(mut self, rev: i64) -> Self {
        self.0.max_mod_revision = rev;
        self
    }
    /// `min_create_revision`.
    pub fn min_create(mut self, rev: i64) -> Self {
        self.0.min_create_revision = rev;
        self
    }
    /// `max_create_revision`.
    pub fn max_create(mut self, rev: i64) -> Self {
        self.0.max_create_revision = rev;
        self
    }
}

/// Builder for a [`DeleteRangeRequest`].
#[derive(Clone, Debug)]
pub struct Del(pub DeleteRangeRequest);

/// `DeleteRange key` (single key until an end is set).
pub fn del(key: impl AsRef<[u8]>) -> Del {
    Del(DeleteRangeRequest {
        key: key.as_ref().to_vec(),
        ..Default::default()
    })
}

impl Del {
    /// `range_end`.
    pub fn end(mut self, end: impl AsRef<[u8]>) -> Self {
        self.0.range_end = end.as_ref().to_vec();
        self
    }
    /// Every key with `key` as prefix.
    pub fn prefix(mut self) -> Self {
        self.0.range_end = prefix_end(&self.0.key);
        self
    }
    /// Every key `>= key`.
    pub fn from_key(mut self) -> Self {
        self.0.range_end = vec![0];
        self
    }
    /// `prev_kv`.
    pub fn prev_kv(mut self) -> Self {
        self.0.prev_kv = true;
        self
    }
}

/// Builder for a [`TxnRequest`].
#[derive(Clone, Debug, Default)]
pub struct Txn(pub TxnRequest);

/// An empty Txn (no compares: the success branch runs).
pub fn txn() -> Txn {
    Txn::default()
}

impl Txn {
    /// Add a compare.
    pub fn when(mut self, c: Compare) -> Self {
        self.0.compare.push(c);
        self
    }
    /// Add an op to the success branch.
    pub fn then(mut self, op: impl Into<RequestOp>) -> Self {
        self.0.success.push(op.into());
        self
    }
    /// Add an op to the failure branch.
    pub fn otherwise(mut self, op: impl Into<RequestOp>) -> Self {
        self.0.failure.push(op.into());
        self
    }
}

/// Builder for a [`CompactionRequest`].
#[derive(Clone, Debug)]
pub struct Compact(pub CompactionRequest);

/// `Compact revision`.
pub fn compact(revision: i64) -> Compact {
    Compact(CompactionRequest {
        revision,
        physical: false,
    })
}

impl Compact {
    /// Wait for the physical compaction.
    pub fn physical(mut self) -> Self {
        self.0.physical = true;
        self
    }
}

macro_rules! into_op {
    ($builder:ident, $variant:ident, $req:ident) => {
        impl From<$builder> for Op {
            fn from(b: $builder) -> Op {
                Op::$variant(b.0)
            }
        }
    };
}
into_op!(Put, Put, RequestPut);
into_op!(Range, Range, RequestRange);
into_op!(Del, DeleteRange, RequestDeleteRange);
into_op!(Txn, Txn, RequestTxn);
into_op!(Compact, Compact, Compact);

macro_rules! into_request_op {
    ($builder:ident, $variant:ident) => {
        impl From<$builder> for RequestOp {
            fn from(b: $builder) -> RequestOp {
                RequestOp {
                    request: Some(Request::$variant(b.0)),
                }
            }
        }
    };
}
into_request_op!(Put, RequestPut);
into_request_op!(Range, RequestRange);
into_request_op!(Del, RequestDeleteRange);
into_request_op!(Txn, RequestTxn);

/// A RequestOp with no request set (etcd rejects it).
pub fn empty_request_op() -> RequestOp {
    RequestOp { request: None }
}

/// `LeaseGrant` of lease `id` with `ttl` seconds.
pub fn lease_grant(id: i64, ttl: i64) -> Op {
    Op::LeaseGrant(LeaseGrantRequest { ttl, id })
}

/// `LeaseRevoke` of lease `id`.
pub fn lease_revoke(id: i64) -> Op {
    Op::LeaseRevoke(LeaseRevokeRequest { id })
}

/// `LeaseTimeToLive` of lease `id`, listing its keys with `keys`.
pub fn lease_ttl(id: i64, keys: bool) -> Op {
    Op::LeaseTimeToLive(LeaseTimeToLiveRequest { id, keys })
}

/// `LeaseLeases`.
pub fn lease_leases() -> Op {
    Op::LeaseLeases(LeaseLeasesRequest {})
}

/// One `LeaseKeepAlive` of lease `id`.
pub fn lease_keep_alive(id: i64) -> Op {
    Op::LeaseKeepAlive(LeaseKeepAliveRequest { id })
}

/// A compare on `key` (add the target with one of the methods).
pub fn cmp(key: impl AsRef<[u8]>) -> Cmp {
    Cmp(Compare {
        key: key.as_ref().to_vec(),
        ..Default::default()
    })
}

/// Half-built [`Compare`]: pick the target and result.
#[derive(Clone, Debug)]
pub struct Cmp(pub Compare);

impl Cmp {
    /// Compare over `[key, end)`.
    pub fn end(mut self, end: impl AsRef<[u8]>) -> Self {
        self.0.range_end = end.as_ref().to_vec();
        self
    }
    /// Compare over every key with the prefix `key`.
    pub fn prefix(mut self) -> Self {
        self.0.range_end = prefix_end(&self.0.key);
        self
    }
    fn finish(mut self, target: CompareTarget, result: CompareResult, u: TargetUnion) -> Compare {
        self.0.target = target as i32;
        self.0.result = result as i32;
        self.0.target_union = Some(u);
        self.0
    }
    /// `version <result> v`.
    pub fn version(self, r: CompareResult, v: i64) -> Compare {
        self.finish(CompareTarget::Version, r, TargetUnion::Version(v))
    }
    /// `create_revision <result> v`.
    pub fn create(self, r: CompareResult, v: i64) -> Compare {
        self.finish(CompareTarget::Create, r, TargetUnion::CreateRevision(v))
    }
    /// `mod_revision <result> v`.
    pub fn modrev(self, r: CompareResult, v: i64) -> Compare {
        self.finish(CompareTarget::Mod, r, TargetUnion::ModRevision(v))
    }
    /// `value <result> v`.
    pub fn value(self, r: CompareResult, v: impl AsRef<[u8]>) -> Compare {
        self.finish(
            CompareTarget::Value,
            r,
            TargetUnion::Value(v.as_ref().to_vec()),
        )
    }
    /// `lease <result> v`.
    pub fn lease(self, r: CompareResult, v: i64) -> Compare {
        self.finish(CompareTarget::Lease, r, TargetUnion::Lease(v))
    }
    /// Any target/result/union combination, including inconsistent ones.
    pub fn raw(
        mut self,
        target: CompareTarget,
        r: CompareResult,
        u: Option<TargetUnion>,
    ) -> Compare {
        self.0.target = target as i32;
        self.0.result = r as i32;
        self.0.target_union = u;
        self.0
    }
}

// ---------------------------------------------------------------------------------------------------
// Outcomes, normalization, rendering
// ---------------------------------------------------------------------------------------------------

/// What a server answered to one [`Op`].
#[derive(Clone, PartialEq, Debug)]
pub enum Outcome {
    /// `Range` answer.
    Range(RangeResponse),
    /// `Put` answer.
    Put(PutResponse),
    /// `DeleteRange` answer.
    DeleteRange(DeleteRangeResponse),
    /// `Txn` answer.
    Txn(TxnResponse),
    /// `Compact` answer.
    Compact(CompactionResponse),
    /// `LeaseGrant` answer.
    LeaseGrant(LeaseGrantResponse),
    /// `LeaseRevoke` answer.
    LeaseRevoke(LeaseRevokeResponse),
    /// `LeaseTimeToLive` answer.
    LeaseTimeToLive(LeaseTimeToLiveResponse),
    /// `LeaseLeases` answer.
    LeaseLeases(LeaseLeasesResponse),
    /// First `LeaseKeepAlive` answer.
    LeaseKeepAlive(LeaseKeepAliveResponse),
    /// A gRPC error: code and exact message.
    Error {
        /// gRPC status code.
        code: Code,
        /// Status message, compared byte for byte.
        message: String,
    },
}

impl Outcome {
    /// `header.revision` of a successful answer.
    pub fn revision(&self) -> Option<i64> {
        let h = match self {
            Outcome::Range(r) => r.header.as_ref(),
            Outcome::Put(r) => r.header.as_ref(),
            Outcome::DeleteRange(r) => r.header.as_ref(),
            Outcome::Txn(r) => r.header.as_ref(),
            Outcome::Compact(r) => r.header.as_ref(),
            Outcome::LeaseGrant(r) => r.header.as_ref(),
            Outcome::LeaseRevoke(r) => r.header.as_ref(),
            Outcome::LeaseTimeToLive(r) => r.header.as_ref(),
            Outcome::LeaseLeases(r) => r.header.as_ref(),
            Outcome::LeaseKeepAlive(r) => r.header.as_ref(),
            Outcome::Error { .. } => None,
        };
        h.map(|h| h.revision)
    }

    /// The error message, if this is an error.
    pub fn error(&self) -> Option<(Code, &str)> {
        match self {
            Outcome::Error { code, message } => Some((*code, message)),
            _ => None,
        }
    }

    /// The Range answer or a panic.
    pub fn as_range(&self) -> Result<&RangeResponse, String> {
        match self {
            Outcome::Range(r) => Ok(r),
            other => Err(format!("expected a Range response, got {}", render(other))),
        }
    }

    /// The Txn answer or an error.
    pub fn as_txn(&self) -> Result<&TxnResponse, String> {
        match self {
            Outcome::Txn(r) => Ok(r),
            other => Err(format!("expected a Txn response, got {}", render(other))),
        }
    }

    /// The Put answer or an error.
    pub fn as_put(&self) -> Result<&PutResponse, String> {
        match self {
            Outcome::Put(r) => Ok(r),
            other => Err(format!("expected a Put response, got {}", render(other))),
        }
    }

    /// The DeleteRange answer or an error.
    pub fn as_delete(&self) -> Result<&DeleteRangeResponse, String> {
        match self {
            Outcome::DeleteRange(r) => Ok(r),
            other => Err(format!(
                "expected a DeleteRange response, got {}",
                render(other)
            )),
        }
    }
}

fn normalize_header(h: &mut Option<ResponseHeader>) {
    if let Some(h) = h {
        h.cluster_id = 0;
        h.member_id = 0;
        h.raft_term = 0;
    }
}

/// Zero the member-specific fields (`cluster_id`, `member_id`, `raft_term`) of the top-level header.
///
/// Headers nested in a Txn answer are compared as they are: etcd 3.4 fills only `revision` in the
/// headers of nested Range/Put/DeleteRange answers and leaves nested Txn answers' headers all zero.
///
/// Lease answers: `LeaseLeases` ids and `LeaseTimeToLive` keys are sorted (etcd lists them in
/// an unspecified order); a `LeaseTimeToLive` remaining TTL up to 3 s below the granted TTL
/// counts as "granted - 1" (what both answer right after a grant or keep-alive; the exact value
/// depends on when the request arrives).
pub fn normalize(mut o: Outcome) -> Outcome {
    match &mut o {
        Outcome::Range(r) => normalize_header(&mut r.header),
        Outcome::Put(r) => normalize_header(&mut r.header),
        Outcome::DeleteRange(r) => normalize_header(&mut r.header),
        Outcome::Txn(r) => normalize_header(&mut r.header),
        Outcome::Compact(r) => normalize_header(&mut r.header),
        Outcome::LeaseGrant(r) => normalize_header(&mut r.header),
        Outcome::LeaseRevoke(r) => normalize_header(&mut r.header),
        Outcome::LeaseTimeToLive(r) => {
            normalize_header(&mut r.header);
            r.keys.sort();
            if r.granted_ttl > 3 && r.ttl < r.granted_ttl && r.ttl >= r.granted_ttl - 3 {
                r.ttl = r.granted_ttl - 1;
            }
        }
        Outcome::LeaseLeases(r) => {
            normalize_header(&mut r.header);
            r.leases.sort_by_key(|l| l.id);
        }
        Outcome::LeaseKeepAlive(r) => normalize_header(&mut r.header),
        Outcome::Error { .. } => {}
    }
    o
}

/// Bytes as a readable string: printable ASCII as is, the rest as `\xNN`; long ones abbreviated.
pub fn show_bytes(b: &[u8]) -> String {
    const MAX: usize = 48;
    let mut s = String::new();
    for &c in b.iter().take(MAX) {
        if (0x20..0x7f).contains(&c) && c != b'\\' {
            s.push(c as char);
        } else {
            s.push_str(&format!("\\x{c:02x}"));
        }
    }
    if b.len() > MAX {
        s.push_str(&format!("...({} bytes, fnv64 {:016x})", b.len(), fnv64(b)));
    }
    s
}

fn fnv64(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &c| {
        (h ^ u64::from(c)).wrapping_mul(0x100_0000_01b3)
    })
}

fn bytes_json(b: &[u8]) -> Value {
    Value::String(show_bytes(b))
}

fn header_json(h: &Option<ResponseHeader>) -> Value {
    match h {
        None => Value::Null,
        Some(h) => json!({
            "cluster_id": h.cluster_id, "member_id": h.member_id,
            "revision": h.revision, "raft_term": h.raft_term,
        }),
    }
}

fn kv_json(kv: &KeyValue) -> Value {
    json!({
        "key": bytes_json(&kv.key), "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision, "version": kv.version,
        "value": bytes_json(&kv.value), "lease": kv.lease,
    })
}

fn opt_kv_json(kv: &Option<KeyValue>) -> Value {
    kv.as_ref().map(kv_json).unwrap_or(Value::Null)
}

fn range_resp_json(r: &RangeResponse) -> Value {
    json!({
        "header": header_json(&r.header), "kvs": r.kvs.iter().map(kv_json).collect::<Vec<_>>(),
        "more": r.more, "count": r.count,
    })
}

fn put_resp_json(r: &PutResponse) -> Value {
    json!({ "header": header_json(&r.header), "prev_kv": opt_kv_json(&r.prev_kv) })
}

fn del_resp_json(r: &DeleteRangeResponse) -> Value {
    json!({
        "header": header_json(&r.header), "deleted": r.deleted,
        "prev_kvs": r.prev_kvs.iter().map(kv_json).collect::<Vec<_>>(),
    })
}

fn txn_resp_json(r: &TxnResponse) -> Value {
    let responses: Vec<Value> = r
        .responses
        .iter()
        .map(|op| match &op.response {
            Some(Response::ResponseRange(r)) => json!({ "response_range": range_resp_json(r) }),
            Some(Response::ResponsePut(r)) => json!({ "response_put": put_resp_json(r) }),
            Some(Response::ResponseDeleteRange(r)) => {
                json!({ "response_delete_range": del_resp_json(r) })
            }
            Some(Response::ResponseTxn(r)) => json!({ "response_txn": txn_resp_json(r) }),
            None => Value::Null,
        })
        .collect();
    json!({ "header": header_json(&r.header), "succeeded": r.succeeded, "responses": responses })
}

/// An outcome as JSON (bytes shown as escaped strings).
pub fn outcome_json(o: &Outcome) -> Value {
    match o {
        Outcome::Range(r) => json!({ "range": range_resp_json(r) }),
        Outcome::Put(r) => json!({ "put": put_resp_json(r) }),
        Outcome::DeleteRange(r) => json!({ "delete_range": del_resp_json(r) }),
        Outcome::Txn(r) => json!({ "txn": txn_resp_json(r) }),
        Outcome::Compact(r) => json!({ "compact": { "header": header_json(&r.header) } }),
        Outcome::LeaseGrant(r) => json!({ "lease_grant": {
            "header": header_json(&r.header), "id": r.id, "ttl": r.ttl, "error": r.error,
        } }),
        Outcome::LeaseRevoke(r) => json!({ "lease_revoke": { "header": header_json(&r.header) } }),
        Outcome::LeaseTimeToLive(r) => json!({ "lease_time_to_live": {
            "header": header_json(&r.header), "id": r.id, "ttl": r.ttl,
            "granted_ttl": r.granted_ttl,
            "keys": r.keys.iter().map(|k| bytes_json(k)).collect::<Vec<_>>(),
        } }),
        Outcome::LeaseLeases(r) => json!({ "lease_leases": {
            "header": header_json(&r.header),
            "leases": r.leases.iter().map(|l| l.id).collect::<Vec<_>>(),
        } }),
        Outcome::LeaseKeepAlive(r) => json!({ "lease_keep_alive": {
            "header": header_json(&r.header), "id": r.id, "ttl": r.ttl,
        } }),
        Outcome::Error { code, message } => {
            json!({ "error": { "code": format!("{code:?}"), "message": message } })
        }
    }
}

/// An outcome as one line of JSON.
pub fn render(o: &Outcome) -> String {
    outcome_json(o).to_string()
}

fn enum_name<T: fmt::Debug>(v: i32, f: impl Fn(i32) -> Option<T>) -> Value {
    match f(v) {
        Some(t) => Value::String(format!("{t:?}")),
        None => json!(v),
    }
}

/// Insert `k: v` into `m` unless `v` is a default (keeps rendered requests short).
fn set(m: &mut Map<String, Value>, k: &str, v: Value) {
    let default = match &v {
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_i64() == Some(0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Null => true,
        Value::Object(_) => false,
    };
    if !default {
        m.insert(k.to_owned(), v);
    }
}

fn range_req_json(r: &RangeRequest) -> Value {
    let mut m = Map::new();
    m.insert("key".into(), bytes_json(&r.key));
    set(&mut m, "range_end", bytes_json(&r.range_end));
    set(&mut m, "limit", json!(r.limit));
    set(&mut m, "revision", json!(r.revision));
    if r.sort_order != 0 || r.sort_target != 0 {
        m.insert(
            "sort_order".into(),
            enum_name(r.sort_order, |v| SortOrder::try_from(v).ok()),
        );
        m.insert(
            "sort_target".into(),
            enum_name(r.sort_target, |v| SortTarget::try_from(v).ok()),
        );
    }
    set(&mut m, "serializable", json!(r.serializable));
    set(&mut m, "keys_only", json!(r.keys_only));
    set(&mut m, "count_only", json!(r.count_only));
    set(&mut m, "min_mod_revision", json!(r.min_mod_revision));
    set(&mut m, "max_mod_revision", json!(r.max_mod_revision));
    set(&mut m, "min_create_revision", json!(r.min_create_revision));
    set(&mut m, "max_create_revision", json!(r.max_create_revision));
    Value::Object(m)
}

fn put_req_json(r: &PutRequest) -> Value {
    let mut m = Map::new();
    m.insert("key".into(), bytes_json(&r.key));
    m.insert("value".into(), bytes_json(&r.value));
    set(&mut m, "lease", json!(r.lease));
    set(&mut m, "prev_kv", json!(r.prev_kv));
    set(&mut m, "ignore_value", json!(r.ignore_value));
    set(&mut m, "ignore_lease", json!(r.ignore_lease));
    Value::Object(m)
}

fn del_req_json(r: &DeleteRangeRequest) -> Value {
    let mut m = Map::new();
    m.insert("key".into(), bytes_json(&r.key));
    set(&mut m, "range_end", bytes_json(&r.range_end));
    set(&mut m, "prev_kv", json!(r.prev_kv));
    Value::Object(m)
}

fn compare_json(c: &Compare) -> Value {
    let mut m = Map::new();
    m.insert("key".into(), bytes_json(&c.key));
    set(&mut m, "range_end", bytes_json(&c.range_end));
    m.insert(
        "target".into(),
        enum_name(c.target, |v| CompareTarget::try_from(v).ok()),
    );
    m.insert(
        "result".into(),
        enum_name(c.result, |v| CompareResult::try_from(v).ok()),
    );
    let u = match &c.target_union {
        None => Value::Null,
        Some(TargetUnion::Version(v)) => json!({ "version": v }),
        Some(TargetUnion::CreateRevision(v)) => json!({ "create_revision": v }),
        Some(TargetUnion::ModRevision(v)) => json!({ "mod_revision": v }),
        Some(TargetUnion::Value(v)) => json!({ "value": bytes_json(v) }),
        Some(TargetUnion::Lease(v)) => json!({ "lease": v }),
    };
    m.insert("target_union".into(), u);
    Value::Object(m)
}

fn request_op_json(op: &RequestOp) -> Value {
    match &op.request {
        Some(Request::RequestRange(r)) => json!({ "range": range_req_json(r) }),
        Some(Request::RequestPut(r)) => json!({ "put": put_req_json(r) }),
        Some(Request::RequestDeleteRange(r)) => json!({ "delete_range": del_req_json(r) }),
        Some(Request::RequestTxn(r)) => json!({ "txn": txn_req_json(r) }),
        None => json!({ "empty_request_op": true }),
    }
}

fn txn_req_json(r: &TxnRequest) -> Value {
    let ops = |v: &[RequestOp]| -> Value { Value::Array(v.iter().map(request_op_json).collect()) };
    json!({
        "compare": r.compare.iter().map(compare_json).collect::<Vec<_>>(),
        "success": ops(&r.success), "failure": ops(&r.failure),
    })
}

/// An op as JSON (bytes shown as escaped strings, default fields left out).
pub fn op_json(op: &Op) -> Value {
    match op {
        Op::Put(r) => json!({ "put": put_req_json(r) }),
        Op::Range(r) => json!({ "range": range_req_json(r) }),
        Op::DeleteRange(r) => json!({ "delete_range": del_req_json(r) }),
        Op::Txn(r) => json!({ "txn": txn_req_json(r) }),
        Op::Compact(r) => json!({ "compact": { "revision": r.revision, "physical": r.physical } }),
        Op::LeaseGrant(r) => json!({ "lease_grant": { "id": r.id, "ttl": r.ttl } }),
        Op::LeaseRevoke(r) => json!({ "lease_revoke": { "id": r.id } }),
        Op::LeaseTimeToLive(r) => {
            json!({ "lease_time_to_live": { "id": r.id, "keys": r.keys } })
        }
        Op::LeaseLeases(_) => json!({ "lease_leases": {} }),
        Op::LeaseKeepAlive(r) => json!({ "lease_keep_alive": { "id": r.id } }),
    }
}

/// Paths (`a.b[2].c`) where two JSON values differ, with both sides.
pub fn json_diff(a: &Value, b: &Value) -> Vec<String> {
    fn walk(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let p = format!("{path}.{k}");
                    walk(
                        &p,
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                        out,
                    );
                }
            }
            (Value::Array(x), Value::Array(y)) => {
                if x.len() != y.len() {
                    out.push(format!("{path}: length {} vs {}", x.len(), y.len()));
                }
                for (i, (p, q)) in x.iter().zip(y).enumerate() {
                    walk(&format!("{path}[{i}]"), p, q, out);
                }
            }
            _ if a != b => out.push(format!("{path}: {a} vs {b}")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", a, b, &mut out);
    out
}

// ---------------------------------------------------------------------------------------------------
// Execution
// ---------------------------------------------------------------------------------------------------

/// The gRPC clients of one server.
#[derive(Clone)]
pub struct Conn {
    /// `KV` service.
    pub kv: KvClient<Channel>,
    /// `Lease` service.
    pub lease: LeaseClient<Channel>,
}

impl Conn {
    /// Connect to `url`.
    pub async fn connect(url: &str) -> Conn {
        Conn {
            kv: ballast_testkit::kv_client(url).await,
            lease: ballast_testkit::lease_client(url).await,
        }
    }
}

/// Send `op` and return the raw (unnormalized) outcome.
pub async fn exec(conn: &mut Conn, op: &Op) -> Outcome {
    fn err(s: tonic::Status) -> Outcome {
        Outcome::Error {
            code: s.code(),
            message: s.message().to_owned(),
        }
    }
    let kv = &mut conn.kv;
    match op.clone() {
        Op::Put(r) => kv.put(r).await.map(|r| Outcome::Put(r.into_inner())),
        Op::Range(r) => kv.range(r).await.map(|r| Outcome::Range(r.into_inner())),
        Op::DeleteRange(r) => kv
            .delete_range(r)
            .await
            .map(|r| Outcome::DeleteRange(r.into_inner())),
        Op::Txn(r) => kv.txn(r).await.map(|r| Outcome::Txn(r.into_inner())),
        Op::Compact(r) => kv
            .compact(r)
            .await
            .map(|r| Outcome::Compact(r.into_inner())),
        Op::LeaseGrant(r) => conn
            .lease
            .lease_grant(r)
            .await
            .map(|r| Outcome::LeaseGrant(r.into_inner())),
        Op::LeaseRevoke(r) => conn
            .lease
            .lease_revoke(r)
            .await
            .map(|r| Outcome::LeaseRevoke(r.into_inner())),
        Op::LeaseTimeToLive(r) => conn
            .lease
            .lease_time_to_live(r)
            .await
            .map(|r| Outcome::LeaseTimeToLive(r.into_inner())),
        Op::LeaseLeases(r) => conn
            .lease
            .lease_leases(r)
            .await
            .map(|r| Outcome::LeaseLeases(r.into_inner())),
        Op::LeaseKeepAlive(r) => match conn.lease.lease_keep_alive(tokio_stream::iter([r])).await {
            Ok(resp) => match resp.into_inner().message().await {
                Ok(Some(m)) => Ok(Outcome::LeaseKeepAlive(m)),
                Ok(None) => Ok(Outcome::Error {
                    code: Code::Ok,
                    message: "<keep-alive stream ended without an answer>".to_owned(),
                }),
                Err(s) => Err(s),
            },
            Err(s) => Err(s),
        },
    }
    .unwrap_or_else(err)
}

/// A check on the reference's (normalized) outcome.
pub type Check = Box<dyn Fn(&Outcome) -> Result<(), String> + Send + Sync>;

/// One op of a script plus what etcd is expected to answer.
pub struct Step {
    /// The request.
    pub op: Op,
    /// Checks on the reference outcome (all must pass).
    pub checks: Vec<Check>,
    /// The script's key prefix (for [`Step::keys`]).
    prefix: String,
}

impl Step {
    /// Expect the reference to answer `code` with exactly `message`.
    pub fn err(&mut self, code: Code, message: &'static str) -> &mut Self {
        self.checks.push(Box::new(move |o| match o {
            Outcome::Error {
                code: c,
                message: m,
            } if *c == code && m == message => Ok(()),
            other => Err(format!(
                "expected error {code:?} {message:?}, got {}",
                render(other)
            )),
        }));
        self
    }

    /// Expect a successful answer.
    pub fn ok(&mut self) -> &mut Self {
        self.checks.push(Box::new(|o| match o {
            Outcome::Error { .. } => Err(format!("expected success, got {}", render(o))),
            _ => Ok(()),
        }));
        self
    }

    /// Expect a Range answer listing exactly these keys (names under the script prefix), in order.
    pub fn keys(&mut self, names: &[&str]) -> &mut Self {
        let want: Vec<Vec<u8>> = names
            .iter()
            .map(|n| format!("{}{n}", self.prefix).into_bytes())
            .collect();
        self.check(move |o| {
            let got: Vec<Vec<u8>> = o.as_range()?.kvs.iter().map(|kv| kv.key.clone()).collect();
            let show = |v: &[Vec<u8>]| {
                format!("{:?}", v.iter().map(|k| show_bytes(k)).collect::<Vec<_>>())
            };
            ensure(got == want, || {
                format!("keys {} != expected {}", show(&got), show(&want))
            })
        })
    }

    /// Any other expectation.
    pub fn check(
        &mut self,
        f: impl Fn(&Outcome) -> Result<(), String> + Send + Sync + 'static,
    ) -> &mut Self {
        self.checks.push(Box::new(f));
        self
    }
}

/// Assert helper for checks: `ensure(cond, || "what went wrong")`.
pub fn ensure(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

/// What a script builder gets: its key prefix and the revision when it starts.
pub struct Ctx {
    /// Unique key prefix of this script (`c<N>/`).
    pub prefix: String,
    /// Store revision before the script's first op (the same on both servers).
    pub base: i64,
    steps: Vec<Step>,
}

impl Ctx {
    /// `prefix + name`.
    pub fn k(&self, name: &str) -> Vec<u8> {
        let mut k = self.prefix.clone().into_bytes();
        k.extend_from_slice(name.as_bytes());
        k
    }

    /// End of this script's key space (every key of the script is `< end()`).
    pub fn end(&self) -> Vec<u8> {
        prefix_end(self.prefix.as_bytes())
    }

    /// `base + n`: the revision of the script's `n`-th revision-consuming write.
    pub fn rev(&self, n: i64) -> i64 {
        self.base + n
    }

    /// Append an op; returns its step for adding expectations.
    pub fn op(&mut self, op: impl Into<Op>) -> &mut Step {
        self.steps.push(Step {
            op: op.into(),
            checks: Vec::new(),
            prefix: self.prefix.clone(),
        });
        self.steps.last_mut().expect("just pushed")
    }
}

/// A named list of steps, built at run time.
pub struct Script {
    /// Shown in reports.
    pub name: String,
    build: Box<dyn Fn(&mut Ctx) + Send + Sync>,
}

impl Script {
    /// A script whose steps `build` appends to the context.
    pub fn new(
        name: impl Into<String>,
        build: impl Fn(&mut Ctx) + Send + Sync + 'static,
    ) -> Script {
        Script {
            name: name.into(),
            build: Box::new(build),
        }
    }
}

/// Why a script did not pass.
#[derive(Debug, Clone)]
pub enum RunError {
    /// The servers were already at different revisions (an earlier mismatch); nothing was run.
    Diverged(String),
    /// An answer differed between the servers, or the reference broke a script expectation.
    Mismatch(String),
}

impl RunError {
    /// The report.
    pub fn into_message(self) -> String {
        match self {
            RunError::Diverged(m) | RunError::Mismatch(m) => m,
        }
    }
}

/// Where generated ops are: key prefix, revision at the start, current revision.
#[derive(Debug, Clone)]
pub struct Cursor {
    /// The case's key prefix.
    pub prefix: String,
    /// Store revision before the first op.
    pub base: i64,
    /// Highest header revision seen so far.
    pub current: i64,
}

impl Cursor {
    /// `prefix + name`.
    pub fn k(&self, name: &str) -> Vec<u8> {
        format!("{}{name}", self.prefix).into_bytes()
    }
}

struct Position<'a> {
    script: &'a str,
    prefix: &'a str,
    base: i64,
    index: usize,
}

/// `None` when the (normalized) outcomes are equal, else a report with the differing fields.
pub fn difference(r: &Outcome, c: &Outcome) -> Option<String> {
    if r == c {
        return None;
    }
    let diff = json_diff(&outcome_json(r), &outcome_json(c));
    Some(if diff.is_empty() {
        format!("outcomes differ (beyond the JSON view):\n  reference: {r:?}\n  candidate: {c:?}")
    } else {
        format!(
            "outcomes differ:\n  reference: {}\n  candidate: {}\n  differing fields (reference vs candidate):\n    {}",
            render(r),
            render(c),
            diff.join("\n    ")
        )
    })
}

/// Connected clients for both servers of a [`CompatPair`].
pub struct Clients {
    /// Clients of the reference etcd.
    pub reference: Conn,
    /// Clients of the candidate.
    pub candidate: Conn,
    /// `etcd` vs `ballast` / `etcd`, for reports.
    pub label: String,
    diverged: Option<String>,
}

/// `BALLAST_COMPAT_DUMP=1`: print every op and the reference's answer (to learn etcd's behaviour).
fn dump() -> bool {
    std::env::var_os("BALLAST_COMPAT_DUMP").is_some()
}

static PREFIX_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh key prefix (unique in this process).
pub fn fresh_prefix(tag: &str) -> String {
    format!("{tag}{}/", PREFIX_COUNTER.fetch_add(1, Ordering::Relaxed))
}

impl Clients {
    /// Connect to both servers of `pair`.
    pub async fn connect(pair: &CompatPair) -> Clients {
        Clients {
            reference: Conn::connect(&pair.reference.client_url()).await,
            candidate: Conn::connect(&pair.candidate.client_url()).await,
            label: format!(
                "reference {} ({}) vs candidate {} ({})",
                pair.reference.kind(),
                pair.reference.client_url(),
                pair.candidate.kind(),
                pair.candidate.client_url()
            ),
            diverged: None,
        }
    }

    /// Run `op` on both servers concurrently; normalized outcomes `(reference, candidate)`.
    pub async fn both(&mut self, op: &Op) -> (Outcome, Outcome) {
        let (r, c) = tokio::join!(exec(&mut self.reference, op), exec(&mut self.candidate, op));
        (normalize(r), normalize(c))
    }

    /// The current revision on both servers (via a Range that matches nothing).
    pub async fn revisions(&mut self) -> (Option<i64>, Option<i64>) {
        let probe = Op::Range(RangeRequest {
            key: b"\xff\xff-ballast-no-such-key".to_vec(),
            ..Default::default()
        });
        let (r, c) = self.both(&probe).await;
        (r.revision(), c.revision())
    }

    /// Run one script on both servers. `Err` carries a full mismatch report. After a mismatch in a
    /// write the servers may have diverged; later scripts then fail fast with a pointer to it.
    pub async fn run(&mut self, script: &Script) -> Result<Vec<(Outcome, Outcome)>, String> {
        self.run_with_prefix(script, &fresh_prefix("c"))
            .await
            .map_err(RunError::into_message)
    }

    /// [`Clients::run`] with a chosen key prefix.
    pub async fn run_with_prefix(
        &mut self,
        script: &Script,
        prefix: &str,
    ) -> Result<Vec<(Outcome, Outcome)>, RunError> {
        let base = self.begin(&script.name).await?;
        let mut ctx = Ctx {
            prefix: prefix.to_owned(),
            base,
            steps: Vec::new(),
        };
        (script.build)(&mut ctx);
        let mut results = Vec::with_capacity(ctx.steps.len());
        for (i, step) in ctx.steps.iter().enumerate() {
            let at = Position {
                script: &script.name,
                prefix,
                base,
                index: i,
            };
            let history: Vec<&Op> = ctx.steps[..i].iter().map(|s| &s.op).collect();
            results.push(self.step(&at, &step.op, &step.checks, &history).await?);
        }
        Ok(results)
    }

    /// Run `n` ops made on the fly by `make(index, cursor)`, where the cursor knows the current
    /// revision (the highest header revision seen so far), so generated ops can aim at recent
    /// revisions.
    pub async fn run_generated(
        &mut self,
        name: &str,
        prefix: &str,
        n: usize,
        mut make: impl FnMut(usize, &Cursor) -> Op,
    ) -> Result<(), RunError> {
        let base = self.begin(name).await?;
        let mut cursor = Cursor {
            prefix: prefix.to_owned(),
            base,
            current: base,
        };
        let mut history: Vec<Op> = Vec::with_capacity(n);
        for i in 0..n {
            let op = make(i, &cursor);
            let at = Position {
                script: name,
                prefix,
                base,
                index: i,
            };
            let refs: Vec<&Op> = history.iter().collect();
            let (r, _) = self.step(&at, &op, &[], &refs).await?;
            if let Some(rev) = r.revision() {
                cursor.current = cursor.current.max(rev);
            }
            history.push(op);
        }
        Ok(())
    }

    /// Check that both servers are at the same revision; returns it.
    async fn begin(&mut self, name: &str) -> Result<i64, RunError> {
        if let Some(first) = &self.diverged {
            return Err(RunError::Diverged(format!(
                "script {name:?} not run: the servers diverged earlier ({first})"
            )));
        }
        let (rr, cr) = self.revisions().await;
        match (rr, cr) {
            (Some(r), Some(c)) if r == c => Ok(r),
            _ => {
                let why = format!(
                    "before script {name:?}: store revision {rr:?} on the reference vs {cr:?} on the candidate"
                );
                self.diverged = Some(why.clone());
                Err(RunError::Diverged(format!(
                    "servers diverged {why}\n{}",
                    self.label
                )))
            }
        }
    }

    /// Run one op on both servers, compare, check the reference answer.
    async fn step(
        &mut self,
        at: &Position<'_>,
        op: &Op,
        checks: &[Check],
        history: &[&Op],
    ) -> Result<(Outcome, Outcome), RunError> {
        let (raw, c) = tokio::join!(exec(&mut self.reference, op), exec(&mut self.candidate, op));
        if dump() {
            eprintln!(
                "[{}] #{}: {op}\n    -> {}",
                at.script,
                at.index,
                render(&raw)
            );
        }
        let (r, c) = (normalize(raw), normalize(c));
        let mut problems = Vec::new();
        if let Some(diff) = difference(&r, &c) {
            problems.push(diff);
        }
        for check in checks {
            if let Err(e) = check(&r) {
                problems.push(format!(
                    "the reference etcd answered unlike the script expects (fix the script): {e}"
                ));
            }
        }
        if problems.is_empty() {
            return Ok((r, c));
        }
        let read_only = matches!(
            op,
            Op::Range(_) | Op::LeaseTimeToLive(_) | Op::LeaseLeases(_) | Op::LeaseKeepAlive(_)
        );
        if r != c && !read_only && r.revision() != c.revision() {
            self.diverged = Some(format!("script {:?} op #{}", at.script, at.index));
        }
        let history: Vec<String> = history
            .iter()
            .enumerate()
            .map(|(j, op)| format!("  #{j}: {op}"))
            .collect();
        Err(RunError::Mismatch(format!(
            "script {:?} (prefix {:?}, base revision {}), op #{}: {op}\n{}\n{}\nearlier ops of the script:\n{}",
            at.script,
            at.prefix,
            at.base,
            at.index,
            problems.join("\n"),
            self.label,
            if history.is_empty() {
                "  (none)".to_owned()
            } else {
                history.join("\n")
            }
        )))
    }

    /// Run every script; panic with all mismatch reports at the end.
    pub async fn run_all(&mut self, scripts: &[Script]) {
        let mut failures = Vec::new();
        for s in scripts {
            if let Err(e) = self.run(s).await {
                failures.push(e);
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} scripts failed:\n\n{}",
            failures.len(),
            scripts.len(),
            failures.join("\n\n")
        );
    }
}
