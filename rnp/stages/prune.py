"""prune: original backdoored model + masks -> pruning sweep, chosen point, purified model."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..config import Config
from ..data import ImageSet
from ..defense import Detection, mask_layers, prune_step
from ..defense.base import holdout_warning
from ..defense.pipeline import backdoor_remains, recheck_step
from ..defense.prune import oracle_point, refit_classifier_bias
from ..errors import RnpError
from ..io import StageWriter, csv_bytes, json_bytes, load_tensors
from ..metrics import accuracy, attack_metrics, der
from ..models import load_model, model_bytes
from ..plots import curve_png, masks_png
from ._runtime import load_imageset, progress, resolve_compute, say

__all__ = ["run", "load_masks"]


def load_masks(path: Path, model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], str, Detection | None]:
    """Masks in model order, the kind of layer they belong to (BN unless the recover stage masked another kind),
    and the unlearned model's detection that came with them (None: masks made without it)."""
    masks, meta = load_tensors(path, hint=" (run the recover stage first: dvc repro recover)")
    kind = str(meta.get("mask_on", "bn"))
    layers = mask_layers(model, kind)
    if set(masks) != set(layers):
        diff = sorted(set(masks) ^ set(layers))
        raise RnpError(f"{path}: masks do not match the model's masked layers (e.g. {diff[0]})")
    for name, layer in layers.items():
        if masks[name].shape != (layer.weight.shape[0],):
            raise RnpError(f"{path}: mask {name} has shape {tuple(masks[name].shape)}, layer has {layer.weight.shape[0]} channels")
    try:
        detection = Detection(**meta["detection"]) if meta.get("detection") else None
    except TypeError:
        raise RnpError(f"{path}: its detection metadata is not rnp's (run the recover stage again: dvc repro recover)") from None
    return {name: masks[name] for name in layers}, kind, detection


def run(cfg: Config, poison_dir: Path, train_dir: Path, recover_dir: Path, out: Path) -> dict:
    p = cfg.prune
    holdout_set, info, _ = load_imageset(poison_dir / "holdout.safetensors")
    if len(holdout_set) == 0:  # data.defense_holdout = 0: select on the defense data itself
        holdout_set, _, _ = load_imageset(poison_dir / "defense.safetensors")
    test_set, _, _ = load_imageset(poison_dir / "test_clean.safetensors")
    trig_set, _, extra = load_imageset(poison_dir / "test_poison.safetensors", "targets")
    model, spec, _ = load_model(train_dir / "model.safetensors", hint=" (run the train stage first: dvc repro train)")
    masks, kind, detection = load_masks(recover_dir / "masks.safetensors", model)
    compute = resolve_compute(cfg.device, cfg.precision)
    compute.place(model).eval()
    holdout, test, triggered = info.to_device(holdout_set, compute), info.to_device(test_set, compute), info.to_device(trig_set, compute)
    targets = extra["targets"]

    def measure() -> dict:
        return {"holdout_acc": accuracy(model, holdout), "ca": accuracy(model, test), **attack_metrics(model, triggered, targets)}

    fit_set, _, _ = load_imageset(poison_dir / "defense.safetensors")  # the images unlearn and recover used
    fit = info.to_device(fit_set, compute)

    # the sweep chooses from clean held-out data only; the oracle looks at test data and is for reporting
    start = time.perf_counter()
    decision = prune_step(model, masks, kind, cfg, measure, detection, progress=lambda it: progress(it, "prune"))
    seconds = time.perf_counter() - start
    before, chosen, rows = decision.unpruned, decision.chosen, decision.curve
    oracle = oracle_point(rows, p.oracle_max_asr)
    oracle_pt = rows[oracle]
    # does the backdoor come back when only the classifier's biases are refitted on the same clean images?
    check = refit_classifier_bias(model, fit, info.num_classes, p, cfg.seed)
    check_ca = accuracy(check, test) if check is not None else None
    check_asr = attack_metrics(check, triggered, targets)["asr"] if check is not None else None
    # rnp checks its own work on clean data alone, as `rnp defend` does: does unlearning the purified model collapse onto the target again?
    recheck = None
    if decision.pruned > 0 and detection is not None and detection.backdoored:
        every = info.to_device(ImageSet(torch.cat([fit_set.images, holdout_set.images]), torch.cat([fit_set.labels, holdout_set.labels])), compute)
        recheck = recheck_step(model, kind, fit, every, cfg, info.num_classes)

    metrics = {
        "ca": chosen["ca"],
        "asr": chosen["asr"],
        "ra": chosen["ra"],
        "der": der(before["ca"], before["asr"], chosen["ca"], chosen["asr"]),
        "pruned": decision.pruned,
        "threshold": decision.threshold,  # null: nothing pruned
        "ca_before": before["ca"],
        "asr_before": before["asr"],
        "ra_before": before["ra"],
        "holdout_acc_before": before["holdout_acc"],
        "holdout_size": len(holdout_set),
        "oracle_threshold": oracle_pt["threshold"],
        "oracle_pruned": oracle_pt["pruned"],
        "oracle_ca": oracle_pt["ca"],
        "oracle_asr": oracle_pt["asr"],
        "ca_bias_refit": check_ca,  # null: the model has no Linear classifier with a bias
        "asr_bias_refit": check_asr,
        "backdoor_remains": backdoor_remains(detection, recheck.detection if recheck else None),  # null: not checked
        "recheck_target": recheck and recheck.detection.target,
        "recheck_score": recheck and recheck.detection.score,
        "recheck_epochs": recheck and recheck.epochs,
    }
    x = "threshold" if p.sweep == "threshold" else "pruned"
    with StageWriter(out) as w:
        meta = {"params": cfg.to_dict(), "stage": "prune", "pruned": decision.pruned, "threshold": decision.threshold}
        w.write("model.safetensors", model_bytes(model, spec, meta))
        w.write("curve.csv", csv_bytes(rows))
        w.write("curve.png", curve_png(rows, x, decision.selected, oracle, before))
        w.write("masks.png", masks_png(masks, decision.threshold))
        w.write("metrics.json", json_bytes(metrics))
    warning = holdout_warning(len(holdout_set), cfg.data.defense_holdout, p.max_clean_drop) if p.select == "auto" else None
    if warning:
        say(f"prune: WARNING: {warning}")
    if check_asr is not None and chosen["asr"] <= p.oracle_max_asr < check_asr:
        say(
            f"prune: WARNING: refitting only the classifier's {info.num_classes} biases on the clean defense images brings ASR back to "
            f"{check_asr:.1%} (CA {check_ca:.1%}): the pruning shifted the classes' priors away from the target rather than "
            f"removing the trigger's path (see docs/quality.md, the pruned channels' constants)"
        )
    if metrics["backdoor_remains"]:
        say(f"prune: WARNING: backdoor likely still present: unlearning the purified model sends {recheck.detection.score:.0%} of other "
            f"classes' clean images to class {recheck.detection.target} again ({recheck.epochs} epochs)")
    say(
        f"prune: {decision.why} ({len(holdout_set)} held-out images, {1 / len(holdout_set):.1%} each); "
        f"{x} {chosen[x] if chosen[x] is not None else 'none'} ({decision.pruned} channels): "
        f"CA {before['ca']:.1%} -> {chosen['ca']:.1%}, ASR {before['asr']:.1%} -> {chosen['asr']:.1%}; "
        f"oracle {x} {oracle_pt[x]:g}: CA {oracle_pt['ca']:.1%}, ASR {oracle_pt['asr']:.1%} ({len(rows)} points, {seconds:.1f} s) -> {out}"
    )
    return metrics
