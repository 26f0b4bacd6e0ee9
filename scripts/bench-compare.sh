#!/usr/bin/env bash
# Side-by-side server cost per unit, quench against its peer, outside criterion: each round
# runs every stack once in a fresh process (alternating, so drift on a shared machine hits
# both), and the script prints each stack's median and minimum and the ratio of medians.
#
#   scripts/bench-compare.sh [ROUNDS]        (default 5; needs a release build of quench-bench)
#
# Scenarios and units are those of `cargo bench -p quench-bench --bench engine`:
# recv / send (ns per 1452-byte 1-RTT packet), handshake (ns per full server handshake,
# against rustls alone), request (ns per 100-byte perf request, one in flight per
# connection), request16 (the same, 16 in flight per connection).
set -euo pipefail

ROUNDS=${1:-5}
BIN=${QUENCH_BENCH:-${CARGO_TARGET_DIR:-target}/release/quench-bench}
[[ -x $BIN ]] || { echo "no $BIN: cargo build --release -p quench-bench" >&2; exit 1; }

run() { # scenario stack count -> ns per unit
    "$BIN" profile --scenario "$1" --stack "$2" --count "$3" |
        sed -E 's/.* ([0-9]+) ns each.*/\1/'
}

stats() { # numbers on stdin -> "median min"
    sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)], v[1]}'
}

printf '%-10s %-12s %10s %10s\n' scenario stack median min
for spec in "recv quinn-proto 200000" "send quinn-proto 200000" \
            "handshake rustls 1000" "request quinn-proto 200000" \
            "request16 quinn-proto 400000"; do
    read -r scenario peer count <<<"$spec"
    q=() p=()
    for _ in $(seq "$ROUNDS"); do
        q+=("$(run "$scenario" quench "$count")")
        p+=("$(run "$scenario" "$peer" "$count")")
    done
    read -r qmed qmin < <(printf '%s\n' "${q[@]}" | stats)
    read -r pmed pmin < <(printf '%s\n' "${p[@]}" | stats)
    printf '%-10s %-12s %10s %10s\n' "$scenario" quench "$qmed" "$qmin"
    printf '%-10s %-12s %10s %10s\n' "$scenario" "$peer" "$pmed" "$pmin"
    awk -v q="$qmed" -v p="$pmed" -v s="$scenario" -v n="$peer" \
        'BEGIN {printf "%-10s quench/%s = %.2f\n", s, n, q / p}'
    if [[ $scenario == request* ]]; then
        # The two AEAD calls a request needs, alone, at the scenario's packet sizes.
        f=()
        for _ in $(seq "$ROUNDS"); do f+=("$(run "$scenario" aead-floor "$count")"); done
        read -r fmed fmin < <(printf '%s\n' "${f[@]}" | stats)
        printf '%-10s %-12s %10s %10s\n' "$scenario" aead-floor "$fmed" "$fmin"
    fi
done
