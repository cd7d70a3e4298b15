//! gRPC services: thin translations from etcd's RPCs to the member (validate, propose or read,
//! fill the header). No etcd semantics live here: they are in `kv` and the apply loop.

pub mod cluster;
pub mod election;
pub mod kv;
pub mod lease;
pub mod lease_forward;
pub mod lock;
pub mod maintenance;
pub mod peer_members;
pub mod unimplemented;
pub mod watch;
