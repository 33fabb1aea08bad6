"""Thin stages: read files -> call the pure core -> write files atomically."""

from __future__ import annotations

from pathlib import Path

__all__ = ["STAGES", "run_all"]

STAGES = ("poison", "train", "unlearn", "recover", "prune")


def run_all(cfg, root: Path) -> dict[str, dict]:
    """Run the five stages in-process into root/<stage>/ (what `dvc repro` runs, without DVC); returns each stage's metrics."""
    from . import poison, prune, recover, train, unlearn

    d = {s: Path(root) / s for s in STAGES}
    return {
        "poison": poison.run(cfg, d["poison"]),
        "train": train.run(cfg, d["poison"], d["train"]),
        "unlearn": unlearn.run(cfg, d["poison"], d["train"], d["unlearn"]),
        "recover": recover.run(cfg, d["poison"], d["unlearn"], d["recover"]),
        "prune": prune.run(cfg, d["poison"], d["train"], d["recover"], d["prune"]),
    }
