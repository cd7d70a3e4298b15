//! The cluster harness (`ballast_testkit::Cluster` and its peer proxies) over real processes:
//! replication across members, losing and regaining the leader, a blackholed leader's peer traffic,
//! and the process-control and membership helpers.
//!
//! Every scenario runs against Debian's etcd 3.4 (module `etcd`): that validates the harness. The
//! same scenarios run against the candidate (module `candidate`: Ballast, or etcd again with
//! `BALLAST_COMPAT_SELFTEST=1`): a Ballast cluster of real processes, bootstrapped, grown with
//! a learner that joins with `--initial-cluster-state existing`, promoted, shrunk, failed over.
//!
//! Waits are generous (the harness's default 30 s); the members keep etcd's default heartbeat
//! (100 ms) and election timeout (1 s).

use std::process::Output;
use std::time::{Duration, Instant};

use ballast_testkit::{candidate_kind, Cluster, ClusterOptions, ServerKind};

/// How long a member that was down may take to show a write it missed.
const CATCH_UP: Duration = Duration::from_secs(30);

/// A `#[test]` per scenario on etcd, and one on the candidate.
macro_rules! on_etcd_and_candidate {
    ($($scenario:ident),* $(,)?) => {
        mod etcd {
            $(#[test]
            fn $scenario() {
                super::$scenario(super::ServerKind::Etcd);
            })*
        }
        mod candidate {
            $(#[test]
            fn $scenario() {
                super::$scenario(super::candidate_kind());
            })*
        }
    };
}

on_etcd_and_candidate!(
    replicates_and_survives_the_loss_of_its_leader,
    a_member_far_behind_catches_up,
    leases_work_through_a_follower,
    a_blackholed_leader_is_replaced_and_rejoins_when_healed,
    process_control_and_membership_helpers,
);

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn put(c: &Cluster, i: usize, key: &str, value: &str) {
    let out = c.etcdctl(i, &["put", key, value]);
    assert!(
        out.status.success() && text(&out) == "OK\n",
        "put {key} through {}: {out:?}",
        c.member(i).name()
    );
}

/// A linearizable get of `key` through member `i`: its value, or "" when there is none.
fn get(c: &Cluster, i: usize, key: &str) -> String {
    let out = c.etcdctl(i, &["get", key, "--print-value-only"]);
    assert!(
        out.status.success(),
        "get {key} through {}: {out:?}",
        c.member(i).name()
    );
    text(&out).trim_end().to_owned()
}

/// Poll a serializable get of `key` on member `i` (its own copy) until it shows `value`.
fn wait_local_value(c: &Cluster, i: usize, key: &str, value: &str) {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let out = c.etcdctl(i, &["get", key, "--print-value-only", "--consistency=s"]);
        if out.status.success() && text(&out).trim_end() == value {
            return;
        }
        if Instant::now() >= deadline {
            let log = std::fs::read_to_string(c.member(i).log_path()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "{} does not show {key}={value} after {CATCH_UP:?}: {out:?}\n--- its log, last lines ---\n{}",
                c.member(i).name(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Put through member 1, linearizable get through member 3; kill the leader: a new one is elected
/// and writes go through every survivor; restart the killed member: it catches up.
fn replicates_and_survives_the_loss_of_its_leader(kind: ServerKind) {
    let mut c = Cluster::start(kind, 3, ClusterOptions::default());
    assert_eq!(c.client_urls().len(), 3);
    put(&c, 0, "k", "v1");
    assert_eq!(get(&c, 2, "k"), "v1");

    let old = c.wait_leader();
    c.kill(old);
    assert!(c.member(old).pid().is_none());
    let new = c.wait_new_leader(old);
    assert_ne!(new, old);
    for i in (0..3).filter(|&i| i != old) {
        put(&c, i, &format!("after-{i}"), "v2");
        assert_eq!(get(&c, i, &format!("after-{i}")), "v2");
    }

    c.restart(old);
    for i in (0..3).filter(|&i| i != old) {
        wait_local_value(&c, old, &format!("after-{i}"), "v2");
    }
    c.wait_converged();
}

/// A follower stopped while the others write past several raft snapshots
/// (`--snapshot-count=50`) catches up when it comes back: Ballast's leader has compacted the
/// entries it missed, so it gets the whole backend (its log says so); etcd 3.4 keeps 5000
/// entries after a snapshot and may replay them instead. Afterwards its own copy matches,
/// and a write through it works.
fn a_member_far_behind_catches_up(kind: ServerKind) {
    let mut c = Cluster::start(
        kind,
        3,
        ClusterOptions {
            extra_args: vec!["--snapshot-count=50".into()],
            ..ClusterOptions::default()
        },
    );
    let leader = c.wait_leader();
    let behind = (leader + 1) % 3;
    assert!(c.stop(behind).is_some());
    for i in 0..200 {
        put(&c, leader, &format!("far/{i:03}"), &format!("v{i}"));
    }
    c.restart(behind);
    wait_local_value(&c, behind, "far/199", "v199");
    let out = c.etcdctl(
        behind,
        &["get", "far/", "--prefix", "--keys-only", "--consistency=s"],
    );
    let keys = text(&out).lines().filter(|l| !l.is_empty()).count();
    assert_eq!(keys, 200, "{}", text(&out));
    if kind == ServerKind::Ballast {
        let log = std::fs::read_to_string(c.member(behind).log_path()).unwrap_or_default();
        assert!(
            log.contains("installed the leader's snapshot"),
            "the member caught up without a snapshot: the leader kept the entries it missed"
        );
    }
    put(&c, behind, "after-catch-up", "1");
    assert_eq!(get(&c, leader, "after-catch-up"), "1");
    c.wait_converged();
}

/// A lease granted, kept alive and asked about through a follower: only the leader's lessor
/// renews and knows the remaining time, so a follower forwards those requests.
fn leases_work_through_a_follower(kind: ServerKind) {
    let c = Cluster::start(kind, 3, ClusterOptions::default());
    let follower = (c.wait_leader() + 1) % 3;
    let out = c.etcdctl(follower, &["lease", "grant", "60"]);
    assert!(out.status.success(), "{out:?}");
    let id = text(&out)
        .split_whitespace()
        .nth(1)
        .expect("lease <id> granted")
        .to_owned();
    let out = c.etcdctl(follower, &["lease", "keep-alive", "--once", &id]);
    assert!(
        out.status.success() && text(&out).contains("keepalived with TTL(60)"),
        "{out:?}"
    );
    let out = c.etcdctl(follower, &["lease", "timetolive", &id]);
    assert!(
        out.status.success() && text(&out).contains("granted with TTL(60s), remaining("),
        "{out:?}"
    );
    let out = c.etcdctl(follower, &["put", "leased", "v", "--lease", &id]);
    assert!(out.status.success(), "{out:?}");
    let out = c.etcdctl(follower, &["lease", "revoke", &id]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(get(&c, follower, "leased"), "");
}

/// With peer proxies, all peer traffic passes through them; blackholing the leader's proxy makes the
/// others elect a new leader; after the heal the cluster converges on one leader and every member
/// answers linearizable reads again.
fn a_blackholed_leader_is_replaced_and_rejoins_when_healed(kind: ServerKind) {
    let opts = ClusterOptions {
        peer_proxy: true,
        ..ClusterOptions::default()
    };
    let c = Cluster::start(kind, 3, opts);
    for m in c.members() {
        let proxy = m.proxy().expect("peer_proxy");
        assert_eq!(m.advertised_peer_url(), proxy.url());
        assert_ne!(m.advertised_peer_url(), m.peer_url());
        let stats = proxy.stats();
        assert!(
            stats.forwarded > 0,
            "no peer traffic through {}'s proxy: {stats:?}",
            m.name()
        );
    }
    put(&c, 0, "before", "1");

    let old = c.wait_leader();
    c.proxy(old).blackhole();
    let new = c.wait_new_leader(old);
    put(&c, new, "during", "2");
    assert!(c.proxy(old).stats().discarded > 0);

    c.proxy(old).heal();
    c.wait_converged();
    for i in 0..3 {
        wait_local_value(&c, i, "during", "2");
        assert_eq!(get(&c, i, "before"), "1");
    }
}

/// pause/resume, stop/restart, a learner added, promoted and removed, a member that lost its data
/// dir replaced.
fn process_control_and_membership_helpers(kind: ServerKind) {
    let mut c = Cluster::start(kind, 3, ClusterOptions::default());
    put(&c, 0, "k", "v");

    // A paused leader is replaced; resumed, it follows.
    let old = c.wait_leader();
    c.pause(old);
    assert!(c.member(old).is_paused() && c.member(old).pid().is_some());
    c.wait_new_leader(old);
    c.resume(old);
    c.wait_converged();

    // A graceful stop, then a restart on the same data dir.
    let follower = (c.wait_leader() + 1) % 3;
    assert!(c.stop(follower).is_some());
    put(&c, (follower + 1) % 3, "while-stopped", "1");
    c.restart(follower);
    wait_local_value(&c, follower, "while-stopped", "1");

    // A learner joins, catches up, is promoted, then removed.
    let learner = c.add_member("m4", true);
    assert_eq!(c.member(learner).name(), "m4");
    assert!(c.member(learner).is_learner());
    wait_local_value(&c, learner, "k", "v");
    c.promote_member(learner);
    let list = text(&c.etcdctl_all(&["member", "list"]));
    assert_eq!(list.lines().count(), 4, "{list}");
    assert!(list.contains(", m4, ") && !list.contains("true"), "{list}");
    c.remove_member(learner);
    assert!(c.member(learner).is_removed() && c.member(learner).pid().is_none());
    let list = text(&c.etcdctl_all(&["member", "list"]));
    assert_eq!(list.lines().count(), 3, "{list}");
    assert_eq!(c.client_urls().len(), 3);

    // A follower that lost its disk is replaced under a new id and gets the data back.
    let follower = (c.wait_leader() + 1) % 3;
    let id = c.member(follower).id();
    c.wipe_and_restart(follower);
    assert!(c.member(follower).id().is_some() && c.member(follower).id() != id);
    assert!(!c.member(follower).is_removed());
    wait_local_value(&c, follower, "k", "v");
    let list = text(&c.etcdctl_all(&["member", "list"]));
    assert_eq!(list.lines().count(), 3, "{list}");
    c.wait_converged();
}
