//! Header protection (RFC 9001 §5.4): masks over the first byte and the packet number.
//!
//! AES masks come from RustCrypto `aes` so a whole RX/TX batch of samples is encrypted
//! with one `encrypt_blocks` call (pipelined AES-NI/VAES); ChaCha20 follows §5.4.4.
use aes::cipher::{generic_array::GenericArray, BlockEncrypt, KeyInit};
use aes::{Aes128Enc, Aes256Enc};
use chacha20::cipher::{consts::U10, KeyIvInit, StreamCipherCore, StreamCipherSeekCore};
use chacha20::ChaChaCore;

use super::aead::{CryptoError, Suite};

/// Bytes of ciphertext sampled for the mask (RFC 9001 §5.4.2).
pub const SAMPLE_LEN: usize = 16;
/// The sample starts this far after the start of the packet number field (§5.4.2).
const SAMPLE_OFFSET: usize = 4;
/// Blocks encrypted per `encrypt_blocks` call when batching; enough to fill the pipeline.
const AES_CHUNK: usize = 32;

/// A header protection key. It never changes across key updates (RFC 9001 §6).
/// AES round keys are boxed: 700+ bytes inline would bloat every connection's key set.
pub enum HeaderKey {
    Aes128(Box<Aes128Enc>),
    Aes256(Box<Aes256Enc>),
    ChaCha20([u8; 32]),
}

impl std::fmt::Debug for HeaderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            HeaderKey::Aes128(_) => "Aes128",
            HeaderKey::Aes256(_) => "Aes256",
            HeaderKey::ChaCha20(_) => "ChaCha20",
        };
        f.debug_tuple("HeaderKey").field(&kind).finish()
    }
}

impl HeaderKey {
    /// Lengths come from our own key schedule; panics on a mismatch (a bug). See `try_new`.
    pub fn new(suite: Suite, key: &[u8]) -> Self {
        Self::try_new(suite, key).expect("header protection key length matches the suite")
    }

    pub fn try_new(suite: Suite, key: &[u8]) -> Result<Self, CryptoError> {
        if key.len() != suite.key_len() {
            return Err(CryptoError::InvalidKeyLength);
        }
        Ok(match suite {
            Suite::Aes128Gcm => HeaderKey::Aes128(Box::new(
                Aes128Enc::new_from_slice(key).map_err(|_| CryptoError::InvalidKeyLength)?,
            )),
            Suite::Aes256Gcm => HeaderKey::Aes256(Box::new(
                Aes256Enc::new_from_slice(key).map_err(|_| CryptoError::InvalidKeyLength)?,
            )),
            Suite::ChaCha20Poly1305 => {
                let mut k = [0u8; 32];
                k.copy_from_slice(key);
                HeaderKey::ChaCha20(k)
            }
        })
    }

    /// The 5-byte mask for one sample.
    pub fn mask(&self, sample: &[u8; SAMPLE_LEN]) -> [u8; 5] {
        let mut block = [*sample];
        self.masks_in_place(&mut block);
        let mut mask = [0u8; 5];
        mask.copy_from_slice(&block[0][..5]);
        mask
    }

    /// Batch: each 16-byte sample in `blocks` is replaced by its mask block (the first
    /// 5 bytes are the mask). AES encrypts up to `AES_CHUNK` blocks per call.
    pub fn masks_in_place(&self, blocks: &mut [[u8; SAMPLE_LEN]]) {
        match self {
            HeaderKey::Aes128(cipher) => aes_masks(&**cipher, blocks),
            HeaderKey::Aes256(cipher) => aes_masks(&**cipher, blocks),
            HeaderKey::ChaCha20(key) => {
                for block in blocks {
                    *block = chacha_mask_block(key, block);
                }
            }
        }
    }
}

/// RFC 9001 §5.4.3: mask = AES-ECB(hp_key, sample).
fn aes_masks<C>(cipher: &C, blocks: &mut [[u8; SAMPLE_LEN]])
where
    C: BlockEncrypt + aes::cipher::BlockSizeUser<BlockSize = aes::cipher::consts::U16>,
{
    if let [block] = blocks {
        // One sample (a connection unprotecting one packet): encrypt it where it lies
        // rather than staging a whole chunk.
        cipher.encrypt_block(GenericArray::from_mut_slice(&mut block[..]));
        return;
    }
    // `encrypt_blocks` wants GenericArray blocks; staging through a stack buffer keeps
    // this free of `unsafe` at the cost of two 16-byte copies per sample.
    let mut stage = [GenericArray::<u8, aes::cipher::consts::U16>::default(); AES_CHUNK];
    for chunk in blocks.chunks_mut(AES_CHUNK) {
        let stage = &mut stage[..chunk.len()];
        for (s, b) in stage.iter_mut().zip(chunk.iter()) {
            s.copy_from_slice(b);
        }
        cipher.encrypt_blocks(stage);
        for (s, b) in stage.iter().zip(chunk.iter_mut()) {
            b.copy_from_slice(s);
        }
    }
}

/// RFC 9001 §5.4.4: counter = sample[0..4] (little endian), nonce = sample[4..16],
/// mask = ChaCha20(hp_key, counter, nonce, {0,0,0,0,0}).
fn chacha_mask_block(key: &[u8; 32], sample: &[u8; SAMPLE_LEN]) -> [u8; SAMPLE_LEN] {
    let counter = u32::from_le_bytes([sample[0], sample[1], sample[2], sample[3]]);
    // The core block function, not the stream wrapper: the wrapper refuses (panics on)
    // counter 0xffffffff as "end of keystream", and the peer chooses the counter.
    let mut core = ChaChaCore::<U10>::new(key.into(), GenericArray::from_slice(&sample[4..]));
    core.set_block_pos(counter);
    let mut block = GenericArray::default();
    core.write_keystream_block(&mut block);
    let mut out = [0u8; SAMPLE_LEN];
    out.copy_from_slice(&block[..SAMPLE_LEN]);
    out
}

/// The header protection sample: 16 bytes starting 4 bytes after the packet number
/// offset (RFC 9001 §5.4.2). `None` if the packet is too short.
#[inline]
pub fn sample(packet: &[u8], pn_offset: usize) -> Option<[u8; SAMPLE_LEN]> {
    let start = pn_offset.checked_add(SAMPLE_OFFSET)?;
    let bytes = packet.get(start..start.checked_add(SAMPLE_LEN)?)?;
    bytes.try_into().ok()
}

/// Bits of the first byte covered by protection: 4 for long headers, 5 for short (§5.4.1).
#[inline]
fn first_byte_mask(first: u8) -> u8 {
    if first & 0x80 != 0 {
        0x0f
    } else {
        0x1f
    }
}

/// Applies protection after sealing: masks the first byte and the `pn_len` packet number
/// bytes. A packet too short for the given offsets is a caller bug: it is left untouched.
#[inline]
pub fn apply_mask(packet: &mut [u8], pn_offset: usize, pn_len: usize, mask: &[u8; 5]) {
    let valid = (1..=4).contains(&pn_len)
        && pn_offset >= 1
        && pn_offset
            .checked_add(pn_len)
            .is_some_and(|end| end <= packet.len());
    debug_assert!(valid, "apply_mask: packet shorter than its header");
    if !valid {
        return;
    }
    packet[0] ^= mask[0] & first_byte_mask(packet[0]);
    for (b, m) in packet[pn_offset..pn_offset + pn_len]
        .iter_mut()
        .zip(&mask[1..])
    {
        *b ^= m;
    }
}

/// Removes protection: unmasks the first byte, reads the packet number length from it and
/// unmasks that many bytes. Returns (pn_len, truncated pn), or `None` (packet unchanged)
/// if the packet is too short.
#[inline]
pub fn remove_mask(packet: &mut [u8], pn_offset: usize, mask: &[u8; 5]) -> Option<(usize, u64)> {
    let first = *packet.first()?;
    let first = first ^ (mask[0] & first_byte_mask(first));
    let pn_len = usize::from(first & 0x03) + 1;
    if pn_offset == 0 {
        return None;
    }
    let pn_bytes = packet.get_mut(pn_offset..pn_offset.checked_add(pn_len)?)?;
    let mut pn = 0u64;
    for (b, m) in pn_bytes.iter_mut().zip(&mask[1..]) {
        *b ^= m;
        pn = (pn << 8) | u64::from(*b);
    }
    packet[0] = first;
    Some((pn_len, pn))
}

/// Protects one sealed packet's header.
pub fn protect(
    key: &HeaderKey,
    packet: &mut [u8],
    pn_offset: usize,
    pn_len: usize,
) -> Result<(), CryptoError> {
    if !(1..=4).contains(&pn_len) || pn_offset == 0 {
        return Err(CryptoError::PacketTooShort);
    }
    let s = sample(packet, pn_offset).ok_or(CryptoError::PacketTooShort)?;
    apply_mask(packet, pn_offset, pn_len, &key.mask(&s));
    Ok(())
}

/// Removes header protection from one packet; returns (pn_len, truncated pn).
pub fn unprotect(
    key: &HeaderKey,
    packet: &mut [u8],
    pn_offset: usize,
) -> Result<(usize, u64), CryptoError> {
    let s = sample(packet, pn_offset).ok_or(CryptoError::PacketTooShort)?;
    remove_mask(packet, pn_offset, &key.mask(&s)).ok_or(CryptoError::PacketTooShort)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<HeaderKey> {
        Suite::ALL
            .iter()
            .map(|&s| {
                let k: Vec<u8> = (0..s.key_len() as u8).map(|i| i.wrapping_mul(7)).collect();
                HeaderKey::new(s, &k)
            })
            .collect()
    }

    #[test]
    fn batch_masks_equal_single_masks() {
        for key in keys() {
            // 70 samples: crosses the AES chunk boundary twice.
            let samples: Vec<[u8; 16]> = (0..70u8)
                .map(|i| std::array::from_fn(|j| i.wrapping_mul(31).wrapping_add(j as u8)))
                .collect();
            let mut batch = samples.clone();
            key.masks_in_place(&mut batch);
            for (s, b) in samples.iter().zip(&batch) {
                assert_eq!(key.mask(s), b[..5], "{key:?}");
                assert_ne!(&b[..5], &s[..5]);
            }
        }
    }

    /// Cross-check against aws-lc-rs's own QUIC header protection, including the
    /// ChaCha20 counter extremes a peer can choose.
    #[test]
    fn masks_match_aws_lc_rs() {
        use aws_lc_rs::aead::quic::{HeaderProtectionKey, AES_128, AES_256, CHACHA20};
        let algs = [&AES_128, &AES_256, &CHACHA20];
        let mut samples: Vec<[u8; 16]> = vec![[0; 16], [0xff; 16]];
        samples.push(std::array::from_fn(|i| if i < 4 { 0xff } else { i as u8 }));
        samples.extend((0..20u8).map(|i| std::array::from_fn(|j| i ^ (j as u8).wrapping_mul(37))));
        for (suite, alg) in Suite::ALL.into_iter().zip(algs) {
            let key: Vec<u8> = (0..suite.key_len() as u8).map(|i| i ^ 0x5a).collect();
            let ours = HeaderKey::new(suite, &key);
            let theirs = HeaderProtectionKey::new(alg, &key).unwrap();
            for s in &samples {
                match theirs.new_mask(s) {
                    Ok(mask) => assert_eq!(ours.mask(s), mask, "{suite:?} {s:02x?}"),
                    Err(e) => panic!("{suite:?} {s:02x?}: {e:?}"),
                }
            }
        }
    }

    #[test]
    fn chacha_counter_edges_do_not_panic() {
        let key = HeaderKey::new(Suite::ChaCha20Poly1305, &[3; 32]);
        let a = key.mask(&[0xff; 16]);
        let b = key.mask(&[0; 16]);
        assert_ne!(a, b);
    }

    #[test]
    fn protect_unprotect_round_trip_long_and_short() {
        for key in keys() {
            for (first, pn_offset) in [(0xc3u8, 18usize), (0x43, 9)] {
                let mut pkt: Vec<u8> = (0..60u8).collect();
                pkt[0] = first;
                pkt[pn_offset..pn_offset + 4].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
                let orig = pkt.clone();
                protect(&key, &mut pkt, pn_offset, 4).unwrap();
                assert_ne!(pkt, orig);
                let fixed = !first_byte_mask(first);
                assert_eq!(pkt[0] & fixed, first & fixed, "unprotected bits untouched");
                let (len, pn) = unprotect(&key, &mut pkt, pn_offset).unwrap();
                assert_eq!((len, pn), (4, 0xdeadbeef));
                assert_eq!(pkt, orig);
            }
        }
    }

    #[test]
    fn short_packets_are_errors_not_panics() {
        let key = &keys()[0];
        for len in 0..25 {
            let mut pkt = vec![0x41u8; len];
            let before = pkt.clone();
            assert_eq!(
                unprotect(key, &mut pkt, 5),
                Err(CryptoError::PacketTooShort)
            );
            assert_eq!(pkt, before);
            assert_eq!(
                protect(key, &mut pkt, 5, 2),
                Err(CryptoError::PacketTooShort)
            );
        }
        assert_eq!(remove_mask(&mut [], 1, &[0xff; 5]), None);
        assert_eq!(remove_mask(&mut [0x43, 1], 1, &[0; 5]), None);
        assert_eq!(sample(&[0; 40], usize::MAX), None);
        assert_eq!(
            protect(key, &mut [0x40; 40], usize::MAX, 4),
            Err(CryptoError::PacketTooShort)
        );
        let mut pkt = [0x40u8, 0, 0];
        assert_eq!(remove_mask(&mut pkt, usize::MAX, &[0; 5]), None);
    }

    proptest::proptest! {
        /// Hostile input: any bytes, any offset — an error or a result, never a panic.
        #[test]
        fn unprotect_and_open_never_panic(
            pkt in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
            pn_offset in 0usize..100,
        ) {
            let secret = crate::crypto::Secret::new(Suite::ChaCha20Poly1305, &[1; 32]);
            let keys = secret.keys(crate::crypto::VERSION_1);
            let mut pkt = pkt;
            if let Ok((pn_len, pn)) = unprotect(&keys.header, &mut pkt, pn_offset) {
                proptest::prop_assert!((1..=4).contains(&pn_len));
                let header_len = pn_offset + pn_len;
                proptest::prop_assert!(keys.packet.open_in_place(pn, &mut pkt, header_len).is_err());
            }
        }
    }
}
