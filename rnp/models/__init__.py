"""Architecture registry and pickle-free model files.

A model file is safetensors: the state dict plus JSON metadata (architecture,
classes, input shape, normalisation, the params that produced it), enough to
rebuild the module without executing anything from the file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import RnpError
from ..io import load_tensors, tensors_bytes
from ..registry import Registry

__all__ = ["MODELS", "ModelSpec", "create_model", "list_models", "model_bytes", "load_model"]

MODELS: Registry = Registry("architecture", "model.arch")


@dataclass(frozen=True)
class ModelSpec:
    arch: str
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]


def create_model(spec: ModelSpec) -> nn.Module:
    return MODELS.get(spec.arch)(num_classes=spec.num_classes, in_channels=spec.input_shape[0])


def list_models() -> list[str]:
    return MODELS.names()


def model_bytes(model: nn.Module, spec: ModelSpec, extra: dict | None = None) -> bytes:
    meta = {"model": asdict(spec), **(extra or {})}
    return tensors_bytes(model.state_dict(), meta)


def load_model(path: str | Path, hint: str = "") -> tuple[nn.Module, ModelSpec, dict]:
    """Rebuild a model saved by `model_bytes`; shape mismatches are reported by layer name."""
    state, meta = load_tensors(path, hint)
    try:
        m = meta["model"]
        spec = ModelSpec(m["arch"], int(m["num_classes"]), tuple(m["input_shape"]), tuple(m["mean"]), tuple(m["std"]))
    except (KeyError, TypeError, ValueError):
        raise RnpError(f"{path} has no rnp model metadata (arch, num_classes, input_shape, mean, std)") from None
    model = create_model(spec)
    load_state(model, state, str(path))
    return model, spec, meta


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise RnpError(f"{source}: weights do not match the architecture ({what}; {len(missing)} missing, {len(unexpected)} unexpected)")
    for k, v in expected.items():
        if state[k].shape != v.shape:
            raise RnpError(f"{source}: layer {k} has shape {tuple(state[k].shape)}, architecture expects {tuple(v.shape)}")
    model.load_state_dict(state)


from . import mobilenet, resnet, small_cnn, vgg, wide_resnet  # noqa: E402,F401  (fill the registry)
