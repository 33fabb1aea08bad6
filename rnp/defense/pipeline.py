"""RNP as one pipeline: unlearn -> detect -> recover -> prune, on clean data only.

    purified, report = rnp.defend(model, rnp.CleanData(images, labels, mean, std, num_classes))

Each step is one function that the DVC stages (unlearn, recover, prune) call on their own,
and `rnp_defense` calls in turn, so `dvc repro` and `rnp defend` decide alike: a model
whose unlearning shows no sign of a backdoor is left unpruned unless prune.force is set
(the sweep is measured either way). Callers watch each epoch through `on_epoch`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..config import Config
from ..data import DeviceData
from ..metrics import accuracy
from ..training import EpochStats, seeded_generator
from .base import CleanData, DefendOptions, DefenseReport, Prepared, prepare, register_defense
from .detection import Detection, detect_target, no_evidence_message
from .prune import OnPruned, PruneDecision, decide_pruning
from .recover import channel_view, mask_layers, recover, resolve_mask_on, zero_masks_warning
from .unlearn import unlearn

__all__ = ["Unlearned", "unlearn_step", "recover_step", "prune_step", "prune_prepared", "recheck_step", "backdoor_remains", "verdict",
           "rnp_defense", "KeepPruned"]


@dataclass(frozen=True)
class Unlearned:
    model: nn.Module
    epochs: int
    detection: Detection


def unlearn_step(model: nn.Module, fit: DeviceData, every: DeviceData, cfg: Config, num_classes: int,
                 on_epoch: Callable[[int, EpochStats, nn.Module], None] | None = None) -> Unlearned:
    """1) Unlearn on the fit images, then read the backdoor target off the unlearned model, over every clean image."""
    last, history = {}, []

    def epoch_done(epoch: int, stats: EpochStats, m: nn.Module) -> None:
        last["acc"] = stats.acc
        if cfg.unlearn.detection == "emergent":  # where the unlearned model sends other classes' images, epoch by epoch
            history.append(detect_target(m, every, num_classes).scores)
        if on_epoch is not None:
            on_epoch(epoch, stats, m)

    start_acc = accuracy(model, every)
    unlearned, epochs = unlearn(model, fit, cfg.unlearn, cfg.augment, seeded_generator(cfg.seed), epoch_done)
    return Unlearned(unlearned, epochs, detect_target(unlearned, every, num_classes, last["acc"], history, cfg.unlearn.detection, start_acc))


def recover_step(unlearned: nn.Module, fit: DeviceData, cfg: Config,
                 on_epoch: Callable[[int, EpochStats, dict[str, torch.Tensor]], None] | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """2) Masks learnt on the unlearned model, and the kind of layer they sit on (recover.mask_on resolved)."""
    kind = resolve_mask_on(unlearned, cfg.recover.mask_on)
    return recover(unlearned, fit, cfg.recover, cfg.augment, seeded_generator(cfg.seed), on_epoch, mask_on=kind), kind


def prune_step(model: nn.Module, masks: dict[str, torch.Tensor], kind: str, cfg: Config, measure: Callable[[], dict],
               detection: Detection | None, progress: Callable = lambda it: it, on_pruned: OnPruned | None = None) -> PruneDecision:
    """3) Sweep `model` (the original, in place) on held-out clean accuracy, and prune at the chosen point,
    unless the unlearned model showed no sign of a backdoor (`detection`; None: not measured) and prune.force is off.

    `on_pruned` is the research hook (benchmarks/levers.py): called with the pruned channels after every pruning."""
    layers = mask_layers(model, kind)
    blocked = None if detection is None or detection.backdoored or cfg.prune.force else no_evidence_message(detection)
    return decide_pruning(layers, masks, cfg.prune, measure, blocked=blocked, progress=progress, on_pruned=on_pruned)


def prune_prepared(prep: Prepared, masks: dict[str, torch.Tensor], kind: str, options: DefendOptions,
                   detection: Detection | None) -> tuple[nn.Module, PruneDecision]:
    """3) for a registered defense: a copy of the prepared model, pruned by prune_step on the held-out images alone."""
    purified = copy.deepcopy(prep.original)
    decision = prune_step(purified, masks, kind, options.cfg, lambda: {"holdout_acc": accuracy(purified, prep.holdout)}, detection,
                          progress=lambda points: options.progress(points, "prune"))
    return purified, decision


class KeepPruned(nn.Module):
    """Parametrization: a pruned channel's weight stays 0 while the probe's unlearning trains the rest."""

    def __init__(self, alive: torch.Tensor):
        super().__init__()
        self.register_buffer("alive", alive)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * channel_view(self.alive, weight)


def recheck_step(purified: nn.Module, kind: str, fit: DeviceData, every: DeviceData, cfg: Config, num_classes: int) -> Unlearned:
    """4) rnp checks its own work, on clean data alone: unlearn the purified model (its pruned channels held at 0) as the
    original was unlearned, and read which class it collapses onto. A backdoor that survived pruning pulls the collapse
    onto its target again; a removed one leaves no such sink (`backdoor_remains`)."""
    probe = copy.deepcopy(purified)
    for layer in mask_layers(probe, kind).values():
        alive = (layer.weight.detach().reshape(layer.weight.shape[0], -1) != 0).any(1).to(layer.weight.dtype)
        parametrize.register_parametrization(layer, "weight", KeepPruned(alive))
    return unlearn_step(probe, fit, every, cfg, num_classes)


def backdoor_remains(detection: Detection | None, recheck: Detection | None) -> bool | None:
    """The purified model's unlearning collapses onto the original's suspected target again (None: not checked)."""
    if detection is None or recheck is None:
        return None
    return recheck.backdoored and recheck.target == detection.target


def verdict(detection: Detection | None, decision: PruneDecision) -> str:
    """One line: what unlearning said, and why nothing was pruned when the choice found no point."""
    if detection is None:
        return decision.why
    if detection.backdoored:
        said = (f"backdoor suspected: unlearning sends {detection.score:.0%} of other classes' clean images "
                f"to class {detection.target}")
    else:
        said = no_evidence_message(detection)
    return f"{said}; {decision.why}" if decision.selected is None and decision.why != said else said


def _bar_ticker(bar) -> Callable:
    def tick(epoch, stats: EpochStats, _) -> None:
        bar.set_postfix(defense_acc=f"{stats.acc:.3f}")
        bar.update()

    return tick


@register_defense("rnp")
def rnp_defense(model: nn.Module, data: CleanData, options: DefendOptions) -> tuple[nn.Module, DefenseReport]:
    """Reconstructive Neuron Pruning (Li et al., ICML 2023): unlearn, recover BN masks, prune the original"""
    cfg, progress = options.cfg, options.progress
    prep = prepare(model, data, options)
    torch.manual_seed(cfg.seed)

    bar = progress(None, "unlearn", cfg.unlearn.max_epochs)
    unlearned = unlearn_step(prep.original, prep.fit, prep.every, cfg, data.num_classes, _bar_ticker(bar))
    bar.close()
    bar = progress(None, "recover", cfg.recover.epochs)
    masks, kind = recover_step(unlearned.model, prep.fit, cfg, _bar_ticker(bar))
    bar.close()
    flat = torch.cat([m.flatten() for m in masks.values()])

    purified, decision = prune_prepared(prep, masks, kind, options, unlearned.detection)
    warnings = [*prep.warnings, *[w for w in [zero_masks_warning(int((flat == 0).sum()), flat.numel())] if w]]
    said, extra = verdict(unlearned.detection, decision), {}
    if decision.pruned > 0 and unlearned.detection.backdoored:
        bar = progress(None, "recheck", cfg.unlearn.max_epochs)
        recheck = recheck_step(purified, kind, prep.fit, prep.every, cfg, data.num_classes)
        bar.close()
        remains = backdoor_remains(unlearned.detection, recheck.detection)
        extra = {"backdoor_remains": remains, "recheck_target": recheck.detection.target, "recheck_score": recheck.detection.score,
                 "recheck_epochs": recheck.epochs, "recheck_class_scores": recheck.detection.scores}
        if remains:
            said += (f"; BACKDOOR LIKELY STILL PRESENT: unlearning the purified model sends {recheck.detection.score:.0%} of other "
                     f"classes' images to class {recheck.detection.target} again (in {recheck.epochs} epochs; {unlearned.epochs} before)")
    report = DefenseReport.of_pruning("rnp", said, prep, decision, masks, kind, warnings,
                                      detection=unlearned.detection, unlearn_epochs=unlearned.epochs, extra=extra)
    return purified.cpu(), report
