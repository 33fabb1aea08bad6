from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..config import AugmentParams, MaskOn, RecoverParams, choices
from ..data import DeviceData
from ..errors import RnpError
from ..training import EpochStats, run_epoch

__all__ = ["ChannelMask", "MASK_ON", "ZERO_MASKS_WARN", "bn_layers", "mask_layers", "resolve_mask_on", "channel_view", "attach_masks",
           "recover", "zero_masks_warning"]

MASK_ON = choices(MaskOn)
# Where RNP removed a backdoor at little cost, recovery set 0.25 % (the reference's log) and 1.3 % of the masks to 0;
# in every one of the benchmark's cells where it could not, and on the clean model trained the same way as the 1.3 %
# one (pruning cost it 14 points), 2.5-26 % (docs/quality.md, "What the masks say"). The line goes between.
ZERO_MASKS_WARN = 0.02
NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def zero_masks_warning(zero: int, total: int) -> str | None:
    """Recovery switched off more channels than it does where RNP works: say what that predicts, from the masks alone."""
    if total == 0 or zero / total <= ZERO_MASKS_WARN:
        return None
    return (f"recovery set {zero} of {total} masks ({zero / total:.1%}) to 0; where RNP purified a model at little cost it set "
            f"0.25-1.3 % (docs/quality.md, 'What the masks say'), so expect pruning to cost clean accuracy or leave the backdoor. "
            f"Models trained briefly, without augmentation, or narrow do this (the reference trains ResNet-18 for 80 epochs with "
            f"crop and flip)")


def channel_view(mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A (C,) per-channel vector shaped to broadcast over a weight whose first dim is the channel."""
    return mask.view(-1, *([1] * (weight.dim() - 1)))


class ChannelMask(nn.Module):
    """Parametrization: weight -> weight * mask, one learnable mask value per output channel."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.mask = nn.Parameter(torch.ones(num_channels))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * channel_view(self.mask, weight)


def bn_layers(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """Every affine BatchNorm layer (1d/2d/3d, SyncBN) by its module name, in model order."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.affine and m.weight is not None
    }


def mask_layers(model: nn.Module, on: str = "bn") -> dict[str, nn.Module]:
    """The layers whose weight gets one mask per output channel, by module name, in model order.

    bn: affine BatchNorm (RNP as published); norm: the affine weight of any normalisation
    layer (BatchNorm, GroupNorm, LayerNorm); conv: the output channels of every convolution,
    for models without normalisation; auto: bn if there is any, else norm, else conv.
    """
    on = resolve_mask_on(model, on)
    if on == "bn":
        return bn_layers(model)
    if on == "norm":
        return {n: m for n, m in model.named_modules() if isinstance(m, NORMS) and getattr(m, "weight", None) is not None}
    if on == "conv":
        return {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)}
    raise ValueError(f"mask_on must be one of {', '.join(MASK_ON)}, got {on!r}")


def resolve_mask_on(model: nn.Module, on: str) -> str:
    """`auto` -> the first of bn, norm, conv that the model has layers for; any other kind unchanged."""
    if on != "auto":
        return on
    return next((kind for kind in ("bn", "norm", "conv") if mask_layers(model, kind)), "conv")


def attach_masks(model: nn.Module, on: str = "bn") -> dict[str, nn.Parameter]:
    """Parametrize each maskable layer's weight with an all-ones ChannelMask; works on any architecture."""
    masks = {}
    for name, layer in mask_layers(model, on).items():
        mask = ChannelMask(layer.weight.shape[0]).to(layer.weight.device)
        parametrize.register_parametrization(layer, "weight", mask)
        masks[name] = mask.mask
    return masks


def recover(
    unlearned: nn.Module,
    defense: DeviceData,
    p: RecoverParams,
    augment: AugmentParams,
    gen: torch.Generator,
    on_epoch: Callable[[int, EpochStats, dict[str, torch.Tensor]], None] | None = None,
    mask_on: str = "bn",
    bn_stats: str = "batch",
) -> dict[str, torch.Tensor]:
    """Learn channel masks (BN by default, see `mask_layers`) that restore clean accuracy of the unlearned model.

    Returns {layer name: (channels,) mask in [0, 1]}. `bn_stats` "batch" (as published) normalises with each
    batch's statistics (train mode); "running" with the unlearned model's (eval mode), a research variant
    that did worse (docs/levers.md).
    """
    # 1) a frozen copy of the unlearned model with all-ones masks on every maskable weight
    model = copy.deepcopy(unlearned)
    model.requires_grad_(False)
    masks = attach_masks(model, mask_on)
    if not masks:
        raise RnpError(f"the model has no {mask_on} layer to mask (auto picks bn, norm or conv, whichever it has)")
    # 2) only the masks learn
    optimizer = torch.optim.SGD(masks.values(), lr=p.lr, momentum=p.momentum)

    @torch.no_grad()
    def clamp_masks() -> None:
        for m in masks.values():
            m.clamp_(0.0, 1.0)

    # 3) minimise alpha * CE, clamping to [0, 1] after every step
    for epoch in range(1, p.epochs + 1):
        stats = run_epoch(model, defense, optimizer, p.batch_size, gen, augment, loss_scale=p.alpha, after_step=clamp_masks,
                          train_mode=bn_stats == "batch")
        if on_epoch is not None:
            on_epoch(epoch, stats, {k: v.detach() for k, v in masks.items()})
    return {name: m.detach().clone() for name, m in masks.items()}
