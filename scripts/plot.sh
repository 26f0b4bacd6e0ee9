#!/usr/bin/env bash
# Draws docs/performance.md's figures from kept benchmark runs, in a venv of its own
# (.venv-plot, with a pinned matplotlib; made once, apart from the test suite's .venv).
#
#   SAVE=/tmp/e2e.txt scripts/bench-e2e.sh 3 && scripts/plot.sh e2e /tmp/e2e.txt
#   SAVE=/tmp/cmp.txt scripts/bench-compare.sh 5 && scripts/plot.sh compare /tmp/cmp.txt
#
# Figures go to docs/img/ (OUT to put them elsewhere).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MATPLOTLIB_VERSION=3.9.2
venv=$ROOT/.venv-plot
if ! "$venv/bin/python" -c "import matplotlib, sys; sys.exit(matplotlib.__version__ != '$MATPLOTLIB_VERSION')" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "matplotlib==$MATPLOTLIB_VERSION"
fi
[[ $# -eq 2 ]] || { echo "usage: scripts/plot.sh e2e|compare RUNS" >&2; exit 2; }
exec "$venv/bin/python" "$ROOT/scripts/plot.py" "$1" "$2" "${OUT:-$ROOT/docs/img}"
