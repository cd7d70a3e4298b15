//! Lease requests as the apply loop applies them: each runs inside the apply loop's current
//! etcd transaction and writes its lease records into the same backend batch. The caller ends
//! the transaction (so a revocation's deletes make one revision) and passes its events to
//! [`Lessor::track`](super::Lessor::track).

use ballast_mvcc::WriteTxn;
use ballast_proto::etcdserverpb::{LeaseGrantRequest, LeaseGrantResponse};
use ballast_proto::internal::LeaseCheckpoint;

use super::{persist, Lessor};
use crate::error::ServerError;

/// Revocations deleting at least this many keys are logged with the time they took.
const LOG_REVOKE_KEYS: usize = 10_000;

/// `LeaseGrant`: the TTL already carries the minimum (the service applied it before proposing).
pub fn grant(
    txn: &mut WriteTxn<'_>,
    lessor: &Lessor,
    req: &LeaseGrantRequest,
) -> Result<LeaseGrantResponse, ServerError> {
    let deadline = lessor.with_table(|t, now| t.grant(req.id, req.ttl, now))?;
    persist::put_lease(txn, req.id, req.ttl, deadline);
    Ok(LeaseGrantResponse {
        header: None,
        id: req.id,
        ttl: req.ttl,
        error: String::new(),
    })
}

/// `LeaseRevoke` (from a client or an expiry): deletes every attached key, in key order, in the
/// open etcd transaction, and the lease record with them.
pub fn revoke(txn: &mut WriteTxn<'_>, lessor: &Lessor, id: i64) -> Result<(), ServerError> {
    let lease = lessor
        .with_table(|t, _| t.revoke(id))
        .ok_or(ServerError::LeaseNotFound)?;
    let started = std::time::Instant::now();
    for key in &lease.keys {
        txn.delete_range(key, b"")?;
    }
    if lease.keys.len() >= LOG_REVOKE_KEYS {
        tracing::info!(
            lease = format!("{id:016x}"),
            keys = lease.keys.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "revoked a lease with many keys (one revision; the batch commit follows)"
        );
    }
    persist::delete_lease(txn, id);
    lessor.notify_revoked();
    Ok(())
}

/// A checkpoint: the lease clock and new deadlines, recorded on every member.
pub fn checkpoint(txn: &mut WriteTxn<'_>, lessor: &Lessor, c: &LeaseCheckpoint) {
    let deadlines: Vec<(i64, i64)> = c.deadlines.iter().map(|d| (d.id, d.deadline_ms)).collect();
    let (clock, changed) = lessor.with_table(|t, _| {
        let changed: Vec<(i64, i64, i64)> = t
            .checkpoint(c.clock_ms, &deadlines)
            .into_iter()
            .map(|(id, deadline)| (id, t.get(id).map_or(0, |l| l.ttl), deadline))
            .collect();
        (t.clock_ms(), changed)
    });
    persist::put_clock(txn, clock);
    for (id, ttl, deadline) in changed {
        persist::put_lease(txn, id, ttl, deadline);
    }
}
