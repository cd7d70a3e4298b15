//! Power-loss simulation of a whole member: the WAL and the backend run over simulated disks
//! (`ballast_wal::sim::SimDisk`, `ballast_mvcc::sim::SimDisk`) that keep written-but-unsynced
//! data apart from fsync'd data, through [`Member::start_with_storage`]. `kill -9` keeps the page
//! cache and cannot prove where the fsyncs are; this test drops what was not synced.
//!
//! Each seed runs a few rounds over the same pair of disks. A round:
//! 1. starts a member over the disks (fresh, or the images the last crash left): it must start;
//! 2. after a crash, reads everything back (linearizable range over all keys, lessor) and checks
//!    it against the model of the last round (below); then a probe put must be acknowledged
//!    (the member takes writes after a crash);
//! 3. runs concurrent clients (tokio tasks), each doing a serial stream of puts, deletes,
//!    multi-put txns, lease grants and puts attached to their leases, on keys of its own, and
//!    stopping at its first error; meanwhile the storage is cut at a random point: the WAL disk
//!    dies after N more operations, or the backend disk does, or power goes on both at once
//!    (after N operations in all), or either disk fills up (ENOSPC), or either disk dies
//!    while the member is starting, or nothing fails until the clients are done (and the
//!    member may stop cleanly before the power goes);
//! 4. kills both disks, stops the member, and crashes both disks with seeded random subsets of
//!    the unsynced sectors (`crash(seed)`: all kept, none, random, or a prefix).
//!
//! The checks, after every crash: every acknowledged write is there with its value, mod
//! revision and lease; for each client only its one request in flight may be applied or not,
//! and all of it or nothing (a txn's puts all present or all absent, sharing one revision); no
//! key is there that no client wrote; keys of earlier rounds are exactly as the last check saw
//! them; the store revision never goes backwards and equals the revision before the round plus
//! the number of revision-bumping requests applied (nothing applied unseen, nothing counted twice);
//! acknowledged leases exist. WAL segments are small (they roll over) and `snapshot_count` is
//! small for some seeds (raft snapshots, durable backend commits and WAL purges happen).
//!
//! Run (release; the `sim` features come from ballast-server's dev-dependencies, so a plain
//! `cargo test --release -p ballast-server` runs it too):
//! `cargo test --release -p ballast-server --test power_loss -- --nocapture`.
//! `BALLAST_SEED=<n>` replays seed `n` (printed on failure); `BALLAST_POWER_LOSS_SECS` sets the
//! time budget (default 60 s); `BALLAST_POWER_LOSS_ITERS` runs exactly that many seeds instead;
//! seeds count up from 1, or from `BALLAST_POWER_LOSS_FIRST_SEED`.
//! A seed fixes every random choice (workload, cut point, crash patterns), but the interleaving
//! of the clients and the member's threads is up to the scheduler, so a replay is close to the
//! failing run, not identical to it. `BALLAST_POWER_LOSS_DEBUG=1` prints each seed's rounds and
//! what every restarted member holds.
//!
//! Known gap: a crash while the very first start creates the backend file is left out (see
//! `a_crash_while_the_backend_is_first_created_leaves_it_openable`, ignored: it fails today);
//! `BALLAST_POWER_LOSS_FIRST_CREATE=1` puts it back in.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_mvcc::{Store, StoreOptions};
use ballast_proto::etcdserverpb::{
    request_op, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};
use ballast_server::member::{Member, MemberStorage};
use ballast_server::ServerConfig;
use ballast_wal::sim::{SimDisk as WalDisk, SimRng};
use ballast_wal::WalOptions;

type DbDisk = ballast_mvcc::sim::SimDisk;

/// A key's value as the model knows it: value, mod revision (None: not known, the write was
/// not acknowledged), lease.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Val {
    value: Vec<u8>,
    mod_rev: Option<i64>,
    lease: i64,
}

/// One client request.
#[derive(Clone, Debug)]
enum Req {
    /// Puts (one for a Put, several for a Txn), applied at one revision.
    Puts(Vec<(Vec<u8>, Vec<u8>, i64)>, bool),
    Delete(Vec<u8>),
    Grant(i64),
}

impl Req {
    /// Whether applying it makes a new revision (a delete only targets a key that exists).
    fn bumps(&self) -> bool {
        !matches!(self, Req::Grant(_))
    }
}

/// What a client did: its acknowledged requests in order (with their revisions), then at most
/// one request whose outcome is unknown (it returned an error).
#[derive(Debug, Default)]
struct ClientLog {
    acked: Vec<(Req, i64)>,
    unknown: Option<Req>,
}

/// The model of what the disks must hold once a round ends.
#[derive(Debug, Default, Clone)]
struct Model {
    /// Keys from before this round, exactly as the last check (or probe) saw them.
    base: BTreeMap<Vec<u8>, Val>,
    base_leases: BTreeSet<i64>,
    /// The store revision before this round's clients ran (after the probe).
    base_rev: i64,
}

fn cfg(snapshot_count: u64) -> ServerConfig {
    ServerConfig {
        data_dir: PathBuf::from("/sim"),
        snapshot_count,
        heartbeat_interval: Duration::from_millis(10),
        election_timeout: Duration::from_millis(100),
        ..ServerConfig::default()
    }
}

fn start(
    wal: &WalDisk,
    db: &DbDisk,
    snapshot_count: u64,
    segment_size: u64,
) -> Result<Arc<Member>, String> {
    let store = Store::open_with_backend("sim-db", db.clone(), StoreOptions::default())
        .map_err(|e| format!("open backend: {e}"))?;
    Member::start_with_storage(
        cfg(snapshot_count),
        MemberStorage {
            backend: store,
            wal_fs: Arc::new(wal.clone()),
            wal_options: WalOptions { segment_size },
        },
    )
}

fn put_req(key: &[u8], value: &[u8], lease: i64) -> PutRequest {
    PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        lease,
        ..Default::default()
    }
}

/// Sends one request; Ok(revision) if acknowledged.
async fn send(m: &Member, req: &Req) -> Result<i64, String> {
    let rev =
        |h: Option<ballast_proto::etcdserverpb::ResponseHeader>| h.map(|h| h.revision).unwrap_or(0);
    match req {
        Req::Puts(puts, false) => {
            let (k, v, l) = &puts[0];
            m.kv_put(put_req(k, v, *l))
                .await
                .map(|r| rev(r.header))
                .map_err(|e| e.to_string())
        }
        Req::Puts(puts, true) => {
            let success = puts
                .iter()
                .map(|(k, v, l)| RequestOp {
                    request: Some(request_op::Request::RequestPut(put_req(k, v, *l))),
                })
                .collect();
            let r = m
                .kv_txn(TxnRequest {
                    success,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            if !r.succeeded {
                return Err("txn without compares did not succeed".into());
            }
            Ok(rev(r.header))
        }
        Req::Delete(k) => {
            let r = m
                .kv_delete(DeleteRangeRequest {
                    key: k.clone(),
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            if r.deleted != 1 {
                return Err(format!("delete of a live key deleted {}", r.deleted));
            }
            Ok(rev(r.header))
        }
        Req::Grant(id) => m
            .lease_grant(LeaseGrantRequest { ttl: 3600, id: *id })
            .await
            .map(|r| rev(r.header))
            .map_err(|e| e.to_string()),
    }
}

/// Applies a request to a client's key view (`rev`: the revision, if known).
fn apply(
    view: &mut BTreeMap<Vec<u8>, Val>,
    leases: &mut BTreeSet<i64>,
    req: &Req,
    rev: Option<i64>,
) {
    match req {
        Req::Puts(puts, _) => {
            for (k, v, l) in puts {
                view.insert(
                    k.clone(),
                    Val {
                        value: v.clone(),
                        mod_rev: rev,
                        lease: *l,
                    },
                );
            }
        }
        Req::Delete(k) => {
            view.remove(k);
        }
        Req::Grant(id) => {
            leases.insert(*id);
        }
    }
}

/// One client: a serial stream of requests on keys `r{round}c{client}/...`, until its first
/// error or `n` requests.
async fn client(m: Arc<Member>, round: u32, id: u32, seed: u64, n: u32) -> ClientLog {
    let mut rng = SimRng::new(seed);
    let mut log = ClientLog::default();
    let mut live: Vec<Vec<u8>> = Vec::new();
    let mut leases: Vec<i64> = Vec::new();
    let mut next_key = 0u32;
    let value = |rng: &mut SimRng, k: u32| {
        // Sizes from tiny to a few sectors, so that writes straddle sector boundaries.
        let len = [8, 100, 700, 2000][rng.below(4) as usize] + rng.below(64) as usize;
        let mut v = format!("r{round}c{id}v{k}:").into_bytes();
        let fill = (rng.next_u64() % 26) as u8 + b'a';
        v.resize(len, fill);
        v
    };
    for _ in 0..n {
        let dice = rng.below(100);
        let req = if dice < 15 && !live.is_empty() {
            let i = rng.below(live.len() as u64) as usize;
            Req::Delete(live[i].clone())
        } else if dice < 22 {
            Req::Grant(
                ((seed as i64 & 0xffff) << 24
                    | (round as i64) << 16
                    | (id as i64) << 8
                    | leases.len() as i64)
                    + 1,
            )
        } else {
            let puts = if dice < 40 { 2 + rng.below(3) } else { 1 };
            let lease = if !leases.is_empty() && rng.below(4) == 0 {
                leases[rng.below(leases.len() as u64) as usize]
            } else {
                0
            };
            let mut v = Vec::new();
            for _ in 0..puts {
                // Mostly new keys, sometimes an overwrite of a live one.
                let key = if !live.is_empty() && rng.below(5) == 0 {
                    live[rng.below(live.len() as u64) as usize].clone()
                } else {
                    next_key += 1;
                    format!("r{round}c{id}/{next_key:05}").into_bytes()
                };
                if v.iter().any(|(k, _, _)| *k == key) {
                    continue;
                }
                let val = value(&mut rng, next_key);
                v.push((key, val, lease));
            }
            Req::Puts(v, puts > 1)
        };
        match send(&m, &req).await {
            Ok(rev) => {
                match &req {
                    Req::Puts(puts, _) => {
                        for (k, _, _) in puts {
                            if !live.contains(k) {
                                live.push(k.clone());
                            }
                        }
                    }
                    Req::Delete(k) => live.retain(|x| x != k),
                    Req::Grant(id) => leases.push(*id),
                }
                log.acked.push((req, rev));
            }
            Err(_) => {
                log.unknown = Some(req);
                break;
            }
        }
    }
    log
}

/// Everything a member holds: all keys, the revision, the leases.
async fn observe(m: &Member) -> Result<(BTreeMap<Vec<u8>, Val>, i64, BTreeSet<i64>), String> {
    let r = m
        .kv_range(&RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        })
        .await
        .map_err(|e| format!("range after restart: {e}"))?;
    let rev = r.header.map(|h| h.revision).unwrap_or(0);
    if std::env::var("BALLAST_POWER_LOSS_DEBUG").is_ok() {
        for kv in &r.kvs {
            eprintln!(
                "  {} create {} mod {} version {} lease {}",
                show(&kv.key),
                kv.create_revision,
                kv.mod_revision,
                kv.version,
                kv.lease
            );
        }
        eprintln!(
            "  revision {rev}, applied index {}",
            m.store.applied_index()
        );
    }
    let kvs = r
        .kvs
        .into_iter()
        .map(|kv| {
            (
                kv.key,
                Val {
                    value: kv.value,
                    mod_rev: Some(kv.mod_revision),
                    lease: kv.lease,
                },
            )
        })
        .collect();
    Ok((kvs, rev, m.lessor.leases().into_iter().collect()))
}

fn show(k: &[u8]) -> String {
    String::from_utf8_lossy(k).into_owned()
}

/// Checks what a restarted member holds against the model and the clients' logs of the round
/// before the crash; returns the new base model and how many requests in flight were applied.
async fn check(
    m: &Member,
    model: &Model,
    logs: &[ClientLog],
    round: u32,
) -> Result<(Model, usize), String> {
    let (kvs, rev, leases) = observe(m).await?;
    let max_acked = logs
        .iter()
        .flat_map(|l| l.acked.iter().map(|(_, r)| *r))
        .max()
        .unwrap_or(0);
    if rev < model.base_rev.max(max_acked) {
        return Err(format!(
            "revision went backwards: {rev} after restart, {} before the round, {max_acked} acknowledged",
            model.base_rev
        ));
    }
    // Keys of earlier rounds: exactly as before.
    for (k, want) in &model.base {
        if kvs.get(k) != Some(want) {
            return Err(format!(
                "key {} of an earlier round changed: {:?} -> {:?}",
                show(k),
                want.mod_rev,
                kvs.get(k).map(|v| v.mod_rev)
            ));
        }
    }
    // Every other key belongs to one of this round's clients (whose keys are checked below).
    let client_prefixes: Vec<Vec<u8>> = (0..logs.len())
        .map(|c| format!("r{round}c{c}/").into_bytes())
        .collect();
    for k in kvs.keys() {
        if !model.base.contains_key(k) && !client_prefixes.iter().any(|p| k.starts_with(p)) {
            return Err(format!("key {} that no client wrote", show(k)));
        }
    }
    for id in &model.base_leases {
        if !leases.contains(id) {
            return Err(format!("lease {id} of an earlier round is gone"));
        }
    }
    let mut applied = 0i64;
    let mut in_flight_applied = 0;
    for (c, log) in logs.iter().enumerate() {
        let prefix = format!("r{round}c{c}/").into_bytes();
        let mut view = BTreeMap::new();
        let mut want_leases = BTreeSet::new();
        for (req, rev) in &log.acked {
            apply(&mut view, &mut want_leases, req, Some(*rev));
        }
        applied += log.acked.iter().filter(|(r, _)| r.bumps()).count() as i64;
        let seen: BTreeMap<Vec<u8>, Val> = kvs
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let seen_leases: BTreeSet<i64> = want_leases
            .iter()
            .chain(log.unknown.iter().filter_map(|r| match r {
                Req::Grant(id) => Some(id),
                _ => None,
            }))
            .filter(|id| leases.contains(id))
            .copied()
            .collect();
        let last_acked = log.acked.last().map(|(_, r)| *r).unwrap_or(model.base_rev);
        if seen == view && seen_leases == want_leases {
            continue; // the unknown request (if any) was not applied
        }
        let Some(unknown) = &log.unknown else {
            return Err(format!(
                "client {c}: state differs from its acknowledged requests ({} acked, no request in flight): {}",
                log.acked.len(),
                diff(&view, &seen)
            ));
        };
        // Then the unknown request must have been applied, all of it, at one revision after
        // the client's last acknowledged one.
        let mut with = view.clone();
        let mut with_leases = want_leases.clone();
        let unknown_rev = match unknown {
            Req::Puts(puts, _) => {
                let revs: BTreeSet<Option<i64>> = puts
                    .iter()
                    .map(|(k, _, _)| seen.get(k).and_then(|v| v.mod_rev))
                    .collect();
                if revs.len() != 1 {
                    return Err(format!(
                        "client {c}: request in flight half applied: {unknown:?} -> revisions {revs:?}"
                    ));
                }
                revs.into_iter().next().flatten()
            }
            _ => None,
        };
        if let Some(r) = unknown_rev {
            if r <= last_acked || r > rev {
                return Err(format!(
                    "client {c}: request in flight applied at revision {r}, not in ({last_acked}, {rev}]"
                ));
            }
        }
        apply(&mut with, &mut with_leases, unknown, unknown_rev);
        if seen != with || seen_leases != with_leases {
            return Err(format!(
                "client {c}: state is neither its acknowledged requests nor those plus the one in flight ({unknown:?}):\n  without: {}\n  with: {}",
                diff(&view, &seen),
                diff(&with, &seen)
            ));
        }
        if unknown.bumps() {
            applied += 1;
        }
        in_flight_applied += 1;
    }
    if rev != model.base_rev + applied {
        return Err(format!(
            "revision {rev} after restart, expected {} before the round + {applied} requests applied",
            model.base_rev
        ));
    }
    let model = Model {
        base: kvs,
        base_leases: leases,
        base_rev: rev,
    };
    Ok((model, in_flight_applied))
}

fn diff(want: &BTreeMap<Vec<u8>, Val>, seen: &BTreeMap<Vec<u8>, Val>) -> String {
    let mut out = Vec::new();
    for (k, v) in want {
        match seen.get(k) {
            None => out.push(format!("{} missing (rev {:?})", show(k), v.mod_rev)),
            Some(s) if s.value != v.value || s.lease != v.lease => {
                out.push(format!("{} has another value", show(k)))
            }
            Some(s) if v.mod_rev.is_some() && s.mod_rev != v.mod_rev => out.push(format!(
                "{} at rev {:?}, want {:?}",
                show(k),
                s.mod_rev,
                v.mod_rev
            )),
            _ => {}
        }
    }
    for k in seen.keys() {
        if !want.contains_key(k) {
            out.push(format!("{} unexpected", show(k)));
        }
    }
    out.truncate(6);
    out.join("; ")
}

/// How the storage is cut in a round.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// The WAL disk dies after N more operations (the member fail-stops on a WAL error).
    Wal(u64),
    /// The backend disk dies after N more operations.
    Backend(u64),
    /// Both disks die together once they did N operations in all (a power cut).
    Power(u64),
    /// One disk dies after N operations of the member's start (true: the WAL).
    AtStart(bool, u64),
    /// The WAL disk (true) or the backend disk fills up: N more bytes fit (ENOSPC).
    Full(bool, u64),
    /// Nothing fails until the clients are done (then the power goes).
    Idle,
    /// The member stops cleanly once the clients are done, then the power goes.
    Stop,
}

fn kill(wal: &WalDisk, db: &DbDisk) {
    wal.die_after(0);
    db.kill();
}

struct Stats {
    rounds: u32,
    acked: usize,
    in_flight: usize,
    in_flight_applied: usize,
}

/// Runs one seed; a failure names what the rounds did.
fn run_seed(seed: u64, rt: &tokio::runtime::Runtime) -> Result<Stats, String> {
    let mut trace = Vec::new();
    let r = run_rounds(seed, rt, &mut trace);
    if std::env::var("BALLAST_POWER_LOSS_DEBUG").is_ok() {
        eprintln!("seed {seed}: {}", trace.join("; "));
    }
    r.map_err(|e| format!("{e}\n  rounds: {}", trace.join("; ")))
}

fn run_rounds(
    seed: u64,
    rt: &tokio::runtime::Runtime,
    trace: &mut Vec<String>,
) -> Result<Stats, String> {
    let mut rng = SimRng::new(seed);
    let snapshot_count = [5, 20, 100, 10_000][rng.below(4) as usize];
    let segment_size = [4096, 16 << 10, 64 << 10][rng.below(3) as usize];
    let rounds = 1 + rng.below(3) as u32;
    trace.push(format!(
        "snapshot_count {snapshot_count}, segment_size {segment_size}"
    ));
    let mut wal = WalDisk::new();
    let mut db = DbDisk::new();
    // An empty store is at revision 1 (etcd's first write makes revision 2).
    let mut model = Model {
        base_rev: 1,
        ..Model::default()
    };
    // The clients' logs of the last round that ran, with its number, until checked.
    let mut last_logs: Option<(u32, Vec<ClientLog>)> = None;
    let mut stats = Stats {
        rounds,
        acked: 0,
        in_flight: 0,
        in_flight_applied: 0,
    };
    for round in 0..=rounds {
        let cut = match rng.below(10) {
            0..=2 => Cut::Wal(rng.below(120)),
            3..=5 => Cut::Backend(rng.below(80)),
            6..=7 => Cut::Power(rng.below(250)),
            8 => Cut::AtStart(rng.coin(), rng.below(80)),
            9 if rng.coin() => match rng.coin() {
                true => Cut::Full(true, rng.below(32 << 10)),
                false => Cut::Full(false, rng.below(256 << 10)),
            },
            _ if rng.coin() => Cut::Stop,
            _ => Cut::Idle,
        };
        let last = round == rounds;
        // A cut while the backend file is first created leaves a file redb refuses (known
        // problem, see `a_crash_while_the_backend_is_first_created_leaves_it_openable`): only
        // the WAL disk is cut during a first start unless BALLAST_POWER_LOSS_FIRST_CREATE=1.
        let cut = match cut {
            Cut::AtStart(false, n) if db.durable_len() == 0 && !first_create_cuts() => {
                Cut::AtStart(true, n)
            }
            c => c,
        };
        trace.push(format!("round {round}: {cut:?}"));
        let at_start = matches!(cut, Cut::AtStart(..)) && !last;
        if let (Cut::AtStart(on_wal, n), true) = (cut, at_start) {
            if on_wal {
                wal.die_after(n)
            } else {
                db.die_after(n)
            }
        }
        let started = start(&wal, &db, snapshot_count, segment_size);
        let m = match started {
            Ok(m) => m,
            Err(_) if wal.is_dead() || db.is_dead() => {
                // Cut while starting: nothing new was acknowledged; crash and go on.
                trace.push(format!("round {round}: cut while starting"));
                kill(&wal, &db);
                wal = wal.crash(rng.next_u64());
                wal.set_capacity(None);
                db = db.crash(rng.next_u64());
                continue;
            }
            Err(e) => return Err(format!("round {round}: member does not start: {e}")),
        };
        let result = rt.block_on(async {
            if let Some((logs_round, logs)) = &last_logs {
                match check(&m, &model, logs, *logs_round).await {
                    Ok((checked, applied)) => {
                        stats.in_flight_applied += applied;
                        stats.acked += logs.iter().map(|l| l.acked.len()).sum::<usize>();
                        model = checked;
                        last_logs = None;
                    }
                    // The start-time cut got the member while it was being checked: check
                    // again after the next crash.
                    Err(_) if at_start && (wal.is_dead() || db.is_dead()) => return Ok(None),
                    Err(e) => return Err(e),
                }
            }
            if at_start && m.is_stopped() {
                return Ok(Some(Vec::new()));
            }
            // The member takes writes (unless the start-time cut already got it). The probe is
            // client 0's first request.
            let probe = Req::Puts(
                vec![(format!("r{round}c0/probe").into_bytes(), b"p".to_vec(), 0)],
                false,
            );
            let probe_rev = match send(&m, &probe).await {
                Ok(rev) => rev,
                Err(_) if at_start => {
                    let log = ClientLog {
                        acked: Vec::new(),
                        unknown: Some(probe),
                    };
                    return Ok(Some(vec![log]));
                }
                Err(e) => return Err(format!("round {round}: probe put after restart: {e}")),
            };
            if last {
                return Ok(None);
            }
            let (wal_ops, db_ops) = (wal.ops(), db.ops());
            let done = Arc::new(AtomicBool::new(false));
            let watcher = match cut {
                Cut::Wal(n) => {
                    wal.die_after(n);
                    None
                }
                Cut::Backend(n) => {
                    db.die_after(n);
                    None
                }
                Cut::Power(n) => {
                    let (w, d, done) = (wal.clone(), db.clone(), done.clone());
                    Some(std::thread::spawn(move || {
                        while !done.load(Ordering::Relaxed) {
                            if w.ops() + d.ops() >= wal_ops + db_ops + n {
                                kill(&w, &d);
                                return;
                            }
                            std::thread::sleep(Duration::from_micros(50));
                        }
                    }))
                }
                Cut::Full(true, n) => {
                    wal.set_capacity(Some(wal.used() + n));
                    None
                }
                Cut::Full(false, n) => {
                    db.set_capacity(Some(db.durable_len() + n));
                    None
                }
                Cut::AtStart(..) | Cut::Idle | Cut::Stop => None,
            };
            let clients = 1 + rng.below(4) as u32;
            let handles: Vec<_> = (0..clients)
                .map(|c| {
                    let n = 5 + rng.below(60) as u32;
                    tokio::spawn(client(m.clone(), round, c, rng.next_u64(), n))
                })
                .collect();
            let mut logs = Vec::new();
            for h in handles {
                logs.push(h.await.map_err(|e| format!("client task: {e}"))?);
            }
            logs[0].acked.insert(0, (probe, probe_rev));
            done.store(true, Ordering::Relaxed);
            if let Some(w) = watcher {
                let _ = w.join();
            }
            // A disk that died under the member (not by the power cut) failed one of its
            // operations: the member must have fail-stopped (give a background commit a moment).
            if matches!(cut, Cut::Wal(_) | Cut::Backend(_) | Cut::AtStart(..))
                && (wal.is_dead() || db.is_dead())
            {
                let t = Instant::now();
                while !m.is_stopped() && t.elapsed() < Duration::from_secs(3) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                if !m.is_stopped() {
                    return Err(format!(
                        "round {round}: a disk died (wal {}, backend {}) and the member did not fail-stop",
                        wal.is_dead(),
                        db.is_dead()
                    ));
                }
            }
            if matches!(cut, Cut::Stop) {
                m.stop();
            }
            Ok(Some(logs))
        });
        // Power off: nothing more reaches either disk, then the member goes away.
        kill(&wal, &db);
        m.stop();
        drop(m);
        let logs = result?;
        if let Some(logs) = &logs {
            trace.push(format!(
                "round {round}: {} acknowledged, {} in flight at the cut",
                logs.iter().map(|l| l.acked.len()).sum::<usize>(),
                logs.iter().filter(|l| l.unknown.is_some()).count()
            ));
            stats.in_flight += logs.iter().filter(|l| l.unknown.is_some()).count();
        }
        if last {
            break;
        }
        if let Some(logs) = logs {
            last_logs = Some((round, logs));
        }
        wal = wal.crash(rng.next_u64());
        // A crash image keeps the capacity: room again, as after an operator's cleanup.
        wal.set_capacity(None);
        db = db.crash(rng.next_u64());
    }
    Ok(stats)
}

fn first_create_cuts() -> bool {
    std::env::var("BALLAST_POWER_LOSS_FIRST_CREATE").is_ok_and(|v| v == "1")
}

/// A crash while the very first start creates the backend (fresh disks, the backend disk dies
/// after `n` operations, then the power goes) must leave a member that starts. redb's new file
/// can survive with its length but without its header ("Not a redb database: magic number
/// mismatch"). On a real file system `Store::open` now creates the database under
/// `db.creating` and renames it into place once initialised (a leftover is removed at the next
/// open: `ballast-mvcc`'s `an_interrupted_creation_is_removed_and_the_database_created_again`).
/// This simulated disk models one file with no directory, so the seam it tests has no rename
/// and still shows the problem: a store over a caller's backend must be created by the caller
/// in a crash-safe way. Run it with `--ignored`.
#[test]
#[ignore = "a store over a caller's one-file backend has no crash-safe creation (the file path has: create + rename)"]
fn a_crash_while_the_backend_is_first_created_leaves_it_openable() {
    let mut failures = Vec::new();
    for n in 0..60 {
        for seed in 0..8 {
            let (wal, db) = (WalDisk::new(), DbDisk::new());
            db.die_after(n);
            if let Ok(m) = start(&wal, &db, 10_000, 64 << 10) {
                kill(&wal, &db);
                m.stop();
            }
            kill(&wal, &db);
            let (wal, db) = (wal.crash(seed), db.crash(seed));
            match start(&wal, &db, 10_000, 64 << 10) {
                Ok(m) => m.stop(),
                Err(e) => {
                    failures.push(format!("die after {n} backend ops, crash seed {seed}: {e}"))
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 480 crashes left the member unable to start, e.g.:\n{}",
        failures.len(),
        failures[..failures.len().min(5)].join("\n")
    );
}

#[test]
fn member_survives_power_loss() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let seeds: Box<dyn Iterator<Item = u64>> = match env("BALLAST_SEED") {
        Some(s) => Box::new(std::iter::once(s)),
        None => Box::new(env("BALLAST_POWER_LOSS_FIRST_SEED").unwrap_or(1)..),
    };
    let iters = env("BALLAST_POWER_LOSS_ITERS");
    let budget = Duration::from_secs(env("BALLAST_POWER_LOSS_SECS").unwrap_or(60));
    let t0 = Instant::now();
    let (mut n, mut rounds, mut acked, mut in_flight, mut in_flight_applied) = (0, 0, 0, 0, 0);
    for seed in seeds {
        match iters {
            Some(i) if n >= i => break,
            None if t0.elapsed() >= budget => break,
            _ => {}
        }
        let r = catch_unwind(AssertUnwindSafe(|| run_seed(seed, &rt)));
        match r {
            Ok(Ok(s)) => {
                rounds += s.rounds as u64;
                acked += s.acked;
                in_flight += s.in_flight;
                in_flight_applied += s.in_flight_applied;
            }
            Ok(Err(e)) => {
                panic!("power-loss seed {seed} failed (replay: BALLAST_SEED={seed}): {e}")
            }
            Err(_) => panic!("power-loss seed {seed} panicked (replay: BALLAST_SEED={seed})"),
        }
        n += 1;
    }
    println!(
        "member power loss: {n} seeds, {rounds} crashes, {acked} acknowledged requests checked, {in_flight} requests in flight at a cut ({in_flight_applied} found applied), {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(n > 0, "no seed ran");
}
