"""Contract tests run on every registered problem (enumerated from the registry)."""

from __future__ import annotations

import math

import pytest
import torch

from curvebench.problems import PROBLEMS
from curvebench.problems.spec import METRICS, TAGS

ALL = PROBLEMS.names()
OFFLINE = [p.name for p in PROBLEMS if p.offline]


def _fake_batch(problem, model):
    """A batch shaped like the problem's inputs, without loading data (for online problems)."""
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv1d
                                                          | torch.nn.Conv2d))
    if isinstance(first, torch.nn.Linear):
        shape = (4, first.in_features)
    elif isinstance(first, torch.nn.Conv2d):
        side = 32 if first.in_channels == 3 else 28
        shape = (4, first.in_channels, side, side)
    else:
        shape = (4, first.in_channels, 40)
    return torch.rand(shape)


@pytest.mark.parametrize("name", ALL)
def test_spec_is_complete(name):
    problem = PROBLEMS.get(name)
    assert problem.description and problem.tags <= TAGS
    assert problem.target.metric in METRICS and problem.target.provenance
    assert math.isfinite(problem.target.value)
    assert problem.budget.max_steps or problem.budget.max_seconds
    assert problem.batch_size > 0 and problem.eval_every > 0


@pytest.mark.parametrize("name", ALL)
def test_model_builds_seeded(name):
    problem = PROBLEMS.get(name)
    a, b = problem.build_model(seed=3), problem.build_model(seed=3)
    c = problem.build_model(seed=4)
    state = torch.random.get_rng_state()
    problem.build_model(seed=5)
    assert torch.equal(state, torch.random.get_rng_state()), "global RNG must be untouched"
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(),
                                                          strict=True))


@pytest.mark.parametrize("name", [n for n in ALL if n not in OFFLINE])
def test_forward_pass_shape_without_data(name):
    problem = PROBLEMS.get(name)
    model = problem.build_model(seed=0)
    output = model(_fake_batch(problem, model))
    assert output.dim() == 2 and output.shape[0] == 4 and torch.isfinite(output).all()


@pytest.mark.parametrize("name", OFFLINE)
def test_offline_problem_forward_and_finite_loss(name):
    problem = PROBLEMS.get(name)
    data = problem.dataset()
    model = problem.build_model(seed=0)
    loss = problem.make_loss()
    inputs, targets = data.x_train[:32], data.y_train[:32]
    if loss.classification:
        assert targets.dtype == torch.long
        assert data.num_classes == model(inputs).shape[1]
    value = loss(model(inputs), targets)
    assert value.dim() == 0 and torch.isfinite(value)
    assert len(data.x_test) > 0


def test_tags_and_target_directions_are_consistent():
    for problem in PROBLEMS:
        if problem.target.metric.endswith("loss"):
            assert problem.target.direction == "min", problem.name
        else:
            assert problem.target.direction == "max", problem.name


def test_required_problem_names_exist():
    required = {"synthetic-linreg", "digits-logreg", "digits-mlp", "digits-cnn",
                "digits-autoencoder", "mnist1d-mlp", "mnist1d-cnn", "mnist-mlp-sgn",
                "fashion-mnist-lenet5", "cifar10-cnn-sgn", "mnist-autoencoder", "mnist-2c2d",
                "fashion-mnist-2c2d", "cifar10-3c3d"}
    assert required <= set(ALL)


def test_sgn_paper_mlp_matches_the_paper():
    model = PROBLEMS.get("mnist-mlp-sgn").build_model(seed=0)
    widths = [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [20, 20, 20, 10]
    assert sum(isinstance(m, torch.nn.Sigmoid) for m in model.modules()) == 3
    weights = torch.cat([p.flatten() for n, p in model.named_parameters() if "weight" in n])
    assert 0.9 < weights.std() < 1.1  # N(0, 1) initialisation of the weights
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    assert len(biases) == 4 and all(torch.count_nonzero(b) == 0 for b in biases)  # zero biases
    assert PROBLEMS.get("mnist-mlp-sgn").batch_size == 1000


def test_duplicate_and_unknown_names_raise():
    from curvebench.registry import DuplicateNameError, UnknownNameError

    with pytest.raises(DuplicateNameError):
        PROBLEMS.register(PROBLEMS.get("digits-mlp"))
    with pytest.raises(UnknownNameError, match="did you mean 'digits-mlp'"):
        PROBLEMS.get("digit-mlp")
