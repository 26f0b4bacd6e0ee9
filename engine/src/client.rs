//! `quench client`: N connections to one server running perf, hq-interop, h3 or echo, on one
//! thread over a UDP datapath; reports handshake time, bytes and throughput.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::app::echo::DatagramEchoClient;
use crate::app::fetches::Fetches;
use crate::app::h3::client::H3Client;
use crate::app::hq::HqClient;
use crate::app::perf::PerfClient;
use crate::app::{dispatch_stream_event, Application};
use crate::conn::{CloseReason, Connection, Event, TransportConfig, VersionOffer};
use crate::endpoint::{ConnHandle, Endpoint, EndpointConfig, EventHandler};
use crate::io::udp::{UdpDatapath, UdpOptions};
use crate::wire::header::VERSION_1;
use crate::worker::drive_until;

#[derive(Clone, Debug)]
pub enum ClientWorkload {
    Perf {
        down: u64,
        up: u64,
        streams: u64,
    },
    Hq {
        paths: Vec<String>,
    },
    /// HTTP/3 GETs of these paths, one after another.
    H3 {
        paths: Vec<String>,
    },
    /// `echo` over DATAGRAM frames (RFC 9221): this many numbered datagrams a connection.
    Datagrams {
        count: u32,
    },
}

#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub connect: SocketAddr,
    pub server_name: String,
    pub tls: Arc<rustls::ClientConfig>,
    pub workload: ClientWorkload,
    pub conns: usize,
    pub key_update_after: Option<u64>,
    /// Once the connections have received this many bytes in all, move to a new local
    /// port and migrate every connection there (RFC 9000 §9.2).
    pub migrate_after: Option<u64>,
    pub timeout: Duration,
    pub transport: TransportConfig,
    /// Versions to offer, most preferred first: connections start in the first (or in
    /// `original_version`), may be moved by the server to another their first flight
    /// converts to (RFC 9368 §2.3), and fall back to another the server lists in Version
    /// Negotiation (§2.1).
    pub versions: Vec<u32>,
    /// The version of the first flight, if not the first of `versions` (RFC 9368 §2.4:
    /// start in the version most servers parse, prefer a newer one).
    pub original_version: Option<u32>,
    /// Warm-up connections first gather a session ticket for each connection, so that the
    /// workload's connections resume those sessions (RFC 8446 §2.2) instead of doing full
    /// handshakes.
    pub resume: bool,
    /// As `resume` (implied), and the workload's connections send their requests as early
    /// data (0-RTT, RFC 9001 §4.6) where their tickets allow it.
    pub early_data: bool,
}

#[derive(Clone, Debug, Default)]
pub struct ClientReport {
    pub handshake_ms: f64,
    pub bytes_down: u64,
    pub bytes_up: u64,
    pub seconds: f64,
    pub streams: u64,
    pub sha256: Option<String>,
    pub key_updates: u64,
    /// The largest maximum datagram size a connection used (path MTU discovery's result).
    pub max_datagram_size: u64,
    /// Over all connections: packets declared lost (RFC 9002 §6), and packets received
    /// that failed authentication (RFC 9001 §6.6: corrupted on the path, or forged).
    pub packets_lost: u64,
    pub authentication_failures: u64,
    /// `echo` datagram runs (RFC 9221): datagrams sent, and echoed back intact.
    pub datagrams_sent: Option<u64>,
    pub datagrams_echoed: Option<u64>,
    /// Connections that migrated to a new local address (`migrate_after`).
    pub migrations: u64,
    /// The QUIC version the connections used (after any Version Negotiation).
    pub quic_version: Option<u32>,
    /// Connections whose TLS handshake resumed a session from a ticket.
    pub resumed: u64,
    /// With `early_data`: connections whose early data the server accepted, and the 0-RTT
    /// packets all connections sent.
    pub early_data: Option<u64>,
    pub zero_rtt_packets: Option<u64>,
    /// Connections the server moved to another version than their first flight's
    /// (compatible version negotiation, RFC 9368 §2.3).
    pub version_switches: u64,
    /// ECN (RFC 9000 §13.4) over all connections: those whose path passed validation,
    /// validations failed, 1-RTT packets sent marked ECT(0), ECT(0) packets received.
    pub ecn_capable: u64,
    pub ecn_failures: u64,
    pub ecn_marked_sent: u64,
    pub ecn_ect0_received: u64,
}

impl ClientReport {
    /// Adds one connection's GETs (hq-interop, h3). Every connection fetches the same
    /// paths, so their digests must agree; only whole runs compare (a timed-out one
    /// reports `Timeout` instead).
    fn add_fetches(&mut self, f: &Fetches) -> Result<(), ClientError> {
        self.bytes_down += f.bytes_down;
        self.streams += f.fetched;
        let digest = f.digest();
        if f.is_done() && self.sha256.as_ref().is_some_and(|d| *d != digest) {
            return Err(ClientError::Failed(
                "connections received different bodies for the same paths".into(),
            ));
        }
        self.sha256 = Some(digest);
        Ok(())
    }

    pub fn throughput_mbps(&self) -> f64 {
        if self.seconds <= 0.0 {
            0.0
        } else {
            (self.bytes_down + self.bytes_up) as f64 * 8.0 / self.seconds / 1e6
        }
    }

    pub fn to_json(&self) -> String {
        let mut v = json!({
            "handshake_ms": self.handshake_ms,
            "bytes_down": self.bytes_down,
            "bytes_up": self.bytes_up,
            "seconds": self.seconds,
            "throughput_mbps": self.throughput_mbps(),
            "streams": self.streams,
            "sha256": self.sha256,
            "key_updates": self.key_updates,
            "max_datagram_size": self.max_datagram_size,
            "packets_lost": self.packets_lost,
            "authentication_failures": self.authentication_failures,
            "resumed": self.resumed,
            "version_switches": self.version_switches,
            "ecn": {
                "capable": self.ecn_capable,
                "failures": self.ecn_failures,
                "marked_sent": self.ecn_marked_sent,
                "ect0_received": self.ecn_ect0_received,
            },
        });
        if let Some(version) = self.quic_version {
            v["quic_version"] = format!("{version:#x}").into();
        }
        if let Some(accepted) = self.early_data {
            v["early_data"] = accepted.into();
        }
        if let Some(packets) = self.zero_rtt_packets {
            v["zero_rtt_packets"] = packets.into();
        }
        if let (Some(sent), Some(echoed)) = (self.datagrams_sent, self.datagrams_echoed) {
            v["datagrams_sent"] = sent.into();
            v["datagrams_echoed"] = echoed.into();
        }
        if self.migrations > 0 {
            v["migrations"] = self.migrations.into();
        }
        v.to_string()
    }
}

#[derive(thiserror::Error, Debug)]
pub enum ClientError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("connect: {0}")]
    Connect(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Failed(String),
}

/// One connection's client application.
#[derive(Default)]
pub enum ClientApp {
    #[default]
    Idle,
    Perf(PerfClient),
    Hq(HqClient),
    /// Boxed: its session state makes it several times larger than the others.
    H3(Box<H3Client>),
    Datagrams(DatagramEchoClient),
}

impl ClientApp {
    fn app(&mut self) -> Option<&mut dyn Application> {
        match self {
            ClientApp::Idle => None,
            ClientApp::Perf(p) => Some(p),
            ClientApp::Hq(h) => Some(h),
            ClientApp::H3(h) => Some(h.as_mut()),
            ClientApp::Datagrams(d) => Some(d),
        }
    }

    fn is_done(&self, now: Instant) -> bool {
        match self {
            ClientApp::Idle => false,
            ClientApp::Perf(p) => p.is_done(),
            ClientApp::Hq(h) => h.fetches.is_done(),
            ClientApp::H3(h) => h.fetches.is_done(),
            ClientApp::Datagrams(d) => d.is_done(now),
        }
    }

    fn failure(&self) -> Option<&str> {
        match self {
            ClientApp::Idle => None,
            ClientApp::Perf(p) => p.failed.as_deref(),
            ClientApp::Hq(h) => h.fetches.failed.as_deref(),
            ClientApp::H3(h) => h.fetches.failed.as_deref(),
            ClientApp::Datagrams(d) => d.failed.as_deref(),
        }
    }

    fn bytes_down(&self) -> u64 {
        match self {
            ClientApp::Idle => 0,
            ClientApp::Perf(p) => p.bytes_down,
            ClientApp::Hq(h) => h.fetches.bytes_down,
            ClientApp::H3(h) => h.fetches.bytes_down,
            ClientApp::Datagrams(d) => d.bytes_down,
        }
    }
}

/// Per-connection client state held in the endpoint.
#[derive(Default)]
pub struct ClientConnState {
    pub app: ClientApp,
    pub connected_at: Option<Instant>,
    /// The QUIC version the connection settled on.
    pub version: Option<u32>,
    pub closed: Option<CloseReason>,
    pub key_update_done: bool,
    /// The handshake resumed a TLS session.
    pub resumed: bool,
    /// Early data (0-RTT) was sent, and the server's verdict once the handshake completed.
    pub early_data: Option<bool>,
    /// Which share of the workload this connection's application runs.
    pub share_index: u64,
    /// The server moved the connection to another version during the handshake.
    pub version_switched: bool,
    /// Copied from the connection's statistics when it closes.
    pub migrations: u64,
    /// 0-RTT packets sent, all there will be once the handshake completed.
    pub zero_rtt_packets: u64,
    /// The path of our last move never answered (`Event::PathValidationFailed`): the
    /// driver moves again, while it has moves left.
    pub path_failed: bool,
}

impl ClientConnState {
    /// What the completed handshake settled.
    fn note_handshake(&mut self, conn: &Connection) {
        self.version = Some(conn.version());
        self.resumed = conn.resumed();
        self.version_switched = conn.stats().compatible_version_switch;
    }
}

struct ClientHandler {
    workload: ClientWorkload,
    /// The server name, for HTTP/3's :authority.
    authority: String,
    key_update_after: Option<u64>,
    /// perf totals are split across connections; this counts the ones started.
    started: u64,
    conns: u64,
}

impl ClientHandler {
    /// A new application for the connection's share of the workload, told streams can be
    /// used.
    fn start_app(&mut self, now: Instant, conn: &mut Connection, st: &mut ClientConnState) {
        let i = st.share_index;
        st.app = match &self.workload {
            ClientWorkload::Perf { down, up, streams } => ClientApp::Perf(PerfClient::new(
                *streams,
                share(*down, self.conns, i),
                share(*up, self.conns, i),
            )),
            ClientWorkload::Hq { paths } => ClientApp::Hq(HqClient::new(paths.clone())),
            ClientWorkload::H3 { paths } => ClientApp::H3(Box::new(H3Client::new(
                self.authority.clone(),
                paths.clone(),
            ))),
            ClientWorkload::Datagrams { count } => {
                ClientApp::Datagrams(DatagramEchoClient::new(*count))
            }
        };
        if let Some(app) = st.app.app() {
            app.on_connected(conn, now);
        }
    }
}

/// `total` split over `n` parts, the first parts taking the remainder.
fn share(total: u64, n: u64, i: u64) -> u64 {
    total / n + u64::from(i < total % n)
}

impl EventHandler<ClientConnState> for ClientHandler {
    fn on_event(
        &mut self,
        now: Instant,
        conn: &mut Connection,
        st: &mut ClientConnState,
        event: Event,
    ) {
        match event {
            Event::Connected => {
                if conn.is_established() {
                    st.connected_at = Some(now);
                    st.note_handshake(conn);
                }
                st.share_index = self.started;
                self.started += 1;
                self.start_app(now, conn, st);
            }
            Event::EarlyData { accepted } => {
                // A 0-RTT connection's handshake ends here.
                st.connected_at = Some(now);
                st.note_handshake(conn);
                st.early_data = Some(accepted);
                st.zero_rtt_packets = conn.stats().zero_rtt_packets_sent;
                if !accepted {
                    // Every stream was voided: the workload starts over.
                    self.start_app(now, conn, st);
                }
            }
            Event::Stream(ev) => {
                if let Some(app) = st.app.app() {
                    dispatch_stream_event(app, conn, ev, now);
                }
                if let (Some(limit), false) = (self.key_update_after, st.key_update_done) {
                    if st.app.bytes_down() >= limit && conn.force_key_update() {
                        st.key_update_done = true;
                    }
                }
            }
            Event::Datagram => {
                if let Some(app) = st.app.app() {
                    app.on_datagram(conn, now);
                }
            }
            Event::PathValidationFailed => st.path_failed = true,
            Event::Closed(reason) => {
                if let Some(app) = st.app.app() {
                    app.on_closed(&reason);
                }
                st.closed = Some(reason);
                st.migrations = conn.stats().migrations;
            }
        }
    }
}

/// Runs the client over a kernel UDP socket on an ephemeral port.
pub fn run_client(opts: ClientOptions) -> Result<ClientReport, ClientError> {
    let bind: SocketAddr = if opts.connect.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let udp_opts = UdpOptions {
        max_datagram_size: crate::io::udp::buffer_size_for(opts.transport.max_datagram_size),
        ..UdpOptions::default()
    };
    let mut dp = UdpDatapath::bind(bind, udp_opts)?;
    run_client_on(opts, &mut dp)
}

/// Runs the client over any datapath (an AF_XDP socket, the in-memory pair, ...).
pub fn run_client_on<D: crate::io::Datapath>(
    mut opts: ClientOptions,
    dp: &mut D,
) -> Result<ClientReport, ClientError> {
    if opts.early_data {
        let mut tls = (*opts.tls).clone();
        tls.enable_early_data = true;
        opts.tls = Arc::new(tls);
    }
    if opts.resume || opts.early_data {
        let (tls, tickets) = resume::counting_tickets(&opts.tls, opts.conns.max(1));
        opts.tls = tls;
        // Tickets belong to the version a server moved the warm-ups to (RFC 9369 §5):
        // the workload starts there, as the warm-ups' endpoint learned.
        if let Some(version) = resume::warm_up(&opts, dp, &tickets)? {
            opts.original_version = Some(version);
        }
    }
    let mut cfg = endpoint_config(&opts, dp, opts.conns.max(1));
    cfg.keep_drained_states = true;
    let mut endpoint: Endpoint<ClientConnState> = Endpoint::new(cfg);
    let mut handler = ClientHandler {
        workload: opts.workload.clone(),
        authority: opts.server_name.clone(),
        key_update_after: opts.key_update_after,
        started: 0,
        conns: opts.conns.max(1) as u64,
    };
    let start = Instant::now();
    let handles = connect_all(&mut endpoint, &opts, opts.conns.max(1), start)?;
    for &h in &handles {
        // A connection offering early data is usable now: its requests start before
        // anything is sent, and go out as 0-RTT with its first flight.
        endpoint.dispatch_events(start, h, &mut handler);
    }
    let deadline = start + opts.timeout;
    let mut report = ClientReport::default();
    let mut handshake_total = 0.0;
    let mut connected = 0usize;
    // When the last connection's work was done: the report's time ends there, not after
    // the closing connections have drained (3 PTO, which would understate throughput).
    let mut work_done_at: Option<Instant> = None;
    let mut migrate_after = opts.migrate_after;
    // After a move whose new path never answered (§8.2.4), move again from a fresh port, a
    // few times: the old socket is closed, so there is nothing else to fall back to.
    let mut rescues_left = MIGRATION_RESCUES;
    let finished = 'drive: loop {
        let mut migrate_now = false;
        let mut rescue = false;
        let finished = drive_until(dp, &mut endpoint, &mut handler, deadline, |ep, _h, now| {
            let mut all_done = true;
            let mut work_done = true;
            let mut received = 0;
            let mut path_failed = false;
            for &h in &handles {
                let alive = ep.with_state(h, |conn, st| {
                    received += st.app.bytes_down();
                    path_failed |= st.path_failed;
                    let done = st.app.is_done(now) || st.app.failure().is_some();
                    work_done &= done;
                    if done && !conn.is_closing() {
                        conn.close(now, 0, "done");
                    }
                });
                // Done once gone from the endpoint: a closed connection stays until it has
                // drained (RFC 9000 §10.2), so the server's packets still in flight meet a
                // closing connection rather than a port nobody listens on.
                if alive.is_some() {
                    all_done = false;
                }
            }
            if work_done && work_done_at.is_none() {
                work_done_at = Some(now);
            }
            if migrate_after.is_some_and(|t| received >= t) && !work_done {
                migrate_now = true;
                return true;
            }
            if path_failed && rescues_left > 0 && !work_done {
                rescues_left -= 1;
                migrate_now = true;
                rescue = true;
                return true;
            }
            all_done
        })?;
        if !migrate_now {
            break finished;
        }
        // Active migration (RFC 9000 §9.2): every live connection must be able to follow
        // before the socket moves (a closing one stays behind and drains unanswered).
        migrate_after = None;
        for &h in &handles {
            endpoint.with_state(h, |_, st| st.path_failed = false);
        }
        for &h in &handles {
            let check = endpoint.with_state(h, |conn, _| {
                if conn.is_closing() {
                    Ok(())
                } else {
                    conn.can_migrate()
                }
            });
            if let Some(Err(e)) = check {
                if rescue {
                    // No spare CID yet (say): stay, and let the idle timeout decide.
                    tracing::warn!("cannot move again after a failed path: {e}");
                    continue 'drive;
                }
                return Err(ClientError::Failed(format!("cannot migrate: {e}")));
            }
        }
        dp.rebind()?;
        let now = Instant::now();
        for &h in &handles {
            endpoint.with_state(h, |conn, _| {
                if !conn.is_closing() {
                    // Checked just above, on the same thread: nothing changed since.
                    let _ = conn.migrate(now);
                }
            });
        }
    };
    let elapsed = work_done_at.map_or_else(|| start.elapsed(), |t| t.duration_since(start));
    let stats = endpoint.stats();
    report.max_datagram_size = stats.max_datagram_size_peak;
    report.packets_lost = stats.packets_lost;
    report.authentication_failures = stats.authentication_failures;
    report.ecn_capable = stats.ecn_capable_connections;
    report.ecn_failures = stats.ecn_failures;
    report.ecn_marked_sent = stats.ecn_marked_sent;
    report.ecn_ect0_received = stats.ecn_ect0_received;
    // Collect results from what the handler recorded.
    for st in endpoint.take_all_states() {
        if let Some(f) = st.app.failure() {
            return Err(ClientError::Failed(f.to_string()));
        }
        if let Some(at) = st.connected_at {
            handshake_total += (at - start).as_secs_f64() * 1000.0;
            connected += 1;
            report.quic_version = st.version;
        }
        if st.key_update_done {
            report.key_updates += 1;
        }
        report.resumed += u64::from(st.resumed);
        if opts.early_data {
            *report.early_data.get_or_insert(0) += u64::from(st.early_data == Some(true));
            *report.zero_rtt_packets.get_or_insert(0) += st.zero_rtt_packets;
        }
        report.version_switches += u64::from(st.version_switched);
        report.migrations += st.migrations;
        match &st.app {
            ClientApp::Perf(p) => {
                report.bytes_down += p.bytes_down;
                report.bytes_up += p.bytes_up;
                report.streams += p.completed;
            }
            ClientApp::Hq(h) => report.add_fetches(&h.fetches)?,
            ClientApp::H3(h) => report.add_fetches(&h.fetches)?,
            ClientApp::Datagrams(d) => {
                report.bytes_down += d.bytes_down;
                report.bytes_up += d.bytes_up;
                *report.datagrams_sent.get_or_insert(0) += d.sent();
                *report.datagrams_echoed.get_or_insert(0) += d.echoed_count;
            }
            ClientApp::Idle => {
                if let Some(reason) = &st.closed {
                    return Err(ClientError::Failed(format!(
                        "connection failed before the handshake completed: {reason:?}"
                    )));
                }
            }
        }
    }
    if !finished {
        return Err(ClientError::Timeout(opts.timeout));
    }
    if connected == 0 {
        return Err(ClientError::Failed(
            "no connection completed its handshake".into(),
        ));
    }
    report.handshake_ms = handshake_total / connected as f64;
    report.seconds = elapsed.as_secs_f64();
    Ok(report)
}

/// A client endpoint for `n` connections on `dp`.
fn endpoint_config<D: crate::io::Datapath>(
    opts: &ClientOptions,
    dp: &D,
    n: usize,
) -> EndpointConfig {
    let mut cfg = EndpointConfig::new(opts.transport.clone(), None);
    cfg.max_connections = n;
    cfg.limit_receive_payload(dp.capabilities().max_receive_payload);
    cfg
}

/// Starts `n` connections to the server, all at `now`.
fn connect_all<U: Default>(
    endpoint: &mut Endpoint<U>,
    opts: &ClientOptions,
    n: usize,
    now: Instant,
) -> Result<Vec<ConnHandle>, ClientError> {
    let original = opts.original_version.or(opts.versions.first().copied());
    let Some(original) = original else {
        return Err(ClientError::Connect("no QUIC version to offer".into()));
    };
    let offer = VersionOffer {
        original,
        preference: opts.versions.clone(),
    };
    (0..n)
        .map(|_| {
            endpoint
                .connect_offering(
                    now,
                    opts.tls.clone(),
                    &opts.server_name,
                    opts.connect,
                    &offer,
                )
                .map_err(|e| ClientError::Connect(e.to_string()))
        })
        .collect()
}

/// Default client version.
pub const DEFAULT_VERSION: u32 = VERSION_1;

/// Moves from a fresh port after a move whose new path never answered (RFC 9000 §8.2.4).
const MIGRATION_RESCUES: u32 = 3;

/// `--resume`: warm-up connections first, to get a session ticket for each connection of
/// the workload.
mod resume {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Resumption};
    use rustls::client::{Tls12ClientSessionValue, Tls13ClientSessionValue};
    use rustls::pki_types::ServerName;
    use rustls::NamedGroup;

    use super::{ClientError, ClientOptions};
    use crate::conn::{Connection, Event};
    use crate::endpoint::{Endpoint, EventHandler};
    use crate::worker::drive_until;

    /// How long the warm-up connection waits for a ticket once connected: servers send
    /// theirs with their last handshake flight, so one round trip is plenty.
    const TICKET_WAIT: Duration = Duration::from_secs(2);
    /// Servers the store keeps key-exchange hints for (rustls's default size).
    const SESSIONS: usize = 256;

    /// A copy of `tls` whose resumption store counts the tickets it is given and keeps up
    /// to `capacity` of them (rustls's own store keeps 8 a server).
    pub(super) fn counting_tickets(
        tls: &Arc<rustls::ClientConfig>,
        capacity: usize,
    ) -> (Arc<rustls::ClientConfig>, Arc<CountingStore>) {
        let store = Arc::new(CountingStore {
            inner: ClientSessionMemoryCache::new(SESSIONS),
            tls13: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            tickets: AtomicU64::new(0),
            holding: AtomicBool::new(false),
        });
        let mut config = (**tls).clone();
        config.resumption = Resumption::store(store.clone());
        (Arc::new(config), store)
    }

    /// Gets a ticket for each of the workload's connections: servers hand out a few per
    /// connection (two, typically) and each is good for one resumption (RFC 8446 §C.4), so
    /// one connection first shows how many come per connection, then enough more connect
    /// at once. No ticket is not an error: the workload then does full handshakes and
    /// reports `resumed: 0`. Returns the version the server moved the warm-ups to, if it
    /// did (compatible version negotiation): their tickets are that version's.
    pub(super) fn warm_up<D: crate::io::Datapath>(
        opts: &ClientOptions,
        dp: &mut D,
        tickets: &CountingStore,
    ) -> Result<Option<u32>, ClientError> {
        let needed = opts.conns.max(1) as u64;
        tickets.holding.store(true, Ordering::Relaxed);
        let gathered = gather(opts, dp, tickets, needed);
        tickets.holding.store(false, Ordering::Relaxed);
        let learned = gathered?;
        if tickets.count() < needed {
            tracing::warn!(
                tickets = tickets.count(),
                needed,
                "the server sent too few session tickets: some connections will not resume"
            );
        }
        Ok(learned)
    }

    /// Warm-up batches until `needed` tickets are in, or a batch brings none; returns the
    /// version the server moved them to, if any.
    fn gather<D: crate::io::Datapath>(
        opts: &ClientOptions,
        dp: &mut D,
        tickets: &CountingStore,
        needed: u64,
    ) -> Result<Option<u32>, ClientError> {
        let mut connections = 0u64;
        let mut batch = 1u64;
        let mut learned = None;
        loop {
            let before = tickets.count();
            learned = warm_up_batch(opts, dp, tickets, batch as usize)?.or(learned);
            connections += batch;
            let got = tickets.count();
            if got >= needed || got == before {
                return Ok(learned);
            }
            let per_connection = (got / connections).max(1);
            batch = (needed - got).div_ceil(per_connection);
        }
    }

    /// `n` connections that each wait for a ticket (or [`TICKET_WAIT`]) and close; returns
    /// once all have drained, so nothing of them reaches the workload's endpoint, with the
    /// version the server moved them to, if it did.
    fn warm_up_batch<D: crate::io::Datapath>(
        opts: &ClientOptions,
        dp: &mut D,
        tickets: &CountingStore,
        n: usize,
    ) -> Result<Option<u32>, ClientError> {
        let mut endpoint: Endpoint<WarmUp> = Endpoint::new(super::endpoint_config(opts, dp, n));
        let start = Instant::now();
        let handles = super::connect_all(&mut endpoint, opts, n, start)?;
        let before = tickets.count();
        let deadline = start + opts.timeout;
        let finished = drive_until(dp, &mut endpoint, &mut Ignore, deadline, |ep, _, now| {
            let mut all_gone = true;
            for &h in &handles {
                let alive = ep.with_state(h, |conn, st| {
                    if st.connected_at.is_none() && conn.is_established() {
                        st.connected_at = Some(now);
                    }
                    let waited = st.connected_at.is_some_and(|t| now - t >= TICKET_WAIT);
                    // Every connection of the batch got its tickets (counted together).
                    let ticket = st.connected_at.is_some() && tickets.count() - before >= n as u64;
                    if (ticket || waited) && !conn.is_closing() {
                        conn.close(now, 0, "warm-up done");
                    }
                });
                all_gone &= alive.is_none();
            }
            all_gone
        })?;
        if !finished {
            return Err(ClientError::Timeout(opts.timeout));
        }
        Ok(endpoint.learned_version(&opts.server_name))
    }

    #[derive(Default)]
    pub(super) struct WarmUp {
        connected_at: Option<Instant>,
    }

    struct Ignore;

    impl EventHandler<WarmUp> for Ignore {
        fn on_event(&mut self, _: Instant, _: &mut Connection, _: &mut WarmUp, _: Event) {}
    }

    /// A session store holding TLS 1.3 tickets for the workload, oldest dropped beyond
    /// `capacity`, counting those put in it and keeping them from the warm-up's own
    /// connections (which would use them up). Key-exchange hints and TLS 1.2 sessions go
    /// to rustls's in-memory store.
    #[derive(Debug)]
    pub(super) struct CountingStore {
        inner: ClientSessionMemoryCache,
        /// Tickets with the QUIC version of the connection that got them (RFC 9369 §5).
        tls13: Mutex<VecDeque<(u32, ServerName<'static>, Tls13ClientSessionValue)>>,
        capacity: usize,
        tickets: AtomicU64,
        holding: AtomicBool,
    }

    impl CountingStore {
        pub(super) fn count(&self) -> u64 {
            self.tickets.load(Ordering::Relaxed)
        }
    }

    impl ClientSessionStore for CountingStore {
        fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
            self.inner.set_kx_hint(server_name, group)
        }

        fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
            self.inner.kx_hint(server_name)
        }

        fn set_tls12_session(&self, name: ServerName<'static>, value: Tls12ClientSessionValue) {
            self.inner.set_tls12_session(name, value)
        }

        fn tls12_session(&self, name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
            self.inner.tls12_session(name)
        }

        fn remove_tls12_session(&self, name: &ServerName<'static>) {
            self.inner.remove_tls12_session(name)
        }

        fn insert_tls13_ticket(&self, name: ServerName<'static>, value: Tls13ClientSessionValue) {
            self.tickets.fetch_add(1, Ordering::Relaxed);
            let mut tickets = self.tls13.lock().unwrap_or_else(|e| e.into_inner());
            if tickets.len() == self.capacity {
                tickets.pop_front();
            }
            let version = crate::tls::ticket_version::current().unwrap_or(0);
            tickets.push_back((version, name, value));
        }

        fn take_tls13_ticket(&self, name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
            if self.holding.load(Ordering::Relaxed) {
                return None;
            }
            // Newest first, as rustls's own store hands them out.
            let mut tickets = self.tls13.lock().unwrap_or_else(|e| e.into_inner());
            // Only a ticket of the version this connection starts in (RFC 9369 §5).
            let version = crate::tls::ticket_version::current()?;
            let at = tickets
                .iter()
                .rposition(|(v, n, _)| *v == version && n == name)?;
            tickets.remove(at).map(|(_, _, value)| value)
        }
    }
}
