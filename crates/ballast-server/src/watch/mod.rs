//! The watch hub: fans the apply loop's committed events out to watchers.
//!
//! The apply loop calls [`WatchHub::publish`] once per committed batch, after the backend commit
//! (so a watcher catching up from the backend can read every published revision) and before any
//! client is answered (so a client that saw its write acknowledged at revision R gets progress
//! notifications at R or later). `publish` never blocks on a watcher.

use ballast_mvcc::{Event, Store};
use parking_lot::Mutex;

/// The events of one revision (one etcd write transaction), in the order they were made.
#[derive(Debug, Clone)]
pub struct RevEvents {
    pub rev: i64,
    pub events: Vec<Event>,
}

pub struct WatchHub {
    #[allow(dead_code)]
    store: Store,
    inner: Mutex<HubInner>,
}

struct HubInner {
    /// The last revision published (every event at or below it has been handed to watchers).
    rev: i64,
}

impl WatchHub {
    pub fn new(store: Store) -> WatchHub {
        let rev = store.current_revision();
        WatchHub {
            store,
            inner: Mutex::new(HubInner { rev }),
        }
    }

    /// Hands a committed batch to the watchers; `current_rev` is the store revision after it.
    pub fn publish(&self, _batch: Vec<RevEvents>, current_rev: i64) {
        let mut inner = self.inner.lock();
        inner.rev = inner.rev.max(current_rev);
    }

    /// The last published revision.
    pub fn revision(&self) -> i64 {
        self.inner.lock().rev
    }
}
