//! Traffic secrets and the QUIC key schedule: HKDF-Expand-Label (RFC 8446 §7.1),
//! packet/header keys (RFC 9001 §5.1), Initial secrets (§5.2), key update (§6.1), with
//! the version 2 salt and labels (RFC 9369 §3.3).
use aws_lc_rs::hkdf::{self, KeyType, Prk, Salt, HKDF_SHA256, HKDF_SHA384};

use super::aead::{PacketKey, Suite, IV_LEN};
use super::header_protection::HeaderKey;
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

fn hkdf_algorithm(suite: Suite) -> hkdf::Algorithm {
    match suite {
        Suite::Aes256Gcm => HKDF_SHA384,
        Suite::Aes128Gcm | Suite::ChaCha20Poly1305 => HKDF_SHA256,
    }
}

struct OutLen(usize);

impl KeyType for OutLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand-Label(prk, label, "", out.len()) per RFC 8446 §7.1 with the "tls13 " prefix.
fn expand_label(prk: &Prk, label: &[u8], out: &mut [u8]) {
    const PREFIX: &[u8] = b"tls13 ";
    let len = (out.len() as u16).to_be_bytes();
    let label_len = [(PREFIX.len() + label.len()) as u8];
    let info: [&[u8]; 5] = [&len, &label_len, PREFIX, label, &[0]];
    // Expand only fails when asked for more than 255 hash lengths; ours are at most 48 bytes.
    prk.expand(&info, OutLen(out.len()))
        .and_then(|okm| okm.fill(out))
        .expect("HKDF output length is small");
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

    fn prk(&self) -> Prk {
        Prk::new_less_safe(hkdf_algorithm(self.suite), self.as_bytes())
    }

    /// RFC 9001 §5.1: AEAD key and IV from "quic key" / "quic iv".
    pub fn packet_key(&self, version: u32) -> PacketKey {
        let labels = labels(version);
        let prk = self.prk();
        let mut key = [0u8; 32];
        let key = &mut key[..self.suite.key_len()];
        let mut iv = [0u8; IV_LEN];
        expand_label(&prk, labels.key, key);
        expand_label(&prk, labels.iv, &mut iv);
        PacketKey::new(self.suite, key, &iv)
    }

    /// RFC 9001 §5.1: header protection key from "quic hp".
    pub fn header_key(&self, version: u32) -> HeaderKey {
        let mut key = [0u8; 32];
        let key = &mut key[..self.suite.key_len()];
        expand_label(&self.prk(), labels(version).hp, key);
        HeaderKey::new(self.suite, key)
    }

    /// RFC 9001 §6.1: the next generation's secret from "quic ku".
    pub fn next(&self, version: u32) -> Secret {
        let mut out = [0u8; MAX_SECRET_LEN];
        let len = self.suite.secret_len();
        expand_label(&self.prk(), labels(version).ku, &mut out[..len]);
        Secret::new(self.suite, &out[..len])
    }

    /// Raw (key, iv, hp) bytes, for checking the schedule against published vectors.
    #[cfg(test)]
    pub(crate) fn raw_keys(&self, version: u32) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let labels = labels(version);
        let prk = self.prk();
        let mut key = vec![0u8; self.suite.key_len()];
        let mut iv = vec![0u8; IV_LEN];
        let mut hp = vec![0u8; self.suite.key_len()];
        expand_label(&prk, labels.key, &mut key);
        expand_label(&prk, labels.iv, &mut iv);
        expand_label(&prk, labels.hp, &mut hp);
        (key, iv, hp)
    }

    /// Both keys for this direction.
    pub fn keys(&self, version: u32) -> DirectionalKeys {
        DirectionalKeys {
            packet: self.packet_key(version),
            header: self.header_key(version),
        }
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
    let prk = Salt::new(HKDF_SHA256, initial_salt(version)).extract(client_dcid);
    let mut client = [0u8; 32];
    let mut server = [0u8; 32];
    expand_label(&prk, b"client in", &mut client);
    expand_label(&prk, b"server in", &mut server);
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
