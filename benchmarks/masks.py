"""What the masks say: the share of masks recovery sets to 0, against what the defense then achieved, over every saved
quality cell (benchmarks/results/quality/). It is the evidence for rnp's zero-mask warning (rnp.defense.recover.ZERO_MASKS_WARN).

    python -m benchmarks.masks             # rewrite the table in docs/quality.md and docs/img/zero_masks.png
    python -m benchmarks.masks --no-doc    # print the table only

Pruning every zero mask is the sweep's first point (t = 0), so a cell's zero-mask share is its curve's first `pruned`
over the architecture's masked channels; the cost is the test CA lost there. Reads saved cells only: runs in seconds.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import yaml

from rnp.defense import bn_layers
from rnp.defense.recover import ZERO_MASKS_WARN
from rnp.io import atomic_write_bytes, read_json
from rnp.models import ModelSpec, create_model

from .common import scatter_png, write_marked
from .quality import CLEAN, DOC, RESULTS, ROOT, cell_config, score

PLOT = ROOT / "docs" / "img" / "zero_masks.png"


def channels(arch: str) -> int:
    """The masked (BatchNorm) channels of a Fashion-MNIST model of `arch`."""
    model = create_model(ModelSpec(arch, 10, (1, 32, 32), (0.0,), (1.0,)))
    return sum(bn.num_features for bn in bn_layers(model).values())


def setting(path: Path, results: Path) -> str:
    """'reference' for the benchmark's own cells, else the training regime's folder and any other defense."""
    parts = path.relative_to(results).parts[:-1]
    return " · ".join(p for p in parts if p != "reference") or "reference"


def rows(results: Path = RESULTS) -> list[dict]:
    """One row per saved cell trained on the full data: setting, cell, zero-mask share, CA cost at t = 0, verdicts."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    sizes: dict[str, int] = {}
    out = []
    for path in sorted(results.rglob("*.json")):
        cell = read_json(path)
        if "curve" not in cell or "data.root" in (cell.get("settings") or {}):
            continue
        first = cell["curve"][0]
        assert first["threshold"] == 0, f"{path}: the sweep does not start at t = 0"
        n = sizes.setdefault(cell["arch"], channels(cell["arch"]))
        cfg = cell_config(params, cell["arch"], cell["attack"], cell["seed"], cell["defense"], cell.get("settings"))
        s = score(cell, cfg.prune)
        out.append({
            "setting": setting(path, results), "arch": cell["arch"], "attack": cell["attack"], "seed": cell["seed"],
            "zero_share": first["pruned"] / n, "ca_cost_t0": cell["before"]["ca"] - first["ca"],
            "backdoored": cell["attack"] != CLEAN, "learnt": s["learnt"], "clean_after": s["clean_after"], "oracle_clean": s["oracle_clean"],
        })
    return out


def _span(values: list[float], scale: float = 100) -> str:
    if len(values) == 1:
        return f"{scale * values[0]:.1f}"
    return f"{scale * min(values):.1f}–{scale * max(values):.1f} (median {scale * statistics.median(values):.1f})"


def table(data: list[dict]) -> str:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in data:
        groups.setdefault((r["setting"], r["arch"]), []).append(r)
    lines = ["| setting | architecture | cells | masks at 0, % | CA lost at t = 0, points | learnt backdoors clean after (auto) "
             "| a threshold could (oracle) |", "|---|---|---:|---:|---:|---:|---:|"]
    for (name, arch), g in sorted(groups.items(), key=lambda kv: statistics.median(r["zero_share"] for r in kv[1])):
        learnt = [r for r in g if r["learnt"]]
        lines.append(f"| {name} | {arch} | {len(g)} | {_span([r['zero_share'] for r in g])} | {_span([r['ca_cost_t0'] for r in g])} | "
                     f"{sum(r['clean_after'] for r in learnt)} of {len(learnt)} | {sum(r['oracle_clean'] for r in learnt)} of {len(learnt)} |")
    return "\n".join(lines) + "\n\n" + summary(data)


def summary(data: list[dict]) -> str:
    below = [r for r in data if r["zero_share"] <= ZERO_MASKS_WARN]
    above = [r for r in data if r["zero_share"] > ZERO_MASKS_WARN]

    def clean(rs):
        learnt = [r for r in rs if r["learnt"]]
        possible = sum(r["oracle_clean"] for r in learnt)
        return f"{sum(r['clean_after'] for r in learnt)} of {len(learnt)} learnt backdoors clean after, {possible} possible"

    return (f"**Summary.** {len(data)} cells. At most {ZERO_MASKS_WARN:.1%} of masks at 0 (no warning): {len(below)}, "
            f"{clean(below)}. Above it (the warning): {len(above)}, {clean(above)}; t = 0 alone costs "
            f"{_span([r['ca_cost_t0'] for r in above]) if above else '—'} points of CA there.")


def plot(data: list[dict]) -> bytes:
    kinds = {"clean after (auto)": lambda r: r["learnt"] and r["clean_after"],
             "a threshold could (oracle)": lambda r: r["learnt"] and r["oracle_clean"] and not r["clean_after"],
             "backdoor, none could": lambda r: r["learnt"] and not r["oracle_clean"], "clean model or not learnt": lambda r: not r["learnt"]}
    series = {k: [(100 * r["zero_share"], 100 * r["ca_cost_t0"]) for r in data if f(r)] for k, f in kinds.items()}
    title = "Recovery's zero masks and what pruning them costs (Fashion-MNIST cells; dashed: the warning)"
    return scatter_png(series, "masks recovery set to 0, % (log)", "test CA lost pruning them (t = 0), points", title,
                       vline=100 * ZERO_MASKS_WARN, logx=[0.5, 1, 2, 5, 10, 20, 50])


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--no-doc", action="store_true", help="print the table, leave the docs alone")
    args = ap.parse_args(argv)
    data = rows(args.results)
    text = table(data)
    print(text)
    if not args.no_doc:
        write_marked(text, DOC, "masks")
        atomic_write_bytes(PLOT, plot(data))
    return text


if __name__ == "__main__":
    main()
