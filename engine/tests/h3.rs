//! HTTP/3 (the `h3` ALPN) between quench's client and server over the in-memory datapath:
//! files arrive byte-exact (SHA-256) on a clean and on a hostile path, and a peer that
//! breaks RFC 9114's rules gets the error code the RFC names.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use quench::app::h3::client::H3Client;
use quench::app::h3::frame::{put_frame, put_varint, DATA, HEADERS, SETTINGS};
use quench::app::h3::qpack::encode_field_section;
use quench::app::h3::ALPN_H3;
use quench::app::{dispatch_stream_event, AppDispatcher, Application, BuiltinApps};
use quench::conn::{CloseReason, Connection, Event, StreamId, TransportConfig};
use quench::endpoint::{Endpoint, EndpointConfig, EventHandler};
use quench::io::mem::{pair, Impairments, MemDatapath};
use quench::io::Datapath;
use quench::tls::certs::generate_self_signed;
use quench::tls::session::{client_config, server_config, ServerVerification};
use quench::wire::header::VERSION_1;
use quench::worker::transmit;
use quench::Side;

/// A temporary document root, removed on drop.
struct Root(PathBuf);

impl Root {
    fn new(files: &[(&str, Vec<u8>)]) -> Root {
        let dir = std::env::temp_dir().join(format!(
            "quench-h3-test-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, body) in files {
            std::fs::write(dir.join(name), body).unwrap();
        }
        Root(dir)
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The client side of a test: an `H3Client`, or a scripted peer breaking a rule.
enum ClientApp {
    Get(Box<H3Client>),
    Raw(RawPeer),
}

impl ClientApp {
    fn app(&mut self) -> &mut dyn Application {
        match self {
            ClientApp::Get(c) => c.as_mut(),
            ClientApp::Raw(r) => r,
        }
    }
}

struct Handler {
    make: Box<dyn FnMut() -> ClientApp>,
    closed: Option<CloseReason>,
}

impl EventHandler<Option<ClientApp>> for Handler {
    fn on_event(
        &mut self,
        now: Instant,
        conn: &mut Connection,
        st: &mut Option<ClientApp>,
        ev: Event,
    ) {
        match ev {
            // Refused early data voided the streams: the application starts over.
            Event::Connected | Event::EarlyData { accepted: false } => {
                let mut app = (self.make)();
                app.app().on_connected(conn, now);
                *st = Some(app);
            }
            Event::Stream(e) => {
                if let Some(app) = st.as_mut() {
                    dispatch_stream_event(app.app(), conn, e, now);
                }
            }
            Event::Closed(r) => {
                if let Some(app) = st.as_mut() {
                    app.app().on_closed(&r);
                }
                self.closed = Some(r);
            }
            Event::Datagram | Event::PathValidationFailed | Event::EarlyData { .. } => {}
        }
    }
}

struct Sim {
    now: Instant,
    client: Endpoint<Option<ClientApp>>,
    server: Endpoint<quench::app::AppSlot>,
    cdp: MemDatapath,
    sdp: MemDatapath,
    apps: BuiltinApps,
    handler: Handler,
    h: usize,
}

impl Sim {
    fn new(impair: Impairments, root: &Root, make: Box<dyn FnMut() -> ClientApp>) -> Sim {
        let cert = generate_self_signed(&["localhost".into()]).unwrap();
        let alpns = vec![ALPN_H3.to_vec()];
        let stls = server_config(cert, &alpns).unwrap();
        let ctls = client_config(ServerVerification::Insecure, &alpns).unwrap();
        let caddr: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let saddr: SocketAddr = "10.0.0.2:443".parse().unwrap();
        let (cdp, sdp) = pair(caddr, saddr, impair);
        let server = Endpoint::new(EndpointConfig::new(TransportConfig::default(), Some(stls)));
        let mut ccfg = EndpointConfig::new(TransportConfig::default(), None);
        ccfg.keep_drained_states = true;
        let mut client = Endpoint::new(ccfg);
        let now = Instant::now();
        let h = client
            .connect(now, ctls, "localhost", saddr, VERSION_1)
            .unwrap();
        Sim {
            now,
            client,
            server,
            cdp,
            sdp,
            apps: BuiltinApps {
                alpns,
                root: Some(root.0.clone()),
            },
            handler: Handler { make, closed: None },
            h,
        }
    }

    fn step(&mut self) -> usize {
        let now = self.now;
        let mut moved = 0;
        let (client, handler) = (&mut self.client, &mut self.handler);
        moved += self
            .cdp
            .recv_batch(&mut |m, b| {
                client.handle_datagram(now, m, b, handler);
            })
            .unwrap();
        let mut disp = AppDispatcher {
            factory: &self.apps,
        };
        let server = &mut self.server;
        moved += self
            .sdp
            .recv_batch(&mut |m, b| {
                server.handle_datagram(now, m, b, &mut disp);
            })
            .unwrap();
        self.client.handle_timeouts(now, &mut self.handler);
        self.server.handle_timeouts(now, &mut disp);
        moved += transmit(&mut self.cdp, &mut self.client, now, 1).unwrap();
        moved += transmit(&mut self.sdp, &mut self.server, now, 1).unwrap();
        moved
    }

    fn run(&mut self, limit: Duration, mut done: impl FnMut(&mut Sim) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if done(self) {
                return true;
            }
            if self.step() == 0 {
                let next = [self.client.next_timeout(), self.server.next_timeout()]
                    .into_iter()
                    .flatten()
                    .min();
                match next {
                    Some(t) if t > self.now => self.now = t,
                    Some(_) => self.now += Duration::from_micros(10),
                    None => return done(self),
                }
            } else {
                self.now += Duration::from_micros(50);
            }
        }
        done(self)
    }
}

impl Sim {
    /// The `H3Client`'s (fetched, bytes, digest, failure).
    fn fetch_report(&mut self) -> (u64, u64, String, Option<String>) {
        self.client
            .with_state(self.h, |_, st| match st {
                Some(ClientApp::Get(c)) => (
                    c.fetches.fetched,
                    c.fetches.bytes_down,
                    c.fetches.digest(),
                    c.fetches.failed.clone(),
                ),
                _ => panic!("no client"),
            })
            .expect("client state")
    }
}

/// Runs `paths` through an H3Client; returns (fetched, bytes, digest, failure).
fn fetch(impair: Impairments, root: &Root, paths: &[&str]) -> (u64, u64, String, Option<String>) {
    let owned: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
    let mut sim = Sim::new(
        impair,
        root,
        Box::new(move || {
            ClientApp::Get(Box::new(H3Client::new("localhost".into(), owned.clone())))
        }),
    );
    let h = sim.h;
    let finished = sim.run(Duration::from_secs(120), |s| {
        s.client
            .with_state(h, |_, st| match st {
                Some(ClientApp::Get(c)) => c.fetches.is_done(),
                _ => false,
            })
            .unwrap_or(true)
    });
    assert!(finished, "did not finish");
    sim.fetch_report()
}

fn sha256_of(bodies: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for b in bodies {
        h.update(b);
    }
    hex::encode(h.finalize())
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    (0..n as u64)
        .map(|i| ((i ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8)
        .collect()
}

fn files() -> (Root, Vec<(&'static str, Vec<u8>)>) {
    let list = vec![
        ("empty", Vec::new()),
        ("one", vec![b'x']),
        ("chunk", random_bytes(16 * 1024, 1)),
        ("chunk-plus-one", random_bytes(16 * 1024 + 1, 2)),
        ("big", random_bytes(3 << 20, 3)),
    ];
    (Root::new(&list), list)
}

#[test]
fn h3_gets_arrive_byte_exact_on_a_clean_path() {
    let (root, list) = files();
    let mut paths: Vec<&str> = Vec::new();
    let names: Vec<String> = list.iter().map(|(n, _)| format!("/{n}")).collect();
    for n in &names {
        paths.push(n);
    }
    paths.push("/100000"); // synthetic: 100,000 zero bytes
    paths.push("/big?query=ignored");
    let (fetched, bytes, digest, failed) = fetch(Impairments::none(), &root, &paths);
    assert_eq!(failed, None);
    assert_eq!(fetched, paths.len() as u64);
    let zeros = vec![0u8; 100_000];
    let mut want: Vec<&[u8]> = list.iter().map(|(_, b)| b.as_slice()).collect();
    want.push(&zeros);
    want.push(&list[4].1);
    assert_eq!(bytes, want.iter().map(|b| b.len() as u64).sum::<u64>());
    assert_eq!(digest, sha256_of(&want));
}

#[test]
fn h3_gets_arrive_byte_exact_through_loss_reordering_and_corruption() {
    let (root, list) = files();
    let impair = Impairments {
        loss: 0.10,
        reorder: 0.10,
        duplicate: 0.05,
        corrupt: 0.01,
        seed: 11,
        ..Impairments::none()
    };
    let (fetched, _, digest, failed) = fetch(impair, &root, &["/big", "/chunk", "/big"]);
    assert_eq!(failed, None);
    assert_eq!(fetched, 3);
    assert_eq!(digest, sha256_of(&[&list[4].1, &list[2].1, &list[4].1]));
}

#[test]
fn a_missing_file_is_a_404_the_client_reports() {
    let (root, _) = files();
    let (_, _, _, failed) = fetch(Impairments::none(), &root, &["/one", "/no-such-file"]);
    let failed = failed.expect("the 404 is reported");
    assert!(failed.contains("status 404"), "{failed}");
}

/// RFC 9114 §6.2.1: a server asking our client to close its control stream is a connection
/// error, H3_CLOSED_CRITICAL_STREAM, and the client's run fails.
#[test]
fn the_client_fails_when_the_server_stops_its_control_stream() {
    let (root, _) = files();
    let paths = vec!["/big".to_string()];
    let mut sim = Sim::new(
        Impairments::none(),
        &root,
        Box::new(move || {
            ClientApp::Get(Box::new(H3Client::new("localhost".into(), paths.clone())))
        }),
    );
    // Up to the client's first request: its control stream (client uni stream 0) is open.
    sim.run(Duration::from_secs(5), |s| {
        s.client
            .with_state(
                s.h,
                |_, st| matches!(st, Some(ClientApp::Get(c)) if c.fetches.bytes_down > 0),
            )
            .unwrap_or(true)
    });
    let server = sim
        .server
        .handles()
        .next()
        .expect("the server's connection");
    let control = StreamId::new(Side::Client, false, 0);
    sim.server
        .with_state(server, |conn, _| conn.stop_sending(control, 0x100))
        .expect("server connection")
        .expect("the client's control stream is open at the server");
    sim.run(Duration::from_secs(5), |s| s.handler.closed.is_some());
    let (_, _, _, failed) = sim.fetch_report();
    assert!(failed.is_some(), "the run failed");
    assert!(
        matches!(
            sim.handler.closed,
            Some(CloseReason::Local {
                code: 0x104,
                app: true,
                ..
            })
        ),
        "{:?}",
        sim.handler.closed
    );
}

// ---- a peer that breaks the rules ------------------------------------------------------------

/// What a `RawPeer` does once connected.
#[derive(Clone, Copy, Debug)]
enum Misdeed {
    /// A control stream whose first frame is not SETTINGS (§6.2.1: H3_MISSING_SETTINGS).
    ControlWithoutSettings,
    /// A control stream that starts with a reserved frame type, SETTINGS after it: the
    /// first frame is still not SETTINGS (§6.2.1: H3_MISSING_SETTINGS).
    ControlStartingWithReservedFrame,
    /// A 5 KB HEADERS frame on the control stream, longer than we read there: a type
    /// never allowed there (§7.2.2: H3_FRAME_UNEXPECTED), not merely a large frame.
    LargeHeadersOnControlStream,
    /// Two control streams (§6.2.1: H3_STREAM_CREATION_ERROR).
    SecondControlStream,
    /// The control stream closed (§6.2.1: H3_CLOSED_CRITICAL_STREAM).
    ControlStreamClosed,
    /// DATA before HEADERS on a request stream (§4.1: H3_FRAME_UNEXPECTED).
    DataBeforeHeaders,
    /// A SETTINGS frame on a request stream (§7.2.4: H3_FRAME_UNEXPECTED).
    SettingsOnRequestStream,
    /// A push stream from a client (§6.2.2: H3_STREAM_CREATION_ERROR).
    PushStreamFromClient,
    /// A HEADERS frame whose field section does not decode (RFC 9204 §2.2:
    /// QPACK_DECOMPRESSION_FAILED).
    UndecodableHeaders,
    /// A request with an uppercase field name: malformed, a stream error
    /// H3_MESSAGE_ERROR; the connection lives on (§4.1.2).
    UppercaseFieldName,
    /// A request stream that ends before its HEADERS (§4.1: H3_REQUEST_INCOMPLETE).
    FinBeforeHeaders,
    /// A HEADERS frame longer than the field-section limit (a request with a 20 KB
    /// cookie): malformed, a stream error; the frame is skipped, never buffered whole.
    OversizedHeadersFrame,
    /// Reserved frames of 10 KB on the control stream and before a request's HEADERS:
    /// ignored whatever their size (§9), so the request is answered.
    LargeUnknownFrames,
    /// A PATCH whose body's FIN comes after the server's 405 (see the test).
    PatchWithoutFin,
    /// A POST whose body has begun and has no FIN (the test then resets it).
    UploadWithoutFin,
    /// A request whose fields exceed our SETTINGS_MAX_FIELD_SECTION_SIZE once decoded,
    /// though its HEADERS frame is small: malformed (§4.2.2), H3_MESSAGE_ERROR.
    OversizedFieldSection,
}

struct RawPeer {
    misdeed: Misdeed,
    /// Stream resets the server sent us: (stream, code).
    resets: Vec<(StreamId, u64)>,
    /// The request stream this peer opened, if any.
    request: Option<StreamId>,
    /// Bidirectional streams whose response ended with FIN.
    responses: usize,
}

impl RawPeer {
    fn new(misdeed: Misdeed) -> Self {
        RawPeer {
            misdeed,
            resets: Vec::new(),
            request: None,
            responses: 0,
        }
    }
}

fn settings_frame() -> Vec<u8> {
    let mut s = Vec::new();
    put_frame(&mut s, SETTINGS, &[]);
    s
}

fn control_stream(conn: &mut Connection, body: &[u8], fin: bool) {
    let id = conn.open_stream(false).unwrap();
    let mut bytes = vec![0x00];
    bytes.extend_from_slice(body);
    assert_eq!(conn.write(id, &bytes).unwrap(), bytes.len());
    if fin {
        conn.finish(id).unwrap();
    }
}

fn request(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut section = Vec::new();
    encode_field_section(fields, &mut section);
    let mut out = Vec::new();
    put_frame(&mut out, HEADERS, &section);
    out
}

const GOOD_REQUEST: &[(&[u8], &[u8])] = &[
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"localhost"),
    (b":path", b"/one"),
];

impl Application for RawPeer {
    fn on_connected(&mut self, conn: &mut Connection, _now: Instant) {
        let send_bidi = |conn: &mut Connection, bytes: &[u8], fin: bool| {
            let id = conn.open_stream(true).unwrap();
            assert_eq!(conn.write(id, bytes).unwrap(), bytes.len());
            if fin {
                conn.finish(id).unwrap();
            }
            Some(id)
        };
        match self.misdeed {
            Misdeed::ControlWithoutSettings => {
                let mut goaway = Vec::new();
                put_frame(&mut goaway, 0x07, &[0x00]);
                control_stream(conn, &goaway, false);
            }
            Misdeed::ControlStartingWithReservedFrame => {
                let mut control = Vec::new();
                put_frame(&mut control, 0x21, b"grease");
                control.extend_from_slice(&settings_frame());
                control_stream(conn, &control, false);
            }
            Misdeed::LargeHeadersOnControlStream => {
                let mut control = settings_frame();
                put_frame(&mut control, 0x01, &[0u8; 5000]);
                control_stream(conn, &control, false);
            }
            Misdeed::SecondControlStream => {
                control_stream(conn, &settings_frame(), false);
                control_stream(conn, &settings_frame(), false);
            }
            Misdeed::ControlStreamClosed => control_stream(conn, &settings_frame(), true),
            Misdeed::DataBeforeHeaders => {
                control_stream(conn, &settings_frame(), false);
                let mut b = Vec::new();
                put_frame(&mut b, DATA, b"body");
                b.extend_from_slice(&request(GOOD_REQUEST));
                self.request = send_bidi(conn, &b, true);
            }
            Misdeed::SettingsOnRequestStream => {
                control_stream(conn, &settings_frame(), false);
                let mut b = request(GOOD_REQUEST);
                b.extend_from_slice(&settings_frame());
                self.request = send_bidi(conn, &b, true);
            }
            Misdeed::PushStreamFromClient => {
                control_stream(conn, &settings_frame(), false);
                let id = conn.open_stream(false).unwrap();
                let mut b = Vec::new();
                put_varint(&mut b, 0x01);
                put_varint(&mut b, 0);
                conn.write(id, &b).unwrap();
            }
            Misdeed::UndecodableHeaders => {
                control_stream(conn, &settings_frame(), false);
                // Required Insert Count 5: a dynamic table we said we do not have.
                let mut b = Vec::new();
                put_frame(&mut b, HEADERS, &[0x05, 0x00, 0x80]);
                self.request = send_bidi(conn, &b, true);
            }
            Misdeed::UppercaseFieldName => {
                control_stream(conn, &settings_frame(), false);
                let mut fields = GOOD_REQUEST.to_vec();
                fields.push((b"X-Upper", b"1"));
                self.request = send_bidi(conn, &request(&fields), true);
            }
            Misdeed::OversizedFieldSection => {
                control_stream(conn, &settings_frame(), false);
                let mut fields = GOOD_REQUEST.to_vec();
                // 600 lines of 32 bytes' overhead each: ~20 KB as §4.2.2 counts, ~2 KB sent.
                fields.extend(std::iter::repeat_n((&b"x-a"[..], &b"1"[..]), 600));
                let req = request(&fields);
                assert!(req.len() < 4096, "{}", req.len());
                self.request = send_bidi(conn, &req, true);
            }
            Misdeed::OversizedHeadersFrame => {
                control_stream(conn, &settings_frame(), false);
                let cookie = vec![b'c'; 20_000];
                let mut fields = GOOD_REQUEST.to_vec();
                fields.push((b"cookie", &cookie));
                self.request = send_bidi(conn, &request(&fields), true);
            }
            Misdeed::LargeUnknownFrames => {
                let mut control = settings_frame();
                put_frame(&mut control, 0x21, &[0u8; 10_000]);
                control_stream(conn, &control, false);
                let mut b = Vec::new();
                put_frame(&mut b, 0x40, &[0u8; 10_000]);
                b.extend_from_slice(&request(GOOD_REQUEST));
                self.request = send_bidi(conn, &b, true);
            }
            Misdeed::UploadWithoutFin => {
                control_stream(conn, &settings_frame(), false);
                let mut fields = GOOD_REQUEST.to_vec();
                fields[0] = (b":method", b"POST");
                let mut b = request(&fields);
                put_frame(&mut b, DATA, b"the start of a body");
                self.request = send_bidi(conn, &b, false);
            }
            Misdeed::PatchWithoutFin => {
                control_stream(conn, &settings_frame(), false);
                let mut fields = GOOD_REQUEST.to_vec();
                fields[0] = (b":method", b"PATCH");
                let mut b = request(&fields);
                put_frame(&mut b, DATA, b"body");
                self.request = send_bidi(conn, &b, false);
            }
            Misdeed::FinBeforeHeaders => {
                control_stream(conn, &settings_frame(), false);
                // Half a HEADERS frame header's worth of nothing: just the FIN.
                let id = conn.open_stream(true).unwrap();
                conn.finish(id).unwrap();
            }
        }
    }

    fn on_readable(&mut self, conn: &mut Connection, id: StreamId, now: Instant) {
        let mut buf = [0u8; 4096];
        while let Ok((n, fin)) = conn.read(id, &mut buf, now) {
            if fin && id.is_bidi() {
                self.responses += 1;
            }
            if fin || n == 0 {
                break;
            }
        }
    }

    fn on_reset(&mut self, conn: &mut Connection, id: StreamId, code: u64, now: Instant) {
        let _ = conn.read(id, &mut [], now);
        self.resets.push((id, code));
    }
}

/// Runs `misdeed` against the server; returns how the connection ended (if it did) and
/// the stream resets the server sent.
fn misbehave(misdeed: Misdeed) -> (Option<CloseReason>, Vec<(StreamId, u64)>, usize) {
    let root = Root::new(&[("one", vec![b'x'])]);
    let mut sim = Sim::new(
        Impairments::none(),
        &root,
        Box::new(move || ClientApp::Raw(RawPeer::new(misdeed))),
    );
    let h = sim.h;
    sim.run(Duration::from_secs(5), |s| s.handler.closed.is_some());
    let (resets, responses) = sim
        .client
        .with_state(h, |_, st| match st {
            Some(ClientApp::Raw(r)) => (r.resets.clone(), r.responses),
            _ => (Vec::new(), 0),
        })
        .unwrap_or_default();
    (sim.handler.closed.clone(), resets, responses)
}

fn closed_by_server_with(misdeed: Misdeed, want: u64) {
    let (closed, _, _) = misbehave(misdeed);
    match closed {
        Some(CloseReason::Peer {
            code, app: true, ..
        }) => {
            assert_eq!(
                code, want,
                "{misdeed:?}: closed with {code:#x}, want {want:#x}"
            )
        }
        other => panic!("{misdeed:?}: {other:?}, want an application close {want:#x}"),
    }
}

#[test]
fn rule_breakers_get_the_connection_error_rfc_9114_names() {
    closed_by_server_with(Misdeed::ControlWithoutSettings, 0x10a);
    closed_by_server_with(Misdeed::ControlStartingWithReservedFrame, 0x10a);
    closed_by_server_with(Misdeed::LargeHeadersOnControlStream, 0x105);
    closed_by_server_with(Misdeed::SecondControlStream, 0x103);
    closed_by_server_with(Misdeed::ControlStreamClosed, 0x104);
    closed_by_server_with(Misdeed::DataBeforeHeaders, 0x105);
    closed_by_server_with(Misdeed::SettingsOnRequestStream, 0x105);
    closed_by_server_with(Misdeed::PushStreamFromClient, 0x103);
    closed_by_server_with(Misdeed::UndecodableHeaders, 0x200);
}

#[test]
fn a_malformed_request_is_a_stream_error_only() {
    for (misdeed, want) in [
        (Misdeed::UppercaseFieldName, 0x10e),
        (Misdeed::FinBeforeHeaders, 0x10d),
        (Misdeed::OversizedFieldSection, 0x10e),
        (Misdeed::OversizedHeadersFrame, 0x10e),
    ] {
        let (closed, resets, _) = misbehave(misdeed);
        assert_eq!(closed, None, "{misdeed:?}: the connection stays up");
        assert_eq!(resets.len(), 1, "{misdeed:?}: {resets:?}");
        assert_eq!(resets[0].1, want, "{misdeed:?}");
    }
}

/// Graceful shutdown (RFC 9114 §5.2): the server sends GOAWAY naming the first request it
/// will not process, finishes the response under way, and closes with H3_NO_ERROR once
/// it is acknowledged. The client makes no new request after the GOAWAY.
#[test]
fn shutdown_sends_goaway_finishes_the_response_under_way_then_closes() {
    let (root, list) = files();
    let mut sim = Sim::new(
        Impairments::none(),
        &root,
        Box::new(|| {
            ClientApp::Get(Box::new(H3Client::new(
                "localhost".into(),
                vec!["/big".into(), "/chunk".into()],
            )))
        }),
    );
    let h = sim.h;
    let bytes = |s: &mut Sim| {
        s.client
            .with_state(h, |_, st| match st {
                Some(ClientApp::Get(c)) => c.fetches.bytes_down,
                _ => 0,
            })
            .unwrap_or(0)
    };
    assert!(sim.run(Duration::from_secs(10), |s| bytes(s) > 256 << 10));
    let now = sim.now;
    sim.server
        .shut_down_all(|conn, app| app.as_mut().expect("h3 application").on_shutdown(conn, now));
    assert!(sim.run(Duration::from_secs(10), |s| s.handler.closed.is_some()));
    match &sim.handler.closed {
        Some(CloseReason::Peer {
            code, app: true, ..
        }) => assert_eq!(*code, 0x100),
        other => panic!("closed with {other:?}, want H3_NO_ERROR"),
    }
    let (fetched, got, digest, failed) = sim.fetch_report();
    assert_eq!(
        fetched, 1,
        "the response under way completed, no later one began"
    );
    assert_eq!(got, list[4].1.len() as u64);
    assert_eq!(digest, sha256_of(&[&list[4].1]));
    let failed = failed.expect("the client reports the unfetched path");
    assert!(failed.contains("GOAWAY"), "{failed}");
}

/// §9: unknown frame types are ignored whatever their size, on the control stream and on
/// a request stream alike.
#[test]
fn large_unknown_frames_are_ignored() {
    let (closed, resets, responses) = misbehave(Misdeed::LargeUnknownFrames);
    assert_eq!(closed, None);
    assert!(resets.is_empty(), "{resets:?}");
    assert_eq!(
        responses, 1,
        "the request behind the unknown frame was answered"
    );
}

/// A request side that ends after its response was sent (a PATCH answered 405 before its
/// body's FIN) must still end the exchange on the server: shown by a shutdown that
/// completes at once, which waits for every request to be done.
#[test]
fn a_request_finished_after_its_response_is_forgotten() {
    let root = Root::new(&[("one", vec![b'x'])]);
    let mut sim = Sim::new(
        Impairments::none(),
        &root,
        Box::new(|| ClientApp::Raw(RawPeer::new(Misdeed::PatchWithoutFin))),
    );
    let h = sim.h;
    let raw = |s: &mut Sim| {
        s.client
            .with_state(h, |_, st| match st {
                Some(ClientApp::Raw(r)) => (r.request, r.responses),
                _ => (None, 0),
            })
            .unwrap_or((None, 0))
    };
    assert!(sim.run(Duration::from_secs(5), |s| raw(s).1 == 1), "no 405");
    let id = raw(&mut sim).0.unwrap();
    sim.client.with_state(h, |c, _| c.finish(id).unwrap());
    sim.run(Duration::from_millis(200), |_| false);
    let now = sim.now;
    sim.server
        .shut_down_all(|conn, app| app.as_mut().expect("h3").on_shutdown(conn, now));
    assert!(
        sim.run(Duration::from_secs(1), |s| s.handler.closed.is_some()),
        "the server kept the request"
    );
    match &sim.handler.closed {
        Some(CloseReason::Peer {
            code, app: true, ..
        }) => assert_eq!(*code, 0x100),
        other => panic!("{other:?}"),
    }
}

/// An upload the client cancels (RESET_STREAM mid-body) is dropped by the server, which
/// resets its side with H3_REQUEST_CANCELLED: nothing is left to answer, no stream slot
/// stays taken, and a shutdown completes at once.
#[test]
fn a_cancelled_upload_is_forgotten() {
    let root = Root::new(&[("one", vec![b'x'])]);
    let mut sim = Sim::new(
        Impairments::none(),
        &root,
        Box::new(|| ClientApp::Raw(RawPeer::new(Misdeed::UploadWithoutFin))),
    );
    let h = sim.h;
    let raw = |s: &mut Sim| {
        s.client
            .with_state(h, |_, st| match st {
                Some(ClientApp::Raw(r)) => (r.request, r.resets.clone()),
                _ => (None, Vec::new()),
            })
            .unwrap_or((None, Vec::new()))
    };
    assert!(sim.run(Duration::from_secs(1), |s| raw(s).0.is_some()));
    // Let the request reach the server, without leaping to the next timer (an idle one).
    for _ in 0..50 {
        sim.step();
        sim.now += Duration::from_millis(1);
    }
    let id = raw(&mut sim).0.expect("the upload's stream");
    sim.client
        .with_state(h, |c, _| c.reset_stream(id, REQUEST_CANCELLED).unwrap());
    assert!(
        sim.run(Duration::from_secs(2), |s| !raw(s).1.is_empty()),
        "the server kept its side open"
    );
    assert_eq!(raw(&mut sim).1, [(id, REQUEST_CANCELLED)]);
    let now = sim.now;
    sim.server
        .shut_down_all(|conn, app| app.as_mut().expect("h3").on_shutdown(conn, now));
    assert!(
        sim.run(Duration::from_secs(1), |s| s.handler.closed.is_some()),
        "the server kept the upload"
    );
    match &sim.handler.closed {
        Some(CloseReason::Peer {
            code, app: true, ..
        }) => assert_eq!(*code, 0x100, "H3_NO_ERROR"),
        other => panic!("{other:?}"),
    }
}

/// H3_REQUEST_CANCELLED (RFC 9114 §8.1).
const REQUEST_CANCELLED: u64 = 0x10c;
