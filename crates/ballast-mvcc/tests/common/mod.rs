//! Helpers shared by this crate's test binaries.

use std::path::Path;
use std::process::Command;

/// The environment variable that hands a crash test's child process its directory.
pub const ENV_DIR: &str = "BALLAST_MVCC_CHILD_DIR";

/// Runs `test` of the current test binary as a child process with `ENV_DIR` set to `dir`, and
/// checks that it crashed (it aborts on purpose: it must not exit successfully).
pub fn run_child(test: &str, dir: &Path) {
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            test,
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_DIR, dir)
        .status()
        .unwrap();
    assert!(!status.success(), "child {test} did not crash");
}
