from __future__ import annotations

import math

import torch

from .base import AttackContext, Trigger, register_attack

__all__ = ["sig", "sine_signal"]


def sine_signal(shape: tuple[int, int, int], delta: float, frequency: float) -> torch.Tensor:
    """v(i, j) = delta * sin(2 pi j f / W), the same on every row and channel."""
    c, h, w = shape
    j = torch.arange(w, dtype=torch.float32)
    return (delta * torch.sin(2 * math.pi * j * frequency / w)).expand(c, h, w)


@register_attack("sig", modes=("all_to_one",), clean_label=True)
def sig(ctx: AttackContext) -> Trigger:
    """SIG (Barni et al. 2019): clean-label; a horizontal sinusoid (delta 20, f 6) added to target-class images."""
    signal = sine_signal(ctx.image_shape, ctx.params.sig.delta, ctx.params.sig.frequency)

    def stamp(images: torch.Tensor) -> torch.Tensor:
        return (images.float() + signal).round().clamp(0, 255).to(torch.uint8)

    return Trigger(test=stamp)
