//! aioquic client → `quench serve`. Needs the release quench binary (or `QUENCH_BIN`) and the
//! aioquic venv from scripts/deps.sh (or `AIOQUIC_PYTHON`).

mod common;

use common::*;

struct QuenchServer {
    dir: tempfile::TempDir,
    certs: Certs,
    server: Server,
}

impl QuenchServer {
    fn start() -> QuenchServer {
        let dir = temp_dir();
        let certs = Certs::generate(dir.path());
        let server = Server::quench(&certs, dir.path(), dir.path());
        QuenchServer { dir, certs, server }
    }

    fn aioquic(&self, transfer: &Transfer) -> Report {
        run_transfer(Peer::Aioquic, self.server.addr, &self.certs.ca, transfer)
    }
}

// aioquic moves roughly 100-150 Mbit/s here (pure Python): sizes stay modest.

#[test]
fn aioquic_perf_down_and_up() {
    let _serial = serial();
    let quench = QuenchServer::start();
    let transfer = Transfer::perf(16 * MIB, 8 * MIB).streams(4);
    assert_perf(&quench.aioquic(&transfer), &transfer);
}

#[test]
fn aioquic_perf_two_connections() {
    let _serial = serial();
    let quench = QuenchServer::start();
    let transfer = Transfer::perf(4 * MIB + 1, MIB + 1).streams(2).conns(2);
    assert_perf(&quench.aioquic(&transfer), &transfer);
}

#[test]
fn aioquic_hq_get_random_files() {
    let _serial = serial();
    let quench = QuenchServer::start();
    let dir = quench.dir.path();
    random_file(dir, "one.bin", 3 * MIB as usize + 1);
    random_file(dir, "two.bin", 4097);
    let mut bodies = std::fs::read(dir.join("one.bin")).unwrap();
    bodies.extend(std::fs::read(dir.join("two.bin")).unwrap());
    let report = quench.aioquic(&Transfer::hq(&["/one.bin", "/two.bin"]));
    assert_hq(&report, bodies.len() as u64, &sha256_hex(&bodies), 2);
}

#[test]
fn aioquic_forced_key_update_mid_transfer() {
    let _serial = serial();
    let quench = QuenchServer::start();
    let transfer = Transfer::perf(16 * MIB, 0).key_update_after(4 * MIB);
    let report = quench.aioquic(&transfer);
    assert_perf(&report, &transfer);
    assert_eq!(report.key_updates, 1, "{report:?}");
}

#[test]
fn aioquic_rejects_quench_with_untrusted_certificate() {
    let _serial = serial();
    let quench = QuenchServer::start();
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
    let quench = QuenchServer::start();
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
