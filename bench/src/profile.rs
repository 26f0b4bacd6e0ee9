//! The benchmark scenarios run for a fixed amount of work, outside criterion, so a
//! profiler (perf, callgrind) sees the same code paths the benchmarks time.

use anyhow::bail;

use crate::aead_floor::AeadFloor;
use crate::quench_pair::{QuenchPair, ServerMode};
use crate::quiche_pair::{self, QuichePair};
use crate::quinn_pair::{AppMode, QuinnPair};
use crate::tls::TlsSetup;
use crate::{rustls_hs, Stopwatch};

const BATCH: usize = 64;
const REQUEST_CONNS: usize = 8;

/// Runs `count` units (packets, handshakes, requests) of `scenario` on `stack`; returns the
/// units done and the timed server share.
pub fn run(scenario: &str, stack: &str, count: u64) -> anyhow::Result<(u64, Stopwatch)> {
    let tls = TlsSetup::new()?;
    let mut sw = Stopwatch::default();
    let mut done = 0u64;
    match (scenario, stack) {
        ("recv" | "send", "quench") => {
            let mut q = QuenchPair::connected(&tls, ServerMode::Deferred, 1);
            let mut warm = Stopwatch::default();
            for _ in 0..2000 {
                round(&mut q, scenario, &mut warm);
            }
            while done < count {
                done += round(&mut q, scenario, &mut sw) as u64;
            }
        }
        ("recv" | "send", "quinn-proto") => {
            let mut p = QuinnPair::connected(&tls, AppMode::Deferred, 1);
            let mut warm = Stopwatch::default();
            for _ in 0..2000 {
                round_quinn(&mut p, scenario, &mut warm);
            }
            while done < count {
                done += round_quinn(&mut p, scenario, &mut sw) as u64;
            }
        }
        ("recv" | "send", "quiche") => {
            let mut p = QuichePair::connected(&tls, quiche_pair::AppMode::Deferred, 1);
            let mut warm = Stopwatch::default();
            for _ in 0..2000 {
                round_quiche(&mut p, scenario, &mut warm);
            }
            while done < count {
                done += round_quiche(&mut p, scenario, &mut sw) as u64;
            }
        }
        ("handshake", "quench") => {
            let mut pair = QuenchPair::new(&tls, ServerMode::Apps);
            for i in 0..count {
                if i > 0 && i % 32 == 0 {
                    pair = QuenchPair::new(&tls, ServerMode::Apps);
                }
                pair.handshake(Some(&mut sw));
            }
            done = count;
        }
        ("handshake", "quinn-proto") => {
            let mut pair = QuinnPair::new(&tls, AppMode::Perf);
            for i in 0..count {
                if i > 0 && i % 32 == 0 {
                    pair = QuinnPair::new(&tls, AppMode::Perf);
                }
                pair.handshake(Some(&mut sw));
            }
            done = count;
        }
        ("handshake", "quiche") => {
            let mut pair = QuichePair::new(&tls, quiche_pair::AppMode::Perf);
            for i in 0..count {
                if i > 0 && i % 32 == 0 {
                    pair = pair.renew(quiche_pair::AppMode::Perf);
                }
                pair.handshake(Some(&mut sw));
            }
            done = count;
        }
        ("handshake-resumed", "quench") => {
            let tls = tls.resuming();
            let mut pair = QuenchPair::new(&tls, ServerMode::Apps);
            pair.handshake(None);
            for i in 0..count {
                if i > 0 && i % 32 == 0 {
                    pair = QuenchPair::new(&tls, ServerMode::Apps);
                }
                assert!(pair.handshake(Some(&mut sw)), "quench resumed");
            }
            done = count;
        }
        ("handshake-resumed", "quinn-proto") => {
            let tls = tls.resuming();
            let mut pair = QuinnPair::new(&tls, AppMode::Perf);
            pair.handshake(None);
            for i in 0..count {
                if i > 0 && i % 32 == 0 {
                    pair = QuinnPair::new(&tls, AppMode::Perf);
                }
                pair.handshake(Some(&mut sw));
            }
            done = count;
        }
        ("handshake-resumed", "rustls") => {
            let tls = tls.resuming();
            rustls_hs::handshake(&tls, &mut Stopwatch::default());
            for _ in 0..count {
                assert!(rustls_hs::handshake(&tls, &mut sw).1, "rustls resumed");
            }
            done = count;
        }
        ("handshake", "rustls") => {
            for _ in 0..count {
                rustls_hs::handshake(&tls, &mut sw);
            }
            done = count;
        }
        ("request" | "request16", "quench") => {
            let per_conn = requests_per_conn(scenario);
            let mut q = QuenchPair::connected(&tls, ServerMode::Apps, REQUEST_CONNS);
            let mut warm = Stopwatch::default();
            for _ in 0..1000 {
                q.request_round(per_conn, 100, 100, &mut warm);
            }
            while done < count {
                done += q.request_round(per_conn, 100, 100, &mut sw);
            }
        }
        ("request" | "request16", "quinn-proto") => {
            let per_conn = requests_per_conn(scenario);
            let mut p = QuinnPair::connected(&tls, AppMode::Perf, REQUEST_CONNS);
            let mut warm = Stopwatch::default();
            for _ in 0..1000 {
                p.request_round(per_conn, 100, 100, &mut warm);
            }
            while done < count {
                done += p.request_round(per_conn, 100, 100, &mut sw);
            }
        }
        ("request" | "request16", "quiche") => {
            let per_conn = requests_per_conn(scenario);
            let mut p = QuichePair::connected(&tls, quiche_pair::AppMode::Perf, REQUEST_CONNS);
            let mut warm = Stopwatch::default();
            for _ in 0..1000 {
                p.request_round(per_conn, 100, 100, &mut warm);
            }
            while done < count {
                done += p.request_round(per_conn, 100, 100, &mut sw);
            }
        }
        ("request" | "request16", "aead-floor") => {
            let mut f = AeadFloor::new(&tls, REQUEST_CONNS, requests_per_conn(scenario));
            while done < count {
                done += f.round(&mut sw);
            }
        }
        _ => bail!("unknown scenario/stack {scenario}/{stack}"),
    }
    Ok((done, sw))
}

/// `request`: one request in flight per connection (one packet each way per request);
/// `request16`: 16 at once, so requests share packets as a multiplexing client's do.
fn requests_per_conn(scenario: &str) -> usize {
    if scenario == "request16" {
        16
    } else {
        1
    }
}

fn round(q: &mut QuenchPair, scenario: &str, sw: &mut Stopwatch) -> usize {
    if scenario == "recv" {
        q.recv_round(BATCH, sw).0
    } else {
        q.send_round(BATCH, sw).0
    }
}

fn round_quinn(p: &mut QuinnPair, scenario: &str, sw: &mut Stopwatch) -> usize {
    if scenario == "recv" {
        p.recv_round(BATCH, sw).0
    } else {
        p.send_round(BATCH, sw).0
    }
}

fn round_quiche(p: &mut QuichePair, scenario: &str, sw: &mut Stopwatch) -> usize {
    if scenario == "recv" {
        p.recv_round(BATCH, sw).0
    } else {
        p.send_round(BATCH, sw).0
    }
}
