//! etcd's KV semantics on top of the MVCC store: request validation, Range shaping, Put/Delete
//! with their options, and Txn (compares, branch selection, nested txns, checks before writing).
//!
//! Owns the translation between `etcdserverpb` messages and `ballast_mvcc` calls. It runs both in
//! the apply loop (writes, against a [`WriteTxn`]) and in the request path (reads and read-only
//! txns, against a [`ReadView`]), through the small [`KvRead`]/[`KvWrite`] traits. It must never
//! talk to Raft or the network.

use ballast_mvcc::{
    KeyValue, MvccError, RangeOptions, RangeResult, ReadView, SortOrder, SortTarget, WriteTxn,
};
use ballast_proto::etcdserverpb::{
    compare, range_request, request_op, response_op, Compare, DeleteRangeRequest,
    DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use ballast_proto::mvccpb;

use crate::error::ServerError;
use crate::lease::Lessor;

/// Reads the store at one revision (a snapshot, or a write txn seeing its own writes).
pub trait KvRead {
    fn range(&mut self, opts: &RangeOptions) -> Result<RangeResult, MvccError>;
    /// Revision the reads run at.
    fn rev(&self) -> i64;
    fn compact_rev(&self) -> i64;
}

/// Writes inside the apply loop's current etcd-level transaction.
pub trait KvWrite: KvRead {
    fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> Result<(), MvccError>;
    fn delete_range(&mut self, key: &[u8], range_end: &[u8]) -> Result<i64, MvccError>;
    /// Revision the current writes will get.
    fn write_rev(&self) -> i64;
    /// Whether a put may attach lease `lease` (0 = no lease, always allowed).
    fn lease_exists(&self, lease: i64) -> bool;
}

impl KvRead for ReadView {
    fn range(&mut self, opts: &RangeOptions) -> Result<RangeResult, MvccError> {
        ReadView::range(self, opts)
    }
    fn rev(&self) -> i64 {
        self.revision()
    }
    fn compact_rev(&self) -> i64 {
        self.compact_revision()
    }
}

/// The apply loop's view of one etcd-level write transaction: tracks whether it has written, so
/// reads and headers see the revision etcd would report (its own writes visible at `rev + 1`).
/// Puts check their lease against the lessor.
pub struct Writer<'a, 'b> {
    txn: &'a mut WriteTxn<'b>,
    dirty: bool,
    compact_rev: i64,
    leases: &'a Lessor,
}

impl<'a, 'b> Writer<'a, 'b> {
    pub fn new(txn: &'a mut WriteTxn<'b>, compact_rev: i64, leases: &'a Lessor) -> Self {
        Writer {
            txn,
            dirty: false,
            compact_rev,
            leases,
        }
    }
    pub fn txn(&mut self) -> &mut WriteTxn<'b> {
        self.txn
    }
}

impl KvRead for Writer<'_, '_> {
    fn range(&mut self, opts: &RangeOptions) -> Result<RangeResult, MvccError> {
        self.txn.range(opts)
    }
    fn rev(&self) -> i64 {
        self.txn.revision() + self.dirty as i64
    }
    fn compact_rev(&self) -> i64 {
        self.compact_rev
    }
}

impl KvWrite for Writer<'_, '_> {
    fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> Result<(), MvccError> {
        self.txn.put(key, value, lease)?;
        self.dirty = true;
        Ok(())
    }
    fn delete_range(&mut self, key: &[u8], range_end: &[u8]) -> Result<i64, MvccError> {
        let n = self.txn.delete_range(key, range_end)?.len() as i64;
        self.dirty |= n > 0;
        Ok(n)
    }
    fn write_rev(&self) -> i64 {
        self.txn.revision() + 1
    }
    fn lease_exists(&self, lease: i64) -> bool {
        lease == 0 || self.leases.exists(lease)
    }
}

pub fn to_pb_kv(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

// ---------------------------------------------------------------------------------------------
// Validation done before a request is proposed (etcd's v3rpc checks).

pub fn check_range(r: &RangeRequest) -> Result<(), ServerError> {
    if r.key.is_empty() {
        return Err(ServerError::EmptyKey);
    }
    // etcd 3.5+ (3.4 crashes on an unknown target).
    if range_request::SortOrder::try_from(r.sort_order).is_err()
        || range_request::SortTarget::try_from(r.sort_target).is_err()
    {
        return Err(ServerError::InvalidSortOption);
    }
    Ok(())
}

pub fn check_put(r: &PutRequest) -> Result<(), ServerError> {
    if r.key.is_empty() {
        return Err(ServerError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(ServerError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(ServerError::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete(r: &DeleteRangeRequest) -> Result<(), ServerError> {
    if r.key.is_empty() {
        return Err(ServerError::EmptyKey);
    }
    Ok(())
}

/// etcd's txn validation: op-count limit (per level, shrinking with depth), empty keys, empty
/// ops, then overlapping writes in either branch.
/// Txn nesting Ballast accepts: the protobuf decoder's recursion limit (100 messages, two per
/// level, one more for the Raft envelope) caps what can be proposed.
pub const MAX_TXN_DEPTH: usize = 48;

fn txn_depth(r: &TxnRequest) -> usize {
    1 + r
        .success
        .iter()
        .chain(r.failure.iter())
        .filter_map(|op| match &op.request {
            Some(request_op::Request::RequestTxn(t)) => Some(txn_depth(t)),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

pub fn check_txn(r: &TxnRequest, max_txn_ops: usize) -> Result<(), ServerError> {
    check_txn_ops(r, max_txn_ops as i64)?;
    if txn_depth(r) > MAX_TXN_DEPTH {
        return Err(ServerError::TxnTooDeep);
    }
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn check_txn_ops(r: &TxnRequest, max_txn_ops: i64) -> Result<(), ServerError> {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len()) as i64;
    if opc > max_txn_ops {
        return Err(ServerError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(ServerError::EmptyKey);
    }
    for op in r.success.iter().chain(r.failure.iter()) {
        match &op.request {
            Some(request_op::Request::RequestRange(x)) => check_range(x)?,
            Some(request_op::Request::RequestPut(x)) => check_put(x)?,
            Some(request_op::Request::RequestDeleteRange(x)) => check_delete(x)?,
            Some(request_op::Request::RequestTxn(x)) => check_txn_ops(x, max_txn_ops - opc)?,
            None => return Err(ServerError::KeyNotFound),
        }
    }
    Ok(())
}

/// A deleted interval `[start, end)`; a single-key delete is the point `start`.
struct Interval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Interval {
    fn contains(&self, k: &[u8]) -> bool {
        match &self.end {
            None => self.start == k,
            // etcd builds the interval from the raw range_end, so `[key, "\0")` covers nothing
            // but the empty key; we keep that exact behaviour.
            Some(end) => k >= self.start.as_slice() && k < end.as_slice(),
        }
    }
}

/// Returns (puts, deletes) of this level and below, or `DuplicateKey` when a put overlaps another
/// put or a delete of the same branch (then/else of one nested txn may put the same key).
fn check_intervals(
    reqs: &[RequestOp],
) -> Result<(std::collections::HashSet<Vec<u8>>, Vec<Interval>), ServerError> {
    use std::collections::HashSet;
    let mut dels: Vec<Interval> = Vec::new();
    for req in reqs {
        if let Some(request_op::Request::RequestDeleteRange(d)) = &req.request {
            dels.push(Interval {
                start: d.key.clone(),
                end: (!d.range_end.is_empty()).then(|| d.range_end.clone()),
            });
        }
    }
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for req in reqs {
        let Some(request_op::Request::RequestTxn(t)) = &req.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.iter().any(|d| d.contains(k)) {
                return Err(ServerError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in puts_else {
            if puts.contains(&k) && !puts_then.contains(&k) {
                return Err(ServerError::DuplicateKey);
            }
            if dels.iter().any(|d| d.contains(&k)) {
                return Err(ServerError::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for req in reqs {
        let Some(request_op::Request::RequestPut(p)) = &req.request else {
            continue;
        };
        if puts.contains(&p.key) || dels.iter().any(|d| d.contains(&p.key)) {
            return Err(ServerError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

/// True when no branch (at any depth) writes.
pub fn txn_is_read_only(r: &TxnRequest) -> bool {
    r.success
        .iter()
        .chain(r.failure.iter())
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(_)) | None => true,
            Some(request_op::Request::RequestTxn(t)) => txn_is_read_only(t),
            _ => false,
        })
}

// ---------------------------------------------------------------------------------------------
// Range.

pub(crate) fn range_options(r: &RangeRequest) -> RangeOptions {
    let sort_order = match range_request::SortOrder::try_from(r.sort_order) {
        Ok(range_request::SortOrder::Ascend) => SortOrder::Ascend,
        Ok(range_request::SortOrder::Descend) => SortOrder::Descend,
        _ => SortOrder::None,
    };
    let sort_target = match range_request::SortTarget::try_from(r.sort_target) {
        Ok(range_request::SortTarget::Version) => SortTarget::Version,
        Ok(range_request::SortTarget::Create) => SortTarget::Create,
        Ok(range_request::SortTarget::Mod) => SortTarget::Mod,
        Ok(range_request::SortTarget::Value) => SortTarget::Value,
        _ => SortTarget::Key,
    };
    RangeOptions {
        key: r.key.clone(),
        range_end: r.range_end.clone(),
        limit: r.limit,
        revision: r.revision,
        sort_order,
        sort_target,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    }
}

pub fn range(kv: &mut impl KvRead, r: &RangeRequest) -> Result<RangeResponse, ServerError> {
    let res = kv.range(&range_options(r))?;
    Ok(RangeResponse {
        header: header(res.revision),
        kvs: res.kvs.into_iter().map(to_pb_kv).collect(),
        more: res.more,
        count: res.count,
    })
}

// ---------------------------------------------------------------------------------------------
// Writes.

fn prev_kv(kv: &mut impl KvRead, key: &[u8]) -> Result<Option<KeyValue>, ServerError> {
    Ok(kv.range(&RangeOptions::key(key))?.kvs.into_iter().next())
}

/// Checks a put can be applied (ignore_* needs an existing key; the lease must exist).
fn check_put_applies(kv: &mut impl KvWrite, p: &PutRequest) -> Result<(), ServerError> {
    if (p.ignore_value || p.ignore_lease) && prev_kv(kv, &p.key)?.is_none() {
        return Err(ServerError::KeyNotFound);
    }
    if !kv.lease_exists(p.lease) {
        return Err(ServerError::LeaseNotFound);
    }
    Ok(())
}

pub fn put(kv: &mut impl KvWrite, p: &PutRequest) -> Result<PutResponse, ServerError> {
    let prev = if p.ignore_value || p.ignore_lease || p.prev_kv {
        prev_kv(kv, &p.key)?
    } else {
        None
    };
    if (p.ignore_value || p.ignore_lease) && prev.is_none() {
        return Err(ServerError::KeyNotFound);
    }
    let value = match (&prev, p.ignore_value) {
        (Some(prev), true) => prev.value.as_slice(),
        _ => p.value.as_slice(),
    };
    let lease = match (&prev, p.ignore_lease) {
        (Some(prev), true) => prev.lease,
        _ => p.lease,
    };
    let rev = kv.write_rev();
    kv.put(&p.key, value, lease)?;
    Ok(PutResponse {
        header: header(rev),
        prev_kv: if p.prev_kv { prev.map(to_pb_kv) } else { None },
    })
}

/// A top-level Put: validates what depends on the store, then writes.
pub fn apply_put(kv: &mut impl KvWrite, p: &PutRequest) -> Result<PutResponse, ServerError> {
    if !kv.lease_exists(p.lease) {
        return Err(ServerError::LeaseNotFound);
    }
    put(kv, p)
}

pub fn delete_range(
    kv: &mut impl KvWrite,
    d: &DeleteRangeRequest,
) -> Result<DeleteRangeResponse, ServerError> {
    let prev_kvs = if d.prev_kv {
        let opts = RangeOptions {
            key: d.key.clone(),
            range_end: d.range_end.clone(),
            ..Default::default()
        };
        kv.range(&opts)?.kvs.into_iter().map(to_pb_kv).collect()
    } else {
        Vec::new()
    };
    let deleted = kv.delete_range(&d.key, &d.range_end)?;
    let rev = if deleted > 0 {
        kv.write_rev()
    } else {
        kv.rev()
    };
    Ok(DeleteRangeResponse {
        header: header(rev),
        deleted,
        prev_kvs,
    })
}

// ---------------------------------------------------------------------------------------------
// Txn.

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use compare::{CompareResult, CompareTarget, TargetUnion};
    // An unknown target compares as equal, as on etcd.
    let Ok(target) = CompareTarget::try_from(c.target) else {
        return !matches!(
            CompareResult::try_from(c.result),
            Ok(CompareResult::NotEqual | CompareResult::Greater | CompareResult::Less)
        );
    };
    let ord = match target {
        CompareTarget::Value => {
            let v: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(v)
        }
        CompareTarget::Create => {
            let v = match c.target_union {
                Some(TargetUnion::CreateRevision(v)) => v,
                _ => 0,
            };
            kv.create_revision.cmp(&v)
        }
        CompareTarget::Mod => {
            let v = match c.target_union {
                Some(TargetUnion::ModRevision(v)) => v,
                _ => 0,
            };
            kv.mod_revision.cmp(&v)
        }
        CompareTarget::Version => {
            let v = match c.target_union {
                Some(TargetUnion::Version(v)) => v,
                _ => 0,
            };
            kv.version.cmp(&v)
        }
        CompareTarget::Lease => {
            let v = match c.target_union {
                Some(TargetUnion::Lease(v)) => v,
                _ => 0,
            };
            kv.lease.cmp(&v)
        }
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord.is_eq(),
        Ok(CompareResult::NotEqual) => ord.is_ne(),
        Ok(CompareResult::Greater) => ord.is_gt(),
        Ok(CompareResult::Less) => ord.is_lt(),
        // An unknown result compares true, as on etcd.
        Err(_) => true,
    }
}

fn apply_compare(kv: &mut impl KvRead, c: &Compare) -> bool {
    let opts = RangeOptions {
        key: c.key.clone(),
        range_end: c.range_end.clone(),
        ..Default::default()
    };
    let Ok(res) = kv.range(&opts) else {
        return false;
    };
    if res.kvs.is_empty() {
        if c.target == compare::CompareTarget::Value as i32 {
            // A missing key has no value to compare: always false.
            return false;
        }
        return compare_kv(c, &KeyValue::default());
    }
    res.kvs.iter().all(|k| compare_kv(c, k))
}

/// The branch taken at each txn, in depth-first order of the taken path (etcd's "txn path").
fn compare_to_path(kv: &mut impl KvRead, t: &TxnRequest, path: &mut Vec<bool>) {
    let ok = t.compare.iter().all(|c| apply_compare(kv, c));
    path.push(ok);
    let ops = if ok { &t.success } else { &t.failure };
    for op in ops {
        if let Some(request_op::Request::RequestTxn(nested)) = &op.request {
            compare_to_path(kv, nested, path);
        }
    }
}

/// Checks every put on the taken path (ignore_*, lease), in op order through nested txns.
fn check_path_puts(
    kv: &mut impl KvWrite,
    t: &TxnRequest,
    path: &[bool],
) -> Result<(), ServerError> {
    walk_path(t, path, &mut 0, &mut |op| match op {
        request_op::Request::RequestPut(p) => check_put_applies(kv, p),
        _ => Ok(()),
    })
}

/// Checks every range on the taken path. With [`check_path_puts`] first for a txn that writes,
/// every op is checked before anything is written, as etcd does, so a failing txn consumes no
/// revision.
fn check_path_ranges(
    kv: &mut impl KvRead,
    t: &TxnRequest,
    path: &[bool],
) -> Result<(), ServerError> {
    let (rev, compact_rev) = (kv.rev(), kv.compact_rev());
    walk_path(t, path, &mut 0, &mut |op| match op {
        // etcd checks a txn's ranges against the store's first revision (-1 before any
        // compaction), so a negative revision is "compacted" here although a plain Range
        // reads it as "latest".
        request_op::Request::RequestRange(r) if r.revision != 0 && r.revision > rev => {
            Err(ServerError::FutureRev)
        }
        request_op::Request::RequestRange(r) if r.revision != 0 && r.revision < compact_rev => {
            Err(ServerError::Compacted)
        }
        _ => Ok(()),
    })
}

/// Calls `f` on every non-txn op of the branches the txn path takes, depth first.
fn walk_path(
    t: &TxnRequest,
    path: &[bool],
    pos: &mut usize,
    f: &mut impl FnMut(&request_op::Request) -> Result<(), ServerError>,
) -> Result<(), ServerError> {
    let ok = path[*pos];
    *pos += 1;
    let ops = if ok { &t.success } else { &t.failure };
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestTxn(nested)) => walk_path(nested, path, pos, f)?,
            Some(other) => f(other)?,
            None => {}
        }
    }
    Ok(())
}

fn run_ops_read(
    kv: &mut impl KvRead,
    t: &TxnRequest,
    path: &[bool],
    pos: &mut usize,
) -> Result<TxnResponse, ServerError> {
    let ok = path[*pos];
    *pos += 1;
    let ops = if ok { &t.success } else { &t.failure };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                Some(response_op::Response::ResponseRange(range(kv, r)?))
            }
            Some(request_op::Request::RequestTxn(nested)) => Some(
                response_op::Response::ResponseTxn(run_ops_read(kv, nested, path, pos)?),
            ),
            _ => None,
        };
        responses.push(ResponseOp { response });
    }
    Ok(TxnResponse {
        header: Some(ResponseHeader::default()),
        succeeded: ok,
        responses,
    })
}

fn run_ops_write(
    kv: &mut impl KvWrite,
    t: &TxnRequest,
    path: &[bool],
    pos: &mut usize,
) -> Result<TxnResponse, ServerError> {
    let ok = path[*pos];
    *pos += 1;
    let ops = if ok { &t.success } else { &t.failure };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                response_op::Response::ResponseRange(range(kv, r)?)
            }
            Some(request_op::Request::RequestPut(p)) => {
                response_op::Response::ResponsePut(put(kv, p)?)
            }
            Some(request_op::Request::RequestDeleteRange(d)) => {
                response_op::Response::ResponseDeleteRange(delete_range(kv, d)?)
            }
            Some(request_op::Request::RequestTxn(nested)) => {
                response_op::Response::ResponseTxn(run_ops_write(kv, nested, path, pos)?)
            }
            None => {
                responses.push(ResponseOp { response: None });
                continue;
            }
        };
        responses.push(ResponseOp {
            response: Some(response),
        });
    }
    // Nested txn headers carry no revision of their own in etcd; the outer one is set by the caller.
    Ok(TxnResponse {
        header: Some(ResponseHeader::default()),
        succeeded: ok,
        responses,
    })
}

/// A txn with no writes, against a read snapshot.
pub fn txn_read(kv: &mut impl KvRead, t: &TxnRequest) -> Result<TxnResponse, ServerError> {
    let mut path = Vec::new();
    compare_to_path(kv, t, &mut path);
    check_path_ranges(kv, t, &path)?;
    let mut resp = run_ops_read(kv, t, &path, &mut 0)?;
    resp.header = header(kv.rev());
    Ok(resp)
}

/// A txn inside the apply loop. The caller ends the store txn; the returned header revision is
/// the revision the txn wrote at, or the current revision when it changed nothing.
pub fn txn_write(kv: &mut impl KvWrite, t: &TxnRequest) -> Result<TxnResponse, ServerError> {
    let mut path = Vec::new();
    compare_to_path(kv, t, &mut path);
    check_path_puts(kv, t, &path)?;
    check_path_ranges(kv, t, &path)?;
    let mut resp = run_ops_write(kv, t, &path, &mut 0)?;
    resp.header = header(kv.rev());
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_op(k: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: k.as_bytes().to_vec(),
                ..Default::default()
            })),
        }
    }
    fn del_op(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: k.as_bytes().to_vec(),
                    range_end: end.as_bytes().to_vec(),
                    ..Default::default()
                },
            )),
        }
    }
    fn txn_op(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                success,
                failure,
                ..Default::default()
            })),
        }
    }

    #[test]
    fn duplicate_puts_and_put_delete_overlaps_are_rejected() {
        let t = |ops| TxnRequest {
            success: ops,
            ..Default::default()
        };
        assert_eq!(
            check_txn(&t(vec![put_op("a"), put_op("a")]), 128),
            Err(ServerError::DuplicateKey)
        );
        assert_eq!(
            check_txn(&t(vec![put_op("b"), del_op("a", "c")]), 128),
            Err(ServerError::DuplicateKey)
        );
        assert_eq!(
            check_txn(&t(vec![put_op("a"), del_op("b", "c")]), 128),
            Ok(())
        );
        // then/else of one nested txn may put the same key
        assert_eq!(
            check_txn(&t(vec![txn_op(vec![put_op("a")], vec![put_op("a")])]), 128),
            Ok(())
        );
        // a nested put of a key put at the outer level is a duplicate
        assert_eq!(
            check_txn(
                &t(vec![put_op("a"), txn_op(vec![put_op("a")], vec![])]),
                128
            ),
            Err(ServerError::DuplicateKey)
        );
        // two deletes may overlap
        assert_eq!(
            check_txn(&t(vec![del_op("a", "c"), del_op("b", "d")]), 128),
            Ok(())
        );
    }

    #[test]
    fn too_many_ops_and_empty_ops() {
        let ops: Vec<RequestOp> = (0..129).map(|i| put_op(&format!("k{i}"))).collect();
        let t = TxnRequest {
            success: ops,
            ..Default::default()
        };
        assert_eq!(check_txn(&t, 128), Err(ServerError::TooManyOps));
        assert_eq!(check_txn(&t, 129), Ok(()));
        let t = TxnRequest {
            success: vec![RequestOp { request: None }],
            ..Default::default()
        };
        assert_eq!(check_txn(&t, 128), Err(ServerError::KeyNotFound));
    }

    #[test]
    fn read_only_detection_looks_into_nested_txns() {
        let ro = TxnRequest {
            success: vec![txn_op(vec![], vec![])],
            ..Default::default()
        };
        assert!(txn_is_read_only(&ro));
        let rw = TxnRequest {
            failure: vec![txn_op(vec![], vec![put_op("a")])],
            ..Default::default()
        };
        assert!(!txn_is_read_only(&rw));
    }
}
