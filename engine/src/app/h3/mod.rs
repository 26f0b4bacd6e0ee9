//! HTTP/3 (RFC 9114) over quench's streams: the `h3` ALPN. The server serves the same
//! files as `hq-interop` (`--root`; a path `/N` naming no file returns N bytes) to GET and
//! HEAD; the client fetches paths and hashes the bodies.
//!
//! QPACK runs without a dynamic table (we advertise a capacity of 0 and open no encoder or
//! decoder stream, RFC 9204 §4.2), so no request ever waits on another stream.

pub mod client;
mod fields;
pub mod frame;
pub mod qpack;
pub mod server;
mod session;

pub const ALPN_H3: &[u8] = b"h3";

/// Largest field section we accept, as RFC 9114 §4.2.2 counts it (advertised in
/// SETTINGS_MAX_FIELD_SECTION_SIZE).
pub const MAX_FIELD_SECTION_SIZE: u64 = 16 * 1024;

/// HTTP/3 error codes (§8.1) and the QPACK ones (RFC 9204 §6).
pub mod code {
    pub const NO_ERROR: u64 = 0x100;
    pub const GENERAL_PROTOCOL_ERROR: u64 = 0x101;
    pub const INTERNAL_ERROR: u64 = 0x102;
    pub const STREAM_CREATION_ERROR: u64 = 0x103;
    pub const CLOSED_CRITICAL_STREAM: u64 = 0x104;
    pub const FRAME_UNEXPECTED: u64 = 0x105;
    pub const FRAME_ERROR: u64 = 0x106;
    pub const EXCESSIVE_LOAD: u64 = 0x107;
    pub const ID_ERROR: u64 = 0x108;
    pub const SETTINGS_ERROR: u64 = 0x109;
    pub const MISSING_SETTINGS: u64 = 0x10a;
    pub const REQUEST_REJECTED: u64 = 0x10b;
    pub const REQUEST_CANCELLED: u64 = 0x10c;
    pub const REQUEST_INCOMPLETE: u64 = 0x10d;
    pub const MESSAGE_ERROR: u64 = 0x10e;
}

/// Unidirectional stream types (§6.2; RFC 9204 §4.2).
pub mod stream_type {
    pub const CONTROL: u64 = 0x00;
    pub const PUSH: u64 = 0x01;
    pub const QPACK_ENCODER: u64 = 0x02;
    pub const QPACK_DECODER: u64 = 0x03;
}

/// An HTTP/3 error: `code` closes the connection (a connection error, §8) or resets a
/// stream (a stream error), depending on where it is raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("HTTP/3 error {code:#x}: {reason}")]
pub struct H3Error {
    pub code: u64,
    pub reason: &'static str,
}

impl H3Error {
    pub const fn new(code: u64, reason: &'static str) -> Self {
        Self { code, reason }
    }
}

impl From<qpack::QpackError> for H3Error {
    fn from(e: qpack::QpackError) -> Self {
        let reason = match e {
            qpack::QpackError::DecompressionFailed(r)
            | qpack::QpackError::EncoderStream(r)
            | qpack::QpackError::DecoderStream(r) => r,
            qpack::QpackError::TooLarge(_) => "field section too large",
        };
        H3Error::new(e.code(), reason)
    }
}
