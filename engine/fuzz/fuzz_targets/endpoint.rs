//! Arbitrary input against live endpoints: the first byte picks where it goes.
//!
//! - `% 5 == 0`: the rest is a datagram for a standalone server endpoint (no connection
//!   yet: Initial acceptance, Version Negotiation, stateless reset, drops);
//! - `% 5 == 1`: a datagram for the server side of an established pair, with its DCID set
//!   to the server connection's CID when there is room, so it reaches the connection;
//! - `% 5 == 2`: the same towards the client side;
//! - `% 5 == 3`: the rest is frames the client sends verbatim in a real 1-RTT packet
//!   (`Connection::queue_raw_frames`), so the server's frame processing sees them decrypted;
//! - `% 5 == 4`: a fresh client offering v2 then v1 gets a Version Negotiation packet that
//!   echoes its connection IDs and lists the versions in the input (a count byte, then
//!   4-byte versions), then the rest as a datagram; it may start over in another version
//!   (RFC 9368 §2.1), but only in one it supports and only once.
//!
//! The server accepts early data (`Resumption::EarlyData`), so 0-RTT datagrams for no
//! connection are kept for one their Initial may create (bounded; see
//! `endpoint::early_packets`).
//!
//! The pair lives across inputs (a handshake per input would dominate); when a frame input
//! closes it, a new pair is built for the next one. Nothing may panic, and the server's
//! connection table stays bounded.
#![no_main]

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use quench::conn::{Connection, Event, TransportConfig, VersionOffer};
use quench::endpoint::{ConnHandle, Endpoint, EndpointConfig, EventHandler};
use quench::io::RxMeta;
use quench::tls::certs::generate_self_signed;
use quench::tls::session::{
    client_config, server_config_with_provider, Resumption, ServerVerification,
};
use quench::wire::header::{self, Header, SUPPORTED_VERSIONS, VERSION_1, VERSION_2};
use quench::Epoch;

const CID_LEN: usize = 12;

/// Ignores everything but datagrams, which it echoes (so queued DATAGRAM frames go out).
struct Ignore;
impl EventHandler<()> for Ignore {
    fn on_event(&mut self, _: Instant, conn: &mut Connection, _: &mut (), ev: Event) {
        if ev == Event::Datagram {
            let mut buf = [0u8; 1500];
            while let Ok(Some(n)) = conn.recv_datagram(&mut buf) {
                let _ = conn.send_datagram(&buf[..n]);
            }
        }
    }
}

/// Both sides take DATAGRAM frames (RFC 9221) of up to 1200 bytes, through small queues.
fn transport() -> TransportConfig {
    TransportConfig {
        max_datagram_frame_size: Some(1200),
        datagram_buffer: 8192,
        ..TransportConfig::default()
    }
}

fn server_endpoint() -> Endpoint<()> {
    let cert = generate_self_signed(&["localhost".into()]).expect("certificate");
    let tls = server_config_with_provider(
        cert,
        &[b"fuzz".to_vec()],
        rustls::crypto::aws_lc_rs::default_provider(),
        Resumption::EarlyData { sessions: 64 },
    )
    .expect("server TLS");
    let mut config = EndpointConfig::new(transport(), Some(tls));
    // Clients that list v2 are moved to it (RFC 9368 §2.3), the pair's included.
    config.preferred_versions = vec![VERSION_2];
    Endpoint::new(config)
}

fn drain(ep: &mut Endpoint<()>, now: Instant, buf: &mut [u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(t) = ep.poll_transmit(now, buf, 1) {
        out.push(buf[..t.len].to_vec());
    }
    out
}

struct Pair {
    now: Instant,
    client: Endpoint<()>,
    server: Endpoint<()>,
    h: ConnHandle,
    caddr: SocketAddr,
    saddr: SocketAddr,
    /// DCIDs each side's packets carry (the peer's CID).
    to_server_cid: Vec<u8>,
    to_client_cid: Vec<u8>,
    buf: Vec<u8>,
}

impl Pair {
    fn new() -> Self {
        let caddr: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let saddr: SocketAddr = "10.0.0.2:4433".parse().unwrap();
        let ctls = client_config(ServerVerification::Insecure, &[b"fuzz".to_vec()]).unwrap();
        let mut client = Endpoint::new(EndpointConfig::new(transport(), None));
        let now = Instant::now();
        // A v1 first flight listing v2: the pair runs in v2 after compatible negotiation.
        let offer = VersionOffer {
            original: VERSION_1,
            preference: vec![VERSION_2, VERSION_1],
        };
        let h = client
            .connect_offering(now, ctls, "localhost", saddr, &offer)
            .expect("client connection");
        let mut p = Pair {
            now,
            client,
            server: server_endpoint(),
            h,
            caddr,
            saddr,
            to_server_cid: Vec::new(),
            to_client_cid: Vec::new(),
            buf: vec![0u8; 2048],
        };
        for _ in 0..200 {
            p.step();
            let confirmed = p.client.conn(h).is_some_and(|c| c.is_handshake_confirmed());
            if confirmed && p.server.handles().count() == 1 {
                break;
            }
        }
        assert!(p.alive(), "handshake failed");
        assert_eq!(p.client.conn(h).map(|c| c.version()), Some(VERSION_2));
        p
    }

    fn alive(&self) -> bool {
        self.client
            .conn(self.h)
            .is_some_and(|c| c.is_handshake_confirmed() && !c.is_closing())
            && self
                .server
                .handles()
                .filter_map(|h| self.server.conn(h))
                .any(|c| c.is_handshake_confirmed() && !c.is_closing())
    }

    fn deliver_to_server(&mut self, d: &mut [u8]) {
        let meta = RxMeta {
            src: self.caddr,
            dst: self.saddr,
            ecn: 0,
        };
        self.server.handle_datagram(self.now, meta, d, &mut Ignore);
    }

    fn deliver_to_client(&mut self, d: &mut [u8]) {
        let meta = RxMeta {
            src: self.saddr,
            dst: self.caddr,
            ecn: 0,
        };
        self.client.handle_datagram(self.now, meta, d, &mut Ignore);
    }

    fn step(&mut self) -> usize {
        let mut moved = 0;
        for mut d in drain(&mut self.client, self.now, &mut self.buf) {
            if let Ok(dcid) = header::peek_dcid(&d, CID_LEN) {
                self.to_server_cid = dcid.to_vec();
            }
            self.deliver_to_server(&mut d);
            moved += 1;
        }
        for mut d in drain(&mut self.server, self.now, &mut self.buf) {
            if let Ok(dcid) = header::peek_dcid(&d, CID_LEN) {
                self.to_client_cid = dcid.to_vec();
            }
            self.deliver_to_client(&mut d);
            moved += 1;
        }
        self.now += Duration::from_millis(1);
        self.client.handle_timeouts(self.now, &mut Ignore);
        self.server.handle_timeouts(self.now, &mut Ignore);
        moved
    }
}

/// Points a short-header datagram at `cid` so it reaches the connection.
fn aim(d: &mut [u8], cid: &[u8]) {
    if d.len() > 1 + cid.len() && d[0] & 0x80 == 0 {
        d[0] |= 0x40;
        d[1..1 + cid.len()].copy_from_slice(cid);
    }
}

/// Mode 4: Version Negotiation with the input's versions to a client that just sent its
/// first Initial, then the rest of the input as a datagram.
fn version_negotiation_to_fresh_client(input: &[u8]) {
    let Some((&count, rest)) = input.split_first() else {
        return;
    };
    let n = (usize::from(count) % 8).min(rest.len() / 4);
    let (versions, rest) = rest.split_at(n * 4);
    let versions: Vec<u32> = versions
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if versions.is_empty() {
        return; // not a Version Negotiation packet (RFC 8999 §6)
    }
    let caddr: SocketAddr = "10.0.0.1:5000".parse().unwrap();
    let saddr: SocketAddr = "10.0.0.2:4433".parse().unwrap();
    let ctls = CLIENT_TLS.with(|c| c.clone());
    let mut client = Endpoint::new(EndpointConfig::new(transport(), None));
    let now = Instant::now();
    let h = client
        .connect_with_versions(now, ctls, "localhost", saddr, &[VERSION_2, VERSION_1])
        .expect("client connection");
    let mut buf = vec![0u8; 2048];
    let first = drain(&mut client, now, &mut buf);
    let Some(Ok((Header::Long { dcid, scid, .. }, _))) =
        first.first().map(|d| header::parse(d, CID_LEN))
    else {
        panic!("no first Initial");
    };
    let mut vn = vec![0u8; 64 + 4 * versions.len()];
    let len =
        header::write_version_negotiation(&mut vn, &scid, &dcid, &versions, 0).expect("VN fits");
    let meta = RxMeta {
        src: saddr,
        dst: caddr,
        ecn: 0,
    };
    client.handle_datagram(now, meta, &mut vn[..len], &mut Ignore);
    let mut d = rest.to_vec();
    client.handle_datagram(now, meta, &mut d, &mut Ignore);
    // The same packet again: never a second restart.
    client.handle_datagram(now, meta, &mut vn[..len], &mut Ignore);
    let version = client.conn(h).map(|c| c.version());
    if let Some(v) = version {
        assert!(SUPPORTED_VERSIONS.contains(&v), "version {v:#x}");
        assert!(
            v == VERSION_2 || versions.contains(&v),
            "{v:#x} was not offered"
        );
        for d in drain(&mut client, now, &mut buf) {
            if let Ok((Header::Long { version, .. }, _)) = header::parse(&d, CID_LEN) {
                assert_eq!(version, v, "packets in the version in use");
            }
        }
    }
}

thread_local! {
    static CLIENT_TLS: std::sync::Arc<rustls::ClientConfig> =
        client_config(ServerVerification::Insecure, &[b"fuzz".to_vec()]).unwrap();
    static LONE: RefCell<(Endpoint<()>, Instant)> = RefCell::new((server_endpoint(), Instant::now()));
    static PAIR: RefCell<Option<Pair>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 5 {
        4 => version_negotiation_to_fresh_client(rest),
        0 => LONE.with(|l| {
            let (ep, now) = &mut *l.borrow_mut();
            let mut d = rest.to_vec();
            let meta = RxMeta {
                src: "10.0.0.9:7000".parse().unwrap(),
                dst: "10.0.0.2:4433".parse().unwrap(),
                ecn: 0,
            };
            ep.handle_datagram(*now, meta, &mut d, &mut Ignore);
            let mut buf = vec![0u8; 2048];
            for reply in drain(ep, *now, &mut buf) {
                assert!(
                    reply.len() <= 1500,
                    "stateless reply of {} bytes",
                    reply.len()
                );
            }
            // Only a decryptable Initial can make state; random bytes never are.
            assert!(ep.connection_count() <= 1, "connections from garbage");
            *now += Duration::from_millis(1);
            ep.handle_timeouts(*now, &mut Ignore);
        }),
        m => PAIR.with(|cell| {
            let mut slot = cell.borrow_mut();
            if !slot.as_ref().is_some_and(Pair::alive) {
                *slot = Some(Pair::new());
            }
            let p = slot.as_mut().expect("pair");
            match m {
                1 => {
                    let mut d = rest.to_vec();
                    let cid = p.to_server_cid.clone();
                    aim(&mut d, &cid);
                    p.deliver_to_server(&mut d);
                }
                2 => {
                    let mut d = rest.to_vec();
                    let cid = p.to_client_cid.clone();
                    aim(&mut d, &cid);
                    p.deliver_to_client(&mut d);
                }
                _ => {
                    if rest.is_empty() || rest.len() > 1000 {
                        return;
                    }
                    let h = p.h;
                    p.client
                        .with_state(h, |c, _| c.queue_raw_frames(Epoch::Data, rest));
                }
            }
            for _ in 0..20 {
                if p.step() == 0 {
                    break;
                }
            }
            assert!(p.server.connection_count() <= 2, "server connections grew");
            if m != 3 {
                // Datagrams that do not decrypt must not hurt the connection.
                assert!(p.alive(), "a stray datagram broke the connection");
            } else if p
                .client
                .conn(p.h)
                .is_some_and(|c| c.raw_frames_pending(Epoch::Data) > 0)
            {
                // Raw frames still waiting for room (behind echoed DATAGRAM frames) would
                // go out during a later input and be blamed on it: start afresh.
                *slot = None;
            }
        }),
    }
});
