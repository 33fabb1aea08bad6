"""Auto-threshold quality: the clean-only choice beside the oracle's, across attacks and architectures.

    python -m benchmarks.autothreshold                   # run missing cells, score, rewrite the table in docs/autothreshold.md
    python -m benchmarks.autothreshold --archs small_cnn --attacks badnets blend --seeds 0 1 2 --no-readme

A cell is (data set x architecture, attack, seed). It runs the five stages of
`dvc repro` once and keeps its pruning curve (held-out clean accuracy, CA and
ASR at every threshold) in benchmarks/results/curves/. Selection only reads the
held-out column and the unpruned model's held-out accuracy, so every rule is
scored on the saved curves in milliseconds; rerunning a cell is only needed when
the stages change (delete its curve file).

A cell is a **hit** when the automatic choice has ASR <= 5 % and a CA within 2
points of the oracle's (the best test CA among sweep points with ASR <= 5 %).
Cells are listed but not scored when the backdoor was not learnt (ASR before
< 90 %) or when no threshold removes it (ASR <= 5 %) and keeps at least half the
clean accuracy: there the masks failed, and no selection rule can help.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import tempfile
import time
from pathlib import Path

import torch
import yaml

from rnp.config import config_from_dict, with_overrides
from rnp.defense.prune import select_auto
from rnp.stages import run_all

from .common import write_marked

ROOT = Path(__file__).resolve().parents[1]
CURVES = ROOT / "benchmarks" / "results" / "curves"
SUMMARY = ROOT / "benchmarks" / "results" / "autothreshold.csv"

# name -> overrides. The digits32 (CIFAR geometry) cells use the reference's unlearn/recover
# rates, 12 epochs and bf16 (3x on an AMX CPU); small_cnn is params.yaml as it stands.
DIGITS32 = {"data.dataset": "digits32", "train.epochs": 12, "precision": "bf16", "attack.badnets.size": 3,
            "attack.trojan.size": 5, "unlearn.lr": 0.01, "recover.lr": 0.2}
SETTINGS = {
    "small_cnn": {},
    "resnet18": {**DIGITS32, "model.arch": "resnet18"},
    "wrn16_1": {**DIGITS32, "model.arch": "wrn16_1"},
    "mobilenet_v2": {**DIGITS32, "model.arch": "mobilenet_v2"},
}
PER_ATTACK = {"sig": {"attack.rate": 0.08}, "lc": {"attack.rate": 0.08}}
ATTACKS = ["badnets", "blend", "trojan", "sig", "wanet", "lc", "iad", "adaptive_blend"]
MAX_ASR, CA_SLACK = 0.05, 0.02


def curve_path(arch: str, attack: str, seed: int) -> Path:
    return CURVES / f"{arch}-{attack}{f'-seed{seed}' if seed else ''}.csv"


def run_cell(arch: str, attack: str, seed: int, params: dict) -> Path:
    """Run the five stages for one cell and save its curve with the unpruned model's figures as a header row."""
    path = curve_path(arch, attack, seed)
    cfg = config_from_dict(with_overrides(params, {**SETTINGS[arch], **PER_ATTACK.get(attack, {}), "attack.name": attack, "seed": seed}))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        m = run_all(cfg, Path(tmp))
        rows = list(csv.DictReader((Path(tmp) / "prune" / "curve.csv").open()))
    p = m["prune"]
    before = {"point": "before", "threshold": -1, "pruned": 0, "holdout_acc": p["holdout_acc_before"], "ca": p["ca_before"],
              "asr": p["asr_before"], "ra": p["ra_before"], "holdout_n": p["holdout_size"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(before), extrasaction="ignore")
        w.writeheader()
        w.writerows([before, *rows])
    print(f"{path.stem}: {time.perf_counter() - start:.0f} s", flush=True)
    return path


def read_curve(path: Path) -> tuple[dict, list[dict]]:
    rows = [{k: float(v) if v not in ("", "before") else v for k, v in r.items()} for r in csv.DictReader(path.open())]
    return rows[0], rows[1:]


def oracle(curve: list[dict]) -> dict | None:
    ok = [r for r in curve if r["asr"] <= MAX_ASR]
    return max(ok, key=lambda r: r["ca"]) if ok else None


def score(before: dict, curve: list[dict], budget: tuple[float, float]) -> dict:
    """The automatic choice (or the unpruned model), the oracle, and whether the choice is a hit."""
    i = select_auto([r["holdout_acc"] for r in curve], before["holdout_acc"], *budget)
    chosen = curve[i] if i is not None else before
    best = oracle(curve)
    hit = best is not None and chosen["asr"] <= MAX_ASR and chosen["ca"] >= best["ca"] - CA_SLACK - 1e-9
    usable = best is not None and best["ca"] >= before["ca"] / 2  # else no threshold removes the backdoor and keeps a usable model
    return {"chosen": chosen, "oracle": best, "hit": hit, "learnt": before["asr"] >= 0.9, "usable": usable}


def markdown(rows: list[tuple[str, dict, dict]]) -> str:
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    lines = ["| cell | before: CA / ASR | auto t | auto: CA / ASR | oracle t | oracle: CA / ASR | hit |", "|---|---:|---:|---:|---:|---:|:---:|"]
    for name, before, s in rows:
        c, o = s["chosen"], s["oracle"]
        t = "none" if c["threshold"] < 0 else f"{c['threshold']:.2f}"
        ocell = f"{o['threshold']:.2f} | {pct(o['ca'])} / {pct(o['asr'])}" if o else "— | —"
        hit = ("not learnt" if not s["learnt"] else "no point ≤ 5 %" if o is None else "oracle unusable" if not s["usable"]
               else "yes" if s["hit"] else "**no**")
        lines.append(f"| {name} | {pct(before['ca'])} / {pct(before['asr'])} | {t} | {pct(c['ca'])} / {pct(c['asr'])} | {ocell} | {hit} |")
    learnt = [s for _, _, s in rows if s["learnt"]]
    scorable = [s for s in learnt if s["usable"]]
    lines.append(f"\n**{sum(s['hit'] for s in scorable)} of {len(scorable)}** scored cells are hits. Scored: the backdoor was learnt, and some "
                 f"threshold brings ASR to 5 % or less while keeping at least half the clean accuracy; "
                 f"{len(learnt) - len(scorable)} of the {len(learnt)} learnt cells have no such threshold.")
    return "\n".join(lines)


def budget_line(curves: list[tuple[dict, list[dict]]], max_first_drop: float) -> str:
    """Hits and worst remaining ASR over the scored cells, for a few values of prune.max_clean_drop."""
    parts = []
    for budget in (0.01, 0.02, 0.03):
        scored = [s for s in (score(b, c, (budget, max_first_drop)) for b, c in curves) if s["learnt"] and s["usable"]]
        if scored:
            worst = max(s["chosen"]["asr"] for s in scored)
            parts.append(f"{budget:g}: {sum(s['hit'] for s in scored)}/{len(scored)} hits, worst ASR {100 * worst:.1f} %")
    return "By `prune.max_clean_drop` (scored cells): " + "; ".join(parts) + "."


def main(argv: list[str] | None = None) -> list[tuple[str, dict, dict]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--attacks", nargs="+", default=ATTACKS, choices=ATTACKS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--rerun", action="store_true", help="rerun cells whose curve is saved")
    ap.add_argument("--score-only", action="store_true", help="score the saved curves; skip cells that have none")
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args(argv)
    params = yaml.safe_load(args.params.read_text())
    cfg = config_from_dict(params)
    rows, curves = [], []
    for arch, attack, seed in itertools.product(args.archs, args.attacks, args.seeds):
        path = curve_path(arch, attack, seed)
        if args.score_only and not path.exists():
            continue
        if args.rerun or not path.exists():
            run_cell(arch, attack, seed, params)
        before, curve = read_curve(path)
        curves.append((before, curve))
        budget = (cfg.prune.max_clean_drop, cfg.prune.max_first_drop)
        rows.append((f"{arch} × {attack}" + (f", seed {seed}" if seed else ""), before, score(before, curve, budget)))
    table = markdown(rows) + "\n\n" + budget_line(curves, cfg.prune.max_first_drop)
    print(table)
    SUMMARY.parent.mkdir(parents=True, exist_ok=True)
    with SUMMARY.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["cell", "auto_threshold", "auto_ca", "auto_asr", "oracle_threshold", "oracle_ca", "oracle_asr", "hit", "learnt"])
        for name, _, s in rows:
            o = s["oracle"] or {"threshold": "", "ca": "", "asr": ""}
            c = s["chosen"]
            w.writerow([name, c["threshold"], c["ca"], c["asr"], o["threshold"], o["ca"], o["asr"], s["hit"], s["learnt"]])
    if not args.no_readme:
        write_marked(table, ROOT / "docs" / "autothreshold.md", "autothreshold")
    return rows


if __name__ == "__main__":
    torch.set_num_threads(torch.get_num_threads())
    main()
