//! The apply layers, in etcd's order, for one request inside a batch: the alarm gate
//! ([`crate::alarm`]), auth (a pass-through until auth lands), the quota ([`crate::quota`]),
//! then the request itself (KV, lease, alarm).

use ballast_mvcc::{CompactJob, WriteTxn};
use ballast_proto::etcdserverpb::{
    CompactionResponse, LeaseRevokeResponse, ResponseHeader, TxnResponse,
};
use ballast_proto::internal::internal_raft_request::Request;
use tokio::sync::oneshot;

use super::ApplyOutput;
use crate::alarm::{self, Alarms};
use crate::error::ServerError;
use crate::kv;
use crate::lease::{self, Lessor};
use crate::quota::{self, Quota};
use crate::watch::RevEvents;

/// What one request's application works with inside a batch.
pub(super) struct Batch<'a, 'b> {
    pub(super) txn: &'a mut WriteTxn<'b>,
    pub(super) compact_rev: i64,
    pub(super) lessor: &'a Lessor,
    pub(super) compactions: &'a mut Vec<(CompactJob, oneshot::Sender<()>)>,
    pub(super) published: &'a mut Vec<RevEvents>,
    pub(super) alarms: &'a Alarms,
    pub(super) quota: &'a Quota,
    pub(super) members: &'a super::membership::Members,
}

impl Batch<'_, '_> {
    /// Closes the open etcd transaction (one revision if it wrote anything): lease attachments
    /// follow its events, and its events go to the watchers with the batch.
    fn end_txn(&mut self) {
        let events = self.txn.end();
        if events.is_empty() {
            return;
        }
        self.lessor.track(&events);
        self.published.push(RevEvents {
            rev: self.txn.revision(),
            events,
        });
    }

    fn header(&self) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            revision: self.txn.revision(),
            ..Default::default()
        })
    }
}

/// Applies one request through etcd's apply layers, in order: the alarm gate (what the raised
/// alarms refuse), auth (a pass-through until auth lands), the quota (judged before applying,
/// answered after, as etcd's quota applier), then the request itself.
pub(super) fn apply_one(b: &mut Batch<'_, '_>, req: Option<Request>) -> Result<ApplyOutput, ServerError> {
    let Some(req) = req else {
        return Err(ServerError::Internal("empty raft request".into()));
    };
    alarm::gate(b.alarms.active(), &req)?;
    let fits = b.quota.available(quota::cost(&req));
    let out = apply_request(b, req)?;
    if !fits {
        // Applied, as etcd does; the member raises NOSPACE on this answer.
        return Err(ServerError::NoSpace);
    }
    Ok(out)
}

/// Applies one request as one etcd transaction of the batch (a lease expiry: one per lease).
fn apply_request(b: &mut Batch<'_, '_>, req: Request) -> Result<ApplyOutput, ServerError> {
    let mut w = kv::Writer::new(b.txn, b.compact_rev, b.lessor);
    let out = match req {
        Request::Put(p) => kv::apply_put(&mut w, &p).map(ApplyOutput::Put),
        Request::DeleteRange(d) => kv::delete_range(&mut w, &d).map(ApplyOutput::DeleteRange),
        Request::Txn(t) => kv::txn_write(&mut w, &t).map(ApplyOutput::Txn),
        Request::Compaction(c) => match w.txn().compact(c.revision) {
            Ok(job) => {
                let rev = w.txn().revision();
                let (tx, rx) = oneshot::channel();
                b.compactions.push((job, tx));
                Ok(ApplyOutput::Compact(
                    CompactionResponse {
                        header: Some(ResponseHeader {
                            revision: rev,
                            ..Default::default()
                        }),
                    },
                    c.physical.then_some(rx),
                ))
            }
            Err(e) => Err(e.into()),
        },
        Request::Range(r) => {
            // Not proposed today; answered so an old entry never stalls the loop.
            kv::range(&mut w, &r).map(|resp| {
                ApplyOutput::Txn(TxnResponse {
                    header: resp.header,
                    ..Default::default()
                })
            })
        }
        Request::LeaseGrant(g) => lease::apply::grant(b.txn, b.lessor, &g).map(|mut r| {
            r.header = b.header();
            ApplyOutput::LeaseGrant(r)
        }),
        Request::LeaseRevoke(r) => {
            let res = lease::apply::revoke(b.txn, b.lessor, r.id);
            b.end_txn();
            res.map(|()| ApplyOutput::LeaseRevoke(LeaseRevokeResponse { header: b.header() }))
        }
        Request::LeaseCheckpoint(c) => {
            lease::apply::checkpoint(b.txn, b.lessor, &c);
            Ok(ApplyOutput::Lease)
        }
        Request::LeaseRevokeRest(r) => {
            lease::apply::revoke_rest(b.txn, b.lessor, r.id).map(|()| ApplyOutput::Lease)
        }
        Request::LeaseExpire(e) => {
            for id in e.ids {
                // Gone already (revoked by a client meanwhile): nothing to do.
                if lease::apply::revoke(b.txn, b.lessor, id).is_ok() {
                    b.end_txn();
                }
            }
            Ok(ApplyOutput::Lease)
        }
        Request::Alarm(a) => Ok(ApplyOutput::Alarm(alarm::apply(b.txn, b.alarms, &a))),
        Request::MemberPublish(m) => b.members.publish(b.txn, m),
        Request::MemberUpdate(m) => b.members.update(b.txn, m),
    };
    // Closes this request's etcd transaction (one revision if it wrote anything).
    b.end_txn();
    out
}

