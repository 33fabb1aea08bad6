"""RNP against its baselines in seconds: the same model, the same clean images, one run, through `rnp.defend`.

    python -m benchmarks.defense_speed                                  # the committed digits run (data/poison, data/train)
    python -m benchmarks.defense_speed --poison DIR --train DIR --params P --json out.json --no-doc

RNP unlearns until the clean accuracy collapses (a few epochs of a few steps) and recovers its masks for
recover.epochs; ANP's reference runs 2,000 mask updates, each a perturbation step and a clean and a
perturbed pass; FT trains every weight for ft.epochs. Each defense runs once, in the order given, then RNP
again: the two RNP timings bound the drift of the machine during the run (another process, a warm cache).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from rnp.compute import resolve_compute
from rnp.config import load_config
from rnp.defense import DefendOptions, defend
from rnp.io import atomic_write_bytes, json_bytes
from rnp.models import load_model
from rnp.stages.baseline import stage_clean_data

from .common import cpu_name, write_marked

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "speed.md"


def steps(report, cfg, n_fit: int) -> str:
    """The optimisation work each defense did, in batches through the model."""
    per_epoch = lambda batch: -(-n_fit // batch)  # noqa: E731
    if report.defense == "rnp":
        return (f"{report.unlearn_epochs} unlearn epochs × {per_epoch(cfg.unlearn.batch_size)} steps + "
                f"{cfg.recover.epochs} recover epochs × {per_epoch(cfg.recover.batch_size)} steps")
    if report.defense == "anp":
        return f"{cfg.anp.iterations} iterations × {cfg.anp.steps + 1} backward passes"
    return f"{cfg.ft.epochs} epochs × {per_epoch(cfg.ft.batch_size)} steps"


def measure(poison: Path, train: Path, params: Path, device: str, precision: str, order: list[str]) -> dict:
    cfg = load_config(params)
    compute = resolve_compute(device, precision)
    model, spec, _ = load_model(train / "model.safetensors")
    clean = stage_clean_data(poison, cfg)
    runs = []
    for name in [*order, order[0]]:
        start = time.perf_counter()
        _, report = defend(model, clean, DefendOptions(cfg, compute, min_accuracy=0.0), name)
        seconds = time.perf_counter() - start
        runs.append({"defense": name, "seconds": round(seconds, 2), "work": steps(report, cfg, report.clean_images["fit"]),
                     "holdout_acc_after": report.holdout_acc_after, "pruned": report.pruned})
        print(f"{name}: {seconds:.1f} s ({runs[-1]['work']})", flush=True)
    return {"arch": spec.arch, "dataset": cfg.data.dataset, "clean_images": report.clean_images, "device": str(compute.device),
            "bf16": compute.bf16, "threads": torch.get_num_threads(), "cpu": cpu_name(), "runs": runs}


def table(result: dict) -> str:
    runs = result["runs"]
    rnp = [r["seconds"] for r in runs if r["defense"] == "rnp"]
    base = min(rnp)
    lines = ["| defense | seconds | × RNP | work |", "|---|---:|---:|---|"]
    for r in runs[:-1]:
        lines.append(f"| {r['defense'].upper()} | {r['seconds']:.1f} | {r['seconds'] / base:.1f} | {r['work']} |")
    where = f"{result['device']}{' bf16' if result['bf16'] else ' fp32'}, {result['threads']} thread(s), {result['cpu']}"
    return "\n".join(lines) + (
        f"\n\n{result['arch']} on {result['dataset']}, {result['clean_images']['fit']} + {result['clean_images']['holdout']} clean images, "
        f"{where}. RNP ran first and last: {rnp[0]:.1f} s and {rnp[-1]:.1f} s (× RNP divides by the shorter).\n")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--poison", type=Path, default=ROOT / "data" / "poison")
    ap.add_argument("--train", type=Path, default=ROOT / "data" / "train")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--defenses", nargs="+", default=["rnp", "anp", "ft"])
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "defense_speed.json")
    ap.add_argument("--table-only", action="store_true", help="rewrite the docs table from --json; run nothing")
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args(argv)
    if args.table_only:
        result = json.loads(args.json.read_text())
    else:
        result = measure(args.poison, args.train, args.params, args.device, args.precision, args.defenses)
        atomic_write_bytes(args.json, json_bytes(result))
    text = table(result)
    print(text)
    if not args.no_doc:
        write_marked(text, DOC, "defense-speed")
    return result


if __name__ == "__main__":
    main()
