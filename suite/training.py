"""Training to the target: steps, seconds and final loss, and robustness to hyperparameters.

Each class trains once, in ``setup_cache`` (one process, deterministic seeds, through
:func:`curvebench.harness.run`), and its tracks read the results. A result that cannot exist
(the target was never reached) is NaN; a combination that cannot run is n/a.
"""

from __future__ import annotations

import math
from typing import Any

from curvebench.harness import run
from curvebench.optimizers import HyperparameterError, get_optimizer
from curvebench.problems import get_problem
from suite.workloads import (
    ROBUSTNESS_SAMPLES,
    ROBUSTNESS_TAGS,
    SEED,
    TRAINING_TAGS,
    hyperparameter_sample,
    nan_if_none,
    optimizer_names,
    problem_names,
    training_budget,
    unsupported_model_errors,
    unsupported_reason,
)

#: What the tracks need from one run (a RunRecord holds far more).
Summary = dict[str, Any]


def train_once(problem: str, optimizer: str,
               hyperparameters: dict[str, Any] | None = None) -> Summary | None:
    """One harness run from seed :data:`~suite.workloads.SEED`, stopping at the target.

    Returns:
        ``status``, ``steps_to_target``, ``seconds_to_target`` and ``final_train_loss`` (NaN
        where they do not exist), or None when the combination cannot run.
    """
    problem_spec = get_problem(problem)
    if unsupported_reason(problem_spec, get_optimizer(optimizer)) is not None:
        return None
    try:
        record = run(problem=problem, optimizer=optimizer, hyperparameters=hyperparameters,
                     seed=SEED, budget=training_budget(problem_spec), stop_at_target=True)
    except HyperparameterError as error:
        if isinstance(error.__cause__, unsupported_model_errors()):
            return None
        raise
    final_train_loss = record.final.get("train_loss")
    return {
        "status": record.status,
        "steps_to_target": nan_if_none(record.steps_to_target),
        "seconds_to_target": nan_if_none(record.seconds_to_target),
        "final_train_loss": nan_if_none(final_train_loss),
    }


class TrainingToTarget:
    """Each optimizer at its default hyperparameters on each training problem, to the target."""

    params = (problem_names(TRAINING_TAGS), optimizer_names())
    param_names = ("problem", "optimizer")
    timeout = 120

    def setup_cache(self) -> dict[str, dict[str, Summary | None]]:
        return {problem: {optimizer: train_once(problem, optimizer)
                          for optimizer in self.params[1]}
                for problem in self.params[0]}

    setup_cache.timeout = 1500

    def setup(self, results, problem: str, optimizer: str) -> None:
        if results[problem][optimizer] is None:
            raise NotImplementedError(f"{optimizer} cannot run on {problem}")

    def track_steps_to_target(self, results, problem: str, optimizer: str) -> float:
        """Optimizer steps until the problem's target was first met (NaN: never)."""
        return results[problem][optimizer]["steps_to_target"]

    track_steps_to_target.unit = "steps"

    def track_seconds_to_target(self, results, problem: str, optimizer: str) -> float:
        """Measured training seconds until the target was first met (NaN: never)."""
        return results[problem][optimizer]["seconds_to_target"]

    track_seconds_to_target.unit = "seconds"

    def track_final_loss(self, results, problem: str, optimizer: str) -> float:
        """Training loss when the run stopped (at the target or the end of the budget)."""
        return results[problem][optimizer]["final_train_loss"]

    track_final_loss.unit = "train loss"


class Robustness:
    """Fraction of a fixed, seeded sample of hyperparameter settings that reaches the target.

    :data:`~suite.workloads.ROBUSTNESS_SAMPLES` settings per optimizer are drawn from its search
    space (:func:`~suite.workloads.hyperparameter_sample`); identical settings run once.
    """

    params = (problem_names(ROBUSTNESS_TAGS), optimizer_names())
    param_names = ("problem", "optimizer")
    timeout = 120

    def setup_cache(self) -> dict[str, dict[str, float | None]]:
        fractions: dict[str, dict[str, float | None]] = {}
        for problem in self.params[0]:
            fractions[problem] = {}
            for optimizer in self.params[1]:
                fractions[problem][optimizer] = self._fraction(problem, optimizer)
        return fractions

    setup_cache.timeout = 1500

    @staticmethod
    def _fraction(problem: str, optimizer: str) -> float | None:
        reached: dict[tuple, bool] = {}
        settings = hyperparameter_sample(optimizer, n=ROBUSTNESS_SAMPLES)
        for setting in settings:
            key = tuple(sorted(setting.items()))
            if key not in reached:
                summary = train_once(problem, optimizer, setting)
                if summary is None:
                    return None
                reached[key] = not math.isnan(summary["steps_to_target"])
        return sum(reached[tuple(sorted(s.items()))] for s in settings) / len(settings)

    def setup(self, fractions, problem: str, optimizer: str) -> None:
        if fractions[problem][optimizer] is None:
            raise NotImplementedError(f"{optimizer} cannot run on {problem}")

    def track_fraction_reaching_target(self, fractions, problem: str, optimizer: str) -> float:
        """Share of the sampled settings whose run met the target within the budget."""
        return fractions[problem][optimizer]

    track_fraction_reaching_target.unit = "fraction"
