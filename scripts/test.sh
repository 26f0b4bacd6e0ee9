#!/usr/bin/env bash
# The one command that runs the whole suite: dependencies, formatting, lints, the release
# build, every test in the workspace (unit, property, interop against quinn, s2n-quic,
# quiche, MsQuic, aioquic and ngtcp2), then the fuzz smoke run if present. Stops at the first failure; always prints a summary.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo_root/target}"
case "$CARGO_TARGET_DIR" in /*) ;; *) CARGO_TARGET_DIR="$repo_root/$CARGO_TARGET_DIR" ;; esac
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

steps=()
suite_start=$SECONDS
test_log="$(mktemp)"
trap 'rm -f "$test_log"' EXIT

summary() {
    local status=$1
    echo
    echo "==== quench test suite: $status in $((SECONDS - suite_start)) s ===="
    local s
    for s in "${steps[@]}"; do echo "  $s"; done
    if [[ -s "$test_log" ]]; then
        # Totals over every `test result:` line cargo printed, as one closing line.
        awk '/^test result:/ {
                for (i = 1; i <= NF; i++) {
                    if ($(i+1) ~ /^passed/) p += $i
                    if ($(i+1) ~ /^failed/) f += $i
                    if ($(i+1) ~ /^ignored/) g += $i
                }
             }
             END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, g }' "$test_log"
    fi
}

# step NAME CMD...: runs CMD, records its outcome and duration; on failure prints the summary
# and exits non-zero.
step() {
    local name=$1
    shift
    echo
    echo "==== $name ===="
    local start=$SECONDS rc=0
    "$@" || rc=$?
    if ((rc != 0)); then
        steps+=("FAIL  $name ($((SECONDS - start)) s, exit $rc)")
        summary FAILED
        exit "$rc"
    fi
    steps+=("ok    $name ($((SECONDS - start)) s)")
}

run_tests() {
    # The interop tests drive the quench binary built in the same (ci) profile, so the
    # dependencies compile once for both; and the aioquic venv.
    QUENCH_BIN="$CARGO_TARGET_DIR/ci/quench" \
        AIOQUIC_PYTHON="$repo_root/.venv/bin/python" \
        cargo test --profile ci --workspace --no-fail-fast 2>&1 | tee "$test_log"
    return "${PIPESTATUS[0]}"
}

step "dependencies (scripts/deps.sh)" bash scripts/deps.sh
step "cargo fmt --check" cargo fmt --all -- --check
# The ci profile, like the build and tests after it: the C libraries build scripts compile
# (aws-lc, BoringSSL for quiche, libbpf) are then built once for all three steps.
step "cargo clippy" cargo clippy --profile ci --workspace --all-targets -- -D warnings
step "cargo build --profile ci -p quench" cargo build --profile ci -p quench
step "cargo test --workspace" run_tests
if [[ -f scripts/fuzz-smoke.sh ]]; then
    step "fuzz smoke (scripts/fuzz-smoke.sh)" bash scripts/fuzz-smoke.sh
fi
summary PASSED
