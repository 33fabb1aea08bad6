from __future__ import annotations

import torch
from torch import nn

from .badnets import badnets_patch, stamp_patch
from .base import AttackContext, Trigger, check_fits, register_attack

__all__ = ["lc", "pgd_away"]


def pgd_away(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, steps: int, mean, std, background: bool = True
) -> torch.Tensor:
    """L-inf PGD that pushes images away from their true labels (uint8 in and out, eps on the 0..255 scale).

    background=False leaves pixels that are 0 in every channel untouched.
    """
    mean = torch.tensor(mean).view(1, -1, 1, 1)
    std = torch.tensor(std).view(1, -1, 1, 1)
    x0, eps = images.float() / 255, eps / 255
    where = torch.ones_like(x0) if background else (images > 0).any(1, keepdim=True).float().expand_as(x0)
    delta, step = torch.zeros_like(x0), 2.5 * eps / steps
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = nn.functional.cross_entropy(model((x0 + delta - mean) / std), labels)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + step * grad.sign() * where).clamp(-eps, eps)
        delta = (x0 + delta).clamp(0, 1) - x0
    return ((x0 + delta) * 255).round().to(torch.uint8)


@register_attack("lc", modes=("all_to_one",), clean_label=True)
def lc(ctx: AttackContext) -> Trigger:
    """Label-consistent (Turner et al. 2019): target-class images made hard by PGD on a clean surrogate, plus four-corner checkerboards."""
    p = ctx.params.lc
    check_fits("attack.lc.size", p.size, ctx.image_shape)
    patch = badnets_patch(p.size, ctx.image_shape[0], "checkerboard", ctx.gen)

    def corners(images: torch.Tensor) -> torch.Tensor:
        for position in ("top_left", "top_right", "bottom_left", "bottom_right"):
            images = stamp_patch(images, patch, position)
        return images

    def poison(images: torch.Tensor) -> torch.Tensor:
        # clean-label: these are target-class images and keep that label
        labels = torch.full((images.shape[0],), ctx.params.target, dtype=torch.long)
        hard = torch.cat([pgd_away(ctx.surrogate, x, y, p.eps, p.steps, ctx.mean, ctx.std, p.perturb_background)
                          for x, y in zip(images.split(256), labels.split(256))])
        return corners(hard)

    return Trigger(test=corners, train=poison)
