//! `--alpn echo --datagrams N`: sends N numbered DATAGRAM frames (RFC 9221) and collects
//! the echoes, checking each byte for byte.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};

/// How long without an echo before the rest count as lost.
const QUIET: Duration = Duration::from_secs(2);

/// Datagram `i`: 5 to 1,100 bytes, its number in the first four, then a pattern of it.
pub fn datagram(i: u32) -> Vec<u8> {
    let len = 5 + (i as usize * 37) % 1096;
    let mut d = vec![0u8; len];
    d[..4].copy_from_slice(&i.to_be_bytes());
    for (j, b) in d[4..].iter_mut().enumerate() {
        *b = (i as usize * 31 + j * 7) as u8;
    }
    d
}

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
                if d.len() < 4 {
                    bail!("a {}-byte echo", d.len());
                }
                let i = u32::from_be_bytes(d[..4].try_into()?);
                if i >= count || d[..] != datagram(i)[..] {
                    bail!("echo of datagram {i} differs from what was sent");
                }
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
        let d = datagram(i);
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
