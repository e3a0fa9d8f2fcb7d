"""Shared pieces of the JAX tests: float64 scope, problems as (torch model, JAX model, batches)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import jax
import numpy as np
import torch

from curvebench.batches import ShuffledBatches
from curvebench.problems import get_problem


@contextmanager
def jax_float64() -> Iterator[None]:
    """Enable JAX's float64 inside the block only, restoring the previous setting after it."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


@cache
def _dataset(problem: str):
    """The problem's data, loaded once per test session (mnist1d is generated on each load)."""
    return get_problem(problem).dataset()


def float64_batches(problem: str, *, batch_size: int, count: int, seed: int = 0
                    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` training batches of a problem, inputs (and float targets) as float64."""
    data = _dataset(problem)
    iterator = ShuffledBatches(torch.as_tensor(data.x_train), torch.as_tensor(data.y_train),
                               batch_size=batch_size, seed=seed)
    batches = []
    for _ in range(count):
        x, y = next(iterator)
        batches.append((x.double(), y.double() if y.is_floating_point() else y))
    return batches


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """``‖a − b‖ / max(‖b‖, tiny)``."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))
