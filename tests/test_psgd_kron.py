"""PSGD-Kron (optimizers/psgd_kron.py) against the author's ``psgd_torch.Kron`` in float64.

Same model, batches and probes (the peer's ``torch.randn_like`` is fed from a generator seeded
like ours): the parameters after several steps agree to 1e-10 relative, with triangular and
diagonal factors (the bias of 7 > 10·1? no: sizes ≤ 10 are triangular, larger vectors
diagonal) and momentum. The peer's random rebalancing of the factor scales is an exact
invariance of the preconditioner and of its fit, so it changes nothing beyond rounding.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from curvebench.losses import CrossEntropyLoss
from curvebench.optimizers.psgd_kron import PSGDKron, spectral_norm_lower_bound
from tests.layerwise_reference import DTYPE, classification_batches, tiny_mlp

psgd = pytest.importorskip("psgd_torch.psgd")


def _model() -> nn.Sequential:
    return tiny_mlp(6, 12, 3)


def _batches(steps: int):
    return classification_batches(steps, n=16, d_in=6, classes=3)


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("init_scale,momentum", [(1.0, 0.0), (0.0, 0.9)])
def test_matches_psgd_torch_kron(monkeypatch, init_scale, momentum):
    ours_model, peer_model = _model(), _model()
    initial = _flat(ours_model)
    loss = CrossEntropyLoss()
    ours = PSGDKron(ours_model, loss=loss, lr=0.1, lr_preconditioner=0.2, momentum=momentum,
                    init_scale=init_scale)
    batches = _batches(6)
    for inputs, targets in batches:
        ours.step(inputs=inputs, targets=targets)

    probes = torch.Generator().manual_seed(ours.generator.initial_seed())
    monkeypatch.setattr(torch, "randn_like", lambda t: torch.randn(
        t.shape, generator=probes, dtype=t.dtype))
    peer = psgd.Kron(list(peer_model.parameters()), preconditioner_max_size=4096,
                     preconditioner_max_skew=10.0,
                     preconditioner_init_scale=init_scale or None, lr_params=0.1,
                     lr_preconditioner=0.2, momentum=momentum, step_normalizer="2nd",
                     exact_hessian_vector_product=True, preconditioner_type="Newton")
    for inputs, targets in batches:
        peer.step(lambda inputs=inputs, targets=targets: loss(peer_model(inputs), targets))
    a, b = _flat(ours_model), _flat(peer_model)
    assert torch.linalg.norm(a - initial) > 1e-2
    assert torch.linalg.norm(a - b) <= 1e-10 * torch.linalg.norm(a - initial)
    assert ours.state[ours_model[0].weight]["Q0"].dim() == 2      # triangular factors
    assert ours.state[ours_model[0].bias]["Q0"].dim() == 1        # 12 > 10·1: diagonal
    assert ours.state[ours_model[2].bias]["Q0"].dim() == 2        # 3 ≤ 10: triangular


def test_fit_is_exact_for_a_quadratic_in_one_vector():
    """For a fixed SPD Hessian, repeated fits drive ``P`` towards ``H⁻¹`` (dense check)."""
    torch.manual_seed(3)
    basis = torch.linalg.qr(torch.randn(4, 4, dtype=DTYPE))[0]
    hessian = basis @ torch.diag(torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=DTYPE)) @ basis.T
    model = nn.Linear(4, 1, bias=False).to(DTYPE)
    optimizer = PSGDKron(model, loss=CrossEntropyLoss(), lr_preconditioner=0.3, init_scale=1.0)
    p = model.weight
    for _ in range(600):
        v = torch.randn(p.shape, generator=optimizer.generator, dtype=DTYPE)
        optimizer._fit([p], [v], [v @ hessian])
    q_left, q_right = optimizer.state[p]["Q0"], optimizer.state[p]["Q1"]
    preconditioner = q_left.square() * (q_right.T @ q_right)
    error = torch.linalg.matrix_norm(preconditioner @ hessian - torch.eye(4, dtype=DTYPE))
    assert error < 0.15


def test_spectral_norm_lower_bound():
    torch.manual_seed(4)
    matrix = torch.randn(7, 5, dtype=DTYPE)
    bound = spectral_norm_lower_bound(matrix)
    norm = torch.linalg.matrix_norm(matrix, ord=2)
    assert bound <= norm * (1 + 1e-12) and norm <= 2**0.5 * bound


@pytest.mark.parametrize("bad", [{"lr": 0.0}, {"lr_preconditioner": 1.0}, {"momentum": 1.0},
                                 {"update_probability": 0.0}])
def test_bad_options_raise(bad):
    with pytest.raises(ValueError):
        PSGDKron(_model(), loss=CrossEntropyLoss(), **bad)
