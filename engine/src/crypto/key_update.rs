//! 1-RTT keys and key updates (RFC 9001 §6).
//!
//! Header protection keys never change; packet keys advance one generation per update
//! in both directions together. The next remote key is derived ahead of time so opening
//! a packet that starts an update costs the same as any other (§6.3, timing side channel).
use std::time::Instant;

use super::aead::PacketKey;
use super::header_protection::HeaderKey;
use super::secrets::{DirectionalKeys, Secret};

/// Which remote key [`OneRttKeys::remote_packet_for`] chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyGeneration {
    /// The current phase.
    Current,
    /// The peer started an update: on success, call [`OneRttKeys::commit_peer_update`].
    Next,
    /// A reordered packet sent before the last update.
    Previous,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum KeyUpdateError {
    /// RFC 9001 §6.1: no packet sent with the current keys has been acknowledged yet.
    #[error("previous key update not yet confirmed")]
    NotConfirmed,
}

/// 1-RTT packet protection state for one connection.
pub struct OneRttKeys {
    version: u32,
    local_header: HeaderKey,
    remote_header: HeaderKey,
    /// Key phase bit of the current generation.
    phase: bool,
    /// Updates so far (local and remote always move together).
    generation: u64,
    local: PacketKey,
    remote: PacketKey,
    /// Secret behind `local`; the next local key derives from it.
    local_secret: Secret,
    /// Precomputed key for the peer's next phase and the secret behind it.
    next_remote: PacketKey,
    next_remote_secret: Secret,
    /// Key of the previous phase, kept for reordered packets until the deadline (§6.5).
    /// No deadline yet after an update of ours: the peer has not used the new keys, and
    /// old keys stay until it has (§6.1).
    previous_remote: Option<(PacketKey, Option<Instant>)>,
    /// Lowest packet number opened in the current phase (§6.4: older packets with the
    /// other phase bit belong to the previous phase).
    first_pn_current: Option<u64>,
    /// A packet sent in the current phase was acknowledged, so we may update (§6.1).
    confirmed: bool,
}

impl std::fmt::Debug for OneRttKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OneRttKeys")
            .field("phase", &self.phase)
            .field("generation", &self.generation)
            .field("confirmed", &self.confirmed)
            .finish_non_exhaustive()
    }
}

impl OneRttKeys {
    /// From the 1-RTT traffic secrets TLS produced (`local` = the one we send with).
    pub fn new(version: u32, local: Secret, remote: Secret) -> Self {
        let local_keys = local.keys(version);
        let (remote_keys, next_remote_secret) = remote.keys_and_next(version);
        Self::assemble(version, local, local_keys, remote_keys, next_remote_secret)
    }

    /// Like [`OneRttKeys::new`] when the current keys were already derived from the
    /// secrets (by the TLS stack); only the next remote generation is derived here.
    pub fn with_keys(
        version: u32,
        local: Secret,
        local_keys: DirectionalKeys,
        remote: Secret,
        remote_keys: DirectionalKeys,
    ) -> Self {
        let next_remote_secret = remote.next(version);
        Self::assemble(version, local, local_keys, remote_keys, next_remote_secret)
    }

    fn assemble(
        version: u32,
        local: Secret,
        local_keys: DirectionalKeys,
        remote_keys: DirectionalKeys,
        next_remote_secret: Secret,
    ) -> Self {
        Self {
            version,
            local_header: local_keys.header,
            remote_header: remote_keys.header,
            phase: false,
            generation: 0,
            local: local_keys.packet,
            remote: remote_keys.packet,
            next_remote: next_remote_secret.packet_key(version),
            next_remote_secret,
            local_secret: local,
            previous_remote: None,
            first_pn_current: None,
            confirmed: false,
        }
    }

    pub fn local_header(&self) -> &HeaderKey {
        &self.local_header
    }

    pub fn remote_header(&self) -> &HeaderKey {
        &self.remote_header
    }

    /// Key phase bit to put in packets we send now.
    pub fn key_phase(&self) -> bool {
        self.phase
    }

    /// Number of updates so far; tag sent packets with it to report acks exactly.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn local_packet(&self) -> &PacketKey {
        &self.local
    }

    /// Key for opening a packet carrying `phase` with (full) packet number `pn`.
    pub fn remote_packet_for(&self, phase: bool, pn: u64) -> (&PacketKey, KeyGeneration) {
        if phase == self.phase {
            return (&self.remote, KeyGeneration::Current);
        }
        match &self.previous_remote {
            // §6.4: a lower pn than anything in the current phase means it predates the update.
            Some((key, _)) if self.first_pn_current.is_none_or(|first| pn < first) => {
                (key, KeyGeneration::Previous)
            }
            _ => (&self.next_remote, KeyGeneration::Next),
        }
    }

    /// Record a packet successfully opened with the key `generation` chose. `Current`
    /// packets track the start of the phase; `Next` is left to `commit_peer_update`.
    /// Returns true when this is the peer's first packet under keys we updated: the
    /// previous key's clock starts now (call [`OneRttKeys::discard_previous_at`]).
    pub fn on_packet_opened(&mut self, generation: KeyGeneration, pn: u64) -> bool {
        if generation != KeyGeneration::Current {
            return false;
        }
        let first = self.first_pn_current.is_none();
        self.first_pn_current = Some(self.first_pn_current.map_or(pn, |f| f.min(pn)));
        first && matches!(self.previous_remote, Some((_, None)))
    }

    /// The previous key goes at `at` (3 PTO after the peer first used the new keys, §6.5).
    pub fn discard_previous_at(&mut self, at: Instant) {
        if let Some((_, deadline)) = &mut self.previous_remote {
            *deadline = Some(at);
        }
    }

    /// After a packet opened with the `Next` key: the peer updated, so rotate both
    /// directions (§6.2) and keep the old remote key until `discard_previous_at`
    /// (the caller uses now + 3 PTO, §6.5).
    pub fn commit_peer_update(&mut self, pn: u64, discard_previous_at: Instant) {
        self.rotate(Some(discard_previous_at));
        self.first_pn_current = Some(pn);
        tracing::debug!(generation = self.generation, "peer initiated key update");
    }

    /// We initiate an update (§6.1). Errors unless a packet sent with the current keys has
    /// been acknowledged. The caller must also have confirmed the handshake. The old
    /// remote key stays until the peer has used the new ones (§6.1), then 3 PTO more.
    pub fn initiate_update(&mut self) -> Result<(), KeyUpdateError> {
        if !self.confirmed {
            return Err(KeyUpdateError::NotConfirmed);
        }
        self.rotate(None);
        self.first_pn_current = None;
        tracing::debug!(generation = self.generation, "initiated key update");
        Ok(())
    }

    /// Test hook: an update whatever became of the last one (a peer breaking §6.1).
    #[doc(hidden)]
    pub fn initiate_update_unconfirmed(&mut self) {
        self.rotate(None);
        self.first_pn_current = None;
    }

    fn rotate(&mut self, discard_previous_at: Option<Instant>) {
        let v = self.version;
        self.local_secret = self.local_secret.next(v);
        self.local = self.local_secret.packet_key(v);
        self.next_remote_secret = self.next_remote_secret.next(v);
        let after_next = self.next_remote_secret.packet_key(v);
        let new_remote = std::mem::replace(&mut self.next_remote, after_next);
        let old_remote = std::mem::replace(&mut self.remote, new_remote);
        self.previous_remote = Some((old_remote, discard_previous_at));
        self.phase = !self.phase;
        self.generation += 1;
        self.confirmed = false;
    }

    /// A packet we sent in the current phase was acknowledged: the update is confirmed.
    pub fn on_packet_acked_in_current_phase(&mut self) {
        self.confirmed = true;
    }

    /// Like `on_packet_acked_in_current_phase`, for a packet tagged with `generation()`.
    pub fn on_packet_acked(&mut self, sent_generation: u64) {
        if sent_generation == self.generation {
            self.confirmed = true;
        }
    }

    pub fn update_allowed(&self) -> bool {
        self.confirmed
    }

    /// Drops the previous remote key once its deadline passed.
    pub fn on_timeout(&mut self, now: Instant) {
        if matches!(self.previous_remote, Some((_, Some(at))) if at <= now) {
            self.previous_remote = None;
        }
    }

    pub fn next_timeout(&self) -> Option<Instant> {
        self.previous_remote.as_ref().and_then(|(_, at)| *at)
    }

    /// Whether a previous-phase key is still held.
    pub fn has_previous(&self) -> bool {
        self.previous_remote.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::aead::{CryptoError, Suite, TAG_LEN};
    use crate::crypto::{VERSION_1, VERSION_2};
    use std::time::Duration;

    fn pair(version: u32, suite: Suite) -> (OneRttKeys, OneRttKeys) {
        let len = suite.secret_len();
        let c = Secret::new(suite, &vec![0x11; len]);
        let s = Secret::new(suite, &vec![0x22; len]);
        (
            OneRttKeys::new(version, c.clone(), s.clone()),
            OneRttKeys::new(version, s, c),
        )
    }

    /// A sealed packet as (phase, pn, bytes), header = one byte carrying nothing else.
    fn send(keys: &OneRttKeys, pn: u64, body: &[u8]) -> (bool, u64, Vec<u8>) {
        let mut pkt = vec![0x40];
        pkt.extend_from_slice(body);
        pkt.extend_from_slice(&[0; TAG_LEN]);
        keys.local_packet().seal_in_place(pn, &mut pkt, 1).unwrap();
        (keys.key_phase(), pn, pkt)
    }

    /// Receive path as a connection would run it; returns the generation used.
    fn recv(
        keys: &mut OneRttKeys,
        (phase, pn, pkt): &(bool, u64, Vec<u8>),
        deadline: Instant,
    ) -> Result<KeyGeneration, CryptoError> {
        let mut buf = pkt.clone();
        let (key, generation) = keys.remote_packet_for(*phase, *pn);
        key.open_in_place(*pn, &mut buf, 1)?;
        match generation {
            KeyGeneration::Next => keys.commit_peer_update(*pn, deadline),
            g => {
                if keys.on_packet_opened(g, *pn) {
                    keys.discard_previous_at(deadline);
                }
            }
        }
        Ok(generation)
    }

    #[test]
    fn updates_from_either_side_and_reordering() {
        for version in [VERSION_1, VERSION_2] {
            for suite in Suite::ALL {
                run_updates(version, suite);
            }
        }
    }

    fn run_updates(version: u32, suite: Suite) {
        let t0 = Instant::now();
        let pto3 = Duration::from_millis(300);
        let (mut client, mut server) = pair(version, suite);
        let mut cpn = 0u64;
        let mut spn = 0u64;

        for round in 0..6u64 {
            let now = t0 + Duration::from_secs(round);
            // Exchange in the current phase; each side sees the other's packet acked.
            let c = send(&client, cpn, b"hello");
            cpn += 1;
            assert_eq!(
                recv(&mut server, &c, now + pto3),
                Ok(KeyGeneration::Current)
            );
            let s = send(&server, spn, b"world");
            spn += 1;
            assert_eq!(
                recv(&mut client, &s, now + pto3),
                Ok(KeyGeneration::Current)
            );
            client.on_packet_acked(client.generation());
            server.on_packet_acked_in_current_phase();

            // A client packet sent before the update and delivered after it.
            let straggler = send(&client, cpn, b"late");
            cpn += 1;
            let (initiator, responder, ipn, rpn) = if round % 2 == 0 {
                (&mut client, &mut server, &mut cpn, &mut spn)
            } else {
                (&mut server, &mut client, &mut spn, &mut cpn)
            };
            let gen_before = initiator.generation();
            initiator.initiate_update().unwrap();
            assert!(!initiator.update_allowed());
            assert_eq!(
                initiator.initiate_update(),
                Err(KeyUpdateError::NotConfirmed),
                "second update before confirmation"
            );
            assert_eq!(initiator.generation(), gen_before + 1);

            let first = send(initiator, *ipn, b"new phase");
            *ipn += 1;
            assert_eq!(recv(responder, &first, now + pto3), Ok(KeyGeneration::Next));
            assert_eq!(responder.key_phase(), initiator.key_phase());
            let reply = send(responder, *rpn, b"ack");
            *rpn += 1;
            assert_eq!(
                recv(initiator, &reply, now + pto3),
                Ok(KeyGeneration::Current)
            );

            // The straggler from the client's old phase still opens with the previous key ...
            assert_eq!(
                recv(&mut server, &straggler, now + pto3),
                Ok(KeyGeneration::Previous)
            );
            // ... until the deadline, then it fails (it is tried as a "next" key).
            assert_eq!(server.next_timeout(), Some(now + pto3));
            server.on_timeout(now + pto3 - Duration::from_millis(1));
            assert!(server.has_previous());
            server.on_timeout(now + pto3);
            client.on_timeout(now + pto3);
            assert!(!server.has_previous() && server.next_timeout().is_none());
            assert_eq!(
                recv(&mut server, &straggler, now + pto3),
                Err(CryptoError::DecryptFailed)
            );
            assert_eq!(client.generation(), round + 1);
            assert_eq!(server.generation(), round + 1);
        }
    }

    #[test]
    fn header_keys_survive_updates() {
        let (mut client, server) = pair(VERSION_1, Suite::Aes128Gcm);
        let sample = [7u8; 16];
        let before = client.local_header().mask(&sample);
        client.on_packet_acked_in_current_phase();
        client.initiate_update().unwrap();
        assert_eq!(client.local_header().mask(&sample), before);
        assert_eq!(server.remote_header().mask(&sample), before);
    }

    /// RFC 9001 §6.1: after an update of ours the old read key stays until the peer has
    /// used the new keys, however long that takes; only then does its 3 PTO clock start.
    #[test]
    fn old_keys_stay_until_the_peer_uses_the_new_ones() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(3600);
        let (mut client, mut server) = pair(VERSION_1, Suite::Aes128Gcm);
        client.on_packet_acked_in_current_phase();
        client.initiate_update().unwrap();
        assert_eq!(
            client.next_timeout(),
            None,
            "no clock before the peer follows"
        );
        client.on_timeout(later);
        // The server has not seen the new phase: its packets still open, much later.
        let old = send(&server, 0, b"old phase");
        assert_eq!(recv(&mut client, &old, later), Ok(KeyGeneration::Previous));
        assert!(client.has_previous());
        // The server follows; its first new-phase packet starts the clock.
        let first = send(&client, 0, b"new phase");
        assert_eq!(recv(&mut server, &first, later), Ok(KeyGeneration::Next));
        let new = send(&server, 1, b"new phase too");
        let deadline = later + Duration::from_millis(300);
        assert_eq!(
            recv(&mut client, &new, deadline),
            Ok(KeyGeneration::Current)
        );
        assert_eq!(client.next_timeout(), Some(deadline));
        client.on_timeout(deadline);
        assert!(!client.has_previous());
    }
}
