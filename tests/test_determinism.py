import json

from rnp.stages import run_all

from .conftest import make_config


def test_same_seed_same_metrics_and_bytes(tmp_path):
    cfg = make_config(**{"train.epochs": 3, "recover.epochs": 3, "unlearn.max_epochs": 3})
    a = run_all(cfg, tmp_path / "a")
    b = run_all(cfg, tmp_path / "b")
    assert a == b
    for f in ("poison/train.safetensors", "train/model.safetensors", "recover/masks.safetensors", "prune/model.safetensors"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert json.loads((tmp_path / "a/prune/metrics.json").read_text()) == a["prune"]
