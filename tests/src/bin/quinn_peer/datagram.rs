//! `--alpn echo --datagrams N`: sends N numbered DATAGRAM frames (RFC 9221) and collects
//! the echoes, checking each byte for byte.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use quench_tests::datagram::{check_echo, pattern};

/// How long without an echo before the rest count as lost.
const QUIET: Duration = Duration::from_secs(2);

/// What came back: (datagrams echoed, their bytes, bytes sent).
pub async fn echo(conn: &quinn::Connection, count: u32) -> Result<(u32, u64, u64)> {
    let limit = conn
        .max_datagram_size()
        .ok_or_else(|| anyhow!("the server does not accept datagrams"))?;
    let reader = {
        let conn = conn.clone();
        tokio::spawn(async move {
            let mut seen = BTreeSet::new();
            let mut bytes = 0u64;
            while seen.len() < count as usize {
                let d = match tokio::time::timeout(QUIET, conn.read_datagram()).await {
                    Ok(d) => d?,
                    Err(_) => break,
                };
                let i = check_echo(&d, count)?;
                if !seen.insert(i) {
                    bail!("datagram {i} echoed twice");
                }
                bytes += d.len() as u64;
            }
            Ok::<_, anyhow::Error>((seen.len() as u32, bytes))
        })
    };
    let mut sent = 0u64;
    for i in 0..count {
        let d = pattern(i);
        if d.len() > limit {
            bail!(
                "datagram of {} bytes over the path's limit of {limit}",
                d.len()
            );
        }
        sent += d.len() as u64;
        conn.send_datagram(d.into())?;
        if i % 10 == 9 {
            // About 5 MB/s: well within loopback, so a lost echo is the server's doing.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let (echoed, bytes) = reader.await??;
    Ok((echoed, bytes, sent))
}
