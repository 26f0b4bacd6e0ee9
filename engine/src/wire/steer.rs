//! Which worker owns a datagram, decided from its QUIC Destination Connection ID alone.
//!
//! The same function runs in the XDP program (`bpf/quench_xdp.bpf.c`) and in user space
//! (the UDP path, and the hand-off of mis-steered packets on the XDP path); a test runs
//! both on random DCIDs and demands identical answers.
//!
//! Server-issued CIDs follow the QUIC-LB layout (draft-ietf-quic-load-balancers §3):
//! ```text
//! byte 0            : config rotation (3 high bits) | (cid_len - 1) (5 low bits)
//! 1 ..= server_id   : server id (routes to this node through an L4 load balancer)
//! worker_offset     : one byte of worker id (routes to a core inside this node)
//! rest (>= 4 bytes) : nonce
//! ```
//! Short headers always carry one of our CIDs: the worker byte routes them. A long header
//! routes by the worker byte only when its DCID has our shape (our length, and byte 0
//! self-describing it); any other DCID was chosen by a client (Initial, 0-RTT). Any worker
//! may accept a new connection, so those stay on a worker bound to the RX queue they
//! arrived on, picked by an FNV-1a hash of the DCID so every packet carrying it lands on
//! the same one. The connection's later packets share its 4-tuple, so RSS puts them on the
//! same queue, and the worker byte in our CIDs then names a worker already there: no
//! hand-off between workers until the client migrates.

use crate::wire::header::{VERSION_1, VERSION_2};

/// Where the worker id sits inside server-issued connection IDs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CidLayout {
    /// Length of every CID this server issues (4..=20, and fits the nonce).
    pub cid_len: usize,
    /// Bytes of server id after the first octet.
    pub server_id_len: usize,
}

/// Smallest nonce the layout must leave room for (QUIC-LB plaintext mode needs entropy).
pub const MIN_NONCE_LEN: usize = 4;
/// Longest connection ID QUIC v1 allows (RFC 9000 §17.2).
pub const MAX_CID_LEN: usize = 20;

impl Default for CidLayout {
    fn default() -> Self {
        CidLayout {
            cid_len: 12,
            server_id_len: 2,
        }
    }
}

impl CidLayout {
    /// Offset of the worker-id byte: after the first octet and the server id.
    pub fn worker_offset(&self) -> usize {
        1 + self.server_id_len
    }

    /// True when the layout fits in a QUIC CID and leaves room for the worker byte and
    /// a nonce of at least [`MIN_NONCE_LEN`] bytes.
    pub fn is_valid(&self) -> bool {
        self.cid_len <= MAX_CID_LEN && self.worker_offset() + 1 + MIN_NONCE_LEN <= self.cid_len
    }

    /// The first octet of a CID with this layout: QUIC-LB's config rotation bits and the
    /// length self-description (draft-ietf-quic-load-balancers §2.3).
    pub fn first_octet(&self, config_rotation: u8) -> u8 {
        ((config_rotation & 0x07) << 5) | ((self.cid_len.saturating_sub(1) as u8) & 0x1f)
    }
}

/// FNV-1a, 32 bits: tiny, branch-free per byte, and simple to mirror in BPF.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    const OFFSET_BASIS: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    bytes
        .iter()
        .fold(OFFSET_BASIS, |h, &b| (h ^ u32::from(b)).wrapping_mul(PRIME))
}

/// Who handles a datagram, decided from its DCID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// One of our CIDs: the worker (already reduced modulo the worker count) it names.
    Worker(u32),
    /// A client-chosen DCID: any worker bound to the arrival queue, the `hash`-th of them.
    Arrival { hash: u32 },
}

impl Owner {
    /// The worker, given the workers bound to the arrival queue in ascending order (the
    /// XDP program's `queue_workers` entry); `n_workers` when none are listed.
    pub fn resolve(self, arrival_queue_workers: &[u32], n_workers: u32) -> u32 {
        match self {
            Owner::Worker(w) => w,
            Owner::Arrival { hash } if arrival_queue_workers.is_empty() => hash % n_workers.max(1),
            Owner::Arrival { hash } => {
                arrival_queue_workers[(hash as usize) % arrival_queue_workers.len()]
                    % n_workers.max(1)
            }
        }
    }
}

/// True when `dcid` has the shape of a CID we issue: our length and, in byte 0, the
/// QUIC-LB length self-description (draft-ietf-quic-load-balancers §2.3). A client's
/// random DCID of our length passes with probability 1/32.
pub fn has_our_shape(dcid: &[u8], layout: &CidLayout) -> bool {
    // The low five bits of the first octet do not depend on the config rotation.
    dcid.len() == layout.cid_len && dcid.first().map(|b| b & 0x1f) == Some(layout.first_octet(0))
}

/// The worker (0..n_workers) named in a CID of our length; `n_workers == 0` is treated as
/// one worker. `None` for other lengths.
pub fn worker_in_cid(dcid: &[u8], layout: &CidLayout, n_workers: u32) -> Option<u32> {
    if dcid.len() != layout.cid_len {
        return None;
    }
    dcid.get(layout.worker_offset())
        .map(|&w| u32::from(w) % n_workers.max(1))
}

/// Who handles a long-header packet with this DCID.
pub fn owner_of_long_dcid(dcid: &[u8], layout: &CidLayout, n_workers: u32) -> Owner {
    named_worker_long(dcid, layout, n_workers).map_or_else(
        || Owner::Arrival {
            hash: fnv1a32(dcid),
        },
        Owner::Worker,
    )
}

/// The worker a long header's DCID names, if it is one of ours.
fn named_worker_long(dcid: &[u8], layout: &CidLayout, n_workers: u32) -> Option<u32> {
    has_our_shape(dcid, layout)
        .then(|| worker_in_cid(dcid, layout, n_workers))
        .flatten()
}

/// The worker a datagram's DCID names, if it is one of our CIDs (short headers always
/// carry ours); `None` for client-chosen DCIDs and unreadable datagrams.
fn named_worker(payload: &[u8], layout: &CidLayout, n_workers: u32) -> Option<u32> {
    let dcid = dcid_of_datagram(payload, layout.cid_len)?;
    if payload[0] & 0x80 != 0 {
        named_worker_long(dcid, layout, n_workers)
    } else {
        worker_in_cid(dcid, layout, n_workers)
    }
}

/// The Destination Connection ID of the first packet in a UDP payload, located by the
/// version-invariant header (RFC 8999 §5): a long header carries its length, a short
/// header's is `cid_len` (ours). `None` when the datagram is too short to hold it.
pub fn dcid_of_datagram(payload: &[u8], cid_len: usize) -> Option<&[u8]> {
    let first = *payload.first()?;
    if first & 0x80 != 0 {
        let len = usize::from(*payload.get(5)?);
        if len > MAX_CID_LEN {
            return None;
        }
        payload.get(6..6 + len)
    } else {
        payload.get(1..1 + cid_len)
    }
}

/// Who handles a datagram, as the XDP program steers it; `None` when no DCID can be read
/// (the program drops those). The program also drops some datagrams whose DCID can be
/// read (a v1 or v2 header with the fixed bit clear, a short header too short for a
/// sample, an Initial or unknown version under 1200 bytes): for those this still names
/// the owner, so compare the two only on datagrams the program redirects.
pub fn owner_of_datagram(payload: &[u8], layout: &CidLayout, n_workers: u32) -> Option<Owner> {
    if let Some(dcid) = long_dcid_of_unknown_version(payload) {
        // Version Negotiation material, steered on at most the first 20 bytes.
        return Some(Owner::Arrival {
            hash: fnv1a32(&dcid[..dcid.len().min(MAX_CID_LEN)]),
        });
    }
    let dcid = dcid_of_datagram(payload, layout.cid_len)?;
    if payload[0] & 0x80 != 0 {
        Some(owner_of_long_dcid(dcid, layout, n_workers))
    } else {
        worker_in_cid(dcid, layout, n_workers).map(Owner::Worker)
    }
}

/// The DCID of a long header of a version neither v1 nor v2 (nor Version Negotiation),
/// which may be up to 255 bytes (RFC 8999 §5.1).
fn long_dcid_of_unknown_version(payload: &[u8]) -> Option<&[u8]> {
    if payload.first()? & 0x80 == 0 {
        return None;
    }
    let version = u32::from_be_bytes(payload.get(1..5)?.try_into().ok()?);
    if matches!(version, 0 | VERSION_1 | VERSION_2) {
        return None;
    }
    let len = usize::from(*payload.get(5)?);
    payload.get(6..6 + len)
}

/// The worker another worker must hand a datagram to: `Some` only for one of our CIDs
/// naming a worker other than `me`. Everything else is handled where it arrived.
pub fn foreign_owner(payload: &[u8], layout: &CidLayout, n_workers: u32, me: u32) -> Option<u32> {
    // Per packet on multi-worker datapaths: never hashes a client's DCID it would discard.
    named_worker(payload, layout, n_workers).filter(|&w| w != me)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layout_offsets() {
        let l = CidLayout::default();
        assert_eq!(l.worker_offset(), 3);
        assert!(l.is_valid());
        assert_eq!(l.first_octet(0b101), 0b1010_1011);
    }

    #[test]
    fn invalid_layouts() {
        assert!(!CidLayout {
            cid_len: 8,
            server_id_len: 3
        }
        .is_valid());
        assert!(!CidLayout {
            cid_len: 21,
            server_id_len: 2
        }
        .is_valid());
        assert!(CidLayout {
            cid_len: 8,
            server_id_len: 2
        }
        .is_valid());
    }

    fn ours(worker: u8) -> [u8; 12] {
        let mut cid = [0xaau8; 12];
        cid[0] = CidLayout::default().first_octet(1);
        cid[3] = worker;
        cid
    }

    #[test]
    fn server_cid_routes_by_worker_byte() {
        let l = CidLayout::default();
        let long = |w| owner_of_long_dcid(&ours(w), &l, 8);
        assert_eq!(long(7), Owner::Worker(7));
        assert_eq!(owner_of_long_dcid(&ours(3), &l, 4), Owner::Worker(3));
        assert_eq!(
            owner_of_long_dcid(&ours(200), &l, 3),
            Owner::Worker(200 % 3)
        );
        assert_eq!(worker_in_cid(&ours(200), &l, 0), Some(0));
        assert_eq!(worker_in_cid(&[1, 2, 3], &l, 4), None);
    }

    #[test]
    fn client_chosen_dcids_stay_on_the_arrival_queue() {
        let l = CidLayout::default();
        // FNV-1a reference values.
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
        let dcid = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let o = owner_of_long_dcid(&dcid, &l, 5);
        assert_eq!(
            o,
            Owner::Arrival {
                hash: fnv1a32(&dcid)
            }
        );
        // All workers on one queue, none listed, or a subset listed.
        assert_eq!(o.resolve(&[0, 1, 2, 3, 4], 5), fnv1a32(&dcid) % 5);
        assert_eq!(o.resolve(&[], 5), fnv1a32(&dcid) % 5);
        assert_eq!(o.resolve(&[1, 3], 5), [1, 3][(fnv1a32(&dcid) % 2) as usize]);
        assert_eq!(owner_of_long_dcid(&[], &l, 5).resolve(&[], 0), 0);
        // Our length but not our first octet: a client's random DCID, hashed.
        let mut random = ours(2);
        random[0] = 0x00;
        assert!(!has_our_shape(&random, &l));
        assert_eq!(
            owner_of_long_dcid(&random, &l, 4),
            Owner::Arrival {
                hash: fnv1a32(&random)
            }
        );
        // A short header always carries our CID: the byte routes it.
        let mut short = vec![0x40u8];
        short.extend_from_slice(&random);
        short.extend_from_slice(&[0; 24]);
        assert_eq!(owner_of_datagram(&short, &l, 4), Some(Owner::Worker(2)));
        assert_eq!(foreign_owner(&short, &l, 4, 2), None);
        assert_eq!(foreign_owner(&short, &l, 4, 1), Some(2));
        // Hostile worker bytes never name a worker that does not exist.
        short[4] = 0xff;
        assert_eq!(foreign_owner(&short, &l, 2, 0), Some(1));
    }

    #[test]
    fn dcid_from_datagrams() {
        let mut short = vec![0x40u8];
        short.extend_from_slice(&[9; 12]);
        short.extend_from_slice(&[0; 20]);
        assert_eq!(dcid_of_datagram(&short, 12), Some(&[9u8; 12][..]));
        assert_eq!(dcid_of_datagram(&short[..12], 12), None);
        let long = [0xc0u8, 0, 0, 0, 1, 3, 7, 8, 9, 0xff];
        assert_eq!(dcid_of_datagram(&long, 12), Some(&[7u8, 8, 9][..]));
        assert_eq!(dcid_of_datagram(&long[..7], 12), None);
        assert_eq!(dcid_of_datagram(&[0xc0, 0, 0, 0, 1, 21], 12), None);
        assert_eq!(dcid_of_datagram(&[], 12), None);
        assert_eq!(
            owner_of_datagram(&long, &CidLayout::default(), 4),
            Some(Owner::Arrival {
                hash: fnv1a32(&[7, 8, 9])
            })
        );
        assert_eq!(foreign_owner(&long, &CidLayout::default(), 4, 3), None);
        assert_eq!(owner_of_datagram(&[], &CidLayout::default(), 4), None);
    }
}
