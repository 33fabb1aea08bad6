#!/usr/bin/env bash
# The prepared GPU check (issue: "On a GPU"): at most 8 minutes on one H100, results as JSON under --out
# (default $OUT), a summary table at the end. --dry runs every part tiny on the CPU (CI does).
# On the lent GPU machine, first copy Fashion-MNIST into the tree it receives:
#   mkdir -p data/raw/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz data/raw/fashion-mnist/
# and carry data/raw/fashion-mnist with the call.
set -euo pipefail
cd "$(dirname "$0")/.."
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
exec "$py" -m benchmarks.device_check "$@"
