import json

import torch

from rnp.data import DeviceData
from rnp.datafiles import load_imageset
from rnp.metrics import der
from rnp.models import load_model


def test_backdoored_model_meets_the_bar(default_run):
    _, root, metrics = default_run
    m = json.loads((root / "train/metrics.json").read_text())
    assert m == metrics["train"]
    assert m["ca"] >= 0.95 and m["asr"] >= 0.95
    assert 0 <= m["ra"] <= 1 - m["asr"] + 1e-9


def test_model_file_rebuilds_without_pickle(default_run):
    cfg, root, _ = default_run
    model, spec, meta = load_model(root / "train/model.safetensors")
    assert spec.arch == cfg.model.arch and spec.num_classes == 10 and spec.input_shape == (1, 8, 8)
    assert meta["params"]["train"]["epochs"] == cfg.train.epochs  # the params travel with the model
    test, info, _ = load_imageset(root / "poison/test_clean.safetensors")
    data = DeviceData(test, spec.mean, spec.std, torch.device("cpu"))
    model.eval()
    with torch.no_grad():
        acc = (model(data.normalise(data.images)).argmax(1) == data.labels).float().mean().item()
    assert abs(acc - json.loads((root / "train/metrics.json").read_text())["ca"]) < 1e-6


def test_history_has_one_row_per_epoch(default_run):
    cfg, root, _ = default_run
    lines = (root / "train/history.csv").read_text().strip().splitlines()
    assert lines[0].split(",") == ["epoch", "loss", "train_acc", "ca", "asr", "ra"]
    assert len(lines) == cfg.train.epochs + 1


def test_der():
    assert der(0.9, 1.0, 0.9, 0.0) == 1.0
    assert der(0.9, 1.0, 0.9, 1.0) == 0.5
    assert abs(der(0.9, 1.0, 0.8, 0.0) - 0.95) < 1e-9
    assert der(0.9, 0.1, 0.95, 0.5) == 0.5  # no credit for an ASR rise or CA gain
