//! Lease requests as the apply loop applies them: each runs inside the apply loop's current
//! etcd transaction and writes its lease records into the same backend batch. The caller ends
//! the transaction (so a revocation entry's deletes make one revision) and passes its events to
//! [`Lessor::track`](super::Lessor::track).

use ballast_mvcc::WriteTxn;
use ballast_proto::etcdserverpb::{LeaseGrantRequest, LeaseGrantResponse};
use ballast_proto::internal::LeaseCheckpoint;

use super::{persist, Lessor};
use crate::error::ServerError;

/// Keys one revocation entry deletes (in one revision), at most: about 40 ms of apply time on the
/// project machine, so a write never waits much longer behind a revocation. etcd deletes all of
/// a lease's keys in one revision; Ballast does too up to this many (docs/leases.md).
pub const REVOKE_MAX_KEYS: usize = 10_000;
/// Revocations deleting at least this many keys are logged (debug) with the time they took.
const LOG_REVOKE_KEYS: usize = 5_000;

/// `LeaseGrant`: the TTL already carries the minimum (the service applied it before proposing).
pub fn grant(
    txn: &mut WriteTxn<'_>,
    lessor: &Lessor,
    req: &LeaseGrantRequest,
) -> Result<LeaseGrantResponse, ServerError> {
    let (deadline, first) = lessor.with_table(|t, now| {
        let deadline = t.grant(req.id, req.ttl, now)?;
        let first = !t.used();
        t.set_used(true);
        Ok::<_, ServerError>((deadline, first))
    })?;
    if first {
        persist::put_used(txn);
    }
    persist::put_lease(txn, req.id, req.ttl, deadline);
    Ok(LeaseGrantResponse {
        header: None,
        id: req.id,
        ttl: req.ttl,
        error: String::new(),
    })
}

/// `LeaseRevoke` (from a client or an expiry): deletes the attached keys, in key order, in the
/// open etcd transaction (one revision), and the lease record with them. A lease with more than
/// [`REVOKE_MAX_KEYS`] keys has its first ones deleted now and the rest by `lease_revoke_rest`
/// entries the primary proposes next ([`revoke_rest`]), one revision each.
pub fn revoke(txn: &mut WriteTxn<'_>, lessor: &Lessor, id: i64) -> Result<(), ServerError> {
    let keys = lessor
        .with_table(|t, _| t.revoke(id, REVOKE_MAX_KEYS))
        .ok_or(ServerError::LeaseNotFound)?;
    delete_keys(txn, &keys)?;
    persist::delete_lease(txn, id);
    lessor.revoked(id);
    Ok(())
}

/// `lease_revoke_rest`: deletes the next leftover keys of revoked lease `id` (none if they are
/// gone already), one revision.
pub fn revoke_rest(txn: &mut WriteTxn<'_>, lessor: &Lessor, id: i64) -> Result<(), ServerError> {
    let keys = lessor.with_table(|t, _| t.take_leftovers(id, REVOKE_MAX_KEYS));
    delete_keys(txn, &keys)?;
    lessor.revoked(id);
    Ok(())
}

fn delete_keys(txn: &mut WriteTxn<'_>, keys: &[Vec<u8>]) -> Result<(), ServerError> {
    let started = std::time::Instant::now();
    for key in keys {
        txn.delete_range(key, b"")?;
    }
    if keys.len() >= LOG_REVOKE_KEYS {
        tracing::debug!(
            keys = keys.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "deleted the keys of a revoked lease"
        );
    }
    Ok(())
}

/// A checkpoint: the lease clock and new deadlines, recorded on every member.
///
/// Failpoints `lease::before_checkpoint` / `lease::after_checkpoint` (docs/failpoints.md): a
/// storage error while applying is a fault, and this step has no error to return, so `return`
/// panics the apply thread with the I/O error, which fail-stops the member (crate::fault).
pub fn checkpoint(txn: &mut WriteTxn<'_>, lessor: &Lessor, c: &LeaseCheckpoint) {
    fail::fail_point!("lease::before_checkpoint", |arg| panic!(
        "lease checkpoint: {}",
        crate::fault::failpoint_io_error(arg)
    ));
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
    fail::fail_point!("lease::after_checkpoint", |arg| panic!(
        "lease checkpoint: {}",
        crate::fault::failpoint_io_error(arg)
    ));
}
