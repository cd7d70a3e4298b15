//! Kill a writer process at arbitrary moments (mid-write, mid-rotation, mid-purge) and check that
//! every acknowledged record survives and the log reopens cleanly.
//!
//! The writer is this test binary re-executed with `BALLAST_WAL_CRASH_DIR` set, running only
//! `crash_writer_child`, which prints `acked <index>` after every successful sync.
//! (A process kill keeps the page cache, so this covers interrupted steps, not lost writes; the
//! torn-write cases are covered by the byte-level tests in `repair.rs` and by the simulated power
//! losses of `power_loss.rs`.)

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use ballast_wal::RecordKind;
use common::*;

const ENV_DIR: &str = "BALLAST_WAL_CRASH_DIR";
const SEGMENT: u64 = 16 << 10;

fn entry_len(index: u64) -> usize {
    (index.wrapping_mul(7919) % 1500) as usize + 1
}

/// The writer. A no-op unless started by `kill_at_random_points_loses_no_acknowledged_record`.
#[test]
fn crash_writer_child() -> TestResult {
    let Some(dir) = std::env::var_os(ENV_DIR) else {
        return Ok(());
    };
    let (mut wal, replay) = open(Path::new(&dir), SEGMENT)?;
    let mut next = replay
        .records
        .iter()
        .rev()
        .find(|r| r.kind == RecordKind::Entry)
        .map_or(1, |r| r.index + 1);
    let mut stdout = std::io::stdout().lock();
    for batch_no in 0u64.. {
        let n = batch_no % 13 + 1;
        let mut batch: Vec<_> = (next..next + n)
            .map(|i| entry(i, 1, entry_len(i)))
            .collect();
        next += n;
        batch.push(hard_state(next - 1, 1));
        wal.append(&batch)?;
        wal.sync()?;
        writeln!(stdout, "acked {}", next - 1)?;
        stdout.flush()?;
        if batch_no % 17 == 0 {
            wal.purge_before(next.saturating_sub(300))?;
        }
    }
    Ok(())
}

#[test]
fn kill_at_random_points_loses_no_acknowledged_record() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    let mut acked = 0u64;
    for round in 0..30u64 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_writer_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ENV_DIR, tmp.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        // Kill after a varying number of acknowledgements, while the writer keeps going.
        let wanted = 20 + round * 37 % 150;
        let mut seen = 0;
        while seen < wanted {
            let Some(line) = lines.next() else { break };
            if let Some(n) = line?.strip_prefix("acked ") {
                acked = n.parse()?;
                seen += 1;
            }
        }
        child.kill()?;
        child.wait()?;
        assert_eq!(seen, wanted, "round {round}: the writer stopped early");
        // Acknowledgements printed after we stopped reading are acknowledged too; read them.
        for line in lines {
            if let Some(n) = line?.strip_prefix("acked ") {
                acked = n.parse()?;
            }
        }

        let (_, replay) = open(tmp.path(), SEGMENT)?;
        let entries: Vec<_> = replay
            .records
            .iter()
            .filter(|r| r.kind == RecordKind::Entry)
            .collect();
        let first = entries.first().map_or(0, |e| e.index);
        for (k, e) in entries.iter().enumerate() {
            assert_eq!(e.index, first + k as u64, "round {round}: gap in the log");
            assert_eq!(**e, entry(e.index, 1, entry_len(e.index)));
        }
        let last = entries.last().map_or(0, |e| e.index);
        assert!(
            last >= acked,
            "round {round}: acked {acked} but the log ends at {last}"
        );
        let hs = replay
            .records
            .iter()
            .rev()
            .find(|r| r.kind == RecordKind::HardState)
            .ok_or("no hard state")?;
        assert!(
            hs.index >= acked,
            "round {round}: hard state {} < acked {acked}",
            hs.index
        );
        assert!(
            segment_files(tmp.path()).len() < 40,
            "purge is not keeping up"
        );
    }
    Ok(())
}
