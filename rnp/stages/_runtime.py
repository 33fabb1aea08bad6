"""What every stage shares: device, seeding, the data-file format, progress."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import compute as _compute
from ..compute import Compute, resolve_device
from ..data import DeviceData, ImageSet
from ..errors import RnpError
from ..io import load_tensors, tensors_bytes
from ..models import ModelSpec
from ..progress import progress

__all__ = ["DataInfo", "resolve_compute", "resolve_device", "seed_everything", "imageset_bytes", "load_imageset", "progress", "say"]


@dataclass(frozen=True)
class DataInfo:
    dataset: str
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def model_spec(self, arch: str) -> ModelSpec:
        return ModelSpec(arch, self.num_classes, self.input_shape, self.mean, self.std)

    def to_device(self, data: ImageSet, device: torch.device | Compute) -> DeviceData:
        """The images on `device`, normalised with this data set's statistics as they are batched."""
        return DeviceData(data, self.mean, self.std, device)


def resolve_compute(device: str, precision: str) -> Compute:
    """The stage's device and precision; `device: auto` says what it chose (never a silent CPU).

    On stdout, with the stage's summary: stderr is kept for the one line of an error.
    """
    chosen = _compute.resolve_compute(device, precision)
    if device == "auto":
        say(f"device auto: {chosen.device.type}{' (bf16)' if chosen.bf16 else ''}")
    if note := _compute.emulated_bf16_note(chosen):
        say(note)
    return chosen


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


def imageset_bytes(data: ImageSet, info: DataInfo, **extra: torch.Tensor) -> bytes:
    meta = {
        "dataset": info.dataset,
        "num_classes": info.num_classes,
        "input_shape": list(info.input_shape),
        "mean": list(info.mean),
        "std": list(info.std),
    }
    return tensors_bytes({"images": data.images, "labels": data.labels, **extra}, meta)


def load_imageset(path: Path, *extra: str) -> tuple[ImageSet, DataInfo, dict[str, torch.Tensor]]:
    """Read a data file written by the poison stage and check that its arrays agree."""
    tensors, meta = load_tensors(path, hint=" (run the poison stage first: dvc repro poison)")
    for key in ("images", "labels", *extra):
        if key not in tensors:
            raise RnpError(f"{path} has no {key!r} array")
    images, labels = tensors["images"], tensors["labels"]
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise RnpError(f"{path}: images must be (N, C, H, W) uint8, got {tuple(images.shape)} {images.dtype}")
    if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
        raise RnpError(f"{path}: {images.shape[0]} images but labels of shape {tuple(labels.shape)} {labels.dtype}")
    for key in extra:
        if tensors[key].shape[0] != images.shape[0]:
            raise RnpError(f"{path}: {images.shape[0]} images but {tensors[key].shape[0]} {key}")
    try:
        info = DataInfo(
            meta["dataset"], int(meta["num_classes"]), tuple(meta["input_shape"]), tuple(meta["mean"]), tuple(meta["std"])
        )
    except (KeyError, TypeError, ValueError):
        raise RnpError(f"{path} has no rnp data metadata (dataset, num_classes, input_shape, mean, std)") from None
    if labels.numel() and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise RnpError(f"{path}: labels outside [0, {info.num_classes})")
    return ImageSet(images, labels), info, {k: tensors[k] for k in extra}


def say(line: str) -> None:
    """The human summary a stage ends with."""
    print(line, flush=True)
