//! The `perf` protocol: the client opens a bidirectional stream, sends the number of bytes it
//! wants back as an 8-byte big-endian integer, then any amount of upload data and FIN; the
//! server discards the upload, sends exactly the requested bytes, and FINs.

use anyhow::{bail, Context, Result};
use quinn::{RecvStream, SendStream};

use crate::client::ReceiveTriggers;

/// Payload source for both directions: content is irrelevant to perf, only the count matters.
static FILL: [u8; 64 * 1024] = [0; 64 * 1024];

/// Writes `len` filler bytes.
pub async fn write_fill(send: &mut SendStream, mut len: u64) -> Result<()> {
    while len > 0 {
        let n = usize::try_from(len).unwrap_or(usize::MAX).min(FILL.len());
        send.write_all(&FILL[..n]).await?;
        len -= n as u64;
    }
    Ok(())
}

/// Reads to FIN without copying, returning the byte count; `on_data` sees every chunk length.
pub async fn drain(recv: &mut RecvStream, mut on_data: impl FnMut(u64)) -> Result<u64> {
    let mut total = 0u64;
    while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
        let n = chunk.bytes.len() as u64;
        total += n;
        on_data(n);
    }
    Ok(total)
}

/// Server side of one stream.
pub async fn serve(mut send: SendStream, mut recv: RecvStream) -> Result<()> {
    let mut header = [0u8; 8];
    recv.read_exact(&mut header)
        .await
        .context("reading perf request size")?;
    let wanted = u64::from_be_bytes(header);
    // Respond while still draining the upload: a client may well wait for its data to be
    // acknowledged before it finishes, and neither direction should wait on the other.
    let respond = async {
        write_fill(&mut send, wanted).await?;
        send.finish()?;
        Ok::<_, anyhow::Error>(())
    };
    let discard = async { drain(&mut recv, |_| {}).await.map(|_| ()) };
    // quinn keeps retransmitting a finished stream after its handle is dropped.
    tokio::try_join!(respond, discard).map(|_| ())
}

/// What one client stream moved.
pub struct Transfer {
    pub down: u64,
    pub up: u64,
}

/// Client side of one stream: ask for `down` bytes, upload `up` bytes.
pub async fn request(
    conn: &quinn::Connection,
    down: u64,
    up: u64,
    triggers: &ReceiveTriggers,
) -> Result<Transfer> {
    let (mut send, mut recv) = conn.open_bi().await.context("opening stream")?;
    let upload = async {
        send.write_all(&down.to_be_bytes()).await?;
        write_fill(&mut send, up).await?;
        send.finish()?;
        // Count the upload only once the peer has acknowledged all of it.
        if let Some(code) = send.stopped().await? {
            bail!("server stopped the upload with code {code}");
        }
        Ok::<_, anyhow::Error>(())
    };
    let download = drain(&mut recv, |n| triggers.on_received(n));
    let ((), got) = tokio::try_join!(upload, download)?;
    if got != down {
        bail!("perf: asked for {down} bytes, received {got}");
    }
    Ok(Transfer { down: got, up })
}
