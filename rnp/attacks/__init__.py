"""Attack registry: name -> function `(images, params, gen) -> triggered images` (uint8 in, uint8 out)."""

from __future__ import annotations

from ..registry import Registry

__all__ = ["ATTACKS", "get_attack", "list_attacks", "attack_targets"]

ATTACKS: Registry = Registry("attack", "attack.name")


def get_attack(name: str):
    return ATTACKS.get(name)


def list_attacks() -> list[str]:
    return ATTACKS.names()


def attack_targets(labels, mode: str, target: int, num_classes: int):
    """Labels a triggered image should get: all_to_one -> target, all_to_all -> (y + 1) mod C."""
    if mode == "all_to_one":
        return labels.new_full(labels.shape, target)
    return (labels + 1) % num_classes


from . import badnets  # noqa: E402,F401  (fills the registry)
