//! `msquic-peer`: an independent QUIC peer built on Microsoft's MsQuic (C, with its quictls
//! TLS), speaking the same `perf` and `hq-interop` protocols and command-line contract as
//! `quench` and the other peers, so the interop tests and the end-to-end benchmark can run
//! quench against a sixth stack.
//!
//! ```text
//! msquic-peer server [--listen ADDR] [--cert PEM --key PEM | --write-cert PEM] [--alpn perf,hq-interop] [--root DIR]
//! msquic-peer client --connect ADDR --alpn perf|hq-interop [--down N] [--up N] [--streams N]
//!                    [--conns N] [--get PATH]... [--ca PEM | --insecure] [--key-update-after N]
//! ```
//! The client prints one JSON line (`quench_tests::report`) and exits 0 on success. Not
//! supported: `--alpn echo` (DATAGRAM); asking for it fails the run instead of silently
//! ignoring it.
//!
//! MsQuic runs its own worker threads and calls back into closures here; its Rust binding
//! leaves the lifetime of send buffers and of handles detached into callbacks to the caller,
//! which is the reason for the few `unsafe` blocks (each with its `SAFETY:` note, all in
//! `send.rs` and where a callback takes a handle back to close it).

mod client;
mod config;
mod send;
mod server;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use quench_tests::args::{ClientArgs, ServerArgs};

#[derive(Parser)]
#[command(
    name = "msquic-peer",
    about = "MsQuic-based perf / hq-interop peer for interop tests"
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
    let result = match Cli::parse().command {
        Command::Server(args) => server::run(args),
        Command::Client(args) => client::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("msquic-peer: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
