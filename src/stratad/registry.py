"""One registry type for everything chosen by name: backbones, detectors, synthetic defect kinds.

Like timm's model registry: a name is registered once (a second registration is an error, not a
silent replacement), an unknown name is answered with the closest matches, and listings take glob
filters (``list_backbones("efficientnet_*")``).
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import Generic, TypeVar

from stratad.errors import RegistryError, StratadError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind; ``load`` imports the built-in ones on first use."""

    def __init__(
        self, kind: str, unknown: type[StratadError], load: Callable[[], None] | None = None
    ) -> None:
        self.kind = kind
        self.unknown = unknown
        self._load = load
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if not name:
            raise RegistryError(f"a {self.kind} needs a name to be registered")
        if name in self._entries:
            raise RegistryError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register a temporary one)."""
        self._entries.pop(name, None)

    def names(self, pattern: str | None = None) -> list[str]:
        """Sorted names, optionally those matching the glob ``pattern``."""
        self._ensure()
        names = sorted(self._entries)
        return names if pattern is None else [n for n in names if fnmatch.fnmatchcase(n, pattern)]

    def __contains__(self, name: object) -> bool:
        self._ensure()
        return name in self._entries

    def get(self, name: str) -> T:
        self._ensure()
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(str(name), self._entries, n=3, cutoff=0.5)
            hint = (
                f"did you mean {', '.join(close)}?"
                if close
                else f"available: {', '.join(sorted(self._entries))}"
            )
            raise self.unknown(f"unknown {self.kind} {name!r}; {hint}") from None

    def _ensure(self) -> None:
        if self._load is not None:
            load, self._load = self._load, None
            load()
