//! Undoing a congestion event that turns out to be spurious.
//!
//! RFC 9002's thresholds (§6.1) declare a packet lost once three later ones are
//! acknowledged, or after 9/8 of an RTT: on a path that reorders, packets that were only
//! overtaken are declared lost, and each such "loss" cuts the congestion window. When every
//! packet a congestion event counted as lost is acknowledged after all, the path never
//! dropped anything and the cut was a mistake: the controller goes back to where it was.
//! RFC 9002 leaves this to implementations; TCP does the same with DSACK (RFC 3708) and
//! Eifel (RFC 3522), and MsQuic does it for QUIC.
//!
//! Only the acknowledgement of the original packet number proves delivery (a retransmission
//! carries the frames under a new number), so a peer cannot undo a cut it did not earn
//! except by acknowledging packets it never received, which it could do anyway.

/// Lost packets one record follows; an event that lost more is real loss.
pub(super) const TRACKED_LOSSES: usize = 16;

/// What an ACK range proved about a record's losses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Spurious {
    /// The lowest packet number it acknowledged that had been declared lost.
    pub lowest: Option<u64>,
    /// Every packet the record counted as lost has now been acknowledged.
    pub all: bool,
}

/// What `Recovery` keeps for undoing: the live record, and the losses of the detection pass
/// under way. `Recovery` boxes it at a connection's first loss, so the many connections
/// that never lose a packet pay only a pointer.
#[derive(Debug)]
pub(super) struct UndoState<C> {
    pub record: Option<Undo<C>>,
    /// 1-RTT packet numbers the current loss detection pass declared lost (the first
    /// `TRACKED_LOSSES` of them).
    pub pass_losses: [u64; TRACKED_LOSSES],
}

impl<C> UndoState<C> {
    pub fn new() -> Box<Self> {
        Box::new(Self {
            record: None,
            pass_losses: [0; TRACKED_LOSSES],
        })
    }
}

/// A congestion event that may still be undone: the controller as it was before it, and
/// the packets (1-RTT packet numbers) whose loss caused it or came in its recovery period.
#[derive(Clone, Debug)]
pub(super) struct Undo<C> {
    before: C,
    lost: [u64; TRACKED_LOSSES],
    len: usize,
    /// Bit i: `lost[i]` has since been acknowledged.
    acked: u16,
    /// Bounds of the packet numbers not yet acknowledged, to skip most ACK ranges at once.
    low: u64,
    high: u64,
}

impl<C> Undo<C> {
    pub fn new(before: C) -> Self {
        Self {
            before,
            lost: [0; TRACKED_LOSSES],
            len: 0,
            acked: 0,
            low: u64::MAX,
            high: 0,
        }
    }

    /// Adds packets declared lost in the event's recovery period. False if that makes
    /// more than can be followed: the record must then be dropped.
    pub fn add(&mut self, lost: &[u64]) -> bool {
        for &pn in lost {
            if self.len == TRACKED_LOSSES {
                return false;
            }
            self.lost[self.len] = pn;
            self.len += 1;
            self.low = self.low.min(pn);
            self.high = self.high.max(pn);
        }
        true
    }

    /// An ACK range `first..=last` arrived. Returns the lowest packet it proves was not
    /// lost after all, if any, and whether every lost packet has now been acknowledged
    /// (the event was spurious).
    pub fn on_acked(&mut self, first: u64, last: u64) -> Spurious {
        let mut found = Spurious::default();
        if last < self.low || first > self.high || self.len == 0 {
            return found;
        }
        let (mut low, mut high) = (u64::MAX, 0);
        for (i, &pn) in self.lost[..self.len].iter().enumerate() {
            if self.acked & (1 << i) != 0 {
                continue;
            }
            if (first..=last).contains(&pn) {
                self.acked |= 1 << i;
                found.lowest = Some(found.lowest.map_or(pn, |l: u64| l.min(pn)));
            } else {
                low = low.min(pn);
                high = high.max(pn);
            }
        }
        (self.low, self.high) = (low, high);
        found.all = self.acked.count_ones() as usize == self.len;
        found
    }

    /// The controller as it was before the event, to follow changes that are not the
    /// event's (a new path MTU).
    pub fn before_mut(&mut self) -> &mut C {
        &mut self.before
    }

    /// The controller as it was before the event.
    pub fn into_before(self) -> C {
        self.before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spurious_once_every_lost_packet_is_acknowledged() {
        let mut u = Undo::new("before");
        assert!(u.add(&[10, 12]));
        assert!(u.add(&[15]));
        let none = Spurious::default();
        assert_eq!(u.on_acked(20, 30), none, "above every lost packet");
        assert_eq!(u.on_acked(0, 9), none, "below every lost packet");
        let found = |pn, all| Spurious {
            lowest: Some(pn),
            all,
        };
        assert_eq!(u.on_acked(11, 12), found(12, false));
        assert_eq!(u.on_acked(12, 12), none, "already counted");
        assert_eq!(u.on_acked(14, 16), found(15, false));
        assert_eq!(u.on_acked(10, 10), found(10, true));
        assert_eq!(u.into_before(), "before");
    }

    #[test]
    fn a_record_holds_a_bounded_number_of_losses() {
        let mut u = Undo::new(());
        let many: Vec<u64> = (0..TRACKED_LOSSES as u64).collect();
        assert!(u.add(&many));
        assert!(!u.add(&[100]), "one more than tracked");
    }

    #[test]
    fn an_empty_record_is_never_spurious() {
        let mut u = Undo::new(());
        assert_eq!(u.on_acked(0, u64::MAX), Spurious::default());
    }
}
