//! Retry Integrity Tag (RFC 9001 §5.8; version 2 key and nonce from RFC 9369 §3.3.3).
//!
//! The tag is AES-128-GCM over an empty plaintext whose AAD is the Retry pseudo-packet:
//! ODCID length (1 byte) | ODCID | Retry packet without its tag.
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};

use super::aead::TAG_LEN;
use super::VERSION_2;

const KEY_V1: [u8; 16] = [
    0xbe, 0x0c, 0x69, 0x0b, 0x9f, 0x66, 0x57, 0x5a, 0x1d, 0x76, 0x6b, 0x54, 0xe3, 0x68, 0xc8, 0x4e,
];
const NONCE_V1: [u8; 12] = [
    0x46, 0x15, 0x99, 0xd3, 0x5d, 0x63, 0x2b, 0xf2, 0x23, 0x98, 0x25, 0xbb,
];
const KEY_V2: [u8; 16] = [
    0x8f, 0xb4, 0xb0, 0x1b, 0x56, 0xac, 0x48, 0xe2, 0x60, 0xfb, 0xcb, 0xce, 0xad, 0x7c, 0xcc, 0x92,
];
const NONCE_V2: [u8; 12] = [
    0xd8, 0x69, 0x69, 0xbc, 0x2d, 0x7c, 0x6d, 0x99, 0x90, 0xef, 0xb0, 0x4a,
];

/// Pseudo-packets up to this size are assembled on the stack.
const STACK_PSEUDO: usize = 512;

fn key_and_nonce(version: u32) -> (LessSafeKey, Nonce) {
    let (key, nonce) = if version == VERSION_2 {
        (&KEY_V2, NONCE_V2)
    } else {
        (&KEY_V1, NONCE_V1)
    };
    let key = UnboundKey::new(&AES_128_GCM, key).expect("AES-128 key is 16 bytes");
    (LessSafeKey::new(key), Nonce::assume_unique_for_key(nonce))
}

/// Runs `f` over the pseudo-packet; `None` if the ODCID is longer than a length byte allows.
fn with_pseudo<R>(
    original_dcid: &[u8],
    retry_without_tag: &[u8],
    f: impl FnOnce(&[u8]) -> R,
) -> Option<R> {
    let odcid_len = u8::try_from(original_dcid.len()).ok()?;
    let total = 1 + original_dcid.len() + retry_without_tag.len();
    let fill = |buf: &mut [u8]| {
        buf[0] = odcid_len;
        buf[1..1 + original_dcid.len()].copy_from_slice(original_dcid);
        buf[1 + original_dcid.len()..].copy_from_slice(retry_without_tag);
    };
    if total <= STACK_PSEUDO {
        let mut buf = [0u8; STACK_PSEUDO];
        fill(&mut buf[..total]);
        Some(f(&buf[..total]))
    } else {
        let mut buf = vec![0u8; total];
        fill(&mut buf);
        Some(f(&buf))
    }
}

/// The Retry Integrity Tag for a Retry packet (everything but the tag) answering a client
/// Initial whose Destination Connection ID was `original_dcid`. Unknown versions use v1.
/// An ODCID over 255 bytes cannot be encoded; it is truncated to 255 (never valid QUIC).
pub fn retry_integrity_tag(
    version: u32,
    original_dcid: &[u8],
    retry_without_tag: &[u8],
) -> [u8; TAG_LEN] {
    let odcid = &original_dcid[..original_dcid.len().min(255)];
    let (key, nonce) = key_and_nonce(version);
    with_pseudo(odcid, retry_without_tag, |aad| {
        let tag = key
            .seal_in_place_separate_tag(nonce, Aad::from(aad), &mut [])
            .expect("sealing an empty plaintext cannot fail");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    })
    .unwrap_or([0; TAG_LEN])
}

/// Checks the tag at the end of a received Retry packet (constant time via AEAD open).
pub fn verify_retry(version: u32, original_dcid: &[u8], retry_packet: &[u8]) -> bool {
    let Some(split) = retry_packet.len().checked_sub(TAG_LEN) else {
        return false;
    };
    let (body, tag) = retry_packet.split_at(split);
    let (key, nonce) = key_and_nonce(version);
    let mut tag_buf = [0u8; TAG_LEN];
    tag_buf.copy_from_slice(tag);
    with_pseudo(original_dcid, body, |aad| {
        key.open_in_place(nonce, Aad::from(aad), &mut tag_buf)
            .is_ok()
    })
    .unwrap_or(false)
}
