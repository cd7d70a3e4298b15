//! The names the server keeps in the backend's meta table (`ballast_mvcc::Store` meta), declared
//! in one place so an operator or a later format change finds every on-disk name here.
//!
//! Keys starting with `mvcc/` belong to `ballast-mvcc` (applied index, revisions). The lease
//! family (`lease/...`) is still declared next to its codec in `lease/persist.rs`; it moves here
//! with the next change of that module.
//!
//! Families:
//! ```text
//! ballast/member_id                       -> u64 (big-endian)   this member's id
//! ballast/cluster_id                      -> u64 (big-endian)   the cluster's id
//! alarm/<type: 8 hex>/<member: 16 hex>    -> [1] (format 1)     one raised alarm (alarm.rs)
//! cluster/member/<id: 16 hex>             -> ballast.internal.Member (prost)   one member
//! cluster/removed/<id: 16 hex>            -> [1] (format 1)     a removed member's id
//! cluster/conf_state                      -> raft-rs ConfState (rust-protobuf) raft's
//!                                            configuration at the applied index
//! lease/...                               -> see lease/persist.rs
//! ```

/// This member's id, chosen at its first start.
pub const META_MEMBER_ID: &str = "ballast/member_id";
/// The cluster's id, chosen at the first start.
pub const META_CLUSTER_ID: &str = "ballast/cluster_id";

/// Prefix of the raised alarms; see [`alarm_key`].
pub const ALARM_PREFIX: &str = "alarm/";
/// The value stored under an alarm key (a format byte; the key says everything else).
pub const ALARM_FORMAT: u8 = 1;

/// The meta key of alarm `alarm` (an `etcdserverpb.AlarmType` value) raised by `member_id`.
/// Hex digits of the unsigned values, so the table lists alarms by type, then member.
pub fn alarm_key(alarm: i32, member_id: u64) -> String {
    format!("{ALARM_PREFIX}{:08x}/{member_id:016x}", alarm as u32)
}

/// The (alarm type, member id) of an alarm key, or None for a key of another shape.
pub fn parse_alarm_key(key: &str) -> Option<(i32, u64)> {
    let rest = key.strip_prefix(ALARM_PREFIX)?;
    let (t, m) = rest.split_once('/')?;
    if t.len() != 8 {
        return None;
    }
    let t = u32::from_str_radix(t, 16).ok()? as i32;
    Some((t, parse_hex_id(m)?))
}

/// Prefix of the member records; see [`member_key`].
pub const MEMBER_PREFIX: &str = "cluster/member/";
/// Prefix of the removed members' ids; see [`removed_member_key`].
pub const REMOVED_MEMBER_PREFIX: &str = "cluster/removed/";
/// The value stored under a removed member's key (a format byte; the key says the id).
pub const REMOVED_MEMBER_FORMAT: u8 = 1;
/// Raft's configuration (voters, learners) as of the backend's applied index.
pub const META_CONF_STATE: &str = "cluster/conf_state";

/// The meta key of member `id`'s record. Hex digits of the id, so the table lists members in
/// id order (etcd's member list order).
pub fn member_key(id: u64) -> String {
    format!("{MEMBER_PREFIX}{id:016x}")
}

/// The member id of a member key, or None for a key of another shape.
pub fn parse_member_key(key: &str) -> Option<u64> {
    parse_hex_id(key.strip_prefix(MEMBER_PREFIX)?)
}

/// The meta key recording that member `id` was removed.
pub fn removed_member_key(id: u64) -> String {
    format!("{REMOVED_MEMBER_PREFIX}{id:016x}")
}

/// The member id of a removed member's key, or None for a key of another shape.
pub fn parse_removed_member_key(key: &str) -> Option<u64> {
    parse_hex_id(key.strip_prefix(REMOVED_MEMBER_PREFIX)?)
}

fn parse_hex_id(hex: &str) -> Option<u64> {
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_keys_round_trip() {
        for (t, m) in [(1, 0xdead_beef_u64), (2, u64::MAX), (0, 1), (-3, 7)] {
            assert_eq!(parse_alarm_key(&alarm_key(t, m)), Some((t, m)));
        }
        assert_eq!(parse_alarm_key("alarm/1/2"), None);
        assert_eq!(parse_alarm_key("lease/id/0000000000000001"), None);
        assert!(alarm_key(1, 5) < alarm_key(2, 1));
    }

    #[test]
    fn member_keys_round_trip() {
        for id in [1, 0x8e9e_05c5_2164_694d, u64::MAX] {
            assert_eq!(parse_member_key(&member_key(id)), Some(id));
            assert_eq!(parse_removed_member_key(&removed_member_key(id)), Some(id));
            assert_eq!(parse_member_key(&removed_member_key(id)), None);
        }
        assert_eq!(member_key(10), "cluster/member/000000000000000a");
        assert_eq!(parse_member_key("cluster/member/a"), None);
        assert!(member_key(2) < member_key(0x10));
        assert!(!META_CONF_STATE.starts_with(MEMBER_PREFIX));
    }
}
