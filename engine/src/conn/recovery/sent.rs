//! Packets sent and not yet acknowledged, lost or discarded, for one packet number space.
//!
//! Packet numbers are sent in increasing order, so packets live in a `VecDeque` indexed by
//! `pn - base`; finished slots at the front are popped and their memory reused, so steady
//! state allocates nothing. Slots remember how a packet left (acked, lost) or that its
//! number was skipped, which loss detection and ACK validation need.

use std::collections::VecDeque;
use std::time::Instant;

/// One sent packet, as recovery needs it; `data` is whatever the connection wants back
/// when the packet is acknowledged or lost (typically the frames it carried).
#[derive(Clone, Debug)]
pub struct SentPacket<T> {
    pub pn: u64,
    pub time_sent: Instant,
    /// Bytes on the wire (UDP payload).
    pub size: u16,
    pub ack_eliciting: bool,
    /// Counts toward bytes in flight (ack-eliciting or padding; RFC 9002 §2).
    pub in_flight: bool,
    /// A PMTU probe: its loss says nothing about congestion (RFC 9000 §14.4).
    pub mtu_probe: bool,
    /// Left marked ECT(0) (RFC 9000 §13.4).
    pub ecn: bool,
    pub data: T,
}

impl<T> SentPacket<T> {
    /// Packets that keep the PTO armed: ack-eliciting packets are always in flight.
    pub(crate) fn arms_pto(&self) -> bool {
        self.ack_eliciting && self.in_flight
    }
}

#[derive(Debug)]
pub(crate) enum Slot<T> {
    Sent(SentPacket<T>),
    /// Never sent (the connection skipped the number); acknowledging it is an error.
    Skipped,
    Acked,
    Lost,
}

/// Per-space sending state (RFC 9002 Appendix A.2 variables, per space).
#[derive(Debug)]
pub(crate) struct SentSpace<T> {
    base: u64,
    slots: VecDeque<Slot<T>>,
    /// Next packet number the connection may send.
    pub next_pn: u64,
    pub largest_acked: Option<u64>,
    pub loss_time: Option<Instant>,
    pub time_of_last_ack_eliciting: Option<Instant>,
    /// Ack-eliciting in-flight packets outstanding.
    pub ack_eliciting_in_flight: usize,
}

impl<T> SentSpace<T> {
    pub fn new() -> Self {
        Self {
            base: 0,
            slots: VecDeque::new(),
            next_pn: 0,
            largest_acked: None,
            loss_time: None,
            time_of_last_ack_eliciting: None,
            ack_eliciting_in_flight: 0,
        }
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    /// One past the highest packet number held.
    pub fn end(&self) -> u64 {
        self.base + self.slots.len() as u64
    }

    /// Stores a packet; numbers between the last one and this one count as skipped.
    /// Returns the packet back if its number was already used.
    pub fn insert(&mut self, packet: SentPacket<T>) -> Result<(), SentPacket<T>> {
        let pn = packet.pn;
        if pn < self.next_pn {
            return Err(packet);
        }
        if self.slots.is_empty() {
            // Nothing outstanding: start the window at this packet.
            self.base = pn;
        } else {
            for _ in self.end()..pn {
                self.slots.push_back(Slot::Skipped);
            }
        }
        if packet.arms_pto() {
            self.ack_eliciting_in_flight += 1;
            self.time_of_last_ack_eliciting = Some(packet.time_sent);
        }
        self.slots.push_back(Slot::Sent(packet));
        self.next_pn = pn + 1;
        Ok(())
    }

    pub fn slot(&self, pn: u64) -> Option<&Slot<T>> {
        pn.checked_sub(self.base)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.slots.get(i))
    }

    /// Takes the packet out of its slot, leaving `mark` (Acked or Lost) behind.
    pub fn take(&mut self, pn: u64, mark: Slot<T>) -> Option<SentPacket<T>> {
        let i = usize::try_from(pn.checked_sub(self.base)?).ok()?;
        let slot = self.slots.get_mut(i)?;
        if !matches!(slot, Slot::Sent(_)) {
            return None;
        }
        match std::mem::replace(slot, mark) {
            Slot::Sent(p) => {
                if p.arms_pto() {
                    self.ack_eliciting_in_flight -= 1;
                }
                Some(p)
            }
            _ => None,
        }
    }

    /// Drops finished slots from the front so the deque only spans outstanding packets.
    pub fn trim_front(&mut self) {
        while matches!(self.slots.front(), Some(s) if !matches!(s, Slot::Sent(_))) {
            self.slots.pop_front();
            self.base += 1;
        }
    }

    /// Outstanding packets, oldest first.
    pub fn outstanding(&self) -> impl Iterator<Item = &SentPacket<T>> + '_ {
        self.slots.iter().filter_map(|s| match s {
            Slot::Sent(p) => Some(p),
            _ => None,
        })
    }

    /// Removes every outstanding packet (space discarded), oldest first.
    pub fn drain(&mut self, f: &mut dyn FnMut(SentPacket<T>)) {
        for slot in self.slots.drain(..) {
            if let Slot::Sent(p) = slot {
                f(p);
            }
        }
        self.base = self.next_pn;
        self.ack_eliciting_in_flight = 0;
        self.time_of_last_ack_eliciting = None;
        self.loss_time = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(pn: u64, t: Instant) -> SentPacket<()> {
        SentPacket {
            pn,
            time_sent: t,
            size: 100,
            ack_eliciting: true,
            in_flight: true,
            mtu_probe: false,
            ecn: false,
            data: (),
        }
    }

    #[test]
    fn skipped_numbers_and_trimming() {
        let t = Instant::now();
        let mut s = SentSpace::new();
        s.insert(pkt(0, t)).unwrap();
        s.insert(pkt(2, t)).unwrap();
        assert!(matches!(s.slot(1), Some(Slot::Skipped)));
        assert!(s.insert(pkt(2, t)).is_err());
        assert_eq!(s.ack_eliciting_in_flight, 2);
        assert!(s.take(0, Slot::Acked).is_some());
        assert!(s.take(0, Slot::Acked).is_none());
        s.trim_front();
        assert_eq!(s.base(), 2, "acked 0 and skipped 1 trimmed");
        assert_eq!(s.outstanding().count(), 1);
        let mut n = 0;
        s.drain(&mut |_| n += 1);
        assert_eq!((n, s.ack_eliciting_in_flight, s.end()), (1, 0, 3));
    }
}
