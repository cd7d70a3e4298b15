//! One writer commits continuously (and compacts) while readers check that every view is
//! internally consistent: keys written together in one transaction are always seen together.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ballast_mvcc::*;

#[test]
fn readers_see_consistent_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db"), StoreOptions::default()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));

    let writer = {
        let store = store.clone();
        let stop = stop.clone();
        thread::spawn(move || {
            let mut applied = 0u64;
            let mut i = 0u64;
            let deadline = Instant::now() + Duration::from_secs(3);
            let mut jobs = Vec::new();
            while Instant::now() < deadline {
                let mut w = store.write().unwrap();
                for _ in 0..(i % 7 + 1) {
                    i += 1;
                    let v = i.to_string();
                    // x, y and every p/<n> change together in one etcd transaction.
                    w.put(b"x", v.as_bytes(), 0).unwrap();
                    w.put(b"y", v.as_bytes(), 0).unwrap();
                    if i.is_multiple_of(5) {
                        w.delete_range(b"p/", b"p0").unwrap();
                    } else {
                        for n in 0..(i % 4) {
                            w.put(format!("p/{n}").as_bytes(), v.as_bytes(), 0).unwrap();
                        }
                    }
                    assert!(!w.end().is_empty());
                }
                if i % 50 < 7 && w.revision() > 20 {
                    let c = w.revision() - 10;
                    if c > store.compact_revision() {
                        jobs.push(w.compact(c).unwrap());
                    }
                }
                applied += 1;
                w.commit(applied, applied.is_multiple_of(20)).unwrap();
                for j in jobs.drain(..) {
                    // Run compactions on their own thread, like the server would.
                    thread::spawn(move || j.run().unwrap());
                }
            }
            stop.store(true, Ordering::SeqCst);
        })
    };

    let readers: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            let stop = stop.clone();
            let reads = reads.clone();
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let v = store.read().unwrap();
                    let rev = v.revision();
                    let all = match v.range(&RangeOptions::range("\0", "\0")) {
                        Ok(r) => r,
                        Err(MvccError::Compacted) => continue,
                        Err(e) => panic!("{e}"),
                    };
                    assert_eq!(all.revision, rev);
                    if all.kvs.is_empty() {
                        continue;
                    }
                    let x = all.kvs.iter().find(|kv| kv.key == b"x").unwrap();
                    let y = all.kvs.iter().find(|kv| kv.key == b"y").unwrap();
                    assert_eq!(x.value, y.value);
                    assert_eq!(x.mod_revision, y.mod_revision);
                    assert_eq!(x.version, y.version);
                    assert!(x.mod_revision <= rev);
                    // The latest write transaction touched x: it is the view's revision.
                    assert_eq!(x.mod_revision, rev);
                    for kv in &all.kvs {
                        if kv.key.starts_with(b"p/") {
                            assert!(kv.mod_revision <= x.mod_revision);
                        }
                    }
                    // An older revision read through the same view.
                    let mut o = RangeOptions::range("x", "z");
                    o.revision = rev - 3;
                    match v.range(&o) {
                        Ok(r) if r.kvs.len() == 2 => {
                            assert_eq!(r.kvs[0].mod_revision, r.kvs[1].mod_revision);
                            assert_eq!(r.kvs[0].value, r.kvs[1].value);
                        }
                        Ok(r) => assert!(r.kvs.is_empty() && rev - 3 <= 1),
                        Err(MvccError::Compacted) => {}
                        Err(e) => panic!("{e}"),
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    writer.join().unwrap();
    for r in readers {
        r.join().unwrap();
    }
    assert!(reads.load(Ordering::Relaxed) > 100);
    eprintln!(
        "revision {} compact {} reads {}",
        store.current_revision(),
        store.compact_revision(),
        reads.load(Ordering::Relaxed)
    );
}
