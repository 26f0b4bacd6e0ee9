//! Server connection IDs in the QUIC-LB layout (draft-ietf-quic-load-balancers §2.2):
//! first octet (config rotation + length self-description), server id, worker id, nonce.
//! The worker id is what the XDP program and the UDP hand-off route by.

use std::sync::Arc;

use rand::RngCore;

use crate::conn::ConnectionIdGenerator;
use crate::crypto::tokens::ResetTokenKey;
use crate::wire::cid::ConnectionId;
use crate::wire::steer::{CidLayout, MAX_CID_LEN};

/// What a QUIC-LB configuration agent gives a server (draft-ietf-quic-load-balancers §3,
/// plaintext CIDs: no key): the config rotation codepoint, this server's id, and the nonce
/// length. A load balancer in front routes every CID the server issues by its server id,
/// so a client that migrates or is rebound by a NAT still reaches this node.
///
/// The nonce's first byte is the worker id, the rest random. The load balancer is to be
/// configured with a server id one byte longer than this one: this server's id followed
/// by each worker's byte, every one mapped to this node (the draft's server id allocation
/// leaves a node free to hold several ids). The nonce it sees is then random throughout,
/// as the draft requires of plaintext nonces.
/// A QUIC-LB configuration outside the draft's limits or ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuicLbError {
    #[error("config rotation {0} is not 0..=6 (7 marks unroutable CIDs)")]
    Rotation(u8),
    #[error("the server id needs at least one byte")]
    EmptyServerId,
    #[error("a nonce of {0} bytes: at least {min} (the worker byte and {MIN_RANDOM_LEN} random)", min = 1 + MIN_RANDOM_LEN)]
    ShortNonce(usize),
    #[error("a {server_id}-byte server id and a {nonce}-byte nonce: together at most {max} bytes", max = MAX_CID_LEN - 1)]
    TooLong { server_id: usize, nonce: usize },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuicLbConfig {
    /// 0..=6: 0b111 marks unroutable CIDs (§2.3.1).
    pub config_rotation: u8,
    pub server_id: Vec<u8>,
    /// The worker byte and the random bytes after it.
    pub nonce_len: usize,
}

/// Random bytes after the worker byte, at least: with fewer, two CIDs of one worker (up to
/// 8 for each of 100,000 connections) would collide too often. The draft's minimum nonce,
/// 4 bytes, assumes a load balancer that does not care; the server's CID table does.
pub const MIN_RANDOM_LEN: usize = 8;

impl Default for QuicLbConfig {
    /// A 2-byte server id and a 9-byte nonce: 12-byte CIDs.
    fn default() -> Self {
        QuicLbConfig {
            config_rotation: 0,
            server_id: vec![0, 1],
            nonce_len: 9,
        }
    }
}

impl QuicLbConfig {
    /// The CIDs this configuration makes: first octet, server id, nonce.
    pub fn layout(&self) -> CidLayout {
        CidLayout {
            cid_len: 1 + self.server_id.len() + self.nonce_len,
            server_id_len: self.server_id.len(),
        }
    }

    /// The draft's limits (a server id of at least 1 byte, 19 bytes of server id and nonce
    /// together) and ours (the nonce holds the worker byte and [`MIN_RANDOM_LEN`] random
    /// bytes, which also meets the draft's 4-byte minimum for the load balancer's nonce).
    pub fn check(&self) -> Result<(), QuicLbError> {
        if self.config_rotation > 6 {
            return Err(QuicLbError::Rotation(self.config_rotation));
        }
        if self.server_id.is_empty() {
            return Err(QuicLbError::EmptyServerId);
        }
        if self.nonce_len < 1 + MIN_RANDOM_LEN {
            return Err(QuicLbError::ShortNonce(self.nonce_len));
        }
        if self
            .server_id
            .len()
            .checked_add(self.nonce_len)
            .is_none_or(|n| n > MAX_CID_LEN - 1)
        {
            return Err(QuicLbError::TooLong {
                server_id: self.server_id.len(),
                nonce: self.nonce_len,
            });
        }
        debug_assert!(self.layout().is_valid());
        Ok(())
    }
}

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

    /// draft-ietf-quic-load-balancers Appendix B, "Unencrypted CIDs": config rotation 0,
    /// server id c4605e, nonce 4504cc4f (its first byte standing for our worker byte).
    #[test]
    fn plaintext_cids_match_the_draft_vector() {
        let lb = QuicLbConfig {
            config_rotation: 0,
            server_id: vec![0xc4, 0x60, 0x5e],
            nonce_len: 4,
        };
        let g = CidGenerator::new(
            lb.layout(),
            lb.config_rotation,
            &lb.server_id,
            0x45,
            Arc::new(ResetTokenKey::random()),
        );
        assert_eq!(
            &g.encode(&[0x04, 0xcc, 0x4f])[..],
            &[0x07, 0xc4, 0x60, 0x5e, 0x45, 0x04, 0xcc, 0x4f]
        );
        assert!(
            lb.check().is_err(),
            "too short a nonce for a worker byte and 4 random"
        );
    }

    #[test]
    fn quic_lb_limits_are_checked() {
        let ok = QuicLbConfig {
            config_rotation: 6,
            server_id: vec![1; 10],
            nonce_len: 9,
        };
        assert_eq!(ok.check(), Ok(()));
        assert_eq!(ok.layout().cid_len, 20);
        for bad in [
            QuicLbConfig {
                config_rotation: 7,
                ..QuicLbConfig::default()
            },
            QuicLbConfig {
                server_id: vec![],
                ..QuicLbConfig::default()
            },
            QuicLbConfig {
                nonce_len: 8,
                ..QuicLbConfig::default()
            },
            QuicLbConfig {
                server_id: vec![1; 11],
                ..QuicLbConfig::default()
            },
            QuicLbConfig {
                nonce_len: usize::MAX,
                ..QuicLbConfig::default()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
        assert_eq!(QuicLbConfig::default().layout(), CidLayout::default());
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
