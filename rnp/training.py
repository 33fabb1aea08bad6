"""One epoch of (mini-batch) optimisation, shared by train, unlearn and recover."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .compute import compile_or_eager
from .config import AugmentParams, TrainParams
from .data import DeviceData

__all__ = ["EpochStats", "run_epoch", "seeded_generator", "fit", "fit_parameters"]


@dataclass(frozen=True)
class EpochStats:
    loss: float  # mean cross-entropy over the epoch (before any sign flip or scaling)
    acc: float  # running training accuracy over the epoch


def seeded_generator(seed: int) -> torch.Generator:
    # CPU generator for batch order and augmentation: identical streams on any device
    return torch.Generator().manual_seed(seed)


def run_epoch(
    model: nn.Module,
    data: DeviceData,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    gen: torch.Generator,
    augment: AugmentParams,
    loss_scale: float = 1.0,
    clip_grad_norm: float = 0.0,
    after_step: Callable[[], None] | None = None,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    train_mode: bool = True,
) -> EpochStats:
    """Minimise `loss_scale * CE` for one pass over `data`, in train mode unless `train_mode` is False.

    loss_scale -1 is gradient ascent (unlearn); 0.2 is RNP's alpha (recover).
    `forward` replaces `model(x)`, e.g. with a compiled version of it. train_mode=False keeps
    BatchNorm on its running statistics (and dropout off) while the optimizer still steps.
    """
    forward = forward or model
    model.train(train_mode)
    total_loss = torch.zeros((), device=data.images.device)
    correct = torch.zeros((), device=data.images.device, dtype=torch.long)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for x, y in data.batches(batch_size, gen, augment.crop_padding, augment.flip):
        with data.compute.autocast():
            logits = forward(x)
        loss = nn.functional.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        (loss_scale * loss).backward()
        if clip_grad_norm > 0:
            nn.utils.clip_grad_norm_(params, clip_grad_norm)
        optimizer.step()
        if after_step is not None:
            after_step()
        total_loss += loss.detach() * y.shape[0]
        correct += (logits.argmax(1) == y).sum()
    n = len(data)
    return EpochStats(loss=total_loss.item() / n, acc=correct.item() / n)


def fit(
    model: nn.Module,
    data: DeviceData,
    p: TrainParams,
    augment: AugmentParams,
    gen: torch.Generator,
    on_epoch: Callable[[int, EpochStats], None] | None = None,
) -> nn.Module:
    """Plain supervised training: SGD with Nesterov momentum and a cosine schedule over p.epochs."""
    optimizer = torch.optim.SGD(model.parameters(), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay, nesterov=True)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=p.epochs)
    forward = compile_or_eager(model) if p.compile else model
    for epoch in range(1, p.epochs + 1):
        stats = run_epoch(model, data, optimizer, p.batch_size, gen, augment, forward=forward)
        scheduler.step()
        if on_epoch is not None:
            on_epoch(epoch, stats)
    return model


def fit_parameters(
    model: nn.Module,
    params: list[nn.Parameter],
    data: DeviceData,
    epochs: int,
    lr: float,
    gen: torch.Generator,
    after_step: Callable[[], None] | None = None,
) -> None:
    """Adam on `params` alone: every other parameter frozen meanwhile, BN on its running statistics, no augmentation."""
    trainable = [q for q in model.parameters() if q.requires_grad]
    for q in trainable:
        q.requires_grad_(False)
    for q in params:
        q.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    try:
        for _ in range(epochs):
            run_epoch(model, data, optimizer, 128, gen, AugmentParams(), after_step=after_step, train_mode=False)
    finally:
        for q in params:
            q.requires_grad_(False)
        for q in trainable:
            q.requires_grad_(True)
        model.eval()
