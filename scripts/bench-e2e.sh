#!/usr/bin/env bash
# End-to-end server cost per core over loopback UDP: quench against the independent servers
# of the interop suite (quinn, quiche, s2n-quic, MsQuic), all driven by the same clients.
# Each server is pinned to one core (SERVER_CPU; a stack's extra threads share that core),
# the client to another (CLIENT_CPU). What counts is the server process's CPU time (user +
# system, /proc/PID/stat) for the work, so the kernel's UDP cost is in it for every stack.
#
# Scenarios (SCENARIOS, default all):
#   rr1   small requests, 8 connections x 1 in flight: `quench-bench load --size 100`
#   rr16  the same with 16 in flight per connection
#   down  one connection downloading DOWN_BYTES: `quench client --alpn perf --down`
#   up    the same uploading
# Each round runs every stack once per scenario (the order alternates between rounds), and
# the script prints every run, then per scenario each stack's median and quench's ratio.
#
#   scripts/bench-e2e.sh [ROUNDS]            (default 3)
# Env: STACKS (default "quench quinn quiche s2n msquic"; ratios are to quench's cost),
#      SCENARIOS, RR1_REQUESTS and RR16_REQUESTS (per connection, default 20000 and 200000:
#      long enough that the CPU clock's 10 ms ticks do not matter), DOWN_BYTES (default
#      1 GiB), SERVER_CPU (0), CLIENT_CPU (1), BIN_DIR (default $CARGO_TARGET_DIR/release;
#      built if missing), SAVE (a file to keep every run's line in, for scripts/plot.py:
#      "scenario stack server_cpu_s units client_json").
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${1:-3}
STACKS=${STACKS:-quench quinn quiche s2n msquic}
SCENARIOS=${SCENARIOS:-rr1 rr16 down up}
RR1_REQUESTS=${RR1_REQUESTS:-20000}
RR16_REQUESTS=${RR16_REQUESTS:-200000}
DOWN_BYTES=${DOWN_BYTES:-1073741824}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
BIN_DIR=${BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
CLK_TCK=$(getconf CLK_TCK)

die() { echo "bench-e2e.sh: $*" >&2; exit 1; }
command -v taskset >/dev/null || die "taskset (util-linux) is needed to pin the processes"

bins=(quench quench-bench quinn-peer quiche-peer s2n-peer msquic-peer)
for b in "${bins[@]}"; do
    if [[ ! -x $BIN_DIR/$b ]]; then
        (cd "$ROOT" && cargo build --release -p quench -p quench-bench -p quench-tests --bins)
        break
    fi
done

WORK=$(mktemp -d /tmp/quench-bench-e2e.XXXXXX)
SERVER_PID=
stop_server() {
    if [[ -n $SERVER_PID ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
    fi
}
cleanup() { stop_server; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

server_cmd() { # stack -> the server's command line (without --listen / --write-cert)
    case $1 in
        quench) echo "$BIN_DIR/quench serve --workers 1 --alpn perf" ;;
        quinn) echo "$BIN_DIR/quinn-peer server --alpn perf" ;;
        quiche) echo "$BIN_DIR/quiche-peer server --alpn perf" ;;
        s2n) echo "$BIN_DIR/s2n-peer server --alpn perf" ;;
        msquic) echo "$BIN_DIR/msquic-peer server --alpn perf" ;;
        *) die "unknown stack $1" ;;
    esac
}

port=4600
start_server() { # stack
    port=$((port + 1))
    local addr=127.0.0.1:$port
    # shellcheck disable=SC2046
    taskset -c "$SERVER_CPU" $(server_cmd "$1") --listen "$addr" --write-cert "$WORK/ca.pem" \
        >"$WORK/server.out" 2>"$WORK/server.err" &
    SERVER_PID=$!
    for _ in $(seq 200); do
        grep -q "listening on" "$WORK/server.out" 2>/dev/null && { ADDR=$addr; return; }
        kill -0 "$SERVER_PID" 2>/dev/null || die "$1 server exited: $(cat "$WORK/server.err")"
        sleep 0.05
    done
    die "$1 server not ready"
}

cpu_ticks() { # pid -> utime + stime of the whole process, in clock ticks
    awk '{print $14 + $15}' "/proc/$1/stat"
}

run_client() { # scenario -> client JSON on stdout
    case $1 in
        rr1 | rr16)
            local pipeline=1 requests=$RR1_REQUESTS
            [[ $1 == rr16 ]] && pipeline=16 requests=$RR16_REQUESTS
            taskset -c "$CLIENT_CPU" "$BIN_DIR/quench-bench" load --connect "$ADDR" \
                --ca "$WORK/ca.pem" --conns 8 --requests "$requests" --pipeline "$pipeline" \
                --size 100 --upload 100 --timeout 300
            ;;
        down | up)
            local flag=--down
            [[ $1 == up ]] && flag=--up
            taskset -c "$CLIENT_CPU" "$BIN_DIR/quench" client --connect "$ADDR" \
                --ca "$WORK/ca.pem" --alpn perf "$flag" "$DOWN_BYTES"
            ;;
    esac
}

rate() { # client JSON on stdin -> requests/s (load) or Mbit/s (client)
    sed -E 's/.*"requests_per_second":([0-9.]+).*/\1/; s/.*"throughput_mbps":([0-9.]+).*/\1/' |
        awk '{printf "%.0f", $1}'
}
rate_unit() { if [[ $1 == rr* ]]; then echo "req/s"; else echo "Mbit/s"; fi; }

# One line per run: scenario stack server_cpu_s unit_count client_json
RESULTS=$WORK/results
: >"$RESULTS"
read -ra stacks <<<"$STACKS"
for round in $(seq "$ROUNDS"); do
    order=("${stacks[@]}")
    if ((round % 2 == 0)); then
        order=()
        for ((i = ${#stacks[@]} - 1; i >= 0; i--)); do order+=("${stacks[i]}"); done
    fi
    for stack in "${order[@]}"; do
        start_server "$stack"
        for scenario in $SCENARIOS; do
            before=$(cpu_ticks "$SERVER_PID")
            json=$(run_client "$scenario") || die "$stack $scenario: client failed"
            after=$(cpu_ticks "$SERVER_PID")
            cpu=$(awk -v a="$after" -v b="$before" -v t="$CLK_TCK" 'BEGIN {printf "%.3f", (a - b) / t}')
            case $scenario in
                rr*) units=$(sed -E 's/.*"requests":([0-9]+).*/\1/' <<<"$json") ;;
                *) units=$DOWN_BYTES ;;
            esac
            echo "$scenario $stack $cpu $units $json" >>"$RESULTS"
            printf 'round %d  %-5s %-7s server cpu %7.3f s  %s %s\n' "$round" "$scenario" "$stack" "$cpu" \
                "$(rate <<<"$json")" "$(rate_unit "$scenario")"
        done
        stop_server
    done
done

per_unit() { # scenario stack -> median over rounds of server CPU per unit: µs/request or ms/GiB
    awk -v s="$1" -v k="$2" '$1 == s && $2 == k {
            if (s ~ /^rr/) print $3 / $4 * 1e6; else print $3 / ($4 / 1073741824) * 1e3 }' "$RESULTS" |
        sort -n | awk '{v[NR] = $1} END {if (NR) print v[int((NR + 1) / 2)]}'
}

[[ -z ${SAVE:-} ]] || cp "$RESULTS" "$SAVE"

echo
printf '%-5s %-7s %22s %16s %8s\n' scenario stack "server cpu per unit" "client rate" "vs quench"
for scenario in $SCENARIOS; do
    base=$(per_unit "$scenario" quench)
    for stack in "${stacks[@]}"; do
        cost=$(per_unit "$scenario" "$stack")
        rate=$(awk -v s="$scenario" -v k="$stack" '$1 == s && $2 == k' "$RESULTS" |
            while read -r line; do rate <<<"$line"; echo; done |
            sort -n | awk '{v[NR] = $1} END {printf "%.0f", v[int((NR + 1) / 2)]}')
        unit="us/request"
        [[ $scenario == rr* ]] || unit="ms/GiB"
        ratio=$(awk -v a="$cost" -v b="${base:-0}" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "-"}')
        printf '%-5s %-7s %11.1f %-10s %9s %-6s %8s\n' "$scenario" "$stack" "$cost" "$unit" "$rate" \
            "$(rate_unit "$scenario")" "$ratio"
    done
done
