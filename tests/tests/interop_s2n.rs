//! AWS s2n-quic ↔ quench: the s2n-peer client against `quench serve`, and `quench client`
//! against the s2n-peer server. A third QUIC stack sharing no code with quench (s2n-quic's
//! own transport and recovery; rustls for the TLS handshake). Needs the quench binary (see
//! `common::quench_bin`).

mod common;

use common::*;

// ---- s2n-quic client → quench server --------------------------------------------------------

/// ECN (RFC 9000 §13.4): s2n-quic reports counts and marks its own packets, which quench
/// counts. Its counts fall short of the marked packets an ACK newly acknowledges once
/// traffic is heavy (76 ECT(0) for 120 packets, for one), which fails validation
/// (§13.4.2.1) and quench then sends unmarked. Either outcome leaves the transfer intact.
#[test]
fn s2n_client_and_quench_ecn() {
    let _serial = serial();
    let ecn = ecn_against(Peer::S2n);
    assert_eq!(ecn.capable + ecn.failures, 1, "{ecn:?}");
    assert!(ecn.marked > 10, "s2n's counts validated at first: {ecn:?}");
    assert!(ecn.ect0_received > 1000, "s2n's marks counted: {ecn:?}");
}

#[test]
fn s2n_client_perf_50mib_down_20mib_up() {
    perf_through(
        Server::quench,
        Peer::S2n,
        Transfer::perf(50 * MIB, 20 * MIB),
    );
}

#[test]
fn s2n_client_perf_50_concurrent_streams() {
    // Odd totals: the streams' shares differ by one byte, so a misplaced byte shows.
    let transfer = Transfer::perf(40 * MIB + 7, 10 * MIB + 3).streams(50);
    perf_through(Server::quench, Peer::S2n, transfer);
}

#[test]
fn s2n_client_perf_many_connections() {
    let transfer = Transfer::perf(16 * MIB + 7, 8 * MIB + 3)
        .streams(4)
        .conns(4);
    perf_through(Server::quench, Peer::S2n, transfer);
}

#[test]
fn s2n_client_hq_get_random_files() {
    let _serial = serial();
    assert_hq_random_files(&Hosted::start(Server::quench), Peer::S2n, 5_000_000);
}

#[test]
fn s2n_client_through_retry() {
    through_quench_retry(Peer::S2n);
}

#[test]
fn s2n_client_rejects_quench_with_untrusted_certificate() {
    untrusted_server_refused(Server::quench, Peer::S2n, Some("handshake"));
}

// ---- quench client → s2n-quic server --------------------------------------------------------

/// `quench client --resume` against a server that issues no session tickets: s2n-quic
/// with rustls does not resume (aws/s2n-quic#2099, open), so the warm-up gets none, and
/// the transfer completes with full handshakes and reports `resumed: 0`.
#[test]
fn quench_client_resume_without_tickets_from_s2n_does_full_handshakes() {
    quench_client_resumes(Server::s2n, 3, 0);
}

#[test]
fn quench_client_perf_download_50mib_from_s2n() {
    perf_through(Server::s2n, Peer::Quench, Transfer::perf(50 * MIB, 0));
}

#[test]
fn quench_client_perf_upload_20mib_to_s2n() {
    perf_through(Server::s2n, Peer::Quench, Transfer::perf(0, 20 * MIB));
}

#[test]
fn quench_client_perf_both_ways_concurrent_streams_with_s2n() {
    let transfer = Transfer::perf(20 * MIB + 7, 10 * MIB + 3)
        .streams(50)
        .conns(2);
    perf_through(Server::s2n, Peer::Quench, transfer);
}

#[test]
fn quench_client_hq_get_random_files_from_s2n() {
    let _serial = serial();
    assert_hq_random_files(&Hosted::start(Server::s2n), Peer::Quench, 3_000_001);
}

/// quench starts a key update (RFC 9001 §6) on a connection s2n-quic serves; s2n-quic must
/// follow it for the download to finish.
#[test]
fn quench_client_forced_key_update_mid_transfer_with_s2n() {
    let _serial = serial();
    let s2n = Hosted::start(Server::s2n);
    let transfer = Transfer::perf(32 * MIB, 0).key_update_after(8 * MIB);
    let report = s2n.transfer(Peer::Quench, &transfer);
    assert_perf(&report, &transfer);
    assert!(report.key_updates >= 1, "{report:?}");
}

#[test]
fn quench_client_rejects_untrusted_s2n_server() {
    untrusted_server_refused(Server::s2n, Peer::Quench, None);
}

#[test]
fn s2n_server_shuts_down_on_sigterm() {
    let _serial = serial();
    let s2n = Hosted::start(Server::s2n);
    let transfer = Transfer::perf(MIB, MIB).streams(2);
    assert_perf(&s2n.transfer(Peer::Quench, &transfer), &transfer);
    let status = s2n.server.shutdown();
    assert!(status.success(), "SIGTERM must exit 0, got {status}");
}
