//! The floor under `server_request_100B`: the two AEAD calls every request costs the
//! server (open the request's packet, seal the response's), through quench's own
//! `PacketKey` (AES-128-GCM, the suite every benchmark pair negotiates: our small-packet
//! AES-GCM at these sizes, aws-lc-rs above 256 bytes), on packets of exactly the sizes the
//! request scenario puts on the wire. Header protection, frames, streams and the
//! application are left out, so quench cannot handle such a request in less on this CPU;
//! measured in the same run as the request itself, it shows how much of a per-request
//! target the cipher alone takes.

use std::time::Instant;

use quench::crypto::aead::{PacketKey, Suite, TAG_LEN};

use crate::quench_pair::{QuenchPair, ServerMode};
use crate::tls::TlsSetup;
use crate::{server_span, Stopwatch};

/// Short header of the scenario's packets: first byte, the 12-byte CIDs both endpoints
/// issue, a 2-byte packet number (it only enters the AEAD as associated data).
const HEADER_LEN: usize = 1 + 12 + 2;

pub struct AeadFloor {
    open_key: PacketKey,
    seal_key: PacketKey,
    /// One round's client datagrams as sealed by the client, and buffers to open them in.
    sealed_up: Vec<Vec<u8>>,
    up: Vec<Vec<u8>>,
    /// One round's server datagrams, sealed in place.
    down: Vec<Vec<u8>>,
    /// Requests one round carries.
    pub requests_per_round: u64,
    pn: u64,
}

impl AeadFloor {
    /// The datagrams of one round of a warmed-up request scenario with `per_conn` requests
    /// in flight on each of `conns` connections.
    pub fn new(tls: &TlsSetup, conns: usize, per_conn: usize) -> Self {
        let mut q = QuenchPair::connected(tls, ServerMode::Apps, conns);
        let mut sw = Stopwatch::default();
        for _ in 0..100 {
            q.request_round(per_conn, 100, 100, &mut sw);
        }
        let (up, down) = q.last_request_sizes();
        Self::with_sizes(&up, &down, (conns * per_conn) as u64)
    }

    /// Datagrams of the given sizes (header and tag included) each way per round.
    pub fn with_sizes(up: &[usize], down: &[usize], requests_per_round: u64) -> Self {
        let min = HEADER_LEN + TAG_LEN + 1;
        let key = |b: u8| PacketKey::new(Suite::Aes128Gcm, &[b; 16], &[b; 12]);
        let client_key = key(1);
        let sealed_up: Vec<Vec<u8>> = up
            .iter()
            .map(|&len| {
                let mut p = vec![0x5a; len.max(min)];
                client_key
                    .seal_in_place(7, &mut p, HEADER_LEN)
                    .expect("sized for the tag");
                p
            })
            .collect();
        Self {
            open_key: key(1),
            seal_key: key(2),
            up: sealed_up.clone(),
            sealed_up,
            down: down.iter().map(|&len| vec![0xa5; len.max(min)]).collect(),
            requests_per_round,
            pn: 0,
        }
    }

    /// One round's AEAD work, timed in one span as the request round is; returns the
    /// requests it stands for.
    pub fn round(&mut self, sw: &mut Stopwatch) -> u64 {
        for (work, sealed) in self.up.iter_mut().zip(&self.sealed_up) {
            work.copy_from_slice(sealed);
        }
        let t0 = Instant::now();
        server_span(|| {
            for p in &mut self.up {
                self.open_key
                    .open_in_place(7, p, HEADER_LEN)
                    .expect("the request opens");
            }
            for p in &mut self.down {
                self.pn += 1;
                self.seal_key
                    .seal_in_place(self.pn, p, HEADER_LEN)
                    .expect("sized for the tag");
            }
        });
        sw.stop(t0);
        self.requests_per_round
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_round_opens_what_the_client_sealed() {
        let mut f = AeadFloor::with_sizes(&[140, 60], &[150], 2);
        let mut sw = Stopwatch::default();
        for _ in 0..3 {
            assert_eq!(f.round(&mut sw), 2);
        }
        assert_eq!(sw.spans, 3);
        assert_eq!(
            f.up[0][HEADER_LEN..140 - TAG_LEN],
            [0x5a; 140 - HEADER_LEN - TAG_LEN]
        );
        assert_eq!(f.pn, 3, "one response sealed a round");
    }

    #[test]
    fn the_sizes_come_from_the_request_scenario() {
        let tls = TlsSetup::new().unwrap();
        let f = AeadFloor::new(&tls, 2, 1);
        assert_eq!(f.requests_per_round, 2);
        assert_eq!(
            (f.up.len(), f.down.len()),
            (2, 2),
            "one packet each way a request"
        );
        assert!(
            f.up.iter().all(|p| (100..300).contains(&p.len())),
            "{:?}",
            f.up.iter().map(Vec::len).collect::<Vec<_>>()
        );
    }
}
