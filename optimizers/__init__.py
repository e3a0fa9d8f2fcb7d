"""Optimizers: a registry of specs (factory, defaults, search space, capability flags).

Add an optimizer by adding a module to this package that calls :func:`register_optimizer`, or
from another package through the ``curvebench.optimizers`` entry-point group.
"""

from curvebench.optimizers.base import CurvatureOptimizer
from curvebench.optimizers.spec import (
    OPTIMIZERS,
    Choice,
    HyperparameterError,
    IntLogUniform,
    IntUniform,
    LogUniform,
    OptimizerSpec,
    Uniform,
    get_optimizer,
    register_optimizer,
    torch_optimizer_factory,
)

__all__ = [
    "OPTIMIZERS",
    "Choice",
    "CurvatureOptimizer",
    "HyperparameterError",
    "IntLogUniform",
    "IntUniform",
    "LogUniform",
    "OptimizerSpec",
    "Uniform",
    "get_optimizer",
    "register_optimizer",
    "torch_optimizer_factory",
]
