//! What each sent packet carried, so an ACK or a loss can be applied to the right state.
//!
//! Records live in `Vec`s recycled through a pool: after warm-up no packet allocates.

use crate::conn::streams::StreamFrameRecord;
use crate::Epoch;

/// One retransmittable (or ack-relevant) thing a packet carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameRecord {
    Stream(StreamFrameRecord),
    Crypto {
        offset: u64,
        len: u16,
    },
    /// An ACK frame whose largest acknowledged was this; once acked we can forget older ranges.
    Ack {
        largest: u64,
    },
    HandshakeDone,
    NewToken,
    NewConnectionId {
        seq: u64,
    },
    RetireConnectionId {
        seq: u64,
    },
    PathChallenge {
        data: [u8; 8],
    },
    Ping,
    /// A DATAGRAM frame (RFC 9221): acknowledged or lost, nothing follows (§5.2).
    Datagram,
    /// A DPLPMTUD probe (PING + PADDING) sent in this search generation.
    PmtuProbe {
        generation: u32,
    },
}

/// The per-packet payload `Recovery` hands back on ack or loss.
#[derive(Debug)]
pub struct SentFrames {
    pub records: Vec<FrameRecord>,
    /// The space the packet was sent in (loss callbacks do not say).
    pub epoch: Epoch,
    /// 1-RTT key generation the packet was sealed with (key update confirmation, RFC 9001 §6.2).
    pub key_generation: u64,
    /// UDP payload bytes of the packet's datagram share (path MTU discovery looks at it).
    pub size: u16,
}

impl Default for SentFrames {
    fn default() -> Self {
        Self {
            records: Vec::new(),
            epoch: Epoch::Initial,
            key_generation: 0,
            size: 0,
        }
    }
}

/// Recycles `SentFrames` vectors so the send path does not allocate.
#[derive(Debug, Default)]
pub struct SentFramesPool {
    free: Vec<Vec<FrameRecord>>,
}

impl SentFramesPool {
    pub fn take(&mut self, epoch: Epoch) -> SentFrames {
        SentFrames {
            records: self.free.pop().unwrap_or_else(|| Vec::with_capacity(8)),
            epoch,
            key_generation: 0,
            size: 0,
        }
    }

    pub fn give(&mut self, mut frames: SentFrames) {
        frames.records.clear();
        // Keep the pool bounded: a burst of huge packets should not pin memory forever.
        if self.free.len() < 4096 && frames.records.capacity() <= 256 {
            self.free.push(frames.records);
        }
    }
}
