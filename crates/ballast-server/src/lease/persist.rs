//! How leases are stored in the backend's meta table, committed in the same backend
//! transaction as the key-value changes of the raft entries that made them, so a restart finds
//! leases and keys consistent with the applied index.
//!
//! Format (version 1; big-endian integers):
//! ```text
//! lease/clock                 -> i64 clock_ms            (the replicated lease clock)
//! lease/id/<16 hex digits>    -> 0x01 | i64 ttl_seconds | i64 deadline_ms
//! lease/used                  -> [1]                     (a lease was granted once)
//! ```
//! The hex digits are the lease id as an unsigned 64-bit number, so the meta table lists leases
//! in id order. Attached keys are not stored here: every key-value already records its lease,
//! and [`recover`] rebuilds the attachments from the key index (and the leftovers of a
//! revocation in several revisions: keys whose lease record is gone). A store where no lease was
//! ever granted skips that scan.

use ballast_mvcc::{MvccError, RangeOptions, Store, WriteTxn};

use super::table::LeaseTable;

const CLOCK_KEY: &str = "lease/clock";
const USED_KEY: &str = "lease/used";
const LEASE_PREFIX: &str = "lease/id/";
const FORMAT: u8 = 1;
/// Keys read per chunk while rebuilding attachments.
const RECOVER_CHUNK: i64 = 10_000;

fn lease_key(id: i64) -> String {
    format!("{LEASE_PREFIX}{:016x}", id as u64)
}

fn parse_lease_key(k: &str) -> Option<i64> {
    let hex = k.strip_prefix(LEASE_PREFIX)?;
    u64::from_str_radix(hex, 16).ok().map(|v| v as i64)
}

fn encode(ttl: i64, deadline_ms: i64) -> [u8; 17] {
    let mut b = [0u8; 17];
    b[0] = FORMAT;
    b[1..9].copy_from_slice(&ttl.to_be_bytes());
    b[9..17].copy_from_slice(&deadline_ms.to_be_bytes());
    b
}

fn decode(v: &[u8]) -> Option<(i64, i64)> {
    if v.len() != 17 || v[0] != FORMAT {
        return None;
    }
    let ttl = i64::from_be_bytes(v[1..9].try_into().ok()?);
    let deadline = i64::from_be_bytes(v[9..17].try_into().ok()?);
    Some((ttl, deadline))
}

/// Records lease `id` (granted or with a new deadline) in the batch.
pub fn put_lease(txn: &mut WriteTxn<'_>, id: i64, ttl: i64, deadline_ms: i64) {
    txn.put_meta(&lease_key(id), &encode(ttl, deadline_ms));
}

/// Removes lease `id` in the batch (it was revoked).
pub fn delete_lease(txn: &mut WriteTxn<'_>, id: i64) {
    txn.delete_meta(&lease_key(id));
}

/// Records that a lease was granted once (so a restart looks for keys carrying leases).
pub fn put_used(txn: &mut WriteTxn<'_>) {
    txn.put_meta(USED_KEY, &[1]);
}

/// Records the replicated lease clock in the batch.
pub fn put_clock(txn: &mut WriteTxn<'_>, clock_ms: i64) {
    txn.put_meta(CLOCK_KEY, &clock_ms.to_be_bytes());
}

/// Loads the lease table from the backend: leases and clock from the meta table, then (if there
/// is any lease) the attachments from every live key that carries a lease.
pub fn recover(store: &Store) -> Result<LeaseTable, String> {
    let view = store.read().map_err(|e| format!("read leases: {e}"))?;
    let clock_ms = match view
        .get_meta(CLOCK_KEY)
        .map_err(|e| format!("read lease clock: {e}"))?
    {
        Some(v) => i64::from_be_bytes(
            v.as_slice()
                .try_into()
                .map_err(|_| format!("lease clock has {} bytes, not 8", v.len()))?,
        ),
        None => 0,
    };
    let mut leases = Vec::new();
    for (k, v) in view
        .meta_with_prefix(LEASE_PREFIX)
        .map_err(|e| format!("read leases: {e}"))?
    {
        let id = parse_lease_key(&k).ok_or_else(|| format!("bad lease meta key {k:?}"))?;
        let (ttl, deadline) =
            decode(&v).ok_or_else(|| format!("lease {id:x}: unreadable record ({v:?})"))?;
        leases.push((id, ttl, deadline));
    }
    let mut table = LeaseTable::restored(clock_ms, leases);
    let used = view
        .get_meta(USED_KEY)
        .map_err(|e| format!("read leases: {e}"))?
        .is_some();
    table.set_used(used || !table.is_empty());
    if !table.used() {
        // No lease was ever granted: no key can carry one.
        return Ok(table);
    }
    let mut leftovers = 0usize;
    let mut from: Vec<u8> = vec![0];
    loop {
        let opts = RangeOptions {
            key: from.clone(),
            range_end: vec![0],
            limit: RECOVER_CHUNK,
            keys_only: true,
            ..Default::default()
        };
        let res = view
            .range(&opts)
            .map_err(|e: MvccError| format!("read keys for lease attachments: {e}"))?;
        for kv in &res.kvs {
            if kv.lease != 0 {
                if table.contains(kv.lease) {
                    table.attach(kv.lease, &kv.key);
                } else {
                    // The rest of a revocation in several revisions that the stop interrupted.
                    table.add_leftover(kv.lease, &kv.key);
                    leftovers += 1;
                }
            }
        }
        match (res.more, res.kvs.last()) {
            (true, Some(last)) => {
                from = last.key.clone();
                from.push(0);
            }
            _ => break,
        }
    }
    if leftovers > 0 {
        tracing::info!(
            keys = leftovers,
            "keys of revoked leases still to delete; the leader deletes them"
        );
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballast_mvcc::StoreOptions;

    #[test]
    fn keys_sort_by_unsigned_id_and_round_trip() {
        assert_eq!(lease_key(1), "lease/id/0000000000000001");
        assert_eq!(lease_key(-1), "lease/id/ffffffffffffffff");
        for id in [1, -1, i64::MAX, i64::MIN, 0x694d_7f8b_2a4b_8a05] {
            assert_eq!(parse_lease_key(&lease_key(id)), Some(id));
        }
        assert_eq!(decode(&encode(5, -3)), Some((5, -3)));
        assert_eq!(decode(&[2; 17]), None);
        assert_eq!(decode(&[1; 3]), None);
    }

    #[test]
    fn recover_rebuilds_leases_clock_and_attachments() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), StoreOptions::default()).unwrap();
        let mut w = store.write().unwrap();
        put_lease(&mut w, 7, 10, 12_000);
        put_lease(&mut w, 8, 20, 22_000);
        put_lease(&mut w, 9, 30, 1);
        delete_lease(&mut w, 9);
        put_clock(&mut w, 2000);
        for i in 0..25_000u32 {
            let lease = match i % 3 {
                0 => 7,
                1 => 0,
                _ => 99, // a lease with no record
            };
            w.put(format!("k{i:06}").as_bytes(), b"v", lease).unwrap();
            w.end();
        }
        w.put(b"k000000", b"v2", 8).unwrap(); // moved from lease 7 to lease 8
        w.end();
        w.commit(1, false).unwrap();

        let t = recover(&store).unwrap();
        assert_eq!(t.clock_ms(), 2000);
        assert_eq!(t.len(), 2);
        let l7 = t.get(7).unwrap();
        assert_eq!((l7.ttl, l7.deadline_ms), (10, 12_000));
        assert_eq!(l7.keys.len(), 8333);
        assert!(!l7.keys.contains(b"k000000".as_slice()));
        assert_eq!(
            t.get(8).unwrap().keys.iter().collect::<Vec<_>>(),
            vec![&b"k000000".to_vec()]
        );
    }
}
