//! Microsoft MsQuic ↔ quench: the msquic-peer client against `quench serve`, and `quench
//! client` against the msquic-peer server. A sixth QUIC stack sharing no code with quench:
//! MsQuic's own C transport, recovery and packet protection, with quictls (OpenSSL) for the
//! TLS handshake. Needs the quench binary (see `common::quench_bin`).

mod common;

use common::*;

// ---- MsQuic client → quench server ----------------------------------------------------------

/// ECN (RFC 9000 §13.4): MsQuic reports the ECT(0) marks of quench's packets in its ACK
/// frames and quench's validation passes. MsQuic does not mark its own by default.
#[test]
fn msquic_client_validates_quench_ecn() {
    let _serial = serial();
    let ecn = ecn_against(Peer::Msquic);
    assert_eq!((ecn.capable, ecn.failures), (1, 0), "{ecn:?}");
    assert!(ecn.marked > 1000, "{ecn:?}");
}

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

/// 0-RTT into MsQuic: `msquic-peer server --early-data` (resumption with 0-RTT) hands out
/// tickets that allow early data (`quench_client_early_data`).
#[test]
fn quench_client_early_data_accepted_by_msquic() {
    quench_client_early_data(|certs, root, logs| {
        Server::msquic_with(certs, root, logs, &["--early-data"])
    });
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

// ---- versions, Retry and resumption ---------------------------------------------------------

/// The `msquic-peer server: stats {…}` line the server prints to stderr when it stops.
fn msquic_server_stats(server: Server) -> serde_json::Value {
    let stderr = server.shutdown_stderr();
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("msquic-peer server: stats "))
        .unwrap_or_else(|| panic!("no stats line in: {stderr}"));
    serde_json::from_str(line).expect("stats are JSON")
}

/// QUIC v2 (RFC 9369) from MsQuic's first Initial on.
#[test]
fn msquic_client_quic_v2() {
    let _serial = serial();
    let quench = Hosted::start(Server::quench);
    let transfer = Transfer::perf(4 * MIB, 2 * MIB).conns(2);
    let mut cmd = client_command(
        Peer::Msquic,
        quench.server.addr,
        &quench.certs.ca,
        &transfer,
    );
    cmd.args(["--quic-version", "2"]);
    let report = run_client(cmd, transfer.timeout());
    assert_perf(&report, &transfer);
    assert_eq!(report.quic_version.as_deref(), Some("0x6b3343cf"));
    assert_eq!(report.version_switches, Some(0));
}

/// Compatible version negotiation (RFC 9368 §2.3) with a second independent stack:
/// MsQuic's v1 first flight lists v2, `quench serve --prefer-version 2` answers in v2, and
/// MsQuic follows, without Version Negotiation.
#[test]
fn msquic_client_moves_to_v2_on_a_quench_server_preferring_it() {
    let _serial = serial();
    let dir = temp_dir();
    let certs = Certs::generate(dir.path());
    let server = Server::quench_with(&certs, dir.path(), dir.path(), &["--prefer-version", "2"]);
    let transfer = Transfer::perf(2 * MIB, MIB).streams(2).conns(2);
    let mut cmd = client_command(Peer::Msquic, server.addr, &certs.ca, &transfer);
    cmd.args(["--quic-version", "1,2"]);
    let report = run_client(cmd, transfer.timeout());
    assert_perf(&report, &transfer);
    assert_client_moved_all_to_v2(&report, 2);
    assert_quench_moved_all_to_v2(server, 2);
}

/// Compatible version negotiation, quench as the client: a v1 first flight listing v2
/// first; MsQuic's server, preferring v2, moves both connections there and quench follows.
#[test]
fn quench_client_follows_msquic_to_v2_without_a_round_trip() {
    let _serial = serial();
    let dir = temp_dir();
    let certs = Certs::generate(dir.path());
    let server = Server::msquic_with(&certs, dir.path(), dir.path(), &["--quic-version", "2,1"]);
    let transfer = Transfer::perf(2 * MIB, MIB).streams(2).conns(2);
    let mut cmd = client_command(Peer::Quench, server.addr, &certs.ca, &transfer);
    cmd.args(["--quic-version", "2,1", "--original-version", "1"]);
    let report = run_client(cmd, transfer.timeout());
    assert_perf(&report, &transfer);
    assert_client_moved_all_to_v2(&report, 2);
    let stats = msquic_server_stats(server);
    assert_eq!(stats["versions"]["0x6b3343cf"], 2, "{stats}");
    assert_eq!(stats["versions"]["0x1"], 0, "{stats}");
}

/// `msquic-peer server --retry`: every connection of `quench client` goes through a Retry
/// (RFC 9000 §8.1.2) and completes; MsQuic counted one Retry each.
#[test]
fn quench_client_through_msquic_retry() {
    let _serial = serial();
    let dir = temp_dir();
    let certs = Certs::generate(dir.path());
    let server = Server::msquic_with(&certs, dir.path(), dir.path(), &["--retry"]);
    let transfer = Transfer::perf(4 * MIB, 2 * MIB).conns(3);
    let report = run_transfer(Peer::Quench, server.addr, &certs.ca, &transfer);
    assert_perf(&report, &transfer);
    let stats = msquic_server_stats(server);
    assert_eq!(stats["retries"], 3, "{stats}");
    assert_eq!(stats["connections"], 3, "{stats}");
}

/// MsQuic's client resumes quench's sessions: a warm-up connection keeps the session
/// ticket, both of the transfer's connections present it and resume (MsQuic's view and
/// quench's server counters agree).
#[test]
fn msquic_client_resumes_quench_sessions() {
    let _serial = serial();
    let quench = Hosted::start(Server::quench);
    let transfer = Transfer::perf(2 * MIB, MIB).conns(2);
    let mut cmd = client_command(
        Peer::Msquic,
        quench.server.addr,
        &quench.certs.ca,
        &transfer,
    );
    cmd.arg("--resume");
    let report = run_client(cmd, transfer.timeout());
    assert_perf(&report, &transfer);
    assert_eq!(report.resumed, Some(2), "{report:?}");
    let totals = quench
        .server
        .shutdown_worker_totals(&["connections_accepted", "resumed_handshakes"]);
    assert_eq!(totals, [3, 2], "connections accepted, resumed handshakes");
}

/// 0-RTT from MsQuic's client, which sends each perf request with `ALLOW_0_RTT` before
/// the connection starts and reuses one ticket (`client_early_data_reusing_one_ticket`).
#[test]
fn msquic_client_early_data_accepted_once_per_ticket() {
    client_early_data_reusing_one_ticket(Peer::Msquic);
}

// ---- DATAGRAM (RFC 9221) --------------------------------------------------------------------

/// MsQuic sends numbered DATAGRAM frames to quench's `echo`, which sends each back.
#[test]
fn msquic_client_datagrams_echoed() {
    let _serial = serial();
    let quench = Hosted::start(Server::quench);
    assert_all_datagrams_echoed(msquic_peer_bin(), &quench.server, &quench.certs.ca);
}

/// The other way: `quench client` sends numbered DATAGRAM frames to MsQuic's echo.
#[test]
fn quench_client_datagrams_echoed_by_msquic() {
    let _serial = serial();
    let msquic = Hosted::start(Server::msquic);
    assert_all_datagrams_echoed(quench_bin(), &msquic.server, &msquic.certs.ca);
}
