//! Counters: the XDP program's per-outcome counters (summed over CPUs) and per-socket
//! datapath counters, including the kernel's XDP_STATISTICS.

use super::if_xdp::xdp_statistics;
use super::umem::FrameCensus;

// Indices into the program's `stats` map; must equal QUENCH_STAT_* in bpf/quench_xdp.h
// (checked by a test).
pub const STAT_PASS_NOT_IP: u32 = 0;
pub const STAT_PASS_NOT_UDP: u32 = 1;
pub const STAT_PASS_OTHER_PORT: u32 = 2;
pub const STAT_PASS_MALFORMED: u32 = 3;
pub const STAT_DROP_SHORT_INITIAL: u32 = 4;
pub const STAT_DROP_FIXED_BIT: u32 = 5;
pub const STAT_DROP_BAD_SHORT: u32 = 6;
pub const STAT_DROP_BAD_LONG: u32 = 7;
pub const STAT_REDIRECT: u32 = 8;
pub const STAT_REDIRECT_MISSTEERED: u32 = 9;
pub const STAT_REDIRECT_FAILED: u32 = 10;
pub const STAT_PASS_NO_SOCKET: u32 = 11;
pub const STAT_PASS_NOT_LOCAL: u32 = 12;
pub const STAT_COUNT: u32 = 13;

/// What the XDP program did with packets, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramStats {
    /// Not IPv4/IPv6 (ARP, LLDP, ...), or too short for Ethernet.
    pub pass_not_ip: u64,
    /// IP but not UDP (TCP, ICMP, IPv6 extension headers).
    pub pass_not_udp: u64,
    /// UDP to a port we do not serve.
    pub pass_other_port: u64,
    /// Truncated IP/UDP headers or fragments: the kernel decides.
    pub pass_malformed: u64,
    /// Initial in a datagram under 1200 bytes (RFC 9000 §14.1).
    pub drop_short_initial: u64,
    /// QUIC fixed bit clear (RFC 9000 §17.2, §17.3).
    pub drop_fixed_bit: u64,
    /// Short header too small to hold our CID and a header-protection sample.
    pub drop_bad_short: u64,
    /// Long header truncated or with a DCID longer than 20 bytes.
    pub drop_bad_long: u64,
    /// Delivered to the owning worker's socket.
    pub redirect: u64,
    /// Delivered to the arrival queue's socket for hand-off to another worker.
    pub redirect_missteered: u64,
    /// No socket in the XSKMAP slot: passed to the kernel.
    pub redirect_failed: u64,
    /// No socket bound on the arrival queue: passed to the kernel.
    pub pass_no_socket: u64,
    /// To our port but not to one of our addresses (a forwarding or bridging box sees
    /// other hosts' traffic): passed to the kernel.
    pub pass_not_local: u64,
}

impl ProgramStats {
    pub fn from_counters(c: &[u64; STAT_COUNT as usize]) -> Self {
        ProgramStats {
            pass_not_ip: c[STAT_PASS_NOT_IP as usize],
            pass_not_udp: c[STAT_PASS_NOT_UDP as usize],
            pass_other_port: c[STAT_PASS_OTHER_PORT as usize],
            pass_malformed: c[STAT_PASS_MALFORMED as usize],
            drop_short_initial: c[STAT_DROP_SHORT_INITIAL as usize],
            drop_fixed_bit: c[STAT_DROP_FIXED_BIT as usize],
            drop_bad_short: c[STAT_DROP_BAD_SHORT as usize],
            drop_bad_long: c[STAT_DROP_BAD_LONG as usize],
            redirect: c[STAT_REDIRECT as usize],
            redirect_missteered: c[STAT_REDIRECT_MISSTEERED as usize],
            redirect_failed: c[STAT_REDIRECT_FAILED as usize],
            pass_no_socket: c[STAT_PASS_NO_SOCKET as usize],
            pass_not_local: c[STAT_PASS_NOT_LOCAL as usize],
        }
    }

    /// Every packet the program has seen.
    pub fn total(&self) -> u64 {
        self.pass_not_ip
            + self.pass_not_udp
            + self.pass_other_port
            + self.pass_malformed
            + self.drop_short_initial
            + self.drop_fixed_bit
            + self.drop_bad_short
            + self.drop_bad_long
            + self.redirect
            + self.redirect_missteered
            + self.redirect_failed
            + self.pass_no_socket
            + self.pass_not_local
    }
}

/// The kernel's view of one socket (getsockopt XDP_STATISTICS).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelSocketStats {
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty_descs: u64,
    pub tx_ring_empty_descs: u64,
}

impl From<xdp_statistics> for KernelSocketStats {
    fn from(s: xdp_statistics) -> Self {
        KernelSocketStats {
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: s.tx_ring_empty_descs,
        }
    }
}

/// Counters one datapath keeps itself (single-threaded, plain integers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathCounters {
    /// Datagrams delivered to the engine (own socket plus hand-offs).
    pub rx_packets: u64,
    /// Datagrams received for another worker and handed to it.
    pub rx_handed_off: u64,
    /// Datagrams delivered that another worker's socket received.
    pub rx_from_handoff: u64,
    /// Hand-offs lost because the owner's queue was full or the datagram too large.
    pub handoff_dropped: u64,
    /// Frames that did not parse as Ethernet/IP/UDP (dropped).
    pub rx_malformed: u64,
    /// Datagrams queued for transmit.
    pub tx_packets: u64,
    /// Datagrams dropped because the peer's MAC address is unknown.
    pub tx_no_neighbor: u64,
    /// Descriptors the kernel returned outside the UMEM (dropped, never trusted).
    pub bad_descs: u64,
}

/// Everything about one datapath's socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketStats {
    pub counters: DatapathCounters,
    pub kernel: KernelSocketStats,
    /// Frames per place across the UMEM this socket uses (shared with its queue's other
    /// sockets, if any).
    pub frames: FrameCensus,
    /// Frame accounting violations on that UMEM (0 in a correct program).
    pub frame_violations: u64,
    /// Frames on free lists, by the lists' own counts (must equal `frames.free` when quiet).
    pub free_listed: u32,
    /// Entries in the fill ring the kernel has not taken (must equal `frames.fill` when
    /// the RX rings are drained).
    pub fill_outstanding: u32,
    /// TX descriptors not yet visible on the completion ring.
    pub tx_in_flight: u32,
}
