//! ballast-mvcc: Ballast's revisioned key-value store, with etcd v3's exact revision semantics.
//!
//! # What it owns
//! - The **key index** (in memory): key -> generations of `(main, sub)` revisions (etcd's
//!   `keyIndex`/`treeIndex`). A generation runs from the put that created the key (version 1)
//!   to the tombstone that deleted it; the index is multi-version, every lookup is "as of
//!   revision R".
//! - The **backend**: one redb file with two tables.
//!   - `key`: 16-byte key = big-endian `main` (8 bytes) ++ big-endian `sub` (8 bytes), so byte
//!     order is revision order. Value = one row:
//!     ```text
//!     put:       0x01 | uvarint(key_len) | key | uvarint(create_revision) | uvarint(version)
//!                     | uvarint(lease as u64) | value bytes (the rest)
//!     tombstone: 0x02 | uvarint(key_len) | key
//!     ```
//!     (`uvarint` = unsigned LEB128; `mod_revision` is the row's revision and is not repeated.)
//!   - `meta`: `&str` -> bytes. Keys starting with `mvcc/` belong to this crate:
//!     `mvcc/format` (`[1]`), `mvcc/applied_index` (u64 BE), `mvcc/scheduled_compact_rev` and
//!     `mvcc/finished_compact_rev` (i64 BE). Every other key belongs to the caller
//!     ([`WriteTxn::put_meta`], [`Store::get_meta`], [`ReadView::get_meta`],
//!     [`ReadView::meta_with_prefix`]).
//! - **Compaction** (logical + physical, resumable), **hashes** ([`Store::hash_kv`]: etcd's
//!   HashKV; [`Store::hash`]: etcd's whole-backend Maintenance.Hash), consistent read snapshots
//!   ([`ReadView`]) and catch-up events for watchers ([`ReadView::events`]).
//! - **Space**: [`Store::db_size`] (the file's length, what etcd's backend quota is compared
//!   to; an atomic load), [`Store::db_size_in_use`] (estimate of the live rows) and
//!   [`Store::defragment`] (etcd's Defragment: gives the space freed by compaction back to the
//!   file system by copying the live data into a new file and renaming it over the old one;
//!   pauses writers, never readers; a crash leaves the old or the new file, complete).
//! - **Backend snapshots** (etcd sends a member far behind its whole db file):
//!   [`Store::export_snapshot`] (and [`Store::export_snapshot_stream`]) writes one commit of the
//!   store, meta included, into a new synced file without pausing anyone;
//!   [`Store::install_snapshot`] validates such a file ([`MvccError::BadSnapshot`] otherwise,
//!   the store untouched), renames it over the database file as a defragmentation does (over a
//!   caller's backend: one durable redb transaction), and switches the in-memory state to it.
//! - **Storage**: a file ([`Store::open`]) or any redb `StorageBackend`
//!   ([`Store::open_with_backend`]: the same store, defragmented in place). Behind the `sim`
//!   feature (and in this crate's tests), `sim::SimDisk` is a simulated disk that keeps
//!   unsynced writes apart, fills up, and loses power by seed: `tests/power_loss.rs` runs
//!   thousands of seeded crashes against it.
//! - **Failpoints** (the `failpoints` feature; names and the tests that arm them in
//!   `docs/failpoints.md`): `backend::before_commit`/`after_commit` around every write batch's
//!   redb commit, `compaction::before_step`/`after_step` around each physical compaction batch,
//!   `backend::before_defrag_swap`/`after_defrag_swap` around a defragmentation's rename,
//!   `backend::before_install_swap`/`after_install_swap` around a snapshot install's.
//!
//! # Invariants
//! - The store revision starts at 1; every etcd-level write transaction that changes something
//!   consumes exactly one main revision and its operations get sub-revisions 0, 1, 2, ...; one
//!   that changes nothing (a delete matching nothing, reads only) consumes none.
//! - Readers only observe revisions whose redb commit completed: a [`ReadView`] captures the
//!   published revision, then a redb snapshot (which therefore contains it), and ignores index
//!   entries newer than its revision. The writer appends to the shared index before its commit;
//!   if the batch is dropped or its commit fails, those entries are rolled back.
//! - Exactly one writer: [`Store::write`] blocks while another [`WriteTxn`] is alive (so never
//!   call it twice on one thread). Readers never wait for a write transaction: they share only
//!   short in-memory index lock holds (one per put; scans take the read lock per 1024 keys).
//! - After a crash, [`Store::open`] returns the state of the last *durable* commit and
//!   [`Store::durable_applied_index`] is where the caller's WAL replay must resume.
//! - A compaction at `C` is published (reads below `C` fail with [`MvccError::Compacted`])
//!   before any index entry or backend row is removed; the physical part deletes rows in
//!   bounded batches, each its own redb transaction, and is resumed after a crash.
//!
//! # How the server drives it
//! ```
//! use ballast_mvcc::{RangeOptions, Store, StoreOptions};
//! # fn main() -> Result<(), ballast_mvcc::MvccError> {
//! # let dir = tempfile::tempdir().unwrap();
//! let store = Store::open(&dir.path().join("db"), StoreOptions::default())?;
//! // Apply thread: one batch of raft entries = one WriteTxn.
//! let mut w = store.write()?;
//! w.put(b"foo", b"bar", 0)?;            // request 1: Put
//! let events = w.end();                 // closes request 1 (revision 2), events for watchers
//! assert_eq!((events.len(), w.revision()), (1, 2));
//! let deleted = w.delete_range(b"nope", b"")?; // request 2: deletes nothing...
//! assert!(deleted.is_empty() && w.end().is_empty() && w.revision() == 2); // ...no revision
//! w.commit(/* applied_index */ 7, /* durable */ false)?;
//! // Any thread: snapshot reads.
//! let r = store.read()?.range(&RangeOptions::key("foo"))?;
//! assert_eq!((r.kvs[0].version, r.revision), (1, 2));
//! # Ok(()) }
//! ```
//! Compaction: [`WriteTxn::compact`] returns a [`CompactJob`]; after the commit, run it (it
//! blocks, in bounded steps) on a background thread; after a restart, also run
//! [`Store::take_pending_compaction`]'s job, if any.
//!
//! Maintenance (any thread but one holding a [`WriteTxn`], which would deadlock: both wait for
//! the write batch in progress): [`Store::hash`] for Maintenance.Hash, [`Store::defragment`]
//! for Maintenance.Defragment (blocks writers for its duration: about 0.4 s for 40 MB of live
//! data, 2.6 s for 200 MB, see `examples/defrag.rs`), [`Store::db_size`] per request for the
//! quota.
//!
//! # Errors are storage faults
//! Every I/O error (ENOSPC included: [`MvccError::io_error`] tells it apart) is returned as
//! [`MvccError::Backend`] and leaves nothing half-applied: a failed commit leaves none of its
//! batch visible (to readers, the index, or after a restart), a failed compaction step leaves
//! reads unchanged and resumes. After an I/O error redb refuses further writes until the
//! database is reopened, so the caller's answer is to stop the member and restart it (its WAL
//! replays from [`Store::durable_applied_index`]).
//!
//! # What it must never do
//! Know about Raft, gRPC, protobuf, lease lifetimes or watchers (it only returns events); fsync
//! on its own initiative (durability is the caller's decision: its WAL is the source of truth;
//! compaction's own commits are non-durable; the exceptions are the files that replace the
//! database file, a defragmentation's copy and an installed snapshot, which must be complete on
//! disk before the rename, and an exported snapshot, which is complete when handed out); panic on
//! anything a disk can cause (errors are [`MvccError`]; panics are for broken in-memory
//! invariants only); replace the database file by anything but a complete, synced copy and an
//! atomic rename.

/// `fail_point!` for a step of a function returning `Result<_, MvccError>`: `return(ERRNO)`
/// makes the step fail with that I/O error (EIO without an argument); the other actions
/// (`panic`, `sleep`, `pause`, callbacks) are the `fail` crate's own. Compiles to nothing
/// without the `failpoints` feature.
macro_rules! io_fail_point {
    ($name:literal) => {
        fail::fail_point!($name, |arg| Err($crate::backend::failpoint_error(
            $name, arg
        )));
    };
}

mod backend;
mod codec;
mod index;
mod range;
mod revision;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
mod store;
#[cfg(test)]
mod store_tests;

pub use range::RangePlan;
pub use revision::Revision;
pub use store::{
    CompactJob, DefragStats, ReadView, SnapshotInfo, SnapshotStream, Store, StoreOptions, WriteTxn,
};

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
    /// An earlier put/delete of this write batch failed half-way: the batch must be dropped.
    #[error("mvcc: write batch poisoned by an earlier error")]
    Poisoned,
    /// redb failed (I/O, or redb-level corruption).
    #[error("mvcc backend: {0}")]
    Backend(#[from] redb::Error),
    /// The stored data breaks an invariant of this crate.
    #[error("mvcc corrupt: {0}")]
    Corrupt(String),
    /// [`Store::install_snapshot`] refused a file that is not a complete database of this
    /// crate's format; the store was left as it was (not a storage fault of the store).
    #[error("mvcc: snapshot {} refused: {reason}", path.display())]
    BadSnapshot {
        path: std::path::PathBuf,
        reason: String,
    },
}

impl MvccError {
    /// The I/O error under this one, if it is one (`kind() == StorageFull` for ENOSPC). Any
    /// backend error is a storage fault either way; this only tells them apart for logs and
    /// alarms.
    pub fn io_error(&self) -> Option<&std::io::Error> {
        match self {
            MvccError::Backend(redb::Error::Io(e)) => Some(e),
            _ => None,
        }
    }
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
