"""EKFAC (optimizers/ekfac.py) against nngeometry's EKFAC in float64.

With the exact Fisher (``curvature="kflr"``; nngeometry's ``FIM`` with ``classif_logits`` sums
over the classes in closed form), the same model and batch, nngeometry's ``PMatEKFAC`` with its
diagonal re-estimated (``update_diag``) and ``solvePVec(regul=λ)`` gives the same preconditioned
direction to 1e-10 on an MLP and on a CNN (convolution, max-pool, Linear). The factors are
those of :func:`curvebench.kronecker.kronecker_factors`. Our moving averages and update periods
have no counterpart in nngeometry (it builds the matrix once from a loader).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from curvebench.kronecker import kronecker_factors
from curvebench.losses import CrossEntropyLoss
from curvebench.optimizers.ekfac import EKFAC
from tests.layerwise_reference import DTYPE, classification_batches, flat_parameters, tiny_mlp

nngeometry = pytest.importorskip("nngeometry")
from nngeometry.metrics import FIM  # noqa: E402
from nngeometry.object import PMatEKFAC, PVector  # noqa: E402


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(),
                         nn.Linear(4, 3)).to(DTYPE)


def _cases():
    mlp_x, mlp_y = classification_batches(1, n=16, d_in=5, classes=3)[0]
    generator = torch.Generator().manual_seed(2)
    cnn_x = torch.randn(12, 1, 6, 6, generator=generator, dtype=DTYPE)
    cnn_y = torch.randint(0, 3, (12,), generator=generator)
    return {"mlp": (lambda: tiny_mlp(5, 4, 3), mlp_x, mlp_y), "cnn": (_cnn, cnn_x, cnn_y)}


@pytest.mark.parametrize("case", ["mlp", "cnn"])
def test_direction_matches_nngeometry_ekfac(case):
    build, inputs, targets = _cases()[case]
    damping = 0.1
    ours_model, peer_model = build(), build()
    before = flat_parameters(ours_model)
    optimizer = EKFAC(ours_model, loss=CrossEntropyLoss(), curvature="kflr", lr=1.0,
                      damping=damping, kl_clip=0.0)
    optimizer.step(inputs=inputs, targets=targets)
    ours = before - flat_parameters(ours_model)

    previous = torch.get_default_dtype()
    torch.set_default_dtype(DTYPE)  # nngeometry builds some constants in the default dtype
    try:
        peer = _nngeometry_direction(peer_model, inputs, targets, damping)
    finally:
        torch.set_default_dtype(previous)
    assert torch.linalg.norm(ours - peer) <= 1e-10 * torch.linalg.norm(peer)


def _nngeometry_direction(peer_model, inputs, targets, damping):
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, targets),
                                         batch_size=len(inputs))
    fisher = FIM(model=peer_model, loader=loader, representation=PMatEKFAC,
                 variant="classif_logits")
    fisher.update_diag(loader)
    peer_model.zero_grad()
    nn.functional.cross_entropy(peer_model(inputs), targets).backward()
    return fisher.solvePVec(PVector.from_model_grad(peer_model), regul=damping).to_torch()


def test_factors_are_the_kronecker_cores():
    _, inputs, targets = _cases()["cnn"]
    model = _cnn()
    optimizer = EKFAC(model, loss=CrossEntropyLoss(), curvature="kflr")
    optimizer.step(inputs=inputs, targets=targets)
    reference = kronecker_factors(_cnn(), CrossEntropyLoss(), inputs, targets, curvature="kflr")
    for (name, factors), layer in zip(reference.items(), optimizer.layers, strict=True):
        state = optimizer.state[layer.weight]
        torch.testing.assert_close(state["A"], factors.A, rtol=1e-12, atol=1e-14, msg=name)
        torch.testing.assert_close(state["S"], factors.S, rtol=1e-12, atol=1e-14, msg=name)


def test_factors_are_moving_averages_of_the_kronecker_cores():
    """After two steps: ``A = ε A₁ + (1 − ε) A₂`` (and ``S``), ``A₂`` at the parameters of
    the second step, on a MLP wide enough for blocked factor products."""
    generator = torch.Generator().manual_seed(4)
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(200, 260), nn.Tanh(), nn.Linear(260, 3)).to(DTYPE)
    batches = [(torch.randn(300, 200, generator=generator, dtype=DTYPE),
                torch.randint(0, 3, (300,), generator=generator)) for _ in range(2)]
    optimizer = EKFAC(model, loss=CrossEntropyLoss(), curvature="kflr", ema_decay=0.7)
    cores = []
    for inputs, targets in batches:
        cores.append(kronecker_factors(copy.deepcopy(model), CrossEntropyLoss(), inputs,
                                       targets, curvature="kflr"))
        optimizer.step(inputs=inputs, targets=targets)
    for name, layer in zip(cores[0], optimizer.layers, strict=True):
        state = optimizer.state[layer.weight]
        for key in ("A", "S"):
            expected = (0.7 * getattr(cores[0][name], key)
                        + 0.3 * getattr(cores[1][name], key))
            torch.testing.assert_close(state[key], expected, rtol=1e-11, atol=1e-13,
                                       msg=f"{name} {key}")


def test_scaling_is_a_moving_average_in_a_fixed_basis():
    """Two runs agree up to step 1 (same basis, same first scaling); then one averages."""
    batches = classification_batches(4, n=16, d_in=5, classes=3)
    scales = {}
    for decay in (0.5, 0.0):
        model = tiny_mlp(5, 4, 3)
        optimizer = EKFAC(model, loss=CrossEntropyLoss(), curvature="kflr", ema_decay=decay,
                          eigen_update_period=3)
        scales[decay] = []
        for inputs, targets in batches:
            optimizer.step(inputs=inputs, targets=targets)
            scales[decay].append(optimizer.state[model[0].weight]["scale"].clone())
        assert optimizer.counters["inverse_updates"] == 2
    torch.testing.assert_close(scales[0.5][0], scales[0.0][0])
    torch.testing.assert_close(scales[0.5][1], 0.5 * scales[0.5][0] + 0.5 * scales[0.0][1])


@pytest.mark.parametrize("bad", [{"lr": 0.0}, {"damping": 0.0}, {"curvature": "kfra"},
                                 {"eigen_update_period": 0}, {"mc_samples": 0}])
def test_bad_options_raise(bad):
    with pytest.raises(ValueError):
        EKFAC(tiny_mlp(4, 3, 2), loss=CrossEntropyLoss(), **bad)
