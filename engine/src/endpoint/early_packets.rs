//! 0-RTT datagrams that arrive before their connection's first Initial.
//!
//! A client's first flight is an Initial and, with a ticket allowing it, 0-RTT packets in
//! datagrams of their own. Networks reorder (ECMP, a NIC's several queues), and a 0-RTT
//! datagram that overtakes the Initial finds no connection. Dropping it costs the client
//! a retransmission, a PTO later: most of what 0-RTT saves. RFC 9001 §4.6.1 lets a server
//! buffer such packets instead; this keeps a few, to hand to the connection the Initial
//! creates (matched by the client's original DCID, which both carry).
//!
//! Bounded, as anyone can send 0-RTT-looking datagrams: a fixed number of slots, each
//! taking at most `MAX_DATAGRAM` bytes, reused oldest first. A flood only evicts other
//! datagrams, which their clients then send again as if we had dropped them.

use std::time::{Duration, Instant};

use crate::io::RxMeta;
use crate::wire::cid::ConnectionId;

/// Datagrams kept at once, per endpoint (per worker).
pub const SLOTS: usize = 32;

/// The largest datagram kept. A first flight is sent before any path MTU is known, at the
/// client's initial datagram size (1200 to about 1500 bytes in every stack we know).
pub const MAX_DATAGRAM: usize = 1500;

/// Kept no longer than this: an Initial that comes later was lost and sent again, and the
/// client will have sent its 0-RTT packets again too.
pub const MAX_AGE: Duration = Duration::from_secs(1);

struct Slot {
    dcid: ConnectionId,
    meta: RxMeta,
    arrived: Instant,
    len: usize,
    /// Allocated when the slot is first used, then reused.
    buf: Box<[u8]>,
}

#[derive(Default)]
pub struct EarlyPackets {
    slots: Vec<Option<Slot>>,
    /// The slot the next datagram goes to (the oldest, once all are used).
    next: usize,
}

impl EarlyPackets {
    /// Keeps a copy of `datagram`, a 0-RTT datagram for client DCID `dcid`. False if it is
    /// too large to keep.
    pub fn keep(
        &mut self,
        dcid: ConnectionId,
        meta: RxMeta,
        now: Instant,
        datagram: &[u8],
    ) -> bool {
        if datagram.len() > MAX_DATAGRAM {
            return false;
        }
        if self.slots.is_empty() {
            self.slots.resize_with(SLOTS, || None);
        }
        let at = self.next;
        self.next = (self.next + 1) % SLOTS;
        let slot = self.slots[at].get_or_insert_with(|| Slot {
            dcid,
            meta,
            arrived: now,
            len: 0,
            buf: vec![0; MAX_DATAGRAM].into_boxed_slice(),
        });
        slot.dcid = dcid;
        slot.meta = meta;
        slot.arrived = now;
        slot.len = datagram.len();
        slot.buf[..datagram.len()].copy_from_slice(datagram);
        true
    }

    /// Hands each datagram kept for `dcid`, oldest first, to `deliver` (which may decrypt it
    /// in place), and forgets it. Returns how many. Datagrams older than `MAX_AGE` are
    /// forgotten unseen.
    pub fn take(
        &mut self,
        dcid: &ConnectionId,
        now: Instant,
        mut deliver: impl FnMut(RxMeta, &mut [u8]),
    ) -> usize {
        let mut delivered = 0;
        for i in 0..self.slots.len() {
            // From the oldest: the slot `next` points at, onwards.
            let at = (self.next + i) % self.slots.len();
            let Some(slot) = self.slots[at].as_mut() else {
                continue;
            };
            if slot.len == 0 || slot.dcid != *dcid {
                continue;
            }
            let len = std::mem::take(&mut slot.len);
            if now.saturating_duration_since(slot.arrived) <= MAX_AGE {
                deliver(slot.meta, &mut slot.buf[..len]);
                delivered += 1;
            }
        }
        delivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(port: u16) -> RxMeta {
        RxMeta {
            src: ([10, 0, 0, 1], port).into(),
            dst: ([10, 0, 0, 2], 4433).into(),
            ecn: 0,
        }
    }

    fn cid(b: u8) -> ConnectionId {
        ConnectionId::new(&[b; 8]).unwrap()
    }

    fn taken(early: &mut EarlyPackets, dcid: u8, now: Instant) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        early.take(&cid(dcid), now, |m, b| out.push((m.src.port(), b.to_vec())));
        out
    }

    #[test]
    fn hands_back_only_the_datagrams_of_that_connection_in_arrival_order_once() {
        let now = Instant::now();
        let mut early = EarlyPackets::default();
        assert!(early.keep(cid(1), meta(1), now, b"first"));
        assert!(early.keep(cid(2), meta(2), now, b"other"));
        assert!(early.keep(cid(1), meta(3), now, b"second"));
        assert_eq!(
            taken(&mut early, 1, now),
            vec![(1, b"first".to_vec()), (3, b"second".to_vec())]
        );
        assert!(
            taken(&mut early, 1, now).is_empty(),
            "each is handed over once"
        );
        assert_eq!(taken(&mut early, 2, now), vec![(2, b"other".to_vec())]);
    }

    #[test]
    fn a_flood_evicts_the_oldest_and_memory_stays_bounded() {
        let now = Instant::now();
        let mut early = EarlyPackets::default();
        assert!(early.keep(cid(1), meta(1), now, b"victim"));
        for i in 0..SLOTS * 10 {
            assert!(early.keep(cid(9), meta(2), now, &[i as u8; 100]));
        }
        assert_eq!(early.slots.len(), SLOTS);
        assert!(taken(&mut early, 1, now).is_empty(), "evicted");
        let flood = taken(&mut early, 9, now);
        assert_eq!(flood.len(), SLOTS, "only the newest are left");
        assert_eq!(flood[0].1[0], (SLOTS * 9) as u8, "oldest first");
    }

    #[test]
    fn oversized_and_stale_datagrams_are_not_handed_over() {
        let now = Instant::now();
        let mut early = EarlyPackets::default();
        assert!(!early.keep(cid(1), meta(1), now, &[0; MAX_DATAGRAM + 1]));
        assert!(early.keep(cid(1), meta(1), now, &[0; MAX_DATAGRAM]));
        assert!(taken(&mut early, 1, now + MAX_AGE + Duration::from_millis(1)).is_empty());
        assert!(taken(&mut early, 1, now).is_empty(), "forgotten, not kept");
    }
}
