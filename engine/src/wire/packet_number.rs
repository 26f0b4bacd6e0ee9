//! Packet-number truncation and recovery (RFC 9000 §17.1, Appendix A.2 and A.3).

use super::error::WireError;
use super::varint::Writer;

/// Largest packet number an endpoint may use (RFC 9000 §12.3).
pub const MAX_PACKET_NUMBER: u64 = (1 << 62) - 1;

/// Bytes (1..=4) needed to send `pn` so that the peer can recover it: the encoding must
/// cover more than twice the span of unacknowledged packets (RFC 9000 §17.1, A.2).
pub fn encoded_len(pn: u64, largest_acked: Option<u64>) -> usize {
    let unacked = match largest_acked {
        Some(acked) => pn.saturating_sub(acked),
        None => pn.saturating_add(1),
    };
    let range = unacked.saturating_mul(2);
    if range < 1 << 8 {
        1
    } else if range < 1 << 16 {
        2
    } else if range < 1 << 24 {
        3
    } else {
        4
    }
}

/// Recovers a full packet number from its `pn_len`-byte truncation, given the largest
/// packet number received so far in this space (RFC 9000 Appendix A.3). `pn_len` outside
/// 1..=4 is clamped (it comes from two header bits, so this only guards misuse).
pub fn decode(truncated: u64, pn_len: usize, largest_received: Option<u64>) -> u64 {
    let bits = 8 * pn_len.clamp(1, 4) as u32;
    let expected = largest_received.map_or(0, |l| l.saturating_add(1));
    let win = 1u64 << bits;
    let hwin = win / 2;
    let mask = win - 1;
    let candidate = (expected & !mask) | (truncated & mask);
    // The window is centred on `expected`; move the candidate one window up or down if
    // it fell outside, without leaving 0..2^62.
    if candidate.saturating_add(hwin) <= expected && candidate < (1u64 << 62).saturating_sub(win) {
        candidate + win
    } else if candidate > expected.saturating_add(hwin) && candidate >= win {
        candidate - win
    } else {
        candidate
    }
}

/// Writes the low `pn_len` (1..=4) bytes of `pn`, big endian.
pub fn write(w: &mut Writer, pn: u64, pn_len: usize) -> Result<(), WireError> {
    if !(1..=4).contains(&pn_len) {
        return Err(WireError::InvalidValue);
    }
    w.put_bytes(&pn.to_be_bytes()[8 - pn_len..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::varint::Reader;
    use proptest::prelude::*;

    /// RFC 9000 Appendix A.2.
    #[test]
    fn rfc9000_a2_encoding_examples() {
        assert_eq!(encoded_len(0xac5c02, Some(0xabe8b3)), 2);
        assert_eq!(encoded_len(0xace8fe, Some(0xabe8b3)), 3);
    }

    /// RFC 9000 Appendix A.3 (and §17.1).
    #[test]
    fn rfc9000_a3_decoding_example() {
        assert_eq!(decode(0x9b32, 2, Some(0xa82f30ea)), 0xa82f9b32);
    }

    #[test]
    fn encoded_len_edges() {
        assert_eq!(encoded_len(0, None), 1);
        assert_eq!(encoded_len(126, None), 1);
        assert_eq!(encoded_len(127, None), 2);
        assert_eq!(encoded_len(MAX_PACKET_NUMBER, None), 4);
        assert_eq!(encoded_len(10, Some(20)), 1);
    }

    #[test]
    fn decode_edges() {
        assert_eq!(decode(0, 1, None), 0);
        assert_eq!(decode(0xff, 1, None), 0xff);
        // Wraps forward past a window boundary.
        assert_eq!(decode(0x01, 1, Some(0xff)), 0x101);
        // A late packet from below the current window.
        assert_eq!(decode(0xfe, 1, Some(0x101)), 0xfe);
        // Near the top of the packet-number space nothing overflows.
        let top = MAX_PACKET_NUMBER;
        assert_eq!(decode(top & 0xffff_ffff, 4, Some(top - 1)), top);
        assert_eq!(decode(5, 0, Some(3)), 5);
        assert_eq!(decode(5, 9, Some(3)), 5);
    }

    #[test]
    fn write_truncates() {
        let mut buf = [0u8; 4];
        let mut w = Writer::new(&mut buf);
        write(&mut w, 0x0012_3456_789a, 3).unwrap();
        assert_eq!(w.written(), &[0x56, 0x78, 0x9a]);
        assert_eq!(write(&mut w, 1, 0), Err(WireError::InvalidValue));
        assert_eq!(write(&mut w, 1, 5), Err(WireError::InvalidValue));
        assert_eq!(write(&mut w, 1, 2), Err(WireError::BufferTooSmall));
    }

    proptest! {
        /// Whatever the sender picks with `encoded_len`, a receiver that has seen the
        /// sender's largest acknowledged packet recovers the full number.
        #[test]
        fn encode_decode_round_trip(largest in 0u64..(1 << 40), ahead in 1u64..(1 << 30)) {
            let pn = largest + ahead;
            let len = encoded_len(pn, Some(largest));
            let mut buf = [0u8; 4];
            let mut w = Writer::new(&mut buf);
            write(&mut w, pn, len).unwrap();
            let mut truncated = 0u64;
            for b in Reader::new(&buf[..len]).rest() {
                truncated = (truncated << 8) | u64::from(*b);
            }
            prop_assert_eq!(decode(truncated, len, Some(largest)), pn);
        }

        #[test]
        fn decode_never_panics(t in any::<u64>(), len in 0usize..8, largest in any::<Option<u64>>()) {
            let _ = decode(t, len, largest);
        }
    }
}
