"""Data sets as uint8 tensors, and device-resident batching (the loaders live in rnp.datasets).

A data set loader returns whole splits as `(N, C, H, W)` uint8 images and int64
labels. Training and evaluation keep a split on the device and normalise and
augment whole batches there: no per-sample Python, no PIL in the hot loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .compute import Compute

__all__ = [
    "Dataset",
    "ImageSet",
    "DeviceData",
    "draw_split",
    "random_crop",
    "random_flip",
]


@dataclass(frozen=True)
class ImageSet:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W) uint8, got {tuple(self.images.shape)} {self.images.dtype}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, idx: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[idx], self.labels[idx])

    def split(self, share: float, seed: int) -> tuple[ImageSet, ImageSet]:
        """(the rest, a random `share` of the images), each in the original order; deterministic in `seed`."""
        rest, held = draw_split(len(self), len(self), share, seed)
        return self.subset(rest), self.subset(held)


def draw_split(n: int, size: int, share: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of `size` of `n` items drawn with `seed`, split into (the rest, a `share` held out), each sorted.

    The one split of the defender's clean images: the poison stage draws them from the clean training
    images (size: data.defense_size), `rnp defend` splits all of the user's (size n).
    """
    picked = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size]
    k = int(round(size * share))
    return picked[k:].sort().values, picked[:k].sort().values


@dataclass(frozen=True)
class Dataset:
    train: ImageSet
    test: ImageSet | None  # None: split off `data.test_fraction` of train
    num_classes: int
    mean: tuple[float, ...]  # per channel, of images scaled to [0, 1]
    std: tuple[float, ...]


def on_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Random numbers drawn by a CPU generator, moved to `device` without stalling the host: a copy from pageable
    memory to a GPU waits for all the work already queued there, which would drain the queue every batch."""
    if values.device == device:
        return values
    if device.type == "cuda":
        return values.pin_memory().to(device, non_blocking=True)
    return values.to(device)


def random_crop(images: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    """Per-image random crop of a zero-padded batch, one gather for the whole batch."""
    n, _, h, w = images.shape
    padded = F.pad(images, (padding,) * 4).permute(0, 2, 3, 1)  # (N, H+2p, W+2p, C)
    dy = on_device(torch.randint(0, 2 * padding + 1, (n, 1), generator=gen, device=gen.device), images.device)
    dx = on_device(torch.randint(0, 2 * padding + 1, (n, 1), generator=gen, device=gen.device), images.device)
    rows = dy + torch.arange(h, device=images.device)  # (N, H)
    cols = dx + torch.arange(w, device=images.device)  # (N, W)
    batch = torch.arange(n, device=images.device)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (N, C, H, W)


def random_flip(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = on_device(torch.rand(images.shape[0], generator=gen, device=gen.device), images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


class DeviceData:
    """A split held on the device as uint8; yields normalised float batches in the compute's memory format.

    `compute.autocast()` is the context the model's forward passes on these batches run in.
    """

    def __init__(self, data: ImageSet, mean, std, device: torch.device | str | Compute):
        self.compute = device if isinstance(device, Compute) else Compute(torch.device(device))
        device = self.compute.device
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return self.images.shape[0]

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return self.compute.batch((images.float() / 255.0 - self.mean) / self.std)

    def batches(
        self,
        batch_size: int,
        gen: torch.Generator | None = None,
        crop_padding: int = 0,
        flip: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled (when `gen` is given) batches; augmentation needs `gen` too."""
        n = len(self)
        order = on_device(torch.randperm(n, generator=gen, device=gen.device), self.images.device) if gen else None
        bounds = [*range(0, n, batch_size), n]
        if gen is not None and len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
            del bounds[-2]  # a last training batch of one image breaks train-mode BatchNorm on 1x1 maps: merge it
        for start, end in zip(bounds, bounds[1:]):
            idx = order[start:end] if order is not None else slice(start, end)
            x = self.images[idx]
            if gen is not None and crop_padding:
                x = random_crop(x, crop_padding, gen)
            if gen is not None and flip:
                x = random_flip(x, gen)
            yield self.normalise(x), self.labels[idx]

