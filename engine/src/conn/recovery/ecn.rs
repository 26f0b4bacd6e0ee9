//! ECN on the current path (RFC 9000 §13.4, Appendix A.4): whether our 1-RTT packets
//! leave ECT(0)-marked, and validation of the peer's ECN counts before its CE count is
//! taken as congestion (RFC 9002 §7.1).
//!
//! Only the application data space is marked, and only once the handshake is confirmed:
//! a path that drops marked packets then costs a few 1-RTT retransmissions, never the
//! handshake. The other spaces' counts are ignored.

use std::time::{Duration, Instant};

/// Marked packets a new path's test sends before waiting for their acknowledgements
/// (RFC 9000 §13.4.2: "the first ten outgoing packets on a path").
pub const TESTING_PACKETS: u64 = 10;

/// Lost marked packets remembered per path (`Ecn::lost_pns`): a path marks no more
/// before one is acknowledged.
const LOST_RECORD: usize = TESTING_PACKETS as usize;

/// ECN counts in an ACK frame: ECT(0), ECT(1), ECN-CE.
pub type EcnCounts = (u64, u64, u64);

/// Where the current path stands (RFC 9000 Appendix A.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EcnState {
    /// Marking the path's first packets; `since` is when the first went out.
    Testing { marked: u64, since: Option<Instant> },
    /// The test is over: unmarked until an ACK shows marked packets arrived intact.
    Unknown,
    /// Validated: every packet is marked.
    Capable,
    /// Validation failed (or ECN is off): nothing is marked, CE counts are ignored.
    Failed,
}

/// Why validation failed, for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EcnFailure {
    /// Marked packets acknowledged by an ACK frame without counts: the marks were
    /// cleared on the way, or the peer does not report them.
    NoCounts,
    /// A count went down.
    Decreased,
    /// Fewer ECT(0) and CE marks than the marked packets newly acknowledged: the path
    /// cleared marks, or turned CE back into ECT.
    TooFewMarks,
    /// More ECT marks than we ever applied (any ECT(1) at all): the path adds marks.
    TooManyMarks,
    /// Every packet marked on this path was declared lost.
    MarkedLost,
}

#[derive(Clone, Debug)]
pub struct Ecn {
    state: EcnState,
    /// Data-space packets ever sent marked ECT(0): no count may exceed it.
    sent_marked: u64,
    /// The first packet number of the current path: packets from it on are this path's.
    first_pn: u64,
    /// Of the packets marked on the current path: sent, acknowledged, declared lost.
    path_sent: u64,
    path_acked: u64,
    path_lost: u64,
    /// The numbers of the path's marked packets declared lost while none had been
    /// acknowledged (the only time their loss can fail the path): one acknowledged after
    /// all no longer counts as lost. Bounded by the test's packets.
    lost_pns: [u64; LOST_RECORD],
    lost_len: usize,
    /// The peer's counts as of the last ACK frame that passed validation.
    counts: EcnCounts,
    /// Marks counted before their packets were newly acknowledged here: a frame may leave
    /// out ranges whose marks its counts include (a peer bounds its ranges, and need not
    /// repeat ones it sent before). A later frame acknowledging such packets brings no
    /// rise; this surplus covers it (RFC 9000 §13.4.2.1 compares per frame, which would
    /// fail the path). Only the peer's counting creates it, never a path clearing marks.
    /// It never exceeds the marked packets still unacknowledged and not declared lost,
    /// the only ones it can be for (marks of packets acknowledged after being declared
    /// lost, or by a frame that was overtaken, are spent or dropped), and a new path
    /// starts from none.
    surplus: u64,
    /// Data-space packets sent marked, not yet newly acknowledged nor declared lost.
    marked_outstanding: u64,
    failure: Option<EcnFailure>,
    /// Validations failed, over all paths.
    failures: u64,
}

impl Ecn {
    /// `enabled`: test new paths for ECN; off, the state is `Failed` for good.
    pub fn new(enabled: bool) -> Self {
        Self {
            state: if enabled {
                EcnState::Testing {
                    marked: 0,
                    since: None,
                }
            } else {
                EcnState::Failed
            },
            sent_marked: 0,
            first_pn: 0,
            path_sent: 0,
            path_acked: 0,
            path_lost: 0,
            lost_pns: [0; LOST_RECORD],
            lost_len: 0,
            counts: (0, 0, 0),
            surplus: 0,
            marked_outstanding: 0,
            failure: None,
            failures: 0,
        }
    }

    pub fn state(&self) -> EcnState {
        self.state
    }

    /// Why the current path failed validation, if it did.
    pub fn failure(&self) -> Option<EcnFailure> {
        self.failure
    }

    /// Validations failed, over all paths.
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// 1-RTT packets sent marked ECT(0), over all paths.
    pub fn marked_sent(&self) -> u64 {
        self.sent_marked
    }

    /// Whether the next datagram leaves marked ECT(0). A test ends after
    /// [`TESTING_PACKETS`] marked packets or three PTOs (RFC 9000 §13.4.2).
    pub fn marking(&mut self, now: Instant, pto: Duration) -> bool {
        match self.state {
            EcnState::Capable => true,
            EcnState::Testing { marked, since } => {
                let expired = since.is_some_and(|s| now.saturating_duration_since(s) >= 3 * pto);
                if marked < TESTING_PACKETS && !expired {
                    return true;
                }
                self.state = EcnState::Unknown;
                self.check_all_lost();
                false
            }
            EcnState::Unknown | EcnState::Failed => false,
        }
    }

    /// Whether a packet numbered `pn` was sent on the current path.
    pub fn on_path(&self, pn: u64) -> bool {
        pn >= self.first_pn
    }

    /// Whether a datagram after the one just marked may be marked too: not once a test
    /// has marked its [`TESTING_PACKETS`], so a GSO batch stops there.
    pub fn may_mark_more(&self) -> bool {
        !matches!(self.state, EcnState::Testing { marked, .. } if marked >= TESTING_PACKETS)
    }

    /// A Data-space packet left marked at `now`.
    pub fn on_marked_sent(&mut self, now: Instant) {
        self.sent_marked += 1;
        self.marked_outstanding += 1;
        self.path_sent += 1;
        if let EcnState::Testing { marked, since } = &mut self.state {
            *marked += 1;
            since.get_or_insert(now);
        }
    }

    /// Marked packet `pn` was declared lost.
    pub fn on_marked_lost(&mut self, pn: u64) {
        self.marked_outstanding = self.marked_outstanding.saturating_sub(1);
        if !self.on_path(pn) {
            return;
        }
        self.path_lost += 1;
        if self.path_acked == 0 && self.state != EcnState::Failed && self.lost_len < LOST_RECORD {
            self.lost_pns[self.lost_len] = pn;
            self.lost_len += 1;
        }
        self.check_all_lost();
    }

    /// Whether `on_acked_range` has lost packets to look for.
    pub fn tracks_losses(&self) -> bool {
        self.lost_len > 0
    }

    /// An ACK range `first..=last`: remembered lost marked packets in it arrived after
    /// all, so they no longer count as lost. Their marks may have been counted by an
    /// earlier frame, so they prove nothing for validation.
    pub fn on_acked_range(&mut self, first: u64, last: u64) {
        let mut i = 0;
        while i < self.lost_len {
            if (first..=last).contains(&self.lost_pns[i]) {
                self.path_lost = self.path_lost.saturating_sub(1);
                self.lost_len -= 1;
                self.lost_pns[i] = self.lost_pns[self.lost_len];
            } else {
                i += 1;
            }
        }
    }

    fn check_all_lost(&mut self) {
        // Only once the test is over: while it runs, more marked packets may yet arrive.
        if self.state == EcnState::Unknown
            && self.path_acked == 0
            && self.path_sent > 0
            && self.path_lost >= self.path_sent
        {
            self.fail(EcnFailure::MarkedLost);
        }
    }

    /// Validates a Data-space ACK frame (RFC 9000 §13.4.2.1) that newly acknowledged
    /// `marked` packets we sent marked (`marked_on_path` of them, and of those acknowledged
    /// after being declared lost, on the current path). Returns how much the CE count
    /// rose: congestion to respond to, 0 unless the counts passed.
    ///
    /// A frame that does not raise the largest acknowledged may have been overtaken by a
    /// later one, so it never fails validation (the RFC's MUST NOT); counts it carries
    /// that pass are still used (RFC 9002 Appendix A.7 processes ECN on every ACK).
    /// Called for every Data-space frame that newly acknowledges something, whatever the
    /// state: a failed path's counts stay the baseline a new path is validated from.
    pub fn on_ack(
        &mut self,
        raises_largest: bool,
        marked: u64,
        counts: Option<EcnCounts>,
        marked_on_path: u64,
    ) -> u64 {
        self.marked_outstanding = self.marked_outstanding.saturating_sub(marked);
        if self.state == EcnState::Failed {
            if let Some(c) = counts.filter(|&c| !self.decreased(c)) {
                self.counts = c;
            }
            self.surplus = 0;
            return 0;
        }
        match self.check(marked, counts) {
            Ok(()) => {}
            Err(why) if raises_largest => {
                self.fail(why);
                return 0;
            }
            Err(_) => {
                // Overtaken: the later frame's counts already covered these packets.
                self.surplus = self.surplus.saturating_sub(marked);
                return 0;
            }
        }
        let Some((ect0, ect1, ce)) = counts else {
            return 0;
        };
        let (last0, _, last_ce) = self.counts;
        // `check` passed: the rise, with the surplus, covers what was newly acknowledged.
        self.surplus = (self.surplus + (ect0 - last0) + (ce - last_ce))
            .saturating_sub(marked)
            .min(self.marked_outstanding);
        self.counts = (ect0, ect1, ce);
        self.path_acked += marked_on_path;
        if marked_on_path > 0 {
            // Marks arrive: losses can no longer fail the path.
            self.lost_len = 0;
        }
        if marked_on_path > 0 && matches!(self.state, EcnState::Testing { .. } | EcnState::Unknown)
        {
            self.state = EcnState::Capable;
        }
        ce - last_ce
    }

    /// Whether any of `counts` is below the last that passed (no peer's count goes down).
    fn decreased(&self, (ect0, ect1, ce): EcnCounts) -> bool {
        let (last0, last1, last_ce) = self.counts;
        ect0 < last0 || ect1 < last1 || ce < last_ce
    }

    /// The checks of RFC 9000 §13.4.2.1 on a frame's counts against the last that passed.
    fn check(&self, marked: u64, counts: Option<EcnCounts>) -> Result<(), EcnFailure> {
        let Some((ect0, ect1, ce)) = counts else {
            return if marked > 0 {
                Err(EcnFailure::NoCounts)
            } else {
                Ok(())
            };
        };
        if self.decreased((ect0, ect1, ce)) {
            return Err(EcnFailure::Decreased);
        }
        let (last0, _, last_ce) = self.counts;
        // ECT(0) and CE counts cover every marked packet newly acknowledged (a lost ACK
        // frame may make them cover more), with what earlier frames counted beyond theirs.
        if (ect0 - last0) + (ce - last_ce) + self.surplus < marked {
            tracing::debug!(
                marked,
                ect0_rise = ect0 - last0,
                ce_rise = ce - last_ce,
                surplus = self.surplus,
                "fewer ECN marks than marked packets acknowledged"
            );
            return Err(EcnFailure::TooFewMarks);
        }
        if ect1 > 0 || ect0.saturating_add(ce) > self.sent_marked {
            return Err(EcnFailure::TooManyMarks);
        }
        Ok(())
    }

    fn fail(&mut self, why: EcnFailure) {
        tracing::debug!(?why, "ECN validation failed; not marking on this path");
        self.state = EcnState::Failed;
        self.failure = Some(why);
        self.failures += 1;
    }

    /// A new path from packet `first_pn` on (RFC 9000 §13.4.2: validate on every new
    /// path, a new port included): test it afresh, from the counts seen so far. ECN
    /// turned off stays off.
    pub fn on_new_path(&mut self, enabled: bool, first_pn: u64) {
        self.first_pn = first_pn;
        if !enabled {
            return;
        }
        self.state = EcnState::Testing {
            marked: 0,
            since: None,
        };
        self.failure = None;
        self.path_sent = 0;
        self.path_acked = 0;
        self.path_lost = 0;
        self.lost_len = 0;
        self.surplus = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PTO: Duration = Duration::from_millis(100);

    fn send(e: &mut Ecn, now: Instant, n: u64) -> u64 {
        let mut marked = 0;
        for _ in 0..n {
            if e.marking(now, PTO) {
                e.on_marked_sent(now);
                marked += 1;
            }
        }
        marked
    }

    #[test]
    fn a_path_that_keeps_marks_is_tested_then_capable() {
        let t = Instant::now();
        let mut e = Ecn::new(true);
        assert_eq!(send(&mut e, t, 15), TESTING_PACKETS);
        assert_eq!(e.state(), EcnState::Unknown);
        // The ACK for the first five: ECT(0) counts them.
        assert_eq!(e.on_ack(true, 5, Some((5, 0, 0)), 5), 0);
        assert_eq!(e.state(), EcnState::Capable);
        assert_eq!(send(&mut e, t, 3), 3);
        // Five more arrive with two CE-marked: 2 congestion signals.
        assert_eq!(e.on_ack(true, 5, Some((8, 0, 2)), 5), 2);
        assert_eq!(e.state(), EcnState::Capable);
    }

    #[test]
    fn the_test_also_ends_after_three_ptos() {
        let t = Instant::now();
        let mut e = Ecn::new(true);
        assert_eq!(send(&mut e, t, 2), 2);
        assert_eq!(send(&mut e, t + 3 * PTO, 1), 0);
        assert_eq!(e.state(), EcnState::Unknown);
    }

    #[test]
    fn each_way_a_path_or_peer_can_break_ecn_fails_validation() {
        let t = Instant::now();
        let cases: [(Option<EcnCounts>, EcnFailure); 4] = [
            (None, EcnFailure::NoCounts),
            (Some((3, 0, 0)), EcnFailure::TooFewMarks),
            (Some((4, 1, 0)), EcnFailure::TooManyMarks),
            (Some((11, 0, 0)), EcnFailure::TooManyMarks),
        ];
        for (counts, why) in cases {
            let mut e = Ecn::new(true);
            send(&mut e, t, 10);
            assert_eq!(e.on_ack(true, 4, counts, 4), 0, "{counts:?}");
            assert_eq!((e.state(), e.failure()), (EcnState::Failed, Some(why)));
            assert_eq!(send(&mut e, t, 5), 0, "failed paths are not marked");
            // Nor are later CE counts congestion.
            assert_eq!(e.on_ack(true, 0, Some((4, 0, 5)), 0), 0);
        }
        let mut e = Ecn::new(true);
        send(&mut e, t, 10);
        assert_eq!(e.on_ack(true, 4, Some((4, 0, 0)), 4), 0);
        assert_eq!(e.on_ack(true, 2, Some((3, 0, 0)), 2), 0);
        assert_eq!(e.failure(), Some(EcnFailure::Decreased));
    }

    /// A frame whose counts include packets it leaves out (ranges bounded, or sent
    /// before), then a frame acknowledging those: no rise, and no failure. A path that
    /// clears marks afterwards still fails, and a new path starts without the surplus.
    #[test]
    fn marks_counted_before_their_packets_are_acknowledged_are_not_short() {
        let t = Instant::now();
        let mut e = Ecn::new(true);
        send(&mut e, t, 10);
        // Six counted, four acknowledged: two left out.
        assert_eq!(e.on_ack(true, 4, Some((6, 0, 0)), 4), 0);
        // The two, acknowledged now, were counted then.
        assert_eq!(e.on_ack(true, 2, Some((6, 0, 0)), 2), 0);
        assert_eq!((e.state(), e.failure()), (EcnState::Capable, None));
        // Two more, one mark: the surplus is spent, so this is short.
        assert_eq!(e.on_ack(true, 2, Some((7, 0, 0)), 2), 0);
        assert_eq!(e.failure(), Some(EcnFailure::TooFewMarks));

        let mut e = Ecn::new(true);
        send(&mut e, t, 10);
        assert_eq!(e.on_ack(true, 4, Some((6, 0, 0)), 4), 0);
        e.on_new_path(true, 10);
        send(&mut e, t, 10);
        // The old path's surplus does not hide a new path that clears marks.
        assert_eq!(e.on_ack(true, 2, Some((6, 0, 0)), 2), 0);
        assert_eq!(e.failure(), Some(EcnFailure::TooFewMarks));
    }

    /// The surplus is only for marked packets still awaiting their acknowledgement:
    /// marks of packets declared lost (their late acknowledgements are never new) and of
    /// packets an overtaken frame acknowledges do not pile up to hide a path that starts
    /// clearing marks later.
    #[test]
    fn the_surplus_is_only_for_packets_still_outstanding() {
        let t = Instant::now();
        // Four declared lost that arrived after all: their marks are counted, but they
        // are never newly acknowledged, so nothing is owed to them.
        let mut e = Ecn::new(true);
        send(&mut e, t, 10);
        for pn in 0..4 {
            e.on_marked_lost(pn);
        }
        assert_eq!(e.on_ack(true, 6, Some((10, 0, 0)), 6), 0);
        assert_eq!(e.state(), EcnState::Capable);
        assert_eq!(send(&mut e, t, 2), 2);
        assert_eq!(e.on_ack(true, 2, Some((10, 0, 0)), 2), 0);
        assert_eq!(e.failure(), Some(EcnFailure::TooFewMarks));

        // A frame acknowledging 5..=10 counts 1..=4 too; the overtaken frame for 1..=4
        // then arrives, with lower counts: its packets take their share of the surplus.
        let mut e = Ecn::new(true);
        send(&mut e, t, 10);
        assert_eq!(e.on_ack(true, 6, Some((10, 0, 0)), 6), 0);
        assert_eq!(e.on_ack(false, 4, Some((4, 0, 0)), 4), 0);
        assert_eq!(e.failure(), None);
        assert_eq!(send(&mut e, t, 2), 2);
        assert_eq!(e.on_ack(true, 2, Some((10, 0, 0)), 2), 0);
        assert_eq!(e.failure(), Some(EcnFailure::TooFewMarks));
    }

    /// While a path is failed, the peer's counts keep moving the baseline: marks that
    /// arrived then are not credited to the next path, which is validated on its own.
    #[test]
    fn a_failed_paths_counts_stay_the_baseline_for_the_next() {
        let t = Instant::now();
        let mut e = Ecn::new(true);
        send(&mut e, t, 10);
        assert_eq!(e.on_ack(true, 2, Some((1, 0, 0)), 2), 0);
        assert_eq!(e.failure(), Some(EcnFailure::TooFewMarks));
        // The rest arrive marked after all, counted while the path is failed.
        assert_eq!(e.on_ack(true, 8, Some((9, 0, 0)), 8), 0);
        e.on_new_path(true, 10);
        send(&mut e, t, 10);
        // The new path clears every mark: no rise since the baseline.
        assert_eq!(e.on_ack(true, 3, Some((9, 0, 0)), 3), 0);
        assert_eq!(e.failure(), Some(EcnFailure::TooFewMarks));
        assert_eq!(e.failures(), 2);
    }

    #[test]
    fn reordered_acks_neither_fail_nor_count() {
        let t = Instant::now();
        let mut e = Ecn::new(true);
        send(&mut e, t, 10);
        assert_eq!(e.on_ack(true, 4, Some((2, 0, 2)), 4), 2);
        // An older frame, overtaken: lower counts, no largest raised.
        assert_eq!(e.on_ack(false, 1, Some((1, 0, 0)), 1), 0);
        assert_eq!(e.on_ack(false, 1, None, 1), 0);
        assert_eq!(e.state(), EcnState::Capable);
        // An overtaken frame whose counts pass is used: its CE rise is congestion.
        assert_eq!(e.on_ack(false, 1, Some((2, 0, 3)), 1), 1);
        assert_eq!(e.on_ack(true, 1, Some((3, 0, 3)), 1), 0);
        assert_eq!(e.failure(), None);
    }

    #[test]
    fn a_test_stops_marking_a_batch_at_its_tenth_packet() {
        let t = Instant::now();
        let mut e = Ecn::new(true);
        assert!(e.marking(t, PTO));
        for _ in 0..TESTING_PACKETS - 1 {
            e.on_marked_sent(t);
            assert!(e.may_mark_more());
        }
        e.on_marked_sent(t);
        assert!(!e.may_mark_more());
        assert!(!e.marking(t, PTO));
    }

    #[test]
    fn marked_packets_acknowledged_after_being_declared_lost_count_as_arrived() {
        let t = Instant::now();
        let mut e = Ecn::new(true);
        send(&mut e, t, 11);
        for pn in 0..9 {
            e.on_marked_lost(pn);
        }
        // Packet 4 arrives after all, and the tenth is lost: not all were lost.
        assert!(e.tracks_losses());
        e.on_acked_range(4, 4);
        e.on_marked_lost(9);
        assert_eq!(e.state(), EcnState::Unknown);
        assert_eq!(e.failure(), None);
        // That late packet proves nothing for validation: the path stays unknown.
        assert_eq!(e.on_ack(true, 0, Some((1, 0, 0)), 0), 0);
        assert_eq!(e.state(), EcnState::Unknown);
    }

    #[test]
    fn a_path_that_drops_marked_packets_fails_once_the_test_is_over() {
        let t = Instant::now();
        let mut e = Ecn::new(true);
        send(&mut e, t, 11);
        for pn in 0..9 {
            e.on_marked_lost(pn);
        }
        assert_eq!(e.state(), EcnState::Unknown);
        e.on_marked_lost(9);
        assert_eq!(e.failure(), Some(EcnFailure::MarkedLost));
        // Validation repeats on a new path.
        e.on_new_path(true, 100);
        assert!(!e.on_path(99) && e.on_path(100));
        assert_eq!(send(&mut e, t, 12), TESTING_PACKETS);
        // An ACK of marked packets from the old path passes, but proves nothing here.
        assert_eq!(e.on_ack(true, 3, Some((3, 0, 0)), 0), 0);
        assert_eq!(e.state(), EcnState::Unknown);
    }

    #[test]
    fn disabled_never_marks() {
        let mut e = Ecn::new(false);
        assert_eq!(send(&mut e, Instant::now(), 20), 0);
        e.on_new_path(false, 7);
        assert_eq!(e.state(), EcnState::Failed);
        assert_eq!(e.failure(), None);
    }
}
