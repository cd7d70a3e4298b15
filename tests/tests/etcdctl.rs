//! etcdctl 3.4 (Debian's `/usr/bin/etcdctl`) against the reference etcd and the candidate: the same
//! command sequence on both, in every output format etcdctl offers for the command, comparing exit
//! code, stdout and stderr after normalization:
//! - `json`: top-level `header.cluster_id/member_id/raft_term` zeroed;
//! - `fields`: the values of `"ClusterID"`, `"MemberID"` and `"RaftTerm"` lines replaced;
//! - `protobuf`: decoded with our proto types, header normalized like the gRPC compatibility suite;
//! - `simple`, `table`: compared as they are;
//! - stderr: etcdctl's own JSON log lines reduced to level/msg/error (they carry timestamps and
//!   random client ids).
//!
//! `endpoint status` reports member-specific values (version, db size, raft index), so only its
//! structure is compared (fields, their kinds, is-leader = true).
//!
//! Lease commands: the two servers choose different lease ids, so a command names a lease as
//! `{L0}`, `{L1}`, ... (the leases granted so far, in order), replaced by each server's own id,
//! and every id in the outputs is replaced back by its placeholder; `lease timetolive`'s remaining
//! TTL counts as "granted - 1" when it is up to 3 s below the granted TTL (it depends on when the
//! command runs).

use std::process::Output;

use ballast_proto::etcdserverpb::{
    DeleteRangeResponse, PutResponse, RangeResponse, ResponseHeader, TxnResponse,
};
use ballast_testkit::{compat_pair, etcdctl_with_stdin, CompatPair};
use ballast_tests::script::{normalize, render, Outcome};
use prost::Message;
use serde_json::Value;

const ALL_FORMATS: &[&str] = &["simple", "json", "fields", "protobuf", "table"];
const TEXT_FORMATS: &[&str] = &["simple", "json", "fields"];
const SIMPLE: &[&str] = &["simple"];

/// What one etcdctl run produced, normalized.
#[derive(Debug, PartialEq)]
struct Normalized {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn normalize_stderr(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(m)) if m.contains_key("level") => {
                let keep = |k: &str| m.get(k).cloned().unwrap_or(Value::Null);
                format!(
                    "<log level={} msg={} error={}>",
                    keep("level"),
                    keep("msg"),
                    keep("error")
                )
            }
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn zero_json_header(v: &mut Value) {
    let zero = |h: &mut serde_json::Map<String, Value>| {
        for k in ["cluster_id", "member_id", "raft_term"] {
            if h.contains_key(k) {
                h.insert(k.to_owned(), Value::from(0));
            }
        }
    };
    if let Some(Value::Object(h)) = v.get_mut("header") {
        zero(h);
    }
    // etcdctl prints lease answers with the header fields at the top level.
    if let Value::Object(top) = v {
        zero(top);
    }
}

fn normalize_stdout(command: &str, format: &str, stdout: &[u8]) -> String {
    let text = String::from_utf8_lossy(stdout).into_owned();
    match format {
        "json" => match serde_json::from_str::<Value>(&text) {
            Ok(mut v) => {
                zero_json_header(&mut v);
                v.to_string()
            }
            Err(_) => text,
        },
        "fields" => text
            .lines()
            .map(|l| {
                for name in ["\"ClusterID\" : ", "\"MemberID\" : ", "\"RaftTerm\" : "] {
                    if l.starts_with(name) {
                        return format!("{name}<normalized>");
                    }
                }
                l.to_owned()
            })
            .collect::<Vec<_>>()
            .join("\n"),
        "protobuf" if !stdout.is_empty() => {
            let decoded = match command {
                "put" => PutResponse::decode(stdout).map(Outcome::Put),
                "get" => RangeResponse::decode(stdout).map(Outcome::Range),
                "del" => DeleteRangeResponse::decode(stdout).map(Outcome::DeleteRange),
                "txn" => TxnResponse::decode(stdout).map(Outcome::Txn),
                // etcdctl 3.4 prints only the response header of lease answers (its lease
                // response types embed the header, whose Marshal is what gets called).
                c if c.starts_with("lease ") => {
                    return match ResponseHeader::decode(stdout) {
                        Ok(h) => format!(
                            "<header revision={} cluster_id={} member_id={} raft_term={}>",
                            h.revision,
                            h.cluster_id != 0,
                            h.member_id != 0,
                            h.raft_term != 0
                        ),
                        Err(e) => format!("<undecodable {c} protobuf ({e}): {stdout:?}>"),
                    };
                }
                _ => return format!("{stdout:?}"),
            };
            match decoded {
                Ok(o) => render(&normalize(o)),
                Err(e) => format!("<undecodable {command} protobuf ({e}): {stdout:?}>"),
            }
        }
        _ => text,
    }
}

/// The lease id a `lease grant` printed in `format`.
fn granted_id(format: &str, stdout: &[u8]) -> Option<i64> {
    let text = String::from_utf8_lossy(stdout);
    match format {
        "simple" => {
            let hex = text.strip_prefix("lease ")?.split(' ').next()?;
            u64::from_str_radix(hex, 16).ok().map(|v| v as i64)
        }
        "json" => serde_json::from_str::<Value>(&text).ok()?["ID"].as_i64(),
        "fields" => text
            .lines()
            .find_map(|l| l.strip_prefix("\"ID\" : "))?
            .parse()
            .ok(),
        _ => None,
    }
}

/// Every spelling of lease `id` in `text` (hex as etcdctl prints and parses it, decimal as in
/// JSON) replaced by `<L{i}>`.
fn replace_ids(text: &str, ids: &[i64]) -> String {
    let mut out = text.to_owned();
    for (i, id) in ids.iter().enumerate() {
        let mark = format!("<L{i}>");
        for spelled in [
            format!("{:016x}", *id as u64),
            format!("{:x}", *id as u64),
            id.to_string(),
        ] {
            out = out.replace(&spelled, &mark);
        }
    }
    out
}

/// `lease timetolive`: remaining TTLs right below the granted TTL as "granted - 1", and the
/// attached keys sorted (etcd lists them in an unspecified order).
fn normalize_timetolive(text: &str) -> String {
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        // simple: "..., attached keys([b a])"
        let line = &match (line.find("attached keys(["), line.rfind("])")) {
            (Some(a), Some(b)) if a + 15 <= b => {
                let mut keys: Vec<&str> = line[a + 15..b].split(' ').collect();
                keys.sort();
                format!("{}{}{}", &line[..a + 15], keys.join(" "), &line[b..])
            }
            _ => line.to_owned(),
        };
        // simple: "... granted with TTL(600s), remaining(599s)..."
        if let (Some(g), Some(r)) = (line.find("TTL("), line.find("remaining(")) {
            let num = |from: usize| -> Option<(i64, usize)> {
                let digits: String = line[from..]
                    .chars()
                    .take_while(|c| c.is_ascii_digit())
                    .collect();
                Some((digits.parse().ok()?, digits.len()))
            };
            if let (Some((granted, _)), Some((rem, len))) = (num(g + 4), num(r + 10)) {
                if rem < granted && rem >= granted - 3 {
                    out.push_str(&line[..r + 10]);
                    out.push_str(&(granted - 1).to_string());
                    out.push_str(&line[r + 10 + len..]);
                    continue;
                }
            }
        }
        out.push_str(line);
    }
    // json: {"...","ttl":599,"granted-ttl":600,...}
    if let Ok(Value::Object(mut m)) = serde_json::from_str::<Value>(out.trim()) {
        if let Some(Value::Array(keys)) = m.get_mut("keys") {
            keys.sort_by_key(|k| k.to_string());
        }
        if let (Some(ttl), Some(granted)) = (
            m.get("ttl").and_then(Value::as_i64),
            m.get("granted-ttl").and_then(Value::as_i64),
        ) {
            if ttl < granted && ttl >= granted - 3 {
                m.insert("ttl".into(), Value::from(granted - 1));
            }
        }
        return Value::Object(m).to_string();
    }
    // fields: one "Key" : "k" line per attached key, in etcd's unspecified order.
    let mut lines: Vec<&str> = out.lines().collect();
    let key_at: Vec<usize> = (0..lines.len())
        .filter(|i| lines[*i].starts_with("\"Key\" : "))
        .collect();
    let mut keys: Vec<&str> = key_at.iter().map(|i| lines[*i]).collect();
    keys.sort_unstable();
    for (i, k) in key_at.into_iter().zip(keys) {
        lines[i] = k;
    }
    let mut out = lines.join("\n");
    if text.ends_with('\n') {
        out.push('\n');
    }
    let lines: Vec<&str> = out.lines().collect();
    // fields: "TTL" : 599 then "GrantedTTL" : 600
    let field = |name: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.parse::<i64>().ok()))
    };
    if let (Some(ttl), Some(granted)) = (field("\"TTL\" : "), field("\"GrantedTTL\" : ")) {
        if ttl < granted && ttl >= granted - 3 {
            return out.replace(
                &format!("\"TTL\" : {ttl}\n"),
                &format!("\"TTL\" : {}\n", granted - 1),
            );
        }
    }
    out
}

#[test]
fn timetolive_normalization_ignores_key_order_and_a_second_of_ttl() {
    let fields = |ttl, a, b| {
        format!("\"ID\" : <L0>\n\"TTL\" : {ttl}\n\"GrantedTTL\" : 600\n\"Key\" : \"{a}\"\n\"Key\" : \"{b}\"\n")
    };
    assert_eq!(
        normalize_timetolive(&fields(599, "lk2", "lk1")),
        normalize_timetolive(&fields(598, "lk1", "lk2"))
    );
    assert_ne!(
        normalize_timetolive(&fields(599, "lk2", "lk1")),
        normalize_timetolive(&fields(599, "lk2", "lk3"))
    );
    assert_eq!(
        normalize_timetolive(
            "lease 1 granted with TTL(600s), remaining(598s), attached keys([b a])\n"
        ),
        normalize_timetolive(
            "lease 1 granted with TTL(600s), remaining(599s), attached keys([a b])\n"
        )
    );
}

/// Runs etcdctl commands on both servers and collects every difference.
struct Session {
    pair: CompatPair,
    failures: Vec<String>,
    runs: usize,
    /// Lease ids granted so far: (reference, candidate).
    leases: Vec<(i64, i64)>,
}

impl Session {
    fn new() -> Session {
        Session {
            pair: compat_pair(),
            failures: Vec::new(),
            runs: 0,
            leases: Vec::new(),
        }
    }

    /// `args` with `{L<i>}` replaced by each server's id of lease `i` (in hex).
    fn with_ids(&self, args: &[String], reference: bool) -> Vec<String> {
        args.iter()
            .map(|a| {
                let mut a = a.clone();
                for (i, (r, c)) in self.leases.iter().enumerate() {
                    let id = if reference { *r } else { *c };
                    a = a.replace(&format!("{{L{i}}}"), &format!("{:x}", id as u64));
                }
                a
            })
            .collect()
    }

    fn both(&self, args: &[String], stdin: Option<&str>) -> (Output, Output) {
        let ra = self.with_ids(args, true);
        let ca = self.with_ids(args, false);
        let ra: Vec<&str> = ra.iter().map(String::as_str).collect();
        let ca: Vec<&str> = ca.iter().map(String::as_str).collect();
        let (r, c) = (
            self.pair.reference.client_url(),
            self.pair.candidate.client_url(),
        );
        std::thread::scope(|s| {
            let rt = s.spawn(|| etcdctl_with_stdin(&r, &ra, stdin));
            let ct = s.spawn(|| etcdctl_with_stdin(&c, &ca, stdin));
            (
                rt.join().expect("etcdctl thread"),
                ct.join().expect("etcdctl thread"),
            )
        })
    }

    /// Run `args` once per format (`-w FORMAT`) on both servers and compare.
    fn run(&mut self, args: &[&str], stdin: Option<&str>, formats: &[&str]) -> Vec<Output> {
        let command = match args {
            ["lease", sub, ..] => format!("lease {sub}"),
            [first, ..] => first.to_string(),
            [] => String::new(),
        };
        let mut reference_outputs = Vec::new();
        for format in formats {
            let mut full = vec![format!("--write-out={format}")];
            full.extend(args.iter().map(|s| s.to_string()));
            let (r, c) = self.both(&full, stdin);
            self.runs += 1;
            if command == "lease grant" {
                if let (Some(a), Some(b)) =
                    (granted_id(format, &r.stdout), granted_id(format, &c.stdout))
                {
                    self.leases.push((a, b));
                }
            }
            let ids_r: Vec<i64> = self.leases.iter().map(|l| l.0).collect();
            let ids_c: Vec<i64> = self.leases.iter().map(|l| l.1).collect();
            let norm = |o: &Output, ids: &[i64]| {
                let mut stdout = normalize_stdout(&command, format, &o.stdout);
                if command == "lease timetolive" {
                    stdout = normalize_timetolive(&stdout);
                }
                let stdout = replace_ids(&stdout, ids);
                Normalized {
                    code: o.status.code(),
                    stdout,
                    stderr: replace_ids(&normalize_stderr(&o.stderr), ids),
                }
            };
            let (nr, nc) = (norm(&r, &ids_r), norm(&c, &ids_c));
            if nr != nc {
                self.failures.push(format!(
                    "etcdctl {}{}\n  reference: exit {:?}\n    stdout: {:?}\n    stderr: {:?}\n  candidate: exit {:?}\n    stdout: {:?}\n    stderr: {:?}",
                    full.join(" "),
                    stdin.map(|s| format!(" <<< {s:?}")).unwrap_or_default(),
                    nr.code,
                    nr.stdout,
                    nr.stderr,
                    nc.code,
                    nc.stdout,
                    nc.stderr
                ));
            }
            reference_outputs.push(r);
        }
        reference_outputs
    }

    /// The reference's current revision (from `get -w json`).
    fn revision(&self) -> i64 {
        let out = self
            .pair
            .reference
            .etcdctl(&["get", "revision-probe", "-w", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).expect("get -w json");
        v["header"]["revision"].as_i64().expect("header.revision")
    }

    fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{} of {} etcdctl runs differ (reference {} vs candidate {} on {}):\n\n{}",
            self.failures.len(),
            self.runs,
            self.pair.reference.kind(),
            self.pair.candidate.kind(),
            self.pair.candidate.client_url(),
            self.failures.join("\n\n")
        );
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn put_get_del_txn_compaction() {
    let mut s = Session::new();

    // ---- put ----
    let out = s.run(&["put", "foo", "bar"], None, ALL_FORMATS);
    assert_eq!(stdout(&out[0]), "OK\n", "put -w simple prints OK");
    s.run(&["put", "foo", "bar2", "--prev-kv"], None, ALL_FORMATS);
    s.run(
        &["put", "foo", "--ignore-value", "--prev-kv"],
        None,
        TEXT_FORMATS,
    );
    s.run(
        &["put", "foo", "bar3", "--ignore-lease"],
        None,
        TEXT_FORMATS,
    );
    s.run(&["put", "missing", "--ignore-value"], None, SIMPLE);
    s.run(&["put", "missing", "v", "--ignore-lease"], None, SIMPLE);
    s.run(&["put", "foo", "v", "--lease=1234abcd"], None, SIMPLE);
    s.run(
        &["put", "foo", "v", "--lease=1234abcd", "--ignore-lease"],
        None,
        SIMPLE,
    );
    s.run(&["put", "", "v"], None, SIMPLE);
    s.run(&["put", "empty-value", ""], None, TEXT_FORMATS);
    s.run(&["put", "spaced key", "a value with spaces"], None, SIMPLE);
    s.run(&["put", "multi", "line one\nline two"], None, SIMPLE);
    s.run(&["put", "--", "-dash", "-value"], None, SIMPLE);
    // Value from stdin when it is not given as an argument.
    s.run(&["put", "from-stdin"], Some("piped value"), SIMPLE);
    for (k, v) in [
        ("a1", "v3"),
        ("a2", "v1"),
        ("a3", "v2"),
        ("a4", "v1"),
        ("b1", "x"),
        ("a2", "v5"),
    ] {
        s.run(&["put", k, v], None, SIMPLE);
    }

    // ---- get ----
    let out = s.run(&["get", "foo"], None, ALL_FORMATS);
    assert_eq!(stdout(&out[0]), "foo\nbar3\n");
    s.run(&["get", "a", "--prefix"], None, ALL_FORMATS);
    s.run(&["get", "a", "--prefix", "--limit=2"], None, ALL_FORMATS);
    s.run(&["get", "a1", "a3"], None, TEXT_FORMATS);
    s.run(&["get", "a", "--from-key"], None, TEXT_FORMATS);
    s.run(
        &["get", "a", "--from-key", "--keys-only"],
        None,
        TEXT_FORMATS,
    );
    s.run(&["get", "a", "--prefix", "--keys-only"], None, TEXT_FORMATS);
    s.run(
        &["get", "a", "--prefix", "--print-value-only"],
        None,
        TEXT_FORMATS,
    );
    s.run(
        &["get", "a", "--prefix", "--consistency=s"],
        None,
        TEXT_FORMATS,
    );
    s.run(&["get", "--hex", "a", "--prefix"], None, TEXT_FORMATS);
    for order in ["ASCEND", "DESCEND"] {
        for target in ["CREATE", "KEY", "MODIFY", "VALUE", "VERSION"] {
            s.run(
                &[
                    "get",
                    "a",
                    "--prefix",
                    &format!("--order={order}"),
                    &format!("--sort-by={target}"),
                ],
                None,
                SIMPLE,
            );
            s.run(
                &[
                    "get",
                    "a",
                    "--prefix",
                    "--limit=2",
                    &format!("--order={order}"),
                    &format!("--sort-by={target}"),
                ],
                None,
                &["json"],
            );
        }
    }
    s.run(&["get", "a", "--prefix", "--sort-by=VERSION"], None, SIMPLE);
    s.run(&["get", "a", "--prefix", "--order=DESCEND"], None, SIMPLE);
    s.run(&["get", "foo", "--rev=2"], None, TEXT_FORMATS);
    s.run(&["get", "foo", "--rev=1"], None, TEXT_FORMATS);
    s.run(&["get", "foo", "--rev=100000"], None, SIMPLE);
    s.run(&["get", "nothing-here"], None, ALL_FORMATS);
    s.run(&["get", ""], None, SIMPLE);
    s.run(&["get", "spaced key"], None, SIMPLE);
    s.run(&["get", "multi"], None, TEXT_FORMATS);
    s.run(&["get", "--", "-dash"], None, SIMPLE);
    s.run(&["get", "from-stdin"], None, SIMPLE);
    s.run(&["get", "empty-value"], None, TEXT_FORMATS);

    // ---- txn (interactive syntax on stdin) ----
    let succeeding = "mod(\"foo\") > \"0\"\nvalue(\"foo\") = \"bar3\"\n\nput foo \"over\"\nget a --prefix\ndel b1 --prev-kv\n\nput foo \"created\"\n\n";
    let out = s.run(
        &["txn", "--interactive=false"],
        Some(succeeding),
        ALL_FORMATS,
    );
    assert!(stdout(&out[0]).starts_with("SUCCESS\n"), "{out:?}");
    let failing = "version(\"foo\") = \"1000\"\n\nput foo \"t\"\n\nput fail-branch \"f\"\nget foo\nget a --prefix --limit=1\n\n";
    let out = s.run(&["txn", "--interactive=false"], Some(failing), ALL_FORMATS);
    assert!(stdout(&out[0]).starts_with("FAILURE\n"), "{out:?}");
    // (etcdctl 3.4 panics parsing `lease("k") = "0"` compares, so there is none here.)
    let compares = "create(\"a1\") > \"0\"\nversion(\"a2\") = \"2\"\nvalue(\"a4\") != \"zz\"\nmod(\"nope\") = \"0\"\n\nget a1\n\n\n";
    let out = s.run(
        &["txn", "--interactive=false"],
        Some(compares),
        TEXT_FORMATS,
    );
    assert!(stdout(&out[0]).starts_with("SUCCESS\n"), "{out:?}");
    let no_compares = "\nput t1 \"1\"\nput t2 \"2\"\ndel t1\n\n\n";
    s.run(
        &["txn", "--interactive=false"],
        Some(no_compares),
        TEXT_FORMATS,
    );
    let read_only = "\nget t2\nget a --prefix --keys-only\n\n\n";
    s.run(
        &["txn", "--interactive=false"],
        Some(read_only),
        &["simple", "json"],
    );
    let duplicate = "\nput d \"1\"\nput d \"2\"\n\n\n";
    s.run(&["txn", "--interactive=false"], Some(duplicate), SIMPLE);
    let less = "mod(\"foo\") < \"3\"\n\nput less \"t\"\n\nput less \"f\"\n\n";
    s.run(
        &["txn", "--interactive=false"],
        Some(less),
        &["simple", "json"],
    );

    // ---- del ----
    s.run(&["del", "a1"], None, &["simple"]);
    s.run(&["del", "a1"], None, ALL_FORMATS);
    s.run(&["put", "a1", "again"], None, SIMPLE);
    s.run(&["del", "a1", "--prev-kv"], None, TEXT_FORMATS);
    s.run(&["del", "a", "--prefix", "--prev-kv"], None, &["json"]);
    s.run(&["del", "t", "--prefix"], None, SIMPLE);
    s.run(&["del", "foo", "fop", "--prev-kv"], None, SIMPLE);
    s.run(&["del", "nothing-here"], None, TEXT_FORMATS);
    s.run(&["del", ""], None, SIMPLE);
    s.run(&["del", "m", "--from-key"], None, SIMPLE);
    s.run(&["get", "", "--from-key", "--keys-only"], None, SIMPLE);

    // ---- compaction ----
    let rev = s.revision();
    let out = s.run(&["compaction", &(rev - 10).to_string()], None, SIMPLE);
    assert_eq!(
        stdout(&out[0]),
        format!("compacted revision {}\n", rev - 10)
    );
    s.run(
        &["compaction", &(rev - 5).to_string(), "--physical"],
        None,
        SIMPLE,
    );
    s.run(&["compaction", &(rev - 6).to_string()], None, SIMPLE);
    s.run(&["compaction", &(rev + 10).to_string()], None, SIMPLE);
    s.run(&["compaction", &(rev - 3).to_string()], None, &["json"]);
    s.run(&["get", "foo", &format!("--rev={}", rev - 8)], None, SIMPLE);
    s.run(
        &["get", "", "--from-key", &format!("--rev={}", rev - 3)],
        None,
        &["json"],
    );
    s.run(
        &["compaction", &rev.to_string(), "--physical"],
        None,
        SIMPLE,
    );
    s.run(&["put", "after", "compaction"], None, TEXT_FORMATS);

    s.finish();
}

/// Kinds of values in `endpoint status` output, by position / field.
fn is_hex_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 16 && s.chars().all(|c| c.is_ascii_hexdigit())
}

fn is_version(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().next().is_some_and(|c| c.is_ascii_digit()))
}

fn is_size(s: &str) -> bool {
    let mut it = s.split(' ');
    let (n, unit) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
    n.parse::<f64>().is_ok() && ["B", "kB", "MB", "GB"].contains(&unit) && it.next().is_none()
}

fn is_uint(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_digit())
}

/// The cells of the `simple`/`table` status line: endpoint, id, version, db size, is leader,
/// is learner, raft term, raft index, raft applied index, errors.
fn check_status_cells(cells: &[&str], url: &str) -> Result<(), String> {
    let checks: [(&str, bool); 10] = [
        ("endpoint", cells.first() == Some(&url)),
        ("member id", cells.get(1).is_some_and(|s| is_hex_id(s))),
        ("version", cells.get(2).is_some_and(|s| is_version(s))),
        ("db size", cells.get(3).is_some_and(|s| is_size(s))),
        ("is leader", cells.get(4) == Some(&"true")),
        ("is learner", cells.get(5) == Some(&"false")),
        ("raft term", cells.get(6).is_some_and(|s| is_uint(s))),
        ("raft index", cells.get(7).is_some_and(|s| is_uint(s))),
        (
            "raft applied index",
            cells.get(8).is_some_and(|s| is_uint(s)),
        ),
        ("errors", cells.get(9) == Some(&"")),
    ];
    if cells.len() != 10 {
        return Err(format!("{} cells instead of 10: {cells:?}", cells.len()));
    }
    let bad: Vec<&str> = checks
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(n, _)| *n)
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!("bad {bad:?} in {cells:?}"))
    }
}

/// JSON with every leaf replaced by its kind (numbers, strings, bools), the endpoint by a marker.
fn json_shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let shape = if k == "Endpoint" {
                        Value::from("<endpoint>")
                    } else {
                        json_shape(v)
                    };
                    (k.clone(), shape)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(json_shape).collect()),
        Value::Number(_) => Value::from("<number>"),
        Value::String(_) => Value::from("<string>"),
        Value::Bool(b) => Value::from(*b),
        Value::Null => Value::Null,
    }
}

fn status_shape(format: &str, out: &Output, url: &str) -> Result<String, String> {
    let text = stdout(out);
    if !out.status.success() {
        return Err(format!(
            "exit {:?}: {}",
            out.status.code(),
            normalize_stderr(&out.stderr)
        ));
    }
    match format {
        "simple" => {
            let line = text.trim_end_matches('\n');
            let cells: Vec<&str> = line.split(", ").map(str::trim_end).collect();
            // The line ends in ", " (empty errors column).
            let cells: Vec<&str> = if line.ends_with(',') {
                let mut c: Vec<&str> = line.trim_end_matches(',').split(", ").collect();
                c.push("");
                c
            } else {
                cells
            };
            check_status_cells(&cells, url)?;
            Ok(format!("{} cells", cells.len()))
        }
        "table" => {
            let lines: Vec<&str> = text.lines().collect();
            if lines.len() != 5 {
                return Err(format!("{} table lines instead of 5:\n{text}", lines.len()));
            }
            let cells = |l: &str| -> Vec<String> {
                let inner = l.trim().trim_start_matches('|').trim_end_matches('|');
                inner.split('|').map(|c| c.trim().to_owned()).collect()
            };
            let row = cells(lines[3]);
            let row_refs: Vec<&str> = row.iter().map(String::as_str).collect();
            check_status_cells(&row_refs, url)?;
            Ok(format!("header {:?}", cells(lines[1])))
        }
        "json" => {
            let v: Value =
                serde_json::from_str(&text).map_err(|e| format!("bad json ({e}): {text}"))?;
            let st = &v[0]["Status"];
            if v[0]["Endpoint"] != url {
                return Err(format!("Endpoint is {} not {url}", v[0]["Endpoint"]));
            }
            if st["leader"] != st["header"]["member_id"] || st["leader"].is_null() {
                return Err(format!(
                    "leader {} is not the member itself {}",
                    st["leader"], st["header"]["member_id"]
                ));
            }
            Ok(json_shape(&v).to_string())
        }
        "fields" => {
            let names: Vec<String> = text
                .lines()
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let (name, value) = l.split_once(" : ").unwrap_or((l, ""));
                    let kind = if value.starts_with('"') {
                        "string"
                    } else if value == "true" || value == "false" {
                        value
                    } else if is_uint(value) {
                        "number"
                    } else {
                        value
                    };
                    format!("{name}={kind}")
                })
                .collect();
            if !text.contains(&format!("\"Endpoint\" : \"{url}\"")) {
                return Err(format!("no Endpoint line for {url}:\n{text}"));
            }
            Ok(names.join(" "))
        }
        _ => Ok(format!("{text:?}")),
    }
}

#[test]
fn endpoint_status_structure() {
    let pair = compat_pair();
    for (k, v) in [("k1", "v1"), ("k2", "v2")] {
        for server in [&pair.reference, &pair.candidate] {
            let out = server.etcdctl(&["put", k, v]);
            assert!(out.status.success(), "{} put: {out:?}", server.kind());
        }
    }
    let mut failures = Vec::new();
    for format in ["simple", "json", "fields", "table", "protobuf"] {
        let arg = format!("--write-out={format}");
        let r = pair.reference.etcdctl(&["endpoint", "status", &arg]);
        let c = pair.candidate.etcdctl(&["endpoint", "status", &arg]);
        if format == "protobuf" {
            // Not supported by etcdctl for this command: the same error on both.
            let n = |o: &Output| (o.status.code(), normalize_stderr(&o.stderr));
            if n(&r) != n(&c) {
                failures.push(format!(
                    "endpoint status -w protobuf: reference {:?} vs candidate {:?}",
                    n(&r),
                    n(&c)
                ));
            }
            continue;
        }
        let rs = status_shape(format, &r, &pair.reference.client_url());
        let cs = status_shape(format, &c, &pair.candidate.client_url());
        match (&rs, &cs) {
            (Ok(a), Ok(b)) if a == b => {}
            _ => failures.push(format!(
                "endpoint status -w {format}:\n  reference: {rs:?}\n    {:?}\n  candidate: {cs:?}\n    {:?}",
                stdout(&r),
                stdout(&c)
            )),
        }
    }
    // `endpoint health` runs a Get and reports success.
    for server in [&pair.reference, &pair.candidate] {
        let out = server.etcdctl(&["endpoint", "health"]);
        let text = String::from_utf8_lossy(&out.stderr).into_owned() + &stdout(&out);
        if !out.status.success() || !text.contains("is healthy") {
            failures.push(format!("{} endpoint health: {out:?}", server.kind()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

// ------------------------------------------------------------------------------------------------
// etcdctl watch: a long-running command, read until the expected output arrived, then stopped.
// ------------------------------------------------------------------------------------------------

/// What a stopped `etcdctl watch` printed.
struct WatchOutput {
    stdout: String,
    stderr: String,
    /// Exit code when etcdctl ended by itself (`None` when it was killed).
    code: Option<i32>,
}

/// Run `etcdctl --endpoints=URL ARGS` until its stdout has `lines` lines (or 10 s passed), feeding
/// `stdin` lines with `gap` between them; keep stdin open until then, close it, give etcdctl a
/// moment to end on its own, then kill it.
fn watch_run(
    url: &str,
    args: &[String],
    stdin: &[&str],
    gap: std::time::Duration,
    lines: usize,
) -> WatchOutput {
    use std::io::{BufRead, Read, Write};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let mut cmd = Command::new(ballast_testkit::etcdctl_binary());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ETCD") {
            cmd.env_remove(key);
        }
    }
    let mut child = cmd
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={url}"))
        .arg("--dial-timeout=5s")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn etcdctl watch");
    let mut input = child.stdin.take().expect("stdin");
    let out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            match line {
                Ok(l) => {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    for (i, l) in stdin.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(gap);
        }
        let _ = writeln!(input, "{l}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got: Vec<String> = Vec::new();
    while got.len() < lines {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) => got.push(l),
            Err(_) => break,
        }
    }
    drop(input);
    // Anything printed right after (e.g. the error etcdctl prints when stdin closes).
    // With no output expected, etcdctl is expected to end by itself.
    let settle = Instant::now()
        + if lines == 0 {
            Duration::from_secs(5)
        } else {
            Duration::from_millis(500)
        };
    let mut code = None;
    while Instant::now() < settle {
        if let Ok(Some(status)) = child.try_wait() {
            code = status.code();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if code.is_none() {
        let _ = child.kill();
    }
    let _ = child.wait();
    let _ = reader.join();
    got.extend(rx.try_iter());
    let stderr = err_reader.join().unwrap_or_default();
    WatchOutput {
        stdout: got.join("\n"),
        stderr,
        code,
    }
}

/// `-w json` watch output: one JSON object per response. Member-specific header fields are zeroed
/// and consecutive event-only responses merged (how revisions are grouped into responses is the
/// server's choice; see `tests/watch_script.rs`).
fn normalize_watch_json(stdout: &str) -> String {
    let mut out: Vec<Value> = Vec::new();
    for line in stdout.lines() {
        let Ok(mut v) = serde_json::from_str::<Value>(line) else {
            out.push(Value::String(line.to_owned()));
            continue;
        };
        if let Some(Value::Object(h)) = v.get_mut("Header") {
            for k in ["cluster_id", "member_id", "raft_term"] {
                h.remove(k);
            }
        }
        let plain = |v: &Value| {
            v["CompactRevision"].as_i64() == Some(0)
                && v["Canceled"] == Value::Bool(false)
                && v["Created"] == Value::Bool(false)
                && v["Events"].as_array().is_some_and(|e| !e.is_empty())
        };
        if let Some(last) = out.last_mut() {
            if plain(last) && plain(&v) {
                let mut events = last["Events"].as_array().cloned().unwrap_or_default();
                events.extend(v["Events"].as_array().cloned().unwrap_or_default());
                last["Events"] = Value::Array(events);
                last["Header"] = v["Header"].clone();
                continue;
            }
        }
        out.push(v);
    }
    out.iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// etcdctl's own log lines on stderr carry timestamps: keep their level and message.
fn normalize_watch_stderr(stderr: &str) -> String {
    normalize_stderr(stderr.as_bytes())
}

impl Session {
    /// `etcdctl watch ARGS` on both servers, compared (stdout normalized for `-w json` and
    /// `-w fields`); returns what the reference printed.
    fn watch(&mut self, args: &[&str], stdin: &[&str], lines: usize) -> WatchOutput {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let json = args.iter().any(|a| a == "-w=json");
        let fields = args.iter().any(|a| a == "-w=fields");
        let (r, c) = (
            self.pair.reference.client_url(),
            self.pair.candidate.client_url(),
        );
        let gap = std::time::Duration::from_millis(300);
        let (ro, co) = std::thread::scope(|s| {
            let rt = s.spawn(|| watch_run(&r, &args, stdin, gap, lines));
            let ct = s.spawn(|| watch_run(&c, &args, stdin, gap, lines));
            (rt.join().expect("etcdctl"), ct.join().expect("etcdctl"))
        });
        self.runs += 1;
        let norm = |o: &WatchOutput| {
            let stdout = if json {
                normalize_watch_json(&o.stdout)
            } else if fields {
                // Header lines come once per response (grouping is the server's choice).
                o.stdout
                    .lines()
                    .filter(|l| {
                        ![
                            "\"ClusterID\"",
                            "\"MemberID\"",
                            "\"Revision\"",
                            "\"RaftTerm\"",
                        ]
                        .iter()
                        .any(|h| l.starts_with(h))
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            } else {
                o.stdout.clone()
            };
            (o.code, stdout, normalize_watch_stderr(&o.stderr))
        };
        let (nr, nc) = (norm(&ro), norm(&co));
        if nr != nc {
            self.failures.push(format!(
                "etcdctl {} (stdin {stdin:?})\n  reference: exit {:?}\n    stdout: {:?}\n    stderr: {:?}\n  candidate: exit {:?}\n    stdout: {:?}\n    stderr: {:?}",
                args.join(" "),
                nr.0, nr.1, nr.2, nc.0, nc.1, nc.2
            ));
        }
        ro
    }
}

#[test]
fn watch_commands() {
    let mut s = Session::new();
    let base = s.revision();
    let rev = |n: i64| format!("--rev={}", base + n);
    for (k, v) in [("ew/a", "1"), ("ew/b", "1"), ("ew/a", "2"), ("ew/c", "1")] {
        s.run(&["put", k, v], None, SIMPLE);
    }
    s.run(&["del", "ew/b"], None, SIMPLE);
    s.run(
        &["txn", "--interactive=false"],
        Some("\nput ew/a 3\nput ew/d 1\n\n\n"),
        SIMPLE,
    );
    // base+1..6: put a, put b, put a, put c, del b, txn{put a, put d}.

    // Replayed from history: --prefix, a single key, a range, --prev-kv, every format that
    // prints something per event.
    let out = s
        .watch(&["watch", "--prefix", "ew/", &rev(1)], &[], 21)
        .stdout;
    assert_eq!(
        out,
        "PUT\new/a\n1\nPUT\new/b\n1\nPUT\new/a\n2\nPUT\new/c\n1\nDELETE\new/b\n\nPUT\new/a\n3\nPUT\new/d\n1",
        "etcdctl watch --prefix (reference)"
    );
    let out = s
        .watch(&["watch", "ew/a", &rev(1), "--prev-kv"], &[], 13)
        .stdout;
    assert_eq!(
        out, "PUT\new/a\n1\nPUT\new/a\n1\new/a\n2\nPUT\new/a\n2\new/a\n3",
        "etcdctl watch --prev-kv (reference)"
    );
    s.watch(&["watch", "ew/b", "ew/d", &rev(1), "--prev-kv"], &[], 11);
    s.watch(&["watch", "--prefix", "ew/", &rev(3), "-w=json"], &[], 1);
    s.watch(
        &[
            "watch",
            "--prefix",
            "ew/",
            &rev(5),
            "--prev-kv",
            "-w=fields",
        ],
        &[],
        37,
    );

    // Live events after a replay: the watch keeps running while more writes come in.
    let (r, c) = (s.pair.reference.client_url(), s.pair.candidate.client_url());
    let writer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(700));
        for url in [&r, &c] {
            ballast_testkit::etcdctl(url, &["put", "ew/live", "x"]);
        }
    });
    let out = s
        .watch(&["watch", "ew/live", "ew/livf", &rev(6)], &[], 3)
        .stdout;
    writer.join().expect("writer");
    assert_eq!(
        out, "PUT\new/live\nx",
        "etcdctl watch: live event (reference)"
    );

    // Interactive mode: watch commands read from stdin, one after the other.
    let out = s.watch(
        &["watch", "-i"],
        &[
            &format!("watch {} ew/c", rev(1)),
            &format!("watch --prefix --prev-kv {} ew/d", rev(1)),
        ],
        6,
    );
    assert_eq!(
        out.stdout, "PUT\new/c\n1\nPUT\new/d\n1",
        "etcdctl watch -i (reference)"
    );

    // A compacted start revision: the watch is cancelled with etcd's error.
    s.run(&["compaction", &(base + 5).to_string()], None, SIMPLE);
    let out = s.watch(&["watch", "--prefix", "ew/", &rev(2)], &[], 0);
    assert_eq!(
        (out.code, out.stderr.as_str()),
        (
            Some(5),
            "watch was canceled (etcdserver: mvcc: required revision has been compacted)\n\
             Error: watch is canceled by the server\n"
        ),
        "etcdctl watch from a compacted revision (reference)"
    );
    s.finish();
}

#[test]
fn lease_commands() {
    let mut s = Session::new();
    const LEASE_FORMATS: &[&str] = &["simple", "json", "fields", "protobuf", "table"];

    // ---- grant: one lease per format that prints its id (L0..L2), then errors ----
    s.run(&["lease", "grant", "600"], None, TEXT_FORMATS);
    // (`-w table` is not supported for lease commands, but the lease would still be granted,
    // and `-w protobuf` prints only the header: both are compared on the commands below.)
    s.run(&["lease", "grant", "9000000001"], None, SIMPLE);
    s.run(&["lease", "grant", "abc"], None, SIMPLE);
    s.run(&["lease", "grant"], None, SIMPLE);
    assert_eq!(
        s.leases.len(),
        3,
        "ids of the granted leases: {:?}",
        s.leases
    );

    // ---- put --lease, get shows it ----
    s.run(&["put", "--lease={L0}", "lk1", "v1"], None, SIMPLE);
    s.run(&["put", "--lease={L0}", "lk2", "v2"], None, TEXT_FORMATS);
    s.run(&["put", "--lease={L1}", "lk3", "v3"], None, SIMPLE);
    s.run(&["put", "lk3", "v4", "--ignore-lease"], None, SIMPLE);
    s.run(&["get", "lk", "--prefix"], None, &["json", "protobuf"]);

    // ---- timetolive, list, keep-alive --once ----
    s.run(&["lease", "timetolive", "{L0}"], None, LEASE_FORMATS);
    s.run(
        &["lease", "timetolive", "{L0}", "--keys"],
        None,
        LEASE_FORMATS,
    );
    s.run(&["lease", "timetolive", "{L1}", "--keys"], None, SIMPLE);
    s.run(&["lease", "timetolive", "1234"], None, TEXT_FORMATS);
    s.run(&["lease", "list"], None, LEASE_FORMATS);
    s.run(
        &["lease", "keep-alive", "--once", "{L0}"],
        None,
        LEASE_FORMATS,
    );
    s.run(&["lease", "keep-alive", "--once", "1234"], None, SIMPLE);

    // ---- revoke deletes the keys ----
    s.run(&["lease", "revoke", "{L0}"], None, SIMPLE);
    s.run(&["get", "lk", "--prefix"], None, TEXT_FORMATS);
    s.run(&["lease", "revoke", "{L0}"], None, SIMPLE);
    s.run(&["lease", "revoke", "{L1}"], None, &["json"]);
    s.run(&["lease", "revoke", "{L2}"], None, &["fields"]);
    // (`-w protobuf` of a revoke is an etcdctl error that prints the header: not compared.)
    s.run(&["lease", "grant", "600"], None, SIMPLE);
    s.run(&["lease", "revoke", "{L3}"], None, SIMPLE);
    s.run(&["lease", "revoke", "1234"], None, SIMPLE);
    s.run(&["lease", "timetolive", "{L0}"], None, TEXT_FORMATS);
    s.run(&["lease", "keep-alive", "--once", "{L1}"], None, SIMPLE);
    s.run(&["put", "--lease={L0}", "lk1", "v"], None, SIMPLE);
    s.run(&["lease", "list"], None, TEXT_FORMATS);

    // ---- keep-alive (streaming): keeps a short lease alive while it runs ----
    s.run(&["lease", "grant", "3"], None, SIMPLE);
    s.run(&["put", "--lease={L4}", "ka", "v"], None, SIMPLE);
    let args = |server: &ballast_testkit::Server, id: i64| {
        let mut cmd = std::process::Command::new(ballast_testkit::etcdctl_binary());
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", server.client_url()))
            .args(["lease", "keep-alive", &format!("{:x}", id as u64)])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().expect("spawn etcdctl lease keep-alive")
    };
    let (rid, cid) = s.leases[4];
    let mut keepers = [args(&s.pair.reference, rid), args(&s.pair.candidate, cid)];
    std::thread::sleep(std::time::Duration::from_secs(5));
    // Still there after longer than its TTL.
    s.run(&["get", "ka", "--print-value-only"], None, SIMPLE);
    let mut lines = Vec::new();
    for (k, id) in keepers.iter_mut().zip([rid, cid]) {
        let _ = k.kill();
        let out = k.wait_with_output_ref();
        let text = replace_ids(&String::from_utf8_lossy(&out), &[id]);
        let mut kept: Vec<&str> = text.lines().collect();
        kept.dedup();
        lines.push(kept.join("\n"));
    }
    assert_eq!(
        lines[0], "lease <L0> keepalived with TTL(3)",
        "reference keep-alive output"
    );
    assert_eq!(lines[0], lines[1], "etcdctl lease keep-alive output");

    s.finish();
}

/// Reads what a killed child wrote to stdout.
trait WaitOutput {
    fn wait_with_output_ref(&mut self) -> Vec<u8>;
}

impl WaitOutput for std::process::Child {
    fn wait_with_output_ref(&mut self) -> Vec<u8> {
        use std::io::Read;
        let _ = self.wait();
        let mut buf = Vec::new();
        if let Some(mut o) = self.stdout.take() {
            let _ = o.read_to_end(&mut buf);
        }
        buf
    }
}
