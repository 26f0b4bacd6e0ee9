//! HMAC-SHA-256/384 (RFC 2104) with the key schedule computed once, for the short messages
//! of the QUIC key schedule and stateless-reset tokens.
//!
//! A key is stored as the two hash states left after compressing `key ^ ipad` and
//! `key ^ opad`; a MAC over a message of up to 55 (SHA-256) or 111 (SHA-384) bytes then
//! costs two calls of the block function (RustCrypto `sha2`, which picks SHA-NI / AVX2 at
//! run time) and no allocation. Padding is done here over plain arrays: the general
//! `Digest` wrappers cost more than the compressions themselves at these sizes, and a
//! general-purpose HMAC re-keys per call, which is what an HKDF-Expand per label amounts to.
use sha2::digest::generic_array::GenericArray;

/// The hash behind an HMAC key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HmacHash {
    Sha256,
    Sha384,
}

impl HmacHash {
    pub fn output_len(self) -> usize {
        match self {
            HmacHash::Sha256 => 32,
            HmacHash::Sha384 => 48,
        }
    }
}

/// Longest HMAC output (SHA-384).
pub const MAX_TAG_LEN: usize = 48;
/// Longest block (SHA-384).
const MAX_BLOCK: usize = 128;

/// One MAC: the first `len` bytes of `bytes` are valid.
pub struct Tag {
    bytes: [u8; MAX_TAG_LEN],
    len: usize,
}

impl AsRef<[u8]> for Tag {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// A SHA-2 chaining state with its block function (FIPS 180-4).
trait Sha2State: Copy {
    const INITIAL: Self;
    const BLOCK: usize;
    /// Bytes of the message-length field in the final block.
    const LEN_FIELD: usize;
    const OUT: usize;
    fn compress(&mut self, block: &[u8]);
    fn write_out(&self, out: &mut [u8]);
}

#[derive(Clone, Copy)]
struct Sha256State([u32; 8]);

impl Sha2State for Sha256State {
    const INITIAL: Self = Sha256State([
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ]);
    const BLOCK: usize = 64;
    const LEN_FIELD: usize = 8;
    const OUT: usize = 32;

    fn compress(&mut self, block: &[u8]) {
        sha2::compress256(
            &mut self.0,
            std::slice::from_ref(GenericArray::from_slice(block)),
        );
    }

    fn write_out(&self, out: &mut [u8]) {
        for (o, w) in out.chunks_exact_mut(4).zip(self.0) {
            o.copy_from_slice(&w.to_be_bytes());
        }
    }
}

/// SHA-384: the SHA-512 block function from its own initial state, output truncated.
#[derive(Clone, Copy)]
struct Sha384State([u64; 8]);

impl Sha2State for Sha384State {
    const INITIAL: Self = Sha384State([
        0xcbbb9d5dc1059ed8,
        0x629a292a367cd507,
        0x9159015a3070dd17,
        0x152fecd8f70e5939,
        0x67332667ffc00b31,
        0x8eb44a8768581511,
        0xdb0c2e0d64f98fa7,
        0x47b5481dbefa4fa4,
    ]);
    const BLOCK: usize = 128;
    const LEN_FIELD: usize = 16;
    const OUT: usize = 48;

    fn compress(&mut self, block: &[u8]) {
        sha2::compress512(
            &mut self.0,
            std::slice::from_ref(GenericArray::from_slice(block)),
        );
    }

    fn write_out(&self, out: &mut [u8]) {
        for (o, w) in out.chunks_exact_mut(8).zip(self.0) {
            o.copy_from_slice(&w.to_be_bytes());
        }
    }
}

/// Hashes `parts` onto `state`, which has already absorbed `absorbed` bytes (a whole
/// number of blocks), and writes the digest (`S::OUT` bytes) to `out`.
fn finish<S: Sha2State>(mut state: S, absorbed: usize, parts: &[&[u8]], out: &mut [u8]) {
    let mut buf = [0u8; MAX_BLOCK];
    let block = S::BLOCK;
    let mut n = 0;
    let mut total = absorbed as u128;
    for part in parts {
        let mut p = *part;
        while !p.is_empty() {
            let take = (block - n).min(p.len());
            buf[n..n + take].copy_from_slice(&p[..take]);
            n += take;
            p = &p[take..];
            total += take as u128;
            if n == block {
                state.compress(&buf[..block]);
                n = 0;
            }
        }
    }
    buf[n] = 0x80;
    n += 1;
    if n > block - S::LEN_FIELD {
        buf[n..block].fill(0);
        state.compress(&buf[..block]);
        n = 0;
    }
    buf[n..block - S::LEN_FIELD].fill(0);
    let bits = (total * 8).to_be_bytes();
    buf[block - S::LEN_FIELD..block].copy_from_slice(&bits[16 - S::LEN_FIELD..]);
    state.compress(&buf[..block]);
    state.write_out(&mut out[..S::OUT]);
}

/// Inner and outer hash states after the padded key block.
#[derive(Clone, Copy)]
struct Pads<S> {
    inner: S,
    outer: S,
}

impl<S: Sha2State> Pads<S> {
    fn new(key: &[u8]) -> Self {
        let mut block = [0u8; MAX_BLOCK];
        let block = &mut block[..S::BLOCK];
        if key.len() > block.len() {
            finish(S::INITIAL, 0, &[key], block);
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        for b in block.iter_mut() {
            *b ^= 0x36;
        }
        let mut inner = S::INITIAL;
        inner.compress(block);
        for b in block.iter_mut() {
            *b ^= 0x36 ^ 0x5c;
        }
        let mut outer = S::INITIAL;
        outer.compress(block);
        block.fill(0);
        Self { inner, outer }
    }

    fn sign(&self, parts: &[&[u8]], out: &mut [u8; MAX_TAG_LEN]) -> usize {
        let mut inner = [0u8; MAX_TAG_LEN];
        finish(self.inner, S::BLOCK, parts, &mut inner);
        finish(self.outer, S::BLOCK, &[&inner[..S::OUT]], out);
        S::OUT
    }
}

/// An HMAC key, keyed once and used for any number of MACs.
#[derive(Clone)]
pub struct HmacKey(Keyed);

#[derive(Clone)]
enum Keyed {
    Sha256(Pads<Sha256State>),
    Sha384(Pads<Sha384State>),
}

impl std::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("HmacKey").field(&self.hash()).finish()
    }
}

impl HmacKey {
    pub fn new(hash: HmacHash, key: &[u8]) -> Self {
        HmacKey(match hash {
            HmacHash::Sha256 => Keyed::Sha256(Pads::new(key)),
            HmacHash::Sha384 => Keyed::Sha384(Pads::new(key)),
        })
    }

    pub fn hash(&self) -> HmacHash {
        match self.0 {
            Keyed::Sha256(_) => HmacHash::Sha256,
            Keyed::Sha384(_) => HmacHash::Sha384,
        }
    }

    /// HMAC over the concatenation of `parts`.
    pub fn sign(&self, parts: &[&[u8]]) -> Tag {
        let mut bytes = [0u8; MAX_TAG_LEN];
        let len = match &self.0 {
            Keyed::Sha256(p) => p.sign(parts, &mut bytes),
            Keyed::Sha384(p) => p.sign(parts, &mut bytes),
        };
        Tag { bytes, len }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::hmac;

    /// RFC 4231 test case 2 (a short key) for both hashes.
    #[test]
    fn rfc4231_case_2() {
        let key = b"Jefe";
        let data = b"what do ya want for nothing?";
        let t256 = HmacKey::new(HmacHash::Sha256, key).sign(&[data]);
        assert_eq!(
            hex::encode(t256.as_ref()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let t384 = HmacKey::new(HmacHash::Sha384, key).sign(&[&data[..10], &data[10..]]);
        assert_eq!(
            hex::encode(t384.as_ref()),
            "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e\
             8e2240ca5e69e2c78b3239ecfab21649"
        );
    }

    /// Keys and messages of every length around the block sizes agree with aws-lc.
    #[test]
    fn matches_aws_lc_for_all_lengths() {
        for (ours, theirs) in [
            (HmacHash::Sha256, hmac::HMAC_SHA256),
            (HmacHash::Sha384, hmac::HMAC_SHA384),
        ] {
            for key_len in [0, 1, 20, 32, 48, 63, 64, 65, 127, 128, 129, 200] {
                let key: Vec<u8> = (0..key_len).map(|i| (i * 31 + 7) as u8).collect();
                let a = HmacKey::new(ours, &key);
                let b = hmac::Key::new(theirs, &key);
                for msg_len in [0, 1, 16, 55, 56, 64, 111, 112, 128, 300] {
                    let msg: Vec<u8> = (0..msg_len).map(|i| (i * 13 + 1) as u8).collect();
                    let split = msg_len / 3;
                    let tag = a.sign(&[&msg[..split], &msg[split..]]);
                    assert_eq!(tag.as_ref(), hmac::sign(&b, &msg).as_ref());
                    assert_eq!(tag.as_ref().len(), ours.output_len());
                }
            }
        }
    }
}
