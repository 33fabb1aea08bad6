"""The data files the poison stage writes and every later stage reads: an ImageSet and its DataInfo in one safetensors file.

    images (N, C, H, W) uint8, labels (N,) int64, any extra per-image arrays; metadata: dataset, num_classes,
    input_shape, mean, std
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .compute import Compute
from .data import DeviceData, ImageSet
from .errors import RnpError
from .io import load_tensors, tensors_bytes
from .models import ModelSpec

__all__ = ["DataInfo", "imageset_bytes", "load_imageset"]


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
