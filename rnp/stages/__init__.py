"""Thin stages: read files -> call the pure core -> write files atomically.

STAGES is the one list of the pipeline's stages: each stage module's `run(cfg, *inputs, out)`
takes the output folders of the stages named in its `inputs`, in that order.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["STAGES", "Stage", "run_stage", "run_all"]


@dataclass(frozen=True)
class Stage:
    name: str
    inputs: tuple[str, ...]  # upstream stages whose output folders `run` reads
    help: str


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("poison", (), "poison a data set and draw the clean defense data"),
        Stage("train", ("poison",), "train the backdoored model"),
        Stage("unlearn", ("poison", "train"), "unlearn: gradient ascent on clean defense data"),
        Stage("recover", ("poison", "unlearn"), "recover: learn BN channel masks on the unlearned model"),
        Stage("prune", ("poison", "train", "recover"), "prune the original model by mask value, choose a point, export"),
    )
}


def run_stage(name: str, cfg, dirs: dict[str, Path], out: Path) -> dict:
    """Run one stage on its inputs' folders (dirs[input]); returns its metrics."""
    module = importlib.import_module(f"{__name__}.{name}")
    return module.run(cfg, *(Path(dirs[i]) for i in STAGES[name].inputs), Path(out))


def run_all(cfg, root: Path) -> dict[str, dict]:
    """Run the five stages in-process into root/<stage>/ (what `dvc repro` runs, without DVC); returns each stage's metrics."""
    dirs = {s: Path(root) / s for s in STAGES}
    return {s: run_stage(s, cfg, dirs, dirs[s]) for s in STAGES}
