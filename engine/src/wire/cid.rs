//! Connection IDs (RFC 9000 §5.1): up to 20 bytes, stored inline so they are `Copy`.

use std::fmt;
use std::ops::Deref;

use super::error::WireError;

/// A connection ID of 0..=20 bytes. Unused bytes are always zero, so the derived
/// equality, ordering and hashing only see the ID itself.
#[derive(Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct ConnectionId {
    bytes: [u8; ConnectionId::MAX_LEN],
    len: u8,
}

/// Every packet is routed by a CID lookup: hash the 20 bytes as three words instead of
/// the derived byte-slice hashing (a length prefix and a byte-wise write). Consistent with
/// `Eq`: both cover all bytes (unused ones are zero) and the length.
impl std::hash::Hash for ConnectionId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let b = &self.bytes;
        let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let tail = u32::from_le_bytes(b[16..20].try_into().expect("4 bytes"));
        state.write_u64(word(0));
        state.write_u64(word(8));
        state.write_u64(u64::from(tail) | u64::from(self.len) << 32);
    }
}

impl ConnectionId {
    /// Longest connection ID in QUIC v1 and v2 (RFC 9000 §17.2).
    pub const MAX_LEN: usize = 20;

    pub fn new(b: &[u8]) -> Result<Self, WireError> {
        if b.len() > Self::MAX_LEN {
            return Err(WireError::ConnectionIdTooLong);
        }
        let mut bytes = [0u8; Self::MAX_LEN];
        // Built for every packet: fixed-size word moves, not a variable-length memcpy call.
        let mut i = 0;
        while i + 8 <= b.len() {
            bytes[i..i + 8].copy_from_slice(&b[i..i + 8]);
            i += 8;
        }
        if i + 4 <= b.len() {
            bytes[i..i + 4].copy_from_slice(&b[i..i + 4]);
            i += 4;
        }
        // At most 3 bytes left, unrolled so it can't become a memcpy call again.
        for k in 0..3 {
            if i + k < b.len() {
                bytes[i + k] = b[i + k];
            }
        }
        Ok(Self {
            bytes,
            len: b.len() as u8,
        })
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// All 20 stored bytes: the ID, then zeros.
    pub fn padded(&self) -> &[u8; Self::MAX_LEN] {
        &self.bytes
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len()]
    }
}

impl Deref for ConnectionId {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for ConnectionId {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl TryFrom<&[u8]> for ConnectionId {
    type Error = WireError;
    fn try_from(b: &[u8]) -> Result<Self, WireError> {
        Self::new(b)
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.as_slice() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn construct_and_print() {
        let cid = ConnectionId::new(&[0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08]).unwrap();
        assert_eq!(cid.len(), 8);
        assert!(!cid.is_empty());
        assert_eq!(&cid[..2], &[0x83, 0x94]);
        assert_eq!(cid.to_string(), "8394c8f03e515708");
        assert_eq!(format!("{cid:?}"), "8394c8f03e515708");
        assert!(ConnectionId::default().is_empty());
        assert_eq!(ConnectionId::new(&[]).unwrap(), ConnectionId::default());
    }

    #[test]
    fn length_limit() {
        assert!(ConnectionId::new(&[7; 20]).is_ok());
        assert_eq!(
            ConnectionId::new(&[7; 21]),
            Err(WireError::ConnectionIdTooLong)
        );
    }

    #[test]
    fn equality_ignores_nothing_but_the_id() {
        let a = ConnectionId::new(&[1, 2]).unwrap();
        let b = ConnectionId::try_from(&[1, 2, 0][..2]).unwrap();
        let c = ConnectionId::new(&[1, 2, 0]).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
