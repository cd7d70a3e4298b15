//! Lease compatibility: every Lease RPC (LeaseGrant, LeaseRevoke, LeaseKeepAlive, LeaseTimeToLive,
//! LeaseLeases) and its errors, plus Put/Txn/Range with leases, run as scripts against a reference
//! etcd 3.4 and the candidate and compared field by field (see `ballast_tests::script`).
//!
//! Every lease id is chosen by the script (a server-chosen id differs between the two servers; the
//! `etcd-client` tests cover ID 0). Scripts only use TTLs far longer than the suite, except where
//! they test the minimum TTL, and then revoke those leases right away, so no lease expires during
//! the comparison. Expiry itself is covered by `lease_expiry.rs`.

use std::sync::atomic::{AtomicI64, Ordering};

use ballast_proto::etcdserverpb::compare::CompareResult;
use ballast_tests::etcd_errors::*;
use ballast_tests::script::*;
use tonic::Code;

const ERR_LEASE_EXIST: &str = "etcdserver: lease already exists";
const ERR_LEASE_TTL_TOO_LARGE: &str = "etcdserver: too large lease TTL";
/// etcd's largest TTL.
const MAX_TTL: i64 = 9_000_000_000;
/// The minimum TTL both servers grant with the default election timeout (1 s) and heartbeat
/// (100 ms): ceil(1.5 × 1 s).
const MIN_TTL: i64 = 2;
/// A TTL no script outlives.
const LONG: i64 = 600;

static NEXT_ID: AtomicI64 = AtomicI64::new(0x5ca1_e000);

/// Fresh lease ids for one script (distinct across scripts: leases outlive their script).
fn ids<const N: usize>() -> [i64; N] {
    let base = NEXT_ID.fetch_add(N as i64, Ordering::Relaxed);
    std::array::from_fn(|i| base + i as i64)
}

async fn run(scripts: Vec<Script>) {
    let pair = ballast_testkit::compat_pair();
    let mut clients = Clients::connect(&pair).await;
    clients.run_all(&scripts).await;
}

fn granted(id: i64, ttl: i64) -> impl Fn(&Outcome) -> Result<(), String> + Send + Sync {
    move |o| match o {
        Outcome::LeaseGrant(r) => ensure(r.id == id && r.ttl == ttl && r.error.is_empty(), || {
            format!("granted {:x} ttl {} != {id:x} ttl {ttl}", r.id, r.ttl)
        }),
        other => Err(format!(
            "expected a LeaseGrant answer, got {}",
            render(other)
        )),
    }
}

fn header_rev(rev: i64) -> impl Fn(&Outcome) -> Result<(), String> + Send + Sync {
    move |o| {
        ensure(o.revision() == Some(rev), || {
            format!("header revision {:?} != {rev}", o.revision())
        })
    }
}

/// A TimeToLive answer: remaining TTL (after normalization), granted TTL and key names.
fn ttl_is(
    prefix: String,
    ttl: i64,
    granted_ttl: i64,
    keys: &'static [&'static str],
) -> impl Fn(&Outcome) -> Result<(), String> + Send + Sync {
    move |o| match o {
        Outcome::LeaseTimeToLive(r) => {
            let want: Vec<Vec<u8>> = keys
                .iter()
                .map(|k| format!("{prefix}{k}").into_bytes())
                .collect();
            ensure(
                r.ttl == ttl && r.granted_ttl == granted_ttl && r.keys == want,
                || {
                    format!(
                        "time-to-live {} != ttl {ttl} granted {granted_ttl} keys {keys:?}",
                        render(o)
                    )
                },
            )
        }
        other => Err(format!(
            "expected a LeaseTimeToLive answer, got {}",
            render(other)
        )),
    }
}

fn kept_alive(ttl: i64) -> impl Fn(&Outcome) -> Result<(), String> + Send + Sync {
    move |o| match o {
        Outcome::LeaseKeepAlive(r) => ensure(r.ttl == ttl, || {
            format!("keep-alive TTL {} != {ttl}", r.ttl)
        }),
        other => Err(format!(
            "expected a LeaseKeepAlive answer, got {}",
            render(other)
        )),
    }
}

fn lists(ids: Vec<i64>) -> impl Fn(&Outcome) -> Result<(), String> + Send + Sync {
    move |o| match o {
        Outcome::LeaseLeases(r) => {
            let got: Vec<i64> = r.leases.iter().map(|l| l.id).collect();
            ensure(ids.iter().all(|id| got.contains(id)), || {
                format!("leases {got:x?} do not include {ids:x?}")
            })
        }
        other => Err(format!(
            "expected a LeaseLeases answer, got {}",
            render(other)
        )),
    }
}

fn lease_of_first_kv(lease: i64) -> impl Fn(&Outcome) -> Result<(), String> + Send + Sync {
    move |o| {
        let kv = o.as_range()?.kvs.first().ok_or("no kvs")?;
        ensure(kv.lease == lease, || {
            format!("lease {:x} != {lease:x}", kv.lease)
        })
    }
}

#[tokio::test]
async fn lease_compat() {
    run(vec![
        Script::new("grant: client-chosen ids, TTL rules, errors", |s| {
            let [a, b, c, d, e, f, g] = ids::<7>();
            let base = s.base;
            let p = s.prefix.clone();
            s.op(lease_grant(a, LONG))
                .check(granted(a, LONG))
                .check(header_rev(base));
            s.op(lease_grant(a, LONG))
                .err(Code::FailedPrecondition, ERR_LEASE_EXIST);
            s.op(lease_grant(a, 5))
                .err(Code::FailedPrecondition, ERR_LEASE_EXIST);
            // Below the minimum: raised to it (revoked at once, before it could expire).
            s.op(lease_grant(b, 0)).check(granted(b, MIN_TTL));
            s.op(lease_revoke(b)).check(header_rev(base));
            s.op(lease_grant(c, 1)).check(granted(c, MIN_TTL));
            s.op(lease_revoke(c)).ok();
            s.op(lease_grant(d, -30)).check(granted(d, MIN_TTL));
            s.op(lease_revoke(d)).ok();
            s.op(lease_grant(e, MAX_TTL)).check(granted(e, MAX_TTL));
            s.op(lease_grant(f, MAX_TTL + 1))
                .err(Code::OutOfRange, ERR_LEASE_TTL_TOO_LARGE);
            s.op(lease_grant(f, i64::MAX))
                .err(Code::OutOfRange, ERR_LEASE_TTL_TOO_LARGE);
            // The too-large TTL is checked before the id.
            s.op(lease_grant(a, MAX_TTL + 1))
                .err(Code::OutOfRange, ERR_LEASE_TTL_TOO_LARGE);
            // Negative ids are ids like any other.
            s.op(lease_grant(-g, LONG)).check(granted(-g, LONG));
            s.op(lease_ttl(-g, false))
                .check(ttl_is(p.clone(), LONG - 1, LONG, &[]));
            s.op(lease_leases()).check(lists(vec![a, e, -g]));
            s.op(lease_revoke(-g)).ok();
            s.op(lease_revoke(e)).ok();
            s.op(lease_revoke(a)).check(header_rev(base));
            s.op(lease_revoke(a))
                .err(Code::NotFound, ERR_LEASE_NOT_FOUND);
            s.op(lease_revoke(0))
                .err(Code::NotFound, ERR_LEASE_NOT_FOUND);
            s.op(lease_revoke(f))
                .err(Code::NotFound, ERR_LEASE_NOT_FOUND);
        }),
        Script::new("revoke deletes every attached key in one revision", |s| {
            let [l] = ids::<1>();
            let base = s.base;
            let p = s.prefix.clone();
            s.op(lease_grant(l, LONG)).ok();
            for k in ["c", "a", "b"] {
                let key = s.k(k);
                s.op(put(key, "v").lease(l)).ok();
            }
            let d = s.k("d");
            s.op(put(d, "v")).ok();
            let (a, end) = (s.k("a"), s.end());
            s.op(range(&a)).check(lease_of_first_kv(l));
            s.op(lease_ttl(l, true))
                .check(ttl_is(p.clone(), LONG - 1, LONG, &["a", "b", "c"]));
            s.op(lease_ttl(l, false))
                .check(ttl_is(p.clone(), LONG - 1, LONG, &[]));
            s.op(lease_keep_alive(l)).check(kept_alive(LONG));
            s.op(lease_revoke(l)).check(header_rev(base + 5));
            s.op(range(&a).end(&end))
                .keys(&["d"])
                .check(header_rev(base + 5));
            s.op(lease_ttl(l, true))
                .check(ttl_is(p.clone(), -1, 0, &[]));
            s.op(lease_keep_alive(l)).check(kept_alive(0));
            s.op(lease_revoke(l))
                .err(Code::NotFound, ERR_LEASE_NOT_FOUND);
            s.op(put(&a, "v").lease(l))
                .err(Code::NotFound, ERR_LEASE_NOT_FOUND);
        }),
        Script::new("attachments follow puts, deletes and txns", |s| {
            let [l1, l2, l3] = ids::<3>();
            let base = s.base;
            let p = s.prefix.clone();
            let [a, b, c, e, f, g] = ["a", "b", "c", "e", "f", "g"].map(|k| s.k(k));
            let end = s.end();
            s.op(lease_grant(l1, LONG)).ok();
            s.op(lease_grant(l2, LONG)).ok();
            s.op(put(&a, "1").lease(l1)).ok(); // +1
            s.op(put(&b, "1").lease(l1)).ok(); // +2
            s.op(put(&a, "2").lease(l2)).ok(); // +3: a moves to l2
            s.op(put(&b, "2")).ok(); // +4: b leaves l1
            s.op(put(&c, "1").lease(l1)).ok(); // +5
            s.op(del(&c)).ok(); // +6: c is gone
            s.op(put(&e, "1").lease(l1)).ok(); // +7
            s.op(put(&e, "2").ignore_lease().prev_kv()).ok(); // +8: keeps l1
            s.op(range(&e)).check(lease_of_first_kv(l1));
            s.op(txn().then(put(&f, "1").lease(l2))).ok(); // +9
            s.op(txn()
                .when(cmp(&a).lease(CompareResult::Equal, l2))
                .then(put(&g, "1").lease(l3)))
                .err(Code::NotFound, ERR_LEASE_NOT_FOUND);
            s.op(txn()
                .when(cmp(&a).lease(CompareResult::Equal, l1))
                .then(put(&g, "1").lease(l3)))
                .ok(); // the failure branch is empty: no revision
            s.op(lease_ttl(l1, true))
                .check(ttl_is(p.clone(), LONG - 1, LONG, &["e"]));
            s.op(lease_ttl(l2, true))
                .check(ttl_is(p.clone(), LONG - 1, LONG, &["a", "f"]));
            s.op(lease_revoke(l1)).check(header_rev(base + 10));
            s.op(lease_revoke(l2)).check(header_rev(base + 11));
            s.op(range(&a).end(&end)).keys(&["b"]);
            // A lease whose keys are all gone revokes without a revision.
            s.op(lease_grant(l3, LONG)).ok();
            s.op(put(&g, "1").lease(l3)).ok(); // +12
            s.op(del(&g).prev_kv()).ok(); // +13
            s.op(lease_revoke(l3)).check(header_rev(base + 13));
        }),
        Script::new(
            "leases in puts and txns: ignore_lease, unknown leases",
            |s| {
                let [l, missing] = ids::<2>();
                let [a, b] = ["a", "b"].map(|k| s.k(k));
                s.op(lease_grant(l, LONG)).ok();
                s.op(put(&a, "1").lease(l).prev_kv()).ok();
                s.op(put(&a, "2").ignore_lease().prev_kv()).ok();
                s.op(put(&a, "").ignore_value().ignore_lease().prev_kv())
                    .ok();
                s.op(put(&a, "3").lease(missing))
                    .err(Code::NotFound, ERR_LEASE_NOT_FOUND);
                s.op(put(&b, "1").ignore_lease())
                    .err(Code::InvalidArgument, ERR_KEY_NOT_FOUND);
                s.op(txn().then(put(&b, "1").lease(missing)))
                    .err(Code::NotFound, ERR_LEASE_NOT_FOUND);
                s.op(txn().then(put(&b, "1").lease(l)).then(range(&a))).ok();
                s.op(txn()
                    .when(cmp(&b).lease(CompareResult::Equal, l))
                    .then(put(&b, "2").ignore_lease()))
                    .ok();
                let end = s.end();
                s.op(range(&a).end(&end)).ok();
                s.op(lease_revoke(l)).ok();
                s.op(range(&a).end(&end)).keys(&[]);
            },
        ),
        Script::new("keep-alive, time-to-live and list of unknown leases", |s| {
            let [l] = ids::<1>();
            let p = s.prefix.clone();
            s.op(lease_keep_alive(l)).check(kept_alive(0));
            s.op(lease_keep_alive(0)).check(kept_alive(0));
            s.op(lease_ttl(l, true))
                .check(ttl_is(p.clone(), -1, 0, &[]));
            s.op(lease_ttl(0, false))
                .check(ttl_is(p.clone(), -1, 0, &[]));
            s.op(lease_grant(l, 3600)).ok();
            s.op(lease_keep_alive(l)).check(kept_alive(3600));
            s.op(lease_leases()).check(lists(vec![l]));
            s.op(lease_revoke(l)).ok();
            s.op(lease_leases()).ok();
        }),
    ])
    .await;
}

/// One keep-alive stream carrying several leases, interleaved, an unknown one among them: the
/// same answers, in order, from both servers.
#[tokio::test]
async fn many_leases_on_one_keep_alive_stream() {
    use ballast_proto::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest};
    let pair = ballast_testkit::compat_pair();
    let [a, b, missing] = ids::<3>();
    let mut answers = Vec::new();
    for server in [&pair.reference, &pair.candidate] {
        let mut lease = ballast_testkit::lease_client(&server.client_url()).await;
        for (id, ttl) in [(a, LONG), (b, 3600)] {
            lease
                .lease_grant(LeaseGrantRequest { id, ttl })
                .await
                .unwrap();
        }
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let order = [a, b, missing, a, b, 0];
        // grpc-go sends the response headers with the first answer: request first.
        tx.send(LeaseKeepAliveRequest { id: order[0] })
            .await
            .unwrap();
        let mut stream = lease
            .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let mut got = Vec::new();
        // One request at a time: each answer before the next request, as clients do.
        for (i, id) in order.into_iter().enumerate() {
            if i > 0 {
                tx.send(LeaseKeepAliveRequest { id }).await.unwrap();
            }
            let r = stream.message().await.unwrap().expect("an answer");
            let rev = r.header.as_ref().map(|h| h.revision);
            got.push((r.id, r.ttl, rev));
        }
        drop(tx);
        assert!(
            stream.message().await.unwrap().is_none(),
            "stream ends with its client"
        );
        answers.push(got);
    }
    assert_eq!(
        answers[0],
        vec![
            (a, LONG, Some(1)),
            (b, 3600, Some(1)),
            (missing, 0, Some(1)),
            (a, LONG, Some(1)),
            (b, 3600, Some(1)),
            (0, 0, Some(1))
        ],
        "reference answers"
    );
    assert_eq!(answers[0], answers[1], "reference vs candidate");
}
