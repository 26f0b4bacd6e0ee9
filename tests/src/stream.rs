//! The few send-side stream operations the protocols need beyond `AsyncWrite`, which every
//! QUIC stack names differently. Implemented here for each stack's type because the orphan
//! rule keeps the peer binaries (separate crates) from doing it.

use std::future::Future;

use anyhow::{bail, Result};
use tokio::io::AsyncWrite;

pub trait QuicSend: AsyncWrite + Unpin + Send {
    /// FIN after what was written; returns at once.
    fn finish(&mut self) -> Result<()>;
    /// Abandons the stream with RESET_STREAM carrying `code`.
    fn reset(&mut self, code: u32) -> Result<()>;
    /// After `finish`: resolves once the peer has acknowledged all data and the FIN (so an
    /// upload counts only what certainly arrived).
    fn acknowledged(&mut self) -> impl Future<Output = Result<()>> + Send;
}

impl QuicSend for quinn::SendStream {
    fn finish(&mut self) -> Result<()> {
        quinn::SendStream::finish(self)?;
        Ok(())
    }

    fn reset(&mut self, code: u32) -> Result<()> {
        quinn::SendStream::reset(self, quinn::VarInt::from_u32(code))?;
        Ok(())
    }

    async fn acknowledged(&mut self) -> Result<()> {
        if let Some(code) = self.stopped().await? {
            bail!("peer stopped the stream with code {code}");
        }
        Ok(())
    }
}

impl QuicSend for s2n_quic::stream::SendStream {
    fn finish(&mut self) -> Result<()> {
        s2n_quic::stream::SendStream::finish(self)?;
        Ok(())
    }

    fn reset(&mut self, code: u32) -> Result<()> {
        s2n_quic::stream::SendStream::reset(self, s2n_quic::application::Error::from(code))?;
        Ok(())
    }

    async fn acknowledged(&mut self) -> Result<()> {
        // s2n-quic's `close` is finish + wait for the peer's ACK of everything.
        self.close().await?;
        Ok(())
    }
}
