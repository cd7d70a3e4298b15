//! Structural guards on our `.proto` files, read back from `FILE_DESCRIPTOR_SET`:
//! - every etcd RPC exists with etcd's request/response types and streaming shape;
//! - if Debian's etcd 3.4 protos are installed, every etcd message, field (name, number,
//!   type, label, oneof), enum value and RPC in them matches ours exactly, and everything
//!   we have beyond 3.4 is one of the listed later additions;
//! - optionally, the same comparison against newer etcd protos (`BALLAST_ETCD_PROTO_INCLUDE`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use protox::prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MethodDescriptor};

const ETCD_PACKAGES: &[&str] = &[
    "etcdserverpb",
    "mvccpb",
    "authpb",
    "v3lockpb",
    "v3electionpb",
];

fn ours() -> DescriptorPool {
    DescriptorPool::decode(ballast_proto::FILE_DESCRIPTOR_SET).expect("FILE_DESCRIPTOR_SET decodes")
}

fn in_etcd_package(full_name: &str) -> bool {
    ETCD_PACKAGES
        .iter()
        .any(|p| full_name.starts_with(&format!("{p}.")))
}

fn kind_name(kind: Kind) -> String {
    match kind {
        Kind::Message(m) => m.full_name().to_string(),
        Kind::Enum(e) => e.full_name().to_string(),
        scalar => format!("{scalar:?}").to_lowercase(),
    }
}

/// Proto-like rendering of a field, e.g. `repeated mvccpb.KeyValue kvs = 2`.
fn field_sig(f: &FieldDescriptor) -> String {
    let label = if f.is_list() { "repeated " } else { "" };
    let oneof = f
        .containing_oneof()
        .map(|o| format!(" (oneof {})", o.name()))
        .unwrap_or_default();
    format!(
        "{label}{} {} = {}{oneof}",
        kind_name(f.kind()),
        f.name(),
        f.number()
    )
}

fn method_sig(m: &MethodDescriptor) -> String {
    let stream = |s: bool| if s { "stream " } else { "" };
    format!(
        "{}/{}({}{}) -> {}{}",
        m.parent_service().full_name(),
        m.name(),
        stream(m.is_client_streaming()),
        m.input().full_name(),
        stream(m.is_server_streaming()),
        m.output().full_name()
    )
}

/// message -> field name -> signature
fn messages(pool: &DescriptorPool) -> BTreeMap<String, BTreeMap<String, String>> {
    pool.all_messages()
        .filter(|m| in_etcd_package(m.full_name()))
        .map(|m| {
            let fields = m
                .fields()
                .map(|f| (f.name().to_string(), field_sig(&f)))
                .collect();
            (m.full_name().to_string(), fields)
        })
        .collect()
}

/// enum -> value name -> number
fn enums(pool: &DescriptorPool) -> BTreeMap<String, BTreeMap<String, i32>> {
    pool.all_enums()
        .filter(|e| in_etcd_package(e.full_name()))
        .map(|e| {
            let values = e
                .values()
                .map(|v| (v.name().to_string(), v.number()))
                .collect();
            (e.full_name().to_string(), values)
        })
        .collect()
}

fn methods(pool: &DescriptorPool) -> BTreeSet<String> {
    pool.services()
        .filter(|s| in_etcd_package(s.full_name()))
        .flat_map(|s| s.methods().map(|m| method_sig(&m)).collect::<Vec<_>>())
        .collect()
}

/// Everything etcd added after a given baseline, as (kind, item) pairs that our
/// descriptor set may contain beyond that baseline.
struct Additions {
    messages: &'static [(&'static str, &'static [&'static str])],
    fields: &'static [(&'static str, &'static str)],
    enums: &'static [&'static str],
    methods: &'static [&'static str],
}

/// Added in etcd 3.5–3.7, i.e. absent from etcd 3.4's protos.
const SINCE_3_5: Additions = Additions {
    messages: &[
        ("etcdserverpb.RangeStreamResponse", &["etcdserverpb.RangeResponse range_response = 1"]),
        (
            "etcdserverpb.DowngradeRequest",
            &[
                "etcdserverpb.DowngradeRequest.DowngradeAction action = 1",
                "string version = 2",
            ],
        ),
        (
            "etcdserverpb.DowngradeResponse",
            &["etcdserverpb.ResponseHeader header = 1", "string version = 2"],
        ),
        ("etcdserverpb.DowngradeVersionTestRequest", &["string ver = 1"]),
        ("etcdserverpb.DowngradeInfo", &["bool enabled = 1", "string targetVersion = 2"]),
        ("etcdserverpb.AuthStatusRequest", &[]),
        (
            "etcdserverpb.AuthStatusResponse",
            &[
                "etcdserverpb.ResponseHeader header = 1",
                "bool enabled = 2",
                "uint64 authRevision = 3",
            ],
        ),
    ],
    fields: &[
        ("etcdserverpb.HashKVResponse", "int64 hash_revision = 4"),
        ("etcdserverpb.SnapshotResponse", "string version = 4"),
        ("etcdserverpb.MemberListRequest", "bool linearizable = 1"),
        ("etcdserverpb.StatusResponse", "string storageVersion = 11"),
        ("etcdserverpb.StatusResponse", "int64 dbSizeQuota = 12"),
        ("etcdserverpb.StatusResponse", "etcdserverpb.DowngradeInfo downgradeInfo = 13"),
        ("etcdserverpb.AuthUserAddRequest", "string hashedPassword = 4"),
        ("etcdserverpb.AuthUserChangePasswordRequest", "string hashedPassword = 3"),
    ],
    enums: &["etcdserverpb.DowngradeRequest.DowngradeAction"],
    methods: &[
        "etcdserverpb.KV/RangeStream(etcdserverpb.RangeRequest) -> stream etcdserverpb.RangeStreamResponse",
        "etcdserverpb.Maintenance/Downgrade(etcdserverpb.DowngradeRequest) -> etcdserverpb.DowngradeResponse",
        "etcdserverpb.Auth/AuthStatus(etcdserverpb.AuthStatusRequest) -> etcdserverpb.AuthStatusResponse",
    ],
};

/// Added in etcd 3.7 (absent from 3.6's protos).
const SINCE_3_7: Additions = Additions {
    messages: &[("etcdserverpb.RangeStreamResponse", &["etcdserverpb.RangeResponse range_response = 1"])],
    fields: &[],
    enums: &[],
    methods: &[
        "etcdserverpb.KV/RangeStream(etcdserverpb.RangeRequest) -> stream etcdserverpb.RangeStreamResponse",
    ],
};

/// Asserts `ours == theirs + additions`, collecting every difference before failing.
fn assert_matches(theirs: &DescriptorPool, ours: &DescriptorPool, add: &Additions, label: &str) {
    let mut errors = Vec::new();

    let (their_msgs, our_msgs) = (messages(theirs), messages(ours));
    assert!(
        their_msgs.len() > 10,
        "{label}: suspiciously few etcd messages parsed"
    );
    for (name, their_fields) in &their_msgs {
        let Some(our_fields) = our_msgs.get(name) else {
            errors.push(format!("missing message {name}"));
            continue;
        };
        for (field, sig) in their_fields {
            match our_fields.get(field) {
                None => errors.push(format!("{name}: missing field `{sig}`")),
                Some(ours) if ours != sig => {
                    errors.push(format!("{name}: `{ours}`, etcd has `{sig}`"))
                }
                Some(_) => {}
            }
        }
        for (field, sig) in our_fields {
            if !their_fields.contains_key(field)
                && !add.fields.contains(&(name.as_str(), sig.as_str()))
            {
                errors.push(format!("{name}: unexpected extra field `{sig}`"));
            }
        }
    }
    for (name, our_fields) in &our_msgs {
        if their_msgs.contains_key(name) {
            continue;
        }
        match add.messages.iter().find(|(n, _)| n == name) {
            None => errors.push(format!("unexpected extra message {name}")),
            Some((_, want)) => {
                let got: BTreeSet<&str> = our_fields.values().map(String::as_str).collect();
                let want: BTreeSet<&str> = want.iter().copied().collect();
                if got != want {
                    errors.push(format!("{name}: fields {got:?}, expected {want:?}"));
                }
            }
        }
    }
    for (name, _) in add.messages {
        if !our_msgs.contains_key(*name) {
            errors.push(format!("missing added message {name}"));
        }
    }
    for (msg, sig) in add.fields {
        if !our_msgs
            .get(*msg)
            .is_some_and(|f| f.values().any(|s| s == sig))
        {
            errors.push(format!("{msg}: missing added field `{sig}`"));
        }
    }

    let (their_enums, our_enums) = (enums(theirs), enums(ours));
    for (name, values) in &their_enums {
        match our_enums.get(name) {
            None => errors.push(format!("missing enum {name}")),
            Some(ours) if ours != values => {
                errors.push(format!("enum {name}: {ours:?}, etcd has {values:?}"))
            }
            Some(_) => {}
        }
    }
    for name in our_enums.keys() {
        if !their_enums.contains_key(name) && !add.enums.contains(&name.as_str()) {
            errors.push(format!("unexpected extra enum {name}"));
        }
    }

    let (their_methods, our_methods) = (methods(theirs), methods(ours));
    for m in their_methods.difference(&our_methods) {
        errors.push(format!("missing or different rpc {m}"));
    }
    for m in our_methods.difference(&their_methods) {
        if !add.methods.contains(&m.as_str()) {
            errors.push(format!("unexpected extra rpc {m}"));
        }
    }

    assert!(
        errors.is_empty(),
        "{label}: {} differences:\n{}",
        errors.len(),
        errors.join("\n")
    );
}

/// Every etcd RPC up to 3.7, written out by hand so the check runs on machines
/// without etcd's own protos.
const ETCD_RPCS: &[&str] = &[
    "etcdserverpb.KV/Range(etcdserverpb.RangeRequest) -> etcdserverpb.RangeResponse",
    "etcdserverpb.KV/RangeStream(etcdserverpb.RangeRequest) -> stream etcdserverpb.RangeStreamResponse",
    "etcdserverpb.KV/Put(etcdserverpb.PutRequest) -> etcdserverpb.PutResponse",
    "etcdserverpb.KV/DeleteRange(etcdserverpb.DeleteRangeRequest) -> etcdserverpb.DeleteRangeResponse",
    "etcdserverpb.KV/Txn(etcdserverpb.TxnRequest) -> etcdserverpb.TxnResponse",
    "etcdserverpb.KV/Compact(etcdserverpb.CompactionRequest) -> etcdserverpb.CompactionResponse",
    "etcdserverpb.Watch/Watch(stream etcdserverpb.WatchRequest) -> stream etcdserverpb.WatchResponse",
    "etcdserverpb.Lease/LeaseGrant(etcdserverpb.LeaseGrantRequest) -> etcdserverpb.LeaseGrantResponse",
    "etcdserverpb.Lease/LeaseRevoke(etcdserverpb.LeaseRevokeRequest) -> etcdserverpb.LeaseRevokeResponse",
    "etcdserverpb.Lease/LeaseKeepAlive(stream etcdserverpb.LeaseKeepAliveRequest) -> stream etcdserverpb.LeaseKeepAliveResponse",
    "etcdserverpb.Lease/LeaseTimeToLive(etcdserverpb.LeaseTimeToLiveRequest) -> etcdserverpb.LeaseTimeToLiveResponse",
    "etcdserverpb.Lease/LeaseLeases(etcdserverpb.LeaseLeasesRequest) -> etcdserverpb.LeaseLeasesResponse",
    "etcdserverpb.Cluster/MemberAdd(etcdserverpb.MemberAddRequest) -> etcdserverpb.MemberAddResponse",
    "etcdserverpb.Cluster/MemberRemove(etcdserverpb.MemberRemoveRequest) -> etcdserverpb.MemberRemoveResponse",
    "etcdserverpb.Cluster/MemberUpdate(etcdserverpb.MemberUpdateRequest) -> etcdserverpb.MemberUpdateResponse",
    "etcdserverpb.Cluster/MemberList(etcdserverpb.MemberListRequest) -> etcdserverpb.MemberListResponse",
    "etcdserverpb.Cluster/MemberPromote(etcdserverpb.MemberPromoteRequest) -> etcdserverpb.MemberPromoteResponse",
    "etcdserverpb.Maintenance/Alarm(etcdserverpb.AlarmRequest) -> etcdserverpb.AlarmResponse",
    "etcdserverpb.Maintenance/Status(etcdserverpb.StatusRequest) -> etcdserverpb.StatusResponse",
    "etcdserverpb.Maintenance/Defragment(etcdserverpb.DefragmentRequest) -> etcdserverpb.DefragmentResponse",
    "etcdserverpb.Maintenance/Hash(etcdserverpb.HashRequest) -> etcdserverpb.HashResponse",
    "etcdserverpb.Maintenance/HashKV(etcdserverpb.HashKVRequest) -> etcdserverpb.HashKVResponse",
    "etcdserverpb.Maintenance/Snapshot(etcdserverpb.SnapshotRequest) -> stream etcdserverpb.SnapshotResponse",
    "etcdserverpb.Maintenance/MoveLeader(etcdserverpb.MoveLeaderRequest) -> etcdserverpb.MoveLeaderResponse",
    "etcdserverpb.Maintenance/Downgrade(etcdserverpb.DowngradeRequest) -> etcdserverpb.DowngradeResponse",
    "etcdserverpb.Auth/AuthEnable(etcdserverpb.AuthEnableRequest) -> etcdserverpb.AuthEnableResponse",
    "etcdserverpb.Auth/AuthDisable(etcdserverpb.AuthDisableRequest) -> etcdserverpb.AuthDisableResponse",
    "etcdserverpb.Auth/AuthStatus(etcdserverpb.AuthStatusRequest) -> etcdserverpb.AuthStatusResponse",
    "etcdserverpb.Auth/Authenticate(etcdserverpb.AuthenticateRequest) -> etcdserverpb.AuthenticateResponse",
    "etcdserverpb.Auth/UserAdd(etcdserverpb.AuthUserAddRequest) -> etcdserverpb.AuthUserAddResponse",
    "etcdserverpb.Auth/UserGet(etcdserverpb.AuthUserGetRequest) -> etcdserverpb.AuthUserGetResponse",
    "etcdserverpb.Auth/UserList(etcdserverpb.AuthUserListRequest) -> etcdserverpb.AuthUserListResponse",
    "etcdserverpb.Auth/UserDelete(etcdserverpb.AuthUserDeleteRequest) -> etcdserverpb.AuthUserDeleteResponse",
    "etcdserverpb.Auth/UserChangePassword(etcdserverpb.AuthUserChangePasswordRequest) -> etcdserverpb.AuthUserChangePasswordResponse",
    "etcdserverpb.Auth/UserGrantRole(etcdserverpb.AuthUserGrantRoleRequest) -> etcdserverpb.AuthUserGrantRoleResponse",
    "etcdserverpb.Auth/UserRevokeRole(etcdserverpb.AuthUserRevokeRoleRequest) -> etcdserverpb.AuthUserRevokeRoleResponse",
    "etcdserverpb.Auth/RoleAdd(etcdserverpb.AuthRoleAddRequest) -> etcdserverpb.AuthRoleAddResponse",
    "etcdserverpb.Auth/RoleGet(etcdserverpb.AuthRoleGetRequest) -> etcdserverpb.AuthRoleGetResponse",
    "etcdserverpb.Auth/RoleList(etcdserverpb.AuthRoleListRequest) -> etcdserverpb.AuthRoleListResponse",
    "etcdserverpb.Auth/RoleDelete(etcdserverpb.AuthRoleDeleteRequest) -> etcdserverpb.AuthRoleDeleteResponse",
    "etcdserverpb.Auth/RoleGrantPermission(etcdserverpb.AuthRoleGrantPermissionRequest) -> etcdserverpb.AuthRoleGrantPermissionResponse",
    "etcdserverpb.Auth/RoleRevokePermission(etcdserverpb.AuthRoleRevokePermissionRequest) -> etcdserverpb.AuthRoleRevokePermissionResponse",
    "v3lockpb.Lock/Lock(v3lockpb.LockRequest) -> v3lockpb.LockResponse",
    "v3lockpb.Lock/Unlock(v3lockpb.UnlockRequest) -> v3lockpb.UnlockResponse",
    "v3electionpb.Election/Campaign(v3electionpb.CampaignRequest) -> v3electionpb.CampaignResponse",
    "v3electionpb.Election/Proclaim(v3electionpb.ProclaimRequest) -> v3electionpb.ProclaimResponse",
    "v3electionpb.Election/Leader(v3electionpb.LeaderRequest) -> v3electionpb.LeaderResponse",
    "v3electionpb.Election/Observe(v3electionpb.LeaderRequest) -> stream v3electionpb.LeaderResponse",
    "v3electionpb.Election/Resign(v3electionpb.ResignRequest) -> v3electionpb.ResignResponse",
];

#[test]
fn every_etcd_rpc_exists_with_etcd_types() {
    let got = methods(&ours());
    let want: BTreeSet<String> = ETCD_RPCS.iter().map(|s| s.to_string()).collect();
    assert_eq!(got, want);
}

#[test]
fn grpc_paths_are_etcds() {
    // tonic routes on "/{package}.{Service}/{Method}", built from these names.
    let pool = ours();
    let paths: BTreeSet<String> = pool
        .services()
        .flat_map(|s| {
            s.methods()
                .map(|m| format!("/{}/{}", s.full_name(), m.name()))
                .collect::<Vec<_>>()
        })
        .collect();
    for p in [
        "/etcdserverpb.KV/Range",
        "/etcdserverpb.KV/Txn",
        "/etcdserverpb.Watch/Watch",
        "/etcdserverpb.Lease/LeaseKeepAlive",
        "/etcdserverpb.Maintenance/HashKV",
        "/etcdserverpb.Auth/UserGrantRole",
        "/v3lockpb.Lock/Lock",
        "/v3electionpb.Election/Observe",
    ] {
        assert!(paths.contains(p), "missing {p}");
    }
}

#[test]
fn json_names_keep_etcd_spelling() {
    let pool = ours();
    let json = |msg: &str, field: &str| {
        let m = pool
            .get_message_by_name(msg)
            .unwrap_or_else(|| panic!("{msg}"));
        let f = m
            .get_field_by_name(field)
            .unwrap_or_else(|| panic!("{msg}.{field}"));
        f.json_name().to_string()
    };
    assert_eq!(json("etcdserverpb.Member", "peerURLs"), "peerURLs");
    assert_eq!(json("etcdserverpb.Member", "ID"), "ID");
    assert_eq!(
        json("etcdserverpb.LeaseTimeToLiveResponse", "grantedTTL"),
        "grantedTTL"
    );
    assert_eq!(
        json("etcdserverpb.LeaseCheckpoint", "remaining_TTL"),
        "remainingTTL"
    );
    assert_eq!(json("etcdserverpb.RangeRequest", "range_end"), "rangeEnd");
}

#[test]
fn internal_payload_is_its_own_package() {
    let pool = ours();
    let m = pool
        .get_message_by_name("ballast.internal.InternalRaftRequest")
        .expect("InternalRaftRequest");
    let sigs: Vec<String> = m.fields().map(|f| field_sig(&f)).collect();
    assert_eq!(
        sigs,
        [
            "uint64 id = 1",
            "etcdserverpb.PutRequest put = 2 (oneof request)",
            "etcdserverpb.DeleteRangeRequest delete_range = 3 (oneof request)",
            "etcdserverpb.TxnRequest txn = 4 (oneof request)",
            "etcdserverpb.CompactionRequest compaction = 5 (oneof request)",
            "etcdserverpb.RangeRequest range = 6 (oneof request)",
            "etcdserverpb.LeaseGrantRequest lease_grant = 7 (oneof request)",
            "etcdserverpb.LeaseRevokeRequest lease_revoke = 8 (oneof request)",
            "ballast.internal.LeaseCheckpoint lease_checkpoint = 9 (oneof request)",
            "ballast.internal.LeaseExpire lease_expire = 10 (oneof request)",
            "etcdserverpb.LeaseRevokeRequest lease_revoke_rest = 11 (oneof request)",
            "etcdserverpb.AlarmRequest alarm = 12 (oneof request)",
            "ballast.internal.Member member_publish = 13 (oneof request)",
            "ballast.internal.Member member_update = 14 (oneof request)",
            "ballast.internal.RequestHeader header = 15",
        ]
    );
    let sigs = |name: &str| -> Vec<String> {
        pool.get_message_by_name(name)
            .unwrap_or_else(|| panic!("{name}"))
            .fields()
            .map(|f| field_sig(&f))
            .collect()
    };
    assert_eq!(
        sigs("ballast.internal.LeaseCheckpoint"),
        [
            "int64 clock_ms = 1",
            "repeated ballast.internal.LeaseDeadline deadlines = 2"
        ]
    );
    assert_eq!(
        sigs("ballast.internal.LeaseDeadline"),
        ["int64 id = 1", "int64 deadline_ms = 2"]
    );
    assert_eq!(
        sigs("ballast.internal.LeaseExpire"),
        ["repeated int64 ids = 1"]
    );
}

/// Debian's `golang-etcd-server-dev` layout (etcd 3.4) and the gogo/googleapis protos it imports.
const DEBIAN_GOCODE: &str = "/usr/share/gocode/src";

/// Whether Debian's etcd protos are installed. `scripts/test` installs them; outside CI a
/// missing package skips the comparison with a note, under `CI=true` it fails the test.
fn debian_protos_installed() -> bool {
    let rpc = Path::new(DEBIAN_GOCODE).join("go.etcd.io/etcd/etcdserver/etcdserverpb/rpc.proto");
    if rpc.exists() {
        return true;
    }
    let what = format!(
        "{} not installed (apt install golang-etcd-server-dev)",
        rpc.display()
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("missing test prerequisite under CI=true: {what}");
    }
    eprintln!("SKIPPED: {what}");
    false
}

#[test]
fn matches_debian_etcd_3_4_protos() {
    let root = Path::new(DEBIAN_GOCODE);
    if !debian_protos_installed() {
        return;
    }
    let includes = [
        root.join("go.etcd.io"),
        root.join("github.com/gogo/protobuf"),
        root.join("github.com/grpc-ecosystem/grpc-gateway/third_party/googleapis"),
    ];
    let files = [
        "etcd/etcdserver/etcdserverpb/rpc.proto",
        "etcd/mvcc/mvccpb/kv.proto",
        "etcd/auth/authpb/auth.proto",
        "etcd/etcdserver/api/v3lock/v3lockpb/v3lock.proto",
        "etcd/etcdserver/api/v3election/v3electionpb/v3election.proto",
    ];
    let theirs = compile(&includes, &files);
    assert_matches(&theirs, &ours(), &SINCE_3_5, "etcd 3.4 (Debian)");
}

/// Opt-in: `BALLAST_ETCD_PROTO_INCLUDE=dir1:dir2` where `etcd/api/etcdserverpb/rpc.proto`
/// etc. resolve (the layout etcd >= 3.5 uses, e.g. an etcd checkout's parent plus the
/// googleapis include dirs). `BALLAST_ETCD_PROTO_VERSION` = "3.6" (default) or "3.7".
#[test]
#[ignore = "needs etcd >= 3.5 protos (no Debian package ships them): BALLAST_ETCD_PROTO_INCLUDE=... cargo test -- --ignored"]
fn matches_newer_etcd_protos_if_given() {
    let Ok(dirs) = std::env::var("BALLAST_ETCD_PROTO_INCLUDE") else {
        panic!("set BALLAST_ETCD_PROTO_INCLUDE to the include dirs of etcd >= 3.5 protos");
    };
    let includes: Vec<_> = dirs
        .split(':')
        .map(Path::new)
        .map(Path::to_path_buf)
        .collect();
    let files = [
        "etcd/api/etcdserverpb/rpc.proto",
        "etcd/api/mvccpb/kv.proto",
        "etcd/api/authpb/auth.proto",
        "etcd/server/etcdserver/api/v3lock/v3lockpb/v3lock.proto",
        "etcd/server/etcdserver/api/v3election/v3electionpb/v3election.proto",
    ];
    let theirs = compile(&includes, &files);
    let none = Additions {
        messages: &[],
        fields: &[],
        enums: &[],
        methods: &[],
    };
    let additions = match std::env::var("BALLAST_ETCD_PROTO_VERSION").as_deref() {
        Ok("3.7") => &none,
        _ => &SINCE_3_7,
    };
    assert_matches(&theirs, &ours(), additions, "newer etcd");
}

fn compile(includes: &[impl AsRef<Path>], files: &[&str]) -> DescriptorPool {
    let mut compiler = protox::Compiler::new(includes).expect("include dirs");
    compiler.include_imports(true);
    compiler
        .open_files(files)
        .unwrap_or_else(|e| panic!("parsing etcd protos: {e:?}"));
    compiler.descriptor_pool()
}

/// Guards the guard: a copy of our protos with one renumbered field and one retyped field
/// must fail the Debian comparison, naming both.
#[test]
fn comparison_catches_a_wrong_field() {
    let root = Path::new(DEBIAN_GOCODE);
    if !debian_protos_installed() {
        return;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let tmp = std::env::temp_dir().join(format!("ballast-proto-mutant-{}", std::process::id()));
    for dir in ["etcdserverpb", "mvccpb", "authpb"] {
        std::fs::create_dir_all(tmp.join(dir)).unwrap();
    }
    for file in ["mvccpb/kv.proto", "authpb/auth.proto"] {
        std::fs::copy(src.join(file), tmp.join(file)).unwrap();
    }
    let rpc = std::fs::read_to_string(src.join("etcdserverpb/rpc.proto")).unwrap();
    let mutant = rpc
        .replace(
            "uint64 raftAppliedIndex = 7;",
            "uint64 raftAppliedIndex = 14;",
        )
        .replace(
            "int64 compact_revision = 3;",
            "uint64 compact_revision = 3;",
        );
    assert_ne!(mutant, rpc);
    std::fs::write(tmp.join("etcdserverpb/rpc.proto"), mutant).unwrap();

    let includes = [
        root.join("go.etcd.io"),
        root.join("github.com/gogo/protobuf"),
        root.join("github.com/grpc-ecosystem/grpc-gateway/third_party/googleapis"),
    ];
    let theirs = compile(&includes, &["etcd/etcdserver/etcdserverpb/rpc.proto"]);
    let mutated = compile(&[&tmp], &["etcdserverpb/rpc.proto"]);
    std::fs::remove_dir_all(&tmp).unwrap();

    let err = std::panic::catch_unwind(|| assert_matches(&theirs, &mutated, &SINCE_3_5, "mutant"))
        .expect_err("mutated protos must not match etcd");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("raftAppliedIndex = 14"), "{msg}");
    assert!(msg.contains("uint64 compact_revision = 3"), "{msg}");
}
