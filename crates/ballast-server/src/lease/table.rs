//! The lease table: a plain state machine holding every lease's replicated state (granted TTL,
//! persisted deadline, attached keys) and, while this member is the primary lessor (the
//! leader), each lease's runtime expiry.
//!
//! No locks, no clocks, no I/O: the caller passes lease-clock times in (milliseconds, see the
//! module docs of [`crate::lease`]) and persists what the apply-side methods report. The
//! replicated half changes only through [`LeaseTable::grant`], [`LeaseTable::revoke`],
//! [`LeaseTable::take_leftovers`], [`LeaseTable::checkpoint`], [`LeaseTable::attach`] and
//! [`LeaseTable::detach`], all called by the apply loop in raft order, so every member holds the
//! same replicated state. The runtime half (expiries, the dirty set, revokes in flight) exists
//! only between [`LeaseTable::promote`] and [`LeaseTable::demote`].
//!
//! **Leftovers**: a revoked lease with more keys than one revision may delete leaves the rest
//! here, keyed by its id, until later entries delete them (see `lease::apply`). They count as
//! attached to the revoked id: [`LeaseTable::detach`] drops a leftover key that is overwritten or
//! deleted meanwhile, and the id cannot be granted again before its leftovers are gone.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::error::ServerError;

/// etcd's largest grantable TTL, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// `ttl` seconds in milliseconds, saturating (a TTL near [`MAX_LEASE_TTL`] still fits).
pub fn ttl_ms(ttl: i64) -> i64 {
    ttl.saturating_mul(1000)
}

/// One lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The granted TTL in seconds (the minimum TTL already applied).
    pub ttl: i64,
    /// The persisted deadline in lease-clock ms: where a restart or a new leader puts the
    /// lease's expiry (never earlier than the new leader's clock plus the grace period).
    pub deadline_ms: i64,
    /// Keys attached to the lease, sorted (revocation deletes them in this order).
    pub keys: BTreeSet<Vec<u8>>,
    /// Primary only: when the lease expires, in lease-clock ms; `i64::MAX` otherwise.
    expiry_ms: i64,
}

impl Lease {
    /// The runtime expiry (`i64::MAX` when this member is not the primary lessor).
    pub fn expiry_ms(&self) -> i64 {
        self.expiry_ms
    }
}

/// Runtime state of the primary lessor.
#[derive(Debug, Default)]
struct Primary {
    term: u64,
    /// `(expiry_ms, id)` of every lease not being revoked.
    by_expiry: BTreeSet<(i64, i64)>,
    /// `(retry_at_ms, id)` of expired leases whose revocation was proposed.
    revoking: BTreeSet<(i64, i64)>,
    retry_at: HashMap<i64, i64>,
    /// Leases whose runtime expiry the next checkpoint must record.
    dirty: HashSet<i64>,
}

impl Primary {
    fn unindex(&mut self, id: i64, expiry_ms: i64) {
        self.by_expiry.remove(&(expiry_ms, id));
        if let Some(at) = self.retry_at.remove(&id) {
            self.revoking.remove(&(at, id));
        }
        self.dirty.remove(&id);
    }
}

/// What [`LeaseTable::renew`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Renewed: the granted TTL, which is what the keep-alive answers.
    Renewed(i64),
    /// No such lease.
    NotFound,
    /// The lease has expired and its revocation is on its way: the caller waits for it.
    Expired,
    /// This member is not the primary lessor.
    NotPrimary,
}

/// The lease table (see the module docs).
#[derive(Debug, Default)]
pub struct LeaseTable {
    leases: HashMap<i64, Lease>,
    /// Keys of revoked leases still to delete (see the module docs).
    leftovers: BTreeMap<i64, BTreeSet<Vec<u8>>>,
    /// The replicated lease clock: the newest `clock_ms` a checkpoint carried.
    clock_ms: i64,
    /// A lease was granted once (persisted, so a restart knows to look for attached keys).
    used: bool,
    primary: Option<Primary>,
}

impl LeaseTable {
    /// A table restored from persisted state (leases without keys; attach them afterwards).
    pub fn restored(clock_ms: i64, leases: impl IntoIterator<Item = (i64, i64, i64)>) -> Self {
        let mut t = LeaseTable {
            clock_ms,
            ..Default::default()
        };
        for (id, ttl, deadline_ms) in leases {
            t.leases.insert(
                id,
                Lease {
                    ttl,
                    deadline_ms,
                    keys: BTreeSet::new(),
                    expiry_ms: i64::MAX,
                },
            );
        }
        t
    }

    pub fn clock_ms(&self) -> i64 {
        self.clock_ms
    }

    pub fn used(&self) -> bool {
        self.used
    }

    pub fn set_used(&mut self, used: bool) {
        self.used = used;
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    pub fn get(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// The term this table was promoted in, if it is the primary lessor.
    pub fn primary_term(&self) -> Option<u64> {
        self.primary.as_ref().map(|p| p.term)
    }

    // -----------------------------------------------------------------------------------------
    // Replicated state (apply loop only).

    /// Grants lease `id` for `ttl` seconds (the caller applied the minimum TTL). `now` is the
    /// primary's lease clock, if this member is the primary. Returns the persisted deadline.
    pub fn grant(&mut self, id: i64, ttl: i64, now: Option<i64>) -> Result<i64, ServerError> {
        if id == 0 {
            return Err(ServerError::LeaseNotFound);
        }
        if ttl > MAX_LEASE_TTL {
            return Err(ServerError::LeaseTtlTooLarge);
        }
        // A lease whose keys are still being deleted exists until they are gone.
        if self.leases.contains_key(&id) || self.leftovers.contains_key(&id) {
            return Err(ServerError::LeaseExist);
        }
        let deadline_ms = self.clock_ms.saturating_add(ttl_ms(ttl));
        let mut lease = Lease {
            ttl,
            deadline_ms,
            keys: BTreeSet::new(),
            expiry_ms: i64::MAX,
        };
        if let (Some(p), Some(now)) = (self.primary.as_mut(), now) {
            lease.expiry_ms = now.saturating_add(ttl_ms(ttl));
            p.by_expiry.insert((lease.expiry_ms, id));
            // The replicated clock may lag the primary's: record the exact deadline.
            p.dirty.insert(id);
        }
        self.leases.insert(id, lease);
        Ok(deadline_ms)
    }

    /// Removes lease `id`; returns the keys the caller deletes now, the first `max_keys` in key
    /// order; the others become leftovers.
    pub fn revoke(&mut self, id: i64, max_keys: usize) -> Option<Vec<Vec<u8>>> {
        let lease = self.leases.remove(&id)?;
        if let Some(p) = self.primary.as_mut() {
            p.unindex(id, lease.expiry_ms);
        }
        let mut keys = lease.keys;
        if keys.len() <= max_keys {
            return Some(keys.into_iter().collect());
        }
        let rest = match keys.iter().nth(max_keys).cloned() {
            Some(first_left) => keys.split_off(&first_left),
            None => BTreeSet::new(),
        };
        self.leftovers.insert(id, rest);
        Some(keys.into_iter().collect())
    }

    /// The next (at most `max_keys`) leftover keys of revoked lease `id`, in key order, for the
    /// caller to delete now.
    pub fn take_leftovers(&mut self, id: i64, max_keys: usize) -> Vec<Vec<u8>> {
        let Some(set) = self.leftovers.get_mut(&id) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(max_keys.min(set.len()));
        while out.len() < max_keys {
            match set.pop_first() {
                Some(k) => out.push(k),
                None => break,
            }
        }
        if set.is_empty() {
            self.leftovers.remove(&id);
        }
        out
    }

    /// Whether revoked lease `id` still has keys to delete.
    pub fn has_leftovers(&self, id: i64) -> bool {
        self.leftovers.contains_key(&id)
    }

    /// A revoked lease that still has keys to delete (the lowest id), if any.
    pub fn first_leftover(&self) -> Option<i64> {
        self.leftovers.keys().next().copied()
    }

    /// Restores a leftover: `key` carries lease `id`, which no longer exists.
    pub fn add_leftover(&mut self, id: i64, key: &[u8]) {
        self.leftovers.entry(id).or_default().insert(key.to_vec());
    }

    /// Number of leftover keys (all revoked leases).
    pub fn leftover_len(&self) -> usize {
        self.leftovers.values().map(BTreeSet::len).sum()
    }

    /// Applies a checkpoint: advances the replicated clock and records deadlines. Returns the
    /// `(id, deadline_ms)` pairs that changed a lease (leases gone since are skipped).
    pub fn checkpoint(&mut self, clock_ms: i64, deadlines: &[(i64, i64)]) -> Vec<(i64, i64)> {
        self.clock_ms = self.clock_ms.max(clock_ms);
        let mut changed = Vec::with_capacity(deadlines.len());
        for &(id, deadline_ms) in deadlines {
            if let Some(l) = self.leases.get_mut(&id) {
                if l.deadline_ms != deadline_ms {
                    l.deadline_ms = deadline_ms;
                    changed.push((id, deadline_ms));
                }
            }
        }
        changed
    }

    /// Attaches `key` to lease `id` (a put with that lease). Unknown leases are ignored: the
    /// put was checked against the table when it applied.
    pub fn attach(&mut self, id: i64, key: &[u8]) {
        if let Some(l) = self.leases.get_mut(&id) {
            if !l.keys.contains(key) {
                l.keys.insert(key.to_vec());
            }
        }
    }

    /// Detaches `key` from lease `id` (the key was deleted or put with another lease), or
    /// drops it from `id`'s leftovers.
    pub fn detach(&mut self, id: i64, key: &[u8]) {
        if let Some(l) = self.leases.get_mut(&id) {
            l.keys.remove(key);
        } else if let Some(set) = self.leftovers.get_mut(&id) {
            set.remove(key);
            if set.is_empty() {
                self.leftovers.remove(&id);
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Primary runtime state.

    /// Becomes the primary lessor for `term` at lease-clock time `now`: every lease expires at
    /// its persisted deadline, but no sooner than `now + grace_ms` (clients get the grace period
    /// to reach the new leader).
    pub fn promote(&mut self, term: u64, now: i64, grace_ms: i64) {
        let mut p = Primary {
            term,
            ..Default::default()
        };
        let floor = now.saturating_add(grace_ms);
        for (&id, l) in self.leases.iter_mut() {
            l.expiry_ms = l.deadline_ms.max(floor);
            p.by_expiry.insert((l.expiry_ms, id));
        }
        self.primary = Some(p);
    }

    /// Stops being the primary lessor: no lease expires here any more.
    pub fn demote(&mut self) {
        self.primary = None;
        for l in self.leases.values_mut() {
            l.expiry_ms = i64::MAX;
        }
    }

    /// Renews lease `id` at `now` for its granted TTL.
    pub fn renew(&mut self, id: i64, now: i64) -> Renewal {
        let Some(p) = self.primary.as_mut() else {
            return Renewal::NotPrimary;
        };
        let Some(l) = self.leases.get_mut(&id) else {
            // Revoked, but some of its keys are still there: answer once they are gone.
            return if self.leftovers.contains_key(&id) {
                Renewal::Expired
            } else {
                Renewal::NotFound
            };
        };
        if l.expiry_ms <= now || p.retry_at.contains_key(&id) {
            return Renewal::Expired;
        }
        p.by_expiry.remove(&(l.expiry_ms, id));
        l.expiry_ms = now.saturating_add(ttl_ms(l.ttl));
        p.by_expiry.insert((l.expiry_ms, id));
        p.dirty.insert(id);
        Renewal::Renewed(l.ttl)
    }

    /// Expired leases to revoke now, in expiry order: at most `max_leases`, and no more keys
    /// in total than `max_keys` (but always at least one lease when one is due). Each one is
    /// marked as being revoked and offered again after `retry_ms` if it is still there.
    pub fn take_expired(
        &mut self,
        now: i64,
        max_leases: usize,
        max_keys: usize,
        retry_ms: i64,
    ) -> Vec<i64> {
        let Some(p) = self.primary.as_mut() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut keys = 0usize;
        // Retries first: they expired earlier.
        while let Some(&(at, id)) = p.revoking.first() {
            if at > now || out.len() >= max_leases {
                break;
            }
            let n = self.leases.get(&id).map_or(0, |l| l.keys.len());
            if !out.is_empty() && keys + n > max_keys {
                return out;
            }
            p.revoking.remove(&(at, id));
            let again = now.saturating_add(retry_ms);
            p.revoking.insert((again, id));
            p.retry_at.insert(id, again);
            keys += n;
            out.push(id);
        }
        while let Some(&(expiry, id)) = p.by_expiry.first() {
            if expiry > now || out.len() >= max_leases {
                break;
            }
            let n = self.leases.get(&id).map_or(0, |l| l.keys.len());
            if !out.is_empty() && keys + n > max_keys {
                break;
            }
            p.by_expiry.remove(&(expiry, id));
            let again = now.saturating_add(retry_ms);
            p.revoking.insert((again, id));
            p.retry_at.insert(id, again);
            p.dirty.remove(&id);
            keys += n;
            out.push(id);
        }
        out
    }

    /// Up to `max` leases whose expiry the next checkpoint records, with that expiry; they
    /// leave the dirty set (put them back with [`LeaseTable::redirty`] if the checkpoint fails).
    pub fn take_dirty(&mut self, max: usize) -> Vec<(i64, i64)> {
        let Some(p) = self.primary.as_mut() else {
            return Vec::new();
        };
        let ids: Vec<i64> = p.dirty.iter().copied().take(max).collect();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            p.dirty.remove(&id);
            if let Some(l) = self.leases.get(&id) {
                out.push((id, l.expiry_ms));
            }
        }
        out.sort_unstable();
        out
    }

    /// Marks leases dirty again (a checkpoint carrying them failed).
    pub fn redirty(&mut self, ids: impl IntoIterator<Item = i64>) {
        if let Some(p) = self.primary.as_mut() {
            for id in ids {
                if self.leases.contains_key(&id) && !p.retry_at.contains_key(&id) {
                    p.dirty.insert(id);
                }
            }
        }
    }

    /// Number of leases waiting for a checkpoint.
    pub fn dirty_len(&self) -> usize {
        self.primary.as_ref().map_or(0, |p| p.dirty.len())
    }

    /// Every lease's runtime expiry (for a complete checkpoint before a clean stop), sorted by
    /// id; leases being revoked are left out.
    pub fn all_expiries(&self) -> Vec<(i64, i64)> {
        let Some(p) = self.primary.as_ref() else {
            return Vec::new();
        };
        let mut out: Vec<(i64, i64)> = p.by_expiry.iter().map(|&(e, id)| (id, e)).collect();
        out.sort_unstable();
        out
    }

    /// Lease ids, soonest expiry first (ties by id), as etcd lists them.
    pub fn ids_by_expiry(&self) -> Vec<i64> {
        let mut v: Vec<(i64, i64)> = self
            .leases
            .iter()
            .map(|(&id, l)| (l.expiry_ms, id))
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, id)| id).collect()
    }

    /// The earliest runtime expiry, if this member is the primary and holds a lease.
    pub fn next_expiry(&self) -> Option<i64> {
        let p = self.primary.as_ref()?;
        let a = p.by_expiry.first().map(|&(e, _)| e);
        let b = p.revoking.first().map(|&(e, _)| e);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(t: &LeaseTable, id: i64) -> Vec<&[u8]> {
        t.get(id)
            .map(|l| l.keys.iter().map(|k| k.as_slice()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn grant_rules() {
        let mut t = LeaseTable::default();
        assert_eq!(t.grant(0, 5, None), Err(ServerError::LeaseNotFound));
        assert_eq!(
            t.grant(1, MAX_LEASE_TTL + 1, None),
            Err(ServerError::LeaseTtlTooLarge)
        );
        assert_eq!(t.grant(1, MAX_LEASE_TTL, None), Ok(MAX_LEASE_TTL * 1000));
        assert_eq!(t.grant(1, 5, None), Err(ServerError::LeaseExist));
        assert_eq!(t.grant(-7, 5, None), Ok(5000));
        t.checkpoint(1000, &[]);
        assert_eq!(t.grant(2, 5, None), Ok(6000));
        assert_eq!(t.len(), 3);
        // Not the primary: nothing expires here.
        assert_eq!(t.get(2).unwrap().expiry_ms(), i64::MAX);
        assert!(t.take_expired(i64::MAX - 1, 10, 10, 1).is_empty());
    }

    #[test]
    fn attach_detach_revoke() {
        let mut t = LeaseTable::default();
        t.grant(1, 10, None).unwrap();
        t.attach(1, b"b");
        t.attach(1, b"a");
        t.attach(1, b"c");
        t.attach(9, b"x"); // unknown lease: ignored
        t.detach(1, b"c");
        assert_eq!(keys(&t, 1), vec![b"a".as_slice(), b"b"]);
        assert_eq!(t.revoke(1, 10).unwrap(), vec![b"a".to_vec(), b"b".to_vec()]);
        assert!(t.revoke(1, 10).is_none());
        assert!(!t.has_leftovers(1));
    }

    #[test]
    fn big_revocations_leave_leftovers_until_deleted() {
        let mut t = LeaseTable::default();
        t.promote(1, 0, 0);
        t.grant(1, 10, Some(0)).unwrap();
        for k in 0..10u8 {
            t.attach(1, &[k]);
        }
        // The first 4 keys now, 6 left over.
        assert_eq!(
            t.revoke(1, 4).unwrap(),
            (0..4u8).map(|k| vec![k]).collect::<Vec<_>>()
        );
        assert!(t.has_leftovers(1) && !t.contains(1));
        assert_eq!((t.first_leftover(), t.leftover_len()), (Some(1), 6));
        // Not renewable, not grantable again, until the leftovers are gone.
        assert_eq!(t.renew(1, 0), Renewal::Expired);
        assert_eq!(t.grant(1, 10, Some(0)), Err(ServerError::LeaseExist));
        // A leftover key overwritten or deleted meanwhile is no longer the lease's to delete.
        t.detach(1, &[5]);
        assert_eq!(t.take_leftovers(1, 3), vec![vec![4], vec![6], vec![7]]);
        assert_eq!(t.take_leftovers(1, 3), vec![vec![8], vec![9]]);
        assert!(!t.has_leftovers(1));
        assert!(t.take_leftovers(1, 3).is_empty());
        assert_eq!(t.renew(1, 0), Renewal::NotFound);
        assert_eq!(t.grant(1, 10, Some(0)), Ok(10_000));
        // Detaching the last leftover ends them too.
        t.attach(1, b"x");
        t.attach(1, b"y");
        t.revoke(1, 1);
        t.detach(1, b"y");
        assert_eq!(t.first_leftover(), None);
    }

    #[test]
    fn promote_gives_grace_and_keeps_deadlines() {
        let mut t = LeaseTable::restored(10_000, [(1, 5, 10_500), (2, 60, 50_000)]);
        t.promote(3, 10_000, 1000);
        assert_eq!(t.primary_term(), Some(3));
        // Lease 1 was 0.5 s from its deadline: it gets the 1 s grace instead.
        assert_eq!(t.get(1).unwrap().expiry_ms(), 11_000);
        assert_eq!(t.get(2).unwrap().expiry_ms(), 50_000);
        assert_eq!(t.take_expired(10_999, 10, 10, 500), Vec::<i64>::new());
        assert_eq!(t.take_expired(11_000, 10, 10, 500), vec![1]);
        // Offered again after the retry interval while it is still there.
        assert!(t.take_expired(11_400, 10, 10, 500).is_empty());
        assert_eq!(t.take_expired(11_500, 10, 10, 500), vec![1]);
        t.revoke(1, 10);
        assert!(t.take_expired(20_000, 10, 10, 500).is_empty());
        assert_eq!(t.next_expiry(), Some(50_000));
        t.demote();
        assert_eq!(t.get(2).unwrap().expiry_ms(), i64::MAX);
        assert_eq!(t.renew(2, 0), Renewal::NotPrimary);
    }

    #[test]
    fn renew_moves_expiry_and_marks_dirty() {
        let mut t = LeaseTable::default();
        t.promote(1, 0, 1000);
        t.grant(1, 2, Some(0)).unwrap();
        assert_eq!(t.take_dirty(10), vec![(1, 2000)]);
        assert_eq!(t.renew(1, 1500), Renewal::Renewed(2));
        assert_eq!(t.get(1).unwrap().expiry_ms(), 3500);
        assert_eq!(t.renew(7, 1500), Renewal::NotFound);
        assert_eq!(t.take_dirty(10), vec![(1, 3500)]);
        assert!(t.take_dirty(10).is_empty());
        t.redirty([1, 7]);
        assert_eq!(t.dirty_len(), 1);
        // Expired: renewing waits for the revocation.
        assert_eq!(t.renew(1, 3500), Renewal::Expired);
        assert_eq!(t.take_expired(3500, 10, 10, 1000), vec![1]);
        assert_eq!(t.renew(1, 3600), Renewal::Expired);
        assert_eq!(t.dirty_len(), 0);
    }

    #[test]
    fn expiry_batches_are_bounded_by_leases_and_keys() {
        let mut t = LeaseTable::default();
        t.promote(1, 0, 0);
        for id in 1..=10 {
            t.grant(id, 1, Some(0)).unwrap();
        }
        for k in 0..100u32 {
            t.attach(3, &k.to_be_bytes());
        }
        t.attach(1, b"a");
        // 1 (1 key) + 2 (0 keys) fit in 5 keys; 3 (100 keys) does not.
        assert_eq!(t.take_expired(1000, 100, 5, 10_000), vec![1, 2]);
        // A lease bigger than the key budget still goes, alone.
        assert_eq!(t.take_expired(1000, 100, 5, 10_000), vec![3]);
        assert_eq!(t.take_expired(1000, 3, 5, 10_000), vec![4, 5, 6]);
        assert_eq!(t.take_expired(1000, 100, 5, 10_000), vec![7, 8, 9, 10]);
        assert!(t.take_expired(1000, 100, 5, 10_000).is_empty());
    }

    #[test]
    fn checkpoint_advances_clock_and_records_deadlines() {
        let mut t = LeaseTable::default();
        t.grant(1, 10, None).unwrap();
        assert_eq!(t.checkpoint(500, &[(1, 9000), (2, 1)]), vec![(1, 9000)]);
        assert_eq!(t.clock_ms(), 500);
        // The clock never goes back.
        t.checkpoint(100, &[]);
        assert_eq!(t.clock_ms(), 500);
        assert_eq!(t.get(1).unwrap().deadline_ms, 9000);
    }

    #[test]
    fn listing_is_by_expiry_then_id() {
        let mut t = LeaseTable::default();
        t.promote(1, 0, 0);
        t.grant(5, 10, Some(0)).unwrap();
        t.grant(3, 20, Some(0)).unwrap();
        t.grant(4, 10, Some(0)).unwrap();
        assert_eq!(t.ids_by_expiry(), vec![4, 5, 3]);
        assert_eq!(
            t.all_expiries(),
            vec![(3, 20_000), (4, 10_000), (5, 10_000)]
        );
    }
}
