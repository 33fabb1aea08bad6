"""Named params sets: dotted overrides of params.yaml for `dvc exp run -S`, the benchmarks and tests.

    dvc exp run -n fashion-mnist $(rnp preset fashion_mnist)
"""

from __future__ import annotations

from .errors import RnpError

__all__ = ["PRESETS", "get_preset"]

PRESETS: dict[str, dict[str, object]] = {
    # The RNP paper's ratios on real images, offline: 60,000 training images, 10 % poisoned, 1 % clean
    # defense data (600 images: 396 for unlearn/recover, 204 held out for the threshold), 28x28 padded to 32x32,
    # the reference's unlearn/recover rates and batches (docs/faithfulness.md).
    "fashion_mnist": {
        "data.dataset": "fashion_mnist",
        "data.defense_size": 0.01,
        "attack.rate": 0.1,
        "attack.badnets.size": 3,  # the paper's 3x3 patch
        "attack.surrogate_epochs": 2,  # trojan, lc, iad: on 60,000 images two epochs already give a usable surrogate
        "attack.iad.epochs": 2,
        "model.arch": "wrn16_1",  # a residual network a CPU trains in minutes; the paper's ResNet-18 is a GPU run (docs/quality.md)
        "train.epochs": 6,
        "train.batch_size": 128,
        "unlearn.lr": 0.01,  # reference
        "unlearn.batch_size": 128,  # reference
        "recover.lr": 0.2,  # reference
        "recover.batch_size": 128,  # reference
    },
}


def get_preset(name: str) -> dict[str, object]:
    if name not in PRESETS:
        raise RnpError(f"unknown preset {name!r} (valid: {', '.join(sorted(PRESETS))})")
    return dict(PRESETS[name])


def dvc_flags(name: str) -> str:
    """The preset as `dvc exp run` arguments: -S key=value ..."""
    return " ".join(f"-S {key}={value}" for key, value in get_preset(name).items())
