//! Shared harness for the cross-process interop tests: finds the binaries, generates
//! certificates, runs servers on free loopback ports (killed on drop), runs clients under a
//! timeout and checks their one-line JSON report against the CLI contract.

// Each test binary includes this module and uses a different subset of it.
#![allow(dead_code)]

pub mod lossy;
pub mod netns;

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Client timeouts: a fixed allowance for process start and handshakes plus the transfer at
/// a floor rate far below anything healthy (~40 Mbit/s), capped. A hung engine then costs
/// each test well under a minute instead of stalling the whole suite.
const CLIENT_BASE_TIMEOUT: Duration = Duration::from_secs(30);
const CLIENT_FLOOR_BYTES_PER_SEC: u64 = 5 << 20;
pub const CLIENT_MAX_TIMEOUT: Duration = Duration::from_secs(120);
/// Time for a server to print `listening on`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a server gets between SIGTERM and SIGKILL.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Attempts at finding a free port before giving up (another process may grab it first).
const PORT_ATTEMPTS: usize = 3;

pub const MIB: u64 = 1 << 20;

// ---- serialisation ----------------------------------------------------------------------------

static SERIAL: Mutex<()> = Mutex::new(());

/// Holds every transfer test in this process to one at a time: the machine has two cores and
/// concurrent transfers would only measure each other. (Cargo runs test binaries one after
/// another, so this serialises the whole crate.)
pub fn serial() -> MutexGuard<'static, ()> {
    // A failed test poisons the lock; the next test is still valid.
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---- locating binaries ------------------------------------------------------------------------

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate lives inside the workspace")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// The quench binary under test: `$QUENCH_BIN`, else the release build in the target dir.
pub fn quench_bin() -> PathBuf {
    let path = std::env::var_os("QUENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("release").join("quench"));
    assert!(
        path.is_file(),
        "quench binary not found at {} (build it with `cargo build --release -p quench` or set QUENCH_BIN)",
        path.display()
    );
    path
}

pub fn quinn_peer_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_quinn-peer"))
}

pub fn s2n_peer_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_s2n-peer"))
}

pub fn msquic_peer_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_msquic-peer"))
}

pub fn quiche_peer_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_quiche-peer"))
}

/// A server under test (quench or a peer stack) with a CA-signed certificate and an
/// hq-interop root in its own temp dir, which also takes its logs.
pub struct Hosted {
    pub dir: tempfile::TempDir,
    pub certs: Certs,
    pub server: Server,
}

impl Hosted {
    /// Starts the server `spawn` makes there (`Server::quench`, `Server::quinn`, ...).
    pub fn start(spawn: fn(&Certs, &Path, &Path) -> Server) -> Hosted {
        let dir = temp_dir();
        let certs = Certs::generate(dir.path());
        let server = spawn(&certs, dir.path(), dir.path());
        Hosted { dir, certs, server }
    }

    /// Runs `transfer` with `client` against this server, trusting its CA.
    pub fn transfer(&self, client: Peer, transfer: &Transfer) -> Report {
        run_transfer(client, self.server.addr, &self.certs.ca, transfer)
    }
}

/// Random files `big.bin` (odd size, spans many packets) and `small.bin` (1 byte) in `dir`;
/// returns the bodies a GET of both, in that order, must produce.
pub fn big_and_small_files(dir: &Path) -> Vec<u8> {
    random_file(dir, "big.bin", 10 * MIB as usize + 123);
    random_file(dir, "small.bin", 1);
    let mut bodies = std::fs::read(dir.join("big.bin")).unwrap();
    bodies.extend(std::fs::read(dir.join("small.bin")).unwrap());
    bodies
}

// ---- scenarios every peer suite runs, with its own stacks in the two roles ----------------

/// Starts the server `spawn` makes and has `client` move `transfer` (perf) through it; the
/// byte counts are checked.
pub fn perf_through(spawn: fn(&Certs, &Path, &Path) -> Server, client: Peer, transfer: Transfer) {
    let _serial = serial();
    let server = Hosted::start(spawn);
    assert_perf(&server.transfer(client, &transfer), &transfer);
}

/// hq-interop GETs through `server`: two random files (bodies hashed), `/n`, a path that
/// names no file, answered with `n` generated bytes, and a missing file, whose stream is reset.
pub fn assert_hq_random_files(server: &Hosted, client: Peer, n: u64) {
    let bodies = big_and_small_files(server.dir.path());
    let report = server.transfer(client, &Transfer::hq(&["/big.bin", "/small.bin"]));
    assert_hq(&report, bodies.len() as u64, &sha256_hex(&bodies), 2);
    let report = server.transfer(client, &Transfer::hq(&[&format!("/{n}")]));
    assert_eq!(report.bytes_down, n, "{report:?}");
    hq_missing_file_is_reset(server, client);
}

/// A GET of a path that is neither a file nor `/N`: the server resets the stream (HTTP/0.9
/// has no status line) and the client's run fails, rather than reporting an empty body.
pub fn hq_missing_file_is_reset(server: &Hosted, client: Peer) {
    let out = run_client_expect_failure(client_command(
        client,
        server.server.addr,
        &server.certs.ca,
        &Transfer::hq(&["/missing.bin"]),
    ));
    let said = format!("{}{}", out.stdout, out.stderr).to_lowercase();
    assert!(said.contains("reset"), "{said}");
}

/// `quench serve --retry`: `client` follows each Retry (RFC 9000 §8.1.2) on 3 connections
/// and the transfers complete; the server counted one Retry per connection.
pub fn through_quench_retry(client: Peer) {
    let _serial = serial();
    let dir = temp_dir();
    let certs = Certs::generate(dir.path());
    let server = Server::quench_with(&certs, dir.path(), dir.path(), &["--retry"]);
    let transfer = Transfer::perf(8 * MIB, 2 * MIB).conns(3);
    let report = run_transfer(client, server.addr, &certs.ca, &transfer);
    assert_perf(&report, &transfer);
    let totals = server.shutdown_worker_totals(&["connections_accepted", "retries"]);
    assert_eq!(totals, [3, 3], "connections accepted, retries");
}

/// A returning client against `quench serve --retry`: `client`, run with `--token-warm-up`,
/// first makes a connection that goes through Retry and keeps the NEW_TOKEN token (RFC 9000
/// §8.1.3) and the TLS session ticket quench hands it; the transfer's connection presents
/// the token and is let in without a Retry, and resumes the session (RFC 8446 §2.2, no
/// certificate). `evidence` is what the client's stderr shows when it had the token.
pub fn returning_client_skips_retry_and_resumes(client: Peer, evidence: &str) {
    let _serial = serial();
    let dir = temp_dir();
    let certs = Certs::generate(dir.path());
    let server = Server::quench_with(&certs, dir.path(), dir.path(), &["--retry"]);
    let transfer = Transfer::perf(2 * MIB, MIB);
    let mut cmd = client_command(client, server.addr, &certs.ca, &transfer);
    cmd.arg("--token-warm-up");
    let (report, stderr) = run_client_with_stderr(cmd, transfer.timeout());
    assert_perf(&report, &transfer);
    assert!(stderr.contains(evidence), "{stderr}");
    if let Some(resumed) = report.resumed {
        assert_eq!(resumed, 1, "the client's view: its connection resumed");
    }
    let totals = server.shutdown_worker_totals(&[
        "connections_accepted",
        "retries",
        "new_tokens",
        "resumed_handshakes",
    ]);
    assert_eq!(
        totals,
        [2, 1, 2, 1],
        "connections accepted, retries, tokens handed out, resumed handshakes"
    );
}

/// 0-RTT (RFC 9001 §4.6) into `quench serve --early-data`: `client`, run with
/// `--early-data`, takes session tickets from a warm-up connection, then each of the
/// transfer's two connections sends its perf request, and its upload, as early data. Both
/// views agree on what was accepted: the client's report, and the server's counters of
/// accepted early data and of 0-RTT packets processed.
///
/// `replay`: both connections present the same ticket (`--early-data-replay`), as an
/// attacker replaying a first flight would. The ticket is single-use, so the server
/// accepts one connection's early data and resumes it; the other gets a full handshake,
/// its 0-RTT packets are dropped, and the client sends their frames again in 1-RTT: both
/// transfers complete.
pub fn client_early_data(client: Peer, replay: bool) {
    let _serial = serial();
    let dir = temp_dir();
    let certs = Certs::generate(dir.path());
    let server = Server::quench_with(&certs, dir.path(), dir.path(), &["--early-data", "1024"]);
    let transfer = Transfer::perf(2 * MIB, 256 * 1024).conns(2);
    let mut cmd = client_command(client, server.addr, &certs.ca, &transfer);
    cmd.arg("--early-data");
    if replay {
        cmd.arg("--early-data-replay");
    }
    let report = run_client(cmd, transfer.timeout());
    assert_perf(&report, &transfer);
    let accepted = if replay { 1 } else { 2 };
    assert_eq!(
        report.early_data,
        Some(accepted),
        "the client's view of its early data"
    );
    assert_early_data_counters(server, 3, accepted, 2 * accepted);
}

/// 0-RTT from `client` (MsQuic, quiche), which presents the one ticket its warm-up got on
/// every connection, into `quench serve --early-data`: the ticket is single-use, so of the
/// transfer's two connections one resumes with its early data accepted and the other, a
/// replay of the same ticket, gets a full handshake, its 0-RTT packets dropped and sent
/// again by the client. Both transfers complete; quench's counters tell the two apart.
pub fn client_early_data_reusing_one_ticket(client: Peer) {
    let _serial = serial();
    let dir = temp_dir();
    let certs = Certs::generate(dir.path());
    let server = Server::quench_with(&certs, dir.path(), dir.path(), &["--early-data", "1024"]);
    let transfer = Transfer::perf(2 * MIB, MIB).conns(2);
    let mut cmd = client_command(client, server.addr, &certs.ca, &transfer);
    cmd.arg("--early-data");
    let report = run_client(cmd, transfer.timeout());
    assert_perf(&report, &transfer);
    assert_eq!(report.resumed, Some(1), "the client's view: {report:?}");
    assert_early_data_counters(server, 3, 1, 1);
}

/// `quench client --early-data` against the server `spawn` makes, which must hand out
/// tickets allowing 0-RTT: after warm-ups for tickets, every one of 3 connections sends its
/// perf request and upload as 0-RTT packets and has its early data accepted (the client
/// reports the server's EncryptedExtensions), and the transfer completes.
pub fn quench_client_early_data(spawn: fn(&Certs, &Path, &Path) -> Server) {
    let _serial = serial();
    let server = Hosted::start(spawn);
    let transfer = Transfer::perf(3 * MIB, MIB).conns(3);
    let mut cmd = client_command(
        Peer::Quench,
        server.server.addr,
        &server.certs.ca,
        &transfer,
    );
    cmd.arg("--early-data");
    let report = run_client(cmd, transfer.timeout());
    assert_perf(&report, &transfer);
    assert_eq!(report.early_data, Some(3), "the client's view");
    assert!(report.zero_rtt_packets.unwrap_or(0) >= 3, "{report:?}");
}

/// The 0-RTT figures of quench `server`'s final counters: `conns` connections accepted,
/// `accepted` of them resumed with their early data accepted, and at least `min_packets`
/// 0-RTT packets processed.
pub fn assert_early_data_counters(server: Server, conns: u64, accepted: u64, min_packets: u64) {
    let totals = server.shutdown_worker_totals(&[
        "connections_accepted",
        "resumed_handshakes",
        "early_data_accepted",
        "zero_rtt_packets",
    ]);
    assert_eq!(
        totals[..3],
        [conns, accepted, accepted],
        "connections accepted, resumed, with early data accepted"
    );
    assert!(
        totals[3] >= min_packets,
        "0-RTT packets processed: {}",
        totals[3]
    );
}

/// TLS resumption with the server `spawn` makes: `quench client --resume` gathers its
/// session tickets with warm-up connections, then `resumed` of the transfer's `conns`
/// connections resume (the client's report; rustls only says so when the server accepted
/// the ticket), and the transfer completes either way.
pub fn quench_client_resumes(spawn: fn(&Certs, &Path, &Path) -> Server, conns: u64, resumed: u64) {
    let _serial = serial();
    let server = Hosted::start(spawn);
    let transfer = Transfer::perf(conns * MIB, MIB).conns(conns);
    let mut cmd = client_command(
        Peer::Quench,
        server.server.addr,
        &server.certs.ca,
        &transfer,
    );
    cmd.arg("--resume");
    let report = run_client(cmd, transfer.timeout());
    assert_perf(&report, &transfer);
    assert_eq!(report.resumed, Some(resumed), "connections that resumed");
}

/// `client`, trusting another CA, refuses the server `spawn` makes (its stderr naming
/// `expected` if given); the server survives the failed handshake and serves `client` next.
pub fn untrusted_server_refused(
    spawn: fn(&Certs, &Path, &Path) -> Server,
    client: Peer,
    expected: Option<&str>,
) {
    let _serial = serial();
    let server = Hosted::start(spawn);
    let other = temp_dir();
    let stranger = Certs::generate(other.path());
    let transfer = Transfer::perf(1000, 0);
    let out = run_client_expect_failure(client_command(
        client,
        server.server.addr,
        &stranger.ca,
        &transfer,
    ));
    if let Some(expected) = expected {
        assert!(out.stderr.contains(expected), "{}", out.stderr);
    }
    assert_perf(&server.transfer(client, &transfer), &transfer);
}

/// quench given two certificates (`--cert`/`--key` twice) presents to `client` the one for
/// the name it asks for (SNI): a client trusting only that certificate's CA completes and
/// one trusting only the other's is refused, for an exact name, a name under a wildcard,
/// and no name at all (an IP address, which clients send no SNI for: the first pair).
pub fn certificate_chosen_by_server_name(client: Peer) {
    let _serial = serial();
    let dir = temp_dir();
    let a = Certs::generate_named(dir.path(), "a-", &["a.example", "127.0.0.1"]);
    let b = Certs::generate_named(dir.path(), "b-", &["*.b.example"]);
    let mut args = cert_args(&a);
    args.extend(cert_args(&b));
    let server = Server::spawn("quench", &quench_bin(), &["serve"], args, dir.path());
    for (name, served, other) in [
        ("a.example", &a, &b),
        ("x.b.example", &b, &a),
        ("127.0.0.1", &a, &b),
    ] {
        let transfer = Transfer::perf(64 << 10, 1000).server_name(name);
        assert_perf(
            &run_transfer(client, server.addr, &served.ca, &transfer),
            &transfer,
        );
        run_client_expect_failure(client_command(client, server.addr, &other.ca, &transfer));
    }
}

/// One HTTP/1.1 GET of `path` from `addr`: the response's head and body.
pub fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connecting for HTTP");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("sending GET");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("reading response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
    (head.to_string(), body.to_string())
}

/// Prometheus text parsed by Prometheus's own Python client (`prometheus_client.parser`,
/// in the test venv), which fails on lines it cannot read: each family's type, and every
/// sample as (name, labels, value). That parser lets a repeated TYPE line or series pass,
/// so `parse` checks those itself.
pub struct Scraped {
    pub types: std::collections::HashMap<String, String>,
    pub samples: Vec<(String, std::collections::HashMap<String, String>, f64)>,
}

impl Scraped {
    pub fn parse(text: &str) -> Scraped {
        let mut seen = std::collections::HashSet::new();
        for line in text.lines() {
            let id = match line.strip_prefix("# TYPE ") {
                Some(typed) => typed.split(' ').next().unwrap_or_default(),
                None => line.rsplit_once(' ').map_or(line, |(id, _)| id),
            };
            assert!(
                seen.insert((line.starts_with('#'), id)),
                "{id} twice in\n{text}"
            );
        }
        const SCRIPT: &str = "\
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {'types': {}, 'samples': []}
for f in text_string_to_metric_families(sys.stdin.read()):
    out['types'][f.name] = f.type
    out['samples'] += [[s.name, s.labels, s.value] for s in f.samples]
print(json.dumps(out))
";
        let mut child = Command::new(aioquic_python())
            .args(["-c", SCRIPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning the venv python");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("writing the scrape");
        let out = child.wait_with_output().expect("python runs");
        assert!(
            out.status.success(),
            "prometheus_client refused the scrape: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("parser JSON");
        Scraped {
            types: serde_json::from_value(v["types"].clone()).expect("types"),
            samples: serde_json::from_value(v["samples"].clone()).expect("samples"),
        }
    }

    /// The samples named `name`, summed over their labels.
    pub fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, _, v)| v)
            .sum()
    }

    /// The sample named `name` whose `label` is `value`.
    pub fn get(&self, name: &str, label: &str, value: &str) -> Option<f64> {
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && l.get(label).map(String::as_str) == Some(value))
            .map(|(_, _, v)| *v)
    }
}

/// Runs `program`'s datagram echo client (`--alpn echo --datagrams 2000 --conns 2`)
/// against `server` and checks its report (`assert_datagrams_echoed`).
pub fn assert_all_datagrams_echoed(
    program: std::path::PathBuf,
    server: &Server,
    ca: &std::path::Path,
) {
    let mut cmd = std::process::Command::new(program);
    cmd.arg("client")
        .args(["--connect", &server.addr.to_string()])
        .arg("--ca")
        .arg(ca);
    assert_datagrams_echoed(cmd, 2000);
}

/// Runs the client `cmd` with `--alpn echo --datagrams PER_CONN --conns 2` and checks its
/// report: every datagram came back, byte for byte (the client checks each, and that none
/// comes twice). On loopback, with at most 32 (quench) or paced at ~5 MB/s (quinn, MsQuic)
/// awaiting their echo, none is lost.
pub fn assert_datagrams_echoed(mut cmd: std::process::Command, per_conn: u32) {
    let per_conn_arg = per_conn.to_string();
    cmd.args([
        "--alpn",
        "echo",
        "--datagrams",
        &per_conn_arg,
        "--conns",
        "2",
    ]);
    let out = run_process(cmd, std::time::Duration::from_secs(120));
    assert!(
        out.status.success(),
        "client failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    let line = out.stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(line).expect("one JSON line");
    assert_eq!(v["datagrams_sent"], 2 * per_conn, "{line}");
    assert_eq!(v["datagrams_echoed"], 2 * per_conn, "{line}");
    assert_eq!(v["bytes_down"], v["bytes_up"], "{line}");
}

/// Stops a `quench serve --prefer-version 2` that `conns` clients reached with a v1 first
/// flight listing v2, and checks that it moved every one to v2 by compatible version
/// negotiation (RFC 9368 §2.3), without a Version Negotiation packet.
pub fn assert_quench_moved_all_to_v2(server: Server, conns: u64) {
    let totals = server.shutdown_worker_totals(&[
        "connections_accepted",
        "compatible_version_switches",
        "version_negotiations",
    ]);
    assert_eq!(
        totals,
        [conns, conns, 0],
        "connections accepted, compatible switches, Version Negotiations sent"
    );
}

/// A client report whose `conns` connections all ended in QUIC v2 after starting in
/// v1: the server moved each by compatible version negotiation (RFC 9368 §2.3).
pub fn assert_client_moved_all_to_v2(report: &Report, conns: u64) {
    assert_eq!(report.quic_version.as_deref(), Some("0x6b3343cf"));
    assert_eq!(
        report.version_switches,
        Some(conns),
        "every connection switched"
    );
}

/// Python interpreter with aioquic: `$AIOQUIC_PYTHON`, else the venv `scripts/deps.sh` makes.
pub fn aioquic_python() -> PathBuf {
    let path = std::env::var_os("AIOQUIC_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    assert!(
        path.is_file(),
        "aioquic python not found at {} (run scripts/deps.sh or set AIOQUIC_PYTHON)",
        path.display()
    );
    path
}

/// One of ngtcp2's example programs (`gtlsclient`, `gtlsserver`: Debian's `ngtcp2-client` and
/// `ngtcp2-server`, ngtcp2 + nghttp3 + GnuTLS), found on `PATH` or in /usr/bin, /usr/sbin
/// (where Debian puts the server, often not on a user's `PATH`). Panics, naming the packages,
/// when it is missing: the ngtcp2 interop tests must not pass by skipping.
pub fn ngtcp2_bin(name: &str) -> PathBuf {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` not found on PATH or in /usr/bin, /usr/sbin: the ngtcp2 interop tests \
                 need Debian's ngtcp2-client and ngtcp2-server packages \
                 (`apt-get install ngtcp2-client ngtcp2-server`, or run scripts/deps.sh)"
            )
        })
}

/// The aioquic HTTP/3 client and server (`aioquic_h3.py client|server`).
pub fn aioquic_h3_script() -> PathBuf {
    workspace_root().join("tests/python/aioquic_h3.py")
}

pub fn aioquic_client_script() -> PathBuf {
    workspace_root().join("tests/python/aioquic_client.py")
}

pub fn aioquic_server_script() -> PathBuf {
    workspace_root().join("tests/python/aioquic_server.py")
}

// ---- files ------------------------------------------------------------------------------------

pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("quench-tests-")
        .tempdir()
        .expect("creating a temp dir")
}

/// A CA and a leaf certificate it signed (SAN localhost, 127.0.0.1, ::1), as PEM files.
pub struct Certs {
    /// The CA certificate clients pin with `--ca`.
    pub ca: PathBuf,
    /// The leaf certificate followed by the CA (the chain a server presents).
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certs {
    pub fn generate(dir: &Path) -> Certs {
        Certs::generate_named(dir, "", &["localhost", "127.0.0.1", "::1"])
    }

    /// A CA of its own and a leaf it signed for `names` (DNS names or IP addresses), as
    /// `{tag}ca.pem`, `{tag}cert.pem` and `{tag}key.pem` in `dir`.
    pub fn generate_named(dir: &Path, tag: &str, names: &[&str]) -> Certs {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "quench test CA");
        let ca = ca_params.self_signed(&ca_key).expect("self-signing CA");

        let leaf_key = KeyPair::generate().expect("leaf key");
        let mut leaf_params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, names[0]);
        let leaf = leaf_params
            .signed_by(&leaf_key, &ca, &ca_key)
            .expect("signing leaf");

        let certs = Certs {
            ca: dir.join(format!("{tag}ca.pem")),
            cert: dir.join(format!("{tag}cert.pem")),
            key: dir.join(format!("{tag}key.pem")),
        };
        fs::write(&certs.ca, ca.pem()).expect("writing ca.pem");
        fs::write(&certs.cert, format!("{}{}", leaf.pem(), ca.pem())).expect("writing cert.pem");
        fs::write(&certs.key, leaf_key.serialize_pem()).expect("writing key.pem");
        certs
    }
}

/// Writes `len` random bytes to `dir/name`; returns the hex SHA-256 of the content.
pub fn random_file(dir: &Path, name: &str, len: usize) -> String {
    let mut data = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut data);
    fs::write(dir.join(name), &data).expect("writing random file");
    sha256_hex(&data)
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn tail(path: &Path, max_bytes: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let cut = text.len().saturating_sub(max_bytes);
    let cut = (cut..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[cut..].to_string()
}

// ---- servers ----------------------------------------------------------------------------------

/// Which implementation runs a role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Quench,
    Quinn,
    /// `s2n-peer` (AWS s2n-quic).
    S2n,
    /// `quiche-peer` (Cloudflare quiche).
    Quiche,
    /// `msquic-peer` (Microsoft MsQuic).
    Msquic,
    Aioquic,
}

/// A server process on a loopback port; SIGTERM (then SIGKILL) when dropped.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    name: String,
    stderr_log: PathBuf,
    stdout_log: PathBuf,
}

impl Server {
    /// `quench serve` with the given certificate and hq-interop root.
    pub fn quench(certs: &Certs, root: &Path, logs: &Path) -> Server {
        Server::quench_with(certs, root, logs, &[])
    }

    /// `quench serve` as [`Server::quench`], plus `extra` flags.
    pub fn quench_with(certs: &Certs, root: &Path, logs: &Path, extra: &[&str]) -> Server {
        let mut args = cert_args(certs);
        args.extend(["--root".into(), root.into()]);
        args.extend(extra.iter().map(OsString::from));
        Server::spawn("quench", &quench_bin(), &["serve"], args, logs)
    }

    /// `quench serve` with its own generated certificate, written to `cert_out` (`--write-cert`).
    pub fn quench_generated_cert(cert_out: &Path, logs: &Path) -> Server {
        let args = vec!["--write-cert".into(), cert_out.into()];
        Server::spawn("quench", &quench_bin(), &["serve"], args, logs)
    }

    /// `quinn-peer server`.
    pub fn quinn(certs: &Certs, root: &Path, logs: &Path) -> Server {
        Server::quinn_with(certs, root, logs, &[])
    }

    /// `quinn-peer server` as [`Server::quinn`], plus `extra` flags (`--no-migration`,
    /// `--zero-length-cids`).
    pub fn quinn_with(certs: &Certs, root: &Path, logs: &Path, extra: &[&str]) -> Server {
        let mut args = cert_args(certs);
        args.extend(["--root".into(), root.into()]);
        args.extend(extra.iter().map(OsString::from));
        Server::spawn("quinn-peer", &quinn_peer_bin(), &["server"], args, logs)
    }

    /// `s2n-peer server`.
    pub fn s2n(certs: &Certs, root: &Path, logs: &Path) -> Server {
        let mut args = cert_args(certs);
        args.extend(["--root".into(), root.into()]);
        Server::spawn("s2n-peer", &s2n_peer_bin(), &["server"], args, logs)
    }

    /// `msquic-peer server`.
    pub fn msquic(certs: &Certs, root: &Path, logs: &Path) -> Server {
        Server::msquic_with(certs, root, logs, &[])
    }

    /// `msquic-peer server` as [`Server::msquic`], plus `extra` flags (`--retry`,
    /// `--quic-version 2,1`).
    pub fn msquic_with(certs: &Certs, root: &Path, logs: &Path, extra: &[&str]) -> Server {
        let mut args = cert_args(certs);
        args.extend(["--root".into(), root.into()]);
        args.extend(extra.iter().map(OsString::from));
        Server::spawn("msquic-peer", &msquic_peer_bin(), &["server"], args, logs)
    }

    /// `quiche-peer server`.
    pub fn quiche(certs: &Certs, root: &Path, logs: &Path) -> Server {
        Server::quiche_with(certs, root, logs, &[])
    }

    /// `quiche-peer server` plus `extra` flags (`--early-data`).
    pub fn quiche_with(certs: &Certs, root: &Path, logs: &Path, extra: &[&str]) -> Server {
        let mut args = cert_args(certs);
        args.extend(["--root".into(), root.into()]);
        args.extend(extra.iter().map(OsString::from));
        Server::spawn("quiche-peer", &quiche_peer_bin(), &["server"], args, logs)
    }

    /// `aioquic_server.py` (aioquic's asyncio server) with the given certificate and
    /// hq-interop root, plus `extra` flags (`--retry`, `--quic-versions 1`, ...).
    pub fn aioquic(certs: &Certs, root: &Path, logs: &Path, extra: &[&str]) -> Server {
        let script = aioquic_server_script();
        let script = script.to_str().expect("the workspace path is UTF-8");
        let mut args = cert_args(certs);
        args.extend(["--root".into(), root.into()]);
        args.extend(extra.iter().map(OsString::from));
        Server::spawn("aioquic", &aioquic_python(), &[script], args, logs)
    }

    /// `aioquic_h3.py server`: aioquic's HTTP/3 layer serving `root` to GET and HEAD.
    pub fn aioquic_h3(certs: &Certs, root: &Path, logs: &Path) -> Server {
        let script = aioquic_h3_script();
        let script = script.to_str().expect("the workspace path is UTF-8");
        let mut args = cert_args(certs);
        args.extend(["--root".into(), root.into()]);
        Server::spawn(
            "aioquic-h3",
            &aioquic_python(),
            &[script, "server"],
            args,
            logs,
        )
    }

    /// ngtcp2's HTTP/3 example server, `gtlsserver -q -d ROOT 127.0.0.1 PORT KEY CERT`, on a
    /// free port. It prints nothing when ready, so readiness is the port being taken: a probe
    /// bind that fails with `AddrInUse`. (A probe that wins the race makes the server exit,
    /// and the next attempt takes a fresh port.)
    pub fn ngtcp2(certs: &Certs, root: &Path, logs: &Path) -> Server {
        let program = ngtcp2_bin("gtlsserver");
        Server::on_free_port("gtlsserver", "a bound port", |attempt, addr| {
            let stderr_log = logs.join(format!("gtlsserver-{attempt}.stderr.log"));
            let stdout_log = logs.join(format!("gtlsserver-{attempt}.stdout.log"));
            let child = Command::new(&program)
                .arg("-q")
                .arg("-d")
                .arg(root)
                .arg(addr.ip().to_string())
                .arg(addr.port().to_string())
                .arg(&certs.key)
                .arg(&certs.cert)
                .stdin(Stdio::null())
                .stdout(File::create(&stdout_log).expect("creating server log"))
                .stderr(File::create(&stderr_log).expect("creating server log"))
                .spawn()
                .unwrap_or_else(|e| panic!("spawning {}: {e}", program.display()));
            let mut server = Server {
                child: Some(child),
                addr,
                name: "gtlsserver".to_string(),
                stderr_log,
                stdout_log,
            };
            let ready = server.wait_bound();
            (server, ready)
        })
    }

    /// Runs `start` on free ports until a server comes up; a process that dies first
    /// possibly lost its port to another one, so the next attempt takes a fresh port.
    /// `awaited` names the readiness sign, for the timeout message.
    fn on_free_port(
        name: &str,
        awaited: &str,
        mut start: impl FnMut(usize, SocketAddr) -> (Server, Ready),
    ) -> Server {
        let mut failures = Vec::new();
        for attempt in 0..PORT_ATTEMPTS {
            let addr = free_udp_port();
            let (mut server, ready) = start(attempt, addr);
            match ready {
                Ready::Yes => return server,
                Ready::Exited(why) => {
                    failures.push(format!(
                        "attempt {attempt} on {addr}: {why}\n{}",
                        tail(&server.stderr_log, 4000)
                    ));
                    server.stop();
                }
                Ready::TimedOut => {
                    let log = server.stderr();
                    server.stop();
                    panic!("{name} server showed no {awaited} on {addr} within {READY_TIMEOUT:?}\n{log}");
                }
            }
        }
        panic!("{name} server never became ready:\n{}", failures.join("\n"));
    }

    /// Waits until the server's UDP port is taken (see [`Server::ngtcp2`]).
    fn wait_bound(&mut self) -> Ready {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                return Ready::Exited(format!("exited with {status} before binding"));
            }
            match UdpSocket::bind(self.addr) {
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => return Ready::Yes,
                _ => {}
            }
            if Instant::now() > deadline {
                return Ready::TimedOut;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts `program subcommand.. --listen 127.0.0.1:PORT args..` on a free port and waits
    /// for its `listening on` line; retries on a new port if the process dies first.
    pub fn spawn(
        name: &str,
        program: &Path,
        subcommand: &[&str],
        args: Vec<OsString>,
        logs: &Path,
    ) -> Server {
        Server::on_free_port(name, "`listening on` line", |attempt, addr| {
            let stderr_log = logs.join(format!("{name}-server-{attempt}.stderr.log"));
            let stderr = File::create(&stderr_log).expect("creating server log");
            let mut child = Command::new(program)
                .args(subcommand)
                .arg("--listen")
                .arg(addr.to_string())
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(stderr)
                .spawn()
                .unwrap_or_else(|e| panic!("spawning {}: {e}", program.display()));
            let stdout_log = logs.join(format!("{name}-server-{attempt}.stdout.log"));
            let ready = watch_stdout(&mut child, stdout_log.clone());
            let mut server = Server {
                child: Some(child),
                addr,
                name: name.to_string(),
                stderr_log,
                stdout_log,
            };
            let state = server.wait_ready(&ready);
            (server, state)
        })
    }

    fn wait_ready(&mut self, ready: &mpsc::Receiver<()>) -> Ready {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut stdout_open = true;
        loop {
            if stdout_open {
                match ready.recv_timeout(Duration::from_millis(50)) {
                    Ok(()) => return Ready::Yes,
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    // Closed stdout: the process is exiting; report its status below.
                    Err(mpsc::RecvTimeoutError::Disconnected) => stdout_open = false,
                }
            } else {
                thread::sleep(Duration::from_millis(20));
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                return Ready::Exited(format!("exited with {status} before `listening on`"));
            }
            if Instant::now() > deadline {
                return Ready::TimedOut;
            }
        }
    }

    /// Graceful shutdown: SIGTERM and wait. Panics if the process must be killed.
    pub fn shutdown(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server still running");
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        match wait_timeout(&mut child, SHUTDOWN_GRACE) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} server ignored SIGTERM for {SHUTDOWN_GRACE:?}\n{}",
                    self.name,
                    tail(&self.stderr_log, 4000)
                );
            }
        }
    }

    /// `shutdown`, then the `quench_stats` JSON line quench prints on its way out.
    pub fn shutdown_stats(self) -> serde_json::Value {
        let stdout_log = self.stdout_log.clone();
        let status = self.shutdown();
        assert!(status.success(), "server exited with {status}");
        // The line reaches the log through a reader thread: give it a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = fs::read_to_string(&stdout_log).unwrap_or_default();
            if let Some(line) = out.lines().rev().find(|l| l.contains("quench_stats")) {
                let v: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
                return v["quench_stats"].clone();
            }
            assert!(
                Instant::now() < deadline,
                "no quench_stats line on stdout:\n{out}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `shutdown_stats`, summed over quench's workers: `field` of each worker's counters.
    pub fn shutdown_worker_totals(self, fields: &[&str]) -> Vec<u64> {
        let stats = self.shutdown_stats();
        let workers = stats["workers"].as_array().expect("workers").clone();
        fields
            .iter()
            .map(|field| {
                workers
                    .iter()
                    .map(|w| w[*field].as_u64().unwrap_or(0))
                    .sum()
            })
            .collect()
    }

    /// `shutdown`, which must exit 0, then everything the server wrote to stderr.
    pub fn shutdown_stderr(self) -> String {
        let stderr_log = self.stderr_log.clone();
        let name = self.name.clone();
        let status = self.shutdown();
        let stderr = fs::read_to_string(&stderr_log).unwrap_or_default();
        assert!(
            status.success(),
            "{name} server exited with {status} on SIGTERM\n{stderr}"
        );
        stderr
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            if wait_timeout(&mut child, SHUTDOWN_GRACE).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// The server's stderr so far (for failure messages).
    pub fn stderr(&self) -> String {
        tail(&self.stderr_log, 8000)
    }

    /// Everything the server has printed on stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout_log).unwrap_or_default()
    }
}

enum Ready {
    Yes,
    Exited(String),
    TimedOut,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            eprintln!(
                "--- {} server stderr (tail) ---\n{}",
                self.name,
                self.stderr()
            );
        }
    }
}

fn cert_args(certs: &Certs) -> Vec<OsString> {
    vec![
        "--cert".into(),
        certs.cert.clone().into(),
        "--key".into(),
        certs.key.clone().into(),
    ]
}

/// A loopback UDP port nobody holds right now (the server binds it moments later; the rare
/// race is covered by retrying in `Server::spawn`).
fn free_udp_port() -> SocketAddr {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding an ephemeral port");
    socket.local_addr().expect("local addr")
}

/// Copies the child's stdout to `log` and signals once a line contains `listening on`.
fn watch_stdout(child: &mut Child, log: PathBuf) -> mpsc::Receiver<()> {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut log = File::create(log).ok();
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(log) = log.as_mut() {
                let _ = writeln!(log, "{line}");
            }
            if line.contains("listening on") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
            }
        }
    });
    rx
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The summary `aioquic_server.py` logs for each connection once it is over (or still open
/// at shutdown), in order: `aioquic_server: closed {"version": "0x00000001", "retry": false,
/// "peer_key_updates": 0, "streams": 2, "bytes_in": N, "bytes_out": N, ...}`.
pub fn aioquic_server_connections(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter_map(|line| line.strip_prefix("aioquic_server: closed "))
        .map(|json| serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}")))
        .collect()
}

// ---- clients ----------------------------------------------------------------------------------

/// What a client run should do; turns into the shared client CLI.
#[derive(Clone, Debug)]
pub struct Transfer {
    pub alpn: &'static str,
    pub down: u64,
    pub up: u64,
    pub streams: u64,
    pub conns: u64,
    pub gets: Vec<String>,
    pub key_update_after: Option<u64>,
    /// The name the client asks for (SNI) and checks the certificate against.
    pub server_name: &'static str,
}

impl Transfer {
    pub fn perf(down: u64, up: u64) -> Transfer {
        Transfer {
            alpn: "perf",
            down,
            up,
            streams: 1,
            conns: 1,
            gets: Vec::new(),
            key_update_after: None,
            server_name: "localhost",
        }
    }

    pub fn hq(gets: &[&str]) -> Transfer {
        Transfer {
            alpn: "hq-interop",
            gets: gets.iter().map(|g| g.to_string()).collect(),
            ..Transfer::perf(0, 0)
        }
    }

    /// HTTP/3 GETs (`--alpn h3 --get PATH..`).
    pub fn h3(gets: &[&str]) -> Transfer {
        Transfer {
            alpn: "h3",
            ..Transfer::hq(gets)
        }
    }

    pub fn server_name(mut self, name: &'static str) -> Transfer {
        self.server_name = name;
        self
    }

    pub fn streams(mut self, n: u64) -> Transfer {
        self.streams = n;
        self
    }

    pub fn conns(mut self, n: u64) -> Transfer {
        self.conns = n;
        self
    }

    pub fn key_update_after(mut self, bytes: u64) -> Transfer {
        self.key_update_after = Some(bytes);
        self
    }

    /// How long a client may take for this transfer before it counts as hung.
    pub fn timeout(&self) -> Duration {
        // hq-interop and h3 sizes live in files the client does not know of: allow the maximum.
        if self.alpn == "hq-interop" || self.alpn == "h3" {
            return CLIENT_MAX_TIMEOUT;
        }
        let transfer = Duration::from_secs((self.down + self.up) / CLIENT_FLOOR_BYTES_PER_SEC);
        (CLIENT_BASE_TIMEOUT + transfer).min(CLIENT_MAX_TIMEOUT)
    }

    fn args(&self, server: SocketAddr, ca: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--connect".into(),
            server.to_string().into(),
            "--alpn".into(),
            self.alpn.into(),
            "--down".into(),
            self.down.to_string().into(),
            "--up".into(),
            self.up.to_string().into(),
            "--streams".into(),
            self.streams.to_string().into(),
            "--conns".into(),
            self.conns.to_string().into(),
            "--ca".into(),
            ca.into(),
            "--server-name".into(),
            self.server_name.into(),
        ];
        for path in &self.gets {
            args.extend(["--get".into(), path.into()]);
        }
        if let Some(bytes) = self.key_update_after {
            args.extend(["--key-update-after".into(), bytes.to_string().into()]);
        }
        args
    }
}

/// The client command line for `peer` running `transfer` against `server`.
pub fn client_command(peer: Peer, server: SocketAddr, ca: &Path, transfer: &Transfer) -> Command {
    let mut cmd = match peer {
        Peer::Quench => {
            let mut c = Command::new(quench_bin());
            c.arg("client");
            c
        }
        Peer::Quinn => {
            let mut c = Command::new(quinn_peer_bin());
            c.arg("client");
            c
        }
        Peer::S2n => {
            let mut c = Command::new(s2n_peer_bin());
            c.arg("client");
            c
        }
        Peer::Quiche => {
            let mut c = Command::new(quiche_peer_bin());
            c.arg("client");
            c
        }
        Peer::Msquic => {
            let mut c = Command::new(msquic_peer_bin());
            c.arg("client");
            c
        }
        Peer::Aioquic => {
            let mut c = Command::new(aioquic_python());
            c.arg(aioquic_client_script());
            c
        }
    };
    cmd.args(transfer.args(server, ca));
    cmd
}

/// The JSON line every client prints when done.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub handshake_ms: f64,
    pub bytes_down: u64,
    pub bytes_up: u64,
    pub seconds: f64,
    pub throughput_mbps: f64,
    pub streams: u64,
    pub sha256: Option<String>,
    pub key_updates: u64,
    /// Largest maximum datagram size a connection reached (quench and quinn clients print it;
    /// s2n-peer prints null; quiche-peer the size it sends, discovery being off).
    pub max_datagram_size: Option<u64>,
    /// The QUIC version the connections used, as `0x…` (quench's client prints it).
    pub quic_version: Option<String>,
    /// Connections whose TLS handshake resumed a session (quench's and aioquic's clients
    /// print it).
    pub resumed: Option<u64>,
    /// Connections whose early data (0-RTT) the server accepted (clients run with
    /// `--early-data` print it), and the 0-RTT packets they sent (quench's client).
    pub early_data: Option<u64>,
    pub zero_rtt_packets: Option<u64>,
    /// Connections the server moved to another version than their first flight's
    /// (compatible version negotiation; quench's client prints it).
    pub version_switches: Option<u64>,
    /// Packets the client declared lost, and received packets that failed authentication
    /// (quench's client prints them).
    pub packets_lost: Option<u64>,
    pub authentication_failures: Option<u64>,
    /// quench's client: its ECN outcome over its connections (`ClientReport`).
    pub ecn: Option<ClientEcn>,
}

/// The `ecn` object of quench's client report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientEcn {
    pub capable: u64,
    pub failures: u64,
    pub marked_sent: u64,
    pub ect0_received: u64,
}

impl Report {
    /// Parses and checks the line against the contract: every field present, right types.
    pub fn parse(line: &str) -> Result<Report, String> {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("not JSON ({e}): {line}"))?;
        let obj = v
            .as_object()
            .ok_or_else(|| format!("not a JSON object: {line}"))?;
        let float = |k: &str| {
            obj.get(k)
                .and_then(|x| x.as_f64())
                .ok_or_else(|| format!("missing or non-numeric `{k}` in {line}"))
        };
        let int = |k: &str| {
            obj.get(k)
                .and_then(|x| x.as_u64())
                .ok_or_else(|| format!("missing or non-u64 `{k}` in {line}"))
        };
        let sha256 = match obj.get("sha256") {
            Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            _ => return Err(format!("`sha256` must be a string or null in {line}")),
        };
        Ok(Report {
            handshake_ms: float("handshake_ms")?,
            bytes_down: int("bytes_down")?,
            bytes_up: int("bytes_up")?,
            seconds: float("seconds")?,
            throughput_mbps: float("throughput_mbps")?,
            streams: int("streams")?,
            sha256,
            key_updates: int("key_updates")?,
            max_datagram_size: obj.get("max_datagram_size").and_then(|x| x.as_u64()),
            quic_version: obj
                .get("quic_version")
                .and_then(|x| x.as_str())
                .map(String::from),
            resumed: obj.get("resumed").and_then(|x| x.as_u64()),
            early_data: obj.get("early_data").and_then(|x| x.as_u64()),
            zero_rtt_packets: obj.get("zero_rtt_packets").and_then(|x| x.as_u64()),
            version_switches: obj.get("version_switches").and_then(|x| x.as_u64()),
            packets_lost: obj.get("packets_lost").and_then(|x| x.as_u64()),
            authentication_failures: obj.get("authentication_failures").and_then(|x| x.as_u64()),
            ecn: obj.get("ecn").and_then(|e| {
                let n = |k: &str| e.get(k).and_then(|x| x.as_u64());
                Some(ClientEcn {
                    capable: n("capable")?,
                    failures: n("failures")?,
                    marked_sent: n("marked_sent")?,
                    ect0_received: n("ect0_received")?,
                })
            }),
        })
    }
}

/// Output of a finished client process.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a client to completion, killing it after `timeout`.
pub fn run_process(mut cmd: Command, timeout: Duration) -> Finished {
    let description = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {description}: {e}"));
    let stdout = read_all_in_background(child.stdout.take().expect("piped"));
    let stderr = read_all_in_background(child.stderr.take().expect("piped"));
    let status = match wait_timeout(&mut child, timeout) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = stderr.join().unwrap_or_default();
            panic!("client timed out after {timeout:?}: {description}\nstderr:\n{stderr}");
        }
    };
    Finished {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

fn read_all_in_background(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// The ECN counters of a `quench serve` over its connections (RFC 9000 §13.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EcnTotals {
    /// Connections whose path passed validation.
    pub capable: u64,
    pub failures: u64,
    /// 1-RTT packets quench sent marked ECT(0).
    pub marked: u64,
    /// ECT(0)-marked packets quench received from the peer.
    pub ect0_received: u64,
}

/// Runs `peer`'s client for an 8 MiB down, 4 MiB up perf transfer against a fresh
/// `quench serve`, then reads the server's ECN counters.
#[allow(dead_code)]
pub fn ecn_against(peer: Peer) -> EcnTotals {
    let dir = temp_dir();
    let certs = Certs::generate(dir.path());
    let server = Server::quench_with(&certs, dir.path(), dir.path(), &[]);
    let transfer = Transfer::perf(8 * MIB, 4 * MIB);
    let report = run_transfer(peer, server.addr, &certs.ca, &transfer);
    assert_perf(&report, &transfer);
    let t = server.shutdown_worker_totals(&[
        "ecn_capable_connections",
        "ecn_failures",
        "ecn_marked_sent",
        "ecn_ect0_received",
    ]);
    EcnTotals {
        capable: t[0],
        failures: t[1],
        marked: t[2],
        ect0_received: t[3],
    }
}

/// Runs `peer`'s client for `transfer` against `server`, which must succeed; returns its report.
pub fn run_transfer(peer: Peer, server: SocketAddr, ca: &Path, transfer: &Transfer) -> Report {
    run_client(
        client_command(peer, server, ca, transfer),
        transfer.timeout(),
    )
}

/// Runs a client that must succeed and print exactly one JSON line; returns its report.
pub fn run_client(cmd: Command, timeout: Duration) -> Report {
    run_client_with_stderr(cmd, timeout).0
}

/// `run_client`, also returning what the client wrote to stderr.
pub fn run_client_with_stderr(cmd: Command, timeout: Duration) -> (Report, String) {
    let description = format!("{cmd:?}");
    let out = run_process(cmd, timeout);
    assert!(
        out.status.success(),
        "client failed ({}): {description}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    let lines: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "client must print exactly one JSON line on stdout: {description}\nstdout:\n{}",
        out.stdout
    );
    let report = Report::parse(lines[0]).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.seconds > 0.0, "non-positive duration: {report:?}");
    assert!(
        report.handshake_ms > 0.0,
        "non-positive handshake time: {report:?}"
    );
    (report, out.stderr)
}

/// Runs a client that must fail (non-zero exit) within the base timeout.
pub fn run_client_expect_failure(cmd: Command) -> Finished {
    let description = format!("{cmd:?}");
    let out = run_process(cmd, CLIENT_BASE_TIMEOUT);
    assert!(
        !out.status.success(),
        "client unexpectedly succeeded: {description}\nstdout:\n{}",
        out.stdout
    );
    out
}

// ---- assertions -------------------------------------------------------------------------------

/// Checks a perf report moved exactly what was asked.
pub fn assert_perf(report: &Report, transfer: &Transfer) {
    assert_eq!(report.bytes_down, transfer.down, "bytes_down: {report:?}");
    assert_eq!(report.bytes_up, transfer.up, "bytes_up: {report:?}");
    assert_eq!(
        report.streams,
        transfer.streams * transfer.conns,
        "streams: {report:?}"
    );
    assert_eq!(report.sha256, None, "perf runs report no hash: {report:?}");
    assert!(report.throughput_mbps > 0.0 || transfer.down + transfer.up == 0);
}

/// Checks an hq-interop report against the expected bodies' total length and hash.
pub fn assert_hq(report: &Report, expected_len: u64, expected_sha256: &str, gets: usize) {
    assert_eq!(report.bytes_down, expected_len, "bytes_down: {report:?}");
    assert_eq!(report.streams, gets as u64, "streams: {report:?}");
    assert_eq!(
        report.sha256.as_deref(),
        Some(expected_sha256),
        "sha256 of the bodies: {report:?}"
    );
}
