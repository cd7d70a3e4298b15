//! The member list as a plain state machine: the members, the ids of removed members (never
//! reused), and etcd's rules for changing them.
//!
//! No locks, no clocks, no I/O. The apply loop changes it in raft order through
//! [`Membership::add`], [`Membership::remove`], [`Membership::promote`],
//! [`Membership::update_peer_urls`] and [`Membership::publish`] — each validates first, as
//! etcd's `ValidateConfigurationChange` does at apply, and returns etcd's error without
//! changing anything — then persists what changed (`cluster::persist`). The Cluster service
//! asks the pre-proposal checks of `--strict-reconfig-check` ([`Membership::check_add`],
//! [`Membership::check_remove`], [`Membership::check_promote`]) and
//! [`check_learner_ready`], passing in what the transport and raft know.
//!
//! A member is *started* once it has published its name (etcd's `IsStarted`): members added at
//! runtime have no name until they start; members of `--initial-cluster` carry theirs from
//! the start.

use std::collections::{BTreeMap, BTreeSet};

use ballast_proto::etcdserverpb;
use ballast_proto::internal;

use super::ids;
use crate::config::InitialMember;
use crate::error::ServerError;

/// How many learners a cluster may have (etcd 3.4's fixed limit, 3.5's `--max-learners`
/// default).
pub const MAX_LEARNERS: usize = 1;

/// A learner is ready for promotion once its match index is at least this fraction of the
/// leader's (etcd's `readyPercent`).
pub const LEARNER_READY_FRACTION: f64 = 0.9;

/// One member of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberRecord {
    pub id: u64,
    /// Empty until the member publishes it at its start.
    pub name: String,
    pub peer_urls: Vec<String>,
    /// Empty until the member publishes them at its start.
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

impl MemberRecord {
    /// The record of a member `MemberAdd` adds at Unix second `now_secs`: its id derived as
    /// etcd derives it, its peer URLs sorted (as etcd stores and answers them), no name or
    /// client URLs yet.
    pub fn added(mut peer_urls: Vec<String>, is_learner: bool, now_secs: i64) -> MemberRecord {
        peer_urls.sort();
        MemberRecord {
            id: ids::added_member_id(&peer_urls, now_secs),
            name: String::new(),
            peer_urls,
            client_urls: Vec::new(),
            is_learner,
        }
    }

    /// Whether the member has published its name (etcd's `IsStarted`).
    pub fn is_started(&self) -> bool {
        !self.name.is_empty()
    }
}

/// The member as the Cluster service answers it.
pub fn to_pb(m: &MemberRecord) -> etcdserverpb::Member {
    etcdserverpb::Member {
        id: m.id,
        name: m.name.clone(),
        peer_ur_ls: m.peer_urls.clone(),
        client_ur_ls: m.client_urls.clone(),
        is_learner: m.is_learner,
    }
}

impl From<&MemberRecord> for internal::Member {
    fn from(m: &MemberRecord) -> internal::Member {
        internal::Member {
            id: m.id,
            name: m.name.clone(),
            peer_urls: m.peer_urls.clone(),
            client_urls: m.client_urls.clone(),
            is_learner: m.is_learner,
        }
    }
}

impl From<internal::Member> for MemberRecord {
    fn from(m: internal::Member) -> MemberRecord {
        MemberRecord {
            id: m.id,
            name: m.name,
            peer_urls: m.peer_urls,
            client_urls: m.client_urls,
            is_learner: m.is_learner,
        }
    }
}

/// Why an `--initial-cluster` cannot make a cluster (etcd's `NewClusterFromURLsMap`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootstrapError {
    #[error("member {name:?} has the same peer URLs, hence the same id {id:x}, as another member")]
    DuplicateId { name: String, id: u64 },
    #[error("member {name:?}: cannot use 0 as member id")]
    ZeroId { name: String },
}

/// What the transport knows of a peer, for the checks of `--strict-reconfig-check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerLink {
    /// Not connected.
    Down,
    /// Connected for less than etcd's health interval (5 s).
    Recent,
    /// Connected for at least the health interval.
    Healthy,
}

/// The members and the removed ids (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    members: BTreeMap<u64, MemberRecord>,
    removed: BTreeSet<u64>,
}

impl Membership {
    /// A membership restored from persisted state.
    pub fn restored(
        members: impl IntoIterator<Item = MemberRecord>,
        removed: impl IntoIterator<Item = u64>,
    ) -> Membership {
        Membership {
            members: members.into_iter().map(|m| (m.id, m)).collect(),
            removed: removed.into_iter().collect(),
        }
    }

    /// The members of `--initial-cluster` (with `--initial-cluster-token` `token`), all voters,
    /// named, and the cluster id.
    pub fn bootstrap(
        initial: &[InitialMember],
        token: &str,
    ) -> Result<(Membership, u64), BootstrapError> {
        let mut ms = Membership::default();
        for im in initial {
            let mut peer_urls = im.peer_urls.clone();
            peer_urls.sort();
            let id = ids::bootstrap_member_id(&peer_urls, token);
            let name = im.name.clone();
            if id == 0 {
                return Err(BootstrapError::ZeroId { name });
            }
            if ms.members.contains_key(&id) {
                return Err(BootstrapError::DuplicateId { name, id });
            }
            let record = MemberRecord {
                id,
                name,
                peer_urls,
                client_urls: Vec::new(),
                is_learner: false,
            };
            ms.members.insert(id, record);
        }
        let member_ids: Vec<u64> = ms.members.keys().copied().collect();
        Ok((ms, ids::cluster_id(&member_ids)))
    }

    /// The members in id order (etcd's `MemberList` order).
    pub fn members(&self) -> impl Iterator<Item = &MemberRecord> {
        self.members.values()
    }

    /// The members as the Cluster service answers them, in id order.
    pub fn to_pb(&self) -> Vec<etcdserverpb::Member> {
        self.members().map(to_pb).collect()
    }

    pub fn get(&self, id: u64) -> Option<&MemberRecord> {
        self.members.get(&id)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether `id` belonged to a member that was removed (it can never be used again).
    pub fn is_removed(&self, id: u64) -> bool {
        self.removed.contains(&id)
    }

    /// The ids of removed members, in order.
    pub fn removed(&self) -> impl Iterator<Item = u64> + '_ {
        self.removed.iter().copied()
    }

    /// The voting members, in id order.
    pub fn voters(&self) -> impl Iterator<Item = &MemberRecord> {
        self.members().filter(|m| !m.is_learner)
    }

    fn learner_count(&self) -> usize {
        self.members().filter(|m| m.is_learner).count()
    }

    /// Whether one of `urls` is a peer URL of a member other than `except`.
    fn peer_url_in_use(&self, urls: &[String], except: Option<u64>) -> bool {
        self.members()
            .filter(|m| Some(m.id) != except)
            .any(|m| m.peer_urls.iter().any(|u| urls.contains(u)))
    }

    /// The member `id`, or etcd's error for a removed or unknown id.
    fn existing(&self, id: u64) -> Result<&MemberRecord, ServerError> {
        if self.is_removed(id) {
            return Err(ServerError::MemberIdRemoved);
        }
        self.members.get(&id).ok_or(ServerError::MemberNotFound)
    }

    fn member_mut(&mut self, id: u64) -> Result<&mut MemberRecord, ServerError> {
        self.members.get_mut(&id).ok_or(ServerError::MemberNotFound)
    }

    // -----------------------------------------------------------------------------------------
    // Validation, in etcd's order (`ValidateConfigurationChange`: a removed id first).

    /// Whether `m` may be added.
    pub fn validate_add(&self, m: &MemberRecord) -> Result<(), ServerError> {
        if self.is_removed(m.id) {
            return Err(ServerError::MemberIdRemoved);
        }
        if self.members.contains_key(&m.id) {
            return Err(ServerError::MemberExist);
        }
        if self.peer_url_in_use(&m.peer_urls, None) {
            return Err(ServerError::PeerUrlExist);
        }
        if m.is_learner && self.learner_count() + 1 > MAX_LEARNERS {
            return Err(ServerError::TooManyLearners);
        }
        Ok(())
    }

    /// Whether member `id` may be promoted (raft-wise; readiness is [`check_learner_ready`]).
    pub fn validate_promote(&self, id: u64) -> Result<(), ServerError> {
        if !self.existing(id)?.is_learner {
            return Err(ServerError::MemberNotLearner);
        }
        Ok(())
    }

    /// Whether member `id` may be removed.
    pub fn validate_remove(&self, id: u64) -> Result<(), ServerError> {
        self.existing(id).map(drop)
    }

    /// Whether member `id` may take `peer_urls` (none of them used by another member).
    pub fn validate_update(&self, id: u64, peer_urls: &[String]) -> Result<(), ServerError> {
        self.existing(id)?;
        if self.peer_url_in_use(peer_urls, Some(id)) {
            return Err(ServerError::PeerUrlExist);
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Changes (apply loop only): validate, then change.

    /// Adds `m` (a voter or a learner, as `m.is_learner` says).
    pub fn add(&mut self, m: MemberRecord) -> Result<(), ServerError> {
        self.validate_add(&m)?;
        self.members.insert(m.id, m);
        Ok(())
    }

    /// Makes learner `id` a voter.
    pub fn promote(&mut self, id: u64) -> Result<&MemberRecord, ServerError> {
        self.validate_promote(id)?;
        let m = self.member_mut(id)?;
        m.is_learner = false;
        Ok(m)
    }

    /// Removes member `id`; its id is never accepted again.
    pub fn remove(&mut self, id: u64) -> Result<MemberRecord, ServerError> {
        self.validate_remove(id)?;
        let m = self
            .members
            .remove(&id)
            .ok_or(ServerError::MemberNotFound)?;
        self.removed.insert(id);
        Ok(m)
    }

    /// Gives member `id` the peer URLs `peer_urls` (`MemberUpdate`). Only the URLs change: a
    /// learner stays a learner (etcd 3.4 also cleared the learner flag here, a bug etcd fixed
    /// later).
    pub fn update_peer_urls(
        &mut self,
        id: u64,
        peer_urls: Vec<String>,
    ) -> Result<&MemberRecord, ServerError> {
        self.validate_update(id, &peer_urls)?;
        let m = self.member_mut(id)?;
        m.peer_urls = peer_urls;
        Ok(m)
    }

    /// Records the name and client URLs member `id` published at its start. `Ok(None)` when
    /// `id` was removed meanwhile (etcd skips it); an unknown id is an error.
    pub fn publish(
        &mut self,
        id: u64,
        name: String,
        client_urls: Vec<String>,
    ) -> Result<Option<&MemberRecord>, ServerError> {
        if self.is_removed(id) {
            return Ok(None);
        }
        let m = self.member_mut(id)?;
        m.name = name;
        m.client_urls = client_urls;
        Ok(Some(m))
    }

    // -----------------------------------------------------------------------------------------
    // `--strict-reconfig-check` (before proposing; etcd's `mayAddMember`, `mayRemoveMember`,
    // `IsReadyTo*`). `local_id` is this member; `link` what the transport knows of a peer.

    /// Whether the voters without `except`, plus `extra` more (the `extra_started` of which
    /// are started), would keep a quorum of started members.
    fn quorum_started(&self, except: Option<u64>, extra: usize, extra_started: usize) -> bool {
        let voters: Vec<&MemberRecord> = self.voters().filter(|m| Some(m.id) != except).collect();
        let members = voters.len() + extra;
        let started = voters.iter().filter(|m| m.is_started()).count() + extra_started;
        // A quorum: more than half.
        started > members / 2
    }

    /// Whether a voter may be added: after the add, a quorum of the voters must be started
    /// (the added one is not). One exception, as etcd: a second member may always join a
    /// single started member (how a restored one-member cluster grows).
    pub fn is_ready_to_add_voter(&self) -> bool {
        let started = self.voters().filter(|m| m.is_started()).count();
        let voters = self.voters().count() + 1;
        (started == 1 && voters == 2) || self.quorum_started(None, 1, 0)
    }

    /// Whether voter `id` may be removed: the voters left must have a quorum started.
    pub fn is_ready_to_remove_voter(&self, id: u64) -> bool {
        self.quorum_started(Some(id), 0, 0)
    }

    /// Whether a learner may become a voter: counting it as a started voter, a quorum must be
    /// started.
    pub fn is_ready_to_promote(&self) -> bool {
        self.quorum_started(None, 1, 1)
    }

    /// The voters connected to this member for the health interval, itself included.
    fn connected_voters(&self, local_id: u64, link: &impl Fn(u64) -> PeerLink) -> usize {
        self.voters()
            .filter(|m| m.id == local_id || link(m.id) == PeerLink::Healthy)
            .count()
    }

    /// etcd's `mayAddMember`: a voter only while [`Self::is_ready_to_add_voter`]; any member
    /// only while this member has been connected to every voter for the health interval.
    pub fn check_add(
        &self,
        is_learner: bool,
        local_id: u64,
        link: impl Fn(u64) -> PeerLink,
    ) -> Result<(), ServerError> {
        if !is_learner && !self.is_ready_to_add_voter() {
            return Err(ServerError::MemberNotEnoughStarted);
        }
        if self.connected_voters(local_id, &link) < self.voters().count() {
            return Err(ServerError::Unhealthy);
        }
        Ok(())
    }

    /// etcd's `mayRemoveMember`: a learner may always go; a voter while the voters left keep a
    /// quorum of started members and, unless it is down already, while this member stays
    /// connected (for the health interval) to a quorum of the voters left.
    pub fn check_remove(
        &self,
        id: u64,
        local_id: u64,
        link: impl Fn(u64) -> PeerLink,
    ) -> Result<(), ServerError> {
        if self.members.get(&id).is_some_and(|m| m.is_learner) {
            return Ok(());
        }
        if !self.is_ready_to_remove_voter(id) {
            return Err(ServerError::MemberNotEnoughStarted);
        }
        if id != local_id && link(id) == PeerLink::Down {
            // A member that is down is no part of the active quorum.
            return Ok(());
        }
        let voters = self.voters().count();
        let active = self.connected_voters(local_id, &link);
        // etcd: active - 1 < 1 + (voters - 1) / 2, in signed arithmetic.
        if active < 2 + voters.saturating_sub(1) / 2 {
            return Err(ServerError::Unhealthy);
        }
        Ok(())
    }

    /// etcd's quorum half of `mayPromoteMember` (after [`check_learner_ready`]).
    pub fn check_promote(&self) -> Result<(), ServerError> {
        if !self.is_ready_to_promote() {
            return Err(ServerError::MemberNotEnoughStarted);
        }
        Ok(())
    }
}

/// etcd's `isLearnerReady`, decided by the leader from raft's progress: the learner's match
/// index must be at least [`LEARNER_READY_FRACTION`] of the leader's own match index (its last
/// log index, not its commit index). A member raft has no progress for (`None`) passes: the
/// apply answers for unknown ids and voters.
pub fn check_learner_ready(
    learner_match: Option<u64>,
    leader_match: u64,
) -> Result<(), ServerError> {
    match learner_match {
        Some(m) if (m as f64) < (leader_match as f64) * LEARNER_READY_FRACTION => {
            Err(ServerError::LearnerNotReady)
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, name: &str, url: &str, is_learner: bool) -> MemberRecord {
        MemberRecord {
            id,
            name: name.to_string(),
            peer_urls: vec![url.to_string()],
            client_urls: Vec::new(),
            is_learner,
        }
    }

    /// Voters 1 (started), 2 (started), 3 (not started) and learner 4 (started).
    fn four() -> Membership {
        Membership::restored(
            [
                member(1, "a", "http://a:2380", false),
                member(2, "b", "http://b:2380", false),
                member(3, "", "http://c:2380", false),
                member(4, "d", "http://d:2380", true),
            ],
            [9],
        )
    }

    #[test]
    fn bootstrap_ids_and_errors() {
        let im = |name: &str, url: &str| InitialMember {
            name: name.into(),
            peer_urls: vec![url.into()],
        };
        let (ms, cid) =
            Membership::bootstrap(&[im("default", "http://localhost:2380")], "etcd-cluster")
                .unwrap();
        assert_eq!(cid, 0xcdf8_1819_4e3a_8c32);
        let m = ms.get(0x8e9e_05c5_2164_694d).unwrap();
        assert_eq!((m.name.as_str(), m.is_learner), ("default", false));
        assert!(m.is_started());

        let dup = [im("a", "http://x:1"), im("b", "http://x:1")];
        assert!(matches!(
            Membership::bootstrap(&dup, "t"),
            Err(BootstrapError::DuplicateId { .. })
        ));
    }

    #[test]
    fn added_member_sorts_urls_and_is_unstarted() {
        let m = MemberRecord::added(
            vec![
                "http://127.0.0.1:24900".into(),
                "http://10.0.0.1:2380".into(),
            ],
            true,
            1796700222,
        );
        assert_eq!(m.id, 5612361513587903034);
        assert_eq!(
            m.peer_urls,
            ["http://10.0.0.1:2380", "http://127.0.0.1:24900"]
        );
        assert!(!m.is_started() && m.is_learner);
    }

    #[test]
    fn add_errors_in_etcd_order() {
        let mut ms = four();
        // A removed id beats everything else.
        let removed = member(9, "", "http://a:2380", true);
        assert_eq!(ms.add(removed), Err(ServerError::MemberIdRemoved));
        assert_eq!(
            ms.add(member(2, "", "http://new:1", false)),
            Err(ServerError::MemberExist)
        );
        assert_eq!(
            ms.add(member(5, "", "http://b:2380", false)),
            Err(ServerError::PeerUrlExist)
        );
        // One learner (4) already.
        assert_eq!(
            ms.add(member(5, "", "http://e:2380", true)),
            Err(ServerError::TooManyLearners)
        );
        assert_eq!(ms, four(), "a refused add changes nothing");
        ms.add(member(5, "", "http://e:2380", false)).unwrap();
        assert_eq!(ms.get(5).map(|m| m.is_learner), Some(false));
        // Without a learner, one may be added.
        ms.remove(4).unwrap();
        ms.add(member(6, "", "http://f:2380", true)).unwrap();
    }

    #[test]
    fn remove_errors_and_removed_ids() {
        let mut ms = four();
        assert_eq!(ms.remove(7), Err(ServerError::MemberNotFound));
        assert_eq!(ms.remove(9), Err(ServerError::MemberIdRemoved));
        assert_eq!(ms.remove(3).unwrap().id, 3);
        assert!(ms.is_removed(3) && ms.get(3).is_none());
        assert_eq!(ms.remove(3), Err(ServerError::MemberIdRemoved));
        assert_eq!(ms.removed().collect::<Vec<_>>(), [3, 9]);
        // Its URL is free again, its id is not.
        ms.add(member(8, "", "http://c:2380", false)).unwrap();
        assert_eq!(
            ms.add(member(3, "", "http://z:1", false)),
            Err(ServerError::MemberIdRemoved)
        );
    }

    #[test]
    fn update_peer_urls_errors() {
        let mut ms = four();
        let urls = |u: &str| vec![u.to_string()];
        assert_eq!(
            ms.update_peer_urls(7, urls("http://z:1")),
            Err(ServerError::MemberNotFound)
        );
        assert_eq!(
            ms.update_peer_urls(9, urls("http://z:1")),
            Err(ServerError::MemberIdRemoved)
        );
        assert_eq!(
            ms.update_peer_urls(1, urls("http://b:2380")),
            Err(ServerError::PeerUrlExist)
        );
        // Its own URLs may stay; a learner stays a learner.
        ms.update_peer_urls(1, vec!["http://a:2380".into(), "http://a2:2380".into()])
            .unwrap();
        assert_eq!(ms.get(1).unwrap().peer_urls.len(), 2);
        let m = ms.update_peer_urls(4, urls("http://d2:2380")).unwrap();
        assert!(m.is_learner);
    }

    #[test]
    fn promote_errors() {
        let mut ms = four();
        assert_eq!(ms.promote(7), Err(ServerError::MemberNotFound));
        assert_eq!(ms.promote(9), Err(ServerError::MemberIdRemoved));
        assert_eq!(ms.promote(1), Err(ServerError::MemberNotLearner));
        assert!(!ms.promote(4).unwrap().is_learner);
        assert_eq!(ms.voters().count(), 4);
        assert_eq!(ms.promote(4), Err(ServerError::MemberNotLearner));
    }

    #[test]
    fn publish_sets_name_and_client_urls() {
        let mut ms = four();
        let m = ms
            .publish(3, "c".into(), vec!["http://c:2379".into()])
            .unwrap()
            .unwrap();
        assert!(m.is_started());
        assert_eq!(m.client_urls, ["http://c:2379"]);
        assert_eq!(ms.publish(9, "x".into(), vec![]), Ok(None));
        assert_eq!(
            ms.publish(7, "x".into(), vec![]),
            Err(ServerError::MemberNotFound)
        );
    }

    #[test]
    fn learner_readiness_is_ninety_percent_of_the_leader() {
        assert_eq!(check_learner_ready(Some(90), 100), Ok(()));
        assert_eq!(
            check_learner_ready(Some(89), 100),
            Err(ServerError::LearnerNotReady)
        );
        assert_eq!(
            check_learner_ready(Some(0), 1),
            Err(ServerError::LearnerNotReady)
        );
        assert_eq!(check_learner_ready(Some(0), 0), Ok(()));
        assert_eq!(check_learner_ready(None, 100), Ok(()));
    }

    #[test]
    fn strict_reconfig_quorum_of_started_members() {
        let healthy = |_| PeerLink::Healthy;
        // Two of three voters started: adding a fourth voter would leave 2 started of 4.
        let ms = four();
        assert_eq!(
            ms.check_add(false, 1, healthy),
            Err(ServerError::MemberNotEnoughStarted)
        );
        assert_eq!(ms.check_add(true, 1, healthy), Ok(()));
        // Removing a started voter leaves 1 started of 2; the unstarted one leaves 2 of 2.
        assert_eq!(
            ms.check_remove(1, 1, healthy),
            Err(ServerError::MemberNotEnoughStarted)
        );
        assert_eq!(ms.check_remove(3, 1, healthy), Ok(()));
        // A learner may always go.
        assert_eq!(ms.check_remove(4, 1, |_| PeerLink::Down), Ok(()));
        // Promoting counts the learner as started: 3 started of 4.
        assert_eq!(ms.check_promote(), Ok(()));

        // One started member may always get a second.
        let one = Membership::restored([member(1, "a", "http://a:1", false)], []);
        assert_eq!(one.check_add(false, 1, |_| PeerLink::Down), Ok(()));
        let mut two = one.clone();
        two.add(member(2, "", "http://b:1", false)).unwrap();
        assert_eq!(
            two.check_add(false, 1, healthy),
            Err(ServerError::MemberNotEnoughStarted)
        );
        // A promoted learner would make 2 started of 3, then 2 of 4.
        assert_eq!(two.check_promote(), Ok(()));
        two.add(member(3, "", "http://c:1", false)).unwrap();
        assert_eq!(
            two.check_promote(),
            Err(ServerError::MemberNotEnoughStarted)
        );
    }

    #[test]
    fn strict_reconfig_connectivity() {
        let ms = Membership::restored(
            [
                member(1, "a", "http://a:1", false),
                member(2, "b", "http://b:1", false),
                member(3, "c", "http://c:1", false),
            ],
            [],
        );
        let link = |recent: u64, down: u64| {
            move |id: u64| {
                if id == down {
                    PeerLink::Down
                } else if id == recent {
                    PeerLink::Recent
                } else {
                    PeerLink::Healthy
                }
            }
        };
        // Adding needs every voter connected for the health interval.
        assert_eq!(ms.check_add(true, 1, link(0, 0)), Ok(()));
        assert_eq!(
            ms.check_add(true, 1, link(2, 0)),
            Err(ServerError::Unhealthy)
        );
        assert_eq!(
            ms.check_add(true, 1, link(0, 3)),
            Err(ServerError::Unhealthy)
        );
        // Removing a member that is down is always safe.
        assert_eq!(ms.check_remove(3, 1, link(2, 3)), Ok(()));
        // Removing a live one needs a quorum of the others connected: with 2 only recently
        // connected, removing 3 would leave this member alone.
        assert_eq!(
            ms.check_remove(3, 1, link(2, 0)),
            Err(ServerError::Unhealthy)
        );
        assert_eq!(ms.check_remove(3, 1, link(0, 0)), Ok(()));
        // Removing itself: counts itself as active.
        assert_eq!(ms.check_remove(1, 1, link(0, 0)), Ok(()));
        assert_eq!(
            ms.check_remove(1, 1, link(2, 0)),
            Err(ServerError::Unhealthy)
        );
    }

    #[test]
    fn to_pb_and_internal_round_trip() {
        let m = MemberRecord {
            id: 7,
            name: "n".into(),
            peer_urls: vec!["http://p:1".into()],
            client_urls: vec!["http://c:1".into(), "http://c:2".into()],
            is_learner: true,
        };
        let pb = to_pb(&m);
        assert_eq!((pb.id, pb.name.as_str(), pb.is_learner), (7, "n", true));
        assert_eq!(pb.peer_ur_ls, m.peer_urls);
        assert_eq!(pb.client_ur_ls, m.client_urls);
        assert_eq!(MemberRecord::from(internal::Member::from(&m)), m);
    }
}
