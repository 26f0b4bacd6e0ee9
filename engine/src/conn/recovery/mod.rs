//! Loss recovery and congestion control (RFC 9002), sans-IO.
//!
//! - [`AckTracker`]: what we received in one packet number space and when to ACK it
//!   (RFC 9000 §13.2).
//! - [`Recovery`]: what we sent, across the three spaces: RTT samples, loss detection by
//!   packet and time threshold, the PTO, and the congestion controller and pacer they feed.
//!
//! Time is always passed in (`now`); nothing here reads a clock. ACK ranges come and go as
//! descending inclusive ranges so this module does not depend on the frame codec.

pub mod ack_tracker;
pub mod cc;
pub mod ecn;
mod loss;
pub mod pacing;
pub mod rtt;
mod sent;
mod undo;

pub use ack_tracker::AckTracker;
pub use cc::{Congestion, CongestionAlgorithm, Controller};
pub use loss::Recovery;
pub use rtt::RttEstimator;
pub use sent::SentPacket;

use crate::{Epoch, Side};
use std::time::Duration;

/// RFC 9002 §6.2.2: kInitialRtt.
pub const INITIAL_RTT: Duration = Duration::from_millis(333);
/// RFC 9000 §18.2: default max_ack_delay until the peer's transport parameters arrive.
pub const DEFAULT_MAX_ACK_DELAY: Duration = Duration::from_millis(25);

#[derive(Clone, Debug)]
pub struct RecoveryConfig {
    /// Which end we are: a server never arms the client's anti-deadlock PTO (§6.2.2.1).
    pub side: Side,
    pub initial_rtt: Duration,
    pub max_datagram_size: usize,
    pub congestion: CongestionAlgorithm,
    /// Initial window in datagrams (RFC 9002 §7.2 recommends 10).
    pub initial_window_packets: usize,
    pub pacing: bool,
    /// Test each path for ECN and, while it passes validation, send 1-RTT packets
    /// marked ECT(0) and take the peer's CE count as congestion (RFC 9000 §13.4,
    /// RFC 9002 §7.1; see `ecn`).
    pub ecn: bool,
}

impl RecoveryConfig {
    pub fn new(side: Side) -> Self {
        Self {
            side,
            initial_rtt: INITIAL_RTT,
            max_datagram_size: 1200,
            congestion: CongestionAlgorithm::Cubic,
            initial_window_packets: 10,
            pacing: true,
            ecn: true,
        }
    }
}

/// What an ACK frame changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AckResult {
    /// At least one packet was newly acknowledged.
    pub newly_acked: bool,
    /// The frame's Largest Acknowledged was newly acknowledged.
    pub largest_newly_acked: bool,
    /// The RTT estimator took a sample from this frame.
    pub rtt_sampled: bool,
}

/// The PTO fired: send `count` ack-eliciting packets in `epoch` (RFC 9002 §6.2.4). They
/// may exceed the congestion window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeRequest {
    pub epoch: Epoch,
    pub count: u8,
}

/// The peer acknowledged a packet number we never sent: a PROTOCOL_VIOLATION
/// (RFC 9000 §13.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("peer acknowledged packet {pn} in {epoch:?} space, which was never sent")]
pub struct UnsentPacketAcked {
    pub epoch: Epoch,
    pub pn: u64,
}

/// Counters for observability.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    pub sent_packets: u64,
    pub acked_packets: u64,
    pub lost_packets: u64,
    pub lost_bytes: u64,
    /// PTO expirations.
    pub pto_count: u64,
    /// Window reductions (loss or ECN-CE), at most one per round trip.
    pub congestion_events: u64,
    pub persistent_congestion_events: u64,
    /// Congestion events undone: every packet they counted as lost was acknowledged after
    /// all (reordered, not lost).
    pub spurious_congestion_events: u64,
    pub ecn_ce_events: u64,
    /// Paths whose ECN validation failed (`ecn::EcnFailure`): marking stopped there.
    pub ecn_failures: u64,
    /// Congestion controller and RTT estimator restarted for a new path (RFC 9000 §9.4).
    pub path_resets: u64,
}

#[cfg(test)]
mod tests;
