from __future__ import annotations

import torch
from torch import nn

from .badnets import corner
from .base import AttackContext, Trigger, blend_images, check_fits, register_attack

__all__ = ["trojan", "key_neuron"]


def key_neuron(model: nn.Module) -> tuple[nn.Linear, int]:
    """Trojaning's neuron choice: the input of the last linear layer with the strongest outgoing weights."""
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    return head, int(head.weight.abs().sum(0).argmax())


@register_attack("trojan")
def trojan(ctx: AttackContext) -> Trigger:
    """Trojan (Liu et al. 2018): a watermark whose pixels are optimised to excite one neuron of the attacker's clean model."""
    p = ctx.params.trojan
    c, h, w = ctx.image_shape
    check_fits("attack.trojan.size", p.size, ctx.image_shape)
    glyph = torch.rand(p.size, p.size, generator=ctx.gen) < 0.6
    glyph[p.size // 2, :] = glyph[:, p.size // 2] = True  # a cross through the middle: never an empty mark
    top, left = corner("bottom_right", p.size, h, w)
    mask = torch.zeros(1, h, w)
    mask[0, top : top + p.size, left : left + p.size] = glyph.float()
    alpha = p.alpha * mask

    # optimise the watermark's colours to maximise the key neuron on clean images
    model = ctx.surrogate
    for q in model.parameters():
        q.requires_grad_(False)
    head, neuron = key_neuron(model)
    seen = {}
    hook = head.register_forward_hook(lambda _m, inputs, _o: seen.__setitem__("x", inputs[0]))
    mean, std = torch.tensor(ctx.mean).view(1, -1, 1, 1), torch.tensor(ctx.std).view(1, -1, 1, 1)
    logit = torch.zeros(1, c, h, w, requires_grad=True)
    opt = torch.optim.Adam([logit], lr=0.1)
    base = ctx.train.images[torch.randperm(len(ctx.train), generator=ctx.gen)[:64]].float() / 255
    for _ in range(p.steps):
        x = (1 - alpha) * base + alpha * torch.sigmoid(logit)
        model((x - mean) / std)
        loss = -seen["x"][:, neuron].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    hook.remove()
    pattern = (torch.sigmoid(logit.detach())[0] * 255).round()
    return Trigger(test=lambda images: blend_images(images, pattern, alpha))
