"""A small generic registry: names to factories, filled by decorators (as timm does).

Every pluggable kind (models, datasets, attacks, training methods, schedules, diagnostics)
has one :class:`Registry`. Lookups of unknown names raise :class:`UnknownNameError`
listing the valid names, so a typo in a config gets a one-line answer.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .errors import UnknownNameError

T = TypeVar("T", bound=Callable[..., Any])


class Registry(Generic[T]):
    """Maps names to factories of one kind.

    Args:
        kind: what is registered, used in error messages (``"model"``, ``"attack"``).
        key: the config key that names an entry, used in error messages (``"model.name"``).
    """

    def __init__(self, kind: str, key: str | None = None) -> None:
        self.kind = kind
        self.key = key or f"{kind}.name"
        self._entries: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str | None = None, **meta: Any) -> Callable[[T], T]:
        """Decorator registering a factory under ``name`` (default: its ``__name__``)."""

        def decorate(factory: T) -> T:
            entry = name or factory.__name__
            if entry in self._entries:
                raise ValueError(f"{self.kind} {entry!r} is registered twice")
            self._entries[entry] = factory
            self._meta[entry] = meta
            return factory

        return decorate

    def get(self, name: str) -> T:
        """The factory registered as ``name``; :class:`UnknownNameError` if there is none."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.key, name, self._entries) from None

    def meta(self, name: str) -> dict[str, Any]:
        """Metadata given at registration (e.g. a model family's default width)."""
        self.get(name)
        return self._meta[name]

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the factory registered as ``name``."""
        return self.get(name)(*args, **kwargs)

    def names(self, pattern: str | None = None) -> list[str]:
        """Registered names, sorted, optionally filtered by a shell-style ``pattern``."""
        names = sorted(self._entries)
        return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
