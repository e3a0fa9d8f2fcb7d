"""A typed registry: the single list of one kind of thing (problems, optimizers).

Items register themselves when their module is imported. On first lookup the registry imports
every module of its package (so adding a problem or an optimizer is adding one file) and every
entry point of its group (so other installed packages can add their own). A plugin that fails
to load (a missing module, an exception while registering) is reported in one line on stderr
and skipped.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import pkgutil
import sys
import threading
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

__all__ = ["Registry", "UnknownNameError", "DuplicateNameError", "Named"]


class Named(Protocol):
    """Anything with a ``name``."""

    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=Named)


class UnknownNameError(KeyError):
    """A name that is not registered; the message lists the known names and the closest one."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want a plain sentence.
        return str(self.args[0])


class DuplicateNameError(ValueError):
    """A second item registered under an existing name."""


class Registry(Generic[T]):
    """Name → item mapping that discovers its items lazily.

    Args:
        kind: what the items are, for messages ("problem", "optimizer").
        package: dotted package whose modules are imported to populate the registry.
        entry_point_group: entry-point group scanned for plugins; each entry point is a module
            (imported) or a callable (called with no argument) that registers its items.
    """

    def __init__(self, *, kind: str, package: str, entry_point_group: str) -> None:
        self.kind = kind
        self.package = package
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._loaded = False
        self._lock = threading.RLock()
        #: One line per plugin entry point that failed to load (they are skipped).
        self.plugin_errors: list[str] = []

    def register(self, item: T) -> T:
        """Add ``item`` under ``item.name``.

        Raises:
            DuplicateNameError: when the name is taken.
            ValueError: when the name is empty or contains whitespace or commas.
        """
        name = item.name
        if not name or any(c.isspace() or c == "," for c in name):
            raise ValueError(f"invalid {self.kind} name {name!r}: no spaces or commas")
        with self._lock:
            if name in self._items:
                raise DuplicateNameError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
        return item

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests and plugins that replace an item)."""
        with self._lock:
            self._items.pop(name, None)

    def get(self, name: str) -> T:
        """Return the item called ``name``.

        Raises:
            UnknownNameError: listing the known names and suggesting the closest match.
        """
        self._ensure_loaded()
        try:
            return self._items[name]
        except KeyError:
            known = sorted(self._items)
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{hint}; known: {', '.join(known)}"
            ) from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        self._ensure_loaded()
        return sorted(self._items)

    def values(self) -> list[T]:
        """Registered items, sorted by name."""
        return [self._items[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._items

    def __iter__(self) -> Iterator[T]:
        return iter(self.values())

    def __len__(self) -> int:
        return len(self.names())

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            package = importlib.import_module(self.package)
            for module in pkgutil.iter_modules(package.__path__, prefix=f"{self.package}."):
                importlib.import_module(module.name)
            for entry_point in importlib.metadata.entry_points(group=self.entry_point_group):
                try:
                    loaded = entry_point.load()
                    if callable(loaded):
                        loaded()
                except Exception as error:  # noqa: BLE001 — one broken plugin must not stop us
                    self._plugin_failed(entry_point, error)

    def _plugin_failed(self, entry_point: importlib.metadata.EntryPoint,
                       error: Exception) -> None:
        """Say in one line on stderr that a plugin failed to load; go on without it."""
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        message = (f"curvebench: skipped the {self.kind} plugin {entry_point.name!r} "
                   f"({entry_point.value}): {reason}")
        self.plugin_errors.append(message)
        print(message[:400], file=sys.stderr)
