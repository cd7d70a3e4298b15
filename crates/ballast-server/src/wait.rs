//! Pending proposals: the table from a proposal's id to the client waiting for its result
//! (etcd's `wait`), and the generator of those ids.
//!
//! The member registers a waiter *before* it hands the proposal to the raft thread, so the
//! apply loop always finds it, however fast the entry commits. Every member applies every
//! entry; only the member that proposed it holds a waiter, so the others find none. A waiter
//! leaves the table exactly once: answered by the apply loop, failed by the raft thread (the
//! proposal was dropped), timed out by its requester, or failed by a stop.
//!
//! Ids are unique across members (etcd's scheme): the member id's low 16 bits in the high 16
//! bits, then the start time in milliseconds (40 bits) and a counter in the low 8 bits that
//! carries into the time, so a restarted member does not reuse an id still in the log.
//!
//! Never: hold the table's lock while sending to a waiter's channel is fine (oneshot sends do
//! not block), but never while waiting for anything else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::apply::ApplyOutput;
use crate::error::ServerError;

/// What a proposal resolves to.
pub type Outcome = Result<ApplyOutput, ServerError>;

/// The pending proposals of this member.
#[derive(Default)]
pub struct Wait {
    waiters: Mutex<HashMap<u64, oneshot::Sender<Outcome>>>,
    closed: std::sync::atomic::AtomicBool,
}

impl Wait {
    /// Registers `id`; the receiver gets the outcome. Fails with `Stopped` once the table is
    /// closed, and with `Internal` for an id already pending (a generator bug).
    pub fn register(&self, id: u64) -> Result<oneshot::Receiver<Outcome>, ServerError> {
        let (tx, rx) = oneshot::channel();
        let mut w = self.waiters.lock();
        if self.closed.load(Ordering::Acquire) {
            return Err(ServerError::Stopped);
        }
        match w.entry(id) {
            // The waiter already there keeps waiting.
            std::collections::hash_map::Entry::Occupied(_) => Err(ServerError::Internal(
                format!("proposal id {id:x} reused"),
            )),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(tx);
                Ok(rx)
            }
        }
    }

    /// Answers `id`'s waiter, if this member has one. Returns whether it had.
    pub fn trigger(&self, id: u64, outcome: Outcome) -> bool {
        let tx = self.waiters.lock().remove(&id);
        match tx {
            Some(tx) => {
                let _ = tx.send(outcome);
                true
            }
            None => false,
        }
    }

    /// Forgets `id` (its requester gave up waiting).
    pub fn cancel(&self, id: u64) {
        self.waiters.lock().remove(&id);
    }

    /// Whether `id` is pending.
    pub fn is_pending(&self, id: u64) -> bool {
        self.waiters.lock().contains_key(&id)
    }

    /// Fails every pending waiter with `err` and refuses new ones (the member stops).
    pub fn close(&self, err: ServerError) {
        let drained: Vec<_> = {
            let mut w = self.waiters.lock();
            self.closed.store(true, Ordering::Release);
            w.drain().map(|(_, tx)| tx).collect()
        };
        for tx in drained {
            let _ = tx.send(Err(err.clone()));
        }
    }

    pub fn len(&self) -> usize {
        self.waiters.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The raft thread's way to fail a proposal it could not hand to raft-rs, without knowing
/// what the proposal was.
pub trait Reject: Send + Sync {
    fn reject(&self, id: u64, err: ServerError);
}

impl Reject for Wait {
    fn reject(&self, id: u64, err: ServerError) {
        self.trigger(id, Err(err));
    }
}

/// Proposal ids, unique across the members of a cluster and across restarts.
pub struct IdGenerator {
    prefix: u64,
    suffix: AtomicU64,
}

const SUFFIX_BITS: u32 = 48;
const TIME_BITS: u32 = 40;
const COUNT_BITS: u32 = 8;

impl IdGenerator {
    /// A generator for `member_id` started at `now`.
    pub fn new(member_id: u64, now: SystemTime) -> IdGenerator {
        let ms = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        IdGenerator {
            prefix: (member_id & 0xffff) << SUFFIX_BITS,
            suffix: AtomicU64::new((ms & ((1 << TIME_BITS) - 1)) << COUNT_BITS),
        }
    }

    pub fn next(&self) -> u64 {
        let s = self.suffix.fetch_add(1, Ordering::Relaxed) + 1;
        self.prefix | (s & ((1 << SUFFIX_BITS) - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ids_carry_the_member_and_do_not_repeat() {
        let t = UNIX_EPOCH + Duration::from_millis(0x12_3456_789a);
        let g = IdGenerator::new(0xabcd_0000_0000_beef, t);
        let a = g.next();
        let b = g.next();
        assert_eq!(a >> 48, 0xbeef);
        assert_eq!(b, a + 1);
        assert_eq!((a >> 8) & ((1 << 40) - 1), 0x12_3456_789a);
        // Another member at the same instant never collides.
        let other = IdGenerator::new(0xbef0, t);
        assert_ne!(other.next() >> 48, a >> 48);
        // A restart a millisecond later starts past the earlier ids' counter space.
        let later = IdGenerator::new(0xbeef, t + Duration::from_millis(1));
        assert!(later.next() > a + 200);
    }

    #[test]
    fn a_waiter_is_answered_once_and_close_fails_the_rest() {
        let w = Wait::default();
        let mut r1 = w.register(1).unwrap();
        let mut r2 = w.register(2).unwrap();
        assert!(w.register(1).is_err(), "an id pending twice is a bug");
        assert!(w.trigger(1, Err(ServerError::NoLeader)));
        assert!(!w.trigger(1, Err(ServerError::NoLeader)), "answered once");
        assert_eq!(r1.try_recv().unwrap().unwrap_err(), ServerError::NoLeader);
        w.close(ServerError::Stopped);
        assert_eq!(r2.try_recv().unwrap().unwrap_err(), ServerError::Stopped);
        assert_eq!(w.register(3).unwrap_err(), ServerError::Stopped);
        assert!(w.is_empty());
    }
}
