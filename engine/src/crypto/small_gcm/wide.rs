//! The same AES-GCM for payloads of any length, sixteen blocks at a time, on CPUs with
//! AVX-512 (F, BW), VAES and VPCLMULQDQ.
//!
//! Why: aws-lc's stitched AVX-512 code is as fast as this per byte, but costs ~100 ns of
//! fixed work per call on this CPU (IV set-up, single-block GHASH of the header and the
//! length block, its EVP layers), which is a quarter of receiving or sending a 1452-byte
//! packet (`cargo bench -p quench-bench --bench aead`). Here a call's fixed work is the
//! counter set-up, E_K(J0) and one reduction per group.
//!
//! Layout of the work: the payload goes in chunks of 256 bytes, four 512-bit registers of
//! four blocks each. Each chunk's sixteen counter blocks go through AES together, and its
//! sixteen ciphertext blocks are hashed as one GHASH group: each block multiplied by the
//! power of H that Horner's rule would give it within the group (`Key::powers`), the
//! products summed, and one reduction. The header and the length block are groups of
//! their own. Partial blocks are read and written under byte masks (AVX-512 masked loads
//! and stores touch no byte outside the mask), so a packet's tail needs no copying.
//!
//! Opening decrypts in the same pass as it hashes; if the tag then fails, the keystream
//! is applied again, which restores the ciphertext (counter mode is its own inverse), so
//! a failed open leaves the packet as it was.

use core::arch::x86_64::*;

use super::x86::{self, Key};

/// Blocks per chunk and per GHASH group: four registers of four.
const CHUNK_BLOCKS: usize = 16;
const CHUNK_BYTES: usize = 16 * CHUNK_BLOCKS;

/// Whether this CPU runs this code.
pub(super) fn cpu_has_instructions() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("vaes")
        && std::arch::is_x86_feature_detected!("vpclmulqdq")
}

/// Seals `packet` = AAD (`aad_len` bytes) | plaintext (`len` bytes) | tag room.
///
/// # Safety
/// The CPU must have the instructions of [`cpu_has_instructions`] and AES-NI, PCLMULQDQ,
/// SSSE3 and SSE4.1 (`Key` exists only where it has the latter).
#[target_feature(enable = "avx512f,avx512bw,vaes,vpclmulqdq,aes,pclmulqdq,ssse3,sse4.1")]
pub(super) unsafe fn seal<const NR: usize>(
    key: &Key,
    nonce: &[u8; 12],
    packet: &mut [u8],
    aad_len: usize,
    len: usize,
) {
    let tag = crypt::<NR, true>(key, nonce, packet, aad_len, len);
    let at = aad_len + len;
    packet[at..at + 16].copy_from_slice(&x86::to_bytes(tag));
}

/// Opens `packet` = AAD | ciphertext (`len` bytes) | tag in place; false (and the packet
/// unchanged) if the tag does not match.
///
/// # Safety
/// As for [`seal`].
#[target_feature(enable = "avx512f,avx512bw,vaes,vpclmulqdq,aes,pclmulqdq,ssse3,sse4.1")]
pub(super) unsafe fn open<const NR: usize>(
    key: &Key,
    nonce: &[u8; 12],
    packet: &mut [u8],
    aad_len: usize,
    len: usize,
) -> bool {
    let expected = crypt::<NR, false>(key, nonce, packet, aad_len, len);
    let at = aad_len + len;
    let got = x86::from_bytes(packet[at..at + 16].try_into().expect("16 bytes"));
    let diff = _mm_xor_si128(expected, got);
    // Constant time: one test of all 128 bits, no early exit.
    if _mm_testz_si128(diff, diff) != 0 {
        return true;
    }
    // Forged or corrupted: the same pass again puts the ciphertext back.
    crypt::<NR, false>(key, nonce, packet, aad_len, len);
    false
}

/// One pass over the payload: XORs the keystream into it in place, and hashes the
/// ciphertext (what comes out when `SEAL`, what was there when opening) after the AAD.
/// Returns the tag: GHASH, then the length block, XOR E_K(J0).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,vaes,vpclmulqdq,aes,pclmulqdq,ssse3,sse4.1")]
fn crypt<const NR: usize, const SEAL: bool>(
    key: &Key,
    nonce: &[u8; 12],
    packet: &mut [u8],
    aad_len: usize,
    len: usize,
) -> __m128i {
    let rk = round_keys::<NR>(key);
    let ctr = Counters::new(nonce);
    let ej0 = key.encrypt1::<NR>(x86::j0(x86::counter_base(nonce)));
    let mut ghash = Ghash::new(key);
    ghash.absorb_bytes(&packet[..aad_len]);
    let body = &mut packet[aad_len..];
    for (chunk, at) in (0..len).step_by(CHUNK_BYTES).enumerate() {
        let n = (len - at).min(CHUNK_BYTES);
        let ks = keystream::<NR>(&rk, ctr.chunk(chunk));
        let mut c = [_mm512_setzero_si512(); 4];
        for (i, (ci, k)) in c.iter_mut().zip(ks).enumerate() {
            let (from, mask) = lane_window(at, n, i);
            // Bytes past the payload load as zeros and are never stored; sealed, they
            // are masked back to zeros so GHASH sees the last block zero-padded.
            let p = load_masked(body, from, mask);
            let out = _mm512_xor_si512(p, k);
            store_masked(body, from, mask, out);
            *ci = if SEAL {
                _mm512_maskz_mov_epi8(mask, out)
            } else {
                p
            };
        }
        ghash.absorb(c, n.div_ceil(16));
    }
    ghash.absorb_one(x86::length_block(aad_len, len));
    _mm_xor_si128(ghash.finish(), ej0)
}

/// Register `i` of a chunk of `n` bytes at `at`: where its 64 bytes start, and which of
/// them are payload.
#[inline]
fn lane_window(at: usize, n: usize, i: usize) -> (usize, __mmask64) {
    let start = 64 * i;
    let count = n.saturating_sub(start).min(64);
    let mask = if count == 64 {
        u64::MAX
    } else {
        (1u64 << count) - 1
    };
    (at + start, mask)
}

/// The bytes of `buf[at..]` under `mask` (bit i: byte at + i), zeros elsewhere.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn load_masked(buf: &[u8], at: usize, mask: __mmask64) -> __m512i {
    if mask == 0 {
        return _mm512_setzero_si512();
    }
    let count = 64 - mask.leading_zeros() as usize;
    assert!(at + count <= buf.len(), "masked load inside the buffer");
    // SAFETY: every byte the mask selects lies inside `buf` (checked above); a masked
    // load reads nothing, and cannot fault, where the mask is clear.
    unsafe { _mm512_maskz_loadu_epi8(mask, buf[at..].as_ptr().cast()) }
}

/// Writes the bytes of `v` under `mask` to `buf[at..]`; the others stay as they are.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn store_masked(buf: &mut [u8], at: usize, mask: __mmask64, v: __m512i) {
    if mask == 0 {
        return;
    }
    let count = 64 - mask.leading_zeros() as usize;
    assert!(at + count <= buf.len(), "masked store inside the buffer");
    // SAFETY: every byte the mask selects lies inside `buf` (checked above); a masked
    // store writes nothing where the mask is clear.
    unsafe { _mm512_mask_storeu_epi8(buf[at..].as_mut_ptr().cast(), mask, v) }
}

/// The round keys, each in all four lanes.
#[inline]
#[target_feature(enable = "avx512f")]
fn round_keys<const NR: usize>(key: &Key) -> [__m512i; 15] {
    let mut rk = [_mm512_setzero_si512(); 15];
    for (wide, k) in rk.iter_mut().zip(&key.round_keys()[..=NR]) {
        *wide = _mm512_broadcast_i32x4(*k);
    }
    rk
}

/// Counter blocks nonce || counter (32-bit big-endian), four to a register. Kept with the
/// counter as a native integer in each lane's last word, so adding to it is one
/// instruction, and byte-swapped into place per use.
struct Counters {
    /// Payload block 0's counter (2; J0 is 1) in lane 0, block 1's in lane 1, and so on.
    first: __m512i,
    swap: __m512i,
}

impl Counters {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn new(nonce: &[u8; 12]) -> Self {
        let base = _mm512_broadcast_i32x4(x86::counter_base(nonce));
        // Element 4j + 3 (lane j's last word) = 2 + j.
        let lanes = _mm512_set_epi32(5, 0, 0, 0, 4, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0);
        let swap = _mm512_broadcast_i32x4(_mm_set_epi8(
            12, 13, 14, 15, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0,
        ));
        Counters {
            first: _mm512_add_epi32(base, lanes),
            swap,
        }
    }

    /// The counter blocks of chunk `chunk`, in GCM byte order.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn chunk(&self, chunk: usize) -> [__m512i; 4] {
        let mut out = [_mm512_setzero_si512(); 4];
        for (i, o) in out.iter_mut().enumerate() {
            let step = (CHUNK_BLOCKS * chunk + 4 * i) as i32;
            let c = _mm512_add_epi32(self.first, _mm512_maskz_set1_epi32(0x8888, step));
            *o = _mm512_shuffle_epi8(c, self.swap);
        }
        out
    }
}

/// E_K of sixteen counter blocks; `NR` rounds (10 or 14), unrolled.
#[inline]
#[target_feature(enable = "avx512f,vaes")]
fn keystream<const NR: usize>(rk: &[__m512i; 15], blocks: [__m512i; 4]) -> [__m512i; 4] {
    let mut b = blocks.map(|x| _mm512_xor_si512(x, rk[0]));
    for k in &rk[1..NR] {
        for x in b.iter_mut() {
            *x = _mm512_aesenc_epi128(*x, *k);
        }
    }
    b.map(|x| _mm512_aesenclast_epi128(x, rk[NR]))
}

/// GHASH in the POLYVAL domain (as `x86::Ghash`), a group of up to sixteen blocks at a time.
struct Ghash<'k> {
    /// H^16 .. H^1 (`Key::powers`), then zeros.
    powers: &'k x86::Powers,
    acc: __m128i,
    reverse: __m512i,
}

impl<'k> Ghash<'k> {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn new(key: &'k Key) -> Self {
        Ghash {
            powers: key.powers(),
            acc: _mm_setzero_si128(),
            reverse: _mm512_broadcast_i32x4(x86::byte_reverse()),
        }
    }

    /// Adds a group of `n` (1..=16) blocks in GCM byte order, packed from lane 0 of `x[0]`;
    /// lanes past `n` must be zero.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,vpclmulqdq,pclmulqdq,sse2")]
    fn absorb(&mut self, x: [__m512i; 4], n: usize) {
        debug_assert!((1..=CHUNK_BLOCKS).contains(&n));
        let mut x = x.map(|b| _mm512_shuffle_epi8(b, self.reverse));
        x[0] = _mm512_xor_si512(x[0], _mm512_zextsi128_si512(self.acc));
        // Block b of the group is multiplied by H^(n - b): powers[16 - n + b].
        let first = CHUNK_BLOCKS - n;
        let (mut lo, mut mid, mut hi) = (
            _mm512_setzero_si512(),
            _mm512_setzero_si512(),
            _mm512_setzero_si512(),
        );
        for (i, xi) in x.iter().enumerate().take(n.div_ceil(4)) {
            let h = load_powers(self.powers, first + 4 * i);
            lo = _mm512_xor_si512(lo, _mm512_clmulepi64_epi128::<0x00>(*xi, h));
            hi = _mm512_xor_si512(hi, _mm512_clmulepi64_epi128::<0x11>(*xi, h));
            mid = _mm512_xor_si512(mid, _mm512_clmulepi64_epi128::<0x01>(*xi, h));
            mid = _mm512_xor_si512(mid, _mm512_clmulepi64_epi128::<0x10>(*xi, h));
        }
        self.acc = x86::reduce(fold(lo), fold(mid), fold(hi));
    }

    /// Adds one block in GCM byte order as a group of its own.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,vpclmulqdq,pclmulqdq,sse2")]
    fn absorb_one(&mut self, block: __m128i) {
        let zero = _mm512_setzero_si512();
        self.absorb([_mm512_zextsi128_si512(block), zero, zero, zero], 1);
    }

    /// Adds `bytes`, the last block zero-padded, in groups of sixteen blocks.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,vpclmulqdq,pclmulqdq,sse2")]
    fn absorb_bytes(&mut self, bytes: &[u8]) {
        for at in (0..bytes.len()).step_by(CHUNK_BYTES) {
            let n = (bytes.len() - at).min(CHUNK_BYTES);
            let mut x = [_mm512_setzero_si512(); 4];
            for (i, xi) in x.iter_mut().enumerate() {
                let (from, mask) = lane_window(at, n, i);
                *xi = load_masked(bytes, from, mask);
            }
            self.absorb(x, n.div_ceil(16));
        }
    }

    /// The hash in GCM byte order.
    #[inline]
    #[target_feature(enable = "ssse3")]
    fn finish(self) -> __m128i {
        _mm_shuffle_epi8(self.acc, x86::byte_reverse())
    }
}

/// `powers[at..at + 4]` in one register.
#[inline]
#[target_feature(enable = "avx512f")]
fn load_powers(powers: &x86::Powers, at: usize) -> __m512i {
    let four: &[__m128i; 4] = powers[at..at + 4].try_into().expect("four powers");
    // SAFETY: `four` is 64 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm512_loadu_si512(four.as_ptr().cast()) }
}

/// The XOR of a register's four 128-bit lanes.
#[inline]
#[target_feature(enable = "avx512f,avx2")]
fn fold(v: __m512i) -> __m128i {
    let half = _mm256_xor_si256(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v));
    _mm_xor_si128(
        _mm256_castsi256_si128(half),
        _mm256_extracti128_si256::<1>(half),
    )
}
