//! Hostile input: what a server and a client do with datagrams and frames that break the
//! rules (RFC 9000 §5.2, §10.3, §12.4, §14.1, §19; RFC 9001 §5). Each case either closes
//! the connection with the error code the RFC names — checked from the peer's side, in
//! the CONNECTION_CLOSE it receives — or is dropped without a trace, after which the
//! connection must still carry data. Nothing here may panic.
//!
//! Two endpoints are joined by hand on a virtual clock (every datagram passes through the
//! test, so it can be captured, withheld, mutated or replayed); misbehaving frames come from
//! a real client through the connection's raw-frame hook (`Connection::queue_raw_frames`).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use sha2::{Digest, Sha256};

use quench::app::{AppDispatcher, AppSlot, BuiltinApps};
use quench::conn::{
    CloseReason, Connection, ConnectionIdGenerator, Event, StreamEvent, StreamId, TransportConfig,
    VersionOffer,
};
use quench::crypto::header_protection::{protect, unprotect};
use quench::crypto::retry::retry_integrity_tag;
use quench::crypto::secrets::initial_keys;
use quench::endpoint::{ConnHandle, Endpoint, EndpointConfig, EventHandler};
use quench::io::RxMeta;
use quench::tls::certs::generate_self_signed;
use quench::tls::session::{client_config, server_config, ServerVerification};
use quench::wire::cid::ConnectionId;
use quench::wire::frame::{Frame, FrameIter};
use quench::wire::header::{self, Header, LongType, VERSION_1, VERSION_2};
use quench::wire::varint::Writer;
use quench::{Epoch, Side};

const TAG_LEN: usize = 16;
/// Server CIDs are 12 bytes (the endpoint's default QUIC-LB layout).
const CID_LEN: usize = 12;

// ---- the client's view -------------------------------------------------------------------

#[derive(Default)]
struct ClientLog {
    connected: bool,
    closed: Option<CloseReason>,
    /// Everything read back on the stream the test opened, and whether its FIN came.
    echoed: Sha256,
    echoed_len: u64,
    echo_fin: bool,
    /// The error code of a RESET_STREAM the server sent, if any.
    reset: Option<u64>,
    /// Datagram events (RFC 9221) seen.
    datagrams: usize,
}

struct ClientEvents;

impl EventHandler<ClientLog> for ClientEvents {
    fn on_event(&mut self, now: Instant, conn: &mut Connection, log: &mut ClientLog, ev: Event) {
        match ev {
            Event::Connected => log.connected = true,
            Event::Closed(r) => log.closed = Some(r),
            Event::Stream(StreamEvent::Readable { id }) => {
                let mut buf = [0u8; 16384];
                while let Ok((n, fin)) = conn.read(id, &mut buf, now) {
                    log.echoed.update(&buf[..n]);
                    log.echoed_len += n as u64;
                    if fin {
                        log.echo_fin = true;
                        break;
                    }
                    if n == 0 {
                        break;
                    }
                }
            }
            Event::Stream(StreamEvent::Reset { error_code, .. }) => log.reset = Some(error_code),
            Event::Stream(_) => {}
            Event::Datagram => log.datagrams += 1,
            Event::PathValidationFailed | Event::EarlyData { .. } => {}
        }
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

// ---- the harness ---------------------------------------------------------------------------

/// A client and a server endpoint, every datagram passing through the test.
struct Net {
    now: Instant,
    client: Endpoint<ClientLog>,
    server: Endpoint<AppSlot>,
    apps: BuiltinApps,
    h: ConnHandle,
    caddr: SocketAddr,
    saddr: SocketAddr,
    /// Datagrams the server sends to these client addresses vanish (a NAT mapping gone).
    dead_client_addrs: Vec<SocketAddr>,
    /// Every datagram each side sent, as it went on the wire (protected).
    c2s: Vec<Vec<u8>>,
    s2c: Vec<Vec<u8>>,
}

fn server_endpoint_config(transport: TransportConfig) -> EndpointConfig {
    server_endpoint_config_for(transport, b"echo")
}

fn server_endpoint_config_for(transport: TransportConfig, alpn: &[u8]) -> EndpointConfig {
    let cert = generate_self_signed(&["localhost".into()]).unwrap();
    let stls = server_config(cert, &[alpn.to_vec()]).unwrap();
    EndpointConfig::new(transport, Some(stls))
}

impl Net {
    fn new(server_transport: TransportConfig) -> Self {
        Self::with_server(server_endpoint_config(server_transport))
    }

    fn with_server(config: EndpointConfig) -> Self {
        Self::with_server_alpn(config, b"echo")
    }

    fn with_server_alpn(config: EndpointConfig, alpn: &[u8]) -> Self {
        Self::with_configs(config, alpn, TransportConfig::default())
    }

    fn with_configs(
        config: EndpointConfig,
        alpn: &[u8],
        client_transport: TransportConfig,
    ) -> Self {
        let ctls = client_config(ServerVerification::Insecure, &[alpn.to_vec()]).unwrap();
        let caddr: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let saddr: SocketAddr = "10.0.0.2:4433".parse().unwrap();
        let server = Endpoint::new(config);
        let mut client: Endpoint<ClientLog> =
            Endpoint::new(EndpointConfig::new(client_transport, None));
        let now = Instant::now();
        let h = client
            .connect(now, ctls, "localhost", saddr, VERSION_1)
            .unwrap();
        Net {
            now,
            client,
            server,
            apps: BuiltinApps {
                alpns: vec![alpn.to_vec()],
                root: None,
            },
            h,
            caddr,
            saddr,
            dead_client_addrs: Vec::new(),
            c2s: Vec::new(),
            s2c: Vec::new(),
        }
    }

    /// Delivers a copy of `datagram` to the server as if from the client's address.
    fn deliver_to_server(&mut self, datagram: &[u8]) -> Option<ConnHandle> {
        let mut copy = datagram.to_vec();
        let meta = RxMeta {
            src: self.caddr,
            dst: self.saddr,
            ecn: 0,
        };
        let mut disp = AppDispatcher {
            factory: &self.apps,
        };
        self.server
            .handle_datagram(self.now, meta, &mut copy, &mut disp)
    }

    fn deliver_to_client(&mut self, datagram: &[u8]) {
        let mut copy = datagram.to_vec();
        let meta = RxMeta {
            src: self.saddr,
            dst: self.caddr,
            ecn: 0,
        };
        self.client
            .handle_datagram(self.now, meta, &mut copy, &mut ClientEvents);
    }

    fn client_out(&mut self) -> Vec<Vec<u8>> {
        drain(&mut self.client, self.now)
    }

    fn server_out(&mut self) -> Vec<Vec<u8>> {
        drain(&mut self.server, self.now)
    }

    /// One round: client → server, server → client, timers. Returns datagrams moved.
    fn step(&mut self) -> usize {
        let out = self.client_out();
        for d in &out {
            self.c2s.push(d.clone());
            self.deliver_to_server(d);
        }
        let back = drain_to(&mut self.server, self.now);
        for (dst, d) in &back {
            self.s2c.push(d.clone());
            if !self.dead_client_addrs.contains(dst) {
                self.deliver_to_client(d);
            }
        }
        let mut disp = AppDispatcher {
            factory: &self.apps,
        };
        self.client.handle_timeouts(self.now, &mut ClientEvents);
        self.server.handle_timeouts(self.now, &mut disp);
        out.len() + back.len()
    }

    /// Runs until `done` or `limit` of virtual time; returns whether `done` held.
    fn run(&mut self, limit: Duration, mut done: impl FnMut(&mut Self) -> bool) -> bool {
        let end = self.now + limit;
        for _ in 0..1_000_000 {
            if done(self) {
                return true;
            }
            if self.now >= end {
                return false;
            }
            if self.step() > 0 {
                self.now += Duration::from_micros(50);
                continue;
            }
            let next = [self.client.next_timeout(), self.server.next_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t > self.now => self.now = t.min(end),
                Some(_) => self.now += Duration::from_micros(10),
                None => return done(self),
            }
        }
        panic!("simulation did not converge");
    }

    fn log<R>(&mut self, f: impl FnOnce(&ClientLog) -> R) -> Option<R> {
        self.client.with_state(self.h, |_, log| f(log))
    }

    fn client_conn(&self) -> &Connection {
        self.client.conn(self.h).expect("client connection alive")
    }

    /// The server's connection to our client: the confirmed one if a replayed first
    /// Initial started a second (which never completes), else the only one.
    fn server_conn(&self) -> &Connection {
        let mut conns = self.server.handles().filter_map(|h| self.server.conn(h));
        let all: Vec<&Connection> = conns.by_ref().collect();
        assert!(!all.is_empty(), "no server connection");
        all.iter()
            .find(|c| c.is_handshake_confirmed())
            .copied()
            .unwrap_or(all[0])
    }

    /// Handshake done and confirmed on both sides.
    fn establish(&mut self) {
        let ok = self.run(Duration::from_secs(10), |n| {
            n.client
                .conn(n.h)
                .is_some_and(|c| c.is_handshake_confirmed())
                && n.server.connection_count() == 1
                && n.server_conn().is_handshake_confirmed()
        });
        assert!(ok, "handshake did not complete");
        assert_eq!(self.log(|l| l.connected), Some(true));
    }

    /// Runs `f` on the client's connection.
    fn client_do<R>(&mut self, f: impl FnOnce(&mut Connection) -> R) -> R {
        self.client
            .with_state(self.h, |c, _| f(c))
            .expect("client connection alive")
    }

    /// Opens a bidirectional stream on the client and writes `data` (no FIN).
    fn open_with(&mut self, data: &[u8]) -> StreamId {
        self.client_do(|c| {
            let id = c.open_stream(true).expect("stream credit");
            assert_eq!(c.write(id, data), Ok(data.len()));
            id
        })
    }

    fn queue_raw(&mut self, epoch: Epoch, frames: &[u8]) {
        self.client
            .with_state(self.h, |c, _| c.queue_raw_frames(epoch, frames))
            .expect("client connection alive");
    }

    /// Runs until the client learns its connection closed; returns why.
    fn wait_closed(&mut self) -> CloseReason {
        let ok = self.run(Duration::from_secs(10), |n| {
            n.log(|l| l.closed.is_some()).unwrap_or(true)
        });
        assert!(ok, "connection did not close");
        self.log(|l| l.closed.clone())
            .flatten()
            .expect("closed event kept")
    }

    /// Sends `size` bytes on a new bidi stream and checks the echo server returns them all.
    fn echo_round_trip(&mut self, size: usize, seed: u8) {
        let data = pattern(size, seed);
        let h = self.h;
        let id: StreamId = self
            .client
            .with_state(h, |c, log| {
                log.echoed = Sha256::new();
                log.echoed_len = 0;
                log.echo_fin = false;
                let id = c.open_stream(true).expect("stream credit");
                let mut off = 0;
                while off < data.len() {
                    let n = c.write(id, &data[off..]).expect("write");
                    assert!(n > 0, "send buffer holds the whole test payload");
                    off += n;
                }
                c.finish(id).unwrap();
                id
            })
            .expect("client connection alive");
        let ok = self.run(Duration::from_secs(30), |n| {
            n.log(|l| l.echo_fin || l.closed.is_some()).unwrap_or(true)
        });
        let (len, fin, hash, closed) = self
            .log(|l| {
                (
                    l.echoed_len,
                    l.echo_fin,
                    l.echoed.clone().finalize(),
                    l.closed.clone(),
                )
            })
            .expect("client connection alive");
        assert!(
            ok && fin,
            "echo on {id} did not finish: {len} bytes, {closed:?}"
        );
        assert_eq!(closed, None);
        assert_eq!(len, size as u64);
        assert_eq!(hash, Sha256::digest(&data), "echoed bytes differ");
    }

    fn assert_healthy(&mut self) {
        assert!(!self.client_conn().is_closing(), "client closing");
        assert!(!self.server_conn().is_closing(), "server closing");
        assert_eq!(self.log(|l| l.closed.clone()), Some(None));
    }
}

/// Everything `ep` wants to send now, with destinations.
fn drain_to<U: Default>(ep: &mut Endpoint<U>, now: Instant) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 2048];
    while let Some(t) = ep.poll_transmit(now, &mut buf, 1) {
        out.push((t.dst, buf[..t.len].to_vec()));
    }
    out
}

fn drain<U: Default>(ep: &mut Endpoint<U>, now: Instant) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 2048];
    while let Some(t) = ep.poll_transmit(now, &mut buf, 1) {
        out.push(buf[..t.len].to_vec());
    }
    out
}

fn encode(frames: &[Frame<'_>]) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    let mut w = Writer::new(&mut buf);
    for f in frames {
        f.encode(&mut w).expect("frame fits");
    }
    let n = w.len();
    buf.truncate(n);
    buf
}

fn stream(id: u64, offset: u64, data: &[u8], fin: bool) -> Frame<'_> {
    Frame::Stream {
        id,
        offset,
        data,
        fin,
    }
}

/// Splits a datagram into its coalesced packets (as far as the headers parse).
fn split_packets(datagram: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let Ok((_, len)) = header::parse(rest, CID_LEN) else {
            break;
        };
        out.push(&rest[..len]);
        rest = &rest[len..];
    }
    out
}

/// What kind of packet `p` starts with.
fn kind(p: &[u8]) -> Option<&'static str> {
    match header::parse(p, CID_LEN).ok()?.0 {
        Header::Long {
            ty: LongType::Initial,
            ..
        } => Some("initial"),
        Header::Long {
            ty: LongType::Handshake,
            ..
        } => Some("handshake"),
        Header::Long { .. } => Some("0-rtt"),
        Header::Short { .. } => Some("1-rtt"),
        Header::Retry { .. } => Some("retry"),
        Header::VersionNegotiation { .. } => Some("vn"),
        Header::UnsupportedVersion { .. } => Some("unsupported"),
    }
}

/// The types of the long-header packets coalesced in `datagram`, in order.
fn coalesced_kinds(datagram: &[u8]) -> Vec<&'static str> {
    let mut kinds = Vec::new();
    let mut rest = datagram;
    while let Ok((
        Header::Long {
            pn_offset, length, ..
        },
        _,
    )) = header::parse(rest, CID_LEN)
    {
        kinds.extend(kind(rest));
        let Some(next) = rest.get(pn_offset + length..) else {
            break;
        };
        rest = next;
    }
    kinds
}

/// RFC 9002 §6.2.4: when the PTO fires in one handshake space, the other one with
/// ack-eliciting data in flight probes too. A server whose first flight (Initial and
/// Handshake) was lost resends both on its first PTO.
#[test]
fn one_pto_resends_both_lost_handshake_flights() {
    let mut net = Net::new(TransportConfig::default());
    for d in net.client_out() {
        net.deliver_to_server(&d);
    }
    let lost: Vec<&str> = net
        .server_out()
        .iter()
        .flat_map(|d| coalesced_kinds(d))
        .collect();
    assert!(
        lost.contains(&"initial") && lost.contains(&"handshake"),
        "first flight: {lost:?}"
    );
    let pto = net.server.next_timeout().expect("the server armed its PTO");
    net.now = pto;
    let mut disp = AppDispatcher { factory: &net.apps };
    net.server.handle_timeouts(net.now, &mut disp);
    let probes: Vec<&str> = net
        .server_out()
        .iter()
        .flat_map(|d| coalesced_kinds(d))
        .collect();
    assert!(
        probes.contains(&"initial") && probes.contains(&"handshake"),
        "one PTO's probes: {probes:?}"
    );
    // And the handshake completes from them.
    net.run(Duration::from_secs(5), |n| n.client_conn().is_established());
    net.echo_round_trip(1000, 1);
    net.assert_healthy();
}

// ---- hand-made Initials ------------------------------------------------------------------

/// A client Initial (RFC 9000 §17.2.2) carrying `frames`, padded so the datagram is
/// `datagram_len` bytes (or as long as the frames need), protected with the Initial keys
/// derived from `dcid` exactly as a client would.
fn craft_initial(
    dcid: &ConnectionId,
    scid: &ConnectionId,
    pn: u64,
    frames: &[u8],
    datagram_len: usize,
) -> Vec<u8> {
    craft_initial_with_token(dcid, scid, pn, frames, datagram_len, &[])
}

/// `craft_initial` with a token in the header.
fn craft_initial_with_token(
    dcid: &ConnectionId,
    scid: &ConnectionId,
    pn: u64,
    frames: &[u8],
    datagram_len: usize,
    token: &[u8],
) -> Vec<u8> {
    let keys = initial_keys(VERSION_1, dcid, Side::Client);
    let mut buf = vec![0u8; datagram_len.max(frames.len() + token.len() + 128)];
    let mut w = Writer::new(&mut buf);
    let layout = header::write_long(
        &mut w,
        LongType::Initial,
        VERSION_1,
        dcid,
        scid,
        token,
        pn,
        2,
    )
    .unwrap();
    let header_len = w.len();
    w.put_bytes(frames).unwrap();
    let payload_end = w
        .len()
        .max(datagram_len.saturating_sub(TAG_LEN))
        .max(header_len + 4);
    let packet_len = payload_end + TAG_LEN;
    buf.truncate(packet_len);
    header::finish_long(&mut buf, &layout, packet_len).unwrap();
    keys.local
        .packet
        .seal_in_place(pn, &mut buf, header_len)
        .unwrap();
    protect(&keys.local.header, &mut buf, layout.pn_offset, 2).unwrap();
    buf
}

/// Opens the server's Initial packets in `datagram` with the keys of client DCID `dcid` and
/// returns the CONNECTION_CLOSE error codes they carry.
fn server_initial_close_codes(dcid: &ConnectionId, datagram: &[u8]) -> Vec<u64> {
    let keys = initial_keys(VERSION_1, dcid, Side::Client);
    let mut codes = Vec::new();
    for p in split_packets(datagram) {
        let Ok((
            Header::Long {
                ty: LongType::Initial,
                pn_offset,
                ..
            },
            _,
        )) = header::parse(p, CID_LEN)
        else {
            continue;
        };
        let mut p = p.to_vec();
        let (pn_len, pn) = unprotect(&keys.remote.header, &mut p, pn_offset).unwrap();
        let hl = pn_offset + pn_len;
        let n = keys
            .remote
            .packet
            .open_in_place(pn, &mut p, hl)
            .expect("server Initial opens with the client's keys");
        for f in FrameIter::new(&p[hl..hl + n]) {
            if let Ok(Frame::ConnectionClose { error_code, .. }) = f {
                codes.push(error_code);
            }
        }
    }
    codes
}

/// The server's Initial `packet` (opened with the keys of client DCID `odcid`) sealed
/// again with packet number `pn` (`None`: its own), SCID `scid` and `token`: what a server
/// that changed its mind, or broke the rules, would send.
fn reseal_server_initial(
    odcid: &ConnectionId,
    packet: &[u8],
    scid: &ConnectionId,
    token: &[u8],
    pn: Option<u64>,
) -> Vec<u8> {
    let keys = initial_keys(VERSION_1, odcid, Side::Client);
    let Ok((
        Header::Long {
            dcid, pn_offset, ..
        },
        len,
    )) = header::parse(packet, CID_LEN)
    else {
        panic!("not a long header");
    };
    let mut p = packet[..len].to_vec();
    let (pn_len, old_pn) = unprotect(&keys.remote.header, &mut p, pn_offset).unwrap();
    let hl = pn_offset + pn_len;
    let n = keys
        .remote
        .packet
        .open_in_place(old_pn, &mut p, hl)
        .unwrap();
    let frames = p[hl..hl + n].to_vec();
    let pn = pn.unwrap_or(old_pn);
    let mut buf = vec![0u8; frames.len() + 256];
    let mut w = Writer::new(&mut buf);
    let layout = header::write_long(
        &mut w,
        LongType::Initial,
        VERSION_1,
        &dcid,
        scid,
        token,
        pn,
        2,
    )
    .unwrap();
    let header_len = w.len();
    w.put_bytes(&frames).unwrap();
    let packet_len = w.len() + TAG_LEN;
    buf.truncate(packet_len);
    header::finish_long(&mut buf, &layout, packet_len).unwrap();
    keys.remote
        .packet
        .seal_in_place(pn, &mut buf, header_len)
        .unwrap();
    protect(&keys.remote.header, &mut buf, layout.pn_offset, 2).unwrap();
    buf
}

fn cid(bytes: &[u8]) -> ConnectionId {
    ConnectionId::new(bytes).unwrap()
}

fn rx(src: &str) -> RxMeta {
    RxMeta {
        src: src.parse().unwrap(),
        dst: "10.0.0.2:4433".parse().unwrap(),
        ecn: 0,
    }
}

fn feed<U: Default>(ep: &mut Endpoint<U>, h: &mut impl EventHandler<U>, d: &[u8], now: Instant) {
    let mut copy = d.to_vec();
    ep.handle_datagram(now, rx("10.0.0.9:7000"), &mut copy, h);
}

struct NoEvents;
impl EventHandler<AppSlot> for NoEvents {
    fn on_event(&mut self, _: Instant, _: &mut Connection, _: &mut AppSlot, _: Event) {}
}

// ---- frames that break the rules, from a real client -------------------------------------

/// Small windows and limits so every boundary is a few bytes away.
fn tight_server() -> TransportConfig {
    let mut t = TransportConfig::default();
    t.streams.stream_recv_window = 16384;
    t.streams.conn_recv_window = 32768;
    t.streams.max_concurrent_bidi = 4;
    t.streams.max_concurrent_uni = 4;
    t
}

/// Establishes, has the client send `frames` in a 1-RTT packet, and returns how the
/// client saw the connection end.
fn close_reason_for(frames: &[u8]) -> CloseReason {
    let mut net = Net::new(tight_server());
    net.establish();
    net.queue_raw(Epoch::Data, frames);
    let reason = net.wait_closed();
    assert_eq!(
        net.client
            .conn(net.h)
            .map(|c| c.raw_frames_pending(Epoch::Data)),
        Some(0)
    );
    reason
}

fn varint(v: u64) -> Vec<u8> {
    let mut b = [0u8; 8];
    let mut w = Writer::new(&mut b);
    w.put_varint(v).unwrap();
    let n = w.len();
    b[..n].to_vec()
}

#[test]
fn rule_breaking_frames_close_with_the_rfc_error_code() {
    const FLOW_CONTROL: u64 = 0x3;
    const STREAM_LIMIT: u64 = 0x4;
    const STREAM_STATE: u64 = 0x5;
    const FINAL_SIZE: u64 = 0x6;
    const FRAME_ENCODING: u64 = 0x7;
    const CID_LIMIT: u64 = 0x9;
    const PROTOCOL_VIOLATION: u64 = 0xa;
    let x = b"x";
    let abc = b"abc";
    let abcdef = b"abcdef";
    let new_cids: Vec<Frame<'_>> = (100..105u64)
        .map(|seq| Frame::NewConnectionId {
            seq,
            retire_prior_to: 0,
            cid: cid(&[seq as u8; 8]),
            reset_token: [seq as u8; 16],
        })
        .collect();
    let mut ack_unsent = vec![0x02];
    ack_unsent.extend(varint(1_000_000));
    ack_unsent.extend([0, 0, 0]);
    let cases: Vec<(&str, Vec<u8>, u64)> = vec![
        (
            "STREAM past the stream window",
            encode(&[stream(0, 16384, x, false)]),
            FLOW_CONTROL,
        ),
        (
            "STREAMs past the connection window",
            encode(&[
                stream(0, 16383, x, false),
                stream(4, 16383, x, false),
                stream(8, 0, x, false),
            ]),
            FLOW_CONTROL,
        ),
        (
            "bidi stream beyond MAX_STREAMS",
            encode(&[stream(16, 0, x, false)]),
            STREAM_LIMIT,
        ),
        (
            "uni stream beyond MAX_STREAMS",
            encode(&[stream(18, 0, x, false)]),
            STREAM_LIMIT,
        ),
        (
            "STREAM on the server's send-only uni stream",
            encode(&[stream(3, 0, x, false)]),
            STREAM_STATE,
        ),
        (
            "STOP_SENDING on a stream the server only receives",
            encode(&[Frame::StopSending {
                id: 2,
                error_code: 0,
            }]),
            STREAM_STATE,
        ),
        (
            "MAX_STREAM_DATA on a stream the server only receives",
            encode(&[Frame::MaxStreamData {
                id: 2,
                max: 1 << 20,
            }]),
            STREAM_STATE,
        ),
        (
            "final size changed",
            encode(&[stream(0, 0, abc, true), stream(0, 0, abcdef, true)]),
            FINAL_SIZE,
        ),
        (
            "data beyond the final size",
            encode(&[stream(0, 0, abc, true), stream(0, 3, x, false)]),
            FINAL_SIZE,
        ),
        (
            "RESET_STREAM below data received",
            encode(&[
                stream(0, 0, abcdef, false),
                Frame::ResetStream {
                    id: 0,
                    error_code: 7,
                    final_size: 3,
                },
            ]),
            FINAL_SIZE,
        ),
        (
            "HANDSHAKE_DONE from a client",
            encode(&[Frame::HandshakeDone]),
            PROTOCOL_VIOLATION,
        ),
        (
            "NEW_TOKEN from a client",
            encode(&[Frame::NewToken { token: abc }]),
            PROTOCOL_VIOLATION,
        ),
        ("truncated ACK", vec![0x02, 0x05], FRAME_ENCODING),
        ("unknown frame type", vec![0x21, 0, 0, 0], FRAME_ENCODING),
        (
            "unknown two-byte frame type",
            vec![0x52, 0x34, 1, 2],
            FRAME_ENCODING,
        ),
        (
            "STREAM length past the packet",
            vec![0x0a, 0x00, 0x40, 0xff, 1, 2, 3],
            FRAME_ENCODING,
        ),
        (
            "MAX_STREAMS above 2^60",
            [vec![0x12], varint((1 << 60) + 1)].concat(),
            FRAME_ENCODING,
        ),
        (
            "frame type not minimally encoded",
            vec![0x40, 0x01],
            PROTOCOL_VIOLATION,
        ),
        ("ACK of a packet never sent", ack_unsent, PROTOCOL_VIOLATION),
        (
            "RETIRE_CONNECTION_ID of a CID never issued",
            encode(&[Frame::RetireConnectionId { seq: 1000 }]),
            PROTOCOL_VIOLATION,
        ),
        (
            "more NEW_CONNECTION_IDs than active_connection_id_limit",
            encode(&new_cids),
            CID_LIMIT,
        ),
        (
            "DATAGRAM not negotiated",
            encode(&[Frame::Datagram { data: abc }]),
            PROTOCOL_VIOLATION,
        ),
    ];
    let mut failures = Vec::new();
    for (name, frames, code) in &cases {
        match close_reason_for(frames) {
            CloseReason::Peer {
                code: got,
                app: false,
                ..
            } if got == *code => {}
            other => failures.push(format!("{name}: wanted code {code:#x}, got {other:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn frames_at_every_limit_are_accepted() {
    // The same boundaries as above, one byte / one stream short: no error, and the
    // connection still echoes afterwards.
    let mut net = Net::new(tight_server());
    net.establish();
    let frames = encode(&[
        Frame::Ping,
        stream(0, 16383, b"x", false),
        stream(4, 16383, b"x", false),
        stream(12, 0, b"", false),
        stream(14, 0, b"", false),
    ]);
    net.queue_raw(Epoch::Data, &frames);
    net.run(Duration::from_millis(500), |_| false);
    assert_eq!(net.client_conn().raw_frames_pending(Epoch::Data), 0);
    net.assert_healthy();
    let s = net.server_conn().stream_stats();
    assert_eq!(s.data_received, 32768, "both streams at the window edge");
    assert!(s.open_streams >= 2, "{s:?}");
}

/// A QUIC client sends no TLS message after the handshake (RFC 9001 §6: no KeyUpdate).
/// The server has let go of its TLS session by then (`TlsSession::finish_server`), and
/// one arriving in a 1-RTT CRYPTO frame closes the connection with CRYPTO_ERROR for
/// unexpected_message (0x0100 + 10), as rustls itself answers a KeyUpdate in QUIC.
#[test]
fn a_tls_message_after_the_handshake_is_an_unexpected_message() {
    // KeyUpdate (type 24, length 1, update_not_requested).
    let key_update = [24, 0, 0, 1, 0];
    match close_reason_for(&encode(&[Frame::Crypto {
        offset: 0,
        data: &key_update,
    }])) {
        CloseReason::Peer {
            code, app: false, ..
        } => assert_eq!(code, 0x10a),
        other => panic!("closed by {other:?}"),
    }
}

#[test]
fn stream_frame_in_a_handshake_packet_is_a_protocol_violation() {
    let mut net = Net::new(TransportConfig::default());
    // Goes out in the client's first Handshake packet (ahead of its Finished).
    net.queue_raw(Epoch::Handshake, &encode(&[stream(0, 0, b"early", true)]));
    let reason = net.wait_closed();
    assert!(
        matches!(
            reason,
            CloseReason::Peer {
                code: 0xa,
                app: false,
                ..
            }
        ),
        "{reason:?}"
    );
    // The client finished its side of the handshake, the server never did.
    assert!(!net.client_conn().is_handshake_confirmed());
    assert_eq!(net.server.stats().connections_accepted, 1);
}

/// A client that keeps sending ack-eliciting packets but never acknowledges anything would
/// make the server keep a record of every ACK it sends; past a fixed bound the server
/// closes with PROTOCOL_VIOLATION instead.
#[test]
fn a_peer_that_never_acknowledges_cannot_grow_the_sent_record_without_bound() {
    let mut net = Net::new(TransportConfig::default());
    net.establish();
    net.client
        .with_state(net.h, |c, _| c.stop_acknowledging())
        .expect("client alive");
    let mut peak = 0;
    let mut closed = None;
    for _ in 0..200_000 {
        net.queue_raw(Epoch::Data, &[0x01]); // PING
        net.step();
        net.now += Duration::from_micros(50);
        if net.server.connection_count() == 1 {
            peak = peak.max(net.server_conn().tracked_packets());
        }
        closed = net.log(|l| l.closed.clone()).flatten();
        if closed.is_some() {
            break;
        }
    }
    let closed = closed.expect("the server closed the connection");
    assert!(
        matches!(
            closed,
            CloseReason::Peer {
                code: 0xa,
                app: false,
                ..
            }
        ),
        "{closed:?}"
    );
    assert!(peak > 1 << 14, "the record did grow first: {peak}");
    assert!(peak <= (1 << 15) + 4, "bounded: {peak}");
}

/// RFC 9001 §6.2: a peer that updates its keys again before we acknowledged its last
/// update (each update costs us a key derivation) is closed with KEY_UPDATE_ERROR; the
/// same two updates with our ACK between them are fine.
#[test]
fn consecutive_key_updates_without_acknowledgment_close_the_connection() {
    let mut net = Net::new(TransportConfig::default());
    net.establish();
    net.echo_round_trip(1000, 1);
    // Update, let the server acknowledge it, update again: allowed.
    assert!(net.client_do(|c| c.force_key_update_unconfirmed()));
    net.echo_round_trip(1000, 2);
    assert!(net.client_do(|c| c.force_key_update_unconfirmed()));
    net.echo_round_trip(1000, 3);
    assert_eq!(net.server_conn().stats().key_updates, 2);
    net.assert_healthy();
    // Two updates in a row, the second before the server has sent anything.
    assert!(net.client_do(|c| c.force_key_update_unconfirmed()));
    let first = net.client_out();
    assert!(net.client_do(|c| c.force_key_update_unconfirmed()));
    let second = net.client_out();
    assert!(!first.is_empty() && !second.is_empty());
    for d in first.iter().chain(&second) {
        net.deliver_to_server(d);
    }
    assert!(net.server_conn().is_closing());
    net.run(Duration::from_secs(1), |n| {
        n.log(|l| l.closed.is_some()) == Some(true)
    });
    let closed = net.log(|l| l.closed.clone()).flatten();
    assert!(
        matches!(
            closed,
            Some(CloseReason::Peer {
                code: 0x0e,
                app: false,
                ..
            })
        ),
        "{closed:?}"
    );
}

/// One-byte STREAM frames at descending offsets make every frame a new range at the
/// front of the receive bookkeeping (a shift of all the others): the server refuses the
/// flood with PROTOCOL_VIOLATION after a handful of ranges instead of doing quadratic
/// work for thousands of them.
#[test]
fn a_flood_of_one_byte_fragments_closes_the_connection() {
    let mut net = Net::new(TransportConfig::default());
    net.establish();
    let x = [0x78u8];
    for batch in 0..40u64 {
        let frames: Vec<Frame<'_>> = (0..100u64)
            .map(|k| stream(0, 2 * (4_000 - batch * 100 - k), &x, false))
            .collect();
        net.queue_raw(Epoch::Data, &encode(&frames));
        net.step();
        net.now += Duration::from_millis(1);
        if net.log(|l| l.closed.is_some()).unwrap_or(true) {
            break;
        }
    }
    let reason = net.wait_closed();
    assert!(
        matches!(
            reason,
            CloseReason::Peer {
                code: 0xa,
                app: false,
                ..
            }
        ),
        "{reason:?}"
    );
}

/// An on-path attacker forwards a copy of the client's packet from another address ahead
/// of the original (RFC 9000 §9.3.2): the server follows it and challenges the new
/// address, which cannot answer. When validation is abandoned the server returns to the
/// client's validated address, without the client having to send anything.
#[test]
fn a_spurious_migration_reverts_to_the_validated_address() {
    let mut net = Net::new(TransportConfig::default());
    net.establish();
    let spoofed: SocketAddr = "192.0.2.66:7777".parse().unwrap();
    net.queue_raw(Epoch::Data, &[0x01]); // PING: a non-probing packet
    let out = net.client_out();
    assert!(!out.is_empty());
    // The copy from the attacker's address first, then the original (now a duplicate).
    for d in &out {
        let mut copy = d.clone();
        let mut disp = AppDispatcher { factory: &net.apps };
        net.server
            .handle_datagram(net.now, rx("192.0.2.66:7777"), &mut copy, &mut disp);
        net.deliver_to_server(d);
    }
    assert_eq!(
        net.server_conn().remote_addr(),
        spoofed,
        "followed the copy"
    );
    // The attacker's address never answers the challenge; the client stays quiet.
    let mut to_spoofed = 0;
    let deadline = net.now + Duration::from_secs(10);
    while net.server_conn().remote_addr() == spoofed && net.now < deadline {
        to_spoofed += drain_to(&mut net.server, net.now)
            .iter()
            .filter(|(dst, _)| *dst == spoofed)
            .count();
        let mut disp = AppDispatcher { factory: &net.apps };
        net.server.handle_timeouts(net.now, &mut disp);
        net.now += Duration::from_millis(10);
    }
    assert!(to_spoofed > 0, "the new address was challenged");
    assert_eq!(
        net.server_conn().remote_addr(),
        net.caddr,
        "back on the validated address after validation was abandoned"
    );
    // And the connection still works there. Its ECN is tested afresh (RFC 9000 §13.4.2),
    // not left where the spoofed path's test ended (there, nothing more is marked): marked
    // packets go out again, until the first ACK (this client sends no counts).
    let marked = net.server_conn().stats().ecn_marked_sent;
    net.echo_round_trip(50_000, 3);
    net.assert_healthy();
    let stats = net.server_conn().stats();
    assert!(stats.ecn_marked_sent > marked, "{stats:?}");
}

/// The same forged migration, undone at once (RFC 9000 §9.3.3): the server challenges the
/// path the client apparently left, the genuine client answers there with a non-probing
/// packet, and the server moves back without waiting for its validation to time out.
#[test]
fn a_forged_migration_is_undone_by_the_challenge_on_the_old_path() {
    let mut net = Net::new(TransportConfig::default());
    net.establish();
    let spoofed: SocketAddr = "192.0.2.66:7777".parse().unwrap();
    net.queue_raw(Epoch::Data, &[0x01]); // PING
    for d in &net.client_out() {
        let mut copy = d.clone();
        let mut disp = AppDispatcher { factory: &net.apps };
        net.server
            .handle_datagram(net.now, rx("192.0.2.66:7777"), &mut copy, &mut disp);
        net.deliver_to_server(d);
    }
    assert_eq!(net.server_conn().remote_addr(), spoofed);
    let out = drain_to(&mut net.server, net.now);
    let to_old: Vec<&Vec<u8>> = out
        .iter()
        .filter(|(dst, _)| *dst == net.caddr)
        .map(|(_, d)| d)
        .collect();
    assert_eq!(to_old.len(), 1, "one challenge on the old path");
    assert_eq!(to_old[0].len(), 1200, "padded: the old path was validated");
    for d in to_old {
        net.deliver_to_client(d);
    }
    // The client answers from where it always was.
    for d in net.client_out() {
        net.deliver_to_server(&d);
    }
    assert_eq!(
        net.server_conn().remote_addr(),
        net.caddr,
        "back at once, no timeout needed"
    );
    net.echo_round_trip(20_000, 5);
    net.assert_healthy();
}

/// Has the client send `frames` alone in one datagram, delivered to the server as if from
/// `from` (a path the client probes); returns that datagram's size and what the server
/// sent in answer.
fn probe_from(net: &mut Net, from: &str, frames: &[u8]) -> (usize, Vec<(SocketAddr, Vec<u8>)>) {
    net.queue_raw(Epoch::Data, frames);
    let out = net.client_out();
    let sizes: Vec<usize> = out.iter().map(Vec::len).collect();
    assert_eq!(sizes.len(), 1, "the probe alone: {sizes:?}");
    let mut copy = out[0].clone();
    let mut disp = AppDispatcher { factory: &net.apps };
    net.server
        .handle_datagram(net.now, rx(from), &mut copy, &mut disp);
    (sizes[0], drain_to(&mut net.server, net.now))
}

/// Sizes of the datagrams in `sent` that go to `to`.
fn sizes_to(sent: &[(SocketAddr, Vec<u8>)], to: SocketAddr) -> Vec<usize> {
    sent.iter()
        .filter(|(dst, _)| *dst == to)
        .map(|(_, d)| d.len())
        .collect()
}

/// A client probing a new path sends PATH_CHALLENGE alone from its new address: the
/// PATH_RESPONSE goes back on that path (RFC 9000 §8.2.2), padded within three times what
/// arrived there, and the connection stays where it was (probing packets never migrate it).
#[test]
fn path_response_goes_back_on_the_path_the_challenge_came_by() {
    let mut net = Net::new(TransportConfig::default());
    net.establish();
    let probe_addr: SocketAddr = "10.0.0.1:6001".parse().unwrap();
    // Let path MTU discovery's probes settle first, so the next datagram is ours alone.
    net.run(Duration::from_millis(200), |_| false);
    // A PATH_CHALLENGE alone in its packet (an ACK would make it non-probing, and so a
    // migration).
    let challenge = [0x1a, 1, 2, 3, 4, 5, 6, 7, 8];
    net.client
        .with_state(net.h, |c, _| c.stop_acknowledging())
        .expect("client alive");
    let (received, sent) = probe_from(&mut net, "10.0.0.1:6001", &challenge);
    let to_probe = sizes_to(&sent, probe_addr);
    assert_eq!(
        to_probe.len(),
        1,
        "one datagram back on the probed path: {sent:?}"
    );
    assert_eq!(
        to_probe[0],
        1200.min(3 * received),
        "padded within the budget"
    );
    assert_eq!(net.server_conn().remote_addr(), net.caddr, "no migration");
    for (dst, d) in &sent {
        if *dst == net.caddr {
            net.deliver_to_client(d);
        }
    }
    net.client
        .with_state(net.h, |c, _| c.resume_acknowledging())
        .expect("client alive");
    net.echo_round_trip(10_000, 4);
    net.assert_healthy();
}

/// RFC 9000 §8 and §8.2.2: every PATH_CHALLENGE is answered, but a datagram full of them
/// from an unvalidated address earns one datagram back there, within three times its size,
/// not a padded answer per challenge.
#[test]
fn challenges_sharing_a_datagram_share_its_amplification_budget() {
    let mut net = Net::new(TransportConfig::default());
    net.establish();
    let probe_addr: SocketAddr = "10.0.0.1:6003".parse().unwrap();
    net.run(Duration::from_millis(200), |_| false);
    net.client
        .with_state(net.h, |c, _| c.stop_acknowledging())
        .expect("client alive");
    let mut frames = Vec::new();
    for i in 0..8u8 {
        frames.push(0x1a); // PATH_CHALLENGE
        frames.extend_from_slice(&[i; 8]);
    }
    let before = net.server_conn().stats().path_responses_sent;
    let (received, sent) = probe_from(&mut net, "10.0.0.1:6003", &frames);
    assert_eq!(
        sizes_to(&sent, probe_addr),
        vec![1200.min(3 * received)],
        "datagram sizes to the probed path"
    );
    assert_eq!(
        net.server_conn().stats().path_responses_sent - before,
        8,
        "each challenge answered"
    );
    assert_eq!(net.server_conn().remote_addr(), net.caddr, "no migration");
    net.client
        .with_state(net.h, |c, _| c.resume_acknowledging())
        .expect("client alive");
    net.echo_round_trip(10_000, 5);
    net.assert_healthy();
}

/// A client keeps the server's first SCID for the connection (RFC 9000 §7.2) and takes no
/// token from a server's Initial (§17.2.2): validly sealed server Initials that break
/// either rule are discarded; the same packet within the rules is processed.
#[test]
fn a_client_discards_server_initials_with_another_scid_or_a_token() {
    let mut net = Net::new(TransportConfig::default());
    let first = net.client_out();
    let Ok((Header::Long { dcid: odcid, .. }, _)) = header::parse(&first[0], CID_LEN) else {
        panic!("client Initial");
    };
    for d in &first {
        net.deliver_to_server(d);
    }
    let back = net.server_out();
    let initial = split_packets(&back[0])
        .into_iter()
        .find(|p| kind(p) == Some("initial"))
        .expect("server Initial")
        .to_vec();
    let Ok((
        Header::Long {
            scid: server_scid, ..
        },
        _,
    )) = header::parse(&initial, CID_LEN)
    else {
        panic!("server Initial");
    };
    let received = |net: &Net| net.client_conn().stats().packets_received;
    // The server's Initial with a token, ahead of the genuine one.
    let with_token = reseal_server_initial(&odcid, &initial, &server_scid, b"tok", None);
    net.deliver_to_client(&with_token);
    assert_eq!(received(&net), 0, "a server Initial with a token");
    // The genuine flight is processed.
    for d in &back {
        net.deliver_to_client(d);
    }
    let after_genuine = received(&net);
    assert!(after_genuine > 0);
    // Another SCID after the first server packet (a new packet number: had it been
    // processed, its ACK would make the server close over a packet it never sent).
    let other = cid(&[0xee; 8]);
    net.deliver_to_client(&reseal_server_initial(
        &odcid,
        &initial,
        &other,
        &[],
        Some(50),
    ));
    assert_eq!(
        received(&net),
        after_genuine,
        "a server Initial with another SCID"
    );
    net.establish();
    net.assert_healthy();
}

/// RFC 9001 §5.7: 1-RTT packets that reach the server ahead of the client's Finished are
/// not processed, even though the server already holds 1-RTT keys.
#[test]
fn one_rtt_data_ahead_of_the_client_finished_is_not_processed() {
    let mut net = Net::new(TransportConfig::default());
    // Goes out in the client's first 1-RTT packet, coalesced after its Finished.
    net.queue_raw(Epoch::Data, &encode(&[stream(0, 0, b"early", true)]));
    let mut held = Vec::new();
    for _ in 0..10 {
        for d in net.client_out() {
            let packets = split_packets(&d);
            if packets.iter().any(|p| kind(p) == Some("1-rtt")) {
                // Deliver the 1-RTT packet alone; keep the rest (the Finished) for later.
                for p in packets {
                    if kind(p) == Some("1-rtt") {
                        net.deliver_to_server(p);
                    } else {
                        held.push(p.to_vec());
                    }
                }
            } else {
                net.deliver_to_server(&d);
            }
        }
        if !held.is_empty() {
            break;
        }
        for d in net.server_out() {
            net.deliver_to_client(&d);
        }
    }
    assert!(
        !held.is_empty(),
        "the client sent its Finished with 1-RTT data"
    );
    let server = net.server_conn();
    assert!(!server.is_handshake_confirmed());
    let st = server.stream_stats();
    assert_eq!(
        (st.open_streams, st.reaped_streams, st.data_received),
        (0, 0, 0),
        "stream data processed before the handshake completed"
    );
    // The Finished arrives: the handshake completes and the connection works.
    for p in held {
        net.deliver_to_server(&p);
    }
    net.establish();
    net.assert_healthy();
}

#[test]
fn frames_not_allowed_in_an_initial_are_a_protocol_violation() {
    let now = Instant::now();
    let frames: Vec<(&str, Vec<u8>)> = vec![
        ("STREAM", encode(&[stream(0, 0, b"hello", true)])),
        ("MAX_DATA", encode(&[Frame::MaxData(1 << 20)])),
        ("HANDSHAKE_DONE", encode(&[Frame::HandshakeDone])),
        ("PATH_CHALLENGE", encode(&[Frame::PathChallenge([7; 8])])),
        ("NEW_TOKEN", encode(&[Frame::NewToken { token: b"t" }])),
        (
            "RETIRE_CONNECTION_ID",
            encode(&[Frame::RetireConnectionId { seq: 0 }]),
        ),
    ];
    for (i, (name, f)) in frames.iter().enumerate() {
        let mut server: Endpoint<AppSlot> =
            Endpoint::new(server_endpoint_config(TransportConfig::default()));
        let dcid = cid(&[0x10 + i as u8; 8]);
        let scid = cid(&[0x20 + i as u8; 8]);
        feed(
            &mut server,
            &mut NoEvents,
            &craft_initial(&dcid, &scid, 0, f, 1200),
            now,
        );
        let out = drain(&mut server, now);
        let codes: Vec<u64> = out
            .iter()
            .flat_map(|d| server_initial_close_codes(&dcid, d))
            .collect();
        assert_eq!(
            codes,
            vec![0xa],
            "{name} in an Initial: server replied {codes:?}"
        );
    }
}

/// Compatible version negotiation makes a server hold the client's ClientHello until it
/// is whole (RFC 9368 §2.3). A client that declares a 12 KiB ClientHello and sends a
/// garbage body in Initials of 1,000 bytes gets only Initials back, none closing, while it
/// is incomplete; once the declared length is in, the walk finds no transport parameters,
/// TLS reads it in the client's version, and the connection closes with a TLS alert
/// (CRYPTO_ERROR), without a switch. One connection throughout.
#[test]
fn a_server_holding_a_client_hello_answers_garbage_with_a_tls_alert() {
    let now = Instant::now();
    let mut config = server_endpoint_config(TransportConfig::default());
    config.preferred_versions = vec![VERSION_2];
    let mut server: Endpoint<AppSlot> = Endpoint::new(config);
    let dcid = cid(&[0x5a; 8]);
    let scid = cid(&[0x5b; 8]);
    const DECLARED: usize = 12 * 1024;
    let mut hello = vec![1, 0, (DECLARED >> 8) as u8, DECLARED as u8];
    hello.extend(pattern(DECLARED, 3));
    let chunks: Vec<&[u8]> = hello.chunks(1000).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let frame = encode(&[Frame::Crypto {
            offset: (i * 1000) as u64,
            data: chunk,
        }]);
        feed(
            &mut server,
            &mut NoEvents,
            &craft_initial(&dcid, &scid, i as u64, &frame, 1200),
            now,
        );
        let out = drain(&mut server, now);
        let codes: Vec<u64> = out
            .iter()
            .flat_map(|d| server_initial_close_codes(&dcid, d))
            .collect();
        let last = i + 1 == chunks.len();
        if last {
            assert_eq!(codes.len(), 1, "closed once: {codes:x?}");
            assert!(
                (0x100..0x200).contains(&codes[0]),
                "a TLS alert: {codes:x?}"
            );
        } else {
            assert!(codes.is_empty(), "chunk {i}: {codes:x?}");
            assert!(out.iter().all(|d| kind(d) == Some("initial")), "chunk {i}");
        }
        assert_eq!(server.stats().connections_accepted, 1);
    }
    assert_eq!(server.stats().compatible_version_switches, 0);
}

// ---- datagrams without a connection --------------------------------------------------------

#[test]
fn initial_in_a_small_datagram_creates_no_state() {
    let now = Instant::now();
    let mut server: Endpoint<AppSlot> =
        Endpoint::new(server_endpoint_config(TransportConfig::default()));
    let dcid = cid(&[1, 2, 3, 4, 5, 6, 7, 8]);
    let scid = cid(&[9; 8]);
    let ping = encode(&[Frame::Ping]);
    for len in [100, 600, 1199] {
        let d = craft_initial(&dcid, &scid, 0, &ping, len);
        assert_eq!(d.len(), len);
        feed(&mut server, &mut NoEvents, &d, now);
        assert_eq!(
            server.connection_count(),
            0,
            "{len}-byte Initial made state"
        );
        assert!(
            drain(&mut server, now).is_empty(),
            "{len}-byte Initial answered"
        );
    }
    // A DCID shorter than 8 bytes in a first Initial (RFC 9000 §7.2).
    let short = craft_initial(&cid(&[1; 7]), &scid, 0, &ping, 1200);
    feed(&mut server, &mut NoEvents, &short, now);
    assert_eq!(server.connection_count(), 0);
    assert_eq!(server.stats().dropped_unroutable, 4);
    // Control: the same packet in a 1200-byte datagram is a connection.
    feed(
        &mut server,
        &mut NoEvents,
        &craft_initial(&dcid, &scid, 0, &ping, 1200),
        now,
    );
    assert_eq!(server.connection_count(), 1);
    assert_eq!(server.stats().connections_accepted, 1);
    // Every later Initial of the connection must come in a 1200-byte datagram too (§14.1).
    let h = server.handles().next().expect("the connection");
    let received = |s: &Endpoint<AppSlot>| s.conn(h).expect("alive").stats().packets_received;
    let before = received(&server);
    feed(
        &mut server,
        &mut NoEvents,
        &craft_initial(&dcid, &scid, 1, &ping, 600),
        now,
    );
    assert_eq!(
        received(&server),
        before,
        "a later Initial in 600 bytes was processed"
    );
    feed(
        &mut server,
        &mut NoEvents,
        &craft_initial(&dcid, &scid, 2, &ping, 1200),
        now,
    );
    assert_eq!(received(&server), before + 1, "control: 1200 bytes");
}

#[test]
fn forged_initials_that_do_not_decrypt_create_no_state() {
    let now = Instant::now();
    let mut server: Endpoint<AppSlot> =
        Endpoint::new(server_endpoint_config(TransportConfig::default()));
    let mut rng = StdRng::seed_from_u64(3);
    for i in 0..200u32 {
        // A well-formed Initial header (v1, 8-byte DCID, Length to the end) over garbage.
        let mut d = vec![0u8; 1200 + (i as usize % 300)];
        rng.fill_bytes(&mut d);
        let len = d.len();
        let mut w = Writer::new(&mut d);
        w.put_u8(0xc0 | (rng.gen::<u8>() & 0x03)).unwrap();
        w.put_bytes(&VERSION_1.to_be_bytes()).unwrap();
        w.put_u8(8).unwrap();
        w.put_bytes(&i.to_be_bytes()).unwrap();
        w.put_bytes(&[0xee; 4]).unwrap();
        w.put_u8(0).unwrap();
        w.put_u8(0).unwrap(); // no token
        let rest = len - w.len() - 2;
        w.put_u8(0x40 | (rest >> 8) as u8).unwrap();
        w.put_u8(rest as u8).unwrap();
        assert!(matches!(
            header::parse(&d, CID_LEN),
            Ok((
                Header::Long {
                    ty: LongType::Initial,
                    ..
                },
                _
            ))
        ));
        feed(&mut server, &mut NoEvents, &d, now);
    }
    assert_eq!(
        server.connection_count(),
        0,
        "undecryptable Initials made connections"
    );
    assert_eq!(server.stats().connections_accepted, 0);
    assert!(drain(&mut server, now).is_empty());
}

#[test]
fn unknown_version_gets_a_version_negotiation_packet() {
    let now = Instant::now();
    let mut server: Endpoint<AppSlot> =
        Endpoint::new(server_endpoint_config(TransportConfig::default()));
    let version = 0x5a6b_7c8du32;
    let make = |len: usize| {
        let mut d = vec![0x55u8; len];
        d[0] = 0xc3;
        d[1..5].copy_from_slice(&version.to_be_bytes());
        d[5] = 9;
        d[6..15].copy_from_slice(&[0xd1; 9]);
        d[15] = 5;
        d[16..21].copy_from_slice(&[0x5c; 5]);
        d
    };
    // Too small to be a first Initial: no answer (no amplification, §6.1).
    feed(&mut server, &mut NoEvents, &make(1199), now);
    assert!(drain(&mut server, now).is_empty());
    feed(&mut server, &mut NoEvents, &make(1200), now);
    let out = drain(&mut server, now);
    assert_eq!(out.len(), 1);
    assert_eq!(server.connection_count(), 0);
    let (hdr, len) = header::parse(&out[0], CID_LEN).unwrap();
    assert_eq!(len, out[0].len());
    let Header::VersionNegotiation {
        dcid,
        scid,
        versions,
    } = hdr
    else {
        panic!("not a Version Negotiation packet: {hdr:?}");
    };
    assert_eq!(dcid, &[0x5c; 5], "VN echoes the client's SCID as DCID");
    assert_eq!(scid, &[0xd1; 9], "VN echoes the client's DCID as SCID");
    assert_eq!(out[0][1..5], [0, 0, 0, 0], "VN version field is zero");
    let versions: Vec<u32> = versions
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
        .collect();
    assert!(versions.contains(&VERSION_1), "{versions:x?}");
    assert!(!versions.contains(&version));
    assert_eq!(server.stats().version_negotiations_sent, 1);
}

#[test]
fn short_header_for_an_unknown_cid_gets_a_smaller_stateless_reset() {
    let now = Instant::now();
    let mut server: Endpoint<AppSlot> =
        Endpoint::new(server_endpoint_config(TransportConfig::default()));
    let mut rng = StdRng::seed_from_u64(5);
    for len in [13, 21, 22, 40, 100, 1200, 1500, 9000, 65527, 70000] {
        let mut d = vec![0u8; len];
        rng.fill_bytes(&mut d);
        d[0] = 0x40 | (d[0] & 0x3f);
        feed(&mut server, &mut NoEvents, &d, now);
        let out = drain(&mut server, now);
        if len <= 21 {
            assert!(out.is_empty(), "{len}-byte trigger answered");
            continue;
        }
        assert_eq!(out.len(), 1, "{len}-byte trigger");
        let reset = &out[0];
        assert!(
            reset.len() < len && reset.len() >= 21,
            "{} for {len}",
            reset.len()
        );
        assert!(reset.len() <= 43);
        assert_eq!(reset[0] & 0xc0, 0x40, "looks like a short header");
        let token = server.config().reset_key.token(&d[1..1 + CID_LEN]);
        assert_eq!(
            reset[reset.len() - 16..],
            token,
            "ends in the CID's reset token"
        );
    }
    assert_eq!(server.connection_count(), 0);
}

// ---- captured packets, damaged -------------------------------------------------------------

/// An established pair that has moved some data; the captures hold every packet type.
fn established_with_traffic() -> Net {
    let mut net = Net::new(TransportConfig::default());
    net.establish();
    net.echo_round_trip(4000, 1);
    net
}

#[test]
fn truncated_copies_of_every_packet_type_are_dropped() {
    let mut net = established_with_traffic();
    let mut by_kind: Vec<(&str, bool, Vec<u8>)> = Vec::new();
    for (to_server, dgrams) in [(true, net.c2s.clone()), (false, net.s2c.clone())] {
        for d in &dgrams {
            for p in split_packets(d) {
                let k = kind(p).unwrap();
                if !by_kind
                    .iter()
                    .any(|(kk, ts, _)| *kk == k && *ts == to_server)
                {
                    by_kind.push((k, to_server, p.to_vec()));
                }
            }
        }
    }
    // A 0-RTT packet (we never accept 0-RTT): a client Handshake packet retyped.
    let mut zero_rtt = by_kind
        .iter()
        .find(|(k, ts, _)| *k == "handshake" && *ts)
        .expect("a client Handshake packet")
        .2
        .clone();
    zero_rtt[0] = (zero_rtt[0] & !0x30) | 0x10;
    assert_eq!(kind(&zero_rtt), Some("0-rtt"));
    by_kind.push(("0-rtt", true, zero_rtt));
    // The client's first datagram (a padded Initial) whole, too.
    by_kind.push(("first datagram", true, net.c2s[0].clone()));
    // Retry and Version Negotiation from a second server that answers the same Initial.
    let mut cfg = server_endpoint_config(TransportConfig::default());
    cfg.require_retry = true;
    let mut retrier: Endpoint<AppSlot> = Endpoint::new(cfg);
    feed(&mut retrier, &mut NoEvents, &net.c2s[0], net.now);
    let retry = drain(&mut retrier, net.now).remove(0);
    assert_eq!(kind(&retry), Some("retry"));
    by_kind.push(("retry", false, retry));
    let mut unknown = net.c2s[0].clone();
    unknown[1..5].copy_from_slice(&0x1a2a_3a4au32.to_be_bytes());
    feed(&mut retrier, &mut NoEvents, &unknown, net.now);
    let vn = drain(&mut retrier, net.now).remove(0);
    assert_eq!(kind(&vn), Some("vn"));
    by_kind.push(("vn", false, vn));

    let kinds: Vec<String> = by_kind
        .iter()
        .map(|(k, ts, _)| format!("{k}{}", if *ts { "→s" } else { "→c" }))
        .collect();
    for want in [
        "initial→s",
        "handshake→s",
        "1-rtt→s",
        "initial→c",
        "handshake→c",
        "1-rtt→c",
    ] {
        assert!(
            kinds.iter().any(|k| k == want),
            "no {want} captured: {kinds:?}"
        );
    }

    let dropped_before = net.server_conn().stats().packets_dropped;
    let received_before = net.server_conn().stats().packets_received;
    let mut fed = 0;
    for (k, to_server, p) in &by_kind {
        // Every proper prefix; the retyped 0-RTT packet whole as well.
        let end = if *k == "0-rtt" { p.len() } else { p.len() - 1 };
        for len in 0..=end {
            if *to_server {
                net.deliver_to_server(&p[..len]);
            } else {
                net.deliver_to_client(&p[..len]);
            }
            fed += 1;
        }
    }
    assert!(fed > 5000, "{fed}");
    // No prefix was processed as a packet, and nothing new was accepted.
    assert_eq!(net.server.connection_count(), 1);
    assert_eq!(net.server_conn().stats().packets_received, received_before);
    assert!(net.server_conn().stats().packets_dropped > dropped_before);
    // Stateless replies (resets for short prefixes naming no CID) are not for the client.
    let _ = net.server_out();
    net.assert_healthy();
    net.echo_round_trip(20_000, 2);
}

#[test]
fn replayed_and_bit_flipped_packets_are_dropped() {
    let mut net = established_with_traffic();
    // Withhold a fresh 1-RTT datagram carrying stream data.
    let h = net.h;
    net.client
        .with_state(h, |c, _| {
            let id = c.open_stream(false).unwrap();
            c.write(id, b"held back").unwrap();
        })
        .unwrap();
    let out = net.client_out();
    let held = out
        .iter()
        .find(|d| kind(d) == Some("1-rtt"))
        .expect("a 1-RTT datagram")
        .clone();
    let before = net.server_conn().stats();
    for bit in 0..held.len() * 8 {
        let mut d = held.clone();
        d[bit / 8] ^= 1 << (bit % 8);
        net.deliver_to_server(&d);
    }
    let after = net.server_conn().stats();
    assert_eq!(
        after.packets_received, before.packets_received,
        "a flipped packet opened"
    );
    assert!(after.packets_dropped >= before.packets_dropped + (held.len() as u64 * 8) / 2);
    let _ = net.server_out();
    // The untouched original still opens: failed attempts left the keys and state alone.
    net.deliver_to_server(&held);
    assert_eq!(
        net.server_conn().stats().packets_received,
        before.packets_received + 1
    );
    for _ in 0..3 {
        net.deliver_to_server(&held);
    }
    let s = net.server_conn().stats();
    assert_eq!(s.packets_received, before.packets_received + 1);
    assert_eq!(s.duplicate_packets, before.duplicate_packets + 3);
    // An old handshake datagram replayed: its spaces are gone, it is dropped.
    for d in net.c2s.clone().iter().skip(1).take(4) {
        net.deliver_to_server(d);
    }
    assert_eq!(net.server.connection_count(), 1);
    net.assert_healthy();
    net.echo_round_trip(20_000, 3);
}

#[test]
fn garbage_and_oversized_datagrams_leave_the_connection_alone() {
    let mut net = established_with_traffic();
    let mut rng = StdRng::seed_from_u64(9);
    let one_rtt = net
        .c2s
        .iter()
        .rev()
        .find(|d| kind(d) == Some("1-rtt"))
        .unwrap()
        .clone();
    let server_cid = header::peek_dcid(&one_rtt, CID_LEN).unwrap().to_vec();
    for i in 0..3000 {
        let len = rng.gen_range(0..1600);
        let mut d = vec![0u8; len];
        rng.fill_bytes(&mut d);
        if i % 2 == 0 && len > CID_LEN {
            // Half of them aimed at the live connection's CID.
            d[0] = 0x40 | (d[0] & 0x3f);
            d[1..1 + CID_LEN].copy_from_slice(&server_cid);
        }
        if i % 3 == 0 {
            net.deliver_to_server(&d);
        } else {
            net.deliver_to_client(&d);
        }
    }
    for len in [1501, 9000, 65527, 65528, 70000, 200_000] {
        let mut big = one_rtt.clone();
        big.resize(len, 0xab);
        net.deliver_to_server(&big);
        let mut junk = vec![0u8; len];
        rng.fill_bytes(&mut junk);
        net.deliver_to_server(&junk);
        net.deliver_to_client(&junk);
        // The client's first Initial with a huge tail: at most one more connection.
        let mut initial = net.c2s[0].clone();
        initial.resize(len, 0);
        net.deliver_to_server(&initial);
    }
    assert!(net.server.connection_count() <= 2);
    let _ = net.server_out();
    net.assert_healthy();
    net.echo_round_trip(20_000, 4);
}

// ---- property: mutated real packets ---------------------------------------------------------

#[derive(Clone, Debug)]
enum Mutation {
    Flip(prop::sample::Index, u8),
    Set(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
    Insert(prop::sample::Index, Vec<u8>),
    Append(Vec<u8>),
    Coalesce(prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::Set(i, v)),
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        (
            any::<prop::sample::Index>(),
            prop::collection::vec(any::<u8>(), 1..40)
        )
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        prop::collection::vec(any::<u8>(), 1..64).prop_map(Mutation::Append),
        any::<prop::sample::Index>().prop_map(Mutation::Coalesce),
    ]
}

fn apply(pool: &[Vec<u8>], base: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let mut d = base.to_vec();
    for m in muts {
        match m {
            Mutation::Flip(i, bit) if !d.is_empty() => {
                let i = i.index(d.len());
                d[i] ^= 1 << bit;
            }
            Mutation::Set(i, v) if !d.is_empty() => {
                let i = i.index(d.len());
                d[i] = *v;
            }
            Mutation::Truncate(i) if !d.is_empty() => {
                let i = i.index(d.len());
                d.truncate(i);
            }
            Mutation::Insert(i, b) => {
                let i = i.index(d.len() + 1);
                d.splice(i..i, b.iter().copied());
            }
            Mutation::Append(b) => d.extend_from_slice(b),
            Mutation::Coalesce(i) => d.extend_from_slice(&pool[i.index(pool.len())]),
            _ => {}
        }
    }
    d
}

#[test]
fn mutated_real_packets_never_panic_or_grow_state() {
    let net = RefCell::new(established_with_traffic());
    let (c2s, s2c) = {
        let n = net.borrow();
        (n.c2s.clone(), n.s2c.clone())
    };
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        any::<bool>(),
        any::<prop::sample::Index>(),
        prop::collection::vec(mutation(), 1..5),
    );
    let fed = Cell::new(0u32);
    runner
        .run(&strategy, |(to_server, pick, muts)| {
            let mut n = net.borrow_mut();
            let pool = if to_server { &c2s } else { &s2c };
            let base = &pool[pick.index(pool.len())];
            let d = apply(pool, base, &muts);
            if d == *base {
                return Ok(()); // unchanged: a plain replay, covered elsewhere
            }
            fed.set(fed.get() + 1);
            if to_server {
                n.deliver_to_server(&d);
            } else {
                n.deliver_to_client(&d);
            }
            n.step();
            n.now += Duration::from_millis(1);
            prop_assert!(n.server.connection_count() <= 2, "connections grew");
            prop_assert!(!n.client_conn().is_closing(), "client closed: {muts:?}");
            let live = n
                .server
                .handles()
                .filter_map(|h| n.server.conn(h))
                .find(|c| c.is_handshake_confirmed())
                .expect("the established server connection survives");
            prop_assert!(!live.is_closing(), "server closed: {muts:?}");
            let s = live.stream_stats();
            prop_assert!(
                s.recv_buffered <= 3 << 19 && s.send_buffered <= 1 << 20,
                "{s:?}"
            );
            Ok(())
        })
        .unwrap();
    assert!(fed.get() >= 300, "only {} mutated datagrams fed", fed.get());
    let mut n = net.into_inner();
    n.assert_healthy();
    n.echo_round_trip(20_000, 5);
}

/// RFC 10.2.2: a CONNECTION_CLOSE received while closing moves the endpoint to draining
/// with the same end time; it does not forget the connection at once (late packets of the
/// peer would then earn stateless resets).
#[test]
fn a_close_received_while_closing_drains_until_the_closing_deadline() {
    let mut net = Net::new(TransportConfig::default());
    net.establish();
    let now = net.now;
    // Both sides close at the same moment; each receives the other's close while closing.
    net.client.close_all(now, 7, "client done");
    net.server.close_all(now, 8, "server done");
    let from_client = net.client_out();
    let from_server = net.server_out();
    assert!(!from_client.is_empty() && !from_server.is_empty());
    for d in &from_client {
        net.deliver_to_server(d);
    }
    for d in &from_server {
        net.deliver_to_client(d);
    }
    assert!(net
        .client
        .conn(net.h)
        .is_some_and(|c| c.is_closing() && !c.is_drained()));
    assert_eq!(net.server.connection_count(), 1, "server still drains");
    // Draining is quiet: a late packet of the peer earns nothing.
    net.deliver_to_client(&from_server[0]);
    assert!(net.client_out().is_empty());
    // At the deadline both are gone.
    let gone = net.run(Duration::from_secs(10), |n| {
        n.client.conn(n.h).is_none() && n.server.connection_count() == 0
    });
    assert!(gone, "connections outlived their drain period");
}

/// RFC 9000 §13.2.1: an ACK-only packet never answers an ACK-only packet. The server
/// used to answer any Initial or Handshake packet with an ACK, so two endpoints could
/// trade ACKs until the keys were discarded.
#[test]
fn an_ack_only_initial_earns_no_ack() {
    let mut net = Net::new(TransportConfig::default());
    for d in net.client_out() {
        net.deliver_to_server(&d);
    }
    for d in net.server_out() {
        net.deliver_to_client(&d);
    }
    // The client's answer: an Initial acknowledging the server's, then its Handshake
    // packets. Only the Initial (ACK frames only) reaches the server, in a datagram padded
    // to the size a client Initial needs.
    let answer = net.client_out();
    let initial = split_packets(&answer[0])
        .into_iter()
        .find(|p| kind(p) == Some("initial"))
        .expect("the client acknowledges the server's Initial")
        .to_vec();
    let mut datagram = initial.clone();
    datagram.resize(1200.max(initial.len()), 0);
    net.deliver_to_server(&datagram);
    let reply = net.server_out();
    assert!(
        reply.is_empty(),
        "{} datagrams in reply to an ACK",
        reply.len()
    );
    // The rest of the client's flight completes the handshake as usual.
    for d in &answer {
        net.deliver_to_server(d);
    }
    net.establish();
    net.echo_round_trip(1000, 1);
}

/// RFC 9000 §8.1.3: a token the server cannot open counts as no token (the client is
/// unvalidated and may get a Retry), except one that says it came from a Retry: that
/// client will not accept another, so it is closed at once with INVALID_TOKEN (§8.1.2).
#[test]
fn tokens_we_cannot_open_earn_a_retry_unless_they_claim_to_be_one() {
    let mut cfg = server_endpoint_config(TransportConfig::default());
    cfg.require_retry = true;
    let mut server: Endpoint<AppSlot> = Endpoint::new(cfg);
    let now = Instant::now();
    let (dcid, scid) = (cid(&[9; 8]), cid(&[8; 8]));
    let ping = [0x01];
    // A NEW_TOKEN-kind token from another deployment (or before a restart).
    let foreign = [&b"qtk\x01"[..], &[0x55; 60]].concat();
    let d = craft_initial_with_token(&dcid, &scid, 0, &ping, 1200, &foreign);
    feed(&mut server, &mut NoEvents, &d, now);
    let out = drain(&mut server, now);
    assert_eq!(out.len(), 1);
    assert_eq!(kind(&out[0]), Some("retry"));
    // One claiming to come from a Retry that does not open.
    let bad_retry = [&b"qtk\x00"[..], &[0x55; 60]].concat();
    let d = craft_initial_with_token(&dcid, &scid, 0, &ping, 1200, &bad_retry);
    feed(&mut server, &mut NoEvents, &d, now);
    let out = drain(&mut server, now);
    assert_eq!(out.len(), 1);
    assert_eq!(server_initial_close_codes(&dcid, &out[0]), vec![0x0b]);
    assert_eq!(server.connection_count(), 0);
    // Another implementation's token that merely starts with the Retry kind byte.
    let stranger = [&[0u8][..], &[0x55; 60]].concat();
    let d = craft_initial_with_token(&dcid, &scid, 0, &ping, 1200, &stranger);
    feed(&mut server, &mut NoEvents, &d, now);
    let out = drain(&mut server, now);
    assert_eq!(out.len(), 1);
    assert_eq!(kind(&out[0]), Some("retry"));
}

/// RFC 9000 §8.1.4: a NEW_TOKEN token validates an address once. Replayed (by anyone who
/// saw it in the clear Initial), it counts as no token: a server requiring Retry sends one.
/// The record is the server's, not a worker's: a copy sent to another worker is caught.
#[test]
fn a_new_token_token_is_accepted_once() {
    let mut cfg = server_endpoint_config(TransportConfig::default());
    cfg.require_retry = true;
    let mut token = Vec::new();
    let client_ip = "10.0.0.9".parse().unwrap();
    cfg.token_key
        .seal_new_token(client_ip, VERSION_1, SystemTime::now(), &mut token);
    let mut other_worker: Endpoint<AppSlot> = Endpoint::new(EndpointConfig {
        worker_id: 1,
        ..cfg.clone()
    });
    let mut server: Endpoint<AppSlot> = Endpoint::new(cfg);
    let now = Instant::now();
    let ping = [0x01];
    let first = craft_initial_with_token(&cid(&[9; 8]), &cid(&[8; 8]), 0, &ping, 1200, &token);
    feed(&mut server, &mut NoEvents, &first, now);
    assert!(
        drain(&mut server, now)
            .iter()
            .all(|d| kind(d) != Some("retry")),
        "the token validated the address"
    );
    assert_eq!(server.connection_count(), 1);
    let again = craft_initial_with_token(&cid(&[7; 8]), &cid(&[6; 8]), 0, &ping, 1200, &token);
    feed(&mut server, &mut NoEvents, &again, now);
    let out = drain(&mut server, now);
    assert_eq!(out.len(), 1);
    assert_eq!(kind(&out[0]), Some("retry"), "a replay proves nothing");
    assert_eq!(server.connection_count(), 1);
    let stats = server.stats();
    assert_eq!((stats.replayed_tokens, stats.retries_sent), (1, 1));
    let third = craft_initial_with_token(&cid(&[5; 8]), &cid(&[4; 8]), 0, &ping, 1200, &token);
    feed(&mut other_worker, &mut NoEvents, &third, now);
    let out = drain(&mut other_worker, now);
    assert_eq!(out.len(), 1);
    assert_eq!(kind(&out[0]), Some("retry"), "replayed to another worker");
    assert_eq!(other_worker.connection_count(), 0);
    assert_eq!(other_worker.stats().replayed_tokens, 1);
}

/// RFC 9000 §10.3.1: a datagram ending in the peer's reset token is a stateless reset
/// whatever its first byte claims (a reset may look like a long header), but only from
/// the address the connection talks to.
#[test]
fn stateless_resets_are_recognised_in_any_form_but_only_from_the_peer() {
    let mut net = Net::new(TransportConfig::default());
    net.establish();
    // The server loses its state (same reset key); the client's next packet earns a reset.
    let cfg = net.server.config().clone();
    net.server = Endpoint::new(cfg);
    net.client
        .with_state(net.h, |c, _| {
            let id = c.open_stream(true).expect("stream credit");
            c.write(id, b"anyone there?").unwrap();
        })
        .expect("client alive");
    let mut reset = None;
    for d in net.client_out() {
        net.deliver_to_server(&d);
        reset = reset.or(net.server_out().pop());
    }
    let mut reset = reset.expect("the server answered with a stateless reset");
    assert!(net.server.stats().stateless_resets_sent >= 1);
    // From another address: not the peer's, ignored.
    let mut copy = reset.clone();
    let elsewhere = RxMeta {
        src: "10.9.9.9:4433".parse().unwrap(),
        dst: net.caddr,
        ecn: 0,
    };
    net.client
        .handle_datagram(net.now, elsewhere, &mut copy, &mut ClientEvents);
    assert!(!net.client_conn().is_closing());
    assert_eq!(net.client.stats().stateless_resets_received, 0);
    // Dressed as a long header, from the server: a reset all the same.
    reset[0] |= 0xc0;
    net.deliver_to_client(&reset);
    assert_eq!(net.client.stats().stateless_resets_received, 1);
    assert_eq!(net.log(|l| l.closed.clone()), None, "connection gone");
    assert!(net.client.conn(net.h).is_none());
}

/// RFC 9000 §10.3.1 at a server connection: a datagram routed to it by CID and ending in
/// the client's reset token is a reset only from the client's address.
#[test]
fn a_server_connection_takes_a_stateless_reset_only_from_the_client() {
    let mut net = Net::new(TransportConfig::default());
    net.establish();
    net.echo_round_trip(1000, 1);
    // The client's handshake CID comes with no reset token; one it issued later does.
    let moved = net
        .client
        .with_state(net.h, |c, _| c.switch_to_spare_remote_cid())
        .expect("client alive");
    assert!(moved);
    net.caddr = "10.0.0.3:7000".parse().unwrap();
    net.echo_round_trip(1000, 2);
    let client_cid = net.server_conn().active_remote_cid();
    let token = net.client.config().reset_key.token(client_cid.as_slice());
    let server_cid = net.client_conn().active_remote_cid();
    let mut datagram = vec![0x40];
    datagram.extend_from_slice(server_cid.as_slice());
    datagram.extend_from_slice(&[0x5a; 24]);
    datagram.extend_from_slice(&token);
    let mut copy = datagram.clone();
    let elsewhere = RxMeta {
        src: "10.9.9.9:7000".parse().unwrap(),
        dst: net.saddr,
        ecn: 0,
    };
    let mut disp = AppDispatcher { factory: &net.apps };
    net.server
        .handle_datagram(net.now, elsewhere, &mut copy, &mut disp);
    assert_eq!(net.server.connection_count(), 1);
    assert!(!net.server_conn().is_closing(), "not from the client");
    net.echo_round_trip(1000, 3);
    // From the client's address, the same bytes end the connection.
    net.deliver_to_server(&datagram);
    assert_eq!(net.server.connection_count(), 0, "reset by the client");
}

/// A NAT that rebinds mid-handshake, the old mapping gone at once: the client's second
/// flight (its Initial ACK and Finished) comes from a new port. The server completes the
/// handshake on the Finished and follows the port it came from, validating it (RFC 9000
/// §8.2), as it would a 1-RTT packet: this client has nothing more to send, and its
/// HANDSHAKE_DONE must not go to the dead port. The Initial ACK from the new port counts
/// for nothing (Initial packets are tied to the first address).
#[test]
fn a_nat_rebinding_mid_handshake_does_not_stall_it() {
    let mut net = Net::new(TransportConfig::default());
    let first = net.caddr;
    // The client's Initial, and the server's whole flight back.
    for d in net.client_out() {
        net.deliver_to_server(&d);
    }
    for (dst, d) in drain_to(&mut net.server, net.now) {
        assert_eq!(dst, first);
        net.deliver_to_client(&d);
    }
    assert!(
        net.client_conn().is_established(),
        "the client has the server's flight"
    );
    net.caddr = "10.0.0.1:5001".parse().unwrap();
    net.dead_client_addrs.push(first);
    for d in net.client_out() {
        net.deliver_to_server(&d);
    }
    assert!(
        net.server_conn().is_handshake_confirmed(),
        "the Finished from the new port completed the handshake"
    );
    assert_eq!(net.server_conn().remote_addr(), net.caddr, "the path moved");
    let replies = drain_to(&mut net.server, net.now);
    assert_eq!(
        net.server.stats().new_tokens_sent,
        0,
        "no NEW_TOKEN for an address nobody has answered from yet"
    );
    for (dst, d) in &replies {
        if *dst == net.caddr {
            net.deliver_to_client(d);
        }
    }
    net.establish();
    net.echo_round_trip(1000, 1);
    assert_eq!(
        net.server_conn().stats().path_challenges_answered,
        1,
        "the new port was validated"
    );
    assert_eq!(net.server_conn().remote_addr(), net.caddr);
    assert_eq!(
        net.server.stats().new_tokens_sent,
        1,
        "a token once validated"
    );
    net.assert_healthy();
}

/// A NAT rebinding right after the client's Finished, the old mapping gone: the server's
/// HANDSHAKE_DONE and ACKs are lost, and it has discarded its Handshake keys, so the
/// client's Handshake probes from the new port reach nothing. The client's 1-RTT data in
/// flight is probed along with them (RFC 9002 §6.2.4), and that 1-RTT packet moves the
/// server to the new port, where the HANDSHAKE_DONE gets through.
fn handshake_done_lost_to_a_rebinding(with_data: bool) {
    let mut net = Net::new(TransportConfig::default());
    let first = net.caddr;
    for d in net.client_out() {
        net.deliver_to_server(&d);
    }
    for d in net.server_out() {
        net.deliver_to_client(&d);
    }
    assert!(net.client_conn().is_established());
    // The Finished goes out from the handshake's port, with 1-RTT data or alone.
    let id = with_data.then(|| net.open_with(&pattern(3000, 7)));
    for d in net.client_out() {
        net.deliver_to_server(&d);
    }
    assert!(net.server_conn().is_handshake_confirmed());
    // Everything the server answers is lost with the old mapping.
    let lost = drain_to(&mut net.server, net.now);
    assert!(lost.iter().all(|(dst, _)| *dst == first) && !lost.is_empty());
    net.dead_client_addrs.push(first);
    net.caddr = "10.0.0.1:5001".parse().unwrap();
    let confirmed = net.run(Duration::from_secs(5), |n| {
        n.client_conn().is_handshake_confirmed()
    });
    assert!(confirmed, "the client never confirmed the handshake");
    assert_eq!(
        net.server_conn().remote_addr(),
        net.caddr,
        "the server moved"
    );
    match id {
        Some(id) => {
            net.client_do(|c| c.finish(id).unwrap());
            let echoed = net.run(Duration::from_secs(10), |n| {
                n.log(|l| l.echo_fin).unwrap_or(true)
            });
            assert!(echoed, "the stream's echo completes");
            assert_eq!(net.log(|l| l.echoed_len), Some(3000));
        }
        None => net.echo_round_trip(1000, 1),
    }
    net.assert_healthy();
}

#[test]
fn a_client_whose_handshake_done_was_lost_to_a_rebinding_probes_in_1_rtt_too() {
    handshake_done_lost_to_a_rebinding(true);
}

/// The same with nothing of the client's in flight in 1-RTT: its handshake PTO sends a
/// 1-RTT PING along.
#[test]
fn a_silent_client_whose_handshake_done_was_lost_to_a_rebinding_probes_in_1_rtt_too() {
    handshake_done_lost_to_a_rebinding(false);
}

/// Initial packets stay tied to the handshake's address: anyone who saw the client's first
/// Initial can seal them, so one from elsewhere (a CONNECTION_CLOSE here) is dropped. The
/// same bytes from the client's address do close the connection.
#[test]
fn an_initial_from_another_address_is_dropped() {
    let mut net = Net::new(TransportConfig::default());
    for d in net.client_out() {
        net.deliver_to_server(&d);
    }
    drain_to(&mut net.server, net.now);
    // CONNECTION_CLOSE (PROTOCOL_VIOLATION, frame type 0, no reason).
    net.queue_raw(Epoch::Initial, &[0x1c, 0x0a, 0x00, 0x00]);
    let forged = net.client_out();
    assert!(!forged.is_empty());
    let client = net.caddr;
    net.caddr = "10.0.0.66:5000".parse().unwrap();
    for d in &forged {
        net.deliver_to_server(d);
    }
    assert_eq!(net.server.connection_count(), 1);
    assert!(
        !net.server_conn().is_closing(),
        "closed from another address"
    );
    net.caddr = client;
    for d in &forged {
        net.deliver_to_server(d);
    }
    assert!(
        net.server.connection_count() == 0 || net.server_conn().is_closing(),
        "the same packet from the client's address closes it"
    );
}

/// A NAT rebinding whose old mapping died with the server's window in flight, the client
/// a pure receiver by then (nothing of its own unacknowledged). The server must still get
/// its PATH_CHALLENGE out: past the full window (the packet carries control frames only),
/// and, when that one is lost too, again from its PTO, armed because a packet still fits
/// the new port's 3× budget (RFC 9000 §8.1). Waiting for the validation deadline instead
/// (≥ 3 s) ends by falling back to the dead port, where a silent client is never heard of
/// again.
fn rebinding_behind_a_full_window(lose_first_challenge: bool) {
    let mut net = hq_net();
    let id = net.open_with(b"GET /4000000\r\n");
    net.client_do(|c| c.finish(id).unwrap());
    let downloading = net.run(Duration::from_secs(5), |n| {
        n.log(|l| l.echoed_len > 256 << 10).unwrap_or(false)
            && n.client_conn().bytes_in_flight() == 0
    });
    assert!(
        downloading,
        "the download is under way, the request acknowledged"
    );
    let sh = net.server.handles().next().expect("server connection");
    // The client's ACKs reach the server, and the window they open is filled; then the NAT
    // rebinds, and all that is lost with the old port.
    for d in net.client_out() {
        net.deliver_to_server(&d);
    }
    let old = net.caddr;
    net.dead_client_addrs.push(old);
    let lost = drain_to(&mut net.server, net.now);
    assert!(lost.iter().all(|(dst, _)| *dst == old) && !lost.is_empty());
    net.caddr = "10.0.0.1:5001".parse().unwrap();
    net.queue_raw(Epoch::Data, &[0x01]); // the client's next packet, say a PING
    for d in net.client_out() {
        net.deliver_to_server(&d);
    }
    // Its window is full of packets lost on the old port.
    net.server
        .with_state(sh, |c, _| {
            let in_flight = c.bytes_in_flight();
            assert!(in_flight > 0, "the server has packets in flight");
            c.set_congestion_window(in_flight);
        })
        .expect("server connection alive");
    assert_eq!(net.server_conn().send_window(), 0, "the window is full");
    let to_new: Vec<Vec<u8>> = drain_to(&mut net.server, net.now)
        .into_iter()
        .filter(|(dst, _)| *dst == net.caddr)
        .map(|(_, d)| d)
        .collect();
    assert!(!to_new.is_empty(), "nothing went to the new port at once");
    let moved_at = net.now;
    if !lose_first_challenge {
        for d in &to_new {
            net.deliver_to_client(d);
        }
    }
    let validated = net.run(Duration::from_secs(1), |n| {
        n.server_conn().stats().path_challenges_answered >= 1
    });
    assert!(
        validated,
        "not validated {:?} after the rebinding",
        net.now - moved_at
    );
    assert_eq!(net.server_conn().remote_addr(), net.caddr);
    if !lose_first_challenge {
        assert!(
            net.now - moved_at < Duration::from_millis(1),
            "answered within a round trip, no timer"
        );
    }
    let done = net.run(Duration::from_secs(60), |n| {
        n.log(|l| l.echo_fin).unwrap_or(true)
    });
    assert!(done, "the download completes");
    assert_eq!(net.log(|l| l.echoed_len), Some(4_000_000));
    net.assert_healthy();
}

#[test]
fn a_rebinding_behind_a_full_window_gets_its_challenge_out_at_once() {
    rebinding_behind_a_full_window(false);
}

#[test]
fn a_rebinding_whose_challenge_is_lost_is_challenged_again_before_the_deadline() {
    rebinding_behind_a_full_window(true);
}

/// RFC 9000 §9.5: one CID is never sent to two addresses. A peer that moves under a new
/// CID of ours gets a new CID of its own back on the new path (and the old one retired);
/// a NAT rebinding (same CID, new port) keeps the CID, as §9.5 allows.
#[test]
fn a_peer_that_moves_under_a_new_cid_gets_a_new_cid_back() {
    let mut net = Net::new(TransportConfig::default());
    net.establish();
    net.echo_round_trip(1000, 1);
    let first = net.server_conn().active_remote_cid();
    // A NAT rebinding: new port, same CIDs.
    net.caddr = "10.0.0.1:5001".parse().unwrap();
    net.echo_round_trip(1000, 2);
    assert_eq!(net.server_conn().remote_addr(), net.caddr);
    assert_eq!(net.server_conn().active_remote_cid(), first, "kept");
    // A deliberate move: the client takes a spare CID of the server and a new address.
    let moved = net
        .client
        .with_state(net.h, |c, _| c.switch_to_spare_remote_cid())
        .expect("client alive");
    assert!(moved, "the server issued spare CIDs");
    net.caddr = "10.0.0.3:7000".parse().unwrap();
    net.echo_round_trip(1000, 3);
    assert_eq!(net.server_conn().remote_addr(), net.caddr);
    let second = net.server_conn().active_remote_cid();
    assert_ne!(second, first, "a new CID for the new path");
    // The server retires the CID it used on the old path; the client then drops it.
    let retired = net.run(Duration::from_secs(5), |n| {
        !n.client_conn().local_cids().any(|c| c == first)
    });
    assert!(retired, "the old path's CID was retired");
    net.echo_round_trip(1000, 4);
    net.assert_healthy();
}

/// RFC 9000 §9.5: a probe of another path under another of our CIDs is answered under
/// another CID of the peer's, not the one the current path uses.
#[test]
fn a_probe_under_a_new_cid_is_answered_under_a_new_cid() {
    let mut net = Net::new(TransportConfig::default());
    net.establish();
    net.echo_round_trip(1000, 1);
    net.run(Duration::from_millis(200), |_| false);
    let current = net.server_conn().active_remote_cid();
    let probe_addr: SocketAddr = "10.0.0.1:6002".parse().unwrap();
    net.client
        .with_state(net.h, |c, _| {
            c.stop_acknowledging();
            assert!(c.switch_to_spare_remote_cid());
        })
        .expect("client alive");
    net.queue_raw(Epoch::Data, &[0x1a, 9, 8, 7, 6, 5, 4, 3, 2]); // PATH_CHALLENGE
    for d in net.client_out() {
        let mut copy = d.clone();
        let mut disp = AppDispatcher { factory: &net.apps };
        net.server
            .handle_datagram(net.now, rx("10.0.0.1:6002"), &mut copy, &mut disp);
    }
    let sent = drain_to(&mut net.server, net.now);
    let answers: Vec<&Vec<u8>> = sent
        .iter()
        .filter(|(dst, _)| *dst == probe_addr)
        .map(|(_, d)| d)
        .collect();
    assert_eq!(answers.len(), 1, "{sent:?}");
    let Ok((Header::Short { dcid, .. }, _)) = header::parse(answers[0], CID_LEN) else {
        panic!("a 1-RTT packet");
    };
    assert_ne!(dcid, current, "not the current path's CID");
    assert_eq!(
        net.server_conn().active_remote_cid(),
        current,
        "no migration"
    );
    assert_eq!(net.server_conn().remote_addr(), net.caddr);
}

/// A handshake done with the built-in hq-interop server.
fn hq_net() -> Net {
    let config = server_endpoint_config_for(TransportConfig::default(), b"hq-interop");
    let mut net = Net::with_server_alpn(config, b"hq-interop");
    net.establish();
    net
}

/// hq-interop: a client may send its request line and its FIN in separate packets (quinn
/// does, after `write_all`). A FIN arriving after the response was written is not a new,
/// empty request: the stream is not reset (it used to be, while the response was still
/// unacknowledged).
#[test]
fn an_hq_request_whose_fin_comes_late_is_answered_once() {
    let mut net = hq_net();
    let id = net.open_with(b"GET /5000\r\n");
    for d in net.client_out() {
        net.deliver_to_server(&d);
    }
    // The server answers the request line at once; its response is held back while the
    // request's FIN reaches it on its own.
    let response = net.server_out();
    assert!(!response.is_empty());
    net.client_do(|c| c.finish(id).unwrap());
    for d in net.client_out() {
        net.deliver_to_server(&d);
    }
    // What the server sent after the FIN overtakes the response (a reset would then count).
    let later = net.server_out();
    for d in later.iter().chain(response.iter()) {
        net.deliver_to_client(d);
    }
    let done = net.run(Duration::from_secs(5), |n| {
        n.log(|l| l.echo_fin || l.reset.is_some()).unwrap_or(true)
    });
    assert!(done, "no complete response");
    assert_eq!(
        net.log(|l| l.reset),
        Some(None),
        "the late FIN earned a reset"
    );
    assert_eq!(net.log(|l| l.echoed_len), Some(5000));
    net.assert_healthy();
}

/// A peer that abandons its side of an echo stream (RESET_STREAM) gets ours abandoned
/// too: the stream ends on both sides and the server forgets it, instead of holding an
/// open send side (and a stream slot) for the life of the connection.
#[test]
fn an_echo_stream_the_peer_resets_is_not_kept_open() {
    let mut net = Net::new(TransportConfig::default());
    net.establish();
    let id = net.open_with(&[5u8; 100]);
    net.run(Duration::from_millis(100), |n| {
        n.log(|l| l.echoed_len == 100).unwrap_or(true)
    });
    assert_eq!(net.log(|l| l.echoed_len), Some(100));
    net.client_do(|c| c.reset_stream(id, 9).unwrap());
    let gone = net.run(Duration::from_secs(2), |n| {
        n.server_conn().stream_stats().open_streams == 0
    });
    assert!(gone, "{:?}", net.server_conn().stream_stats());
    assert_eq!(
        net.log(|l| l.reset),
        Some(Some(9)),
        "ours was reset with the same code"
    );
    net.echo_round_trip(1000, 3);
}

/// RFC 9000 §10.2.1: in the closing state CONNECTION_CLOSE answers incoming packets at a
/// falling rate (the 1st, 2nd, 4th, 8th... datagram), not one for one.
#[test]
fn a_closing_connection_answers_at_a_falling_rate() {
    let mut net = Net::new(TransportConfig::default());
    net.establish();
    let now = net.now;
    net.client.close_all(now, 7, "bye");
    let first = net.client_out();
    assert!(!first.is_empty(), "the close goes out at once");
    // The server never hears it and keeps sending: 16 datagrams.
    let sh = net.server.handles().next().expect("server connection");
    let mut answers = 0;
    for _ in 0..16 {
        net.server
            .with_state(sh, |c, _| c.queue_raw_frames(Epoch::Data, &[0x01]))
            .expect("server alive");
        for d in net.server_out() {
            net.deliver_to_client(&d);
            answers += net.client_out().len();
        }
    }
    assert_eq!(
        answers, 5,
        "answers to the 1st, 2nd, 4th, 8th and 16th datagram"
    );
}

/// RFC 9000 §10.1, §18.2: with both ends advertising an idle timeout of 0 there is none;
/// a quiet connection lives on.
#[test]
fn an_idle_timeout_of_zero_on_both_ends_disables_it() {
    let none = TransportConfig {
        idle_timeout: Duration::ZERO,
        ..TransportConfig::default()
    };
    let config = server_endpoint_config(none.clone());
    let mut net = Net::with_configs(config, b"echo", none);
    net.establish();
    net.echo_round_trip(1000, 1);
    net.now += Duration::from_secs(3600);
    net.run(Duration::from_secs(10), |_| false);
    net.assert_healthy();
    net.echo_round_trip(1000, 2);
}

/// RFC 9002 §7.8: a sender whose window is full is not application-limited, even when
/// all it can send is an ACK (which went out alone in a short datagram and used to mark
/// it so: its next ACKs then did not grow the window).
#[test]
fn an_ack_sent_alone_with_a_full_window_is_not_app_limited() {
    let mut net = Net::new(TransportConfig::default());
    net.establish();
    let sh = net.server.handles().next().expect("server connection");
    net.server
        .with_state(sh, |c, _| c.stop_acknowledging())
        .expect("server alive");
    // The client fills its window with data the server never acknowledges.
    net.client
        .with_state(net.h, |c, _| {
            let id = c.open_stream(false).expect("stream credit");
            let _ = c.write(id, &[7u8; 256 * 1024]).unwrap();
        })
        .expect("client alive");
    for d in net.client_out() {
        net.deliver_to_server(&d);
    }
    assert!(!net.client_conn().is_app_limited(), "window-limited");
    // Two ack-eliciting packets from the server: the client owes an ACK at once.
    for _ in 0..2 {
        net.server
            .with_state(sh, |c, _| c.queue_raw_frames(Epoch::Data, &[0x01]))
            .expect("server alive");
        for d in net.server_out() {
            net.deliver_to_client(&d);
        }
    }
    // Polled on the connection itself: the endpoint's debug-build check polls once more,
    // which would set the mark again before we could look.
    let now = net.now;
    let (len, more, limited) = net
        .client
        .with_state(net.h, |c, _| {
            let mut buf = [0u8; 1500];
            let t = c.poll_transmit(now, &mut buf, 1).expect("the ACK");
            (t.len, t.more, c.is_app_limited())
        })
        .expect("client alive");
    assert!(len < 100 && !more, "an ACK alone: {len} bytes, more {more}");
    assert!(!limited, "still window-limited");
}

/// RFC 9000 §13.4.2: a path's ECN test marks its first ten packets, not a whole GSO
/// batch: the batch that reaches the tenth stops there, and the next goes unmarked.
#[test]
fn an_ecn_test_marks_ten_packets_even_in_a_large_gso_batch() {
    let mut net = Net::new(TransportConfig::default());
    net.establish();
    let now = net.now;
    let (batches, before, after) = net
        .client
        .with_state(net.h, |c, _| {
            let before = c.stats().ecn_marked_sent;
            // Room for several full batches.
            c.set_congestion_window(1 << 20);
            let id = c.open_stream(false).expect("stream credit");
            let _ = c.write(id, &[7u8; 256 * 1024]).unwrap();
            let mut buf = vec![0u8; 64 * 1500];
            // (codepoint, datagrams) of each batch; a PMTU probe may come first.
            let batches: Vec<(u8, usize)> = (0..4)
                .filter_map(|_| c.poll_transmit(now, &mut buf, 64))
                .map(|t| (t.ecn, t.segment_size.map_or(1, |s| t.len.div_ceil(s))))
                .collect();
            (batches, before, c.stats().ecn_marked_sent)
        })
        .expect("client alive");
    assert!(before < 10, "the test still runs: {before} marked");
    let marked: usize = batches.iter().filter(|b| b.0 == 0b10).map(|b| b.1).sum();
    assert_eq!(marked as u64, 10 - before, "{batches:?}");
    assert_eq!(after, 10, "{batches:?}");
    let last_marked = batches
        .iter()
        .rposition(|b| b.0 == 0b10)
        .expect("a marked batch");
    let next = batches.get(last_marked + 1).expect("a batch after it");
    assert_eq!(next.0, 0, "unmarked until validated: {batches:?}");
    assert!(next.1 > 1, "the window still has room: {batches:?}");
}

/// hq-interop: bytes after the request line (more than one read's worth) and a FIN that
/// comes later are read and dropped, so the stream ends on both sides and is reaped
/// (unread data used to leave it open for good, holding a stream slot).
#[test]
fn an_hq_request_with_trailing_bytes_is_reaped() {
    let mut net = hq_net();
    let id = net.open_with(b"GET");
    net.run(Duration::from_millis(50), |_| false);
    let mut rest = b" /5\r\n".to_vec();
    rest.extend_from_slice(&[b'x'; 3000]);
    net.client_do(|c| c.write(id, &rest).unwrap());
    let answered = net.run(Duration::from_secs(5), |n| {
        n.log(|l| l.echo_fin).unwrap_or(true)
    });
    assert!(answered && net.log(|l| l.echoed_len) == Some(5));
    net.client_do(|c| c.finish(id).unwrap());
    let reaped = net.run(Duration::from_secs(5), |n| {
        n.server_conn().stream_stats().open_streams == 0
    });
    assert!(reaped, "{:?}", net.server_conn().stream_stats());
    net.assert_healthy();
}

/// With idle timeouts disabled, a handshake that never completes still ends: a server
/// must not keep state for ever for a client that sent one Initial and went quiet.
#[test]
fn a_silent_handshake_ends_even_with_idle_timeouts_disabled() {
    let none = TransportConfig {
        idle_timeout: Duration::ZERO,
        ..TransportConfig::default()
    };
    let config = server_endpoint_config(none.clone());
    let mut net = Net::with_configs(config, b"echo", none);
    for d in net.client_out() {
        net.deliver_to_server(&d);
    }
    let _ = net.server_out();
    assert_eq!(net.server.connection_count(), 1);
    // The client never answers: only the server's own timers run.
    let start = net.now;
    while net.server.connection_count() > 0 && net.now < start + Duration::from_secs(600) {
        let next = net
            .server
            .next_timeout()
            .expect("a timer keeps the state bounded");
        net.now = next.max(net.now + Duration::from_millis(1));
        net.server.handle_timeouts(net.now, &mut NoEvents);
        let _ = net.server_out();
    }
    assert_eq!(
        net.server.connection_count(),
        0,
        "the half-open handshake ended"
    );
}

// ---- Retry, Version Negotiation, closing and ALPN rules ----------------------------------

/// The Destination and Source Connection IDs of the client's first Initial in `datagram`.
fn initial_cids(datagram: &[u8]) -> (ConnectionId, ConnectionId) {
    let Ok((
        Header::Long {
            ty: LongType::Initial,
            dcid,
            scid,
            ..
        },
        _,
    )) = header::parse(datagram, CID_LEN)
    else {
        panic!("not an Initial");
    };
    (dcid, scid)
}

/// (DCID, token) of every Initial packet in `datagrams`.
fn initial_tokens(datagrams: &[Vec<u8>]) -> Vec<(ConnectionId, Vec<u8>)> {
    let mut out = Vec::new();
    for d in datagrams {
        for p in split_packets(d) {
            if let Ok((
                Header::Long {
                    ty: LongType::Initial,
                    dcid,
                    token,
                    ..
                },
                _,
            )) = header::parse(p, CID_LEN)
            {
                out.push((dcid, token.to_vec()));
            }
        }
    }
    out
}

/// Where each of `sent` went, and its size (for failure messages).
fn destinations(sent: &[(SocketAddr, Vec<u8>)]) -> Vec<(SocketAddr, usize)> {
    sent.iter().map(|(dst, d)| (*dst, d.len())).collect()
}

/// A Retry (RFC 9000 §17.2.5) to the client whose first Initial went from `client_scid`
/// to `odcid`, choosing `scid`, with a valid Retry Integrity Tag (RFC 9001 §5.8): what a
/// server (or anyone who saw that Initial) could send.
fn craft_retry(
    client_scid: &ConnectionId,
    scid: &ConnectionId,
    odcid: &ConnectionId,
    token: &[u8],
) -> Vec<u8> {
    let mut buf = vec![0u8; 256];
    let n = header::write_retry_without_tag(&mut buf, VERSION_1, client_scid, scid, token, 0x5)
        .unwrap();
    buf.truncate(n);
    let tag = retry_integrity_tag(VERSION_1, odcid, &buf);
    buf.extend_from_slice(&tag);
    buf
}

/// A Version Negotiation packet answering a client Initial from `client_scid` to `odcid`
/// (the CIDs echoed, swapped, RFC 9000 §17.2.1) that offers only a version we lack.
fn craft_version_negotiation(client_scid: &ConnectionId, odcid: &ConnectionId) -> Vec<u8> {
    let mut buf = vec![0u8; 128];
    let n = header::write_version_negotiation(&mut buf, client_scid, odcid, &[0x5a6b_7c8d], 0x21)
        .unwrap();
    buf.truncate(n);
    buf
}

/// RFC 9000 §17.2.5.1: "A client MUST discard a Retry packet that contains a Source
/// Connection ID field that is identical to the Destination Connection ID field of its
/// Initial packet." A validly sealed Retry echoing the client's original DCID changes
/// nothing: the client sends no Initial carrying its token, and the handshake completes
/// as if it never came. Control: the same Retry under a fresh SCID is acted on.
#[test]
fn a_retry_whose_scid_echoes_the_original_dcid_is_discarded() {
    let token = b"retry token from nowhere";
    // Control: well formed and validly sealed, the Retry restarts the client.
    let mut net = Net::new(TransportConfig::default());
    let first = net.client_out();
    let (odcid, client_scid) = initial_cids(&first[0]);
    let fresh = cid(&[0x77; 8]);
    net.deliver_to_client(&craft_retry(&client_scid, &fresh, &odcid, token));
    let again = initial_tokens(&net.client_out());
    assert!(
        again.contains(&(fresh, token.to_vec())),
        "control: the Retry was not acted on: {again:?}"
    );

    let mut net = Net::new(TransportConfig::default());
    let first = net.client_out();
    let (odcid, client_scid) = initial_cids(&first[0]);
    net.deliver_to_client(&craft_retry(&client_scid, &odcid, &odcid, token));
    let after = net.client_out();
    let restarted: Vec<_> = initial_tokens(&after)
        .into_iter()
        .filter(|(_, t)| !t.is_empty())
        .collect();
    assert!(
        restarted.is_empty(),
        "the client restarted with the Retry's token: {restarted:?}"
    );
    for d in first.iter().chain(&after) {
        net.deliver_to_server(d);
    }
    net.establish();
    assert!(
        initial_tokens(&net.c2s).iter().all(|(_, t)| t.is_empty()),
        "an Initial carried a token"
    );
    assert_eq!(net.server.stats().invalid_tokens, 0);
    net.assert_healthy();
    net.echo_round_trip(1000, 1);
}

/// RFC 9000 §6.2: "A client MUST discard any Version Negotiation packet if it has received
/// and successfully processed any other packet", a Retry included. A Version Negotiation
/// that arrives after the server's Retry does not abort the connection attempt; the
/// handshake completes. Control: the same packet before any server packet ends it.
#[test]
fn a_version_negotiation_after_a_retry_is_ignored() {
    // Control: before anything else from the server, it ends the attempt.
    let mut net = Net::new(TransportConfig::default());
    let first = net.client_out();
    let (odcid, client_scid) = initial_cids(&first[0]);
    net.deliver_to_client(&craft_version_negotiation(&client_scid, &odcid));
    assert!(
        net.client.conn(net.h).is_none_or(|c| c.is_closing()),
        "control: the Version Negotiation was not acted on"
    );

    let mut cfg = server_endpoint_config(TransportConfig::default());
    cfg.require_retry = true;
    let mut net = Net::with_server(cfg);
    let first = net.client_out();
    let (odcid, client_scid) = initial_cids(&first[0]);
    for d in &first {
        net.deliver_to_server(d);
    }
    let retry = net.server_out();
    assert_eq!(retry.len(), 1);
    assert_eq!(kind(&retry[0]), Some("retry"));
    net.deliver_to_client(&retry[0]);
    net.deliver_to_client(&craft_version_negotiation(&client_scid, &odcid));
    assert_eq!(
        net.log(|l| l.closed.clone()),
        Some(None),
        "the Version Negotiation after the Retry closed the connection"
    );
    assert!(!net.client_conn().is_closing());
    net.establish();
    assert_eq!(net.server.stats().retries_sent, 1);
    net.assert_healthy();
    net.echo_round_trip(1000, 1);
}

/// RFC 9001 §8.1: a server that cannot agree on an application protocol closes with the
/// transport error 0x0178 (CRYPTO_ERROR 0x100 + TLS alert 120, no_application_protocol),
/// in a transport CONNECTION_CLOSE (type 0x1c, which carries a frame type: `app: false`),
/// not an application close (0x1d). Two ways the server's TLS can finish with no
/// application for the connection: neither side offers ALPN, or the ALPN negotiated has
/// no application behind it.
#[test]
fn a_server_with_no_application_for_the_alpn_closes_with_0x0178() {
    // Neither side offers ALPN: rustls lets that through (nothing to agree on).
    let cert = generate_self_signed(&["localhost".into()]).unwrap();
    let stls = server_config(cert, &[]).unwrap();
    let mut no_alpn = Net::with_server(EndpointConfig::new(TransportConfig::default(), Some(stls)));
    no_alpn.client = Endpoint::new(EndpointConfig::new(TransportConfig::default(), None));
    let ctls = client_config(ServerVerification::Insecure, &[]).unwrap();
    no_alpn.h = no_alpn
        .client
        .connect(no_alpn.now, ctls, "localhost", no_alpn.saddr, VERSION_1)
        .unwrap();
    // TLS agrees on "echo", but the server's applications do not include it.
    let mut no_app = Net::new(TransportConfig::default());
    no_app.apps.alpns = vec![b"perf".to_vec()];
    for (name, mut net) in [("no ALPN", no_alpn), ("no application", no_app)] {
        let reason = net.wait_closed();
        assert!(
            matches!(
                reason,
                CloseReason::Peer {
                    code: 0x0178,
                    app: false,
                    ..
                }
            ),
            "{name}: {reason:?}"
        );
        assert!(net.server_conn().is_closing(), "{name}");
    }
}

/// RFC 9001 §5.7: "A server MUST NOT process incoming 1-RTT protected packets before the
/// TLS handshake is complete", and that holds while it closes, too. A STREAM frame in the
/// client's first Handshake packet (ahead of its Finished) makes the server close before
/// its handshake completed; the client's first 1-RTT packet (stream data) then reaching
/// the closing server is not decrypted: not counted as received and, being nothing the
/// connection processed, not answered with another CONNECTION_CLOSE (RFC 9000 §10.2.1).
#[test]
fn a_server_closing_before_the_handshake_completed_drops_1rtt_packets() {
    let mut net = Net::new(TransportConfig::default());
    net.queue_raw(Epoch::Handshake, &encode(&[stream(0, 0, b"early", true)]));
    net.queue_raw(Epoch::Data, &encode(&[stream(4, 0, b"data", true)]));
    let mut one_rtt = Vec::new();
    for _ in 0..10 {
        for d in net.client_out() {
            one_rtt.extend(
                split_packets(&d)
                    .into_iter()
                    .filter(|p| kind(p) == Some("1-rtt"))
                    .map(|p| p.to_vec()),
            );
            net.deliver_to_server(&d);
        }
        if net.server.connection_count() == 1 && net.server_conn().is_closing() {
            break;
        }
        for d in net.server_out() {
            net.deliver_to_client(&d);
        }
    }
    assert!(net.server_conn().is_closing(), "the server closed");
    assert!(
        !net.server_conn().is_established(),
        "before its handshake completed"
    );
    assert!(
        !one_rtt.is_empty(),
        "the client sent 1-RTT packets with its Finished"
    );
    // The server's first CONNECTION_CLOSE goes out (and is lost).
    assert!(!net.server_out().is_empty());
    let received = net.server_conn().packets_received();
    for p in &one_rtt {
        net.deliver_to_server(p);
    }
    assert_eq!(
        net.server_conn().packets_received(),
        received,
        "a 1-RTT packet was decrypted while closing before the handshake completed"
    );
    assert!(
        net.server_out().is_empty(),
        "a 1-RTT packet was processed (and answered)"
    );
    let st = net.server_conn().stream_stats();
    assert_eq!((st.open_streams, st.data_received), (0, 0));
}

/// RFC 9000 §10.2.1: in the closing state only CONNECTION_CLOSE matters. A non-probing
/// packet from a new address (the peer, unaware of the close, after a NAT rebinding) does
/// not migrate the connection: its address stays, nothing goes to the new address (no
/// PATH_CHALLENGE; §10.2.1 allows discarding packets from an unvalidated address), and
/// all that answers it is the CONNECTION_CLOSE, once, to the validated address.
#[test]
fn a_closing_connection_does_not_follow_a_new_address() {
    let mut net = Net::new(TransportConfig::default());
    net.establish();
    net.run(Duration::from_millis(200), |_| false);
    net.server.close_all(net.now, 9, "server done");
    // The close goes out and is lost: the client keeps sending.
    assert!(!net.server_out().is_empty());
    let moved: SocketAddr = "10.0.0.1:6003".parse().unwrap();
    net.queue_raw(Epoch::Data, &[0x01]); // PING: a non-probing packet
    let out = net.client_out();
    assert!(!out.is_empty());
    for d in &out {
        let mut copy = d.clone();
        let mut disp = AppDispatcher { factory: &net.apps };
        net.server
            .handle_datagram(net.now, rx("10.0.0.1:6003"), &mut copy, &mut disp);
    }
    assert_eq!(
        net.server_conn().remote_addr(),
        net.caddr,
        "migrated while closing"
    );
    let sent = drain_to(&mut net.server, net.now);
    assert!(
        sent.iter().all(|(dst, _)| *dst != moved),
        "sent to the new address while closing: {:?}",
        destinations(&sent)
    );
    assert!(sent.len() <= 1, "{:?}", destinations(&sent));
    // What went out is the close: the client learns the server's code from it.
    for (_, d) in &sent {
        net.deliver_to_client(d);
    }
    if !sent.is_empty() {
        let reason = net.log(|l| l.closed.clone()).flatten();
        assert!(
            matches!(
                reason,
                Some(CloseReason::Peer {
                    code: 9,
                    app: true,
                    ..
                })
            ),
            "{reason:?}"
        );
    }
}

/// RFC 9000 §10.2.1: a closing endpoint sends nothing but CONNECTION_CLOSE, so path frames
/// it owed elsewhere before closing stay unsent: the PATH_RESPONSE to a path the peer was
/// probing, and the PATH_CHALLENGE to the path a migrating peer left (§9.3.3).
#[test]
fn a_closing_connection_sends_no_path_frames_elsewhere() {
    // A probe from another address, answered on that path when the server is open (see
    // path_response_goes_back_on_the_path_the_challenge_came_by); the server closes first.
    let mut net = Net::new(TransportConfig::default());
    net.establish();
    net.run(Duration::from_millis(200), |_| false);
    let probe_addr: SocketAddr = "10.0.0.1:6004".parse().unwrap();
    net.client_do(|c| c.stop_acknowledging());
    net.queue_raw(Epoch::Data, &[0x1a, 1, 2, 3, 4, 5, 6, 7, 8]); // PATH_CHALLENGE
    let out = net.client_out();
    assert_eq!(out.len(), 1, "the challenge alone");
    let mut copy = out[0].clone();
    let mut disp = AppDispatcher { factory: &net.apps };
    // Delivered, not answered yet: the server closes before it sends anything.
    net.server
        .handle_datagram(net.now, rx("10.0.0.1:6004"), &mut copy, &mut disp);
    net.server.close_all(net.now, 9, "server done");
    let sent = drain_to(&mut net.server, net.now);
    assert!(!sent.is_empty(), "the close goes out");
    assert!(
        sent.iter().all(|(dst, _)| *dst != probe_addr),
        "a PATH_RESPONSE went to the probed path while closing: {:?}",
        destinations(&sent)
    );

    // The client moves; the server follows and owes the path it left a PATH_CHALLENGE,
    // but closes before sending it.
    let mut net = Net::new(TransportConfig::default());
    net.establish();
    net.run(Duration::from_millis(200), |_| false);
    let moved: SocketAddr = "10.0.0.1:6005".parse().unwrap();
    net.queue_raw(Epoch::Data, &[0x01]); // PING: a non-probing packet
    for d in net.client_out() {
        let mut copy = d.clone();
        let mut disp = AppDispatcher { factory: &net.apps };
        net.server
            .handle_datagram(net.now, rx("10.0.0.1:6005"), &mut copy, &mut disp);
    }
    assert_eq!(net.server_conn().remote_addr(), moved, "followed the move");
    net.server.close_all(net.now, 9, "server done");
    let sent = drain_to(&mut net.server, net.now);
    assert!(!sent.is_empty(), "the close goes out");
    assert!(
        sent.iter().all(|(dst, _)| *dst == moved),
        "a PATH_CHALLENGE went to the old path while closing: {:?}",
        destinations(&sent)
    );
}

/// Mints zero-length CIDs: a client that uses none (RFC 9000 §5.1).
struct ZeroLengthCids;

impl ConnectionIdGenerator for ZeroLengthCids {
    fn generate(&mut self) -> ConnectionId {
        ConnectionId::new(&[]).unwrap()
    }
    fn reset_token(&self, _: &ConnectionId) -> [u8; 16] {
        [0; 16]
    }
    fn cid_len(&self) -> usize {
        0
    }
}

/// RFC 9000 §9.5: a probe under another of our CIDs is answered under another CID of the
/// peer's, but a peer using zero-length CIDs has none to give (§5.1.1: it cannot be sent
/// NEW_CONNECTION_ID), and an empty CID links nothing: the PATH_RESPONSE goes back on the
/// probed path under the empty CID (it went unanswered).
#[test]
fn a_probe_from_a_peer_with_zero_length_cids_is_answered_under_the_empty_cid() {
    let caddr: SocketAddr = "10.0.0.1:5000".parse().unwrap();
    let saddr: SocketAddr = "10.0.0.2:4433".parse().unwrap();
    let probe_addr: SocketAddr = "10.0.0.1:6006".parse().unwrap();
    let apps = BuiltinApps {
        alpns: vec![b"echo".to_vec()],
        root: None,
    };
    let mut server: Endpoint<AppSlot> =
        Endpoint::new(server_endpoint_config(TransportConfig::default()));
    let mut now = Instant::now();
    let ctls = client_config(ServerVerification::Insecure, &[b"echo".to_vec()]).unwrap();
    let mut client = Connection::new_client(
        Arc::new(TransportConfig::default()),
        ctls,
        "localhost",
        &VersionOffer::preferring(&[VERSION_1]).unwrap(),
        saddr,
        cid(&[0x3c; 16]),
        Box::new(ZeroLengthCids),
        now,
    )
    .unwrap();
    let deliver = |server: &mut Endpoint<AppSlot>, now: Instant, src: SocketAddr, d: &[u8]| {
        let mut copy = d.to_vec();
        let meta = RxMeta {
            src,
            dst: saddr,
            ecn: 0,
        };
        let mut disp = AppDispatcher { factory: &apps };
        server.handle_datagram(now, meta, &mut copy, &mut disp);
    };
    let client_out = |client: &mut Connection, now: Instant| {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 2048];
        while let Some(t) = client.poll_transmit(now, &mut buf, 1) {
            out.push(buf[..t.len].to_vec());
        }
        while client.poll_event().is_some() {}
        while client.poll_cid_event().is_some() {}
        out
    };
    // Handshake and some quiet after it (path MTU discovery settles), on a virtual clock.
    let end = now + Duration::from_millis(300);
    let mut smallest_short = usize::MAX;
    loop {
        let mut moved = 0;
        for d in client_out(&mut client, now) {
            moved += 1;
            deliver(&mut server, now, caddr, &d);
        }
        for (dst, mut d) in drain_to(&mut server, now) {
            assert_eq!(dst, caddr);
            moved += 1;
            if d[0] & 0x80 == 0 {
                smallest_short = smallest_short.min(d.len());
            }
            client.handle_datagram(now, saddr, 0, &mut d);
        }
        if now >= end {
            break;
        }
        if moved > 0 {
            now += Duration::from_micros(50);
            continue;
        }
        now = match [client.poll_timeout(), server.next_timeout()]
            .into_iter()
            .flatten()
            .min()
        {
            Some(t) if t > now => t.min(end),
            Some(_) => now + Duration::from_micros(10),
            None => end,
        };
        client.handle_timeout(now);
        let mut disp = AppDispatcher { factory: &apps };
        server.handle_timeouts(now, &mut disp);
    }
    let confirmed = client.is_handshake_confirmed()
        && server
            .handles()
            .filter_map(|h| server.conn(h))
            .any(|c| c.is_handshake_confirmed());
    assert!(confirmed, "handshake did not complete");
    // RFC 9000 §10.3: even an ACK-only 1-RTT packet to an empty CID is 22 bytes longer than
    // the server's 12-byte CIDs, so a stateless reset in answer can be one byte shorter.
    assert!(
        (12 + 22..usize::MAX).contains(&smallest_short),
        "smallest 1-RTT datagram {smallest_short} bytes"
    );
    let sh = server.handles().next().expect("server connection");
    fn server_conn(server: &Endpoint<AppSlot>, h: ConnHandle) -> &Connection {
        server.conn(h).expect("server connection")
    }
    assert!(
        server_conn(&server, sh).active_remote_cid().is_empty(),
        "the server sends to the client's zero-length CID"
    );
    // The probe: a PATH_CHALLENGE alone, from another address, under a spare CID of the
    // server's.
    client.stop_acknowledging();
    assert!(
        client.switch_to_spare_remote_cid(),
        "the server issued spares"
    );
    client.queue_raw_frames(Epoch::Data, &[0x1a, 8, 7, 6, 5, 4, 3, 2, 1]);
    let out = client_out(&mut client, now);
    assert_eq!(out.len(), 1, "the challenge alone");
    deliver(&mut server, now, probe_addr, &out[0]);
    let sent = drain_to(&mut server, now);
    let answers: Vec<&Vec<u8>> = sent
        .iter()
        .filter(|(dst, _)| *dst == probe_addr)
        .map(|(_, d)| d)
        .collect();
    assert_eq!(
        answers.len(),
        1,
        "the probe went unanswered: {:?}",
        destinations(&sent)
    );
    let Ok((Header::Short { dcid, .. }, _)) = header::parse(answers[0], 0) else {
        panic!("a 1-RTT packet");
    };
    assert!(dcid.is_empty(), "answered under {dcid:?}");
    assert_eq!(
        server_conn(&server, sh).remote_addr(),
        caddr,
        "no migration"
    );
    assert!(!server_conn(&server, sh).is_closing());
}

// ---- what the endpoint vouches for to the datapath -----------------------------------------

/// `Endpoint::source_authenticated` lets a datapath trust link-layer facts learnt from a
/// datagram (the XDP path's peer MAC): only a packet of a connection that opened under its
/// keys, from the connection's current peer address, counts. Not a first Initial (anyone
/// can seal one), a replay, a forgery under a known CID, an unknown CID, or a probe from
/// another address.
#[test]
fn only_fresh_authenticated_packets_from_the_peer_vouch_for_its_address() {
    let mut net = Net::new(TransportConfig::default());
    let first = net.client_out();
    assert!(
        net.deliver_to_server(&first[0]).is_some(),
        "connection accepted"
    );
    assert!(!net.server.source_authenticated(), "a first Initial");
    net.establish();

    net.queue_raw(Epoch::Data, &[0x01]); // PING
    let out = net.client_out();
    net.deliver_to_server(&out[0]);
    assert!(net.server.source_authenticated(), "a fresh 1-RTT packet");
    net.deliver_to_server(&out[0]);
    assert!(!net.server.source_authenticated(), "a replay");

    net.queue_raw(Epoch::Data, &[0x01]);
    let mut forged = net.client_out().remove(0);
    let last = forged.len() - 1;
    forged[last] ^= 0x01;
    net.deliver_to_server(&forged);
    assert!(!net.server.source_authenticated(), "a bit-flipped packet");

    let mut unknown = vec![0x40u8; 64];
    unknown[1..9].copy_from_slice(&[0xee; 8]);
    net.deliver_to_server(&unknown);
    assert!(!net.server.source_authenticated(), "an unknown CID");
    net.server_out(); // its stateless reset

    // The client vouches for the server's packets the same way.
    net.queue_raw(Epoch::Data, &[0x01]);
    let ping = net.client_out().remove(0);
    net.deliver_to_server(&ping);
    let answer = net.server_out();
    assert!(!answer.is_empty());
    net.deliver_to_client(&answer[0]);
    assert!(net.client.source_authenticated(), "the server's answer");
    // A probe (PATH_CHALLENGE alone) from elsewhere authenticates but does not come from
    // the peer's address: it vouches for nothing until the peer moves there.
    let mut challenge = vec![0x1a];
    challenge.extend_from_slice(&[7u8; 8]);
    net.client_do(|c| c.stop_acknowledging()); // no ACK frame: it would make it non-probing
    net.queue_raw(Epoch::Data, &challenge);
    let probe = net.client_out().remove(0);
    net.client_do(|c| c.resume_acknowledging());
    let mut copy = probe.clone();
    let mut disp = AppDispatcher { factory: &net.apps };
    net.server
        .handle_datagram(net.now, rx("10.0.0.1:6000"), &mut copy, &mut disp);
    assert!(
        !net.server.source_authenticated(),
        "a probe from another address"
    );
    assert_eq!(net.server_conn().remote_addr(), net.caddr);

    net.assert_healthy();
}

// ---- DATAGRAM frames (RFC 9221) -------------------------------------------------------------

/// RFC 9221 §3: a DATAGRAM frame larger than the max_datagram_frame_size we advertised is
/// a PROTOCOL_VIOLATION; one at the limit (type, 2-byte length and payload: exactly 100
/// bytes here) is delivered, and echoed by `echo`.
#[test]
fn a_datagram_frame_over_the_advertised_size_is_a_protocol_violation() {
    let server = TransportConfig {
        max_datagram_frame_size: Some(100),
        ..TransportConfig::default()
    };
    let client = TransportConfig {
        max_datagram_frame_size: Some(65535),
        ..TransportConfig::default()
    };
    let payload = [0x5a; 97]; // 1 type byte + 2 length bytes + 97 = 100
    let mut net = Net::with_configs(
        server_endpoint_config(server.clone()),
        b"echo",
        client.clone(),
    );
    net.establish();
    net.queue_raw(Epoch::Data, &encode(&[Frame::Datagram { data: &payload }]));
    net.run(Duration::from_millis(200), |n| {
        n.log(|l| l.datagrams).unwrap_or(0) > 0
    });
    net.assert_healthy();
    let mut got = [0u8; 200];
    let echoed = net.client_do(|c| c.recv_datagram(&mut got));
    assert_eq!(echoed, Ok(Some(97)), "the datagram at the limit came back");
    assert_eq!(&got[..97], &payload[..]);

    // One byte more: 101 bytes with its length field, though type and payload alone fit.
    let mut net = Net::with_configs(server_endpoint_config(server), b"echo", client);
    net.establish();
    let over = [0x5a; 98];
    net.queue_raw(Epoch::Data, &encode(&[Frame::Datagram { data: &over }]));
    match net.wait_closed() {
        CloseReason::Peer {
            code: 0x0a,
            app: false,
            ..
        } => {}
        other => panic!("wanted PROTOCOL_VIOLATION, got {other:?}"),
    }
}

/// A peer that floods datagrams at an application that never reads them holds a bounded
/// queue (the oldest go), not memory without bound.
#[test]
fn unread_datagrams_cannot_grow_the_receive_queue() {
    let client = TransportConfig {
        max_datagram_frame_size: Some(65535),
        datagram_buffer: 4096,
        ..TransportConfig::default()
    };
    let server = TransportConfig {
        max_datagram_frame_size: Some(65535),
        ..TransportConfig::default()
    };
    let mut net = Net::with_configs(server_endpoint_config(server), b"echo", client);
    net.establish();
    // The echo server sends each of these back; the client's log counts events but
    // nobody reads: its 4 KiB queue keeps only the newest.
    for i in 0..200u8 {
        net.client_do(|c| c.send_datagram(&[i; 1000])).unwrap();
        net.run(Duration::from_millis(2), |_| false);
    }
    net.run(Duration::from_millis(200), |_| false);
    net.assert_healthy();
    assert_eq!(net.server_conn().datagrams_dropped(), (0, 0), "all echoed");
    let (dropped_in, _) = net.client_conn().datagrams_dropped();
    assert!(dropped_in >= 190, "dropped only {dropped_in}");
    let mut buf = [0u8; 2048];
    let mut kept = Vec::new();
    while let Ok(Some(n)) = net.client_do(|c| c.recv_datagram(&mut buf)) {
        kept.push((n, buf[0]));
    }
    assert!(!kept.is_empty() && kept.len() <= 4, "{kept:?}");
    assert!(
        kept.iter().all(|&(n, first)| n == 1000 && first >= 190),
        "{kept:?}"
    );
}

/// Frames that go whole or not at all and do not fit the packet's remaining room (here the
/// test hook's raw frames behind a large datagram) wait for the next packet: the packet
/// must not claim everything was sent (the endpoint's debug check re-polls such claims;
/// the endpoint fuzzer found this one).
#[test]
fn frames_left_for_the_next_packet_are_not_forgotten() {
    let transport = TransportConfig {
        max_datagram_frame_size: Some(65535),
        ..TransportConfig::default()
    };
    let mut net = Net::with_configs(
        server_endpoint_config(transport.clone()),
        b"echo",
        transport,
    );
    net.establish();
    let before = net.server_conn().packets_received();
    net.client_do(|c| c.send_datagram(&[7; 1000])).unwrap();
    let mut raw = vec![0x01]; // PING, then PADDING: 401 bytes that no longer fit
    raw.resize(401, 0);
    net.queue_raw(Epoch::Data, &raw);
    let out = net.client_out();
    assert!(
        out.len() >= 2,
        "the datagram, then the raw frames: {}",
        out.len()
    );
    for d in &out {
        net.deliver_to_server(d);
    }
    assert_eq!(
        net.server_conn().packets_received(),
        before + out.len() as u64
    );
    assert_eq!(net.client_conn().raw_frames_pending(Epoch::Data), 0);
    net.assert_healthy();
}

/// RFC 9000 §9: only clients move. A client discards packets from any address but its
/// server's, however well they decrypt: a copy of a real server packet sent from elsewhere
/// changes nothing, the same packet from the server's address is processed.
#[test]
fn a_client_ignores_its_servers_packets_from_another_address() {
    let mut net = Net::new(TransportConfig::default());
    net.establish();
    let sh = net.server.handles().next().unwrap();
    net.server
        .with_state(sh, |c, _| c.queue_raw_frames(Epoch::Data, &[0x01]));
    let out = net.server_out();
    assert!(!out.is_empty());
    let before = net.client_conn().packets_received();
    let mut copy = out[0].clone();
    let meta = RxMeta {
        src: "10.0.0.66:4433".parse().unwrap(),
        dst: net.caddr,
        ecn: 0,
    };
    net.client
        .handle_datagram(net.now, meta, &mut copy, &mut ClientEvents);
    assert_eq!(
        net.client_conn().packets_received(),
        before,
        "from elsewhere: dropped"
    );
    assert!(!net.client.source_authenticated());
    net.deliver_to_client(&out[0]);
    assert_eq!(net.client_conn().packets_received(), before + 1);
    assert!(net.client.source_authenticated());
    net.assert_healthy();
}

/// A first flight from a client that will never answer: what a forged source looks like.
fn forged_first_flight(now: Instant) -> Vec<Vec<u8>> {
    let ctls = client_config(ServerVerification::Insecure, &[b"echo".to_vec()]).unwrap();
    let mut forger: Endpoint<ClientLog> =
        Endpoint::new(EndpointConfig::new(TransportConfig::default(), None));
    forger
        .connect(
            now,
            ctls,
            "localhost",
            "10.0.0.2:4433".parse().unwrap(),
            VERSION_1,
        )
        .unwrap();
    drain(&mut forger, now)
}

/// RFC 9000 §8.1: a flood of Initials from forged sources. Each opens a connection that
/// waits for an address validation that never comes (a genuine client's is validated by
/// its first Handshake packet); past `EndpointConfig::retry_above_unvalidated` of them
/// the server answers further first Initials with a stateless Retry and keeps no state for
/// them. A genuine client then completes through the Retry (its Retry token validates it,
/// so it is not counted), and once the forged connections have timed out, first Initials
/// are accepted directly again.
#[test]
fn a_flood_of_forged_initials_is_answered_with_retry_past_the_limit() {
    let mut cfg = server_endpoint_config(TransportConfig::default());
    cfg.retry_above_unvalidated = Some(4);
    // No NEW_TOKEN tokens: one would let the second client skip the Retry (as it should,
    // `pair::a_new_token_lets_the_next_connection_skip_retry`).
    cfg.new_token_lifetime = Duration::ZERO;
    let mut net = Net::with_server(cfg);
    net.establish();
    assert_eq!(net.server.unvalidated_connection_count(), 0, "validated");
    let forge = |net: &mut Net, i: usize| {
        let src = format!("192.0.2.{}:{}", 10 + i, 40_000 + i);
        for d in forged_first_flight(net.now) {
            let mut copy = d.clone();
            let mut disp = AppDispatcher { factory: &net.apps };
            net.server
                .handle_datagram(net.now, rx(&src), &mut copy, &mut disp);
        }
        // What the server sends goes to the forged address: nobody answers.
        drain(&mut net.server, net.now);
    };
    for i in 0..4 {
        forge(&mut net, i);
    }
    let s = net.server.stats();
    assert_eq!((s.connections_accepted, s.retries_sent), (5, 0), "{s:?}");
    assert_eq!(net.server.unvalidated_connection_count(), 4);
    for i in 4..20 {
        forge(&mut net, i);
    }
    let s = net.server.stats();
    assert_eq!((s.connections_accepted, s.retries_sent), (5, 16), "{s:?}");
    assert_eq!(net.server.connection_count(), 5, "no state for the retried");

    // A second genuine client goes through the Retry.
    let ctls = client_config(ServerVerification::Insecure, &[b"echo".to_vec()]).unwrap();
    let h2 = net
        .client
        .connect(net.now, ctls, "localhost", net.saddr, VERSION_1)
        .unwrap();
    let ok = net.run(Duration::from_secs(10), |n| {
        n.client
            .conn(h2)
            .is_some_and(|c| c.is_handshake_confirmed())
    });
    assert!(ok, "the genuine client's handshake did not complete");
    let s = net.server.stats();
    assert_eq!((s.connections_accepted, s.retries_sent), (6, 17), "{s:?}");
    assert_eq!(net.server.unvalidated_connection_count(), 4);
    net.echo_round_trip(10_000, 5);

    // The forged connections time out within 10 s of their last packet, well before the
    // idle timeout (30 s): a handshake whose address is not validated gets no longer.
    // Then a first Initial is accepted without Retry.
    net.run(Duration::from_secs(11), |_| false);
    assert_eq!(net.server.unvalidated_connection_count(), 0);
    assert_eq!(net.server.connection_count(), 2, "the genuine ones stay");
    forge(&mut net, 20);
    let s = net.server.stats();
    assert_eq!((s.connections_accepted, s.retries_sent), (7, 17), "{s:?}");
    assert_eq!(net.server.unvalidated_connection_count(), 1);
}

/// RFC 9000 §10.1: an idle timeout is never shorter than 3 PTOs, and that holds for the
/// shorter limit of a handshake whose client has not proved its address too. A client
/// 3 s away (its Initial ACK shows the server that round trip) whose Handshake packets are
/// all lost is kept for 3 PTOs of silence (tens of seconds here), not cut off after 10 s.
#[test]
fn an_unvalidated_handshake_on_a_slow_path_gets_three_ptos() {
    let mut net = Net::new(TransportConfig::default());
    for d in net.client_out() {
        net.deliver_to_server(&d);
    }
    for d in net.server_out() {
        net.deliver_to_client(&d);
    }
    // The client's answer arrives 3 s later, without its Handshake packets: only the
    // Initial (an ACK) gets through.
    net.now += Duration::from_secs(3);
    let answer = net.client_out();
    let initial_only: Vec<Vec<u8>> = answer
        .iter()
        .filter_map(|d| {
            let (h, len) = header::parse(d, 0).ok()?;
            matches!(
                h,
                Header::Long {
                    ty: LongType::Initial,
                    ..
                }
            )
            .then(|| {
                // Padded to 1200 bytes after the packet, as a server requires of a
                // datagram with an Initial (RFC 9000 §14.1).
                let mut p = d[..len].to_vec();
                p.resize(1200, 0);
                p
            })
        })
        .collect();
    assert!(
        !initial_only.is_empty(),
        "the client acknowledged our Initial"
    );
    for d in &initial_only {
        net.deliver_to_server(d);
    }
    assert_eq!(net.server.unvalidated_connection_count(), 1);
    assert!(
        net.server_conn().rtt() > Duration::from_secs(2),
        "a 3 s sample"
    );
    // 20 s of silence from the client: past the 10 s limit, even counted from the
    // server's own probe, which restarts the timer once (§10.1); within 3 PTOs.
    let end = net.now + Duration::from_secs(20);
    while net.now < end {
        let mut disp = AppDispatcher { factory: &net.apps };
        net.server.handle_timeouts(net.now, &mut disp);
        drain(&mut net.server, net.now);
        net.now += Duration::from_millis(100);
    }
    assert_eq!(net.server.connection_count(), 1, "kept for 3 PTOs");
    // And it does end.
    let end = net.now + Duration::from_secs(60);
    while net.now < end && net.server.connection_count() > 0 {
        let mut disp = AppDispatcher { factory: &net.apps };
        net.server.handle_timeouts(net.now, &mut disp);
        drain(&mut net.server, net.now);
        net.now += Duration::from_millis(100);
    }
    assert_eq!(net.server.connection_count(), 0);
    assert_eq!(net.server.unvalidated_connection_count(), 0);
}
