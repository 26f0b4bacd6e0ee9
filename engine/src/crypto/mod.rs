//! Packet protection: initial secrets, AEAD, header protection, key update, Retry
//! integrity, stateless-reset and address-validation tokens.
//!
//! Receive flow for one packet (RFC 9001 §5):
//!
//! ```text
//! protected packet ──sample()──▶ HeaderKey::mask / masks_in_place (batched)
//!        │                                   │
//!        └────────── remove_mask() ◀─────────┘  → (pn_len, truncated pn)
//!                        │
//!             caller expands the pn (RFC 9000 §A.3)
//!                        │
//!           PacketKey::open_in_place(pn, packet, header_len) → plaintext frames
//! ```
//!
//! Send is the mirror image: `seal_in_place`, then `sample` + mask + `apply_mask`.
//! Keys come from [`secrets::initial_keys`] (Initial), the TLS session (Handshake,
//! 1-RTT as [`key_update::OneRttKeys`]).
pub mod aead;
pub mod header_protection;
pub mod hmac;
pub mod key_update;
pub mod retry;
pub mod secrets;
pub mod small_gcm;
pub mod tokens;

#[cfg(test)]
mod vectors;

pub use aead::{CryptoError, PacketKey, Suite, TAG_LEN};
pub use header_protection::{HeaderKey, SAMPLE_LEN};
pub use key_update::{KeyGeneration, KeyUpdateError, OneRttKeys};
pub use secrets::{initial_keys, DirectionalKeys, Keys, Secret};

/// Equality of secrets without an early exit on the first difference.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// QUIC version 1 (RFC 9000).
pub const VERSION_1: u32 = 0x0000_0001;
/// QUIC version 2 (RFC 9369 §3.1).
pub const VERSION_2: u32 = 0x6b33_43cf;
