#!/usr/bin/env bash
# Smoke-runs every fuzz target (engine/fuzz) for a few seconds each: the wire parsers, the
# QPACK codec (`qpack`), HTTP/3 frame splitting (`h3_frames`), the HTTP/3 server behind a live connection (`h3_server`), the small-packet AES-GCM against aws-lc (`small_gcm`), session ticket keys and tickets (`tickets`) and `endpoint` (arbitrary datagrams and frames against live
# server/client endpoints).
#
#   scripts/fuzz-smoke.sh [SECONDS]     default 20 seconds per target (or $FUZZ_SECONDS)
#   FUZZ_TARGETS="frame header" scripts/fuzz-smoke.sh 60
#
# Needs cargo-fuzz (installed here if missing) and a nightly compiler for the sanitizer
# flags: the nightly toolchain if rustup has one, else stable with RUSTC_BOOTSTRAP=1.
# Builds into engine/fuzz/target, apart from the workspace's target directory.
set -euo pipefail

seconds="${1:-${FUZZ_SECONDS:-20}}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fuzz_dir="$root/engine/fuzz"
targets="${FUZZ_TARGETS:-header frame transport_params endpoint qpack h3_frames h3_server small_gcm tickets client_hello}"

if ! cargo fuzz --help >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

fuzz=(cargo fuzz)
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
else
    export RUSTC_BOOTSTRAP=1
fi

cd "$fuzz_dir"
for target in $targets; do
    corpus="$fuzz_dir/corpus/$target"
    mkdir -p "$corpus"
    seeds=()
    [ -d "$fuzz_dir/seeds/$target" ] && seeds=("$fuzz_dir/seeds/$target")
    echo "== fuzzing $target for ${seconds}s" >&2
    # -a: debug assertions and overflow checks on, so the engine's own invariant checks
    # (e.g. that a connection which said it had sent everything builds nothing when asked
    # again) and arithmetic overflow count as failures, not just panics of release code.
    "${fuzz[@]}" run -a --target-dir "$fuzz_dir/target" "$target" "$corpus" "${seeds[@]}" -- \
        -max_total_time="$seconds" -print_final_stats=1
done
echo "== all fuzz targets survived ${seconds}s each" >&2
