from __future__ import annotations

import torch

from .base import AttackContext, Trigger, blend_images, register_attack

__all__ = ["blend", "noise_pattern"]


def noise_pattern(shape: tuple[int, int, int], gen: torch.Generator) -> torch.Tensor:
    """A uniform-noise image, the generated stand-in for Chen et al.'s Hello Kitty picture."""
    return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)


@register_attack("blend")
def blend(ctx: AttackContext) -> Trigger:
    """Blend (Chen et al. 2017): a full-image noise pattern blended in at ratio alpha (0.2)."""
    pattern = noise_pattern(ctx.image_shape, ctx.gen)
    alpha = ctx.params.blend.alpha
    return Trigger(test=lambda images: blend_images(images, pattern, alpha))
