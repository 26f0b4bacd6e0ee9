//! The CRYPTO stream of one epoch (RFC 9000 §19.6, §7.5): TLS handshake bytes, sent
//! reliably and in order but without flow control.

use super::assembler::Assembler;
use super::send_buffer::{Chunk, SendBuffer};
use super::wire::error::{TransportError, TransportErrorCode as Code};
use super::wire::frame::{crypto_header_len, write_crypto_header};
use super::wire::varint::Writer;

/// How far past the read offset the peer may send before we give up (§7.5 asks for
/// at least 4096 bytes; certificate chains need more).
pub const DEFAULT_CRYPTO_BUFFER: u64 = 64 * 1024;
/// Bound on holes in received CRYPTO data; honest peers leave a handful.
const MAX_CRYPTO_RANGES: usize = 256;
const MAX_OFFSET: u64 = (1 << 62) - 1;

#[derive(Debug)]
pub struct CryptoStream {
    send: SendBuffer,
    recv: Assembler,
    recv_limit: u64,
}

impl Default for CryptoStream {
    fn default() -> Self {
        Self::new()
    }
}

impl CryptoStream {
    pub fn new() -> Self {
        Self::with_buffer_limit(DEFAULT_CRYPTO_BUFFER)
    }

    /// `limit`: bytes accepted beyond the read offset.
    pub fn with_buffer_limit(limit: u64) -> Self {
        Self {
            send: SendBuffer::new(),
            // Few ranges at most, so no per-range byte requirement: TLS messages may come
            // in small CRYPTO frames, deliberately scattered by some clients.
            recv: Assembler::new(MAX_CRYPTO_RANGES).with_min_range_bytes(0),
            recv_limit: limit,
        }
    }

    /// Queues handshake bytes from TLS.
    pub fn write(&mut self, data: &[u8]) {
        self.send.write(data);
    }

    /// A CRYPTO frame from the peer.
    pub fn on_crypto(&mut self, offset: u64, data: &[u8]) -> Result<(), TransportError> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= MAX_OFFSET)
            .ok_or(TransportError::new(
                Code::FRAME_ENCODING_ERROR,
                "crypto offset beyond 2^62-1",
            ))?;
        if end > self.recv.read_offset() + self.recv_limit {
            return Err(TransportError::new(
                Code::CRYPTO_BUFFER_EXCEEDED,
                "crypto data too far ahead",
            ));
        }
        self.recv.insert(offset, data).map_err(|_| {
            TransportError::new(Code::CRYPTO_BUFFER_EXCEEDED, "crypto data too fragmented")
        })?;
        Ok(())
    }

    /// The next contiguous received bytes not yet consumed; call until None and feed
    /// each chunk to TLS.
    pub fn read_chunk(&mut self) -> Option<&[u8]> {
        self.recv.read_chunk(usize::MAX)
    }

    /// Total bytes consumed by `read_chunk` so far.
    pub fn read_offset(&self) -> u64 {
        self.recv.read_offset()
    }

    /// Unsent or lost data is waiting.
    pub fn has_pending(&self) -> bool {
        self.send.has_retransmit() || self.send.has_unsent()
    }

    /// Writes as many CRYPTO frames as fit (lost data first); calls `record` with the
    /// offset and length of each. Returns bytes written.
    #[inline(never)]
    pub fn write_frame(&mut self, buf: &mut [u8], record: &mut dyn FnMut(u64, u16)) -> usize {
        let mut pos = 0;
        loop {
            let avail = buf.len() - pos;
            let Some(chunk) = self.send.next_chunk(u16::MAX as usize, u64::MAX) else {
                break;
            };
            let offset = chunk.range.start;
            let want = (chunk.range.end - offset) as usize;
            let hdr = crypto_header_len(offset, want.min(avail));
            if avail <= hdr {
                break;
            }
            let n = want.min(avail - hdr);
            let chunk = Chunk {
                range: offset..offset + n as u64,
                retransmit: chunk.retransmit,
            };
            let out = &mut buf[pos..];
            let mut w = Writer::new(out);
            if write_crypto_header(&mut w, offset, n).is_err() {
                break;
            }
            let h = w.len();
            self.send.copy_to(chunk.range.clone(), &mut out[h..h + n]);
            self.send.mark_sent(&chunk);
            record(offset, n as u16);
            pos += h + n;
        }
        pos
    }

    pub fn on_acked(&mut self, offset: u64, len: u16) {
        self.send.on_ack(offset..offset + u64::from(len));
    }

    pub fn on_lost(&mut self, offset: u64, len: u16) {
        self.send.on_lost(offset..offset + u64::from(len));
    }

    /// Everything written has been sent and acknowledged.
    pub fn is_fully_acked(&self) -> bool {
        self.send.is_fully_acked()
    }

    /// Bytes held for sending and reassembly.
    pub fn buffered(&self) -> usize {
        self.send.buffered() + self.recv.buffered()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses CRYPTO frames written by `write_frame` (type, offset, length, data).
    fn parse(mut b: &[u8]) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            assert_eq!(b[0], 0x06);
            b = &b[1..];
            let (off, n) = super::super::test_util::varint(b);
            b = &b[n..];
            let (len, n) = super::super::test_util::varint(b);
            b = &b[n..];
            out.push((off, b[..len as usize].to_vec()));
            b = &b[len as usize..];
        }
        out
    }

    #[test]
    fn send_lose_resend_and_receive() {
        let mut tx = CryptoStream::new();
        let mut rx = CryptoStream::new();
        let msg: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        tx.write(&msg);
        let mut sent = Vec::new();
        let mut pkt = [0u8; 1200];
        let mut frames = Vec::new();
        while tx.has_pending() {
            let n = tx.write_frame(&mut pkt, &mut |o, l| sent.push((o, l)));
            assert!(n > 0 && n <= 1200);
            frames.push(parse(&pkt[..n]));
        }
        assert_eq!(sent.len(), 3);
        // The middle packet is lost.
        tx.on_acked(sent[0].0, sent[0].1);
        tx.on_acked(sent[2].0, sent[2].1);
        tx.on_lost(sent[1].0, sent[1].1);
        assert!(!tx.is_fully_acked());
        let mut resent = Vec::new();
        let n = tx.write_frame(&mut pkt, &mut |o, l| resent.push((o, l)));
        assert_eq!(resent, vec![sent[1]]);
        let refr = parse(&pkt[..n]);
        tx.on_acked(resent[0].0, resent[0].1);
        assert!(tx.is_fully_acked());
        // Deliver out of order: third, retransmitted second, first.
        for (o, d) in frames[2].iter().chain(refr.iter()).chain(frames[0].iter()) {
            rx.on_crypto(*o, d).unwrap();
        }
        let mut got = Vec::new();
        while let Some(c) = rx.read_chunk() {
            got.extend_from_slice(c);
        }
        assert_eq!(got, msg);
    }

    #[test]
    fn buffer_limit() {
        let mut rx = CryptoStream::with_buffer_limit(100);
        rx.on_crypto(50, &[0; 50]).unwrap();
        let e = rx.on_crypto(90, &[0; 11]).unwrap_err();
        assert_eq!(e.code, Code::CRYPTO_BUFFER_EXCEEDED);
        rx.on_crypto(0, &[0; 50]).unwrap();
        assert_eq!(rx.read_chunk().map(<[u8]>::len), Some(100));
        rx.on_crypto(100, &[0; 100]).unwrap();
    }

    #[test]
    fn tiny_buffer_writes_nothing() {
        let mut tx = CryptoStream::new();
        tx.write(b"abc");
        let mut pkt = [0u8; 3];
        assert_eq!(
            tx.write_frame(&mut pkt, &mut |_, _| panic!("no frame fits")),
            0
        );
        let mut pkt = [0u8; 4];
        assert_eq!(tx.write_frame(&mut pkt, &mut |_, _| {}), 4);
    }
}
