//! quiche's configuration for both roles: transport limits (the same windows and stream
//! count as the other peers'), BoringSSL's certificates and trust, connection IDs.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use quench_tests::args::ServerArgs;
use quench_tests::tls::{CertFiles, Verify};

/// Per-stream and per-connection flow-control windows: large enough that a loopback
/// transfer is bounded by CPU, not by window updates (as quinn-peer's and s2n-peer's).
const STREAM_WINDOW: u64 = 16 << 20;
const CONN_WINDOW: u64 = 24 << 20;
/// Tests open up to 100 concurrent streams per connection; leave headroom.
const MAX_CONCURRENT_BIDI: u64 = 1000;
/// Without traffic for this long a connection is dropped: a stuck peer fails the run well
/// inside the test harness's own timeout.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest UDP payload we send: what a 1500-byte MTU leaves under IPv6 and UDP headers.
/// quiche's path MTU discovery stays off, so every connection uses this (or less, if the
/// peer's `max_udp_payload_size` is smaller) from the end of the handshake.
const MAX_SEND_UDP_PAYLOAD: usize = 1452;
/// Length of the connection IDs we choose; the server routes short headers by it.
pub const CID_LEN: usize = 16;

/// The ALPNs this peer speaks.
pub const ALPNS: [&str; 2] = ["perf", "hq-interop"];

fn transport() -> Result<quiche::Config> {
    let mut config =
        quiche::Config::new(quiche::PROTOCOL_VERSION).context("creating quiche config")?;
    config.set_max_idle_timeout(IDLE_TIMEOUT.as_millis() as u64);
    config.set_max_send_udp_payload_size(MAX_SEND_UDP_PAYLOAD);
    config.set_initial_max_data(CONN_WINDOW);
    config.set_initial_max_stream_data_bidi_local(STREAM_WINDOW);
    config.set_initial_max_stream_data_bidi_remote(STREAM_WINDOW);
    config.set_initial_max_streams_bidi(MAX_CONCURRENT_BIDI);
    // Neither protocol uses unidirectional streams.
    config.set_initial_max_stream_data_uni(0);
    config.set_initial_max_streams_uni(0);
    // quiche grows its windows up to these as the application reads: keep them where
    // they start, as the other peers' are.
    config.set_max_connection_window(CONN_WINDOW);
    config.set_max_stream_window(STREAM_WINDOW);
    if std::env::var_os("SSLKEYLOGFILE").is_some() {
        config.log_keys();
    }
    Ok(config)
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str().ok_or_else(|| {
        anyhow!(
            "{} is not UTF-8 (quiche takes paths as str)",
            path.display()
        )
    })
}

/// The server's config: `--cert/--key`, else a generated certificate (written to
/// `--write-cert` if given); `alpns` offered in order.
pub fn server(args: &ServerArgs, alpns: &[&str]) -> Result<quiche::Config> {
    let mut config = transport()?;
    // BoringSSL loads certificates and keys from files only (without the `boring` crate):
    // a generated pair goes through a private temp dir.
    let files = CertFiles::from_args(args, "quiche-peer-")?;
    load_cert_and_key(&mut config, &files.cert, &files.key)?;
    let protos: Vec<&[u8]> = alpns.iter().map(|a| a.as_bytes()).collect();
    config.set_application_protos(&protos)?;
    Ok(config)
}

fn load_cert_and_key(config: &mut quiche::Config, cert: &Path, key: &Path) -> Result<()> {
    config
        .load_cert_chain_from_pem_file(path_str(cert)?)
        .with_context(|| format!("loading certificate chain {}", cert.display()))?;
    config
        .load_priv_key_from_pem_file(path_str(key)?)
        .with_context(|| format!("loading private key {}", key.display()))?;
    Ok(())
}

/// The client's config: trust anchors from `--ca` (BoringSSL verifies the chain and the
/// name given to `quiche::connect`), or no verification with `--insecure`.
pub fn client(verify: Verify<'_>, alpn: &str) -> Result<quiche::Config> {
    let mut config = transport()?;
    match verify {
        Verify::Ca(ca) => {
            let text =
                fs::read_to_string(ca).with_context(|| format!("reading {}", ca.display()))?;
            if !text.contains("-----BEGIN CERTIFICATE-----") {
                bail!("no certificate in {}", ca.display());
            }
            config
                .load_verify_locations_from_file(path_str(ca)?)
                .with_context(|| format!("loading CA {}", ca.display()))?;
            config.verify_peer(true);
        }
        Verify::Insecure => config.verify_peer(false),
    }
    config.set_application_protos(&[alpn.as_bytes()])?;
    Ok(config)
}

/// `SSLKEYLOGFILE`, as rustls' `KeyLogFile` honours it for the other peers: the
/// connection's TLS secrets appended there, for Wireshark.
pub fn keylog(conn: &mut quiche::Connection) {
    let Some(path) = std::env::var_os("SSLKEYLOGFILE") else {
        return;
    };
    match OpenOptions::new().create(true).append(true).open(&path) {
        Ok(file) => conn.set_keylog(Box::new(file)),
        Err(e) => eprintln!("quiche-peer: SSLKEYLOGFILE {path:?}: {e}"),
    }
}

/// Random connection IDs (from the kernel: this crate has no RNG of its own to lean on).
pub struct Cids(File);

impl Cids {
    pub fn open() -> Result<Cids> {
        Ok(Cids(
            File::open("/dev/urandom").context("opening /dev/urandom")?,
        ))
    }

    pub fn next(&mut self) -> Result<[u8; CID_LEN]> {
        let mut cid = [0u8; CID_LEN];
        self.0
            .read_exact(&mut cid)
            .context("reading /dev/urandom")?;
        Ok(cid)
    }
}
