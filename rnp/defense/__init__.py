"""Defenses. RNP, as three pure functions on modules and tensors, and as one pipeline:

unlearn  -> maximise the loss on clean defense data until accuracy collapses (unlearn.py)
detect   -> which class does the unlearned model collapse onto? (detection.py)
recover  -> learn a [0, 1] mask per BatchNorm channel on the unlearned model (recover.py)
prune    -> zero the BN weights of low-mask channels in the original model (prune.py)
pipeline -> the steps in turn, registered as defense "rnp": what `rnp defend` and the DVC stages run (pipeline.py)
anp      -> Adversarial Neuron Pruning, RNP's baseline, registered as "anp" (anp.py)
ft       -> plain fine-tuning on the clean images, the floor, registered as "ft" (finetune.py)

A second defense goes in its own module here, registered in DEFENSES (see base.py).
"""

from . import anp, finetune, pipeline  # noqa: F401  (register "anp", "ft" and "rnp")
from .base import DEFENSES, CleanData, DefendOptions, Defense, DefenseReport, Prepared, defend, prepare, register_defense
from .detection import Detection, detect_target
from .pipeline import Unlearned, prune_step, recover_step, unlearn_step
from .prune import PruneDecision, decide_pruning
from .recover import attach_masks, bn_layers, mask_layers, recover
from .unlearn import unlearn

# what a user or a new defense needs; the research's finer tools are public in the submodules (their __all__)
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
    "Unlearned",
    "unlearn_step",
    "recover_step",
    "prune_step",
    "Detection",
    "detect_target",
    "unlearn",
    "recover",
    "decide_pruning",
    "PruneDecision",
    "mask_layers",
    "attach_masks",
    "bn_layers",
]
