//! Backend snapshots, for a member too far behind to catch up from the log (etcd sends it its
//! bolt db file): [`Store::export_snapshot`] writes a consistent copy of the store into a new
//! file, [`Store::install_snapshot`] replaces the store's contents with such a file.
//!
//! # Export
//! One redb read transaction is the snapshot: every row and every meta value (this crate's
//! marks, the applied index among them, and the caller's: leases, alarms, members) as of one
//! commit, copied by the defragmentation's copy routine into a new file that is committed
//! durably, compacted, closed cleanly (redb flushes it) and whose directory is fsynced. The
//! export takes no lock of the store: a redb read transaction never blocks the writer (pages
//! are copy-on-write), so write batches, compaction steps and reads go on during the copy; the
//! pages the snapshot reads are kept until it ends (the file may grow meanwhile by what is
//! written, as under any long [`ReadView`]). The revision and compact revision reported are
//! computed from the snapshot itself the way [`Store::open`] computes them, so the store
//! that installs the file reports the same ones.
//!
//! # Install
//! 1. Validate, without touching the store: the file opens read-only as a redb database that
//!    needs no repair, with this crate's two tables and format mark (else
//!    [`MvccError::BadSnapshot`]), then it is opened for real and every row is decoded into a
//!    new key index (a row this crate cannot read: `BadSnapshot` too). Writers go on meanwhile.
//! 2. Over a file ([`Store::open`]): fsync the snapshot file, pause writers and compaction jobs
//!    (as a defragmentation does), `backend::before_install_swap`, rename it over the database
//!    file (atomic: a crash leaves the old or the new database, both complete), switch the
//!    store to it with the new in-memory state under one lock, fsync the directory,
//!    `backend::after_install_swap`. The same steps as a defragmentation's swap.
//! 3. Over a caller's backend ([`Store::open_with_backend`]; no file to rename): the contents
//!    are replaced in one durable redb write transaction (all or nothing, also across a crash),
//!    which needs the database to itself as the in-place defragmentation does (new reads wait,
//!    open views are waited for up to 10 s); `backend::before_install_swap` before it,
//!    `backend::after_install_swap` after it.

use std::io::Read;

use super::*;

/// What [`Store::export_snapshot`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The applied index of the commit copied (`mvcc/applied_index`): the copy holds the effect
    /// of every entry up to it and of none after it.
    pub applied_index: u64,
    /// The store revision of that commit.
    pub revision: i64,
    /// Its compact revision (-1 if never compacted).
    pub compact_revision: i64,
    /// Size of the file in bytes.
    pub size: u64,
}

impl SnapshotInfo {
    /// The point one read transaction is at (size 0).
    fn of(txn: &ReadTransaction) -> Result<SnapshotInfo, MvccError> {
        let marks = Marks::read(txn)?;
        let keys = txn.open_table(KEY_TABLE)?;
        let newest = match keys.last()? {
            Some((k, _)) => Revision::from_bytes(k.value()).main,
            None => 1,
        };
        Ok(SnapshotInfo {
            applied_index: marks.applied,
            revision: stored_revision(newest, marks.scheduled),
            compact_revision: marks.scheduled,
            size: 0,
        })
    }
}

/// A snapshot exported to be streamed ([`Store::export_snapshot_stream`]): reads the exported
/// file from its start. The file no longer has a name (it was unlinked once complete), so its
/// space returns when this is dropped and nothing is left behind.
#[derive(Debug)]
pub struct SnapshotStream {
    info: SnapshotInfo,
    file: fs::File,
}

impl SnapshotStream {
    /// What the file holds, and its size (the number of bytes this reads).
    pub fn info(&self) -> SnapshotInfo {
        self.info
    }

    /// The open file (positioned where reading stopped).
    pub fn into_file(self) -> fs::File {
        self.file
    }
}

impl Read for SnapshotStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

/// A snapshot file opened and validated, not yet installed.
struct Candidate {
    db: Database,
    len: Arc<AtomicU64>,
}

/// Validates `file` as a store's database and rebuilds the in-memory state of its contents,
/// read-only (a file refused is left as it was), then opens it for the store; any failure is
/// [`MvccError::BadSnapshot`], and nothing of the store is touched.
fn open_snapshot(file: &Path, opts: &StoreOptions) -> Result<(Candidate, Loaded), MvccError> {
    let open = || -> Result<(Candidate, Loaded), MvccError> {
        let loaded = check_snapshot(file)?;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(file)
            .map_err(io_err)?;
        let (backend, len) = SizeTracked::new(FileBackend::new(f)?);
        let db = Database::builder()
            .set_cache_size(opts.cache_size)
            .create_with_backend(backend)?;
        Ok((Candidate { db, len }, loaded))
    };
    open().map_err(|e| MvccError::BadSnapshot {
        path: file.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Checks that `file` is a redb database with this crate's tables and format mark, whose every
/// row decodes, and returns the state it implies; read-only, unless it needs a repair.
fn check_snapshot(file: &Path) -> Result<Loaded, MvccError> {
    let db = match Database::builder().open_read_only(file) {
        Err(redb::DatabaseError::RepairAborted) => {
            // Not closed cleanly: redb repairs it (back to its last durable commit), as
            // `Store::open` repairs the store's own file. An install interrupted before its
            // rename leaves its snapshot file so (it had opened it for writing); an export cut
            // short has no durable commit with tables and is refused below.
            tracing::warn!(path = %file.display(), "snapshot file not closed cleanly: repairing it");
            drop(Database::builder().open(file)?);
            Database::builder().open_read_only(file)?
        }
        opened => opened?,
    };
    {
        let r = db.begin_read()?;
        let meta = r.open_table(META_TABLE)?;
        let mark = meta.get(META_FORMAT)?.map(|g| g.value().to_vec());
        match mark {
            None => {
                return Err(MvccError::Corrupt(
                    "no mvcc/format mark: not a Ballast backend".into(),
                ))
            }
            Some(mark) => check_format(&mark)?,
        }
    }
    Loaded::from_db(&db)
}

/// The in-memory state of installed contents, published under the `db` lock (with the
/// compaction lock held by the caller).
fn publish(inner: &Inner, state: LoadedState, compaction: &mut CompactionState) {
    inner.generation.fetch_add(1, Ordering::AcqRel);
    inner.committed_rev.store(state.revision, Ordering::Release);
    inner
        .compact_rev
        .store(state.compact_rev, Ordering::Release);
    inner.applied_index.store(state.applied, Ordering::Release);
    inner.live_bytes.store(state.live_bytes, Ordering::Relaxed);
    *compaction = state.compaction;
    *inner.pending_job.lock() = state.pending;
}

fn remove_partial(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a partial snapshot export");
        }
    }
}

impl Store {
    /// Writes a consistent copy of the store into a new file at `dest` (which must not exist:
    /// it is never overwritten) and returns what it holds. The copy is one commit of the store:
    /// the latest when the export starts (non-durable commits included), every row and meta
    /// value of it, so the applied index it reports is exactly the entries it reflects. The
    /// file is complete and fsynced (and its directory too) when this returns; it opens with
    /// [`Store::open`] or installs with [`Store::install_snapshot`] as is.
    ///
    /// Blocks nobody: the store's writer, compaction jobs and readers go on during the copy
    /// (one redb read transaction, see the module docs of `store::snapshot`); a
    /// defragmentation or install meanwhile leaves the export reading the contents it
    /// started on (over a caller's backend, where those two need the database to themselves,
    /// they wait for the export as for a [`ReadView`]). Needs free space for a copy of the live
    /// data. On error the partial file is removed.
    pub fn export_snapshot(&self, dest: &Path) -> Result<SnapshotInfo, MvccError> {
        let started = Instant::now();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dest)
            .map_err(io_err)?;
        let exported = self.export_into(file, dest);
        match &exported {
            Ok(info) => tracing::info!(
                path = %dest.display(),
                applied_index = info.applied_index,
                revision = info.revision,
                size = info.size,
                took_ms = started.elapsed().as_millis() as u64,
                "exported a backend snapshot"
            ),
            Err(_) => remove_partial(dest),
        }
        exported
    }

    fn export_into(&self, file: fs::File, dest: &Path) -> Result<SnapshotInfo, MvccError> {
        let db = self.inner.db();
        let src = db.db.begin_read()?;
        let info = SnapshotInfo::of(&src)?;
        let copy = copy_into_file(&src, file, &self.inner.opts)?;
        drop(src);
        drop(db);
        // A clean close: redb flushes (fsyncs) the file and marks it closed, so it opens without
        // a repair.
        copy.db.close()?;
        sync_parent_dir(dest).map_err(io_err)?;
        let size = fs::metadata(dest).map_err(io_err)?.len();
        Ok(SnapshotInfo { size, ..info })
    }

    /// [`Store::export_snapshot`] for streaming (what a leader sends a member): exports into a
    /// new file `export-<pid>-<n>.snap.tmp` in `tmp_dir` (the member's `snap` directory will
    /// do), opens it, unlinks it, and returns it to be read from the start; the space is given
    /// back when the stream is dropped. A crash before the unlink leaves the file behind, for
    /// the caller to remove at startup.
    pub fn export_snapshot_stream(&self, tmp_dir: &Path) -> Result<SnapshotStream, MvccError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let tmp = tmp_dir.join(format!(
            "export-{}-{}.snap.tmp",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let info = self.export_snapshot(&tmp)?;
        let opened = fs::File::open(&tmp).map_err(io_err);
        let unlinked = fs::remove_file(&tmp).map_err(io_err);
        let file = opened?;
        unlinked?;
        Ok(SnapshotStream { info, file })
    }

    /// Replaces the store's contents with those of `file` (a [`Store::export_snapshot`] of
    /// another member, received whole and fsynced), as etcd installs a snapshot's db file.
    ///
    /// - Validation first (see the module docs of `store::snapshot`): anything but a complete
    ///   database of this crate's format is refused with [`MvccError::BadSnapshot`] and the store
    ///   is left exactly as it was (it goes on serving and taking writes).
    /// - Over a file, `file` is renamed over the database file: it must be on the same file
    ///   system (the member's `snap` directory, next to the database) and is consumed. A crash
    ///   at any point leaves the old database (and `file`) or the new one, each complete. Over a
    ///   caller's backend, `file` is copied in, in one durable redb transaction, and left where
    ///   it is.
    /// - Afterwards, revision, compact revision, applied index (durable too, once the rename is
    ///   durable), key index, size and pending compaction are those of the new contents; a
    ///   physical compaction the file had not finished is handed out by
    ///   [`Store::take_pending_compaction`], and [`CompactJob`]s of the old contents have nothing
    ///   left to do.
    /// - [`ReadView`]s opened before keep working, on the old contents (their revision, index
    ///   and redb snapshot, consistently); over a file they keep the old file alive until
    ///   dropped, over a caller's backend the install waits for them (up to 10 s, then fails,
    ///   changing nothing).
    /// - Pauses writers (and compaction jobs, [`Store::hash`], defragmentation) for the swap
    ///   only, not for the validation; never call it on a thread holding a [`WriteTxn`].
    /// - Errors after the rename (the directory fsync, `backend::after_install_swap`) are
    ///   returned with the store already on the new contents, as for a defragmentation: a
    ///   storage fault to stop the member on.
    /// - Whether the file is newer than the store is the caller's decision (raft's): an older
    ///   one is installed all the same.
    pub fn install_snapshot(&self, file: &Path) -> Result<(), MvccError> {
        let started = Instant::now();
        let (candidate, loaded) = open_snapshot(file, &self.inner.opts)?;
        let from = (self.applied_index(), self.current_revision());
        let Loaded { index, state, .. } = loaded;
        let (applied, revision, keys) = (state.applied, state.revision, index.tree.len());
        match &self.inner.location {
            Location::File(path) => self.install_file(path, file, candidate, index, state),
            Location::Custom(_) => self.install_in_place(candidate, index, state),
        }?;
        tracing::info!(
            location = ?self.inner.location,
            snapshot = %file.display(),
            from_applied_index = from.0,
            from_revision = from.1,
            applied_index = applied,
            revision,
            keys,
            took_ms = started.elapsed().as_millis() as u64,
            "installed a backend snapshot"
        );
        Ok(())
    }

    fn install_file(
        &self,
        path: &Path,
        file: &Path,
        new: Candidate,
        index: IndexState,
        state: LoadedState,
    ) -> Result<(), MvccError> {
        // What the rename makes the database must be on disk first.
        fs::File::open(file)
            .and_then(|f| f.sync_all())
            .map_err(io_err)?;
        let mut compaction = self.inner.compaction.lock();
        let _writer = self.hold_writer();
        rename_into_place(Swap::Install, file, path)?;
        let new = Arc::new(DbHandle {
            db: new.db,
            len: new.len,
            index: Arc::new(RwLock::new(index)),
        });
        self.switch_to(Swap::Install, path, new, |inner| {
            publish(inner, state, &mut compaction)
        })
    }

    fn install_in_place(
        &self,
        src: Candidate,
        index: IndexState,
        state: LoadedState,
    ) -> Result<(), MvccError> {
        let mut compaction = self.inner.compaction.lock();
        let _writer = self.hold_writer();
        let mut guard = self.inner.db.write();
        let handle = exclusive(&mut guard)?;
        swap_point(Swap::Install, false)?;
        let txn = src.db.begin_read()?;
        copy_contents(
            &txn,
            &handle.db,
            u64::MAX,
            true,
            self.inner.opts.quick_repair,
        )?;
        handle.index = Arc::new(RwLock::new(index));
        let applied = state.applied;
        publish(&self.inner, state, &mut compaction);
        // The copy's commit was durable.
        self.inner
            .durable_applied_index
            .store(applied, Ordering::Release);
        drop(guard);
        swap_point(Swap::Install, true)
    }
}
