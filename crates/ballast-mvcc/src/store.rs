//! The store: redb backend + key index, the single writer, read views, compaction, hashes.
//!
//! # Write path
//! [`Store::write`] takes the writer lock and returns a [`WriteTxn`], a *batch*: the caller runs
//! any number of etcd-level transactions in it, closing each with [`WriteTxn::end`] (one main
//! revision if it wrote anything), then [`WriteTxn::commit`]s the batch. Until commit, new rows
//! live in an in-memory arena (no redb transaction is open, so a background compaction step can
//! commit meanwhile) and new revisions are appended to the shared key index, where readers ignore
//! them (they are newer than any published revision). `commit` opens one redb write transaction,
//! appends the rows in revision order, stores the applied index in `meta`, commits with the
//! requested durability, then publishes the new revision. A batch dropped (or whose commit
//! fails) removes its revisions from the index again.
//!
//! # Read path
//! [`Store::read`] loads the published revision `R`, then begins a redb read transaction (which
//! therefore contains every commit up to `R`). Ranges walk the index at `R` in chunks of
//! [`INDEX_CHUNK`](crate::range::INDEX_CHUNK) keys per read-lock hold and fetch rows from the
//! snapshot.
//!
//! # Durability
//! `commit(.., durable=false)` uses redb's `Durability::None`: visible to later readers at once,
//! persisted only by a later `Durability::Immediate` commit (or a clean close of the database).
//! After a crash redb reverts to the last durable commit, whose `mvcc/applied_index` is what
//! [`Store::durable_applied_index`] reports after `open`.
//!
//! # Compaction
//! [`WriteTxn::compact`] validates the revision and writes `mvcc/scheduled_compact_rev` in the
//! batch; at commit the compact revision is published (reads below it fail). The returned
//! [`CompactJob`] then does the work, meant for a background thread: (1) compacts the key index
//! in chunks of keys (one index write-lock hold per chunk), (2) deletes the backend rows `<= C`
//! that the index no longer references, `compaction_batch` rows per redb transaction
//! (non-durable commits, made durable by the writer's next durable commit), (3) writes
//! `mvcc/finished_compact_rev` in the last batch. Jobs run one at a time. If the process dies
//! before (3) is durable, `open` sees scheduled > finished, redoes (1) synchronously and hands
//! out (2)+(3) through [`Store::take_pending_compaction`].
//!
//! # Hash
//! [`Store::hash`] follows etcd's backend hash: CRC32C over each table in name order (`key`,
//! `meta`): the table name, then every key and value, skipping `mvcc/applied_index` (member
//! specific, like etcd's `consistent_index`). It holds the writer slot only to take its
//! snapshot, so the returned revision is exactly the snapshot's.
//!
//! # Defragmentation
//! The store's redb database sits behind an `RwLock<Arc<DbHandle>>`: every read view, write
//! batch and compaction step takes the current handle when it starts. [`Store::defragment`]
//! (under the compaction lock, then the writer slot) copies the latest commit into
//! `<file>.defrag.tmp` in chunks, commits durably, lets redb compact the copy, renames it over
//! the file, fsyncs the directory and swaps the handle; views opened before keep the old handle
//! (and the unlinked file) alive until they are dropped. Over a caller's backend there is no file
//! to rename: redb's `Database::compact` runs in place, holding the handle exclusively (new reads
//! wait; views open at the start are waited for up to 10 s). Storage length is tracked by a
//! wrapper around the backend (`backend::SizeTracked`), so [`Store::db_size`] costs an atomic load.
//! The copy (`copy_into_file`) is also a snapshot export's, and the swap (`rename_into_place`,
//! `Store::switch_to`) a snapshot install's: see the `snapshot` submodule. The key index hangs
//! off the handle too (shared by a defragmentation's new handle, new for an install's), so a
//! view reads one consistent pair of index and database even across an install.
//!
//! # Failpoints
//! `backend::before_commit` (redb transaction written, not committed: `return` aborts it),
//! `backend::after_commit` (batch committed and published: `return` reports an error for a
//! batch that took effect), `compaction::before_step`/`after_step` (around each deletion batch's
//! commit), `backend::before_defrag_swap`/`after_defrag_swap` (around the rename; after = once
//! the directory is synced), `backend::before_install_swap`/`after_install_swap` (the same for a
//! snapshot install; over a caller's backend, around its one redb transaction). `return(ERRNO)`
//! is that errno as an I/O error.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io;
use std::mem;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use redb::backends::FileBackend;
use redb::{
    Database, Durability, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, StorageBackend, TableDefinition,
};

use crate::backend::SizeTracked;
use crate::codec;
use crate::index::{KeyRange, RestoreRow, TreeIndex};
use crate::range::{plan_range, resolve_rev, run_range, IndexState, RangePlan, INDEX_CHUNK};
use crate::revision::{Revision, REV_BYTES};
use crate::{Event, EventKind, KeyValue, MvccError, RangeOptions, RangeResult};

mod snapshot;
pub use snapshot::{SnapshotInfo, SnapshotStream};

type RevKey = &'static [u8; REV_BYTES];
const KEY_TABLE: TableDefinition<RevKey, &[u8]> = TableDefinition::new("key");
const META_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const META_APPLIED: &str = "mvcc/applied_index";
const META_SCHEDULED: &str = "mvcc/scheduled_compact_rev";
const META_FINISHED: &str = "mvcc/finished_compact_rev";
const META_FORMAT: &str = "mvcc/format";
const FORMAT_VERSION: u8 = 1;

/// Rough per-row overhead of redb (key + value headers) used by [`Store::db_size_in_use`].
const ROW_OVERHEAD: u64 = 24;

/// Tuning for [`Store::open`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// redb page cache size in bytes.
    pub cache_size: usize,
    /// Backend rows examined per redb write transaction by the physical compaction.
    pub compaction_batch: usize,
    /// Keys compacted per index write-lock hold.
    pub compaction_index_chunk: usize,
    /// Enable redb quick-repair on durable commits: recovery after a crash is instant instead
    /// of a full-file scan, at the cost of a second fsync per durable commit.
    pub quick_repair: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_size: 256 << 20,
            compaction_batch: 10_000,
            compaction_index_chunk: 10_000,
            quick_repair: true,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct PendingRow {
    rev: Revision,
    start: usize,
    end: usize,
}

#[derive(Default)]
struct WriterBuf {
    arena: Vec<u8>,
    rows: Vec<PendingRow>,
    meta: Vec<(String, Option<Vec<u8>>)>,
}

#[derive(Default)]
struct CompactionState {
    /// Highest revision the index has been compacted at.
    index_done: i64,
    /// Highest revision whose physical compaction finished.
    finished: i64,
    /// Resume point of the physical compaction in progress: (target, next backend key).
    cursor: Option<(i64, [u8; REV_BYTES])>,
}

/// One open redb database, its storage length (kept current by [`SizeTracked`]) and the key
/// index of its contents. [`ReadView`]s hold the handle they were opened on, so a
/// defragmentation that swaps in a new file leaves them reading the old one until they are
/// dropped; a defragmentation's new handle shares the index (same contents), a snapshot
/// install's has its own, so a view opened before an install keeps reading the old contents
/// through the old index.
struct DbHandle {
    db: Database,
    len: Arc<AtomicU64>,
    index: Arc<RwLock<IndexState>>,
}

/// Where the database lives.
#[derive(Clone, Debug)]
enum Location {
    /// A file opened by [`Store::open`]; defragmented by copy + rename.
    File(PathBuf),
    /// A caller's [`StorageBackend`] ([`Store::open_with_backend`]), named for logs;
    /// defragmented in place by redb's compaction.
    Custom(String),
}

/// How long an in-place defragmentation waits for the [`ReadView`]s open when it starts.
const DEFRAG_VIEW_WAIT: Duration = Duration::from_secs(10);

struct Inner {
    /// The current database; replaced by a file [`Store::defragment`], held exclusively by
    /// an in-place one.
    db: RwLock<Arc<DbHandle>>,
    /// The current database's length counter (apart from `db`, so that reading the size never
    /// waits for an in-place defragmentation).
    len: RwLock<Arc<AtomicU64>>,
    location: Location,
    opts: StoreOptions,
    /// Bumped by every snapshot install: a [`CompactJob`] of the contents before it has
    /// nothing left to do.
    generation: AtomicU64,
    committed_rev: AtomicI64,
    compact_rev: AtomicI64,
    applied_index: AtomicU64,
    durable_applied_index: AtomicU64,
    /// Set when a defragmentation's directory fsync failed: the rename may not be durable, so
    /// the next durable commit syncs the directory before it counts as durable.
    rename_unsynced: AtomicBool,
    live_bytes: AtomicU64,
    /// The writer's reusable buffers; `None` while a [`WriteTxn`] owns them.
    writer: Mutex<Option<WriterBuf>>,
    writer_free: Condvar,
    compaction: Mutex<CompactionState>,
    pending_job: Mutex<Option<i64>>,
}

impl Inner {
    fn db(&self) -> Arc<DbHandle> {
        self.db.read().clone()
    }
}

/// What [`Store::defragment`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DefragStats {
    /// Database size (bytes) before.
    pub size_before: u64,
    /// Database size (bytes) after: what [`Store::db_size`] now reports.
    pub size_after: u64,
    /// Wall time, including the wait for a running write batch or compaction job.
    pub took: Duration,
    /// Of `took`, the time writers were paused (the copy and the swap).
    pub writes_paused: Duration,
}

/// Rows copied per redb write transaction by a defragmentation (bytes of keys + values).
const DEFRAG_CHUNK_BYTES: u64 = 16 << 20;

/// The file a defragmentation builds before renaming it over the database file.
fn defrag_tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".defrag.tmp");
    path.with_file_name(name)
}

/// The file a new database is created under before it is renamed into place.
fn creating_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".creating");
    path.with_file_name(name)
}

fn io_err(e: io::Error) -> MvccError {
    MvccError::Backend(redb::Error::Io(e))
}

fn sync_parent_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::File::open(dir)?.sync_all()
}

/// Holds the writer slot (no [`WriteTxn`] can exist) and gives it back when dropped, also on
/// unwinding.
struct WriterHold<'a> {
    store: &'a Store,
    buf: Option<WriterBuf>,
}

impl Drop for WriterHold<'_> {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.store.release_writer(buf);
        }
    }
}

/// The revisioned store. Cheap to clone (an `Arc`), `Send + Sync`.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("location", &self.inner.location)
            .field("revision", &self.current_revision())
            .field("compact_revision", &self.compact_revision())
            .finish()
    }
}

fn meta_i64(v: Option<redb::AccessGuard<'_, &[u8]>>) -> Result<Option<i64>, MvccError> {
    match v {
        None => Ok(None),
        Some(g) => {
            let b: [u8; 8] = g
                .value()
                .try_into()
                .map_err(|_| MvccError::Corrupt("meta integer is not 8 bytes".into()))?;
            Ok(Some(i64::from_be_bytes(b)))
        }
    }
}

/// Checks a stored `mvcc/format` mark.
fn check_format(mark: &[u8]) -> Result<(), MvccError> {
    if mark == [FORMAT_VERSION] {
        Ok(())
    } else {
        Err(MvccError::Corrupt(format!(
            "unsupported mvcc format {mark:?}"
        )))
    }
}

/// The store revision that a database's contents imply: its newest row, or its compact
/// revision if compaction removed the newest rows (a compaction at the current revision can
/// delete the tombstones written last); 1 for an empty store.
fn stored_revision(newest_row: i64, compact_rev: i64) -> i64 {
    newest_row.max(compact_rev).max(1)
}

/// This crate's marks in `meta`, as of one read transaction.
struct Marks {
    applied: u64,
    /// `mvcc/scheduled_compact_rev` (the compact revision), -1 if never compacted.
    scheduled: i64,
    /// `mvcc/finished_compact_rev`, -1 if none.
    finished: i64,
}

impl Marks {
    fn read(txn: &ReadTransaction) -> Result<Marks, MvccError> {
        let meta = txn.open_table(META_TABLE)?;
        let applied = match meta.get(META_APPLIED)? {
            None => 0,
            Some(g) => {
                let b: [u8; 8] = g
                    .value()
                    .try_into()
                    .map_err(|_| MvccError::Corrupt("applied index is not 8 bytes".into()))?;
                u64::from_be_bytes(b)
            }
        };
        Ok(Marks {
            applied,
            scheduled: meta_i64(meta.get(META_SCHEDULED)?)?.unwrap_or(-1),
            finished: meta_i64(meta.get(META_FINISHED)?)?.unwrap_or(-1),
        })
    }
}

/// The in-memory state that a database's contents imply, rebuilt from them: what
/// [`Store::open`] starts from and what a snapshot install switches to.
struct Loaded {
    /// Goes into the [`DbHandle`].
    index: IndexState,
    rows: usize,
    state: LoadedState,
}

/// [`Loaded`] but the index: what goes into [`Inner`].
struct LoadedState {
    revision: i64,
    compact_rev: i64,
    applied: u64,
    live_bytes: u64,
    compaction: CompactionState,
    /// A compaction scheduled but not finished (its index part is redone here).
    pending: Option<i64>,
}

impl Loaded {
    /// Reads every row (decoding each: a row this crate cannot read is an error) and rebuilds
    /// the key index in revision order; redoes the index part of an unfinished compaction.
    fn from_db(db: &impl ReadableDatabase) -> Result<Loaded, MvccError> {
        let r = db.begin_read()?;
        let marks = Marks::read(&r)?;
        let table = r.open_table(KEY_TABLE)?;
        let mut restore: Vec<RestoreRow> = Vec::with_capacity(table.len()? as usize);
        let mut last_main = 1i64;
        let mut live_bytes = 0u64;
        for item in table.range::<&[u8; REV_BYTES]>(..)? {
            let (k, v) = item?;
            let rev = Revision::from_bytes(k.value());
            let bytes = v.value();
            live_bytes += bytes.len() as u64 + REV_BYTES as u64 + ROW_OVERHEAD;
            let row = codec::decode(bytes)?;
            restore.push(RestoreRow::new(
                row.key,
                rev,
                row.create_revision,
                row.version,
                row.tombstone,
            ));
            last_main = last_main.max(rev.main);
        }
        let rows = restore.len();
        let mut tree = TreeIndex::from_rows(restore);
        drop(table);
        drop(r);

        let Marks {
            applied,
            scheduled,
            finished,
        } = marks;
        let mut pending = None;
        if scheduled > finished {
            let mut from: Option<Box<[u8]>> = None;
            loop {
                from = tree.compact_chunk(scheduled, from.as_deref(), usize::MAX);
                if from.is_none() {
                    break;
                }
            }
            pending = Some(scheduled);
        }
        Ok(Loaded {
            index: IndexState {
                tree,
                compact_rev: scheduled,
            },
            rows,
            state: LoadedState {
                revision: stored_revision(last_main, scheduled),
                compact_rev: scheduled,
                applied,
                live_bytes,
                compaction: CompactionState {
                    index_done: scheduled,
                    finished,
                    cursor: None,
                },
                pending,
            },
        })
    }
}

impl Store {
    /// Opens (or creates) the store at `path` (a file) and rebuilds the key index.
    ///
    /// A `<file name>.defrag.tmp` next to it is what a defragmentation interrupted before its
    /// rename left behind: it is removed (the database file itself is complete).
    ///
    /// A new database is created whole: initialised and committed durably under
    /// `<file name>.creating`, then renamed into place and the directory fsynced, so a crash
    /// during creation leaves either no database (the leftover `.creating` file is removed at
    /// the next open) or a complete one — never a file redb refuses to open.
    pub fn open(path: &Path, opts: StoreOptions) -> Result<Store, MvccError> {
        for (tmp, what) in [
            (
                defrag_tmp_path(path),
                "the copy left by an interrupted defragmentation",
            ),
            (
                creating_path(path),
                "a database whose creation was interrupted",
            ),
        ] {
            match fs::remove_file(&tmp) {
                Ok(()) => tracing::warn!(path = %tmp.display(), "removed {what}"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        if !path.exists() {
            let creating = creating_path(path);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&creating)
                .map_err(io_err)?;
            let backend = FileBackend::new(file)?;
            // Initialised with a durable commit (the format mark), then closed.
            drop(Self::open_backend(
                Location::Custom(creating.display().to_string()),
                backend,
                opts.clone(),
            )?);
            fs::rename(&creating, path).map_err(io_err)?;
            sync_parent_dir(path).map_err(io_err)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err)?;
        let backend = FileBackend::new(file)?;
        Self::open_backend(Location::File(path.to_path_buf()), backend, opts)
    }

    /// Opens (or creates) the store over any redb [`StorageBackend`] (a test file layer, a
    /// simulated disk): the same store as [`Store::open`] in every way, except that
    /// [`Store::defragment`] compacts in place (redb's `Database::compact`, see there) and
    /// [`Store::db_size`] is the backend's length. `name` only appears in logs.
    pub fn open_with_backend(
        name: &str,
        backend: impl StorageBackend,
        opts: StoreOptions,
    ) -> Result<Store, MvccError> {
        Self::open_backend(Location::Custom(name.to_string()), backend, opts)
    }

    fn open_backend(
        location: Location,
        backend: impl StorageBackend,
        opts: StoreOptions,
    ) -> Result<Store, MvccError> {
        let started = Instant::now();
        let (backend, len) = SizeTracked::new(backend);
        let db = Database::builder()
            .set_cache_size(opts.cache_size)
            .create_with_backend(backend)?;
        {
            let mut w = db.begin_write()?;
            w.set_durability(Durability::Immediate)?;
            w.open_table(KEY_TABLE)?;
            let mut meta = w.open_table(META_TABLE)?;
            let format = meta.get(META_FORMAT)?.map(|g| g.value().to_vec());
            match format {
                None => {
                    meta.insert(META_FORMAT, &[FORMAT_VERSION][..])?;
                }
                Some(mark) => check_format(&mark)?,
            }
            drop(meta);
            w.commit()?;
        }
        let Loaded { index, rows, state } = Loaded::from_db(&db)?;
        tracing::info!(
            location = ?location,
            revision = state.revision,
            compact_revision = state.compact_rev,
            applied_index = state.applied,
            keys = index.tree.len(),
            rows,
            took_ms = started.elapsed().as_millis() as u64,
            "mvcc store opened"
        );
        Ok(Store {
            inner: Arc::new(Inner {
                db: RwLock::new(Arc::new(DbHandle {
                    db,
                    len: len.clone(),
                    index: Arc::new(RwLock::new(index)),
                })),
                len: RwLock::new(len),
                location,
                opts,
                generation: AtomicU64::new(0),
                committed_rev: AtomicI64::new(state.revision),
                compact_rev: AtomicI64::new(state.compact_rev),
                applied_index: AtomicU64::new(state.applied),
                durable_applied_index: AtomicU64::new(state.applied),
                rename_unsynced: AtomicBool::new(false),
                live_bytes: AtomicU64::new(state.live_bytes),
                writer: Mutex::new(Some(WriterBuf::default())),
                writer_free: Condvar::new(),
                compaction: Mutex::new(state.compaction),
                pending_job: Mutex::new(state.pending),
            }),
        })
    }

    /// The current database and its published revision, taken together (a snapshot install
    /// switches both under the `db` lock).
    fn published(&self) -> (Arc<DbHandle>, i64) {
        let db = self.inner.db.read();
        (db.clone(), self.inner.committed_rev.load(Ordering::Acquire))
    }

    /// A consistent read snapshot at the current (published) revision.
    pub fn read(&self) -> Result<ReadView, MvccError> {
        let (db, rev) = self.published();
        let txn = db.db.begin_read()?;
        let table = txn.open_table(KEY_TABLE)?;
        Ok(ReadView {
            rev,
            txn,
            table,
            db,
        })
    }

    /// Starts a write batch. Blocks while another [`WriteTxn`] is alive (one writer).
    pub fn write(&self) -> Result<WriteTxn<'_>, MvccError> {
        let mut buf = self.take_writer();
        buf.arena.clear();
        buf.rows.clear();
        buf.meta.clear();
        // Only now (being the writer) is the published revision stable; the snapshot taken
        // after it contains every row up to it.
        let base_rev = self.inner.committed_rev.load(Ordering::Acquire);
        let db = self.inner.db();
        let snap = match db
            .db
            .begin_read()
            .map_err(MvccError::from)
            .and_then(|snap| Ok((snap.open_table(KEY_TABLE)?, snap)))
        {
            Ok(s) => s,
            Err(e) => {
                self.release_writer(buf);
                return Err(e);
            }
        };
        let (snapshot, snap) = snap;
        Ok(WriteTxn {
            store: self,
            db,
            buf,
            snap,
            snapshot,
            base_rev,
            cur_rev: base_rev,
            changes: Vec::new(),
            pending_compact: None,
            poisoned: false,
            orphans: Vec::new(),
            done: false,
        })
    }

    fn take_writer(&self) -> WriterBuf {
        let mut slot = self.inner.writer.lock();
        loop {
            if let Some(b) = slot.take() {
                return b;
            }
            self.inner.writer_free.wait(&mut slot);
        }
    }

    /// Waits for the write batch in progress, if any, and keeps new ones from starting until
    /// the returned hold is dropped.
    fn hold_writer(&self) -> WriterHold<'_> {
        WriterHold {
            store: self,
            buf: Some(self.take_writer()),
        }
    }

    /// After a defragmentation whose directory fsync failed: syncs the directory (the rename)
    /// so that a durable commit is durable in the file a restart opens.
    fn sync_unsynced_rename(&self) -> Result<(), MvccError> {
        if !self.inner.rename_unsynced.load(Ordering::Acquire) {
            return Ok(());
        }
        if let Location::File(path) = &self.inner.location {
            sync_parent_dir(path).map_err(io_err)?;
        }
        self.inner.rename_unsynced.store(false, Ordering::Release);
        Ok(())
    }

    fn release_writer(&self, buf: WriterBuf) {
        *self.inner.writer.lock() = Some(buf);
        self.inner.writer_free.notify_one();
    }

    /// The latest committed revision (1 for an empty store).
    pub fn current_revision(&self) -> i64 {
        self.inner.committed_rev.load(Ordering::Acquire)
    }

    /// The published compact revision; -1 if the store was never compacted (like etcd).
    pub fn compact_revision(&self) -> i64 {
        self.inner.compact_rev.load(Ordering::Acquire)
    }

    /// The applied index stored by the latest commit.
    pub fn applied_index(&self) -> u64 {
        self.inner.applied_index.load(Ordering::Acquire)
    }

    /// The applied index stored by the latest durable commit (what survives a crash).
    pub fn durable_applied_index(&self) -> u64 {
        self.inner.durable_applied_index.load(Ordering::Acquire)
    }

    /// Size of the database in bytes: the file's length, what etcd compares to the backend
    /// quota. An atomic load (kept current by the storage layer), cheap enough for every request.
    pub fn db_size(&self) -> u64 {
        self.inner.len.read().load(Ordering::Relaxed)
    }

    /// Estimate of the bytes holding live data: stored rows plus a per-row overhead, capped at
    /// the file size.
    pub fn db_size_in_use(&self) -> u64 {
        self.inner
            .live_bytes
            .load(Ordering::Relaxed)
            .min(self.db_size())
    }

    /// Number of keys in the index (live or with history), for metrics.
    pub fn index_len(&self) -> usize {
        self.inner.db().index.read().tree.len()
    }

    /// Reads a caller meta value from the latest commit.
    pub fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, MvccError> {
        let db = self.inner.db();
        let r = db.db.begin_read()?;
        let meta = r.open_table(META_TABLE)?;
        let v = meta.get(key)?.map(|g| g.value().to_vec());
        Ok(v)
    }

    /// CRC32C of the backend rows with revision in `(compact_revision, rev]` (key bytes then
    /// value bytes of each row, in revision order). `rev <= 0` = current revision. Returns
    /// `(hash, compact_revision, hashed_revision)`. Errors like etcd's HashByRev: `rev` at or
    /// below the compact revision -> Compacted, above the current revision -> FutureRev.
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64, i64), MvccError> {
        let view = self.read()?;
        let compact = view.compact_revision();
        if rev > 0 && rev <= compact {
            return Err(MvccError::Compacted);
        }
        if rev > view.rev {
            return Err(MvccError::FutureRev);
        }
        let rev = if rev <= 0 { view.rev } else { rev };
        let lower = Revision::new(compact.saturating_add(1).max(0), 0).to_bytes();
        let upper = Revision::new(rev.saturating_add(1), 0).to_bytes();
        let mut h = crc32c::crc32c(b"key");
        for item in view.table.range::<&[u8; REV_BYTES]>(&lower..&upper)? {
            let (k, v) = item?;
            h = crc32c::crc32c_append(h, k.value());
            h = crc32c::crc32c_append(h, v.value());
        }
        Ok((h, compact, rev))
    }

    /// etcd's Maintenance.Hash: a CRC32C (Castagnoli) over the whole backend, taken at one
    /// commit, and the revision of that commit. Like etcd's backend hash it walks every table
    /// in name order (`key`, then `meta`), hashing the table name, then each key and value in key
    /// order, skipping what legitimately differs between members of one cluster: the
    /// `mvcc/applied_index` meta key (etcd skips its `consistent_index` likewise). Same data ->
    /// same hash, across defragmentation and reopen (the file layout does not enter it).
    ///
    /// Waits for the write batch in progress (if any) to take its snapshot, then reads without
    /// blocking anyone. Never call it on a thread holding a [`WriteTxn`]. A physical compaction
    /// in progress changes the hash as its batches commit (as in etcd).
    pub fn hash(&self) -> Result<(u32, i64), MvccError> {
        self.hash_ignoring(&[])
    }

    /// [`Store::hash`], also skipping the caller meta keys in `ignore_meta` (values that belong
    /// to one member only, such as its own member id).
    pub fn hash_ignoring(&self, ignore_meta: &[&str]) -> Result<(u32, i64), MvccError> {
        let (_db, rev, txn) = {
            // No commit can be between the redb commit and the revision's publication here.
            let _w = self.hold_writer();
            let db = self.inner.db();
            let rev = self.inner.committed_rev.load(Ordering::Acquire);
            let txn = db.db.begin_read()?;
            (db, rev, txn)
        };
        let mut h = crc32c::crc32c(b"key");
        let keys = txn.open_table(KEY_TABLE)?;
        for item in keys.range::<&[u8; REV_BYTES]>(..)? {
            let (k, v) = item?;
            h = crc32c::crc32c_append(h, k.value());
            h = crc32c::crc32c_append(h, v.value());
        }
        drop(keys);
        h = crc32c::crc32c_append(h, b"meta");
        let meta = txn.open_table(META_TABLE)?;
        for item in meta.range::<&str>(..)? {
            let (k, v) = item?;
            let k = k.value();
            if k == META_APPLIED || ignore_meta.contains(&k) {
                continue;
            }
            h = crc32c::crc32c_append(h, k.as_bytes());
            h = crc32c::crc32c_append(h, v.value());
        }
        // The transaction before the database it reads.
        drop(meta);
        drop(txn);
        drop(_db);
        Ok((h, rev))
    }

    /// Gives the space freed by compaction back to the file system (etcd's Defragment): copies
    /// the live contents into a new file, `<file name>.defrag.tmp`, commits it durably (and
    /// lets redb compact the copy, which trims the space redb grew the file by ahead of the
    /// data), renames it over the database file, fsyncs the directory and switches the store to
    /// it. A store opened over a caller's backend ([`Store::open_with_backend`]) is compacted in
    /// place instead: see `defragment_in_place` in the source (it also pauses reads).
    ///
    /// Why a copy and not redb's in-place `Database::compact` for files: that one needs the
    /// database to itself (no read transaction at all, so every [`ReadView`] must be gone,
    /// and watchers catching up can hold one for long), and it moves pages one commit at a time,
    /// slowly; a copy pauses only the writer and leaves a dense file. etcd's defrag is also a
    /// copy and a rename.
    ///
    /// - Pauses: waits for a running compaction job to finish its run and for the write batch in
    ///   progress, then keeps new write batches (and compaction jobs, and [`Store::hash`]) waiting
    ///   until the switch; reads are never paused. Existing [`ReadView`]s keep reading the old
    ///   file (unlinked once renamed over; its space returns when the last of them is dropped).
    /// - Data: every row and meta value is copied as it stood after the last commit, non-durable
    ///   commits included (they become durable by this), so neither data, revisions, hash nor
    ///   the applied index change; [`Store::durable_applied_index`] catches up with
    ///   [`Store::applied_index`] once the rename is durable (the directory fsync succeeded).
    /// - Crash safety: the new file is complete (durable redb commit) before the rename, and the
    ///   rename is atomic, so a crash at any point leaves either the old or the new database,
    ///   complete; [`Store::open`] deletes a leftover `.defrag.tmp`.
    /// - Errors: a failure before the rename (I/O, no space for the copy) removes the copy and
    ///   leaves the store as it was. A failure of the directory fsync after the rename is
    ///   reported, but the store already runs on the new file (either file is complete); it is
    ///   a storage fault to stop the member on. Until a directory fsync succeeds a crash may
    ///   bring back the old file, so the next durable commit syncs the directory first, and
    ///   fails (its batch committed but not counted durable) if that fails again.
    /// - Needs free space for a copy of the live data (as etcd's). Never call it on a thread
    ///   holding a [`WriteTxn`].
    pub fn defragment(&self) -> Result<DefragStats, MvccError> {
        let started = Instant::now();
        // Lock order: compaction, then the writer slot (a compaction job never waits for the
        // writer, so writes go on while we wait for a job to end).
        let _compaction = self.inner.compaction.lock();
        let _writer = self.hold_writer();
        let paused = Instant::now();
        let path = match &self.inner.location {
            Location::File(path) => path.clone(),
            Location::Custom(name) => return self.defragment_in_place(name, started, paused),
        };
        let old = self.inner.db();
        let size_before = old.len.load(Ordering::Relaxed);
        let tmp = defrag_tmp_path(&path);
        let copied = old
            .db
            .begin_read()
            .map_err(MvccError::from)
            .and_then(|src| {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&tmp)
                    .map_err(io_err)?;
                copy_into_file(&src, file, &self.inner.opts)
            });
        let copy = match copied {
            Ok(c) => c,
            Err(e) => {
                remove_defrag_tmp(&tmp);
                return Err(e);
            }
        };
        if let Err(e) = rename_into_place(Swap::Defrag, &tmp, &path) {
            drop(copy);
            remove_defrag_tmp(&tmp);
            return Err(e);
        }
        let size_after = copy.len.load(Ordering::Relaxed);
        let new = Arc::new(DbHandle {
            db: copy.db,
            len: copy.len,
            // Same contents, same index.
            index: old.index.clone(),
        });
        drop(old);
        let after_swap = self.switch_to(Swap::Defrag, &path, new, |inner| {
            inner.live_bytes.store(copy.live_bytes, Ordering::Relaxed);
        });
        let writes_paused = paused.elapsed();
        let stats = DefragStats {
            size_before,
            size_after,
            took: started.elapsed(),
            writes_paused,
        };
        tracing::info!(
            path = %path.display(),
            size_before,
            size_after,
            took_ms = stats.took.as_millis() as u64,
            writes_paused_ms = writes_paused.as_millis() as u64,
            "defragmented"
        );
        after_swap.map(|()| stats)
    }

    /// The last step of replacing the database file (a defragmentation, a snapshot install),
    /// once [`rename_into_place`] succeeded: switches the store to `new` (the database now at
    /// `path`) and runs `publish` (the in-memory state of the new contents) under the same `db`
    /// lock, so no reader sees the new database with the old revision; then fsyncs the
    /// directory. Until that fsync succeeds a crash may bring back the old file, so the durable
    /// applied index only catches up with the applied index once it has; a failure is returned
    /// (the store runs on the new file) and the next durable commit retries the fsync first.
    fn switch_to(
        &self,
        kind: Swap,
        path: &Path,
        new: Arc<DbHandle>,
        publish: impl FnOnce(&Inner),
    ) -> Result<(), MvccError> {
        let old = {
            let mut db = self.inner.db.write();
            *self.inner.len.write() = new.len.clone();
            let old = mem::replace(&mut *db, new);
            publish(&self.inner);
            old
        };
        // Closes the old database unless views still read it (outside the lock: its close
        // writes).
        drop(old);
        let synced = sync_renamed(kind, path);
        if synced.is_err() {
            self.inner.rename_unsynced.store(true, Ordering::Release);
        } else {
            // No writer can have run since the switch: the caller holds the slot.
            let applied = self.inner.applied_index.load(Ordering::Acquire);
            self.inner
                .durable_applied_index
                .store(applied, Ordering::Release);
        }
        synced
    }

    /// [`Store::defragment`] of a store over a caller's backend (no file to rename): redb's
    /// in-place `Database::compact`, which relocates pages towards the start and truncates the
    /// storage, in a series of durable redb commits (crash-safe as any redb commit). It needs the
    /// database to itself: new reads wait (the caller holds the writer and compaction locks
    /// already) and the [`ReadView`]s open when it starts are waited for up to
    /// `DEFRAG_VIEW_WAIT` (10 s), after which it gives up with an error, changing nothing.
    fn defragment_in_place(
        &self,
        name: &str,
        started: Instant,
        paused: Instant,
    ) -> Result<DefragStats, MvccError> {
        let mut guard = self.inner.db.write();
        let size_before = guard.len.load(Ordering::Relaxed);
        let handle = exclusive(&mut guard)?;
        handle
            .db
            .compact()
            .map_err(|e| MvccError::Backend(e.into()))?;
        let size_after = handle.len.load(Ordering::Relaxed);
        drop(guard);
        let applied = self.inner.applied_index.load(Ordering::Acquire);
        self.inner
            .durable_applied_index
            .store(applied, Ordering::Release);
        let stats = DefragStats {
            size_before,
            size_after,
            took: started.elapsed(),
            writes_paused: paused.elapsed(),
        };
        tracing::info!(
            backend = name,
            size_before,
            size_after,
            took_ms = stats.took.as_millis() as u64,
            "defragmented in place"
        );
        Ok(stats)
    }

    /// The physical compaction left unfinished by a crash (found by `open`), if not yet taken.
    /// Run it (e.g. on a background thread) to reclaim space; correctness does not depend on it.
    pub fn take_pending_compaction(&self) -> Option<CompactJob> {
        self.inner.pending_job.lock().take().map(|rev| CompactJob {
            store: self.clone(),
            rev,
            generation: self.inner.generation.load(Ordering::Acquire),
        })
    }
}

/// After a write batch's commit and publication: `return` reports an error for a batch that
/// did take effect (as a failed fsync after the data reached the disk), the store staying
/// consistent with it.
fn after_commit_point() -> Result<(), MvccError> {
    io_fail_point!("backend::after_commit");
    Ok(())
}

/// Which replacement of the database file a durable step belongs to (names its failpoints).
#[derive(Clone, Copy, Debug)]
enum Swap {
    Defrag,
    Install,
}

/// The failpoint before (`after == false`) or after the durable step of `kind`.
fn swap_point(kind: Swap, after: bool) -> Result<(), MvccError> {
    match (kind, after) {
        (Swap::Defrag, false) => {
            io_fail_point!("backend::before_defrag_swap");
        }
        (Swap::Defrag, true) => {
            io_fail_point!("backend::after_defrag_swap");
        }
        (Swap::Install, false) => {
            io_fail_point!("backend::before_install_swap");
        }
        (Swap::Install, true) => {
            io_fail_point!("backend::after_install_swap");
        }
    }
    Ok(())
}

/// The durable step of replacing the database file: the rename of a complete, synced database
/// `from` over it (atomic: a crash leaves one or the other). Then [`Store::switch_to`].
fn rename_into_place(kind: Swap, from: &Path, path: &Path) -> Result<(), MvccError> {
    swap_point(kind, false)?;
    fs::rename(from, path).map_err(io_err)
}

/// Makes the rename durable.
fn sync_renamed(kind: Swap, path: &Path) -> Result<(), MvccError> {
    sync_parent_dir(path).map_err(io_err)?;
    swap_point(kind, true)
}

/// The current database handle of a store over a caller's backend, to itself (an in-place
/// defragmentation or snapshot install): new reads wait on the `db` lock the caller holds, and
/// the [`ReadView`]s (and exports) holding the handle are waited for up to `DEFRAG_VIEW_WAIT`,
/// after which this gives up with an error.
fn exclusive(handle: &mut Arc<DbHandle>) -> Result<&mut DbHandle, MvccError> {
    let deadline = Instant::now() + DEFRAG_VIEW_WAIT;
    while Arc::strong_count(handle) > 1 {
        if Instant::now() >= deadline {
            return Err(MvccError::Backend(redb::Error::TransactionInProgress));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Arc::get_mut(handle).ok_or(MvccError::Backend(redb::Error::TransactionInProgress))
}

/// What [`copy_into_file`] made.
struct Copied {
    db: Database,
    len: Arc<AtomicU64>,
    live_bytes: u64,
}

/// Copies everything `src` reads (one commit: every row and every meta value, this crate's
/// marks included) into a new database in `file` (empty), durably, and lets redb compact the
/// copy. The copy routine of a defragmentation and of a snapshot export.
fn copy_into_file(
    src: &ReadTransaction,
    file: fs::File,
    opts: &StoreOptions,
) -> Result<Copied, MvccError> {
    let (backend, len) = SizeTracked::new(FileBackend::new(file)?);
    let mut db = Database::builder()
        .set_cache_size(opts.cache_size)
        .create_with_backend(backend)?;
    let live_bytes = copy_contents(src, &db, DEFRAG_CHUNK_BYTES, false, opts.quick_repair)?;
    // The copy is dense, but redb grew the file ahead of it in steps: its own compaction
    // (nothing else has this database) trims the tail (about 35% of the copy's size with
    // small rows), in durable commits, so the file is complete before it is renamed or sent.
    db.compact().map_err(|e| MvccError::Backend(e.into()))?;
    Ok(Copied {
        db,
        len,
        live_bytes,
    })
}

/// Copies every row of `src`'s `key` table and every `meta` entry into `dst`: rows in
/// non-durable commits of about `chunk_bytes` (keys + values) each, the last rows and the meta
/// table in one durable commit, so `dst` holds the whole copy only once that one is durable (a
/// crash before reverts to what it held). With `replace`, the first transaction empties `dst`'s
/// tables first; with `chunk_bytes == u64::MAX` everything is that one durable transaction,
/// all or nothing in the process too. Returns the live-bytes estimate of the copy.
fn copy_contents(
    src: &ReadTransaction,
    dst: &Database,
    chunk_bytes: u64,
    replace: bool,
    quick_repair: bool,
) -> Result<u64, MvccError> {
    let src_keys = src.open_table(KEY_TABLE)?;
    let mut rows = src_keys.range::<&[u8; REV_BYTES]>(..)?;
    let mut live_bytes = 0u64;
    let mut first = true;
    loop {
        let mut w = dst.begin_write()?;
        if mem::take(&mut first) && replace {
            w.delete_table(KEY_TABLE)?;
            w.delete_table(META_TABLE)?;
        }
        let mut last = true;
        {
            let mut t = w.open_table(KEY_TABLE)?;
            let mut chunk = 0u64;
            for item in rows.by_ref() {
                let (k, v) = item?;
                t.insert(k.value(), v.value())?;
                let n = v.value().len() as u64 + REV_BYTES as u64;
                live_bytes += n + ROW_OVERHEAD;
                chunk += n;
                if chunk >= chunk_bytes {
                    last = false;
                    break;
                }
            }
        }
        if !last {
            w.set_durability(Durability::None)?;
            w.commit()?;
            continue;
        }
        w.set_durability(Durability::Immediate)?;
        if quick_repair {
            w.set_quick_repair(true);
        }
        {
            let mut m = w.open_table(META_TABLE)?;
            let src_meta = src.open_table(META_TABLE)?;
            for item in src_meta.range::<&str>(..)? {
                let (k, v) = item?;
                m.insert(k.value(), v.value())?;
            }
        }
        w.commit()?;
        return Ok(live_bytes);
    }
}

fn remove_defrag_tmp(tmp: &Path) {
    if let Err(e) = fs::remove_file(tmp) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %tmp.display(), error = %e, "could not remove a defragmentation copy");
        }
    }
}

fn fetch_from_table(
    table: &ReadOnlyTable<RevKey, &'static [u8]>,
    rev: Revision,
) -> Result<KeyValue, MvccError> {
    let g = table
        .get(&rev.to_bytes())?
        .ok_or_else(|| MvccError::Corrupt(format!("index references missing row {rev:?}")))?;
    let row = codec::decode(g.value())?;
    Ok(row.to_key_value(rev.main))
}

/// A consistent read-only snapshot of the store at one revision. `Send + Sync`; holding it
/// pins the redb snapshot (space of rows deleted since is reclaimed after it is dropped).
pub struct ReadView {
    rev: i64,
    txn: ReadTransaction,
    table: ReadOnlyTable<RevKey, &'static [u8]>,
    /// The database `txn` reads and its index (declared last: dropped after the transaction).
    db: Arc<DbHandle>,
}

impl std::fmt::Debug for ReadView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadView").field("rev", &self.rev).finish()
    }
}

impl ReadView {
    /// The store revision of this snapshot (header revision of reads made through it).
    pub fn revision(&self) -> i64 {
        self.rev
    }

    /// The store's compact revision (now, not at snapshot time: like etcd, a view older than a
    /// later compaction can no longer read). For a view opened before a snapshot install, the
    /// compact revision of the contents it reads (those before the install).
    pub fn compact_revision(&self) -> i64 {
        self.db.index.read().compact_rev
    }

    /// etcd's Range (see the `range` module for the exact rules).
    pub fn range(&self, opts: &RangeOptions) -> Result<RangeResult, MvccError> {
        run_range(&self.db.index, self.rev, -1, opts, |r| {
            fetch_from_table(&self.table, r)
        })
    }

    /// [`ReadView::range`] in two steps, for a reader that sends rows as it reads them: the
    /// plan (which rows, the count, `more`), then each row with [`ReadView::fetch`]. `None`
    /// for a Range that sorts, filters or only counts (use [`ReadView::range`]). `keys_only`
    /// is the caller's to apply.
    pub fn range_plan(&self, opts: &RangeOptions) -> Result<Option<RangePlan>, MvccError> {
        plan_range(&self.db.index, self.rev, opts)
    }

    /// The row at `rev` of a [`RangePlan`] made from this view.
    pub fn fetch(&self, rev: Revision) -> Result<KeyValue, MvccError> {
        fetch_from_table(&self.table, rev)
    }

    /// The key as of revision `at` (`<= 0` = this view's revision), or None if absent.
    pub fn get(&self, key: &[u8], at: i64) -> Result<Option<KeyValue>, MvccError> {
        let at = resolve_rev(at, self.rev, self.compact_revision())?;
        let found = {
            let idx = self.db.index.read();
            if at < idx.compact_rev {
                return Err(MvccError::Compacted);
            }
            idx.tree.get(key, at)
        };
        match found {
            None => Ok(None),
            Some(f) => fetch_from_table(&self.table, f.modified).map(Some),
        }
    }

    /// Events of revisions `from..=to` (clamped to this view's revision), in revision order,
    /// for watchers catching up. Stops after the revision at which `max_events` was reached (a
    /// revision's events are never split). With `prev_kv`, each event carries the key as of the
    /// revision before it. Returns the events and the last revision included (`from - 1` if
    /// none). `from` below the compact revision -> Compacted (what cancels a watch).
    pub fn events(
        &self,
        from: i64,
        to: i64,
        max_events: usize,
        prev_kv: bool,
    ) -> Result<(Vec<Event>, i64), MvccError> {
        self.events_matching(from, to, max_events, usize::MAX, |_| Some(prev_kv))
    }

    /// [`ReadView::events`] for only the keys someone wants: `filter(key)` is `None` to skip
    /// the key's events, `Some(prev_kv)` to include them (with their previous version when
    /// `prev_kv`). `max_events` counts included events; the scan also ends, at a revision
    /// boundary, once `max_scanned` rows were looked at, so a step over a long history of
    /// unwanted keys stays short. The returned revision is the last one scanned completely:
    /// every wanted event up to it is in the result.
    ///
    /// A previous version is taken from this scan when the key changed earlier in it, and from
    /// the index only for a key's first change in the scan.
    pub fn events_matching(
        &self,
        from: i64,
        to: i64,
        max_events: usize,
        max_scanned: usize,
        filter: impl Fn(&[u8]) -> Option<bool>,
    ) -> Result<(Vec<Event>, i64), MvccError> {
        let compact = self.compact_revision();
        if from < compact {
            return Err(MvccError::Compacted);
        }
        let to = to.min(self.rev);
        let mut out = Vec::new();
        let mut last = from - 1;
        if to < from {
            return Ok((out, last));
        }
        let lower = Revision::new(from.max(0), 0).to_bytes();
        let upper = Revision::new(to.saturating_add(1), 0).to_bytes();
        // Latest change of each wanted key seen in this scan: (main revision, index of its put
        // event in `out`; None = a delete).
        let mut seen: HashMap<Vec<u8>, (i64, Option<usize>)> = HashMap::new();
        let mut truncated = false;
        for (scanned, item) in self
            .table
            .range::<&[u8; REV_BYTES]>(&lower..&upper)?
            .enumerate()
        {
            let (k, v) = item?;
            let rev = Revision::from_bytes(k.value());
            if rev.main != last
                && last >= from
                && (out.len() >= max_events || scanned >= max_scanned)
            {
                truncated = true;
                break;
            }
            last = rev.main;
            let row = codec::decode(v.value())?;
            let Some(want_prev) = filter(row.key) else {
                continue;
            };
            let prev = if !want_prev {
                None
            } else {
                match seen.get(row.key) {
                    Some((main, put)) if *main < rev.main => put.map(|i| out[i].kv.clone()),
                    _ => self.get(row.key, rev.main - 1).or_else(|e| match e {
                        MvccError::Compacted => Ok(None),
                        e => Err(e),
                    })?,
                }
            };
            let ev = if row.tombstone {
                Event {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        key: row.key.to_vec(),
                        mod_revision: rev.main,
                        ..Default::default()
                    },
                    prev_kv: prev,
                }
            } else {
                Event {
                    kind: EventKind::Put,
                    kv: row.to_key_value(rev.main),
                    prev_kv: prev,
                }
            };
            if want_prev {
                let put = (ev.kind == EventKind::Put).then_some(out.len());
                seen.insert(ev.kv.key.clone(), (rev.main, put));
            }
            out.push(ev);
        }
        if !truncated {
            last = to;
        }
        Ok((out, last))
    }

    /// Reads a caller meta value as of this snapshot.
    pub fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, MvccError> {
        let meta = self.txn.open_table(META_TABLE)?;
        let v = meta.get(key)?.map(|g| g.value().to_vec());
        Ok(v)
    }

    /// Every caller meta entry whose key starts with `prefix`, in key order, as of this
    /// snapshot (how a caller reloads a family of meta keys it owns after a restart).
    pub fn meta_with_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, MvccError> {
        let meta = self.txn.open_table(META_TABLE)?;
        let mut out = Vec::new();
        for item in meta.range::<&str>(prefix..)? {
            let (k, v) = item?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }
}

/// A write batch: see the module docs. `Send` (may cross threads / await points); while it is
/// alive, [`Store::write`] blocks.
pub struct WriteTxn<'a> {
    store: &'a Store,
    /// The database of this batch (no defragmentation can swap it while a batch is alive).
    db: Arc<DbHandle>,
    buf: WriterBuf,
    snap: ReadTransaction,
    snapshot: ReadOnlyTable<RevKey, &'static [u8]>,
    /// Published revision when the batch started.
    base_rev: i64,
    /// Revision of the last ended etcd transaction of this batch.
    cur_rev: i64,
    /// Changes of the open etcd transaction.
    changes: Vec<Event>,
    pending_compact: Option<i64>,
    /// Set when a put/delete failed half-way: the batch can only be dropped.
    poisoned: bool,
    /// Keys whose index got a revision without a pending row (undone on drop).
    orphans: Vec<Vec<u8>>,
    done: bool,
}

impl std::fmt::Debug for WriteTxn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTxn")
            .field("base_rev", &self.base_rev)
            .field("cur_rev", &self.cur_rev)
            .field("open_changes", &self.changes.len())
            .finish()
    }
}

impl WriteTxn<'_> {
    /// The revision the open etcd transaction's reads run at: its own writes are visible
    /// (etcd's storeTxnWrite.Range reads at `begin + 1` once the txn has changed something).
    fn read_rev(&self) -> i64 {
        if self.changes.is_empty() {
            self.cur_rev
        } else {
            self.cur_rev + 1
        }
    }

    /// The store revision as seen by this batch: the revision of the last ended etcd
    /// transaction (header revision of responses to requests applied in this batch).
    pub fn revision(&self) -> i64 {
        self.cur_rev
    }

    fn check_poisoned(&self) -> Result<(), MvccError> {
        if self.poisoned {
            Err(MvccError::Poisoned)
        } else {
            Ok(())
        }
    }

    fn min_compact(&self) -> i64 {
        self.pending_compact.unwrap_or(-1)
    }

    fn fetch(&self, rev: Revision) -> Result<KeyValue, MvccError> {
        if rev.main > self.base_rev {
            let rows = &self.buf.rows;
            let i = rows
                .binary_search_by(|r| r.rev.cmp(&rev))
                .map_err(|_| MvccError::Corrupt(format!("pending row {rev:?} missing")))?;
            let r = rows[i];
            let row = codec::decode(&self.buf.arena[r.start..r.end])?;
            Ok(row.to_key_value(rev.main))
        } else {
            fetch_from_table(&self.snapshot, rev)
        }
    }

    fn push_row(&mut self, rev: Revision, encode: impl FnOnce(&mut Vec<u8>)) {
        let buf = &mut self.buf;
        let start = buf.arena.len();
        encode(&mut buf.arena);
        let end = buf.arena.len();
        buf.rows.push(PendingRow { rev, start, end });
    }

    /// etcd's Range inside the open transaction (sees its earlier writes).
    pub fn range(&mut self, opts: &RangeOptions) -> Result<RangeResult, MvccError> {
        let cur = self.read_rev();
        run_range(&self.db.index, cur, self.min_compact(), opts, |r| {
            self.fetch(r)
        })
    }

    /// Puts `key = value` with `lease` (0 = none) in the open transaction. Returns the previous
    /// key-value if the key existed (its `lease` is the lease to detach).
    pub fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        lease: i64,
    ) -> Result<Option<KeyValue>, MvccError> {
        self.check_poisoned()?;
        let main = self.cur_rev + 1;
        let rev = Revision::new(main, self.changes.len() as i64);
        let found = self.db.index.write().tree.put_get(key, rev, main);
        let prev = match found {
            Some(f) => match self.fetch(f.modified) {
                Ok(kv) => Some(kv),
                Err(e) => {
                    // The index already has `rev` but no row will: poison the batch.
                    self.orphans.push(key.to_vec());
                    self.poisoned = true;
                    return Err(e);
                }
            },
            None => None,
        };
        let (created, version) = match found {
            Some(f) => (f.created.main, f.version + 1),
            None => (main, 1),
        };
        self.push_row(rev, |out| {
            codec::encode_put(out, key, created, version, lease, value)
        });
        self.changes.push(Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: key.to_vec(),
                create_revision: created,
                mod_revision: main,
                version,
                value: value.to_vec(),
                lease,
            },
            prev_kv: prev.clone(),
        });
        Ok(prev)
    }

    /// Deletes every key of `[key, range_end)` (etcd's range rules) in the open transaction.
    /// Returns the deleted key-values (empty: nothing deleted, no revision consumed).
    pub fn delete_range(
        &mut self,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<Vec<KeyValue>, MvccError> {
        self.check_poisoned()?;
        let at = self.read_rev();
        let range = KeyRange::new(key, range_end);
        // Collect the live keys (chunked, like reads).
        let mut targets: Vec<(Vec<u8>, Revision)> = Vec::new();
        let mut resume: Option<Box<[u8]>> = None;
        loop {
            let idx = self.db.index.read();
            resume = idx
                .tree
                .scan(range, at, resume.as_deref(), INDEX_CHUNK, |k, f| {
                    targets.push((k.to_vec(), f.modified))
                });
            drop(idx);
            if resume.is_none() {
                break;
            }
        }
        let main = self.cur_rev + 1;
        let mut deleted = Vec::with_capacity(targets.len());
        for (k, modified) in targets {
            let prev = match self.fetch(modified) {
                Ok(kv) => kv,
                Err(e) => {
                    self.poisoned = true;
                    return Err(e);
                }
            };
            let rev = Revision::new(main, self.changes.len() as i64);
            self.push_row(rev, |out| codec::encode_tombstone(out, &k));
            let ok = self.db.index.write().tree.tombstone(&k, rev);
            if !ok {
                self.poisoned = true;
                return Err(MvccError::Corrupt(format!(
                    "tombstone of a key that is not live: {k:?}"
                )));
            }
            self.changes.push(Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: k,
                    mod_revision: main,
                    ..Default::default()
                },
                prev_kv: Some(prev.clone()),
            });
            deleted.push(prev);
        }
        Ok(deleted)
    }

    /// Ends the open etcd-level transaction: if it changed anything it consumed revision
    /// `revision() + 1` (and `revision()` now returns it). Returns its events in order.
    pub fn end(&mut self) -> Vec<Event> {
        if self.changes.is_empty() {
            return Vec::new();
        }
        self.cur_rev += 1;
        mem::take(&mut self.changes)
    }

    /// Schedules a compaction at `rev` (etcd's Compact): `rev <=` compact revision ->
    /// Compacted, `rev >` [`WriteTxn::revision`] -> FutureRev. Takes effect at commit (from then
    /// on reads below `rev` fail); the returned job does the index and backend work and must be
    /// run after the commit (it fails with `CompactionNotCommitted` before).
    pub fn compact(&mut self, rev: i64) -> Result<CompactJob, MvccError> {
        let current = self.store.compact_revision().max(self.min_compact());
        if rev <= current {
            return Err(MvccError::Compacted);
        }
        if rev > self.cur_rev {
            return Err(MvccError::FutureRev);
        }
        self.pending_compact = Some(rev);
        self.buf
            .meta
            .push((META_SCHEDULED.to_string(), Some(rev.to_be_bytes().to_vec())));
        Ok(CompactJob {
            store: self.store.clone(),
            rev,
            generation: self.store.inner.generation.load(Ordering::Acquire),
        })
    }

    /// Sets a caller meta value in this batch. Keys starting with `mvcc/` are reserved.
    pub fn put_meta(&mut self, key: &str, value: &[u8]) {
        debug_assert!(!key.starts_with("mvcc/"), "reserved meta key {key}");
        self.buf.meta.push((key.to_string(), Some(value.to_vec())));
    }

    /// Removes a caller meta value in this batch.
    pub fn delete_meta(&mut self, key: &str) {
        debug_assert!(!key.starts_with("mvcc/"), "reserved meta key {key}");
        self.buf.meta.push((key.to_string(), None));
    }

    /// Reads a meta value as this batch would leave it.
    pub fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, MvccError> {
        if let Some((_, v)) = self.buf.meta.iter().rev().find(|(k, _)| k == key) {
            return Ok(v.clone());
        }
        let meta = self.snap.open_table(META_TABLE)?;
        let v = meta.get(key)?.map(|g| g.value().to_vec());
        Ok(v)
    }

    /// Commits the batch in one redb transaction, storing `applied_index`; `durable` selects
    /// `Durability::Immediate` (fsync) vs `Durability::None`. An etcd transaction still open is
    /// ended first (its events are dropped: call [`WriteTxn::end`] before). On error nothing of
    /// the batch is visible and the index is rolled back, except in two cases where the error
    /// comes after the batch took effect (it is then visible, and the store consistent with it):
    /// the `backend::after_commit` failpoint, and a durable commit that must first sync the
    /// directory after a defragmentation whose own sync failed, when that fails again (the batch
    /// is then not counted durable). Any error is a storage fault: stop the member.
    pub fn commit(mut self, applied_index: u64, durable: bool) -> Result<(), MvccError> {
        self.check_poisoned()?;
        if !self.changes.is_empty() {
            tracing::warn!("mvcc commit with an un-ended transaction; its events are dropped");
            self.end();
        }
        let inner = &self.store.inner;
        let mut added = 0u64;
        {
            let mut w = self.db.db.begin_write()?;
            w.set_durability(if durable {
                Durability::Immediate
            } else {
                Durability::None
            })?;
            if durable && inner.opts.quick_repair {
                w.set_quick_repair(true);
            }
            {
                let mut t = w.open_table(KEY_TABLE)?;
                let buf = &self.buf;
                for r in &buf.rows {
                    t.insert(&r.rev.to_bytes(), &buf.arena[r.start..r.end])?;
                    added += (r.end - r.start) as u64 + REV_BYTES as u64 + ROW_OVERHEAD;
                }
                let mut m = w.open_table(META_TABLE)?;
                for (k, v) in &buf.meta {
                    match v {
                        Some(v) => {
                            m.insert(k.as_str(), v.as_slice())?;
                        }
                        None => {
                            m.remove(k.as_str())?;
                        }
                    }
                }
                m.insert(META_APPLIED, &applied_index.to_be_bytes()[..])?;
            }
            // `return` here: the redb transaction is aborted (dropped) and so is the batch.
            io_fail_point!("backend::before_commit");
            w.commit()?;
        }
        // Published: from here on the batch is visible.
        inner.live_bytes.fetch_add(added, Ordering::Relaxed);
        inner.applied_index.store(applied_index, Ordering::Release);
        let durable_ok = if durable {
            self.store.sync_unsynced_rename()
        } else {
            Ok(())
        };
        if durable && durable_ok.is_ok() {
            inner
                .durable_applied_index
                .store(applied_index, Ordering::Release);
        }
        if let Some(c) = self.pending_compact {
            let mut idx = self.db.index.write();
            idx.compact_rev = c;
            inner.compact_rev.store(c, Ordering::Release);
        }
        inner.committed_rev.store(self.cur_rev, Ordering::Release);
        self.done = true;
        durable_ok?;
        after_commit_point()
    }

    fn rollback(&mut self) {
        let base = self.base_rev;
        let buf = &self.buf;
        let mut idx = self.db.index.write();
        for r in buf.rows.iter().rev() {
            if let Ok((key, _)) = codec::decode_key(&buf.arena[r.start..r.end]) {
                idx.tree.rollback_key(key, base);
            }
        }
        for key in &self.orphans {
            idx.tree.rollback_key(key, base);
        }
    }
}

impl Drop for WriteTxn<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.rollback();
        }
        let mut buf = mem::take(&mut self.buf);
        buf.rows.clear();
        buf.meta.clear();
        // Keep the arena's capacity for the next batch, unless a huge batch bloated it.
        if buf.arena.capacity() > 64 << 20 {
            buf.arena = Vec::new();
        } else {
            buf.arena.clear();
        }
        self.store.release_writer(buf);
    }
}

/// The index and backend work of a compaction (see the module docs). Cheap to clone around;
/// run it from any thread once the batch that scheduled it has committed.
#[derive(Clone, Debug)]
pub struct CompactJob {
    store: Store,
    rev: i64,
    /// [`Inner::generation`] when the job was made: a job of contents replaced since by a
    /// snapshot install has nothing left to do.
    generation: u64,
}

impl CompactJob {
    /// True if a snapshot install replaced the contents this job was made for.
    fn replaced(&self) -> bool {
        self.store.inner.generation.load(Ordering::Acquire) != self.generation
    }

    /// The compaction revision.
    pub fn revision(&self) -> i64 {
        self.rev
    }

    /// Runs the whole job (blocking; bounded lock holds and redb transactions inside).
    pub fn run(&self) -> Result<(), MvccError> {
        while !self.run_steps(usize::MAX)? {}
        Ok(())
    }

    /// Runs at most `max_batches` backend deletion batches; returns true when the compaction
    /// finished (the finished mark is committed). Resumable: call again to continue. A job made
    /// before a [`Store::install_snapshot`] returns true at once: the contents it was to compact
    /// are gone (the installed ones bring their own, through [`Store::take_pending_compaction`]).
    pub fn run_steps(&self, max_batches: usize) -> Result<bool, MvccError> {
        let inner = &self.store.inner;
        if self.replaced() {
            return Ok(true);
        }
        if self.store.compact_revision() < self.rev {
            return Err(MvccError::CompactionNotCommitted(self.rev));
        }
        let mut st = inner.compaction.lock();
        // An install holds the compaction lock: checked again under it.
        if st.finished >= self.rev || self.replaced() {
            return Ok(true);
        }
        let started = Instant::now();
        // Taken under the compaction lock: a defragmentation or an install (which hold it)
        // cannot swap it.
        let db = inner.db();
        // (1) Index.
        if st.index_done < self.rev {
            let mut from: Option<Box<[u8]>> = None;
            loop {
                let mut idx = db.index.write();
                from = idx.tree.compact_chunk(
                    self.rev,
                    from.as_deref(),
                    inner.opts.compaction_index_chunk.max(1),
                );
                drop(idx);
                if from.is_none() {
                    break;
                }
            }
            st.index_done = self.rev;
        }
        // (2) Backend rows <= rev no longer referenced by the index.
        let end = Revision::new(self.rev.saturating_add(1), 0).to_bytes();
        let mut next = match st.cursor {
            Some((target, next)) if target == self.rev => next,
            _ => [0u8; REV_BYTES],
        };
        let batch = inner.opts.compaction_batch.max(1);
        let mut batches = 0usize;
        loop {
            if batches == max_batches {
                st.cursor = Some((self.rev, next));
                return Ok(false);
            }
            batches += 1;
            let mut w = db.db.begin_write()?;
            w.set_durability(Durability::None)?;
            let mut removed_bytes = 0u64;
            let finished;
            {
                let mut t = w.open_table(KEY_TABLE)?;
                let mut doomed: Vec<[u8; REV_BYTES]> = Vec::new();
                let mut scanned = 0usize;
                let mut last = None;
                {
                    let idx = db.index.read();
                    for item in t.range::<&[u8; REV_BYTES]>(&next..&end)? {
                        let (k, v) = item?;
                        let kb = *k.value();
                        let rev = Revision::from_bytes(&kb);
                        let (key, _) = codec::decode_key(v.value())?;
                        let keep = idx.tree.get_key(key).is_some_and(|ki| ki.contains(rev));
                        if !keep {
                            doomed.push(kb);
                            removed_bytes +=
                                v.value().len() as u64 + REV_BYTES as u64 + ROW_OVERHEAD;
                        }
                        scanned += 1;
                        last = Some(rev);
                        if scanned == batch {
                            break;
                        }
                    }
                }
                for k in &doomed {
                    t.remove(k)?;
                }
                finished = scanned < batch;
                if let Some(l) = last {
                    next = Revision::new(l.main, l.sub + 1).to_bytes();
                }
                if finished {
                    let mut m = w.open_table(META_TABLE)?;
                    m.insert(META_FINISHED, &self.rev.to_be_bytes()[..])?;
                }
            }
            io_fail_point!("compaction::before_step");
            w.commit()?;
            inner.live_bytes.fetch_sub(
                removed_bytes.min(inner.live_bytes.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
            if finished {
                st.finished = self.rev;
                st.cursor = None;
            } else {
                st.cursor = Some((self.rev, next));
            }
            io_fail_point!("compaction::after_step");
            if finished {
                tracing::info!(
                    compact_revision = self.rev,
                    took_ms = started.elapsed().as_millis() as u64,
                    "finished scheduled compaction"
                );
                return Ok(true);
            }
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// Number of rows in the backend `key` table.
    pub fn backend_rows(store: &Store) -> Vec<Revision> {
        let db = store.inner.db();
        let r = db.db.begin_read().unwrap();
        let t = r.open_table(KEY_TABLE).unwrap();
        t.range::<&[u8; REV_BYTES]>(..)
            .unwrap()
            .map(|i| Revision::from_bytes(i.unwrap().0.value()))
            .collect()
    }

    pub fn collect(store: &Store, at: i64) -> Vec<(Vec<u8>, i64)> {
        let db = store.inner.db();
        let idx = db.index.read();
        let mut out = Vec::new();
        idx.tree
            .scan(KeyRange::new(b"\0", b"\0"), at, None, usize::MAX, |k, f| {
                out.push((k.to_vec(), f.modified.main))
            });
        out
    }
}
