//! Cloudflare quiche ↔ quench: the quiche-peer client against `quench serve`, and `quench
//! client` against the quiche-peer server. Another QUIC stack sharing no code with quench
//! (quiche's own transport, recovery and CUBIC; BoringSSL for the TLS handshake). Needs the
//! quench binary (see `common::quench_bin`).

mod common;

use common::*;

// ---- quiche client → quench server ----------------------------------------------------------

/// ECN (RFC 9000 §13.4): quiche's ACK frames carry no ECN counts, so quench's validation
/// fails after its ten test packets and it sends unmarked; the transfer is untouched.
#[test]
fn quiche_client_without_ecn_counts_fails_quench_validation_harmlessly() {
    let _serial = serial();
    let ecn = ecn_against(Peer::Quiche);
    assert_eq!((ecn.capable, ecn.failures), (0, 1), "{ecn:?}");
    assert!(
        (1..=10).contains(&ecn.marked),
        "only the test's packets: {ecn:?}"
    );
}

#[test]
fn quiche_client_perf_50mib_down_20mib_up() {
    perf_through(
        Server::quench,
        Peer::Quiche,
        Transfer::perf(50 * MIB, 20 * MIB),
    );
}

#[test]
fn quiche_client_perf_50_concurrent_streams() {
    // Odd totals: the streams' shares differ by one byte, so a misplaced byte shows.
    let transfer = Transfer::perf(40 * MIB + 7, 10 * MIB + 3).streams(50);
    perf_through(Server::quench, Peer::Quiche, transfer);
}

#[test]
fn quiche_client_perf_many_connections() {
    let transfer = Transfer::perf(16 * MIB + 7, 8 * MIB + 3)
        .streams(4)
        .conns(4);
    perf_through(Server::quench, Peer::Quiche, transfer);
}

/// TLS resumption by quiche's client (BoringSSL): `quiche-peer client --resume` keeps the
/// session of a warm-up connection's ticket and both of the transfer's connections resume
/// it (quiche's `is_resumed`); quench counts the same two resumed handshakes.
#[test]
fn quiche_client_resumes_quench_sessions() {
    let _serial = serial();
    let dir = temp_dir();
    let certs = Certs::generate(dir.path());
    let server = Server::quench_with(&certs, dir.path(), dir.path(), &[]);
    let transfer = Transfer::perf(2 * MIB, MIB).conns(2);
    let mut cmd = client_command(Peer::Quiche, server.addr, &certs.ca, &transfer);
    cmd.arg("--resume");
    let report = run_client(cmd, transfer.timeout());
    assert_perf(&report, &transfer);
    assert_eq!(report.resumed, Some(2), "quiche's view");
    let totals = server.shutdown_worker_totals(&["connections_accepted", "resumed_handshakes"]);
    assert_eq!(
        totals,
        [3, 2],
        "connections accepted (warm-up included), resumed"
    );
}

/// 0-RTT from quiche's client, which writes its perf requests while `is_in_early_data`
/// and reuses one session (`client_early_data_reusing_one_ticket`).
#[test]
fn quiche_client_early_data_accepted_once_per_ticket() {
    client_early_data_reusing_one_ticket(Peer::Quiche);
}

/// 0-RTT the other way: `quiche-peer server --early-data` (BoringSSL's early data on)
/// hands out tickets allowing it (`quench_client_early_data`).
#[test]
fn quench_client_early_data_accepted_by_quiche() {
    quench_client_early_data(|certs, root, logs| {
        Server::quiche_with(certs, root, logs, &["--early-data"])
    });
}

#[test]
fn quiche_client_hq_get_random_files() {
    let _serial = serial();
    assert_hq_random_files(&Hosted::start(Server::quench), Peer::Quiche, 5_000_000);
}

#[test]
fn quiche_client_through_retry() {
    through_quench_retry(Peer::Quiche);
}

#[test]
fn quiche_client_rejects_quench_with_untrusted_certificate() {
    untrusted_server_refused(Server::quench, Peer::Quiche, Some("handshake"));
}

/// What quiche cannot do is refused, never silently skipped: it has no API to start a key
/// update, and quiche-peer does not speak `echo` (DATAGRAM).
#[test]
fn quiche_client_refuses_what_quiche_cannot_do() {
    let _serial = serial();
    let quench = Hosted::start(Server::quench);
    let transfer = Transfer::perf(MIB, 0).key_update_after(1000);
    let out = run_client_expect_failure(client_command(
        Peer::Quiche,
        quench.server.addr,
        &quench.certs.ca,
        &transfer,
    ));
    assert!(out.stderr.contains("key update"), "{}", out.stderr);
    let transfer = Transfer {
        alpn: "echo",
        ..Transfer::perf(0, 0)
    };
    let mut echo = client_command(
        Peer::Quiche,
        quench.server.addr,
        &quench.certs.ca,
        &transfer,
    );
    echo.args(["--datagrams", "10"]);
    let out = run_client_expect_failure(echo);
    assert!(out.stderr.contains("echo"), "{}", out.stderr);
}

// ---- quench client → quiche server ----------------------------------------------------------

/// TLS resumption with quiche's server (BoringSSL's session tickets): `quench client
/// --resume`, and all three of the transfer's connections resume.
#[test]
fn quench_client_resumes_quiche_sessions() {
    quench_client_resumes(Server::quiche, 3, 3);
}

#[test]
fn quench_client_perf_download_50mib_from_quiche() {
    perf_through(Server::quiche, Peer::Quench, Transfer::perf(50 * MIB, 0));
}

#[test]
fn quench_client_perf_upload_20mib_to_quiche() {
    perf_through(Server::quiche, Peer::Quench, Transfer::perf(0, 20 * MIB));
}

#[test]
fn quench_client_perf_both_ways_concurrent_streams_with_quiche() {
    let transfer = Transfer::perf(20 * MIB + 7, 10 * MIB + 3)
        .streams(50)
        .conns(2);
    perf_through(Server::quiche, Peer::Quench, transfer);
}

/// hq-interop GETs of random files and of `/N` come back byte-exact; a GET of a missing
/// file, which quiche-peer answers with RESET_STREAM, fails the client's run.
#[test]
fn quench_client_hq_get_random_files_from_quiche() {
    let _serial = serial();
    let quiche = Hosted::start(Server::quiche);
    assert_hq_random_files(&quiche, Peer::Quench, 3_000_001);
}

/// quench starts a key update (RFC 9001 §6) on a connection quiche serves; quiche must
/// follow it for the download to finish.
#[test]
fn quench_client_forced_key_update_mid_transfer_with_quiche() {
    let _serial = serial();
    let quiche = Hosted::start(Server::quiche);
    let transfer = Transfer::perf(32 * MIB, 0).key_update_after(8 * MIB);
    let report = quiche.transfer(Peer::Quench, &transfer);
    assert_perf(&report, &transfer);
    assert!(report.key_updates >= 1, "{report:?}");
}

/// `quench client --quic-version 2`: quiche, which speaks only v1, answers the v2 Initial
/// with Version Negotiation and the client stops with `VersionMismatch`; with
/// `--quic-version 2,1` it starts over in v1 (RFC 9368 §2.1) and the transfer completes.
#[test]
fn quench_client_version_negotiation_from_quiche() {
    let _serial = serial();
    let quiche = Hosted::start(Server::quiche);
    let transfer = Transfer::perf(MIB, MIB).streams(2);
    let mut cmd = client_command(
        Peer::Quench,
        quiche.server.addr,
        &quiche.certs.ca,
        &transfer,
    );
    cmd.args(["--quic-version", "2"]);
    let out = run_client_expect_failure(cmd);
    assert!(out.stderr.contains("VersionMismatch"), "{}", out.stderr);
    let mut cmd = client_command(
        Peer::Quench,
        quiche.server.addr,
        &quiche.certs.ca,
        &transfer,
    );
    cmd.args(["--quic-version", "2,1"]);
    let report = run_client(cmd, transfer.timeout());
    assert_perf(&report, &transfer);
    assert_eq!(report.quic_version.as_deref(), Some("0x1"));
}

#[test]
fn quench_client_rejects_untrusted_quiche_server() {
    untrusted_server_refused(Server::quiche, Peer::Quench, None);
}

#[test]
fn quiche_server_shuts_down_on_sigterm() {
    let _serial = serial();
    let quiche = Hosted::start(Server::quiche);
    let transfer = Transfer::perf(MIB, MIB).streams(2);
    assert_perf(&quiche.transfer(Peer::Quench, &transfer), &transfer);
    let status = quiche.server.shutdown();
    assert!(status.success(), "SIGTERM must exit 0, got {status}");
}
