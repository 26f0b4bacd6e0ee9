//! Outgoing bytes of one stream (or CRYPTO stream): what the application wrote, what was
//! sent, what was acknowledged and what must be sent again.
//!
//! Bytes stay buffered from the lowest unacknowledged offset to the end of what was
//! written. Lost ranges are queued for retransmission ahead of new data; ranges
//! acknowledged out of order are remembered so a later loss report for them (a
//! spurious loss, or a retransmitted copy) never resends acknowledged bytes.

use std::collections::VecDeque;
use std::ops::Range;

use crate::conn::range_set::RangeSet;

#[derive(Debug, Default)]
pub struct SendBuffer {
    /// Bytes at offsets `base .. base + data.len()`.
    data: VecDeque<u8>,
    /// Everything below is acknowledged and dropped.
    base: u64,
    /// Lowest offset never sent.
    unsent: u64,
    /// Lost ranges waiting to be sent again (never acknowledged bytes).
    retransmit: RangeSet,
    /// Acknowledged ranges above `base`.
    acked: RangeSet,
}

/// A range chosen for the next frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub range: Range<u64>,
    pub retransmit: bool,
}

impl SendBuffer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn write(&mut self, data: &[u8]) {
        self.data.extend(data);
    }

    /// Bytes held (unacknowledged, including unsent).
    pub fn buffered(&self) -> usize {
        self.data.len()
    }

    /// End of the written data.
    pub fn write_offset(&self) -> u64 {
        self.base + self.data.len() as u64
    }

    /// Lowest offset never sent: the flow-control credit this stream has used.
    pub fn unsent_offset(&self) -> u64 {
        self.unsent
    }

    pub fn has_retransmit(&self) -> bool {
        !self.retransmit.is_empty()
    }

    pub fn has_unsent(&self) -> bool {
        self.unsent < self.write_offset()
    }

    /// All written bytes acknowledged.
    pub fn is_fully_acked(&self) -> bool {
        self.data.is_empty()
    }

    /// The next range to send: lost data first, then new data below `new_limit`
    /// (the flow-control limit as an absolute offset). At most `max_len` bytes.
    pub fn next_chunk(&self, max_len: usize, new_limit: u64) -> Option<Chunk> {
        if max_len == 0 {
            return None;
        }
        if let Some(r) = self.retransmit.first() {
            let end = r.end.min(r.start + max_len as u64);
            return Some(Chunk {
                range: r.start..end,
                retransmit: true,
            });
        }
        let limit = self.write_offset().min(new_limit);
        if self.unsent < limit {
            let end = limit.min(self.unsent + max_len as u64);
            return Some(Chunk {
                range: self.unsent..end,
                retransmit: false,
            });
        }
        None
    }

    /// Records that `chunk` (as returned by `next_chunk`, possibly shortened) was sent.
    pub fn mark_sent(&mut self, chunk: &Chunk) {
        if chunk.retransmit {
            self.retransmit.remove(chunk.range.clone());
        } else {
            self.unsent = self.unsent.max(chunk.range.end);
        }
    }

    /// Copies the bytes of `range` into `out` (which is exactly as long as the range).
    pub fn copy_to(&self, range: Range<u64>, out: &mut [u8]) {
        debug_assert!(range.start >= self.base && range.end <= self.write_offset());
        debug_assert_eq!(out.len() as u64, range.end - range.start);
        let (a, b) = self.data.as_slices();
        let start = (range.start - self.base) as usize;
        let end = (range.end - self.base) as usize;
        let mut written = 0;
        if start < a.len() {
            let take = &a[start..end.min(a.len())];
            out[..take.len()].copy_from_slice(take);
            written = take.len();
        }
        if end > a.len() {
            let from = start.max(a.len()) - a.len();
            let take = &b[from..end - a.len()];
            out[written..written + take.len()].copy_from_slice(take);
        }
    }

    /// A frame carrying `range` was acknowledged. Returns the number of bytes freed.
    pub fn on_ack(&mut self, range: Range<u64>) -> usize {
        let range = range.start.max(self.base)..range.end.min(self.unsent);
        if range.is_empty() {
            return 0;
        }
        if range.start == self.base && self.acked.is_empty() {
            // In order, the usual case: drop the bytes, nothing to remember.
            if !self.retransmit.is_empty() {
                self.retransmit.remove(range.clone());
            }
            let n = (range.end - self.base) as usize;
            if n == self.data.len() {
                self.data.clear();
            } else {
                self.data.drain(..n);
            }
            self.base = range.end;
            return n;
        }
        self.acked.insert(range.clone());
        self.retransmit.remove(range);
        let mut freed = 0;
        while let Some(first) = self.acked.first() {
            if first.start > self.base {
                break;
            }
            self.acked.pop_min();
            let n = (first.end - self.base) as usize;
            self.data.drain(..n);
            self.base = first.end;
            freed += n;
        }
        freed
    }

    /// A frame carrying `range` was declared lost: queue the parts still unacknowledged.
    pub fn on_lost(&mut self, range: Range<u64>) {
        let end = range.end.min(self.unsent);
        let mut cur = range.start.max(self.base);
        for a in self.acked.iter() {
            if cur >= end || a.start >= end {
                break;
            }
            if a.end <= cur {
                continue;
            }
            if a.start > cur {
                self.retransmit.insert(cur..a.start);
            }
            cur = a.end;
        }
        if cur < end {
            self.retransmit.insert(cur..end);
        }
    }

    /// Empties a finished stream's buffer for reuse by a new stream, keeping the
    /// allocations unless they are larger than a new stream is likely to need.
    pub fn recycle(&mut self) {
        self.data.clear();
        if self.data.capacity() > super::RECYCLE_BUFFER_BYTES {
            self.data = VecDeque::new();
        }
        self.base = 0;
        self.unsent = 0;
        self.retransmit.clear();
        self.acked.clear();
    }

    /// Drops everything (the stream was reset); offsets are kept.
    pub fn clear(&mut self) {
        self.base = self.write_offset();
        self.data = VecDeque::new();
        self.retransmit.clear();
        self.acked.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn new_data_then_retransmit_first() {
        let mut b = SendBuffer::new();
        b.write(b"0123456789");
        let c = b.next_chunk(4, u64::MAX).unwrap();
        assert_eq!(
            c,
            Chunk {
                range: 0..4,
                retransmit: false
            }
        );
        b.mark_sent(&c);
        let c2 = b.next_chunk(100, 8).unwrap();
        assert_eq!(c2.range, 4..8);
        b.mark_sent(&c2);
        assert!(b.next_chunk(100, 8).is_none());
        b.on_lost(0..4);
        let c3 = b.next_chunk(100, u64::MAX).unwrap();
        assert_eq!(
            c3,
            Chunk {
                range: 0..4,
                retransmit: true
            }
        );
        let mut out = [0u8; 4];
        b.copy_to(c3.range.clone(), &mut out);
        assert_eq!(&out, b"0123");
        b.mark_sent(&c3);
        assert_eq!(b.on_ack(4..8), 0);
        assert_eq!(b.on_ack(0..4), 8);
        assert_eq!(b.buffered(), 2);
        // Loss of an already-acked range queues nothing.
        b.on_lost(0..8);
        assert!(!b.has_retransmit());
    }

    #[test]
    fn lost_range_skips_acked_parts() {
        let mut b = SendBuffer::new();
        b.write(&[7u8; 100]);
        let c = b.next_chunk(100, u64::MAX).unwrap();
        b.mark_sent(&c);
        b.on_ack(10..20);
        b.on_ack(50..60);
        b.on_lost(0..100);
        let r: Vec<_> = b.retransmit.iter().collect();
        assert_eq!(r, vec![0..10, 20..50, 60..100]);
    }

    #[test]
    fn copy_across_ring_wrap() {
        let mut b = SendBuffer::new();
        b.write(&[1u8; 10]);
        let c = b.next_chunk(10, u64::MAX).unwrap();
        b.mark_sent(&c);
        b.on_ack(0..6);
        let data: Vec<u8> = (0..40).collect();
        b.write(&data);
        let mut out = vec![0u8; 44];
        b.copy_to(6..50, &mut out);
        assert_eq!(&out[..4], &[1, 1, 1, 1]);
        assert_eq!(&out[4..], &data[..]);
    }

    proptest! {
        /// Random loss and ack patterns eventually deliver every byte exactly as written,
        /// and the receiver sees each offset it needs.
        #[test]
        fn random_loss_delivers_everything(
            data in proptest::collection::vec(any::<u8>(), 1..4000),
            fates in proptest::collection::vec(0u8..4, 1..64),
            sizes in proptest::collection::vec(1usize..700, 1..16),
        ) {
            let mut b = SendBuffer::new();
            // A model receiver: any fragmentation goes (no per-range byte requirement).
            let mut asm = super::super::assembler::Assembler::new(10_000).with_min_range_bytes(0);
            let mut written = 0;
            let mut in_flight: Vec<Range<u64>> = Vec::new();
            let mut step = 0usize;
            let mut out = Vec::new();
            while !(written == data.len() && b.is_fully_acked()) {
                prop_assert!(step < 100_000);
                if written < data.len() {
                    let n = sizes[step % sizes.len()].min(data.len() - written);
                    b.write(&data[written..written + n]);
                    written += n;
                }
                if let Some(c) = b.next_chunk(sizes[(step + 3) % sizes.len()], u64::MAX) {
                    b.mark_sent(&c);
                    in_flight.push(c.range);
                }
                // Resolve the oldest in-flight frame: 0 = lost, 1 = delivered but ack lost
                // (later declared lost: a spurious retransmission), else delivered + acked.
                if !in_flight.is_empty() && (!step.is_multiple_of(3) || b.next_chunk(1, u64::MAX).is_none()) {
                    let r = in_flight.remove(0);
                    // After a while every frame gets through, so the loop ends.
                    let fate = if step > 2000 { 2 } else { fates[step % fates.len()] };
                    if fate != 0 {
                        let mut bytes = vec![0u8; (r.end - r.start) as usize];
                        let avail = r.start.max(b.base)..r.end;
                        if !avail.is_empty() {
                            b.copy_to(avail.clone(), &mut bytes[(avail.start - r.start) as usize..]);
                            asm.insert(avail.start, &bytes[(avail.start - r.start) as usize..]).unwrap();
                        }
                    }
                    match fate {
                        0 | 1 => b.on_lost(r),
                        _ => { b.on_ack(r); }
                    }
                }
                step += 1;
                let mut buf = [0u8; 512];
                let n = asm.read(&mut buf);
                out.extend_from_slice(&buf[..n]);
            }
            let mut buf = [0u8; 512];
            loop {
                let n = asm.read(&mut buf);
                if n == 0 { break; }
                out.extend_from_slice(&buf[..n]);
            }
            prop_assert!(out == data, "delivered {} of {} bytes, or wrong bytes", out.len(), data.len());
        }
    }
}
