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
