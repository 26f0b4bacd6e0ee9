//! Reassembly of out-of-order, duplicated and overlapping byte ranges into an ordered
//! stream (STREAM and CRYPTO data).
//!
//! Bytes live in one linear buffer indexed by offset, so memory is bounded by how far
//! past the read offset the peer may send (the flow-control window, checked by the
//! caller) no matter how the data is fragmented. The received ranges are tracked in a
//! `RangeSet` whose size is capped: a peer that leaves more holes than any loss pattern
//! could explain is rejected instead of making us track them.

use crate::conn::range_set::RangeSet;

/// The peer fragmented the data into more disjoint pieces than we are willing to track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many gaps in received data")]
pub struct TooFragmented;

#[derive(Debug)]
pub struct Assembler {
    /// Bytes for offsets `buf_offset .. buf_offset + buf.len()`; holes are zero-filled.
    buf: Vec<u8>,
    buf_offset: u64,
    /// Everything below this has been handed to the reader.
    read_offset: u64,
    received: RangeSet,
    /// Bytes in `received`.
    covered: u64,
    max_ranges: usize,
    /// Out-of-order bytes each range beyond `FREE_RANGES` must account for on average.
    min_range_bytes: u64,
}

/// Disjoint ranges allowed whatever their size.
const FREE_RANGES: usize = 64;
/// Beyond `FREE_RANGES`, out-of-order bytes buffered per range: a lost packet leaves a
/// gap after a whole packet's worth of data, while a fragment flood brings a byte or two
/// per range. The bound keeps `RangeSet` inserts (a `Vec` shift per new range) from
/// becoming quadratic work for little input.
pub const MIN_RANGE_BYTES: u64 = 256;

impl Assembler {
    /// `max_ranges` bounds the number of disjoint received ranges (holes + 1).
    pub fn new(max_ranges: usize) -> Self {
        Self {
            buf: Vec::new(),
            buf_offset: 0,
            read_offset: 0,
            received: RangeSet::new(),
            covered: 0,
            max_ranges: max_ranges.max(2),
            min_range_bytes: MIN_RANGE_BYTES,
        }
    }

    /// The same assembler with another out-of-order bytes per range requirement (0: none).
    pub fn with_min_range_bytes(mut self, bytes: u64) -> Self {
        self.min_range_bytes = bytes;
        self
    }

    /// Empties a finished stream's assembler for reuse by a new one (see `Streams::recycle`).
    pub fn recycle(&mut self) {
        self.empty_buffer();
        self.buf_offset = 0;
        self.read_offset = 0;
        self.received.clear();
        self.covered = 0;
    }

    /// The same assembler with another bound on received ranges.
    pub fn with_max_ranges(mut self, max_ranges: usize) -> Self {
        self.max_ranges = max_ranges.max(2);
        self
    }

    /// Drops the buffered bytes, keeping a small allocation for reuse.
    fn empty_buffer(&mut self) {
        self.buf.clear();
        if self.buf.capacity() > super::RECYCLE_BUFFER_BYTES {
            self.buf = Vec::new();
        }
    }

    pub fn read_offset(&self) -> u64 {
        self.read_offset
    }

    /// One past the highest byte received so far.
    #[cfg(test)]
    pub fn highest(&self) -> u64 {
        self.received.max().map_or(0, |m| m + 1)
    }

    /// End of the data readable in order from `read_offset`.
    pub fn contiguous_end(&self) -> u64 {
        match self.received.first() {
            Some(r) if r.start <= self.read_offset => r.end.max(self.read_offset),
            _ => self.read_offset,
        }
    }

    /// Bytes that can be read now.
    pub fn readable(&self) -> u64 {
        self.contiguous_end() - self.read_offset
    }

    /// Memory held for received but unread data (including holes).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Bytes allocated for the buffer, used or not.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Gives memory back when at least half the allocation holds nothing unread: moves
    /// the unread bytes (holes included) to the front and shrinks to fit them, keeping
    /// at least a small buffer. The move is paid for by the memory it frees, so calling
    /// this after every read stays linear. A reader that drains a stream keeps the
    /// allocation its window once needed; the caller decides when that is too much.
    pub fn shrink(&mut self) {
        let unread = self.buf.len() - self.consumed_in_buffer();
        let keep = unread.max(super::RECYCLE_BUFFER_BYTES);
        if self.buf.capacity() <= keep || self.buf.capacity() - unread < unread {
            return;
        }
        self.drop_read_bytes();
        self.buf.shrink_to(keep);
    }

    /// True if every byte in `0..end` has been received.
    pub fn is_complete(&self, end: u64) -> bool {
        self.contiguous_end() >= end
    }

    /// Stores `data` at `offset`. Bytes below the read offset or already present are
    /// ignored (the RFC lets us assume retransmissions carry identical bytes, §2.2).
    /// Returns true if this made new bytes readable. The caller has already checked
    /// the range against flow control, which is what bounds the buffer.
    pub fn insert(&mut self, offset: u64, data: &[u8]) -> Result<bool, TooFragmented> {
        let end = offset + data.len() as u64;
        if end <= self.read_offset || data.is_empty() {
            return Ok(false);
        }
        let (offset, data) = if offset < self.read_offset {
            let skip = (self.read_offset - offset) as usize;
            (self.read_offset, &data[skip..])
        } else {
            (offset, data)
        };
        if self.received.contains_range(offset..end) {
            return Ok(false);
        }
        // Only data that opens a new disjoint range is subject to the fragmentation limits:
        // a retransmission that fills or extends a range never makes tracking costlier, and
        // §2.2 gives no ground to refuse it. Checked before anything changes, so a refused
        // frame leaves no trace.
        if self.received.would_add_range(offset..end) {
            self.check_fragmentation(self.received.len() + 1, self.covered + (end - offset))?;
        }
        let readable_before = self.contiguous_end();
        self.covered += self.received.insert_counting(offset..end);
        self.make_room(end);
        let start = (offset - self.buf_offset) as usize;
        if start == self.buf.len() {
            // In-order data (the common case) appends: nothing to zero-fill first.
            self.buf.extend_from_slice(data);
        } else {
            if start + data.len() > self.buf.len() {
                self.buf.resize(start + data.len(), 0);
            }
            self.buf[start..start + data.len()].copy_from_slice(data);
        }
        Ok(self.contiguous_end() > readable_before)
    }

    /// With `ranges` disjoint ranges covering `covered` bytes: too many ranges, or more
    /// beyond `FREE_RANGES` than the out-of-order bytes justify.
    fn check_fragmentation(&self, ranges: usize, covered: u64) -> Result<(), TooFragmented> {
        if ranges > self.max_ranges {
            return Err(TooFragmented);
        }
        if ranges > FREE_RANGES && self.min_range_bytes > 0 {
            let prefix = self
                .received
                .first()
                .filter(|r| r.start == 0)
                .map_or(0, |r| r.end);
            let out_of_order = covered - prefix;
            if ((ranges - FREE_RANGES) as u64).saturating_mul(self.min_range_bytes) > out_of_order {
                return Err(TooFragmented);
            }
        }
        Ok(())
    }

    /// Before the buffer is extended to offset `end`: drops already-read bytes when the
    /// allocation would otherwise have to grow.
    fn make_room(&mut self, end: u64) {
        let needed = (end - self.buf_offset) as usize;
        if needed <= self.buf.capacity() || self.read_offset <= self.buf_offset {
            return;
        }
        self.drop_read_bytes();
        // Keep at least half the allocation free so that compaction stays amortized
        // O(1) per byte instead of moving a nearly full buffer on every insert.
        if self.buf.len() > self.buf.capacity() / 2 {
            self.buf.reserve(self.buf.len());
        }
    }

    /// Bytes at the front of the buffer already handed to the reader.
    fn consumed_in_buffer(&self) -> usize {
        (self.read_offset.saturating_sub(self.buf_offset) as usize).min(self.buf.len())
    }

    /// Moves the unread bytes (holes included) to the front of the buffer.
    fn drop_read_bytes(&mut self) {
        let consumed = self.consumed_in_buffer();
        self.buf.drain(..consumed);
        self.buf_offset += consumed as u64;
    }

    /// Copies readable bytes into `out`; returns how many (tests read this way; streams
    /// read through `read_with`).
    #[cfg(test)]
    pub fn read(&mut self, out: &mut [u8]) -> usize {
        let len = out.len();
        self.read_with(len, |data| out[..data.len()].copy_from_slice(data))
    }

    /// Hands the readable bytes, at most `max`, to `f` where they lie (they are always
    /// contiguous) and consumes them; returns how many.
    pub fn read_with(&mut self, max: usize, f: impl FnOnce(&[u8])) -> usize {
        let n = (self.readable() as usize).min(max);
        let start = (self.read_offset - self.buf_offset) as usize;
        f(&self.buf[start..start + n]);
        self.consume(n as u64);
        n
    }

    /// Returns the readable bytes, at most `max`, and marks them consumed.
    pub fn read_chunk(&mut self, max: usize) -> Option<&[u8]> {
        let n = (self.readable() as usize).min(max);
        if n == 0 {
            return None;
        }
        let start = (self.read_offset - self.buf_offset) as usize;
        self.read_offset += n as u64;
        // No compaction here: the slice borrows the buffer. The next insert or read
        // reclaims the space.
        Some(&self.buf[start..start + n])
    }

    /// Drops up to `max` readable bytes without copying; returns how many.
    #[cfg(test)]
    pub fn discard(&mut self, max: u64) -> u64 {
        let n = self.readable().min(max);
        self.consume(n);
        n
    }

    fn consume(&mut self, n: u64) {
        self.read_offset += n;
        if self.read_offset >= self.buf_offset + self.buf.len() as u64 {
            // Everything buffered is read: restart at the front without moving bytes.
            self.buf.clear();
            self.buf_offset = self.read_offset;
        }
    }

    /// Frees all buffered data (stream reset or no longer wanted), keeping offsets.
    /// A small allocation is kept (emptied) for the stream's successor; see
    /// `Streams::recycle`.
    pub fn release(&mut self) {
        self.empty_buffer();
        self.buf_offset = self.read_offset;
        self.received.clear();
        self.covered = 0;
        if self.read_offset > 0 {
            self.received.insert(0..self.read_offset);
            self.covered = self.read_offset;
        }
    }

    /// Received ranges, for tests.
    #[cfg(test)]
    pub fn received(&self) -> impl Iterator<Item = std::ops::Range<u64>> + '_ {
        self.received.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn in_order_and_out_of_order() {
        let mut a = Assembler::new(16);
        assert!(!a.insert(5, b"fghij").unwrap());
        assert_eq!(a.readable(), 0);
        assert!(a.insert(0, b"abcde").unwrap());
        let mut out = [0u8; 20];
        assert_eq!(a.read(&mut out), 10);
        assert_eq!(&out[..10], b"abcdefghij");
        assert_eq!(a.buffered(), 0);
        // Duplicate below the read offset is ignored.
        assert!(!a.insert(0, b"abcdefghij").unwrap());
        // Overlapping the read offset keeps only the new tail.
        assert!(a.insert(8, b"ijklm").unwrap());
        assert_eq!(a.read(&mut out), 3);
        assert_eq!(&out[..3], b"klm");
        assert_eq!(a.highest(), 13);
    }

    /// `shrink` keeps what is unread, holes and offsets included, and gives back the rest
    /// only when at least half the allocation is waste.
    #[test]
    fn shrink_keeps_unread_bytes_and_frees_the_rest() {
        let mut a = Assembler::new(16);
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        a.insert(1, &big[1..150_000]).unwrap();
        a.insert(160_000, &big[160_000..]).unwrap();
        a.insert(0, &big[..1]).unwrap();
        let mut out = vec![0; 149_000];
        assert_eq!(a.read(&mut out), 149_000);
        let before = a.capacity();
        a.shrink();
        assert!(a.capacity() < before / 2, "{} -> {}", before, a.capacity());
        // 1,000 bytes, a hole of 10,000, then 40,000 bytes: unchanged by the move.
        let mut rest = vec![0; 2000];
        assert_eq!(a.read(&mut rest), 1000);
        assert_eq!(rest[..1000], big[149_000..150_000]);
        a.insert(150_000, &big[150_000..160_000]).unwrap();
        let mut tail = vec![0; 60_000];
        assert_eq!(a.read(&mut tail), 50_000);
        assert_eq!(tail[..50_000], big[150_000..]);
        // Mostly unread: nothing to give back.
        a.insert(200_000, &[9; 50_000]).unwrap();
        let cap = a.capacity();
        a.shrink();
        assert_eq!(a.capacity(), cap);
        // Drained: down to the small buffer a recycled stream keeps.
        a.discard(50_000);
        a.shrink();
        assert!(a.capacity() <= super::super::RECYCLE_BUFFER_BYTES);
    }

    #[test]
    fn read_chunk_consumes() {
        let mut a = Assembler::new(16);
        a.insert(0, b"hello").unwrap();
        assert_eq!(a.read_chunk(3), Some(&b"hel"[..]));
        assert_eq!(a.read_chunk(100), Some(&b"lo"[..]));
        assert_eq!(a.read_chunk(100), None);
        a.insert(5, b" world").unwrap();
        assert_eq!(a.read_chunk(100), Some(&b" world"[..]));
    }

    #[test]
    fn too_many_gaps_is_rejected() {
        let mut a = Assembler::new(4);
        for i in 0..4 {
            a.insert(i * 2 + 1, b"x").unwrap();
        }
        assert_eq!(a.insert(100, b"x"), Err(TooFragmented));
    }

    #[test]
    fn a_flood_of_tiny_fragments_is_rejected_early() {
        // One-byte fragments at descending offsets, each a new range at the front.
        let mut a = Assembler::new(1 << 20);
        let mut accepted = 0;
        for i in (1..5000u64).rev() {
            if a.insert(i * 2, b"x").is_err() {
                break;
            }
            accepted += 1;
        }
        assert_eq!(
            accepted, FREE_RANGES,
            "rejected right after the free ranges"
        );
    }

    #[test]
    fn a_retransmission_filling_a_gap_is_never_refused() {
        // In-order prefix, a large range after one hole, then small ranges up to the
        // per-range limit. Filling the hole merges the large range into the prefix, which
        // shrinks the out-of-order bytes far more than the range count: still accepted.
        let mut a = Assembler::new(1 << 20);
        a.insert(0, &[1u8; 100]).unwrap();
        a.insert(200, &[3u8; 1000]).unwrap();
        let mut small = 0u64;
        while a.insert(1300 + 2 * small, b"x").is_ok() {
            small += 1;
        }
        let refused = 1300 + 2 * small;
        assert!(small > FREE_RANGES as u64, "{small} small ranges");
        assert!(a.insert(100, &[2u8; 100]).unwrap(), "the gap filled");
        let mut out = vec![0u8; 2000];
        let n = a.read(&mut out);
        assert_eq!(n, 1200);
        assert!(out[..100].iter().all(|&b| b == 1));
        assert!(out[100..200].iter().all(|&b| b == 2));
        assert!(out[200..1200].iter().all(|&b| b == 3));
        // Growing an existing range is never refused either; a refused new range leaves
        // nothing behind.
        a.insert(1301, b"y").unwrap();
        assert_eq!(a.insert(refused + 100, b"z"), Err(TooFragmented));
        assert!(!a.received().any(|r| r.contains(&(refused + 100))));
    }

    #[test]
    fn packet_sized_gaps_are_accepted_up_to_the_range_bound() {
        // Every other 1200-byte packet lost: 1000 gaps, each after a packet of data.
        let mut a = Assembler::new(1024);
        let packet = [9u8; 1200];
        for k in 0..1000u64 {
            a.insert((2 * k + 1) * 1200, &packet).unwrap();
        }
        assert_eq!(a.received().count(), 1000);
        // Retransmissions fill the holes and everything becomes readable.
        for k in 0..1000u64 {
            a.insert(2 * k * 1200, &packet).unwrap();
        }
        assert_eq!(a.received().count(), 1);
        assert_eq!(a.readable(), 2000 * 1200);
        // Beyond the bound on ranges, even big ones are refused.
        let mut b = Assembler::new(64);
        for k in 0..64u64 {
            b.insert((2 * k + 1) * 1200, &packet).unwrap();
        }
        assert_eq!(b.insert(10_000_000, &packet), Err(TooFragmented));
    }

    #[test]
    fn tiny_fragments_do_not_grow_memory_past_span() {
        let mut a = Assembler::new(1 << 20);
        // 10,000 one-byte fragments in reverse order: memory stays the span.
        for i in (0..10_000u64).rev() {
            a.insert(i, &[i as u8]).unwrap();
        }
        assert_eq!(a.received().count(), 1);
        assert!(a.buffered() <= 10_000);
        assert_eq!(a.discard(u64::MAX), 10_000);
    }

    #[test]
    fn compaction_keeps_data() {
        let mut a = Assembler::new(16);
        let data: Vec<u8> = (0..=255).collect();
        let mut out = vec![0u8; 100];
        let mut got = Vec::new();
        let mut off = 0u64;
        for round in 0..200 {
            let n = 37 + round % 50;
            let chunk: Vec<u8> = (0..n).map(|i| data[((off + i) % 256) as usize]).collect();
            a.insert(off, &chunk).unwrap();
            off += n;
            let r = a.read(&mut out[..60]);
            got.extend_from_slice(&out[..r]);
        }
        while a.readable() > 0 {
            let r = a.read(&mut out);
            got.extend_from_slice(&out[..r]);
        }
        assert_eq!(got.len() as u64, off);
        assert!(got.iter().enumerate().all(|(i, b)| *b == data[i % 256]));
    }

    proptest! {
        /// Random fragmentation, duplication, overlap and order reassemble byte-exact.
        #[test]
        fn reassembles_any_fragmentation(
            data in proptest::collection::vec(any::<u8>(), 1..3000),
            cuts in proptest::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 1..80),
            order in any::<prop::sample::Index>(),
            read_sizes in proptest::collection::vec(1usize..500, 1..20),
        ) {
            let len = data.len();
            // Random (possibly overlapping) pieces plus a tiling so everything is covered.
            let mut pieces: Vec<(usize, usize)> = cuts.iter().map(|(a, b)| {
                let (x, y) = (a.index(len), b.index(len + 1));
                (x.min(y), x.max(y))
            }).collect();
            let mut bounds: Vec<usize> = cuts.iter().map(|(a, _)| a.index(len)).collect();
            bounds.push(0);
            bounds.push(len);
            bounds.sort_unstable();
            bounds.dedup();
            for w in bounds.windows(2) { pieces.push((w[0], w[1])); }
            let rot = order.index(pieces.len());
            pieces.rotate_left(rot);
            pieces.sort_by_key(|&(s, e)| (s * 7919 + e * 31) % 1009);
            // Arbitrary fragments, however small: the fragment-flood bound is off here.
            let mut a = Assembler::new(1000).with_min_range_bytes(0);
            let mut out = Vec::new();
            let mut buf = vec![0u8; 500];
            for (i, (s, e)) in pieces.iter().enumerate() {
                a.insert(*s as u64, &data[*s..*e]).unwrap();
                let r = a.read(&mut buf[..read_sizes[i % read_sizes.len()]]);
                out.extend_from_slice(&buf[..r]);
                prop_assert!(a.buffered() <= len);
            }
            loop {
                let r = a.read(&mut buf);
                if r == 0 { break; }
                out.extend_from_slice(&buf[..r]);
            }
            prop_assert_eq!(out, data);
        }
    }
}
