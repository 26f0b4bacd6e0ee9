//! Microsoft MsQuic ↔ quench: the msquic-peer client against `quench serve`, and `quench
//! client` against the msquic-peer server. A sixth QUIC stack sharing no code with quench:
//! MsQuic's own C transport, recovery and packet protection, with quictls (OpenSSL) for the
//! TLS handshake. Needs the quench binary (see `common::quench_bin`).

mod common;

use common::*;

// ---- MsQuic client → quench server ----------------------------------------------------------

#[test]
fn msquic_client_perf_100mib_down_50mib_up() {
    perf_through(
        Server::quench,
        Peer::Msquic,
        Transfer::perf(100 * MIB, 50 * MIB),
    );
}

#[test]
fn msquic_client_perf_100_concurrent_streams() {
    // Odd totals: the streams' shares differ by one byte, so a misplaced byte shows.
    let transfer = Transfer::perf(40 * MIB + 7, 10 * MIB + 3).streams(100);
    perf_through(Server::quench, Peer::Msquic, transfer);
}

#[test]
fn msquic_client_perf_many_connections() {
    let transfer = Transfer::perf(16 * MIB + 7, 8 * MIB + 3)
        .streams(4)
        .conns(8);
    perf_through(Server::quench, Peer::Msquic, transfer);
}

#[test]
fn msquic_client_hq_get_random_files() {
    let _serial = serial();
    assert_hq_random_files(&Hosted::start(Server::quench), Peer::Msquic, 5_000_000);
}

#[test]
fn msquic_client_through_retry() {
    through_quench_retry(Peer::Msquic);
}

/// MsQuic starts a key update (RFC 9001 §6) on a connection quench serves, in the middle of
/// a transfer both ways; quench must follow it for the transfer to finish.
#[test]
fn msquic_client_forced_key_update_mid_transfer() {
    let _serial = serial();
    let quench = Hosted::start(Server::quench);
    let transfer = Transfer::perf(64 * MIB, 16 * MIB).key_update_after(16 * MIB);
    let report = quench.transfer(Peer::Msquic, &transfer);
    assert_perf(&report, &transfer);
    assert_eq!(report.key_updates, 1, "{report:?}");
}

#[test]
fn msquic_client_rejects_quench_with_untrusted_certificate() {
    untrusted_server_refused(Server::quench, Peer::Msquic, Some("handshake failed"));
}

// ---- quench client → MsQuic server ----------------------------------------------------------

#[test]
fn quench_client_perf_download_100mib_from_msquic() {
    perf_through(Server::msquic, Peer::Quench, Transfer::perf(100 * MIB, 0));
}

#[test]
fn quench_client_perf_upload_50mib_to_msquic() {
    perf_through(Server::msquic, Peer::Quench, Transfer::perf(0, 50 * MIB));
}

#[test]
fn quench_client_perf_both_ways_concurrent_streams_with_msquic() {
    let transfer = Transfer::perf(20 * MIB + 7, 10 * MIB + 3)
        .streams(50)
        .conns(2);
    perf_through(Server::msquic, Peer::Quench, transfer);
}

#[test]
fn quench_client_hq_get_random_files_from_msquic() {
    let _serial = serial();
    assert_hq_random_files(&Hosted::start(Server::msquic), Peer::Quench, 3_000_001);
}

/// quench starts a key update on a connection MsQuic serves; MsQuic must follow it for the
/// download to finish.
#[test]
fn quench_client_forced_key_update_mid_transfer_with_msquic() {
    let _serial = serial();
    let msquic = Hosted::start(Server::msquic);
    let transfer = Transfer::perf(32 * MIB, 0).key_update_after(8 * MIB);
    let report = msquic.transfer(Peer::Quench, &transfer);
    assert_perf(&report, &transfer);
    assert!(report.key_updates >= 1, "{report:?}");
}

/// `quench client --resume` against MsQuic (server resumption on): the warm-up collects
/// MsQuic's session tickets and every connection of the transfer resumes with one.
#[test]
fn quench_client_resumes_msquic_sessions() {
    quench_client_resumes(Server::msquic, 3, 3);
}

#[test]
fn quench_client_rejects_untrusted_msquic_server() {
    untrusted_server_refused(Server::msquic, Peer::Quench, None);
}

#[test]
fn msquic_server_shuts_down_on_sigterm() {
    let _serial = serial();
    let msquic = Hosted::start(Server::msquic);
    let transfer = Transfer::perf(MIB, MIB).streams(2);
    assert_perf(&msquic.transfer(Peer::Quench, &transfer), &transfer);
    let status = msquic.server.shutdown();
    assert!(status.success(), "SIGTERM must exit 0, got {status}");
}
