//! Applications over QUIC streams: the trait a library user implements, and the built-ins
//! picked by ALPN (`perf`, `hq-interop`, `echo`, `h3`).

pub mod echo;
pub mod fetches;
pub mod h3;
pub mod hq;
pub mod perf;

use std::time::Instant;

use crate::conn::{CloseReason, Connection, Event, StreamEvent, StreamId};
use crate::endpoint::EventHandler;
use crate::wire::error::{TransportError, TransportErrorCode};

/// One connection's application. Callbacks run on the connection's worker thread, right
/// after the packet or timer that caused them; they must not block.
pub trait Application: Send {
    /// The handshake completed.
    fn on_connected(&mut self, _conn: &mut Connection, _now: Instant) {}
    /// The peer opened a stream.
    fn on_stream_opened(&mut self, conn: &mut Connection, id: StreamId, now: Instant) {
        self.on_readable(conn, id, now);
    }
    /// Data (or FIN) is ready to read on `id`.
    fn on_readable(&mut self, _conn: &mut Connection, _id: StreamId, _now: Instant) {}
    /// `id` can take more data.
    fn on_writable(&mut self, _conn: &mut Connection, _id: StreamId, _now: Instant) {}
    /// Everything we sent on `id`, FIN included, was acknowledged.
    fn on_finished(&mut self, _conn: &mut Connection, _id: StreamId, _now: Instant) {}
    /// The peer abandoned its sending side of `id` (RESET_STREAM).
    fn on_reset(&mut self, _conn: &mut Connection, _id: StreamId, _code: u64, _now: Instant) {}
    /// The peer asked us to stop sending on `id` (STOP_SENDING; we already reset it).
    fn on_stopped(&mut self, _conn: &mut Connection, _id: StreamId, _code: u64, _now: Instant) {}
    /// The peer raised its stream limit: more streams can be opened.
    fn on_streams_available(&mut self, _conn: &mut Connection, _bidi: bool, _now: Instant) {}
    /// Datagrams (RFC 9221) arrived: take them with `Connection::recv_datagram`. The
    /// default drops them (the queue is bounded anyway, dropping its oldest).
    fn on_datagram(&mut self, conn: &mut Connection, _now: Instant) {
        while conn.discard_datagram() {}
    }
    fn on_closed(&mut self, _reason: &CloseReason) {}
    /// The server is shutting down: end the connection. The default closes it at once;
    /// a protocol with its own goodbye (HTTP/3's GOAWAY) may say it first and close once
    /// its work is done. The worker stops waiting after its drain timeout either way.
    fn on_shutdown(&mut self, conn: &mut Connection, now: Instant) {
        conn.close(now, 0, SHUTDOWN_REASON);
    }
}

/// The reason phrase of a close at server shutdown.
pub const SHUTDOWN_REASON: &str = "server shutting down";

/// Creates the application for a connection from its negotiated ALPN.
pub trait AppFactory: Send + Sync {
    fn alpns(&self) -> Vec<Vec<u8>>;
    fn create(&self, alpn: &[u8]) -> Option<Box<dyn Application>>;
}

/// Per-connection state kept by the endpoint: the application, once the ALPN is known.
pub type AppSlot = Option<Box<dyn Application>>;

/// Delivers connection events to applications made by a factory.
pub struct AppDispatcher<'a> {
    pub factory: &'a dyn AppFactory,
}

impl AppDispatcher<'_> {
    /// Makes the connection's application for its ALPN and tells it streams can be used.
    fn start(&mut self, now: Instant, conn: &mut Connection, slot: &mut AppSlot) {
        let alpn = conn.alpn().unwrap_or_default().to_vec();
        match self.factory.create(&alpn) {
            Some(mut app) => {
                app.on_connected(conn, now);
                *slot = Some(app);
            }
            None => {
                // rustls already refused unknown ALPNs; this only happens for a client
                // without one. A transport close with the TLS alert, as TLS itself
                // would have sent (RFC 9001 §8.1: no_application_protocol, 0x0178).
                conn.close_with_error(
                    now,
                    TransportError::new(TransportErrorCode::crypto(120), "no application for ALPN"),
                );
            }
        }
    }
}

impl EventHandler<AppSlot> for AppDispatcher<'_> {
    fn on_event(&mut self, now: Instant, conn: &mut Connection, slot: &mut AppSlot, event: Event) {
        match event {
            Event::Connected => self.start(now, conn, slot),
            // Refused early data voided every stream: the application starts over.
            Event::EarlyData { accepted: false } => {
                *slot = None;
                self.start(now, conn, slot);
            }
            Event::EarlyData { accepted: true } => {}
            Event::Stream(ev) => {
                if let Some(app) = slot.as_mut() {
                    dispatch_stream_event(app.as_mut(), conn, ev, now);
                }
            }
            Event::Datagram => {
                if let Some(app) = slot.as_mut() {
                    app.on_datagram(conn, now);
                }
            }
            // Moving again means a new socket: the driver's job, not an application's.
            Event::PathValidationFailed => {}
            Event::Closed(reason) => {
                if let Some(app) = slot.as_mut() {
                    app.on_closed(&reason);
                }
            }
        }
    }
}

pub fn dispatch_stream_event(
    app: &mut dyn Application,
    conn: &mut Connection,
    ev: StreamEvent,
    now: Instant,
) {
    match ev {
        StreamEvent::Opened { id } => app.on_stream_opened(conn, id, now),
        StreamEvent::Readable { id } => app.on_readable(conn, id, now),
        StreamEvent::Writable { id } => app.on_writable(conn, id, now),
        StreamEvent::Finished { id } => app.on_finished(conn, id, now),
        StreamEvent::Reset { id, error_code } => app.on_reset(conn, id, error_code, now),
        StreamEvent::Stopped { id, error_code } => app.on_stopped(conn, id, error_code, now),
        StreamEvent::StreamsAvailable { bidi } => app.on_streams_available(conn, bidi, now),
    }
}

/// The built-in server applications, as a factory.
pub struct BuiltinApps {
    pub alpns: Vec<Vec<u8>>,
    pub root: Option<std::path::PathBuf>,
}

pub const ALPN_PERF: &[u8] = b"perf";
pub const ALPN_HQ: &[u8] = b"hq-interop";
pub const ALPN_ECHO: &[u8] = b"echo";

impl AppFactory for BuiltinApps {
    fn alpns(&self) -> Vec<Vec<u8>> {
        self.alpns.clone()
    }

    fn create(&self, alpn: &[u8]) -> Option<Box<dyn Application>> {
        if !self.alpns.iter().any(|a| a == alpn) {
            return None;
        }
        match alpn {
            ALPN_PERF => Some(Box::new(perf::PerfServer::default())),
            ALPN_HQ => Some(Box::new(hq::HqServer::new(self.root.clone()))),
            ALPN_ECHO => Some(Box::new(echo::EchoServer::default())),
            h3::ALPN_H3 => Some(Box::new(h3::server::H3Server::new(self.root.clone()))),
            _ => None,
        }
    }
}

/// Static bytes for synthetic bodies (perf responses, `/N` downloads): written straight from here.
pub(crate) static ZEROS: [u8; 64 * 1024] = [0u8; 64 * 1024];

/// Writes up to `remaining` bytes of zeros; returns how many were accepted.
/// Reads and drops whatever `id` holds, FIN or reset included: the built-in protocols have
/// no use for unidirectional streams, and reading returns their credit to the peer.
pub(crate) fn discard_all(conn: &mut Connection, id: StreamId, now: Instant) {
    while let Ok((n, fin)) = conn.discard(id, usize::MAX, now) {
        if fin || n == 0 {
            break;
        }
    }
}

pub(crate) fn write_zeros(conn: &mut Connection, id: StreamId, remaining: u64) -> u64 {
    let mut sent = 0u64;
    while sent < remaining {
        let n = (remaining - sent).min(ZEROS.len() as u64) as usize;
        match conn.write(id, &ZEROS[..n]) {
            Ok(0) | Err(_) => break,
            Ok(w) => sent += w as u64,
        }
    }
    sent
}
