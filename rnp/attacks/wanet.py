from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import AttackContext, Trigger, register_attack

__all__ = ["wanet", "warp_field", "warp"]


def warp_field(h: int, w: int, grid: int, strength: float, gen: torch.Generator) -> torch.Tensor:
    """(1, H, W, 2) sampling grid: identity plus a smooth random field upsampled from a grid x grid control net."""
    control = torch.rand(1, 2, grid, grid, generator=gen) * 2 - 1
    control = control / control.abs().mean()
    noise = F.interpolate(control, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    identity = torch.stack((xs, ys), dim=2)[None]  # grid_sample reads (x, y)
    return (identity + strength * noise / h).clamp(-1, 1)


def warp(images: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
    out = F.grid_sample(images.float(), field.expand(images.shape[0], -1, -1, -1), align_corners=True)
    return out.round().clamp(0, 255).to(torch.uint8)


@register_attack("wanet")
def wanet(ctx: AttackContext) -> Trigger:
    """WaNet (Nguyen & Tran 2021): an imperceptible smooth warp (k 4, s 0.5); noise mode adds randomly warped, correctly labelled images."""
    p = ctx.params.wanet
    _, h, w = ctx.image_shape
    field = warp_field(h, w, p.grid, p.strength, ctx.gen)

    def noisy(images: torch.Tensor) -> torch.Tensor:
        # the "cross" images: the backdoor warp plus per-image random jitter, so only the exact warp triggers
        jitter = (torch.rand(images.shape[0], h, w, 2, generator=ctx.gen) * 2 - 1) / h
        out = F.grid_sample(images.float(), (field + jitter).clamp(-1, 1), align_corners=True)
        return out.round().clamp(0, 255).to(torch.uint8)

    return Trigger(test=lambda images: warp(images, field), cover=noisy, cover_ratio=p.cross_ratio)
