//! Server role: accept connections, serve each bidirectional stream with the protocol the
//! connection negotiated by ALPN, until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use quench_tests::args::ServerArgs;
use quench_tests::{hq, perf, serve};

use crate::config;

/// Connection error code for an ALPN we do not serve.
const UNSUPPORTED_ALPN: u32 = 0x1;

pub async fn run(mut args: ServerArgs) -> Result<()> {
    // s2n-quic's DATAGRAM support is behind an unstable provider: do not offer `echo` only
    // to close every connection that picks it.
    args.alpn.retain(|a| a != "echo");
    let mut server = s2n_quic::Server::builder()
        .with_tls(config::server_tls(&args)?)?
        .with_io(args.listen)?
        .with_limits(config::limits()?)?
        .start()
        .map_err(|e| anyhow!("starting the s2n-quic server on {}: {e}", args.listen))?;
    serve::announce(server.local_addr()?)?;

    let root: Option<Arc<PathBuf>> = args.root.map(Arc::new);
    let shutdown = serve::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            conn = server.accept() => {
                let Some(conn) = conn else { break };
                let root = root.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle_connection(conn, root).await {
                        eprintln!("s2n-peer server: connection: {e:#}");
                    }
                });
            }
            result = &mut shutdown => return result,
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Protocol {
    Perf,
    HqInterop,
}

async fn handle_connection(
    mut conn: s2n_quic::Connection,
    root: Option<Arc<PathBuf>>,
) -> Result<()> {
    let alpn = conn.application_protocol()?;
    let protocol = match &alpn[..] {
        b"perf" => Protocol::Perf,
        b"hq-interop" => Protocol::HqInterop,
        other => {
            conn.close(UNSUPPORTED_ALPN.into());
            bail!("unsupported ALPN {:?}", String::from_utf8_lossy(other));
        }
    };
    loop {
        let stream = match conn.accept_bidirectional_stream().await {
            Ok(Some(stream)) => stream,
            // The peer closed the connection: the normal end.
            Ok(None) => return Ok(()),
            Err(s2n_quic::connection::Error::Application { .. })
            | Err(s2n_quic::connection::Error::Closed { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let (recv, send) = stream.split();
        let root = root.clone();
        tokio::spawn(async move {
            let result = match protocol {
                Protocol::Perf => perf::serve(send, recv).await,
                Protocol::HqInterop => {
                    hq::serve(send, recv, root.as_deref().map(|p| p.as_path())).await
                }
            };
            if let Err(e) = result {
                eprintln!("s2n-peer server: stream: {e:#}");
            }
        });
    }
}
