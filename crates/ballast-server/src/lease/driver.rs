//! The primary lessor's clock work, as one async task per member: it follows leadership
//! (promote/demote), proposes the revocation of expired leases and proposes checkpoints.
//!
//! Expiry is batched and rate-bounded so it never stalls writes: one proposal is in flight at a
//! time, either a `LeaseExpire` carrying at most [`EXPIRE_MAX_LEASES`] leases and, beyond its
//! first lease, at most [`EXPIRE_MAX_KEYS`] attached keys, or a `lease_revoke_rest` deleting the
//! next [`REVOKE_MAX_KEYS`](super::apply::REVOKE_MAX_KEYS) keys of a revoked lease that had more.
//! Client writes queued meanwhile are applied between two such entries, so a put waits for at
//! most one of them.
//!
//! Checkpoints go out every [`LessorConfig::checkpoint_interval`](super::LessorConfig) while any
//! lease exists (they advance the replicated lease clock), at most
//! [`CHECKPOINT_MAX_LEASES`] deadlines per entry.

use std::sync::Arc;
use std::time::Duration;

use ballast_proto::etcdserverpb::LeaseRevokeRequest;
use ballast_proto::internal::internal_raft_request::Request;
use ballast_proto::internal::{LeaseCheckpoint, LeaseDeadline, LeaseExpire};

use crate::member::Member;

/// Leases revoked by one expiry entry, at most.
pub const EXPIRE_MAX_LEASES: usize = 1000;
/// Keys deleted by one expiry entry, at most (its first lease deletes at most
/// [`REVOKE_MAX_KEYS`](super::apply::REVOKE_MAX_KEYS) whatever it has).
pub const EXPIRE_MAX_KEYS: usize = super::apply::REVOKE_MAX_KEYS;
/// Deadlines carried by one checkpoint entry, at most.
pub const CHECKPOINT_MAX_LEASES: usize = 10_000;

/// Runs until the member stops.
pub async fn run(member: Arc<Member>) {
    tokio::join!(expiry_loop(member.clone()), checkpoint_loop(member));
}

async fn expiry_loop(member: Arc<Member>) {
    let lessor = member.lessor.clone();
    let tick = lessor.config().expiry_tick;
    while !member.is_stopped() {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = lessor.driver_wakeup() => {}
        }
        if !lessor.sync_leadership(&member.status) {
            continue;
        }
        // Expired leases and leftover keys of revoked ones, alternately, one entry at a time.
        loop {
            let mut proposed = false;
            let ids = lessor.take_expired(EXPIRE_MAX_LEASES, EXPIRE_MAX_KEYS);
            if !ids.is_empty() {
                let n = ids.len();
                let req = Request::LeaseExpire(LeaseExpire { ids });
                if let Err(e) = member.propose(req).await {
                    // They are offered again after the retry interval if still there.
                    tracing::warn!(leases = n, error = %e, "revoking expired leases failed");
                    break;
                }
                proposed = true;
            }
            if let Some(id) = lessor.first_leftover() {
                let req = Request::LeaseRevokeRest(LeaseRevokeRequest { id });
                if let Err(e) = member.propose(req).await {
                    tracing::warn!(lease = format!("{id:016x}"), error = %e,
                        "deleting the keys of a revoked lease failed");
                    break;
                }
                proposed = true;
            }
            if !proposed || member.is_stopped() || !lessor.sync_leadership(&member.status) {
                break;
            }
        }
    }
}

async fn checkpoint_loop(member: Arc<Member>) {
    let lessor = member.lessor.clone();
    let interval = lessor.config().checkpoint_interval;
    while !member.is_stopped() {
        tokio::time::sleep(interval).await;
        if !lessor.sync_leadership(&member.status) || lessor.is_empty() {
            continue;
        }
        if let Err(e) = checkpoint(&member, false).await {
            tracing::warn!(error = %e, "lease checkpoint failed");
        }
    }
}

/// Proposes checkpoints: of the leases granted or renewed since the last one, or (`all`) of
/// every lease. Returns once they applied.
async fn checkpoint(member: &Member, all: bool) -> Result<(), crate::error::ServerError> {
    let lessor = &member.lessor;
    let (mut clock, mut pending) = match if all {
        lessor.all_expiries()
    } else {
        lessor.take_dirty(CHECKPOINT_MAX_LEASES)
    } {
        Some(x) => x,
        None => return Ok(()),
    };
    loop {
        let rest = if pending.len() > CHECKPOINT_MAX_LEASES {
            pending.split_off(CHECKPOINT_MAX_LEASES)
        } else {
            Vec::new()
        };
        let ids: Vec<i64> = pending.iter().map(|(id, _)| *id).collect();
        let req = LeaseCheckpoint {
            clock_ms: clock,
            deadlines: pending
                .into_iter()
                .map(|(id, deadline_ms)| LeaseDeadline { id, deadline_ms })
                .collect(),
        };
        if let Err(e) = member.propose(Request::LeaseCheckpoint(req)).await {
            if !all {
                lessor.redirty(ids);
                lessor.redirty(rest.iter().map(|(id, _)| *id));
            }
            return Err(e);
        }
        if rest.is_empty() {
            if all || lessor.dirty_len() == 0 {
                return Ok(());
            }
            // More leases were renewed than one entry carries: send them now, not next period.
            match lessor.take_dirty(CHECKPOINT_MAX_LEASES) {
                Some((now, next)) if !next.is_empty() => (clock, pending) = (now, next),
                _ => return Ok(()),
            }
        } else {
            pending = rest;
        }
    }
}

/// Before a clean stop: records every lease's exact deadline and the lease clock, so the next
/// primary neither extends nor shortens any lease (beyond the grace period).
pub async fn final_checkpoint(member: &Member, timeout: Duration) {
    if !member.lessor.is_primary() || member.lessor.is_empty() {
        return;
    }
    match tokio::time::timeout(timeout, checkpoint(member, true)).await {
        Ok(Ok(())) => tracing::info!(
            leases = member.lessor.len(),
            "lease deadlines checkpointed before stopping"
        ),
        Ok(Err(e)) => tracing::warn!(error = %e, "final lease checkpoint failed"),
        Err(_) => tracing::warn!("final lease checkpoint timed out"),
    }
}
