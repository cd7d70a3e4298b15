//! Store-level unit tests: every semantic of the crate docs.

use std::path::Path;

use crate::store::test_support::{backend_rows, collect};
use crate::*;

fn open(dir: &Path) -> Store {
    Store::open(&dir.join("db"), StoreOptions::default()).unwrap()
}

fn put(s: &Store, k: &str, v: &str) -> i64 {
    let mut w = s.write().unwrap();
    w.put(k.as_bytes(), v.as_bytes(), 0).unwrap();
    w.end();
    let rev = w.revision();
    let idx = s.applied_index() + 1;
    w.commit(idx, false).unwrap();
    rev
}

fn del(s: &Store, k: &str, end: &str) -> (usize, i64) {
    let mut w = s.write().unwrap();
    let n = w.delete_range(k.as_bytes(), end.as_bytes()).unwrap().len();
    w.end();
    let rev = w.revision();
    let idx = s.applied_index() + 1;
    w.commit(idx, false).unwrap();
    (n, rev)
}

fn get(s: &Store, k: &str) -> Option<KeyValue> {
    let r = s.read().unwrap().range(&RangeOptions::key(k)).unwrap();
    assert!(r.kvs.len() <= 1);
    r.kvs.into_iter().next()
}

fn get_at(s: &Store, k: &str, rev: i64) -> Result<Option<KeyValue>, MvccError> {
    let mut o = RangeOptions::key(k);
    o.revision = rev;
    s.read()
        .unwrap()
        .range(&o)
        .map(|r| r.kvs.into_iter().next())
}

fn keys(r: &RangeResult) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect()
}

#[test]
fn types_are_send_sync() {
    fn ss<T: Send + Sync>() {}
    ss::<Store>();
    ss::<ReadView>();
    ss::<CompactJob>();
    fn send<T: Send>() {}
    send::<WriteTxn<'static>>();
}

#[test]
fn second_writer_waits() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    let w = s.write().unwrap();
    let s2 = s.clone();
    let t = std::thread::spawn(move || put(&s2, "b", "1"));
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(!t.is_finished());
    drop(w);
    assert_eq!(t.join().unwrap(), 2);
}

#[test]
fn revisions_versions_and_generations() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    assert_eq!(s.current_revision(), 1);
    assert_eq!(s.compact_revision(), -1);
    assert_eq!(put(&s, "a", "1"), 2);
    assert_eq!(put(&s, "a", "2"), 3);
    let kv = get(&s, "a").unwrap();
    assert_eq!(
        (
            kv.create_revision,
            kv.mod_revision,
            kv.version,
            &kv.value[..]
        ),
        (2, 3, 2, &b"2"[..])
    );
    // Delete of nothing: no revision.
    assert_eq!(del(&s, "zz", ""), (0, 3));
    assert_eq!(s.current_revision(), 3);
    assert_eq!(del(&s, "a", ""), (1, 4));
    assert_eq!(get(&s, "a"), None);
    // Recreate: version 1, new create revision.
    assert_eq!(put(&s, "a", "3"), 5);
    let kv = get(&s, "a").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
    // History.
    assert_eq!(get_at(&s, "a", 2).unwrap().unwrap().value, b"1");
    assert_eq!(get_at(&s, "a", 3).unwrap().unwrap().version, 2);
    assert_eq!(get_at(&s, "a", 4).unwrap(), None);
    assert_eq!(get_at(&s, "a", 1).unwrap(), None);
    assert!(matches!(get_at(&s, "a", 6), Err(MvccError::FutureRev)));
    assert_eq!(get_at(&s, "a", 0).unwrap().unwrap().version, 1);
    assert_eq!(get_at(&s, "a", -3).unwrap().unwrap().version, 1);
}

#[test]
fn put_returns_prev_and_lease() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    let mut w = s.write().unwrap();
    assert_eq!(w.put(b"k", b"v1", 7).unwrap(), None);
    w.end();
    let prev = w.put(b"k", b"v2", 0).unwrap().unwrap();
    assert_eq!(
        (prev.lease, prev.version, &prev.value[..]),
        (7, 1, &b"v1"[..])
    );
    let evs = w.end();
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].kind, EventKind::Put);
    assert_eq!(evs[0].kv.version, 2);
    assert_eq!(evs[0].kv.mod_revision, 3);
    assert_eq!(evs[0].prev_kv.as_ref().unwrap().value, b"v1");
    w.commit(1, true).unwrap();
    assert_eq!(s.current_revision(), 3);
    assert_eq!(s.applied_index(), 1);
    assert_eq!(s.durable_applied_index(), 1);
}

#[test]
fn txn_one_revision_sub_revisions_and_own_writes() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    put(&s, "x", "0"); // rev 2
    let mut w = s.write().unwrap();
    // A read-only etcd txn: no revision.
    let r = w.range(&RangeOptions::key("x")).unwrap();
    assert_eq!((r.kvs.len(), r.revision), (1, 2));
    assert!(w.end().is_empty());
    assert_eq!(w.revision(), 2);
    // A txn: put a, put b, delete x, read back, put a again.
    w.put(b"a", b"1", 0).unwrap();
    let r = w.range(&RangeOptions::range("a", "c")).unwrap();
    assert_eq!(keys(&r), vec!["a"]);
    assert_eq!(r.revision, 3);
    w.put(b"b", b"1", 0).unwrap();
    assert_eq!(w.delete_range(b"x", b"").unwrap().len(), 1);
    let r = w.range(&RangeOptions::range("\0", "\0")).unwrap();
    assert_eq!(keys(&r), vec!["a", "b"]);
    let prev = w.put(b"a", b"2", 0).unwrap().unwrap();
    assert_eq!((prev.mod_revision, prev.version), (3, 1));
    // Range at a future revision inside the txn: current is 3 now.
    let mut o = RangeOptions::key("a");
    o.revision = 3;
    assert_eq!(w.range(&o).unwrap().kvs[0].version, 2);
    o.revision = 4;
    assert!(matches!(w.range(&o), Err(MvccError::FutureRev)));
    let evs = w.end();
    assert_eq!(w.revision(), 3);
    assert_eq!(evs.len(), 4);
    assert_eq!(evs[2].kind, EventKind::Delete);
    assert_eq!(evs[2].kv.key, b"x");
    assert_eq!(evs[2].kv.mod_revision, 3);
    assert_eq!(evs[2].kv.version, 0);
    assert_eq!(evs[2].prev_kv.as_ref().unwrap().value, b"0");
    // Readers do not see the batch before commit.
    assert_eq!(s.current_revision(), 2);
    assert_eq!(get(&s, "a"), None);
    // A second etcd txn in the same batch.
    w.put(b"c", b"1", 0).unwrap();
    w.end();
    w.commit(10, false).unwrap();
    assert_eq!(s.current_revision(), 4);
    assert_eq!(s.applied_index(), 10);
    assert_eq!(s.durable_applied_index(), 0);
    let kv = get(&s, "a").unwrap();
    assert_eq!(
        (kv.mod_revision, kv.version, &kv.value[..]),
        (3, 2, &b"2"[..])
    );
    assert_eq!(get(&s, "x"), None);
    assert_eq!(get_at(&s, "x", 2).unwrap().unwrap().value, b"0");
    let rows = backend_rows(&s);
    assert_eq!(
        rows,
        vec![
            Revision::new(2, 0),
            Revision::new(3, 0),
            Revision::new(3, 1),
            Revision::new(3, 2),
            Revision::new(3, 3),
            Revision::new(4, 0)
        ]
    );
}

#[test]
fn dropped_batch_rolls_back() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    put(&s, "a", "1");
    put(&s, "b", "1");
    let before = collect(&s, i64::MAX);
    {
        let mut w = s.write().unwrap();
        w.put(b"a", b"2", 0).unwrap();
        w.delete_range(b"b", b"").unwrap();
        w.end();
        w.put(b"c", b"1", 0).unwrap();
        w.delete_range(b"a", b"").unwrap();
        w.end();
        w.put(b"a", b"9", 0).unwrap();
        // dropped
    }
    assert_eq!(collect(&s, i64::MAX), before);
    assert_eq!(s.current_revision(), 3);
    assert_eq!(put(&s, "a", "3"), 4);
    assert_eq!(get(&s, "a").unwrap().version, 2);
}

fn fill(s: &Store) {
    // rev 2..=7: a b c d e f with values making sort orders interesting.
    for (k, v) in [
        ("a", "5"),
        ("b", "3"),
        ("c", "9"),
        ("d", "1"),
        ("e", "7"),
        ("f", "2"),
    ] {
        put(s, k, v);
    }
    put(s, "b", "4"); // 8: b version 2
    put(s, "d", "0"); // 9
    put(s, "d", "8"); // 10: d version 3
}

#[test]
fn range_end_rules_limit_count_more() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    fill(&s);
    let v = s.read().unwrap();
    let all = v.range(&RangeOptions::range("\0", "\0")).unwrap();
    assert_eq!(keys(&all), ["a", "b", "c", "d", "e", "f"]);
    assert_eq!((all.count, all.more, all.revision), (6, false, 10));
    let from_c = v.range(&RangeOptions::range("c", "\0")).unwrap();
    assert_eq!(keys(&from_c), ["c", "d", "e", "f"]);
    let span = v.range(&RangeOptions::range("b", "e")).unwrap();
    assert_eq!(keys(&span), ["b", "c", "d"]);
    let empty = v.range(&RangeOptions::range("e", "b")).unwrap();
    assert_eq!((empty.kvs.len(), empty.count), (0, 0));
    let single = v.range(&RangeOptions::key("c")).unwrap();
    assert_eq!((keys(&single), single.count), (vec!["c".to_string()], 1));
    let missing = v.range(&RangeOptions::key("zz")).unwrap();
    assert_eq!(
        (missing.kvs.len(), missing.count, missing.more),
        (0, 0, false)
    );

    let mut o = RangeOptions::range("a", "\0");
    o.limit = 2;
    let r = v.range(&o).unwrap();
    assert_eq!(
        (keys(&r), r.count, r.more),
        (vec!["a".into(), "b".into()], 6, true)
    );
    o.limit = 6;
    let r = v.range(&o).unwrap();
    assert_eq!((r.kvs.len(), r.count, r.more), (6, 6, false));
    o.limit = 5;
    assert!(v.range(&o).unwrap().more);
    o.limit = -1;
    assert_eq!(v.range(&o).unwrap().kvs.len(), 6);

    // count_only: no kvs, never more.
    let mut o = RangeOptions::range("a", "\0");
    o.count_only = true;
    o.limit = 1;
    let r = v.range(&o).unwrap();
    assert_eq!((r.kvs.len(), r.count, r.more), (0, 6, false));

    // keys_only.
    let mut o = RangeOptions::range("a", "c");
    o.keys_only = true;
    let r = v.range(&o).unwrap();
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty() && kv.version > 0));

    // At an old revision.
    let mut o = RangeOptions::range("a", "\0");
    o.revision = 4;
    let r = v.range(&o).unwrap();
    assert_eq!(
        (keys(&r), r.count, r.revision),
        (vec!["a".into(), "b".into(), "c".into()], 3, 10)
    );
}

#[test]
fn range_filters_count_and_more() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    fill(&s);
    let v = s.read().unwrap();
    // mod revisions: a2 b8 c4 d10 e6 f7; create: a2 b3 c4 d5 e6 f7
    let mut o = RangeOptions::range("a", "\0");
    o.min_mod_revision = 5;
    let r = v.range(&o).unwrap();
    assert_eq!(keys(&r), ["b", "d", "e", "f"]);
    assert_eq!((r.count, r.more), (6, false));
    o.limit = 2;
    let r = v.range(&o).unwrap();
    assert_eq!(keys(&r), ["b", "d"]);
    assert_eq!((r.count, r.more), (6, true));
    o.limit = 4;
    let r = v.range(&o).unwrap();
    assert_eq!((r.kvs.len(), r.count, r.more), (4, 6, false));

    let mut o = RangeOptions::range("a", "\0");
    o.max_mod_revision = 6;
    assert_eq!(keys(&v.range(&o).unwrap()), ["a", "c", "e"]);
    let mut o = RangeOptions::range("a", "\0");
    o.min_create_revision = 4;
    o.max_create_revision = 6;
    assert_eq!(keys(&v.range(&o).unwrap()), ["c", "d", "e"]);
    o.count_only = true;
    let r = v.range(&o).unwrap();
    assert_eq!((r.kvs.len(), r.count), (0, 6));
}

#[test]
fn range_sorts() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    fill(&s);
    let v = s.read().unwrap();
    let run = |order, target, limit| {
        let mut o = RangeOptions::range("a", "\0");
        o.sort_order = order;
        o.sort_target = target;
        o.limit = limit;
        let r = v.range(&o).unwrap();
        (keys(&r).concat(), r.more, r.count)
    };
    use SortOrder as O;
    use SortTarget as T;
    assert_eq!(run(O::None, T::Key, 0).0, "abcdef");
    assert_eq!(run(O::Ascend, T::Key, 0).0, "abcdef");
    assert_eq!(run(O::Descend, T::Key, 0).0, "fedcba");
    assert_eq!(run(O::Descend, T::Key, 2), ("fe".into(), true, 6));
    // values: a5 b4 c9 d8 e7 f2
    assert_eq!(run(O::Ascend, T::Value, 0).0, "fbaedc");
    assert_eq!(run(O::Descend, T::Value, 0).0, "cdeabf");
    // versions: a1 b2 c1 d3 e1 f1 (ties keep key order)
    assert_eq!(run(O::Ascend, T::Version, 0).0, "acefbd");
    assert_eq!(run(O::Descend, T::Version, 0).0, "dbacef");
    // mod: a2 b8 c4 d10 e6 f7
    assert_eq!(run(O::Ascend, T::Mod, 0).0, "acefbd");
    assert_eq!(run(O::Descend, T::Mod, 3), ("dbf".into(), true, 6));
    // create: a2 b3 c4 d5 e6 f7
    assert_eq!(run(O::Descend, T::Create, 0).0, "fedcba");
    assert_eq!(run(O::Ascend, T::Create, 0).0, "abcdef");
    // etcd quirk: order NONE + target != KEY sorts ascending, but only over the limit+1 keys
    // fetched in key order (a, b, c): by mod a2 c4 b8 -> "ac", more.
    assert_eq!(run(O::None, T::Mod, 2), ("ac".into(), true, 6));
    // With an explicit order everything is fetched first: a2 c4 e6 -> "ac".
    assert_eq!(run(O::Ascend, T::Mod, 2), ("ac".into(), true, 6));
    assert_eq!(run(O::None, T::Value, 2), ("ba".into(), true, 6));
    assert_eq!(run(O::Ascend, T::Value, 2), ("fb".into(), true, 6));
}

#[test]
fn compaction_semantics_and_physical_removal() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    put(&s, "a", "1"); // 2
    put(&s, "a", "2"); // 3
    put(&s, "b", "1"); // 4
    del(&s, "b", ""); // 5
    put(&s, "c", "1"); // 6
    put(&s, "a", "3"); // 7
    del(&s, "c", ""); // 8
    put(&s, "c", "2"); // 9

    let mut w = s.write().unwrap();
    assert!(matches!(w.compact(10), Err(MvccError::FutureRev)));
    let job = w.compact(6).unwrap();
    // Not runnable before commit.
    assert!(matches!(
        job.run(),
        Err(MvccError::CompactionNotCommitted(6))
    ));
    // Inside the batch the compaction is already in effect.
    let mut o = RangeOptions::key("a");
    o.revision = 5;
    assert!(matches!(w.range(&o), Err(MvccError::Compacted)));
    assert!(matches!(w.compact(6), Err(MvccError::Compacted)));
    // A view taken before the commit still reads old revisions.
    let old_view = s.read().unwrap();
    assert_eq!(old_view.range(&o).unwrap().kvs[0].value, b"2");
    w.commit(1, false).unwrap();
    assert_eq!(s.compact_revision(), 6);
    assert_eq!(s.current_revision(), 9);
    // Logical effect immediately, before the physical job.
    assert!(matches!(get_at(&s, "a", 5), Err(MvccError::Compacted)));
    // Reading AT the compact revision is allowed.
    assert_eq!(get_at(&s, "a", 6).unwrap().unwrap().value, b"2");
    assert_eq!(get_at(&s, "c", 6).unwrap().unwrap().value, b"1");
    assert_eq!(get_at(&s, "b", 6).unwrap(), None);
    job.run().unwrap();
    job.run().unwrap(); // idempotent
    drop(job);
    // a: keep 3 (latest <= 6), drop 2; b: put 4 + tombstone 5 gone; c: 6 kept.
    let rows: Vec<i64> = backend_rows(&s).iter().map(|r| r.main).collect();
    assert_eq!(rows, vec![3, 6, 7, 8, 9]);
    assert_eq!(get_at(&s, "a", 6).unwrap().unwrap().version, 2);
    assert_eq!(get_at(&s, "c", 7).unwrap().unwrap().create_revision, 6);
    assert_eq!(get_at(&s, "c", 8).unwrap(), None);
    assert_eq!(get(&s, "c").unwrap().version, 1);
    // The old view: its revision (9) is >= 6, still fine.
    assert_eq!(
        old_view.range(&RangeOptions::key("a")).unwrap().kvs[0].value,
        b"3"
    );

    let mut w = s.write().unwrap();
    assert!(matches!(w.compact(6), Err(MvccError::Compacted)));
    assert!(matches!(w.compact(3), Err(MvccError::Compacted)));
    // Compact at the current revision, including a tombstone at exactly C.
    let job = w.compact(9).unwrap();
    w.commit(2, true).unwrap();
    job.run().unwrap();
    drop(job);
    let rows: Vec<i64> = backend_rows(&s).iter().map(|r| r.main).collect();
    assert_eq!(rows, vec![7, 9]);
    assert_eq!(
        keys(
            &s.read()
                .unwrap()
                .range(&RangeOptions::range("\0", "\0"))
                .unwrap()
        ),
        ["a", "c"]
    );
    // The store revision survives even though every row of it could be compacted.
    del(&s, "a", "\0"); // 10
    let mut w = s.write().unwrap();
    let job = w.compact(10).unwrap();
    w.commit(3, true).unwrap();
    job.run().unwrap();
    assert!(backend_rows(&s).is_empty());
    assert_eq!(s.current_revision(), 10);
    drop((job, old_view));
    drop(s);
    let s = open(d.path());
    assert_eq!(s.current_revision(), 10);
    assert_eq!(s.compact_revision(), 10);
    assert_eq!(put(&s, "z", "1"), 11);
}

#[test]
fn compact_on_fresh_store_like_etcd() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    let mut w = s.write().unwrap();
    assert!(matches!(w.compact(2), Err(MvccError::FutureRev)));
    w.compact(1).unwrap().revision();
    w.commit(1, false).unwrap();
    assert_eq!(s.compact_revision(), 1);
    assert_eq!(get_at(&s, "a", 1).unwrap(), None);
}

#[test]
fn reopen_rebuilds_index() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    fill(&s);
    del(&s, "c", "e"); // 11
    put(&s, "c", "again"); // 12
    let mut w = s.write().unwrap();
    w.put_meta("term", b"7");
    w.commit(99, true).unwrap();
    let snapshot = |s: &Store| -> Vec<RangeResult> {
        (1..=12)
            .map(|rev| {
                let mut o = RangeOptions::range("\0", "\0");
                o.revision = rev;
                s.read().unwrap().range(&o).unwrap()
            })
            .collect()
    };
    let before = snapshot(&s);
    let idx_before = collect(&s, 12);
    drop(s);
    let s = open(d.path());
    assert_eq!(s.current_revision(), 12);
    assert_eq!(s.applied_index(), 99);
    assert_eq!(s.durable_applied_index(), 99);
    assert_eq!(s.get_meta("term").unwrap().unwrap(), b"7");
    assert_eq!(s.get_meta("nope").unwrap(), None);
    assert_eq!(snapshot(&s), before);
    assert_eq!(collect(&s, 12), idx_before);
}

#[test]
fn interrupted_compaction_resumes_on_open() {
    let d = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        compaction_batch: 3,
        ..Default::default()
    };
    let s = Store::open(&d.path().join("db"), opts.clone()).unwrap();
    for i in 0..20 {
        put(&s, &format!("k{}", i % 4), &i.to_string());
    }
    del(&s, "k1", ""); // 22
    put(&s, "k9", "x"); // 23
    let expect = |s: &Store| {
        let mut o = RangeOptions::range("\0", "\0");
        o.revision = 22;
        s.read().unwrap().range(&o).unwrap()
    };
    let before = expect(&s);
    let mut w = s.write().unwrap();
    let job = w.compact(22).unwrap();
    w.commit(1, true).unwrap();
    assert!(!job.run_steps(2).unwrap());
    let n_partial = backend_rows(&s).len();
    assert!(n_partial < 22 && n_partial > 4);
    drop(job);
    drop(s); // "crash" between batches (the finished mark is not written)
    let s = Store::open(&d.path().join("db"), opts).unwrap();
    assert_eq!(s.compact_revision(), 22);
    assert_eq!(expect(&s), before);
    let job = s.take_pending_compaction().unwrap();
    assert!(s.take_pending_compaction().is_none());
    assert_eq!(job.revision(), 22);
    job.run().unwrap();
    // k0, k2, k3 latest + k9.
    assert_eq!(backend_rows(&s).len(), 4);
    assert_eq!(expect(&s), before);
    drop(job);
    drop(s);
    let s = open(d.path());
    assert!(s.take_pending_compaction().is_none());
}

#[test]
fn hash_kv_deterministic() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let s1 = open(d1.path());
    let s2 = open(d2.path());
    for s in [&s1, &s2] {
        fill(s);
        del(s, "a", "");
    }
    let h1 = s1.hash_kv(0).unwrap();
    assert_eq!(h1, s2.hash_kv(0).unwrap());
    assert_eq!(h1.1, -1);
    assert_eq!(h1.2, 11);
    assert_eq!(s1.hash_kv(5).unwrap(), s2.hash_kv(5).unwrap());
    assert_ne!(s1.hash_kv(5).unwrap().0, h1.0);
    assert!(matches!(s1.hash_kv(12), Err(MvccError::FutureRev)));
    // Physical compaction progress does not matter, only the compact revision.
    for (i, s) in [&s1, &s2].into_iter().enumerate() {
        let mut w = s.write().unwrap();
        let job = w.compact(6).unwrap();
        w.commit(1, false).unwrap();
        if i == 0 {
            job.run().unwrap();
        }
    }
    assert_eq!(s1.hash_kv(0).unwrap(), s2.hash_kv(0).unwrap());
    assert!(matches!(s1.hash_kv(6), Err(MvccError::Compacted)));
    put(&s2, "zz", "1");
    assert_ne!(s1.hash_kv(0).unwrap().0, s2.hash_kv(0).unwrap().0);
}

#[test]
fn events_for_watch_catch_up() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    put(&s, "a", "1"); // 2
    let mut w = s.write().unwrap();
    w.put(b"a", b"2", 0).unwrap();
    w.put(b"b", b"1", 0).unwrap();
    w.end(); // 3
    w.delete_range(b"a", b"c").unwrap();
    let live = w.end(); // 4
    w.commit(1, false).unwrap();
    let v = s.read().unwrap();
    let (evs, last) = v.events(2, 100, 1000, true).unwrap();
    assert_eq!(last, 4);
    assert_eq!(evs.len(), 5);
    assert_eq!(evs[0].kv.mod_revision, 2);
    assert_eq!(evs[0].prev_kv, None);
    assert_eq!(evs[1].prev_kv.as_ref().unwrap().value, b"1");
    assert_eq!(&evs[3..], &live[..]);
    // Never split a revision.
    let (evs, last) = v.events(2, 100, 2, false).unwrap();
    assert_eq!((evs.len(), last), (3, 3));
    let (evs, last) = v.events(5, 100, 2, false).unwrap();
    assert_eq!((evs.len(), last), (0, 4));
    let mut w = s.write().unwrap();
    w.compact(3).unwrap();
    w.commit(2, false).unwrap();
    assert!(matches!(
        v.events(2, 4, 10, false),
        Err(MvccError::Compacted)
    ));
    assert_eq!(v.events(3, 4, 10, false).unwrap().0.len(), 4);
}

#[test]
fn filtered_catch_up_scan_matches_the_full_one() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    // A history where wanted keys change several times, are deleted and come back, mixed
    // with unwanted keys.
    let mut w = s.write().unwrap();
    for i in 0..60u32 {
        let k = format!("k{}", i % 4);
        if i % 7 == 6 {
            w.delete_range(k.as_bytes(), b"").unwrap();
        } else {
            w.put(k.as_bytes(), format!("v{i}").as_bytes(), 0).unwrap();
        }
        w.put(format!("other{i}").as_bytes(), b"x", 0).unwrap();
        w.end();
    }
    w.commit(1, false).unwrap();
    let v = s.read().unwrap();
    let wanted = |k: &[u8]| k.starts_with(b"k") && k != b"k3";
    let (all, all_last) = v.events(5, 1000, usize::MAX, true).unwrap();
    let (got, last) = v
        .events_matching(5, 1000, usize::MAX, usize::MAX, |k| {
            wanted(k).then_some(true)
        })
        .unwrap();
    assert_eq!(last, all_last);
    let expect: Vec<_> = all.iter().filter(|e| wanted(&e.kv.key)).cloned().collect();
    assert!(expect.len() > 20, "the history has wanted events");
    assert_eq!(
        got, expect,
        "same events and the same prev_kv as a lookup per event"
    );
    // Limits: at most 5 wanted events, whole revisions; then resuming gives the rest.
    let mut resumed = Vec::new();
    let mut from = 5;
    loop {
        let (part, last) = v
            .events_matching(from, 1000, 5, 16, |k| wanted(k).then_some(true))
            .unwrap();
        assert!(part.len() <= 5);
        resumed.extend(part);
        if last >= v.revision() {
            break;
        }
        assert!(last >= from, "every step advances");
        from = last + 1;
    }
    assert_eq!(resumed, expect);
    // Without prev_kv nothing carries a previous version.
    let (got, _) = v
        .events_matching(5, 1000, usize::MAX, usize::MAX, |k| {
            wanted(k).then_some(false)
        })
        .unwrap();
    assert!(got.iter().all(|e| e.prev_kv.is_none()));
    assert_eq!(got.len(), expect.len());
}

#[test]
fn meta_in_batches() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    let mut w = s.write().unwrap();
    w.put_meta("members", b"m1");
    assert_eq!(w.get_meta("members").unwrap().unwrap(), b"m1");
    assert_eq!(s.get_meta("members").unwrap(), None);
    w.commit(5, false).unwrap();
    assert_eq!(s.get_meta("members").unwrap().unwrap(), b"m1");
    let v = s.read().unwrap();
    let mut w = s.write().unwrap();
    w.delete_meta("members");
    assert_eq!(w.get_meta("members").unwrap(), None);
    w.commit(6, false).unwrap();
    assert_eq!(s.get_meta("members").unwrap(), None);
    assert_eq!(v.get_meta("members").unwrap().unwrap(), b"m1");
    assert!(s.db_size() > 0);
    assert!(s.db_size_in_use() <= s.db_size());
}

#[test]
fn meta_prefix_scan() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("db"), StoreOptions::default()).unwrap();
    let mut w = s.write().unwrap();
    w.put_meta("lease/b", b"2");
    w.put_meta("lease/a", b"1");
    w.put_meta("leasf", b"x");
    w.put_meta("leas", b"y");
    w.commit(1, false).unwrap();
    let got = s.read().unwrap().meta_with_prefix("lease/").unwrap();
    assert_eq!(
        got,
        vec![
            ("lease/a".to_string(), b"1".to_vec()),
            ("lease/b".to_string(), b"2".to_vec())
        ]
    );
    let mut w = s.write().unwrap();
    w.delete_meta("lease/a");
    w.commit(2, false).unwrap();
    assert_eq!(
        s.read().unwrap().meta_with_prefix("lease/").unwrap().len(),
        1
    );
    assert!(s.read().unwrap().meta_with_prefix("zz").unwrap().is_empty());
}

/// A crash while a new database is created leaves a `.creating` file with anything in it (here:
/// a length whose header never reached the disk). The next open removes it and creates the
/// database whole; a created database never has that file beside it.
#[test]
fn an_interrupted_creation_is_removed_and_the_database_created_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let leftover = dir.path().join("db.creating");
    std::fs::write(&leftover, vec![0u8; 8192]).unwrap();
    let s = Store::open(&path, StoreOptions::default()).unwrap();
    assert!(!leftover.exists(), "the interrupted creation is removed");
    assert!(path.exists());
    assert_eq!(put(&s, "a", "1"), 2);
    drop(s);
    let s = Store::open(&path, StoreOptions::default()).unwrap();
    assert_eq!(s.current_revision(), 2);
    assert!(!leftover.exists());
}
