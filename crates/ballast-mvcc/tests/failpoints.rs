#![cfg(feature = "failpoints")]
//! Arms each of this crate's failpoints (docs/failpoints.md) and checks the outcome:
//! - `backend::before_commit` (`return`): the commit fails with the I/O error named, nothing of
//!   the batch is visible, the store goes on consistently; a crash there loses the batch.
//! - `backend::after_commit` (`return`): the caller gets an error but the batch took effect and
//!   the store is consistent with it; a crash there keeps the batch iff it was durable.
//! - `compaction::before_step` / `compaction::after_step`: an interrupted physical compaction
//!   never changes what reads see and resumes (in the process, or on reopen after a crash).
//! - `backend::before_defrag_swap` / `backend::after_defrag_swap`: an error or a crash leaves the
//!   old or the new database, complete.
//! - `backend::before_install_swap` / `backend::after_install_swap` (a snapshot install over a
//!   file): an error before leaves the store and the snapshot file as they were, after it the
//!   store runs on the new contents; a crash at either leaves the old or the new database,
//!   complete.
//!
//! Failpoints are process-global: every test holds a `fail::FailScenario` (a global lock), so
//! the tests of this binary run one at a time. Crashes are real: a child process (this binary
//! re-executed on an ignored test) arms a callback that aborts, the parent reopens.
//!
//! Run: `cargo test --release -p ballast-mvcc --features failpoints --test failpoints`.

use std::io;
use std::path::PathBuf;

use ballast_mvcc::*;

mod common;
use common::{run_child, ENV_DIR};

fn opts() -> StoreOptions {
    StoreOptions {
        cache_size: 8 << 20,
        compaction_batch: 50,
        ..Default::default()
    }
}

#[derive(Debug, PartialEq)]
struct State {
    kvs: Vec<KeyValue>,
    revision: i64,
    compact_revision: i64,
    applied: u64,
    meta: Option<Vec<u8>>,
    hash: (u32, i64),
}

fn state(s: &Store) -> State {
    let r = s.read().unwrap();
    State {
        kvs: r.range(&RangeOptions::range("\0", "\0")).unwrap().kvs,
        revision: r.revision(),
        compact_revision: s.compact_revision(),
        applied: s.applied_index(),
        meta: s.get_meta("caller/m").unwrap(),
        hash: s.hash().unwrap(),
    }
}

/// All keys as of `rev` (a compacted-away revision fails).
fn at(s: &Store, rev: i64) -> Result<Vec<KeyValue>, MvccError> {
    let mut o = RangeOptions::range("\0", "\0");
    o.revision = rev;
    Ok(s.read()?.range(&o)?.kvs)
}

/// One batch: puts of `keys` with `value`, a delete of `del` if given, a meta value.
fn batch(
    s: &Store,
    keys: &[&str],
    value: &str,
    del: Option<&str>,
    applied: u64,
    durable: bool,
) -> Result<(), MvccError> {
    let mut w = s.write()?;
    for k in keys {
        w.put(k.as_bytes(), value.as_bytes(), 0)?;
        w.end();
    }
    if let Some(d) = del {
        w.delete_range(d.as_bytes(), b"")?;
        w.end();
    }
    w.put_meta("caller/m", value.as_bytes());
    w.commit(applied, durable)
}

fn io_kind(e: &MvccError) -> Option<io::ErrorKind> {
    e.io_error().map(|e| e.kind())
}

#[test]
fn before_commit_return_fails_the_batch_and_nothing_is_visible() {
    let _fp = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let s = Store::open(&path, opts()).unwrap();
    batch(&s, &["a", "b"], "v1", None, 1, true).unwrap();
    let before = state(&s);

    fail::cfg("backend::before_commit", "return(ENOSPC)").unwrap();
    let e = batch(&s, &["a", "c"], "v2", Some("b"), 2, false).unwrap_err();
    assert_eq!(io_kind(&e), Some(io::ErrorKind::StorageFull), "{e}");
    assert_eq!(e.io_error().unwrap().raw_os_error(), Some(28));
    assert_eq!(state(&s), before);
    fail::cfg("backend::before_commit", "return").unwrap();
    let e = batch(&s, &["a"], "v2", None, 2, true).unwrap_err();
    assert_eq!(e.io_error().unwrap().raw_os_error(), Some(5), "{e}");
    assert_eq!(state(&s), before);
    assert_eq!(s.durable_applied_index(), 1);
    // The key index was rolled back too: a watcher-style event read sees nothing new.
    let (events, _) = s.read().unwrap().events(1, i64::MAX, 100, false).unwrap();
    assert_eq!(events.len(), 2);

    fail::remove("backend::before_commit");
    // The same batch again gets the revisions the failed one would have had.
    batch(&s, &["a", "c"], "v2", Some("b"), 2, false).unwrap();
    let after = state(&s);
    assert_eq!(after.revision, before.revision + 3);
    let a = s.read().unwrap().get(b"a", 0).unwrap().unwrap();
    assert_eq!(
        (a.version, a.mod_revision, a.value.as_slice()),
        (2, 4, &b"v2"[..])
    );
    assert_eq!(s.read().unwrap().get(b"b", 0).unwrap(), None);
    drop(s);
    let s = Store::open(&path, opts()).unwrap();
    assert_eq!(state(&s), after);
}

#[test]
fn after_commit_return_reports_an_error_for_a_batch_that_took_effect() {
    let _fp = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let s = Store::open(&path, opts()).unwrap();
    batch(&s, &["a"], "v1", None, 1, true).unwrap();
    fail::cfg("backend::after_commit", "1*return(EIO)").unwrap();
    let e = batch(&s, &["a", "b"], "v2", None, 2, true).unwrap_err();
    assert_eq!(e.io_error().unwrap().raw_os_error(), Some(5));
    let st = state(&s);
    assert_eq!((st.revision, st.applied), (4, 2));
    assert_eq!(
        s.read().unwrap().get(b"b", 0).unwrap().unwrap().value,
        b"v2"
    );
    // The store goes on from there (the failpoint fired once).
    batch(&s, &["c"], "v3", None, 3, true).unwrap();
    let st = state(&s);
    assert_eq!(st.revision, 5);
    drop(s);
    let s = Store::open(&path, opts()).unwrap();
    assert_eq!(state(&s), st);
}

fn child_dir() -> Option<PathBuf> {
    std::env::var(ENV_DIR).ok().map(PathBuf::from)
}

fn abort_at(name: &str) {
    fail::cfg_callback(name, || std::process::abort()).unwrap();
}

/// Child: a durable batch, then a batch (durable per `durable`) that crashes at `point`.
fn crash_in_commit(point: &str, durable: bool) {
    let Some(dir) = child_dir() else { return };
    let _fp = fail::FailScenario::setup();
    let s = Store::open(&dir.join("db"), opts()).unwrap();
    batch(&s, &["a", "b"], "v1", None, 1, true).unwrap();
    abort_at(point);
    let _ = batch(&s, &["a", "c"], "v2", Some("b"), 2, durable);
    unreachable!("the failpoint aborts");
}

#[test]
#[ignore = "child process"]
fn child_before_commit_durable() {
    crash_in_commit("backend::before_commit", true);
}

#[test]
#[ignore = "child process"]
fn child_after_commit_durable() {
    crash_in_commit("backend::after_commit", true);
}

#[test]
#[ignore = "child process"]
fn child_after_commit_non_durable() {
    crash_in_commit("backend::after_commit", false);
}

/// What the parent sees after `crash_in_commit`: the second batch iff `kept`.
fn check_crash_in_commit(child: &str, kept: bool) {
    let _fp = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    run_child(child, dir.path());
    let s = Store::open(&dir.path().join("db"), opts()).unwrap();
    let r = s.read().unwrap();
    let a = r.get(b"a", 0).unwrap().unwrap();
    if kept {
        assert_eq!((s.current_revision(), s.applied_index()), (6, 2));
        assert_eq!((a.value.as_slice(), a.version), (&b"v2"[..], 2));
        assert_eq!(r.get(b"b", 0).unwrap(), None);
        assert_eq!(r.get(b"c", 0).unwrap().unwrap().value, b"v2");
        assert_eq!(s.get_meta("caller/m").unwrap().unwrap(), b"v2");
    } else {
        assert_eq!((s.current_revision(), s.applied_index()), (3, 1));
        assert_eq!((a.value.as_slice(), a.version), (&b"v1"[..], 1));
        assert_eq!(r.get(b"b", 0).unwrap().unwrap().value, b"v1");
        assert_eq!(r.get(b"c", 0).unwrap(), None);
        assert_eq!(s.get_meta("caller/m").unwrap().unwrap(), b"v1");
    }
    assert_eq!(s.durable_applied_index(), s.applied_index());
    // Replaying from the durable applied index works.
    drop(r);
    if !kept {
        batch(&s, &["a", "c"], "v2", Some("b"), 2, true).unwrap();
        assert_eq!(s.current_revision(), 6);
    }
}

#[test]
fn crash_before_a_durable_commit_loses_the_batch() {
    check_crash_in_commit("child_before_commit_durable", false);
}

#[test]
fn crash_after_a_durable_commit_keeps_the_batch() {
    check_crash_in_commit("child_after_commit_durable", true);
}

#[test]
fn crash_after_a_non_durable_commit_loses_the_batch() {
    check_crash_in_commit("child_after_commit_non_durable", false);
}

/// 20 keys x 10 rounds (revisions 2..=201), then a durable compaction scheduled at 161.
fn history(s: &Store) -> CompactJob {
    for round in 0..10u64 {
        let mut w = s.write().unwrap();
        for i in 0..20 {
            w.put(
                format!("k{i:02}").as_bytes(),
                format!("r{round}").as_bytes(),
                0,
            )
            .unwrap();
            w.end();
        }
        w.commit(round + 1, false).unwrap();
    }
    let mut w = s.write().unwrap();
    let job = w.compact(161).unwrap();
    w.commit(11, true).unwrap();
    job
}

#[test]
fn compaction_step_errors_never_change_reads_and_the_job_resumes() {
    let _fp = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let s = Store::open(&path, opts()).unwrap();
    let job = history(&s);
    let at161 = at(&s, 161).unwrap();
    let now = state(&s);
    // The second batch fails before its commit, then (once) after the third one's.
    fail::cfg("compaction::before_step", "1*off->1*return(EIO)").unwrap();
    let e = job.run().unwrap_err();
    assert_eq!(e.io_error().unwrap().raw_os_error(), Some(5));
    assert_eq!(at(&s, 161).unwrap(), at161);
    assert!(matches!(at(&s, 160), Err(MvccError::Compacted)));
    fail::remove("compaction::before_step");
    fail::cfg("compaction::after_step", "1*off->1*return(ENOSPC)").unwrap();
    let e = job.run().unwrap_err();
    assert_eq!(io_kind(&e), Some(io::ErrorKind::StorageFull));
    assert_eq!(at(&s, 161).unwrap(), at161);
    fail::remove("compaction::after_step");
    job.run().unwrap();
    assert_eq!(at(&s, 161).unwrap(), at161);
    let done = state(&s);
    assert_eq!((done.kvs.clone(), done.revision), (now.kvs, now.revision));
    drop(job);
    drop(s);
    let s = Store::open(&path, opts()).unwrap();
    assert!(s.take_pending_compaction().is_none());
    assert_eq!(state(&s), done);
    assert_eq!(at(&s, 161).unwrap(), at161);
}

#[test]
#[ignore = "child process"]
fn child_compaction_crash() {
    let Some(dir) = child_dir() else { return };
    let _fp = fail::FailScenario::setup();
    let s = Store::open(&dir.join("db"), opts()).unwrap();
    let job = history(&s);
    // After the second deletion batch, make what it did durable, then crash at the next step.
    let s2 = s.clone();
    let steps = std::sync::atomic::AtomicU32::new(0);
    fail::cfg_callback("compaction::after_step", move || {
        if steps.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            let w = s2.write().unwrap();
            w.commit(12, true).unwrap();
            std::process::abort();
        }
    })
    .unwrap();
    let _ = job.run();
    unreachable!("the failpoint aborts");
}

#[test]
fn crash_in_compaction_resumes_on_reopen_with_the_same_reads() {
    let _fp = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    // The expected reads, from the same history in a store of the parent's own.
    let expect = {
        let s = Store::open(&dir.path().join("model"), opts()).unwrap();
        let job = history(&s);
        job.run().unwrap();
        (at(&s, 161).unwrap(), state(&s).kvs)
    };
    run_child("child_compaction_crash", dir.path());
    let s = Store::open(&path, opts()).unwrap();
    assert_eq!(s.compact_revision(), 161);
    assert_eq!(s.applied_index(), 12);
    assert_eq!(at(&s, 161).unwrap(), expect.0);
    assert!(matches!(at(&s, 160), Err(MvccError::Compacted)));
    let job = s.take_pending_compaction().expect("the compaction resumes");
    assert_eq!(job.revision(), 161);
    job.run().unwrap();
    assert_eq!(at(&s, 161).unwrap(), expect.0);
    assert_eq!(state(&s).kvs, expect.1);
}

/// 3000 keys, 9 in 10 deleted and compacted away: a defrag has much to give back.
fn defrag_fixture(s: &Store) {
    let mut w = s.write().unwrap();
    for i in 0..3000 {
        w.put(format!("d{i:05}").as_bytes(), &[7u8; 300], 0)
            .unwrap();
        w.end();
    }
    w.commit(1, false).unwrap();
    let mut w = s.write().unwrap();
    for i in 0..3000 {
        if i % 10 != 0 {
            w.delete_range(format!("d{i:05}").as_bytes(), b"").unwrap();
        }
    }
    w.end();
    w.put_meta("caller/m", b"defrag");
    let job = w.compact(w.revision()).unwrap();
    w.commit(2, false).unwrap();
    job.run().unwrap();
}

#[test]
fn defrag_swap_errors_leave_a_complete_database() {
    let _fp = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let s = Store::open(&path, opts()).unwrap();
    defrag_fixture(&s);
    let before = state(&s);
    let size = s.db_size();

    fail::cfg("backend::before_defrag_swap", "return(ENOSPC)").unwrap();
    let e = s.defragment().unwrap_err();
    assert_eq!(io_kind(&e), Some(io::ErrorKind::StorageFull));
    assert!(!path.with_file_name("db.defrag.tmp").exists());
    assert_eq!(s.db_size(), size);
    assert_eq!(state(&s), before);
    fail::remove("backend::before_defrag_swap");
    // Still writable, on the old file.
    batch(&s, &["x"], "after", None, 3, false).unwrap();
    let before = state(&s);

    let durable = s.durable_applied_index();
    assert!(durable < s.applied_index());
    fail::cfg("backend::after_defrag_swap", "return(EIO)").unwrap();
    assert!(s.defragment().is_err());
    fail::remove("backend::after_defrag_swap");
    // The rename is not known to be durable: the durable applied index stays, until a
    // durable commit (which syncs the directory first).
    assert_eq!(s.durable_applied_index(), durable);
    // The swap happened: the store runs on the new, smaller file.
    assert!(s.db_size() * 2 < size, "{} vs {size}", s.db_size());
    assert_eq!(s.db_size(), std::fs::metadata(&path).unwrap().len());
    assert!(state(&s) == before, "state changed by the defragmentation");
    a_durable_commit_syncs_the_rename(s, &path, 4);
}

/// After a swap whose directory fsync failed: the next durable commit syncs it (the durable
/// applied index catches up), and the store reopens as it is.
fn a_durable_commit_syncs_the_rename(s: Store, path: &std::path::Path, applied: u64) {
    batch(&s, &["z"], "durable", None, applied, true).unwrap();
    assert_eq!(s.durable_applied_index(), applied);
    batch(&s, &["y"], "after", None, applied + 1, false).unwrap();
    let after = state(&s);
    drop(s);
    let s = Store::open(path, opts()).unwrap();
    assert_eq!(state(&s), after);
}

fn crash_in_defrag(point: &str) {
    let Some(dir) = child_dir() else { return };
    let _fp = fail::FailScenario::setup();
    let s = Store::open(&dir.join("db"), opts()).unwrap();
    defrag_fixture(&s);
    // Durable, so the parent knows exactly what the old file holds too.
    batch(&s, &["x"], "durable", None, 3, true).unwrap();
    std::fs::write(dir.join("size"), s.db_size().to_string()).unwrap();
    abort_at(point);
    let _ = s.defragment();
    unreachable!("the failpoint aborts");
}

#[test]
#[ignore = "child process"]
fn child_before_defrag_swap() {
    crash_in_defrag("backend::before_defrag_swap");
}

#[test]
#[ignore = "child process"]
fn child_after_defrag_swap() {
    crash_in_defrag("backend::after_defrag_swap");
}

fn check_crash_in_defrag(child: &str, swapped: bool) {
    let _fp = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let expect = {
        let s = Store::open(&dir.path().join("model"), opts()).unwrap();
        defrag_fixture(&s);
        batch(&s, &["x"], "durable", None, 3, true).unwrap();
        state(&s)
    };
    run_child(child, dir.path());
    let size: u64 = std::fs::read_to_string(dir.path().join("size"))
        .unwrap()
        .parse()
        .unwrap();
    let path = dir.path().join("db");
    let s = Store::open(&path, opts()).unwrap();
    assert!(!path.with_file_name("db.defrag.tmp").exists());
    assert_eq!(state(&s), expect);
    if swapped {
        assert!(s.db_size() * 2 < size, "{} vs {size}", s.db_size());
    } else {
        assert!(s.db_size() >= size, "{} vs {size}", s.db_size());
    }
}

#[test]
fn crash_before_the_defrag_swap_keeps_the_old_database() {
    check_crash_in_defrag("child_before_defrag_swap", false);
}

#[test]
fn crash_after_the_defrag_swap_keeps_the_new_database() {
    check_crash_in_defrag("child_after_defrag_swap", true);
}

/// The exporting member: the defrag fixture and one more batch, exported to `file`. Returns
/// its state (what the installing store must become).
fn export_fixture(dir: &std::path::Path, file: &std::path::Path) -> State {
    let s = Store::open(&dir.join("src"), opts()).unwrap();
    defrag_fixture(&s);
    batch(&s, &["x"], "snapshot", None, 3, false).unwrap();
    s.export_snapshot(file).unwrap();
    state(&s)
}

/// The installing member's own history (durable).
fn install_target(s: &Store) {
    batch(s, &["a", "b"], "mine", None, 1, true).unwrap();
    batch(s, &["c"], "mine", Some("a"), 2, true).unwrap();
}

#[test]
fn install_swap_errors_leave_the_old_or_the_new_store() {
    let _fp = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snap.db");
    let new = export_fixture(dir.path(), &file);
    let path = dir.path().join("db");
    let s = Store::open(&path, opts()).unwrap();
    install_target(&s);
    let old = state(&s);

    fail::cfg("backend::before_install_swap", "return(ENOSPC)").unwrap();
    let e = s.install_snapshot(&file).unwrap_err();
    assert_eq!(io_kind(&e), Some(io::ErrorKind::StorageFull), "{e}");
    fail::remove("backend::before_install_swap");
    assert!(file.exists(), "the snapshot file stays where it was");
    assert_eq!(state(&s), old);
    // Still writable, on the old contents.
    batch(&s, &["d"], "mine", None, 3, false).unwrap();
    let durable = s.durable_applied_index();
    assert_eq!(durable, 2);

    fail::cfg("backend::after_install_swap", "return(EIO)").unwrap();
    let e = s.install_snapshot(&file).unwrap_err();
    assert_eq!(e.io_error().unwrap().raw_os_error(), Some(5), "{e}");
    fail::remove("backend::after_install_swap");
    // The swap happened: the store runs on the new contents.
    assert!(!file.exists());
    assert_eq!(state(&s), new);
    assert_eq!(s.db_size(), std::fs::metadata(&path).unwrap().len());
    // The rename is not known to be durable: the durable applied index stays, until a
    // durable commit (which syncs the directory first).
    assert_eq!(s.durable_applied_index(), durable);
    a_durable_commit_syncs_the_rename(s, &path, 4);
}

fn crash_in_install(point: &str) {
    let Some(dir) = child_dir() else { return };
    let _fp = fail::FailScenario::setup();
    let s = Store::open(&dir.join("db"), opts()).unwrap();
    install_target(&s);
    abort_at(point);
    let _ = s.install_snapshot(&dir.join("snap.db"));
    unreachable!("the failpoint aborts");
}

#[test]
#[ignore = "child process"]
fn child_before_install_swap() {
    crash_in_install("backend::before_install_swap");
}

#[test]
#[ignore = "child process"]
fn child_after_install_swap() {
    crash_in_install("backend::after_install_swap");
}

/// What the parent sees after `crash_in_install`: the old contents and the snapshot file where
/// it was, or the new contents; either way a store that opens and takes writes.
fn check_crash_in_install(child: &str, swapped: bool) {
    let _fp = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snap.db");
    let new = export_fixture(dir.path(), &file);
    let old = {
        let s = Store::open(&dir.path().join("model"), opts()).unwrap();
        install_target(&s);
        state(&s)
    };
    run_child(child, dir.path());
    let s = Store::open(&dir.path().join("db"), opts()).unwrap();
    assert_eq!(&state(&s), if swapped { &new } else { &old });
    assert_eq!(file.exists(), !swapped);
    assert_eq!(s.durable_applied_index(), s.applied_index());
    let applied = s.applied_index();
    batch(&s, &["after"], "crash", None, applied + 1, true).unwrap();
    if !swapped {
        // The install can be done again.
        s.install_snapshot(&file).unwrap();
        assert_eq!(state(&s), new);
    }
}

#[test]
fn crash_before_the_install_swap_keeps_the_old_database() {
    check_crash_in_install("child_before_install_swap", false);
}

#[test]
fn crash_after_the_install_swap_keeps_the_new_database() {
    check_crash_in_install("child_after_install_swap", true);
}
