//! Prefixed integers (RFC 7541 §5.1, used by RFC 9204 §4.1.1).

/// The largest value we accept: what a QUIC variable-length integer can carry. Every QPACK
/// quantity (indexes, lengths, stream IDs, capacities) is bounded by that or far less.
pub const MAX: u64 = (1 << 62) - 1;

/// Continuation bytes allowed after the prefix: 9 carry 63 bits, enough for `MAX` from
/// any prefix, with room for a little zero padding; anything longer is hostile.
const MAX_CONTINUATION: usize = 9;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntError {
    /// `buf` ends before the integer does.
    Truncated,
    /// Above `MAX`, or encoded in more bytes than any value needs.
    Overflow,
}

/// Decodes an integer whose first byte's low `prefix` bits (1..=8) start it; the high bits
/// belong to the caller. Returns the value and the bytes it took.
pub fn decode(buf: &[u8], prefix: u8) -> Result<(u64, usize), IntError> {
    debug_assert!((1..=8).contains(&prefix));
    let first = *buf.first().ok_or(IntError::Truncated)?;
    let max_prefix = u8::MAX >> (8 - prefix);
    let mut value = u64::from(first & max_prefix);
    if value < u64::from(max_prefix) {
        return Ok((value, 1));
    }
    for i in 0..=MAX_CONTINUATION {
        let b = *buf.get(1 + i).ok_or(IntError::Truncated)?;
        if i == MAX_CONTINUATION {
            return Err(IntError::Overflow);
        }
        // i ≤ 8, so the shift is ≤ 56 and 7 bits shifted by it fit in a u64.
        value += u64::from(b & 0x7f) << (7 * i);
        if value > MAX {
            return Err(IntError::Overflow);
        }
        if b & 0x80 == 0 {
            return Ok((value, 2 + i));
        }
    }
    Err(IntError::Overflow)
}

/// Appends `value` with the `prefix` low bits of the first byte, whose high bits are `flags`.
pub fn encode(out: &mut Vec<u8>, flags: u8, prefix: u8, value: u64) {
    debug_assert!((1..=8).contains(&prefix));
    let max_prefix = u8::MAX >> (8 - prefix);
    if value < u64::from(max_prefix) {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max_prefix);
    let mut rest = value - u64::from(max_prefix);
    while rest >= 0x80 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc7541_examples() {
        // RFC 7541 C.1.1-C.1.3: 10 in a 5-bit prefix, 1337 in 5 bits, 42 in 8 bits.
        let mut out = Vec::new();
        encode(&mut out, 0, 5, 10);
        assert_eq!(out, [0x0a]);
        out.clear();
        encode(&mut out, 0, 5, 1337);
        assert_eq!(out, [0x1f, 0x9a, 0x0a]);
        assert_eq!(decode(&out, 5), Ok((1337, 3)));
        out.clear();
        encode(&mut out, 0, 8, 42);
        assert_eq!(out, [42]);
        // The high bits are the caller's and do not leak into the value.
        assert_eq!(decode(&[0xea], 5), Ok((10, 1)));
    }

    #[test]
    fn truncated_and_overflow() {
        assert_eq!(decode(&[], 5), Err(IntError::Truncated));
        assert_eq!(decode(&[0x1f], 5), Err(IntError::Truncated));
        assert_eq!(decode(&[0x1f, 0x80], 5), Err(IntError::Truncated));
        // 2^62 - 1 is the largest accepted; one more overflows.
        let mut out = Vec::new();
        encode(&mut out, 0, 5, MAX);
        assert_eq!(decode(&out, 5), Ok((MAX, out.len())));
        out.clear();
        encode(&mut out, 0, 5, MAX + 1);
        assert_eq!(decode(&out, 5), Err(IntError::Overflow));
        // Endless zero padding is cut off after nine continuation bytes.
        let mut padded = vec![0x1f];
        padded.extend([0x80; 9]);
        padded.push(0);
        assert_eq!(decode(&padded, 5), Err(IntError::Overflow));
        // A few padding bytes are still fine.
        assert_eq!(decode(&[0x1f, 0x81, 0x80, 0x00], 5), Ok((32, 4)));
        assert_eq!(decode(&[0xff; 20], 8), Err(IntError::Overflow));
    }

    proptest! {
        #[test]
        fn round_trip(value in 0..=MAX, prefix in 1u8..=8, flags: u8) {
            let flags = flags & !(u8::MAX >> (8 - prefix));
            let mut out = Vec::new();
            encode(&mut out, flags, prefix, value);
            prop_assert_eq!(out[0] & flags, flags);
            prop_assert_eq!(decode(&out, prefix), Ok((value, out.len())));
        }

        #[test]
        fn never_panics(buf: Vec<u8>, prefix in 1u8..=8) {
            let _ = decode(&buf, prefix);
        }
    }
}
