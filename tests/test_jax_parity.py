"""Parity of the JAX building blocks with the torch backend, in float64.

Same initial weights (converted from the seeded torch model) and the same batches: model
outputs on every registered problem, first-order trajectories over 100 steps, losses.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from curvebench.architecture import Architecture, Conv, Dense, Flatten, Reshape
from curvebench.jax_backend.losses import JAX_LOSSES
from curvebench.jax_backend.models import (
    compile_architecture,
    describe,
    from_torch,
    params_from_numpy,
    params_to_numpy,
)
from curvebench.jax_backend.optimizers import build_jax_optimizer
from curvebench.losses import LOSSES, loss_by_name
from curvebench.optimizers import HyperparameterError, get_optimizer
from curvebench.problems import PROBLEMS, get_problem
from tests.jax_cases import float64_batches, jax_float64, relative_difference


@pytest.fixture(autouse=True)
def _float64():
    with jax_float64():
        yield


def _input_shape(architecture: Architecture) -> tuple[int, ...]:
    """A per-sample input shape the architecture accepts (images: 28×28 grey, 32×32 colour)."""
    first = architecture.layers[0]
    if isinstance(first, Reshape):
        return (int(np.prod(first.shape)),)
    if isinstance(first, Flatten):
        return (1, 28, 28)
    if isinstance(first, Dense):
        return (first.in_features,)
    assert isinstance(first, Conv) and len(first.kernel_size) == 2
    size = 28 if first.in_channels == 1 else 32
    return (first.in_channels, size, size)


@pytest.mark.parametrize("problem", sorted(PROBLEMS.names()))
def test_compiled_model_matches_torch(problem: str) -> None:
    """Every registered model: same output as torch from the same seeded weights (float64)."""
    model = get_problem(problem).build_model(seed=3, dtype=torch.float64)
    architecture, params = from_torch(model)
    x = torch.randn(4, *_input_shape(architecture), dtype=torch.float64,
                    generator=torch.Generator().manual_seed(0))
    expected = model(x).detach().numpy()
    got = np.asarray(compile_architecture(architecture)(params, jnp.asarray(x.numpy())))
    assert got.shape == expected.shape
    assert relative_difference(got, expected) < 1e-12
    for back, original in zip(params_to_numpy(architecture, params), model.parameters(),
                              strict=True):
        np.testing.assert_array_equal(back, original.detach().numpy())


def test_describe_rejects_unknown_layers() -> None:
    with pytest.raises(ValueError, match="no neutral equivalent of layer Dropout"):
        describe(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout()))
    with pytest.raises(ValueError, match="expected 2 arrays"):
        params_from_numpy(Architecture((Dense(2, 3),)), [np.zeros((3, 2))])


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_and_output_hessians_match_torch(name: str) -> None:
    generator = torch.Generator().manual_seed(1)
    output = torch.randn(5, 3, dtype=torch.float64, generator=generator)
    vector = torch.randn(5, 3, dtype=torch.float64, generator=generator)
    target = (torch.randint(0, 3, (5,), generator=generator) if name == "cross_entropy"
              else torch.rand(5, 3, dtype=torch.float64, generator=generator))
    torch_loss, jax_loss = loss_by_name(name), JAX_LOSSES[name]
    assert float(jax_loss.value(jnp.asarray(output.numpy()), jnp.asarray(target.numpy()))) == (
        pytest.approx(float(torch_loss(output, target)), rel=1e-14))
    got = jax_loss.hessian_vector_product(jnp.asarray(output.numpy()), jnp.asarray(vector.numpy()))
    expected = torch_loss.hessian_vector_product(output, vector).numpy()
    assert relative_difference(np.asarray(got), expected) < 1e-14


def _torch_trajectory(problem: str, optimizer: str, batches, hyperparameters) -> list[float]:
    spec = get_problem(problem)
    model = spec.build_model(seed=0, dtype=torch.float64)
    loss = spec.make_loss()
    opt = get_optimizer(optimizer).build(model=model, loss=loss, hyperparameters=hyperparameters)
    losses = []
    for x, y in batches:
        opt.zero_grad()
        value = loss(model(x), y)
        value.backward()
        opt.step()
        losses.append(float(value.detach()))
    return losses


@pytest.mark.parametrize(("optimizer", "hyperparameters"), [
    ("sgd", {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3}),
    ("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    ("adam", {"lr": 1e-2, "weight_decay": 1e-3}),
    ("adamw", {"lr": 1e-2}),
])
def test_first_order_trajectories_match_torch(optimizer: str, hyperparameters) -> None:
    """100 steps on digits-mlp from the same weights and batches: losses agree to 1e-10."""
    batches = float64_batches("digits-mlp", batch_size=32, count=100)
    expected = _torch_trajectory("digits-mlp", optimizer, batches, hyperparameters)
    spec = get_problem("digits-mlp")
    architecture, params = from_torch(spec.build_model(seed=0, dtype=torch.float64))
    stepper = build_jax_optimizer(optimizer, architecture=architecture, params=params,
                                  loss=spec.loss, hyperparameters=hyperparameters)
    got = [stepper.step(inputs=x, targets=y) for x, y in batches]
    assert expected[-1] < 0.5 * expected[0]  # it trained, so the comparison means something
    assert relative_difference(np.array(got), np.array(expected)) < 1e-10
    assert max(abs(g - e) / abs(e) for g, e in zip(got, expected, strict=True)) < 1e-10
    assert stepper.compile_seconds > 0


def test_first_order_defaults_and_errors_come_from_the_torch_specs() -> None:
    architecture = Architecture((Dense(2, 1),))
    params = params_from_numpy(architecture, [np.zeros((1, 2)), np.zeros(1)])
    with pytest.raises(HyperparameterError, match="has no hyperparameter 'betas'"):
        build_jax_optimizer("adam", architecture=architecture, params=params, loss="mse",
                            hyperparameters={"betas": 0.9})
    with pytest.raises(HyperparameterError, match="dampening"):
        build_jax_optimizer("sgd", architecture=architecture, params=params, loss="mse",
                            hyperparameters={"dampening": 0.1})
    with pytest.raises(HyperparameterError, match="no JAX optimizer 'lbfgs'"):
        build_jax_optimizer("lbfgs", architecture=architecture, params=params, loss="mse")
