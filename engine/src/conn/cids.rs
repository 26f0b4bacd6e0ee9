//! Connection IDs of both ends (RFC 9000 §5.1, §19.15, §19.16).
//!
//! Local ids are minted by the endpoint's generator (they carry the worker id, QUIC-LB
//! layout) and announced with NEW_CONNECTION_ID; remote ids arrive the same way and are
//! retired when the peer asks (retire_prior_to) or when we stop using them.

use std::collections::VecDeque;

use crate::conn::range_set::RangeSet;
use crate::crypto::constant_time_eq;
use crate::wire::cid::ConnectionId;
use crate::wire::error::{TransportError, TransportErrorCode as Code};

/// Disjoint runs of retired remote sequence numbers we remember (see `queue_retire`).
const RETIRED_RANGES: usize = 8;

/// Mints CIDs for one connection; implemented by the endpoint.
pub trait ConnectionIdGenerator: Send {
    fn generate(&mut self) -> ConnectionId;
    /// Stateless reset token bound to `cid` (RFC 9000 §10.3.2).
    fn reset_token(&self, cid: &ConnectionId) -> [u8; 16];
    fn cid_len(&self) -> usize;
}

#[derive(Clone, Copy, Debug)]
pub struct LocalCid {
    pub seq: u64,
    pub cid: ConnectionId,
    pub reset_token: [u8; 16],
    /// NEW_CONNECTION_ID still needs (re)sending.
    pub announce: bool,
}

#[derive(Clone, Copy, Debug)]
pub struct RemoteCid {
    pub seq: u64,
    pub cid: ConnectionId,
    pub reset_token: Option<[u8; 16]>,
    /// We have sent to it: only then does its reset token count (RFC 9000 §10.3.1 excludes
    /// the tokens of unused and retired CIDs).
    pub used: bool,
}

/// What the endpoint must learn about our CIDs (to route packets to us).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CidEvent {
    Issued(ConnectionId),
    Retired(ConnectionId),
    /// A stateless reset token of the peer's now counts (RFC 9000 §10.3): its CID is in
    /// use, and datagrams ending in it that match no connection are resets of this one.
    PeerResetToken([u8; 16]),
    /// That token no longer counts: its CID was retired.
    PeerResetTokenRetired([u8; 16]),
}

pub struct CidState {
    pub local: Vec<LocalCid>,
    next_local_seq: u64,
    /// One past the highest sequence number the peer has been sent (seq 0 travels in the
    /// handshake): it can retire nothing above (RFC 9000 §19.16).
    sent_local_seq_end: u64,
    /// How many of our CIDs the peer will hold (its active_connection_id_limit).
    peer_limit: u64,
    pub remote: Vec<RemoteCid>,
    /// Index into `remote` of the CID we send to.
    active_remote: usize,
    remote_retire_prior_to: u64,
    /// Sequence numbers of remote CIDs we retired (a RETIRE_CONNECTION_ID was queued), so a
    /// late copy of their NEW_CONNECTION_ID neither brings them back nor is retired twice
    /// (§19.15: receiving a frame again is no error and has no other effect).
    retired_remote: RangeSet,
    /// Our limit on stored remote CIDs (active_connection_id_limit we advertised).
    local_limit: u64,
    /// RETIRE_CONNECTION_ID frames to send.
    pub retire_queue: VecDeque<u64>,
    pub events: VecDeque<CidEvent>,
}

impl CidState {
    pub fn new(
        initial_local: ConnectionId,
        reset_token: [u8; 16],
        initial_remote: ConnectionId,
        local_limit: u64,
    ) -> Self {
        Self {
            local: vec![LocalCid {
                seq: 0,
                cid: initial_local,
                reset_token,
                announce: false,
            }],
            next_local_seq: 1,
            sent_local_seq_end: 1,
            peer_limit: 2,
            remote: vec![RemoteCid {
                seq: 0,
                cid: initial_remote,
                reset_token: None,
                used: true,
            }],
            active_remote: 0,
            remote_retire_prior_to: 0,
            retired_remote: RangeSet::new(),
            local_limit,
            retire_queue: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn active_remote(&self) -> ConnectionId {
        self.remote[self.active_remote].cid
    }

    /// The client learns the server's chosen CID from its first Initial (RFC 9000 §7.2), or from a Retry.
    pub fn set_initial_remote(&mut self, cid: ConnectionId) {
        self.remote[self.active_remote].cid = cid;
    }

    /// The peer's stateless reset token for the initial remote CID, from its transport parameters.
    pub fn set_initial_remote_reset_token(&mut self, token: [u8; 16]) {
        if let Some(r) = self.remote.iter_mut().find(|r| r.seq == 0) {
            r.reset_token = Some(token);
            self.events.push_back(CidEvent::PeerResetToken(token));
        }
    }

    /// Is `token` one of the peer's stateless reset tokens? (RFC 9000 §10.3.1)
    pub fn matches_reset_token(&self, token: &[u8]) -> bool {
        self.remote
            .iter()
            .filter(|r| r.used)
            .filter_map(|r| r.reset_token.as_ref())
            .any(|t| constant_time_eq(t, token))
    }

    /// Peer's active_connection_id_limit is known: top up our issued CIDs to it (capped).
    pub fn set_peer_limit(&mut self, limit: u64, gen: &mut dyn ConnectionIdGenerator) {
        self.peer_limit = limit.min(8);
        self.top_up(gen);
    }

    fn top_up(&mut self, gen: &mut dyn ConnectionIdGenerator) {
        if gen.cid_len() == 0 {
            return;
        }
        while (self.local.len() as u64) < self.peer_limit {
            let cid = gen.generate();
            let reset_token = gen.reset_token(&cid);
            self.local.push(LocalCid {
                seq: self.next_local_seq,
                cid,
                reset_token,
                announce: true,
            });
            self.next_local_seq += 1;
            self.events.push_back(CidEvent::Issued(cid));
        }
    }

    /// RETIRE_CONNECTION_ID from the peer (RFC 9000 §19.16). `packet_dcid`: the CID the carrying packet was sent to.
    pub fn on_retire(
        &mut self,
        seq: u64,
        packet_dcid: &[u8],
        gen: &mut dyn ConnectionIdGenerator,
    ) -> Result<(), TransportError> {
        // Not merely "never issued": a CID minted but not yet sent must not be retirable
        // either, or a peer guessing sequence numbers makes us mint CIDs in a loop.
        if seq >= self.sent_local_seq_end {
            return Err(TransportError::new(
                Code::PROTOCOL_VIOLATION,
                "retired a CID never sent",
            ));
        }
        if let Some(i) = self.local.iter().position(|l| l.seq == seq) {
            if self.local[i].cid.as_slice() == packet_dcid {
                return Err(TransportError::new(
                    Code::PROTOCOL_VIOLATION,
                    "retired the CID in use",
                ));
            }
            let gone = self.local.swap_remove(i);
            self.events.push_back(CidEvent::Retired(gone.cid));
            self.top_up(gen);
        }
        Ok(())
    }

    /// Whether `claim_spare_remote` would find one.
    pub fn has_spare_remote(&self) -> bool {
        self.spare_remote().is_some()
    }

    /// The unused remote CID `claim_spare_remote` takes: the lowest sequence number.
    fn spare_remote(&self) -> Option<usize> {
        if self.remote[self.active_remote].cid.is_empty() {
            return None;
        }
        (0..self.remote.len())
            .filter(|&i| !self.remote[i].used)
            .min_by_key(|&i| self.remote[i].seq)
    }

    /// An unused remote CID for another path, now counted as used: RFC 9000 §9.5 forbids
    /// sending one CID to two addresses. `None` when the peer left us no spare (or uses
    /// zero-length CIDs, which link nothing).
    pub fn claim_spare_remote(&mut self) -> Option<ConnectionId> {
        let i = self.spare_remote()?;
        let r = &mut self.remote[i];
        r.used = true;
        if let Some(t) = r.reset_token {
            self.events.push_back(CidEvent::PeerResetToken(t));
        }
        Some(r.cid)
    }

    /// Sends to `cid` (from `claim_spare_remote`) from now on and retires the CID used so
    /// far (§5.1.2), unless too many retirements are already outstanding.
    pub fn switch_active_remote(&mut self, cid: ConnectionId) {
        let old = self.active_remote;
        if self.set_active_remote(cid) && self.active_remote != old {
            self.retire_remote_at(old);
        }
    }

    /// Sends to `cid` from now on, keeping the CID used so far. False if we hold no `cid`.
    pub(crate) fn set_active_remote(&mut self, cid: ConnectionId) -> bool {
        match self.remote.iter().position(|r| r.cid == cid) {
            Some(i) => {
                self.active_remote = i;
                true
            }
            None => false,
        }
    }

    /// Retires `cid` if we hold it and do not send to it (a path's CID no longer needed).
    pub fn retire_remote(&mut self, cid: ConnectionId) {
        if let Some(i) = self.remote.iter().position(|r| r.cid == cid) {
            if i != self.active_remote {
                self.retire_remote_at(i);
            }
        }
    }

    /// Retires the CID at `i` (not the active one), unless too many retirements are
    /// outstanding already.
    fn retire_remote_at(&mut self, i: usize) {
        if self.queue_retire(self.remote[i].seq).is_err() {
            return;
        }
        let active = self.remote[self.active_remote].cid;
        self.forget_remote_at(i);
        self.active_remote = self
            .remote
            .iter()
            .position(|r| r.cid == active)
            .unwrap_or(0);
    }

    /// Removes the CID at `i` (indices move: the caller fixes `active_remote`); its reset
    /// token stops counting. Returns its sequence number.
    fn forget_remote_at(&mut self, i: usize) -> u64 {
        let r = self.remote.swap_remove(i);
        if let (true, Some(t)) = (r.used, r.reset_token) {
            self.events.push_back(CidEvent::PeerResetTokenRetired(t));
        }
        r.seq
    }

    /// Client: the server's preferred_address parameter. Its CID is sequence 1 (RFC 9000
    /// §5.1.1) whether or not we move there: it counts toward our limit and is retired
    /// like any other (§5.1.2: not forgotten without retiring it). A server using
    /// zero-length CIDs must not send one (§18.2).
    pub fn on_preferred_address(
        &mut self,
        cid: ConnectionId,
        token: [u8; 16],
    ) -> Result<(), TransportError> {
        if self.remote[self.active_remote].cid.is_empty() {
            return Err(TransportError::new(
                Code::TRANSPORT_PARAMETER_ERROR,
                "preferred_address with zero-length connection IDs",
            ));
        }
        self.on_new_cid(1, 0, cid, token)
    }

    /// NEW_CONNECTION_ID from the peer (RFC 9000 §19.15, §5.1.2).
    pub fn on_new_cid(
        &mut self,
        seq: u64,
        retire_prior_to: u64,
        cid: ConnectionId,
        token: [u8; 16],
    ) -> Result<(), TransportError> {
        if self.remote[self.active_remote].cid.is_empty() {
            return Err(TransportError::new(
                Code::PROTOCOL_VIOLATION,
                "NEW_CONNECTION_ID with zero-length CIDs",
            ));
        }
        if retire_prior_to > seq {
            return Err(TransportError::new(
                Code::FRAME_ENCODING_ERROR,
                "retire_prior_to beyond sequence",
            ));
        }
        if let Some(existing) = self.remote.iter().find(|r| r.seq == seq) {
            if existing.cid != cid || existing.reset_token.is_some_and(|t| t != token) {
                return Err(TransportError::new(
                    Code::PROTOCOL_VIOLATION,
                    "CID sequence reused",
                ));
            }
            return Ok(());
        }
        if self.retired_remote.contains(seq) {
            return Ok(());
        }
        if seq < self.remote_retire_prior_to {
            // Already retired by an earlier retire_prior_to: retire this one at once (§19.15).
            self.queue_retire(seq)?;
            return Ok(());
        }
        self.remote.push(RemoteCid {
            seq,
            cid,
            reset_token: Some(token),
            used: false,
        });
        if retire_prior_to > self.remote_retire_prior_to {
            self.remote_retire_prior_to = retire_prior_to;
            let active_seq = self.remote[self.active_remote].seq;
            let mut i = 0;
            while i < self.remote.len() {
                if self.remote[i].seq < retire_prior_to {
                    let seq = self.forget_remote_at(i);
                    self.queue_retire(seq)?;
                } else {
                    i += 1;
                }
            }
            if active_seq < retire_prior_to || self.active_remote >= self.remote.len() {
                // Switch to the lowest-numbered remaining CID.
                self.active_remote = self
                    .remote
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, r)| r.seq)
                    .map(|(i, _)| i)
                    .unwrap_or(0);
            } else {
                self.active_remote = self
                    .remote
                    .iter()
                    .position(|r| r.seq == active_seq)
                    .unwrap_or(0);
            }
            self.mark_active_used();
        }
        if self.remote.len() as u64 > self.local_limit {
            return Err(TransportError::new(
                Code::CONNECTION_ID_LIMIT_ERROR,
                "too many connection IDs",
            ));
        }
        Ok(())
    }

    /// The active remote CID is (about to be) sent to: its reset token starts to count.
    fn mark_active_used(&mut self) {
        if let Some(r) = self.remote.get_mut(self.active_remote) {
            if !r.used {
                r.used = true;
                if let Some(t) = r.reset_token {
                    self.events.push_back(CidEvent::PeerResetToken(t));
                }
            }
        }
    }

    fn queue_retire(&mut self, seq: u64) -> Result<(), TransportError> {
        // Bound retirements awaiting acknowledgement (§5.1.2: an endpoint SHOULD limit them).
        if self.retire_queue.len() as u64 >= 4 * self.local_limit.max(2) {
            return Err(TransportError::new(
                Code::CONNECTION_ID_LIMIT_ERROR,
                "too many retired CIDs outstanding",
            ));
        }
        self.retire_queue.push_back(seq);
        self.retired_remote.insert_one(seq);
        if self.retired_remote.len() > RETIRED_RANGES {
            // A peer issues sequence numbers in order (§5.1.1), so this takes a peer that
            // skips them. Fill the lowest gap: a CID in it never sent yet would be ignored
            // rather than retired, which costs that peer one of its own CIDs, and us nothing.
            let (low, next) = (self.retired_remote.pop_min(), self.retired_remote.pop_min());
            if let (Some(low), Some(next)) = (low, next) {
                self.retired_remote.insert(low.start..next.end);
            }
        }
        Ok(())
    }

    /// A NEW_CONNECTION_ID for `seq` went out.
    pub fn on_announced(&mut self, seq: u64) {
        self.sent_local_seq_end = self.sent_local_seq_end.max(seq + 1);
    }

    pub fn on_new_cid_lost(&mut self, seq: u64) {
        if let Some(l) = self.local.iter_mut().find(|l| l.seq == seq) {
            l.announce = true;
        }
    }

    pub fn pending_announcements(&self) -> bool {
        self.local.iter().any(|l| l.announce) || !self.retire_queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cid(b: u8) -> ConnectionId {
        ConnectionId::new(&[b; 8]).unwrap()
    }

    fn events(s: &mut CidState) -> Vec<CidEvent> {
        s.events.drain(..).collect()
    }

    /// RFC 9000 §10.3.1: only tokens of CIDs in use count; unused and retired ones do not.
    #[test]
    fn reset_tokens_count_only_while_their_cid_is_in_use() {
        let mut s = CidState::new(cid(1), [1; 16], cid(2), 4);
        s.set_initial_remote_reset_token([20; 16]);
        assert_eq!(events(&mut s), vec![CidEvent::PeerResetToken([20; 16])]);
        assert!(s.matches_reset_token(&[20; 16]));
        // A spare CID: stored, its token does not count yet.
        s.on_new_cid(1, 0, cid(3), [30; 16]).unwrap();
        assert!(events(&mut s).is_empty());
        assert!(!s.matches_reset_token(&[30; 16]));
        // The peer retires seq 0: we move to seq 1, whose token now counts; seq 0's no more.
        s.on_new_cid(2, 1, cid(4), [40; 16]).unwrap();
        assert_eq!(s.active_remote(), cid(3));
        assert_eq!(
            events(&mut s),
            vec![
                CidEvent::PeerResetTokenRetired([20; 16]),
                CidEvent::PeerResetToken([30; 16]),
            ]
        );
        assert!(s.matches_reset_token(&[30; 16]));
        assert!(!s.matches_reset_token(&[20; 16]), "retired");
        assert!(!s.matches_reset_token(&[40; 16]), "unused");
    }

    /// §19.15 and §12.4: a NEW_CONNECTION_ID received again has no effect. A copy for a CID
    /// we retired ourselves (a path change) does not bring it back, and one below
    /// retire_prior_to is retired once, not once per copy.
    #[test]
    fn a_repeated_new_connection_id_changes_nothing() {
        let mut s = CidState::new(cid(1), [1; 16], cid(2), 2);
        s.on_new_cid(1, 0, cid(3), [30; 16]).unwrap();
        let spare = s.claim_spare_remote().unwrap();
        s.switch_active_remote(spare);
        assert_eq!(s.retire_queue.drain(..).collect::<Vec<_>>(), vec![0]);
        s.on_new_cid(2, 0, cid(4), [40; 16]).unwrap();
        events(&mut s);
        // Seq 1 is in use and seq 2 spare. We move to seq 2, retiring seq 1, and then a
        // late copy of seq 1's frame arrives.
        let spare = s.claim_spare_remote().unwrap();
        s.switch_active_remote(spare);
        assert_eq!(s.retire_queue.drain(..).collect::<Vec<_>>(), vec![1]);
        s.on_new_cid(1, 0, cid(3), [30; 16]).unwrap();
        assert_eq!(s.remote.len(), 1, "seq 1 stays retired");
        assert!(!s.has_spare_remote());
        assert!(!s.matches_reset_token(&[30; 16]));
        assert!(s.retire_queue.is_empty(), "and is not retired again");
        // Below retire_prior_to: a seq never seen is retired once, however often it comes.
        s.on_new_cid(5, 4, cid(7), [70; 16]).unwrap();
        assert_eq!(s.retire_queue.drain(..).collect::<Vec<_>>(), vec![2]);
        for _ in 0..3 {
            s.on_new_cid(3, 0, cid(5), [50; 16]).unwrap();
        }
        assert_eq!(s.retire_queue.drain(..).collect::<Vec<_>>(), vec![3]);
        assert_eq!(s.active_remote(), cid(7));
    }

    /// The record of retired sequence numbers stays small against a peer that skips them.
    #[test]
    fn retired_sequence_numbers_stay_bounded() {
        let mut s = CidState::new(cid(1), [1; 16], cid(2), 2);
        s.on_new_cid(1000, 1000, cid(3), [30; 16]).unwrap();
        for seq in (1..1000).step_by(2) {
            s.on_new_cid(seq, 0, cid(4), [40; 16]).unwrap();
            s.retire_queue.clear();
        }
        assert!(s.retired_remote.len() <= RETIRED_RANGES);
        assert!(s.retired_remote.contains(999) && s.retired_remote.contains(0));
    }

    struct Counter(u8);
    impl ConnectionIdGenerator for Counter {
        fn generate(&mut self) -> ConnectionId {
            self.0 += 1;
            cid(100 + self.0)
        }
        fn reset_token(&self, cid: &ConnectionId) -> [u8; 16] {
            [cid.as_slice()[0]; 16]
        }
        fn cid_len(&self) -> usize {
            8
        }
    }

    /// RFC 9000 §19.16: only CIDs the peer has been sent can be retired. A CID we minted
    /// but not yet announced counts as never sent, or a peer that guesses the next
    /// sequence number makes us mint and drop CIDs in a loop.
    #[test]
    fn only_announced_cids_can_be_retired() {
        let mut gen = Counter(0);
        let mut s = CidState::new(cid(1), [1; 16], cid(2), 4);
        s.set_peer_limit(3, &mut gen);
        assert_eq!(s.local.len(), 3, "seq 1 and 2 minted");
        let err = s.on_retire(1, cid(1).as_slice(), &mut gen).unwrap_err();
        assert_eq!(err.code, Code::PROTOCOL_VIOLATION);
        assert_eq!(s.local.len(), 3, "nothing retired, nothing minted");
        s.on_announced(1);
        s.on_retire(1, cid(1).as_slice(), &mut gen).unwrap();
        assert!(s.local.iter().any(|l| l.seq == 3 && l.announce), "replaced");
        assert!(
            s.on_retire(2, cid(1).as_slice(), &mut gen).is_err(),
            "seq 2 unsent"
        );
        assert!(
            s.on_retire(3, cid(1).as_slice(), &mut gen).is_err(),
            "seq 3 unsent"
        );
        s.on_announced(3);
        s.on_retire(2, cid(1).as_slice(), &mut gen).unwrap();
        s.on_retire(3, cid(1).as_slice(), &mut gen).unwrap();
    }

    #[test]
    fn the_preferred_address_cid_is_sequence_one() {
        let mut s = CidState::new(cid(1), [1; 16], cid(2), 2);
        s.on_preferred_address(cid(3), [30; 16]).unwrap();
        // It fills our limit of 2 with the handshake CID ...
        let err = s.on_new_cid(2, 0, cid(4), [40; 16]).unwrap_err();
        assert_eq!(err.code, Code::CONNECTION_ID_LIMIT_ERROR);
        // ... and is retired when the server asks, though we never used it.
        s.on_new_cid(3, 2, cid(5), [50; 16]).unwrap();
        let retired: Vec<u64> = s.retire_queue.iter().copied().collect();
        assert_eq!(retired, vec![0, 1]);
        // Zero-length CIDs and a preferred address do not go together.
        let mut z = CidState::new(cid(1), [1; 16], ConnectionId::new(&[]).unwrap(), 2);
        let err = z.on_preferred_address(cid(3), [30; 16]).unwrap_err();
        assert_eq!(err.code, Code::TRANSPORT_PARAMETER_ERROR);
    }
}
