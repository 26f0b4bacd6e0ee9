//! Receiving: split a datagram into packets, remove header protection, decrypt in place,
//! process frames (RFC 9000 §12, §17; RFC 9001 §5).
//!
//! protected packet → header parse → header unprotect (sample at pn_offset + 4) →
//! packet number expand → AEAD open in place → duplicate check → frames → ACK bookkeeping.
//!
//! `cold_path()` marks the branches a packet of an established connection does not take
//! (errors, drops, migration, key updates, handshake-only steps), so LLVM lays their code
//! out after the per-packet path and that path spans fewer instruction-cache lines: a
//! small request refetches its whole path each time (docs/performance.md).

use std::hint::cold_path;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::conn::aead_limits;
use crate::conn::connection::{
    CloseReason, Connection, Event, PathResponse, State, HANDSHAKE_IDLE_TIMEOUT,
    MAX_PATH_RESPONSES, MIN_INITIAL_SIZE, UNVALIDATED_HANDSHAKE_TIMEOUT,
};
use crate::crypto::aead::TAG_LEN;
use crate::crypto::header_protection::{remove_mask, sample, SAMPLE_LEN};
use crate::crypto::key_update::KeyGeneration;
use crate::crypto::secrets::initial_keys;
use crate::wire::cid::ConnectionId;
use crate::wire::error::{TransportError, TransportErrorCode as Code};
use crate::wire::frame::{AckFrame, Frame, FrameIter, PacketKind};
use crate::wire::header::{self, Header, LongType};
use crate::wire::packet_number;
use crate::{Epoch, Side};

/// The parts of a parsed header we keep after releasing the borrow of the datagram.
#[derive(Clone, Copy)]
enum PacketHeader {
    Long {
        ty: LongType,
        version: u32,
        dcid: ConnectionId,
        scid: ConnectionId,
        pn_offset: usize,
    },
    Short {
        dcid: ConnectionId,
        pn_offset: usize,
    },
}

enum Outcome {
    Processed,
    Dropped,
}

impl Connection {
    /// Whether `addr` is one the peer is known at: the current path, the last validated
    /// one while a new one is checked, or the one a migration left.
    fn is_peer_address(&self, addr: SocketAddr) -> bool {
        let same = |a: SocketAddr| crate::wire::net::same_peer(a, addr);
        same(self.remote)
            || self.validated_remote.is_some_and(same)
            || self.old_path_challenge.is_some_and(|(_, a, _)| same(a))
    }

    /// Handles one received UDP datagram (possibly several coalesced packets), decrypting in place.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        ecn: u8,
        datagram: &mut [u8],
    ) {
        if matches!(self.state, State::Draining { .. } | State::Drained) {
            return;
        }
        // RFC 9000 §9 (§9.6 aside, which we do not use): a client discards packets from an
        // address other than its server's; only clients move.
        if self.side == Side::Client && !crate::wire::net::same_peer(remote, self.remote) {
            self.stats.packets_dropped += 1;
            return;
        }
        self.stats.bytes_received += datagram.len() as u64;
        // Only what the current address sent counts toward what we may send it (RFC 9000
        // §8); a migration restarts the count on the new address.
        if remote == self.remote {
            self.amplification_received += datagram.len() as u64;
        }
        self.rx_path = (remote, datagram.len());
        self.rx_path_answered = false;
        let total_len = datagram.len();
        let mut processed_any = false;
        let mut first_dcid: Option<ConnectionId> = None;
        let mut offset = 0;
        while offset < total_len {
            let rest = &mut datagram[offset..];
            let (hdr, packet_len) = match self.parse_header(now, rest) {
                Some(x) => x,
                None => {
                    cold_path();
                    self.stats.packets_dropped += 1;
                    break;
                }
            };
            // RFC 9000 §12.2: every coalesced packet carries the same DCID. A short-header
            // packet runs to the end of its datagram, so one that comes first is alone.
            let (dcid, long) = match hdr {
                PacketHeader::Long { dcid, .. } => (dcid, true),
                PacketHeader::Short { dcid, .. } => (dcid, false),
            };
            if offset == 0 {
                if long {
                    first_dcid = Some(dcid);
                }
            } else if first_dcid != Some(dcid) {
                cold_path();
                self.stats.packets_dropped += 1;
                offset += packet_len;
                continue;
            }
            let packet = &mut rest[..packet_len];
            offset += packet_len;
            match self.handle_packet(now, remote, ecn, hdr, packet) {
                Ok(Outcome::Processed) => processed_any = true,
                Ok(Outcome::Dropped) => self.stats.packets_dropped += 1,
                Err(e) => {
                    cold_path();
                    self.close_with_error(now, e);
                    return;
                }
            }
            if matches!(self.state, State::Draining { .. } | State::Drained) {
                return;
            }
        }
        if !processed_any {
            cold_path();
            // RFC 9000 §10.3.1: an unprocessable datagram ending in a reset token of the peer's,
            // from an address of the peer's.
            if total_len >= 21
                && self.is_peer_address(remote)
                && self.cids.matches_reset_token(&datagram[total_len - 16..])
            {
                self.handle_stateless_reset(now);
            }
            return;
        }
        if let State::Closing { .. } = self.state {
            cold_path();
            // RFC 9000 §10.2.1: answer with CONNECTION_CLOSE again, at a falling rate (the
            // 1st, 2nd, 4th, 8th... datagram), so a peer that keeps sending cannot make us
            // answer each of its packets.
            self.closing_received = self.closing_received.saturating_add(1);
            if self.closing_received.is_power_of_two() {
                self.close_pending = true;
            }
        }
    }

    /// Parses a header into owned fields, handling Retry and Version Negotiation (client only) inline.
    /// Returns None when the rest of the datagram must be dropped.
    fn parse_header(&mut self, now: Instant, buf: &[u8]) -> Option<(PacketHeader, usize)> {
        let (hdr, len) = header::parse(buf, self.local_cid_len).ok()?;
        let owned = match hdr {
            Header::Long {
                ty,
                version,
                dcid,
                scid,
                token,
                pn_offset,
                ..
            } => {
                // RFC 9000 §17.2.2: a server's Initial carries no token; a client discards
                // one that does.
                if self.side == Side::Client && ty == LongType::Initial && !token.is_empty() {
                    tracing::trace!("drop: server Initial with a token");
                    return None;
                }
                PacketHeader::Long {
                    ty,
                    version,
                    dcid,
                    scid,
                    pn_offset,
                }
            }
            Header::Short { dcid, pn_offset } => PacketHeader::Short { dcid, pn_offset },
            Header::Retry {
                version,
                scid,
                token,
                ..
            } => {
                let token = token.to_vec();
                self.handle_retry(now, version, scid, token, &buf[..len]);
                return None;
            }
            Header::VersionNegotiation {
                dcid,
                scid,
                versions,
            } => {
                self.handle_version_negotiation(now, dcid, scid, versions);
                return None;
            }
            Header::UnsupportedVersion { .. } => return None,
        };
        Some((owned, len))
    }

    /// Client: a Retry (RFC 9000 §17.2.5, RFC 9001 §5.8).
    fn handle_retry(
        &mut self,
        now: Instant,
        version: u32,
        scid: ConnectionId,
        token: Vec<u8>,
        packet: &[u8],
    ) {
        if self.side != Side::Client
            || self.got_server_packet
            || self.retry_scid.is_some()
            || token.is_empty()
        {
            return;
        }
        // §17.2.5.1: a Retry must pick a new CID (one echoing our original DCID is discarded).
        if version != self.version
            || scid == self.original_dcid
            || !crate::crypto::retry::verify_retry(version, &self.original_dcid, packet)
        {
            return;
        }
        tracing::debug!(%scid, "retry received");
        self.retry_scid = Some(scid);
        self.initial_token = token;
        self.cids.set_initial_remote(scid);
        self.spaces[Epoch::Initial.index()].keys = Some(initial_keys(version, &scid, Side::Client));
        // Resend everything from the first Initial under the new keys; the old packets are gone.
        let mut lost = std::mem::take(&mut self.lost_scratch);
        self.recovery
            .discard_space(Epoch::Initial, now, &mut |p| lost.push(p.data));
        for frames in lost.drain(..) {
            self.on_frames_lost(now, frames);
        }
        self.lost_scratch = lost;
    }

    /// Client: Version Negotiation (RFC 9000 §6.2, RFC 9368 §2.1): only acted on before any
    /// other server packet. A client offering another version the server lists starts over
    /// in it; otherwise the connection ends.
    fn handle_version_negotiation(
        &mut self,
        now: Instant,
        dcid: &[u8],
        scid: &[u8],
        versions: &[u8],
    ) {
        // §6.2: discarded once any other packet was processed, a Retry included.
        if self.side != Side::Client || self.got_server_packet || self.retry_scid.is_some() {
            return;
        }
        // RFC 9000 §6.2 / RFC 8999 §6: a real VN echoes our connection IDs swapped; anything
        // else (or an empty list) is noise an attacker could use to kill the connection.
        if dcid != self.handshake_scid.as_slice() || scid != self.original_dcid.as_slice() {
            return;
        }
        // Bounded by the datagram; Version Negotiation is rare enough to allocate for.
        let offered: Vec<u32> = versions
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if offered.is_empty() || offered.contains(&self.version) {
            return; // §6.2: must ignore a VN listing our version
        }
        let next = match &self.version_fallback {
            // RFC 9368 §4: no second round of Version Negotiation.
            Some(f) if f.original.is_some() => return,
            Some(f) => f.choose(&offered),
            None => None,
        };
        if let Some(version) = next {
            if let Err(e) = self.restart_in_version(now, version) {
                tracing::debug!(%e, "cannot start over in another version");
            } else {
                return;
            }
        }
        self.state = State::Drained;
        self.emit_closed(CloseReason::VersionMismatch);
    }

    /// The receive keys of a long-header packet at `epoch`: the space's, or for an Initial
    /// in the other version of a compatible negotiation, that version's.
    fn long_header_remote_keys(
        &self,
        epoch: Epoch,
        other_version: bool,
    ) -> Option<&crate::crypto::DirectionalKeys> {
        if other_version {
            self.other_version_initial_keys()
        } else {
            self.spaces[epoch.index()].keys.as_ref().map(|k| &k.remote)
        }
    }

    fn handle_packet(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        ecn: u8,
        hdr: PacketHeader,
        packet: &mut [u8],
    ) -> Result<Outcome, TransportError> {
        // An Initial in the other version of a compatible negotiation (RFC 9369 §4); every
        // other packet in a version not the connection's is dropped.
        let mut other_version = false;
        let (epoch, kind, pn_offset, long_scid) = match hdr {
            PacketHeader::Long {
                ty,
                version,
                scid,
                pn_offset,
                ..
            } => {
                if version != self.version {
                    cold_path();
                    if ty != LongType::Initial || !self.accepts_initial_in(version) {
                        return Ok(Outcome::Dropped);
                    }
                    other_version = true;
                }
                match ty {
                    LongType::Initial => {
                        (Epoch::Initial, PacketKind::Initial, pn_offset, Some(scid))
                    }
                    LongType::Handshake => (
                        Epoch::Handshake,
                        PacketKind::Handshake,
                        pn_offset,
                        Some(scid),
                    ),
                    LongType::ZeroRtt => {
                        cold_path();
                        // Only a server that accepted the client's early data has keys, and
                        // only from the address of its Initial (RFC 9001 §4.6.2, §4.9.3).
                        if !self.zero_rtt_usable(now) || remote != self.remote {
                            tracing::trace!("drop: 0-RTT packet without 0-RTT keys");
                            return Ok(Outcome::Dropped);
                        }
                        (Epoch::Data, PacketKind::ZeroRtt, pn_offset, None)
                    }
                    // Retry was handled while parsing.
                    LongType::Retry => return Ok(Outcome::Dropped),
                }
            }
            PacketHeader::Short { pn_offset, .. } => {
                (Epoch::Data, PacketKind::OneRtt, pn_offset, None)
            }
        };
        if self.spaces[epoch.index()].discarded {
            cold_path();
            tracing::trace!(?epoch, "drop: space discarded");
            return Ok(Outcome::Dropped);
        }
        // A server takes Handshake packets from any address (a client only its server's,
        // checked per datagram): a NAT may rebind mid-handshake, and dropping the client's
        // Finished from its new port would stall the handshake for good. Only the client
        // can seal them, and replies still go to the handshake's address: the path moves
        // only on a 1-RTT packet once the handshake is confirmed (RFC 9000 §9), and bytes
        // from elsewhere add nothing to the amplification budget (§8.1). Initial packets
        // stay tied to that address: anyone who saw the client's first Initial can seal
        // them, so from elsewhere they could forge ACKs or a close.
        if epoch == Epoch::Initial && remote != self.remote {
            cold_path();
            return Ok(Outcome::Dropped);
        }
        // RFC 9000 §7.2: after the server's first packet, its SCID is fixed for the
        // connection; long-header packets with another one are discarded.
        if self.side == Side::Client && self.got_server_packet {
            if let Some(scid) = long_scid {
                if Some(scid) != self.server_scid {
                    tracing::trace!(%scid, "drop: server packet with another SCID");
                    return Ok(Outcome::Dropped);
                }
            }
        }
        // RFC 9000 §14.1: a server discards any Initial in a datagram under 1200 bytes
        // (the endpoint checks the first; this covers every later one).
        if self.side == Side::Server && epoch == Epoch::Initial && self.rx_path.1 < MIN_INITIAL_SIZE
        {
            cold_path();
            tracing::trace!(len = self.rx_path.1, "drop: Initial in a short datagram");
            return Ok(Outcome::Dropped);
        }

        // RFC 9001 §5.7: a server must not process 1-RTT packets before the handshake is
        // complete (the client's Finished verified); they are dropped, and an honest
        // client's loss recovery sends their frames again. 0-RTT packets are for then.
        if kind == PacketKind::OneRtt
            && self.side == Side::Server
            && (self.state == State::Handshake
                || (matches!(self.state, State::Closing { .. }) && self.tls.is_handshaking()))
        {
            cold_path();
            tracing::trace!("drop: 1-RTT packet before the handshake completed");
            return Ok(Outcome::Dropped);
        }

        // Header protection (RFC 9001 §5.4).
        let Some(sample_block) = sample(packet, pn_offset) else {
            cold_path();
            tracing::trace!(
                ?epoch,
                len = packet.len(),
                "drop: too short for a header-protection sample"
            );
            return Ok(Outcome::Dropped);
        };
        debug_assert_eq!(sample_block.len(), SAMPLE_LEN);
        // A long header's receive keys, found once for header and packet protection.
        let long_keys = match kind {
            PacketKind::OneRtt => None,
            PacketKind::ZeroRtt => self.zero_rtt.as_deref(),
            _ => match self.long_header_remote_keys(epoch, other_version) {
                Some(k) => Some(k),
                None => {
                    tracing::trace!(?epoch, "drop: no keys yet");
                    return Ok(Outcome::Dropped);
                }
            },
        };
        let mask = match (long_keys, &self.one_rtt) {
            (Some(k), _) => k.header.mask(&sample_block),
            (None, Some(k)) => k.remote_header().mask(&sample_block),
            (None, None) => {
                cold_path();
                tracing::trace!("drop: 1-RTT packet before 1-RTT keys");
                return Ok(Outcome::Dropped);
            }
        };
        // Work on a copy of the first byte so a failed decryption leaves no trace we rely on.
        let Some((pn_len, truncated)) = remove_mask(packet, pn_offset, &mask) else {
            return Ok(Outcome::Dropped);
        };
        let first = packet[0];
        let pn = packet_number::decode(truncated, pn_len, self.spaces[epoch.index()].ack.largest());
        let header_len = pn_offset + pn_len;
        if packet.len() < header_len + TAG_LEN {
            return Ok(Outcome::Dropped);
        }

        // AEAD (RFC 9001 §5.3), with key phases for 1-RTT (§6).
        let mut generation = KeyGeneration::Current;
        let opened = match long_keys {
            Some(keys) => keys.packet.open_in_place(pn, packet, header_len),
            None => {
                let keys = self.one_rtt.as_ref().expect("checked above");
                let phase = first & 0x04 != 0;
                let (key, gen) = keys.remote_packet_for(phase, pn);
                generation = gen;
                key.open_in_place(pn, packet, header_len)
            }
        };
        let Ok(payload_len) = opened else {
            cold_path();
            tracing::trace!(?epoch, pn, ?generation, "drop: decryption failed");
            if epoch != Epoch::Initial {
                // RFC 9001 §6.6 (Initial keys are public: failures there prove nothing).
                self.stats.authentication_failures += 1;
                // The limit depends on the suite only, which every key of a connection shares.
                let suite_limit = match epoch {
                    Epoch::Data => self
                        .one_rtt
                        .as_ref()
                        .map(|k| k.local_packet().integrity_limit()),
                    _ => self.spaces[epoch.index()]
                        .keys
                        .as_ref()
                        .map(|k| k.remote.packet.integrity_limit()),
                };
                let limit = aead_limits::capped(
                    suite_limit.unwrap_or(u64::MAX),
                    self.config.aead_integrity_limit,
                );
                if aead_limits::integrity_exceeded(self.stats.authentication_failures, limit) {
                    return Err(TransportError::new(
                        Code::AEAD_LIMIT_REACHED,
                        "AEAD integrity limit reached",
                    ));
                }
            }
            return Ok(Outcome::Dropped);
        };

        if other_version && self.side == Side::Client {
            self.adopt_server_version();
        }

        // Reserved bits must be zero once protection is removed (RFC 9000 §17.2, §17.3.1).
        let reserved = if kind == PacketKind::OneRtt {
            first & 0x18
        } else {
            first & 0x0c
        };
        if reserved != 0 {
            cold_path();
            return Err(TransportError::new(
                Code::PROTOCOL_VIOLATION,
                "reserved bits set",
            ));
        }
        let ack = &self.spaces[epoch.index()].ack;
        if ack.is_duplicate(pn) {
            cold_path();
            if ack.is_below_floor(pn) {
                self.stats.late_packets += 1;
            } else {
                self.stats.duplicate_packets += 1;
            }
            return Ok(Outcome::Dropped);
        }
        if kind == PacketKind::ZeroRtt {
            cold_path();
            self.stats.zero_rtt_packets_received += 1;
        }
        if kind == PacketKind::OneRtt && generation == KeyGeneration::Next {
            cold_path();
            // The peer started a key update (RFC 9001 §6.2).
            if !self.handshake_confirmed && self.side == Side::Server {
                return Err(TransportError::new(
                    Code::KEY_UPDATE_ERROR,
                    "key update before handshake confirmed",
                ));
            }
            // §6.2 lets us refuse consecutive updates: each one costs us a key derivation,
            // which a peer updating on every packet could otherwise make us do per packet.
            if self.peer_update_unacked {
                return Err(TransportError::new(
                    Code::KEY_UPDATE_ERROR,
                    "key updated again before the last update was acknowledged",
                ));
            }
            self.peer_update_unacked = true;
            let discard_at = now + 3 * self.recovery.pto(Epoch::Data);
            if let Some(k) = self.one_rtt.as_mut() {
                k.commit_peer_update(pn, discard_at);
            }
            self.packets_in_phase = 0;
            self.stats.key_updates += 1;
        } else if kind == PacketKind::OneRtt {
            if let Some(k) = self.one_rtt.as_mut() {
                if k.on_packet_opened(generation, pn) {
                    // The peer follows our update: the old keys go 3 PTO from now (§6.5).
                    k.discard_previous_at(now + 3 * self.recovery.pto(Epoch::Data));
                }
            }
        }

        self.stats.packets_received += 1;
        if self.side == Side::Client && !self.got_server_packet {
            cold_path();
            self.got_server_packet = true;
            if let Some(scid) = long_scid {
                // RFC 9000 §7.2: adopt the server's chosen CID.
                self.cids.set_initial_remote(scid);
                self.server_scid = Some(scid);
            }
        }
        if self.side == Side::Server && epoch == Epoch::Handshake {
            cold_path();
            // RFC 9000 §8.1: a Handshake packet proves the client got our Initial.
            if !self.address_validated {
                // The idle timer restarts below for this packet too, even if an Initial of
                // the same datagram restarted it under the unvalidated handshake's limit.
                self.idle_restarted_at = None;
            }
            self.address_validated = true;
            if self.amplification_blocked {
                self.amplification_blocked = false;
                self.recovery.set_anti_amplification_blocked(false);
            }
            // RFC 9001 §4.9.1: the server drops Initial keys on first Handshake packet processed.
            self.discard_space(Epoch::Initial, now);
        }
        // Peer address change (NAT rebinding or migration, RFC 9000 §9): follow a non-probing
        // packet with the highest number seen; decided once its frames are known.
        let new_path = epoch == Epoch::Data
            && remote != self.remote
            && self.handshake_confirmed
            && self.spaces[Epoch::Data.index()]
                .ack
                .largest()
                .is_none_or(|l| pn > l);

        let payload_start = header_len;
        let payload = &packet[payload_start..payload_start + payload_len];
        let dcid = match hdr {
            PacketHeader::Long { dcid, .. } | PacketHeader::Short { dcid, .. } => dcid,
        };
        let was_confirmed = self.handshake_confirmed;
        let (ack_eliciting, probing_only) =
            self.process_frames(now, epoch, kind, payload, &dcid)?;
        // A server whose handshake this packet completed, from a new address (a NAT that
        // rebound mid-handshake), follows it as it would a 1-RTT packet: a client with
        // nothing more to send would otherwise never be heard from there again (its
        // Handshake probes meet a discarded space, and it arms no 1-RTT PTO until
        // confirmed, RFC 9002 §6.2.1).
        let confirmed_from_elsewhere = epoch == Epoch::Handshake
            && !was_confirmed
            && self.handshake_confirmed
            && self.side == Side::Server
            && remote != self.remote;
        // While closing only CONNECTION_CLOSE matters (§10.2.1): no migration.
        if ((new_path && !probing_only) || confirmed_from_elsewhere)
            && !matches!(self.state, State::Closing { .. })
        {
            cold_path();
            let peer_switched = self.path_dcid.is_some_and(|d| d != dcid);
            self.migrate_to(now, remote, self.rx_path.1, peer_switched);
        }
        if kind == PacketKind::OneRtt
            && self.path_dcid.as_ref() != Some(&dcid)
            && remote == self.remote
        {
            self.path_dcid = Some(dcid);
        }

        let immediate = epoch != Epoch::Data;
        let max_ack_delay = self.config.max_ack_delay;
        self.spaces[epoch.index()].ack.on_packet_received(
            pn,
            ack_eliciting,
            ecn,
            now,
            immediate,
            max_ack_delay,
        );

        // RFC 9000 §10.1: restart the idle timer on every packet processed.
        if self.idle_restarted_at != Some(now) {
            self.idle_restarted_at = Some(now);
            self.idle_deadline = self.idle_deadline_from(now);
        }
        self.idle_restart_on_send = true;
        Ok(Outcome::Processed)
    }

    /// The peer moved (RFC 9000 §9.3): send to the new address, limited to three times what it
    /// sent us until a PATH_CHALLENGE round trip validates it (§8.2, §9.3.1). If it moved
    /// under another of our CIDs (`peer_switched`), the new path gets another of its CIDs.
    fn migrate_to(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        received: usize,
        peer_switched: bool,
    ) {
        tracing::debug!(old = %self.remote, new = %remote, peer_switched, "peer address changed");
        if self.address_validated {
            self.validated_remote = Some(self.remote);
            // §9.3.3: challenge the path just left, so that a genuine peer still there
            // answers on it and wins the connection back from a forged migration.
            self.old_path_challenge =
                Some((challenge_data(), self.remote, self.cids.active_remote()));
        }
        self.path_got_new_cid = peer_switched && self.move_to_fresh_remote_cid(remote);
        if peer_switched && !self.path_got_new_cid {
            // §9.5 leaves nothing better: the peer gave us no CID to spare.
            tracing::debug!("no spare connection ID for the new path");
        }
        self.send_to(now, remote);
        self.path_first_pn = self.recovery.next_packet_number(Epoch::Data);
        self.recovery.restart_ecn(self.path_first_pn);
        if self.validated_remote == Some(remote) {
            // Back on the last validated address (its packets overtook a spurious
            // migration's, §9.3.2): nothing to validate.
            self.path_validated();
            return;
        }
        self.address_validated = false;
        self.amplification_received = received as u64;
        self.amplification_sent = 0;
        self.start_path_validation(now);
    }

    /// Sends a PATH_CHALLENGE on the current path (RFC 9000 §8.2) and gives it until the
    /// validation deadline: three times the larger of the current PTO and one from the
    /// initial RTT, since the new path may be slower (§8.2.4).
    pub(crate) fn start_path_validation(&mut self, now: Instant) {
        self.path_challenge = Some(challenge_data());
        self.path_challenge_pending = true;
        let initial_pto = 3 * self.config.initial_rtt + self.config.max_ack_delay;
        let timeout = 3 * self.recovery.pto(Epoch::Data).max(initial_pto);
        self.path_validation_deadline = now.checked_add(timeout);
    }

    /// The peer's CID for `to`, a path other than the current one (RFC 9000 §9.5): the one
    /// a probe from there was answered under, else a spare, which becomes that path's (a
    /// previous probed path's is retired). None: the peer left us no spare.
    pub(crate) fn remote_cid_for_path(&mut self, to: SocketAddr) -> Option<ConnectionId> {
        if let Some((probed, cid)) = self.probe_cid {
            if probed == to {
                return Some(cid);
            }
        }
        let cid = self.cids.claim_spare_remote()?;
        if let Some((_, old)) = self.probe_cid.replace((to, cid)) {
            self.cids.retire_remote(old);
        }
        Some(cid)
    }

    /// Sends under the peer's CID for `to` from now on, retiring the one used so far.
    /// False if the peer left us no spare.
    fn move_to_fresh_remote_cid(&mut self, to: SocketAddr) -> bool {
        let Some(cid) = self.remote_cid_for_path(to) else {
            return false;
        };
        self.probe_cid = None;
        self.cids.switch_active_remote(cid);
        true
    }

    /// Sends to `remote` from now on; the maximum datagram size belongs to a pair of
    /// addresses (RFC 9000 §14), so path MTU discovery starts over.
    fn send_to(&mut self, now: Instant, remote: SocketAddr) {
        self.remote = remote;
        self.restart_path_mtu(now);
    }

    /// A new pair of addresses: path MTU discovery starts over (RFC 9000 §14).
    pub(crate) fn restart_path_mtu(&mut self, now: Instant) {
        self.pmtud.on_path_change(now);
        self.apply_path_mtu();
    }

    /// The current address is validated (a PATH_RESPONSE, or it is the last validated one).
    fn path_validated(&mut self) {
        self.path_challenge = None;
        self.path_challenge_pending = false;
        self.path_validation_deadline = None;
        self.validated_remote = None;
        self.address_validated = true;
        if self.amplification_blocked {
            self.amplification_blocked = false;
            self.recovery.set_anti_amplification_blocked(false);
        }
    }

    /// The new address never answered (RFC 9000 §9.3.2): return to the last validated one,
    /// or, with none, discard the connection silently.
    pub(crate) fn abandon_path_validation(&mut self, now: Instant) {
        self.path_validation_deadline = None;
        if self.side == Side::Client {
            // Our own move (§9.2) found a dead path. The application may move again.
            if self.path_challenge.take().is_some() {
                tracing::debug!(server = %self.remote, "path validation failed after migrating");
                self.path_challenge_pending = false;
                self.stats.failed_path_validations += 1;
                self.events.push_back(Event::PathValidationFailed);
            }
            return;
        }
        if self.address_validated {
            return;
        }
        match self.validated_remote {
            Some(prev) => {
                tracing::debug!(failed = %self.remote, back_to = %prev, "path validation failed");
                // The CID we used toward the failed address must not follow us back.
                if std::mem::take(&mut self.path_got_new_cid) {
                    self.move_to_fresh_remote_cid(prev);
                }
                self.send_to(now, prev);
                // Back on the old path: its ECN test starts over with our next packet.
                let next = self.recovery.next_packet_number(Epoch::Data);
                self.recovery.restart_ecn(next);
                self.path_validated();
            }
            None => {
                tracing::debug!(failed = %self.remote, "path validation failed; no validated path");
                self.state = State::Drained;
                self.emit_closed(CloseReason::PathValidationFailed);
            }
        }
    }

    /// When the connection goes idle if nothing happens from `now` on (None: disabled,
    /// both ends advertised 0, RFC 9000 §18.2).
    pub(crate) fn idle_deadline_from(&self, now: Instant) -> Option<Instant> {
        if self.awaits_first_validation() {
            // A disabled (zero) idle timeout does not lift the limit. Never shorter than
            // 3 PTOs (RFC 9000 §10.1), whatever the limit.
            let limit = match self.idle_timeout {
                Duration::ZERO => UNVALIDATED_HANDSHAKE_TIMEOUT,
                idle => idle.min(UNVALIDATED_HANDSHAKE_TIMEOUT),
            };
            return Some(now + limit.max(self.recovery.three_ptos(Epoch::Data)));
        }
        if self.idle_timeout.is_zero() {
            // Disabled, but a handshake that never completes still ends.
            return (!self.handshake_confirmed).then(|| now + HANDSHAKE_IDLE_TIMEOUT);
        }
        Some(now + self.effective_idle_timeout())
    }

    /// Server: the client has not proved its address yet (no Handshake packet, token or
    /// PATH_RESPONSE): a forged source looks like this for good.
    pub(crate) fn awaits_first_validation(&self) -> bool {
        self.side == Side::Server && !self.address_validated && !self.handshake_confirmed
    }

    pub(crate) fn effective_idle_timeout(&self) -> Duration {
        // Never shorter than 3 PTOs (RFC 9000 §10.1).
        self.idle_timeout.max(self.recovery.three_ptos(Epoch::Data))
    }

    /// Returns whether the packet was ack-eliciting.
    /// Returns (ack-eliciting, only probing frames: RFC 9000 §9.1).
    fn process_frames(
        &mut self,
        now: Instant,
        epoch: Epoch,
        kind: PacketKind,
        payload: &[u8],
        dcid: &ConnectionId,
    ) -> Result<(bool, bool), TransportError> {
        let mut ack_eliciting = false;
        let mut probing_only = true;
        let mut any = false;
        let mut crypto_received = false;
        let mut frames = FrameIter::new(payload);
        loop {
            let start = frames.offset();
            let Some(frame) = frames.next() else { break };
            let frame = frame?;
            any = true;
            let ty = frame.ty();
            if !frame.allowed_in(kind) {
                cold_path();
                return Err(TransportError::new(
                    Code::PROTOCOL_VIOLATION,
                    "frame not allowed in this packet type",
                )
                .with_frame(ty));
            }
            ack_eliciting |= frame.is_ack_eliciting();
            probing_only &= frame.is_probing();
            if matches!(self.state, State::Closing { .. }) {
                cold_path();
                // While closing only CONNECTION_CLOSE matters (RFC 9000 §10.2.1). It moves
                // us to draining with the same end time (§10.2.2): we stay quiet, but the
                // connection keeps absorbing the peer's late packets until then.
                if let (Frame::ConnectionClose { .. }, State::Closing { deadline }) =
                    (&frame, self.state)
                {
                    self.state = State::Draining { deadline };
                    self.close_pending = false;
                }
                continue;
            }
            // The frames of every request (STREAM, ACK) are handled here; the rest, rare,
            // out of line, so their code does not weigh on this loop.
            let processed = match frame {
                Frame::Stream {
                    id,
                    offset,
                    data,
                    fin,
                } => self.streams.on_stream(id, offset, data, fin, now),
                Frame::Ack(ack) => self.on_ack_frame(now, epoch, &ack),
                // Its size on the wire decides (RFC 9221 §3), length field included.
                Frame::Datagram { data } => self.on_datagram_frame(data, frames.offset() - start),
                _ => self.process_frame(now, epoch, frame, dcid, &mut crypto_received),
            };
            processed.map_err(|e| {
                if e.frame_type == 0 {
                    e.with_frame(ty)
                } else {
                    e
                }
            })?;
            if matches!(self.state, State::Draining { .. } | State::Drained) {
                return Ok((ack_eliciting, probing_only));
            }
        }
        if !any {
            cold_path();
            // RFC 9000 §12.4: a packet with no frames is a PROTOCOL_VIOLATION.
            return Err(TransportError::new(
                Code::PROTOCOL_VIOLATION,
                "packet without frames",
            ));
        }
        if crypto_received {
            self.drive_tls(now)?;
        }
        Ok((ack_eliciting, probing_only))
    }

    /// An ACK frame (RFC 9000 §19.3): loss recovery, then what the acknowledged and lost
    /// packets carried.
    #[inline(never)]
    fn on_ack_frame(
        &mut self,
        now: Instant,
        epoch: Epoch,
        ack: &AckFrame<'_>,
    ) -> Result<(), TransportError> {
        let exponent = if epoch == Epoch::Data {
            self.peer_ack_delay_exponent
        } else {
            3
        };
        let delay = decode_ack_delay(ack.delay, exponent);
        let ecn = ack.ecn.map(|e| (e.ect0, e.ect1, e.ce));
        let mut acked = std::mem::take(&mut self.acked_scratch);
        let mut lost = std::mem::take(&mut self.lost_scratch);
        let result = self.recovery.on_ack_received(
            now,
            epoch,
            ack.iter(),
            delay,
            ecn,
            &mut |p| acked.push(p.data),
            &mut |p| lost.push(p.data),
        );
        for frames in acked.drain(..) {
            self.on_frames_acked(now, frames);
        }
        for frames in lost.drain(..) {
            self.on_frames_lost(now, frames);
        }
        self.acked_scratch = acked;
        self.lost_scratch = lost;
        self.end_loss_event(now);
        if result.is_err() {
            cold_path();
            return Err(TransportError::new(
                Code::PROTOCOL_VIOLATION,
                "ACK of a packet never sent",
            ));
        }
        if epoch == Epoch::Data
            && self.side == Side::Client
            && !self.handshake_confirmed
            && self.state == State::Established
            && ack.largest >= self.first_one_rtt_pn
        {
            // RFC 9001 §4.1.2: an acknowledged 1-RTT packet confirms the handshake too
            // (an acknowledged 0-RTT packet does not).
            self.confirm_handshake(now);
        }
        Ok(())
    }

    /// Every frame but STREAM, ACK and DATAGRAM, which `process_frames` takes itself.
    #[inline(never)]
    fn process_frame(
        &mut self,
        now: Instant,
        epoch: Epoch,
        frame: Frame<'_>,
        dcid: &ConnectionId,
        crypto_received: &mut bool,
    ) -> Result<(), TransportError> {
        match frame {
            Frame::Padding { .. } | Frame::Ping => {}
            Frame::Crypto { offset, data } => {
                self.spaces[epoch.index()].crypto.on_crypto(offset, data)?;
                *crypto_received = true;
            }
            Frame::ResetStream {
                id,
                error_code,
                final_size,
            } => self.streams.on_reset_stream(id, error_code, final_size)?,
            Frame::StopSending { id, error_code } => {
                self.streams.on_stop_sending(id, error_code)?
            }
            Frame::MaxData(max) => self.streams.on_max_data(max),
            Frame::MaxStreamData { id, max } => self.streams.on_max_stream_data(id, max)?,
            Frame::MaxStreams { bidi, max } => self.streams.on_max_streams(bidi, max)?,
            Frame::DataBlocked(limit) => self.streams.on_data_blocked(limit),
            Frame::StreamDataBlocked { id, limit } => {
                self.streams.on_stream_data_blocked(id, limit)?
            }
            Frame::StreamsBlocked { bidi, limit } => {
                self.streams.on_streams_blocked(bidi, limit)?
            }
            Frame::NewToken { token } => {
                if self.side == Side::Server {
                    return Err(TransportError::new(
                        Code::PROTOCOL_VIOLATION,
                        "NEW_TOKEN from a client",
                    ));
                }
                // For the endpoint to keep for a later connection to this server (§8.1.3);
                // the latest wins, so a flood of them holds one.
                self.received_token = Some(token.into());
            }
            Frame::NewConnectionId {
                seq,
                retire_prior_to,
                cid,
                reset_token,
            } => {
                self.cids
                    .on_new_cid(seq, retire_prior_to, cid, reset_token)?;
            }
            Frame::RetireConnectionId { seq } => {
                self.cids.on_retire(seq, dcid, self.cid_gen.as_mut())?;
            }
            Frame::PathChallenge(data) => {
                // Answer each challenge on the path it came by; bound the queue against a
                // flood (RFC 9000 §8.2.2 allows dropping).
                if self.path_responses.len() < MAX_PATH_RESPONSES {
                    let (to, received) = self.rx_path;
                    let received = if self.rx_path_answered { 0 } else { received };
                    self.rx_path_answered = true;
                    let new_dcid = self.path_dcid.is_some_and(|d| d != *dcid);
                    self.path_responses.push_back(PathResponse {
                        data,
                        to,
                        received,
                        new_dcid,
                    });
                    // §9.3.3: a challenge on the active path gets a non-probing packet too,
                    // which moves us back here if an attacker's copy had moved us away.
                    if to == self.remote {
                        self.ping_pending = true;
                    }
                }
            }
            Frame::PathResponse(data) => {
                // RFC 9000 §8.2.3: a matching response validates the new path; others are ignored.
                if self.path_challenge == Some(data) {
                    tracing::debug!(remote = %self.remote, "path validated");
                    // §9.4: a new IP address is a new path: congestion control and RTT
                    // start over (a new port alone, as in NAT rebinding, keeps them).
                    if self
                        .validated_remote
                        .is_some_and(|prev| prev.ip() != self.remote.ip())
                    {
                        self.recovery.reset_for_new_path(now, self.path_first_pn);
                    }
                    self.stats.path_challenges_answered += 1;
                    self.path_validated();
                }
            }
            Frame::ConnectionClose {
                error_code,
                frame_type,
                reason,
            } => {
                let reason = String::from_utf8_lossy(&reason[..reason.len().min(256)]).into_owned();
                tracing::debug!(error_code, ?frame_type, %reason, "peer closed");
                self.enter_draining(
                    now,
                    CloseReason::Peer {
                        code: error_code,
                        app: frame_type.is_none(),
                        reason,
                    },
                );
            }
            Frame::HandshakeDone => {
                if self.side == Side::Server {
                    return Err(TransportError::new(
                        Code::PROTOCOL_VIOLATION,
                        "HANDSHAKE_DONE from a client",
                    ));
                }
                self.confirm_handshake(now);
            }
            // `process_frames` takes these: STREAM and ACK in its loop, DATAGRAM because
            // its check needs the frame's size on the wire.
            Frame::Stream { .. } | Frame::Ack(_) | Frame::Datagram { .. } => {}
        }
        Ok(())
    }
}

/// Fresh unpredictable PATH_CHALLENGE data (RFC 9000 §8.2.1).
fn challenge_data() -> [u8; 8] {
    let mut data = [0u8; 8];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut data);
    data
}

/// The ACK Delay field times 2^exponent (RFC 9000 §19.3), in microseconds, saturating and
/// capped at about 12 days: a shift would drop the bits pushed out (2^44 << 20 is 0).
fn decode_ack_delay(field: u64, exponent: u8) -> Duration {
    Duration::from_micros(field.saturating_mul(1u64 << exponent.min(20)).min(1 << 40))
}

#[cfg(test)]
mod ack_delay_tests {
    use super::*;

    #[test]
    fn ack_delay_scales_and_saturates() {
        assert_eq!(decode_ack_delay(1000, 3), Duration::from_micros(8000));
        assert_eq!(decode_ack_delay(5, 0), Duration::from_micros(5));
        assert_eq!(
            decode_ack_delay(1 << 44, 20),
            Duration::from_micros(1 << 40)
        );
        assert_eq!(
            decode_ack_delay(u64::MAX >> 2, 20),
            Duration::from_micros(1 << 40)
        );
    }
}
