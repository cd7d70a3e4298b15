//! Range and RangeStream as they are read: from one MVCC snapshot (a [`ReadView`], kept for
//! the length of the response), on the blocking pool, in bounded memory.
//!
//! - **Range** (unary) is served here rather than by the generated KV service (the
//!   [`KvRouter`] sends `/etcdserverpb.KV/Range` here and everything else to tonic). A range
//!   that neither sorts nor filters is planned first (the revisions of its rows, its count and
//!   `more`, from the in-memory index), then its rows are read once to size the response (the
//!   gRPC frame carries the message length first) and, unless it is small, read again and
//!   encoded as HTTP/2 takes them: each chunk of about [`CHUNK_BYTES`] is read on the
//!   blocking pool when HTTP/2 has taken the one before, so the server holds one chunk (and the
//!   64 KiB send buffer) whatever the response's size, and a client that stops reading holds
//!   no thread, only its snapshot. Its encoding is byte for byte prost's
//!   (fields in number order). A small response (under [`INLINE_BYTES`]) keeps the rows of the
//!   sizing pass and goes out in one piece. Ranges that sort or filter, and count-only ones,
//!   are read whole (etcd reads those whole too). A single-key read runs inline on the async
//!   worker (it reads one row); every other read runs on the blocking pool.
//! - **RangeStream** sends chunks of at most [`super::RANGE_STREAM_CHUNK`] keys and about
//!   [`CHUNK_BYTES`] each, read from the snapshot the same way (when gRPC asks for the next);
//!   header, `more` and `count` ride on the last chunk.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ballast_mvcc::ReadView;
use ballast_proto::etcdserverpb::kv_server::KvServer;
use ballast_proto::etcdserverpb::{
    RangeRequest, RangeResponse, RangeStreamResponse, ResponseHeader,
};
use hyper::body::{Body, Frame};
use prost::bytes::{BufMut, Bytes, BytesMut};
use prost::encoding;
use prost::Message as _;
use tonic::codec::{DecodeBuf, Decoder, Streaming};
use tonic::codegen::{http, BoxFuture, Service, StdError};
use tonic::server::NamedService;
use tonic::Status;

use super::KvService;
use crate::error::ServerError;
use crate::kv::{self, to_pb_kv};
use crate::member::Member;

/// Bytes of encoded response handed to HTTP/2 at a time.
pub const CHUNK_BYTES: usize = 256 * 1024;
/// A Range response up to this size is kept from the sizing pass and sent in one piece.
pub const INLINE_BYTES: usize = 1024 * 1024;

/// A large response hands the memory its rows and chunks used back to the OS after every this
/// many bytes (see [`return_freed_memory`]).
const TRIM_EVERY: usize = 64 << 20;

/// Returns the memory the allocator keeps after it was freed to the OS. With glibc, the
/// blocking pool's threads each allocate from an arena of their own, and the megabytes of rows
/// and chunks a large response goes through stay in those arenas once freed: 3 concurrent
/// 1 GiB responses grew RSS by 643 MiB without this, though none was held.
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of the allocator's own arenas to the OS.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// `RangeResponse` field numbers (etcd's rpc.proto).
const HEADER: u32 = 1;
const KVS: u32 = 2;
const MORE: u32 = 3;
const COUNT: u32 = 4;

fn read_err(e: ballast_mvcc::MvccError) -> ServerError {
    ServerError::from(e)
}

/// The KV service with Range served by this module.
#[derive(Clone)]
pub struct KvRouter {
    inner: KvServer<KvService>,
    member: Arc<Member>,
    max_decoding_message_size: usize,
}

impl KvRouter {
    pub fn new(member: Arc<Member>, max_decoding_message_size: usize) -> KvRouter {
        KvRouter {
            inner: KvServer::new(KvService::new(member.clone()))
                .max_decoding_message_size(max_decoding_message_size)
                .max_encoding_message_size(usize::MAX),
            member,
            max_decoding_message_size,
        }
    }
}

impl NamedService for KvRouter {
    const NAME: &'static str = "etcdserverpb.KV";
}

impl<B> Service<http::Request<B>> for KvRouter
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != "/etcdserverpb.KV/Range" {
            return self.inner.call(req);
        }
        let member = self.member.clone();
        let max = self.max_decoding_message_size;
        Box::pin(async move {
            Ok(match unary_range(member, max, req).await {
                Ok(r) => r,
                Err(status) => status.into_http(),
            })
        })
    }
}

struct RangeRequestDecoder;

impl Decoder for RangeRequestDecoder {
    type Item = RangeRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<RangeRequest>, Status> {
        RangeRequest::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

async fn unary_range<B>(
    member: Arc<Member>,
    max: usize,
    req: http::Request<B>,
) -> Result<http::Response<tonic::body::Body>, Status>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    let mut requests =
        Streaming::new_request(RangeRequestDecoder, req.into_body(), None, Some(max));
    let r = requests
        .message()
        .await?
        .ok_or_else(|| Status::internal("Missing request message."))?;
    kv::check_range(&r)?;
    if !r.serializable {
        member.read_barrier().await?;
    }
    let stall = member.cfg.range_stall_timeout;
    let body = if r.range_end.is_empty() {
        // One row: read it here.
        let mut view = member.store.read().map_err(read_err)?;
        let mut resp = kv::range(&mut view, &r)?;
        member.fill_header(&mut resp.header);
        RangeBody::whole(whole(&resp)?)
    } else {
        let started = tokio::task::spawn_blocking(move || start_unary(&member, &r))
            .await
            .map_err(|e| ServerError::Internal(format!("range read failed: {e}")))??;
        match started {
            Started::Whole(resp) => RangeBody::whole(whole(&resp)?),
            Started::Streamed { head, tail, cursor } => {
                RangeBody::streamed(head, tail, cursor, stall)
            }
        }
    };
    let mut res = http::Response::new(tonic::body::Body::new(body));
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    Ok(res)
}

/// A whole response as one gRPC frame.
fn whole(resp: &RangeResponse) -> Result<Bytes, ServerError> {
    let len = resp.encoded_len();
    let len32 = u32::try_from(len).map_err(|_| too_large(len))?;
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len32);
    resp.encode_raw(&mut buf);
    Ok(buf.freeze())
}

fn too_large(len: usize) -> ServerError {
    ServerError::Internal(format!(
        "range response of {len} bytes is over gRPC's 4 GiB message limit"
    ))
}

enum Started {
    Whole(RangeResponse),
    Streamed {
        /// The frame prefix and the header field.
        head: Bytes,
        /// The `more` and `count` fields.
        tail: Bytes,
        cursor: Box<Cursor>,
    },
}

fn header_of(member: &Member, rev: i64) -> Option<ResponseHeader> {
    let mut h = Some(ResponseHeader {
        revision: rev,
        ..Default::default()
    });
    member.fill_header(&mut h);
    h
}

fn row(
    view: &ReadView,
    rev: ballast_mvcc::Revision,
    keys_only: bool,
) -> Result<ballast_proto::mvccpb::KeyValue, ServerError> {
    let mut kv = to_pb_kv(view.fetch(rev).map_err(read_err)?);
    if keys_only {
        kv.value = Vec::new();
    }
    Ok(kv)
}

/// The rows of a planned range still to send, and the snapshot they are read from. Each
/// chunk is read on the blocking pool when the client has taken the one before it, so a
/// client that stops reading holds no thread (only the snapshot).
pub(crate) struct Cursor {
    view: ReadView,
    revs: Vec<ballast_mvcc::Revision>,
    next: usize,
    keys_only: bool,
    /// Bytes read since memory was last handed back.
    since_trim: usize,
    /// Bytes the response carries after its head (for the check at its end).
    len: usize,
}

impl Cursor {
    fn is_done(&self) -> bool {
        self.next >= self.revs.len()
    }

    fn read(&mut self, bytes: usize) {
        self.since_trim += bytes;
        if self.since_trim >= TRIM_EVERY || (self.is_done() && self.since_trim >= INLINE_BYTES) {
            self.since_trim = 0;
            return_freed_memory();
        }
    }

    /// The next rows, encoded as `kvs` fields, about [`CHUNK_BYTES`] of them.
    fn encode_chunk(&mut self) -> Result<Bytes, ServerError> {
        let mut buf = BytesMut::with_capacity(CHUNK_BYTES);
        while buf.len() < CHUNK_BYTES && !self.is_done() {
            let kv = row(&self.view, self.revs[self.next], self.keys_only)?;
            self.next += 1;
            encoding::message::encode(KVS, &kv, &mut buf);
        }
        self.read(buf.len());
        Ok(buf.freeze())
    }

    /// The next rows, at most [`super::RANGE_STREAM_CHUNK`] and about [`CHUNK_BYTES`].
    fn kvs_chunk(&mut self) -> Result<Vec<ballast_proto::mvccpb::KeyValue>, ServerError> {
        let mut kvs = Vec::new();
        let mut bytes = 0;
        while kvs.len() < super::RANGE_STREAM_CHUNK && bytes < CHUNK_BYTES && !self.is_done() {
            let kv = row(&self.view, self.revs[self.next], self.keys_only)?;
            self.next += 1;
            bytes += kv.key.len() + kv.value.len();
            kvs.push(kv);
        }
        self.read(bytes);
        Ok(kvs)
    }
}

/// On the blocking pool: plans and sizes the range. A small one comes back whole, a large one
/// as its head, its tail and the cursor its body reads the rows with.
fn start_unary(member: &Member, r: &RangeRequest) -> Result<Started, ServerError> {
    let mut view = member.store.read().map_err(read_err)?;
    let Some(plan) = view.range_plan(&kv::range_options(r)).map_err(read_err)? else {
        let mut resp = kv::range(&mut view, r)?;
        member.fill_header(&mut resp.header);
        return Ok(Started::Whole(resp));
    };
    let header = header_of(member, plan.revision);
    // Sizing pass: keeps the rows while the response stays small.
    let mut kvs_len = 0usize;
    let mut kept = Vec::new();
    let mut keep = true;
    let mut since_trim = 0;
    for rev in &plan.revs {
        let kv = row(&view, *rev, r.keys_only)?;
        let len = encoding::message::encoded_len(KVS, &kv);
        kvs_len += len;
        since_trim += len;
        if !keep && since_trim >= TRIM_EVERY {
            since_trim = 0;
            return_freed_memory();
        }
        if keep {
            if kvs_len <= INLINE_BYTES {
                kept.push(kv);
            } else {
                keep = false;
                kept = Vec::new();
            }
        }
    }
    if keep {
        return Ok(Started::Whole(RangeResponse {
            header,
            kvs: kept,
            more: plan.more,
            count: plan.count,
        }));
    }
    let mut tail = BytesMut::new();
    if plan.more {
        encoding::bool::encode(MORE, &plan.more, &mut tail);
    }
    if plan.count != 0 {
        encoding::int64::encode(COUNT, &plan.count, &mut tail);
    }
    let header_len = header
        .as_ref()
        .map_or(0, |h| encoding::message::encoded_len(HEADER, h));
    let total = header_len + kvs_len + tail.len();
    let total32 = u32::try_from(total).map_err(|_| too_large(total))?;
    let mut head = BytesMut::with_capacity(5 + header_len);
    head.put_u8(0);
    head.put_u32(total32);
    if let Some(h) = &header {
        encoding::message::encode(HEADER, h, &mut head);
    }
    Ok(Started::Streamed {
        head: head.freeze(),
        tail: tail.freeze(),
        cursor: Box::new(Cursor {
            view,
            revs: plan.revs,
            next: 0,
            keys_only: r.keys_only,
            since_trim,
            len: kvs_len,
        }),
    })
}

/// A cursor waiting for the client to ask for the next chunk. Its watchdog takes it back
/// (and with it the snapshot) when the client has asked for nothing for the stall timeout;
/// the response then ends with an error saying so.
pub(crate) struct Parked {
    state: parking_lot::Mutex<ParkedState>,
}

struct ParkedState {
    cursor: Option<Box<Cursor>>,
    /// When the response last asked for a chunk.
    asked: std::time::Instant,
    /// The watchdog took the cursor back after this long.
    stalled: Option<std::time::Duration>,
}

impl Parked {
    fn new(cursor: Box<Cursor>, stall: std::time::Duration) -> Arc<Parked> {
        let parked = Arc::new(Parked {
            state: parking_lot::Mutex::new(ParkedState {
                cursor: Some(cursor),
                asked: std::time::Instant::now(),
                stalled: None,
            }),
        });
        if !stall.is_zero() {
            let weak = Arc::downgrade(&parked);
            let check = (stall / 8).clamp(
                std::time::Duration::from_millis(10),
                std::time::Duration::from_secs(5),
            );
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(check).await;
                    let Some(p) = weak.upgrade() else {
                        return; // the response ended
                    };
                    let mut st = p.state.lock();
                    if st.cursor.is_some() && st.asked.elapsed() >= stall {
                        st.cursor = None;
                        st.stalled = Some(stall);
                        return;
                    }
                }
            });
        }
        parked
    }

    /// The cursor, for the next chunk (None: done, or a read is in flight).
    fn take(&self) -> Result<Option<Box<Cursor>>, Status> {
        let mut st = self.state.lock();
        st.asked = std::time::Instant::now();
        if let Some(stall) = st.stalled {
            return Err(Status::aborted(format!(
                "ballast: range response cancelled: the client took nothing for {}s; read again",
                stall.as_secs()
            )));
        }
        Ok(st.cursor.take())
    }

    fn park(&self, cursor: Box<Cursor>) {
        let mut st = self.state.lock();
        st.asked = std::time::Instant::now();
        st.cursor = Some(cursor);
    }
}

type Reading<T> = tokio::task::JoinHandle<(Box<Cursor>, Result<T, ServerError>)>;

/// Reads the cursor's next chunk on the blocking pool.
fn read_next<T: Send + 'static>(
    mut cursor: Box<Cursor>,
    f: fn(&mut Cursor) -> Result<T, ServerError>,
) -> Reading<T> {
    tokio::task::spawn_blocking(move || {
        let r = f(&mut cursor);
        (cursor, r)
    })
}

/// The HTTP body of a unary Range: the frame's head, the rows' chunks (each read when HTTP/2
/// asks for the next), the tail, then the trailers.
struct RangeBody {
    head: Option<Bytes>,
    tail: Option<Bytes>,
    cursor: Option<Arc<Parked>>,
    reading: Option<Reading<Bytes>>,
    /// Bytes the chunks must carry in all, and carried so far.
    expect: usize,
    sent: usize,
    done: bool,
}

impl RangeBody {
    fn whole(frame: Bytes) -> Self {
        RangeBody {
            head: Some(frame),
            tail: None,
            cursor: None,
            reading: None,
            expect: 0,
            sent: 0,
            done: false,
        }
    }

    fn streamed(head: Bytes, tail: Bytes, cursor: Box<Cursor>, stall: std::time::Duration) -> Self {
        let expect = cursor.len + tail.len();
        RangeBody {
            head: Some(head),
            tail: Some(tail),
            cursor: Some(Parked::new(cursor, stall)),
            reading: None,
            expect,
            sent: 0,
            done: false,
        }
    }

    fn trailers(status: Option<Status>) -> Frame<Bytes> {
        let mut map = http::HeaderMap::new();
        match status {
            None => {
                map.insert("grpc-status", http::HeaderValue::from_static("0"));
            }
            Some(s) => {
                if s.add_header(&mut map).is_err() {
                    map.insert("grpc-status", http::HeaderValue::from_static("13"));
                }
            }
        }
        Frame::trailers(map)
    }

    fn fail(&mut self, status: Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.done = true;
        self.cursor = None;
        Poll::Ready(Some(Ok(Self::trailers(Some(status)))))
    }
}

impl Body for RangeBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if let Some(h) = this.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(h))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        if this.reading.is_none() {
            if let Some(parked) = this.cursor.as_ref() {
                // HTTP/2 has taken the last chunk: read the next.
                match parked.take() {
                    Ok(Some(cursor)) => {
                        this.reading = Some(read_next(cursor, Cursor::encode_chunk))
                    }
                    Ok(None) => {}
                    Err(status) => return this.fail(status),
                }
            }
        }
        if let Some(reading) = this.reading.as_mut() {
            let (cursor, chunk) = match Pin::new(reading).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(r)) => r,
                Poll::Ready(Err(e)) => {
                    this.reading = None;
                    return this.fail(Status::internal(format!("range read failed: {e}")));
                }
            };
            this.reading = None;
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => return this.fail(e.into()),
            };
            match this.cursor.as_ref() {
                Some(parked) if !cursor.is_done() => parked.park(cursor),
                _ => this.cursor = None,
            }
            this.sent += chunk.len();
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(t) = this.tail.take() {
            if !t.is_empty() {
                this.sent += t.len();
                return Poll::Ready(Some(Ok(Frame::data(t))));
            }
        }
        this.done = true;
        let status = (this.sent != this.expect).then(|| {
            Status::internal(format!(
                "range response ended after {} of {} bytes",
                this.sent, this.expect
            ))
        });
        Poll::Ready(Some(Ok(Self::trailers(status))))
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.head.is_none()
    }
}

// ---------------------------------------------------------------------------------------------
// RangeStream.

pub(crate) type ChunkStream =
    Pin<Box<dyn futures::Stream<Item = Result<RangeStreamResponse, Status>> + Send + 'static>>;

/// Plans `r` on the blocking pool (an error is the call's) and returns its chunks as a stream
/// that reads each chunk when the client has taken the one before.
pub(crate) async fn stream_chunks(
    member: Arc<Member>,
    r: RangeRequest,
) -> Result<ChunkStream, Status> {
    let m = member.clone();
    let planned = tokio::task::spawn_blocking(move || -> Result<_, ServerError> {
        let mut view = m.store.read().map_err(read_err)?;
        match view.range_plan(&kv::range_options(&r)).map_err(read_err)? {
            Some(plan) => Ok(Ok((view, plan, r.keys_only))),
            None => {
                let mut full = kv::range(&mut view, &r)?;
                m.fill_header(&mut full.header);
                Ok(Err(full))
            }
        }
    })
    .await
    .map_err(|e| ServerError::Internal(format!("range read failed: {e}")))??;
    let (view, plan, keys_only) = match planned {
        Ok(p) => p,
        Err(mut full) => {
            // Sorted, filtered or count-only: read whole, sent in chunks.
            let kvs = std::mem::take(&mut full.kvs);
            let mut chunks: Vec<RangeResponse> = kvs
                .chunks(super::RANGE_STREAM_CHUNK)
                .map(|c| RangeResponse {
                    kvs: c.to_vec(),
                    ..Default::default()
                })
                .collect();
            match chunks.last_mut() {
                Some(last) => {
                    last.header = full.header;
                    last.more = full.more;
                    last.count = full.count;
                }
                None => chunks.push(full),
            }
            let items = chunks.into_iter().map(|c| {
                Ok(RangeStreamResponse {
                    range_response: Some(c),
                })
            });
            return Ok(Box::pin(futures::stream::iter(items)));
        }
    };
    let last = RangeResponse {
        header: header_of(&member, plan.revision),
        kvs: Vec::new(),
        more: plan.more,
        count: plan.count,
    };
    let cursor = Box::new(Cursor {
        view,
        revs: plan.revs,
        next: 0,
        keys_only,
        since_trim: 0,
        len: 0,
    });
    Ok(Box::pin(ChunksOf {
        cursor: Some(Parked::new(cursor, member.cfg.range_stall_timeout)),
        reading: None,
        last: Some(last),
    }))
}

/// RangeStream's chunks: each read on the blocking pool when gRPC asks for it; the last
/// carries header, `more` and `count`.
struct ChunksOf {
    cursor: Option<Arc<Parked>>,
    reading: Option<Reading<Vec<ballast_proto::mvccpb::KeyValue>>>,
    last: Option<RangeResponse>,
}

impl futures::Stream for ChunksOf {
    type Item = Result<RangeStreamResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.reading.is_none() {
            if let Some(parked) = this.cursor.as_ref() {
                // gRPC has taken the last chunk: read the next.
                match parked.take() {
                    Ok(Some(cursor)) => this.reading = Some(read_next(cursor, Cursor::kvs_chunk)),
                    Ok(None) => {}
                    Err(status) => {
                        this.cursor = None;
                        return Poll::Ready(Some(Err(status)));
                    }
                }
            }
        }
        let Some(reading) = this.reading.as_mut() else {
            return Poll::Ready(None);
        };
        let (cursor, kvs) = match Pin::new(reading).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(r)) => r,
            Poll::Ready(Err(e)) => {
                this.reading = None;
                return Poll::Ready(Some(Err(Status::internal(format!(
                    "range read failed: {e}"
                )))));
            }
        };
        this.reading = None;
        let kvs = match kvs {
            Ok(k) => k,
            Err(e) => return Poll::Ready(Some(Err(e.into()))),
        };
        let chunk = if cursor.is_done() {
            let mut last = this.last.take().unwrap_or_default();
            last.kvs = kvs;
            last
        } else {
            if let Some(parked) = this.cursor.as_ref() {
                parked.park(cursor);
            }
            RangeResponse {
                kvs,
                ..Default::default()
            }
        };
        Poll::Ready(Some(Ok(RangeStreamResponse {
            range_response: Some(chunk),
        })))
    }
}
