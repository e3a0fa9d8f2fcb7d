"""Optimizer specifications: factory, defaults, search space and capability flags."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from curvebench.losses import CurvatureLoss
from curvebench.registry import Registry

__all__ = [
    "Choice",
    "LogUniform",
    "Uniform",
    "IntLogUniform",
    "IntUniform",
    "Space",
    "OptimizerSpec",
    "HyperparameterError",
    "OPTIMIZERS",
    "register_optimizer",
    "get_optimizer",
    "torch_optimizer_factory",
    "curvature_optimizer_factory",
]

HyperparameterValue = float | int | bool | str


class HyperparameterError(ValueError):
    """An unknown, ill-typed or out-of-range hyperparameter (message is one line)."""


@dataclass(frozen=True)
class LogUniform:
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


@dataclass(frozen=True)
class IntLogUniform(LogUniform):
    """Integer-valued log-uniform range (CG iterations)."""

    def from_unit(self, u: float) -> int:  # type: ignore[override]
        return int(round(super().from_unit(u)))

    def grid(self, n: int) -> list[int]:  # type: ignore[override]
        return sorted({int(round(v)) for v in super().grid(n)})


@dataclass(frozen=True)
class Uniform:
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
class IntUniform(Uniform):
    """Integer-valued uniform range (batch sizes on a linear grid, layer counts)."""

    def from_unit(self, u: float) -> int:  # type: ignore[override]
        return int(round(super().from_unit(u)))

    def grid(self, n: int) -> list[int]:  # type: ignore[override]
        return sorted({int(round(v)) for v in super().grid(n)})


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


Space = LogUniform | IntLogUniform | Uniform | IntUniform | Choice

#: ``factory(model=..., loss=..., **hyperparameters) -> torch.optim.Optimizer``
OptimizerFactory = Callable[..., torch.optim.Optimizer]


def torch_optimizer_factory(
    cls: type[torch.optim.Optimizer], *, tuples: Mapping[str, tuple[str, ...]] | None = None
) -> OptimizerFactory:
    """Adapt any ``torch.optim.Optimizer`` class: it gets ``model.parameters()`` only.

    Args:
        cls: the optimizer class.
        tuples: scalar hyperparameters to pack into one tuple argument, e.g.
            ``{"betas": ("beta1", "beta2")}`` for Adam (sweeps and the CLI see scalars only).
    """
    packed = dict(tuples or {})

    def factory(*, model: nn.Module, loss: CurvatureLoss, **hyperparameters: Any):
        del loss  # first-order optimizers never see the loss
        for argument, names in packed.items():
            hyperparameters[argument] = tuple(hyperparameters.pop(name) for name in names)
        return cls(model.parameters(), **hyperparameters)

    factory.__name__ = f"{cls.__name__}_factory"
    factory.__doc__ = f"Build ``{cls.__module__}.{cls.__name__}`` on the model's parameters."
    return factory


def curvature_optimizer_factory(cls: type[torch.optim.Optimizer], **fixed: Any) -> OptimizerFactory:
    """Adapt an optimizer built from the model and the loss (a ``CurvatureOptimizer``).

    ``factory(model=..., loss=..., **hyperparameters)`` returns
    ``cls(model, loss=loss, **fixed, **hyperparameters)``; ``fixed`` holds what tells apart two
    registered variants of one class (e.g. Sophia's estimator).
    """

    def factory(*, model: nn.Module, loss: CurvatureLoss, **hyperparameters: Any):
        return cls(model, loss=loss, **fixed, **hyperparameters)

    factory.__name__ = f"{cls.__name__}_factory"
    factory.__doc__ = f"Build ``{cls.__module__}.{cls.__name__}`` for the model and loss."
    return factory


@dataclass(frozen=True)
class OptimizerSpec:
    """One registered optimizer.

    Args:
        name: registry name.
        description: one line.
        factory: ``factory(model=..., loss=..., **hyperparameters)``; must return a
            ``torch.optim.Optimizer``. When ``needs_curvature`` is set it returns a
            :class:`~curvebench.optimizers.base.CurvatureOptimizer`.
        defaults: every hyperparameter the factory accepts with its default; values set
            the type used to parse strings from the command line.
        search_space: ranges for sweeps, keyed by hyperparameter name.
        needs_curvature: the optimizer needs the model, loss and batch in ``step``.
        supports_conv: works on convolutional layers.
        deterministic: same seed gives the same trajectory on CPU.
        reference: the paper or library it comes from.
        max_parameters: the largest model (number of optimised parameters) it accepts, for
            methods that build dense curvature matrices; ``None``: no limit. Larger models
            are refused by the factory with a one-line error, and studies and the suite skip
            them (:meth:`unsupported_reason`).
        backends: the backends it runs on (:mod:`curvebench.backends`); other pairs are
            refused by ``run`` and skipped by studies and the suite (:meth:`unsupported_reason`).
            A spec without ``"torch"`` has a factory only its backend uses.
    """

    name: str
    description: str
    factory: OptimizerFactory
    defaults: Mapping[str, HyperparameterValue]
    search_space: Mapping[str, Space] = field(default_factory=dict)
    needs_curvature: bool = False
    supports_conv: bool = True
    deterministic: bool = True
    reference: str = ""
    max_parameters: int | None = None
    backends: tuple[str, ...] = ("torch",)

    def __post_init__(self) -> None:
        unknown = set(self.search_space) - set(self.defaults)
        if unknown:
            raise ValueError(f"optimizer {self.name!r}: search space keys {sorted(unknown)} "
                             "have no default")

    def unsupported_reason(self, *, tags: frozenset[str] | set[str], num_parameters: int,
                           backend: str = "torch") -> str | None:
        """Why this optimizer cannot run a problem (by its tags and model size) on ``backend``,
        or ``None``."""
        if backend not in self.backends:
            return f"the optimizer does not run on the {backend} backend (it runs on: " \
                   f"{', '.join(self.backends)})"
        if "cnn" in tags and not self.supports_conv:
            return "the optimizer does not support convolutional layers"
        if self.max_parameters is not None and num_parameters > self.max_parameters:
            return (f"the model has {num_parameters} parameters; the optimizer builds dense "
                    f"curvature matrices and accepts at most {self.max_parameters}")
        return None

    def resolve(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Merge ``overrides`` into the defaults, parsing strings and checking types.

        Raises:
            HyperparameterError: unknown name or a value of the wrong type.
        """
        merged = dict(self.defaults)
        for key, value in (overrides or {}).items():
            if key not in self.defaults:
                raise HyperparameterError(
                    f"optimizer {self.name!r} has no hyperparameter {key!r}; "
                    f"known: {', '.join(sorted(self.defaults)) or 'none'}"
                )
            merged[key] = _coerce(self.name, key, value, self.defaults[key])
        return merged

    def build(self, *, model: nn.Module, loss: CurvatureLoss,
              hyperparameters: Mapping[str, Any] | None = None) -> torch.optim.Optimizer:
        """Build the optimizer for ``model``.

        Raises:
            HyperparameterError: unknown, ill-typed or out-of-range values (the optimizer's own
                ``ValueError`` is re-raised as this, with a one-line message).
        """
        resolved = self.resolve(hyperparameters)
        try:
            return self.factory(model=model, loss=loss, **resolved)
        except (ValueError, TypeError) as error:
            message = " ".join(str(error).split())
            raise HyperparameterError(f"optimizer {self.name!r}: {message}") from error


def _coerce(optimizer: str, key: str, value: Any, default: Any) -> HyperparameterValue:
    """Parse ``value`` into the type of ``default``."""
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
                raise HyperparameterError(f"optimizer {optimizer!r}: hyperparameter {key!r} "
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
        f"optimizer {optimizer!r}: hyperparameter {key!r} expects {kind.__name__}, got {value!r}"
    )


OPTIMIZERS: Registry[OptimizerSpec] = Registry(
    kind="optimizer", package="curvebench.optimizers", entry_point_group="curvebench.optimizers"
)


def register_optimizer(spec: OptimizerSpec) -> OptimizerSpec:
    """Add ``spec`` to :data:`OPTIMIZERS` (raises on a duplicate name)."""
    return OPTIMIZERS.register(spec)


def get_optimizer(name: str) -> OptimizerSpec:
    """Look an optimizer up by name (raises :class:`~curvebench.registry.UnknownNameError`)."""
    return OPTIMIZERS.get(name)
