//! The `quench` command: `serve` terminates QUIC, `client` drives load against a server.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use quench::client::{run_client, ClientOptions, ClientWorkload};
use quench::conn::TransportConfig;
use quench::endpoint::{QuicLbConfig, SourceLimit};
use quench::metrics::MetricsEndpoint;
use quench::server::{start_udp_server, RunningServer, ServerOptions};
#[cfg(feature = "xdp")]
use quench::server::{start_xdp_server, RunningXdpServer, XdpOptions};
use quench::tls::certs::{generate_self_signed, load_pem, write_pem};
use quench::tls::session::{client_config, ServerVerification};
use quench::tls::{CertFiles, CertStore, CertifiedKey, ServerCert};
use quench::wire::header::{VERSION_1, VERSION_2};

#[derive(Parser)]
#[command(name = "quench", version, about = "Kernel-bypass QUIC packet engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Congestion {
    Cubic,
    Newreno,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DatapathKind {
    /// Kernel UDP sockets (no privileges needed).
    Udp,
    /// AF_XDP sockets fed by the XDP steering program (root or capabilities, `--iface`).
    Xdp,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum XdpModeArg {
    Native,
    Generic,
    Auto,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ZeroCopyArg {
    Auto,
    On,
    Off,
}

#[derive(Subcommand)]
enum Command {
    /// Terminate QUIC connections and serve the built-in applications.
    Serve {
        /// Address to listen on. Default 127.0.0.1:4433; with `--datapath xdp` the IP must
        /// be one of the interface's (or 0.0.0.0 / [::]), default port 4433.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Where datagrams come from: kernel UDP sockets or AF_XDP.
        #[arg(long, value_enum, default_value = "udp")]
        datapath: DatapathKind,
        /// Interface to attach the XDP program to (`--datapath xdp`).
        #[arg(long, required_if_eq("datapath", "xdp"))]
        iface: Option<String>,
        /// RX queues to bind (`--datapath xdp`); worker w takes queues[w % len]. Default:
        /// 0..min(workers, the interface's RX queues).
        #[arg(long, value_delimiter = ',')]
        queues: Option<Vec<u32>>,
        /// Attach the XDP program in the driver (native), in the generic stack, or native
        /// with generic as fallback (auto).
        #[arg(long, value_enum, default_value = "auto")]
        xdp_mode: XdpModeArg,
        /// AF_XDP zero-copy: try it and fall back to copy mode (auto), require it, or not.
        #[arg(long, value_enum, default_value = "auto")]
        xdp_zero_copy: ZeroCopyArg,
        /// Back the AF_XDP frames (UMEM) with 2 MiB huge pages when available.
        #[arg(long)]
        xdp_hugepages: bool,
        /// Certificate chain (PEM). Without it a self-signed certificate is generated. The
        /// files are re-read when they change (checked every 10 s): renew without a restart.
        /// Repeat `--cert` and `--key` for several certificates: each handshake gets the
        /// one whose names (wildcards included) match the name the client asks for (SNI),
        /// the first given when none does or the client names none.
        #[arg(long, requires = "key")]
        cert: Vec<PathBuf>,
        /// Private key (PEM) of the `--cert` in the same position.
        #[arg(long, requires = "cert")]
        key: Vec<PathBuf>,
        /// Write the certificate (PEM; the first, with several) here, for clients to trust.
        #[arg(long)]
        write_cert: Option<PathBuf>,
        /// Applications offered, by ALPN.
        #[arg(long, value_delimiter = ',', default_value = "perf,hq-interop,echo,h3")]
        alpn: Vec<String>,
        /// Directory served by hq-interop and h3.
        #[arg(long)]
        root: Option<PathBuf>,
        /// Worker threads (one socket and one pinned core each). Default: one per core.
        #[arg(long)]
        workers: Option<usize>,
        /// Validate client addresses with Retry before accepting (RFC 9000 §8.1.2).
        #[arg(long)]
        retry: bool,
        /// Validate with Retry only while this many handshakes per worker or more wait for
        /// their client's address to be validated (forged sources never are): a flood of
        /// spoofed Initials then costs a stateless packet each, not a handshake.
        #[arg(long, value_name = "N", default_value_t = quench::endpoint::DEFAULT_RETRY_ABOVE_UNVALIDATED)]
        retry_above: usize,
        /// Session ticket keys shared by a fleet: 32-byte keys in hex, one a line, the
        /// first sealing new tickets and all opening them; re-read when the file changes.
        /// Without it, tickets use keys of this process alone, rolled every 6 hours.
        #[arg(long)]
        ticket_keys: Option<PathBuf>,
        /// Accept 0-RTT (RFC 9001 §4.6) on resumed connections, up to this many kept
        /// sessions (e.g. 65536). Tickets then name sessions kept in this process and are
        /// single-use, so early data cannot be replayed to it; they do not resume on other
        /// servers (hence not with --ticket-keys). Serve only requests that are safe to
        /// replay from early data: a client repeats them if the server restarts.
        #[arg(long, conflicts_with = "ticket_keys", value_name = "SESSIONS")]
        early_data: Option<usize>,
        /// QUIC versions to accept: 1 (RFC 9000), 2 (RFC 9369). Clients in others get
        /// Version Negotiation listing these.
        #[arg(long, default_value = "1,2", value_delimiter = ',',
              value_parser = clap::value_parser!(u8).range(1..=2))]
        quic_version: Vec<u8>,
        /// Versions to move a client to, most preferred first, when its first flight
        /// converts to one and it lists it (compatible version negotiation, RFC 9368 §2.3:
        /// v1 and v2 convert into each other), e.g. `2` to upgrade v1 clients that offer
        /// v2 without a round trip. Each must be accepted (`--quic-version`). Default:
        /// none, every connection stays in its first flight's version.
        #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u8).range(1..=2))]
        prefer_version: Vec<u8>,
        /// Most connections per worker; beyond it new clients are refused (CONNECTION_REFUSED).
        #[arg(long, default_value_t = 100_000)]
        max_connections: usize,
        #[arg(long, value_enum, default_value = "cubic")]
        congestion: Congestion,
        #[command(flatten)]
        path: PathArgs,
        /// Do not pin workers to cores.
        #[arg(long)]
        no_pin: bool,
        /// UDP datapath: do not steer datagrams to their connection's worker inside the
        /// kernel (SO_REUSEPORT BPF); workers hand them over instead.
        #[arg(long)]
        no_kernel_steering: bool,
        /// Largest DATAGRAM frame (RFC 9221) accepted from clients, advertised as
        /// max_datagram_frame_size; 0 accepts none. `echo` sends datagrams back.
        #[arg(long, default_value_t = 65535)]
        max_datagram_frame_size: u64,
        /// QUIC-LB server id (hex, 1 to 10 bytes with the shortest nonce;
        /// draft-ietf-quic-load-balancers): every CID this server issues carries it,
        /// unencrypted, after the first octet, then the worker's byte, so a load balancer
        /// in front can route a connection here by CID, through client address changes.
        /// Give each server behind one load balancer its own.
        #[arg(long, value_name = "HEX", default_value = "0001", value_parser = parse_server_id)]
        quic_lb_server_id: ServerId,
        /// QUIC-LB nonce length in bytes (the worker byte and at least 8 random): CIDs are
        /// 1 + server id + nonce bytes long, at most 20.
        #[arg(long, value_name = "BYTES", default_value_t = 9,
              value_parser = clap::value_parser!(u8).range(9..=18))]
        quic_lb_nonce_len: u8,
        /// QUIC-LB config rotation codepoint (0..=6), the top 3 bits of every CID.
        #[arg(long, value_name = "N", default_value_t = 0,
              value_parser = clap::value_parser!(u8).range(0..=6))]
        quic_lb_config_rotation: u8,
        /// Handshakes a second each client address (an IPv4 address, an IPv6 /64) gets per
        /// worker. Only handshakes that proved their address count, so forged sources
        /// cannot use up anyone's; an address over its limit gets a Retry, and once it has
        /// proved itself, CONNECTION_REFUSED. Default: no limit.
        #[arg(long, value_name = "RATE")]
        handshakes_per_source: Option<f64>,
        /// How many handshakes an address may make at once before `--handshakes-per-source`
        /// holds it back. Default: twice the rate, at least 1.
        #[arg(long, value_name = "N", requires = "handshakes_per_source")]
        handshakes_per_source_burst: Option<u32>,
        /// Serve the stats in the Prometheus text format at http://ADDR/metrics (e.g.
        /// 127.0.0.1:9464). Unauthenticated: bind it where only the scraper reaches.
        #[arg(long, value_name = "ADDR:PORT")]
        metrics: Option<SocketAddr>,
    },
    /// Connect to a server and run a workload; prints one JSON line with the results.
    Client {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value = "perf")]
        alpn: String,
        /// Bytes to download (perf), split across streams.
        #[arg(long, default_value_t = 0)]
        down: u64,
        /// Bytes to upload (perf), split across streams.
        #[arg(long, default_value_t = 0)]
        up: u64,
        /// Concurrent streams per connection (perf).
        #[arg(long, default_value_t = 1)]
        streams: u64,
        /// Connections.
        #[arg(long, default_value_t = 1)]
        conns: usize,
        /// Paths to GET (hq-interop, h3), in order.
        #[arg(long)]
        get: Vec<String>,
        /// `--alpn echo`: DATAGRAM frames (RFC 9221) each connection sends and expects
        /// back; the report counts the echoes that came back intact.
        #[arg(long, default_value_t = 0)]
        datagrams: u32,
        /// Trust this CA certificate (PEM).
        #[arg(long, conflicts_with = "insecure")]
        ca: Option<PathBuf>,
        /// Accept any server certificate (testing only).
        #[arg(long)]
        insecure: bool,
        /// Start a key update after this many bytes were received.
        #[arg(long)]
        key_update_after: Option<u64>,
        /// Once this many bytes were received in all, move to a new local port and migrate
        /// every connection there (RFC 9000 §9.2; UDP datapath).
        #[arg(long)]
        migrate_after: Option<u64>,
        /// Name to send in SNI and verify; defaults to "localhost".
        #[arg(long, default_value = "localhost")]
        server_name: String,
        /// Connect once first and keep the server's session ticket, so the connections
        /// that run the workload resume that TLS session (the report counts `resumed`).
        #[arg(long)]
        resume: bool,
        /// 0-RTT (RFC 9001 §4.6): as --resume, and the workload's connections send their
        /// requests as early data with those tickets, before their handshakes complete
        /// (the report counts `early_data` the server accepted; refused early data is
        /// voided and the requests made again once the handshake completes).
        #[arg(long)]
        early_data: bool,
        /// QUIC versions to offer, most preferred first: 1 (RFC 9000), 2 (RFC 9369). Each
        /// connection starts in the first (or `--original-version`); given more than one,
        /// the server may move it to another without a round trip (RFC 9368 §2.3), or it
        /// falls back to the next one the server lists in Version Negotiation (§2.1).
        #[arg(long, default_value = "1", value_delimiter = ',',
              value_parser = clap::value_parser!(u8).range(1..=2))]
        quic_version: Vec<u8>,
        /// The version of the first flight, if not the first of `--quic-version`: e.g.
        /// `--quic-version 2,1 --original-version 1` reaches v1-only servers at once and
        /// lets servers that know v2 move to it (RFC 9368 §2.4).
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=2))]
        original_version: Option<u8>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        #[arg(long, value_enum, default_value = "cubic")]
        congestion: Congestion,
        #[command(flatten)]
        path: PathArgs,
        /// Send and receive through kernel UDP (default) or AF_XDP.
        #[arg(long, value_enum, default_value = "udp")]
        datapath: DatapathKind,
        /// AF_XDP: the interface to use (its address is our source; queue 0).
        #[arg(long, required_if_eq("datapath", "xdp"))]
        iface: Option<String>,
        /// AF_XDP: the local UDP port to send from and steer back to us.
        #[arg(long, default_value_t = 47000)]
        local_port: u16,
        /// AF_XDP: how to attach the XDP program.
        #[arg(long, value_enum, default_value = "auto")]
        xdp_mode: XdpModeArg,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Datagram size settings shared by both roles.
#[derive(clap::Args, Debug, Clone, Copy)]
struct PathArgs {
    /// Largest UDP payload to send once the handshake is confirmed; path MTU discovery
    /// (RFC 9000 §14.3) probes up to it from 1200.
    #[arg(long, default_value_t = 1452, value_parser = clap::value_parser!(u16).range(1200..=65527))]
    max_datagram_size: u16,
    /// Skip path MTU discovery and send --max-datagram-size unprobed (only for paths known
    /// to carry it: a smaller link then drops every full-sized packet).
    #[arg(long)]
    no_pmtud: bool,
    /// Send unmarked: no ECN (RFC 9000 §13.4). By default each path is tested and, while
    /// the peer's counts validate, 1-RTT packets leave ECT(0)-marked and CE marks count as
    /// congestion. The ECN marks received are reported either way.
    #[arg(long)]
    no_ecn: bool,
}

/// A version as the flags name it (1 or 2, which clap enforces) on the wire.
fn wire_version(v: u8) -> u32 {
    if v == 2 {
        VERSION_2
    } else {
        VERSION_1
    }
}

/// `--quic-version`'s list as wire versions, each once, in the order given.
fn quic_versions(list: &[u8]) -> anyhow::Result<Vec<u32>> {
    let mut versions = Vec::with_capacity(list.len());
    for &v in list {
        let version = wire_version(v);
        if versions.contains(&version) {
            anyhow::bail!("--quic-version lists version {v} twice");
        }
        versions.push(version);
    }
    Ok(versions)
}

/// `--prefer-version`: wire versions, each of which the server accepts.
fn preferred_versions(list: &[u8], accepted: &[u32]) -> anyhow::Result<Vec<u32>> {
    let preferred = quic_versions(list)?;
    if let Some(v) = preferred.iter().find(|v| !accepted.contains(v)) {
        anyhow::bail!("--prefer-version {v:#x} is not among the accepted --quic-version");
    }
    Ok(preferred)
}

fn transport(congestion: Congestion, path: PathArgs) -> TransportConfig {
    TransportConfig {
        congestion: match congestion {
            Congestion::Cubic => quench::conn::recovery::CongestionAlgorithm::Cubic,
            Congestion::Newreno => quench::conn::recovery::CongestionAlgorithm::NewReno,
        },
        max_datagram_size: usize::from(path.max_datagram_size),
        pmtud: !path.no_pmtud,
        ecn: !path.no_ecn,
        ..TransportConfig::default()
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve {
            listen,
            datapath,
            iface,
            queues,
            xdp_mode,
            xdp_zero_copy,
            xdp_hugepages,
            cert,
            key,
            write_cert,
            alpn,
            root,
            workers,
            retry,
            retry_above,
            ticket_keys,
            early_data,
            prefer_version,
            quic_version,
            max_connections,
            congestion,
            path,
            no_pin,
            no_kernel_steering,
            max_datagram_frame_size,
            metrics,
            quic_lb_server_id,
            quic_lb_nonce_len,
            quic_lb_config_rotation,
            handshakes_per_source,
            handshakes_per_source_burst,
        } => {
            let write = |certified: &CertifiedKey| -> Result<()> {
                if let Some(path) = &write_cert {
                    let key_path = path.with_extension("key.pem");
                    write_pem(certified, path, &key_path)
                        .with_context(|| format!("writing {}", path.display()))?;
                }
                Ok(())
            };
            let files = cert_files(cert, key)?;
            let cert = match files.first() {
                Some(first) => {
                    if write_cert.is_some() {
                        write(
                            &load_pem(&first.cert, &first.key)
                                .with_context(|| format!("loading {}", first.cert.display()))?,
                        )?;
                    }
                    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
                    ServerCert::Files(
                        CertStore::open(files, provider).context("loading the certificates")?,
                    )
                }
                None => {
                    let certified = generate_self_signed(&[
                        "localhost".into(),
                        "127.0.0.1".into(),
                        "::1".into(),
                    ])
                    .context("generating a certificate")?;
                    write(&certified)?;
                    ServerCert::Fixed(certified)
                }
            };
            if let Some(r) = &root {
                if !r.is_dir() {
                    bail!("--root {} is not a directory", r.display());
                }
            }
            let alpns: Vec<Vec<u8>> = alpn
                .iter()
                .map(|a| a.trim().as_bytes().to_vec())
                .filter(|a| !a.is_empty())
                .collect();
            for a in &alpns {
                if ![&b"perf"[..], b"hq-interop", b"echo", b"h3"].contains(&a.as_slice()) {
                    bail!(
                        "unknown ALPN {:?} (built-ins: perf, hq-interop, echo, h3)",
                        String::from_utf8_lossy(a)
                    );
                }
            }
            let workers = workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let versions = quic_versions(&quic_version)?;
            let options = ServerOptions {
                listen: listen.unwrap_or_else(|| match datapath {
                    DatapathKind::Udp => SocketAddr::from(([127, 0, 0, 1], 4433)),
                    DatapathKind::Xdp => SocketAddr::from(([0, 0, 0, 0], 4433)),
                }),
                cert,
                alpns,
                root,
                workers,
                transport: TransportConfig {
                    max_datagram_frame_size: (max_datagram_frame_size > 0)
                        .then_some(max_datagram_frame_size),
                    ..transport(congestion, path)
                },
                require_retry: retry,
                retry_above_unvalidated: Some(retry_above),
                ticket_keys,
                early_data_sessions: early_data,
                preferred_versions: preferred_versions(&prefer_version, &versions)?,
                versions,
                max_connections,
                pin: !no_pin,
                kernel_steering: !no_kernel_steering,
                quic_lb: QuicLbConfig {
                    config_rotation: quic_lb_config_rotation,
                    server_id: quic_lb_server_id.0,
                    nonce_len: quic_lb_nonce_len.into(),
                },
                handshakes_per_source: handshakes_per_source.map(|per_second| SourceLimit {
                    per_second,
                    burst: handshakes_per_source_burst
                        .unwrap_or_else(|| (2.0 * per_second).ceil().clamp(1.0, 1e6) as u32),
                }),
            };
            let xdp = XdpArgs {
                iface,
                queues,
                mode: xdp_mode,
                zero_copy: xdp_zero_copy,
                huge_pages: xdp_hugepages,
            };
            serve(datapath, options, xdp, metrics)
        }
        Command::Client {
            connect,
            alpn,
            down,
            up,
            streams,
            conns,
            get,
            datagrams,
            ca,
            insecure,
            key_update_after,
            migrate_after,
            server_name,
            resume,
            early_data,
            quic_version,
            original_version,
            timeout,
            congestion,
            path,
            datapath,
            iface,
            local_port,
            xdp_mode,
        } => {
            let verify = match (ca, insecure) {
                (Some(ca), _) => ServerVerification::CaFile(ca),
                (None, true) => ServerVerification::Insecure,
                (None, false) => bail!("pass --ca PEM to trust a certificate, or --insecure"),
            };
            let workload = match alpn.as_str() {
                "perf" => ClientWorkload::Perf { down, up, streams },
                "hq-interop" => {
                    if get.is_empty() {
                        bail!("hq-interop needs at least one --get PATH");
                    }
                    ClientWorkload::Hq { paths: get }
                }
                "echo" => {
                    if datagrams == 0 {
                        bail!("echo needs --datagrams N");
                    }
                    ClientWorkload::Datagrams { count: datagrams }
                }
                "h3" => {
                    if get.is_empty() {
                        bail!("h3 needs at least one --get PATH");
                    }
                    ClientWorkload::H3 { paths: get }
                }
                other => bail!("client ALPN {other:?} not supported (perf, hq-interop, echo, h3)"),
            };
            // Echoes come back as DATAGRAM frames: accept them.
            let max_datagram_frame_size =
                matches!(workload, ClientWorkload::Datagrams { .. }).then_some(65535);
            let tls = client_config(verify, &[alpn.as_bytes().to_vec()])?;
            let opts = ClientOptions {
                connect,
                server_name,
                tls,
                workload,
                conns,
                key_update_after,
                migrate_after,
                timeout: Duration::from_secs(timeout),
                transport: TransportConfig {
                    max_datagram_frame_size,
                    ..transport(congestion, path)
                },
                versions: quic_versions(&quic_version)?,
                original_version: original_version.map(wire_version),
                resume,
                early_data,
            };
            let report = match datapath {
                DatapathKind::Udp => run_client(opts)?,
                DatapathKind::Xdp => {
                    run_xdp_client(opts, iface.unwrap_or_default(), local_port, xdp_mode)?
                }
            };
            println!("{}", report.to_json());
            Ok(())
        }
    }
}

/// The client role over AF_XDP: one socket on queue 0 of `iface`; the XDP program steers
/// datagrams to `local_port` into it, and replies go to the next hop's MAC from the
/// kernel's neighbour table.
#[cfg(feature = "xdp")]
fn run_xdp_client(
    opts: ClientOptions,
    iface: String,
    local_port: u16,
    mode: XdpModeArg,
) -> Result<quench::client::ClientReport> {
    use quench::io::xdp::{XdpConfig, XdpMode, XdpSetup};
    let cfg = XdpConfig {
        iface,
        queues: vec![0],
        workers: 1,
        mode: match mode {
            XdpModeArg::Native => XdpMode::Native,
            XdpModeArg::Generic => XdpMode::Generic,
            XdpModeArg::Auto => XdpMode::Auto,
        },
        ports: vec![local_port],
        side: quench::Side::Client,
        ..XdpConfig::default()
    };
    prime_neighbor(opts.connect)?;
    let (program, mut sockets) = XdpSetup::start(&cfg).context("starting AF_XDP")?;
    let dp = sockets.first_mut().context("AF_XDP gave no socket")?;
    let report = quench::client::run_client_on(opts, dp);
    let stats = program.stats();
    tracing::info!(?stats, "XDP program counters");
    drop(program); // detach before reporting
    Ok(report?)
}

/// AF_XDP bypasses the kernel, so nothing makes it resolve the server's MAC: send one empty
/// datagram through a kernel socket (ARP / neighbour discovery follows) and wait for the
/// entry, up to a second.
#[cfg(feature = "xdp")]
fn prime_neighbor(remote: SocketAddr) -> Result<()> {
    use quench::io::xdp::neigh::lookup;
    if lookup(remote.ip(), None).is_some() {
        return Ok(());
    }
    let bind: SocketAddr = if remote.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()?;
    let sock = std::net::UdpSocket::bind(bind)?;
    sock.send_to(&[], remote)
        .context("priming the neighbour table")?;
    for _ in 0..100 {
        if lookup(remote.ip(), None).is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!(
        "no neighbour entry for {} (is it on-link and reachable?)",
        remote.ip()
    )
}

#[cfg(not(feature = "xdp"))]
fn run_xdp_client(
    _: ClientOptions,
    _: String,
    _: u16,
    _: XdpModeArg,
) -> Result<quench::client::ClientReport> {
    bail!("this build has no AF_XDP support (cargo feature `xdp`)")
}

/// The `--datapath xdp` flags.
struct XdpArgs {
    iface: Option<String>,
    queues: Option<Vec<u32>>,
    mode: XdpModeArg,
    zero_copy: ZeroCopyArg,
    huge_pages: bool,
}

/// A running server of either datapath.
enum Running {
    Udp(RunningServer),
    #[cfg(feature = "xdp")]
    Xdp(Box<RunningXdpServer>),
}

impl Running {
    fn server(&self) -> &RunningServer {
        match self {
            Running::Udp(s) => s,
            #[cfg(feature = "xdp")]
            Running::Xdp(s) => &s.server,
        }
    }

    fn describe(&self) -> String {
        match self {
            Running::Udp(_) => "udp".into(),
            #[cfg(feature = "xdp")]
            Running::Xdp(s) => s.describe(),
        }
    }

    fn stats_json(&self) -> serde_json::Value {
        match self {
            Running::Udp(s) => s.stats_json(),
            #[cfg(feature = "xdp")]
            Running::Xdp(s) => s.stats_json(),
        }
    }

    /// Serving every address over XDP: follows the host's address changes.
    #[cfg_attr(not(feature = "xdp"), allow(unused_variables))]
    fn refresh_addresses(&mut self, failing: &mut bool) {
        match self {
            Running::Udp(_) => {}
            #[cfg(feature = "xdp")]
            Running::Xdp(s) => match s.refresh_addresses() {
                Ok(change) => {
                    if std::mem::replace(failing, false) {
                        tracing::info!("following the host's addresses again");
                    }
                    if let Some(change) = change {
                        tracing::info!(
                            added = ?change.added,
                            removed = ?change.removed,
                            reply_defaults = ?change.defaults,
                            "served addresses changed"
                        );
                    }
                }
                Err(e) => {
                    // Once per failure, not every second: the old addresses stay served.
                    if !std::mem::replace(failing, true) {
                        tracing::warn!(%e, "cannot follow the host's addresses; serving the previous ones");
                    }
                }
            },
        }
    }

    fn join_workers(&mut self) -> Result<(), quench::server::ServerError> {
        match self {
            Running::Udp(s) => s.join_workers(),
            #[cfg(feature = "xdp")]
            Running::Xdp(s) => s.join_workers(),
        }
    }
}

/// How often a server on every address looks for the host's address changes.
#[cfg(feature = "xdp")]
const ADDRESS_REFRESH_EVERY: Duration = quench::io::xdp::served::REFRESH_EVERY;
#[cfg(not(feature = "xdp"))]
const ADDRESS_REFRESH_EVERY: Duration = Duration::from_secs(1);

/// Prints the stats line: one JSON object `{"quench_stats": {...}}` on stdout.
fn print_stats(running: &Running) -> Result<()> {
    let line = serde_json::json!({ "quench_stats": running.stats_json() });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

fn start(datapath: DatapathKind, options: ServerOptions, xdp: XdpArgs) -> Result<Running> {
    match datapath {
        DatapathKind::Udp => {
            if xdp.iface.is_some() || xdp.queues.is_some() {
                bail!("--iface and --queues need --datapath xdp");
            }
            Ok(Running::Udp(start_udp_server(options)?))
        }
        #[cfg(feature = "xdp")]
        DatapathKind::Xdp => {
            let iface = xdp.iface.context("--datapath xdp needs --iface")?;
            let opts = XdpOptions {
                iface,
                queues: xdp.queues,
                mode: match xdp.mode {
                    XdpModeArg::Native => quench::io::xdp::XdpMode::Native,
                    XdpModeArg::Generic => quench::io::xdp::XdpMode::Generic,
                    XdpModeArg::Auto => quench::io::xdp::XdpMode::Auto,
                },
                zero_copy: match xdp.zero_copy {
                    ZeroCopyArg::Auto => quench::io::xdp::ZeroCopy::Auto,
                    ZeroCopyArg::On => quench::io::xdp::ZeroCopy::On,
                    ZeroCopyArg::Off => quench::io::xdp::ZeroCopy::Off,
                },
                huge_pages: xdp.huge_pages,
            };
            Ok(Running::Xdp(Box::new(start_xdp_server(options, opts)?)))
        }
        #[cfg(not(feature = "xdp"))]
        DatapathKind::Xdp => bail!("this quench was built without the `xdp` feature"),
    }
}

/// Runs a server until SIGINT/SIGTERM/SIGHUP/SIGQUIT (or a worker fails), printing the
/// stats line on SIGUSR1 and once more on exit. With XDP the program is detached on every
/// way out: here by Drop (also on errors and panics), and by the kernel closing the BPF
/// link if the process is killed.
fn serve(
    datapath: DatapathKind,
    options: ServerOptions,
    xdp: XdpArgs,
    metrics: Option<SocketAddr>,
) -> Result<()> {
    let workers = options.workers;
    // Handlers first, so a signal during setup still ends in an orderly shutdown.
    let stop = Arc::new(AtomicBool::new(false));
    let usr1 = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGQUIT,
    ] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, usr1.clone())?;

    let metrics = match metrics {
        Some(addr) => Some(
            MetricsEndpoint::start(addr)
                .with_context(|| format!("starting the metrics endpoint on {addr}"))?,
        ),
        None => None,
    };
    let mut running = start(datapath, options, xdp)?;
    if let Some(m) = &metrics {
        println!("quench: metrics on http://{}/metrics", m.local_addr());
    }
    println!(
        "quench: listening on {} ({} workers, {})",
        running.server().local_addr,
        workers,
        running.describe()
    );
    std::io::stdout().flush()?;
    let mut next_refresh = std::time::Instant::now();
    let mut refresh_failing = false;
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let now = std::time::Instant::now();
        if now >= next_refresh {
            next_refresh = now + ADDRESS_REFRESH_EVERY;
            running.refresh_addresses(&mut refresh_failing);
        }
        if usr1.swap(false, Ordering::Relaxed) {
            print_stats(&running)?;
        }
        if let Some(m) = &metrics {
            m.serve_pending(|| quench::metrics::render(&running.stats_json()));
        }
        if running.server().any_worker_finished() {
            tracing::error!("a worker stopped unexpectedly; shutting down");
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::info!("shutting down");
    running.server().request_shutdown();
    let joined = running.join_workers();
    print_stats(&running)?;
    let total = running
        .server()
        .worker_stats()
        .iter()
        .fold((0, 0, 0), |acc, w| {
            (
                acc.0 + w.datagrams_rx,
                acc.1 + w.datagrams_tx,
                acc.2 + w.connections_accepted,
            )
        });
    tracing::info!(
        datagrams_rx = total.0,
        datagrams_tx = total.1,
        connections = total.2,
        "stopped"
    );
    // Detaches the XDP program (if any).
    drop(running);
    joined?;
    Ok(())
}

/// A QUIC-LB server id (a type of its own: clap reads a bare `Vec` as repeated values).
#[derive(Clone, Debug, PartialEq, Eq)]
struct ServerId(Vec<u8>);

/// `--quic-lb-server-id`: hex, 1 to 15 bytes (the draft's limits; the nonce is checked
/// with the rest of the configuration).
fn parse_server_id(s: &str) -> Result<ServerId, String> {
    let id = hex::decode(s.strip_prefix("0x").unwrap_or(s)).map_err(|e| format!("{s}: {e}"))?;
    if !(1..=15).contains(&id.len()) {
        return Err(format!("{s}: {} bytes; 1 to 15", id.len()));
    }
    Ok(ServerId(id))
}

/// `--cert` and `--key` paired in the order given.
fn cert_files(cert: Vec<PathBuf>, key: Vec<PathBuf>) -> Result<Vec<CertFiles>> {
    if cert.len() != key.len() {
        bail!(
            "--cert and --key pair up in order: {} certificates, {} keys",
            cert.len(),
            key.len()
        );
    }
    Ok(cert
        .into_iter()
        .zip(key)
        .map(|(cert, key)| CertFiles { cert, key })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_and_keys_pair_up_in_order() {
        let serve =
            |args: &[&str]| match Cli::try_parse_from(["quench", "serve"].iter().chain(args))
                .map(|c| c.command)
            {
                Ok(Command::Serve { cert, key, .. }) => cert_files(cert, key),
                Ok(_) => unreachable!("parsed as serve"),
                Err(e) => Err(e.into()),
            };
        let files = serve(&[
            "--cert", "a.pem", "--key", "a.key", "--cert", "b.pem", "--key", "b.key",
        ])
        .unwrap();
        assert_eq!(
            files
                .iter()
                .map(|f| (f.cert.to_str().unwrap(), f.key.to_str().unwrap()))
                .collect::<Vec<_>>(),
            [("a.pem", "a.key"), ("b.pem", "b.key")]
        );
        assert!(serve(&[]).unwrap().is_empty(), "a generated certificate");
        let e = serve(&["--cert", "a.pem", "--key", "a.key", "--cert", "b.pem"]).unwrap_err();
        assert!(e.to_string().contains("2 certificates, 1 keys"), "{e}");
        assert!(serve(&["--cert", "a.pem"]).is_err(), "no key at all");
    }

    #[test]
    fn server_ids_are_hex_bytes() {
        assert_eq!(
            parse_server_id("c4605e"),
            Ok(ServerId(vec![0xc4, 0x60, 0x5e]))
        );
        assert_eq!(parse_server_id("0x0A"), Ok(ServerId(vec![0x0a])));
        for bad in ["", "abc", "zz", "0x", &"00".repeat(16)] {
            assert!(parse_server_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn version_lists_are_checked() {
        assert_eq!(quic_versions(&[2, 1]).unwrap(), [VERSION_2, VERSION_1]);
        assert!(quic_versions(&[1, 1]).is_err());
        let accepted = [VERSION_1, VERSION_2];
        assert_eq!(preferred_versions(&[2], &accepted).unwrap(), [VERSION_2]);
        assert!(preferred_versions(&[], &accepted).unwrap().is_empty());
        let e = preferred_versions(&[2], &[VERSION_1]).unwrap_err();
        assert!(e.to_string().contains("not among the accepted"), "{e}");
    }
}
