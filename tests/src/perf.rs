//! The `perf` protocol: the client opens a bidirectional stream, sends the number of bytes it
//! wants back as an 8-byte big-endian integer, then any amount of upload data and FIN; the
//! server discards the upload, sends exactly the requested bytes, and FINs.
//!
//! Written over `AsyncRead` / [`QuicSend`] so every peer stack runs the same code.

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::stream::QuicSend;

/// Payload source for both directions: content is irrelevant to perf, only the count matters.
static FILL: [u8; 64 * 1024] = [0; 64 * 1024];

/// Writes `len` filler bytes.
pub async fn write_fill(send: &mut impl QuicSend, mut len: u64) -> Result<()> {
    while len > 0 {
        let n = usize::try_from(len).unwrap_or(usize::MAX).min(FILL.len());
        send.write_all(&FILL[..n]).await?;
        len -= n as u64;
    }
    Ok(())
}

/// Reads to FIN, returning the byte count; `on_data` sees every read's length.
pub async fn drain(
    recv: &mut (impl AsyncRead + Unpin),
    mut on_data: impl FnMut(u64),
) -> Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = recv.read(&mut buf).await? as u64;
        if n == 0 {
            return Ok(total);
        }
        total += n;
        on_data(n);
    }
}

/// Server side of one stream.
pub async fn serve(mut send: impl QuicSend, mut recv: impl AsyncRead + Unpin) -> Result<()> {
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
    // quinn keeps retransmitting a finished stream after its handle is dropped; s2n-quic
    // does too (dropping a send stream finishes it).
    tokio::try_join!(respond, discard).map(|_| ())
}

/// What one client stream moved.
pub struct Transfer {
    pub down: u64,
    pub up: u64,
}

/// Client side of one freshly opened stream: ask for `down` bytes, upload `up` bytes;
/// `on_data` sees every chunk of the download.
pub async fn request(
    mut send: impl QuicSend,
    recv: impl AsyncRead + Unpin,
    down: u64,
    up: u64,
    on_data: impl FnMut(u64),
) -> Result<Transfer> {
    send_request_header(&mut send, down).await?;
    request_after_header(send, recv, down, up, on_data).await
}

/// The request's header: the size of the download asked for.
pub async fn send_request_header(send: &mut impl QuicSend, down: u64) -> Result<()> {
    send.write_all(&down.to_be_bytes()).await?;
    Ok(())
}

/// `request` once `send_request_header` has gone out: upload, and take the download.
pub async fn request_after_header(
    mut send: impl QuicSend,
    mut recv: impl AsyncRead + Unpin,
    down: u64,
    up: u64,
    on_data: impl FnMut(u64),
) -> Result<Transfer> {
    let upload = async {
        write_fill(&mut send, up).await?;
        send.finish()?;
        // Count the upload only once the peer has acknowledged all of it.
        send.acknowledged().await
    };
    let download = drain(&mut recv, on_data);
    let ((), got) = tokio::try_join!(upload, download)?;
    if got != down {
        bail!("perf: asked for {down} bytes, received {got}");
    }
    Ok(Transfer { down: got, up })
}
