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
//! Client-chosen DCIDs (Initial and 0-RTT) have another length, or just random bytes;
//! they are hashed with FNV-1a so every packet carrying the same DCID lands on one worker.

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

/// The worker (0..n_workers) that owns a datagram with this DCID. `n_workers == 0` is
/// treated as one worker.
pub fn worker_for_dcid(dcid: &[u8], layout: &CidLayout, n_workers: u32) -> u32 {
    let n = n_workers.max(1);
    if dcid.len() == layout.cid_len {
        if let Some(&w) = dcid.get(layout.worker_offset()) {
            return u32::from(w) % n;
        }
    }
    fnv1a32(dcid) % n
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

/// The worker owning a datagram, as the XDP program would pick it; `None` when no DCID
/// can be read (the program drops those).
pub fn worker_for_datagram(payload: &[u8], layout: &CidLayout, n_workers: u32) -> Option<u32> {
    dcid_of_datagram(payload, layout.cid_len).map(|d| worker_for_dcid(d, layout, n_workers))
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

    #[test]
    fn server_cid_routes_by_worker_byte() {
        let l = CidLayout::default();
        let mut cid = [0xaau8; 12];
        cid[3] = 7;
        assert_eq!(worker_for_dcid(&cid, &l, 8), 7);
        assert_eq!(worker_for_dcid(&cid, &l, 4), 3);
        cid[3] = 200;
        assert_eq!(worker_for_dcid(&cid, &l, 3), 200 % 3);
    }

    #[test]
    fn other_lengths_hash() {
        let l = CidLayout::default();
        // FNV-1a reference values.
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
        let dcid = [1u8, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(worker_for_dcid(&dcid, &l, 5), fnv1a32(&dcid) % 5);
        assert_eq!(worker_for_dcid(&[], &l, 5), 0x811c_9dc5 % 5);
        assert_eq!(worker_for_dcid(&dcid, &l, 0), 0);
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
            worker_for_datagram(&long, &CidLayout::default(), 4),
            Some(fnv1a32(&[7, 8, 9]) % 4)
        );
    }
}
