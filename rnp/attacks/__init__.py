"""Attacks: each module registers itself; its settings are the section attack.<name> in rnp/config.py.

    @register_attack("name", modes=..., clean_label=...)
    def name(ctx: AttackContext) -> Trigger: ...

Registration order (the import below) is the order of the attack.<name> sections in params.yaml and rnp/config.py.
Only the poison stage imports this package.
"""

from . import badnets, blend, trojan, sig, wanet, lc, iad, adaptive_blend  # noqa: F401, I001  (each registers itself)
from .base import (
    ATTACKS,
    AttackContext,
    Trigger,
    attack_targets,
    blend_images,
    check_fits,
    get_attack,
    list_attacks,
    register_attack,
)

__all__ = [
    "ATTACKS", "AttackContext", "Trigger", "register_attack",
    "get_attack", "list_attacks", "attack_targets", "blend_images", "check_fits",
]
