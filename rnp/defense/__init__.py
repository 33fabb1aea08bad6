"""Defenses. RNP, as three pure functions on modules and tensors, and as one pipeline:

unlearn  -> maximise the loss on clean defense data until accuracy collapses (unlearn.py)
detect   -> which class does the unlearned model collapse onto? (detection.py)
recover  -> learn a [0, 1] mask per BatchNorm channel on the unlearned model (recover.py)
prune    -> zero the BN weights of low-mask channels in the original model (prune.py)
pipeline -> the steps in turn, registered as defense "rnp": what `rnp defend` and the DVC stages run (pipeline.py)

A second defense goes in its own module here, registered in DEFENSES (see base.py).
"""

from . import pipeline  # noqa: F401  (registers "rnp")
from .base import (
    DEFENSES,
    CleanData,
    DefendOptions,
    Defense,
    DefenseReport,
    Prepared,
    defend,
    holdout_warning,
    prepare,
    register_defense,
)
from .detection import (
    COLLAPSED,
    DETECTION_THRESHOLD,
    EMERGE_LEAD,
    EMERGE_LEVEL,
    Detection,
    detect_target,
    emerged_alone,
    probe_predictions,
    sink_scores,
)
from .pipeline import Unlearned, prune_step, recover_step, unlearn_step
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
from .recover import MASK_ON, ZERO_MASKS_WARN, attach_masks, bn_layers, channel_view, mask_layers, recover, resolve_mask_on, zero_masks_warning
from .unlearn import unlearn

__all__ = [
    "DEFENSES",
    "register_defense",
    "defend",
    "Defense",
    "CleanData",
    "DefendOptions",
    "DefenseReport",
    "Prepared",
    "prepare",
    "Detection",
    "detect_target",
    "emerged_alone",
    "probe_predictions",
    "sink_scores",
    "COLLAPSED",
    "DETECTION_THRESHOLD",
    "EMERGE_LEAD",
    "EMERGE_LEVEL",
    "Unlearned",
    "unlearn_step",
    "recover_step",
    "prune_step",
    "holdout_warning",
    "zero_masks_warning",
    "ZERO_MASKS_WARN",
    "channel_view",
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
