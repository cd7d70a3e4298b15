//! Alarms, as etcd keeps them: a set of (member id, alarm type) raised and cleared through Raft,
//! kept in memory and in the backend's meta table (keys in [`crate::schema`]), reloaded at start.
//!
//! - [`AlarmTable`] is the plain state (no I/O, no locks): etcd's `v3alarm.AlarmStore` rules.
//! - [`Alarms`] shares it between the apply thread (its only writer, through [`apply`]) and the
//!   services (GET, Status, `/health`, the role methods' quota check).
//! - [`gate`] is the first apply layer: while NOSPACE is raised, Put, Txn with puts and
//!   LeaseGrant are refused (etcd's capped applier); while CORRUPT is raised, every write and
//!   raft-ordered read is refused (etcd's corrupt applier).
//!
//! It must never talk to Raft or the network.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

use ballast_mvcc::{MvccError, Store, WriteTxn};
use ballast_proto::etcdserverpb::alarm_request::AlarmAction;
use ballast_proto::etcdserverpb::{AlarmMember, AlarmRequest, AlarmResponse, AlarmType};
use ballast_proto::internal::internal_raft_request::Request;

use crate::error::ServerError;
use crate::quota;
use crate::schema;

/// The raised alarms: (alarm type, member id), at most one of each pair.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AlarmTable {
    raised: BTreeSet<(i32, u64)>,
}

impl AlarmTable {
    /// Raises `alarm` for `member_id`. Returns the alarm (also when it was raised already, as
    /// etcd answers) and whether this raised it.
    pub fn activate(&mut self, member_id: u64, alarm: i32) -> (AlarmMember, bool) {
        let new = self.raised.insert((alarm, member_id));
        (member(alarm, member_id), new)
    }

    /// Clears `alarm` for `member_id`; the cleared alarm, or None when it was not raised.
    pub fn deactivate(&mut self, member_id: u64, alarm: i32) -> Option<AlarmMember> {
        self.raised
            .remove(&(alarm, member_id))
            .then(|| member(alarm, member_id))
    }

    /// The raised alarms of type `alarm`, or all of them for NONE (etcd's `AlarmStore.Get`:
    /// the member id of a request does not filter). Ordered by type, then member id.
    pub fn get(&self, alarm: i32) -> Vec<AlarmMember> {
        self.raised
            .iter()
            .filter(|(t, _)| alarm == AlarmType::None as i32 || *t == alarm)
            .map(|&(t, m)| member(t, m))
            .collect()
    }

    pub fn is_raised(&self, alarm: AlarmType) -> bool {
        self.raised.iter().any(|(t, _)| *t == alarm as i32)
    }

    pub fn is_empty(&self) -> bool {
        self.raised.is_empty()
    }

    /// Which gates are closed.
    pub fn active(&self) -> Active {
        Active {
            nospace: self.is_raised(AlarmType::Nospace),
            corrupt: self.is_raised(AlarmType::Corrupt),
        }
    }
}

fn member(alarm: i32, member_id: u64) -> AlarmMember {
    AlarmMember { member_id, alarm }
}

/// The alarms that change what the apply loop accepts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Active {
    pub nospace: bool,
    pub corrupt: bool,
}

/// The alarm table shared by the apply thread (the only writer) and the services.
#[derive(Debug, Default)]
pub struct Alarms {
    table: parking_lot::RwLock<AlarmTable>,
    /// Any alarm raised (lets `/health` and Status skip the lock when none is).
    any: AtomicBool,
    nospace: AtomicBool,
    corrupt: AtomicBool,
}

impl Alarms {
    /// The alarms recorded in the backend (raised before the last stop).
    pub fn load(store: &Store) -> Result<Alarms, MvccError> {
        let table = stored(store, "alarm raised before the last stop is still active")?;
        Ok(Alarms::from_table(table))
    }

    /// Replaces the raised alarms with those recorded in `store`, whose contents were just
    /// replaced (a backend snapshot installed), as etcd reloads its alarm store after
    /// applying a snapshot. On error the alarms are left as they were.
    pub fn reload(&self, store: &Store) -> Result<(), MvccError> {
        let table = stored(store, "alarm raised in the installed store")?;
        self.set(table);
        Ok(())
    }

    pub fn from_table(table: AlarmTable) -> Alarms {
        let a = Alarms::default();
        a.set(table);
        a
    }

    fn set(&self, table: AlarmTable) {
        self.any.store(!table.is_empty(), Ordering::Release);
        let active = table.active();
        self.nospace.store(active.nospace, Ordering::Release);
        self.corrupt.store(active.corrupt, Ordering::Release);
        *self.table.write() = table;
    }

    /// The raised alarms of type `alarm` (NONE: all), as [`AlarmTable::get`].
    pub fn get(&self, alarm: i32) -> Vec<AlarmMember> {
        if !self.any.load(Ordering::Acquire) {
            return Vec::new();
        }
        self.table.read().get(alarm)
    }

    /// Which gates are closed (no lock: the apply loop asks for every entry).
    pub fn active(&self) -> Active {
        Active {
            nospace: self.nospace.load(Ordering::Acquire),
            corrupt: self.corrupt.load(Ordering::Acquire),
        }
    }

    /// Whether a NOSPACE alarm is raised (by any member).
    pub fn nospace(&self) -> bool {
        self.nospace.load(Ordering::Acquire)
    }

    /// Whether `member_id` has a NOSPACE alarm raised.
    pub fn nospace_of(&self, member_id: u64) -> bool {
        self.nospace()
            && self
                .table
                .read()
                .raised
                .contains(&(AlarmType::Nospace as i32, member_id))
    }
}

/// The alarms recorded in `store`'s meta table; each raised one is logged with `what`.
fn stored(store: &Store, what: &str) -> Result<AlarmTable, MvccError> {
    let mut table = AlarmTable::default();
    for (k, _) in store.read()?.meta_with_prefix(schema::ALARM_PREFIX)? {
        match schema::parse_alarm_key(&k) {
            Some((t, m)) => {
                table.activate(m, t);
            }
            None => tracing::warn!(key = %k, "ignoring a malformed alarm key in the backend"),
        }
    }
    for a in table.get(AlarmType::None as i32) {
        tracing::warn!(
            alarm = alarm_name(a.alarm),
            member_id = format!("{:x}", a.member_id),
            "{what}"
        );
    }
    Ok(table)
}

/// etcd's name of an alarm type (`AlarmType.String()`), e.g. "NOSPACE"; the number for an
/// unknown one, as Go prints it.
pub fn alarm_name(alarm: i32) -> String {
    match AlarmType::try_from(alarm) {
        Ok(t) => t.as_str_name().to_string(),
        Err(_) => alarm.to_string(),
    }
}

/// How etcd prints an alarm in `Status.errors` (the protobuf text form of `AlarmMember`).
pub fn status_error(a: &AlarmMember) -> String {
    format!("memberID:{} alarm:{} ", a.member_id, alarm_name(a.alarm))
}

/// Applies an alarm request in the apply loop's batch: the table in memory and its meta keys
/// change together. The answer is etcd's: ACTIVATE returns the alarm (raised now or before);
/// DEACTIVATE returns the cleared alarm, or nothing when it was not raised; GET the alarms of
/// the type (all for NONE).
pub fn apply(txn: &mut WriteTxn<'_>, alarms: &Alarms, r: &AlarmRequest) -> AlarmResponse {
    let mut table = alarms.table.read().clone();
    let mut out = Vec::new();
    match AlarmAction::try_from(r.action) {
        Ok(AlarmAction::Get) => out = table.get(r.alarm),
        Ok(AlarmAction::Activate) => {
            let (m, new) = table.activate(r.member_id, r.alarm);
            if new {
                txn.put_meta(
                    &schema::alarm_key(r.alarm, r.member_id),
                    &[schema::ALARM_FORMAT],
                );
                tracing::warn!(
                    alarm = alarm_name(r.alarm),
                    from = format!("{:x}", r.member_id),
                    "alarm raised"
                );
            }
            out.push(m);
        }
        Ok(AlarmAction::Deactivate) => {
            if let Some(m) = table.deactivate(r.member_id, r.alarm) {
                txn.delete_meta(&schema::alarm_key(r.alarm, r.member_id));
                tracing::warn!(
                    alarm = alarm_name(r.alarm),
                    from = format!("{:x}", r.member_id),
                    "alarm disarmed"
                );
                out.push(m);
            }
        }
        // An action etcd does not know: an empty answer, as etcd's applier gives.
        Err(_) => {}
    }
    alarms.set(table);
    AlarmResponse {
        header: None,
        alarms: out,
    }
}

/// The alarm gate, the first apply layer: what the raised alarms refuse. CORRUPT first (etcd
/// stacks its corrupt applier over the capped one), then NOSPACE: Put, a Txn with puts in
/// either branch (nested ones included, see docs/quota.md) and LeaseGrant.
pub fn gate(active: Active, req: &Request) -> Result<(), ServerError> {
    if active.corrupt {
        match req {
            Request::Put(_)
            | Request::DeleteRange(_)
            | Request::Txn(_)
            | Request::Compaction(_)
            | Request::Range(_)
            | Request::LeaseGrant(_)
            | Request::LeaseRevoke(_) => return Err(ServerError::Corrupt),
            _ => {}
        }
    }
    if active.nospace {
        match req {
            Request::Put(_) | Request::LeaseGrant(_) => return Err(ServerError::NoSpace),
            Request::Txn(t) if quota::cost_txn(t) > 0 => return Err(ServerError::NoSpace),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballast_proto::etcdserverpb::{
        request_op, CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest,
        PutRequest, RequestOp, TxnRequest,
    };

    const NOSPACE: i32 = AlarmType::Nospace as i32;
    const CORRUPT: i32 = AlarmType::Corrupt as i32;

    #[test]
    fn table_follows_etcd_alarm_store() {
        let mut t = AlarmTable::default();
        assert_eq!(t.activate(7, NOSPACE), (member(NOSPACE, 7), true));
        // Raised again: the same alarm back, nothing new.
        assert_eq!(t.activate(7, NOSPACE), (member(NOSPACE, 7), false));
        t.activate(3, CORRUPT);
        t.activate(9, NOSPACE);
        assert_eq!(
            t.get(AlarmType::None as i32),
            vec![member(NOSPACE, 7), member(NOSPACE, 9), member(CORRUPT, 3)]
        );
        assert_eq!(t.get(CORRUPT), vec![member(CORRUPT, 3)]);
        assert_eq!(
            t.active(),
            Active {
                nospace: true,
                corrupt: true
            }
        );
        assert_eq!(t.deactivate(3, NOSPACE), None);
        assert_eq!(t.deactivate(3, CORRUPT), Some(member(CORRUPT, 3)));
        assert_eq!(t.deactivate(3, CORRUPT), None);
        assert!(!t.active().corrupt);
        t.deactivate(7, NOSPACE);
        assert!(t.active().nospace, "member 9's NOSPACE is still raised");
        t.deactivate(9, NOSPACE);
        assert!(t.is_empty());
        assert_eq!(t.active(), Active::default());
    }

    #[test]
    fn reload_replaces_the_raised_alarms_with_the_stores() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &dir.path().join("db"),
            ballast_mvcc::StoreOptions::default(),
        )
        .unwrap();
        let mut t = AlarmTable::default();
        t.activate(1, NOSPACE);
        let alarms = Alarms::from_table(t);
        assert!(alarms.nospace_of(1));
        // The store has member 2's CORRUPT, and not member 1's NOSPACE.
        let mut w = store.write().unwrap();
        w.put_meta(&schema::alarm_key(CORRUPT, 2), &[schema::ALARM_FORMAT]);
        w.commit(1, false).unwrap();
        alarms.reload(&store).unwrap();
        assert_eq!(alarms.get(AlarmType::None as i32), vec![member(CORRUPT, 2)]);
        assert_eq!(
            alarms.active(),
            Active {
                nospace: false,
                corrupt: true
            }
        );
        assert!(!alarms.nospace() && !alarms.nospace_of(1));
        // A store with none: no alarm left.
        let mut w = store.write().unwrap();
        w.delete_meta(&schema::alarm_key(CORRUPT, 2));
        w.commit(2, false).unwrap();
        alarms.reload(&store).unwrap();
        assert!(alarms.get(AlarmType::None as i32).is_empty());
        assert_eq!(alarms.active(), Active::default());
    }

    #[test]
    fn status_errors_print_as_etcd() {
        assert_eq!(
            status_error(&member(NOSPACE, 13668033151171901709)),
            "memberID:13668033151171901709 alarm:NOSPACE "
        );
        assert_eq!(alarm_name(CORRUPT), "CORRUPT");
        assert_eq!(alarm_name(9), "9");
    }

    fn put() -> PutRequest {
        PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        }
    }

    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> Request {
        Request::Txn(TxnRequest {
            success,
            failure,
            ..Default::default()
        })
    }

    fn op(r: request_op::Request) -> RequestOp {
        RequestOp { request: Some(r) }
    }

    #[test]
    fn nospace_gate_refuses_what_adds_data() {
        let gate_ns = |r: &Request| {
            gate(
                Active {
                    nospace: true,
                    corrupt: false,
                },
                r,
            )
        };
        let no = Err(ServerError::NoSpace);
        assert_eq!(gate_ns(&Request::Put(put())), no);
        assert_eq!(
            gate_ns(&Request::LeaseGrant(LeaseGrantRequest { id: 1, ttl: 5 })),
            no
        );
        assert_eq!(
            gate_ns(&txn(
                vec![],
                vec![op(request_op::Request::RequestPut(put()))]
            )),
            no
        );
        let nested = TxnRequest {
            success: vec![op(request_op::Request::RequestPut(put()))],
            ..Default::default()
        };
        assert_eq!(
            gate_ns(&txn(
                vec![op(request_op::Request::RequestTxn(nested))],
                vec![]
            )),
            no
        );
        let del = DeleteRangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        };
        assert_eq!(
            gate_ns(&txn(
                vec![op(request_op::Request::RequestDeleteRange(del.clone()))],
                vec![]
            )),
            Ok(())
        );
        assert_eq!(gate_ns(&Request::DeleteRange(del)), Ok(()));
        assert_eq!(
            gate_ns(&Request::Compaction(CompactionRequest::default())),
            Ok(())
        );
        assert_eq!(
            gate_ns(&Request::LeaseRevoke(LeaseRevokeRequest { id: 1 })),
            Ok(())
        );
        assert_eq!(
            gate(Active::default(), &Request::Put(put())),
            Ok(()),
            "no alarm, no gate"
        );
    }

    #[test]
    fn corrupt_gate_refuses_writes_and_wins_over_nospace() {
        let both = Active {
            nospace: true,
            corrupt: true,
        };
        for r in [
            Request::Put(put()),
            Request::DeleteRange(DeleteRangeRequest::default()),
            txn(vec![], vec![]),
            Request::Compaction(CompactionRequest::default()),
            Request::LeaseGrant(LeaseGrantRequest::default()),
            Request::LeaseRevoke(LeaseRevokeRequest::default()),
        ] {
            assert_eq!(gate(both, &r), Err(ServerError::Corrupt), "{r:?}");
        }
        let alarm = Request::Alarm(AlarmRequest {
            action: AlarmAction::Deactivate as i32,
            member_id: 1,
            alarm: CORRUPT,
        });
        assert_eq!(gate(both, &alarm), Ok(()), "alarms can always be cleared");
    }
}
