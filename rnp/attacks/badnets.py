from __future__ import annotations

import torch

from .base import AttackContext, Trigger, check_fits, register_attack

__all__ = ["badnets", "badnets_patch", "corner", "stamp_patch"]


def badnets_patch(size: int, channels: int, pattern: str, gen: torch.Generator) -> torch.Tensor:
    """The (C, size, size) uint8 patch."""
    if pattern == "white":
        return torch.full((channels, size, size), 255, dtype=torch.uint8)
    if pattern == "black":
        return torch.zeros((channels, size, size), dtype=torch.uint8)
    if pattern == "random":
        return torch.randint(0, 256, (channels, size, size), generator=gen, dtype=torch.uint8)
    ij = torch.arange(size)
    checker = ((ij[:, None] + ij[None, :]) % 2 == 0).to(torch.uint8) * 255  # white on the diagonal
    return checker.expand(channels, size, size).clone()


def corner(position: str, size: int, h: int, w: int) -> tuple[int, int]:
    """Top-left pixel of a size x size square at `position`."""
    return {
        "top_left": (0, 0),
        "top_right": (0, w - size),
        "bottom_left": (h - size, 0),
        "bottom_right": (h - size, w - size),
        "center": ((h - size) // 2, (w - size) // 2),
    }[position]


def stamp_patch(images: torch.Tensor, patch: torch.Tensor, position: str) -> torch.Tensor:
    size = patch.shape[-1]
    top, left = corner(position, size, *images.shape[-2:])
    out = images.clone()
    out[:, :, top : top + size, left : left + size] = patch.to(images.device)
    return out


@register_attack("badnets")
def badnets(ctx: AttackContext) -> Trigger:
    """BadNets (Gu et al. 2017): a fixed square patch stamped on the image; size, position, pattern configurable."""
    p = ctx.params.badnets
    check_fits("attack.badnets.size", p.size, ctx.image_shape)
    patch = badnets_patch(p.size, ctx.image_shape[0], p.pattern, ctx.gen)
    return Trigger(test=lambda images: stamp_patch(images, patch, p.position))
