#!/usr/bin/env bash
# Side-by-side server cost per unit, quench against its peers (quinn-proto, quiche; rustls
# alone for the handshake), outside criterion: each round runs every stack once in a fresh
# process (alternating, so drift on a shared machine hits all), and the script prints each
# stack's median and minimum and quench's ratio of medians to each.
#
#   scripts/bench-compare.sh [ROUNDS]        (default 5; needs a release build of quench-bench)
#   SCENARIOS="handshake handshake-resumed" scripts/bench-compare.sh   (only those)
#   SAVE=runs.txt scripts/bench-compare.sh   (also keeps every run: "scenario stack ns",
#                                              for scripts/plot.py)
#
# Scenarios and units are those of `cargo bench -p quench-bench --bench engine`:
# recv / send (ns per 1452-byte 1-RTT packet), handshake (ns per full server handshake,
# against rustls alone), handshake-resumed (the same for a handshake resuming a session
# from a ticket), request (ns per 100-byte perf request, one in flight per
# connection), request16 (the same, 16 in flight per connection).
set -euo pipefail

ROUNDS=${1:-5}
BIN=${QUENCH_BENCH:-${CARGO_TARGET_DIR:-target}/release/quench-bench}
[[ -x $BIN ]] || { echo "no $BIN: cargo build --release -p quench-bench" >&2; exit 1; }

[[ -z ${SAVE:-} ]] || : >"$SAVE"
run() { # scenario stack count -> ns per unit
    local ns
    ns=$("$BIN" profile --scenario "$1" --stack "$2" --count "$3" |
        sed -E 's/.* ([0-9]+) ns each.*/\1/')
    [[ -z ${SAVE:-} ]] || echo "$1 $2 $ns" >>"$SAVE"
    echo "$ns"
}

stats() { # numbers on stdin -> "median min"
    sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)], v[1]}'
}

printf '%-10s %-12s %10s %10s\n' scenario stack median min
# scenario, count, then the stacks quench is compared with (the first is the issue's
# reference: rustls alone for the handshake, quinn-proto otherwise).
for spec in "recv 200000 quinn-proto quiche" "send 200000 quinn-proto quiche" \
            "handshake 1000 rustls quinn-proto quiche" "handshake-resumed 1000 rustls quinn-proto" \
            "request 200000 quinn-proto quiche" \
            "request16 400000 quinn-proto quiche"; do
    read -r scenario count peers <<<"$spec"
    [[ -z ${SCENARIOS:-} || " $SCENARIOS " == *" $scenario "* ]] || continue
    read -ra peers <<<"$peers"
    declare -A runs=()
    for _ in $(seq "$ROUNDS"); do
        for stack in quench "${peers[@]}"; do
            runs[$stack]+="$(run "$scenario" "$stack" "$count") "
        done
    done
    read -r qmed qmin < <(printf '%s\n' ${runs[quench]} | stats)
    printf '%-10s %-12s %10s %10s\n' "$scenario" quench "$qmed" "$qmin"
    for peer in "${peers[@]}"; do
        read -r pmed pmin < <(printf '%s\n' ${runs[$peer]} | stats)
        printf '%-10s %-12s %10s %10s\n' "$scenario" "$peer" "$pmed" "$pmin"
        awk -v q="$qmed" -v p="$pmed" -v s="$scenario" -v n="$peer" \
            'BEGIN {printf "%-10s quench/%s = %.2f\n", s, n, q / p}'
    done
    unset runs
    if [[ $scenario == request* ]]; then
        # The two AEAD calls a request needs, alone, at the scenario's packet sizes.
        f=()
        for _ in $(seq "$ROUNDS"); do f+=("$(run "$scenario" aead-floor "$count")"); done
        read -r fmed fmin < <(printf '%s\n' "${f[@]}" | stats)
        printf '%-10s %-12s %10s %10s\n' "$scenario" aead-floor "$fmed" "$fmin"
    fi
done
