"""K-FAC from kfac-jax (the reference implementation), registered for the JAX backend only.

The spec names the library's standard adaptive configuration (adaptive learning rate and
momentum, Levenberg–Marquardt damping, curvature EMA 0.95, inverses every 5 steps; see
:mod:`curvebench.jax_backend.kfac`). Its factory builds the JAX stepper and is used by the JAX
backend (:func:`curvebench.jax_backend.optimizers.build_jax_optimizer`); ``run`` with the torch
backend refuses it by its ``backends`` flag. Importing this module imports neither jax nor
kfac-jax.
"""

from __future__ import annotations

from typing import Any

from curvebench.optimizers.spec import LogUniform, OptimizerSpec, Uniform, register_optimizer

__all__ = ["KFAC_JAX_DEFAULTS", "kfac_jax_factory"]

#: The tunable settings and their defaults (the library's standard adaptive configuration).
KFAC_JAX_DEFAULTS: dict[str, float | int] = {
    "initial_damping": 1.0,
    "min_damping": 1e-8,
    "l2_reg": 0.0,
    "curvature_ema": 0.95,
    "inverse_update_period": 5,
    "damping_adaptation_interval": 5,
}


def kfac_jax_factory(*, apply: Any, loss: Any, params: Any, seed: int = 0,
                     **hyperparameters: Any) -> Any:
    """Build :class:`~curvebench.jax_backend.kfac.KfacJaxStepper` (JAX backend only).

    Raises:
        ValueError: out-of-range hyperparameters.
    """
    from curvebench.jax_backend.kfac import KfacJaxStepper

    return KfacJaxStepper(apply=apply, loss=loss, params=params,
                          hyperparameters=hyperparameters, seed=seed)


register_optimizer(
    OptimizerSpec(
        name="kfac-jax",
        description="K-FAC from kfac-jax, adaptive learning rate, momentum and damping (JAX).",
        factory=kfac_jax_factory,
        defaults=KFAC_JAX_DEFAULTS,
        search_space={"initial_damping": LogUniform(1e-4, 10.0),
                      "curvature_ema": Uniform(0.5, 0.99)},
        needs_curvature=True,
        deterministic=True,
        reference="Martens & Grosse 2015; Botev & Martens, kfac-jax (the library's "
                  "standard adaptive configuration).",
        backends=("jax",),
    )
)
