//! Test-only hooks: let a test make a real connection misbehave on the wire and look at
//! what it holds. Hidden from the docs; nothing in the engine calls the public half.
//!
//! `queue_raw_frames` appends bytes that the next ack-eliciting packet of that epoch
//! carries verbatim, unchecked, after the engine's own control frames. Such a packet is
//! recorded like a PING: it is acknowledged but never retransmitted.

use crate::conn::connection::Connection;
use crate::conn::sent::{FrameRecord, SentFrames};
use crate::conn::streams::StreamStats;
use crate::Epoch;

impl Connection {
    /// Queues `frames` (already encoded, possibly malformed) for the next packet of `epoch`.
    /// They go out once the epoch has keys, in one packet if they fit, else not at all.
    #[doc(hidden)]
    pub fn queue_raw_frames(&mut self, epoch: Epoch, frames: &[u8]) {
        self.raw_frames[epoch.index()].extend_from_slice(frames);
    }

    /// Starts a 1-RTT key update even if the peer has not acknowledged the last one (RFC
    /// 9001 §6.1 forbids it). False before 1-RTT keys.
    #[doc(hidden)]
    pub fn force_key_update_unconfirmed(&mut self) -> bool {
        let Some(keys) = self.one_rtt.as_mut() else {
            return false;
        };
        keys.initiate_update_unconfirmed();
        self.ping_pending = true;
        true
    }

    /// From now on sends no ACK frames at all (a peer that never acknowledges).
    #[doc(hidden)]
    pub fn stop_acknowledging(&mut self) {
        self.no_acks = true;
    }

    /// Undoes `stop_acknowledging`.
    #[doc(hidden)]
    pub fn resume_acknowledging(&mut self) {
        self.no_acks = false;
    }

    /// 1-RTT packet numbers still on record (see `Recovery::tracked_span`).
    #[doc(hidden)]
    pub fn tracked_packets(&self) -> u64 {
        self.recovery.tracked_span(Epoch::Data)
    }

    /// Packet numbers of `epoch` still on record (see `Recovery::tracked_span`).
    #[doc(hidden)]
    pub fn tracked_packets_in(&self, epoch: Epoch) -> u64 {
        self.recovery.tracked_span(epoch)
    }

    /// Restarts congestion control with an initial window of `bytes`, so that a test can
    /// put far more in flight than slow start would allow in a short run.
    #[doc(hidden)]
    pub fn set_congestion_window(&mut self, bytes: u64) {
        self.recovery.restart_congestion_control(bytes);
    }

    /// Bytes of ack-eliciting packets in flight (RFC 9002 §B.2).
    #[doc(hidden)]
    pub fn bytes_in_flight(&self) -> u64 {
        self.recovery.bytes_in_flight()
    }

    /// Bytes the congestion window lets out now.
    #[doc(hidden)]
    pub fn send_window(&self) -> u64 {
        self.recovery.send_window()
    }

    /// Sends to a spare CID of the peer from now on, as an endpoint probing or moving to
    /// a new path must (RFC 9000 §9.5); the old one is kept, not retired. False if the peer
    /// gave us none to spare.
    #[doc(hidden)]
    pub fn switch_to_spare_remote_cid(&mut self) -> bool {
        self.cids
            .claim_spare_remote()
            .is_some_and(|cid| self.cids.set_active_remote(cid))
    }

    /// Whether the sender counts as application-limited (RFC 9002 §7.8).
    #[doc(hidden)]
    pub fn is_app_limited(&self) -> bool {
        self.recovery.is_app_limited()
    }

    /// The peer's CID this connection sends to.
    #[doc(hidden)]
    pub fn active_remote_cid(&self) -> crate::wire::cid::ConnectionId {
        self.cids.active_remote()
    }

    /// Raw bytes still waiting for a packet of `epoch`.
    #[doc(hidden)]
    pub fn raw_frames_pending(&self, epoch: Epoch) -> usize {
        self.raw_frames[epoch.index()].len()
    }

    /// Stream counters and buffered bytes (send and receive), for bounds checks.
    #[doc(hidden)]
    pub fn stream_stats(&self) -> StreamStats {
        self.streams.stats()
    }

    pub(crate) fn has_raw_frames(&self, epoch: Epoch) -> bool {
        !self.raw_frames[epoch.index()].is_empty()
    }

    /// Copies the queued raw frames of `epoch` into `buf[pos..]` if they all fit; returns
    /// the new position.
    pub(crate) fn write_raw_frames(
        &mut self,
        epoch: Epoch,
        buf: &mut [u8],
        pos: usize,
        frames: &mut SentFrames,
    ) -> usize {
        let raw = &mut self.raw_frames[epoch.index()];
        if raw.is_empty() {
            return pos;
        }
        if buf.len().saturating_sub(pos) < raw.len() {
            self.unsent_despite_room = true;
            return pos;
        }
        let end = pos + raw.len();
        buf[pos..end].copy_from_slice(raw);
        raw.clear();
        frames.records.push(FrameRecord::Ping);
        end
    }
}
