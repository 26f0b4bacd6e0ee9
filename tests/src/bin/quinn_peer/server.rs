//! Server role: accept connections, dispatch each bidirectional stream to the protocol the
//! connection negotiated by ALPN, until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use quench_tests::args::ServerArgs;
use quench_tests::{hq, perf, serve};
use quinn::crypto::rustls::HandshakeData;
use quinn::{ConnectionError, VarInt};

use crate::tls;

/// How long a graceful shutdown waits for connections to acknowledge the close.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// The shared server flags, plus what only this peer can be asked to do: refuse client
/// migration two ways, for the tests of quench's client that it gives up cleanly.
#[derive(clap::Args)]
pub struct QuinnServerArgs {
    #[command(flatten)]
    pub common: ServerArgs,
    /// Send disable_active_migration (RFC 9000 §18.2): clients must not migrate.
    #[arg(long)]
    pub no_migration: bool,
    /// Use zero-length connection IDs (RFC 9000 §5.1): connections are told apart by
    /// address, so a client that moved would be lost (§9.5).
    #[arg(long)]
    pub zero_length_cids: bool,
    /// Accept 0-RTT (RFC 9001 §4.6) from resumed clients, and answer early requests
    /// before the handshake completes (0.5-RTT). quinn reports no server-side verdict; the
    /// early_data extension of its EncryptedExtensions, which the client reports, is it.
    #[arg(long)]
    pub early_data: bool,
}

/// Mints the empty connection ID.
struct ZeroLengthCids;

impl quinn::ConnectionIdGenerator for ZeroLengthCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        quinn::ConnectionId::new(&[])
    }
    fn cid_len(&self) -> usize {
        0
    }
    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

pub async fn run(args: QuinnServerArgs) -> Result<()> {
    let mut config = tls::server_config(&args.common, args.early_data)?;
    config.migration(!args.no_migration);
    let mut endpoint_config = quinn::EndpointConfig::default();
    if args.zero_length_cids {
        endpoint_config.cid_generator(|| Box::new(ZeroLengthCids));
    }
    let early_data = args.early_data;
    let args = args.common;
    let socket = std::net::UdpSocket::bind(args.listen)
        .with_context(|| format!("binding {}", args.listen))?;
    let endpoint = quinn::Endpoint::new(
        endpoint_config,
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .context("starting the endpoint")?;
    serve::announce(endpoint.local_addr()?)?;

    let root: Option<Arc<PathBuf>> = args.root.map(Arc::new);
    let shutdown = serve::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let root = root.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle_connection(incoming, root, early_data).await {
                        eprintln!("quinn-peer server: connection: {e:#}");
                    }
                });
            }
            result = &mut shutdown => {
                result?;
                break;
            }
        }
    }
    endpoint.close(VarInt::from_u32(0), b"server shutting down");
    // Best effort: let CONNECTION_CLOSE reach the peers, but never hang on exit.
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, endpoint.wait_idle()).await;
    Ok(())
}

#[derive(Clone, Copy)]
enum Protocol {
    Perf,
    HqInterop,
}

async fn handle_connection(
    incoming: quinn::Incoming,
    root: Option<Arc<PathBuf>>,
    early_data: bool,
) -> Result<()> {
    // With 0-RTT the connection is usable at once: early requests are answered before
    // the handshake completes (0.5-RTT).
    let connecting = incoming.accept()?;
    let conn = if early_data {
        match connecting.into_0rtt() {
            Ok((conn, _always_true_for_servers)) => conn,
            Err(connecting) => connecting.await.context("handshake")?,
        }
    } else {
        connecting.await.context("handshake")?
    };
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<HandshakeData>().ok())
        .and_then(|d| d.protocol);
    let protocol = match alpn.as_deref() {
        Some(b"perf") => Protocol::Perf,
        Some(b"hq-interop") => Protocol::HqInterop,
        Some(b"echo") => return echo_datagrams(conn).await,
        other => {
            conn.close(VarInt::from_u32(0x1), b"unsupported ALPN");
            anyhow::bail!("unsupported ALPN {other:?}");
        }
    };
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(streams) => streams,
            Err(ConnectionError::ApplicationClosed(_) | ConnectionError::LocallyClosed) => {
                return Ok(())
            }
            Err(e) => return Err(e.into()),
        };
        let root = root.clone();
        tokio::spawn(async move {
            let result = match protocol {
                Protocol::Perf => perf::serve(send, recv).await,
                Protocol::HqInterop => {
                    hq::serve(send, recv, root.as_deref().map(|p| p.as_path())).await
                }
            };
            if let Err(e) = result {
                eprintln!("quinn-peer server: stream: {e:#}");
            }
        });
    }
}

/// `echo`: every DATAGRAM frame (RFC 9221) goes back as it came, until the peer closes.
async fn echo_datagrams(conn: quinn::Connection) -> Result<()> {
    loop {
        match conn.read_datagram().await {
            Ok(d) => {
                // A datagram that cannot go back (too large, or the queue full) is dropped,
                // as an unreliable datagram may be.
                let _ = conn.send_datagram(d);
            }
            Err(ConnectionError::ApplicationClosed(_) | ConnectionError::LocallyClosed) => {
                return Ok(())
            }
            Err(e) => return Err(e.into()),
        }
    }
}
