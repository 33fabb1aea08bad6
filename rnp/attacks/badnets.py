from __future__ import annotations

import torch

from ..config import AttackParams
from ..errors import RnpError
from . import ATTACKS

__all__ = ["badnets", "badnets_patch"]


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


def _corner(position: str, size: int, h: int, w: int) -> tuple[int, int]:
    return {
        "top_left": (0, 0),
        "top_right": (0, w - size),
        "bottom_left": (h - size, 0),
        "bottom_right": (h - size, w - size),
        "center": ((h - size) // 2, (w - size) // 2),
    }[position]


@ATTACKS.register("badnets")
def badnets(images: torch.Tensor, params: AttackParams, gen: torch.Generator) -> torch.Tensor:
    """BadNets (Gu et al. 2017): a fixed square patch stamped on the image; size, position, pattern configurable."""
    _, c, h, w = images.shape
    if params.size > min(h, w):
        raise RnpError(f"attack.size {params.size} is larger than the {h}x{w} images")
    patch = badnets_patch(params.size, c, params.pattern, gen).to(images.device)
    top, left = _corner(params.position, params.size, h, w)
    out = images.clone()
    out[:, :, top : top + params.size, left : left + params.size] = patch
    return out
