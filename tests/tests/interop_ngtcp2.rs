//! ngtcp2 ↔ quench over HTTP/3 (ALPN `h3`): ngtcp2's example client `gtlsclient` against
//! `quench serve`, and `quench client --alpn h3` against its example server `gtlsserver`
//! (Debian bookworm's `ngtcp2-client` / `ngtcp2-server`: ngtcp2 0.12 + nghttp3, GnuTLS).
//! The tests fail, naming the packages, when those programs are missing (scripts/deps.sh
//! installs them). Needs the quench binary (`QUENCH_BIN`, else the release build).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// gtlsclient's run time limit (each run here takes well under a second).
const GTLS_TIMEOUT: Duration = Duration::from_secs(60);

/// What gtlsclient logged about one request stream.
#[derive(Debug, Default, Clone, PartialEq)]
struct Response {
    status: Option<u16>,
    content_length: Option<u64>,
    /// Closed with H3_NO_ERROR (0x100), as gtlsclient reports every stream it finished.
    closed_ok: bool,
}

/// Runs `gtlsclient` against `server` for `paths` (in that order, on client bidirectional
/// streams 0, 4, 8, ..., all at once), plus `extra` flags; it must exit 0. Returns its log
/// (stderr, without packet and body dumps) and what it says about each stream, by stream ID.
fn gtlsclient(
    server: SocketAddr,
    paths: &[&str],
    extra: &[&str],
) -> (String, BTreeMap<u64, Response>) {
    let mut cmd = Command::new(ngtcp2_bin("gtlsclient"));
    cmd.args([
        "--no-quic-dump",
        "--no-http-dump",
        "--exit-on-all-streams-close",
        "--timeout=10s",
    ])
    .args(extra)
    .arg(server.ip().to_string())
    .arg(server.port().to_string());
    for path in paths {
        cmd.arg(format!("https://localhost:{}{path}", server.port()));
    }
    let description = format!("{cmd:?}");
    let out = run_process(cmd, GTLS_TIMEOUT);
    let stderr = out.stderr;
    assert!(
        out.status.success(),
        "gtlsclient failed ({}): {description}\nlog tail:\n{}",
        out.status,
        &stderr[stderr.len().saturating_sub(4000)..]
    );
    let responses = parse_gtlsclient_log(&stderr);
    (stderr, responses)
}

/// Picks `http: stream 0xID [:status: N]`, `http: stream 0xID [content-length: N]` and
/// `HTTP stream ID closed with error code 256` out of gtlsclient's log.
fn parse_gtlsclient_log(log: &str) -> BTreeMap<u64, Response> {
    let mut responses: BTreeMap<u64, Response> = BTreeMap::new();
    for line in log.lines() {
        if let Some(rest) = line.strip_prefix("http: stream 0x") {
            let Some((id, field)) = rest.split_once(' ') else {
                continue;
            };
            let Ok(id) = u64::from_str_radix(id, 16) else {
                continue;
            };
            if let Some(v) = field
                .strip_prefix("[:status: ")
                .and_then(|v| v.strip_suffix(']'))
            {
                responses.entry(id).or_default().status = v.parse().ok();
            } else if let Some(v) = field
                .strip_prefix("[content-length: ")
                .and_then(|v| v.strip_suffix(']'))
            {
                responses.entry(id).or_default().content_length = v.parse().ok();
            }
        } else if let Some(rest) = line.strip_prefix("HTTP stream ") {
            if let Some(id) = rest.strip_suffix(" closed with error code 256") {
                if let Ok(id) = id.parse::<u64>() {
                    responses.entry(id).or_default().closed_ok = true;
                }
            }
        }
    }
    responses
}

fn ok(content_length: u64) -> Response {
    Response {
        status: Some(200),
        content_length: Some(content_length),
        closed_ok: true,
    }
}

/// `quench serve` (default ALPNs, h3 among them) with a CA-signed certificate, serving the
/// `root` subdirectory of a temp dir.
struct QuenchServer {
    dir: tempfile::TempDir,
    server: Server,
}

impl QuenchServer {
    fn start() -> QuenchServer {
        QuenchServer::start_with(&[])
    }

    /// Plus `extra` flags for `quench serve`.
    fn start_with(extra: &[&str]) -> QuenchServer {
        let dir = temp_dir();
        let certs = Certs::generate(dir.path());
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        let server = Server::quench_with(&certs, &root, dir.path(), extra);
        QuenchServer { dir, server }
    }

    fn root(&self) -> std::path::PathBuf {
        self.dir.path().join("root")
    }

    /// A fresh directory for gtlsclient's `--download`.
    fn download_dir(&self, name: &str) -> std::path::PathBuf {
        let dir = self.dir.path().join(name);
        fs::create_dir(&dir).unwrap();
        dir
    }
}

/// SHA-256 of a downloaded file (which must exist).
fn file_sha256(path: &Path) -> String {
    let data = fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    sha256_hex(&data)
}

// ---- gtlsclient → quench serve ----------------------------------------------------------------

/// Files of every awkward size (empty, one byte, exactly one and just over one 16 KiB DATA
/// frame, ~5 MiB), a synthetic `/N` and a missing file, requested at once on one connection:
/// each download is byte-exact (SHA-256 against the source), each response has status 200 and
/// the right content-length, the missing file gets 404, and every stream closes cleanly.
#[test]
fn gtlsclient_downloads_files_from_quench() {
    let _serial = serial();
    let quench = QuenchServer::start();
    let root = quench.root();
    let files: &[(&str, usize)] = &[
        ("empty.bin", 0),
        ("one.bin", 1),
        ("16k.bin", 16 * 1024),
        ("16k1.bin", 16 * 1024 + 1),
        ("big.bin", 5 * MIB as usize + 7),
        ("hello.txt", 13),
    ];
    let mut expected = Vec::new();
    for &(name, len) in files {
        expected.push((name.to_string(), len as u64, random_file(&root, name, len)));
    }
    const SYNTHETIC: u64 = 100_003;
    expected.push((
        SYNTHETIC.to_string(),
        SYNTHETIC,
        sha256_hex(&vec![0u8; SYNTHETIC as usize]),
    ));

    let download = quench.download_dir("dl");
    let mut paths: Vec<String> = expected.iter().map(|(n, _, _)| format!("/{n}")).collect();
    paths.push("/missing.bin".into());
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    let download_flag = format!("--download={}", download.display());
    let (log, responses) = gtlsclient(quench.server.addr, &paths, &[&download_flag]);

    for (i, (name, len, sha)) in expected.iter().enumerate() {
        let stream = 4 * i as u64;
        assert_eq!(
            responses.get(&stream),
            Some(&ok(*len)),
            "GET /{name} (stream {stream}): {responses:?}"
        );
        assert_eq!(&file_sha256(&download.join(name)), sha, "GET /{name}");
    }
    let missing = 4 * expected.len() as u64;
    assert_eq!(
        responses.get(&missing).and_then(|r| r.status),
        Some(404),
        "GET /missing.bin: {responses:?}"
    );
    assert_eq!(responses.len(), paths.len(), "{responses:?}\n{log}");
    let stats = quench.server.shutdown_stats();
    let accepted: u64 = stats["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| w["connections_accepted"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(accepted, 1, "all requests on one connection: {stats}");
}

/// 0-RTT with HTTP/3 from ngtcp2's client (GnuTLS) into `quench serve --early-data`: a
/// first run keeps the session ticket and quench's transport parameters in files
/// (`--session-file`, `--tp-file`); the second resumes and sends its GET requests as early
/// data. ngtcp2 does not report the early data rejected, the files arrive byte-exact, and
/// quench counts one resumed handshake, one early data accepted and the 0-RTT packets.
#[test]
fn gtlsclient_early_data_to_quench() {
    let _serial = serial();
    let quench = QuenchServer::start_with(&["--early-data", "64"]);
    let root = quench.root();
    let sha = random_file(&root, "blob.bin", 300_007);
    let session = quench.dir.path().join("session.pem");
    let params = quench.dir.path().join("tp.pem");
    let flags = [
        format!("--session-file={}", session.display()),
        format!("--tp-file={}", params.display()),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (first, _) = gtlsclient(quench.server.addr, &["/7"], &flags);
    assert!(session.exists(), "no session ticket kept:\n{first}");
    let download = quench.download_dir("dl");
    let download_flag = format!("--download={}", download.display());
    let mut second_flags = flags.clone();
    second_flags.push(&download_flag);
    let (log, responses) = gtlsclient(quench.server.addr, &["/blob.bin", "/5"], &second_flags);
    assert!(!log.contains("Early data was rejected"), "{log}");
    assert_eq!(responses.get(&0), Some(&ok(300_007)), "{responses:?}");
    assert_eq!(responses.get(&4), Some(&ok(5)), "{responses:?}");
    assert_eq!(file_sha256(&download.join("blob.bin")), sha);
    assert_early_data_counters(quench.server, 2, 1, 1);
}

/// gtlsclient starts a key update 10 ms after the handshake, in the middle of a 20 MiB
/// download (which takes well over that here): quench follows it (ngtcp2 drops the old keys
/// soon after, so a quench that kept them would stall the transfer) and the file arrives
/// byte-exact.
#[test]
fn gtlsclient_key_update_mid_download_from_quench() {
    let _serial = serial();
    let quench = QuenchServer::start();
    let sha = random_file(&quench.root(), "big.bin", 20 * MIB as usize);
    let download = quench.download_dir("dl");
    let download_flag = format!("--download={}", download.display());
    let (log, responses) = gtlsclient(
        quench.server.addr,
        &["/big.bin"],
        &[&download_flag, "--key-update=10ms"],
    );
    assert_eq!(responses.get(&0), Some(&ok(20 * MIB)), "{responses:?}");
    assert_eq!(file_sha256(&download.join("big.bin")), sha);
    let initiated = log
        .find("Initiate key update")
        .unwrap_or_else(|| panic!("gtlsclient started no key update:\n{log}"));
    let closed = log.find("HTTP stream 0 closed").expect("the stream closed");
    assert!(
        initiated < closed,
        "the key update must start while the download is running"
    );
}

/// `gtlsclient -n 300` over three paths (16 KiB, 1 byte, `/5000`): 300 requests on one
/// connection, more than quench's initial stream limit, so it must keep raising
/// MAX_STREAMS; every response is 200 with its content-length and every stream closes.
#[test]
fn gtlsclient_many_requests_to_quench() {
    let _serial = serial();
    let quench = QuenchServer::start();
    random_file(&quench.root(), "16k.bin", 16 * 1024);
    random_file(&quench.root(), "one.bin", 1);
    let lens = [16 * 1024, 1, 5000];
    let (_log, responses) = gtlsclient(
        quench.server.addr,
        &["/16k.bin", "/one.bin", "/5000"],
        &["-n", "300"],
    );
    assert_eq!(responses.len(), 300, "{responses:?}");
    for i in 0..300u64 {
        assert_eq!(
            responses.get(&(4 * i)),
            Some(&ok(lens[(i % 3) as usize])),
            "request {i}"
        );
    }
}

/// HEAD gets the file's status and content-length but no body; a POST of the file
/// (`--data`) is answered with the length and SHA-256 quench took, equal to the file's;
/// PATCH gets 405.
#[test]
fn gtlsclient_head_post_and_patch_to_quench() {
    let _serial = serial();
    let quench = QuenchServer::start();
    let sha = random_file(&quench.root(), "file.bin", 70_000);
    let download = quench.download_dir("dl");
    let download_flag = format!("--download={}", download.display());
    let (_log, responses) = gtlsclient(
        quench.server.addr,
        &["/file.bin"],
        &[&download_flag, "--http-method=HEAD"],
    );
    assert_eq!(responses.get(&0), Some(&ok(70_000)), "{responses:?}");
    let body = download.join("file.bin");
    assert_eq!(
        fs::metadata(&body).map(|m| m.len()).unwrap_or(0),
        0,
        "HEAD has no body"
    );

    let data_flag = format!("--data={}", quench.root().join("file.bin").display());
    let (_log, responses) = gtlsclient(
        quench.server.addr,
        &["/upload"],
        &[&download_flag, "--http-method=POST", &data_flag],
    );
    assert_eq!(
        responses.get(&0).and_then(|r| r.status),
        Some(200),
        "{responses:?}"
    );
    let answer = fs::read_to_string(download.join("upload")).expect("the POST's response body");
    let answer: serde_json::Value = serde_json::from_str(&answer).expect("JSON");
    assert_eq!(answer["bytes"], 70_000, "{answer}");
    assert_eq!(answer["sha256"], sha.as_str(), "{answer}");

    let (_log, responses) =
        gtlsclient(quench.server.addr, &["/file.bin"], &["--http-method=PATCH"]);
    assert_eq!(
        responses.get(&0).and_then(|r| r.status),
        Some(405),
        "{responses:?}"
    );
}

// ---- quench client → gtlsserver ---------------------------------------------------------------

/// gtlsserver with a CA-signed certificate (its chain in cert.pem) serving `root` of a temp dir.
struct Ngtcp2Server {
    dir: tempfile::TempDir,
    certs: Certs,
    server: Server,
}

impl Ngtcp2Server {
    fn start() -> Ngtcp2Server {
        let dir = temp_dir();
        let certs = Certs::generate(dir.path());
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        let server = Server::ngtcp2(&certs, &root, dir.path());
        Ngtcp2Server { dir, certs, server }
    }

    fn root(&self) -> std::path::PathBuf {
        self.dir.path().join("root")
    }

    fn client(&self, transfer: &Transfer) -> Command {
        client_command(Peer::Quench, self.server.addr, &self.certs.ca, transfer)
    }
}

/// `quench client --alpn h3 --ca CA` (gtlsserver's certificate verified) fetches files of
/// 1 byte, 16 KiB, 16 KiB + 1, ~5 MiB and a small text one after another: `sha256` of the
/// bodies in order and `bytes_down` match the sources, `streams` counts them. (No empty
/// file: gtlsserver 0.12 answers one with 500, failing to mmap it.)
#[test]
fn quench_client_h3_gets_files_from_gtlsserver() {
    let _serial = serial();
    let ngtcp2 = Ngtcp2Server::start();
    let root = ngtcp2.root();
    let files: &[(&str, usize)] = &[
        ("one.bin", 1),
        ("16k.bin", 16 * 1024),
        ("16k1.bin", 16 * 1024 + 1),
        ("big.bin", 5 * MIB as usize + 7),
        ("hello.txt", 13),
    ];
    let mut bodies = Vec::new();
    for &(name, len) in files {
        random_file(&root, name, len);
        bodies.extend(fs::read(root.join(name)).unwrap());
    }
    let paths: Vec<String> = files.iter().map(|(n, _)| format!("/{n}")).collect();
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    let transfer = Transfer::h3(&paths);
    let report = run_client(ngtcp2.client(&transfer), transfer.timeout());
    assert_hq(
        &report,
        bodies.len() as u64,
        &sha256_hex(&bodies),
        files.len(),
    );
}

/// 0-RTT with HTTP/3 the other way: `quench client --alpn h3 --early-data` takes
/// gtlsserver's tickets on warm-up connections, then both connections send their GETs as
/// 0-RTT packets. gtlsserver (ngtcp2 0.12's example server, GnuTLS) resumes both, and
/// accepts or refuses the early data as its anti-replay window decides, which varies from
/// run to run. Either way the bodies arrive byte-exact: accepted, the answers come at once;
/// refused, the client voids what it sent and makes the requests again.
#[test]
fn quench_client_h3_early_data_with_gtlsserver() {
    let _serial = serial();
    let ngtcp2 = Ngtcp2Server::start();
    let sha = random_file(&ngtcp2.root(), "blob.bin", 200_003);
    let transfer = Transfer::h3(&["/blob.bin"]).conns(2);
    let mut cmd = ngtcp2.client(&transfer);
    cmd.arg("--early-data");
    let report = run_client(cmd, transfer.timeout());
    // Both connections fetch the file: bytes and streams add up, the digest is one's.
    assert_hq(&report, 2 * 200_003, &sha, 2);
    assert_eq!(report.resumed, Some(2), "{report:?}");
    assert!(report.early_data.is_some_and(|n| n <= 2), "{report:?}");
    assert!(
        report.zero_rtt_packets.unwrap_or(0) >= 2,
        "sent: {report:?}"
    );
}

/// The quench client starts a key update after 1 MiB of an 8 MiB body from gtlsserver;
/// ngtcp2 follows it and the body arrives intact.
#[test]
fn quench_client_h3_key_update_with_gtlsserver() {
    let _serial = serial();
    let ngtcp2 = Ngtcp2Server::start();
    let sha = random_file(&ngtcp2.root(), "big.bin", 8 * MIB as usize);
    let transfer = Transfer::h3(&["/big.bin"]).key_update_after(MIB);
    let report = run_client(ngtcp2.client(&transfer), transfer.timeout());
    assert_hq(&report, 8 * MIB, &sha, 1);
    assert_eq!(report.key_updates, 1, "{report:?}");
}

/// A GET of a file gtlsserver does not have: the client exits non-zero and says 404.
#[test]
fn quench_client_h3_missing_file_from_gtlsserver_fails_with_404() {
    let _serial = serial();
    let ngtcp2 = Ngtcp2Server::start();
    let out = run_client_expect_failure(ngtcp2.client(&Transfer::h3(&["/missing"])));
    assert!(
        out.stderr.contains("404"),
        "the failure names the status:\nstdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
}

/// A CA that did not sign gtlsserver's certificate: the quench client refuses it.
#[test]
fn quench_client_h3_rejects_untrusted_gtlsserver() {
    let _serial = serial();
    let ngtcp2 = Ngtcp2Server::start();
    random_file(&ngtcp2.root(), "file.bin", 1000);
    let other = temp_dir();
    let stranger = Certs::generate(other.path());
    run_client_expect_failure(client_command(
        Peer::Quench,
        ngtcp2.server.addr,
        &stranger.ca,
        &Transfer::h3(&["/file.bin"]),
    ));
}

// ---- HTTP/3 over a bad path -------------------------------------------------------------------

/// gtlsclient fetches files from quench through a relay that drops 5% of the datagrams each
/// way, reorders 5%, duplicates 1% and corrupts 1% (`common::lossy`): each download is
/// byte-exact, and quench's counters show it met the loss and the corruption.
#[test]
fn gtlsclient_downloads_files_from_quench_over_a_bad_path() {
    let _serial = serial();
    let quench = QuenchServer::start();
    let root = quench.root();
    let files: &[(&str, usize)] = &[("big.bin", 3 * MIB as usize + 7), ("small.bin", 1000)];
    let shas: Vec<String> = files
        .iter()
        .map(|&(name, len)| random_file(&root, name, len))
        .collect();
    let relay = common::lossy::LossyRelay::start(
        quench.server.addr,
        common::lossy::Impairment::bad_path(31),
    );
    let download = quench.download_dir("dl");
    let download_flag = format!("--download={}", download.display());
    let paths: Vec<String> = files.iter().map(|(n, _)| format!("/{n}")).collect();
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    let (_, responses) = gtlsclient(relay.addr, &paths, &[&download_flag]);
    for (i, (&(name, len), sha)) in files.iter().zip(&shas).enumerate() {
        let stream = 4 * i as u64;
        assert_eq!(responses.get(&stream), Some(&ok(len as u64)), "GET /{name}");
        assert_eq!(&file_sha256(&download.join(name)), sha, "GET /{name}");
    }
    let (up, down) = (relay.up.clone(), relay.down.clone());
    drop(relay);
    let (up, down) = (up.tally(), down.tally());
    down.assert_all_impairments("quench to gtlsclient");
    assert!(up.dropped > 0 && up.corrupted > 0, "{up:?}");
    let totals = quench
        .server
        .shutdown_worker_totals(&["packets_lost", "authentication_failures"]);
    assert!(totals.iter().all(|&t| t > 0), "lost, failed: {totals:?}");
}

/// `quench client --alpn h3` fetches files from gtlsserver through the same bad path: the
/// bodies arrive byte-exact, and the client's report shows the loss and the corruption.
#[test]
fn quench_client_h3_gets_files_from_gtlsserver_over_a_bad_path() {
    let _serial = serial();
    let ngtcp2 = Ngtcp2Server::start();
    let root = ngtcp2.root();
    let files: &[(&str, usize)] = &[("big.bin", 3 * MIB as usize + 7), ("small.bin", 1000)];
    let mut bodies = Vec::new();
    for &(name, len) in files {
        random_file(&root, name, len);
        bodies.extend(fs::read(root.join(name)).unwrap());
    }
    let relay = common::lossy::LossyRelay::start(
        ngtcp2.server.addr,
        common::lossy::Impairment::bad_path(32),
    );
    let transfer = Transfer::h3(&["/big.bin", "/small.bin"]);
    let cmd = client_command(Peer::Quench, relay.addr, &ngtcp2.certs.ca, &transfer);
    let report = run_client(cmd, transfer.timeout());
    assert_hq(
        &report,
        bodies.len() as u64,
        &sha256_hex(&bodies),
        files.len(),
    );
    let down = relay.down.clone();
    drop(relay);
    down.tally().assert_all_impairments("gtlsserver to quench");
    assert!(report.packets_lost.unwrap() > 0, "{report:?}");
    assert!(report.authentication_failures.unwrap() > 0, "{report:?}");
}
