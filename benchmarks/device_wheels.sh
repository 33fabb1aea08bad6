#!/usr/bin/env bash
# The Python packages rnp needs that the lent GPU machines lack (they have torch, torchvision, safetensors, pyyaml,
# tqdm, matplotlib and scikit-learn, but no pydantic), as wheels for their Python 3.12, in .whl/ (ignored by git).
# Run here, where pip reaches the registry; carry .whl with the call; device_check.sh installs them there.
set -euo pipefail
cd "$(dirname "$0")/.."
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
pins=$("$py" - <<'PY'
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in ("pydantic", "pydantic_core", "annotated_types", "typing_inspection", "typing_extensions")))
PY
)
rm -rf .whl
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $pins
ls .whl
