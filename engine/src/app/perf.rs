//! The QUIC performance protocol (ALPN `perf`, shared/specs/README.md): the client sends an
//! 8-byte big-endian length it wants back, then upload bytes and FIN; the server discards
//! the upload and sends exactly that many bytes, then FIN.

use foldhash::{HashMap, HashMapExt};
use std::time::Instant;

use crate::app::{discard_all, write_zeros, Application};
use crate::conn::{CloseReason, Connection, StreamId};

#[derive(Default)]
struct ServerStream {
    header: [u8; 8],
    header_len: usize,
    to_send: u64,
    responding: bool,
    /// The request side is over: FIN read, or reset by the peer.
    upload_done: bool,
    /// Our side is over: FIN written, or stopped by the peer.
    response_done: bool,
}

/// Server side: any number of concurrent perf streams per connection. A stream is tracked
/// from its opening until both directions are over, so a long-lived connection holds
/// state only for the requests in flight; a request that is read and answered whole when
/// its stream opens (a small request in one packet) never enters the map.
#[derive(Default)]
pub struct PerfServer {
    streams: HashMap<StreamId, ServerStream>,
    /// Bytes of upload discarded (for stats).
    pub bytes_received: u64,
}

impl ServerStream {
    fn is_done(&self) -> bool {
        self.upload_done && self.response_done
    }

    /// Reads what the request side has and, once the length is known (or the request
    /// ended without one), starts the response.
    fn read(&mut self, conn: &mut Connection, id: StreamId, now: Instant, received: &mut u64) {
        while !self.upload_done {
            // The length header, then upload to discard, seen in place in one call.
            let (header, header_len) = (&mut self.header, &mut self.header_len);
            let read = conn.read_with(id, usize::MAX, now, |data| {
                let n = (8 - *header_len).min(data.len());
                header[*header_len..*header_len + n].copy_from_slice(&data[..n]);
                *header_len += n;
                *received += (data.len() - n) as u64;
            });
            match read {
                Ok((_, true)) | Err(_) => self.upload_done = true,
                Ok((0, false)) => break,
                Ok(_) => {}
            }
        }
        if !self.responding && (self.header_len == 8 || self.upload_done) {
            // A request that ended without a full length gets an empty answer.
            self.responding = true;
            self.to_send = if self.header_len == 8 {
                u64::from_be_bytes(self.header)
            } else {
                0
            };
        }
    }

    /// Reads, then sends what it can: one step of the request as any event brings it.
    fn serve(&mut self, conn: &mut Connection, id: StreamId, now: Instant, received: &mut u64) {
        self.read(conn, id, now, received);
        self.pump(conn, id);
    }

    /// Sends what the response still owes, as far as the stream takes it, then the FIN.
    fn pump(&mut self, conn: &mut Connection, id: StreamId) {
        if self.responding && !self.response_done {
            if self.to_send > 0 {
                self.to_send -= write_zeros(conn, id, self.to_send);
            }
            if self.to_send == 0 {
                let _ = conn.finish(id);
                self.response_done = true;
            }
        }
    }
}

impl Application for PerfServer {
    fn on_stream_opened(&mut self, conn: &mut Connection, id: StreamId, now: Instant) {
        if !id.is_bidi() {
            return self.on_readable(conn, id, now);
        }
        // Served on the stack first: only a request still under way is tracked.
        let mut s = ServerStream::default();
        s.serve(conn, id, now, &mut self.bytes_received);
        if !s.is_done() {
            self.streams.insert(id, s);
        }
    }

    fn on_readable(&mut self, conn: &mut Connection, id: StreamId, now: Instant) {
        if !id.is_bidi() {
            // The protocol has no unidirectional streams: don't let one hold credit.
            return discard_all(conn, id, now);
        }
        // Streams we never opened or already finished with are not requests.
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        s.serve(conn, id, now, &mut self.bytes_received);
        if s.is_done() {
            self.streams.remove(&id);
        }
    }

    fn on_writable(&mut self, conn: &mut Connection, id: StreamId, _now: Instant) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        s.pump(conn, id);
        if s.is_done() {
            self.streams.remove(&id);
        }
    }

    fn on_reset(&mut self, conn: &mut Connection, id: StreamId, code: u64, now: Instant) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if !s.responding {
            // Abandoned before it said how much it wants: abandon our side too, so the
            // stream ends on both sides and its credit comes back.
            let _ = conn.reset_stream(id, code);
            s.responding = true;
            s.response_done = true;
        }
        // Reading the reset acknowledges it and ends the request side.
        self.on_readable(conn, id, now);
    }

    fn on_stopped(&mut self, conn: &mut Connection, id: StreamId, _code: u64, now: Instant) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        // The transport already reset our side; the upload may still need reading.
        s.responding = true;
        s.response_done = true;
        self.on_readable(conn, id, now);
    }
}

/// Client side: `streams` concurrent requests, each asking for `down / streams` bytes and
/// uploading `up / streams` bytes.
pub struct PerfClient {
    pub streams: u64,
    pub down: u64,
    pub up: u64,
    started: bool,
    open: HashMap<StreamId, ClientStream>,
    pub bytes_down: u64,
    pub bytes_up: u64,
    pub completed: u64,
    pub failed: Option<String>,
}

struct ClientStream {
    expect: u64,
    received: u64,
    header_sent: usize,
    header: [u8; 8],
    upload_left: u64,
    done_reading: bool,
    /// Our FIN, and so the whole upload, was acknowledged: buffered is not delivered.
    upload_delivered: bool,
}

impl PerfClient {
    pub fn new(streams: u64, down: u64, up: u64) -> Self {
        Self {
            streams: streams.max(1),
            down,
            up,
            started: false,
            open: HashMap::new(),
            bytes_down: 0,
            bytes_up: 0,
            completed: 0,
            failed: None,
        }
    }

    pub fn is_done(&self) -> bool {
        self.failed.is_some() || (self.started && self.completed == self.streams)
    }

    fn share(total: u64, n: u64, i: u64) -> u64 {
        total / n + u64::from(i < total % n)
    }

    /// Opens as many of the requested streams as the peer allows right now.
    fn open_streams(&mut self, conn: &mut Connection) {
        let opened = self.open.len() as u64 + self.completed;
        for i in opened..self.streams {
            let Some(id) = conn.open_stream(true) else {
                break;
            };
            let expect = Self::share(self.down, self.streams, i);
            let upload = Self::share(self.up, self.streams, i);
            self.open.insert(
                id,
                ClientStream {
                    expect,
                    received: 0,
                    header_sent: 0,
                    header: expect.to_be_bytes(),
                    upload_left: upload,
                    done_reading: false,
                    upload_delivered: false,
                },
            );
            self.pump(conn, id);
        }
        self.started = true;
    }

    fn pump(&mut self, conn: &mut Connection, id: StreamId) {
        let Some(s) = self.open.get_mut(&id) else {
            return;
        };
        while s.header_sent < 8 {
            match conn.write(id, &s.header[s.header_sent..]) {
                Ok(n) if n > 0 => s.header_sent += n,
                _ => return,
            }
        }
        if s.upload_left > 0 {
            let sent = write_zeros(conn, id, s.upload_left);
            s.upload_left -= sent;
            self.bytes_up += sent;
        }
        if s.upload_left == 0 {
            let _ = conn.finish(id);
        }
    }

    /// A stream is complete once the whole response was read and our upload delivered.
    fn complete_if_done(&mut self, conn: &mut Connection, id: StreamId) {
        if self
            .open
            .get(&id)
            .is_some_and(|s| s.done_reading && s.upload_delivered)
        {
            self.open.remove(&id);
            self.completed += 1;
            self.open_streams(conn);
        }
    }
}

impl Application for PerfClient {
    fn on_connected(&mut self, conn: &mut Connection, _now: Instant) {
        self.open_streams(conn);
    }

    fn on_readable(&mut self, conn: &mut Connection, id: StreamId, now: Instant) {
        let Some(s) = self.open.get_mut(&id) else {
            return;
        };
        loop {
            match conn.discard(id, usize::MAX, now) {
                Ok((n, fin)) => {
                    s.received += n as u64;
                    self.bytes_down += n as u64;
                    if fin {
                        s.done_reading = true;
                        break;
                    }
                    if n == 0 {
                        break;
                    }
                }
                Err(e) => {
                    self.failed = Some(format!("stream {id}: {e}"));
                    return;
                }
            }
        }
        if s.done_reading {
            if s.received != s.expect {
                self.failed = Some(format!(
                    "stream {id}: expected {} bytes, got {}",
                    s.expect, s.received
                ));
                return;
            }
            self.complete_if_done(conn, id);
        }
    }

    fn on_writable(&mut self, conn: &mut Connection, id: StreamId, _now: Instant) {
        self.pump(conn, id);
    }

    fn on_finished(&mut self, conn: &mut Connection, id: StreamId, _now: Instant) {
        if let Some(s) = self.open.get_mut(&id) {
            s.upload_delivered = true;
        }
        self.complete_if_done(conn, id);
    }

    fn on_streams_available(&mut self, conn: &mut Connection, bidi: bool, _now: Instant) {
        if bidi {
            self.open_streams(conn);
        }
    }

    fn on_reset(&mut self, _conn: &mut Connection, id: StreamId, code: u64, _now: Instant) {
        self.failed = Some(format!("stream {id} reset by peer with code {code}"));
    }

    fn on_stopped(&mut self, _conn: &mut Connection, id: StreamId, code: u64, _now: Instant) {
        self.failed = Some(format!(
            "stream {id}: peer stopped our upload with code {code}"
        ));
    }

    fn on_closed(&mut self, reason: &CloseReason) {
        if !self.is_done() {
            self.failed = Some(format!("connection closed early: {reason:?}"));
        }
    }
}
