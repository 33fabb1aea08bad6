from __future__ import annotations

import torch
from torch import nn

from .base import AttackContext, Trigger, attack_targets, register_attack

__all__ = ["iad", "TriggerNet"]

MASK_NORM_WEIGHT = 100.0  # Nguyen & Tran 2020: lambda_norm


class TriggerNet(nn.Module):
    """Fully convolutional image -> map net (any image size); tanh output rescaled to [0, 1]."""

    def __init__(self, c_in: int, c_out: int, width: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(c_in, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, c_out, 3, padding=1),
        )

    def forward(self, x):
        return (torch.tanh(self.net(x)) + 1) / 2


@register_attack("iad")
def iad(ctx: AttackContext) -> Trigger:
    """Input-aware dynamic (Nguyen & Tran 2020): a trained generator gives every image its own trigger; cross-trigger images keep their label."""
    p, params = ctx.params.iad, ctx.params
    c = ctx.image_shape[0]
    torch.manual_seed(ctx.seed + 4)
    pattern_net, mask_net = TriggerNet(c, c), TriggerNet(c, 1)
    classifier = ctx.new_surrogate()
    mean, std = torch.tensor(ctx.mean).view(1, -1, 1, 1), torch.tensor(ctx.std).view(1, -1, 1, 1)

    def apply(x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """x in [0, 1] with the trigger that `source` images generate."""
        m = mask_net(source)
        return x + m * (pattern_net(source) - x)

    opt_c = torch.optim.SGD(classifier.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    opt_g = torch.optim.Adam([*pattern_net.parameters(), *mask_net.parameters()], lr=p.lr, betas=(0.5, 0.9))
    images, labels = ctx.train.images.float() / 255, ctx.train.labels
    n_bd = max(1, int(round(params.rate * 64)))
    n_cross = int(round(p.cross_ratio * n_bd))
    for _ in range(p.epochs):
        order = torch.randperm(len(images), generator=ctx.gen)
        for idx in order.split(64):
            x, y = images[idx], labels[idx]
            other = x[torch.randperm(len(x), generator=ctx.gen)]
            bd, cross = slice(0, n_bd), slice(n_bd, n_bd + n_cross)
            x_in = torch.cat([apply(x[bd], x[bd]), apply(x[cross], other[cross]), x[n_bd + n_cross :]])
            y_in = torch.cat([attack_targets(y[bd], params.mode, params.target, ctx.num_classes), y[n_bd:]])
            ce = nn.functional.cross_entropy(classifier((x_in - mean) / std), y_in)
            # diversity: different images must get different triggers
            dist_x = (x - other).flatten(1).pow(2).mean(1).sqrt()
            dist_t = (pattern_net(x) - pattern_net(other)).flatten(1).pow(2).mean(1).sqrt()
            diversity = (dist_x / (dist_t + 1e-3)).mean()
            mask_norm = torch.relu(mask_net(x).mean() - p.mask_density)
            loss = ce + p.diversity * diversity + MASK_NORM_WEIGHT * mask_norm
            opt_c.zero_grad()
            opt_g.zero_grad()
            loss.backward()
            opt_c.step()
            opt_g.step()
    pattern_net.eval()
    mask_net.eval()

    @torch.no_grad()
    def stamp(images: torch.Tensor, shuffle: bool = False) -> torch.Tensor:
        x = images.float() / 255
        source = x[torch.randperm(len(x), generator=ctx.gen)] if shuffle else x
        out = torch.cat([apply(a, b) for a, b in zip(x.split(512), source.split(512))])
        return (out * 255).round().clamp(0, 255).to(torch.uint8)

    return Trigger(test=stamp, cover=lambda images: stamp(images, shuffle=True), cover_ratio=p.cross_ratio)
