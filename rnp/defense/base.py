"""What every defense shares: the registry, the clean data it is given, its options and its report.

A defense is a function

    purify(model, data: CleanData, options: DefendOptions) -> (purified model, DefenseReport)

registered with `@register_defense("name")` in its own module under rnp/defense/, which
rnp/defense/__init__.py imports. `defend` looks the name up, so `rnp defend --defense NAME`
and `rnp.defend(..., defense=NAME)` reach every registered defense. `prepare` does the checks
and the clean-data split every defense needs, so that all of them refuse the same bad input
and choose on the same held-out images.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol

import torch
from torch import nn

from ..compute import Compute
from ..config import Config
from ..data import DeviceData, ImageSet
from ..errors import RnpError
from ..metrics import accuracy
from ..progress import quiet
from ..registry import Registry
from .detection import Detection

__all__ = ["DEFENSES", "register_defense", "defend", "Defense", "CleanData", "DefendOptions", "DefenseReport", "Prepared", "prepare",
"holdout_warning", "weak_model_message", "MIN_ACCURACY", "MIN_HOLDOUT"]

DEFENSES: Registry = Registry("defense", "--defense")
MIN_HOLDOUT = 10  # held-out images below which one image is more than a 10-point accuracy step
# A backdoored model is an accurate one on clean images (that is what hides the backdoor). A model
# below this on the user's own clean images is mis-specified (normalisation, class order,
# architecture), and unlearning "collapsing" it would say nothing about a backdoor.
MIN_ACCURACY = 0.5


@dataclass(frozen=True)
class CleanData:
    """The defender's clean, labelled images, and how the model expects them normalised."""

    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) class indices
    mean: tuple[float, ...]  # per channel, of images scaled to [0, 1]
    std: tuple[float, ...]
    num_classes: int
    normalisation: str | None = None  # how mean/std were chosen, for a refusal's message (default: their values)


@dataclass(frozen=True)
class DefendOptions:
    cfg: Config = field(default_factory=Config)  # unlearn / recover / prune sections; data.defense_holdout and defense_seed split the images
    device: torch.device | str | Compute = "cpu"
    min_accuracy: float = MIN_ACCURACY  # refuse a model scoring less on the clean images: it is mis-specified, not defended
    progress: Callable = quiet  # progress(iterable, desc, total) makes the bars each step reports to (rnp.progress.progress shows them)


@dataclass
class DefenseReport:
    """What a defense did; `to_json()` is the report.json `rnp defend` writes."""

    defense: str  # registry name
    verdict: str  # one line for a person
    pruned: int  # channels zeroed in the purified model
    threshold: float | None  # the chosen sweep point's mask threshold; None: nothing pruned
    holdout_acc_before: float
    holdout_acc_after: float
    clean_acc: float  # the model's accuracy on all the clean images, before anything
    clean_images: dict[str, int]  # {"fit": ..., "holdout": ...}
    holdout_resolution: float  # one held-out image, as accuracy: the smallest change the choice sees
    mask_on: str
    warnings: list[str]
    curve: list[dict] = field(repr=False)  # the sweep, one row per point (written as curve.csv, not into report.json)
    selected: int | None  # index into curve; None: unpruned
    masks: dict[str, torch.Tensor] = field(repr=False)  # per masked layer, (channels,) in [0, 1]
    detection: Detection | None = None  # RNP's reading of the unlearned model
    unlearn_epochs: int | None = None
    extra: dict = field(default_factory=dict)  # what the caller adds: normalisation, seconds, test accuracy

    @classmethod
    def of_pruning(cls, defense: str, verdict: str, prep: Prepared, decision, masks: dict[str, torch.Tensor], mask_on: str,
                   warnings: list[str], **fields) -> DefenseReport:
        """The report of a defense that pruned by `decision` (a PruneDecision) on `prep`'s held-out images; `fields`: the rest."""
        return cls(
            defense=defense,
            verdict=verdict,
            pruned=decision.pruned,
            threshold=decision.threshold,
            holdout_acc_before=decision.unpruned["holdout_acc"],
            holdout_acc_after=decision.chosen["holdout_acc"],
            clean_acc=prep.clean_acc,
            clean_images=prep.clean_images,
            holdout_resolution=1 / prep.clean_images["holdout"],
            mask_on=mask_on,
            warnings=warnings,
            curve=decision.curve,
            selected=decision.selected,
            masks={k: v.cpu() for k, v in masks.items()},
            **fields,
        )

    @property
    def backdoor_suspected(self) -> bool | None:
        return None if self.detection is None else self.detection.backdoored

    def to_json(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("curve", "masks", "detection", "extra")}
        if self.detection is not None:
            out.update(self.detection.to_json())
        return {**out, **self.extra}


class Defense(Protocol):
    def __call__(self, model: nn.Module, data: CleanData, options: DefendOptions) -> tuple[nn.Module, DefenseReport]: ...


def register_defense(name: str):
    return DEFENSES.register(name)


def defend(model: nn.Module, data: CleanData, options: DefendOptions | None = None, defense: str = "rnp") -> tuple[nn.Module, DefenseReport]:
    """Purify `model` with the clean `data` by the registered defense `defense` (default RNP).

    Returns (purified copy, report); the input model is not modified. A model scoring below
    `options.min_accuracy` on the clean images is refused (RnpError): it is mis-specified, not defended.
    """
    return DEFENSES.get(defense)(model, data, options or DefendOptions())


def holdout_warning(n_holdout: int, share: float, max_clean_drop: float) -> str | None:
    """A held-out set too small to see prune.max_clean_drop: what it can see, and the next step."""
    if n_holdout == 0 or 1 / n_holdout <= max_clean_drop + 1e-12:
        return None
    need = math.ceil(1 / (max_clean_drop * share)) if share > 0 else None
    more = f"give at least {need} clean images" if need else "hold out more images (data.defense_holdout)"
    return (
        f"{n_holdout} held-out images: one image is {1 / n_holdout:.1%} of accuracy, coarser than prune.max_clean_drop "
        f"{max_clean_drop:.1%}, so the threshold choice cannot see a smaller loss; {more}, or fix the threshold (prune.select: fixed)"
    )


def weak_model_message(acc: float, n: int, num_classes: int, min_accuracy: float, normalisation: str) -> str:
    return (
        f"the model scores {acc:.0%} on the {n} clean images (chance: {1 / num_classes:.0%}; rnp defend needs >= {min_accuracy:.0%}), "
        f"so it is not the model as it was trained. Likely causes: the normalisation ({normalisation}; pass the model's --mean/--std), "
        f"the class order (give it with --classes or a classes.txt), the image size (--image-size), or the wrong --arch"
    )


def _as_images(images) -> torch.Tensor:
    """CleanData.images as rnp needs them, (N, C, H, W) uint8 (numpy arrays accepted); else one line saying what to do."""
    if not isinstance(images, torch.Tensor):
        try:
            images = torch.as_tensor(images)
        except (TypeError, ValueError, RuntimeError):
            raise RnpError(f"CleanData.images must be a tensor or array of (N, C, H, W) uint8 images, got {type(images).__name__}") from None
    if images.ndim != 4:
        raise RnpError(f"CleanData.images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[1] not in (1, 3) and images.shape[3] in (1, 3):
        raise RnpError(f"CleanData.images has shape {tuple(images.shape)}, channels last; rnp takes (N, C, H, W): "
                       f"pass images.permute(0, 3, 1, 2)")
    if images.dtype != torch.uint8:
        raise RnpError(f"CleanData.images must be uint8 pixels 0..255 (normalised by mean/std inside rnp), got {images.dtype}"
                       + (": pass (images * 255).round().to(torch.uint8)" if images.is_floating_point() else ""))
    return images


def _as_labels(labels, n: int) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or len(labels) != n or labels.is_floating_point() or labels.dtype == torch.bool:
        raise RnpError(f"CleanData.labels must be {n} integer class indices, one per image, got {labels.dtype} of shape {tuple(labels.shape)}")
    return labels.long()


def _check_outputs(model: nn.Module, images: torch.Tensor, num_classes: int) -> None:
    model.eval()
    with torch.no_grad():
        try:
            out = model(images[:1].float())
        except (RuntimeError, ValueError) as e:
            raise RnpError(f"the model cannot take the clean images of shape {tuple(images.shape[1:])} ({str(e).splitlines()[0][:120]})") from None
    if out.ndim != 2 or out.shape[1] != num_classes:
        raise RnpError(f"the model outputs {tuple(out.shape[1:])} per image, but CleanData.num_classes is {num_classes}")


def _check_clean_data(labels: torch.Tensor, num_classes: int) -> None:
    if len(labels) < num_classes:
        raise RnpError(f"only {len(labels)} clean images for {num_classes} classes; rnp defend needs at least one per class")
    missing = sorted(set(range(num_classes)) - set(labels.tolist()))
    if missing:
        raise RnpError(f"the clean data has no image of class {missing[0]} ({len(missing)} classes missing)")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise RnpError(f"clean labels must be in [0, {num_classes})")


@dataclass(frozen=True)
class Prepared:
    """The checked input of a defense: the model on its device and the clean data split and placed."""

    original: nn.Module  # a copy of the model, on the device, in eval mode
    fit: DeviceData  # what the defense learns from
    holdout: DeviceData  # what alone chooses the pruning point (the fit images when data.defense_holdout is 0)
    every: DeviceData  # all the clean images
    clean_acc: float  # the model on all of them
    clean_images: dict[str, int]
    warnings: list[str]
    compute: Compute


def prepare(model: nn.Module, data: CleanData, options: DefendOptions) -> Prepared:
    """The checks and the split every defense makes before any work; raises RnpError on bad input."""
    cfg = options.cfg
    images = _as_images(data.images)
    labels = _as_labels(data.labels, len(images))
    if len(data.mean) != images.shape[1] or len(data.std) != images.shape[1]:
        raise RnpError(f"CleanData.mean/std need {images.shape[1]} values (the images have {images.shape[1]} channels)")
    _check_outputs(copy.deepcopy(model).cpu(), images, data.num_classes)
    _check_clean_data(labels, data.num_classes)
    compute = options.device if isinstance(options.device, Compute) else Compute(torch.device(options.device))
    every_set = ImageSet(images, labels)
    fit_set, holdout_set = every_set.split(cfg.data.defense_holdout, cfg.data.defense_seed)
    if len(holdout_set) < MIN_HOLDOUT and cfg.data.defense_holdout > 0:
        need = math.ceil(MIN_HOLDOUT / cfg.data.defense_holdout)
        raise RnpError(f"{len(every_set)} clean images leave {len(holdout_set)} held out (data.defense_holdout {cfg.data.defense_holdout:g}); "
                       f"choosing a threshold needs at least {MIN_HOLDOUT}: give at least {need} clean images")
    warnings = [w for w in [holdout_warning(len(holdout_set), cfg.data.defense_holdout, cfg.prune.max_clean_drop)] if w]
    if len(holdout_set) == 0:  # data.defense_holdout 0: choose on the fit images themselves
        holdout_set = fit_set
    counts = {"fit": len(fit_set), "holdout": len(holdout_set)}
    fit, holdout, every = (DeviceData(s, data.mean, data.std, compute) for s in (fit_set, holdout_set, every_set))
    original = compute.place(copy.deepcopy(model)).eval()
    clean_acc = accuracy(original, every)
    if clean_acc < options.min_accuracy:
        how = data.normalisation or f"mean {_fmt(data.mean)}, std {_fmt(data.std)}"
        raise RnpError(weak_model_message(clean_acc, len(every_set), data.num_classes, options.min_accuracy, how))
    return Prepared(original, fit, holdout, every, clean_acc, counts, warnings, compute)


def _fmt(values: tuple[float, ...]) -> str:
    return ",".join(f"{v:g}" for v in values)
