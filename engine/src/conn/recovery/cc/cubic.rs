//! CUBIC (RFC 9438) over QUIC's loss signals.
//!
//! Windows are kept in bytes as `f64` so the sub-byte per-ACK increments of congestion
//! avoidance accumulate instead of being truncated away; the curve itself is evaluated in
//! segments (of `max_datagram_size`) and seconds, as RFC 9438 writes it.

use super::{minimum_window, Controller};
use crate::conn::recovery::rtt::RttEstimator;
use std::time::Instant;

/// RFC 9438 §5.1: C, in segments / s³.
pub const C: f64 = 0.4;
/// RFC 9438 §4.6: multiplicative decrease factor.
pub const BETA: f64 = 0.7;
/// RFC 9438 §4.3: Reno-friendly additive increase before W_est reaches W_max.
const ALPHA: f64 = 3.0 * (1.0 - BETA) / (1.0 + BETA);

#[derive(Clone, Debug)]
pub struct Cubic {
    max_datagram_size: u64,
    window: f64,
    ssthresh: u64,
    recovery_start: Option<Instant>,
    /// W_max in bytes: the window just before the last reduction (RFC 9438 §4.2).
    w_max: f64,
    /// K in seconds.
    k: f64,
    /// t_epoch: when the current congestion avoidance stage began.
    epoch_start: Option<Instant>,
    /// W_est in bytes: the Reno-friendly estimate (RFC 9438 §4.3).
    w_est: f64,
    /// cwnd_prior in bytes: the window when ssthresh was last set (RFC 9438 §4.3).
    cwnd_prior: f64,
    last_sent: Option<Instant>,
    /// The first ACK that found the sender application limited since the last `on_ack`:
    /// the time from there to the next `on_ack` is not time on the curve (RFC 9438 §5.8).
    app_limited_since: Option<Instant>,
}

impl Cubic {
    pub fn new(max_datagram_size: u64, initial_window: u64) -> Self {
        Self {
            max_datagram_size,
            window: initial_window.max(minimum_window(max_datagram_size)) as f64,
            ssthresh: u64::MAX,
            recovery_start: None,
            w_max: 0.0,
            k: 0.0,
            epoch_start: None,
            w_est: 0.0,
            cwnd_prior: 0.0,
            last_sent: None,
            app_limited_since: None,
        }
    }

    /// K of the current epoch, in seconds.
    pub fn k(&self) -> f64 {
        self.k
    }

    /// W_max in bytes.
    pub fn w_max(&self) -> u64 {
        self.w_max as u64
    }

    /// W_cubic(t) in bytes, `t` seconds into the epoch: `C*(t-K)^3 + W_max` (RFC 9438 §4.2).
    pub fn w_cubic(&self, t: f64) -> f64 {
        let mds = self.max_datagram_size as f64;
        (C * (t - self.k).powi(3) + self.w_max / mds) * mds
    }

    /// Starts a congestion avoidance epoch (RFC 9438 §4.2): K from W_max and cwnd_epoch.
    fn start_epoch(&mut self, now: Instant) {
        self.epoch_start = Some(now);
        if self.window < self.w_max {
            let segments = (self.w_max - self.window) / self.max_datagram_size as f64;
            self.k = (segments / C).cbrt();
        } else {
            // Left slow start without a reduction: the curve starts at its plateau.
            self.k = 0.0;
            self.w_max = self.window;
        }
        self.w_est = self.window;
    }

    /// Moves t_epoch later by `by`: the curve keeps its shape, later in time.
    fn shift_epoch(&mut self, epoch: Instant, by: std::time::Duration) {
        self.epoch_start = epoch.checked_add(by).or(Some(epoch));
    }

    fn min_window(&self) -> f64 {
        minimum_window(self.max_datagram_size) as f64
    }

    /// Congestion avoidance (RFC 9438 §4.2–§4.5), out of line: slow start and
    /// application-limited ACKs, the common cases, do not touch it.
    #[inline(never)]
    fn avoid_congestion(&mut self, now: Instant, bytes: f64, rtt: &RttEstimator) {
        let epoch = match self.epoch_start {
            Some(e) => e,
            None => {
                self.start_epoch(now);
                now
            }
        };
        let mds = self.max_datagram_size as f64;
        let t = now.saturating_duration_since(epoch).as_secs_f64();
        // RFC 9438 §4.2: aim for where the curve will be one RTT from now, bounded to
        // [cwnd, 1.5 * cwnd].
        let target = self
            .w_cubic(t + rtt.smoothed().as_secs_f64())
            .clamp(self.window, 1.5 * self.window);
        // RFC 9438 §4.3: W_est grows like Reno with the same average rate; alpha becomes
        // 1 once W_est reaches cwnd_prior (not W_max, which fast convergence lowers).
        let alpha = if self.w_est >= self.cwnd_prior {
            1.0
        } else {
            ALPHA
        };
        self.w_est += alpha * bytes * mds / self.window;
        if self.w_cubic(t) < self.w_est {
            // Reno-friendly region.
            self.window = self.window.max(self.w_est);
        } else {
            // Concave / convex regions (RFC 9438 §4.4, §4.5): (target - cwnd) / cwnd per
            // segment acknowledged.
            self.window += (target - self.window) * bytes / self.window;
        }
    }
}

impl Controller for Cubic {
    fn window(&self) -> u64 {
        self.window as u64
    }

    fn ssthresh(&self) -> u64 {
        self.ssthresh
    }

    fn on_packet_sent(&mut self, now: Instant, bytes_in_flight: u64) {
        // RFC 9438 §5.8: an idle period must not count as time on the curve, or the first
        // ACK after it would jump the window. Shift the epoch by the idle time, and by the
        // application-limited time before it; an application-limited period still open
        // is counted from now on.
        if bytes_in_flight == 0 {
            if let (Some(last), Some(epoch)) = (self.last_sent, self.epoch_start) {
                let from = self.app_limited_since.map_or(last, |s| s.min(last));
                self.shift_epoch(epoch, now.saturating_duration_since(from));
                if self.app_limited_since.is_some() {
                    self.app_limited_since = Some(now);
                }
            }
        }
        self.last_sent = Some(now);
    }

    fn on_app_limited_ack(&mut self, now: Instant) {
        self.app_limited_since.get_or_insert(now);
    }

    fn on_ack(&mut self, now: Instant, bytes: u64, rtt: &RttEstimator) {
        if let Some(since) = self.app_limited_since.take() {
            // RFC 9438 §5.8: the window did not grow while the sender was application
            // limited, so neither may the curve's clock.
            if let Some(epoch) = self.epoch_start {
                self.shift_epoch(epoch, now.saturating_duration_since(since));
            }
        }
        let mut bytes = bytes as f64;
        if (self.window as u64) < self.ssthresh {
            // Slow start (RFC 9438 §4.10 defers to RFC 9002 §7.3.1) up to ssthresh; the
            // rest of a large ACK counts in congestion avoidance.
            let grow = bytes.min(self.ssthresh as f64 - self.window).max(0.0);
            self.window += grow;
            bytes -= grow;
            if bytes <= 0.0 {
                return;
            }
        }
        self.avoid_congestion(now, bytes, rtt);
    }

    #[inline(never)]
    fn on_congestion_event(&mut self, now: Instant, sent_time: Instant) -> bool {
        if self.in_recovery(sent_time) {
            return false;
        }
        self.recovery_start = Some(now);
        self.epoch_start = None;
        self.app_limited_since = None;
        self.cwnd_prior = self.window;
        // RFC 9438 §4.7 fast convergence: release bandwidth to new flows when the window
        // did not recover to its previous maximum.
        self.w_max = if self.window < self.w_max {
            self.window * (1.0 + BETA) / 2.0
        } else {
            self.window
        };
        // RFC 9438 §4.6.
        let reduced = (self.window * BETA).max(self.min_window());
        self.ssthresh = reduced as u64;
        self.window = reduced;
        true
    }

    fn on_persistent_congestion(&mut self) {
        // RFC 9002 §7.6.2 and RFC 9438 §4.8: back to the minimum window, and the first
        // congestion avoidance stage after it starts with K = 0 and W_max at the window it
        // starts from (`start_epoch`), not climbing back toward the old W_max.
        self.window = self.min_window();
        self.recovery_start = None;
        self.epoch_start = None;
        self.w_max = 0.0;
    }

    fn in_recovery(&self, sent_time: Instant) -> bool {
        self.recovery_start.is_some_and(|start| sent_time <= start)
    }

    fn set_max_datagram_size(&mut self, size: u64) {
        self.max_datagram_size = size;
        self.window = self.window.max(self.min_window());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MDS: u64 = 1200;

    fn rtt(ms: u64) -> RttEstimator {
        let mut r = RttEstimator::new(Duration::from_millis(ms));
        r.update(
            Duration::from_millis(ms),
            Duration::ZERO,
            Duration::ZERO,
            true,
        );
        r
    }

    /// Acks one full window per round trip, `mds` at a time, for `rounds` round trips.
    fn run(cc: &mut Cubic, mut now: Instant, rtt: &RttEstimator, rounds: usize) -> Instant {
        for _ in 0..rounds {
            let acks = cc.window() / MDS;
            for _ in 0..acks {
                cc.on_ack(now, MDS, rtt);
            }
            now += rtt.smoothed();
        }
        now
    }

    #[test]
    fn slow_start_then_reduction_by_beta() {
        let t = Instant::now();
        let r = rtt(100);
        let mut cc = Cubic::new(MDS, 10 * MDS);
        cc.on_ack(t, 10 * MDS, &r);
        assert_eq!(cc.window(), 20 * MDS);
        assert!(cc.on_congestion_event(t, t));
        assert_eq!(cc.window(), 14 * MDS);
        assert_eq!(cc.ssthresh(), 14 * MDS);
        assert_eq!(cc.w_max(), 20 * MDS);
        // Same round trip: no second reduction.
        assert!(!cc.on_congestion_event(t + Duration::from_millis(10), t));
        assert_eq!(cc.window(), 14 * MDS);
    }

    #[test]
    fn k_and_curve_match_the_formula() {
        let t0 = Instant::now();
        let r = rtt(100);
        let mut cc = Cubic::new(MDS, 100 * MDS);
        cc.on_congestion_event(t0, t0);
        assert_eq!(cc.window(), 70 * MDS);
        cc.on_ack(t0, MDS, &r); // starts the epoch
                                // K = cbrt(W_max * (1 - beta) / C) = cbrt(100 * 0.3 / 0.4) = cbrt(75)
        let k = 75f64.cbrt();
        assert!((cc.k() - k).abs() < 1e-9, "K = {}", cc.k());
        let seg = |t: f64| cc.w_cubic(t) / MDS as f64;
        assert!((seg(0.0) - 70.0).abs() < 1e-9);
        assert!((seg(k) - 100.0).abs() < 1e-9);
        assert!((seg(1.0) - (0.4 * (1.0 - k).powi(3) + 100.0)).abs() < 1e-9);
        assert!((seg(2.0 * k) - (0.4 * k.powi(3) + 100.0)).abs() < 1e-9); // 130
        assert!((seg(2.0 * k) - 130.0).abs() < 1e-9);
    }

    #[test]
    fn window_follows_the_curve_through_concave_and_convex_regions() {
        let t0 = Instant::now();
        let r = rtt(100);
        let mut cc = Cubic::new(MDS, 100 * MDS);
        cc.on_congestion_event(t0, t0);
        let start = t0 + Duration::from_millis(1);
        let mut now = start;
        let k = 75f64.cbrt();
        let mut checkpoints = vec![1.0, k, 6.0];
        while let Some(&t) = checkpoints.first() {
            now = run(&mut cc, now, &r, 1);
            let elapsed = now.duration_since(start).as_secs_f64();
            if elapsed >= t {
                checkpoints.remove(0);
                // One RTT of lag at most: the window is between W_cubic(t - RTT) and
                // W_cubic(t + RTT).
                let w = cc.window() as f64;
                let lo = cc.w_cubic(elapsed - 0.2);
                let hi = cc.w_cubic(elapsed + 0.1);
                assert!(
                    w >= lo * 0.97 && w <= hi * 1.03,
                    "t={elapsed} w={w} lo={lo} hi={hi}"
                );
            }
        }
        // Plateau near W_max around K, then convex growth beyond it.
        assert!(cc.window() > 100 * MDS);
    }

    #[test]
    fn reno_friendly_region_with_short_rtt() {
        let t0 = Instant::now();
        let r = rtt(10);
        let mut cc = Cubic::new(MDS, 10 * MDS);
        cc.on_congestion_event(t0, t0);
        assert_eq!(cc.window(), 7 * MDS);
        let start = t0 + Duration::from_millis(1);
        let now = run(&mut cc, start, &r, 100);
        let t = now.duration_since(start).as_secs_f64();
        // The cubic curve barely moved (K ≈ 1.96 s), Reno-like growth did: ~6 rounds at
        // alpha ≈ 0.53 to reach W_max, then one segment per round.
        assert!(cc.w_cubic(t) < 11.0 * MDS as f64);
        let w = cc.window() / MDS;
        assert!((90..=110).contains(&w), "window {w} segments");
    }

    #[test]
    fn fast_convergence_lowers_w_max() {
        let t0 = Instant::now();
        let mut cc = Cubic::new(MDS, 100 * MDS);
        cc.on_congestion_event(t0, t0);
        let t1 = t0 + Duration::from_secs(1);
        // Second loss while below the previous W_max (70 < 100).
        cc.on_congestion_event(t1, t1);
        assert!(cc.w_max().abs_diff(70 * MDS * 85 / 100) <= 1);
        assert!(
            cc.window().abs_diff(49 * MDS) <= 1,
            "0.7 * 0.7 * 100 segments"
        );
    }

    #[test]
    fn persistent_congestion_collapses_to_minimum() {
        let t0 = Instant::now();
        let mut cc = Cubic::new(MDS, 100 * MDS);
        cc.on_persistent_congestion();
        assert_eq!(cc.window(), 2 * MDS);
        // Slow start again from the minimum window (ssthresh is still unset).
        cc.on_ack(t0, 2 * MDS, &rtt(100));
        assert_eq!(cc.window(), 4 * MDS);
    }

    /// RFC 9438 §4.8: after persistent congestion, slow start runs to ssthresh and the
    /// congestion avoidance stage that follows starts on the curve's plateau (K = 0, W_max
    /// the window it starts from), not below the W_max from before the collapse. And one
    /// large ACK does not carry slow start past ssthresh.
    #[test]
    fn after_persistent_congestion_the_curve_starts_where_slow_start_ended() {
        let t0 = Instant::now();
        let r = rtt(100);
        let mut cc = Cubic::new(MDS, 100 * MDS);
        assert!(cc.on_congestion_event(t0, t0));
        assert_eq!((cc.w_max(), cc.ssthresh()), (100 * MDS, 70 * MDS));
        cc.on_persistent_congestion();
        assert_eq!(cc.window(), 2 * MDS);
        let t1 = t0 + Duration::from_secs(1);
        cc.on_ack(t1, 100 * MDS, &r);
        assert!(
            cc.window() < 72 * MDS,
            "slow start stopped near ssthresh: {} segments",
            cc.window() / MDS
        );
        assert_eq!(cc.k(), 0.0);
        assert!(cc.w_max().abs_diff(70 * MDS) <= 1, "W_max {}", cc.w_max());
    }

    /// RFC 9438 §4.3: after fast convergence lowered W_max, the Reno-friendly estimate keeps
    /// alpha below 1 until it reaches cwnd_prior, the window before the reduction.
    #[test]
    fn reno_friendly_alpha_waits_for_cwnd_prior() {
        let t0 = Instant::now();
        let r = rtt(10);
        let mut cc = Cubic::new(MDS, 100 * MDS);
        cc.on_congestion_event(t0, t0);
        let t1 = t0 + Duration::from_secs(1);
        // A second reduction below W_max: W_max = 0.85 * 70, cwnd_prior = 70 segments.
        cc.on_congestion_event(t1, t1);
        assert!(cc.w_max() < cc.cwnd_prior as u64);
        // Round trips of ACKs until W_est has passed W_max...
        let mut now = t1 + Duration::from_millis(1);
        while cc.w_est < cc.w_max + MDS as f64 {
            now = run(&mut cc, now, &r, 1);
        }
        assert!(cc.w_est < cc.cwnd_prior - MDS as f64);
        // ...and still, a window's worth of ACKs grows W_est by alpha (0.53) segments, not 1.
        let before = cc.w_est;
        let acks = cc.window() / MDS;
        for _ in 0..acks {
            cc.on_ack(now, MDS, &r);
        }
        let grown = (cc.w_est - before) / MDS as f64;
        assert!((grown - ALPHA).abs() < 0.06, "W_est grew {grown} segments");
    }

    /// `a` acknowledges at 0 and 0.5 s, is application limited from 1 s, idle from 5 s
    /// and acknowledges again at 8 s: 0.5 s on the curve, as `b`, which acknowledges at
    /// 0, 0.5 and 0.5 s. Counting the overlap of the two pauses twice would give 0 s.
    #[test]
    fn application_limited_and_idle_time_are_not_on_the_curve() {
        let t0 = Instant::now();
        let r = rtt(100);
        let s = |ms: u64| t0 + Duration::from_millis(ms);
        let mut a = Cubic::new(MDS, 100 * MDS);
        a.on_congestion_event(t0, t0);
        let mut b = a.clone();
        for cc in [&mut a, &mut b] {
            cc.on_packet_sent(t0, 1);
            cc.on_ack(t0, MDS, &r);
            cc.on_packet_sent(s(500), 1);
            cc.on_ack(s(500), MDS, &r);
        }
        a.on_app_limited_ack(s(1000));
        a.on_app_limited_ack(s(2000));
        a.on_packet_sent(s(5000), 0);
        a.on_ack(s(8000), MDS, &r);
        b.on_ack(s(500), MDS, &r);
        assert_eq!(a.window(), b.window());
        assert_eq!(a.w_est, b.w_est);
        // An application-limited stretch with no idle in it.
        a.on_app_limited_ack(s(9000));
        a.on_ack(s(19_000), MDS, &r);
        b.on_ack(s(1500), MDS, &r);
        assert_eq!(a.window(), b.window());
    }

    #[test]
    fn idle_time_does_not_advance_the_curve() {
        let t0 = Instant::now();
        let r = rtt(100);
        let mut cc = Cubic::new(MDS, 100 * MDS);
        cc.on_congestion_event(t0, t0);
        cc.on_packet_sent(t0, 1);
        cc.on_ack(t0, MDS, &r);
        let before = cc.window();
        // Ten idle seconds, then a send with nothing in flight and an ACK.
        let later = t0 + Duration::from_secs(10);
        cc.on_packet_sent(later, 0);
        cc.on_ack(later, MDS, &r);
        // Without the shift t would be 10 s (far above W_max); with it the growth is tiny.
        assert!(cc.window() - before < MDS, "{} -> {}", before, cc.window());
    }
}
