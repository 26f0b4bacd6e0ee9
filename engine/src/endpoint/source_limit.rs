//! Handshakes per client address: a token bucket for each source (an IPv4 address, an
//! IPv6 /64), so one host cannot keep a worker busy with TLS handshakes.
//!
//! Only handshakes from addresses shown to be genuine take from a bucket: one whose client
//! proved its address (it completed the handshake's round trip, or came with a Retry or
//! NEW_TOKEN token). A forged source never gets that far, so nobody can empty someone
//! else's bucket by spoofing its address. An address whose bucket is empty must prove
//! itself before anything else: its Initials without a token get a Retry (stateless),
//! and with a valid token are refused with CONNECTION_REFUSED. Every over-limit handshake
//! so costs the server a packet or two, never a TLS handshake.
//!
//! The buckets live in a fixed table indexed by a keyed hash of the source: memory does
//! not grow with the number of sources. Two sources that share a slot share nothing: the
//! newer takes the slot with a full bucket, which errs towards letting clients in.
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

impl SourceLimit {
    pub fn check(&self) -> Result<(), String> {
        if !(self.per_second.is_finite() && self.per_second > 0.0) || self.burst == 0 {
            return Err(format!(
                "handshakes per source: a positive rate and burst, not {} a second and {}",
                self.per_second, self.burst
            ));
        }
        Ok(())
    }
}

/// Sources tracked at once per worker (a power of two): 32 bytes each, 256 KiB in all,
/// allocated only when a limit is set.
const SLOTS: usize = 1 << 13;

#[derive(Clone, Copy)]
struct Slot {
    /// Which source holds the slot (its keyed hash), 0 for none.
    tag: u64,
    tokens: f32,
    at: Option<Instant>,
}

pub struct HandshakeLimiter {
    limit: SourceLimit,
    slots: Box<[Slot]>,
    /// Keyed, so a client cannot pick addresses that share a slot with a victim's.
    hasher: foldhash::fast::RandomState,
}

impl HandshakeLimiter {
    pub fn new(limit: SourceLimit) -> Self {
        let empty = Slot {
            tag: 0,
            tokens: 0.0,
            at: None,
        };
        Self {
            limit,
            slots: vec![empty; SLOTS].into_boxed_slice(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// Whether `ip` has a handshake left now (none is taken).
    pub fn allows(&mut self, ip: IpAddr, now: Instant) -> bool {
        let (i, tag) = self.index(ip);
        let slot = self.slots[i];
        slot.tag != tag || self.refilled(slot, now) >= 1.0
    }

    /// Takes a handshake from `ip`'s bucket: one of its handshakes proved its address.
    pub fn take(&mut self, ip: IpAddr, now: Instant) {
        let (i, tag) = self.index(ip);
        let slot = self.slots[i];
        let tokens = if slot.tag == tag {
            self.refilled(slot, now)
        } else {
            self.limit.burst as f32
        };
        self.slots[i] = Slot {
            tag,
            tokens: (tokens - 1.0).max(0.0),
            at: Some(now),
        };
    }

    fn refilled(&self, slot: Slot, now: Instant) -> f32 {
        let elapsed = slot
            .at
            .map_or(0.0, |at| now.saturating_duration_since(at).as_secs_f64());
        (f64::from(slot.tokens) + elapsed * self.limit.per_second).min(f64::from(self.limit.burst))
            as f32
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
            assert!(l.allows(a, t0));
            l.take(a, t0);
        }
        assert!(!l.allows(a, t0), "burst spent");
        assert!(l.allows(b, t0), "another source is not affected");
        assert!(!l.allows(a, t0 + Duration::from_millis(400)));
        assert!(
            l.allows(a, t0 + Duration::from_millis(500)),
            "one back after 1/rate"
        );
        l.take(a, t0 + Duration::from_millis(500));
        assert!(!l.allows(a, t0 + Duration::from_millis(600)));
        assert!(
            l.allows(a, t0 + Duration::from_secs(60)),
            "refilled, up to the burst"
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
            !l.allows("2001:db8:1:2:ffff::9".parse().unwrap(), t0),
            "same /64"
        );
        assert!(
            l.allows("2001:db8:1:3::1".parse().unwrap(), t0),
            "another /64"
        );
        l.take("198.51.100.7".parse().unwrap(), t0);
        assert!(!l.allows("::ffff:198.51.100.7".parse().unwrap(), t0));
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
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
