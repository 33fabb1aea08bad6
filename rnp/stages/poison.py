"""poison: clean data set -> poisoned training set, clean/triggered test sets, clean defense data."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import Config
from ..data import load_dataset
from ..io import StageWriter, json_bytes
from ..plots import trigger_png
from ..poisoning import poison
from ._common import DataInfo, imageset_bytes, say

__all__ = ["run"]


def run(cfg: Config, out: Path, clean: bool = False) -> dict:
    """`clean` trains nothing in: the baseline of a model without a backdoor (benchmarks), same test sets."""
    ds = load_dataset(cfg.data.dataset, cfg.data.root, cfg.data.image_size)
    pd = poison(ds, cfg.data, cfg.attack, cfg.seed, clean)
    info = DataInfo(cfg.data.dataset, ds.num_classes, tuple(pd.train.images.shape[1:]), ds.mean, ds.std)

    n_show = min(8, len(pd.test_poison))
    clean_examples = pd.test_clean.images[pd.test_source[:n_show]]
    labels = [f"{int(y)} -> {int(t)}" for y, t in zip(pd.test_poison.labels[:n_show], pd.test_targets[:n_show])]
    metrics = {
        "train": len(pd.train),
        "poisoned": int(pd.poisoned.sum()),
        "poison_rate": pd.poisoned.float().mean().item(),
        "cover": int(pd.cover.sum()),
        "test_clean": len(pd.test_clean),
        "test_poison": len(pd.test_poison),
        "defense": len(pd.defense),
        "holdout": len(pd.holdout),
    }
    with StageWriter(out) as w:
        w.write("train.safetensors", imageset_bytes(pd.train, info, poisoned=pd.poisoned.to(torch.uint8), cover=pd.cover.to(torch.uint8)))
        w.write("test_clean.safetensors", imageset_bytes(pd.test_clean, info))
        w.write("test_poison.safetensors", imageset_bytes(pd.test_poison, info, targets=pd.test_targets))
        w.write("defense.safetensors", imageset_bytes(pd.defense, info))
        w.write("holdout.safetensors", imageset_bytes(pd.holdout, info))
        w.write("trigger.png", trigger_png(clean_examples, pd.test_poison.images[:n_show], labels, f"{cfg.attack.name} on {cfg.data.dataset}"))
        w.write("metrics.json", json_bytes(metrics))
    say(
        f"poison: {metrics['poisoned']}/{metrics['train']} training images poisoned ({cfg.attack.name}, {cfg.attack.mode}), "
        f"{metrics['defense']}+{metrics['holdout']} clean defense/holdout images -> {out}"
    )
    return metrics
