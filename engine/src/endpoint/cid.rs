//! Server connection IDs in the QUIC-LB layout (draft-ietf-quic-load-balancers §2.2):
//! first octet (config rotation + length self-description), server id, worker id, nonce.
//! The worker id is what the XDP program and the UDP hand-off route by.

use std::sync::Arc;

use rand::RngCore;

use crate::conn::ConnectionIdGenerator;
use crate::crypto::tokens::ResetTokenKey;
use crate::wire::cid::ConnectionId;
use crate::wire::steer::CidLayout;

#[derive(Clone)]
pub struct CidGenerator {
    layout: CidLayout,
    /// Config rotation codepoint (3 bits); 0b111 is reserved for unroutable CIDs.
    rotation: u8,
    server_id: [u8; 16],
    worker: u8,
    reset_key: Arc<ResetTokenKey>,
}

impl CidGenerator {
    /// `server_id` must be `layout.server_id_len` bytes (shorter is zero-padded).
    pub fn new(
        layout: CidLayout,
        rotation: u8,
        server_id: &[u8],
        worker: u8,
        reset_key: Arc<ResetTokenKey>,
    ) -> Self {
        let mut sid = [0u8; 16];
        let n = server_id.len().min(layout.server_id_len).min(16);
        sid[..n].copy_from_slice(&server_id[..n]);
        Self {
            layout,
            rotation: rotation & 0x07,
            server_id: sid,
            worker,
            reset_key,
        }
    }

    pub fn layout(&self) -> &CidLayout {
        &self.layout
    }

    pub fn worker(&self) -> u8 {
        self.worker
    }

    /// Builds a CID around `nonce` (tests use fixed nonces).
    pub fn encode(&self, nonce: &[u8]) -> ConnectionId {
        let len = self.layout.cid_len;
        let mut bytes = [0u8; ConnectionId::MAX_LEN];
        bytes[0] = (self.rotation << 5) | ((len as u8 - 1) & 0x1f);
        let sid_len = self.layout.server_id_len;
        bytes[1..1 + sid_len].copy_from_slice(&self.server_id[..sid_len]);
        let w = self.layout.worker_offset();
        bytes[w] = self.worker;
        let nonce_len = len - w - 1;
        let n = nonce.len().min(nonce_len);
        bytes[w + 1..w + 1 + n].copy_from_slice(&nonce[..n]);
        ConnectionId::new(&bytes[..len]).expect("layout keeps CIDs within 20 bytes")
    }
}

impl ConnectionIdGenerator for CidGenerator {
    fn generate(&mut self) -> ConnectionId {
        let mut nonce = [0u8; ConnectionId::MAX_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        self.encode(&nonce)
    }

    fn reset_token(&self, cid: &ConnectionId) -> [u8; 16] {
        self.reset_key.token(cid)
    }

    fn cid_len(&self) -> usize {
        self.layout.cid_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::steer::{owner_of_long_dcid, worker_in_cid, Owner};

    #[test]
    fn cids_carry_the_worker_and_route_back_to_it() {
        let layout = CidLayout {
            cid_len: 12,
            server_id_len: 2,
        };
        for worker in 0..4u8 {
            let mut g = CidGenerator::new(
                layout,
                1,
                &[0xab, 0xcd],
                worker,
                Arc::new(ResetTokenKey::random()),
            );
            for _ in 0..100 {
                let cid = g.generate();
                assert_eq!(cid.len(), 12);
                assert_eq!(cid[0], (1 << 5) | 11, "rotation and self-described length");
                assert_eq!(&cid[1..3], &[0xab, 0xcd]);
                assert_eq!(worker_in_cid(&cid, &layout, 4), Some(worker as u32));
                assert_eq!(
                    owner_of_long_dcid(&cid, &layout, 4),
                    Owner::Worker(worker as u32),
                    "our CIDs in long headers (Handshake, later Initials) route by the byte"
                );
            }
        }
    }

    #[test]
    fn reset_tokens_are_stable_per_cid() {
        let key = Arc::new(ResetTokenKey::random());
        let mut g = CidGenerator::new(
            CidLayout {
                cid_len: 8,
                server_id_len: 1,
            },
            0,
            &[7],
            0,
            key,
        );
        let a = g.generate();
        let b = g.generate();
        assert_ne!(a, b);
        assert_eq!(g.reset_token(&a), g.reset_token(&a));
        assert_ne!(g.reset_token(&a), g.reset_token(&b));
    }
}
