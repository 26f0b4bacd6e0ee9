//! Handshakes per client address: a token bucket for each source (an IPv4 address, an
//! IPv6 /64), so one host cannot keep a worker busy with TLS handshakes.
//!
//! A handshake takes from its source's bucket once its client proves the address (it
//! completes the handshake's round trip, or came with a Retry or NEW_TOKEN token), so a
//! forged source cannot spend anyone's handshakes. Until then it counts as pending: a new
//! Initial without a token is taken only while the bucket holds more than the source's
//! pending handshakes, else it gets a Retry (stateless). A source can therefore run at most
//! about twice its bucket at once, finished or not (its pending ones, then as many again
//! back through Retry with its address proven). With a valid token (its
//! address proven), an Initial is refused with CONNECTION_REFUSED once the bucket is
//! empty. Forged Initials can raise a victim's pending count, which costs the victim a
//! Retry round trip, never a refusal. A burst taken at once is paid back: the bucket may
//! go into debt, down to minus the burst.
//!
//! The buckets live in a fixed table indexed by a keyed hash of the source: memory does
//! not grow with the number of sources. Two sources that share a slot share nothing: a
//! proven newcomer takes the slot with a full bucket, which errs towards letting clients
//! in; an unproven one takes it only if the holder's bucket is full and idle.
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::time::Instant;

/// A bucket's refill rate and size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SourceLimit {
    /// Handshakes a second each source gets back.
    pub per_second: f64,
    /// Handshakes a source may make at once.
    pub burst: u32,
}

/// The largest rate and burst taken: beyond them there is no limit to speak of.
pub const MAX_LIMIT: u32 = 1_000_000;

/// A rate or burst out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "handshakes per source: a rate above 0 and up to {MAX_LIMIT}, and a burst of 1 to \
     {MAX_LIMIT}, not {per_second} a second and {burst}"
)]
pub struct SourceLimitError {
    pub per_second: f64,
    pub burst: u32,
}

impl SourceLimit {
    pub fn check(&self) -> Result<(), SourceLimitError> {
        let rate_ok = self.per_second.is_finite()
            && self.per_second > 0.0
            && self.per_second <= f64::from(MAX_LIMIT);
        if !rate_ok || self.burst == 0 || self.burst > MAX_LIMIT {
            return Err(SourceLimitError {
                per_second: self.per_second,
                burst: self.burst,
            });
        }
        Ok(())
    }
}

/// Sources tracked at once per worker (a power of two): 40 bytes each, 320 KiB in all,
/// allocated only when a limit is set.
const SLOTS: usize = 1 << 13;

#[derive(Clone, Copy)]
struct Slot {
    /// Which source holds the slot (its keyed hash, never 0), 0 for none.
    tag: u64,
    /// Handshakes left, as of `at`; negative while a burst is paid back.
    tokens: f64,
    /// Its handshakes not yet proven (`begin_pending` minus `end_pending`).
    pending: u32,
    at: Option<Instant>,
}

const EMPTY: Slot = Slot {
    tag: 0,
    tokens: 0.0,
    pending: 0,
    at: None,
};

pub struct HandshakeLimiter {
    limit: SourceLimit,
    slots: Box<[Slot]>,
    /// Keyed, so a client cannot pick addresses that share a slot with a victim's.
    hasher: foldhash::fast::RandomState,
}

impl HandshakeLimiter {
    pub fn new(limit: SourceLimit) -> Self {
        Self {
            limit,
            slots: vec![EMPTY; SLOTS].into_boxed_slice(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// Whether a new handshake from `ip`, address not proven, may start now: the bucket
    /// holds more than the handshakes of `ip` already under way.
    pub fn allows_new(&self, ip: IpAddr, now: Instant) -> bool {
        let (i, tag) = self.index(ip);
        let slot = self.slots[i];
        slot.tag != tag || self.refilled(slot, now) - f64::from(slot.pending) >= 1.0
    }

    /// Whether a handshake from `ip` whose address is proven (a token) may start now.
    pub fn allows_proven(&self, ip: IpAddr, now: Instant) -> bool {
        let (i, tag) = self.index(ip);
        let slot = self.slots[i];
        slot.tag != tag || self.refilled(slot, now) >= 1.0
    }

    /// A handshake from `ip` started, its address not proven yet.
    pub fn begin_pending(&mut self, ip: IpAddr, now: Instant) {
        // An unproven source may be forged: it must not evict a source whose bucket is in
        // use, or a flood of forged Initials would wipe real hosts' debts. Left untracked,
        // it still waits for its proof, and `take` then charges it.
        if let Some(i) = self.claim(ip, now, false) {
            self.slots[i].pending = self.slots[i].pending.saturating_add(1);
        }
    }

    /// A pending handshake from `ip` is over: proven, or gone.
    pub fn end_pending(&mut self, ip: IpAddr) {
        let (i, tag) = self.index(ip);
        if self.slots[i].tag == tag {
            self.slots[i].pending = self.slots[i].pending.saturating_sub(1);
        }
    }

    /// Takes a handshake from `ip`'s bucket: one of its handshakes proved its address.
    pub fn take(&mut self, ip: IpAddr, now: Instant) {
        let Some(i) = self.claim(ip, now, true) else {
            return;
        };
        let burst = f64::from(self.limit.burst);
        self.slots[i].tokens = (self.slots[i].tokens - 1.0).max(-burst);
    }

    /// `ip`'s slot, refilled to `now`: a full bucket if another source held it, which is
    /// evicted only if `evict` or its bucket is full with nothing pending (`None` if not).
    fn claim(&mut self, ip: IpAddr, now: Instant, evict: bool) -> Option<usize> {
        let (i, tag) = self.index(ip);
        let slot = self.slots[i];
        let idle = slot.pending == 0 && self.refilled(slot, now) >= f64::from(self.limit.burst);
        if slot.tag != tag && slot.tag != 0 && !evict && !idle {
            return None;
        }
        self.slots[i] = if slot.tag == tag {
            Slot {
                tokens: self.refilled(slot, now),
                at: Some(now),
                ..slot
            }
        } else {
            Slot {
                tag,
                tokens: f64::from(self.limit.burst),
                pending: 0,
                at: Some(now),
            }
        };
        Some(i)
    }

    fn refilled(&self, slot: Slot, now: Instant) -> f64 {
        let elapsed = slot
            .at
            .map_or(0.0, |at| now.saturating_duration_since(at).as_secs_f64());
        (slot.tokens + elapsed * self.limit.per_second).min(f64::from(self.limit.burst))
    }

    /// The slot and tag of `ip`'s source: the whole IPv4 address, or the IPv6 /64 (a
    /// host's addresses come from one prefix, and it may have many).
    fn index(&self, ip: IpAddr) -> (usize, u64) {
        let source: u128 = match ip.to_canonical() {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => (u128::from(v6) >> 64) | (1 << 64),
        };
        let mut h = self.hasher.build_hasher();
        h.write_u128(source);
        let hash = h.finish();
        ((hash as usize) & (SLOTS - 1), hash | 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let mut l = HandshakeLimiter::new(SourceLimit {
            per_second: 2.0,
            burst: 3,
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.allows_new(a, t0));
            l.take(a, t0);
        }
        assert!(!l.allows_new(a, t0), "burst spent");
        assert!(l.allows_new(b, t0), "another source is not affected");
        assert!(!l.allows_new(a, t0 + Duration::from_millis(400)));
        assert!(
            l.allows_new(a, t0 + Duration::from_millis(500)),
            "one back after 1/rate"
        );
        l.take(a, t0 + Duration::from_millis(500));
        assert!(!l.allows_new(a, t0 + Duration::from_millis(600)));
        assert!(
            l.allows_new(a, t0 + Duration::from_secs(60)),
            "refilled, up to the burst"
        );
    }

    #[test]
    fn handshakes_under_way_count_and_a_burst_is_paid_back() {
        let mut l = HandshakeLimiter::new(SourceLimit {
            per_second: 1.0,
            burst: 2,
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        l.begin_pending(a, t0);
        assert!(l.allows_new(a, t0), "one of two under way");
        l.begin_pending(a, t0);
        assert!(
            !l.allows_new(a, t0),
            "two under way: the bucket is spoken for"
        );
        assert!(
            l.allows_proven(a, t0),
            "a proven address is not held back by them"
        );
        // A forged pair that never proves itself goes away: nothing was taken.
        l.end_pending(a);
        l.end_pending(a);
        assert!(l.allows_new(a, t0));
        // Four proven at once: two from the bucket, two owed.
        for _ in 0..4 {
            l.take(a, t0);
        }
        assert!(
            !l.allows_proven(a, t0 + Duration::from_millis(2500)),
            "still owing"
        );
        assert!(l.allows_proven(a, t0 + Duration::from_millis(3000)));
    }

    #[test]
    fn unproven_sources_do_not_evict_a_bucket_in_use() {
        let mut l = HandshakeLimiter::new(SourceLimit {
            per_second: 0.001,
            burst: 1,
        });
        let t0 = Instant::now();
        let host: IpAddr = "192.0.2.1".parse().unwrap();
        l.take(host, t0);
        assert!(!l.allows_proven(host, t0));
        // Forged Initials from every address of a /16: some share the host's slot.
        for i in 0..=u16::MAX {
            let forged = IpAddr::from([10, 0, (i >> 8) as u8, i as u8]);
            l.begin_pending(forged, t0);
        }
        assert!(
            !l.allows_proven(host, t0),
            "the host's debt survives the flood"
        );
    }

    #[test]
    fn an_ipv6_host_is_its_64_and_mapped_ipv4_is_ipv4() {
        let mut l = HandshakeLimiter::new(SourceLimit {
            per_second: 0.001,
            burst: 1,
        });
        let t0 = Instant::now();
        l.take("2001:db8:1:2::1".parse().unwrap(), t0);
        assert!(
            !l.allows_new("2001:db8:1:2:ffff::9".parse().unwrap(), t0),
            "same /64"
        );
        assert!(
            l.allows_new("2001:db8:1:3::1".parse().unwrap(), t0),
            "another /64"
        );
        l.take("198.51.100.7".parse().unwrap(), t0);
        assert!(!l.allows_new("::ffff:198.51.100.7".parse().unwrap(), t0));
    }

    #[test]
    fn limits_are_checked() {
        let ok = SourceLimit {
            per_second: 0.5,
            burst: 1,
        };
        assert!(ok.check().is_ok());
        for bad in [
            SourceLimit { burst: 0, ..ok },
            SourceLimit {
                per_second: 0.0,
                ..ok
            },
            SourceLimit {
                per_second: f64::NAN,
                ..ok
            },
            SourceLimit {
                burst: MAX_LIMIT + 1,
                ..ok
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
