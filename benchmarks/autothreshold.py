"""Auto-threshold quality: the clean-only choice beside the oracle's, across attacks and architectures.

    python -m benchmarks.autothreshold                   # run missing cells, score, rewrite the README table
    python -m benchmarks.autothreshold --archs small_cnn --attacks badnets blend --no-readme

A cell is (data set x architecture, attack), seed 0. It runs the five stages of
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
import tempfile
import time
from pathlib import Path

import torch
import yaml

from rnp.config import config_from_dict, with_overrides
from rnp.defense import select_auto
from rnp.stages import run_all

from .effectiveness import write_readme

ROOT = Path(__file__).resolve().parents[1]
CURVES = ROOT / "benchmarks" / "results" / "curves"
SUMMARY = ROOT / "benchmarks" / "results" / "autothreshold.csv"

# name -> overrides; digits32 runs ResNet-18 at the reference's unlearn/recover settings, in bf16 (3x on AMX)
SETTINGS = {
    "small_cnn": {},
    "resnet18": {"data.dataset": "digits32", "model.arch": "resnet18", "train.epochs": 12, "precision": "bf16",
                 "attack.badnets.size": 3, "attack.trojan.size": 5, "unlearn.lr": 0.01, "recover.lr": 0.2},
}
PER_ATTACK = {"sig": {"attack.rate": 0.08}, "lc": {"attack.rate": 0.08}}
ATTACKS = ["badnets", "blend", "trojan", "sig", "wanet", "lc", "iad", "adaptive_blend"]
MAX_ASR, CA_SLACK = 0.05, 0.02


def run_cell(arch: str, attack: str, params: dict) -> Path:
    """Run the five stages for one cell and save its curve with the unpruned model's figures as a header row."""
    path = CURVES / f"{arch}-{attack}.csv"
    cfg = config_from_dict(with_overrides(params, {**SETTINGS[arch], **PER_ATTACK.get(attack, {}), "attack.name": attack}))
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
    print(f"{arch}-{attack}: {time.perf_counter() - start:.0f} s", flush=True)
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


def main(argv: list[str] | None = None) -> list[tuple[str, dict, dict]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--attacks", nargs="+", default=ATTACKS, choices=ATTACKS)
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--rerun", action="store_true", help="rerun cells whose curve is saved")
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args(argv)
    params = yaml.safe_load(args.params.read_text())
    cfg = config_from_dict(params)
    rows = []
    for arch in args.archs:
        for attack in args.attacks:
            path = CURVES / f"{arch}-{attack}.csv"
            if args.rerun or not path.exists():
                run_cell(arch, attack, params)
            before, curve = read_curve(path)
            rows.append((f"{arch} × {attack}", before, score(before, curve, (cfg.prune.max_clean_drop, cfg.prune.max_first_drop))))
    table = markdown(rows)
    print(table)
    SUMMARY.parent.mkdir(parents=True, exist_ok=True)
    with SUMMARY.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["cell", "auto_threshold", "auto_ca", "auto_asr", "oracle_threshold", "oracle_ca", "oracle_asr", "hit", "learnt"])
        for name, _, s in rows:
            o = s["oracle"] or {"threshold": "", "ca": "", "asr": ""}
            w.writerow([name, s["chosen"]["threshold"], s["chosen"]["ca"], s["chosen"]["asr"], o["threshold"], o["ca"], o["asr"], s["hit"], s["learnt"]])
    if not args.no_readme:
        write_readme(table, ROOT / "README.md", "autothreshold")
    return rows


if __name__ == "__main__":
    torch.set_num_threads(torch.get_num_threads())
    main()
