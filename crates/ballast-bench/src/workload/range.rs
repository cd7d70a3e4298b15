//! `range`: one Range per request over a fixed key or key range (etcd's `benchmark range`).

use ballast_proto::etcdserverpb::RangeRequest;

use super::KvState;
use crate::cli::{Consistency, RangeArgs};
use crate::keys::{parse_key_arg, prefix_range_end};
use crate::runner::Workload;
use crate::transport::Conn;

pub struct RangeWorkload {
    req: RangeRequest,
}

impl RangeWorkload {
    pub fn new(a: &RangeArgs) -> Result<Self, String> {
        let key = parse_key_arg(&a.key)?;
        let range_end = match (&a.end, a.prefix) {
            (Some(end), _) => parse_key_arg(end)?,
            (None, true) => prefix_range_end(&key),
            (None, false) => Vec::new(),
        };
        if a.limit < 0 {
            return Err(format!("--limit must not be negative, got {}", a.limit));
        }
        Ok(Self {
            req: RangeRequest {
                key,
                range_end,
                limit: a.limit,
                serializable: a.consistency == Consistency::Serializable,
                count_only: a.count_only,
                ..Default::default()
            },
        })
    }

    /// The keys `--prefill n` writes: the key itself when `n == 1`, otherwise the key
    /// followed by an 8-digit index.
    pub fn prefill_keys(&self, n: u64) -> Vec<Vec<u8>> {
        if n == 1 {
            return vec![self.req.key.clone()];
        }
        (0..n)
            .map(|i| {
                let mut k = self.req.key.clone();
                k.extend_from_slice(format!("{i:08}").as_bytes());
                k
            })
            .collect()
    }

    #[cfg(test)]
    pub fn request(&self) -> &RangeRequest {
        &self.req
    }
}

impl Workload for RangeWorkload {
    type Client = KvState;

    fn new_client(&self, conn: Conn, _index: usize) -> KvState {
        KvState::new(conn)
    }

    async fn issue(&self, c: &mut KvState, _seq: u64) -> Result<(), tonic::Status> {
        c.kv.range(self.req.clone()).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{BenchCommand, Cli, Command};
    use clap::Parser;

    fn range_args(args: &[&str]) -> RangeArgs {
        let cli = Cli::try_parse_from(["b", "range"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Bench(BenchCommand::Range(r)) => r,
            _ => unreachable!(),
        }
    }

    #[test]
    fn builds_requests() {
        let w = RangeWorkload::new(&range_args(&["foo", "--consistency", "s", "--limit", "5"]))
            .unwrap();
        let r = w.request();
        assert_eq!(
            (r.key.as_slice(), r.range_end.as_slice()),
            (&b"foo"[..], &b""[..])
        );
        assert!(r.serializable && !r.count_only);
        assert_eq!(r.limit, 5);

        let w = RangeWorkload::new(&range_args(&["foo", "--prefix", "--count-only"])).unwrap();
        assert_eq!(w.request().range_end, b"fop");
        assert!(w.request().count_only && !w.request().serializable);

        let w = RangeWorkload::new(&range_args(&["\\x00", "\\x00"])).unwrap();
        assert_eq!(
            (w.request().key.clone(), w.request().range_end.clone()),
            (vec![0], vec![0])
        );

        assert!(RangeWorkload::new(&range_args(&["foo", "--limit=-1"])).is_err());
    }

    #[test]
    fn prefill_keys() {
        let w = RangeWorkload::new(&range_args(&["k"])).unwrap();
        assert_eq!(w.prefill_keys(1), vec![b"k".to_vec()]);
        let keys = w.prefill_keys(3);
        assert_eq!(
            keys,
            vec![
                b"k00000000".to_vec(),
                b"k00000001".to_vec(),
                b"k00000002".to_vec()
            ]
        );
    }
}
