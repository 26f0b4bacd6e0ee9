//! Path MTU discovery over a real path: `quench serve` (UDP datapath) in one network
//! namespace whose veth end has MTU 1300, clients in another at MTU 1500. A 1452-byte
//! datagram from a client vanishes at the server's veth without an error or ICMP; the
//! server's own larger datagrams fail in its kernel (EMSGSIZE). Both the quinn and the
//! quench client move perf transfers both ways byte-exact, each end settles on a size the
//! path carries, and the counters show the ceiling was tried and lost.
//!
//! Needs root (namespaces) and the release quench binary (or `QUENCH_BIN`); without them
//! the test fails, it never skips. The namespaces are deleted by name, also on failure.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::netns::{require_root, NetnsPair, NetnsSpec, NsServer};
use common::*;
use serde_json::Value;

const SERVER_IP: &str = "10.97.0.1";
const CLIENT_IP: &str = "10.97.0.2";
/// IP MTU of the server's link; the largest UDP payload over IPv4 is 28 bytes less.
const LINK_MTU: u32 = 1300;
const PATH_MAX_PAYLOAD: u64 = LINK_MTU as u64 - 28;

fn server_addr() -> SocketAddr {
    format!("{SERVER_IP}:4433").parse().unwrap()
}

fn worker_field(stats: &Value, field: &str) -> Vec<u64> {
    stats["workers"]
        .as_array()
        .expect("workers list")
        .iter()
        .map(|w| {
            w[field]
                .as_u64()
                .unwrap_or_else(|| panic!("{field} in {w}"))
        })
        .collect()
}

/// Waits until the server has no connection left (each drained and counted).
fn wait_until_no_connections(server: &NsServer) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open: u64 = worker_field(&server.stats(), "connections").iter().sum();
        if open == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{open} connections never closed");
        thread::sleep(Duration::from_millis(100));
    }
}

fn topology(tag: &str) -> NetnsPair {
    require_root("path_mtu needs root: it creates network namespaces");
    NetnsPair::new(&NetnsSpec {
        prefix: "qm",
        tag,
        queues: 1,
        server_cidr: &format!("{SERVER_IP}/24"),
        client_cidr: &format!("{CLIENT_IP}/24"),
    })
}

/// `quench serve` (one worker, UDP) in the server namespace.
fn start_server(t: &NetnsPair, certs: &Certs, dir: &std::path::Path) -> NsServer {
    let mut serve = Command::new(quench_bin());
    serve
        .args(["serve", "--listen", &server_addr().to_string()])
        .args(["--workers", "1"])
        .arg("--cert")
        .arg(&certs.cert)
        .arg("--key")
        .arg(&certs.key)
        .env("RUST_LOG", "info");
    let (server, line) = NsServer::start(&t.srv, &serve, dir.join("server.stderr.log"));
    assert!(
        line.contains(&format!("listening on {}", server_addr())),
        "{line}"
    );
    server
}

#[test]
fn quinn_and_quench_clients_settle_under_a_smaller_path_mtu() {
    let _serial = serial();
    let t = topology("p");
    t.set_server_mtu(LINK_MTU);
    let dir = temp_dir();
    let certs = Certs::generate(dir.path());
    let server = start_server(&t, &certs, dir.path());

    let transfer = Transfer::perf(8 << 20, 4 << 20).streams(2);
    for peer in [Peer::Quinn, Peer::Quench] {
        let cmd = client_command(peer, server_addr(), &certs.cert, &transfer);
        let report = run_client(NetnsPair::exec_in(&t.cli, &cmd), transfer.timeout());
        assert_perf(&report, &transfer);
        let size = report
            .max_datagram_size
            .unwrap_or_else(|| panic!("{peer:?} reports its datagram size"));
        eprintln!("{peer:?} client settled at {size} bytes");
        assert!(
            size <= PATH_MAX_PAYLOAD,
            "{peer:?} used {size}-byte datagrams on a path carrying {PATH_MAX_PAYLOAD}"
        );
        // Above the 1200 base: its probes reached quench and were acknowledged.
        assert!(size > 1200, "{peer:?} never got past the base size");
        if matches!(peer, Peer::Quench) {
            assert!(
                size >= PATH_MAX_PAYLOAD - 20,
                "quench settles within its 20-byte search granularity: {size}"
            );
        }
    }

    wait_until_no_connections(&server);
    let stats = server.shutdown();
    eprintln!("server stats: {stats}");
    let peak = worker_field(&stats, "max_datagram_size_peak")[0];
    assert!(
        (PATH_MAX_PAYLOAD - 20..=PATH_MAX_PAYLOAD).contains(&peak),
        "server settled at {peak}"
    );
    let lost = worker_field(&stats, "pmtu_probes_lost")[0];
    assert!(
        lost >= 6,
        "the 1452-byte ceiling was tried three times per connection: {lost}"
    );
    assert_eq!(worker_field(&stats, "pmtu_black_holes")[0], 0);
    assert_eq!(worker_field(&stats, "connections_accepted")[0], 2);
}

/// The server's link shrinks from 1500 to 1300 in the middle of a transfer both ways:
/// the size the server had validated stops getting out (its kernel refuses the GSO sends
/// with EMSGSIZE), black hole detection drops it to the base, discovery finds the
/// new limit, and the transfer completes byte-exact with GSO still in use. (The client's
/// GSO sends still cross: a veth lets segmentation-offloaded packets past the MTU check,
/// so only the server's side sees the shrink here.)
#[test]
fn a_link_that_shrinks_mid_transfer_is_detected_and_the_transfer_completes() {
    let _serial = serial();
    let t = topology("s");
    let dir = temp_dir();
    let certs = Certs::generate(dir.path());
    let server = start_server(&t, &certs, dir.path());

    let transfer = Transfer::perf(1 << 30, 1 << 30).streams(2);
    let cmd = client_command(Peer::Quench, server_addr(), &certs.cert, &transfer);
    let client = NetnsPair::exec_in(&t.cli, &cmd);
    let timeout = transfer.timeout();
    let run = thread::spawn(move || run_client(client, timeout));
    // Under way at full size first.
    let deadline = Instant::now() + Duration::from_secs(20);
    while worker_field(&server.stats(), "datagrams_tx")[0] < 2_000 {
        assert!(Instant::now() < deadline, "the transfer never got going");
        thread::sleep(Duration::from_millis(20));
    }
    t.set_server_mtu(LINK_MTU);
    let report = run.join().expect("client thread");
    assert_perf(&report, &transfer);
    let client_size = report.max_datagram_size.expect("quench reports its size");

    wait_until_no_connections(&server);
    let log = server.stderr();
    let stats = server.shutdown();
    eprintln!("client settled at {client_size}; server stats: {stats}");
    assert!(
        worker_field(&stats, "pmtu_black_holes")[0] >= 1,
        "the server noticed: {stats}"
    );
    let peak = worker_field(&stats, "max_datagram_size_peak")[0];
    assert!(
        (1200..=PATH_MAX_PAYLOAD).contains(&peak),
        "the server ended at a size the new path carries: {peak}"
    );
    assert!(!log.contains("disabling GSO"), "GSO was turned off:\n{log}");
}
