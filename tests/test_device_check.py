"""The prepared GPU check runs everywhere: its dry mode runs every part on the CPU, so it cannot rot between GPU loans."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnp.compute import resolve_compute
from rnp.errors import RnpError

ROOT = Path(__file__).resolve().parents[1]
HAVE_FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file()


@pytest.mark.skipif(not HAVE_FASHION, reason="the quality part needs Fashion-MNIST (apt-get install dataset-fashion-mnist)")
def test_dry_device_check_runs_every_part_and_its_results_fit_what_the_device_tool_returns(tmp_path):
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_check.sh"), "--dry", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert report["dry"] and {name: part["status"] for name, part in report["parts"].items()} == {"speed": "ok", "quality": "ok", "dvc": "ok"}
    speed = json.loads((tmp_path / "speed.json").read_text())
    assert set(speed["rnp"]) == {"fp32", "bf16"} and speed["baseline"]["prune"] > 0  # the baseline runs in the same call
    (cell,) = (tmp_path / "quality").glob("*/*.json")
    cell = json.loads(cell.read_text())
    assert cell["arch"] == "small_cnn" and len(cell["curve"]) == 19 and cell["settings"]["data.root"].endswith("subset-1200")
    dvc = json.loads((tmp_path / "dvc.json").read_text())
    assert dvc["matches_cpu"] is None and set(dvc["metrics"]) == {"train", "prune"}  # shortened: not compared
    assert "| speed | ok |" in r.stdout and "speed fp32: defense" in r.stdout
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(len(p.relative_to(tmp_path).parts) <= 3 for p in files)  # the device tool's limits


def test_bf16_on_a_gpu_without_it_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100")
    with pytest.raises(RnpError, match="precision bf16 asked for in params, but Tesla V100 has no bf16"):
        resolve_compute("cuda", "bf16")


def test_cuda_without_a_gpu_is_one_line_and_never_a_silent_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RnpError, match="device 'cuda' asked for in params, but no CUDA device is available"):
        resolve_compute("cuda", "auto")
