"""M-FAC (optimizers/mfac.py) against a dense float64 solve with the same m-gradient Fisher.

The reference builds ``F = λI + (1/m) Σ g gᵀ`` over the last ``m`` gradients as a ``d × d``
matrix and solves with it; the window wraps around (more steps than ``m``), with momentum and
weight decay.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from curvebench.optimizers.mfac import MFAC
from tests.layerwise_reference import DTYPE, classification_batches, tiny_mlp


def _model() -> nn.Sequential:
    return tiny_mlp(4, 3, 2)


def _batches(steps: int):
    return classification_batches(steps, n=8, d_in=4, classes=2)


def _gradient(model, inputs, targets):
    model.zero_grad()
    nn.functional.cross_entropy(model(inputs), targets).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.8, 0.01)])
def test_matches_dense_solve_with_the_same_window(momentum, weight_decay):
    lr, damping, m = 0.1, 1e-2, 3
    ours_model, dense_model = _model(), _model()
    optimizer = MFAC(ours_model.parameters(), lr=lr, momentum=momentum,
                     weight_decay=weight_decay, ngrads=m, damping=damping)
    window, velocity = [], None
    for inputs, targets in _batches(7):
        _gradient(ours_model, inputs, targets)
        optimizer.step()

        theta = torch.cat([p.detach().flatten() for p in dense_model.parameters()])
        g = _gradient(dense_model, inputs, targets) + weight_decay * theta
        window = (window + [g])[-m:]
        fisher = damping * torch.eye(g.numel(), dtype=DTYPE)
        for row in window:
            fisher += torch.outer(row, row) / m
        u = torch.linalg.solve(fisher, g)
        velocity = u if momentum == 0 else (
            (1 - momentum) * u if velocity is None else momentum * velocity + (1 - momentum) * u)
        theta = theta - lr * velocity
        torch.nn.utils.vector_to_parameters(theta, dense_model.parameters())

        ours = torch.cat([p.detach().flatten() for p in ours_model.parameters()])
        torch.testing.assert_close(ours, theta, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bad", [{"lr": 0.0}, {"damping": 0.0}, {"ngrads": 0},
                                 {"momentum": 1.0}])
def test_bad_options_raise(bad):
    with pytest.raises(ValueError):
        MFAC(_model().parameters(), **bad)
