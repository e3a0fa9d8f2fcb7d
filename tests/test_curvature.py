"""The curvature core against independent dense references, in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from curvebench import curvature
from curvebench.curvature import (
    Linearization,
    UnsupportedModelError,
    flatten,
    ggn_vector_product,
    gradient,
    hessian_vector_product,
    unflatten,
)
from curvebench.losses import LOSSES, BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from curvebench.problems import models
from curvebench.problems.torch_models import build_torch_model
from tests.dense_reference import dense_ggn, dense_hessian, dense_jacobian

TOLERANCE = 1e-10


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm().clamp_min(1e-300))


def _torch(architecture) -> nn.Module:
    """The declared model with torch's own initialisation (the test seeds the global RNG)."""
    return build_torch_model(architecture, seed=None)


def _tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Unflatten(1, (1, 5, 5)),
        nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.Tanh(),
        nn.Conv2d(2, 2, 2, stride=1, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * 2 * 2, 3),
    )


def _tiny_cnn1d() -> nn.Module:
    return nn.Sequential(
        nn.Unflatten(1, (1, 9)),
        nn.Conv1d(1, 2, 3, stride=2, padding=1, bias=False), nn.LeakyReLU(0.1),
        nn.Sequential(nn.Conv1d(2, 3, 2), nn.AvgPool1d(2)), nn.Sigmoid(),
        nn.Flatten(), nn.Linear(3 * 2, 3), nn.Identity(),
    )


MODELS = {
    "mlp-tanh": (lambda: _torch(models.mlp([4, 5, 3], activation="tanh")), 4),
    "mlp-relu": (lambda: _torch(models.mlp([4, 5, 4, 3], activation="relu")), 4),
    "mlp-sigmoid": (lambda: _torch(models.mlp([4, 5, 3], activation="sigmoid")), 4),
    "cnn2d": (_tiny_cnn, 25),
    "cnn1d": (_tiny_cnn1d, 9),
    "autoencoder": (lambda: _torch(models.autoencoder([3, 4, 2], activation="sigmoid")), 3),
}


def _problem(model_name: str, loss_name: str, *, batch: int = 6, seed: int = 0):
    """A float64 model, loss, batch and targets of the right kind."""
    factory, d_in = MODELS[model_name]
    torch.manual_seed(seed)
    model = factory().double()
    inputs = torch.randn(batch, d_in, dtype=torch.float64)
    loss = LOSSES[loss_name]()
    with torch.no_grad():
        d_out = model(inputs).shape[1]
    if loss_name == "cross_entropy":
        targets = torch.randint(0, d_out, (batch,))
    elif loss_name == "bce_logits":
        targets = torch.rand(batch, d_out, dtype=torch.float64)
    else:
        targets = torch.randn(batch, d_out, dtype=torch.float64)
    return model, loss, inputs, targets


def _dense_from_products(product, size: int) -> torch.Tensor:
    eye = torch.eye(size, dtype=torch.float64)
    return torch.stack([product(eye[i]) for i in range(size)], dim=1)


@pytest.mark.parametrize("jvp_method", ["layers", "double_vjp"])
@pytest.mark.parametrize("loss_name", sorted(LOSSES))
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_ggn_vector_product_matches_dense_ggn(model_name, loss_name, jvp_method):
    model, loss, inputs, targets = _problem(model_name, loss_name)
    reference = dense_ggn(model, loss, inputs, targets)
    lin = Linearization(model, loss=loss, inputs=inputs, targets=targets, jvp_method=jvp_method)
    assert lin.jvp_method == jvp_method
    generator = torch.Generator().manual_seed(1)
    vectors = torch.randn(3, lin.num_parameters, dtype=torch.float64, generator=generator)
    for vector in vectors:
        assert _relative_error(lin.ggn_vector_product(vector), reference @ vector) <= TOLERANCE
        expected = vector @ reference @ vector
        assert abs(float(lin.ggn_quadratic_form(vector)) - expected) <= TOLERANCE * abs(expected)
    if jvp_method != "layers":
        return
    # Every column, so the whole matrix is checked (the models are tiny).
    ours = _dense_from_products(lin.ggn_vector_product, lin.num_parameters)
    assert _relative_error(ours, reference) <= TOLERANCE
    # Symmetric positive semi-definite.
    assert _relative_error(ours, ours.T) <= TOLERANCE
    eigenvalues = torch.linalg.eigvalsh(0.5 * (ours + ours.T))
    assert eigenvalues.min() >= -1e-12 * eigenvalues.abs().max()


@pytest.mark.parametrize("jvp_method", ["layers", "double_vjp"])
@pytest.mark.parametrize("model_name", ["mlp-tanh", "cnn2d", "cnn1d"])
def test_jacobian_products_and_gradient_match_dense(model_name, jvp_method):
    model, loss, inputs, targets = _problem(model_name, "cross_entropy")
    jacobian = dense_jacobian(model, inputs)
    lin = Linearization(model, loss=loss, inputs=inputs, targets=targets, jvp_method=jvp_method)
    v = torch.randn(lin.num_parameters, dtype=torch.float64)
    u = torch.randn_like(lin.output)
    assert _relative_error(lin.jacobian_vector_product(v).reshape(-1), jacobian @ v) <= TOLERANCE
    assert _relative_error(lin.vector_jacobian_product(u), jacobian.T @ u.reshape(-1)) \
        <= TOLERANCE
    params = list(model.parameters())
    expected = flatten(torch.autograd.grad(loss(model(inputs), targets), params), params)
    assert _relative_error(lin.gradient, expected) <= TOLERANCE
    assert _relative_error(gradient(model, loss=loss, inputs=inputs, targets=targets),
                           expected) <= TOLERANCE
    assert torch.allclose(lin.loss_value, loss(model(inputs), targets))


@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_hessian_vector_product_matches_dense_hessian(loss_name):
    model, loss, inputs, targets = _problem("mlp-tanh", loss_name)
    reference = dense_hessian(model, loss, inputs, targets)
    lin = Linearization(model, loss=loss, inputs=inputs, targets=targets)
    for _ in range(2):
        v = torch.randn(lin.num_parameters, dtype=torch.float64)
        assert _relative_error(lin.hessian_vector_product(v), reference @ v) <= TOLERANCE
    v = torch.randn(lin.num_parameters, dtype=torch.float64)
    one_shot = hessian_vector_product(model, loss=loss, inputs=inputs, targets=targets, vector=v)
    assert _relative_error(one_shot, reference @ v) <= TOLERANCE
    # On a curved network with a curved loss the GGN is *not* the Hessian (the test can fail).
    assert _relative_error(lin.ggn_vector_product(v), reference @ v) > 1e-6


def test_ggn_equals_hessian_where_the_network_is_linear_in_the_parameters():
    """GGN and Hessian differ by ``Σ (∂L/∂f) ∂²f/∂θ²``; check each place that term vanishes.

    A ReLU network is piecewise linear in each layer's parameters, so every per-layer diagonal
    block of ``∂²f/∂θ²`` is zero (the cross-layer blocks are not); with zero residual the whole
    correction vanishes; for a single linear layer ``f`` is linear in ``θ``.
    """
    model, loss, inputs, targets = _problem("mlp-relu", "mse", batch=8)
    lin = Linearization(model, loss=loss, inputs=inputs, targets=targets)
    hessian = dense_hessian(model, loss, inputs, targets)
    ggn = _dense_from_products(lin.ggn_vector_product, lin.num_parameters)
    hvp = _dense_from_products(lin.hessian_vector_product, lin.num_parameters)
    assert _relative_error(hvp, hessian) <= TOLERANCE
    offset = 0
    for layer in model:
        size = sum(p.numel() for p in layer.parameters())
        if size:
            block = slice(offset, offset + size)
            assert _relative_error(ggn[block, block], hessian[block, block]) <= TOLERANCE
            offset += size
    # The cross-layer blocks differ (the check above can fail).
    assert _relative_error(ggn, hessian) > 1e-3

    with torch.no_grad():
        exact_targets = model(inputs)
    zero_residual = Linearization(model, loss=loss, inputs=inputs, targets=exact_targets)
    ggn = _dense_from_products(zero_residual.ggn_vector_product, lin.num_parameters)
    assert _relative_error(ggn, dense_hessian(model, loss, inputs, exact_targets)) <= TOLERANCE

    linear = nn.Linear(4, 3).double()
    single = Linearization(linear, loss=loss, inputs=inputs, targets=targets[:, :3])
    size = single.num_parameters
    assert _relative_error(_dense_from_products(single.ggn_vector_product, size),
                           dense_hessian(linear, loss, inputs, targets[:, :3])) <= TOLERANCE


@pytest.mark.parametrize(("model_name", "loss_name"), [
    ("mlp-sigmoid", "mse"), ("cnn2d", "cross_entropy"), ("autoencoder", "bce_logits"),
    ("cnn1d", "mse"),
])
def test_agrees_with_curvlinops(model_name, loss_name):
    curvlinops = pytest.importorskip("curvlinops")
    model, loss, inputs, targets = _problem(model_name, loss_name)
    torch_loss = {"mse": nn.MSELoss(), "cross_entropy": nn.CrossEntropyLoss(),
                  "bce_logits": nn.BCEWithLogitsLoss()}[loss_name]
    params = [p for p in model.parameters() if p.requires_grad]
    operator = curvlinops.GGNLinearOperator(model, torch_loss, params, [(inputs, targets)],
                                            check_deterministic=False)
    lin = Linearization(model, loss=loss, inputs=inputs, targets=targets)
    for _ in range(2):
        v = torch.randn(lin.num_parameters, dtype=torch.float64)
        theirs = operator @ v
        theirs = theirs if isinstance(theirs, torch.Tensor) else torch.as_tensor(theirs)
        assert _relative_error(lin.ggn_vector_product(v), theirs.reshape(-1)) <= TOLERANCE


def test_forward_pass_runs_once_per_linearization():
    model, loss, inputs, targets = _problem("mlp-tanh", "mse")
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    lin = Linearization(model, loss=loss, inputs=inputs, targets=targets)
    v = torch.randn(lin.num_parameters, dtype=torch.float64)
    first = lin.ggn_vector_product(v)
    for _ in range(4):
        assert torch.equal(lin.ggn_vector_product(v), first)
    assert len(calls) == 1


def test_dropout_masks_are_fixed_within_a_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 3)).double()
    inputs = torch.randn(8, 4, dtype=torch.float64)
    targets = torch.randint(0, 3, (8,))
    loss = CrossEntropyLoss()
    lin = Linearization(model, loss=loss, inputs=inputs, targets=targets)
    v = torch.randn(lin.num_parameters, dtype=torch.float64)
    first = lin.ggn_vector_product(v)
    torch.rand(100)  # advance the global RNG: later products and evaluations must not care
    assert torch.equal(lin.ggn_vector_product(v), first)
    assert torch.equal(lin.evaluate_loss(), lin.loss_value)
    assert torch.equal(lin.evaluate_loss(), lin.loss_value)
    # A fresh linearisation draws new masks, so the products differ (the check can fail).
    other = Linearization(model, loss=loss, inputs=inputs, targets=targets)
    assert not torch.allclose(other.ggn_vector_product(v), first)
    # The dense GGN of the network with this step's masks frozen equals ours.
    with torch.random.fork_rng(devices=[]):
        torch.random.set_rng_state(lin._rng_state)
        mask_probe = nn.functional.dropout(torch.ones(8, 16, dtype=torch.float64), 0.5)
    frozen = nn.Sequential(model[0], model[1], _FixedMask(mask_probe), model[3])
    reference = dense_ggn(frozen, loss, inputs, targets)
    assert _relative_error(first, reference @ v) <= TOLERANCE


class _FixedMask(nn.Module):
    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


def test_batchnorm_in_training_mode_is_a_clear_error_and_eval_mode_works():
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)).double()
    inputs = torch.randn(6, 4, dtype=torch.float64)
    targets = torch.randn(6, 3, dtype=torch.float64)
    with pytest.raises(UnsupportedModelError, match="BatchNorm1d"):
        Linearization(model, loss=MSELoss(), inputs=inputs, targets=targets)
    model.eval()
    lin = Linearization(model, loss=MSELoss(), inputs=inputs, targets=targets)
    v = torch.randn(lin.num_parameters, dtype=torch.float64)
    reference = dense_ggn(model, MSELoss(), inputs, targets)
    assert _relative_error(lin.ggn_vector_product(v), reference @ v) <= TOLERANCE


def test_unused_and_selected_parameters():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    unused = nn.Linear(2, 2).double()
    model.add_module("unused", unused)
    model.forward = lambda x: model[2](model[1](model[0](x)))  # type: ignore[method-assign]
    inputs = torch.randn(5, 3, dtype=torch.float64)
    targets = torch.randn(5, 2, dtype=torch.float64)
    lin = Linearization(model, loss=MSELoss(), inputs=inputs, targets=targets)
    v = torch.ones(lin.num_parameters, dtype=torch.float64)
    out = unflatten(lin.ggn_vector_product(v), lin.params)
    assert torch.count_nonzero(out[-1]) == 0 and torch.count_nonzero(out[-2]) == 0
    last = list(model[2].parameters())
    partial = Linearization(model, loss=MSELoss(), inputs=inputs, targets=targets, params=last)
    w = torch.randn(partial.num_parameters, dtype=torch.float64)
    full_w = torch.zeros(lin.num_parameters, dtype=torch.float64)
    offset = sum(p.numel() for p in model[0].parameters())
    full_w[offset: offset + w.numel()] = w
    expected = lin.ggn_vector_product(full_w)[offset: offset + w.numel()]
    assert _relative_error(partial.ggn_vector_product(w), expected) <= TOLERANCE


def test_one_shot_functions_and_flat_layout():
    model, loss, inputs, targets = _problem("mlp-tanh", "bce_logits")
    params = list(model.parameters())
    v = torch.randn(sum(p.numel() for p in params), dtype=torch.float64)
    reference = dense_ggn(model, BCEWithLogitsLoss(), inputs, targets)
    result = ggn_vector_product(model, loss=loss, inputs=inputs, targets=targets, vector=v)
    assert _relative_error(result, reference @ v) <= TOLERANCE
    chunks = unflatten(v, params)
    assert [c.shape for c in chunks] == [p.shape for p in params]
    assert torch.equal(flatten(chunks, params), v)
    with pytest.raises(ValueError, match="flat vector"):
        unflatten(v[:-1], params)


def test_output_must_be_two_dimensional():
    model = nn.Linear(3, 2).double()
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        Linearization(model, loss=MSELoss(), inputs=torch.randn(2, 4, 3, dtype=torch.float64),
                      targets=torch.randn(2, 4, 2, dtype=torch.float64))


def test_jvp_method_choice():
    model, loss, inputs, targets = _problem("mlp-tanh", "mse")
    assert Linearization(model, loss=loss, inputs=inputs, targets=targets).jvp_method == "layers"
    dropout = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5)).double()
    lin = Linearization(dropout, loss=loss, inputs=inputs, targets=targets)
    assert lin.jvp_method == "double_vjp"  # masks live in the autograd graph
    dropout.eval()
    assert Linearization(dropout, loss=loss, inputs=inputs,
                         targets=targets).jvp_method == "layers"
    unknown = nn.Sequential(nn.Linear(4, 3), nn.Softplus()).double()
    with pytest.raises(UnsupportedModelError, match="Sequential"):
        Linearization(unknown, loss=loss, inputs=inputs, targets=targets, jvp_method="layers")
    lin = Linearization(unknown, loss=loss, inputs=inputs, targets=targets)
    assert lin.jvp_method == "double_vjp"
    v = torch.randn(lin.num_parameters, dtype=torch.float64)
    reference = dense_ggn(unknown, loss, inputs, targets)
    assert _relative_error(lin.ggn_vector_product(v), reference @ v) <= TOLERANCE
    with pytest.raises(ValueError, match="jvp_method"):
        Linearization(model, loss=loss, inputs=inputs, targets=targets,
                      jvp_method="bogus")  # type: ignore[arg-type]


def test_layers_path_with_frozen_parameters():
    model, loss, inputs, targets = _problem("cnn1d", "cross_entropy")
    for p in model[-2].parameters():
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    layers = Linearization(model, loss=loss, inputs=inputs, targets=targets,
                           jvp_method="layers")
    generic = Linearization(model, loss=loss, inputs=inputs, targets=targets,
                            jvp_method="double_vjp")
    assert layers.num_parameters == sum(p.numel() for p in params)
    v = torch.randn(layers.num_parameters, dtype=torch.float64)
    assert _relative_error(layers.ggn_vector_product(v), generic.ggn_vector_product(v)) \
        <= TOLERANCE


@pytest.mark.parametrize("jvp_method", ["layers", "double_vjp"])
def test_in_place_activations_and_max_pool_give_the_out_of_place_products(jvp_method):
    """``inplace=True`` activations after Conv/Linear, and max pooling whose indices the
    linearising pass takes from the forward itself (the module is left as it was)."""
    def cnn(inplace: bool) -> nn.Sequential:
        torch.manual_seed(31)
        return nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(inplace=inplace), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(12, 5), nn.LeakyReLU(0.1, inplace=inplace),
            nn.Linear(5, 3)).double()

    generator = torch.Generator().manual_seed(31)
    inputs = torch.randn(4, 2, 4, 4, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 3, (4,), generator=generator)
    products = []
    for inplace in (True, False):
        model = cnn(inplace)
        lin = Linearization(model, loss=CrossEntropyLoss(), inputs=inputs, targets=targets,
                            jvp_method=jvp_method)
        vector = torch.randn(lin.num_parameters, generator=torch.Generator().manual_seed(32),
                             dtype=torch.float64)
        products.append((lin.gradient, lin.ggn_vector_product(vector),
                         lin.ggn_quadratic_form(vector)))
        assert model[2].return_indices is False
        assert model(inputs).shape == (4, 3)
    for ours, expected in zip(products[0], products[1], strict=True):
        torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)


def test_function_evaluation_from_the_input_layer_tangent_matches_a_forward_pass(monkeypatch):
    """At ``θ + αd`` the input Linear layer's output is ``f₁(θ) + α J₁d``; only the layers
    after it run (tracked from any width here)."""
    monkeypatch.setattr(curvature, "TRACKED_FAN_IN", 1)
    model, loss, inputs, targets = _problem("mlp-relu", "cross_entropy")
    lin = Linearization(model, loss=loss, inputs=inputs, targets=targets)
    assert lin.tracks_input_layer
    direction = torch.randn(lin.num_parameters, dtype=torch.float64)
    lin.ggn_vector_product(direction)
    tangent = lin.input_layer_tangent.clone()
    theta = flatten([p.detach() for p in lin.params], lin.params)
    with torch.no_grad():
        for p, value in zip(lin.params, unflatten(theta + 0.3 * direction, lin.params),
                            strict=True):
            p.copy_(value)
    ours = lin.evaluate_loss(step=0.3, input_layer_tangent=tangent, regularizer=0.1)
    torch.testing.assert_close(ours, lin.evaluate_loss(regularizer=0.1), rtol=1e-12, atol=0)
    assert not torch.allclose(ours, lin.evaluate_loss(step=0.31, input_layer_tangent=tangent,
                                                      regularizer=0.1))


def test_input_layer_is_not_tracked_where_it_cannot_be_or_does_not_pay(monkeypatch):
    """Not for a narrow input layer (by default), the double-vjp method, a layer working in
    place (it would overwrite the captured output), a first convolution; a tangent given
    anyway is a one-line error."""
    model, loss, inputs, targets = _problem("mlp-relu", "cross_entropy")
    assert not Linearization(model, loss=loss, inputs=inputs, targets=targets).tracks_input_layer
    monkeypatch.setattr(curvature, "TRACKED_FAN_IN", 4)
    assert Linearization(model, loss=loss, inputs=inputs, targets=targets).tracks_input_layer
    generic = Linearization(model, loss=loss, inputs=inputs, targets=targets,
                            jvp_method="double_vjp")
    assert not generic.tracks_input_layer
    with pytest.raises(ValueError, match="does not track"):
        generic.evaluate_loss(input_layer_tangent=torch.zeros(1))
    in_place = nn.Sequential(nn.Linear(4, 5), nn.ReLU(inplace=True), nn.Linear(5, 3)).double()
    assert not Linearization(in_place, loss=loss, inputs=inputs,
                             targets=targets).tracks_input_layer
    model, loss, inputs, targets = _problem("cnn2d", "cross_entropy")
    assert not Linearization(model, loss=loss, inputs=inputs, targets=targets).tracks_input_layer


def test_activation_then_max_pool_tangent_is_pooled_first(monkeypatch):
    """``J v`` through Tanh, Sigmoid and ReLU each followed by max pooling (the derivative taken
    on the pooled tangent) against the dense Jacobian, and equal to the layer-by-layer rules."""
    torch.manual_seed(11)
    model = nn.Sequential(
        nn.Unflatten(1, (1, 6, 6)), nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2),
        nn.Conv2d(2, 3, 2, padding=1), nn.Sigmoid(), nn.MaxPool2d(2), nn.Flatten(2),
        nn.Conv1d(3, 4, 1), nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(), nn.Linear(8, 3)).double()
    inputs = torch.randn(5, 36, dtype=torch.float64)
    targets = torch.randint(0, 3, (5,))
    lin = Linearization(model, loss=CrossEntropyLoss(), inputs=inputs, targets=targets)
    assert lin.jvp_method == "layers"
    v = torch.randn(lin.num_parameters, dtype=torch.float64)
    pooled_first = lin.jacobian_vector_product(v)
    assert _relative_error(pooled_first.reshape(-1), dense_jacobian(model, inputs) @ v) \
        <= TOLERANCE
    monkeypatch.setattr(curvature, "_OUTPUT_DERIVATIVES", {})
    assert torch.equal(lin.jacobian_vector_product(v), pooled_first)


def _pooling_cnn_with_a_frozen_layer() -> nn.Module:
    model = nn.Sequential(
        nn.Unflatten(1, (2, 5, 5)), nn.Conv2d(2, 3, 3, padding=1), nn.LeakyReLU(0.2),
        nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(3, 2, 2, dilation=2, bias=False),
        nn.Sigmoid(), nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(), nn.Linear(8, 4), nn.Tanh(),
        nn.Linear(4, 3))
    model[1].requires_grad_(False)  # the first layer frozen: the first with parameters is [4]
    return model


@pytest.mark.parametrize("model_name", ["mlp-relu", "mlp-sigmoid", "cnn2d", "autoencoder",
                                        "pooling cnn, frozen first layer"])
def test_transpose_product_by_the_layers_rules_is_autograds(model_name):
    """``Jᵀ u`` by the layers' reverse rules (parameter gradients written into the flat
    vector, activations before max pooling differentiated on the pooled gradient) against a
    backward through the retained graph."""
    if model_name in MODELS:
        model, loss, inputs, targets = _problem(model_name, "cross_entropy")
    else:
        torch.manual_seed(41)
        model = _pooling_cnn_with_a_frozen_layer().double()
        loss, inputs = CrossEntropyLoss(), torch.randn(6, 50, dtype=torch.float64)
        targets = torch.randint(0, 3, (6,))
    lin = Linearization(model, loss=loss, inputs=inputs, targets=targets)
    assert lin._reverse_by_layers
    u = torch.randn_like(lin.output)
    expected = flatten(torch.autograd.grad(lin.graph_output, lin.params, u, retain_graph=True,
                                           allow_unused=True), lin.params)
    torch.testing.assert_close(lin.vector_jacobian_product(u), expected, rtol=1e-12,
                               atol=1e-15)


def test_transpose_product_without_reverse_rules_goes_through_autograd():
    model, loss, inputs, targets = _problem("cnn1d", "cross_entropy")  # AvgPool1d: no rule
    lin = Linearization(model, loss=loss, inputs=inputs, targets=targets)
    assert lin.jvp_method == "layers" and not lin._reverse_by_layers
