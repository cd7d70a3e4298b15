//! A real full file system: the data dir is a small tmpfs, filled under write load (several
//! writers, values of a few KiB) until writes fail. The member must stop cleanly (the fault line
//! names "No space left on device", exit status 1) or, if the NOSPACE alarm comes first, refuse
//! writes with etcd's `database space exceeded`. Then the mount is made bigger, the member
//! restarted, and every acknowledged write must be there with its value.
//!
//! Needs root (mount). Without it the test skips, except under `CI=true`, where it fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ballast_testkit::client::{etcd_client, put_until_error, read_from_key, Acked};
use ballast_testkit::{ballast_binary, Server, ServerKind, ServerOptions};

/// The WAL preallocates 64 MiB segments: the mount leaves about 36 MiB for the backend.
const MOUNT_SIZE: &str = "100m";
const BIGGER: &str = "1g";
const WRITERS: usize = 4;
const VALUE_SIZE: usize = 4096;
const WRITE_FOR: Duration = Duration::from_secs(120);

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skips (prints why) unless under CI, where a missing prerequisite fails the test.
fn prerequisite(ok: bool, what: &str) -> bool {
    if !ok {
        assert!(
            !under_ci(),
            "full_disk: {what} (CI=true: this test may not skip)"
        );
        eprintln!("full_disk: skipped: {what}");
    }
    ok
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn mount(args: &[&str]) -> Result<(), String> {
    let out = Command::new("mount")
        .args(args)
        .output()
        .map_err(|e| format!("run mount: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mount {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A tmpfs mounted for the test; unmounted on drop (lazily, should anything still hold it).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::Builder::new()
            .prefix("ballast-full-disk-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let path = dir.path().to_string_lossy().into_owned();
        mount(&["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", &path])?;
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn resize(&self, size: &str) -> Result<(), String> {
        let path = self.path().to_string_lossy().into_owned();
        mount(&["-o", &format!("remount,size={size}"), &path])
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

#[test]
fn a_full_data_dir_stops_the_member_and_loses_no_acknowledged_write() {
    if !prerequisite(is_root(), "needs root to mount a tmpfs") {
        return;
    }
    let fs = match Tmpfs::mount(MOUNT_SIZE) {
        Ok(fs) => fs,
        Err(e) => {
            prerequisite(false, &format!("cannot mount a tmpfs: {e}"));
            return;
        }
    };
    let data_dir: PathBuf = fs.path().join("data");
    let mut server = Server::start_custom(
        ServerKind::Ballast,
        ballast_binary(),
        Some(data_dir),
        ServerOptions::default(),
    );
    let url = server.client_url();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    // Fill it: each writer goes on until its first error.
    let acked: Acked = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let started = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (url, acked, errors) = (url.clone(), acked.clone(), errors.clone());
            rt.spawn(async move {
                let kv = |i: usize| {
                    let k = format!("w{w}/{i:07}");
                    let mut v = format!("{k}:");
                    v.extend(std::iter::repeat_n('v', VALUE_SIZE - v.len()));
                    (k, v)
                };
                put_until_error(&url, started + WRITE_FOR, kv, acked, errors).await;
            })
        })
        .collect();
    for w in writers {
        rt.block_on(w).expect("writer");
    }
    let errors = errors.lock().unwrap().clone();
    let n_acked = acked.lock().unwrap().len();
    assert!(
        !errors.is_empty(),
        "{n_acked} writes of {VALUE_SIZE} B all succeeded on a {MOUNT_SIZE} data dir for {WRITE_FOR:?}"
    );

    // Stopped (exit 1, the fault line names ENOSPC), or alarmed (writes refused, still up).
    match server.wait_exit(Duration::from_secs(20)) {
        Some(status) => {
            assert_eq!(status.code(), Some(1), "exit status {status}");
            let log = server.log_tail(100_000);
            let faults: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("stopping the member"))
                .collect();
            assert_eq!(faults.len(), 1, "one fault line: {faults:#?}");
            assert!(
                log.lines()
                    .any(|l| l.contains("\"level\":\"error\"")
                        && l.contains("No space left on device")),
                "ENOSPC logged: {}",
                faults[0]
            );
            eprintln!(
                "full_disk: {n_acked} acknowledged writes, then: {}",
                faults[0]
            );
        }
        None => {
            assert!(
                errors
                    .iter()
                    .all(|e| e.contains("etcdserver: mvcc: database space exceeded")),
                "the member neither stopped nor alarmed; errors: {errors:?}"
            );
            eprintln!("full_disk: {n_acked} acknowledged writes, then the NOSPACE alarm");
            server.stop();
        }
    }

    // Room again; restart; every acknowledged write is there.
    fs.resize(BIGGER).expect("remount bigger");
    server.restart();
    let acked = acked.lock().unwrap().clone();
    let found = rt.block_on(async move {
        let mut c = etcd_client(&url).await;
        read_from_key(&mut c, b"w", 256).await
    });
    let missing: Vec<&String> = acked
        .iter()
        .filter(|(k, v)| found.get(*k) != Some(*v))
        .map(|(k, _)| k)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost after the restart: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
    server.stop();
    drop(server);
}
