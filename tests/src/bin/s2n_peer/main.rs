//! `s2n-peer`: an independent QUIC peer built on AWS s2n-quic (with its rustls TLS provider),
//! speaking the same `perf` and `hq-interop` protocols and command-line contract as `quench`
//! and `quinn-peer`, so the interop tests can run quench against a third stack.
//!
//! ```text
//! s2n-peer server [--listen ADDR] [--cert PEM --key PEM | --write-cert PEM] [--alpn perf,hq-interop] [--root DIR]
//! s2n-peer client --connect ADDR --alpn perf|hq-interop [--down N] [--up N] [--streams N]
//!                 [--conns N] [--get PATH]... [--ca PEM | --insecure]
//! ```
//! The client prints one JSON line (`quench_tests::report`) and exits 0 on success. Not
//! supported (s2n-quic exposes no API for them): `--alpn echo` (DATAGRAM) and
//! `--key-update-after`; asking for either fails the run instead of silently ignoring it.

mod client;
mod config;
mod server;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use quench_tests::args::{ClientArgs, ServerArgs};

#[derive(Parser)]
#[command(
    name = "s2n-peer",
    about = "s2n-quic-based perf / hq-interop peer for interop tests"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve perf and hq-interop until SIGINT/SIGTERM (`serve` as for `quench`).
    #[command(alias = "serve")]
    Server(ServerArgs),
    /// Run one transfer and print a JSON report line.
    Client(ClientArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("s2n-peer: error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Server(args) => server::run(args).await,
            Command::Client(args) => client::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("s2n-peer: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
