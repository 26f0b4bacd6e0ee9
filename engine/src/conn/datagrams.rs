//! Unreliable datagrams (RFC 9221): the bounded queues between the application and the
//! wire, one for each direction.
//!
//! DATAGRAM frames are never retransmitted and may be dropped (§5), so a full queue drops
//! its oldest datagram rather than grow or refuse: the newest data is usually what a
//! real-time application wants. Each queue holds its bytes in one ring that grows as
//! needed up to its cap and keeps its size, so a warm queue allocates nothing, and a peer
//! that sends one small datagram does not make us reserve the whole cap.

use std::collections::VecDeque;

use crate::conn::connection::{Connection, Event};
use crate::conn::sent::{FrameRecord, SentFrames};
use crate::crypto::aead::TAG_LEN;
use crate::wire::error::{TransportError, TransportErrorCode as Code};
use crate::wire::frame::types::DATAGRAM_LEN;
use crate::wire::varint::{varint_len, Writer};

/// Most datagrams queued each way, whatever their size (zero-length ones are legal).
pub const MAX_QUEUED_DATAGRAMS: usize = 1024;

/// Bytes of a short header at most (flags, the longest CID, a 4-byte packet number).
const MAX_SHORT_HEADER: usize = 1 + 20 + 4;

impl Connection {
    /// The largest datagram `send_datagram` accepts now: what the peer's
    /// max_datagram_frame_size leaves after the frame's type and length, and what fits in
    /// a packet on the current path. `None` until the handshake is done (or 0-RTT is
    /// under way, `app_data_open`), or if the peer accepts no DATAGRAM frames. A client
    /// sending 0-RTT goes by the value remembered with its ticket (RFC 9221 §3).
    pub fn max_datagram_payload(&self) -> Option<usize> {
        if !self.app_data_open() {
            return None;
        }
        let peer_max = match (&self.peer_params, &self.remembered) {
            (Some(p), _) => p.max_datagram_frame_size?,
            (None, Some(r)) => r.max_datagram_frame_size?,
            (None, None) => return None,
        };
        let by_frame = usize::try_from(payload_within_frame(peer_max)?).unwrap_or(usize::MAX);
        let mtu = if self.handshake_confirmed {
            self.max_datagram_size
        } else {
            crate::conn::MIN_INITIAL_SIZE
        };
        let by_packet = mtu.saturating_sub(MAX_SHORT_HEADER + TAG_LEN + 1 + 2);
        Some(by_frame.min(by_packet))
    }

    /// Queues an unreliable datagram (RFC 9221) for the peer. It goes out in the next
    /// packets the congestion window allows, is never retransmitted, and makes room for
    /// itself by dropping the oldest queued datagram if the queue is full.
    pub fn send_datagram(&mut self, data: &[u8]) -> Result<(), DatagramError> {
        let limit = self
            .max_datagram_payload()
            .ok_or(DatagramError::Unsupported)?;
        if data.len() > limit {
            return Err(DatagramError::TooLarge {
                len: data.len(),
                limit,
            });
        }
        self.datagrams_out.push(data);
        Ok(())
    }

    /// Takes the oldest received datagram into `out`; `Ok(None)` when there is none. If
    /// `out` is too small the datagram stays queued (`BufferTooSmall` says how large).
    pub fn recv_datagram(&mut self, out: &mut [u8]) -> Result<Option<usize>, DatagramError> {
        self.datagrams_in.pop_into(out)
    }

    /// Drops the oldest received datagram unread; false if there was none.
    pub fn discard_datagram(&mut self) -> bool {
        let any = !self.datagrams_in.is_empty();
        self.datagrams_in.pop_discard();
        any
    }

    /// Datagrams dropped because a queue was full: (received, to send).
    pub fn datagrams_dropped(&self) -> (u64, u64) {
        (self.datagrams_in.dropped, self.datagrams_out.dropped)
    }

    /// RFC 9221 §3: a DATAGRAM frame is a PROTOCOL_VIOLATION unless we advertised
    /// max_datagram_frame_size and the frame is no larger.
    pub(crate) fn on_datagram_frame(
        &mut self,
        data: &[u8],
        frame_len: usize,
    ) -> Result<(), TransportError> {
        let Some(max) = self.config.max_datagram_frame_size else {
            return Err(TransportError::new(
                Code::PROTOCOL_VIOLATION,
                "DATAGRAM not negotiated",
            ));
        };
        if frame_len as u64 > max {
            return Err(TransportError::new(
                Code::PROTOCOL_VIOLATION,
                "DATAGRAM frame larger than max_datagram_frame_size",
            ));
        }
        self.datagrams_in.push(data);
        if self.events.back() != Some(&Event::Datagram) {
            self.events.push_back(Event::Datagram);
        }
        Ok(())
    }

    pub(crate) fn has_datagrams_to_send(&self) -> bool {
        !self.datagrams_out.is_empty()
    }

    /// Writes queued datagrams into `buf[pos..]` (a 1-RTT packet) while they fit; returns
    /// the new position. One that does not fit waits for the next packet (this one may be
    /// short: behind a Handshake packet, or under the anti-amplification limit); one the
    /// path can no longer carry at all (its MTU shrank since it was queued) is dropped.
    #[inline(never)]
    pub(crate) fn write_datagrams(
        &mut self,
        buf: &mut [u8],
        mut pos: usize,
        frames: &mut SentFrames,
    ) -> usize {
        let limit = self.max_datagram_payload().unwrap_or(0);
        let mut wrote = false;
        while let Some(len) = self.datagrams_out.front_len() {
            if len > limit {
                self.datagrams_out.drop_oldest();
                continue;
            }
            let frame_len = 1 + varint_len(len as u64) + len;
            if frame_len > buf.len() - pos {
                self.unsent_despite_room = true;
                break;
            }
            let mut w = Writer::new(&mut buf[pos..]);
            if w.put_varint(DATAGRAM_LEN).is_err() || w.put_varint(len as u64).is_err() {
                break;
            }
            let header = w.len();
            let body = &mut buf[pos + header..pos + header + len];
            if !matches!(self.datagrams_out.pop_into(body), Ok(Some(_))) {
                break;
            }
            pos += frame_len;
            wrote = true;
        }
        if wrote {
            // One record stands for all of them: nothing follows their loss or ACK.
            frames.records.push(FrameRecord::Datagram);
        }
        pos
    }
}

/// Why a datagram could not be queued for sending.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    /// The peer did not advertise max_datagram_frame_size (or the handshake is not done).
    #[error("the peer does not accept DATAGRAM frames")]
    Unsupported,
    /// Larger than the peer accepts or a packet on this path can carry.
    #[error("datagram of {len} bytes exceeds the limit of {limit}")]
    TooLarge { len: usize, limit: usize },
    /// `recv_datagram`'s buffer cannot hold the next datagram (it stays queued).
    #[error("buffer of {have} bytes for a datagram of {need}")]
    BufferTooSmall { need: usize, have: usize },
}

/// The largest payload of a DATAGRAM frame (type 0x31, with its length field) of at most
/// `max` bytes in all; `None` if not even an empty one fits. RFC 9221 §3: `max` 0 means
/// the peer takes none.
fn payload_within_frame(max: u64) -> Option<u64> {
    // For each size of the length field: the most the rest of the frame holds, and the
    // most that field can express.
    [
        (1u64, (1u64 << 6) - 1),
        (2, (1 << 14) - 1),
        (4, (1 << 30) - 1),
        (8, (1 << 62) - 1),
    ]
    .into_iter()
    .filter_map(|(len_field, most)| Some(max.checked_sub(1 + len_field)?.min(most)))
    .max()
}

/// Datagrams in arrival order, their bytes back to back in a ring.
#[derive(Debug)]
pub struct DatagramQueue {
    bytes: VecDeque<u8>,
    lens: VecDeque<usize>,
    capacity: usize,
    max_count: usize,
    /// Datagrams dropped to make room (or too large for the queue at all).
    pub dropped: u64,
}

impl DatagramQueue {
    /// A queue of at most `capacity` bytes and `max_count` datagrams (zero-length
    /// datagrams are legal, so bytes alone do not bound the count).
    pub fn new(capacity: usize, max_count: usize) -> DatagramQueue {
        DatagramQueue {
            bytes: VecDeque::new(),
            lens: VecDeque::new(),
            capacity,
            max_count: max_count.max(1),
            dropped: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    pub fn len(&self) -> usize {
        self.lens.len()
    }

    /// Length of the oldest datagram.
    pub fn front_len(&self) -> Option<usize> {
        self.lens.front().copied()
    }

    /// Queues `data`, dropping the oldest datagrams to make room. A datagram larger than
    /// the whole queue is dropped itself. Returns whether `data` was queued.
    pub fn push(&mut self, data: &[u8]) -> bool {
        if data.len() > self.capacity {
            self.dropped += 1;
            return false;
        }
        while self.bytes.len() + data.len() > self.capacity || self.lens.len() >= self.max_count {
            self.drop_oldest();
        }
        self.bytes.extend(data.iter().copied());
        self.lens.push_back(data.len());
        true
    }

    /// Moves the oldest datagram into `out`; returns its length.
    pub fn pop_into(&mut self, out: &mut [u8]) -> Result<Option<usize>, DatagramError> {
        let Some(&len) = self.lens.front() else {
            return Ok(None);
        };
        if out.len() < len {
            return Err(DatagramError::BufferTooSmall {
                need: len,
                have: out.len(),
            });
        }
        for (o, b) in out.iter_mut().zip(self.bytes.drain(..len)) {
            *o = b;
        }
        self.lens.pop_front();
        Ok(Some(len))
    }

    /// Drops the oldest datagram undelivered, and counts it.
    pub fn drop_oldest(&mut self) {
        self.pop_discard();
        self.dropped += 1;
    }

    /// Drops the oldest datagram.
    pub fn pop_discard(&mut self) {
        if let Some(len) = self.lens.pop_front() {
            self.bytes.drain(..len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9221 §3: the whole frame (type, length, payload) within the peer's limit, and
    /// nothing at all for a limit of 0 (or 1, too small for even an empty frame).
    #[test]
    fn the_payload_limit_counts_the_type_and_length_fields() {
        assert_eq!(payload_within_frame(0), None);
        assert_eq!(payload_within_frame(1), None);
        assert_eq!(payload_within_frame(2), Some(0));
        assert_eq!(payload_within_frame(65), Some(63)); // 1-byte length
        assert_eq!(payload_within_frame(66), Some(63)); // 64 needs a 2-byte length
        assert_eq!(payload_within_frame(67), Some(64));
        assert_eq!(payload_within_frame(65535), Some(65530)); // 4-byte length
        let most = (1u64 << 62) - 1; // the largest varint a peer can send
        assert_eq!(payload_within_frame(most), Some(most - 9));
        for max in 2..20_000u64 {
            let l = payload_within_frame(max).unwrap();
            assert!(1 + varint_len(l) as u64 + l <= max);
            assert!(
                1 + varint_len(l + 1) as u64 + l + 1 > max,
                "{max}: {l} is not the largest"
            );
        }
    }

    #[test]
    fn datagrams_come_out_whole_and_in_order() {
        let mut q = DatagramQueue::new(16, 8);
        assert!(q.push(b"abc"));
        assert!(q.push(b""));
        assert!(q.push(b"defgh"));
        let mut out = [0u8; 8];
        assert_eq!(q.pop_into(&mut out), Ok(Some(3)));
        assert_eq!(&out[..3], b"abc");
        assert_eq!(q.pop_into(&mut out), Ok(Some(0)));
        assert_eq!(
            q.pop_into(&mut out[..2]),
            Err(DatagramError::BufferTooSmall { need: 5, have: 2 })
        );
        assert_eq!(q.pop_into(&mut out), Ok(Some(5)));
        assert_eq!(&out[..5], b"defgh");
        assert_eq!(q.pop_into(&mut out), Ok(None));
        assert_eq!(q.dropped, 0);
    }

    #[test]
    fn a_full_queue_drops_the_oldest() {
        let mut q = DatagramQueue::new(10, 3);
        for d in [&b"1111"[..], b"2222", b"3333"] {
            q.push(d);
        }
        // 12 bytes would not fit: "1111" went.
        assert_eq!(q.len(), 2);
        assert_eq!(q.dropped, 1);
        q.push(b"");
        q.push(b"");
        // Three at most: "2222" went for the second empty one.
        assert_eq!(q.len(), 3);
        assert_eq!(q.front_len(), Some(4));
        assert!(!q.push(&[0; 11]), "larger than the queue");
        assert_eq!(q.dropped, 3);
    }

    #[test]
    fn a_warm_queue_reuses_its_ring_and_a_cold_one_reserves_little() {
        let mut q = DatagramQueue::new(64 * 1024, 1024);
        q.push(&[1; 10]);
        assert!(
            q.bytes.capacity() < 1024,
            "one small datagram reserved {}",
            q.bytes.capacity()
        );
        let mut out = [0u8; 2048];
        let mut warm = |q: &mut DatagramQueue| {
            for i in 0..1000u32 {
                q.push(&[i as u8; 1037]);
                q.push(&[i as u8; 37]);
                q.pop_into(&mut out).unwrap();
                q.pop_into(&mut out).unwrap();
            }
        };
        warm(&mut q);
        let cap = (q.bytes.capacity(), q.lens.capacity());
        warm(&mut q);
        assert_eq!((q.bytes.capacity(), q.lens.capacity()), cap);
    }
}
