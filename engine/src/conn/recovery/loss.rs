//! Loss detection and the PTO across the three packet number spaces (RFC 9002 §6,
//! Appendix A), feeding the congestion controller and the pacer.

use super::cc::{Congestion, Controller};
use super::ecn::{Ecn, EcnCounts};
use super::pacing::{Pacer, PacerInput};
use super::rtt::{Pto, RttEstimator};
use super::sent::{SentPacket, SentSpace, Slot};
use super::{
    AckResult, ProbeRequest, RecoveryConfig, RecoveryStats, UnsentPacketAcked,
    DEFAULT_MAX_ACK_DELAY,
};
use crate::{Epoch, Side};
use std::cell::Cell;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};
use tracing::{debug, trace};

use super::undo::{Undo, UndoState, TRACKED_LOSSES};

/// RFC 9002 §6.1.1: kPacketThreshold, where every connection starts.
const PACKET_THRESHOLD: u64 = 3;
/// The most the packet threshold grows to after spurious losses (§6.1: "increase the packet
/// or time reordering threshold"). Above it the time threshold alone finds losses, as TCP's
/// RACK does (RFC 8985).
const MAX_PACKET_THRESHOLD: u64 = 32;
/// Window cuts, none of them proven spurious, after which a raised packet threshold goes
/// back to 3: the reordering has stopped (RFC 8985 §6.2 keeps its reordering window for 16
/// recoveries the same way).
const THRESHOLD_PERSISTENCE: u8 = 16;
/// Outstanding ACK-only packets after which `needs_ack_eliciting` asks for a PING.
const ACK_ONLY_BEFORE_PING: u64 = 16;

/// Sending-side recovery state of one connection. `T` is what the connection gets back
/// for each acknowledged, lost or discarded packet.
#[derive(Debug)]
pub struct Recovery<T> {
    /// What a new path starts from (RFC 9000 §9.4).
    config: RecoveryConfig,
    /// First 1-RTT packet number sent on the current path: acknowledgments and losses of
    /// older ones (the old path's) feed neither congestion control nor RTT (RFC 9000 §9.4).
    path_first_pn: u64,
    side: Side,
    pacing: bool,
    max_datagram_size: u64,
    spaces: [SentSpace<T>; 3],
    /// The RTT estimate, max_ack_delay and PTO backoff, with the periods they give.
    pto: Pto,
    cc: Congestion,
    pacer: Pacer,
    /// Bytes in flight on the current path: what the congestion window limits.
    bytes_in_flight: u64,
    /// Bytes still in flight from before the last path change: tracked for loss and
    /// acknowledgement, but they do not count against the new path's window (RFC 9000
    /// §9.4, RFC 9002 §9.4).
    old_path_bytes_in_flight: u64,
    handshake_confirmed: bool,
    has_handshake_keys: bool,
    peer_validated_address: bool,
    amplification_blocked: bool,
    app_limited: bool,
    first_rtt_sample: Option<Instant>,
    /// The `now` of the latest event, for re-arming the timer from setters.
    last_now: Option<Instant>,
    /// The loss detection timer as last computed.
    timer: Cell<Option<Instant>>,
    /// Set (to the `now` to compute with) when the timer must be recomputed before it is
    /// next read: a burst of sends re-arms it once, not once per packet.
    timer_stale: Cell<Option<Instant>>,
    stats: RecoveryStats,
    /// The latest congestion event, while later ACKs may still prove it spurious
    /// (`undo.rs`); allocated at the first loss.
    undo: Option<Box<UndoState<Congestion>>>,
    /// Packets that must be acknowledged after one before it counts as lost: 3, raised to
    /// the reordering seen when a packet declared lost is acknowledged after all. Past 3, a
    /// real loss waits for more later packets or for the time threshold, a fraction of an
    /// RTT at most.
    packet_threshold: u64,
    /// Cuts left before a raised `packet_threshold` returns to 3; each spurious loss seen
    /// starts the count again.
    threshold_persistence: u8,
    /// ECN marking and validation on the current path.
    ecn: Ecn,
}

/// What a loss detection pass found.
#[derive(Default)]
struct LossOutcome {
    /// Send time of the newest lost in-flight packet.
    newest_lost_in_flight: Option<Instant>,
    persistent_congestion: bool,
    /// 1-RTT packets lost that count as a congestion signal.
    signalling_losses: usize,
}

/// RFC 9002 §7.2: `packets` datagrams of the maximum size, but no more than `packets`
/// datagrams of 1472 bytes (14,720 bytes for the default ten) unless that is under two
/// datagrams: a path that allows jumbo datagrams gets no larger first burst.
pub(super) fn initial_window(packets: usize, mds: u64) -> u64 {
    let packets = packets as u64;
    packets
        .saturating_mul(mds)
        .min(packets.saturating_mul(1472).max(2 * mds))
}

impl<T> Recovery<T> {
    pub fn new(config: RecoveryConfig) -> Self {
        let mds = config.max_datagram_size as u64;
        let initial_window = initial_window(config.initial_window_packets, mds);
        Self {
            side: config.side,
            pacing: config.pacing,
            max_datagram_size: mds,
            spaces: [SentSpace::new(), SentSpace::new(), SentSpace::new()],
            pto: Pto::new(config.initial_rtt, DEFAULT_MAX_ACK_DELAY),
            cc: Congestion::new(config.congestion, mds, initial_window),
            pacer: Pacer::new(),
            bytes_in_flight: 0,
            old_path_bytes_in_flight: 0,
            handshake_confirmed: false,
            has_handshake_keys: false,
            peer_validated_address: false,
            amplification_blocked: false,
            app_limited: false,
            first_rtt_sample: None,
            last_now: None,
            timer: Cell::new(None),
            timer_stale: Cell::new(None),
            stats: RecoveryStats::default(),
            undo: None,
            packet_threshold: PACKET_THRESHOLD,
            threshold_persistence: 0,
            ecn: Ecn::new(config.ecn),
            config,
            path_first_pn: 0,
        }
    }

    /// RFC 9002 §A.5. Packet numbers of a space must increase; a reused number is a bug in
    /// the caller and the packet is dropped with an error log.
    pub fn on_packet_sent(&mut self, now: Instant, epoch: Epoch, packet: SentPacket<T>) {
        self.last_now = Some(now);
        if epoch == Epoch::Handshake {
            self.has_handshake_keys = true;
        }
        let (in_flight, size) = (packet.in_flight, u64::from(packet.size));
        if packet.ecn && epoch == Epoch::Data {
            self.ecn.on_marked_sent(now);
        }
        if let Err(p) = self.spaces[epoch.index()].insert(packet) {
            tracing::error!(pn = p.pn, ?epoch, "packet number reused; not tracked");
            debug_assert!(false, "packet number {} reused in {epoch:?}", p.pn);
            return;
        }
        self.stats.sent_packets += 1;
        if in_flight {
            self.cc.on_packet_sent(now, self.bytes_in_flight);
            self.bytes_in_flight += size;
            if self.pacing {
                let input = self.pacer_input();
                self.pacer.on_sent(now, size, &input);
            }
            self.set_timer(now);
        }
    }

    /// RFC 9002 §A.7. `ranges` are descending (highest first) as in the ACK frame;
    /// `ack_delay` is decoded and only used in the Data space. `on_acked` receives every
    /// newly acknowledged packet, `on_lost` every packet then declared lost.
    ///
    /// Acknowledging a number never sent (beyond the next one, or one we skipped) is an
    /// error; processing may then have been partial and the connection must close.
    #[allow(clippy::too_many_arguments)]
    pub fn on_ack_received(
        &mut self,
        now: Instant,
        epoch: Epoch,
        ranges: impl Iterator<Item = RangeInclusive<u64>>,
        ack_delay: Duration,
        ecn: Option<EcnCounts>,
        on_acked: &mut dyn FnMut(SentPacket<T>),
        on_lost: &mut dyn FnMut(SentPacket<T>),
    ) -> Result<AckResult, UnsentPacketAcked> {
        self.last_now = Some(now);
        let mut ranges = ranges.peekable();
        let Some(largest) = ranges.peek().map(|r| *r.end()) else {
            return Ok(AckResult::default());
        };
        let space = &mut self.spaces[epoch.index()];
        if largest >= space.next_pn {
            return Err(UnsentPacketAcked { epoch, pn: largest });
        }
        let raises_largest = space.largest_acked.is_none_or(|l| largest > l);
        space.largest_acked = Some(space.largest_acked.map_or(largest, |l| l.max(largest)));

        // Detect and remove acknowledged packets (§A.7 DetectAndRemoveAckedPackets).
        let mut newest: Option<(u64, Instant)> = None;
        let mut any_ack_eliciting = false;
        let mut acked_bytes = 0u64;
        // In-flight bytes of packets sent after the current recovery period began.
        let mut growth_bytes = 0u64;
        let mut spurious = false;
        // Newly acknowledged packets sent marked ECT(0): all, and the current path's.
        let (mut marked, mut marked_on_path) = (0u64, 0u64);
        for range in ranges {
            let (first, last) = (*range.start(), *range.end());
            if last >= space.next_pn {
                return Err(UnsentPacketAcked { epoch, pn: last });
            }
            if epoch == Epoch::Data && self.ecn.tracks_losses() {
                // Marked packets declared lost that arrived after all (their slots are
                // gone by now).
                std::hint::cold_path();
                self.ecn.on_acked_range(first, last);
            }
            let record = self.undo.as_mut().and_then(|u| u.record.as_mut());
            if let Some(undo) = record.filter(|_| epoch == Epoch::Data) {
                let found = undo.on_acked(first, last);
                spurious |= found.all;
                if let Some(pn) = found.lowest {
                    // It was overtaken by up to `largest - pn` packets and still arrived:
                    // tolerate that much reordering from now on.
                    let seen = largest.saturating_sub(pn).saturating_add(1);
                    self.packet_threshold =
                        self.packet_threshold.max(seen.min(MAX_PACKET_THRESHOLD));
                    self.threshold_persistence = THRESHOLD_PERSISTENCE;
                }
            }
            // Only the window of packets still held can hold anything new.
            let lo = first.max(space.base());
            let hi = last.min(space.end().saturating_sub(1));
            if space.end() == space.base() || hi < lo {
                continue;
            }
            for pn in lo..=hi {
                if matches!(space.slot(pn), Some(Slot::Skipped)) {
                    return Err(UnsentPacketAcked { epoch, pn });
                }
                let Some(p) = space.take(pn, Slot::Acked) else {
                    continue;
                };
                let this_path = on_path(epoch, pn, self.path_first_pn);
                if p.ecn {
                    marked += 1;
                    marked_on_path += u64::from(self.ecn.on_path(pn));
                }
                if p.in_flight {
                    let size = u64::from(p.size);
                    release_in_flight(
                        (
                            &mut self.bytes_in_flight,
                            &mut self.old_path_bytes_in_flight,
                        ),
                        this_path,
                        size,
                    );
                    if this_path {
                        acked_bytes += size;
                        if !self.cc.in_recovery(p.time_sent) {
                            growth_bytes += size;
                        }
                    }
                }
                any_ack_eliciting |= p.ack_eliciting;
                if newest.is_none_or(|(n, _)| pn > n) {
                    newest = Some((pn, p.time_sent));
                }
                self.stats.acked_packets += 1;
                on_acked(p);
            }
        }
        space.trim_front();
        if spurious {
            self.undo_congestion_event();
        }
        let Some((newest_pn, newest_sent)) = newest else {
            return Ok(AckResult::default());
        };

        // RFC 9002 §5.1: sample only when the largest is newly acknowledged and something
        // ack-eliciting was.
        let largest_newly_acked = newest_pn == largest;
        let on_this_path = on_path(epoch, newest_pn, self.path_first_pn);
        let rtt_sampled = largest_newly_acked && any_ack_eliciting && on_this_path;
        if rtt_sampled {
            let latest = now.saturating_duration_since(newest_sent);
            // §5.3: Initial packets are acknowledged at once, so their ACK's delay may be
            // ignored; a Handshake ACK's is kept, as it counts the time the peer held our
            // packets waiting for keys (RFC 9000 §13.2.5).
            let delay = if epoch == Epoch::Initial {
                Duration::ZERO
            } else {
                ack_delay
            };
            self.pto.update_rtt(latest, delay, self.handshake_confirmed);
            self.first_rtt_sample.get_or_insert(now);
            trace!(?latest, smoothed = ?self.pto.rtt().smoothed(), "rtt sample");
        }

        let mut reduced = false;
        // §A.7 ProcessECN: a higher CE count is a congestion signal once the counts pass
        // validation (RFC 9000 §13.4.2.1); a peer cannot shrink our window with counts
        // for marks we never applied. Only the Data space is marked (`ecn`).
        if epoch == Epoch::Data {
            let ce = self.ecn.on_ack(raises_largest, marked, ecn, marked_on_path);
            // A mark on the old path says nothing about the new one (RFC 9000 §9.4).
            if ce > 0 && on_path(epoch, newest_pn, self.path_first_pn) {
                std::hint::cold_path();
                self.stats.ecn_ce_events += 1;
                if self.congestion_event(now, newest_sent) {
                    // A mark is congestion whatever the ACKs say later.
                    self.forget_undo();
                    reduced = true;
                }
            }
        }

        let outcome = self.detect_lost(epoch, now, on_lost);
        reduced |= self.on_packets_lost(now, epoch, &outcome);

        // §A.8 OnPacketsAcked with the recovery period as it stands after this frame's
        // losses: a new reduction covers everything sent until now; persistent congestion
        // ends the period.
        let growth = if outcome.persistent_congestion {
            acked_bytes
        } else if reduced {
            0
        } else {
            growth_bytes
        };
        if growth > 0 {
            if self.app_limited {
                self.cc.on_app_limited_ack(now);
            } else {
                self.cc.on_ack(now, growth, self.pto.rtt());
            }
        }

        // §A.7: reset the PTO backoff, unless this is a client not yet sure the server
        // validated its address (§6.2.2.1).
        if self.peer_completed_address_validation() {
            self.pto.set_count(0);
        }
        self.set_timer(now);
        Ok(AckResult {
            newly_acked: true,
            largest_newly_acked,
            rtt_sampled,
        })
    }

    /// When `on_loss_detection_timeout` must be called next.
    pub fn loss_detection_timer(&self) -> Option<Instant> {
        if let Some(now) = self.timer_stale.take() {
            self.timer.set(self.compute_timer(now));
        }
        self.timer.get()
    }

    /// RFC 9002 §A.9. Declares time-threshold losses, or fires the PTO and says which
    /// space needs probes. Calls before the timer is due do nothing.
    pub fn on_loss_detection_timeout(
        &mut self,
        now: Instant,
        on_lost: &mut dyn FnMut(SentPacket<T>),
    ) -> Option<ProbeRequest> {
        self.last_now = Some(now);
        if self.loss_detection_timer().is_none_or(|t| now < t) {
            return None;
        }
        if let Some((_, epoch)) = self.earliest_loss_time() {
            let outcome = self.detect_lost(epoch, now, on_lost);
            self.on_packets_lost(now, epoch, &outcome);
            self.set_timer(now);
            return None;
        }
        let probe = if self.any_ack_eliciting_in_flight() {
            let epoch = self.pto_time_and_space(now).map_or(Epoch::Data, |(_, e)| e);
            ProbeRequest { epoch, count: 2 }
        } else {
            // §6.2.2.1: client anti-deadlock probe, nothing in flight.
            let epoch = if self.has_handshake_keys {
                Epoch::Handshake
            } else {
                Epoch::Initial
            };
            ProbeRequest { epoch, count: 1 }
        };
        self.pto.set_count(self.pto.count().saturating_add(1));
        self.stats.pto_count += 1;
        debug!(pto_count = self.pto.count(), ?probe, "PTO fired");
        self.set_timer(now);
        Some(probe)
    }

    /// Drops a space whose keys were discarded (RFC 9002 §6.4, §A.11): its packets leave
    /// bytes in flight without being lost, and the PTO backoff resets.
    pub fn discard_space(
        &mut self,
        epoch: Epoch,
        now: Instant,
        on_discarded: &mut dyn FnMut(SentPacket<T>),
    ) {
        self.last_now = Some(now);
        let flights = (
            &mut self.bytes_in_flight,
            &mut self.old_path_bytes_in_flight,
        );
        let path_first_pn = self.path_first_pn;
        self.spaces[epoch.index()].drain(&mut |p| {
            if p.in_flight {
                let this_path = on_path(epoch, p.pn, path_first_pn);
                release_in_flight(
                    (&mut *flights.0, &mut *flights.1),
                    this_path,
                    u64::from(p.size),
                );
            }
            on_discarded(p);
        });
        // Not a sign of Handshake keys: a client after a Retry drops its Initial packets
        // too, and its anti-deadlock probe must then stay an Initial (RFC 9002 §6.2.2.1).
        self.pto.set_count(0);
        self.set_timer(now);
    }

    /// The handshake is confirmed (RFC 9001 §4.1.2): Data-space PTOs may be armed and
    /// max_ack_delay caps reported delays.
    pub fn set_handshake_confirmed(&mut self) {
        self.handshake_confirmed = true;
        self.rearm();
    }

    /// Client: the server has validated our address (e.g. it acknowledged a Handshake
    /// packet, which also sets this implicitly). Servers always consider it done.
    pub fn set_peer_completed_address_validation(&mut self, yes: bool) {
        self.peer_validated_address = yes;
        self.rearm();
    }

    /// Server: blocked by the anti-amplification limit, so the PTO must not be armed
    /// (RFC 9002 §6.2.2.1).
    pub fn set_anti_amplification_blocked(&mut self, blocked: bool) {
        self.amplification_blocked = blocked;
        self.rearm();
    }

    /// Handshake keys are installed: anti-deadlock probes use the Handshake space.
    pub fn set_has_handshake_keys(&mut self) {
        self.has_handshake_keys = true;
    }

    /// Sending is limited by the application or flow control, not the window: the window
    /// must not grow on ACKs meanwhile (RFC 9002 §7.8).
    pub fn set_app_limited(&mut self, limited: bool) {
        self.app_limited = limited;
    }

    /// Whether the next datagram leaves marked ECT(0) (RFC 9000 §13.4.2). Ends a path's
    /// ECN test when its time is up, so call it before each marked batch.
    pub fn ecn_marking(&mut self, now: Instant) -> bool {
        self.ecn.marking(now, self.pto.period(Epoch::Data))
    }

    /// Whether the batch being built may mark another datagram: a path's test marks only
    /// its first packets (`ecn::TESTING_PACKETS`).
    pub fn ecn_may_mark_more(&self) -> bool {
        self.ecn.may_mark_more()
    }

    /// Packets from `first_pn` on go to a new path, a new port alone included: test it
    /// for ECN afresh (RFC 9000 §13.4.2).
    pub fn restart_ecn(&mut self, first_pn: u64) {
        self.ecn.on_new_path(self.config.ecn, first_pn);
    }

    /// ECN on the current path.
    pub fn ecn(&self) -> &Ecn {
        &self.ecn
    }

    /// Whether ACKs currently leave the window as it is (RFC 9002 §7.8).
    pub fn is_app_limited(&self) -> bool {
        self.app_limited
    }

    /// The peer's max_ack_delay transport parameter.
    pub fn set_max_ack_delay(&mut self, delay: Duration) {
        self.pto.set_max_ack_delay(delay);
        self.rearm();
    }

    /// RFC 9000 §9.4: the peer's new address (not just a new port) is validated; the
    /// congestion controller and RTT estimator start over from their initial values.
    /// `first_pn`: the first 1-RTT packet number sent on the new path.
    pub fn reset_for_new_path(&mut self, now: Instant, first_pn: u64) {
        // What the previous path still has in flight leaves the new path's window.
        let space = &self.spaces[Epoch::Data.index()];
        let moved: u64 = (self.path_first_pn.max(space.base())..first_pn.min(space.end()))
            .filter_map(|pn| match space.slot(pn) {
                Some(Slot::Sent(p)) if p.in_flight => Some(u64::from(p.size)),
                _ => None,
            })
            .sum();
        self.bytes_in_flight -= moved;
        self.old_path_bytes_in_flight += moved;
        self.path_first_pn = first_pn;
        let mds = self.max_datagram_size;
        let initial_window = initial_window(self.config.initial_window_packets, mds);
        self.cc = Congestion::new(self.config.congestion, mds, initial_window);
        self.forget_undo();
        self.packet_threshold = PACKET_THRESHOLD;
        self.threshold_persistence = 0;
        self.pto.reset(self.config.initial_rtt);
        self.pacer = Pacer::new();
        self.first_rtt_sample = None;
        self.stats.path_resets += 1;
        self.set_timer(now);
    }

    /// A fresh congestion controller whose initial window is `window` bytes. Only for the
    /// test hook `Connection::set_congestion_window` (a window slow start would take many
    /// round trips to open); nothing in the engine calls it.
    pub(crate) fn restart_congestion_control(&mut self, window: u64) {
        self.cc = Congestion::new(self.config.congestion, self.max_datagram_size, window);
        self.forget_undo();
    }

    /// The path MTU changed (e.g. after DPLPMTUD).
    pub fn set_max_datagram_size(&mut self, size: usize) {
        self.max_datagram_size = size as u64;
        self.cc.set_max_datagram_size(size as u64);
        if let Some(undo) = self.undo.as_mut().and_then(|u| u.record.as_mut()) {
            undo.before_mut().set_max_datagram_size(size as u64);
        }
    }

    pub fn rtt(&self) -> &RttEstimator {
        self.pto.rtt()
    }

    /// The PTO period of `epoch`, backoff included (RFC 9002 §6.2.1): also the unit for
    /// the idle timeout floor, key discard and the closing period.
    pub fn pto(&self, epoch: Epoch) -> Duration {
        self.pto.period(epoch)
    }

    /// `3 * pto(epoch)`, saturated: the idle timeout's floor (RFC 9000 §10.1) and the
    /// closing and draining periods (§10.2).
    pub fn three_ptos(&self, epoch: Epoch) -> Duration {
        self.pto.three_periods(epoch)
    }

    /// Bytes in flight on every path.
    pub fn bytes_in_flight(&self) -> u64 {
        self.bytes_in_flight + self.old_path_bytes_in_flight
    }

    #[cfg(test)]
    pub fn packet_threshold(&self) -> u64 {
        self.packet_threshold
    }

    #[cfg(test)]
    pub fn ssthresh(&self) -> u64 {
        self.cc.ssthresh()
    }

    pub fn congestion_window(&self) -> u64 {
        self.cc.window()
    }

    pub fn congestion_controller(&self) -> &Congestion {
        &self.cc
    }

    /// Bytes the congestion window allows now. Probes may exceed it.
    pub fn send_window(&self) -> u64 {
        self.cc.window().saturating_sub(self.bytes_in_flight)
    }

    /// Earliest time a packet of `bytes` may leave under pacing; `None` means now.
    pub fn pacing_next_send(&mut self, now: Instant, bytes: u64) -> Option<Instant> {
        if !self.pacing {
            return None;
        }
        let input = self.pacer_input();
        self.pacer.next_send(now, bytes, &input)
    }

    pub fn in_flight_ack_eliciting(&self, epoch: Epoch) -> bool {
        self.spaces[epoch.index()].ack_eliciting_in_flight > 0
    }

    pub fn largest_acked(&self, epoch: Epoch) -> Option<u64> {
        self.spaces[epoch.index()].largest_acked
    }

    /// Packet numbers `epoch` still keeps a record of: from the oldest packet neither
    /// acknowledged nor declared lost to the newest sent.
    pub fn tracked_span(&self, epoch: Epoch) -> u64 {
        let space = &self.spaces[epoch.index()];
        space.end() - space.base()
    }

    /// Next packet number `epoch` expects to send (one past the highest sent).
    pub fn next_packet_number(&self, epoch: Epoch) -> u64 {
        self.spaces[epoch.index()].next_pn
    }

    /// Outstanding packets of `epoch`, oldest first: PTO probes resend their data.
    pub fn outstanding(&self, epoch: Epoch) -> impl Iterator<Item = &SentPacket<T>> + '_ {
        self.spaces[epoch.index()].outstanding()
    }

    /// Only non-ack-eliciting packets (ACKs) are outstanding in `epoch`, and many of them:
    /// the connection should make its next packet ack-eliciting (e.g. add PING) so the peer
    /// acknowledges them and both sides can drop old ACK state (RFC 9000 §13.2.4). Without
    /// that, a pure receiver's sent-packet window only grows.
    pub fn needs_ack_eliciting(&self, epoch: Epoch) -> bool {
        let space = &self.spaces[epoch.index()];
        space.ack_eliciting_in_flight == 0 && space.end() - space.base() >= ACK_ONLY_BEFORE_PING
    }

    pub fn pto_count(&self) -> u32 {
        self.pto.count()
    }

    pub fn stats(&self) -> RecoveryStats {
        RecoveryStats {
            ecn_failures: self.ecn.failures(),
            ..self.stats
        }
    }

    fn pacer_input(&self) -> PacerInput {
        PacerInput {
            window: self.cc.window(),
            smoothed_rtt: self.pto.rtt().smoothed(),
            max_datagram_size: self.max_datagram_size,
        }
    }

    fn rearm(&mut self) {
        if let Some(now) = self.last_now {
            self.set_timer(now);
        }
    }

    fn any_ack_eliciting_in_flight(&self) -> bool {
        self.spaces.iter().any(|s| s.ack_eliciting_in_flight > 0)
    }

    /// Ack-eliciting packets are in flight in a space whose PTO may be armed.
    fn probeable_in_flight(&self) -> bool {
        let [initial, handshake, data] = &self.spaces;
        initial.ack_eliciting_in_flight > 0
            || handshake.ack_eliciting_in_flight > 0
            || (self.handshake_confirmed && data.ack_eliciting_in_flight > 0)
    }

    /// §A.7 PeerCompletedAddressValidation: servers assume it; clients know once the
    /// handshake is confirmed or a Handshake packet was acknowledged.
    fn peer_completed_address_validation(&self) -> bool {
        self.side == Side::Server
            || self.peer_validated_address
            || self.handshake_confirmed
            || self.spaces[Epoch::Handshake.index()]
                .largest_acked
                .is_some()
    }

    /// §A.8 GetLossTimeAndSpace.
    fn earliest_loss_time(&self) -> Option<(Instant, Epoch)> {
        Epoch::ALL
            .iter()
            .filter_map(|&e| self.spaces[e.index()].loss_time.map(|t| (t, e)))
            .min_by_key(|&(t, _)| t)
    }

    /// §A.8 GetPtoTimeAndSpace.
    fn pto_time_and_space(&self, now: Instant) -> Option<(Instant, Epoch)> {
        let duration = self.pto.period(Epoch::Initial);
        if !self.probeable_in_flight() && !self.peer_completed_address_validation() {
            // Anti-deadlock (§6.2.2.1), clients only: arm from now. 0-RTT packets in flight
            // do not count: their space has no PTO before the handshake is confirmed, and
            // they may fill the window the client's Finished then waits behind.
            let epoch = if self.has_handshake_keys {
                Epoch::Handshake
            } else {
                Epoch::Initial
            };
            return now.checked_add(duration).map(|t| (t, epoch));
        }
        let mut best: Option<(Instant, Epoch)> = None;
        for epoch in Epoch::ALL {
            let space = &self.spaces[epoch.index()];
            if space.ack_eliciting_in_flight == 0 {
                continue;
            }
            let mut duration = duration;
            if epoch == Epoch::Data {
                // §6.2.1: no Data PTO before the handshake is confirmed.
                if !self.handshake_confirmed {
                    break;
                }
                duration = self.pto.period(Epoch::Data);
            }
            let Some(t) = space
                .time_of_last_ack_eliciting
                .and_then(|sent| sent.checked_add(duration))
            else {
                continue;
            };
            if best.is_none_or(|(b, _)| t < b) {
                best = Some((t, epoch));
            }
        }
        best
    }

    /// §A.8 SetLossDetectionTimer.
    /// (Computed when next read.)
    fn set_timer(&mut self, now: Instant) {
        self.timer_stale.set(Some(now));
    }

    fn compute_timer(&self, now: Instant) -> Option<Instant> {
        if let Some((t, _)) = self.earliest_loss_time() {
            return Some(t);
        }
        if self.amplification_blocked
            || (!self.any_ack_eliciting_in_flight() && self.peer_completed_address_validation())
        {
            return None;
        }
        self.pto_time_and_space(now).map(|(t, _)| t)
    }

    /// §A.10 DetectAndRemoveLostPackets, plus the persistent congestion check of §7.6.2
    /// over the packets it declares lost (per space, as §7.6.2 allows).
    fn detect_lost(
        &mut self,
        epoch: Epoch,
        now: Instant,
        on_lost: &mut dyn FnMut(SentPacket<T>),
    ) -> LossOutcome {
        let space = &mut self.spaces[epoch.index()];
        space.loss_time = None;
        let Some(largest_acked) = space.largest_acked else {
            return LossOutcome::default();
        };
        if space.base() > largest_acked || space.base() >= space.end() {
            // Everything up to the largest acknowledged is acknowledged or lost already:
            // the usual case, with nothing to examine and no thresholds to compute.
            space.trim_front();
            return LossOutcome::default();
        }
        self.declare_lost(epoch, now, largest_acked, on_lost)
    }

    /// The scan of `detect_lost` over packets that may be lost: out of line, since an ACK
    /// that leaves nothing unacknowledged below its largest (the usual case) skips it.
    #[inline(never)]
    fn declare_lost(
        &mut self,
        epoch: Epoch,
        now: Instant,
        largest_acked: u64,
        on_lost: &mut dyn FnMut(SentPacket<T>),
    ) -> LossOutcome {
        let mut outcome = LossOutcome::default();
        let space = &mut self.spaces[epoch.index()];
        let loss_delay = self.pto.rtt().loss_delay();
        let lost_send_time = now.checked_sub(loss_delay);
        let pc_duration = self.pto.persistent_congestion_duration();
        // Send time of the first ack-eliciting packet of the current run of lost packets
        // with no acknowledged packet in between.
        let mut run_start: Option<Instant> = None;

        let mut pn = space.base();
        while pn <= largest_acked && pn < space.end() {
            match space.slot(pn) {
                Some(Slot::Sent(p)) => {
                    let lost = lost_send_time.is_some_and(|t| p.time_sent <= t)
                        || largest_acked >= pn + self.packet_threshold;
                    if !lost {
                        // Packets are sent in order, so every later one is younger and
                        // within the packet threshold too.
                        space.loss_time = p.time_sent.checked_add(loss_delay);
                        break;
                    }
                    let Some(p) = space.take(pn, Slot::Lost) else {
                        break;
                    };
                    // RFC 9000 §14.4: a lost PMTU probe is no sign of congestion; §9.4: nor,
                    // for the current path, is a packet lost on the old one.
                    let this_path = on_path(epoch, pn, self.path_first_pn);
                    if p.ecn {
                        self.ecn.on_marked_lost(pn);
                    }
                    let signals = !p.mtu_probe && this_path;
                    if p.in_flight {
                        let size = u64::from(p.size);
                        release_in_flight(
                            (
                                &mut self.bytes_in_flight,
                                &mut self.old_path_bytes_in_flight,
                            ),
                            this_path,
                            size,
                        );
                        self.stats.lost_bytes += size;
                        if signals {
                            outcome.newest_lost_in_flight = Some(p.time_sent);
                            if epoch == Epoch::Data {
                                let undo = self.undo.get_or_insert_with(UndoState::new);
                                if let Some(slot) =
                                    undo.pass_losses.get_mut(outcome.signalling_losses)
                                {
                                    *slot = pn;
                                }
                                outcome.signalling_losses += 1;
                            }
                        }
                    }
                    if p.ack_eliciting
                        && signals
                        && self
                            .first_rtt_sample
                            .is_some_and(|first| p.time_sent > first)
                    {
                        match run_start {
                            None => run_start = Some(p.time_sent),
                            Some(start) if p.time_sent.duration_since(start) > pc_duration => {
                                outcome.persistent_congestion = true;
                            }
                            Some(_) => {}
                        }
                    }
                    self.stats.lost_packets += 1;
                    trace!(pn, ?epoch, "packet lost");
                    on_lost(p);
                }
                Some(Slot::Acked) => run_start = None,
                Some(Slot::Skipped | Slot::Lost) | None => {}
            }
            pn += 1;
        }
        space.trim_front();
        outcome
    }

    /// §A.10 OnPacketsLost. Returns whether the window was reduced.
    fn on_packets_lost(&mut self, now: Instant, epoch: Epoch, outcome: &LossOutcome) -> bool {
        let mut reduced = false;
        if let Some(sent) = outcome.newest_lost_in_flight {
            // The controller as it is, for undoing the cut: only a 1-RTT pass that cuts
            // (a loss sent after the recovery period began) needs a copy.
            let before =
                (epoch == Epoch::Data && !self.cc.in_recovery(sent)).then(|| self.cc.clone());
            reduced = self.congestion_event(now, sent);
            self.follow_losses(epoch, reduced, before, outcome.signalling_losses);
        }
        if outcome.persistent_congestion {
            std::hint::cold_path();
            self.forget_undo();
            debug!("persistent congestion");
            self.stats.persistent_congestion_events += 1;
            self.cc.on_persistent_congestion();
            self.pto.reset_min_rtt_to_latest();
        }
        reduced
    }

    /// Keeps what `undo` needs of a pass that declared `losses` packets lost: a reduction
    /// starts a new record (with the controller as it was `before`), and losses within its
    /// recovery period join it. Only 1-RTT losses can be undone: reordering there is what
    /// a long transfer meets, and the other spaces are over in a few round trips.
    fn follow_losses(
        &mut self,
        epoch: Epoch,
        reduced: bool,
        before: Option<Congestion>,
        losses: usize,
    ) {
        if epoch != Epoch::Data {
            if reduced {
                self.forget_undo();
            }
            return;
        }
        if reduced && self.packet_threshold > PACKET_THRESHOLD {
            // One cut fewer before the threshold returns to 3, unless a late acknowledgement
            // shows reordering again and restarts the count.
            self.threshold_persistence = self.threshold_persistence.saturating_sub(1);
            if self.threshold_persistence == 0 {
                self.packet_threshold = PACKET_THRESHOLD;
            }
        }
        let state = self.undo.get_or_insert_with(UndoState::new);
        if reduced {
            state.record = before.map(Undo::new);
        }
        let lost = &state.pass_losses[..losses.min(TRACKED_LOSSES)];
        if let Some(undo) = state.record.as_mut() {
            if losses > TRACKED_LOSSES || !undo.add(lost) {
                state.record = None;
            }
        }
    }

    /// No congestion event can be undone any more.
    fn forget_undo(&mut self) {
        if let Some(state) = self.undo.as_mut() {
            state.record = None;
        }
    }

    /// Every packet the latest congestion event counted as lost has been acknowledged:
    /// the path reordered them, and the window goes back to where it was.
    #[cold]
    fn undo_congestion_event(&mut self) {
        if let Some(undo) = self.undo.as_mut().and_then(|u| u.record.take()) {
            self.cc = undo.into_before();
            self.stats.spurious_congestion_events += 1;
            debug!(
                window = self.cc.window(),
                "spurious congestion event undone"
            );
        }
    }

    #[inline(never)]
    fn congestion_event(&mut self, now: Instant, sent_time: Instant) -> bool {
        let reduced = self.cc.on_congestion_event(now, sent_time);
        if reduced {
            self.stats.congestion_events += 1;
            debug!(window = self.cc.window(), "congestion event");
        }
        reduced
    }
}

/// An acknowledged, lost or discarded packet of `size` leaves the flight of its path:
/// (current path, older paths).
fn release_in_flight((current, old): (&mut u64, &mut u64), this_path: bool, size: u64) {
    if this_path {
        *current -= size;
    } else {
        *old = old.saturating_sub(size);
    }
}

/// Whether packet `pn` of `epoch` was sent on the current path: only 1-RTT packets change
/// paths, and those from `path_first_pn` on went to the current one (RFC 9000 §9.4).
fn on_path(epoch: Epoch, pn: u64, path_first_pn: u64) -> bool {
    epoch != Epoch::Data || pn >= path_first_pn
}
