//! Lease expiry against a real server: keys vanish within TTL + a tolerance and never before the
//! TTL; a lease kept alive never expires, also across a clean restart and a crash; a restart
//! neither resets a lease's TTL nor extends it by more than the documented bound (one election
//! timeout, `docs/leases.md`); leases and their keys survive a restart; watchers see the DELETE
//! events of an expiry.
//!
//! The servers run with `--heartbeat-interval=50 --election-timeout=500`, so the minimum TTL is
//! 1 s and the grace period after a restart is 0.5 s: the tests stay short.

use std::time::{Duration, Instant};

use ballast_proto::etcdserverpb::kv_client::KvClient;
use ballast_proto::etcdserverpb::lease_client::LeaseClient;
use ballast_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseRevokeRequest,
    LeaseTimeToLiveRequest, PutRequest, RangeRequest,
};
use ballast_testkit::{candidate_kind, GrpcChannel, Server, ServerKind, ServerOptions};

const ELECTION_TIMEOUT: Duration = Duration::from_millis(500);
/// How late an expiry may be on a loaded test machine (the server checks every 50 ms).
const LATE: Duration = Duration::from_millis(1500);

fn fast_options() -> ServerOptions {
    ServerOptions {
        extra_args: vec![
            "--heartbeat-interval=50".into(),
            "--election-timeout=500".into(),
        ],
        ..Default::default()
    }
}

fn start(kind: ServerKind) -> Server {
    Server::start_with(kind, fast_options())
}

struct Clients {
    kv: KvClient<GrpcChannel>,
    lease: LeaseClient<GrpcChannel>,
}

async fn connect(server: &Server) -> Clients {
    let url = server.client_url();
    Clients {
        kv: ballast_testkit::kv_client(&url).await,
        lease: ballast_testkit::lease_client(&url).await,
    }
}

impl Clients {
    async fn grant(&mut self, id: i64, ttl: i64) -> i64 {
        let r = self
            .lease
            .lease_grant(LeaseGrantRequest { id, ttl })
            .await
            .expect("grant")
            .into_inner();
        r.id
    }

    async fn put(&mut self, key: &str, lease: i64) {
        self.kv
            .put(PutRequest {
                key: key.into(),
                value: b"v".to_vec(),
                lease,
                ..Default::default()
            })
            .await
            .expect("put");
    }

    /// Revokes lease `id`; the revision of the revoke.
    async fn revoke(&mut self, id: i64) -> i64 {
        self.lease
            .lease_revoke(LeaseRevokeRequest { id })
            .await
            .expect("revoke")
            .into_inner()
            .header
            .expect("header")
            .revision
    }

    /// Keys under `prefix`.
    async fn count(&mut self, prefix: &str) -> i64 {
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().unwrap() += 1;
        self.kv
            .range(RangeRequest {
                key: prefix.into(),
                range_end: end,
                count_only: true,
                ..Default::default()
            })
            .await
            .expect("range")
            .into_inner()
            .count
    }

    async fn ttl(&mut self, id: i64, keys: bool) -> (i64, i64, Vec<Vec<u8>>) {
        let r = self
            .lease
            .lease_time_to_live(LeaseTimeToLiveRequest { id, keys })
            .await
            .expect("time-to-live")
            .into_inner();
        (r.ttl, r.granted_ttl, r.keys)
    }

    async fn keep_alive(&mut self, id: i64) -> Result<i64, tonic::Status> {
        let mut stream = self
            .lease
            .lease_keep_alive(tokio_stream::iter([LeaseKeepAliveRequest { id }]))
            .await?
            .into_inner();
        match stream.message().await? {
            Some(r) => Ok(r.ttl),
            None => Err(tonic::Status::unavailable("keep-alive stream ended")),
        }
    }
}

/// Polls until `prefix` has no key; returns when that was seen (or panics after `limit`).
async fn wait_gone(c: &mut Clients, prefix: &str, limit: Duration) -> Instant {
    let start = Instant::now();
    loop {
        if c.count(prefix).await == 0 {
            return Instant::now();
        }
        assert!(
            start.elapsed() < limit,
            "keys under {prefix} still there after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn keys_vanish_within_ttl_and_not_before() {
    let server = start(candidate_kind());
    let mut c = connect(&server).await;
    let sent = Instant::now();
    let id = c.grant(0, 2).await;
    let granted = Instant::now();
    for k in ["exp/a", "exp/b", "exp/c"] {
        c.put(k, id).await;
    }
    // Not before the TTL, counted from when the grant was sent (with room for a slow read).
    tokio::time::sleep_until((sent + Duration::from_millis(1500)).into()).await;
    assert_eq!(c.count("exp/").await, 3, "keys expired before the TTL");
    let gone = wait_gone(&mut c, "exp/", Duration::from_secs(10)).await;
    let after = gone - granted;
    assert!(
        after <= Duration::from_secs(2) + LATE,
        "keys vanished {after:?} after the grant (TTL 2 s)"
    );
    assert_eq!(c.ttl(id, true).await, (-1, 0, vec![]));
    assert_eq!(c.keep_alive(id).await.unwrap(), 0);
    let err = c
        .lease
        .lease_revoke(LeaseRevokeRequest { id })
        .await
        .unwrap_err();
    assert_eq!(err.message(), "etcdserver: requested lease not found");
}

#[tokio::test]
async fn kept_alive_lease_never_expires() {
    let server = start(candidate_kind());
    let mut c = connect(&server).await;
    let id = c.grant(0, 2).await;
    c.put("ka/k", id).await;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        assert_eq!(c.keep_alive(id).await.unwrap(), 2);
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(c.count("ka/").await, 1, "kept-alive lease expired");
        }
    }
    let (remaining, granted, keys) = c.ttl(id, true).await;
    assert_eq!((granted, keys), (2, vec![b"ka/k".to_vec()]));
    assert!((0..=2).contains(&remaining), "remaining {remaining}");
    // Once keep-alives stop it goes.
    let stopped = Instant::now();
    let gone = wait_gone(&mut c, "ka/", Duration::from_secs(10)).await;
    assert!(gone - stopped <= Duration::from_secs(2) + LATE);
}

/// Keeps `id` alive every `every` until `until`, reconnecting after errors (a restarting
/// server); panics if the lease is ever reported gone. Returns the number of answers.
async fn keep_alive_loop(url: String, id: i64, every: Duration, until: Instant) -> usize {
    let mut answers = 0;
    let mut lease: Option<LeaseClient<GrpcChannel>> = None;
    while Instant::now() < until {
        if lease.is_none() {
            let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
                .unwrap()
                .connect_timeout(Duration::from_millis(200))
                .timeout(Duration::from_secs(2));
            lease = endpoint.connect().await.ok().map(LeaseClient::new);
        }
        if let Some(l) = lease.as_mut() {
            let res = async {
                let mut s = l
                    .lease_keep_alive(tokio_stream::iter([LeaseKeepAliveRequest { id }]))
                    .await?
                    .into_inner();
                s.message().await
            }
            .await;
            match res {
                Ok(Some(r)) => {
                    assert!(r.ttl > 0, "kept-alive lease {id:x} reported gone");
                    answers += 1;
                    tokio::time::sleep(every).await;
                    continue;
                }
                Ok(None) | Err(_) => lease = None,
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    answers
}

/// A lease kept alive every TTL/3 (like etcd's clients) survives a restart (`crash`: SIGKILL).
async fn kept_alive_across_restart(crash: bool) {
    let mut server = start(ServerKind::Ballast);
    let mut c = connect(&server).await;
    let id = c.grant(0, 3).await;
    c.put("kr/k", id).await;
    let until = Instant::now() + Duration::from_secs(7);
    let keeper = tokio::spawn(keep_alive_loop(
        server.client_url(),
        id,
        Duration::from_secs(1),
        until,
    ));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let server = tokio::task::spawn_blocking(move || {
        if crash {
            server.kill();
            server.spawn_without_wait();
            server.wait_ready().expect("restart after a crash");
        } else {
            server.restart();
        }
        server
    })
    .await
    .unwrap();
    let mut c = connect(&server).await;
    while Instant::now() < until {
        assert_eq!(c.count("kr/").await, 1, "kept-alive lease expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(keeper.await.unwrap() >= 4);
    assert_eq!(c.ttl(id, true).await.2, vec![b"kr/k".to_vec()]);
}

#[tokio::test]
async fn kept_alive_lease_survives_clean_restart() {
    kept_alive_across_restart(false).await;
}

#[tokio::test]
async fn kept_alive_lease_survives_crash() {
    kept_alive_across_restart(true).await;
}

/// A lease that is not kept alive expires after a restart at the TTL it had left (counted in
/// time the server was up), plus at most one election timeout: the restart neither resets nor
/// extends it (etcd 3.4 without checkpoints would give it its whole TTL again), and the time the
/// server was down (2 s here) does not count.
async fn restart_keeps_remaining_ttl(crash: bool) {
    let mut server = start(ServerKind::Ballast);
    let mut c = connect(&server).await;
    let id = c.grant(0, 6).await;
    let granted = Instant::now();
    c.put("rb/k", id).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let down = Instant::now();
    let lived = down - granted;
    let server = tokio::task::spawn_blocking(move || {
        if crash {
            server.kill();
        } else {
            server.stop();
        }
        std::thread::sleep(Duration::from_secs(2));
        server.spawn_without_wait();
        server.wait_ready().expect("restart");
        server
    })
    .await
    .unwrap();
    let up = Instant::now();
    let mut c = connect(&server).await;
    let (remaining, granted_ttl, _) = c.ttl(id, false).await;
    assert_eq!(granted_ttl, 6);
    assert!(
        remaining <= 3,
        "the restart reset the lease: {remaining} s left after living {lived:?} of 6 s"
    );
    let gone = wait_gone(&mut c, "rb/", Duration::from_secs(15)).await;
    // Time up since the restart, plus what it lived before, is the TTL: not less...
    let left = Duration::from_secs(6).saturating_sub(lived);
    let served = gone - up;
    eprintln!(
        "restart ({}): lived {lived:?} before, {remaining} s reported after, expired {served:?} \
         after the restart with {left:?} left",
        if crash { "crash" } else { "clean" }
    );
    // (`up` is when the restarted server answered a first read, a little after its lessor
    // took over.)
    assert!(
        served + Duration::from_millis(500) >= left,
        "expired early: {served:?} after the restart with {left:?} left"
    );
    // ...and not more than the documented bound (one election timeout; a crash may also lose
    // the last checkpoint period, half an election timeout), plus the poll/readiness slack.
    let bound = left
        + ELECTION_TIMEOUT
        + if crash {
            ELECTION_TIMEOUT / 2
        } else {
            Duration::ZERO
        };
    assert!(
        served <= bound + LATE,
        "expired {served:?} after the restart, bound {bound:?} (+{LATE:?} slack)"
    );
}

#[tokio::test]
async fn clean_restart_keeps_remaining_ttl() {
    restart_keeps_remaining_ttl(false).await;
}

#[tokio::test]
async fn crash_keeps_remaining_ttl() {
    restart_keeps_remaining_ttl(true).await;
}

#[tokio::test]
async fn leases_and_attachments_survive_restart() {
    let mut server = start(ServerKind::Ballast);
    let mut c = connect(&server).await;
    let a = c.grant(0x1111, 600).await;
    let b = c.grant(0x2222, 600).await;
    for i in 0..50 {
        c.put(&format!("rs/a{i:02}"), a).await;
    }
    c.put("rs/b", b).await;
    c.put("rs/a00", b).await; // moves to b
    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    let mut c = connect(&server).await;
    let (_, granted, keys) = c.ttl(a, true).await;
    assert_eq!((granted, keys.len()), (600, 49));
    assert_eq!(
        c.ttl(b, true).await.2,
        vec![b"rs/a00".to_vec(), b"rs/b".to_vec()]
    );
    let mut listed: Vec<i64> = c
        .lease
        .lease_leases(LeaseLeasesRequest {})
        .await
        .unwrap()
        .into_inner()
        .leases
        .iter()
        .map(|l| l.id)
        .collect();
    listed.sort();
    assert_eq!(listed, vec![a, b]);
    let rev = c.revoke(a).await;
    assert_eq!(c.count("rs/").await, 2);
    // 52 puts, then one revision for the revoke.
    assert_eq!(rev, 1 + 52 + 1);
    // The same id cannot be granted twice, also after a restart.
    let err = c
        .lease
        .lease_grant(LeaseGrantRequest { id: b, ttl: 5 })
        .await
        .unwrap_err();
    assert_eq!(err.message(), "etcdserver: lease already exists");
}

/// Watchers see one DELETE event per attached key, all at the expiry's revision, with prev_kv.
#[tokio::test]
async fn watchers_see_delete_events_on_expiry() {
    use etcd_client::{EventType, WatchOptions};
    let server = start(candidate_kind());
    let mut c = connect(&server).await;
    let mut client = etcd_client::Client::connect([server.client_url()], None)
        .await
        .unwrap();
    let mut events = client
        .watch(
            "wx/",
            Some(WatchOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    let id = c.grant(0, 1).await;
    for k in ["wx/b", "wx/a", "wx/c"] {
        c.put(k, id).await;
    }
    let mut deletes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while deletes.len() < 3 {
        let msg = tokio::time::timeout_at(deadline.into(), events.message())
            .await
            .expect("no DELETE events within 10 s")
            .unwrap()
            .expect("watch stream ended");
        for e in msg.events() {
            if e.event_type() == EventType::Delete {
                let kv = e.kv().unwrap();
                let prev = e.prev_kv().expect("prev_kv");
                assert_eq!(prev.lease(), id);
                deletes.push((kv.key().to_vec(), kv.mod_revision()));
            }
        }
    }
    // One revision, keys in order.
    let rev = deletes[0].1;
    assert_eq!(
        deletes,
        vec![
            (b"wx/a".to_vec(), rev),
            (b"wx/b".to_vec(), rev),
            (b"wx/c".to_vec(), rev)
        ]
    );
}

/// A clean stop does not wait for clients' keep-alive streams to close: they end, the stop
/// checkpoints the leases and exits (the testkit would SIGKILL it after 10 s otherwise).
#[tokio::test]
async fn stop_ends_open_keep_alive_streams() {
    let server = start(ServerKind::Ballast);
    let mut client = etcd_client::Client::connect([server.client_url()], None)
        .await
        .unwrap();
    let id = client.lease_grant(60, None).await.unwrap().id();
    let (mut keeper, mut stream) = client.lease_keep_alive(id).await.unwrap();
    keeper.keep_alive().await.unwrap();
    assert_eq!(stream.message().await.unwrap().unwrap().ttl(), 60);
    let started = Instant::now();
    let (status, mut server) = tokio::task::spawn_blocking(move || {
        let mut server = server;
        (server.stop(), server)
    })
    .await
    .unwrap();
    let took = started.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "stop with an open keep-alive stream: {status:?}"
    );
    assert!(took < Duration::from_secs(5), "stop took {took:?}");
    assert!(!matches!(stream.message().await, Ok(Some(_))));
    // The lease is still there after the restart.
    tokio::task::spawn_blocking(move || {
        server.spawn_without_wait();
        server.wait_ready().unwrap();
        server
    })
    .await
    .map(|server| async move {
        let mut c = connect(&server).await;
        assert_eq!(c.ttl(id, false).await.1, 60);
    })
    .unwrap()
    .await;
}

/// Revoking a lease with more keys than one revision deletes (10,000) answers once every key
/// is gone, and the id is free again.
#[tokio::test]
async fn revoke_of_a_lease_with_very_many_keys_answers_when_all_are_gone() {
    use ballast_proto::etcdserverpb::request_op::Request;
    use ballast_proto::etcdserverpb::{RequestOp, TxnRequest};
    let server = start(ServerKind::Ballast);
    let mut c = connect(&server).await;
    let id = c.grant(0x600d, 600).await;
    const KEYS: usize = 25_000;
    for t in 0..KEYS.div_ceil(128) {
        let ops = (t * 128..((t + 1) * 128).min(KEYS))
            .map(|i| RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: format!("many/{i:06}").into_bytes(),
                    value: b"v".to_vec(),
                    lease: id,
                    ..Default::default()
                })),
            })
            .collect();
        c.kv.txn(TxnRequest {
            success: ops,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let before =
        c.kv.range(RangeRequest {
            key: b"x".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    let rev = c.revoke(id).await;
    assert_eq!(c.count("many/").await, 0);
    // Three revisions of at most 10,000 deletes each.
    assert_eq!(rev, before + 3);
    assert_eq!(c.ttl(id, false).await.0, -1);
    assert_eq!(c.grant(id, 5).await, id);
}
