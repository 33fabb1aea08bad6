"""Detection rules for `rnp defend`, screened on every model of the quality benchmark.

    python -m benchmarks.detection_trace               # trace every cached model, then the table
    python -m benchmarks.detection_trace --table-only

`rnp defend` calls a model backdoored when unlearning collapses it and the collapsed
model sends >= 25 % of other classes' clean images to one class. On Fashion-MNIST that
rule flags every clean model: unlearning a clean model also collapses it onto one class
(a "natural sink", e.g. Shirt, which absorbs T-shirts, pullovers and coats). This script
reruns only the unlearning of each model `benchmarks.quality` cached (backdoored and
clean), with the same params and seed as the benchmark, and saves, epoch by epoch, the
confusion matrix of the unlearned model on the 600 clean defense images (predictions
with batch statistics, as `detect_target` makes them). Candidate rules are scored
offline from those traces. Rules are designed on seeds 0 and 1; seed 2 is reported
apart as the check. Traces go to benchmarks/results/detection_trace/<cell>.json.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from rnp.compute import resolve_compute
from rnp.data import DeviceData, ImageSet
from rnp.datafiles import load_imageset
from rnp.defense import unlearn_step
from rnp.defense.detection import COLLAPSED, DETECTION_THRESHOLD, EMERGE_LEAD, EMERGE_LEVEL, emerged_alone, probe_predictions
from rnp.io import atomic_write_bytes, json_bytes, read_json
from rnp.models import load_model

from .common import write_marked
from .levers import add_model_options, cached_models
from .quality import ATTACKS, CLEAN, cell_config, cell_name
from .quality import LEVERS_DOC as DOC
from .quality import RESULTS as QUALITY_RESULTS

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "detection_trace"
CHECK_SEEDS = {2}  # held back while the rules were designed


def confusion(model: nn.Module, data: DeviceData, num_classes: int) -> list[list[int]]:
    """Rows: true class, columns: predicted class; the predictions detect_target reads (batch statistics)."""
    preds = probe_predictions(model, data)
    counts = torch.bincount(data.labels * num_classes + preds, minlength=num_classes * num_classes)
    return counts.view(num_classes, num_classes).tolist()


def trace_model(params: dict, arch: str, attack: str, seed: int, work: Path, out: Path = RESULTS, device: str = "cpu",
                settings: dict | None = None) -> dict:
    """Unlearn the cached model as its quality cell did (`settings`: the cell's overrides, e.g. the regime's augmentation)."""
    cfg = cell_config(params, arch, attack, seed, "reference", {**(settings or {}), "device": device})
    top = work / attack / f"seed{seed}"
    fit_set, info, _ = load_imageset(top / "poison" / "defense.safetensors")
    held_set, _, _ = load_imageset(top / "poison" / "holdout.safetensors")
    model, _, _ = load_model(top / arch / "train" / "model.safetensors")
    compute = resolve_compute(cfg.device, cfg.precision)
    fit = DeviceData(fit_set, info.mean, info.std, compute)
    every = DeviceData(ImageSet(torch.cat([fit_set.images, held_set.images]), torch.cat([fit_set.labels, held_set.labels])),
                       info.mean, info.std, compute)
    original = compute.place(model).eval()
    start = time.perf_counter()
    trace = [{"epoch": 0, "acc": None, "confusion": confusion(original, every, info.num_classes)}]

    def on_epoch(epoch, stats, m) -> None:
        trace.append({"epoch": epoch, "acc": stats.acc, "confusion": confusion(m, every, info.num_classes)})

    torch.manual_seed(cfg.seed)
    unlearn_step(original, fit, every, cfg, info.num_classes, on_epoch)
    result = {"arch": arch, "attack": attack, "seed": seed, "target": cfg.attack.target, "trace": trace,
              "seconds": round(time.perf_counter() - start, 1), "threads": torch.get_num_threads()}
    atomic_write_bytes(out / f"{cell_name(arch, attack, seed)}.json", json_bytes(result))
    return result


# ---- candidate rules: each maps a trace to (backdoored?, suspected class) ----

def confusion_scores(conf: list[list[int]]) -> list[float]:
    """Per class c: the share of other classes' images predicted c (detect_target's scores)."""
    n = len(conf)
    totals = [sum(row) for row in conf]
    return [sum(conf[r][c] for r in range(n) if r != c) / max(1, sum(totals) - totals[c]) for c in range(n)]


def breadth(conf: list[list[int]], c: int, share: float) -> int:
    """How many other classes send at least `share` of their images to class c."""
    return sum(conf[r][c] >= share * sum(conf[r]) for r in range(len(conf)) if r != c)


def top(scores: list[float]) -> int:
    return max(range(len(scores)), key=lambda c: scores[c])


def collapsed(trace: list[dict]) -> bool:
    return trace[-1]["acc"] is not None and trace[-1]["acc"] <= COLLAPSED


def rule_current(trace: list[dict]) -> tuple[bool, int]:
    scores = confusion_scores(trace[-1]["confusion"])
    c = top(scores)
    return collapsed(trace) and scores[c] >= DETECTION_THRESHOLD, c


def rule_consistent(trace: list[dict]) -> tuple[bool, int]:
    flag, c = rule_current(trace)
    return flag and all(top(confusion_scores(t["confusion"])) == c for t in trace[1:]), c


def rule_breadth(share: float, need: int) -> Callable[[list[dict]], tuple[bool, int]]:
    def rule(trace: list[dict]) -> tuple[bool, int]:
        conf = trace[-1]["confusion"]
        scores = confusion_scores(conf)
        c = max(range(len(conf)), key=lambda k: (breadth(conf, k, share), scores[k]))
        return collapsed(trace) and breadth(conf, c, share) >= need, c
    return rule


def rule_first(threshold: float) -> Callable[[list[dict]], tuple[bool, int]]:
    """The class leading after the first unlearning epoch, and its share then: how fast the images go there."""
    def rule(trace: list[dict]) -> tuple[bool, int]:
        scores = confusion_scores(trace[1]["confusion"]) if len(trace) > 1 else [0.0]
        c = top(scores)
        return collapsed(trace) and scores[c] >= threshold, c
    return rule


def rule_emergent(level: float, lead: float) -> Callable[[list[dict]], tuple[bool, int]]:
    """The current rule, and the final class led alone when the collapse began (rnp.defense.emerged_alone)."""
    def rule(trace: list[dict]) -> tuple[bool, int]:
        flag, c = rule_current(trace)
        return flag and emerged_alone([confusion_scores(t["confusion"]) for t in trace[1:]], c, level, lead), c
    return rule


RULES: dict[str, Callable[[list[dict]], tuple[bool, int]]] = {
    "current (≥ 25 % to one class)": rule_current,
    "consistent (same leader every epoch)": rule_consistent,
    **{f"breadth ≥ {need} classes send ≥ {share:.0%}": rule_breadth(share, need) for share in (0.3, 0.5) for need in (6, 8)},
    **{f"first epoch ≥ {t:.0%} to one class": rule_first(t) for t in (0.1, 0.2, 0.3)},
    **{f"emergent: first ≥ {level:.0%} alone, ≥ {lead:g}× the runner-up"
       + (" (`--detection emergent`)" if (level, lead) == (EMERGE_LEVEL, EMERGE_LEAD) else ""): rule_emergent(level, lead)
       for level in (0.1, 0.15) for lead in (1.5, 2, 3)},
}


def rules_table(rs: list[dict]) -> str:
    groups = {"seeds 0–1 (design)": [r for r in rs if r["seed"] not in CHECK_SEEDS],
              "seed 2 (check)": [r for r in rs if r["seed"] in CHECK_SEEDS]}
    head = "| rule | " + " | ".join(f"{g}: flagged | target named | false alarms" for g in groups) + " |"
    lines = [head, "|---|" + "---:|" * (3 * len(groups))]
    for name, rule in RULES.items():
        cells = []
        for members in groups.values():
            verdicts = [(r, rule(r["trace"])) for r in members]
            bd = [(r, v) for r, v in verdicts if r["attack"] != CLEAN]
            clean = [v for r, v in verdicts if r["attack"] == CLEAN]
            named = sum(flag and c == r["target"] for r, (flag, c) in bd)
            flagged = sum(flag for _, (flag, _) in bd)
            cells += [f"{flagged} / {len(bd)}", f"{named} / {len(bd)}", f"{sum(flag for flag, _ in clean)} / {len(clean)}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def leads_some_epoch(r: dict) -> bool:
    """Whether the attack's target is the leading class after some unlearning epoch (test knowledge: the target)."""
    epochs = [confusion_scores(t["confusion"]) for t in r["trace"][1:]]
    return any(max(scores) > 0 and top(scores) == r["target"] for scores in epochs)


def ceiling_line(rs: list[dict]) -> str:
    """How many targets any rule that names an epoch's leading class could name at best, per attack."""
    leads = [(r["attack"], leads_some_epoch(r)) for r in rs if r["attack"] != CLEAN]
    per = ", ".join(f"{a} {sum(hit for b, hit in leads if b == a)}/{sum(b == a for b, _ in leads)}"
                    for a in ATTACKS if any(b == a for b, _ in leads))
    return (f"**Ceiling.** The target leads the unlearned model's predictions after some epoch on "
            f"**{sum(hit for _, hit in leads)} of {len(leads)}** backdoored models ({per}); a rule that names "
            "an epoch's leading class can name no more.")


def main(argv: list[str] | None = None) -> str:
    import yaml

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(ap)
    ap.add_argument("--results", type=Path, default=QUALITY_RESULTS, help="the quality cells that say which models to trace")
    ap.add_argument("--out", type=Path, default=RESULTS, help=f"where traces go (default {RESULTS.relative_to(ROOT)})")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the GPU check traces the ResNet-18 models it trains)")
    args = ap.parse_args(argv)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    if not args.table_only:
        for arch, attack, seed in cached_models(args.work, args.archs, args.attacks, args.seeds, args.results):
            if not (args.out / f"{cell_name(arch, attack, seed)}.json").exists():
                settings = read_json(args.results / "reference" / f"{cell_name(arch, attack, seed)}.json").get("settings")
                r = trace_model(params, arch, attack, seed, args.work, args.out, args.device, settings)
                print(f"{cell_name(arch, attack, seed)}: {len(r['trace']) - 1} epochs, {r['seconds']:.0f} s", flush=True)
    rs = [read_json(p) for p in sorted(args.out.glob("*.json"))]
    text = rules_table(rs) + "\n\n" + ceiling_line(rs)
    print(text)
    if not args.no_doc:
        write_marked(text, DOC, "detection_trace")
    return text


if __name__ == "__main__":
    main()
