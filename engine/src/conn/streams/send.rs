//! The sending part of a stream (RFC 9000 §3.1): buffered data, FIN, peer credit and
//! RESET_STREAM.

use super::flow::SendCredit;
use super::send_buffer::{Chunk, SendBuffer};
use super::wire::frame::{stream_header_len, write_stream_header};
use super::wire::varint::Writer;
use super::StreamError;

/// Why the application may no longer write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetState {
    pub error_code: u64,
    /// Final size carried by our RESET_STREAM.
    pub final_size: u64,
    /// Set if the reset answers the peer's STOP_SENDING.
    pub stopped_by_peer: bool,
    pub frame_pending: bool,
    pub acked: bool,
}

#[derive(Debug)]
pub struct SendStream {
    pub buf: SendBuffer,
    /// Peer's MAX_STREAM_DATA for this stream.
    pub credit: SendCredit,
    max_buffer: usize,
    /// The application called `finish`.
    fin_written: bool,
    fin_pending: bool,
    fin_acked: bool,
    pub reset: Option<ResetState>,
    /// A write was refused or cut short: tell the application when space frees up.
    pub write_blocked: bool,
}

/// One STREAM frame written by `write_frame`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrittenFrame {
    pub frame_len: usize,
    pub offset: u64,
    pub len: u16,
    pub fin: bool,
    /// Bytes sent for the first time (they consume connection credit).
    pub new_bytes: u64,
}

impl SendStream {
    #[cfg(test)]
    pub fn new(peer_max_stream_data: u64, max_buffer: usize) -> Self {
        Self::with_buffer(SendBuffer::new(), peer_max_stream_data, max_buffer)
    }

    /// A new stream around a recycled (empty) buffer.
    pub fn with_buffer(buf: SendBuffer, peer_max_stream_data: u64, max_buffer: usize) -> Self {
        debug_assert_eq!(buf.write_offset(), 0);
        Self {
            buf,
            credit: SendCredit::new(peer_max_stream_data),
            max_buffer,
            fin_written: false,
            fin_pending: false,
            fin_acked: false,
            reset: None,
            write_blocked: false,
        }
    }

    /// Makes this finished (and recycled) stream's state that of a new stream, in place.
    pub fn reuse(&mut self, peer_max_stream_data: u64, max_buffer: usize) {
        let buf = std::mem::take(&mut self.buf);
        *self = Self::with_buffer(buf, peer_max_stream_data, max_buffer);
    }

    /// Bytes `write` would accept now.
    pub fn capacity(&self) -> usize {
        if self.fin_written || self.reset.is_some() {
            return 0;
        }
        self.max_buffer.saturating_sub(self.buf.buffered())
    }

    pub fn write(&mut self, data: &[u8]) -> Result<usize, StreamError> {
        if let Some(r) = self.reset {
            return Err(if r.stopped_by_peer {
                StreamError::Stopped(r.error_code)
            } else {
                StreamError::ClosedStream
            });
        }
        if self.fin_written {
            return Err(StreamError::ClosedStream);
        }
        let n = self.capacity().min(data.len());
        if n < data.len() {
            self.write_blocked = true;
        }
        if n == 0 && !data.is_empty() {
            return Err(StreamError::Blocked);
        }
        self.buf.write(&data[..n]);
        Ok(n)
    }

    pub fn finish(&mut self) -> Result<(), StreamError> {
        if let Some(r) = self.reset {
            return Err(if r.stopped_by_peer {
                StreamError::Stopped(r.error_code)
            } else {
                StreamError::ClosedStream
            });
        }
        if !self.fin_written {
            self.fin_written = true;
            self.fin_pending = true;
        }
        Ok(())
    }

    /// Abandons the stream (§3.3). Returns false if there was nothing to reset: already
    /// reset, or every byte and the FIN acknowledged.
    pub fn reset(&mut self, error_code: u64, stopped_by_peer: bool) -> bool {
        if self.reset.is_some() || self.is_data_acked() {
            return false;
        }
        self.reset = Some(ResetState {
            error_code,
            // §4.5: the final size is the flow-control credit consumed.
            final_size: self.buf.unsent_offset(),
            stopped_by_peer,
            frame_pending: true,
            acked: false,
        });
        self.buf.clear();
        self.fin_pending = false;
        true
    }

    /// All data and the FIN were acknowledged ("Data Recvd").
    pub fn is_data_acked(&self) -> bool {
        self.fin_acked && self.buf.is_fully_acked()
    }

    /// Nothing more will ever be sent or acknowledged ("Data Recvd" / "Reset Recvd").
    pub fn is_terminal(&self) -> bool {
        match self.reset {
            Some(r) => r.acked,
            None => self.is_data_acked(),
        }
    }

    /// Has STREAM data or a FIN that could go out with `conn_avail` connection credit.
    pub fn can_send(&self, conn_avail: u64) -> bool {
        if self.reset.is_some() {
            return false;
        }
        self.buf.has_retransmit()
            || (self.fin_pending && !self.buf.has_unsent())
            || (self.buf.has_unsent() && self.new_data_limit(conn_avail) > self.buf.unsent_offset())
    }

    /// Has anything to send at all, flow control aside (keeps it in the send queue).
    pub fn wants_send(&self) -> bool {
        self.reset.is_none()
            && (self.buf.has_retransmit() || self.buf.has_unsent() || self.fin_pending)
    }

    /// New data is held back by the stream limit (not just the connection's).
    pub fn is_stream_blocked(&self) -> bool {
        self.reset.is_none() && self.buf.has_unsent() && self.buf.unsent_offset() >= self.credit.max
    }

    fn new_data_limit(&self, conn_avail: u64) -> u64 {
        self.credit
            .max
            .min(self.buf.unsent_offset().saturating_add(conn_avail))
    }

    /// Writes one STREAM frame into `out` (retransmissions first). Omits the Length
    /// field when the frame fills `out`. Returns None if nothing fits or nothing is
    /// sendable.
    pub fn write_frame(
        &mut self,
        id: u64,
        out: &mut [u8],
        conn_avail: u64,
    ) -> Option<WrittenFrame> {
        if self.reset.is_some() {
            return None;
        }
        let avail = out.len();
        let limit = self.new_data_limit(conn_avail);
        let Some(chunk) = self.buf.next_chunk(u16::MAX as usize, limit) else {
            return self.write_fin_only(id, out);
        };
        let offset = chunk.range.start;
        let data_len = (chunk.range.end - offset) as usize;
        let hdr_open = stream_header_len(id, offset, None);
        if avail <= hdr_open {
            return None;
        }
        let (n, with_len) = if data_len >= avail - hdr_open {
            (avail - hdr_open, false)
        } else {
            let hdr = stream_header_len(id, offset, Some(data_len));
            (data_len.min(avail.saturating_sub(hdr)), true)
        };
        if n == 0 {
            return None;
        }
        let chunk = Chunk {
            range: offset..offset + n as u64,
            retransmit: chunk.retransmit,
        };
        let fin = self.fin_written && !self.fin_acked && chunk.range.end == self.buf.write_offset();
        let mut w = Writer::new(out);
        write_stream_header(&mut w, id, offset, with_len.then_some(n), fin).ok()?;
        let hdr_len = w.len();
        self.buf
            .copy_to(chunk.range.clone(), &mut out[hdr_len..hdr_len + n]);
        let new_bytes = if chunk.retransmit { 0 } else { n as u64 };
        self.buf.mark_sent(&chunk);
        if fin {
            self.fin_pending = false;
        }
        Some(WrittenFrame {
            frame_len: hdr_len + n,
            offset,
            len: n as u16,
            fin,
            new_bytes,
        })
    }

    fn write_fin_only(&mut self, id: u64, out: &mut [u8]) -> Option<WrittenFrame> {
        if !self.fin_pending || self.buf.has_unsent() {
            return None;
        }
        let offset = self.buf.write_offset();
        let mut w = Writer::new(out);
        write_stream_header(&mut w, id, offset, Some(0), true).ok()?;
        self.fin_pending = false;
        Some(WrittenFrame {
            frame_len: w.len(),
            offset,
            len: 0,
            fin: true,
            new_bytes: 0,
        })
    }

    /// A STREAM frame was acknowledged. Returns true if this completed the stream
    /// (all data and FIN acknowledged).
    pub fn on_ack(&mut self, offset: u64, len: u16, fin: bool) -> bool {
        if self.reset.is_some() {
            return false;
        }
        let was_done = self.is_data_acked();
        self.buf.on_ack(offset..offset + u64::from(len));
        if fin {
            self.fin_acked = true;
            self.fin_pending = false;
        }
        !was_done && self.is_data_acked()
    }

    /// A STREAM frame was lost: queue what is still unacknowledged.
    pub fn on_lost(&mut self, offset: u64, len: u16, fin: bool) {
        if self.reset.is_some() {
            return;
        }
        self.buf.on_lost(offset..offset + u64::from(len));
        if fin && !self.fin_acked {
            self.fin_pending = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_packet_without_length_and_respects_credit() {
        let mut s = SendStream::new(100, 1000);
        assert_eq!(s.write(&[1u8; 300]).unwrap(), 300);
        let mut out = [0u8; 50];
        let f = s.write_frame(4, &mut out, u64::MAX).unwrap();
        // type + id(1) = 2 byte header, no offset, no length.
        assert_eq!(f.frame_len, 50);
        assert_eq!((f.offset, f.len, f.new_bytes), (0, 48, 48));
        assert_eq!(out[0], 0x08);
        let mut big = [0u8; 500];
        let f = s.write_frame(4, &mut big, u64::MAX).unwrap();
        assert_eq!((f.offset, f.len), (48, 52)); // stream credit 100
        assert_eq!(big[0], 0x08 | 0x04 | 0x02);
        assert!(s.write_frame(4, &mut big, u64::MAX).is_none());
        assert!(s.is_stream_blocked());
        s.credit.raise(1000);
        // Connection credit limits too.
        let f = s.write_frame(4, &mut big, 10).unwrap();
        assert_eq!(f.len, 10);
    }

    #[test]
    fn fin_and_completion() {
        let mut s = SendStream::new(1000, 1000);
        s.write(b"hello").unwrap();
        s.finish().unwrap();
        assert_eq!(s.write(b"x"), Err(StreamError::ClosedStream));
        let mut out = [0u8; 100];
        let f = s.write_frame(0, &mut out, u64::MAX).unwrap();
        assert!(f.fin && f.len == 5);
        assert!(!s.wants_send());
        s.on_lost(0, 5, true);
        let f2 = s.write_frame(0, &mut out, 0).unwrap();
        assert!(f2.fin && f2.new_bytes == 0);
        assert!(!s.on_ack(0, 5, false));
        assert!(s.on_ack(0, 5, true));
        assert!(s.is_terminal());
    }

    #[test]
    fn fin_only_frame_after_data() {
        let mut s = SendStream::new(1000, 1000);
        s.write(b"abc").unwrap();
        let mut out = [0u8; 100];
        let f = s.write_frame(0, &mut out, u64::MAX).unwrap();
        assert!(!f.fin);
        s.finish().unwrap();
        let f = s.write_frame(0, &mut out, u64::MAX).unwrap();
        assert_eq!((f.offset, f.len, f.fin), (3, 0, true));
    }

    #[test]
    fn buffer_limit_blocks_writes() {
        let mut s = SendStream::new(1000, 10);
        assert_eq!(s.write(&[0; 25]).unwrap(), 10);
        assert!(s.write_blocked);
        assert_eq!(s.write(&[0; 5]), Err(StreamError::Blocked));
    }

    #[test]
    fn reset_discards_and_reports_final_size() {
        let mut s = SendStream::new(1000, 1000);
        s.write(&[0; 40]).unwrap();
        let mut out = [0u8; 20];
        s.write_frame(0, &mut out, u64::MAX).unwrap();
        assert!(s.reset(7, true));
        let r = s.reset.unwrap();
        assert_eq!((r.error_code, r.final_size), (7, 18));
        assert_eq!(s.write(b"x"), Err(StreamError::Stopped(7)));
        assert!(!s.wants_send());
        assert!(!s.reset(8, false));
    }
}
