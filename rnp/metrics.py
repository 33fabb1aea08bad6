"""ca, asr, ra, der: batched evaluation on device-resident data."""

from __future__ import annotations

import torch
from torch import nn

from .data import DeviceData

__all__ = ["predict", "accuracy", "attack_metrics", "der"]


@torch.inference_mode()
def predict(model: nn.Module, data: DeviceData, batch_size: int | None = None) -> torch.Tensor:
    was_training = model.training
    model.eval()
    with data.compute.autocast():
        preds = torch.cat([model(x).argmax(1) for x, _ in data.batches(batch_size or data.compute.eval_batch_size)])
    model.train(was_training)
    return preds


def accuracy(model: nn.Module, data: DeviceData) -> float:
    """Share of images classified as their label (`ca` on the clean test set)."""
    return (predict(model, data) == data.labels).float().mean().item()


def attack_metrics(model: nn.Module, triggered: DeviceData, targets: torch.Tensor) -> dict[str, float]:
    """asr: triggered images sent to the attacker's target; ra: those still given their true label."""
    preds = predict(model, triggered)
    return {
        "asr": (preds == targets.to(preds.device)).float().mean().item(),
        "ra": (preds == triggered.labels).float().mean().item(),
    }


def der(ca_before: float, asr_before: float, ca_after: float, asr_after: float) -> float:
    """Defense effectiveness rating: (max(0, asr drop) - max(0, ca drop) + 1) / 2, in [0, 1]."""
    return (max(0.0, asr_before - asr_after) - max(0.0, ca_before - ca_after) + 1.0) / 2.0
