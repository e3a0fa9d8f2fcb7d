"""Micro-benchmarks of the Kronecker-factor kernels (pytest-benchmark; run explicitly).

    python -m pytest tests/benchmarks/test_kronecker_kernels.py --run-benchmarks \
        --benchmark-enable

Per model (group): one gradient, one factor update per curvature type (forward pass recorded,
``A`` and ``S`` of every layer), and the damped decomposition of one factor per width and
method. Numbers go in notes, never in assertions.
"""

from __future__ import annotations

import pytest
import torch

from curvebench.kronecker import KroneckerFactorCollector, kfra_support
from curvebench.optimizers.kfac import INVERSE_METHODS, damped_decomposition

pytestmark = pytest.mark.kernel_benchmark

def test_gradient(benchmark, setup):
    name, model, loss, inputs, targets = setup
    benchmark.group = f"kronecker {name}"
    params = list(model.parameters())
    benchmark(lambda: torch.autograd.grad(loss(model(inputs), targets), params))


@pytest.mark.parametrize("curvature", ["kflr", "kfac", "kfra", "empirical"])
def test_factor_update(benchmark, setup, curvature):
    """Forward pass, gradient and the factors of every layer (what a factor-update step adds)."""
    name, model, loss, inputs, targets = setup
    if curvature == "kfra" and kfra_support(model) is not None:
        pytest.skip(kfra_support(model))
    benchmark.group = f"kronecker {name}"
    collector = KroneckerFactorCollector(model)
    params = list(model.parameters())

    def update():
        with collector.capture(activations=curvature == "kfra"):
            output = model(inputs)
        value = loss(output, targets)
        wrt = params + (collector.pre_activations() if curvature == "empirical" else [])
        gradients = torch.autograd.grad(value, wrt, retain_graph=True)
        collector.input_factors()
        collector.output_factors(curvature=curvature, loss=loss, output=output,
                                 pre_activation_gradients=gradients[len(params):] or None)
        collector.clear()

    benchmark(update)
    collector.remove()


@pytest.mark.parametrize("method", INVERSE_METHODS)
@pytest.mark.parametrize("width", [64, 256, 1024])
def test_damped_decomposition(benchmark, method, width):
    benchmark.group = f"decomposition {width}"
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2 * width, width, generator=generator)
    matrix = x.T @ x / (2 * width)
    benchmark(lambda: damped_decomposition(matrix, shift=1e-3, method=method))
