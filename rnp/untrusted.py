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
from .models import ModelSpec, create_model, load_state

__all__ = ["read_state_dict", "load_untrusted"]

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
    for key in ("state_dict", "model_state_dict", "model", "net"):  # common checkpoint layouts
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise RnpError(f"{path} holds no state dict (a mapping of names to tensors); {CONVERT}")
    if all(k.startswith("module.") for k in obj):  # saved from DataParallel / DDP
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_untrusted(path: str | Path, spec: ModelSpec) -> nn.Module:
    """Build spec.arch for the data and load the file's weights into it; mismatches are named by layer."""
    model = create_model(spec)
    state = read_state_dict(path)
    if all(k.startswith("net.") for k in state) and not any(k.startswith("net.") for k in model.state_dict()):
        state = {k[len("net."):]: v for k, v in state.items()}  # grey torchvision models saved by earlier rnp versions
    load_state(model, state, str(path))
    return model
