//! aioquic ↔ quench: the aioquic client against `quench serve`, and `quench client` against
//! an aioquic server (tests/python/aioquic_server.py). Needs the release quench binary (or
//! `QUENCH_BIN`) and the aioquic venv from scripts/deps.sh (or `AIOQUIC_PYTHON`).

mod common;

use common::*;

// aioquic moves roughly 100-150 Mbit/s here (pure Python): sizes stay modest.

// ---- aioquic client → quench server ---------------------------------------------------------

#[test]
fn aioquic_perf_down_and_up() {
    let _serial = serial();
    let quench = Hosted::start(Server::quench);
    let transfer = Transfer::perf(16 * MIB, 8 * MIB).streams(4);
    assert_perf(&quench.transfer(Peer::Aioquic, &transfer), &transfer);
}

#[test]
fn aioquic_perf_two_connections() {
    let _serial = serial();
    let quench = Hosted::start(Server::quench);
    let transfer = Transfer::perf(4 * MIB + 1, MIB + 1).streams(2).conns(2);
    assert_perf(&quench.transfer(Peer::Aioquic, &transfer), &transfer);
}

/// aioquic reads no ECN marks, so its ACK frames carry no counts (RFC 9000 §13.4.1): quench's
/// validation fails after the test's ten marked packets (§13.4.2.1), it sends unmarked
/// from then on, and the transfer is untouched.
#[test]
fn aioquic_without_ecn_counts_fails_quench_validation_harmlessly() {
    let _serial = serial();
    let ecn = ecn_against(Peer::Aioquic);
    assert_eq!((ecn.capable, ecn.failures), (0, 1), "{ecn:?}");
    assert!(
        (1..=10).contains(&ecn.marked),
        "only the test's packets: {ecn:?}"
    );
}

#[test]
fn aioquic_hq_get_random_files() {
    let _serial = serial();
    let quench = Hosted::start(Server::quench);
    let dir = quench.dir.path();
    random_file(dir, "one.bin", 3 * MIB as usize + 1);
    random_file(dir, "two.bin", 4097);
    let mut bodies = std::fs::read(dir.join("one.bin")).unwrap();
    bodies.extend(std::fs::read(dir.join("two.bin")).unwrap());
    let report = quench.transfer(Peer::Aioquic, &Transfer::hq(&["/one.bin", "/two.bin"]));
    assert_hq(&report, bodies.len() as u64, &sha256_hex(&bodies), 2);
    hq_missing_file_is_reset(&quench, Peer::Aioquic);
}

#[test]
fn aioquic_forced_key_update_mid_transfer() {
    let _serial = serial();
    let quench = Hosted::start(Server::quench);
    let transfer = Transfer::perf(16 * MIB, 0).key_update_after(4 * MIB);
    let report = quench.transfer(Peer::Aioquic, &transfer);
    assert_perf(&report, &transfer);
    assert_eq!(report.key_updates, 1, "{report:?}");
}

#[test]
fn aioquic_rejects_quench_with_untrusted_certificate() {
    let _serial = serial();
    let quench = Hosted::start(Server::quench);
    let other = temp_dir();
    let stranger = Certs::generate(other.path());
    run_client_expect_failure(client_command(
        Peer::Aioquic,
        quench.server.addr,
        &stranger.ca,
        &Transfer::perf(1000, 0),
    ));
}

/// `quench serve --retry`: the server keeps no state for a client until it has proved its
/// address with a Retry token (RFC 9000 §8.1.2). The client follows the Retry, the
/// transfers complete, and the server counted one Retry per connection.
#[test]
fn aioquic_through_retry() {
    let _serial = serial();
    let dir = temp_dir();
    let certs = Certs::generate(dir.path());
    let server = Server::quench_with(&certs, dir.path(), dir.path(), &["--retry"]);
    let transfer = Transfer::perf(2 * MIB, MIB).conns(3);
    let report = run_transfer(Peer::Aioquic, server.addr, &certs.ca, &transfer);
    assert_perf(&report, &transfer);
    let stats = server.shutdown_stats();
    let total = |field: &str| -> u64 {
        stats["workers"]
            .as_array()
            .expect("workers")
            .iter()
            .map(|w| w[field].as_u64().unwrap_or(0))
            .sum()
    };
    assert_eq!(total("connections_accepted"), 3, "{stats}");
    assert_eq!(total("retries"), 3, "{stats}");
}

/// QUIC version 2 (RFC 9369) end to end: aioquic's first Initial is v2, quench answers in
/// v2 (its salts, HKDF labels, Retry key and packet types), and both transfers complete.
#[test]
fn aioquic_quic_v2() {
    let _serial = serial();
    let quench = Hosted::start(Server::quench);
    let transfer = Transfer::perf(4 * MIB, MIB).streams(2).conns(2);
    let mut cmd = client_command(
        Peer::Aioquic,
        quench.server.addr,
        &quench.certs.ca,
        &transfer,
    );
    cmd.args(["--quic-version", "2"]);
    let (report, stderr) = run_client_with_stderr(cmd, transfer.timeout());
    assert_perf(&report, &transfer);
    assert_eq!(
        stderr.matches("QUIC version 0x6b3343cf").count(),
        2,
        "both connections in v2: {stderr}"
    );
}

/// RFC 9000 §8.1.3 with aioquic: under `quench serve --retry`, a warm-up connection goes
/// through Retry and aioquic's handlers receive quench's NEW_TOKEN token and session
/// ticket; the next connection presents the token in `QuicConfiguration.token`, is accepted
/// without a Retry, and resumes the session (`session_ticket`; both sides count it).
#[test]
fn aioquic_skips_retry_and_resumes_with_token_and_ticket_from_quench() {
    returning_client_skips_retry_and_resumes(Peer::Aioquic, "NEW_TOKEN token received");
}

/// `quench serve --quic-version 1` accepts v1 alone: aioquic's v2 Initials get Version
/// Negotiation listing v1, aioquic starts over in v1 (RFC 9368 §2.1) and accepts quench's
/// version_information (v1 available) in its downgrade checks; both transfers complete in
/// v1 after one Version Negotiation each.
#[test]
fn aioquic_falls_back_from_v2_to_a_v1_only_quench() {
    let _serial = serial();
    let dir = temp_dir();
    let certs = Certs::generate(dir.path());
    let server = Server::quench_with(&certs, dir.path(), dir.path(), &["--quic-version", "1"]);
    let transfer = Transfer::perf(2 * MIB, MIB).streams(2).conns(2);
    let mut cmd = client_command(Peer::Aioquic, server.addr, &certs.ca, &transfer);
    cmd.args(["--quic-version", "2"]);
    let (report, stderr) = run_client_with_stderr(cmd, transfer.timeout());
    assert_perf(&report, &transfer);
    assert_eq!(
        stderr.matches("QUIC version 0x00000001").count(),
        2,
        "both connections in v1: {stderr}"
    );
    let totals = server.shutdown_worker_totals(&["connections_accepted", "version_negotiations"]);
    assert_eq!(
        totals,
        [2, 2],
        "connections accepted, Version Negotiations sent"
    );
}

/// Compatible version negotiation (RFC 9368 §2.3): under `quench serve --prefer-version 2`,
/// aioquic's v1 first flight lists v2 first among its Available Versions and is padded
/// (aioquic's quantum-readiness parameter) so its ClientHello spans two Initials. quench
/// waits for the whole ClientHello, answers in v2, and aioquic follows: both connections
/// run in v2 with no Version Negotiation, and aioquic's check that quench's Chosen Version
/// matches the packets' passes.
#[test]
fn aioquic_v1_first_flight_moves_to_v2_on_a_quench_server_preferring_it() {
    let _serial = serial();
    let dir = temp_dir();
    let certs = Certs::generate(dir.path());
    let server = Server::quench_with(&certs, dir.path(), dir.path(), &["--prefer-version", "2"]);
    let transfer = Transfer::perf(2 * MIB, MIB).streams(2).conns(2);
    let mut cmd = client_command(Peer::Aioquic, server.addr, &certs.ca, &transfer);
    cmd.args([
        "--quic-version",
        "1",
        "--offer-versions",
        "2,1",
        "--quantum-readiness",
    ]);
    let (report, stderr) = run_client_with_stderr(cmd, transfer.timeout());
    assert_perf(&report, &transfer);
    assert_eq!(
        stderr.matches("QUIC version 0x6b3343cf").count(),
        2,
        "both connections in v2: {stderr}"
    );
    assert_quench_moved_all_to_v2(server, 2);
}

/// v2 through `--retry`: the Retry carries RFC 9369's integrity tag key, the client's second
/// Initial is v2 again, and the connections complete.
#[test]
fn aioquic_quic_v2_through_retry() {
    let _serial = serial();
    let dir = temp_dir();
    let certs = Certs::generate(dir.path());
    let server = Server::quench_with(&certs, dir.path(), dir.path(), &["--retry"]);
    let transfer = Transfer::perf(2 * MIB, MIB).conns(2);
    let mut cmd = client_command(Peer::Aioquic, server.addr, &certs.ca, &transfer);
    cmd.args(["--quic-version", "2"]);
    let (report, stderr) = run_client_with_stderr(cmd, transfer.timeout());
    assert_perf(&report, &transfer);
    assert_eq!(
        stderr.matches("QUIC version 0x6b3343cf").count(),
        2,
        "{stderr}"
    );
    let stats = server.shutdown_stats();
    let retries: u64 = stats["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| w["retries"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(retries, 2, "{stats}");
}

/// SNI: quench picks among its certificates by the name aioquic asks for.
#[test]
fn aioquic_client_gets_the_certificate_for_the_name_it_asks_for() {
    certificate_chosen_by_server_name(Peer::Aioquic);
}

// ---- quench client → aioquic server ---------------------------------------------------------

/// QUIC version 2's number on the wire (RFC 9369 §3.1), as the aioquic server logs it.
const V2: &str = "0x6b3343cf";
const V1: &str = "0x00000001";

/// An aioquic server for `quench client` to talk to, with a CA-signed certificate and an
/// hq-interop root in a temp dir.
struct AioquicServer {
    dir: tempfile::TempDir,
    certs: Certs,
    server: Server,
}

impl AioquicServer {
    fn start(extra: &[&str]) -> AioquicServer {
        let dir = temp_dir();
        let certs = Certs::generate(dir.path());
        let server = Server::aioquic(&certs, dir.path(), dir.path(), extra);
        AioquicServer { dir, certs, server }
    }

    fn client(&self, transfer: &Transfer) -> std::process::Command {
        client_command(Peer::Quench, self.server.addr, &self.certs.ca, transfer)
    }

    fn quench(&self, transfer: &Transfer) -> Report {
        run_transfer(Peer::Quench, self.server.addr, &self.certs.ca, transfer)
    }

    /// Stops the server (SIGTERM must exit 0) and returns its per-connection summaries.
    fn connections(self) -> Vec<serde_json::Value> {
        aioquic_server_connections(&self.server.shutdown_stderr())
    }
}

/// Checks the aioquic server's view of a perf run: one summary per connection, each in
/// `version`, through a Retry iff `retry`, closed by the client with NO_ERROR, and the
/// answers and bytes adding up to what the client asked for and uploaded.
fn assert_server_saw(
    connections: &[serde_json::Value],
    transfer: &Transfer,
    version: &str,
    retry: bool,
) {
    assert_eq!(connections.len() as u64, transfer.conns, "{connections:#?}");
    for c in connections {
        assert_eq!(c["version"], version, "{c}");
        assert_eq!(c["alpn"], transfer.alpn, "{c}");
        assert_eq!(c["retry"], retry, "{c}");
        let reason = c["reason"].as_str().unwrap_or_default();
        assert!(
            reason.starts_with("error 0x0 "),
            "closed by the client: {c}"
        );
    }
    let total = |field: &str| -> u64 {
        connections
            .iter()
            .map(|c| c[field].as_u64().expect("a count"))
            .sum()
    };
    if transfer.alpn == "perf" {
        assert_eq!(total("streams"), transfer.streams * transfer.conns);
        assert_eq!(total("bytes_out"), transfer.down, "{connections:#?}");
        assert_eq!(total("bytes_in"), transfer.up, "{connections:#?}");
    }
}

#[test]
fn quench_client_perf_download_from_aioquic() {
    let _serial = serial();
    let aioquic = AioquicServer::start(&[]);
    let transfer = Transfer::perf(16 * MIB, 0);
    assert_perf(&aioquic.quench(&transfer), &transfer);
    assert_server_saw(&aioquic.connections(), &transfer, V1, false);
}

#[test]
fn quench_client_perf_upload_to_aioquic() {
    let _serial = serial();
    let aioquic = AioquicServer::start(&[]);
    let transfer = Transfer::perf(0, 8 * MIB);
    assert_perf(&aioquic.quench(&transfer), &transfer);
    assert_server_saw(&aioquic.connections(), &transfer, V1, false);
}

#[test]
fn quench_client_perf_both_ways_concurrent_streams_with_aioquic() {
    let _serial = serial();
    let aioquic = AioquicServer::start(&[]);
    let transfer = Transfer::perf(8 * MIB + 5, 4 * MIB + 3).streams(8);
    assert_perf(&aioquic.quench(&transfer), &transfer);
    assert_server_saw(&aioquic.connections(), &transfer, V1, false);
}

#[test]
fn quench_client_perf_two_connections_with_aioquic() {
    let _serial = serial();
    let aioquic = AioquicServer::start(&[]);
    let transfer = Transfer::perf(4 * MIB + 1, MIB + 1).streams(2).conns(2);
    assert_perf(&aioquic.quench(&transfer), &transfer);
    assert_server_saw(&aioquic.connections(), &transfer, V1, false);
}

/// 0-RTT from aioquic's client: its early requests and uploads are accepted and answered
/// (`client_early_data`).
#[test]
fn aioquic_early_data_accepted_by_quench() {
    client_early_data(Peer::Aioquic, false);
}

/// A replayed ticket: quench accepts its early data once; the replay gets a full handshake
/// and aioquic sends the refused 0-RTT data again (`client_early_data`).
#[test]
fn aioquic_replayed_early_data_accepted_once() {
    client_early_data(Peer::Aioquic, true);
}

/// 0-RTT the other way: `quench client --early-data` takes aioquic's session tickets from
/// warm-up connections, then both of the transfer's connections send their requests and
/// uploads as 0-RTT packets. aioquic accepts the early data of both, and the bytes add up.
#[test]
fn quench_client_early_data_accepted_by_aioquic() {
    let _serial = serial();
    let aioquic = AioquicServer::start(&[]);
    let transfer = Transfer::perf(2 * MIB, MIB).conns(2);
    let mut cmd = aioquic.client(&transfer);
    cmd.arg("--early-data");
    let report = run_client(cmd, transfer.timeout());
    assert_perf(&report, &transfer);
    assert_eq!(report.early_data, Some(2), "the client's view");
    assert!(report.zero_rtt_packets.unwrap_or(0) >= 2, "{report:?}");
    let connections = aioquic.connections();
    let early = connections
        .iter()
        .filter(|c| c["early_data"] == true)
        .count();
    assert_eq!(early, 2, "the server's view: {connections:#?}");
}

/// TLS resumption the other way: `quench client --resume` takes aioquic's session tickets
/// from warm-up connections, and both of the transfer's connections resume (RFC 8446 §2.2);
/// the aioquic server agrees, connection by connection, and the bytes add up.
#[test]
fn quench_client_resumes_aioquic_sessions() {
    let _serial = serial();
    let aioquic = AioquicServer::start(&[]);
    let transfer = Transfer::perf(2 * MIB, MIB).conns(2);
    let mut cmd = aioquic.client(&transfer);
    cmd.arg("--resume");
    let report = run_client(cmd, transfer.timeout());
    assert_perf(&report, &transfer);
    assert_eq!(report.resumed, Some(2), "the client's view");
    let connections = aioquic.connections();
    let resumed: Vec<_> = connections
        .iter()
        .filter(|c| c["resumed"] == true)
        .collect();
    assert_eq!(resumed.len(), 2, "{connections:#?}");
    let total = |field: &str| -> u64 { resumed.iter().map(|c| c[field].as_u64().unwrap()).sum() };
    assert_eq!(
        (total("bytes_out"), total("bytes_in")),
        (transfer.down, transfer.up)
    );
    assert!(
        connections
            .iter()
            .all(|c| c["resumed"] == true || c["streams"] == 0),
        "only warm-up connections do full handshakes: {connections:#?}"
    );
}

/// hq-interop GETs of random files come back byte-exact; a GET of a missing file, which
/// the aioquic server answers with RESET_STREAM, fails the client's run.
#[test]
fn quench_client_hq_get_random_files_from_aioquic() {
    let _serial = serial();
    let aioquic = AioquicServer::start(&[]);
    let dir = aioquic.dir.path();
    random_file(dir, "one.bin", 3 * MIB as usize + 1);
    random_file(dir, "two.bin", 4097);
    let mut bodies = std::fs::read(dir.join("one.bin")).unwrap();
    bodies.extend(std::fs::read(dir.join("two.bin")).unwrap());
    let report = aioquic.quench(&Transfer::hq(&["/one.bin", "/two.bin"]));
    assert_hq(&report, bodies.len() as u64, &sha256_hex(&bodies), 2);

    let out = run_client_expect_failure(aioquic.client(&Transfer::hq(&["/missing.bin"])));
    assert!(out.stderr.contains("reset by peer"), "{}", out.stderr);

    let connections = aioquic.connections();
    assert_eq!(connections.len(), 2, "{connections:#?}");
    assert_eq!(connections[0]["streams"], 2, "{connections:#?}");
    assert_eq!(
        connections[0]["bytes_out"],
        bodies.len(),
        "{connections:#?}"
    );
}

/// The quench client starts a key update after 4 MiB of a 16 MiB download; aioquic follows
/// it (it counts one key update initiated by its peer) and the transfer completes.
#[test]
fn quench_client_forced_key_update_mid_transfer_with_aioquic() {
    let _serial = serial();
    let aioquic = AioquicServer::start(&[]);
    let transfer = Transfer::perf(16 * MIB, 0).key_update_after(4 * MIB);
    let report = aioquic.quench(&transfer);
    assert_perf(&report, &transfer);
    assert_eq!(report.key_updates, 1, "{report:?}");
    let connections = aioquic.connections();
    assert_server_saw(&connections, &transfer, V1, false);
    assert_eq!(connections[0]["peer_key_updates"], 1, "{connections:#?}");
}

/// aioquic's `serve(retry=True)` answers every first Initial with a Retry: the quench client
/// follows it (token, new DCID, retry_source_connection_id checked) on all 3 connections.
#[test]
fn quench_client_through_aioquic_retry() {
    let _serial = serial();
    let aioquic = AioquicServer::start(&["--retry"]);
    let transfer = Transfer::perf(2 * MIB, MIB).conns(3);
    assert_perf(&aioquic.quench(&transfer), &transfer);
    assert_server_saw(&aioquic.connections(), &transfer, V1, true);
}

/// `quench client --quic-version 2` against aioquic (which accepts v1 and v2): both
/// connections run in QUIC v2 (RFC 9369) as aioquic reports them.
#[test]
fn quench_client_quic_v2_with_aioquic() {
    let _serial = serial();
    let aioquic = AioquicServer::start(&[]);
    let transfer = Transfer::perf(4 * MIB, MIB).streams(2).conns(2);
    let mut cmd = aioquic.client(&transfer);
    cmd.args(["--quic-version", "2"]);
    assert_perf(&run_client(cmd, transfer.timeout()), &transfer);
    assert_server_saw(&aioquic.connections(), &transfer, V2, false);
}

/// v2 through aioquic's Retry: the Retry's integrity tag uses RFC 9369's key, the client's
/// second Initial is v2 again, and both connections complete in v2.
#[test]
fn quench_client_quic_v2_through_aioquic_retry() {
    let _serial = serial();
    let aioquic = AioquicServer::start(&["--retry"]);
    let transfer = Transfer::perf(2 * MIB, MIB).conns(2);
    let mut cmd = aioquic.client(&transfer);
    cmd.args(["--quic-version", "2"]);
    assert_perf(&run_client(cmd, transfer.timeout()), &transfer);
    assert_server_saw(&aioquic.connections(), &transfer, V2, true);
}

/// Compatible version negotiation, quench as the client: `--quic-version 2,1
/// --original-version 1` sends a v1 first flight listing v2 first; aioquic's server moves
/// the connection to v2 (RFC 9368 §2.3) and quench follows on the first v2 Initial. Both
/// connections complete in v2 as both sides see it, without Version Negotiation.
#[test]
fn quench_client_follows_aioquic_to_v2_without_a_round_trip() {
    let _serial = serial();
    let aioquic = AioquicServer::start(&[]);
    let transfer = Transfer::perf(2 * MIB, MIB).streams(2).conns(2);
    let mut cmd = aioquic.client(&transfer);
    cmd.args(["--quic-version", "2,1", "--original-version", "1"]);
    let report = run_client(cmd, transfer.timeout());
    assert_perf(&report, &transfer);
    assert_client_moved_all_to_v2(&report, 2);
    assert_server_saw(&aioquic.connections(), &transfer, V2, false);
}

/// An aioquic server that accepts only v1 answers a v2 Initial with Version Negotiation:
/// the quench client offering v2 alone stops with `VersionMismatch`; offering `2,1` it
/// starts over in v1 (RFC 9368 §2.1) and completes, aioquic's version_information passing
/// its downgrade checks. The v2 attempts never became connections.
#[test]
fn quench_client_version_negotiation_from_aioquic() {
    let _serial = serial();
    let aioquic = AioquicServer::start(&["--quic-versions", "1"]);
    let transfer = Transfer::perf(MIB, MIB).conns(2);
    let mut cmd = aioquic.client(&transfer);
    cmd.args(["--quic-version", "2"]);
    let out = run_client_expect_failure(cmd);
    assert!(out.stderr.contains("VersionMismatch"), "{}", out.stderr);
    let mut cmd = aioquic.client(&transfer);
    cmd.args(["--quic-version", "2,1"]);
    let report = run_client(cmd, transfer.timeout());
    assert_perf(&report, &transfer);
    assert_eq!(report.quic_version.as_deref(), Some("0x1"));
    assert_server_saw(&aioquic.connections(), &transfer, V1, false);
}

#[test]
fn quench_client_rejects_untrusted_aioquic_server() {
    let _serial = serial();
    let aioquic = AioquicServer::start(&[]);
    let other = temp_dir();
    let stranger = Certs::generate(other.path());
    run_client_expect_failure(client_command(
        Peer::Quench,
        aioquic.server.addr,
        &stranger.ca,
        &Transfer::perf(1000, 0),
    ));
}

// ---- DATAGRAM frames (RFC 9221), both directions -------------------------------------------

#[test]
fn aioquic_client_datagrams_echoed_by_quench() {
    let _serial = serial();
    let quench = Hosted::start(Server::quench);
    let mut cmd = std::process::Command::new(aioquic_python());
    cmd.arg(aioquic_client_script())
        .args(["--connect", &quench.server.addr.to_string()])
        .arg("--ca")
        .arg(&quench.certs.ca);
    assert_datagrams_echoed(cmd, 1000);
}

#[test]
fn quench_client_datagrams_echoed_by_aioquic() {
    let _serial = serial();
    let aioquic = AioquicServer::start(&[]);
    let mut cmd = std::process::Command::new(quench_bin());
    cmd.arg("client")
        .args(["--connect", &aioquic.server.addr.to_string()])
        .arg("--ca")
        .arg(&aioquic.certs.ca);
    assert_datagrams_echoed(cmd, 1000);
}

// ---- HTTP/3 (ALPN h3), aioquic's own H3 layer, both directions ----------------------------

/// Runs `aioquic_h3.py client` against `server` for `paths` (all requests at once, one
/// stream each) plus `extra` flags; it must succeed. Returns the checked report and the
/// raw JSON (with its per-request `responses`).
fn aioquic_h3_client(
    server: std::net::SocketAddr,
    ca: &std::path::Path,
    paths: &[&str],
    extra: &[&str],
) -> (Report, serde_json::Value) {
    let mut cmd = std::process::Command::new(aioquic_python());
    cmd.arg(aioquic_h3_script())
        .arg("client")
        .args(["--connect", &server.to_string()])
        .arg("--ca")
        .arg(ca)
        .args(extra);
    for path in paths {
        cmd.args(["--get", path]);
    }
    let description = format!("{cmd:?}");
    let out = run_process(cmd, CLIENT_MAX_TIMEOUT);
    assert!(
        out.status.success(),
        "aioquic h3 client failed ({}): {description}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    let line = out.stdout.lines().last().unwrap_or_default();
    let report = Report::parse(line).unwrap_or_else(|e| panic!("{e}"));
    (report, serde_json::from_str(line).unwrap())
}

/// Checks the aioquic h3 client's per-request view: (status, content-length, body bytes).
fn assert_h3_responses(json: &serde_json::Value, expected: &[(u64, u64)]) {
    let responses = json["responses"].as_array().expect("responses");
    assert_eq!(responses.len(), expected.len(), "{json}");
    for (r, &(status, len)) in responses.iter().zip(expected) {
        assert_eq!(r["status"], status, "{r}");
        assert_eq!(r["content_length"], len, "{r}");
        assert_eq!(r["bytes"], len, "{r}");
    }
}

/// aioquic's H3 client GETs files of 0, 1, 16 KiB, 16 KiB + 1 and 3 MiB + 1 bytes and a
/// synthetic `/N` from `quench serve`, all at once on six streams: each response is 200 with
/// its content-length (which aioquic checks against the DATA it got), and the bodies'
/// SHA-256 in request order matches the sources.
#[test]
fn aioquic_h3_client_gets_files_from_quench() {
    let _serial = serial();
    let quench = Hosted::start(Server::quench);
    let dir = quench.dir.path();
    let files: &[(&str, usize)] = &[
        ("empty.bin", 0),
        ("one.bin", 1),
        ("16k.bin", 16 * 1024),
        ("16k1.bin", 16 * 1024 + 1),
        ("big.bin", 3 * MIB as usize + 1),
    ];
    let mut bodies = Vec::new();
    let mut expected = Vec::new();
    for &(name, len) in files {
        random_file(dir, name, len);
        bodies.extend(std::fs::read(dir.join(name)).unwrap());
        expected.push((200, len as u64));
    }
    bodies.extend(vec![0u8; 77_777]);
    expected.push((200, 77_777));
    let mut paths: Vec<String> = files.iter().map(|(n, _)| format!("/{n}")).collect();
    paths.push("/77777".into());
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    let (report, json) = aioquic_h3_client(quench.server.addr, &quench.certs.ca, &paths, &[]);
    assert_hq(
        &report,
        bodies.len() as u64,
        &sha256_hex(&bodies),
        paths.len(),
    );
    assert_h3_responses(&json, &expected);
}

/// 150 concurrent GETs of `/N` (N from 0 to ~100 KB) on one connection, more streams than
/// quench allows at first: all answered 200, byte counts and hash exact.
#[test]
fn aioquic_h3_client_many_concurrent_gets_from_quench() {
    let _serial = serial();
    let quench = Hosted::start(Server::quench);
    let sizes: Vec<u64> = (0..150u64).map(|i| (i * 7919) % 100_000).collect();
    let paths: Vec<String> = sizes.iter().map(|n| format!("/{n}")).collect();
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    let total: u64 = sizes.iter().sum();
    let (report, json) = aioquic_h3_client(quench.server.addr, &quench.certs.ca, &paths, &[]);
    assert_hq(
        &report,
        total,
        &sha256_hex(&vec![0u8; total as usize]),
        paths.len(),
    );
    let expected: Vec<(u64, u64)> = sizes.iter().map(|&n| (200, n)).collect();
    assert_h3_responses(&json, &expected);
}

/// A missing file is 404 (with content-length 0) while its neighbour on the same
/// connection is served; aioquic's client without `--any-status` fails on it.
#[test]
fn aioquic_h3_client_gets_404_from_quench() {
    let _serial = serial();
    let quench = Hosted::start(Server::quench);
    let dir = quench.dir.path();
    random_file(dir, "here.bin", 4097);
    let (_report, json) = aioquic_h3_client(
        quench.server.addr,
        &quench.certs.ca,
        &["/missing.bin", "/here.bin"],
        &["--any-status"],
    );
    let responses = json["responses"].as_array().expect("responses");
    assert_eq!(responses[0]["status"], 404, "{json}");
    assert_eq!(responses[1]["status"], 200, "{json}");
    assert_eq!(responses[1]["bytes"], 4097, "{json}");

    let mut cmd = std::process::Command::new(aioquic_python());
    cmd.arg(aioquic_h3_script())
        .arg("client")
        .args(["--connect", &quench.server.addr.to_string()])
        .arg("--ca")
        .arg(&quench.certs.ca)
        .args(["--get", "/missing.bin"]);
    let out = run_client_expect_failure(cmd);
    assert!(out.stderr.contains("status 404"), "{}", out.stderr);
}

/// Uploads: on one connection, aioquic POSTs random bodies of 0, 1 and 3 MiB + 7 bytes
/// beside a GET; quench answers each once its body is in, with the length and SHA-256 it
/// took, which equal what aioquic sent.
#[test]
fn aioquic_h3_client_uploads_to_quench() {
    let _serial = serial();
    let quench = Hosted::start(Server::quench);
    random_file(quench.dir.path(), "here.bin", 1000);
    let sizes = [0u64, 1, 3 * MIB + 7];
    let posts: Vec<String> = sizes
        .iter()
        .enumerate()
        .map(|(i, n)| format!("/upload/{i}={n}"))
        .collect();
    let mut extra = Vec::new();
    for p in &posts {
        extra.extend(["--post", p.as_str()]);
    }
    let (report, json) =
        aioquic_h3_client(quench.server.addr, &quench.certs.ca, &["/here.bin"], &extra);
    assert_eq!(report.bytes_up, sizes.iter().sum::<u64>(), "{json}");
    assert_h3_responses(&json, &[(200, 1000)]);
    let uploads = json["uploads"].as_array().expect("uploads");
    assert_eq!(uploads.len(), sizes.len(), "{json}");
    for (u, &n) in uploads.iter().zip(&sizes) {
        assert_eq!(u["status"], 200, "{u}");
        let answer: serde_json::Value =
            serde_json::from_str(u["response"].as_str().expect("response")).expect("JSON");
        assert_eq!(answer["bytes"], n, "{u}");
        assert_eq!(
            answer["sha256"], u["sha256"],
            "what quench took is what was sent: {u}"
        );
    }
}

/// An aioquic H3 server (tests/python/aioquic_h3.py) serving a directory.
struct AioquicH3Server {
    dir: tempfile::TempDir,
    certs: Certs,
    server: Server,
}

impl AioquicH3Server {
    fn start() -> AioquicH3Server {
        let dir = temp_dir();
        let certs = Certs::generate(dir.path());
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let server = Server::aioquic_h3(&certs, &root, dir.path());
        AioquicH3Server { dir, certs, server }
    }

    fn root(&self) -> std::path::PathBuf {
        self.dir.path().join("root")
    }

    fn client(&self, transfer: &Transfer) -> std::process::Command {
        client_command(Peer::Quench, self.server.addr, &self.certs.ca, transfer)
    }

    /// Stops the server (SIGTERM must exit 0) and returns the requests it logged.
    fn requests(self) -> Vec<serde_json::Value> {
        self.server
            .shutdown_stderr()
            .lines()
            .filter_map(|l| l.strip_prefix("aioquic_h3: request "))
            .map(|j| serde_json::from_str(j).unwrap_or_else(|e| panic!("{e}: {j}")))
            .collect()
    }
}

/// `quench client --alpn h3` GETs files of 0, 1, 16 KiB, 16 KiB + 1 and 3 MiB + 1 bytes
/// from aioquic's H3 server (bodies in DATA frames of up to 1 MiB, unlike quench's 16 KiB):
/// `sha256` and `bytes_down` match, and the server answered each request once with 200.
#[test]
fn quench_client_h3_gets_files_from_aioquic() {
    let _serial = serial();
    let aioquic = AioquicH3Server::start();
    let root = aioquic.root();
    let files: &[(&str, usize)] = &[
        ("empty.bin", 0),
        ("one.bin", 1),
        ("16k.bin", 16 * 1024),
        ("16k1.bin", 16 * 1024 + 1),
        ("big.bin", 3 * MIB as usize + 1),
    ];
    let mut bodies = Vec::new();
    for &(name, len) in files {
        random_file(&root, name, len);
        bodies.extend(std::fs::read(root.join(name)).unwrap());
    }
    let paths: Vec<String> = files.iter().map(|(n, _)| format!("/{n}")).collect();
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    let transfer = Transfer::h3(&paths);
    let report = run_client(aioquic.client(&transfer), transfer.timeout());
    assert_hq(
        &report,
        bodies.len() as u64,
        &sha256_hex(&bodies),
        files.len(),
    );
    let requests = aioquic.requests();
    assert_eq!(requests.len(), files.len(), "{requests:#?}");
    for (r, (name, len)) in requests.iter().zip(files) {
        assert_eq!(r["method"], "GET", "{r}");
        assert_eq!(r["path"], format!("/{name}"), "{r}");
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["bytes"], *len, "{r}");
    }
}

/// A GET of a file the aioquic server does not have: the quench client exits non-zero and
/// names the status.
#[test]
fn quench_client_h3_missing_file_from_aioquic_fails_with_404() {
    let _serial = serial();
    let aioquic = AioquicH3Server::start();
    let out = run_client_expect_failure(aioquic.client(&Transfer::h3(&["/missing.bin"])));
    assert!(out.stderr.contains("404"), "{}", out.stderr);
    let requests = aioquic.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert_eq!(requests[0]["status"], 404, "{requests:#?}");
}
