"""poison: clean data set -> poisoned training set, clean/triggered test sets, clean defense data."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import Config
from ..datasets import load_dataset
from ..io import StageWriter, json_bytes
from ..plots import trigger_png
from ..poisoning import poison
from ._runtime import DataInfo, imageset_bytes, say

__all__ = ["run"]


def run(cfg: Config, out: Path, clean: bool = False) -> dict:
    """`clean=True` poisons nothing and writes the same files: the baseline of a model without a backdoor, whose
    triggered test set still carries the attack's trigger (its ASR is the trigger's natural rate). An API option for
    research (the quality benchmark's clean cells), not a params key."""
    ds = load_dataset(cfg.data.dataset, cfg.data.root, cfg.data.image_size)
    data = poison(ds, cfg.data, cfg.attack, cfg.seed, clean)
    info = DataInfo(cfg.data.dataset, ds.num_classes, tuple(data.train.images.shape[1:]), ds.mean, ds.std)

    n_show = min(8, len(data.test_poison))
    clean_examples = data.test_clean.images[data.test_source[:n_show]]
    labels = [f"{int(y)} -> {int(t)}" for y, t in zip(data.test_poison.labels[:n_show], data.test_targets[:n_show])]
    metrics = {
        "train": len(data.train),
        "poisoned": int(data.poisoned.sum()),
        "poison_rate": data.poisoned.float().mean().item(),
        "cover": int(data.cover.sum()),
        "test_clean": len(data.test_clean),
        "test_poison": len(data.test_poison),
        "defense": len(data.defense),
        "holdout": len(data.holdout),
    }
    with StageWriter(out) as w:
        w.write("train.safetensors", imageset_bytes(data.train, info, poisoned=data.poisoned.to(torch.uint8), cover=data.cover.to(torch.uint8)))
        w.write("test_clean.safetensors", imageset_bytes(data.test_clean, info))
        w.write("test_poison.safetensors", imageset_bytes(data.test_poison, info, targets=data.test_targets))
        w.write("defense.safetensors", imageset_bytes(data.defense, info))
        w.write("holdout.safetensors", imageset_bytes(data.holdout, info))
        w.write("trigger.png", trigger_png(clean_examples, data.test_poison.images[:n_show], labels, f"{cfg.attack.name} on {cfg.data.dataset}"))
        w.write("metrics.json", json_bytes(metrics))
    say(
        f"poison: {metrics['poisoned']}/{metrics['train']} training images poisoned ({cfg.attack.name}, {cfg.attack.mode}), "
        f"{metrics['defense']}+{metrics['holdout']} clean defense/holdout images -> {out}"
    )
    return metrics
