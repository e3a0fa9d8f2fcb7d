"""Contract tests run on every registered optimizer (enumerated from the registry).

Every optimizer, first- or second-order, must: decrease the loss on ``digits-logreg``; give a
bitwise-identical trajectory for the same seed on CPU (when flagged deterministic); survive a
``state_dict`` round trip; reject bad hyperparameters with a one-line error.
"""

from __future__ import annotations

import copy
import io
import math
import time

import pytest
import torch

from curvebench import stepping
from curvebench.harness import run
from curvebench.losses import MSELoss
from curvebench.optimizers import (
    OPTIMIZERS,
    CurvatureOptimizer,
    HyperparameterError,
    LogUniform,
)
from curvebench.problems import Budget, get_problem

#: Every optimizer the torch backend runs (JAX-only ones are checked in tests/test_jax_*.py).
NAMES = [name for name in OPTIMIZERS.names() if "torch" in OPTIMIZERS.get(name).backends]
PROBLEM = "digits-logreg"


def _step(stepper, inputs, targets) -> float:
    """One step through the one step function the harness and the asv suite use."""
    return stepping.take_step(stepper, iter([(inputs, targets)]), clock=time.perf_counter).loss


@pytest.mark.parametrize("name", NAMES)
def test_loss_decreases_on_digits_logreg(name):
    record = run(problem=PROBLEM, optimizer=name, seed=0, budget=Budget(max_steps=30),
                 stop_at_target=False, eval_every=30)
    assert record.status in ("budget", "reached"), record.error
    initial, final = record.evaluations["train_loss"][0], record.evaluations["train_loss"][-1]
    assert final < 0.95 * initial


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_trajectory(name):
    if not OPTIMIZERS.get(name).deterministic:
        pytest.skip(f"{name} is flagged non-deterministic")
    kwargs = dict(problem=PROBLEM, optimizer=name, seed=7, budget=Budget(max_steps=12),
                  stop_at_target=False, eval_every=4)
    first, second = run(**kwargs), run(**kwargs)
    assert first.history["loss"] == second.history["loss"]
    assert first.evaluations["train_loss"] == second.evaluations["train_loss"]
    other = run(**{**kwargs, "seed": 8})
    assert other.history["loss"] != first.history["loss"]


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name):
    spec = OPTIMIZERS.get(name)
    problem = get_problem(PROBLEM)
    data = problem.dataset()
    loss = problem.make_loss()
    model = problem.build_model(seed=0)
    optimizer = stepping.build_stepper(spec, model=model, loss=loss)
    x, y = torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)  # arrays or tensors
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 320, 64)]
    for inputs, targets in batches[:3]:
        _step(optimizer, inputs, targets)

    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    clone_model = copy.deepcopy(model)
    clone = stepping.build_stepper(spec, model=clone_model, loss=problem.make_loss())
    clone.load_state_dict(torch.load(buffer, weights_only=False))

    for inputs, targets in batches[3:]:
        torch.manual_seed(11)
        a = _step(optimizer, inputs, targets)
        torch.manual_seed(11)
        b = _step(clone, inputs, targets)
        assert a == b
    for p, q in zip(model.parameters(), clone_model.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", NAMES)
def test_bad_hyperparameters_raise(name):
    spec = OPTIMIZERS.get(name)
    model = get_problem(PROBLEM).build_model(seed=0)
    loss = get_problem(PROBLEM).make_loss()
    with pytest.raises(HyperparameterError, match="no hyperparameter 'not_a_knob'"):
        spec.build(model=model, loss=loss, hyperparameters={"not_a_knob": 1})
    positive = [k for k, space in spec.search_space.items() if isinstance(space, LogUniform)]
    assert positive, f"{name} should expose at least one log-scale hyperparameter to tune"
    for key in positive:
        with pytest.raises(HyperparameterError) as error:
            spec.build(model=model, loss=loss, hyperparameters={key: -1.0})
        assert "\n" not in str(error.value)
    numeric = next(k for k, v in spec.defaults.items()
                   if isinstance(v, float | int) and not isinstance(v, bool))
    with pytest.raises(HyperparameterError, match="expects"):
        spec.build(model=model, loss=loss, hyperparameters={numeric: "abc"})


@pytest.mark.parametrize("name", NAMES)
def test_spec_is_complete(name):
    spec = OPTIMIZERS.get(name)
    assert spec.description and spec.reference
    for key, space in spec.search_space.items():
        default = spec.defaults[key]
        if isinstance(space, LogUniform) and isinstance(default, float) and default > 0:
            assert math.isfinite(space.log_volume())


@pytest.mark.parametrize("name", [n for n in NAMES if OPTIMIZERS.get(n).needs_curvature])
def test_curvature_optimizer_in_a_plain_loop(name):
    """What the README shows: a curvature optimizer inside a user's own loop."""
    problem = get_problem(PROBLEM)
    data = problem.dataset()
    model = problem.build_model(seed=0)
    loss = problem.make_loss()
    optimizer = OPTIMIZERS.get(name).build(model=model, loss=loss)
    assert isinstance(optimizer, CurvatureOptimizer)
    with pytest.raises(TypeError, match="needs the batch"):
        optimizer.step()
    x, y = torch.as_tensor(data.x_train[:256]), torch.as_tensor(data.y_train[:256])
    losses = [float(optimizer.step(inputs=x, targets=y)) for _ in range(10)]
    assert losses[-1] < losses[0]
    assert optimizer.counters or optimizer.step_info is not None


@pytest.mark.parametrize("name", ["sgd", "sgn"])
def test_harness_suite_and_tests_share_one_step_function(monkeypatch, name):
    """The harness, the asv suite and these tests step through ``stepping.take_step``: a copy
    of the step (with its own timing) elsewhere makes the counts or phases disagree."""
    from suite.workloads import build_step_workload

    outcomes = []
    real = stepping.take_step

    def spy(stepper, batches, *, clock):
        outcomes.append(real(stepper, batches, clock=clock))
        return outcomes[-1]

    monkeypatch.setattr(stepping, "take_step", spy)
    record = run(problem=PROBLEM, optimizer=name, budget=Budget(max_steps=3),
                 stop_at_target=False, eval_every=3)
    assert record.history["loss"] == [outcome.loss for outcome in outcomes]
    assert record.history["seconds"][-1] == pytest.approx(sum(o.seconds for o in outcomes))
    phases = set().union(*(outcome.phases for outcome in outcomes))
    assert set(record.phase_seconds) == phases and phases
    counted = {}
    for outcome in outcomes:
        for key, value in outcome.counters.items():
            counted[key] = counted.get(key, 0) + value
    assert record.counters == counted
    if name == "sgd":
        assert phases == {"forward", "backward", "update"}
        assert counted == {key: 3 * value for key, value in stepping.FIRST_ORDER_COUNTS.items()}
    outcomes.clear()
    workload = build_step_workload(PROBLEM, name)
    workload.step()
    assert len(outcomes) == 1 and set(outcomes[0].phases) <= phases


@pytest.mark.parametrize("name", [n for n in NAMES if OPTIMIZERS.get(n).needs_curvature])
def test_a_fitted_batch_is_a_fixed_point(name):
    """A zero gradient (a batch fitted exactly) is no evidence about the curvature model: no
    error (CurveBall divided by its zero predicted change), the parameters stay where they
    are, and an adapted damping does not move (SGN and K-FAC counted a zero step as a failed
    one and raised it every step)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Tanh(),
                                torch.nn.Linear(3, 2)).double()
    inputs = torch.randn(16, 5, dtype=torch.float64)
    targets = model(inputs).detach()
    spec = OPTIMIZERS.get(name)
    overrides = {key: value for key, value in (("damping_interval", 1),
                                               ("damping_adaptation_period", 1),
                                               ("weight_decay", 0.0))  # decay would move θ
                 if key in spec.defaults}
    optimizer = spec.build(model=model, loss=MSELoss(), hyperparameters=overrides)
    before = [p.detach().clone() for p in model.parameters()]
    dampings = []
    for _ in range(4):
        optimizer.step(inputs=inputs, targets=targets)
        dampings.append((optimizer.step_info or {}).get("damping"))
    for p, old in zip(model.parameters(), before, strict=True):
        torch.testing.assert_close(p.detach(), old, rtol=0, atol=1e-12)
    assert len(set(dampings)) == 1, dampings
