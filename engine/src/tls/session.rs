//! One connection's TLS 1.3 handshake (RFC 9001 §4) driven through `rustls::quic`.
//!
//! rustls moves handshake bytes. Secrets come from our [`QuicKeyLog`] hook; the packet keys
//! rustls derives at each of its `KeyChange`s are built as `crate::crypto` keys by
//! [`key_capture`] (or, for a config without it, derived from the secrets).
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::quic;
use rustls::{CipherSuite, ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};

use super::certs::CertifiedKey;
use super::key_capture;
use super::keylog::{self, QuicKeyLog, SecretLabel};
use crate::crypto::{DirectionalKeys, Keys, OneRttKeys, Secret, Suite, VERSION_1, VERSION_2};
use crate::{Epoch, Side};

/// TLS alert `internal_error` (RFC 8446 §6.2), for failures with no alert of their own.
const ALERT_INTERNAL_ERROR: u8 = 80;
/// TLS alert `unexpected_message` (RFC 8446 §6).
const ALERT_UNEXPECTED_MESSAGE: u8 = 10;
/// CRYPTO_ERROR range start: the alert is added to it (RFC 9001 §4.8).
const CRYPTO_ERROR_BASE: u64 = 0x100;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("PEM: {0}")]
    Pem(String),
    #[error("no certificates in {0}")]
    NoCertificates(String),
    #[error("certificate generation: {0}")]
    CertGen(String),
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("invalid server name {0:?}")]
    InvalidServerName(String),
    #[error("unsupported QUIC version {0:#x}")]
    UnsupportedVersion(u32),
    #[error("session ticket keys: {0}")]
    TicketKeys(String),
}

/// A handshake failure, carrying the TLS alert to send in CONNECTION_CLOSE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("TLS alert {alert}: {reason}")]
pub struct TlsAlertError {
    pub alert: u8,
    pub reason: String,
}

impl TlsAlertError {
    /// The QUIC transport error code: CRYPTO_ERROR 0x100 + alert (RFC 9001 §4.8).
    pub fn transport_error_code(&self) -> u64 {
        CRYPTO_ERROR_BASE + u64::from(self.alert)
    }
}

/// New keys from the handshake, in the order they become usable for sending.
// Produced twice per connection and moved straight into the connection: size is moot.
#[allow(clippy::large_enum_variant)]
pub enum KeyChange {
    /// Handshake-space keys.
    Handshake(Keys),
    /// 1-RTT keys with their key-update state.
    OneRtt(OneRttKeys),
}

impl KeyChange {
    pub fn epoch(&self) -> Epoch {
        match self {
            KeyChange::Handshake(_) => Epoch::Handshake,
            KeyChange::OneRtt(_) => Epoch::Data,
        }
    }
}

impl std::fmt::Debug for KeyChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyChange({:?})", self.epoch())
    }
}

/// How a client authenticates the server.
#[derive(Debug, Clone)]
pub enum ServerVerification {
    /// Trust only the CA certificates in this PEM file.
    CaFile(PathBuf),
    /// Accept any certificate (signatures are still checked). Testing only.
    Insecure,
}

fn tls13_only(provider: CryptoProvider) -> CryptoProvider {
    // QUIC requires TLS 1.3 (RFC 9001 §4.2); TLS 1.2 suites are useless here. The rest hand
    // the packet keys rustls derives to us (`key_capture`).
    CryptoProvider {
        cipher_suites: provider
            .cipher_suites
            .into_iter()
            .filter(|s| s.version() == &rustls::version::TLS13)
            .map(key_capture::capturing)
            .collect(),
        ..provider
    }
}

/// A server config: TLS 1.3 only, no early data, our key log, stateless session tickets
/// from rustls's rotating `Ticketer`.
pub fn server_config(cert: CertifiedKey, alpns: &[Vec<u8>]) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with_provider(
        cert,
        alpns,
        rustls::crypto::aws_lc_rs::default_provider(),
        Resumption::Stateless(None),
    )
}

/// How a server resumes sessions (RFC 8446 §2.2).
pub enum Resumption {
    /// Stateless tickets (RFC 8446 §4.6.1): the ticket carries the session, sealed with
    /// rustls's rotating keys or with the given ones (`tickets::TicketKeyFile`, a fleet's),
    /// so every worker, and every server holding the keys, resumes it with no shared session
    /// cache (rustls's default, a 256-entry cache behind a mutex, is neither share-nothing
    /// nor big enough for an edge). No 0-RTT: nothing stops a stateless ticket's early data
    /// from being replayed, and rustls accepts early data only with single-use tickets.
    Stateless(Option<Arc<dyn rustls::server::ProducesTickets>>),
    /// 0-RTT (RFC 9001 §4.6): tickets name sessions this process keeps, up to `sessions` of
    /// them (the oldest are dropped first), and rustls takes a session out when its ticket
    /// comes back, so each ticket's early data is accepted once (the single-use tickets of
    /// RFC 8446 §8.1, the anti-replay this server has). The store is shared by the
    /// workers: a client's next connection may land on any of them. Its lock is taken once
    /// per handshake, never per packet. Tickets do not outlive the process or resume on
    /// another server, and a session resumes only under the transport parameters it was
    /// stored with (`TlsSession::set_early_data_terms`), those its client remembers and
    /// relies on (RFC 9000 §7.4.1).
    EarlyData { sessions: usize },
}

/// Where a server's certificate comes from.
#[derive(Clone)]
pub enum ServerCert {
    /// Fixed for the server's life (generated, or given in memory).
    Fixed(CertifiedKey),
    /// Read from files and re-read when they change, one pair or several chosen by the
    /// name the client asks for (`cert_select`).
    Files(Arc<super::cert_select::CertStore>),
}

impl From<CertifiedKey> for ServerCert {
    fn from(cert: CertifiedKey) -> Self {
        ServerCert::Fixed(cert)
    }
}

/// `server_config` with a custom provider (e.g. restricted to one cipher suite) and the
/// given way to resume sessions.
pub fn server_config_with_provider(
    cert: impl Into<ServerCert>,
    alpns: &[Vec<u8>],
    provider: CryptoProvider,
    resumption: Resumption,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(Arc::new(tls13_only(provider)))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth();
    let mut config = match cert.into() {
        ServerCert::Fixed(cert) => builder.with_single_cert(cert.chain, cert.key)?,
        ServerCert::Files(store) => builder.with_cert_resolver(store),
    };
    config.alpn_protocols = alpns.to_vec();
    config.key_log = QuicKeyLog::shared();
    match resumption {
        Resumption::Stateless(tickets) => {
            config.max_early_data_size = 0;
            // RFC 9369 §5: a ticket resumes only connections of the QUIC version it came from.
            config.ticketer = super::ticket_version::VersionScoped::wrap(match tickets {
                Some(t) => t,
                None => rustls::crypto::aws_lc_rs::Ticketer::new()?,
            });
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        }
        Resumption::EarlyData { sessions } => {
            // RFC 9001 §4.6.1: a QUIC server allowing early data says 0xffffffff.
            config.max_early_data_size = u32::MAX;
            config.ticketer = Arc::new(NoTickets);
            config.session_storage = super::ticket_version::VersionScopedStore::wrap(
                rustls::server::ServerSessionMemoryCache::new(sessions.max(1)),
            );
        }
    }
    Ok(Arc::new(config))
}

/// No stateless tickets: sessions are kept by the server (`Resumption::EarlyData`).
#[derive(Debug)]
struct NoTickets;

impl rustls::server::ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }

    fn lifetime(&self) -> u32 {
        0
    }

    fn encrypt(&self, _plain: &[u8]) -> Option<Vec<u8>> {
        None
    }

    fn decrypt(&self, _cipher: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

/// A client config: TLS 1.3 only, our key log, no early data.
pub fn client_config(
    verify: ServerVerification,
    alpns: &[Vec<u8>],
) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_with_provider(verify, alpns, rustls::crypto::aws_lc_rs::default_provider())
}

/// `client_config` with a custom provider (e.g. restricted to one cipher suite).
pub fn client_config_with_provider(
    verify: ServerVerification,
    alpns: &[Vec<u8>],
    provider: CryptoProvider,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(tls13_only(provider));
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut config = match verify {
        ServerVerification::CaFile(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(&path)
                .map_err(|e| TlsError::Pem(format!("{}: {e}", path.display())))?
            {
                let cert = cert.map_err(|e| TlsError::Pem(format!("{}: {e}", path.display())))?;
                roots.add(cert)?;
            }
            if roots.is_empty() {
                return Err(TlsError::NoCertificates(path.display().to_string()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        ServerVerification::Insecure => {
            tracing::warn!("server certificate verification disabled");
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
                .with_no_client_auth()
        }
    };
    config.alpn_protocols = alpns.to_vec();
    config.enable_early_data = false;
    config.key_log = QuicKeyLog::shared();
    // RFC 9369 §5: tickets kept per QUIC version (rustls's default store in each).
    config.resumption =
        rustls::client::Resumption::store(super::ticket_version::VersionScopedSessions::new(
            || Arc::new(rustls::client::ClientSessionMemoryCache::new(256)),
        ));
    Ok(Arc::new(config))
}

/// Accepts any server certificate but still checks handshake signatures with it.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn rustls_version(version: u32) -> Result<quic::Version, TlsError> {
    match version {
        VERSION_1 => Ok(quic::Version::V1),
        VERSION_2 => Ok(quic::Version::V2),
        v => Err(TlsError::UnsupportedVersion(v)),
    }
}

/// Collects the first bytes of the ClientHello to learn the client random, which tells
/// our secrets apart from any other session's in the key log.
struct HelloPrefix {
    buf: [u8; HelloPrefix::LEN],
    len: usize,
}

impl HelloPrefix {
    fn new() -> Self {
        Self {
            buf: [0; Self::LEN],
            len: 0,
        }
    }

    /// msg_type (1) | length (3) | legacy_version (2) | random (32) — RFC 8446 §4.1.2.
    const LEN: usize = 38;

    fn feed(&mut self, bytes: &[u8]) {
        let n = (Self::LEN - self.len).min(bytes.len());
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn client_random(&self) -> Option<[u8; 32]> {
        const CLIENT_HELLO: u8 = 1;
        if self.len < Self::LEN || self.buf[0] != CLIENT_HELLO {
            return None;
        }
        self.buf[6..].try_into().ok()
    }
}

/// An item of handshake output waiting for `write_handshake`.
enum Staged {
    Bytes(Vec<u8>),
    Change(Box<KeyChange>),
}

/// What a server's session is still asked once its handshake is over and rustls's
/// connection is gone (`TlsSession::finish_server`).
struct Finished {
    alpn: Option<Vec<u8>>,
    server_name: Option<String>,
    suite: Option<Suite>,
    resumed: bool,
}

/// One connection's handshake.
pub struct TlsSession {
    /// rustls's connection, boxed (~1.5 KiB); `None` on a server once the handshake is over.
    conn: Option<Box<quic::Connection>>,
    /// Set when `conn` is dropped.
    finished: Option<Box<Finished>>,
    side: Side,
    /// The QUIC version whose labels our keys are derived with.
    version: u32,
    /// The version rustls was made for: the labels of the keys it builds (`key_capture`).
    rustls_version: u32,
    /// Client only: the name we asked for.
    server_name: Option<String>,
    hello: HelloPrefix,
    /// Captured secrets by `SecretLabel::index`, until their epoch starts.
    secrets: [Option<Secret>; 4],
    write_epoch: Epoch,
    /// Output pulled from rustls but not yet taken by `write_handshake`, split at key
    /// changes, so bytes are attributed to the right epoch however reads and writes
    /// interleave (rustls itself only gets that right if it is drained after every read).
    staged: VecDeque<Staged>,
    /// Epoch of the next bytes staged.
    staging_epoch: Epoch,
    /// Handshake secrets were derived: the peer now writes at the Handshake epoch.
    handshake_keys_ready: bool,
    /// A local failure (secrets missing) reported by the next `read_handshake`.
    failed: Option<TlsAlertError>,
    /// The 0-RTT keys (`take_early_data_keys`): a server's once rustls accepted the
    /// client's early data, a client's when it offers some; `early_checked` once a server
    /// asked rustls.
    early_keys: Option<Box<DirectionalKeys>>,
    early_checked: bool,
    /// Server: digest of the transport parameters 0-RTT clients rely on
    /// (`set_early_data_terms`).
    early_terms: u64,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("side", &self.side)
            .field("version", &self.version)
            .field("write_epoch", &self.write_epoch)
            .field("handshaking", &self.is_handshaking())
            .finish_non_exhaustive()
    }
}

impl TlsSession {
    /// `params`: our encoded transport parameters (extension 0x39).
    pub fn server(
        config: Arc<ServerConfig>,
        version: u32,
        params: Vec<u8>,
    ) -> Result<Self, TlsError> {
        let conn = quic::ServerConnection::new(config, rustls_version(version)?, params)?;
        Ok(Self::with_conn(conn.into(), Side::Server, version, None))
    }

    pub fn client(
        config: Arc<ClientConfig>,
        server_name: &str,
        version: u32,
        params: Vec<u8>,
    ) -> Result<Self, TlsError> {
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|_| TlsError::InvalidServerName(server_name.to_string()))?;
        // rustls takes a session ticket for the ClientHello here: one of this version's.
        let conn = {
            let _version = super::ticket_version::enter(version);
            quic::ClientConnection::new(config, rustls_version(version)?, name, params)?
        };
        let mut session = Self::with_conn(
            conn.into(),
            Side::Client,
            version,
            Some(server_name.to_string()),
        );
        // A ticket allowing early data (and a config enabling it) gives 0-RTT keys now.
        session.check_early_data();
        Ok(session)
    }

    fn with_conn(conn: quic::Connection, side: Side, version: u32, name: Option<String>) -> Self {
        Self {
            conn: Some(Box::new(conn)),
            finished: None,
            side,
            version,
            rustls_version: version,
            server_name: name,
            hello: HelloPrefix::new(),
            secrets: [None, None, None, None],
            write_epoch: Epoch::Initial,
            staged: VecDeque::new(),
            staging_epoch: Epoch::Initial,
            handshake_keys_ready: false,
            failed: None,
            early_keys: None,
            early_checked: false,
            early_terms: 0,
        }
    }

    pub fn side(&self) -> Side {
        self.side
    }

    /// Client, compatible version negotiation (RFC 9368 §2.3): the server answered in
    /// `version` before any handshake key existed. rustls keeps the labels of the version it
    /// was made for (the handshake messages are the same in both), so from here on every key
    /// is derived by us from the captured secrets with `version`'s labels.
    pub fn adopt_version(&mut self, version: u32) -> Result<(), TlsError> {
        rustls_version(version)?;
        debug_assert!(!self.handshake_keys_ready, "version fixed once keys exist");
        self.version = version;
        Ok(())
    }

    /// The client's 0-RTT keys (RFC 9001 §5.1), if any. Server, once rustls has read the
    /// ClientHello: if it accepted early data (a resumed session of a config with
    /// `Resumption::EarlyData`, the client asking, its version, suite and ALPN unchanged;
    /// RFC 8446 §4.2.10). Client, once its ClientHello is written: if it offers early data
    /// (a config enabling it and a ticket allowing it).
    fn check_early_data(&mut self) {
        let Some(conn) = self.conn.as_deref() else {
            return;
        };
        if self.side == Side::Server && conn.negotiated_cipher_suite().is_none() {
            return; // the ClientHello is not whole yet
        }
        self.early_checked = true;
        key_capture::clear();
        if conn.zero_rtt_keys().is_none() {
            return;
        }
        match key_capture::take_one() {
            Some(keys) => self.early_keys = Some(Box::new(keys)),
            // Server: rustls told the client its early data is accepted; without the keys
            // its 0-RTT packets are dropped, and it sends their frames again as lost.
            // Client: no 0-RTT is sent.
            None => tracing::error!("0-RTT keys were not captured"),
        }
    }

    /// Server: `terms` digests the transport parameters a 0-RTT client relies on (RFC 9000
    /// §7.4.1). Sessions this connection stores carry them, and one stored under other
    /// terms does not resume here (`ticket_version::VersionScopedStore`), so early data
    /// is only ever accepted under the parameters it was promised.
    pub fn set_early_data_terms(&mut self, terms: u64) {
        self.early_terms = terms;
    }

    /// The client's 0-RTT keys, once: a server's to open them if it accepted the early
    /// data, a client's to seal them if it offers early data.
    pub fn take_early_data_keys(&mut self) -> Option<DirectionalKeys> {
        self.early_keys.take().map(|k| *k)
    }

    /// Client, once the handshake is over: the server accepted our early data.
    pub fn early_data_accepted(&self) -> bool {
        match self.conn.as_deref() {
            Some(quic::Connection::Client(c)) => c.is_early_data_accepted(),
            _ => false,
        }
    }

    /// The epoch `write_handshake` currently writes at.
    pub fn write_epoch(&self) -> Epoch {
        self.write_epoch
    }

    /// The epoch the peer's next handshake message must arrive at. CRYPTO data at another
    /// epoch (beyond retransmissions of already-read bytes) is a PROTOCOL_VIOLATION
    /// (RFC 9001 §4.1.3); rustls cannot tell, so the caller checks this.
    pub fn read_epoch(&self) -> Epoch {
        if !self.is_handshaking() {
            Epoch::Data
        } else if self.handshake_keys_ready {
            Epoch::Handshake
        } else {
            Epoch::Initial
        }
    }

    /// CRYPTO data received, in order, at the peer's current epoch. Errors carry the TLS
    /// alert; close with [`TlsAlertError::transport_error_code`].
    pub fn read_handshake(&mut self, data: &[u8]) -> Result<(), TlsAlertError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let Some(conn) = self.conn.as_deref_mut() else {
            // A QUIC client sends no TLS message after the handshake (no KeyUpdate, RFC 9001
            // §6; no post-handshake authentication is offered).
            return Err(TlsAlertError {
                alert: ALERT_UNEXPECTED_MESSAGE,
                reason: "TLS message after the handshake".into(),
            });
        };
        if self.side == Side::Server {
            self.hello.feed(data);
        }
        keylog::clear();
        let _version = super::ticket_version::enter_with_terms(self.version, self.early_terms);
        let result = conn.read_hs(data);
        self.collect_secrets();
        if result.is_ok() {
            if self.side == Side::Server && !self.early_checked {
                self.check_early_data();
            }
            self.pump();
        }
        result.map_err(|e| {
            let alert = self
                .conn
                .as_ref()
                .and_then(|c| c.alert())
                .map_or(ALERT_INTERNAL_ERROR, u8::from);
            tracing::debug!(alert, error = %e, "TLS handshake failed");
            TlsAlertError {
                alert,
                reason: e.to_string(),
            }
        })?;
        match self.failed.clone() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Appends handshake bytes to send at the *current* write epoch; returns a key change
    /// if the epoch advanced (bytes appended before the change belong to the old epoch).
    /// Call in a loop until it returns `None`.
    pub fn write_handshake(&mut self, out: &mut Vec<u8>) -> Option<KeyChange> {
        self.pump();
        while let Some(item) = self.staged.pop_front() {
            match item {
                Staged::Bytes(bytes) => out.extend_from_slice(&bytes),
                Staged::Change(change) => {
                    self.write_epoch = change.epoch();
                    return Some(*change);
                }
            }
        }
        None
    }

    /// Pulls everything rustls has to send into `staged`, building our keys at each of its
    /// key changes from the captured secrets.
    fn pump(&mut self) {
        loop {
            let Some(conn) = self.conn.as_deref_mut() else {
                return;
            };
            let mut bytes = Vec::new();
            keylog::clear();
            key_capture::clear();
            let _version = super::ticket_version::enter_with_terms(self.version, self.early_terms);
            let change = conn.write_hs(&mut bytes);
            let built = key_capture::take();
            if self.side == Side::Client && self.staging_epoch == Epoch::Initial {
                self.hello.feed(&bytes);
            }
            self.collect_secrets();
            let wrote = !bytes.is_empty();
            if wrote {
                self.staged.push_back(Staged::Bytes(bytes));
            }
            match change {
                Some(change) => {
                    if let Some(change) = self.build_change(change, built) {
                        self.staging_epoch = change.epoch();
                        self.staged.push_back(Staged::Change(Box::new(change)));
                    }
                }
                None if !wrote => return,
                None => {}
            }
        }
    }

    /// Our keys for rustls's key change: the ones it built through `key_capture` (`built`,
    /// as local, remote) or, without those, derived from the captured secrets.
    fn build_change(
        &mut self,
        change: quic::KeyChange,
        built: Option<(DirectionalKeys, DirectionalKeys)>,
    ) -> Option<KeyChange> {
        let version = self.version;
        let side = self.side;
        // Keys rustls built carry its version's labels.
        let built = built.filter(|_| version == self.rustls_version);
        let built = match change {
            quic::KeyChange::Handshake { .. } => self
                .take_pair(SecretLabel::ClientHandshake, SecretLabel::ServerHandshake)
                .map(|(c, s)| {
                    self.handshake_keys_ready = true;
                    KeyChange::Handshake(match built {
                        Some((local, remote)) => Keys { local, remote },
                        None => Keys::from_secrets(version, side, &c, &s),
                    })
                }),
            quic::KeyChange::OneRtt { .. } => self
                .take_pair(SecretLabel::ClientTraffic, SecretLabel::ServerTraffic)
                .map(|(c, s)| {
                    let (local, remote) = match side {
                        Side::Client => (c, s),
                        Side::Server => (s, c),
                    };
                    KeyChange::OneRtt(match built {
                        Some((local_keys, remote_keys)) => {
                            OneRttKeys::with_keys(version, local, local_keys, remote, remote_keys)
                        }
                        None => OneRttKeys::new(version, local, remote),
                    })
                }),
        };
        if built.is_none() {
            // rustls announced keys our key log never saw: nothing sane to send with.
            tracing::error!("TLS key change without captured secrets");
            self.failed = Some(TlsAlertError {
                alert: ALERT_INTERNAL_ERROR,
                reason: "traffic secrets not captured".into(),
            });
        }
        built
    }

    fn take_pair(&mut self, client: SecretLabel, server: SecretLabel) -> Option<(Secret, Secret)> {
        let c = self.secrets[client.index()].take()?;
        let s = self.secrets[server.index()].take()?;
        Some((c, s))
    }

    /// Moves this call's captured secrets into the session, checking they are ours.
    fn collect_secrets(&mut self) {
        let random = self.hello.client_random();
        let suite = self.negotiated_suite();
        let secrets = &mut self.secrets;
        let failed = &mut self.failed;
        keylog::drain(|captured| {
            if random.is_some_and(|r| r != captured.client_random) {
                tracing::warn!(label = ?captured.label, "ignoring another session's secret");
                return;
            }
            match suite {
                Some(suite) => {
                    secrets[captured.label.index()] = Some(Secret::new(suite, captured.secret()));
                }
                None => {
                    *failed = Some(TlsAlertError {
                        alert: ALERT_INTERNAL_ERROR,
                        reason: "secret before cipher suite negotiation".into(),
                    });
                }
            }
        });
    }

    /// Server, once the handshake is over and its last flight (tickets included) has been
    /// taken by `write_handshake`: drops rustls's connection, with its record-layer keys,
    /// buffers and transcript (2.6 KiB of heap and the 1.5 KiB box an idle connection would
    /// otherwise hold for nothing), keeping what is still asked of the session: ALPN, SNI
    /// and suite. Packet
    /// protection and key updates use quench's own keys and secrets. Does nothing on a
    /// client (it still receives tickets) or while anything is pending.
    pub fn finish_server(&mut self) {
        let Some(conn) = self.conn.as_deref() else {
            return;
        };
        if self.side != Side::Server
            || conn.is_handshaking()
            || !self.staged.is_empty()
            || self.failed.is_some()
        {
            return;
        }
        self.finished = Some(Box::new(Finished {
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            server_name: self.server_name().map(str::to_string),
            suite: self.negotiated_suite(),
            resumed: self.resumed(),
        }));
        self.conn = None;
        self.staged = VecDeque::new();
        self.hello = HelloPrefix::new();
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.is_handshaking())
    }

    /// Peer's encoded transport parameters, once received (until `finish_server`).
    pub fn peer_transport_parameters(&self) -> Option<&[u8]> {
        self.conn.as_ref()?.quic_transport_parameters()
    }

    /// The handshake resumed an earlier session from a ticket (RFC 8446 §2.2): no
    /// certificate was sent or checked. False until the handshake is over.
    pub fn resumed(&self) -> bool {
        match (self.conn.as_deref(), &self.finished) {
            (Some(c), _) => c.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            (None, Some(f)) => f.resumed,
            (None, None) => false,
        }
    }

    pub fn alpn(&self) -> Option<&[u8]> {
        match (&self.conn, &self.finished) {
            (Some(c), _) => c.alpn_protocol(),
            (None, Some(f)) => f.alpn.as_deref(),
            (None, None) => None,
        }
    }

    /// Server: the SNI the client sent. Client: the name we asked for.
    pub fn server_name(&self) -> Option<&str> {
        match (self.conn.as_deref(), &self.finished) {
            (Some(quic::Connection::Server(s)), _) => s.server_name(),
            (Some(quic::Connection::Client(_)), _) => self.server_name.as_deref(),
            (None, Some(f)) => f.server_name.as_deref(),
            (None, None) => None,
        }
    }

    pub fn negotiated_suite(&self) -> Option<Suite> {
        let Some(conn) = self.conn.as_deref() else {
            return self.finished.as_ref().and_then(|f| f.suite);
        };
        match conn.negotiated_cipher_suite()?.suite() {
            CipherSuite::TLS13_AES_128_GCM_SHA256 => Some(Suite::Aes128Gcm),
            CipherSuite::TLS13_AES_256_GCM_SHA384 => Some(Suite::Aes256Gcm),
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => Some(Suite::ChaCha20Poly1305),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{header_protection, DirectionalKeys, TAG_LEN};
    use crate::tls::certs::{generate_self_signed, write_pem};
    use rustls::crypto::aws_lc_rs::{cipher_suite, default_provider};

    const ALPN: &[u8] = b"quench-test";
    const CLIENT_PARAMS: &[u8] = b"\x01\x02client-params";
    const SERVER_PARAMS: &[u8] = b"\x03\x04server-params";

    fn one_suite(suite: rustls::SupportedCipherSuite) -> CryptoProvider {
        CryptoProvider {
            cipher_suites: vec![suite],
            ..default_provider()
        }
    }

    /// A handshake endpoint in memory: its session, the keys it got, and the epochs its
    /// CRYPTO bytes were written at.
    struct Peer {
        tls: TlsSession,
        handshake: Option<Keys>,
        one_rtt: Option<OneRttKeys>,
        sent_epochs: Vec<Epoch>,
    }

    impl Peer {
        fn new(tls: TlsSession) -> Self {
            Self {
                tls,
                handshake: None,
                one_rtt: None,
                sent_epochs: Vec::new(),
            }
        }

        /// Everything this side wants to send now, as (epoch, bytes) chunks.
        fn flush(&mut self) -> Vec<(Epoch, Vec<u8>)> {
            let mut out = Vec::new();
            loop {
                let epoch = self.tls.write_epoch();
                let mut buf = Vec::new();
                let change = self.tls.write_handshake(&mut buf);
                if !buf.is_empty() {
                    self.sent_epochs.push(epoch);
                    out.push((epoch, buf.clone()));
                }
                match change {
                    Some(KeyChange::Handshake(k)) => {
                        assert!(self.handshake.replace(k).is_none());
                        assert_eq!(self.tls.write_epoch(), Epoch::Handshake);
                    }
                    Some(KeyChange::OneRtt(k)) => {
                        assert!(self.one_rtt.replace(k).is_none());
                        assert_eq!(self.tls.write_epoch(), Epoch::Data);
                    }
                    None if buf.is_empty() => return out,
                    None => {}
                }
            }
        }
    }

    /// Runs the handshake to completion or to the first alert (side, error).
    fn handshake(client: &mut Peer, server: &mut Peer) -> Result<(), (Side, TlsAlertError)> {
        for _ in 0..10 {
            let to_server = client.flush();
            for (_, data) in &to_server {
                server
                    .tls
                    .read_handshake(data)
                    .map_err(|e| (Side::Server, e))?;
            }
            let to_client = server.flush();
            for (_, data) in &to_client {
                client
                    .tls
                    .read_handshake(data)
                    .map_err(|e| (Side::Client, e))?;
            }
            if to_server.is_empty() && to_client.is_empty() {
                return Ok(());
            }
        }
        panic!("handshake did not converge");
    }

    fn session_pair(
        provider: CryptoProvider,
        verify: ServerVerification,
        server_alpn: &[u8],
        version: u32,
    ) -> (Peer, Peer) {
        let cert = generate_self_signed(&[]).unwrap();
        let server_cfg = server_config_with_provider(
            cert,
            &[server_alpn.to_vec()],
            provider.clone(),
            Resumption::Stateless(None),
        )
        .unwrap();
        let client_cfg = client_config_with_provider(verify, &[ALPN.to_vec()], provider).unwrap();
        let server = TlsSession::server(server_cfg, version, SERVER_PARAMS.to_vec()).unwrap();
        let client =
            TlsSession::client(client_cfg, "localhost", version, CLIENT_PARAMS.to_vec()).unwrap();
        (Peer::new(client), Peer::new(server))
    }

    /// Seal with `from`, open with `to`, header protection included.
    fn check_direction(from: &DirectionalKeys, to: &DirectionalKeys) {
        let header = [0x41u8, 0xaa, 0xbb];
        let body = b"frames frames frames";
        let mut pkt = header.to_vec();
        pkt.extend_from_slice(body);
        pkt.extend_from_slice(&[0; TAG_LEN]);
        from.packet.seal_in_place(7, &mut pkt, 3).unwrap();
        header_protection::protect(&from.header, &mut pkt, 1, 2).unwrap();
        let (pn_len, pn) = header_protection::unprotect(&to.header, &mut pkt, 1).unwrap();
        assert_eq!((pn_len, pn), (2, 0xaabb));
        let n = to.packet.open_in_place(7, &mut pkt, 3).unwrap();
        assert_eq!(&pkt[3..3 + n], body);
    }

    fn check_one_rtt(from: &OneRttKeys, to: &OneRttKeys) {
        let mut pkt = vec![0x40, 0x01];
        pkt.extend_from_slice(b"one rtt");
        pkt.extend_from_slice(&[0; TAG_LEN]);
        from.local_packet().seal_in_place(1, &mut pkt, 2).unwrap();
        let sample = [5u8; 16];
        assert_eq!(
            from.local_header().mask(&sample),
            to.remote_header().mask(&sample)
        );
        let (key, generation) = to.remote_packet_for(from.key_phase(), 1);
        assert_eq!(generation, crate::crypto::KeyGeneration::Current);
        let n = key.open_in_place(1, &mut pkt, 2).unwrap();
        assert_eq!(&pkt[2..2 + n], b"one rtt");
    }

    /// What both sides of a finished handshake report.
    fn check_established(peers: &[&Peer], expect: Suite) {
        for peer in peers {
            assert!(!peer.tls.is_handshaking());
            assert_eq!(peer.tls.read_epoch(), Epoch::Data);
            assert_eq!(peer.tls.negotiated_suite(), Some(expect));
            assert_eq!(peer.tls.alpn(), Some(ALPN));
            assert_eq!(peer.tls.server_name(), Some("localhost"));
        }
    }

    fn full_handshake(suite: rustls::SupportedCipherSuite, expect: Suite, version: u32) {
        let (mut client, mut server) = session_pair(
            one_suite(suite),
            ServerVerification::Insecure,
            ALPN,
            version,
        );
        handshake(&mut client, &mut server).unwrap();

        check_established(&[&client, &server], expect);
        assert_eq!(server.tls.peer_transport_parameters(), Some(CLIENT_PARAMS));
        assert_eq!(client.tls.peer_transport_parameters(), Some(SERVER_PARAMS));
        // ClientHello and ServerHello at Initial, the rest of the flights at Handshake.
        // The client reads both server flights before writing: its Finished must still be
        // attributed to Handshake. Anything after the server's flight (tickets) is 1-RTT.
        assert_eq!(client.sent_epochs, [Epoch::Initial, Epoch::Handshake]);
        assert_eq!(server.sent_epochs[..2], [Epoch::Initial, Epoch::Handshake]);
        assert!(server.sent_epochs[2..].iter().all(|&e| e == Epoch::Data));
        // Both sides filtered key log entries by the same ClientHello random.
        let random = client.tls.hello.client_random();
        assert!(random.is_some());
        assert_eq!(random, server.tls.hello.client_random());
        // Once its handshake is over the server lets rustls go, keeping what is asked of it;
        // the client keeps its session (tickets may still come).
        server.tls.finish_server();
        client.tls.finish_server();
        assert!(server.tls.conn.is_none() && client.tls.conn.is_some());
        check_established(&[&client, &server], expect);
        assert!(server.flush().is_empty());
        let late = server.tls.read_handshake(&[24, 0, 0, 1, 0]).unwrap_err();
        assert_eq!(late.alert, ALERT_UNEXPECTED_MESSAGE);

        let (ch, sh) = (
            client.handshake.as_ref().unwrap(),
            server.handshake.as_ref().unwrap(),
        );
        assert_eq!(ch.local.packet.suite(), expect);
        check_direction(&ch.local, &sh.remote);
        check_direction(&sh.local, &ch.remote);

        let (mut c1, mut s1) = (client.one_rtt.unwrap(), server.one_rtt.unwrap());
        check_one_rtt(&c1, &s1);
        check_one_rtt(&s1, &c1);
        // The captured secrets also drive key updates the peer agrees with.
        c1.on_packet_acked_in_current_phase();
        c1.initiate_update().unwrap();
        let mut pkt = vec![0x44, 0x02];
        pkt.extend_from_slice(&[0; TAG_LEN]);
        c1.local_packet().seal_in_place(2, &mut pkt, 2).unwrap();
        let (key, generation) = s1.remote_packet_for(c1.key_phase(), 2);
        assert_eq!(generation, crate::crypto::KeyGeneration::Next);
        key.open_in_place(2, &mut pkt, 2).unwrap();
        s1.commit_peer_update(2, std::time::Instant::now());
        check_one_rtt(&s1, &c1);
    }

    #[test]
    fn handshake_aes128_gcm() {
        full_handshake(
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            Suite::Aes128Gcm,
            VERSION_1,
        );
    }

    #[test]
    fn handshake_aes256_gcm() {
        full_handshake(
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            Suite::Aes256Gcm,
            VERSION_1,
        );
    }

    #[test]
    fn handshake_chacha20() {
        full_handshake(
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            Suite::ChaCha20Poly1305,
            VERSION_1,
        );
    }

    #[test]
    fn handshake_quic_v2() {
        full_handshake(
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            Suite::Aes128Gcm,
            VERSION_2,
        );
    }

    /// Configs like ours but with the provider's own QUIC key algorithm: keys are derived
    /// from the key-log secrets, not captured from rustls.
    fn deriving_configs(provider: CryptoProvider) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let provider = Arc::new(provider);
        let cert = generate_self_signed(&[]).unwrap();
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(cert.chain, cert.key)
            .unwrap();
        server.alpn_protocols = vec![ALPN.to_vec()];
        server.key_log = QuicKeyLog::shared();
        let mut client = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth();
        client.alpn_protocols = vec![ALPN.to_vec()];
        client.key_log = QuicKeyLog::shared();
        (Arc::new(server), Arc::new(client))
    }

    /// Keys captured from rustls's key builder are the ones the secrets imply, in the right
    /// direction: a capturing side talks to a deriving side, both ways round, for every
    /// suite and both versions (a mirrored local/remote swap would go unnoticed between
    /// two capturing sides).
    #[test]
    fn captured_keys_match_keys_derived_from_secrets() {
        let suites = [
            (cipher_suite::TLS13_AES_128_GCM_SHA256, VERSION_1),
            (cipher_suite::TLS13_AES_256_GCM_SHA384, VERSION_1),
            (cipher_suite::TLS13_CHACHA20_POLY1305_SHA256, VERSION_1),
            (cipher_suite::TLS13_AES_128_GCM_SHA256, VERSION_2),
        ];
        for (suite, version) in suites {
            let (deriving_server, deriving_client) = deriving_configs(one_suite(suite));
            let (capturing_client, capturing_server) = session_pair(
                one_suite(suite),
                ServerVerification::Insecure,
                ALPN,
                version,
            );
            let pairs = [
                (
                    capturing_client,
                    Peer::new(
                        TlsSession::server(deriving_server, version, SERVER_PARAMS.to_vec())
                            .unwrap(),
                    ),
                ),
                (
                    Peer::new(
                        TlsSession::client(
                            deriving_client,
                            "localhost",
                            version,
                            CLIENT_PARAMS.to_vec(),
                        )
                        .unwrap(),
                    ),
                    capturing_server,
                ),
            ];
            for (mut client, mut server) in pairs {
                handshake(&mut client, &mut server).unwrap();
                let (ch, sh) = (
                    client.handshake.as_ref().unwrap(),
                    server.handshake.as_ref().unwrap(),
                );
                check_direction(&ch.local, &sh.remote);
                check_direction(&sh.local, &ch.remote);
                let (c1, s1) = (client.one_rtt.unwrap(), server.one_rtt.unwrap());
                check_one_rtt(&c1, &s1);
                check_one_rtt(&s1, &c1);
            }
        }
    }

    /// Wrapping is idempotent and leaves suites without QUIC keys of ours alone.
    #[test]
    fn suites_are_wrapped_once() {
        let a = key_capture::capturing(cipher_suite::TLS13_AES_128_GCM_SHA256);
        let b = key_capture::capturing(cipher_suite::TLS13_AES_128_GCM_SHA256);
        let c = key_capture::capturing(a);
        let ptr = |s: rustls::SupportedCipherSuite| match s {
            rustls::SupportedCipherSuite::Tls13(t) => t as *const rustls::Tls13CipherSuite,
            _ => std::ptr::null(),
        };
        assert_eq!(ptr(a), ptr(b));
        assert_eq!(ptr(a), ptr(c));
        assert_ne!(ptr(a), ptr(cipher_suite::TLS13_AES_128_GCM_SHA256));
        assert_eq!(a.suite(), CipherSuite::TLS13_AES_128_GCM_SHA256);
        let tls12 = cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256;
        assert!(matches!(
            key_capture::capturing(tls12),
            rustls::SupportedCipherSuite::Tls12(t) if std::ptr::eq(t, match tls12 {
                rustls::SupportedCipherSuite::Tls12(o) => o,
                _ => unreachable!(),
            })
        ));
    }

    #[test]
    fn interleaved_sessions_on_one_thread_keep_their_secrets() {
        let provider = || one_suite(cipher_suite::TLS13_AES_128_GCM_SHA256);
        let (mut c1, mut s1) = session_pair(provider(), ServerVerification::Insecure, ALPN, 1);
        let (mut c2, mut s2) = session_pair(provider(), ServerVerification::Insecure, ALPN, 1);
        // Step both handshakes alternately so their key log traffic interleaves.
        for _ in 0..4 {
            for (c, s) in [(&mut c1, &mut s1), (&mut c2, &mut s2)] {
                for (_, d) in c.flush() {
                    s.tls.read_handshake(&d).unwrap();
                }
                for (_, d) in s.flush() {
                    c.tls.read_handshake(&d).unwrap();
                }
            }
        }
        for (c, s) in [(&c1, &s1), (&c2, &s2)] {
            check_one_rtt(c.one_rtt.as_ref().unwrap(), s.one_rtt.as_ref().unwrap());
            check_one_rtt(s.one_rtt.as_ref().unwrap(), c.one_rtt.as_ref().unwrap());
        }
        // Keys of different connections do not open each other's packets.
        let (a, b) = (c1.one_rtt.as_ref().unwrap(), s2.one_rtt.as_ref().unwrap());
        let mut pkt = vec![0x40, 0x01, 0x00];
        pkt.extend_from_slice(&[0; TAG_LEN]);
        a.local_packet().seal_in_place(1, &mut pkt, 2).unwrap();
        assert!(b
            .remote_packet_for(false, 1)
            .0
            .open_in_place(1, &mut pkt, 2)
            .is_err());
    }

    #[test]
    fn trusted_ca_file_succeeds_and_wrong_ca_fails_with_alert() {
        let dir = std::env::temp_dir().join(format!("quench-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca, key) = (dir.join("ca.pem"), dir.join("ca.key"));

        // Trusted: the server's own certificate pinned as CA.
        let cert = generate_self_signed(&[]).unwrap();
        write_pem(&cert, &ca, &key).unwrap();
        let provider = default_provider();
        let server_cfg = server_config_with_provider(
            cert,
            &[ALPN.to_vec()],
            provider.clone(),
            Resumption::Stateless(None),
        )
        .unwrap();
        let client_cfg =
            client_config(ServerVerification::CaFile(ca.clone()), &[ALPN.to_vec()]).unwrap();
        let mut server = Peer::new(TlsSession::server(server_cfg, 1, vec![]).unwrap());
        let mut client = Peer::new(TlsSession::client(client_cfg, "localhost", 1, vec![]).unwrap());
        handshake(&mut client, &mut server).unwrap();
        assert!(!client.tls.is_handshaking());

        // Wrong CA: another self-signed certificate.
        let (mut client, mut server) =
            session_pair(provider, ServerVerification::CaFile(ca), ALPN, VERSION_1);
        let (side, err) = handshake(&mut client, &mut server).unwrap_err();
        assert_eq!(side, Side::Client);
        // Both rcgen certificates carry the same issuer name, so the chain is built and
        // its signature check fails: decrypt_error (51) rather than unknown_ca (48).
        assert_eq!(
            err.alert,
            u8::from(rustls::AlertDescription::DecryptError),
            "{err}"
        );
        assert_eq!(err.transport_error_code(), 0x100 + 51);
        // The session stays failed.
        assert!(client.tls.is_handshaking());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn alpn_mismatch_fails_with_no_application_protocol() {
        let (mut client, mut server) = session_pair(
            default_provider(),
            ServerVerification::Insecure,
            b"other",
            VERSION_1,
        );
        let (side, err) = handshake(&mut client, &mut server).unwrap_err();
        assert_eq!(side, Side::Server);
        assert_eq!(err.transport_error_code(), 0x100 + 120);
    }

    #[test]
    fn state_moves_between_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<TlsSession>();
        assert_send::<OneRttKeys>();
        assert_send::<Keys>();
        assert_send::<crate::crypto::tokens::TokenKey>();
    }

    #[test]
    fn garbage_and_bad_versions_are_errors() {
        let cfg = server_config(generate_self_signed(&[]).unwrap(), &[]).unwrap();
        assert!(matches!(
            TlsSession::server(cfg.clone(), 0xff00_001d, vec![]),
            Err(TlsError::UnsupportedVersion(_))
        ));
        let mut server = TlsSession::server(cfg, VERSION_1, vec![]).unwrap();
        let err = server
            .read_handshake(&[1, 0, 0, 4, 0xff, 0xff, 0xff, 0xff])
            .unwrap_err();
        assert!(err.transport_error_code() > 0x100);
        let client_cfg = client_config(ServerVerification::Insecure, &[]).unwrap();
        assert!(matches!(
            TlsSession::client(client_cfg, "not a name!", VERSION_1, vec![]),
            Err(TlsError::InvalidServerName(_))
        ));
    }
}
