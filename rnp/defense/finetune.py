"""Plain fine-tuning (FT) on the defender's clean images: `rnp defend --defense ft`.

The floor every backdoor-defense paper reports beside its own method: train the whole model a little
longer on the clean images, hoping the trigger's path is overwritten. Nothing is pruned, so there is no
threshold to choose; the held-out images measure what it cost. Params section `ft`
(BackdoorBench's recipe: SGD, momentum 0.9, lr 0.01 with a cosine schedule, 100 epochs).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from ..config import AugmentParams, FinetuneParams
from ..data import DeviceData
from ..metrics import accuracy
from ..training import EpochStats, run_epoch, seeded_generator
from .base import CleanData, DefendOptions, DefenseReport, prepare, register_defense

__all__ = ["finetune", "finetune_defense"]


def finetune(model: nn.Module, clean: DeviceData, p: FinetuneParams, augment: AugmentParams, gen: torch.Generator,
             on_epoch: Callable[[int, EpochStats], None] | None = None) -> nn.Module:
    """A fine-tuned copy of `model`: every parameter trained on `clean` (SGD with momentum, cosine schedule to 0)."""
    model = copy.deepcopy(model)
    model.requires_grad_(True)
    optimizer = torch.optim.SGD(model.parameters(), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=p.epochs)
    for epoch in range(1, p.epochs + 1):
        stats = run_epoch(model, clean, optimizer, p.batch_size, gen, augment)
        scheduler.step()
        if on_epoch is not None:
            on_epoch(epoch, stats)
    return model.eval()


@register_defense("ft")
def finetune_defense(model: nn.Module, data: CleanData, options: DefendOptions) -> tuple[nn.Module, DefenseReport]:
    """Plain fine-tuning on the clean images: the floor every backdoor defense is compared with"""
    cfg, progress = options.cfg, options.progress
    prep = prepare(model, data, options)
    torch.manual_seed(cfg.seed)

    bar = progress(None, "ft", cfg.ft.epochs)

    def tick(epoch: int, stats: EpochStats) -> None:
        bar.set_postfix(acc=f"{stats.acc:.3f}")
        bar.update()

    tuned = finetune(prep.original, prep.fit, cfg.ft, cfg.augment, seeded_generator(cfg.seed), tick)
    bar.close()
    before, after = accuracy(prep.original, prep.holdout), accuracy(tuned, prep.holdout)
    report = DefenseReport(
        defense="ft", verdict=f"fine-tuned {cfg.ft.epochs} epochs on {len(prep.fit)} clean images (lr {cfg.ft.lr:g}); nothing pruned",
        pruned=0, threshold=None, holdout_acc_before=before, holdout_acc_after=after, clean_acc=prep.clean_acc,
        clean_images=prep.clean_images, holdout_resolution=1 / prep.clean_images["holdout"], mask_on="none", warnings=prep.warnings,
        curve=[], selected=None, masks={},
    )
    return tuned.cpu(), report
