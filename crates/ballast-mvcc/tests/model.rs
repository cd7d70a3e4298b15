//! Model test: random puts / deletes / multi-op txns / ranges (at random revisions, with every
//! option) / compactions / commits / reopens against a naive model that keeps a full snapshot of
//! the key space for every revision.

use std::collections::BTreeMap;

use ballast_mvcc::*;
use proptest::prelude::*;

type State = BTreeMap<Vec<u8>, KeyValue>;

#[derive(Clone, Debug)]
struct Spec {
    key: u8,
    end: u8,
    rev_back: i64,
    limit: i64,
    order: u8,
    target: u8,
    keys_only: bool,
    count_only: bool,
    filter: (u8, i64),
}

#[derive(Clone, Debug)]
enum Op {
    Put(u8, u8, i64),
    Del(u8, u8),
    Txn(Vec<(bool, u8, u8)>, Spec),
    Read(Spec),
    ReadInTxn(Spec),
    Compact(i64),
    Commit,
    RunJobs,
    Reopen,
}

fn key(i: u8) -> Vec<u8> {
    vec![b'a' + i]
}

/// 0 -> single key, 1 -> "\0" (all >= key), else key b'a' + e - 2.
fn end(e: u8) -> Vec<u8> {
    match e {
        0 => vec![],
        1 => vec![0],
        e => vec![b'a' + e - 2],
    }
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        (0u8..6, 0u8..9, -1i64..8, 0i64..5),
        (0u8..3, 0u8..5, any::<bool>(), prop::bool::weighted(0.1)),
        (0u8..5, 0i64..20),
    )
        .prop_map(
            |((key, end, rev_back, limit), (order, target, keys_only, count_only), filter)| Spec {
                key,
                end,
                rev_back,
                limit,
                order,
                target,
                keys_only,
                count_only,
                filter,
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..6, 0u8..4, 0i64..3).prop_map(|(k, v, l)| Op::Put(k, v, l)),
        2 => (0u8..6, 0u8..9).prop_map(|(k, e)| Op::Del(k, e)),
        2 => (prop::collection::vec((any::<bool>(), 0u8..6, 0u8..9), 0..5), spec())
            .prop_map(|(ops, s)| Op::Txn(ops, s)),
        4 => spec().prop_map(Op::Read),
        1 => spec().prop_map(Op::ReadInTxn),
        1 => (0i64..6).prop_map(Op::Compact),
        2 => Just(Op::Commit),
        1 => Just(Op::RunJobs),
        1 => Just(Op::Reopen),
    ]
}

fn options(s: &Spec, cur: i64) -> RangeOptions {
    let mut o = RangeOptions::range(key(s.key), end(s.end));
    o.revision = if s.rev_back < 0 {
        cur + 1
    } else if s.rev_back == 0 {
        0
    } else {
        cur - s.rev_back + 1
    };
    o.limit = s.limit;
    o.sort_order = [SortOrder::None, SortOrder::Ascend, SortOrder::Descend][s.order as usize];
    o.sort_target = [
        SortTarget::Key,
        SortTarget::Version,
        SortTarget::Create,
        SortTarget::Mod,
        SortTarget::Value,
    ][s.target as usize];
    o.keys_only = s.keys_only;
    o.count_only = s.count_only;
    match s.filter.0 {
        1 => o.min_mod_revision = s.filter.1,
        2 => o.max_mod_revision = s.filter.1,
        3 => o.min_create_revision = s.filter.1,
        4 => o.max_create_revision = s.filter.1,
        _ => {}
    }
    o
}

fn in_range(k: &[u8], o: &RangeOptions) -> bool {
    if o.range_end.is_empty() {
        k == o.key.as_slice()
    } else if o.range_end == [0] {
        k >= o.key.as_slice()
    } else {
        k >= o.key.as_slice() && k < o.range_end.as_slice()
    }
}

/// The expected etcd answer computed from a full snapshot.
fn model_range(
    hist: &[State],
    cur: i64,
    compact: i64,
    o: &RangeOptions,
) -> Result<RangeResult, String> {
    if o.revision > cur {
        return Err("future".into());
    }
    let rev = if o.revision <= 0 { cur } else { o.revision };
    if rev < compact {
        return Err("compacted".into());
    }
    let all: Vec<KeyValue> = hist[rev as usize]
        .values()
        .filter(|kv| in_range(&kv.key, o))
        .cloned()
        .collect();
    let count = all.len() as i64;
    if o.count_only {
        return Ok(RangeResult {
            kvs: vec![],
            count,
            more: false,
            revision: cur,
        });
    }
    let everything = o.sort_order != SortOrder::None
        || o.min_mod_revision != 0
        || o.max_mod_revision != 0
        || o.min_create_revision != 0
        || o.max_create_revision != 0;
    let mut kvs: Vec<KeyValue> = if everything || o.limit <= 0 {
        all
    } else {
        all.into_iter().take(o.limit as usize + 1).collect()
    };
    kvs.retain(|kv| {
        (o.min_mod_revision == 0 || kv.mod_revision >= o.min_mod_revision)
            && (o.max_mod_revision == 0 || kv.mod_revision <= o.max_mod_revision)
            && (o.min_create_revision == 0 || kv.create_revision >= o.min_create_revision)
            && (o.max_create_revision == 0 || kv.create_revision <= o.max_create_revision)
    });
    let order = if o.sort_order == SortOrder::None && o.sort_target != SortTarget::Key {
        SortOrder::Ascend
    } else {
        o.sort_order
    };
    if order != SortOrder::None {
        let f = |kv: &KeyValue| -> (i64, Vec<u8>) {
            match o.sort_target {
                SortTarget::Key => (0, kv.key.clone()),
                SortTarget::Version => (kv.version, vec![]),
                SortTarget::Create => (kv.create_revision, vec![]),
                SortTarget::Mod => (kv.mod_revision, vec![]),
                SortTarget::Value => (0, kv.value.clone()),
            }
        };
        kvs.sort_by_key(f);
        if order == SortOrder::Descend {
            // Stable descending: reverse the order of groups, keep key order inside a group.
            kvs.sort_by_key(|kv| std::cmp::Reverse(f(kv)));
        }
    }
    let mut more = false;
    if o.limit > 0 && kvs.len() as i64 > o.limit {
        kvs.truncate(o.limit as usize);
        more = true;
    }
    if o.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok(RangeResult {
        kvs,
        count,
        more,
        revision: cur,
    })
}

fn err_str(e: MvccError) -> String {
    match e {
        MvccError::Compacted => "compacted".into(),
        MvccError::FutureRev => "future".into(),
        e => panic!("unexpected error {e}"),
    }
}

struct Model {
    /// hist[r] = key space at revision r (hist[0] is a placeholder).
    hist: Vec<State>,
    committed: i64,
    compact_committed: i64,
    compact_pending: i64,
}

impl Model {
    fn cur(&self) -> i64 {
        self.hist.len() as i64 - 1
    }

    fn put(&self, st: &mut State, rev: i64, k: &[u8], v: &[u8], lease: i64) -> Option<KeyValue> {
        let prev = st.get(k).cloned();
        let kv = KeyValue {
            key: k.to_vec(),
            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(0, |p| p.version) + 1,
            value: v.to_vec(),
            lease,
        };
        st.insert(k.to_vec(), kv);
        prev
    }

    fn del(&self, st: &mut State, k: &[u8], e: &[u8]) -> Vec<KeyValue> {
        let o = RangeOptions::range(k.to_vec(), e.to_vec());
        let victims: Vec<Vec<u8>> = st.keys().filter(|x| in_range(x, &o)).cloned().collect();
        victims.iter().map(|x| st.remove(x).unwrap()).collect()
    }
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut store = Store::open(
        &path,
        StoreOptions {
            compaction_batch: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let mut m = Model {
        hist: vec![State::new(), State::new()],
        committed: 1,
        compact_committed: -1,
        compact_pending: -1,
    };
    let mut jobs: Vec<CompactJob> = Vec::new();
    let mut applied = 0u64;
    let mut ops = ops.into_iter().peekable();
    while ops.peek().is_some() {
        let mut w = store.write().unwrap();
        let mut reopen = false;
        let mut pending_jobs = Vec::new();
        for op in ops.by_ref() {
            match op {
                Op::Put(k, v, l) => {
                    let rev = m.cur() + 1;
                    let mut st = m.hist.last().unwrap().clone();
                    let exp = m.put(&mut st, rev, &key(k), &[v], l);
                    assert_eq!(w.put(&key(k), &[v], l).unwrap(), exp);
                    let evs = w.end();
                    assert_eq!(evs.len(), 1);
                    assert_eq!(evs[0].kv, st[&key(k)]);
                    m.hist.push(st);
                    assert_eq!(w.revision(), m.cur());
                }
                Op::Del(k, e) => {
                    let mut st = m.hist.last().unwrap().clone();
                    let exp = m.del(&mut st, &key(k), &end(e));
                    assert_eq!(w.delete_range(&key(k), &end(e)).unwrap(), exp);
                    let evs = w.end();
                    assert_eq!(evs.len(), exp.len());
                    if !exp.is_empty() {
                        m.hist.push(st);
                    }
                    assert_eq!(w.revision(), m.cur());
                }
                Op::Txn(tops, s) => {
                    let rev = m.cur() + 1;
                    let mut st = m.hist.last().unwrap().clone();
                    let mut n_changes = 0;
                    for (is_put, k, e) in tops {
                        if is_put {
                            let exp = m.put(&mut st, rev, &key(k), &[e], 0);
                            assert_eq!(w.put(&key(k), &[e], 0).unwrap(), exp);
                            n_changes += 1;
                        } else {
                            let exp = m.del(&mut st, &key(k), &end(e));
                            assert_eq!(w.delete_range(&key(k), &end(e)).unwrap(), exp);
                            n_changes += exp.len();
                        }
                    }
                    // A read inside the txn sees its own writes (at rev if it changed anything).
                    let read_cur = if n_changes > 0 { rev } else { rev - 1 };
                    let o = options(&s, read_cur);
                    let mut hist_view = m.hist.clone();
                    if n_changes > 0 {
                        hist_view.push(st.clone());
                    }
                    let exp = model_range(&hist_view, read_cur, m.compact_pending, &o);
                    assert_eq!(w.range(&o).map_err(err_str), exp, "{o:?}");
                    let evs = w.end();
                    assert_eq!(evs.len(), n_changes);
                    if n_changes > 0 {
                        m.hist.push(st);
                    }
                    assert_eq!(w.revision(), m.cur());
                }
                Op::ReadInTxn(s) => {
                    let o = options(&s, m.cur());
                    let exp = model_range(&m.hist, m.cur(), m.compact_pending, &o);
                    assert_eq!(w.range(&o).map_err(err_str), exp, "{o:?}");
                }
                Op::Read(s) => {
                    let v = store.read().unwrap();
                    assert_eq!(v.revision(), m.committed);
                    let o = options(&s, m.committed);
                    let exp = model_range(&m.hist, m.committed, m.compact_committed, &o);
                    assert_eq!(v.range(&o).map_err(err_str), exp, "{o:?}");
                }
                Op::Compact(back) => {
                    let rev = m.cur() - back + 1;
                    match w.compact(rev) {
                        Ok(job) => {
                            assert!(rev > m.compact_pending && rev <= m.cur());
                            m.compact_pending = rev;
                            pending_jobs.push(job);
                        }
                        Err(MvccError::Compacted) => assert!(rev <= m.compact_pending),
                        Err(MvccError::FutureRev) => assert!(rev > m.cur()),
                        Err(e) => panic!("{e}"),
                    }
                }
                Op::Commit => break,
                Op::RunJobs => {
                    for j in jobs.drain(..) {
                        j.run().unwrap();
                    }
                }
                Op::Reopen => {
                    reopen = true;
                    break;
                }
            }
        }
        applied += 1;
        w.commit(applied, applied.is_multiple_of(3)).unwrap();
        m.committed = m.cur();
        m.compact_committed = m.compact_pending;
        jobs.append(&mut pending_jobs);
        assert_eq!(store.current_revision(), m.committed);
        assert_eq!(store.compact_revision(), m.compact_committed);
        if reopen {
            // Half of the time finish the jobs, else leave them to open().
            let finish = applied.is_multiple_of(2);
            for j in jobs.drain(..) {
                if finish {
                    j.run().unwrap();
                }
            }
            drop(store);
            store = Store::open(
                &path,
                StoreOptions {
                    compaction_batch: 2,
                    ..Default::default()
                },
            )
            .unwrap();
            assert_eq!(store.current_revision(), m.committed);
            assert_eq!(store.compact_revision(), m.compact_committed);
            assert_eq!(store.applied_index(), applied);
            if let Some(j) = store.take_pending_compaction() {
                jobs.push(j);
            }
        }
    }
    // Final check: every readable revision equals the model.
    for j in jobs.drain(..) {
        j.run().unwrap();
    }
    let v = store.read().unwrap();
    for rev in m.compact_committed.max(1)..=m.committed {
        let mut o = RangeOptions::range(vec![0], vec![0]);
        o.revision = rev;
        let exp = model_range(&m.hist, m.committed, m.compact_committed, &o).unwrap();
        assert_eq!(v.range(&o).unwrap(), exp, "rev {rev}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    #[test]
    fn store_matches_model(ops in prop::collection::vec(op(), 1..80)) {
        run(ops);
    }
}
