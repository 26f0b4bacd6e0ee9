//! Stream identifiers (RFC 9000 §2.1): the two low bits say who opened the stream and
//! whether it is bidirectional; the rest is a per-type sequence number.

use std::fmt;

use crate::Side;

/// A QUIC stream id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

impl StreamId {
    /// The largest stream id encodable as a varint.
    pub const MAX: u64 = (1 << 62) - 1;

    pub fn new(initiator: Side, bidi: bool, index: u64) -> Self {
        let initiator_bit = u64::from(initiator == Side::Server);
        let uni_bit = u64::from(!bidi) << 1;
        StreamId(index << 2 | uni_bit | initiator_bit)
    }

    pub fn initiator(self) -> Side {
        if self.0 & 1 == 0 {
            Side::Client
        } else {
            Side::Server
        }
    }

    pub fn is_bidi(self) -> bool {
        self.0 & 2 == 0
    }

    /// Position among the streams of the same initiator and directionality.
    pub fn index(self) -> u64 {
        self.0 >> 2
    }

    /// Whether the endpoint on `side` can send on this stream.
    pub fn can_send(self, side: Side) -> bool {
        self.is_bidi() || self.initiator() == side
    }

    /// Whether the endpoint on `side` can receive on this stream.
    pub fn can_recv(self, side: Side) -> bool {
        self.is_bidi() || self.initiator() != side
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = match self.initiator() {
            Side::Client => "client",
            Side::Server => "server",
        };
        let dir = if self.is_bidi() { "bidi" } else { "uni" };
        write!(f, "{} {} stream {}", who, dir, self.index())
    }
}

impl From<StreamId> for u64 {
    fn from(id: StreamId) -> u64 {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_follow_rfc_table() {
        // RFC 9000 §2.1 Table 1.
        assert_eq!(StreamId::new(Side::Client, true, 0).0, 0);
        assert_eq!(StreamId::new(Side::Server, true, 0).0, 1);
        assert_eq!(StreamId::new(Side::Client, false, 0).0, 2);
        assert_eq!(StreamId::new(Side::Server, false, 0).0, 3);
        let id = StreamId::new(Side::Server, false, 7);
        assert_eq!(id.0, 31);
        assert_eq!(id.initiator(), Side::Server);
        assert!(!id.is_bidi());
        assert_eq!(id.index(), 7);
        assert!(id.can_send(Side::Server) && !id.can_send(Side::Client));
        assert!(id.can_recv(Side::Client) && !id.can_recv(Side::Server));
        assert_eq!(id.to_string(), "server uni stream 7");
    }
}
