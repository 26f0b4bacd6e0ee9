//! `quiche-peer`: an independent QUIC peer built on Cloudflare quiche (its sans-IO
//! `Connection` driven by a plain `std::net::UdpSocket` event loop, BoringSSL for TLS),
//! speaking the same `perf` and `hq-interop` protocols and command-line contract as `quench`,
//! `quinn-peer` and `s2n-peer`, so the interop tests can run quench against a fourth stack.
//!
//! ```text
//! quiche-peer server [--listen ADDR] [--cert PEM --key PEM | --write-cert PEM] [--alpn perf,hq-interop] [--root DIR]
//! quiche-peer client --connect ADDR --alpn perf|hq-interop [--down N] [--up N] [--streams N]
//!                    [--conns N] [--get PATH]... [--ca PEM | --insecure] [--server-name NAME]
//! ```
//! The client prints one JSON line (`quench_tests::report`) and exits 0 on success. Not
//! supported: `--key-update-after` (quiche 0.24 follows a peer's key update but has no API to
//! start one) and `--alpn echo` (DATAGRAM); asking for either fails the run instead of
//! silently ignoring it, and the server does not offer `echo`.
//!
//! quiche's protocol state machines are its own, so the protocols are not the shared async
//! code of `quench_tests::{perf, hq}` but their sans-IO counterparts in `streams.rs`, with
//! the same rules (request parsing, `/N` bodies, report) taken from the library.

mod client;
mod close;
mod config;
mod net;
mod server;
mod streams;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use quench_tests::args::{ClientArgs, ServerArgs};

#[derive(Parser)]
#[command(
    name = "quiche-peer",
    about = "quiche-based perf / hq-interop peer for interop tests"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve perf and hq-interop until SIGINT/SIGTERM (`serve` as for `quench`).
    #[command(alias = "serve")]
    Server(QuicheServerArgs),
    /// Run one transfer and print a JSON report line.
    Client(QuicheClientArgs),
}

#[derive(clap::Args)]
struct QuicheClientArgs {
    #[command(flatten)]
    common: ClientArgs,
    /// First open one connection and keep the TLS session its ticket brings, then close
    /// it: every connection of the transfer resumes that session (the report counts
    /// `resumed`).
    #[arg(long)]
    resume: bool,
    /// As `--resume`, and every connection sends its requests as early data (0-RTT)
    /// where the ticket allows, before its handshake completes. quiche reports no verdict
    /// on it; the server's counters do.
    #[arg(long)]
    early_data: bool,
}

#[derive(clap::Args)]
struct QuicheServerArgs {
    #[command(flatten)]
    common: ServerArgs,
    /// Hand out tickets that allow early data, and accept it (0-RTT): streams are served
    /// before the handshake completes.
    #[arg(long)]
    early_data: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Server(args) => server::run(args.common, args.early_data),
        Command::Client(args) => {
            client::run(args.common, args.resume || args.early_data, args.early_data)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quiche-peer: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
