from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from ..config import AugmentParams, UnlearnParams
from ..data import DeviceData
from ..training import EpochStats, run_epoch

__all__ = ["unlearn"]


def unlearn(
    model: nn.Module,
    defense: DeviceData,
    p: UnlearnParams,
    augment: AugmentParams,
    gen: torch.Generator,
    on_epoch: Callable[[int, EpochStats, nn.Module], None] | None = None,
) -> tuple[nn.Module, int]:
    """Gradient ascent on clean data until the running defense accuracy is <= p.clean_threshold.

    Returns the unlearned copy and the number of epochs it took. The input model is untouched.
    """
    # 1) a copy, every parameter trainable
    unlearned = copy.deepcopy(model)
    for param in unlearned.parameters():
        param.requires_grad_(True)
    # 2) the reference's optimiser and schedule
    optimizer = torch.optim.SGD(unlearned.parameters(), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=p.milestones, gamma=p.gamma)
    # 3) ascend on -CE, epoch by epoch, until clean accuracy collapses
    for epoch in range(1, p.max_epochs + 1):
        stats = run_epoch(
            unlearned, defense, optimizer, p.batch_size, gen, augment, loss_scale=-1.0, clip_grad_norm=p.clip_grad_norm
        )
        scheduler.step()
        if on_epoch is not None:
            on_epoch(epoch, stats, unlearned)
        if stats.acc <= p.clean_threshold:
            break
    return unlearned, epoch
