//! `put`: one Put per request (etcd's `benchmark put`), plus the optional periodic
//! compaction etcd's tool offers, and a fixed-key-list put used to prefill other benchmarks.

use std::time::Duration;

use ballast_proto::etcdserverpb::{
    kv_client::KvClient, CompactionRequest, PutRequest, RangeRequest,
};

use super::KvState;
use crate::cli::PutArgs;
use crate::keys::{random_value, KeyGen, KeyOrder};
use crate::runner::Workload;
use crate::transport::Conn;

pub struct PutWorkload {
    keys: KeyGen,
    value: Vec<u8>,
}

impl PutWorkload {
    pub fn new(a: &PutArgs) -> Result<Self, String> {
        let order = if a.sequential_keys {
            KeyOrder::Sequential
        } else {
            KeyOrder::Random
        };
        Ok(Self {
            keys: KeyGen::new(a.key_size, a.key_space_size, order)?,
            value: random_value(a.val_size),
        })
    }
}

impl Workload for PutWorkload {
    type Client = KvState;

    fn new_client(&self, conn: Conn, _index: usize) -> KvState {
        KvState::new(conn)
    }

    async fn issue(&self, c: &mut KvState, seq: u64) -> Result<(), tonic::Status> {
        let req = PutRequest {
            key: self.keys.key(seq, &mut c.rng),
            value: self.value.clone(),
            ..Default::default()
        };
        c.kv.put(req).await.map(drop)
    }
}

/// Puts `keys[seq]`, each key once: fills a key space before a read benchmark.
pub struct KeyListPut {
    keys: Vec<Vec<u8>>,
    value: Vec<u8>,
}

impl KeyListPut {
    pub fn new(keys: Vec<Vec<u8>>, val_size: usize) -> Self {
        Self {
            keys,
            value: random_value(val_size),
        }
    }
}

impl Workload for KeyListPut {
    type Client = KvState;

    fn new_client(&self, conn: Conn, _index: usize) -> KvState {
        KvState::new(conn)
    }

    async fn issue(&self, c: &mut KvState, seq: u64) -> Result<(), tonic::Status> {
        let key = self.keys[(seq % self.keys.len() as u64) as usize].clone();
        let req = PutRequest {
            key,
            value: self.value.clone(),
            ..Default::default()
        };
        c.kv.put(req).await.map(drop)
    }
}

/// Background compaction during a put run (`--compact-interval`): like etcd's tool, read
/// the current revision, then compact to `revision - --compact-index-delta`. Failures are
/// reported on stderr and do not count as request errors. Stops when dropped.
pub struct Compactor(Option<tokio::task::JoinHandle<()>>);

impl Compactor {
    pub fn start(a: &PutArgs, conn: Conn) -> Self {
        if a.compact_interval.is_zero() {
            return Self(None);
        }
        let (interval, delta) = (a.compact_interval, a.compact_index_delta);
        Self(Some(tokio::spawn(async move {
            let mut kv = KvClient::with_origin(conn.clone(), conn.origin());
            loop {
                tokio::time::sleep(interval).await;
                if let Err(e) = compact_once(&mut kv, delta).await {
                    eprintln!("compaction failed: {e}");
                }
            }
        })))
    }
}

impl Drop for Compactor {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.abort();
        }
    }
}

async fn compact_once(kv: &mut KvClient<Conn>, delta: i64) -> Result<(), String> {
    let probe = RangeRequest {
        key: b"foo".to_vec(),
        ..Default::default()
    };
    let rev = kv
        .range(probe)
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner()
        .header
        .map_or(0, |h| h.revision);
    let target = rev - delta;
    if target <= 0 {
        return Ok(());
    }
    let started = std::time::Instant::now();
    kv.compact(CompactionRequest {
        revision: target,
        physical: false,
    })
    .await
    .map_err(|s| s.message().to_string())?;
    let took: Duration = started.elapsed();
    eprintln!(
        "compacted to revision {target} in {:.1} ms",
        took.as_secs_f64() * 1e3
    );
    Ok(())
}
