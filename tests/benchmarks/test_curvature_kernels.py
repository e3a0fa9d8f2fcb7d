"""Micro-benchmarks of the curvature kernels (pytest-benchmark; run explicitly).

    python -m pytest tests/benchmarks/test_curvature_kernels.py --run-benchmarks \
        --benchmark-enable

Compare a GGN-vector product and one CG iteration with one gradient on the same model and
batch (the groups put them side by side). Numbers go in notes, never in assertions.
"""

from __future__ import annotations

import pytest
import torch

from curvebench.conjugate_gradient import conjugate_gradient
from curvebench.curvature import Linearization

pytestmark = pytest.mark.kernel_benchmark

def test_gradient(benchmark, setup):
    name, model, loss, inputs, targets = setup
    benchmark.group = name
    params = list(model.parameters())
    benchmark(lambda: torch.autograd.grad(loss(model(inputs), targets), params))


def test_linearization(benchmark, setup):
    name, model, loss, inputs, targets = setup
    benchmark.group = name
    benchmark(lambda: Linearization(model, loss=loss, inputs=inputs, targets=targets))


@pytest.mark.parametrize("jvp_method", ["layers", "double_vjp"])
def test_ggn_vector_product(benchmark, setup, jvp_method):
    name, model, loss, inputs, targets = setup
    benchmark.group = name
    lin = Linearization(model, loss=loss, inputs=inputs, targets=targets, jvp_method=jvp_method)
    vector = torch.randn(lin.num_parameters)
    result = benchmark(lin.ggn_vector_product, vector)
    assert result.shape == vector.shape


def test_one_cg_iteration(benchmark, setup):
    name, model, loss, inputs, targets = setup
    benchmark.group = name
    lin = Linearization(model, loss=loss, inputs=inputs, targets=targets)
    result = benchmark(conjugate_gradient, lin.ggn_vector_product, gradient=lin.gradient,
                       damping=1e-3, max_iterations=1)
    assert result.iterations == 1
