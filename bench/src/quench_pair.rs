//! Two quench endpoints joined in memory and driven on a virtual clock, with the server's
//! calls timed: the quench half of the side-by-side benchmarks.
//!
//! Datagrams go from `Endpoint::poll_transmit` into preallocated buffers and from there
//! into the other endpoint's `handle_datagram`: no I/O and no copy beyond the one the
//! caller's buffer needs. Only the server's work is ever inside a timed span.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quench::app::{AppDispatcher, AppSlot, BuiltinApps};
use quench::conn::{Connection, Event, StreamEvent, StreamId, TransportConfig};
use quench::endpoint::{ConnHandle, Endpoint, EndpointConfig, EventHandler};
use quench::io::RxMeta;
use quench::wire::header::VERSION_1;

use crate::tls::{TlsSetup, ALPN, SERVER_NAME};
use crate::{perf_request, server_span, Stopwatch, Wire, CLIENT_ADDR, SERVER_ADDR, ZEROS};

/// The transport settings of every quench benchmark connection: defaults (CUBIC, 1452-byte
/// datagrams after the handshake), pacing off so a virtual clock never holds packets back.
pub fn transport() -> TransportConfig {
    TransportConfig {
        pacing: false,
        ..TransportConfig::default()
    }
}

/// Client side: reads whatever arrives (untimed), counting bytes and finished streams.
#[derive(Default)]
pub struct Sink {
    pub bytes: u64,
    pub fins: u64,
    buf: Vec<u8>,
}

impl Sink {
    fn drain(&mut self, conn: &mut Connection, id: StreamId, now: Instant) {
        if self.buf.is_empty() {
            self.buf = vec![0; 64 * 1024];
        }
        while let Ok((n, fin)) = conn.read(id, &mut self.buf, now) {
            self.bytes += n as u64;
            if fin {
                self.fins += 1;
                return;
            }
            if n == 0 {
                return;
            }
        }
    }
}

impl<U> EventHandler<U> for Sink {
    fn on_event(&mut self, now: Instant, conn: &mut Connection, _: &mut U, event: Event) {
        if let Event::Stream(StreamEvent::Opened { id } | StreamEvent::Readable { id }) = event {
            self.drain(conn, id, now);
        }
    }
}

/// What the server does with events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerMode {
    /// Remember readable streams; the benchmark reads them outside the timed span.
    Deferred,
    /// The built-in applications (perf), exactly as `quench serve` runs them.
    Apps,
}

pub struct ServerHandler {
    pub mode: ServerMode,
    apps: BuiltinApps,
    /// Streams that became readable (Deferred mode).
    pub readable: Vec<StreamId>,
}

impl EventHandler<AppSlot> for ServerHandler {
    fn on_event(&mut self, now: Instant, conn: &mut Connection, slot: &mut AppSlot, event: Event) {
        match self.mode {
            ServerMode::Apps => AppDispatcher {
                factory: &self.apps,
            }
            .on_event(now, conn, slot, event),
            ServerMode::Deferred => {
                if let Event::Stream(StreamEvent::Opened { id } | StreamEvent::Readable { id }) =
                    event
                {
                    if !self.readable.contains(&id) {
                        self.readable.push(id);
                    }
                }
            }
        }
    }
}

pub struct QuenchPair {
    pub now: Instant,
    pub step: Duration,
    pub client: Endpoint<()>,
    pub server: Endpoint<AppSlot>,
    pub sink: Sink,
    pub handler: ServerHandler,
    client_tls: Arc<rustls::ClientConfig>,
    c2s: Wire,
    s2c: Wire,
    /// Client connections, in the order opened.
    pub client_conns: Vec<ConnHandle>,
    /// Where each bulk benchmark writes (sender's handle, stream).
    bulk: Option<(ConnHandle, StreamId)>,
    /// Datagrams each way in the last request round (client to server, back).
    last_request_datagrams: (usize, usize),
}

impl QuenchPair {
    /// Two endpoints and no connection yet.
    pub fn new(tls: &TlsSetup, mode: ServerMode) -> Self {
        let server = Endpoint::new(EndpointConfig::new(
            transport(),
            Some(tls.quench_server.clone()),
        ));
        let client = Endpoint::new(EndpointConfig::new(transport(), None));
        Self {
            now: Instant::now(),
            step: Duration::from_micros(500),
            client,
            server,
            sink: Sink::default(),
            handler: ServerHandler {
                mode,
                apps: BuiltinApps {
                    alpns: vec![ALPN.to_vec()],
                    root: None,
                },
                readable: Vec::with_capacity(16),
            },
            client_tls: tls.quench_client.clone(),
            c2s: Wire::new(256),
            s2c: Wire::new(256),
            client_conns: Vec::new(),
            bulk: None,
            last_request_datagrams: (0, 0),
        }
    }

    /// A pair with `conns` established, quiet connections.
    pub fn connected(tls: &TlsSetup, mode: ServerMode, conns: usize) -> Self {
        let mut pair = Self::new(tls, mode);
        for _ in 0..conns {
            pair.handshake(None);
        }
        pair
    }

    /// Opens one client connection and drives both sides until the handshake is confirmed
    /// and everything that follows it (HANDSHAKE_DONE, NEW_CONNECTION_ID, tickets, their
    /// ACKs) has settled; the server's calls are timed into `sw`. Returns whether the
    /// handshake resumed a session (clients of `TlsSetup::resuming`).
    pub fn handshake(&mut self, sw: Option<&mut Stopwatch>) -> bool {
        let h = self
            .client
            .connect(
                self.now,
                self.client_tls.clone(),
                SERVER_NAME,
                SERVER_ADDR,
                VERSION_1,
            )
            .expect("client connection");
        self.client_conns.push(h);
        self.settle(Duration::from_millis(100), sw);
        let conn = self.client.conn(h).expect("client connection alive");
        assert!(
            conn.is_handshake_confirmed(),
            "quench handshake did not complete"
        );
        conn.resumed()
    }

    /// Exchanges datagrams (jumping the clock to timers when idle) until nothing is in
    /// flight and no timer is due within `limit`.
    pub fn settle(&mut self, limit: Duration, mut sw: Option<&mut Stopwatch>) {
        let end = self.now + limit;
        for _ in 0..10_000 {
            if self.step_once(sw.as_deref_mut()) > 0 {
                continue;
            }
            let next = [self.client.next_timeout(), self.server.next_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= end => self.now = self.now.max(t),
                _ => return,
            }
        }
        panic!("quench pair did not settle");
    }

    /// One exchange in each direction; returns datagrams moved.
    fn step_once(&mut self, mut sw: Option<&mut Stopwatch>) -> usize {
        let now = self.now;
        self.client.handle_timeouts(now, &mut self.sink);
        let t0 = Instant::now();
        server_span(|| self.server.handle_timeouts(now, &mut self.handler));
        if let Some(sw) = sw.as_deref_mut() {
            sw.stop(t0);
        }
        let up = collect(&mut self.client, now, &mut self.c2s, usize::MAX);
        let t0 = Instant::now();
        let down = server_span(|| {
            deliver(&mut self.server, now, &mut self.c2s, &mut self.handler);
            collect(&mut self.server, now, &mut self.s2c, usize::MAX)
        });
        if let Some(sw) = sw {
            sw.stop(t0);
        }
        deliver(&mut self.client, now, &mut self.s2c, &mut self.sink);
        let moved = up + down;
        if moved > 0 {
            self.now += self.step;
        }
        moved
    }

    fn read_deferred(&mut self) {
        let now = self.now;
        for id in std::mem::take(&mut self.handler.readable) {
            for h in self.server.handles().collect::<Vec<_>>() {
                self.server.with_state(h, |conn, _| {
                    while let Ok((n, fin)) = conn.discard(id, usize::MAX, now) {
                        if n == 0 || fin {
                            break;
                        }
                    }
                });
            }
        }
    }

    /// Opens the bulk stream: from the client (`upload`) or from the server.
    fn bulk_stream(&mut self, upload: bool) -> (ConnHandle, StreamId) {
        if let Some(b) = self.bulk {
            return b;
        }
        let b = if upload {
            let h = self.client_conns[0];
            let id = self
                .client
                .with_state(h, |c, _| c.open_stream(false))
                .flatten()
                .expect("client uni stream");
            (h, id)
        } else {
            let h = self.server.handles().next().expect("server connection");
            let id = self
                .server
                .with_state(h, |c, _| c.open_stream(false))
                .flatten()
                .expect("server uni stream");
            (h, id)
        };
        self.bulk = Some(b);
        b
    }

    /// Receive benchmark round: the client sends up to `max` datagrams of stream data; the
    /// server's `handle_datagram` calls for them are timed. Returns (datagrams, bytes).
    pub fn recv_round(&mut self, max: usize, sw: &mut Stopwatch) -> (usize, usize) {
        let (h, id) = self.bulk_stream(true);
        let now = self.now;
        self.client.with_state(h, |c, _| fill(c, id));
        self.client.handle_timeouts(now, &mut self.sink);
        collect(&mut self.client, now, &mut self.c2s, max);
        let (n, bytes) = (self.c2s.len, self.c2s.bytes());
        let t0 = Instant::now();
        server_span(|| deliver(&mut self.server, now, &mut self.c2s, &mut self.handler));
        sw.stop(t0);
        self.read_deferred();
        self.server.handle_timeouts(now, &mut self.handler);
        collect(&mut self.server, now, &mut self.s2c, usize::MAX);
        deliver(&mut self.client, now, &mut self.s2c, &mut self.sink);
        self.now += self.step;
        (n, bytes)
    }

    /// Send benchmark round: the server has stream data queued; its `poll_transmit` calls
    /// for up to `max` datagrams are timed. Returns (datagrams, bytes).
    pub fn send_round(&mut self, max: usize, sw: &mut Stopwatch) -> (usize, usize) {
        let (h, id) = self.bulk_stream(false);
        let now = self.now;
        self.server.with_state(h, |c, _| fill(c, id));
        self.server.handle_timeouts(now, &mut self.handler);
        let t0 = Instant::now();
        server_span(|| collect(&mut self.server, now, &mut self.s2c, max));
        sw.stop(t0);
        let (n, bytes) = (self.s2c.len, self.s2c.bytes());
        deliver(&mut self.client, now, &mut self.s2c, &mut self.sink);
        self.client.handle_timeouts(now, &mut self.sink);
        collect(&mut self.client, now, &mut self.c2s, usize::MAX);
        deliver(&mut self.server, now, &mut self.c2s, &mut self.handler);
        self.now += self.step;
        (n, bytes)
    }

    /// Request benchmark round: every client connection sends `per_conn` perf requests of
    /// `request` bytes, each on its own stream, asking for `response` bytes; the server's
    /// handling of the requests, its timers and its responses are timed. Returns responses
    /// completed at the client.
    pub fn request_round(
        &mut self,
        per_conn: usize,
        request: usize,
        response: u64,
        sw: &mut Stopwatch,
    ) -> u64 {
        let now = self.now;
        let req = perf_request(request, response);
        for &h in &self.client_conns {
            self.client.with_state(h, |c, _| {
                for _ in 0..per_conn {
                    if let Some(id) = c.open_stream(true) {
                        let n = c.write(id, &req).unwrap_or(0);
                        assert_eq!(n, req.len(), "request fits the stream window");
                        c.finish(id).expect("finish request");
                    }
                }
            });
        }
        self.client.handle_timeouts(now, &mut self.sink);
        let up = collect(&mut self.client, now, &mut self.c2s, usize::MAX);
        let before = self.sink.fins;
        let t0 = Instant::now();
        let down = server_span(|| {
            self.server.handle_timeouts(now, &mut self.handler);
            deliver(&mut self.server, now, &mut self.c2s, &mut self.handler);
            collect(&mut self.server, now, &mut self.s2c, usize::MAX)
        });
        sw.stop(t0);
        self.last_request_datagrams = (up, down);
        deliver(&mut self.client, now, &mut self.s2c, &mut self.sink);
        self.now += self.step;
        self.sink.fins - before
    }

    /// Sizes of the datagrams of the last request round: (client to server, back).
    pub fn last_request_sizes(&self) -> (Vec<usize>, Vec<usize>) {
        let sizes = |w: &Wire, n: usize| w.slots[..n].iter().map(|s| s.len).collect();
        let (up, down) = self.last_request_datagrams;
        (sizes(&self.c2s, up), sizes(&self.s2c, down))
    }
}

/// Queues as much stream data as the stream accepts.
fn fill(conn: &mut Connection, id: StreamId) {
    while let Ok(n) = conn.write(id, &ZEROS[..16 * 1024]) {
        if n == 0 {
            break;
        }
    }
}

/// Moves up to `max` datagrams from `ep` into `wire`; returns how many.
pub fn collect<U: Default>(
    ep: &mut Endpoint<U>,
    now: Instant,
    wire: &mut Wire,
    max: usize,
) -> usize {
    let start = wire.len;
    while wire.len - start < max {
        let slot = wire.next_slot();
        match ep.poll_transmit(now, &mut slot.buf, 1) {
            Some(meta) => {
                slot.len = meta.len;
                slot.dst = meta.dst;
                slot.ecn = meta.ecn;
                wire.len += 1;
            }
            None => break,
        }
    }
    wire.len - start
}

/// Hands every datagram in `wire` to `ep` and empties it.
pub fn deliver<U: Default>(
    ep: &mut Endpoint<U>,
    now: Instant,
    wire: &mut Wire,
    handler: &mut impl EventHandler<U>,
) {
    let (src, dst) = if ep.config().server_tls.is_some() {
        (CLIENT_ADDR, SERVER_ADDR)
    } else {
        (SERVER_ADDR, CLIENT_ADDR)
    };
    for slot in &mut wire.slots[..wire.len] {
        let meta = RxMeta {
            src,
            dst,
            ecn: slot.ecn,
        };
        ep.handle_datagram(now, meta, &mut slot.buf[..slot.len], handler);
    }
    wire.len = 0;
}
