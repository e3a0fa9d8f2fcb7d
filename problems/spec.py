"""Problem specifications: model, loss, data, target and budget of one benchmark problem."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from curvebench.architecture import Architecture
from curvebench.losses import CurvatureLoss, loss_by_name
from curvebench.registry import Registry

__all__ = [
    "Budget",
    "Target",
    "ProblemSpec",
    "PROBLEMS",
    "register_problem",
    "get_problem",
    "TAGS",
    "METRICS",
]

#: Tags a problem may carry.
TAGS = frozenset({"mlp", "cnn", "autoencoder", "convex", "offline", "paper", "suite", "regression"})
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


@dataclass(frozen=True)
class ProblemSpec:
    """One benchmark problem.

    Args:
        name: registry name (part of the public interface).
        description: one line.
        architecture: the model, declared once (every backend compiles it; initial
            parameters from :func:`curvebench.architecture.initial_parameters`).
        loss: name of a :mod:`curvebench.losses` loss (mean reduction).
        load_data: ``load_data(data_dir=...) -> Dataset`` of NumPy arrays; deterministic.
        batch_size: default mini-batch size.
        eval_metric: headline held-out metric (``test_accuracy`` or ``test_loss``).
        target: see :class:`Target`.
        budget: default :class:`Budget`.
        eval_every: evaluate every this many steps (and at step 0 and the end).
        tags: subset of :data:`TAGS`.
        reference: the paper or benchmark the setup comes from.
    """

    name: str
    description: str
    architecture: Architecture
    loss: str
    load_data: Callable[..., object]
    batch_size: int
    eval_metric: Metric
    target: Target
    budget: Budget
    eval_every: int
    tags: frozenset[str] = field(default_factory=frozenset)
    reference: str = ""

    def __post_init__(self) -> None:
        unknown = set(self.tags) - TAGS
        if unknown:
            raise ValueError(f"problem {self.name!r}: unknown tags {sorted(unknown)}")
        if self.batch_size <= 0 or self.eval_every <= 0:
            raise ValueError(f"problem {self.name!r}: batch_size and eval_every must be positive")
        loss_by_name(self.loss)  # raises on unknown loss

    @property
    def offline(self) -> bool:
        """Whether the data is available without files or network."""
        return "offline" in self.tags

    def build_model(self, *, seed: int, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> nn.Module:
        """The torch model with the neutral initial parameters of ``seed`` (global RNG
        untouched; see :func:`curvebench.architecture.initial_parameters`)."""
        from curvebench.problems.torch_models import build_torch_model

        return build_torch_model(self.architecture, seed=seed, device=device, dtype=dtype)

    @property
    def num_parameters(self) -> int:
        """Number of trainable parameters of the model (capability checks: size limits)."""
        return self.architecture.num_parameters

    def make_loss(self) -> CurvatureLoss:
        """A fresh instance of the problem's loss."""
        return loss_by_name(self.loss)

    def dataset(self, *, data_dir: Path | str | None = None):
        """Load (or generate) the problem's data as NumPy arrays (the backend converts)."""
        return self.load_data(data_dir=data_dir)


PROBLEMS: Registry[ProblemSpec] = Registry(
    kind="problem", package="curvebench.problems", entry_point_group="curvebench.problems"
)


def register_problem(spec: ProblemSpec) -> ProblemSpec:
    """Add ``spec`` to :data:`PROBLEMS` (raises on a duplicate name)."""
    return PROBLEMS.register(spec)


def get_problem(name: str) -> ProblemSpec:
    """Look a problem up by name (raises :class:`~curvebench.registry.UnknownNameError`)."""
    return PROBLEMS.get(name)
