//! quench against quinn-proto 0.11 and quiche 0.24 (and rustls alone for the handshake
//! floor), side by side in one run, on in-memory pairs (quench and quinn-proto on a
//! virtual clock; quiche reads the real one itself). Only the server's calls are timed. Run `cargo bench -p quench-bench`, then `quench-bench report` for the ratios.
//!
//! - `recv_1rtt_packet`: one 1452-byte 1-RTT packet of stream data received by the server
//!   (routing, header unprotect, AEAD open, frames, ACK bookkeeping, events).
//! - `send_1rtt_packet`: one 1452-byte 1-RTT packet of stream data built and sealed by the
//!   server (`poll_transmit`).
//! - `server_handshake`: the server's share of a full handshake until everything after it
//!   (HANDSHAKE_DONE, tickets, CIDs, their ACKs) has settled; rustls alone in QUIC mode as
//!   the floor.
//! - `server_handshake_resumed`: the same for a handshake that resumes a session from a
//!   ticket (RFC 8446 §2.2: no certificate, no signature), the client holding tickets
//!   from the handshakes before it; quiche is left out (its client keeps no tickets unless
//!   the application moves them itself).
//! - `server_request_100B`: the server's time per perf request (100 bytes up, 100 bytes
//!   back) on established connections: receive, application, response, timers. One
//!   request in flight per connection, so one packet each way per request.
//! - `server_request_100B_x16`: the same with 16 requests in flight per connection, as a
//!   multiplexing client sends them: requests and responses share packets.
//! - `aead-floor` in both request groups: only the AEAD open of the request's packet and
//!   the seal of the response's, at the scenario's packet sizes (`aead_floor.rs`): what
//!   the cipher alone costs a request, against the same target.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};

use quench_bench::aead_floor::AeadFloor;
use quench_bench::quench_pair::{QuenchPair, ServerMode};
use quench_bench::quiche_pair::{self, QuichePair};
use quench_bench::quinn_pair::{AppMode, QuinnPair};
use quench_bench::tls::TlsSetup;
use quench_bench::{rustls_hs, Stopwatch};

/// Datagrams per round in the bulk benchmarks.
const BATCH: usize = 64;
/// Connections sending one request each per round.
const REQUEST_CONNS: usize = 8;
const REQUEST_SIZE: usize = 100;
const RESPONSE_SIZE: u64 = 100;
/// Handshakes on one pair of endpoints before both are replaced (outside the timing).
const HANDSHAKES_PER_PAIR: u64 = 32;

/// Runs bulk rounds until `iters` packets went through; returns the timed share scaled to
/// exactly `iters` packets. Panics if the packets are not full-size.
fn packets(iters: u64, mut round: impl FnMut(usize, &mut Stopwatch) -> (usize, usize)) -> Duration {
    let mut sw = Stopwatch::default();
    let (mut n, mut bytes, mut idle) = (0u64, 0u64, 0);
    while n < iters {
        let (k, b) = round(BATCH, &mut sw);
        if k == 0 {
            idle += 1;
            assert!(idle < 1000, "no packets for 1000 rounds");
        }
        n += k as u64;
        bytes += b as u64;
    }
    assert!(
        bytes / n >= 1400,
        "datagrams average {} bytes, expected full 1452-byte packets",
        bytes / n
    );
    sw.elapsed.mul_f64(iters as f64 / n as f64)
}

fn warm(mut round: impl FnMut(usize, &mut Stopwatch) -> (usize, usize)) {
    let mut sw = Stopwatch::default();
    for _ in 0..3000 {
        round(BATCH, &mut sw);
    }
}

fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1));
    g
}

fn recv(c: &mut Criterion, tls: &TlsSetup) {
    let mut g = group(c, "recv_1rtt_packet");
    let mut q = QuenchPair::connected(tls, ServerMode::Deferred, 1);
    warm(|m, sw| q.recv_round(m, sw));
    g.bench_function("quench", |b| {
        b.iter_custom(|iters| packets(iters, |m, sw| q.recv_round(m, sw)))
    });
    let mut p = QuinnPair::connected(tls, AppMode::Deferred, 1);
    warm(|m, sw| p.recv_round(m, sw));
    g.bench_function("quinn-proto", |b| {
        b.iter_custom(|iters| packets(iters, |m, sw| p.recv_round(m, sw)))
    });
    let mut h = QuichePair::connected(tls, quiche_pair::AppMode::Deferred, 1);
    warm(|m, sw| h.recv_round(m, sw));
    g.bench_function("quiche", |b| {
        b.iter_custom(|iters| packets(iters, |m, sw| h.recv_round(m, sw)))
    });
    g.finish();
}

fn send(c: &mut Criterion, tls: &TlsSetup) {
    let mut g = group(c, "send_1rtt_packet");
    let mut q = QuenchPair::connected(tls, ServerMode::Deferred, 1);
    warm(|m, sw| q.send_round(m, sw));
    g.bench_function("quench", |b| {
        b.iter_custom(|iters| packets(iters, |m, sw| q.send_round(m, sw)))
    });
    let mut p = QuinnPair::connected(tls, AppMode::Deferred, 1);
    warm(|m, sw| p.send_round(m, sw));
    g.bench_function("quinn-proto", |b| {
        b.iter_custom(|iters| packets(iters, |m, sw| p.send_round(m, sw)))
    });
    let mut h = QuichePair::connected(tls, quiche_pair::AppMode::Deferred, 1);
    warm(|m, sw| h.send_round(m, sw));
    g.bench_function("quiche", |b| {
        b.iter_custom(|iters| packets(iters, |m, sw| h.send_round(m, sw)))
    });
    g.finish();
}

fn handshake(c: &mut Criterion, tls: &TlsSetup) {
    let mut g = group(c, "server_handshake");
    g.bench_function("quench", |b| {
        b.iter_custom(|iters| {
            let mut sw = Stopwatch::default();
            let mut pair = QuenchPair::new(tls, ServerMode::Apps);
            for i in 0..iters {
                if i > 0 && i % HANDSHAKES_PER_PAIR == 0 {
                    pair = QuenchPair::new(tls, ServerMode::Apps);
                }
                pair.handshake(Some(&mut sw));
            }
            sw.elapsed
        })
    });
    g.bench_function("quinn-proto", |b| {
        b.iter_custom(|iters| {
            let mut sw = Stopwatch::default();
            let mut pair = QuinnPair::new(tls, AppMode::Perf);
            for i in 0..iters {
                if i > 0 && i % HANDSHAKES_PER_PAIR == 0 {
                    pair = QuinnPair::new(tls, AppMode::Perf);
                }
                pair.handshake(Some(&mut sw));
            }
            sw.elapsed
        })
    });
    g.bench_function("quiche", |b| {
        b.iter_custom(|iters| {
            let mut sw = Stopwatch::default();
            let mut pair = QuichePair::new(tls, quiche_pair::AppMode::Perf);
            for i in 0..iters {
                if i > 0 && i % HANDSHAKES_PER_PAIR == 0 {
                    pair = pair.renew(quiche_pair::AppMode::Perf);
                }
                pair.handshake(Some(&mut sw));
            }
            sw.elapsed
        })
    });
    g.bench_function("rustls-quic-only", |b| {
        b.iter_custom(|iters| {
            let mut sw = Stopwatch::default();
            for _ in 0..iters {
                rustls_hs::handshake(tls, &mut sw);
            }
            sw.elapsed
        })
    });
    g.finish();
}

/// Handshakes resuming a session: each client's first handshake (untimed) brings the
/// tickets, and every handshake after it resumes and brings more.
fn handshake_resumed(c: &mut Criterion, tls: &TlsSetup) {
    let tls = &tls.resuming();
    let mut g = group(c, "server_handshake_resumed");
    g.bench_function("quench", |b| {
        b.iter_custom(|iters| {
            let mut sw = Stopwatch::default();
            let mut pair = QuenchPair::new(tls, ServerMode::Apps);
            pair.handshake(None);
            for i in 0..iters {
                if i > 0 && i % HANDSHAKES_PER_PAIR == 0 {
                    pair = QuenchPair::new(tls, ServerMode::Apps);
                }
                assert!(pair.handshake(Some(&mut sw)), "quench resumed");
            }
            sw.elapsed
        })
    });
    g.bench_function("quinn-proto", |b| {
        b.iter_custom(|iters| {
            let mut sw = Stopwatch::default();
            let mut pair = QuinnPair::new(tls, AppMode::Perf);
            pair.handshake(None);
            for i in 0..iters {
                if i > 0 && i % HANDSHAKES_PER_PAIR == 0 {
                    pair = QuinnPair::new(tls, AppMode::Perf);
                }
                pair.handshake(Some(&mut sw));
            }
            sw.elapsed
        })
    });
    g.bench_function("rustls-quic-only", |b| {
        b.iter_custom(|iters| {
            let mut sw = Stopwatch::default();
            rustls_hs::handshake(tls, &mut Stopwatch::default());
            for _ in 0..iters {
                assert!(rustls_hs::handshake(tls, &mut sw).1, "rustls resumed");
            }
            sw.elapsed
        })
    });
    g.finish();
}

/// Request rounds until `iters` responses completed; the timed share scaled to `iters`.
fn requests(iters: u64, round: &mut impl FnMut(&mut Stopwatch) -> u64) -> Duration {
    let mut sw = Stopwatch::default();
    let (mut done, mut rounds) = (0u64, 0u64);
    while done < iters {
        done += round(&mut sw);
        rounds += 1;
        assert!(rounds < 1000 + 2 * iters, "requests stopped completing");
    }
    sw.elapsed.mul_f64(iters as f64 / done as f64)
}

fn request(c: &mut Criterion, tls: &TlsSetup, name: &str, per_conn: usize) {
    let mut g = group(c, name);
    let mut q = QuenchPair::connected(tls, ServerMode::Apps, REQUEST_CONNS);
    let mut round = |sw: &mut Stopwatch| q.request_round(per_conn, REQUEST_SIZE, RESPONSE_SIZE, sw);
    requests(10_000, &mut round);
    g.bench_function("quench", |b| {
        b.iter_custom(|iters| requests(iters, &mut round))
    });
    let mut p = QuinnPair::connected(tls, AppMode::Perf, REQUEST_CONNS);
    let mut round = |sw: &mut Stopwatch| p.request_round(per_conn, REQUEST_SIZE, RESPONSE_SIZE, sw);
    requests(10_000, &mut round);
    g.bench_function("quinn-proto", |b| {
        b.iter_custom(|iters| requests(iters, &mut round))
    });
    let mut h = QuichePair::connected(tls, quiche_pair::AppMode::Perf, REQUEST_CONNS);
    let mut round = |sw: &mut Stopwatch| h.request_round(per_conn, REQUEST_SIZE, RESPONSE_SIZE, sw);
    requests(10_000, &mut round);
    g.bench_function("quiche", |b| {
        b.iter_custom(|iters| requests(iters, &mut round))
    });
    let mut floor = AeadFloor::new(tls, REQUEST_CONNS, per_conn);
    let mut round = |sw: &mut Stopwatch| floor.round(sw);
    g.bench_function("aead-floor", |b| {
        b.iter_custom(|iters| requests(iters, &mut round))
    });
    g.finish();
}

fn all(c: &mut Criterion) {
    let tls = TlsSetup::new().expect("TLS setup");
    recv(c, &tls);
    send(c, &tls);
    handshake(c, &tls);
    handshake_resumed(c, &tls);
    request(c, &tls, "server_request_100B", 1);
    request(c, &tls, "server_request_100B_x16", 16);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = all
}
criterion_main!(benches);
