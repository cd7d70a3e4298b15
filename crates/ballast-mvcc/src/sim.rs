//! A simulated disk for power-loss tests: a redb [`StorageBackend`] that keeps what was synced
//! apart from what was only written. Compiled for this crate's tests and under the `sim` cargo
//! feature, never in the normal build.
//!
//! # Model
//! - The disk has a *durable* image and a list of *pending* operations (writes and length
//!   changes) issued since the last `sync_data`, in order. Reads see the durable image with the
//!   pending operations applied (what a process sees through the page cache).
//! - `sync_data` makes every pending operation durable (as `fdatasync` does for one file).
//! - [`SimDisk::crash`] is a power loss: the new image is the durable one plus a random subset
//!   of the pending operations, chosen per 512-byte sector of each write (a lost sector keeps
//!   its previous contents; a write is torn at sector boundaries) and per length change, applied
//!   in their original order. The choice is a pure function of the seed.
//! - An optional capacity: a write or `set_len` that would make the storage longer fails with
//!   ENOSPC (`io::ErrorKind::StorageFull`), changing nothing.
//! - [`SimDisk::die_after`]`(n)`: the process "dies" after `n` more operations (of any kind,
//!   reads included); every later operation fails with EIO and changes nothing. What was
//!   written before stays pending until a crash decides its fate.
//!
//! A [`SimDisk`] is a cheap handle (an `Arc`): keep a clone, give one to
//! [`Store::open_with_backend`](crate::Store::open_with_backend), and after the store is gone
//! (kill the disk first, so that the store's clean close writes nothing) call `crash`.

use std::fmt;
use std::io;
use std::sync::Arc;

use parking_lot::Mutex;
use redb::StorageBackend;

/// Sector size of the simulated disk: the unit in which unsynced writes survive or not.
pub const SECTOR: u64 = 512;

const ENOSPC: i32 = 28;
const EIO: i32 = 5;

#[derive(Clone, Debug)]
enum Op {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Default)]
struct State {
    durable: Vec<u8>,
    current: Vec<u8>,
    pending: Vec<Op>,
    capacity: Option<u64>,
    /// Operations left before the process dies; `None` = never.
    ops_left: Option<u64>,
    dead: bool,
    ops: u64,
    syncs: u64,
}

/// The simulated disk (see the module docs). Clones share the disk.
#[derive(Clone, Default)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.lock();
        f.debug_struct("SimDisk")
            .field("durable_len", &s.durable.len())
            .field("len", &s.current.len())
            .field("pending", &s.pending.len())
            .field("dead", &s.dead)
            .finish()
    }
}

/// splitmix64: a tiny seeded generator (no dependency), enough to choose sectors; the
/// power-loss tests draw their workloads from it too, so one seed replays a whole run.
#[derive(Clone, Debug)]
pub struct SimRng(pub u64);

impl SimRng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with a probability of `percent` in 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn apply_write(image: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let end = offset as usize + data.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[offset as usize..end].copy_from_slice(data);
}

fn apply(image: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write { offset, data } => apply_write(image, *offset, data),
        Op::SetLen(len) => image.resize(*len as usize, 0),
    }
}

impl SimDisk {
    /// An empty disk without a capacity that never dies.
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// Sets (or removes) the capacity in bytes.
    pub fn set_capacity(&self, capacity: Option<u64>) {
        self.state.lock().capacity = capacity;
    }

    /// The process dies after `ops` more operations: the `ops + 1`-th and every later one fail.
    pub fn die_after(&self, ops: u64) {
        self.state.lock().ops_left = Some(ops);
    }

    /// The process dies now.
    pub fn kill(&self) {
        self.state.lock().dead = true;
    }

    /// True once the process died.
    pub fn is_dead(&self) -> bool {
        self.state.lock().dead
    }

    /// Operations done so far (successful or not), of every kind.
    pub fn ops(&self) -> u64 {
        self.state.lock().ops
    }

    /// `sync_data` calls that succeeded.
    pub fn syncs(&self) -> u64 {
        self.state.lock().syncs
    }

    /// Operations written but not yet synced.
    pub fn pending(&self) -> usize {
        self.state.lock().pending.len()
    }

    /// Length of the durable image.
    pub fn durable_len(&self) -> u64 {
        self.state.lock().durable.len() as u64
    }

    /// A power loss (see the module docs): a new disk whose image, durable and current, is
    /// the durable image plus a seeded random subset of the pending operations. This disk is
    /// left as it is (dead or not). The new disk has no capacity and does not die.
    pub fn crash(&self, seed: u64) -> SimDisk {
        let s = self.state.lock();
        let mut rng = SimRng(seed);
        let mut image = s.durable.clone();
        for op in &s.pending {
            match op {
                Op::SetLen(_) => {
                    if rng.coin() {
                        apply(&mut image, op);
                    }
                }
                Op::Write { offset, data } => {
                    // Pieces of the write cut at sector boundaries of the disk.
                    let mut pos = *offset;
                    let end = offset + data.len() as u64;
                    while pos < end {
                        let piece_end = ((pos / SECTOR + 1) * SECTOR).min(end);
                        if rng.coin() {
                            let from = (pos - offset) as usize;
                            let to = (piece_end - offset) as usize;
                            apply_write(&mut image, pos, &data[from..to]);
                        }
                        pos = piece_end;
                    }
                }
            }
        }
        SimDisk {
            state: Arc::new(Mutex::new(State {
                durable: image.clone(),
                current: image,
                ..Default::default()
            })),
        }
    }

    /// Counts an operation; fails if the process is (or now becomes) dead.
    fn step(s: &mut State) -> io::Result<()> {
        s.ops += 1;
        if s.dead {
            return Err(io::Error::from_raw_os_error(EIO));
        }
        if let Some(left) = s.ops_left.as_mut() {
            if *left == 0 {
                s.dead = true;
                return Err(io::Error::from_raw_os_error(EIO));
            }
            *left -= 1;
        }
        Ok(())
    }
}

impl StorageBackend for SimDisk {
    fn len(&self) -> Result<u64, io::Error> {
        let mut s = self.state.lock();
        Self::step(&mut s)?;
        Ok(s.current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let mut s = self.state.lock();
        Self::step(&mut s)?;
        let end = offset as usize + out.len();
        if end > s.current.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the simulated disk",
            ));
        }
        out.copy_from_slice(&s.current[offset as usize..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut s = self.state.lock();
        Self::step(&mut s)?;
        if s.capacity.is_some_and(|c| len > c) {
            return Err(io::Error::from_raw_os_error(ENOSPC));
        }
        let op = Op::SetLen(len);
        apply(&mut s.current, &op);
        s.pending.push(op);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let mut s = self.state.lock();
        Self::step(&mut s)?;
        let pending = std::mem::take(&mut s.pending);
        for op in &pending {
            apply(&mut s.durable, op);
        }
        s.syncs += 1;
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut s = self.state.lock();
        Self::step(&mut s)?;
        let end = offset + data.len() as u64;
        if s.capacity.is_some_and(|c| end > c) {
            return Err(io::Error::from_raw_os_error(ENOSPC));
        }
        let op = Op::Write {
            offset,
            data: data.to_vec(),
        };
        apply(&mut s.current, &op);
        s.pending.push(op);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(d: &SimDisk) -> Vec<u8> {
        let n = d.len().unwrap();
        let mut out = vec![0; n as usize];
        d.read(0, &mut out).unwrap();
        out
    }

    #[test]
    fn synced_data_survives_and_unsynced_sectors_survive_or_not_whole() {
        let d = SimDisk::new();
        d.write(0, &[1; 1024]).unwrap();
        d.sync_data().unwrap();
        // Unsynced: a write across three sectors (the middle one whole).
        d.write(300, &[2; 1000]).unwrap();
        assert_eq!(read_all(&d)[300..1300], [2; 1000]);
        let mut outcomes = std::collections::HashSet::new();
        for seed in 0..64 {
            let mut img = read_all(&d.crash(seed));
            img.resize(img.len().max(1300), 0);
            // Pieces: [300,512), [512,1024), [1024,1300): each all old or all new.
            let pieces = [(300, 512), (512, 1024), (1024, 1300)];
            let mut kept = Vec::new();
            for (a, b) in pieces {
                let p = &img[a..b];
                let new = p.iter().all(|&x| x == 2);
                let old = p.iter().all(|&x| x == if a < 1024 { 1 } else { 0 });
                assert!(new || old, "seed {seed}: torn inside a sector");
                kept.push(new);
            }
            assert_eq!(img[..300], [1; 300]);
            outcomes.insert(kept);
            // Deterministic per seed.
            let mut again = read_all(&d.crash(seed));
            again.resize(again.len().max(1300), 0);
            assert_eq!(again, img);
        }
        assert_eq!(outcomes.len(), 8, "every subset shows up over 64 seeds");
        d.sync_data().unwrap();
        assert_eq!(read_all(&d.crash(1))[300..1300], [2; 1000]);
    }

    #[test]
    fn capacity_and_death() {
        let d = SimDisk::new();
        d.set_capacity(Some(4096));
        d.set_len(4096).unwrap();
        let e = d.set_len(4097).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        let e = d.write(4000, &[0; 200]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(ENOSPC));
        assert_eq!(d.len().unwrap(), 4096);
        d.die_after(2);
        d.write(0, &[9; 10]).unwrap();
        d.sync_data().unwrap();
        assert!(d.write(10, &[9; 10]).is_err());
        assert!(d.is_dead());
        assert!(d.read(0, &mut [0; 1]).is_err());
        let c = d.crash(7);
        let img = read_all(&c);
        assert_eq!(img.len(), 4096);
        assert_eq!(img[..10], [9; 10]);
        assert_eq!(img[10..20], [0; 10]);
    }
}
