"""Progress for long work: a tqdm bar on a terminal, a plain line now and then in a log."""

from __future__ import annotations

import math
import sys
import time

from tqdm import tqdm

__all__ = ["LogProgress", "progress", "quiet"]

LOG_PROGRESS_SECONDS = 60.0  # without a terminal: one progress line a minute at most


def progress(iterable, desc: str, total: int | None = None):
    """A tqdm bar on a terminal; in a log (nohup, SLURM, CI), where a bar is noise, a plain line now and then."""
    if sys.stderr.isatty():
        return tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=False, dynamic_ncols=True, mininterval=0.5)
    return LogProgress(iterable, desc, total)


class LogProgress:
    """The part of tqdm's interface the stages use, writing `desc: n/total, postfix (elapsed)` lines to stderr.

    Work shorter than `every` seconds prints nothing, so a quick stage's log stays its summary line.
    """

    def __init__(self, iterable, desc: str, total: int | None = None, every: float = LOG_PROGRESS_SECONDS):
        self.iterable, self.desc, self.every = iterable, desc, every
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n, self.postfix = 0, ""
        self.start = self.last = time.monotonic()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            done = f"{self.n}/{self.total}" if self.total else str(self.n)
            minutes, seconds = divmod(int(now - self.start), 60)
            print(f"{self.desc}: {done}{', ' + self.postfix if self.postfix else ''} ({minutes}m{seconds:02d}s)", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def quiet(iterable, desc: str, total: int | None = None) -> LogProgress:
    """The same interface, never printing: the API's default (a library does not write to stderr unasked)."""
    return LogProgress(iterable, desc, total, every=math.inf)
