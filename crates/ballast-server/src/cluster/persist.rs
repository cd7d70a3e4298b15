//! The member list, the removed ids and raft's configuration (`ConfState`) in the backend's meta
//! table (keys in [`crate::schema`]), written in the batch of the raft entry that changed
//! them, so a restart finds members and raft configuration as of the backend's applied index.
//!
//! Records are `ballast.internal.Member` (prost); the conf state is raft-rs's own encoding
//! (rust-protobuf). Writers only add to the caller's batch; [`load`] reads the last commit.

use ballast_mvcc::{MvccError, Store, WriteTxn};
use ballast_proto::internal;
use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::ConfState;

use super::membership::{MemberRecord, Membership};
use crate::schema;

/// Why the stored membership cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("read the membership from the backend: {0}")]
    Read(#[from] MvccError),
    #[error("backend meta key {key:?}: {reason}")]
    Corrupt { key: String, reason: String },
}

fn corrupt(key: &str, reason: impl ToString) -> LoadError {
    LoadError::Corrupt {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

/// Records member `m` (added, promoted, updated or published) in the batch.
pub fn put_member(txn: &mut WriteTxn<'_>, m: &MemberRecord) {
    let record = internal::Member::from(m).encode_to_vec();
    txn.put_meta(&schema::member_key(m.id), &record);
}

/// Records in the batch that member `id` was removed: its record goes, its id stays known.
pub fn put_removed(txn: &mut WriteTxn<'_>, id: u64) {
    txn.delete_meta(&schema::member_key(id));
    txn.put_meta(
        &schema::removed_member_key(id),
        &[schema::REMOVED_MEMBER_FORMAT],
    );
}

/// Records raft's configuration after the change in the batch.
pub fn put_conf_state(txn: &mut WriteTxn<'_>, cs: &ConfState) {
    // A proto3 message without required fields: encoding cannot fail.
    let bytes = cs.write_to_bytes().expect("a ConfState always encodes");
    txn.put_meta(schema::META_CONF_STATE, &bytes);
}

/// Records a whole membership and conf state in the batch (a new cluster's first members).
/// Keys of members not in `ms` are left alone, except those of its removed ids: over a store
/// whose membership is an earlier state of `ms`, the result is `ms`.
pub fn save(txn: &mut WriteTxn<'_>, ms: &Membership, cs: &ConfState) {
    for m in ms.members() {
        put_member(txn, m);
    }
    for id in ms.removed() {
        put_removed(txn, id);
    }
    put_conf_state(txn, cs);
}

/// The membership and conf state of the backend's last commit; no conf state when none was
/// ever stored (a backend of a Ballast from before membership changes, or a new one).
pub fn load(store: &Store) -> Result<(Membership, Option<ConfState>), LoadError> {
    let view = store.read()?;
    let mut members = Vec::new();
    for (k, v) in view.meta_with_prefix(schema::MEMBER_PREFIX)? {
        let id = schema::parse_member_key(&k).ok_or_else(|| corrupt(&k, "not a member key"))?;
        let m = internal::Member::decode(v.as_slice()).map_err(|e| corrupt(&k, e))?;
        if m.id != id {
            return Err(corrupt(&k, format_args!("holds member {:x}", m.id)));
        }
        members.push(MemberRecord::from(m));
    }
    let mut removed = Vec::new();
    for (k, v) in view.meta_with_prefix(schema::REMOVED_MEMBER_PREFIX)? {
        let id = schema::parse_removed_member_key(&k)
            .ok_or_else(|| corrupt(&k, "not a removed member key"))?;
        if v != [schema::REMOVED_MEMBER_FORMAT] {
            return Err(corrupt(&k, format_args!("unknown value {v:?}")));
        }
        removed.push(id);
    }
    let conf_state = match view.get_meta(schema::META_CONF_STATE)? {
        Some(v) => {
            Some(ConfState::parse_from_bytes(&v).map_err(|e| corrupt(schema::META_CONF_STATE, e))?)
        }
        None => None,
    };
    Ok((Membership::restored(members, removed), conf_state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballast_mvcc::StoreOptions;

    fn record(id: u64, name: &str, is_learner: bool) -> MemberRecord {
        MemberRecord {
            id,
            name: name.to_string(),
            peer_urls: vec![format!("http://m{id}:2380"), format!("http://m{id}b:2380")],
            client_urls: if name.is_empty() {
                vec![]
            } else {
                vec![format!("http://m{id}:2379")]
            },
            is_learner,
        }
    }

    fn open(dir: &std::path::Path) -> Store {
        Store::open(&dir.join("db"), StoreOptions::default()).unwrap()
    }

    #[test]
    fn empty_backend_loads_an_empty_membership() {
        let dir = tempfile::tempdir().unwrap();
        let (ms, cs) = load(&open(dir.path())).unwrap();
        assert!(ms.is_empty() && ms.removed().next().is_none());
        assert_eq!(cs, None);
    }

    #[test]
    fn round_trip_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut ms = Membership::restored(
            [
                record(u64::MAX, "a", false),
                record(1, "b", false),
                record(0x8e9e_05c5_2164_694d, "", true),
            ],
            [],
        );
        let cs = ConfState {
            voters: vec![1, u64::MAX],
            learners: vec![0x8e9e_05c5_2164_694d],
            auto_leave: false,
            ..Default::default()
        };
        {
            let store = open(dir.path());
            let mut w = store.write().unwrap();
            save(&mut w, &ms, &cs);
            w.commit(1, true).unwrap();

            // A later entry removes member 1, in its own batch.
            let mut w = store.write().unwrap();
            ms.remove(1).unwrap();
            put_removed(&mut w, 1);
            let cs2 = ConfState {
                voters: vec![u64::MAX],
                learners: vec![0x8e9e_05c5_2164_694d],
                ..Default::default()
            };
            put_conf_state(&mut w, &cs2);
            w.commit(2, true).unwrap();
        }
        let (loaded, loaded_cs) = load(&open(dir.path())).unwrap();
        assert_eq!(loaded, ms);
        assert!(loaded.is_removed(1));
        let loaded_cs = loaded_cs.unwrap();
        assert_eq!(loaded_cs.voters, vec![u64::MAX]);
        assert_eq!(loaded_cs.learners, vec![0x8e9e_05c5_2164_694d]);
    }

    #[test]
    fn an_uncommitted_batch_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut w = store.write().unwrap();
        put_member(&mut w, &record(3, "c", false));
        put_conf_state(&mut w, &ConfState::default());
        drop(w);
        let (ms, cs) = load(&store).unwrap();
        assert!(ms.is_empty());
        assert_eq!(cs, None);
    }

    #[test]
    fn corrupt_records_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut w = store.write().unwrap();
        // A record whose id differs from its key's.
        w.put_meta(
            &schema::member_key(5),
            &internal::Member::from(&record(6, "x", false)).encode_to_vec(),
        );
        w.commit(1, false).unwrap();
        let err = load(&store).unwrap_err();
        assert!(matches!(err, LoadError::Corrupt { ref key, .. } if key == &schema::member_key(5)));

        let mut w = store.write().unwrap();
        w.delete_meta(&schema::member_key(5));
        w.put_meta(&schema::removed_member_key(5), &[9]);
        w.commit(2, false).unwrap();
        assert!(matches!(load(&store), Err(LoadError::Corrupt { .. })));
    }
}
