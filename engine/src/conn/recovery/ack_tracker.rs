//! Received packet numbers of one packet number space and when to acknowledge them
//! (RFC 9000 §13.2).
//!
//! Ranges live in a small bounded vector (ascending, inclusive, disjoint, non-adjacent) of
//! our own rather than `RangeSet` so that `ranges()` can hand out a cheap `Clone` iterator:
//! the connection walks it once to size the ACK frame and once to write it.

use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

/// Most ranges remembered; older ones are forgotten (RFC 9000 §13.2.3 allows limiting ACK
/// ranges). 64 ranges encode in well under 400 bytes.
pub const MAX_ACK_RANGES: usize = 64;
/// Packet numbers below the largest received that stay tracked (and reported) after the
/// peer has seen our ACK of them: reordering of up to this many packets is absorbed.
pub const REORDER_MARGIN: u64 = 128;

/// Ack-eliciting packets received before an ACK is sent without waiting (RFC 9000 §13.2.2).
const ACK_ELICITING_THRESHOLD: u32 = 2;

/// Packet numbers are at most 2^62 - 1 (RFC 9000 §12.3).
const MAX_PACKET_NUMBER: u64 = (1 << 62) - 1;

/// ECN codepoints as they appear in the two low bits of the IP TOS / traffic class.
const ECN_ECT1: u8 = 0b01;
pub const ECN_ECT0: u8 = 0b10;
const ECN_CE: u8 = 0b11;

#[derive(Clone, Debug)]
pub struct AckTracker {
    /// Ascending inclusive ranges `(first, last)`.
    ranges: Vec<(u64, u64)>,
    /// Every packet number below this is treated as a duplicate: its range was dropped
    /// (bound, or acknowledged ACK).
    floor: u64,
    largest: Option<u64>,
    largest_received_at: Option<Instant>,
    largest_ack_eliciting: Option<u64>,
    /// A packet arrived since the last ACK we sent.
    pending: bool,
    ack_eliciting_since_ack: u32,
    /// When an ACK must go out; `now` when it is immediate.
    deadline: Option<Instant>,
    /// ECT(0), ECT(1), CE counts (RFC 9000 §13.4.1).
    ecn: [u64; 3],
    ecn_seen: bool,
}

impl Default for AckTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl AckTracker {
    /// For a discarded packet number space (RFC 9001 §4.9), which records nothing more:
    /// frees the preallocated ranges.
    pub fn release_memory(&mut self) {
        self.ranges = Vec::new();
    }

    pub fn new() -> Self {
        Self {
            ranges: Vec::with_capacity(MAX_ACK_RANGES + 1),
            floor: 0,
            largest: None,
            largest_received_at: None,
            largest_ack_eliciting: None,
            pending: false,
            ack_eliciting_since_ack: 0,
            deadline: None,
            ecn: [0; 3],
            ecn_seen: false,
        }
    }

    /// Below what we still track: possibly new, but too late to tell apart from a duplicate
    /// (RFC 9000 §13.2.3 lets us drop those rather than risk processing one twice).
    pub fn is_below_floor(&self, pn: u64) -> bool {
        pn < self.floor
    }

    /// Already received, or below what we still track (RFC 9000 §13.2.3 lets us drop
    /// those rather than risk processing a duplicate).
    pub fn is_duplicate(&self, pn: u64) -> bool {
        if pn < self.floor {
            return true;
        }
        // In-order arrival, the common case, is above every range: no search.
        match self.ranges.last() {
            Some(&(_, last)) if pn > last => false,
            None => false,
            Some(_) => self.contains(pn),
        }
    }

    /// Records a processed packet and decides how soon it must be acknowledged.
    /// `immediate` is set for the Initial and Handshake spaces, which are acknowledged
    /// without delay (RFC 9000 §13.2.1). `ecn` is the packet's IP ECN codepoint.
    pub fn on_packet_received(
        &mut self,
        pn: u64,
        ack_eliciting: bool,
        ecn: u8,
        now: Instant,
        immediate: bool,
        max_ack_delay: Duration,
    ) {
        if pn > MAX_PACKET_NUMBER || self.is_duplicate(pn) {
            return;
        }
        // RFC 9000 §13.2.1: out-of-order ack-eliciting packets are acknowledged at once.
        let out_of_order = ack_eliciting
            && match self.largest_ack_eliciting {
                Some(l) if pn < l => true,
                Some(l) if pn > l + 1 => !self.contains_all(l + 1, pn - 1),
                _ => false,
            };
        self.insert(pn);
        if self.largest.is_none_or(|l| pn > l) {
            self.largest = Some(pn);
            self.largest_received_at = Some(now);
        }
        let ce = match ecn & 0b11 {
            ECN_ECT0 => {
                self.ecn[0] += 1;
                false
            }
            ECN_ECT1 => {
                self.ecn[1] += 1;
                false
            }
            ECN_CE => {
                self.ecn[2] += 1;
                true
            }
            _ => false,
        };
        self.ecn_seen |= ecn & 0b11 != 0;
        self.pending = true;
        if !ack_eliciting {
            // Non-ack-eliciting packets are only acknowledged along with others (§13.2.1).
            return;
        }
        if self.largest_ack_eliciting.is_none_or(|l| pn > l) {
            self.largest_ack_eliciting = Some(pn);
        }
        self.ack_eliciting_since_ack += 1;
        // §13.2.1: CE-marked packets are acknowledged immediately too.
        if immediate
            || out_of_order
            || ce
            || self.ack_eliciting_since_ack >= ACK_ELICITING_THRESHOLD
        {
            self.deadline = Some(self.deadline.map_or(now, |d| d.min(now)));
        } else if self.deadline.is_none() {
            self.deadline = Some(now + max_ack_delay);
        }
    }

    /// Largest packet number received so far (kept even after its range was forgotten,
    /// for packet number decoding).
    pub fn largest(&self) -> Option<u64> {
        self.largest
    }

    /// A packet (of any kind) arrived since the last ACK we sent: an ACK may be piggybacked
    /// on whatever goes out next.
    pub fn ack_pending(&self) -> bool {
        self.pending && !self.ranges.is_empty()
    }

    /// An ACK must be sent now, in a packet of its own if nothing else is going out.
    pub fn ack_due(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| d <= now) && !self.ranges.is_empty()
    }

    pub fn ack_deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Descending inclusive ranges, highest first, for an ACK frame.
    pub fn ranges(&self) -> impl Iterator<Item = RangeInclusive<u64>> + Clone + '_ {
        self.ranges.iter().rev().map(|&(a, b)| a..=b)
    }

    /// Time since the largest packet was received (the ACK Delay field before scaling by
    /// the ack_delay_exponent, RFC 9000 §19.3).
    pub fn ack_delay(&self, now: Instant) -> Duration {
        self.largest_received_at
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }

    /// (ECT(0), ECT(1), CE) counts, once any ECN-marked packet was received.
    pub fn ecn_counts(&self) -> Option<(u64, u64, u64)> {
        self.ecn_seen
            .then_some((self.ecn[0], self.ecn[1], self.ecn[2]))
    }

    /// The ACK was written into a packet: nothing is pending and the timer is disarmed.
    pub fn on_ack_sent(&mut self) {
        self.pending = false;
        self.ack_eliciting_since_ack = 0;
        self.deadline = None;
    }

    /// Our packet carrying an ACK whose Largest Acknowledged was `largest_acked` has been
    /// acknowledged: the peer knows about everything at or below it, so stop reporting it
    /// (RFC 9000 §13.2.4), except the last `REORDER_MARGIN` packet numbers. Later arrivals
    /// below what is kept are treated as duplicates.
    pub fn on_ack_of_ack(&mut self, largest_acked: u64) {
        // Keep the recent past: a packet overtaken by fewer than REORDER_MARGIN others is
        // then read and acknowledged when it comes, rather than dropped as a possible
        // duplicate, which would waste it and hide from its sender that it was not lost.
        let recent = self
            .largest
            .map_or(0, |l| l.saturating_sub(REORDER_MARGIN - 1));
        let new_floor = largest_acked.saturating_add(1).min(recent);
        if new_floor <= self.floor {
            return;
        }
        self.floor = new_floor;
        let keep_from = self.ranges.partition_point(|&(_, last)| last < new_floor);
        self.ranges.drain(..keep_from);
        if let Some(first) = self.ranges.first_mut() {
            first.0 = first.0.max(new_floor);
        }
    }

    /// Number of ranges currently tracked (bounded by `MAX_ACK_RANGES`).
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    fn contains(&self, pn: u64) -> bool {
        let i = self.ranges.partition_point(|&(_, last)| last < pn);
        self.ranges.get(i).is_some_and(|&(first, _)| first <= pn)
    }

    /// Every packet number in `first..=last` was received.
    fn contains_all(&self, first: u64, last: u64) -> bool {
        let i = self.ranges.partition_point(|&(_, l)| l < first);
        self.ranges
            .get(i)
            .is_some_and(|&(f, l)| f <= first && last <= l)
    }

    /// Inserts a packet number known not to be present.
    fn insert(&mut self, pn: u64) {
        // Fast path: in-order arrival extends or follows the top range.
        match self.ranges.last_mut() {
            None => {
                self.ranges.push((pn, pn));
                return;
            }
            Some(top) if pn == top.1 + 1 => {
                top.1 = pn;
                return;
            }
            Some(top) if pn > top.1 => {
                self.ranges.push((pn, pn));
                self.enforce_bound();
                return;
            }
            Some(_) => {}
        }
        self.insert_below_top(pn);
    }

    /// `insert` for a packet that arrived out of order, below the top range: rare, so out
    /// of line, away from the per-packet path.
    #[inline(never)]
    fn insert_below_top(&mut self, pn: u64) {
        let i = self.ranges.partition_point(|&(_, last)| last < pn);
        let joins_prev = i > 0 && self.ranges[i - 1].1 + 1 == pn;
        let joins_next = i < self.ranges.len() && self.ranges[i].0 == pn + 1;
        match (joins_prev, joins_next) {
            (true, true) => {
                self.ranges[i - 1].1 = self.ranges[i].1;
                self.ranges.remove(i);
            }
            (true, false) => self.ranges[i - 1].1 = pn,
            (false, true) => self.ranges[i].0 = pn,
            (false, false) => {
                self.ranges.insert(i, (pn, pn));
                self.enforce_bound();
            }
        }
    }

    /// Forgets the lowest ranges beyond `MAX_ACK_RANGES`; they become duplicates.
    fn enforce_bound(&mut self) {
        while self.ranges.len() > MAX_ACK_RANGES {
            let (_, last) = self.ranges.remove(0);
            self.floor = self.floor.max(last + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const MAD: Duration = Duration::from_millis(25);

    fn ranges(t: &AckTracker) -> Vec<RangeInclusive<u64>> {
        t.ranges().collect()
    }

    #[test]
    fn reordering_builds_descending_ranges() {
        let now = Instant::now();
        let mut t = AckTracker::new();
        for pn in [0, 1, 2, 5, 6, 9, 4, 8] {
            assert!(!t.is_duplicate(pn));
            t.on_packet_received(pn, true, 0, now, false, MAD);
        }
        assert_eq!(ranges(&t), vec![8..=9, 4..=6, 0..=2]);
        t.on_packet_received(3, true, 0, now, false, MAD);
        t.on_packet_received(7, true, 0, now, false, MAD);
        assert_eq!(ranges(&t), vec![0..=9]);
        assert_eq!(t.largest(), Some(9));
    }

    #[test]
    fn duplicates_are_detected_and_ignored() {
        let now = Instant::now();
        let mut t = AckTracker::new();
        t.on_packet_received(3, true, 0, now, false, MAD);
        assert!(t.is_duplicate(3));
        assert!(!t.is_duplicate(2) && !t.is_duplicate(4));
        t.on_ack_sent();
        t.on_packet_received(3, true, 0, now, false, MAD);
        assert!(!t.ack_pending());
        assert_eq!(ranges(&t), vec![3..=3]);
    }

    #[test]
    fn bounded_state_turns_old_ranges_into_duplicates() {
        let now = Instant::now();
        let mut t = AckTracker::new();
        // Every other packet: one range each.
        for i in 0..(MAX_ACK_RANGES as u64 + 10) {
            t.on_packet_received(i * 2, false, 0, now, false, MAD);
        }
        assert_eq!(t.range_count(), MAX_ACK_RANGES);
        assert_eq!(ranges(&t).last(), Some(&(20..=20)));
        // Never received, but below what we track: treated as duplicate.
        assert!(t.is_duplicate(1) && t.is_duplicate(18));
        assert!(!t.is_duplicate(21));
    }

    #[test]
    fn gap_triggers_immediate_ack() {
        let now = Instant::now();
        let mut t = AckTracker::new();
        t.on_packet_received(0, true, 0, now, false, MAD);
        assert!(!t.ack_due(now));
        assert_eq!(t.ack_deadline(), Some(now + MAD));
        t.on_ack_sent();
        // 1 is missing: 2 reveals a gap.
        t.on_packet_received(2, true, 0, now, false, MAD);
        assert!(t.ack_due(now));
        t.on_ack_sent();
        // 1 arrives late: below the largest ack-eliciting, also immediate.
        t.on_packet_received(1, true, 0, now, false, MAD);
        assert!(t.ack_due(now));
    }

    #[test]
    fn gap_filled_by_non_eliciting_packet_is_not_a_gap() {
        let now = Instant::now();
        let mut t = AckTracker::new();
        t.on_packet_received(0, true, 0, now, false, MAD);
        t.on_ack_sent();
        t.on_packet_received(1, false, 0, now, false, MAD);
        t.on_packet_received(2, true, 0, now, false, MAD);
        assert!(!t.ack_due(now));
        assert!(t.ack_pending());
    }

    #[test]
    fn every_second_ack_eliciting_packet_is_acked_at_once() {
        let now = Instant::now();
        let mut t = AckTracker::new();
        t.on_packet_received(0, true, 0, now, false, MAD);
        assert!(!t.ack_due(now));
        t.on_packet_received(1, false, 0, now, false, MAD);
        assert!(!t.ack_due(now), "non-eliciting packets do not count");
        t.on_packet_received(2, true, 0, now, false, MAD);
        assert!(t.ack_due(now));
        t.on_ack_sent();
        assert!(!t.ack_due(now) && !t.ack_pending() && t.ack_deadline().is_none());
    }

    #[test]
    fn delay_deadline_and_ack_delay() {
        let t0 = Instant::now();
        let mut t = AckTracker::new();
        t.on_packet_received(0, false, 0, t0, false, MAD);
        assert!(
            t.ack_pending() && t.ack_deadline().is_none(),
            "no timer for non-eliciting"
        );
        t.on_packet_received(1, true, 0, t0, false, MAD);
        assert_eq!(t.ack_deadline(), Some(t0 + MAD));
        assert!(!t.ack_due(t0 + MAD - Duration::from_millis(1)));
        assert!(t.ack_due(t0 + MAD));
        assert_eq!(
            t.ack_delay(t0 + Duration::from_millis(7)),
            Duration::from_millis(7)
        );
        // Handshake spaces ack immediately.
        let mut h = AckTracker::new();
        h.on_packet_received(0, true, 0, t0, true, MAD);
        assert!(h.ack_due(t0));
    }

    #[test]
    fn ecn_counts_and_ce_is_immediate() {
        let now = Instant::now();
        let mut t = AckTracker::new();
        t.on_packet_received(0, true, 0, now, false, MAD);
        assert_eq!(t.ecn_counts(), None);
        t.on_ack_sent();
        t.on_packet_received(1, true, ECN_ECT0, now, false, MAD);
        assert!(!t.ack_due(now));
        t.on_ack_sent();
        t.on_packet_received(2, true, ECN_CE, now, false, MAD);
        assert!(t.ack_due(now));
        t.on_packet_received(3, false, ECN_ECT1, now, false, MAD);
        assert_eq!(t.ecn_counts(), Some((1, 1, 1)));
    }

    #[test]
    fn ack_of_ack_keeps_the_recent_past() {
        let now = Instant::now();
        let mut t = AckTracker::new();
        for pn in [0, 1, 2, 4, 5, 7] {
            t.on_packet_received(pn, true, 0, now, false, MAD);
        }
        t.on_ack_of_ack(4);
        assert_eq!(ranges(&t), vec![7..=7, 4..=5, 0..=2], "within the margin");
        assert!(!t.is_duplicate(3), "a late packet there is still read");
    }

    #[test]
    fn ack_of_ack_forgets_acknowledged_ranges() {
        let now = Instant::now();
        let mut t = AckTracker::new();
        let m = REORDER_MARGIN;
        for pn in [0, 1, 2, 4, 5, 7, m + 10] {
            t.on_packet_received(pn, true, 0, now, false, MAD);
        }
        t.on_ack_of_ack(4);
        assert_eq!(ranges(&t), vec![m + 10..=m + 10, 7..=7, 5..=5]);
        assert!(
            t.is_duplicate(3) && t.is_below_floor(3),
            "below the acked ACK: dropped as a possible duplicate"
        );
        assert!(
            t.is_duplicate(5) && !t.is_below_floor(5),
            "a real duplicate"
        );
        assert!(
            !t.is_duplicate(6) && !t.is_below_floor(6),
            "a gap still tracked"
        );
        assert_eq!(t.largest(), Some(m + 10));
        t.on_ack_of_ack(m + 10);
        assert_eq!(
            ranges(&t),
            vec![m + 10..=m + 10],
            "only the recent past is kept"
        );
    }

    proptest! {
        #[test]
        fn matches_a_set_model(pns in proptest::collection::vec(0u64..300, 0..200)) {
            let now = Instant::now();
            let mut t = AckTracker::new();
            let mut model = BTreeSet::new();
            for pn in pns {
                let dup = t.is_duplicate(pn);
                prop_assert!(!dup || model.contains(&pn) || pn < t.floor);
                t.on_packet_received(pn, pn % 3 != 0, 0, now, false, MAD);
                model.insert(pn);
            }
            let rs = ranges(&t);
            prop_assert!(rs.len() <= MAX_ACK_RANGES);
            for w in rs.windows(2) {
                prop_assert!(w[1].end() + 1 < *w[0].start(), "descending, disjoint, non-adjacent");
            }
            let flat: BTreeSet<u64> = rs.iter().flat_map(|r| r.clone()).collect();
            let expect: BTreeSet<u64> = model.iter().copied().filter(|&p| p >= t.floor).collect();
            prop_assert_eq!(flat, expect);
            prop_assert_eq!(t.largest(), model.iter().next_back().copied());
        }
    }
}
