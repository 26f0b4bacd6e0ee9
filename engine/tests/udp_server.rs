//! The multi-worker UDP server (SO_REUSEPORT, one socket per worker) on loopback: hostile
//! datagrams naming any worker byte leave every worker running; the kernel steers short
//! headers to the worker their CID names, or, with that off, workers hand them over; a
//! client behind a NAT that keeps rebinding completes its transfer either way; returning
//! clients resume their TLS sessions on any worker, and on any server sharing the key file.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quench::client::{run_client, ClientOptions, ClientWorkload};
use quench::conn::TransportConfig;
use quench::endpoint::{Endpoint, EndpointConfig, QuicLbConfig, SourceLimit};
use quench::server::{start_udp_server, RunningServer, ServerOptions};
use quench::tls::certs::{generate_self_signed, write_pem};
use quench::tls::session::{client_config, ServerVerification};
use quench::tls::tickets::RELOAD_INTERVAL;
use quench::tls::{CertFiles, CertStore, ServerCert};
use quench::wire::header::{SUPPORTED_VERSIONS, VERSION_1, VERSION_2};
use rand::{Rng, SeedableRng};

const WORKERS: usize = 2;

fn server(kernel_steering: bool) -> RunningServer {
    server_with_tickets(kernel_steering, None)
}

fn server_with_tickets(kernel_steering: bool, ticket_keys: Option<PathBuf>) -> RunningServer {
    server_with(kernel_steering, ticket_keys, Vec::new())
}

fn server_with(
    kernel_steering: bool,
    ticket_keys: Option<PathBuf>,
    preferred_versions: Vec<u32>,
) -> RunningServer {
    start_udp_server(ServerOptions {
        ticket_keys,
        preferred_versions,
        ..options(kernel_steering)
    })
    .expect("server starts")
}

/// The test servers' options: perf on loopback, `WORKERS` workers, the CLI's defaults.
fn options(kernel_steering: bool) -> ServerOptions {
    ServerOptions {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        cert: generate_self_signed(&["localhost".into()])
            .expect("certificate")
            .into(),
        alpns: vec![b"perf".to_vec()],
        root: None,
        workers: WORKERS,
        transport: TransportConfig::default(),
        require_retry: false,
        retry_above_unvalidated: Some(quench::endpoint::DEFAULT_RETRY_ABOVE_UNVALIDATED),
        ticket_keys: None,
        early_data_sessions: None,
        versions: SUPPORTED_VERSIONS.to_vec(),
        preferred_versions: Vec::new(),
        max_connections: 64,
        pin: false,
        kernel_steering,
        quic_lb: QuicLbConfig::default(),
        handshakes_per_source: None,
    }
}

fn sum(server: &RunningServer, field: impl Fn(&quench::server::WorkerStats) -> u64) -> u64 {
    server.worker_stats().iter().map(field).sum()
}

/// From 8 source ports (spread over both sockets by the kernel's hash): short headers
/// naming every possible worker byte (half of them with our first octet), and Initials with
/// client DCIDs of every length. Returns how many datagrams went out.
fn send_hostile(addr: SocketAddr) -> u64 {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
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
    sent
}

/// Waits until `done` holds (or 5 s pass), then a moment more for anything extra to show.
fn wait_until(server: &RunningServer, done: impl Fn(&RunningServer) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done(server) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
}

fn perf_client(connect: SocketAddr, down: u64, up: u64, conns: usize) {
    let tls = client_config(ServerVerification::Insecure, &[b"perf".to_vec()]).expect("tls");
    perf_client_with(connect, tls, down, up, conns, false);
}

/// Runs a perf transfer with `tls` (whose session store carries tickets from one run to
/// the next); returns how many connections resumed a session.
fn perf_client_with(
    connect: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    down: u64,
    up: u64,
    conns: usize,
    resume: bool,
) -> u64 {
    let report = run_client(ClientOptions {
        connect,
        server_name: "localhost".into(),
        tls,
        workload: ClientWorkload::Perf {
            down,
            up,
            streams: 2,
        },
        conns,
        key_update_after: None,
        migrate_after: None,
        timeout: Duration::from_secs(60),
        transport: TransportConfig::default(),
        versions: vec![VERSION_1],
        original_version: None,
        resume,
        early_data: false,
    })
    .expect("client completes");
    assert_eq!((report.bytes_down, report.bytes_up), (down, up));
    report.resumed
}

/// Kernel steering off: each source port reaches one socket, whose worker hands the short
/// headers naming the other worker (exactly half of the 256 bytes, modulo 2) over; nothing
/// else moves. The bytes that once crashed a worker (>= the worker count) are among them.
#[test]
fn hostile_worker_bytes_are_handed_off_without_stopping_workers() {
    let mut server = server(false);
    let sent = send_hostile(server.local_addr);
    let expected = 8 * 256 / WORKERS as u64;
    wait_until(&server, |s| sum(s, |w| w.handed_off) >= expected);
    assert!(
        !server.any_worker_finished(),
        "a worker stopped on hostile input"
    );
    let hostile_handoffs = sum(&server, |w| w.handed_off);
    assert_eq!(hostile_handoffs, expected, "{}", server.stats_json());
    assert_eq!(sum(&server, |w| w.datagrams_rx), sent + expected);

    // A real client afterwards: its packets share one 4-tuple, so they reach one socket;
    // that worker accepted its connections and owns their CIDs: nothing more moves.
    perf_client(server.local_addr, 4 << 20, 1 << 20, 4);
    assert!(!server.any_worker_finished());
    assert_eq!(sum(&server, |w| w.connections_accepted), 4);
    assert_eq!(
        sum(&server, |w| w.handed_off),
        hostile_handoffs,
        "{}",
        server.stats_json()
    );
    server.request_shutdown();
    server.join_workers().expect("workers end cleanly");
}

/// Kernel steering on: the same datagrams each reach the worker their CID names directly
/// (both workers get exactly half of the short headers), and nothing is handed off.
#[test]
fn hostile_worker_bytes_are_steered_by_the_kernel() {
    let mut server = server(true);
    let sent = send_hostile(server.local_addr);
    wait_until(&server, |s| sum(s, |w| w.datagrams_rx) >= sent);
    assert!(
        !server.any_worker_finished(),
        "a worker stopped on hostile input"
    );
    let stats = server.worker_stats();
    assert_eq!(
        sum(&server, |w| w.datagrams_rx),
        sent,
        "{}",
        server.stats_json()
    );
    assert_eq!(sum(&server, |w| w.handed_off), 0, "{}", server.stats_json());
    // 1,024 short headers each, plus the Initials wherever the hash put their port.
    for w in &stats {
        assert!(w.datagrams_rx >= 1024, "{}", server.stats_json());
    }
    perf_client(server.local_addr, 4 << 20, 1 << 20, 4);
    assert_eq!(sum(&server, |w| w.handed_off), 0, "{}", server.stats_json());
    server.request_shutdown();
    server.join_workers().expect("workers end cleanly");
}

/// A NAT between clients and a server: forwards both ways, one mapping per client
/// socket, and every `rebind_every` datagrams from a client moves its mapping to a fresh
/// outside port (what the server sees as a NAT rebinding, RFC 9000 §9.3). Replies reaching
/// a mapping's last three ports get through. A mapping moves on its own client's traffic
/// only: a client that has nothing to send (a download's receiver between ACKs) keeps its
/// port, as with a real NAT, whose mapping changes after idling, never under another flow.
struct Nat {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    rebinds: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

/// A client socket's outside ports, newest first, and how many datagrams it sent.
struct Mapping {
    client: SocketAddr,
    ports: Vec<UdpSocket>,
    forwarded: u64,
}

impl Nat {
    fn start(server: SocketAddr, rebind_every: u64) -> Nat {
        let inside = UdpSocket::bind("127.0.0.1:0").expect("bind");
        inside.set_nonblocking(true).expect("nonblocking");
        let addr = inside.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let rebinds = Arc::new(AtomicU64::new(0));
        let (stop2, rebinds2) = (stop.clone(), rebinds.clone());
        let outside = || {
            let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
            s.set_nonblocking(true).expect("nonblocking");
            s
        };
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            let mut mappings: Vec<Mapping> = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                let mut moved = false;
                while let Ok((n, from)) = inside.recv_from(&mut buf) {
                    let i = match mappings.iter().position(|m| m.client == from) {
                        Some(i) => i,
                        None => {
                            mappings.push(Mapping {
                                client: from,
                                ports: vec![outside()],
                                forwarded: 0,
                            });
                            mappings.len() - 1
                        }
                    };
                    let m = &mut mappings[i];
                    // Lazily, as a NAT does: the next datagram after the mapping's time
                    // is up gets a new port; until then the last one still answers.
                    if m.forwarded > 0 && m.forwarded.is_multiple_of(rebind_every) {
                        m.ports.insert(0, outside());
                        m.ports.truncate(3);
                        rebinds2.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = m.ports[0].send_to(&buf[..n], server);
                    m.forwarded += 1;
                    moved = true;
                }
                for m in &mappings {
                    for port in &m.ports {
                        while let Ok((n, _)) = port.recv_from(&mut buf) {
                            let _ = inside.send_to(&buf[..n], m.client);
                            moved = true;
                        }
                    }
                }
                if !moved {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        });
        Nat {
            addr,
            stop,
            rebinds,
            thread: Some(thread),
        }
    }
}

impl Drop for Nat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs two clients' transfers through a NAT that rebinds each every 100 of its
/// datagrams; returns (rebinds, datagrams handed off between workers).
fn transfer_through_rebinding_nat(kernel_steering: bool) -> (u64, u64) {
    let mut server = server(kernel_steering);
    let nat = Nat::start(server.local_addr, 100);
    // Two clients, each behind its own mapping.
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| perf_client(nat.addr, 2 << 20, 1 << 20, 1));
        }
    });
    let rebinds = nat.rebinds.load(Ordering::Relaxed);
    drop(nat);
    assert!(!server.any_worker_finished());
    assert_eq!(sum(&server, |w| w.connections_accepted), 2);
    let handed_off = sum(&server, |w| w.handed_off);
    eprintln!("kernel steering {kernel_steering}: {rebinds} rebinds, {handed_off} hand-offs");
    server.request_shutdown();
    server.join_workers().expect("workers end cleanly");
    (rebinds, handed_off)
}

/// Each rebinding lands on either socket (the kernel hashes the new 4-tuple): with the
/// kernel steering by CID, packets still reach the owner directly; without it, the worker
/// that gets them hands them over. Both transfers complete byte-exact.
#[test]
fn nat_rebinding_reaches_the_owner() {
    let (rebinds, handed_off) = transfer_through_rebinding_nat(true);
    // 2 MiB up in ~1,800 datagrams plus ACKs: well over 10 rebinds, so both sockets saw
    // the clients (all on one: 2^-10).
    assert!(rebinds >= 10, "only {rebinds} rebinds");
    assert_eq!(handed_off, 0, "the kernel should have steered by CID");

    let (rebinds, handed_off) = transfer_through_rebinding_nat(false);
    assert!(rebinds >= 10, "only {rebinds} rebinds");
    assert!(
        handed_off > 0,
        "{rebinds} rebinds but nothing reached the other worker"
    );
}

/// `quench client --resume`: the warm-up connections gather a ticket for each of the
/// transfer's connections, and every one of them resumes. Both sides count it.
#[test]
fn every_connection_of_a_returning_client_resumes() {
    let mut server = server(true);
    let tls = client_config(ServerVerification::Insecure, &[b"perf".to_vec()]).expect("tls");
    // More connections than rustls's own store keeps tickets for one server (8).
    let resumed = perf_client_with(server.local_addr, tls, 1 << 20, 1 << 18, 12, true);
    assert_eq!(resumed, 12, "the client's view");
    wait_until(&server, |s| sum(s, |w| w.resumed_handshakes) == 12);
    assert!(
        sum(&server, |w| w.connections_accepted) > 12,
        "warm-up connections too"
    );
    server.request_shutdown();
    server.join_workers().expect("workers end cleanly");
}

/// `--resume` under compatible version negotiation: the client starts in v1 and prefers
/// v2, the server moves it to v2, so the warm-ups' tickets are v2's (RFC 9369 §5); the
/// workload's connections start in v2 as the warm-ups learned, and every one resumes
/// without another switch.
#[test]
fn a_returning_client_moved_to_v2_resumes_in_v2() {
    let mut server = server_with(true, None, vec![VERSION_2]);
    let tls = client_config(ServerVerification::Insecure, &[b"perf".to_vec()]).expect("tls");
    let report = run_client(ClientOptions {
        connect: server.local_addr,
        server_name: "localhost".into(),
        tls,
        workload: ClientWorkload::Perf {
            down: 1 << 20,
            up: 1 << 18,
            streams: 2,
        },
        conns: 4,
        key_update_after: None,
        migrate_after: None,
        timeout: Duration::from_secs(60),
        transport: TransportConfig::default(),
        versions: vec![VERSION_2, VERSION_1],
        original_version: Some(VERSION_1),
        resume: true,
        early_data: false,
    })
    .expect("client completes");
    assert_eq!((report.bytes_down, report.bytes_up), (1 << 20, 1 << 18));
    assert_eq!(report.quic_version, Some(VERSION_2));
    assert_eq!(report.resumed, 4, "the client's view");
    assert_eq!(report.version_switches, 0, "the workload started in v2");
    wait_until(&server, |s| sum(s, |w| w.resumed_handshakes) == 4);
    assert!(
        sum(&server, |w| w.compatible_version_switches) >= 1,
        "the warm-ups moved"
    );
    server.request_shutdown();
    server.join_workers().expect("workers end cleanly");
}

/// `--early-data` options that cannot work are refused with a clear error before anything
/// is bound: room for no session, or together with a fleet's ticket keys (the sessions 0-RTT
/// needs live in this process and cannot resume elsewhere).
#[test]
fn impossible_early_data_options_are_refused() {
    let options = |sessions: usize, ticket_keys: Option<PathBuf>| ServerOptions {
        workers: 1,
        ticket_keys,
        early_data_sessions: Some(sessions),
        ..options(false)
    };
    let refused = |o: ServerOptions| match start_udp_server(o) {
        Ok(_) => panic!("started with impossible options"),
        Err(e) => e.to_string(),
    };
    let none = refused(options(0, None));
    assert!(none.contains("at least one session"), "{none}");
    let fleet = refused(options(16, Some(PathBuf::from("/nonexistent/keys"))));
    assert!(fleet.contains("ticket keys cannot resume them"), "{fleet}");
}

/// A fleet: two servers sharing a ticket key file resume each other's sessions; a server
/// with another key file does a full handshake instead, and the transfer still completes.
#[test]
fn servers_sharing_a_ticket_key_file_resume_each_others_sessions() {
    let dir = std::env::temp_dir().join(format!("quench-fleet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shared = dir.join("shared.keys");
    let other = dir.join("other.keys");
    std::fs::write(&shared, format!("{}\n", "ab".repeat(32))).unwrap();
    std::fs::write(&other, format!("{}\n", "cd".repeat(32))).unwrap();
    let mut a = server_with_tickets(true, Some(shared.clone()));
    let mut b = server_with_tickets(true, Some(shared));
    let mut c = server_with_tickets(true, Some(other));
    let tls = client_config(ServerVerification::Insecure, &[b"perf".to_vec()]).expect("tls");
    // The same server name everywhere, so the client offers a's ticket to b and c.
    assert_eq!(
        perf_client_with(a.local_addr, tls.clone(), 1 << 16, 0, 1, false),
        0
    );
    assert_eq!(
        perf_client_with(b.local_addr, tls.clone(), 1 << 16, 0, 1, false),
        1,
        "b opens a's ticket"
    );
    assert_eq!(
        perf_client_with(c.local_addr, tls.clone(), 1 << 16, 0, 1, false),
        0,
        "c cannot"
    );
    wait_until(&b, |s| sum(s, |w| w.resumed_handshakes) == 1);
    wait_until(&c, |s| sum(s, |w| w.connections_accepted) == 1);
    assert_eq!(sum(&c, |w| w.resumed_handshakes), 0);
    for server in [&mut a, &mut b, &mut c] {
        server.request_shutdown();
        server.join_workers().expect("workers end cleanly");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Forged first flights over real UDP: a genuine client's Initials, each from a socket
/// that never answers. Each worker accepts up to `retry_above_unvalidated` of them (the
/// stats show them waiting for validation), then answers further ones with Retry and
/// keeps nothing. A genuine client still completes its transfer, and is not counted.
#[test]
fn forged_initials_past_the_limit_get_retry_over_udp() {
    let mut server = start_udp_server(ServerOptions {
        retry_above_unvalidated: Some(2),
        ..options(true)
    })
    .expect("server starts");
    let forged = 12u64;
    let mut silent = Vec::new();
    for _ in 0..forged {
        let tls = client_config(ServerVerification::Insecure, &[b"perf".to_vec()]).expect("tls");
        let mut forger: Endpoint<()> =
            Endpoint::new(EndpointConfig::new(TransportConfig::default(), None));
        let now = Instant::now();
        forger
            .connect(now, tls, "localhost", server.local_addr, VERSION_1)
            .expect("connect");
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut buf = vec![0u8; 2048];
        while let Some(t) = forger.poll_transmit(now, &mut buf, 1) {
            sock.send_to(&buf[..t.len], server.local_addr)
                .expect("send");
        }
        silent.push(sock); // kept open, never read: what comes back goes nowhere
    }
    wait_until(&server, |s| {
        sum(s, |w| w.connections_accepted) + sum(s, |w| w.retries) >= forged
    });
    // Each first flight is one datagram (an X25519 ClientHello): one accept or one Retry.
    let accepted = sum(&server, |w| w.connections_accepted);
    assert_eq!(sum(&server, |w| w.retries), forged - accepted);
    for w in server.worker_stats() {
        assert!(w.connections_accepted <= 2, "{}", server.stats_json());
        assert_eq!(w.unvalidated_handshakes, w.connections_accepted);
    }
    assert!(accepted >= 2, "{}", server.stats_json());

    perf_client(server.local_addr, 1 << 20, 1 << 18, 1);
    assert_eq!(sum(&server, |w| w.connections_accepted), accepted + 1);
    assert_eq!(
        sum(&server, |w| w.unvalidated_handshakes),
        accepted,
        "{}",
        server.stats_json()
    );
    server.request_shutdown();
    server.join_workers().expect("workers end cleanly");
}

/// One perf connection trusting only the CA in `ca`; whether it completed.
fn connects_trusting(connect: SocketAddr, ca: &std::path::Path) -> bool {
    let tls = client_config(
        ServerVerification::CaFile(ca.to_path_buf()),
        &[b"perf".to_vec()],
    )
    .expect("tls");
    run_client(ClientOptions {
        connect,
        server_name: "localhost".into(),
        tls,
        workload: ClientWorkload::Perf {
            down: 64 << 10,
            up: 0,
            streams: 1,
        },
        conns: 1,
        key_update_after: None,
        migrate_after: None,
        timeout: Duration::from_secs(5),
        transport: TransportConfig::default(),
        versions: vec![VERSION_1],
        original_version: None,
        resume: false,
        early_data: false,
    })
    .is_ok_and(|r| r.bytes_down == 64 << 10)
}

/// `--handshakes-per-source`: a client address gets its burst of handshakes; past it, a
/// new connection gets a Retry and, with the Retry's token, CONNECTION_REFUSED, so the
/// server spends no handshake on it. Each refused one shows in the counters.
#[test]
fn a_source_past_its_handshakes_is_retried_then_refused() {
    let mut server = start_udp_server(ServerOptions {
        workers: 1,
        handshakes_per_source: Some(SourceLimit {
            per_second: 0.001,
            burst: 2,
        }),
        ..options(false)
    })
    .expect("server starts");
    let tls = client_config(ServerVerification::Insecure, &[b"perf".to_vec()]).expect("tls");
    let connect = || {
        run_client(ClientOptions {
            connect: server.local_addr,
            server_name: "localhost".into(),
            tls: tls.clone(),
            workload: ClientWorkload::Perf {
                down: 1000,
                up: 0,
                streams: 1,
            },
            conns: 1,
            key_update_after: None,
            migrate_after: None,
            timeout: Duration::from_secs(5),
            transport: TransportConfig::default(),
            versions: vec![VERSION_1],
            original_version: None,
            resume: false,
            early_data: false,
        })
    };
    let outcomes: Vec<bool> = (0..4).map(|_| connect().is_ok()).collect();
    assert_eq!(outcomes, [true, true, false, false]);
    let stats = &server.worker_stats()[0];
    assert_eq!(
        (
            stats.connections_accepted,
            stats.retries,
            stats.handshakes_limited
        ),
        (2, 2, 2),
        "{stats:?}"
    );
    server.request_shutdown();
    server.join_workers().expect("workers end cleanly");
}

/// A certificate renewed on disk is what new handshakes get, with no restart: within the
/// reload interval of the files changing, a client trusting only the new certificate
/// connects and one trusting only the old one is refused. A renewal caught half-written
/// (the new chain beside the old key) is not taken meanwhile.
#[test]
fn a_renewed_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let files = CertFiles {
        cert: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
    };
    // Each certificate is self-signed, so its PEM is its own CA file.
    let ca = |name: &str, cert: &quench::tls::CertifiedKey| {
        let path = dir.path().join(format!("{name}-ca.pem"));
        write_pem(cert, &path, &dir.path().join(format!("{name}-ca.key"))).expect("write CA");
        path
    };
    let old = generate_self_signed(&["localhost".into()]).expect("certificate");
    let new = generate_self_signed(&["localhost".into()]).expect("certificate");
    let (old_ca, new_ca) = (ca("old", &old), ca("new", &new));
    write_pem(&old, &files.cert, &files.key).expect("write pair");
    let mut server = start_udp_server(ServerOptions {
        cert: ServerCert::Files(
            CertStore::open(
                vec![files.clone()],
                Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            )
            .expect("the pair loads"),
        ),
        workers: 1,
        ..options(false)
    })
    .expect("server starts");
    assert!(connects_trusting(server.local_addr, &old_ca));
    assert!(!connects_trusting(server.local_addr, &new_ca));

    // Half-written: the new chain, the old key. The server keeps the old pair.
    let half = quench::tls::CertifiedKey {
        chain: new.chain.clone(),
        key: old.key.clone_key(),
    };
    write_pem(&half, &files.cert, &files.key).expect("write pair");
    std::thread::sleep(RELOAD_INTERVAL + Duration::from_secs(1));
    assert!(
        connects_trusting(server.local_addr, &old_ca),
        "a mismatched pair was taken"
    );

    write_pem(&new, &files.cert, &files.key).expect("write pair");
    let written = Instant::now();
    while !connects_trusting(server.local_addr, &new_ca) {
        assert!(
            written.elapsed() < RELOAD_INTERVAL + Duration::from_secs(5),
            "the renewed certificate was not taken"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(!connects_trusting(server.local_addr, &old_ca));
    assert!(!server.any_worker_finished());
    server.request_shutdown();
    server.join_workers().expect("workers end cleanly");
}
