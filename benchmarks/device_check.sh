#!/usr/bin/env bash
# The prepared GPU check (issue: "On a GPU"): at most 8 minutes on one H100, results as JSON under --out
# (default $OUT), a summary table at the end. --dry runs every part tiny on the CPU (CI does).
# Before sending the tree to a lent GPU machine, here:
#   mkdir -p data/raw/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz data/raw/fashion-mnist/
#   bash benchmarks/device_wheels.sh      # pydantic and its needs, which the machine lacks, into .whl/
# and carry data/raw/fashion-mnist and .whl with the call.
set -euo pipefail
cd "$(dirname "$0")/.."
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
if ! "$py" -c "import pydantic" 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    site=$(mktemp -d)
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "device_check: this Python lacks pydantic; run 'bash benchmarks/device_wheels.sh' here and carry .whl" >&2
    exit 2
  fi
fi
exec "$py" -m benchmarks.device_check "$@"
