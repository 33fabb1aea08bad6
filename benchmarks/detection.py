"""Target-label detection and the automatic threshold of `rnp.defend`, on every attack and on clean models.

    python -m benchmarks.detection            # digits, small CNN, all attacks (all-to-one) + clean models

For each attack a backdoored model is trained (poison + train stages) with its
own target class; `rnp.defend` then sees only the clean defense images. Clean
models are trained on the same data with every poisoned image removed. Results
go to benchmarks/results/detection.csv and into docs/defend.md between the
`detection` markers.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import torch
import yaml

from rnp.attacks import list_attacks
from rnp.config import DetectionRule, choices, config_from_dict, with_overrides
from rnp.datafiles import load_imageset
from rnp.defense import CleanData, DefendOptions, defend
from rnp.metrics import accuracy, attack_metrics
from rnp.models import create_model, load_model
from rnp.stages import poison, train
from rnp.training import fit, seeded_generator

from .common import write_marked

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "detection.csv"
PER_ATTACK = {"sig": {"attack.rate": 0.08}, "lc": {"attack.rate": 0.08}}


def clean_model(cfg, poison_dir: Path):
    """The same architecture and schedule, trained without any poisoned or cover image."""
    data, info, extra = load_imageset(poison_dir / "train.safetensors", "poisoned", "cover")
    keep = ~(extra["poisoned"].bool() | extra["cover"].bool())
    torch.manual_seed(cfg.seed)
    model = create_model(info.model_spec(cfg.model.arch))
    fit(model, info.to_device(data.subset(keep.nonzero().flatten()), torch.device("cpu")), cfg.train, cfg.augment, seeded_generator(cfg.seed))
    return model.eval()


def evaluate(name: str, cfg, backdoored: bool, rule: str = "collapse") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        poison.run(cfg, root / "poison")
        if backdoored:
            train.run(cfg, root / "poison", root / "train")
            model, spec, _ = load_model(root / "train" / "model.safetensors")
        else:
            model = clean_model(cfg, root / "poison")
        defense, info, _ = load_imageset(root / "poison" / "defense.safetensors")
        holdout, _, _ = load_imageset(root / "poison" / "holdout.safetensors")
        test, _, _ = load_imageset(root / "poison" / "test_clean.safetensors")
        trig, _, extra = load_imageset(root / "poison" / "test_poison.safetensors", "targets")
        images, labels = torch.cat([defense.images, holdout.images]), torch.cat([defense.labels, holdout.labels])
        ruled = config_from_dict(with_overrides(cfg.to_dict(), {"unlearn.detection": rule}))
        purified, result = defend(model, CleanData(images, labels, info.mean, info.std, info.num_classes), DefendOptions(ruled))
        report = result.to_json()
        on = lambda s: info.to_device(s, torch.device("cpu"))  # noqa: E731
        before = {"ca": accuracy(model, on(test)), **attack_metrics(model, on(trig), extra["targets"])}
        after = {"ca": accuracy(purified, on(test)), **attack_metrics(purified, on(trig), extra["targets"])}
    return {
        "model": name if backdoored else f"clean (seed {cfg.seed})", "target": cfg.attack.target if backdoored else "",
        "flagged": report["backdoor_suspected"], "suspected": report["suspected_target"], "score": round(report["target_score"], 3),
        "hit": (report["backdoor_suspected"] and report["suspected_target"] == cfg.attack.target) if backdoored else not report["backdoor_suspected"],
        "ca_before": before["ca"], "asr_before": before["asr"] if backdoored else "", "ca_after": after["ca"],
        "asr_after": after["asr"] if backdoored else "", "pruned": report["pruned"], "threshold": report["threshold"],
        "self_check": report.get("backdoor_remains", ""),  # after pruning: "backdoor likely still present" (rnp checks its own work)
        "recheck_epochs": report.get("recheck_epochs", ""), "unlearn_epochs": report["unlearn_epochs"],
        "recheck_target": report.get("recheck_target", ""),
        # the share of other classes' images the purified model's unlearning sends to the class the original's sent most to
        "recheck_suspected_share": report["recheck_class_scores"][report["suspected_target"]] if "recheck_class_scores" in report else "",
    }


def markdown(rows: list[dict]) -> str:
    pct = lambda v: "" if v == "" else f"{100 * float(v):.1f}"  # noqa: E731
    lines = ["| model | target | verdict | suspected (score) | correct | CA before → after | ASR before → after | pruned | self-check |",
             "|---|---:|---|---:|---|---:|---:|---:|---|"]
    for r in rows:
        flagged = str(r["flagged"]) == "True"
        lines.append(
            f"| {r['model']} | {r['target']} | {'backdoor' if flagged else 'no evidence'} | {r['suspected']} ({float(r['score']):.2f}) | "
            f"{'yes' if str(r['hit']) == 'True' else '**no**'} | {pct(r['ca_before'])} → {pct(r['ca_after'])} | "
            f"{pct(r['asr_before'])} → {pct(r['asr_after'])} | {r['pruned']} | {check(r)} |"
        )
    backdoored = [r for r in rows if r["target"] != ""]
    clean = [r for r in rows if r["target"] == ""]
    hits = lambda rs: sum(str(r["hit"]) == "True" for r in rs)  # noqa: E731
    lines.append("")
    lines.append(f"Target found on {hits(backdoored)} of {len(backdoored)} backdoored models; "
                 f"\"no evidence\" on {hits(clean)} of {len(clean)} clean models. {self_check_summary(rows)}")
    return "\n".join(lines)


def check(r: dict) -> str:
    """The self-check's verdict after pruning, with the unlearning epochs before and after ('—': not run, nothing pruned)."""
    if str(r.get("self_check", "")) not in ("True", "False"):
        return "—"
    said = "still present" if str(r["self_check"]) == "True" else "removed"
    return f"{said} ({r['recheck_epochs']} vs {r['unlearn_epochs']} epochs)"


def self_check_summary(rows: list[dict]) -> str:
    """The self-check against the test sets: on pruned backdoored models, did it call the survivors and only them?"""
    checked = [r for r in rows if r["target"] != "" and str(r.get("self_check", "")) in ("True", "False")]
    survived = [r for r in checked if float(r["asr_after"]) > 0.05]
    removed = [r for r in checked if float(r["asr_after"]) <= 0.05]
    said = lambda rs: sum(str(r["self_check"]) == "True" for r in rs)  # noqa: E731
    return (f"Self-check after pruning (ASR > 5 % = the backdoor survived): \"still present\" on {said(survived)} of {len(survived)} "
            f"models whose backdoor survived, and on {said(removed)} of {len(removed)} whose backdoor was removed.")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--attacks", nargs="+", default=list_attacks(), choices=list_attacks())
    ap.add_argument("--clean-seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--detection", choices=choices(DetectionRule), default="collapse", help="rnp defend's detection rule")
    ap.add_argument("--csv", type=Path, help="default benchmarks/results/detection.csv (rule collapse), detection_<rule>.csv otherwise")
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args(argv)
    csv_path = args.csv or (RESULTS if args.detection == "collapse" else RESULTS.with_name(f"detection_{args.detection}.csv"))
    base = yaml.safe_load(args.params.read_text())
    rows = []
    for i, name in enumerate(args.attacks):
        target = (3 * i + 1) % 10  # a different target per attack: detection must find it, not assume 0
        cfg = config_from_dict(with_overrides(base, {**PER_ATTACK.get(name, {}), "attack.name": name, "attack.target": target}))
        rows.append(evaluate(name, cfg, backdoored=True, rule=args.detection))
        print(rows[-1], flush=True)
    for seed in args.clean_seeds:
        rows.append(evaluate("clean", config_from_dict(with_overrides(base, {"seed": seed})), backdoored=False, rule=args.detection))
        print(rows[-1], flush=True)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    table = markdown(rows)
    print(table)
    if not args.no_readme:
        write_marked(table, ROOT / "docs" / "defend.md", "detection" if args.detection == "collapse" else f"detection_{args.detection}")


if __name__ == "__main__":
    main()
