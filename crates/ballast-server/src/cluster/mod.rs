//! The cluster's membership, as etcd keeps it: who the members are, their ids, and the rules
//! for adding, removing, promoting and updating them (docs/cluster.md is the contract).
//!
//! - [`ids`]: member and cluster ids, derived exactly as etcd derives them;
//! - [`membership`]: the member list as a plain state machine with etcd's validation errors
//!   (no threads, no I/O);
//! - [`persist`]: the member list and raft's conf state in the backend's meta table.
//!
//! Raft, the transport and the apply loop use this module; it must never call them.

pub mod ids;
pub mod membership;
pub mod persist;

pub use membership::{to_pb, MemberRecord, Membership};
