#!/usr/bin/env bash
# Deterministic side-by-side cost per unit, for hosts too noisy to time on: every stack's
# timed server calls (`server_span`) run under callgrind's cache simulation, and the script
# prints, per unit, instructions (Ir), L1 instruction and data misses, and callgrind's cycle
# estimate CEst = Ir + 10 × L1 misses + 100 × last-level misses. Each figure is the
# difference of a run with 2N units and one with N, over N, so set-up and warm-up cancel.
#
#   scripts/bench-callgrind.sh [SCENARIO...]    (default: request request16 recv send handshake
#                                                handshake-resumed)
#
# STACKS="quench quinn-proto" limits the stacks. QUENCH_BENCH picks the binary (e.g. the PGO build from scripts/pgo.sh). Valgrind hides
# SHA-NI and AVX-512 from the crypto libraries, so their share reads higher than natively;
# all stacks are affected alike. Needs valgrind (apt-get install valgrind).
set -euo pipefail

BIN=${QUENCH_BENCH:-${CARGO_TARGET_DIR:-target}/release/quench-bench}
[[ -x $BIN ]] || { echo "no $BIN: cargo build --release -p quench-bench" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }
scenarios=("$@")
[[ ${#scenarios[@]} -gt 0 ]] || scenarios=(request request16 recv send handshake handshake-resumed)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

counts() { # scenario stack units -> "Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw" (whole run)
    valgrind --tool=callgrind --cache-sim=yes --collect-atstart=no \
        --toggle-collect='*server_span*' --callgrind-out-file="$work/out" \
        "$BIN" profile --scenario "$1" --stack "$2" --count "$3" >/dev/null 2>"$work/err"
    sed -n 's/.*Collected : //p' "$work/err"
}

printf '%-10s %-12s %10s %8s %8s %8s %10s\n' scenario stack Ir I1mr D1mr D1mw CEst
for scenario in "${scenarios[@]}"; do
    case $scenario in
        handshake) n=100 stacks=(quench rustls quinn-proto quiche) ;;
        handshake-resumed) n=100 stacks=(quench rustls quinn-proto) ;;
        *) n=10000 stacks=(quench quinn-proto quiche) ;;
    esac
    for stack in "${stacks[@]}"; do
        [[ -z ${STACKS:-} || " $STACKS " == *" $stack "* ]] || continue
        read -ra a <<<"$(counts "$scenario" "$stack" "$n")"
        read -ra b <<<"$(counts "$scenario" "$stack" $((2 * n)))"
        awk -v s="$scenario" -v st="$stack" -v n="$n" -v a="${a[*]}" -v b="${b[*]}" 'BEGIN {
            split(a, x, " "); split(b, y, " ")
            for (i = 1; i <= 9; i++) d[i] = (y[i] - x[i]) / n
            cest = d[1] + 10 * (d[4] + d[5] + d[6]) + 100 * (d[7] + d[8] + d[9])
            printf "%-10s %-12s %10.0f %8.1f %8.1f %8.1f %10.0f\n", s, st, d[1], d[4], d[5], d[6], cest
        }'
    done
done
