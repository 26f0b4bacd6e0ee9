//! Unreliable datagrams (RFC 9221): the bounded queues between the application and the
//! wire, one for each direction.
//!
//! DATAGRAM frames are never retransmitted and may be dropped (§5), so a full queue drops
//! its oldest datagram rather than grow or refuse: the newest data is usually what a
//! real-time application wants. Both queues hold their bytes in one ring of fixed
//! capacity, reserved on first use, so queueing and delivering allocate nothing.

use std::collections::VecDeque;

use crate::conn::connection::{Connection, Event, State};
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
    /// a packet on the current path. `None` until the handshake is done, or if the peer
    /// accepts no DATAGRAM frames.
    pub fn max_datagram_payload(&self) -> Option<usize> {
        if self.state != State::Established {
            return None;
        }
        let peer_max = self.peer_params.as_ref()?.max_datagram_frame_size?;
        let by_frame = peer_max
            .saturating_sub(1 + varint_len(peer_max) as u64)
            .min(usize::MAX as u64) as usize;
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

    /// Writes queued datagrams into `buf[pos..]` (a 1-RTT packet whose payload starts at
    /// `payload_start`) while they fit; returns the new position. One that could not fit
    /// even an empty packet of this size is dropped.
    pub(crate) fn write_datagrams(
        &mut self,
        buf: &mut [u8],
        mut pos: usize,
        payload_start: usize,
        frames: &mut SentFrames,
    ) -> usize {
        while let Some(len) = self.datagrams_out.front_len() {
            let frame_len = 1 + varint_len(len as u64) + len;
            if frame_len > buf.len() - payload_start {
                self.datagrams_out.pop_discard();
                self.datagrams_out.dropped += 1;
                continue;
            }
            if frame_len > buf.len() - pos {
                self.whole_frames_deferred = true;
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
        if self.bytes.capacity() < self.capacity {
            // Once per connection that uses datagrams at all.
            self.bytes.reserve_exact(self.capacity - self.bytes.len());
            self.lens.reserve_exact(self.max_count - self.lens.len());
        }
        while self.bytes.len() + data.len() > self.capacity || self.lens.len() >= self.max_count {
            self.pop_discard();
            self.dropped += 1;
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
    fn a_warm_queue_reuses_its_ring() {
        let mut q = DatagramQueue::new(64, 8);
        q.push(&[1; 10]);
        let cap = q.bytes.capacity();
        let mut out = [0u8; 64];
        for i in 0..1000u32 {
            q.push(&[i as u8; 37]);
            q.pop_into(&mut out).unwrap();
        }
        assert_eq!(q.bytes.capacity(), cap);
    }
}
