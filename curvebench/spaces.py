"""Search spaces of hyperparameters and the parsing of their values (framework-neutral).

A space is a frozen dataclass with ``from_unit(u)`` (map ``u ∈ [0, 1]`` into the space),
``grid(n)`` and ``log_volume()``; :meth:`to_dict` / :func:`space_from_dict` give its JSON form,
which run records store so that a report of old runs knows each hyperparameter's scale without
the live registry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Choice",
    "LogUniform",
    "Uniform",
    "IntLogUniform",
    "IntUniform",
    "Space",
    "HyperparameterError",
    "HyperparameterValue",
    "coerce_value",
    "space_from_dict",
]

HyperparameterValue = float | int | bool | str


class HyperparameterError(ValueError):
    """An unknown, ill-typed or out-of-range hyperparameter (message is one line)."""


class _Range:
    """JSON form shared by the ranges: ``{"kind": <class name>, "low": …, "high": …}``."""

    low: float
    high: float

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": "LogUniform", "low": 1e-4, "high": 1.0}`` (see :func:`space_from_dict`)."""
        return {"kind": type(self).__name__, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class LogUniform(_Range):
    """Log-uniform range ``[low, high]`` (learning rates, damping)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not 0 < self.low < self.high:
            raise ValueError(f"LogUniform needs 0 < low < high, got {self.low}, {self.high}")

    def from_unit(self, u: float) -> float:
        """Map ``u ∈ [0, 1]`` into the range."""
        return float(math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low))))

    def grid(self, n: int) -> list[float]:
        """``n`` log-spaced points from ``low`` to ``high``."""
        return [float(v) for v in np.geomspace(self.low, self.high, n)]

    def log_volume(self) -> float:
        """Length of the range in log space (for volume-weighted robustness)."""
        return math.log(self.high) - math.log(self.low)


class _Integer:
    """Rounds a range's draws and grid points to integers (mixed in before the range)."""

    def from_unit(self, u: float) -> int:
        return int(round(super().from_unit(u)))  # type: ignore[misc]

    def grid(self, n: int) -> list[int]:
        return sorted({int(round(v)) for v in super().grid(n)})  # type: ignore[misc]


@dataclass(frozen=True)
class IntLogUniform(_Integer, LogUniform):
    """Integer-valued log-uniform range (CG iterations)."""


@dataclass(frozen=True)
class Uniform(_Range):
    """Uniform range ``[low, high]`` (momentum)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"Uniform needs low < high, got {self.low}, {self.high}")

    def from_unit(self, u: float) -> float:
        return float(self.low + u * (self.high - self.low))

    def grid(self, n: int) -> list[float]:
        return [float(v) for v in np.linspace(self.low, self.high, n)]

    def log_volume(self) -> float:
        return self.high - self.low


@dataclass(frozen=True)
class IntUniform(_Integer, Uniform):
    """Integer-valued uniform range (batch sizes on a linear grid, layer counts)."""


@dataclass(frozen=True)
class Choice:
    """A finite set of values."""

    values: tuple[HyperparameterValue, ...]

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("Choice needs at least one value")

    def from_unit(self, u: float) -> HyperparameterValue:
        return self.values[min(int(u * len(self.values)), len(self.values) - 1)]

    def grid(self, n: int | None = None) -> list[HyperparameterValue]:
        return list(self.values)

    def log_volume(self) -> float:
        return float(len(self.values))

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": "Choice", "values": [...]}`` (see :func:`space_from_dict`)."""
        return {"kind": "Choice", "values": list(self.values)}


Space = LogUniform | IntLogUniform | Uniform | IntUniform | Choice

_KINDS: dict[str, type] = {cls.__name__: cls
                           for cls in (LogUniform, IntLogUniform, Uniform, IntUniform, Choice)}


def space_from_dict(data: Mapping[str, Any]) -> Space:
    """Rebuild a space from :meth:`to_dict`'s form.

    Raises:
        ValueError: an unknown ``kind`` or invalid bounds.
    """
    kind = _KINDS.get(str(data.get("kind")))
    if kind is None:
        raise ValueError(f"unknown search space kind {data.get('kind')!r}; "
                         f"known: {', '.join(_KINDS)}")
    if kind is Choice:
        return Choice(tuple(data["values"]))
    return kind(float(data["low"]), float(data["high"]))


def coerce_value(owner: str, key: str, value: Any, default: Any) -> HyperparameterValue:
    """Parse ``value`` into the type of ``default`` (strings from the command line included).

    Args:
        owner: the optimizer's name, for the message.
        key: the hyperparameter's name, for the message.

    Raises:
        HyperparameterError: a value of the wrong type, NaN or an infinite float (one line).
    """
    kind = type(default)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in {"true", "1", "yes", "on"}:
                return True
            if isinstance(value, str) and value.lower() in {"false", "0", "no", "off"}:
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value) if not isinstance(value, str) else int(value, 10)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            parsed = float(value)
            if math.isnan(parsed):
                raise ValueError
            if math.isinf(parsed):  # also 1e400: stored as null, it would never match again
                raise HyperparameterError(f"optimizer {owner!r}: hyperparameter {key!r} "
                                          f"must be finite, got {value!r}")
            return parsed
        if kind is str:
            if not isinstance(value, str):
                raise ValueError
            return value
    except HyperparameterError:
        raise
    except ValueError:
        pass
    raise HyperparameterError(
        f"optimizer {owner!r}: hyperparameter {key!r} expects {kind.__name__}, got {value!r}"
    )
