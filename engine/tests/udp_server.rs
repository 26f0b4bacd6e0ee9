//! The multi-worker UDP server (SO_REUSEPORT, one socket per worker) on loopback: hostile
//! datagrams naming any worker byte leave every worker running, and a real transfer after
//! them completes byte-exact on the worker that accepted it, with no hand-off.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use quench::client::{run_client, ClientOptions, ClientWorkload};
use quench::conn::TransportConfig;
use quench::server::{start_udp_server, RunningServer, ServerOptions};
use quench::tls::certs::generate_self_signed;
use quench::tls::session::{client_config, ServerVerification};
use quench::wire::header::VERSION_1;
use rand::{Rng, SeedableRng};

const WORKERS: usize = 2;

fn server() -> RunningServer {
    start_udp_server(ServerOptions {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        cert: generate_self_signed(&["localhost".into()]).expect("certificate"),
        alpns: vec![b"perf".to_vec()],
        root: None,
        workers: WORKERS,
        transport: TransportConfig::default(),
        require_retry: false,
        max_connections: 64,
        pin: false,
    })
    .expect("server starts")
}

fn sum(server: &RunningServer, field: impl Fn(&quench::server::WorkerStats) -> u64) -> u64 {
    server.worker_stats().iter().map(field).sum()
}

/// Waits until the workers have handed off `n` datagrams (or 5 s pass), then a moment more
/// for any extra to show.
fn wait_for_handoffs(server: &RunningServer, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while sum(server, |w| w.handed_off) < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
}

#[test]
fn hostile_worker_bytes_do_not_stop_workers_and_transfers_stay_local() {
    let mut server = server();
    let addr = server.local_addr;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);

    // From several source ports, so the kernel spreads them over both sockets: short
    // headers naming every possible worker byte (ours or not), and long headers with
    // client DCIDs of every length.
    let mut sent = 0u64;
    for port_round in 0..8 {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        for byte in 0..=255u8 {
            let mut short = vec![0x40u8];
            let mut cid = [0u8; 12];
            rng.fill(&mut cid[..]);
            cid[3] = byte;
            if port_round % 2 == 0 {
                cid[0] = 0x0b; // our first octet: length 12 self-described
            }
            short.extend_from_slice(&cid);
            short.resize(60, 0xab);
            sock.send_to(&short, addr).expect("send");
            sent += 1;
        }
        for len in 0..=20u8 {
            let mut long = vec![0xc0u8];
            long.extend_from_slice(&VERSION_1.to_be_bytes());
            long.push(len);
            long.extend((0..len).map(|_| rng.gen::<u8>()));
            long.push(0);
            long.resize(1200, 0);
            sock.send_to(&long, addr).expect("send");
            sent += 1;
        }
    }
    // Each source port reaches one socket; the short headers naming the other worker
    // (exactly half of the 256 bytes, modulo 2) go to it, nothing else does.
    let expected = 8 * 256 / WORKERS as u64;
    wait_for_handoffs(&server, expected);
    assert!(
        !server.any_worker_finished(),
        "a worker stopped on hostile input"
    );
    let hostile_handoffs = sum(&server, |w| w.handed_off);
    assert_eq!(hostile_handoffs, expected, "{}", server.stats_json());
    assert!(sum(&server, |w| w.datagrams_rx) >= sent);

    // A real client afterwards: every connection completes, byte counts match.
    let tls = client_config(ServerVerification::Insecure, &[b"perf".to_vec()]).expect("tls");
    let report = run_client(ClientOptions {
        connect: addr,
        server_name: "localhost".into(),
        tls,
        workload: ClientWorkload::Perf {
            down: 4 << 20,
            up: 1 << 20,
            streams: 4,
        },
        conns: 4,
        key_update_after: None,
        timeout: Duration::from_secs(30),
        transport: TransportConfig::default(),
        version: VERSION_1,
    })
    .expect("client completes");
    assert_eq!((report.bytes_down, report.bytes_up), (4 << 20, 1 << 20));
    assert!(!server.any_worker_finished());
    assert_eq!(sum(&server, |w| w.connections_accepted), 4);
    // The client's packets share one 4-tuple, so they reach one socket; that worker
    // accepted the connections and owns their CIDs: nothing more was handed off.
    assert_eq!(
        sum(&server, |w| w.handed_off),
        hostile_handoffs,
        "{}",
        server.stats_json()
    );
    server.request_shutdown();
    server.join_workers().expect("workers end cleanly");
}
