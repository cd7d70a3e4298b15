//! ballast-tests: cross-crate integration and compatibility tests over real sockets.
//!
//! The integration tests live in `tests/tests/`:
//! - `compat_kv.rs`: KV scripts (hand-written cases for every request option, plus proptest-generated
//!   ones) run against a reference etcd 3.4 and the candidate, compared field by field;
//! - `etcdctl.rs`: etcdctl 3.4 commands in every output format, against both servers;
//! - `client_crate.rs`: core KV flows through the independent `etcd-client` crate.
//!
//! The candidate is Ballast (`BALLAST_BIN` or `target/release/ballast`; build it first with
//! `cargo build --release --bins`), or a second etcd with `BALLAST_COMPAT_SELFTEST=1`, which validates
//! the harness itself. This library holds what the test files share: the [`script`] model.

pub mod script;

/// etcd's error messages, spelled here from etcd's documentation of its error contract (not
/// imported from the server, so a server typo cannot hide).
pub mod etcd_errors {
    pub const ERR_EMPTY_KEY: &str = "etcdserver: key is not provided";
    pub const ERR_KEY_NOT_FOUND: &str = "etcdserver: key not found";
    pub const ERR_VALUE_PROVIDED: &str = "etcdserver: value is provided";
    pub const ERR_LEASE_PROVIDED: &str = "etcdserver: lease is provided";
    pub const ERR_LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
    pub const ERR_DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
    pub const ERR_TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
    pub const ERR_TOO_LARGE: &str = "etcdserver: request is too large";
    pub const ERR_COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
    pub const ERR_FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";
}
