"""File I/O at the edges: safetensors with metadata, atomic writes, json/csv.

Nothing here unpickles: tensors come from safetensors only, so opening a file
from an untrusted source never executes code.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from .errors import RnpError

__all__ = [
    "StageWriter",
    "atomic_write_bytes",
    "load_tensors",
    "read_json",
    "tensors_bytes",
    "csv_bytes",
    "json_bytes",
]

META_KEY = "rnp"  # safetensors metadata is str -> str; ours is one JSON document under this key


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_temp(target: Path, data: bytes) -> Path:
    """`data` in a hidden temp file beside `target`, synced to disk, with the mode a plain open() would give.

    mkstemp creates files 0600; on a shared (cluster) file system the group could then not read the results.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same folder + rename: readers see old or new, never half."""
    tmp = _write_temp(Path(path), data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def tensors_bytes(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> bytes:
    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return safetensors_bytes(contiguous, metadata={META_KEY: json.dumps(meta, sort_keys=True)})


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def csv_bytes(rows: Iterable[Mapping[str, Any]]) -> bytes:
    rows = list(rows)
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _fmt(v) for k, v in r.items()} for r in rows)
    return buf.getvalue().encode()


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


def load_tensors(path: str | os.PathLike, hint: str = "") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a safetensors file written by rnp. Any problem becomes one RnpError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise RnpError(f"missing file {path}{hint}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise RnpError(f"{path} is not a valid safetensors file ({_first_line(e)})") from None
    try:
        meta = json.loads(raw_meta[META_KEY]) if META_KEY in raw_meta else {}
    except json.JSONDecodeError:
        raise RnpError(f"{path} has corrupt rnp metadata") from None
    return tensors, meta


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise RnpError(f"missing file {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RnpError(f"{path} is not valid JSON ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


class StageWriter:
    """Collects a stage's outputs and publishes them together at the end.

    Every file goes to a hidden temp file beside its target; `commit()` renames
    them into place, the marker (metrics.json) last, so a present marker means a
    finished stage. If the stage fails before `commit()`, the temp files are removed and
    nothing of this run is visible.
    """

    def __init__(self, out_dir: str | os.PathLike, marker: str = "metrics.json"):
        self.out_dir = Path(out_dir)
        self.marker = marker  # removed first, published last: present = the set beside it is complete
        self._pending: list[tuple[Path, Path]] = []

    def write(self, name: str, data: bytes) -> Path:
        target = self.out_dir / name
        self._pending.append((_write_temp(target, data), target))
        return target

    def commit(self) -> None:
        # An old marker goes first, the new one last: whenever the marker exists,
        # every other output beside it comes from the same finished run.
        ordered = sorted(self._pending, key=lambda p: p[1].name == self.marker)
        for _, target in ordered:
            if target.name == self.marker:
                target.unlink(missing_ok=True)
        try:
            for tmp, target in ordered:
                os.replace(tmp, target)
        finally:  # a failed rename (disk, permissions) leaves no temp file behind; metrics.json, renamed last, stays absent
            self.abort()

    def abort(self) -> None:
        for tmp, _ in self._pending:
            tmp.unlink(missing_ok=True)
        self._pending.clear()

    def __enter__(self) -> StageWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
