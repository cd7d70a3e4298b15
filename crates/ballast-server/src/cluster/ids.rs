//! Member and cluster ids, derived as etcd 3.4/3.5 derives them, so a Ballast member started
//! with the same flags as an etcd member gets the same ids (and tools that print or pin ids,
//! e.g. `etcdctl member list`, read the same values).
//!
//! - A **member id** is the first 8 bytes (big-endian) of a SHA-1 over the member's peer URLs
//!   (sorted as strings, concatenated with no separator), then the cluster token, then — for a
//!   member added at runtime — the Unix time of the add in seconds as decimal digits. At
//!   runtime etcd passes an *empty* token: an added member's id depends on its URLs and the
//!   second of the add only (two adds of the same URLs in one second get the same id).
//! - The **cluster id** is the first 8 bytes (big-endian) of a SHA-1 over the initial members'
//!   ids, sorted, each as 8 big-endian bytes. It is fixed at bootstrap: later membership
//!   changes do not change it.
//!
//! The URLs are taken as etcd prints them after parsing (`url.URL.String()`, spaces trimmed):
//! the caller validates and normalises them first. Pure functions, no state.

use sha1::{Digest, Sha1};

/// The first 8 bytes of `SHA-1(bytes)` as a big-endian number (etcd's id from a hash).
fn id_of(bytes: &[u8]) -> u64 {
    let digest = Sha1::digest(bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// etcd's member id for peer URLs `peer_urls` in cluster `token`, `added_at` being the Unix
/// time in seconds of a runtime add (None at bootstrap). See the module docs.
pub fn member_id<S: AsRef<str>>(peer_urls: &[S], token: &str, added_at: Option<i64>) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(|u| u.as_ref()).collect();
    urls.sort_unstable();
    let mut b = urls.concat().into_bytes();
    b.extend_from_slice(token.as_bytes());
    if let Some(secs) = added_at {
        b.extend_from_slice(secs.to_string().as_bytes());
    }
    id_of(&b)
}

/// The id of a member named in `--initial-cluster` with `peer_urls`, in the cluster of
/// `--initial-cluster-token` `token`.
pub fn bootstrap_member_id<S: AsRef<str>>(peer_urls: &[S], token: &str) -> u64 {
    member_id(peer_urls, token, None)
}

/// The id of a member added at runtime (`MemberAdd`) with `peer_urls`, at Unix time
/// `now_secs`: etcd hashes it with an empty token.
pub fn added_member_id<S: AsRef<str>>(peer_urls: &[S], now_secs: i64) -> u64 {
    member_id(peer_urls, "", Some(now_secs))
}

/// etcd's cluster id from the initial members' ids (in any order).
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let b: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    id_of(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known vectors read from Debian's etcd 3.4.23 (`etcdctl member list -w json`,
    // `member add -w json`); tests/tests/cluster_ids.rs checks the same rules against a live
    // etcd with fresh ports each run.

    #[test]
    fn etcd_default_single_member() {
        // `etcd` with its defaults: --initial-cluster default=http://localhost:2380,
        // --initial-cluster-token etcd-cluster.
        let m = bootstrap_member_id(&["http://localhost:2380"], "etcd-cluster");
        assert_eq!(m, 0x8e9e_05c5_2164_694d);
        assert_eq!(cluster_id(&[m]), 0xcdf8_1819_4e3a_8c32);
    }

    #[test]
    fn etcd_three_member_cluster() {
        // --initial-cluster infra0=http://127.0.0.1:24801,infra1=...:24802,infra2=...:24803
        // --initial-cluster-token etcd-cluster-1
        let token = "etcd-cluster-1";
        let ids = [
            bootstrap_member_id(&["http://127.0.0.1:24801"], token),
            bootstrap_member_id(&["http://127.0.0.1:24802"], token),
            bootstrap_member_id(&["http://127.0.0.1:24803"], token),
        ];
        assert_eq!(
            ids,
            [
                10159831183677036228,
                12521441762439884595,
                10755603116176892371
            ]
        );
        assert_eq!(cluster_id(&ids), 10860592187666568329);
        let mut reversed = ids;
        reversed.reverse();
        assert_eq!(cluster_id(&reversed), cluster_id(&ids));
    }

    #[test]
    fn etcd_member_added_at_runtime() {
        // `member add --learner --peer-urls http://127.0.0.1:24900,http://10.0.0.1:2380` at
        // Unix second 1796700222 (the token of that cluster plays no part).
        let urls = ["http://127.0.0.1:24900", "http://10.0.0.1:2380"];
        assert_eq!(added_member_id(&urls, 1796700222), 5612361513587903034);
        assert_ne!(added_member_id(&urls, 1796700223), 5612361513587903034);
    }

    #[test]
    fn url_order_does_not_matter_but_every_part_does() {
        let a = member_id(&["http://b:2", "http://a:1"], "t", None);
        assert_eq!(a, member_id(&["http://a:1", "http://b:2"], "t", None));
        assert_ne!(a, member_id(&["http://a:1", "http://b:2"], "u", None));
        assert_ne!(a, member_id(&["http://a:1"], "t", None));
        assert_ne!(a, member_id(&["http://a:1", "http://b:2"], "t", Some(0)));
    }
}
