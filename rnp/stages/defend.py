"""rnp defend: an untrusted model file + clean data -> purified model, masks, pruning curve (pruning defenses), report."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch

from ..config import Config
from ..data import DeviceData
from ..datasets import load_dataset
from ..defense import DEFENSES, CleanData, DefendOptions, DefenseReport, defend, mask_layers
from ..defense.base import MIN_ACCURACY
from ..defense.recover import MASK_ON
from ..errors import RnpError
from ..io import StageWriter, csv_bytes, json_bytes, tensors_bytes
from ..metrics import accuracy
from ..models import ModelSpec, model_bytes
from ..plots import curve_png
from ..untrusted import load_untrusted
from ._runtime import progress, resolve_compute, say, seed_everything

__all__ = ["run", "clean_data"]


def clean_data(spec: str, cfg: Config, defense_size: int, image_size: int):
    """SPEC -> (defense ImageSet, evaluation ImageSet or None, num_classes, mean, std).

    A folder is an ImageFolder tree of clean labelled images (all of it is defense data);
    a name is a registered data set: `defense_size` clean training images, the test split for evaluation.
    """
    path = Path(spec)
    if path.is_dir():
        ds = load_dataset("folder", str(path), image_size)
        return ds.train, ds.test, ds.num_classes, ds.mean, ds.std
    if "/" in spec or spec.startswith("."):
        raise RnpError(f"--data {spec}: no such folder")
    ds = load_dataset(spec, cfg.data.root, image_size)
    train, test = (ds.train, ds.test) if ds.test is not None else ds.train.split(cfg.data.test_fraction, cfg.seed)
    if defense_size > len(train):
        raise RnpError(f"--defense-size {defense_size} is larger than the {len(train)} training images of {spec}")
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.data.defense_seed))[:defense_size]
    return train.subset(pick.sort().values), test, ds.num_classes, ds.mean, ds.std


def _floats(text: str | None, what: str, positive: bool = False) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise RnpError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not all(math.isfinite(v) and (v > 0 or not positive) for v in values):
        raise RnpError(f"{what} must be finite{' and > 0' if positive else ''}, got {text!r}")
    return values


def check_arguments(out: Path, defense_size: int, image_size: int) -> None:
    """What can be checked before any work: counts, and that the output folder can be written."""
    if out.suffix != ".safetensors":
        raise RnpError(f"--out {out} must end in .safetensors")
    if defense_size < 1:
        raise RnpError(f"--defense-size must be >= 1, got {defense_size}")
    if image_size < 1:
        raise RnpError(f"--image-size must be >= 1, got {image_size}")
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise RnpError(f"--out {out}: {folder} is not a writable folder")


def normalisations(data_mean: tuple[float, ...], data_std: tuple[float, ...]) -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
    """The normalisations a model is commonly trained with, for images of len(data_mean) channels; the data's own first."""
    c = len(data_mean)
    found = {"the data's own": (data_mean, data_std), "none (0..1)": ((0.0,) * c, (1.0,) * c), "mean 0.5, std 0.5": ((0.5,) * c, (0.5,) * c)}
    if c == 3:
        found["ImageNet's"] = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        found["CIFAR-10's"] = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    return found


def choose_normalisation(model: torch.nn.Module, clean, data_mean, data_std, min_accuracy: float):
    """Without --mean/--std: the data's own statistics if the model is accurate with them, else the best common one.

    Returns (mean, std, how): `how` says what was tried, for the report and for a refusal.
    """
    options = normalisations(data_mean, data_std)
    scores = {name: accuracy(model, DeviceData(clean, m, s, torch.device("cpu"))) for name, (m, s) in options.items()}
    own = next(iter(options))
    best = own if scores[own] >= min_accuracy else max(scores, key=scores.get)
    tried = ", ".join(f"{name} {acc:.0%}" for name, acc in scores.items())
    if best != own and scores[best] >= min_accuracy:
        say(f"defend: the model scores {scores[own]:.0%} with the data's own mean/std and {scores[best]:.0%} with {best}: "
            f"using {best} (pass --mean/--std to choose)")
    return (*options[best], f"no --mean/--std given; accuracy with {tried}")


def run(cfg: Config, model_path: Path, arch: str, data: str, out: Path, defense_size: int = 500, image_size: int = 32,
        mean: str | None = None, std: str | None = None, min_accuracy: float = MIN_ACCURACY, defense: str = "rnp") -> DefenseReport:
    """`cfg` carries the settings the flags set: recover.mask_on (--mask-on), prune.force (--force), unlearn.detection (--detection)."""
    check_arguments(out, defense_size, image_size)
    if not 0 <= min_accuracy <= 1:
        raise RnpError(f"--min-accuracy must be in [0, 1], got {min_accuracy}")
    DEFENSES.get(defense)  # an unknown name fails before any work
    mean_v, std_v = _floats(mean, "--mean"), _floats(std, "--std", positive=True)
    clean, evaluation, classes, data_mean, data_std = clean_data(data, cfg, defense_size, image_size)
    channels = clean.images.shape[1]
    if len(mean_v or data_mean) != channels or len(std_v or data_std) != channels:
        raise RnpError(f"--mean/--std need {channels} values (the images have {channels} channels)")
    spec = ModelSpec(arch, classes, tuple(clean.images.shape[1:]), mean_v or data_mean, std_v or data_std)
    model = load_untrusted(model_path, spec)
    mask_on = cfg.recover.mask_on
    if not mask_layers(model, mask_on):
        raise RnpError(f"--mask-on {mask_on}: {arch} has no such layer to mask (use one of {', '.join(MASK_ON)})")
    if mean_v is None and std_v is None:
        mean_v, std_v, how = choose_normalisation(model.eval(), clean, data_mean, data_std, min_accuracy)
    else:
        mean_v, std_v, how = mean_v or data_mean, std_v or data_std, "--mean/--std as given"
    spec = ModelSpec(arch, classes, tuple(clean.images.shape[1:]), mean_v, std_v)
    compute = resolve_compute(cfg.device, cfg.precision)
    seed_everything(cfg.seed)

    start = time.perf_counter()
    purified, report = defend(model, CleanData(clean.images, clean.labels, mean_v, std_v, classes, how),
                              DefendOptions(cfg, compute, min_accuracy, progress), defense)
    report.extra["normalisation"] = {"mean": list(mean_v), "std": list(std_v), "how": how}
    report.extra["seconds"] = round(time.perf_counter() - start, 2)
    if evaluation is not None:  # clean test accuracy, for the person reading the report
        test = DeviceData(evaluation, mean_v, std_v, torch.device("cpu"))
        report.extra["test_acc_before"], report.extra["test_acc_after"] = accuracy(model, test), accuracy(purified, test)
    summary = report.to_json()

    stem = out.name[: -len(".safetensors")]
    with StageWriter(out.parent, marker=f"{stem}.report.json") as w:  # the report, written last, vouches for the set
        w.write(out.name, model_bytes(purified, spec, {"stage": "defend", "report": {k: v for k, v in summary.items() if k != "class_scores"}}))
        if report.curve:  # a pruning defense's masks and sweep (fine-tuning has neither)
            w.write(f"{stem}.masks.safetensors", tensors_bytes(report.masks, {"mask_on": report.mask_on, "stage": "defend"}))
            w.write(f"{stem}.curve.csv", csv_bytes(report.curve))
            w.write(f"{stem}.curve.png", _curve_png(report))
        w.write(f"{stem}.report.json", json_bytes(summary))
    held = report.clean_images["holdout"]
    acc = f"held-out clean acc {report.holdout_acc_before:.1%} -> {report.holdout_acc_after:.1%} on {held} images, {1 / held:.1%} each"
    for warning in report.warnings:
        say(f"defend: WARNING: {warning}")
    say(f"defend: {report.verdict}; pruned {report.pruned} channels ({acc}, {summary['seconds']:.1f} s) -> {out}")
    return report


def _curve_png(report: DefenseReport) -> bytes:
    """defend measures held-out clean accuracy only: no test CA, no ASR, no oracle."""
    rows = [{"threshold": r["threshold"], "holdout_acc": r["holdout_acc"]} for r in report.curve]
    return curve_png(rows, "threshold", report.selected, before={"holdout_acc": report.holdout_acc_before})
