"""The one registry type: the backends, judge methods, training methods, row checks and commands.

An entry maps a name to ``"module:attribute"`` (imported with :func:`pkgutil.resolve_name` only
when that name is first asked for, so heavy libraries load only then) or to the object itself.
Adding an extension is its module plus one ``register`` line (or one line in the table that
builds the registry).  A name that is not registered is a UserError with "did you mean".
"""

from __future__ import annotations

import pkgutil
from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar

from .config import check_choice

T = TypeVar("T")


class Registry(Generic[T]):
    """Names of one kind of extension (``kind`` names it in errors), in the order they were registered."""

    def __init__(self, kind: str, entries: Mapping[str, str | T] | None = None):
        self.kind = kind
        self._entries: dict[str, str | T] = {}
        self._loaded: dict[str, T] = {}
        for name, target in (entries or {}).items():
            self.register(name, target)

    def register(self, name: str, target: str | T) -> None:
        """Add ``name``: ``"module:attribute"`` (imported when first used) or the object itself."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered ({self._entries[name]!r})")
        self._entries[name] = target

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)
        self._loaded.pop(name, None)

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def check(self, name: Any, flag: str | None = None) -> None:
        """A UserError quoting ``name`` unless it is registered (``flag`` names where it came from)."""
        check_choice(flag or self.kind, name, self._entries)

    def get(self, name: Any, flag: str | None = None) -> T:
        """The object registered as ``name``, imported now if it was registered as ``"module:attribute"``."""
        self.check(name, flag)
        if name not in self._loaded:
            target = self._entries[name]
            self._loaded[name] = pkgutil.resolve_name(target) if isinstance(target, str) else target
        return self._loaded[name]

    def items(self) -> Iterator[tuple[str, T]]:
        """Every entry, imported."""
        return ((name, self.get(name)) for name in self)
