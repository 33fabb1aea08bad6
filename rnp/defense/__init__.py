"""RNP, as three pure functions on modules and tensors.

unlearn  -> maximise the loss on clean defense data until accuracy collapses
recover  -> learn a [0, 1] mask per BatchNorm channel on the unlearned model
prune    -> zero the BN weights of low-mask channels in the original model
"""

from .prune import PrunePoint, apply_pruning, oracle_point, pruning_sets, select_auto
from .recover import attach_masks, bn_layers, recover
from .unlearn import unlearn

__all__ = [
    "unlearn",
    "recover",
    "attach_masks",
    "bn_layers",
    "pruning_sets",
    "apply_pruning",
    "select_auto",
    "oracle_point",
    "PrunePoint",
]
