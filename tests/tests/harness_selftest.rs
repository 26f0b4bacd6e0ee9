//! The harness proves itself without quench: quinn-peer client ↔ quinn-peer server, the
//! aioquic client → quinn-peer server, and msquic-peer client ↔ msquic-peer server, over
//! perf, hq-interop and echo. If these fail, the interop results against quench mean
//! nothing.

mod common;

use common::*;

struct Setup {
    dir: tempfile::TempDir,
    certs: Certs,
    server: Server,
}

impl Setup {
    fn quinn_server() -> Setup {
        let dir = temp_dir();
        let certs = Certs::generate(dir.path());
        let server = Server::quinn(&certs, dir.path(), dir.path());
        Setup { dir, certs, server }
    }

    fn msquic_server() -> Setup {
        let dir = temp_dir();
        let certs = Certs::generate(dir.path());
        let server = Server::msquic(&certs, dir.path(), dir.path());
        Setup { dir, certs, server }
    }

    fn run(&self, peer: Peer, transfer: &Transfer) -> Report {
        run_transfer(peer, self.server.addr, &self.certs.ca, transfer)
    }
}

#[test]
fn report_parser_enforces_the_contract() {
    let ok = r#"{"handshake_ms":1.0,"bytes_down":5,"bytes_up":0,"seconds":0.5,"throughput_mbps":0.1,"streams":1,"sha256":null,"key_updates":0}"#;
    let r = Report::parse(ok).unwrap();
    assert_eq!((r.bytes_down, r.streams, r.sha256), (5, 1, None));
    assert!(Report::parse(&ok.replace("\"bytes_up\":0,", "")).is_err());
    assert!(Report::parse(&ok.replace("null", "5")).is_err());
    assert!(Report::parse(&ok.replace("\"streams\":1", "\"streams\":-1")).is_err());
    assert!(Report::parse("hello").is_err());
}

#[test]
fn certs_chain_to_the_generated_ca() {
    let dir = temp_dir();
    let certs = Certs::generate(dir.path());
    let chain = std::fs::read_to_string(&certs.cert).unwrap();
    let ca = std::fs::read_to_string(&certs.ca).unwrap();
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(chain.ends_with(&ca), "the chain ends with the CA");
    assert!(std::fs::read_to_string(&certs.key)
        .unwrap()
        .contains("PRIVATE KEY"));
}

#[test]
fn quinn_perf_100_streams_with_key_update() {
    let _serial = serial();
    let setup = Setup::quinn_server();
    let transfer = Transfer::perf(32 * MIB, 16 * MIB)
        .streams(100)
        .key_update_after(4 * MIB);
    let report = setup.run(Peer::Quinn, &transfer);
    assert_perf(&report, &transfer);
    assert_eq!(report.key_updates, 1, "{report:?}");
}

#[test]
fn quinn_perf_many_connections() {
    let _serial = serial();
    let setup = Setup::quinn_server();
    let transfer = Transfer::perf(8 * MIB + 3, 4 * MIB + 1)
        .streams(3)
        .conns(4)
        .key_update_after(MIB);
    let report = setup.run(Peer::Quinn, &transfer);
    assert_perf(&report, &transfer);
    assert_eq!(
        report.key_updates, 4,
        "one forced update per connection: {report:?}"
    );
}

#[test]
fn quinn_hq_get_random_files() {
    let _serial = serial();
    let setup = Setup::quinn_server();
    let dir = setup.dir.path();
    random_file(dir, "a.bin", 3 * MIB as usize + 17);
    random_file(dir, "b.bin", 1000);
    let mut both = std::fs::read(dir.join("a.bin")).unwrap();
    both.extend(std::fs::read(dir.join("b.bin")).unwrap());

    let transfer = Transfer::hq(&["/a.bin", "/b.bin"]);
    let report = setup.run(Peer::Quinn, &transfer);
    assert_hq(&report, both.len() as u64, &sha256_hex(&both), 2);

    // A path naming no file but a number is answered with that many bytes.
    let report = setup.run(Peer::Quinn, &Transfer::hq(&["/123457"]));
    assert_eq!(report.bytes_down, 123457, "{report:?}");
}

#[test]
fn aioquic_perf_with_key_update() {
    let _serial = serial();
    let setup = Setup::quinn_server();
    let transfer = Transfer::perf(8 * MIB, 4 * MIB)
        .streams(4)
        .key_update_after(MIB);
    let report = setup.run(Peer::Aioquic, &transfer);
    assert_perf(&report, &transfer);
    assert_eq!(report.key_updates, 1, "{report:?}");
}

#[test]
fn aioquic_hq_get_random_file() {
    let _serial = serial();
    let setup = Setup::quinn_server();
    let sha = random_file(setup.dir.path(), "file.bin", 2 * MIB as usize + 5);
    let transfer = Transfer::hq(&["/file.bin"]);
    let report = setup.run(Peer::Aioquic, &transfer);
    assert_hq(&report, 2 * MIB + 5, &sha, 1);
}

#[test]
fn clients_reject_an_untrusted_server() {
    let _serial = serial();
    let setup = Setup::quinn_server();
    let other = temp_dir();
    let stranger = Certs::generate(other.path());
    for peer in [Peer::Quinn, Peer::Aioquic] {
        let transfer = Transfer::perf(1000, 0);
        run_client_expect_failure(client_command(
            peer,
            setup.server.addr,
            &stranger.ca,
            &transfer,
        ));
    }
}

#[test]
fn quinn_server_shuts_down_gracefully() {
    let _serial = serial();
    let setup = Setup::quinn_server();
    let report = setup.run(Peer::Quinn, &Transfer::perf(MIB, MIB));
    assert_eq!(report.bytes_down, MIB);
    let status = setup.server.shutdown();
    assert!(status.success(), "SIGTERM must exit 0, got {status}");
}

/// msquic-peer against itself: perf both ways over many streams and connections with a key
/// update on each, hq-interop with hashed files and a reset, and the DATAGRAM echo.
#[test]
fn msquic_peer_against_itself() {
    let _serial = serial();
    let setup = Setup::msquic_server();
    let transfer = Transfer::perf(16 * MIB + 3, 8 * MIB + 1)
        .streams(10)
        .conns(2)
        .key_update_after(MIB);
    let report = setup.run(Peer::Msquic, &transfer);
    assert_perf(&report, &transfer);
    assert_eq!(
        report.key_updates, 2,
        "one forced update per connection: {report:?}"
    );
    assert_hq_random_files(
        &Hosted {
            dir: setup.dir,
            certs: setup.certs,
            server: setup.server,
        },
        Peer::Msquic,
        1_000_003,
    );
    let setup = Setup::msquic_server();
    assert_all_datagrams_echoed(msquic_peer_bin(), &setup.server, &setup.certs.ca);
}
