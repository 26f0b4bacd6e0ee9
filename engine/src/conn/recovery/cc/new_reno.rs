//! NewReno (RFC 9002 §7.3, Appendix B).

use super::{minimum_window, Controller};
use crate::conn::recovery::rtt::RttEstimator;
use std::time::Instant;

/// RFC 9002 §7.3.2: kLossReductionFactor.
const LOSS_REDUCTION_NUM: u64 = 1;
const LOSS_REDUCTION_DEN: u64 = 2;

#[derive(Clone, Debug)]
pub struct NewReno {
    max_datagram_size: u64,
    window: u64,
    ssthresh: u64,
    recovery_start: Option<Instant>,
    /// Bytes acknowledged in congestion avoidance not yet turned into window growth.
    bytes_acked: u64,
}

impl NewReno {
    pub fn new(max_datagram_size: u64, initial_window: u64) -> Self {
        Self {
            max_datagram_size,
            window: initial_window.max(minimum_window(max_datagram_size)),
            ssthresh: u64::MAX,
            recovery_start: None,
            bytes_acked: 0,
        }
    }
}

impl Controller for NewReno {
    fn window(&self) -> u64 {
        self.window
    }

    fn ssthresh(&self) -> u64 {
        self.ssthresh
    }

    fn on_packet_sent(&mut self, _now: Instant, _bytes_in_flight: u64) {}

    fn on_ack(&mut self, _now: Instant, mut bytes: u64, _rtt: &RttEstimator) {
        if self.window < self.ssthresh {
            // Slow start (RFC 9002 §7.3.1) up to ssthresh; what one ACK acknowledged beyond
            // that counts in congestion avoidance (§7.3.3), or a large ACK after persistent
            // congestion would carry the window far past ssthresh.
            let grow = bytes.min(self.ssthresh - self.window);
            self.window += grow;
            bytes -= grow;
            if bytes == 0 {
                return;
            }
        }
        // Congestion avoidance: one datagram per window acknowledged (§7.3.3), counted
        // exactly instead of with a per-ack fraction.
        self.bytes_acked += bytes;
        while self.bytes_acked >= self.window {
            self.bytes_acked -= self.window;
            self.window += self.max_datagram_size;
        }
    }

    #[inline(never)]
    fn on_congestion_event(&mut self, now: Instant, sent_time: Instant) -> bool {
        if self.in_recovery(sent_time) {
            return false;
        }
        self.recovery_start = Some(now);
        self.ssthresh = self.window * LOSS_REDUCTION_NUM / LOSS_REDUCTION_DEN;
        self.window = self.ssthresh.max(minimum_window(self.max_datagram_size));
        self.bytes_acked = 0;
        true
    }

    fn on_persistent_congestion(&mut self) {
        self.window = minimum_window(self.max_datagram_size);
        self.recovery_start = None;
        self.bytes_acked = 0;
    }

    fn in_recovery(&self, sent_time: Instant) -> bool {
        self.recovery_start.is_some_and(|start| sent_time <= start)
    }

    fn set_max_datagram_size(&mut self, size: u64) {
        self.max_datagram_size = size;
        self.window = self.window.max(minimum_window(size));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MDS: u64 = 1200;

    fn rtt() -> RttEstimator {
        RttEstimator::new(Duration::from_millis(100))
    }

    #[test]
    fn slow_start_doubles_per_round_trip() {
        let t = Instant::now();
        let mut cc = NewReno::new(MDS, 10 * MDS);
        cc.on_ack(t, 10 * MDS, &rtt());
        assert_eq!(cc.window(), 20 * MDS);
        assert_eq!(cc.ssthresh(), u64::MAX);
    }

    /// RFC 9002 §7.3.3: slow start ends at ssthresh. One large ACK after persistent
    /// congestion grows the window to ssthresh, and the rest of it counts in congestion
    /// avoidance: one datagram per window acknowledged.
    #[test]
    fn slow_start_stops_at_ssthresh_within_one_ack() {
        let t = Instant::now();
        let mut cc = NewReno::new(MDS, 10 * MDS);
        cc.on_congestion_event(t, t);
        cc.on_persistent_congestion();
        assert_eq!((cc.window(), cc.ssthresh()), (2 * MDS, 5 * MDS));
        // 3 datagrams' worth reach ssthresh; the other 7 are more than one window of 5.
        cc.on_ack(t, 10 * MDS, &rtt());
        assert_eq!(cc.window(), 6 * MDS);
    }

    #[test]
    fn halves_once_per_round_trip() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(50);
        let mut cc = NewReno::new(MDS, 20 * MDS);
        assert!(cc.on_congestion_event(t1, t0));
        assert_eq!((cc.window(), cc.ssthresh()), (10 * MDS, 10 * MDS));
        // Another loss of a packet sent before recovery started: ignored.
        assert!(!cc.on_congestion_event(t1 + Duration::from_millis(1), t1));
        assert_eq!(cc.window(), 10 * MDS);
        // A packet sent after recovery started: a new reduction.
        let t2 = t1 + Duration::from_millis(1);
        assert!(cc.on_congestion_event(t2 + Duration::from_millis(100), t2));
        assert_eq!(cc.window(), 5 * MDS);
        assert!(cc.in_recovery(t2) && !cc.in_recovery(t2 + Duration::from_millis(101)));
    }

    #[test]
    fn congestion_avoidance_adds_one_datagram_per_window() {
        let t = Instant::now();
        let mut cc = NewReno::new(MDS, 20 * MDS);
        cc.on_congestion_event(t, t);
        assert_eq!(cc.window(), 10 * MDS);
        for _ in 0..9 {
            cc.on_ack(t, MDS, &rtt());
        }
        assert_eq!(cc.window(), 10 * MDS);
        cc.on_ack(t, MDS, &rtt());
        assert_eq!(cc.window(), 11 * MDS);
    }

    #[test]
    fn persistent_congestion_collapses_and_window_never_below_minimum() {
        let t = Instant::now();
        let mut cc = NewReno::new(MDS, 3 * MDS);
        cc.on_congestion_event(t, t);
        assert_eq!(cc.window(), 2 * MDS);
        let mut cc = NewReno::new(MDS, 40 * MDS);
        cc.on_persistent_congestion();
        assert_eq!(cc.window(), 2 * MDS);
        assert!(!cc.in_recovery(t));
    }
}
