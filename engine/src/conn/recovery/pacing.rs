//! Pacing (RFC 9002 §7.7): a token bucket filled at `1.25 * cwnd / smoothed_rtt` that holds
//! at most one burst (never more than the window): a millisecond of the pacing rate
//! (`BURST_INTERVAL_NS`), between `BURST_DATAGRAMS` and `MAX_BURST_DATAGRAMS` datagrams.
//!
//! Below about 115 Mbit/s per connection (ten 1452-byte datagrams a millisecond) a burst
//! is the initial window's ten datagrams, as RFC 9002 §7.7 recommends. Faster, a burst of
//! ten is sent in well under a millisecond and the sender wakes, and makes a system call,
//! every ten datagrams; end to end over loopback that cost a quarter more CPU per byte than
//! MsQuic. So, as Linux TCP sizes its TSO bursts (about 1 ms of the pacing rate) and MsQuic
//! (1 ms) and quinn (2 ms) size theirs, a burst is a millisecond of the pacing rate, which
//! bounds the queue a burst can build to what the path drains in a millisecond.

use std::time::{Duration, Instant};

/// RFC 9002 §7.7: N = 1.25, so a window's worth is sent in 80% of an RTT.
const RATE_NUM: f64 = 5.0;
const RATE_DEN: f64 = 4.0;
/// The smallest burst, in datagrams: the initial window (RFC 9002 §7.2).
pub const BURST_DATAGRAMS: u64 = 10;
/// The largest burst: a little more than one full GSO write (64 KiB) of 1452-byte datagrams.
pub const MAX_BURST_DATAGRAMS: u64 = 64;
/// How much of the pacing rate one burst may hold.
const BURST_INTERVAL_NS: f64 = 1_000_000.0;

#[derive(Clone, Debug)]
pub struct Pacer {
    /// Bytes that may be sent now.
    tokens: f64,
    last_refill: Option<Instant>,
}

impl Default for Pacer {
    fn default() -> Self {
        Self::new()
    }
}

/// What the bucket's rate and size derive from.
#[derive(Clone, Copy, Debug)]
pub struct PacerInput {
    pub window: u64,
    pub smoothed_rtt: Duration,
    pub max_datagram_size: u64,
}

impl PacerInput {
    fn capacity(&self) -> f64 {
        let floor = (BURST_DATAGRAMS * self.max_datagram_size) as f64;
        let ceiling = (MAX_BURST_DATAGRAMS * self.max_datagram_size) as f64;
        let interval = self.rate().map_or(floor, |rate| rate * BURST_INTERVAL_NS);
        interval
            .clamp(floor, ceiling)
            .min(self.window as f64)
            .max(self.max_datagram_size as f64)
    }

    /// Bytes per nanosecond; `None` when the RTT is too small to pace at all.
    fn rate(&self) -> Option<f64> {
        let rtt_ns = self.smoothed_rtt.as_nanos() as f64;
        (rtt_ns >= 1.0).then(|| RATE_NUM * self.window as f64 / (RATE_DEN * rtt_ns))
    }
}

impl Pacer {
    pub fn new() -> Self {
        Self {
            tokens: f64::INFINITY,
            last_refill: None,
        }
    }

    fn refill(&mut self, now: Instant, input: &PacerInput) {
        let capacity = input.capacity();
        match (self.last_refill, input.rate()) {
            (Some(last), Some(rate)) if now > last => {
                let elapsed = now.duration_since(last).as_nanos() as f64;
                self.tokens = (self.tokens + elapsed * rate).min(capacity);
            }
            (None, _) | (_, None) => self.tokens = capacity,
            _ => self.tokens = self.tokens.min(capacity),
        }
        self.last_refill = Some(self.last_refill.map_or(now, |l| l.max(now)));
    }

    /// Earliest time `bytes` may be sent; `None` means now.
    pub fn next_send(&mut self, now: Instant, bytes: u64, input: &PacerInput) -> Option<Instant> {
        self.refill(now, input);
        let rate = input.rate()?;
        // A packet larger than a burst waits only for a full bucket.
        let need = (bytes as f64).min(input.capacity());
        // Half a byte of slack absorbs float rounding when the caller wakes up exactly
        // at the time we returned.
        let missing = need - self.tokens;
        if missing <= 0.5 {
            return None;
        }
        let wait_ns = (missing / rate).ceil();
        Some(now + Duration::from_nanos(wait_ns.min(u64::MAX as f64) as u64))
    }

    /// A packet of `bytes` left at `now`.
    pub fn on_sent(&mut self, now: Instant, bytes: u64, input: &PacerInput) {
        self.refill(now, input);
        self.tokens = (self.tokens - bytes as f64).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MDS: u64 = 1200;

    fn input(window: u64, rtt_ms: u64) -> PacerInput {
        PacerInput {
            window,
            smoothed_rtt: Duration::from_millis(rtt_ms),
            max_datagram_size: MDS,
        }
    }

    #[test]
    fn long_run_rate_matches_window_over_rtt() {
        let inp = input(100 * MDS, 50);
        let start = Instant::now();
        let mut now = start;
        let mut pacer = Pacer::new();
        let mut sent = 0u64;
        let end = start + Duration::from_secs(10);
        while now < end {
            if let Some(t) = pacer.next_send(now, MDS, &inp) {
                assert!(t > now);
                now = t;
                continue;
            }
            pacer.on_sent(now, MDS, &inp);
            sent += MDS;
        }
        let rate = sent as f64 / now.duration_since(start).as_secs_f64();
        let expected = 1.25 * (100 * MDS) as f64 / 0.050;
        assert!(
            (rate / expected - 1.0).abs() < 0.05,
            "rate {rate} vs {expected}"
        );
    }

    fn count_burst_with(pacer: &mut Pacer, now: Instant, inp: &PacerInput) -> u64 {
        let mut n = 0;
        while pacer.next_send(now, MDS, inp).is_none() {
            pacer.on_sent(now, MDS, inp);
            n += 1;
            assert!(n <= 1000);
        }
        n
    }

    #[test]
    fn bursts_are_bounded() {
        let inp = input(100 * MDS, 50);
        let t0 = Instant::now();
        let mut pacer = Pacer::new();
        assert_eq!(count_burst_with(&mut pacer, t0, &inp), BURST_DATAGRAMS);
        // After a long idle period the bucket is full again, but no fuller.
        assert_eq!(
            count_burst_with(&mut pacer, t0 + Duration::from_secs(30), &inp),
            BURST_DATAGRAMS
        );
        // A fast path (a window of 4,000 datagrams over 1 ms: 6 GB/s) gets a millisecond's
        // worth, up to the ceiling.
        let fast = input(4000 * MDS, 1);
        let mut pacer = Pacer::new();
        assert_eq!(count_burst_with(&mut pacer, t0, &fast), MAX_BURST_DATAGRAMS);
        // In between, a millisecond of the rate: 1.25 * 1,000 datagrams / 40 ms ≈ 31.
        let mid = input(1000 * MDS, 40);
        let mut pacer = Pacer::new();
        assert_eq!(count_burst_with(&mut pacer, t0, &mid), 31);
        // A small window bounds the burst below ten datagrams.
        let small = input(4 * MDS, 50);
        let mut pacer = Pacer::new();
        let mut n = 0;
        while pacer.next_send(t0, MDS, &small).is_none() {
            pacer.on_sent(t0, MDS, &small);
            n += 1;
        }
        assert_eq!(n, 4);
    }

    #[test]
    fn no_pacing_without_a_usable_rtt() {
        let inp = input(10 * MDS, 0);
        let mut pacer = Pacer::new();
        let now = Instant::now();
        for _ in 0..100 {
            assert_eq!(pacer.next_send(now, MDS, &inp), None);
            pacer.on_sent(now, MDS, &inp);
        }
    }
}
