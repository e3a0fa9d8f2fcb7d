"""Cost of the building blocks: a gradient, a GGN-vector product, and their ratio.

Parametrised over every problem tagged :data:`~suite.workloads.STEP_TAGS` (the products do not
depend on an optimizer). The GGN product comes from :mod:`curvebench.curvature`; on a commit
without it the GGN benchmarks are n/a.
"""

from __future__ import annotations

import functools
import importlib
import statistics
import time
from types import ModuleType

import torch

from suite.workloads import SEED, STEP_TAGS, problem_names, warm_model_batch

#: Alternating gradient/product measurements whose median gives the ratio.
RATIO_REPEATS = 7
#: Minimum seconds each measurement of the ratio lasts (calls are repeated until it does).
RATIO_MIN_SECONDS = 0.02


def _curvature_module() -> ModuleType:
    """:mod:`curvebench.curvature`, or NotImplementedError (asv: n/a) where it does not exist."""
    try:
        return importlib.import_module("curvebench.curvature")
    except ImportError as error:
        raise NotImplementedError(f"no curvature module in this commit: {error}") from error


def _seconds_per_call(function, *, min_seconds: float) -> float:
    """Mean seconds of one ``function()`` over enough calls to last ``min_seconds``."""
    calls, start = 0, time.perf_counter()
    while True:
        function()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls


@functools.cache
def _linearized(problem: str):
    """The problem's warm batch, a :class:`Linearization` of it and a seeded vector (per process).

    Raises:
        NotImplementedError: no :mod:`curvebench.curvature` in this commit.
    """
    curvature = _curvature_module()
    batch = warm_model_batch(problem)
    linearization = curvature.Linearization(batch.model, loss=batch.loss, inputs=batch.inputs,
                                            targets=batch.targets)
    generator = torch.Generator().manual_seed(SEED)
    vector = torch.randn(linearization.num_parameters, generator=generator,
                         dtype=batch.inputs.dtype)
    linearization.ggn_vector_product(vector)
    return batch, linearization, vector


class Gradient:
    """A forward and backward pass on one mini-batch: the unit of work of a first-order step."""

    params = problem_names(STEP_TAGS)
    param_names = ("problem",)
    warmup_time = 0.0
    repeat = (5, 20, 3.0)
    timeout = 120

    def setup(self, problem: str) -> None:
        self.batch = warm_model_batch(problem)

    def time_gradient(self, problem: str) -> None:
        """Seconds of one gradient (forward and backward) on the problem's batch."""
        self.batch.gradient()


class GGNVectorProduct:
    """One ``G v = Jᵀ H J v`` on a linearisation already built for the batch (as CG uses it)."""

    params = problem_names(STEP_TAGS)
    param_names = ("problem",)
    warmup_time = 0.0
    repeat = (5, 20, 3.0)
    timeout = 120

    def setup(self, problem: str) -> None:
        self.batch, self.linearization, self.vector = _linearized(problem)

    def time_ggn_vector_product(self, problem: str) -> None:
        """Seconds of one GGN-vector product (the linearisation is reused, as CG does)."""
        self.linearization.ggn_vector_product(self.vector)

    def track_ggn_product_over_gradient(self, problem: str) -> float:
        """Cost of one GGN-vector product in gradients: median ratio, measured in one process.

        Product and gradient are timed alternately, :data:`RATIO_REPEATS` times, so load from
        other processes hits both alike.
        """
        ratios = []
        for _ in range(RATIO_REPEATS):
            product = _seconds_per_call(lambda: self.linearization.ggn_vector_product(self.vector),
                                        min_seconds=RATIO_MIN_SECONDS)
            gradient = _seconds_per_call(self.batch.gradient, min_seconds=RATIO_MIN_SECONDS)
            ratios.append(product / gradient)
        return statistics.median(ratios)

    track_ggn_product_over_gradient.unit = "gradients"
