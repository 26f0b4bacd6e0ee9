//! One connection's TLS 1.3 handshake (RFC 9001 §4) driven through `rustls::quic`.
//!
//! rustls moves handshake bytes; its own packet keys are ignored. Secrets come from our
//! [`QuicKeyLog`] hook and become `crate::crypto` keys when rustls signals (with its
//! `KeyChange`) that the write epoch advances.
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::quic;
use rustls::{CipherSuite, ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};

use super::certs::CertifiedKey;
use super::keylog::{self, QuicKeyLog, SecretLabel};
use crate::crypto::{Keys, OneRttKeys, Secret, Suite, VERSION_1, VERSION_2};
use crate::{Epoch, Side};

/// TLS alert `internal_error` (RFC 8446 §6.2), for failures with no alert of their own.
const ALERT_INTERNAL_ERROR: u8 = 80;
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
    // QUIC requires TLS 1.3 (RFC 9001 §4.2); TLS 1.2 suites are useless here.
    CryptoProvider {
        cipher_suites: provider
            .cipher_suites
            .into_iter()
            .filter(|s| s.version() == &rustls::version::TLS13)
            .collect(),
        ..provider
    }
}

/// A server config: TLS 1.3 only, no early data, our key log.
pub fn server_config(cert: CertifiedKey, alpns: &[Vec<u8>]) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with_provider(cert, alpns, rustls::crypto::aws_lc_rs::default_provider())
}

/// `server_config` with a custom provider (e.g. restricted to one cipher suite).
pub fn server_config_with_provider(
    cert: CertifiedKey,
    alpns: &[Vec<u8>],
    provider: CryptoProvider,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(tls13_only(provider)))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(cert.chain, cert.key)?;
    config.alpn_protocols = alpns.to_vec();
    config.max_early_data_size = 0;
    config.key_log = QuicKeyLog::shared();
    Ok(Arc::new(config))
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

/// One connection's handshake.
pub struct TlsSession {
    conn: quic::Connection,
    side: Side,
    version: u32,
    /// Client only: the name we asked for.
    server_name: Option<String>,
    hello: HelloPrefix,
    /// Captured secrets by `SecretLabel::index`, until their epoch starts.
    secrets: [Option<Secret>; 4],
    write_epoch: Epoch,
    /// A local failure (secrets missing) reported by the next `read_handshake`.
    failed: Option<TlsAlertError>,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("side", &self.side)
            .field("version", &self.version)
            .field("write_epoch", &self.write_epoch)
            .field("handshaking", &self.conn.is_handshaking())
            .finish_non_exhaustive()
    }
}

impl TlsSession {
    /// `params`: our encoded transport parameters (extension 0x39).
    pub fn server(config: Arc<ServerConfig>, version: u32, params: Vec<u8>) -> Result<Self, TlsError> {
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
        let conn = quic::ClientConnection::new(config, rustls_version(version)?, name, params)?;
        Ok(Self::with_conn(
            conn.into(),
            Side::Client,
            version,
            Some(server_name.to_string()),
        ))
    }

    fn with_conn(conn: quic::Connection, side: Side, version: u32, name: Option<String>) -> Self {
        Self {
            conn,
            side,
            version,
            server_name: name,
            hello: HelloPrefix::new(),
            secrets: [None, None, None, None],
            write_epoch: Epoch::Initial,
            failed: None,
        }
    }

    pub fn side(&self) -> Side {
        self.side
    }

    /// The epoch `write_handshake` currently writes at.
    pub fn write_epoch(&self) -> Epoch {
        self.write_epoch
    }

    /// CRYPTO data received, in order, at the peer's current epoch. Errors carry the TLS
    /// alert; close with [`TlsAlertError::transport_error_code`].
    pub fn read_handshake(&mut self, data: &[u8]) -> Result<(), TlsAlertError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.side == Side::Server {
            self.hello.feed(data);
        }
        keylog::clear();
        let result = self.conn.read_hs(data);
        self.collect_secrets();
        result.map_err(|e| {
            let alert = self.conn.alert().map_or(ALERT_INTERNAL_ERROR, u8::from);
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
        let start = out.len();
        keylog::clear();
        let change = self.conn.write_hs(out);
        if self.side == Side::Client && self.write_epoch == Epoch::Initial {
            self.hello.feed(&out[start..]);
        }
        self.collect_secrets();
        let built = match change? {
            quic::KeyChange::Handshake { .. } => self
                .take_pair(SecretLabel::ClientHandshake, SecretLabel::ServerHandshake)
                .map(|(c, s)| {
                    self.write_epoch = Epoch::Handshake;
                    KeyChange::Handshake(Keys::from_secrets(self.version, self.side, &c, &s))
                }),
            quic::KeyChange::OneRtt { .. } => self
                .take_pair(SecretLabel::ClientTraffic, SecretLabel::ServerTraffic)
                .map(|(c, s)| {
                    self.write_epoch = Epoch::Data;
                    let (local, remote) = match self.side {
                        Side::Client => (c, s),
                        Side::Server => (s, c),
                    };
                    KeyChange::OneRtt(OneRttKeys::new(self.version, local, remote))
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

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Peer's encoded transport parameters, once received.
    pub fn peer_transport_parameters(&self) -> Option<&[u8]> {
        self.conn.quic_transport_parameters()
    }

    pub fn alpn(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// Server: the SNI the client sent. Client: the name we asked for.
    pub fn server_name(&self) -> Option<&str> {
        match &self.conn {
            quic::Connection::Server(s) => s.server_name(),
            quic::Connection::Client(_) => self.server_name.as_deref(),
        }
    }

    pub fn negotiated_suite(&self) -> Option<Suite> {
        match self.conn.negotiated_cipher_suite()?.suite() {
            CipherSuite::TLS13_AES_128_GCM_SHA256 => Some(Suite::Aes128Gcm),
            CipherSuite::TLS13_AES_256_GCM_SHA384 => Some(Suite::Aes256Gcm),
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => Some(Suite::ChaCha20Poly1305),
            _ => None,
        }
    }
}
