//! Reads criterion's results for `benches/engine.rs` and prints them side by side with
//! ratios and the targets, as a Markdown table.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// (group, target for quench in ns, what the target is about)
const GROUPS: &[(&str, f64, &str)] = &[
    (
        "recv_1rtt_packet",
        400.0,
        "ns per 1452-byte 1-RTT packet received",
    ),
    (
        "send_1rtt_packet",
        450.0,
        "ns per 1452-byte 1-RTT packet sent",
    ),
    (
        "server_handshake",
        f64::NAN,
        "server time per full handshake",
    ),
    (
        "server_handshake_resumed",
        f64::NAN,
        "server time per handshake resuming a session from a ticket",
    ),
    (
        "server_request_100B",
        400.0,
        "server time per 100-byte perf request",
    ),
    (
        "server_request_100B_x16",
        400.0,
        "server time per 100-byte perf request, 16 in flight per connection",
    ),
];

/// Criterion's headline estimate and its 95% confidence bounds, in ns: the slope of time
/// over iterations where it sampled linearly (every `iter_custom` group here), else the
/// mean. The slope is what `cargo bench` prints; the mean also carries the outlier samples
/// (a fresh pair's first handshakes, a descheduled sample) that the slope discounts.
#[derive(Clone, Copy, Debug)]
pub struct Estimate {
    pub point: f64,
    pub low: f64,
    pub high: f64,
}

pub fn read_estimate(dir: &Path, group: &str, bench: &str) -> anyhow::Result<Estimate> {
    let path = dir
        .join(group)
        .join(bench)
        .join("new")
        .join("estimates.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let e = if v["slope"].is_object() {
        &v["slope"]
    } else {
        &v["mean"]
    };
    let num = |x: &serde_json::Value| x.as_f64().context("number in estimates.json");
    Ok(Estimate {
        point: num(&e["point_estimate"])?,
        low: num(&e["confidence_interval"]["lower_bound"])?,
        high: num(&e["confidence_interval"]["upper_bound"])?,
    })
}

/// Where criterion writes: `$CARGO_TARGET_DIR/criterion`, else `target/criterion`.
pub fn default_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"))
        .join("criterion")
}

fn fmt(ns: f64) -> String {
    if ns >= 10_000.0 {
        format!("{:.1} µs", ns / 1000.0)
    } else {
        format!("{ns:.0} ns")
    }
}

fn fmt_est(e: &Estimate) -> String {
    format!("{} ({}–{})", fmt(e.point), fmt(e.low), fmt(e.high))
}

/// The Markdown report.
pub fn render(dir: &Path) -> anyhow::Result<String> {
    let mut out = String::new();
    out.push_str(
        "| benchmark | quench | quinn-proto 0.11 | quinn-proto / quench | quiche 0.24 | quiche / quench | target | met |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    let mut rustls = None;
    let mut quench_hs = None;
    for &(group, target, what) in GROUPS {
        // Runs from before resumption was measured have no resumed group.
        let q = match read_estimate(dir, group, "quench") {
            Err(_) if group == "server_handshake_resumed" => continue,
            q => q?,
        };
        let p = read_estimate(dir, group, "quinn-proto")?;
        // Runs from before quiche was measured have no entry for it.
        let (h, h_ratio) = match read_estimate(dir, group, "quiche") {
            Ok(h) => (fmt_est(&h), format!("{:.2}", h.point / q.point)),
            Err(_) => ("—".to_string(), "—".to_string()),
        };
        let (target_s, met) = if group == "server_handshake_resumed" {
            // No target of its own: rustls alone resumed, for the same comparison.
            let r = read_estimate(dir, group, "rustls-quic-only")?;
            (
                format!(
                    "none (rustls alone {}; quench / rustls {:.2})",
                    fmt(r.point),
                    q.point / r.point
                ),
                "—",
            )
        } else if group == "server_handshake" {
            let r = read_estimate(dir, group, "rustls-quic-only")?;
            rustls = Some(r);
            quench_hs = Some(q);
            let limit = 1.3 * r.point;
            (
                format!("≤ 1.3 × rustls = {}", fmt(limit)),
                if q.point <= limit { "yes" } else { "no" },
            )
        } else {
            (
                format!("≤ {}", fmt(target)),
                if q.point <= target { "yes" } else { "no" },
            )
        };
        out.push_str(&format!(
            "| {group} ({what}) | {} | {} | {:.2} | {h} | {h_ratio} | {target_s} | {met} |\n",
            fmt_est(&q),
            fmt_est(&p),
            p.point / q.point
        ));
    }
    if let (Some(r), Some(q)) = (rustls, quench_hs) {
        out.push_str(&format!(
            "\nrustls alone (QUIC mode, server side): {}; quench / rustls = {:.2}\n",
            fmt_est(&r),
            q.point / r.point
        ));
    }
    for &(group, target, _) in GROUPS {
        // Groups measured before the floor existed have no aead-floor entry.
        let Ok(floor) = read_estimate(dir, group, "aead-floor") else {
            continue;
        };
        let q = read_estimate(dir, group, "quench")?;
        out.push_str(&format!(
            "\n{group}: the AEAD alone (opening the scenario's client packets and sealing the \
             server's, per request) costs {}, {:.0}% of the {} target and {:.0}% of quench's \
             time per request\n",
            fmt_est(&floor),
            100.0 * floor.point / target,
            fmt(target),
            100.0 * floor.point / q.point
        ));
    }
    Ok(out)
}
