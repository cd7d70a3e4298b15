//! Server errors and their one mapping to gRPC statuses.
//!
//! Clients (etcdctl, client libraries, kube-apiserver) match on the exact status code *and* message
//! text, so every error a client can see is listed here with etcd's wording. Nothing else in the
//! server builds a `tonic::Status` for an etcd error by hand.

use tonic::{Code, Status};

/// An error a member returns to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    /// Ballast's own limit (etcd accepts deeper nesting, up to what --max-txn-ops allows).
    #[error("ballast: txn nesting deeper than 48 levels is not supported")]
    TxnTooDeep,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: request timed out")]
    Timeout,
    /// A proposal timed out and the term moved meanwhile (its entry was likely lost with
    /// the old leader).
    #[error("etcdserver: request timed out, possibly due to previous leader failure")]
    TimeoutDueToLeaderFail,
    /// A request only the leader can decide reached a follower.
    #[error("etcdserver: not leader")]
    NotLeader,
    /// A linearizable read's round was cut by a leader change.
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    /// Election recipes (etcd's client-side wording, surfaced as gRPC Unknown like etcd does).
    #[error("election: not leader")]
    ElectionNotLeader,
    #[error("election: no leader")]
    ElectionNoLeader,
    #[error("\"leader\" field must be provided")]
    MissingLeaderKey,
    /// Membership (the Cluster service and the apply of membership changes). etcd answers
    /// `membership.ErrIDExists` with this.
    #[error("etcdserver: member ID already exist")]
    MemberExist,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExist,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    /// The id belongs to a removed member (etcd's `membership.ErrIDRemoved`): clients get the
    /// same answer as for an unknown id, the member's logs can tell them apart.
    #[error("etcdserver: member not found")]
    MemberIdRemoved,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    /// `--strict-reconfig-check`: the change would leave fewer started voters than a quorum.
    /// etcd's server returns a client-side error type here, which grpc-go sends as Unknown.
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    MemberNotEnoughStarted,
    /// `--strict-reconfig-check`: this member has not been connected to the peers the change
    /// needs for long enough.
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    /// A storage failure (disk full, I/O error): the member stops accepting writes.
    #[error("etcdserver: {0}")]
    Internal(String),
}

impl From<ServerError> for Status {
    fn from(e: ServerError) -> Status {
        use ServerError::*;
        let code = match &e {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
            | InvalidSortOption | TxnTooDeep | RequestTooLarge => Code::InvalidArgument,
            Compacted | FutureRev | LeaseTtlTooLarge => Code::OutOfRange,
            LeaseExist => Code::FailedPrecondition,
            MemberExist | PeerUrlExist | MemberNotLearner | LearnerNotReady | TooManyLearners => {
                Code::FailedPrecondition
            }
            MemberNotFound | MemberIdRemoved => Code::NotFound,
            MemberBadUrls => Code::InvalidArgument,
            MemberNotEnoughStarted => Code::Unknown,
            Unhealthy => Code::Unavailable,
            NoSpace | TooManyRequests => Code::ResourceExhausted,
            LeaseNotFound => Code::NotFound,
            NoLeader | Timeout | Stopped => Code::Unavailable,
            TimeoutDueToLeaderFail | LeaderChanged | NotLeader => Code::Unavailable,
            Corrupt => Code::DataLoss,
            Internal(_) | ElectionNotLeader | ElectionNoLeader | MissingLeaderKey => Code::Unknown,
        };
        Status::new(code, e.to_string())
    }
}

impl ServerError {
    /// The error a status from another member stands for (a forwarded request's answer):
    /// the same error when its message is one of ours, else `Internal` with the message.
    pub fn from_status(status: &Status) -> ServerError {
        use ServerError::*;
        let known = [
            MemberNotFound,
            MemberNotLearner,
            LearnerNotReady,
            MemberNotEnoughStarted,
            Unhealthy,
            NotLeader,
            NoLeader,
            Timeout,
            Stopped,
        ];
        known
            .into_iter()
            .find(|e| e.to_string() == status.message())
            .unwrap_or_else(|| Internal(status.message().trim_start_matches("etcdserver: ").to_string()))
    }
}

impl From<ballast_mvcc::MvccError> for ServerError {
    fn from(e: ballast_mvcc::MvccError) -> ServerError {
        match e {
            ballast_mvcc::MvccError::Compacted => ServerError::Compacted,
            ballast_mvcc::MvccError::FutureRev => ServerError::FutureRev,
            other => ServerError::Internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_match_etcd_wording_and_codes() {
        let s: Status = ServerError::Compacted.into();
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let s: Status = ServerError::EmptyKey.into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "etcdserver: key is not provided");
        let s: Status = ServerError::LeaseNotFound.into();
        assert_eq!(s.code(), Code::NotFound);
        let s: Status = ServerError::LeaseExist.into();
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(s.message(), "etcdserver: lease already exists");
        let s: Status = ServerError::LeaseTtlTooLarge.into();
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(s.message(), "etcdserver: too large lease TTL");
        let s: Status = ServerError::NoLeader.into();
        assert_eq!(s.code(), Code::Unavailable);
    }

    #[test]
    fn membership_statuses_match_etcd() {
        // (error, code, message) as etcd 3.4's api/v3rpc answers them; tests/tests/
        // cluster_ids.rs checks the ones a live etcd can be made to return.
        use ServerError::*;
        let cases = [
            (
                MemberExist,
                Code::FailedPrecondition,
                "etcdserver: member ID already exist",
            ),
            (
                PeerUrlExist,
                Code::FailedPrecondition,
                "etcdserver: Peer URLs already exists",
            ),
            (
                MemberNotFound,
                Code::NotFound,
                "etcdserver: member not found",
            ),
            (
                MemberIdRemoved,
                Code::NotFound,
                "etcdserver: member not found",
            ),
            (
                MemberNotLearner,
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member",
            ),
            (
                LearnerNotReady,
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member which is in sync with leader",
            ),
            (
                TooManyLearners,
                Code::FailedPrecondition,
                "etcdserver: too many learner members in cluster",
            ),
            (
                MemberBadUrls,
                Code::InvalidArgument,
                "etcdserver: given member URLs are invalid",
            ),
            (
                MemberNotEnoughStarted,
                Code::Unknown,
                "etcdserver: re-configuration failed due to not enough started members",
            ),
            (
                Unhealthy,
                Code::Unavailable,
                "etcdserver: unhealthy cluster",
            ),
        ];
        for (e, code, msg) in cases {
            let s: Status = e.into();
            assert_eq!((s.code(), s.message()), (code, msg));
        }
    }
}
