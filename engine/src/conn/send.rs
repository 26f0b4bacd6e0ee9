//! Sending: decide what goes out, write packets straight into the caller's buffer,
//! coalesce Initial/Handshake/1-RTT packets into one datagram, pad, seal in place and
//! apply header protection (RFC 9000 §12.2, §13, §14; RFC 9001 §5).
//!
//! The caller's buffer may be a UMEM frame: nothing here copies a packet after writing it.
//!
//! `cold_path()` marks the branches a packet of an established connection does not take
//! (errors, drops, migration, key updates, handshake-only steps), so LLVM lays their code
//! out after the per-packet path and that path spans fewer instruction-cache lines: a
//! small request refetches its whole path each time (docs/performance.md).

use std::hint::cold_path;
use std::net::SocketAddr;
use std::time::Instant;

use crate::conn::aead_limits::{self, SealLimit};
use crate::conn::connection::{
    Connection, PathResponse, State, Transmit, MAX_PATH_RESPONSES, MIN_INITIAL_SIZE,
};
use crate::conn::recovery::{ack_tracker, SentPacket};
use crate::conn::sent::{FrameRecord, SentFrames};
use crate::crypto::aead::TAG_LEN;
use crate::crypto::header_protection::{apply_mask, sample};
use crate::wire::cid::ConnectionId;
use crate::wire::error::{TransportError, TransportErrorCode as Code};
use crate::wire::frame::{encode_ack, Frame};
use crate::wire::header::{self, LongHeaderLayout, LongType};
use crate::wire::packet_number;
use crate::wire::varint::Writer;
use crate::{Epoch, Side};

/// A packet written but not yet sealed (padding may still extend the last one).
struct Built {
    epoch: Epoch,
    start: usize,
    pn: u64,
    pn_offset: usize,
    pn_len: usize,
    header_len: usize,
    payload_len: usize,
    layout: Option<LongHeaderLayout>,
    ack_eliciting: bool,
    padded: bool,
    mtu_probe: bool,
    frames: SentFrames,
}

/// Frames smaller than this are not worth starting a packet for.
const MIN_PACKET_ROOM: usize = 64;
/// Most 1-RTT packets kept on record while the oldest is neither acknowledged nor lost.
/// An honest peer acknowledges ack-eliciting packets within max_ack_delay (RFC 9000
/// §13.2.1), and our ACK-only packets through the PINGs that elicit its ACKs (§13.2.4), so
/// only a path or peer that never acknowledges gets here (about 47 MB in flight at 1452
/// bytes a packet); without a bound such a peer grows the record by every ACK we send.
const MAX_TRACKED_PACKETS: u64 = 1 << 15;
/// New ack-eliciting 1-RTT data waits while this many packets are on record, so that a
/// path whose window would hold more than MAX_TRACKED_PACKETS (some 35 MB in flight)
/// is capped there instead of reaching the bound and closing.
const TRACKED_SEND_LIMIT: u64 = MAX_TRACKED_PACKETS / 4 * 3;
/// The same bound for the Initial and Handshake spaces. A handshake needs a few dozen
/// packets; a peer that keeps eliciting our ACK-only packets there without acknowledging
/// them (nothing makes it: we send no PINGs before 1-RTT) would otherwise grow the record
/// until the idle timeout, which its own packets keep restarting.
const MAX_TRACKED_HANDSHAKE_PACKETS: u64 = 1024;

impl Connection {
    /// Writes the next datagram(s) into `buf`. With `max_segments > 1` several full-sized
    /// datagrams may be written back to back for GSO; only the last may be shorter.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        max_segments: usize,
    ) -> Option<Transmit> {
        if matches!(self.state, State::Draining { .. } | State::Drained) {
            return None;
        }
        // Path probes and PMTU probes go unmarked: their loss must not fail ECN.
        self.ect0_now = false;
        let mtu = if self.handshake_confirmed {
            self.max_datagram_size
        } else {
            MIN_INITIAL_SIZE
        };
        let mtu = mtu.min(buf.len());
        // During the handshake a server needs room for a padded Initial; on a migrated path
        // any packet that fits will do (the PATH_CHALLENGE must get out).
        let room_floor = if self.handshake_confirmed {
            MIN_PACKET_ROOM
        } else {
            MIN_INITIAL_SIZE
        };
        // RFC 9002 §6.2.2.1: a server blocked by the amplification limit must not arm its
        // PTO. Blocked means no packet fits: on a migrated path a PTO that can still send
        // is what gets a lost PATH_CHALLENGE out again when the peer has nothing to say.
        let blocked = !self.address_validated
            && (3 * self.amplification_received).saturating_sub(self.amplification_sent)
                < room_floor as u64;
        if blocked != self.amplification_blocked {
            self.amplification_blocked = blocked;
            self.recovery.set_anti_amplification_blocked(blocked);
        }
        // Path frames elsewhere, alone in their datagrams; none while closing (§10.2.1).
        let elsewhere = if matches!(self.state, State::Closing { .. })
            || (self.old_path_challenge.is_none() && self.path_responses.is_empty())
        {
            None
        } else {
            self.send_old_path_challenge(now, buf)
                .or_else(|| self.send_path_response_elsewhere(now, buf))
        };
        if let Some((dst, len)) = elsewhere {
            cold_path();
            return Some(Transmit {
                dst,
                len,
                segment_size: None,
                ecn: 0,
                more: true,
            });
        }
        if let Some(len) = self.send_pmtu_probe(now, buf) {
            cold_path();
            return Some(Transmit {
                dst: self.remote,
                len,
                segment_size: None,
                ecn: 0,
                more: true,
            });
        }
        // RFC 9000 §13.4.2: ECT(0) on this path while it is tested or validated. Only once
        // the handshake is confirmed, so only 1-RTT packets carry it (`recovery::ecn`).
        self.ect0_now = self.handshake_confirmed && self.recovery.ecn_marking(now);
        let mut total = 0;
        let mut segments = 0;
        let mut drained = false;
        while segments < max_segments.max(1) && buf.len() - total >= mtu {
            let mut cap = mtu;
            if !self.address_validated {
                cold_path();
                // RFC 9000 §8.1: at most three times what we received until the address is validated.
                let allowed = (3 * self.amplification_received)
                    .saturating_sub(self.amplification_sent) as usize;
                if allowed < room_floor {
                    break;
                }
                cap = cap.min(allowed);
            }
            self.unsent_despite_room = false;
            let n = self.build_datagram(now, &mut buf[total..total + cap]);
            if n == 0 {
                break;
            }
            self.amplification_sent += n as u64;
            self.stats.bytes_sent += n as u64;
            total += n;
            segments += 1;
            if matches!(self.state, State::Closing { .. }) {
                break;
            }
            if n + MIN_PACKET_ROOM <= cap && !self.probes_pending() && !self.unsent_despite_room {
                // Room for another packet was left unused: the packets took everything
                // they could (frames fill a packet to within a frame header, and congestion
                // and pacing stop a packet rather than shorten it), so asking again now
                // would build nothing. PTO probes go out one datagram each; frames that go
                // whole (DATAGRAM) and did not fit wait for the next packet.
                drained = true;
                if self.state == State::Established && !self.send_blocked {
                    // What that empty pass would have said (RFC 9002 §7.8): nothing more
                    // to send, so ACKs must not grow the window. Not so if the window or
                    // the pacer held data back and only an ACK went out.
                    self.recovery.set_app_limited(true);
                }
                break;
            }
            if n < mtu {
                break;
            }
            if self.ect0_now && !self.recovery.ecn_may_mark_more() {
                // The path's ECN test has marked its packets: the rest go unmarked, in
                // the next call's batch.
                cold_path();
                break;
            }
        }
        if total == 0 {
            return None;
        }
        Some(Transmit {
            dst: self.remote,
            len: total,
            segment_size: (segments > 1).then_some(mtu),
            ecn: if self.ect0_now {
                ack_tracker::ECN_ECT0
            } else {
                0
            },
            more: !drained,
        })
    }

    fn probes_pending(&self) -> bool {
        self.spaces.iter().any(|s| s.probes > 0)
    }

    fn build_datagram(&mut self, now: Instant, buf: &mut [u8]) -> usize {
        let mut built: [Option<Built>; 3] = [None, None, None];
        let mut len = 0;
        let mut count = 0;
        let mut needs_padding = false;
        // After the handshake only 1-RTT is left: skip the spaces' checks.
        let first = if self.spaces[Epoch::Initial.index()].discarded
            && self.spaces[Epoch::Handshake.index()].discarded
        {
            Epoch::Data.index()
        } else {
            0
        };
        for &epoch in &Epoch::ALL[first..] {
            if buf.len() - len < MIN_PACKET_ROOM {
                break;
            }
            if let Some(b) = self.build_packet(now, epoch, &mut buf[len..], len) {
                // RFC 9000 §14.1: datagrams with a client Initial, or a server's ack-eliciting Initial, are ≥ 1200 bytes.
                if epoch == Epoch::Initial && (self.side == Side::Client || b.ack_eliciting) {
                    needs_padding = true;
                }
                len = b.start + b.header_len + b.payload_len + TAG_LEN;
                built[count] = Some(b);
                count += 1;
            }
        }
        if count == 0 {
            return 0;
        }
        let last = built[count - 1].as_mut().expect("count > 0");
        let len = self.pad_datagram(buf, last, needs_padding);
        let mut sent_handshake = false;
        for b in built.iter_mut().take(count) {
            let b = b.take().expect("built");
            sent_handshake |= b.epoch == Epoch::Handshake;
            self.seal_and_record(now, buf, b);
        }
        if self.side == Side::Client
            && sent_handshake
            && !self.spaces[Epoch::Initial.index()].discarded
        {
            cold_path();
            // RFC 9001 §4.9.1: the client drops Initial keys when it first sends a Handshake packet.
            self.discard_space(Epoch::Initial, now);
            self.unsent_despite_room = true;
        }
        if matches!(self.state, State::Closing { .. }) {
            self.close_pending = false;
        }
        len
    }

    /// Pads the datagram ending with `last` to 1200 bytes if `needs_padding` or path frames
    /// ride in it; returns the datagram's length. Path frames ride in datagrams of at least
    /// 1200 bytes where the amplification limit allows (RFC 9000 §8.2.1, §8.2.2); the
    /// caller already capped `buf` by it.
    fn pad_datagram(&mut self, buf: &mut [u8], last: &mut Built, needs_padding: bool) -> usize {
        let len = last.start + last.header_len + last.payload_len + TAG_LEN;
        let needs_padding = needs_padding | std::mem::take(&mut self.pad_for_path);
        if !needs_padding || len >= MIN_INITIAL_SIZE || buf.len() < MIN_INITIAL_SIZE {
            return len;
        }
        cold_path();
        // Extend the last packet with PADDING frames (zeros) so the datagram reaches 1200.
        let extra = MIN_INITIAL_SIZE - len;
        let pad_from = last.start + last.header_len + last.payload_len;
        buf[pad_from..pad_from + extra].fill(0);
        last.payload_len += extra;
        last.padded = true;
        MIN_INITIAL_SIZE
    }

    /// A DPLPMTUD probe (RFC 9000 §14.4) alone in its datagram, when one is due and the
    /// congestion window has room for it: a 1-RTT packet of PING and PADDING exactly as
    /// large as the size under test. Returns the datagram's length.
    #[inline(never)]
    fn send_pmtu_probe(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        if self.state != State::Established || !self.handshake_confirmed {
            return None;
        }
        // On an unvalidated path the amplification limit and the PATH_CHALLENGE come first.
        if !self.address_validated || self.one_rtt.is_none() {
            return None;
        }
        let size = self.pmtud.probe_size(now)?;
        if size > buf.len() {
            // Our own buffers can't carry it, whatever the path does.
            self.pmtud.cap_ceiling(now, buf.len());
            self.apply_path_mtu();
            return None;
        }
        if self.recovery.send_window() < size as u64 {
            return None;
        }
        let record = FrameRecord::PmtuProbe {
            generation: self.pmtud.generation(),
        };
        let dcid = self.cids.active_remote();
        let len =
            self.send_lone_packet(now, &mut buf[..size], &[Frame::Ping], record, true, dcid)?;
        self.pmtud.on_probe_sent();
        tracing::trace!(size, "PMTU probe");
        Some(len)
    }

    /// The PATH_CHALLENGE for the path the peer apparently left (RFC 9000 §9.3.3), alone
    /// and padded to 1200 bytes (that path was validated). Not retransmitted.
    #[inline(never)]
    fn send_old_path_challenge(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Option<(SocketAddr, usize)> {
        let (data, to, dcid) = self.old_path_challenge.take()?;
        if self.one_rtt.is_none() || to == self.remote {
            return None;
        }
        let len = MIN_INITIAL_SIZE.min(buf.len());
        let frame = Frame::PathChallenge(data);
        let len = self.send_lone_packet(
            now,
            &mut buf[..len],
            &[frame],
            FrameRecord::Ping,
            false,
            dcid,
        )?;
        tracing::debug!(%to, "PATH_CHALLENGE on the path the peer left");
        Some((to, len))
    }

    /// A PATH_RESPONSE for a challenge that arrived from another address than the peer's
    /// current one (a path it probes): sent back there alone (RFC 9000 §8.2.2), padded to
    /// 1200 bytes as far as three times the challenge's datagram allows.
    #[inline(never)]
    fn send_path_response_elsewhere(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Option<(SocketAddr, usize)> {
        let r = *self.path_responses.front()?;
        if r.to == self.remote || self.one_rtt.is_none() {
            return None;
        }
        self.path_responses.pop_front();
        // RFC 9000 §9.5: a probe under another of our CIDs is answered under another of the
        // peer's (the same one for each probed address); without a spare it goes unanswered.
        // A peer with zero-length CIDs has none to give, and an empty one links nothing.
        let active = self.cids.active_remote();
        let dcid = if !r.new_dcid || active.is_empty() {
            active
        } else {
            let Some(cid) = self.remote_cid_for_path(r.to) else {
                tracing::debug!(to = %r.to, "no spare connection ID to answer a probe");
                return None;
            };
            cid
        };
        // The other challenges of the same datagram are answered in the same packet, within
        // the one budget of three times that datagram (RFC 9000 §8).
        let mut data = [r.data; MAX_PATH_RESPONSES];
        let mut count = 1;
        while let Some(next) = self.path_responses.front() {
            if count == MAX_PATH_RESPONSES
                || next.received != 0
                || next.to != r.to
                || next.new_dcid != r.new_dcid
            {
                break;
            }
            data[count] = next.data;
            count += 1;
            self.path_responses.pop_front();
        }
        let len = MIN_INITIAL_SIZE
            .min(3 * r.received)
            .max(MIN_PACKET_ROOM)
            .min(buf.len());
        // Never retransmitted (RFC 9000 §13.3), but ack-eliciting.
        let frames = data.map(Frame::PathResponse);
        let len = self.send_lone_packet(
            now,
            &mut buf[..len],
            &frames[..count],
            FrameRecord::Ping,
            false,
            dcid,
        )?;
        self.stats.path_responses_sent += count as u64;
        tracing::debug!(to = %r.to, len, count, "PATH_RESPONSE on the challenges' path");
        Some((r.to, len))
    }

    /// Seals one 1-RTT packet filling `buf` exactly: `frames`, then PADDING. Returns its
    /// length.
    fn send_lone_packet(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        frames_out: &[Frame<'_>],
        record: FrameRecord,
        mtu_probe: bool,
        dcid: ConnectionId,
    ) -> Option<usize> {
        let size = buf.len();
        let (pn, pn_offset, pn_len, header_len, _) = self.write_header(Epoch::Data, buf, dcid)?;
        let payload_len = size.checked_sub(header_len + TAG_LEN)?;
        // Callers pass at least MIN_PACKET_ROOM bytes: room for the header-protection sample.
        let mut w = Writer::new(&mut buf[header_len..header_len + payload_len]);
        for frame in frames_out {
            frame.encode(&mut w).ok()?;
        }
        let frame_len = w.len();
        buf[header_len + frame_len..header_len + payload_len].fill(0); // PADDING
        let mut frames = self.sent_pool.take(Epoch::Data);
        frames.records.push(record);
        frames.key_generation = self.one_rtt.as_ref().map_or(0, |k| k.generation());
        let taken = self.spaces[Epoch::Data.index()].take_pn();
        debug_assert_eq!(taken, pn);
        self.seal_and_record(
            now,
            buf,
            Built {
                epoch: Epoch::Data,
                start: 0,
                pn,
                pn_offset,
                pn_len,
                header_len,
                payload_len,
                layout: None,
                ack_eliciting: true,
                padded: true,
                mtu_probe,
                frames,
            },
        );
        self.stats.bytes_sent += size as u64;
        Some(size)
    }

    fn seal_and_record(&mut self, now: Instant, buf: &mut [u8], mut b: Built) {
        let packet_len = b.header_len + b.payload_len + TAG_LEN;
        b.frames.size = packet_len.min(usize::from(u16::MAX)) as u16;
        let packet = &mut buf[b.start..b.start + packet_len];
        if let Some(layout) = &b.layout {
            cold_path();
            // Length covers packet number, payload and tag; the 2-byte field always fits a datagram.
            header::finish_long(packet, layout, packet_len).expect("length field reserved");
        }
        let (packet_key, header_key) = match (b.epoch, &self.one_rtt) {
            (Epoch::Data, Some(keys)) => (keys.local_packet(), keys.local_header()),
            (Epoch::Data, None) => {
                cold_path();
                self.stats.zero_rtt_packets_sent += 1;
                let keys = self.zero_rtt.as_deref().expect("built with 0-RTT keys");
                (&keys.packet, &keys.header)
            }
            (e, _) => {
                let keys = &self.spaces[e.index()]
                    .keys
                    .as_ref()
                    .expect("built with keys")
                    .local;
                (&keys.packet, &keys.header)
            }
        };
        let sealed = packet_key.seal_in_place(b.pn, packet, b.header_len);
        debug_assert!(
            sealed.is_ok(),
            "sealing into a correctly sized buffer cannot fail"
        );
        let sample = sample(packet, b.pn_offset).expect("payload padded for the sample");
        let mask = header_key.mask(&sample);
        apply_mask(packet, b.pn_offset, b.pn_len, &mask);

        self.stats.packets_sent += 1;
        if b.epoch == Epoch::Data {
            self.packets_in_phase += 1;
        }
        if b.ack_eliciting && self.idle_restart_on_send {
            // RFC 9000 §10.1: restart the idle timer on the first ack-eliciting packet after receiving.
            self.idle_deadline = self.idle_deadline_from(now);
            self.idle_restart_on_send = false;
        }
        self.recovery.on_packet_sent(
            now,
            b.epoch,
            SentPacket {
                pn: b.pn,
                time_sent: now,
                size: packet_len as u16,
                ack_eliciting: b.ack_eliciting,
                in_flight: b.ack_eliciting || b.padded,
                mtu_probe: b.mtu_probe,
                ecn: self.ect0_now,
                data: b.frames,
            },
        );
        if let Some(interval) = self.config.key_update_interval {
            if self.packets_in_phase >= interval {
                cold_path();
                self.force_key_update();
            }
        }
        if b.epoch == Epoch::Data {
            self.check_confidentiality_limit(now);
        }
        self.check_tracked_packets(now, b.epoch);
    }

    fn check_tracked_packets(&mut self, now: Instant, epoch: Epoch) {
        let limit = match epoch {
            Epoch::Data => MAX_TRACKED_PACKETS,
            _ => MAX_TRACKED_HANDSHAKE_PACKETS,
        };
        if self.recovery.tracked_span(epoch) > limit
            && !matches!(self.state, State::Closing { .. } | State::Draining { .. })
        {
            cold_path();
            self.close_with_error(
                now,
                TransportError::new(
                    Code::PROTOCOL_VIOLATION,
                    "peer left too many packets unacknowledged",
                ),
            );
        }
    }

    /// The 1-RTT key's confidentiality limit (the configured one if lower) and whether a key
    /// update may start now; `None` before 1-RTT keys.
    #[inline]
    fn key_use(&self) -> Option<(u64, bool)> {
        let keys = self.one_rtt.as_ref()?;
        let limit = aead_limits::capped(
            keys.local_packet().confidentiality_limit(),
            self.config.aead_confidentiality_limit,
        );
        Some((limit, self.handshake_confirmed && keys.update_allowed()))
    }

    /// The 1-RTT key is due for an update that cannot start yet (`aead_limits::must_wait`).
    #[inline]
    fn awaiting_key_update(&self) -> bool {
        self.key_use().is_some_and(|(limit, update_allowed)| {
            aead_limits::must_wait(self.packets_in_phase, limit, update_allowed)
        })
    }

    /// RFC 9001 §6.6: update the 1-RTT keys well before the current one has sealed as many
    /// packets as the suite allows, and close if no update can happen in time.
    fn check_confidentiality_limit(&mut self, now: Instant) {
        let Some((limit, update_allowed)) = self.key_use() else {
            return;
        };
        match aead_limits::after_seal(self.packets_in_phase, limit, update_allowed) {
            SealLimit::Continue => {}
            SealLimit::Update => {
                cold_path();
                tracing::debug!(
                    sealed = self.packets_in_phase,
                    limit,
                    "AEAD limit: key update"
                );
                self.force_key_update();
            }
            SealLimit::Close => {
                cold_path();
                if !matches!(self.state, State::Closing { .. } | State::Draining { .. }) {
                    self.close_with_error(
                        now,
                        TransportError::new(
                            Code::AEAD_LIMIT_REACHED,
                            "AEAD confidentiality limit reached without a key update",
                        ),
                    );
                }
            }
        }
    }

    /// Writes one packet of `epoch` at the start of `buf` (which sits at `start` in the datagram).
    fn build_packet(
        &mut self,
        now: Instant,
        epoch: Epoch,
        buf: &mut [u8],
        start: usize,
    ) -> Option<Built> {
        let idx = epoch.index();
        if self.spaces[idx].discarded {
            return None;
        }
        // A client without 1-RTT keys sends its Data-space frames in 0-RTT packets.
        let has_keys = match epoch {
            Epoch::Data => self.one_rtt.is_some() || self.sends_zero_rtt(),
            _ => self.spaces[idx].keys.is_some(),
        };
        if !has_keys {
            return None;
        }
        let closing = matches!(self.state, State::Closing { .. });
        if closing {
            cold_path();
            return self.build_close_packet(epoch, buf, start);
        }

        let space = &self.spaces[idx];
        // 0-RTT packets carry no ACK (RFC 9000 §17.2.3); a client has nothing to
        // acknowledge in the Data space before it has 1-RTT keys anyway.
        let ack_pending = space.ack.ack_pending() && !self.no_acks;
        // Initial and Handshake ACKs fall due at once, but only for ack-eliciting packets
        // (the tracker's deadline): an ACK-only packet never answers one (RFC 9000
        // §13.2.1), or two endpoints would trade ACKs until the keys are discarded.
        let ack_due = ack_pending && space.ack.ack_due(now);
        let probing = space.probes > 0;
        let mut want_eliciting =
            space.crypto.has_pending() || probing || self.has_raw_frames(epoch);
        if epoch == Epoch::Data {
            want_eliciting |= self.handshake_done_pending
                || self.new_token_pending
                || self.ping_pending
                || !self.path_responses.is_empty()
                || self.path_challenge_pending
                || (self.app_data_open()
                    && (self.cids.pending_announcements()
                        || self.streams.has_pending()
                        || self.has_datagrams_to_send()));
        }
        if epoch == Epoch::Data && self.state == State::Established {
            // RFC 9002 §7.8: with nothing to send the window must not grow on ACKs.
            self.recovery.set_app_limited(!want_eliciting);
            // RFC 9000 §13.2.4: a pure receiver occasionally elicits an ACK so its ACK-only
            // packets (and our record of them) get acknowledged.
            if ack_due && self.recovery.needs_ack_eliciting(epoch) {
                self.ping_pending = true;
                want_eliciting = true;
            }
        }
        let mut send_eliciting = want_eliciting;
        // Initial and Handshake packets are not held back by the congestion window (the
        // server's 3× limit still applies). Data-space packets that filled it may have no
        // way to be declared lost before the handshake is confirmed (0-RTT or 1-RTT packets
        // whose ACKs went missing; RFC 9002 §6.2.1 arms no Data PTO until then), and a
        // Finished waiting behind them would never go out: the deadlock ngtcp2 (#663) and
        // MsQuic (#5899) met too.
        if send_eliciting && !probing && epoch == Epoch::Data {
            if self.recovery.send_window() < buf.len().min(self.max_datagram_size) as u64
                || self.recovery.tracked_span(epoch) >= TRACKED_SEND_LIMIT
                || self.awaiting_key_update()
            {
                send_eliciting = false;
            } else if let Some(t) = self.recovery.pacing_next_send(now, buf.len() as u64) {
                if t > now {
                    self.pacing_deadline = Some(t);
                    send_eliciting = false;
                }
            }
        }
        if epoch == Epoch::Data {
            self.send_blocked = want_eliciting && !send_eliciting;
        }
        // A server validating a peer's new address is not held back by the window (nor
        // by pacing): after a NAT rebinding it may be full of packets lost on the old
        // port, and only the validated path gets them declared lost quickly. The packet
        // carries control frames alone, so it costs the window a few dozen bytes; it is
        // bounded by the new address's 3× budget, and by the sent record, which a peer
        // that never acknowledges must not grow. Once validated, path frames queue like
        // any others (RFC 9002 §7), so a peer's challenges cannot buy packets past it.
        let path_frames_only = epoch == Epoch::Data
            && self.send_blocked
            && !probing
            && !self.address_validated
            && self.path_challenge_pending
            && self.recovery.tracked_span(epoch) < TRACKED_SEND_LIMIT
            && !self.awaiting_key_update();
        if path_frames_only {
            cold_path();
            send_eliciting = true;
        }
        // Once we send anything in Data, piggyback a pending ACK even if not yet due.
        let send_ack = ack_due || (ack_pending && send_eliciting);
        if !send_eliciting && !send_ack {
            return None;
        }

        let dcid = self.cids.active_remote();
        let (pn, pn_offset, pn_len, header_len, layout) = self.write_header(epoch, buf, dcid)?;
        let end = buf.len() - TAG_LEN;
        let mut pos = header_len;
        let mut frames = self.sent_pool.take(epoch);
        let mut ack_eliciting = false;

        if send_ack {
            let exponent = if epoch == Epoch::Data {
                self.config.ack_delay_exponent
            } else {
                3
            };
            let space = &mut self.spaces[idx];
            let delay = (space.ack.ack_delay(now).as_micros() as u64) >> exponent;
            let ecn = space
                .ack
                .ecn_counts()
                .map(|(ect0, ect1, ce)| crate::wire::frame::EcnCounts { ect0, ect1, ce });
            let largest = space.ack.largest();
            let mut w = Writer::new(&mut buf[pos..end]);
            if let (Some(largest), Ok(())) =
                (largest, encode_ack(&mut w, delay, space.ack.ranges(), ecn))
            {
                pos += w.len();
                frames.records.push(FrameRecord::Ack { largest });
                space.ack.on_ack_sent();
                if epoch == Epoch::Data {
                    // Under the current keys: a peer's key update is now acknowledged.
                    self.peer_update_unacked = false;
                }
            }
        }

        if send_eliciting {
            if epoch == Epoch::Data {
                pos = self.write_data_control_frames(&mut buf[..end], pos, &mut frames);
            }
            // A path-validation packet past the window carries the control frames alone.
            if !path_frames_only {
                // Datagrams before stream data: they are the latency-sensitive kind. But
                // credit and resets first, or a full datagram queue could starve them.
                if epoch == Epoch::Data && self.app_data_open() && self.has_datagrams_to_send() {
                    let n = self.streams.write_control(&mut buf[pos..end], 0, &mut |r| {
                        frames.records.push(FrameRecord::Stream(r))
                    });
                    pos += n;
                    pos = self.write_datagrams(&mut buf[..end], pos, &mut frames);
                }
                pos = self.write_raw_frames(epoch, &mut buf[..end], pos, &mut frames);
                let space = &mut self.spaces[idx];
                if end > pos && space.crypto.has_pending() {
                    let n = space
                        .crypto
                        .write_frame(&mut buf[pos..end], &mut |offset, len| {
                            frames.records.push(FrameRecord::Crypto { offset, len })
                        });
                    pos += n;
                }
                if epoch == Epoch::Data && self.app_data_open() && end > pos {
                    let n = self.streams.write_frames(&mut buf[pos..end], &mut |r| {
                        frames.records.push(FrameRecord::Stream(r))
                    });
                    pos += n;
                }
            }
            ack_eliciting = frames
                .records
                .iter()
                .any(|r| !matches!(r, FrameRecord::Ack { .. }));
            if !ack_eliciting && probing && end > pos {
                buf[pos] = 0x01; // PING
                pos += 1;
                frames.records.push(FrameRecord::Ping);
                ack_eliciting = true;
            }
        }
        if pos == header_len {
            // Nothing fit after all: give back the packet number by not taking it.
            self.sent_pool.give(frames);
            return None;
        }
        let space = &mut self.spaces[idx];
        let taken = space.take_pn();
        debug_assert_eq!(taken, pn);
        if ack_eliciting && space.probes > 0 {
            space.probes -= 1;
        }
        let min_packet = self.min_packet_len(&layout);
        let payload_len = pad_payload(buf, header_len, pos - header_len, pn_len, min_packet);
        if epoch == Epoch::Data {
            // 0-RTT packets belong to no key phase: their ACKs do not let a key update
            // start (RFC 9001 §6.1 wants an ACK of a packet sent with the current keys).
            frames.key_generation = self.one_rtt.as_ref().map_or(u64::MAX, |k| k.generation());
        }
        Some(Built {
            epoch,
            start,
            pn,
            pn_offset,
            pn_len,
            header_len,
            payload_len,
            layout,
            ack_eliciting,
            padded: false,
            mtu_probe: false,
            frames,
        })
    }

    /// Returns (pn, pn_offset, pn_len, header_len, long-header layout).
    fn write_header(
        &mut self,
        epoch: Epoch,
        buf: &mut [u8],
        dcid: ConnectionId,
    ) -> Option<(u64, usize, usize, usize, Option<LongHeaderLayout>)> {
        let pn = self.spaces[epoch.index()].next_pn;
        let pn_len = packet_number::encoded_len(pn, self.recovery.largest_acked(epoch));
        let mut w = Writer::new(buf);
        match (epoch, &self.one_rtt) {
            (Epoch::Data, Some(keys)) => {
                let phase = keys.key_phase();
                let pn_offset =
                    header::write_short(&mut w, false, phase, &dcid, pn, pn_len).ok()?;
                Some((pn, pn_offset, pn_len, w.len(), None))
            }
            _ => {
                let ty = match epoch {
                    Epoch::Initial => LongType::Initial,
                    Epoch::Handshake => LongType::Handshake,
                    Epoch::Data => LongType::ZeroRtt,
                };
                let token: &[u8] = if self.side == Side::Client && epoch == Epoch::Initial {
                    &self.initial_token
                } else {
                    &[]
                };
                let scid = self.handshake_scid;
                // RFC 9369 §4: 0-RTT stays in the version of the first flight, whose keys
                // sealed it, even once the server has moved the connection to another.
                let version = if ty == LongType::ZeroRtt {
                    self.first_flight_version
                } else {
                    self.version
                };
                let layout =
                    header::write_long(&mut w, ty, version, &dcid, &scid, token, pn, pn_len)
                        .ok()?;
                let pn_offset = layout.pn_offset;
                Some((pn, pn_offset, pn_len, w.len(), Some(layout)))
            }
        }
    }

    /// The least a packet of this layout may be: a short header one carries at least 22
    /// bytes more than our CIDs (RFC 9000 §10.3), so a peer's stateless reset in answer,
    /// one byte shorter, is still long enough to be told from a packet of ours (and to
    /// pass the XDP program's short-header check). Long headers are larger anyway.
    #[inline]
    fn min_packet_len(&self, layout: &Option<header::LongHeaderLayout>) -> usize {
        if layout.is_some() {
            0
        } else {
            self.handshake_scid.len() + 22
        }
    }

    /// HANDSHAKE_DONE, PATH_RESPONSE, CID management and PING in a 1-RTT packet.
    fn write_data_control_frames(
        &mut self,
        buf: &mut [u8],
        mut pos: usize,
        frames: &mut SentFrames,
    ) -> usize {
        let put = |buf: &mut [u8], pos: &mut usize, frame: &Frame<'_>| -> bool {
            let mut w = Writer::new(&mut buf[*pos..]);
            if frame.encode(&mut w).is_ok() {
                *pos += w.len();
                true
            } else {
                false
            }
        };
        if self.handshake_done_pending && put(buf, &mut pos, &Frame::HandshakeDone) {
            cold_path();
            self.handshake_done_pending = false;
            frames.records.push(FrameRecord::HandshakeDone);
        }
        if self.new_token_pending {
            cold_path();
            if let Some(token) = &self.new_token {
                if put(buf, &mut pos, &Frame::NewToken { token }) {
                    self.new_token_pending = false;
                    frames.records.push(FrameRecord::NewToken);
                }
            }
        }
        // Responses for another address go out alone (`send_path_response_elsewhere`).
        while let Some(&PathResponse { data, to, .. }) = self.path_responses.front() {
            cold_path();
            if to != self.remote || !put(buf, &mut pos, &Frame::PathResponse(data)) {
                break;
            }
            self.path_responses.pop_front();
            self.stats.path_responses_sent += 1;
            // PATH_RESPONSE is never retransmitted (RFC 9000 §13.3), but it is ack-eliciting.
            frames.records.push(FrameRecord::Ping);
            self.pad_for_path = true;
        }
        if self.path_challenge_pending {
            cold_path();
            if let Some(data) = self.path_challenge {
                if put(buf, &mut pos, &Frame::PathChallenge(data)) {
                    self.path_challenge_pending = false;
                    frames.records.push(FrameRecord::PathChallenge { data });
                    self.pad_for_path = true;
                }
            }
        }
        if self.state == State::Established {
            while let Some(seq) = self.cids.retire_queue.front().copied() {
                cold_path();
                if !put(buf, &mut pos, &Frame::RetireConnectionId { seq }) {
                    break;
                }
                self.cids.retire_queue.pop_front();
                frames.records.push(FrameRecord::RetireConnectionId { seq });
            }
            let mut announced = None;
            for l in self.cids.local.iter_mut().filter(|l| l.announce) {
                cold_path();
                let f = Frame::NewConnectionId {
                    seq: l.seq,
                    retire_prior_to: 0,
                    cid: l.cid,
                    reset_token: l.reset_token,
                };
                if !put(buf, &mut pos, &f) {
                    break;
                }
                l.announce = false;
                announced = announced.max(Some(l.seq));
                frames
                    .records
                    .push(FrameRecord::NewConnectionId { seq: l.seq });
            }
            if let Some(seq) = announced {
                cold_path();
                self.cids.on_announced(seq);
            }
        }
        if self.ping_pending && put(buf, &mut pos, &Frame::Ping) {
            cold_path();
            self.ping_pending = false;
            frames.records.push(FrameRecord::Ping);
        }
        pos
    }

    /// While closing, a packet holding only CONNECTION_CLOSE (RFC 9000 §10.2.1, §10.2.3).
    #[inline(never)]
    fn build_close_packet(&mut self, epoch: Epoch, buf: &mut [u8], start: usize) -> Option<Built> {
        if !self.close_pending {
            return None;
        }
        // Before the handshake is confirmed the peer may lack 1-RTT keys: send in every space we have;
        // afterwards only in 1-RTT.
        if self.handshake_confirmed && epoch != Epoch::Data {
            return None;
        }
        let close = self.close.clone()?;
        let dcid = self.cids.active_remote();
        let (pn, pn_offset, pn_len, header_len, layout) = self.write_header(epoch, buf, dcid)?;
        let end = buf.len() - TAG_LEN;
        let frame = if close.app && epoch != Epoch::Data {
            // An application close must not leak into Initial/Handshake packets (§10.2.3).
            Frame::ConnectionClose {
                error_code: Code::APPLICATION_ERROR.0,
                frame_type: Some(0),
                reason: &[],
            }
        } else if close.app {
            Frame::ConnectionClose {
                error_code: close.code,
                frame_type: None,
                reason: close.reason.as_bytes(),
            }
        } else {
            Frame::ConnectionClose {
                error_code: close.code,
                frame_type: close.frame_type.or(Some(0)),
                reason: close.reason.as_bytes(),
            }
        };
        let mut w = Writer::new(&mut buf[header_len..end]);
        frame.encode(&mut w).ok()?;
        let written = w.len();
        let min_packet = self.min_packet_len(&layout);
        let payload_len = pad_payload(buf, header_len, written, pn_len, min_packet);
        let taken = self.spaces[epoch.index()].take_pn();
        debug_assert_eq!(taken, pn);
        let frames = self.sent_pool.take(epoch);
        Some(Built {
            epoch,
            start,
            pn,
            pn_offset,
            pn_len,
            header_len,
            payload_len,
            layout,
            ack_eliciting: false,
            padded: false,
            mtu_probe: false,
            frames,
        })
    }
}

/// Pads a short payload with PADDING (zeros): so the header-protection sample, 4 bytes
/// after the packet number, fits (RFC 9001 §5.4.2), and the whole packet to `min_packet`
/// bytes where `buf` allows. Returns the payload length.
fn pad_payload(
    buf: &mut [u8],
    header_len: usize,
    payload_len: usize,
    pn_len: usize,
    min_packet: usize,
) -> usize {
    let room = buf.len().saturating_sub(header_len + TAG_LEN);
    let min_payload = min_packet
        .saturating_sub(header_len + TAG_LEN)
        .min(room)
        .max(4usize.saturating_sub(pn_len));
    if payload_len < min_payload {
        buf[header_len + payload_len..header_len + min_payload].fill(0);
        return min_payload;
    }
    payload_len
}
