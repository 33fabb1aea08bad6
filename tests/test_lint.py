"""ruff (pyproject.toml's [tool.ruff]) has nothing to say about the Python code: CI runs it with the suite."""

import subprocess
import sys

from .conftest import ROOT


def test_ruff_is_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "."], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
