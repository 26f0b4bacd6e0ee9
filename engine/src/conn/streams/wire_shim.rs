//! Stand-in for the parts of `crate::wire` this module uses, with the same names and
//! signatures. The integrator replaces `use super::wire_shim as wire` with `crate::wire`.
#![allow(dead_code)]

pub mod error {
    #[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
    pub enum WireError {
        #[error("unexpected end of input")]
        UnexpectedEnd,
        #[error("buffer too small")]
        BufferTooSmall,
        #[error("invalid value")]
        InvalidValue,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct TransportErrorCode(pub u64);

    impl TransportErrorCode {
        pub const FLOW_CONTROL_ERROR: Self = Self(0x03);
        pub const STREAM_LIMIT_ERROR: Self = Self(0x04);
        pub const STREAM_STATE_ERROR: Self = Self(0x05);
        pub const FINAL_SIZE_ERROR: Self = Self(0x06);
        pub const FRAME_ENCODING_ERROR: Self = Self(0x07);
        pub const PROTOCOL_VIOLATION: Self = Self(0x0a);
        pub const CRYPTO_BUFFER_EXCEEDED: Self = Self(0x0d);
    }

    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    #[error("{code:?} in frame {frame_type:#x}: {reason}")]
    pub struct TransportError {
        pub code: TransportErrorCode,
        pub frame_type: u64,
        pub reason: &'static str,
    }

    impl TransportError {
        pub fn new(code: TransportErrorCode, reason: &'static str) -> Self {
            Self {
                code,
                frame_type: 0,
                reason,
            }
        }
    }
}

pub mod varint {
    use super::error::WireError;

    pub fn varint_len(v: u64) -> usize {
        match v {
            0..=63 => 1,
            64..=16383 => 2,
            16384..=1_073_741_823 => 4,
            _ => 8,
        }
    }

    pub struct Writer<'a> {
        buf: &'a mut [u8],
        pos: usize,
    }

    impl<'a> Writer<'a> {
        pub fn new(buf: &'a mut [u8]) -> Self {
            Self { buf, pos: 0 }
        }
        pub fn len(&self) -> usize {
            self.pos
        }
        pub fn remaining(&self) -> usize {
            self.buf.len() - self.pos
        }
        pub fn put_u8(&mut self, v: u8) -> Result<(), WireError> {
            self.put_bytes(&[v])
        }
        pub fn put_varint(&mut self, v: u64) -> Result<(), WireError> {
            let len = varint_len(v);
            let tag: u64 = match len {
                1 => 0,
                2 => 1,
                4 => 2,
                _ => 3,
            };
            let bytes = (v | tag << (len * 8 - 2)).to_be_bytes();
            self.put_bytes(&bytes[8 - len..])
        }
        pub fn put_bytes(&mut self, b: &[u8]) -> Result<(), WireError> {
            let dst = self
                .buf
                .get_mut(self.pos..self.pos + b.len())
                .ok_or(WireError::BufferTooSmall)?;
            dst.copy_from_slice(b);
            self.pos += b.len();
            Ok(())
        }
    }
}

pub mod frame {
    use super::error::WireError;
    use super::varint::{varint_len, Writer};

    pub fn stream_header_len(id: u64, offset: u64, len: Option<usize>) -> usize {
        1 + varint_len(id)
            + if offset > 0 { varint_len(offset) } else { 0 }
            + len.map_or(0, |l| varint_len(l as u64))
    }

    pub fn write_stream_header(
        w: &mut Writer,
        id: u64,
        offset: u64,
        len: Option<usize>,
        fin: bool,
    ) -> Result<(), WireError> {
        let ty = 0x08 | u8::from(offset > 0) << 2 | u8::from(len.is_some()) << 1 | u8::from(fin);
        w.put_u8(ty)?;
        w.put_varint(id)?;
        if offset > 0 {
            w.put_varint(offset)?;
        }
        if let Some(l) = len {
            w.put_varint(l as u64)?;
        }
        Ok(())
    }

    pub fn crypto_header_len(offset: u64, len: usize) -> usize {
        1 + varint_len(offset) + varint_len(len as u64)
    }

    pub fn write_crypto_header(w: &mut Writer, offset: u64, len: usize) -> Result<(), WireError> {
        w.put_u8(0x06)?;
        w.put_varint(offset)?;
        w.put_varint(len as u64)
    }

    pub enum Frame {
        ResetStream {
            id: u64,
            error_code: u64,
            final_size: u64,
        },
        StopSending {
            id: u64,
            error_code: u64,
        },
        MaxData(u64),
        MaxStreamData {
            id: u64,
            max: u64,
        },
        MaxStreams {
            bidi: bool,
            max: u64,
        },
        DataBlocked(u64),
        StreamDataBlocked {
            id: u64,
            limit: u64,
        },
        StreamsBlocked {
            bidi: bool,
            limit: u64,
        },
    }

    impl Frame {
        pub fn encode(&self, w: &mut Writer) -> Result<(), WireError> {
            let (ty, fields): (u8, [Option<u64>; 3]) = match *self {
                Frame::ResetStream {
                    id,
                    error_code,
                    final_size,
                } => (0x04, [Some(id), Some(error_code), Some(final_size)]),
                Frame::StopSending { id, error_code } => (0x05, [Some(id), Some(error_code), None]),
                Frame::MaxData(m) => (0x10, [Some(m), None, None]),
                Frame::MaxStreamData { id, max } => (0x11, [Some(id), Some(max), None]),
                Frame::MaxStreams { bidi, max } => {
                    (if bidi { 0x12 } else { 0x13 }, [Some(max), None, None])
                }
                Frame::DataBlocked(l) => (0x14, [Some(l), None, None]),
                Frame::StreamDataBlocked { id, limit } => (0x15, [Some(id), Some(limit), None]),
                Frame::StreamsBlocked { bidi, limit } => {
                    (if bidi { 0x16 } else { 0x17 }, [Some(limit), None, None])
                }
            };
            w.put_u8(ty)?;
            for v in fields.into_iter().flatten() {
                w.put_varint(v)?;
            }
            Ok(())
        }
    }
}
