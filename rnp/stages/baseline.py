"""rnp baseline: another registered defense (ANP, plain fine-tuning) on the train stage's model and the poison stage's
clean images, measured as the prune stage measures RNP: the grid's defense axis and the quality benchmark run it.

    rnp baseline --defense anp --params params.yaml --poison data/poison --train data/train --out data/anp

The defense goes through `rnp.defend`, as `rnp defend --defense NAME` does, on the same clean images RNP's
stages use, placed so that its split holds out exactly the poison stage's held-out images: every defense
chooses on the same 1 %. A pruning defense's sweep is then measured on the test sets too, for the oracle.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from ..config import Config
from ..data import draw_split
from ..defense import DEFENSES, CleanData, DefendOptions, defend, prune_step
from ..defense.prune import oracle_point
from ..errors import RnpError
from ..io import StageWriter, csv_bytes, json_bytes
from ..metrics import accuracy, attack_metrics, der
from ..models import load_model, model_bytes
from ._runtime import load_imageset, progress, resolve_compute, say, seed_everything

__all__ = ["run", "stage_clean_data"]


def stage_clean_data(poison_dir: Path, cfg: Config) -> CleanData:
    """The poison stage's clean images (defense + holdout) as one CleanData, placed so that `rnp.defend`'s split
    (data.defense_holdout, data.defense_seed) holds out exactly holdout.safetensors and learns from defense.safetensors."""
    fit, info, _ = load_imageset(poison_dir / "defense.safetensors")
    held, _, _ = load_imageset(poison_dir / "holdout.safetensors")
    n = len(fit) + len(held)
    fit_at, held_at = draw_split(n, n, cfg.data.defense_holdout, cfg.data.defense_seed)
    if len(held_at) != len(held):
        raise RnpError(f"{poison_dir}: {len(held)} of {n} clean images held out, but data.defense_holdout "
                       f"{cfg.data.defense_holdout:g} holds out {len(held_at)} (made under other params: run the poison stage again)")
    images = torch.empty((n, *fit.images.shape[1:]), dtype=fit.images.dtype)
    labels = torch.empty(n, dtype=torch.long)
    images[fit_at], labels[fit_at] = fit.images, fit.labels.long()
    images[held_at], labels[held_at] = held.images, held.labels.long()
    return CleanData(images, labels, info.mean, info.std, info.num_classes)


def run(cfg: Config, poison_dir: Path, train_dir: Path, out: Path, defense: str) -> dict:
    DEFENSES.get(defense)  # an unknown name fails before any work
    if defense == "rnp":
        raise RnpError("--defense rnp is the pipeline's own unlearn, recover and prune stages (dvc repro); baseline runs the others")
    model, spec, _ = load_model(train_dir / "model.safetensors", hint=" (run the train stage first: dvc repro train)")
    clean = stage_clean_data(poison_dir, cfg)
    holdout_set, info, _ = load_imageset(poison_dir / "holdout.safetensors")
    test_set, _, _ = load_imageset(poison_dir / "test_clean.safetensors")
    trig_set, _, extra = load_imageset(poison_dir / "test_poison.safetensors", "targets")
    compute = resolve_compute(cfg.device, cfg.precision)
    holdout, test, triggered = (info.to_device(s, compute) for s in (holdout_set, test_set, trig_set))
    seed_everything(cfg.seed)

    start = time.perf_counter()
    # the pipeline's stages refuse no model either: a weak one is a result here, not a user's mistake
    purified, report = defend(model, clean, DefendOptions(cfg, compute, min_accuracy=0.0, progress=progress), defense)
    seconds = time.perf_counter() - start

    def measure(m: torch.nn.Module) -> dict:
        return {"holdout_acc": accuracy(m, holdout), "ca": accuracy(m, test), **attack_metrics(m, triggered, extra["targets"])}

    original = compute.place(model).eval()
    before, after = measure(original), measure(compute.place(purified).eval())
    rows = []
    if report.curve:  # the sweep the defense chose from, measured on the test sets as well: what the oracle reads
        swept = copy.deepcopy(original)
        rows = prune_step(swept, report.masks, report.mask_on, cfg, lambda: measure(swept), None,
                          progress=lambda it: progress(it, f"{defense} sweep")).curve
    oracle = rows[oracle_point(rows, cfg.prune.oracle_max_asr)] if rows else None
    metrics = {
        "defense": defense,
        "ca": after["ca"], "asr": after["asr"], "ra": after["ra"],
        "der": der(before["ca"], before["asr"], after["ca"], after["asr"]),
        "pruned": report.pruned, "threshold": report.threshold,
        "ca_before": before["ca"], "asr_before": before["asr"], "ra_before": before["ra"],
        "holdout_acc_before": before["holdout_acc"], "holdout_acc": after["holdout_acc"], "holdout_size": len(holdout_set),
        "oracle_threshold": oracle and oracle["threshold"], "oracle_pruned": oracle and oracle["pruned"],
        "oracle_ca": oracle and oracle["ca"], "oracle_asr": oracle and oracle["asr"],
        "seconds": round(seconds, 2),  # the defense alone (rnp.defend), not the test-set measurements
        "verdict": report.verdict,
        **{k: v for k, v in report.extra.items() if k != "seconds"},
    }
    with StageWriter(out) as w:
        w.write("model.safetensors", model_bytes(purified, spec, {"params": cfg.to_dict(), "stage": "baseline", "defense": defense}))
        if rows:
            w.write("curve.csv", csv_bytes(rows))
        w.write("metrics.json", json_bytes(metrics))
    say(f"baseline {defense}: {report.verdict}; CA {before['ca']:.1%} -> {after['ca']:.1%}, ASR {before['asr']:.1%} -> {after['asr']:.1%} "
        f"({seconds:.0f} s) -> {out}")
    return metrics
