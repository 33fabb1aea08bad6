from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .recover import bn_layers

__all__ = ["PrunePoint", "pruning_sets", "apply_pruning", "select_auto", "oracle_point"]


@dataclass(frozen=True)
class PrunePoint:
    threshold: float  # sweep=threshold: t; sweep=number: the largest pruned mask value
    pruned: int  # channels zeroed
    holdout_acc: float  # clean held-out defense accuracy: the only thing auto-selection sees
    ca: float  # test metrics, for reporting and the oracle
    asr: float
    ra: float


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
def apply_pruning(model: nn.Module, original: dict[str, torch.Tensor], chosen: dict[str, torch.Tensor]) -> None:
    """Set every BN weight to its original value with the chosen channels zeroed (bias kept).

    `original` holds the unpruned BN weights, so one model copy serves the whole sweep.
    """
    layers = bn_layers(model)
    for name, prune in chosen.items():
        layers[name].weight.copy_(original[name].masked_fill(prune.to(original[name].device), 0.0))


def select_auto(holdout_acc: list[float], base_acc: float, max_clean_drop: float) -> int:
    """Index of the last point before the first one whose clean held-out accuracy drops by more than max_clean_drop.

    Sees clean defense data only. Stopping at the first violation keeps the choice
    on the flat part of the curve, where the backdoor channels are already gone
    and the clean ones are not yet.
    """
    chosen = 0
    for i, acc in enumerate(holdout_acc):
        if base_acc - acc > max_clean_drop + 1e-9:
            break
        chosen = i
    return chosen


def oracle_point(points: list[PrunePoint], max_asr: float) -> int:
    """Reporting only: the highest test CA among points with ASR <= max_asr (else the lowest ASR)."""
    ok = [i for i, p in enumerate(points) if p.asr <= max_asr]
    if ok:
        return max(ok, key=lambda i: (points[i].ca, -i))
    return min(range(len(points)), key=lambda i: (points[i].asr, -points[i].ca))
