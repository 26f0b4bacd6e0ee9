//! AES-GCM (NIST SP 800-38D) of our own for packet protection: AES-NI for the cipher,
//! carry-less multiply for GHASH, with the round keys and the powers of H expanded once
//! per key. Two code paths: 128-bit code for payloads of up to [`SMALL_MAX`] bytes on any
//! x86-64 CPU with AES-NI, and, where the CPU has AVX-512 with VAES and VPCLMULQDQ, 512-bit
//! code (`wide`) for longer payloads, of any length. Other CPUs use aws-lc past
//! `SMALL_MAX`.
//!
//! Why our own, on the hot path: aws-lc-rs costs ~100 ns a call on this CPU whatever the
//! size up to ~150 bytes (IV set-up, a GHASH multiply and reduction per AAD and length
//! block, per-call bookkeeping), so the two AEAD calls of a small request cost ~190 ns of
//! fixed overhead, and a 1452-byte packet's seal or open carries the same ~100 ns on top of
//! the bulk work. Here (128-bit code) a packet is sealed in one pass over the buffer: counter blocks
//! are encrypted four at a time, and header, payload and length blocks are hashed with one
//! reduction per eight blocks (aggregated with the powers of H), so a small packet's GHASH
//! has no chain of dependent reductions. Partial blocks are read and written as whole
//! 16-byte windows under a byte mask: the tag's 16 bytes behind the payload keep every
//! window inside the packet, so nothing is copied through scratch buffers. `wide` does the
//! same sixteen blocks at a time.
//!
//! GHASH is computed as POLYVAL (RFC 8452, Appendix A): with every block's bytes reversed,
//! field elements map onto carry-less multiplication with no bit reflection, and
//! `GHASH(H, X..) = ByteReverse(POLYVAL(mulX(ByteReverse(H)), ByteReverse(X)..))`.
//!
//! Checked against the GCM specification's vectors and against aws-lc over random keys,
//! nonces, headers and lengths (`tests`); the packet keys built on it against RFC 9001
//! Appendix A.

/// Longest payload (plaintext or ciphertext, tag excluded) the 128-bit code seals or opens;
/// longer ones go to `wide` where the CPU has it. Above it, aws-lc's stitched code is faster
/// than the 128-bit code (`cargo bench -p quench-bench --bench aead`), and `wide` faster
/// than both. Below it the 128-bit code is as fast in the engine: alone, seal + open of 150
/// bytes took 98 ns wide against 129 ns, but the request benchmark's AEAD floor (141-byte
/// packets of eight connections, among the rest of the packet path) read 114–115 ns with
/// the 128-bit code and 118–202 ns wide.
pub const SMALL_MAX: usize = 256;
pub use super::aead::TAG_LEN;

/// One AES-GCM key (128 or 256 bits) for payloads of up to [`SMALL_MAX`] bytes.
/// Only built on x86-64 CPUs with AES-NI, PCLMULQDQ, SSSE3 and SSE4.1.
pub struct SmallGcm {
    #[cfg(target_arch = "x86_64")]
    key: x86::Key,
}

impl SmallGcm {
    /// The key, or `None` if the CPU lacks the instructions or `key` is not 16 or 32 bytes.
    pub fn new(key: &[u8]) -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            x86::Key::new(key).map(|key| Self { key })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = key;
            None
        }
    }

    /// The same key on the 128-bit code alone, as on CPUs without AVX-512 VAES: tests and
    /// fuzzing check that code on machines that have it.
    #[cfg(any(test, fuzzing))]
    pub fn without_wide(mut self) -> Self {
        #[cfg(target_arch = "x86_64")]
        self.key.disable_wide();
        self
    }

    /// The longest payload this key takes: [`SMALL_MAX`], or any length where the CPU has
    /// AVX-512 with VAES and VPCLMULQDQ (`wide`).
    pub fn max_payload(&self) -> usize {
        #[cfg(target_arch = "x86_64")]
        {
            self.key.max_payload()
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("never built off x86-64")
    }

    /// `packet` = AAD (`aad_len` bytes) | plaintext | [`TAG_LEN`] bytes of room: encrypts
    /// the plaintext in place and writes the tag. Panics unless the plaintext is at most
    /// [`Self::max_payload`] bytes and the room is there (callers check both).
    pub fn seal_in_place(&self, nonce: &[u8; 12], packet: &mut [u8], aad_len: usize) {
        let len = payload_len(packet, aad_len);
        #[cfg(target_arch = "x86_64")]
        self.key.seal(nonce, packet, aad_len, len);
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("never built off x86-64: {nonce:?} {len}")
    }

    /// `packet` = AAD | ciphertext | tag: checks the tag, then decrypts in place. On a
    /// mismatch nothing is written and `false` is returned. Panics as `seal_in_place` does.
    pub fn open_in_place(&self, nonce: &[u8; 12], packet: &mut [u8], aad_len: usize) -> bool {
        let len = payload_len(packet, aad_len);
        #[cfg(target_arch = "x86_64")]
        {
            self.key.open(nonce, packet, aad_len, len)
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("never built off x86-64: {nonce:?} {len}")
    }
}

fn payload_len(packet: &[u8], aad_len: usize) -> usize {
    packet
        .len()
        .checked_sub(aad_len + TAG_LEN)
        .expect("room for the AAD and the tag")
}

#[cfg(target_arch = "x86_64")]
mod wide;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::*;

    use super::SMALL_MAX;

    /// Slots of a key's table of powers of H (`Key::powers`): sixteen, then four zeros.
    const POWER_SLOTS: usize = 20;
    /// A key's powers of H, highest first (`Key::powers`).
    pub(super) type Powers = [__m128i; POWER_SLOTS];

    /// Counter blocks encrypted per step: enough to keep the AES unit busy.
    const LANES: usize = 4;
    /// Blocks hashed per reduction; as many powers of H are kept.
    const POWERS: usize = 8;
    /// Keystream blocks for the longest payload, in whole steps.
    const KEYSTREAM_BLOCKS: usize = SMALL_MAX.div_ceil(16 * LANES) * LANES;

    pub struct Key {
        /// AES round keys; 11 used for AES-128, 15 for AES-256.
        round_keys: [__m128i; 15],
        aes256: bool,
        /// `powers[16 - k]` = H^k · x^(-128(k-1)) in the POLYVAL domain, so that
        /// `dot(a, powers[16 - k])` multiplies `a` by the k-th power of the hash key: k = 1..=8
        /// for the 128-bit code, up to 16 where `wide` runs; then four zeros (`wide` reads
        /// four at a time from any offset). Descending, so a group's powers are contiguous.
        powers: Powers,
        /// The CPU runs `wide` (AVX-512 with VAES and VPCLMULQDQ).
        wide: bool,
    }

    fn cpu_has_instructions() -> bool {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
            && std::arch::is_x86_feature_detected!("ssse3")
            && std::arch::is_x86_feature_detected!("sse4.1")
    }

    /// GHASH over a sequence of blocks whose number is known in advance: blocks are taken
    /// in groups of up to eight, each multiplied by the power of H that Horner's rule would
    /// give it inside its group, and the sums reduced once per group.
    struct Ghash<'k> {
        powers: &'k Powers,
        /// Blocks still to come, this one included.
        left: usize,
        /// Blocks left in the current group.
        group_left: usize,
        acc: __m128i,
        lo: __m128i,
        mid: __m128i,
        hi: __m128i,
        reverse: __m128i,
    }

    impl<'k> Ghash<'k> {
        #[inline]
        #[target_feature(enable = "pclmulqdq,ssse3")]
        fn new(powers: &'k Powers, blocks: usize) -> Self {
            let zero = _mm_setzero_si128();
            Ghash {
                powers,
                left: blocks,
                group_left: 0,
                acc: zero,
                lo: zero,
                mid: zero,
                hi: zero,
                reverse: byte_reverse(),
            }
        }

        /// Adds one block in GCM byte order (zero-padded if partial).
        #[inline]
        #[target_feature(enable = "pclmulqdq,ssse3")]
        fn update(&mut self, block: __m128i) {
            let mut x = _mm_shuffle_epi8(block, self.reverse);
            if self.group_left == 0 {
                // A new group: fold the last one and start from the accumulator.
                self.acc = reduce(self.lo, self.mid, self.hi);
                let zero = _mm_setzero_si128();
                (self.lo, self.mid, self.hi) = (zero, zero, zero);
                self.group_left = self.left.min(POWERS);
                x = _mm_xor_si128(x, self.acc);
            }
            let h = self.powers[16 - self.group_left];
            self.lo = _mm_xor_si128(self.lo, _mm_clmulepi64_si128::<0x00>(x, h));
            self.hi = _mm_xor_si128(self.hi, _mm_clmulepi64_si128::<0x11>(x, h));
            self.mid = _mm_xor_si128(self.mid, _mm_clmulepi64_si128::<0x01>(x, h));
            self.mid = _mm_xor_si128(self.mid, _mm_clmulepi64_si128::<0x10>(x, h));
            self.group_left -= 1;
            self.left -= 1;
        }

        /// The hash in GCM byte order, once every announced block is in.
        #[inline]
        #[target_feature(enable = "pclmulqdq,ssse3")]
        fn finish(self) -> __m128i {
            debug_assert_eq!(self.left, 0);
            _mm_shuffle_epi8(reduce(self.lo, self.mid, self.hi), self.reverse)
        }
    }

    impl Key {
        pub fn new(key: &[u8]) -> Option<Self> {
            if !cpu_has_instructions() || !(key.len() == 16 || key.len() == 32) {
                return None;
            }
            // SAFETY: the CPU has every instruction the function is compiled for (checked
            // just above).
            Some(unsafe { Self::expand(key) })
        }

        #[target_feature(enable = "aes,pclmulqdq,ssse3,sse4.1")]
        fn expand(key: &[u8]) -> Self {
            let mut round_keys = [_mm_setzero_si128(); 15];
            let aes256 = key.len() == 32;
            if aes256 {
                expand_aes256(key, &mut round_keys);
            } else {
                expand_aes128(key, &mut round_keys);
            }
            let mut k = Key {
                round_keys,
                aes256,
                powers: [_mm_setzero_si128(); POWER_SLOTS],
                wide: super::wide::cpu_has_instructions(),
            };
            // H = E_K(0^128) (SP 800-38D §6.4); POLYVAL's key is mulX(ByteReverse(H)).
            let h = to_bytes(if aes256 {
                k.encrypt1::<14>(_mm_setzero_si128())
            } else {
                k.encrypt1::<10>(_mm_setzero_si128())
            });
            let v = u128::from_be_bytes(h);
            let v = (v << 1) ^ ((v >> 127) * POLY);
            let h1 = from_bytes(&v.to_le_bytes());
            k.powers[15] = h1;
            let highest = if k.wide { 16 } else { POWERS };
            for at in (16 - highest..15).rev() {
                k.powers[at] = dot(k.powers[at + 1], h1);
            }
            k
        }

        pub(super) fn round_keys(&self) -> &[__m128i; 15] {
            &self.round_keys
        }

        pub(super) fn powers(&self) -> &Powers {
            &self.powers
        }

        #[cfg(any(test, fuzzing))]
        pub fn disable_wide(&mut self) {
            self.wide = false;
        }

        /// The longest payload this key seals and opens.
        pub fn max_payload(&self) -> usize {
            if self.wide {
                usize::MAX
            } else {
                SMALL_MAX
            }
        }

        pub fn seal(&self, nonce: &[u8; 12], packet: &mut [u8], aad_len: usize, len: usize) {
            if len > SMALL_MAX {
                assert!(self.wide, "small AES-GCM used on a long payload");
                // SAFETY: `wide` is set only where the CPU has its instructions, and a
                // `Key` only where it has the rest (`Key::new`).
                unsafe {
                    if self.aes256 {
                        super::wide::seal::<14>(self, nonce, packet, aad_len, len)
                    } else {
                        super::wide::seal::<10>(self, nonce, packet, aad_len, len)
                    }
                }
                return;
            }
            // SAFETY: a `Key` exists only when the CPU has the instructions (`Key::new`).
            unsafe {
                if self.aes256 {
                    self.seal_impl::<14>(nonce, packet, aad_len, len)
                } else {
                    self.seal_impl::<10>(nonce, packet, aad_len, len)
                }
            }
        }

        pub fn open(
            &self,
            nonce: &[u8; 12],
            packet: &mut [u8],
            aad_len: usize,
            len: usize,
        ) -> bool {
            if len > SMALL_MAX {
                assert!(self.wide, "small AES-GCM used on a long payload");
                // SAFETY: as in `seal`.
                return unsafe {
                    if self.aes256 {
                        super::wide::open::<14>(self, nonce, packet, aad_len, len)
                    } else {
                        super::wide::open::<10>(self, nonce, packet, aad_len, len)
                    }
                };
            }
            // SAFETY: as in `seal`.
            unsafe {
                if self.aes256 {
                    self.open_impl::<14>(nonce, packet, aad_len, len)
                } else {
                    self.open_impl::<10>(nonce, packet, aad_len, len)
                }
            }
        }

        /// What sealing and opening share: the counter block, E_K(J0) (first, so its
        /// rounds overlap everything else) and GHASH with the AAD already in.
        #[inline]
        #[target_feature(enable = "aes,pclmulqdq,ssse3,sse4.1")]
        fn begin<const NR: usize>(
            &self,
            nonce: &[u8; 12],
            packet: &[u8],
            aad_len: usize,
            len: usize,
        ) -> (__m128i, __m128i, Ghash<'_>) {
            let base = counter_base(nonce);
            let ej0 = self.encrypt1::<NR>(j0(base));
            let mut ghash = Ghash::new(&self.powers, aad_len.div_ceil(16) + len.div_ceil(16) + 1);
            hash_aad(&mut ghash, packet, aad_len);
            (base, ej0, ghash)
        }

        /// `NR` is the number of AES rounds (10 or 14), a constant so the rounds unroll.
        /// Whole blocks are read and written as they are; a last partial block is a
        /// 16-byte window that runs into the tag's room, with the bytes past the payload
        /// masked out of it, so every window lies inside `packet`.
        #[target_feature(enable = "aes,pclmulqdq,ssse3,sse4.1")]
        fn seal_impl<const NR: usize>(
            &self,
            nonce: &[u8; 12],
            packet: &mut [u8],
            aad_len: usize,
            len: usize,
        ) {
            let (base, ej0, mut ghash) = self.begin::<NR>(nonce, packet, aad_len, len);
            let body = &mut packet[aad_len..];
            let (whole, partial) = (len / 16, len % 16);
            let blocks = len.div_ceil(16);
            for first in (0..blocks).step_by(LANES) {
                let ks = self.keystream::<NR>(base, counter_of(first));
                for (block, k) in (first..blocks).zip(ks) {
                    let window = window_mut(body, 16 * block);
                    let c = if block < whole {
                        let c = _mm_xor_si128(from_bytes(window), k);
                        *window = to_bytes(c);
                        c
                    } else {
                        // The partial last block: the bytes past the payload stay as they
                        // are, and GHASH sees zeros there.
                        let mask = byte_mask(partial);
                        let c = _mm_xor_si128(from_bytes(window), _mm_and_si128(k, mask));
                        *window = to_bytes(c);
                        _mm_and_si128(c, mask)
                    };
                    ghash.update(c);
                }
            }
            ghash.update(length_block(aad_len, len));
            let tag = _mm_xor_si128(ghash.finish(), ej0);
            *window_mut(body, len) = to_bytes(tag);
        }

        #[target_feature(enable = "aes,pclmulqdq,ssse3,sse4.1")]
        fn open_impl<const NR: usize>(
            &self,
            nonce: &[u8; 12],
            packet: &mut [u8],
            aad_len: usize,
            len: usize,
        ) -> bool {
            let (base, ej0, mut ghash) = self.begin::<NR>(nonce, packet, aad_len, len);
            let body = &mut packet[aad_len..];
            let (whole, partial) = (len / 16, len % 16);
            let blocks = len.div_ceil(16);
            // The keystream is made in the same pass as GHASH (independent work the CPU
            // overlaps) and applied only once the tag is known to be good.
            let mut keystream = [_mm_setzero_si128(); KEYSTREAM_BLOCKS];
            for (step, ks) in keystream
                .chunks_exact_mut(LANES)
                .take(blocks.div_ceil(LANES))
                .enumerate()
            {
                ks.copy_from_slice(&self.keystream::<NR>(base, counter_of(step * LANES)));
            }
            for block in 0..whole {
                ghash.update(from_bytes(window(body, 16 * block)));
            }
            if partial > 0 {
                let c = from_bytes(window(body, 16 * whole));
                ghash.update(_mm_and_si128(c, byte_mask(partial)));
            }
            ghash.update(length_block(aad_len, len));
            let expected = _mm_xor_si128(ghash.finish(), ej0);
            let diff = _mm_xor_si128(expected, from_bytes(window(body, len)));
            // Constant time: one test of all 128 bits, no early exit.
            if _mm_testz_si128(diff, diff) == 0 {
                return false;
            }
            for (block, k) in keystream.iter().enumerate().take(whole) {
                let window = window_mut(body, 16 * block);
                *window = to_bytes(_mm_xor_si128(from_bytes(window), *k));
            }
            if partial > 0 {
                let window = window_mut(body, 16 * whole);
                let k = _mm_and_si128(keystream[whole], byte_mask(partial));
                *window = to_bytes(_mm_xor_si128(from_bytes(window), k));
            }
            true
        }

        /// E_K of counter blocks `first..first + 4` (nonce || 32-bit big-endian counter).
        #[inline]
        #[target_feature(enable = "aes,pclmulqdq,ssse3,sse4.1")]
        fn keystream<const NR: usize>(&self, base: __m128i, first: u32) -> [__m128i; LANES] {
            let mut b = [_mm_setzero_si128(); LANES];
            for (i, bi) in b.iter_mut().enumerate() {
                let n = first.wrapping_add(i as u32).swap_bytes() as i32;
                *bi = _mm_xor_si128(_mm_insert_epi32::<3>(base, n), self.round_keys[0]);
            }
            for rk in &self.round_keys[1..NR] {
                for bi in b.iter_mut() {
                    *bi = _mm_aesenc_si128(*bi, *rk);
                }
            }
            for bi in b.iter_mut() {
                *bi = _mm_aesenclast_si128(*bi, self.round_keys[NR]);
            }
            b
        }

        #[inline]
        #[target_feature(enable = "aes,pclmulqdq,ssse3,sse4.1")]
        pub(super) fn encrypt1<const NR: usize>(&self, block: __m128i) -> __m128i {
            let mut x = _mm_xor_si128(block, self.round_keys[0]);
            for rk in &self.round_keys[1..NR] {
                x = _mm_aesenc_si128(x, *rk);
            }
            _mm_aesenclast_si128(x, self.round_keys[NR])
        }
    }

    /// The AAD's blocks, the last one zero-padded. Its windows end before the tag.
    #[inline]
    #[target_feature(enable = "pclmulqdq,ssse3")]
    fn hash_aad(ghash: &mut Ghash<'_>, packet: &[u8], aad_len: usize) {
        let mut at = 0;
        while at < aad_len {
            let block = from_bytes(window(packet, at));
            ghash.update(_mm_and_si128(block, byte_mask(aad_len - at)));
            at += 16;
        }
    }

    /// len(A) || len(C) in bits, big-endian, as GCM lays the block out (SP 800-38D §7.1).
    #[inline]
    #[target_feature(enable = "sse2")]
    pub(super) fn length_block(aad_len: usize, len: usize) -> __m128i {
        let mut block = [0u8; 16];
        block[..8].copy_from_slice(&(aad_len as u64 * 8).to_be_bytes());
        block[8..].copy_from_slice(&(len as u64 * 8).to_be_bytes());
        from_bytes(&block)
    }

    /// The counter of payload block `block`: J0's is 1, the payload's start at 2.
    #[inline]
    fn counter_of(block: usize) -> u32 {
        2 + block as u32
    }

    /// J0 = nonce || 1 for a 96-bit nonce (SP 800-38D §7.1).
    #[inline]
    #[target_feature(enable = "sse4.1")]
    pub(super) fn j0(base: __m128i) -> __m128i {
        _mm_insert_epi32::<3>(base, 1u32.swap_bytes() as i32)
    }

    /// Ones in the first `min(n, 16)` bytes.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn byte_mask(n: usize) -> __m128i {
        static ONES_THEN_ZEROS: [u8; 32] = {
            let mut t = [0u8; 32];
            let mut i = 0;
            while i < 16 {
                t[i] = 0xff;
                i += 1;
            }
            t
        };
        let n = n.min(16);
        from_bytes(
            ONES_THEN_ZEROS[16 - n..][..16]
                .try_into()
                .expect("16 bytes"),
        )
    }

    /// The 16 bytes at `at`; inside the packet for every offset before the tag.
    #[inline]
    fn window(packet: &[u8], at: usize) -> &[u8; 16] {
        packet[at..at + 16].try_into().expect("16 bytes")
    }

    #[inline]
    fn window_mut(packet: &mut [u8], at: usize) -> &mut [u8; 16] {
        (&mut packet[at..at + 16]).try_into().expect("16 bytes")
    }

    /// x^128 ≡ x^127 + x^126 + x^121 + 1 (POLYVAL's polynomial, RFC 8452 §3).
    const POLY: u128 = (0xc2 << 120) | 1;

    /// POLYVAL's dot(a, b) = a·b·x^(-128) mod P (RFC 8452 §3).
    #[inline]
    #[target_feature(enable = "pclmulqdq,sse2")]
    fn dot(a: __m128i, b: __m128i) -> __m128i {
        let lo = _mm_clmulepi64_si128::<0x00>(a, b);
        let hi = _mm_clmulepi64_si128::<0x11>(a, b);
        let mid = _mm_xor_si128(
            _mm_clmulepi64_si128::<0x01>(a, b),
            _mm_clmulepi64_si128::<0x10>(a, b),
        );
        reduce(lo, mid, hi)
    }

    /// (hi·x^128 + mid·x^64 + lo)·x^(-128) mod P, folding the low half away 64 bits at a
    /// time: x^(-64) ≡ x^64 + x^63 + x^62 + x^57, and x^63 + x^62 + x^57 is 0xc2 << 56.
    #[inline]
    #[target_feature(enable = "pclmulqdq,sse2")]
    pub(super) fn reduce(lo: __m128i, mid: __m128i, hi: __m128i) -> __m128i {
        let poly = _mm_set_epi64x(0xc200_0000_0000_0000_u64 as i64, 1);
        let lo = _mm_xor_si128(lo, _mm_slli_si128::<8>(mid));
        let hi = _mm_xor_si128(hi, _mm_srli_si128::<8>(mid));
        // lo·x^(-64) = swap(lo) ^ clmul(lo.low, 0xc2 << 56), twice.
        let t = _mm_clmulepi64_si128::<0x10>(lo, poly);
        let lo = _mm_xor_si128(_mm_shuffle_epi32::<0x4e>(lo), t);
        let t = _mm_clmulepi64_si128::<0x10>(lo, poly);
        let lo = _mm_xor_si128(_mm_shuffle_epi32::<0x4e>(lo), t);
        _mm_xor_si128(hi, lo)
    }

    #[inline]
    #[target_feature(enable = "sse2")]
    pub(super) fn byte_reverse() -> __m128i {
        _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
    }

    /// nonce || 0^32; each counter block sets the last 32 bits.
    #[inline]
    #[target_feature(enable = "sse2")]
    pub(super) fn counter_base(nonce: &[u8; 12]) -> __m128i {
        let mut b = [0u8; 16];
        b[..12].copy_from_slice(nonce);
        from_bytes(&b)
    }

    #[inline]
    #[target_feature(enable = "sse2")]
    pub(super) fn from_bytes(b: &[u8; 16]) -> __m128i {
        // SAFETY: `b` is 16 readable bytes; `loadu` has no alignment requirement.
        unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
    }

    #[inline]
    #[target_feature(enable = "sse2")]
    pub(super) fn to_bytes(v: __m128i) -> [u8; 16] {
        let mut b = [0u8; 16];
        // SAFETY: `b` is 16 writable bytes; `storeu` has no alignment requirement.
        unsafe { _mm_storeu_si128(b.as_mut_ptr().cast(), v) };
        b
    }

    /// FIPS 197 §5.2 with AESKEYGENASSIST: each round key is the previous one with its
    /// words prefix-XORed, XORed with the assist word (RotWord/SubWord of the last word
    /// with the round constant, or SubWord alone for AES-256's odd keys).
    #[inline]
    #[target_feature(enable = "aes,sse2")]
    fn next_round_key(prev: __m128i, assist: __m128i) -> __m128i {
        let mut k = prev;
        k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
        k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
        k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
        _mm_xor_si128(k, assist)
    }

    #[target_feature(enable = "aes,sse2")]
    fn expand_aes128(key: &[u8], rk: &mut [__m128i; 15]) {
        rk[0] = from_bytes(key.try_into().expect("16-byte key"));
        macro_rules! round {
            ($i:expr, $rcon:expr) => {
                rk[$i] = next_round_key(
                    rk[$i - 1],
                    _mm_shuffle_epi32::<0xff>(_mm_aeskeygenassist_si128::<$rcon>(rk[$i - 1])),
                );
            };
        }
        round!(1, 0x01);
        round!(2, 0x02);
        round!(3, 0x04);
        round!(4, 0x08);
        round!(5, 0x10);
        round!(6, 0x20);
        round!(7, 0x40);
        round!(8, 0x80);
        round!(9, 0x1b);
        round!(10, 0x36);
    }

    #[target_feature(enable = "aes,sse2")]
    fn expand_aes256(key: &[u8], rk: &mut [__m128i; 15]) {
        rk[0] = from_bytes(key[..16].try_into().expect("16 bytes"));
        rk[1] = from_bytes(key[16..].try_into().expect("16 bytes"));
        macro_rules! even {
            ($i:expr, $rcon:expr) => {
                rk[$i] = next_round_key(
                    rk[$i - 2],
                    _mm_shuffle_epi32::<0xff>(_mm_aeskeygenassist_si128::<$rcon>(rk[$i - 1])),
                );
            };
        }
        macro_rules! odd {
            ($i:expr) => {
                rk[$i] = next_round_key(
                    rk[$i - 2],
                    _mm_shuffle_epi32::<0xaa>(_mm_aeskeygenassist_si128::<0>(rk[$i - 1])),
                );
            };
        }
        even!(2, 0x01);
        odd!(3);
        even!(4, 0x02);
        odd!(5);
        even!(6, 0x04);
        odd!(7);
        even!(8, 0x08);
        odd!(9);
        even!(10, 0x10);
        odd!(11);
        even!(12, 0x20);
        odd!(13);
        even!(14, 0x40);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM};
    use proptest::prelude::*;

    fn reference(key: &[u8]) -> LessSafeKey {
        let alg = if key.len() == 16 {
            &AES_128_GCM
        } else {
            &AES_256_GCM
        };
        LessSafeKey::new(UnboundKey::new(alg, key).unwrap())
    }

    /// aws-lc's ciphertext and tag, laid out as a packet: aad | ciphertext | tag.
    fn reference_packet(key: &[u8], nonce: [u8; 12], aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut body = plain.to_vec();
        let tag = reference(key)
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .unwrap();
        [aad, &body, tag.as_ref()].concat()
    }

    /// aad | plaintext | room for the tag.
    fn packet(aad: &[u8], plain: &[u8]) -> Vec<u8> {
        [aad, plain, &[0u8; TAG_LEN]].concat()
    }

    fn hex(s: &str) -> Vec<u8> {
        ::hex::decode(s).unwrap()
    }

    /// The GCM specification's test cases 2 and 4 (AES-128) and 14 and 16 (AES-256), the
    /// ones with 96-bit IVs (McGrew and Viega, "The Galois/Counter Mode of Operation",
    /// Appendix B); aws-lc is checked against them too.
    #[test]
    fn gcm_specification_vectors() {
        let p4 = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39";
        let cases: [(&str, &str, &str, &str, &str, &str); 4] = [
            (
                "00000000000000000000000000000000",
                "000000000000000000000000",
                "",
                "00000000000000000000000000000000",
                "0388dace60b6a392f328c2b971b2fe78",
                "ab6e47d42cec13bdf53a67b21257bddf",
            ),
            (
                "feffe9928665731c6d6a8f9467308308",
                "cafebabefacedbaddecaf888",
                "feedfacedeadbeeffeedfacedeadbeefabaddad2",
                p4,
                "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091",
                "5bc94fbc3221a5db94fae95ae7121a47",
            ),
            (
                "0000000000000000000000000000000000000000000000000000000000000000",
                "000000000000000000000000",
                "",
                "00000000000000000000000000000000",
                "cea7403d4d606b6e074ec5d3baf39d18",
                "d0d1c8a799996bf0265b98b5d48ab919",
            ),
            (
                "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
                "cafebabefacedbaddecaf888",
                "feedfacedeadbeeffeedfacedeadbeefabaddad2",
                p4,
                "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
                "76fc6ece0f4e1768cddf8853bb2d551b",
            ),
        ];
        for (key, nonce, aad, plain, cipher, tag) in cases {
            let (key, aad, plain) = (hex(key), hex(aad), hex(plain));
            let nonce: [u8; 12] = hex(nonce).try_into().unwrap();
            let expected = [aad.clone(), hex(cipher), hex(tag)].concat();
            assert_eq!(
                reference_packet(&key, nonce, &aad, &plain),
                expected,
                "aws-lc"
            );
            let full = SmallGcm::new(&key).expect("x86-64 CPU with AES-NI and PCLMULQDQ");
            let narrow = SmallGcm::new(&key).unwrap().without_wide();
            for gcm in [full, narrow] {
                let mut pkt = packet(&aad, &plain);
                gcm.seal_in_place(&nonce, &mut pkt, aad.len());
                assert_eq!(::hex::encode(&pkt), ::hex::encode(&expected));
                assert!(gcm.open_in_place(&nonce, &mut pkt, aad.len()));
                assert_eq!(&pkt[aad.len()..aad.len() + plain.len()], &plain[..]);
            }
        }
    }

    #[test]
    fn rejects_other_key_lengths() {
        assert!(SmallGcm::new(&[0; 24]).is_none());
        assert!(SmallGcm::new(&[0; 15]).is_none());
    }

    /// Payloads past `SMALL_MAX` need the wide code; without it they are refused.
    #[test]
    fn long_payloads_need_the_wide_code() {
        let gcm = SmallGcm::new(&[1; 16]).unwrap();
        let sealed = std::panic::catch_unwind(|| {
            gcm.seal_in_place(&[0; 12], &mut [0; 4 + SMALL_MAX + 1 + TAG_LEN], 4);
        });
        assert_eq!(sealed.is_ok(), gcm.max_payload() > SMALL_MAX);
        let narrow = SmallGcm::new(&[1; 16]).unwrap().without_wide();
        assert_eq!(narrow.max_payload(), SMALL_MAX);
        let sealed = std::panic::catch_unwind(|| {
            narrow.seal_in_place(&[0; 12], &mut [0; 4 + SMALL_MAX + 1 + TAG_LEN], 4);
        });
        assert!(sealed.is_err(), "the 128-bit code refuses long payloads");
    }

    /// Whether this CPU runs the wide code; if not, say so (its tests then check nothing
    /// on this machine, where the engine never uses it either).
    fn wide_here(gcm: &SmallGcm) -> bool {
        let wide = gcm.max_payload() == usize::MAX;
        if !wide {
            eprintln!("wide AES-GCM not exercised: the CPU lacks AVX-512 VAES/VPCLMULQDQ");
        }
        wide
    }

    /// Every payload length from 0 to 1,600 bytes (every position of the last partial
    /// block in every register of a chunk, several chunks) and longer ones, with headers of
    /// 0 to 300 bytes, seal as aws-lc does and open back, through the wide code.
    #[test]
    fn wide_matches_aws_lc_at_every_length() {
        for key in [[3u8; 16].as_slice(), [5u8; 32].as_slice()] {
            let gcm = SmallGcm::new(key).unwrap();
            if !wide_here(&gcm) {
                return;
            }
            let lengths = (SMALL_MAX + 1..=1600).chain([4095, 4096, 4097, 9000, 65_000]);
            for (i, len) in lengths.enumerate() {
                let aad: Vec<u8> = (0..(i * 7) % 301).map(|b| (b * 13) as u8).collect();
                let plain: Vec<u8> = (0..len).map(|b| (b * 7 + i) as u8).collect();
                let nonce = [i as u8; 12];
                let mut pkt = packet(&aad, &plain);
                gcm.seal_in_place(&nonce, &mut pkt, aad.len());
                assert_eq!(pkt, reference_packet(key, nonce, &aad, &plain), "len {len}");
                assert!(gcm.open_in_place(&nonce, &mut pkt, aad.len()), "len {len}");
                assert_eq!(&pkt[aad.len()..aad.len() + len], &plain[..], "len {len}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// The same packet as aws-lc for every payload length up to SMALL_MAX and headers
        /// of every size up to and past eight blocks; open inverts seal.
        #[test]
        fn matches_aws_lc(
            key in prop_oneof![
                proptest::collection::vec(any::<u8>(), 16),
                proptest::collection::vec(any::<u8>(), 32)
            ],
            nonce in any::<[u8; 12]>(),
            aad in proptest::collection::vec(any::<u8>(), 0..160),
            plain in proptest::collection::vec(any::<u8>(), 0..=SMALL_MAX),
        ) {
            let full = SmallGcm::new(&key).expect("CPU support");
            let narrow = SmallGcm::new(&key).expect("CPU support").without_wide();
            for gcm in [full, narrow] {
                let mut pkt = packet(&aad, &plain);
                gcm.seal_in_place(&nonce, &mut pkt, aad.len());
                prop_assert_eq!(&pkt, &reference_packet(&key, nonce, &aad, &plain));
                prop_assert!(gcm.open_in_place(&nonce, &mut pkt, aad.len()));
                prop_assert_eq!(&pkt[..aad.len()], &aad[..]);
                prop_assert_eq!(&pkt[aad.len()..aad.len() + plain.len()], &plain[..]);
            }
        }

        /// The wide code (payloads past `SMALL_MAX`) against aws-lc, random keys,
        /// nonces, headers and lengths; open inverts seal; a flipped bit anywhere fails
        /// and leaves the packet as it was.
        #[test]
        fn wide_matches_aws_lc_and_rejects_tampering(
            key in prop_oneof![
                proptest::collection::vec(any::<u8>(), 16),
                proptest::collection::vec(any::<u8>(), 32)
            ],
            nonce in any::<[u8; 12]>(),
            aad in proptest::collection::vec(any::<u8>(), 0..300),
            plain in proptest::collection::vec(any::<u8>(), SMALL_MAX + 1..3000),
            at in any::<prop::sample::Index>(),
            bit in 0..8u8,
        ) {
            let gcm = SmallGcm::new(&key).expect("CPU support");
            if gcm.max_payload() == SMALL_MAX {
                return Ok(());
            }
            let mut pkt = packet(&aad, &plain);
            gcm.seal_in_place(&nonce, &mut pkt, aad.len());
            prop_assert_eq!(&pkt, &reference_packet(&key, nonce, &aad, &plain));
            let mut bad = pkt.clone();
            let i = at.index(bad.len());
            bad[i] ^= 1 << bit;
            let before = bad.clone();
            prop_assert!(!gcm.open_in_place(&nonce, &mut bad, aad.len()));
            prop_assert_eq!(bad, before);
            prop_assert!(gcm.open_in_place(&nonce, &mut pkt, aad.len()));
            prop_assert_eq!(&pkt[aad.len()..aad.len() + plain.len()], &plain[..]);
        }

        /// Any flipped bit in the header, the ciphertext or the tag, or another nonce,
        /// fails and leaves the packet as it was.
        #[test]
        fn tampering_fails_and_changes_nothing(
            key in proptest::collection::vec(any::<u8>(), 16),
            nonce in any::<[u8; 12]>(),
            aad in proptest::collection::vec(any::<u8>(), 1..40),
            plain in proptest::collection::vec(any::<u8>(), 0..=SMALL_MAX),
            at in any::<prop::sample::Index>(),
            bit in 0..8u8,
            other_nonce in any::<bool>(),
        ) {
            let full = SmallGcm::new(&key).expect("CPU support");
            let narrow = SmallGcm::new(&key).expect("CPU support").without_wide();
            for gcm in [full, narrow] {
                let mut pkt = packet(&aad, &plain);
                gcm.seal_in_place(&nonce, &mut pkt, aad.len());
                let mut nonce = nonce;
                if other_nonce {
                    nonce[at.index(12)] ^= 1 << bit;
                } else {
                    let i = at.index(pkt.len());
                    pkt[i] ^= 1 << bit;
                }
                let before = pkt.clone();
                prop_assert!(!gcm.open_in_place(&nonce, &mut pkt, aad.len()));
                prop_assert_eq!(pkt, before);
            }
        }
    }
}
