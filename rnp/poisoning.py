"""Build the attacker's and defender's data from a clean data set (pure: tensors in, tensors out)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .attacks import attack_targets, get_attack
from .config import AttackParams, DataParams
from .data import Dataset, ImageSet
from .errors import RnpError

__all__ = ["PoisonedData", "poison", "split_test", "trigger_generator"]


@dataclass(frozen=True)
class PoisonedData:
    train: ImageSet  # training set with `rate` of it triggered and relabelled
    poisoned: torch.Tensor  # (N_train,) bool: which training images were poisoned
    test_clean: ImageSet
    test_poison: ImageSet  # triggered test images (non-target for all_to_one), labels = true classes
    test_targets: torch.Tensor  # the label the attacker wants for each test_poison image
    defense: ImageSet  # clean, never poisoned: used by unlearn and recover
    holdout: ImageSet  # clean, disjoint from defense: used only to choose the pruning threshold


def trigger_generator(seed: int) -> torch.Generator:
    # The same stream for every call, so training and test images get the same trigger
    return torch.Generator().manual_seed(seed + 1)


def split_test(train: ImageSet, test_fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(len(train) * test_fraction))
    return train.subset(perm[n_test:].sort().values), train.subset(perm[:n_test].sort().values)


def poison(ds: Dataset, data: DataParams, attack: AttackParams, seed: int) -> PoisonedData:
    """Poison `attack.rate` of the training set and draw the clean defense data.

    Args:
        ds: the clean data set.
        data: test split and defense-set settings.
        attack: trigger, target and rate.
        seed: poisoning seed (the defense subset uses data.defense_seed).
    """
    if attack.target >= ds.num_classes:
        raise RnpError(f"attack.target {attack.target} must be < the {ds.num_classes} classes of {data.dataset}")
    train, test = (ds.train, ds.test) if ds.test is not None else split_test(ds.train, data.test_fraction, seed)
    apply = get_attack(attack.name)
    gen = torch.Generator().manual_seed(seed)

    # 1) choose the images to poison: non-target-class images (all_to_one), any image (all_to_all)
    eligible = torch.arange(len(train))
    if attack.mode == "all_to_one":
        eligible = eligible[train.labels != attack.target]
    n_poison = int(round(attack.rate * len(train)))
    if n_poison > len(eligible):
        raise RnpError(f"attack.rate {attack.rate} asks for {n_poison} poisoned images, only {len(eligible)} are eligible")
    chosen = eligible[torch.randperm(len(eligible), generator=gen)[:n_poison]]
    poisoned = torch.zeros(len(train), dtype=torch.bool)
    poisoned[chosen] = True

    # 2) stamp the trigger and relabel
    images, labels = train.images.clone(), train.labels.clone()
    images[chosen] = apply(images[chosen], attack, trigger_generator(seed))
    labels[chosen] = attack_targets(labels[chosen], attack.mode, attack.target, ds.num_classes)

    # 3) the triggered test set: images whose true class is not already the target
    keep = test.labels != attack.target if attack.mode == "all_to_one" else torch.ones(len(test), dtype=torch.bool)
    test_poison = ImageSet(apply(test.images[keep], attack, trigger_generator(seed)), test.labels[keep])
    test_targets = attack_targets(test_poison.labels, attack.mode, attack.target, ds.num_classes)

    # 4) the defender's clean data: never-poisoned training images, own seed, split fit / holdout
    pool = torch.arange(len(train))[~poisoned]
    size = int(data.defense_size) if data.defense_size >= 1 else int(round(data.defense_size * len(train)))
    if size > len(pool):
        raise RnpError(f"data.defense_size {size} is larger than the {len(pool)} clean training images")
    picked = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(data.defense_seed))[:size]]
    n_holdout = int(round(size * data.defense_holdout))
    if size - n_holdout < 1 or (data.defense_holdout > 0 and n_holdout < 1):
        raise RnpError(f"data.defense_size {size} is too small to hold out {data.defense_holdout} of it")
    defense = train.subset(picked[n_holdout:].sort().values)
    holdout = train.subset(picked[:n_holdout].sort().values)

    # 5) the holdout measures generalisation, so the backdoored model must never train on it
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[picked[:n_holdout]] = False
    return PoisonedData(ImageSet(images[keep], labels[keep]), poisoned[keep], test, test_poison, test_targets, defense, holdout)
