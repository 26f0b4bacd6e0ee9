//! Round-trip time estimation (RFC 9002 §5).

use crate::Epoch;
use std::time::Duration;

/// Timer granularity assumed for the local clock and the peer's (RFC 9002 §6.1.2).
pub const GRANULARITY: Duration = Duration::from_millis(1);
/// RFC 9002 §7.6.1: kPersistentCongestionThreshold.
const PERSISTENT_CONGESTION_THRESHOLD: u32 = 3;
/// PTO backoff stops doubling here (2^16 PTOs is hours; the idle timeout ends it first).
const MAX_PTO_BACKOFF_EXP: u32 = 16;

/// `GRANULARITY` in nanoseconds.
const GRANULARITY_NANOS: u64 = GRANULARITY.as_nanos() as u64;

/// A duration in whole nanoseconds, saturated at `u64::MAX` (584 years).
fn nanos(d: Duration) -> u64 {
    // 64-bit arithmetic: `as_nanos` multiplies in 128 bits.
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}

/// Smoothed RTT, RTT variation and minimum RTT of one path.
///
/// Kept in whole nanoseconds (saturated at 584 years): the smoothing is shifts, and what
/// derives from the estimate (PTO periods, loss delay) is integer arithmetic, where
/// `Duration`'s is checked multiplications and divisions with normalisation.
#[derive(Clone, Debug)]
pub struct RttEstimator {
    latest: u64,
    smoothed: u64,
    rttvar: u64,
    min: u64,
    has_sample: bool,
}

impl RttEstimator {
    /// Before the first sample, `smoothed = initial_rtt` and `rttvar = initial_rtt / 2`
    /// (RFC 9002 §5.3); `min` and `latest` report `initial_rtt` too.
    pub fn new(initial_rtt: Duration) -> Self {
        let initial = nanos(initial_rtt);
        Self {
            latest: initial,
            smoothed: initial,
            rttvar: initial / 2,
            min: initial,
            has_sample: false,
        }
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
        self.update_nanos(
            nanos(latest),
            nanos(ack_delay),
            nanos(max_ack_delay),
            handshake_confirmed,
        );
    }

    /// `update` with every duration in nanoseconds.
    fn update_nanos(
        &mut self,
        latest: u64,
        ack_delay: u64,
        max_ack_delay: u64,
        handshake_confirmed: bool,
    ) {
        self.latest = latest;
        if !self.has_sample {
            // RFC 9002 §5.3: the first sample initialises the estimator.
            self.has_sample = true;
            self.min = latest;
            self.smoothed = latest;
            self.rttvar = latest / 2;
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
        // RFC 9002 §5.3: rttvar = 3/4 rttvar + 1/4 |smoothed - adjusted|,
        // smoothed = 7/8 smoothed + 1/8 adjusted.
        let sample_var = self.smoothed.abs_diff(adjusted);
        self.rttvar = self.rttvar.saturating_mul(3).saturating_add(sample_var) >> 2;
        self.smoothed = self.smoothed.saturating_mul(7).saturating_add(adjusted) >> 3;
    }

    /// After persistent congestion, min_rtt starts again from the newest sample (RFC 9002
    /// §5.2), so an RTT that has grown for good does not keep declaring it.
    pub fn reset_min_to_latest(&mut self) {
        if self.has_sample {
            self.min = self.latest;
        }
    }

    pub fn smoothed(&self) -> Duration {
        Duration::from_nanos(self.smoothed)
    }

    pub fn rttvar(&self) -> Duration {
        Duration::from_nanos(self.rttvar)
    }

    pub fn min(&self) -> Duration {
        Duration::from_nanos(self.min)
    }

    pub fn latest(&self) -> Duration {
        Duration::from_nanos(self.latest)
    }

    pub fn has_sample(&self) -> bool {
        self.has_sample
    }

    /// `smoothed + max(4 * rttvar, kGranularity)` (RFC 9002 §6.2.1); the caller adds
    /// `max_ack_delay` for the application data space.
    pub fn pto_base(&self) -> Duration {
        Duration::from_nanos(self.pto_base_nanos())
    }

    fn pto_base_nanos(&self) -> u64 {
        self.smoothed
            .saturating_add(self.rttvar.saturating_mul(4).max(GRANULARITY_NANOS))
    }

    /// The time threshold of loss detection: 9/8 × max(smoothed_rtt, latest_rtt), at least
    /// kGranularity (RFC 9002 §6.1.2).
    pub fn loss_delay(&self) -> Duration {
        let rtt = self.latest.max(self.smoothed);
        Duration::from_nanos(((rtt / 8).saturating_mul(9)).max(GRANULARITY_NANOS))
    }
}

/// The inputs of the PTO period (RFC 9002 §6.2.1) — the RTT estimate, the peer's
/// max_ack_delay and the backoff exponent (pto_count) — and the durations derived from them.
///
/// The derived durations are read several times per packet (loss detection timer, idle
/// deadline) and their inputs change at most once per ACK or PTO, so they are computed when
/// an input changes, in nanoseconds (saturated at 584 years). The inputs are private to
/// this module and every method that changes one recomputes them: they cannot go stale.
#[derive(Clone, Debug)]
pub struct Pto {
    rtt: RttEstimator,
    /// The peer's max_ack_delay, in nanoseconds.
    max_ack_delay: u64,
    count: u32,
    /// The PTO period, backoff included, of [Initial and Handshake, Data]; Data's includes
    /// max_ack_delay.
    period: [u64; 2],
}

impl Pto {
    pub fn new(initial_rtt: Duration, max_ack_delay: Duration) -> Self {
        let mut pto = Self {
            rtt: RttEstimator::new(initial_rtt),
            max_ack_delay: nanos(max_ack_delay),
            count: 0,
            period: [0; 2],
        };
        pto.derive();
        pto
    }

    /// Recomputes what derives from the inputs: called by every method that changes one.
    fn derive(&mut self) {
        let base = self.rtt.pto_base_nanos();
        // `d * 2^count`, with the exponent capped and the product saturated.
        let factor = 1u64 << self.count.min(MAX_PTO_BACKOFF_EXP);
        let data_base = base.saturating_add(self.max_ack_delay);
        self.period = [base, data_base].map(|d| d.saturating_mul(factor));
    }

    /// The Data space's PTO period without backoff: the base plus max_ack_delay.
    fn data_base(&self) -> u64 {
        self.rtt.pto_base_nanos().saturating_add(self.max_ack_delay)
    }

    pub fn rtt(&self) -> &RttEstimator {
        &self.rtt
    }

    /// Feeds one RTT sample (see `RttEstimator::update`).
    pub fn update_rtt(&mut self, latest: Duration, ack_delay: Duration, handshake_confirmed: bool) {
        self.rtt.update_nanos(
            nanos(latest),
            nanos(ack_delay),
            self.max_ack_delay,
            handshake_confirmed,
        );
        self.derive();
    }

    /// A new path: the estimate starts again from `initial_rtt` and the backoff from zero.
    pub fn reset(&mut self, initial_rtt: Duration) {
        self.rtt = RttEstimator::new(initial_rtt);
        self.count = 0;
        self.derive();
    }

    /// See `RttEstimator::reset_min_to_latest` (min_rtt is no input of the PTO).
    pub fn reset_min_rtt_to_latest(&mut self) {
        self.rtt.reset_min_to_latest();
    }

    pub fn set_max_ack_delay(&mut self, delay: Duration) {
        self.max_ack_delay = nanos(delay);
        self.derive();
    }

    /// The backoff exponent: PTOs fired since the last reset.
    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn set_count(&mut self, count: u32) {
        if count != self.count {
            self.count = count;
            self.derive();
        }
    }

    /// The PTO period of `epoch`, backoff included (RFC 9002 §6.2.1).
    pub fn period(&self, epoch: Epoch) -> Duration {
        Duration::from_nanos(self.period[usize::from(epoch == Epoch::Data)])
    }

    /// Three times `period(epoch)`, saturated: the idle timeout's floor (RFC 9000 §10.1),
    /// the closing and draining periods (§10.2).
    pub fn three_periods(&self, epoch: Epoch) -> Duration {
        Duration::from_nanos(self.period[usize::from(epoch == Epoch::Data)].saturating_mul(3))
    }

    /// The span of losses that declares persistent congestion: the Data PTO period without
    /// backoff, times kPersistentCongestionThreshold (RFC 9002 §7.6.1).
    pub fn persistent_congestion_duration(&self) -> Duration {
        Duration::from_nanos(
            self.data_base()
                .saturating_mul(u64::from(PERSISTENT_CONGESTION_THRESHOLD)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn nanos_saturate_like_the_128_bit_conversion() {
        for d in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::new(1, 999_999_999),
            Duration::from_nanos(u64::MAX),
            Duration::from_nanos(u64::MAX) + Duration::from_nanos(1),
            Duration::new(u64::MAX / 1_000_000_000, 999_999_999),
            Duration::MAX,
        ] {
            assert_eq!(
                nanos(d),
                u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
                "{d:?}"
            );
        }
    }

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

    /// The derived durations, as RFC 9002 §6.2.1 and §7.6.1 define them from the inputs.
    fn check_derived(pto: &Pto, max_ack_delay: Duration) {
        let base = pto.rtt().pto_base();
        let factor = 1u32 << pto.count().min(MAX_PTO_BACKOFF_EXP);
        assert_eq!(pto.period(Epoch::Initial), base * factor);
        assert_eq!(pto.period(Epoch::Handshake), base * factor);
        assert_eq!(pto.period(Epoch::Data), (base + max_ack_delay) * factor);
        for e in Epoch::ALL {
            assert_eq!(pto.three_periods(e), 3 * pto.period(e));
        }
        assert_eq!(
            pto.persistent_congestion_duration(),
            3 * (base + max_ack_delay)
        );
    }

    #[test]
    fn pto_periods_follow_every_input() {
        let mut pto = Pto::new(MS(333), MS(25));
        check_derived(&pto, MS(25));
        // 999 ms before any sample; Data adds max_ack_delay.
        assert_eq!(pto.period(Epoch::Handshake), MS(999));
        assert_eq!(pto.period(Epoch::Data), MS(1024));
        pto.update_rtt(MS(100), MS(0), false);
        check_derived(&pto, MS(25));
        pto.update_rtt(MS(140), MS(20), true);
        check_derived(&pto, MS(25));
        pto.set_max_ack_delay(MS(40));
        check_derived(&pto, MS(40));
        for count in [1, 2, 5, 16, 17, 40, 0] {
            pto.set_count(count);
            check_derived(&pto, MS(40));
        }
        pto.set_count(3);
        pto.reset_min_rtt_to_latest();
        check_derived(&pto, MS(40));
        pto.reset(MS(50));
        assert_eq!(pto.count(), 0);
        assert!(!pto.rtt().has_sample());
        check_derived(&pto, MS(40));
    }

    #[test]
    fn loss_delay_is_nine_eighths_of_the_larger_rtt_at_least_granularity() {
        let mut rtt = RttEstimator::new(MS(333));
        rtt.update(MS(80), MS(0), MS(25), true);
        rtt.update(MS(160), MS(0), MS(25), true);
        // latest 160 > smoothed 90: 9/8 * 160 = 180.
        assert_eq!(rtt.loss_delay(), MS(180));
        let mut tiny = RttEstimator::new(MS(333));
        tiny.update(Duration::from_micros(100), MS(0), MS(25), true);
        assert_eq!(tiny.loss_delay(), GRANULARITY);
    }
}
