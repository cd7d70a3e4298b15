//! Quota and alarms, differential: the same script against a reference etcd 3.4 and the
//! candidate (Ballast, or a second etcd with `BALLAST_COMPAT_SELFTEST=1`), both started with
//! `--quota-backend-bytes=16777216` (16 MiB), through the independent `etcd-client` crate,
//! Debian's `etcdctl` and plain HTTP for `/health`.
//!
//! The script fills the member with large values until a Put fails with NOSPACE, then records
//! what each operation answers while the alarm is raised (error codes and messages, which
//! operations still work, the alarm list, Status errors, `/health`), restarts the member (the
//! alarm must survive), recovers it the way etcd's documentation says (delete, compact,
//! defragment, disarm) and writes again; then raises CORRUPT by hand and records its gate.
//! Each step's outcome is a line with member ids, revisions and hashes left out (they differ
//! between the two servers by nature, as does the number of puts the fill takes: the backends
//! account for space differently); the two transcripts must be equal line by line, and the
//! reference's must show the behaviour this test is about (so a broken harness cannot pass).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use ballast_testkit::{candidate_kind, Server, ServerKind, ServerOptions};
use etcd_client::{
    AlarmAction, AlarmOptions, AlarmType, Client, Compare, CompareOp, CompactionOptions,
    DeleteOptions, GetOptions, Txn, TxnOp,
};

const QUOTA: &str = "--quota-backend-bytes=16777216";
/// Each fill value: 400 KB (under etcd's default 1.5 MiB request limit).
const VALUE_BYTES: usize = 400_000;
/// A fill that takes more puts than this has not hit the quota.
const MAX_FILL_PUTS: usize = 200;
const NOSPACE_MSG: &str = "etcdserver: mvcc: database space exceeded";

fn start(kind: ServerKind) -> Server {
    let mut extra_args = vec![QUOTA.to_string()];
    if kind == ServerKind::Ballast {
        // /health's body differs by etcd version; the reference is 3.4.
        extra_args.push("--emulated-etcd-version=3.4.23".to_string());
    }
    Server::start_with(
        kind,
        ServerOptions {
            extra_args,
            ..ServerOptions::default()
        },
    )
}

/// `GET path` on the client port: (status code, body).
fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect for HTTP");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .expect("send HTTP request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read HTTP response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

/// An outcome as a transcript line: "ok" or the gRPC code and message.
fn outcome<T>(r: Result<T, etcd_client::Error>) -> String {
    match r {
        Ok(_) => "ok".to_string(),
        Err(etcd_client::Error::GRpcStatus(s)) => format!("{:?}: {}", s.code(), s.message()),
        Err(e) => format!("client error: {e}"),
    }
}

/// The alarm list with this member's id written as "self".
fn alarms_text(alarms: &[etcd_client::AlarmMember], me: u64) -> String {
    let items: Vec<String> = alarms
        .iter()
        .map(|a| {
            let who = if a.member_id() == me {
                "self".to_string()
            } else {
                format!("other member {:x}", a.member_id())
            };
            format!("{who} {:?}", a.alarm())
        })
        .collect();
    format!("[{}]", items.join(", "))
}

struct Run<'a> {
    server: &'a mut Server,
    client: Client,
    me: u64,
    lines: Vec<String>,
}

impl Run<'_> {
    fn note(&mut self, step: &str, what: String) {
        self.lines.push(format!("{step}: {what}"));
    }

    async fn alarm_list(&mut self, step: &str) {
        let r = self
            .client
            .alarm(AlarmAction::Get, AlarmType::None, None)
            .await;
        let text = match r {
            Ok(resp) => alarms_text(resp.alarms(), self.me),
            Err(e) => outcome::<()>(Err(e)),
        };
        self.note(step, text);
    }

    fn health(&mut self, step: &str) {
        let port = self.server.client_port();
        for path in ["/health", "/health?exclude=NOSPACE"] {
            let (code, body) = http_get(port, path);
            self.note(&format!("{step} GET {path}"), format!("{code} {body:?}"));
        }
    }

    async fn status_errors(&mut self, step: &str) {
        let me = self.me.to_string();
        let text = match self.client.status().await {
            Ok(s) => format!("{:?}", s.errors()).replace(&me, "<self>"),
            Err(e) => outcome::<()>(Err(e)),
        };
        self.note(step, text);
    }

    /// The operations whose answers depend on the raised alarms.
    async fn probe(&mut self, step: &str, lease: i64) {
        let mut c = self.client.clone();
        let r = outcome(c.put("probe/put", "v", None).await);
        self.note(&format!("{step} Put"), r);
        let txn_put = Txn::new().and_then([TxnOp::put("probe/txn", "v", None)]);
        let r = outcome(c.txn(txn_put).await);
        self.note(&format!("{step} Txn with a put"), r);
        let txn_read = Txn::new()
            .when([Compare::version("probe/none", CompareOp::Equal, 0)])
            .and_then([TxnOp::get(
                "fill/",
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_keys_only()
                        .with_limit(1),
                ),
            )]);
        let r = outcome(c.txn(txn_read).await);
        self.note(&format!("{step} Txn without writes"), r);
        let txn_del = Txn::new().and_then([TxnOp::delete("probe/none", None)]);
        let r = outcome(c.txn(txn_del).await);
        self.note(&format!("{step} Txn with only a delete"), r);
        let r = outcome(c.lease_grant(60, None).await);
        self.note(&format!("{step} LeaseGrant"), r);
        let r = match c
            .get(
                "fill/",
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
        {
            Ok(g) => format!("ok, keys found: {}", g.count() > 0),
            Err(e) => outcome::<()>(Err(e)),
        };
        self.note(&format!("{step} Range"), r);
        let r = outcome(c.delete("probe/none", None).await);
        self.note(&format!("{step} DeleteRange"), r);
        if lease != 0 {
            let r = outcome(c.lease_revoke(lease).await);
            self.note(&format!("{step} LeaseRevoke"), r);
        }
        let rev = match c.get("probe/none", None).await {
            Ok(g) => g.header().map_or(0, |h| h.revision()),
            Err(_) => 0,
        };
        let r = outcome(c.compact(rev, None).await);
        self.note(&format!("{step} Compact at the current revision"), r);
    }

    /// Puts 400 KB values until one fails; the error (the number of puts is left out).
    async fn fill(&mut self) -> usize {
        let value = vec![b'v'; VALUE_BYTES];
        for i in 0..MAX_FILL_PUTS {
            let r = self
                .client
                .put(format!("fill/{i:04}"), value.clone(), None)
                .await;
            if r.is_err() {
                let text = outcome(r);
                self.note("fill until a Put fails", text);
                return i;
            }
        }
        self.note("fill until a Put fails", "never failed".into());
        MAX_FILL_PUTS
    }

    async fn reconnect(&mut self) {
        self.client = Client::connect([self.server.client_url()], None)
            .await
            .expect("reconnect");
    }
}

fn etcdctl_text(server: &Server, args: &[&str]) -> String {
    let out = server.etcdctl(args);
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    format!("exit {}; {}", out.status.code().unwrap_or(-1), stdout)
}

async fn script(server: &mut Server) -> (Vec<String>, usize) {
    let mut client = Client::connect([server.client_url()], None)
        .await
        .expect("connect");
    let me = client
        .status()
        .await
        .expect("status")
        .header()
        .expect("header")
        .member_id();
    let mut run = Run {
        server,
        client,
        me,
        lines: Vec::new(),
    };
    let lease = run
        .client
        .lease_grant(600, None)
        .await
        .expect("grant before filling")
        .id();
    run.alarm_list("alarms before").await;
    run.health("before");

    let puts = run.fill().await;
    run.alarm_list("alarms after the fill").await;
    run.status_errors("Status.errors after the fill").await;
    run.health("NOSPACE raised");
    run.probe("NOSPACE raised:", lease).await;
    let text = etcdctl_text(run.server, &["alarm", "list"]).replace(&me.to_string(), "<self>");
    run.note("etcdctl alarm list", text);
    let text = etcdctl_text(run.server, &["endpoint", "health"]);
    run.note(
        "etcdctl endpoint health (healthy or not)",
        text.contains("is healthy").to_string(),
    );
    let mut again = AlarmOptions::new();
    again.with_member(me);
    let r = run
        .client
        .alarm(AlarmAction::Activate, AlarmType::Nospace, Some(again))
        .await;
    let text = r.map_or_else(|e| outcome::<()>(Err(e)), |a| alarms_text(a.alarms(), me));
    run.note("ACTIVATE NOSPACE again", text);
    let mut other = AlarmOptions::new();
    other.with_member(me);
    let r = run
        .client
        .alarm(AlarmAction::Deactivate, AlarmType::Corrupt, Some(other))
        .await;
    let text = r.map_or_else(|e| outcome::<()>(Err(e)), |a| alarms_text(a.alarms(), me));
    run.note("DEACTIVATE CORRUPT (not raised)", text);
    let text = match run
        .client
        .alarm(AlarmAction::Get, AlarmType::Corrupt, None)
        .await
    {
        Ok(a) => alarms_text(a.alarms(), me),
        Err(e) => outcome::<()>(Err(e)),
    };
    run.note("GET CORRUPT only", text);

    // The alarm survives a restart.
    run.server.restart();
    run.reconnect().await;
    run.alarm_list("alarms after a restart").await;
    let r = outcome(run.client.put("probe/after-restart", "v", None).await);
    run.note("Put after the restart", r);

    // Recovery: delete, compact, defragment, disarm.
    let r = run
        .client
        .delete("fill/", Some(DeleteOptions::new().with_prefix()))
        .await;
    let text = r.map_or_else(
        |e| outcome::<()>(Err(e)),
        |d| format!("deleted {}", d.deleted() as usize == puts),
    );
    run.note("delete the filled keys (all of them)", text);
    let rev = run
        .client
        .get("probe/none", None)
        .await
        .ok()
        .and_then(|g| g.header().map(|h| h.revision()))
        .unwrap_or(0);
    // Physical: the answer waits until the compaction has been carried out, so the hash
    // below is not taken while it is still deleting (that would make the comparison racy
    // on both servers).
    let r = outcome(
        run.client
            .compact(rev, Some(CompactionOptions::new().with_physical()))
            .await,
    );
    run.note("compact", r);
    let hash_before = run.client.hash().await.map(|h| h.hash());
    let text =
        etcdctl_text(run.server, &["defrag"]).replace(&run.server.client_url(), "<endpoint>");
    run.note("etcdctl defrag", text);
    let hash_after = run.client.hash().await.map(|h| h.hash());
    run.note(
        "Maintenance.Hash answers and is the same before and after the defrag",
        format!(
            "{}",
            matches!((&hash_before, &hash_after), (Ok(a), Ok(b)) if a == b)
        ),
    );
    let status = run.client.status().await.expect("status after defrag");
    let rev_now = status.header().map_or(0, |h| h.revision());
    run.note(
        "db size after the defrag under 1 MiB",
        (status.db_size() < 1 << 20).to_string(),
    );
    let hash_rev = run
        .client
        .hash()
        .await
        .ok()
        .and_then(|h| h.header().map(|h| h.revision()));
    run.note(
        "Hash header revision is the current revision",
        (hash_rev == Some(rev_now)).to_string(),
    );
    run.alarm_list("alarms after the defrag (not disarmed yet)")
        .await;
    let r = outcome(run.client.put("probe/before-disarm", "v", None).await);
    run.note("Put before disarming", r);
    let text = etcdctl_text(run.server, &["alarm", "disarm"]).replace(&me.to_string(), "<self>");
    run.note("etcdctl alarm disarm", text);
    let text = etcdctl_text(run.server, &["alarm", "disarm"]);
    run.note("etcdctl alarm disarm again", text);
    run.alarm_list("alarms after disarming").await;
    run.status_errors("Status.errors after disarming").await;
    run.health("disarmed");
    run.probe("disarmed:", 0).await;

    // CORRUPT, raised by hand: etcd's corrupt gate.
    let mut corrupt = AlarmOptions::new();
    corrupt.with_member(me);
    let r = run
        .client
        .alarm(AlarmAction::Activate, AlarmType::Corrupt, Some(corrupt))
        .await;
    let text = r.map_or_else(|e| outcome::<()>(Err(e)), |a| alarms_text(a.alarms(), me));
    run.note("ACTIVATE CORRUPT", text);
    run.health("CORRUPT raised");
    let lease2 = run
        .client
        .lease_grant(600, None)
        .await
        .map_or(0, |l| l.id());
    run.note(
        "LeaseGrant under CORRUPT gave a lease",
        (lease2 != 0).to_string(),
    );
    run.probe("CORRUPT raised:", 0).await;
    let mut clear = AlarmOptions::new();
    clear.with_member(me);
    let r = run
        .client
        .alarm(AlarmAction::Deactivate, AlarmType::Corrupt, Some(clear))
        .await;
    let text = r.map_or_else(|e| outcome::<()>(Err(e)), |a| alarms_text(a.alarms(), me));
    run.note("DEACTIVATE CORRUPT", text);
    let r = outcome(run.client.put("probe/after-corrupt", "v", None).await);
    run.note("Put after CORRUPT is cleared", r);
    (run.lines, puts)
}

#[test]
fn quota_alarm_and_recovery_match_etcd() {
    let (mut reference, mut candidate) = std::thread::scope(|s| {
        let r = s.spawn(|| start(ServerKind::Etcd));
        let c = s.spawn(|| start(candidate_kind()));
        (
            r.join().expect("start etcd"),
            c.join().expect("start candidate"),
        )
    });
    let (want, want_puts) = ballast_testkit::block_on(async move {
        let out = script(&mut reference).await;
        drop(reference);
        out
    });
    let (got, got_puts) = ballast_testkit::block_on(async move {
        let out = script(&mut candidate).await;
        drop(candidate);
        out
    });
    eprintln!("puts before NOSPACE: reference {want_puts}, candidate {got_puts}");
    for (w, g) in want.iter().zip(&got) {
        eprintln!("ref  {w}\ncand {g}\n");
    }

    // The reference shows what this test is about.
    let has = |needle: &str| want.iter().any(|l| l == needle);
    for line in [
        format!("fill until a Put fails: ResourceExhausted: {NOSPACE_MSG}"),
        "alarms after the fill: [self Nospace]".to_string(),
        format!("NOSPACE raised: Put: ResourceExhausted: {NOSPACE_MSG}"),
        format!("NOSPACE raised: LeaseGrant: ResourceExhausted: {NOSPACE_MSG}"),
        "NOSPACE raised: Range: ok, keys found: true".to_string(),
        "NOSPACE raised GET /health: 503 \"{\\\"health\\\":\\\"false\\\"}\\n\"".to_string(),
        "alarms after a restart: [self Nospace]".to_string(),
        "alarms after disarming: []".to_string(),
        "disarmed: Put: ok".to_string(),
    ] {
        assert!(
            has(&line),
            "the reference transcript lacks {line:?}:\n{want:#?}"
        );
    }
    assert!(
        want_puts > 10,
        "the fill took {want_puts} puts on the reference"
    );

    let diffs: Vec<String> = want
        .iter()
        .zip(&got)
        .filter(|(w, g)| w != g)
        .map(|(w, g)| format!("  etcd:      {w}\n  candidate: {g}"))
        .collect();
    assert!(
        diffs.is_empty() && want.len() == got.len(),
        "{} of {} steps differ (lengths {} / {}):\n{}",
        diffs.len(),
        want.len(),
        want.len(),
        got.len(),
        diffs.join("\n")
    );
}

/// Ballast alone (etcd 3.4 has neither): with its default emulated version (3.6) `/health`
/// carries etcd 3.5+'s reason, `Status.dbSizeQuota` reports the quota, and `Maintenance.Hash`
/// follows the data (changes with a write, not with a restart).
#[test]
fn ballast_reports_the_quota_and_health_reasons() {
    if ballast_testkit::selftest() {
        eprintln!("skipped in selftest mode: Ballast-only behaviour");
        return;
    }
    let mut server = Server::start_with(
        ServerKind::Ballast,
        ServerOptions {
            extra_args: vec![QUOTA.to_string()],
            ..ServerOptions::default()
        },
    );
    let port = server.client_port();
    let url = server.client_url();
    let (quota, hashes, healthy, full, excluded) = ballast_testkit::block_on(async move {
        let mut c = Client::connect([url], None).await.expect("connect");
        let quota = c.status().await.expect("status").db_size_quota();
        let healthy = http_get(port, "/health");
        let h1 = c.hash().await.expect("hash").hash();
        c.put("k", "v", None).await.expect("put");
        let h2 = c.hash().await.expect("hash").hash();
        let value = vec![b'v'; VALUE_BYTES];
        let mut filled = false;
        for i in 0..MAX_FILL_PUTS {
            if c.put(format!("fill/{i:04}"), value.clone(), None)
                .await
                .is_err()
            {
                filled = true;
                break;
            }
        }
        assert!(filled, "no Put failed within {MAX_FILL_PUTS} puts");
        let full = http_get(port, "/health");
        let excluded = http_get(port, "/health?exclude=NOSPACE");
        (quota, (h1, h2), healthy, full, excluded)
    });
    assert_eq!(quota, 16 * 1024 * 1024);
    assert_ne!(hashes.0, hashes.1, "a put changes the backend hash");
    let json = |(code, body): (u16, String)| {
        let v: serde_json::Value = serde_json::from_str(body.trim()).expect("JSON body");
        (code, v)
    };
    assert_eq!(
        json(healthy),
        (200, serde_json::json!({"health": "true", "reason": ""}))
    );
    assert_eq!(
        json(full),
        (
            503,
            serde_json::json!({"health": "false", "reason": "ALARM NOSPACE"})
        )
    );
    assert_eq!(
        json(excluded),
        (200, serde_json::json!({"health": "true", "reason": ""}))
    );
    // The same data after a restart: the same hash (no lease exists, so a clean stop writes
    // no lease checkpoint).
    let url = server.client_url();
    let before = ballast_testkit::block_on(async move {
        let mut c = Client::connect([url], None).await.expect("connect");
        c.hash().await.expect("hash").hash()
    });
    server.restart();
    let url = server.client_url();
    let after = ballast_testkit::block_on(async move {
        let mut c = Client::connect([url], None).await.expect("connect");
        c.hash().await.expect("hash").hash()
    });
    assert_eq!(before, after, "a restart does not change the backend hash");
}

/// Writers racing into the quota: every Put answered NoSpace finds NOSPACE raised when its
/// client asks right after, and every acknowledged Put is readable. (Some puts may pass the
/// check before proposing and be refused after applying, etcd's second check: those are
/// applied anyway, so more keys than acknowledged puts may exist.)
#[test]
fn racing_writers_see_the_alarm_before_no_space() {
    const WRITERS: usize = 6;
    let server = Server::start_with(
        candidate_kind(),
        ServerOptions {
            extra_args: vec![QUOTA.to_string()],
            ..ServerOptions::default()
        },
    );
    let url = server.client_url();
    let (acked, refused_without_alarm, refused, keys) = ballast_testkit::block_on(async move {
        let c = Client::connect([url], None).await.expect("connect");
        let me = c
            .clone()
            .status()
            .await
            .expect("status")
            .header()
            .expect("header")
            .member_id();
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let mut c = c.clone();
            tasks.push(tokio::spawn(async move {
                let value = vec![b'v'; VALUE_BYTES];
                let (mut acked, mut bad, mut refused) = (0usize, 0usize, 0usize);
                for i in 0..MAX_FILL_PUTS {
                    match c.put(format!("race/{w}/{i:04}"), value.clone(), None).await {
                        Ok(_) => acked += 1,
                        Err(etcd_client::Error::GRpcStatus(s)) if s.message() == NOSPACE_MSG => {
                            refused += 1;
                            let alarms = c
                                .alarm(AlarmAction::Get, AlarmType::Nospace, None)
                                .await
                                .expect("alarm list");
                            if !alarms.alarms().iter().any(|a| a.member_id() == me) {
                                bad += 1;
                            }
                            if refused >= 3 {
                                break;
                            }
                        }
                        Err(e) => panic!("writer {w}: unexpected error {e}"),
                    }
                }
                (acked, bad, refused)
            }));
        }
        let (mut acked, mut bad, mut refused) = (0, 0, 0);
        for t in tasks {
            let (a, b, r) = t.await.expect("writer task");
            acked += a;
            bad += b;
            refused += r;
        }
        let keys = c
            .clone()
            .get(
                "race/",
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .expect("count")
            .count() as usize;
        (acked, bad, refused, keys)
    });
    drop(server);
    eprintln!(
        "acknowledged {acked}, refused {refused}, keys {keys} ({} applied but refused)",
        keys.saturating_sub(acked)
    );
    assert_eq!(refused, 3 * WRITERS, "every writer hit the quota");
    assert_eq!(
        refused_without_alarm, 0,
        "NoSpace answered before NOSPACE was raised"
    );
    assert!(
        keys >= acked,
        "{acked} puts acknowledged, {keys} keys found"
    );
}
