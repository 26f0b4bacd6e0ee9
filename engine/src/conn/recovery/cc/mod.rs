//! Congestion controllers: NewReno (RFC 9002 §7, Appendix B) and CUBIC (RFC 9438).
//!
//! `Recovery` drives a controller with aggregated events: bytes acknowledged outside the
//! recovery period, congestion events (loss or ECN-CE) with the send time of the newest
//! packet involved, and persistent congestion. Dispatch is static through `Congestion`.

mod cubic;
mod new_reno;

pub use cubic::Cubic;
pub use new_reno::NewReno;

use super::rtt::RttEstimator;
use std::time::Instant;

/// Which controller a connection uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CongestionAlgorithm {
    NewReno,
    #[default]
    Cubic,
}

/// Window below which a controller never goes: two datagrams (RFC 9002 §7.2).
pub fn minimum_window(max_datagram_size: u64) -> u64 {
    2 * max_datagram_size
}

/// The interface `Recovery` drives.
pub trait Controller {
    /// Congestion window in bytes.
    fn window(&self) -> u64;
    /// Slow start threshold in bytes (`u64::MAX` before the first congestion event).
    fn ssthresh(&self) -> u64;
    /// An in-flight packet is about to be sent while `bytes_in_flight` were outstanding.
    fn on_packet_sent(&mut self, now: Instant, bytes_in_flight: u64);
    /// `bytes` of in-flight packets sent after the recovery period started were
    /// acknowledged, and the sender was not application limited (RFC 9002 §7.8).
    fn on_ack(&mut self, now: Instant, bytes: u64, rtt: &RttEstimator);
    /// An ACK arrived while the sender was application limited, so it did not grow the
    /// window (RFC 9002 §7.8). Controllers whose growth follows the clock (CUBIC) must
    /// not count the time until the next `on_ack` (RFC 9438 §5.8).
    fn on_app_limited_ack(&mut self, _now: Instant) {}
    /// A loss or ECN-CE signal about a packet sent at `sent_time`. Returns true if it
    /// started a new recovery period (one reduction per round trip, RFC 9002 §7.3.2).
    fn on_congestion_event(&mut self, now: Instant, sent_time: Instant) -> bool;
    /// Persistent congestion: collapse to the minimum window (RFC 9002 §7.6.2).
    fn on_persistent_congestion(&mut self);
    /// Packets sent at or before the start of the current recovery period do not grow
    /// the window and do not cause another reduction.
    fn in_recovery(&self, sent_time: Instant) -> bool;
    fn set_max_datagram_size(&mut self, size: u64);
}

/// A controller chosen at runtime, without boxing.
#[derive(Clone, Debug)]
pub enum Congestion {
    NewReno(NewReno),
    Cubic(Cubic),
}

impl Congestion {
    pub fn new(
        algorithm: CongestionAlgorithm,
        max_datagram_size: u64,
        initial_window: u64,
    ) -> Self {
        match algorithm {
            CongestionAlgorithm::NewReno => {
                Congestion::NewReno(NewReno::new(max_datagram_size, initial_window))
            }
            CongestionAlgorithm::Cubic => {
                Congestion::Cubic(Cubic::new(max_datagram_size, initial_window))
            }
        }
    }
}

/// Forwards a call to whichever controller is active (static dispatch).
macro_rules! dispatch {
    ($self:ident, $c:ident => $call:expr) => {
        match $self {
            Congestion::NewReno($c) => $call,
            Congestion::Cubic($c) => $call,
        }
    };
}

impl Controller for Congestion {
    fn window(&self) -> u64 {
        dispatch!(self, c => c.window())
    }
    fn ssthresh(&self) -> u64 {
        dispatch!(self, c => c.ssthresh())
    }
    fn on_packet_sent(&mut self, now: Instant, bytes_in_flight: u64) {
        dispatch!(self, c => c.on_packet_sent(now, bytes_in_flight))
    }
    fn on_ack(&mut self, now: Instant, bytes: u64, rtt: &RttEstimator) {
        dispatch!(self, c => c.on_ack(now, bytes, rtt))
    }
    fn on_app_limited_ack(&mut self, now: Instant) {
        dispatch!(self, c => c.on_app_limited_ack(now))
    }
    fn on_congestion_event(&mut self, now: Instant, sent_time: Instant) -> bool {
        dispatch!(self, c => c.on_congestion_event(now, sent_time))
    }
    fn on_persistent_congestion(&mut self) {
        dispatch!(self, c => c.on_persistent_congestion())
    }
    fn in_recovery(&self, sent_time: Instant) -> bool {
        dispatch!(self, c => c.in_recovery(sent_time))
    }
    fn set_max_datagram_size(&mut self, size: u64) {
        dispatch!(self, c => c.set_max_datagram_size(size))
    }
}
