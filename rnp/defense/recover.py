from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..config import AugmentParams, RecoverParams
from ..data import DeviceData
from ..training import EpochStats, run_epoch

__all__ = ["ChannelMask", "bn_layers", "attach_masks", "recover"]


class ChannelMask(nn.Module):
    """Parametrization: BN weight -> weight * mask, one learnable mask value per channel."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.mask = nn.Parameter(torch.ones(num_channels))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def bn_layers(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """Every affine BatchNorm layer (1d/2d/3d, SyncBN) by its module name, in model order."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.affine and m.weight is not None
    }


def attach_masks(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parametrize every BN weight with an all-ones ChannelMask; works on any architecture."""
    masks = {}
    for name, bn in bn_layers(model).items():
        mask = ChannelMask(bn.num_features).to(bn.weight.device)
        parametrize.register_parametrization(bn, "weight", mask)
        masks[name] = mask.mask
    return masks


def recover(
    unlearned: nn.Module,
    defense: DeviceData,
    p: RecoverParams,
    augment: AugmentParams,
    gen: torch.Generator,
    on_epoch: Callable[[int, EpochStats, dict[str, torch.Tensor]], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Learn BN channel masks that restore clean accuracy of the unlearned model.

    Returns {bn layer name: (channels,) mask in [0, 1]}.
    """
    # 1) a frozen copy of the unlearned model with all-ones masks on every BN weight
    model = copy.deepcopy(unlearned)
    model.requires_grad_(False)
    masks = attach_masks(model)
    if not masks:
        raise ValueError("the model has no affine BatchNorm layer to mask")
    # 2) only the masks learn
    optimizer = torch.optim.SGD(masks.values(), lr=p.lr, momentum=p.momentum)

    @torch.no_grad()
    def clamp_masks() -> None:
        for m in masks.values():
            m.clamp_(0.0, 1.0)

    # 3) minimise alpha * CE, clamping to [0, 1] after every step
    for epoch in range(1, p.epochs + 1):
        stats = run_epoch(model, defense, optimizer, p.batch_size, gen, augment, loss_scale=p.alpha, after_step=clamp_masks)
        if on_epoch is not None:
            on_epoch(epoch, stats, {k: v.detach() for k, v in masks.items()})
    return {name: m.detach().clone() for name, m in masks.items()}
