#!/usr/bin/env bash
# Installs what building and testing quench needs on a fresh Debian machine, idempotently:
# system packages (BPF toolchain, libbpf/libelf/zlib for libbpf-rs, iproute2 for netns topologies,
# ngtcp2's HTTP/3 example client and server gtlsclient/gtlsserver for the interop tests, cmake
# for the BoringSSL that the quiche crate builds and for MsQuic and its quictls, which the msquic crate
# builds with perl and links statically against libnuma)
# and a Python venv at .venv with a pinned aioquic (an independent QUIC peer for interop tests)
# and prometheus-client (whose parser checks what `quench serve --metrics` exports).
# Quiet when there is nothing to do; says what it does otherwise; fails loudly.
set -euo pipefail

AIOQUIC_VERSION="1.7.2"
PROMETHEUS_CLIENT_VERSION="0.26.0"
APT_PACKAGES=(clang llvm libbpf-dev libelf-dev zlib1g-dev pkg-config iproute2 python3-venv
    ngtcp2-client ngtcp2-server cmake libnuma-dev perl)

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv"

log() { printf 'deps: %s\n' "$*" >&2; }
die() { printf 'deps: error: %s\n' "$*" >&2; exit 1; }

# --- system packages -------------------------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    # `dpkg -s` also lists removed-but-configured packages; require the installed state.
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]})); then
    command -v apt-get >/dev/null || die "missing packages (${missing[*]}) and no apt-get: install them by hand"
    sudo_cmd=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || die "missing packages (${missing[*]}): run as root or install sudo"
        sudo_cmd=(sudo)
    fi
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt_log="$(mktemp)"
    trap 'rm -f "$apt_log"' EXIT
    if ! "${sudo_cmd[@]}" apt-get update -qq >"$apt_log" 2>&1; then
        cat "$apt_log" >&2
        die "apt-get update failed"
    fi
    if ! "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$apt_log" 2>&1; then
        cat "$apt_log" >&2
        die "apt-get install ${missing[*]} failed"
    fi
fi

# --- Python venv with aioquic ----------------------------------------------------------------
venv_ok() {
    [[ -x "$venv/bin/python" ]] &&
        "$venv/bin/python" -c "import aioquic, sys; sys.exit(aioquic.__version__ != '$AIOQUIC_VERSION')" 2>/dev/null &&
        "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('prometheus-client') != '$PROMETHEUS_CLIENT_VERSION')" 2>/dev/null
}

if ! venv_ok; then
    # Debian's interpreter with python3-venv (installed above) is the one we control; fall back
    # to whatever python3 is on PATH (e.g. pyenv) only if it is absent.
    python=""
    for candidate in /usr/bin/python3 "$(command -v python3 || true)"; do
        if [[ -n "$candidate" && -x "$candidate" ]] && "$candidate" -c 'import venv, ensurepip' 2>/dev/null; then
            python="$candidate"
            break
        fi
    done
    [[ -n "$python" ]] || die "no python3 with the venv module (install python3-venv)"

    log "creating $venv with aioquic==$AIOQUIC_VERSION, prometheus-client==$PROMETHEUS_CLIENT_VERSION ($python)"
    rm -rf "$venv"
    "$python" -m venv "$venv" || die "python -m venv failed"
    pip_log="$(mktemp)"
    if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "aioquic==$AIOQUIC_VERSION" "prometheus-client==$PROMETHEUS_CLIENT_VERSION" >"$pip_log" 2>&1; then
        cat "$pip_log" >&2
        rm -f "$pip_log"
        die "pip install aioquic==$AIOQUIC_VERSION prometheus-client==$PROMETHEUS_CLIENT_VERSION failed"
    fi
    rm -f "$pip_log"
    venv_ok || die "aioquic $AIOQUIC_VERSION or prometheus-client $PROMETHEUS_CLIENT_VERSION not importable from $venv after install"
fi

# --- Rust toolchain components the test script uses ------------------------------------------
command -v cargo >/dev/null || die "cargo not found on PATH"
cargo fmt --version >/dev/null 2>&1 || die "rustfmt missing: rustup component add rustfmt"
cargo clippy --version >/dev/null 2>&1 || die "clippy missing: rustup component add clippy"
