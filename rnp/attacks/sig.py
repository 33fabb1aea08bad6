from __future__ import annotations

import math

import torch

from ..sections import Positive, Section
from .base import AttackContext, Trigger, register_attack

__all__ = ["SigParams", "sig", "sine_signal"]


def sine_signal(shape: tuple[int, int, int], delta: float, frequency: float) -> torch.Tensor:
    """v(i, j) = delta * sin(2 pi j f / W), the same on every row and channel."""
    c, h, w = shape
    j = torch.arange(w, dtype=torch.float32)
    return (delta * torch.sin(2 * math.pi * j * frequency / w)).expand(c, h, w)


class SigParams(Section):
    delta: Positive = 20.0  # signal amplitude on the 0..255 scale (Barni et al.: 20)
    frequency: Positive = 6.0  # sine periods across the image width (Barni et al.: 6)


@register_attack("sig", SigParams, modes=("all_to_one",), clean_label=True)
def sig(ctx: AttackContext) -> Trigger:
    """SIG (Barni et al. 2019): clean-label; a horizontal sinusoid (delta 20, f 6) added to target-class images."""
    signal = sine_signal(ctx.image_shape, ctx.params.sig.delta, ctx.params.sig.frequency)

    def stamp(images: torch.Tensor) -> torch.Tensor:
        return (images.float() + signal).round().clamp(0, 255).to(torch.uint8)

    return Trigger(test=stamp)
