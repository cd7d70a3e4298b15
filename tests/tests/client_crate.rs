//! Core KV flows through the independent `etcd-client` crate against the candidate (Ballast, or etcd
//! with `BALLAST_COMPAT_SELFTEST=1`), with assertions on the results: what a real Rust client sees.
//! Every test starts its own fresh server, so revisions are absolute (a fresh store is at revision 1).

use ballast_testkit::{start_candidate, Server};
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, LeaseGrantOptions,
    LeaseTimeToLiveOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};
use tonic::Code;

async fn connect(server: &Server) -> Client {
    Client::connect([server.client_url()], None)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "connect to {} ({}): {e}",
                server.kind(),
                server.client_url()
            )
        })
}

fn rev_of(h: Option<&etcd_client::ResponseHeader>) -> i64 {
    h.expect("response header").revision()
}

/// The gRPC status of an `etcd-client` error.
fn status(e: etcd_client::Error) -> (Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_owned()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

fn keys(r: &etcd_client::GetResponse) -> Vec<String> {
    r.kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn put_and_get_with_options() {
    let server = start_candidate();
    let mut c = connect(&server).await;

    let r = c.put("k1", "v1", None).await.unwrap();
    assert_eq!(rev_of(r.header()), 2);
    assert!(r.prev_key().is_none());
    let r = c
        .put("k1", "v2", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(rev_of(r.header()), 3);
    let prev = r.prev_key().expect("prev kv");
    assert_eq!(
        (prev.value(), prev.version(), prev.mod_revision()),
        (&b"v1"[..], 1, 2)
    );
    c.put("k2", "b", None).await.unwrap(); // 4
    c.put("k3", "a", None).await.unwrap(); // 5
    c.put("other", "x", None).await.unwrap(); // 6

    // ignore_value keeps the value and bumps the version.
    let r = c
        .put(
            "k1",
            "",
            Some(PutOptions::new().with_ignore_value().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!(r.prev_key().unwrap().value(), b"v2");
    let got = c.get("k1", None).await.unwrap();
    let kv = &got.kvs()[0];
    assert_eq!(
        (
            kv.value(),
            kv.version(),
            kv.create_revision(),
            kv.mod_revision()
        ),
        (&b"v2"[..], 3, 2, 7)
    );
    c.put("k1", "v3", Some(PutOptions::new().with_ignore_lease()))
        .await
        .unwrap(); // 8
    assert_eq!(
        status(
            c.put("nope", "", Some(PutOptions::new().with_ignore_value()))
                .await
                .unwrap_err()
        ),
        (
            Code::InvalidArgument,
            "etcdserver: key not found".to_owned()
        )
    );
    assert_eq!(
        status(
            c.put("k1", "v", Some(PutOptions::new().with_lease(0x7a11_ba57)))
                .await
                .unwrap_err()
        ),
        (
            Code::NotFound,
            "etcdserver: requested lease not found".to_owned()
        )
    );
    assert_eq!(
        status(c.put("", "v", None).await.unwrap_err()),
        (
            Code::InvalidArgument,
            "etcdserver: key is not provided".to_owned()
        )
    );

    // Prefix, limit, count, more.
    let r = c
        .get("k", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(keys(&r), ["k1", "k2", "k3"]);
    assert_eq!((r.count(), r.more(), rev_of(r.header())), (3, false, 8));
    let r = c
        .get("k", Some(GetOptions::new().with_prefix().with_limit(2)))
        .await
        .unwrap();
    assert_eq!(
        (keys(&r), r.count(), r.more()),
        (vec!["k1".to_owned(), "k2".to_owned()], 3, true)
    );
    // Sorting.
    let r = c
        .get(
            "k",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Value, SortOrder::Ascend),
            ),
        )
        .await
        .unwrap();
    assert_eq!(keys(&r), ["k3", "k2", "k1"]);
    let r = c
        .get(
            "k",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Key, SortOrder::Descend)
                    .with_limit(1),
            ),
        )
        .await
        .unwrap();
    assert_eq!((keys(&r), r.more()), (vec!["k3".to_owned()], true));
    // Ranges: [k1, k3), from-key, all keys.
    let r = c
        .get("k1", Some(GetOptions::new().with_range("k3")))
        .await
        .unwrap();
    assert_eq!(keys(&r), ["k1", "k2"]);
    let r = c
        .get("k2", Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    assert_eq!(keys(&r), ["k2", "k3", "other"]);
    let r = c
        .get(
            "",
            Some(GetOptions::new().with_all_keys().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!((r.count(), r.kvs().len()), (4, 0));
    // keys_only, serializable.
    let r = c
        .get(
            "k",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_keys_only()
                    .with_serializable(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(keys(&r), ["k1", "k2", "k3"]);
    assert!(r.kvs().iter().all(|kv| kv.value().is_empty()));
    // Past revisions and revision filters.
    let r = c
        .get("k1", Some(GetOptions::new().with_revision(2)))
        .await
        .unwrap();
    assert_eq!(r.kvs()[0].value(), b"v1");
    assert_eq!(rev_of(r.header()), 8);
    let r = c
        .get("k", Some(GetOptions::new().with_prefix().with_revision(4)))
        .await
        .unwrap();
    assert_eq!(keys(&r), ["k1", "k2"]);
    let r = c
        .get(
            "k",
            Some(GetOptions::new().with_prefix().with_min_mod_revision(5)),
        )
        .await
        .unwrap();
    assert_eq!(
        (keys(&r), r.count()),
        (vec!["k1".to_owned(), "k3".to_owned()], 3)
    );
    let r = c
        .get(
            "k",
            Some(GetOptions::new().with_prefix().with_max_mod_revision(4)),
        )
        .await
        .unwrap();
    assert_eq!(keys(&r), ["k2"]);
    let r = c
        .get(
            "k",
            Some(GetOptions::new().with_prefix().with_min_create_revision(4)),
        )
        .await
        .unwrap();
    assert_eq!(keys(&r), ["k2", "k3"]);
    let r = c
        .get(
            "k",
            Some(GetOptions::new().with_prefix().with_max_create_revision(4)),
        )
        .await
        .unwrap();
    assert_eq!(keys(&r), ["k1", "k2"]);
    assert_eq!(
        status(
            c.get("k1", Some(GetOptions::new().with_revision(9)))
                .await
                .unwrap_err()
        ),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision".to_owned()
        )
    );
    // Missing key: no kvs, count 0.
    let r = c.get("missing", None).await.unwrap();
    assert_eq!((r.kvs().len(), r.count()), (0, 0));
}

#[tokio::test]
async fn delete_flows() {
    let server = start_candidate();
    let mut c = connect(&server).await;
    for k in ["a", "ab", "b", "c", "d"] {
        c.put(k, format!("v-{k}"), None).await.unwrap(); // revisions 2..=6
    }
    let r = c
        .delete("a", Some(DeleteOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!((r.deleted(), rev_of(r.header())), (1, 7));
    assert_eq!(r.prev_kvs()[0].value(), b"v-a");
    // Deleting nothing does not consume a revision.
    let r = c.delete("a", None).await.unwrap();
    assert_eq!((r.deleted(), rev_of(r.header())), (0, 7));
    let r = c
        .delete(
            "a",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!(
        (r.deleted(), r.prev_kvs().len(), rev_of(r.header())),
        (1, 1, 8)
    );
    let r = c
        .delete("b", Some(DeleteOptions::new().with_range("d")))
        .await
        .unwrap();
    assert_eq!(r.deleted(), 2);
    let r = c
        .delete("c", Some(DeleteOptions::new().with_from_key()))
        .await
        .unwrap();
    assert_eq!((r.deleted(), rev_of(r.header())), (1, 10));
    let r = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(r.count(), 0);
    // Re-creating a key starts a new generation.
    c.put("a", "again", None).await.unwrap();
    let r = c.get("a", None).await.unwrap();
    assert_eq!(
        (r.kvs()[0].version(), r.kvs()[0].create_revision()),
        (1, 11)
    );
    // The old generation is still readable at its revision.
    let r = c
        .get("a", Some(GetOptions::new().with_revision(6)))
        .await
        .unwrap();
    assert_eq!(r.kvs()[0].value(), b"v-a");
    assert_eq!(
        status(c.delete("", None).await.unwrap_err()),
        (
            Code::InvalidArgument,
            "etcdserver: key is not provided".to_owned()
        )
    );
}

#[tokio::test]
async fn txn_flows() {
    let server = start_candidate();
    let mut c = connect(&server).await;
    c.put("acct", "100", None).await.unwrap(); // 2

    // Create-if-absent (Kubernetes' pattern): mod_revision == 0.
    let create = |key: &str, value: &str| {
        Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)])
            .or_else([TxnOp::get(key, None)])
    };
    let r = c.txn(create("pod", "v1")).await.unwrap();
    assert!(r.succeeded());
    assert_eq!(rev_of(r.header()), 3);
    let r = c.txn(create("pod", "v2")).await.unwrap();
    assert!(!r.succeeded());
    match &r.op_responses()[..] {
        [TxnOpResponse::Get(g)] => assert_eq!(g.kvs()[0].value(), b"v1"),
        other => panic!("unexpected responses {other:?}"),
    }
    assert_eq!(rev_of(r.header()), 3);

    // Compare-and-swap on value and version; several ops in one revision.
    let r = c
        .txn(
            Txn::new()
                .when([
                    Compare::value("acct", CompareOp::Equal, "100"),
                    Compare::version("acct", CompareOp::Equal, 1),
                    Compare::create_revision("acct", CompareOp::Less, 3),
                ])
                .and_then([
                    TxnOp::put("acct", "50", Some(PutOptions::new().with_prev_key())),
                    TxnOp::put("log", "withdrew 50", None),
                    TxnOp::delete("pod", Some(DeleteOptions::new().with_prev_key())),
                    TxnOp::get("", Some(GetOptions::new().with_all_keys())),
                ]),
        )
        .await
        .unwrap();
    assert!(r.succeeded());
    assert_eq!(rev_of(r.header()), 4);
    let ops = r.op_responses();
    assert_eq!(ops.len(), 4);
    match &ops[0] {
        TxnOpResponse::Put(p) => assert_eq!(p.prev_key().unwrap().value(), b"100"),
        other => panic!("{other:?}"),
    }
    match &ops[2] {
        TxnOpResponse::Delete(d) => assert_eq!(d.deleted(), 1),
        other => panic!("{other:?}"),
    }
    match &ops[3] {
        TxnOpResponse::Get(g) => {
            assert_eq!(keys(g), ["acct", "log"]);
            assert!(g.kvs().iter().all(|kv| kv.mod_revision() == 4));
        }
        other => panic!("{other:?}"),
    }
    // Not-equal and greater compares; the failure branch runs.
    let r = c
        .txn(
            Txn::new()
                .when([Compare::value("acct", CompareOp::NotEqual, "50")])
                .and_then([TxnOp::put("acct", "0", None)])
                .or_else([TxnOp::put("audit", "refused", None)]),
        )
        .await
        .unwrap();
    assert!(!r.succeeded());
    let r = c
        .txn(
            Txn::new()
                .when([Compare::mod_revision("acct", CompareOp::Greater, 3)])
                .and_then([TxnOp::get("audit", None)]),
        )
        .await
        .unwrap();
    assert!(r.succeeded());
    // Nested txn.
    let inner = Txn::new()
        .when([Compare::version("log", CompareOp::Equal, 1)])
        .and_then([TxnOp::put("nested", "yes", None)]);
    let r = c
        .txn(Txn::new().and_then([TxnOp::txn(inner), TxnOp::get("nested", None)]))
        .await
        .unwrap();
    match &r.op_responses()[..] {
        [TxnOpResponse::Txn(t), TxnOpResponse::Get(g)] => {
            assert!(t.succeeded());
            assert_eq!(g.kvs()[0].value(), b"yes");
        }
        other => panic!("{other:?}"),
    }
    // Prefix compare over a range.
    let r = c
        .txn(Txn::new().when([Compare::version("a", CompareOp::Greater, 0).with_prefix()]))
        .await
        .unwrap();
    assert!(r.succeeded(), "acct and audit exist under prefix a");
    // Duplicate keys and too many ops.
    let e = c
        .txn(Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]))
        .await
        .unwrap_err();
    assert_eq!(
        status(e),
        (
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request".to_owned()
        )
    );
    let many: Vec<TxnOp> = (0..129)
        .map(|i| TxnOp::put(format!("m{i}"), "v", None))
        .collect();
    let e = c.txn(Txn::new().and_then(many)).await.unwrap_err();
    assert_eq!(
        status(e),
        (
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request".to_owned()
        )
    );
}

#[tokio::test]
async fn compaction_flows() {
    let server = start_candidate();
    let mut c = connect(&server).await;
    for v in ["1", "2", "3", "4"] {
        c.put("k", v, None).await.unwrap(); // revisions 2..=5
    }
    let r = c.compact(3, None).await.unwrap();
    assert_eq!(rev_of(r.header()), 5);
    let compacted = (
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted".to_owned(),
    );
    assert_eq!(
        status(
            c.get("k", Some(GetOptions::new().with_revision(2)))
                .await
                .unwrap_err()
        ),
        compacted
    );
    let r = c
        .get("k", Some(GetOptions::new().with_revision(3)))
        .await
        .unwrap();
    assert_eq!(r.kvs()[0].value(), b"2");
    assert_eq!(status(c.compact(3, None).await.unwrap_err()), compacted);
    assert_eq!(
        status(c.compact(6, None).await.unwrap_err()),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision".to_owned()
        )
    );
    c.compact(5, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    assert_eq!(
        status(
            c.get("k", Some(GetOptions::new().with_revision(4)))
                .await
                .unwrap_err()
        ),
        compacted
    );
    let r = c.get("k", None).await.unwrap();
    assert_eq!((r.kvs()[0].value(), r.kvs()[0].version()), (&b"4"[..], 4));
    // Writes continue after compaction.
    let r = c
        .put("k", "5", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(
        (rev_of(r.header()), r.prev_key().unwrap().value()),
        (6, &b"4"[..])
    );
}

// ------------------------------------------------------------------------------------------------
// Watch through the crate: what a Rust client built on `etcd-client` sees.
// ------------------------------------------------------------------------------------------------

/// The next watch response (panics after 10 s).
async fn next_watch(s: &mut etcd_client::WatchStream) -> etcd_client::WatchResponse {
    tokio::time::timeout(std::time::Duration::from_secs(10), s.message())
        .await
        .expect("no watch response within 10 s")
        .expect("watch stream error")
        .expect("watch stream ended")
}

/// `(type, key, value, mod_revision, version, prev value)` of an event.
fn ev(e: &etcd_client::Event) -> (&'static str, String, String, i64, i64, Option<String>) {
    let kv = e.kv().expect("event kv");
    (
        match e.event_type() {
            etcd_client::EventType::Put => "PUT",
            etcd_client::EventType::Delete => "DELETE",
        },
        kv.key_str().unwrap().to_owned(),
        kv.value_str().unwrap().to_owned(),
        kv.mod_revision(),
        kv.version(),
        e.prev_kv().map(|p| p.value_str().unwrap().to_owned()),
    )
}

fn some(s: &str) -> Option<String> {
    Some(s.to_owned())
}

#[tokio::test]
async fn watch_through_the_crate() {
    use etcd_client::{WatchFilterType, WatchOptions};

    let server = start_candidate();
    let mut c = connect(&server).await;
    c.put("w/a", "1", None).await.unwrap(); // 2
    c.put("w/b", "1", None).await.unwrap(); // 3
    c.put("w/a", "2", None).await.unwrap(); // 4
    c.delete("w/b", None).await.unwrap(); // 5
    c.put("x", "not watched", None).await.unwrap(); // 6

    // History replayed over a prefix, with prev_kv.
    let mut s = c
        .watch(
            "w/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_prev_key()
                    .with_start_revision(2),
            ),
        )
        .await
        .unwrap();
    let r = next_watch(&mut s).await;
    assert!(r.created() && !r.canceled(), "{r:?}");
    assert_eq!(rev_of(r.header()), 6);
    let all = r.watch_id();
    let mut got = Vec::new();
    while got.len() < 4 {
        let r = next_watch(&mut s).await;
        assert_eq!(r.watch_id(), all);
        got.extend(r.events().iter().map(ev));
    }
    assert_eq!(
        got,
        [
            ("PUT", "w/a".into(), "1".into(), 2, 1, None),
            ("PUT", "w/b".into(), "1".into(), 3, 1, None),
            ("PUT", "w/a".into(), "2".into(), 4, 2, some("1")),
            ("DELETE", "w/b".into(), "".into(), 5, 0, some("1")),
        ]
    );

    // A second watcher on the same stream: one key, no PUT events, from "now".
    s.watch(
        "w/a",
        Some(WatchOptions::new().with_filters([WatchFilterType::NoPut])),
    )
    .await
    .unwrap();
    let r = next_watch(&mut s).await;
    assert!(r.created(), "{r:?}");
    let deletes = r.watch_id();
    assert_ne!(deletes, all);
    assert_eq!(rev_of(r.header()), 6);

    c.delete("w/a", None).await.unwrap(); // 7
    c.put("w/a", "3", None).await.unwrap(); // 8
    let mut by_watcher: std::collections::BTreeMap<i64, Vec<_>> = Default::default();
    while by_watcher.get(&all).map_or(0, Vec::len) < 2 || !by_watcher.contains_key(&deletes) {
        let r = next_watch(&mut s).await;
        by_watcher
            .entry(r.watch_id())
            .or_default()
            .extend(r.events().iter().map(ev));
    }
    assert_eq!(
        by_watcher[&all],
        [
            ("DELETE", "w/a".into(), "".into(), 7, 0, some("2")),
            ("PUT", "w/a".into(), "3".into(), 8, 1, None),
        ]
    );
    assert_eq!(
        by_watcher[&deletes],
        [("DELETE", "w/a".into(), "".into(), 7, 0, None)]
    );

    // Progress: an empty response for watch id -1 at the current revision.
    s.request_progress().await.unwrap();
    let r = next_watch(&mut s).await;
    assert_eq!(
        (r.watch_id(), r.events().len(), rev_of(r.header())),
        (-1, 0, 8)
    );

    // Cancel: the watcher's cancel response, then nothing more for it.
    s.cancel(all).await.unwrap();
    let r = next_watch(&mut s).await;
    assert!(r.canceled() && r.watch_id() == all, "{r:?}");
    c.delete("w/a", None).await.unwrap(); // 9
    let r = next_watch(&mut s).await;
    assert_eq!(r.watch_id(), deletes);
    assert_eq!(
        r.events().iter().map(ev).collect::<Vec<_>>(),
        [("DELETE", "w/a".into(), "".into(), 9, 0, None)]
    );

    // A compacted start revision: created, then cancelled with the compact revision.
    c.compact(9, None).await.unwrap();
    let mut old = c
        .watch(
            "w/",
            Some(WatchOptions::new().with_prefix().with_start_revision(3)),
        )
        .await
        .unwrap();
    let r = next_watch(&mut old).await;
    assert!(r.created(), "{r:?}");
    let r = next_watch(&mut old).await;
    assert!(r.canceled(), "{r:?}");
    assert_eq!(r.compact_revision(), 9);
}

#[tokio::test]
async fn lease_flows() {
    let server = start_candidate();
    let mut c = connect(&server).await;

    // Server-chosen and client-chosen ids.
    let r = c.lease_grant(60, None).await.unwrap();
    let id = r.id();
    assert!(id > 0, "server-chosen id {id}");
    assert_eq!((r.ttl(), rev_of(r.header())), (60, 1));
    let other = c.lease_grant(0, None).await.unwrap().id();
    assert!(other > 0 && other != id);
    let r = c
        .lease_grant(30, Some(LeaseGrantOptions::new().with_id(0x7e57)))
        .await
        .unwrap();
    assert_eq!((r.id(), r.ttl()), (0x7e57, 30));
    assert_eq!(
        status(
            c.lease_grant(30, Some(LeaseGrantOptions::new().with_id(0x7e57)))
                .await
                .unwrap_err()
        ),
        (
            Code::FailedPrecondition,
            "etcdserver: lease already exists".to_owned()
        )
    );
    assert_eq!(
        status(c.lease_grant(9_000_000_001, None).await.unwrap_err()),
        (
            Code::OutOfRange,
            "etcdserver: too large lease TTL".to_owned()
        )
    );

    // Keys attached; Get shows the lease.
    c.put("l/a", "1", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap();
    c.put("l/b", "2", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap();
    c.put("l/c", "3", Some(PutOptions::new().with_lease(0x7e57)))
        .await
        .unwrap();
    let got = c
        .get("l/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let leases: Vec<i64> = got.kvs().iter().map(|kv| kv.lease()).collect();
    assert_eq!(leases, vec![id, id, 0x7e57]);

    let ttl = c
        .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!((ttl.id(), ttl.granted_ttl()), (id, 60));
    assert!((58..=60).contains(&ttl.ttl()), "remaining {}", ttl.ttl());
    let mut attached = ttl.keys().to_vec();
    attached.sort();
    assert_eq!(attached, vec![b"l/a".to_vec(), b"l/b".to_vec()]);

    let mut listed: Vec<i64> = c
        .leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    listed.sort();
    let mut want = vec![id, other, 0x7e57];
    want.sort();
    assert_eq!(listed, want);

    // Keep-alive stream: every answer carries the granted TTL.
    let (mut keeper, mut stream) = c.lease_keep_alive(id).await.unwrap();
    assert_eq!(keeper.id(), id);
    for _ in 0..3 {
        keeper.keep_alive().await.unwrap();
        let r = stream.message().await.unwrap().expect("keep-alive answer");
        assert_eq!((r.id(), r.ttl()), (id, 60));
    }
    drop(keeper);
    // A keep-alive of an unknown lease answers TTL 0, which the crate turns into an error.
    assert!(c.lease_keep_alive(0x5eed).await.is_err());

    // Revoke: the attached keys go in one revision; the other lease's key stays.
    let before = rev_of(got.header());
    let r = c.lease_revoke(id).await.unwrap();
    assert_eq!(rev_of(r.header()), before + 1);
    let got = c
        .get("l/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(keys(&got), vec!["l/c"]);
    assert_eq!(
        status(c.lease_revoke(id).await.unwrap_err()),
        (
            Code::NotFound,
            "etcdserver: requested lease not found".to_owned()
        )
    );
    let ttl = c.lease_time_to_live(id, None).await.unwrap();
    assert_eq!((ttl.ttl(), ttl.granted_ttl()), (-1, 0));
    assert_eq!(
        status(
            c.put("l/d", "4", Some(PutOptions::new().with_lease(id)))
                .await
                .unwrap_err()
        ),
        (
            Code::NotFound,
            "etcdserver: requested lease not found".to_owned()
        )
    );
}

#[tokio::test]
async fn lease_kept_alive_by_the_client_crate_then_expiring() {
    let server = start_candidate();
    let mut c = connect(&server).await;
    // The minimum TTL with the default election timeout.
    let id = c.lease_grant(2, None).await.unwrap().id();
    c.put("ka/k", "v", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap();
    let (mut keeper, mut stream) = c.lease_keep_alive(id).await.unwrap();
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(4) {
        keeper.keep_alive().await.unwrap();
        assert_eq!(stream.message().await.unwrap().unwrap().ttl(), 2);
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert_eq!(c.get("ka/k", None).await.unwrap().count(), 1);
    }
    drop((keeper, stream));
    let stopped = std::time::Instant::now();
    while c.get("ka/k", None).await.unwrap().count() == 1 {
        assert!(
            stopped.elapsed() < std::time::Duration::from_secs(5),
            "the lease did not expire after its keep-alives stopped"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
