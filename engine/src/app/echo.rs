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
    /// Each datagram goes back as it came (RFC 9221), if the peer takes datagrams and it
    /// fits what we may send; otherwise it is dropped, as an unreliable datagram may be.
    fn on_datagram(&mut self, conn: &mut Connection, _now: Instant) {
        let mut buf = [0u8; 65536];
        loop {
            match conn.recv_datagram(&mut buf) {
                Ok(Some(n)) => {
                    let _ = conn.send_datagram(&buf[..n]);
                }
                Ok(None) => break,
                Err(_) => {
                    conn.discard_datagram();
                }
            }
        }
    }

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

/// Datagram `i` of an echo run: 5 to 1,100 bytes, its number (big-endian) in the first
/// four, then a pattern of it. Written into `out`; returns the length.
pub fn echo_datagram(i: u32, out: &mut [u8; 1100]) -> usize {
    let len = 5 + (i as usize * 37) % 1096;
    out[..4].copy_from_slice(&i.to_be_bytes());
    for (j, b) in out[4..len].iter_mut().enumerate() {
        *b = (i as usize * 31 + j * 7) as u8;
    }
    len
}

/// Client side of `echo` over DATAGRAM frames (RFC 9221): sends `count` numbered
/// datagrams, at most `WINDOW` awaiting their echo, and checks each echo byte for byte.
/// Datagrams are unreliable: the run ends when every echo came back, or when none came
/// for `QUIET` after the last was sent (the rest count as lost).
pub struct DatagramEchoClient {
    count: u32,
    next: u32,
    echoed: Vec<bool>,
    pub echoed_count: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    last_progress: Option<Instant>,
    pub failed: Option<String>,
}

impl DatagramEchoClient {
    /// Datagrams awaiting their echo: well inside the connection's 64 KiB send queue.
    const WINDOW: u32 = 32;
    const QUIET: std::time::Duration = std::time::Duration::from_secs(2);

    pub fn new(count: u32) -> Self {
        Self {
            count,
            next: 0,
            echoed: vec![false; count as usize],
            echoed_count: 0,
            bytes_up: 0,
            bytes_down: 0,
            last_progress: None,
            failed: None,
        }
    }

    pub fn sent(&self) -> u64 {
        u64::from(self.next)
    }

    pub fn is_done(&self, now: Instant) -> bool {
        self.echoed_count == u64::from(self.count)
            || (self.next == self.count
                && self
                    .last_progress
                    .is_some_and(|t| now.duration_since(t) >= Self::QUIET))
    }

    /// Sends until `WINDOW` datagrams await their echo (lost ones keep their slot).
    fn top_up(&mut self, conn: &mut Connection) {
        let mut buf = [0u8; 1100];
        while self.next < self.count
            && u64::from(self.next).saturating_sub(self.echoed_count) <= u64::from(Self::WINDOW)
        {
            let len = echo_datagram(self.next, &mut buf);
            if let Err(e) = conn.send_datagram(&buf[..len]) {
                self.failed = Some(format!("sending datagram {}: {e}", self.next));
                return;
            }
            self.bytes_up += len as u64;
            self.next += 1;
        }
    }
}

impl Application for DatagramEchoClient {
    fn on_connected(&mut self, conn: &mut Connection, now: Instant) {
        self.last_progress = Some(now);
        self.top_up(conn);
    }

    fn on_datagram(&mut self, conn: &mut Connection, now: Instant) {
        let mut got = [0u8; 2048];
        let mut want = [0u8; 1100];
        loop {
            let n = match conn.recv_datagram(&mut got) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(e) => {
                    conn.discard_datagram();
                    self.failed = Some(format!("an echo we never sent: {e}"));
                    return;
                }
            };
            let i = (n >= 4).then(|| u32::from_be_bytes([got[0], got[1], got[2], got[3]]));
            // Only what was sent can come back, once.
            let fresh = match i {
                Some(i) if i < self.next && !self.echoed[i as usize] => {
                    let len = echo_datagram(i, &mut want);
                    got[..n] == want[..len]
                }
                _ => false,
            };
            if !fresh {
                self.failed = Some(format!("an echo of {n} bytes that was not sent, or twice"));
                return;
            }
            self.echoed[i.unwrap_or_default() as usize] = true;
            self.echoed_count += 1;
            self.bytes_down += n as u64;
            self.last_progress = Some(now);
        }
        // Receive-queue overflow (more than 64 KiB unread) would show up as echoes missing.
        self.top_up(conn);
    }
}
