//! Datagram Packetization Layer PMTU Discovery (DPLPMTUD, RFC 8899, as profiled for QUIC by
//! RFC 9000 §14.3 and §14.4): which datagram size the path carries.
//!
//! Without it a QUIC endpoint should not send datagrams above 1200 bytes (RFC 9000 §14);
//! with it, a connection starts at `BASE_PLPMTU` once the handshake is confirmed (§14.3.1),
//! probes larger sizes with PING + PADDING packets, and moves up when a probe is
//! acknowledged. The first probe tries the ceiling (the configured size capped by the peer's
//! `max_udp_payload_size`), so on a clean path one round trip reaches it; after
//! `MAX_PROBES` losses of one size the search halves the interval.
//!
//! A path can shrink later (a route change, a tunnel): when packets larger than the base
//! keep being lost in `BLACK_HOLE_BURSTS` separate loss events with none of them
//! acknowledged in between, the size falls back to the base and the search restarts below
//! the size that failed (RFC 8899 §4.3, black hole detection).
//!
//! Sans-IO and allocation-free: the connection sends what `probe_size` asks for, and
//! reports probe acks and losses with the generation the probe was sent in, so results
//! from before a reset are ignored.

use std::time::{Duration, Instant};

/// RFC 9000 §14.3: BASE_PLPMTU (and MIN_PLPMTU) is QUIC's smallest maximum datagram size.
pub const BASE_PLPMTU: u16 = crate::conn::MIN_INITIAL_SIZE as u16;
/// RFC 8899 §5.1.2: probes of one size sent before that size is taken to fail.
const MAX_PROBES: u8 = 3;
/// Stop searching once the unknown interval is this narrow (bytes).
const SEARCH_GRANULARITY: u16 = 20;
/// RFC 8899 §5.1.1 PMTU_RAISE_TIMER: look for a larger size again after this long.
const RAISE_INTERVAL: Duration = Duration::from_secs(600);
/// Loss events of above-base packets, none acknowledged between them, that mean a black hole.
const BLACK_HOLE_BURSTS: u8 = 3;
/// Largest UDP payload anyone may ask for (RFC 9000 §18.2 max_udp_payload_size); keeps
/// `ceiling + 1` within `u16`.
const MAX_UDP_PAYLOAD: u16 = 65527;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Before the handshake is confirmed, or with discovery turned off.
    Idle,
    /// `lo` is validated; `hi` failed (or is one past the ceiling while untested).
    Searching {
        lo: u16,
        hi: u16,
        attempts: u8,
        in_flight: bool,
    },
    /// Settled; `raise_at` re-opens the search when a larger size might exist.
    Complete { raise_at: Option<Instant> },
}

/// Counters for tests and operators.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PmtudStats {
    pub probes_sent: u64,
    pub probes_lost: u64,
    pub black_holes: u64,
}

#[derive(Clone, Debug)]
pub struct Pmtud {
    enabled: bool,
    /// The configured largest datagram; capped by the peer when discovery starts.
    configured: u16,
    ceiling: u16,
    current: u16,
    state: State,
    /// Bumped on every reset so late probe results of an old search are ignored.
    generation: u32,
    /// Loss events with an above-base packet lost since one was last acknowledged.
    lossy_bursts: u8,
    /// Set while reporting one loss event, if it lost an above-base packet.
    burst_lost_large: bool,
    stats: PmtudStats,
}

impl Pmtud {
    /// `max_datagram_size`: the largest UDP payload we are willing to send. With `enabled`
    /// false that size is used as soon as the handshake is confirmed, unprobed (for paths
    /// known to carry it).
    pub fn new(enabled: bool, max_datagram_size: usize) -> Self {
        let configured =
            max_datagram_size.clamp(usize::from(BASE_PLPMTU), usize::from(MAX_UDP_PAYLOAD)) as u16;
        Pmtud {
            enabled,
            configured,
            ceiling: configured,
            current: BASE_PLPMTU,
            state: State::Idle,
            generation: 0,
            lossy_bursts: 0,
            burst_lost_large: false,
            stats: PmtudStats::default(),
        }
    }

    /// The maximum datagram size to use now.
    pub fn current(&self) -> usize {
        usize::from(self.current)
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    pub fn stats(&self) -> PmtudStats {
        self.stats
    }

    /// Whether a search is under way (tests and logs).
    pub fn searching(&self) -> bool {
        matches!(self.state, State::Searching { .. })
    }

    /// The handshake is confirmed (RFC 9000 §14.3.1: enter BASE). `peer_max_udp_payload`
    /// is the peer's transport parameter, which caps every size we send.
    pub fn start(&mut self, now: Instant, peer_max_udp_payload: u64) {
        let peer =
            peer_max_udp_payload.clamp(u64::from(BASE_PLPMTU), u64::from(MAX_UDP_PAYLOAD)) as u16;
        self.ceiling = self.configured.min(peer);
        if !self.enabled {
            self.current = self.ceiling;
            self.state = State::Complete { raise_at: None };
            return;
        }
        self.restart(now, BASE_PLPMTU, self.ceiling + 1);
    }

    /// The peer's address changed: the new path may carry less (RFC 9000 §14: the size is
    /// per pair of addresses). Back to the base, search again.
    pub fn on_path_change(&mut self, now: Instant) {
        if self.enabled && self.state != State::Idle {
            self.restart(now, BASE_PLPMTU, self.ceiling + 1);
        }
    }

    fn restart(&mut self, now: Instant, lo: u16, hi: u16) {
        self.generation = self.generation.wrapping_add(1);
        self.current = lo;
        self.lossy_bursts = 0;
        self.state = State::Searching {
            lo,
            hi,
            attempts: 0,
            in_flight: false,
        };
        self.settle_if_done(now);
    }

    /// A probe of this size is due (one at a time), if any.
    pub fn probe_size(&mut self, now: Instant) -> Option<usize> {
        if let State::Complete { raise_at: Some(at) } = self.state {
            if now >= at {
                self.state = State::Searching {
                    lo: self.current,
                    hi: self.ceiling + 1,
                    attempts: 0,
                    in_flight: false,
                };
            }
        }
        match self.state {
            State::Searching {
                lo,
                hi,
                in_flight: false,
                ..
            } => Some(usize::from(candidate(lo, hi, self.ceiling))),
            _ => None,
        }
    }

    pub fn on_probe_sent(&mut self) {
        if let State::Searching { in_flight, .. } = &mut self.state {
            *in_flight = true;
            self.stats.probes_sent += 1;
        }
    }

    /// Our own buffers carry at most `max` bytes: nothing larger is worth probing.
    pub fn cap_ceiling(&mut self, now: Instant, max: usize) {
        let max = max.clamp(usize::from(BASE_PLPMTU), usize::from(MAX_UDP_PAYLOAD)) as u16;
        if max >= self.ceiling {
            return;
        }
        self.ceiling = max;
        self.current = self.current.min(max);
        if let State::Searching { hi, .. } = &mut self.state {
            *hi = (*hi).min(max + 1);
        }
        self.settle_if_done(now);
    }

    pub fn on_probe_acked(&mut self, now: Instant, size: usize, generation: u32) {
        if generation != self.generation {
            return;
        }
        let size = size.min(u16::MAX as usize) as u16;
        if let State::Searching {
            lo,
            attempts,
            in_flight,
            ..
        } = &mut self.state
        {
            *in_flight = false;
            if size > *lo {
                *lo = size;
                *attempts = 0;
                self.current = size;
                self.lossy_bursts = 0;
            }
            self.settle_if_done(now);
        }
    }

    pub fn on_probe_lost(&mut self, now: Instant, size: usize, generation: u32) {
        if generation != self.generation {
            return;
        }
        self.stats.probes_lost += 1;
        let size = size.min(u16::MAX as usize) as u16;
        if let State::Searching {
            hi,
            attempts,
            in_flight,
            ..
        } = &mut self.state
        {
            *in_flight = false;
            *attempts += 1;
            if *attempts >= MAX_PROBES {
                *hi = (*hi).min(size);
                *attempts = 0;
            }
            self.settle_if_done(now);
        }
    }

    /// A packet that was not a probe was acknowledged.
    pub fn on_packet_acked(&mut self, size: usize) {
        if size > usize::from(BASE_PLPMTU) {
            self.lossy_bursts = 0;
        }
    }

    /// A packet that was not a probe was declared lost; `end_loss_event` follows once all
    /// packets of this loss event are reported.
    pub fn on_packet_lost(&mut self, size: usize) {
        if size > usize::from(BASE_PLPMTU) {
            self.burst_lost_large = true;
        }
    }

    /// Closes one loss event. Returns true if it completed a black hole: the size fell back
    /// to the base.
    pub fn end_loss_event(&mut self, now: Instant) -> bool {
        if !std::mem::take(&mut self.burst_lost_large) || self.current <= BASE_PLPMTU {
            return false;
        }
        self.lossy_bursts += 1;
        if self.lossy_bursts < BLACK_HOLE_BURSTS {
            return false;
        }
        self.stats.black_holes += 1;
        let failed = self.current;
        self.restart(now, BASE_PLPMTU, failed);
        true
    }

    fn settle_if_done(&mut self, now: Instant) {
        if let State::Searching { lo, hi, .. } = self.state {
            if lo >= self.ceiling || hi.saturating_sub(lo) <= SEARCH_GRANULARITY {
                let raise_at = (lo < self.ceiling).then(|| now + RAISE_INTERVAL);
                self.state = State::Complete { raise_at };
            }
        }
    }
}

/// The next size to probe: the ceiling while it is untested (a clean path then takes one
/// round trip), else the middle of the unknown interval.
fn candidate(lo: u16, hi: u16, ceiling: u16) -> u16 {
    if hi > ceiling {
        ceiling
    } else {
        lo + (hi - lo) / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a search against a path carrying at most `path` bytes; returns the size it
    /// settles on and the probes sent.
    fn search(p: &mut Pmtud, now: Instant, path: usize) -> (usize, u64) {
        for _ in 0..100 {
            let Some(size) = p.probe_size(now) else {
                return (p.current(), p.stats().probes_sent);
            };
            p.on_probe_sent();
            let g = p.generation();
            if size <= path {
                p.on_probe_acked(now, size, g);
            } else {
                p.on_probe_lost(now, size, g);
            }
        }
        panic!("search did not settle");
    }

    #[test]
    fn starts_at_the_base_and_takes_the_ceiling_in_one_probe_on_a_clean_path() {
        let now = Instant::now();
        let mut p = Pmtud::new(true, 1452);
        assert_eq!(p.current(), 1200);
        assert_eq!(p.probe_size(now), None, "idle before the handshake");
        p.start(now, 65527);
        assert_eq!(p.current(), 1200);
        assert_eq!(search(&mut p, now, 1500), (1452, 1));
    }

    #[test]
    fn settles_within_the_granularity_below_a_smaller_path() {
        let now = Instant::now();
        for path in [1200, 1250, 1280, 1300, 1350, 1400, 1451] {
            let mut p = Pmtud::new(true, 1452);
            p.start(now, 65527);
            let (found, probes) = search(&mut p, now, path);
            assert!(found <= path, "{found} > path {path}");
            assert!(
                path - found <= usize::from(SEARCH_GRANULARITY),
                "path {path}: settled at {found}"
            );
            assert!(probes <= 20, "path {path}: {probes} probes");
        }
    }

    #[test]
    fn the_peer_limit_caps_the_search() {
        let now = Instant::now();
        let mut p = Pmtud::new(true, 1452);
        p.start(now, 1300);
        assert_eq!(search(&mut p, now, 9000), (1300, 1));
        // A peer limit under 1200 is invalid (RFC 9000 §18.2) and never lowers the base.
        let mut p = Pmtud::new(true, 1452);
        p.start(now, 1000);
        assert_eq!(p.current(), 1200);
        assert_eq!(p.probe_size(now), None);
    }

    #[test]
    fn a_smaller_local_buffer_caps_the_ceiling() {
        let now = Instant::now();
        let mut p = Pmtud::new(true, 1452);
        p.start(now, 65527);
        assert_eq!(p.probe_size(now), Some(1452));
        p.cap_ceiling(now, 1350);
        assert_eq!(search(&mut p, now, 1500), (1350, 1));
    }

    #[test]
    fn the_largest_sizes_do_not_overflow() {
        let now = Instant::now();
        let mut p = Pmtud::new(true, usize::MAX);
        p.start(now, u64::MAX);
        assert_eq!(search(&mut p, now, 100_000), (65527, 1));
    }

    #[test]
    fn disabled_uses_the_configured_size_unprobed() {
        let now = Instant::now();
        let mut p = Pmtud::new(false, 1452);
        p.start(now, 65527);
        assert_eq!(p.current(), 1452);
        assert_eq!(p.probe_size(now), None);
    }

    #[test]
    fn one_probe_at_a_time_and_three_losses_per_size() {
        let now = Instant::now();
        let mut p = Pmtud::new(true, 1452);
        p.start(now, 65527);
        assert_eq!(p.probe_size(now), Some(1452));
        p.on_probe_sent();
        assert_eq!(p.probe_size(now), None, "one probe in flight");
        let g = p.generation();
        p.on_probe_lost(now, 1452, g);
        assert_eq!(p.probe_size(now), Some(1452), "retried");
        p.on_probe_sent();
        p.on_probe_lost(now, 1452, g);
        p.on_probe_sent();
        p.on_probe_lost(now, 1452, g);
        assert_eq!(
            p.probe_size(now),
            Some(1326),
            "halved after MAX_PROBES losses"
        );
    }

    #[test]
    fn results_of_an_old_generation_are_ignored() {
        let now = Instant::now();
        let mut p = Pmtud::new(true, 1452);
        p.start(now, 65527);
        p.probe_size(now);
        p.on_probe_sent();
        let old = p.generation();
        p.on_path_change(now);
        p.on_probe_acked(now, 1452, old);
        assert_eq!(
            p.current(),
            1200,
            "a probe from the old path validates nothing"
        );
    }

    #[test]
    fn raises_again_after_the_raise_interval() {
        let now = Instant::now();
        let mut p = Pmtud::new(true, 1452);
        p.start(now, 65527);
        let settled = search(&mut p, now, 1300).0;
        assert!((1280..=1300).contains(&settled), "{settled}");
        assert_eq!(p.probe_size(now + RAISE_INTERVAL / 2), None);
        // The path grew meanwhile.
        let later = now + RAISE_INTERVAL;
        assert_eq!(search(&mut p, later, 1500).0, 1452);
        assert_eq!(
            p.probe_size(later + 2 * RAISE_INTERVAL),
            None,
            "nothing above the ceiling"
        );
    }

    #[test]
    fn repeated_large_losses_without_acks_are_a_black_hole() {
        let now = Instant::now();
        let mut p = Pmtud::new(true, 1452);
        p.start(now, 65527);
        search(&mut p, now, 1500);
        assert_eq!(p.current(), 1452);
        // Loss events with acks of large packets in between: congestion, not a black hole.
        for _ in 0..10 {
            p.on_packet_lost(1452);
            assert!(!p.end_loss_event(now));
            p.on_packet_acked(1452);
        }
        // Small packets lost or acked say nothing about large ones.
        p.on_packet_lost(600);
        assert!(!p.end_loss_event(now));
        for i in 0..BLACK_HOLE_BURSTS {
            p.on_packet_acked(300);
            p.on_packet_lost(1452);
            assert_eq!(p.end_loss_event(now), i + 1 == BLACK_HOLE_BURSTS);
        }
        assert_eq!(p.current(), 1200);
        assert_eq!(p.stats().black_holes, 1);
        // The search restarts below the size that failed and finds the new path.
        let (found, _) = search(&mut p, now, 1300);
        assert!((1280..=1300).contains(&found), "{found}");
    }
}
