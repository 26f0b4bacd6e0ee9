//! The connection state machine: construction, the application-facing API, the TLS
//! handshake driver, timers and closing. Receiving lives in `recv.rs`, sending in `send.rs`.
//!
//! Polling order for a driver (as in quinn-proto): feed input with `handle_datagram` /
//! `handle_timeout`, then drain `poll_transmit` until `None`, then `poll_event` and
//! `poll_cid_event`, then arm a timer for `poll_timeout`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::conn::cids::{CidEvent, CidState, ConnectionIdGenerator};
use crate::conn::compatible_version::{self, CompatibleNegotiation, ServerPending};
use crate::conn::config::TransportConfig;
use crate::conn::datagrams::{DatagramQueue, MAX_QUEUED_DATAGRAMS};
use crate::conn::pmtud::Pmtud;
use crate::conn::recovery::ecn::EcnState;
use crate::conn::recovery::Recovery;
use crate::conn::sent::{FrameRecord, SentFrames, SentFramesPool};
use crate::conn::space::PacketSpace;
use crate::conn::streams::{CryptoStream, PeerLimits, StreamError, StreamEvent, StreamId, Streams};
use crate::crypto::key_update::OneRttKeys;
use crate::crypto::secrets::{initial_keys, Keys};
use crate::crypto::DirectionalKeys;
use crate::tls::session::{KeyChange, TlsAlertError, TlsSession};
use crate::wire::cid::ConnectionId;
use crate::wire::error::{TransportError, TransportErrorCode as Code};
use crate::wire::header::{SUPPORTED_VERSIONS, VERSION_1};
use crate::wire::transport_params::{TransportParameters, VersionInformation};
use crate::{Epoch, Side};

/// How long a handshake may stay silent when idle timeouts are disabled (0): connections
/// that never complete must not live for ever.
pub(crate) const HANDSHAKE_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a server keeps a handshake whose client has not proved its address (RFC 9000
/// §8.1) with nothing received (but never less than 3 PTOs, §10.1): a genuine client
/// answers within a round trip or two, a forged source never. Shorter than the idle
/// timeout, so a flood of forged Initials holds state (and keeps Retry on,
/// `EndpointConfig::retry_above_unvalidated`) for less. Such a connection ends silently,
/// as at its idle timeout: there is nobody proven to tell.
pub(crate) const UNVALIDATED_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Smallest datagram carrying a client Initial (RFC 9000 §14.1).
pub const MIN_INITIAL_SIZE: usize = 1200;

/// Why a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// We closed it (application or transport error of ours).
    Local {
        code: u64,
        app: bool,
        reason: String,
    },
    /// The peer sent CONNECTION_CLOSE.
    Peer {
        code: u64,
        app: bool,
        reason: String,
    },
    IdleTimeout,
    StatelessReset,
    /// The peer moved to an address that never answered our PATH_CHALLENGE, and no earlier
    /// validated address was known: state discarded silently (RFC 9000 §9.3.2).
    PathValidationFailed,
    /// The server does not speak our version.
    VersionMismatch,
}

/// What the application learns from a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Streams can be used: the handshake completed, or 0-RTT lets them be used before
    /// (a client offering early data, a server that accepted it).
    Connected,
    /// Client that offered early data: the handshake completed and the server accepted it
    /// (`true`) or refused it (`false`). Refused, everything sent in 0-RTT is void and every
    /// stream starts over (RFC 9001 §4.6.2): the application makes its requests again.
    EarlyData {
        accepted: bool,
    },
    Stream(StreamEvent),
    /// Datagrams (RFC 9221) are waiting in `recv_datagram`. Raised again only for
    /// datagrams that arrive after this event was taken.
    Datagram,
    /// Client: the new path of our last move (`migrate`) never answered its PATH_CHALLENGE
    /// (RFC 9000 §8.2.4), so it is unusable. There is no path to return to (the move left
    /// the old address), so the connection waits for another move from a new local address
    /// (§9.3.2 lets it wait for a new path) until its idle timeout ends it.
    PathValidationFailed,
    /// The connection is over; no more events follow.
    Closed(CloseReason),
}

/// A datagram (or a GSO batch of equal-sized datagrams) ready to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub dst: SocketAddr,
    pub len: usize,
    pub segment_size: Option<usize>,
    /// The ECN codepoint for the IP header (0b10: ECT(0); 0: Not-ECT).
    pub ecn: u8,
    /// Another call may have more to send now. `false` when the last datagram left room
    /// for another packet unused and no PTO probe is pending, so nothing but the lack of
    /// data stopped it: asking again would build nothing, and the endpoint moves on (and
    /// reschedules the connection's timers) without that empty pass.
    pub more: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Handshake,
    Established,
    /// We sent CONNECTION_CLOSE; answer further packets with it until the deadline.
    Closing {
        deadline: Instant,
    },
    /// The peer closed (or reset); send nothing until the deadline.
    Draining {
        deadline: Instant,
    },
    Drained,
}

/// The CONNECTION_CLOSE we send while closing.
#[derive(Clone, Debug)]
pub(crate) struct CloseFrame {
    pub code: u64,
    pub frame_type: Option<u64>,
    pub app: bool,
    pub reason: String,
}

/// PATH_RESPONSEs queued at most: challenges beyond are dropped (RFC 9000 §8.2.2 expects
/// a peer to send more as needed).
pub(crate) const MAX_PATH_RESPONSES: usize = 8;

/// A PATH_RESPONSE to send: the challenge data, the address the challenge came from, and
/// the size of the datagram that carried it (bounds how much we may send there unvalidated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PathResponse {
    pub data: [u8; 8],
    pub to: SocketAddr,
    /// Size of the challenge's datagram; 0 for a later challenge of the same datagram,
    /// answered in the same packet as the first (three times a datagram's size is what may
    /// go back to an unvalidated address, RFC 9000 §8, however many challenges it holds).
    pub received: usize,
    /// The challenge came under another of our CIDs than the current path uses: the answer
    /// must go under another of the peer's (RFC 9000 §9.5).
    pub new_dcid: bool,
}

/// Counters a user or test can read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    pub packets_received: u64,
    pub packets_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Packets that failed decryption or header checks and were dropped.
    pub packets_dropped: u64,
    pub duplicate_packets: u64,
    /// Packets numbered below the ranges still tracked for ACKs: dropped unread, as they
    /// cannot be told apart from duplicates (RFC 9000 §13.2.3); a path that reorders by
    /// more than a round trip produces them.
    pub late_packets: u64,
    pub key_updates: u64,
    pub lost_packets: u64,
    /// Congestion window reductions (RFC 9002 §7.3.2), and those later undone because every
    /// packet they counted as lost was acknowledged after all (reordering, not loss).
    pub congestion_events: u64,
    pub spurious_congestion_events: u64,
    /// Handshake and 1-RTT packets that failed authentication (RFC 9001 §6.6 counts them).
    pub authentication_failures: u64,
    /// The maximum datagram size in use (path MTU discovery's, once the handshake is confirmed).
    pub max_datagram_size: u64,
    pub pmtu_probes_sent: u64,
    pub pmtu_probes_lost: u64,
    /// Times packets above the base size stopped getting through and the size fell back.
    pub pmtu_black_holes: u64,
    /// Validated moves of the peer to a new IP address, each restarting congestion control
    /// and RTT estimation (RFC 9000 §9.4).
    pub path_resets: u64,
    /// Times this endpoint moved to a new local address (`migrate`).
    pub migrations: u64,
    /// New paths this endpoint validated: its PATH_CHALLENGE was answered (RFC 9000 §8.2.3).
    pub path_challenges_answered: u64,
    /// PATH_RESPONSE frames sent: the peer's challenges answered.
    pub path_responses_sent: u64,
    /// Validations of a new path this endpoint gave up on (RFC 9000 §8.2.4).
    pub failed_path_validations: u64,
    /// The connection moved to another version during its handshake (compatible version
    /// negotiation, RFC 9368 §2.3): the server chose it, or the client followed.
    pub compatible_version_switch: bool,
    /// Client: early data (0-RTT, RFC 9001 §4.6) was sent.
    pub early_data_attempted: bool,
    /// Server: the client's early data was accepted. Client: ours was.
    pub early_data_accepted: bool,
    /// Server: 0-RTT packets decrypted and processed.
    pub zero_rtt_packets_received: u64,
    /// ECN (RFC 9000 §13.4): the current path passed validation, so our 1-RTT packets
    /// leave marked ECT(0); validations failed (marking stopped on those paths); 1-RTT
    /// packets sent marked; ACKs whose CE count rose, answered as congestion.
    pub ecn_capable: bool,
    pub ecn_failures: u64,
    pub ecn_marked_sent: u64,
    pub ecn_ce_events: u64,
    /// 1-RTT packets received marked ECT(0) and CE: what our ACK frames report.
    pub ecn_ect0_received: u64,
    pub ecn_ce_received: u64,
    /// Client: 0-RTT packets sent.
    pub zero_rtt_packets_sent: u64,
}

pub struct Connection {
    pub(crate) side: Side,
    pub(crate) version: u32,
    pub(crate) state: State,
    pub(crate) config: Arc<TransportConfig>,
    pub(crate) tls: TlsSession,
    pub(crate) spaces: [PacketSpace; 3],
    pub(crate) one_rtt: Option<OneRttKeys>,
    /// The 0-RTT keys (RFC 9001 §4.6). Server: to open the client's early data, once
    /// accepted, until `zero_rtt_discard_at`. Client: to seal ours, until 1-RTT keys exist.
    pub(crate) zero_rtt: Option<Box<DirectionalKeys>>,
    /// Server: when the 0-RTT keys go: 3 PTO after the handshake completes, by which time
    /// the client sends 1-RTT only and reordered 0-RTT packets are late (RFC 9001 §4.9.3).
    pub(crate) zero_rtt_discard_at: Option<Instant>,
    /// Client offering early data: what it remembered of the server's transport
    /// parameters with the ticket, and its 0-RTT data relies on.
    pub(crate) remembered: Option<Box<Remembered>>,
    /// Client: the first packet number sealed with 1-RTT keys (earlier Data-space packets
    /// were 0-RTT): only an ACK reaching it confirms the handshake (RFC 9001 §4.1.2).
    pub(crate) first_one_rtt_pn: u64,
    /// Epoch TLS currently writes at.
    pub(crate) tls_write_epoch: Epoch,
    pub(crate) recovery: Recovery<SentFrames>,
    pub(crate) sent_pool: SentFramesPool,
    pub(crate) streams: Streams,
    pub(crate) cids: CidState,
    pub(crate) cid_gen: Box<dyn ConnectionIdGenerator>,
    pub(crate) local_cid_len: usize,
    /// Our first CID, the SCID of every long-header packet we send.
    pub(crate) handshake_scid: ConnectionId,
    pub(crate) remote: SocketAddr,

    // Handshake and address validation.
    /// The DCID of the client's first Initial (server: as received; client: as chosen).
    pub(crate) original_dcid: ConnectionId,
    /// Set when a Retry was involved: the SCID of the Retry packet.
    pub(crate) retry_scid: Option<ConnectionId>,
    /// Client: the token our Initials carry: a Retry's, or a NEW_TOKEN token from an
    /// earlier connection (`set_initial_token`).
    pub(crate) initial_token: Vec<u8>,
    /// Client offering more than one version: what it takes to start over in another after
    /// Version Negotiation (RFC 9368 §2.1), and whether it did.
    pub(crate) version_fallback: Option<Box<VersionFallback>>,
    /// The version of the client's first flight. Server: the Chosen Version the client's
    /// version_information must name (RFC 9368 §4), whatever the connection moves to.
    /// Client: the version its 0-RTT packets keep (RFC 9369 §4).
    pub(crate) first_flight_version: u32,
    /// Compatible version negotiation, while undecided (`compatible_version.rs`).
    pub(crate) compatible: Option<CompatibleNegotiation>,
    /// Client: a packet from the server was processed (no more Retry/VN accepted; DCID fixed).
    pub(crate) got_server_packet: bool,
    /// Client: the SCID of the server's first packet, fixed for the connection (RFC 9000 §7.2).
    pub(crate) server_scid: Option<ConnectionId>,
    /// Server: the client's address is validated (RFC 9000 §8.1); lifts the 3× limit.
    pub(crate) address_validated: bool,
    pub(crate) amplification_received: u64,
    pub(crate) amplification_sent: u64,
    pub(crate) amplification_blocked: bool,
    pub(crate) handshake_confirmed: bool,
    pub(crate) handshake_done_pending: bool,
    /// Server: a NEW_TOKEN token for the client's next connection (RFC 9000 §8.1.3), kept
    /// until acknowledged; `new_token_pending` while it still needs (re)sending.
    pub(crate) new_token: Option<Box<[u8]>>,
    pub(crate) new_token_pending: bool,
    /// Client: the latest NEW_TOKEN token, for the endpoint to keep for the next connection.
    pub(crate) received_token: Option<Box<[u8]>>,
    pub(crate) peer_params: Option<TransportParameters>,
    pub(crate) peer_ack_delay_exponent: u8,
    /// Server: expected client SCID (checked against initial_source_connection_id).
    pub(crate) peer_initial_scid: ConnectionId,

    // Path.
    pub(crate) path_responses: VecDeque<PathResponse>,
    /// Where the packet being processed came from and its datagram's size (PATH_RESPONSE
    /// goes back on the path its challenge arrived on, RFC 9000 §8.2.2).
    pub(crate) rx_path: (SocketAddr, usize),
    /// A PATH_CHALLENGE of the datagram being processed was queued for an answer: later
    /// ones in it share that answer's budget (`PathResponse::received`).
    pub(crate) rx_path_answered: bool,
    /// The last validated peer address, while validation of a new one is under way: the
    /// connection returns to it if that validation fails (RFC 9000 §9.3.2).
    pub(crate) validated_remote: Option<SocketAddr>,
    /// When the validation of the current peer address is abandoned (RFC 9000 §8.2.4).
    pub(crate) path_validation_deadline: Option<Instant>,
    /// A PATH_CHALLENGE to send to the address the peer apparently left (RFC 9000 §9.3.3:
    /// it makes a genuine peer answer there and so undo a migration an attacker forged).
    /// Sent with the CID that address knew, not the one the new path gets (§9.5).
    pub(crate) old_path_challenge: Option<([u8; 8], SocketAddr, ConnectionId)>,
    /// Our CID the peer last used on the current path: a packet from a new address under
    /// another one means the peer moved on purpose and we must use a new CID there too
    /// (RFC 9000 §9.5); under the same one (NAT rebinding) we may keep ours.
    pub(crate) path_dcid: Option<ConnectionId>,
    /// The CID we answered a probe of another path with, and that path's address: used
    /// again if the peer moves there.
    pub(crate) probe_cid: Option<(SocketAddr, ConnectionId)>,
    /// The current path got a new CID when the peer moved: returning to the validated
    /// address (a failed validation) takes another.
    pub(crate) path_got_new_cid: bool,
    /// First 1-RTT packet number sent to the current peer address (since the last migration).
    pub(crate) path_first_pn: u64,
    /// Our outstanding PATH_CHALLENGE after the peer moved (RFC 9000 §8.2, §9.3).
    pub(crate) path_challenge: Option<[u8; 8]>,
    pub(crate) path_challenge_pending: bool,
    /// The datagram being built carries a path frame: pad it to 1200 (RFC 9000 §8.2.1, §8.2.2).
    pub(crate) pad_for_path: bool,
    /// The maximum datagram size in use: `pmtud.current()` once the handshake is confirmed.
    pub(crate) max_datagram_size: usize,
    pub(crate) pmtud: Pmtud,

    // Timers.
    pub(crate) idle_timeout: Duration,
    pub(crate) idle_deadline: Option<Instant>,
    /// Restart the idle timer at the next ack-eliciting send (RFC 9000 §10.1).
    pub(crate) idle_restart_on_send: bool,
    /// When the idle deadline was last restarted by a received packet: a batch of
    /// datagrams handled at one instant restarts it once, not once per packet.
    pub(crate) idle_restarted_at: Option<Instant>,
    pub(crate) pacing_deadline: Option<Instant>,
    /// The last 1-RTT packet built left ack-eliciting data unsent because of the
    /// congestion window or the pacer: the sender is not application-limited then
    /// (RFC 9002 §7.8), however short the datagram that went out.
    pub(crate) send_blocked: bool,

    // Closing.
    pub(crate) close: Option<CloseFrame>,
    pub(crate) close_pending: bool,
    /// Datagrams received while closing: CONNECTION_CLOSE answers the 1st, 2nd, 4th, 8th...
    /// (RFC 9000 §10.2.1: the rate of packets in the closing state is limited).
    pub(crate) closing_received: u32,

    // Key update.
    pub(crate) packets_in_phase: u64,
    /// The peer updated its keys and we have not yet sent an ACK under the new ones: a
    /// second update now is one it made without awaiting confirmation (RFC 9001 §6.2).
    pub(crate) peer_update_unacked: bool,
    pub(crate) ping_pending: bool,

    pub(crate) events: VecDeque<Event>,
    pub(crate) connected_emitted: bool,
    pub(crate) closed_emitted: bool,
    pub(crate) stats: ConnectionStats,
    /// Reused buffer for TLS output.
    pub(crate) tls_buf: Vec<u8>,
    /// Reused buffers for packets reported acked / lost by recovery.
    pub(crate) acked_scratch: Vec<SentFrames>,
    pub(crate) lost_scratch: Vec<SentFrames>,
    /// Test hook (`testing.rs`): frames written verbatim into the next packet, per epoch.
    pub(crate) raw_frames: [Vec<u8>; 3],
    /// Test hook (`testing.rs`): never send ACK frames, as a hostile peer might.
    pub(crate) no_acks: bool,

    // Datagrams (RFC 9221, `datagrams.rs`).
    pub(crate) datagrams_in: DatagramQueue,
    pub(crate) datagrams_out: DatagramQueue,
    /// Room left in the last datagram does not mean everything was sent: its packets left
    /// frames that go whole or not at all (a DATAGRAM, the test hook's raw frames) for the
    /// next one, or its Handshake packet made the client drop its Initial space, whose
    /// packets left the congestion window and so made room for more.
    pub(crate) unsent_despite_room: bool,
    /// The datagrams `poll_transmit` is building leave marked ECT(0) (RFC 9000 §13.4).
    pub(crate) ect0_now: bool,
}

/// Arguments for a server-side connection, gathered by the endpoint from the client's first Initial.
pub struct ServerConnectionParams {
    pub version: u32,
    /// The versions the server accepts, for its version_information (RFC 9368 §3).
    pub available_versions: Vec<u32>,
    /// The versions the server moves a client to when its first flight converts to one
    /// (compatible version negotiation, RFC 9368 §2.3), most preferred first; empty: never.
    pub preferred_versions: Vec<u32>,
    pub remote: SocketAddr,
    /// DCID of the client's first Initial (its Initial keys derive from it).
    pub original_dcid: ConnectionId,
    /// The client's SCID.
    pub client_scid: ConnectionId,
    /// Our first CID (minted by the endpoint; seq 0).
    pub local_cid: ConnectionId,
    /// If the client echoed a valid Retry token: the Retry's SCID (the DCID of this Initial).
    pub retry_scid: Option<ConnectionId>,
    /// The address was validated by a token.
    pub address_validated: bool,
    /// Server-side Initial keys from the DCID of the Initial being answered (after a Retry
    /// that is the Retry's SCID): `crypto::initial_keys(version, dcid, Side::Server)`. The
    /// endpoint already derived them to check the Initial is genuine.
    pub initial_keys: Keys,
}

impl Connection {
    /// A client connection to `remote`. `initial_dcid` should be random, at least 8 bytes (RFC 9000 §7.2).
    ///
    /// `offer`: the version of the first flight and the client's preference (see
    /// [`VersionOffer`]).
    #[allow(clippy::too_many_arguments)]
    pub fn new_client(
        config: Arc<TransportConfig>,
        tls_config: Arc<rustls::ClientConfig>,
        server_name: &str,
        offer: &VersionOffer,
        remote: SocketAddr,
        initial_dcid: ConnectionId,
        mut cid_gen: Box<dyn ConnectionIdGenerator>,
        now: Instant,
    ) -> Result<Self, TransportError> {
        let version = offer.original;
        let versions = &offer.preference;
        let local_cid = cid_gen.generate();
        let reset = cid_gen.reset_token(&local_cid);
        let streams = Streams::new(Side::Client, config.streams.clone());
        let available = compatible_version::client_available(version, versions);
        let tls = client_tls(
            &config,
            &streams,
            local_cid,
            &tls_config,
            server_name,
            version,
            &available,
        )?;
        let mut conn = Self::new_common(
            Side::Client,
            version,
            config,
            tls,
            streams,
            local_cid,
            reset,
            initial_dcid,
            remote,
            cid_gen,
            now,
        );
        conn.original_dcid = initial_dcid;
        conn.spaces[Epoch::Initial.index()].keys =
            Some(initial_keys(version, &initial_dcid, Side::Client));
        conn.address_validated = true; // a client is never amplification-limited
        if available.len() > 1 {
            conn.compatible = Some(CompatibleNegotiation::Client {
                available,
                candidate: None,
            });
        }
        if versions.len() > 1 {
            conn.version_fallback = Some(Box::new(VersionFallback {
                tls_config,
                server_name: server_name.to_string(),
                preference: versions.to_vec(),
                original: None,
            }));
        }
        conn.drive_tls(now)?;
        if let Some(keys) = conn.tls.take_early_data_keys() {
            conn.start_early_data(keys);
        }
        Ok(conn)
    }

    /// Client with 0-RTT keys (a ticket allowing early data, RFC 9001 §4.6.1): streams open
    /// at once, within the limits the server gave the ticket's connection (RFC 9000
    /// §7.4.1), and the application may use them before the handshake completes.
    fn start_early_data(&mut self, keys: DirectionalKeys) {
        // rustls reports the remembered parameters until the server's arrive.
        let Some(remembered) = self
            .tls
            .peer_transport_parameters()
            .and_then(|raw| TransportParameters::decode(raw, Side::Server).ok())
        else {
            return;
        };
        let limits = peer_limits(&remembered);
        self.streams.set_peer_limits(limits);
        self.remembered = Some(Box::new(Remembered {
            limits,
            active_connection_id_limit: remembered.active_connection_id_limit,
            max_datagram_frame_size: remembered.max_datagram_frame_size,
        }));
        tracing::debug!("0-RTT: sending early data");
        self.zero_rtt = Some(Box::new(keys));
        self.stats.early_data_attempted = true;
        self.connected_emitted = true;
        self.events.push_back(Event::Connected);
    }

    /// Client at the end of a handshake that offered early data: what the server made of it.
    fn settle_early_data(&mut self, now: Instant) -> Result<(), TransportError> {
        let accepted = self.tls.early_data_accepted();
        tracing::debug!(accepted, "0-RTT: the server's verdict");
        self.stats.early_data_accepted = accepted;
        let remembered = self.remembered.take();
        if accepted {
            // RFC 9000 §7.4.1 and RFC 9221 §3: a server that accepts 0-RTT must not lower
            // the limits the early data relied on.
            if let (Some(r), Some(p)) = (remembered.as_deref(), &self.peer_params) {
                let (old, new) = (&r.limits, peer_limits(p));
                let datagrams_lowered = r
                    .max_datagram_frame_size
                    .is_some_and(|m| p.max_datagram_frame_size.is_none_or(|n| n < m));
                let lowered = datagrams_lowered
                    || new.initial_max_data < old.initial_max_data
                    || new.initial_max_stream_data_bidi_local
                        < old.initial_max_stream_data_bidi_local
                    || new.initial_max_stream_data_bidi_remote
                        < old.initial_max_stream_data_bidi_remote
                    || new.initial_max_stream_data_uni < old.initial_max_stream_data_uni
                    || new.initial_max_streams_bidi < old.initial_max_streams_bidi
                    || new.initial_max_streams_uni < old.initial_max_streams_uni
                    || p.active_connection_id_limit < r.active_connection_id_limit;
                if lowered {
                    return Err(TransportError::new(
                        Code::PROTOCOL_VIOLATION,
                        "0-RTT accepted with lower limits than remembered",
                    ));
                }
            }
        } else {
            self.void_early_data(now);
        }
        self.events.push_back(Event::EarlyData { accepted });
        Ok(())
    }

    /// Client: what was sent in 0-RTT never reached the peer (refused, or a Version
    /// Negotiation answered it). Its packets leave the congestion window without counting
    /// as lost, and as the connection's assumptions may have been wrong every stream starts
    /// over (RFC 9001 §4.6.2: "MUST reset the state of all streams").
    fn void_early_data(&mut self, now: Instant) {
        let pool = &mut self.sent_pool;
        self.recovery
            .discard_space(Epoch::Data, now, &mut |p| pool.give(p.data));
        self.streams = Streams::new(Side::Client, self.config.streams.clone());
        if let Some(p) = &self.peer_params {
            self.streams.set_peer_limits(peer_limits(p));
        }
        self.events.retain(|e| !matches!(e, Event::Stream(_)));
    }

    /// Client, after a Version Negotiation packet offering `version` (RFC 9368 §2.1): a new
    /// first flight in it, to a new DCID, with the same local CID. Nothing of the first
    /// attempt carries over but the stream state the application may have set up, unless
    /// it went out as early data: then that is void too, and the application starts over.
    pub(crate) fn restart_in_version(
        &mut self,
        now: Instant,
        version: u32,
    ) -> Result<(), TransportError> {
        if self.version_fallback.is_some() && self.zero_rtt.take().is_some() {
            // Void now; the application hears of it once the handshake in the new version
            // completes and streams can be used again (`settle_early_data`, refused: tickets
            // belong to their version, RFC 9369 §5, so the new one offers no early data).
            self.void_early_data(now);
            self.remembered = None;
        }
        let Some(fallback) = self.version_fallback.as_mut() else {
            return Err(TransportError::new(
                Code::INTERNAL_ERROR,
                "no version to fall back to",
            ));
        };
        fallback.original = Some(self.version);
        // No early data in the new version: what the application queued as early data was
        // voided above and goes again in 1-RTT once told so (`settle_early_data`), which
        // it would not be if a ticket of the new version had the server accept early data
        // we never sent. Tickets belong to their version (RFC 9369 §5), so resuming with
        // one is fine; offering its early data is what the restart must not do.
        let mut tls_config = (*fallback.tls_config).clone();
        tls_config.enable_early_data = false;
        self.tls = client_tls(
            &self.config,
            &self.streams,
            self.handshake_scid,
            &Arc::new(tls_config),
            &fallback.server_name,
            version,
            &[version],
        )?;
        // RFC 9369 §5: nor a token of the first version's connection.
        self.initial_token.clear();
        // The new first flight is in the version the server listed; no further switch.
        self.compatible = None;
        tracing::debug!(
            from = self.version,
            to = version,
            "version negotiation: starting over"
        );
        self.version = version;
        let mut dcid = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut dcid);
        let dcid = ConnectionId::new(&dcid).expect("16 bytes");
        self.original_dcid = dcid;
        self.cids.set_initial_remote(dcid);
        // The first flight is void: forget its packets and its CRYPTO data.
        let pool = &mut self.sent_pool;
        self.recovery
            .discard_space(Epoch::Initial, now, &mut |p| pool.give(p.data));
        let initial = &mut self.spaces[Epoch::Initial.index()];
        initial.crypto = CryptoStream::new();
        initial.probes = 0;
        initial.keys = Some(initial_keys(version, &dcid, Side::Client));
        self.drive_tls(now)
    }

    /// A server connection for a client Initial the endpoint accepted.
    pub fn new_server(
        config: Arc<TransportConfig>,
        tls_config: Arc<rustls::ServerConfig>,
        p: ServerConnectionParams,
        cid_gen: Box<dyn ConnectionIdGenerator>,
        now: Instant,
    ) -> Result<Self, TransportError> {
        let reset = cid_gen.reset_token(&p.local_cid);
        let streams = Streams::new(Side::Server, config.streams.clone());
        let mut params = local_params(
            &config,
            &streams.local_limits(),
            p.local_cid,
            Some(p.original_dcid),
            p.retry_scid,
            Some(reset),
        );
        params.version_information = Some(VersionInformation {
            chosen: p.version,
            available: p.available_versions.clone(),
        });
        let tls = server_tls(&tls_config, p.version, &params)?;
        let pending = p
            .preferred_versions
            .iter()
            .any(|&v| compatible_version::compatible(p.version, v))
            .then(|| ServerPending::new(tls_config, params, p.preferred_versions));
        let mut conn = Self::new_common(
            Side::Server,
            p.version,
            config,
            tls,
            streams,
            p.local_cid,
            reset,
            p.client_scid,
            p.remote,
            cid_gen,
            now,
        );
        conn.original_dcid = p.original_dcid;
        conn.retry_scid = p.retry_scid;
        conn.peer_initial_scid = p.client_scid;
        conn.address_validated = p.address_validated;
        conn.spaces[Epoch::Initial.index()].keys = Some(p.initial_keys);
        conn.compatible = pending.map(|p| CompatibleNegotiation::Server(Box::new(p)));
        Ok(conn)
    }

    #[allow(clippy::too_many_arguments)]
    fn new_common(
        side: Side,
        version: u32,
        config: Arc<TransportConfig>,
        tls: TlsSession,
        streams: Streams,
        local_cid: ConnectionId,
        reset: [u8; 16],
        remote_cid: ConnectionId,
        remote: SocketAddr,
        cid_gen: Box<dyn ConnectionIdGenerator>,
        now: Instant,
    ) -> Self {
        let local_cid_len = cid_gen.cid_len();
        let recovery = Recovery::new(config.recovery_config(side));
        let idle_timeout = config.idle_timeout;
        Self {
            side,
            version,
            state: State::Handshake,
            cids: CidState::new(
                local_cid,
                reset,
                remote_cid,
                config.active_connection_id_limit,
            ),
            tls,
            spaces: [PacketSpace::new(), PacketSpace::new(), PacketSpace::new()],
            one_rtt: None,
            zero_rtt: None,
            zero_rtt_discard_at: None,
            first_one_rtt_pn: 0,
            remembered: None,
            tls_write_epoch: Epoch::Initial,
            recovery,
            sent_pool: SentFramesPool::default(),
            streams,
            cid_gen,
            local_cid_len,
            handshake_scid: local_cid,
            remote,
            original_dcid: ConnectionId::default(),
            retry_scid: None,
            initial_token: Vec::new(),
            version_fallback: None,
            first_flight_version: version,
            compatible: None,
            got_server_packet: false,
            server_scid: None,
            address_validated: false,
            amplification_received: 0,
            amplification_sent: 0,
            amplification_blocked: false,
            handshake_confirmed: false,
            handshake_done_pending: false,
            new_token: None,
            new_token_pending: false,
            received_token: None,
            peer_params: None,
            peer_ack_delay_exponent: 3,
            peer_initial_scid: ConnectionId::default(),
            path_responses: VecDeque::new(),
            rx_path: (remote, 0),
            rx_path_answered: false,
            validated_remote: None,
            path_validation_deadline: None,
            old_path_challenge: None,
            path_dcid: None,
            probe_cid: None,
            path_got_new_cid: false,
            path_first_pn: 0,
            path_challenge: None,
            path_challenge_pending: false,
            pad_for_path: false,
            max_datagram_size: MIN_INITIAL_SIZE,
            pmtud: Pmtud::new(config.pmtud, config.max_datagram_size),
            idle_timeout,
            // A zero timeout is no timeout (RFC 9000 §10.1), but only once the handshake is
            // confirmed: a half-open handshake still ends.
            idle_deadline: Some(
                now + if idle_timeout.is_zero() {
                    HANDSHAKE_IDLE_TIMEOUT
                } else {
                    idle_timeout
                },
            ),
            idle_restart_on_send: false,
            idle_restarted_at: None,
            pacing_deadline: None,
            send_blocked: false,
            close: None,
            close_pending: false,
            closing_received: 0,
            packets_in_phase: 0,
            peer_update_unacked: false,
            ping_pending: false,
            events: VecDeque::new(),
            connected_emitted: false,
            closed_emitted: false,
            stats: ConnectionStats::default(),
            tls_buf: Vec::with_capacity(4096),
            // Grown on first use and kept at their high-water mark: an idle connection that
            // never saw more than a few packets acknowledged at once holds a few bytes.
            acked_scratch: Vec::new(),
            lost_scratch: Vec::new(),
            raw_frames: Default::default(),
            no_acks: false,
            datagrams_in: DatagramQueue::new(config.datagram_buffer, MAX_QUEUED_DATAGRAMS),
            datagrams_out: DatagramQueue::new(config.datagram_buffer, MAX_QUEUED_DATAGRAMS),
            unsent_despite_room: false,
            ect0_now: false,
            config,
        }
    }

    // ---- Queries -------------------------------------------------------------------------

    pub fn side(&self) -> Side {
        self.side
    }

    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }

    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// Streams and datagrams can be used: the handshake is complete, or this server
    /// accepted the client's early data and is still completing it. Its answers then go
    /// out in 1-RTT packets before the handshake completes (RFC 9001 §4.1.1's 0.5-RTT
    /// data), within the 3× limit of an unvalidated address.
    pub fn app_data_open(&self) -> bool {
        self.state == State::Established
            || (self.state == State::Handshake
                && (self.stats.early_data_accepted || self.sends_zero_rtt()))
    }

    /// Client: 0-RTT packets are what it sends in the Data space for now.
    pub(crate) fn sends_zero_rtt(&self) -> bool {
        self.side == Side::Client && self.zero_rtt.is_some()
    }

    /// Server: the client's 0-RTT keys are installed and not yet due for discarding;
    /// past their time they are dropped here.
    pub(crate) fn zero_rtt_usable(&mut self, now: Instant) -> bool {
        if self.zero_rtt.is_none() {
            return false;
        }
        if self.zero_rtt_discard_at.is_some_and(|t| now >= t) {
            self.zero_rtt = None;
            self.zero_rtt_discard_at = None;
            return false;
        }
        true
    }

    pub fn is_handshake_confirmed(&self) -> bool {
        self.handshake_confirmed
    }

    /// Closing or draining: no new streams or data.
    pub fn is_closing(&self) -> bool {
        matches!(
            self.state,
            State::Closing { .. } | State::Draining { .. } | State::Drained
        )
    }

    /// The peer closed it (RFC 9000 §10.2.2): it sends nothing again, and waits out the
    /// draining period only so late packets find it.
    pub fn is_draining(&self) -> bool {
        matches!(self.state, State::Draining { .. } | State::Drained)
    }

    /// Fully over: the endpoint can forget it.
    pub fn is_drained(&self) -> bool {
        self.state == State::Drained
    }

    pub fn alpn(&self) -> Option<&[u8]> {
        self.tls.alpn()
    }

    pub fn server_name(&self) -> Option<&str> {
        self.tls.server_name()
    }

    /// The TLS handshake resumed an earlier session (a session ticket, RFC 8446 §2.2)
    /// rather than authenticating with a certificate. False until the handshake is over.
    pub fn resumed(&self) -> bool {
        self.tls.resumed()
    }

    /// Packets that opened and were processed (authenticated): cheaper than `stats()`.
    pub fn packets_received(&self) -> u64 {
        self.stats.packets_received
    }

    pub fn stats(&self) -> ConnectionStats {
        let mut s = self.stats;
        let r = self.recovery.stats();
        s.lost_packets = r.lost_packets;
        s.congestion_events = r.congestion_events;
        s.spurious_congestion_events = r.spurious_congestion_events;
        s.ecn_capable = self.recovery.ecn().state() == EcnState::Capable;
        s.ecn_failures = r.ecn_failures;
        s.ecn_marked_sent = self.recovery.ecn().marked_sent();
        s.ecn_ce_events = r.ecn_ce_events;
        if let Some((ect0, _, ce)) = self.spaces[Epoch::Data.index()].ack.ecn_counts() {
            s.ecn_ect0_received = ect0;
            s.ecn_ce_received = ce;
        }
        let p = self.pmtud.stats();
        s.max_datagram_size = self.max_datagram_size as u64;
        s.pmtu_probes_sent = p.probes_sent;
        s.pmtu_probes_lost = p.probes_lost;
        s.pmtu_black_holes = p.black_holes;
        s.path_resets = r.path_resets;
        s
    }

    pub fn rtt(&self) -> Duration {
        self.recovery.rtt().smoothed()
    }

    pub fn congestion_window(&self) -> u64 {
        self.recovery.congestion_window()
    }

    /// Our CIDs currently issued (so the endpoint can route them).
    pub fn local_cids(&self) -> impl Iterator<Item = ConnectionId> + '_ {
        self.cids.local.iter().map(|l| l.cid)
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        if self.closed_emitted {
            return None;
        }
        self.streams.poll_event().map(Event::Stream)
    }

    pub fn poll_cid_event(&mut self) -> Option<CidEvent> {
        self.cids.events.pop_front()
    }

    // ---- Streams ------------------------------------------------------------------------

    pub fn open_stream(&mut self, bidi: bool) -> Option<StreamId> {
        if !self.app_data_open() {
            return None;
        }
        self.streams.open(bidi)
    }

    pub fn write(&mut self, id: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        if self.is_closing() {
            return Err(StreamError::ClosedStream);
        }
        self.streams.write(id, data)
    }

    pub fn finish(&mut self, id: StreamId) -> Result<(), StreamError> {
        self.streams.finish(id)
    }

    pub fn read(
        &mut self,
        id: StreamId,
        buf: &mut [u8],
        now: Instant,
    ) -> Result<(usize, bool), StreamError> {
        let rtt = self.recovery.rtt().smoothed();
        self.streams.read(id, buf, now, rtt)
    }

    /// Hands up to `max` readable bytes to `f` in place, without copying them out, and
    /// consumes them: one call for a request that arrived whole. Returns (bytes, FIN
    /// reached) as `read` does; `f` sees an empty slice when nothing is readable.
    pub fn read_with(
        &mut self,
        id: StreamId,
        max: usize,
        now: Instant,
        f: impl FnOnce(&[u8]),
    ) -> Result<(usize, bool), StreamError> {
        let rtt = self.recovery.rtt().smoothed();
        self.streams.read_with(id, max, f, now, rtt)
    }

    /// Consumes up to `max` readable bytes without copying them out.
    pub fn discard(
        &mut self,
        id: StreamId,
        max: usize,
        now: Instant,
    ) -> Result<(usize, bool), StreamError> {
        let rtt = self.recovery.rtt().smoothed();
        self.streams.discard(id, max, now, rtt)
    }

    pub fn reset_stream(&mut self, id: StreamId, code: u64) -> Result<(), StreamError> {
        self.streams.reset(id, code)
    }

    pub fn stop_sending(&mut self, id: StreamId, code: u64) -> Result<(), StreamError> {
        self.streams.stop_sending(id, code)
    }

    pub fn send_capacity(&self, id: StreamId) -> usize {
        self.streams.send_capacity(id)
    }

    // ---- Key update -----------------------------------------------------------------------

    /// Starts a 1-RTT key update now (RFC 9001 §6.1). Fails until the previous one is confirmed.
    pub fn force_key_update(&mut self) -> bool {
        if !self.handshake_confirmed {
            return false;
        }
        let Some(keys) = self.one_rtt.as_mut() else {
            return false;
        };
        if !keys.update_allowed() || keys.initiate_update().is_err() {
            return false;
        }
        self.packets_in_phase = 0;
        self.stats.key_updates += 1;
        // Make sure a packet in the new phase goes out so the peer follows.
        self.ping_pending = true;
        true
    }

    // ---- Closing --------------------------------------------------------------------------

    /// Closes with an application error code (CONNECTION_CLOSE 0x1d).
    pub fn close(&mut self, now: Instant, code: u64, reason: &str) {
        self.start_closing(
            now,
            CloseFrame {
                code,
                frame_type: None,
                app: true,
                reason: truncate(reason),
            },
        );
    }

    pub(crate) fn close_with_error(&mut self, now: Instant, err: TransportError) {
        tracing::debug!(?err, "closing connection on transport error");
        self.start_closing(
            now,
            CloseFrame {
                code: err.code.0,
                frame_type: Some(err.frame_type),
                app: false,
                reason: err.reason.to_string(),
            },
        );
    }

    fn start_closing(&mut self, now: Instant, frame: CloseFrame) {
        if self.is_closing() {
            return;
        }
        // A connection that never got keys beyond Initial on the client side, or nothing to send on: just drop.
        self.state = State::Closing {
            deadline: now + self.recovery.three_ptos(self.highest_epoch()),
        };
        self.emit_closed(CloseReason::Local {
            code: frame.code,
            app: frame.app,
            reason: frame.reason.clone(),
        });
        self.close = Some(frame);
        self.close_pending = true;
    }

    /// A stateless reset for this connection arrived (the endpoint matched its token):
    /// the connection is over at once (RFC 9000 §10.3.1).
    pub fn handle_stateless_reset(&mut self, now: Instant) {
        tracing::debug!("stateless reset received");
        self.enter_draining(now, CloseReason::StatelessReset);
        self.state = State::Drained;
    }

    /// The peer's CONNECTION_CLOSE or a stateless reset: go quiet (RFC 9000 §10.2.2).
    pub(crate) fn enter_draining(&mut self, now: Instant, reason: CloseReason) {
        if matches!(self.state, State::Draining { .. } | State::Drained) {
            return;
        }
        self.state = State::Draining {
            deadline: now + self.recovery.three_ptos(self.highest_epoch()),
        };
        self.close_pending = false;
        self.emit_closed(reason);
    }

    pub(crate) fn emit_closed(&mut self, reason: CloseReason) {
        if !self.closed_emitted {
            self.closed_emitted = true;
            self.events.push_back(Event::Closed(reason));
        }
    }

    pub(crate) fn highest_epoch(&self) -> Epoch {
        if self.one_rtt.is_some() {
            Epoch::Data
        } else if self.spaces[Epoch::Handshake.index()].keys.is_some() {
            Epoch::Handshake
        } else {
            Epoch::Initial
        }
    }

    // ---- Timers -------------------------------------------------------------------------

    /// Server: hands the client `token` in a NEW_TOKEN frame (RFC 9000 §8.1.3), resent
    /// until acknowledged. Only once the handshake is confirmed: the frame is 1-RTT only
    /// and a client must not see it before (§19.7).
    pub fn send_new_token(&mut self, token: Vec<u8>) {
        if self.side == Side::Server && self.handshake_confirmed && !token.is_empty() {
            self.new_token = Some(token.into_boxed_slice());
            self.new_token_pending = true;
        }
    }

    /// Client: a token from an earlier connection's NEW_TOKEN frame to put in our
    /// Initials (RFC 9000 §8.1.3). Before the first packet goes out only, and not over a
    /// Retry's token.
    pub fn set_initial_token(&mut self, token: Vec<u8>) {
        if self.side == Side::Client
            && self.retry_scid.is_none()
            && self.spaces[Epoch::Initial.index()].next_pn == 0
        {
            self.initial_token = token;
        }
    }

    /// Client: the latest token the server gave for a future connection, once.
    pub fn take_new_token(&mut self) -> Option<Vec<u8>> {
        self.received_token.take().map(Vec::from)
    }

    /// The QUIC version in use (after any Version Negotiation).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Client: a Version Negotiation packet made this connection start over in another
    /// version (RFC 9368 §2.1).
    pub fn restarted_after_version_negotiation(&self) -> bool {
        self.version_fallback
            .as_ref()
            .is_some_and(|f| f.original.is_some())
    }

    /// The earliest instant `handle_timeout` must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Drained => return None,
            State::Closing { deadline } | State::Draining { deadline } => return Some(deadline),
            _ => {}
        }
        let mut t = self.idle_deadline;
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        consider(self.recovery.loss_detection_timer());
        consider(self.spaces[Epoch::Data.index()].ack.ack_deadline());
        consider(self.pacing_deadline);
        consider(self.path_validation_deadline);
        if let Some(k) = &self.one_rtt {
            consider(k.next_timeout());
        }
        t
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Drained => return,
            State::Closing { deadline } | State::Draining { deadline } => {
                if now >= deadline {
                    self.state = State::Drained;
                }
                return;
            }
            _ => {}
        }
        if self.idle_deadline.is_some_and(|d| now >= d) {
            tracing::debug!("idle timeout");
            self.state = State::Drained;
            self.emit_closed(CloseReason::IdleTimeout);
            return;
        }
        if self.pacing_deadline.is_some_and(|d| now >= d) {
            self.pacing_deadline = None;
        }
        if self.path_validation_deadline.is_some_and(|d| now >= d) {
            self.abandon_path_validation(now);
            if self.state == State::Drained {
                return;
            }
        }
        if let Some(k) = self.one_rtt.as_mut() {
            k.on_timeout(now);
        }
        if self
            .recovery
            .loss_detection_timer()
            .is_some_and(|t| now >= t)
        {
            self.on_loss_timeout(now);
        }
    }

    fn on_loss_timeout(&mut self, now: Instant) {
        // Collect first (the callback cannot borrow self); the scratch vector is reused.
        let mut lost = std::mem::take(&mut self.lost_scratch);
        let probe = self
            .recovery
            .on_loss_detection_timeout(now, &mut |p| lost.push(p.data));
        for frames in lost.drain(..) {
            self.on_frames_lost(now, frames);
        }
        self.lost_scratch = lost;
        self.end_loss_event(now);
        if let Some(req) = probe {
            self.queue_probe(req.epoch, req.count);
            // RFC 9002 §6.2.4: the other handshake space with ack-eliciting data in flight
            // probes too (coalesced into the same datagram), so a server whose Initial and
            // Handshake flights were both lost gets both resent by one PTO, not the second
            // a PTO later.
            if req.epoch != Epoch::Data {
                for other in [Epoch::Initial, Epoch::Handshake] {
                    if other != req.epoch
                        && !self.spaces[other.index()].discarded
                        && self.recovery.in_flight_ack_eliciting(other)
                    {
                        self.queue_probe(other, 1);
                    }
                }
                // A client with 1-RTT keys whose handshake is not confirmed may have lost
                // the HANDSHAKE_DONE (after a NAT rebinding, say): the server has dropped
                // its Handshake keys by then, and only a 1-RTT packet reaches it, or moves
                // it to the client's new address. The client arms no 1-RTT PTO of its own
                // before confirmation (§6.2.1), so its handshake PTO probes that space too,
                // with data in flight or a PING.
                if self.side == Side::Client && self.one_rtt.is_some() && !self.handshake_confirmed
                {
                    self.queue_probe(Epoch::Data, 1);
                }
            }
        }
    }

    /// Sends `count` probes in `epoch`; for a handshake space they resend its
    /// unacknowledged CRYPTO data (RFC 9002 §6.2.4: probes should carry data).
    fn queue_probe(&mut self, epoch: Epoch, count: u8) {
        let space = &mut self.spaces[epoch.index()];
        space.probes = space.probes.max(count);
        if epoch != Epoch::Data {
            for p in self.recovery.outstanding(epoch) {
                for r in &p.data.records {
                    if let FrameRecord::Crypto { offset, len } = *r {
                        space.crypto.on_lost(offset, len);
                    }
                }
            }
        }
    }

    // ---- TLS ------------------------------------------------------------------------------

    /// Feeds received CRYPTO data to TLS and queues what TLS writes, installing new keys.
    pub(crate) fn drive_tls(&mut self, now: Instant) -> Result<(), TransportError> {
        // RFC 9001 §4.1.3: TLS takes data only at its current read epoch; data that became
        // readable at an earlier one is a violation, at a later one it waits its turn.
        loop {
            let read_epoch = self.tls.read_epoch();
            for earlier in Epoch::ALL.iter().filter(|e| **e < read_epoch) {
                if self.spaces[earlier.index()].crypto.read_chunk().is_some() {
                    return Err(TransportError::new(
                        Code::PROTOCOL_VIOLATION,
                        "CRYPTO data at a finished epoch",
                    ));
                }
            }
            let mut fed = false;
            let hello_pending = matches!(self.compatible, Some(CompatibleNegotiation::Server(_)));
            if read_epoch == Epoch::Initial && hello_pending {
                if !self.negotiate_from_client_hello()? {
                    break; // the ClientHello is not whole yet
                }
                fed = true; // TLS has read it, in the version chosen
            }
            while let Some(chunk) = self.spaces[read_epoch.index()].crypto.read_chunk() {
                fed = true;
                self.tls.read_handshake(chunk).map_err(tls_failure)?;
            }
            if !fed || self.tls.read_epoch() == read_epoch {
                break;
            }
        }
        loop {
            self.tls_buf.clear();
            let change = self.tls.write_handshake(&mut self.tls_buf);
            if !self.tls_buf.is_empty() {
                let epoch = self.tls_write_epoch;
                self.spaces[epoch.index()].crypto.write(&self.tls_buf);
            }
            match change {
                Some(KeyChange::Handshake(keys)) => {
                    if self.side == Side::Client {
                        self.settle_version();
                    }
                    self.spaces[Epoch::Handshake.index()].keys = Some(keys);
                    self.recovery.set_has_handshake_keys();
                    self.tls_write_epoch = Epoch::Handshake;
                }
                Some(KeyChange::OneRtt(keys)) => {
                    self.one_rtt = Some(keys);
                    self.tls_write_epoch = Epoch::Data;
                    if self.side == Side::Client {
                        // RFC 9001 §4.9.3: no 0-RTT once 1-RTT keys exist.
                        self.zero_rtt = None;
                        self.first_one_rtt_pn = self.spaces[Epoch::Data.index()].next_pn;
                    }
                }
                None => {
                    if self.tls_buf.is_empty() {
                        break;
                    }
                }
            }
        }
        if !self.tls.is_handshaking() && self.tls_buf.capacity() > 0 {
            // The flights (certificates included) are written: post-handshake messages
            // (tickets) are rare and small, so an idle connection need not hold 4 KiB for them.
            self.tls_buf = Vec::new();
        }
        // A resuming client's rustls reports the parameters remembered with the ticket until
        // the server's EncryptedExtensions arrive; those are only certain once 1-RTT keys exist.
        let params_final = self.side == Side::Server || self.one_rtt.is_some();
        if self.peer_params.is_none() && params_final {
            if let Some(raw) = self.tls.peer_transport_parameters() {
                let params = TransportParameters::decode(raw, self.side.peer())?;
                self.apply_peer_params(params)?;
            }
        }
        if self.side == Side::Server && self.state == State::Handshake && self.zero_rtt.is_none() {
            self.accept_early_data();
        }
        if self.state == State::Handshake && !self.tls.is_handshaking() {
            self.on_handshake_complete(now)?;
        }
        if self.peer_params.is_some() {
            // A server's TLS is done once its last flight is out and the client's transport
            // parameters, which only rustls holds, are taken (see `finish_server`).
            self.tls.finish_server();
        }
        Ok(())
    }

    /// Server: installs the client's 0-RTT keys if rustls accepted its early data, and
    /// opens the connection to the application at once, so the early requests are
    /// answered before the handshake completes.
    fn accept_early_data(&mut self) {
        let Some(keys) = self.tls.take_early_data_keys() else {
            return;
        };
        if self.version != self.first_flight_version {
            // Moved to another version (RFC 9368): its TLS session cannot resume a session
            // of the first flight's version (`VersionScopedStore`), so this does not happen;
            // should it, the 0-RTT packets (old version) are dropped and the client's loss
            // recovery sends their frames again in 1-RTT.
            return;
        }
        tracing::debug!("0-RTT: accepting early data");
        self.zero_rtt = Some(Box::new(keys));
        self.stats.early_data_accepted = true;
        if !self.connected_emitted {
            self.connected_emitted = true;
            self.events.push_back(Event::Connected);
        }
    }

    fn apply_peer_params(&mut self, p: TransportParameters) -> Result<(), TransportError> {
        let violation = |reason| TransportError::new(Code::TRANSPORT_PARAMETER_ERROR, reason);
        // A server checks the client's Chosen Version against its first flight's, a client
        // the server's against the version in use (negotiated, RFC 9368 §4).
        let in_use = match self.side {
            Side::Server => self.first_flight_version,
            Side::Client => self.version,
        };
        check_version_information(in_use, p.version_information.as_ref())?;
        if let Some(f) = &self.version_fallback {
            if let Some(original) = f.original {
                check_negotiated_version(
                    &f.preference,
                    original,
                    self.version,
                    p.version_information.as_ref(),
                )?;
            }
        }
        // RFC 9000 §7.3: authenticate the connection IDs used during the handshake.
        match self.side {
            Side::Client => {
                if p.original_destination_connection_id != Some(self.original_dcid) {
                    return Err(violation("original_destination_connection_id mismatch"));
                }
                if p.retry_source_connection_id != self.retry_scid {
                    return Err(violation("retry_source_connection_id mismatch"));
                }
                if p.initial_source_connection_id != Some(self.cids.active_remote()) {
                    return Err(violation("initial_source_connection_id mismatch"));
                }
                if let Some(token) = p.stateless_reset_token {
                    self.cids.set_initial_remote_reset_token(token);
                }
                if let Some(pa) = &p.preferred_address {
                    self.cids.on_preferred_address(pa.cid, pa.reset_token)?;
                }
            }
            Side::Server => {
                if p.initial_source_connection_id != Some(self.peer_initial_scid) {
                    return Err(violation("initial_source_connection_id mismatch"));
                }
            }
        }
        let peer_idle = Duration::from_millis(p.max_idle_timeout);
        if !peer_idle.is_zero() && (self.idle_timeout.is_zero() || peer_idle < self.idle_timeout) {
            self.idle_timeout = peer_idle;
        }
        self.peer_ack_delay_exponent = p.ack_delay_exponent as u8;
        self.recovery
            .set_max_ack_delay(Duration::from_millis(p.max_ack_delay));
        self.streams.set_peer_limits(peer_limits(&p));
        self.peer_params = Some(p);
        Ok(())
    }

    fn on_handshake_complete(&mut self, now: Instant) -> Result<(), TransportError> {
        if self.peer_params.is_none() {
            return Err(TransportError::new(
                Code::TRANSPORT_PARAMETER_ERROR,
                "peer sent no transport parameters",
            ));
        }
        self.state = State::Established;
        tracing::debug!(side = ?self.side, alpn = ?self.tls.alpn().map(String::from_utf8_lossy), "handshake complete");
        if !self.connected_emitted {
            self.connected_emitted = true;
            self.events.push_back(Event::Connected);
        }
        if self.side == Side::Client && self.stats.early_data_attempted {
            self.settle_early_data(now)?;
        }
        let limit = self
            .peer_params
            .as_ref()
            .map_or(2, |p| p.active_connection_id_limit);
        self.cids.set_peer_limit(limit, self.cid_gen.as_mut());
        if self.side == Side::Server {
            if self.zero_rtt.is_some() {
                self.zero_rtt_discard_at = Some(now + 3 * self.recovery.pto(Epoch::Data));
            }
            // RFC 9001 §4.1.2: the server's handshake is confirmed on completion.
            self.handshake_done_pending = true;
            self.confirm_handshake(now);
        }
        Ok(())
    }

    /// RFC 9001 §4.1.2 / §4.9.2: discard Handshake keys once the handshake is confirmed.
    pub(crate) fn confirm_handshake(&mut self, now: Instant) {
        if self.handshake_confirmed {
            return;
        }
        self.handshake_confirmed = true;
        self.recovery.set_handshake_confirmed();
        self.recovery.set_peer_completed_address_validation(true);
        self.discard_space(Epoch::Initial, now);
        self.discard_space(Epoch::Handshake, now);
        let peer_max = self
            .peer_params
            .as_ref()
            .map_or(65527, |p| p.max_udp_payload_size);
        // RFC 9000 §14.3.1: path MTU discovery starts from the base now.
        self.pmtud.start(now, peer_max);
        self.apply_path_mtu();
    }

    /// Takes up the size path MTU discovery settled on, if it changed.
    pub(crate) fn apply_path_mtu(&mut self) {
        let size = self.pmtud.current();
        if size != self.max_datagram_size {
            tracing::debug!(
                from = self.max_datagram_size,
                to = size,
                "maximum datagram size"
            );
            self.max_datagram_size = size;
            self.recovery.set_max_datagram_size(size);
        }
    }

    /// Closes one loss event for path MTU discovery (black hole detection).
    pub(crate) fn end_loss_event(&mut self, now: Instant) {
        if self.pmtud.end_loss_event(now) {
            tracing::debug!(
                size = self.max_datagram_size,
                "packets above the base size keep getting lost: PMTU black hole"
            );
        }
        self.apply_path_mtu();
    }

    /// RFC 9001 §4.9: drop a space's keys and forget its packets in flight.
    pub(crate) fn discard_space(&mut self, epoch: Epoch, now: Instant) {
        let space = &mut self.spaces[epoch.index()];
        if space.discarded {
            return;
        }
        space.discarded = true;
        space.keys = None;
        space.probes = 0;
        // Nothing is sent, received or acknowledged in it any more: free its buffers.
        space.crypto = CryptoStream::new();
        space.ack.release_memory();
        if epoch == Epoch::Initial && self.compatible.is_some() {
            // A server's original-version Initial keys go with the space (RFC 9369 §4).
            self.end_compatible_negotiation();
        }
        let pool = &mut self.sent_pool;
        self.recovery
            .discard_space(epoch, now, &mut |p| pool.give(p.data));
    }

    // ---- Acks and losses ------------------------------------------------------------------

    pub(crate) fn on_frames_acked(&mut self, now: Instant, frames: SentFrames) {
        let epoch = frames.epoch;
        if epoch == Epoch::Data {
            if let Some(k) = self.one_rtt.as_mut() {
                k.on_packet_acked(frames.key_generation);
            }
            if !is_probe(&frames) {
                self.pmtud.on_packet_acked(usize::from(frames.size));
            }
        }
        for r in &frames.records {
            match *r {
                FrameRecord::Stream(s) => self.streams.on_acked(s),
                FrameRecord::Crypto { offset, len } => {
                    self.spaces[epoch.index()].crypto.on_acked(offset, len)
                }
                FrameRecord::Ack { largest } => {
                    self.spaces[epoch.index()].ack.on_ack_of_ack(largest)
                }
                FrameRecord::PmtuProbe { generation } => {
                    self.pmtud
                        .on_probe_acked(now, usize::from(frames.size), generation);
                    self.apply_path_mtu();
                }
                FrameRecord::NewToken => self.new_token = None,
                FrameRecord::HandshakeDone
                | FrameRecord::PathChallenge { .. }
                | FrameRecord::Ping
                | FrameRecord::Datagram
                | FrameRecord::NewConnectionId { .. }
                | FrameRecord::RetireConnectionId { .. } => {}
            }
        }
        self.sent_pool.give(frames);
    }

    pub(crate) fn on_frames_lost(&mut self, now: Instant, frames: SentFrames) {
        let epoch = frames.epoch;
        if epoch == Epoch::Data && !is_probe(&frames) {
            self.pmtud.on_packet_lost(usize::from(frames.size));
        }
        for r in &frames.records {
            match *r {
                FrameRecord::Stream(s) => self.streams.on_lost(s),
                FrameRecord::Crypto { offset, len } => {
                    let space = &mut self.spaces[epoch.index()];
                    if !space.discarded {
                        space.crypto.on_lost(offset, len);
                    }
                }
                FrameRecord::HandshakeDone => self.handshake_done_pending = true,
                FrameRecord::NewToken => self.new_token_pending = self.new_token.is_some(),
                FrameRecord::NewConnectionId { seq } => self.cids.on_new_cid_lost(seq),
                FrameRecord::RetireConnectionId { seq } => self.cids.retire_queue.push_back(seq),
                FrameRecord::PathChallenge { data } => {
                    if self.path_challenge == Some(data) {
                        self.path_challenge_pending = true;
                    }
                }
                FrameRecord::PmtuProbe { generation } => {
                    self.pmtud
                        .on_probe_lost(now, usize::from(frames.size), generation);
                }
                FrameRecord::Ack { .. } | FrameRecord::Ping | FrameRecord::Datagram => {}
            }
        }
        self.sent_pool.give(frames);
    }
}

fn is_probe(frames: &SentFrames) -> bool {
    matches!(frames.records.first(), Some(FrameRecord::PmtuProbe { .. }))
}

/// Our transport parameters (RFC 9000 §18.2).
fn local_params(
    config: &TransportConfig,
    limits: &PeerLimits,
    local_cid: ConnectionId,
    original_dcid: Option<ConnectionId>,
    retry_scid: Option<ConnectionId>,
    reset_token: Option<[u8; 16]>,
) -> TransportParameters {
    TransportParameters {
        original_destination_connection_id: original_dcid,
        max_idle_timeout: config.idle_timeout.as_millis() as u64,
        stateless_reset_token: reset_token,
        max_udp_payload_size: config.max_udp_payload_size,
        initial_max_data: limits.initial_max_data,
        initial_max_stream_data_bidi_local: limits.initial_max_stream_data_bidi_local,
        initial_max_stream_data_bidi_remote: limits.initial_max_stream_data_bidi_remote,
        initial_max_stream_data_uni: limits.initial_max_stream_data_uni,
        initial_max_streams_bidi: limits.initial_max_streams_bidi,
        initial_max_streams_uni: limits.initial_max_streams_uni,
        ack_delay_exponent: config.ack_delay_exponent as u64,
        max_ack_delay: config.max_ack_delay.as_millis() as u64,
        active_connection_id_limit: config.active_connection_id_limit,
        max_datagram_frame_size: config.max_datagram_frame_size,
        initial_source_connection_id: Some(local_cid),
        retry_source_connection_id: retry_scid,
        ..TransportParameters::default()
    }
}

/// RFC 9368 §3 (required of QUIC v2 endpoints by RFC 9369 §4): a client's version
/// information, the version of its first flight and the versions that flight converts to
/// (`compatible_version::client_available`); after Version Negotiation, the version it
/// started over in alone. A server lists the versions it accepts
/// (`ServerConnectionParams::available_versions`).
fn client_version_information(version: u32, available: &[u32]) -> VersionInformation {
    VersionInformation {
        chosen: version,
        available: available.to_vec(),
    }
}

/// A client's TLS session for a first flight in `version`, its transport parameters
/// announcing that version alone (see `client_version_information`).
fn client_tls(
    config: &TransportConfig,
    streams: &Streams,
    local_cid: ConnectionId,
    tls_config: &Arc<rustls::ClientConfig>,
    server_name: &str,
    version: u32,
    available: &[u32],
) -> Result<TlsSession, TransportError> {
    let mut params = local_params(config, &streams.local_limits(), local_cid, None, None, None);
    params.version_information = Some(client_version_information(version, available));
    let mut encoded = Vec::with_capacity(128);
    params.encode(&mut encoded);
    TlsSession::client(tls_config.clone(), server_name, version, encoded)
        .map_err(|_| TransportError::new(Code::INTERNAL_ERROR, "TLS client setup failed"))
}

/// A server's TLS session in `version`, sending `params`.
pub(crate) fn server_tls(
    tls_config: &Arc<rustls::ServerConfig>,
    version: u32,
    params: &TransportParameters,
) -> Result<TlsSession, TransportError> {
    let mut encoded = Vec::with_capacity(160);
    params.encode(&mut encoded);
    let mut tls = TlsSession::server(tls_config.clone(), version, encoded)
        .map_err(|_| TransportError::new(Code::INTERNAL_ERROR, "TLS server setup failed"))?;
    tls.set_early_data_terms(early_data_terms(params));
    Ok(tls)
}

/// A digest of what a 0-RTT client remembers of a server's transport parameters and may
/// rely on (RFC 9000 §7.4.1, RFC 9221 §3), plus the three a server may insist on keeping
/// (max_idle_timeout, max_udp_payload_size, disable_active_migration). Only compared
/// within one process (`Resumption::EarlyData` keeps sessions in memory).
fn early_data_terms(p: &TransportParameters) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        p.initial_max_data,
        p.initial_max_stream_data_bidi_local,
        p.initial_max_stream_data_bidi_remote,
        p.initial_max_stream_data_uni,
        p.initial_max_streams_bidi,
        p.initial_max_streams_uni,
        p.active_connection_id_limit,
        p.max_datagram_frame_size,
        p.max_idle_timeout,
        p.max_udp_payload_size,
        p.disable_active_migration,
    )
        .hash(&mut h);
    h.finish()
}

/// The connection error for a TLS alert: CRYPTO_ERROR plus the alert (RFC 9001 §4.8).
pub(crate) fn tls_failure(alert: TlsAlertError) -> TransportError {
    tracing::debug!(?alert, "TLS alert");
    TransportError::new(Code::crypto(alert.alert), "TLS handshake failed")
}

/// The versions a client offers: the one its first flight is in, and every version it
/// would use, most preferred first. The server may move the connection to one of the
/// latter that the first flight converts to (compatible version negotiation, RFC 9368
/// §2.3: v1 and v2), or answer with Version Negotiation, after which the client starts
/// over in its most preferred version the server listed (§2.1). RFC 9368 §2.4 suggests
/// starting in the version most servers parse (v1) while preferring a newer one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionOffer {
    pub original: u32,
    pub preference: Vec<u32>,
}

impl VersionOffer {
    /// The first flight in the first of `preference` (which must not be empty).
    pub fn preferring(preference: &[u32]) -> Option<Self> {
        Some(Self {
            original: *preference.first()?,
            preference: preference.to_vec(),
        })
    }
}

/// A client that may use more than one version (RFC 9368 §2.1).
pub(crate) struct VersionFallback {
    tls_config: Arc<rustls::ClientConfig>,
    server_name: String,
    /// The versions it may use, most preferred first; the first attempt is in the first.
    preference: Vec<u32>,
    /// Set once a Version Negotiation packet made it start over: the first attempt's version.
    pub(crate) original: Option<u32>,
}

impl VersionFallback {
    /// The version to start over in after a Version Negotiation packet listing `offered`.
    pub(crate) fn choose(&self, offered: &[u32]) -> Option<u32> {
        choose_version(&self.preference, offered)
    }
}

/// A client's pick from a Version Negotiation packet listing `offered`: its most preferred
/// version that is listed and that it supports.
fn choose_version(preference: &[u32], offered: &[u32]) -> Option<u32> {
    preference
        .iter()
        .copied()
        .find(|v| offered.contains(v) && SUPPORTED_VERSIONS.contains(v))
}

/// RFC 9368 §4, for a client that started over after Version Negotiation: the server's
/// Available Versions must be such that the client would have picked the version in use from
/// a genuine Version Negotiation packet listing them (and that one). A forged packet could
/// otherwise push both ends down to a version neither prefers. A server listing the version
/// first tried would not have sent Version Negotiation at all. §6: a version 1 server that
/// sends no version_information counts as supporting version 1 only.
fn check_negotiated_version(
    preference: &[u32],
    original: u32,
    negotiated: u32,
    server: Option<&VersionInformation>,
) -> Result<(), TransportError> {
    let error = |reason| Err(TransportError::new(Code::VERSION_NEGOTIATION_ERROR, reason));
    let available: &[u32] = match server {
        Some(vi) => &vi.available,
        None if negotiated == VERSION_1 => &[VERSION_1],
        None => return error("no version_information after Version Negotiation"),
    };
    if available.is_empty() {
        return error("no Available Versions after Version Negotiation");
    }
    if available.contains(&original) {
        return error("the server supports the version Version Negotiation refused");
    }
    let mut listed = available.to_vec();
    listed.push(negotiated);
    if choose_version(preference, &listed) != Some(negotiated) {
        return error("Version Negotiation steered us off a version both support");
    }
    Ok(())
}

/// RFC 9368 §4, downgrade prevention: the peer's Chosen Version must be the version in use
/// (a server checks the client's against the version of its first flight; a client checks
/// that the server chose a version it offered, and it offers only the one in use). A
/// missing `version_information` is allowed here; a client that reacted to Version
/// Negotiation also applies `check_negotiated_version`. Malformed values were already
/// rejected when the parameters were decoded.
fn check_version_information(
    version: u32,
    peer: Option<&VersionInformation>,
) -> Result<(), TransportError> {
    match peer {
        Some(vi) if vi.chosen != version => Err(TransportError::new(
            Code::VERSION_NEGOTIATION_ERROR,
            "version_information chose another version than the one in use",
        )),
        _ => Ok(()),
    }
}

fn truncate(reason: &str) -> String {
    // Keep CONNECTION_CLOSE within one packet.
    let mut end = reason.len().min(256);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

/// What a client offering early data remembered of the server's transport parameters
/// (RFC 9000 §7.4.1, RFC 9221 §3).
pub(crate) struct Remembered {
    pub limits: PeerLimits,
    pub active_connection_id_limit: u64,
    pub max_datagram_frame_size: Option<u64>,
}

/// The stream limits among transport parameters.
fn peer_limits(p: &TransportParameters) -> PeerLimits {
    PeerLimits {
        initial_max_data: p.initial_max_data,
        initial_max_stream_data_bidi_local: p.initial_max_stream_data_bidi_local,
        initial_max_stream_data_bidi_remote: p.initial_max_stream_data_bidi_remote,
        initial_max_stream_data_uni: p.initial_max_stream_data_uni,
        initial_max_streams_bidi: p.initial_max_streams_bidi,
        initial_max_streams_uni: p.initial_max_streams_uni,
    }
}

#[cfg(test)]
mod version_information_tests {
    use super::*;
    use crate::wire::header::{VERSION_1, VERSION_2};

    #[test]
    fn we_send_the_version_in_use_and_what_we_support() {
        for version in [VERSION_1, VERSION_2] {
            let other = if version == VERSION_1 {
                VERSION_2
            } else {
                VERSION_1
            };
            let c = client_version_information(version, &[other, version]);
            assert_eq!((c.chosen, &c.available), (version, &vec![other, version]));
            // A server's comes from its configuration (`ServerConnectionParams`).
            let s = VersionInformation {
                chosen: version,
                available: SUPPORTED_VERSIONS.to_vec(),
            };
            // Round trip through the encoding, as each side's peer decodes it.
            for (side, vi) in [(Side::Client, c), (Side::Server, s)] {
                let cid = ConnectionId::new(&[1; 8]).unwrap();
                let params = TransportParameters {
                    version_information: Some(vi.clone()),
                    initial_source_connection_id: Some(cid),
                    original_destination_connection_id: (side == Side::Server).then_some(cid),
                    ..TransportParameters::default()
                };
                let mut buf = Vec::new();
                params.encode(&mut buf);
                let back = TransportParameters::decode(&buf, side).expect("decodes");
                assert_eq!(back.version_information, Some(vi));
            }
        }
    }

    #[test]
    fn a_chosen_version_other_than_ours_is_a_downgrade() {
        let vi = |chosen| VersionInformation {
            chosen,
            available: vec![VERSION_1, VERSION_2],
        };
        assert!(check_version_information(VERSION_2, Some(&vi(VERSION_2))).is_ok());
        assert!(check_version_information(VERSION_1, None).is_ok());
        let e = check_version_information(VERSION_2, Some(&vi(VERSION_1))).unwrap_err();
        assert_eq!(e.code, Code::VERSION_NEGOTIATION_ERROR);
        let e = check_version_information(VERSION_1, Some(&vi(VERSION_2))).unwrap_err();
        assert_eq!(e.code, Code::VERSION_NEGOTIATION_ERROR);
    }

    /// RFC 9368 §4's checks after Version Negotiation, for a client preferring v2 that
    /// tried v2 and was sent to v1, and for one preferring v1 sent to v2.
    #[test]
    fn after_version_negotiation_the_server_list_must_agree_with_our_choice() {
        let vi = |chosen, available: &[u32]| VersionInformation {
            chosen,
            available: available.to_vec(),
        };
        let v2_first = [VERSION_2, VERSION_1];
        let check = |negotiated, server: Option<&VersionInformation>| {
            check_negotiated_version(&v2_first, VERSION_2, negotiated, server)
        };
        // A v1-only server: we would have picked v1 from its list too.
        assert!(check(VERSION_1, Some(&vi(VERSION_1, &[VERSION_1]))).is_ok());
        // Reserved versions in its list change nothing.
        assert!(check(VERSION_1, Some(&vi(VERSION_1, &[0x1a2a_3a4a, VERSION_1]))).is_ok());
        // §6: a version 1 server without version_information speaks version 1 alone.
        assert!(check(VERSION_1, None).is_ok());
        // A server that speaks v2 would not have refused it: the packet was forged.
        let e = check(VERSION_1, Some(&vi(VERSION_1, &[VERSION_1, VERSION_2]))).unwrap_err();
        assert_eq!(e.code, Code::VERSION_NEGOTIATION_ERROR);
        // An empty list proves nothing.
        assert!(check(VERSION_1, Some(&vi(VERSION_1, &[]))).is_err());
        // The other way round: a v2 server must say so; silence means v1 (§6).
        let v1_first = [VERSION_1, VERSION_2];
        let to_v2 = |server: Option<&VersionInformation>| {
            check_negotiated_version(&v1_first, VERSION_1, VERSION_2, server)
        };
        assert!(to_v2(Some(&vi(VERSION_2, &[VERSION_2]))).is_ok());
        assert!(to_v2(None).is_err());
    }

    #[test]
    fn the_fallback_is_our_first_preference_the_server_offers() {
        let cfg = crate::tls::session::client_config(
            crate::tls::session::ServerVerification::Insecure,
            &[b"perf".to_vec()],
        )
        .unwrap();
        let f = VersionFallback {
            tls_config: cfg,
            server_name: "localhost".into(),
            preference: vec![VERSION_2, VERSION_1],
            original: None,
        };
        assert_eq!(f.choose(&[VERSION_1, VERSION_2]), Some(VERSION_2));
        assert_eq!(f.choose(&[0x0a0a_0a0a, VERSION_1]), Some(VERSION_1));
        assert_eq!(f.choose(&[0x0a0a_0a0a, 0xff00_001d]), None);
    }
}
