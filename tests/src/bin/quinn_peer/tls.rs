//! TLS and transport configuration shared by the client and server roles.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{TransportConfig, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Per-stream and per-connection flow-control windows: large enough that a loopback transfer
/// is bounded by CPU, not by window updates (bandwidth-delay product is tiny here, but the
/// peer may be slow to return credit).
const STREAM_WINDOW: u32 = 16 << 20;
const CONN_WINDOW: u32 = 24 << 20;
/// Tests open 100 concurrent streams; leave headroom.
const MAX_CONCURRENT_BIDI: u32 = 1000;
/// Milliseconds without traffic before a connection is dropped: a stuck peer fails the run
/// well inside the test harness's own timeout.
const IDLE_TIMEOUT_MS: u32 = 15_000;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

pub fn transport() -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONN_WINDOW))
        .send_window(u64::from(CONN_WINDOW))
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_CONCURRENT_BIDI))
        .max_idle_timeout(Some(VarInt::from_u32(IDLE_TIMEOUT_MS).into()));
    Arc::new(t)
}

fn alpn_list(alpns: &[String]) -> Vec<Vec<u8>> {
    alpns.iter().map(|a| a.as_bytes().to_vec()).collect()
}

pub fn server_config_from_files(
    cert: &Path,
    key: &Path,
    alpns: &[String],
) -> Result<quinn::ServerConfig> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    if chain.is_empty() {
        return Err(anyhow!("no certificate in {}", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading key {}", key.display()))?;
    server_config(chain, key, alpns)
}

/// A self-signed certificate for localhost, 127.0.0.1 and ::1, optionally written out as PEM.
pub fn server_config_generated(
    write_cert: Option<&Path>,
    alpns: &[String],
) -> Result<quinn::ServerConfig> {
    let names = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
    let generated = rcgen::generate_simple_self_signed(names)?;
    if let Some(path) = write_cert {
        std::fs::write(path, generated.cert.pem())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let key = PrivateKeyDer::try_from(generated.key_pair.serialize_der())
        .map_err(|e| anyhow!("generated key: {e}"))?;
    server_config(vec![generated.cert.der().clone()], key, alpns)
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpns: &[String],
) -> Result<quinn::ServerConfig> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("certificate and key do not match")?;
    tls.alpn_protocols = alpn_list(alpns);
    tls.key_log = Arc::new(rustls::KeyLogFile::new());
    let crypto = QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport());
    Ok(config)
}

/// How the client authenticates the server.
pub enum Verify<'a> {
    /// Trust anchors from this PEM file.
    Ca(&'a Path),
    /// Accept any certificate (signatures on the handshake are still checked).
    Insecure,
}

pub fn client_config(verify: Verify<'_>, alpn: &str) -> Result<quinn::ClientConfig> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut tls = match verify {
        Verify::Ca(path) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("reading {}", path.display()))?
            {
                roots
                    .add(cert.with_context(|| format!("parsing {}", path.display()))?)
                    .with_context(|| format!("bad CA certificate in {}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(anyhow!("no certificate in {}", path.display()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Verify::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn.as_bytes().to_vec()];
    tls.key_log = Arc::new(rustls::KeyLogFile::new());
    let crypto = QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport());
    Ok(config)
}

/// `--insecure`: skips chain and name validation but still verifies handshake signatures, so a
/// broken CertificateVerify from the peer is still caught.
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
