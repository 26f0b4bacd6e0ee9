//! The QUIC performance protocol (ALPN `perf`, shared/specs/README.md): the client sends an
//! 8-byte big-endian length it wants back, then upload bytes and FIN; the server discards
//! the upload and sends exactly that many bytes, then FIN.

use foldhash::{HashMap, HashMapExt};
use std::time::Instant;

use crate::app::{write_zeros, Application};
use crate::conn::{CloseReason, Connection, StreamId};

#[derive(Default)]
struct ServerStream {
    header: [u8; 8],
    header_len: usize,
    to_send: u64,
    responding: bool,
    upload_done: bool,
}

/// Server side: any number of concurrent perf streams per connection.
#[derive(Default)]
pub struct PerfServer {
    streams: HashMap<StreamId, ServerStream>,
    /// Bytes of upload discarded (for stats).
    pub bytes_received: u64,
}

impl PerfServer {
    fn pump(&mut self, conn: &mut Connection, id: StreamId) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.responding && s.to_send > 0 {
            s.to_send -= write_zeros(conn, id, s.to_send);
            if s.to_send == 0 {
                let _ = conn.finish(id);
            }
        }
    }
}

impl Application for PerfServer {
    fn on_readable(&mut self, conn: &mut Connection, id: StreamId, now: Instant) {
        if !id.is_bidi() {
            return;
        }
        let s = self.streams.entry(id).or_default();
        if s.upload_done {
            return;
        }
        while s.header_len < 8 {
            let mut tmp = [0u8; 8];
            match conn.read(id, &mut tmp[..8 - s.header_len], now) {
                Ok((n, fin)) => {
                    s.header[s.header_len..s.header_len + n].copy_from_slice(&tmp[..n]);
                    s.header_len += n;
                    if fin && s.header_len < 8 {
                        // A request without a full length: answer nothing, end our side.
                        s.upload_done = true;
                        let _ = conn.finish(id);
                        return;
                    }
                    if n == 0 {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        if !s.responding {
            s.responding = true;
            s.to_send = u64::from_be_bytes(s.header);
            if s.to_send == 0 {
                let _ = conn.finish(id);
            }
        }
        while let Ok((n, fin)) = conn.discard(id, usize::MAX, now) {
            self.bytes_received += n as u64;
            if fin {
                s.upload_done = true;
                break;
            }
            if n == 0 {
                break;
            }
        }
        self.pump(conn, id);
    }

    fn on_writable(&mut self, conn: &mut Connection, id: StreamId, _now: Instant) {
        self.pump(conn, id);
    }

    fn on_finished(&mut self, _conn: &mut Connection, id: StreamId, _now: Instant) {
        if self
            .streams
            .get(&id)
            .is_some_and(|s| s.upload_done && s.to_send == 0)
        {
            self.streams.remove(&id);
        }
    }

    fn on_reset(&mut self, conn: &mut Connection, id: StreamId, _code: u64, _now: Instant) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.upload_done = true;
        }
        let _ = conn.stop_sending(id, 0);
    }

    fn on_stopped(&mut self, _conn: &mut Connection, id: StreamId, _code: u64, _now: Instant) {
        self.streams.remove(&id);
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
            if s.upload_left == 0 {
                self.open.remove(&id);
                self.completed += 1;
                self.open_streams(conn);
            }
        }
    }

    fn on_writable(&mut self, conn: &mut Connection, id: StreamId, _now: Instant) {
        self.pump(conn, id);
        if let Some(s) = self.open.get(&id) {
            if s.done_reading && s.upload_left == 0 {
                self.open.remove(&id);
                self.completed += 1;
                self.open_streams(conn);
            }
        }
    }

    fn on_streams_available(&mut self, conn: &mut Connection, bidi: bool, _now: Instant) {
        if bidi {
            self.open_streams(conn);
        }
    }

    fn on_reset(&mut self, _conn: &mut Connection, id: StreamId, code: u64, _now: Instant) {
        self.failed = Some(format!("stream {id} reset by peer with code {code}"));
    }

    fn on_closed(&mut self, reason: &CloseReason) {
        if !self.is_done() {
            self.failed = Some(format!("connection closed early: {reason:?}"));
        }
    }
}
