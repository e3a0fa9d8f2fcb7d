"""Benchmark problems: a registry of models, losses, data, targets and budgets.

Add a problem by adding a module to this package that calls :func:`register_problem`, or from
another package through the ``curvebench.problems`` entry-point group.
"""

from curvebench.problems.spec import (
    PROBLEMS,
    Budget,
    ProblemSpec,
    Target,
    get_problem,
    register_problem,
)

__all__ = ["PROBLEMS", "Budget", "ProblemSpec", "Target", "get_problem", "register_problem"]
