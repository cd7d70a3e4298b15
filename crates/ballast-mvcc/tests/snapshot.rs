//! `Store::export_snapshot` and `Store::install_snapshot` over files: the export is one
//! consistent commit taken while writes go on, the installing store becomes identical to the
//! exporting one (hash, revisions, applied index, meta, reads at every revision not compacted,
//! events), views opened before keep reading the old contents, reads racing the install see
//! the old or the new contents whole, and anything but a complete
//! Ballast backend is refused with the store untouched. Crashes around the install's swap are in
//! `tests/failpoints.rs`; installs over a caller's backend (in one redb transaction) under power
//! loss in `tests/power_loss.rs`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use ballast_mvcc::*;

fn opts() -> StoreOptions {
    StoreOptions {
        cache_size: 16 << 20,
        compaction_batch: 100,
        ..Default::default()
    }
}

fn all() -> RangeOptions {
    RangeOptions::range("\0", "\0")
}

/// Everything a member can observe of a store, compared between the exporting and the
/// installing one.
#[derive(Debug, PartialEq)]
struct Observed {
    revision: i64,
    compact_revision: i64,
    applied: u64,
    hash: (u32, i64),
    hash_kv: (u32, i64, i64),
    meta: Vec<(String, Vec<u8>)>,
    /// All keys at every revision from the compact revision on (below it: Compacted).
    ranges: Vec<(i64, Vec<KeyValue>)>,
    /// Every event from the compact revision on, with previous values.
    events: Vec<Event>,
}

fn observe(s: &Store) -> Observed {
    let r = s.read().unwrap();
    let compact = s.compact_revision();
    let mut ranges = Vec::new();
    for rev in compact.max(1)..=r.revision() {
        let mut q = all();
        q.revision = rev;
        ranges.push((rev, r.range(&q).unwrap().kvs));
    }
    if compact > 1 {
        let mut q = all();
        q.revision = compact - 1;
        assert!(matches!(r.range(&q), Err(MvccError::Compacted)));
    }
    let (events, _) = r
        .events(compact.max(1), i64::MAX, usize::MAX, true)
        .unwrap();
    Observed {
        revision: r.revision(),
        compact_revision: compact,
        applied: s.applied_index(),
        hash: s.hash().unwrap(),
        hash_kv: s.hash_kv(0).unwrap(),
        meta: r.meta_with_prefix("").unwrap(),
        ranges,
        events,
    }
}

/// A history of `batches` batches over 40 keys: puts (some with leases), deletes, caller meta
/// (lease-, alarm- and member-like keys), a compaction in the middle (run to the end).
fn history(s: &Store, seed: u64, batches: u64) {
    let mut x = seed;
    let mut next = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x >> 33
    };
    let first = s.applied_index() + 1;
    for b in first..first + batches {
        let mut w = s.write().unwrap();
        for _ in 0..1 + next() % 5 {
            let k = format!("key/{:02}", next() % 40);
            if next() % 4 == 0 {
                w.delete_range(k.as_bytes(), b"").unwrap();
            } else {
                let v = format!("{seed}:{b}:{}", next()).repeat(1 + (next() % 20) as usize);
                w.put(k.as_bytes(), v.as_bytes(), (next() % 3) as i64)
                    .unwrap();
            }
            w.end();
        }
        match next() % 6 {
            0 => w.put_meta(&format!("lease/{}", next() % 5), &b.to_be_bytes()),
            1 => w.put_meta("alarm/nospace", b"1"),
            2 => w.put_meta(
                &format!("member/{}", next() % 3),
                format!("m{b}").as_bytes(),
            ),
            3 => w.delete_meta(&format!("lease/{}", next() % 5)),
            _ => {}
        }
        let job = (b == first + batches / 2 && w.revision() > 2)
            .then(|| w.compact(w.revision() - 2).unwrap());
        w.commit(b, b % 7 == 0).unwrap();
        if let Some(j) = job {
            j.run().unwrap();
        }
    }
}

/// A member with `history(seed, batches)` in `dir/name`, and its export to `dir/<name>.snap.db`.
fn exported(dir: &Path, name: &str, seed: u64, batches: u64) -> (Store, std::path::PathBuf) {
    let s = Store::open(&dir.join(name), opts()).unwrap();
    history(&s, seed, batches);
    let file = dir.join(format!("{name}.snap.db"));
    s.export_snapshot(&file).unwrap();
    (s, file)
}

#[test]
fn an_installed_snapshot_is_identical_to_the_exporting_store() {
    let dir = tempfile::tempdir().unwrap();
    let src = Store::open(&dir.path().join("src"), opts()).unwrap();
    history(&src, 1, 120);
    let expect = observe(&src);
    assert!(expect.compact_revision > 1, "{expect:?}");
    let file = dir.path().join("0000000000000078.snap.db");
    let info = src.export_snapshot(&file).unwrap();
    assert_eq!(
        (info.applied_index, info.revision, info.compact_revision),
        (120, expect.revision, expect.compact_revision)
    );
    assert_eq!(info.size, std::fs::metadata(&file).unwrap().len());
    // An existing file is never overwritten.
    let e = src.export_snapshot(&file).unwrap_err();
    assert_eq!(
        e.io_error().map(|e| e.kind()),
        Some(std::io::ErrorKind::AlreadyExists)
    );
    assert_eq!(info.size, std::fs::metadata(&file).unwrap().len());

    // The installing member has history of its own, further ahead in revisions, and a
    // view open across the install.
    let path = dir.path().join("dst");
    let dst = Store::open(&path, opts()).unwrap();
    history(&dst, 2, 300);
    let old = observe(&dst);
    let view = dst.read().unwrap();
    let old_job = {
        let mut w = dst.write().unwrap();
        let job = w.compact(w.revision() - 1).unwrap();
        w.commit(301, false).unwrap();
        job
    };
    let old_compacted = dst.compact_revision();

    dst.install_snapshot(&file).unwrap();
    assert!(!file.exists(), "the snapshot file is renamed into place");
    assert_eq!(observe(&dst), expect);
    assert_eq!(dst.durable_applied_index(), 120);
    assert_eq!(dst.db_size(), std::fs::metadata(&path).unwrap().len());
    assert!(dst.take_pending_compaction().is_none());
    // A compaction job of the replaced contents has nothing left to do, and does nothing.
    old_job.run().unwrap();
    assert_eq!(observe(&dst), expect);

    // The view opened before reads the old contents, consistently, with their compact revision.
    assert_eq!(view.revision(), old.revision);
    assert_eq!(view.compact_revision(), old_compacted);
    assert_eq!(
        view.range(&all()).unwrap().kvs,
        old.ranges.last().unwrap().1
    );
    let mut q = all();
    q.revision = old_compacted;
    assert_eq!(
        view.range(&q).unwrap().kvs,
        old.ranges
            .iter()
            .find(|(r, _)| *r == old_compacted)
            .unwrap()
            .1
    );
    drop(view);

    // Both go on identically from there, and the installed store reopens as it is.
    history(&src, 3, 30);
    history(&dst, 3, 30);
    let after = observe(&src);
    assert_eq!(observe(&dst), after);
    drop(old_job);
    drop(dst);
    let dst = Store::open(&path, opts()).unwrap();
    assert_eq!(observe(&dst), after);
}

#[test]
fn an_unfinished_compaction_travels_with_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let src = Store::open(&dir.path().join("src"), opts()).unwrap();
    history(&src, 4, 200);
    let mut w = src.write().unwrap();
    let job = w.compact(w.revision()).unwrap();
    w.commit(201, false).unwrap();
    // One deletion batch of 100 rows, not the whole job.
    assert!(!job.run_steps(1).unwrap());
    let file = dir.path().join("snap.db");
    src.export_snapshot(&file).unwrap();
    let dst = Store::open(&dir.path().join("dst"), opts()).unwrap();
    dst.install_snapshot(&file).unwrap();
    let pending = dst
        .take_pending_compaction()
        .expect("the compaction resumes");
    assert_eq!(pending.revision(), src.compact_revision());
    pending.run().unwrap();
    job.run().unwrap();
    assert_eq!(observe(&dst), observe(&src));
}

#[test]
fn export_takes_one_commit_while_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let src = Store::open(&dir.path().join("src"), opts()).unwrap();
    // About 40 MB, so that the copy takes a while.
    for b in 1..=40u64 {
        let mut w = src.write().unwrap();
        for i in 0..1000u64 {
            w.put(
                format!("bulk/{b:03}/{i:04}").as_bytes(),
                &[b as u8; 1000],
                0,
            )
            .unwrap();
            w.end();
        }
        w.commit(b, false).unwrap();
    }
    // A writer commits one key per batch, its applied index in the key, as fast as it can.
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(40));
    let writer = {
        let (s, stop, committed) = (src.clone(), stop.clone(), committed.clone());
        thread::spawn(move || {
            let mut a = 40u64;
            while !stop.load(Ordering::Relaxed) {
                a += 1;
                let mut w = s.write().unwrap();
                w.put(format!("w/{a:08}").as_bytes(), b"x", 0).unwrap();
                w.end();
                w.put_meta("caller/last", &a.to_be_bytes());
                w.commit(a, false).unwrap();
                committed.store(a, Ordering::Release);
            }
        })
    };
    while committed.load(Ordering::Acquire) < 50 {
        thread::yield_now();
    }
    let file = dir.path().join("snap.db");
    let before = committed.load(Ordering::Acquire);
    let t = std::time::Instant::now();
    let info = src.export_snapshot(&file).unwrap();
    let took = t.elapsed();
    let after = committed.load(Ordering::Acquire);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    eprintln!(
        "export of {} bytes took {took:?}; the writer committed {} batches meanwhile",
        info.size,
        after - before
    );
    // Writers were never waited for: batches committed during the copy.
    assert!(after > before + 10, "{before} -> {after} during {took:?}");
    assert!(info.applied_index >= before && info.applied_index <= after);

    // The copy is exactly the commit of its applied index: its writer keys are
    // w/41..=applied, the meta agrees, and reads at its revision are the source's.
    let dst = Store::open(&dir.path().join("dst"), opts()).unwrap();
    dst.install_snapshot(&file).unwrap();
    assert_eq!(dst.applied_index(), info.applied_index);
    assert_eq!(dst.current_revision(), info.revision);
    let r = dst.read().unwrap();
    let w = r.range(&RangeOptions::range("w/", "w0")).unwrap();
    assert_eq!(w.count as u64, info.applied_index - 40);
    assert_eq!(
        w.kvs.last().unwrap().key,
        format!("w/{:08}", info.applied_index).into_bytes()
    );
    assert_eq!(
        r.get_meta("caller/last").unwrap().unwrap(),
        info.applied_index.to_be_bytes()
    );
    let mut q = all();
    q.revision = info.revision;
    q.keys_only = true;
    assert_eq!(
        src.read().unwrap().range(&q).unwrap().kvs,
        r.range(&q).unwrap().kvs
    );
}

#[test]
fn a_streamed_export_installs_the_same_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("snaptmp");
    std::fs::create_dir(&tmp).unwrap();
    let src = Store::open(&dir.path().join("src"), opts()).unwrap();
    history(&src, 5, 80);
    let mut stream = src.export_snapshot_stream(&tmp).unwrap();
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    let info = stream.info();
    // The receiving side: chunks written to its snap dir, fsynced, then installed.
    let received = dir.path().join("received.snap.db");
    let mut out = std::fs::File::create(&received).unwrap();
    assert_eq!(std::io::copy(&mut stream, &mut out).unwrap(), info.size);
    out.sync_all().unwrap();
    drop(stream);
    let dst = Store::open(&dir.path().join("dst"), opts()).unwrap();
    dst.install_snapshot(&received).unwrap();
    assert_eq!(dst.applied_index(), info.applied_index);
    assert_eq!(observe(&dst), observe(&src));
}

/// Files that are not a complete Ballast backend.
fn bad_files(dir: &Path, good: &Path) -> Vec<(&'static str, std::path::PathBuf)> {
    let mut out = Vec::new();
    let mut put = |name: &'static str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        out.push((name, p));
    };
    put("empty", b"");
    put("garbage", &[0x5a; 64 << 10]);
    let whole = std::fs::read(good).unwrap();
    put("truncated", &whole[..whole.len() / 2]);
    let mut flipped = whole.clone();
    for b in flipped.iter_mut().take(4096).skip(16) {
        *b ^= 0xff;
    }
    put("damaged header", &flipped);
    // A redb database, but not a Ballast backend: no tables at all, or another format mark.
    let p = dir.join("plain redb");
    drop(redb::Database::create(&p).unwrap());
    out.push(("plain redb", p));
    let p = dir.join("other format");
    std::fs::copy(good, &p).unwrap();
    {
        let db = redb::Database::create(&p).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut m = w
                .open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
                .unwrap();
            m.insert("mvcc/format", &[2u8][..]).unwrap();
        }
        w.commit().unwrap();
    }
    out.push(("other format", p));
    out.push(("missing", dir.join("missing")));
    out
}

#[test]
fn anything_but_a_ballast_backend_is_refused_and_the_store_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (src, good) = exported(dir.path(), "src", 6, 50);

    let path = dir.path().join("dst");
    let dst = Store::open(&path, opts()).unwrap();
    history(&dst, 7, 60);
    let before = observe(&dst);
    let view = dst.read().unwrap();
    for (what, file) in bad_files(dir.path(), &good) {
        let content = std::fs::read(&file).ok();
        let e = dst.install_snapshot(&file).unwrap_err();
        assert!(matches!(e, MvccError::BadSnapshot { .. }), "{what}: {e}");
        eprintln!("{what}: {e}");
        assert_eq!(observe(&dst), before, "{what}");
        assert_eq!(
            std::fs::read(&file).ok(),
            content,
            "{what}: the file was changed"
        );
    }
    // The store's own database file is not a snapshot to install either (it is open).
    let e = dst.install_snapshot(&path).unwrap_err();
    assert!(matches!(e, MvccError::BadSnapshot { .. }), "{e}");
    assert_eq!(
        view.range(&all()).unwrap().kvs,
        before.ranges.last().unwrap().1
    );
    drop(view);
    // Still writable, and reopens as it was.
    history(&dst, 8, 10);
    let after = observe(&dst);
    drop(dst);
    let dst = Store::open(&path, opts()).unwrap();
    assert_eq!(observe(&dst), after);
    // And a good snapshot still installs.
    dst.install_snapshot(&good).unwrap();
    assert_eq!(observe(&dst), observe(&src));
}

#[test]
fn reads_racing_an_install_see_the_old_or_the_new_contents() {
    let dir = tempfile::tempdir().unwrap();
    let (src, file) = exported(dir.path(), "src", 9, 60);
    let new = (
        src.current_revision(),
        src.read().unwrap().range(&all()).unwrap().kvs,
    );
    let dst = Store::open(&dir.path().join("dst"), opts()).unwrap();
    history(&dst, 10, 200);
    let old = (
        dst.current_revision(),
        dst.read().unwrap().range(&all()).unwrap().kvs,
    );
    assert_ne!(old, new);
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (s, stop, old, new) = (dst.clone(), stop.clone(), old.clone(), new.clone());
            thread::spawn(move || {
                let (mut saw_old, mut saw_new) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) || saw_new == 0 {
                    let r = s.read().unwrap();
                    let got = (r.revision(), r.range(&all()).unwrap().kvs);
                    if got == old {
                        saw_old += 1;
                    } else {
                        assert!(
                            got == new,
                            "a read saw neither the old nor the new contents"
                        );
                        saw_new += 1;
                    }
                }
                (saw_old, saw_new)
            })
        })
        .collect();
    thread::sleep(std::time::Duration::from_millis(100));
    dst.install_snapshot(&file).unwrap();
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let (saw_old, saw_new) = r.join().unwrap();
        assert!(saw_old > 0 && saw_new > 0, "old {saw_old}, new {saw_new}");
    }
}
