"""Shampoo (optimizers/shampoo.py) against pytorch-optimizer's ScalableShampoo in float64.

Where the algorithms coincide — the authors' recipe with the AdaGrad or SGD graft, moving-average
momentum, Nesterov, no block partitioning, exact (SVD) inverse roots, no relative ridge — the
parameters after several steps agree to 1e-10 relative. They differ (not tested against the
peer): our Adam graft bias-corrects its second moment (the peer's RMSProp graft does not), our
``relative_ridge`` (the authors' ridge relative to λ_max; the peer adds it only on its inexact
Newton-iteration path), and our roots are also computed at the first preconditioned step.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from curvebench.optimizers.shampoo import Shampoo, inverse_root
from tests.layerwise_reference import DTYPE, classification_batches, tiny_mlp

pytorch_optimizer = pytest.importorskip("pytorch_optimizer")


def _model() -> nn.Sequential:
    return tiny_mlp(6, 5, 3)


def _batches(steps: int):
    return classification_batches(steps, n=16, d_in=6, classes=3)


def _train(model, optimizer, batches):
    for inputs, targets in batches:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("graft,peer_graft", [("adagrad", 2), ("sgd", 1)])
def test_matches_pytorch_optimizer_scalable_shampoo(graft, peer_graft):
    settings = dict(lr=0.05, beta1=0.9, beta2=0.95, weight_decay=1e-3)
    ours_model, peer_model = _model(), _model()
    initial = torch.cat([p.detach().flatten() for p in ours_model.parameters()])
    ours = Shampoo(ours_model.parameters(), graft=graft, matrix_eps=1e-3, relative_ridge=0.0,
                   diagonal_eps=1e-10, nesterov=True, start_preconditioning_step=2,
                   inverse_update_period=2, **settings)
    peer = pytorch_optimizer.ScalableShampoo(
        peer_model.parameters(), lr=settings["lr"], betas=(settings["beta1"], settings["beta2"]),
        weight_decay=settings["weight_decay"], moving_average_for_momentum=True,
        start_preconditioning_step=2, preconditioning_compute_steps=2, block_size=10**6,
        shape_interpretation=False, graft_type=peer_graft, nesterov=True, diagonal_eps=1e-10,
        matrix_eps=1e-3, use_svd=True)
    batches = _batches(7)
    a = _train(ours_model, ours, batches)
    b = _train(peer_model, peer, batches)
    assert torch.linalg.norm(a - initial) > 1e-2
    assert torch.linalg.norm(a - b) <= 1e-10 * torch.linalg.norm(a - initial)


def test_preconditioned_direction_is_the_kronecker_inverse_root():
    """One preconditioned step, dense: ``vec(D) ∝ (R ⊗ L)^{-1/4} vec(G)`` (column-major)."""
    model = nn.Linear(4, 3, bias=False).to(DTYPE)
    torch.manual_seed(2)
    grad = torch.randn(3, 4, dtype=DTYPE)
    start = copy.deepcopy(model.weight.detach())
    eps = 0.1
    optimizer = Shampoo(model.parameters(), lr=1.0, beta1=0.0, beta2=1.0, matrix_eps=eps,
                        relative_ridge=0.0, graft="none", nesterov=False,
                        start_preconditioning_step=1, inverse_update_period=1)
    model.weight.grad = grad.clone()
    optimizer.step()
    left = grad @ grad.T + eps * torch.eye(3, dtype=DTYPE)
    right = grad.T @ grad + eps * torch.eye(4, dtype=DTYPE)
    values, vectors = torch.linalg.eigh(torch.kron(right, left))
    dense_root = vectors @ torch.diag(values ** -0.25) @ vectors.T
    expected = (dense_root @ grad.T.reshape(-1)).reshape(4, 3).T
    torch.testing.assert_close(start - model.weight.detach(), expected, rtol=1e-10, atol=0)


def test_inverse_root_with_ridge():
    matrix = torch.diag(torch.tensor([4.0, 0.0], dtype=DTYPE))
    root = inverse_root(matrix, power=2, relative_ridge=0.25)
    torch.testing.assert_close(root, torch.diag(torch.tensor([5.0, 1.0], dtype=DTYPE) ** -0.5))


@pytest.mark.parametrize("bad", [{"lr": 0.0}, {"graft": "rmsprop"}, {"beta2": 0.0},
                                 {"inverse_update_period": 0}])
def test_bad_options_raise(bad):
    with pytest.raises(ValueError):
        Shampoo(_model().parameters(), **bad)
