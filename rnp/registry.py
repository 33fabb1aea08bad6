"""A registry is a plain dict filled by a decorator; lookups name the valid keys."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import RnpError

__all__ = ["Registry"]

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
    def __init__(self, kind: str, key: str, patterns: dict[str, str] | None = None):
        self.kind = kind  # "data set", "attack", "architecture"
        self.key = key  # the params key users set, for error messages
        self._entries: dict[str, T] = {}
        # open-ended names resolved elsewhere (e.g. "torchvision:<name>"): listed with the valid names, never looked up
        self.patterns = dict(patterns or {})

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def add(fn: T) -> T:
            key = name or fn.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} registered twice")
            self._entries[key] = fn
            return fn

        return add

    def get(self, name: str) -> T:
        if name not in self._entries:  # a pattern is never an entry: the unknown-name line lists it
            raise RnpError(f"unknown {self.kind} {name!r} in {self.key} (valid: {', '.join(self.names())})")
        return self._entries[name]

    def items(self) -> list[tuple[str, T]]:
        """(name, entry) in registration order."""
        return list(self._entries.items())

    def names(self) -> list[str]:
        """The registered names, then the open-ended patterns."""
        return sorted(self._entries) + list(self.patterns)

    def describe(self) -> dict[str, str]:
        """name -> first line of the entry's docstring (a pattern: its description)."""
        return {**{n: (self._entries[n].__doc__ or "").strip().splitlines()[0] for n in sorted(self._entries)}, **self.patterns}
