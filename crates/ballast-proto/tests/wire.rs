//! Byte-level checks that our generated types speak etcd's wire format. Every expected
//! byte string below is computed by hand from the field numbers and types in etcd's
//! protos (tag = field_number << 3 | wire_type), not from our own encoder.

use ballast_proto::etcdserverpb::{
    compare, range_request, request_op, watch_request, CompactionRequest, Compare, PutRequest,
    RangeRequest, RangeResponse, RangeStreamResponse, RequestOp, ResponseHeader, StatusResponse,
    TxnRequest, WatchCreateRequest, WatchRequest, WatchResponse,
};
use ballast_proto::internal::{internal_raft_request, InternalRaftRequest, RequestHeader};
use ballast_proto::mvccpb::{event, Event, KeyValue};
use prost::Message;

/// int64 -1 is a 10-byte varint (int64, not sint64, on etcd's wire).
const MINUS_ONE: [u8; 10] = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];

#[test]
fn range_request_encodes_like_etcd() {
    let req = RangeRequest {
        key: b"foo".to_vec(),
        range_end: b"fop".to_vec(),
        limit: 10,
        revision: 300,
        sort_order: range_request::SortOrder::Descend as i32,
        sort_target: range_request::SortTarget::Mod as i32,
        serializable: true,
        keys_only: true,
        count_only: true,
        max_create_revision: -1,
        ..Default::default()
    };
    let mut want = vec![
        0x0a, 3, b'f', b'o', b'o', // 1: key
        0x12, 3, b'f', b'o', b'p', // 2: range_end
        0x18, 10, // 3: limit
        0x20, 0xac, 0x02, // 4: revision = 300
        0x28, 2, // 5: sort_order = DESCEND
        0x30, 3, // 6: sort_target = MOD
        0x38, 1, // 7: serializable
        0x40, 1, // 8: keys_only
        0x48, 1,    // 9: count_only
        0x68, // 13: max_create_revision (varint)
    ];
    want.extend_from_slice(&MINUS_ONE);
    assert_eq!(req.encode_to_vec(), want);
    assert_eq!(RangeRequest::decode(want.as_slice()).unwrap(), req);
}

#[test]
fn range_response_and_stream_chunk() {
    let resp = RangeResponse {
        header: Some(ResponseHeader {
            cluster_id: 1,
            member_id: 2,
            revision: 3,
            raft_term: 4,
        }),
        kvs: vec![KeyValue {
            key: b"a".to_vec(),
            create_revision: 2,
            mod_revision: 3,
            version: 1,
            value: b"v".to_vec(),
            lease: 7,
        }],
        more: true,
        count: 5,
    };
    let header = [0x08, 1, 0x10, 2, 0x18, 3, 0x20, 4];
    let kv = [
        0x0a, 1, b'a', 0x10, 2, 0x18, 3, 0x20, 1, 0x2a, 1, b'v', 0x30, 7,
    ];
    let mut want = vec![0x0a, header.len() as u8];
    want.extend_from_slice(&header);
    want.extend_from_slice(&[0x12, kv.len() as u8]);
    want.extend_from_slice(&kv);
    want.extend_from_slice(&[0x18, 1, 0x20, 5]);
    assert_eq!(resp.encode_to_vec(), want);

    // RangeStreamResponse wraps the RangeResponse as field 1.
    let chunk = RangeStreamResponse {
        range_response: Some(resp),
    };
    let mut wrapped = vec![0x0a, want.len() as u8];
    wrapped.extend_from_slice(&want);
    assert_eq!(chunk.encode_to_vec(), wrapped);
}

#[test]
fn put_request_decodes_from_etcd_bytes() {
    let bytes = [
        0x0a, 2, b'k', b'1', // 1: key
        0x12, 2, b'v', b'1', // 2: value
        0x18, 0x90, 0x4e, // 3: lease = 10000
        0x20, 1, // 4: prev_kv
        0x28, 1, // 5: ignore_value
        0x30, 1, // 6: ignore_lease
    ];
    let put = PutRequest::decode(bytes.as_slice()).unwrap();
    assert_eq!(
        put,
        PutRequest {
            key: b"k1".to_vec(),
            value: b"v1".to_vec(),
            lease: 10000,
            prev_kv: true,
            ignore_value: true,
            ignore_lease: true,
        }
    );
    assert_eq!(put.encode_to_vec(), bytes);
}

#[test]
fn txn_request_with_nested_compare_union_and_ops() {
    let compare = [
        0x08, 1, // 1: result = GREATER
        0x10, 2, // 2: target = MOD
        0x1a, 1, b'k', // 3: key
        0x30, 7, // 6: target_union.mod_revision = 7
        0x82, 0x04, 1, b'l', // 64: range_end (two-byte tag)
    ];
    let put = [0x0a, 1, b'k', 0x12, 1, b'v', 0x18, 0x10, 0x20, 1];
    let mut success_op = vec![0x12, put.len() as u8]; // RequestOp.request_put = 2
    success_op.extend_from_slice(&put);
    let failure_range = [0x0a, 3, 0x0a, 1, b'k']; // RequestOp.request_range = 1 { key }
    let failure_txn = [0x22, 0]; // RequestOp.request_txn = 4 {}

    let mut bytes = vec![0x0a, compare.len() as u8];
    bytes.extend_from_slice(&compare);
    bytes.extend_from_slice(&[0x12, success_op.len() as u8]);
    bytes.extend_from_slice(&success_op);
    bytes.extend_from_slice(&[0x1a, failure_range.len() as u8]);
    bytes.extend_from_slice(&failure_range);
    bytes.extend_from_slice(&[0x1a, failure_txn.len() as u8]);
    bytes.extend_from_slice(&failure_txn);

    let txn = TxnRequest::decode(bytes.as_slice()).unwrap();
    let want = TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Greater as i32,
            target: compare::CompareTarget::Mod as i32,
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            target_union: Some(compare::TargetUnion::ModRevision(7)),
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                lease: 16,
                prev_kv: true,
                ..Default::default()
            })),
        }],
        failure: vec![
            RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: b"k".to_vec(),
                    ..Default::default()
                })),
            },
            RequestOp {
                request: Some(request_op::Request::RequestTxn(TxnRequest::default())),
            },
        ],
    };
    assert_eq!(txn, want);
    assert_eq!(txn.encode_to_vec(), bytes);
}

#[test]
fn compare_union_value_and_lease_tags() {
    let value = Compare {
        target: compare::CompareTarget::Value as i32,
        key: b"k".to_vec(),
        target_union: Some(compare::TargetUnion::Value(b"x".to_vec())),
        ..Default::default()
    };
    assert_eq!(
        value.encode_to_vec(),
        [0x10, 3, 0x1a, 1, b'k', 0x3a, 1, b'x']
    );
    let lease = Compare {
        result: compare::CompareResult::NotEqual as i32,
        target: compare::CompareTarget::Lease as i32,
        target_union: Some(compare::TargetUnion::Lease(9)),
        ..Default::default()
    };
    assert_eq!(lease.encode_to_vec(), [0x08, 3, 0x10, 4, 0x40, 9]);
}

#[test]
fn watch_messages() {
    let create = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: b"a".to_vec(),
                start_revision: 2,
                progress_notify: true,
                filters: vec![1], // NODELETE
                prev_kv: true,
                watch_id: 5,
                fragment: true,
                ..Default::default()
            },
        )),
    };
    let inner = [
        0x0a, 1, b'a', 0x18, 2, 0x20, 1, 0x2a, 1, 1, // 5: filters, packed (proto3 default)
        0x30, 1, 0x38, 5, 0x40, 1,
    ];
    let mut want = vec![0x0a, inner.len() as u8];
    want.extend_from_slice(&inner);
    assert_eq!(create.encode_to_vec(), want);
    // etcd's Go encoder also accepts/sends unpacked repeated enums; we must decode both.
    let unpacked = [0x0a, 4, 0x28, 0, 0x28, 1];
    let WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(c)),
    } = WatchRequest::decode(unpacked.as_slice()).unwrap()
    else {
        panic!("expected create_request");
    };
    assert_eq!(c.filters, vec![0, 1]);

    let resp = WatchResponse {
        watch_id: 5,
        canceled: true,
        compact_revision: 9,
        cancel_reason: "x".into(),
        fragment: true,
        events: vec![Event {
            r#type: event::EventType::Delete as i32,
            kv: Some(KeyValue {
                key: b"a".to_vec(),
                mod_revision: 9,
                ..Default::default()
            }),
            prev_kv: None,
        }],
        ..Default::default()
    };
    let ev = [0x08, 1, 0x12, 5, 0x0a, 1, b'a', 0x18, 9];
    let mut want = vec![0x10, 5, 0x20, 1, 0x28, 9, 0x32, 1, b'x', 0x38, 1];
    want.extend_from_slice(&[0x5a, ev.len() as u8]); // 11: events
    want.extend_from_slice(&ev);
    assert_eq!(resp.encode_to_vec(), want);
}

#[test]
fn status_response_36_fields() {
    use ballast_proto::etcdserverpb::DowngradeInfo;
    let s = StatusResponse {
        db_size: 1,
        raft_index: 2,
        is_learner: true,
        storage_version: "3.6.0".into(),
        db_size_quota: 3,
        downgrade_info: Some(DowngradeInfo {
            enabled: true,
            target_version: "3.5".into(),
        }),
        ..Default::default()
    };
    let mut want = vec![0x18, 1, 0x28, 2, 0x50, 1, 0x5a, 5];
    want.extend_from_slice(b"3.6.0");
    want.extend_from_slice(&[0x60, 3, 0x6a, 7, 0x08, 1, 0x12, 3, b'3', b'.', b'5']);
    assert_eq!(s.encode_to_vec(), want);
}

#[test]
fn internal_raft_request_layout() {
    let put = InternalRaftRequest {
        id: 1,
        header: None,
        request: Some(internal_raft_request::Request::Put(PutRequest {
            key: b"k".to_vec(),
            ..Default::default()
        })),
    };
    assert_eq!(put.encode_to_vec(), [0x08, 1, 0x12, 3, 0x0a, 1, b'k']);
    let compact = InternalRaftRequest {
        id: 300,
        header: None,
        request: Some(internal_raft_request::Request::Compaction(
            CompactionRequest {
                revision: 4,
                physical: false,
            },
        )),
    };
    assert_eq!(
        compact.encode_to_vec(),
        [0x08, 0xac, 0x02, 0x2a, 2, 0x08, 4]
    );
    assert_eq!(
        InternalRaftRequest::decode(compact.encode_to_vec().as_slice()).unwrap(),
        compact
    );
    // Fields other than the ones we know must be skipped, not rejected (forward compatibility).
    let with_unknown = [0x08, 1, 0xc2, 0x0c, 0]; // field 200, empty message
    assert_eq!(
        InternalRaftRequest::decode(with_unknown.as_slice()).unwrap(),
        InternalRaftRequest {
            id: 1,
            header: None,
            request: None
        }
    );
    // The proposer's header is field 15 (one byte of tag in every entry).
    let with_header = InternalRaftRequest {
        id: 1,
        header: Some(RequestHeader {
            member_id: 2,
            ..Default::default()
        }),
        request: None,
    };
    assert_eq!(with_header.encode_to_vec(), [0x08, 1, 0x7a, 2, 0x08, 2]);
}

#[test]
fn enum_values_match_etcd() {
    use ballast_proto::authpb::permission::Type as PermType;
    use ballast_proto::etcdserverpb::watch_create_request::FilterType;
    use ballast_proto::etcdserverpb::{alarm_request::AlarmAction, downgrade_request, AlarmType};
    assert_eq!(AlarmType::None as i32, 0);
    assert_eq!(AlarmType::Nospace as i32, 1);
    assert_eq!(AlarmType::Corrupt as i32, 2);
    assert_eq!(AlarmAction::Deactivate as i32, 2);
    assert_eq!(downgrade_request::DowngradeAction::Cancel as i32, 2);
    assert_eq!(FilterType::Nodelete as i32, 1);
    assert_eq!(PermType::Readwrite as i32, 2);
    assert_eq!(event::EventType::Delete as i32, 1);
    assert_eq!(range_request::SortTarget::Value as i32, 4);
    // Proto enum value names (used by the JSON mapping) are etcd's.
    assert_eq!(AlarmType::Nospace.as_str_name(), "NOSPACE");
    assert_eq!(compare::CompareResult::NotEqual.as_str_name(), "NOT_EQUAL");
}
