//! Two Cloudflare quiche 0.24 endpoints joined in memory and driven like
//! [`crate::quinn_pair::QuinnPair`]: the same rounds and the same timed spans (the server's
//! calls only), with the server doing what a quiche server application does per datagram:
//! parse the header, find the connection by destination CID (accepting a new one on an
//! Initial), `recv`, serve the perf streams that became readable, then `send` until done.
//!
//! Differences from the other pairs, all quiche's design rather than choices made here:
//! quiche reads the real clock itself (no virtual time: rounds run in real time, as its
//! timers do), does TLS with BoringSSL (the same certificate, and BoringSSL picks the same
//! X25519 and TLS_AES_128_GCM_SHA256 on a CPU with AES-NI), and issues no extra connection
//! IDs unless the application asks (quench and quinn-proto issue theirs in the handshake).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use quiche::{Config, Connection, ConnectionId, Header, RecvInfo};

pub use crate::quinn_pair::AppMode;
use crate::tls::{TlsSetup, ALPN, SERVER_NAME};
use crate::{perf_request, server_span, Stopwatch, Wire, CLIENT_ADDR, SERVER_ADDR, ZEROS};

/// Length of the connection IDs both sides choose (quench's and quinn-proto's are 8–16).
const CID_LEN: usize = 16;
/// Stream and connection windows: ample for the bulk rounds, as for the other pairs.
const WINDOW: u64 = 16 * 1024 * 1024;

/// The benchmark certificate as PEM files, which is how quiche's BoringSSL loads them, in a
/// temp dir of their own (removed with it).
struct PemFiles {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl PemFiles {
    fn write(tls: &TlsSetup) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("quench-bench-quiche-")
            .tempdir()
            .expect("temp dir for the quiche certificate");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        quench::tls::certs::write_pem(&tls.cert, &cert, &key)
            .expect("write the quiche certificate");
        Self {
            _dir: dir,
            cert,
            key,
        }
    }
}

/// quiche's defaults (CUBIC, its pacing hints) with 1452-byte datagrams and the windows of
/// the other pairs; no early data, no MTU discovery.
fn config(server: Option<&PemFiles>) -> Config {
    let mut c = Config::new(quiche::PROTOCOL_VERSION).expect("quiche config");
    let mut alpn = vec![ALPN.len() as u8];
    alpn.extend_from_slice(ALPN);
    c.set_application_protos_wire_format(&alpn)
        .expect("ALPN wire format");
    c.set_max_idle_timeout(60_000);
    c.set_max_recv_udp_payload_size(1452);
    c.set_max_send_udp_payload_size(1452);
    c.set_initial_max_data(WINDOW);
    c.set_initial_max_stream_data_bidi_local(WINDOW);
    c.set_initial_max_stream_data_bidi_remote(WINDOW);
    c.set_initial_max_stream_data_uni(WINDOW);
    c.set_initial_max_streams_bidi(1000);
    c.set_initial_max_streams_uni(100);
    c.set_disable_active_migration(true);
    if let Some(pem) = server {
        c.load_cert_chain_from_pem_file(pem.cert.to_str().expect("UTF-8 path"))
            .expect("quiche loads the certificate");
        c.load_priv_key_from_pem_file(pem.key.to_str().expect("UTF-8 path"))
            .expect("quiche loads the key");
    } else {
        // The client's verification is not timed; the server's signature is made either way.
        c.verify_peer(false);
    }
    c
}

#[derive(Default)]
struct PerfStream {
    header: [u8; 8],
    header_len: usize,
    /// Response bytes not yet accepted by the stream.
    to_send: u64,
    responding: bool,
    response_done: bool,
    upload_done: bool,
}

impl PerfStream {
    fn is_done(&self) -> bool {
        self.upload_done && self.response_done
    }
}

pub struct Side {
    config: Config,
    is_server: bool,
    mode: AppMode,
    conns: Vec<Connection>,
    /// Connection by the CID packets to it carry (its source CID).
    by_cid: HashMap<ConnectionId<'static>, usize>,
    next_cid: u64,
    perf: HashMap<(usize, u64), PerfStream>,
    scratch: Vec<u8>,
    /// Connections that received something this round, to serve once all datagrams are in.
    touched: Vec<usize>,
    pub sink_bytes: u64,
    pub sink_fins: u64,
}

impl Side {
    fn new(config: Config, is_server: bool, mode: AppMode) -> Self {
        Self {
            config,
            is_server,
            mode,
            conns: Vec::new(),
            by_cid: HashMap::new(),
            next_cid: if is_server { 1 << 32 } else { 1 },
            perf: HashMap::new(),
            scratch: vec![0; 64 * 1024],
            touched: Vec::with_capacity(16),
            sink_bytes: 0,
            sink_fins: 0,
        }
    }

    fn fresh_cid(&mut self) -> ConnectionId<'static> {
        self.next_cid += 1;
        let mut id = [0x5a; CID_LEN];
        id[..8].copy_from_slice(&self.next_cid.to_be_bytes());
        ConnectionId::from_vec(id.to_vec())
    }

    fn add(&mut self, cid: ConnectionId<'static>, conn: Connection) -> usize {
        let i = self.conns.len();
        self.conns.push(conn);
        self.by_cid.insert(cid, i);
        i
    }

    /// Per datagram: header, connection lookup (a new one for an unknown DCID on an
    /// Initial), `recv`; then the application's pass over the connections that got data.
    fn handle(&mut self, from: SocketAddr, to: SocketAddr, wire: &mut Wire) {
        for slot in &mut wire.slots[..wire.len] {
            let buf = &mut slot.buf[..slot.len];
            let Ok(hdr) = Header::from_slice(buf, CID_LEN) else {
                continue;
            };
            let i = match self.by_cid.get(&hdr.dcid) {
                Some(&i) => i,
                None if self.is_server && hdr.ty == quiche::Type::Initial => {
                    let scid = self.fresh_cid();
                    let conn = quiche::accept(&scid, None, to, from, &mut self.config)
                        .expect("quiche accepts the connection");
                    let i = self.add(scid, conn);
                    // A repeated Initial still carries the client's first DCID.
                    self.by_cid.insert(hdr.dcid.into_owned(), i);
                    i
                }
                None => continue,
            };
            let _ = self.conns[i].recv(buf, RecvInfo { from, to });
            if !self.touched.contains(&i) {
                self.touched.push(i);
            }
        }
        wire.len = 0;
        let touched = std::mem::take(&mut self.touched);
        for &i in &touched {
            self.serve(i);
        }
        self.touched = touched;
        self.touched.clear();
    }

    fn serve(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        match self.mode {
            AppMode::Deferred => {}
            AppMode::Sink => read_all(
                conn,
                &mut self.scratch,
                &mut self.sink_bytes,
                &mut self.sink_fins,
            ),
            AppMode::Perf => {
                // As quench's PerfServer: served on the stack first, only a request still
                // under way is tracked.
                for id in conn.readable() {
                    let mut s = self.perf.remove(&(i, id)).unwrap_or_default();
                    serve_perf(conn, id, &mut s, &mut self.scratch);
                    if !s.is_done() {
                        self.perf.insert((i, id), s);
                    }
                }
                if self.perf.is_empty() {
                    return;
                }
                for id in conn.writable() {
                    if let Some(s) = self.perf.get_mut(&(i, id)) {
                        pump(conn, id, s);
                        if s.is_done() {
                            self.perf.remove(&(i, id));
                        }
                    }
                }
            }
        }
    }

    fn timeouts(&mut self) {
        for conn in &mut self.conns {
            if conn.timeout().is_some_and(|t| t.is_zero()) {
                conn.on_timeout();
            }
        }
    }

    /// Moves up to `max` datagrams, connection by connection, into `wire`.
    fn collect(&mut self, wire: &mut Wire, max: usize) -> usize {
        let start = wire.len;
        for conn in &mut self.conns {
            while wire.len - start < max {
                let slot = wire.next_slot();
                match conn.send(&mut slot.buf) {
                    Ok((len, info)) => {
                        slot.len = len;
                        slot.dst = info.to;
                        wire.len += 1;
                    }
                    Err(_) => break,
                }
            }
        }
        wire.len - start
    }

    /// Reads what Deferred mode left buffered.
    fn read_deferred(&mut self) {
        let (mut bytes, mut fins) = (0, 0);
        for conn in &mut self.conns {
            read_all(conn, &mut self.scratch, &mut bytes, &mut fins);
        }
    }
}

/// Reads the request; once its 8-byte length is known, sends the response and the FIN.
fn serve_perf(conn: &mut Connection, id: u64, s: &mut PerfStream, scratch: &mut [u8]) {
    while let Ok((n, fin)) = conn.stream_recv(id, scratch) {
        let take = (8 - s.header_len).min(n);
        s.header[s.header_len..s.header_len + take].copy_from_slice(&scratch[..take]);
        s.header_len += take;
        if fin {
            s.upload_done = true;
            break;
        }
    }
    if s.header_len == 8 && !s.responding {
        s.responding = true;
        s.to_send = u64::from_be_bytes(s.header);
    }
    pump(conn, id, s);
}

/// Writes what the response still owes, as far as the stream takes it, then the FIN.
fn pump(conn: &mut Connection, id: u64, s: &mut PerfStream) {
    if !s.responding || s.response_done {
        return;
    }
    while s.to_send > 0 {
        let chunk = s.to_send.min(ZEROS.len() as u64) as usize;
        let fin = chunk as u64 == s.to_send;
        match conn.stream_send(id, &ZEROS[..chunk], fin) {
            Ok(n) if n > 0 => {
                s.to_send -= n as u64;
                if fin && n == chunk {
                    s.response_done = true;
                }
            }
            _ => return,
        }
    }
    if !s.response_done && conn.stream_send(id, &[], true).is_ok() {
        s.response_done = true;
    }
}

fn read_all(conn: &mut Connection, scratch: &mut [u8], bytes: &mut u64, fins: &mut u64) {
    for id in conn.readable() {
        while let Ok((n, fin)) = conn.stream_recv(id, scratch) {
            *bytes += n as u64;
            if fin {
                *fins += 1;
                break;
            }
        }
    }
}

/// Keeps about 256 KiB queued on the stream (quiche buffers what its window allows).
fn fill(conn: &mut Connection, id: u64) {
    let mut queued = 0;
    while queued < 256 * 1024 {
        match conn.stream_send(id, &ZEROS[..16 * 1024], false) {
            Ok(n) if n > 0 => queued += n,
            _ => break,
        }
    }
}

pub struct QuichePair {
    pem: PemFiles,
    pub client: Side,
    pub server: Side,
    c2s: Wire,
    s2c: Wire,
    pub client_conns: Vec<usize>,
    /// Next client-initiated bidirectional stream per client connection.
    next_bidi: Vec<u64>,
    bulk: Option<(usize, u64)>,
}

impl QuichePair {
    pub fn new(tls: &TlsSetup, mode: AppMode) -> Self {
        let pem = PemFiles::write(tls);
        Self::with_pem(pem, mode)
    }

    fn with_pem(pem: PemFiles, mode: AppMode) -> Self {
        let server = Side::new(config(Some(&pem)), true, mode);
        Self {
            client: Side::new(config(None), false, AppMode::Sink),
            server,
            pem,
            c2s: Wire::new(256),
            s2c: Wire::new(256),
            client_conns: Vec::new(),
            next_bidi: Vec::new(),
            bulk: None,
        }
    }

    /// A fresh pair on the same certificate files (handshake benchmarks start over often).
    pub fn renew(self, mode: AppMode) -> Self {
        Self::with_pem(self.pem, mode)
    }

    pub fn connected(tls: &TlsSetup, mode: AppMode, conns: usize) -> Self {
        let mut pair = Self::new(tls, mode);
        for _ in 0..conns {
            pair.handshake(None);
        }
        pair
    }

    /// Like [`crate::quinn_pair::QuinnPair::handshake`]: the client connects, then both
    /// sides exchange datagrams until neither has any left.
    pub fn handshake(&mut self, sw: Option<&mut Stopwatch>) {
        let scid = self.client.fresh_cid();
        let conn = quiche::connect(
            Some(SERVER_NAME),
            &scid,
            CLIENT_ADDR,
            SERVER_ADDR,
            &mut self.client.config,
        )
        .expect("quiche client connection");
        let i = self.client.add(scid, conn);
        self.client_conns.push(i);
        self.next_bidi.push(0);
        self.settle(sw);
        assert!(
            self.client.conns[i].is_established(),
            "quiche handshake did not complete"
        );
    }

    fn settle(&mut self, mut sw: Option<&mut Stopwatch>) {
        for _ in 0..100 {
            if self.step_once(sw.as_deref_mut()) == 0 {
                return;
            }
        }
        panic!("quiche pair did not settle");
    }

    fn step_once(&mut self, mut sw: Option<&mut Stopwatch>) -> usize {
        self.client.timeouts();
        let t0 = Instant::now();
        server_span(|| self.server.timeouts());
        if let Some(sw) = sw.as_deref_mut() {
            sw.stop(t0);
        }
        let up = self.client.collect(&mut self.c2s, usize::MAX);
        let t0 = Instant::now();
        let down = server_span(|| {
            self.server.handle(CLIENT_ADDR, SERVER_ADDR, &mut self.c2s);
            self.server.collect(&mut self.s2c, usize::MAX)
        });
        if let Some(sw) = sw {
            sw.stop(t0);
        }
        self.client.handle(SERVER_ADDR, CLIENT_ADDR, &mut self.s2c);
        up + down
    }

    fn bulk_stream(&mut self, upload: bool) -> (usize, u64) {
        if let Some(b) = self.bulk {
            return b;
        }
        // The first unidirectional stream of the side that sends.
        let b = if upload {
            (self.client_conns[0], 2)
        } else {
            (0, 3)
        };
        self.bulk = Some(b);
        b
    }

    pub fn recv_round(&mut self, max: usize, sw: &mut Stopwatch) -> (usize, usize) {
        let (i, id) = self.bulk_stream(true);
        fill(&mut self.client.conns[i], id);
        self.client.timeouts();
        self.client.collect(&mut self.c2s, max);
        let (n, bytes) = (self.c2s.len, self.c2s.bytes());
        let t0 = Instant::now();
        server_span(|| self.server.handle(CLIENT_ADDR, SERVER_ADDR, &mut self.c2s));
        sw.stop(t0);
        self.server.read_deferred();
        self.server.timeouts();
        self.server.collect(&mut self.s2c, usize::MAX);
        self.client.handle(SERVER_ADDR, CLIENT_ADDR, &mut self.s2c);
        (n, bytes)
    }

    pub fn send_round(&mut self, max: usize, sw: &mut Stopwatch) -> (usize, usize) {
        let (i, id) = self.bulk_stream(false);
        fill(&mut self.server.conns[i], id);
        self.server.timeouts();
        let t0 = Instant::now();
        server_span(|| self.server.collect(&mut self.s2c, max));
        sw.stop(t0);
        let (n, bytes) = (self.s2c.len, self.s2c.bytes());
        self.client.handle(SERVER_ADDR, CLIENT_ADDR, &mut self.s2c);
        self.client.timeouts();
        self.client.collect(&mut self.c2s, usize::MAX);
        self.server.handle(CLIENT_ADDR, SERVER_ADDR, &mut self.c2s);
        (n, bytes)
    }

    /// Like [`crate::quinn_pair::QuinnPair::request_round`].
    pub fn request_round(
        &mut self,
        per_conn: usize,
        request: usize,
        response: u64,
        sw: &mut Stopwatch,
    ) -> u64 {
        let req = perf_request(request, response);
        for (k, &i) in self.client_conns.iter().enumerate() {
            let conn = &mut self.client.conns[i];
            for _ in 0..per_conn {
                let id = self.next_bidi[k];
                self.next_bidi[k] += 4;
                let n = conn.stream_send(id, &req, true).unwrap_or(0);
                assert_eq!(n, req.len(), "request fits the stream window");
            }
        }
        self.client.timeouts();
        self.client.collect(&mut self.c2s, usize::MAX);
        let before = self.client.sink_fins;
        let t0 = Instant::now();
        server_span(|| {
            self.server.timeouts();
            self.server.handle(CLIENT_ADDR, SERVER_ADDR, &mut self.c2s);
            self.server.collect(&mut self.s2c, usize::MAX)
        });
        sw.stop(t0);
        self.client.handle(SERVER_ADDR, CLIENT_ADDR, &mut self.s2c);
        self.client.sink_fins - before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The driver does what the benchmarks need: handshakes complete, a request round
    /// answers every request, and bulk rounds move full-size packets.
    #[test]
    fn rounds_move_what_they_should() {
        let tls = TlsSetup::new().unwrap();
        let mut sw = Stopwatch::default();
        let mut q = QuichePair::connected(&tls, AppMode::Perf, 2);
        let mut answered = 0;
        for _ in 0..20 {
            answered += q.request_round(4, 100, 100, &mut sw);
        }
        assert_eq!(answered, 2 * 4 * 20, "every request answered with its FIN");
        assert_eq!(q.client.sink_bytes, 2 * 4 * 20 * 100, "100 bytes each");

        let mut q = QuichePair::connected(&tls, AppMode::Deferred, 1);
        let (mut n, mut bytes) = (0, 0);
        for _ in 0..20 {
            let (a, b) = q.recv_round(16, &mut sw);
            n += a;
            bytes += b;
        }
        assert!(n > 100, "bulk rounds moved {n} datagrams");
        assert!(
            bytes / n >= 1400,
            "full-size datagrams: {} bytes on average",
            bytes / n
        );
    }
}
