//! KV compatibility: the same scripts against a reference etcd 3.4 and the candidate (Ballast, or a
//! second etcd with `BALLAST_COMPAT_SELFTEST=1`), every answer compared field by field after zeroing
//! `cluster_id`/`member_id`/`raft_term`; errors compared by gRPC code and exact message.
//!
//! Each test starts its own fresh server pair and runs its scripts one after another (each script on a
//! fresh key prefix, revisions relative to the script's start). The `expect`-style checks on each step
//! pin down what etcd 3.4 answers, so the scripts double as a record of etcd's behaviour.
//! `BALLAST_COMPAT_DUMP=1` prints every op with the reference answer.

use ballast_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use ballast_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use ballast_proto::etcdserverpb::request_op::Request;
use ballast_proto::etcdserverpb::RequestOp;
use ballast_tests::script::*;
use tonic::Code;

const EQUAL: CompareResult = CompareResult::Equal;
const GREATER: CompareResult = CompareResult::Greater;
const LESS: CompareResult = CompareResult::Less;
const NOT_EQUAL: CompareResult = CompareResult::NotEqual;
const ALL_RESULTS: [CompareResult; 4] = [EQUAL, GREATER, LESS, NOT_EQUAL];

use ballast_tests::etcd_errors::*;

/// A lease id no test ever grants.
const MISSING_LEASE: i64 = 0x7a11_ba57;

/// Start a pair, run `scripts` in order, report every failing script.
async fn run(scripts: Vec<Script>) {
    let pair = ballast_testkit::compat_pair();
    let mut clients = Clients::connect(&pair).await;
    clients.run_all(&scripts).await;
}

// ------------------------------------------------------------------------------------------------
// Checks on the reference answer
// ------------------------------------------------------------------------------------------------

/// The Range answer has `count`, `more` and `n` kvs.
fn count_more(
    count: i64,
    more: bool,
    n: usize,
) -> impl Fn(&Outcome) -> Result<(), String> + Send + Sync {
    move |o| {
        let r = o.as_range()?;
        ensure(
            r.count == count && r.more == more && r.kvs.len() == n,
            || {
                format!(
                    "count/more/len = {}/{}/{} != expected {count}/{more}/{n}",
                    r.count,
                    r.more,
                    r.kvs.len()
                )
            },
        )
    }
}

/// The answer's header revision.
fn header_rev(rev: i64) -> impl Fn(&Outcome) -> Result<(), String> + Send + Sync {
    move |o| {
        ensure(o.revision() == Some(rev), || {
            format!("header revision {:?} != {rev}", o.revision())
        })
    }
}

/// The first kv of a Range answer has this value and version.
fn value_version(
    value: &'static str,
    version: i64,
) -> impl Fn(&Outcome) -> Result<(), String> + Send + Sync {
    move |o| {
        let r = o.as_range()?;
        let kv = r.kvs.first().ok_or("no kvs")?;
        ensure(
            kv.value == value.as_bytes() && kv.version == version,
            || {
                format!(
                    "value/version {:?}/{} != {value:?}/{version}",
                    show_bytes(&kv.value),
                    kv.version
                )
            },
        )
    }
}

/// The Txn answer took the `succeeded` branch.
fn txn_took(succeeded: bool) -> impl Fn(&Outcome) -> Result<(), String> + Send + Sync {
    move |o| {
        let t = o.as_txn()?;
        ensure(t.succeeded == succeeded, || {
            format!("succeeded = {} != {succeeded}", t.succeeded)
        })
    }
}

// ------------------------------------------------------------------------------------------------
// Range
// ------------------------------------------------------------------------------------------------

fn range_scripts() -> Vec<Script> {
    vec![
        Script::new(
            "range: single key, prefix, from-key, all, [key,end), malformed",
            |s| {
                for name in ["a", "ab", "b", "c"] {
                    let k = s.k(name);
                    s.op(put(k, name)).ok();
                }
                let (a, b, c, e) = (s.k("a"), s.k("b"), s.k("c"), s.end());
                let base = s.base;
                s.op(range(&a)).keys(&["a"]).check(count_more(1, false, 1));
                s.op(range(s.k("zz")))
                    .check(count_more(0, false, 0))
                    .check(header_rev(base + 4));
                s.op(range(&a).prefix()).keys(&["a", "ab"]);
                s.op(range(s.k("")).prefix()).keys(&["a", "ab", "b", "c"]);
                s.op(range(&a).end(&c)).keys(&["a", "ab", "b"]);
                s.op(range(&b).from_key()).ok();
                s.op(range(&b).end(&e)).keys(&["b", "c"]);
                s.op(range(b"\0").from_key()).ok();
                s.op(range(b"\0").end(b"\0").count_only()).ok();
                // A single key "\0" (range_end empty) does not exist.
                s.op(range(b"\0")).check(count_more(0, false, 0));
                // range_end < key: an empty answer, not an error.
                s.op(range(&c).end(&a)).check(count_more(0, false, 0));
                // range_end == key: empty.
                s.op(range(&a).end(&a)).check(count_more(0, false, 0));
                // range_end == key + "\0": exactly the key.
                let mut a0 = a.clone();
                a0.push(0);
                s.op(range(&a).end(&a0)).keys(&["a"]);
                s.op(range(b"")).err(Code::InvalidArgument, ERR_EMPTY_KEY);
                s.op(range(b"").end(b"\0"))
                    .err(Code::InvalidArgument, ERR_EMPTY_KEY);
                s.op(range(b"").end(&a))
                    .err(Code::InvalidArgument, ERR_EMPTY_KEY);
                // Binary keys.
                let mut bin = s.k("bin");
                bin.extend_from_slice(&[0, 0xff, 0x80]);
                s.op(put(&bin, [0u8, 1, 2])).ok();
                s.op(range(s.k("bin")).prefix())
                    .check(count_more(1, false, 1));
                let mut ff = s.k("f");
                ff.extend_from_slice(&[0xff, 0xff]);
                s.op(put(&ff, "ff")).ok();
                s.op(range(s.k("f")).prefix())
                    .check(count_more(1, false, 1));
            },
        ),
        Script::new("range: limit, more, count", |s| {
            for name in ["a", "b", "c", "d", "e"] {
                let k = s.k(name);
                s.op(put(k, name)).ok();
            }
            let p = s.k("");
            s.op(range(&p).prefix().limit(2))
                .keys(&["a", "b"])
                .check(count_more(5, true, 2));
            s.op(range(&p).prefix().limit(4))
                .check(count_more(5, true, 4));
            s.op(range(&p).prefix().limit(5))
                .check(count_more(5, false, 5));
            s.op(range(&p).prefix().limit(6))
                .check(count_more(5, false, 5));
            s.op(range(&p).prefix().limit(0))
                .check(count_more(5, false, 5));
            s.op(range(&p).prefix().limit(-1)).ok();
            s.op(range(&p).prefix().limit(1).keys_only())
                .check(count_more(5, true, 1));
            s.op(range(&p).prefix().limit(1).count_only()).ok();
            s.op(range(&p).prefix().limit(2).serializable())
                .check(count_more(5, true, 2));
            s.op(range(&p)
                .prefix()
                .limit(2)
                .sort(SortOrder::Descend, SortTarget::Key))
                .keys(&["e", "d"])
                .check(count_more(5, true, 2));
            s.op(range(s.k("a")).limit(1))
                .check(count_more(1, false, 1));
            s.op(range(s.k("zz")).limit(1))
                .check(count_more(0, false, 0));
            // Deleted keys do not count.
            let c = s.k("c");
            s.op(del(c)).ok();
            s.op(range(&p).prefix().limit(2))
                .check(count_more(4, true, 2));
            s.op(range(&p).prefix().limit(3).rev(s.rev(5)))
                .check(count_more(5, true, 3));
        }),
        Script::new("range: revisions (past, current, future, negative)", |s| {
            let (a, b) = (s.k("a"), s.k("b"));
            s.op(put(&a, "1")).ok(); // base+1
            s.op(put(&a, "2")).ok(); // base+2
            s.op(put(&b, "1")).ok(); // base+3
            s.op(del(&a)).ok(); // base+4
            s.op(put(&a, "3")).ok(); // base+5
            let cur = s.rev(5);
            s.op(range(&a).rev(s.rev(1)))
                .check(value_version("1", 1))
                .check(header_rev(cur));
            s.op(range(&a).rev(s.rev(2))).check(value_version("2", 2));
            s.op(range(&a).rev(s.rev(3))).check(value_version("2", 2));
            s.op(range(&a).rev(s.rev(4))).check(count_more(0, false, 0));
            s.op(range(&a).rev(s.rev(5))).check(value_version("3", 1));
            s.op(range(&a).rev(s.rev(0))).check(count_more(0, false, 0));
            s.op(range(s.k("")).prefix().rev(s.rev(3)))
                .keys(&["a", "b"]);
            s.op(range(s.k("")).prefix().rev(s.rev(4))).keys(&["b"]);
            s.op(range(&a).rev(cur)).check(value_version("3", 1));
            s.op(range(&a).rev(cur + 1))
                .err(Code::OutOfRange, ERR_FUTURE_REV);
            s.op(range(&a).rev(cur + 1000))
                .err(Code::OutOfRange, ERR_FUTURE_REV);
            s.op(range(&a).rev(cur + 1).serializable())
                .err(Code::OutOfRange, ERR_FUTURE_REV);
            s.op(range(&a).rev(-1)).check(value_version("3", 1));
            s.op(range(&a).rev(i64::MIN)).check(value_version("3", 1));
            s.op(range(&a).rev(s.rev(2)).serializable())
                .check(value_version("2", 2));
            s.op(range(&a).rev(1)).ok();
            // A future revision is an error even for a key that never existed.
            s.op(range(s.k("nope")).rev(cur + 1))
                .err(Code::OutOfRange, ERR_FUTURE_REV);
        }),
        Script::new(
            "range: sort order x sort target (with and without limit)",
            |s| {
                // versions a1 b3 c1 d2; created d<b<a<c; modified a<c<d<b; values a=v2 b=v4 c=v0 d=v2.
                for (k, v) in [
                    ("d", "v1"),
                    ("b", "v3"),
                    ("a", "v2"),
                    ("c", "v0"),
                    ("b", "v5"),
                    ("d", "v2"),
                    ("b", "v4"),
                ] {
                    let k = s.k(k);
                    s.op(put(k, v)).ok();
                }
                let p = s.k("");
                for order in [SortOrder::None, SortOrder::Ascend, SortOrder::Descend] {
                    for target in [
                        SortTarget::Key,
                        SortTarget::Version,
                        SortTarget::Create,
                        SortTarget::Mod,
                        SortTarget::Value,
                    ] {
                        s.op(range(&p).prefix().sort(order, target))
                            .check(count_more(4, false, 4));
                        s.op(range(&p).prefix().sort(order, target).limit(2))
                            .check(count_more(4, true, 2));
                        s.op(range(&p)
                            .prefix()
                            .sort(order, target)
                            .limit(2)
                            .rev(s.rev(5)))
                            .check(count_more(4, true, 2));
                    }
                }
                s.op(range(&p).prefix().sort(SortOrder::Descend, SortTarget::Key))
                    .keys(&["d", "c", "b", "a"]);
                s.op(range(&p)
                    .prefix()
                    .sort(SortOrder::Ascend, SortTarget::Create))
                    .keys(&["d", "b", "a", "c"]);
                s.op(range(&p).prefix().sort(SortOrder::Descend, SortTarget::Mod))
                    .keys(&["b", "d", "c", "a"]);
                s.op(range(&p)
                    .prefix()
                    .sort(SortOrder::Ascend, SortTarget::Value))
                    .keys(&["c", "a", "d", "b"]);
                // Ties (a and c have version 1; a and d have value v2).
                s.op(range(&p)
                    .prefix()
                    .sort(SortOrder::Ascend, SortTarget::Version))
                    .keys(&["a", "c", "d", "b"]);
                s.op(range(&p)
                    .prefix()
                    .sort(SortOrder::Descend, SortTarget::Version))
                    .ok();
                s.op(range(&p)
                    .prefix()
                    .sort(SortOrder::Descend, SortTarget::Value))
                    .ok();
                // (Unknown sort enum values are a documented 3.4-vs-3.5 difference: etcd 3.4
                // ignores an unknown order and crashes on an unknown target, 3.5+ and Ballast
                // answer "invalid sort option"; bad_input.rs tests them.)
            },
        ),
        Script::new("range: serializable, keys_only, count_only", |s| {
            for name in ["a", "b", "c"] {
                let k = s.k(name);
                s.op(put(k, format!("value-{name}"))).ok();
            }
            let p = s.k("");
            s.op(range(&p).prefix().serializable())
                .check(count_more(3, false, 3));
            s.op(range(&p).prefix().keys_only()).check(|o| {
                let r = o.as_range()?;
                ensure(
                    r.kvs
                        .iter()
                        .all(|kv| kv.value.is_empty() && kv.version == 1),
                    || "keys_only must drop values only".into(),
                )
            });
            s.op(range(&p).prefix().count_only())
                .check(count_more(3, false, 0));
            s.op(range(&p).prefix().count_only().keys_only())
                .check(count_more(3, false, 0));
            s.op(range(&p).prefix().count_only().limit(1)).ok();
            s.op(range(&p).prefix().count_only().rev(s.rev(2)))
                .check(count_more(2, false, 0));
            s.op(range(&p).prefix().keys_only().rev(s.rev(2)).serializable())
                .check(count_more(2, false, 2));
            s.op(range(&p)
                .prefix()
                .keys_only()
                .sort(SortOrder::Descend, SortTarget::Value))
                .keys(&["c", "b", "a"]);
            s.op(range(s.k("zz")).count_only())
                .check(count_more(0, false, 0));
            s.op(range(s.k("a")).count_only())
                .check(count_more(1, false, 0));
        }),
        Script::new("range: min/max mod and create revision filters", |s| {
            let names = ["a", "b", "c", "a", "d"]; // revs base+1..5; a re-put at base+4
            for name in names {
                let k = s.k(name);
                s.op(put(k, name)).ok();
            }
            let p = s.k("");
            let base = s.base;
            let r = move |n: i64| base + n;
            s.op(range(&p).prefix().min_mod(r(3)))
                .keys(&["a", "c", "d"])
                .check(count_more(4, false, 3));
            s.op(range(&p).prefix().max_mod(r(3)))
                .keys(&["b", "c"])
                .check(count_more(4, false, 2));
            s.op(range(&p).prefix().min_create(r(2)))
                .keys(&["b", "c", "d"]);
            s.op(range(&p).prefix().max_create(r(2))).keys(&["a", "b"]);
            s.op(range(&p).prefix().min_mod(r(2)).max_mod(r(4)))
                .keys(&["a", "b", "c"]);
            s.op(range(&p).prefix().min_create(r(2)).max_create(r(3)))
                .keys(&["b", "c"]);
            s.op(range(&p).prefix().min_mod(r(3)).limit(1)).keys(&["a"]);
            s.op(range(&p).prefix().min_mod(r(3)).limit(2)).ok();
            s.op(range(&p).prefix().min_mod(r(3)).limit(3)).ok();
            s.op(range(&p).prefix().min_mod(r(3)).limit(4)).ok();
            s.op(range(&p).prefix().max_create(r(1)).limit(1)).ok();
            s.op(range(&p).prefix().min_mod(r(9)))
                .check(count_more(4, false, 0));
            s.op(range(&p).prefix().min_mod(r(3)).count_only()).ok();
            s.op(range(&p).prefix().min_mod(r(3)).keys_only()).ok();
            s.op(range(&p)
                .prefix()
                .max_mod(r(4))
                .sort(SortOrder::Descend, SortTarget::Mod)
                .limit(2))
                .ok();
            s.op(range(&p)
                .prefix()
                .min_create(r(1))
                .sort(SortOrder::Ascend, SortTarget::Create)
                .limit(3))
                .ok();
            s.op(range(&p).prefix().min_mod(r(2)).rev(r(3)))
                .keys(&["b", "c"]);
            s.op(range(&p).prefix().max_mod(-1)).ok();
            s.op(range(&p).prefix().min_mod(-5).min_create(-5)).ok();
            s.op(range(s.k("a")).min_mod(r(4))).keys(&["a"]);
            s.op(range(s.k("a")).max_mod(r(3)))
                .check(count_more(1, false, 0));
        }),
    ]
}

#[tokio::test]
async fn range_options() {
    run(range_scripts()).await;
}

// ------------------------------------------------------------------------------------------------
// Put and DeleteRange
// ------------------------------------------------------------------------------------------------

fn put_delete_scripts() -> Vec<Script> {
    vec![
        Script::new(
            "put: prev_kv, ignore_value, ignore_lease and their errors",
            |s| {
                let (a, m) = (s.k("a"), s.k("missing"));
                let base = s.base;
                s.op(put(&a, "1").prev_kv())
                    .check(|o| ensure(o.as_put()?.prev_kv.is_none(), || "no prev_kv".into()));
                s.op(put(&a, "2").prev_kv()).check(|o| {
                    let kv = o.as_put()?.prev_kv.clone().ok_or("prev_kv missing")?;
                    ensure(kv.value == b"1" && kv.version == 1, || {
                        format!("prev {kv:?}")
                    })
                });
                s.op(put(&a, "").ignore_value()).check(header_rev(base + 3));
                s.op(range(&a)).check(value_version("2", 3));
                s.op(put(&a, "").ignore_value().prev_kv()).ok();
                s.op(put(&a, "x").ignore_value())
                    .err(Code::InvalidArgument, ERR_VALUE_PROVIDED);
                s.op(put(&m, "").ignore_value())
                    .err(Code::InvalidArgument, ERR_KEY_NOT_FOUND);
                s.op(put(&m, "v").ignore_lease())
                    .err(Code::InvalidArgument, ERR_KEY_NOT_FOUND);
                s.op(put(&m, "").ignore_value().ignore_lease())
                    .err(Code::InvalidArgument, ERR_KEY_NOT_FOUND);
                s.op(put(&a, "3").ignore_lease()).ok();
                s.op(put(&a, "4").ignore_lease().prev_kv()).ok();
                s.op(put(&a, "").ignore_value().ignore_lease()).ok();
                s.op(put(&a, "5").lease(5).ignore_lease())
                    .err(Code::InvalidArgument, ERR_LEASE_PROVIDED);
                s.op(put(&a, "x").lease(5).ignore_lease().ignore_value())
                    .err(Code::InvalidArgument, ERR_VALUE_PROVIDED);
                s.op(put(&a, "6").lease(MISSING_LEASE))
                    .err(Code::NotFound, ERR_LEASE_NOT_FOUND);
                s.op(put(&m, "6").lease(MISSING_LEASE).prev_kv())
                    .err(Code::NotFound, ERR_LEASE_NOT_FOUND);
                // A negative lease id is not "no lease".
                s.op(put(&a, "6").lease(-1))
                    .err(Code::NotFound, ERR_LEASE_NOT_FOUND);
                s.op(put(&a, "").ignore_value().lease(MISSING_LEASE))
                    .err(Code::NotFound, ERR_LEASE_NOT_FOUND);
                // None of the failed puts consumed a revision.
                s.op(range(&a)).check(header_rev(base + 7));
                s.op(put(b"", "v"))
                    .err(Code::InvalidArgument, ERR_EMPTY_KEY);
                s.op(put(b"", "").ignore_value())
                    .err(Code::InvalidArgument, ERR_EMPTY_KEY);
                s.op(put(&a, "")).ok();
                s.op(range(&a)).ok();
                s.op(put(&a, "again").prev_kv()).ok();
            },
        ),
        Script::new(
            "put: sizes (1 MiB ok, > max-request-bytes too large)",
            |s| {
                let a = s.k("big");
                s.op(put(&a, vec![b'x'; 1024 * 1024])).ok();
                s.op(range(&a)).ok();
                s.op(put(&a, vec![b'y'; 1536 * 1024 + 1024]))
                    .err(Code::InvalidArgument, ERR_TOO_LARGE);
                s.op(put(vec![b'k'; 1536 * 1024 + 1024], "v"))
                    .err(Code::InvalidArgument, ERR_TOO_LARGE);
                s.op(range(&a).keys_only()).ok();
                let big = txn()
                    .then(put(s.k("t1"), vec![b'z'; 900 * 1024]))
                    .then(put(s.k("t2"), vec![b'z'; 900 * 1024]));
                s.op(big).err(Code::InvalidArgument, ERR_TOO_LARGE);
            },
        ),
        Script::new(
            "delete: single, prefix, range, prev_kv, no-op deletes",
            |s| {
                for name in ["a", "ab", "b", "c"] {
                    let k = s.k(name);
                    s.op(put(k, name)).ok();
                }
                let base = s.base;
                let (a, b, c) = (s.k("a"), s.k("b"), s.k("c"));
                s.op(del(s.k("missing")))
                    .check(header_rev(base + 4))
                    .check(|o| ensure(o.as_delete()?.deleted == 0, || "deleted".into()));
                s.op(del(s.k("missing")).prev_kv())
                    .check(header_rev(base + 4));
                s.op(del(&a).prev_kv()).check(header_rev(base + 5));
                s.op(del(&a).prev_kv()).check(header_rev(base + 5));
                s.op(del(&c).end(&a)).check(header_rev(base + 5));
                s.op(del(&a).end(&a)).check(header_rev(base + 5));
                s.op(del(s.k("")).prefix().prev_kv()).check(|o| {
                    let d = o.as_delete()?;
                    ensure(d.deleted == 3 && d.prev_kvs.len() == 3, || format!("{d:?}"))
                });
                for name in ["a", "ab", "b", "c"] {
                    let k = s.k(name);
                    s.op(put(k, name)).ok();
                }
                s.op(del(&a).end(&c))
                    .check(|o| ensure(o.as_delete()?.deleted == 3, || "deleted".into()));
                s.op(del(&b).prefix().prev_kv())
                    .check(|o| ensure(o.as_delete()?.deleted == 0, || "deleted".into()));
                s.op(del(&c).prefix()).ok();
                s.op(del(b"")).err(Code::InvalidArgument, ERR_EMPTY_KEY);
                s.op(del(b"").prefix())
                    .err(Code::InvalidArgument, ERR_EMPTY_KEY);
                s.op(range(s.k("")).prefix()).check(count_more(0, false, 0));
                // Re-create after delete: version restarts at 1, create_revision is new.
                s.op(put(&a, "again")).ok();
                s.op(range(&a)).check(value_version("again", 1));
            },
        ),
        Script::new(
            "delete: from-key and everything (last script of its pair)",
            |s| {
                for name in ["a", "b"] {
                    let k = s.k(name);
                    s.op(put(k, name)).ok();
                }
                s.op(del(s.k("b")).from_key().prev_kv()).ok();
                s.op(range(b"\0").from_key().keys_only()).ok();
                s.op(del(b"\0").from_key()).ok();
                s.op(range(b"\0").from_key()).check(count_more(0, false, 0));
                s.op(del(b"\0").from_key()).ok();
            },
        ),
    ]
}

#[tokio::test]
async fn put_and_delete_options() {
    run(put_delete_scripts()).await;
}

// ------------------------------------------------------------------------------------------------
// Txn
// ------------------------------------------------------------------------------------------------

fn txn_compare_scripts() -> Vec<Script> {
    vec![
        Script::new(
            "txn: every compare target x result on present and missing keys",
            |s| {
                let (a, m) = (s.k("a"), s.k("missing"));
                s.op(put(&a, "1")).ok(); // base+1
                s.op(put(&a, "2")).ok(); // base+2: version 2, create base+1, mod base+2, value "2"
                let (create, modr) = (s.rev(1), s.rev(2));
                for key in [&a, &m] {
                    for r in ALL_RESULTS {
                        let cmps = [
                            cmp(key).version(r, 1),
                            cmp(key).version(r, 2),
                            cmp(key).version(r, 3),
                            cmp(key).version(r, 0),
                            cmp(key).create(r, create - 1),
                            cmp(key).create(r, create),
                            cmp(key).create(r, create + 1),
                            cmp(key).create(r, 0),
                            cmp(key).modrev(r, modr - 1),
                            cmp(key).modrev(r, modr),
                            cmp(key).modrev(r, modr + 1),
                            cmp(key).modrev(r, 0),
                            cmp(key).value(r, "1"),
                            cmp(key).value(r, "2"),
                            cmp(key).value(r, "3"),
                            cmp(key).value(r, ""),
                            cmp(key).value(r, "10"),
                            cmp(key).lease(r, -1),
                            cmp(key).lease(r, 0),
                            cmp(key).lease(r, 1),
                        ];
                        for c in cmps {
                            s.op(txn().when(c).then(range(&a)).otherwise(range(&m)))
                                .ok();
                        }
                    }
                }
                // Spot checks of the semantics.
                s.op(txn().when(cmp(&a).version(EQUAL, 2)))
                    .check(txn_took(true));
                s.op(txn().when(cmp(&m).version(EQUAL, 0)))
                    .check(txn_took(true));
                s.op(txn().when(cmp(&m).modrev(EQUAL, 0)))
                    .check(txn_took(true));
                s.op(txn().when(cmp(&m).create(LESS, 1)))
                    .check(txn_took(true));
                s.op(txn().when(cmp(&m).lease(EQUAL, 0)))
                    .check(txn_took(true));
                s.op(txn().when(cmp(&m).value(EQUAL, "")))
                    .check(txn_took(false));
                s.op(txn().when(cmp(&m).value(NOT_EQUAL, "x")))
                    .check(txn_took(false));
                s.op(txn().when(cmp(&a).value(GREATER, "10")))
                    .check(txn_took(true));
                s.op(txn().when(cmp(&a).value(LESS, "3")))
                    .check(txn_took(true));
                s.op(txn().when(cmp(&a).lease(EQUAL, 0)))
                    .check(txn_took(true));
                // Several compares are ANDed.
                s.op(txn()
                    .when(cmp(&a).version(EQUAL, 2))
                    .when(cmp(&a).value(EQUAL, "2")))
                    .check(txn_took(true));
                s.op(txn()
                    .when(cmp(&a).version(EQUAL, 2))
                    .when(cmp(&a).value(EQUAL, "1")))
                    .check(txn_took(false));
                s.op(txn()
                    .when(cmp(&a).version(EQUAL, 1))
                    .when(cmp(&a).value(EQUAL, "2")))
                    .check(txn_took(false));
                // Empty compare key.
                s.op(txn().when(cmp(b"").version(EQUAL, 0)))
                    .err(Code::InvalidArgument, ERR_EMPTY_KEY);
                // A target union that does not match the target, or none at all.
                s.op(txn().when(cmp(&a).raw(
                    CompareTarget::Version,
                    EQUAL,
                    Some(TargetUnion::ModRevision(99)),
                )))
                .ok();
                s.op(txn().when(cmp(&a).raw(
                    CompareTarget::Version,
                    NOT_EQUAL,
                    Some(TargetUnion::ModRevision(2)),
                )))
                .ok();
                s.op(txn().when(cmp(&a).raw(CompareTarget::Value, EQUAL, None)))
                    .ok();
                s.op(txn().when(cmp(&a).raw(CompareTarget::Mod, GREATER, None)))
                    .ok();
                s.op(txn().when(cmp(&m).raw(CompareTarget::Create, EQUAL, None)))
                    .ok();
            },
        ),
        Script::new("txn: compares over key ranges", |s| {
            let (a, b, c, d) = (s.k("a"), s.k("b"), s.k("c"), s.k("d"));
            s.op(put(&a, "x")).ok(); // base+1
            s.op(put(&a, "x")).ok(); // base+2, a version 2
            s.op(put(&b, "x")).ok(); // base+3, b version 1
            s.op(put(&c, "y")).ok(); // base+4
            let p = s.k("");
            for r in ALL_RESULTS {
                for v in [0, 1, 2, 3] {
                    s.op(txn().when(cmp(&a).end(&c).version(r, v)).then(range(&a)))
                        .ok();
                    s.op(txn().when(cmp(&p).prefix().version(r, v))).ok();
                }
                for v in ["x", "y", "z", ""] {
                    s.op(txn().when(cmp(&a).end(&c).value(r, v))).ok();
                    s.op(txn().when(cmp(&p).prefix().value(r, v))).ok();
                }
                s.op(txn().when(cmp(&a).end(&d).modrev(r, s.rev(2)))).ok();
                s.op(txn().when(cmp(&a).end(&d).create(r, s.rev(1)))).ok();
                s.op(txn().when(cmp(&a).end(&d).lease(r, 0))).ok();
                // Ranges with no keys compare against an empty key-value (VALUE always fails).
                s.op(txn().when(cmp(&d).prefix().version(r, 0))).ok();
                s.op(txn().when(cmp(&d).prefix().value(r, ""))).ok();
                s.op(txn().when(cmp(&c).end(&a).version(r, 0))).ok();
            }
            s.op(txn().when(cmp(&a).end(&c).value(EQUAL, "x")))
                .check(txn_took(true));
            s.op(txn().when(cmp(&a).end(&d).value(EQUAL, "x")))
                .check(txn_took(false));
            s.op(txn().when(cmp(&a).end(&c).version(GREATER, 0)))
                .check(txn_took(true));
            s.op(txn().when(cmp(&a).end(&c).version(GREATER, 1)))
                .check(txn_took(false));
            s.op(txn().when(cmp(&d).prefix().version(EQUAL, 0)))
                .check(txn_took(true));
            // From-key compare ("\0") and compare over everything.
            s.op(txn().when(cmp(&a).end(b"\0").version(GREATER, 0)))
                .check(txn_took(true));
            s.op(txn().when(cmp(b"\0").end(b"\0").create(GREATER, 0)))
                .ok();
        }),
    ]
}

#[tokio::test]
async fn txn_compares() {
    run(txn_compare_scripts()).await;
}

/// `n` distinct puts under `prefix`.
fn many_puts(s: &Ctx, tag: &str, n: usize) -> Vec<RequestOp> {
    (0..n)
        .map(|i| put(s.k(&format!("{tag}{i:03}")), "v").into())
        .collect()
}

fn txn_with(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> Txn {
    let mut t = txn();
    t.0.success = success;
    t.0.failure = failure;
    t
}

fn txn_structure_scripts() -> Vec<Script> {
    vec![
        Script::new(
            "txn: branches, read-your-writes, one revision, nested",
            |s| {
                let (a, b, c, x) = (s.k("a"), s.k("b"), s.k("c"), s.k("x"));
                let base = s.base;
                s.op(put(&c, "c0")).ok(); // base+1
                s.op(txn())
                    .check(txn_took(true))
                    .check(header_rev(base + 1));
                s.op(txn()
                    .then(put(&a, "1"))
                    .then(range(&a))
                    .then(put(&b, "1").prev_kv())
                    .then(del(&c).prev_kv())
                    .then(range(s.k("")).prefix()))
                    .check(txn_took(true))
                    .check(header_rev(base + 2));
                // Second put of a in a later txn: prev_kv, version 2, mod = new revision.
                s.op(txn()
                    .then(put(&a, "2").prev_kv())
                    .then(range(&a).rev(base + 1)))
                    .check(header_rev(base + 3));
                // Failure branch.
                s.op(txn()
                    .when(cmp(&a).value(EQUAL, "nope"))
                    .then(put(&a, "bad"))
                    .otherwise(put(&b, "2"))
                    .otherwise(range(&b)))
                    .check(txn_took(false))
                    .check(header_rev(base + 4));
                // Read-only txns and txns whose writes change nothing do not consume a revision.
                s.op(txn().then(range(&a)).then(range(&b)))
                    .check(header_rev(base + 4));
                s.op(txn().then(del(s.k("nothing"))))
                    .check(header_rev(base + 4));
                s.op(txn().then(del(s.k("nothing"))).then(range(&a)))
                    .check(header_rev(base + 4));
                s.op(txn().when(cmp(&a).version(EQUAL, 0)).then(put(&a, "no")))
                    .check(txn_took(false))
                    .check(header_rev(base + 4));
                // Nested txns.
                let inner = txn()
                    .when(cmp(&a).value(EQUAL, "2"))
                    .then(put(&x, "inner-then"))
                    .otherwise(put(&x, "inner-else"));
                s.op(txn().then(inner).then(range(&x)))
                    .check(header_rev(base + 5));
                let inner_fail = txn()
                    .when(cmp(&a).value(EQUAL, "9"))
                    .then(put(&x, "t"))
                    .otherwise(put(&x, "e").prev_kv())
                    .otherwise(range(&x));
                s.op(txn()
                    .when(cmp(&a).version(GREATER, 0))
                    .then(inner_fail)
                    .then(range(&a))
                    .otherwise(range(&b)))
                    .ok();
                let deep = txn()
                    .then(txn().then(txn().then(put(s.k("deep"), "3")).then(range(s.k("deep")))));
                s.op(deep).ok();
                s.op(txn().then(txn()).then(txn().then(range(&a)))).ok();
                // Nested txn with only reads: no revision.
                let base2 = s.rev(7);
                s.op(txn().then(txn().then(range(&a))))
                    .check(header_rev(base2));
                // Ranges inside a txn with every option.
                s.op(txn()
                    .then(
                        range(s.k(""))
                            .prefix()
                            .limit(1)
                            .sort(SortOrder::Descend, SortTarget::Mod)
                            .keys_only(),
                    )
                    .then(range(s.k("")).prefix().count_only())
                    .then(
                        range(s.k(""))
                            .prefix()
                            .min_mod(base + 3)
                            .max_create(base + 5),
                    )
                    .then(range(&a).rev(base + 2).serializable()))
                    .ok();
                // Deletes and puts on different keys in one txn: sub-revisions in order.
                s.op(txn()
                    .then(del(&a))
                    .then(put(&b, "3"))
                    .then(put(&a, "recreated"))
                    .then(range(s.k("")).prefix()))
                    .err(Code::InvalidArgument, ERR_DUPLICATE_KEY);
                s.op(txn()
                    .then(del(&a).prev_kv())
                    .then(put(&b, "3").prev_kv())
                    .then(range(s.k("")).prefix()))
                    .ok();
            },
        ),
        Script::new("txn: duplicate keys (which overlaps etcd rejects)", |s| {
            let (a, b, c, e) = (s.k("a"), s.k("b"), s.k("c"), s.k("e"));
            s.op(put(&a, "0")).ok();
            let dup = |step: &mut Step| {
                step.err(Code::InvalidArgument, ERR_DUPLICATE_KEY);
            };
            // Rejected.
            dup(s.op(txn().then(put(&a, "1")).then(put(&a, "2"))));
            dup(s.op(txn().then(put(&a, "1")).then(del(&a))));
            dup(s.op(txn().then(del(&a)).then(put(&a, "1"))));
            dup(s.op(txn().then(del(&a).end(&c)).then(put(&b, "1"))));
            dup(s.op(txn().then(del(s.k("")).prefix()).then(put(&b, "1"))));
            dup(s.op(txn().otherwise(put(&a, "1")).otherwise(put(&a, "2"))));
            dup(s.op(txn()
                .when(cmp(&a).version(EQUAL, 99))
                .then(put(&b, "1"))
                .otherwise(put(&a, "1"))
                .otherwise(put(&a, "2"))));
            dup(s.op(txn().then(put(&a, "1")).then(txn().then(put(&a, "2")))));
            dup(s.op(txn().then(put(&a, "1")).then(txn().otherwise(put(&a, "2")))));
            dup(s.op(txn().then(txn().then(put(&a, "2"))).then(put(&a, "1"))));
            dup(s.op(txn().then(del(&a)).then(txn().then(put(&a, "2")))));
            dup(s.op(txn().then(txn().then(del(&a))).then(put(&a, "1"))));
            dup(s.op(txn()
                .then(txn().then(put(&a, "1")))
                .then(txn().then(put(&a, "2")))));
            dup(s.op(txn()
                .then(txn().then(put(&a, "1")))
                .then(txn().otherwise(put(&a, "2")))));
            dup(s.op(txn()
                .then(txn().then(txn().then(put(&a, "1"))))
                .then(put(&a, "2"))));
            dup(s.op(txn().then(txn().then(put(&a, "1")).then(put(&a, "2")))));
            dup(s.op(txn().then(txn().then(del(&a)).then(put(&a, "2")))));
            // Accepted.
            s.op(txn().then(del(&a)).then(del(&a))).ok();
            s.op(put(&a, "0")).ok();
            s.op(txn().then(del(&a).end(&c)).then(del(&b))).ok();
            s.op(put(&a, "0")).ok();
            s.op(txn().then(put(&a, "1")).then(range(&a))).ok();
            s.op(txn()
                .then(range(&a))
                .then(put(&a, "2"))
                .then(range(&a).prefix()))
                .ok();
            s.op(txn().then(put(&a, "t")).otherwise(put(&a, "f"))).ok();
            s.op(txn().then(put(&a, "t")).otherwise(del(&a))).ok();
            s.op(txn().then(txn().then(put(&a, "1")).otherwise(put(&a, "2"))))
                .ok();
            s.op(txn()
                .then(txn().then(put(&a, "1")).otherwise(put(&b, "2")))
                .then(put(&c, "3")))
                .ok();
            s.op(txn().then(put(&a, "1")).then(txn().then(del(&b))))
                .ok();
            s.op(txn().then(del(&b)).then(txn().then(del(&b)))).ok();
            s.op(txn().then(put(&a, "1")).then(put(&e, "1"))).ok();
            // From-key and prefix deletes against puts.
            s.op(txn().then(del(&a).from_key()).then(put(&b, "1"))).ok();
            s.op(txn().then(del(&b).end(&a)).then(put(&a, "1"))).ok();
            s.op(txn().then(put(&a, "1")).then(del(&b).from_key())).ok();
            s.op(txn().then(put(&a, "1")).then(del(&a).end(&a))).ok();
            // A delete in an earlier nested txn conflicts with a put in a later one...
            dup(s.op(txn()
                .then(txn().then(del(&a).end(&c)))
                .then(txn().then(put(&b, "1")))));
            s.op(txn()
                .then(txn().then(put(&b, "1")))
                .then(txn().then(del(&a).end(&c))))
                .ok();
            // ...and a delete at an outer level conflicts with a put in any nested txn, whatever the order.
            dup(s.op(txn().then(txn().then(put(&b, "1"))).then(del(&a).end(&c))));
            dup(s.op(txn()
                .then(del(&a).end(&c))
                .then(txn().then(txn().then(put(&b, "1"))))));
            s.op(range(s.k("")).prefix()).ok();
        }),
        Script::new("txn: operation limits (--max-txn-ops 128)", |s| {
            let ok = |step: &mut Step| {
                step.ok();
            };
            let too_many = |step: &mut Step| {
                step.err(Code::InvalidArgument, ERR_TOO_MANY_OPS);
            };
            ok(s.op(txn_with(many_puts(s, "s", 128), vec![])));
            too_many(s.op(txn_with(many_puts(s, "s", 129), vec![])));
            ok(s.op(txn_with(vec![], many_puts(s, "f", 128))));
            too_many(s.op(txn_with(vec![], many_puts(s, "f", 129))));
            ok(s.op(txn_with(many_puts(s, "s", 128), many_puts(s, "f", 128))));
            let mut t = txn();
            for i in 0..129 {
                t = t.when(cmp(s.k(&format!("c{i}"))).version(EQUAL, 0));
            }
            too_many(s.op(t.clone().then(put(s.k("x"), "1"))));
            let mut t128 = txn();
            for i in 0..128 {
                t128 = t128.when(cmp(s.k(&format!("c{i}"))).version(EQUAL, 0));
            }
            ok(s.op(t128.then(put(s.k("x"), "1"))));
            let ranges: Vec<RequestOp> = (0..129)
                .map(|i| range(s.k(&format!("r{i}"))).into())
                .collect();
            too_many(s.op(txn_with(ranges, vec![])));
            // Nested txns: the inner limit is 128 minus the outer txn's max(#compare, #success,
            // #failure) (the nested txn counts as one outer op), so with 128 outer ops a nested txn
            // may hold no op at all.
            for (outer, inner) in [
                (100, 28),
                (100, 29),
                (1, 127),
                (1, 128),
                (127, 1),
                (128, 1),
                (128, 0),
                (64, 64),
                (64, 65),
            ] {
                let mut ops = many_puts(s, &format!("o{outer}-{inner}-"), outer - 1);
                ops.push(
                    txn_with(many_puts(s, &format!("i{outer}-{inner}-"), inner), vec![]).into(),
                );
                let step = s.op(txn_with(ops, vec![]));
                if inner + outer > 128 {
                    too_many(step);
                } else {
                    ok(step);
                }
            }
            let inner = txn_with(many_puts(s, "n", 10), vec![]);
            s.op(txn_with(
                vec![txn_with(vec![inner.into()], vec![]).into()],
                vec![],
            ))
            .ok();
        }),
        Script::new("txn: errors inside txn (taken and untaken branches)", |s| {
            let (a, m) = (s.k("a"), s.k("missing"));
            s.op(put(&a, "1")).ok();
            let cur = s.rev(1);
            s.op(txn().then(empty_request_op()))
                .err(Code::InvalidArgument, ERR_KEY_NOT_FOUND);
            s.op(txn().otherwise(empty_request_op()))
                .err(Code::InvalidArgument, ERR_KEY_NOT_FOUND);
            s.op(txn().then(put(b"", "v")))
                .err(Code::InvalidArgument, ERR_EMPTY_KEY);
            s.op(txn().then(range(b"")))
                .err(Code::InvalidArgument, ERR_EMPTY_KEY);
            s.op(txn().otherwise(del(b"")))
                .err(Code::InvalidArgument, ERR_EMPTY_KEY);
            s.op(txn().then(put(&a, "x").ignore_value()))
                .err(Code::InvalidArgument, ERR_VALUE_PROVIDED);
            s.op(txn().then(put(&a, "x").lease(1).ignore_lease()))
                .err(Code::InvalidArgument, ERR_LEASE_PROVIDED);
            s.op(txn().then(txn().then(put(b"", "v"))))
                .err(Code::InvalidArgument, ERR_EMPTY_KEY);
            // Apply-time errors only for the branch that runs.
            s.op(txn().then(put(&m, "").ignore_value()))
                .err(Code::InvalidArgument, ERR_KEY_NOT_FOUND);
            s.op(txn()
                .when(cmp(&a).version(EQUAL, 9))
                .then(put(&m, "").ignore_value())
                .otherwise(range(&a)))
                .check(txn_took(false));
            s.op(txn().then(put(&a, "2").lease(MISSING_LEASE)))
                .err(Code::NotFound, ERR_LEASE_NOT_FOUND);
            s.op(txn()
                .when(cmp(&a).version(EQUAL, 9))
                .then(put(&a, "2").lease(MISSING_LEASE)))
                .check(txn_took(false));
            s.op(txn().then(range(&a).rev(cur + 1)))
                .err(Code::OutOfRange, ERR_FUTURE_REV);
            // Ranges are checked against the revision before the txn, even after a put in the txn.
            s.op(txn().then(put(&a, "3")).then(range(&a).rev(cur + 1)))
                .err(Code::OutOfRange, ERR_FUTURE_REV);
            s.op(txn()
                .when(cmp(&a).version(EQUAL, 9))
                .then(range(&a).rev(cur + 100)))
                .check(txn_took(false));
            s.op(txn().then(txn().then(put(&m, "").ignore_value())))
                .err(Code::InvalidArgument, ERR_KEY_NOT_FOUND);
            s.op(txn().then(
                txn()
                    .when(cmp(&a).version(EQUAL, 9))
                    .then(put(&m, "").ignore_value()),
            ))
            .ok();
            s.op(txn().then(put(&m, "").ignore_value()).then(put(&a, "4")))
                .err(Code::InvalidArgument, ERR_KEY_NOT_FOUND);
            // None of the failing txns changed anything.
            s.op(range(s.k("")).prefix()).ok();
        }),
    ]
}

#[tokio::test]
async fn txn_structure() {
    run(txn_structure_scripts()).await;
}

// ------------------------------------------------------------------------------------------------
// Compaction (global state: its own pair, scripts in this order)
// ------------------------------------------------------------------------------------------------

fn compaction_scripts() -> Vec<Script> {
    vec![
        Script::new("compact: fresh store (revision 0, 1, negative)", |s| {
            let base = s.base;
            // On a fresh store (compact revision -1 internally) compacting to 0 succeeds; -1 and
            // below are "compacted", and after compact(0) so is 0.
            s.op(compact(-1)).err(Code::OutOfRange, ERR_COMPACTED);
            s.op(compact(i64::MIN)).err(Code::OutOfRange, ERR_COMPACTED);
            s.op(compact(0)).ok();
            s.op(compact(-1)).err(Code::OutOfRange, ERR_COMPACTED);
            s.op(compact(1)).check(header_rev(base));
            s.op(compact(1)).err(Code::OutOfRange, ERR_COMPACTED);
            s.op(compact(0)).err(Code::OutOfRange, ERR_COMPACTED);
            s.op(compact(base + 1))
                .err(Code::OutOfRange, ERR_FUTURE_REV);
            s.op(range(b"a").rev(1)).ok();
        }),
        Script::new(
            "compact: logical and physical, compacted and future errors",
            |s| {
                let a = s.k("a");
                for v in ["1", "2", "3", "4", "5"] {
                    s.op(put(&a, v)).ok(); // base+1..5
                }
                let b = s.k("b");
                s.op(put(&b, "1")).ok(); // base+6
                s.op(del(&b)).ok(); // base+7
                let cur = s.rev(7);
                s.op(compact(s.rev(2))).check(header_rev(cur));
                s.op(range(&a).rev(s.rev(1)))
                    .err(Code::OutOfRange, ERR_COMPACTED);
                s.op(range(&a).rev(s.rev(2))).check(value_version("2", 2));
                s.op(range(&a).rev(s.rev(3))).check(value_version("3", 3));
                s.op(range(&a).rev(s.rev(1)).serializable())
                    .err(Code::OutOfRange, ERR_COMPACTED);
                s.op(range(&a).rev(s.rev(1)).count_only())
                    .err(Code::OutOfRange, ERR_COMPACTED);
                s.op(range(s.k("none")).rev(s.rev(1)))
                    .err(Code::OutOfRange, ERR_COMPACTED);
                s.op(range(&a).rev(1)).err(Code::OutOfRange, ERR_COMPACTED);
                s.op(range(&a)).check(value_version("5", 5));
                s.op(compact(s.rev(2))).err(Code::OutOfRange, ERR_COMPACTED);
                s.op(compact(s.rev(1))).err(Code::OutOfRange, ERR_COMPACTED);
                s.op(compact(0)).err(Code::OutOfRange, ERR_COMPACTED);
                s.op(compact(cur + 1)).err(Code::OutOfRange, ERR_FUTURE_REV);
                s.op(compact(cur + 1).physical())
                    .err(Code::OutOfRange, ERR_FUTURE_REV);
                // Compact past the deletion of b: b is gone at every remaining revision.
                s.op(compact(s.rev(6)).physical()).check(header_rev(cur));
                s.op(range(&b).rev(s.rev(6))).check(count_more(1, false, 1));
                s.op(range(&b).rev(s.rev(5)))
                    .err(Code::OutOfRange, ERR_COMPACTED);
                s.op(range(s.k("")).prefix().rev(s.rev(6))).ok();
                s.op(range(s.k("")).prefix().rev(s.rev(7))).ok();
                s.op(txn().then(range(&a).rev(s.rev(5))))
                    .err(Code::OutOfRange, ERR_COMPACTED);
                s.op(txn().then(range(&a).rev(s.rev(6)))).ok();
                s.op(txn()
                    .when(cmp(&a).version(EQUAL, 5))
                    .then(put(&a, "6"))
                    .then(range(&a).rev(s.rev(5))))
                    .err(Code::OutOfRange, ERR_COMPACTED);
                s.op(range(&a).min_mod(s.rev(1))).ok();
                // Compact to the current revision.
                s.op(compact(cur).physical()).check(header_rev(cur));
                s.op(range(&a).rev(cur)).check(value_version("5", 5));
                s.op(range(&a).rev(cur - 1))
                    .err(Code::OutOfRange, ERR_COMPACTED);
                s.op(put(&a, "6")).ok();
                s.op(range(&a)).check(value_version("6", 6));
                s.op(range(s.k("")).prefix()).ok();
            },
        ),
        Script::new("compact: which error wins inside a txn", |s| {
            // etcd 3.4 validates the taken path in two passes: first every put (lease exists,
            // ignore_value/ignore_lease on an existing key), then every range (compacted/future
            // revision), each pass in op order and descending into nested txns; the first error wins.
            let (a, m) = (s.k("a"), s.k("missing"));
            s.op(put(&a, "1")).ok(); // base+1
            s.op(put(&a, "2")).ok(); // base+2
            s.op(compact(s.rev(2))).ok();
            let (old, future) = (s.rev(1), s.rev(3));
            let lease_nf = |st: &mut Step| {
                st.err(Code::NotFound, ERR_LEASE_NOT_FOUND);
            };
            lease_nf(
                s.op(txn()
                    .then(range(&a).rev(old))
                    .then(put(&a, "x").lease(MISSING_LEASE))),
            );
            lease_nf(
                s.op(txn()
                    .then(put(&a, "x").lease(MISSING_LEASE))
                    .then(range(&a).rev(old))),
            );
            lease_nf(
                s.op(txn()
                    .then(range(&a).rev(future))
                    .then(put(&a, "x").lease(MISSING_LEASE))),
            );
            lease_nf(
                s.op(txn()
                    .then(txn().then(range(&a).rev(old)))
                    .then(put(&a, "x").lease(MISSING_LEASE))),
            );
            lease_nf(
                s.op(txn()
                    .then(range(&a).rev(old))
                    .then(txn().then(put(&a, "x").lease(MISSING_LEASE)))),
            );
            s.op(txn()
                .then(range(&a).rev(old))
                .then(put(&m, "").ignore_value()))
                .err(Code::InvalidArgument, ERR_KEY_NOT_FOUND);
            s.op(txn()
                .then(put(&m, "").ignore_value())
                .then(put(&a, "x").lease(MISSING_LEASE)))
                .err(Code::InvalidArgument, ERR_KEY_NOT_FOUND);
            lease_nf(
                s.op(txn()
                    .then(put(&a, "x").lease(MISSING_LEASE))
                    .then(put(&m, "").ignore_value())),
            );
            s.op(txn().then(range(&a).rev(old)).then(range(&a).rev(future)))
                .err(Code::OutOfRange, ERR_COMPACTED);
            s.op(txn().then(range(&a).rev(future)).then(range(&a).rev(old)))
                .err(Code::OutOfRange, ERR_FUTURE_REV);
            // Validation errors (before apply) win over all of these.
            s.op(txn()
                .then(put(&a, "x").lease(MISSING_LEASE))
                .then(put(b"", "v")))
                .err(Code::InvalidArgument, ERR_EMPTY_KEY);
            s.op(txn()
                .then(range(&a).rev(old))
                .then(put(&a, "1"))
                .then(put(&a, "2")))
                .err(Code::InvalidArgument, ERR_DUPLICATE_KEY);
            // Errors in the branch that does not run do not matter.
            s.op(txn()
                .when(cmp(&a).version(EQUAL, 2))
                .then(range(&a))
                .otherwise(range(&a).rev(old))
                .otherwise(put(&a, "x").lease(MISSING_LEASE)))
                .check(txn_took(true));
        }),
        Script::new("compact: after compaction the store keeps working", |s| {
            let a = s.k("a");
            s.op(put(&a, "x")).ok();
            s.op(compact(s.rev(1))).ok();
            s.op(range(&a).rev(s.rev(1))).ok();
            s.op(del(&a).prev_kv()).ok();
            s.op(compact(s.rev(2)).physical()).ok();
            s.op(range(&a).rev(s.rev(2))).check(count_more(0, false, 0));
            s.op(range(s.k("")).prefix().count_only()).ok();
            s.op(put(&a, "y").prev_kv()).ok();
        }),
    ]
}

#[tokio::test]
async fn compaction() {
    run(compaction_scripts()).await;
}

// ------------------------------------------------------------------------------------------------
// Lease-dependent KV cases (the Lease RPCs themselves: compat_lease.rs)
// ------------------------------------------------------------------------------------------------

fn lease_scripts() -> Vec<Script> {
    vec![Script::new(
        "leases: attach, ignore_lease, compare, revoke",
        |s| {
            let (a, b) = (s.k("a"), s.k("b"));
            let (l1, l2) = (0x1000_0001, 0x1000_0002);
            s.op(lease_grant(l1, 600)).ok();
            s.op(lease_grant(l2, 600)).ok();
            s.op(lease_grant(l1, 600))
                .err(Code::FailedPrecondition, "etcdserver: lease already exists");
            s.op(put(&a, "1").lease(l1)).ok();
            s.op(range(&a)).ok();
            s.op(put(&a, "2").ignore_lease()).ok();
            s.op(put(&a, "").ignore_value().lease(l2).prev_kv()).ok();
            s.op(put(&a, "3").prev_kv()).ok();
            s.op(put(&a, "4").lease(l1)).ok();
            s.op(put(&b, "1").lease(l1)).ok();
            for r in ALL_RESULTS {
                s.op(txn().when(cmp(&a).lease(r, l1))).ok();
                s.op(txn().when(cmp(s.k("")).prefix().lease(r, l1))).ok();
            }
            s.op(txn()
                .when(cmp(&a).lease(EQUAL, l1))
                .then(put(&a, "5").lease(l2))
                .then(put(&b, "2").ignore_lease()))
                .ok();
            s.op(range(s.k("")).prefix()).ok();
            s.op(lease_revoke(l1)).ok();
            s.op(range(s.k("")).prefix()).ok();
            s.op(lease_revoke(l1))
                .err(Code::NotFound, ERR_LEASE_NOT_FOUND);
            s.op(put(&a, "6").lease(l1))
                .err(Code::NotFound, ERR_LEASE_NOT_FOUND);
            s.op(lease_revoke(l2)).ok();
            s.op(range(s.k("")).prefix()).ok();
            s.op(lease_grant(0x1000_0003, 1 << 40))
                .err(Code::OutOfRange, "etcdserver: too large lease TTL");
        },
    )]
}

#[tokio::test]
async fn lease_dependent() {
    run(lease_scripts()).await;
}

// ------------------------------------------------------------------------------------------------
// Randomized scripts (proptest)
// ------------------------------------------------------------------------------------------------

/// Generated ops: keys are indexes into [`KEYS`] under the case prefix; revisions are relative to the
/// current revision when the op runs, so they aim at recent history, the present and the future.
mod gen {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    /// The key space of one case (with prefixes nested inside it).
    pub const KEYS: [&str; 7] = ["a", "a/1", "a/2", "b", "b/1", "c", "d"];
    /// Values (ties and orderings for VALUE sort/compare).
    pub const VALUES: [&str; 6] = ["", "0", "1", "10", "2", "x"];

    #[derive(Clone, Debug)]
    pub enum Keys {
        Key(usize),
        Prefix(usize),
        /// `[k1, k2)`, possibly inverted or empty.
        Span(usize, usize),
        /// The whole case prefix.
        All,
    }

    /// A revision relative to the current one when the op runs.
    #[derive(Clone, Copy, Debug)]
    pub enum Rev {
        Back(i64),
        Future,
        Zero,
    }

    #[derive(Clone, Debug)]
    pub struct GPut {
        key: usize,
        value: usize,
        missing_lease: bool,
        prev_kv: bool,
        ignore_value: bool,
        ignore_lease: bool,
    }

    #[derive(Clone, Debug)]
    pub struct GRange {
        keys: Keys,
        limit: i64,
        rev: Option<Rev>,
        sort: (i32, i32),
        flags: (bool, bool, bool),
        filters: [Option<Rev>; 4],
    }

    #[derive(Clone, Debug)]
    pub struct GDel {
        keys: Keys,
        prev_kv: bool,
    }

    #[derive(Clone, Debug)]
    pub struct GCmp {
        keys: Keys,
        target: i32,
        result: i32,
        small: i64,
        rev: Rev,
        value: usize,
        missing_lease: bool,
    }

    #[derive(Clone, Debug)]
    pub struct GTxn {
        compares: Vec<GCmp>,
        success: Vec<GReq>,
        failure: Vec<GReq>,
    }

    #[derive(Clone, Debug)]
    pub enum GReq {
        Put(GPut),
        Range(GRange),
        Del(GDel),
        Txn(GTxn),
    }

    #[derive(Clone, Debug)]
    pub enum GOp {
        Req(GReq),
        Compact(Rev, bool),
    }

    fn key() -> impl Strategy<Value = usize> {
        0..KEYS.len()
    }

    fn keys() -> impl Strategy<Value = Keys> {
        prop_oneof![
            6 => key().prop_map(Keys::Key),
            2 => key().prop_map(Keys::Prefix),
            2 => (key(), key()).prop_map(|(a, b)| Keys::Span(a, b)),
            1 => Just(Keys::All),
        ]
    }

    fn rev() -> impl Strategy<Value = Rev> {
        prop_oneof![
            8 => (0i64..12).prop_map(Rev::Back),
            1 => Just(Rev::Future),
            1 => Just(Rev::Zero),
        ]
    }

    fn opt_rev(p_some: u32) -> impl Strategy<Value = Option<Rev>> {
        prop_oneof![(10 - p_some) => Just(None), p_some => rev().prop_map(Some)]
    }

    fn gput() -> impl Strategy<Value = GPut> {
        (
            key(),
            0..VALUES.len(),
            prop::bool::weighted(0.04),
            prop::bool::weighted(0.3),
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.1),
        )
            .prop_map(
                |(key, value, missing_lease, prev_kv, ignore_value, ignore_lease)| GPut {
                    key,
                    // ignore_value with a value is an error; keep that rarer than the valid form.
                    value: if ignore_value && value % 3 != 0 {
                        0
                    } else {
                        value
                    },
                    missing_lease,
                    prev_kv,
                    ignore_value,
                    ignore_lease,
                },
            )
    }

    fn grange() -> impl Strategy<Value = GRange> {
        let keys = prop_oneof![
            4 => key().prop_map(Keys::Key),
            2 => key().prop_map(Keys::Prefix),
            2 => (key(), key()).prop_map(|(a, b)| Keys::Span(a, b)),
            3 => Just(Keys::All),
        ];
        (
            keys,
            prop_oneof![3 => Just(0i64), 2 => 1i64..4],
            opt_rev(3),
            prop_oneof![3 => Just((0, 0)), 2 => (0i32..3, 0i32..5)],
            (
                prop::bool::weighted(0.2),
                prop::bool::weighted(0.2),
                prop::bool::weighted(0.1),
            ),
            [opt_rev(1), opt_rev(1), opt_rev(1), opt_rev(1)],
        )
            .prop_map(|(keys, limit, rev, sort, flags, filters)| GRange {
                keys,
                limit,
                rev,
                sort,
                flags,
                filters,
            })
    }

    fn gdel() -> impl Strategy<Value = GDel> {
        let keys = prop_oneof![
            12 => key().prop_map(Keys::Key),
            2 => key().prop_map(Keys::Prefix),
            2 => (key(), key()).prop_map(|(a, b)| Keys::Span(a, b)),
            1 => Just(Keys::All),
        ];
        (keys, prop::bool::weighted(0.4)).prop_map(|(keys, prev_kv)| GDel { keys, prev_kv })
    }

    fn gcmp() -> impl Strategy<Value = GCmp> {
        (
            prop_oneof![5 => key().prop_map(Keys::Key), 1 => keys()],
            0i32..5,
            0i32..4,
            0i64..4,
            rev(),
            0..VALUES.len(),
            prop::bool::weighted(0.2),
        )
            .prop_map(
                |(keys, target, result, small, rev, value, missing_lease)| GCmp {
                    keys,
                    target,
                    result,
                    small,
                    rev,
                    value,
                    missing_lease,
                },
            )
    }

    fn leaf_req() -> impl Strategy<Value = GReq> {
        prop_oneof![
            6 => gput().prop_map(GReq::Put),
            4 => grange().prop_map(GReq::Range),
            1 => gdel().prop_map(GReq::Del),
        ]
    }

    fn gtxn(inner: BoxedStrategy<GReq>) -> impl Strategy<Value = GTxn> {
        (
            vec(gcmp(), 0..3),
            vec(inner.clone(), 0..4),
            vec(inner, 0..3),
        )
            .prop_map(|(compares, success, failure)| GTxn {
                compares,
                success,
                failure,
            })
    }

    fn req() -> impl Strategy<Value = GReq> {
        let nested = prop_oneof![
            6 => leaf_req(),
            1 => gtxn(leaf_req().boxed()).prop_map(GReq::Txn),
        ]
        .boxed();
        prop_oneof![
            9 => leaf_req(),
            3 => gtxn(nested).prop_map(GReq::Txn),
        ]
    }

    /// One generated op.
    pub fn op() -> impl Strategy<Value = GOp> {
        prop_oneof![
            30 => req().prop_map(GOp::Req),
            1 => (rev(), any::<bool>()).prop_map(|(r, p)| GOp::Compact(r, p)),
        ]
    }

    // ---- resolution into real requests at run time ----

    fn resolve_rev(r: Rev, c: &Cursor) -> i64 {
        match r {
            Rev::Back(n) => c.current - n,
            Rev::Future => c.current + 1,
            Rev::Zero => 0,
        }
    }

    fn key_bytes(c: &Cursor, i: usize) -> Vec<u8> {
        c.k(KEYS[i])
    }

    fn span(c: &Cursor, keys: &Keys) -> (Vec<u8>, Vec<u8>) {
        match keys {
            Keys::Key(i) => (key_bytes(c, *i), Vec::new()),
            Keys::Prefix(i) => {
                let k = key_bytes(c, *i);
                let end = prefix_end(&k);
                (k, end)
            }
            Keys::Span(a, b) => (key_bytes(c, *a), key_bytes(c, *b)),
            Keys::All => {
                let k = c.k("");
                let end = prefix_end(&k);
                (k, end)
            }
        }
    }

    fn resolve_req(g: &GReq, c: &Cursor) -> RequestOp {
        match g {
            GReq::Put(p) => {
                let mut b = put(key_bytes(c, p.key), VALUES[p.value]);
                if p.missing_lease {
                    b = b.lease(MISSING_LEASE);
                }
                b.0.prev_kv = p.prev_kv;
                b.0.ignore_value = p.ignore_value;
                b.0.ignore_lease = p.ignore_lease;
                b.into()
            }
            GReq::Range(r) => {
                let (key, end) = span(c, &r.keys);
                let mut b = range(key).end(end).limit(r.limit);
                b.0.revision = r.rev.map(|v| resolve_rev(v, c)).unwrap_or(0);
                b.0.sort_order = r.sort.0;
                b.0.sort_target = r.sort.1;
                (b.0.serializable, b.0.keys_only, b.0.count_only) = r.flags;
                let f = |i: usize| r.filters[i].map(|v| resolve_rev(v, c)).unwrap_or(0);
                b.0.min_mod_revision = f(0);
                b.0.max_mod_revision = f(1);
                b.0.min_create_revision = f(2);
                b.0.max_create_revision = f(3);
                b.into()
            }
            GReq::Del(d) => {
                let (key, end) = span(c, &d.keys);
                let mut b = del(key).end(end);
                b.0.prev_kv = d.prev_kv;
                b.into()
            }
            GReq::Txn(t) => resolve_txn(t, c).into(),
        }
    }

    fn resolve_cmp(g: &GCmp, c: &Cursor) -> ballast_proto::etcdserverpb::Compare {
        let (key, end) = span(c, &g.keys);
        let result = CompareResult::try_from(g.result).unwrap_or(EQUAL);
        let base = cmp(key).end(end);
        match g.target {
            0 => base.version(result, g.small),
            1 => base.create(result, resolve_rev(g.rev, c)),
            2 => base.modrev(result, resolve_rev(g.rev, c)),
            3 => base.value(result, VALUES[g.value]),
            _ => base.lease(result, if g.missing_lease { MISSING_LEASE } else { 0 }),
        }
    }

    fn resolve_txn(t: &GTxn, c: &Cursor) -> Txn {
        let mut b = txn();
        b.0.compare = t.compares.iter().map(|g| resolve_cmp(g, c)).collect();
        b.0.success = t.success.iter().map(|g| resolve_req(g, c)).collect();
        b.0.failure = t.failure.iter().map(|g| resolve_req(g, c)).collect();
        b
    }

    /// The real request for `g` at the cursor's revision.
    pub fn resolve(g: &GOp, c: &Cursor) -> Op {
        match g {
            GOp::Compact(r, physical) => {
                let mut b = compact(resolve_rev(*r, c));
                b.0.physical = *physical;
                b.into()
            }
            GOp::Req(r) => match resolve_req(r, c).request {
                Some(Request::RequestPut(r)) => Op::Put(r),
                Some(Request::RequestRange(r)) => Op::Range(r),
                Some(Request::RequestDeleteRange(r)) => Op::DeleteRange(r),
                Some(Request::RequestTxn(r)) => Op::Txn(r),
                None => unreachable!("generated ops always set a request"),
            },
        }
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Randomized scripts: `BALLAST_COMPAT_CASES` cases (default 40) of on average `BALLAST_COMPAT_OPS`
/// ops (default 100) on ONE server pair, each case under a fresh key prefix; `BALLAST_COMPAT_SEED` replays a run.
#[test]
fn randomized_scripts() {
    use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
    use std::cell::RefCell;

    let cases = env_usize("BALLAST_COMPAT_CASES", 40) as u32;
    let ops = env_usize("BALLAST_COMPAT_OPS", 100);
    let seed = std::env::var("BALLAST_COMPAT_SEED")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });

    let pair = ballast_testkit::compat_pair();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let clients = RefCell::new(rt.block_on(Clients::connect(&pair)));
    let first_failure: RefCell<Option<String>> = RefCell::new(None);
    let last_failure: RefCell<Option<String>> = RefCell::new(None);
    let executed = RefCell::new(0usize);

    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        max_shrink_iters: 200,
        ..Config::default()
    });
    // Lengths vary (average `ops`) so that shrinking can drop ops.
    let strategy = proptest::collection::vec(gen::op(), 1..=2 * ops);
    let result = runner.run(&strategy, |case| {
        *executed.borrow_mut() += 1;
        let prefix = fresh_prefix("r");
        let name = format!("random case {}", *executed.borrow());
        let outcome = rt.block_on(clients.borrow_mut().run_generated(
            &name,
            &prefix,
            case.len(),
            |i, cursor| gen::resolve(&case[i], cursor),
        ));
        match outcome {
            Ok(()) => Ok(()),
            // The servers diverged in an earlier case: this one cannot be judged (and must not steer
            // shrinking); the failure that caused it is already recorded.
            Err(RunError::Diverged(_)) => Ok(()),
            Err(RunError::Mismatch(report)) => {
                first_failure
                    .borrow_mut()
                    .get_or_insert_with(|| report.clone());
                *last_failure.borrow_mut() = Some(report.clone());
                Err(TestCaseError::fail(
                    report.lines().next().unwrap_or("mismatch").to_owned(),
                ))
            }
        }
    });
    if let Err(e) = result {
        let first = first_failure.borrow().clone().unwrap_or_default();
        let last = last_failure.borrow().clone().unwrap_or_default();
        panic!(
            "randomized compatibility failed (seed {seed}: rerun with BALLAST_COMPAT_SEED={seed}).\n\n\
             FIRST FAILURE:\n{first}\n\nSMALLEST FAILING CASE FOUND WHILE SHRINKING:\n{last}\n\nproptest: {e}"
        );
    }
    eprintln!(
        "randomized compatibility: {} cases x {ops} ops passed (seed {seed})",
        cases
    );
}

// ------------------------------------------------------------------------------------------------
// The harness itself
// ------------------------------------------------------------------------------------------------

/// The comparison is not vacuous: a candidate etcd started with `--max-txn-ops=64` must be reported
/// as different (independent of `BALLAST_COMPAT_SELFTEST`; never involves Ballast).
#[tokio::test]
async fn harness_detects_a_difference() {
    use ballast_testkit::{CompatPair, Server, ServerKind, ServerOptions};
    let pair = CompatPair {
        reference: Server::start(ServerKind::Etcd),
        candidate: Server::start_with(
            ServerKind::Etcd,
            ServerOptions {
                extra_args: vec!["--max-txn-ops=64".into()],
                ..ServerOptions::default()
            },
        ),
    };
    let mut clients = Clients::connect(&pair).await;
    let scripts = [
        Script::new("identical on both", |s| {
            let a = s.k("a");
            s.op(put(&a, "1")).ok();
            s.op(range(&a)).check(value_version("1", 1));
        }),
        Script::new("differs", |s| {
            let t = txn_with(many_puts(s, "p", 100), vec![]);
            s.op(t).ok();
        }),
        Script::new("after a divergent write", |s| {
            s.op(range(s.k("a"))).ok();
        }),
    ];
    assert!(clients.run(&scripts[0]).await.is_ok());
    let report = clients.run(&scripts[1]).await.expect_err("must differ");
    assert!(
        report.contains("op #0")
            && report.contains("differing fields")
            && report.contains(ERR_TOO_MANY_OPS),
        "{report}"
    );
    let later = clients
        .run(&scripts[2])
        .await
        .expect_err("diverged servers");
    assert!(later.contains("diverged"), "{later}");
}
