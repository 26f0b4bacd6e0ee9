#!/usr/bin/env bash
# Runs the quench server (release build) on plain UDP: scripts/serve.sh [quench serve flags...]
# e.g. scripts/serve.sh --listen 127.0.0.1:4433 --root ./www
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
bash scripts/deps.sh
exec cargo run --quiet --release -p quench -- serve "$@"
