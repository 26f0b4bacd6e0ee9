//! The receiving part of a stream (RFC 9000 §3.2): reassembly, final size, flow
//! control, RESET_STREAM from the peer and STOP_SENDING from us.

use std::time::{Duration, Instant};

use super::assembler::Assembler;
use super::flow::RecvWindow;
use super::wire::error::{TransportError, TransportErrorCode as Code};
use super::StreamError;

/// Largest offset a stream may reach (§4.5 / §19.8: 2^62 - 1).
const MAX_OFFSET: u64 = (1 << 62) - 1;

/// Connection-level receive accounting shared by all streams.
#[derive(Debug)]
pub struct ConnRecv {
    pub window: RecvWindow,
    /// Sum over streams of the highest offset received (or final size).
    pub received: u64,
    /// Bytes allocated for the reassembly buffers of open streams. A buffer keeps the
    /// allocation its window once needed after it is read; when they add up to more than
    /// twice the connection window, which bounds what all of them hold unread, a read
    /// gives the excess back (`RecvStream::read`). Otherwise a peer could fill and have
    /// us drain stream after stream and leave each holding a window's worth.
    pub buffers: usize,
}

impl ConnRecv {
    fn buffers_over_budget(&self) -> bool {
        self.buffers as u64 > self.window.window().saturating_mul(2)
    }
}

/// Our STOP_SENDING for this stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopState {
    pub error_code: u64,
    pub frame_pending: bool,
}

#[derive(Debug)]
pub struct RecvStream {
    asm: Assembler,
    pub window: RecvWindow,
    /// One past the highest byte received; never decreases.
    highest: u64,
    pub final_size: Option<u64>,
    /// Error code of the peer's RESET_STREAM ("Reset Recvd").
    pub reset: Option<u64>,
    /// The application has seen the reset or the FIN ("Reset Read" / "Data Read").
    pub closed_by_app: bool,
    pub stop: Option<StopState>,
    /// A MAX_STREAM_DATA with `window.limit()` should be sent.
    pub max_data_pending: bool,
    /// A Readable event was emitted and the application has not drained the stream.
    pub readable_signalled: bool,
    /// The assembler's allocation as last counted in `ConnRecv::buffers`.
    counted: usize,
}

/// What a STREAM frame changed, for the caller's events.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DataOutcome {
    pub readable: bool,
}

impl RecvStream {
    #[cfg(test)]
    pub fn new(window: u64, max_window: u64) -> Self {
        Self::with_assembler(None, window, max_window)
    }

    /// A new stream, around a finished stream's (emptied) assembler if one is given.
    pub fn with_assembler(asm: Option<Assembler>, window: u64, max_window: u64) -> Self {
        // Gaps a lossy but honest peer could leave: roughly one per lost full-size packet
        // within the window. At most 1024: each new range shifts the ones above it, so the
        // bound caps that work; the assembler also wants out-of-order bytes per range
        // (`MIN_RANGE_BYTES`), which a 1-byte fragment flood cannot supply.
        let max_ranges = (64 + (max_window / 16384) as usize).min(1024);
        let asm = asm.map_or_else(
            || Assembler::new(max_ranges),
            |a| a.with_max_ranges(max_ranges),
        );
        Self {
            asm,
            window: RecvWindow::new(window, max_window),
            highest: 0,
            final_size: None,
            reset: None,
            closed_by_app: false,
            stop: None,
            max_data_pending: false,
            readable_signalled: false,
            counted: 0,
        }
    }

    /// Brings `conn.buffers` up to date with the assembler's allocation.
    fn count_buffer(&mut self, conn: &mut ConnRecv) {
        let now = self.asm.capacity();
        if now != self.counted {
            conn.buffers = conn.buffers - self.counted + now;
            self.counted = now;
        }
    }

    /// The stream leaves the connection: its buffer no longer counts.
    pub fn uncount_buffer(&mut self, conn: &mut ConnRecv) {
        conn.buffers -= self.counted;
        self.counted = 0;
    }

    /// The reassembly buffer, for reuse by a later stream.
    pub fn into_assembler(self) -> Assembler {
        self.asm
    }

    /// Empties a finished stream's assembler, keeping its buffers (see `Streams::recycle`).
    pub fn recycle_assembler(&mut self) {
        self.asm.recycle();
    }

    /// Makes this finished (and recycled) stream's state that of a new stream, in place.
    pub fn reuse(&mut self, window: u64, max_window: u64) {
        let asm = std::mem::replace(&mut self.asm, Assembler::new(0));
        *self = Self::with_assembler(Some(asm), window, max_window);
    }

    /// Data will no longer be delivered to the application.
    fn discarding(&self) -> bool {
        self.reset.is_some() || self.stop.is_some() || self.closed_by_app
    }

    /// Applies the final-size and flow-control rules to a frame ending at `end`,
    /// charging newly received bytes to `conn`.
    fn account(&mut self, end: u64, fin: bool, conn: &mut ConnRecv) -> Result<(), TransportError> {
        if end > MAX_OFFSET {
            return Err(TransportError::new(
                Code::FRAME_ENCODING_ERROR,
                "stream offset beyond 2^62-1",
            ));
        }
        // §4.5: the final size cannot change and no data may lie beyond it.
        if let Some(size) = self.final_size {
            if end > size || (fin && end != size) {
                return Err(TransportError::new(
                    Code::FINAL_SIZE_ERROR,
                    "final size changed",
                ));
            }
        }
        if fin && end < self.highest {
            return Err(TransportError::new(
                Code::FINAL_SIZE_ERROR,
                "final size below received data",
            ));
        }
        // §4.1: data beyond the advertised limit.
        if end > self.window.limit() {
            return Err(TransportError::new(
                Code::FLOW_CONTROL_ERROR,
                "stream data beyond MAX_STREAM_DATA",
            ));
        }
        let new_bytes = end.saturating_sub(self.highest);
        if conn.received + new_bytes > conn.window.limit() {
            return Err(TransportError::new(
                Code::FLOW_CONTROL_ERROR,
                "stream data beyond MAX_DATA",
            ));
        }
        conn.received += new_bytes;
        self.highest += new_bytes;
        if self.discarding() {
            // Nobody will read these bytes: return their credit at once.
            conn.window.consume(new_bytes);
            self.window.consume(new_bytes);
        }
        if fin {
            self.final_size = Some(end);
            self.max_data_pending = false;
        }
        Ok(())
    }

    /// A STREAM frame.
    pub fn on_data(
        &mut self,
        offset: u64,
        data: &[u8],
        fin: bool,
        conn: &mut ConnRecv,
    ) -> Result<DataOutcome, TransportError> {
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(TransportError::new(
                Code::FRAME_ENCODING_ERROR,
                "stream offset overflow",
            ))?;
        let had_final = self.final_size.is_some();
        self.account(end, fin, conn)?;
        if self.discarding() {
            return Ok(DataOutcome::default());
        }
        let mut readable = self.asm.insert(offset, data).map_err(|_| {
            TransportError::new(Code::PROTOCOL_VIOLATION, "excessive stream fragmentation")
        })?;
        self.count_buffer(conn);
        // A FIN completing the stream is news even without new bytes (e.g. empty FIN).
        readable |= !had_final && self.final_size.is_some() && self.is_all_received();
        Ok(DataOutcome { readable })
    }

    /// A RESET_STREAM frame. Returns true if it is new (the caller emits an event).
    pub fn on_reset(
        &mut self,
        error_code: u64,
        final_size: u64,
        conn: &mut ConnRecv,
    ) -> Result<bool, TransportError> {
        if let Some(size) = self.final_size {
            if size != final_size {
                return Err(TransportError::new(
                    Code::FINAL_SIZE_ERROR,
                    "reset changed final size",
                ));
            }
        }
        let fin_seen = self.final_size.is_some();
        self.account(final_size, true, conn)?;
        if self.reset.is_some() || self.closed_by_app {
            return Ok(false);
        }
        // §3.2: in "Data Recvd" (all data and the FIN arrived) a reset may be
        // ignored; we deliver the data instead.
        if fin_seen && self.is_all_received() && self.stop.is_none() {
            return Ok(false);
        }
        // Bytes never to be read give their credit back (§4.5: the final size counts
        // toward connection flow control).
        let unread = final_size - self.asm.read_offset();
        if self.stop.is_none() {
            conn.window.consume(unread);
            self.window.consume(unread);
        }
        self.asm.release();
        self.count_buffer(conn);
        self.reset = Some(error_code);
        self.max_data_pending = false;
        if let Some(stop) = &mut self.stop {
            stop.frame_pending = false;
        }
        Ok(self.stop.is_none())
    }

    fn is_all_received(&self) -> bool {
        self.final_size
            .is_some_and(|size| self.asm.is_complete(size))
    }

    pub fn buffered(&self) -> usize {
        self.asm.buffered()
    }

    /// Bytes allocated for the reassembly buffer.
    #[cfg(test)]
    pub fn allocation(&self) -> usize {
        self.asm.capacity()
    }

    /// Hands up to `max` readable bytes to `f` in place and consumes them.
    /// Returns (bytes, fin reached).
    pub fn read(
        &mut self,
        max: usize,
        f: impl FnOnce(&[u8]),
        now: Instant,
        rtt: Duration,
        conn: &mut ConnRecv,
    ) -> Result<(usize, bool), StreamError> {
        if let Some(code) = self.reset {
            self.closed_by_app = true;
            return Err(StreamError::Reset(code));
        }
        if self.stop.is_some() || self.closed_by_app {
            return Err(StreamError::ClosedStream);
        }
        let n = self.asm.read_with(max, f);
        self.window.consume(n as u64);
        let fin = self.final_size == Some(self.asm.read_offset());
        if fin {
            self.closed_by_app = true;
            self.asm.release();
        } else if conn.buffers_over_budget() {
            self.asm.shrink();
        }
        self.count_buffer(conn);
        if self.asm.readable() == 0 {
            self.readable_signalled = false;
        }
        // §19.10: no MAX_STREAM_DATA once the final size is known.
        if self.final_size.is_none() && self.window.should_update() {
            self.window.update(now, rtt);
            self.max_data_pending = true;
        }
        Ok((n, fin))
    }

    /// The application no longer wants the data (§3.5). Returns true if a
    /// STOP_SENDING frame should be sent.
    pub fn stop(&mut self, error_code: u64, conn: &mut ConnRecv) -> bool {
        if self.stop.is_some() || self.closed_by_app {
            return false;
        }
        // Buffered and future bytes are dropped: hand their credit back.
        let unread = self.highest - self.asm.read_offset();
        if self.reset.is_none() {
            conn.window.consume(unread);
            self.window.consume(unread);
        }
        self.asm.release();
        self.count_buffer(conn);
        self.max_data_pending = false;
        // No STOP_SENDING once the peer's sending is over (§3.5).
        let send_frame = self.reset.is_none() && !self.is_all_received();
        self.stop = Some(StopState {
            error_code,
            frame_pending: send_frame,
        });
        if !send_frame {
            self.closed_by_app = true;
        }
        send_frame
    }

    /// Nothing further concerns the application or the peer.
    pub fn is_terminal(&self) -> bool {
        self.closed_by_app
            || (self.stop.is_some() && (self.reset.is_some() || self.final_size.is_some()))
    }

    /// Whether a MAX_STREAM_DATA for this stream is still useful.
    pub fn wants_max_data(&self) -> bool {
        self.final_size.is_none()
            && self.reset.is_none()
            && self.stop.is_none()
            && !self.closed_by_app
    }

    /// Whether a lost STOP_SENDING should be resent.
    pub fn wants_stop_frame(&self) -> bool {
        self.stop.is_some() && self.reset.is_none() && self.final_size.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(limit: u64) -> ConnRecv {
        ConnRecv {
            window: RecvWindow::new(limit, limit),
            received: 0,
            buffers: 0,
        }
    }

    #[test]
    fn final_size_rules() {
        let mut c = conn(1000);
        let mut s = RecvStream::new(100, 100);
        s.on_data(0, b"hello", true, &mut c).unwrap();
        let err = |r: Result<DataOutcome, TransportError>| r.unwrap_err().code;
        // Data beyond the final size, a different FIN, a reset with a new size.
        assert_eq!(
            err(s.on_data(5, b"x", false, &mut c)),
            Code::FINAL_SIZE_ERROR
        );
        assert_eq!(
            err(s.on_data(0, b"hell", true, &mut c)),
            Code::FINAL_SIZE_ERROR
        );
        assert_eq!(
            s.on_reset(0, 6, &mut c).unwrap_err().code,
            Code::FINAL_SIZE_ERROR
        );
        // The same FIN again is fine.
        s.on_data(0, b"hello", true, &mut c).unwrap();
        let mut s = RecvStream::new(100, 100);
        s.on_data(10, b"abc", false, &mut c).unwrap();
        // FIN below the highest received offset.
        assert_eq!(
            err(s.on_data(0, b"ab", true, &mut c)),
            Code::FINAL_SIZE_ERROR
        );
        assert_eq!(
            s.on_reset(1, 5, &mut c).unwrap_err().code,
            Code::FINAL_SIZE_ERROR
        );
    }

    #[test]
    fn flow_control_limits() {
        let mut c = conn(150);
        let mut s = RecvStream::new(100, 100);
        assert_eq!(
            s.on_data(95, b"123456", false, &mut c).unwrap_err().code,
            Code::FLOW_CONTROL_ERROR
        );
        s.on_data(0, &[0; 100], false, &mut c).unwrap();
        let mut s2 = RecvStream::new(100, 100);
        assert_eq!(
            s2.on_data(0, &[0; 51], false, &mut c).unwrap_err().code,
            Code::FLOW_CONTROL_ERROR
        );
        // A reset's final size counts toward the connection limit too.
        assert_eq!(
            s2.on_reset(0, 60, &mut c).unwrap_err().code,
            Code::FLOW_CONTROL_ERROR
        );
        assert!(s2.on_reset(0, 50, &mut c).unwrap());
        assert_eq!(c.received, 150);
    }

    #[test]
    fn read_updates_window_and_reports_fin() {
        let mut c = conn(1000);
        let mut s = RecvStream::new(100, 100);
        let now = Instant::now();
        let rtt = Duration::from_millis(1);
        assert!(s.on_data(0, &[1; 60], false, &mut c).unwrap().readable);
        let mut got = Vec::new();
        let mut keep = |d: &[u8]| got.extend_from_slice(d);
        assert_eq!(
            s.read(100, &mut keep, now, rtt, &mut c).unwrap(),
            (60, false)
        );
        assert_eq!(got, [1; 60]);
        assert!(s.max_data_pending);
        assert_eq!(s.window.limit(), 160);
        assert!(s.on_data(60, &[], true, &mut c).unwrap().readable);
        assert_eq!(
            s.read(100, |d| assert!(d.is_empty()), now, rtt, &mut c)
                .unwrap(),
            (0, true)
        );
        assert!(s.is_terminal());
    }

    #[test]
    fn reset_reported_once_to_reader() {
        let mut c = conn(1000);
        let mut s = RecvStream::new(100, 100);
        s.on_data(0, &[1; 30], false, &mut c).unwrap();
        assert!(s.on_reset(9, 40, &mut c).unwrap());
        assert!(!s.on_reset(9, 40, &mut c).unwrap());
        // Unread bytes were returned to the connection window.
        assert_eq!(c.window.consumed(), 40);
        let now = Instant::now();
        assert_eq!(
            s.read(
                10,
                |_| panic!("no data after a reset"),
                now,
                Duration::ZERO,
                &mut c
            ),
            Err(StreamError::Reset(9))
        );
        assert!(s.is_terminal());
    }

    #[test]
    fn stop_discards_and_credits() {
        let mut c = conn(1000);
        let mut s = RecvStream::new(100, 100);
        s.on_data(0, &[1; 30], false, &mut c).unwrap();
        assert!(s.stop(3, &mut c));
        assert_eq!(c.window.consumed(), 30);
        s.on_data(30, &[1; 20], false, &mut c).unwrap();
        assert_eq!(c.window.consumed(), 50);
        assert!(!s.is_terminal());
        assert!(!s.on_reset(3, 70, &mut c).unwrap());
        assert_eq!(c.received, 70);
        assert!(s.is_terminal());
    }
}
