//! Consensus: raft-rs's `RawNode` over Ballast's WAL. Knows nothing of KV: it orders opaque
//! proposals, hands committed entries to the apply loop and answers read barriers.
//!
//! - [`node`]: the raft thread (owns `RawNode` and the WAL) and its Ready handling;
//! - [`log`]: the in-memory log raft-rs reads, rebuilt from the WAL on restart;
//! - [`status`]: the raft facts other threads read without asking the raft thread.

pub mod log;
pub mod node;
pub mod status;

pub use node::{RaftMsg, RaftNode, RaftNodeConfig};
pub use status::RaftStatus;
