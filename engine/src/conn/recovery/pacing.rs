//! Pacing (RFC 9002 §7.7): a token bucket filled at `1.25 * cwnd / smoothed_rtt` that holds
//! at most a burst of `BURST_DATAGRAMS` datagrams (never more than the window).

use std::time::{Duration, Instant};

/// RFC 9002 §7.7: N = 1.25, so a window's worth is sent in 80% of an RTT.
const RATE_NUM: f64 = 5.0;
const RATE_DEN: f64 = 4.0;
/// Datagrams that may leave back to back after an idle period.
pub const BURST_DATAGRAMS: u64 = 10;

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
        (BURST_DATAGRAMS * self.max_datagram_size)
            .min(self.window)
            .max(self.max_datagram_size) as f64
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

    #[test]
    fn bursts_are_bounded() {
        let inp = input(100 * MDS, 50);
        let t0 = Instant::now();
        let mut pacer = Pacer::new();
        let count_burst = |pacer: &mut Pacer, now: Instant| {
            let mut n = 0;
            while pacer.next_send(now, MDS, &inp).is_none() {
                pacer.on_sent(now, MDS, &inp);
                n += 1;
                assert!(n <= 1000);
            }
            n
        };
        assert_eq!(count_burst(&mut pacer, t0), BURST_DATAGRAMS);
        // After a long idle period the bucket is full again, but no fuller.
        assert_eq!(
            count_burst(&mut pacer, t0 + Duration::from_secs(30)),
            BURST_DATAGRAMS
        );
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
