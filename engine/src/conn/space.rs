//! One packet-number space (RFC 9000 §12.3): its keys, CRYPTO stream, ACK state and numbering.

use crate::conn::recovery::AckTracker;
use crate::conn::streams::CryptoStream;
use crate::crypto::secrets::Keys;

pub struct PacketSpace {
    /// Initial and Handshake keys; the Data space uses `OneRttKeys` on the connection.
    pub keys: Option<Keys>,
    pub crypto: CryptoStream,
    pub ack: AckTracker,
    pub next_pn: u64,
    /// PTO fired: send this many ack-eliciting probe packets in this space (RFC 9002 §6.2.4).
    pub probes: u8,
    /// Keys were discarded (RFC 9001 §4.9): nothing is sent or accepted here any more.
    pub discarded: bool,
}

impl PacketSpace {
    pub fn new() -> Self {
        Self {
            keys: None,
            crypto: CryptoStream::new(),
            ack: AckTracker::new(),
            next_pn: 0,
            probes: 0,
            discarded: false,
        }
    }

    pub fn take_pn(&mut self) -> u64 {
        let pn = self.next_pn;
        self.next_pn += 1;
        pn
    }
}

impl Default for PacketSpace {
    fn default() -> Self {
        Self::new()
    }
}
