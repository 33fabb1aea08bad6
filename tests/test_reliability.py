"""Killed mid-stage, and concurrent grid cells: nothing half-written, nothing shared by accident."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from rnp.datafiles import load_imageset
from rnp.grid import cells, level_params

from .conftest import ROOT, default_params

POISON_OUTS = ["train", "test_clean", "test_poison", "defense", "holdout"]


def _consistent(out):
    """A stage folder is either finished (metrics.json and every output readable) or has no metrics.json."""
    if not (out / "metrics.json").exists():
        return True
    for name in POISON_OUTS:
        load_imageset(out / f"{name}.safetensors")  # raises on a missing or half-written file
    return (out / "trigger.png").stat().st_size > 0


@pytest.mark.e2e
def test_sigkill_at_any_moment_leaves_no_half_state_and_a_rerun_matches(tmp_path, bin_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({**default_params(), "data": {**default_params()["data"], "dataset": "digits32"}}))
    out = tmp_path / "poison"
    env = {**os.environ, "PATH": bin_path, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "rnp", "poison", "--params", str(params), "--out", str(out)]
    reference = tmp_path / "reference"
    subprocess.run([*cmd[:-1], str(reference)], env=env, check=True, capture_output=True)
    full = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    full = time.perf_counter() - full
    for i in range(8):  # kills spread over a whole run, from start-up to the final renames
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(full * (0.3 + 0.1 * i))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert _consistent(out), f"half state after a kill at {0.3 + 0.1 * i:.0%} of a run"
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    assert json.loads((out / "metrics.json").read_text()) == json.loads((reference / "metrics.json").read_text())
    for name in POISON_OUTS:
        assert (out / f"{name}.safetensors").read_bytes() == (reference / f"{name}.safetensors").read_bytes()


def test_no_two_grid_jobs_write_the_same_folder():
    config = {"params": str(ROOT / "params.yaml"), "datasets": ["digits", "digits32"], "attacks": ["badnets", "blend"],
              "archs": ["small_cnn", "resnet18"], "seeds": [0, 1], "defenses": {"a": {}, "b": {"prune.max_clean_drop": 0.02}}}
    jobs = {}
    for cell in cells(config):  # every job a cell needs, keyed by the folder it writes
        for level, folder in (("poison", cell.poison_dir), ("train", cell.train_dir), ("defense", cell.defense_dir)):
            params = yaml.safe_dump(level_params(default_params(), config, cell, level), sort_keys=True)
            assert jobs.setdefault(folder, params) == params, f"two different jobs would write {folder}"
    assert len(jobs) == 2 * 2 * 2 + 2 * 2 * 2 * 2 + 2 * 2 * 2 * 2 * 2  # shared upstreams, distinct cells


@pytest.mark.parametrize("marker", ["metrics.json", "purified.report.json"])  # a stage; rnp defend
def test_a_rename_failing_mid_publish_leaves_no_temp_file_and_no_marker(tmp_path, monkeypatch, marker):
    from rnp.io import StageWriter

    real_replace, calls = os.replace, []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    (tmp_path / marker).write_text("from the last complete run")
    with pytest.raises(OSError, match="No space left"):
        with StageWriter(tmp_path, marker=marker) as w:
            for name in (marker, "a.bin", "b.bin", "c.bin"):
                w.write(name, b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]  # no .tmp left, no marker: the set is not vouched for


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_honour_the_umask(tmp_path, umask):
    from rnp.io import StageWriter, atomic_write_bytes

    old = os.umask(umask)
    try:
        with StageWriter(tmp_path / "stage") as w:
            w.write("metrics.json", b"{}")
        atomic_write_bytes(tmp_path / "summary.csv", b"a\n")
    finally:
        os.umask(old)
    for path in (tmp_path / "stage" / "metrics.json", tmp_path / "summary.csv"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask
