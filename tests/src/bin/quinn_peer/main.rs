//! `quinn-peer`: an independent QUIC peer built on quinn, speaking the same `perf` and
//! `hq-interop` protocols and the same command-line contract as `quench`, so the interop
//! tests can pit each side of quench against a stack it shares no code with.
//!
//! ```text
//! quinn-peer server [--listen ADDR] [--cert PEM --key PEM | --write-cert PEM] [--alpn perf,hq-interop] [--root DIR]
//!                   [--no-migration] [--zero-length-cids]
//! quinn-peer client --connect ADDR --alpn perf|hq-interop|echo [--down N] [--up N] [--streams N]
//!                   [--conns N] [--get PATH]... [--ca PEM | --insecure] [--key-update-after BYTES]
//!                   [--datagrams N]
//! ```
//! The client prints one JSON line (`quench_tests::report`) and exits 0 on success. The
//! protocols, flags and TLS setup live in the `quench_tests` library, shared with `s2n-peer`.

mod client;
mod datagram;
mod server;
mod tls;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "quinn-peer",
    about = "quinn-based perf / hq-interop peer for interop tests"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve perf and hq-interop until SIGINT/SIGTERM. (`serve` as for `quench`, so this
    /// binary can stand in for quench's CLI when checking the harness itself.)
    #[command(alias = "serve")]
    Server(server::QuinnServerArgs),
    /// Run one transfer and print a JSON report line.
    Client(client::QuinnClientArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("quinn-peer: error: cannot start runtime: {e}");
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
            eprintln!("quinn-peer: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
