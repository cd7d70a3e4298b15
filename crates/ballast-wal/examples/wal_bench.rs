//! Micro-benchmark of the WAL's group commit: N batches of K records (300 bytes each by default),
//! one `sync` (one write + one fdatasync) per batch, as the raft loop does per `Ready`.
//!
//! ```text
//! cargo run --release -p ballast-wal --example wal_bench -- [batches] [records_per_batch] [record_bytes] [dir]
//! ```
//! Defaults: 2000 batches of 10 records of 300 bytes, in a temporary directory under `$TMPDIR`
//! (pass `dir` to measure another disk; a `wal-bench-*` directory is created and removed there).

use std::time::Instant;

use ballast_wal::{Record, RecordKind, Wal, WalOptions};

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: T) -> T {
    args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let batches: u64 = arg(&args, 1, 2000);
    let per_batch: u64 = arg(&args, 2, 10);
    let record_bytes: usize = arg(&args, 3, 300);
    let parent = args
        .get(4)
        .map_or_else(std::env::temp_dir, std::path::PathBuf::from);
    let tmp = tempfile::Builder::new()
        .prefix("wal-bench-")
        .tempdir_in(&parent)?;

    let (mut wal, _) = Wal::open(tmp.path(), WalOptions::default())?;
    let data = vec![0xa5u8; record_bytes];
    let mut batch = Vec::with_capacity(per_batch as usize + 1);
    let mut index = 0;
    let start = Instant::now();
    for _ in 0..batches {
        batch.clear();
        for _ in 0..per_batch {
            index += 1;
            batch.push(Record {
                kind: RecordKind::Entry,
                index,
                term: 1,
                data: data.clone(),
            });
        }
        wal.append(&batch)?;
        wal.sync()?;
    }
    let secs = start.elapsed().as_secs_f64();
    let records = batches * per_batch;
    let mib = (records as usize * record_bytes) as f64 / (1 << 20) as f64;
    println!(
        "wal_bench: {batches} batches x {per_batch} records x {record_bytes} B in {secs:.3} s ({})",
        parent.display()
    );
    println!(
        "  {:.0} syncs/s   {:.0} records/s   {:.1} MiB/s payload   {:.1} us/sync",
        batches as f64 / secs,
        records as f64 / secs,
        mib / secs,
        secs * 1e6 / batches as f64
    );
    Ok(())
}
