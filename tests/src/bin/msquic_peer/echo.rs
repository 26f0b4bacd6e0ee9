//! `--alpn echo --datagrams N` on the client: DATAGRAM frames (RFC 9221) sent on each
//! connection from the main thread, and their echoes, which the connections' callbacks
//! check and report over the client's channel.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use msquic::Connection;
use quench_tests::datagram;
use quench_tests::report::Report;

use crate::client::Msg;
use crate::send;

/// `echo`: what a connection's callbacks need to check its echoes.
pub(crate) struct EchoState {
    pub conn: usize,
    pub count: u32,
    /// The largest DATAGRAM payload the server accepts (0 until MsQuic says).
    pub limit: AtomicU64,
}

/// How long without an echo before the rest count as lost.
const ECHO_QUIET: Duration = Duration::from_secs(2);
/// How long to wait for MsQuic to say the server accepts DATAGRAM frames.
const DATAGRAM_READY_TIMEOUT: Duration = Duration::from_secs(2);

/// `--alpn echo --datagrams N`: sends each connection N numbered DATAGRAM frames
/// (`quench_tests::datagram::pattern`), then collects the echoes, each checked byte for
/// byte; a report with `datagrams_sent` / `datagrams_echoed`.
pub(crate) fn echo_datagrams(
    conns: &[Connection],
    states: &[Arc<EchoState>],
    rx: &mpsc::Receiver<Msg>,
) -> Result<Report> {
    let mut report = Report::default();
    for (conn, state) in conns.iter().zip(states) {
        let ready = Instant::now() + DATAGRAM_READY_TIMEOUT;
        while state.limit.load(Ordering::Relaxed) == 0 {
            if Instant::now() > ready {
                bail!("the server does not accept DATAGRAM frames");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let limit = state.limit.load(Ordering::Relaxed);
        for i in 0..state.count {
            let datagram = datagram::pattern(i);
            if datagram.len() as u64 > limit {
                bail!(
                    "datagram of {} bytes over the path's limit of {limit}",
                    datagram.len()
                );
            }
            report.bytes_up += datagram.len() as u64;
            send::send_datagram(conn, datagram)
                .map_err(|e| anyhow!("sending datagram {i}: {e}"))?;
            if i % 10 == 9 {
                // About 5 MB/s: well within loopback, so a lost echo is the server's doing.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    let count: u64 = states.iter().map(|s| u64::from(s.count)).sum();
    let mut seen: Vec<BTreeSet<u32>> = states.iter().map(|_| BTreeSet::new()).collect();
    let mut echoed = 0u64;
    while echoed < count {
        match rx.recv_timeout(ECHO_QUIET) {
            Ok(Msg::Echo { conn, echo }) => {
                let (i, len) = echo.map_err(|e| anyhow!("connection {conn}: {e}"))?;
                if !seen[conn].insert(i) {
                    bail!("connection {conn}: datagram {i} echoed twice");
                }
                echoed += 1;
                report.bytes_down += len as u64;
            }
            Ok(Msg::Closed { error }) => bail!(
                "a connection closed during the echo: {}",
                error.unwrap_or_else(|| "no error given".to_string())
            ),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    report.datagrams_sent = Some(count);
    report.datagrams_echoed = Some(echoed);
    Ok(report)
}
