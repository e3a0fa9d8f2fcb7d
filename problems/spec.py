"""Problem specifications: model, loss, data, target and budget of one benchmark problem."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from curvebench.architecture import Architecture
from curvebench.goals import METRICS, Budget, Metric, Target
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

    def describe(self) -> dict[str, Any]:
        """What a run record stores about the problem, so reports need not ask the registry.

        Returns:
            ``{"target": {metric, value, direction, provenance}, "budget": {max_steps,
            max_seconds}, "tags": [...], "num_parameters", "batch_size", "eval_every",
            "eval_metric", "loss", "classification"}``.
        """
        return {"target": self.target.to_dict(), "budget": self.budget.to_dict(),
                "tags": sorted(self.tags), "num_parameters": self.num_parameters,
                "batch_size": self.batch_size, "eval_every": self.eval_every,
                "eval_metric": self.eval_metric, "loss": self.loss,
                "classification": self.make_loss().classification}

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
