//! `txn-put`: one Txn per request, with no compares and `--txn-ops` puts in `success`
//! (etcd's `benchmark txn-put`). Txn `i` writes keys `(i*txn_ops + j) mod key_space`.

use ballast_proto::etcdserverpb::{request_op, PutRequest, RequestOp, TxnRequest};

use super::KvState;
use crate::cli::TxnPutArgs;
use crate::keys::{random_value, KeyGen, KeyOrder};
use crate::runner::Workload;
use crate::transport::Conn;

pub struct TxnPutWorkload {
    keys: KeyGen,
    ops: u64,
    value: Vec<u8>,
}

impl TxnPutWorkload {
    pub fn new(a: &TxnPutArgs) -> Result<Self, String> {
        if a.txn_ops > a.key_space_size {
            return Err(format!(
                "--txn-ops {} exceeds --key-space-size {}: a txn cannot put the same key twice",
                a.txn_ops, a.key_space_size
            ));
        }
        Ok(Self {
            keys: KeyGen::new(a.key_size, a.key_space_size, KeyOrder::Sequential)?,
            ops: a.txn_ops,
            value: random_value(a.val_size),
        })
    }

    fn request(&self, seq: u64) -> TxnRequest {
        let first = seq.wrapping_mul(self.ops);
        let success = (0..self.ops)
            .map(|j| RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: self.keys.key_at(first.wrapping_add(j)),
                    value: self.value.clone(),
                    ..Default::default()
                })),
            })
            .collect();
        TxnRequest {
            success,
            ..Default::default()
        }
    }
}

impl Workload for TxnPutWorkload {
    type Client = KvState;

    fn new_client(&self, conn: Conn, _index: usize) -> KvState {
        KvState::new(conn)
    }

    async fn issue(&self, c: &mut KvState, seq: u64) -> Result<(), tonic::Status> {
        c.kv.txn(self.request(seq)).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::encode_key;

    fn args(txn_ops: u64, key_space_size: u64) -> TxnPutArgs {
        TxnPutArgs {
            key_size: 8,
            val_size: 16,
            key_space_size,
            txn_ops,
        }
    }

    fn put_keys(t: &TxnRequest) -> Vec<Vec<u8>> {
        t.success
            .iter()
            .map(|op| match &op.request {
                Some(request_op::Request::RequestPut(p)) => {
                    assert_eq!(p.value.len(), 16);
                    p.key.clone()
                }
                other => panic!("unexpected op {other:?}"),
            })
            .collect()
    }

    #[test]
    fn txn_keys_are_consecutive_and_wrap() {
        let w = TxnPutWorkload::new(&args(3, 10)).unwrap();
        let t = w.request(0);
        assert!(t.compare.is_empty() && t.failure.is_empty());
        assert_eq!(
            put_keys(&t),
            vec![encode_key(8, 0), encode_key(8, 1), encode_key(8, 2)]
        );
        assert_eq!(
            put_keys(&w.request(3)),
            vec![encode_key(8, 9), encode_key(8, 0), encode_key(8, 1)]
        );
    }

    #[test]
    fn rejects_more_ops_than_keys() {
        assert!(TxnPutWorkload::new(&args(2, 1)).is_err());
        assert!(TxnPutWorkload::new(&args(1, 1)).is_ok());
    }
}
