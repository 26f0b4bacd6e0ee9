//! NEW_TOKEN tokens already redeemed, so each validates an address once (RFC 9000 §8.1.4:
//! such tokens "SHOULD NOT be accepted multiple times"). A token travels in clear in the
//! client's Initial; without this, anyone who saw it could spoof the client's address with
//! it until it expires and have us send whole handshake flights there, past the 3× limit.
//!
//! One record serves every worker of a server (an `Arc` in `EndpointConfig`), so a copy
//! sent to another worker's socket is caught too. It is lock-free: an open-addressing
//! table of 64-bit fingerprints of the tokens' nonces, inserted by compare-and-swap. A
//! nonce is random and authenticated by the token's AEAD, so a peer can neither choose it
//! nor aim at a slot, and its first bytes make a fingerprint as good as a hash. When a
//! token's neighbourhood of slots is full, it replaces one: beyond the table's size, replay
//! is limited, not prevented, for tokens redeemed long before. Expired tokens need no
//! removal: the token check refuses them anyway.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::crypto::tokens::TokenNonce;

/// Slots a token may take, from the one its fingerprint names.
const PROBE: usize = 8;
/// A slot holds a 48-bit fingerprint above a 16-bit generation.
const GEN_BITS: u32 = 16;
const GEN_MASK: u64 = (1 << GEN_BITS) - 1;

#[derive(Debug)]
pub struct RedeemedTokens {
    /// `fingerprint << 16 | generation`; 0 is an empty slot (fingerprints are never 0).
    slots: Box<[AtomicU64]>,
    mask: usize,
    /// Tokens recorded; a generation is 1/16 of the table's size of them, so a full
    /// neighbourhood gives up its oldest.
    recorded: AtomicU64,
    gen_shift: u32,
}

impl RedeemedTokens {
    /// `capacity` slots (rounded up to a power of two, at least 16 × `PROBE`), 8 bytes each.
    /// Until a quarter of them are taken every replay is caught; later, a token's slot goes
    /// only to a newer token of its neighbourhood, so recent tokens stay caught.
    pub fn new(capacity: usize) -> Self {
        let n = capacity.max(16 * PROBE).next_power_of_two();
        Self {
            slots: (0..n).map(|_| AtomicU64::new(0)).collect(),
            mask: n - 1,
            recorded: AtomicU64::new(0),
            gen_shift: n.trailing_zeros() - 4,
        }
    }

    /// Records the token with `nonce` as redeemed; false if it already was (a replay).
    /// Safe to call from every worker at once: of two racing redemptions of one token,
    /// exactly one is first.
    pub fn redeem(&self, nonce: &TokenNonce) -> bool {
        let f = fingerprint(nonce);
        let start = (f >> 8) as usize;
        let gen = (self.recorded.load(Ordering::Relaxed) >> self.gen_shift) & GEN_MASK;
        let new = f << GEN_BITS | gen;
        // A few rounds at most: each retry follows another worker's store in this
        // neighbourhood.
        for _ in 0..4 {
            let mut oldest: Option<(usize, u64, u64)> = None;
            for i in 0..PROBE {
                let at = (start + i) & self.mask;
                let v = self.slots[at].load(Ordering::Acquire);
                if v == 0 {
                    match self.slots[at].compare_exchange(
                        0,
                        new,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return self.recorded_one(),
                        Err(v) if v >> GEN_BITS == f => return false,
                        Err(_) => continue,
                    }
                }
                if v >> GEN_BITS == f {
                    return false;
                }
                let age = gen.wrapping_sub(v & GEN_MASK) & GEN_MASK;
                if oldest.is_none_or(|(_, _, a)| age > a) {
                    oldest = Some((at, v, age));
                }
            }
            // A full neighbourhood: this token takes its oldest slot.
            if let Some((at, v, _)) = oldest {
                if self.slots[at]
                    .compare_exchange(v, new, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return self.recorded_one();
                }
            }
        }
        // Contended past reason: count it redeemed rather than refuse a real client.
        true
    }

    fn recorded_one(&self) -> bool {
        self.recorded.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Slots in the table.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }
}

/// A nonzero 48-bit fingerprint of a (random, authenticated) nonce.
fn fingerprint(nonce: &TokenNonce) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&nonce[..8]);
    let mut b = [0u8; 4];
    b.copy_from_slice(&nonce[8..12]);
    let mixed = u64::from_le_bytes(a) ^ u64::from(u32::from_le_bytes(b)).rotate_left(40);
    (mixed >> GEN_BITS) | 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn nonce(i: u32) -> TokenNonce {
        let mut n = [0u8; 12];
        // Spread like random nonces: a multiplicative hash of i.
        n[..8].copy_from_slice(&(u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes());
        n[8..].copy_from_slice(&i.to_le_bytes());
        n
    }

    #[test]
    fn a_token_is_redeemed_once() {
        let r = RedeemedTokens::new(1024);
        assert!(r.redeem(&nonce(1)));
        assert!(!r.redeem(&nonce(1)), "replay");
        assert!(r.redeem(&nonce(2)));
        assert_eq!(r.capacity(), 1024);
    }

    /// A quarter full, neighbourhoods of eight slots never overflow: every replay is caught.
    #[test]
    fn up_to_a_quarter_of_its_size_every_replay_is_caught() {
        let r = RedeemedTokens::new(4096);
        for i in 0..1024 {
            assert!(r.redeem(&nonce(i)), "{i}");
        }
        let replays = (0..1024).filter(|&i| !r.redeem(&nonce(i))).count();
        assert_eq!(replays, 1024);
        // Far beyond it, old tokens are forgotten, but the last quarter's are all caught.
        for i in 1024..40_000 {
            assert!(r.redeem(&nonce(i)), "{i}");
        }
        let recent = (39_000..40_000).filter(|&i| !r.redeem(&nonce(i))).count();
        assert_eq!(recent, 1000, "of the last 1000");
        let old = (0..1000).filter(|&i| !r.redeem(&nonce(i))).count();
        assert!(old < 1000, "{old}: the table holds 4096");
    }

    /// Workers racing to redeem the same tokens: each is accepted exactly once.
    #[test]
    fn racing_workers_accept_each_token_once() {
        let r = Arc::new(RedeemedTokens::new(1 << 14));
        let accepted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let r = Arc::clone(&r);
                    s.spawn(move || (0..4000).filter(|&i| r.redeem(&nonce(i))).count())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(accepted, 4000);
    }
}
