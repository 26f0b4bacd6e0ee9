//! AEAD packet protection (RFC 9001 §5.3), sealing and opening in place: aws-lc-rs, and
//! for AES-GCM our own code, which skips aws-lc's fixed per-call cost (`small_gcm`): for
//! payloads of up to `SMALL_MAX` bytes, and of any length on CPUs with AVX-512 VAES.
use aws_lc_rs::aead::{
    Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305,
};

use super::small_gcm::SmallGcm;

/// Length of the AEAD authentication tag for every QUIC suite.
pub const TAG_LEN: usize = 16;
/// Length of the packet protection IV (RFC 9001 §5.3: at least 8 bytes; all TLS 1.3 suites use 12).
pub const IV_LEN: usize = 12;

/// The TLS 1.3 cipher suites QUIC can use (RFC 9001 §5.3; CCM is not offered).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Suite {
    Aes128Gcm,
    Aes256Gcm,
    ChaCha20Poly1305,
}

impl Suite {
    pub const ALL: [Suite; 3] = [Suite::Aes128Gcm, Suite::Aes256Gcm, Suite::ChaCha20Poly1305];

    /// AEAD key length; header protection keys have the same length (RFC 9001 §5.4.3, §5.4.4).
    pub fn key_len(self) -> usize {
        match self {
            Suite::Aes128Gcm => 16,
            Suite::Aes256Gcm | Suite::ChaCha20Poly1305 => 32,
        }
    }

    /// Output length of the suite's hash, i.e. the length of its traffic secrets.
    pub fn secret_len(self) -> usize {
        match self {
            Suite::Aes256Gcm => 48,
            Suite::Aes128Gcm | Suite::ChaCha20Poly1305 => 32,
        }
    }

    fn algorithm(self) -> &'static aws_lc_rs::aead::Algorithm {
        match self {
            Suite::Aes128Gcm => &AES_128_GCM,
            Suite::Aes256Gcm => &AES_256_GCM,
            Suite::ChaCha20Poly1305 => &CHACHA20_POLY1305,
        }
    }
}

/// Failures of packet protection.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum CryptoError {
    /// Authentication failed: forged, corrupted or protected with another key.
    #[error("decryption failed")]
    DecryptFailed,
    /// The buffer cannot hold the header, the payload and the tag.
    #[error("buffer too small")]
    BufferTooSmall,
    /// Too short to hold a header protection sample (RFC 9001 §5.4.2).
    #[error("packet too short for a header protection sample")]
    PacketTooShort,
    /// Key or IV length does not match the suite.
    #[error("invalid key length")]
    InvalidKeyLength,
}

/// One direction's AEAD key and IV for one key phase.
pub struct PacketKey {
    suite: Suite,
    /// aws-lc's key, for what our own code does not take: ChaCha20-Poly1305, and long
    /// AES-GCM payloads on CPUs without AVX-512 VAES. None where our code takes every
    /// length: setting it up cost about a microsecond per key, in every handshake.
    key: Option<LessSafeKey>,
    /// The same key for AES-GCM payloads our own code takes (`SmallGcm::max_payload`),
    /// where the CPU has AES-NI and PCLMULQDQ.
    /// Boxed: its round keys and powers of H are ~700 bytes.
    small: Option<Box<SmallGcm>>,
    iv: [u8; IV_LEN],
}

impl std::fmt::Debug for PacketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketKey")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl PacketKey {
    /// Builds a key. Lengths come from our own key schedule, so a mismatch is a bug:
    /// this panics on one; use [`PacketKey::try_new`] for untrusted lengths.
    pub fn new(suite: Suite, key: &[u8], iv: &[u8]) -> Self {
        Self::try_new(suite, key, iv).expect("packet key and IV lengths match the suite")
    }

    pub fn try_new(suite: Suite, key: &[u8], iv: &[u8]) -> Result<Self, CryptoError> {
        if key.len() != suite.key_len() {
            return Err(CryptoError::InvalidKeyLength);
        }
        let iv: [u8; IV_LEN] = iv.try_into().map_err(|_| CryptoError::InvalidKeyLength)?;
        let small = match suite {
            Suite::Aes128Gcm | Suite::Aes256Gcm => SmallGcm::new(key).map(Box::new),
            Suite::ChaCha20Poly1305 => None,
        };
        let key = match &small {
            Some(s) if s.max_payload() == usize::MAX => None,
            _ => Some(LessSafeKey::new(
                UnboundKey::new(suite.algorithm(), key)
                    .map_err(|_| CryptoError::InvalidKeyLength)?,
            )),
        };
        Ok(Self {
            suite,
            key,
            small,
            iv,
        })
    }

    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// RFC 9001 §5.3: the nonce is the IV XORed with the packet number, left-padded.
    #[inline]
    fn nonce_bytes(&self, pn: u64) -> [u8; IV_LEN] {
        let mut nonce = self.iv;
        for (n, p) in nonce[IV_LEN - 8..].iter_mut().zip(pn.to_be_bytes()) {
            *n ^= p;
        }
        nonce
    }

    #[inline]
    fn nonce(&self, pn: u64) -> Nonce {
        Nonce::assume_unique_for_key(self.nonce_bytes(pn))
    }

    /// Our own AES-GCM where it takes the payload: up to `SMALL_MAX` bytes, or any length
    /// on CPUs with AVX-512 VAES (`small_gcm::wide`).
    #[inline]
    fn small_for(&self, payload_len: usize) -> Option<&SmallGcm> {
        self.small
            .as_deref()
            .filter(|s| payload_len <= s.max_payload())
    }

    /// aws-lc's key, for a payload our own code does not take: it exists whenever there
    /// is such a payload (`try_new`).
    #[inline]
    fn aws_lc(&self) -> &LessSafeKey {
        self.key
            .as_ref()
            .expect("an aws-lc key where our own AES-GCM does not reach")
    }

    /// `packet` = header (AAD, `header_len` bytes) | plaintext | `TAG_LEN` bytes of room.
    /// Writes ciphertext and tag in place.
    pub fn seal_in_place(
        &self,
        pn: u64,
        packet: &mut [u8],
        header_len: usize,
    ) -> Result<(), CryptoError> {
        let body_end = packet
            .len()
            .checked_sub(TAG_LEN)
            .filter(|&end| end >= header_len)
            .ok_or(CryptoError::BufferTooSmall)?;
        if let Some(small) = self.small_for(body_end - header_len) {
            small.seal_in_place(&self.nonce_bytes(pn), packet, header_len);
            return Ok(());
        }
        let (header, rest) = packet.split_at_mut(header_len);
        let (payload, tag_out) = rest.split_at_mut(body_end - header_len);
        let tag = self
            .aws_lc()
            .seal_in_place_separate_tag(self.nonce(pn), Aad::from(&*header), payload)
            .map_err(|_| CryptoError::BufferTooSmall)?;
        tag_out.copy_from_slice(tag.as_ref());
        Ok(())
    }

    /// `packet` = header | ciphertext | tag. Decrypts in place; returns the plaintext
    /// length (`packet.len() - header_len - TAG_LEN`), which starts at `header_len`.
    pub fn open_in_place(
        &self,
        pn: u64,
        packet: &mut [u8],
        header_len: usize,
    ) -> Result<usize, CryptoError> {
        if header_len
            .checked_add(TAG_LEN)
            .is_none_or(|min| packet.len() < min)
        {
            return Err(CryptoError::DecryptFailed);
        }
        let payload_len = packet.len() - header_len - TAG_LEN;
        if let Some(small) = self.small_for(payload_len) {
            return if small.open_in_place(&self.nonce_bytes(pn), packet, header_len) {
                Ok(payload_len)
            } else {
                Err(CryptoError::DecryptFailed)
            };
        }
        let (header, body) = packet.split_at_mut(header_len);
        let plain = self
            .aws_lc()
            .open_in_place(self.nonce(pn), Aad::from(&*header), body)
            .map_err(|_| CryptoError::DecryptFailed)?;
        Ok(plain.len())
    }

    /// Packets this key may protect before a key update is required (RFC 9001 §6.6).
    pub fn confidentiality_limit(&self) -> u64 {
        match self.suite {
            Suite::Aes128Gcm | Suite::Aes256Gcm => 1 << 23,
            // Exceeds the number of possible packets (2^62); "can be disregarded".
            Suite::ChaCha20Poly1305 => u64::MAX,
        }
    }

    /// Failed decryptions tolerated across all keys of a connection (RFC 9001 §6.6).
    pub fn integrity_limit(&self) -> u64 {
        match self.suite {
            Suite::Aes128Gcm | Suite::Aes256Gcm => 1 << 52,
            Suite::ChaCha20Poly1305 => 1 << 36,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::small_gcm::SMALL_MAX;

    fn key(suite: Suite) -> PacketKey {
        let k: Vec<u8> = (0..suite.key_len() as u8).collect();
        PacketKey::new(suite, &k, &[7u8; 12])
    }

    #[test]
    fn round_trip_each_suite() {
        for suite in Suite::ALL {
            let k = key(suite);
            let header = [0x40u8, 1, 2, 3];
            let payload: Vec<u8> = (0..200u32).map(|i| i as u8).collect();
            let mut pkt = header.to_vec();
            pkt.extend_from_slice(&payload);
            pkt.extend_from_slice(&[0; TAG_LEN]);
            k.seal_in_place(42, &mut pkt, header.len()).unwrap();
            assert_ne!(&pkt[4..204], &payload[..], "{suite:?} encrypted");
            let n = k.open_in_place(42, &mut pkt, header.len()).unwrap();
            assert_eq!(n, payload.len());
            assert_eq!(&pkt[4..4 + n], &payload[..]);
        }
    }

    /// Both sides of `SMALL_MAX` (our 128-bit AES-GCM below; above, our wide code or
    /// aws-lc, by CPU) produce what aws-lc alone produces, for every suite.
    #[test]
    fn every_payload_length_matches_aws_lc() {
        for suite in Suite::ALL {
            let k: Vec<u8> = (0..suite.key_len() as u8).collect();
            let ours = PacketKey::new(suite, &k, &[7u8; 12]);
            let theirs = LessSafeKey::new(UnboundKey::new(suite.algorithm(), &k).unwrap());
            let header = [0x41u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14];
            for len in (0..=SMALL_MAX + 40).chain([1200, 1452 - 31]) {
                let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
                let mut pkt = [&header[..], &payload, &[0; TAG_LEN]].concat();
                ours.seal_in_place(99, &mut pkt, header.len()).unwrap();
                let mut body = payload.clone();
                let tag = theirs
                    .seal_in_place_separate_tag(ours.nonce(99), Aad::from(&header), &mut body)
                    .unwrap();
                assert_eq!(pkt[header.len()..], [&body[..], tag.as_ref()].concat());
                assert_eq!(ours.open_in_place(99, &mut pkt, header.len()), Ok(len));
                assert_eq!(&pkt[header.len()..header.len() + len], &payload[..]);
            }
        }
    }

    /// aws-lc's key is set up only where our own code leaves lengths to it.
    #[test]
    fn aws_lc_key_only_where_needed() {
        for suite in Suite::ALL {
            let k = key(suite);
            let ours_takes_all = k
                .small
                .as_ref()
                .is_some_and(|s| s.max_payload() == usize::MAX);
            assert_eq!(k.key.is_none(), ours_takes_all, "{suite:?}");
        }
        assert!(key(Suite::ChaCha20Poly1305).key.is_some());
    }

    #[test]
    fn tamper_is_rejected() {
        for suite in Suite::ALL {
            let k = key(suite);
            let mut pkt = vec![0x40, 9, 9, 9, 1, 2, 3, 4];
            pkt.extend_from_slice(&[0; TAG_LEN]);
            k.seal_in_place(5, &mut pkt, 4).unwrap();
            for i in [0, 5, pkt.len() - 1] {
                let mut bad = pkt.clone();
                bad[i] ^= 1;
                assert_eq!(
                    k.open_in_place(5, &mut bad, 4),
                    Err(CryptoError::DecryptFailed)
                );
            }
            let mut wrong_pn = pkt.clone();
            assert_eq!(
                k.open_in_place(6, &mut wrong_pn, 4),
                Err(CryptoError::DecryptFailed)
            );
            assert_eq!(k.open_in_place(5, &mut pkt, 4), Ok(4));
        }
    }

    #[test]
    fn short_buffers_are_errors() {
        let k = key(Suite::Aes128Gcm);
        let mut small = [0u8; 10];
        assert_eq!(
            k.seal_in_place(0, &mut small, 0),
            Err(CryptoError::BufferTooSmall)
        );
        assert_eq!(
            k.seal_in_place(0, &mut [0u8; 20], 5),
            Err(CryptoError::BufferTooSmall)
        );
        assert_eq!(
            k.open_in_place(0, &mut small, 0),
            Err(CryptoError::DecryptFailed)
        );
        assert_eq!(
            k.open_in_place(0, &mut [0u8; 20], 21),
            Err(CryptoError::DecryptFailed)
        );
        assert!(PacketKey::try_new(Suite::Aes256Gcm, &[0; 16], &[0; 12]).is_err());
        assert!(PacketKey::try_new(Suite::Aes128Gcm, &[0; 16], &[0; 8]).is_err());
    }

    #[test]
    fn limits_follow_rfc9001_6_6() {
        assert_eq!(key(Suite::Aes128Gcm).confidentiality_limit(), 1 << 23);
        assert_eq!(key(Suite::Aes256Gcm).integrity_limit(), 1 << 52);
        assert_eq!(key(Suite::ChaCha20Poly1305).integrity_limit(), 1 << 36);
    }
}
