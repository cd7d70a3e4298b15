//! One watch stream: its watchers, its ordered queue of responses-to-be, and the pump task that
//! turns the queue into gRPC responses (filters, `prev_kv`, fragments), catches up its unsynced
//! watchers and sends periodic progress notifications.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ballast_mvcc::{Event, EventKind};
use ballast_proto::etcdserverpb::{ResponseHeader, WatchResponse};
use ballast_proto::mvccpb;
use futures::Stream;
use parking_lot::Mutex;
use prost::Message as _;
use tokio::sync::{mpsc, Notify};
use tonic::Status;

use super::{KeyRange, WatchHub};
use crate::kv::to_pb_kv;

/// Responses buffered between the pump and gRPC.
const CHANNEL_RESPONSES: usize = 16;

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
        events: Arc<[Event]>,
        sel: Option<Arc<[u32]>>,
        flags: Flags,
    },
    /// A response without events; the pump fills in the member fields of its header.
    Control(WatchResponse),
}

pub(crate) struct StreamState {
    pub watchers: HashMap<i64, Watcher>,
    pub queue: VecDeque<Out>,
    /// Events held by `queue` (the bound that makes victims).
    pub queued_events: usize,
    pub next_auto_id: i64,
    pub closed: bool,
    /// The hub's publish epoch in which this stream was last put on its wake list.
    pub woken_at: u64,
    /// Events the next catch-up step reads, at most.
    pub catch_up_step: usize,
}

impl StreamState {
    pub fn push_control(&mut self, r: WatchResponse) {
        self.queue.push_back(Out::Control(r));
    }
}

/// A stream as the hub sees it; shared by the hub, the pump and the request reader.
pub struct StreamShared {
    pub id: u64,
    pub(crate) state: Mutex<StreamState>,
    pub(crate) wake: Notify,
    /// Responses gRPC has taken from the pump's channel (it takes one only when HTTP/2 flow
    /// control lets it send), and the signal that it took one.
    taken: AtomicU64,
    took: Notify,
}

impl StreamShared {
    pub(crate) fn new(id: u64) -> StreamShared {
        StreamShared {
            id,
            state: Mutex::new(StreamState {
                watchers: HashMap::new(),
                queue: VecDeque::new(),
                queued_events: 0,
                next_auto_id: 0,
                closed: false,
                woken_at: 0,
                catch_up_step: super::CATCH_UP_FIRST_STEP,
            }),
            wake: Notify::new(),
            taken: AtomicU64::new(0),
            took: Notify::new(),
        }
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

fn pb_event(e: &Event, prev_kv: bool) -> mvccpb::Event {
    mvccpb::Event {
        r#type: match e.kind {
            EventKind::Put => mvccpb::event::EventType::Put as i32,
            EventKind::Delete => mvccpb::event::EventType::Delete as i32,
        },
        kv: Some(to_pb_kv(e.kv.clone())),
        prev_kv: if prev_kv {
            e.prev_kv.clone().map(to_pb_kv)
        } else {
            None
        },
    }
}

/// Turns a queue entry into the responses to send (none if filters removed every event).
fn render(hub: &WatchHub, out: Out, max_bytes: usize) -> Vec<WatchResponse> {
    match out {
        Out::Control(mut r) => {
            let rev = r.header.as_ref().map_or(0, |h| h.revision);
            r.header = Some(hub.header(rev));
            vec![r]
        }
        Out::Events {
            wid,
            header_rev,
            events,
            sel,
            flags,
        } => {
            let pick = |e: &&Event| match e.kind {
                EventKind::Put => !flags.no_put,
                EventKind::Delete => !flags.no_delete,
            };
            let evs: Vec<mvccpb::Event> = match &sel {
                None => events
                    .iter()
                    .filter(pick)
                    .map(|e| pb_event(e, flags.prev_kv))
                    .collect(),
                Some(idx) => idx
                    .iter()
                    .map(|i| &events[*i as usize])
                    .filter(pick)
                    .map(|e| pb_event(e, flags.prev_kv))
                    .collect(),
            };
            if evs.is_empty() {
                return Vec::new();
            }
            let resp = WatchResponse {
                header: Some(hub.header(header_rev)),
                watch_id: wid,
                events: evs,
                ..Default::default()
            };
            if flags.fragment {
                fragments(resp, max_bytes)
            } else {
                vec![resp]
            }
        }
    }
}

/// Splits a response whose encoding reaches `max_bytes` into fragments of at least one event
/// each, all but the last marked `fragment`.
fn fragments(resp: WatchResponse, max_bytes: usize) -> Vec<WatchResponse> {
    if resp.events.len() < 2 || resp.encoded_len() < max_bytes {
        return vec![resp];
    }
    let mut out = Vec::new();
    let template = WatchResponse {
        events: Vec::new(),
        fragment: true,
        ..resp.clone()
    };
    let mut cur = template.clone();
    let mut size = cur.encoded_len();
    for ev in resp.events {
        // Bytes this event adds: tag + length prefix + body.
        let len = ev.encoded_len();
        let add = 1 + prost::length_delimiter_len(len) + len;
        if !cur.events.is_empty() && size + add >= max_bytes {
            out.push(std::mem::replace(&mut cur, template.clone()));
            size = cur.encoded_len();
        }
        size += add;
        cur.events.push(ev);
    }
    cur.fragment = false;
    out.push(cur);
    out
}

/// The response stream handed to tonic. A stalled stream's cancel responses take precedence
/// over whatever was buffered, then the stream ends.
pub struct WatchResponseStream {
    rx: mpsc::Receiver<Result<WatchResponse, Status>>,
    abort: Arc<Mutex<Option<VecDeque<Result<WatchResponse, Status>>>>>,
    shared: Arc<StreamShared>,
}

impl Stream for WatchResponseStream {
    type Item = Result<WatchResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(q) = self.abort.lock().as_mut() {
            return Poll::Ready(q.pop_front());
        }
        let next = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(_)) = &next {
            self.shared.taken.fetch_add(1, Ordering::Release);
            self.shared.took.notify_one();
        }
        next
    }
}

pub(crate) fn spawn_pump(
    hub: Arc<WatchHub>,
    s: Arc<StreamShared>,
    require_leader: bool,
) -> WatchResponseStream {
    let (tx, rx) = mpsc::channel(CHANNEL_RESPONSES);
    let abort = Arc::new(Mutex::new(None));
    tokio::spawn(pump(hub, s.clone(), tx, abort.clone(), require_leader));
    WatchResponseStream {
        rx,
        abort,
        shared: s,
    }
}

enum PumpEnd {
    /// The client went away.
    Gone,
    /// The client took nothing for the stall timeout.
    Stalled(Duration),
    /// `hasleader` stream without a leader for too long.
    NoLeader,
}

/// The stream's one sender: queue → gRPC, catch-up, progress ticks.
pub(crate) async fn pump(
    hub: Arc<WatchHub>,
    s: Arc<StreamShared>,
    tx: mpsc::Sender<Result<WatchResponse, Status>>,
    abort: Arc<Mutex<Option<VecDeque<Result<WatchResponse, Status>>>>>,
    require_leader: bool,
) {
    let end = run_pump(&hub, &s, &tx, require_leader).await;
    match end {
        PumpEnd::Gone => hub.close_stream(&s),
        PumpEnd::Stalled(d) => {
            let ids = hub.stall_cancel(&s, d);
            let rev = hub.revision();
            let reason = format!(
                "ballast: watch stream cancelled: the client took no response for {}s while some were pending; re-watch from the last revision received + 1",
                d.as_secs()
            );
            let q = ids
                .into_iter()
                .map(|wid| {
                    let mut r = canceled(rev, wid, 0, &reason);
                    r.header = Some(hub.header(rev));
                    Ok(r)
                })
                .collect();
            *abort.lock() = Some(q);
        }
        PumpEnd::NoLeader => {
            hub.close_stream(&s);
            let status: Status = crate::error::ServerError::NoLeader.into();
            *abort.lock() = Some(VecDeque::from([Err(status)]));
        }
    }
    // Dropping `tx` wakes the response stream, which then sees `abort` or the end.
}

async fn run_pump(
    hub: &Arc<WatchHub>,
    s: &Arc<StreamShared>,
    tx: &mpsc::Sender<Result<WatchResponse, Status>>,
    require_leader: bool,
) -> PumpEnd {
    let opts = hub.options().clone();
    // etcd adds up to 10 % jitter to the interval; spread streams the same way.
    let jitter = opts.progress_interval.mul_f64((s.id % 97) as f64 / 970.0);
    let period = opts.progress_interval + jitter;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let leader_check = Duration::from_millis(100);
    let mut leader_timer = tokio::time::interval(leader_check);
    let mut leaderless_since: Option<Instant> = None;
    // Responses handed to the channel, and since when the client has taken none of those
    // still in it while catch-up waits for them.
    let mut sent: u64 = 0;
    let mut waiting: Option<(u64, tokio::time::Instant)> = None;
    loop {
        let items: Vec<Out> = {
            let mut st = s.state.lock();
            if st.closed {
                return PumpEnd::Gone;
            }
            st.queued_events = 0;
            st.queue.drain(..).collect()
        };
        if !items.is_empty() {
            for item in items {
                for resp in render(hub, item, opts.max_request_bytes) {
                    match tokio::time::timeout(opts.stall_timeout, tx.send(Ok(resp))).await {
                        Ok(Ok(())) => sent += 1,
                        Ok(Err(_)) => return PumpEnd::Gone,
                        Err(_) => return PumpEnd::Stalled(opts.stall_timeout),
                    }
                }
            }
            continue;
        }
        let needs_catch_up = s.state.lock().watchers.values().any(|w| !w.synced);
        // The next catch-up step is read only once gRPC took every response sent so far: a
        // client that reads slowly (or not at all) holds at most one step in memory, and costs
        // the server one backend read per step it actually takes.
        let taken = s.taken.load(Ordering::Acquire);
        let drained = taken == sent;
        if needs_catch_up && !drained {
            match waiting {
                Some((t, _)) if t == taken => {}
                _ => waiting = Some((taken, tokio::time::Instant::now() + opts.stall_timeout)),
            }
        } else {
            waiting = None;
        }
        if needs_catch_up && drained {
            let (h, st) = (hub.clone(), s.clone());
            match hub.catch_up_pool.run(move || h.catch_up(&st)).await {
                Some(true) => continue,
                Some(false) => {}
                None => return PumpEnd::Gone,
            }
        }
        let stall_at = waiting.map(|w| w.1);
        tokio::select! {
            _ = s.wake.notified() => {}
            _ = s.took.notified(), if waiting.is_some() => {}
            _ = tokio::time::sleep_until(stall_at.unwrap_or_else(tokio::time::Instant::now)), if stall_at.is_some() => {
                return PumpEnd::Stalled(opts.stall_timeout);
            }
            _ = tick.tick() => hub.tick_progress(s),
            _ = tx.closed() => return PumpEnd::Gone,
            _ = leader_timer.tick(), if require_leader => {
                if hub.has_leader() {
                    leaderless_since = None;
                } else {
                    let since = *leaderless_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= opts.no_leader_timeout {
                        return PumpEnd::NoLeader;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(key: &str, value_len: usize) -> mvccpb::Event {
        mvccpb::Event {
            r#type: 0,
            kv: Some(mvccpb::KeyValue {
                key: key.as_bytes().to_vec(),
                value: vec![b'x'; value_len],
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    #[test]
    fn fragments_split_at_the_size_and_keep_every_event_in_order() {
        let resp = WatchResponse {
            watch_id: 3,
            events: (0..10).map(|i| ev(&format!("k{i}"), 100)).collect(),
            ..Default::default()
        };
        let whole = resp.encoded_len();
        let parts = fragments(resp.clone(), 350);
        assert!(parts.len() > 1, "{whole} bytes should split at 350");
        for p in &parts[..parts.len() - 1] {
            assert!(p.fragment);
            assert!(p.encoded_len() < 350 || p.events.len() == 1);
        }
        assert!(!parts.last().unwrap().fragment);
        let keys: Vec<_> = parts
            .iter()
            .flat_map(|p| p.events.iter().map(|e| e.kv.as_ref().unwrap().key.clone()))
            .collect();
        let want: Vec<_> = resp
            .events
            .iter()
            .map(|e| e.kv.as_ref().unwrap().key.clone())
            .collect();
        assert_eq!(keys, want);
        assert!(parts.iter().all(|p| p.watch_id == 3));
        // Small enough: untouched.
        assert_eq!(fragments(resp.clone(), whole + 1).len(), 1);
        // One event is never split, whatever its size.
        let one = WatchResponse {
            events: vec![ev("big", 10_000)],
            ..Default::default()
        };
        assert_eq!(fragments(one, 10).len(), 1);
    }
}
