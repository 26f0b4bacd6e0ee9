//! One TLS setup for every stack under comparison: the same certificate, the same single
//! cipher suite (TLS_AES_128_GCM_SHA256) and key exchange (X25519), the same ALPN.

use std::sync::Arc;

use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::ServerName;

use quench::tls::certs::{generate_self_signed, CertifiedKey};

/// The ALPN every benchmark connection negotiates.
pub const ALPN: &[u8] = b"perf";
/// The name in the benchmark certificate.
pub const SERVER_NAME: &str = "localhost";

/// aws-lc-rs with exactly one cipher suite and one group, so no stack gets a different
/// AEAD or a post-quantum key share.
pub fn provider() -> CryptoProvider {
    CryptoProvider {
        cipher_suites: vec![aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256],
        kx_groups: vec![aws_lc_rs::kx_group::X25519],
        ..aws_lc_rs::default_provider()
    }
}

/// The certificate and the TLS configurations derived from it.
pub struct TlsSetup {
    pub cert: CertifiedKey,
    /// For quench's server (built by quench itself, from the same provider).
    pub quench_server: Arc<rustls::ServerConfig>,
    pub quench_client: Arc<rustls::ClientConfig>,
    /// For quinn-proto and rustls alone: the same settings quench uses (TLS 1.3 only,
    /// no early data, stateless session tickets).
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

impl TlsSetup {
    pub fn new() -> anyhow::Result<Self> {
        let cert = generate_self_signed(&[SERVER_NAME.to_string()])?;
        let alpns = vec![ALPN.to_vec()];
        let quench_server = quench::tls::session::server_config_with_provider(
            cert.clone(),
            &alpns,
            provider(),
            quench::tls::session::Resumption::Stateless(None),
        )?;
        let mut quench_client = (*quench::tls::session::client_config_with_provider(
            quench::tls::session::ServerVerification::Insecure,
            &alpns,
            provider(),
        )?)
        .clone();
        // Every handshake is a full one (certificate, signature): no client resumes. This also
        // keeps quench's client from reading transport parameters remembered with a ticket
        // (see docs/performance.md, "Findings").
        quench_client.resumption = rustls::client::Resumption::disabled();

        let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(cert.chain.clone(), cert.key.clone_key())?;
        server.alpn_protocols = alpns.clone();
        server.max_early_data_size = 0;
        // Stateless tickets, as quench's server issues them (`server_config_with_provider`).
        server.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});

        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.chain[0].clone())?;
        let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = alpns;
        client.enable_early_data = false;
        client.resumption = rustls::client::Resumption::disabled();

        Ok(Self {
            cert,
            quench_server,
            quench_client: Arc::new(quench_client),
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// The same setup with clients that keep session tickets and resume (rustls's
    /// in-memory store, fresh): after one full handshake, each handshake resumes a session
    /// and brings new tickets for the next.
    pub fn resuming(&self) -> TlsSetup {
        let resume = |config: &Arc<rustls::ClientConfig>| {
            let mut config = (**config).clone();
            config.resumption = rustls::client::Resumption::in_memory_sessions(256);
            Arc::new(config)
        };
        TlsSetup {
            cert: self.cert.clone(),
            quench_server: self.quench_server.clone(),
            quench_client: resume(&self.quench_client),
            server: self.server.clone(),
            client: resume(&self.client),
        }
    }

    pub fn server_name() -> ServerName<'static> {
        ServerName::try_from(SERVER_NAME).expect("valid DNS name")
    }
}
