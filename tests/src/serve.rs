//! Server-process plumbing every peer shares: the readiness line the harness waits for, and
//! the signals that end a server.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::Result;
use tokio::signal::unix::{signal, SignalKind};

/// Prints `listening on ADDR` (the harness waits for this exact line) and flushes it.
pub fn announce(local: SocketAddr) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {local}")?;
    out.flush()?;
    Ok(())
}

/// Resolves on the first SIGINT or SIGTERM (the harness stops servers with SIGTERM).
pub async fn shutdown_signal() -> Result<()> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = sigint.recv() => {}
        _ = sigterm.recv() => {}
    }
    Ok(())
}
