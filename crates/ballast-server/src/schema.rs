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
    if t.len() != 8 || m.len() != 16 {
        return None;
    }
    let t = u32::from_str_radix(t, 16).ok()? as i32;
    let m = u64::from_str_radix(m, 16).ok()?;
    Some((t, m))
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
}
