//! Connection settings: what we advertise and how we behave.

use std::time::Duration;

use crate::conn::recovery::{CongestionAlgorithm, RecoveryConfig};
use crate::conn::streams::StreamsConfig;

#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Our max_idle_timeout; the effective one is the minimum of both sides' (RFC 9000 §10.1).
    pub idle_timeout: Duration,
    pub streams: StreamsConfig,
    pub congestion: CongestionAlgorithm,
    pub initial_rtt: Duration,
    /// Largest UDP payload we send (1452 fits a 1500-byte MTU over IPv6). Handshake packets
    /// stay at 1200 (RFC 9000 §14.1); after it, path MTU discovery finds how much of this
    /// the path carries.
    pub max_datagram_size: usize,
    /// DPLPMTUD (RFC 9000 §14.3). Off: `max_datagram_size` is used unprobed once the
    /// handshake is confirmed, for paths known to carry it.
    pub pmtud: bool,
    /// Largest UDP payload we accept (advertised as max_udp_payload_size).
    pub max_udp_payload_size: u64,
    pub ack_delay_exponent: u8,
    pub max_ack_delay: Duration,
    /// How many CIDs we are willing to store from the peer.
    pub active_connection_id_limit: u64,
    pub pacing: bool,
    /// ECN (RFC 9000 §13.4): test each path, and while it passes validation send 1-RTT
    /// packets marked ECT(0) and answer CE marks as congestion. The counts of what we
    /// receive are reported either way.
    pub ecn: bool,
    /// Initiate a key update after this many packets sent in one key phase (for tests and long transfers;
    /// AEAD limits force one much later anyway).
    pub key_update_interval: Option<u64>,
    /// Lowers the AEAD confidentiality limit (packets sealed per 1-RTT key before a key
    /// update, RFC 9001 §6.6) below the suite's; for tests and stricter policies.
    pub aead_confidentiality_limit: Option<u64>,
    /// Lowers the AEAD integrity limit (packets failing authentication per connection before
    /// it closes with AEAD_LIMIT_REACHED) below the suite's.
    pub aead_integrity_limit: Option<u64>,
    /// RFC 9221: the largest DATAGRAM frame we accept, advertised as
    /// max_datagram_frame_size. `None`: we accept none (a peer's DATAGRAM frame is then a
    /// PROTOCOL_VIOLATION).
    pub max_datagram_frame_size: Option<u64>,
    /// Bytes of datagrams each way queued between the application and the wire; a full
    /// queue drops its oldest datagram (RFC 9221 §5). Reserved when first used.
    pub datagram_buffer: usize,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30),
            streams: StreamsConfig::default(),
            congestion: CongestionAlgorithm::Cubic,
            initial_rtt: Duration::from_millis(333),
            max_datagram_size: 1452,
            pmtud: true,
            max_udp_payload_size: 65527,
            ack_delay_exponent: 3,
            max_ack_delay: Duration::from_millis(25),
            active_connection_id_limit: 4,
            pacing: true,
            ecn: true,
            key_update_interval: None,
            aead_confidentiality_limit: None,
            aead_integrity_limit: None,
            max_datagram_frame_size: None,
            datagram_buffer: 64 * 1024,
        }
    }
}

impl TransportConfig {
    pub(crate) fn recovery_config(&self, side: crate::Side) -> RecoveryConfig {
        RecoveryConfig {
            side,
            initial_rtt: self.initial_rtt,
            max_datagram_size: crate::conn::MIN_INITIAL_SIZE,
            congestion: self.congestion,
            initial_window_packets: 10,
            pacing: self.pacing,
            ecn: self.ecn,
        }
    }
}
