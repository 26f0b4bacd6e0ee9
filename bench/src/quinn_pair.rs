//! Two quinn-proto 0.11 endpoints joined in memory and driven exactly like
//! [`crate::quench_pair::QuenchPair`]: same virtual clock, same rounds, same timed spans
//! (the server's calls only). quinn-proto's own test `Pair` is not public, so this is a
//! small driver of our own following the polling order its documentation prescribes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn_proto::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn_proto::{
    ClientConfig, Connection, ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig,
    Event, ServerConfig, StreamEvent, StreamId, TransportConfig,
};

use crate::tls::{TlsSetup, SERVER_NAME};
use crate::{perf_request, server_span, Stopwatch, Wire, CLIENT_ADDR, SERVER_ADDR, ZEROS};

/// quinn-proto's defaults (CUBIC, pacing — which it cannot turn off) with 1452-byte
/// datagrams from the start and no MTU probing, to match quench's packet size.
pub fn transport() -> TransportConfig {
    let mut t = TransportConfig::default();
    t.initial_mtu(1452).mtu_discovery_config(None);
    t
}

/// What a side does with stream events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppMode {
    /// Remember readable streams; the benchmark reads them outside the timed span.
    Deferred,
    /// The perf protocol's server side, written the way quench's `PerfServer` is.
    Perf,
    /// Read everything right away, counting bytes and finished streams (client side).
    Sink,
}

#[derive(Default)]
struct PerfStream {
    header: [u8; 8],
    header_len: usize,
    responding: bool,
    upload_done: bool,
}

pub struct Side {
    endpoint: Endpoint,
    conns: Vec<Option<Connection>>,
    scratch: Vec<u8>,
    mode: AppMode,
    readable: Vec<(ConnectionHandle, StreamId)>,
    perf: HashMap<(usize, StreamId), PerfStream>,
    pub sink_bytes: u64,
    pub sink_fins: u64,
}

impl Side {
    fn new(server: Option<Arc<ServerConfig>>, mode: AppMode) -> Self {
        Self {
            endpoint: Endpoint::new(Arc::new(EndpointConfig::default()), server, false, None),
            conns: Vec::new(),
            scratch: Vec::with_capacity(2048),
            mode,
            readable: Vec::with_capacity(16),
            perf: HashMap::new(),
            sink_bytes: 0,
            sink_fins: 0,
        }
    }

    fn insert(&mut self, ch: ConnectionHandle, conn: Connection) {
        if self.conns.len() <= ch.0 {
            self.conns.resize_with(ch.0 + 1, || None);
        }
        self.conns[ch.0] = Some(conn);
    }

    pub fn conn(&mut self, ch: ConnectionHandle) -> &mut Connection {
        self.conns[ch.0].as_mut().expect("live connection")
    }

    /// Feeds datagrams to the endpoint and on to their connections, then runs the
    /// connections' endpoint events and application events. Stateless responses go to `out`.
    fn handle(&mut self, now: Instant, from: std::net::SocketAddr, data: Vec<(BytesMut, u8)>) {
        for (d, ecn) in data {
            let ecn = quinn_proto::EcnCodepoint::from_bits(ecn);
            match self
                .endpoint
                .handle(now, from, None, ecn, d, &mut self.scratch)
            {
                Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                    self.conn(ch).handle_event(ev);
                    self.process(ch, now);
                }
                Some(DatagramEvent::NewConnection(incoming)) => {
                    self.scratch.clear();
                    match self.endpoint.accept(incoming, now, &mut self.scratch, None) {
                        Ok((ch, conn)) => {
                            self.insert(ch, conn);
                            self.process(ch, now);
                        }
                        Err(e) => panic!("quinn-proto refused a connection: {:?}", e.cause),
                    }
                }
                Some(DatagramEvent::Response(_)) | None => {}
            }
            self.scratch.clear();
        }
    }

    /// Endpoint events (CID issuance, drain) and application events of `ch`.
    fn process(&mut self, ch: ConnectionHandle, now: Instant) {
        let Some(conn) = self.conns.get_mut(ch.0).and_then(|c| c.as_mut()) else {
            return;
        };
        while let Some(ev) = conn.poll_endpoint_events() {
            let drained = ev.is_drained();
            if let Some(cev) = self.endpoint.handle_event(ch, ev) {
                conn.handle_event(cev);
            }
            if drained {
                self.conns[ch.0] = None;
                return;
            }
        }
        while let Some(ev) = conn.poll() {
            let Event::Stream(ev) = ev else {
                continue;
            };
            match ev {
                StreamEvent::Opened { dir } => {
                    while let Some(id) = conn.streams().accept(dir) {
                        if self.mode == AppMode::Perf {
                            // As quench's PerfServer: served on the stack first, only a
                            // request still under way is tracked.
                            let mut s = PerfStream::default();
                            serve_perf(conn, id, &mut s);
                            if !s.is_done() {
                                self.perf.insert((ch.0, id), s);
                            }
                            continue;
                        }
                        on_readable(
                            self.mode,
                            conn,
                            ch,
                            id,
                            &mut self.readable,
                            &mut self.perf,
                            &mut self.sink_bytes,
                            &mut self.sink_fins,
                        );
                    }
                }
                StreamEvent::Readable { id } => on_readable(
                    self.mode,
                    conn,
                    ch,
                    id,
                    &mut self.readable,
                    &mut self.perf,
                    &mut self.sink_bytes,
                    &mut self.sink_fins,
                ),
                StreamEvent::Finished { id }
                    if self
                        .perf
                        .get(&(ch.0, id))
                        .is_some_and(|s| s.upload_done && s.responding) =>
                {
                    self.perf.remove(&(ch.0, id));
                }
                _ => {}
            }
        }
        let _ = now;
    }

    fn handles(&self) -> impl Iterator<Item = ConnectionHandle> + '_ {
        self.conns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_some())
            .map(|(i, _)| ConnectionHandle(i))
    }

    fn timeouts(&mut self, now: Instant) {
        for i in 0..self.conns.len() {
            let Some(conn) = self.conns[i].as_mut() else {
                continue;
            };
            if conn.poll_timeout().is_some_and(|t| t <= now) {
                conn.handle_timeout(now);
                self.process(ConnectionHandle(i), now);
            }
        }
    }

    fn next_timeout(&mut self) -> Option<Instant> {
        self.conns
            .iter_mut()
            .flatten()
            .filter_map(|c| c.poll_timeout())
            .min()
    }

    /// Moves up to `max` datagrams, connection by connection, into `wire`.
    fn collect(&mut self, now: Instant, wire: &mut Wire, max: usize) -> usize {
        let start = wire.len;
        for i in 0..self.conns.len() {
            let Some(conn) = self.conns[i].as_mut() else {
                continue;
            };
            while wire.len - start < max {
                let slot = wire.next_slot();
                slot.buf.clear();
                match conn.poll_transmit(now, 1, &mut slot.buf) {
                    Some(t) => {
                        slot.len = t.size;
                        slot.dst = t.destination;
                        slot.ecn = t.ecn.map_or(0, |e| e as u8);
                        wire.len += 1;
                    }
                    None => break,
                }
            }
        }
        wire.len - start
    }

    /// Reads every stream remembered in Deferred mode.
    fn read_deferred(&mut self) {
        for (ch, id) in std::mem::take(&mut self.readable) {
            if let Some(conn) = self.conns.get_mut(ch.0).and_then(|c| c.as_mut()) {
                let mut bytes = 0;
                let mut fins = 0;
                read_all(conn, id, &mut bytes, &mut fins);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn on_readable(
    mode: AppMode,
    conn: &mut Connection,
    ch: ConnectionHandle,
    id: StreamId,
    readable: &mut Vec<(ConnectionHandle, StreamId)>,
    perf: &mut HashMap<(usize, StreamId), PerfStream>,
    sink_bytes: &mut u64,
    sink_fins: &mut u64,
) {
    match mode {
        AppMode::Deferred => {
            if !readable.contains(&(ch, id)) {
                readable.push((ch, id));
            }
        }
        AppMode::Sink => read_all(conn, id, sink_bytes, sink_fins),
        AppMode::Perf => {
            let Some(s) = perf.get_mut(&(ch.0, id)) else {
                return;
            };
            serve_perf(conn, id, s);
            if s.is_done() {
                perf.remove(&(ch.0, id));
            }
        }
    }
}

impl PerfStream {
    fn is_done(&self) -> bool {
        self.upload_done && self.responding
    }
}

/// Reads what the request has; once its length is known, writes the response and the FIN.
fn serve_perf(conn: &mut Connection, id: StreamId, s: &mut PerfStream) {
    if let Ok(mut chunks) = conn.recv_stream(id).read(true) {
        loop {
            match chunks.next(usize::MAX) {
                Ok(Some(chunk)) => {
                    let take = (8 - s.header_len).min(chunk.bytes.len());
                    s.header[s.header_len..s.header_len + take]
                        .copy_from_slice(&chunk.bytes[..take]);
                    s.header_len += take;
                }
                Ok(None) => {
                    s.upload_done = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let _ = chunks.finalize();
    }
    if s.header_len == 8 && !s.responding {
        s.responding = true;
        let mut left = u64::from_be_bytes(s.header) as usize;
        let mut send = conn.send_stream(id);
        while left > 0 {
            match send.write(&ZEROS[..left.min(ZEROS.len())]) {
                Ok(n) if n > 0 => left -= n,
                _ => break,
            }
        }
        let _ = send.finish();
    }
}

fn read_all(conn: &mut Connection, id: StreamId, bytes: &mut u64, fins: &mut u64) {
    let mut recv = conn.recv_stream(id);
    let Ok(mut chunks) = recv.read(true) else {
        return;
    };
    loop {
        match chunks.next(usize::MAX) {
            Ok(Some(chunk)) => *bytes += chunk.bytes.len() as u64,
            Ok(None) => {
                *fins += 1;
                break;
            }
            Err(_) => break,
        }
    }
    let _ = chunks.finalize();
}

/// Copies the datagrams in `wire` into the owned buffers quinn-proto takes (outside any
/// timed span) and empties it.
fn take(wire: &mut Wire) -> Vec<(BytesMut, u8)> {
    let v = wire.slots[..wire.len]
        .iter()
        .map(|s| (BytesMut::from(&s.buf[..s.len]), s.ecn))
        .collect();
    wire.len = 0;
    v
}

pub struct QuinnPair {
    pub now: Instant,
    pub step: Duration,
    pub client: Side,
    pub server: Side,
    client_config: ClientConfig,
    c2s: Wire,
    s2c: Wire,
    pub client_conns: Vec<ConnectionHandle>,
    bulk: Option<(ConnectionHandle, StreamId)>,
}

impl QuinnPair {
    pub fn new(tls: &TlsSetup, mode: AppMode) -> Self {
        let transport = Arc::new(transport());
        let mut server_config = ServerConfig::with_crypto(Arc::new(
            QuicServerConfig::try_from(tls.server.clone()).expect("AES-128-GCM suite"),
        ));
        server_config.transport_config(transport.clone());
        let mut client_config = ClientConfig::new(Arc::new(
            QuicClientConfig::try_from(tls.client.clone()).expect("AES-128-GCM suite"),
        ));
        client_config.transport_config(transport);
        Self {
            now: Instant::now(),
            step: Duration::from_micros(500),
            client: Side::new(None, AppMode::Sink),
            server: Side::new(Some(Arc::new(server_config)), mode),
            client_config,
            c2s: Wire::new(256),
            s2c: Wire::new(256),
            client_conns: Vec::new(),
            bulk: None,
        }
    }

    pub fn connected(tls: &TlsSetup, mode: AppMode, conns: usize) -> Self {
        let mut pair = Self::new(tls, mode);
        for _ in 0..conns {
            pair.handshake(None);
        }
        pair
    }

    /// Like [`crate::quench_pair::QuenchPair::handshake`].
    pub fn handshake(&mut self, sw: Option<&mut Stopwatch>) {
        let (ch, conn) = self
            .client
            .endpoint
            .connect(
                self.now,
                self.client_config.clone(),
                SERVER_ADDR,
                SERVER_NAME,
            )
            .expect("client connection");
        self.client.insert(ch, conn);
        self.client_conns.push(ch);
        self.settle(Duration::from_millis(100), sw);
        assert!(
            !self.client.conn(ch).is_handshaking(),
            "quinn-proto handshake did not complete"
        );
    }

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
        panic!("quinn-proto pair did not settle");
    }

    fn step_once(&mut self, mut sw: Option<&mut Stopwatch>) -> usize {
        let now = self.now;
        self.client.timeouts(now);
        let t0 = Instant::now();
        server_span(|| self.server.timeouts(now));
        if let Some(sw) = sw.as_deref_mut() {
            sw.stop(t0);
        }
        let up = self.client.collect(now, &mut self.c2s, usize::MAX);
        let data = take(&mut self.c2s);
        let t0 = Instant::now();
        let down = server_span(|| {
            self.server.handle(now, CLIENT_ADDR, data);
            self.server.collect(now, &mut self.s2c, usize::MAX)
        });
        if let Some(sw) = sw {
            sw.stop(t0);
        }
        let data = take(&mut self.s2c);
        self.client.handle(now, SERVER_ADDR, data);
        let moved = up + down;
        if moved > 0 {
            self.now += self.step;
        }
        moved
    }

    fn bulk_stream(&mut self, upload: bool) -> (ConnectionHandle, StreamId) {
        if let Some(b) = self.bulk {
            return b;
        }
        let ch = if upload {
            self.client_conns[0]
        } else {
            self.server.handles().next().expect("server connection")
        };
        let side = if upload {
            &mut self.client
        } else {
            &mut self.server
        };
        let id = side
            .conn(ch)
            .streams()
            .open(Dir::Uni)
            .expect("uni stream credit");
        self.bulk = Some((ch, id));
        (ch, id)
    }

    pub fn recv_round(&mut self, max: usize, sw: &mut Stopwatch) -> (usize, usize) {
        let (ch, id) = self.bulk_stream(true);
        let now = self.now;
        fill(self.client.conn(ch), id);
        self.client.timeouts(now);
        self.client.collect(now, &mut self.c2s, max);
        let (n, bytes) = (self.c2s.len, self.c2s.bytes());
        let data = take(&mut self.c2s);
        let t0 = Instant::now();
        server_span(|| self.server.handle(now, CLIENT_ADDR, data));
        sw.stop(t0);
        self.server.read_deferred();
        self.server.timeouts(now);
        self.server.collect(now, &mut self.s2c, usize::MAX);
        let data = take(&mut self.s2c);
        self.client.handle(now, SERVER_ADDR, data);
        self.now += self.step;
        (n, bytes)
    }

    pub fn send_round(&mut self, max: usize, sw: &mut Stopwatch) -> (usize, usize) {
        let (ch, id) = self.bulk_stream(false);
        let now = self.now;
        fill(self.server.conn(ch), id);
        self.server.timeouts(now);
        let t0 = Instant::now();
        server_span(|| self.server.collect(now, &mut self.s2c, max));
        sw.stop(t0);
        let (n, bytes) = (self.s2c.len, self.s2c.bytes());
        let data = take(&mut self.s2c);
        self.client.handle(now, SERVER_ADDR, data);
        self.client.timeouts(now);
        self.client.collect(now, &mut self.c2s, usize::MAX);
        let data = take(&mut self.c2s);
        self.server.handle(now, CLIENT_ADDR, data);
        self.now += self.step;
        (n, bytes)
    }

    pub fn request_round(
        &mut self,
        per_conn: usize,
        request: usize,
        response: u64,
        sw: &mut Stopwatch,
    ) -> u64 {
        let now = self.now;
        let req = perf_request(request, response);
        for &ch in &self.client_conns {
            let conn = self.client.conns[ch.0].as_mut().expect("live connection");
            for _ in 0..per_conn {
                if let Some(id) = conn.streams().open(Dir::Bi) {
                    let mut s = conn.send_stream(id);
                    let n = s.write(&req).unwrap_or(0);
                    assert_eq!(n, req.len(), "request fits the stream window");
                    s.finish().expect("finish request");
                }
            }
        }
        self.client.timeouts(now);
        self.client.collect(now, &mut self.c2s, usize::MAX);
        let data = take(&mut self.c2s);
        let before = self.client.sink_fins;
        let t0 = Instant::now();
        server_span(|| {
            self.server.timeouts(now);
            self.server.handle(now, CLIENT_ADDR, data);
            self.server.collect(now, &mut self.s2c, usize::MAX)
        });
        sw.stop(t0);
        let data = take(&mut self.s2c);
        self.client.handle(now, SERVER_ADDR, data);
        self.now += self.step;
        self.client.sink_fins - before
    }
}

/// Keeps about 256 KiB queued on the stream (quinn-proto buffers up to its send window).
fn fill(conn: &mut Connection, id: StreamId) {
    let mut queued = 0;
    let mut s = conn.send_stream(id);
    while queued < 256 * 1024 {
        match s.write(&ZEROS[..16 * 1024]) {
            Ok(n) if n > 0 => queued += n,
            _ => break,
        }
    }
}
