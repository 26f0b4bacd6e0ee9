//! Variable-length integers (RFC 9000 §16) and the byte cursors every parser uses.
//!
//! [`Reader`] hands out sub-slices of its input (zero copy); [`Writer`] fills a caller's
//! buffer. Neither panics: running off either end is an error.

use super::cid::ConnectionId;
use super::error::WireError;

/// Largest value a varint can carry: 2^62 - 1.
pub const MAX_VARINT: u64 = (1 << 62) - 1;

/// Bytes needed to encode `v` minimally (1, 2, 4 or 8). Values above [`MAX_VARINT`]
/// report 8; writing them fails.
pub fn varint_len(v: u64) -> usize {
    if v < 1 << 6 {
        1
    } else if v < 1 << 14 {
        2
    } else if v < 1 << 30 {
        4
    } else {
        8
    }
}

/// A read cursor over a byte slice.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// The next byte without consuming it.
    pub fn peek_u8(&self) -> Result<u8, WireError> {
        self.buf
            .get(self.pos)
            .copied()
            .ok_or(WireError::UnexpectedEnd)
    }

    pub fn u8(&mut self) -> Result<u8, WireError> {
        let b = self.peek_u8()?;
        self.pos += 1;
        Ok(b)
    }

    pub fn u16(&mut self) -> Result<u16, WireError> {
        self.array().map(u16::from_be_bytes)
    }

    pub fn u32(&mut self) -> Result<u32, WireError> {
        self.array().map(u32::from_be_bytes)
    }

    pub fn u64(&mut self) -> Result<u64, WireError> {
        self.array().map(u64::from_be_bytes)
    }

    /// A varint (RFC 9000 §16): the two high bits of the first byte give its length.
    #[inline]
    pub fn varint(&mut self) -> Result<u64, WireError> {
        self.varint_with_len().map(|(v, _)| v)
    }

    /// A varint and the number of bytes it used (to detect non-minimal encodings).
    /// Each length reads its bytes as one big-endian word: no loop, one bounds check.
    #[inline(always)]
    pub fn varint_with_len(&mut self) -> Result<(u64, usize), WireError> {
        // `pos` never passes the end, so `get` fails only on an empty rest.
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let (v, len) = match rest.first() {
            None => return Err(WireError::UnexpectedEnd),
            Some(&b) if b < 0x40 => (u64::from(b), 1),
            Some(&b) if b < 0x80 => match rest.first_chunk::<2>() {
                Some(c) => (u64::from(u16::from_be_bytes(*c) & 0x3fff), 2),
                None => return Err(WireError::UnexpectedEnd),
            },
            Some(&b) if b < 0xc0 => match rest.first_chunk::<4>() {
                Some(c) => (u64::from(u32::from_be_bytes(*c) & 0x3fff_ffff), 4),
                None => return Err(WireError::UnexpectedEnd),
            },
            Some(_) => match rest.first_chunk::<8>() {
                Some(c) => (u64::from_be_bytes(*c) & MAX_VARINT, 8),
                None => return Err(WireError::UnexpectedEnd),
            },
        };
        self.pos += len;
        Ok((v, len))
    }

    /// The next `n` bytes, borrowed from the input.
    #[inline]
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let buf: &'a [u8] = self.buf;
        let out = buf
            .get(self.pos..)
            .and_then(|rest| rest.get(..n))
            .ok_or(WireError::UnexpectedEnd)?;
        self.pos += n;
        Ok(out)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    /// Everything not yet consumed; the reader is empty afterwards.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    pub fn skip(&mut self, n: usize) -> Result<(), WireError> {
        self.bytes(n).map(|_| ())
    }

    /// Consumes the run of zero bytes at the cursor (PADDING frames); returns its length.
    /// Compares 16 bytes at a time: a padded Initial carries a thousand of them.
    pub fn skip_zeros(&mut self) -> usize {
        let rest = &self.buf[self.pos..];
        let mut n = 0;
        for chunk in rest.chunks_exact(16) {
            if chunk != [0u8; 16] {
                break;
            }
            n += 16;
        }
        n += rest[n..].iter().take_while(|&&b| b == 0).count();
        self.pos += n;
        n
    }
}

/// A write cursor over a caller-owned buffer. Bytes before the cursor are what was
/// written; bytes after it are scratch (`put_cid` may fill them with zeros).
#[derive(Debug)]
pub struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Reserves `n` bytes and returns them for the caller to fill.
    pub fn take(&mut self, n: usize) -> Result<&mut [u8], WireError> {
        if n > self.remaining() {
            return Err(WireError::BufferTooSmall);
        }
        let start = self.pos;
        self.pos += n;
        Ok(&mut self.buf[start..start + n])
    }

    pub fn put_u8(&mut self, v: u8) -> Result<(), WireError> {
        self.put_bytes(&[v])
    }

    pub fn put_u16(&mut self, v: u16) -> Result<(), WireError> {
        self.put_bytes(&v.to_be_bytes())
    }

    pub fn put_u32(&mut self, v: u32) -> Result<(), WireError> {
        self.put_bytes(&v.to_be_bytes())
    }

    pub fn put_u64(&mut self, v: u64) -> Result<(), WireError> {
        self.put_bytes(&v.to_be_bytes())
    }

    /// A minimally encoded varint; `InvalidValue` above [`MAX_VARINT`]. The length comes
    /// from the value, so each size is one range test, one bounds check and one store
    /// (nearly every frame field is a varint).
    #[inline]
    pub fn put_varint(&mut self, v: u64) -> Result<(), WireError> {
        // `pos` never passes the end, so `get_mut` fails only on an empty rest.
        let rest = self.buf.get_mut(self.pos..).unwrap_or_default();
        let len = if v < 1 << 6 {
            *rest.first_mut().ok_or(WireError::BufferTooSmall)? = v as u8;
            1
        } else if v < 1 << 14 {
            *rest.first_chunk_mut().ok_or(WireError::BufferTooSmall)? =
                (v as u16 | 0x4000).to_be_bytes();
            2
        } else if v < 1 << 30 {
            *rest.first_chunk_mut().ok_or(WireError::BufferTooSmall)? =
                (v as u32 | 0x8000_0000).to_be_bytes();
            4
        } else if v <= MAX_VARINT {
            *rest.first_chunk_mut().ok_or(WireError::BufferTooSmall)? =
                (v | 0xc000_0000_0000_0000).to_be_bytes();
            8
        } else {
            return Err(WireError::InvalidValue);
        };
        self.pos += len;
        Ok(())
    }

    /// A varint forced to `len` bytes (1, 2, 4 or 8), for length fields filled in later.
    pub fn put_varint_with_len(&mut self, v: u64, len: usize) -> Result<(), WireError> {
        let dst = self.take_checked_varint(v, len)?;
        encode_varint_into(dst, v);
        Ok(())
    }

    fn take_checked_varint(&mut self, v: u64, len: usize) -> Result<&mut [u8], WireError> {
        check_varint(v, len)?;
        self.take(len)
    }

    /// A connection ID's bytes. With room for the longest ID it copies all 20 stored bytes
    /// as fixed-size moves and advances by the ID's length (every short header has one;
    /// a variable-length copy is a memcpy call): bytes past the cursor are the writer's
    /// to overwrite.
    #[inline]
    pub fn put_cid(&mut self, cid: &ConnectionId) -> Result<(), WireError> {
        let rest = self.buf.get_mut(self.pos..).unwrap_or_default();
        match rest.first_chunk_mut::<{ ConnectionId::MAX_LEN }>() {
            Some(dst) => {
                *dst = *cid.padded();
                self.pos += cid.len();
                Ok(())
            }
            None => self.put_bytes(cid),
        }
    }

    pub fn put_bytes(&mut self, b: &[u8]) -> Result<(), WireError> {
        self.take(b.len())?.copy_from_slice(b);
        Ok(())
    }

    pub fn put_zeros(&mut self, n: usize) -> Result<(), WireError> {
        self.take(n)?.fill(0);
        Ok(())
    }

    /// Writes exactly `len` bytes through `f`, or nothing at all: the writer only
    /// advances if `f` succeeds and wrote exactly `len` bytes (`InvalidValue` if not,
    /// which means a length computation disagrees with its encoder).
    pub fn put_with(
        &mut self,
        len: usize,
        f: impl FnOnce(&mut Writer<'_>) -> Result<(), WireError>,
    ) -> Result<(), WireError> {
        if len > self.remaining() {
            return Err(WireError::BufferTooSmall);
        }
        let mut sub = Writer::new(&mut self.buf[self.pos..self.pos + len]);
        f(&mut sub)?;
        if sub.len() != len {
            return Err(WireError::InvalidValue);
        }
        self.pos += len;
        Ok(())
    }

    /// The whole underlying buffer, including bytes not yet written.
    pub fn buffer(&mut self) -> &mut [u8] {
        self.buf
    }

    /// The bytes written so far.
    pub fn written(&self) -> &[u8] {
        &self.buf[..self.pos]
    }
}

/// `Ok` if `v` fits a varint of exactly `len` bytes.
fn check_varint(v: u64, len: usize) -> Result<(), WireError> {
    let max = match len {
        1 => (1 << 6) - 1,
        2 => (1 << 14) - 1,
        4 => (1 << 30) - 1,
        8 => MAX_VARINT,
        _ => return Err(WireError::InvalidValue),
    };
    if v > max {
        return Err(WireError::InvalidValue);
    }
    Ok(())
}

/// Encodes `v` into all of `dst` (length already validated by `check_varint`).
fn encode_varint_into(dst: &mut [u8], v: u64) {
    // Fixed-size stores per length (a varint is written for nearly every frame field);
    // the values were range-checked by the caller.
    match dst.len() {
        1 => dst[0] = v as u8,
        2 => dst.copy_from_slice(&(v as u16 | 0x4000).to_be_bytes()),
        4 => dst.copy_from_slice(&(v as u32 | 0x8000_0000).to_be_bytes()),
        len => {
            let bytes = v.to_be_bytes();
            dst.copy_from_slice(&bytes[8 - len..]);
            dst[0] |= (len.trailing_zeros() as u8) << 6;
        }
    }
}

/// Overwrites a fixed-length varint previously reserved with
/// [`Writer::put_varint_with_len`].
pub fn write_varint_at(buf: &mut [u8], offset: usize, v: u64, len: usize) -> Result<(), WireError> {
    check_varint(v, len)?;
    let dst = offset
        .checked_add(len)
        .and_then(|end| buf.get_mut(offset..end))
        .ok_or(WireError::BufferTooSmall)?;
    encode_varint_into(dst, v);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode(bytes: &[u8]) -> (u64, usize) {
        let mut r = Reader::new(bytes);
        let v = r.varint().unwrap();
        (v, r.position())
    }

    /// Zero runs of every length around the 16-byte chunking, ended by data or by the end.
    #[test]
    fn skip_zeros_stops_at_the_first_nonzero_byte() {
        for zeros in 0..50 {
            for tail in [&[][..], &[1u8, 0, 0][..], &[0x80][..]] {
                let mut buf = vec![0u8; zeros];
                buf.extend_from_slice(tail);
                let mut r = Reader::new(&buf[..]);
                assert_eq!(r.skip_zeros(), zeros);
                assert_eq!(r.position(), zeros);
                assert_eq!(r.peek_u8().ok(), tail.first().copied());
            }
        }
        let buf = [7u8, 0, 0, 0];
        let mut r = Reader::new(&buf[..]);
        r.skip(1).unwrap();
        assert_eq!(r.skip_zeros(), 3);
        assert!(r.is_empty());
        assert_eq!(r.skip_zeros(), 0);
    }

    /// RFC 9000 Appendix A.1 sample encodings.
    #[test]
    fn rfc9000_a1_examples() {
        let cases: [(&[u8], u64); 5] = [
            (
                &[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c],
                151_288_809_941_952_652,
            ),
            (&[0x9d, 0x7f, 0x3e, 0x7d], 494_878_333),
            (&[0x7b, 0xbd], 15_293),
            (&[0x25], 37),
            (&[0x40, 0x25], 37),
        ];
        for (bytes, value) in cases {
            assert_eq!(decode(bytes), (value, bytes.len()));
        }
        // Minimal encodings match the samples (except the deliberately long 0x4025).
        for (bytes, value) in &cases[..4] {
            let mut buf = [0u8; 8];
            let mut w = Writer::new(&mut buf);
            w.put_varint(*value).unwrap();
            assert_eq!(w.written(), *bytes);
        }
    }

    #[test]
    fn lengths_and_limits() {
        assert_eq!(varint_len(63), 1);
        assert_eq!(varint_len(64), 2);
        assert_eq!(varint_len(16383), 2);
        assert_eq!(varint_len(16384), 4);
        assert_eq!(varint_len((1 << 30) - 1), 4);
        assert_eq!(varint_len(1 << 30), 8);
        let mut buf = [0u8; 8];
        let mut w = Writer::new(&mut buf);
        assert_eq!(w.put_varint(MAX_VARINT + 1), Err(WireError::InvalidValue));
        assert_eq!(w.put_varint_with_len(64, 1), Err(WireError::InvalidValue));
        assert_eq!(w.put_varint_with_len(1, 3), Err(WireError::InvalidValue));
        assert!(w.is_empty());
        w.put_varint(MAX_VARINT).unwrap();
        assert_eq!(w.put_u8(0), Err(WireError::BufferTooSmall));
        assert_eq!(decode(&buf), (MAX_VARINT, 8));
    }

    #[test]
    fn connection_ids_written_whole_or_not_at_all() {
        let cid = ConnectionId::new(&[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        for room in 0..=24 {
            let mut buf = [0xeeu8; 24];
            let mut w = Writer::new(&mut buf[..room]);
            let result = w.put_cid(&cid);
            if room >= 8 {
                assert_eq!(result, Ok(()));
                assert_eq!(w.written(), &cid[..], "room {room}");
            } else {
                assert_eq!(result, Err(WireError::BufferTooSmall));
                assert!(w.is_empty());
            }
        }
        let mut buf = [0u8; 4];
        let mut w = Writer::new(&mut buf);
        w.put_cid(&ConnectionId::default()).unwrap();
        assert!(w.is_empty());
    }

    #[test]
    fn reserved_length_filled_later() {
        let mut buf = [0u8; 16];
        let mut w = Writer::new(&mut buf);
        w.put_u8(0xaa).unwrap();
        w.put_varint_with_len(0, 2).unwrap();
        w.put_u32(0xdead_beef).unwrap();
        assert_eq!(w.len(), 7);
        write_varint_at(w.buffer(), 1, 1000, 2).unwrap();
        assert_eq!(decode(&buf[1..]), (1000, 2));
        assert_eq!(
            write_varint_at(&mut buf, 15, 1, 2),
            Err(WireError::BufferTooSmall)
        );
        assert_eq!(
            write_varint_at(&mut buf, usize::MAX, 1, 2),
            Err(WireError::BufferTooSmall)
        );
    }

    #[test]
    fn put_with_is_all_or_nothing() {
        let mut buf = [0u8; 8];
        let mut w = Writer::new(&mut buf);
        w.put_with(2, |w| w.put_u16(0x0102)).unwrap();
        assert_eq!(
            w.put_with(7, |w| w.put_u8(1)),
            Err(WireError::BufferTooSmall)
        );
        assert_eq!(w.put_with(3, |w| w.put_u8(1)), Err(WireError::InvalidValue));
        assert_eq!(
            w.put_with(3, |w| w.put_varint(u64::MAX)),
            Err(WireError::InvalidValue)
        );
        assert_eq!(w.len(), 2);
        assert_eq!(w.written(), &[1, 2]);
    }

    #[test]
    fn reader_fixed_width_and_errors() {
        let data = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14];
        let mut r = Reader::new(&data);
        assert_eq!(r.u8().unwrap(), 1);
        assert_eq!(r.u16().unwrap(), 0x0203);
        assert_eq!(r.u32().unwrap(), 0x0405_0607);
        assert_eq!(r.u64(), Err(WireError::UnexpectedEnd));
        assert_eq!(r.position(), 7);
        assert_eq!(r.array::<2>().unwrap(), [8, 9]);
        r.skip(1).unwrap();
        assert_eq!(r.bytes(2).unwrap(), &[11, 12]);
        assert_eq!(r.skip(4), Err(WireError::UnexpectedEnd));
        assert_eq!(r.rest(), &[13, 14]);
        assert!(r.is_empty());
        assert_eq!(r.u8(), Err(WireError::UnexpectedEnd));
        // A varint whose length prefix promises more bytes than exist.
        assert_eq!(
            Reader::new(&[0xc0, 1]).varint(),
            Err(WireError::UnexpectedEnd)
        );
    }

    proptest! {
        #[test]
        fn varint_round_trip(v in 0..=MAX_VARINT) {
            let mut buf = [0u8; 8];
            let mut w = Writer::new(&mut buf);
            w.put_varint(v).unwrap();
            let n = w.len();
            prop_assert_eq!(n, varint_len(v));
            prop_assert_eq!(decode(&buf[..n]), (v, n));
        }

        #[test]
        fn varint_short_buffer_writes_nothing(v in 0..=MAX_VARINT, room in 0usize..8, at in 0usize..3) {
            let len = varint_len(v);
            let mut buf = [0x55u8; 16];
            let mut w = Writer::new(&mut buf[..at + room]);
            w.put_zeros(at).unwrap();
            let result = w.put_varint(v);
            if room >= len {
                prop_assert_eq!(result, Ok(()));
                prop_assert_eq!(w.len(), at + len);
                prop_assert_eq!(decode(&buf[at..at + len]), (v, len));
            } else {
                prop_assert_eq!(result, Err(WireError::BufferTooSmall));
                prop_assert_eq!(w.len(), at);
                prop_assert!(buf[at..].iter().all(|&b| b == 0x55));
            }
        }

        #[test]
        fn varint_forced_length_round_trip(v in 0..=MAX_VARINT, extra in 0usize..4) {
            let len = [1usize, 2, 4, 8].into_iter().filter(|&l| l >= varint_len(v)).nth(extra);
            if let Some(len) = len {
                let mut buf = [0u8; 8];
                let mut w = Writer::new(&mut buf);
                w.put_varint_with_len(v, len).unwrap();
                prop_assert_eq!(decode(&buf[..len]), (v, len));
            }
        }

        #[test]
        fn varint_random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..10)) {
            let mut r = Reader::new(&bytes);
            while r.varint().is_ok() {}
        }
    }
}
