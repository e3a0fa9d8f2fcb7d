"""JAX GGN products and SGN against the torch curvature core and dense float64 references."""

from __future__ import annotations

import math

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from curvebench.curvature import Linearization, flatten, unflatten
from curvebench.jax_backend.curvature import linearize
from curvebench.jax_backend.losses import jax_loss_by_name
from curvebench.jax_backend.models import (
    compile_architecture,
    from_torch,
    params_from_numpy,
    params_to_numpy,
)
from curvebench.jax_backend.optimizers import build_jax_optimizer
from curvebench.jax_backend.sgn import sgn_settings
from curvebench.optimizers import HyperparameterError, get_optimizer
from curvebench.problems import PROBLEMS, get_problem
from tests.jax_cases import float64_batches, jax_float64, relative_difference

OFFLINE = sorted(spec.name for spec in PROBLEMS if spec.offline)


@pytest.fixture(autouse=True)
def _float64():
    with jax_float64():
        yield


def _to_jax(architecture, flat: torch.Tensor, like: list[torch.Tensor]):
    return params_from_numpy(architecture, [t.numpy() for t in unflatten(flat, like)])


def _to_flat(architecture, tree) -> np.ndarray:
    return np.concatenate([a.ravel() for a in params_to_numpy(architecture, tree)])


@pytest.mark.parametrize("problem", OFFLINE)
def test_ggn_products_match_the_torch_curvature_core(problem: str) -> None:
    """Every offline problem, a batch of 8: gradient and ``G v`` agree with torch to 1e-10."""
    spec = get_problem(problem)
    model = spec.build_model(seed=1, dtype=torch.float64)
    (x, y), = float64_batches(problem, batch_size=8, count=1)
    params = list(model.parameters())
    torch_lin = Linearization(model, loss=spec.make_loss(), inputs=x, targets=y)
    architecture, jax_params = from_torch(model)
    lin = linearize(compile_architecture(architecture), loss=jax_loss_by_name(spec.loss),
                    params=jax_params, inputs=jnp.asarray(x.numpy()),
                    targets=jnp.asarray(y.numpy()))
    assert float(lin.loss_value) == pytest.approx(float(torch_lin.loss_value), rel=1e-12)
    assert relative_difference(_to_flat(architecture, lin.gradient),
                               torch_lin.gradient.numpy()) < 1e-10
    generator = torch.Generator().manual_seed(2)
    for _ in range(2):
        v = torch.randn(torch_lin.num_parameters, dtype=torch.float64, generator=generator)
        got = _to_flat(architecture, lin.ggn_vector_product(_to_jax(architecture, v, params)))
        assert relative_difference(got, torch_lin.ggn_vector_product(v).numpy()) < 1e-10


_SMALL_MODELS = {  # small enough for a dense GGN: one per layer kind and loss
    "mlp-tanh-mse": (lambda: torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(),
                                                 torch.nn.Linear(5, 3)), (6,), "mse"),
    "cnn2d-maxpool-ce": (lambda: torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(12, 4)), (2, 4, 4), "cross_entropy"),
    "cnn1d-avgpool-bce": (lambda: torch.nn.Sequential(
        torch.nn.Unflatten(1, (1, 9)), torch.nn.Conv1d(1, 2, 3, stride=2, padding=1),
        torch.nn.Sigmoid(), torch.nn.AvgPool1d(2), torch.nn.Flatten(),
        torch.nn.Linear(4, 3)), (9,), "bce_logits"),
    "cnn2d-strided-mse": (lambda: torch.nn.Sequential(  # strides leave rows and columns over
        torch.nn.Conv2d(2, 3, 2, padding=1), torch.nn.Tanh(),
        torch.nn.Conv2d(3, 2, (3, 2), stride=(2, 3), padding=(1, 0)), torch.nn.Tanh(),
        torch.nn.Flatten(), torch.nn.Linear(12, 3)), (2, 5, 6), "mse"),
}


@pytest.mark.parametrize("canonical", [False, True], ids=["jax-transposes", "canonical"])
@pytest.mark.parametrize("case", sorted(_SMALL_MODELS))
def test_ggn_products_match_a_dense_jacobian_and_hessian_reference(case: str,
                                                                   canonical: bool) -> None:
    """``G = Jᵀ (∂²L/∂f²) J`` from ``jax.jacfwd`` and ``jax.hessian`` (independent of the
    losses' closed-form Hessians), dense in float64, on small models of every layer kind;
    ``Jᵀ`` as JAX's transpose of ``J`` or as the vector-Jacobian product of the model with
    hand-written convolution transposes (``canonical_transposes``, what SGN uses)."""
    build, shape, loss_name = _SMALL_MODELS[case]
    torch.manual_seed(0)
    architecture, params = from_torch(build().double())
    key_x, key_y, key_v = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(key_x, (5, *shape), dtype=jnp.float64)
    apply, loss = compile_architecture(architecture), jax_loss_by_name(loss_name)
    output = apply(params, x)
    y = (jax.random.randint(key_y, (5,), 0, output.shape[1]) if loss_name == "cross_entropy"
         else jax.random.uniform(key_y, output.shape, dtype=jnp.float64))
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    jacobian = jax.jacfwd(lambda p: apply(unravel(p), x).ravel())(flat)
    output_hessian = jax.hessian(lambda f: loss.value(f.reshape(output.shape), y))(output.ravel())
    dense = jacobian.T @ output_hessian @ jacobian
    reverse = compile_architecture(architecture, canonical_transposes=True) if canonical else None
    lin = linearize(apply, loss=loss, params=params, inputs=x, targets=y, reverse_apply=reverse)
    for v in jax.random.normal(key_v, (3, flat.size), dtype=flat.dtype):
        got, _ = jax.flatten_util.ravel_pytree(lin.ggn_vector_product(unravel(v)))
        assert relative_difference(np.asarray(got), np.asarray(dense @ v)) < 1e-10
    # the dense GGN is symmetric positive semi-definite
    assert float(jnp.linalg.eigvalsh(dense).min()) > -1e-10 * float(jnp.abs(dense).max())


def _flat_torch(model: torch.nn.Module) -> np.ndarray:
    params = list(model.parameters())
    return flatten([p.detach() for p in params], params).numpy().copy()


def _torch_sgn(problem: str, batches, hyperparameters):
    """Losses, step diagnostics and the parameters after every step of the torch SGN."""
    spec = get_problem(problem)
    model = spec.build_model(seed=0, dtype=torch.float64)
    opt = get_optimizer("sgn").build(model=model, loss=spec.make_loss(),
                                     hyperparameters=hyperparameters)
    losses, infos, params = [], [], []
    for x, y in batches:
        losses.append(float(opt.step(inputs=x, targets=y)))
        infos.append(dict(opt.step_info))
        params.append(_flat_torch(model))
    return losses, infos, params


@pytest.mark.parametrize(("problem", "hyperparameters", "steps"), [
    ("digits-mlp", {}, 12),  # the defaults, past the 10 warm-up steps
    ("mnist1d-cnn", {"momentum": 0.5, "weight_decay": 1e-3, "damping": 1e-2,
                     "damping_min": 1e-4}, 3),
    ("digits-logreg", {"line_search": False, "adaptive_damping": False, "step_size": 0.5}, 2),
])
def test_sgn_steps_match_torch(problem: str, hyperparameters, steps: int) -> None:
    """One step agrees with torch SGN to 1e-10 in the parameters; over several steps every
    decision (CG iterations, damping, step size) agrees and the losses agree to 1e-6.

    Across steps rounding differences grow: CG with ``λ = 1e-4`` amplifies a 1e-16 difference
    in the GGN products to about 1e-11 per step, so later losses drift apart slowly (measured
    5e-7 relative after 12 steps of the defaults on digits-mlp) without changing a decision.
    """
    batches = float64_batches(problem, batch_size=32, count=steps)
    expected, infos, torch_params = _torch_sgn(problem, batches, hyperparameters)
    spec = get_problem(problem)
    architecture, params = from_torch(spec.build_model(seed=0, dtype=torch.float64))
    stepper = build_jax_optimizer("sgn", architecture=architecture, params=params,
                                  loss=spec.loss, hyperparameters=hyperparameters)
    got = []
    for index, ((x, y), info) in enumerate(zip(batches, infos, strict=True)):
        got.append(stepper.step(inputs=x, targets=y))
        if index == 0:
            assert relative_difference(_to_flat(architecture, stepper.params),
                                       torch_params[0]) < 1e-10
        for key in ("cg_iterations", "damping", "step_size"):
            assert stepper.step_info[key] == pytest.approx(info[key], rel=1e-6), key
        # The final residual on the same steps (1, 11, …), from the whole last product.
        assert stepper.step_info["cg_relative_residual"] == pytest.approx(
            info["cg_relative_residual"], rel=1e-6, nan_ok=True), index
    skipped = sum(math.isnan(info["cg_relative_residual"]) for info in infos)
    assert skipped > 0 or problem != "digits-mlp"  # its 12 steps record 2 residuals
    assert stepper.counters["jacobian_vector_products"] == skipped
    assert relative_difference(np.array(got), np.array(expected)) < 1e-6
    assert relative_difference(_to_flat(architecture, stepper.params), torch_params[-1]) < 1e-4


@pytest.mark.parametrize("iterations", [1, 3])
@pytest.mark.parametrize("by_form", [False, True])
def test_jax_cg_takes_its_last_iteration_from_the_quadratic_form_as_torch_does(iterations,
                                                                               by_form):
    """Float64, a dense SPD matrix: the JAX solve agrees with the torch one (direction, model
    value, curvature, final residual or NaN, products) with and without the last product."""
    from curvebench.conjugate_gradient import conjugate_gradient
    from curvebench.jax_backend.sgn import conjugate_gradient_jax

    generator = np.random.default_rng(3)
    factor = generator.standard_normal((9, 9))
    matrix, gradient = factor @ factor.T / 9 + 0.1 * np.eye(9), generator.standard_normal(9)
    ours = conjugate_gradient_jax(
        lambda v: jnp.asarray(matrix) @ v, gradient=jnp.asarray(gradient),
        damping=jnp.asarray(0.2), max_iterations=jnp.asarray(iterations), tolerance=0.0,
        quadratic_form=lambda v: v @ jnp.asarray(matrix) @ v, by_form=jnp.asarray(by_form))
    torch_matrix = torch.from_numpy(matrix)
    theirs = conjugate_gradient(
        lambda v: torch_matrix @ v, gradient=torch.from_numpy(gradient), damping=0.2,
        max_iterations=iterations,
        quadratic_form=(lambda v: v @ torch_matrix @ v) if by_form else None)
    assert relative_difference(np.asarray(ours["direction"]), theirs.direction.numpy()) < 1e-12
    assert float(ours["quadratic_value"]) == pytest.approx(theirs.quadratic_value, rel=1e-12)
    assert float(ours["curvature"]) == pytest.approx(theirs.curvature, rel=1e-12)
    assert float(ours["relative_residual"]) == pytest.approx(theirs.relative_residual,
                                                             rel=1e-10, nan_ok=True)
    assert math.isnan(float(ours["relative_residual"])) == by_form
    assert (int(ours["products"]), int(ours["forms"])) == (theirs.products,
                                                          theirs.quadratic_forms)


def test_sgn_settings_come_from_the_torch_spec() -> None:
    settings = sgn_settings()
    assert {k: settings[k] for k in get_optimizer("sgn").defaults} == dict(
        get_optimizer("sgn").defaults)
    assert settings["armijo_c"] > 0 and settings["max_backtracks"] > 0  # the fixed knobs
    with pytest.raises(HyperparameterError, match="damping"):
        sgn_settings({"damping": -1.0})
