//! ballast-mvcc: Ballast's revisioned key-value store, with etcd v3's exact revision semantics.
//!
//! # What it owns
//! - The **key index** (in memory): key -> generations of `(main, sub)` revisions
//!   ([`index`](crate::index) module docs; etcd's `keyIndex`/`treeIndex`).
//! - The **backend** (one redb file) with two tables:
//!   - `key`: 16-byte big-endian `(main, sub)` revision -> encoded row (see the `codec` module:
//!     a tag byte put/tombstone, varint lengths and revisions, then the raw value);
//!   - `meta`: `&str` -> bytes. Keys starting with `mvcc/` belong to this crate
//!     (`mvcc/applied_index` u64 BE, `mvcc/scheduled_compact_rev` and
//!     `mvcc/finished_compact_rev` i64 BE); every other key belongs to the caller
//!     ([`WriteTxn::put_meta`], [`Store::get_meta`]).
//! - **Compaction** (logical + physical, resumable), **hashes** ([`Store::hash_kv`]) and
//!   consistent read snapshots ([`ReadView`]).
//!
//! # Invariants
//! - The store revision starts at 1; every etcd-level write transaction that changes something
//!   consumes exactly one main revision, its operations get sub-revisions 0, 1, 2, ...
//! - Readers only ever observe revisions whose redb commit completed: a [`ReadView`] captures the
//!   published revision and a redb read snapshot taken *after* it, and ignores index entries
//!   newer than its revision. The writer appends to the shared index before its commit; if the
//!   batch is dropped or its commit fails, those entries are rolled back.
//! - Exactly one writer ([`Store::write`] blocks while another [`WriteTxn`] is alive). Readers
//!   never wait for a write transaction; they only share short in-memory index lock holds
//!   (bounded chunks of keys) with the writer.
//! - After a crash, [`Store::open`] returns the state of the last *durable* commit;
//!   [`Store::durable_applied_index`] says where the caller's WAL replay must resume.
//! - A compaction at `C` is published (reads below `C` fail with [`MvccError::Compacted`])
//!   before any index entry or backend row is removed; the physical part removes rows in
//!   bounded batches, each in its own redb transaction, and is resumed by `open` after a crash.
//!
//! # What it must never do
//! Know about Raft, gRPC, protobuf, leases' lifetimes or watchers (it only returns events);
//! fsync on its own initiative (durability is the caller's decision: its WAL is the source of
//! truth); panic on anything a disk can cause (errors are [`MvccError`]).

mod codec;
mod index;
mod range;
mod revision;
mod store;
#[cfg(test)]
mod store_tests;

pub use revision::Revision;
pub use store::{CompactJob, ReadView, Store, StoreOptions, WriteTxn};

/// A key's value at some revision (etcd's `mvccpb.KeyValue`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct KeyValue {
    pub key: Vec<u8>,
    /// Revision of the put that created the key's current generation.
    pub create_revision: i64,
    /// Revision of the last modification.
    pub mod_revision: i64,
    /// 1 on creation, +1 on every put; a delete ends the generation.
    pub version: i64,
    pub value: Vec<u8>,
    /// Lease id attached to the key, 0 for none.
    pub lease: i64,
}

/// Type of an [`Event`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change made by a write transaction (etcd's `mvccpb.Event`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// For `Put`, the new key-value. For `Delete`, only `key` and `mod_revision` (= the
    /// deletion revision) are set, like etcd.
    pub kv: KeyValue,
    /// The key-value before this change, if the key existed.
    pub prev_kv: Option<KeyValue>,
}

/// etcd's `RangeRequest.SortOrder`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum SortOrder {
    #[default]
    None,
    Ascend,
    Descend,
}

/// etcd's `RangeRequest.SortTarget`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

/// etcd's `RangeRequest` minus `serializable` (a server concern).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeOptions {
    pub key: Vec<u8>,
    /// Empty: just `key`. `[0]`: every key `>= key`. Otherwise `[key, range_end)`.
    pub range_end: Vec<u8>,
    /// Maximum number of keys returned; 0 (or negative) = no limit.
    pub limit: i64,
    /// Revision to read at; `<= 0` = the current revision.
    pub revision: i64,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    pub keys_only: bool,
    pub count_only: bool,
    /// The four filters: 0 = unset.
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
}

impl RangeOptions {
    /// A single-key read at the current revision.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        RangeOptions {
            key: key.into(),
            ..Default::default()
        }
    }

    /// `[key, range_end)` at the current revision.
    pub fn range(key: impl Into<Vec<u8>>, range_end: impl Into<Vec<u8>>) -> Self {
        RangeOptions {
            key: key.into(),
            range_end: range_end.into(),
            ..Default::default()
        }
    }
}

/// etcd's `RangeResponse` minus the header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// Number of keys in the range at the read revision, unaffected by limit and filters.
    pub count: i64,
    /// True if `limit` truncated the (filtered, sorted) result.
    pub more: bool,
    /// The store revision the read ran at (header revision: the current revision of the view,
    /// not `RangeOptions::revision`).
    pub revision: i64,
}

/// Errors at this crate's boundary.
#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    /// The requested revision has been compacted (etcd's `ErrCompacted`).
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    /// The requested revision is newer than the current revision (etcd's `ErrFutureRev`).
    #[error("mvcc: required revision is a future revision")]
    FutureRev,
    /// A [`CompactJob`] was run before the write transaction that scheduled it committed
    /// (or that transaction was dropped).
    #[error("mvcc: compaction at revision {0} was not committed")]
    CompactionNotCommitted(i64),
    /// redb failed (I/O, or redb-level corruption).
    #[error("mvcc backend: {0}")]
    Backend(#[from] redb::Error),
    /// The stored data breaks an invariant of this crate.
    #[error("mvcc corrupt: {0}")]
    Corrupt(String),
}

macro_rules! backend_from {
    ($($t:ty),*) => {$(
        impl From<$t> for MvccError {
            fn from(e: $t) -> Self {
                MvccError::Backend(e.into())
            }
        }
    )*};
}
backend_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);
