//! Consensus: raft-rs's `RawNode` over Ballast's WAL. Knows nothing of KV: it orders opaque
//! proposals, hands committed entries to the apply loop and answers read barriers.
//!
//! - [`node`]: the raft thread (owns `RawNode` and the WAL) and its Ready handling;
//! - [`log`]: the in-memory log raft-rs reads, rebuilt from the WAL on restart;
//! - [`status`]: the raft facts other threads read without asking the raft thread;
//! - [`transport`]: raft messages out to the peers (per-peer queues and streams);
//! - [`peer_service`]: the peer port's gRPC service that receives them;
//! - [`snapshot`]: a backend snapshot sent to and received from a peer in chunks.

pub mod log;
pub mod node;
pub mod peer_service;
pub mod snapshot;
pub mod status;
pub mod transport;

pub use node::{RaftMsg, RaftNode, RaftNodeConfig};
pub use status::RaftStatus;
