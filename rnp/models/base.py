"""The architecture registry, model specs and pickle-free model files.

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

__all__ = ["MODELS", "ModelSpec", "create_model", "list_models", "model_bytes", "load_model", "load_state", "torchvision_classifier",
           "timm_classifier", "timm_normalisation", "TORCHVISION", "TIMM", "OPEN_ENDED"]

MODELS: Registry = Registry("architecture", "model.arch", {
    "torchvision:<name>": "Any torchvision classifier by name, e.g. torchvision:resnet50 (random init, classes from the data set)",
    "timm:<name>": "Any timm model by name, e.g. timm:resnet18 (pip install timm; random init, classes and channels from the data)",
})


@dataclass(frozen=True)
class ModelSpec:
    arch: str
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]


TORCHVISION = "torchvision:"
TIMM = "timm:"
OPEN_ENDED = (TORCHVISION, TIMM)  # architecture prefixes looked up in their library, not in MODELS


def create_model(spec: ModelSpec) -> nn.Module:
    """Build `spec.arch` for the data set's classes and channels, and check it can take the data set's images."""
    if spec.arch.startswith(TORCHVISION):
        model = torchvision_classifier(spec.arch[len(TORCHVISION) :], spec.num_classes, spec.input_shape[0])
    elif spec.arch.startswith(TIMM):
        model = timm_classifier(spec.arch[len(TIMM) :], spec.num_classes, spec.input_shape[0])
    else:
        model = MODELS.get(spec.arch)(num_classes=spec.num_classes, in_channels=spec.input_shape[0])
    _check_input(model, spec)
    return model


def _check_input(model: nn.Module, spec: ModelSpec) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *spec.input_shape))
    except (RuntimeError, ValueError, AssertionError) as e:
        shape = "x".join(map(str, spec.input_shape))
        raise RnpError(f"model.arch {spec.arch} cannot take {shape} images ({str(e).splitlines()[0][:120]})") from None
    finally:
        model.train(was_training)
    if out.shape != (1, spec.num_classes):
        raise RnpError(f"model.arch {spec.arch} gives outputs of shape {tuple(out.shape)}, expected (1, {spec.num_classes})")


def repeat_grey(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: 1-channel images into a 3-channel network, the channel repeated. A hook rather than a
    wrapper module, so that the state dict keeps torchvision's own keys and a plain torchvision file loads."""
    return (args[0].expand(-1, 3, -1, -1), *args[1:])


def torchvision_classifier(name: str, num_classes: int, in_channels: int) -> nn.Module:
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise RnpError(f"unknown torchvision classifier {name!r} in model.arch (see torchvision.models.list_models())")
    if in_channels not in (1, 3):
        raise RnpError(f"model.arch {TORCHVISION}{name} takes 1- or 3-channel images, the data set has {in_channels}")
    extra = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
    net = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **extra)
    if in_channels == 1:
        net.register_forward_pre_hook(repeat_grey)
    return net


def _timm():
    try:
        import timm
    except ImportError:
        raise RnpError("model.arch timm:<name> needs timm (pip install timm, or pip install 'rnp[formats]')") from None
    return timm


def timm_classifier(name: str, num_classes: int, in_channels: int) -> nn.Module:
    """A timm model by name, randomly initialised for the data's classes and channels (timm adapts the stem itself)."""
    timm = _timm()
    if not timm.is_model(name):
        close = ", ".join(timm.list_models(f"*{name[:4]}*")[:5])
        raise RnpError(f"unknown timm model {name!r} in model.arch{f' (close: {close})' if close else ''} (see timm.list_models())")
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)


def timm_normalisation(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The mean and std of timm's pretrained config for `arch` (None: not a timm architecture)."""
    if not arch.startswith(TIMM):
        return None
    timm = _timm()
    config = timm.data.resolve_data_config({}, model=timm.create_model(arch[len(TIMM):], pretrained=False))
    return tuple(config["mean"]), tuple(config["std"])


def list_models() -> list[str]:
    """The registered architectures (torchvision:<name> is open-ended and not listed)."""
    return [n for n in MODELS.names() if n not in MODELS.patterns]


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

