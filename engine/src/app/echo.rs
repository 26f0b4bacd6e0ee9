//! `echo`: every byte received on a bidirectional stream is sent back; FIN follows FIN.
//!
//! A stream is tracked from its opening until both directions are over, so a connection
//! holds state only for the streams in flight, whatever the peer does to them.

use foldhash::HashMap;
use std::time::Instant;

use crate::app::{discard_all, Application};
use crate::conn::{Connection, StreamError, StreamId};

/// Most bytes read ahead of what the send side has taken; back-pressure beyond it comes
/// from not reading (flow control).
const MAX_BUFFERED: usize = 256 * 1024;

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    /// The peer's FIN was read: FIN follows once `buf` is written.
    fin: bool,
    /// Our side is over (FIN written, or reset).
    done: bool,
}

#[derive(Default)]
pub struct EchoServer {
    streams: HashMap<StreamId, Pending>,
}

impl EchoServer {
    /// Writes what is buffered; false if the send side took less than everything.
    fn flush(&mut self, conn: &mut Connection, id: StreamId) -> bool {
        let Some(p) = self.streams.get_mut(&id) else {
            return true;
        };
        while !p.buf.is_empty() {
            match conn.write(id, &p.buf) {
                Ok(0) | Err(StreamError::Blocked) => return false,
                Ok(n) => {
                    p.buf.drain(..n);
                }
                // Stopped by the peer (the transport reset our side) or gone: the echo is over.
                Err(_) => {
                    p.buf = Vec::new();
                    p.done = true;
                    break;
                }
            }
        }
        if p.fin && !p.done {
            let _ = conn.finish(id);
            p.done = true;
        }
        if p.fin && p.done {
            self.streams.remove(&id);
        }
        true
    }

    /// Reads until the buffer is full, the data runs out or FIN; true if anything came.
    fn fill(&mut self, conn: &mut Connection, id: StreamId, now: Instant) -> bool {
        let Some(p) = self.streams.get_mut(&id) else {
            return false;
        };
        let mut chunk = [0u8; 16 * 1024];
        let mut any = false;
        while p.buf.len() < MAX_BUFFERED && !p.fin {
            match conn.read(id, &mut chunk, now) {
                Ok((n, fin)) => {
                    if !p.done {
                        p.buf.extend_from_slice(&chunk[..n]);
                    }
                    p.fin = fin;
                    any |= n > 0 || fin;
                    if n == 0 {
                        break;
                    }
                }
                // Reset by the peer (reading it acknowledges it): nothing more will come.
                Err(_) => {
                    p.fin = true;
                    any = true;
                }
            }
        }
        any
    }
}

impl Application for EchoServer {
    fn on_stream_opened(&mut self, conn: &mut Connection, id: StreamId, now: Instant) {
        if id.is_bidi() {
            self.streams.insert(id, Pending::default());
        }
        self.on_readable(conn, id, now);
    }

    fn on_readable(&mut self, conn: &mut Connection, id: StreamId, now: Instant) {
        if !id.is_bidi() {
            // Nothing to echo on: don't let its data hold connection credit.
            return discard_all(conn, id, now);
        }
        // Until the send side stops taking data or nothing more arrives: a full buffer
        // that the send side then took whole would otherwise wait for an event that
        // never comes.
        while self.fill(conn, id, now) && self.flush(conn, id) {}
        self.flush(conn, id);
    }

    fn on_writable(&mut self, conn: &mut Connection, id: StreamId, now: Instant) {
        // Buffer space freed: write, then read more.
        if self.flush(conn, id) {
            self.on_readable(conn, id, now);
        }
    }

    fn on_reset(&mut self, conn: &mut Connection, id: StreamId, code: u64, now: Instant) {
        // The peer abandoned its side: the echo cannot be completed, abandon ours too.
        if let Some(p) = self.streams.get_mut(&id) {
            if !p.done {
                let _ = conn.reset_stream(id, code);
                p.done = true;
                p.buf = Vec::new();
            }
        }
        self.on_readable(conn, id, now);
    }

    fn on_stopped(&mut self, conn: &mut Connection, id: StreamId, _code: u64, now: Instant) {
        // Our side was reset by the transport; keep reading to the peer's FIN or reset.
        if let Some(p) = self.streams.get_mut(&id) {
            p.done = true;
            p.buf = Vec::new();
        }
        self.on_readable(conn, id, now);
    }
}
