"""The attack registry and the types every attack shares.

An attack is a function `build(ctx) -> Trigger`, registered with the target modes it
supports and whether it is clean-label; its settings are the params section attack.<name>
(rnp/config.py). `build` fits whatever the attack needs (a pattern, a warping field, a
trigger generator trained against a surrogate model) from the clean training set,
deterministically from the seed; the returned Trigger then stamps uint8 images. Models
and training come in through the context (`new_surrogate`, `fit_surrogate`): attacks
import neither, so only the poison stage depends on them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..data import ImageSet
from ..errors import RnpError
from ..registry import Registry

if TYPE_CHECKING:
    from ..config import AttackParams

__all__ = [
    "ATTACKS",
    "AttackContext",
    "Trigger",
    "register_attack",
    "get_attack",
    "list_attacks",
    "attack_targets",
    "blend_images",
    "check_fits",
]

ATTACKS: Registry = Registry("attack", "attack.name")
BOTH_MODES = ("all_to_one", "all_to_all")

Stamp = Callable[[torch.Tensor], torch.Tensor]  # (N, C, H, W) uint8 -> same shape uint8


@dataclass(frozen=True)
class Trigger:
    """A fitted attack: how it changes training and test images."""

    test: Stamp  # the trigger the attacker uses at inference
    train: Stamp | None = None  # training-time variant (default: `test`), e.g. adaptive-blend's partial trigger
    cover: Stamp | None = None  # images changed but kept at their true label (WaNet noise, IAD cross, adaptive cover)
    cover_ratio: float = 0.0  # cover images per poisoned image

    def poison_train(self, images: torch.Tensor) -> torch.Tensor:
        return (self.train or self.test)(images)


@dataclass
class AttackContext:
    """What an attack may learn its trigger from: the clean training set, never the test set."""

    params: AttackParams
    train: ImageSet
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    seed: int
    new_surrogate: Callable[[], nn.Module]  # an untrained model of attack.surrogate_arch for these images
    fit_surrogate: Callable[[nn.Module], None]  # trains it on the clean training set for attack.surrogate_epochs
    gen: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        # One stream for the whole attack, so training and test images get the same trigger
        self.gen = torch.Generator().manual_seed(self.seed + 1)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])

    @cached_property
    def surrogate(self) -> nn.Module:
        """A clean model of `attack.surrogate_arch`, trained by the attacker (trojan, lc)."""
        torch.manual_seed(self.seed + 2)
        model = self.new_surrogate()
        self.fit_surrogate(model)
        return model.eval()


def register_attack(name: str, modes: tuple[str, ...] = BOTH_MODES, clean_label: bool = False):
    """Register `build` as attack `name`; its settings, if any, are the section attack.<name> of rnp/config.py."""

    def add(build: Callable[[AttackContext], Trigger]):
        build.modes, build.clean_label = modes, clean_label
        return ATTACKS.register(name)(build)

    return add


def get_attack(name: str, mode: str | None = None):
    build = ATTACKS.get(name)
    if mode is not None and mode not in build.modes:
        raise RnpError(f"attack {name} does not support attack.mode {mode} (supported: {', '.join(build.modes)})")
    return build


def list_attacks() -> list[str]:
    return ATTACKS.names()


def attack_targets(labels, mode: str, target: int, num_classes: int):
    """Labels a triggered image should get: all_to_one -> target, all_to_all -> (y + 1) mod C."""
    if mode == "all_to_one":
        return labels.new_full(labels.shape, target)
    return (labels + 1) % num_classes


def blend_images(images: torch.Tensor, pattern: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
    """(1 - alpha) * image + alpha * pattern, in float, rounded back to uint8. alpha may be a per-pixel map."""
    out = (1 - alpha) * images.float() + alpha * pattern.float()
    return out.round().clamp(0, 255).to(torch.uint8)


def check_fits(key: str, size: int, shape: tuple[int, ...]) -> None:
    h, w = shape[-2:]
    if size > min(h, w):
        raise RnpError(f"{key} {size} is larger than the {h}x{w} images")

