"""Where and how the numbers are computed: device, bf16 autocast, memory format.

`precision: fp32` is the reference's arithmetic. `bf16` runs convolutions and
matrix products under bf16 autocast with channels_last tensors (masks, BN
statistics, losses and optimiser state stay fp32): about 3x on a CPU with AMX,
and the usual mixed-precision gain on a GPU. `auto` is bf16 on a CUDA GPU that
supports it, fp32 anywhere else, so CPU results stay bit-stable unless asked.
"""

from __future__ import annotations

import platform
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import RnpError

__all__ = ["Compute", "compile_or_eager", "emulated_bf16_note", "native_cpu_bf16", "resolve_device", "resolve_compute"]

@dataclass(frozen=True)
class Compute:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    bf16: bool = False
    channels_last: bool = False

    @property
    def eval_batch_size(self) -> int:
        # GPUs want big batches; on a CPU a 128-image batch stays in cache (faster than 1024: docs/speed.md)
        return 1024 if self.device.type == "cuda" else 128

    def autocast(self) -> torch.autocast:
        """The context every forward pass runs in: bf16 autocast, or a no-op."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def place(self, model: nn.Module) -> nn.Module:
        model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RnpError(f"device {name!r} asked for in params, but no CUDA device is available")
    return torch.device(name)


def resolve_compute(device: str, precision: str = "fp32") -> Compute:
    dev = resolve_device(device)
    if precision == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise RnpError(f"precision bf16 asked for in params, but {torch.cuda.get_device_name(dev)} has no bf16 (use precision: fp32 or auto)")
    bf16 = precision == "bf16" or (precision == "auto" and dev.type == "cuda" and torch.cuda.is_bf16_supported())
    # channels_last pays off on GPUs, and on CPUs only together with bf16 (fp32 oneDNN eval is slower in it)
    return Compute(dev, bf16, channels_last=bf16 or dev.type == "cuda")


def native_cpu_bf16() -> bool | None:
    """Whether this CPU multiplies bf16 in hardware (x86: AVX512-BF16 or AMX); None where torch cannot tell."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if platform.machine().lower() not in ("x86_64", "amd64") or None in probes:
        return None
    return any(probe() for probe in probes)


def emulated_bf16_note(compute: Compute) -> str | None:
    """One line when bf16 was asked for on a CPU that emulates it: there it is slower than fp32, not faster."""
    if not compute.bf16 or compute.device.type != "cpu" or native_cpu_bf16() is not False:
        return None
    return (f"note: precision bf16 on this CPU ({torch.backends.cpu.get_cpu_capability()}, no AVX512-BF16 or AMX) is emulated "
            "and was 6-8x slower than fp32 on such a CPU (docs/speed.md); precision: fp32 or auto is faster here")


def compile_or_eager(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """`model`'s forward through torch.compile, falling back to eager for good if compiling fails.

    Compilation is lazy, so a failure (no C++ compiler, an op the backend lacks) shows up
    at the first call; that call and every later one then run eagerly. Parameters stay
    the model's own, so the optimiser, saving and evaluation see no difference.
    """
    def give_up(e: Exception) -> None:
        warnings.warn(f"torch.compile failed, training eagerly: {(str(e).splitlines() or [type(e).__name__])[0][:200]}", stacklevel=3)

    try:
        compiled: Callable | None = torch.compile(model)
    except RuntimeError as e:  # e.g. a Python version Dynamo does not support yet
        give_up(e)
        compiled = None

    def forward(x: torch.Tensor) -> torch.Tensor:
        nonlocal compiled
        if compiled is not None:
            try:
                return compiled(x)
            except torch._dynamo.exc.TorchDynamoException as e:
                give_up(e)
                compiled = None
        return model(x)

    return forward
