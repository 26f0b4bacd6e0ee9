//! Wire-level parse/emit errors and QUIC transport error codes (RFC 9000 §20.1).

use std::fmt;

/// Why bytes could not be parsed or emitted. Header-level errors mean "drop the packet";
/// frame and transport-parameter errors are reported as [`TransportError`] instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("unexpected end of input")]
    UnexpectedEnd,
    #[error("buffer too small")]
    BufferTooSmall,
    #[error("invalid value")]
    InvalidValue,
    /// The QUIC bit (0x40) of a first byte was clear (RFC 9000 §17.2, §17.3.1).
    #[error("fixed bit is clear")]
    FixedBitClear,
    /// A connection ID longer than 20 bytes in a version we support (RFC 9000 §17.2).
    #[error("connection id too long")]
    ConnectionIdTooLong,
}

/// A QUIC transport error code (RFC 9000 §20.1).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TransportErrorCode(pub u64);

impl TransportErrorCode {
    pub const NO_ERROR: Self = Self(0x00);
    pub const INTERNAL_ERROR: Self = Self(0x01);
    pub const CONNECTION_REFUSED: Self = Self(0x02);
    pub const FLOW_CONTROL_ERROR: Self = Self(0x03);
    pub const STREAM_LIMIT_ERROR: Self = Self(0x04);
    pub const STREAM_STATE_ERROR: Self = Self(0x05);
    pub const FINAL_SIZE_ERROR: Self = Self(0x06);
    pub const FRAME_ENCODING_ERROR: Self = Self(0x07);
    pub const TRANSPORT_PARAMETER_ERROR: Self = Self(0x08);
    pub const CONNECTION_ID_LIMIT_ERROR: Self = Self(0x09);
    pub const PROTOCOL_VIOLATION: Self = Self(0x0a);
    pub const INVALID_TOKEN: Self = Self(0x0b);
    pub const APPLICATION_ERROR: Self = Self(0x0c);
    pub const CRYPTO_BUFFER_EXCEEDED: Self = Self(0x0d);
    pub const KEY_UPDATE_ERROR: Self = Self(0x0e);
    pub const AEAD_LIMIT_REACHED: Self = Self(0x0f);
    pub const NO_VIABLE_PATH: Self = Self(0x10);
    /// RFC 9368 §10.2.
    pub const VERSION_NEGOTIATION_ERROR: Self = Self(0x11);

    /// A TLS alert carried as a transport error: 0x0100 + alert (RFC 9000 §20.1, RFC 9001 §4.8).
    pub fn crypto(alert: u8) -> Self {
        Self(0x100 + u64::from(alert))
    }

    /// The TLS alert if this is a CRYPTO_ERROR code.
    pub fn as_crypto_alert(self) -> Option<u8> {
        if (0x100..=0x1ff).contains(&self.0) {
            Some((self.0 - 0x100) as u8)
        } else {
            None
        }
    }

    fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x00 => "NO_ERROR",
            0x01 => "INTERNAL_ERROR",
            0x02 => "CONNECTION_REFUSED",
            0x03 => "FLOW_CONTROL_ERROR",
            0x04 => "STREAM_LIMIT_ERROR",
            0x05 => "STREAM_STATE_ERROR",
            0x06 => "FINAL_SIZE_ERROR",
            0x07 => "FRAME_ENCODING_ERROR",
            0x08 => "TRANSPORT_PARAMETER_ERROR",
            0x09 => "CONNECTION_ID_LIMIT_ERROR",
            0x0a => "PROTOCOL_VIOLATION",
            0x0b => "INVALID_TOKEN",
            0x0c => "APPLICATION_ERROR",
            0x0d => "CRYPTO_BUFFER_EXCEEDED",
            0x0e => "KEY_UPDATE_ERROR",
            0x0f => "AEAD_LIMIT_REACHED",
            0x10 => "NO_VIABLE_PATH",
            0x11 => "VERSION_NEGOTIATION_ERROR",
            _ => return None,
        })
    }
}

impl fmt::Debug for TransportErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(name) = self.name() {
            f.write_str(name)
        } else if let Some(alert) = self.as_crypto_alert() {
            write!(f, "CRYPTO_ERROR({alert:#04x})")
        } else {
            write!(f, "TransportErrorCode({:#x})", self.0)
        }
    }
}

impl fmt::Display for TransportErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A connection error to report in CONNECTION_CLOSE: code, offending frame type, reason.
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

    pub fn with_frame(self, ty: u64) -> Self {
        Self {
            frame_type: ty,
            ..self
        }
    }

    pub(crate) fn frame_encoding(reason: &'static str) -> Self {
        Self::new(TransportErrorCode::FRAME_ENCODING_ERROR, reason)
    }

    pub(crate) fn transport_parameter(reason: &'static str) -> Self {
        Self::new(TransportErrorCode::TRANSPORT_PARAMETER_ERROR, reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_names() {
        assert_eq!(
            format!("{:?}", TransportErrorCode::PROTOCOL_VIOLATION),
            "PROTOCOL_VIOLATION"
        );
        assert_eq!(
            format!("{:?}", TransportErrorCode::crypto(0x2a)),
            "CRYPTO_ERROR(0x2a)"
        );
        assert_eq!(
            format!("{:?}", TransportErrorCode(0x1234)),
            "TransportErrorCode(0x1234)"
        );
        assert_eq!(TransportErrorCode::crypto(0x2a).0, 0x12a);
        assert_eq!(
            TransportErrorCode::crypto(0x2a).as_crypto_alert(),
            Some(0x2a)
        );
        assert_eq!(TransportErrorCode::NO_ERROR.as_crypto_alert(), None);
    }

    #[test]
    fn transport_error_display() {
        let e = TransportError::new(TransportErrorCode::FRAME_ENCODING_ERROR, "bad ack")
            .with_frame(0x02);
        assert_eq!(e.frame_type, 0x02);
        assert_eq!(e.to_string(), "FRAME_ENCODING_ERROR in frame 0x2: bad ack");
    }
}
