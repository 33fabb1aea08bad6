"""The RNP defense as one call, `rnp.defend`: purify a model someone else trained, with a little clean data.

    purified, report = rnp.defend(model, images, labels, mean=..., std=...)

unlearn -> detect -> recover -> sweep -> choose, on clean data only. The
clean images are split into a part for unlearn/recover and a held-out part
that alone chooses the pruning threshold. If the unlearned model shows no
sign of a backdoor, the model is returned unpruned and the report says so.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..compute import Compute
from ..config import Config
from ..data import DeviceData, ImageSet
from ..errors import RnpError
from ..metrics import accuracy
from ..progress import quiet
from ..training import seeded_generator
from .base import register_defense
from .prune import constant_fitter, decide_pruning
from .recover import mask_layers, recover, resolve_mask_on, zero_masks_warning
from .unlearn import unlearn

__all__ = ["defend", "detect_target", "emerged_alone", "probe_predictions", "sink_scores", "weak_model_message", "holdout_warning",
           "check_detection_rule", "DETECTION_RULES", "DETECTION_THRESHOLD", "MIN_ACCURACY"]

# A model is called backdoored when unlearning collapses it (running clean accuracy <= COLLAPSED)
# and the collapsed model sends at least DETECTION_THRESHOLD of other classes' clean images to one
# class (2.5x the 0.1 of a uniform 10-class model): clean models resist unlearning and spread
# their errors, backdoored ones collapse onto the target (measured in docs/defend.md, "Target-label detection").
DETECTION_THRESHOLD = 0.25
COLLAPSED = 0.3
# detection "emergent" also asks that the final class led alone when the collapse began: at the
# first unlearning epoch where any class draws >= EMERGE_LEVEL of other classes' images, it draws
# >= EMERGE_LEAD times the runner-up's share. A clean model's collapse starts spread over
# look-alike classes and often changes its leader (measured on every model of the Fashion-MNIST
# benchmark in docs/quality.md, "Detection rules").
DETECTION_RULES = ("collapse", "emergent")
EMERGE_LEVEL = 0.10
EMERGE_LEAD = 2.0
MIN_HOLDOUT = 10  # held-out images below which one image is more than a 10-point accuracy step
# A backdoored model is an accurate one on clean images (that is what hides the backdoor). A model
# below this on the user's own clean images is mis-specified (normalisation, class order,
# architecture), and unlearning "collapsing" it would say nothing about a backdoor.
MIN_ACCURACY = 0.5


def check_detection_rule(rule: str, name: str = "detection rule") -> None:
    if rule not in DETECTION_RULES:
        raise RnpError(f"{name} must be one of {', '.join(DETECTION_RULES)}, got {rule!r}")


def weak_model_message(acc: float, n: int, num_classes: int, min_accuracy: float, normalisation: str) -> str:
    return (
        f"the model scores {acc:.0%} on the {n} clean images (chance: {1 / num_classes:.0%}; rnp defend needs >= {min_accuracy:.0%}), "
        f"so it is not the model as it was trained. Likely causes: the normalisation ({normalisation}; pass the model's --mean/--std), "
        f"the class order (folder names sort as strings: 1, 10, 2, ...), or the wrong --arch"
    )


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


@dataclass(frozen=True)
class Detection:
    target: int  # the class the unlearned model sends most clean images of other classes to
    score: float  # that share
    scores: list[float]  # per class
    unlearned_acc: float  # running clean accuracy of the last unlearning epoch
    rule: str = "collapse"
    emerged: bool = True  # the target led alone when the collapse began (what rule "emergent" adds)

    @property
    def backdoored(self) -> bool:
        collapsed = self.unlearned_acc <= COLLAPSED and self.score >= DETECTION_THRESHOLD
        return collapsed and (self.rule == "collapse" or self.emerged)


def sink_scores(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    """Per class c: the share of other classes' images predicted as c."""
    scores = []
    for c in range(num_classes):
        others = labels != c
        scores.append((preds[others] == c).float().mean().item() if others.any() else 0.0)
    return scores


def emerged_alone(history: list[list[float]], target: int, level: float = EMERGE_LEVEL, lead: float = EMERGE_LEAD) -> bool:
    """Whether `target` led alone at the first epoch of `history` (per-epoch sink scores) where any class drew >= level."""
    for scores in history:
        ranked = sorted(scores, reverse=True)
        if ranked[0] >= level:
            return scores.index(ranked[0]) == target and ranked[0] >= lead * ranked[1]
    return False


@torch.no_grad()
def probe_predictions(model: nn.Module, clean: DeviceData) -> torch.Tensor:
    """Predictions with batch statistics (train-mode BN, on a copy), as unlearning itself saw the data."""
    probe = copy.deepcopy(model).train()
    return torch.cat([probe(x).argmax(1) for x, _ in clean.batches(256)])


def detect_target(unlearned: nn.Module, clean: DeviceData, num_classes: int, unlearned_acc: float = 0.0,
                  history: list[list[float]] | None = None, rule: str = "collapse") -> Detection:
    """Unlearning a backdoored model sends clean images to the backdoor target: find that class.

    Predictions use batch statistics (train-mode BN), as unlearning itself saw the data;
    with the running statistics the collapsed model often falls into an unrelated sink class.
    `history`: the sink scores after each unlearning epoch, which rule "emergent" reads.
    """
    scores = sink_scores(probe_predictions(unlearned, clean), clean.labels, num_classes)
    target = max(range(num_classes), key=lambda c: scores[c])
    emerged = emerged_alone(history if history is not None else [scores], target)
    return Detection(target, scores[target], scores, unlearned_acc, rule, emerged)


def no_evidence_message(d: Detection) -> str:
    if d.rule == "emergent" and not d.emerged and d.unlearned_acc <= COLLAPSED and d.score >= DETECTION_THRESHOLD:
        return (f"no evidence of a backdoor (unlearning sends {d.score:.0%} of other classes' images to class {d.target}, "
                f"but that class did not lead alone when the collapse began, as look-alike classes do)")
    return (f"no evidence of a backdoor (unlearning left {d.unlearned_acc:.0%} clean accuracy; "
            f"at most {d.score:.0%} of other classes' images go to one class)")


def _fmt(values: tuple[float, ...]) -> str:
    return ",".join(f"{v:g}" for v in values)


def check_clean_data(labels: torch.Tensor, num_classes: int) -> None:
    if len(labels) < num_classes:
        raise RnpError(f"only {len(labels)} clean images for {num_classes} classes; rnp defend needs at least one per class")
    missing = sorted(set(range(num_classes)) - set(labels.tolist()))
    if missing:
        raise RnpError(f"the clean data has no image of class {missing[0]} ({len(missing)} classes missing)")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise RnpError(f"clean labels must be in [0, {num_classes})")


@register_defense("rnp")
def defend(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    num_classes: int,
    cfg: Config | None = None,
    device: torch.device | str | Compute = "cpu",
    mask_on: str = "auto",
    force: bool = False,
    min_accuracy: float = MIN_ACCURACY,
    normalisation: str | None = None,
    detection_rule: str = "collapse",
    progress: Callable = quiet,
) -> tuple[nn.Module, dict]:
    """Purify `model` with clean `images` (N, C, H, W uint8) and `labels`.

    Returns (purified copy, report). The input model is not modified. A model scoring below
    `min_accuracy` on the clean images is refused (RnpError): it is mis-specified, not defended;
    `normalisation` says how mean/std were chosen, for that message (default: their values).
    `detection_rule`: "collapse" (unlearning collapses the model onto one class) or "emergent"
    (and that class led alone when the collapse began: fewer false alarms, fewer targets named).
    `progress(iterable, desc, total)` makes the bars each step reports to (rnp.progress.progress shows them).
    """
    check_detection_rule(detection_rule)
    cfg = cfg or Config()
    check_clean_data(labels, num_classes)
    compute = device if isinstance(device, Compute) else Compute(torch.device(device))
    data = ImageSet(images, labels.long())
    fit_set, holdout_set = data.split(cfg.data.defense_holdout, cfg.data.defense_seed)
    if len(holdout_set) < MIN_HOLDOUT and cfg.data.defense_holdout > 0:
        need = math.ceil(MIN_HOLDOUT / cfg.data.defense_holdout)
        raise RnpError(f"{len(labels)} clean images leave {len(holdout_set)} held out (data.defense_holdout {cfg.data.defense_holdout:g}); "
                       f"choosing a threshold needs at least {MIN_HOLDOUT}: give at least {need} clean images")
    warning = holdout_warning(len(holdout_set), cfg.data.defense_holdout, cfg.prune.max_clean_drop)
    if len(holdout_set) == 0:  # data.defense_holdout 0: choose on the unlearn/recover images themselves
        holdout_set = fit_set
    fit, holdout, every = (DeviceData(s, mean, std, compute) for s in (fit_set, holdout_set, data))
    original = compute.place(copy.deepcopy(model)).eval()
    clean_acc = accuracy(original, every)
    if clean_acc < min_accuracy:
        how = normalisation or f"mean {_fmt(mean)}, std {_fmt(std)}"
        raise RnpError(weak_model_message(clean_acc, len(labels), num_classes, min_accuracy, how))
    torch.manual_seed(cfg.seed)

    # 1) unlearn, and read the backdoor target off the unlearned model
    last, history = {}, []
    unlearn_bar = progress(None, "unlearn", cfg.unlearn.max_epochs)

    def on_epoch(epoch, stats, m) -> None:
        last.update(acc=stats.acc)
        if detection_rule == "emergent":  # where the unlearned model sends other classes' images, epoch by epoch
            history.append(detect_target(m, every, num_classes).scores)
        unlearn_bar.set_postfix(defense_acc=f"{stats.acc:.3f}")
        unlearn_bar.update()

    unlearned, epochs = unlearn(original, fit, cfg.unlearn, cfg.augment, seeded_generator(cfg.seed), on_epoch)
    unlearn_bar.close()
    detection = detect_target(unlearned, every, num_classes, last["acc"], history, detection_rule)

    # 2) recover masks on the unlearned model
    kind = resolve_mask_on(original, mask_on)
    recover_bar = progress(None, "recover", cfg.recover.epochs)

    def recovered(epoch, stats, masks) -> None:
        recover_bar.set_postfix(defense_acc=f"{stats.acc:.3f}")
        recover_bar.update()

    masks = recover(unlearned, fit, cfg.recover, cfg.augment, seeded_generator(cfg.seed), recovered, mask_on=kind)
    recover_bar.close()
    flat = torch.cat([m.flatten() for m in masks.values()])
    warnings = [w for w in (warning, zero_masks_warning(int((flat == 0).sum()), flat.numel())) if w]

    # 3) sweep the original model on held-out clean accuracy only; prune unless nothing points at a backdoor
    purified = copy.deepcopy(original)
    layers = mask_layers(purified, kind)
    no_evidence = no_evidence_message(detection)
    blocked = None if detection.backdoored or force else no_evidence
    refit = constant_fitter(purified, layers, fit, cfg.prune, cfg.seed) if cfg.prune.fill == "fit" else None
    decision = decide_pruning(layers, masks, cfg.prune, lambda: {"holdout_acc": accuracy(purified, holdout)}, blocked=blocked,
                              progress=lambda points: progress(points, "prune"), refit=refit)
    verdict = (
        f"backdoor suspected: unlearning sends {detection.score:.0%} of other classes' clean images to class {detection.target}"
        if detection.backdoored
        else no_evidence
    )
    if decision.selected is None and blocked is None:
        verdict = f"{verdict}; {decision.why}"
    report = {
        "verdict": verdict,
        "backdoor_suspected": detection.backdoored,
        "suspected_target": detection.target,
        "target_score": detection.score,
        "unlearned_acc": detection.unlearned_acc,
        "class_scores": detection.scores,
        "detection_rule": detection_rule,
        "epoch_scores": history,  # class_scores after each unlearning epoch (rule "emergent" only)
        "pruned": decision.pruned,
        "threshold": decision.threshold,
        "holdout_acc_before": decision.unpruned["holdout_acc"],
        "holdout_acc_after": decision.chosen["holdout_acc"],
        "unlearn_epochs": epochs,
        "mask_on": kind,
        "clean_images": {"fit": len(fit_set), "holdout": len(holdout_set)},
        "clean_acc": clean_acc,  # the model's accuracy on all the clean images, before anything
        "holdout_resolution": 1 / len(holdout_set),  # one held-out image, as accuracy: the smallest change the choice sees
        "warnings": warnings,
        "curve": decision.curve,
        "selected": decision.selected,
        "masks": {k: v.cpu() for k, v in masks.items()},
    }
    return purified.cpu(), report
