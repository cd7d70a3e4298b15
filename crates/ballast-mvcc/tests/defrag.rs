//! `Store::defragment` and `Store::hash`: the file shrinks, nothing else changes (data,
//! revisions, hash, meta), reads and writes go on around it, and a crash around it leaves a
//! complete database.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ballast_mvcc::*;

mod common;
use common::{run_child, ENV_DIR};

fn small_opts() -> StoreOptions {
    StoreOptions {
        cache_size: 16 << 20,
        ..Default::default()
    }
}

fn key(i: u64) -> Vec<u8> {
    format!("key/{i:06}").into_bytes()
}

/// A value that says which key and round it belongs to, padded to `len` bytes.
fn value(i: u64, round: u64, len: usize) -> Vec<u8> {
    let mut v = format!("{i}:{round}:").into_bytes();
    v.resize(len, b'x');
    v
}

/// Everything a reader can see: all live keys at the current revision, the revisions, the
/// applied index and a caller meta value.
#[derive(Debug, PartialEq)]
struct Snapshot {
    kvs: Vec<KeyValue>,
    revision: i64,
    compact_revision: i64,
    applied: u64,
    meta: Option<Vec<u8>>,
}

fn snapshot(s: &Store) -> Snapshot {
    let r = s.read().unwrap();
    Snapshot {
        kvs: r.range(&RangeOptions::range("\0", "\0")).unwrap().kvs,
        revision: r.revision(),
        compact_revision: s.compact_revision(),
        applied: s.applied_index(),
        meta: s.get_meta("caller/m").unwrap(),
    }
}

/// `n` keys with `len`-byte values in batches of 500, then every key but each tenth deleted,
/// and a compaction at the current revision run to the end. Returns the next applied index.
fn fill_delete_compact(s: &Store, n: u64, len: usize) -> u64 {
    let mut applied = 0;
    for start in (0..n).step_by(500) {
        let mut w = s.write().unwrap();
        for i in start..(start + 500).min(n) {
            w.put(&key(i), &value(i, 0, len), 0).unwrap();
            w.end();
        }
        applied += 1;
        w.commit(applied, applied.is_multiple_of(10)).unwrap();
    }
    let mut w = s.write().unwrap();
    for i in 0..n {
        if !i.is_multiple_of(10) {
            w.delete_range(&key(i), b"").unwrap();
        }
    }
    w.end();
    w.put_meta("caller/m", b"meta value");
    let job = w.compact(w.revision()).unwrap();
    applied += 1;
    w.commit(applied, false).unwrap();
    job.run().unwrap();
    applied + 1
}

#[test]
fn defrag_shrinks_the_file_and_changes_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let s = Store::open(&path, small_opts()).unwrap();
    let n = 20_000;
    fill_delete_compact(&s, n, 1000);
    let before = snapshot(&s);
    assert_eq!(before.kvs.len() as u64, n / 10);
    let hash_before = s.hash().unwrap();
    let size_before = s.db_size();
    assert_eq!(size_before, std::fs::metadata(&path).unwrap().len());
    let in_use = s.db_size_in_use();

    let t = Instant::now();
    let stats = s.defragment().unwrap();
    eprintln!(
        "defrag: {} -> {} bytes (in use before: {in_use}) in {:?} (writes paused {:?}, measured {:?})",
        stats.size_before,
        stats.size_after,
        stats.took,
        stats.writes_paused,
        t.elapsed()
    );
    assert_eq!(stats.size_before, size_before);
    // About 2 MB of live rows out of 20 MB written: most of the freed space is given back.
    assert!(
        stats.size_after * 4 < size_before,
        "file did not shrink enough: {stats:?}"
    );
    assert_eq!(s.db_size(), stats.size_after);
    assert_eq!(s.db_size(), std::fs::metadata(&path).unwrap().len());
    assert!(s.db_size_in_use() <= s.db_size());
    assert!(!path.with_file_name("db.defrag.tmp").exists());
    assert_eq!(snapshot(&s), before);
    assert_eq!(s.hash().unwrap(), hash_before);
    // Non-durable commits before the defrag are durable after it.
    assert_eq!(s.durable_applied_index(), s.applied_index());

    // Writes and reads after it.
    let mut w = s.write().unwrap();
    w.put(b"after", b"defrag", 0).unwrap();
    w.end();
    w.commit(before.applied + 1, false).unwrap();
    assert_eq!(s.current_revision(), before.revision + 1);
    let after = snapshot(&s);
    let hash_after = s.hash().unwrap();
    assert_ne!(hash_after.0, hash_before.0);
    assert_eq!(hash_after.1, before.revision + 1);

    // Reopen: identical, and the size is the file's.
    drop(s);
    let s = Store::open(&path, small_opts()).unwrap();
    assert_eq!(snapshot(&s), after);
    assert_eq!(s.hash().unwrap(), hash_after);
    assert_eq!(s.db_size(), std::fs::metadata(&path).unwrap().len());

    // A second defrag of a tight file changes nothing and does not grow it much.
    let again = s.defragment().unwrap();
    assert!(
        again.size_after <= again.size_before + (1 << 20),
        "{again:?}"
    );
    assert_eq!(snapshot(&s), after);
    assert_eq!(s.hash().unwrap(), hash_after);
}

#[test]
fn hash_depends_on_data_only() {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open(&dir.path().join("a"), small_opts()).unwrap();
    let b = Store::open(&dir.path().join("b"), small_opts()).unwrap();
    let empty = a.hash().unwrap();
    assert_eq!(empty, b.hash().unwrap());
    assert_eq!(empty.1, 1);
    // Same writes, different applied indexes and batching and durability: same hash.
    let mut w = a.write().unwrap();
    w.put(b"k1", b"v1", 0).unwrap();
    w.end();
    w.put(b"k2", b"v2", 7).unwrap();
    w.end();
    w.commit(10, true).unwrap();
    for (i, (k, v, l)) in [("k1", "v1", 0), ("k2", "v2", 7)].into_iter().enumerate() {
        let mut w = b.write().unwrap();
        w.put(k.as_bytes(), v.as_bytes(), l).unwrap();
        w.end();
        w.commit(100 + i as u64, false).unwrap();
    }
    let ha = a.hash().unwrap();
    assert_eq!(ha, b.hash().unwrap());
    assert_eq!(ha.1, 3);
    assert_ne!(ha.0, empty.0);
    // Every kind of write changes it: a value, a lease, a delete, a caller meta value.
    let mut seen = vec![ha.0];
    let mut applied = 200;
    let mut step = |f: &dyn Fn(&mut WriteTxn<'_>)| {
        let mut w = a.write().unwrap();
        f(&mut w);
        w.end();
        applied += 1;
        w.commit(applied, false).unwrap();
        let h = a.hash().unwrap();
        assert!(!seen.contains(&h.0), "hash did not change: {h:?}");
        assert_eq!(h.1, a.current_revision());
        seen.push(h.0);
    };
    step(&|w| {
        w.put(b"k1", b"v1", 0).unwrap();
    });
    step(&|w| {
        w.put(b"k1", b"v1", 5).unwrap();
    });
    step(&|w| {
        w.delete_range(b"k2", b"").unwrap();
    });
    step(&|w| w.put_meta("caller/x", b"1"));
    // The applied index alone does not change it; a caller key asked to be ignored neither.
    let h = a.hash().unwrap();
    let w = a.write().unwrap();
    w.commit(9999, false).unwrap();
    assert_eq!(a.hash().unwrap(), h);
    let mut w = a.write().unwrap();
    w.put_meta("caller/member", b"mine");
    w.commit(10000, false).unwrap();
    assert_ne!(a.hash().unwrap(), h);
    assert_eq!(a.hash_ignoring(&["caller/member"]).unwrap(), h);
}

#[test]
fn reads_and_writes_go_on_during_defrag() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let s = Store::open(&path, small_opts()).unwrap();
    let n = 10_000;
    let mut applied = fill_delete_compact(&s, n, 500);
    // A view opened before the defrag, used during and after it.
    let old_view = s.read().unwrap();
    let old_rev = old_view.revision();
    let old_all = old_view.range(&RangeOptions::range("\0", "\0")).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let s = s.clone();
        let stop = stop.clone();
        let written = written.clone();
        thread::spawn(move || {
            let mut round = 1;
            while !stop.load(Ordering::SeqCst) {
                let mut w = s.write().unwrap();
                for i in (0..n).step_by(10).take(50) {
                    w.put(&key(i), &value(i, round, 500), 0).unwrap();
                    w.end();
                }
                applied += 1;
                w.commit(applied, round.is_multiple_of(5)).unwrap();
                written.store(round, Ordering::SeqCst);
                round += 1;
            }
            round - 1
        })
    };
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let s = s.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let r = s.read().unwrap();
                    let all = r.range(&RangeOptions::range("key/", "key0")).unwrap();
                    assert_eq!(all.kvs.len() as u64, n / 10);
                    for kv in &all.kvs {
                        let text = String::from_utf8_lossy(&kv.value);
                        let i: u64 = text.split(':').next().unwrap().parse().unwrap();
                        assert_eq!(key(i), kv.key);
                    }
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(200));
    let w_before = written.load(Ordering::SeqCst);
    let stats = s.defragment().unwrap();
    // The old view still reads its revision, during and after.
    assert_eq!(
        old_view.range(&RangeOptions::range("\0", "\0")).unwrap(),
        old_all
    );
    thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    let rounds = writer.join().unwrap();
    let reads: Vec<u64> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    eprintln!(
        "defrag {stats:?}; writer rounds {w_before} before, {rounds} at the end; reads {reads:?}"
    );
    assert!(rounds > w_before, "no write after the defrag");
    assert!(reads.iter().all(|&r| r > 0));
    assert_eq!(old_view.revision(), old_rev);
    let mut o = RangeOptions::range("\0", "\0");
    o.revision = old_rev;
    assert_eq!(s.read().unwrap().range(&o).unwrap().kvs, old_all.kvs);
    drop(old_view);
    // The latest round of every written key is there, before and after reopen.
    let check = |s: &Store| {
        let r = s.read().unwrap();
        for i in (0..n).step_by(10).take(50) {
            let kv = r.get(&key(i), 0).unwrap().unwrap();
            assert_eq!(kv.value, value(i, rounds, 500));
        }
    };
    check(&s);
    let snap = snapshot(&s);
    let h = s.hash().unwrap();
    drop(s);
    let s = Store::open(&path, small_opts()).unwrap();
    check(&s);
    assert_eq!(snapshot(&s), snap);
    assert_eq!(s.hash().unwrap(), h);
}

#[test]
fn defrag_waits_for_a_running_compaction_and_keeps_a_partial_one_resumable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let opts = StoreOptions {
        compaction_batch: 100,
        ..small_opts()
    };
    let s = Store::open(&path, opts.clone()).unwrap();
    for round in 0..5 {
        let mut w = s.write().unwrap();
        for i in 0..1000 {
            w.put(&key(i), &value(i, round, 100), 0).unwrap();
            w.end();
        }
        w.commit(round + 1, false).unwrap();
    }
    let mut w = s.write().unwrap();
    let job = w.compact(4001).unwrap();
    w.commit(6, false).unwrap();
    assert!(!job.run_steps(3).unwrap());
    let before = snapshot(&s);
    s.defragment().unwrap();
    assert_eq!(snapshot(&s), before);
    // The job goes on from where it stopped, on the new file.
    job.run().unwrap();
    assert_eq!(snapshot(&s), before);
    let h = s.hash().unwrap();
    drop(job);
    drop(s);
    let s = Store::open(&path, opts).unwrap();
    assert!(s.take_pending_compaction().is_none());
    assert_eq!(snapshot(&s), before);
    assert_eq!(s.hash().unwrap(), h);
}

#[test]
fn a_leftover_defrag_copy_is_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let s = Store::open(&path, small_opts()).unwrap();
    fill_delete_compact(&s, 2000, 100);
    let snap = snapshot(&s);
    let h = s.hash().unwrap();
    drop(s);
    // What a crash during the copy leaves: a partial file next to the database.
    let tmp = path.with_file_name("db.defrag.tmp");
    std::fs::write(&tmp, vec![0xAB; 100_000]).unwrap();
    let s = Store::open(&path, small_opts()).unwrap();
    assert!(!tmp.exists());
    assert_eq!(snapshot(&s), snap);
    assert_eq!(s.hash().unwrap(), h);
}

#[test]
#[ignore = "child process of a_crash_after_defrag_keeps_what_it_copied"]
fn child_defrag_then_crash() {
    let Ok(dir) = std::env::var(ENV_DIR) else {
        return;
    };
    let s = Store::open(&Path::new(&dir).join("db"), small_opts()).unwrap();
    let applied = fill_delete_compact(&s, 3000, 100);
    // Non-durable until the defrag.
    let mut w = s.write().unwrap();
    w.put(b"last", b"non-durable", 0).unwrap();
    w.end();
    w.commit(applied, false).unwrap();
    s.defragment().unwrap();
    // This one is lost: nothing durable after it.
    let mut w = s.write().unwrap();
    w.put(b"lost", b"x", 0).unwrap();
    w.end();
    w.commit(applied + 1, false).unwrap();
    std::process::abort();
}

#[test]
fn a_crash_after_defrag_keeps_what_it_copied() {
    let dir = tempfile::tempdir().unwrap();
    run_child("child_defrag_then_crash", dir.path());
    let s = Store::open(&dir.path().join("db"), small_opts()).unwrap();
    let r = s.read().unwrap();
    assert_eq!(r.get(b"last", 0).unwrap().unwrap().value, b"non-durable");
    assert_eq!(r.get(b"lost", 0).unwrap(), None);
    assert_eq!(
        r.range(&RangeOptions::range("key/", "key0")).unwrap().count,
        300
    );
    assert_eq!(s.durable_applied_index(), s.applied_index());
    assert_eq!(s.get_meta("caller/m").unwrap().unwrap(), b"meta value");
}

/// A redb in-memory backend shared between successive opens (a "disk" that outlives a store).
#[derive(Debug, Clone)]
struct SharedMem(Arc<redb::backends::InMemoryBackend>);

impl redb::StorageBackend for SharedMem {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.0.write(offset, data)
    }
}

#[test]
fn a_store_over_a_custom_backend_works_and_defrags_in_place() {
    let disk = SharedMem(Arc::new(redb::backends::InMemoryBackend::new()));
    let s = Store::open_with_backend("mem", disk.clone(), small_opts()).unwrap();
    fill_delete_compact(&s, 5000, 1000);
    let before = snapshot(&s);
    let h = s.hash().unwrap();
    let size_before = s.db_size();
    assert_eq!(size_before, redb::StorageBackend::len(&disk).unwrap());
    // A view open when the defrag starts: the in-place compaction waits for it.
    let view = s.read().unwrap();
    let rev = view.revision();
    let holder = thread::spawn(move || {
        thread::sleep(Duration::from_millis(300));
        let n = view
            .range(&RangeOptions::range("\0", "\0"))
            .unwrap()
            .kvs
            .len();
        drop(view);
        n
    });
    let stats = s.defragment().unwrap();
    assert_eq!(holder.join().unwrap(), 500);
    eprintln!("in-place defrag over a custom backend: {stats:?}");
    assert!(stats.took >= Duration::from_millis(250), "{stats:?}");
    assert!(stats.size_after * 2 < size_before, "{stats:?}");
    assert_eq!(s.db_size(), stats.size_after);
    assert_eq!(s.db_size(), redb::StorageBackend::len(&disk).unwrap());
    assert_eq!(snapshot(&s), before);
    assert_eq!(s.hash().unwrap(), h);
    assert_eq!(s.durable_applied_index(), s.applied_index());
    assert_eq!(s.current_revision(), rev);
    let mut w = s.write().unwrap();
    w.put(b"after", b"x", 0).unwrap();
    w.end();
    w.commit(before.applied + 1, true).unwrap();
    let after = snapshot(&s);
    drop(s);
    let s = Store::open_with_backend("mem", disk, small_opts()).unwrap();
    assert_eq!(snapshot(&s), after);
}
