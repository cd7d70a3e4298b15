//! The watch hub: fans the apply loop's committed events out to watchers, with etcd's watch
//! guarantees (ordered, unique, atomic per revision, reliable, resumable, bookmarkable) and
//! without any watcher being able to slow the apply loop or other watchers down.
//!
//! # Parts
//! - [`WatchHub`] (this module) holds the **synced** watchers: those that have received every
//!   event up to the last published revision. The apply loop calls [`WatchHub::publish`] once
//!   per committed batch, after the backend commit (so a catch-up read finds every published
//!   revision) and before any client is answered (so a client that saw its write acknowledged
//!   at revision R is then told progress at R or later). `publish` only matches keys and moves
//!   `Arc`ed events into per-stream queues; it never waits for a client. The streams it fed
//!   are woken once the batch's writers are answered, a busy stream's at its next slot
//!   (`pace.rs`).
//! - Each gRPC watch stream is a [`stream::StreamShared`]: its watchers, and one FIFO queue of
//!   responses-to-be. Its gRPC response stream ([`WatchResponseStream`]) drains the queue
//!   whenever gRPC asks for more, rendering responses in place, and drives the catch-up of the
//!   stream's **unsynced** watchers from the backend; a small per-stream task, the watchdog,
//!   keeps its timers (progress notifications, the stall check, the leader check). Everything a
//!   stream says is ordered by that one queue.
//! - A watcher is unsynced when it starts at a past revision, or when its stream's queue was
//!   over its bound when an event for it was published (a *victim*: etcd's term). It then
//!   leaves the hub and is caught up from the backend by its own stream, in steps of at
//!   most [`CATCH_UP_EVENTS`] events, never blocking anyone else; it rejoins the synced set once
//!   a step ends at a revision the hub has not gone past (under the hub lock, so no event is
//!   skipped or sent twice).
//! - When the store under the hub is replaced (a snapshot installed), [`WatchHub::resync_all`]
//!   makes every synced watcher unsynced from its own next revision, to be caught up from the
//!   new contents the same way.
//! - A stream whose client takes no response for `stall_timeout` while some are pending is
//!   cancelled: every watcher on it gets a cancel response with a reason saying so, and the
//!   stream ends. Nothing is dropped silently.
//!
//! # Locks
//! Hub lock before stream lock, always; neither is held across an await or a backend read.

mod catchup;
mod pace;
mod ranges;
pub mod stream;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_mvcc::{Event, Store};
use ballast_proto::etcdserverpb::{watch_create_request::FilterType, WatchCreateRequest};
use parking_lot::Mutex;

use crate::raft::RaftStatus;
use stream::{Flags, Out, Watcher};
pub use stream::{StreamShared, WatchResponseStream};

/// Events a catch-up step reads from the backend, at most (a revision is never split, so one
/// huge revision can exceed it).
pub const CATCH_UP_EVENTS: usize = 1000;

/// The first catch-up step of a stream reads this many events; each further step while the
/// client keeps taking them reads twice as many, up to [`CATCH_UP_EVENTS`]. A client that
/// stops reading has cost the server at most about twice what it took.
pub const CATCH_UP_FIRST_STEP: usize = 64;

/// Revisions' rows a catch-up step looks at, at most (whole revisions), however few of them
/// its watchers want.
pub const CATCH_UP_SCAN: usize = 64 * CATCH_UP_EVENTS;

/// The events of one revision (one etcd write transaction), in the order they were made.
#[derive(Debug, Clone)]
pub struct RevEvents {
    pub rev: i64,
    pub events: Vec<Event>,
}

/// Tuning of the hub; see [`crate::config::ServerConfig`] for the flags behind them.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Periodic progress notifications for watchers created with `progress_notify`.
    pub progress_interval: Duration,
    /// Responses of a watcher created with `fragment` are split above this size.
    pub max_request_bytes: usize,
    /// Events a stream may have queued before further events make its watchers victims.
    pub queue_events: usize,
    /// A stream that gRPC has not drained for `blocked_after` (its client's window is full: it
    /// is not reading) makes victims from this many queued events on, long before
    /// `queue_events`: its client cannot take them anyway, and feeding its watchers would cost
    /// the apply loop an append per event until the full bound.
    pub blocked_queue_events: usize,
    pub blocked_after: Duration,
    /// A busy stream (fed at least twice per interval) woken less than this long ago is
    /// woken again at the next point of its connection's grid of this period, not at once
    /// (zero: every stream always at once). See `pace.rs`.
    pub batch_interval: Duration,
    /// A stream that takes no response this long while some are pending is cancelled.
    pub stall_timeout: Duration,
    /// Streams opened with `hasleader` metadata end after this long without a leader.
    pub no_leader_timeout: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            progress_interval: crate::config::DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL,
            max_request_bytes: crate::config::DEFAULT_MAX_REQUEST_BYTES,
            queue_events: 4096,
            blocked_queue_events: 256,
            blocked_after: Duration::from_millis(100),
            batch_interval: crate::config::DEFAULT_WATCH_BATCH_INTERVAL,
            stall_timeout: crate::config::DEFAULT_WATCH_STALL_TIMEOUT,
            no_leader_timeout: Duration::from_secs(3),
        }
    }
}

/// What a watcher watches: etcd's `[key, range_end)` with its two special ends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyRange {
    Single(Vec<u8>),
    /// Every key `>= key` (`range_end = "\0"`).
    From(Vec<u8>),
    /// `[key, end)`, `key < end`.
    Range(Vec<u8>, Vec<u8>),
}

impl KeyRange {
    /// etcd's normalisation of a create request: an empty key is `"\0"`, the smallest key.
    /// `None` for an empty range (`key >= range_end`).
    pub fn from_request(key: &[u8], range_end: &[u8]) -> Option<KeyRange> {
        let key = if key.is_empty() {
            vec![0]
        } else {
            key.to_vec()
        };
        match range_end {
            [] => Some(KeyRange::Single(key)),
            [0] => Some(KeyRange::From(key)),
            end if key.as_slice() < end => Some(KeyRange::Range(key, end.to_vec())),
            _ => None,
        }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        match self {
            KeyRange::Single(key) => k == key.as_slice(),
            KeyRange::From(key) => k >= key.as_slice(),
            KeyRange::Range(key, end) => k >= key.as_slice() && k < end.as_slice(),
        }
    }
}

/// A synced watcher as the hub finds it: its stream, and its id there. Its next revision,
/// flags and queue live in the stream's state.
struct Member {
    stream: Arc<StreamShared>,
    wid: i64,
}

/// The watchers of one key or range. Matching is done once per group: every member of a
/// group wants the same events of a revision.
type Group = Vec<Member>;

struct HubInner {
    /// The last revision published: every event at or below it has been handed to the synced
    /// watchers (or their streams made them victims).
    rev: i64,
    /// Counts publishes; a stream is woken once per publish however many events it got.
    epoch: u64,
    /// Single-key synced watchers, by key.
    by_key: HashMap<Vec<u8>, Group>,
    /// Range and from-key synced watchers, by range (Kubernetes has a few prefixes with many
    /// watchers each): a publish finds the ranges that contain an event's key without looking
    /// at the others.
    by_range: ranges::RangeIndex<Group>,
    synced: usize,
}

impl HubInner {
    fn add_synced(&mut self, stream: &Arc<StreamShared>, wid: i64, range: KeyRange) {
        let m = Member {
            stream: stream.clone(),
            wid,
        };
        match range {
            KeyRange::Single(k) => self.by_key.entry(k).or_default().push(m),
            r => self.by_range.get_or_insert_with(r, Vec::new).push(m),
        }
        self.synced += 1;
    }

    fn remove_synced(&mut self, sid: u64, wid: i64, range: &KeyRange) {
        let group = match range {
            KeyRange::Single(k) => self.by_key.get_mut(k),
            r => self.by_range.get_mut(r),
        };
        let Some(group) = group else {
            return;
        };
        let before = group.len();
        group.retain(|m| !(m.stream.id == sid && m.wid == wid));
        let removed = group.len() < before;
        if group.is_empty() {
            match range {
                KeyRange::Single(k) => {
                    self.by_key.remove(k);
                }
                r => {
                    self.by_range.remove(r);
                }
            }
        }
        if removed {
            self.synced -= 1;
        }
    }

    /// Keeps the synced watchers for which `keep` returns true; the others leave the synced
    /// set.
    fn retain_synced(&mut self, mut keep: impl FnMut(&Member) -> bool) {
        let mut removed = 0;
        let mut filter = |group: &mut Group| {
            let before = group.len();
            group.retain(&mut keep);
            removed += before - group.len();
            !group.is_empty()
        };
        self.by_key.retain(|_, g| filter(g));
        self.by_range.retain(|_, g| filter(g));
        self.synced -= removed;
    }
}

/// What a response header needs besides the revision.
#[derive(Clone)]
pub struct HeaderSource {
    pub cluster_id: u64,
    pub member_id: u64,
    pub status: Arc<RaftStatus>,
}

/// The stream wake-ups of one publish, made when this is dropped.
#[must_use = "dropping it wakes the streams; hold it only to wake them later"]
pub struct Wakes<'a> {
    hub: &'a WatchHub,
    touched: Vec<Arc<StreamShared>>,
    deferred: Vec<(Instant, Arc<StreamShared>)>,
}

impl Drop for Wakes<'_> {
    fn drop(&mut self) {
        for s in self.touched.drain(..) {
            s.wake();
        }
        if let Some(p) = &self.hub.pacer {
            self.hub
                .deferred_wakes
                .fetch_add(self.deferred.len() as u64, Ordering::Relaxed);
            p.defer(std::mem::take(&mut self.deferred));
        }
    }
}

pub struct WatchHub {
    store: Store,
    opts: WatchOptions,
    header: HeaderSource,
    inner: Mutex<HubInner>,
    next_stream: AtomicU64,
    victims: AtomicU64,
    /// Wake-ups of busy streams put off to their next slot (batched).
    deferred_wakes: AtomicU64,
    catch_up_pool: catchup::CatchUpPool,
    /// Batched wake-ups of busy streams (`None`: every publish wakes its streams at once).
    pacer: Option<pace::Pacer>,
}

impl WatchHub {
    pub fn new(store: Store, opts: WatchOptions, header: HeaderSource) -> WatchHub {
        let rev = store.current_revision();
        let interval = opts.batch_interval;
        let pacer = (!interval.is_zero())
            .then(|| pace::Pacer::start(interval))
            .flatten();
        WatchHub {
            store,
            opts,
            header,
            inner: Mutex::new(HubInner {
                rev,
                epoch: 0,
                by_key: HashMap::new(),
                by_range: ranges::RangeIndex::default(),
                synced: 0,
            }),
            next_stream: AtomicU64::new(1),
            victims: AtomicU64::new(0),
            deferred_wakes: AtomicU64::new(0),
            catch_up_pool: catchup::CatchUpPool::new(catchup::threads()),
            pacer,
        }
    }

    /// The last published revision.
    pub fn revision(&self) -> i64 {
        self.inner.lock().rev
    }

    /// Number of synced watchers (for tests and metrics).
    pub fn synced_watchers(&self) -> usize {
        self.inner.lock().synced
    }

    /// Times a synced watcher was made a victim because its stream's queue was full.
    pub fn victims_total(&self) -> u64 {
        self.victims.load(Ordering::Relaxed)
    }

    /// Times a busy stream's wake-up was put off to its next slot (`--watch-batch-interval`).
    pub fn deferred_wakes_total(&self) -> u64 {
        self.deferred_wakes.load(Ordering::Relaxed)
    }

    pub fn options(&self) -> &WatchOptions {
        &self.opts
    }

    /// Hands a committed batch to the synced watchers; `current_rev` is the store revision after
    /// it. Never blocks on a client: a stream over its queue bound (or over the lower one for a
    /// stream gRPC has not drained for a while) has the affected watchers made victims, to be
    /// caught up from the backend by its own response stream.
    ///
    /// The streams it fed are woken when the returned [`Wakes`] is dropped: the apply loop
    /// answers the batch's writers first, so their answers are ahead of the watch streams in
    /// the runtime's queue (the events themselves are queued, and the hub's revision advanced,
    /// before this returns).
    pub fn publish(&self, batch: Vec<RevEvents>, current_rev: i64) -> Wakes<'_> {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        inner.epoch += 1;
        let epoch = inner.epoch;
        let mut touched: Vec<Arc<StreamShared>> = Vec::new();
        let mut deferred: Vec<(Instant, Arc<StreamShared>)> = Vec::new();
        let mut victims: Vec<(u64, i64, KeyRange)> = Vec::new();
        if inner.synced > 0 {
            let now = Instant::now();
            for re in batch {
                // The groups this revision reaches, each with the indexes of its events (a
                // selection is kept only when a group wants some of them, not all).
                let mut hits: Vec<(&Group, Vec<u32>)> = Vec::new();
                fn hit<'g>(hits: &mut Vec<(&'g Group, Vec<u32>)>, g: &'g Group, i: usize) {
                    match hits.iter_mut().find(|(k, _)| std::ptr::eq(*k, g)) {
                        Some((_, idx)) => idx.push(i as u32),
                        None => hits.push((g, vec![i as u32])),
                    }
                }
                for (i, ev) in re.events.iter().enumerate() {
                    if let Some(g) = inner.by_key.get(&ev.kv.key) {
                        hit(&mut hits, g, i);
                    }
                    let by_range = &inner.by_range;
                    by_range.containing(&ev.kv.key, |r| hit(&mut hits, by_range.at(r), i));
                }
                if hits.is_empty() {
                    continue;
                }
                // Shared (and their encodings slotted) only for a revision somebody wants.
                let events = wire::SharedEvents::new(re.events);
                for (group, idx) in hits {
                    let n = idx.len();
                    let sel: Option<Arc<[u32]>> = (n < events.len()).then(|| idx.into());
                    for m in group {
                        let mut guard = m.stream.state.lock();
                        let st = &mut *guard;
                        let Some(w) = st.watchers.get_mut(&m.wid) else {
                            continue;
                        };
                        if !w.synced || re.rev < w.next_rev {
                            continue;
                        }
                        let after = st.queued_events + n;
                        let over = st.queued_events > 0
                            && (after > self.opts.queue_events
                                || after > self.opts.blocked_queue_events
                                    && now.duration_since(st.queued_since)
                                        >= self.opts.blocked_after);
                        if over {
                            // Victim: stop feeding it; its stream catches it up from this revision.
                            w.synced = false;
                            w.next_rev = re.rev;
                            victims.push((m.stream.id, m.wid, w.range.clone()));
                        } else {
                            w.events_since_tick = true;
                            w.next_rev = re.rev + 1;
                            let flags = w.flags;
                            st.push_events(
                                n,
                                now,
                                Out::Events {
                                    wid: m.wid,
                                    header_rev: re.rev,
                                    events: events.clone(),
                                    sel: sel.clone(),
                                    flags,
                                },
                            );
                        }
                        if st.woken_at != epoch {
                            st.woken_at = epoch;
                            // Every feed counts toward the rate, deferred wake-up or not.
                            let slot = self.pacer.as_ref().and_then(|p| {
                                let busy = p.fed(&mut st.feed, now);
                                (busy && !p.wake_now(st.last_wake, now))
                                    .then(|| p.next_slot(m.stream.phase_key, now))
                            });
                            if !st.wake_deferred {
                                if let Some(at) = slot {
                                    st.wake_deferred = true;
                                    deferred.push((at, m.stream.clone()));
                                } else {
                                    st.last_wake = Some(now);
                                    touched.push(m.stream.clone());
                                }
                            }
                        }
                    }
                }
                // Victims leave the synced set before the next revision is matched.
                self.victims
                    .fetch_add(victims.len() as u64, Ordering::Relaxed);
                for (sid, wid, range) in victims.drain(..) {
                    inner.remove_synced(sid, wid, &range);
                }
            }
        }
        inner.rev = inner.rev.max(current_rev);
        drop(guard);
        Wakes {
            hub: self,
            touched,
            deferred,
        }
    }

    /// The store under the hub was replaced (a backend snapshot was installed) and is now at
    /// `current_rev`, as etcd's watchable store `Restore`: every synced watcher that wants a
    /// revision up to `current_rev` becomes unsynced from its own next revision, and its stream
    /// catches it up from the new contents like any unsynced watcher (events above what it was
    /// sent, never one at or below; a watcher whose next revision is now compacted is
    /// cancelled with the compact revision, as a watch created at a compacted revision is).
    /// A watcher waiting for a revision past `current_rev` (created with a future start
    /// revision) needs nothing from the store and stays synced. The hub's revision becomes
    /// `current_rev`.
    ///
    /// Called by the apply loop after `Store::install_snapshot` and before it publishes
    /// anything newer. Unsynced watchers need nothing here: their next step reads the new
    /// contents, and a step that was reading the old ones read the same committed history up
    /// to its revision, after which it rejoins the synced set only if the hub is not past
    /// that revision (else it takes another step, from the new contents).
    pub fn resync_all(&self, current_rev: i64) {
        let mut inner = self.inner.lock();
        if current_rev < inner.rev {
            tracing::warn!(
                hub_revision = inner.rev,
                current_rev,
                "the installed store is behind the revision watchers were told of"
            );
        }
        let mut streams: HashMap<u64, Arc<StreamShared>> = HashMap::new();
        let mut moved = 0usize;
        inner.retain_synced(|m| {
            let mut st = m.stream.state.lock();
            let Some(w) = st.watchers.get_mut(&m.wid) else {
                return false;
            };
            if w.next_rev > current_rev {
                return true;
            }
            w.synced = false;
            moved += 1;
            streams
                .entry(m.stream.id)
                .or_insert_with(|| m.stream.clone());
            false
        });
        inner.rev = current_rev;
        drop(inner);
        tracing::info!(
            watchers = moved,
            streams = streams.len(),
            revision = current_rev,
            "store replaced: watchers are caught up from it"
        );
        // Their response streams start the catch-up.
        for s in streams.into_values() {
            s.wake();
        }
    }

    /// Registers a new watch stream and starts its watchdog on the current tokio runtime.
    /// `require_leader`: etcd's `hasleader` metadata (the stream ends without a leader).
    pub fn open_stream(
        self: &Arc<Self>,
        require_leader: bool,
    ) -> (Arc<StreamShared>, WatchResponseStream) {
        self.open_stream_on(require_leader, None)
    }

    /// [`Self::open_stream`] for a stream on client connection `connection` (an id unique
    /// among the server's connections), when known.
    pub fn open_stream_on(
        self: &Arc<Self>,
        require_leader: bool,
        connection: Option<u64>,
    ) -> (Arc<StreamShared>, WatchResponseStream) {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        // Connection ids and stream ids are told apart by the top bit.
        let phase_key = connection.map_or(id, |c| c | 1 << 63);
        let shared = Arc::new(StreamShared::new(id, phase_key));
        let out = stream::start(self.clone(), shared.clone(), require_leader);
        (shared, out)
    }

    /// Forgets a stream and all its watchers.
    /// Returns the ids of the watchers it had, in order.
    pub(crate) fn close_stream(&self, s: &StreamShared) -> Vec<i64> {
        let mut inner = self.inner.lock();
        let mut st = s.state.lock();
        st.closed = true;
        let mut ids = Vec::with_capacity(st.watchers.len());
        for (wid, w) in st.watchers.drain() {
            if w.synced {
                inner.remove_synced(s.id, wid, &w.range);
            }
            ids.push(wid);
        }
        ids.sort_unstable();
        st.take_queue();
        drop(st);
        s.notify_drained();
        ids
    }

    /// etcd's WatchCreateRequest: answers `created` (or created+canceled with the reason) on
    /// the stream, then events from the start revision on.
    pub fn create(&self, s: &Arc<StreamShared>, req: &WatchCreateRequest) {
        let mut inner = self.inner.lock();
        let hub_rev = inner.rev;
        let mut st = s.state.lock();
        if st.closed {
            return;
        }
        let Some(range) = KeyRange::from_request(&req.key, &req.range_end) else {
            st.push_control(stream::created_failed(
                hub_rev,
                "mvcc: watcher range is empty",
            ));
            drop(st);
            s.wake();
            return;
        };
        let wid = if req.watch_id == 0 {
            while st.watchers.contains_key(&st.next_auto_id) {
                st.next_auto_id += 1;
            }
            let id = st.next_auto_id;
            st.next_auto_id += 1;
            id
        } else if st.watchers.contains_key(&req.watch_id) {
            st.push_control(stream::created_failed(
                hub_rev,
                "mvcc: duplicate watch ID provided on the WatchStream",
            ));
            drop(st);
            s.wake();
            return;
        } else {
            req.watch_id
        };
        // A negative start revision behaves like 0 in etcd (its catch-up scan from a negative
        // revision finds nothing and the watcher joins the synced set at the current revision).
        let start = match req.start_revision {
            r if r <= 0 => hub_rev + 1,
            r => r,
        };
        let flags = Flags {
            prev_kv: req.prev_kv,
            no_put: req.filters.contains(&(FilterType::Noput as i32)),
            no_delete: req.filters.contains(&(FilterType::Nodelete as i32)),
            fragment: req.fragment,
        };
        let synced = start > hub_rev;
        st.watchers.insert(
            wid,
            Watcher {
                range: range.clone(),
                flags,
                progress_notify: req.progress_notify,
                synced,
                next_rev: start,
                progress_pending: false,
                events_since_tick: false,
            },
        );
        st.push_control(stream::created(hub_rev, wid));
        drop(st);
        if synced {
            inner.add_synced(s, wid, range);
        }
        drop(inner);
        s.wake();
    }

    /// etcd's WatchCancelRequest: an unknown id is ignored, like etcd.
    pub fn cancel(&self, s: &Arc<StreamShared>, wid: i64) {
        let mut inner = self.inner.lock();
        let rev = inner.rev;
        let mut st = s.state.lock();
        let Some(w) = st.watchers.remove(&wid) else {
            return;
        };
        if w.synced {
            inner.remove_synced(s.id, wid, &w.range);
        }
        // What it already had queued is still sent, ahead of the cancel: a progress
        // notification queued before the cancel vouches for those events.
        st.push_control(stream::canceled(rev, wid, 0, ""));
        drop(st);
        drop(inner);
        s.wake();
    }

    /// etcd's WatchProgressRequest. When every watcher of the stream is synced, one response
    /// with `watch_id = -1` at the published revision (as etcd). Otherwise each synced watcher
    /// gets its own progress response now and each unsynced one when it has caught up, so one
    /// slow watcher never holds back the others' progress.
    pub fn request_progress(&self, s: &Arc<StreamShared>) {
        let inner = self.inner.lock();
        let rev = inner.rev;
        let mut st = s.state.lock();
        if st.closed {
            return;
        }
        if !st.has_unsynced() {
            st.push_control(stream::progress(rev, -1));
        } else {
            let mut per = Vec::new();
            for (wid, w) in st.watchers.iter_mut() {
                if w.synced {
                    per.push(*wid);
                } else {
                    w.progress_pending = true;
                }
            }
            per.sort_unstable();
            for wid in per {
                st.push_control(stream::progress(rev, wid));
            }
        }
        drop(st);
        drop(inner);
        s.wake();
    }

    /// The periodic progress notification (`progress_notify` watchers that are synced and got
    /// no event since the last tick), as etcd's send loop does.
    pub(crate) fn tick_progress(&self, s: &Arc<StreamShared>) {
        let inner = self.inner.lock();
        let rev = inner.rev;
        let mut st = s.state.lock();
        let mut due = Vec::new();
        for (wid, w) in st.watchers.iter_mut() {
            if !w.progress_notify {
                continue;
            }
            if w.synced && !w.events_since_tick {
                due.push(*wid);
            }
            w.events_since_tick = false;
        }
        due.sort_unstable();
        for wid in &due {
            st.push_control(stream::progress(rev, *wid));
        }
        drop(st);
        drop(inner);
        if !due.is_empty() {
            s.wake();
        }
    }

    /// One catch-up step for the stream's unsynced watchers (a blocking backend read: run it
    /// off the async workers). Cancels watchers whose next revision was compacted. Returns
    /// false when there was nothing to do (nothing queued, nothing left to catch up).
    pub(crate) fn catch_up(&self, s: &Arc<StreamShared>) -> bool {
        let compact = self.store.compact_revision();
        let cancelled_any;
        let step;
        let pending: Vec<(i64, i64, KeyRange, bool)> = {
            let mut st = s.state.lock();
            let mut compacted = Vec::new();
            for (wid, w) in st.watchers.iter() {
                if !w.synced && w.next_rev < compact {
                    compacted.push(*wid);
                }
            }
            compacted.sort_unstable();
            cancelled_any = !compacted.is_empty();
            for wid in compacted {
                st.watchers.remove(&wid);
                st.push_control(stream::compacted(wid, compact));
            }
            let pending: Vec<_> = st
                .watchers
                .iter()
                .filter(|(_, w)| !w.synced)
                .map(|(wid, w)| (*wid, w.next_rev, w.range.clone(), w.flags.prev_kv))
                .collect();
            if pending.is_empty() {
                st.catch_up_step = CATCH_UP_FIRST_STEP;
            }
            step = st.catch_up_step;
            st.catch_up_step = (step * 2).min(CATCH_UP_EVENTS);
            pending
        };
        if pending.is_empty() {
            return cancelled_any;
        }
        let from = pending.iter().map(|p| p.1).min().unwrap_or(1);
        // Only the events some pending watcher wants, with a previous version only for the
        // keys of watchers that asked for one.
        let wanted = |key: &[u8]| {
            let mut hit = None;
            for (_, _, range, prev_kv) in &pending {
                if range.contains(key) {
                    if *prev_kv {
                        return Some(true);
                    }
                    hit = Some(false);
                }
            }
            hit
        };
        let read = self.store.read().and_then(|view| {
            let view_rev = view.revision();
            view.events_matching(from, view_rev, step, CATCH_UP_SCAN, wanted)
                .map(|(evs, last)| (evs, last, view_rev))
        });
        let (events, last, view_rev) = match read {
            Ok(r) => r,
            Err(ballast_mvcc::MvccError::Compacted) => return true, // next step cancels them
            Err(e) => {
                tracing::error!(error = %e, "watch catch-up read failed; retrying");
                std::thread::sleep(Duration::from_millis(100));
                return true;
            }
        };
        let events = wire::SharedEvents::new(events);
        let header_rev = last;
        {
            let mut guard = s.state.lock();
            let st = &mut *guard;
            for (wid, _, range, _) in &pending {
                let Some(w) = st.watchers.get_mut(wid) else {
                    continue; // cancelled meanwhile
                };
                if w.synced || w.next_rev > last {
                    continue;
                }
                let next = w.next_rev;
                let sel: Vec<u32> = events
                    .events()
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.kv.mod_revision >= next && range.contains(&e.kv.key))
                    .map(|(i, _)| i as u32)
                    .collect();
                w.next_rev = last + 1;
                let flags = w.flags;
                if !sel.is_empty() {
                    w.events_since_tick = true;
                    st.push_events(
                        sel.len(),
                        Instant::now(),
                        Out::Events {
                            wid: *wid,
                            header_rev,
                            events: events.clone(),
                            sel: Some(sel.into()),
                            flags,
                        },
                    );
                }
            }
        }
        if last == view_rev {
            self.try_join(s, view_rev);
        }
        true
    }

    /// Moves the stream's watchers that caught up to `view_rev` into the synced set, unless
    /// the hub already published past it (then they take another catch-up step).
    fn try_join(&self, s: &Arc<StreamShared>, view_rev: i64) {
        let mut inner = self.inner.lock();
        if inner.rev > view_rev {
            return;
        }
        let mut st = s.state.lock();
        if st.closed {
            return;
        }
        let mut joined = Vec::new();
        for (wid, w) in st.watchers.iter_mut() {
            if !w.synced && w.next_rev == view_rev + 1 {
                w.synced = true;
                joined.push((
                    *wid,
                    w.range.clone(),
                    std::mem::take(&mut w.progress_pending),
                ));
            }
        }
        joined.sort_unstable_by_key(|j| j.0);
        for (wid, _, pending_progress) in &joined {
            if *pending_progress {
                st.push_control(stream::progress(view_rev, *wid));
            }
        }
        drop(st);
        for (wid, range, _) in joined {
            inner.add_synced(s, wid, range);
        }
    }

    pub(crate) fn header(&self, rev: i64) -> ballast_proto::etcdserverpb::ResponseHeader {
        ballast_proto::etcdserverpb::ResponseHeader {
            cluster_id: self.header.cluster_id,
            member_id: self.header.member_id,
            revision: rev,
            raft_term: self.header.status.term(),
        }
    }

    pub(crate) fn has_leader(&self) -> bool {
        self.header.status.leader() != 0
    }
}

#[cfg(test)]
mod tests;
