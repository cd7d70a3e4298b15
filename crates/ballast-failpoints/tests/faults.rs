//! Fault tests, one per durable step (docs/failpoints.md): each arms a named failpoint in a
//! real `ballast-failpoints` process and checks the fail-stop contract (see `common`): the
//! requests in flight get errors, the member refuses reads, health says NOT_SERVING, the
//! process exits 1 with one fault line, and after a restart every acknowledged write is there.
//!
//! A failpoint that is not compiled in arms without complaint and never fires: the case then
//! fails with "never stopped the member".

mod common;

use common::{run_case, Case, Trigger};

#[test]
fn raft_snapshot_save_error_stops_the_member() {
    run_case(Case {
        snapshot_count: 30,
        fault_line: &["raft snapshot save", "member/wal"],
        cause: "Input/output error",
        ..Case::new("raft::before_snapshot_save", "return")
    });
}

#[test]
fn no_space_after_the_snapshot_marker_stops_the_member() {
    run_case(Case {
        snapshot_count: 30,
        fault_line: &["raft snapshot save", "member/wal"],
        cause: "No space left on device",
        ..Case::new("raft::after_snapshot_save", "return(ENOSPC)")
    });
}

#[test]
fn lease_checkpoint_error_stops_the_member_and_keeps_the_lease() {
    run_case(Case {
        trigger: Trigger::LeaseCheckpoint,
        fault_line: &["apply thread", "lease checkpoint"],
        cause: "Input/output error",
        ..Case::new("lease::before_checkpoint", "return")
    });
}

#[test]
fn a_panic_in_the_apply_thread_stops_the_member() {
    run_case(Case {
        trigger: Trigger::LeaseCheckpoint,
        fault_line: &["apply thread failed: panicked"],
        cause: "failpoint lease::after_checkpoint panic",
        ..Case::new("lease::after_checkpoint", "panic")
    });
}

#[test]
fn wal_write_error_stops_the_member() {
    run_case(Case {
        fault_line: &["wal sync", "member/wal"],
        cause: "Input/output error",
        ..Case::new("wal::before_write", "return")
    });
}

#[test]
fn wal_fsync_error_stops_the_member() {
    run_case(Case {
        fault_line: &["wal sync", "member/wal"],
        cause: "Input/output error",
        ..Case::new("wal::before_fsync", "return")
    });
}

#[test]
fn wal_fsync_no_space_stops_the_member() {
    run_case(Case {
        fault_line: &["wal sync", "member/wal"],
        cause: "No space left on device",
        ..Case::new("wal::before_fsync", "return(ENOSPC)")
    });
}

#[test]
fn no_space_for_a_new_wal_segment_stops_the_member() {
    // 64 MiB segments: large values reach the cut in a few seconds.
    run_case(Case {
        value_size: 512 * 1024,
        snapshot_count: 100_000,
        fault_line: &["wal sync", "member/wal"],
        cause: "No space left on device",
        ..Case::new("wal::before_segment_cut", "return(ENOSPC)")
    });
}

#[test]
fn wal_purge_error_stops_the_member() {
    run_case(Case {
        snapshot_count: 30,
        fault_line: &["wal purge", "member/wal"],
        cause: "Input/output error",
        ..Case::new("wal::before_purge", "return")
    });
}

#[test]
fn backend_commit_error_stops_the_member() {
    run_case(Case {
        fault_line: &["backend commit", "member/snap/db"],
        cause: "Input/output error",
        ..Case::new("backend::before_commit", "return")
    });
}

#[test]
fn a_panic_after_a_backend_commit_stops_the_member() {
    run_case(Case {
        fault_line: &["apply thread failed: panicked"],
        cause: "failpoint backend::after_commit panic",
        ..Case::new("backend::after_commit", "panic")
    });
}

#[test]
fn compaction_step_error_stops_the_member() {
    run_case(Case {
        trigger: Trigger::Compact,
        fault_line: &["compaction at revision", "member/snap/db"],
        cause: "Input/output error",
        ..Case::new("compaction::before_step", "return")
    });
}
