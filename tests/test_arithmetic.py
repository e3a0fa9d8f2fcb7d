"""``curvebench.arithmetic``: flops of matrix products (torch's formulas) and decompositions
(ours), against counts written out by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from curvebench.arithmetic import count_flops
from curvebench.curvature import Linearization
from curvebench.losses import CrossEntropyLoss


def _spd(n: int) -> torch.Tensor:
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return a @ a.T + n * torch.eye(n, dtype=torch.float64)


def test_an_sgd_step_of_a_linear_chain_counts_forward_weight_and_input_gradients():
    """With ``c_l = batch · d_in · d_out``: forward ``Σ c``, weight gradients ``Σ c``, input
    gradients ``Σ_{l>1} c`` (the first layer's input needs none), two flops each."""
    widths, batch = [7, 5, 4, 3], 6
    layers = [nn.Linear(a, b) for a, b in zip(widths, widths[1:], strict=False)]
    model = nn.Sequential(layers[0], nn.ReLU(), layers[1], nn.Tanh(), layers[2])
    inputs, targets = torch.randn(batch, 7), torch.randint(0, 3, (batch,))

    def step() -> None:
        model.zero_grad()
        nn.functional.cross_entropy(model(inputs), targets).backward()

    costs = [batch * a * b for a, b in zip(widths, widths[1:], strict=False)]
    counted = count_flops(step, calls=3)
    assert counted.per_call == 2 * (2 * sum(costs) + sum(costs[1:]))
    assert counted.uncounted == {}


def test_products_in_place_count_as_out_of_place():
    """``addmm_`` (a running average updated in place) and ``baddbmm_`` count like ``addmm``
    and ``baddbmm``: ``2·m·k·n`` per product."""
    a, b = torch.randn(6, 4), torch.randn(4, 5)
    running, batched = torch.zeros(6, 5), torch.zeros(3, 6, 5)
    counted = count_flops(lambda: (running.addmm_(a, b, beta=0.5),
                                   batched.baddbmm_(a.expand(3, 6, 4), b.expand(3, 4, 5))))
    assert counted.flops == 2 * 6 * 4 * 5 * (1 + 3)


@pytest.mark.parametrize(("fn", "expected"), [
    (lambda a: torch.linalg.cholesky(a), 12 ** 3 // 3),
    (lambda a: torch.cholesky_inverse(torch.linalg.cholesky(a)), 12 ** 3 // 3 + 2 * 12 ** 3 // 3),
    (lambda a: torch.linalg.eigh(a), 8 * 12 ** 3 // 3),
    (lambda a: torch.linalg.inv(a), 2 * 12 ** 3),
    (lambda a: torch.linalg.solve_triangular(a.tril(), a[:, :5], upper=False), 12 ** 2 * 5),
    (lambda a: torch.linalg.solve_triangular(a.tril(), a[:5], upper=False, left=False),
     12 ** 2 * 5),  # X A = B: B's rows are the right-hand sides
    (lambda a: torch.cholesky_solve(a[:, :5], a.tril()), 2 * 12 ** 2 * 5),
    (lambda a: torch.linalg.solve(a, a[:, :5]), 2 * 12 ** 3 // 3 + 2 * 12 ** 2 * 5),
    (lambda a: torch.linalg.qr(a[:, :5]), 2 * 12 * 25 - 2 * 125 // 3),
    (lambda a: torch.linalg.svd(a[:5]), 4 * 12 * 25 - 4 * 125 // 3),
    (lambda a: torch.linalg.cholesky(torch.stack([a, a])), 2 * (12 ** 3 // 3)),  # batched
])
def test_decompositions_have_their_textbook_counts(fn, expected):
    matrix = _spd(12)
    assert count_flops(lambda: fn(matrix)).flops == expected


def test_eigenvalues_alone_count_less_than_with_vectors():
    matrix = _spd(12)
    with torch.inference_mode():  # eigvalsh dispatched as itself
        assert count_flops(lambda: torch.linalg.eigvalsh(matrix)).flops == 4 * 12 ** 3 // 3
    no_vectors = count_flops(lambda: torch.ops.aten._linalg_eigh(matrix, "L", False))
    assert no_vectors.flops == 4 * 12 ** 3 // 3


def test_linear_algebra_without_a_formula_is_reported_not_taken_as_free():
    a = _spd(6)
    counted = count_flops(lambda: (torch.linalg.pinv(a), torch.linalg.det(a), a.sqrt(),
                                   torch.linalg.vector_norm(a)))
    assert set(counted.uncounted) == {"aten.linalg_pinv", "aten._linalg_det"}


def test_counts_gradients_with_respect_to_intermediate_tensors():
    """torch's FlopCounterMode hooks every module's output, which makes
    ``torch.autograd.grad`` with respect to an intermediate tensor fail; ours must not."""
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    inputs, targets = torch.randn(5, 4), torch.randint(0, 2, (5,))
    counted = count_flops(lambda: Linearization(model, loss=CrossEntropyLoss(), inputs=inputs,
                                                targets=targets))
    assert counted.flops > 0


def test_calls_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        count_flops(lambda: None, calls=0)
