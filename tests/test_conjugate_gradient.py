"""Truncated conjugate gradient against dense solves, in float64."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from curvebench import conjugate_gradient as cg_module
from curvebench.conjugate_gradient import CGResult, conjugate_gradient
from curvebench.operator_counts import OperatorCounter


def _spd(n: int, *, condition: float = 100.0, seed: int = 0) -> torch.Tensor:
    """A symmetric positive definite matrix with eigenvalues in ``[1, condition]``."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=generator))
    eigenvalues = torch.logspace(0, torch.log10(torch.tensor(condition)).item(), n,
                                 dtype=torch.float64)
    return q @ torch.diag(eigenvalues) @ q.T


def _gradient(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _model_value(matrix, gradient, damping, d) -> float:
    return float(gradient @ d + 0.5 * d @ (matrix @ d + damping * d))


@pytest.mark.parametrize("damping", [0.0, 0.5])
def test_matches_dense_solve(damping):
    n = 20
    matrix, g = _spd(n), _gradient(n)
    result = conjugate_gradient(lambda v: matrix @ v, gradient=g, damping=damping,
                                max_iterations=10 * n, tolerance=1e-13)
    expected = torch.linalg.solve(matrix + damping * torch.eye(n, dtype=torch.float64), -g)
    assert torch.allclose(result.direction, expected, rtol=1e-10, atol=1e-12)
    assert result.stop_reason == "tolerance"
    assert result.relative_residual <= 1e-13
    assert result.products == result.iterations
    assert result.quadratic_value == pytest.approx(
        _model_value(matrix, g, damping, result.direction), rel=1e-10)
    assert result.curvature == pytest.approx(
        float(result.direction @ (matrix @ result.direction + damping * result.direction)),
        rel=1e-10)


def test_semidefinite_matrix_with_damping():
    n = 15
    factor = torch.randn(n, 4, dtype=torch.float64)
    matrix = factor @ factor.T  # rank 4
    g = _gradient(n)
    result = conjugate_gradient(lambda v: matrix @ v, gradient=g, damping=1e-2,
                                max_iterations=100, tolerance=1e-12)
    expected = torch.linalg.solve(matrix + 1e-2 * torch.eye(n, dtype=torch.float64), -g)
    assert torch.allclose(result.direction, expected, rtol=1e-9, atol=1e-10)


def test_truncation_history_and_monotone_model():
    n = 30
    matrix, g = _spd(n, condition=1e4), _gradient(n)
    result = conjugate_gradient(lambda v: matrix @ v, gradient=g, max_iterations=5)
    assert result.iterations == result.products == 5
    assert result.stop_reason == "max_iterations"
    assert len(result.residual_history) == len(result.model_values) == 6
    assert result.residual_history[0] == pytest.approx(1.0)
    assert result.model_values[0] == 0.0
    assert all(b < a for a, b in zip(result.model_values, result.model_values[1:], strict=False))
    true_residual = float((-g - matrix @ result.direction).norm() / g.norm())
    assert result.relative_residual == pytest.approx(true_residual, rel=1e-8)
    # With k iterations CG minimises q over the Krylov space: no 5-step gradient descent beats it.
    assert result.quadratic_value < _steepest_descent_value(matrix, g, steps=5)


def _steepest_descent_value(matrix, g, *, steps: int) -> float:
    d = torch.zeros_like(g)
    for _ in range(steps):
        r = -g - matrix @ d
        d = d + (r @ r) / (r @ (matrix @ r)) * r
    return _model_value(matrix, g, 0.0, d)


def test_warm_start_from_solution_needs_no_iteration():
    n = 12
    matrix, g = _spd(n), _gradient(n)
    solution = torch.linalg.solve(matrix, -g)
    result = conjugate_gradient(lambda v: matrix @ v, gradient=g, max_iterations=50,
                                tolerance=1e-8, initial=solution)
    assert result.iterations == 0
    assert result.products == 1
    assert result.stop_reason == "tolerance"
    assert torch.allclose(result.direction, solution)


def test_harmful_warm_start_is_ignored_and_good_one_helps():
    n = 25
    matrix, g = _spd(n, condition=1e3), _gradient(n)
    solution = torch.linalg.solve(matrix, -g)
    cold = conjugate_gradient(lambda v: matrix @ v, gradient=g, max_iterations=3)
    bad = conjugate_gradient(lambda v: matrix @ v, gradient=g, max_iterations=3,
                             initial=-solution)
    assert torch.allclose(bad.direction, cold.direction)
    assert bad.products == cold.products + 1
    warm = conjugate_gradient(lambda v: matrix @ v, gradient=g, max_iterations=3,
                              initial=0.9 * solution)
    assert warm.quadratic_value < cold.quadratic_value
    assert warm.warm_started and not bad.warm_started and not cold.warm_started


def test_diagonal_preconditioner_converges_faster_to_the_same_solution():
    n = 40
    scales = torch.logspace(0, 4, n, dtype=torch.float64)
    base = _spd(n, condition=3.0)
    matrix = scales.sqrt()[:, None] * base * scales.sqrt()[None, :]
    g = _gradient(n)
    plain = conjugate_gradient(lambda v: matrix @ v, gradient=g, max_iterations=500,
                               tolerance=1e-10)
    preconditioned = conjugate_gradient(lambda v: matrix @ v, gradient=g, max_iterations=500,
                                        tolerance=1e-10, preconditioner=matrix.diagonal())
    expected = torch.linalg.solve(matrix, -g)
    assert torch.allclose(preconditioned.direction, expected, rtol=1e-7, atol=1e-12)
    assert preconditioned.iterations < plain.iterations


def test_relative_progress_rule_stops_early():
    n = 400
    matrix, g = _spd(n, condition=1e6), _gradient(n)
    full = conjugate_gradient(lambda v: matrix @ v, gradient=g, max_iterations=300)
    early = conjugate_gradient(lambda v: matrix @ v, gradient=g, max_iterations=300,
                               relative_progress=True, progress_epsilon=5e-2)
    assert early.stop_reason == "relative_progress"
    assert 10 < early.iterations < full.iterations
    values = early.model_values
    window = max(10, -(-early.iterations // 10))
    i = early.iterations
    assert (values[i] - values[i - window]) / values[i] < window * 5e-2


def test_zero_gradient_and_nonpositive_curvature():
    n = 5
    result = conjugate_gradient(lambda v: v, gradient=torch.zeros(n, dtype=torch.float64),
                                max_iterations=3)
    assert result.stop_reason == "zero_gradient" and result.iterations == 0
    assert torch.count_nonzero(result.direction) == 0
    negative = conjugate_gradient(lambda v: -v, gradient=_gradient(n), max_iterations=3)
    assert negative.stop_reason == "nonpositive_curvature"
    assert torch.count_nonzero(negative.direction) == 0


@pytest.mark.parametrize("variant", ["cold", "tolerance", "warm", "preconditioned",
                                     "relative_progress", "damped"])
@pytest.mark.parametrize("iterations", [1, 2, 6])
def test_a_last_iteration_by_the_quadratic_form_gives_the_solve_with_a_product(variant,
                                                                               iterations):
    """The last iteration needs only ``sᵀ(G + λI)s``: the same direction, model values and
    curvature as with the product, one product fewer, and the final residual unknown (NaN).
    "cold" runs without host reads; the others test after every product."""
    n = 12
    matrix, g = _spd(n), _gradient(n)
    options = {"tolerance": {"tolerance": 1e-12},
               "warm": {"initial": 0.5 * torch.linalg.solve(matrix, -g)},
               "preconditioned": {"preconditioner": torch.linspace(0.5, 2.0, n,
                                                                   dtype=torch.float64)},
               "relative_progress": {"relative_progress": True},
               "damped": {"damping": 0.3}}.get(variant, {})
    forms = []

    def quadratic_form(v: torch.Tensor) -> torch.Tensor:
        forms.append(v.clone())
        return v @ matrix @ v

    full = conjugate_gradient(lambda v: matrix @ v, gradient=g, max_iterations=iterations,
                              **options)
    cheap = conjugate_gradient(lambda v: matrix @ v, gradient=g, max_iterations=iterations,
                               quadratic_form=quadratic_form, **options)
    assert full.warm_started == cheap.warm_started == (variant == "warm")
    assert len(forms) == cheap.quadratic_forms == 1 and full.quadratic_forms == 0
    assert cheap.products == full.products - 1
    assert cheap.iterations == full.iterations == iterations
    torch.testing.assert_close(cheap.direction, full.direction, rtol=1e-12, atol=1e-14)
    assert cheap.model_values == pytest.approx(full.model_values, rel=1e-11)
    damping = options.get("damping", 0.0)
    d = cheap.direction
    assert cheap.quadratic_value == pytest.approx(_model_value(matrix, g, damping, d), rel=1e-11)
    assert cheap.curvature == pytest.approx(float(d @ (matrix @ d + damping * d)), rel=1e-11)
    assert cheap.residual_history[:-1] == pytest.approx(full.residual_history[:-1], rel=1e-12)
    assert math.isnan(cheap.relative_residual) and not math.isnan(full.relative_residual)
    assert cheap.stop_reason == "max_iterations"


def test_a_last_iteration_by_the_quadratic_form_stops_on_nonpositive_curvature():
    """A non-positive ``sᵀGs`` from the form stops CG before it moves, as a product's does."""
    n = 6
    g = _gradient(n)
    negative = conjugate_gradient(lambda v: -v, gradient=g, max_iterations=1,
                                  quadratic_form=lambda v: -(v @ v))
    assert negative.stop_reason == "nonpositive_curvature" and negative.quadratic_forms == 1
    assert torch.count_nonzero(negative.direction) == 0 and negative.quadratic_value == 0.0
    matrix = torch.diag(torch.linspace(1.0, 2.0, n, dtype=torch.float64))
    second = conjugate_gradient(lambda v: matrix @ v, gradient=g, max_iterations=2,
                                tolerance=1e-14, quadratic_form=lambda v: -(v @ v))
    one = conjugate_gradient(lambda v: matrix @ v, gradient=g, max_iterations=1, tolerance=1e-14)
    assert second.stop_reason == "nonpositive_curvature" and second.iterations == 1
    torch.testing.assert_close(second.direction, one.direction, rtol=1e-14, atol=0.0)
    assert second.relative_residual == pytest.approx(one.relative_residual, rel=1e-14)
    assert second.quadratic_value == pytest.approx(one.quadratic_value, rel=1e-12)


def test_invalid_arguments_raise():
    g = _gradient(3)
    with pytest.raises(ValueError):
        conjugate_gradient(lambda v: v, gradient=g, damping=-1.0, max_iterations=1)
    with pytest.raises(ValueError):
        conjugate_gradient(lambda v: v, gradient=g, max_iterations=-1)
    with pytest.raises(ValueError):
        conjugate_gradient(lambda v: v, gradient=g, max_iterations=1,
                           preconditioner=torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError):
        conjugate_gradient(lambda v: v, gradient=g, max_iterations=1,
                           initial=torch.zeros(4, dtype=torch.float64))


def test_result_is_frozen():
    result = conjugate_gradient(lambda v: v, gradient=_gradient(3), max_iterations=1)
    assert isinstance(result, CGResult)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.iterations = 2  # type: ignore[misc]


@pytest.mark.parametrize("initial_scale", [None, 0.9, -1.0])  # cold, accepted, refused
def test_on_step_reports_the_iterate_as_a_combination_of_the_products_vectors(initial_scale):
    """Accumulating ``α v`` for every ``on_step(α)``, with ``v`` the latest product's vector,
    rebuilds the direction (how SGN carries a layer's tangent along ``d`` for free)."""
    n = 20
    matrix, g = _spd(n, condition=1e3), _gradient(n)
    initial = None if initial_scale is None else initial_scale * torch.linalg.solve(matrix, -g)
    latest: list[torch.Tensor] = []
    total = torch.zeros(n, dtype=torch.float64)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        latest[:] = [v.clone()]
        return matrix @ v

    def on_step(alpha: float) -> None:
        total.add_(latest[0], alpha=alpha)

    result = conjugate_gradient(matvec, gradient=g, damping=0.1, max_iterations=4,
                                initial=initial, on_step=on_step)
    assert result.warm_started == (initial_scale == 0.9)
    torch.testing.assert_close(total, result.direction, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("case", "iterations", "tolerance"), [
    ("spd", 7, 0.0),              # no test meets a stop: one pass without host reads
    ("spd", 7, 1e-6),             # the tolerance is not met before the last iteration
    ("identity", 6, 0.0),         # the residual is exactly 0 after one iteration: replayed
    ("two_eigenvalues", 5, 1e-8),  # the tolerance is met at the second iteration: replayed
    ("two_eigenvalues", 2, 1e-8),  # ... at the last one: no replay
    ("negative", 3, 0.0),         # non-positive curvature at the first product: replayed
    ("zero_gradient", 3, 0.0),
])
def test_solve_without_host_reads_matches_the_tested_solve(case, iterations, tolerance,
                                                           monkeypatch):
    """Without a preconditioner, warm start or relative-progress rule, CG runs its iterations
    with device scalars and replays the stopping tests on them at the end (here as where host
    reads stall); the result is the one of the loop that tests after every product, and a
    replayed pass restarts ``on_step``."""
    monkeypatch.setattr(cg_module, "host_reads_stall", lambda device: True)
    n = 12
    two = torch.diag(torch.tensor([1.0] * 6 + [3.0] * 6, dtype=torch.float64))
    matrix = {"spd": _spd(n, condition=1e3), "identity": 2 * torch.eye(n, dtype=torch.float64),
              "two_eigenvalues": two,
              "negative": -torch.diag(torch.arange(1.0, n + 1, dtype=torch.float64))}.get(case)
    g = torch.zeros(n, dtype=torch.float64) if case == "zero_gradient" else _gradient(n)
    latest: list[torch.Tensor] = []
    totals = [torch.zeros(n, dtype=torch.float64)]
    restarts: list[int] = []

    def matvec(v: torch.Tensor) -> torch.Tensor:
        latest[:] = [v.clone()]
        return v if matrix is None else matrix @ v

    def on_step(alpha) -> None:
        totals[0] = totals[0] + alpha * latest[0]

    def on_restart() -> None:
        restarts.append(1)
        totals[0] = torch.zeros(n, dtype=torch.float64)

    with OperatorCounter() as counts:
        fast = conjugate_gradient(matvec, gradient=g, max_iterations=iterations,
                                  on_step=on_step, on_restart=on_restart, tolerance=tolerance)
    monkeypatch.setattr(cg_module, "_unsynchronised", lambda *args, **kwargs: None)
    tested = conjugate_gradient(matvec, gradient=g, max_iterations=iterations,
                                tolerance=tolerance)
    assert len(restarts) == (case not in ("spd", "two_eigenvalues") or iterations == 5)
    if not restarts:
        assert counts.host_reads == 1  # every scalar in one transfer
    if case == "two_eigenvalues":
        assert (fast.stop_reason, fast.iterations) == ("tolerance", 2)
    torch.testing.assert_close(totals[0], fast.direction, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fast.direction, tested.direction, rtol=1e-12, atol=1e-14)
    assert fast.stop_reason == tested.stop_reason
    assert (fast.iterations, fast.products) == (tested.iterations, tested.products)
    for ours, theirs in ((fast.residual_history, tested.residual_history),
                         (fast.model_values, tested.model_values),
                         ((fast.quadratic_value, fast.curvature),
                          (tested.quadratic_value, tested.curvature))):
        assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-14)


def test_a_positive_tolerance_tests_after_every_product_on_the_cpu():
    """On a CPU a host read costs nothing and a replay would waste products: a positive
    tolerance tests (reads) after each product; tolerance 0 reads once."""
    matrix, g = _spd(12, condition=1e3), _gradient(12)
    reads = {}
    for tolerance in (1e-6, 0.0):
        with OperatorCounter() as counts:
            result = conjugate_gradient(lambda v: matrix @ v, gradient=g, max_iterations=5,
                                        tolerance=tolerance)
        assert result.iterations == 5
        reads[tolerance] = counts.host_reads
    assert reads[0.0] == 1 and reads[1e-6] > 5


@pytest.mark.parametrize("tolerance", [0.0, 1e-10])  # without host reads; tested per product
@pytest.mark.parametrize("variant", ["cold", "warm", "preconditioned", "returns_its_input"])
def test_cg_writes_into_neither_the_gradient_nor_the_initial_guess(variant, tolerance):
    """CG starts its residual and direction as ``g`` itself and writes its first residual into
    the first product: ``g`` and the warm start keep their values, also when ``matvec``
    returns its input, and the solve is the dense one's."""
    n = 10
    identity = variant == "returns_its_input"
    matrix, g = (torch.eye(n, dtype=torch.float64) if identity else _spd(n, condition=1e2),
                 _gradient(n))
    initial = (0.5 * torch.linalg.solve(matrix, -g)) if variant == "warm" else None
    preconditioner = (torch.linspace(1.0, 2.0, n, dtype=torch.float64)
                      if variant == "preconditioned" else None)
    before = g.clone(), None if initial is None else initial.clone()
    result = conjugate_gradient(lambda v: v if identity else matrix @ v, gradient=g,
                                max_iterations=n, tolerance=tolerance, initial=initial,
                                preconditioner=preconditioner)
    assert torch.equal(g, before[0])
    if initial is not None:
        assert result.warm_started and torch.equal(initial, before[1])
    torch.testing.assert_close(result.direction, torch.linalg.solve(matrix, -g), rtol=1e-6,
                               atol=1e-8)
