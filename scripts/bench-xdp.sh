#!/usr/bin/env bash
# AF_XDP end-to-end benchmark: quench over AF_XDP vs quench over kernel UDP vs the quinn
# reference server, in the veth topology of scripts/netns.sh (server namespace qn-srv on
# 10.99.0.1, client namespace qn-cli). The server is pinned to one core, the client to the
# other; each round runs every server once (download, then upload), rounds alternate, and
# the figures and ratios printed come from this one run.
#
# Usage: scripts/bench-xdp.sh [--size BYTES] [--rounds N] [--client quinn|quench] [--conns N]
#   defaults: --size 1073741824 (1 GiB) --rounds 3 --client quinn --conns 1
# Env: QUENCH_BIN, QUINN_PEER_BIN (default: release builds in $CARGO_TARGET_DIR or target/),
#      SERVER_CPU (default 0), CLIENT_CPU (default 1), XDP_MODE (native|generic|auto).
# Needs root. The topology is torn down on exit, also on failure or Ctrl-C.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZE=$((1 << 30))
ROUNDS=3
CLIENT=quinn
CONNS=1
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
XDP_MODE=${XDP_MODE:-native}
SRV_NS=qn-srv
CLI_NS=qn-cli
SRV_IF=qn-veth-s
ADDR=10.99.0.1:4433

die() { echo "bench-xdp.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case $1 in
        --size) SIZE=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --client) CLIENT=$2; shift 2 ;;
        --conns) CONNS=$2; shift 2 ;;
        *) die "unknown argument: $1" ;;
    esac
done
[ "$(id -u)" -eq 0 ] || die "must run as root (namespaces, XDP)"
[[ $CLIENT =~ ^(quinn|quench)$ ]] || die "--client quinn|quench"

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
QUENCH_BIN=${QUENCH_BIN:-$TARGET/release/quench}
QUINN_PEER_BIN=${QUINN_PEER_BIN:-$TARGET/release/quinn-peer}
if [ ! -x "$QUENCH_BIN" ] || [ ! -x "$QUINN_PEER_BIN" ]; then
    (cd "$ROOT" && cargo build --release -p quench -p quench-tests --bins)
fi

WORK=$(mktemp -d /tmp/quench-bench-xdp.XXXXXX)
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    "$ROOT/scripts/netns.sh" down || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$ROOT/scripts/netns.sh" up --queues 1 >/dev/null

# start_server NAME: starts the server in qn-srv pinned to SERVER_CPU, waits for its
# `listening on` line, writes its certificate to $WORK/NAME.pem.
start_server() {
    local name=$1 out=$WORK/$1.out
    : >"$out"
    case $name in
        xdp) taskset -c "$SERVER_CPU" ip netns exec $SRV_NS "$QUENCH_BIN" serve --datapath xdp \
                --iface $SRV_IF --xdp-mode "$XDP_MODE" --listen $ADDR --workers 1 \
                --write-cert "$WORK/$name.pem" >"$out" 2>"$WORK/$name.err" & ;;
        udp) taskset -c "$SERVER_CPU" ip netns exec $SRV_NS "$QUENCH_BIN" serve --listen $ADDR \
                --workers 1 --write-cert "$WORK/$name.pem" >"$out" 2>"$WORK/$name.err" & ;;
        quinn) taskset -c "$SERVER_CPU" ip netns exec $SRV_NS "$QUINN_PEER_BIN" server \
                --listen $ADDR --write-cert "$WORK/$name.pem" >"$out" 2>"$WORK/$name.err" & ;;
    esac
    SERVER_PID=$!
    for _ in $(seq 300); do
        grep -q "listening on" "$out" && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/$name.err" >&2; die "$name server exited"; }
        sleep 0.1
    done
    die "$name server never printed 'listening on'"
}

stop_server() {
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

# run_client NAME DOWN UP: prints the client's throughput in Mbit/s.
run_client() {
    local name=$1 down=$2 up=$3 bin
    if [ "$CLIENT" = quinn ]; then bin=$QUINN_PEER_BIN; else bin=$QUENCH_BIN; fi
    local line
    line=$(taskset -c "$CLIENT_CPU" ip netns exec $CLI_NS "$bin" client --connect $ADDR \
        --alpn perf --down "$down" --up "$up" --conns "$CONNS" --ca "$WORK/$name.pem" \
        --server-name localhost) || die "$CLIENT client against $name failed"
    python3 -c '
import json, sys
r = json.loads(sys.argv[1]); down, up = int(sys.argv[2]), int(sys.argv[3])
assert r["bytes_down"] == down and r["bytes_up"] == up, r
print("%.0f" % r["throughput_mbps"])' "$line" "$down" "$up"
}

RESULTS=$WORK/results
: >"$RESULTS"
echo "bench-xdp: $((SIZE >> 20)) MiB down and up, $ROUNDS rounds, $CLIENT client, $CONNS conn(s)," \
     "server on CPU $SERVER_CPU, client on CPU $CLIENT_CPU, XDP mode $XDP_MODE"
for round in $(seq "$ROUNDS"); do
    # Alternate the order so drift on a shared machine does not favour one server.
    if [ $((round % 2)) -eq 1 ]; then order="xdp udp quinn"; else order="quinn udp xdp"; fi
    for name in $order; do
        start_server "$name"
        down=$(run_client "$name" "$SIZE" 0)
        up=$(run_client "$name" 0 "$SIZE")
        if [ "$name" = xdp ]; then
            kill -USR1 "$SERVER_PID"; sleep 0.3
            grep quench_stats "$WORK/$name.out" | tail -1 >"$WORK/xdp-stats-$round.json" || true
        fi
        stop_server
        echo "round $round  $name  down ${down} Mbit/s  up ${up} Mbit/s"
        echo "$name $down $up" >>"$RESULTS"
    done
done

python3 - "$RESULTS" "$WORK" <<'EOF'
import json, statistics, sys, glob
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
med = {}
for name in ("xdp", "udp", "quinn"):
    d = [float(r[1]) for r in rows if r[0] == name]
    u = [float(r[2]) for r in rows if r[0] == name]
    med[name] = (statistics.median(d), statistics.median(u))
print()
print("median Mbit/s      download    upload")
for name, label in (("xdp", "quench AF_XDP"), ("udp", "quench UDP"), ("quinn", "quinn (UDP)")):
    print(f"{label:<16} {med[name][0]:>10.0f} {med[name][1]:>9.0f}")
print()
for a, b in (("xdp", "quinn"), ("xdp", "udp"), ("udp", "quinn")):
    print(f"{a}/{b:<6}  download {med[a][0]/med[b][0]:.2f}x  upload {med[a][1]/med[b][1]:.2f}x")
for f in sorted(glob.glob(sys.argv[2] + "/xdp-stats-*.json"))[-1:]:
    s = json.load(open(f))["quench_stats"]["xdp"]
    print("\nlast XDP round: program", {k: v for k, v in s["program"].items() if v},
          "socket kernel drops", [x["kernel_rx_dropped"] for x in s["sockets"]])
EOF
