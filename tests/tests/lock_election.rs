//! Lock and Election services: the same scenario against Debian's etcd and the candidate (every
//! response compared), interop with etcdctl's client-side recipes on the same names, mutual
//! exclusion under contention, and release of an abandoned holder's lock by lease expiry.

use std::time::{Duration, Instant};

use ballast_proto::etcdserverpb::kv_client::KvClient;
use ballast_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest,
};
use ballast_proto::v3electionpb::election_client::ElectionClient;
use ballast_proto::v3electionpb::{
    CampaignRequest, LeaderKey, LeaderRequest, ProclaimRequest, ResignRequest,
};
use ballast_proto::v3lockpb::lock_client::LockClient;
use ballast_proto::v3lockpb::{LockRequest, UnlockRequest};
use ballast_testkit::{block_on, compat_pair, start_candidate};
use tonic::transport::Channel;

async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_owned())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap()
}

fn push(out: &mut Vec<String>, line: String) {
    eprintln!("  {line}");
    out.push(line);
}

fn err(s: tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

async fn grant(url: &str, id: i64, ttl: i64) {
    let mut l = ballast_testkit::lease_client(url).await;
    let r = l
        .lease_grant(LeaseGrantRequest { ttl, id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.id, id);
}

/// Everything a client can observe of one scenario, ids and terms left out.
async fn scenario(url: &str) -> Vec<String> {
    let ch = channel(url).await;
    let mut lock = LockClient::new(ch.clone());
    let mut el = ElectionClient::new(ch.clone());
    let mut kv = KvClient::new(ch.clone());
    let mut out = Vec::new();
    grant(url, 0x1111, 60).await;
    grant(url, 0x2222, 60).await;

    // Lock: first holder at once, key = name/<lease hex>.
    let r = lock
        .lock(LockRequest {
            name: b"mtx".to_vec(),
            lease: 0x1111,
        })
        .await
        .unwrap()
        .into_inner();
    push(
        &mut out,
        format!(
            "lock1 key={} rev={}",
            String::from_utf8_lossy(&r.key),
            r.header.unwrap().revision
        ),
    );
    let held = r.key;
    // Locking again with the same lease is a no-op that succeeds at once.
    let r = lock
        .lock(LockRequest {
            name: b"mtx".to_vec(),
            lease: 0x1111,
        })
        .await
        .unwrap()
        .into_inner();
    push(
        &mut out,
        format!(
            "lock1 again key={} rev={}",
            String::from_utf8_lossy(&r.key),
            r.header.unwrap().revision
        ),
    );
    // The second contender waits until the first unlocks.
    let mut lock2 = lock.clone();
    let waiter = tokio::spawn(async move {
        lock2
            .lock(LockRequest {
                name: b"mtx".to_vec(),
                lease: 0x2222,
            })
            .await
            .map(|r| r.into_inner())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    push(
        &mut out,
        format!("waiter done before unlock: {}", waiter.is_finished()),
    );
    let r = lock
        .unlock(UnlockRequest { key: held })
        .await
        .unwrap()
        .into_inner();
    push(
        &mut out,
        format!("unlock rev={}", r.header.unwrap().revision),
    );
    let r = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("waiter acquires after unlock")
        .unwrap()
        .unwrap();
    push(
        &mut out,
        format!(
            "lock2 key={} rev={}",
            String::from_utf8_lossy(&r.key),
            r.header.unwrap().revision
        ),
    );
    // Unknown lease.
    let e = lock
        .lock(LockRequest {
            name: b"mtx2".to_vec(),
            lease: 0x9999,
        })
        .await
        .unwrap_err();
    push(&mut out, format!("lock unknown lease: {}", err(e)));

    // Election.
    let e = el
        .leader(LeaderRequest {
            name: b"el".to_vec(),
        })
        .await
        .unwrap_err();
    push(&mut out, format!("leader of empty election: {}", err(e)));
    // Observe from before there is a leader (grpc-go sends the stream's headers only with its
    // first message, so the call itself waits: run it aside).
    let mut el_obs = el.clone();
    let observer = tokio::spawn(async move {
        let mut observe = el_obs
            .observe(LeaderRequest {
                name: b"el".to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let r = observe
                .message()
                .await
                .unwrap()
                .expect("observe stream open");
            let kv = r.kv.unwrap();
            seen.push(format!(
                "{}@{}",
                String::from_utf8_lossy(&kv.value),
                r.header.unwrap().revision
            ));
        }
        seen
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = el
        .campaign(CampaignRequest {
            name: b"el".to_vec(),
            lease: 0x1111,
            value: b"one".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    let leader: LeaderKey = r.leader.unwrap();
    push(
        &mut out,
        format!(
            "campaign1 key={} rev={} lease={:x} hdr={}",
            String::from_utf8_lossy(&leader.key),
            leader.rev,
            leader.lease,
            r.header.unwrap().revision
        ),
    );
    let mut el2 = el.clone();
    let campaigner = tokio::spawn(async move {
        el2.campaign(CampaignRequest {
            name: b"el".to_vec(),
            lease: 0x2222,
            value: b"two".to_vec(),
        })
        .await
        .map(|r| r.into_inner())
    });
    // Let the second campaigner's key land first (revision 6), on both servers alike.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = el
        .proclaim(ProclaimRequest {
            leader: Some(leader.clone()),
            value: b"one-b".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    push(
        &mut out,
        format!("proclaim rev={}", r.header.unwrap().revision),
    );
    let r = el
        .leader(LeaderRequest {
            name: b"el".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    let kv1 = r.kv.unwrap();
    push(
        &mut out,
        format!(
            "leader value={} create={} mod={}",
            String::from_utf8_lossy(&kv1.value),
            kv1.create_revision,
            kv1.mod_revision
        ),
    );
    push(
        &mut out,
        format!("campaign2 done while led: {}", campaigner.is_finished()),
    );
    let stale = LeaderKey {
        rev: leader.rev + 100,
        ..leader.clone()
    };
    let e = el
        .proclaim(ProclaimRequest {
            leader: Some(stale),
            value: b"x".to_vec(),
        })
        .await
        .unwrap_err();
    push(&mut out, format!("proclaim stale: {}", err(e)));
    let e = el
        .proclaim(ProclaimRequest {
            leader: None,
            value: b"x".to_vec(),
        })
        .await
        .unwrap_err();
    push(&mut out, format!("proclaim without leader: {}", err(e)));
    let r = el
        .resign(ResignRequest {
            leader: Some(leader.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    push(
        &mut out,
        format!("resign rev={}", r.header.unwrap().revision),
    );
    let r = tokio::time::timeout(Duration::from_secs(10), campaigner)
        .await
        .expect("second campaigner wins after resign")
        .unwrap()
        .unwrap();
    let l2 = r.leader.unwrap();
    push(
        &mut out,
        format!(
            "campaign2 key={} rev={}",
            String::from_utf8_lossy(&l2.key),
            l2.rev
        ),
    );
    // Observe saw: one, one-b, then two.
    let seen = tokio::time::timeout(Duration::from_secs(10), observer)
        .await
        .expect("observe responses")
        .unwrap();
    push(&mut out, format!("observed {seen:?}"));
    // Revoking the leader's lease ends its leadership.
    let mut l = ballast_testkit::lease_client(url).await;
    l.lease_revoke(LeaseRevokeRequest { id: 0x2222 })
        .await
        .unwrap();
    let e = el
        .leader(LeaderRequest {
            name: b"el".to_vec(),
        })
        .await
        .unwrap_err();
    push(&mut out, format!("leader after revoke: {}", err(e)));
    let r = kv
        .range(RangeRequest {
            key: b"el/".to_vec(),
            range_end: b"el0".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    push(&mut out, format!("keys left under el/: {}", r.count));
    out
}

#[test]
fn lock_and_election_behave_like_etcd() {
    let pair = compat_pair();
    let (r, c) = (pair.reference.client_url(), pair.candidate.client_url());
    let want = block_on(async move { scenario(&r).await });
    let got = block_on(async move { scenario(&c).await });
    // The reference really exercised what the scenario claims.
    assert!(
        want.contains(&"waiter done before unlock: false".to_string()),
        "{want:#?}"
    );
    assert!(
        want.contains(&"campaign2 done while led: false".to_string()),
        "{want:#?}"
    );
    assert_eq!(got, want, "candidate vs etcd 3.4");
}

/// etcdctl's client-side recipe and the server-side Lock service share one lock.
#[test]
fn etcdctl_lock_and_the_lock_service_exclude_each_other() {
    let server = start_candidate();
    let url = server.client_url();
    // etcdctl holds the lock while its command runs (about 2 s).
    let bin = ballast_testkit::etcdctl_binary();
    let mut holder = std::process::Command::new(bin)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={url}"))
        .args(["lock", "shared", "sleep", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until etcdctl holds it (its key exists under shared/).
    let deadline = Instant::now() + Duration::from_secs(10);
    let u = url.clone();
    block_on(async move {
        let url = u;
        let mut kv = ballast_testkit::kv_client(&url).await;
        loop {
            let r = kv
                .range(RangeRequest {
                    key: b"shared/".to_vec(),
                    range_end: b"shared0".to_vec(),
                    count_only: true,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            if r.count > 0 {
                break;
            }
            assert!(Instant::now() < deadline, "etcdctl never took the lock");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let started = Instant::now();
    let u = url.clone();
    let key = block_on(async move {
        let url = u;
        grant(&url, 0x77, 30).await;
        let mut lock = LockClient::new(channel(&url).await);
        lock.lock(LockRequest {
            name: b"shared".to_vec(),
            lease: 0x77,
        })
        .await
        .unwrap()
        .into_inner()
        .key
    });
    let waited = started.elapsed();
    let status = holder.wait().unwrap();
    assert!(status.success(), "etcdctl lock failed");
    assert!(
        waited >= Duration::from_millis(1000),
        "the service granted the lock while etcdctl held it (waited {waited:?})"
    );
    assert_eq!(key, b"shared/77");
    // And the other way round: while the service holds it, etcdctl waits, and gets it on unlock.
    let bin = ballast_testkit::etcdctl_binary();
    let mut waiter = std::process::Command::new(bin)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={url}"))
        .args(["lock", "shared", "echo", "got-it"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let early = waiter.try_wait().unwrap();
    if early.is_some() {
        let _ = waiter.kill();
    }
    assert!(early.is_none(), "etcdctl got a lock the service holds");
    let u = url.clone();
    block_on(async move {
        let mut lock = LockClient::new(channel(&u).await);
        lock.unlock(UnlockRequest { key }).await.unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = waiter.try_wait().unwrap() {
            assert!(status.success());
            break;
        }
        if Instant::now() > deadline {
            let _ = waiter.kill();
            panic!("etcdctl did not get the lock after the service unlocked it");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = waiter.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("got-it"));
}

/// N clients loop lock → read counter → write counter + 1 → unlock: the count is exact.
#[test]
fn mutual_exclusion_under_contention() {
    let server = start_candidate();
    let url = server.client_url();
    const CLIENTS: i64 = 4;
    const ROUNDS: i64 = 25;
    block_on(async move {
        let mut tasks = Vec::new();
        for c in 0..CLIENTS {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let id = 0x100 + c;
                grant(&url, id, 60).await;
                let ch = channel(&url).await;
                let mut lock = LockClient::new(ch.clone());
                let mut kv = KvClient::new(ch);
                for _ in 0..ROUNDS {
                    let key = lock
                        .lock(LockRequest {
                            name: b"counter-lock".to_vec(),
                            lease: id,
                        })
                        .await
                        .unwrap()
                        .into_inner()
                        .key;
                    let r = kv
                        .range(RangeRequest {
                            key: b"counter".to_vec(),
                            ..Default::default()
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    let n: i64 = r
                        .kvs
                        .first()
                        .map(|kv| String::from_utf8_lossy(&kv.value).parse().unwrap())
                        .unwrap_or(0);
                    // Widen the race window a little.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    kv.put(PutRequest {
                        key: b"counter".to_vec(),
                        value: (n + 1).to_string().into_bytes(),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                    lock.unlock(UnlockRequest { key }).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let mut kv = ballast_testkit::kv_client(&url).await;
        let r = kv
            .range(RangeRequest {
                key: b"counter".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.kvs[0].value, (CLIENTS * ROUNDS).to_string().into_bytes());
    });
}

/// A holder that goes away without unlocking (its lease is not kept alive) loses the lock
/// when its lease expires, and the waiter gets it then — not before.
#[test]
fn an_abandoned_holder_releases_the_lock_when_its_lease_expires() {
    let server = start_candidate();
    let url = server.client_url();
    block_on(async move {
        grant(&url, 0xdead, 3).await;
        grant(&url, 0xbeef, 60).await;
        let mut lock = LockClient::new(channel(&url).await);
        lock.lock(LockRequest {
            name: b"abandoned".to_vec(),
            lease: 0xdead,
        })
        .await
        .unwrap();
        let started = Instant::now();
        let mut other = LockClient::new(channel(&url).await);
        let r = tokio::time::timeout(
            Duration::from_secs(15),
            other.lock(LockRequest {
                name: b"abandoned".to_vec(),
                lease: 0xbeef,
            }),
        )
        .await
        .expect("lock released by lease expiry")
        .unwrap()
        .into_inner();
        let waited = started.elapsed();
        assert_eq!(r.key, b"abandoned/beef");
        assert!(
            waited >= Duration::from_secs(2),
            "acquired after {waited:?}, before the holder's 3 s lease could expire"
        );
    });
}

/// The `etcd-client` crate's lock and election clients against the candidate.
#[test]
fn etcd_client_crate_lock_and_election() {
    let server = start_candidate();
    let url = server.client_url();
    block_on(async move {
        let mut c = etcd_client::Client::connect([url.as_str()], None)
            .await
            .unwrap();
        let id = c.lease_grant(30, None).await.unwrap().id();
        let key = c
            .lock(
                "crate-lock",
                Some(etcd_client::LockOptions::new().with_lease(id)),
            )
            .await
            .unwrap()
            .key()
            .to_vec();
        assert_eq!(key, format!("crate-lock/{id:x}").into_bytes());
        c.unlock(key).await.unwrap();
        let r = c.campaign("crate-el", "v1", id).await.unwrap();
        let leader = r.leader().expect("leader key").clone();
        let l = c.leader("crate-el").await.unwrap();
        assert_eq!(l.kv().unwrap().value(), b"v1");
        c.proclaim(
            "v2",
            Some(etcd_client::ProclaimOptions::new().with_leader(leader.clone())),
        )
        .await
        .unwrap();
        assert_eq!(
            c.leader("crate-el").await.unwrap().kv().unwrap().value(),
            b"v2"
        );
        c.resign(Some(etcd_client::ResignOptions::new().with_leader(leader)))
            .await
            .unwrap();
        let e = c.leader("crate-el").await.unwrap_err();
        assert!(e.to_string().contains("election: no leader"), "{e}");
    });
}

/// `etcdctl elect` (the client-side recipe) and the server-side Election share one election.
#[test]
fn etcdctl_elect_and_the_election_service_share_leadership() {
    let server = start_candidate();
    let url = server.client_url();
    let bin = ballast_testkit::etcdctl_binary();
    let mut etcdctl = std::process::Command::new(bin)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={url}"))
        .args(["elect", "shared-el", "from-etcdctl"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let u = url.clone();
    block_on(async move {
        let ch = channel(&u).await;
        let mut el = ElectionClient::new(ch);
        // The service sees etcdctl's leadership.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match el
                .leader(LeaderRequest {
                    name: b"shared-el".to_vec(),
                })
                .await
            {
                Ok(r) if r.get_ref().kv.as_ref().unwrap().value == b"from-etcdctl" => break,
                _ if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                other => panic!("etcdctl's leadership never visible: {other:?}"),
            }
        }
        grant(&u, 0x5e, 30).await;
        // A server-side campaign waits behind etcdctl.
        let mut el2 = el.clone();
        let campaign = tokio::spawn(async move {
            el2.campaign(CampaignRequest {
                name: b"shared-el".to_vec(),
                lease: 0x5e,
                value: b"from-service".to_vec(),
            })
            .await
            .map(|r| r.into_inner())
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !campaign.is_finished(),
            "service campaign ended while etcdctl leads"
        );
        // etcdctl resigns on SIGINT.
        let status = std::process::Command::new("kill")
            .args(["-INT", &etcdctl.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let _ = etcdctl.wait();
        let r = tokio::time::timeout(Duration::from_secs(10), campaign)
            .await
            .expect("service campaign wins after etcdctl resigns")
            .unwrap()
            .unwrap();
        assert_eq!(r.leader.unwrap().key, b"shared-el/5e");
        let l = el
            .leader(LeaderRequest {
                name: b"shared-el".to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(l.kv.unwrap().value, b"from-service");
    });
}
