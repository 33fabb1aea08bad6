"""The defense registry: a defense purifies a model it is given, with a little clean data.

Every defense is a function with `rnp.defend`'s signature,

    defend(model, images, labels, mean, std, num_classes, cfg=None, device="cpu", mask_on="auto", force=False)
        -> (purified model, report dict with at least "verdict", "pruned", "holdout_acc_before", "holdout_acc_after")

registered with `@register_defense("name")` in its own module under rnp/defense/, which
rnp/defense/__init__.py imports. RNP ("rnp", rnp_defense.py) is the only one today.
"""

from __future__ import annotations

from ..registry import Registry

__all__ = ["DEFENSES", "register_defense"]

DEFENSES: Registry = Registry("defense", "rnp.defense.DEFENSES")


def register_defense(name: str):
    return DEFENSES.register(name)
