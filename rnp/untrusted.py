"""Loading weights someone else made, without executing anything from the file.

Safetensors files are read as plain tensors. PyTorch files go through
`torch.load(weights_only=True)`, whose unpickler only rebuilds tensors and
plain containers; a pickled model object is refused with a way to convert it.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from .errors import RnpError
from .io import load_tensors
from .models import OPEN_ENDED, TORCHVISION, ModelSpec, create_model, list_models, load_state

__all__ = ["read_state_dict", "load_untrusted", "strip_wrappers", "first_layer_channels", "closest_architecture", "WRAPPER_PREFIXES"]

WRAPPER_PREFIXES = ("module.", "model.", "net.", "_orig_mod.")

CONVERT = (
    "rnp never unpickles code; where you trust the file, convert it with "
    "`torch.save(model.state_dict(), 'weights.pt')` or safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')"
)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file or of a PyTorch state-dict file (checkpoint wrappers unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise RnpError(f"missing model file {path}")
    head = path.read_bytes()[:8]
    if path.suffix == ".safetensors" or (len(head) == 8 and not head.startswith((b"PK", b"\x80"))):
        state, _ = load_tensors(path)
        return state
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        what = "a pickled model object, not a state dict" if "GLOBAL" in str(e) or "global" in str(e) else "not loadable as weights only"
        raise RnpError(f"{path} is {what}; {CONVERT}") from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise RnpError(f"{path} is not a PyTorch state dict or safetensors file ({str(e).strip().splitlines()[0][:160]})") from None
    for key in ("state_dict", "model_state_dict", "model", "net", "module"):  # checkpoint layouts: Lightning, plain training loops
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        found = f" (top-level keys: {', '.join(map(str, list(obj)[:6]))})" if isinstance(obj, dict) and obj else ""
        raise RnpError(f"{path} holds no state dict (a mapping of names to tensors){found}; {CONVERT}")
    return obj


def strip_wrappers(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Drop the prefixes training wrappers add to every key (DataParallel's `module.`, Lightning's `model.`, `net.`,
    torch.compile's `_orig_mod.`) while every key has one and the architecture's keys do not."""
    while not set(state) & expected:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            break
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def first_layer_channels(state: dict[str, torch.Tensor], arch: str) -> int | None:
    """The image channels the file's first convolution takes (None: the architecture or the file does not say)."""
    if arch.startswith(TORCHVISION):
        return None  # torchvision models take grey images through their 3-channel first layer (models.base.repeat_grey)
    try:
        model = create_model(ModelSpec(arch, 10, (3, 32, 32), (0.5,) * 3, (0.5,) * 3))
    except RnpError:
        return None
    first = next((name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    weights = strip_wrappers(state, set(model.state_dict())).get(f"{first}.weight")
    return int(weights.shape[1]) if first is not None and weights is not None and weights.ndim == 4 else None


def closest_architecture(state: dict[str, torch.Tensor], spec: ModelSpec) -> str | None:
    """The registered architecture (or torchvision:/timm:<arch>) whose state dict has most of the file's keys, by name and
    shape, if one has over half."""
    bare = spec.arch.split(":", 1)[-1]
    candidates = [*list_models(), *(f"{prefix}{bare}" for prefix in OPEN_ENDED)]  # e.g. --arch resnet18 for a torchvision or timm file
    best, best_score = None, 0.5
    for name in candidates:
        if name == spec.arch:
            continue
        try:
            theirs = create_model(ModelSpec(name, spec.num_classes, spec.input_shape, spec.mean, spec.std)).state_dict()
        except RnpError:  # not a model of that library, or the library is not installed
            continue
        fits = sum(k in state and state[k].shape == v.shape for k, v in theirs.items())  # same name and shape
        score = fits / len(set(theirs) | set(state))
        if score > best_score:
            best, best_score = name, score
    return best


def load_untrusted(path: str | Path, spec: ModelSpec, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Build spec.arch for the data and load the file's weights into it (`state`: already read from `path`);
    a mismatch is one line with a few keys found and expected, and the closest architecture."""
    model = create_model(spec)
    expected = model.state_dict()
    state = strip_wrappers(read_state_dict(path) if state is None else state, set(expected))
    missing, unexpected = [k for k in expected if k not in state], [k for k in state if k not in expected]
    if missing or unexpected:
        closest = closest_architecture(state, spec)
        hint = f"; its keys fit --arch {closest}" if closest else ""
        raise RnpError(f"{path}: weights do not match --arch {spec.arch} ({len(missing)} of its keys missing, {len(unexpected)} unexpected; "
                       f"found e.g. {', '.join(unexpected[:3]) or '-'}; expected e.g. {', '.join(missing[:3]) or '-'}){hint}")
    load_state(model, state, str(path))
    return model
