//! The hub with a real store and no network: a stream whose client does not read has its
//! watchers made victims and caught up from the backend without losing, duplicating or
//! reordering an event, while writes keep being published concurrently.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_mvcc::{Store, StoreOptions};
use ballast_proto::etcdserverpb::{WatchCreateRequest, WatchResponse};
use futures::StreamExt;

use super::*;

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    hub: Arc<WatchHub>,
    status: Arc<crate::raft::RaftStatus>,
    index: std::sync::atomic::AtomicU64,
}

impl Fixture {
    fn new(opts: WatchOptions) -> Arc<Fixture> {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), StoreOptions::default()).unwrap();
        let status = Arc::new(crate::raft::RaftStatus::default());
        let hub = Arc::new(WatchHub::new(
            store.clone(),
            opts,
            HeaderSource {
                cluster_id: 1,
                member_id: 2,
                status: status.clone(),
            },
        ));
        Arc::new(Fixture {
            _dir: dir,
            store,
            hub,
            status,
            index: Default::default(),
        })
    }

    /// One revision putting `keys`, committed then published like the apply loop does.
    fn put(&self, keys: &[&str], value: &str) -> i64 {
        let mut txn = self.store.write().unwrap();
        for k in keys {
            txn.put(k.as_bytes(), value.as_bytes(), 0).unwrap();
        }
        let events = txn.end();
        let rev = txn.revision();
        let idx = self.index.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        txn.commit(idx, false).unwrap();
        drop(self.hub.publish(
            vec![RevEvents { rev, events }],
            self.store.current_revision(),
        ));
        rev
    }
}

impl Fixture {
    /// A new stream with one watcher of `k` from now (watch id 0), its `created` response read.
    async fn watch_k_from_now(&self) -> (Arc<StreamShared>, WatchResponseStream) {
        let (stream, mut responses) = self.hub.open_stream(false);
        self.hub.create(&stream, &create("k", "", 0));
        assert!(next(&mut responses).await.created);
        (stream, responses)
    }
}

fn create(key: &str, end: &str, start: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.into(),
        range_end: end.into(),
        start_revision: start,
        prev_kv: true,
        ..Default::default()
    }
}

async fn next(s: &mut WatchResponseStream) -> WatchResponse {
    let r = tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("a response within 10 s")
        .expect("stream open")
        .expect("not an error")
        .into_response();
    if std::env::var("WATCH_TEST_TRACE").is_ok() {
        eprintln!(
            "got {:?} {} {} ev={:?}",
            r.header.as_ref().map(|h| h.revision),
            r.watch_id,
            if r.created { "created" } else { "" },
            r.events
                .iter()
                .map(|e| e.kv.as_ref().unwrap().mod_revision)
                .collect::<Vec<_>>()
        );
    }
    r
}

/// Reads until `want` events arrived for watch `wid`; returns their (revision, value) pairs.
async fn collect_events(s: &mut WatchResponseStream, wid: i64, want: usize) -> Vec<(i64, Vec<u8>)> {
    let mut got = Vec::new();
    while got.len() < want {
        let r = next(s).await;
        assert!(!r.canceled, "unexpected cancel {r:?}");
        if r.watch_id != wid {
            continue;
        }
        for e in r.events {
            let kv = e.kv.unwrap();
            got.push((kv.mod_revision, kv.value));
        }
    }
    got
}

/// The stream says why it ends (the stall cancel of watch `wid`), instead of whatever it had
/// buffered, then ends.
async fn expect_stall_cancel(responses: &mut WatchResponseStream, wid: i64) {
    let r = next(responses).await;
    assert!(r.canceled, "{r:?}");
    assert!(
        r.cancel_reason.contains("took no response"),
        "{}",
        r.cancel_reason
    );
    assert_eq!(r.watch_id, wid);
    assert!(
        responses.next().await.is_none(),
        "stream ends after the cancels"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn victims_catch_up_without_loss_while_writes_continue() {
    let f = Fixture::new(WatchOptions {
        queue_events: 8,
        ..WatchOptions::default()
    });
    let base = f.put(&["k"], "v0");
    let (stream, mut responses) = f.hub.open_stream(false);
    f.hub.create(&stream, &create("k", "", 0));
    f.hub.create(&stream, &create("a", "z", base)); // range, from history
    let c1 = next(&mut responses).await;
    let c2 = next(&mut responses).await;
    assert!(c1.created && c2.created && c1.watch_id == 0 && c2.watch_id == 1);
    // Many more revisions than the stream may queue, without reading: victims.
    let writer = {
        let f = f.clone();
        std::thread::spawn(move || {
            for i in 1..=3000 {
                f.put(&["k"], &format!("v{i}"));
            }
        })
    };
    // Read slowly at first, then fast, while the writer runs.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut by_watch: HashMap<i64, Vec<i64>> = HashMap::new();
    let mut values = Vec::new();
    while by_watch.get(&0).map_or(0, |v| v.len()) < 3000
        || by_watch.get(&1).map_or(0, |v| v.len()) < 3001
    {
        let r = next(&mut responses).await;
        assert!(!r.canceled, "{r:?}");
        let revs = by_watch.entry(r.watch_id).or_default();
        for e in r.events {
            let kv = e.kv.unwrap();
            if r.watch_id == 0 {
                values.push(kv.value.clone());
                // prev_kv is the previous value of the key.
                let prev = e.prev_kv.expect("prev_kv requested").value;
                let n: usize = String::from_utf8(kv.value).unwrap()[1..].parse().unwrap();
                assert_eq!(prev, format!("v{}", n - 1).into_bytes());
            }
            revs.push(kv.mod_revision);
        }
    }
    writer.join().unwrap();
    assert!(
        f.hub.victims_total() > 0,
        "the slow start must have made victims"
    );
    // Ordered, unique, no gaps: exactly base+1..=base+3000 (and base.. for the history one).
    assert_eq!(by_watch[&0], (base + 1..=base + 3000).collect::<Vec<_>>());
    assert_eq!(by_watch[&1], (base..=base + 3000).collect::<Vec<_>>());
    assert_eq!(values.last().unwrap(), b"v3000");
    // Both caught up and rejoined the synced set: a new event arrives live.
    tokio::time::timeout(Duration::from_secs(5), async {
        while f.hub.synced_watchers() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("watchers rejoin the synced set");
    let rev = f.put(&["k"], "last");
    let got = collect_events(&mut responses, 0, 1).await;
    assert_eq!(got, vec![(rev, b"last".to_vec())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_left_undrained_makes_victims_long_before_the_full_bound() {
    // Undrained for less than `blocked_after`: only the full bound (4096) makes victims.
    let patient = Fixture::new(WatchOptions {
        blocked_queue_events: 16,
        blocked_after: Duration::from_secs(30),
        ..WatchOptions::default()
    });
    let (_stream, mut responses) = patient.watch_k_from_now().await;
    let first = patient.put(&["k"], "v0");
    for i in 1..300 {
        patient.put(&["k"], &format!("v{i}"));
    }
    assert_eq!(patient.hub.victims_total(), 0);
    let got = collect_events(&mut responses, 0, 300).await;
    let revs: Vec<i64> = got.iter().map(|(r, _)| *r).collect();
    assert_eq!(revs, (first..first + 300).collect::<Vec<_>>());

    // Undrained for longer: past 16 queued events the next one makes a victim, far below
    // 4096. It still gets every event, in order, once it reads, and rejoins the synced set.
    let f = Fixture::new(WatchOptions {
        blocked_queue_events: 16,
        blocked_after: Duration::from_millis(50),
        ..WatchOptions::default()
    });
    let (_stream, mut responses) = f.watch_k_from_now().await;
    let first = f.put(&["k"], "v0");
    for i in 1..17 {
        f.put(&["k"], &format!("v{i}"));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    f.put(&["k"], "v17");
    assert_eq!(f.hub.victims_total(), 1);
    assert_eq!(f.hub.synced_watchers(), 0);
    for i in 18..40 {
        f.put(&["k"], &format!("v{i}"));
    }
    let got = collect_events(&mut responses, 0, 40).await;
    let revs: Vec<i64> = got.iter().map(|(r, _)| *r).collect();
    assert_eq!(revs, (first..first + 40).collect::<Vec<_>>());
    let values: Vec<Vec<u8>> = got.into_iter().map(|(_, v)| v).collect();
    assert_eq!(values[17], b"v17");
    tokio::time::timeout(Duration::from_secs(5), async {
        while f.hub.synced_watchers() < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the watcher rejoins the synced set");
}

/// Puts `n` values of `k`, `gap` apart, from a thread; the revisions and the time it took.
fn put_every(
    f: &Arc<Fixture>,
    n: usize,
    gap: Duration,
) -> std::thread::JoinHandle<(Vec<i64>, Duration)> {
    let f = f.clone();
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut revs = Vec::new();
        for i in 0..n {
            revs.push(f.put(&["k"], &format!("v{i}")));
            std::thread::sleep(gap);
        }
        (revs, start.elapsed())
    })
}

/// Reads `n` events' revisions; also how many responses carried them.
async fn read_revisions(responses: &mut WatchResponseStream, n: usize) -> (Vec<i64>, usize) {
    let mut got = Vec::new();
    let mut seen = 0;
    while got.len() < n {
        let r = next(responses).await;
        assert!(!r.canceled, "{r:?}");
        seen += 1;
        got.extend(r.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision));
    }
    (got, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_stream_gets_its_events_in_batches_and_every_one_of_them() {
    let interval = Duration::from_millis(400);
    let f = Fixture::new(WatchOptions {
        batch_interval: interval,
        ..WatchOptions::default()
    });
    let (_stream, mut responses) = f.watch_k_from_now().await;
    // 60 puts 5 ms apart while the client waits. The stream is busy (fed at least twice per
    // interval) once the mean gap has come down from the interval, after about six puts;
    // from then on, a put wakes it at once only if it was not woken for an interval, and the
    // others wait for the stream's next slot and leave together (a watcher's revisions in one
    // response).
    let writer = put_every(&f, 60, Duration::from_millis(5));
    let (got, responses_seen) = read_revisions(&mut responses, 60).await;
    let (revs, span) = writer.join().unwrap();
    assert_eq!(got, revs, "every event, in order, once");
    // At most the dozen puts before it was busy, then once at once and once per slot the puts
    // spanned (woken per put, the stream would have sent about 60 responses).
    let slots = (span.as_millis() / interval.as_millis()) as usize + 2;
    assert!(
        responses_seen <= 12 + 1 + slots,
        "{responses_seen} responses for puts over {span:?}"
    );
    assert!(f.hub.deferred_wakes_total() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_fed_less_often_is_woken_for_every_event() {
    let interval = Duration::from_millis(60);
    let f = Fixture::new(WatchOptions {
        batch_interval: interval,
        ..WatchOptions::default()
    });
    let (_stream, mut responses) = f.watch_k_from_now().await;
    // Fed every 40 ms (one and a half times per interval; sleeps never make a gap shorter):
    // never busy, so no event waits for a slot, though most come less than an interval after
    // the last wake-up.
    let writer = put_every(&f, 30, interval * 2 / 3);
    let (got, _) = read_revisions(&mut responses, 30).await;
    let (revs, _) = writer.join().unwrap();
    assert_eq!(got, revs, "every event, in order, once");
    assert_eq!(f.hub.deferred_wakes_total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_ordered_after_events_and_per_watcher_when_one_lags() {
    let f = Fixture::new(WatchOptions {
        queue_events: 4,
        ..WatchOptions::default()
    });
    let (stream, mut responses) = f.watch_k_from_now().await;
    let mut last = 0;
    for i in 0..5 {
        last = f.put(&["k"], &format!("{i}"));
    }
    f.hub.request_progress(&stream);
    // Every event up to the progress revision comes first.
    let mut seen = Vec::new();
    loop {
        let r = next(&mut responses).await;
        if r.events.is_empty() {
            assert_eq!(r.header.unwrap().revision, last);
            assert!(r.watch_id == -1 || r.watch_id == 0, "{r:?}");
            break;
        }
        seen.extend(r.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision));
    }
    assert_eq!(seen, (last - 4..=last).collect::<Vec<_>>());

    // A second stream: one watcher behind (history), one live. The live one gets its progress
    // without waiting; the lagging one only after its history. (If the history is caught up
    // before the request is handled, one `-1` response covers both, after the history.)
    let (s2, mut r2) = f.hub.open_stream(false);
    f.hub.create(&s2, &create("k", "", last + 1)); // synced (future)
    f.hub.create(&s2, &create("k", "", 1)); // unsynced
    f.hub.request_progress(&s2);
    let mut progress_for = Vec::new();
    let mut events_of_lagging = 0;
    while !(progress_for.contains(&-1) || progress_for.contains(&0) && progress_for.contains(&1)) {
        let r = next(&mut r2).await;
        if r.created {
            continue;
        }
        if r.events.is_empty() {
            assert_eq!(r.header.as_ref().unwrap().revision, last);
            progress_for.push(r.watch_id);
            if r.watch_id != 0 {
                assert_eq!(
                    events_of_lagging, 5,
                    "progress for the lagging watcher before its events"
                );
            }
        } else {
            assert_eq!(r.watch_id, 1);
            events_of_lagging += r.events.len();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_stops_reading_is_cancelled_with_a_reason() {
    let f = Fixture::new(WatchOptions {
        queue_events: 4,
        stall_timeout: Duration::from_millis(300),
        ..WatchOptions::default()
    });
    let (stream, mut responses) = f.hub.open_stream(false);
    f.hub.create(&stream, &create("k", "", 0));
    // Never read while far more responses than the channel holds pile up (spaced out, so
    // they are not merged into one catch-up response).
    for i in 0..100 {
        f.put(&["k"], &format!("{i}"));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // The stream now says why it ends, instead of the buffered events.
    expect_stall_cancel(&mut responses, 0).await;
    assert_eq!(f.hub.synced_watchers(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_reads_one_step_ahead_of_its_client_and_a_client_that_stops_is_cancelled() {
    let f = Fixture::new(WatchOptions {
        stall_timeout: Duration::from_millis(300),
        ..WatchOptions::default()
    });
    for i in 0..3000 {
        f.put(&[&format!("k{}", i % 10)], &format!("{i}"));
    }
    let (stream, mut responses) = f.hub.open_stream(false);
    f.hub.create(&stream, &create("k", "l", 1));
    let r = next(&mut responses).await;
    assert!(r.created);
    // The first step is small; take it, then stop reading.
    let r = next(&mut responses).await;
    assert_eq!(r.events.len(), CATCH_UP_FIRST_STEP);
    assert_eq!(r.events[0].kv.as_ref().unwrap().mod_revision, 2);
    assert_eq!(
        r.events[1].prev_kv, None,
        "k1's first version has no previous one"
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    {
        // Exactly one more step was read (twice as large), handed over and not taken: the
        // stream waits for the client instead of reading the history into memory.
        let st = stream.state.lock();
        let w = st.watchers.get(&0).expect("watcher");
        assert!(!w.synced);
        assert_eq!(w.next_rev, 2 + (3 * CATCH_UP_FIRST_STEP) as i64);
        assert_eq!(st.catch_up_step, 4 * CATCH_UP_FIRST_STEP);
    }
    // Still not reading: cancelled with the reason, like a live stream that stalls.
    tokio::time::sleep(Duration::from_millis(600)).await;
    expect_stall_cancel(&mut responses, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_start_is_created_then_cancelled_with_the_compact_revision() {
    let f = Fixture::new(WatchOptions::default());
    for i in 0..5 {
        f.put(&["k"], &format!("{i}"));
    }
    let mut txn = f.store.write().unwrap();
    let job = txn.compact(4).unwrap();
    txn.commit(100, false).unwrap();
    job.run().unwrap();
    let (stream, mut responses) = f.hub.open_stream(false);
    f.hub.create(&stream, &create("k", "", 2));
    let c = next(&mut responses).await;
    assert!(c.created && !c.canceled);
    let r = next(&mut responses).await;
    assert!(
        r.canceled && r.compact_revision == 4 && r.watch_id == 0,
        "{r:?}"
    );
    // Starting at the compact revision itself is fine.
    f.hub.create(&stream, &create("k", "", 4));
    assert!(next(&mut responses).await.created);
    let got = collect_events(&mut responses, 1, 3).await;
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![4, 5, 6]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_events_arrive_together_and_filters_apply() {
    let f = Fixture::new(WatchOptions::default());
    let (stream, mut responses) = f.hub.open_stream(false);
    f.hub.create(&stream, &create("a", "c", 0));
    f.hub.create(
        &stream,
        &WatchCreateRequest {
            key: b"a".to_vec(),
            range_end: b"c".to_vec(),
            filters: vec![0], // NOPUT
            ..Default::default()
        },
    );
    f.hub.create(&stream, &create("a", "", 0)); // single key
    for _ in 0..3 {
        assert!(next(&mut responses).await.created);
    }
    let rev = f.put(&["a", "b", "x"], "1");
    let mut got = HashMap::new();
    // The NOPUT watcher gets nothing for a put-only revision, and nothing empty.
    while got.len() < 2 {
        let r = next(&mut responses).await;
        assert_ne!(
            r.watch_id, 1,
            "filtered-out revision must send nothing: {r:?}"
        );
        got.insert(r.watch_id, r);
    }
    let keys = |r: &WatchResponse| {
        r.events
            .iter()
            .map(|e| e.kv.as_ref().unwrap().key.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(&got[&0]), vec![b"a".to_vec(), b"b".to_vec()]);
    assert_eq!(keys(&got[&2]), vec![b"a".to_vec()]);
    assert_eq!(got[&0].header.as_ref().unwrap().revision, rev);
}

#[test]
fn key_ranges_follow_etcd_normalisation() {
    assert_eq!(
        KeyRange::from_request(b"", b""),
        Some(KeyRange::Single(vec![0]))
    );
    assert_eq!(
        KeyRange::from_request(b"a", b"\0"),
        Some(KeyRange::From(b"a".to_vec()))
    );
    assert_eq!(KeyRange::from_request(b"b", b"a"), None);
    assert_eq!(KeyRange::from_request(b"a", b"a"), None);
    let r = KeyRange::from_request(b"a", b"c").unwrap();
    assert!(r.contains(b"a") && r.contains(b"bzz") && !r.contains(b"c"));
    assert!(KeyRange::From(b"m".to_vec()).contains(b"zz"));
    assert!(!KeyRange::From(b"m".to_vec()).contains(b"a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hasleader_stream_ends_with_unavailable_once_the_leader_is_gone_long_enough() {
    use std::sync::atomic::Ordering;
    let f = Fixture::new(WatchOptions {
        no_leader_timeout: Duration::from_millis(300),
        ..WatchOptions::default()
    });
    f.status.leader.store(2, Ordering::Relaxed);
    let (stream, mut responses) = f.hub.open_stream(true);
    f.hub.create(&stream, &create("k", "", 0));
    assert!(next(&mut responses).await.created);
    let rev = f.put(&["k"], "v");
    assert_eq!(
        collect_events(&mut responses, 0, 1).await,
        vec![(rev, b"v".to_vec())]
    );
    // A leaderless moment shorter than the timeout changes nothing.
    f.status.leader.store(0, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(150)).await;
    f.status.leader.store(2, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let rev = f.put(&["k"], "w");
    assert_eq!(
        collect_events(&mut responses, 0, 1).await,
        vec![(rev, b"w".to_vec())]
    );
    // Gone for longer: the stream fails with etcd's error and the watcher is forgotten.
    let lost = std::time::Instant::now();
    f.status.leader.store(0, Ordering::Relaxed);
    let end = tokio::time::timeout(Duration::from_secs(5), responses.next())
        .await
        .expect("the stream ends within 5 s");
    let status = end.expect("an item").expect_err("an error status");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.message(), "etcdserver: no leader");
    assert!(
        lost.elapsed() >= Duration::from_millis(300),
        "{:?}",
        lost.elapsed()
    );
    assert!(responses.next().await.is_none(), "nothing after the error");
    assert_eq!(f.hub.synced_watchers(), 0);
}

/// Revisions queued before the client asks for more go out as one response per watcher, in
/// order and with no revision split; a fragmenting watcher keeps one response per revision, and
/// nothing is merged across a control response (here a progress answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_revisions_merge_per_watcher_but_not_across_a_control_response() {
    let f = Fixture::new(WatchOptions::default());
    let (stream, mut responses) = f.hub.open_stream(false);
    f.hub.create(&stream, &create("a", "c", 0)); // 0: range
    f.hub.create(&stream, &create("a", "", 0)); // 1: single key
    let mut frag = create("a", "c", 0);
    frag.fragment = true;
    f.hub.create(&stream, &frag); // 2: fragmenting
    for _ in 0..3 {
        assert!(next(&mut responses).await.created);
    }
    // Nothing is read while these are published.
    let r1 = f.put(&["a", "b"], "1");
    let r2 = f.put(&["b"], "2");
    let r3 = f.put(&["a"], "3");
    f.hub.request_progress(&stream);
    let r4 = f.put(&["a"], "4");

    // (watch id, header revision, events as (key, revision)), in arrival order.
    type Events = Vec<(Vec<u8>, i64)>;
    type Got = (i64, i64, Events);
    let mut all: Vec<Got> = Vec::new();
    while all.len() < 9 {
        let r = next(&mut responses).await;
        assert!(!r.canceled, "{r:?}");
        let evs = r
            .events
            .iter()
            .map(|e| {
                let kv = e.kv.as_ref().unwrap();
                (kv.key.clone(), kv.mod_revision)
            })
            .collect();
        all.push((r.watch_id, r.header.unwrap().revision, evs));
    }
    let of = |w: i64| -> Vec<(i64, Events)> {
        all.iter()
            .filter(|g| g.0 == w)
            .map(|g| (g.1, g.2.clone()))
            .collect()
    };
    let k = |s: &str, r: i64| (s.as_bytes().to_vec(), r);
    assert_eq!(
        of(0),
        vec![
            (r3, vec![k("a", r1), k("b", r1), k("b", r2), k("a", r3)]),
            (r4, vec![k("a", r4)]),
        ]
    );
    assert_eq!(
        of(1),
        vec![(r3, vec![k("a", r1), k("a", r3)]), (r4, vec![k("a", r4)])]
    );
    assert_eq!(
        of(2),
        vec![
            (r1, vec![k("a", r1), k("b", r1)]),
            (r2, vec![k("b", r2)]),
            (r3, vec![k("a", r3)]),
            (r4, vec![k("a", r4)]),
        ]
    );
    // The progress answer (watch id -1, at r3) comes after every event up to r3 and before r4's.
    assert_eq!(of(-1), vec![(r3, vec![])]);
    let progress_at = all.iter().position(|g| g.0 == -1).unwrap();
    for (i, g) in all.iter().enumerate() {
        if g.0 >= 0 {
            assert_eq!(g.1 == r4, i > progress_at, "{all:?}");
        }
    }
}

#[tokio::test]
async fn busy_streams_on_one_connection_share_their_wake_up_grid() {
    let f = Fixture::new(WatchOptions::default());
    let pacer = f.hub.pacer.as_ref().expect("batching is on by default");
    let (a, _ra) = f.hub.open_stream_on(false, Some(7));
    let (b, _rb) = f.hub.open_stream_on(false, Some(7));
    let (c, _rc) = f.hub.open_stream_on(false, Some(8));
    let (d, _rd) = f.hub.open_stream(false);
    let (e, _re) = f.hub.open_stream(false);
    let now = Instant::now();
    let slot = |s: &StreamShared| pacer.next_slot(s.phase_key, now);
    // A connection's streams are woken together, so their responses leave in one write.
    assert_eq!(slot(&a), slot(&b));
    // Other connections' streams, and streams whose connection is not known, keep phases of
    // their own, spread over the interval.
    assert_ne!(slot(&a), slot(&c));
    assert_ne!(slot(&d), slot(&e));
    assert_ne!(slot(&a), slot(&d));
}

/// Writes `revs` to a copy of `f`'s store (made with `export_snapshot`, opened as a store of
/// its own, so `f`'s watchers see none of it), compacts the copy at `compact` if given, and
/// returns the copy's export, ready to install, and every event of the copy from `from` on
/// (with previous values).
fn store_ahead(
    f: &Fixture,
    from: i64,
    revs: &[&[(&str, Option<&str>)]],
    compact: Option<i64>,
) -> (std::path::PathBuf, Vec<ballast_mvcc::Event>) {
    let dir = f._dir.path();
    let copy_path = dir.join("copy.db");
    f.store.export_snapshot(&copy_path).unwrap();
    let copy = Store::open(&copy_path, StoreOptions::default()).unwrap();
    for ops in revs {
        let mut txn = copy.write().unwrap();
        for (k, v) in *ops {
            match v {
                Some(v) => txn.put(k.as_bytes(), v.as_bytes(), 0).map(drop),
                None => txn.delete_range(k.as_bytes(), b"").map(drop),
            }
            .unwrap();
        }
        txn.end();
        let job = match compact {
            Some(c) if txn.revision() == c => Some(txn.compact(c).unwrap()),
            _ => None,
        };
        let index = copy.applied_index() + 1;
        txn.commit(index, false).unwrap();
        if let Some(job) = job {
            job.run().unwrap();
        }
    }
    let expected = copy
        .read()
        .unwrap()
        .events(from, i64::MAX, usize::MAX, true)
        .unwrap()
        .0;
    let snap = dir.join("copy.snap.db");
    copy.export_snapshot(&snap).unwrap();
    (snap, expected)
}

/// An event as a test compares it: (revision, key, put?, previous value).
type Seen = (i64, Vec<u8>, bool, Option<Vec<u8>>);

fn seen(e: &ballast_proto::mvccpb::Event) -> Seen {
    let kv = e.kv.as_ref().unwrap();
    (
        kv.mod_revision,
        kv.key.clone(),
        e.r#type == 0,
        e.prev_kv.as_ref().map(|p| p.value.clone()),
    )
}

/// Reads `s` until every watcher in `want` has received its events; fails on a cancel or an
/// event nobody expects.
async fn expect_events(s: &mut WatchResponseStream, want: &HashMap<i64, Vec<Seen>>) {
    let mut got: HashMap<i64, Vec<Seen>> = want.keys().map(|w| (*w, Vec::new())).collect();
    while got.iter().any(|(w, g)| g.len() < want[w].len()) {
        let r = next(s).await;
        assert!(!r.canceled, "unexpected cancel {r:?}");
        let g = got
            .get_mut(&r.watch_id)
            .unwrap_or_else(|| panic!("events for watch {}: {r:?}", r.watch_id));
        g.extend(r.events.iter().map(seen));
        assert!(g.len() <= want[&r.watch_id].len(), "too many events: {r:?}");
    }
    assert_eq!(&got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_snapshot_install_watchers_get_exactly_the_revisions_they_had_not_seen() {
    let f = Fixture::new(WatchOptions::default());
    let (s1, mut r1) = f.hub.open_stream(false);
    f.hub.create(&s1, &create("k", "", 0)); // 0: one key
    f.hub.create(&s1, &create("a", "m", 0)); // 1: a range
    let (s2, mut r2) = f.hub.open_stream(false);
    f.hub.create(&s2, &create("", "\0", 0)); // 0: every key
    f.hub.create(&s2, &create("k", "", 10)); // 1: from a revision only the new store has
    f.hub.create(&s2, &create("k", "", 50)); // 2: from past the new store's revision
    for _ in 0..2 {
        assert!(next(&mut r1).await.created);
    }
    for _ in 0..3 {
        assert!(next(&mut r2).await.created);
    }
    // Revisions 2..=5 on store A, delivered live.
    let put_a = [
        f.put(&["k"], "a2"),
        f.put(&["a"], "a3"),
        f.put(&["k", "b"], "a4"),
        f.put(&["z"], "a5"),
    ];
    assert_eq!(put_a, [2, 3, 4, 5]);
    expect_events(
        &mut r1,
        &HashMap::from([
            (
                0,
                vec![
                    (2, b"k".to_vec(), true, None),
                    (4, b"k".to_vec(), true, Some(b"a2".to_vec())),
                ],
            ),
            (
                1,
                vec![
                    (2, b"k".to_vec(), true, None),
                    (3, b"a".to_vec(), true, None),
                    (4, b"k".to_vec(), true, Some(b"a2".to_vec())),
                    (4, b"b".to_vec(), true, None),
                ],
            ),
        ]),
    )
    .await;
    expect_events(
        &mut r2,
        &HashMap::from([(
            0,
            vec![
                (2, b"k".to_vec(), true, None),
                (3, b"a".to_vec(), true, None),
                (4, b"k".to_vec(), true, Some(b"a2".to_vec())),
                (4, b"b".to_vec(), true, None),
                (5, b"z".to_vec(), true, None),
            ],
        )]),
    )
    .await;
    assert_eq!(f.hub.synced_watchers(), 5);

    // Store B: A plus revisions 6..=12 (puts, a delete, several keys in one revision).
    let (snap, b_events) = store_ahead(
        &f,
        6,
        &[
            &[("k", Some("b6"))],
            &[("c", Some("b7")), ("k", Some("b7"))],
            &[("a", None)],
            &[("x", Some("b9"))],
            &[("k", Some("b10"))],
            &[("b", Some("b11")), ("z", Some("b11"))],
            &[("k", None)],
        ],
        None,
    );
    let matching = |range: KeyRange, from: i64| -> Vec<Seen> {
        b_events
            .iter()
            .filter(|e| e.kv.mod_revision >= from && range.contains(&e.kv.key))
            .map(|e| {
                (
                    e.kv.mod_revision,
                    e.kv.key.clone(),
                    e.kind == ballast_mvcc::EventKind::Put,
                    e.prev_kv.as_ref().map(|p| p.value.clone()),
                )
            })
            .collect()
    };
    let single = KeyRange::Single(b"k".to_vec());
    let want1 = HashMap::from([
        (0, matching(single.clone(), 6)),
        (
            1,
            matching(KeyRange::Range(b"a".to_vec(), b"m".to_vec()), 6),
        ),
    ]);
    let want2 = HashMap::from([
        (0, matching(KeyRange::From(vec![0]), 6)),
        (1, matching(single, 10)),
    ]);
    // Sanity of the expectations themselves: 6..=12 for every key, the delete of k last.
    assert_eq!(
        want2[&0].iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![6, 7, 7, 8, 9, 10, 11, 11, 12]
    );
    assert_eq!(
        want1[&0].last(),
        Some(&(12, b"k".to_vec(), false, Some(b"b10".to_vec())))
    );
    // The clients are waiting (their response streams idle) when the store is replaced: the
    // hub must wake their streams.
    let reader = |mut r: WatchResponseStream, want: HashMap<i64, Vec<Seen>>| {
        tokio::spawn(async move {
            expect_events(&mut r, &want).await;
            r
        })
    };
    let (read1, read2) = (reader(r1, want1), reader(r2, want2));
    tokio::time::sleep(Duration::from_millis(50)).await;
    f.store.install_snapshot(&snap).unwrap();
    assert_eq!(f.store.current_revision(), 12);
    f.hub.resync_all(f.store.current_revision());
    assert_eq!(f.hub.revision(), 12);
    let (mut r1, mut r2) = (read1.await.unwrap(), read2.await.unwrap());

    // All caught up: back in the synced set, and the next revision arrives once, alone.
    tokio::time::timeout(Duration::from_secs(5), async {
        while f.hub.synced_watchers() < 5 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("watchers rejoin the synced set");
    f.index
        .store(f.store.applied_index(), std::sync::atomic::Ordering::SeqCst);
    let rev = f.put(&["k"], "after");
    assert_eq!(rev, 13);
    let after = vec![(13, b"k".to_vec(), true, None)];
    expect_events(
        &mut r1,
        &HashMap::from([(0, after.clone()), (1, after.clone())]),
    )
    .await;
    expect_events(
        &mut r2,
        &HashMap::from([(0, after.clone()), (1, after.clone())]),
    )
    .await;
    // The watcher waiting for revision 50 stayed synced (made unsynced, it could not
    // rejoin before revision 49 is published).
    let st = s2.state.lock();
    let w = &st.watchers[&2];
    assert!(
        w.synced && w.next_rev == 50,
        "the future watcher still waits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_installing_a_compacted_store_a_watcher_behind_it_is_cancelled() {
    let f = Fixture::new(WatchOptions::default());
    let (s, mut r) = f.hub.open_stream(false);
    f.hub.create(&s, &create("k", "", 0)); // 0: next revision 6 once A is at 5
    f.hub.create(&s, &create("k", "", 9)); // 1: from the compact revision
    f.hub.create(&s, &create("k", "", 11)); // 2: from above it
    for _ in 0..3 {
        assert!(next(&mut r).await.created);
    }
    for i in 2..=5 {
        assert_eq!(f.put(&["k"], &format!("a{i}")), i);
    }
    let got = collect_events(&mut r, 0, 4).await;
    assert_eq!(
        got.iter().map(|g| g.0).collect::<Vec<_>>(),
        vec![2, 3, 4, 5]
    );

    let revs: Vec<String> = (6..=12).map(|i| format!("b{i}")).collect();
    let ops: Vec<[(&str, Option<&str>); 1]> =
        revs.iter().map(|v| [("k", Some(v.as_str()))]).collect();
    let ops: Vec<&[(&str, Option<&str>)]> = ops.iter().map(|o| o.as_slice()).collect();
    let (snap, _) = store_ahead(&f, 9, &ops, Some(9));
    f.store.install_snapshot(&snap).unwrap();
    assert_eq!(
        (f.store.current_revision(), f.store.compact_revision()),
        (12, 9)
    );
    f.hub.resync_all(12);

    // Watcher 0 is cancelled with the compact revision, as etcd does; 1 and 2 get their
    // revisions. (Responses of different watchers may interleave.)
    let mut events: HashMap<i64, Vec<i64>> = HashMap::new();
    let mut cancelled = None;
    while cancelled.is_none()
        || events.get(&1).map_or(0, Vec::len) < 4
        || events.get(&2).map_or(0, Vec::len) < 2
    {
        let resp = next(&mut r).await;
        if resp.canceled {
            assert!(cancelled.is_none(), "{resp:?}");
            cancelled = Some(resp);
            continue;
        }
        events.entry(resp.watch_id).or_default().extend(
            resp.events
                .iter()
                .map(|e| e.kv.as_ref().unwrap().mod_revision),
        );
    }
    let c = cancelled.unwrap();
    assert_eq!((c.watch_id, c.compact_revision), (0, 9), "{c:?}");
    assert!(!events.contains_key(&0), "{events:?}");
    assert_eq!(events[&1], vec![9, 10, 11, 12]);
    assert_eq!(events[&2], vec![11, 12]);
    assert!(!s.state.lock().watchers.contains_key(&0));
}
