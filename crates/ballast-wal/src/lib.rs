//! `ballast-wal`: Ballast's segmented write-ahead log for the Raft log.
//!
//! # What it owns
//!
//! One directory holding the durable Raft log of one member: an ordered sequence of typed, opaque
//! [`Record`]s (raft entries, hard states, snapshot markers) split over segment files. The WAL knows
//! nothing of Raft or protobuf: the server encodes `Entry`/`HardState`/snapshot metadata into
//! `Record::data` and interprets replayed records (later entries at an index replace earlier ones,
//! the last `HardState` wins, the last `Snapshot` marker wins). The WAL only stores, checksums,
//! orders, syncs, repairs torn tails and purges.
//!
//! # Usage
//!
//! [`Wal::open`] locks the directory and replays every record. Per raft `Ready`: [`Wal::append`]
//! (buffers, no I/O), then [`Wal::sync`] once (one `write` + one `fdatasync` — group commit).
//! After a snapshot at index `i` is durably applied by the backend, [`Wal::purge_before`]`(i)`.
//! After any error from `append`/`sync`/`purge_before` the member stops (fail-stop) and restarts
//! from what is on disk by reopening.
//!
//! # On-disk format (version 1)
//!
//! Directory contents:
//! - `LOCK` — an empty file held with an exclusive `flock` ([`std::fs::File::try_lock`]) while a
//!   [`Wal`] is open; a second open (any process, or the same one) fails with [`WalError::Locked`].
//! - `{seq:016x}-{first_index:016x}.wal` — segments. `seq` starts at 0 and grows by exactly 1 per
//!   segment; the segments present must have consecutive `seq`s (only a prefix is ever purged), else
//!   open fails with [`WalError::MissingSegment`]. `first_index` is a hint for operators (the index of
//!   the first entry the segment was expected to receive); nothing depends on it.
//! - `*.wal.tmp` — a segment being created; deleted on open (it never held acknowledged data).
//! - Any other file is ignored.
//!
//! A segment (all integers little-endian):
//! ```text
//! segment header (16 bytes): magic "BWAL" | version u32 = 1 | seq u64 (must match the file name)
//! frame*                    : each frame starts at a multiple of 8 bytes
//! zeros                     : preallocated, never-written space (only in the last segment)
//!
//! frame:  len_word u32 | crc u32 | body (len bytes) | 0-7 zero bytes of padding to a multiple of 8
//!   len_word: bits 0..=30 = len = body length (17 + data length, data <= 256 MiB)
//!             bit 31      = SYNC: the last frame of a write that was followed by fdatasync
//!   crc:      CRC32C (Castagnoli) of body followed by the 4 bytes of len_word
//!   body:     kind u8 | index u64 | term u64 | data
//!   kind:     bits 0..=6 = RecordKind (1 Entry, 2 HardState, 3 Snapshot)
//!             bit 7      = COPY: a HardState/Snapshot re-written at the start of a segment
//! ```
//! A `len_word` of 0 means "end of data": the zero-filled preallocated space reads as the end.
//!
//! New segments are created whole: header, then copies (COPY flag) of the latest `Snapshot` and the
//! latest `HardState` seen so far (in that order), then the records that caused the rotation, are
//! written to `*.wal.tmp` preallocated to `segment_size` with `fallocate`, fdatasync'ed, renamed, and
//! the directory is fsync'ed. Before that, the previous segment is truncated to its exact end and
//! fdatasync'ed. So a non-last segment ends exactly at its last frame, and every segment on disk
//! starts with a valid header and its copies.
//!
//! # Invariants
//!
//! - A record is acknowledged (durable) only once [`Wal::sync`] has returned `Ok`. Records appended
//!   but not synced may or may not survive a crash; a dropped [`Wal`] writes nothing.
//! - One sync = one `write` of the whole batch + one `fdatasync` (plus, on rotation, the truncation
//!   and fdatasync of the old segment and the creation of the new one).
//! - The latest `HardState` and `Snapshot` are always in the current segment (as a copy at its start
//!   or as a later record), so purging any prefix of older segments never loses them.
//! - Replay returns the records in append order. A COPY record is returned only when it differs from
//!   the last returned record of its kind — i.e. only when the segments holding the original were
//!   purged — so a consumer sees each logical record once, and after a purge the replay starts with
//!   the copies of the latest `Snapshot`/`HardState`.
//! - After any write or fsync error the WAL is poisoned: every later call returns
//!   [`WalError::Poisoned`]. After a failed fsync the page cache may hold data the disk does not, so
//!   the only safe thing is to stop and recover from disk by reopening (restarting the member).
//!
//! # Repair (what [`Wal::open`] fixes, and what it refuses)
//!
//! Only the end of the **last** segment is ever repaired, and only when the damage has the shape a
//! crash leaves. The crash model: every sync flags its last frame (SYNC); a write only starts after
//! the previous one's fdatasync returned, so a crash can only tear the final write; a torn write is
//! torn at 512-byte sector granularity (in file offsets): each sector it covers holds either the
//! new bytes or the old ones, and the old bytes at and after the end of durable data are zeros
//! (segments are zero-filled before use). The part of the first sector before the write's start was
//! written by an earlier durable write, so a sector "reads as never written" when its part at and
//! after the damaged frame (up to the sector's end or the end of the file) is all zeros.
//!
//! At the first invalid frame of the last segment (partial frame, bad CRC, bad kind, non-zero
//! padding, zero length followed by non-zero bytes) the rest of the segment is scanned for valid
//! frames:
//! - two or more SYNC-flagged frames after it → the damaged frame was durable before a later
//!   completed write → corrupt;
//! - exactly one → torn only if a sector that reads as never written lies between the damaged
//!   frame and the next valid one (a torn write whose later sectors reached the disk before an
//!   earlier one) and the damaged frame shows no sign of having been written whole (below);
//!   otherwise corrupt;
//! - none → the damaged frame is the tail. It is a torn write (truncated away,
//!   `repaired_tail = true`) only if it is cut short by the end of the file (partial header, or a
//!   length running past the end), or a sector holding its header/body reads as never written, or
//!   its length word is zero with the rest of that sector zero too — and it shows no sign of
//!   having been written whole. A non-zero out-of-range length is corrupt.
//!
//! Signs that a damaged frame was written whole (then it is corrupt, never "torn"): every sector
//! of its header/body is written; its length word is one bit away from a valid frame (even if the
//! damaged length runs past the end of the file); its CRC matches (only the kind or the padding
//! is wrong) or is one bit off; or flipping one bit outside the sectors that read as never written
//! makes the CRC match — the zeros were the record's own data plus the never-written space after
//! it (found in one pass thanks to CRC32C's linearity; bodies up to 16 KiB, where a torn frame
//! matches by chance with odds below 2^-15). An acknowledged record is never dropped as a "torn
//! tail" because of a flipped bit.
//!
//! A zero length word followed by nothing but zeros is the normal end of data.
//!
//! A last segment that holds nothing but a (partial) header followed by zeros — a segment whose
//! creation was interrupted, which the tmp-and-rename protocol should prevent — is deleted when an
//! earlier segment exists (or it is segment 0), also reported as `repaired_tail`.
//!
//! Any other damage — in a non-last segment, in a segment header, zero bytes in the middle of a
//! non-last segment, a gap in the sequence — is [`WalError::Corrupt`] / [`WalError::MissingSegment`].
//! `Corrupt`'s message names the segment and offset and points to `docs/recovery.md` (what an
//! operator does: never delete or truncate segment files to get a member started).
//!
//! Known limits: the last record (or one in the final write) is dropped as torn when damage reads
//! exactly like a crash: whole sectors of it zeroed; or a sector of it reading as never written
//! (its own zeros) together with damage of more than one bit, or with any damage in a body over
//! 16 KiB; or multi-bit damage to its length word making it run past the end of the file. A file
//! system that tears writes below 512-byte sectors, or that shows stale non-zero data in
//! never-written space, breaks the crash model (such a crash is then reported as corruption: the
//! member refuses to start rather than lose data).
//!
//! # The file layer, the simulated disk and failpoints
//!
//! Every file-system operation goes through [`vfs::WalFs`] / [`vfs::WalFile`]: [`Wal::open`] uses
//! [`StdFs`] (std, `fallocate`, `fdatasync`, `flock`: the same system calls as before the layer
//! existed), [`Wal::open_with`] takes any other layer. The layer is called per sync, per segment
//! and at open, never per record.
//!
//! `sim::SimDisk` (tests, and the `sim` cargo feature for other crates' tests; never in a normal
//! build) is a layer that loses power: it keeps written-but-unsynced data apart per 512-byte
//! sector, makes directory operations durable only through a directory fsync (an ordered journal:
//! a crash keeps a prefix of the pending ones), can run out of space (ENOSPC), can "kill the
//! process" after N operations, can fail one operation with an errno, and `crash(seed)` returns the
//! disk image a power loss could leave. `kill -9` keeps the page cache and cannot prove where the
//! fsyncs are; this can. `tests/power_loss.rs` runs 10 000 seeded crash scenarios with it.
//!
//! Named failpoints (the `fail` crate, compiled in only with the `failpoints` feature; see
//! docs/failpoints.md) sit before and after each durable step: `wal::before_append`,
//! `wal::after_append`, `wal::before_write`, `wal::before_fsync`, `wal::after_fsync`,
//! `wal::before_segment_cut`, `wal::after_segment_cut` (around tmp file, rename and directory
//! fsync), `wal::before_purge`, `wal::after_purge`. `return(ERRNO)` fails the step with that errno
//! (EIO when omitted) and the WAL treats it like the real error: a failed write/fsync/cut poisons
//! it. A panic inside `sync` or `purge_before` leaves it poisoned too.
//!
//! Tests: `cargo test --release -p ballast-wal` (unit, format, repair, model, kill -9 crash);
//! `--features sim --test power_loss` (power loss, bit flips); `--features failpoints --test
//! failpoints`.
//!
//! # Never
//!
//! - Never skip a bad record and continue; never repair anything but the tail of the last segment.
//! - Never truncate a complete record (every sector of it written) as a torn tail: a CRC mismatch
//!   in written data is corruption and open refuses.
//! - Never acknowledge (return `Ok` from `sync`) before `fdatasync` returned; never retry an fsync.
//! - Never keep using a WAL after a failed write, fsync or segment cut (it is poisoned); never
//!   treat ENOSPC as anything but a storage fault.
//! - Never delete the current segment, a non-prefix of the segments, or a segment holding an entry
//!   at or above the purge index.
//! - Never interpret `Record::data`.

mod failpoint;
mod format;
mod segment;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod vfs;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use format::MAX_RECORD_DATA;
use format::{BadTail, FrameMark, HeaderCheck, Parsed, COPY_FLAG, SEGMENT_HEADER_LEN};
pub use vfs::{StdFs, WalFile, WalFs, WalLock};

/// What a [`Record`] is. Stored as one byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    /// A raft log entry: `index`/`term` of the entry, `data` = the encoded raft `Entry`.
    Entry = 1,
    /// `index` = commit, `term` = term, `data` = the encoded raft `HardState`.
    HardState = 2,
    /// Marker that a raft snapshot at (`index`, `term`) exists; `data` = encoded snapshot metadata.
    Snapshot = 3,
}

impl RecordKind {
    pub(crate) fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Entry),
            2 => Some(Self::HardState),
            3 => Some(Self::Snapshot),
            _ => None,
        }
    }
}

/// One opaque, typed log record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub kind: RecordKind,
    pub index: u64,
    pub term: u64,
    pub data: Vec<u8>,
}

/// Tuning for a [`Wal`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalOptions {
    /// Target size of a segment (default 64 MiB). A segment rolls over when the next record would
    /// take it past this size; a single record larger than this gets a segment of its own.
    pub segment_size: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            segment_size: 64 << 20,
        }
    }
}

/// The result of replaying the log at [`Wal::open`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replay {
    /// Every record, in append order (see the crate docs for how segment-start copies appear).
    pub records: Vec<Record>,
    /// A torn tail of the last segment (or an unfinished last segment) was removed.
    pub repaired_tail: bool,
}

#[derive(thiserror::Error, Debug)]
pub enum WalError {
    #[error("wal i/o error: {0}")]
    Io(#[from] io::Error),
    /// Data that had been synced changed on disk (not the remains of a crash): the member must
    /// not start on this log. See docs/recovery.md.
    #[error(
        "wal segment {} is corrupt at offset {offset}: data that was synced to disk has changed \
         (this is not a torn write from a crash); refusing to start. Do not delete or truncate \
         wal files; see docs/recovery.md",
        segment.display()
    )]
    Corrupt { segment: PathBuf, offset: u64 },
    #[error(
        "wal is poisoned by an earlier write or fsync failure; reopen it (restart the member)"
    )]
    Poisoned,
    #[error("wal record data of {0} bytes exceeds the maximum of {MAX_RECORD_DATA} bytes")]
    RecordTooLarge(usize),
    #[error("wal directory {} is already open (locked by another process or Wal)", .0.display())]
    Locked(PathBuf),
    #[error("wal segment missing: expected sequence {expected:016x} but found {}", found.display())]
    MissingSegment { expected: u64, found: PathBuf },
}

/// A durable segment (on disk under its final name).
#[derive(Debug)]
struct Segment {
    seq: u64,
    path: PathBuf,
    /// Highest `Entry` index in the segment (synced part), if it has any entry.
    max_entry_index: Option<u64>,
}

/// Frames waiting for the next [`Wal::sync`], destined for one segment.
#[derive(Debug)]
struct Chunk {
    /// `None`: the current segment file. `Some`: a segment to create (`seq`, `first_index`).
    new_segment: Option<(u64, u64)>,
    /// File offset at which `buf` will be written.
    start: u64,
    buf: Vec<u8>,
    /// The last frame in `buf`, flagged SYNC when written.
    last_frame: Option<FrameMark>,
    /// The segment holds (or will hold) at least one non-copy record.
    has_user_records: bool,
    max_entry_index: Option<u64>,
}

impl Chunk {
    fn end(&self) -> u64 {
        self.start + self.buf.len() as u64
    }
}

/// Capacity of the write buffer kept between syncs; a larger one (after a huge batch) is released.
const RETAINED_BUF_CAPACITY: usize = 4 << 20;

/// An open write-ahead log. See the crate docs.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    opts: WalOptions,
    /// The file layer (the real file system unless opened with [`Wal::open_with`]).
    fs: Arc<dyn WalFs>,
    /// Holds the directory lock for as long as the `Wal` lives.
    _lock: Box<dyn WalLock>,
    /// Durable segments, oldest first; the last one is the current segment.
    segments: Vec<Segment>,
    /// The current segment, positioned at its end of data.
    file: Box<dyn WalFile>,
    /// Pending frames for the current segment.
    head: Chunk,
    /// Pending frames for segments to create (non-empty only when appends crossed `segment_size`).
    rotations: Vec<Chunk>,
    next_seq: u64,
    last_entry_index: u64,
    latest_hard_state: Option<Record>,
    latest_snapshot: Option<Record>,
    poisoned: bool,
}

/// What replaying one segment produced.
struct SegmentReplay {
    max_entry_index: Option<u64>,
    has_user_records: bool,
    /// End of valid data.
    valid_end: u64,
    /// The segment has a torn tail starting at `valid_end`.
    torn: bool,
}

/// Replay state carried across segments.
#[derive(Default)]
struct ReplayState {
    records: Vec<Record>,
    last_entry_index: u64,
    latest_hard_state: Option<Record>,
    latest_snapshot: Option<Record>,
    /// The segment being replayed holds a HardState / Snapshot frame (copy or not).
    segment_has_hard_state: bool,
    segment_has_snapshot: bool,
}

impl ReplayState {
    fn push(&mut self, f: &format::Frame<'_>) {
        let rec = Record {
            kind: f.kind,
            index: f.index,
            term: f.term,
            data: f.data.to_vec(),
        };
        let latest = match f.kind {
            RecordKind::Entry => {
                self.last_entry_index = f.index;
                self.records.push(rec);
                return;
            }
            RecordKind::HardState => &mut self.latest_hard_state,
            RecordKind::Snapshot => &mut self.latest_snapshot,
        };
        if f.copy && latest.as_ref() == Some(&rec) {
            return; // a segment-start copy of a record already returned
        }
        *latest = Some(rec.clone());
        self.records.push(rec);
    }

    /// Replays one segment's bytes. `last`: it is the last segment (its tail may be torn).
    fn segment(&mut self, path: &Path, data: &[u8], last: bool) -> Result<SegmentReplay, WalError> {
        let corrupt = |offset: usize| WalError::Corrupt {
            segment: path.to_path_buf(),
            offset: offset as u64,
        };
        let mut out = SegmentReplay {
            max_entry_index: None,
            has_user_records: false,
            valid_end: 0,
            torn: false,
        };
        self.segment_has_hard_state = false;
        self.segment_has_snapshot = false;
        let mut off = SEGMENT_HEADER_LEN;
        loop {
            match format::parse_at(data, off) {
                Parsed::Frame(f) => {
                    match f.kind {
                        RecordKind::Entry => {
                            out.max_entry_index =
                                Some(out.max_entry_index.map_or(f.index, |m| m.max(f.index)));
                        }
                        RecordKind::HardState => self.segment_has_hard_state = true,
                        RecordKind::Snapshot => self.segment_has_snapshot = true,
                    }
                    out.has_user_records |= !f.copy;
                    self.push(&f);
                    off = f.next;
                }
                // Non-last segments are truncated to their exact end at rotation.
                Parsed::End if last || off == data.len() => break,
                Parsed::End => return Err(corrupt(off)),
                Parsed::Bad if !last => return Err(corrupt(off)),
                Parsed::Bad => match format::classify_bad(data, off) {
                    BadTail::Torn => {
                        out.torn = true;
                        break;
                    }
                    BadTail::Corrupt => return Err(corrupt(off)),
                },
            }
        }
        out.valid_end = off as u64;
        Ok(out)
    }
}

/// Starts a new segment in `buf`: the header, then copies of the latest snapshot marker and hard
/// state. Returns the mark of the last frame written, if any.
fn start_segment(
    buf: &mut Vec<u8>,
    seq: u64,
    snapshot: Option<&Record>,
    hard_state: Option<&Record>,
) -> Option<FrameMark> {
    format::encode_segment_header(buf, seq);
    let mut last = None;
    for r in [snapshot, hard_state].into_iter().flatten() {
        last = Some(format::encode_frame(
            buf,
            r.kind as u8 | COPY_FLAG,
            r.index,
            r.term,
            &r.data,
        ));
    }
    last
}

impl Wal {
    /// Opens (creating the directory and first segment if empty) and reads every record in order.
    ///
    /// A torn tail at the end of the last segment is truncated away and reported in
    /// `repaired_tail`; corruption anywhere else is [`WalError::Corrupt`] (see the crate docs).
    pub fn open(dir: &Path, opts: WalOptions) -> Result<(Wal, Replay), WalError> {
        Self::open_with(dir, opts, Arc::new(StdFs))
    }

    /// [`Wal::open`] over another file layer (e.g. a simulated disk in tests; see [`vfs`]).
    pub fn open_with(
        dir: &Path,
        opts: WalOptions,
        fs: Arc<dyn WalFs>,
    ) -> Result<(Wal, Replay), WalError> {
        fs.create_dir_all(dir)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs.sync_dir(parent)?;
        }
        let lock = match fs.lock(&dir.join(segment::LOCK_FILE)) {
            Ok(lock) => lock,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(WalError::Locked(dir.to_path_buf()))
            }
            Err(e) => return Err(e.into()),
        };

        let listing = segment::list(&*fs, dir)?;
        if !listing.temporaries.is_empty() {
            for tmp in &listing.temporaries {
                tracing::info!(file = %tmp.display(), "removing unfinished segment file");
                fs.remove_file(tmp)?;
            }
            fs.sync_dir(dir)?;
        }
        let mut listed = listing.segments;
        for pair in listed.windows(2) {
            let expected = pair[0].0.wrapping_add(1);
            if pair[1].0 != expected {
                return Err(WalError::MissingSegment {
                    expected,
                    found: pair[1].1.clone(),
                });
            }
        }

        let mut repaired_tail = false;
        // The first sequence number to use if no segment is left.
        let mut next_seq = 0;
        // A last segment whose creation never finished holds no record: remove it, so the one
        // before it is the last (the tmp + rename protocol should prevent this; be lenient anyway).
        // Not when it is the only segment left after a purge: its copies of the latest hard state
        // and snapshot are gone, and that is corruption.
        let mut last_data = None;
        if let Some((seq, path)) = listed.last() {
            let data = fs.read(path)?;
            if format::check_segment_header(&data, *seq) == HeaderCheck::Unfinished
                && (listed.len() > 1 || *seq == 0)
            {
                tracing::warn!(segment = %path.display(), "removing segment whose creation never finished");
                fs.remove_file(path)?;
                fs.sync_dir(dir)?;
                repaired_tail = true;
                next_seq = *seq;
                listed.pop();
            } else {
                last_data = Some(data);
            }
        }

        let mut state = ReplayState::default();
        let mut segments: Vec<Segment> = Vec::with_capacity(listed.len());
        // (valid_end, torn, has_user_records) of the last segment.
        let mut tail = None;
        let count = listed.len();
        for (i, (seq, path)) in listed.into_iter().enumerate() {
            let last = i + 1 == count;
            let cached = if last { last_data.take() } else { None };
            let data = match cached {
                Some(data) => data,
                None => fs.read(&path)?,
            };
            if format::check_segment_header(&data, seq) != HeaderCheck::Valid {
                return Err(WalError::Corrupt {
                    segment: path,
                    offset: 0,
                });
            }
            let r = state.segment(&path, &data, last)?;
            if r.torn {
                tracing::warn!(
                    segment = %path.display(),
                    offset = r.valid_end,
                    discarded_bytes = data.len() as u64 - r.valid_end,
                    "truncating the torn tail of the last wal segment"
                );
                repaired_tail = true;
            }
            tail = Some((r.valid_end, r.torn, r.has_user_records));
            segments.push(Segment {
                seq,
                path,
                max_entry_index: r.max_entry_index,
            });
            next_seq = seq + 1;
        }

        let mut head = Chunk {
            new_segment: None,
            start: 0,
            buf: Vec::new(),
            last_frame: None,
            has_user_records: false,
            max_entry_index: None,
        };
        let file = match (tail, segments.last()) {
            (Some((valid_end, torn, has_user_records)), Some(current)) => {
                let mut file = fs.open_file(&current.path)?;
                let len_before = file.size()?;
                if torn {
                    // Drop the torn bytes; preallocate() below zero-fills the space again.
                    file.set_len(valid_end)?;
                }
                file.preallocate(opts.segment_size)?;
                if torn || file.size()? != len_before {
                    file.sync_data()?;
                }
                file.seek(valid_end)?;
                head.start = valid_end;
                head.has_user_records = has_user_records;
                file
            }
            _ => {
                let mut buf = Vec::new();
                start_segment(
                    &mut buf,
                    next_seq,
                    state.latest_snapshot.as_ref(),
                    state.latest_hard_state.as_ref(),
                );
                let first_index = state.last_entry_index + 1;
                let (file, path) =
                    segment::create(&*fs, dir, next_seq, first_index, &buf, opts.segment_size)?;
                segments.push(Segment {
                    seq: next_seq,
                    path,
                    max_entry_index: None,
                });
                next_seq += 1;
                head.start = buf.len() as u64;
                file
            }
        };
        tracing::debug!(
            dir = %dir.display(),
            segments = segments.len(),
            records = state.records.len(),
            repaired_tail,
            "opened wal"
        );

        // The current segment must hold the latest snapshot marker and hard state (as copies at its
        // start or later records) so purging older segments cannot lose them. Segments created by
        // this crate always do; if a filesystem lost them anyway, write them again.
        let missing: Vec<&Record> = [
            (&state.latest_snapshot, state.segment_has_snapshot),
            (&state.latest_hard_state, state.segment_has_hard_state),
        ]
        .into_iter()
        .filter(|(_, present)| !present)
        .filter_map(|(latest, _)| latest.as_ref())
        .collect();
        let restore_copies = tail.is_some() && !missing.is_empty();
        if restore_copies {
            tracing::warn!(dir = %dir.display(), "current wal segment lacks the latest hard state/snapshot; re-writing them");
            for r in missing {
                head.last_frame = Some(format::encode_frame(
                    &mut head.buf,
                    r.kind as u8 | COPY_FLAG,
                    r.index,
                    r.term,
                    &r.data,
                ));
            }
        }

        let mut wal = Wal {
            dir: dir.to_path_buf(),
            opts,
            fs,
            _lock: lock,
            segments,
            file,
            head,
            rotations: Vec::new(),
            next_seq,
            last_entry_index: state.last_entry_index,
            latest_hard_state: state.latest_hard_state,
            latest_snapshot: state.latest_snapshot,
            poisoned: false,
        };
        if restore_copies {
            wal.write_pending()?;
        }
        let replay = Replay {
            records: state.records,
            repaired_tail,
        };
        Ok((wal, replay))
    }

    /// Buffers records (no I/O; nothing is durable until [`Wal::sync`] returns `Ok`).
    ///
    /// Rolls to a new segment when the current one would exceed `segment_size`; every new segment
    /// starts with copies of the latest `Snapshot` and `HardState` appended so far. Either all of
    /// `records` are buffered or, on error, none.
    pub fn append(&mut self, records: &[Record]) -> Result<(), WalError> {
        if self.poisoned {
            return Err(WalError::Poisoned);
        }
        if let Some(r) = records.iter().find(|r| r.data.len() > MAX_RECORD_DATA) {
            return Err(WalError::RecordTooLarge(r.data.len()));
        }
        self.step(failpoint::BEFORE_APPEND)?;
        for r in records {
            let frame_len = format::frame_len(r.data.len()) as u64;
            let tail = self.tail();
            if tail.has_user_records && tail.end() + frame_len > self.opts.segment_size {
                let first_index = match r.kind {
                    RecordKind::Entry => r.index,
                    _ => self.last_entry_index + 1,
                };
                self.roll(first_index);
            }
            let tail = match self.rotations.last_mut() {
                Some(c) => c,
                None => &mut self.head,
            };
            tail.last_frame = Some(format::encode_frame(
                &mut tail.buf,
                r.kind as u8,
                r.index,
                r.term,
                &r.data,
            ));
            tail.has_user_records = true;
            match r.kind {
                RecordKind::Entry => {
                    tail.max_entry_index =
                        Some(tail.max_entry_index.map_or(r.index, |m| m.max(r.index)));
                    self.last_entry_index = r.index;
                }
                RecordKind::HardState => self.latest_hard_state = Some(r.clone()),
                RecordKind::Snapshot => self.latest_snapshot = Some(r.clone()),
            }
        }
        self.step(failpoint::AFTER_APPEND)
    }

    /// Evaluates a failpoint outside of I/O; an injected error poisons the WAL like an I/O error.
    #[inline]
    fn step(&mut self, name: &str) -> Result<(), WalError> {
        failpoint::check(name).map_err(|e| {
            self.poisoned = true;
            tracing::error!(dir = %self.dir.display(), error = %e, failpoint = name, "wal step failed; wal is poisoned");
            WalError::Io(e)
        })
    }

    /// The chunk that receives the next appended frame.
    fn tail(&self) -> &Chunk {
        self.rotations.last().unwrap_or(&self.head)
    }

    /// Starts a pending new segment (created at the next sync).
    fn roll(&mut self, first_index: u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut buf = Vec::new();
        let last_frame = start_segment(
            &mut buf,
            seq,
            self.latest_snapshot.as_ref(),
            self.latest_hard_state.as_ref(),
        );
        self.rotations.push(Chunk {
            new_segment: Some((seq, first_index)),
            start: 0,
            buf,
            last_frame,
            has_user_records: false,
            max_entry_index: None,
        });
    }

    /// Writes the buffered records and makes them durable with one fdatasync (group commit).
    ///
    /// On any write/fsync error the WAL is poisoned: this call returns the cause
    /// ([`WalError::Io`]), every later call [`WalError::Poisoned`].
    pub fn sync(&mut self) -> Result<(), WalError> {
        if self.poisoned {
            return Err(WalError::Poisoned);
        }
        // Poisoned until the write completes, so a panic inside it (an unwound failpoint or a
        // broken invariant) leaves a WAL that refuses further use instead of an inconsistent one.
        self.poisoned = true;
        let result = self.write_pending();
        self.poisoned = result.is_err();
        if let Err(e) = result {
            // The caller reports it (the member's one fault line); later calls get `Poisoned`.
            return Err(WalError::Io(e));
        }
        Ok(())
    }

    fn write_pending(&mut self) -> io::Result<()> {
        let rotations = std::mem::take(&mut self.rotations);
        let head = &mut self.head;
        if let Some(mark) = head.last_frame.take() {
            format::mark_synced(&mut head.buf, mark);
        }
        if !head.buf.is_empty() || !rotations.is_empty() {
            failpoint::check(failpoint::BEFORE_WRITE)?;
        }
        if !head.buf.is_empty() {
            self.file.write_all(&head.buf)?;
        }
        if !rotations.is_empty() {
            // A non-last segment ends exactly at its last frame.
            self.file.set_len(head.end())?;
        }
        if !head.buf.is_empty() || !rotations.is_empty() {
            failpoint::check(failpoint::BEFORE_FSYNC)?;
            self.file.sync_data()?;
            failpoint::check(failpoint::AFTER_FSYNC)?;
        }
        if let (Some(m), Some(seg)) = (head.max_entry_index.take(), self.segments.last_mut()) {
            seg.max_entry_index = Some(seg.max_entry_index.map_or(m, |x| x.max(m)));
        }
        head.start = head.end();
        head.buf.clear();

        let count = rotations.len();
        for (i, mut chunk) in rotations.into_iter().enumerate() {
            let last = i + 1 == count;
            if let Some(mark) = chunk.last_frame.take() {
                format::mark_synced(&mut chunk.buf, mark);
            }
            let Some((seq, first_index)) = chunk.new_segment else {
                continue; // rotations always name their segment
            };
            // Only the segment that stays current is preallocated; earlier ones are final.
            let prealloc = if last { self.opts.segment_size } else { 0 };
            let (file, path) =
                segment::create(&*self.fs, &self.dir, seq, first_index, &chunk.buf, prealloc)?;
            tracing::debug!(segment = %path.display(), "wal rolled to a new segment");
            self.file = file;
            self.segments.push(Segment {
                seq,
                path,
                max_entry_index: chunk.max_entry_index,
            });
            if last {
                chunk.new_segment = None;
                chunk.start = chunk.end();
                chunk.buf.clear();
                chunk.max_entry_index = None;
                self.head = chunk;
            }
        }
        if self.head.buf.capacity() > RETAINED_BUF_CAPACITY {
            self.head.buf = Vec::new();
        }
        Ok(())
    }

    /// Deletes the oldest segments all of whose `Entry` records have an index below `index`,
    /// stopping at the first segment that has a higher one (or none left but the current segment,
    /// which is never deleted). Returns how many segments were removed.
    ///
    /// Call it after a raft snapshot at `index` has been durably applied by the backend.
    pub fn purge_before(&mut self, index: u64) -> Result<usize, WalError> {
        if self.poisoned {
            return Err(WalError::Poisoned);
        }
        // A failure before anything is removed is like a failed removal: the WAL stays usable.
        failpoint::check(failpoint::BEFORE_PURGE)?;
        self.poisoned = true; // until the purge completes (see `sync`)
        let mut removed = 0;
        let mut result = Ok(());
        while self.segments.len() > 1 {
            let oldest = &self.segments[0];
            if oldest.max_entry_index.is_some_and(|m| m >= index) {
                break;
            }
            if let Err(e) = self.fs.remove_file(&oldest.path) {
                result = Err(e);
                break;
            }
            tracing::debug!(segment = %oldest.path.display(), seq = oldest.seq, "purged wal segment");
            self.segments.remove(0);
            removed += 1;
        }
        let synced = if removed > 0 {
            self.fs.sync_dir(&self.dir)
        } else {
            Ok(())
        };
        // An error injected after the purge is treated like a failed directory fsync.
        if let Err(e) = synced.and_then(|()| failpoint::check(failpoint::AFTER_PURGE)) {
            // The directory's state on disk is unknown: stop like after any failed fsync.
            tracing::error!(dir = %self.dir.display(), error = %e, "wal directory fsync failed; wal is poisoned");
            return Err(WalError::Poisoned);
        }
        self.poisoned = false;
        result?;
        Ok(removed)
    }

    /// The WAL directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether an earlier write or fsync failure has poisoned the WAL.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, len: usize) -> Record {
        Record {
            kind: RecordKind::Entry,
            index,
            term: 1,
            data: (0..len).map(|j| (index as usize + j) as u8 | 1).collect(),
        }
    }

    fn hard_state(commit: u64) -> Record {
        Record {
            kind: RecordKind::HardState,
            index: commit,
            term: 1,
            data: vec![7; 10],
        }
    }

    fn small() -> WalOptions {
        WalOptions { segment_size: 4096 }
    }

    fn open(dir: &Path) -> (Wal, Replay) {
        match Wal::open(dir, small()) {
            Ok(x) => x,
            Err(e) => panic!("open failed: {e}"),
        }
    }

    /// Arms a fault in the file layer, appends a batch, and checks that the sync fails and
    /// poisons everything.
    fn poison_at(step: sim::SimOp, batch: &[Record]) -> Result<(), WalError> {
        let disk = sim::SimDisk::new();
        let dir = Path::new("/wal");
        let (mut wal, _) = Wal::open_with(dir, small(), Arc::new(disk.clone()))?;
        wal.append(&[entry(1, 100), hard_state(1)])?;
        wal.sync()?;
        disk.fail_next(step, sim::EIO);
        wal.append(batch)?;
        assert!(matches!(wal.sync(), Err(WalError::Io(_))), "{step:?}");
        assert!(wal.is_poisoned());
        assert!(matches!(wal.sync(), Err(WalError::Poisoned)));
        assert!(matches!(
            wal.append(&[entry(99, 1)]),
            Err(WalError::Poisoned)
        ));
        assert!(matches!(wal.purge_before(100), Err(WalError::Poisoned)));
        drop(wal);
        // Reopening recovers from disk: the acknowledged batch is there.
        let (_, replay) = Wal::open_with(dir, small(), Arc::new(disk))?;
        assert_eq!(replay.records[..2], [entry(1, 100), hard_state(1)]);
        Ok(())
    }

    #[test]
    fn wal_can_move_to_and_be_shared_with_other_threads() {
        // ballast-server moves the WAL into its raft thread.
        fn send_sync<T: Send + Sync + std::fmt::Debug>() {}
        send_sync::<Wal>();
    }

    #[test]
    fn failed_write_poisons() -> Result<(), WalError> {
        poison_at(sim::SimOp::Write, &[entry(2, 100)])
    }

    #[test]
    fn failed_fsync_poisons() -> Result<(), WalError> {
        poison_at(sim::SimOp::SyncData, &[entry(2, 100)])
    }

    #[test]
    fn failed_segment_creation_poisons() -> Result<(), WalError> {
        let batch: Vec<Record> = (2..40).map(|i| entry(i, 300)).collect();
        poison_at(sim::SimOp::Create, &batch)
    }

    #[test]
    fn full_disk_is_a_storage_fault_never_a_lost_write() -> Result<(), WalError> {
        // The disk fills up at the next segment cut (the new segment cannot be preallocated),
        // and in the middle of a first record larger than the preallocated space (a short write,
        // then ENOSPC).
        let cases = [
            (
                vec![entry(1, 100), hard_state(1)],
                (2..40).map(|i| entry(i, 300)).collect::<Vec<_>>(),
                1000,
            ),
            (vec![], vec![entry(1, 9000)], 3000),
        ];
        for (acked, batch, room) in cases {
            let disk = sim::SimDisk::new();
            let dir = Path::new("/wal");
            let (mut wal, _) = Wal::open_with(dir, small(), Arc::new(disk.clone()))?;
            if !acked.is_empty() {
                wal.append(&acked)?;
                wal.sync()?;
            }
            disk.set_capacity(Some(disk.used() + room));
            wal.append(&batch)?;
            assert!(matches!(wal.sync(), Err(WalError::Io(_))));
            assert!(wal.is_poisoned());
            drop(wal);
            disk.set_capacity(None);
            for seed in 0..20 {
                let after = disk.crash(seed);
                let (_, replay) = Wal::open_with(dir, small(), Arc::new(after))?;
                let n = acked.len();
                assert_eq!(replay.records[..n], acked, "seed {seed}");
                let rest = &replay.records[n..];
                assert_eq!(rest, &batch[..rest.len()], "seed {seed}");
            }
        }
        Ok(())
    }

    #[test]
    fn rotation_truncates_old_segments_and_preallocates_the_current_one() -> Result<(), WalError> {
        let dir = tempfile::tempdir()?;
        let (mut wal, _) = open(dir.path());
        for i in 1..=60 {
            wal.append(&[entry(i, 200), hard_state(i)])?;
            if i % 7 == 0 {
                wal.sync()?;
            }
        }
        wal.sync()?;
        assert!(wal.segments.len() > 3);
        for pair in wal.segments.windows(2) {
            assert_eq!(pair[1].seq, pair[0].seq + 1);
        }
        let (current, older) = wal.segments.split_last().ok_or(WalError::Poisoned)?;
        for seg in older {
            let data = std::fs::read(&seg.path)?;
            // Exactly sized: the last frame ends at EOF.
            let mut off = SEGMENT_HEADER_LEN;
            while let Parsed::Frame(f) = format::parse_at(&data, off) {
                off = f.next;
            }
            assert_eq!(off, data.len(), "{}", seg.path.display());
        }
        assert_eq!(std::fs::metadata(&current.path)?.len(), 4096);
        assert!(wal.head.buf.is_empty() && wal.rotations.is_empty());
        Ok(())
    }

    #[test]
    fn segment_max_entry_index_is_tracked_across_reopen() -> Result<(), WalError> {
        let dir = tempfile::tempdir()?;
        let (mut wal, _) = open(dir.path());
        for i in 1..=50 {
            wal.append(&[entry(i, 250)])?;
            wal.sync()?;
        }
        let before: Vec<(u64, Option<u64>)> = wal
            .segments
            .iter()
            .map(|s| (s.seq, s.max_entry_index))
            .collect();
        drop(wal);
        let (wal, _) = open(dir.path());
        let after: Vec<(u64, Option<u64>)> = wal
            .segments
            .iter()
            .map(|s| (s.seq, s.max_entry_index))
            .collect();
        assert_eq!(before, after);
        Ok(())
    }

    #[test]
    fn batch_larger_than_several_segments_syncs_in_one_call() -> Result<(), WalError> {
        let dir = tempfile::tempdir()?;
        let (mut wal, _) = open(dir.path());
        let batch: Vec<Record> = (1..=100).map(|i| entry(i, 300)).collect();
        wal.append(&batch)?;
        assert!(wal.rotations.len() > 3);
        wal.sync()?;
        drop(wal);
        let (_, replay) = open(dir.path());
        assert_eq!(replay.records, batch);
        assert!(!replay.repaired_tail);
        Ok(())
    }
}
