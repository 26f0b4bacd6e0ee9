//! Interop over a bad path: independent QUIC stacks and quench, in both roles, through a
//! relay on loopback that drops 5% of the datagrams each way, reorders 5%, duplicates 1% and
//! corrupts 1% (`common::lossy`). Each run fetches a random file over hq-interop (its
//! SHA-256 checked) and moves perf data both ways (byte counts checked). The relay's counts
//! prove every impairment happened in both directions, and quench's own counters prove it
//! met them: packets declared lost, corrupted packets failing authentication, duplicates
//! discarded (as duplicates, or as too late to tell apart from one).

mod common;

use std::path::Path;

use common::lossy::{Impairment, LossyRelay, Tally};
use common::*;

/// Starts a server (`Server::quench`, `Server::quinn`, ...).
type Spawn = fn(&Certs, &Path, &Path) -> Server;

/// The file fetched, and the perf transfer, through the bad path: enough datagrams for
/// every impairment to happen many times, little enough for a lossy path on 2 cores.
const FILE_BYTES: usize = 4 * MIB as usize + 321;
const PERF_DOWN: u64 = 4 * MIB;
const PERF_UP: u64 = 2 * MIB;
/// A smaller load for the slow pairs: aioquic is pure Python, and s2n-quic's receiver
/// acknowledges after about ten packets or its 25 ms max_ack_delay, so a sender whose window
/// this loss holds below ten packets waits 25 ms a round trip (docs/interop.md).
const SMALL_FILE_BYTES: usize = MIB as usize + 321;
const SMALL_PERF: (u64, u64) = (MIB, MIB / 2);

/// What a run through the relay produced.
struct Outcome {
    /// The clients' reports: hq-interop fetch, then perf.
    reports: [Report; 2],
    up: Tally,
    down: Tally,
    server: Server,
    _dir: tempfile::TempDir,
}

/// `client` fetches a random file from the server `spawn` makes, then runs perf, both
/// through a relay impairing the path with `seed`. Bodies and byte counts are checked.
fn through_bad_path(
    spawn: Spawn,
    client: Peer,
    seed: u64,
    file_bytes: usize,
    (down, up): (u64, u64),
) -> Outcome {
    let Hosted { dir, certs, server } = Hosted::start(spawn);
    let sha = random_file(dir.path(), "lossy.bin", file_bytes);
    let relay = LossyRelay::start(server.addr, Impairment::bad_path(seed));
    let context = format!("{client:?} client, relay seed {seed}");

    let fetch = run_transfer(
        client,
        relay.addr,
        &certs.ca,
        &Transfer::hq(&["/lossy.bin"]),
    );
    assert_hq(&fetch, file_bytes as u64, &sha, 1);
    let perf = Transfer::perf(down, up);
    let moved = run_transfer(client, relay.addr, &certs.ca, &perf);
    assert_perf(&moved, &perf);

    let counts = (relay.up.clone(), relay.down.clone());
    drop(relay);
    let (up, down) = (counts.0.tally(), counts.1.tally());
    up.assert_all_impairments(&format!("client to server ({context})"));
    down.assert_all_impairments(&format!("server to client ({context})"));
    Outcome {
        reports: [fetch, moved],
        up,
        down,
        server,
        _dir: dir,
    }
}

/// quench served through the bad path: its counters show it met every impairment.
fn quench_server_through_bad_path(client: Peer, seed: u64, file_bytes: usize, perf: (u64, u64)) {
    let _serial = serial();
    let outcome = through_bad_path(Server::quench, client, seed, file_bytes, perf);
    // Duplicates held back past the ACK tracker's floor count as late, not as duplicates
    // (both are dropped unread): on this path most of them.
    let fields = [
        "packets_lost",
        "authentication_failures",
        "duplicate_packets",
        "late_packets",
    ];
    let totals = outcome.server.shutdown_worker_totals(&fields);
    let (up, down) = (outcome.up, outcome.down);
    let seconds = outcome.reports.each_ref().map(|r| r.seconds);
    eprintln!("{client:?} client, seed {seed}: {fields:?} = {totals:?} in {seconds:?} s");
    eprintln!("relay up {up:?}\nrelay down {down:?}");
    let context = format!("({client:?}, seed {seed}): {fields:?} = {totals:?}");
    assert!(totals[0] > 0, "quench declared nothing lost {context}");
    assert!(
        totals[1] > 0,
        "no corrupted packet failed authentication {context}"
    );
    assert!(totals[2] + totals[3] > 0, "no duplicate dropped {context}");
    // No more declared lost than the path dropped or held back (RFC 9002's thresholds
    // count a held-back packet as lost once enough later ones overtake it), with slack for
    // the few packets a lost coalesced datagram holds: far more would be spurious loss.
    assert!(
        totals[0] <= down.dropped + down.delayed + down.received / 100,
        "quench declared {} packets lost; the relay dropped {} and delayed {} (seed {seed})",
        totals[0],
        down.dropped,
        down.delayed
    );
}

/// quench's client through the bad path: its reports show it met loss and corruption.
fn quench_client_through_bad_path(spawn: Spawn, seed: u64, file_bytes: usize, perf: (u64, u64)) {
    let _serial = serial();
    let outcome = through_bad_path(spawn, Peer::Quench, seed, file_bytes, perf);
    let lost: u64 = outcome
        .reports
        .iter()
        .map(|r| r.packets_lost.unwrap())
        .sum();
    let failed: u64 = outcome
        .reports
        .iter()
        .map(|r| r.authentication_failures.unwrap())
        .sum();
    let up = outcome.up;
    let seconds = outcome.reports.each_ref().map(|r| r.seconds);
    eprintln!("quench client, seed {seed}: lost {lost}, failed authentication {failed}");
    eprintln!(
        "in {seconds:?} s; relay up {up:?}\nrelay down {:?}",
        outcome.down
    );
    assert!(
        lost > 0,
        "quench client declared nothing lost; relay up: {up:?}"
    );
    assert!(
        lost <= up.dropped + up.delayed + up.received / 100,
        "quench client declared {lost} lost; the relay dropped {} and delayed {}",
        up.dropped,
        up.delayed
    );
    assert!(
        failed > 0,
        "no corrupted packet failed authentication at quench's client; relay down: {:?}",
        outcome.down
    );
}

#[test]
fn quinn_client_to_quench_over_a_bad_path() {
    quench_server_through_bad_path(Peer::Quinn, 1, FILE_BYTES, (PERF_DOWN, PERF_UP));
}

#[test]
fn quench_client_to_quinn_over_a_bad_path() {
    quench_client_through_bad_path(Server::quinn, 2, FILE_BYTES, (PERF_DOWN, PERF_UP));
}

#[test]
fn aioquic_client_to_quench_over_a_bad_path() {
    quench_server_through_bad_path(Peer::Aioquic, 3, SMALL_FILE_BYTES, SMALL_PERF);
}

#[test]
fn quench_client_to_aioquic_over_a_bad_path() {
    fn aioquic(certs: &Certs, root: &Path, logs: &Path) -> Server {
        Server::aioquic(certs, root, logs, &[])
    }
    quench_client_through_bad_path(aioquic, 4, SMALL_FILE_BYTES, SMALL_PERF);
}

#[test]
fn quiche_client_to_quench_over_a_bad_path() {
    quench_server_through_bad_path(Peer::Quiche, 5, FILE_BYTES, (PERF_DOWN, PERF_UP));
}

#[test]
fn quench_client_to_quiche_over_a_bad_path() {
    quench_client_through_bad_path(Server::quiche, 6, FILE_BYTES, (PERF_DOWN, PERF_UP));
}

#[test]
fn s2n_client_to_quench_over_a_bad_path() {
    quench_server_through_bad_path(Peer::S2n, 7, SMALL_FILE_BYTES, SMALL_PERF);
}

#[test]
fn quench_client_to_s2n_over_a_bad_path() {
    quench_client_through_bad_path(Server::s2n, 8, FILE_BYTES, (PERF_DOWN, PERF_UP));
}

#[test]
fn msquic_client_to_quench_over_a_bad_path() {
    quench_server_through_bad_path(Peer::Msquic, 9, FILE_BYTES, (PERF_DOWN, PERF_UP));
}

#[test]
fn quench_client_to_msquic_over_a_bad_path() {
    quench_client_through_bad_path(Server::msquic, 10, FILE_BYTES, (PERF_DOWN, PERF_UP));
}

/// A path that reorders and never drops: quench declares overtaken packets lost (RFC 9002
/// §6.1 thresholds) and cuts its window, and quinn's acknowledgements of them undo the cuts.
#[test]
fn quinn_client_to_quench_over_a_reordering_path() {
    let _serial = serial();
    let Hosted { dir, certs, server } = Hosted::start(Server::quench);
    let sha = random_file(dir.path(), "reordered.bin", FILE_BYTES);
    let relay = LossyRelay::start(server.addr, Impairment::reordering_only(11));
    let fetch = run_transfer(
        Peer::Quinn,
        relay.addr,
        &certs.ca,
        &Transfer::hq(&["/reordered.bin"]),
    );
    assert_hq(&fetch, FILE_BYTES as u64, &sha, 1);
    let down = relay.down.clone();
    drop(relay);
    let down = down.tally();
    assert!(down.delayed > 0 && down.dropped == 0, "{down:?}");
    let fields = [
        "congestion_events",
        "spurious_congestion_events",
        "packets_lost",
    ];
    let totals = server.shutdown_worker_totals(&fields);
    eprintln!("{fields:?} = {totals:?}; relay down {down:?}");
    let [events, spurious, lost] = totals[..] else {
        unreachable!()
    };
    assert!(lost > 0 && events > 0, "{fields:?} = {totals:?}");
    assert!(spurious > 0, "no cut undone: {fields:?} = {totals:?}");
}

/// The relay itself: with no impairment it forwards everything both ways, in order.
#[test]
fn the_relay_without_impairments_is_a_clean_path() {
    let _serial = serial();
    let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let clean = Impairment {
        loss: 0.0,
        reorder: 0.0,
        duplicate: 0.0,
        corrupt: 0.0,
        ..Impairment::bad_path(0)
    };
    let relay = LossyRelay::start(server.local_addr().unwrap(), clean);
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let timeout = Some(std::time::Duration::from_secs(5));
    client.set_read_timeout(timeout).unwrap();
    server.set_read_timeout(timeout).unwrap();
    let mut buf = [0u8; 64];
    for i in 0..100u8 {
        client.send_to(&[i; 20], relay.addr).unwrap();
        let (n, from) = server.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[i; 20]);
        server.send_to(&[!i; 30], from).unwrap();
        let (n, _) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[!i; 30]);
    }
    let (up, down) = (relay.up.clone(), relay.down.clone());
    drop(relay);
    for t in [up.tally(), down.tally()] {
        assert_eq!((t.received, t.forwarded), (100, 100), "{t:?}");
        assert_eq!(
            t.dropped + t.delayed + t.duplicated + t.corrupted,
            0,
            "{t:?}"
        );
    }
}
