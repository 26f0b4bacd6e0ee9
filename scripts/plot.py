"""Plots for docs/performance.md from the runs the benchmark scripts keep.

    python scripts/plot.py e2e RUNS OUTDIR      # runs of `SAVE=RUNS scripts/bench-e2e.sh`
    python scripts/plot.py compare RUNS OUTDIR  # runs of `SAVE=RUNS scripts/bench-compare.sh`

Use scripts/plot.sh, which makes a venv with matplotlib first. Every figure shows medians
over the script's rounds (bars) with each run as a dot, so the spread is visible; latency
curves come from each stack's median-throughput run.
"""

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt  # noqa: E402

STACK_ORDER = ["quench", "quinn", "quinn-proto", "quiche", "s2n", "msquic", "rustls", "aead-floor"]
COLOURS = {
    "quench": "#d62728",
    "quinn": "#1f77b4",
    "quinn-proto": "#1f77b4",
    "quiche": "#ff7f0e",
    "s2n": "#2ca02c",
    "msquic": "#9467bd",
    "rustls": "#7f7f7f",
    "aead-floor": "#bcbd22",
}
# Issue 2's per-unit targets for quench, in the figure's units.
TARGETS = {"recv": 400, "send": 450, "request": 400}
SVG_META = {"Date": None}  # reproducible files: no timestamp


def ordered(stacks):
    return sorted(stacks, key=lambda s: (STACK_ORDER.index(s) if s in STACK_ORDER else 99, s))


def bars(ax, runs_by_stack, unit, title, target=None):
    """Median bars with every run as a dot beside it; each bar labelled with its median;
    `target` (value, label) a dashed line."""
    stacks = ordered(runs_by_stack)
    medians = [statistics.median(runs_by_stack[s]) for s in stacks]
    xs = range(len(stacks))
    ax.bar(xs, medians, color=[COLOURS.get(s, "#333333") for s in stacks], alpha=0.8)
    for x, s in zip(xs, stacks):
        ax.plot([x + 0.3] * len(runs_by_stack[s]), runs_by_stack[s], "k.", markersize=3)
    for x, m in zip(xs, medians):
        label = f"{m:,.0f}" if m >= 100 else f"{m:.1f}" if m >= 10 else f"{m:.2f}"
        ax.annotate(label, (x, m), ha="center", va="bottom", fontsize=8,
                    xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(list(xs), stacks, rotation=20)
    ax.set_ylabel(unit)
    ax.set_title(title, fontsize=10)
    top = max(max(v) for v in runs_by_stack.values())
    if target:
        value, label = target
        ax.axhline(value, color="k", linestyle="--", linewidth=0.8)
        ax.annotate(label, (len(stacks) - 0.5, value), ha="right", va="bottom", fontsize=7)
        top = max(top, value)
    ax.set_ylim(0, top * 1.15)


def e2e(runs_path, out):
    """bench-e2e.sh runs: server CPU per unit, and request latency percentiles."""
    cost = defaultdict(lambda: defaultdict(list))  # scenario -> stack -> [cost]
    latency_runs = defaultdict(lambda: defaultdict(list))  # scenario -> stack -> [(rate, dist)]
    for line in Path(runs_path).read_text().splitlines():
        scenario, stack, cpu, units, client = line.split(" ", 4)
        cpu, units = float(cpu), int(units)
        report = json.loads(client)
        if scenario.startswith("rr"):
            cost[scenario][stack].append(cpu / units * 1e6)
            dist = report.get("latency_distribution_us")
            if dist:
                latency_runs[scenario][stack].append((report["requests_per_second"], dist))
        else:
            cost[scenario][stack].append(cpu / (units / 2**30) * 1e3)

    titles = {
        "rr1": "rr1: 8 connections × 1 request in flight",
        "rr16": "rr16: 8 connections × 16 requests in flight",
        "down": "down: one connection downloading",
        "up": "up: one connection uploading",
    }
    scenarios = [s for s in ["rr1", "rr16", "down", "up"] if s in cost]
    if scenarios:
        fig, axes = plt.subplots(1, len(scenarios), figsize=(3.6 * len(scenarios), 3.6))
        axes = [axes] if len(scenarios) == 1 else axes
        for ax, s in zip(axes, scenarios):
            unit = "server CPU, µs per request" if s.startswith("rr") else "server CPU, ms per GiB"
            bars(ax, cost[s], unit, titles[s])
        fig.suptitle("End to end over loopback UDP, server pinned to one core (lower is better)",
                     fontsize=11)
        fig.tight_layout()
        fig.savefig(out / "e2e-server-cpu.svg", metadata=SVG_META)
        plt.close(fig)

    for s, by_stack in latency_runs.items():
        fig, ax = plt.subplots(figsize=(7, 4))
        for stack in ordered(by_stack):
            runs = sorted(by_stack[stack], key=lambda r: r[0])
            rate, dist = runs[len(runs) // 2]
            xs = [1 / (1 - q) if q < 1 else None for q, _ in dist]
            pts = [(x, v) for x, (_, v) in zip(xs, dist) if x is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".",
                    color=COLOURS.get(stack, "#333333"),
                    label=f"{stack} ({rate / 1000:.0f}k req/s)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ticks = [1, 2, 10, 100, 1000, 10000]
        ax.set_xticks(ticks, ["0", "50", "90", "99", "99.9", "99.99"])
        ax.set_xlabel("percentile")
        ax.set_ylabel("request latency, µs (client side)")
        ax.set_title(f"{titles[s]}: request latency by percentile\n"
                     "(closed loop: each server as fast as it goes)", fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"e2e-latency-{s}.svg", metadata=SVG_META)
        plt.close(fig)


def compare(runs_path, out):
    """bench-compare.sh runs: ns per unit of each microbenchmark scenario."""
    ns = defaultdict(lambda: defaultdict(list))
    for line in Path(runs_path).read_text().splitlines():
        scenario, stack, value = line.split()
        ns[scenario][stack].append(int(value))
    units = {
        "recv": "ns per 1452-byte packet received",
        "send": "ns per 1452-byte packet sent",
        "handshake": "µs per server handshake",
        "handshake-resumed": "µs per resumed server handshake",
        "request": "ns per request, 1 in flight",
        "request16": "ns per request, 16 in flight",
    }
    scenarios = [s for s in units if s in ns]
    cols = 3
    rows = (len(scenarios) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.8 * cols, 3.4 * rows), squeeze=False)
    for ax, s in zip(axes.flat, scenarios):
        data = ns[s]
        if s.startswith("handshake"):
            data = {k: [v / 1000 for v in vs] for k, vs in data.items()}
        target = None
        if s in TARGETS:
            target = (TARGETS[s], "issue 2's target")
        elif s == "handshake" and "rustls" in data:
            target = (1.3 * statistics.median(data["rustls"]), "1.3 × rustls alone")
        bars(ax, data, units[s], s, target)
    for ax in list(axes.flat)[len(scenarios):]:
        ax.axis("off")
    fig.suptitle("Server cost per unit on the in-memory pair (lower is better)", fontsize=11)
    fig.tight_layout()
    fig.savefig(out / "microbench.svg", metadata=SVG_META)
    plt.close(fig)


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in ("e2e", "compare"):
        sys.exit(__doc__)
    kind, runs, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    plt.rcParams["svg.hashsalt"] = "quench"  # stable element ids between runs
    (e2e if kind == "e2e" else compare)(runs, out)


if __name__ == "__main__":
    main()
