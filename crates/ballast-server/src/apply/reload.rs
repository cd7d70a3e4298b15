//! What the apply loop rebuilds after it installed a backend snapshot (`Store::install_snapshot`:
//! the same store handle, new contents; revision, compact revision and applied index jumped):
//! the in-memory state kept beside the store, from the new contents, as etcd does after
//! `applySnapshot` (its `lessor.Recover`, the watchable store's restore, the alarm store's
//! reload). Membership is reloaded by the caller.
//!
//! Never: touch the store's contents, or talk to Raft or the network.

use ballast_mvcc::Store;

use crate::alarm::Alarms;
use crate::lease::{persist, Lessor};
use crate::quota::Quota;
use crate::watch::WatchHub;

/// Rebuilds leases, alarms, watchers and the quota's backend size from `store`, just installed.
/// Both reads of the store (leases, alarms) come first: if one fails nothing was changed, and
/// the error (a storage fault: stop the member) says which.
pub(crate) fn after_install(
    store: &Store,
    hub: &WatchHub,
    lessor: &Lessor,
    alarms: &Alarms,
    quota: &Quota,
) -> Result<(), String> {
    let leases = persist::recover(store)?;
    alarms
        .reload(store)
        .map_err(|e| format!("reload alarms: {e}"))?;
    lessor.reload(leases);
    hub.resync_all(store.current_revision());
    quota.set_size(store.db_size());
    Ok(())
}

#[cfg(test)]
mod tests {
    use ballast_mvcc::StoreOptions;
    use ballast_proto::etcdserverpb::AlarmType;

    use super::*;
    use crate::lease::{LeaseTable, LessorConfig};
    use crate::watch::{HeaderSource, WatchOptions};

    #[tokio::test]
    async fn everything_beside_the_store_follows_the_installed_contents() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), StoreOptions::default()).unwrap();
        let hub = WatchHub::new(
            store.clone(),
            WatchOptions::default(),
            HeaderSource {
                cluster_id: 1,
                member_id: 1,
                status: Default::default(),
            },
        );
        let cfg = LessorConfig::from_server(&crate::config::ServerConfig::default());
        let lessor = Lessor::new(cfg, 1, LeaseTable::default());
        let alarms = Alarms::default();
        let quota = Quota::new(u64::MAX, 0);

        // Another member's store: a lease with a key, a NOSPACE alarm, a few revisions.
        let other = Store::open(&dir.path().join("other.db"), StoreOptions::default()).unwrap();
        let mut w = other.write().unwrap();
        persist::put_lease(&mut w, 7, 30, 30_000);
        persist::put_used(&mut w);
        w.put(b"held", b"v", 7).unwrap();
        w.end();
        w.put(b"free", b"v", 0).unwrap();
        w.end();
        w.put_meta(
            &crate::schema::alarm_key(AlarmType::Nospace as i32, 3),
            &[crate::schema::ALARM_FORMAT],
        );
        w.commit(9, false).unwrap();
        let snap = dir.path().join("other.snap.db");
        other.export_snapshot(&snap).unwrap();
        drop(other);

        store.install_snapshot(&snap).unwrap();
        after_install(&store, &hub, &lessor, &alarms, &quota).unwrap();
        assert_eq!(hub.revision(), store.current_revision());
        assert_eq!(hub.revision(), 3);
        assert_eq!(
            lessor.time_to_live(7, true).unwrap().keys,
            vec![b"held".to_vec()]
        );
        assert!(alarms.nospace_of(3));
        assert!(quota.size() > 0);
        assert_eq!(quota.size(), store.db_size());
    }
}
