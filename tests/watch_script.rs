//! Watch scripts run side by side against a reference etcd and a candidate server.
//!
//! A [`WatchScript`] is a list of steps: KV writes (through [`crate::script`]'s ops, answers
//! compared as in the KV suite), requests sent on numbered watch streams (create, cancel, progress),
//! waits for something to arrive on a stream ([`Until`]), and expectations on what etcd sent
//! ([`WCtx::expect`]). Every step runs on both servers concurrently. At the end of the script both
//! servers' streams are read for a short quiet period, then each stream's responses are normalized
//! ([`normalize`]) and compared label by label; the reference's normalized transcript must also match
//! the script's expectations, so a case cannot silently stop testing what it claims.
//!
//! Normalization (what is *not* compared, and why):
//! - `cluster_id`, `member_id`, `raft_term`: member-specific;
//! - server-chosen watch ids: a watcher created with `watch_id = 0` is labelled `auto#N` (N = the
//!   index of its create request on the stream; created responses answer creates in order, which
//!   clients rely on); client-chosen ids are kept (`id=N`); responses with `watch_id = -1` (progress
//!   answers, failed creates) go to the label `stream`;
//! - how events of *different* revisions are grouped into responses: consecutive event responses of
//!   one watcher are merged (the header revision of the merged item is the last one's); etcd sends a
//!   catch-up from history as one response, a live event as one response per revision, and the API
//!   only promises that one revision is never split. Splitting a revision is checked separately on
//!   both servers ([`atomic_violations`]). Fragmented responses are joined and never merged with
//!   neighbours; their piece count is compared;
//! - repeated identical periodic progress notifications are collapsed (how many fit in a wait is
//!   timing);
//! - the interleaving of responses of *different* watchers on a stream (timing).
//!
//! Revisions are rendered relative to the script's base revision (`r+3`), keys relative to its
//! prefix, so expectations are plain strings.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use ballast_proto::etcdserverpb::watch_request::RequestUnion;
use ballast_proto::etcdserverpb::{RangeRequest, WatchCreateRequest, WatchRequest, WatchResponse};
use ballast_proto::mvccpb::event::EventType;
use ballast_proto::mvccpb::{Event, KeyValue};
use ballast_testkit::watch::{self, Received, WatchStream};
use ballast_testkit::CompatPair;
use ballast_tests::script::{
    difference, exec, normalize as normalize_kv, render as render_kv, Conn, Op,
};

/// How long an [`Until`] waits before the script fails.
const AWAIT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the streams are read after the last step, to catch anything extra.
const FINAL_QUIET: Duration = Duration::from_millis(400);

/// What a wait step waits for on a stream (labels as in the normalized transcript).
#[derive(Clone, Debug)]
pub enum Until {
    /// `n` created responses on the stream (failed creates included).
    Created(usize),
    /// The watcher has an event at revision `base + n` or later.
    Event(String, i64),
    /// The watcher's cancel response.
    Canceled(String),
    /// A progress notification at revision `base + n` or later for the label (`stream` for
    /// `watch_id = -1`).
    Progress(String, i64),
}

/// One step of a watch script.
enum WStep {
    Kv(Op),
    Send(usize, WatchRequest),
    CancelLabel(usize, String),
    CloseSend(usize),
    Await(usize, Until),
    Quiet(Duration),
    Expect(usize, String, Vec<String>),
}

/// What a script builder gets: key prefix, base revision, and the steps so far.
pub struct WCtx {
    /// This script's key prefix.
    pub prefix: String,
    /// Store revision before the script (the same on both servers).
    pub base: i64,
    steps: Vec<WStep>,
}

impl WCtx {
    /// `prefix + name`.
    pub fn k(&self, name: &str) -> Vec<u8> {
        format!("{}{name}", self.prefix).into_bytes()
    }
    /// `base + n`.
    pub fn rev(&self, n: i64) -> i64 {
        self.base + n
    }
    /// A KV op on both servers (answers compared; the reference must succeed).
    pub fn kv(&mut self, op: impl Into<Op>) -> &mut Self {
        self.steps.push(WStep::Kv(op.into()));
        self
    }
    /// Send a create on stream `s`.
    pub fn create(&mut self, s: usize, req: impl Into<WatchCreateRequest>) -> &mut Self {
        self.steps.push(WStep::Send(s, watch::create(req.into())));
        self
    }
    /// Send a cancel on stream `s`.
    pub fn cancel(&mut self, s: usize, watch_id: i64) -> &mut Self {
        self.steps.push(WStep::Send(s, watch::cancel(watch_id)));
        self
    }
    /// Cancel the watcher labelled `label` (e.g. `auto#0`) on stream `s`, with the id each server
    /// gave it.
    pub fn cancel_label(&mut self, s: usize, label: &str) -> &mut Self {
        self.steps.push(WStep::CancelLabel(s, label.to_owned()));
        self
    }
    /// Close the request side of stream `s` (the client will send nothing more).
    pub fn close_send(&mut self, s: usize) -> &mut Self {
        self.steps.push(WStep::CloseSend(s));
        self
    }
    /// Send a progress request on stream `s`.
    pub fn progress(&mut self, s: usize) -> &mut Self {
        self.steps.push(WStep::Send(s, watch::progress()));
        self
    }
    /// Wait (on both servers) until `until` holds on stream `s`.
    pub fn wait(&mut self, s: usize, until: Until) -> &mut Self {
        self.steps.push(WStep::Await(s, until));
        self
    }
    /// Wait for `n` created responses on stream `s`.
    pub fn wait_created(&mut self, s: usize, n: usize) -> &mut Self {
        self.wait(s, Until::Created(n))
    }
    /// Wait until `label` on stream `s` has an event at `base + n` or later.
    pub fn wait_event(&mut self, s: usize, label: &str, n: i64) -> &mut Self {
        self.wait(s, Until::Event(label.to_owned(), n))
    }
    /// Read every stream for `ms` milliseconds.
    pub fn quiet(&mut self, ms: u64) -> &mut Self {
        self.steps.push(WStep::Quiet(Duration::from_millis(ms)));
        self
    }
    /// The reference's normalized transcript of `label` on stream `s` must be exactly `lines`.
    pub fn expect(&mut self, s: usize, label: &str, lines: &[&str]) -> &mut Self {
        self.steps.push(WStep::Expect(
            s,
            label.to_owned(),
            lines.iter().map(|l| (*l).to_owned()).collect(),
        ));
        self
    }
}

/// A named watch script.
pub struct WatchScript {
    /// Shown in reports.
    pub name: String,
    build: Box<dyn Fn(&mut WCtx) + Send + Sync>,
}

impl WatchScript {
    /// A script whose steps `build` appends.
    pub fn new(
        name: impl Into<String>,
        build: impl Fn(&mut WCtx) + Send + Sync + 'static,
    ) -> WatchScript {
        WatchScript {
            name: name.into(),
            build: Box::new(build),
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Normalization
// ---------------------------------------------------------------------------------------------------

/// One normalized thing under a label.
#[derive(Clone, Debug, PartialEq)]
pub enum NItem {
    /// A created response (`failed` = its cancel reason when the create was refused).
    Created { rev: i64, failed: Option<String> },
    /// Events (consecutive unfragmented responses merged).
    Events {
        rev: i64,
        events: Vec<Event>,
        fragments: usize,
    },
    /// An empty response that is not a create/cancel: a progress notification.
    Progress { rev: i64 },
    /// A cancel response.
    Canceled {
        rev: i64,
        compact: i64,
        reason: String,
    },
}

/// A stream's normalized transcript: label → items.
pub type Transcript = BTreeMap<String, Vec<NItem>>;

/// Join fragments (adjacent pieces of one watcher) into single responses; returns
/// `(response, pieces)`.
fn join_fragments(raw: &[WatchResponse]) -> Vec<(WatchResponse, usize)> {
    let mut out: Vec<(WatchResponse, usize)> = Vec::new();
    let mut open = false;
    for r in raw {
        if open {
            let (acc, n) = out.last_mut().expect("open fragment");
            if acc.watch_id == r.watch_id && !r.created && !r.canceled {
                acc.events.extend(r.events.iter().cloned());
                acc.fragment = r.fragment;
                *n += 1;
                open = r.fragment;
                continue;
            }
        }
        out.push((r.clone(), 1));
        open = r.fragment;
    }
    out
}

/// Normalize one stream (see the module docs).
pub fn normalize(creates: &[WatchCreateRequest], raw: &[WatchResponse]) -> Transcript {
    let mut t: Transcript = BTreeMap::new();
    let mut next_create = 0usize;
    let mut labels: BTreeMap<i64, String> = BTreeMap::new();
    for (r, pieces) in join_fragments(raw) {
        let rev = r.header.as_ref().map_or(-999, |h| h.revision);
        let (label, item) = if r.created {
            let i = next_create;
            next_create += 1;
            let asked = creates.get(i).map_or(0, |c| c.watch_id);
            let label = if r.watch_id == -1 {
                "stream".to_owned()
            } else if asked != 0 {
                format!("id={}", r.watch_id)
            } else {
                format!("auto#{i}")
            };
            if r.watch_id != -1 {
                labels.insert(r.watch_id, label.clone());
            }
            let failed = (r.canceled || r.watch_id == -1).then(|| r.cancel_reason.clone());
            (label, NItem::Created { rev, failed })
        } else {
            let label = if r.watch_id == -1 {
                "stream".to_owned()
            } else {
                labels
                    .get(&r.watch_id)
                    .cloned()
                    .unwrap_or_else(|| format!("unknown id={}", r.watch_id))
            };
            let item = if r.canceled {
                labels.remove(&r.watch_id);
                NItem::Canceled {
                    rev,
                    compact: r.compact_revision,
                    reason: r.cancel_reason.clone(),
                }
            } else if r.events.is_empty() {
                NItem::Progress { rev }
            } else {
                NItem::Events {
                    rev,
                    events: r.events.clone(),
                    fragments: pieces,
                }
            };
            (label, item)
        };
        let items = t.entry(label).or_default();
        match (items.last_mut(), item) {
            (
                Some(NItem::Events {
                    rev: last_rev,
                    events: last_events,
                    fragments: 1,
                }),
                NItem::Events {
                    rev,
                    events,
                    fragments: 1,
                },
            ) => {
                *last_rev = rev;
                last_events.extend(events);
            }
            (Some(last @ NItem::Progress { .. }), item @ NItem::Progress { .. })
                if *last == item => {}
            (_, item) => items.push(item),
        }
    }
    t
}

/// Every place where a watcher's revision is split across two responses without `fragment`.
pub fn atomic_violations(raw: &[WatchResponse]) -> Vec<String> {
    let mut last: BTreeMap<i64, (i64, bool)> = BTreeMap::new();
    let mut out = Vec::new();
    for r in raw {
        let (Some(first), Some(lastev)) = (r.events.first(), r.events.last()) else {
            continue;
        };
        let first_rev = first.kv.as_ref().map_or(0, |kv| kv.mod_revision);
        let last_rev = lastev.kv.as_ref().map_or(0, |kv| kv.mod_revision);
        if let Some(&(prev_rev, prev_fragment)) = last.get(&r.watch_id) {
            if prev_rev == first_rev && !prev_fragment {
                out.push(format!(
                    "watch {}: revision {first_rev} split across two responses without fragment",
                    r.watch_id
                ));
            }
        }
        last.insert(r.watch_id, (last_rev, r.fragment));
    }
    out
}

/// Renders normalized items with revisions relative to `base` and keys relative to `prefix`.
pub struct Render<'a> {
    /// Script base revision.
    pub base: i64,
    /// Script key prefix.
    pub prefix: &'a [u8],
}

impl Render<'_> {
    fn rev(&self, r: i64) -> String {
        if r == 0 {
            "0".to_owned()
        } else {
            format!("r{:+}", r - self.base)
        }
    }

    fn key(&self, k: &[u8]) -> String {
        match k.strip_prefix(self.prefix) {
            Some(rest) => bytes(rest),
            None => format!("<{}>", bytes(k)),
        }
    }

    fn kv(&self, kv: &KeyValue) -> String {
        let mut s = format!(
            "{}={} c={} m={} v={}",
            self.key(&kv.key),
            bytes(&kv.value),
            self.rev(kv.create_revision),
            self.rev(kv.mod_revision),
            kv.version
        );
        if kv.lease != 0 {
            let _ = write!(s, " lease={:x}", kv.lease);
        }
        s
    }

    fn event(&self, ev: &Event) -> String {
        let mut s = match (EventType::try_from(ev.r#type), &ev.kv) {
            (Ok(EventType::Delete), Some(kv))
                if kv.create_revision == 0
                    && kv.version == 0
                    && kv.value.is_empty()
                    && kv.lease == 0 =>
            {
                // etcd's DELETE event: only the key and the revision of the deletion.
                format!(
                    "DELETE {} m={}",
                    self.key(&kv.key),
                    self.rev(kv.mod_revision)
                )
            }
            (Ok(EventType::Delete), Some(kv)) => format!("DELETE {}", self.kv(kv)),
            (Ok(EventType::Put), Some(kv)) => format!("PUT {}", self.kv(kv)),
            (_, kv) => format!("TYPE{} {:?}", ev.r#type, kv),
        };
        if let Some(p) = &ev.prev_kv {
            let _ = write!(s, " prev=({})", self.kv(p));
        }
        s
    }

    /// One item as one line.
    pub fn item(&self, it: &NItem) -> String {
        match it {
            NItem::Created { rev, failed: None } => format!("created rev={}", self.rev(*rev)),
            NItem::Created {
                rev,
                failed: Some(reason),
            } => format!("created+canceled rev={} reason={reason:?}", self.rev(*rev)),
            NItem::Events {
                rev,
                events,
                fragments,
            } => {
                let evs: Vec<String> = events.iter().map(|e| self.event(e)).collect();
                let frag = if *fragments > 1 {
                    format!(" fragments={fragments}")
                } else {
                    String::new()
                };
                if evs.len() > 10 {
                    // Long lists: count plus a digest of every event.
                    let digest = evs.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, e| {
                        e.bytes()
                            .fold(h, |h, c| (h ^ u64::from(c)).wrapping_mul(0x100_0000_01b3))
                    });
                    format!(
                        "events rev={}{frag} n={} [{} ... {}] digest={digest:016x}",
                        self.rev(*rev),
                        evs.len(),
                        evs[0],
                        evs[evs.len() - 1]
                    )
                } else {
                    format!("events rev={}{frag} [{}]", self.rev(*rev), evs.join("; "))
                }
            }
            NItem::Progress { rev } => format!("progress rev={}", self.rev(*rev)),
            NItem::Canceled {
                rev,
                compact,
                reason,
            } => {
                let mut s = format!("canceled rev={}", self.rev(*rev));
                if *compact != 0 {
                    let _ = write!(s, " compact={}", self.rev(*compact));
                }
                if !reason.is_empty() {
                    let _ = write!(s, " reason={reason:?}");
                }
                s
            }
        }
    }

    /// A label's items as lines.
    pub fn lines(&self, items: &[NItem]) -> Vec<String> {
        items.iter().map(|i| self.item(i)).collect()
    }
}

/// Bytes as text: printable ASCII as is, the rest `\xNN`; long values shortened.
fn bytes(b: &[u8]) -> String {
    if b.len() > 32 {
        let digest = b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &c| {
            (h ^ u64::from(c)).wrapping_mul(0x100_0000_01b3)
        });
        return format!("<{} bytes {:08x}>", b.len(), digest as u32);
    }
    let mut s = String::new();
    for &c in b {
        if (0x20..0x7f).contains(&c) && c != b'\\' && c != b';' {
            s.push(c as char);
        } else {
            let _ = write!(s, "\\x{c:02x}");
        }
    }
    s
}

// ---------------------------------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------------------------------

struct RecStream {
    stream: WatchStream,
    creates: Vec<WatchCreateRequest>,
    raw: Vec<WatchResponse>,
    ended: Option<String>,
}

impl RecStream {
    fn take(&mut self, item: Received) {
        match item {
            Received::Response(r) => self.raw.push(r),
            Received::Error(s) => {
                self.ended = Some(format!("stream error {:?}: {}", s.code(), s.message()))
            }
            Received::End => self.ended = Some("stream ended by the server".to_owned()),
        }
    }
}

/// One server's side of a script run.
struct Side {
    name: String,
    conn: Conn,
    client: ballast_proto::etcdserverpb::watch_client::WatchClient<tonic::transport::Channel>,
    streams: BTreeMap<usize, RecStream>,
}

impl Side {
    async fn connect(name: String, url: String) -> Side {
        Side {
            conn: Conn::connect(&url).await,
            client: watch::watch_client(&url).await,
            name,
            streams: BTreeMap::new(),
        }
    }

    fn stream(&mut self, s: usize) -> &mut RecStream {
        let client = &self.client;
        self.streams.entry(s).or_insert_with(|| RecStream {
            stream: WatchStream::open(client),
            creates: Vec::new(),
            raw: Vec::new(),
            ended: None,
        })
    }

    fn send(&mut self, s: usize, req: &WatchRequest) {
        let st = self.stream(s);
        if let Some(RequestUnion::CreateRequest(c)) = &req.request_union {
            st.creates.push(c.clone());
        }
        st.stream.send(req.clone());
    }

    /// The id this server gave the watcher labelled `label` on stream `s`.
    fn id_of(&mut self, s: usize, label: &str) -> Option<i64> {
        let st = self.stream(s);
        let mut next_create = 0usize;
        for r in &st.raw {
            if !r.created {
                continue;
            }
            let i = next_create;
            next_create += 1;
            let asked = st.creates.get(i).map_or(0, |c| c.watch_id);
            let l = if asked != 0 {
                format!("id={}", r.watch_id)
            } else {
                format!("auto#{i}")
            };
            if l == label && r.watch_id != -1 {
                return Some(r.watch_id);
            }
        }
        None
    }

    async fn revision(&mut self) -> Option<i64> {
        let probe = Op::Range(RangeRequest {
            key: b"\xff\xff-ballast-no-such-key".to_vec(),
            ..Default::default()
        });
        exec(&mut self.conn, &probe).await.revision()
    }

    /// Read stream `s` until `until` holds; `Err` with what arrived on timeout.
    async fn wait(&mut self, s: usize, until: &Until, base: i64) -> Result<(), String> {
        let deadline = Instant::now() + AWAIT_TIMEOUT;
        loop {
            let name = self.name.clone();
            let st = self.stream(s);
            let t = normalize(&st.creates, &st.raw);
            if holds(until, &st.raw, &t, base) {
                return Ok(());
            }
            if let Some(why) = &st.ended {
                return Err(format!("{name}: {why} while waiting for {until:?}"));
            }
            match st.stream.recv_until(deadline).await {
                Some((_, item)) => st.take(item),
                None if st.ended.is_none() && !st.stream.is_closed() => {
                    return Err(format!(
                        "{name}: timed out after {AWAIT_TIMEOUT:?} waiting for {until:?}"
                    ))
                }
                None => st.ended = st.ended.clone().or(Some("stream closed".to_owned())),
            }
        }
    }

    /// Read every open stream for `d`.
    async fn quiet(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        for st in self.streams.values_mut() {
            while let Some((_, item)) = st.stream.recv_until(deadline).await {
                st.take(item);
            }
        }
        // Whatever arrived on earlier streams while later ones were read.
        for st in self.streams.values_mut() {
            while let Some((_, item)) = st.stream.try_recv() {
                st.take(item);
            }
        }
    }
}

fn holds(until: &Until, raw: &[WatchResponse], t: &Transcript, base: i64) -> bool {
    let items = |label: &str| t.get(label).map(Vec::as_slice).unwrap_or(&[]);
    match until {
        Until::Created(n) => raw.iter().filter(|r| r.created).count() >= *n,
        Until::Event(label, n) => items(label).iter().any(|i| match i {
            NItem::Events { events, .. } => events
                .iter()
                .any(|e| e.kv.as_ref().is_some_and(|kv| kv.mod_revision >= base + n)),
            _ => false,
        }),
        Until::Canceled(label) => items(label)
            .iter()
            .any(|i| matches!(i, NItem::Canceled { .. })),
        Until::Progress(label, n) => items(label)
            .iter()
            .any(|i| matches!(i, NItem::Progress { rev } if *rev >= base + n)),
    }
}

/// Run watch scripts on a server pair.
pub struct WatchRunner {
    reference: Side,
    candidate: Side,
    label: String,
    counter: usize,
}

/// `BALLAST_COMPAT_DUMP=1`: print the reference's transcripts (to learn etcd's behaviour).
fn dump() -> bool {
    std::env::var_os("BALLAST_COMPAT_DUMP").is_some()
}

impl WatchRunner {
    /// Connect to both servers of `pair`.
    pub async fn connect(pair: &CompatPair) -> WatchRunner {
        let r = pair.reference.client_url();
        let c = pair.candidate.client_url();
        let label = format!(
            "reference {} ({r}) vs candidate {} ({c})",
            pair.reference.kind(),
            pair.candidate.kind()
        );
        WatchRunner {
            reference: Side::connect(format!("reference {}", pair.reference.kind()), r).await,
            candidate: Side::connect(format!("candidate {}", pair.candidate.kind()), c).await,
            label,
            counter: 0,
        }
    }

    /// Run one script; `Err` carries the full report.
    pub async fn run(&mut self, script: &WatchScript) -> Result<(), String> {
        self.counter += 1;
        let prefix = format!("w{}/", self.counter);
        let (rb, cb) = tokio::join!(self.reference.revision(), self.candidate.revision());
        let base = match (rb, cb) {
            (Some(r), Some(c)) if r == c => r,
            _ => {
                return Err(format!(
                    "script {:?} not run: store revision {rb:?} on the reference vs {cb:?} on the \
                     candidate ({})",
                    script.name, self.label
                ))
            }
        };
        let mut ctx = WCtx {
            prefix: prefix.clone(),
            base,
            steps: Vec::new(),
        };
        (script.build)(&mut ctx);
        let render = Render {
            base,
            prefix: prefix.as_bytes(),
        };
        let mut problems: Vec<String> = Vec::new();
        let mut expectations = Vec::new();
        for (i, step) in ctx.steps.iter().enumerate() {
            match step {
                WStep::Kv(op) => {
                    let (r, c) = tokio::join!(
                        exec(&mut self.reference.conn, op),
                        exec(&mut self.candidate.conn, op)
                    );
                    let (r, c) = (normalize_kv(r), normalize_kv(c));
                    if let Some((_, msg)) = r.error() {
                        problems.push(format!(
                            "step #{i} {op}: the reference failed ({msg}); fix the script"
                        ));
                    }
                    if let Some(d) = difference(&r, &c) {
                        problems.push(format!("step #{i} {op}: {d}"));
                    }
                    if dump() {
                        eprintln!("[{}] #{i} {op} -> {}", script.name, render_kv(&r));
                    }
                }
                WStep::Send(s, req) => {
                    self.reference.send(*s, req);
                    self.candidate.send(*s, req);
                }
                WStep::CancelLabel(s, label) => {
                    for side in [&mut self.reference, &mut self.candidate] {
                        match side.id_of(*s, label) {
                            Some(id) => side.send(*s, &watch::cancel(id)),
                            None => problems.push(format!(
                                "step #{i}: {} has no watcher {label} on stream {s} to cancel",
                                side.name
                            )),
                        }
                    }
                }
                WStep::CloseSend(s) => {
                    self.reference.stream(*s).stream.close_send();
                    self.candidate.stream(*s).stream.close_send();
                }
                WStep::Await(s, until) => {
                    let (r, c) = tokio::join!(
                        self.reference.wait(*s, until, base),
                        self.candidate.wait(*s, until, base)
                    );
                    for e in [r.err(), c.err()].into_iter().flatten() {
                        problems.push(format!("step #{i} (stream {s}): {e}"));
                    }
                }
                WStep::Quiet(d) => {
                    tokio::join!(self.reference.quiet(*d), self.candidate.quiet(*d));
                }
                WStep::Expect(s, label, lines) => expectations.push((*s, label, lines)),
            }
            if !problems.is_empty() {
                break;
            }
        }
        tokio::join!(
            self.reference.quiet(FINAL_QUIET),
            self.candidate.quiet(FINAL_QUIET)
        );

        // Compare stream by stream, label by label.
        let streams: Vec<usize> = self
            .reference
            .streams
            .keys()
            .chain(self.candidate.streams.keys())
            .copied()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut dumps = Vec::new();
        for s in streams {
            let (rt, rraw, rend) = side_transcript(&mut self.reference, s);
            let (ct, craw, cend) = side_transcript(&mut self.candidate, s);
            for (who, raw) in [("reference", &rraw), ("candidate", &craw)] {
                for v in atomic_violations(raw) {
                    problems.push(format!("stream {s} on the {who}: {v}"));
                }
            }
            if rend != cend {
                problems.push(format!(
                    "stream {s}: ended {rend:?} on the reference, {cend:?} on the candidate"
                ));
            }
            let labels: std::collections::BTreeSet<&String> = rt.keys().chain(ct.keys()).collect();
            for label in labels {
                let rl = render.lines(rt.get(label).map(Vec::as_slice).unwrap_or(&[]));
                let cl = render.lines(ct.get(label).map(Vec::as_slice).unwrap_or(&[]));
                if rl != cl {
                    problems.push(format!(
                        "stream {s} {label}: transcripts differ\n    reference:\n      {}\n    candidate:\n      {}",
                        rl.join("\n      "),
                        cl.join("\n      ")
                    ));
                }
            }
            for (es, label, lines) in &expectations {
                if *es != s {
                    continue;
                }
                let rl = render.lines(rt.get(*label).map(Vec::as_slice).unwrap_or(&[]));
                if &rl != *lines {
                    problems.push(format!(
                        "stream {s} {label}: the reference etcd sent something else than the script \
                         expects (fix the script):\n    expected:\n      {}\n    reference:\n      {}",
                        lines.join("\n      "),
                        rl.join("\n      ")
                    ));
                }
            }
            if dump() {
                for (label, items) in &rt {
                    dumps.push(format!(
                        "  stream {s} {label}:\n      {}",
                        render.lines(items).join("\n      ")
                    ));
                }
            }
        }
        for (es, label, _) in &expectations {
            if !self.reference.streams.contains_key(es) {
                problems.push(format!(
                    "expectation on stream {es} {label}: no such stream"
                ));
            }
        }
        if dump() {
            eprintln!(
                "[{}] reference transcripts (base {base}):\n{}",
                script.name,
                dumps.join("\n")
            );
        }
        // Streams of this script are closed now.
        self.reference.streams.clear();
        self.candidate.streams.clear();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "watch script {:?} (prefix {prefix:?}, base revision {base}):\n{}\n{}",
                script.name,
                problems.join("\n"),
                self.label
            ))
        }
    }

    /// Run every script; panic with all failure reports at the end.
    pub async fn run_all(&mut self, scripts: &[WatchScript]) {
        let mut failures = Vec::new();
        for s in scripts {
            if let Err(e) = self.run(s).await {
                failures.push(e);
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} watch scripts failed:\n\n{}",
            failures.len(),
            scripts.len(),
            failures.join("\n\n")
        );
    }
}

fn side_transcript(side: &mut Side, s: usize) -> (Transcript, Vec<WatchResponse>, Option<String>) {
    match side.streams.get(&s) {
        Some(st) => (
            normalize(&st.creates, &st.raw),
            st.raw.clone(),
            st.ended.clone(),
        ),
        None => (Transcript::new(), Vec::new(), None),
    }
}
