"""prune: original backdoored model + masks -> pruning sweep, chosen point, purified model."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..config import Config
from ..defense import PrunePoint, mask_layers, oracle_point, prune_at, select_auto, sweep_curve, sweep_points
from ..errors import RnpError
from ..io import StageWriter, csv_bytes, json_bytes, load_tensors
from ..metrics import accuracy, attack_metrics, der
from ..models import load_model, model_bytes
from ..plots import curve_png, masks_png
from ._common import load_imageset, progress, resolve_compute, say

__all__ = ["run", "load_masks"]


def load_masks(path: Path, model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.nn.Module]]:
    """Masks in model order, and the layers they belong to (BN unless the recover stage masked another kind)."""
    masks, meta = load_tensors(path, hint=" (run the recover stage first: dvc repro recover)")
    layers = mask_layers(model, str(meta.get("mask_on", "bn")))
    if set(masks) != set(layers):
        diff = sorted(set(masks) ^ set(layers))
        raise RnpError(f"{path}: masks do not match the model's masked layers (e.g. {diff[0]})")
    for name, layer in layers.items():
        if masks[name].shape != (layer.weight.shape[0],):
            raise RnpError(f"{path}: mask {name} has shape {tuple(masks[name].shape)}, layer has {layer.weight.shape[0]} channels")
    return {name: masks[name] for name in layers}, layers


def run(cfg: Config, poison_dir: Path, train_dir: Path, recover_dir: Path, out: Path) -> dict:
    p = cfg.prune
    holdout_set, info, _ = load_imageset(poison_dir / "holdout.safetensors")
    if len(holdout_set) == 0:  # data.defense_holdout = 0: select on the defense data itself
        holdout_set, _, _ = load_imageset(poison_dir / "defense.safetensors")
    test_set, _, _ = load_imageset(poison_dir / "test_clean.safetensors")
    trig_set, _, extra = load_imageset(poison_dir / "test_poison.safetensors", "targets")
    model, spec, _ = load_model(train_dir / "model.safetensors", hint=" (run the train stage first: dvc repro train)")
    masks, layers = load_masks(recover_dir / "masks.safetensors", model)
    compute = resolve_compute(cfg.device, cfg.precision)
    compute.place(model).eval()
    holdout, test, triggered = info.on(holdout_set, compute), info.on(test_set, compute), info.on(trig_set, compute)
    targets = extra["targets"]

    # 1) the unpruned model
    before = {"ca": accuracy(model, test), **attack_metrics(model, triggered, targets)}
    base_holdout = accuracy(model, holdout)

    # 2) the sweep: one model copy, weights rewritten in place at each point
    points = sweep_points(p, sum(m.numel() for m in masks.values()))

    def measure() -> dict:
        return {"holdout_acc": accuracy(model, holdout), "ca": accuracy(model, test), **attack_metrics(model, triggered, targets)}

    start = time.perf_counter()
    rows = sweep_curve(layers, masks, p.sweep, points, measure, lambda it: progress(it, "prune"))
    curve = [PrunePoint(r["threshold"], r["pruned"], r["holdout_acc"], r["ca"], r["asr"], r["ra"]) for r in rows]
    seconds = time.perf_counter() - start

    # 3) choose from clean held-out data only; the oracle looks at test data and is for reporting
    if p.select == "auto":
        selected = select_auto([c.holdout_acc for c in curve], base_holdout, p.max_clean_drop, p.max_first_drop)
    else:
        selected = points.index(p.threshold if p.sweep == "threshold" else min(p.number, points[-1]))
    oracle = oracle_point(curve, p.oracle_max_asr)
    oracle_pt = curve[oracle]
    if selected is None:  # every point costs more clean accuracy than allowed: keep the model unpruned
        chosen_point = PrunePoint(-1.0, 0, base_holdout, before["ca"], before["asr"], before["ra"])
    else:
        chosen_point = curve[selected]
        prune_at(layers, masks, p.sweep, points[selected])

    metrics = {
        "ca": chosen_point.ca,
        "asr": chosen_point.asr,
        "ra": chosen_point.ra,
        "der": der(before["ca"], before["asr"], chosen_point.ca, chosen_point.asr),
        "pruned": chosen_point.pruned,
        "threshold": chosen_point.threshold,
        "ca_before": before["ca"],
        "asr_before": before["asr"],
        "ra_before": before["ra"],
        "holdout_acc_before": base_holdout,
        "holdout_size": len(holdout_set),
        "oracle_threshold": oracle_pt.threshold,
        "oracle_pruned": oracle_pt.pruned,
        "oracle_ca": oracle_pt.ca,
        "oracle_asr": oracle_pt.asr,
    }
    x = "threshold" if p.sweep == "threshold" else "pruned"
    with StageWriter(out) as w:
        w.write("model.safetensors", model_bytes(model, spec, {"params": cfg.to_dict(), "stage": "prune", "pruned": chosen_point.pruned, "threshold": chosen_point.threshold}))
        w.write("curve.csv", csv_bytes(rows))
        w.write("curve.png", curve_png(rows, x, selected, oracle, {**before, "holdout_acc": base_holdout}))
        w.write("masks.png", masks_png(masks, chosen_point.threshold if selected is not None else None))
        w.write("metrics.json", json_bytes(metrics))
    if selected is None:
        say(f"prune: NOTHING PRUNED: the first point (t = 0) costs {base_holdout - curve[0].holdout_acc:.1%} of held-out accuracy, "
            f"more than prune.max_first_drop {p.max_first_drop:.0%}: the masks did not separate the backdoor")
    say(
        f"prune: {p.select} {x} {getattr(chosen_point, x):g} ({chosen_point.pruned} channels): "
        f"CA {before['ca']:.1%} -> {chosen_point.ca:.1%}, ASR {before['asr']:.1%} -> {chosen_point.asr:.1%}; "
        f"oracle {x} {getattr(oracle_pt, x):g}: CA {oracle_pt.ca:.1%}, ASR {oracle_pt.asr:.1%} ({len(points)} points, {seconds:.1f} s) -> {out}"
    )
    return metrics
