//! Tests of the apply loop and its layers.

use super::layers::{apply_one, Batch};
use super::*;
use ballast_proto::internal::internal_raft_request::Request;
use ballast_mvcc::{EventKind, StoreOptions};
use ballast_proto::etcdserverpb::alarm_request::AlarmAction;
use ballast_proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmType, LeaseGrantRequest, LeaseRevokeRequest, PutRequest,
};
use ballast_proto::internal::{LeaseCheckpoint, LeaseDeadline, LeaseExpire};

use crate::lease::{LeaseTable, LessorConfig};

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    lessor: Lessor,
    index: u64,
    alarms: Alarms,
    quota: Quota,
    members: super::membership::Members,
}

impl Fixture {
    /// Every live key, as a full-range read sees it.
    fn all_keys(&self) -> ballast_mvcc::RangeResult {
        self.store
            .read()
            .unwrap()
            .range(&ballast_mvcc::RangeOptions::range(
                b"\0".to_vec(),
                b"\0".to_vec(),
            ))
            .unwrap()
    }

    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), StoreOptions::default()).unwrap();
        let cfg = LessorConfig::from_server(&crate::config::ServerConfig::default());
        Fixture {
            _dir: dir,
            store,
            lessor: Lessor::new(cfg, 1, LeaseTable::default()),
            index: 0,
            alarms: Alarms::default(),
            quota: Quota::new(crate::config::DEFAULT_QUOTA_BACKEND_BYTES, 0),
            members: super::membership::Members::detached(),
        }
    }

    /// Applies `reqs` as one batch; returns the answers and the published revisions.
    fn apply(
        &mut self,
        reqs: Vec<Request>,
    ) -> (Vec<Result<ApplyOutput, ServerError>>, Vec<RevEvents>) {
        let mut txn = self.store.write().unwrap();
        let mut compactions = Vec::new();
        let mut published = Vec::new();
        let mut outs = Vec::new();
        for r in reqs {
            let mut b = Batch {
                txn: &mut txn,
                compact_rev: -1,
                lessor: &self.lessor,
                compactions: &mut compactions,
                published: &mut published,
                alarms: &self.alarms,
                quota: &self.quota,
                members: &self.members,
            };
            outs.push(apply_one(&mut b, Some(r)));
        }
        self.index += 1;
        txn.commit(self.index, false).unwrap();
        (outs, published)
    }
}

fn grant(id: i64, ttl: i64) -> Request {
    Request::LeaseGrant(LeaseGrantRequest { id, ttl })
}
fn put(key: &str, lease: i64) -> Request {
    Request::Put(PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        lease,
        ..Default::default()
    })
}
fn revoke(id: i64) -> Request {
    Request::LeaseRevoke(LeaseRevokeRequest { id })
}
fn err(o: &Result<ApplyOutput, ServerError>) -> Option<ServerError> {
    o.as_ref().err().cloned()
}

#[test]
fn revoke_deletes_attached_keys_in_one_revision() {
    let mut f = Fixture::new();
    let (outs, _) = f.apply(vec![
        grant(1, 10),
        grant(1, 10),
        put("c", 1),
        put("a", 1),
        put("b", 1),
        put("z", 1),
        put("z", 0), // moved off the lease
        put("x", 77),
    ]);
    match &outs[0] {
        Ok(ApplyOutput::LeaseGrant(r)) => {
            assert_eq!(
                (r.id, r.ttl, r.header.as_ref().unwrap().revision),
                (1, 10, 1)
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err(&outs[1]), Some(ServerError::LeaseExist));
    assert_eq!(err(&outs[7]), Some(ServerError::LeaseNotFound));
    assert_eq!(f.store.current_revision(), 6);

    let (outs, published) = f.apply(vec![revoke(1), revoke(1)]);
    match &outs[0] {
        Ok(ApplyOutput::LeaseRevoke(r)) => assert_eq!(r.header.as_ref().unwrap().revision, 7),
        other => panic!("{other:?}"),
    }
    assert_eq!(err(&outs[1]), Some(ServerError::LeaseNotFound));
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].rev, 7);
    let deleted: Vec<&[u8]> = published[0]
        .events
        .iter()
        .map(|e| {
            assert_eq!(e.kind, EventKind::Delete);
            assert_eq!(e.kv.mod_revision, 7);
            assert_eq!(e.prev_kv.as_ref().unwrap().lease, 1);
            e.kv.key.as_slice()
        })
        .collect();
    assert_eq!(deleted, vec![b"a".as_slice(), b"b", b"c"]);
    let left = f.all_keys();
    assert_eq!(left.kvs.len(), 1);
    assert_eq!(left.kvs[0].key, b"z");
    assert!(!f.lessor.exists(1));
    assert!(crate::lease::persist::recover(&f.store).unwrap().is_empty());
}

#[test]
fn expiry_revokes_each_lease_as_its_own_revision() {
    let mut f = Fixture::new();
    f.apply(vec![
        grant(2, 5),
        grant(3, 5),
        grant(4, 5),
        put("k2", 2),
        put("k4", 4),
    ]);
    let (outs, published) = f.apply(vec![Request::LeaseExpire(LeaseExpire {
        ids: vec![2, 3, 9, 4],
    })]);
    assert!(matches!(outs[0], Ok(ApplyOutput::Lease)));
    // Lease 3 had no key: it goes without a revision; 9 does not exist.
    let revs: Vec<(i64, usize)> = published.iter().map(|r| (r.rev, r.events.len())).collect();
    assert_eq!(revs, vec![(4, 1), (5, 1)]);
    assert_eq!(f.lessor.len(), 0);
}

#[test]
fn a_lease_with_very_many_keys_is_revoked_in_bounded_revisions() {
    use crate::lease::apply::REVOKE_MAX_KEYS;
    let mut f = Fixture::new();
    let n = REVOKE_MAX_KEYS + 5;
    let mut reqs = vec![grant(1, 10)];
    reqs.extend((0..n).map(|i| put(&format!("k{i:06}"), 1)));
    f.apply(reqs);
    let base = f.store.current_revision();
    let rest = |id| Request::LeaseRevokeRest(LeaseRevokeRequest { id });
    let (outs, published) = f.apply(vec![
        revoke(1),
        // Overwritten before the rest is deleted: no longer the lease's key.
        put(&format!("k{:06}", n - 1), 0),
        grant(1, 10),
    ]);
    assert!(matches!(outs[0], Ok(ApplyOutput::LeaseRevoke(_))));
    assert_eq!(err(&outs[2]), Some(ServerError::LeaseExist));
    assert_eq!(published[0].events.len(), REVOKE_MAX_KEYS);
    assert_eq!(published[0].rev, base + 1);
    assert!(!f.lessor.fully_revoked(1));
    assert_eq!(f.lessor.first_leftover(), Some(1));
    let (outs, published) = f.apply(vec![rest(1), rest(1)]);
    assert!(outs.iter().all(|o| matches!(o, Ok(ApplyOutput::Lease))));
    // The 4 remaining keys in one revision; the second entry finds nothing left.
    let revs: Vec<(i64, usize)> = published.iter().map(|r| (r.rev, r.events.len())).collect();
    assert_eq!(revs, vec![(base + 3, 4)]);
    assert!(f.lessor.fully_revoked(1));
    let left = f.all_keys();
    assert_eq!(left.kvs.len(), 1);
    // Recovery finds interrupted leftovers: keys carrying a lease that is gone.
    let mut f = Fixture::new();
    let mut reqs = vec![grant(2, 10)];
    reqs.extend((0..n).map(|i| put(&format!("j{i:06}"), 2)));
    reqs.push(revoke(2));
    f.apply(reqs);
    let t = crate::lease::persist::recover(&f.store).unwrap();
    assert!(t.is_empty());
    assert_eq!((t.first_leftover(), t.leftover_len()), (Some(2), 5));
}

#[test]
fn lease_state_survives_reload() {
    let mut f = Fixture::new();
    f.apply(vec![
        grant(5, 30),
        grant(6, 60),
        put("a", 5),
        put("b", 6),
        Request::LeaseCheckpoint(LeaseCheckpoint {
            clock_ms: 4000,
            deadlines: vec![LeaseDeadline {
                id: 6,
                deadline_ms: 50_000,
            }],
        }),
    ]);
    let t = crate::lease::persist::recover(&f.store).unwrap();
    assert_eq!(t.clock_ms(), 4000);
    let (l5, l6) = (t.get(5).unwrap(), t.get(6).unwrap());
    assert_eq!((l5.ttl, l5.deadline_ms), (30, 30_000));
    assert_eq!((l6.ttl, l6.deadline_ms), (60, 50_000));
    assert_eq!(l6.keys.iter().collect::<Vec<_>>(), vec![&b"b".to_vec()]);
    // A txn put checks the lease too.
    let txn = ballast_proto::etcdserverpb::TxnRequest {
        success: vec![ballast_proto::etcdserverpb::RequestOp {
            request: Some(
                ballast_proto::etcdserverpb::request_op::Request::RequestPut(PutRequest {
                    key: b"t".to_vec(),
                    lease: 8,
                    ..Default::default()
                }),
            ),
        }],
        ..Default::default()
    };
    let (outs, _) = f.apply(vec![Request::Txn(txn)]);
    assert_eq!(err(&outs[0]), Some(ServerError::LeaseNotFound));
}

fn alarm(action: AlarmAction, kind: AlarmType) -> Request {
    Request::Alarm(AlarmRequest {
        action: action as i32,
        member_id: 1,
        alarm: kind as i32,
    })
}

/// The layers in order: a raised NOSPACE refuses puts and grants but not deletes; the
/// alarm is in the backend (a reload finds it); disarming opens the gate again.
#[test]
fn the_alarm_gate_follows_raised_alarms_and_survives_reload() {
    let mut f = Fixture::new();
    let (outs, _) = f.apply(vec![
        put("a", 0),
        alarm(AlarmAction::Activate, AlarmType::Nospace),
        alarm(AlarmAction::Activate, AlarmType::Nospace),
        put("b", 0),
        grant(1, 10),
        Request::DeleteRange(ballast_proto::etcdserverpb::DeleteRangeRequest {
            key: b"a".to_vec(),
            ..Default::default()
        }),
    ]);
    let raised = AlarmMember {
        member_id: 1,
        alarm: AlarmType::Nospace as i32,
    };
    for o in &outs[1..3] {
        match o {
            Ok(ApplyOutput::Alarm(r)) => assert_eq!(r.alarms, vec![raised]),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(err(&outs[3]), Some(ServerError::NoSpace));
    assert_eq!(err(&outs[4]), Some(ServerError::NoSpace));
    assert!(matches!(outs[5], Ok(ApplyOutput::DeleteRange(ref d)) if d.deleted == 1));
    assert_eq!(
        f.store.current_revision(),
        3,
        "put a (2), delete a (3); nothing else"
    );
    let reloaded = Alarms::load(&f.store).unwrap();
    assert_eq!(reloaded.get(AlarmType::None as i32), vec![raised]);
    assert!(reloaded.active().nospace);

    let (outs, _) = f.apply(vec![
        alarm(AlarmAction::Deactivate, AlarmType::Nospace),
        alarm(AlarmAction::Deactivate, AlarmType::Nospace),
        put("b", 0),
    ]);
    match (&outs[0], &outs[1]) {
        (Ok(ApplyOutput::Alarm(first)), Ok(ApplyOutput::Alarm(second))) => {
            assert_eq!(first.alarms, vec![raised]);
            assert!(second.alarms.is_empty(), "not raised: nothing cleared");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(outs[2], Ok(ApplyOutput::Put(_))));
    assert!(Alarms::load(&f.store).unwrap().get(0).is_empty());
}

/// etcd's quota applier: a request that did not fit is applied, and answered NoSpace.
#[test]
fn the_quota_layer_applies_then_answers_no_space() {
    let mut f = Fixture::new();
    f.quota = Quota::new(1000, 600);
    let big = Request::Put(PutRequest {
        key: b"big".to_vec(),
        value: vec![0; 200],
        ..Default::default()
    });
    let (outs, _) = f.apply(vec![put("small", 0), big, grant(3, 10)]);
    assert!(matches!(outs[0], Ok(ApplyOutput::Put(_))));
    assert_eq!(err(&outs[1]), Some(ServerError::NoSpace));
    assert!(matches!(outs[2], Ok(ApplyOutput::LeaseGrant(_))));
    assert_eq!(
        f.all_keys().kvs.len(),
        2,
        "the refused put is applied anyway"
    );
    assert!(f.lessor.exists(3));
}

/// A run of writes leaves the backend not durable (the WAL covers it); once the loop has
/// been idle for `DURABLE_WHEN_IDLE`, it is made durable without any further entry, and the
/// loop goes on applying.
#[test]
fn the_backend_becomes_durable_when_the_loop_goes_idle() {
    use super::test_support::{applier, put_entry as entry};
    let f = Fixture::new();
    let (applier, tx, _status, _wait) = applier(&f.store);
    let loop_thread = std::thread::spawn(move || applier.run());
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what} within 10 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    tx.send(ToApply::Entries(vec![entry(1, "a"), entry(2, "b")]))
        .unwrap();
    wait_for("entries applied", &|| f.store.applied_index() == 2);
    wait_for("the backend durable at the applied index", &|| {
        f.store.durable_applied_index() == 2
    });
    tx.send(ToApply::Entries(vec![entry(3, "c")])).unwrap();
    wait_for("the next entry applied", &|| f.store.applied_index() == 3);
    drop(tx);
    loop_thread.join().unwrap();
    // A clean stop leaves it durable too.
    assert_eq!(f.store.durable_applied_index(), 3);
    assert_eq!(f.all_keys().kvs.len(), 3);
}
