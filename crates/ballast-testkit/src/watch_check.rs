//! The watch guarantees, checked against a recorded write history.
//!
//! A test records every acknowledged write ([`History::record_put`], [`History::record_delete`],
//! [`History::record_txn`]: the request plus the answer, whose header carries the revision the write
//! was applied at) and every acknowledged compaction. [`History::timeline`] replays the writes in
//! revision order through a small model of the keyspace and derives, for every revision, the events
//! it produced (in the write's own order) with each event's previous key-value. The same test records
//! what every watch stream sent and received ([`StreamLog`]); [`check`] then verifies, for every
//! watcher:
//!
//! - **ordered**: event revisions never go back; within a revision, events come in the write's order;
//! - **unique**: no event is delivered twice;
//! - **atomic**: a revision's events are never split over two responses, except across the pieces
//!   of one fragmented response (pieces are joined first; they must be adjacent on the stream);
//! - **reliable**: the events delivered are exactly the history's events in the watcher's range and
//!   filters, from its start revision through the last revision it observed (its last event or a
//!   progress notification), or through the last revision of the history when the test waited for
//!   delivery to finish ([`CheckOptions::complete_at_end`]);
//! - **bookmarkable**: a progress notification at revision R comes after every event at or below R
//!   and before any event above it;
//! - **resumable**: a watcher re-created from its last observed revision + 1 (a chain of sessions,
//!   [`CreateLog::chain`]) picks up exactly where the previous one stopped; after a compaction cancel
//!   (which must name a revision that was compacted and that the watcher still needed) it resumes at
//!   the compact revision and only the compacted events may be missing;
//! - **`prev_kv`**: absent for creations and for watchers that did not ask; otherwise the key's
//!   value just before the event, or absent only when that revision may have been compacted;
//! - `kv` of a PUT is the key's full new state (`version == 1` on creation), of a DELETE only the key
//!   and `mod_revision`.
//!
//! The checker never talks to a server; it only reads what the test recorded.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;

use ballast_proto::etcdserverpb::request_op::Request;
use ballast_proto::etcdserverpb::response_op::Response;
use ballast_proto::etcdserverpb::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, TxnRequest, TxnResponse,
    WatchCreateRequest, WatchResponse,
};
use ballast_proto::mvccpb::event::EventType;
use ballast_proto::mvccpb::{Event, KeyValue};

// ---------------------------------------------------------------------------------------------------
// History
// ---------------------------------------------------------------------------------------------------

/// One change inside an acknowledged write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// A put of `key`.
    Put {
        /// Key.
        key: Vec<u8>,
        /// New value.
        value: Vec<u8>,
        /// Lease id (0 = none).
        lease: i64,
    },
    /// A delete of `[key, range_end)` that removed `deleted` keys (as the server answered).
    Delete {
        /// First key.
        key: Vec<u8>,
        /// End of the range (etcd's conventions).
        range_end: Vec<u8>,
        /// Keys the server said it deleted.
        deleted: i64,
    },
}

/// One acknowledged write that changed the store (so it has a revision of its own).
#[derive(Clone, Debug)]
pub struct Write {
    /// The revision the write was applied at (header revision of its answer).
    pub revision: i64,
    /// Its changes, in execution order.
    pub ops: Vec<WriteOp>,
}

/// Every acknowledged write and compaction of a test run, in any order.
#[derive(Clone, Debug, Default)]
pub struct History {
    writes: Vec<Write>,
    compactions: Vec<i64>,
}

fn put_op(r: &PutRequest) -> WriteOp {
    WriteOp::Put {
        key: r.key.clone(),
        value: r.value.clone(),
        lease: r.lease,
    }
}

fn delete_op(r: &DeleteRangeRequest, deleted: i64) -> WriteOp {
    WriteOp::Delete {
        key: r.key.clone(),
        range_end: r.range_end.clone(),
        deleted,
    }
}

/// The changes of the branch a Txn took, in execution order (nested Txns flattened).
fn txn_ops(req: &TxnRequest, resp: &TxnResponse, out: &mut Vec<WriteOp>) -> Result<(), String> {
    let branch = if resp.succeeded {
        &req.success
    } else {
        &req.failure
    };
    if branch.len() != resp.responses.len() {
        return Err(format!(
            "txn answer has {} responses for {} ops",
            resp.responses.len(),
            branch.len()
        ));
    }
    for (op, r) in branch.iter().zip(&resp.responses) {
        match (&op.request, &r.response) {
            (Some(Request::RequestPut(p)), Some(Response::ResponsePut(_))) => out.push(put_op(p)),
            (Some(Request::RequestDeleteRange(d)), Some(Response::ResponseDeleteRange(dr))) => {
                if dr.deleted > 0 {
                    out.push(delete_op(d, dr.deleted));
                }
            }
            (Some(Request::RequestTxn(t)), Some(Response::ResponseTxn(tr))) => txn_ops(t, tr, out)?,
            (Some(Request::RequestRange(_)), Some(Response::ResponseRange(_))) => {}
            (req, resp) => {
                return Err(format!(
                    "txn answer does not match its request: {req:?} answered by {resp:?}"
                ))
            }
        }
    }
    Ok(())
}

fn header_revision(h: &Option<ballast_proto::etcdserverpb::ResponseHeader>) -> i64 {
    h.as_ref().map_or(0, |h| h.revision)
}

impl History {
    /// An empty history.
    pub fn new() -> History {
        History::default()
    }

    /// An acknowledged Put.
    pub fn record_put(&mut self, req: &PutRequest, resp: &PutResponse) {
        self.writes.push(Write {
            revision: header_revision(&resp.header),
            ops: vec![put_op(req)],
        });
    }

    /// An acknowledged DeleteRange (one that deleted nothing has no revision of its own and is
    /// not recorded).
    pub fn record_delete(&mut self, req: &DeleteRangeRequest, resp: &DeleteRangeResponse) {
        if resp.deleted > 0 {
            self.writes.push(Write {
                revision: header_revision(&resp.header),
                ops: vec![delete_op(req, resp.deleted)],
            });
        }
    }

    /// An acknowledged Txn (one that changed nothing is not recorded).
    pub fn record_txn(&mut self, req: &TxnRequest, resp: &TxnResponse) -> Result<(), String> {
        let mut ops = Vec::new();
        txn_ops(req, resp, &mut ops)?;
        if !ops.is_empty() {
            self.writes.push(Write {
                revision: header_revision(&resp.header),
                ops,
            });
        }
        Ok(())
    }

    /// An acknowledged compaction at `revision`.
    pub fn record_compaction(&mut self, revision: i64) {
        self.compactions.push(revision);
    }

    /// The acknowledged compaction revisions.
    pub fn compactions(&self) -> &[i64] {
        &self.compactions
    }

    /// The recorded writes, in recording order.
    pub fn writes(&self) -> &[Write] {
        &self.writes
    }

    /// The highest revision of any recorded write (`None` when there is none).
    pub fn last_revision(&self) -> Option<i64> {
        self.writes.iter().map(|w| w.revision).max()
    }

    /// Whether the write at `revision` only put keys (compacting exactly there loses no DELETE
    /// event: etcd drops a tombstone that sits at the compact revision itself).
    pub fn is_put_only(&self, revision: i64) -> bool {
        self.writes.iter().any(|w| {
            w.revision == revision && w.ops.iter().all(|op| matches!(op, WriteOp::Put { .. }))
        })
    }

    /// Replay the writes over an empty keyspace whose revision is `initial` (1 for a fresh server):
    /// every revision in `initial+1 ..= last` must have exactly one write.
    pub fn timeline(&self, initial: i64) -> Result<Timeline, String> {
        let mut by_rev: BTreeMap<i64, &Write> = BTreeMap::new();
        for w in &self.writes {
            if let Some(other) = by_rev.insert(w.revision, w) {
                return Err(format!(
                    "two acknowledged writes claim revision {}: {:?} and {:?}",
                    w.revision, other.ops, w.ops
                ));
            }
        }
        let last = by_rev.keys().next_back().copied().unwrap_or(initial);
        let mut state: BTreeMap<Vec<u8>, KeyValue> = BTreeMap::new();
        let mut revs = Vec::new();
        for rev in initial + 1..=last {
            let Some(w) = by_rev.get(&rev) else {
                return Err(format!(
                    "no acknowledged write has revision {rev} (history {}..={last} incomplete)",
                    initial + 1
                ));
            };
            let mut events = Vec::new();
            for op in &w.ops {
                match op {
                    WriteOp::Put { key, value, lease } => {
                        let prev = state.get(key).cloned();
                        let kv = KeyValue {
                            key: key.clone(),
                            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                            mod_revision: rev,
                            version: prev.as_ref().map_or(1, |p| p.version + 1),
                            value: value.clone(),
                            lease: *lease,
                        };
                        state.insert(key.clone(), kv.clone());
                        events.push(Event {
                            r#type: EventType::Put as i32,
                            kv: Some(kv),
                            prev_kv: prev,
                        });
                    }
                    WriteOp::Delete {
                        key,
                        range_end,
                        deleted,
                    } => {
                        let victims: Vec<Vec<u8>> = state
                            .keys()
                            .filter(|k| in_range(k, key, range_end))
                            .cloned()
                            .collect();
                        if victims.len() as i64 != *deleted {
                            return Err(format!(
                                "revision {rev}: the server says DeleteRange [{}, {}) deleted {deleted} \
                                 keys, the replayed history has {} there",
                                show(key),
                                show(range_end),
                                victims.len()
                            ));
                        }
                        for k in victims {
                            let prev = state.remove(&k);
                            events.push(Event {
                                r#type: EventType::Delete as i32,
                                kv: Some(KeyValue {
                                    key: k,
                                    mod_revision: rev,
                                    ..Default::default()
                                }),
                                prev_kv: prev,
                            });
                        }
                    }
                }
            }
            revs.push(events);
        }
        Ok(Timeline {
            initial,
            revs,
            compactions: self.compactions.clone(),
        })
    }
}

/// The events of every revision of a [`History`].
#[derive(Clone, Debug)]
pub struct Timeline {
    initial: i64,
    revs: Vec<Vec<Event>>,
    compactions: Vec<i64>,
}

impl Timeline {
    /// The revision the replay started from.
    pub fn initial_revision(&self) -> i64 {
        self.initial
    }

    /// The last revision of the history.
    pub fn final_revision(&self) -> i64 {
        self.initial + self.revs.len() as i64
    }

    /// The events of `rev` in order (each with the key's previous value as `prev_kv`); empty
    /// outside the history.
    pub fn events_at(&self, rev: i64) -> &[Event] {
        if rev <= self.initial || rev > self.final_revision() {
            return &[];
        }
        &self.revs[(rev - self.initial - 1) as usize]
    }

    /// Every event of the history in `[from, to]` that a watcher with `req`'s range and filters
    /// gets, as `(revision, index in the revision)`.
    fn expected(&self, req: &WatchCreateRequest, from: i64, to: i64) -> Vec<(i64, usize)> {
        let mut out = Vec::new();
        for rev in from.max(self.initial + 1)..=to.min(self.final_revision()) {
            for (i, ev) in self.events_at(rev).iter().enumerate() {
                if watches(req, ev) {
                    out.push((rev, i));
                }
            }
        }
        out
    }

    fn max_compaction(&self) -> i64 {
        self.compactions.iter().copied().max().unwrap_or(0)
    }
}

/// etcd's range rule: empty `end` = the single key, `"\0"` = every key `>= start`, else
/// `[start, end)`.
pub fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        key == start
    } else if end == [0] {
        key >= start
    } else {
        key >= start && key < end
    }
}

/// Whether a watcher created with `req` receives `ev` (range, then NOPUT/NODELETE filters).
pub fn watches(req: &WatchCreateRequest, ev: &Event) -> bool {
    let key = ev.kv.as_ref().map_or(&[][..], |kv| &kv.key[..]);
    // An empty key means "\0", the smallest key.
    let start: &[u8] = if req.key.is_empty() { &[0] } else { &req.key };
    if !in_range(key, start, &req.range_end) {
        return false;
    }
    let is_put = ev.r#type == EventType::Put as i32;
    !req.filters
        .iter()
        .any(|&f| (f == 0 && is_put) || (f == 1 && !is_put))
}

/// Bytes as a readable string.
pub fn show(b: &[u8]) -> String {
    let mut s = String::new();
    for &c in b.iter().take(64) {
        if (0x20..0x7f).contains(&c) && c != b'\\' {
            s.push(c as char);
        } else {
            let _ = write!(s, "\\x{c:02x}");
        }
    }
    if b.len() > 64 {
        let _ = write!(s, "...({} bytes)", b.len());
    }
    s
}

/// A key-value in one line.
pub fn show_kv(kv: &KeyValue) -> String {
    format!(
        "{}={} c={} m={} v={} lease={}",
        show(&kv.key),
        show(&kv.value),
        kv.create_revision,
        kv.mod_revision,
        kv.version,
        kv.lease
    )
}

/// An event in one line.
pub fn show_event(ev: &Event) -> String {
    let ty = if ev.r#type == EventType::Put as i32 {
        "PUT".to_owned()
    } else if ev.r#type == EventType::Delete as i32 {
        "DELETE".to_owned()
    } else {
        format!("TYPE{}", ev.r#type)
    };
    let kv = ev.kv.as_ref().map_or("<no kv>".to_owned(), show_kv);
    match &ev.prev_kv {
        Some(p) => format!("{ty} {kv} prev=({})", show_kv(p)),
        None => format!("{ty} {kv}"),
    }
}

// ---------------------------------------------------------------------------------------------------
// What the watchers saw
// ---------------------------------------------------------------------------------------------------

/// One create request sent on a stream.
#[derive(Clone, Debug)]
pub struct CreateLog {
    /// The request as sent.
    pub request: WatchCreateRequest,
    /// The logical watcher this session belongs to: sessions of one chain on one stream are
    /// successive re-creations, each starting where the previous one stopped.
    pub chain: usize,
}

/// Everything sent and received on one watch stream.
#[derive(Clone, Debug, Default)]
pub struct StreamLog {
    /// Shown in violations.
    pub name: String,
    /// Create requests, in send order.
    pub creates: Vec<CreateLog>,
    /// Watch ids the client asked to cancel.
    pub cancels: Vec<i64>,
    /// The progress requests the client sent, each as the number of responses that had arrived
    /// when it was sent (so an answer must come at or after that position).
    pub progress_requests: Vec<usize>,
    /// Every response, in arrival order.
    pub responses: Vec<WatchResponse>,
}

/// What the checker may assume about the server.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// A `watch_id = -1` answer to a progress request is a bookmark for every watcher on the
    /// stream (etcd 3.5+ and Ballast; etcd 3.4 answers before unsynced watchers caught up,
    /// etcd-io/etcd#15220, so it is not one there).
    pub requested_progress_is_bookmark: bool,
    /// The test waited until delivery was over: every watcher still open must have every event
    /// of its range through the last revision of the history.
    pub complete_at_end: bool,
    /// The test waited until delivery was over: the last progress request of every stream has
    /// been answered (requests made while an answer is pending may share it, as in etcd 3.5+),
    /// either by one `watch_id = -1` response, or by a progress notification of its own for every
    /// watcher still open (Ballast's answer while some watcher of the stream is catching up).
    pub last_progress_request_answered: bool,
}

/// The checker's verdict.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Every broken guarantee, one line each (empty = all guarantees held).
    pub violations: Vec<String>,
    /// Watch sessions (one per successful create).
    pub sessions: usize,
    /// Events delivered and checked.
    pub events: usize,
    /// Progress notifications checked as bookmarks.
    pub bookmarks: usize,
    /// Sessions the server cancelled because of compaction.
    pub compaction_cancels: usize,
    /// Sessions re-created from the last observed revision after a cancel.
    pub resumes: usize,
    /// Fragmented responses (joined before checking).
    pub fragmented: usize,
}

impl Report {
    /// Panic with the first `max` violations (and `context`) if there are any.
    pub fn assert_ok(&self, context: &str, max: usize) {
        if self.violations.is_empty() {
            return;
        }
        let shown: Vec<&str> = self
            .violations
            .iter()
            .take(max)
            .map(String::as_str)
            .collect();
        panic!(
            "{} watch guarantee violation(s) ({context}); first {}:\n  {}",
            self.violations.len(),
            shown.len(),
            shown.join("\n  ")
        );
    }
}

#[derive(Debug)]
enum Item {
    Events {
        header_rev: i64,
        events: Vec<Event>,
        fragments: usize,
    },
    Progress {
        rev: i64,
        requested: bool,
    },
}

#[derive(Debug)]
enum End {
    Open,
    ClientCanceled,
    Compacted(i64),
    ServerCanceled(String),
}

#[derive(Debug)]
struct Session {
    stream: usize,
    chain: usize,
    request: WatchCreateRequest,
    watch_id: i64,
    created_rev: i64,
    items: Vec<Item>,
    end: End,
    /// Position in the stream's responses of its last progress notification of its own.
    last_progress_at: Option<usize>,
}

impl Session {
    fn name(&self, streams: &[StreamLog]) -> String {
        let r = &self.request;
        format!(
            "[{} watch {} chain {} range [{}, {}) start {} prev_kv={} filters={:?}]",
            streams[self.stream].name,
            self.watch_id,
            self.chain,
            show(&r.key),
            show(&r.range_end),
            r.start_revision,
            r.prev_kv,
            r.filters
        )
    }

    fn start(&self) -> i64 {
        if self.request.start_revision > 0 {
            self.request.start_revision
        } else {
            self.created_rev + 1
        }
    }
}

/// Join fragments and split a stream's responses into sessions.
/// Returns the position (in `log.responses`) of the last progress answer (watch id -1).
fn demux(si: usize, log: &StreamLog, out: &mut Vec<Session>, report: &mut Report) -> Option<usize> {
    let mut v: Vec<String> = Vec::new();
    let name = &log.name;
    // 1. Join the pieces of fragmented responses: (response, pieces, index of its last piece).
    let mut logical: Vec<(WatchResponse, usize, usize)> = Vec::new();
    let mut pending: Option<(WatchResponse, usize)> = None;
    for (index, r) in log.responses.iter().enumerate() {
        match pending.take() {
            Some((mut acc, n)) => {
                if r.watch_id != acc.watch_id || r.created || r.canceled {
                    v.push(format!(
                        "{name}: a fragmented response of watch {} is interrupted by {}",
                        acc.watch_id,
                        show_response(r)
                    ));
                    logical.push((acc, n, index - 1));
                    if r.fragment {
                        pending = Some((r.clone(), 1));
                    } else {
                        logical.push((r.clone(), 1, index));
                    }
                    continue;
                }
                acc.events.extend(r.events.iter().cloned());
                if r.fragment {
                    pending = Some((acc, n + 1));
                } else {
                    acc.fragment = false;
                    logical.push((acc, n + 1, index));
                }
            }
            None if r.fragment => pending = Some((r.clone(), 1)),
            None => logical.push((r.clone(), 1, index)),
        }
    }
    if let Some((acc, _)) = pending {
        v.push(format!(
            "{name}: the last fragmented response of watch {} never got its final piece",
            acc.watch_id
        ));
    }

    // 2. Sessions: created responses answer the creates in order.
    let mut creates: VecDeque<&CreateLog> = log.creates.iter().collect();
    let mut active: HashMap<i64, usize> = HashMap::new();
    let mut cancels: Vec<i64> = log.cancels.clone();
    let mut progress_answers = 0usize;
    let mut last_answer_at = None;
    for (r, pieces, index) in logical {
        if pieces > 1 {
            report.fragmented += 1;
        }
        let rev = header_revision(&r.header);
        if r.created {
            let Some(c) = creates.pop_front() else {
                v.push(format!(
                    "{name}: created response without a create request: {}",
                    show_response(&r)
                ));
                continue;
            };
            if r.canceled || r.watch_id == -1 {
                v.push(format!(
                    "{name}: create {:?} failed: {}",
                    c.request,
                    show_response(&r)
                ));
                continue;
            }
            if c.request.watch_id != 0 && c.request.watch_id != r.watch_id {
                v.push(format!(
                    "{name}: create asked for watch id {} and got {}",
                    c.request.watch_id, r.watch_id
                ));
            }
            if active.contains_key(&r.watch_id) {
                v.push(format!(
                    "{name}: watch id {} handed out while still in use",
                    r.watch_id
                ));
            }
            if !r.events.is_empty() {
                v.push(format!(
                    "{name}: created response carries events: {}",
                    show_response(&r)
                ));
            }
            active.insert(r.watch_id, out.len());
            out.push(Session {
                stream: si,
                chain: c.chain,
                request: c.request.clone(),
                watch_id: r.watch_id,
                created_rev: rev,
                items: Vec::new(),
                end: End::Open,
                last_progress_at: None,
            });
            continue;
        }
        if r.watch_id == -1 {
            if r.canceled || !r.events.is_empty() || r.compact_revision != 0 {
                v.push(format!(
                    "{name}: unexpected response for watch id -1: {}",
                    show_response(&r)
                ));
                continue;
            }
            progress_answers += 1;
            let asked = log
                .progress_requests
                .iter()
                .filter(|&&at| at <= index)
                .count();
            if progress_answers > asked {
                v.push(format!(
                    "{name}: progress answer (watch id -1) number {progress_answers} at revision {rev} \
                     but only {asked} progress request(s) sent before it"
                ));
            }
            last_answer_at = Some(index);
            for &s in active.values() {
                out[s].items.push(Item::Progress {
                    rev,
                    requested: true,
                });
            }
            continue;
        }
        let Some(&s) = active.get(&r.watch_id) else {
            // The answer to a client cancel that crossed the server's own cancel (compaction):
            // etcd acknowledges it although the watcher is already gone.
            let crossed = r.canceled && r.compact_revision == 0 && r.events.is_empty();
            if let Some(i) = cancels.iter().position(|&id| crossed && id == r.watch_id) {
                cancels.swap_remove(i);
                continue;
            }
            v.push(format!(
                "{name}: response for a watch id that is not active: {}",
                show_response(&r)
            ));
            continue;
        };
        if r.canceled {
            active.remove(&r.watch_id);
            out[s].end = if r.compact_revision != 0 {
                End::Compacted(r.compact_revision)
            } else if let Some(i) = cancels.iter().position(|&id| id == r.watch_id) {
                cancels.swap_remove(i);
                End::ClientCanceled
            } else {
                End::ServerCanceled(show_response(&r))
            };
            if !r.events.is_empty() {
                v.push(format!(
                    "{name}: cancel response carries events: {}",
                    show_response(&r)
                ));
            }
            continue;
        }
        if r.compact_revision != 0 {
            v.push(format!(
                "{name}: compact_revision set on a response that does not cancel: {}",
                show_response(&r)
            ));
        }
        if r.events.is_empty() {
            out[s].items.push(Item::Progress {
                rev,
                requested: false,
            });
            out[s].last_progress_at = Some(index);
        } else {
            out[s].items.push(Item::Events {
                header_rev: rev,
                events: r.events,
                fragments: pieces,
            });
        }
    }
    if !creates.is_empty() {
        v.push(format!(
            "{name}: {} create request(s) never answered, first {:?}",
            creates.len(),
            creates[0].request
        ));
    }
    report.violations.extend(v);
    last_answer_at
}

fn show_response(r: &WatchResponse) -> String {
    let mut s = format!(
        "{{watch_id {} rev {}",
        r.watch_id,
        header_revision(&r.header)
    );
    for (flag, name) in [
        (r.created, "created"),
        (r.canceled, "canceled"),
        (r.fragment, "fragment"),
    ] {
        if flag {
            s.push(' ');
            s.push_str(name);
        }
    }
    if r.compact_revision != 0 {
        let _ = write!(s, " compact_revision {}", r.compact_revision);
    }
    if !r.cancel_reason.is_empty() {
        let _ = write!(s, " reason {:?}", r.cancel_reason);
    }
    if !r.events.is_empty() {
        let evs: Vec<String> = r.events.iter().take(4).map(show_event).collect();
        let _ = write!(s, " events [{}", evs.join("; "));
        if r.events.len() > 4 {
            let _ = write!(s, "; ... {} in all", r.events.len());
        }
        s.push(']');
    }
    s.push('}');
    s
}

/// What one session observed: the revision through which it must have every event.
struct Observed {
    rev: i64,
}

/// Check one session; returns the revision it observed through.
fn check_session(
    s: &Session,
    tl: &Timeline,
    opts: &CheckOptions,
    streams: &[StreamLog],
    report: &mut Report,
) -> Observed {
    let name = s.name(streams);
    let mut v: Vec<String> = Vec::new();
    let start = s.start();
    let final_rev = tl.final_revision();
    let may_be_compacted = tl.max_compaction();
    if s.created_rev > final_rev || s.created_rev < 0 {
        v.push(format!(
            "{name}: created at revision {} outside the history (..={final_rev})",
            s.created_rev
        ));
    }

    let mut seen: HashSet<(i64, usize)> = HashSet::new();
    let mut received: Vec<(i64, usize)> = Vec::new();
    let mut last_pos: Option<(i64, usize)> = None;
    let mut observed = start - 1;
    let mut prev_item_last_rev: Option<i64> = None;
    // (item index in received order, revision) of every bookmark.
    let mut bookmarks: Vec<(usize, i64)> = Vec::new();

    for item in &s.items {
        match item {
            Item::Events {
                header_rev,
                events,
                fragments,
            } => {
                let first_rev = events[0].kv.as_ref().map_or(0, |kv| kv.mod_revision);
                if prev_item_last_rev == Some(first_rev) {
                    v.push(format!(
                        "{name}: revision {first_rev} split across two responses (atomic)"
                    ));
                }
                let mut resp_max = 0;
                for ev in events {
                    let Some(kv) = &ev.kv else {
                        v.push(format!("{name}: event without kv: {}", show_event(ev)));
                        continue;
                    };
                    let rev = kv.mod_revision;
                    resp_max = resp_max.max(rev);
                    let at = tl.events_at(rev);
                    let Some(idx) = at
                        .iter()
                        .position(|e| e.kv.as_ref().is_some_and(|k| k.key == kv.key))
                    else {
                        v.push(format!(
                            "{name}: event not in the history at revision {rev}: {}",
                            show_event(ev)
                        ));
                        continue;
                    };
                    let want = &at[idx];
                    let pos = (rev, idx);
                    if !seen.insert(pos) {
                        v.push(format!(
                            "{name}: event delivered twice (unique): {}",
                            show_event(ev)
                        ));
                    } else if let Some(last) = last_pos.filter(|&l| pos < l) {
                        v.push(format!(
                            "{name}: event out of order (ordered): {} after revision {} index {}",
                            show_event(ev),
                            last.0,
                            last.1
                        ));
                    }
                    last_pos = Some(last_pos.map_or(pos, |l| l.max(pos)));
                    received.push(pos);
                    report.events += 1;
                    if !watches(&s.request, want) {
                        v.push(format!(
                            "{name}: event outside the watcher's range or filters: {}",
                            show_event(ev)
                        ));
                    }
                    if rev < start {
                        v.push(format!(
                            "{name}: event before the start revision {start}: {}",
                            show_event(ev)
                        ));
                    }
                    // The event itself.
                    if ev.r#type != want.r#type || ev.kv != want.kv {
                        v.push(format!(
                            "{name}: event differs from the history:\n      got  {}\n      want {}",
                            show_event(ev),
                            show_event(&Event {
                                prev_kv: None,
                                ..want.clone()
                            })
                        ));
                    }
                    // prev_kv.
                    let is_create = ev.r#type == EventType::Put as i32
                        && want.kv.as_ref().is_some_and(|k| k.version == 1);
                    match (&ev.prev_kv, s.request.prev_kv, is_create) {
                        (None, _, true) | (None, false, _) => {}
                        (Some(p), true, true) => v.push(format!(
                            "{name}: prev_kv on a creation: {} prev=({})",
                            show_event(ev),
                            show_kv(p)
                        )),
                        (Some(p), false, _) => v.push(format!(
                            "{name}: prev_kv without prev_kv requested: prev=({})",
                            show_kv(p)
                        )),
                        (Some(p), true, false) => {
                            if Some(p) != want.prev_kv.as_ref() {
                                v.push(format!(
                                    "{name}: wrong prev_kv for {}: want ({})",
                                    show_event(ev),
                                    want.prev_kv.as_ref().map_or("none".to_owned(), show_kv)
                                ));
                            }
                        }
                        (None, true, false) => {
                            if rev > may_be_compacted {
                                v.push(format!(
                                    "{name}: prev_kv missing (revision {} was never compacted): {}",
                                    rev - 1,
                                    show_event(ev)
                                ));
                            }
                        }
                    }
                }
                if *header_rev < resp_max {
                    v.push(format!(
                        "{name}: response header revision {header_rev} below its events' revision {resp_max}"
                    ));
                }
                if *header_rev > final_rev {
                    v.push(format!(
                        "{name}: response header revision {header_rev} beyond the history ({final_rev})"
                    ));
                }
                if *fragments > 1 && !s.request.fragment {
                    v.push(format!(
                        "{name}: fragmented response ({fragments} pieces) without fragment requested"
                    ));
                }
                observed = observed.max(resp_max);
                prev_item_last_rev = Some(resp_max);
            }
            Item::Progress { rev, requested } => {
                if *rev > final_rev {
                    v.push(format!(
                        "{name}: progress at revision {rev} beyond the history ({final_rev})"
                    ));
                }
                if *requested && !opts.requested_progress_is_bookmark {
                    continue;
                }
                if let Some(last) = last_pos.filter(|l| l.0 > *rev) {
                    v.push(format!(
                        "{name}: progress at revision {rev} after an event at revision {} (bookmarkable)",
                        last.0
                    ));
                }
                bookmarks.push((received.len(), *rev));
                observed = observed.max(*rev);
                report.bookmarks += 1;
                // A progress notification is no response boundary problem.
            }
        }
    }

    // Reliable: exactly the history's events in range from start through what was observed (or
    // through the end of the history when delivery had finished).
    let through = match (&s.end, opts.complete_at_end) {
        (End::Open, true) => final_rev.max(observed),
        _ => observed,
    };
    let expected = tl.expected(&s.request, start, through);
    if received != expected {
        let got: HashSet<&(i64, usize)> = received.iter().collect();
        let want: HashSet<&(i64, usize)> = expected.iter().collect();
        let missing: Vec<String> = expected
            .iter()
            .filter(|p| !got.contains(p))
            .take(5)
            .map(|&(r, i)| show_event(&tl.events_at(r)[i]))
            .collect();
        let n_missing = expected.iter().filter(|p| !got.contains(p)).count();
        let extra: Vec<String> = received
            .iter()
            .filter(|p| !want.contains(p))
            .take(5)
            .map(|&(r, i)| show_event(&tl.events_at(r)[i]))
            .collect();
        if n_missing > 0 || !extra.is_empty() {
            let first_missing = expected.iter().find(|p| !got.contains(p)).map(|p| p.0);
            v.push(format!(
                "{name}: events from {start} through {through} differ from the history (reliable): \
                 {} received, {} expected; {n_missing} missing, first: [{}]; extra: [{}]; end {:?}; \
                 responses around the first gap: {}",
                received.len(),
                expected.len(),
                missing.join("; "),
                extra.join("; "),
                s.end,
                trace(s, first_missing.unwrap_or(0))
            ));
        }
    }
    // Bookmarkable: every event at or below a bookmark came before it.
    for (before, rev) in bookmarks {
        let due = expected.iter().filter(|p| p.0 <= rev).count();
        let got = received[..before].iter().filter(|p| p.0 <= rev).count();
        if got < due {
            v.push(format!(
                "{name}: progress at revision {rev} before {} of its events at or below it (bookmarkable)",
                due - got
            ));
        }
    }
    match &s.end {
        End::Compacted(c) => {
            report.compaction_cancels += 1;
            if !tl.compactions.contains(c) {
                v.push(format!(
                    "{name}: cancelled with compact_revision {c}, which was never compacted \
                     (compactions {:?})",
                    tl.compactions
                ));
            }
            if observed + 1 >= *c {
                v.push(format!(
                    "{name}: cancelled for compaction at {c} but only needed revisions from {}",
                    observed + 1
                ));
            }
        }
        End::ServerCanceled(why) => {
            v.push(format!(
                "{name}: cancelled by the server without compaction: {why}"
            ));
        }
        End::Open | End::ClientCanceled => {}
    }
    report.violations.extend(v);
    Observed { rev: observed }
}

/// The session's responses as a short trace, a few on each side of the first one that reaches
/// revision `around`: `E[first..last]xN@header` for events, `P@rev` / `RP@rev` for (requested)
/// progress notifications.
fn trace(s: &Session, around: i64) -> String {
    let rev_of = |e: &Event| e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
    let shown: Vec<String> = s
        .items
        .iter()
        .map(|it| match it {
            Item::Events {
                header_rev, events, ..
            } => format!(
                "E[{}..{}]x{}@{header_rev}",
                rev_of(&events[0]),
                rev_of(&events[events.len() - 1]),
                events.len()
            ),
            Item::Progress { rev, requested } => {
                format!("{}P@{rev}", if *requested { "R" } else { "" })
            }
        })
        .collect();
    let at = s
        .items
        .iter()
        .position(|it| match it {
            Item::Events { events, .. } => rev_of(&events[events.len() - 1]) >= around,
            Item::Progress { rev, .. } => *rev >= around,
        })
        .unwrap_or(shown.len());
    let from = at.saturating_sub(6);
    let to = (at + 6).min(shown.len());
    format!(
        "{}{}{}",
        if from > 0 { "... " } else { "" },
        shown[from..to].join(" "),
        if to < shown.len() { " ..." } else { "" }
    )
}

/// Check every watcher of every stream against the timeline.
pub fn check(tl: &Timeline, streams: &[StreamLog], opts: &CheckOptions) -> Report {
    let mut report = Report::default();
    let mut sessions = Vec::new();
    for (i, log) in streams.iter().enumerate() {
        let first = sessions.len();
        let last_answer = demux(i, log, &mut sessions, &mut report);
        if let Some(&last_request) = log.progress_requests.iter().max() {
            let per_watcher = sessions[first..]
                .iter()
                .filter(|s| matches!(s.end, End::Open))
                .all(|s| s.last_progress_at.is_some_and(|a| a >= last_request));
            if opts.last_progress_request_answered
                && last_answer.is_none_or(|a| a < last_request)
                && !per_watcher
            {
                report.violations.push(format!(
                    "{}: the last progress request (sent after response #{last_request}) was never \
                     answered; last answer at response {last_answer:?}",
                    log.name
                ));
            }
        }
    }
    report.sessions = sessions.len();
    let observed: Vec<Observed> = sessions
        .iter()
        .map(|s| check_session(s, tl, opts, streams, &mut report))
        .collect();

    // Resumable: each later session of a chain starts where the previous one stopped.
    let mut chains: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
    for (i, s) in sessions.iter().enumerate() {
        chains.entry((s.stream, s.chain)).or_default().push(i);
    }
    for members in chains.values() {
        for pair in members.windows(2) {
            let (a, b) = (&sessions[pair[0]], &sessions[pair[1]]);
            report.resumes += 1;
            let want = match a.end {
                End::Compacted(c) => c,
                _ => observed[pair[0]].rev + 1,
            };
            if b.start() != want {
                report.violations.push(format!(
                    "{}: resumed at revision {} but the previous session ({:?}) needs {want} \
                     (test bug or wrong cancel)",
                    b.name(streams),
                    b.start(),
                    a.end
                ));
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    //! The checker must catch every kind of broken guarantee: a correct transcript passes, and each
    //! mutation of it is reported.

    use super::*;
    use ballast_proto::etcdserverpb::{RequestOp, ResponseHeader, ResponseOp};

    fn header(rev: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            revision: rev,
            ..Default::default()
        })
    }

    fn put(h: &mut History, rev: i64, key: &str, value: &str) {
        h.record_put(
            &PutRequest {
                key: key.into(),
                value: value.into(),
                ..Default::default()
            },
            &PutResponse {
                header: header(rev),
                ..Default::default()
            },
        );
    }

    /// rev 2: put a=1; 3: put b=1; 4: txn{put a=2, del b}; 5: put c=1; 6: del a.
    fn history() -> History {
        let mut h = History::new();
        put(&mut h, 2, "a", "1");
        put(&mut h, 3, "b", "1");
        let txn = TxnRequest {
            success: vec![
                RequestOp {
                    request: Some(Request::RequestPut(PutRequest {
                        key: "a".into(),
                        value: "2".into(),
                        ..Default::default()
                    })),
                },
                RequestOp {
                    request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                        key: "b".into(),
                        ..Default::default()
                    })),
                },
            ],
            ..Default::default()
        };
        let answer = TxnResponse {
            header: header(4),
            succeeded: true,
            responses: vec![
                ResponseOp {
                    response: Some(Response::ResponsePut(PutResponse::default())),
                },
                ResponseOp {
                    response: Some(Response::ResponseDeleteRange(DeleteRangeResponse {
                        deleted: 1,
                        ..Default::default()
                    })),
                },
            ],
        };
        h.record_txn(&txn, &answer).unwrap();
        put(&mut h, 5, "c", "1");
        h.record_delete(
            &DeleteRangeRequest {
                key: "a".into(),
                range_end: "b".into(),
                ..Default::default()
            },
            &DeleteRangeResponse {
                header: header(6),
                deleted: 1,
                ..Default::default()
            },
        );
        // A delete of nothing has no revision of its own.
        h.record_delete(
            &DeleteRangeRequest {
                key: "zzz".into(),
                ..Default::default()
            },
            &DeleteRangeResponse {
                header: header(6),
                deleted: 0,
                ..Default::default()
            },
        );
        h
    }

    fn resp(watch_id: i64, rev: i64, events: Vec<Event>) -> WatchResponse {
        WatchResponse {
            header: header(rev),
            watch_id,
            events,
            ..Default::default()
        }
    }

    fn created(watch_id: i64, rev: i64) -> WatchResponse {
        WatchResponse {
            created: true,
            ..resp(watch_id, rev, vec![])
        }
    }

    /// The history's events at `rev` as a prev_kv watcher gets them.
    fn evs(tl: &Timeline, rev: i64) -> Vec<Event> {
        tl.events_at(rev)
            .iter()
            .map(|e| {
                let create = e.kv.as_ref().is_some_and(|kv| kv.version == 1);
                Event {
                    prev_kv: if create { None } else { e.prev_kv.clone() },
                    ..e.clone()
                }
            })
            .collect()
    }

    fn all_keys(start: i64) -> WatchCreateRequest {
        WatchCreateRequest {
            key: vec![0],
            range_end: vec![0],
            start_revision: start,
            prev_kv: true,
            ..Default::default()
        }
    }

    fn good(tl: &Timeline) -> StreamLog {
        StreamLog {
            name: "s".into(),
            creates: vec![CreateLog {
                request: all_keys(2),
                chain: 0,
            }],
            cancels: vec![],
            progress_requests: vec![],
            responses: vec![
                created(0, 1),
                resp(0, 3, [evs(tl, 2), evs(tl, 3)].concat()),
                resp(0, 4, evs(tl, 4)),
                resp(0, 6, [evs(tl, 5), evs(tl, 6)].concat()),
                resp(0, 6, vec![]),
            ],
        }
    }

    fn opts() -> CheckOptions {
        CheckOptions {
            requested_progress_is_bookmark: true,
            complete_at_end: true,
            last_progress_request_answered: true,
        }
    }

    fn violations(tl: &Timeline, log: StreamLog) -> Vec<String> {
        check(tl, &[log], &opts()).violations
    }

    fn assert_caught(tl: &Timeline, log: StreamLog, what: &str) {
        let v = violations(tl, log);
        assert!(
            v.iter().any(|l| l.contains(what)),
            "expected a violation containing {what:?}, got {v:#?}"
        );
    }

    #[test]
    fn timeline_replays_the_history() {
        let tl = history().timeline(1).unwrap();
        assert_eq!(tl.final_revision(), 6);
        let at4: Vec<String> = tl.events_at(4).iter().map(show_event).collect();
        assert_eq!(
            at4,
            [
                "PUT a=2 c=2 m=4 v=2 lease=0 prev=(a=1 c=2 m=2 v=1 lease=0)",
                "DELETE b= c=0 m=4 v=0 lease=0 prev=(b=1 c=3 m=3 v=1 lease=0)"
            ]
        );
    }

    #[test]
    fn timeline_rejects_inconsistent_histories() {
        let mut h = history();
        put(&mut h, 8, "x", "1");
        assert!(h
            .timeline(1)
            .unwrap_err()
            .contains("no acknowledged write has revision 7"));
        let mut h = history();
        put(&mut h, 6, "x", "1");
        assert!(h
            .timeline(1)
            .unwrap_err()
            .contains("two acknowledged writes"));
        let mut h = history();
        h.record_delete(
            &DeleteRangeRequest {
                key: "a".into(),
                range_end: vec![0],
                ..Default::default()
            },
            &DeleteRangeResponse {
                header: header(7),
                deleted: 5,
                ..Default::default()
            },
        );
        assert!(h.timeline(1).unwrap_err().contains("deleted 5"));
    }

    #[test]
    fn a_correct_transcript_passes() {
        let tl = history().timeline(1).unwrap();
        let r = check(&tl, &[good(&tl)], &opts());
        assert!(r.violations.is_empty(), "{:#?}", r.violations);
        assert_eq!((r.sessions, r.events, r.bookmarks), (1, 6, 1));
    }

    #[test]
    fn missing_event() {
        let tl = history().timeline(1).unwrap();
        let mut log = good(&tl);
        log.responses[3].events.remove(0);
        assert_caught(&tl, log, "(reliable)");
    }

    #[test]
    fn missing_event_at_the_end() {
        let tl = history().timeline(1).unwrap();
        let mut log = good(&tl);
        log.responses.truncate(3);
        assert_caught(&tl, log, "(reliable)");
    }

    #[test]
    fn duplicate_event() {
        let tl = history().timeline(1).unwrap();
        let mut log = good(&tl);
        log.responses.insert(3, resp(0, 4, evs(&tl, 4)));
        assert_caught(&tl, log, "(unique)");
    }

    #[test]
    fn events_of_a_revision_out_of_order() {
        let tl = history().timeline(1).unwrap();
        let mut log = good(&tl);
        log.responses[2].events.reverse();
        assert_caught(&tl, log, "(ordered)");
    }

    #[test]
    fn revision_split_across_responses() {
        let tl = history().timeline(1).unwrap();
        let mut log = good(&tl);
        let mut second = log.responses[2].clone();
        log.responses[2].events.truncate(1);
        second.events.remove(0);
        log.responses.insert(3, second.clone());
        assert_caught(&tl, log.clone(), "(atomic)");
        // The same split as fragments is fine.
        log.responses[2].fragment = true;
        log.creates[0].request.fragment = true;
        let r = check(&tl, &[log], &opts());
        assert!(r.violations.is_empty(), "{:#?}", r.violations);
        assert_eq!(r.fragmented, 1);
    }

    #[test]
    fn fragments_interleaved_with_another_watcher() {
        let tl = history().timeline(1).unwrap();
        let mut log = good(&tl);
        log.creates[0].request.fragment = true;
        let mut second = log.responses[2].clone();
        log.responses[2].events.truncate(1);
        log.responses[2].fragment = true;
        second.events.remove(0);
        log.responses.insert(3, resp(-1, 4, vec![]));
        log.responses.insert(4, second);
        log.progress_requests = vec![0];
        assert_caught(&tl, log, "is interrupted by");
    }

    #[test]
    fn wrong_or_unwanted_prev_kv() {
        let tl = history().timeline(1).unwrap();
        let mut log = good(&tl);
        log.responses[2].events[0].prev_kv.as_mut().unwrap().value = b"9".to_vec();
        assert_caught(&tl, log, "wrong prev_kv");
        let mut log = good(&tl);
        log.responses[1].events[0].prev_kv = Some(KeyValue::default());
        assert_caught(&tl, log, "prev_kv on a creation");
        let mut log = good(&tl);
        log.responses[2].events[0].prev_kv = None;
        assert_caught(&tl, log, "prev_kv missing");
        let mut log = good(&tl);
        log.creates[0].request.prev_kv = false;
        assert_caught(&tl, log, "prev_kv without prev_kv requested");
    }

    #[test]
    fn wrong_event_contents() {
        let tl = history().timeline(1).unwrap();
        let mut log = good(&tl);
        // A DELETE carrying more than key + mod_revision.
        log.responses[2].events[1].kv.as_mut().unwrap().version = 2;
        assert_caught(&tl, log, "event differs from the history");
        let mut log = good(&tl);
        log.responses[1].events[0].kv.as_mut().unwrap().version = 2;
        assert_caught(&tl, log, "event differs from the history");
        let mut log = good(&tl);
        log.responses[1].events[0].kv.as_mut().unwrap().key = b"q".to_vec();
        assert_caught(&tl, log, "event not in the history");
    }

    #[test]
    fn filters_and_ranges() {
        let tl = history().timeline(1).unwrap();
        let mut log = good(&tl);
        log.creates[0].request.filters = vec![1];
        assert_caught(&tl, log, "outside the watcher's range or filters");
        let mut log = good(&tl);
        log.creates[0].request.key = b"b".to_vec();
        log.creates[0].request.range_end = vec![];
        assert_caught(&tl, log, "outside the watcher's range or filters");
    }

    #[test]
    fn bookmarks() {
        let tl = history().timeline(1).unwrap();
        // A progress notification at 6 before the events at 5 and 6.
        let mut log = good(&tl);
        log.responses.swap(3, 4);
        assert_caught(&tl, log, "(bookmarkable)");
        // A requested progress answer at 6 before them: caught only if those are bookmarks.
        let mut log = good(&tl);
        log.responses[4] = resp(-1, 6, vec![]);
        log.responses.swap(3, 4);
        log.progress_requests = vec![0];
        assert_caught(&tl, log.clone(), "(bookmarkable)");
        let lax = CheckOptions {
            requested_progress_is_bookmark: false,
            ..opts()
        };
        assert!(check(&tl, &[log], &lax).violations.is_empty());
        // Unsolicited and unanswered progress answers.
        let mut log = good(&tl);
        log.responses.push(resp(-1, 6, vec![]));
        assert_caught(&tl, log, "progress request(s) sent before it");
        let mut log = good(&tl);
        log.progress_requests = vec![5];
        assert_caught(&tl, log, "was never answered");
    }

    #[test]
    fn compaction_cancel_and_resume() {
        let mut h = history();
        h.record_compaction(5);
        let tl = h.timeline(1).unwrap();
        let cancel = WatchResponse {
            canceled: true,
            compact_revision: 5,
            ..resp(0, 0, vec![])
        };
        let mut log = good(&tl);
        log.creates.push(CreateLog {
            request: all_keys(5),
            chain: 0,
        });
        log.responses = vec![
            created(0, 1),
            resp(0, 3, [evs(&tl, 2), evs(&tl, 3)].concat()),
            cancel.clone(),
            created(1, 6),
            resp(1, 6, [evs(&tl, 5), evs(&tl, 6)].concat()),
        ];
        let r = check(&tl, &[log.clone()], &opts());
        assert!(r.violations.is_empty(), "{:#?}", r.violations);
        assert_eq!((r.compaction_cancels, r.resumes), (1, 1));
        // The prev_kv of the event at 6 is at 5, the compact revision itself: still readable.
        let mut bad = log.clone();
        bad.responses[4].events[1].prev_kv = None;
        assert_caught(&tl, bad, "prev_kv missing (revision 5 was never compacted)");
        // A compact revision that was never compacted.
        let mut bad = log.clone();
        bad.responses[2].compact_revision = 4;
        assert_caught(&tl, bad, "which was never compacted");
        // Cancelled although it only needed revisions from the compact revision on.
        let mut bad = log.clone();
        bad.responses.insert(2, resp(0, 4, evs(&tl, 4)));
        assert_caught(&tl, bad, "but only needed revisions from 5");
        // A client cancel that crossed the compaction cancel may still be acknowledged...
        let mut crossed = log.clone();
        crossed.cancels = vec![0];
        crossed.responses.insert(
            3,
            WatchResponse {
                canceled: true,
                ..resp(0, 6, vec![])
            },
        );
        let r = check(&tl, &[crossed.clone()], &opts());
        assert!(r.violations.is_empty(), "{:#?}", r.violations);
        // ... but not without a cancel request.
        crossed.cancels.clear();
        assert_caught(&tl, crossed, "not active");
        // Resumed somewhere else than the compact revision.
        let mut bad = log;
        bad.creates[1].request.start_revision = 6;
        assert_caught(&tl, bad, "resumed at revision 6");
    }

    #[test]
    fn client_cancel_and_resume() {
        let tl = history().timeline(1).unwrap();
        let canceled = WatchResponse {
            canceled: true,
            ..resp(0, 3, vec![])
        };
        let mut log = good(&tl);
        log.cancels = vec![0];
        log.creates.push(CreateLog {
            request: all_keys(4),
            chain: 0,
        });
        log.responses = vec![
            created(0, 1),
            resp(0, 3, [evs(&tl, 2), evs(&tl, 3)].concat()),
            canceled.clone(),
            created(1, 3),
            resp(1, 6, [evs(&tl, 4), evs(&tl, 5), evs(&tl, 6)].concat()),
        ];
        let r = check(&tl, &[log.clone()], &opts());
        assert!(r.violations.is_empty(), "{:#?}", r.violations);
        // A gap: resumed one revision late.
        let mut bad = log.clone();
        bad.creates[1].request.start_revision = 5;
        bad.responses[4].events.drain(..2);
        assert_caught(&tl, bad, "resumed at revision 5");
        // A cancel nobody asked for.
        let mut bad = log.clone();
        bad.cancels.clear();
        assert_caught(&tl, bad, "cancelled by the server without compaction");
        // Events after the cancel response.
        let mut bad = log;
        bad.responses.insert(3, resp(0, 4, evs(&tl, 4)));
        assert_caught(&tl, bad, "not active");
    }

    #[test]
    fn start_revision_now_uses_the_created_revision() {
        let tl = history().timeline(1).unwrap();
        let mut log = good(&tl);
        log.creates[0].request.start_revision = 0;
        log.responses[0] = created(0, 3);
        log.responses[1] = resp(0, 3, vec![]);
        let r = check(&tl, &[log.clone()], &opts());
        assert!(r.violations.is_empty(), "{:#?}", r.violations);
        // An event at or below the created revision is not part of a "now" watch.
        let mut bad = log;
        bad.responses[1] = resp(0, 3, evs(&tl, 3));
        assert_caught(&tl, bad, "before the start revision");
    }
}
