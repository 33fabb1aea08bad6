"""The Snakemake grid's logic, as plain functions the Snakefile calls and tests can check.

A grid config names data sets x attacks x architectures x seeds x defense
settings. Every cell's params are params.yaml plus dotted overrides, written
per level of the directory tree, so that upstream outputs are shared:

    results/<dataset>/<attack>/seed<seed>/poison/                    one per data set, attack and seed
    results/<dataset>/<attack>/seed<seed>/<arch>/train/              ... and architecture
    results/<dataset>/<attack>/seed<seed>/<arch>/<defense>/{unlearn,recover,prune}/
    results/<dataset>/<attack>/seed<seed>/<arch>/<defense>/baseline/     a setting with `defense: anp` or `ft`

A defense setting runs RNP's stages unless it names another registered defense (`defense: anp`),
which `rnp baseline` then runs on the same model and clean data: the grid's defense axis.
"""

from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import config_from_dict, with_overrides
from .errors import RnpError
from .io import read_json
from .stages import STAGES

__all__ = ["Cell", "cells", "check_grid", "level_params", "arch_slug", "summary_rows", "summary_markdown", "summary_png", "DEFENSE_KEY", "method"]

DEFENSE_KEY = "defense"  # in a defense setting: the registered defense it runs (default rnp); every other key is a params override


def arch_slug(arch: str) -> str:
    """A path-safe name: torchvision:resnet50 -> torchvision-resnet50."""
    return arch.replace(":", "-")


@dataclass(frozen=True)
class Cell:
    dataset: str
    attack: str
    seed: int
    arch: str
    defense: str  # the setting's name
    method: str = "rnp"  # the registered defense it runs

    @property
    def poison_dir(self) -> str:
        return f"{self.dataset}/{self.attack}/seed{self.seed}"

    @property
    def train_dir(self) -> str:
        return f"{self.poison_dir}/{arch_slug(self.arch)}"

    @property
    def defense_dir(self) -> str:
        return f"{self.train_dir}/{self.defense}"


def method(config: dict, setting: str) -> str:
    """The registered defense a named defense setting runs."""
    return str((config["defenses"][setting] or {}).get(DEFENSE_KEY, "rnp"))


def cells(config: dict) -> list[Cell]:
    return [Cell(d, a, s, m, name, method(config, name)) for d, a, s, m, name in itertools.product(
        config["datasets"], config["attacks"], config["seeds"], config["archs"], config["defenses"])]


def check_grid(config: dict) -> list[Cell]:
    """Everything a job would trip over, before any job runs: names, duplicates, every cell's params."""
    from .attacks import ATTACKS
    from .datasets import DATASETS
    from .defense import DEFENSES
    from .models import MODELS, OPEN_ENDED

    for key, registry in (("datasets", DATASETS), ("attacks", ATTACKS)):
        for name in config[key]:
            registry.get(name)
    for arch in config["archs"]:
        if not arch.startswith(OPEN_ENDED):
            MODELS.get(arch)
    for setting in config["defenses"]:
        DEFENSES.get(method(config, setting))
    for key in ("datasets", "attacks", "archs", "seeds"):
        seen = [arch_slug(str(v)) for v in config[key]]
        dup = next((v for v in seen if seen.count(v) > 1), None)
        if dup is not None:
            raise RnpError(f"{key} lists {dup} twice (every cell must be unique)")
    grid = cells(config)
    if not grid:
        raise RnpError("the grid is empty")
    base = yaml.safe_load(Path(config["params"]).read_text())
    for cell in grid:
        config_from_dict(level_params(base, config, cell, "defense"), source=f"grid cell {cell.defense_dir}")
    return grid


def level_params(base: dict, config: dict, cell: Cell, level: str) -> dict:
    """Params for one level (poison, train or defense) of a cell: base + fixed + per-name overrides + the cell's keys."""
    overrides: dict[str, Any] = dict(config.get("fixed", {}))
    overrides.update(config.get("dataset_overrides", {}).get(cell.dataset, {}))
    overrides.update(config.get("attack_overrides", {}).get(cell.attack, {}))
    overrides.update({"data.dataset": cell.dataset, "attack.name": cell.attack, "seed": cell.seed})
    if level in ("train", "defense"):
        overrides.update(config.get("arch_overrides", {}).get(cell.arch, {}))
        overrides["model.arch"] = cell.arch
    if level == "defense":
        overrides.update({k: v for k, v in (config["defenses"][cell.defense] or {}).items() if k != DEFENSE_KEY})
    return with_overrides(base, overrides)


def _seconds(benchmark_tsv: Path) -> float:
    with open(benchmark_tsv) as f:
        return round(float(next(csv.DictReader(f, delimiter="\t"))["s"]), 2)


def summary_rows(results: Path, grid: list[Cell], benchmarks: Path) -> list[dict]:
    """One row per cell: CA/ASR/RA before and after, thresholds, DER, stage seconds (a baseline's in defense_s alone)."""
    rows = []
    for c in grid:
        rnp = c.method == "rnp"
        p = read_json(results / c.defense_dir / ("prune" if rnp else "baseline") / "metrics.json")
        row = {
            "dataset": c.dataset, "attack": c.attack, "arch": c.arch, "seed": c.seed, "defense": c.defense, "method": c.method,
            "ca_before": p["ca_before"], "asr_before": p["asr_before"], "ra_before": p["ra_before"],
            "ca_after": p["ca"], "asr_after": p["asr"], "ra_after": p["ra"], "der": p["der"],
            "threshold": p["threshold"], "pruned": p["pruned"],
            "oracle_threshold": p["oracle_threshold"], "oracle_ca": p["oracle_ca"], "oracle_asr": p["oracle_asr"],
            "asr_bias_refit": p.get("asr_bias_refit"),  # the purified model with its class biases refitted (a check; RNP's stages)
            "unlearn_epochs": read_json(results / c.defense_dir / "unlearn" / "metrics.json")["epochs"] if rnp else None,
        }
        dirs = {"poison": c.poison_dir, "train": c.train_dir}
        for stage in STAGES:
            row[f"{stage}_s"] = _seconds(benchmarks / dirs.get(stage, c.defense_dir) / f"{stage}.tsv") if rnp or stage in dirs else None
        row["defense_s"] = (sum(row[f"{s}_s"] for s in ("unlearn", "recover", "prune")) if rnp
                            else _seconds(benchmarks / c.defense_dir / "baseline.tsv"))
        rows.append(row)
    return rows


def _threshold(t: float | None) -> str:
    return "none" if t is None else f"{t:.2f}"


def summary_markdown(rows: list[dict]) -> str:
    """The paper-style table: before / after RNP per cell, percentages."""
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    lines = [
        "| data set | attack | arch | seed | defense (method) | CA before | ASR before | CA after | ASR after | RA after | t | oracle t | DER "
        "| ASR, class biases refitted | defense s |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['attack']} | {r['arch']} | {r['seed']} | {r['defense']} ({r['method']}) | {pct(r['ca_before'])} | "
            f"{pct(r['asr_before'])} | {pct(r['ca_after'])} | {pct(r['asr_after'])} | {pct(r['ra_after'])} | "
            f"{_threshold(r['threshold'])} | {_threshold(r['oracle_threshold'])} | {r['der']:.3f} | "
            f"{'—' if r['asr_bias_refit'] is None else pct(r['asr_bias_refit'])} | {r['defense_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def summary_png(rows: list[dict]) -> bytes:
    """ASR and CA before and after each defense (method), averaged per attack (over data sets, archs, seeds, settings)."""
    from .plots import bars_png

    attacks = sorted({r["attack"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))

    def mean(key: str, attack: str, method: str | None = None) -> float:
        chosen = [r[key] for r in rows if r["attack"] == attack and method in (None, r["method"])]
        return 100 * sum(chosen) / len(chosen)

    series = {"CA before": [mean("ca_before", a) for a in attacks]}
    series |= {f"CA after {m.upper()}": [mean("ca_after", a, m) for a in attacks] for m in methods}
    series["ASR before"] = [mean("asr_before", a) for a in attacks]
    series |= {f"ASR after {m.upper()}": [mean("asr_after", a, m) for a in attacks] for m in methods}
    return bars_png(attacks, series, f"Per attack: clean accuracy and attack success before and after {', '.join(m.upper() for m in methods)} (%)")
