//! The command-line contract every peer shares with `quench` (docs/interop.md), so the test
//! harness can start any of them the same way. Stack-specific extras are flattened around
//! these by each binary.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use crate::tls::Verify;

#[derive(Args)]
pub struct ClientArgs {
    /// Server address, `IP:PORT` or `HOST:PORT`.
    #[arg(long)]
    pub connect: String,
    #[arg(long, default_value = "perf", value_parser = ["perf", "hq-interop", "echo"])]
    pub alpn: String,
    /// `--alpn echo`: DATAGRAM frames (RFC 9221) to send on each connection; the report
    /// counts the echoes that came back intact.
    #[arg(long, default_value_t = 0)]
    pub datagrams: u32,
    /// Bytes to download in total.
    #[arg(long, default_value_t = 0)]
    pub down: u64,
    /// Bytes to upload in total (perf only).
    #[arg(long, default_value_t = 0)]
    pub up: u64,
    /// Concurrent streams per connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub streams: u64,
    /// Concurrent connections.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub conns: u64,
    /// hq-interop paths to GET, in order (spread round-robin over connections).
    #[arg(long)]
    pub get: Vec<String>,
    /// PEM file of trust anchors for the server certificate.
    #[arg(long, conflicts_with = "insecure")]
    pub ca: Option<PathBuf>,
    /// Accept any server certificate.
    #[arg(long)]
    pub insecure: bool,
    /// Force one key update on each connection after it has received this many bytes.
    #[arg(long)]
    pub key_update_after: Option<u64>,
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
}

impl ClientArgs {
    /// How to authenticate the server: `--ca` or `--insecure`, one of which is required.
    pub fn verify(&self) -> Result<Verify<'_>> {
        match (&self.ca, self.insecure) {
            (Some(ca), _) => Ok(Verify::Ca(ca)),
            (None, true) => Ok(Verify::Insecure),
            (None, false) => bail!("pass --ca PEM or --insecure"),
        }
    }
}

#[derive(Args)]
pub struct ServerArgs {
    #[arg(long, default_value = "127.0.0.1:4433")]
    pub listen: SocketAddr,
    /// PEM certificate chain; without it a self-signed certificate is generated.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Write the generated certificate here (PEM), for clients to pin as CA.
    #[arg(long, conflicts_with = "cert")]
    pub write_cert: Option<PathBuf>,
    /// Comma-separated ALPNs to offer.
    #[arg(long, value_delimiter = ',', default_value = "perf,hq-interop,echo")]
    pub alpn: Vec<String>,
    /// Directory hq-interop GETs are served from.
    #[arg(long)]
    pub root: Option<PathBuf>,
}
