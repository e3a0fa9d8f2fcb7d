"""Kronecker factors (curvebench.kronecker) against independent float64 references.

References: the dense GGN of ``tests/dense_reference.py`` (jacrev + double backward through the
loss value), per-example Jacobians with ``torch.func.jacrev``, convolution patches cut out by
explicit loops, and BackPACK's KFLR/KFAC/KFRA extensions (test-only dependency).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.func import jacrev

from curvebench.arithmetic import count_flops
from curvebench.kronecker import (
    CURVATURE_TYPES,
    KroneckerFactorCollector,
    UnsupportedModelError,
    dense_ggn_block,
    gram,
    input_factor,
    kfra_support,
    kronecker_approximation_error,
    kronecker_factors,
    layer_inputs,
    output_factor,
)
from curvebench.losses import LOSSES, BCEWithLogitsLoss, CrossEntropyLoss, CurvatureLoss, MSELoss
from tests.dense_reference import dense_ggn, dense_output_hessian

DTYPE = torch.float64


def _targets(loss: CurvatureLoss, n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    if isinstance(loss, CrossEntropyLoss):
        return torch.randint(0, d, (n,), generator=generator)
    if isinstance(loss, BCEWithLogitsLoss):
        return torch.rand(n, d, generator=generator, dtype=DTYPE)
    return torch.randn(n, d, generator=generator, dtype=DTYPE)


def _mlp(activation: type[nn.Module] = nn.Tanh, widths=(5, 4, 6, 3), seed: int = 0):
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(activation())
    return nn.Sequential(*layers).to(DTYPE)


def _column_major_permutation(out_features: int, in_features: int) -> torch.Tensor:
    """Index map from ``vec([W, b])`` (column-major, ours) to ``[W.flatten(), b]`` (dense)."""
    index = []
    for i in range(in_features + 1):
        for o in range(out_features):
            index.append(o * in_features + i if i < in_features
                         else out_features * in_features + o)
    return torch.tensor(index)


@pytest.mark.parametrize("loss_name", sorted(LOSSES))
@pytest.mark.parametrize("curvature", ["kflr", "kfra"])
def test_one_linear_layer_one_example_equals_dense_ggn(loss_name, curvature):
    loss = LOSSES[loss_name]()
    generator = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    model = nn.Linear(4, 3).to(DTYPE)
    inputs = torch.randn(1, 4, generator=generator, dtype=DTYPE)
    targets = _targets(loss, 1, 3, generator)

    factors = kronecker_factors(model, loss, inputs, targets, curvature=curvature)[""]
    perm = _column_major_permutation(3, 4)
    exact = dense_ggn(model, loss, inputs, targets)[perm][:, perm]
    torch.testing.assert_close(factors.kron(), exact, rtol=1e-10, atol=1e-12)


def _per_example_reference(model: nn.Sequential, loss: CurvatureLoss, inputs, targets):
    """``A`` and ``S`` of every Linear layer from per-example Jacobians (independent path)."""
    with torch.no_grad():
        output = model(inputs)
    hessian = dense_output_hessian(loss, output, targets)  # (N·D, N·D), batch-mean loss
    n, d = output.shape
    reference = {}
    for index, layer in enumerate(model):
        if not isinstance(layer, nn.Linear):
            continue
        head, tail = model[:index], model[index + 1:]
        a_total = torch.zeros(layer.in_features + 1, layer.in_features + 1, dtype=DTYPE)
        s_total = torch.zeros(layer.out_features, layer.out_features, dtype=DTYPE)
        for sample in range(n):
            with torch.no_grad():
                a = head(inputs[sample : sample + 1])[0]
                s = layer(a.unsqueeze(0))[0]
            homogeneous = torch.cat([a, torch.ones(1, dtype=DTYPE)])
            a_total += torch.outer(homogeneous, homogeneous)
            jac = jacrev(lambda z, tail=tail: tail(z.unsqueeze(0))[0])(s)  # (D, d_out)
            block = hessian[sample * d : (sample + 1) * d, sample * d : (sample + 1) * d]
            s_total += jac.T @ block @ jac
        reference[str(index)] = (a_total / n, s_total)
    return reference


@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_kflr_factors_equal_per_example_computation(loss_name):
    loss = LOSSES[loss_name]()
    model = _mlp(nn.Sigmoid)
    generator = torch.Generator().manual_seed(2)
    inputs = torch.randn(6, 5, generator=generator, dtype=DTYPE)
    targets = _targets(loss, 6, 3, generator)

    factors = kronecker_factors(model, loss, inputs, targets, curvature="kflr")
    reference = _per_example_reference(model, loss, inputs, targets)
    assert set(factors) == set(reference) == {"0", "2", "4"}
    for name, (a, s) in reference.items():
        torch.testing.assert_close(factors[name].A, a, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(factors[name].S, s, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("activation", [nn.Tanh, nn.ReLU, nn.Sigmoid])
@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_kfra_equals_kflr_at_batch_size_one(activation, loss_name):
    loss = LOSSES[loss_name]()
    model = _mlp(activation, seed=3)
    generator = torch.Generator().manual_seed(4)
    inputs = torch.randn(1, 5, generator=generator, dtype=DTYPE)
    targets = _targets(loss, 1, 3, generator)
    kflr = kronecker_factors(model, loss, inputs, targets, curvature="kflr")
    kfra = kronecker_factors(model, loss, inputs, targets, curvature="kfra")
    for name in kflr:
        torch.testing.assert_close(kfra[name].A, kflr[name].A, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(kfra[name].S, kflr[name].S, rtol=1e-10, atol=1e-12)


def test_kfra_differs_from_kflr_on_a_batch():
    """The batch averaging is an approximation: the test above could fail."""
    model = _mlp(nn.Tanh, seed=5)
    inputs = torch.randn(8, 5, dtype=DTYPE)
    targets = torch.randint(0, 3, (8,))
    kflr = kronecker_factors(model, CrossEntropyLoss(), inputs, targets, curvature="kflr")
    kfra = kronecker_factors(model, CrossEntropyLoss(), inputs, targets, curvature="kfra")
    torch.testing.assert_close(kfra["4"].S, kflr["4"].S)  # last layer: no recursion yet
    assert not torch.allclose(kfra["0"].S, kflr["0"].S, rtol=1e-3)


def test_empirical_fisher_equals_per_example_gradients():
    """``S = (1/N) Σ_n ∇_s ℓ_n ∇_s ℓ_nᵀ`` with ``ℓ_n`` the loss of example ``n`` alone."""
    model = _mlp(nn.Tanh, seed=6)
    loss = CrossEntropyLoss()
    inputs = torch.randn(5, 5, dtype=DTYPE)
    targets = torch.randint(0, 3, (5,))
    factors = kronecker_factors(model, loss, inputs, targets, curvature="empirical")
    head, layer, tail = model[:2], model[2], model[3:]
    expected = torch.zeros(6, 6, dtype=DTYPE)
    for sample in range(5):
        s = layer(head(inputs[sample : sample + 1])).detach().requires_grad_(True)
        (gradient,) = torch.autograd.grad(loss(tail(s), targets[sample : sample + 1]), s)
        expected += torch.outer(gradient[0], gradient[0]) / 5
    torch.testing.assert_close(factors["2"].S, expected, rtol=1e-10, atol=1e-12)


def test_kfac_is_an_unbiased_estimate_of_kflr():
    model = _mlp(nn.Tanh, seed=7)
    loss = CrossEntropyLoss()
    inputs = torch.randn(8, 5, dtype=DTYPE)
    targets = torch.randint(0, 3, (8,))
    generator = torch.Generator().manual_seed(0)
    kflr = kronecker_factors(model, loss, inputs, targets, curvature="kflr")
    kfac = kronecker_factors(model, loss, inputs, targets, curvature="kfac", mc_samples=4000,
                             generator=generator)
    few = kronecker_factors(model, loss, inputs, targets, curvature="kfac", mc_samples=1,
                            generator=generator)
    for name in kflr:
        torch.testing.assert_close(kfac[name].A, kflr[name].A)
        error = torch.linalg.matrix_norm(kfac[name].S - kflr[name].S)
        assert error / torch.linalg.matrix_norm(kflr[name].S) < 0.05
    assert not torch.allclose(few["0"].S, kflr["0"].S, rtol=0.05)


def _explicit_patches(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``(N, T, C·kh·kw)`` patches cut out of the zero-padded input by explicit loops."""
    (ph, pw), (sh, sw), (kh, kw) = conv.padding, conv.stride, conv.kernel_size
    n, c, h, w = x.shape
    padded = torch.zeros(n, c, h + 2 * ph, w + 2 * pw, dtype=x.dtype)
    padded[:, :, ph : ph + h, pw : pw + w] = x
    rows = (h + 2 * ph - kh) // sh + 1
    cols = (w + 2 * pw - kw) // sw + 1
    patches = []
    for i in range(rows):
        for j in range(cols):
            patches.append(padded[:, :, i * sh : i * sh + kh, j * sw : j * sw + kw].reshape(n, -1))
    return torch.stack(patches, dim=1)


@pytest.mark.parametrize(("kernel", "stride", "padding"), [
    (3, 2, 1), ((2, 3), (1, 2), (1, 0)), (3, 1, 0),
])
def test_conv2d_factors_equal_explicit_patches(kernel, stride, padding):
    torch.manual_seed(8)
    conv = nn.Conv2d(2, 3, kernel, stride=stride, padding=padding)
    body = nn.Sequential(nn.Unflatten(1, (2, 5, 6)), conv, nn.Tanh(), nn.Flatten())
    with torch.no_grad():
        features = body(torch.zeros(1, 60)).shape[1]
    model = nn.Sequential(*body, nn.Linear(features, 4)).to(DTYPE)
    loss = CrossEntropyLoss()
    inputs = torch.randn(3, 60, dtype=DTYPE)
    targets = torch.randint(0, 4, (3,))

    factors = kronecker_factors(model, loss, inputs, targets, curvature="kflr")["1"]
    images = inputs.reshape(3, 2, 5, 6)
    patches = _explicit_patches(images, conv)
    torch.testing.assert_close(layer_inputs(conv, images), patches)
    homogeneous = torch.cat([patches, torch.ones(*patches.shape[:2], 1, dtype=DTYPE)], dim=2)
    a = torch.einsum("nti,ntj->ij", homogeneous, homogeneous) / 3
    torch.testing.assert_close(factors.A, a, rtol=1e-10, atol=1e-12)

    with torch.no_grad():
        output = model(inputs)
        pre = conv(images)
    hessian = dense_output_hessian(loss, output, targets)
    tail = model[2:]
    positions = pre.shape[2] * pre.shape[3]
    s = torch.zeros(3, 3, dtype=DTYPE)
    for sample in range(3):
        jac = jacrev(lambda z: tail(z.unsqueeze(0))[0])(pre[sample])  # (D, C, Ho, Wo)
        block = hessian[sample * 4 : (sample + 1) * 4, sample * 4 : (sample + 1) * 4]
        for i in range(pre.shape[2]):
            for j in range(pre.shape[3]):
                column = jac[:, :, i, j]
                s += column.T @ block @ column / positions
    torch.testing.assert_close(factors.S, s, rtol=1e-10, atol=1e-12)


def test_conv1d_and_string_padding_match_the_layer():
    """Patches times the weight reproduce the convolution (1-D, 'same' and circular padding)."""
    torch.manual_seed(9)
    for conv in (nn.Conv1d(2, 3, 3, stride=2, padding=1),
                 nn.Conv1d(2, 3, 4, padding="same", dilation=2),
                 nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular")):
        conv = conv.to(DTYPE)
        shape = (4, 2, 9) if isinstance(conv, nn.Conv1d) else (4, 2, 5, 6)
        x = torch.randn(*shape, dtype=DTYPE)
        patches = layer_inputs(conv, x)
        out = patches @ conv.weight.reshape(3, -1).T + conv.bias
        torch.testing.assert_close(out, conv(x).reshape(4, 3, -1).transpose(1, 2))


def test_conv_with_one_output_position_is_exact():
    """KFC scaling: a convolution with one output position is a Linear layer."""
    torch.manual_seed(10)
    model = nn.Sequential(nn.Unflatten(1, (2, 3, 3)), nn.Conv2d(2, 4, 3), nn.Flatten(),
                          nn.Tanh(), nn.Linear(4, 3)).to(DTYPE)
    inputs = torch.randn(1, 18, dtype=DTYPE)
    errors = kronecker_approximation_error(model, CrossEntropyLoss(), inputs,
                                           torch.tensor([2]))
    assert max(errors.values()) < 1e-12


def test_approximation_error_is_reported_per_layer():
    model = _mlp(nn.Tanh, seed=11)
    inputs = torch.randn(1, 5, dtype=DTYPE)
    single = kronecker_approximation_error(model, MSELoss(), inputs, torch.randn(1, 3,
                                           dtype=DTYPE))
    assert max(single.values()) < 1e-12  # one example: KFLR is exact
    inputs = torch.randn(16, 5, dtype=DTYPE)
    targets = torch.randint(0, 3, (16,))
    for curvature in CURVATURE_TYPES:
        errors = kronecker_approximation_error(model, CrossEntropyLoss(), inputs, targets,
                                               curvature=curvature)
        assert set(errors) == {"0", "2", "4"}
        assert all(0 < e < math.inf for e in errors.values())


def test_dense_ggn_block_matches_dense_reference():
    model = _mlp(nn.Tanh, seed=12)
    inputs = torch.randn(3, 5, dtype=DTYPE)
    targets = torch.randint(0, 3, (3,))
    full = dense_ggn(model, CrossEntropyLoss(), inputs, targets)
    offset = 5 * 4 + 4  # parameters of layer "0"
    size = 6 * 4 + 6
    perm = _column_major_permutation(6, 4) + offset
    torch.testing.assert_close(dense_ggn_block(model, CrossEntropyLoss(), inputs, "2"),
                               full[perm][:, perm])
    assert full[offset : offset + size].shape[0] == size


def test_kfra_recursion_stops_at_the_first_layer():
    """S of the first layer needs nothing below it: the factors' arithmetic does not grow with
    the input width (it did, by ``W₁ᵀ S₁ W₁``, a d_in × d_in product per update)."""
    flops = []
    for width in (5, 500):
        model = _mlp(widths=(width, 4, 6, 3), seed=13)
        collector = KroneckerFactorCollector(model)
        with collector.capture(activations=True):
            output = model(torch.randn(7, width, dtype=DTYPE))
        flops.append(count_flops(lambda c=collector, out=output: c.output_factors(
            curvature="kfra", loss=CrossEntropyLoss(), output=out)).flops)
    assert flops[0] == flops[1] > 0


def test_kfra_rejects_non_mlps_with_a_clear_error():
    cnn = nn.Sequential(nn.Unflatten(1, (1, 4, 4)), nn.Conv2d(1, 2, 3), nn.Flatten(),
                        nn.Linear(8, 3))
    reason = kfra_support(cnn)
    assert reason is not None and "Unflatten" in reason
    assert kfra_support(_mlp()) is None
    with pytest.raises(UnsupportedModelError, match="KFRA supports only"):
        kronecker_factors(cnn, CrossEntropyLoss(), torch.randn(2, 16), torch.tensor([0, 1]),
                          curvature="kfra")


# -- BackPACK ---------------------------------------------------------------------------------
# Conventions: for Linear layers BackPACK stores weight factors [S, A_no_bias] (row-major vec,
# hence the reversed order) and bias factor [S]; its S is ours (mean-reduced loss, 1/N inside
# the loss-Hessian factor), its A is our A without the homogeneous row and column.


def _backpack_factors(model: nn.Sequential, loss_module: nn.Module, inputs, targets,
                      extension) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    backpack = pytest.importorskip("backpack")
    model = backpack.extend(copy.deepcopy(model))
    loss_module = backpack.extend(loss_module)
    value = loss_module(model(inputs), targets)
    with backpack.backpack(extension):
        value.backward()
    savefield = extension.savefield
    result = {}
    for name, module in model.named_children():
        if isinstance(module, nn.Linear):
            s, a = getattr(module.weight, savefield)
            (s_bias,) = getattr(module.bias, savefield)
            torch.testing.assert_close(s_bias, s)
            result[name] = (a, s)
    return result


_BACKPACK_WARNING = "ignore:Full backward hook is firing"


# BackPACK 1.7.1's KFRA for MSELoss builds its summed Hessian in float32 and fails on float64
# models, so KFRA is compared on cross-entropy only.
@pytest.mark.filterwarnings(_BACKPACK_WARNING)
@pytest.mark.parametrize(("loss_name", "curvature"), [
    ("cross_entropy", "kflr"), ("mse", "kflr"), ("cross_entropy", "kfra"),
])
def test_kflr_and_kfra_agree_with_backpack(loss_name, curvature):
    extensions = pytest.importorskip("backpack.extensions")
    loss = LOSSES[loss_name]()
    loss_module = nn.CrossEntropyLoss() if loss_name == "cross_entropy" else nn.MSELoss()
    model = _mlp(nn.ReLU, seed=13)
    generator = torch.Generator().manual_seed(14)
    inputs = torch.randn(7, 5, generator=generator, dtype=DTYPE)
    targets = _targets(loss, 7, 3, generator)
    extension = extensions.KFLR() if curvature == "kflr" else extensions.KFRA()
    reference = _backpack_factors(model, loss_module, inputs, targets, extension)
    ours = kronecker_factors(model, loss, inputs, targets, curvature=curvature)
    assert set(reference) == set(ours)
    for name, (a, s) in reference.items():
        torch.testing.assert_close(ours[name].A[:-1, :-1], a, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ours[name].S, s, rtol=1e-10, atol=1e-12)


@pytest.mark.filterwarnings(_BACKPACK_WARNING)
def test_kfac_agrees_with_backpack_in_expectation():
    """K-FAC is Monte-Carlo: both estimates approach the exact KFLR factor."""
    extensions = pytest.importorskip("backpack.extensions")
    model = _mlp(nn.Tanh, seed=15)
    inputs = torch.randn(8, 5, dtype=DTYPE)
    targets = torch.randint(0, 3, (8,))
    torch.manual_seed(16)
    reference = _backpack_factors(model, nn.CrossEntropyLoss(), inputs, targets,
                                  extensions.KFAC(mc_samples=4000))
    torch.manual_seed(17)
    ours = kronecker_factors(model, CrossEntropyLoss(), inputs, targets, curvature="kfac",
                             mc_samples=4000)
    exact = kronecker_factors(model, CrossEntropyLoss(), inputs, targets, curvature="kflr")
    for name, (a, s) in reference.items():
        torch.testing.assert_close(ours[name].A[:-1, :-1], a)
        scale = torch.linalg.matrix_norm(exact[name].S)
        assert torch.linalg.matrix_norm(s - exact[name].S) / scale < 0.05
        assert torch.linalg.matrix_norm(ours[name].S - exact[name].S) / scale < 0.05
        assert torch.linalg.matrix_norm(ours[name].S - s) / scale < 0.1


@pytest.mark.filterwarnings(_BACKPACK_WARNING)
def test_conv_input_factor_agrees_with_backpack():
    """Same ``A`` as BackPACK for convolutions (sum over positions, mean over the batch)."""
    backpack = pytest.importorskip("backpack")
    extensions = pytest.importorskip("backpack.extensions")
    torch.manual_seed(18)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(27, 4)).to(DTYPE)
    inputs = torch.randn(3, 2, 5, 5, dtype=DTYPE)
    targets = torch.randint(0, 4, (3,))
    ours = kronecker_factors(model, CrossEntropyLoss(), inputs, targets, curvature="kflr")
    extended = backpack.extend(copy.deepcopy(model))
    value = backpack.extend(nn.CrossEntropyLoss())(extended(inputs), targets)
    with backpack.backpack(extensions.KFLR()):
        value.backward()
    _, a = extended[0].weight.kflr
    torch.testing.assert_close(ours["0"].A[:-1, :-1], a, rtol=1e-10, atol=1e-12)


# -- architectures beyond a plain chain of distinct out-of-place modules ----------------------

def _same_factors(model: nn.Module, reference: nn.Module, curvature: str, inputs, targets):
    """Factors of ``model`` equal those of ``reference`` (same weights, simpler architecture)."""
    loss = CrossEntropyLoss()
    ours = kronecker_factors(model, loss, inputs, targets, curvature=curvature,
                             generator=torch.Generator().manual_seed(3))
    expected = kronecker_factors(reference, loss, inputs, targets, curvature=curvature,
                                 generator=torch.Generator().manual_seed(3))
    assert ours.keys() == expected.keys()
    for name in ours:
        torch.testing.assert_close(ours[name].A, expected[name].A, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ours[name].S, expected[name].S, rtol=1e-10, atol=1e-12)


def _in_place_cnn(activation: type[nn.Module], inplace: bool) -> nn.Sequential:
    torch.manual_seed(11)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), activation(inplace=inplace), nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 2), activation(inplace=inplace), nn.Flatten(), nn.Linear(16, 3),
    ).to(DTYPE)


@pytest.mark.parametrize("activation", [nn.ReLU, nn.LeakyReLU])
@pytest.mark.parametrize("curvature", CURVATURE_TYPES)
def test_in_place_activation_after_linear_gives_the_out_of_place_factors(activation, curvature):
    """``nn.ReLU(inplace=True)`` right after a Linear layer must not overwrite its ``s``."""
    generator = torch.Generator().manual_seed(12)
    torch.manual_seed(12)
    layers = [nn.Linear(5, 6), activation(inplace=True), nn.Linear(6, 4),
              activation(inplace=True), nn.Linear(4, 3)]
    model = nn.Sequential(*layers).to(DTYPE)
    reference = copy.deepcopy(model)
    for module in reference:
        if hasattr(module, "inplace"):
            module.inplace = False
    inputs = torch.randn(9, 5, generator=generator, dtype=DTYPE)
    targets = torch.randint(0, 3, (9,), generator=generator)
    _same_factors(model, reference, curvature, inputs, targets)


@pytest.mark.parametrize("activation", [nn.ReLU, nn.LeakyReLU])
@pytest.mark.parametrize("curvature", ["kflr", "kfac", "empirical"])
def test_in_place_activation_after_conv_gives_the_out_of_place_factors(activation, curvature):
    generator = torch.Generator().manual_seed(13)
    inputs = torch.randn(4, 2, 6, 6, generator=generator, dtype=DTYPE)
    targets = torch.randint(0, 3, (4,), generator=generator)
    _same_factors(_in_place_cnn(activation, True), _in_place_cnn(activation, False), curvature,
                  inputs, targets)


@pytest.mark.parametrize("curvature", CURVATURE_TYPES)
def test_one_activation_module_used_twice(curvature):
    """A shared activation module is recorded once per call (KFRA keyed inputs by module)."""
    torch.manual_seed(14)
    generator = torch.Generator().manual_seed(14)
    shared = nn.Tanh()
    model = nn.Sequential(nn.Linear(5, 6), shared, nn.Linear(6, 4), shared,
                          nn.Linear(4, 3)).to(DTYPE)
    reference = nn.Sequential(*[nn.Tanh() if m is shared else m for m in model])
    inputs = torch.randn(9, 5, generator=generator, dtype=DTYPE)
    targets = torch.randint(0, 3, (9,), generator=generator)
    _same_factors(model, reference, curvature, inputs, targets)


class _CustomForward(nn.Module):
    """Not an ``nn.Sequential``: a hand-written forward with a skip over the activation."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(5, 4)
        self.second = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.tanh(self.first(x)))


@pytest.mark.parametrize("curvature", ["kflr", "kfac", "empirical"])
def test_model_with_a_custom_forward(curvature):
    torch.manual_seed(15)
    generator = torch.Generator().manual_seed(15)
    model = _CustomForward().to(DTYPE)
    reference = nn.Sequential(model.first, nn.Tanh(), model.second)
    inputs = torch.randn(9, 5, generator=generator, dtype=DTYPE)
    targets = torch.randint(0, 3, (9,), generator=generator)
    ours = kronecker_factors(model, CrossEntropyLoss(), inputs, targets, curvature=curvature,
                             generator=torch.Generator().manual_seed(3))
    expected = kronecker_factors(reference, CrossEntropyLoss(), inputs, targets,
                                 curvature=curvature, generator=torch.Generator().manual_seed(3))
    for ours_name, expected_name in (("first", "0"), ("second", "2")):
        torch.testing.assert_close(ours[ours_name].S, expected[expected_name].S)
        torch.testing.assert_close(ours[ours_name].A, expected[expected_name].A)


def test_custom_forward_and_single_example_kflr_is_the_dense_block():
    """One example through a Linear layer: ``A ⊗ S`` is the exact GGN block (dense reference)."""
    torch.manual_seed(16)
    generator = torch.Generator().manual_seed(16)
    model = _CustomForward().to(DTYPE)
    inputs = torch.randn(1, 5, generator=generator, dtype=DTYPE)
    targets = torch.randint(0, 3, (1,), generator=generator)
    factors = kronecker_factors(model, CrossEntropyLoss(), inputs, targets, curvature="kflr")
    for name in ("first", "second"):
        exact = dense_ggn_block(model, CrossEntropyLoss(), inputs, name)
        torch.testing.assert_close(factors[name].kron(), exact, rtol=1e-9, atol=1e-12)


def test_kfra_refuses_a_sequential_with_its_own_forward():
    class Reordered(nn.Sequential):
        def forward(self, x):  # runs the last Linear first: not the chain of its children
            return self[0](torch.tanh(self[2](x)))

    model = Reordered(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3))
    assert kfra_support(model) is not None
    with pytest.raises(UnsupportedModelError, match="KFRA"):
        kronecker_factors(model, CrossEntropyLoss(), torch.randn(2, 3), torch.tensor([0, 1]),
                          curvature="kfra")


@pytest.mark.parametrize("curvature", CURVATURE_TYPES)
def test_a_layer_used_twice_is_refused_in_one_line(curvature):
    torch.manual_seed(17)
    shared = nn.Linear(4, 4)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), shared, nn.Tanh(), shared)
    with pytest.raises(UnsupportedModelError) as error:
        kronecker_factors(model, CrossEntropyLoss(), torch.randn(2, 3), torch.tensor([0, 1]),
                          curvature=curvature)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("channels", "size"), [(2, 5), (8, 12), (24, 9)])
def test_conv_input_factor_equals_explicit_patches(channels, size):
    torch.manual_seed(12)
    conv = nn.Conv2d(channels, 3, 3, padding=1).to(DTYPE)
    images = torch.randn(4, channels, size, size, dtype=DTYPE)
    patches = _explicit_patches(images, conv)
    homogeneous = torch.cat([patches, torch.ones(*patches.shape[:2], 1, dtype=DTYPE)], dim=2)
    expected = torch.einsum("nti,ntj->ij", homogeneous, homogeneous) / 4
    torch.testing.assert_close(input_factor(conv, images), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("conv", [
    nn.Conv2d(2, 3, 3, dilation=2, padding=2), nn.Conv2d(2, 3, 4, padding="same", dilation=(2, 1)),
    nn.Conv2d(2, 3, 3, stride=(2, 1), padding=1, padding_mode="circular"),
    nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect", bias=False),
    nn.Conv1d(2, 3, 3, stride=2, padding=1), nn.Conv1d(2, 3, 4, padding="same", dilation=2),
    nn.Conv1d(2, 3, 3, padding=2, padding_mode="replicate", bias=False),
], ids=lambda conv: repr(conv))
def test_conv_input_factor_equals_unfolded_patches(conv):
    """Dilation, 1-D, 'same' and non-zero padding modes, no bias: ``A`` from the strided
    windows equals ``(1/N) Σ ã ãᵀ`` over ``F.unfold``'s patches (:func:`layer_inputs`)."""
    torch.manual_seed(13)
    conv = conv.to(DTYPE)
    x = torch.randn(*((5, 2, 11) if isinstance(conv, nn.Conv1d) else (5, 2, 7, 8)), dtype=DTYPE)
    patches = layer_inputs(conv, x)
    if conv.bias is not None:
        patches = torch.cat([patches, torch.ones(*patches.shape[:2], 1, dtype=DTYPE)], dim=2)
    expected = torch.einsum("nti,ntj->ij", patches, patches) / 5
    torch.testing.assert_close(input_factor(conv, x), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("d", [5, 191, 192, 300, 785])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_gram_is_the_product_and_symmetric(d, layout):
    """From 192 rows on, ``gram`` multiplies out column blocks of the lower triangle and
    copies the upper one; either way both triangles are ``scale·C Cᵀ`` (a triangle left
    unwritten fails), symmetric to rounding: BLAS's product is not bit-symmetric on every
    CPU."""
    generator = torch.Generator().manual_seed(d)
    columns = (torch.randn(d, 300, generator=generator, dtype=DTYPE) if layout == "contiguous"
               else torch.randn(300, d, generator=generator, dtype=DTYPE).T)
    result = gram(columns, scale=0.25)
    torch.testing.assert_close(result, 0.25 * columns @ columns.T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(result, result.T, rtol=1e-14, atol=1e-12)


@pytest.mark.parametrize("rows", [280, 400])  # fewer rows than inputs appends a ones column
def test_linear_factors_of_a_wide_layer_equal_explicit_sums(rows):
    """Factors wide enough for ``gram``'s blocks: ``A`` with its homogeneous coordinate
    and ``S`` from backpropagated rows equal explicit float64 sums over examples."""
    generator = torch.Generator().manual_seed(rows)
    layer = nn.Linear(300, 210).to(DTYPE)
    x = torch.randn(rows, 300, generator=generator, dtype=DTYPE)
    homogeneous = torch.cat([x, torch.ones(rows, 1, dtype=DTYPE)], dim=1)
    expected = sum(torch.outer(a, a) for a in homogeneous) / rows
    torch.testing.assert_close(input_factor(layer, x), expected, rtol=1e-10, atol=1e-12)
    b = torch.randn(rows, 210, generator=generator, dtype=DTYPE)
    torch.testing.assert_close(output_factor(layer, [b]), sum(torch.outer(v, v) for v in b),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("layer", [
    nn.Linear(300, 4), nn.Linear(300, 4, bias=False), nn.Linear(5, 4),
    nn.Conv2d(24, 3, 3, padding=1), nn.Conv2d(2, 3, 3, bias=False),
], ids=repr)
@pytest.mark.parametrize("rows", [8, 400])  # a Linear on fewer rows than inputs appends ones
def test_a_running_input_factor_is_updated_in_place(layer, rows):
    """``running``: ``decay·old + (1 − decay)·A`` written over ``old`` (blocks, the appended
    ones column, the homogeneous row and corner included)."""
    generator = torch.Generator().manual_seed(rows)
    layer = layer.to(DTYPE)
    linear = isinstance(layer, nn.Linear)
    # images of two sizes: the homogeneous corner (positions per example) changes
    old_x, x = (torch.randn(*((rows, layer.in_features) if linear
                              else (rows // 8, layer.in_channels, side, side)),
                            generator=generator, dtype=DTYPE) for side in (7, 9))
    old = input_factor(layer, old_x)
    expected = 0.9 * old + 0.1 * input_factor(layer, x)
    running = old.clone()
    result = input_factor(layer, x, running=running, decay=0.9)
    assert result is running
    torch.testing.assert_close(result, expected, rtol=1e-12, atol=1e-12)


# -- the collector's own backward (reverse rules per layer) -------------------------------------

def _chain_models() -> dict[str, nn.Sequential]:
    """Chains the collector backpropagates through itself, inputs ``(N, 128)``."""
    torch.manual_seed(21)
    models = {
        "mlp": nn.Sequential(nn.Linear(128, 5), nn.ReLU(), nn.Linear(5, 4), nn.Sigmoid(),
                             nn.Identity(), nn.Linear(4, 3)),
        "mlp, leaky and tanh": nn.Sequential(nn.Linear(128, 5), nn.LeakyReLU(0.1),
                                             nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)),
        "cnn, activations before pooling": nn.Sequential(
            nn.Unflatten(1, (2, 8, 8)), nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Tanh(),
            nn.MaxPool2d(2, stride=1), nn.Flatten(), nn.Linear(4, 3)),
        "cnn, overlapping padded pooling": nn.Sequential(
            nn.Unflatten(1, (2, 8, 8)), nn.Conv2d(2, 3, 3), nn.Sigmoid(),
            nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(3, 4, 2, dilation=2), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 3)),
        "cnn, pooling after a convolution": nn.Sequential(
            nn.Unflatten(1, (2, 8, 8)), nn.Conv2d(2, 3, 3, padding=1),
            nn.MaxPool2d(3, stride=2, ceil_mode=True), nn.LeakyReLU(0.2), nn.Conv2d(3, 4, 3),
            nn.Flatten(), nn.Linear(16, 3)),
        "conv1d": nn.Sequential(nn.Unflatten(1, (2, 64)), nn.Conv1d(2, 3, 3, padding=1),
                                nn.ReLU(), nn.Conv1d(3, 2, 4, stride=4), nn.Flatten(),
                                nn.Linear(32, 3)),
    }
    return {name: model.to(DTYPE) for name, model in models.items()}


def _factors_by_autograd(monkeypatch, *args, **kwargs) -> dict:
    """``kronecker_factors`` with the collector's own backward switched off (autograd)."""
    with monkeypatch.context() as patch:
        patch.setattr(KroneckerFactorCollector, "_reverse_pass",
                      lambda self, vectors, output: None)
        return kronecker_factors(*args, **kwargs)


def _count_own_backward(monkeypatch) -> list[int]:
    """A list that gains an entry each time the collector backpropagates by its own rules."""
    calls: list[int] = []
    original = KroneckerFactorCollector._reverse_pass

    def counted(self, vectors, output):
        result = original(self, vectors, output=output)
        if result is not None:
            calls.append(vectors.shape[0])
        return result
    monkeypatch.setattr(KroneckerFactorCollector, "_reverse_pass", counted)
    return calls


@pytest.mark.parametrize("name", list(_chain_models()))
@pytest.mark.parametrize("curvature", ["kflr", "kfac"])
def test_own_backward_gives_autograds_factors(monkeypatch, name, curvature):
    """The layerwise backward (the activation's derivative applied to the pooled gradient,
    Linear chains batched over the vectors) gives the factors of autograd's backward."""
    model = _chain_models()[name]
    generator = torch.Generator().manual_seed(22)
    inputs = torch.randn(6, 128, generator=generator, dtype=DTYPE)
    targets = torch.randint(0, 3, (6,), generator=generator)
    settings = {"curvature": curvature, "mc_samples": 3}
    expected = _factors_by_autograd(monkeypatch, model, CrossEntropyLoss(), inputs, targets,
                                    generator=torch.Generator().manual_seed(3), **settings)
    calls = _count_own_backward(monkeypatch)
    ours = kronecker_factors(model, CrossEntropyLoss(), inputs, targets,
                             generator=torch.Generator().manual_seed(3), **settings)
    # KFLR: one vector per column of the Hessian factor, D − 1 = 2 for three classes
    assert calls == [2 if curvature == "kflr" else 3]
    for layer in ours:
        torch.testing.assert_close(ours[layer].S, expected[layer].S, rtol=1e-12, atol=1e-15)


def _dense_output_factor(model: nn.Sequential, index: int, loss: CurvatureLoss,
                         inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """KFLR's ``S`` of layer ``model[index]`` from per-example Jacobians of the rest of the
    network with respect to that layer's output, ``(1/T) Σ_n Σ_t J_tᵀ H_n J_t``."""
    with torch.no_grad():
        pre = model[: index + 1](inputs)
        output = model(inputs)
    hessian = dense_output_hessian(loss, output, targets)
    tail = model[index + 1:]
    d = output.shape[1]
    channels = pre.shape[1]
    positions = pre[0, 0].numel()
    s = torch.zeros(channels, channels, dtype=DTYPE)
    for n in range(inputs.shape[0]):
        jac = jacrev(lambda z: tail(z.unsqueeze(0))[0])(pre[n]).reshape(d, channels, positions)
        block = hessian[n * d:(n + 1) * d, n * d:(n + 1) * d]
        s += torch.einsum("dct,de,ebt->cb", jac, block, jac) / positions
    return s


@pytest.mark.parametrize("name", [name for name in _chain_models() if "cnn" in name])
def test_own_backward_through_pooling_equals_dense_jacobians(monkeypatch, name):
    """KFLR's S of every layer of a pooling CNN against per-example Jacobians (jacrev)."""
    model = _chain_models()[name]
    generator = torch.Generator().manual_seed(23)
    inputs = torch.randn(3, 128, generator=generator, dtype=DTYPE)
    targets = torch.randint(0, 3, (3,), generator=generator)
    calls = _count_own_backward(monkeypatch)
    factors = kronecker_factors(model, CrossEntropyLoss(), inputs, targets, curvature="kflr")
    assert calls == [2]  # the Hessian factor's D − 1 columns
    for layer, value in factors.items():
        expected = _dense_output_factor(model, int(layer), CrossEntropyLoss(), inputs, targets)
        torch.testing.assert_close(value.S, expected, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("model", [
    nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True), nn.Linear(4, 3)),
    nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 3)),
    nn.Sequential(nn.Unflatten(1, (1, 2, 2)), nn.Conv2d(1, 2, 3, padding="same"), nn.Flatten(),
                  nn.Linear(8, 3)),
    nn.Sequential(nn.Linear(4, 4), nn.ELU(), nn.Linear(4, 3)),
], ids=["in place", "dropout", "string padding", "no rule"])
def test_models_without_reverse_rules_are_backpropagated_by_autograd(monkeypatch, model):
    model = model.to(DTYPE).eval()
    calls = _count_own_backward(monkeypatch)
    inputs = torch.randn(5, 4, dtype=DTYPE)
    targets = torch.randint(0, 3, (5,))
    ours = kronecker_factors(model, CrossEntropyLoss(), inputs, targets, curvature="kflr")
    assert calls == []
    reference = copy.deepcopy(model)  # jacrev's input may not be changed in place
    for module in reference:
        if hasattr(module, "inplace"):
            module.inplace = False
    for layer, value in ours.items():
        expected = _dense_output_factor(reference, int(layer), CrossEntropyLoss(), inputs,
                                        targets)
        torch.testing.assert_close(value.S, expected, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name", ["mlp", "cnn, activations before pooling"])
def test_own_backward_for_some_layers_only(monkeypatch, name):
    """Factors for a subset of the layers (an optimizer whose first layer is frozen): the
    backward stops at the first layer asked for, through the frozen ones between."""
    model = _chain_models()[name]
    layers = [m for m in model if isinstance(m, (nn.Linear, nn.Conv2d))]
    wanted = [layers[1], layers[2]] if name == "mlp" else [layers[1]]
    inputs = torch.randn(6, 128, dtype=DTYPE)
    output_vectors = torch.randn(2, 6, 3, dtype=DTYPE)
    results = []
    for own in (True, False):
        collector = KroneckerFactorCollector(model, layers=wanted)
        with collector.capture():
            output = model(inputs)
        if not own:
            collector._reverse_chain = None
        per_layer = collector._reverse_pass(output_vectors, output=output)
        assert (per_layer is not None) == own
        if per_layer is None:
            per_layer = [[torch.autograd.grad(output, collector.pre_activations()[i], v,
                                              retain_graph=True)[0] for v in output_vectors]
                         for i in range(len(wanted))]
        results.append([torch.cat([g.reshape(-1) for g in grads]) for grads in per_layer])
    for ours, expected in zip(*results, strict=True):
        torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-15)


def test_an_output_the_chain_did_not_return_is_backpropagated_by_autograd(monkeypatch):
    """Vectors of a tensor computed after the model (here ``2 f``) are not the chain's: the
    collector's own rules would drop the factor 2, so autograd takes them."""
    model = _chain_models()["cnn, activations before pooling"]
    inputs = torch.randn(4, 128, dtype=DTYPE)
    calls = _count_own_backward(monkeypatch)
    collector = KroneckerFactorCollector(model)
    with collector.capture():
        output = model(inputs)
    doubled = 2 * output
    factors = collector.output_factors(curvature="kflr", loss=CrossEntropyLoss(), output=doubled)
    assert calls == []
    own = collector.output_factors(curvature="kflr", loss=CrossEntropyLoss(), output=output)
    assert calls == [2]
    expected = _factors_by_autograd(monkeypatch, nn.Sequential(*model, _Scale(2.0)),
                                    CrossEntropyLoss(), inputs, torch.zeros(4, dtype=torch.long),
                                    curvature="kflr")
    for factor, layer in zip(factors, expected, strict=True):
        torch.testing.assert_close(factor, expected[layer].S, rtol=1e-10, atol=1e-13)
    assert not torch.allclose(factors[0], own[0])


class _Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.factor * x
