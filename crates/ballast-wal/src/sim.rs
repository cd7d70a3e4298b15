//! A simulated disk that loses power: a [`WalFs`] keeping written-but-unsynced data apart from
//! durable data, so a test can crash at any point and reopen what a real disk could hold.
//!
//! Compiled for this crate's tests and under the `sim` cargo feature (never in a normal build).
//!
//! # The model
//!
//! - **File data**: each file (inode) has its durable content and its current content (what
//!   reads see: the page cache). `sync_data` makes the current content and size durable. Every
//!   512-byte sector changed since the last `sync_data` (writes, truncation, extension) is
//!   "dirty".
//! - **Names** (create, rename, remove, mkdir) are kept in one ordered log of pending directory
//!   operations, as a journaling file system (ext4 in `data=ordered` mode) does: `sync_dir(d)`
//!   makes every pending operation up to the last one in `d` durable; a crash keeps a random
//!   prefix of the rest (the journal may have committed some on its own), never a reordering.
//!   Creating a file and fsync'ing its data does not make its name durable (POSIX does not
//!   promise it; ext4 happens to, but a WAL that relied on it would be wrong elsewhere).
//! - **Crash** ([`SimDisk::crash`]): a fresh disk image holding the durable names (plus the kept
//!   prefix of pending ones) and, for each file, its durable content with every dirty sector
//!   either taken from the current content or left as it was (zeros in never-written space),
//!   chosen at random per sector; the file size is either the durable or the current one. A seed
//!   picks one of four patterns: everything kept (like `kill -9`: the page cache reaches the
//!   disk), nothing kept, each sector at random, or sectors kept in order up to a random point.
//! - **Capacity** ([`SimDisk::set_capacity`]): growing the files' total size beyond it fails with
//!   ENOSPC (a write fills what fits first, then fails, like a short write followed by an error).
//!   Writes inside already allocated (preallocated) space never fail for lack of space.
//! - **Death** ([`SimDisk::die_after`]): after N more operations every operation fails with EIO,
//!   as if the process were gone (nothing more reaches the page cache).
//! - **Faults** ([`SimDisk::fail_next`]): the next operation of a kind fails once with an errno.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::vfs::{WalFile, WalFs, WalLock};

/// Sector size of the simulated disk: the unit a crash keeps or loses.
pub const SECTOR: u64 = 512;

/// Kinds of operations, for [`SimDisk::fail_next`] and the operation counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SimOp {
    CreateDir,
    SyncDir,
    ListDir,
    Lock,
    Read,
    Open,
    Create,
    Rename,
    Remove,
    Size,
    Seek,
    Write,
    SetLen,
    Preallocate,
    SyncData,
}

/// A small deterministic random generator (splitmix64), so the sim needs no dependency.
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x5851_f42d_4c95_7f2d)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }
}

#[derive(Clone, Debug, Default)]
struct Inode {
    durable: Vec<u8>,
    current: Vec<u8>,
    /// Sectors changed since the last `sync_data` (indexed by sector number).
    dirty: Vec<bool>,
}

impl Inode {
    fn mark(&mut self, from: u64, to: u64) {
        if to <= from {
            return;
        }
        let (first, last) = (from / SECTOR, to.div_ceil(SECTOR));
        if self.dirty.len() < last as usize {
            self.dirty.resize(last as usize, false);
        }
        self.dirty[first as usize..last as usize].fill(true);
    }
}

#[derive(Clone, Debug)]
enum DirOp {
    Mkdir(PathBuf),
    Link(PathBuf, u64),
    Unlink(PathBuf),
    Rename(PathBuf, PathBuf),
}

impl DirOp {
    fn dirs(&self) -> [Option<&Path>; 2] {
        match self {
            DirOp::Mkdir(p) | DirOp::Link(p, _) | DirOp::Unlink(p) => [p.parent(), None],
            DirOp::Rename(a, b) => [a.parent(), b.parent()],
        }
    }
}

/// A namespace: directories and file names -> inodes.
#[derive(Clone, Debug, Default)]
struct Names {
    dirs: BTreeSet<PathBuf>,
    files: BTreeMap<PathBuf, u64>,
}

impl Names {
    fn apply(&mut self, op: &DirOp) {
        match op {
            DirOp::Mkdir(p) => {
                self.dirs.insert(p.clone());
            }
            DirOp::Link(p, ino) => {
                self.files.insert(p.clone(), *ino);
            }
            DirOp::Unlink(p) => {
                self.files.remove(p);
            }
            DirOp::Rename(a, b) => {
                if let Some(ino) = self.files.remove(a) {
                    self.files.insert(b.clone(), ino);
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct Disk {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    current: Names,
    durable: Names,
    pending: Vec<DirOp>,
    locks: BTreeSet<PathBuf>,
    capacity: Option<u64>,
    ops_left: Option<u64>,
    dead: bool,
    ops: u64,
    faults: HashMap<SimOp, i32>,
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

#[cfg(target_os = "linux")]
mod codes {
    pub const EIO: i32 = libc::EIO;
    pub const ENOSPC: i32 = libc::ENOSPC;
    pub const ENOENT: i32 = libc::ENOENT;
}
#[cfg(not(target_os = "linux"))]
mod codes {
    pub const EIO: i32 = 5;
    pub const ENOSPC: i32 = 28;
    pub const ENOENT: i32 = 2;
}
pub use codes::{EIO, ENOSPC};

impl Disk {
    /// Counts an operation; fails if the process is dead or a fault is armed for `op`.
    fn op(&mut self, op: SimOp) -> io::Result<()> {
        if self.dead {
            return Err(errno(EIO));
        }
        if let Some(left) = self.ops_left.as_mut() {
            if *left == 0 {
                self.dead = true;
                return Err(errno(EIO));
            }
            *left -= 1;
        }
        self.ops += 1;
        if let Some(code) = self.faults.remove(&op) {
            return Err(errno(code));
        }
        Ok(())
    }

    fn used(&self) -> u64 {
        self.current
            .files
            .values()
            .filter_map(|ino| self.inodes.get(ino))
            .map(|i| i.current.len() as u64)
            .sum()
    }

    /// Bytes the files may still grow by.
    fn room(&self) -> u64 {
        self.capacity
            .map_or(u64::MAX, |c| c.saturating_sub(self.used()))
    }

    fn inode(&mut self, ino: u64) -> io::Result<&mut Inode> {
        self.inodes
            .get_mut(&ino)
            .ok_or_else(|| errno(codes::ENOENT))
    }

    fn lookup(&self, path: &Path) -> io::Result<u64> {
        self.current
            .files
            .get(path)
            .copied()
            .ok_or_else(|| errno(codes::ENOENT))
    }

    fn parent_exists(&self, path: &Path) -> io::Result<()> {
        match path.parent() {
            Some(p) if !p.as_os_str().is_empty() && !self.current.dirs.contains(p) => {
                Err(errno(codes::ENOENT))
            }
            _ => Ok(()),
        }
    }

    fn dir_op(&mut self, op: DirOp) {
        self.current.apply(&op);
        self.pending.push(op);
    }

    fn resize(&mut self, ino: u64, len: u64) -> io::Result<()> {
        let cur = self.inode(ino)?.current.len() as u64;
        if len > cur && len - cur > self.room() {
            return Err(errno(ENOSPC));
        }
        let inode = self.inode(ino)?;
        inode.current.resize(len as usize, 0);
        inode.mark(cur.min(len), cur.max(len));
        Ok(())
    }
}

/// The simulated disk (cheap to clone: clones share the disk). See the module docs.
#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    disk: Arc<Mutex<Disk>>,
}

impl SimDisk {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock_disk(&self) -> MutexGuard<'_, Disk> {
        // A panic while holding the lock cannot leave the disk half-updated in a way that
        // matters to a test that goes on using it: take the data anyway.
        self.disk.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Limits the total size of all files to `bytes` (`None`: unlimited).
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.lock_disk().capacity = bytes;
    }

    /// After `n` more operations, every operation fails with EIO (the process is gone).
    pub fn die_after(&self, n: u64) {
        self.lock_disk().ops_left = Some(n);
    }

    /// Whether the process has "died" (see [`SimDisk::die_after`]).
    pub fn is_dead(&self) -> bool {
        self.lock_disk().dead
    }

    /// Total size of the files that have a name now (what [`SimDisk::set_capacity`] limits).
    pub fn used(&self) -> u64 {
        self.lock_disk().used()
    }

    /// Operations performed so far (failed ones included, except after death).
    pub fn ops(&self) -> u64 {
        self.lock_disk().ops
    }

    /// The next operation of kind `op` fails once with `errno` (e.g. [`EIO`], [`ENOSPC`]).
    pub fn fail_next(&self, op: SimOp, errno: i32) {
        self.lock_disk().faults.insert(op, errno);
    }

    /// The current names of the files in `dir` (what a listing would show now).
    pub fn files_in(&self, dir: &Path) -> Vec<PathBuf> {
        let disk = self.lock_disk();
        disk.current
            .files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect()
    }

    /// The current content of a file (what a read would see now), if it exists.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let disk = self.lock_disk();
        let ino = disk.current.files.get(path)?;
        disk.inodes.get(ino).map(|i| i.current.clone())
    }

    /// Flips bit `bit` of byte `offset` of a file, in its durable content and its current one:
    /// damage to data already on the disk (not a crash). Returns false if there is no such byte.
    pub fn flip_bit(&self, path: &Path, offset: u64, bit: u8) -> bool {
        let mut disk = self.lock_disk();
        let Some(&ino) = disk.current.files.get(path) else {
            return false;
        };
        let Some(inode) = disk.inodes.get_mut(&ino) else {
            return false;
        };
        let at = offset as usize;
        if at >= inode.durable.len() || at >= inode.current.len() {
            return false;
        }
        inode.durable[at] ^= 1 << (bit % 8);
        inode.current[at] ^= 1 << (bit % 8);
        true
    }

    /// Power loss: a fresh disk holding what survives (see the module docs). The old disk is
    /// left as it was (its handles keep working on it, or keep failing if it is dead).
    pub fn crash(&self, seed: u64) -> SimDisk {
        let disk = self.lock_disk();
        let mut rng = SimRng::new(seed);
        // 0: everything kept (the page cache reached the disk), 1: nothing unsynced kept,
        // 2: each sector at random, 3: sectors kept in order up to a random point.
        let pattern = rng.below(4);
        let mut names = disk.durable.clone();
        let keep_ops = match pattern {
            0 => disk.pending.len(),
            1 => 0,
            _ => rng.below(disk.pending.len() as u64 + 1) as usize,
        };
        for op in &disk.pending[..keep_ops] {
            names.apply(op);
        }
        let mut inodes = HashMap::new();
        for &ino in names.files.values() {
            let Some(old) = disk.inodes.get(&ino) else {
                continue;
            };
            if inodes.contains_key(&ino) {
                continue;
            }
            let new_size = match pattern {
                0 => old.current.len(),
                1 => old.durable.len(),
                _ if rng.coin() => old.current.len(),
                _ => old.durable.len(),
            };
            let mut content = old.durable.clone();
            content.resize(new_size.max(old.durable.len()), 0);
            let dirty: Vec<u64> = (0..old.dirty.len() as u64)
                .filter(|&s| old.dirty[s as usize])
                .collect();
            let cut = rng.below(dirty.len() as u64 + 1) as usize;
            for (k, &s) in dirty.iter().enumerate() {
                let keep = match pattern {
                    0 => true,
                    1 => false,
                    2 => rng.coin(),
                    _ => k < cut,
                };
                if !keep {
                    continue;
                }
                let from = (s * SECTOR) as usize;
                let to = ((s + 1) * SECTOR) as usize;
                if from >= content.len() {
                    continue;
                }
                let to = to.min(content.len());
                for (i, b) in content[from..to].iter_mut().enumerate() {
                    *b = old.current.get(from + i).copied().unwrap_or(0);
                }
            }
            content.truncate(new_size);
            inodes.insert(
                ino,
                Inode {
                    durable: content.clone(),
                    current: content,
                    dirty: Vec::new(),
                },
            );
        }
        SimDisk {
            disk: Arc::new(Mutex::new(Disk {
                inodes,
                next_ino: disk.next_ino,
                current: names.clone(),
                durable: names,
                capacity: disk.capacity,
                ..Disk::default()
            })),
        }
    }
}

#[derive(Debug)]
struct SimFile {
    disk: SimDisk,
    ino: u64,
    pos: u64,
}

#[derive(Debug)]
struct SimLock {
    disk: SimDisk,
    path: PathBuf,
}

impl WalLock for SimLock {}

impl Drop for SimLock {
    fn drop(&mut self) {
        self.disk.lock_disk().locks.remove(&self.path);
    }
}

impl WalFs for SimDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut disk = self.lock_disk();
        disk.op(SimOp::CreateDir)?;
        let mut missing = Vec::new();
        for a in dir.ancestors() {
            if a.as_os_str().is_empty() || disk.current.dirs.contains(a) {
                break;
            }
            missing.push(a.to_path_buf());
        }
        for d in missing.into_iter().rev() {
            disk.dir_op(DirOp::Mkdir(d));
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut disk = self.lock_disk();
        disk.op(SimOp::SyncDir)?;
        if let Some(last) = disk
            .pending
            .iter()
            .rposition(|op| op.dirs().contains(&Some(dir)))
        {
            let done: Vec<DirOp> = disk.pending.drain(..=last).collect();
            for op in &done {
                disk.durable.apply(op);
            }
        }
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        let mut disk = self.lock_disk();
        disk.op(SimOp::ListDir)?;
        if !disk.current.dirs.contains(dir) {
            return Err(errno(codes::ENOENT));
        }
        let mut names: Vec<OsString> = disk
            .current
            .files
            .keys()
            .chain(disk.current.dirs.iter())
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_os_string()))
            .collect();
        names.sort();
        Ok(names)
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn WalLock>> {
        let mut disk = self.lock_disk();
        disk.op(SimOp::Lock)?;
        disk.parent_exists(path)?;
        if disk.locks.contains(path) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if !disk.current.files.contains_key(path) {
            let ino = disk.next_ino;
            disk.next_ino += 1;
            disk.inodes.insert(ino, Inode::default());
            disk.dir_op(DirOp::Link(path.to_path_buf(), ino));
        }
        disk.locks.insert(path.to_path_buf());
        Ok(Box::new(SimLock {
            disk: self.clone(),
            path: path.to_path_buf(),
        }))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut disk = self.lock_disk();
        disk.op(SimOp::Read)?;
        let ino = disk.lookup(path)?;
        Ok(disk.inode(ino)?.current.clone())
    }

    fn open_file(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        let mut disk = self.lock_disk();
        disk.op(SimOp::Open)?;
        let ino = disk.lookup(path)?;
        Ok(Box::new(SimFile {
            disk: self.clone(),
            ino,
            pos: 0,
        }))
    }

    fn create_file(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        let mut disk = self.lock_disk();
        disk.op(SimOp::Create)?;
        disk.parent_exists(path)?;
        let ino = match disk.current.files.get(path).copied() {
            Some(ino) => {
                disk.resize(ino, 0)?;
                ino
            }
            None => {
                let ino = disk.next_ino;
                disk.next_ino += 1;
                disk.inodes.insert(ino, Inode::default());
                disk.dir_op(DirOp::Link(path.to_path_buf(), ino));
                ino
            }
        };
        Ok(Box::new(SimFile {
            disk: self.clone(),
            ino,
            pos: 0,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut disk = self.lock_disk();
        disk.op(SimOp::Rename)?;
        disk.lookup(from)?;
        disk.parent_exists(to)?;
        disk.dir_op(DirOp::Rename(from.to_path_buf(), to.to_path_buf()));
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut disk = self.lock_disk();
        disk.op(SimOp::Remove)?;
        disk.lookup(path)?;
        disk.dir_op(DirOp::Unlink(path.to_path_buf()));
        Ok(())
    }
}

impl WalFile for SimFile {
    fn size(&self) -> io::Result<u64> {
        let mut disk = self.disk.lock_disk();
        disk.op(SimOp::Size)?;
        Ok(disk.inode(self.ino)?.current.len() as u64)
    }

    fn seek(&mut self, pos: u64) -> io::Result<()> {
        self.disk.lock_disk().op(SimOp::Seek)?;
        self.pos = pos;
        Ok(())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut disk = self.disk.lock_disk();
        disk.op(SimOp::Write)?;
        let room = disk.room();
        let inode = disk.inode(self.ino)?;
        let cur = inode.current.len() as u64;
        let end = self.pos + buf.len() as u64;
        // Fill what fits, then fail (a short write followed by ENOSPC).
        let fits = if end > cur && end - cur > room {
            (cur + room).saturating_sub(self.pos).min(buf.len() as u64)
        } else {
            buf.len() as u64
        };
        let write_end = self.pos + fits;
        if write_end as usize > inode.current.len() {
            inode.current.resize(write_end as usize, 0);
        }
        inode.current[self.pos as usize..write_end as usize].copy_from_slice(&buf[..fits as usize]);
        inode.mark(self.pos.min(cur), write_end);
        self.pos = write_end;
        if fits < buf.len() as u64 {
            return Err(errno(ENOSPC));
        }
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let mut disk = self.disk.lock_disk();
        disk.op(SimOp::SetLen)?;
        disk.resize(self.ino, len)
    }

    fn preallocate(&mut self, len: u64) -> io::Result<()> {
        let mut disk = self.disk.lock_disk();
        disk.op(SimOp::Preallocate)?;
        let cur = disk.inode(self.ino)?.current.len() as u64;
        if len > cur {
            disk.resize(self.ino, len)?;
        }
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut disk = self.disk.lock_disk();
        disk.op(SimOp::SyncData)?;
        let inode = disk.inode(self.ino)?;
        inode.durable = inode.current.clone();
        inode.dirty.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(p: &str) -> PathBuf {
        PathBuf::from(p)
    }

    #[test]
    fn unsynced_data_and_names_can_be_lost_synced_ones_never() -> io::Result<()> {
        for seed in 0..200 {
            let sim = SimDisk::new();
            sim.create_dir_all(&d("/w"))?;
            sim.sync_dir(&d("/"))?;
            let mut f = sim.create_file(&d("/w/a"))?;
            f.write_all(&[7u8; 1000])?;
            f.sync_data()?;
            sim.sync_dir(&d("/w"))?;
            f.write_all(&[9u8; 1500])?;
            let mut g = sim.create_file(&d("/w/b"))?;
            g.write_all(b"unsynced name")?;
            g.sync_data()?;

            let after = sim.crash(seed);
            let a = after.contents(&d("/w/a")).ok_or(io::ErrorKind::NotFound)?;
            assert_eq!(&a[..1000], &[7u8; 1000][..], "seed {seed}");
            assert!(a.len() == 1000 || a.len() == 2500, "seed {seed}");
            // Each sector of the unsynced write is either new data or zeros, whole.
            let starts = std::iter::once(1000).chain((1024..a.len()).step_by(SECTOR as usize));
            for s in starts.filter(|&s| s < a.len()) {
                let sector = &a[s..((s / 512 + 1) * 512).min(a.len())];
                assert!(
                    sector.iter().all(|&b| b == 9) || sector.iter().all(|&b| b == 0),
                    "seed {seed}: mixed sector at {s}"
                );
            }
            // `b`'s data was synced but its name never was: it may or may not exist.
            if let Some(b) = after.contents(&d("/w/b")) {
                assert_eq!(b, b"unsynced name");
            }
        }
        Ok(())
    }

    #[test]
    fn crash_patterns_cover_all_kept_and_none_kept() -> io::Result<()> {
        let (mut all, mut none) = (false, false);
        for seed in 0..64 {
            let sim = SimDisk::new();
            sim.create_dir_all(&d("/w"))?;
            let mut f = sim.create_file(&d("/w/a"))?;
            f.sync_data()?;
            sim.sync_dir(&d("/w"))?;
            f.write_all(&[1u8; 4096])?;
            let a = sim.crash(seed).contents(&d("/w/a")).unwrap_or_default();
            all |= a == [1u8; 4096];
            none |= a.is_empty();
        }
        assert!(all && none);
        Ok(())
    }

    #[test]
    fn capacity_gives_enospc_after_a_short_write_but_not_inside_preallocated_space(
    ) -> io::Result<()> {
        let sim = SimDisk::new();
        sim.create_dir_all(&d("/w"))?;
        sim.set_capacity(Some(4096));
        let mut f = sim.create_file(&d("/w/a"))?;
        f.preallocate(3000)?;
        f.write_all(&[5u8; 3000])?;
        let err = f
            .write_all(&[6u8; 2000])
            .err()
            .ok_or(io::ErrorKind::Other)?;
        assert_eq!(err.raw_os_error(), Some(ENOSPC));
        assert_eq!(f.size()?, 4096);
        let mut g = sim.create_file(&d("/w/b"))?;
        let err = g.preallocate(10).err().ok_or(io::ErrorKind::Other)?;
        assert_eq!(err.raw_os_error(), Some(ENOSPC));
        Ok(())
    }

    #[test]
    fn death_fails_every_later_operation() -> io::Result<()> {
        let sim = SimDisk::new();
        sim.create_dir_all(&d("/w"))?;
        let mut f = sim.create_file(&d("/w/a"))?;
        sim.die_after(2);
        f.write_all(b"x")?;
        f.write_all(b"y")?;
        assert!(f.sync_data().is_err());
        assert!(sim.is_dead());
        assert!(sim.list_dir(&d("/w")).is_err());
        assert_eq!(sim.contents(&d("/w/a")), Some(b"xy".to_vec()));
        Ok(())
    }

    #[test]
    fn rename_survives_only_with_its_prefix() -> io::Result<()> {
        for seed in 0..100 {
            let sim = SimDisk::new();
            sim.create_dir_all(&d("/w"))?;
            sim.sync_dir(&d("/"))?;
            let mut f = sim.create_file(&d("/w/x.tmp"))?;
            f.write_all(b"data")?;
            f.sync_data()?;
            sim.rename(&d("/w/x.tmp"), &d("/w/x"))?;
            let after = sim.crash(seed);
            let files = after.files_in(&d("/w"));
            assert!(files.len() <= 1, "seed {seed}: {files:?}");
            for p in files {
                assert_eq!(after.contents(&p), Some(b"data".to_vec()));
            }
        }
        Ok(())
    }
}
