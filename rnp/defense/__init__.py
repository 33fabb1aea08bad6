"""Defenses. RNP, as three pure functions on modules and tensors, and as one call:

unlearn  -> maximise the loss on clean defense data until accuracy collapses
recover  -> learn a [0, 1] mask per BatchNorm channel on the unlearned model
prune    -> zero the BN weights of low-mask channels in the original model
defend   -> all three on a user's model, with detection (rnp_defense.py, registered as "rnp")

A second defense goes in its own module here, registered in DEFENSES (see base.py).
"""

from . import rnp_defense  # noqa: F401  (registers "rnp")
from .base import DEFENSES, register_defense
from .prune import (
    PruneDecision,
    apply_pruning,
    choose_point,
    classifier,
    constant_fitter,
    decide_pruning,
    oracle_point,
    prune_at,
    pruning_sets,
    refit_classifier_bias,
    select_auto,
    sweep_curve,
    sweep_points,
)
from .recover import MASK_ON, attach_masks, bn_layers, mask_layers, recover, resolve_mask_on, zero_masks_warning
from .rnp_defense import defend, detect_target, holdout_warning
from .unlearn import unlearn

__all__ = [
    "DEFENSES",
    "register_defense",
    "defend",
    "detect_target",
    "holdout_warning",
    "zero_masks_warning",
    "unlearn",
    "recover",
    "attach_masks",
    "bn_layers",
    "mask_layers",
    "resolve_mask_on",
    "MASK_ON",
    "pruning_sets",
    "apply_pruning",
    "prune_at",
    "select_auto",
    "oracle_point",
    "sweep_curve",
    "sweep_points",
    "PruneDecision",
    "decide_pruning",
    "choose_point",
    "constant_fitter",
    "classifier",
    "refit_classifier_bias",
]
