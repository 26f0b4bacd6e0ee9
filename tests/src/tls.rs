//! rustls configuration for both peer stacks (quinn and s2n-quic each wrap a plain rustls
//! config): the server certificate from PEM files or generated, and the client's trust.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::args::ServerArgs;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn alpn_list(alpns: &[String]) -> Vec<Vec<u8>> {
    alpns.iter().map(|a| a.as_bytes().to_vec()).collect()
}

/// The server's config as its flags ask: `--cert/--key`, else a generated certificate.
pub fn server_config_for(args: &ServerArgs) -> Result<rustls::ServerConfig> {
    match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => server_config_from_files(cert, key, &args.alpn),
        _ => server_config_generated(args.write_cert.as_deref(), &args.alpn),
    }
}

pub fn server_config_from_files(
    cert: &Path,
    key: &Path,
    alpns: &[String],
) -> Result<rustls::ServerConfig> {
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
) -> Result<rustls::ServerConfig> {
    let generated = generate(write_cert)?;
    let key = PrivateKeyDer::try_from(generated.key_pair.serialize_der())
        .map_err(|e| anyhow!("generated key: {e}"))?;
    server_config(vec![generated.cert.der().clone()], key, alpns)
}

/// A self-signed certificate for localhost, 127.0.0.1 and ::1, written to `write_cert` as
/// PEM if given (for clients to pin as CA).
fn generate(write_cert: Option<&Path>) -> Result<rcgen::CertifiedKey> {
    let names = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
    let generated = rcgen::generate_simple_self_signed(names)?;
    if let Some(path) = write_cert {
        std::fs::write(path, generated.cert.pem())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(generated)
}

/// A server's certificate chain and key as PEM files, for TLS libraries that load them only
/// from files (BoringSSL in quiche, quictls in MsQuic): `--cert/--key`, else a generated
/// pair (see [`server_config_generated`]) in a private (0700) temp dir that lives as long
/// as this does.
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl CertFiles {
    pub fn from_args(args: &ServerArgs, prefix: &str) -> Result<CertFiles> {
        if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
            return Ok(CertFiles {
                cert: cert.clone(),
                key: key.clone(),
                _dir: None,
            });
        }
        let generated = generate(args.write_cert.as_deref())?;
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .context("creating a temp dir for the generated certificate")?;
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, generated.cert.pem())?;
        std::fs::write(&key, generated.key_pair.serialize_pem())?;
        Ok(CertFiles {
            cert,
            key,
            _dir: Some(dir),
        })
    }
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpns: &[String],
) -> Result<rustls::ServerConfig> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("certificate and key do not match")?;
    tls.alpn_protocols = alpn_list(alpns);
    tls.key_log = Arc::new(rustls::KeyLogFile::new());
    Ok(tls)
}

/// How the client authenticates the server.
pub enum Verify<'a> {
    /// Trust anchors from this PEM file.
    Ca(&'a Path),
    /// Accept any certificate (signatures on the handshake are still checked).
    Insecure,
}

pub fn client_config(verify: Verify<'_>, alpn: &str) -> Result<rustls::ClientConfig> {
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
    Ok(tls)
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
