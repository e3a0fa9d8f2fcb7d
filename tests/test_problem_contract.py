"""Contract tests run on every registered problem (enumerated from the registry)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from curvebench.architecture import Architecture, Init, initial_parameters
from curvebench.problems import PROBLEMS
from curvebench.problems.spec import METRICS, TAGS
from curvebench.problems.torch_models import build_torch_model, describe

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


@pytest.mark.parametrize("name", ALL)
def test_torch_model_is_its_declaration(name):
    """The torch model has the declared layers, and its parameters are the neutral draws."""
    problem = PROBLEMS.get(name)
    model = problem.build_model(seed=2, dtype=torch.float64)
    assert describe(model).layers == problem.architecture.layers
    arrays = initial_parameters(problem.architecture, seed=2)
    assert [tuple(p.shape) for p in model.parameters()] == [a.shape for a in arrays]
    assert [tuple(p.shape) for p in model.parameters()] == problem.architecture.parameter_shapes()
    for parameter, array in zip(model.parameters(), arrays, strict=True):
        assert np.array_equal(parameter.detach().numpy(), array)
    assert problem.num_parameters == sum(p.numel() for p in model.parameters())
    single = problem.build_model(seed=2)
    for parameter, array in zip(single.parameters(), arrays, strict=True):
        assert np.array_equal(parameter.detach().numpy(), array.astype(np.float32))


@pytest.mark.parametrize("name", ALL)
def test_initial_parameters_are_a_pure_function_of_the_seed(name):
    architecture = PROBLEMS.get(name).architecture
    first, again = (initial_parameters(architecture, seed=7) for _ in range(2))
    other = initial_parameters(architecture, seed=8)
    np.random.seed(0)
    state = np.random.get_state()[1].copy()
    initial_parameters(architecture, seed=7)
    assert np.array_equal(state, np.random.get_state()[1]), "global RNG must be untouched"
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert all(not np.array_equal(a, b) or not a.any() for a, b in zip(first, other, strict=True))
    assert all(a.dtype == np.float64 for a in first)


def test_initial_parameters_follow_torch_default_distributions():
    """U(±1/√fan_in) for weight and bias, as torch's own Linear/Conv initialisation draws."""
    architecture = PROBLEMS.get("digits-cnn").architecture
    torch.manual_seed(0)
    torch_default = build_torch_model(architecture, seed=None)  # torch's own initialisation
    ours = initial_parameters(architecture, seed=0)
    theirs = [p.detach().numpy() for p in torch_default.parameters()]
    for i, layer in enumerate(architecture.parameterised):
        bound = 1 / np.sqrt(ours[2 * i][0].size)  # 1/√fan_in
        for mine, torchs in zip(ours[2 * i: 2 * i + 2], theirs[2 * i: 2 * i + 2], strict=True):
            assert mine.shape == torchs.shape
            for values in (mine, torchs):
                assert 0.8 * bound < np.abs(values).max() <= bound, layer
    normal = Architecture(architecture.layers, init=Init("normal", std=0.5))
    drawn = initial_parameters(normal, seed=0)
    weights = np.concatenate([w.ravel() for w in drawn[0::2]])
    assert 0.45 < weights.std() < 0.55 and not any(b.any() for b in drawn[1::2])
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        initial_parameters(architecture, seed=-1)
    with pytest.raises(ValueError, match="unknown initialisation"):
        Init("xavier")


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
    for array in (data.x_train, data.y_train, data.x_test, data.y_test):
        assert isinstance(array, np.ndarray) and array.flags.c_contiguous
    assert data.x_train.dtype == np.float32
    inputs, targets = torch.as_tensor(data.x_train[:32]), torch.as_tensor(data.y_train[:32])
    if loss.classification:
        assert data.y_train.dtype == data.y_test.dtype == np.int64
        assert data.num_classes == model(inputs).shape[1]
    else:
        assert data.y_train.dtype == np.float32
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
