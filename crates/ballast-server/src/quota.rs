//! The backend quota (`--quota-backend-bytes`), as etcd enforces it: a request that adds data
//! (Put, Txn with puts, LeaseGrant) is charged etcd's estimate of what it stores, and fits when
//! `backend size + cost < quota`.
//!
//! It is checked twice, as etcd does: by the member's role methods before proposing (over the
//! quota: raise NOSPACE for this member and refuse; `local_client.rs`), and by the apply loop's
//! quota layer, which applies the request anyway and answers `NoSpace` when it did not fit
//! before (etcd's quota applier; the member then raises the alarm).
//!
//! The backend size is the database file's size (as etcd uses bbolt's file size), cached here:
//! the apply loop refreshes it after each committed batch and after a defragmentation, so the
//! request path never stats the file. It must never talk to Raft or the network.

use std::sync::atomic::{AtomicU64, Ordering};

use ballast_proto::etcdserverpb::{request_op, PutRequest, TxnRequest};
use ballast_proto::internal::internal_raft_request::Request;

/// etcd's estimate of the cost of storing a key's metadata.
pub const KV_OVERHEAD: u64 = 256;
/// etcd's estimate of the cost of storing a lease.
pub const LEASE_OVERHEAD: u64 = 64;

/// etcd's charge for a Put: the key's overhead plus its key and value bytes.
pub fn cost_put(p: &PutRequest) -> u64 {
    KV_OVERHEAD + p.key.len() as u64 + p.value.len() as u64
}

/// etcd's charge for a Txn: the larger of its two branches, each the sum of its puts. etcd
/// counts only the branches' own puts; Ballast also counts a nested txn's (its larger branch),
/// so nesting cannot get puts past the quota or the NOSPACE gate.
pub fn cost_txn(t: &TxnRequest) -> u64 {
    let branch = |ops: &[ballast_proto::etcdserverpb::RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(request_op::Request::RequestPut(p)) => cost_put(p),
                Some(request_op::Request::RequestTxn(t)) => cost_txn(t),
                _ => 0,
            })
            .sum()
    };
    branch(&t.success).max(branch(&t.failure))
}

/// The charge of a raft request against the quota (0: it does not add data).
pub fn cost(req: &Request) -> u64 {
    match req {
        Request::Put(p) => cost_put(p),
        Request::Txn(t) => cost_txn(t),
        Request::LeaseGrant(_) => LEASE_OVERHEAD,
        _ => 0,
    }
}

/// etcd's rule: a request that costs nothing always fits; otherwise it fits when the backend
/// stays strictly under the quota.
pub fn fits(size: u64, cost: u64, quota: u64) -> bool {
    cost == 0 || size.saturating_add(cost) < quota
}

/// The quota and the last known backend size.
#[derive(Debug)]
pub struct Quota {
    bytes: u64,
    size: AtomicU64,
}

impl Quota {
    /// A quota of `bytes` (already resolved: 0 means etcd's default, decided by the config).
    pub fn new(bytes: u64, size: u64) -> Quota {
        Quota {
            bytes,
            size: AtomicU64::new(size),
        }
    }

    /// The quota in bytes (`Status.db_size_quota`).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The backend size the last refresh saw.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// Records the backend's current size (after a commit or a defragmentation).
    pub fn set_size(&self, size: u64) {
        self.size.store(size, Ordering::Relaxed);
    }

    /// Whether a request of this cost fits ([`fits`] against the last known size).
    pub fn available(&self, cost: u64) -> bool {
        fits(self.size(), cost, self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballast_proto::etcdserverpb::{DeleteRangeRequest, LeaseGrantRequest, RequestOp};

    fn put(key: &str, value_len: usize) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.into(),
                value: vec![b'x'; value_len],
                ..Default::default()
            })),
        }
    }

    #[test]
    fn costs_are_etcds() {
        let p = PutRequest {
            key: b"abc".to_vec(),
            value: vec![0; 1000],
            ..Default::default()
        };
        assert_eq!(cost(&Request::Put(p)), 256 + 3 + 1000);
        assert_eq!(cost(&Request::LeaseGrant(LeaseGrantRequest::default())), 64);
        assert_eq!(
            cost(&Request::DeleteRange(DeleteRangeRequest::default())),
            0
        );
        // The larger branch, not the sum.
        let t = TxnRequest {
            success: vec![put("a", 10), put("b", 10)],
            failure: vec![put("c", 1000)],
            ..Default::default()
        };
        assert_eq!(cost_txn(&t), 256 + 1 + 1000);
        let t2 = TxnRequest {
            failure: vec![],
            ..t.clone()
        };
        assert_eq!(cost_txn(&t2), 2 * (256 + 1 + 10));
        let reads_only = TxnRequest {
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(
                    DeleteRangeRequest::default(),
                )),
            }],
            ..Default::default()
        };
        assert_eq!(cost_txn(&reads_only), 0);
        let nested = TxnRequest {
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestTxn(t.clone())),
            }],
            ..Default::default()
        };
        assert_eq!(cost_txn(&nested), cost_txn(&t));
    }

    #[test]
    fn fits_strictly_under_the_quota() {
        assert!(fits(100, 0, 50), "free requests always fit");
        assert!(fits(10, 89, 100));
        assert!(
            !fits(10, 90, 100),
            "reaching the quota exactly does not fit"
        );
        assert!(!fits(u64::MAX, 1, 100));
        let q = Quota::new(1000, 900);
        assert!(q.available(99));
        assert!(!q.available(100));
        q.set_size(100);
        assert!(q.available(100));
        assert_eq!(q.bytes(), 1000);
    }
}
