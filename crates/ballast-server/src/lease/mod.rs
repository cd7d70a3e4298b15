//! The lessor: etcd's leases (grant, revoke, keep-alive, time-to-live, list, expiry).
//!
//! # Who does what
//! - The **apply loop** changes the replicated lease state, in raft order, through
//!   [`apply`]: grants, revokes (deleting the attached keys in one revision, or in revisions of
//!   at most [`apply::REVOKE_MAX_KEYS`] keys for a lease with more), checkpoints,
//!   and expiries; it keeps key attachments in step with the events of every write
//!   ([`Lessor::track`]). Lease records are committed in the same backend batch as the keys
//!   ([`persist`]), so a restart finds leases and keys consistent.
//! - Only the **primary lessor** (this member while it is the raft leader and has applied every
//!   entry of earlier terms) runs lease clocks: it answers keep-alives locally (not through
//!   raft), and the [`driver`] task proposes the revocation of expired leases (batched, one
//!   proposal in flight) and periodic checkpoints. A follower never expires a lease.
//! - The **gRPC service** (`service::lease`) only translates.
//!
//! # Lease time, checkpoints and the restart bound
//! Lease time is counted on a *lease clock*: milliseconds during which a primary served leases
//! since the cluster began (time without a leader does not count). The primary proposes a
//! checkpoint every half election timeout while any lease exists: it carries the clock and the
//! deadlines (in lease-clock ms) of the leases granted or renewed since the previous checkpoint.
//! A new primary (after a restart or a leader change) resumes the clock from the last applied
//! checkpoint and expires each lease at its persisted deadline, but never sooner than one
//! election timeout from then, so clients have time to reach it.
//!
//! The bound: a restart or leader change lets a lease live at most **one election timeout**
//! longer than its TTL (counted in lease-clock time since its last keep-alive): the checkpoint
//! period is half an election timeout, and the grace is one election timeout. A clean stop
//! checkpoints every lease first, so then only the grace applies. A keep-alive acknowledged in
//! the last checkpoint period before a crash may be lost; the lease then falls back to the
//! previous deadline (its previous keep-alive + TTL) — clients renewing at least every TTL/2
//! (etcd's clients renew every TTL/3) never see an early expiry.
//!
//! # Minimum TTL
//! As etcd: `ceil(1.5 × election timeout)` in whole seconds (with election ticks rounded down
//! to whole heartbeats), applied before the grant is proposed, so every member applies the same
//! TTL.

pub mod apply;
pub mod driver;
pub mod persist;
pub mod table;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

pub use table::{Lease, LeaseTable, Renewal, MAX_LEASE_TTL};

use crate::config::ServerConfig;
use crate::raft::RaftStatus;

/// Lessor settings derived from the member's configuration.
#[derive(Debug, Clone)]
pub struct LessorConfig {
    /// Smallest TTL granted, in seconds.
    pub min_ttl: i64,
    /// Time a new primary gives every lease at least (one election timeout).
    pub grace: Duration,
    /// Time between checkpoints while leases exist (half an election timeout).
    pub checkpoint_interval: Duration,
    /// How often the primary looks for expired leases.
    pub expiry_tick: Duration,
    /// An expired lease whose revocation has not applied after this long is proposed again.
    pub revoke_retry: Duration,
}

impl LessorConfig {
    pub fn from_server(cfg: &ServerConfig) -> LessorConfig {
        let heartbeat = cfg.heartbeat_interval.max(Duration::from_millis(1));
        let election_ticks = (cfg.election_timeout.as_millis() / heartbeat.as_millis()) as u32;
        let min_ttl = heartbeat * (3 * election_ticks / 2);
        let min_ttl = min_ttl.as_millis().div_ceil(1000).max(1) as i64;
        LessorConfig {
            min_ttl,
            grace: cfg.election_timeout,
            checkpoint_interval: (cfg.election_timeout / 2).max(Duration::from_millis(10)),
            expiry_tick: (cfg.election_timeout / 10)
                .clamp(Duration::from_millis(10), Duration::from_millis(100)),
            revoke_retry: Duration::from_secs(5) + 2 * cfg.election_timeout,
        }
    }
}

struct Inner {
    table: LeaseTable,
    /// While primary: the instant the lease clock read `origin.1`.
    origin: Option<(Instant, i64)>,
}

impl Inner {
    fn now_ms(&self) -> Option<i64> {
        self.origin
            .map(|(at, clock)| clock.saturating_add(at.elapsed().as_millis() as i64))
    }
}

/// What [`Lessor::time_to_live`] answers for an existing lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeToLive {
    /// Remaining whole seconds (truncated, as etcd does).
    pub remaining: i64,
    pub granted: i64,
    pub keys: Vec<Vec<u8>>,
}

/// The member's lease state, shared by the apply loop, the driver and the service.
pub struct Lessor {
    cfg: LessorConfig,
    member_id: u64,
    inner: Mutex<Inner>,
    next_id: AtomicU64,
    /// Bumped after every applied revocation (keep-alives of expired leases wait on it).
    revoked: tokio::sync::watch::Sender<u64>,
    wake_driver: tokio::sync::Notify,
}

impl Lessor {
    pub fn new(cfg: LessorConfig, member_id: u64, table: LeaseTable) -> Lessor {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Lessor {
            cfg,
            member_id,
            inner: Mutex::new(Inner {
                table,
                origin: None,
            }),
            // Member id in the top bits, then time and a counter: unique across members and
            // restarts, like etcd's ids, without reading any shared state.
            next_id: AtomicU64::new(
                ((member_id & 0x7fff) << 48) | ((now_ms << 8) & ((1 << 48) - 1)),
            ),
            revoked: tokio::sync::watch::channel(0).0,
            wake_driver: tokio::sync::Notify::new(),
        }
    }

    pub fn config(&self) -> &LessorConfig {
        &self.cfg
    }

    /// A fresh positive lease id no current lease uses (for `LeaseGrant` with ID 0).
    pub fn next_id(&self) -> i64 {
        loop {
            let raw = self.next_id.fetch_add(1, Ordering::Relaxed);
            let id = (raw & (i64::MAX as u64)) as i64;
            if id != 0 && !self.inner.lock().table.contains(id) {
                return id;
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Apply side (see `apply`).

    pub fn exists(&self, id: i64) -> bool {
        self.inner.lock().table.contains(id)
    }

    fn with_table<R>(&self, f: impl FnOnce(&mut LeaseTable, Option<i64>) -> R) -> R {
        let mut inner = self.inner.lock();
        let now = inner.now_ms();
        f(&mut inner.table, now)
    }

    /// Keeps attachments in step with one etcd transaction's events: a put attaches its key to
    /// its lease (detaching it from the previous one), a delete detaches it.
    pub fn track(&self, events: &[ballast_mvcc::Event]) {
        let involved = |e: &ballast_mvcc::Event| {
            e.kv.lease != 0 || e.prev_kv.as_ref().is_some_and(|p| p.lease != 0)
        };
        if !events.iter().any(involved) {
            return;
        }
        let mut inner = self.inner.lock();
        for e in events.iter().filter(|e| involved(e)) {
            let prev = e.prev_kv.as_ref().map_or(0, |p| p.lease);
            let new = match e.kind {
                ballast_mvcc::EventKind::Put => e.kv.lease,
                ballast_mvcc::EventKind::Delete => 0,
            };
            if prev == new {
                continue;
            }
            if prev != 0 {
                inner.table.detach(prev, &e.kv.key);
            }
            if new != 0 {
                inner.table.attach(new, &e.kv.key);
            }
        }
    }

    /// A revocation of `id` (or of some of its leftover keys) applied: keep-alives waiting for
    /// it re-check, and the driver deletes the leftovers next, if any.
    fn revoked(&self, id: i64) {
        self.revoked.send_modify(|g| *g += 1);
        if self.inner.lock().table.has_leftovers(id) {
            self.wake_driver.notify_one();
        }
    }

    /// Whether lease `id` is gone with all its keys (false while a revocation in several
    /// revisions still has keys to delete).
    pub fn fully_revoked(&self, id: i64) -> bool {
        let inner = self.inner.lock();
        !inner.table.contains(id) && !inner.table.has_leftovers(id)
    }

    /// A revoked lease that still has keys to delete, if any.
    pub fn first_leftover(&self) -> Option<i64> {
        self.inner.lock().table.first_leftover()
    }

    /// Resolves when the driver has work before its next tick (leftover keys to delete).
    pub async fn driver_wakeup(&self) {
        self.wake_driver.notified().await
    }

    /// Changes whenever a revocation has applied.
    pub fn revocations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revoked.subscribe()
    }

    // -----------------------------------------------------------------------------------------
    // Primary.

    /// Promotes or demotes this member's lessor to match raft: primary while this member is the
    /// leader and has applied an entry of its own term (so every earlier entry too). Returns
    /// whether it is the primary. Cheap; called by the driver every tick and by lease RPCs.
    pub fn sync_leadership(&self, status: &RaftStatus) -> bool {
        let term = status.term();
        let leader = status.leader() == self.member_id;
        let mut inner = self.inner.lock();
        match inner.table.primary_term() {
            Some(t) if leader && t == term => true,
            Some(_) => {
                inner.table.demote();
                inner.origin = None;
                tracing::info!(term, "lessor demoted: this member is no longer the leader");
                false
            }
            None if leader && status.applied_term.load(Ordering::Acquire) == term => {
                let clock = self.promote(&mut inner, term);
                tracing::info!(
                    term,
                    leases = inner.table.len(),
                    clock_ms = clock,
                    "lessor promoted: this member expires leases now"
                );
                true
            }
            None => false,
        }
    }

    /// Makes the table primary for `term`, its clock resuming from the replicated one (the
    /// last applied checkpoint's), each lease expiring at its persisted deadline but no sooner
    /// than one grace period from now. Returns the clock.
    fn promote(&self, inner: &mut Inner, term: u64) -> i64 {
        let clock = inner.table.clock_ms();
        inner.origin = Some((Instant::now(), clock));
        let grace = self.cfg.grace.as_millis() as i64;
        inner.table.promote(term, clock, grace);
        clock
    }

    /// The store was replaced (a backend snapshot installed): `table`, recovered from it
    /// ([`persist::recover`]), replaces every lease, attachment and leftover, as etcd's
    /// `lessor.Recover`. A primary lessor stays primary in its term and is promoted again
    /// over the new leases (etcd's Recover then Promote), by the rule of a restart: the clock
    /// resumes from the snapshot's replicated clock, and each lease expires at its persisted
    /// deadline but no sooner than one grace period from now. The runtime state of the old
    /// leases goes with them (renewals not yet checkpointed, revocations proposed: a lease
    /// still there is proposed again when it expires). A follower's leases keep no clock.
    ///
    /// Keep-alives waiting for a revocation re-check (their lease may be gone now), and the
    /// driver is woken if the snapshot has keys of revoked leases to delete.
    pub fn reload(&self, table: LeaseTable) {
        let mut inner = self.inner.lock();
        let term = inner.table.primary_term();
        inner.table = table;
        inner.origin = None;
        let clock = term.map(|term| self.promote(&mut inner, term));
        let (leases, leftovers) = (inner.table.len(), inner.table.first_leftover().is_some());
        drop(inner);
        tracing::info!(
            leases,
            primary = clock.is_some(),
            clock_ms = clock,
            "lessor reloaded from the installed store"
        );
        self.revoked.send_modify(|g| *g += 1);
        if leftovers {
            self.wake_driver.notify_one();
        }
    }

    pub fn is_primary(&self) -> bool {
        self.inner.lock().table.primary_term().is_some()
    }

    /// Renews lease `id` (a keep-alive).
    pub fn renew(&self, id: i64) -> Renewal {
        self.with_table(|t, now| match now {
            Some(now) => t.renew(id, now),
            None => Renewal::NotPrimary,
        })
    }

    /// Remaining time, granted TTL and (with `keys`) attached keys of lease `id`, as the
    /// primary sees it; `None` if there is no such lease.
    pub fn time_to_live(&self, id: i64, keys: bool) -> Option<TimeToLive> {
        self.with_table(|t, now| {
            let l = t.get(id)?;
            let remaining = match now {
                Some(now) if l.expiry_ms() != i64::MAX => {
                    // Whole seconds strictly left, as etcd truncates a remaining time that has
                    // always lost some nanoseconds (a read in the grant's own millisecond says
                    // TTL - 1, like etcd, not TTL).
                    ((l.expiry_ms() - now - 1).max(0) / 1000).min(l.ttl.max(0))
                }
                _ => l.ttl,
            };
            Some(TimeToLive {
                remaining,
                granted: l.ttl,
                keys: if keys {
                    l.keys.iter().cloned().collect()
                } else {
                    Vec::new()
                },
            })
        })
    }

    /// Every lease id, soonest expiry first.
    pub fn leases(&self) -> Vec<i64> {
        self.inner.lock().table.ids_by_expiry()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Expired leases to propose for revocation now (see [`LeaseTable::take_expired`]).
    pub fn take_expired(&self, max_leases: usize, max_keys: usize) -> Vec<i64> {
        let retry = self.cfg.revoke_retry.as_millis() as i64;
        self.with_table(|t, now| match now {
            Some(now) => t.take_expired(now, max_leases, max_keys, retry),
            None => Vec::new(),
        })
    }

    /// The lease clock now and up to `max` leases whose new deadlines the next checkpoint
    /// records; `None` when not primary.
    pub fn take_dirty(&self, max: usize) -> Option<(i64, Vec<(i64, i64)>)> {
        self.with_table(|t, now| now.map(|now| (now, t.take_dirty(max))))
    }

    pub fn redirty(&self, ids: impl IntoIterator<Item = i64>) {
        self.inner.lock().table.redirty(ids);
    }

    pub fn dirty_len(&self) -> usize {
        self.inner.lock().table.dirty_len()
    }

    /// The lease clock now and every lease's expiry (for the checkpoint before a clean stop).
    pub fn all_expiries(&self) -> Option<(i64, Vec<(i64, i64)>)> {
        self.with_table(|t, now| now.map(|now| (now, t.all_expiries())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(election_ms: u64, heartbeat_ms: u64) -> LessorConfig {
        LessorConfig::from_server(&ServerConfig {
            election_timeout: Duration::from_millis(election_ms),
            heartbeat_interval: Duration::from_millis(heartbeat_ms),
            ..Default::default()
        })
    }

    #[test]
    fn min_ttl_follows_etcd() {
        // 10 ticks of 100 ms: 1.5 s, rounded up.
        assert_eq!(cfg(1000, 100).min_ttl, 2);
        assert_eq!(cfg(500, 50).min_ttl, 1);
        assert_eq!(cfg(2500, 250).min_ttl, 4);
        // Ticks are whole heartbeats: 1050/100 = 10 ticks.
        assert_eq!(cfg(1050, 100).min_ttl, 2);
        assert_eq!(cfg(5000, 100).min_ttl, 8);
    }

    #[test]
    fn ids_are_positive_and_unique() {
        let l = Lessor::new(cfg(1000, 100), 0xffff_ffff_ffff, LeaseTable::default());
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let id = l.next_id();
            assert!(id > 0);
            assert!(seen.insert(id));
        }
    }

    #[test]
    fn promotion_follows_leadership_and_applied_term() {
        let status = RaftStatus::default();
        let l = Lessor::new(cfg(1000, 100), 7, LeaseTable::default());
        assert!(!l.sync_leadership(&status));
        status.leader.store(7, Ordering::Relaxed);
        status.term.store(2, Ordering::Relaxed);
        // Entries of earlier terms may still be unapplied.
        status.applied_term.store(1, Ordering::Relaxed);
        assert!(!l.sync_leadership(&status));
        status.applied_term.store(2, Ordering::Relaxed);
        assert!(l.sync_leadership(&status));
        assert_eq!(l.renew(1), Renewal::NotFound);
        status.term.store(3, Ordering::Relaxed);
        assert!(!l.sync_leadership(&status));
        assert_eq!(l.renew(1), Renewal::NotPrimary);
    }

    /// A table as `persist::recover` returns it: clock, leases `(id, ttl, deadline)`, keys
    /// `(lease, key)` (a key of a lease not in the table is a leftover).
    fn recovered(clock: i64, leases: &[(i64, i64, i64)], keys: &[(i64, &str)]) -> LeaseTable {
        let mut t = LeaseTable::restored(clock, leases.iter().copied());
        for &(id, k) in keys {
            if t.contains(id) {
                t.attach(id, k.as_bytes());
            } else {
                t.add_leftover(id, k.as_bytes());
            }
        }
        t.set_used(true);
        t
    }

    fn expiry(l: &Lessor, id: i64) -> i64 {
        l.inner.lock().table.get(id).unwrap().expiry_ms()
    }

    #[test]
    fn reload_replaces_a_followers_leases_and_keeps_no_clock() {
        let l = Lessor::new(
            cfg(1000, 100),
            1,
            recovered(0, &[(1, 10, 10_000)], &[(1, "a")]),
        );
        let revocations = l.revocations();
        l.reload(recovered(
            5000,
            &[(2, 30, 35_000), (3, 60, 65_000)],
            &[(2, "b"), (2, "c"), (9, "z")],
        ));
        assert!(!l.exists(1) && l.exists(2) && l.exists(3));
        let ttl = l.time_to_live(2, true).unwrap();
        assert_eq!(
            (ttl.granted, ttl.remaining),
            (30, 30),
            "no clock on a follower"
        );
        assert_eq!(ttl.keys, vec![b"b".to_vec(), b"c".to_vec()]);
        assert!(!l.is_primary());
        assert_eq!(l.renew(2), Renewal::NotPrimary);
        assert!(l.take_expired(10, 10).is_empty());
        // Lease 9 was revoked with keys left: gone, but not fully until they are deleted.
        assert!(!l.fully_revoked(9) && l.fully_revoked(1));
        assert_eq!(l.first_leftover(), Some(9));
        // Keep-alives waiting for a revocation look again; the driver has keys to delete.
        assert!(revocations.has_changed().unwrap());
        assert!(futures::FutureExt::now_or_never(l.driver_wakeup()).is_some());
    }

    #[test]
    fn reload_on_the_primary_resumes_the_snapshots_clock_with_the_grace_of_a_restart() {
        let status = RaftStatus::default();
        status.leader.store(7, Ordering::Relaxed);
        status.term.store(4, Ordering::Relaxed);
        status.applied_term.store(4, Ordering::Relaxed);
        // The member has run as primary from clock 50 s, and renewed lease 1.
        let l = Lessor::new(
            cfg(1000, 100),
            7,
            recovered(50_000, &[(1, 10, 60_000)], &[(1, "a")]),
        );
        assert!(l.sync_leadership(&status));
        assert_eq!(l.renew(1), Renewal::Renewed(10));
        assert_eq!(l.dirty_len(), 1);

        // The snapshot's replicated clock is 20 s; lease 2 is 0.3 s from its deadline, lease 3
        // a minute, and lease 1 is gone.
        l.reload(recovered(
            20_000,
            &[(2, 5, 20_300), (3, 60, 80_000)],
            &[(3, "k")],
        ));
        assert!(l.is_primary());
        assert!(!l.exists(1));
        // As a restart: the clock resumes from the snapshot's, each lease keeps its deadline
        // but gets at least the grace period (one election timeout, 1 s).
        let now = l.inner.lock().now_ms().unwrap();
        assert!((20_000..20_000 + 500).contains(&now), "clock {now}");
        assert_eq!(expiry(&l, 2), 21_000);
        assert_eq!(expiry(&l, 3), 80_000);
        assert_eq!(l.leases(), vec![2, 3]);
        // The old runtime state went with the old leases.
        assert_eq!(l.dirty_len(), 0);
        assert!(l.take_expired(10, 10).is_empty());
        // Still primary in the same term: keep-alives are answered, leadership checks agree.
        assert_eq!(l.renew(3), Renewal::Renewed(60));
        assert!(l.sync_leadership(&status));
        assert_eq!(l.time_to_live(3, false).unwrap().remaining, 59);
        // Leadership lost later: demoted as usual.
        status.term.store(5, Ordering::Relaxed);
        assert!(!l.sync_leadership(&status));
        assert_eq!(expiry(&l, 3), i64::MAX);
    }

    #[test]
    fn track_follows_puts_and_deletes() {
        use ballast_mvcc::{Event, EventKind, KeyValue};
        let l = Lessor::new(cfg(1000, 100), 1, LeaseTable::default());
        l.with_table(|t, _| {
            t.grant(1, 10, None).unwrap();
            t.grant(2, 10, None).unwrap();
        });
        let kv = |key: &str, lease| KeyValue {
            key: key.as_bytes().to_vec(),
            lease,
            ..Default::default()
        };
        let put = |key: &str, lease, prev: Option<i64>| Event {
            kind: EventKind::Put,
            kv: kv(key, lease),
            prev_kv: prev.map(|p| kv(key, p)),
        };
        l.track(&[put("a", 1, None), put("b", 1, Some(0)), put("c", 0, None)]);
        assert_eq!(l.time_to_live(1, true).unwrap().keys.len(), 2);
        l.track(&[put("a", 2, Some(1))]);
        l.track(&[Event {
            kind: EventKind::Delete,
            kv: kv("b", 0),
            prev_kv: Some(kv("b", 1)),
        }]);
        assert!(l.time_to_live(1, true).unwrap().keys.is_empty());
        assert_eq!(l.time_to_live(2, true).unwrap().keys, vec![b"a".to_vec()]);
        assert_eq!(l.time_to_live(9, true), None);
    }
}
