import csv
import json

import torch

from rnp.datafiles import load_imageset
from rnp.defense import unlearn
from rnp.models import load_model
from rnp.training import seeded_generator


def test_unlearning_collapses_defense_accuracy(default_run):
    cfg, root, metrics = default_run
    m = json.loads((root / "unlearn/metrics.json").read_text())
    assert m["reached_threshold"] and m["defense_acc"] <= cfg.unlearn.clean_threshold
    assert 1 <= m["epochs"] <= cfg.unlearn.max_epochs
    rows = list(csv.DictReader(open(root / "unlearn/history.csv")))
    assert len(rows) == m["epochs"]
    # it stops at the first epoch at or under the threshold, not later
    assert all(float(r["defense_acc"]) > cfg.unlearn.clean_threshold for r in rows[:-1])


def test_unlearn_leaves_the_input_model_untouched(default_run):
    cfg, root, _ = default_run
    model, spec, _ = load_model(root / "train/model.safetensors")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    defense, info, _ = load_imageset(root / "poison/defense.safetensors")
    unlearned, _ = unlearn(model, info.to_device(defense, torch.device("cpu")), cfg.unlearn, cfg.augment, seeded_generator(0))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in unlearned.state_dict().items())
