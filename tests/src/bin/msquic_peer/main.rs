//! `msquic-peer`: an independent QUIC peer built on Microsoft's MsQuic (C, with its quictls
//! TLS), speaking the same `perf` and `hq-interop` protocols and command-line contract as
//! `quench` and the other peers, so the interop tests and the end-to-end benchmark can run
//! quench against a sixth stack.
//!
//! ```text
//! msquic-peer server [--listen ADDR] [--cert PEM --key PEM | --write-cert PEM] [--alpn perf,hq-interop] [--root DIR]
//!                    [--quic-version 2,1] [--retry]
//! msquic-peer client --connect ADDR --alpn perf|hq-interop [--down N] [--up N] [--streams N]
//!                    [--conns N] [--get PATH]... [--ca PEM | --insecure] [--key-update-after N]
//!                    [--quic-version 1,2] [--resume]
//! ```
//! The client prints one JSON line (`quench_tests::report`, with `quic_version`,
//! `version_switches` and `resumed`) and exits 0 on success. The server prints one
//! `msquic-peer server: stats {…}` line to stderr when it stops (connections, resumed
//! handshakes, Retries sent, connections per version). `echo` is DATAGRAM frames (RFC 9221)
//! only: the server sends each back, the client checks every echo byte for byte.
//!
//! MsQuic runs its own worker threads and calls back into closures here. Its Rust binding
//! leaves three things to the caller, which is why this peer has `unsafe` blocks, each with
//! its `SAFETY:` note: the lifetime of send buffers (`send.rs`), closing handles at their
//! last event, and parameters the binding does not wrap, set through MsQuic's raw API
//! (versions, Retry, session tickets, key updates, the server address).

mod client;
mod config;
mod echo;
mod send;
mod server;
mod versions;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
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
    Server(MsquicServerArgs),
    /// Run one transfer and print a JSON report line.
    Client(MsquicClientArgs),
}

#[derive(Args)]
pub struct MsquicServerArgs {
    #[command(flatten)]
    pub common: ServerArgs,
    /// QUIC versions to accept, most preferred first (`1`, `2`): with more than one, MsQuic
    /// moves a client that lists a preferred one to it (compatible version negotiation).
    #[arg(long, value_delimiter = ',', value_parser = versions::parse)]
    pub quic_version: Vec<u32>,
    /// Answer every first Initial with a Retry (address validation, RFC 9000 §8.1).
    #[arg(long)]
    pub retry: bool,
    /// Hand out session tickets that allow 0-RTT, and accept early data
    /// (`QUIC_SERVER_RESUME_AND_ZERORTT`).
    #[arg(long)]
    pub early_data: bool,
}

#[derive(Args)]
pub struct MsquicClientArgs {
    #[command(flatten)]
    pub common: ClientArgs,
    /// QUIC versions to offer: the first flight uses the first, and the server may move the
    /// connection to another it prefers (compatible version negotiation).
    #[arg(long, value_delimiter = ',', value_parser = versions::parse)]
    pub quic_version: Vec<u32>,
    /// First run one warm-up connection for a session ticket, then resume it on every
    /// connection of the transfer (`resumed` counts those the server accepted).
    #[arg(long)]
    pub resume: bool,
    /// As `--resume`, and every connection opens its streams and sends its requests with
    /// `QUIC_SEND_FLAG_ALLOW_0_RTT` as soon as it starts, so they go out as 0-RTT where
    /// the ticket allows (uploads follow in 1-RTT). MsQuic tells the client nothing of the
    /// server's verdict; the server's counters do.
    #[arg(long)]
    pub early_data: bool,
}

/// Closes a stream at its SHUTDOWN_COMPLETE, its last event: a stream the peer opened, or
/// one `client::open_stream` detached into its handler.
pub(crate) fn close_stream(stream: &msquic::StreamRef) {
    // SAFETY: the handle is ours to close (accepted, or detached on opening for exactly
    // this), SHUTDOWN_COMPLETE is the stream's last event, and the calling handler's state,
    // freed with the handle, is not touched after.
    drop(unsafe { msquic::Stream::from_raw(stream.as_raw()) });
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
