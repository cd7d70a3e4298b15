//! One watch stream: its watchers, its ordered queue of responses-to-be, the gRPC response
//! stream that turns the queue into responses (filters, `prev_kv`, fragments) and catches up
//! its unsynced watchers, and the watchdog task that keeps its timers (progress notifications,
//! stalls, the leader check).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ballast_mvcc::EventKind;
use ballast_proto::etcdserverpb::{ResponseHeader, WatchResponse};
use futures::task::AtomicWaker;
use futures::Stream;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tonic::Status;

use super::wire::{EventsFrame, SharedEvents, WatchFrame};
use super::{KeyRange, WatchHub};

/// Per-watcher options that shape its responses.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Flags {
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
    pub fragment: bool,
}

pub(crate) struct Watcher {
    pub range: KeyRange,
    pub flags: Flags,
    pub progress_notify: bool,
    /// In the hub's synced set (gets live events).
    pub synced: bool,
    /// Unsynced: the revision its catch-up resumes from.
    pub next_rev: i64,
    /// A progress request arrived while it was unsynced: answer once it has caught up.
    pub progress_pending: bool,
    /// Got events since the last periodic progress tick (etcd elides that tick's notification).
    pub events_since_tick: bool,
}

/// An entry of a stream's queue.
pub(crate) enum Out {
    /// Events of one watcher: `sel` picks from `events` (None: all of them).
    Events {
        wid: i64,
        header_rev: i64,
        events: Arc<SharedEvents>,
        sel: Option<Arc<[u32]>>,
        flags: Flags,
    },
    /// A response without events; rendering fills in the member fields of its header.
    Control(WatchResponse),
}

pub(crate) struct StreamState {
    pub watchers: HashMap<i64, Watcher>,
    pub queue: VecDeque<Out>,
    /// Events held by `queue` (the bound that makes victims).
    pub queued_events: usize,
    /// When the first of them was queued (the response stream drains all of them at once).
    pub queued_since: Instant,
    pub next_auto_id: i64,
    pub closed: bool,
    /// The hub's publish epoch in which this stream was last put on its wake list.
    pub woken_at: u64,
    /// When the hub last woke the stream for new events (for batched wake-ups).
    pub last_wake: Option<Instant>,
    /// A batched wake-up of the stream is pending: publishes do not wake it meanwhile.
    pub wake_deferred: bool,
    /// How often publishes feed the stream (only busy streams' wake-ups are batched).
    pub feed: super::pace::FeedRate,
    /// Events the next catch-up step reads, at most.
    pub catch_up_step: usize,
    /// Control responses (created, canceled, progress) in `queue`: the request reader waits
    /// while there are [`CONTROL_QUEUE`] of them (see [`StreamShared::control_room`]).
    pub controls: usize,
}

/// Control responses a stream may have queued before its request reader stops reading
/// requests until the client takes responses (etcd's ctrlStream holds 16).
pub const CONTROL_QUEUE: usize = 16;

impl StreamState {
    pub fn push_control(&mut self, r: WatchResponse) {
        self.controls += 1;
        self.queue.push_back(Out::Control(r));
    }

    /// Empties the queue (drained by the response stream, or the stream closed).
    pub fn take_queue(&mut self) -> Vec<Out> {
        self.queued_events = 0;
        self.controls = 0;
        self.queue.drain(..).collect()
    }

    /// Queues `out`, an `Out::Events` holding `n` events, and counts them toward the queue's
    /// bounds (`queued_since` is when the queue last stopped being empty).
    pub fn push_events(&mut self, n: usize, now: Instant, out: Out) {
        if self.queued_events == 0 {
            self.queued_since = now;
        }
        self.queued_events += n;
        self.queue.push_back(out);
    }

    /// Some watcher of the stream is being caught up from the backend.
    pub fn has_unsynced(&self) -> bool {
        self.watchers.values().any(|w| !w.synced)
    }
}

/// A stream as the hub sees it; shared by the hub, the response stream, its watchdog and the
/// request reader.
pub struct StreamShared {
    pub id: u64,
    /// Picks the phase of the stream's batched wake-ups: its connection's id when known, so
    /// that a connection's busy streams are woken together and leave in one write.
    pub(crate) phase_key: u64,
    pub(crate) state: Mutex<StreamState>,
    /// The response stream's task, woken when something is queued.
    waker: AtomicWaker,
    /// Times gRPC asked the response stream for more (the stall check's sign of life).
    polls: AtomicU64,
    /// The response stream holds rendered responses gRPC has not asked for yet.
    holding: AtomicBool,
    /// A catch-up step is being read for this stream.
    catching_up: AtomicBool,
    /// What the stream says before it ends, set by its watchdog (stall, no leader).
    abort: Mutex<Option<Abort>>,
    /// The response stream was dropped: its watchdog ends.
    ended: Notify,
    /// The queue was drained (or the stream closed): a request reader waiting for room goes
    /// on.
    drained: Notify,
}

impl StreamShared {
    pub(crate) fn new(id: u64, phase_key: u64) -> StreamShared {
        StreamShared {
            id,
            phase_key,
            state: Mutex::new(StreamState {
                watchers: HashMap::new(),
                queue: VecDeque::new(),
                queued_events: 0,
                queued_since: Instant::now(),
                next_auto_id: 0,
                closed: false,
                woken_at: 0,
                last_wake: None,
                wake_deferred: false,
                feed: Default::default(),
                catch_up_step: super::CATCH_UP_FIRST_STEP,
                controls: 0,
            }),
            waker: AtomicWaker::new(),
            polls: AtomicU64::new(0),
            holding: AtomicBool::new(false),
            catching_up: AtomicBool::new(false),
            abort: Mutex::new(None),
            ended: Notify::new(),
            drained: Notify::new(),
        }
    }

    /// Waits until the stream has room for another control response: fewer than
    /// [`CONTROL_QUEUE`] queued, or the stream closed. The request reader awaits this before
    /// it reads the next request, so a client that sends requests but never reads their
    /// answers stops being read: HTTP/2 flow control then stops its sends, as etcd's receive
    /// loop blocks on its full control channel.
    pub async fn control_room(&self) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            {
                let st = self.state.lock();
                if st.closed || st.controls < CONTROL_QUEUE {
                    return;
                }
            }
            drained.await;
        }
    }

    /// Wakes a request reader waiting for room.
    pub(crate) fn notify_drained(&self) {
        self.drained.notify_waiters();
    }

    /// Wakes the response stream (something was queued).
    pub(crate) fn wake(&self) {
        self.waker.wake();
    }
}

fn header(rev: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision: rev,
        ..Default::default()
    })
}

pub(crate) fn created(rev: i64, wid: i64) -> WatchResponse {
    WatchResponse {
        header: header(rev),
        watch_id: wid,
        created: true,
        ..Default::default()
    }
}

/// etcd answers a create it refuses with created + canceled, watch id -1 and the reason.
pub(crate) fn created_failed(rev: i64, reason: &str) -> WatchResponse {
    WatchResponse {
        header: header(rev),
        watch_id: -1,
        created: true,
        canceled: true,
        cancel_reason: reason.into(),
        ..Default::default()
    }
}

pub(crate) fn canceled(rev: i64, wid: i64, compact_revision: i64, reason: &str) -> WatchResponse {
    WatchResponse {
        header: header(rev),
        watch_id: wid,
        canceled: true,
        compact_revision,
        cancel_reason: reason.into(),
        ..Default::default()
    }
}

/// A watcher whose next revision was compacted away; etcd sends it with header revision 0.
pub(crate) fn compacted(wid: i64, compact_revision: i64) -> WatchResponse {
    canceled(0, wid, compact_revision, "")
}

pub(crate) fn progress(rev: i64, wid: i64) -> WatchResponse {
    WatchResponse {
        header: header(rev),
        watch_id: wid,
        ..Default::default()
    }
}

/// Most events one merged response carries (etcd's catch-up batches hold up to 1,000
/// revisions).
const MERGE_MAX_EVENTS: usize = 1000;

/// Renders a drained batch of queue entries into `ready`, in order, applying filters,
/// `prev_kv` and fragments. A watcher's event entries that follow each other in the batch (a
/// publish of several revisions, or several publishes since gRPC last asked) become one
/// response, as etcd sends a catch-up: one revision is never split and events keep their
/// order; the header is the last revision's. Not merged: fragmenting watchers, and anything
/// across a control response (progress, cancel), which keeps its place in the order. Events
/// go in as their shared encoded records (`wire.rs`).
fn render_batch(hub: &WatchHub, items: Vec<Out>, ready: &mut VecDeque<WatchFrame>) {
    // Watcher → index in `ready` of its response still open for merging.
    let mut open: HashMap<i64, usize> = HashMap::new();
    for item in items {
        match item {
            Out::Control(mut r) => {
                let rev = r.header.as_ref().map_or(0, |h| h.revision);
                r.header = Some(hub.header(rev));
                ready.push_back(WatchFrame::Message(r));
                open.clear();
            }
            Out::Events {
                wid,
                header_rev,
                events,
                sel,
                flags,
            } => {
                let all = events.events();
                let pick = |i: &usize| match all[*i].kind {
                    EventKind::Put => !flags.no_put,
                    EventKind::Delete => !flags.no_delete,
                };
                let evs = |into: &mut Vec<_>| match &sel {
                    None => into.extend(
                        (0..all.len())
                            .filter(pick)
                            .map(|i| events.record(i, flags.prev_kv)),
                    ),
                    Some(idx) => into.extend(
                        idx.iter()
                            .map(|i| *i as usize)
                            .filter(pick)
                            .map(|i| events.record(i, flags.prev_kv)),
                    ),
                };
                if !flags.fragment {
                    if let Some(&at) = open.get(&wid) {
                        if let WatchFrame::Events(f) = &mut ready[at] {
                            if f.events.len() < MERGE_MAX_EVENTS {
                                let before = f.events.len();
                                evs(&mut f.events);
                                if f.events.len() > before {
                                    f.header = hub.header(header_rev);
                                }
                                continue;
                            }
                        }
                    }
                }
                let mut list = Vec::new();
                evs(&mut list);
                if list.is_empty() {
                    continue;
                }
                let frame = EventsFrame {
                    header: hub.header(header_rev),
                    watch_id: wid,
                    fragment: false,
                    events: list,
                };
                if flags.fragment {
                    ready.extend(
                        frame
                            .fragments(hub.options().max_request_bytes)
                            .into_iter()
                            .map(WatchFrame::Events),
                    );
                } else {
                    open.insert(wid, ready.len());
                    ready.push_back(WatchFrame::Events(frame));
                }
            }
        }
    }
}

type Abort = VecDeque<Result<WatchResponse, Status>>;
type CatchUpStep = Pin<Box<dyn Future<Output = Option<bool>> + Send>>;

/// The response stream handed to tonic, and the stream's one sender: when gRPC asks for the
/// next response (it asks only when HTTP/2 flow control lets it send), it drains the stream's
/// queue and renders responses in place, and drives the catch-up of unsynced watchers. There
/// is no task or channel between the hub's queue and gRPC; timers (progress ticks, stalls, the
/// leader check) live in the stream's [`watchdog`].
pub struct WatchResponseStream {
    hub: Arc<WatchHub>,
    shared: Arc<StreamShared>,
    /// Rendered responses not yet handed to gRPC.
    ready: VecDeque<WatchFrame>,
    /// The catch-up step in flight (on the catch-up pool).
    catch_up: Option<CatchUpStep>,
    done: bool,
}

impl WatchResponseStream {
    /// Starts a catch-up step unless one is running.
    fn start_catch_up(&mut self) {
        if self.catch_up.is_some() {
            return;
        }
        let (h, st) = (self.hub.clone(), self.shared.clone());
        st.catching_up.store(true, Ordering::Release);
        let pool_hub = self.hub.clone();
        self.catch_up = Some(Box::pin(async move {
            pool_hub
                .catch_up_pool
                .run(move || {
                    let more = h.catch_up(&st);
                    st.catching_up.store(false, Ordering::Release);
                    more
                })
                .await
        }));
    }

    /// Starts the next catch-up step while gRPC sends the last rendered response: a replay
    /// stays one step ahead of its client, never more.
    fn read_ahead(&mut self, cx: &mut Context<'_>) {
        if self.catch_up.is_some() {
            if self.shared.catching_up.load(Ordering::Acquire) {
                return; // still reading: its end wakes us
            }
            // Read and queued already; only its answer is on the way.
            self.catch_up = None;
        }
        {
            let st = self.shared.state.lock();
            if !st.queue.is_empty() || !st.has_unsynced() {
                return;
            }
        }
        self.start_catch_up();
        if let Some(step) = self.catch_up.as_mut() {
            if let Poll::Ready(res) = step.as_mut().poll(cx) {
                self.catch_up = None;
                if res.is_none() {
                    self.done = true;
                }
            }
        }
    }

    /// What the watchdog decided the stream says before it ends, if anything.
    fn aborting(&mut self) -> Option<Poll<Option<Result<WatchFrame, Status>>>> {
        let mut abort = self.shared.abort.lock();
        let q = abort.as_mut()?;
        let next = q.pop_front().map(|r| r.map(WatchFrame::Message));
        if next.is_none() {
            self.done = true;
        }
        Some(Poll::Ready(next))
    }
}

impl Stream for WatchResponseStream {
    type Item = Result<WatchFrame, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        this.shared.polls.fetch_add(1, Ordering::Relaxed);
        // Registered before the queue is looked at: whatever is queued after that wakes us.
        this.shared.waker.register(cx.waker());
        if let Some(r) = this.aborting() {
            return r;
        }
        loop {
            if let Some(r) = this.ready.pop_front() {
                if this.ready.is_empty() {
                    this.shared.holding.store(false, Ordering::Release);
                    // Read the next catch-up step while gRPC sends this one: a replay stays
                    // one step ahead of its client, never more.
                    this.read_ahead(cx);
                }
                return Poll::Ready(Some(Ok(r)));
            }
            let items: Vec<Out> = {
                let mut st = this.shared.state.lock();
                if st.closed {
                    drop(st);
                    // Closed by the watchdog: it set what to say under the abort lock.
                    return this.aborting().unwrap_or_else(|| {
                        this.done = true;
                        Poll::Ready(None)
                    });
                }
                let had_controls = st.controls > 0;
                let items = st.take_queue();
                drop(st);
                if had_controls {
                    this.shared.notify_drained();
                }
                items
            };
            if !items.is_empty() {
                render_batch(&this.hub, items, &mut this.ready);
                this.shared
                    .holding
                    .store(!this.ready.is_empty(), Ordering::Release);
                continue;
            }
            if let Some(step) = this.catch_up.as_mut() {
                match step.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(more)) => {
                        this.catch_up = None;
                        if more {
                            continue;
                        }
                    }
                    Poll::Ready(None) => {
                        // The pool is gone (shutting down) or the step panicked.
                        this.catch_up = None;
                        this.done = true;
                        return Poll::Ready(None);
                    }
                }
            }
            if this.shared.state.lock().has_unsynced() {
                this.start_catch_up();
                continue;
            }
            return Poll::Pending;
        }
    }
}

impl WatchResponseStream {
    /// The stream as a client sees it, each frame decoded into a response (for the server's
    /// own watches: locks, elections).
    pub fn decoded(self) -> impl Stream<Item = Result<WatchResponse, Status>> + Send + Unpin {
        futures::StreamExt::map(self, |r| r.map(WatchFrame::into_response))
    }
}

impl Drop for WatchResponseStream {
    fn drop(&mut self) {
        // gRPC drops the stream when the client goes away (or after its end).
        self.hub.close_stream(&self.shared);
        self.shared.ended.notify_one();
    }
}

/// Creates the response stream of `s` and starts its watchdog on the current tokio runtime.
pub(crate) fn start(
    hub: Arc<WatchHub>,
    s: Arc<StreamShared>,
    require_leader: bool,
) -> WatchResponseStream {
    tokio::spawn(watchdog(hub.clone(), s.clone(), require_leader));
    WatchResponseStream {
        hub,
        shared: s,
        ready: VecDeque::new(),
        catch_up: None,
        done: false,
    }
}

/// Whether the stream has something to send that gRPC has not asked for: queued, rendered, or
/// a catch-up step waiting to be read (a step being read is the server's own work).
fn has_work(s: &StreamShared) -> bool {
    if s.holding.load(Ordering::Acquire) {
        return true;
    }
    let st = s.state.lock();
    !st.queue.is_empty() || (!s.catching_up.load(Ordering::Acquire) && st.has_unsynced())
}

/// The stream's timers: periodic progress notifications, the stall check (a client that takes
/// nothing for the stall timeout while something is pending gets every watcher cancelled with
/// a reason) and, for `hasleader` streams, the leader check. Ends with the stream.
async fn watchdog(hub: Arc<WatchHub>, s: Arc<StreamShared>, require_leader: bool) {
    let opts = hub.options().clone();
    // etcd adds up to 10 % jitter to the interval; spread streams the same way.
    let jitter = opts.progress_interval.mul_f64((s.id % 97) as f64 / 970.0);
    let period = opts.progress_interval + jitter;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let check = (opts.stall_timeout / 8).clamp(Duration::from_millis(10), Duration::from_secs(5));
    let mut stall_timer = tokio::time::interval(check);
    stall_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leader_timer = tokio::time::interval(Duration::from_millis(100));
    let mut leaderless_since: Option<Instant> = None;
    // Since when work has been pending with gRPC asking for nothing, and its poll count then.
    let mut stuck: Option<(u64, Instant)> = None;
    loop {
        tokio::select! {
            _ = s.ended.notified() => return,
            _ = tick.tick() => hub.tick_progress(&s),
            _ = stall_timer.tick() => {
                let polls = s.polls.load(Ordering::Relaxed);
                if !has_work(&s) {
                    stuck = None;
                    continue;
                }
                match stuck {
                    Some((p, since)) if p == polls => {
                        if since.elapsed() >= opts.stall_timeout {
                            stall(&hub, &s, opts.stall_timeout);
                            return;
                        }
                    }
                    _ => stuck = Some((polls, Instant::now())),
                }
            }
            _ = leader_timer.tick(), if require_leader => {
                if hub.has_leader() {
                    leaderless_since = None;
                } else {
                    let since = *leaderless_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= opts.no_leader_timeout {
                        end_stream(&hub, &s, |_| {
                            let status: Status = crate::error::ServerError::NoLeader.into();
                            VecDeque::from([Err(status)])
                        });
                        return;
                    }
                }
            }
        }
    }
}

/// Ends a stream from its watchdog: the hub forgets it and its watchers, and the response
/// stream says `last(ids of those watchers)` (ahead of whatever it had buffered), then ends.
/// Both happen under the abort lock, so a response stream that sees the stream closed also
/// sees what to say.
fn end_stream(hub: &WatchHub, s: &StreamShared, last: impl FnOnce(Vec<i64>) -> Abort) {
    let mut abort = s.abort.lock();
    let ids = hub.close_stream(s);
    *abort = Some(last(ids));
    drop(abort);
    s.waker.wake();
}

/// Cancels every watcher of a stream whose client stopped taking responses, each with a
/// reason saying so.
fn stall(hub: &WatchHub, s: &StreamShared, stalled_for: Duration) {
    end_stream(hub, s, |ids| {
        tracing::warn!(
            stream = s.id,
            watchers = ids.len(),
            stalled_secs = stalled_for.as_secs(),
            "cancelling a watch stream whose client stopped reading"
        );
        let rev = hub.revision();
        let reason = format!(
            "ballast: watch stream cancelled: the client took no response for {}s while some were pending; re-watch from the last revision received + 1",
            stalled_for.as_secs()
        );
        ids.into_iter()
            .map(|wid| {
                let mut r = canceled(rev, wid, 0, &reason);
                r.header = Some(hub.header(rev));
                Ok(r)
            })
            .collect()
    });
}
