//! Where replies to a peer IP go on the link: its MAC address and the VLAN tag its frames
//! carried. AF_XDP bypasses the kernel's neighbour table, so the datapath keeps its own,
//! learnt from received frames.
//!
//! A frame's source addresses are whatever its sender wrote: on a shared segment anyone
//! can send a datagram with a victim's IP from their own MAC. So the table has two levels.
//! Entries the engine vouched for (the datagram authenticated as a packet of a connection
//! whose peer sits at that address, see `Datapath::recv_batch_vouched`), the kernel's
//! neighbour table and static configuration are *trusted*; only another vouched frame
//! changes them. Every other frame is only *seen*: it serves an IP no trusted entry
//! covers (a new client's first flight, stateless replies), and can never redirect a
//! peer the engine has authenticated.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::wire::net::MacAddr;

/// A peer's link: its MAC address and the VLAN TCI its frames arrived with.
pub type Link = (MacAddr, Option<u16>);

/// Peer IP → link, in two levels (module docs), each of at most `capacity` IPs. The
/// `seen` level is emptied when full (a flood of spoofed sources churns only it, cheaply);
/// the trusted level makes room one entry at a time, so filling it (one authenticated
/// handshake per address) never forgets every authenticated peer at once.
pub struct PeerTable {
    trusted: HashMap<IpAddr, Link>,
    seen: HashMap<IpAddr, Link>,
    capacity: usize,
}

impl PeerTable {
    pub fn new(capacity: usize) -> PeerTable {
        PeerTable {
            trusted: HashMap::with_capacity(capacity.min(1024)),
            seen: HashMap::with_capacity(capacity.min(1024)),
            capacity: capacity.max(1),
        }
    }

    /// A frame from `ip` arrived over `link`; `vouched` if the engine authenticated it.
    pub fn observe(&mut self, ip: IpAddr, link: Link, vouched: bool) {
        match self.trusted.get_mut(&ip) {
            Some(known) if *known == link => {}
            Some(known) if vouched => *known = link,
            // Unauthenticated frames never move a trusted peer.
            Some(_) => {}
            None if vouched => {
                self.seen.remove(&ip);
                self.insert_trusted(ip, link);
            }
            None => {
                if self.seen.get(&ip) != Some(&link) {
                    insert_bounded(&mut self.seen, self.capacity, ip, link);
                }
            }
        }
    }

    /// A link from a source as good as an authenticated frame: static configuration or
    /// the kernel's neighbour table.
    pub fn trust(&mut self, ip: IpAddr, link: Link) {
        self.seen.remove(&ip);
        if let Some(known) = self.trusted.get_mut(&ip) {
            *known = link;
        } else {
            self.insert_trusted(ip, link);
        }
    }

    fn insert_trusted(&mut self, ip: IpAddr, link: Link) {
        if self.trusted.len() >= self.capacity {
            // Any one will do: its peer, if still there, is trusted again by its next
            // authenticated packet, and is answered from `seen` until then.
            if let Some(&victim) = self.trusted.keys().next() {
                self.trusted.remove(&victim);
            }
        }
        self.trusted.insert(ip, link);
    }

    /// Where to send to `ip`: the trusted link, else the last seen one.
    pub fn get(&self, ip: IpAddr) -> Option<Link> {
        self.trusted
            .get(&ip)
            .or_else(|| self.seen.get(&ip))
            .copied()
    }

    /// Trusted entries (for tests and statistics).
    pub fn trusted_len(&self) -> usize {
        self.trusted.len()
    }
}

fn insert_bounded(map: &mut HashMap<IpAddr, Link>, capacity: usize, ip: IpAddr, link: Link) {
    if map.len() >= capacity {
        map.clear();
    }
    map.insert(ip, link);
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "10.0.0.2";
    const REAL: Link = ([2, 0, 0, 0, 0, 2], None);
    const SPOOF: Link = ([2, 0, 0, 0, 0, 66], None);

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_first_frame_is_answered_before_anything_authenticated() {
        let mut t = PeerTable::new(16);
        t.observe(ip(PEER), REAL, false);
        assert_eq!(t.get(ip(PEER)), Some(REAL));
        // A later unauthenticated frame may still move an untrusted entry.
        t.observe(ip(PEER), SPOOF, false);
        assert_eq!(t.get(ip(PEER)), Some(SPOOF));
        assert_eq!(t.trusted_len(), 0);
    }

    #[test]
    fn an_unauthenticated_frame_never_moves_an_authenticated_peer() {
        let mut t = PeerTable::new(16);
        t.observe(ip(PEER), REAL, true);
        t.observe(ip(PEER), SPOOF, false);
        assert_eq!(t.get(ip(PEER)), Some(REAL));
        // The peer itself may move (a new router, another VLAN), proven by its packets.
        let tagged = (REAL.0, Some(100));
        t.observe(ip(PEER), tagged, true);
        assert_eq!(t.get(ip(PEER)), Some(tagged));
    }

    #[test]
    fn a_flood_of_spoofed_sources_cannot_evict_trusted_peers() {
        let mut t = PeerTable::new(4);
        t.observe(ip(PEER), REAL, true);
        for i in 0..100u8 {
            t.observe(IpAddr::from([10, 1, 0, i]), SPOOF, false);
        }
        assert_eq!(t.get(ip(PEER)), Some(REAL));
        assert!(t.seen.len() <= 4);
        // The trusted level is bounded too, and gives up one entry at a time.
        for i in 0..10u8 {
            t.trust(IpAddr::from([10, 2, 0, i]), REAL);
            assert!(t.trusted_len() <= 4);
        }
        assert_eq!(t.trusted_len(), 4, "never emptied");
    }

    #[test]
    fn configured_and_kernel_links_are_trusted() {
        let mut t = PeerTable::new(16);
        t.observe(ip(PEER), SPOOF, false);
        t.trust(ip(PEER), REAL);
        t.observe(ip(PEER), SPOOF, false);
        assert_eq!(t.get(ip(PEER)), Some(REAL));
    }
}
