"""What a run must reach and how long it may try: :class:`Target` and :class:`Budget`.

Framework-neutral (plain numbers and strings), so records, study files and reports use them
without importing a backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Target", "Budget", "METRICS", "Metric"]

#: Metrics a target may be set on; ``*_loss`` are evaluated on the whole split.
METRICS = ("train_loss", "test_loss", "test_accuracy")

Metric = Literal["train_loss", "test_loss", "test_accuracy"]


@dataclass(frozen=True)
class Target:
    """The value a run must reach, and where that value comes from.

    Args:
        metric: one of :data:`METRICS`.
        value: threshold.
        direction: ``"min"`` (reach ``≤ value``) or ``"max"`` (reach ``≥ value``).
        provenance: one sentence on how the value was obtained.
    """

    metric: Metric
    value: float
    direction: Literal["min", "max"]
    provenance: str

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"target metric must be one of {METRICS}, got {self.metric!r}")
        if self.direction not in ("min", "max"):
            raise ValueError(f"target direction must be 'min' or 'max', got {self.direction!r}")
        if not math.isfinite(self.value):
            raise ValueError("target value must be finite")

    def is_met(self, value: float) -> bool:
        """Whether ``value`` of :attr:`metric` meets the target (NaN never does)."""
        if not math.isfinite(value):
            return False
        return value <= self.value if self.direction == "min" else value >= self.value

    def to_dict(self) -> dict[str, Any]:
        """``{"metric", "value", "direction", "provenance"}``, as run records store it."""
        return {"metric": self.metric, "value": self.value, "direction": self.direction,
                "provenance": self.provenance}


@dataclass(frozen=True)
class Budget:
    """Limits of one run: optimizer steps and/or measured training seconds."""

    max_steps: int | None = None
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.max_steps is None and self.max_seconds is None:
            raise ValueError("a budget needs max_steps or max_seconds")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"max_steps must be positive, got {self.max_steps}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be positive, got {self.max_seconds}")

    def to_dict(self) -> dict[str, Any]:
        """``{"max_steps", "max_seconds"}`` (``None`` where unlimited)."""
        return {"max_steps": self.max_steps, "max_seconds": self.max_seconds}
