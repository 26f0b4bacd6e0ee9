//! NEW_TOKEN tokens already redeemed, so each validates an address once (RFC 9000 §8.1.4:
//! such tokens "SHOULD NOT be accepted multiple times"). A token travels in clear in the
//! client's Initial; without this, anyone who saw it could spoof the client's address with
//! it until it expires and have us send whole handshake flights there, past the 3× limit.
//!
//! Tokens are keyed by their nonce (random, and authenticated by the token's AEAD, so a
//! peer cannot choose it). Entries go once the token has expired in any case (its
//! lifetime after it was first redeemed) or, beyond `capacity`, oldest first: replay is then
//! limited, not prevented, for tokens older than the last `capacity` redeemed. Each worker
//! keeps its own, so a token replayed to another worker's socket is taken there once more.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, SystemTime};

use crate::crypto::tokens::TokenNonce;

#[derive(Debug)]
pub struct RedeemedTokens {
    seen: HashSet<TokenNonce>,
    /// Redemption order, for expiry and eviction.
    order: VecDeque<(TokenNonce, SystemTime)>,
    capacity: usize,
}

impl RedeemedTokens {
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Records the token with `nonce` as redeemed `now`; false if it already was (a replay).
    /// `lifetime`: how long a token stays valid.
    pub fn redeem(&mut self, nonce: TokenNonce, now: SystemTime, lifetime: Duration) -> bool {
        while let Some(&(old, at)) = self.order.front() {
            let expired = now.duration_since(at).is_ok_and(|age| age >= lifetime);
            if !expired && self.order.len() < self.capacity {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&old);
        }
        if !self.seen.insert(nonce) {
            return false;
        }
        self.order.push_back((nonce, now));
        true
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_redeemed_once_until_it_expires_or_is_evicted() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(86_400);
        let mut r = RedeemedTokens::new(3);
        assert!(r.redeem([1; 12], t0, day));
        assert!(
            !r.redeem([1; 12], t0 + Duration::from_secs(60), day),
            "replay"
        );
        // Expired tokens are forgotten (the token check refuses them anyway).
        assert!(r.redeem([2; 12], t0 + day, day));
        assert!(r.redeem([1; 12], t0 + day, day), "forgotten once expired");
        // Beyond the capacity, the oldest goes.
        assert!(r.redeem([3; 12], t0 + day, day));
        assert!(r.redeem([4; 12], t0 + day, day));
        assert_eq!(r.len(), 3);
        assert!(r.redeem([2; 12], t0 + day, day), "evicted");
        assert!(!r.redeem([4; 12], t0 + day, day));
    }
}
