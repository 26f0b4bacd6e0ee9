//! s2n-quic's wrapping of the shared rustls configs (`quench_tests::tls`), and the transport
//! limits the tests need (the same windows and stream count as quinn-peer's).

use std::time::Duration;

use anyhow::Result;
use quench_tests::args::ServerArgs;
use quench_tests::tls::{self as shared, Verify};
use s2n_quic::provider::limits::Limits;
use s2n_quic::provider::tls::rustls;

/// Per-stream and per-connection flow-control windows: large enough that a loopback
/// transfer is bounded by CPU, not by window updates.
const STREAM_WINDOW: u64 = 16 << 20;
const CONN_WINDOW: u64 = 24 << 20;
/// Tests open up to 100 concurrent streams; leave headroom.
const MAX_CONCURRENT_BIDI: u64 = 1000;
/// Without traffic for this long a connection is dropped: a stuck peer fails the run well
/// inside the test harness's own timeout.
const IDLE_TIMEOUT: Duration = Duration::from_secs(15);

pub fn limits() -> Result<Limits> {
    Ok(Limits::new()
        .with_data_window(CONN_WINDOW)?
        .with_bidirectional_local_data_window(STREAM_WINDOW)?
        .with_bidirectional_remote_data_window(STREAM_WINDOW)?
        .with_max_open_local_bidirectional_streams(MAX_CONCURRENT_BIDI)?
        .with_max_open_remote_bidirectional_streams(MAX_CONCURRENT_BIDI)?
        .with_max_idle_timeout(IDLE_TIMEOUT)?)
}

pub fn server_tls(args: &ServerArgs) -> Result<rustls::Server> {
    Ok(rustls::Server::from(shared::server_config_for(args)?))
}

pub fn client_tls(verify: Verify<'_>, alpn: &str) -> Result<rustls::Client> {
    Ok(rustls::Client::from(shared::client_config(verify, alpn)?))
}
