//! The `quench` command: `serve` terminates QUIC, `client` drives load against a server.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use quench::client::{run_client, ClientOptions, ClientWorkload, DEFAULT_VERSION};
use quench::conn::TransportConfig;
use quench::server::{start_udp_server, ServerOptions};
use quench::tls::certs::{generate_self_signed, load_pem, write_pem};
use quench::tls::session::{client_config, ServerVerification};

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

#[derive(Subcommand)]
enum Command {
    /// Terminate QUIC connections and serve the built-in applications.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:4433")]
        listen: SocketAddr,
        /// Certificate chain (PEM). Without it a self-signed certificate is generated.
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// Private key (PEM).
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
        /// Write the generated certificate (PEM) here, for clients to trust.
        #[arg(long)]
        write_cert: Option<PathBuf>,
        /// Applications offered, by ALPN.
        #[arg(long, value_delimiter = ',', default_value = "perf,hq-interop,echo")]
        alpn: Vec<String>,
        /// Directory served by hq-interop.
        #[arg(long)]
        root: Option<PathBuf>,
        /// Worker threads (one socket and one pinned core each). Default: one per core.
        #[arg(long)]
        workers: Option<usize>,
        /// Validate client addresses with Retry before accepting (RFC 9000 §8.1.2).
        #[arg(long)]
        retry: bool,
        #[arg(long, value_enum, default_value = "cubic")]
        congestion: Congestion,
        /// Do not pin workers to cores.
        #[arg(long)]
        no_pin: bool,
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
        /// Paths to GET (hq-interop), in order.
        #[arg(long)]
        get: Vec<String>,
        /// Trust this CA certificate (PEM).
        #[arg(long, conflicts_with = "insecure")]
        ca: Option<PathBuf>,
        /// Accept any server certificate (testing only).
        #[arg(long)]
        insecure: bool,
        /// Start a key update after this many bytes were received.
        #[arg(long)]
        key_update_after: Option<u64>,
        /// Name to send in SNI and verify; defaults to "localhost".
        #[arg(long, default_value = "localhost")]
        server_name: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        #[arg(long, value_enum, default_value = "cubic")]
        congestion: Congestion,
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

fn transport(congestion: Congestion) -> TransportConfig {
    TransportConfig {
        congestion: match congestion {
            Congestion::Cubic => quench::conn::recovery::CongestionAlgorithm::Cubic,
            Congestion::Newreno => quench::conn::recovery::CongestionAlgorithm::NewReno,
        },
        ..TransportConfig::default()
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve {
            listen,
            cert,
            key,
            write_cert,
            alpn,
            root,
            workers,
            retry,
            congestion,
            no_pin,
        } => {
            let certified = match (cert, key) {
                (Some(c), Some(k)) => {
                    load_pem(&c, &k).with_context(|| format!("loading {}", c.display()))?
                }
                _ => generate_self_signed(&["localhost".into(), "127.0.0.1".into(), "::1".into()])
                    .context("generating a certificate")?,
            };
            if let Some(path) = write_cert {
                let key_path = path.with_extension("key.pem");
                write_pem(&certified, &path, &key_path)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
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
                if ![&b"perf"[..], b"hq-interop", b"echo"].contains(&a.as_slice()) {
                    bail!(
                        "unknown ALPN {:?} (built-ins: perf, hq-interop, echo)",
                        String::from_utf8_lossy(a)
                    );
                }
            }
            let workers = workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let server = start_udp_server(ServerOptions {
                listen,
                cert: certified,
                alpns,
                root,
                workers,
                transport: transport(congestion),
                require_retry: retry,
                pin: !no_pin,
            })?;
            let shutdown = server.shutdown.clone();
            signal_hook::flag::register(signal_hook::consts::SIGINT, shutdown.clone())?;
            signal_hook::flag::register(signal_hook::consts::SIGTERM, shutdown.clone())?;
            println!(
                "quench: listening on {} ({} workers, udp)",
                server.local_addr, workers
            );
            std::io::stdout().flush()?;
            // Report counters while running; workers exit once shutdown is requested and connections closed.
            let counters = server.counters.clone();
            while !shutdown.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
            }
            tracing::info!("shutting down");
            server.join()?;
            let (rx, tx, accepted): (u64, u64, u64) = counters.iter().fold((0, 0, 0), |acc, c| {
                (
                    acc.0 + c.datagrams_rx.load(Ordering::Relaxed),
                    acc.1 + c.datagrams_tx.load(Ordering::Relaxed),
                    acc.2 + c.connections_accepted.load(Ordering::Relaxed),
                )
            });
            tracing::info!(
                datagrams_rx = rx,
                datagrams_tx = tx,
                connections = accepted,
                "stopped"
            );
            Ok(())
        }
        Command::Client {
            connect,
            alpn,
            down,
            up,
            streams,
            conns,
            get,
            ca,
            insecure,
            key_update_after,
            server_name,
            timeout,
            congestion,
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
                other => bail!("client ALPN {other:?} not supported (perf, hq-interop)"),
            };
            let tls = client_config(verify, &[alpn.as_bytes().to_vec()])?;
            let report = run_client(ClientOptions {
                connect,
                server_name,
                tls,
                workload,
                conns,
                key_update_after,
                timeout: Duration::from_secs(timeout),
                transport: transport(congestion),
                version: DEFAULT_VERSION,
            })?;
            println!("{}", report.to_json());
            Ok(())
        }
    }
}
