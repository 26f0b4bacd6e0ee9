//! `quench-bench`: the load generator (`load`) and the side-by-side report of the criterion
//! benchmarks (`report`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use quench::tls::session::{client_config, ServerVerification};
use quench_bench::load::{self, LoadOptions};
use quench_bench::report;

#[derive(Parser)]
#[command(
    name = "quench-bench",
    about = "quench load generator and benchmark report"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Closed-loop perf requests against a QUIC server; prints one JSON line with request
    /// latency percentiles (µs) and throughput.
    Load {
        /// Server address.
        #[arg(long)]
        connect: SocketAddr,
        /// Concurrent connections.
        #[arg(long, default_value_t = 1)]
        conns: usize,
        /// Requests per connection.
        #[arg(long, default_value_t = 1000)]
        requests: u64,
        /// Response bytes each request asks for.
        #[arg(long, default_value_t = 100)]
        size: u64,
        /// Request bytes (8-byte length header included).
        #[arg(long, default_value_t = 100)]
        upload: usize,
        /// Requests in flight per connection.
        #[arg(long, default_value_t = 1)]
        pipeline: usize,
        /// CA certificate (PEM) to verify the server with; without it, any certificate is accepted.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Name to verify the certificate against (SNI).
        #[arg(long, default_value = "localhost")]
        server_name: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Runs one benchmark scenario without criterion, for a profiler: only the server's
    /// calls run inside `server_span` (see `quench_bench::server_span`).
    Profile {
        /// recv, send, handshake, handshake-resumed, request or request16.
        #[arg(long)]
        scenario: String,
        /// quench, quinn-proto, quiche, rustls (handshakes only) or aead-floor (requests only).
        #[arg(long, default_value = "quench")]
        stack: String,
        /// Packets, handshakes or requests to run.
        #[arg(long, default_value_t = 100_000)]
        count: u64,
    },
    /// Prints the criterion results of `cargo bench -p quench-bench` with ratios.
    Report {
        /// Criterion's output directory (default: $CARGO_TARGET_DIR/criterion or target/criterion).
        #[arg(long)]
        criterion: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Load {
            connect,
            conns,
            requests,
            size,
            upload,
            pipeline,
            ca,
            server_name,
            timeout,
        } => {
            let verify = match ca {
                Some(path) => ServerVerification::CaFile(path),
                None => ServerVerification::Insecure,
            };
            let tls = client_config(verify, &[quench::app::ALPN_PERF.to_vec()])
                .context("client TLS configuration")?;
            let report = load::run(LoadOptions {
                connect,
                server_name,
                tls,
                conns,
                requests,
                size,
                upload,
                pipeline,
                timeout: Duration::from_secs(timeout),
            })?;
            println!("{}", report.to_json());
            if report.failed > 0 || report.timed_out {
                anyhow::bail!(
                    "{} requests failed{}",
                    report.failed,
                    if report.timed_out { " (timed out)" } else { "" }
                );
            }
        }
        Cmd::Profile {
            scenario,
            stack,
            count,
        } => {
            let (units, sw) = quench_bench::profile::run(&scenario, &stack, count)?;
            println!(
                "{stack} {scenario}: {units} units, {:.0} ns each (server share, timed)",
                sw.elapsed.as_nanos() as f64 / units as f64
            );
        }
        Cmd::Report { criterion } => {
            let dir = criterion.unwrap_or_else(report::default_dir);
            print!("{}", report::render(&dir)?);
        }
    }
    Ok(())
}
