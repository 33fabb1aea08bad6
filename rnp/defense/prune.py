from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..config import PruneParams
from ..data import DeviceData
from ..training import fit_parameters, seeded_generator
from .recover import channel_view

__all__ = [
    "OnPruned",
    "PruneDecision",
    "decide_pruning",
    "choose_point",
    "pruning_sets",
    "apply_pruning",
    "prune_at",
    "sweep_curve",
    "sweep_points",
    "select_auto",
    "oracle_point",
    "constant_fitter",
    "classifier",
    "refit_classifier_bias",
]

OnPruned = Callable[[dict[str, torch.Tensor]], None]  # called with the pruned channels after every pruning (e.g. constant_fitter)


@dataclass(frozen=True)
class PruneDecision:
    """The sweep and the point chosen on it: what the prune stage and `rnp.defend` both act on."""

    unpruned: dict  # measure() of the unpruned model
    curve: list[dict]  # per sweep point: point, threshold, pruned, **measure()
    selected: int | None  # index into curve; None: the model stays unpruned
    why: str  # one line: how the point was chosen, or why nothing is pruned

    @property
    def chosen(self) -> dict:
        """The selected row; the unpruned model (threshold None, pruned 0) when nothing is pruned."""
        if self.selected is None:
            return {**self.unpruned, "point": None, "threshold": None, "pruned": 0}
        return self.curve[self.selected]

    @property
    def threshold(self) -> float | None:
        return self.chosen["threshold"]

    @property
    def pruned(self) -> int:
        return self.chosen["pruned"]


def choose_point(holdout_acc: list[float], base_acc: float, points: list[float], p: PruneParams) -> tuple[int | None, str]:
    """prune.select on a measured sweep: (index or None, why). Pure: held-out accuracies in, choice out."""
    if p.select == "fixed":
        point = p.threshold if p.sweep == "threshold" else min(p.number, points[-1])
        key = "prune.threshold" if p.sweep == "threshold" else "prune.number"
        return points.index(point), f"fixed: {key} {point:g}"
    selected = select_auto(holdout_acc, base_acc, p.max_clean_drop, p.max_first_drop)
    if selected is None:
        first = base_acc - holdout_acc[0] if holdout_acc else float("nan")
        return None, (
            f"NOTHING PRUNED: the first point (t = 0) costs {first:.1%} of held-out accuracy, more than "
            f"prune.max_first_drop {p.max_first_drop:.0%}: the masks did not separate the backdoor"
        )
    return selected, f"auto: the last point within prune.max_clean_drop {p.max_clean_drop:.0%} of held-out accuracy"


def decide_pruning(
    layers: dict[str, nn.Module],
    masks: dict[str, torch.Tensor],
    p: PruneParams,
    measure: Callable[[], dict],
    blocked: str | None = None,
    progress: Callable = lambda it: it,
    on_pruned: OnPruned | None = None,
) -> PruneDecision:
    """Sweep, choose and prune the layers in place at the chosen point (or leave them unpruned).

    `measure()` must return at least {"holdout_acc": ...}: the choice sees nothing else.
    `blocked` is a reason to keep the model unpruned whatever the curve says (it is still measured).
    `on_pruned` (e.g. `constant_fitter`, a research hook) runs after every pruning, before it is measured.
    """
    unpruned = measure()
    points = sweep_points(p, sum(m.numel() for m in masks.values()))
    curve = sweep_curve(layers, masks, p.sweep, points, measure, progress, on_pruned)
    selected, why = choose_point([r["holdout_acc"] for r in curve], unpruned["holdout_acc"], points, p)
    if blocked is not None:
        selected, why = None, blocked
    if selected is not None:
        prune_at(layers, masks, p.sweep, points[selected], on_pruned)
    return PruneDecision(unpruned, curve, selected, why)


def pruning_sets(masks: dict[str, torch.Tensor], sweep: str, points: list[float]) -> list[dict[str, torch.Tensor]]:
    """For each sweep point, {layer: bool (channels,) to zero}.

    sweep="threshold": channels with mask <= t; sweep="number": the k lowest masks
    (ties broken by model order, so the k-th set always contains the (k-1)-th).
    """
    names = list(masks)
    flat = torch.cat([masks[n].flatten().float().cpu() for n in names])  # (total channels,)
    sizes = [masks[n].numel() for n in names]
    order = torch.sort(flat, stable=True).indices
    sets = []
    for point in points:
        if sweep == "threshold":
            chosen = flat <= point
        else:
            chosen = torch.zeros_like(flat, dtype=torch.bool)
            chosen[order[: int(point)]] = True
        sets.append(dict(zip(names, chosen.split(sizes))))
    return sets


@torch.no_grad()
def apply_pruning(layers: dict[str, nn.Module], original: dict[str, torch.Tensor], chosen: dict[str, torch.Tensor]) -> None:
    """Set every masked layer's weight to its original value with the chosen channels zeroed (bias kept).

    `original` holds the unpruned weights, so one model copy serves the whole sweep.
    """
    for name, prune in chosen.items():
        w = original[name]
        layers[name].weight.copy_(w.masked_fill(channel_view(prune.to(w.device), w), 0.0))


def prune_at(layers: dict[str, nn.Module], masks: dict[str, torch.Tensor], sweep: str, point: float, on_pruned: OnPruned | None = None) -> None:
    """Prune the (unpruned) layers in place at one sweep point: the chosen point, after a sweep."""
    original = {name: layer.weight.detach().clone() for name, layer in layers.items()}
    _prune(layers, original, pruning_sets(masks, sweep, [point])[0], on_pruned)


def _prune(layers: dict[str, nn.Module], original: dict[str, torch.Tensor], chosen: dict[str, torch.Tensor], on_pruned: OnPruned | None) -> None:
    """apply_pruning, then `on_pruned` (e.g. the chosen channels' fitted constants)."""
    apply_pruning(layers, original, chosen)
    if on_pruned is not None:
        on_pruned(chosen)


def constant_fitter(model: nn.Module, layers: dict[str, nn.Module], clean: DeviceData, p: PruneParams, seed: int) -> OnPruned:
    """An `on_pruned` hook that fits the constant each pruned channel outputs (its bias) on clean data (a research lever:
    docs/levers.md measures it; the published method keeps the trained bias).

    A channel whose weight is zeroed outputs its bias whatever the input, so fitting it cannot
    make the model respond to a trigger. The trained bias it keeps otherwise was learnt next to
    a varying output; left alone, the pruned channels shift every logit by a fixed amount, which
    costs clean accuracy (and can hide a backdoor that is still there). Each call restores the
    original biases first, then fits the chosen channels' only (Adam, eval-mode BN, a fixed
    batch order), so the same channels always get the same constants; layers without a bias
    keep their pruned channels at 0.
    """
    biases = {name: layer.bias.detach().clone() for name, layer in layers.items() if getattr(layer, "bias", None) is not None}

    def fit_constants(chosen: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, bias in biases.items():
                layers[name].bias.copy_(bias)
        fitted = {name: c.to(biases[name].device) for name, c in chosen.items() if name in biases and bool(c.any())}
        if not fitted:
            return

        @torch.no_grad()
        def keep_the_rest() -> None:  # only the pruned channels' constants move
            for name, c in fitted.items():
                layers[name].bias.copy_(torch.where(c, layers[name].bias, biases[name]))

        params = [layers[name].bias for name in fitted]
        fit_parameters(model, params, clean, p.fit_epochs, p.fit_lr, seeded_generator(seed), keep_the_rest)

    return fit_constants


def sweep_points(p: PruneParams, total_channels: int) -> list[float]:
    """The sweep grid; a fixed choice is added to it so that it is evaluated too."""
    if p.sweep == "threshold":
        points = {round(i * p.step, 6) for i in range(int(round(p.max_threshold / p.step)) + 1)}
        points |= {p.threshold} if p.select == "fixed" else set()
    else:
        points = set(range(0, min(p.max_number, total_channels) + 1, p.number_step))
        points |= {min(p.number, total_channels)} if p.select == "fixed" else set()
    return sorted(points)


def sweep_curve(
    layers: dict[str, nn.Module],
    masks: dict[str, torch.Tensor],
    sweep: str,
    points: list[float],
    measure: Callable[[], dict],
    progress: Callable = lambda it: it,
    on_pruned: OnPruned | None = None,
) -> list[dict]:
    """Prune at every point in place on one model (then `on_pruned`), call `measure()`, restore; rows in sweep order.

    Each row: point, threshold (sweep=number: the largest pruned mask value), pruned, **measure().
    Consecutive points that prune the same channels reuse the previous measurement.
    """
    original = {name: layer.weight.detach().clone() for name, layer in layers.items()}
    rows, last_key, last = [], None, None
    for point, chosen in progress(list(zip(points, pruning_sets(masks, sweep, points)))):
        values = torch.cat([masks[n][c.to(masks[n].device)] for n, c in chosen.items()])
        key = tuple(torch.cat(list(chosen.values())).nonzero().flatten().tolist())
        if key != last_key:
            _prune(layers, original, chosen, on_pruned)
            last, last_key = measure(), key
        threshold = point if sweep == "threshold" else (values.max().item() if values.numel() else 0.0)
        rows.append({"point": point, "threshold": threshold, "pruned": int(values.numel()), **last})
    _prune(layers, original, {n: torch.zeros_like(m, dtype=torch.bool) for n, m in masks.items()}, on_pruned)
    return rows


def select_auto(holdout_acc: list[float], base_acc: float, max_clean_drop: float, max_first_drop: float = 1.0) -> int | None:
    """The sweep point to prune at, from clean held-out accuracies only; None: prune nothing.

    The first point (t = 0: the channels recovery switched fully off) is RNP's minimal
    pruning. If it alone costs more than `max_first_drop` of held-out accuracy, the masks
    did not separate the backdoor from the clean features: None. Otherwise the choice is
    the last point before the first whose accuracy falls more than `max_clean_drop` below
    the lower of the unpruned model and that first point. Stopping at the first violation
    keeps the choice on the flat part of the curve, where the backdoor channels are gone
    and the clean ones are not yet.
    """
    if not holdout_acc or base_acc - holdout_acc[0] > max_first_drop + 1e-9:
        return None
    anchor = min(base_acc, holdout_acc[0])
    chosen = None
    for i, acc in enumerate(holdout_acc):
        if anchor - acc > max_clean_drop + 1e-9:
            break
        chosen = i
    return chosen


def oracle_point(curve: list[dict], max_asr: float) -> int:
    """Reporting only: the highest test CA among sweep rows with ASR <= max_asr (else the lowest ASR)."""
    ok = [i for i, r in enumerate(curve) if r["asr"] <= max_asr]
    if ok:
        return max(ok, key=lambda i: (curve[i]["ca"], -i))
    return min(range(len(curve)), key=lambda i: (curve[i]["asr"], -curve[i]["ca"]))


def classifier(model: nn.Module, num_classes: int) -> nn.Linear | None:
    """The layer that outputs the logits: the last Linear with one output per class and a bias (None if there is none)."""
    found = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes and m.bias is not None]
    return found[-1] if found else None


def refit_classifier_bias(model: nn.Module, clean: DeviceData, num_classes: int, p: PruneParams, seed: int) -> nn.Module | None:
    """A copy of `model` whose classifier biases (one number per class, nothing else) are refitted on clean data.

    A check of a purified model, not a defense: if the backdoor's ASR comes back, pruning
    did not remove the trigger's path through the network, it shifted the classes' priors
    away from the target, and any recalibration of the output (fine-tuning, a new class
    balance) can undo that. None when the model has no such classifier.
    """
    refitted = copy.deepcopy(model)
    head = classifier(refitted, num_classes)
    if head is None:
        return None
    fit_parameters(refitted, [head.bias], clean, p.fit_epochs, p.fit_lr, seeded_generator(seed))
    return refitted
