//! Traffic secrets and the QUIC key schedule: HKDF-Expand-Label (RFC 8446 §7.1),
//! packet/header keys (RFC 9001 §5.1), Initial secrets (§5.2), key update (§6.1), with
//! the version 2 salt and labels (RFC 9369 §3.3).
use std::sync::OnceLock;

use super::aead::{PacketKey, Suite, IV_LEN};
use super::header_protection::HeaderKey;
use super::hmac::{HmacHash, HmacKey};
use super::VERSION_2;
use crate::Side;

/// Longest secret: SHA-384 output.
const MAX_SECRET_LEN: usize = 48;

/// RFC 9001 §5.2.
pub(crate) const INITIAL_SALT_V1: [u8; 20] = [
    0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad,
    0xcc, 0xbb, 0x7f, 0x0a,
];
/// RFC 9369 §3.3.1.
pub(crate) const INITIAL_SALT_V2: [u8; 20] = [
    0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93, 0x81, 0xbe, 0x6e, 0x26, 0x9d, 0xcb,
    0xf9, 0xbd, 0x2e, 0xd9,
];

/// The HKDF labels that differ between versions (RFC 9369 §3.3.2).
struct Labels {
    key: &'static [u8],
    iv: &'static [u8],
    hp: &'static [u8],
    ku: &'static [u8],
}

const LABELS_V1: Labels = Labels {
    key: b"quic key",
    iv: b"quic iv",
    hp: b"quic hp",
    ku: b"quic ku",
};
const LABELS_V2: Labels = Labels {
    key: b"quicv2 key",
    iv: b"quicv2 iv",
    hp: b"quicv2 hp",
    ku: b"quicv2 ku",
};

/// Unknown versions use the version 1 schedule (we only ever negotiate v1 or v2).
fn labels(version: u32) -> &'static Labels {
    if version == VERSION_2 {
        &LABELS_V2
    } else {
        &LABELS_V1
    }
}

fn initial_salt(version: u32) -> &'static [u8; 20] {
    if version == VERSION_2 {
        &INITIAL_SALT_V2
    } else {
        &INITIAL_SALT_V1
    }
}

fn hmac_hash(suite: Suite) -> HmacHash {
    match suite {
        Suite::Aes256Gcm => HmacHash::Sha384,
        Suite::Aes128Gcm | Suite::ChaCha20Poly1305 => HmacHash::Sha256,
    }
}

/// Longest label we expand ("quicv2 key"), plus the "tls13 " prefix.
const MAX_FULL_LABEL: usize = 6 + 10;

/// HKDF-Expand (RFC 5869 §2.3) from one pseudorandom key, for outputs of at most one hash
/// length, so `OKM = T(1) = HMAC(PRK, info | 0x01)`. The HMAC key schedule (the inner and
/// outer pad blocks) is computed once here and reused for every label, so each expansion
/// costs two hash blocks instead of the four a fresh HKDF-Expand call pays, and none of
/// the per-call context setup and cleansing of a general-purpose HMAC.
struct Expander(HmacKey);

impl Expander {
    fn new(hash: HmacHash, prk: &[u8]) -> Self {
        Self(HmacKey::new(hash, prk))
    }

    /// HKDF-Expand-Label(prk, label, "", out.len()) per RFC 8446 §7.1 with the "tls13 "
    /// prefix. `out` is at most one hash length and `label` at most 10 bytes: both hold
    /// for every QUIC label, and a violation is a bug in this module (checked in tests).
    fn expand_label(&self, label: &[u8], out: &mut [u8]) {
        const PREFIX: &[u8] = b"tls13 ";
        debug_assert!(PREFIX.len() + label.len() <= MAX_FULL_LABEL);
        debug_assert!(out.len() <= self.0.hash().output_len());
        // HkdfLabel { uint16 length; opaque label<7..255>; opaque context<0..255> = "" }
        // followed by the HKDF-Expand block counter 0x01.
        let mut info = [0u8; 2 + 1 + MAX_FULL_LABEL + 2];
        info[..2].copy_from_slice(&(out.len() as u16).to_be_bytes());
        info[2] = (PREFIX.len() + label.len()) as u8;
        let mut n = 3;
        info[n..n + PREFIX.len()].copy_from_slice(PREFIX);
        n += PREFIX.len();
        info[n..n + label.len()].copy_from_slice(label);
        n += label.len();
        info[n] = 0; // empty context
        info[n + 1] = 1; // T(1)
        n += 2;
        let tag = self.0.sign(&[&info[..n]]);
        out.copy_from_slice(&tag.as_ref()[..out.len()]);
    }
}

/// HMAC keys for the Initial salts (RFC 9001 §5.2, RFC 9369 §3.3.1), keyed once per process.
fn initial_salt_key(version: u32) -> &'static HmacKey {
    static V1: OnceLock<HmacKey> = OnceLock::new();
    static V2: OnceLock<HmacKey> = OnceLock::new();
    let cell = if version == VERSION_2 { &V2 } else { &V1 };
    cell.get_or_init(|| HmacKey::new(HmacHash::Sha256, initial_salt(version)))
}

/// A TLS traffic secret with its cipher suite; the root of one direction's keys.
#[derive(Clone)]
pub struct Secret {
    suite: Suite,
    len: u8,
    bytes: [u8; MAX_SECRET_LEN],
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // Best effort wipe without `unsafe`; black_box keeps the store from being elided.
        self.bytes.fill(0);
        std::hint::black_box(&self.bytes);
    }
}

impl Secret {
    /// `bytes` longer than 48 are truncated; a length other than the suite's hash length
    /// yields keys that interoperate with nobody, so callers pass what TLS produced.
    pub fn new(suite: Suite, bytes: &[u8]) -> Self {
        let len = bytes.len().min(MAX_SECRET_LEN);
        let mut buf = [0u8; MAX_SECRET_LEN];
        buf[..len].copy_from_slice(&bytes[..len]);
        Self {
            suite,
            len: len as u8,
            bytes: buf,
        }
    }

    pub fn suite(&self) -> Suite {
        self.suite
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    fn expander(&self) -> Expander {
        Expander::new(hmac_hash(self.suite), self.as_bytes())
    }

    fn packet_key_from(&self, expander: &Expander, labels: &Labels) -> PacketKey {
        let mut key = [0u8; 32];
        let key = &mut key[..self.suite.key_len()];
        let mut iv = [0u8; IV_LEN];
        expander.expand_label(labels.key, key);
        expander.expand_label(labels.iv, &mut iv);
        PacketKey::new(self.suite, key, &iv)
    }

    fn header_key_from(&self, expander: &Expander, labels: &Labels) -> HeaderKey {
        let mut key = [0u8; 32];
        let key = &mut key[..self.suite.key_len()];
        expander.expand_label(labels.hp, key);
        HeaderKey::new(self.suite, key)
    }

    fn next_from(&self, expander: &Expander, labels: &Labels) -> Secret {
        let mut out = [0u8; MAX_SECRET_LEN];
        let len = self.suite.secret_len();
        expander.expand_label(labels.ku, &mut out[..len]);
        Secret::new(self.suite, &out[..len])
    }

    /// RFC 9001 §5.1: AEAD key and IV from "quic key" / "quic iv".
    pub fn packet_key(&self, version: u32) -> PacketKey {
        self.packet_key_from(&self.expander(), labels(version))
    }

    /// RFC 9001 §5.1: header protection key from "quic hp".
    pub fn header_key(&self, version: u32) -> HeaderKey {
        self.header_key_from(&self.expander(), labels(version))
    }

    /// RFC 9001 §6.1: the next generation's secret from "quic ku".
    pub fn next(&self, version: u32) -> Secret {
        self.next_from(&self.expander(), labels(version))
    }

    /// Raw (key, iv, hp) bytes, for checking the schedule against published vectors.
    #[cfg(test)]
    pub(crate) fn raw_keys(&self, version: u32) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let labels = labels(version);
        let expander = self.expander();
        let mut key = vec![0u8; self.suite.key_len()];
        let mut iv = vec![0u8; IV_LEN];
        let mut hp = vec![0u8; self.suite.key_len()];
        expander.expand_label(labels.key, &mut key);
        expander.expand_label(labels.iv, &mut iv);
        expander.expand_label(labels.hp, &mut hp);
        (key, iv, hp)
    }

    /// Both keys for this direction, from one HMAC key schedule.
    pub fn keys(&self, version: u32) -> DirectionalKeys {
        let labels = labels(version);
        let expander = self.expander();
        DirectionalKeys {
            packet: self.packet_key_from(&expander, labels),
            header: self.header_key_from(&expander, labels),
        }
    }

    /// Both keys for this direction and the next generation's secret (§6.1), from one
    /// HMAC key schedule: what the 1-RTT receive direction needs.
    pub fn keys_and_next(&self, version: u32) -> (DirectionalKeys, Secret) {
        let labels = labels(version);
        let expander = self.expander();
        let keys = DirectionalKeys {
            packet: self.packet_key_from(&expander, labels),
            header: self.header_key_from(&expander, labels),
        };
        (keys, self.next_from(&expander, labels))
    }
}

/// Packet and header protection keys for one direction.
#[derive(Debug)]
pub struct DirectionalKeys {
    pub packet: PacketKey,
    pub header: HeaderKey,
}

/// Keys for one packet number space: `local` seals what we send, `remote` opens.
#[derive(Debug)]
pub struct Keys {
    pub local: DirectionalKeys,
    pub remote: DirectionalKeys,
}

impl Keys {
    /// Keys for a space from its client and server secrets, as seen by `side`.
    pub fn from_secrets(version: u32, side: Side, client: &Secret, server: &Secret) -> Self {
        let (local, remote) = match side {
            Side::Client => (client, server),
            Side::Server => (server, client),
        };
        Keys {
            local: local.keys(version),
            remote: remote.keys(version),
        }
    }
}

/// RFC 9001 §5.2 (RFC 9369 §3.3.1 for v2): (client, server) Initial secrets derived from
/// the Destination Connection ID of the client's first Initial.
pub fn initial_secrets(version: u32, client_dcid: &[u8]) -> (Secret, Secret) {
    let prk = initial_salt_key(version).sign(&[client_dcid]);
    let expander = Expander::new(HmacHash::Sha256, prk.as_ref());
    let mut client = [0u8; 32];
    let mut server = [0u8; 32];
    expander.expand_label(b"client in", &mut client);
    expander.expand_label(b"server in", &mut server);
    (
        Secret::new(Suite::Aes128Gcm, &client),
        Secret::new(Suite::Aes128Gcm, &server),
    )
}

/// Initial keys for `side` (RFC 9001 §5.2). Unknown versions use the v1 salt.
pub fn initial_keys(version: u32, client_dcid: &[u8], side: Side) -> Keys {
    let (client, server) = initial_secrets(version, client_dcid);
    Keys::from_secrets(version, side, &client, &server)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::hkdf::{KeyType, Prk, HKDF_SHA256, HKDF_SHA384};

    struct Len(usize);
    impl KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }

    /// HKDF-Expand-Label through aws-lc-rs's own HKDF, the reference for `Expander`.
    fn reference(suite: Suite, secret: &[u8], label: &[u8], len: usize) -> Vec<u8> {
        let alg = match suite {
            Suite::Aes256Gcm => HKDF_SHA384,
            _ => HKDF_SHA256,
        };
        let full = [b"tls13 ".as_slice(), label].concat();
        let info: [&[u8]; 4] = [
            &(len as u16).to_be_bytes(),
            &[full.len() as u8],
            &full,
            &[0],
        ];
        let mut out = vec![0u8; len];
        Prk::new_less_safe(alg, secret)
            .expand(&info, Len(len))
            .unwrap()
            .fill(&mut out)
            .unwrap();
        out
    }

    /// The pre-keyed HMAC schedule matches plain HKDF for every suite (SHA-256 and
    /// SHA-384), both versions' labels and every output length QUIC uses.
    #[test]
    fn expander_matches_hkdf_for_every_suite_and_label() {
        for suite in Suite::ALL {
            let bytes: Vec<u8> = (0..suite.secret_len() as u8)
                .map(|i| i.wrapping_mul(7) ^ 0x5a)
                .collect();
            let secret = Secret::new(suite, &bytes);
            for version in [crate::crypto::VERSION_1, VERSION_2] {
                let l = labels(version);
                let (key, iv, hp) = secret.raw_keys(version);
                assert_eq!(key, reference(suite, &bytes, l.key, suite.key_len()));
                assert_eq!(iv, reference(suite, &bytes, l.iv, IV_LEN));
                assert_eq!(hp, reference(suite, &bytes, l.hp, suite.key_len()));
                let next = reference(suite, &bytes, l.ku, suite.secret_len());
                assert_eq!(secret.next(version).as_bytes(), &next[..]);
                let (_, next_too) = secret.keys_and_next(version);
                assert_eq!(next_too.as_bytes(), &next[..]);
            }
        }
    }
}
