from __future__ import annotations

import torch

from .base import AttackContext, Trigger, blend_images, register_attack
from .blend import noise_pattern

__all__ = ["adaptive_blend", "piece_masks"]


def piece_masks(h: int, w: int, pieces: int) -> torch.Tensor:
    """(pieces, H, W) bool: the image cut into a near-square grid of `pieces` disjoint cells."""
    rows = max(1, int(round(pieces**0.5)))
    while pieces % rows:
        rows -= 1
    cols = pieces // rows
    r = torch.arange(h) * rows // h
    c = torch.arange(w) * cols // w
    cell = r[:, None] * cols + c[None, :]
    return cell[None] == torch.arange(pieces)[:, None, None]


@register_attack("adaptive_blend", modes=("all_to_one",))
def adaptive_blend(ctx: AttackContext) -> Trigger:
    """Adaptive-Blend (Qi et al. 2023): partial blended trigger in training, with cover samples; full trigger at test."""
    p = ctx.params.adaptive_blend
    _, h, w = ctx.image_shape
    pattern = noise_pattern(ctx.image_shape, ctx.gen)
    masks = piece_masks(h, w, p.pieces)
    keep = max(1, int(round(p.piece_rate * p.pieces)))

    def partial(images: torch.Tensor) -> torch.Tensor:
        # each image gets its own random subset of the pieces: no single consistent trigger to latch onto
        order = torch.rand(images.shape[0], p.pieces, generator=ctx.gen).argsort(1)[:, :keep]
        alpha = masks[order].any(1)[:, None].float() * p.alpha  # (N, 1, H, W)
        return blend_images(images, pattern, alpha)

    return Trigger(
        test=lambda images: blend_images(images, pattern, p.test_alpha),
        train=partial,
        cover=partial,
        cover_ratio=p.cover_ratio,
    )
