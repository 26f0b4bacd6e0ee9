#!/usr/bin/env bash
# Profile-guided release build of the `quench` server and of `quench-bench`.
#
#   scripts/pgo.sh            -> $T/pgo/release/quench and $T/pgo/release/quench-bench
#                                (T = $CARGO_TARGET_DIR or ./target; the plain release build is untouched)
#
# Why: quench's per-packet path is straight-line code (a small request executes ~6,700
# distinct instructions once each), so on a small-packet workload its cost is largely
# instruction-cache misses, not instructions. With a profile LLVM lays hot blocks out
# together and inlines by call frequency: under callgrind's cache model the lone small
# request goes from 250 to 62 L1i misses and 7,497 to 6,452 instructions, and its time
# drops by 12% to 29%, by how much the CPU's front end hides those misses
# (docs/performance.md).
#
# Training (all over loopback, bounded): an instrumented `quench serve` answers an
# instrumented `quench client` (perf bulk both ways, many small streams, hq-interop, h3,
# DATAGRAM echo), so both roles are profiled on the UDP datapath; then the instrumented
# `quench-bench profile` runs every in-memory scenario for every stack it compares (quench,
# quinn-proto, quiche, rustls alone), so a PGO'd comparison gives every Rust stack the
# same treatment. Takes ~15 minutes on 2 cores (two full release builds).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
bash scripts/deps.sh

target=${CARGO_TARGET_DIR:-$repo_root/target}
gen_dir=$target/pgo-generate
use_dir=$target/pgo
raw=$target/pgo-profiles
profdata=$raw/merged.profdata

# llvm-profdata must read the raw format of rustc's own LLVM: rustup's llvm-tools are
# built from it; Debian's llvm-N of the same major is the fallback.
find_profdata() {
    local host llvm_major tool
    host=$(rustc -vV | sed -n 's/^host: //p')
    tool="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
    if [[ ! -x $tool ]]; then
        rustup component add llvm-tools >&2 || true
    fi
    if [[ ! -x $tool ]]; then
        llvm_major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
        tool=/usr/lib/llvm-$llvm_major/bin/llvm-profdata
        [[ -x $tool ]] || apt-get install -y -q "llvm-$llvm_major" >&2
    fi
    [[ -x $tool ]] || { echo "pgo.sh: no llvm-profdata for rustc's LLVM" >&2; exit 1; }
    echo "$tool"
}
llvm_profdata=$(find_profdata)

build() { # target dir, extra RUSTFLAGS
    RUSTFLAGS="${RUSTFLAGS:-} $2" CARGO_TARGET_DIR=$1 \
        cargo build --release --locked -p quench -p quench-bench
}

echo "== instrumented build ($gen_dir)"
rm -rf "$raw"
mkdir -p "$raw"
build "$gen_dir" "-Cprofile-generate=$raw"

echo "== training on loopback"
quench=$gen_dir/release/quench
bench=$gen_dir/release/quench-bench
log=$(mktemp)
server=
cleanup() {
    [[ -n $server ]] && kill "$server" 2>/dev/null || true
    rm -f "$log"
}
trap cleanup EXIT

"$quench" serve --listen 127.0.0.1:0 --workers 1 >"$log" 2>&1 &
server=$!
for _ in $(seq 100); do
    grep -q 'listening on' "$log" && break
    sleep 0.1
done
addr=$(grep -o 'listening on [^ ]*' "$log" | head -1 | awk '{print $3}')
[[ -n $addr ]] || { cat "$log" >&2; echo "pgo.sh: the server did not start" >&2; exit 1; }

client() { timeout 120 "$quench" client --connect "$addr" --insecure "$@" >/dev/null; }
client --down $((256 << 20)) --streams 4
client --up $((128 << 20))
client --conns 8 --streams 200 --down 800000 --up 160000
client --conns 4 --streams 1000 --down 400000
client --alpn hq-interop --get /1000 --get /100000 --get /1
client --alpn h3 --get /1000 --get /100000
client --alpn echo --datagrams 2000
kill -TERM "$server"
wait "$server" || true
server=

for spec in "recv 100000" "send 100000" "handshake 300" "request 100000" "request16 200000"; do
    read -r scenario count <<<"$spec"
    for stack in quench quinn-proto quiche; do
        "$bench" profile --scenario "$scenario" --stack "$stack" --count "$count" >/dev/null
    done
done
"$bench" profile --scenario handshake --stack rustls --count 300 >/dev/null

"$llvm_profdata" merge -o "$profdata" "$raw"/*.profraw
echo "== optimised build ($use_dir) with $profdata"
# Functions no training run reached (error paths, XDP) keep the default heuristics.
build "$use_dir" "-Cprofile-use=$profdata -Cllvm-args=-pgo-warn-missing-function=false"
echo "pgo.sh: built $use_dir/release/quench and $use_dir/release/quench-bench"
