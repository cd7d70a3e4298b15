//! Backend snapshots to followers: sending the db file in chunks over the peer service's
//! `Snapshot` stream, and receiving it into `<snap dir>/<index:016x>.snap.db`.
//!
//! What travels: a first chunk with the stream header, the raft snapshot's index and the db's
//! size; the db in pieces of [`CHUNK_BYTES`]; a last chunk with the raft `MsgSnapshot` (its
//! metadata only: the data is the file). The receiver writes `<index:016x>.snap.db.part`,
//! fsyncs it, renames it to `<index:016x>.snap.db`, fsyncs the directory and only then hands
//! the message back to its caller, which steps it into raft: raft never sees a snapshot whose
//! file could still be lost.
//!
//! Invariants:
//! - Memory is bounded on both sides: the db is streamed through a channel of a few chunks,
//!   never held whole.
//! - A transfer that does not end with its message (sender gone, stream reset, size or index
//!   wrong, disk error) leaves no file behind: the `.part` is removed. A `.part` left by a
//!   crash is removed when the receiver starts ([`SnapshotReceiver::new`]).
//! - File work runs on blocking threads, never on the runtime's workers.
//!
//! Knows nothing of what is inside the db: the member exports it ([`SnapshotSource`]) and
//! installs it after raft accepts the snapshot. Knows nothing of URLs either: the transport
//! connects and hands a client to [`send`].

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ballast_proto::peer::{raft_client::RaftClient, SnapshotChunk, StreamHeader};
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;
use tonic::Status;

/// Size of the db pieces a sender puts in one chunk.
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// Chunks queued between the file thread and the stream, on each side.
const CHUNKS_QUEUED: usize = 2;

/// The backend as it is now, for a follower: the member implements it with
/// `ballast_mvcc::Store::export_snapshot`.
pub trait SnapshotSource: Send + Sync + 'static {
    /// A consistent copy of the backend (its applied index at or above the raft snapshot's
    /// index) and its size in bytes. Called on a blocking thread; the reader is read to its end.
    fn open(&self) -> io::Result<(Box<dyn Read + Send>, u64)>;
}

/// Why a snapshot transfer failed, on either side.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading the local backend copy (sender) or writing the received file (receiver).
    #[error("snapshot file: {0}")]
    Io(#[from] io::Error),
    #[error("snapshot size mismatch: {declared} bytes declared, {actual} transferred")]
    SizeMismatch { declared: u64, actual: u64 },
    /// The stream broke or the other side refused it.
    #[error("snapshot stream: {0}")]
    Stream(Status),
    /// The chunks do not follow the protocol (see the module docs).
    #[error("malformed snapshot stream: {0}")]
    Malformed(&'static str),
    #[error("snapshot at index {0} is already being received")]
    Busy(u64),
}

/// The received db file for a raft snapshot at `index`.
pub fn snap_db_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:016x}.snap.db"))
}

fn part_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:016x}.snap.db.part"))
}

/// Streams the source's db and then `msg` (a `MsgSnapshot`) to the peer behind `client`.
/// Returns the db's size once the peer has answered that the file is durable and raft has the
/// message. Dropping the future cancels the stream (the peer removes its partial file).
pub async fn send(
    mut client: RaftClient<Channel>,
    header: StreamHeader,
    msg: &Message,
    source: Arc<dyn SnapshotSource>,
) -> Result<u64, SnapshotError> {
    let index = snapshot_index(msg);
    let message = msg
        .write_to_bytes()
        .map_err(|_| SnapshotError::Malformed("raft message does not encode"))?;
    let (tx, rx) = mpsc::channel::<Option<SnapshotChunk>>(CHUNKS_QUEUED);
    // Dropped when this future ends: a producer still blocked on a full channel stops.
    let (_cancel, cancelled) = oneshot::channel::<()>();
    let runtime = tokio::runtime::Handle::current();
    let mut producer = tokio::task::spawn_blocking(move || {
        produce(&*source, header, index, message, &tx, cancelled, &runtime)
    });
    // `None` from the producer means it failed: the stream then never ends by itself (a
    // clean end would look like a finished transfer); the producer's error cancels the call.
    let chunks = futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Some(Some(chunk)) => Some((chunk, rx)),
            Some(None) => futures::future::pending().await,
            None => None,
        }
    });
    let call = client.snapshot(chunks);
    tokio::pin!(call);
    tokio::select! {
        answer = &mut call => {
            answer.map_err(SnapshotError::Stream)?;
            // The peer saw the last chunk, so the producer is done.
            join(producer.await)
        }
        produced = &mut producer => {
            let size = join(produced)?;
            call.await.map_err(SnapshotError::Stream)?;
            Ok(size)
        }
    }
}

fn join(
    r: Result<Result<u64, SnapshotError>, tokio::task::JoinError>,
) -> Result<u64, SnapshotError> {
    r.map_err(|e| SnapshotError::Io(io::Error::other(e)))?
}

fn snapshot_index(msg: &Message) -> u64 {
    msg.get_snapshot().get_metadata().index
}

/// The sending file thread: opens the source and puts the chunks on `tx`, `None` after a
/// failure. Stops when `cancelled` fires (the stream is gone).
fn produce(
    source: &dyn SnapshotSource,
    header: StreamHeader,
    index: u64,
    message: Vec<u8>,
    tx: &mpsc::Sender<Option<SnapshotChunk>>,
    mut cancelled: oneshot::Receiver<()>,
    runtime: &tokio::runtime::Handle,
) -> Result<u64, SnapshotError> {
    let mut closed = false;
    let mut put = |chunk: Option<SnapshotChunk>| -> Result<(), SnapshotError> {
        let sent = !closed
            && runtime.block_on(async {
                tokio::select! {
                    sent = tx.send(chunk) => sent.is_ok(),
                    _ = &mut cancelled => false,
                }
            });
        closed = !sent;
        match sent {
            true => Ok(()),
            false => Err(SnapshotError::Stream(Status::cancelled(
                "snapshot stream closed",
            ))),
        }
    };
    let result = (|| {
        let (mut reader, size) = source.open()?;
        put(Some(SnapshotChunk {
            header: Some(header),
            index,
            size,
            ..Default::default()
        }))?;
        let mut sent = 0u64;
        loop {
            let data = read_chunk(&mut *reader)?;
            if data.is_empty() {
                break;
            }
            sent += data.len() as u64;
            if sent > size {
                break;
            }
            put(Some(SnapshotChunk {
                data,
                ..Default::default()
            }))?;
        }
        if sent != size {
            return Err(SnapshotError::SizeMismatch {
                declared: size,
                actual: sent,
            });
        }
        put(Some(SnapshotChunk {
            message,
            ..Default::default()
        }))?;
        Ok(size)
    })();
    if result.is_err() {
        let _ = put(None);
    }
    result
}

/// Up to [`CHUNK_BYTES`] from `r` (fewer only at its end).
fn read_chunk(r: &mut dyn Read) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(CHUNK_BYTES);
    r.take(CHUNK_BYTES as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// The receiving side: writes snapshots into one directory, one transfer per index at a time.
pub struct SnapshotReceiver {
    dir: PathBuf,
    local_id: u64,
    receiving: Mutex<HashSet<u64>>,
}

impl SnapshotReceiver {
    /// Creates `dir` if needed and removes partial files a crash left there.
    pub fn new(dir: PathBuf, local_id: u64) -> io::Result<SnapshotReceiver> {
        fs::create_dir_all(&dir)?;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            if entry
                .file_name()
                .to_string_lossy()
                .ends_with(".snap.db.part")
            {
                tracing::info!(path = %entry.path().display(), "removing a partial snapshot");
                fs::remove_file(entry.path())?;
            }
        }
        Ok(SnapshotReceiver {
            dir,
            local_id,
            receiving: Mutex::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Receives one transfer whose header was checked: `first` is its first chunk, `rest` the
    /// stream after it. Returns the raft message once its file is durable under its final name.
    pub async fn receive(
        &self,
        first: SnapshotChunk,
        rest: impl Stream<Item = Result<SnapshotChunk, Status>> + Unpin,
    ) -> Result<Message, SnapshotError> {
        let (index, size) = (first.index, first.size);
        if index == 0 {
            return Err(SnapshotError::Malformed(
                "first chunk has no snapshot index",
            ));
        }
        let _claim = Claim::new(&self.receiving, index)?;
        let (tx, rx) = mpsc::channel(CHUNKS_QUEUED);
        let dir = self.dir.clone();
        let writer = tokio::task::spawn_blocking(move || write_part(&dir, index, rx));
        let received = self.forward(first, rest, index, size, &tx).await;
        let msg = match received {
            Ok(msg) => msg,
            Err(e) => {
                // Without a Commit the writer removes the part file. A disk error that stopped
                // it says more than the stream's view of it.
                drop(tx);
                return match writer.await {
                    Ok(Err(io)) => Err(io.into()),
                    _ => Err(e),
                };
            }
        };
        let (done_tx, done_rx) = oneshot::channel();
        let committed = tx.send(WriteCmd::Commit(done_tx)).await.is_ok();
        drop(tx);
        match (committed, done_rx.await) {
            (true, Ok(Ok(()))) => Ok(msg),
            (_, Ok(Err(e))) => Err(e.into()),
            _ => Err(writer_error(writer.await)),
        }
    }

    /// Passes the data to the writer and checks the stream's shape; the message on success.
    async fn forward(
        &self,
        first: SnapshotChunk,
        mut rest: impl Stream<Item = Result<SnapshotChunk, Status>> + Unpin,
        index: u64,
        size: u64,
        tx: &mpsc::Sender<WriteCmd>,
    ) -> Result<Message, SnapshotError> {
        let mut written = 0u64;
        let mut chunk = first;
        loop {
            if !chunk.data.is_empty() {
                written += chunk.data.len() as u64;
                if written > size {
                    return Err(SnapshotError::SizeMismatch {
                        declared: size,
                        actual: written,
                    });
                }
                if tx.send(WriteCmd::Data(chunk.data)).await.is_err() {
                    // The writer stopped on an error; `receive` reports it.
                    return Err(SnapshotError::Malformed("snapshot writer stopped"));
                }
            }
            if !chunk.message.is_empty() {
                if written != size {
                    return Err(SnapshotError::SizeMismatch {
                        declared: size,
                        actual: written,
                    });
                }
                return self.check_message(&chunk.message, index);
            }
            chunk = match rest.next().await {
                Some(Ok(c)) => c,
                Some(Err(status)) => return Err(SnapshotError::Stream(status)),
                None => {
                    return Err(SnapshotError::Malformed(
                        "stream ended before the raft message",
                    ))
                }
            };
        }
    }

    fn check_message(&self, bytes: &[u8], index: u64) -> Result<Message, SnapshotError> {
        let msg = Message::parse_from_bytes(bytes)
            .map_err(|_| SnapshotError::Malformed("raft message does not decode"))?;
        if msg.get_msg_type() != MessageType::MsgSnapshot {
            return Err(SnapshotError::Malformed(
                "raft message is not a MsgSnapshot",
            ));
        }
        if snapshot_index(&msg) != index {
            return Err(SnapshotError::Malformed(
                "raft message is for another snapshot index",
            ));
        }
        if msg.to != self.local_id {
            return Err(SnapshotError::Malformed(
                "raft message is for another member",
            ));
        }
        Ok(msg)
    }
}

fn writer_error(r: Result<io::Result<()>, tokio::task::JoinError>) -> SnapshotError {
    match r {
        Ok(Err(e)) => e.into(),
        Ok(Ok(())) => SnapshotError::Malformed("snapshot writer stopped"),
        Err(e) => io::Error::other(e).into(),
    }
}

/// An index being received; released when dropped.
struct Claim<'a> {
    set: &'a Mutex<HashSet<u64>>,
    index: u64,
}

impl<'a> Claim<'a> {
    fn new(set: &'a Mutex<HashSet<u64>>, index: u64) -> Result<Claim<'a>, SnapshotError> {
        if !set.lock().insert(index) {
            return Err(SnapshotError::Busy(index));
        }
        Ok(Claim { set, index })
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.set.lock().remove(&self.index);
    }
}

enum WriteCmd {
    Data(Vec<u8>),
    /// Fsync, rename into place, fsync the directory; the answer says whether it is durable.
    Commit(oneshot::Sender<io::Result<()>>),
}

/// The receiving file thread. Ends with the file durable under its final name (after a
/// Commit) or with no file at all (the channel closed first, or an I/O error).
fn write_part(dir: &Path, index: u64, mut rx: mpsc::Receiver<WriteCmd>) -> io::Result<()> {
    let part = part_path(dir, index);
    let written = (|| {
        let mut file = File::create(&part)?;
        while let Some(cmd) = rx.blocking_recv() {
            match cmd {
                WriteCmd::Data(data) => file.write_all(&data)?,
                WriteCmd::Commit(done) => {
                    let durable = commit(file, &part, &snap_db_path(dir, index), dir);
                    if durable.is_err() {
                        remove_part(&part);
                    }
                    let _ = done.send(durable);
                    return Ok(());
                }
            }
        }
        // The stream ended without its message.
        remove_part(&part);
        Ok(())
    })();
    if written.is_err() {
        remove_part(&part);
    }
    written
}

fn commit(file: File, part: &Path, done: &Path, dir: &Path) -> io::Result<()> {
    file.sync_all()?;
    drop(file);
    fs::rename(part, done)?;
    File::open(dir)?.sync_all()
}

fn remove_part(part: &Path) {
    match fs::remove_file(part) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %part.display(), error = %e, "removing a partial snapshot"),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{self, Read};
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::Instant;

    use ballast_proto::peer::{SnapshotChunk, StreamHeader};
    use protobuf::Message as _;
    use tonic::Status;

    use super::*;
    use crate::raft::transport::test_support::*;
    use crate::raft::transport::PeerEvent;

    /// `len` bytes that differ from chunk to chunk (a splitmix sequence).
    fn db_bytes(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        out.truncate(len);
        out
    }

    struct FileSource(PathBuf);

    impl SnapshotSource for FileSource {
        fn open(&self) -> io::Result<(Box<dyn Read + Send>, u64)> {
            let f = std::fs::File::open(&self.0)?;
            let size = f.metadata()?.len();
            Ok((Box::new(f), size))
        }
    }

    /// Gives `good` bytes, then waits until the receiver has its partial file and fails.
    struct FailingSource {
        good: usize,
        watch_dir: PathBuf,
    }

    struct FailingReader {
        left: usize,
        watch_dir: PathBuf,
    }

    impl SnapshotSource for FailingSource {
        fn open(&self) -> io::Result<(Box<dyn Read + Send>, u64)> {
            let r = FailingReader {
                left: self.good,
                watch_dir: self.watch_dir.clone(),
            };
            Ok((Box::new(r), 4 * self.good as u64))
        }
    }

    impl Read for FailingReader {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.left > 0 {
                let n = buf.len().min(self.left);
                buf[..n].fill(0xab);
                self.left -= n;
                return Ok(n);
            }
            let deadline = Instant::now() + DEADLINE;
            while files(&self.watch_dir).is_empty() {
                assert!(
                    Instant::now() < deadline,
                    "the receiver never created its partial file"
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(io::Error::other("disk went away"))
        }
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn snapshot_status(to: u64) -> impl FnMut(PeerEvent) -> Option<raft::SnapshotStatus> {
        move |ev| match ev {
            PeerEvent::SnapshotStatus(p, s) if p == to => Some(s),
            _ => None,
        }
    }

    /// Waits until `dir` holds exactly `want`.
    async fn wait_for_files(dir: &Path, want: &[&str]) {
        let deadline = Instant::now() + DEADLINE;
        while files(dir) != want {
            assert!(
                Instant::now() < deadline,
                "{dir:?} holds {:?}, not {want:?}",
                files(dir)
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Member 1 reading `source` sends `b` a snapshot at `index`: the outcome it reports.
    async fn send_snapshot(
        source: impl SnapshotSource,
        b: &TestMember,
        index: u64,
    ) -> raft::SnapshotStatus {
        let a = TestMember::new(1, CLUSTER, Arc::new(source), |_| {});
        a.knows(b);
        a.transport.send(vec![snapshot_msg(1, b.id, index)]);
        a.next_event(snapshot_status(b.id)).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshot_of_20_mib_arrives_whole_and_durable_before_its_message() {
        let src_dir = tempfile::tempdir().unwrap();
        let db = db_bytes(20 * 1024 * 1024 + 12345);
        let src = src_dir.path().join("export.db");
        std::fs::write(&src, &db).unwrap();
        let b = TestMember::serving(2).await;
        // raft is busy: the message has to wait for room in the events channel.
        let filler = b.fill_events();
        let a = TestMember::new(1, CLUSTER, Arc::new(FileSource(src)), |_| {});
        a.knows(&b);
        a.transport.send(vec![snapshot_msg(1, 2, 0x42)]);

        // While the message waits, its file is already whole under its final name.
        let dir = b.snap_dir.path();
        wait_for_files(dir, &["0000000000000042.snap.db"]).await;
        let got = std::fs::read(snap_db_path(dir, 0x42)).unwrap();
        assert!(
            got == db,
            "received db differs ({} bytes, sent {})",
            got.len(),
            db.len()
        );
        // The sender hears of success only once raft has the message.
        assert!(a.events.is_empty());

        let m = b
            .next_event(|ev| message(ev).filter(|m| m.get_msg_type() == MessageType::MsgSnapshot))
            .await;
        assert!(filler > 0);
        assert_eq!((m.from, m.to, snapshot_index(&m)), (1, 2, 0x42));
        assert_eq!(m.get_snapshot().get_metadata().term, 3);
        assert_eq!(
            a.next_event(snapshot_status(2)).await,
            raft::SnapshotStatus::Finish
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn aborted_snapshot_leaves_no_file() {
        let b = TestMember::serving(2).await;
        let source = FailingSource {
            good: 3 * CHUNK_BYTES,
            watch_dir: b.snap_dir.path().to_path_buf(),
        };
        assert_eq!(
            send_snapshot(source, &b, 9).await,
            raft::SnapshotStatus::Failure
        );
        // The receiver notices the reset stream and removes its partial file.
        wait_for_files(b.snap_dir.path(), &[]).await;
        assert!(b.events.is_empty(), "no message for an aborted snapshot");

        // The peer takes the next snapshot as usual.
        let src_dir = tempfile::tempdir().unwrap();
        let src = src_dir.path().join("export.db");
        std::fs::write(&src, db_bytes(100_000)).unwrap();
        assert_eq!(
            send_snapshot(FileSource(src), &b, 9).await,
            raft::SnapshotStatus::Finish
        );
        assert_eq!(files(b.snap_dir.path()), vec!["0000000000000009.snap.db"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreadable_source_reports_failure() {
        let b = TestMember::serving(2).await;
        assert_eq!(
            send_snapshot(NoSnapshots, &b, 4).await,
            raft::SnapshotStatus::Failure
        );
        assert!(files(b.snap_dir.path()).is_empty());
    }

    fn first_chunk(index: u64, size: u64) -> SnapshotChunk {
        SnapshotChunk {
            header: Some(StreamHeader {
                cluster_id: CLUSTER,
                from: 1,
                to: 2,
            }),
            index,
            size,
            ..Default::default()
        }
    }

    fn data(bytes: &[u8]) -> Result<SnapshotChunk, Status> {
        Ok(SnapshotChunk {
            data: bytes.to_vec(),
            ..Default::default()
        })
    }

    fn last(index: u64, to: u64) -> Result<SnapshotChunk, Status> {
        Ok(SnapshotChunk {
            message: snapshot_msg(1, to, index).write_to_bytes().unwrap(),
            ..Default::default()
        })
    }

    /// Feeds `chunks` to a receiver in a fresh directory: the outcome and the files left.
    async fn receive(
        index: u64,
        size: u64,
        chunks: Vec<Result<SnapshotChunk, Status>>,
    ) -> (Result<Message, SnapshotError>, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let r = SnapshotReceiver::new(dir.path().to_path_buf(), 2).unwrap();
        let outcome = r
            .receive(first_chunk(index, size), futures::stream::iter(chunks))
            .await;
        (outcome, files(dir.path()))
    }

    #[tokio::test]
    async fn malformed_transfers_leave_no_file() {
        type Chunks = Vec<Result<SnapshotChunk, Status>>;
        let cases: Vec<(&str, u64, Chunks)> = vec![
            (
                "ends before its message",
                6,
                vec![data(b"abc"), data(b"def")],
            ),
            (
                "stream breaks",
                6,
                vec![data(b"abc"), Err(Status::cancelled("gone"))],
            ),
            (
                "more than declared",
                4,
                vec![data(b"abc"), data(b"def"), last(5, 2)],
            ),
            ("less than declared", 9, vec![data(b"abc"), last(5, 2)]),
            (
                "message for another index",
                3,
                vec![data(b"abc"), last(6, 2)],
            ),
            (
                "message for another member",
                3,
                vec![data(b"abc"), last(5, 3)],
            ),
            (
                "message does not decode",
                3,
                vec![
                    data(b"abc"),
                    Ok(SnapshotChunk {
                        message: vec![0xff; 5],
                        ..Default::default()
                    }),
                ],
            ),
        ];
        for (what, size, chunks) in cases {
            let (outcome, left) = receive(5, size, chunks).await;
            assert!(outcome.is_err(), "{what}: accepted");
            assert!(left.is_empty(), "{what}: left {left:?}");
        }
        let (outcome, left) = receive(5, 6, vec![data(b"abc"), data(b"def"), last(5, 2)]).await;
        assert_eq!(snapshot_index(&outcome.unwrap()), 5);
        assert_eq!(left, vec!["0000000000000005.snap.db".to_string()]);
    }

    #[tokio::test]
    async fn receiver_removes_partial_files_at_start_and_refuses_a_second_transfer() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("0000000000000003.snap.db.part"), b"half").unwrap();
        std::fs::write(dir.path().join("0000000000000002.snap.db"), b"whole").unwrap();
        let r = SnapshotReceiver::new(dir.path().to_path_buf(), 2).unwrap();
        assert_eq!(
            files(dir.path()),
            vec!["0000000000000002.snap.db".to_string()]
        );

        // A transfer of index 7 in progress (its stream waits for more).
        let (more, pending) = futures::channel::mpsc::unbounded::<Result<SnapshotChunk, Status>>();
        let first = r.receive(first_chunk(7, 3), pending);
        tokio::pin!(first);
        assert!(futures::poll!(&mut first).is_pending());
        let second = r
            .receive(
                first_chunk(7, 3),
                futures::stream::iter(vec![data(b"abc"), last(7, 2)]),
            )
            .await;
        assert!(matches!(second, Err(SnapshotError::Busy(7))), "{second:?}");
        more.unbounded_send(data(b"abc")).unwrap();
        more.unbounded_send(last(7, 2)).unwrap();
        assert_eq!(snapshot_index(&first.await.unwrap()), 7);
    }
}
