"""Build the attacker's and defender's data from a clean data set (pure: tensors in, tensors out)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attacks import AttackContext, attack_targets, get_attack
from .config import AttackParams, AugmentParams, DataParams, TrainParams
from .data import Dataset, DeviceData, ImageSet, draw_split
from .errors import RnpError
from .models import ModelSpec, create_model
from .training import fit

__all__ = ["PoisonedData", "poison", "eligible_for_poison"]


@dataclass(frozen=True)
class PoisonedData:
    train: ImageSet  # training set with `rate` of it triggered and relabelled
    poisoned: torch.Tensor  # (N_train,) bool: which training images carry the backdoor trigger
    cover: torch.Tensor  # (N_train,) bool: images the attack changed but left at their true label
    test_clean: ImageSet
    test_poison: ImageSet  # triggered test images (non-target for all_to_one), labels = true classes
    test_targets: torch.Tensor  # the label the attacker wants for each test_poison image
    test_source: torch.Tensor  # index into test_clean of each test_poison image
    defense: ImageSet  # clean, never poisoned: used by unlearn and recover
    holdout: ImageSet  # clean, disjoint from defense: used only to choose the pruning threshold


def poison(ds: Dataset, data: DataParams, attack: AttackParams, seed: int, clean: bool = False) -> PoisonedData:
    """Poison `attack.rate` of the training set and draw the clean defense data.

    Args:
        ds: the clean data set.
        data: test split and defense-set settings.
        attack: trigger, target and rate.
        seed: poisoning seed (the defense subset uses data.defense_seed).
        clean: poison nothing (a clean model's baseline), but build the triggered test set all the same.
    """
    if attack.target >= ds.num_classes:
        raise RnpError(f"attack.target {attack.target} must be < the {ds.num_classes} classes of {data.dataset}")
    build = get_attack(attack.name, attack.mode)
    train, test = (ds.train, ds.test) if ds.test is not None else ds.train.split(data.test_fraction, seed)
    spec = ModelSpec(attack.surrogate_arch, ds.num_classes, tuple(train.images.shape[1:]), ds.mean, ds.std)

    def fit_surrogate(model: nn.Module) -> None:
        data = DeviceData(train, ds.mean, ds.std, torch.device("cpu"))
        fit(model, data, TrainParams(epochs=attack.surrogate_epochs), AugmentParams(), torch.Generator().manual_seed(seed + 3))

    trigger = build(AttackContext(attack, train, ds.num_classes, ds.mean, ds.std, seed, lambda: create_model(spec), fit_surrogate))
    gen = torch.Generator().manual_seed(seed)

    # 1) choose the images to poison
    eligible = torch.arange(len(train))[eligible_for_poison(train.labels, attack, build.clean_label)]
    n_poison = 0 if clean else int(round(attack.rate * len(train)))
    if n_poison == 0 and not clean:
        raise RnpError(f"attack.rate {attack.rate} poisons 0 of the {len(train)} training images (at least {0.5 / len(train):.2g} poisons one)")
    if n_poison > len(eligible):
        which = "target-class" if build.clean_label else "eligible"
        raise RnpError(f"attack.rate {attack.rate} asks for {n_poison} poisoned images, only {len(eligible)} are {which} ({attack.name})")
    chosen = eligible[torch.randperm(len(eligible), generator=gen)[:n_poison]]
    poisoned = torch.zeros(len(train), dtype=torch.bool)
    poisoned[chosen] = True

    # 2) stamp the trigger; relabel unless the attack is clean-label
    images, labels = train.images.clone(), train.labels.clone()
    images[chosen] = trigger.poison_train(images[chosen])
    if not build.clean_label:
        labels[chosen] = attack_targets(labels[chosen], attack.mode, attack.target, ds.num_classes)

    # 3) cover images: changed by the attack, true label kept (noise / cross / cover modes)
    cover = torch.zeros(len(train), dtype=torch.bool)
    n_cover = min(int(round(trigger.cover_ratio * n_poison)), int((~poisoned).sum()))
    if trigger.cover is not None and n_cover:
        rest = torch.arange(len(train))[~poisoned]
        covered = rest[torch.randperm(len(rest), generator=gen)[:n_cover]]
        images[covered] = trigger.cover(images[covered])
        cover[covered] = True

    # 4) the triggered test set: images whose true class is not already the target
    keep = test.labels != attack.target if attack.mode == "all_to_one" else torch.ones(len(test), dtype=torch.bool)
    source = torch.arange(len(test))[keep]
    test_poison = ImageSet(trigger.test(test.images[source]), test.labels[source])
    test_targets = attack_targets(test_poison.labels, attack.mode, attack.target, ds.num_classes)

    # 5) the defender's clean data: untouched training images, own seed, split fit / holdout
    pool = torch.arange(len(train))[~(poisoned | cover)]
    size = int(data.defense_size) if data.defense_size >= 1 else int(round(data.defense_size * len(train)))
    if size > len(pool):
        raise RnpError(f"data.defense_size {size} is larger than the {len(pool)} clean training images")
    rest, held = draw_split(len(pool), size, data.defense_holdout, data.defense_seed)
    if len(rest) < 1 or (data.defense_holdout > 0 and len(held) < 1):
        raise RnpError(f"data.defense_size {size} is too small to hold out {data.defense_holdout} of it")
    defense, holdout = train.subset(pool[rest]), train.subset(pool[held])

    # 6) the holdout measures generalisation, so the backdoored model must never train on it
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[pool[held]] = False
    return PoisonedData(
        ImageSet(images[keep], labels[keep]), poisoned[keep], cover[keep], test, test_poison, test_targets, source, defense, holdout
    )


def eligible_for_poison(labels: torch.Tensor, attack: AttackParams, clean_label: bool) -> torch.Tensor:
    """Bool mask: clean-label attacks poison target-class images; all_to_one any other class; all_to_all any image."""
    if clean_label:
        return labels == attack.target
    if attack.mode == "all_to_one":
        return labels != attack.target
    return torch.ones_like(labels, dtype=torch.bool)
