"""Build a JAX optimizer by name: ``sgd``, ``adam``, ``adamw``, ``sgn`` and ``kfac-jax``.

Every optimizer comes back as an object with ``step(inputs=, targets=) -> loss``,
``compile_seconds`` and ``params`` (:class:`~curvebench.jax_backend.training.JaxStepper`, or
:class:`~curvebench.jax_backend.kfac.KfacJaxStepper` for kfac-jax). Hyperparameters of the
methods that also exist in torch are resolved by the torch registry's specs, so both backends
share names, defaults and validation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from curvebench.architecture import Architecture
from curvebench.jax_backend.first_order import FIRST_ORDER, first_order_update, optax_transformation
from curvebench.jax_backend.losses import jax_loss_by_name
from curvebench.jax_backend.models import Params, compile_architecture
from curvebench.jax_backend.training import JaxStepper
from curvebench.optimizers import HyperparameterError, get_optimizer

__all__ = ["JAX_OPTIMIZERS", "build_jax_optimizer"]

#: The names :func:`build_jax_optimizer` accepts.
JAX_OPTIMIZERS = (*FIRST_ORDER, "sgn", "kfac-jax")


def build_jax_optimizer(name: str, *, architecture: Architecture, params: Params, loss: str,
                        hyperparameters: Mapping[str, Any] | None = None, seed: int = 0) -> Any:
    """The JAX optimizer ``name`` on a model, ready to ``step(inputs=, targets=)``.

    Args:
        name: one of :data:`JAX_OPTIMIZERS`.
        architecture: the network (see :mod:`curvebench.architecture`).
        params: its initial parameters (e.g. from :func:`~curvebench.jax_backend.models.
            from_torch`).
        loss: the loss's registered name.
        hyperparameters: overrides of the defaults.
        seed: seeds the random numbers of stochastic methods (kfac-jax's sampled Fisher).

    Raises:
        HyperparameterError: unknown name, unknown or invalid hyperparameters (one line).
    """
    apply = compile_architecture(architecture)
    jax_loss = jax_loss_by_name(loss)
    try:
        if name in FIRST_ORDER:
            resolved = get_optimizer(name).resolve(hyperparameters)
            transformation = optax_transformation(name, resolved)
            return JaxStepper(update=first_order_update(apply=apply, loss=jax_loss,
                                                        transformation=transformation),
                              params=params, state=transformation.init(params), name=name,
                              counts={"forward_passes": 1, "backward_passes": 1})
        if name == "sgn":
            from curvebench.jax_backend.sgn import sgn_settings, sgn_state, sgn_update

            settings = sgn_settings(hyperparameters)
            update = sgn_update(apply=apply, loss=jax_loss, settings=settings,
                                reverse_apply=compile_architecture(
                                    architecture, canonical_transposes=True))
            return JaxStepper(update=update,
                              params=params, state=sgn_state(params, settings), name=name,
                              counts={"forward_passes": 1, "backward_passes": 1})
        if name == "kfac-jax":  # the registered spec's factory is the JAX stepper's
            spec = get_optimizer(name)
            return spec.factory(apply=apply, loss=jax_loss, params=params, seed=seed,
                                **(spec.settings or {}), **spec.resolve(hyperparameters))
    except (ValueError, TypeError) as error:
        if isinstance(error, HyperparameterError):
            raise
        raise HyperparameterError(f"optimizer {name!r}: {' '.join(str(error).split())}") from error
    raise HyperparameterError(f"no JAX optimizer {name!r}; known: {', '.join(JAX_OPTIMIZERS)}")
