//! Packet protection: initial secrets, AEAD, header protection, key update, Retry
//! integrity, stateless-reset and address-validation tokens.
pub mod aead;
pub mod header_protection;
pub mod key_update;
pub mod retry;
pub mod secrets;
pub mod tokens;
