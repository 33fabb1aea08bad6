"""What every stage shares: device, seeding, progress, the summary line (the data-file format is rnp.datafiles)."""

from __future__ import annotations

import os

import torch

from .. import compute as _compute
from ..compute import Compute, resolve_device
from ..datafiles import DataInfo, imageset_bytes, load_imageset
from ..progress import progress

__all__ = ["DataInfo", "resolve_compute", "resolve_device", "seed_everything", "imageset_bytes", "load_imageset", "progress", "say"]


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


def say(line: str) -> None:
    """The human summary a stage ends with."""
    print(line, flush=True)
