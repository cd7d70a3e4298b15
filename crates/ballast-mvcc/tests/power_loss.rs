#![cfg(feature = "sim")]
//! Power-loss simulation: the store over [`SimDisk`] runs seeded random batches (puts, deletes,
//! multi-operation transactions, caller meta values, compactions run a few steps at a time),
//! committed durable or not as the server does (mostly not), until the process dies at a
//! random disk operation (mid-commit included) or the disk fills; then the power goes out
//! ([`SimDisk::crash`]: unsynced sectors survive or not, by seed), the store is reopened and
//! checked against an oracle (the same batches on a disk that never fails):
//! - reopening succeeds;
//! - the state is exactly the oracle's after one batch `a` (applied index, revision, compact
//!   revision, every live key with all its fields, caller meta, whole-backend hash once any
//!   pending compaction has finished), with `a` at or after the last batch whose durable commit
//!   returned Ok, and no later than the last commit attempted: never half a batch, never older
//!   than an acknowledged durable commit;
//! - as redb persists a non-durable commit only with a later durable one, `a` is that last
//!   acknowledged durable batch or a batch whose durable commit was attempted (and failed or
//!   was cut short);
//! - the rebuilt key index agrees with the backend: reads at the revision of every earlier batch
//!   still readable give that batch's keys exactly;
//! - a pending compaction resumes (and finishes), and the store takes writes again.
//!
//! Some batches are followed by a defragmentation (over a custom backend: redb's in-place
//! compaction), which may be cut short by the crash too; it counts as a durable commit of the
//! batch before it (acknowledged if it returned Ok). Some batches reach the store as a backend
//! snapshot instead: the oracle applies the batch and exports itself
//! (`Store::export_snapshot`), the store installs the file (`Store::install_snapshot`, one
//! durable redb transaction over this backend), a durable commit of that batch the same way.
//! `power_loss_during_an_install_leaves_the_old_or_the_new_contents` cuts one install at every
//! disk operation in turn.
//!
//! Run: `cargo test --release -p ballast-mvcc --features sim --test power_loss -- --nocapture`.
//! `BALLAST_SEED=<n>` replays the one iteration with seed `n` (printed on failure);
//! `BALLAST_POWER_LOSS_ITERS` changes the number of iterations (default 6000).

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::Instant;

use ballast_mvcc::sim::{SimDisk, SimRng};
use ballast_mvcc::*;

#[derive(Clone, Debug)]
enum Op {
    Put(Vec<u8>, Vec<u8>, i64),
    Delete(Vec<u8>, Vec<u8>),
}

#[derive(Clone, Debug)]
struct Batch {
    txns: Vec<Vec<Op>>,
    meta: Option<(String, Option<Vec<u8>>)>,
    compact: Option<i64>,
    durable: bool,
}

/// Everything the checks compare, as of one batch.
#[derive(Clone, Debug, PartialEq)]
struct State {
    applied: u64,
    revision: i64,
    compact: i64,
    live: Vec<KeyValue>,
    meta: Vec<(String, Vec<u8>)>,
    hash: u32,
}

fn all() -> RangeOptions {
    RangeOptions::range("\0", "\0")
}

fn state(s: &Store) -> State {
    let r = s.read().unwrap();
    State {
        applied: s.applied_index(),
        revision: r.revision(),
        compact: s.compact_revision(),
        live: r.range(&all()).unwrap().kvs,
        meta: r.meta_with_prefix("caller/").unwrap(),
        hash: s.hash().unwrap().0,
    }
}

fn random_key(rng: &mut SimRng) -> Vec<u8> {
    format!("k{:02}", rng.below(16)).into_bytes()
}

fn random_txn(rng: &mut SimRng) -> Vec<Op> {
    let max = if rng.chance(30) { 6 } else { 2 };
    let n = 1 + rng.below(max);
    (0..n)
        .map(|_| {
            if rng.chance(75) {
                let len = if rng.chance(10) {
                    rng.below(3000)
                } else {
                    rng.below(120)
                } as usize;
                let fill = rng.next_u64() as u8;
                let lease = if rng.chance(20) {
                    1 + rng.below(5) as i64
                } else {
                    0
                };
                Op::Put(random_key(rng), vec![fill; len], lease)
            } else if rng.chance(70) {
                Op::Delete(random_key(rng), Vec::new())
            } else {
                let a = random_key(rng);
                let mut b = random_key(rng);
                if b < a {
                    b = a.clone();
                    b.push(b'~');
                }
                Op::Delete(a, b)
            }
        })
        .collect()
}

/// Applies the batch's transactions (not its compaction or commit) to `w`.
fn apply(w: &mut WriteTxn<'_>, b: &Batch) -> Result<(), MvccError> {
    for txn in &b.txns {
        for op in txn {
            match op {
                Op::Put(k, v, l) => {
                    w.put(k, v, *l)?;
                }
                Op::Delete(k, e) => {
                    w.delete_range(k, e)?;
                }
            }
        }
        w.end();
    }
    match &b.meta {
        Some((k, Some(v))) => w.put_meta(k, v),
        Some((k, None)) => w.delete_meta(k),
        None => {}
    }
    Ok(())
}

fn opts(rng: &mut SimRng) -> StoreOptions {
    StoreOptions {
        cache_size: 1 << 20,
        compaction_batch: 4 + rng.below(12) as usize,
        compaction_index_chunk: 8,
        quick_repair: rng.chance(50),
    }
}

#[derive(Default, Debug)]
struct Stats {
    iterations: u64,
    /// Per round from here on.
    died: u64,
    disk_full: u64,
    survived_all: u64,
    /// Store errors that were ENOSPC (the disk filled) and others (the process died).
    enospc_errors: u64,
    other_errors: u64,
    batches: u64,
    recovered_at_durable_ack: u64,
    recovered_later: u64,
    pending_compactions: u64,
    defrags: u64,
    installs: u64,
    ops: u64,
}

/// One iteration: one or two rounds of "run batches until the process dies, lose power,
/// reopen, check" (the second round starts from the first one's crash image, so recovery of a
/// recovered database is covered too). Panics on any broken property.
fn iteration(seed: u64, snap_dir: &Path, stats: &mut Stats) {
    let mut rng = SimRng(seed);
    let o = opts(&mut rng);
    let mut disk = SimDisk::new();
    let rounds = 1 + rng.below(2);
    for _ in 0..rounds {
        disk = round(&mut rng, &o, disk, snap_dir, stats);
    }
}

/// One round over `disk` (which has no unsynced data). Returns the crash image after checking
/// it. Snapshot files go to `snap_dir` (a real directory) and are removed after use.
fn round(
    rng: &mut SimRng,
    o: &StoreOptions,
    disk: SimDisk,
    snap_dir: &Path,
    stats: &mut Stats,
) -> SimDisk {
    // The oracle runs on an exact copy of the disk (a crash with nothing unsynced).
    let oracle = Store::open_with_backend("oracle", disk.crash(0), o.clone()).unwrap();
    if let Some(j) = oracle.take_pending_compaction() {
        j.run().unwrap();
    }
    let store = Store::open_with_backend("sim", disk.clone(), o.clone()).unwrap();
    let mut jobs: std::collections::VecDeque<CompactJob> =
        store.take_pending_compaction().into_iter().collect();
    let full = rng.chance(20);
    if full {
        disk.set_capacity(Some(disk.durable_len() + rng.below(48 << 10)));
    } else {
        disk.die_after(rng.below(80));
    }
    let start_ops = disk.ops();

    let base = oracle.applied_index();
    assert_eq!(store.applied_index(), base);
    // states[i] = after batch base + i.
    let mut states = vec![state(&oracle)];
    let mut acked_durable = base;
    let mut attempted_durable = BTreeSet::new();
    let mut last_attempted = base;
    let n_batches = 5 + rng.below(30);
    let mut failure: Option<MvccError> = None;
    'run: for b in base + 1..=base + n_batches {
        // The oracle first: it decides the compaction target.
        let mut batch = Batch {
            txns: (0..1 + rng.below(4)).map(|_| random_txn(rng)).collect(),
            meta: if rng.chance(20) {
                let k = format!("caller/{}", rng.below(3));
                Some((k, rng.chance(80).then(|| b.to_be_bytes().to_vec())))
            } else {
                None
            },
            compact: None,
            durable: rng.chance(20),
        };
        let mut w = oracle.write().unwrap();
        apply(&mut w, &batch).unwrap();
        if rng.chance(15) && w.revision() > oracle.compact_revision().max(0) + 1 {
            let low = oracle.compact_revision().max(0) + 1;
            let target = low + rng.below((w.revision() - low + 1) as u64) as i64;
            batch.compact = Some(target);
        }
        let job = batch.compact.map(|c| w.compact(c).unwrap());
        w.commit(b, batch.durable).unwrap();
        if let Some(j) = job {
            j.run().unwrap();
        }
        states.push(state(&oracle));
        stats.batches += 1;

        // Now and then the batch reaches the store as a snapshot of the oracle after it (as
        // a member far behind gets it), a durable step.
        if rng.chance(3) {
            stats.installs += 1;
            let file = snap_dir.join("snap.db");
            let info = oracle.export_snapshot(&file).unwrap();
            assert_eq!(info.applied_index, b);
            last_attempted = b;
            attempted_durable.insert(b);
            let installed = store.install_snapshot(&file);
            std::fs::remove_file(&file).unwrap();
            if let Err(e) = installed {
                failure = Some(e);
                break;
            }
            acked_durable = b;
            assert_eq!(&state(&store), states.last().unwrap());
            jobs.extend(store.take_pending_compaction());
            continue;
        }

        // The same batch on the simulated disk; stop at the first error, as the server would.
        let mut w = match store.write() {
            Ok(w) => w,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        if let Err(e) = apply(&mut w, &batch) {
            failure = Some(e);
            break;
        }
        let job = match batch.compact.map(|c| w.compact(c)) {
            Some(Ok(j)) => Some(j),
            Some(Err(e)) => panic!("compaction refused on the store but not the oracle: {e}"),
            None => None,
        };
        last_attempted = b;
        if batch.durable {
            attempted_durable.insert(b);
        }
        if let Err(e) = w.commit(b, batch.durable) {
            failure = Some(e);
            break;
        }
        if batch.durable {
            acked_durable = b;
        }
        assert_eq!(
            store.current_revision(),
            states[(b - base) as usize].revision
        );
        jobs.extend(job);
        // Background compaction: a few steps between batches.
        let mut steps = rng.below(3) as usize;
        while steps > 0 {
            let Some(j) = jobs.front() else { break };
            match j.run_steps(1) {
                Ok(true) => {
                    jobs.pop_front();
                }
                Ok(false) => steps -= 1,
                Err(e) => {
                    failure = Some(e);
                    break 'run;
                }
            }
        }
        // Now and then a defragmentation (in place over this backend: redb's compaction, in
        // durable commits, so the latest batch may become durable even if it fails).
        if rng.chance(4) {
            stats.defrags += 1;
            attempted_durable.insert(b);
            if let Err(e) = store.defragment() {
                failure = Some(e);
                break;
            }
            acked_durable = b;
        }
    }
    match failure
        .as_ref()
        .and_then(|e| e.io_error())
        .map(|e| e.kind())
    {
        Some(std::io::ErrorKind::StorageFull) => stats.enospc_errors += 1,
        _ if failure.is_some() => stats.other_errors += 1,
        _ => {}
    }
    if disk.is_dead() {
        stats.died += 1;
    } else if full {
        stats.disk_full += 1;
    } else {
        stats.survived_all += 1;
    }
    stats.ops += disk.ops() - start_ops;
    // Power loss: nothing more reaches the disk (not even the store's clean close).
    disk.kill();
    drop(jobs);
    drop(store);
    let image = disk.crash(rng.next_u64());

    // Checks on a copy; the next round goes on from the image itself.
    let s = Store::open_with_backend("sim", image.crash(0), o.clone())
        .expect("reopen after power loss");
    let a = s.applied_index();
    assert!(
        a >= acked_durable && a <= last_attempted.max(acked_durable),
        "recovered applied index {a}: last acknowledged durable batch {acked_durable}, last attempted {last_attempted}"
    );
    assert!(
        a == acked_durable || attempted_durable.contains(&a),
        "recovered batch {a} was never committed durably (acked durable {acked_durable}, attempted {attempted_durable:?})"
    );
    if a == acked_durable {
        stats.recovered_at_durable_ack += 1;
    } else {
        stats.recovered_later += 1;
    }
    assert_eq!(s.durable_applied_index(), a);
    let upto = (a - base) as usize;
    let expect = &states[upto];
    // The index agrees with the backend at every earlier batch of this round still readable
    // (pending compaction or not: reads never depend on it).
    let check_history = |s: &Store| {
        let r = s.read().unwrap();
        for st in &states[..=upto] {
            if st.revision < s.compact_revision() {
                continue;
            }
            let mut q = all();
            q.revision = st.revision;
            assert_eq!(
                r.range(&q).unwrap().kvs,
                st.live,
                "reading revision {} after batch {}",
                st.revision,
                st.applied
            );
        }
    };
    check_history(&s);
    if let Some(job) = s.take_pending_compaction() {
        stats.pending_compactions += 1;
        job.run().expect("the pending compaction resumes");
    }
    assert_eq!(&state(&s), expect);
    check_history(&s);
    // And the store takes writes again, durably.
    let mut w = s.write().unwrap();
    w.put(b"after", b"crash", 0).unwrap();
    w.end();
    w.commit(a + 1, true).unwrap();
    assert_eq!(s.current_revision(), expect.revision + 1);
    image
}

#[test]
fn power_loss_at_random_points_keeps_every_acknowledged_write() {
    let (seeds, replay): (Vec<u64>, bool) = match std::env::var("BALLAST_SEED") {
        Ok(v) => (
            vec![v.trim().parse().expect("BALLAST_SEED is a number")],
            true,
        ),
        Err(_) => {
            let n: u64 = std::env::var("BALLAST_POWER_LOSS_ITERS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(6000);
            ((0..n).map(|i| 0xBA11_A570_0000 + i).collect(), false)
        }
    };
    let started = Instant::now();
    let mut stats = Stats::default();
    // The snapshot files are real files: on a tmpfs if there is one (their fsyncs are not what
    // this test is about, and there are a few thousand of them).
    let shm = Path::new("/dev/shm");
    let snap_dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .unwrap();
    for seed in seeds {
        stats.iterations += 1;
        let r = catch_unwind(AssertUnwindSafe(|| {
            iteration(seed, snap_dir.path(), &mut stats)
        }));
        if let Err(e) = r {
            eprintln!("power-loss iteration failed: replay with BALLAST_SEED={seed}");
            std::panic::resume_unwind(e);
        }
    }
    eprintln!("power loss: {stats:?} in {:?}", started.elapsed());
    if !replay {
        // The mix must exercise what it claims to.
        assert!(stats.died > stats.iterations / 2, "{stats:?}");
        assert!(stats.disk_full > 0, "{stats:?}");
        assert!(stats.enospc_errors > 0, "{stats:?}");
        assert!(stats.recovered_later > 0, "{stats:?}");
        assert!(stats.pending_compactions > 0, "{stats:?}");
        assert!(stats.defrags > 0, "{stats:?}");
        assert!(stats.installs > 0, "{stats:?}");
    }
}

/// A store over the simulated disk whose durable contents are `batches` random batches; the
/// disk, cleanly closed, and the state.
fn disk_with_history(rng: &mut SimRng, o: &StoreOptions, batches: u64) -> (SimDisk, State) {
    let disk = SimDisk::new();
    let s = Store::open_with_backend("sim", disk.clone(), o.clone()).unwrap();
    for b in 1..=batches {
        let batch = Batch {
            txns: (0..1 + rng.below(4)).map(|_| random_txn(rng)).collect(),
            meta: Some((
                format!("caller/{}", rng.below(3)),
                Some(b.to_be_bytes().to_vec()),
            )),
            compact: None,
            durable: b == batches,
        };
        let mut w = s.write().unwrap();
        apply(&mut w, &batch).unwrap();
        let job = (b == batches / 2).then(|| w.compact(w.revision() - 1).unwrap());
        w.commit(b, batch.durable).unwrap();
        if let Some(j) = job {
            j.run().unwrap();
        }
    }
    let st = state(&s);
    drop(s);
    (disk, st)
}

/// An install over a caller's backend is one durable redb transaction: the power going out at
/// any disk operation of it leaves the old contents or the new ones, whole (never a store that
/// fails to open or mixes the two), and the new ones once it returned Ok. Each cut point is
/// tried with several crash seeds (which unsynced sectors survive).
#[test]
fn power_loss_during_an_install_leaves_the_old_or_the_new_contents() {
    let mut rng = SimRng(0x5AA9_5407);
    let o = StoreOptions {
        cache_size: 1 << 20,
        compaction_batch: 8,
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snap.db");
    let (new_disk, new) = disk_with_history(&mut rng, &o, 40);
    let exporter = Store::open_with_backend("exporter", new_disk, o.clone()).unwrap();
    exporter.export_snapshot(&file).unwrap();
    drop(exporter);
    let (base, old) = disk_with_history(&mut rng, &o, 25);
    assert_ne!(old, new);
    let (mut saw_old, mut saw_new) = (0, 0);
    for cut in 0.. {
        let disk = base.crash(0);
        let s = Store::open_with_backend("sim", disk.clone(), o.clone()).unwrap();
        disk.die_after(cut);
        let installed = s.install_snapshot(&file);
        let died = disk.is_dead();
        assert!(installed.is_ok() || died, "cut {cut}: {installed:?}");
        disk.kill();
        drop(s);
        for seed in 0..4 {
            let image = disk.crash(cut * 16 + seed);
            let s = Store::open_with_backend("sim", image, o.clone())
                .unwrap_or_else(|e| panic!("cut {cut}, seed {seed}: reopen failed: {e}"));
            if let Some(j) = s.take_pending_compaction() {
                j.run().unwrap();
            }
            let st = state(&s);
            if st == new {
                saw_new += 1;
            } else {
                assert_eq!(st, old, "cut {cut}, seed {seed}: neither old nor new");
                assert!(installed.is_err(), "cut {cut}: acknowledged install lost");
                saw_old += 1;
            }
            assert_eq!(s.durable_applied_index(), st.applied);
        }
        if !died {
            eprintln!(
                "install cut at each of its {cut} disk operations: old {saw_old}, new {saw_new}"
            );
            break;
        }
    }
    assert!(saw_old > 0 && saw_new > 0, "old {saw_old}, new {saw_new}");
}

/// A full disk in the middle of a commit: the commit fails with ENOSPC, nothing of the batch
/// is visible in the process, and after a restart (power loss or not) the store holds exactly
/// the last durable commit.
#[test]
fn enospc_in_a_commit_is_a_clean_error() {
    for (seed, durable) in [(1u64, true), (2, false), (3, true), (4, false)] {
        let disk = SimDisk::new();
        let o = StoreOptions {
            cache_size: 1 << 20,
            ..Default::default()
        };
        let s = Store::open_with_backend("full", disk.clone(), o.clone()).unwrap();
        let mut w = s.write().unwrap();
        w.put(b"a", b"1", 0).unwrap();
        w.end();
        w.commit(1, true).unwrap();
        let before = state(&s);
        disk.set_capacity(Some(disk.durable_len()));
        let mut w = s.write().unwrap();
        for i in 0..200u32 {
            w.put(&i.to_be_bytes(), &[7; 1000], 0).unwrap();
            w.end();
        }
        let e = w.commit(2, durable).unwrap_err();
        assert_eq!(
            e.io_error().map(|e| e.kind()),
            Some(std::io::ErrorKind::StorageFull),
            "{e}"
        );
        // Nothing of the batch, in this process.
        assert_eq!(s.current_revision(), before.revision);
        assert_eq!(s.applied_index(), 1);
        let r = s.read().unwrap();
        assert_eq!(r.range(&all()).unwrap().kvs, before.live);
        drop(r);
        // Later writes keep failing, even with room again (redb refuses writes after an I/O
        // error), until a reopen.
        disk.set_capacity(None);
        let later = s.write().and_then(|mut w| {
            w.put(b"b", b"2", 0)?;
            w.end();
            w.commit(2, true)
        });
        assert!(later.is_err(), "a write after ENOSPC succeeded");
        assert_eq!(s.current_revision(), before.revision);
        // Restart with room again: a clean stop, or a power loss.
        if seed % 2 == 1 {
            disk.kill();
        }
        drop(s);
        let image = disk.crash(seed);
        let s = Store::open_with_backend("full", image, o).unwrap();
        assert_eq!(state(&s), before);
        let mut w = s.write().unwrap();
        w.put(b"b", b"2", 0).unwrap();
        w.end();
        w.commit(2, true).unwrap();
    }
}
