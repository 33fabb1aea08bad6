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
    assert report["dry"] and {name: part["status"] for name, part in report["parts"].items()} == {
        "speed": "ok", "quality": "ok", "regime": "ok", "detection": "ok", "dvc": "ok"}
    speed = json.loads((tmp_path / "speed.json").read_text())
    assert set(speed["rnp"]) == {"fp32", "bf16"} and speed["baseline"]["prune"] > 0  # the baseline runs in the same call
    (cell,) = json.loads((tmp_path / "quality-cells.json").read_text()).values()
    assert cell["arch"] == "small_cnn" and len(cell["curve"]) == 19 and cell["settings"]["data.root"].endswith("subset-1200")
    assert set(cell["baselines"]) == {"anp", "ft"} and len(cell["baselines"]["anp"]["curve"]) == 19  # beside RNP, on the same model
    # the same cell and the clean model, trained and defended with the reference's crop and flip by two workers at once
    regime = {Path(name).stem: c for name, c in json.loads((tmp_path / "regime-cells.json").read_text()).items()}
    assert sorted(regime) == ["small_cnn-badnets-seed0", "small_cnn-clean-seed0"] and report["parts"]["regime"]["workers"] == 2
    assert all(c["settings"]["augment.crop_padding"] == 4 and c["settings"]["augment.flip"] is True for c in regime.values())
    assert "augment.flip" not in cell["settings"] and regime["small_cnn-badnets-seed0"]["before"] != cell["before"]
    (trace,) = (tmp_path / "detection_trace").glob("*.json")  # the model the quality part trained, unlearned epoch by epoch
    trace = json.loads(trace.read_text())
    assert trace["arch"] == "small_cnn" and trace["trace"][0]["epoch"] == 0 and len(trace["trace"]) >= 2
    assert all(sum(map(sum, t["confusion"])) == sum(map(sum, trace["trace"][0]["confusion"])) for t in trace["trace"])
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


def test_a_baseline_stopped_at_its_budget_keeps_its_finished_phases_and_claims_no_ratio():
    from benchmarks.speed import speed_table

    result = {"workload": "c", "gpu": "H100", "n_train": 1000, "rnp": {"bf16": {"train": 2.0, "unlearn": 1.0, "recover": 1.0, "prune": 2.0}},
              "baseline": {"train": 20.0}, "distinct_points": {}}
    rows = {line.split(" | ")[1]: line for line in speed_table([result]).splitlines()[2:]}
    assert "**10.0×**" in rows["train"]  # the finished phase gets its ratio
    assert rows["**defense** (unlearn + recover + prune)"].endswith("| 4.0 | — | — |")  # no baseline defense, no ratio
    assert rows["training, images/s"].endswith("| 500 | 50 | 10.0× |")


@pytest.mark.parametrize("part, committed_folder", [("quality", "reference"), ("regime", "regime15/reference")])
def test_a_gpu_part_resumes_from_committed_cells_and_sends_back_only_new_ones(tmp_path, monkeypatch, part, committed_folder):
    import benchmarks.device_check as dc

    committed = tmp_path / "repo" / "benchmarks" / "results" / "quality" / committed_folder
    committed.mkdir(parents=True)
    (committed / "resnet18-badnets-seed0.json").write_text("{}")
    (committed / "small_cnn-badnets-seed0.json").write_text("{}")  # a CPU cell: not the GPU part's business
    monkeypatch.setattr(dc, "ROOT", tmp_path / "repo")
    work, out = tmp_path / "work", tmp_path / "out"
    names = dc.seed_results(False, work, part)
    assert names == {"resnet18-badnets-seed0.json"}
    assert sorted(p.name for p in (work / f"{part}-results" / "reference").iterdir()) == ["resnet18-badnets-seed0.json"]
    (work / f"{part}-results" / "reference" / "resnet18-blend-seed0.json").write_text('{"attack": "blend"}')  # what the part ran
    out.mkdir()
    dc.send_back_new_cells(work / f"{part}-results", out / f"{part}-cells.json", names)
    assert json.loads((out / f"{part}-cells.json").read_text()) == {"reference/resnet18-blend-seed0.json": {"attack": "blend"}}
    assert dc.seed_results(True, tmp_path / "dry", part) == set()  # the dry run starts empty
    assert dc.unpack(out) == [committed / "resnet18-blend-seed0.json"]  # back here, beside the committed cells
    assert json.loads((committed / "resnet18-blend-seed0.json").read_text()) == {"attack": "blend"}
    with pytest.raises(SystemExit) as exit_:
        dc.main(["--unpack", str(tmp_path / "missing")])
    assert exit_.value.code == 2


def test_the_gpu_regime_workers_split_the_grid_and_only_a_plain_call_runs_regime_and_dvc(tmp_path):
    import benchmarks.device_check as dc

    parts = {name: commands for name, _, commands in dc.plan(False, tmp_path / "out", tmp_path / "work")}
    assert list(parts) == list(dc.PARTS) and dc.GPU_PARTS == ("regime", "dvc")
    regime = parts["regime"]
    assert [c[-1] for c in regime] == [f"{k}/{dc.REGIME_WORKERS}" for k in range(dc.REGIME_WORKERS)]
    assert all(c[:-2] == regime[0][:-2] and "train.epochs=15" in c for c in regime)  # one grid, split only by --shard
    assert all(len(commands) == 1 for name, commands in parts.items() if name != "regime")


def test_a_part_stopped_at_its_budget_stops_every_worker_and_keeps_each_ones_log(tmp_path):
    import benchmarks.device_check as dc

    quick = [sys.executable, "-c", "print('done')"]
    slow = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"]
    result = dc.run_part("p", 3, [quick, slow], tmp_path / "p.log")
    assert result["status"] == "timed out after 3 s" and result["seconds"] < 30 and result["workers"] == 2
    assert result["log_tail"] == ["done", "started"]
    assert dc.run_part("q", 30, [quick, [sys.executable, "-c", "raise SystemExit(3)"]], tmp_path / "q.log")["status"] == "failed (exit 3)"
