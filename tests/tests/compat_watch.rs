//! Watch compatibility: the same watch scripts against a reference etcd 3.4 and the candidate
//! (Ballast, or a second etcd with `BALLAST_COMPAT_SELFTEST=1`), every stream's responses normalized
//! and compared watcher by watcher (see `tests/watch_script.rs` for what normalization ignores and
//! why). The `expect` lines pin down what etcd 3.4 sends, so every case keeps testing what it claims.
//! `BALLAST_COMPAT_DUMP=1` prints the reference's transcripts.
//!
//! Both servers run with `--experimental-watch-progress-notify-interval=200ms` (the spelling etcd 3.4
//! accepts; Ballast takes it as an alias of `--watch-progress-notify-interval`) and
//! `--max-request-bytes=65536`, so progress notifications come quickly and a response fragments
//! above 64 KiB + 512 KiB (etcd's gRPC overhead allowance).
//!
//! Keys and revisions in the expectations are relative to each script's prefix and base revision
//! (`r+3` = three revisions after the script started).

#[path = "../watch_script.rs"]
mod watch_script;

use ballast_proto::etcdserverpb::compare::CompareResult;
use ballast_proto::etcdserverpb::watch_create_request::FilterType;
use ballast_proto::etcdserverpb::WatchCreateRequest;
use ballast_testkit::{compat_pair_with, ServerOptions};
use ballast_tests::script::*;
use watch_script::{Until, WatchRunner, WatchScript};

/// `--max-request-bytes` of both servers.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

fn server_options() -> ServerOptions {
    ServerOptions {
        extra_args: vec![
            "--experimental-watch-progress-notify-interval=200ms".to_owned(),
            format!("--max-request-bytes={MAX_REQUEST_BYTES}"),
        ],
        ..ServerOptions::default()
    }
}

async fn run(scripts: Vec<WatchScript>) {
    let pair = compat_pair_with(server_options());
    let mut runner = WatchRunner::connect(&pair).await;
    runner.run_all(&scripts).await;
}

/// Builder for a [`WatchCreateRequest`].
#[derive(Clone, Debug)]
struct W(WatchCreateRequest);

/// Watch the single key `key`.
fn w(key: impl AsRef<[u8]>) -> W {
    W(WatchCreateRequest {
        key: key.as_ref().to_vec(),
        ..Default::default()
    })
}

impl W {
    fn end(mut self, end: impl AsRef<[u8]>) -> W {
        self.0.range_end = end.as_ref().to_vec();
        self
    }
    fn prefix(mut self) -> W {
        self.0.range_end = prefix_end(&self.0.key);
        self
    }
    /// Every key `>= key` (`range_end = "\0"`).
    fn and_above(self) -> W {
        self.end([0])
    }
    fn rev(mut self, rev: i64) -> W {
        self.0.start_revision = rev;
        self
    }
    fn prev_kv(mut self) -> W {
        self.0.prev_kv = true;
        self
    }
    fn filter(mut self, f: i32) -> W {
        self.0.filters.push(f);
        self
    }
    fn noput(self) -> W {
        self.filter(FilterType::Noput as i32)
    }
    fn nodelete(self) -> W {
        self.filter(FilterType::Nodelete as i32)
    }
    fn progress_notify(mut self) -> W {
        self.0.progress_notify = true;
        self
    }
    fn id(mut self, id: i64) -> W {
        self.0.watch_id = id;
        self
    }
    fn fragment(mut self) -> W {
        self.0.fragment = true;
        self
    }
}

impl From<W> for WatchCreateRequest {
    fn from(w: W) -> WatchCreateRequest {
        w.0
    }
}

// ------------------------------------------------------------------------------------------------
// Ranges and events
// ------------------------------------------------------------------------------------------------

fn range_scripts() -> Vec<WatchScript> {
    vec![
        WatchScript::new("single key: create (version 1), update, delete", |s| {
            let (a, b) = (s.k("a"), s.k("b"));
            s.create(0, w(&a)).wait_created(0, 1);
            s.kv(put(&a, "1"))
                .kv(put(&a, "2"))
                .kv(put(&b, "x"))
                .kv(del(&a));
            s.wait_event(0, "auto#0", 4);
            s.expect(
                0,
                "auto#0",
                &[
                    "created rev=r+0",
                    "events rev=r+4 [PUT a=1 c=r+1 m=r+1 v=1; PUT a=2 c=r+1 m=r+2 v=2; DELETE a m=r+4]",
                ],
            );
        }),
        WatchScript::new("prefix, from-key, [key, end), everything, empty key", |s| {
            let (p, m, b, d) = (s.k("p/"), s.k("m"), s.k("b"), s.k("d"));
            s.create(0, w(&p).prefix())
                .create(0, w(&m).and_above())
                .create(0, w(&b).end(&d))
                .create(0, w([0]).and_above())
                .create(0, w(b"").end([0]))
                .create(0, w(b""))
                .wait_created(0, 6);
            for name in ["p/1", "p/2", "a", "b", "c", "d", "m", "z", "p"] {
                let k = s.k(name);
                s.kv(put(k, name));
            }
            s.kv(del(&p).prefix());
            s.wait_event(0, "auto#0", 10)
                .wait_event(0, "auto#1", 10)
                .wait_event(0, "auto#2", 5)
                .wait_event(0, "auto#3", 10)
                .wait_event(0, "auto#4", 10);
            s.expect(0, "auto#0", &[
                "created rev=r+0",
                "events rev=r+10 [PUT p/1=p/1 c=r+1 m=r+1 v=1; PUT p/2=p/2 c=r+2 m=r+2 v=1; DELETE p/1 m=r+10; DELETE p/2 m=r+10]",
            ]);
            s.expect(0, "auto#1", &[
                "created rev=r+0",
                "events rev=r+10 [PUT p/1=p/1 c=r+1 m=r+1 v=1; PUT p/2=p/2 c=r+2 m=r+2 v=1; PUT m=m c=r+7 m=r+7 v=1; \
                 PUT z=z c=r+8 m=r+8 v=1; PUT p=p c=r+9 m=r+9 v=1; DELETE p/1 m=r+10; DELETE p/2 m=r+10]",
            ]);
            s.expect(
                0,
                "auto#2",
                &[
                    "created rev=r+0",
                    "events rev=r+5 [PUT b=b c=r+4 m=r+4 v=1; PUT c=c c=r+5 m=r+5 v=1]",
                ],
            );
            // Every key (`key = "\0"` or empty, `range_end = "\0"`): all 11 events of the script.
            let everything =
                "events rev=r+10 n=11 [PUT p/1=p/1 c=r+1 m=r+1 v=1 ... DELETE p/2 m=r+10] \
                              digest=3383b2c779f1b830";
            s.expect(0, "auto#3", &["created rev=r+0", everything]);
            s.expect(0, "auto#4", &["created rev=r+0", everything]);
            // An empty key without range_end is the single key "\0".
            s.expect(0, "auto#5", &["created rev=r+0"]);
        }),
        WatchScript::new(
            "txn: a revision's events arrive together, in op order",
            |s| {
                let (a, b, c, all, missing) =
                    (s.k("a"), s.k("b"), s.k("c"), s.k(""), s.k("missing"));
                s.kv(put(&c, "c0"));
                s.create(0, w(&all).prefix())
                    .create(0, w(&b))
                    .create(0, w(&all).prefix().prev_kv())
                    .wait_created(0, 3);
                s.kv(txn().then(put(&b, "b1")).then(put(&a, "a1")).then(del(&c)));
                s.kv(txn()
                    .when(cmp(&a).value(CompareResult::Equal, "nope"))
                    .then(put(&a, "unused"))
                    .otherwise(put(&c, "c2"))
                    .otherwise(range(&a))
                    .otherwise(txn().then(put(&b, "b2"))));
                // A txn that changes nothing makes no event.
                s.kv(txn().then(range(&a)).then(del(&missing)));
                s.kv(put(&a, "a3"));
                s.wait_event(0, "auto#0", 4)
                    .wait_event(0, "auto#1", 3)
                    .wait_event(0, "auto#2", 4);
                s.expect(0, "auto#0", &[
                "created rev=r+1",
                "events rev=r+4 [PUT b=b1 c=r+2 m=r+2 v=1; PUT a=a1 c=r+2 m=r+2 v=1; DELETE c m=r+2; \
                 PUT c=c2 c=r+3 m=r+3 v=1; PUT b=b2 c=r+2 m=r+3 v=2; PUT a=a3 c=r+2 m=r+4 v=2]",
            ]);
                s.expect(
                    0,
                    "auto#1",
                    &[
                        "created rev=r+1",
                        "events rev=r+3 [PUT b=b1 c=r+2 m=r+2 v=1; PUT b=b2 c=r+2 m=r+3 v=2]",
                    ],
                );
                s.expect(
                    0,
                    "auto#2",
                    &[
                        "created rev=r+1",
                        "events rev=r+4 [PUT b=b1 c=r+2 m=r+2 v=1; PUT a=a1 c=r+2 m=r+2 v=1; \
                 DELETE c m=r+2 prev=(c=c0 c=r+1 m=r+1 v=1); PUT c=c2 c=r+3 m=r+3 v=1; \
                 PUT b=b2 c=r+2 m=r+3 v=2 prev=(b=b1 c=r+2 m=r+2 v=1); \
                 PUT a=a3 c=r+2 m=r+4 v=2 prev=(a=a1 c=r+2 m=r+2 v=1)]",
                    ],
                );
            },
        ),
        WatchScript::new("many watchers on one stream", |s| {
            let keys: Vec<Vec<u8>> = (0..20).map(|i| s.k(&format!("k{i:02}"))).collect();
            let k = s.k("k");
            for key in &keys {
                s.create(0, w(key));
            }
            s.create(0, w(&k).prefix().prev_kv());
            s.wait_created(0, 21);
            for (i, key) in keys.iter().enumerate() {
                s.kv(put(key, format!("v{i}")));
            }
            s.kv(del(&k).prefix());
            for i in 0..20 {
                s.wait_event(0, &format!("auto#{i}"), 21);
            }
            s.wait_event(0, "auto#20", 21);
            for i in 0..20 {
                let line = format!(
                    "events rev=r+21 [PUT k{i:02}=v{i} c=r+{n} m=r+{n} v=1; DELETE k{i:02} m=r+21]",
                    n = i + 1
                );
                s.expect(0, &format!("auto#{i}"), &["created rev=r+0", &line]);
            }
            s.expect(
                0,
                "auto#20",
                &[
                    "created rev=r+0",
                    "events rev=r+21 n=40 [PUT k00=v0 c=r+1 m=r+1 v=1 ... \
                 DELETE k19 m=r+21 prev=(k19=v19 c=r+20 m=r+20 v=1)] digest=291478c6777d7cb3",
                ],
            );
        }),
    ]
}

#[tokio::test]
async fn ranges_and_events() {
    run(range_scripts()).await;
}

fn lease_scripts() -> Vec<WatchScript> {
    vec![WatchScript::new("lease in events, revoke deletes", |s| {
        let (a, b, all) = (s.k("a"), s.k("b"), s.k(""));
        s.create(0, w(&all).prefix().prev_kv()).wait_created(0, 1);
        s.kv(lease_grant(0x7a57_0001, 60));
        s.kv(put(&a, "leased").lease(0x7a57_0001));
        s.kv(put(&b, "leased too").lease(0x7a57_0001));
        s.kv(lease_revoke(0x7a57_0001));
        s.wait_event(0, "auto#0", 3);
        s.expect(
            0,
            "auto#0",
            &[
                "created rev=r+0",
                "events rev=r+3 [PUT a=leased c=r+1 m=r+1 v=1 lease=7a570001; \
                 PUT b=leased too c=r+2 m=r+2 v=1 lease=7a570001; \
                 DELETE a m=r+3 prev=(a=leased c=r+1 m=r+1 v=1 lease=7a570001); \
                 DELETE b m=r+3 prev=(b=leased too c=r+2 m=r+2 v=1 lease=7a570001)]",
            ],
        );
    })]
}

#[tokio::test]
async fn leases_in_events() {
    run(lease_scripts()).await;
}

// ------------------------------------------------------------------------------------------------
// Start revision, prev_kv, filters
// ------------------------------------------------------------------------------------------------

fn history_scripts() -> Vec<WatchScript> {
    vec![
        WatchScript::new("start_revision: past (replay), now, future", |s| {
            let (a, other, all) = (s.k("a"), s.k("other"), s.k(""));
            let (r1, r2, r3, r8) = (s.rev(1), s.rev(2), s.rev(3), s.rev(8));
            s.kv(put(&a, "1"))
                .kv(put(&a, "2"))
                .kv(del(&a))
                .kv(put(&a, "3"));
            s.kv(put(&other, "o"));
            s.create(0, w(&a).rev(r1))
                .create(0, w(&a).rev(r3))
                .create(0, w(&all).prefix().rev(r2))
                .create(0, w(&a))
                .create(0, w(&a).rev(r8))
                .wait_created(0, 5);
            s.wait_event(0, "auto#0", 4)
                .wait_event(0, "auto#1", 4)
                .wait_event(0, "auto#2", 5);
            s.kv(put(&a, "6"))
                .kv(put(&a, "7"))
                .kv(put(&a, "8"))
                .kv(put(&a, "9"));
            s.wait_event(0, "auto#3", 9).wait_event(0, "auto#4", 9);
            // Replays come with the creation revision r+5, live events follow.
            s.expect(0, "auto#0", &[
                "created rev=r+5",
                "events rev=r+9 [PUT a=1 c=r+1 m=r+1 v=1; PUT a=2 c=r+1 m=r+2 v=2; DELETE a m=r+3; \
                 PUT a=3 c=r+4 m=r+4 v=1; PUT a=6 c=r+4 m=r+6 v=2; PUT a=7 c=r+4 m=r+7 v=3; \
                 PUT a=8 c=r+4 m=r+8 v=4; PUT a=9 c=r+4 m=r+9 v=5]",
            ]);
            s.expect(0, "auto#1", &[
                "created rev=r+5",
                "events rev=r+9 [DELETE a m=r+3; PUT a=3 c=r+4 m=r+4 v=1; PUT a=6 c=r+4 m=r+6 v=2; \
                 PUT a=7 c=r+4 m=r+7 v=3; PUT a=8 c=r+4 m=r+8 v=4; PUT a=9 c=r+4 m=r+9 v=5]",
            ]);
            s.expect(0, "auto#2", &[
                "created rev=r+5",
                "events rev=r+9 [PUT a=2 c=r+1 m=r+2 v=2; DELETE a m=r+3; PUT a=3 c=r+4 m=r+4 v=1; \
                 PUT other=o c=r+5 m=r+5 v=1; PUT a=6 c=r+4 m=r+6 v=2; PUT a=7 c=r+4 m=r+7 v=3; \
                 PUT a=8 c=r+4 m=r+8 v=4; PUT a=9 c=r+4 m=r+9 v=5]",
            ]);
            // start_revision 0: from the creation revision + 1.
            s.expect(
                0,
                "auto#3",
                &[
                    "created rev=r+5",
                    "events rev=r+9 [PUT a=6 c=r+4 m=r+6 v=2; PUT a=7 c=r+4 m=r+7 v=3; \
                 PUT a=8 c=r+4 m=r+8 v=4; PUT a=9 c=r+4 m=r+9 v=5]",
                ],
            );
            // A future start revision: nothing before it.
            s.expect(
                0,
                "auto#4",
                &[
                    "created rev=r+5",
                    "events rev=r+9 [PUT a=8 c=r+4 m=r+8 v=4; PUT a=9 c=r+4 m=r+9 v=5]",
                ],
            );
        }),
        WatchScript::new("start_revision: replay from the start of history", |s| {
            let a = s.k("a");
            s.kv(put(&a, "1"));
            s.create(0, w(&a).rev(1))
                .wait_created(0, 1)
                .wait_event(0, "auto#0", 1);
            s.expect(
                0,
                "auto#0",
                &[
                    "created rev=r+1",
                    "events rev=r+1 [PUT a=1 c=r+1 m=r+1 v=1]",
                ],
            );
        }),
        WatchScript::new("prev_kv: live and replayed", |s| {
            let (a, b, all, r1) = (s.k("a"), s.k("b"), s.k(""), s.rev(1));
            s.create(0, w(&all).prefix().prev_kv()).wait_created(0, 1);
            s.kv(put(&a, "1"))
                .kv(put(&a, "2"))
                .kv(del(&a))
                .kv(put(&a, "3"));
            s.kv(put(&b, "b1")).kv(put(&b, "").ignore_value());
            s.wait_event(0, "auto#0", 6);
            s.create(1, w(&all).prefix().prev_kv().rev(r1))
                .create(1, w(&all).prefix().rev(r1))
                .wait_created(1, 2)
                .wait_event(1, "auto#0", 6)
                .wait_event(1, "auto#1", 6);
            // No prev_kv on creations; the old value on updates and deletes, live or replayed.
            let with_prev = "events rev=r+6 [PUT a=1 c=r+1 m=r+1 v=1; \
                             PUT a=2 c=r+1 m=r+2 v=2 prev=(a=1 c=r+1 m=r+1 v=1); \
                             DELETE a m=r+3 prev=(a=2 c=r+1 m=r+2 v=2); PUT a=3 c=r+4 m=r+4 v=1; \
                             PUT b=b1 c=r+5 m=r+5 v=1; PUT b=b1 c=r+5 m=r+6 v=2 prev=(b=b1 c=r+5 m=r+5 v=1)]";
            s.expect(0, "auto#0", &["created rev=r+0", with_prev]);
            s.expect(1, "auto#0", &["created rev=r+6", with_prev]);
            s.expect(1, "auto#1", &[
                "created rev=r+6",
                "events rev=r+6 [PUT a=1 c=r+1 m=r+1 v=1; PUT a=2 c=r+1 m=r+2 v=2; DELETE a m=r+3; \
                 PUT a=3 c=r+4 m=r+4 v=1; PUT b=b1 c=r+5 m=r+5 v=1; PUT b=b1 c=r+5 m=r+6 v=2]",
            ]);
        }),
        WatchScript::new("filters: NOPUT, NODELETE, both, unknown", |s| {
            let (a, b, r1) = (s.k("a"), s.k("b"), s.rev(1));
            s.create(0, w(&a).noput())
                .create(0, w(&a).nodelete())
                .create(0, w(&a).noput().nodelete())
                .create(0, w(&a).filter(7))
                .create(0, w(&a).rev(r1).noput())
                .wait_created(0, 5);
            s.kv(put(&a, "1")).kv(del(&a)).kv(put(&a, "2"));
            s.kv(txn().then(put(&a, "3")).then(put(&b, "b")));
            s.kv(txn().then(del(&a)).then(del(&b)));
            s.wait_event(0, "auto#0", 5)
                .wait_event(0, "auto#1", 4)
                .wait_event(0, "auto#3", 5)
                .wait_event(0, "auto#4", 5);
            let deletes = "events rev=r+5 [DELETE a m=r+2; DELETE a m=r+5]";
            s.expect(0, "auto#0", &["created rev=r+0", deletes]);
            s.expect(0, "auto#1", &[
                "created rev=r+0",
                "events rev=r+4 [PUT a=1 c=r+1 m=r+1 v=1; PUT a=2 c=r+3 m=r+3 v=1; PUT a=3 c=r+3 m=r+4 v=2]",
            ]);
            s.expect(0, "auto#2", &["created rev=r+0"]);
            // Unknown filter values are ignored.
            s.expect(0, "auto#3", &[
                "created rev=r+0",
                "events rev=r+5 [PUT a=1 c=r+1 m=r+1 v=1; DELETE a m=r+2; PUT a=2 c=r+3 m=r+3 v=1; \
                 PUT a=3 c=r+3 m=r+4 v=2; DELETE a m=r+5]",
            ]);
            s.expect(0, "auto#4", &["created rev=r+0", deletes]);
        }),
    ]
}

#[tokio::test]
async fn start_revision_prev_kv_filters() {
    run(history_scripts()).await;
}

// ------------------------------------------------------------------------------------------------
// Control: cancel, ids, invalid ranges, progress
// ------------------------------------------------------------------------------------------------

fn control_scripts() -> Vec<WatchScript> {
    vec![
        WatchScript::new("cancel; cancel of an unknown id; cancel twice", |s| {
            let a = s.k("a");
            s.create(0, w(&a)).create(0, w(&a)).wait_created(0, 2);
            s.kv(put(&a, "1"))
                .wait_event(0, "auto#0", 1)
                .wait_event(0, "auto#1", 1);
            s.cancel_label(0, "auto#0");
            s.wait(0, Until::Canceled("auto#0".into()));
            s.cancel(0, 987_654).cancel(0, -1).quiet(200);
            s.kv(put(&a, "2")).wait_event(0, "auto#1", 2);
            s.cancel_label(0, "auto#1")
                .wait(0, Until::Canceled("auto#1".into()));
            s.kv(put(&a, "3"));
            // The cancel response carries the current revision; unknown ids get no answer.
            s.expect(
                0,
                "auto#0",
                &[
                    "created rev=r+0",
                    "events rev=r+1 [PUT a=1 c=r+1 m=r+1 v=1]",
                    "canceled rev=r+1",
                ],
            );
            s.expect(
                0,
                "auto#1",
                &[
                    "created rev=r+0",
                    "events rev=r+2 [PUT a=1 c=r+1 m=r+1 v=1; PUT a=2 c=r+1 m=r+2 v=2]",
                    "canceled rev=r+2",
                ],
            );
            s.expect(0, "stream", &[]);
        }),
        WatchScript::new(
            "client-chosen watch ids; duplicate id; reuse after cancel",
            |s| {
                let a = s.k("a");
                s.create(0, w(&a).id(7))
                    .create(0, w(&a).id(7))
                    .create(0, w(&a).id(1 << 40))
                    .wait_created(0, 3);
                s.kv(put(&a, "1")).wait_event(0, "id=7", 1).wait_event(
                    0,
                    &format!("id={}", 1i64 << 40),
                    1,
                );
                s.cancel(0, 7).wait(0, Until::Canceled("id=7".into()));
                s.create(0, w(&a).id(7).prev_kv()).wait_created(0, 4);
                s.kv(put(&a, "2")).wait_event(0, "id=7", 2);
                s.expect(
                    0,
                    "id=7",
                    &[
                        "created rev=r+0",
                        "events rev=r+1 [PUT a=1 c=r+1 m=r+1 v=1]",
                        "canceled rev=r+1",
                        "created rev=r+1",
                        "events rev=r+2 [PUT a=2 c=r+1 m=r+2 v=2 prev=(a=1 c=r+1 m=r+1 v=1)]",
                    ],
                );
                s.expect(
                    0,
                    "id=1099511627776",
                    &[
                        "created rev=r+0",
                        "events rev=r+2 [PUT a=1 c=r+1 m=r+1 v=1; PUT a=2 c=r+1 m=r+2 v=2]",
                    ],
                );
                s.expect(0, "stream", &[
                "created+canceled rev=r+0 reason=\"mvcc: duplicate watch ID provided on the WatchStream\"",
            ]);
            },
        ),
        WatchScript::new("invalid ranges: key > range_end, key == range_end", |s| {
            let (a, b) = (s.k("a"), s.k("b"));
            s.create(0, w(&b).end(&a))
                .create(0, w(&a).end(&a))
                .create(0, w(&a).end(&b))
                .wait_created(0, 3);
            s.kv(put(&a, "1")).wait_event(0, "auto#2", 1);
            let empty = "created+canceled rev=r+0 reason=\"mvcc: watcher range is empty\"";
            s.expect(0, "stream", &[empty, empty]);
            s.expect(
                0,
                "auto#2",
                &[
                    "created rev=r+0",
                    "events rev=r+1 [PUT a=1 c=r+1 m=r+1 v=1]",
                ],
            );
        }),
        WatchScript::new(
            "RequestProgress: watch_id -1 with the current revision",
            |s| {
                let (a, b, c) = (s.k("a"), s.k("b"), s.k("c"));
                s.progress(0).wait(0, Until::Progress("stream".into(), 0));
                s.create(0, w(&a)).create(0, w(&b)).wait_created(0, 2);
                s.kv(put(&a, "1")).wait_event(0, "auto#0", 1);
                s.kv(put(&c, "1"));
                s.progress(0).wait(0, Until::Progress("stream".into(), 2));
                s.create(1, w(&a))
                    .progress(1)
                    .wait(1, Until::Progress("stream".into(), 2));
                s.expect(0, "stream", &["progress rev=r+0", "progress rev=r+2"]);
                s.expect(
                    0,
                    "auto#0",
                    &[
                        "created rev=r+0",
                        "events rev=r+1 [PUT a=1 c=r+1 m=r+1 v=1]",
                    ],
                );
                s.expect(0, "auto#1", &["created rev=r+0"]);
                s.expect(1, "auto#0", &["created rev=r+2"]);
                s.expect(1, "stream", &["progress rev=r+2"]);
            },
        ),
        WatchScript::new(
            "progress_notify: periodic notifications at the current revision",
            |s| {
                let a = s.k("a");
                s.create(0, w(&a).progress_notify())
                    .create(0, w(&a))
                    .wait_created(0, 2);
                s.wait(0, Until::Progress("auto#0".into(), 0));
                let b = s.k("b");
                s.kv(put(&a, "1")).wait_event(0, "auto#0", 1);
                s.kv(put(&b, "1"));
                s.wait(0, Until::Progress("auto#0".into(), 2));
                // Progress notifications carry the watcher's id and the store revision; only the
                // watcher that asked gets them.
                s.expect(
                    0,
                    "auto#0",
                    &[
                        "created rev=r+0",
                        "progress rev=r+0",
                        "events rev=r+1 [PUT a=1 c=r+1 m=r+1 v=1]",
                        "progress rev=r+2",
                    ],
                );
                s.expect(
                    0,
                    "auto#1",
                    &[
                        "created rev=r+0",
                        "events rev=r+1 [PUT a=1 c=r+1 m=r+1 v=1]",
                    ],
                );
            },
        ),
        WatchScript::new(
            "the client half-closes the stream: watchers keep running",
            |s| {
                let a = s.k("a");
                s.create(0, w(&a)).wait_created(0, 1).close_send(0);
                s.kv(put(&a, "1")).wait_event(0, "auto#0", 1);
                s.expect(
                    0,
                    "auto#0",
                    &[
                        "created rev=r+0",
                        "events rev=r+1 [PUT a=1 c=r+1 m=r+1 v=1]",
                    ],
                );
            },
        ),
        WatchScript::new("negative start_revision", |s| {
            // etcd 3.4 takes a negative start revision as "now": history before the watch is
            // not replayed.
            let a = s.k("a");
            s.kv(put(&a, "1"));
            s.create(0, w(&a).rev(-1)).wait_created(0, 1).quiet(300);
            s.kv(put(&a, "2")).wait_event(0, "auto#0", 2);
            s.expect(
                0,
                "auto#0",
                &[
                    "created rev=r+1",
                    "events rev=r+2 [PUT a=2 c=r+1 m=r+2 v=2]",
                ],
            );
        }),
    ]
}

#[tokio::test]
async fn control_requests() {
    run(control_scripts()).await;
}

// ------------------------------------------------------------------------------------------------
// Compaction and fragments
// ------------------------------------------------------------------------------------------------

fn compaction_scripts() -> Vec<WatchScript> {
    vec![WatchScript::new(
        "compacted start revision: created, then cancelled with compact_revision",
        |s| {
            let a = s.k("a");
            let (r1, r2, r3, r4) = (s.rev(1), s.rev(2), s.rev(3), s.rev(4));
            s.kv(put(&a, "1")).kv(put(&a, "2")).kv(put(&a, "3"));
            s.kv(compact(r3));
            s.create(0, w(&a).rev(r1))
                .create(0, w(&a).rev(r2).prev_kv())
                .create(0, w(&a).rev(r3).prev_kv())
                .create(0, w(&a).rev(r4))
                .wait_created(0, 4)
                .wait(0, Until::Canceled("auto#0".into()))
                .wait(0, Until::Canceled("auto#1".into()))
                .wait_event(0, "auto#2", 3);
            s.kv(put(&a, "4")).wait_event(0, "auto#3", 4);
            // Cancelled watchers: created first, then canceled with the compact revision (and
            // etcd's header revision 0).
            let compacted = ["created rev=r+3", "canceled rev=0 compact=r+3"];
            s.expect(0, "auto#0", &compacted);
            s.expect(0, "auto#1", &compacted);
            // From the compact revision itself: replayed, but its prev_kv is gone.
            s.expect(0, "auto#2", &[
                "created rev=r+3",
                "events rev=r+4 [PUT a=3 c=r+1 m=r+3 v=3; PUT a=4 c=r+1 m=r+4 v=4 prev=(a=3 c=r+1 m=r+3 v=3)]",
            ]);
            s.expect(
                0,
                "auto#3",
                &[
                    "created rev=r+3",
                    "events rev=r+4 [PUT a=4 c=r+1 m=r+4 v=4]",
                ],
            );
        },
    )]
}

#[tokio::test]
async fn compaction() {
    run(compaction_scripts()).await;
}

/// Values big enough that 100 of them (as prev_kv of one DeleteRange) exceed the fragment size.
const BIG: usize = 8000;

fn fragment_scripts() -> Vec<WatchScript> {
    vec![WatchScript::new(
        "fragment: a large revision is split only for watchers that asked",
        |s| {
            let f = s.k("f/");
            for i in 0..100 {
                let v = vec![b'a' + (i % 26) as u8; BIG];
                let k = s.k(&format!("f/{i:03}"));
                s.kv(put(k, v));
            }
            let r101 = s.rev(101);
            s.create(0, w(&f).prefix().prev_kv().fragment())
                .create(0, w(&f).prefix().prev_kv())
                .create(0, w(&f).prefix().fragment())
                .wait_created(0, 3);
            s.kv(del(&f).prefix());
            s.wait_event(0, "auto#0", 101)
                .wait_event(0, "auto#1", 101)
                .wait_event(0, "auto#2", 101);
            // The same revision replayed from history.
            s.create(1, w(&f).prefix().prev_kv().fragment().rev(r101))
                .wait_created(1, 1)
                .wait_event(1, "auto#0", 101);
            let with_prev = "n=100 [DELETE f/000 m=r+101 prev=(f/000=<8000 bytes 43b2a6e5> c=r+1 m=r+1 v=1) ... \
                             DELETE f/099 m=r+101 prev=(f/099=<8000 bytes daf81025> c=r+100 m=r+100 v=1)] \
                             digest=6b6716c6d70152df";
            s.expect(
                0,
                "auto#0",
                &[
                    "created rev=r+100",
                    &format!("events rev=r+101 fragments=2 {with_prev}"),
                ],
            );
            s.expect(
                0,
                "auto#1",
                &[
                    "created rev=r+100",
                    &format!("events rev=r+101 {with_prev}"),
                ],
            );
            // Small enough without prev_kv: one response.
            s.expect(0, "auto#2", &[
                "created rev=r+100",
                "events rev=r+101 n=100 [DELETE f/000 m=r+101 ... DELETE f/099 m=r+101] digest=52ddc7ddd30bc465",
            ]);
            s.expect(
                1,
                "auto#0",
                &[
                    "created rev=r+101",
                    &format!("events rev=r+101 fragments=2 {with_prev}"),
                ],
            );
        },
    )]
}

#[tokio::test]
async fn fragments() {
    run(fragment_scripts()).await;
}

// ------------------------------------------------------------------------------------------------
// etcd 3.5+ semantics, checked on the candidate only
// ------------------------------------------------------------------------------------------------

/// A progress request on a stream whose watcher is still catching up from history must be
/// answered only once the watcher caught up: the answer's revision is a bookmark (every event at or
/// below it was delivered before it), as in etcd 3.5+. etcd 3.4.23 answers at once with the current
/// revision, ahead of the catch-up (etcd-io/etcd#15220): with `BALLAST_COMPAT_SELFTEST=1` the
/// outcome is printed, not asserted.
///
/// etcd 3.5+ answers with one `watch_id = -1` response once every watcher of the stream is synced;
/// Ballast answers each watcher with its own progress response as it catches up (so one slow
/// watcher does not hold back the others). Both are progress notifications to clients (clientv3
/// broadcasts -1 and routes the others by id), so either is accepted here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requested_progress_waits_for_catching_up_watchers() {
    use ballast_testkit::watch::{Received, WatchStream};
    use std::time::{Duration, Instant};

    let server = ballast_testkit::start_candidate();
    let url = server.client_url();
    // 2,400 revisions of history (more than one catch-up step of 1,000 events).
    let mut writers = Vec::new();
    for c in 0..8 {
        let url = url.clone();
        writers.push(tokio::spawn(async move {
            let mut kv = ballast_testkit::kv_client(&url).await;
            let mut last = 0;
            for i in 0..300 {
                let r = kv
                    .put(ballast_proto::etcdserverpb::PutRequest {
                        key: format!("rp/k{c}").into_bytes(),
                        value: format!("{i}").into_bytes(),
                        ..Default::default()
                    })
                    .await
                    .expect("put")
                    .into_inner();
                last = r.header.map_or(0, |h| h.revision);
            }
            last
        }));
    }
    let mut head = 0;
    for w in writers {
        head = head.max(w.await.expect("writer"));
    }

    let mut stream = WatchStream::connect(&url).await;
    stream.create(WatchCreateRequest {
        key: b"rp/".to_vec(),
        range_end: prefix_end(b"rp/"),
        start_revision: 1,
        ..Default::default()
    });
    stream.request_progress();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last_event = 0;
    let mut events = 0usize;
    let mut answer = None;
    while answer.is_none() || last_event < head {
        match stream.recv_until(deadline).await {
            Some((_, Received::Response(r)))
                if r.events.is_empty() && !r.created && !r.canceled =>
            {
                let rev = r.header.map_or(0, |h| h.revision);
                answer = Some((rev, last_event, events));
            }
            Some((_, Received::Response(r))) => {
                for e in &r.events {
                    last_event = last_event.max(e.kv.as_ref().map_or(0, |kv| kv.mod_revision));
                    events += 1;
                }
            }
            other => panic!("watch stream: {other:?} (events through {last_event} of {head})"),
        }
    }
    let (rev, seen_before, events_before) = answer.expect("progress answer");
    let verdict = format!(
        "{}: progress answered at revision {rev} after {events_before} of {events} events \
         (through revision {seen_before}; history head {head})",
        server.kind()
    );
    eprintln!("{verdict}");
    if ballast_testkit::selftest() {
        return;
    }
    assert!(
        rev >= seen_before && events_before == events && seen_before == head,
        "the progress answer is no bookmark: {verdict}"
    );
}
