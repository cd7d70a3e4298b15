//! Defragmentation figures: writes N keys with V-byte values (1000 puts per commit, every 50th
//! commit durable), deletes all but every `KEEP`-th key, compacts, then times `Store::hash` and
//! `Store::defragment` and checks that the hash and the live keys did not change.
//!
//! `cargo run --release -p ballast-mvcc --example defrag -- [N=300000] [V=1024] [KEEP=10] [DIR]`

use std::path::PathBuf;
use std::time::Instant;

use ballast_mvcc::{RangeOptions, Store, StoreOptions};

fn mb(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: u64 = args
        .first()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(300_000);
    let v: usize = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(1024);
    let keep: u64 = args.get(2).map(|a| a.parse()).transpose()?.unwrap_or(10);
    let tmp;
    let dir: PathBuf = match args.get(3) {
        Some(d) => d.into(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let path = dir.join("db");
    let store = Store::open(&path, StoreOptions::default())?;
    let t = Instant::now();
    let mut applied = 0;
    let value = vec![b'v'; v];
    for start in (0..n).step_by(1000) {
        let mut w = store.write()?;
        for i in start..(start + 1000).min(n) {
            w.put(format!("key/{i:010}").as_bytes(), &value, 0)?;
            w.end();
        }
        applied += 1;
        w.commit(applied, applied % 50 == 0)?;
    }
    println!(
        "wrote {n} keys x {v} B in {:?}: db_size {:.1} MB",
        t.elapsed(),
        mb(store.db_size())
    );
    let t = Instant::now();
    for start in (0..n).step_by(1000) {
        let mut w = store.write()?;
        for i in start..(start + 1000).min(n) {
            if i % keep != 0 {
                w.delete_range(format!("key/{i:010}").as_bytes(), b"")?;
            }
        }
        w.end();
        applied += 1;
        w.commit(applied, false)?;
    }
    let mut w = store.write()?;
    let job = w.compact(w.revision())?;
    applied += 1;
    w.commit(applied, true)?;
    job.run()?;
    drop(job);
    println!(
        "deleted all but 1 in {keep} and compacted in {:?}: db_size {:.1} MB, in use ~{:.1} MB",
        t.elapsed(),
        mb(store.db_size()),
        mb(store.db_size_in_use())
    );
    let t = Instant::now();
    let h = store.hash()?;
    println!("hash {h:?} in {:?}", t.elapsed());
    let all = RangeOptions::range("\0", "\0");
    let live = store.read()?.range(&all)?.kvs;
    let stats = store.defragment()?;
    println!(
        "defragment: {:.1} MB -> {:.1} MB in {:?} (writes paused {:?})",
        mb(stats.size_before),
        mb(stats.size_after),
        stats.took,
        stats.writes_paused
    );
    assert_eq!(store.hash()?, h);
    assert_eq!(store.read()?.range(&all)?.kvs, live);
    assert_eq!(store.db_size(), std::fs::metadata(&path)?.len());
    drop(store);
    let t = Instant::now();
    let store = Store::open(&path, StoreOptions::default())?;
    println!("reopened in {:?}", t.elapsed());
    assert_eq!(store.hash()?, h);
    Ok(())
}
