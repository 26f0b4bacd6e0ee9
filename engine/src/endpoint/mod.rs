//! One endpoint per worker: the CID table, accepting connections, and answering packets
//! that match no connection (RFC 9000 §5.2). Share-nothing: an endpoint is owned by one
//! thread and touched by no other.
//!
//! Per-connection application state `U` lives beside each connection; an `EventHandler`
//! sees every connection event right after the input that caused it.

pub mod cid;
mod early_packets;
pub mod redeemed_tokens;
pub mod source_limit;

use redeemed_tokens::RedeemedTokens;

/// Slots of the record of redeemed NEW_TOKEN tokens, over all of a server's workers: 1 MiB,
/// which catches the replays of (about) the last 32,768 tokens redeemed.
const REDEEMED_TOKENS: usize = 128 * 1024;

/// The default of `EndpointConfig::retry_above_unvalidated`, per worker. A genuine
/// connection waits about a round trip for validation (until the client's first Handshake
/// packet), so 1024 at once is some 10,000 new connections a second at 100 ms, about what
/// one core can sign (a full handshake costs ~100 µs of server time): Retry only starts
/// where the worker could not keep up anyway, or under forged Initials, which never
/// validate and are dropped only after 10 s of silence (`UNVALIDATED_HANDSHAKE_TIMEOUT`).
pub const DEFAULT_RETRY_ABOVE_UNVALIDATED: usize = 1024;

mod routes;
pub mod stateless;
mod timers;

use std::collections::VecDeque;

// Keyed per map (DoS-resistant: peers choose CIDs) and far cheaper than SipHash per packet.
use foldhash::{HashMap, HashMapExt};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use slab::Slab;

use crate::conn::{
    CidEvent, Connection, Event, ServerConnectionParams, TransportConfig, VersionOffer,
};
use crate::crypto::tokens::{
    self, PeerResetToken, ResetTokenKey, TokenError, TokenKey, TokenLifetimes, ValidatedToken,
};
use crate::io::{RxMeta, TxMeta};
use crate::wire::cid::ConnectionId;
use crate::wire::error::TransportErrorCode as Code;
use crate::wire::header::{self, Header, LongType, SUPPORTED_VERSIONS};
use crate::wire::net;
use crate::wire::steer::CidLayout;

pub use cid::{CidGenerator, QuicLbConfig, QuicLbError};
use early_packets::EarlyPackets;
use routes::Routes;
pub use source_limit::SourceLimit;
use timers::TimerQueue;

/// Index of a connection inside its endpoint.
pub type ConnHandle = usize;

/// Receives every connection event, with the connection and its application state.
pub trait EventHandler<U> {
    fn on_event(&mut self, now: Instant, conn: &mut Connection, state: &mut U, event: Event);
}

#[derive(Clone)]
pub struct EndpointConfig {
    pub transport: Arc<TransportConfig>,
    /// TLS for accepting; `None` makes a client-only endpoint.
    pub server_tls: Option<Arc<rustls::ServerConfig>>,
    /// How our CIDs are laid out (QUIC-LB: config rotation, server id, nonce). Set through
    /// `set_quic_lb`, which checks it; tests may set layouts the checks refuse.
    pub quic_lb: QuicLbConfig,
    pub worker_id: u8,
    pub max_connections: usize,
    /// Server: handshakes per client address (`source_limit`); `None`, no limit.
    pub handshakes_per_source: Option<SourceLimit>,
    /// Answer first Initials with Retry to validate addresses (RFC 9000 §8.1.2).
    pub require_retry: bool,
    /// Server: answer first Initials without a valid token with Retry, as `require_retry`
    /// does, while at least this many connections wait for their client's address to be
    /// validated (RFC 9000 §8.1). Each Initial from a forged source opens such a connection,
    /// which costs a TLS handshake and a table entry until it times out; past this many,
    /// one costs a stateless Retry instead, and genuine clients pay a round trip. `None`:
    /// only `require_retry` decides.
    pub retry_above_unvalidated: Option<usize>,
    /// The QUIC versions a server accepts, each of `SUPPORTED_VERSIONS`; clients in others
    /// get Version Negotiation listing these, and the server's version_information names
    /// them (RFC 9368 §3). Ignored by a client endpoint.
    pub versions: Vec<u32>,
    /// Server: the versions it moves a client to when the client's first flight converts to
    /// one and lists it (compatible version negotiation, RFC 9368 §2.3; v1 and v2 convert
    /// into each other), most preferred first; any not in `versions` is ignored. Empty:
    /// every connection stays in the version of the client's first flight.
    pub preferred_versions: Vec<u32>,
    pub retry_token_lifetime: Duration,
    /// How long a NEW_TOKEN token a server hands out stays good for the client's later
    /// connections (RFC 9000 §8.1.3); zero hands out none.
    pub new_token_lifetime: Duration,
    /// Shared by every worker of a server so any of them can reset or validate for the others.
    pub reset_key: Arc<ResetTokenKey>,
    pub token_key: Arc<TokenKey>,
    /// NEW_TOKEN tokens already used to skip address validation, shared by every worker
    /// so that a copy sent to another worker is caught too (RFC 9000 §8.1.4).
    pub redeemed_tokens: Arc<RedeemedTokens>,
    /// Most stateless packets (VN, Retry, reset, refusals) queued at once; beyond it they are dropped.
    pub max_stateless_queue: usize,
    /// Keep the application state of drained connections for `take_all_states` (clients reading results).
    pub keep_drained_states: bool,
}

impl EndpointConfig {
    /// Issues CIDs as `lb` says, if it is within the limits (`QuicLbConfig::check`).
    pub fn set_quic_lb(&mut self, lb: &QuicLbConfig) -> Result<(), QuicLbError> {
        lb.check()?;
        self.quic_lb = lb.clone();
        Ok(())
    }

    /// The layout of every CID we issue, as the steering (XDP, kernel, hand-off) reads it.
    pub fn layout(&self) -> CidLayout {
        self.quic_lb.layout()
    }

    pub fn new(transport: TransportConfig, server_tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        Self {
            transport: Arc::new(transport),
            server_tls,
            quic_lb: QuicLbConfig::default(),
            worker_id: 0,
            max_connections: 100_000,
            handshakes_per_source: None,
            require_retry: false,
            retry_above_unvalidated: Some(DEFAULT_RETRY_ABOVE_UNVALIDATED),
            versions: SUPPORTED_VERSIONS.to_vec(),
            preferred_versions: Vec::new(),
            retry_token_lifetime: Duration::from_secs(10),
            new_token_lifetime: Duration::from_secs(24 * 3600),
            reset_key: Arc::new(ResetTokenKey::random()),
            token_key: Arc::new(TokenKey::random()),
            redeemed_tokens: Arc::new(RedeemedTokens::new(REDEEMED_TOKENS)),
            max_stateless_queue: 256,
            keep_drained_states: false,
        }
    }

    /// Advertises no larger max_udp_payload_size than the datapath can receive whole
    /// (never below the 1200 bytes every QUIC path carries). A larger promise would only
    /// have peers probe, and lose, datagrams we drop on arrival.
    pub fn limit_receive_payload(&mut self, bytes: usize) {
        let bytes = (bytes as u64).max(crate::conn::MIN_INITIAL_SIZE as u64);
        if bytes < self.transport.max_udp_payload_size {
            Arc::make_mut(&mut self.transport).max_udp_payload_size = bytes;
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointStats {
    pub datagrams_received: u64,
    pub connections_accepted: u64,
    pub connections_refused: u64,
    /// Handshakes refused because their (validated) source had used up its handshakes
    /// (`EndpointConfig::handshakes_per_source`).
    pub handshakes_limited: u64,
    pub connections_closed: u64,
    pub version_negotiations_sent: u64,
    /// NEW_TOKEN tokens handed to clients (servers; one per connection).
    pub new_tokens_sent: u64,
    /// Handshakes that resumed a session from a TLS ticket (both roles): no certificate
    /// sent or verified.
    pub resumed_handshakes: u64,
    /// Server connections whose early data (0-RTT) was accepted.
    pub early_data_accepted: u64,
    /// 0-RTT packets processed, over the connections closed so far.
    pub zero_rtt_packets: u64,
    /// 0-RTT datagrams that arrived before their connection's first Initial and were kept
    /// for it (RFC 9001 §4.6.1), and those of them the connection then got.
    pub early_packets_buffered: u64,
    pub early_packets_delivered: u64,
    /// Handshakes that moved to another version than the client's first flight's
    /// (compatible version negotiation, RFC 9368 §2.3; both roles).
    pub compatible_version_switches: u64,
    /// Client connections that started with a NEW_TOKEN token from an earlier one.
    pub new_tokens_used: u64,
    pub retries_sent: u64,
    pub stateless_resets_sent: u64,
    pub stateless_resets_received: u64,
    pub invalid_tokens: u64,
    /// Valid NEW_TOKEN tokens presented again: taken as no token (RFC 9000 §8.1.4).
    pub replayed_tokens: u64,
    /// Datagrams matching no connection and not worth answering.
    pub dropped_unroutable: u64,
    pub stateless_dropped: u64,
    /// Path MTU discovery over the connections closed so far (RFC 9000 §14.3).
    pub pmtu_probes_sent: u64,
    pub pmtu_probes_lost: u64,
    pub pmtu_black_holes: u64,
    /// The largest maximum datagram size a closed connection was using at its end.
    pub max_datagram_size_peak: u64,
    /// Over the connections closed so far: packets sent; declared lost (RFC 9002 §6);
    /// received and discarded for any reason (duplicates, undecryptable, for a discarded
    /// packet number space, ...); received twice; too late to tell from a duplicate (RFC
    /// 9000 §13.2.3); and failing authentication in the Handshake or 1-RTT space (RFC 9001
    /// §6.6: corruption on the path, or forgery).
    pub packets_sent: u64,
    pub packets_lost: u64,
    pub packets_dropped: u64,
    pub duplicate_packets: u64,
    pub late_packets: u64,
    pub authentication_failures: u64,
    /// Congestion window reductions, and those undone as spurious (reordering, not loss).
    pub congestion_events: u64,
    pub spurious_congestion_events: u64,
    /// ECN (RFC 9000 §13.4) over connections closed so far: those whose path had passed
    /// validation, validations failed, 1-RTT packets sent marked ECT(0), ECT(0)-marked
    /// packets received, and ACKs whose CE count rose (answered as congestion).
    pub ecn_capable_connections: u64,
    pub ecn_failures: u64,
    pub ecn_marked_sent: u64,
    pub ecn_ect0_received: u64,
    pub ecn_ce_events: u64,
}

struct Entry<U> {
    /// Boxed: a connection is ~6 KB, and the slab then moves and grows by pointers.
    conn: Box<Connection>,
    /// The peer's stateless reset tokens for this connection (keys of `by_reset_token`).
    reset_tokens: Vec<PeerResetToken>,
    /// Our address the peer's datagrams arrive at: we answer from it (`TxMeta::src`).
    local: Option<IpAddr>,
    state: U,
    /// The client's original DCID (server side), so retransmitted Initials find us.
    initial_dcid: Option<ConnectionId>,
    /// The deadline this connection has in `Endpoint::timers`.
    timer: Option<Instant>,
    /// Its deadline may have changed since `timer` was set: the sending pass recomputes it
    /// (see `Endpoint::queue_with_stale_deadline`). Only ever set while `queued`.
    timer_stale: bool,
    queued: bool,
    /// Server: a NEW_TOKEN token went to this connection.
    token_issued: bool,
    /// Server: opened by an Initial from an address not yet validated, and still waiting
    /// for its validation (counted in `Endpoint::unvalidated`).
    unvalidated: bool,
    /// Server, with a handshake limit: the source this still unvalidated connection counts
    /// as pending for (`source_limit`).
    pending_source: Option<IpAddr>,
    /// Client: the server name connected to, which keys the tokens it hands out.
    server_name: Option<Box<str>>,
}

/// A client's NEW_TOKEN tokens by server name, with the QUIC version of the connection
/// that got each (RFC 9369 §5: a token is only for a connection starting in that version).
/// Bounded: a few per server (the newest), a few hundred servers; each token is used once,
/// so connections stay unlinkable by it (RFC 9000 §8.1.3).
#[derive(Default)]
struct TokenStore {
    by_server: HashMap<Box<str>, VecDeque<(u32, Vec<u8>)>>,
}

impl TokenStore {
    const PER_SERVER: usize = 2;
    const SERVERS: usize = 256;

    fn insert(&mut self, server: &str, version: u32, token: Vec<u8>) {
        make_room(&mut self.by_server, server, Self::SERVERS);
        let queue = self.by_server.entry(server.into()).or_default();
        if queue.len() >= Self::PER_SERVER {
            queue.pop_front();
        }
        queue.push_back((version, token));
    }

    /// The newest token for `server` from a connection in `version`, taken out.
    fn take(&mut self, server: &str, version: u32) -> Option<Vec<u8>> {
        let queue = self.by_server.get_mut(server)?;
        let at = queue.iter().rposition(|(v, _)| *v == version)?;
        let token = queue.remove(at).map(|(_, t)| t);
        if queue.is_empty() {
            self.by_server.remove(server);
        }
        token
    }
}

/// A client's memory of servers stays bounded: about to add `server` to a full map, it
/// forgets some other server rather than grow.
fn make_room<V>(by_server: &mut HashMap<Box<str>, V>, server: &str, limit: usize) {
    if !by_server.contains_key(server) && by_server.len() >= limit {
        if let Some(victim) = by_server.keys().next().cloned() {
            by_server.remove(&victim);
        }
    }
}

/// Client, at the end of a handshake with server `name`: remembers the version a
/// compatible negotiation moved the connection to, and forgets it once a Version
/// Negotiation sent the connection elsewhere (the server no longer speaks it).
fn learn_version(learned: &mut HashMap<Box<str>, u32>, name: &str, conn: &Connection) {
    if conn.stats().compatible_version_switch {
        make_room(learned, name, TokenStore::SERVERS);
        learned.insert(name.into(), conn.version());
    } else if conn.restarted_after_version_negotiation() {
        learned.remove(name);
    }
}

/// A packet queued without a connection.
struct StatelessPacket {
    dst: SocketAddr,
    /// Where the datagram it answers arrived (see `TxMeta::src`).
    src: Option<IpAddr>,
    len: usize,
    buf: Box<[u8; 1500]>,
}

pub struct Endpoint<U> {
    config: EndpointConfig,
    conns: Slab<Entry<U>>,
    routes: Routes,
    by_reset_token: HashMap<PeerResetToken, ConnHandle>,
    /// Connections that may have something to send, in round-robin order.
    send_queue: VecDeque<ConnHandle>,
    timers: TimerQueue,
    /// Connections with `timer_stale` set (all of them in `send_queue`).
    stale_timers: usize,
    stateless: VecDeque<StatelessPacket>,
    // Boxed so buffers move between the pool and the queue without copying 1.5 KB.
    #[allow(clippy::vec_box)]
    stateless_pool: Vec<Box<[u8; 1500]>>,
    stats: EndpointStats,
    drained_states: Vec<U>,
    expired_scratch: Vec<ConnHandle>,
    /// Copy of a first Initial being checked for authenticity.
    initial_scratch: Vec<u8>,
    /// Server with early data: 0-RTT datagrams that overtook their Initial.
    early_packets: EarlyPackets,
    /// Debug builds (tests, CI) check every `Transmit::more == false` claim by asking the
    /// connection again into this buffer: it must build nothing.
    #[cfg(debug_assertions)]
    drained_check: Vec<u8>,
    /// Whether the last datagram handed to `handle_datagram` authenticated as a packet of
    /// a connection whose peer is at its source address.
    source_authenticated: bool,
    /// Client: NEW_TOKEN tokens by server name, for later connections (RFC 9000 §8.1.3).
    tokens: TokenStore,
    /// Client: the version a server moved our last connection to by compatible version
    /// negotiation, by server name: the next connection's first flight is in it (RFC 9368
    /// §2.4), so that its tokens and tickets, which belong to it (RFC 9369 §5), apply.
    learned_versions: HashMap<Box<str>, u32>,
    /// Server: connections whose client address is not validated yet (`Entry::unvalidated`).
    unvalidated: usize,
    /// Server: handshakes per client address, if limited.
    limiter: Option<source_limit::HandshakeLimiter>,
}

/// The reason phrase of a refusal for `EndpointConfig::handshakes_per_source`.
const LIMITED_REASON: &str = "too many handshakes from this address";

impl<U: Default> Endpoint<U> {
    pub fn new(mut config: EndpointConfig) -> Self {
        // A preferred version the server does not accept is never one to move a client to.
        let accepted = &config.versions;
        config.preferred_versions.retain(|v| accepted.contains(v));
        let config_limiter = config
            .handshakes_per_source
            .filter(|l| {
                let ok = l.check();
                if let Err(e) = &ok {
                    tracing::warn!(%e, "handshake limit ignored");
                }
                ok.is_ok()
            })
            .filter(|_| config.server_tls.is_some())
            .map(source_limit::HandshakeLimiter::new);
        Self {
            config,
            // Tables start small and grow with the connections (amortised). Reserving for
            // a thousand connections up front cost 6 MB of slab and 300 KB of CID table
            // per endpoint, and each new connection then page-faulted its way into
            // untouched memory.
            conns: Slab::with_capacity(16),
            routes: Routes::with_capacity(64, 16),
            by_reset_token: HashMap::with_capacity(64),
            send_queue: VecDeque::with_capacity(16),
            timers: TimerQueue::with_capacity(16),
            stale_timers: 0,
            stateless: VecDeque::new(),
            stateless_pool: Vec::new(),
            stats: EndpointStats::default(),
            drained_states: Vec::new(),
            expired_scratch: Vec::new(),
            initial_scratch: Vec::with_capacity(1500),
            early_packets: EarlyPackets::default(),
            #[cfg(debug_assertions)]
            drained_check: vec![0; 1 << 16],
            source_authenticated: false,
            tokens: TokenStore::default(),
            learned_versions: HashMap::new(),
            unvalidated: 0,
            limiter: config_limiter,
        }
    }

    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    pub fn stats(&self) -> EndpointStats {
        self.stats
    }

    /// Whether the datagram last handed to `handle_datagram` authenticated as a packet of
    /// a connection whose peer is at the datagram's source address (a datapath may trust
    /// link-layer facts learnt from it: see `Datapath::recv_batch_vouched`). A new
    /// connection's first Initial does not count: anyone can seal one.
    pub fn source_authenticated(&self) -> bool {
        self.source_authenticated
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Server: connections still waiting for their client's address to be validated
    /// (`EndpointConfig::retry_above_unvalidated`).
    pub fn unvalidated_connection_count(&self) -> usize {
        self.unvalidated
    }

    /// Connections that may still send something: all but those the peer closed, which
    /// only wait out their draining period (RFC 9000 §10.2.2). What a graceful shutdown
    /// waits for.
    pub fn live_connection_count(&self) -> usize {
        self.conns
            .iter()
            .filter(|(_, e)| !e.conn.is_draining())
            .count()
    }

    pub fn handles(&self) -> impl Iterator<Item = ConnHandle> + '_ {
        self.conns.iter().map(|(h, _)| h)
    }

    pub fn conn(&self, h: ConnHandle) -> Option<&Connection> {
        self.conns.get(h).map(|e| &*e.conn)
    }

    fn cid_generator(&self) -> CidGenerator {
        CidGenerator::new(
            self.config.layout(),
            self.config.quic_lb.config_rotation,
            &self.config.quic_lb.server_id,
            self.config.worker_id,
            self.config.reset_key.clone(),
        )
    }

    /// Opens a client connection in `version`.
    pub fn connect(
        &mut self,
        now: Instant,
        tls: Arc<rustls::ClientConfig>,
        server_name: &str,
        remote: SocketAddr,
        version: u32,
    ) -> Result<ConnHandle, crate::wire::error::TransportError> {
        self.connect_with_versions(now, tls, server_name, remote, &[version])
    }

    /// Opens a client connection in the first of `versions`; if the server answers with
    /// Version Negotiation, it starts over in the first of the others the server lists
    /// (RFC 9368 §2.1, with its downgrade checks).
    pub fn connect_with_versions(
        &mut self,
        now: Instant,
        tls: Arc<rustls::ClientConfig>,
        server_name: &str,
        remote: SocketAddr,
        versions: &[u32],
    ) -> Result<ConnHandle, crate::wire::error::TransportError> {
        let offer = VersionOffer::preferring(versions).ok_or_else(|| {
            crate::wire::error::TransportError::new(
                crate::wire::error::TransportErrorCode::INTERNAL_ERROR,
                "a client needs a QUIC version",
            )
        })?;
        self.connect_offering(now, tls, server_name, remote, &offer)
    }

    /// Client: the version a server named `server_name` moved an earlier connection to by
    /// compatible version negotiation, which later connections to it start in.
    pub fn learned_version(&self, server_name: &str) -> Option<u32> {
        self.learned_versions.get(server_name).copied()
    }

    /// Opens a client connection whose first flight is in `offer.original`, listing the
    /// versions of `offer.preference` it converts to so that the server may move it to one
    /// (RFC 9368 §2.3), and falling back through them after Version Negotiation (§2.1).
    pub fn connect_offering(
        &mut self,
        now: Instant,
        tls: Arc<rustls::ClientConfig>,
        server_name: &str,
        remote: SocketAddr,
        offer: &VersionOffer,
    ) -> Result<ConnHandle, crate::wire::error::TransportError> {
        let learned;
        let offer = match self.learned_versions.get(server_name) {
            Some(&v) if v != offer.original && offer.preference.contains(&v) => {
                learned = VersionOffer {
                    original: v,
                    preference: offer.preference.clone(),
                };
                &learned
            }
            _ => offer,
        };
        let mut dcid_bytes = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut dcid_bytes);
        let dcid = ConnectionId::new(&dcid_bytes).expect("16 bytes");
        let mut conn = Box::new(Connection::new_client(
            self.config.transport.clone(),
            tls,
            server_name,
            offer,
            remote,
            dcid,
            Box::new(self.cid_generator()),
            now,
        )?);
        if let Some(token) = self.tokens.take(server_name, offer.original) {
            conn.set_initial_token(token);
            self.stats.new_tokens_used += 1;
        }
        let h = self.insert(conn, None);
        if let Some(e) = self.conns.get_mut(h) {
            e.server_name = Some(server_name.into());
        }
        Ok(h)
    }

    fn insert(&mut self, conn: Box<Connection>, initial_dcid: Option<ConnectionId>) -> ConnHandle {
        let cids: Vec<ConnectionId> = conn.local_cids().collect();
        let h = self.conns.insert(Entry {
            conn,
            reset_tokens: Vec::new(),
            local: None,
            state: U::default(),
            initial_dcid,
            timer: None,
            timer_stale: false,
            queued: false,
            token_issued: false,
            unvalidated: false,
            pending_source: None,
            server_name: None,
        });
        for cid in cids {
            self.routes.insert_cid(cid, h);
        }
        if let Some(d) = initial_dcid {
            self.routes.insert_initial(d, h);
        }
        self.mark_send(h);
        h
    }

    fn mark_send(&mut self, h: ConnHandle) {
        if let Some(e) = self.conns.get_mut(h) {
            if !e.queued {
                e.queued = true;
                self.send_queue.push_back(h);
            }
        }
    }

    /// Handles one received datagram. Returns the connection it went to, if any.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        meta: RxMeta,
        buf: &mut [u8],
        handler: &mut impl EventHandler<U>,
    ) -> Option<ConnHandle> {
        self.stats.datagrams_received += 1;
        self.source_authenticated = false;
        let cid_len = self.config.layout().cid_len;
        // Unreadable headers go to `handle_unknown` too: a stateless reset is random bytes.
        let known = header::peek_dcid(buf, cid_len)
            .ok()
            .and_then(|dcid| ConnectionId::new(dcid).ok())
            .and_then(|d| self.routes.lookup(&d));
        if let Some(h) = known {
            self.source_authenticated = self.deliver(now, h, meta, buf, handler);
            return Some(h);
        }
        self.handle_unknown(now, meta, buf, handler)
    }

    /// Hands a datagram to connection `h`; returns whether it authenticated as from the
    /// connection's peer at its current address.
    #[inline(always)] // the per-datagram path: a call here cost 28 instructions a packet
    fn deliver(
        &mut self,
        now: Instant,
        h: ConnHandle,
        meta: RxMeta,
        buf: &mut [u8],
        handler: &mut impl EventHandler<U>,
    ) -> bool {
        let e = &mut self.conns[h];
        let opened = e.conn.packets_received();
        e.conn.handle_datagram(now, meta.src, meta.ecn, buf);
        // Answer from where the peer writes, as learnt from packets that authenticated
        // and came from its current address (junk with a known CID sent to another of
        // our addresses must not move it). Servers only: a client's own address may
        // change under it, and the kernel picks the right one.
        let authenticated = e.conn.packets_received() > opened && e.conn.remote_addr() == meta.src;
        if self.config.server_tls.is_some() && authenticated {
            e.local = local_ip(&meta);
        }
        self.after_io(now, h, handler);
        authenticated
    }

    /// RFC 9000 §6.1: Version Negotiation for a packet in a version we do not accept, only
    /// for datagrams big enough to be a first Initial (no amplification).
    fn negotiate_version(&mut self, meta: &RxMeta, len: usize, dcid: &[u8], scid: &[u8]) {
        if len < crate::conn::MIN_INITIAL_SIZE {
            self.stats.dropped_unroutable += 1;
            return;
        }
        // A copy on the stack: the queue borrows the endpoint.
        let mut offered = [0u32; SUPPORTED_VERSIONS.len()];
        let n = self.config.versions.len().min(offered.len());
        offered[..n].copy_from_slice(&self.config.versions[..n]);
        let sent = self.queue_stateless(meta, |b| {
            stateless::version_negotiation(b, dcid, scid, &offered[..n])
        });
        if sent {
            self.stats.version_negotiations_sent += 1;
        }
    }

    /// RFC 9000 §5.2: a datagram for no connection we know.
    fn handle_unknown(
        &mut self,
        now: Instant,
        meta: RxMeta,
        buf: &mut [u8],
        handler: &mut impl EventHandler<U>,
    ) -> Option<ConnHandle> {
        let len = buf.len();
        // RFC 9000 §10.3.1: a datagram for no known CID may be a stateless reset of one of
        // ours, whatever its first byte says, if it comes from that connection's peer.
        if len >= 21 {
            let mut token = [0u8; 16];
            token.copy_from_slice(&buf[len - 16..]);
            let found = self.by_reset_token.get(&PeerResetToken(token)).copied();
            if let Some(h) = found.filter(|&h| {
                self.conns
                    .get(h)
                    .is_some_and(|e| net::same_peer(e.conn.remote_addr(), meta.src))
            }) {
                self.stats.stateless_resets_received += 1;
                if let Some(e) = self.conns.get_mut(h) {
                    e.conn.handle_stateless_reset(now);
                }
                self.after_io(now, h, handler);
                return Some(h);
            }
        }
        let cid_len = self.config.layout().cid_len;
        let Ok((hdr, _)) = header::parse(buf, cid_len) else {
            self.stats.dropped_unroutable += 1;
            return None;
        };
        let Some(tls) = self.config.server_tls.clone() else {
            // A client endpoint answers nothing it doesn't know.
            self.stats.dropped_unroutable += 1;
            return None;
        };
        match hdr {
            Header::UnsupportedVersion { dcid, scid, .. } => {
                self.negotiate_version(&meta, len, dcid, scid);
                None
            }
            Header::Long {
                version,
                dcid,
                scid,
                ..
            } if !self.config.versions.contains(&version) => {
                self.negotiate_version(&meta, len, dcid.as_slice(), scid.as_slice());
                None
            }
            Header::Long {
                ty: LongType::Initial,
                version,
                dcid,
                scid,
                token,
                ..
            } => {
                if len < crate::conn::MIN_INITIAL_SIZE {
                    // §14.1: a server MUST discard an Initial in a datagram under 1200 bytes.
                    self.stats.dropped_unroutable += 1;
                    return None;
                }
                if dcid.len() < 8 && !tokens::claims_retry(token) {
                    // §7.2: a client's first DCID is at least 8 bytes. After a Retry it is
                    // the Retry's SCID, one of ours, which a layout may make shorter; the
                    // token (checked when the Initial is accepted) says which it is.
                    self.stats.dropped_unroutable += 1;
                    return None;
                }
                let token = token.to_vec();
                self.accept_initial(now, meta, buf, version, dcid, scid, &token, tls, handler)
            }
            Header::Long {
                ty: LongType::ZeroRtt,
                dcid,
                ..
            } if dcid.len() >= 8 && tls.max_early_data_size != 0 => {
                // Overtook its Initial, perhaps: kept for the connection it may create.
                if self.early_packets.keep(dcid, meta, now, buf) {
                    self.stats.early_packets_buffered += 1;
                } else {
                    self.stats.dropped_unroutable += 1;
                }
                None
            }
            Header::Short { dcid, .. } => {
                // §10.3: tell the peer this connection is gone (it may have lost state on our side).
                if let Some(reset_len) = stateless::reset_len_for(len) {
                    let token = self.config.reset_key.token(&dcid);
                    if self.queue_stateless(&meta, |b| {
                        stateless::stateless_reset(b, &token, reset_len)
                    }) {
                        self.stats.stateless_resets_sent += 1;
                    }
                } else {
                    self.stats.dropped_unroutable += 1;
                }
                None
            }
            _ => {
                self.stats.dropped_unroutable += 1;
                None
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn accept_initial(
        &mut self,
        now: Instant,
        meta: RxMeta,
        buf: &mut [u8],
        version: u32,
        dcid: ConnectionId,
        scid: ConnectionId,
        token: &[u8],
        tls: Arc<rustls::ServerConfig>,
        handler: &mut impl EventHandler<U>,
    ) -> Option<ConnHandle> {
        // Prove the Initial is genuine (it decrypts under keys from its own DCID) before
        // spending anything on it: no Retry, refusal, TLS session or table entry for garbage.
        let Some(initial_keys) =
            stateless::initial_keys_if_genuine(version, &dcid, buf, &mut self.initial_scratch)
        else {
            self.stats.dropped_unroutable += 1;
            return None;
        };
        if self.conns.len() >= self.config.max_connections {
            self.stats.connections_refused += 1;
            return self.refuse(&meta, version, &dcid, &scid, "server busy");
        }
        let mut original_dcid = dcid;
        let mut retry_scid = None;
        let mut validated = false;
        // The handshake limit was checked before a NEW_TOKEN token was spent.
        let mut limit_checked = false;
        if !token.is_empty() {
            match self.config.token_key.open(
                token,
                meta.src,
                version,
                SystemTime::now(),
                TokenLifetimes {
                    retry: self.config.retry_token_lifetime,
                    new_token: self.config.new_token_lifetime,
                },
            ) {
                Ok(ValidatedToken::Retry {
                    original_dcid: odcid,
                    retry_scid: rscid,
                }) => {
                    if rscid.as_slice() != dcid.as_slice() {
                        return self.refuse_invalid_token(meta, version, dcid, scid);
                    }
                    original_dcid = ConnectionId::new(&odcid).ok()?;
                    retry_scid = Some(dcid);
                    validated = true;
                }
                Ok(ValidatedToken::NewToken) => {
                    let nonce = tokens::nonce_of(token)?;
                    // Checked before the token is spent: a refusal must not use it up.
                    if self
                        .limiter
                        .as_ref()
                        .is_some_and(|l| !l.allows_proven(meta.src.ip(), now))
                    {
                        self.stats.handshakes_limited += 1;
                        return self.refuse(&meta, version, &dcid, &scid, LIMITED_REASON);
                    }
                    limit_checked = true;
                    if self.config.redeemed_tokens.redeem(&nonce) {
                        validated = true;
                    } else {
                        // §8.1.4: seen before, so perhaps someone else's copy: no proof
                        // that this address is the client's.
                        self.stats.replayed_tokens += 1;
                    }
                }
                Err(TokenError::WrongVersion) if tokens::claims_retry(token) => {
                    // RFC 9369 §4: a client must not switch versions after Retry; its
                    // Initial is dropped.
                    self.stats.invalid_tokens += 1;
                    return None;
                }
                Err(_) if tokens::claims_retry(token) => {
                    // §8.1.2: the client will not take another Retry; tell it at once.
                    return self.refuse_invalid_token(meta, version, dcid, scid);
                }
                Err(_) => {
                    // §8.1.3: any other token that fails (stale, from another
                    // deployment, forged) counts as none: unvalidated, perhaps a Retry.
                }
            }
        }
        // A source that used up its handshakes proves its address first (Retry), and is
        // then refused: a genuine address over its limit, never a forged one (a forged
        // source cannot return the Retry's token).
        let over_limit = !limit_checked
            && self.limiter.as_ref().is_some_and(|l| {
                if validated {
                    !l.allows_proven(meta.src.ip(), now)
                } else {
                    !l.allows_new(meta.src.ip(), now)
                }
            });
        if over_limit && validated {
            self.stats.handshakes_limited += 1;
            return self.refuse(&meta, version, &dcid, &scid, LIMITED_REASON);
        }
        let retrying = over_limit
            || self.config.require_retry
            || self
                .config
                .retry_above_unvalidated
                .is_some_and(|limit| self.unvalidated >= limit);
        if retrying && !validated {
            let mut gen = self.cid_generator();
            let new_scid = crate::conn::ConnectionIdGenerator::generate(&mut gen);
            let mut token_buf = Vec::with_capacity(128);
            self.config.token_key.seal_retry(
                meta.src,
                version,
                &dcid,
                &new_scid,
                SystemTime::now(),
                &mut token_buf,
            );
            if self.queue_stateless(&meta, |b| {
                stateless::retry(b, version, &scid, &new_scid, &dcid, &token_buf)
            }) {
                self.stats.retries_sent += 1;
            }
            return None;
        }
        let mut gen = self.cid_generator();
        let local_cid = crate::conn::ConnectionIdGenerator::generate(&mut gen);
        let params = ServerConnectionParams {
            version,
            available_versions: self.config.versions.clone(),
            preferred_versions: self.config.preferred_versions.clone(),
            remote: meta.src,
            original_dcid,
            client_scid: scid,
            local_cid,
            retry_scid,
            address_validated: validated,
            initial_keys,
        };
        let mut conn = match Connection::new_server(
            self.config.transport.clone(),
            tls,
            params,
            Box::new(gen),
            now,
        ) {
            Ok(c) => Box::new(c),
            Err(e) => {
                tracing::warn!(?e, "could not create connection");
                return None;
            }
        };
        conn.handle_datagram(now, meta.src, meta.ecn, buf);
        if conn.stats().packets_received == 0 {
            // Nothing in the datagram decrypted (a forged or corrupted Initial): keep no
            // state for it, or anyone could fill the table with garbage that looks like one.
            self.stats.dropped_unroutable += 1;
            return None;
        }
        self.stats.connections_accepted += 1;
        let h = self.insert(conn, Some(dcid));
        // The first Initial decrypted (checked above).
        self.conns[h].local = local_ip(&meta);
        if let Some(l) = &mut self.limiter {
            if validated {
                l.take(meta.src.ip(), now);
            } else {
                l.begin_pending(meta.src.ip(), now);
                self.conns[h].pending_source = Some(meta.src.ip());
            }
        }
        if !validated {
            self.conns[h].unvalidated = true;
            self.unvalidated += 1;
        }
        self.after_io(now, h, handler);
        self.deliver_early_packets(now, h, &dcid, handler);
        Some(h)
    }

    /// Gives a new connection the 0-RTT datagrams that came before its first Initial.
    fn deliver_early_packets(
        &mut self,
        now: Instant,
        h: ConnHandle,
        dcid: &ConnectionId,
        handler: &mut impl EventHandler<U>,
    ) {
        // Out of `self` while it delivers (a move of the table, not of the datagrams).
        let mut early = std::mem::take(&mut self.early_packets);
        let delivered = early.take(dcid, now, |meta, buf| {
            if self.conns.contains(h) {
                self.deliver(now, h, meta, buf, handler);
            }
        });
        self.early_packets = early;
        self.stats.early_packets_delivered += delivered as u64;
    }

    /// Refuses a first Initial with a stateless CONNECTION_CLOSE (CONNECTION_REFUSED),
    /// `reason` as its phrase.
    fn refuse(
        &mut self,
        meta: &RxMeta,
        version: u32,
        dcid: &ConnectionId,
        scid: &ConnectionId,
        reason: &str,
    ) -> Option<ConnHandle> {
        self.close_initial(meta, version, dcid, scid, Code::CONNECTION_REFUSED, reason)
    }

    /// Answers a first Initial with a stateless CONNECTION_CLOSE of `code`.
    fn close_initial(
        &mut self,
        meta: &RxMeta,
        version: u32,
        dcid: &ConnectionId,
        scid: &ConnectionId,
        code: Code,
        reason: &str,
    ) -> Option<ConnHandle> {
        self.queue_stateless(meta, |b| {
            stateless::initial_close(b, version, dcid, scid, code.0, reason)
        });
        None
    }

    fn refuse_invalid_token(
        &mut self,
        meta: RxMeta,
        version: u32,
        dcid: ConnectionId,
        scid: ConnectionId,
    ) -> Option<ConnHandle> {
        self.stats.invalid_tokens += 1;
        self.close_initial(&meta, version, &dcid, &scid, Code::INVALID_TOKEN, "")
    }

    /// Queues a stateless answer (written by `write`) to the datagram `to` describes.
    fn queue_stateless(
        &mut self,
        to: &RxMeta,
        write: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) -> bool {
        if self.stateless.len() >= self.config.max_stateless_queue {
            self.stats.stateless_dropped += 1;
            return false;
        }
        let mut buf = self
            .stateless_pool
            .pop()
            .unwrap_or_else(|| Box::new([0u8; 1500]));
        match write(&mut buf[..]) {
            Some(len) => {
                self.stateless.push_back(StatelessPacket {
                    dst: to.src,
                    src: local_ip(to),
                    len,
                    buf,
                });
                true
            }
            None => {
                self.stateless_pool.push(buf);
                false
            }
        }
    }

    /// Delivers connection `h`'s pending events without input: a client offering early
    /// data can be used as soon as it is made (`Event::Connected`).
    pub fn dispatch_events(
        &mut self,
        now: Instant,
        h: ConnHandle,
        handler: &mut impl EventHandler<U>,
    ) {
        self.after_io(now, h, handler);
    }

    /// After input reached connection `h`: route CID changes, deliver events, reschedule, reap.
    fn after_io(&mut self, now: Instant, h: ConnHandle, handler: &mut impl EventHandler<U>) {
        let Some(e) = self.conns.get_mut(h) else {
            return;
        };
        while let Some(ev) = e.conn.poll_cid_event() {
            match ev {
                CidEvent::Issued(cid) => {
                    self.routes.insert_cid(cid, h);
                }
                CidEvent::Retired(cid) => {
                    // Only our own route: should another connection's CID ever be equal,
                    // its route stays.
                    self.routes.remove_cid(&cid, Some(h));
                }
                CidEvent::PeerResetToken(token) => {
                    // Bounded: the peer can't hold more CIDs with us than our limit allows.
                    if e.reset_tokens.len() < 16 {
                        let token = PeerResetToken(token);
                        e.reset_tokens.push(token);
                        self.by_reset_token.insert(token, h);
                    }
                }
                CidEvent::PeerResetTokenRetired(token) => {
                    let token = PeerResetToken(token);
                    e.reset_tokens.retain(|t| *t != token);
                    if self.by_reset_token.get(&token) == Some(&h) {
                        self.by_reset_token.remove(&token);
                    }
                }
            }
        }
        while let Some(ev) = e.conn.poll_event() {
            if matches!(ev, Event::Connected) {
                // Emitted once per connection, when the handshake is over.
                self.stats.resumed_handshakes += u64::from(e.conn.resumed());
                self.stats.early_data_accepted += u64::from(e.conn.stats().early_data_accepted);
                self.stats.compatible_version_switches +=
                    u64::from(e.conn.stats().compatible_version_switch);
                if let Some(name) = &e.server_name {
                    learn_version(&mut self.learned_versions, name, &e.conn);
                }
            }
            handler.on_event(now, &mut e.conn, &mut e.state, ev);
        }
        if e.unvalidated && e.conn.address_validated {
            e.unvalidated = false;
            self.unvalidated -= 1;
            if let Some(l) = &mut self.limiter {
                // Charged to the address the handshake started from, as it was counted.
                match e.pending_source.take() {
                    Some(ip) => {
                        l.end_pending(ip);
                        l.take(ip, now);
                    }
                    None => l.take(e.conn.remote_addr().ip(), now),
                }
            }
        }
        if e.conn.is_handshake_confirmed() {
            // The original DCID keeps routing here until the connection ends: a late copy
            // of the client's first flight (a multi-packet ClientHello, duplicated or
            // reordered) reaches this connection, whose Initial keys are gone, instead of
            // opening a second one.
            if !e.token_issued && self.config.server_tls.is_some() && e.conn.address_validated {
                // One token per connection, for the client's next one (RFC 9000 §8.1.3):
                // bound to its IP, it lets that connection skip Retry and the 3× limit. So
                // only once the current address is validated: the handshake can end by
                // moving to an address nobody has answered from yet.
                e.token_issued = true;
                if !self.config.new_token_lifetime.is_zero() {
                    let mut token = Vec::with_capacity(64);
                    let ip = e.conn.remote_addr().ip();
                    // Tagged with the negotiated version (RFC 9369 §5).
                    let version = e.conn.version();
                    self.config.token_key.seal_new_token(
                        ip,
                        version,
                        SystemTime::now(),
                        &mut token,
                    );
                    e.conn.send_new_token(token);
                    self.stats.new_tokens_sent += 1;
                }
            }
        }
        if let Some(token) = e.conn.take_new_token() {
            if let Some(name) = &e.server_name {
                self.tokens.insert(name, e.conn.version(), token);
            }
        }
        if e.conn.is_drained() {
            self.remove(h);
            return;
        }
        self.queue_with_stale_deadline(h);
    }

    /// Queues `h` for sending, its deadline to be recomputed when the sending pass is done
    /// with it. Input is mostly answered at once, and sending changes the deadline again
    /// (loss detection, idle, ACK timers): recomputing it and moving the connection's heap
    /// entry after both, not after each, halves that work. Until then `next_timeout`
    /// answers with the connection's current deadline, and `handle_timeouts` goes by its
    /// heap entry: input does not make a deadline due at once except an immediate ACK,
    /// which the sending pass sends anyway, or a PTO that an acknowledgement shortened
    /// (backoff reset) to a time already past, which then fires on the next round, once
    /// the sending pass has rescheduled the connection. A heap entry that input made
    /// early is harmless: `Connection::handle_timeout` checks each deadline itself.
    fn queue_with_stale_deadline(&mut self, h: ConnHandle) {
        let Some(e) = self.conns.get_mut(h) else {
            return;
        };
        if !e.timer_stale {
            e.timer_stale = true;
            self.stale_timers += 1;
        }
        self.mark_send(h);
    }

    fn reschedule(&mut self, h: ConnHandle) {
        let Some(e) = self.conns.get_mut(h) else {
            return;
        };
        if e.timer_stale {
            e.timer_stale = false;
            self.stale_timers -= 1;
        }
        let t = e.conn.poll_timeout();
        if t != e.timer {
            e.timer = t;
            self.timers.set(h, t);
        }
    }

    /// Reschedules every connection whose deadline is stale (all are in the send queue):
    /// what the sending pass does, for tests comparing `next_timeout` before and after.
    #[cfg(test)]
    fn refresh_timers(&mut self) {
        let mut i = 0;
        while self.stale_timers > 0 && i < self.send_queue.len() {
            let h = self.send_queue[i];
            if self.conns.get(h).is_some_and(|e| e.timer_stale) {
                self.reschedule(h);
            }
            i += 1;
        }
        debug_assert_eq!(
            self.stale_timers, 0,
            "a stale deadline outside the send queue"
        );
    }

    /// Lets go of every connection still held (closing or draining ones at shutdown),
    /// counting their statistics in as if each had ended.
    pub fn release_all(&mut self) {
        let held: Vec<ConnHandle> = self.handles().collect();
        for h in held {
            self.remove(h);
        }
    }

    fn remove(&mut self, h: ConnHandle) {
        let e = self.conns.remove(h);
        if e.timer_stale {
            self.stale_timers -= 1;
        }
        if e.unvalidated {
            self.unvalidated -= 1;
        }
        if let (Some(ip), Some(l)) = (e.pending_source, &mut self.limiter) {
            l.end_pending(ip);
        }
        // The handle will be reused: neither its deadline nor a cached route may outlive it.
        self.timers.set(h, None);
        self.routes.forget(h);
        for cid in e.conn.local_cids() {
            self.routes.remove_cid(&cid, Some(h));
        }
        if let Some(d) = e.initial_dcid {
            self.routes.remove_initial(&d);
        }
        for t in &e.reset_tokens {
            if self.by_reset_token.get(t) == Some(&h) {
                self.by_reset_token.remove(t);
            }
        }
        self.stats.connections_closed += 1;
        let cs = e.conn.stats();
        self.stats.pmtu_probes_sent += cs.pmtu_probes_sent;
        self.stats.zero_rtt_packets += cs.zero_rtt_packets_received;
        self.stats.pmtu_probes_lost += cs.pmtu_probes_lost;
        self.stats.pmtu_black_holes += cs.pmtu_black_holes;
        self.stats.packets_sent += cs.packets_sent;
        self.stats.packets_lost += cs.lost_packets;
        self.stats.packets_dropped += cs.packets_dropped;
        self.stats.duplicate_packets += cs.duplicate_packets;
        self.stats.late_packets += cs.late_packets;
        self.stats.authentication_failures += cs.authentication_failures;
        self.stats.congestion_events += cs.congestion_events;
        self.stats.spurious_congestion_events += cs.spurious_congestion_events;
        self.stats.ecn_capable_connections += u64::from(cs.ecn_capable);
        self.stats.ecn_failures += cs.ecn_failures;
        self.stats.ecn_marked_sent += cs.ecn_marked_sent;
        self.stats.ecn_ect0_received += cs.ecn_ect0_received;
        self.stats.ecn_ce_events += cs.ecn_ce_events;
        self.stats.max_datagram_size_peak =
            self.stats.max_datagram_size_peak.max(cs.max_datagram_size);
        if self.config.keep_drained_states {
            self.drained_states.push(e.state);
        }
    }

    /// Runs `f` on a live connection and its state without delivering events (they wait for the
    /// next input); schedules the connection for sending. `None` if it is gone.
    pub fn with_state<R>(
        &mut self,
        h: ConnHandle,
        f: impl FnOnce(&mut Connection, &mut U) -> R,
    ) -> Option<R> {
        let e = self.conns.get_mut(h)?;
        let r = f(&mut e.conn, &mut e.state);
        self.queue_with_stale_deadline(h);
        Some(r)
    }

    /// Every state, of drained connections (if kept) and live ones; the endpoint keeps defaults.
    pub fn take_all_states(&mut self) -> Vec<U> {
        let mut out = std::mem::take(&mut self.drained_states);
        for (_, e) in self.conns.iter_mut() {
            out.push(std::mem::take(&mut e.state));
        }
        out
    }

    /// Lets the application act on a connection (open streams, write); events that result are
    /// delivered to `handler` and the connection is scheduled for sending.
    pub fn with_conn<R>(
        &mut self,
        now: Instant,
        h: ConnHandle,
        handler: &mut impl EventHandler<U>,
        f: impl FnOnce(&mut Connection, &mut U) -> R,
    ) -> Option<R> {
        let e = self.conns.get_mut(h)?;
        let r = f(&mut e.conn, &mut e.state);
        self.after_io(now, h, handler);
        Some(r)
    }

    /// Runs every expired connection timer.
    pub fn handle_timeouts(&mut self, now: Instant, handler: &mut impl EventHandler<U>) {
        // Stale deadlines are left to the sending pass (see `queue_with_stale_deadline`): the
        // worker receives, handles timeouts, then sends, and recomputing them here would
        // do that work twice per round again.
        // Take the expired entries first: a connection may re-arm a timer that is already due
        // (an ACK deadline only sending clears), which must wait for the next round.
        let mut expired = std::mem::take(&mut self.expired_scratch);
        while let Some(h) = self.timers.pop_due(now) {
            expired.push(h);
        }
        for h in expired.drain(..) {
            let Some(e) = self.conns.get_mut(h) else {
                continue;
            };
            e.timer = None;
            e.conn.handle_timeout(now);
            self.after_io(now, h, handler);
        }
        self.expired_scratch = expired;
    }

    /// Earliest connection timer.
    pub fn next_timeout(&self) -> Option<Instant> {
        if self.stale_timers == 0 {
            return self.timers.peek().map(|(t, _)| t);
        }
        // Connections still to be polled for sending: their current deadlines, not the heap's.
        let stale = |h: ConnHandle| self.conns.get(h).is_some_and(|e| e.timer_stale);
        let in_heap = self
            .timers
            .iter()
            .filter(|&(_, h)| !stale(h))
            .map(|(t, _)| t);
        let current = self
            .send_queue
            .iter()
            .filter(|&&h| stale(h))
            .filter_map(|&h| self.conns[h].conn.poll_timeout());
        in_heap.chain(current).min()
    }

    /// Writes the next outgoing datagram(s) into `buf`: stateless packets first, then
    /// connections round-robin.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        max_segments: usize,
    ) -> Option<TxMeta> {
        if let Some(p) = self.stateless.pop_front() {
            let len = p.len.min(buf.len());
            buf[..len].copy_from_slice(&p.buf[..len]);
            let (dst, src) = (p.dst, p.src);
            self.stateless_pool.push(p.buf);
            return Some(TxMeta {
                dst,
                src,
                len,
                segment_size: None,
                ecn: 0,
            });
        }
        while let Some(h) = self.send_queue.pop_front() {
            let Some(e) = self.conns.get_mut(h) else {
                continue;
            };
            let src = e.local;
            match e.conn.poll_transmit(now, buf, max_segments) {
                Some(t) => {
                    if t.more {
                        // Still queued: it may have more; others get their turn first.
                        self.send_queue.push_back(h);
                    } else {
                        // It sent all it had: skip the empty pass the next call would make.
                        #[cfg(debug_assertions)]
                        {
                            let n = buf.len().min(self.drained_check.len());
                            let again = e.conn.poll_transmit(now, &mut self.drained_check[..n], 1);
                            debug_assert!(
                                again.is_none(),
                                "a connection that said it had sent everything built {again:?}"
                            );
                        }
                        e.queued = false;
                        self.reschedule(h);
                    }
                    return Some(TxMeta {
                        dst: t.dst,
                        src,
                        len: t.len,
                        segment_size: t.segment_size,
                        ecn: t.ecn,
                    });
                }
                None => {
                    e.queued = false;
                    // Sending may have changed timers (loss detection, idle).
                    self.reschedule(h);
                }
            }
        }
        None
    }

    /// Closes every connection (graceful shutdown).
    pub fn close_all(&mut self, now: Instant, code: u64, reason: &str) {
        self.shut_down_all(|conn, _| conn.close(now, code, reason));
    }

    /// Graceful shutdown where the application decides how each connection ends (HTTP/3
    /// sends GOAWAY and closes once its requests are answered): `f` runs on every live
    /// connection, which is then scheduled for sending.
    pub fn shut_down_all(&mut self, mut f: impl FnMut(&mut Connection, &mut U)) {
        let hs: Vec<ConnHandle> = self.conns.iter().map(|(h, _)| h).collect();
        for h in hs {
            if let Some(e) = self.conns.get_mut(h) {
                f(&mut e.conn, &mut e.state);
            }
            self.queue_with_stale_deadline(h);
        }
    }
}

/// The local address a datagram arrived at, if the datapath knows it.
fn local_ip(meta: &RxMeta) -> Option<IpAddr> {
    let ip = meta.dst.ip();
    (!ip.is_unspecified()).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::certs::generate_self_signed;
    use crate::tls::session::{client_config, server_config, ServerVerification};
    use crate::wire::header::VERSION_1;

    struct Quiet;

    impl EventHandler<()> for Quiet {
        fn on_event(&mut self, _: Instant, _: &mut Connection, _: &mut (), _: Event) {}
    }

    /// What `next_timeout` says with deadlines still stale is what it says once they are
    /// recomputed; past the sending pass the heap holds every connection's deadline.
    fn check_timers(ep: &mut Endpoint<()>) {
        let lazy = ep.next_timeout();
        ep.refresh_timers();
        assert_eq!(ep.stale_timers, 0);
        assert_eq!(lazy, ep.next_timeout());
        for (_, e) in ep.conns.iter() {
            if !e.queued {
                assert_eq!(e.timer, e.conn.poll_timeout());
            }
        }
    }

    #[test]
    fn deadlines_recomputed_after_sending_are_seen_before_it() {
        let cert = generate_self_signed(&["localhost".into()]).unwrap();
        let alpns = vec![b"perf".to_vec()];
        let stls = server_config(cert, &alpns).unwrap();
        let ctls = client_config(ServerVerification::Insecure, &alpns).unwrap();
        let caddr: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let saddr: SocketAddr = "10.0.0.2:4433".parse().unwrap();
        let transport = TransportConfig::default();
        let mut server = Endpoint::<()>::new(EndpointConfig::new(transport.clone(), Some(stls)));
        let mut client = Endpoint::<()>::new(EndpointConfig::new(transport, None));
        let mut now = Instant::now();
        let ch = client
            .connect(now, ctls, "localhost", saddr, VERSION_1)
            .unwrap();
        let mut buf = vec![0u8; 65536];
        let mut stale_seen = 0;
        for round in 0..200 {
            if round % 10 == 5 {
                client.with_state(ch, |c, _| {
                    if let Some(id) = c.open_stream(true) {
                        c.write(id, &[7; 300]).unwrap();
                        c.finish(id).unwrap();
                    }
                });
                stale_seen += usize::from(client.stale_timers > 0);
                check_timers(&mut client);
            }
            for client_sends in [true, false] {
                let (from, to, src, dst) = if client_sends {
                    (&mut client, &mut server, caddr, saddr)
                } else {
                    (&mut server, &mut client, saddr, caddr)
                };
                from.handle_timeouts(now, &mut Quiet);
                let mut got = Vec::new();
                while let Some(t) = from.poll_transmit(now, &mut buf, 1) {
                    got.push(buf[..t.len].to_vec());
                }
                for mut d in got {
                    let meta = RxMeta { src, dst, ecn: 0 };
                    to.handle_datagram(now, meta, &mut d, &mut Quiet);
                    stale_seen += usize::from(to.stale_timers > 0);
                    check_timers(to);
                }
            }
            now += Duration::from_millis(3);
        }
        assert!(client.conn(ch).unwrap().is_established());
        assert!(
            stale_seen > 100,
            "only {stale_seen} checks with stale deadlines"
        );
    }

    #[test]
    fn the_receive_limit_lowers_the_advertised_payload_size_and_never_below_1200() {
        let mut cfg = EndpointConfig::new(TransportConfig::default(), None);
        assert_eq!(cfg.transport.max_udp_payload_size, 65527);
        cfg.limit_receive_payload(65536);
        assert_eq!(cfg.transport.max_udp_payload_size, 65527, "never raised");
        cfg.limit_receive_payload(3968);
        assert_eq!(cfg.transport.max_udp_payload_size, 3968);
        cfg.limit_receive_payload(600);
        assert_eq!(cfg.transport.max_udp_payload_size, 1200);
    }
}
