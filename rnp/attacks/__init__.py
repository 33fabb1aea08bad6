"""Attacks: each module defines its params section and registers itself; adding an attack touches one file.

    @register_attack("name", NameParams, modes=..., clean_label=...)
    def name(ctx: AttackContext) -> Trigger: ...

Registration order (the import below) is the order of the attack.<name> sections in params.yaml.
"""

from . import badnets, blend, trojan, sig, wanet, lc, iad, adaptive_blend  # noqa: F401, I001  (each registers itself)
from .base import (
    ATTACKS,
    AttackContext,
    Trigger,
    attack_sections,
    attack_targets,
    blend_images,
    check_fits,
    get_attack,
    list_attacks,
    register_attack,
)

__all__ = [
    "ATTACKS", "AttackContext", "Trigger", "register_attack", "attack_sections",
    "get_attack", "list_attacks", "attack_targets", "blend_images", "check_fits",
]
