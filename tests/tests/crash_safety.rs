//! Crash safety: what Ballast acknowledged survives SIGKILL, a clean stop, and a torn WAL tail, and
//! two processes never share a data dir.
//!
//! - `kill9_during_concurrent_writes_loses_no_acknowledged_write`: rounds of concurrent Puts,
//!   overwrites, two-key Txns and Deletes from many clients, a SIGKILL while writes are in flight,
//!   a restart on the same data dir, then a full check of the store against a model of every
//!   acknowledged write (values with checksums, `mod_revision`/`create_revision`/`version`,
//!   atomicity of the Txn pairs, the store revision accounted for exactly, history readable at old
//!   revisions). `--snapshot-count 500` and enough data make raft snapshots and WAL segment purges
//!   happen between kills; the test checks that they did.
//! - `restart_after_clean_stop_keeps_everything`: SIGTERM, restart, identical store and history.
//! - `restart_after_wal_segments_were_purged`: enough data for a raft snapshot to purge a WAL
//!   segment, then a clean stop and a SIGKILL: the member restarts from what the purge left.
//! - `torn_wal_tail_is_repaired_on_restart`: SIGKILL, then damage the newest WAL segment *after*
//!   its last valid record (garbage in the preallocated zero area, a half-written frame, a file cut
//!   inside a frame), restart: every acknowledged write is there and later writes survive too.
//! - `data_dir_in_use_is_refused`: a second process on a data dir in use exits with an error and
//!   leaves the first one's data alone.
//!
//! The WAL layout the torn-tail test reads (segment header, 8-byte aligned frames with a CRC32C,
//! zero-filled preallocated tail) is documented in `crates/ballast-wal/src/lib.rs`.
//!
//! Tests in this file run one at a time (each holds one or two server processes). Set
//! `BALLAST_CRASH_SEED=N` to replay a run of the kill test.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ballast_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use ballast_proto::etcdserverpb::kv_client::KvClient;
use ballast_proto::etcdserverpb::request_op::Request as ReqOp;
use ballast_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use ballast_proto::mvccpb::KeyValue;
use ballast_testkit::{ballast_binary, free_port, kv_client, Server, ServerKind, ServerOptions};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use tonic::transport::Channel;

type Kv = KvClient<Channel>;

static SERIAL: Mutex<()> = Mutex::new(());

/// One test of this file at a time.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn ballast_with(extra_args: &[&str]) -> Server {
    Server::start_with(
        ServerKind::Ballast,
        ServerOptions {
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            ..ServerOptions::default()
        },
    )
}

// ------------------------------------------------------------------------------------------------
// Small client helpers
// ------------------------------------------------------------------------------------------------

fn fnv64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// `key|<random filler>|<fnv64 of everything before, 16 hex digits>`: a value that proves by
/// itself that it was not torn or mixed up with another key's.
fn make_value(rng: &mut StdRng, key: &str, size: usize) -> Vec<u8> {
    let mut v = format!("{key}|").into_bytes();
    let start = v.len();
    v.resize(start + size.saturating_sub(start + 17), 0);
    rng.fill_bytes(&mut v[start..]);
    let sum = fnv64(&v);
    v.extend_from_slice(format!("|{sum:016x}").as_bytes());
    v
}

/// The value carries a correct checksum and names `key`.
fn value_is_intact(key: &[u8], v: &[u8]) -> bool {
    if v.len() < key.len() + 18 || !v.starts_with(key) || v[key.len()] != b'|' {
        return false;
    }
    let (body, tail) = v.split_at(v.len() - 17);
    tail[0] == b'|'
        && std::str::from_utf8(&tail[1..])
            .ok()
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            == Some(fnv64(body))
}

async fn put(kv: &mut Kv, key: &[u8], value: &[u8]) -> Result<i64, tonic::Status> {
    let r = kv
        .put(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(r.header.map_or(0, |h| h.revision))
}

/// Every key in `[from, to)` at `revision` (0 = latest), paged; with the header revision of the
/// first page.
async fn list(kv: &mut Kv, from: &[u8], to: &[u8], revision: i64) -> (i64, Vec<KeyValue>) {
    const PAGE: i64 = 1000;
    let mut out = Vec::new();
    let mut start = from.to_vec();
    let mut header_rev = 0;
    let mut rev = revision;
    loop {
        let r = kv
            .range(RangeRequest {
                key: start.clone(),
                range_end: to.to_vec(),
                limit: PAGE,
                revision: rev,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("range [{from:?}, {to:?}) at {rev}: {s}"))
            .into_inner();
        if header_rev == 0 {
            header_rev = r.header.map_or(0, |h| h.revision);
            if rev == 0 {
                // Later pages read at the same revision: the listing is one consistent snapshot.
                rev = header_rev;
            }
        }
        let more = r.more;
        if let Some(last) = r.kvs.last() {
            start = last.key.clone();
            start.push(0);
        }
        out.extend(r.kvs);
        if !more {
            return (header_rev, out);
        }
    }
}

async fn get_at(kv: &mut Kv, key: &[u8], revision: i64) -> Result<Option<KeyValue>, tonic::Status> {
    let r = kv
        .range(RangeRequest {
            key: key.to_vec(),
            revision,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(r.kvs.into_iter().next())
}

async fn current_revision(kv: &mut Kv) -> i64 {
    kv.range(RangeRequest {
        key: b"crash-safety/no-such-key".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|s| panic!("range: {s}"))
    .into_inner()
    .header
    .map_or(0, |h| h.revision)
}

/// Start the server again on its data dir after a kill or stop; on failure, panic with the
/// server's own error (the last error line of its log) rather than just "not ready".
fn restart(server: &mut Server, when: &str) {
    server.spawn_without_wait();
    if let Err(e) = server.wait_ready() {
        let log = std::fs::read_to_string(server.log_path()).unwrap_or_default();
        let reason = log
            .lines()
            .rev()
            .find(|l| l.contains("\"error\"") || l.contains("panicked"))
            .unwrap_or("<no error in the log>");
        panic!("Ballast did not restart {when}: {e}\n  its error: {reason}");
    }
}

/// JSON log lines of the server with this `msg`.
fn log_events(server: &Server, msg: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(server.log_path()).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains(msg))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("msg").and_then(|m| m.as_str()) == Some(msg))
        .collect()
}

// ------------------------------------------------------------------------------------------------
// kill -9 during concurrent writes
// ------------------------------------------------------------------------------------------------

const ROUNDS: usize = 8;
const CONNECTIONS: usize = 4;
const WRITERS: usize = 16;
const SNAPSHOT_COUNT: usize = 500;
/// Acknowledged writes per round before the kill timer starts: more raft entries than
/// `--snapshot-count`, so every round crosses a raft snapshot.
const MIN_ACKED_PER_ROUND: usize = SNAPSHOT_COUNT + 200;
/// WAL segments are 64 MiB; payload per round before the kill timer starts, so that over all
/// rounds the WAL rolls over segments and raft snapshots purge the old ones.
const MIN_BYTES_PER_ROUND: u64 = 12 << 20;
/// Most values are small; one Put in `BIG_EVERY` carries a big one.
const BIG_EVERY: u32 = 12;
const BIG_VALUE: std::ops::Range<usize> = 48 << 10..160 << 10;
const SMALL_VALUE: std::ops::Range<usize> = 40..400;
const LOG_SNAPSHOT: &str = "raft snapshot taken, wal purged";

/// What a write did, as the model sees it.
#[derive(Clone, Debug)]
enum Write {
    /// Put of `key` (first write of the key, or an overwrite of a live one).
    Put { key: String, value: u64 },
    /// Txn `create_revision(a) = 0 ? put a, put b` with the same value.
    Pair { a: String, b: String, value: u64 },
    /// DeleteRange of one live key.
    Delete { key: String },
}

/// Whether the server answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Acknowledged at this revision.
    Acked(i64),
    /// No answer (in flight at the kill, or failed): applied or not, never half.
    Unknown,
}

#[derive(Clone, Debug)]
struct Op {
    write: Write,
    fate: Fate,
}

#[derive(Default)]
struct Progress {
    acked: AtomicUsize,
    bytes: AtomicU64,
    in_flight: AtomicUsize,
    killed: AtomicBool,
}

struct TaskLog {
    ops: Vec<Op>,
    /// Answers that contradict the model (e.g. a Delete of a live key that deleted nothing).
    anomalies: Vec<String>,
    /// An error before the kill (the task stops there; the op is `Unknown`).
    early_error: Option<String>,
}

/// One writer: its own keys under `r{round}/w{task}/`, one request at a time, until the first
/// error (the server was killed). Every op sent is recorded: with its revision when answered, as
/// `Unknown` when not (the last op of the task).
async fn writer(
    mut kv: Kv,
    round: usize,
    task: usize,
    seed: u64,
    progress: Arc<Progress>,
) -> TaskLog {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log = TaskLog {
        ops: Vec::new(),
        anomalies: Vec::new(),
        early_error: None,
    };
    let mut live: Vec<String> = Vec::new();
    let mut seq = 0u32;
    loop {
        seq += 1;
        let size = if rng.random_ratio(1, BIG_EVERY) {
            rng.random_range(BIG_VALUE)
        } else {
            rng.random_range(SMALL_VALUE)
        };
        let dice = rng.random_range(0..100);
        let (write, request) = if dice < 12 && !live.is_empty() {
            let key = live.swap_remove(rng.random_range(0..live.len()));
            let req = Request::Delete(key.clone());
            (Write::Delete { key }, req)
        } else if dice < 24 && !live.is_empty() {
            let key = live[rng.random_range(0..live.len())].clone();
            let value = make_value(&mut rng, &key, size);
            let w = Write::Put {
                key: key.clone(),
                value: fnv64(&value),
            };
            (w, Request::Put(key, value))
        } else if dice < 36 {
            let a = format!("r{round:02}/w{task:02}/t{seq:06}/a");
            let b = format!("r{round:02}/w{task:02}/t{seq:06}/b");
            // One value for both keys; it names `a` (the check knows which key it is for).
            let value = make_value(&mut rng, &a, size);
            let w = Write::Pair {
                a: a.clone(),
                b: b.clone(),
                value: fnv64(&value),
            };
            (w, Request::Pair(a, b, value))
        } else {
            let key = format!("r{round:02}/w{task:02}/p{seq:06}");
            let value = make_value(&mut rng, &key, size);
            let w = Write::Put {
                key: key.clone(),
                value: fnv64(&value),
            };
            (w, Request::Put(key, value))
        };
        progress.in_flight.fetch_add(1, Ordering::SeqCst);
        let answer = send(&mut kv, &request).await;
        progress.in_flight.fetch_sub(1, Ordering::SeqCst);
        match answer {
            Ok((revision, anomaly)) => {
                if let Some(a) = anomaly {
                    log.anomalies.push(format!("{request:?}: {a}"));
                }
                log.ops.push(Op {
                    write: write.clone(),
                    fate: Fate::Acked(revision),
                });
                match &write {
                    Write::Put { key, .. } if !live.contains(key) => live.push(key.clone()),
                    _ => {}
                }
                progress.acked.fetch_add(1, Ordering::SeqCst);
                progress.bytes.fetch_add(size as u64, Ordering::Relaxed);
            }
            Err(status) => {
                if !progress.killed.load(Ordering::SeqCst) {
                    log.early_error = Some(format!("{:?} {}", status.code(), status.message()));
                }
                log.ops.push(Op {
                    write,
                    fate: Fate::Unknown,
                });
                return log;
            }
        }
    }
}

enum Request {
    Put(String, Vec<u8>),
    Pair(String, String, Vec<u8>),
    Delete(String),
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Put(k, v) => write!(f, "Put({k}, {} bytes)", v.len()),
            Request::Pair(a, b, v) => write!(f, "Txn(put {a} + {b}, {} bytes)", v.len()),
            Request::Delete(k) => write!(f, "Delete({k})"),
        }
    }
}

fn put_op(key: &str, value: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(ReqOp::RequestPut(PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.to_vec(),
            ..Default::default()
        })),
    }
}

/// Send one write; its response revision and, if the answer contradicts the model, why.
async fn send(kv: &mut Kv, request: &Request) -> Result<(i64, Option<String>), tonic::Status> {
    match request {
        Request::Put(key, value) => Ok((put(kv, key.as_bytes(), value).await?, None)),
        Request::Pair(a, b, value) => {
            let r = kv
                .txn(TxnRequest {
                    compare: vec![Compare {
                        key: a.as_bytes().to_vec(),
                        target: CompareTarget::Create as i32,
                        result: CompareResult::Equal as i32,
                        target_union: Some(TargetUnion::CreateRevision(0)),
                        ..Default::default()
                    }],
                    success: vec![put_op(a, value), put_op(b, value)],
                    failure: vec![],
                })
                .await?
                .into_inner();
            let anomaly = (!r.succeeded).then(|| "txn on a fresh key did not succeed".to_owned());
            Ok((r.header.map_or(0, |h| h.revision), anomaly))
        }
        Request::Delete(key) => {
            let r = kv
                .delete_range(DeleteRangeRequest {
                    key: key.as_bytes().to_vec(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            let anomaly =
                (r.deleted != 1).then(|| format!("deleted {} keys, expected 1", r.deleted));
            Ok((r.header.map_or(0, |h| h.revision), anomaly))
        }
    }
}

/// The state of one key as the model expects it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Expected {
    value: u64,
    create_revision: i64,
    mod_revision: i64,
    version: i64,
}

/// All writes so far, per key in issue order (one task writes a key, so that order is the order
/// the server saw them in), plus what earlier checks settled.
#[derive(Default)]
struct Model {
    /// key -> ops on it (pairs appear under both keys).
    by_key: BTreeMap<String, Vec<Op>>,
    /// Settled state of every key of a checked round (`None` = absent).
    settled: HashMap<String, Option<Expected>>,
    /// Acknowledged writes, each of which consumed exactly one revision.
    acked_writes: i64,
    /// `Unknown` writes found applied, each of which consumed exactly one revision.
    applied_unknown: i64,
    /// Other writes this test made (one per round after the restart).
    extra_writes: i64,
    max_acked_revision: i64,
    /// (key, revision, expected state at that revision) for history checks.
    history: Vec<(String, i64, Option<u64>)>,
}

impl Model {
    fn add(&mut self, op: &Op) {
        if let Fate::Acked(rev) = op.fate {
            self.acked_writes += 1;
            self.max_acked_revision = self.max_acked_revision.max(rev);
        }
        let keys: Vec<&String> = match &op.write {
            Write::Put { key, .. } | Write::Delete { key } => vec![key],
            Write::Pair { a, b, .. } => vec![a, b],
        };
        for k in keys {
            self.by_key.entry(k.clone()).or_default().push(op.clone());
        }
    }
}

/// Replay the acknowledged `ops` of one key: the state after them.
fn replay(ops: &[Op]) -> Option<Expected> {
    let mut state: Option<Expected> = None;
    for op in ops {
        let Fate::Acked(rev) = op.fate else {
            unreachable!("replay only acknowledged ops")
        };
        state = match &op.write {
            Write::Delete { .. } => None,
            Write::Put { value, .. } | Write::Pair { value, .. } => Some(match state {
                Some(s) => Expected {
                    value: *value,
                    create_revision: s.create_revision,
                    mod_revision: rev,
                    version: s.version + 1,
                },
                None => Expected {
                    value: *value,
                    create_revision: rev,
                    mod_revision: rev,
                    version: 1,
                },
            }),
        };
    }
    state
}

fn observed(kv: Option<&KeyValue>) -> Option<Expected> {
    kv.map(|kv| Expected {
        value: fnv64(&kv.value),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
    })
}

/// Check the store after a restart against the model; settle the round's `Unknown` writes.
async fn verify(
    kv: &mut Kv,
    model: &mut Model,
    base_revision: i64,
    round: usize,
    rng: &mut StdRng,
) -> Vec<String> {
    let mut errors = Vec::new();
    let (revision, listing) = list(kv, b"r", b"s", 0).await;
    let store: HashMap<String, &KeyValue> = listing
        .iter()
        .map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), kv))
        .collect();

    // Revisions never go backwards.
    if revision < model.max_acked_revision {
        errors.push(format!(
            "store revision {revision} after restart is below the highest acknowledged revision {}",
            model.max_acked_revision
        ));
    }

    // The count, before anything is settled: within what the unanswered writes allow.
    let (mut min, mut max) = (0i64, 0i64);
    for (key, ops) in &model.by_key {
        if let Some(s) = model.settled.get(key) {
            min += s.is_some() as i64;
            max += s.is_some() as i64;
            continue;
        }
        let acked: Vec<Op> = ops
            .iter()
            .filter(|o| o.fate != Fate::Unknown)
            .cloned()
            .collect();
        let before = replay(&acked).is_some();
        let after = match ops.last() {
            Some(Op {
                fate: Fate::Unknown,
                write,
            }) => !matches!(write, Write::Delete { .. }),
            _ => before,
        };
        min += (before && after) as i64;
        max += (before || after) as i64;
    }
    let count = kv
        .range(RangeRequest {
            key: b"r".to_vec(),
            range_end: b"s".to_vec(),
            count_only: true,
            revision,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().count)
        .unwrap_or(-1);
    if count != listing.len() as i64 || !(min..=max).contains(&count) {
        errors.push(format!(
            "count {count} (listing {}) outside what the model allows: {min}..={max}",
            listing.len()
        ));
    }

    // Every key the store has must be one we wrote.
    for key in store.keys() {
        if !model.by_key.contains_key(key) {
            errors.push(format!("key {key:?} in the store was never written"));
        }
    }

    // Each key: its settled state, or the acknowledged state, or (with an unanswered last write)
    // the state after it. Values carry their own checksum.
    let mut newly_settled: Vec<(String, Option<Expected>)> = Vec::new();
    let mut unknown_applied: HashMap<String, bool> = HashMap::new(); // pair `a` key -> applied
    for (key, ops) in &model.by_key {
        let got_kv = store.get(key).copied();
        if let Some(kv) = got_kv {
            let names = match ops.last().map(|o| &o.write) {
                // Pair values name the pair's `a` key.
                Some(Write::Pair { a, .. }) => a.as_bytes(),
                _ => key.as_bytes(),
            };
            if !value_is_intact(names, &kv.value) {
                errors.push(format!(
                    "{key}: value is damaged ({} bytes)",
                    kv.value.len()
                ));
            }
        }
        let got = observed(got_kv);
        if let Some(want) = model.settled.get(key) {
            if &got != want {
                errors.push(format!(
                    "{key}: was {want:?} at an earlier check, now {got:?}"
                ));
            }
            continue;
        }
        let acked: Vec<Op> = ops
            .iter()
            .filter(|o| o.fate != Fate::Unknown)
            .cloned()
            .collect();
        let before = replay(&acked);
        let last_unknown = ops.last().filter(|o| o.fate == Fate::Unknown);
        let ok = match last_unknown {
            None => {
                if got != before {
                    errors.push(format!(
                        "{key}: acknowledged state {before:?}, store has {got:?} (ops: {:?})",
                        ops.iter().map(|o| o.fate).collect::<Vec<_>>()
                    ));
                }
                true
            }
            Some(unknown) => {
                let applied = match (&unknown.write, &got, &before) {
                    (Write::Delete { .. }, None, _) => Some(true),
                    (Write::Delete { .. }, Some(_), _) => (got == before).then_some(false),
                    (Write::Put { value, .. } | Write::Pair { value, .. }, Some(g), _)
                        if g.value == *value =>
                    {
                        let last_acked = before.as_ref().map_or(0, |b| b.mod_revision);
                        let shape_ok = g.mod_revision > last_acked
                            && g.mod_revision <= revision
                            && g.version == before.as_ref().map_or(1, |b| b.version + 1)
                            && g.create_revision
                                == before
                                    .as_ref()
                                    .map_or(g.mod_revision, |b| b.create_revision);
                        shape_ok.then_some(true)
                    }
                    (_, _, _) => (got == before).then_some(false),
                };
                match applied {
                    Some(applied) => {
                        if let Write::Pair { a, .. } = &unknown.write {
                            if let Some(other) = unknown_applied.insert(a.clone(), applied) {
                                if other != applied {
                                    errors.push(format!(
                                        "txn pair {a}: one key applied, the other not (not atomic)"
                                    ));
                                }
                            }
                        }
                        if applied && !matches!(&unknown.write, Write::Pair { b, .. } if b == key) {
                            // A pair counts once (at its `a` key).
                            model.applied_unknown += 1;
                        }
                        true
                    }
                    None => {
                        errors.push(format!(
                            "{key}: store has {got:?}; acknowledged state {before:?}, unanswered last \
                             write {:?} — neither",
                            unknown.write
                        ));
                        false
                    }
                }
            }
        };
        if ok {
            newly_settled.push((key.clone(), got));
        }
    }

    // Txn pairs: both keys or neither, at one revision.
    for ops in model.by_key.values() {
        for op in ops {
            if let Write::Pair { a, b, .. } = &op.write {
                let (ga, gb) = (store.get(a), store.get(b));
                match (ga, gb) {
                    (Some(x), Some(y))
                        if x.mod_revision == y.mod_revision && x.value == y.value => {}
                    (None, None) if op.fate == Fate::Unknown => {}
                    _ => errors.push(format!(
                        "txn pair {a} / {b} ({:?}): a = {:?}, b = {:?}",
                        op.fate,
                        ga.map(|k| k.mod_revision),
                        gb.map(|k| k.mod_revision)
                    )),
                }
            }
        }
    }

    // The revision, exactly: one per acknowledged write, one per unanswered write found applied.
    let expected = base_revision + model.acked_writes + model.applied_unknown + model.extra_writes;
    if revision != expected {
        errors.push(format!(
            "store revision {revision}, but the writes account for {expected} (base {base_revision} + \
             {} acknowledged + {} unanswered-but-applied + {} other)",
            model.acked_writes, model.applied_unknown, model.extra_writes
        ));
    }

    for (key, state) in newly_settled {
        model.settled.insert(key, state);
    }

    // History: a sample of acknowledged writes read back at their own revision (and just before
    // a delete).
    let sample: Vec<(String, i64, Option<u64>)> = (0..40)
        .filter_map(|_| {
            model
                .history
                .get(rng.random_range(0..model.history.len().max(1)))
                .cloned()
        })
        .collect();
    for (key, rev, want) in sample {
        match get_at(kv, key.as_bytes(), rev).await {
            Ok(kv) => {
                let got = kv.as_ref().map(|k| (fnv64(&k.value), k.mod_revision));
                let ok = match (want, got) {
                    (None, None) => true,
                    (Some(v), Some((g, m))) => v == g && m == rev,
                    _ => false,
                };
                if !ok {
                    errors.push(format!(
                        "history: {key} at revision {rev}: expected {}, got {:?}",
                        if want.is_some() {
                            "the value written at that revision"
                        } else {
                            "no key"
                        },
                        kv.map(|k| (k.mod_revision, k.value.len()))
                    ));
                }
            }
            Err(s) => errors.push(format!("history: range {key} at revision {rev}: {s}")),
        }
    }
    if !errors.is_empty() {
        errors.insert(
            0,
            format!("after round {round} (store revision {revision}):"),
        );
    }
    errors
}

/// One round: writers until enough is acknowledged, a random delay, SIGKILL.
async fn write_round(
    server: &mut Server,
    round: usize,
    rng: &mut StdRng,
) -> (Vec<TaskLog>, usize, Duration) {
    let url = server.client_url();
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(kv_client(&url).await);
    }
    let progress = Arc::new(Progress::default());
    let tasks: Vec<_> = (0..WRITERS)
        .map(|t| {
            tokio::spawn(writer(
                clients[t % CONNECTIONS].clone(),
                round,
                t,
                rng.next_u64(),
                progress.clone(),
            ))
        })
        .collect();
    let started = Instant::now();
    while progress.acked.load(Ordering::SeqCst) < MIN_ACKED_PER_ROUND
        || progress.bytes.load(Ordering::Relaxed) < MIN_BYTES_PER_ROUND
    {
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "round {round}: only {} writes / {} bytes acknowledged in 40 s",
            progress.acked.load(Ordering::SeqCst),
            progress.bytes.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(rng.random_range(50..=500))).await;
    progress.killed.store(true, Ordering::SeqCst);
    let in_flight = progress.in_flight.load(Ordering::SeqCst);
    server.kill();
    let elapsed = started.elapsed();
    let mut logs = Vec::new();
    for t in tasks {
        logs.push(
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("a writer did not notice the kill within 60 s")
                .expect("writer task panicked"),
        );
    }
    (logs, in_flight, elapsed)
}

#[test]
fn kill9_during_concurrent_writes_loses_no_acknowledged_write() {
    let _serial = serial();
    let seed = std::env::var("BALLAST_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
    eprintln!("kill9 test seed: {seed} (BALLAST_CRASH_SEED={seed} replays the choices)");
    let mut rng = StdRng::seed_from_u64(seed);
    let rt = runtime();
    let mut server = ballast_with(&["--snapshot-count", &SNAPSHOT_COUNT.to_string()]);
    let base_revision =
        rt.block_on(async { current_revision(&mut kv_client(&server.client_url()).await).await });
    let mut model = Model::default();
    let mut snapshots_before = 0usize;
    let test_started = Instant::now();
    for round in 0..ROUNDS {
        let (logs, in_flight, elapsed) = rt.block_on(write_round(&mut server, round, &mut rng));
        let mut acked = 0;
        let mut unknown = 0;
        let mut anomalies = Vec::new();
        for log in &logs {
            for op in &log.ops {
                model.add(op);
                match op.fate {
                    Fate::Acked(rev) => {
                        acked += 1;
                        match &op.write {
                            Write::Put { key, value } => {
                                model.history.push((key.clone(), rev, Some(*value)))
                            }
                            Write::Pair { a, value, .. } => {
                                model.history.push((a.clone(), rev, Some(*value)))
                            }
                            Write::Delete { key } => model.history.push((key.clone(), rev, None)),
                        }
                    }
                    Fate::Unknown => unknown += 1,
                }
            }
            anomalies.extend(log.anomalies.iter().cloned());
            if let Some(e) = &log.early_error {
                eprintln!("round {round}: a writer failed before the kill: {e}");
            }
        }
        assert!(
            anomalies.is_empty(),
            "round {round}: answers contradict the model:\n{}",
            anomalies.join("\n")
        );
        assert!(
            in_flight > 0,
            "round {round}: no write was in flight at the kill"
        );

        restart(&mut server, &format!("after the SIGKILL of round {round}"));
        let errors = rt.block_on(async {
            let mut kv = kv_client(&server.client_url()).await;
            let errors = verify(&mut kv, &mut model, base_revision, round, &mut rng).await;
            // The store takes new writes at the next revision.
            let before = current_revision(&mut kv).await;
            let rev = put(&mut kv, format!("after/{round}").as_bytes(), b"x")
                .await
                .unwrap_or_else(|s| panic!("put after restart: {s}"));
            model.extra_writes += 1;
            assert_eq!(
                rev,
                before + 1,
                "the first write after the restart did not get the next revision"
            );
            errors
        });
        let snapshots = log_events(&server, LOG_SNAPSHOT);
        let this_round = snapshots.len() - snapshots_before;
        snapshots_before = snapshots.len();
        eprintln!(
            "round {round}: {acked} acknowledged, {unknown} unanswered ({in_flight} in flight at the kill), \
             killed after {elapsed:?}; {this_round} raft snapshots this round; store revision {}",
            base_revision + model.acked_writes + model.applied_unknown + model.extra_writes
        );
        assert!(errors.is_empty(), "{}", errors.join("\n"));
        assert!(
            this_round >= 1,
            "round {round}: {acked} writes but no raft snapshot (--snapshot-count {SNAPSHOT_COUNT})"
        );
    }
    let snapshots = log_events(&server, LOG_SNAPSHOT);
    let purged: u64 = snapshots
        .iter()
        .filter_map(|e| e.get("removed_segments").and_then(|v| v.as_u64()))
        .sum();
    let segments = wal_segments(server.data_dir()).len();
    eprintln!(
        "{} raft snapshots, {purged} WAL segments purged, {segments} segments left; {:?} in all",
        snapshots.len(),
        test_started.elapsed()
    );
    assert!(
        purged > 0,
        "the WAL never purged a segment: raise MIN_BYTES_PER_ROUND"
    );
}

// ------------------------------------------------------------------------------------------------
// Clean stop
// ------------------------------------------------------------------------------------------------

#[test]
fn restart_after_clean_stop_keeps_everything() {
    let _serial = serial();
    let rt = runtime();
    let mut server = ballast_with(&["--snapshot-count", "300"]);
    let mut rng = StdRng::seed_from_u64(7);
    let (revision, dump, history) = rt.block_on(async {
        let mut kv = kv_client(&server.client_url()).await;
        let mut history = Vec::new();
        for i in 0..1000u32 {
            let key = format!("c/{:04}", rng.random_range(0..400));
            match i % 10 {
                0 => {
                    kv.delete_range(DeleteRangeRequest {
                        key: key.into_bytes(),
                        ..Default::default()
                    })
                    .await
                    .expect("delete");
                }
                1 => {
                    let v = make_value(&mut rng, "c/pair", 64);
                    kv.txn(TxnRequest {
                        success: vec![
                            put_op(&format!("{key}/a"), &v),
                            put_op(&format!("{key}/b"), &v),
                        ],
                        ..Default::default()
                    })
                    .await
                    .expect("txn");
                }
                _ => {
                    let size = rng.random_range(10..2000);
                    let v = make_value(&mut rng, &key, size);
                    put(&mut kv, key.as_bytes(), &v).await.expect("put");
                }
            }
            if i % 100 == 50 {
                let rev = current_revision(&mut kv).await;
                history.push((rev, list(&mut kv, b"c/", b"c0", rev).await.1));
            }
        }
        let (revision, dump) = list(&mut kv, b"c/", b"c0", 0).await;
        (revision, dump, history)
    });
    let status = server.stop().expect("server was running");
    assert!(status.success(), "SIGTERM: ballast exited with {status}");
    restart(&mut server, "after a clean stop");
    rt.block_on(async {
        let mut kv = kv_client(&server.client_url()).await;
        assert_eq!(
            current_revision(&mut kv).await,
            revision,
            "revision changed across a clean restart"
        );
        let (_, after) = list(&mut kv, b"c/", b"c0", 0).await;
        assert!(
            after == dump,
            "store differs after a clean restart ({} keys before, {} after)",
            dump.len(),
            after.len()
        );
        for (rev, before) in &history {
            let (_, at) = list(&mut kv, b"c/", b"c0", *rev).await;
            assert!(
                &at == before,
                "history at revision {rev} differs after a clean restart"
            );
        }
        let rev = put(&mut kv, b"c/after", b"x")
            .await
            .expect("put after restart");
        assert_eq!(rev, revision + 1);
    });
    // A clean stop leaves the backend durable at the last applied index: nothing to replay.
    if let Some(start) = log_events(&server, "member starting").last() {
        eprintln!(
            "after the clean stop: applied_index {}, wal_last_index {}",
            start["applied_index"], start["wal_last_index"]
        );
    }
}

/// Raft snapshots purge WAL segments that only hold entries before the snapshot; the member must
/// restart from what is left. WAL segments are 64 MiB, so this writes 64 KiB values with
/// `--snapshot-count 100` until the log reports a purged segment, then stops and restarts
/// (cleanly, and once more after a SIGKILL).
#[test]
fn restart_after_wal_segments_were_purged() {
    let _serial = serial();
    let rt = runtime();
    let mut server = ballast_with(&["--snapshot-count", "100"]);
    let mut rng = StdRng::seed_from_u64(5);
    let purged = |server: &Server| -> u64 {
        log_events(server, LOG_SNAPSHOT)
            .iter()
            .filter_map(|e| e.get("removed_segments").and_then(|v| v.as_u64()))
            .sum()
    };
    let mut written: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    let mut i = 0u32;
    while purged(&server) == 0 {
        assert!(i < 4000, "no WAL segment purged after {i} writes of 64 KiB");
        let batch: Vec<(Vec<u8>, Vec<u8>)> = (0..100)
            .map(|_| {
                i += 1;
                let key = format!("w/{:03}", i % 700);
                (
                    key.clone().into_bytes(),
                    make_value(&mut rng, &key, 64 << 10),
                )
            })
            .collect();
        let url = server.client_url();
        rt.block_on(async {
            let mut clients = Vec::new();
            for _ in 0..4 {
                clients.push(kv_client(&url).await);
            }
            let puts = batch
                .chunks(25)
                .zip(clients)
                .map(|(chunk, mut kv)| async move {
                    for (k, v) in chunk {
                        put(&mut kv, k, v).await.expect("put");
                    }
                });
            futures::future::join_all(puts).await;
        });
        written.extend(batch.into_iter().map(|(k, v)| (k, fnv64(&v))));
    }
    let revision =
        rt.block_on(async { current_revision(&mut kv_client(&server.client_url()).await).await });
    eprintln!(
        "{i} writes of 64 KiB, {} segments purged, {} left; store revision {revision}",
        purged(&server),
        wal_segments(server.data_dir()).len()
    );
    let check = |server: &Server, when: &str| {
        rt.block_on(async {
            let mut kv = kv_client(&server.client_url()).await;
            let (rev, got) = list(&mut kv, b"w/", b"w0", 0).await;
            assert_eq!(rev, revision, "{when}: store revision changed");
            let got: BTreeMap<Vec<u8>, u64> = got
                .into_iter()
                .map(|kv| (kv.key, fnv64(&kv.value)))
                .collect();
            assert!(got == written, "{when}: data differs from what was written");
        });
    };
    let status = server.stop().expect("running");
    assert!(status.success(), "SIGTERM: exited with {status}");
    restart(&mut server, "after a clean stop that followed a WAL purge");
    check(&server, "after a clean stop");
    server.kill();
    restart(&mut server, "after a SIGKILL that followed a WAL purge");
    check(&server, "after a SIGKILL");
}

// ------------------------------------------------------------------------------------------------
// Torn WAL tail
// ------------------------------------------------------------------------------------------------

const WAL_HEADER_LEN: usize = 16;
const WAL_LEN_MASK: u32 = 0x7fff_ffff;

/// The `*.wal` segments of a data dir, oldest first.
fn wal_segments(data_dir: &Path) -> Vec<PathBuf> {
    let dir = data_dir.join("member").join("wal");
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segs.sort(); // `{seq:016x}-{first_index:016x}.wal`: name order is seq order
    segs
}

fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Offset just past the last valid frame of a segment (frames: `len_word u32 | crc u32 | body`,
/// padded to 8 bytes, CRC32C over body + len_word; a zero len_word ends the data).
fn end_of_valid_frames(seg: &[u8]) -> usize {
    assert!(
        seg.len() >= WAL_HEADER_LEN && &seg[..4] == b"BWAL",
        "not a WAL segment"
    );
    let mut at = WAL_HEADER_LEN;
    while at + 8 <= seg.len() {
        let len_word = u32::from_le_bytes(seg[at..at + 4].try_into().expect("4 bytes"));
        let len = (len_word & WAL_LEN_MASK) as usize;
        if len == 0 || at + 8 + len > seg.len() {
            break;
        }
        let crc = u32::from_le_bytes(seg[at + 4..at + 8].try_into().expect("4 bytes"));
        let mut covered = seg[at + 8..at + 8 + len].to_vec();
        covered.extend_from_slice(&len_word.to_le_bytes());
        if crc32c(&covered) != crc {
            break;
        }
        at += (8 + len).div_ceil(8) * 8;
    }
    at
}

/// Three shapes of a write torn by a crash, each placed after the last valid frame.
#[derive(Debug, Clone, Copy)]
enum Tear {
    /// Random bytes where the preallocated zeros were: no crash leaves that (unwritten space
    /// reads as zeros), so it is corruption, not a torn tail.
    GarbageInZeroArea,
    /// A frame header claiming a longer body than was written, then zeros.
    HalfWrittenFrame,
    /// The file ends inside a partly written frame (no preallocated space after it).
    FileCutInsideFrame,
}

/// Damage the newest segment after its last valid frame; the offset damaged.
fn tear_wal(data_dir: &Path, tear: Tear, rng: &mut StdRng) -> (PathBuf, usize) {
    let path = wal_segments(data_dir).pop().expect("a WAL segment");
    let mut data = Vec::new();
    File::open(&path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let end = end_of_valid_frames(&data);
    let mut f = OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open segment");
    match tear {
        Tear::GarbageInZeroArea => {
            let mut junk = vec![0u8; 300];
            rng.fill_bytes(&mut junk);
            junk[0] |= 1; // never a zero length word
            f.seek(SeekFrom::Start(end as u64)).expect("seek");
            f.write_all(&junk).expect("write");
        }
        Tear::HalfWrittenFrame | Tear::FileCutInsideFrame => {
            let len: u32 = 4000;
            let mut frame = (len | (1 << 31)).to_le_bytes().to_vec(); // SYNC-flagged
            frame.extend_from_slice(&rng.next_u32().to_le_bytes()); // a CRC that cannot match
            let mut body = vec![0u8; 1500];
            rng.fill_bytes(&mut body);
            frame.extend_from_slice(&body);
            f.seek(SeekFrom::Start(end as u64)).expect("seek");
            f.write_all(&frame).expect("write");
            if let Tear::FileCutInsideFrame = tear {
                f.set_len((end + frame.len() - 7) as u64).expect("truncate");
            }
        }
    }
    f.sync_all().expect("sync");
    (path, end)
}

#[test]
fn torn_wal_tail_is_repaired_on_restart() {
    let _serial = serial();
    let rt = runtime();
    let mut server = ballast_with(&[]);
    let mut rng = StdRng::seed_from_u64(11);
    let mut acked: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let write_batch =
        |server: &Server, acked: &mut BTreeMap<Vec<u8>, Vec<u8>>, rng: &mut StdRng, tag: &str| {
            let url = server.client_url();
            let batch: Vec<(Vec<u8>, Vec<u8>)> = (0..150)
                .map(|i| {
                    let key = format!("t/{tag}/{i:03}");
                    let size = rng.random_range(20..3000);
                    (key.clone().into_bytes(), make_value(rng, &key, size))
                })
                .collect();
            rt.block_on(async {
                let mut kv = kv_client(&url).await;
                for (k, v) in &batch {
                    put(&mut kv, k, v).await.expect("put");
                }
            });
            acked.extend(batch);
        };
    let check = |server: &Server, acked: &BTreeMap<Vec<u8>, Vec<u8>>, when: &str| {
        let url = server.client_url();
        let got = rt.block_on(async { list(&mut kv_client(&url).await, b"t/", b"t0", 0).await.1 });
        let got: BTreeMap<Vec<u8>, Vec<u8>> =
            got.into_iter().map(|kv| (kv.key, kv.value)).collect();
        let missing: Vec<String> = acked
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(*v))
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .collect();
        assert!(
            missing.is_empty() && got.len() == acked.len(),
            "{when}: {} acknowledged keys missing or wrong (e.g. {:?}); {} keys in the store, {} acknowledged",
            missing.len(),
            missing.first(),
            got.len(),
            acked.len()
        );
    };
    let repairs = |server: &Server| {
        std::fs::read_to_string(server.log_path())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("torn tail"))
            .count()
    };
    for (i, tear) in [Tear::HalfWrittenFrame, Tear::FileCutInsideFrame]
        .into_iter()
        .enumerate()
    {
        write_batch(&server, &mut acked, &mut rng, &format!("{i}"));
        server.kill();
        let (seg, at) = tear_wal(server.data_dir(), tear, &mut rng);
        let repairs_before = repairs(&server);
        eprintln!("{tear:?}: damaged {} after offset {at}", seg.display());
        restart(&mut server, &format!("after {tear:?}"));
        check(&server, &acked, &format!("after {tear:?}"));
        assert!(
            repairs(&server) > repairs_before,
            "{tear:?}: the server started without reporting a torn-tail repair"
        );
        // The repaired log takes new records, and they survive the next crash.
        write_batch(&server, &mut acked, &mut rng, &format!("{i}-after"));
        server.kill();
        restart(
            &mut server,
            &format!("after {tear:?}, more writes and another kill"),
        );
        check(
            &server,
            &acked,
            &format!("after {tear:?}, more writes and another kill"),
        );
    }
}

/// Bytes after the last record that no crash can leave (random junk in the preallocated,
/// zero-filled space) are corruption: the member refuses to start, naming the segment, the
/// offset and the recovery document, and starts again once the damage is undone.
#[test]
fn garbage_after_the_last_wal_record_refuses_to_start() {
    let _serial = serial();
    let rt = runtime();
    let mut server = ballast_with(&[]);
    let url = server.client_url();
    rt.block_on(async {
        let mut kv = kv_client(&url).await;
        for i in 0..50 {
            put(&mut kv, format!("g/{i:02}").as_bytes(), b"v")
                .await
                .expect("put");
        }
    });
    server.kill();
    let mut rng = StdRng::seed_from_u64(12);
    let original: Vec<u8> = {
        let path = wal_segments(server.data_dir())
            .pop()
            .expect("a WAL segment");
        std::fs::read(&path).expect("read segment")
    };
    let (seg, at) = tear_wal(server.data_dir(), Tear::GarbageInZeroArea, &mut rng);
    server.spawn_without_wait();
    let status = server.wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| !s.success()),
        "a member with junk after its last WAL record must refuse to start (exit {status:?})"
    );
    let log = std::fs::read_to_string(server.log_path()).unwrap_or_default();
    let name = seg
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("?")
        .to_string();
    assert!(
        log.lines()
            .any(|l| l.contains(&name) && l.contains("recovery.md")),
        "the refusal names the segment {name} (offset {at}) and docs/recovery.md; log tail:\n{}",
        server.log_tail(10)
    );
    // Undo the damage: the member starts with every write.
    std::fs::write(&seg, &original).expect("restore segment");
    restart(&mut server, "after the segment was restored");
    let got = rt.block_on(async {
        list(&mut kv_client(&server.client_url()).await, b"g/", b"g0", 0)
            .await
            .1
    });
    assert_eq!(got.len(), 50);
}

// ------------------------------------------------------------------------------------------------
// Data dir in use
// ------------------------------------------------------------------------------------------------

/// A second Ballast process, killed on drop.
struct SecondProcess(Child);

impl Drop for SecondProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn data_dir_in_use_is_refused() {
    let _serial = serial();
    let rt = runtime();
    let mut server = ballast_with(&[]);
    let url = server.client_url();
    let mut rng = StdRng::seed_from_u64(3);
    let data: Vec<(Vec<u8>, Vec<u8>)> = (0..100)
        .map(|i| {
            let key = format!("d/{i:03}");
            (key.clone().into_bytes(), make_value(&mut rng, &key, 500))
        })
        .collect();
    let revision = rt.block_on(async {
        let mut kv = kv_client(&url).await;
        for (k, v) in &data {
            put(&mut kv, k, v).await.expect("put");
        }
        current_revision(&mut kv).await
    });

    // Same data dir, different ports (so it is the data dir, not a port, that must stop it).
    let (client, peer) = (free_port(), free_port());
    let (client, peer) = (
        format!("http://127.0.0.1:{client}"),
        format!("http://127.0.0.1:{peer}"),
    );
    let mut cmd = Command::new(ballast_binary());
    cmd.arg("--name")
        .arg("n1")
        .arg("--data-dir")
        .arg(server.data_dir())
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .arg("--initial-cluster")
        .arg(format!("n1={peer}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ETCD") {
            cmd.env_remove(key);
        }
    }
    let mut second = SecondProcess(cmd.spawn().expect("spawn a second ballast"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = second.0.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut output = String::new();
    if status.is_some() {
        let _ = second
            .0
            .stdout
            .take()
            .map(|mut o| o.read_to_string(&mut output));
        let _ = second
            .0
            .stderr
            .take()
            .map(|mut e| e.read_to_string(&mut output));
    }
    let status = status.unwrap_or_else(|| {
        panic!("a second ballast on the same data dir was still running after 20 s (it must refuse to start)")
    });
    eprintln!("second process: {status}; output:\n{output}");
    assert!(
        !status.success(),
        "a second ballast on the same data dir exited successfully"
    );
    let lower = output.to_lowercase();
    assert!(
        ["lock", "in use", "already open", "already in use"]
            .iter()
            .any(|w| lower.contains(w)),
        "the second process's error does not say the data dir is in use:\n{output}"
    );
    drop(second);

    // The first one still serves, with its data intact, and restarts with it intact.
    for when in ["while running", "after a restart"] {
        if when == "after a restart" {
            server.kill();
            restart(&mut server, "after the refused second process");
        }
        rt.block_on(async {
            let mut kv = kv_client(&server.client_url()).await;
            let (rev, got) = list(&mut kv, b"d/", b"d0", 0).await;
            assert_eq!(rev, revision, "{when}: revision changed");
            let got: Vec<(Vec<u8>, Vec<u8>)> =
                got.into_iter().map(|kv| (kv.key, kv.value)).collect();
            assert!(got == data, "{when}: the first server's data changed");
        });
    }
    assert!(server.is_running());
}
