//! quinn's wrapping of the shared rustls configs (`quench_tests::tls`), with the transport
//! parameters the tests need.

use std::sync::Arc;

use anyhow::Result;
use quench_tests::args::ServerArgs;
use quench_tests::tls::{self as shared, Verify};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{TransportConfig, VarInt};

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

pub fn transport() -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONN_WINDOW))
        .send_window(u64::from(CONN_WINDOW))
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_CONCURRENT_BIDI))
        .max_idle_timeout(Some(VarInt::from_u32(IDLE_TIMEOUT_MS).into()));
    Arc::new(t)
}

/// `early_data`: accept 0-RTT on resumed connections (rustls's in-memory session cache
/// keeps tickets single-use).
pub fn server_config(args: &ServerArgs, early_data: bool) -> Result<quinn::ServerConfig> {
    let mut tls = shared::server_config_for(args)?;
    if early_data {
        tls.max_early_data_size = u32::MAX; // RFC 9001 §4.6.1
    }
    let crypto = QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport());
    Ok(config)
}

/// `early_data`: offer 0-RTT with the session tickets the server hands out.
pub fn client_config(
    verify: Verify<'_>,
    alpn: &str,
    early_data: bool,
) -> Result<quinn::ClientConfig> {
    let mut tls = shared::client_config(verify, alpn)?;
    tls.enable_early_data = early_data;
    let crypto = QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport());
    Ok(config)
}
