//! `quench serve --datapath xdp` end to end, in a veth topology between two network
//! namespaces this test creates and deletes by name (also when it fails): quinn and quench
//! clients in one namespace move perf and hq-interop transfers through the XDP program and
//! AF_XDP sockets of a quench server in the other, and the counters prove the path — the
//! program redirected the packets, the sockets received them, the server namespace's
//! kernel UDP stack saw none of them.
//!
//! Needs root (namespaces, XDP, AF_XDP) and the release quench binary (or `QUENCH_BIN`).
//! Without them these tests fail; they never skip.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const SERVER_IP: &str = "10.98.0.1";
const CLIENT_IP: &str = "10.98.0.2";
const PORT: u16 = 4433;

fn server_addr() -> SocketAddr {
    format!("{SERVER_IP}:{PORT}").parse().unwrap()
}

// ---- topology ---------------------------------------------------------------------------------

use common::netns::{ip, require_root, NetnsPair as Topology, NetnsSpec, NsServer};

/// Two namespaces joined by a veth pair with `queues` RX/TX queues a side.
fn topology(tag: &str, queues: u32) -> Topology {
    require_root("xdp_e2e needs root: network namespaces, XDP and AF_XDP");
    Topology::new(&NetnsSpec {
        prefix: "qx",
        tag,
        queues,
        server_cidr: &format!("{SERVER_IP}/24"),
        client_cidr: &format!("{CLIENT_IP}/24"),
    })
}

/// True if any XDP program is attached to the server end.
fn xdp_attached(t: &Topology) -> bool {
    let out = ip(&["-n", &t.srv, "-d", "link", "show", "dev", &t.srv_if]);
    out.contains("prog/xdp") || out.contains(" xdp")
}

/// Kernel UDP counters of a process's network namespace (/proc/PID/net/snmp).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct KernelUdp {
    in_datagrams: u64,
    no_ports: u64,
    in_errors: u64,
}

fn kernel_udp(pid: u32) -> KernelUdp {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/snmp"))
        .expect("reading the server namespace's /proc/net/snmp");
    parse_kernel_udp(&text)
}

/// The same counters for a namespace, read through `ip netns exec`.
fn kernel_udp_in(ns: &str) -> KernelUdp {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "cat", "/proc/net/snmp"])
        .output()
        .expect("reading a namespace's /proc/net/snmp");
    assert!(out.status.success(), "cat /proc/net/snmp in {ns}");
    parse_kernel_udp(&String::from_utf8_lossy(&out.stdout))
}

fn parse_kernel_udp(text: &str) -> KernelUdp {
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = udp.next().expect("Udp header").split_whitespace().collect();
    let values: Vec<u64> = udp
        .next()
        .expect("Udp values")
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().expect("numeric Udp counter"))
        .collect();
    let get = |name: &str| {
        let i = names.iter().position(|n| *n == name).expect(name) - 1;
        values[i]
    };
    KernelUdp {
        in_datagrams: get("InDatagrams"),
        no_ports: get("NoPorts"),
        in_errors: get("InErrors"),
    }
}

// ---- the server -------------------------------------------------------------------------------

/// `quench serve --datapath xdp` inside the server namespace, ready to serve.
fn start_xdp_server(t: &Topology, certs: &Certs, root: &Path, extra: &[&str]) -> NsServer {
    start_xdp_server_on(t, server_addr(), certs, root, extra)
}

/// `start_xdp_server` with `--listen listen`; an unspecified address serves every address
/// of the interface, and the server names the first IPv4 one as its own.
fn start_xdp_server_on(
    t: &Topology,
    listen: SocketAddr,
    certs: &Certs,
    root: &Path,
    extra: &[&str],
) -> NsServer {
    let mut serve = Command::new(quench_bin());
    serve
        .args(["serve", "--datapath", "xdp", "--iface", &t.srv_if])
        .args(["--listen", &listen.to_string()])
        .arg("--cert")
        .arg(&certs.cert)
        .arg("--key")
        .arg(&certs.key)
        .arg("--root")
        .arg(root)
        .args(extra)
        .env("RUST_LOG", "info");
    let (server, line) = NsServer::start(&t.srv, &serve, root.join("quench-xdp.stderr.log"));
    assert!(
        line.contains(&format!("listening on {}", server_addr())) && line.contains("xdp on"),
        "unexpected first line {line:?}"
    );
    server
}

/// Runs `peer`'s client inside the client namespace; it must succeed.
fn transfer_in(t: &Topology, peer: Peer, ca: &Path, transfer: &Transfer) -> Report {
    let cmd = client_command(peer, server_addr(), ca, transfer);
    let report = run_client(Topology::exec_in(&t.cli, &cmd), transfer.timeout());
    if transfer.alpn == "perf" {
        assert_perf(&report, transfer);
    }
    report
}

fn u(v: &Value, path: &[&str]) -> u64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_u64()
        .unwrap_or_else(|| panic!("stats field {path:?} missing in {v}"))
}

fn sum(v: &Value, list: &str, field: &str) -> u64 {
    let items = match list {
        "workers" => &v["workers"],
        _ => &v["xdp"]["sockets"],
    };
    items
        .as_array()
        .unwrap_or_else(|| panic!("no {list} in {v}"))
        .iter()
        .map(|w| w[field].as_u64().unwrap_or(0))
        .sum()
}

/// What every run must show: all traffic went XDP → AF_XDP, nothing lost in between, every
/// frame accounted for.
fn assert_xdp_path(stats: &Value, min_packets: u64) {
    let redirected = u(stats, &["xdp", "program", "redirect"])
        + u(stats, &["xdp", "program", "redirect_missteered"]);
    assert!(
        redirected >= min_packets,
        "program redirected only {redirected} packets: {stats}"
    );
    for f in ["redirect_failed", "pass_no_socket"] {
        assert_eq!(u(stats, &["xdp", "program", f]), 0, "{f}: {stats}");
    }
    let rx_workers = sum(stats, "workers", "datagrams_rx");
    let rx_sockets = sum(stats, "sockets", "rx_packets");
    assert_eq!(
        rx_workers, rx_sockets,
        "workers received what their sockets delivered: {stats}"
    );
    // Every redirected packet reached a socket and was delivered or handed over (the
    // kernel counts what it could not queue as rx_dropped / rx_ring_full).
    let arrived = rx_sockets - sum(stats, "sockets", "rx_from_handoff")
        + sum(stats, "sockets", "rx_handed_off")
        + sum(stats, "sockets", "handoff_dropped")
        + sum(stats, "sockets", "rx_malformed");
    // Bursts can fill an RX ring (QUIC recovers the loss); the kernel counts those.
    let kernel_dropped =
        sum(stats, "sockets", "kernel_rx_dropped") + sum(stats, "sockets", "kernel_rx_ring_full");
    assert_eq!(
        arrived + kernel_dropped,
        redirected,
        "redirected packets all accounted for at the sockets: {stats}"
    );
    assert!(sum(stats, "sockets", "tx_packets") > 0, "{stats}");
    assert_eq!(sum(stats, "sockets", "tx_no_neighbor"), 0, "{stats}");
    assert_eq!(sum(stats, "sockets", "bad_descs"), 0, "{stats}");
    assert_eq!(sum(stats, "sockets", "frame_violations"), 0, "{stats}");
    assert_eq!(sum(stats, "sockets", "kernel_invalid_descs"), 0, "{stats}");
}

// ---- tests ------------------------------------------------------------------------------------

/// One worker on one queue: quinn and quench clients, 100 MiB each way over 50 connections
/// each, plus an hq-interop download checked by hash; the server namespace's kernel UDP
/// stack receives nothing while it runs.
#[test]
fn quinn_and_quench_clients_over_af_xdp() {
    let _serial = serial();
    let t = topology("a", 1);
    let dir = temp_dir();
    let certs = Certs::generate(dir.path());
    let body_sha = random_file(dir.path(), "blob.bin", 3 * MIB as usize + 17);
    let server = start_xdp_server(&t, &certs, dir.path(), &["--workers", "1"]);
    assert!(xdp_attached(&t), "program not attached while serving");
    let kernel_before = kernel_udp(server.pid());

    let started = Instant::now();
    let transfer = Transfer::perf(100 * MIB, 100 * MIB).conns(50);
    let quinn = transfer_in(&t, Peer::Quinn, &certs.ca, &transfer);
    let quench = transfer_in(&t, Peer::Quench, &certs.ca, &transfer);
    let hq = transfer_in(&t, Peer::Quinn, &certs.ca, &Transfer::hq(&["/blob.bin"]));
    assert_hq(&hq, 3 * MIB + 17, &body_sha, 1);
    eprintln!(
        "AF_XDP: quinn client {:.0} Mbit/s, quench client {:.0} Mbit/s (100 MiB each way, 50 conns); total {:?}",
        quinn.throughput_mbps,
        quench.throughput_mbps,
        started.elapsed()
    );

    let live = server.stats();
    assert_eq!(live["datapath"], "xdp", "{live}");
    assert_eq!(
        sum(&live, "workers", "connections_accepted"),
        101,
        "SIGUSR1 stats line: {live}"
    );
    let kernel_after = kernel_udp(server.pid());
    assert_eq!(
        kernel_before, kernel_after,
        "the kernel UDP stack of the server namespace saw datagrams"
    );
    let stats = server.shutdown();
    assert!(!xdp_attached(&t), "program left attached after shutdown");
    assert_eq!(
        sum(&stats, "workers", "connections_accepted"),
        101,
        "{stats}"
    );
    // 200 MiB each way in ≤ 1472-byte datagrams, about a third of them ACK-only the other
    // way: well over 150,000 packets in.
    assert_xdp_path(&stats, 150_000);
}

/// Checks that both workers of a two-worker server took connections and that the counters
/// add up; returns the stats.
fn assert_two_workers(stats: &Value, conns: u64) {
    let workers = stats["workers"].as_array().expect("workers");
    assert_eq!(workers.len(), 2, "{stats}");
    let accepted: Vec<u64> = workers
        .iter()
        .map(|w| w["connections_accepted"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(accepted.iter().sum::<u64>(), conns, "{stats}");
    assert!(
        accepted.iter().all(|&a| a > 0),
        "connections did not spread over both workers: {accepted:?}"
    );
    let hits = stats["xdp"]["worker_hits"].as_array().expect("worker_hits");
    assert!(
        hits.iter().all(|h| h.as_u64().unwrap_or(0) > 0),
        "the program steered to one worker only: {stats}"
    );
    assert_eq!(
        sum(stats, "sockets", "rx_handed_off"),
        sum(stats, "sockets", "rx_from_handoff"),
        "hand-offs lost: {stats}"
    );
    // A full hand-off queue drops like a full RX ring (QUIC recovers); it must stay rare.
    assert!(
        sum(stats, "sockets", "handoff_dropped") * 50 <= sum(stats, "sockets", "rx_handed_off"),
        "too many hand-offs dropped: {stats}"
    );
}

/// Two workers sharing one queue (XDP_SHARED_UMEM): the program picks the socket by CID,
/// connections spread over both workers, every transfer completes. The CIDs have a QUIC-LB
/// layout other than the default (3-byte server id, 16-byte CIDs), so the program finds
/// the worker byte where the configuration puts it.
#[test]
fn two_workers_share_one_queue() {
    let _serial = serial();
    let t = topology("q1", 1);
    let dir = temp_dir();
    let certs = Certs::generate(dir.path());
    let server = start_xdp_server(
        &t,
        &certs,
        dir.path(),
        &[
            "--workers",
            "2",
            "--queues",
            "0",
            "--quic-lb-server-id",
            "c4605e",
            "--quic-lb-nonce-len",
            "12",
        ],
    );
    let transfer = Transfer::perf(24 * MIB, 8 * MIB).streams(2).conns(16);
    transfer_in(&t, Peer::Quench, &certs.ca, &transfer);
    transfer_in(&t, Peer::Quinn, &certs.ca, &transfer);
    let stats = server.shutdown();
    assert!(!xdp_attached(&t), "program left attached after shutdown");
    let binds: Vec<&str> = stats["xdp"]["sockets"]
        .as_array()
        .expect("sockets")
        .iter()
        .map(|s| s["bind"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(binds, ["copy", "shared"], "{stats}");
    assert_two_workers(&stats, 32);
    // Same queue: the program delivers to the owner directly, nothing is mis-steered.
    assert_eq!(u(&stats, &["xdp", "program", "redirect_missteered"]), 0);
    assert_eq!(sum(&stats, "sockets", "rx_handed_off"), 0, "{stats}");
    assert_xdp_path(&stats, 10_000);
}

/// 0-RTT over AF_XDP, two workers on one queue: the program steers a client's 0-RTT
/// packets by the DCID its Initial chose, so they reach the worker that accepted its
/// early data. quinn's and quench's clients each take tickets on a warm-up connection,
/// then send their requests and uploads as 0-RTT on 2 connections; every one's early
/// data is accepted (both views), the server processed the 0-RTT packets, and the kernel
/// UDP stack saw none of it.
#[test]
fn early_data_over_af_xdp() {
    let _serial = serial();
    let t = topology("z", 1);
    let dir = temp_dir();
    let certs = Certs::generate(dir.path());
    let server = start_xdp_server(
        &t,
        &certs,
        dir.path(),
        &["--workers", "2", "--queues", "0", "--early-data", "1024"],
    );
    let kernel_before = kernel_udp(server.pid());
    let transfer = Transfer::perf(4 * MIB, MIB).conns(2);
    for peer in [Peer::Quinn, Peer::Quench] {
        let mut cmd = client_command(peer, server_addr(), &certs.ca, &transfer);
        cmd.arg("--early-data");
        let report = run_client(Topology::exec_in(&t.cli, &cmd), transfer.timeout());
        assert_perf(&report, &transfer);
        assert_eq!(report.early_data, Some(2), "{peer:?}: the client's view");
    }
    assert_eq!(
        kernel_before,
        kernel_udp(server.pid()),
        "the kernel saw datagrams"
    );
    let stats = server.shutdown();
    assert!(!xdp_attached(&t), "program left attached after shutdown");
    assert_eq!(sum(&stats, "workers", "connections_accepted"), 6, "{stats}");
    assert_eq!(sum(&stats, "workers", "early_data_accepted"), 4, "{stats}");
    assert!(sum(&stats, "workers", "zero_rtt_packets") >= 8, "{stats}");
    assert_xdp_path(&stats, 1_000);
}

/// A quinn client with one source port per connection (so RSS spreads them over both
/// queues), plus `extra` arguments, running `transfer` in the client namespace.
fn quinn_spread(cli_ns: &str, ca: &Path, transfer: &Transfer, extra: &[&str]) -> Report {
    let mut cmd = client_command(Peer::Quinn, server_addr(), ca, transfer);
    cmd.arg("--socket-per-conn").args(extra);
    let report = run_client(Topology::exec_in(cli_ns, &cmd), transfer.timeout());
    assert_perf(&report, transfer);
    report
}

fn start_two_queue_server(t: &Topology, certs: &Certs, dir: &Path) -> NsServer {
    start_xdp_server(t, certs, dir, &["--workers", "2", "--queues", "0,1"])
}

fn assert_two_copy_sockets(stats: &Value) {
    let binds: Vec<&str> = stats["xdp"]["sockets"]
        .as_array()
        .expect("sockets")
        .iter()
        .map(|s| s["bind"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(binds, ["copy", "copy"], "{stats}");
}

/// One queue per worker on a two-queue veth: a new connection goes to the worker of the
/// queue its 4-tuple arrives on, so with connections spread over both queues nothing is
/// mis-steered and nothing is handed off between workers.
#[test]
fn two_workers_two_queues_keep_connections_on_their_queue() {
    let _serial = serial();
    let t = topology("q2", 2);
    let dir = temp_dir();
    let certs = Certs::generate(dir.path());
    let server = start_two_queue_server(&t, &certs, dir.path());
    let transfer = Transfer::perf(24 * MIB, 8 * MIB).streams(2).conns(16);
    // quinn: 16 source ports, spread by RSS; quench: one port, all on one queue.
    let quinn = {
        let (t_cli, ca) = (t.cli.clone(), certs.ca.clone());
        let transfer = transfer.clone();
        thread::spawn(move || quinn_spread(&t_cli, &ca, &transfer, &[]))
    };
    transfer_in(&t, Peer::Quench, &certs.ca, &transfer);
    quinn.join().expect("quinn client");
    let stats = server.shutdown();
    assert!(!xdp_attached(&t), "program left attached after shutdown");
    assert_two_copy_sockets(&stats);
    assert_two_workers(&stats, 32);
    assert_eq!(
        (
            u(&stats, &["xdp", "program", "redirect_missteered"]),
            sum(&stats, "sockets", "rx_handed_off")
        ),
        (0, 0),
        "connections left their arrival queue: {stats}"
    );
    assert_xdp_path(&stats, 10_000);
}

/// Clients that rebind mid-transfer (a NAT rebinding: new source port, so possibly the
/// other queue): the program sends their packets to the arrival queue's socket, which
/// hands them to the owner in user space; every transfer completes, nothing is lost.
#[test]
fn two_workers_two_queues_hand_off_after_rebinding() {
    let _serial = serial();
    let t = topology("q2r", 2);
    let dir = temp_dir();
    let certs = Certs::generate(dir.path());
    let server = start_two_queue_server(&t, &certs, dir.path());
    // 1 MiB down per connection; each moves to a new port after 256 KiB. A connection
    // lands on the other queue with probability 1/2: all 16 staying put is 2^-16.
    let transfer = Transfer::perf(16 * MIB, 4 * MIB).streams(2).conns(16);
    quinn_spread(&t.cli, &certs.ca, &transfer, &["--rebind-after", "262144"]);
    let stats = server.shutdown();
    assert!(!xdp_attached(&t), "program left attached after shutdown");
    assert_two_copy_sockets(&stats);
    assert_two_workers(&stats, 16);
    assert!(
        u(&stats, &["xdp", "program", "redirect_missteered"]) > 0
            && sum(&stats, "sockets", "rx_handed_off") > 0,
        "no rebound connection's packets were handed off: {stats}"
    );
    // 4 MiB up in full datagrams plus ACKs for 16 MiB down.
    assert_xdp_path(&stats, 1_000);
}

/// Runs `quench serve --datapath xdp` with `prefix` before it (e.g. dropping privileges)
/// and expects it to fail quickly; returns its stderr.
fn serve_expect_failure(t: &Topology, prefix: &[&str], args: &[&str]) -> String {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &t.srv])
        .args(prefix)
        .arg(quench_bin());
    cmd.args(["serve", "--datapath", "xdp"]).args(args);
    let out = run_process(cmd, Duration::from_secs(30));
    assert!(
        !out.status.success(),
        "quench serve unexpectedly succeeded:\n{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains("listening on"),
        "claimed to listen: {}",
        out.stdout
    );
    out.stderr
}

/// Failures name what is missing and leave nothing attached; a crashed run's program goes
/// with it; a stale program attached by someone else is replaced.
#[test]
fn failures_are_clear_and_leave_nothing_attached() {
    let _serial = serial();
    let t = topology("e", 1);
    let listen = server_addr().to_string();
    let base = ["--iface", t.srv_if.as_str(), "--listen", listen.as_str()];

    // No such interface.
    let err = serve_expect_failure(&t, &[], &["--iface", "nosuchif0", "--listen", &listen]);
    assert!(err.contains("interface not found: nosuchif0"), "{err}");

    // Root without capabilities (empty bounding set): a permission error naming them.
    let err = serve_expect_failure(
        &t,
        &["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--"],
        &base,
    );
    assert!(
        err.contains("permission denied") && err.contains("CAP_NET_RAW"),
        "{err}"
    );
    assert!(
        !xdp_attached(&t),
        "left attached after a permission failure"
    );

    // A listen address that is not the interface's.
    let err = serve_expect_failure(
        &t,
        &[],
        &["--iface", &t.srv_if, "--listen", "10.1.2.3:4433"],
    );
    assert!(err.contains("is not an address of"), "{err}");
    assert!(!xdp_attached(&t));

    // A queue the interface does not have.
    let mut args = base.to_vec();
    args.extend(["--queues", "5", "--workers", "1"]);
    let err = serve_expect_failure(&t, &[], &args);
    assert!(err.contains("RX queue 5 out of range"), "{err}");
    assert!(!xdp_attached(&t));

    // SIGKILL: the kernel closes the BPF link with the process, the program goes too.
    let dir = temp_dir();
    let certs = Certs::generate(dir.path());
    let mut server = start_xdp_server(&t, &certs, dir.path(), &["--workers", "1"]);
    assert!(xdp_attached(&t));
    let mut child = server.child.take().expect("running");
    child.kill().expect("SIGKILL");
    child.wait().expect("reaping");
    let deadline = Instant::now() + Duration::from_secs(5);
    while xdp_attached(&t) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(!xdp_attached(&t), "program outlived a killed server");

    // A stale program attached the old (netlink) way, as a crashed tool would leave it.
    let obj = stale_program(dir.path());
    ip(&[
        "-n",
        &t.srv,
        "link",
        "set",
        "dev",
        &t.srv_if,
        "xdpgeneric",
        "obj",
        &obj,
        "sec",
        "xdp",
    ]);
    assert!(xdp_attached(&t));
    let server = start_xdp_server(&t, &certs, dir.path(), &["--workers", "1"]);
    assert!(
        server.stderr().contains("replacing a stale XDP program"),
        "{}",
        server.stderr()
    );
    let transfer = Transfer::perf(4 * MIB, MIB).conns(2);
    transfer_in(&t, Peer::Quench, &certs.ca, &transfer);
    let stats = server.shutdown();
    assert_xdp_path(&stats, 500);
    assert!(!xdp_attached(&t), "program left attached after shutdown");
}

/// Compiles a pass-everything XDP program (the stand-in for a stale one); returns its path.
fn stale_program(dir: &Path) -> String {
    let src = dir.join("stale.bpf.c");
    let obj = dir.join("stale.bpf.o");
    std::fs::write(
        &src,
        "#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n\
         SEC(\"xdp\") int stale(struct xdp_md *ctx) { return XDP_PASS; }\n\
         char LICENSE[] SEC(\"license\") = \"GPL\";\n",
    )
    .expect("writing stale.bpf.c");
    let out = Command::new("clang")
        .args([
            "-O2",
            "-g",
            "-target",
            "bpf",
            "-I/usr/include/x86_64-linux-gnu",
            "-c",
        ])
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .output()
        .expect("running clang (scripts/deps.sh installs it)");
    assert!(
        out.status.success(),
        "clang: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    obj.to_string_lossy().into_owned()
}

/// The client role over AF_XDP: `quench client --datapath xdp` in the client namespace
/// against the AF_XDP server. The client resolves the server's MAC from the kernel's
/// neighbour table (primed by the client itself), and the client namespace's kernel UDP
/// stack receives none of the replies.
#[test]
fn quench_client_over_af_xdp() {
    let _serial = serial();
    let t = topology("k", 1);
    let dir = temp_dir();
    let certs = Certs::generate(dir.path());
    let server = start_xdp_server(&t, &certs, dir.path(), &["--workers", "1"]);
    let before = kernel_udp_in(&t.cli);
    let transfer = Transfer::perf(20 * MIB, 5 * MIB).conns(4);
    let mut cmd = client_command(Peer::Quench, server_addr(), &certs.ca, &transfer);
    cmd.args([
        "--datapath",
        "xdp",
        "--iface",
        &t.cli_if,
        "--local-port",
        "47000",
    ]);
    let report = run_client(Topology::exec_in(&t.cli, &cmd), transfer.timeout());
    assert_perf(&report, &transfer);
    let after = kernel_udp_in(&t.cli);
    assert_eq!(
        before.in_datagrams, after.in_datagrams,
        "the client namespace's kernel UDP stack received datagrams: the replies bypassed AF_XDP"
    );
    assert_eq!(
        before.no_ports, after.no_ports,
        "replies reached the kernel with no socket"
    );
    let stats = server.shutdown();
    assert_eq!(sum(&stats, "workers", "connections_accepted"), 4, "{stats}");
}

/// With an unspecified --listen the program serves the port on every address of the host,
/// so replies must leave from the address each client wrote to: a client of a secondary
/// address (a second VIP), or of a VIP on the loopback device (direct server return),
/// drops answers from the interface's first address as not its server's. With --listen
/// on one address, datagrams to the others stay the kernel's.
#[test]
fn replies_leave_from_the_address_the_client_wrote_to() {
    let _serial = serial();
    let t = topology("v", 1);
    let second: SocketAddr = format!("10.98.0.9:{PORT}").parse().unwrap();
    ip(&[
        "-n",
        &t.srv,
        "addr",
        "add",
        "10.98.0.9/24",
        "dev",
        &t.srv_if,
    ]);
    // A VIP on the server's loopback device, routed to it (direct server return): it
    // arrives through the XDP interface though no address of that interface is it.
    let vip: SocketAddr = format!("10.97.0.5:{PORT}").parse().unwrap();
    ip(&["-n", &t.srv, "addr", "add", "10.97.0.5/32", "dev", "lo"]);
    ip(&[
        "-n",
        &t.cli,
        "route",
        "add",
        "10.97.0.5/32",
        "via",
        SERVER_IP,
    ]);
    let dir = temp_dir();
    let certs = Certs::generate(dir.path());
    let every: SocketAddr = format!("0.0.0.0:{PORT}").parse().unwrap();
    let server = start_xdp_server_on(&t, every, &certs, dir.path(), &["--workers", "1"]);
    let transfer = Transfer::perf(4 * MIB, MIB).conns(2);
    for (peer, to) in [
        (Peer::Quinn, second),
        (Peer::Quench, second),
        (Peer::Quinn, server_addr()),
        (Peer::Quinn, vip),
    ] {
        let cmd = client_command(peer, to, &certs.ca, &transfer);
        let report = run_client(Topology::exec_in(&t.cli, &cmd), transfer.timeout());
        assert_perf(&report, &transfer);
    }
    let stats = server.shutdown();
    assert_eq!(sum(&stats, "workers", "connections_accepted"), 8, "{stats}");
    assert_xdp_path(&stats, 1_000);
    assert_eq!(
        u(&stats, &["xdp", "program", "pass_not_local"]),
        0,
        "{stats}"
    );

    // Listening on one address, the program leaves datagrams to the other to the kernel,
    // as a socket bound to that address would never see them.
    let server = start_xdp_server(&t, &certs, dir.path(), &["--workers", "1"]);
    let send = format!(
        "for i in 1 2 3; do printf 'not quic' > /dev/udp/{}/{PORT}; done",
        second.ip()
    );
    let mut cmd = Command::new("bash");
    cmd.args(["-c", &send]);
    let out = run_process(Topology::exec_in(&t.cli, &cmd), Duration::from_secs(10));
    assert!(out.status.success(), "sending to {second}: {}", out.stderr);
    let stats = server.shutdown();
    assert_eq!(
        u(&stats, &["xdp", "program", "pass_not_local"]),
        3,
        "{stats}"
    );
    assert_eq!(u(&stats, &["xdp", "program", "redirect"]), 0, "{stats}");
    assert_eq!(sum(&stats, "workers", "datagrams_rx"), 0, "{stats}");
}

/// The served addresses as the stats line lists them.
fn served(stats: &Value) -> Vec<String> {
    stats["xdp"]["served_addresses"]
        .as_array()
        .unwrap_or_else(|| panic!("no served_addresses: {stats}"))
        .iter()
        .map(|a| a.as_str().unwrap_or_default().to_string())
        .collect()
}

/// Asks for stats lines until `want` holds for the served addresses (up to 10 s).
fn await_served(server: &NsServer, what: &str, want: impl Fn(&[String]) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = server.stats();
        if want(&served(&stats)) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "served addresses never {what}: {stats}\n{}",
            server.stderr()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// Serving every address, the server follows the host's as they change: an address added
/// after start is steered and answered from (before, the program's list was fixed at start
/// and datagrams to it went to the kernel, which has no socket for them), and one removed
/// goes back to the kernel.
#[test]
fn served_addresses_follow_the_host() {
    let _serial = serial();
    let t = topology("w", 1);
    let dir = temp_dir();
    let certs = Certs::generate(dir.path());
    let every: SocketAddr = format!("0.0.0.0:{PORT}").parse().unwrap();
    let server = start_xdp_server_on(&t, every, &certs, dir.path(), &["--workers", "2"]);
    let added: SocketAddr = format!("10.98.0.7:{PORT}").parse().unwrap();
    let added_ip = added.ip().to_string();
    let stats = server.stats();
    let at_start = served(&stats);
    assert!(at_start.contains(&SERVER_IP.to_string()), "{stats}");
    assert!(!at_start.contains(&added_ip), "{stats}");
    // The veth's IPv6 link-local address is served too, so changes are counted from here.
    let changes_at_start = u(&stats, &["xdp", "served_address_changes"]);

    ip(&[
        "-n",
        &t.srv,
        "addr",
        "add",
        "10.98.0.7/24",
        "dev",
        &t.srv_if,
    ]);
    await_served(&server, "took the new address", |s| s.contains(&added_ip));
    let transfer = Transfer::perf(2 * MIB, MIB);
    for peer in [Peer::Quinn, Peer::Quench] {
        let cmd = client_command(peer, added, &certs.ca, &transfer);
        let report = run_client(Topology::exec_in(&t.cli, &cmd), transfer.timeout());
        assert_perf(&report, &transfer);
    }

    ip(&[
        "-n",
        &t.srv,
        "addr",
        "del",
        "10.98.0.7/24",
        "dev",
        &t.srv_if,
    ]);
    let stats = await_served(&server, "let the address go", |s| !s.contains(&added_ip));
    assert_eq!(served(&stats), at_start, "{stats}");
    // The client still knows the address's MAC; the program leaves the datagrams to the
    // kernel now, which no longer owns the address.
    let send = format!("for i in 1 2 3; do printf 'not quic' > /dev/udp/{added_ip}/{PORT}; done");
    let mut cmd = Command::new("bash");
    cmd.args(["-c", &send]);
    let out = run_process(Topology::exec_in(&t.cli, &cmd), Duration::from_secs(10));
    assert!(out.status.success(), "sending to {added}: {}", out.stderr);

    let stats = server.shutdown();
    assert_eq!(sum(&stats, "workers", "connections_accepted"), 2, "{stats}");
    assert_xdp_path(&stats, 1_000);
    assert_eq!(
        u(&stats, &["xdp", "served_address_changes"]),
        changes_at_start + 2,
        "{stats}"
    );
    assert_eq!(
        u(&stats, &["xdp", "program", "pass_not_local"]),
        3,
        "{stats}"
    );
}
