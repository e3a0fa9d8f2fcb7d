"""Optimizer specifications: factory, defaults, search space and capability flags."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from curvebench.losses import CurvatureLoss
from curvebench.registry import Registry
from curvebench.spaces import (
    Choice,
    HyperparameterError,
    HyperparameterValue,
    IntLogUniform,
    IntUniform,
    LogUniform,
    Space,
    Uniform,
    coerce_value,
)

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

#: ``factory(model=..., loss=..., **hyperparameters) -> torch.optim.Optimizer``
OptimizerFactory = Callable[..., torch.optim.Optimizer]


def torch_optimizer_factory(
    cls: type[torch.optim.Optimizer], *, tuples: Mapping[str, tuple[str, ...]] | None = None,
    settings: Mapping[str, HyperparameterValue] | None = None,
) -> OptimizerFactory:
    """Adapt any ``torch.optim.Optimizer`` class: it gets ``model.parameters()`` only.

    Args:
        cls: the optimizer class.
        tuples: scalar hyperparameters to pack into one tuple argument, e.g.
            ``{"betas": ("beta1", "beta2")}`` for Adam (sweeps and the CLI see scalars only).
        settings: fixed constructor arguments (e.g. Adam's ``amsgrad=False``); they become the
            spec's :attr:`OptimizerSpec.settings` (part of a run's identity) and are the
            factory's defaults when it is called directly.
    """
    packed = dict(tuples or {})
    fixed = dict(settings or {})

    def factory(*, model: nn.Module, loss: CurvatureLoss, **hyperparameters: Any):
        del loss  # first-order optimizers never see the loss
        for argument, names in packed.items():
            hyperparameters[argument] = tuple(hyperparameters.pop(name) for name in names)
        return cls(model.parameters(), **{**fixed, **hyperparameters})

    factory.__name__ = f"{cls.__name__}_factory"
    factory.__doc__ = f"Build ``{cls.__module__}.{cls.__name__}`` on the model's parameters."
    factory.settings = fixed  # type: ignore[attr-defined]
    factory.optimizer_class = cls  # type: ignore[attr-defined]
    return factory


def curvature_optimizer_factory(cls: type[torch.optim.Optimizer], **fixed: Any) -> OptimizerFactory:
    """Adapt an optimizer built from the model and the loss (a ``CurvatureOptimizer``).

    ``factory(model=..., loss=..., **hyperparameters)`` returns
    ``cls(model, loss=loss, **fixed, **hyperparameters)``; ``fixed`` holds the constructor
    arguments the spec fixes (what tells apart two registered variants of one class, e.g.
    Sophia's estimator, and knobs that are not tuned, e.g. SGN's Armijo constant). They become
    the spec's :attr:`OptimizerSpec.settings`, which :meth:`OptimizerSpec.build` passes
    explicitly, so a run's hash covers them.
    """

    def factory(*, model: nn.Module, loss: CurvatureLoss, **hyperparameters: Any):
        return cls(model, loss=loss, **{**fixed, **hyperparameters})

    factory.__name__ = f"{cls.__name__}_factory"
    factory.__doc__ = f"Build ``{cls.__module__}.{cls.__name__}`` for the model and loss."
    factory.settings = dict(fixed)  # type: ignore[attr-defined]
    factory.optimizer_class = cls  # type: ignore[attr-defined]
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
        settings: the fixed, non-tunable constructor arguments (SGN's Armijo constant and
            backtracking factor, Sophia's estimator, K-FAC's curvature, ...); ``None`` takes
            the factory's own (``factory.settings``, set by :func:`curvature_optimizer_factory`
            and :func:`torch_optimizer_factory`). They are part of a run's identity
            (``RunConfig.settings``) and :meth:`build` passes them to the factory, so what is
            hashed is what runs. A name may not be both a setting and a hyperparameter.
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
    settings: Mapping[str, HyperparameterValue] | None = None
    backends: tuple[str, ...] = ("torch",)

    def __post_init__(self) -> None:
        unknown = set(self.search_space) - set(self.defaults)
        if unknown:
            raise ValueError(f"optimizer {self.name!r}: search space keys {sorted(unknown)} "
                             "have no default")
        settings = (dict(getattr(self.factory, "settings", {})) if self.settings is None
                    else dict(self.settings))
        both = set(settings) & set(self.defaults)
        if both:
            raise ValueError(f"optimizer {self.name!r}: {sorted(both)} are both settings and "
                             "hyperparameters")
        for key, value in settings.items():
            if not isinstance(value, bool | int | float | str):
                raise ValueError(f"optimizer {self.name!r}: setting {key!r} must be a bool, "
                                 f"int, float or str, got {value!r}")
        object.__setattr__(self, "settings", settings)

    def describe(self) -> dict[str, Any]:
        """What a run record stores about the optimizer, so reports need not ask the registry.

        Returns:
            ``{"defaults", "search_space": {name: Space.to_dict()}, "settings",
            "needs_curvature", "backends", "reference"}``.
        """
        return {"defaults": dict(self.defaults),
                "search_space": {k: v.to_dict() for k, v in self.search_space.items()},
                "settings": dict(self.settings or {}),
                "needs_curvature": self.needs_curvature,
                "backends": list(self.backends),
                "reference": self.reference}

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
            merged[key] = coerce_value(self.name, key, value, self.defaults[key])
        return merged

    def build(self, *, model: nn.Module, loss: CurvatureLoss,
              hyperparameters: Mapping[str, Any] | None = None,
              settings: Mapping[str, Any] | None = None) -> torch.optim.Optimizer:
        """Build the optimizer for ``model`` with its settings and the resolved
        ``hyperparameters``.

        Args:
            settings: the fixed settings to build with (a run passes its
                ``RunConfig.settings_dict``, so the record's settings are the ones that run);
                ``None``: :attr:`settings`.

        Raises:
            HyperparameterError: unknown, ill-typed or out-of-range values (the optimizer's own
                ``ValueError`` is re-raised as this, with a one-line message).
        """
        resolved = self.resolve(hyperparameters)
        try:
            fixed = self.settings if settings is None else settings
            return self.factory(model=model, loss=loss, **(fixed or {}), **resolved)
        except (ValueError, TypeError) as error:
            message = " ".join(str(error).split())
            raise HyperparameterError(f"optimizer {self.name!r}: {message}") from error


OPTIMIZERS: Registry[OptimizerSpec] = Registry(
    kind="optimizer", package="curvebench.optimizers", entry_point_group="curvebench.optimizers"
)


def register_optimizer(spec: OptimizerSpec) -> OptimizerSpec:
    """Add ``spec`` to :data:`OPTIMIZERS` (raises on a duplicate name)."""
    return OPTIMIZERS.register(spec)


def get_optimizer(name: str) -> OptimizerSpec:
    """Look an optimizer up by name (raises :class:`~curvebench.registry.UnknownNameError`)."""
    return OPTIMIZERS.get(name)
