"""Adversarial Neuron Pruning (Wu & Wang, NeurIPS 2021), RNP's strongest baseline: `rnp defend --defense anp`.

Every BatchNorm channel gets a mask m in [0, 1] and, while perturbed, a multiplicative noise on its weight
and bias: weight * (m + d), bias * (1 + d'). Each iteration draws a batch with replacement from the clean
images, sets the noise uniform in [-eps, eps], takes `steps` signed-gradient ascent steps on it, then one
SGD step on the masks of alpha * CE(clean) + (1 - alpha) * CE(perturbed), clamped to [0, 1]. The original
model is then pruned by rnp's sweep and clean-data choice, as RNP's masks are (reference: threshold 0.2).
Follows csdongxian/ANP_backdoor (optimize_mask_cifar.py, models/anp_batchnorm.py); params section `anp`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..config import AnpParams, AugmentParams
from ..data import DeviceData, random_crop, random_flip
from ..errors import RnpError
from ..training import seeded_generator
from .base import CleanData, DefendOptions, DefenseReport, prepare, register_defense
from .pipeline import prune_prepared
from .recover import bn_layers, channel_view

__all__ = ["NoisyMask", "NoisyBias", "anp_masks", "sampled_batch", "anp_defense", "REFERENCE_THRESHOLD"]

REFERENCE_THRESHOLD = 0.2  # prune_neuron_cifar.py --pruning-by threshold: reported beside rnp's own choice


class NoisyMask(nn.Module):
    """Parametrization of a BN weight: weight * (mask + noise) while perturbed, else weight * mask."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.mask = nn.Parameter(torch.ones(num_channels))
        self.noise = nn.Parameter(torch.zeros(num_channels))
        self.perturbed = False

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * channel_view(self.mask + self.noise if self.perturbed else self.mask, weight)


class NoisyBias(nn.Module):
    """Parametrization of a BN bias: bias * (1 + noise) while perturbed, else bias * 1."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.noise = nn.Parameter(torch.zeros(num_channels))
        self.perturbed = False

    def forward(self, bias: torch.Tensor) -> torch.Tensor:
        return bias * (1.0 + self.noise) if self.perturbed else bias * 1.0


def sampled_batch(data: DeviceData, batch_size: int, gen: torch.Generator, augment: AugmentParams) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch_size` images drawn with replacement (the reference's RandomSampler(replacement=True)), augmented, normalised."""
    idx = torch.randint(len(data), (batch_size,), generator=gen).to(data.images.device)
    x = data.images[idx]
    if augment.crop_padding:
        x = random_crop(x, augment.crop_padding, gen)
    if augment.flip:
        x = random_flip(x, gen)
    return data.normalise(x), data.labels[idx]


def anp_masks(
    model: nn.Module,
    clean: DeviceData,
    p: AnpParams,
    augment: AugmentParams,
    gen: torch.Generator,
    on_iteration: Callable[[int, float], None] | None = None,
) -> dict[str, torch.Tensor]:
    """ANP's masks, {BN layer name: (channels,) in [0, 1]}. The noise is drawn from torch's global generator
    (as the reference's init.uniform_ is), the batches and augmentation from `gen`."""
    # 1) a frozen copy; every BN weight and bias parametrized with its mask and noise
    model = copy.deepcopy(model)
    model.requires_grad_(False)
    weights, biases = {}, {}
    for name, bn in bn_layers(model).items():
        weights[name] = NoisyMask(bn.weight.shape[0]).to(bn.weight.device)
        biases[name] = NoisyBias(bn.bias.shape[0]).to(bn.bias.device)
        parametrize.register_parametrization(bn, "weight", weights[name])
        parametrize.register_parametrization(bn, "bias", biases[name])
    masks = [w.mask for w in weights.values()]
    noise = [q for name in weights for q in (weights[name].noise, biases[name].noise)]
    mask_opt = torch.optim.SGD(masks, lr=p.lr, momentum=0.9)
    noise_opt = torch.optim.SGD(noise, lr=p.eps / p.steps)

    def perturb(on: bool) -> None:
        for w, b in zip(weights.values(), biases.values()):
            w.perturbed = b.perturbed = on

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with clean.compute.autocast():
            logits = model(x)
        return nn.functional.cross_entropy(logits.float(), y), logits

    model.train()
    for it in range(1, p.iterations + 1):
        x, y = sampled_batch(clean, p.batch_size, gen, augment)
        # 2) the adversarial neuron perturbation: random start in [-eps, eps], then signed ascent steps on the loss
        if p.eps > 0:
            with torch.no_grad():
                for name in weights:
                    weights[name].noise.uniform_(-p.eps, p.eps)
                    biases[name].noise.uniform_(-p.eps, p.eps)
            for _ in range(p.steps):
                noise_opt.zero_grad()
                perturb(True)
                (-loss_of(x, y)[0]).backward()
                for q in noise:
                    q.grad = torch.sign(q.grad)
                noise_opt.step()
        # 3) one step on the masks: alpha * clean loss + (1 - alpha) * perturbed loss, masks clamped to [0, 1]
        mask_opt.zero_grad()
        loss_rob = 0.0
        if p.eps > 0:
            perturb(True)
            loss_rob = loss_of(x, y)[0]
        perturb(False)
        loss_nat, logits = loss_of(x, y)
        loss = p.alpha * loss_nat + (1 - p.alpha) * loss_rob
        loss.backward()
        mask_opt.step()
        with torch.no_grad():
            for m in masks:
                m.clamp_(0.0, 1.0)
        if on_iteration is not None:
            on_iteration(it, loss.item())
    return {name: w.mask.detach().clone() for name, w in weights.items()}


@register_defense("anp")
def anp_defense(model: nn.Module, data: CleanData, options: DefendOptions) -> tuple[nn.Module, DefenseReport]:
    """Adversarial Neuron Pruning (Wu & Wang, NeurIPS 2021): masks robust to adversarial neuron noise, prune the original"""
    if not bn_layers(model):
        raise RnpError("defense anp perturbs and masks BatchNorm channels and the model has none (--defense rnp --mask-on norm or conv "
                       "masks other layers)")
    cfg, progress = options.cfg, options.progress
    prep = prepare(model, data, options)
    torch.manual_seed(cfg.seed)

    bar = progress(None, "anp", cfg.anp.iterations)

    def tick(it: int, loss: float) -> None:
        if it % 50 == 0 or it == cfg.anp.iterations:
            bar.set_postfix(loss=f"{loss:.3f}")
        bar.update()

    masks = anp_masks(prep.original, prep.fit, cfg.anp, cfg.augment, seeded_generator(cfg.seed), tick)
    bar.close()
    purified, decision = prune_prepared(prep, masks, "bn", options, None)
    at_reference = [r for r in decision.curve if r["threshold"] <= REFERENCE_THRESHOLD + 1e-9]
    flat = torch.cat([m.flatten() for m in masks.values()])
    reference = {"threshold": REFERENCE_THRESHOLD, "pruned": int((flat <= REFERENCE_THRESHOLD).sum()),
                 "holdout_acc": at_reference[-1]["holdout_acc"] if at_reference else None}
    report = DefenseReport.of_pruning("anp", f"ANP ({cfg.anp.iterations} iterations, eps {cfg.anp.eps:g}): {decision.why}", prep, decision,
                                      masks, "bn", prep.warnings, extra={"reference_threshold": reference})
    return purified.cpu(), report
