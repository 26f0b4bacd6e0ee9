//! Round-trip time estimation (RFC 9002 §5).

use std::time::Duration;

/// Timer granularity assumed for the local clock and the peer's (RFC 9002 §6.1.2).
pub const GRANULARITY: Duration = Duration::from_millis(1);

/// Smoothed RTT, RTT variation and minimum RTT of one path.
#[derive(Clone, Debug)]
pub struct RttEstimator {
    latest: Duration,
    smoothed: Duration,
    rttvar: Duration,
    min: Duration,
    has_sample: bool,
    /// smoothed + max(4 × rttvar, kGranularity), kept with them: read several times per
    /// packet (PTO, idle deadline), changed once per RTT sample.
    pto_base: Duration,
}

impl RttEstimator {
    /// Before the first sample, `smoothed = initial_rtt` and `rttvar = initial_rtt / 2`
    /// (RFC 9002 §5.3); `min` and `latest` report `initial_rtt` too.
    pub fn new(initial_rtt: Duration) -> Self {
        let mut rtt = Self {
            latest: initial_rtt,
            smoothed: initial_rtt,
            rttvar: initial_rtt / 2,
            min: initial_rtt,
            has_sample: false,
            pto_base: Duration::ZERO,
        };
        rtt.set_pto_base();
        rtt
    }

    fn set_pto_base(&mut self) {
        self.pto_base = self
            .smoothed
            .saturating_add(self.rttvar.saturating_mul(4).max(GRANULARITY));
    }

    /// Feeds one RTT sample. `ack_delay` is the peer-reported delay (zero where it is to be
    /// ignored, e.g. Initial packets); it is capped at `max_ack_delay` once the handshake is
    /// confirmed and never subtracted below `min_rtt` (RFC 9002 §5.3).
    pub fn update(
        &mut self,
        latest: Duration,
        ack_delay: Duration,
        max_ack_delay: Duration,
        handshake_confirmed: bool,
    ) {
        self.latest = latest;
        if !self.has_sample {
            // RFC 9002 §5.3: the first sample initialises the estimator.
            self.has_sample = true;
            self.min = latest;
            self.smoothed = latest;
            self.rttvar = latest / 2;
            self.set_pto_base();
            return;
        }
        // RFC 9002 §5.2: min_rtt ignores ack delay.
        self.min = self.min.min(latest);
        let ack_delay = if handshake_confirmed {
            ack_delay.min(max_ack_delay)
        } else {
            ack_delay
        };
        let adjusted = match self.min.checked_add(ack_delay) {
            Some(floor) if latest >= floor => latest - ack_delay,
            _ => latest,
        };
        // RFC 9002 §5.3 in whole nanoseconds: shifts, where `Duration`'s `/ 4` and `/ 8`
        // are divisions on every acknowledgement.
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let (smoothed, adjusted) = (nanos(self.smoothed), nanos(adjusted));
        let sample_var = smoothed.abs_diff(adjusted);
        let rttvar = nanos(self.rttvar)
            .saturating_mul(3)
            .saturating_add(sample_var);
        self.rttvar = Duration::from_nanos(rttvar >> 2);
        self.smoothed =
            Duration::from_nanos(smoothed.saturating_mul(7).saturating_add(adjusted) >> 3);
        self.set_pto_base();
    }

    /// After persistent congestion, min_rtt starts again from the newest sample (RFC 9002
    /// §5.2), so an RTT that has grown for good does not keep declaring it.
    pub fn reset_min_to_latest(&mut self) {
        if self.has_sample {
            self.min = self.latest;
        }
    }

    pub fn smoothed(&self) -> Duration {
        self.smoothed
    }

    pub fn rttvar(&self) -> Duration {
        self.rttvar
    }

    pub fn min(&self) -> Duration {
        self.min
    }

    pub fn latest(&self) -> Duration {
        self.latest
    }

    pub fn has_sample(&self) -> bool {
        self.has_sample
    }

    /// `smoothed + max(4 * rttvar, kGranularity)` (RFC 9002 §6.2.1); the caller adds
    /// `max_ack_delay` for the application data space.
    pub fn pto_base(&self) -> Duration {
        self.pto_base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn initial_values_before_any_sample() {
        let rtt = RttEstimator::new(MS(333));
        assert!(!rtt.has_sample());
        assert_eq!(rtt.smoothed(), MS(333));
        assert_eq!(rtt.rttvar(), Duration::from_micros(166_500));
        // 333 + 4 * 166.5 = 999 ms
        assert_eq!(rtt.pto_base(), MS(999));
    }

    #[test]
    fn first_sample_then_smoothing_by_hand() {
        let mut rtt = RttEstimator::new(MS(333));
        rtt.update(MS(100), MS(0), MS(25), false);
        assert!(rtt.has_sample());
        assert_eq!(
            (rtt.smoothed(), rtt.rttvar(), rtt.min()),
            (MS(100), MS(50), MS(100))
        );

        // latest 140, ack_delay 20 (min 100 + 20 <= 140): adjusted 120.
        // rttvar = 3/4*50 + 1/4*|100-120| = 37.5 + 5 = 42.5; srtt = 7/8*100 + 1/8*120 = 102.5
        rtt.update(MS(140), MS(20), MS(25), true);
        assert_eq!(rtt.smoothed(), Duration::from_micros(102_500));
        assert_eq!(rtt.rttvar(), Duration::from_micros(42_500));
        assert_eq!(rtt.min(), MS(100));
        assert_eq!(rtt.latest(), MS(140));
        // pto_base = 102.5 + 4*42.5 = 272.5
        assert_eq!(rtt.pto_base(), Duration::from_micros(272_500));
    }

    #[test]
    fn ack_delay_capped_after_confirmation_only() {
        let mut a = RttEstimator::new(MS(333));
        let mut b = a.clone();
        a.update(MS(100), MS(0), MS(25), true);
        b.update(MS(100), MS(0), MS(25), false);
        // 200 - min(80, 25) = 175 when confirmed; 200 - 80 = 120 when not.
        a.update(MS(200), MS(80), MS(25), true);
        b.update(MS(200), MS(80), MS(25), false);
        // srtt = (700 + 175)/8 = 109.375 ; (700 + 120)/8 = 102.5
        assert_eq!(a.smoothed(), Duration::from_micros(109_375));
        assert_eq!(b.smoothed(), Duration::from_micros(102_500));
    }

    #[test]
    fn ack_delay_never_goes_below_min_rtt() {
        let mut rtt = RttEstimator::new(MS(333));
        rtt.update(MS(100), MS(0), MS(25), true);
        // 110 < min 100 + delay 20: the delay is not subtracted.
        rtt.update(MS(110), MS(20), MS(25), true);
        // srtt = (700 + 110)/8 = 101.25; rttvar = (150 + 10)/4 = 40
        assert_eq!(rtt.smoothed(), Duration::from_micros(101_250));
        assert_eq!(rtt.rttvar(), MS(40));
    }

    #[test]
    fn min_tracks_lowest_and_granularity_floors_pto() {
        let mut rtt = RttEstimator::new(MS(333));
        for _ in 0..200 {
            rtt.update(Duration::from_micros(50), Duration::ZERO, MS(25), true);
        }
        rtt.update(Duration::from_micros(40), Duration::ZERO, MS(25), true);
        assert_eq!(rtt.min(), Duration::from_micros(40));
        assert!(rtt.rttvar() * 4 < GRANULARITY);
        assert_eq!(rtt.pto_base(), rtt.smoothed() + GRANULARITY);
    }
}
