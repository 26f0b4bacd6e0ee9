//! The HPACK Huffman code (RFC 7541 §5.2 and Appendix B), which QPACK string literals use
//! (RFC 9204 §4.1.2).
//!
//! The code table comes from `httlib-huffman` (`ENCODE_TABLE`: 257 (length, code) pairs,
//! code right-aligned). The encoder and decoder here are our own over that table: the
//! crate's decoder accepts some invalid padding and has unchecked shifts, and neither side
//! of it lets us bound the output.

use httlib_huffman::encoder::table::ENCODE_TABLE;

/// The end-of-string symbol: must never appear in a decoded string (RFC 7541 §5.2).
const EOS: u16 = 256;
/// The longest code, in bits (EOS).
const MAX_LEN: usize = 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HuffmanError {
    /// EOS in the string, a code that is not one, or bad padding (RFC 7541 §5.2).
    Invalid,
    /// The decoded string would be longer than the caller's limit.
    TooLong,
}

/// The canonical form of the code: for each length, the first code of that length, how many
/// codes have it, and where its symbols start in `syms` (ordered by length, then code).
struct Canonical {
    first: [u32; MAX_LEN + 1],
    count: [u16; MAX_LEN + 1],
    offset: [u16; MAX_LEN + 1],
    syms: [u16; 257],
}

/// Built at compile time. HPACK's code is canonical: codes of one length are consecutive
/// in symbol order (checked by a test), so a symbol is `syms[offset + code - first]`.
const fn canonical() -> Canonical {
    let mut c = Canonical {
        first: [0; MAX_LEN + 1],
        count: [0; MAX_LEN + 1],
        offset: [0; MAX_LEN + 1],
        syms: [0; 257],
    };
    let mut n = 0;
    let mut len = 1;
    while len <= MAX_LEN {
        c.offset[len] = n as u16;
        let mut s = 0;
        while s < 257 {
            let (l, code) = ENCODE_TABLE[s];
            if l as usize == len {
                if c.count[len] == 0 {
                    c.first[len] = code;
                }
                c.count[len] += 1;
                c.syms[n] = s as u16;
                n += 1;
            }
            s += 1;
        }
        len += 1;
    }
    c
}

static CANONICAL: Canonical = canonical();

/// The length of `src` Huffman coded, in bytes.
pub fn encoded_len(src: &[u8]) -> usize {
    let bits: usize = src
        .iter()
        .map(|&b| usize::from(ENCODE_TABLE[usize::from(b)].0))
        .sum();
    bits.div_ceil(8)
}

/// Appends `src` Huffman coded, padded with the most significant bits of EOS (all ones).
pub fn encode(src: &[u8], out: &mut Vec<u8>) {
    let mut acc: u64 = 0;
    let mut nbits = 0u32;
    for &b in src {
        let (len, code) = ENCODE_TABLE[usize::from(b)];
        // Fewer than 8 bits are pending, plus at most 30: fits in 64.
        acc = (acc << len) | u64::from(code);
        nbits += u32::from(len);
        while nbits >= 8 {
            nbits -= 8;
            out.push((acc >> nbits) as u8);
        }
        acc &= (1 << nbits) - 1;
    }
    if nbits > 0 {
        let pad = 8 - nbits;
        out.push(((acc << pad) | ((1 << pad) - 1)) as u8);
    }
}

/// Appends the decoding of `src` to `out`, writing at most `limit` bytes.
pub fn decode(src: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), HuffmanError> {
    let c = &CANONICAL;
    // Codes are at least 5 bits, so this bounds the output without trusting `limit` alone.
    out.reserve((src.len().saturating_mul(8) / 5).min(limit));
    let mut written = 0usize;
    let mut code = 0u32;
    let mut len = 0usize;
    for &byte in src {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            let first = c.first[len];
            let count = u32::from(c.count[len]);
            if code >= first && code - first < count {
                let at = usize::from(c.offset[len]) + (code - first) as usize;
                let sym = *c.syms.get(at).ok_or(HuffmanError::Invalid)?;
                if sym == EOS {
                    return Err(HuffmanError::Invalid);
                }
                if written == limit {
                    return Err(HuffmanError::TooLong);
                }
                out.push(sym as u8);
                written += 1;
                code = 0;
                len = 0;
            } else if len == MAX_LEN {
                // Not reachable with a complete code, but never index past the tables.
                return Err(HuffmanError::Invalid);
            }
        }
    }
    // Padding: fewer than 8 bits, all ones (a prefix of EOS). RFC 7541 §5.2.
    if len > 7 || code != (1 << len) - 1 {
        return Err(HuffmanError::Invalid);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dec(src: &[u8]) -> Result<Vec<u8>, HuffmanError> {
        let mut out = Vec::new();
        decode(src, usize::MAX, &mut out).map(|()| out)
    }

    #[test]
    fn code_is_canonical() {
        // Each length's codes are consecutive in symbol order, and each length starts
        // where the shorter ones left off (so no code is a prefix of another).
        let c = &CANONICAL;
        let mut next = 0u32;
        for len in 1..=MAX_LEN {
            let count = u32::from(c.count[len]);
            if count > 0 {
                assert_eq!(c.first[len], next, "length {len}");
            }
            for k in 0..count {
                let sym = c.syms[usize::from(c.offset[len]) + k as usize];
                assert_eq!(ENCODE_TABLE[usize::from(sym)], (len as u8, next + k));
            }
            next = (next + count) << 1;
        }
        assert_eq!(c.count.iter().map(|&n| usize::from(n)).sum::<usize>(), 257);
        assert_eq!(ENCODE_TABLE[256], (30, 0x3fff_ffff));
    }

    #[test]
    fn rfc7541_appendix_c_strings() {
        // RFC 7541 C.4.1-C.4.3 and C.6.1.
        let cases: [(&[u8], &[u8]); 5] = [
            (
                b"www.example.com",
                &[
                    0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
                ],
            ),
            (b"no-cache", &[0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf]),
            (
                b"custom-key",
                &[0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9, 0x7d, 0x7f],
            ),
            (
                b"custom-value",
                &[0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf],
            ),
            (b"302", &[0x64, 0x02]),
        ];
        for (plain, coded) in cases {
            let mut out = Vec::new();
            encode(plain, &mut out);
            assert_eq!(out, coded, "{:?}", String::from_utf8_lossy(plain));
            assert_eq!(encoded_len(plain), coded.len());
            assert_eq!(dec(coded).unwrap(), plain);
        }
    }

    #[test]
    fn rejects_bad_padding_and_eos() {
        // "0" is 00000 (5 bits): padding 111 is fine, 110 or 000 is not.
        assert_eq!(dec(&[0x07]).unwrap(), b"0");
        assert_eq!(dec(&[0x06]), Err(HuffmanError::Invalid));
        assert_eq!(dec(&[0x00]).unwrap_err(), HuffmanError::Invalid);
        // Eight or more bits of ones is padding longer than 7 bits.
        assert_eq!(dec(&[0xff]), Err(HuffmanError::Invalid));
        assert_eq!(dec(&[0x07, 0xff]), Err(HuffmanError::Invalid));
        // EOS itself (30 ones) inside the string.
        assert_eq!(dec(&[0xff, 0xff, 0xff, 0xfc]), Err(HuffmanError::Invalid));
        assert_eq!(dec(&[0xff, 0xff, 0xff, 0xff]), Err(HuffmanError::Invalid));
        assert_eq!(dec(&[]).unwrap(), b"");
    }

    #[test]
    fn limit_bounds_output() {
        let mut coded = Vec::new();
        encode(b"aaaa", &mut coded);
        let mut out = Vec::new();
        assert_eq!(decode(&coded, 3, &mut out), Err(HuffmanError::TooLong));
        assert!(out.len() <= 3);
        out.clear();
        assert_eq!(decode(&coded, 4, &mut out), Ok(()));
        assert_eq!(out, b"aaaa");
    }

    proptest! {
        #[test]
        fn round_trip(s: Vec<u8>) {
            let mut coded = Vec::new();
            encode(&s, &mut coded);
            prop_assert_eq!(coded.len(), encoded_len(&s));
            prop_assert_eq!(dec(&coded).unwrap(), s);
        }

        #[test]
        fn decode_never_panics(s: Vec<u8>, limit in 0usize..64) {
            let mut out = Vec::new();
            let _ = decode(&s, limit, &mut out);
            prop_assert!(out.len() <= limit);
        }
    }
}
