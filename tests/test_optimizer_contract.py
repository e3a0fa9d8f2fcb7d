"""Contract tests run on every registered optimizer (enumerated from the registry).

Every optimizer, first- or second-order, must: decrease the loss on ``digits-logreg``; give a
bitwise-identical trajectory for the same seed on CPU (when flagged deterministic); survive a
``state_dict`` round trip; reject bad hyperparameters with a one-line error.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

from curvebench.harness import run
from curvebench.optimizers import (
    OPTIMIZERS,
    CurvatureOptimizer,
    HyperparameterError,
    LogUniform,
)
from curvebench.problems import Budget, get_problem

NAMES = OPTIMIZERS.names()
PROBLEM = "digits-logreg"


def _step(optimizer, model, loss, inputs, targets) -> float:
    if isinstance(optimizer, CurvatureOptimizer):
        return float(optimizer.step(inputs=inputs, targets=targets))
    optimizer.zero_grad()
    value = loss(model(inputs), targets)
    value.backward()
    optimizer.step()
    return float(value)


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
    optimizer = spec.build(model=model, loss=loss)
    x, y = torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 320, 64)]
    for inputs, targets in batches[:3]:
        _step(optimizer, model, loss, inputs, targets)

    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    clone_model = copy.deepcopy(model)
    clone = spec.build(model=clone_model, loss=problem.make_loss())
    clone.load_state_dict(torch.load(buffer, weights_only=False))

    for inputs, targets in batches[3:]:
        torch.manual_seed(11)
        a = _step(optimizer, model, loss, inputs, targets)
        torch.manual_seed(11)
        b = _step(clone, clone_model, loss, inputs, targets)
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
