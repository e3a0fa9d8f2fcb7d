"""SGN and Hessian-free: exact solves, damping rule, line search, hyperparameters, harness."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from curvebench import conjugate_gradient as cg_module
from curvebench import curvature
from curvebench.curvature import Linearization, UnsupportedModelError
from curvebench.harness import run
from curvebench.losses import CrossEntropyLoss, MSELoss
from curvebench.operator_counts import OperatorCounter
from curvebench.optimizers import HyperparameterError, get_optimizer
from curvebench.optimizers.sgn import GaussNewtonCG, armijo_backtracking, update_damping
from curvebench.problems import Budget, get_problem
from curvebench.problems.offline_problems import linreg_optimum
from curvebench.timing import PhaseTimer
from tests.dense_reference import dense_ggn, flat_parameters


def _linreg(dtype=torch.float64):
    problem = get_problem("synthetic-linreg")
    data = problem.dataset()
    model = problem.build_model(seed=0, dtype=dtype)
    return (model, problem.make_loss(), torch.as_tensor(data.x_train, dtype=dtype),
            torch.as_tensor(data.y_train, dtype=dtype))


def _exact(**overrides):
    settings = dict(cg_tolerance=1e-14, damping=0.0, damping_min=0.0, adaptive_damping=False,
                    line_search=False, warmup_steps=0)
    settings.update(overrides)
    return settings


def test_one_step_with_k_equal_n_and_no_damping_solves_linreg_exactly():
    model, loss, x, y = _linreg()
    n = sum(p.numel() for p in model.parameters())
    optimizer = GaussNewtonCG(model, loss=loss, **_exact(cg_iterations=n))
    before = float(optimizer.step(inputs=x, targets=y))
    with torch.no_grad():
        after = float(loss(model(x), y))
    optimum = linreg_optimum()
    assert before > 10 * optimum
    assert after == pytest.approx(optimum, rel=1e-10)
    assert optimizer.step_info["cg_relative_residual"] <= 1e-14
    assert optimizer.step_info["cg_iterations"] <= n
    # A truncated solve (k = 1) does not get there: the check can fail.
    model, loss, x, y = _linreg()
    GaussNewtonCG(model, loss=loss, **_exact(cg_iterations=1)).step(inputs=x, targets=y)
    with torch.no_grad():
        assert float(loss(model(x), y)) > 1.01 * optimum


def test_weight_decay_solves_ridge_regression_exactly():
    model, loss, x, y = _linreg()
    decay = 0.3
    n = sum(p.numel() for p in model.parameters())
    GaussNewtonCG(model, loss=loss, weight_decay=decay, **_exact(cg_iterations=n)).step(
        inputs=x, targets=y)
    # Closed form: minimise (1/(N·D))‖XW + b − Y‖² + (ω/2)(‖W‖² + ‖b‖²).
    features = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    scale = 2.0 / y.numel()
    system = scale * features.T @ features + decay * torch.eye(features.shape[1],
                                                               dtype=x.dtype)
    solution = torch.linalg.solve(system, scale * features.T @ y)
    ours = torch.cat([model.weight.detach().T, model.bias.detach()[None]], dim=0)
    assert torch.allclose(ours, solution, rtol=1e-9, atol=1e-11)


def test_update_damping_rule():
    assert update_damping(1.0, ratio=0.1) == 1.5
    assert update_damping(1.0, ratio=-3.0) == 1.5
    assert update_damping(1.0, ratio=math.nan) == 1.5
    assert update_damping(1.0, ratio=0.5) == 1.0
    assert update_damping(1.0, ratio=0.25) == 1.0
    assert update_damping(1.0, ratio=0.75) == 1.0
    assert update_damping(1.0, ratio=0.9) == pytest.approx(2 / 3)
    assert update_damping(1e-6, ratio=0.9, minimum=1e-6) == 1e-6


def test_damping_shrinks_on_an_exact_quadratic_model_and_grows_on_a_bad_one():
    # Linear least squares: the Gauss-Newton model is the objective, so r ≈ 1 → λ ← 2/3 λ.
    model, loss, x, y = _linreg()
    optimizer = GaussNewtonCG(model, loss=loss, cg_iterations=2, damping=1e-2, damping_min=3e-3,
                              line_search=False, warmup_steps=0)
    expected = 1e-2
    for _ in range(5):  # later steps sit at the optimum, where r is rounding noise
        optimizer.step(inputs=x, targets=y)
        assert optimizer.step_info["damping"] == pytest.approx(expected)
        # f(θ+d) − f(θ) = gᵀd + ½dᵀGd, the model adds ½λ‖d‖² > 0: r is just above 1.
        assert 1.0 <= optimizer.step_info["reduction_ratio"] < 1.1
        expected = max(2 / 3 * expected, 3e-3)
    assert optimizer.damping == pytest.approx(3e-3)
    # A Gauss-Newton model with a tenth of the true curvature: the exact model minimiser
    # d = −10 G⁻¹g predicts q = −5 s (s = gᵀG⁻¹g) but f changes by −10 s + 50 s = 40 s, so
    # r = −8 < 1/4 → λ ← 3/2 λ.
    model, _, x, y = _linreg()
    n = sum(p.numel() for p in model.parameters())
    optimizer = GaussNewtonCG(model, loss=_TenthCurvatureMSE(),
                              **_exact(cg_iterations=n, adaptive_damping=True, damping=1e-9))
    optimizer.step(inputs=x, targets=y)
    assert optimizer.step_info["reduction_ratio"] == pytest.approx(-8.0, rel=1e-6)
    assert optimizer.damping == pytest.approx(1.5e-9)


class _TenthCurvatureMSE(MSELoss):
    def hessian_vector_product(self, output, vector):
        return 0.1 * super().hessian_vector_product(output, vector)


def _quadratic(matrix: torch.Tensor, theta: torch.Tensor, direction: torch.Tensor):
    def f(alpha: float) -> float:
        point = theta + alpha * direction
        return float(0.5 * point @ matrix @ point)
    return f


def test_armijo_backtracking_on_a_quadratic():
    matrix = torch.diag(torch.tensor([1.0, 10.0], dtype=torch.float64))
    theta = torch.tensor([1.0, 1.0], dtype=torch.float64)
    gradient = matrix @ theta
    direction = -gradient  # the minimiser along it is α* = gᵀg / gᵀAg ≈ 0.099
    f = _quadratic(matrix, theta, direction)
    slope = float(gradient @ direction)
    alpha, value, evaluations = armijo_backtracking(f, value=f(0.0), slope=slope, c=1e-4)
    # f(α) = ½(1 − α)² + 5(1 − 10α)²: α = 1, 1/2, 1/4 increase f; 1/8 is the first that passes.
    assert alpha == 1 / 8
    assert evaluations == 4
    assert value == pytest.approx(f(alpha))
    assert value <= f(0.0) + 1e-4 * alpha * slope
    assert f(2 * alpha) > f(0.0) + 1e-4 * 2 * alpha * slope
    # A full step that already decreases enough is kept without backtracking.
    newton = -torch.linalg.solve(matrix, gradient)
    g = _quadratic(matrix, theta, newton)
    assert armijo_backtracking(g, value=g(0.0), slope=float(gradient @ newton)) == (1.0, 0.0, 1)
    # An ascent direction exhausts the backtracks and keeps the last α.
    h = _quadratic(matrix, theta, gradient)
    alpha, _, evaluations = armijo_backtracking(h, value=h(0.0), slope=-1.0, max_backtracks=3)
    assert alpha == 1 / 8 and evaluations == 4


def test_line_search_inside_a_step_shortens_an_overlong_step():
    model, loss, x, y = _linreg()
    n = sum(p.numel() for p in model.parameters())
    optimizer = GaussNewtonCG(model, loss=loss, step_size=4.0,
                              **_exact(cg_iterations=n, line_search=True))
    optimizer.step(inputs=x, targets=y)
    # q(α) = f0 + (α²/2 − α)·c is below the Armijo line only for α < 2(1 − 1e-4): α = 1.
    assert optimizer.step_info["step_size"] == 1.0
    with torch.no_grad():
        assert float(loss(model(x), y)) == pytest.approx(linreg_optimum(), rel=1e-10)
    assert optimizer.counters["function_evaluations"] == 1 + 3


def test_counters_step_info_and_phases():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    optimizer = GaussNewtonCG(model, loss=CrossEntropyLoss(), cg_iterations=4, warmup_steps=0,
                              cg_tolerance=0.0)
    optimizer.phase_timer = PhaseTimer("cpu")
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
    optimizer.step(inputs=x, targets=y)
    assert set(optimizer.step_info) >= {"cg_iterations", "cg_relative_residual", "damping",
                                        "step_size", "reduction_ratio", "quadratic_model"}
    assert optimizer.step_info["cg_iterations"] == 4
    counters = optimizer.counters
    assert counters["ggn_products"] == 4 and counters["cg_iterations"] == 4
    assert counters["backward_passes"] == 1
    assert counters["function_evaluations"] >= 2
    assert counters["forward_passes"] == counters["function_evaluations"]
    phases = optimizer.phase_timer.collect()
    assert {"forward", "backward", "curvature", "solve", "line_search", "update"} <= set(phases)


def test_warmup_momentum_and_warm_start_change_the_step():
    torch.manual_seed(0)
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))

    def steps(**settings):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
        optimizer = GaussNewtonCG(model, loss=CrossEntropyLoss(), cg_tolerance=0.0, damping=1.0,
                                  **settings)
        infos = []
        for _ in range(3):
            optimizer.step(inputs=x, targets=y)
            infos.append(dict(optimizer.step_info))
        return infos, [p.detach().clone() for p in model.parameters()]

    infos, plain = steps(cg_iterations=2, warmup_steps=2, warmup_cg_iterations=5)
    assert [i["cg_iterations"] for i in infos] == [5, 5, 2]
    _, with_momentum = steps(cg_iterations=2, momentum=0.5, warmup_steps=2,
                             warmup_cg_iterations=5)
    assert not all(torch.equal(a, b) for a, b in zip(plain, with_momentum, strict=True))
    warm_infos, warm = steps(cg_iterations=2, warm_start_decay=0.9, warmup_steps=2,
                    warmup_cg_iterations=5)
    assert not all(torch.equal(a, b) for a, b in zip(plain, warm, strict=True))
    assert all(i["warm_started"] == 1.0 for i in warm_infos[1:])


def test_dropout_model_trains():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 3))
    optimizer = GaussNewtonCG(model, loss=CrossEntropyLoss())
    x = torch.randn(64, 5)
    y = (x @ torch.randn(5, 3)).argmax(dim=1)  # a learnable teacher
    losses = [float(optimizer.step(inputs=x, targets=y)) for _ in range(15)]
    assert losses[-1] < 0.7 * losses[0]


_BAD = [{"cg_iterations": 0}, {"damping": -1.0}, {"damping": 1e-7}, {"step_size": 0.0},
        {"weight_decay": -0.1}, {"cg_tolerance": -1.0}, {"damping": math.inf}]


@pytest.mark.parametrize(("name", "overrides"), [
    (name, overrides) for name in ("sgn", "hf") for overrides in _BAD
    # damping 1e-7 is only bad below sgn's floor damping_min = 1e-6; hf has no floor
    if not (name == "hf" and overrides == {"damping": 1e-7})
])
def test_bad_hyperparameters_are_user_errors(name, overrides):
    spec = get_optimizer(name)
    assert set(overrides) <= set(spec.defaults)
    with pytest.raises(HyperparameterError) as error:
        spec.build(model=nn.Linear(3, 2), loss=MSELoss(), hyperparameters=overrides)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("overrides", [{"momentum": 1.0}, {"warmup_cg_iterations": 0},
                                       {"warm_start_decay": 1.5}, {"armijo_c": 1.0},
                                       {"backtrack_factor": 0.0}, {"max_backtracks": -1},
                                       {"residual_every": 0}, {"residual_every": 2.0}])
def test_bad_constructor_arguments_raise_value_error(overrides):
    with pytest.raises(ValueError):
        GaussNewtonCG(nn.Linear(3, 2), loss=MSELoss(), **overrides)


def test_batchnorm_in_training_mode_is_refused_at_construction():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    with pytest.raises(HyperparameterError, match="BatchNorm1d") as error:
        get_optimizer("sgn").build(model=model, loss=MSELoss())
    assert isinstance(error.value.__cause__, UnsupportedModelError)


@pytest.mark.parametrize("name", ["sgn", "hf"])
def test_reaches_the_target_through_the_harness(name):
    record = run(problem="synthetic-linreg", optimizer=name, batch_size=1024,
                 budget=Budget(max_steps=60))
    assert record.status == "reached", (record.status, record.error, record.final)
    assert record.steps_to_target <= 60
    history = record.history
    assert {"cg_iterations", "cg_relative_residual", "damping", "step_size"} <= set(history)
    assert record.counters["ggn_products"] >= record.counters["cg_iterations"] > 0
    assert record.phase_seconds["curvature"] > 0


def _dense_sgn_step(model, loss, x, y, *, k, damping, step_size, c=1e-4, factor=0.5,
                    max_backtracks=10):
    """One SGN step from dense float64 matrices: ``k`` textbook CG iterations on
    ``(G + λI) d = −g`` from zero, then Armijo backtracking from ``step_size`` with plain forward
    passes; shares no code with the optimizer. Returns ``(d, θ + α d, reduction ratio)``."""
    theta = flat_parameters(model)
    system = dense_ggn(model, loss, x, y) + damping * torch.eye(len(theta), dtype=theta.dtype)
    params = list(model.parameters())
    gradient = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss(model(x), y), params)])
    direction, r = torch.zeros_like(theta), -gradient
    p = r.clone()
    for _ in range(k):
        ap = system @ p
        alpha = (r @ r) / (p @ ap)
        direction, r_new = direction + alpha * p, r - alpha * ap
        p, r = r_new + (r_new @ r_new) / (r @ r) * p, r_new

    def value(point: torch.Tensor) -> float:
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(point, params)
            return float(loss(model(x), y))

    start, slope, step = value(theta), float(gradient @ direction), step_size
    predicted = step * slope + 0.5 * step**2 * float(direction @ system @ direction)
    ratio = (value(theta + step * direction) - start) / predicted if predicted < 0 else -math.inf
    for _ in range(max_backtracks):
        if value(theta + step * direction) <= start + c * step * slope:
            break
        step *= factor
    value(theta)  # leave the model as it was
    return direction, theta + step * direction, ratio


def _tiny(kind: str) -> nn.Module:
    torch.manual_seed(3)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(8, 3)).double()


@pytest.mark.parametrize(("kind", "tracked"), [("mlp", True), ("cnn", False)])
@pytest.mark.parametrize(("damping", "step_size"), [(1e-3, 1.0), (1e-3, 16.0), (1.0, 16.0)])
def test_step_matches_dense_float64_reference(kind, tracked, damping, step_size, monkeypatch):
    """The whole step (CG direction, reduction-ratio evaluation, Armijo) against dense
    matrices; the MLP's function evaluations reuse its input layer's tangent carried through
    CG, the CNN's re-run its first convolution. A first step of 16 must backtrack, so the
    evaluated losses decide the step."""
    monkeypatch.setattr(curvature, "TRACKED_FAN_IN", 1)  # the tiny MLP's 8 inputs
    model = _tiny(kind)
    generator = torch.Generator().manual_seed(0)
    shape = (7, 8) if kind == "mlp" else (7, 1, 4, 4)
    x = torch.randn(shape, generator=generator, dtype=torch.float64) * 3
    y = torch.randint(0, 3, (7,), generator=generator)
    loss = CrossEntropyLoss()
    direction, expected, ratio = _dense_sgn_step(model, loss, x, y, k=3, damping=damping,
                                                 step_size=step_size)
    optimizer = GaussNewtonCG(model, loss=loss, cg_iterations=3, cg_tolerance=0.0,
                              damping=damping, damping_min=damping, warmup_steps=0,
                              step_size=step_size)
    optimizer.step(inputs=x, targets=y)
    if step_size > 1:
        assert optimizer.step_info["step_size"] < step_size
    assert optimizer.step_info["reduction_ratio"] == pytest.approx(ratio, rel=1e-9)
    state = optimizer.state["gauss_newton"]
    assert torch.allclose(state["previous_direction"], direction, rtol=1e-10, atol=1e-12)
    assert torch.allclose(flat_parameters(model), expected, rtol=1e-10, atol=1e-12)
    assert Linearization(model, loss=loss, inputs=x, targets=y).tracks_input_layer == tracked


def test_tracked_input_layer_gives_the_same_trajectory_with_warm_starts(monkeypatch):
    """Hessian-free settings (warm start from the previous direction, backtracking) on an MLP:
    the same float64 trajectory whether evaluations reuse the input layer's tangent or re-run
    the layer."""
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(16, 6, generator=generator, dtype=torch.float64) * 2
    y = torch.randint(0, 3, (16,), generator=generator)
    final = {}
    for fan_in in (1, 10**9):  # tracked, re-run
        monkeypatch.setattr(curvature, "TRACKED_FAN_IN", fan_in)
        torch.manual_seed(4)
        model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
        optimizer = GaussNewtonCG(model, loss=CrossEntropyLoss(), cg_iterations=2,
                                  cg_tolerance=0.0, warm_start_decay=0.95, damping=1e-3,
                                  damping_min=0.0, warmup_steps=0, step_size=2.0)
        assert Linearization(model, loss=CrossEntropyLoss(), inputs=x,
                             targets=y).tracks_input_layer == (fan_in == 1)
        infos = []
        for _ in range(6):
            optimizer.step(inputs=x, targets=y)
            infos.append(dict(optimizer.step_info))
        assert any(info["warm_started"] for info in infos)
        assert any(info["step_size"] < 2.0 for info in infos)
        final[fan_in] = (flat_parameters(model), [info["reduction_ratio"] for info in infos])
    torch.testing.assert_close(final[1][0], final[10**9][0], rtol=1e-10, atol=1e-12)
    assert final[1][1] == pytest.approx(final[10**9][1], rel=1e-8)


def _tracked_mlp_batch(batch: int = 16):
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(batch, curvature.TRACKED_FAN_IN, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (batch,), generator=generator)
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(curvature.TRACKED_FAN_IN, 6), nn.Tanh(),
                          nn.Linear(6, 3)).double()
    return model, CrossEntropyLoss(), x, y


@pytest.mark.parametrize("tolerance", [0.0, 1e-6])  # without host reads; tested per product
@pytest.mark.parametrize("cg_iterations", [1, 3])
def test_steps_that_record_no_residual_take_the_last_cg_iteration_from_the_forward_half(
        cg_iterations, tolerance):
    """Between the steps that record CG's final residual (1, 4, 7 for ``residual_every=3``),
    the last iteration costs a ``J v`` instead of a product: the float64 trajectory is the one
    of recording every step, with the residual NaN there and counted as a Jacobian-vector
    product."""
    steps = 7
    runs = {}
    for every in (1, 3):
        model, loss, x, y = _tracked_mlp_batch()
        optimizer = GaussNewtonCG(model, loss=loss, cg_iterations=cg_iterations,
                                  cg_tolerance=tolerance, warmup_steps=0, step_size=4.0,
                                  damping=1e-3, damping_min=1e-4, weight_decay=1e-3,
                                  residual_every=every)
        infos = []
        for _ in range(steps):
            optimizer.step(inputs=x, targets=y)
            infos.append(dict(optimizer.step_info))
        runs[every] = (flat_parameters(model), infos, dict(optimizer.counters))
    (every_step, every_infos, every_counts), (some, some_infos, some_counts) = runs[1], runs[3]
    torch.testing.assert_close(some, every_step, rtol=1e-10, atol=1e-13)
    recorded = [step % 3 == 0 for step in range(steps)]
    assert [not math.isnan(info["cg_relative_residual"]) for info in some_infos] == recorded
    assert all(not math.isnan(info["cg_relative_residual"]) for info in every_infos)
    assert any(info["step_size"] < 4.0 for info in some_infos)  # the line search ran
    for ours, theirs, record in zip(some_infos, every_infos, recorded, strict=True):
        for key in ours:
            if key != "cg_relative_residual" or record:
                assert ours[key] == pytest.approx(theirs[key], rel=1e-9, abs=1e-300), key
    skipped = steps - sum(recorded)
    assert some_counts["jacobian_vector_products"] == skipped
    assert every_counts["jacobian_vector_products"] == 0
    assert some_counts["ggn_products"] == every_counts["ggn_products"] - skipped
    assert some_counts["cg_iterations"] == every_counts["cg_iterations"] == steps * cg_iterations


def test_registered_sgn_variants_fix_how_often_the_residual_is_recorded():
    """``residual_every`` shapes a step's cost, so it is one of the settings a run's hash
    covers."""
    for name in ("sgn", "sgn-paper", "hf"):
        assert get_optimizer(name).settings["residual_every"] == 10


@pytest.mark.parametrize(("weight_decay", "tolerance"), [(0.0, 0.0), (1e-2, 0.0), (0.0, 1e-6)])
def test_a_step_reads_the_host_once_plus_once_per_function_evaluation(weight_decay, tolerance,
                                                                       monkeypatch):
    """CG keeps its scalars on the device (with tolerance 0 and with the default 10⁻⁶, which
    these solves do not meet): a step's host reads (GPU synchronisations) do not grow with the
    CG iterations ``k``. One for CG's scalars, one per line-search evaluation (the first also
    brings ``f(θ)``). A positive tolerance does so where host reads stall (here as if)."""
    monkeypatch.setattr(cg_module, "host_reads_stall", lambda device: True)
    steps = 3
    for k in (1, 6):
        model, loss, x, y = _tracked_mlp_batch()
        optimizer = GaussNewtonCG(model, loss=loss, cg_iterations=k, cg_tolerance=tolerance,
                                  warmup_steps=0, step_size=100.0, weight_decay=weight_decay)
        assert Linearization(model, loss=loss, inputs=x, targets=y).tracks_input_layer
        with OperatorCounter() as counts:
            for _ in range(steps):
                optimizer.step(inputs=x, targets=y)
        line_search = optimizer.counters["function_evaluations"] - steps  # less the linearising
        assert optimizer.counters["cg_iterations"] == k * steps
        assert line_search > steps  # it backtracked: evaluations are read one by one
        assert counts.host_reads == steps + line_search, k


@pytest.mark.parametrize("tolerance", [0.0, 1e-6, 0.3])
def test_a_solve_without_host_reads_gives_the_trajectory_of_one_with_them(tolerance,
                                                                           monkeypatch):
    """The same float64 trajectory (parameters, step sizes, ratios, CG's reported scalars)
    whether CG runs its ``k`` iterations with its scalars on the device or tests after every
    product (forced here); 0.3 stops some solves early, which the first way replays. Positive
    tolerances take the first way where host reads stall (here as if)."""
    monkeypatch.setattr(cg_module, "host_reads_stall", lambda device: True)
    runs = {}
    for synchronised in (False, True):
        if synchronised:
            monkeypatch.setattr(cg_module, "_unsynchronised", lambda *args, **kwargs: None)
        model, loss, x, y = _tracked_mlp_batch()
        optimizer = GaussNewtonCG(model, loss=loss, cg_iterations=4, cg_tolerance=tolerance,
                                  warmup_steps=2, warmup_cg_iterations=7, step_size=4.0,
                                  damping=1e-3, damping_min=1e-4, weight_decay=1e-3)
        infos = []
        for _ in range(6):
            optimizer.step(inputs=x, targets=y)
            infos.append(dict(optimizer.step_info))
        runs[synchronised] = (flat_parameters(model), infos)
    (fast, fast_infos), (checked, checked_infos) = runs[False], runs[True]
    torch.testing.assert_close(fast, checked, rtol=1e-12, atol=1e-14)
    assert any(info["step_size"] < 4.0 for info in fast_infos)
    early = [info["cg_iterations"] < (7 if i < 2 else 4) for i, info in enumerate(fast_infos)]
    assert any(early) == (tolerance == 0.3)
    # The final residual is computed on step 1 (residual_every 10) and where CG stopped early.
    known = [not math.isnan(info["cg_relative_residual"]) for info in fast_infos]
    assert known == [i == 0 or stopped for i, stopped in enumerate(early)]
    for ours, theirs in zip(fast_infos, checked_infos, strict=True):
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert ours[key] == pytest.approx(theirs[key], rel=1e-12, abs=1e-300,
                                              nan_ok=True), key
