//! Range and RangeStream as they are read: from one MVCC snapshot (a [`ReadView`], kept for
//! the length of the response), on the blocking pool, in bounded memory.
//!
//! - **Range** (unary) is served here rather than by the generated KV service (the
//!   [`KvRouter`] sends `/etcdserverpb.KV/Range` here and everything else to tonic). A range
//!   that neither sorts nor filters is planned first (the revisions of its rows, its count and
//!   `more`, from the in-memory index), then its rows are read once to size the response (the
//!   gRPC frame carries the message length first) and, unless it is small, read again and
//!   encoded as HTTP/2 takes them: the server holds [`CHUNK_BYTES`] × ([`CHANNEL_CHUNKS`] + 1)
//!   of it at most, plus one row, whatever its size. Its encoding is byte for byte prost's
//!   (fields in number order). A small response (under [`INLINE_BYTES`]) keeps the rows of the
//!   sizing pass and goes out in one piece. Ranges that sort or filter, and count-only ones,
//!   are read whole (etcd reads those whole too). A single-key read runs inline on the async
//!   worker (it reads one row); every other read runs on the blocking pool.
//! - **RangeStream** sends chunks of at most [`super::RANGE_STREAM_CHUNK`] keys and about
//!   [`CHUNK_BYTES`] each, read from the snapshot as the client takes them (a channel of
//!   [`CHANNEL_CHUNKS`]); header, `more` and `count` ride on the last chunk.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ballast_mvcc::{RangePlan, ReadView};
use ballast_proto::etcdserverpb::kv_server::KvServer;
use ballast_proto::etcdserverpb::{
    RangeRequest, RangeResponse, RangeStreamResponse, ResponseHeader,
};
use hyper::body::{Body, Frame};
use prost::bytes::{BufMut, Bytes, BytesMut};
use prost::encoding;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};
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
/// Chunks read ahead of the client, at most.
pub const CHANNEL_CHUNKS: usize = 2;
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
    let (head, rx) = if r.range_end.is_empty() {
        // One row: read it here.
        let mut view = member.store.read().map_err(read_err)?;
        let mut resp = kv::range(&mut view, &r)?;
        member.fill_header(&mut resp.header);
        (whole(&resp), None)
    } else {
        let (tx, started) = oneshot::channel();
        tokio::task::spawn_blocking(move || produce_unary(&member, &r, tx));
        match started.await {
            Ok(Ok(Started::Whole(resp))) => (whole(&resp), None),
            Ok(Ok(Started::Streamed { head, len, rx })) => (head, Some((len, rx))),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(ServerError::Internal("range read failed".into()).into()),
        }
    };
    let body = match rx {
        None => RangeBody::new(head, None, 0),
        Some((len, rx)) => RangeBody::new(head, Some(rx), len),
    };
    let mut res = http::Response::new(tonic::body::Body::new(body));
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    Ok(res)
}

/// A whole response as one gRPC frame.
fn whole(resp: &RangeResponse) -> Bytes {
    let len = resp.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    resp.encode_raw(&mut buf);
    buf.freeze()
}

enum Started {
    Whole(RangeResponse),
    Streamed {
        /// The frame prefix and the header field.
        head: Bytes,
        /// Bytes the chunks carry in all.
        len: usize,
        rx: mpsc::Receiver<Result<Bytes, Status>>,
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

/// On the blocking pool: plans and sizes the range, tells `started` how the response goes out,
/// then (for a large one) encodes its rows into the channel as the client takes them.
fn produce_unary(
    member: &Member,
    r: &RangeRequest,
    started: oneshot::Sender<Result<Started, ServerError>>,
) {
    let plan = (|| {
        let mut view = member.store.read().map_err(read_err)?;
        match view.range_plan(&kv::range_options(r)).map_err(read_err)? {
            Some(plan) => Ok(Ok((view, plan))),
            None => {
                let mut resp = kv::range(&mut view, r)?;
                member.fill_header(&mut resp.header);
                Ok(Err(resp))
            }
        }
    })();
    let (view, plan): (ReadView, RangePlan) = match plan {
        Ok(Ok(p)) => p,
        Ok(Err(resp)) => {
            let _ = started.send(Ok(Started::Whole(resp)));
            return;
        }
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    let header = header_of(member, plan.revision);
    // Sizing pass: keeps the rows while the response stays small.
    let mut kvs_len = 0usize;
    let mut kept = Vec::new();
    let mut keep = true;
    let mut since_trim = 0;
    for rev in &plan.revs {
        let kv = match row(&view, *rev, r.keys_only) {
            Ok(kv) => kv,
            Err(e) => {
                let _ = started.send(Err(e));
                return;
            }
        };
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
        let _ = started.send(Ok(Started::Whole(RangeResponse {
            header,
            kvs: kept,
            more: plan.more,
            count: plan.count,
        })));
        return;
    }
    let header_len = header
        .as_ref()
        .map_or(0, |h| encoding::message::encoded_len(HEADER, h));
    let more_len = if plan.more {
        encoding::bool::encoded_len(MORE, &plan.more)
    } else {
        0
    };
    let count_len = if plan.count != 0 {
        encoding::int64::encoded_len(COUNT, &plan.count)
    } else {
        0
    };
    let total = header_len + kvs_len + more_len + count_len;
    let Ok(total32) = u32::try_from(total) else {
        let _ = started.send(Err(ServerError::Internal(format!(
            "range response of {total} bytes is over gRPC's 4 GiB message limit"
        ))));
        return;
    };
    let mut head = BytesMut::with_capacity(5 + header_len);
    head.put_u8(0);
    head.put_u32(total32);
    if let Some(h) = &header {
        encoding::message::encode(HEADER, h, &mut head);
    }
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let rest = total - header_len;
    if started
        .send(Ok(Started::Streamed {
            head: head.freeze(),
            len: rest,
            rx,
        }))
        .is_err()
    {
        return;
    }
    // Encoding pass, from the same snapshot.
    let mut buf = BytesMut::with_capacity(CHUNK_BYTES);
    since_trim = 0;
    for rev in &plan.revs {
        let kv = match row(&view, *rev, r.keys_only) {
            Ok(kv) => kv,
            Err(e) => {
                let _ = tx.blocking_send(Err(e.into()));
                return;
            }
        };
        encoding::message::encode(KVS, &kv, &mut buf);
        drop(kv);
        if buf.len() >= CHUNK_BYTES {
            since_trim += buf.len();
            if tx.blocking_send(Ok(buf.split().freeze())).is_err() {
                return; // the client went away
            }
            if since_trim >= TRIM_EVERY {
                since_trim = 0;
                return_freed_memory();
            }
        }
    }
    if plan.more {
        encoding::bool::encode(MORE, &plan.more, &mut buf);
    }
    if plan.count != 0 {
        encoding::int64::encode(COUNT, &plan.count, &mut buf);
    }
    let _ = tx.blocking_send(Ok(buf.freeze()));
    drop(view);
    return_freed_memory();
}

/// The HTTP body of a unary Range: the frame's head, then the chunks, then the trailers.
struct RangeBody {
    head: Option<Bytes>,
    rx: Option<mpsc::Receiver<Result<Bytes, Status>>>,
    /// Bytes the chunks must carry in all, and carried so far.
    expect: usize,
    sent: usize,
    done: bool,
}

impl RangeBody {
    fn new(head: Bytes, rx: Option<mpsc::Receiver<Result<Bytes, Status>>>, expect: usize) -> Self {
        RangeBody {
            head: Some(head),
            rx,
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
        let next = match this.rx.as_mut() {
            None => None,
            Some(rx) => match rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(n) => n,
            },
        };
        match next {
            Some(Ok(b)) => {
                this.sent += b.len();
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Some(Err(status)) => {
                this.done = true;
                Poll::Ready(Some(Ok(Self::trailers(Some(status)))))
            }
            None => {
                this.done = true;
                let status = (this.sent != this.expect).then(|| {
                    Status::internal(format!(
                        "range response ended after {} of {} bytes",
                        this.sent, this.expect
                    ))
                });
                Poll::Ready(Some(Ok(Self::trailers(status))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.head.is_none()
    }
}

// ---------------------------------------------------------------------------------------------
// RangeStream.

pub(crate) type Chunks = mpsc::Receiver<Result<RangeStreamResponse, Status>>;

/// Starts reading `r` on the blocking pool; the chunks arrive on the returned channel.
pub(crate) fn stream_chunks(member: Arc<Member>, r: RangeRequest) -> Chunks {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = produce_stream(&member, &r, &tx) {
            let _ = tx.blocking_send(Err(e.into()));
        }
    });
    rx
}

fn send_chunk(
    tx: &mpsc::Sender<Result<RangeStreamResponse, Status>>,
    chunk: RangeResponse,
) -> bool {
    tx.blocking_send(Ok(RangeStreamResponse {
        range_response: Some(chunk),
    }))
    .is_ok()
}

fn produce_stream(
    member: &Member,
    r: &RangeRequest,
    tx: &mpsc::Sender<Result<RangeStreamResponse, Status>>,
) -> Result<(), ServerError> {
    let mut view = member.store.read().map_err(read_err)?;
    let Some(plan) = view.range_plan(&kv::range_options(r)).map_err(read_err)? else {
        // Sorted, filtered or count-only: read whole, sent in chunks.
        let mut full = kv::range(&mut view, r)?;
        member.fill_header(&mut full.header);
        let kvs = std::mem::take(&mut full.kvs);
        let mut it = kvs.into_iter().peekable();
        while it.peek().is_some() {
            let part: Vec<_> = it.by_ref().take(super::RANGE_STREAM_CHUNK).collect();
            let last = it.peek().is_none();
            let mut chunk = RangeResponse {
                kvs: part,
                ..Default::default()
            };
            if last {
                chunk.header = full.header;
                chunk.more = full.more;
                chunk.count = full.count;
            }
            if !send_chunk(tx, chunk) {
                return Ok(());
            }
            if last {
                return Ok(());
            }
        }
        send_chunk(tx, full);
        return Ok(());
    };
    let mut kvs = Vec::new();
    let mut bytes = 0;
    let n = plan.revs.len();
    for (i, rev) in plan.revs.iter().enumerate() {
        let kv = row(&view, *rev, r.keys_only)?;
        bytes += kv.key.len() + kv.value.len();
        kvs.push(kv);
        let last = i + 1 == n;
        if !last && (kvs.len() >= super::RANGE_STREAM_CHUNK || bytes >= CHUNK_BYTES) {
            let chunk = RangeResponse {
                kvs: std::mem::take(&mut kvs),
                ..Default::default()
            };
            bytes = 0;
            if !send_chunk(tx, chunk) {
                return Ok(());
            }
        }
    }
    send_chunk(
        tx,
        RangeResponse {
            header: header_of(member, plan.revision),
            kvs,
            more: plan.more,
            count: plan.count,
        },
    );
    Ok(())
}
