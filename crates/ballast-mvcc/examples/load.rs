//! Loads N keys (32-byte keys, 256-byte values) in batches of 1000 puts per commit (each put
//! its own etcd transaction / revision; every 100th commit durable), then reopens the store and
//! times the index rebuild.
//!
//! `cargo run --release -p ballast-mvcc --example load -- [N] [DIR]` (N = 0: only reopen the
//! store left in DIR by an earlier run).

use std::path::PathBuf;
use std::time::Instant;

use ballast_mvcc::{RangeOptions, Store, StoreOptions};

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51afd7ed558ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ceb9fe1a85ec53);
    x ^ (x >> 33)
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let tmp;
    let dir: PathBuf = match args.next() {
        Some(d) => d.into(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let path = dir.join("load.redb");
    if n == 0 {
        // Reopen an existing store only (profiling the rebuild), with a small redb cache so the
        // RSS is mostly the key index.
        let rss0 = rss_mb();
        let t = Instant::now();
        let store = Store::open(
            &path,
            StoreOptions {
                cache_size: 1 << 20,
                ..Default::default()
            },
        )?;
        println!(
            "reopen + index rebuild: {:.2}s ({} keys), rss growth {:.0} MiB",
            t.elapsed().as_secs_f64(),
            store.index_len(),
            rss_mb() - rss0
        );
        return Ok(());
    }
    let _ = std::fs::remove_file(&path);
    const BATCH: u64 = 1000;

    let store = Store::open(&path, StoreOptions::default())?;
    let value = vec![b'v'; 256];
    let t0 = Instant::now();
    let mut i = 0u64;
    let mut commits = 0u64;
    let mut commit_time = std::time::Duration::ZERO;
    while i < n {
        let mut w = store.write()?;
        let end = (i + BATCH).min(n);
        while i < end {
            // 32 bytes: 16 random hex digits then the sequence number (unique, random order).
            let key = format!("{:016x}{:016x}", mix(i), i);
            w.put(key.as_bytes(), &value, 0)?;
            w.end();
            i += 1;
        }
        commits += 1;
        let tc = Instant::now();
        w.commit(commits, commits.is_multiple_of(100) || i == n)?;
        commit_time += tc.elapsed();
    }
    let load = t0.elapsed();
    let rev = store.current_revision();
    println!(
        "loaded {n} keys in {:.2}s ({:.0} puts/s; {:.2}s of it in {commits} commits), \
         revision {rev}, rss {:.0} MiB",
        load.as_secs_f64(),
        n as f64 / load.as_secs_f64(),
        commit_time.as_secs_f64(),
        rss_mb()
    );
    let size = store.db_size();
    let in_use = store.db_size_in_use();
    drop(store);

    let t1 = Instant::now();
    let store = Store::open(&path, StoreOptions::default())?;
    let rebuild = t1.elapsed();
    assert_eq!(store.current_revision(), rev);
    let t2 = Instant::now();
    let r = store.read()?.range(&RangeOptions {
        key: vec![0],
        range_end: vec![0],
        count_only: true,
        ..Default::default()
    })?;
    let count_time = t2.elapsed();
    assert_eq!(r.count as u64, n);
    println!(
        "reopen + index rebuild: {:.2}s ({} keys); count-all range {:.0} ms",
        rebuild.as_secs_f64(),
        store.index_len(),
        count_time.as_secs_f64() * 1000.0
    );
    println!(
        "db file {:.1} MiB, in use (estimate) {:.1} MiB",
        size as f64 / (1 << 20) as f64,
        in_use as f64 / (1 << 20) as f64,
    );
    Ok(())
}
