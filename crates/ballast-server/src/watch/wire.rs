//! Watch responses on the wire. An event is encoded once, by the first response that carries
//! it, and every other watcher's response shares those bytes: with `n` watchers of a key, a put
//! costs one protobuf encoding and `n` copies of its bytes into the streams' buffers, instead of
//! `n` key/value clones, `n` encodings and `n` frees.
//!
//! A [`WatchFrame`] is what the Watch service's response stream yields and [`WatchCodec`]
//! writes. Its encoding is byte for byte the one prost gives the equivalent `WatchResponse`
//! (fields in number order), which the tests check.

use std::sync::{Arc, OnceLock};

use ballast_mvcc::{Event, EventKind};
use ballast_proto::etcdserverpb::{ResponseHeader, WatchRequest, WatchResponse};
use ballast_proto::mvccpb;
use prost::bytes::{BufMut, Bytes, BytesMut};
use prost::encoding;
use prost::Message as _;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use crate::kv::to_pb_kv;

/// `WatchResponse` field numbers (etcd's rpc.proto).
const HEADER: u32 = 1;
const WATCH_ID: u32 = 2;
const FRAGMENT: u32 = 7;
const EVENTS: u32 = 11;

/// The events of one revision as the hub hands them to streams, with each event's encoded
/// `events` record (field tag, length, `mvccpb.Event`), made on first use.
pub(crate) struct SharedEvents {
    events: Vec<Event>,
    /// Per event: without `prev_kv`, and with it (an event without a previous key-value uses
    /// the first for both).
    records: Box<[[OnceLock<Bytes>; 2]]>,
}

impl SharedEvents {
    pub fn new(events: Vec<Event>) -> Arc<SharedEvents> {
        let records = events.iter().map(|_| Default::default()).collect();
        Arc::new(SharedEvents { events, records })
    }

    pub fn events(&self) -> &[Event] {
        &self.events
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// The encoded record of event `i` (a refcount, not a copy).
    pub fn record(&self, i: usize, prev_kv: bool) -> Bytes {
        let e = &self.events[i];
        let with_prev = prev_kv && e.prev_kv.is_some();
        self.records[i][with_prev as usize]
            .get_or_init(|| encode_record(e, with_prev))
            .clone()
    }
}

fn pb_event(e: &Event, prev_kv: bool) -> mvccpb::Event {
    mvccpb::Event {
        r#type: match e.kind {
            EventKind::Put => mvccpb::event::EventType::Put as i32,
            EventKind::Delete => mvccpb::event::EventType::Delete as i32,
        },
        kv: Some(to_pb_kv(e.kv.clone())),
        prev_kv: if prev_kv {
            e.prev_kv.clone().map(to_pb_kv)
        } else {
            None
        },
    }
}

fn encode_record(e: &Event, prev_kv: bool) -> Bytes {
    let ev = pb_event(e, prev_kv);
    let mut buf = BytesMut::with_capacity(encoding::message::encoded_len(EVENTS, &ev));
    encoding::message::encode(EVENTS, &ev, &mut buf);
    buf.freeze()
}

/// One watch response as it goes out.
#[derive(Debug, Clone)]
pub enum WatchFrame {
    /// A response without events (created, cancelled, progress), encoded as it is.
    Message(WatchResponse),
    /// Events of one watcher, as shared encoded records.
    Events(EventsFrame),
}

#[derive(Debug, Clone)]
pub struct EventsFrame {
    pub header: ResponseHeader,
    pub watch_id: i64,
    pub fragment: bool,
    /// Encoded `events` records, in order.
    pub events: Vec<Bytes>,
}

impl EventsFrame {
    /// The frame's encoding without its events.
    fn head_len(&self) -> usize {
        let mut n = encoding::message::encoded_len(HEADER, &self.header);
        if self.watch_id != 0 {
            n += encoding::int64::encoded_len(WATCH_ID, &self.watch_id);
        }
        if self.fragment {
            n += encoding::bool::encoded_len(FRAGMENT, &self.fragment);
        }
        n
    }

    pub fn encoded_len(&self) -> usize {
        self.head_len() + self.events.iter().map(Bytes::len).sum::<usize>()
    }

    fn encode(&self, buf: &mut impl BufMut) {
        encoding::message::encode(HEADER, &self.header, buf);
        if self.watch_id != 0 {
            encoding::int64::encode(WATCH_ID, &self.watch_id, buf);
        }
        if self.fragment {
            encoding::bool::encode(FRAGMENT, &self.fragment, buf);
        }
        for r in &self.events {
            buf.put_slice(r);
        }
    }

    /// Splits a frame whose encoding reaches `max_bytes` into fragments of at least one event
    /// each, all but the last marked `fragment` (etcd's `fragment` watch option).
    pub fn fragments(self, max_bytes: usize) -> Vec<EventsFrame> {
        if self.events.len() < 2 || self.encoded_len() < max_bytes {
            return vec![self];
        }
        let template = |events: Vec<Bytes>| EventsFrame {
            header: self.header,
            watch_id: self.watch_id,
            fragment: true,
            events,
        };
        let head = template(Vec::new()).head_len();
        let mut out = Vec::new();
        let mut cur = Vec::new();
        let mut size = head;
        for r in &self.events {
            if !cur.is_empty() && size + r.len() >= max_bytes {
                out.push(template(std::mem::take(&mut cur)));
                size = head;
            }
            size += r.len();
            cur.push(r.clone());
        }
        let mut last = template(cur);
        last.fragment = false;
        out.push(last);
        out
    }
}

impl WatchFrame {
    pub fn encoded_len(&self) -> usize {
        match self {
            WatchFrame::Message(r) => r.encoded_len(),
            WatchFrame::Events(f) => f.encoded_len(),
        }
    }

    pub fn encode(&self, buf: &mut impl BufMut) {
        match self {
            // Writing to a growable buffer cannot run out of room.
            WatchFrame::Message(r) => r.encode_raw(buf),
            WatchFrame::Events(f) => f.encode(buf),
        }
    }

    /// The response a client decodes from this frame.
    pub fn into_response(self) -> WatchResponse {
        match self {
            WatchFrame::Message(r) => r,
            WatchFrame::Events(f) => {
                let mut buf = Vec::with_capacity(f.encoded_len());
                f.encode(&mut buf);
                WatchResponse::decode(buf.as_slice()).expect("a frame decodes")
            }
        }
    }
}

/// The Watch service's codec: requests are decoded by prost, responses are [`WatchFrame`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct WatchCodec;

impl Codec for WatchCodec {
    type Encode = WatchFrame;
    type Decode = WatchRequest;
    type Encoder = WatchCodec;
    type Decoder = WatchCodec;

    fn encoder(&mut self) -> WatchCodec {
        WatchCodec
    }

    fn decoder(&mut self) -> WatchCodec {
        WatchCodec
    }
}

impl Encoder for WatchCodec {
    type Item = WatchFrame;
    type Error = Status;

    fn encode(&mut self, item: WatchFrame, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst);
        Ok(())
    }
}

impl Decoder for WatchCodec {
    type Item = WatchRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<WatchRequest>, Status> {
        // gRPC's code for a request that does not parse, as with every other service.
        WatchRequest::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballast_mvcc::KeyValue;

    fn kv(key: &str, value_len: usize, rev: i64) -> KeyValue {
        KeyValue {
            key: key.as_bytes().to_vec(),
            create_revision: rev - 1,
            mod_revision: rev,
            version: 2,
            value: vec![b'v'; value_len],
            lease: if rev % 2 == 0 { 7 } else { 0 },
        }
    }

    fn events() -> Arc<SharedEvents> {
        SharedEvents::new(vec![
            Event {
                kind: EventKind::Put,
                kv: kv("a", 3, 10),
                prev_kv: Some(kv("a", 1, 9)),
            },
            Event {
                kind: EventKind::Put,
                kv: kv("b", 300, 10),
                prev_kv: None,
            },
            Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: b"c".to_vec(),
                    mod_revision: 10,
                    ..Default::default()
                },
                prev_kv: Some(kv("c", 0, 4)),
            },
        ])
    }

    /// The response prost would send for the same content.
    fn as_response(f: &EventsFrame, evs: &SharedEvents, prev_kv: bool) -> WatchResponse {
        WatchResponse {
            header: Some(f.header),
            watch_id: f.watch_id,
            fragment: f.fragment,
            events: evs.events().iter().map(|e| pb_event(e, prev_kv)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_frame_encodes_byte_for_byte_as_prost_encodes_the_response() {
        let evs = events();
        for prev_kv in [false, true] {
            for (watch_id, fragment) in [(0, false), (5, false), (-1, true), (1 << 40, true)] {
                let f = EventsFrame {
                    header: ResponseHeader {
                        cluster_id: 0xdead_beef_1234,
                        member_id: 42,
                        revision: 10,
                        raft_term: 3,
                    },
                    watch_id,
                    fragment,
                    events: (0..evs.len()).map(|i| evs.record(i, prev_kv)).collect(),
                };
                let want = as_response(&f, &evs, prev_kv).encode_to_vec();
                let frame = WatchFrame::Events(f.clone());
                let mut got = Vec::new();
                frame.encode(&mut got);
                assert_eq!(
                    got, want,
                    "prev_kv {prev_kv} id {watch_id} fragment {fragment}"
                );
                assert_eq!(frame.encoded_len(), want.len());
                assert_eq!(frame.into_response(), as_response(&f, &evs, prev_kv));
            }
        }
    }

    #[test]
    fn a_record_is_encoded_once_and_shared() {
        let evs = events();
        let a = evs.record(1, false);
        let b = evs.record(1, false);
        assert_eq!(
            a.as_ptr(),
            b.as_ptr(),
            "the same bytes, not a second encoding"
        );
        // No previous key-value: asking for it gives the same record.
        assert_eq!(evs.record(1, true).as_ptr(), a.as_ptr());
        // With one, the two differ, and only the second carries it.
        let (plain, with) = (evs.record(0, false), evs.record(0, true));
        assert!(with.len() > plain.len());
        let decode = |r: &Bytes| {
            let frame = WatchFrame::Events(EventsFrame {
                header: ResponseHeader::default(),
                watch_id: 1,
                fragment: false,
                events: vec![r.clone()],
            });
            frame.into_response().events.remove(0)
        };
        assert_eq!(decode(&plain).prev_kv, None);
        assert_eq!(decode(&with).prev_kv.unwrap().value, b"v");
    }

    #[test]
    fn fragments_split_at_the_size_and_keep_every_event_in_order() {
        let big = SharedEvents::new(
            (0..10)
                .map(|i| Event {
                    kind: EventKind::Put,
                    kv: kv(&format!("k{i}"), 100, 20 + i),
                    prev_kv: None,
                })
                .collect(),
        );
        let frame = EventsFrame {
            header: ResponseHeader {
                revision: 29,
                ..Default::default()
            },
            watch_id: 3,
            fragment: false,
            events: (0..big.len()).map(|i| big.record(i, false)).collect(),
        };
        let whole = frame.encoded_len();
        let parts = frame.clone().fragments(350);
        assert!(parts.len() > 1, "{whole} bytes should split at 350");
        for p in &parts[..parts.len() - 1] {
            assert!(p.fragment);
            assert!(p.encoded_len() < 350 || p.events.len() == 1);
        }
        assert!(!parts.last().unwrap().fragment);
        let keys: Vec<_> = parts
            .iter()
            .flat_map(|p| {
                WatchFrame::Events(p.clone())
                    .into_response()
                    .events
                    .into_iter()
                    .map(|e| e.kv.unwrap().key)
            })
            .collect();
        let want: Vec<_> = (0..10).map(|i| format!("k{i}").into_bytes()).collect();
        assert_eq!(keys, want);
        assert!(parts
            .iter()
            .all(|p| p.watch_id == 3 && p.header.revision == 29));
        // Small enough: untouched.
        assert_eq!(frame.clone().fragments(whole + 1).len(), 1);
        // One event is never split, whatever its size.
        let one = EventsFrame {
            events: vec![big.record(0, false)],
            ..frame
        };
        assert_eq!(one.fragments(10).len(), 1);
    }
}
