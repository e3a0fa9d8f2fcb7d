"""Eva (optimizers/eva.py) against a dense float64 derivation of its own formula.

The reference builds the layer's curvature ``(a ⊗ g)(a ⊗ g)ᵀ + γI`` as a dense matrix from an
explicit forward pass and solves with it; over several steps with the vectors' moving average,
KL clipping and momentum, the parameters must agree to 1e-10.
"""

from __future__ import annotations

import math

import pytest
import torch

from curvebench.losses import CrossEntropyLoss
from curvebench.optimizers.eva import Eva
from tests.layerwise_reference import (
    DTYPE,
    classification_batches,
    flat_parameters,
    heavy_ball_layer_step,
    layer_tensors,
    tiny_mlp,
    unvec,
    vec,
)


@pytest.mark.parametrize("kl_clip,momentum", [(0.0, 0.0), (1e-3, 0.9)])
def test_matches_dense_rank_one_kronecker_solve(kl_clip, momentum):
    lr, damping, decay = 0.3, 0.05, 0.4
    model, reference = tiny_mlp(4, 3, 2), tiny_mlp(4, 3, 2)
    optimizer = Eva(model, loss=CrossEntropyLoss(), lr=lr, damping=damping, momentum=momentum,
                    kl_clip=kl_clip, stat_decay=decay)
    averages, buffers, clipped = {}, {}, False
    for inputs, targets in classification_batches(4, n=8, d_in=4, classes=2):
        optimizer.step(inputs=inputs, targets=targets)

        directions, inner = [], 0.0
        for i, (a_tilde, b, v) in enumerate(layer_tensors(reference, inputs, targets)):
            a, g = a_tilde.mean(0), b.mean(0)
            if i in averages:
                a = decay * averages[i][0] + (1 - decay) * a
                g = decay * averages[i][1] + (1 - decay) * g
            averages[i] = (a, g)
            k = torch.kron(a, g)
            curvature = torch.outer(k, k) + damping * torch.eye(k.numel(), dtype=DTYPE)
            u = unvec(torch.linalg.solve(curvature, vec(v)), v.shape[0])
            directions.append(u)
            inner += float((u * v).sum())
        nu = min(1.0, math.sqrt(kl_clip / (lr**2 * inner))) if kl_clip else 1.0
        clipped |= nu < 1
        for i, u in enumerate(directions):
            heavy_ball_layer_step(reference, buffers, i, nu * u, lr=lr, momentum=momentum)
        torch.testing.assert_close(flat_parameters(model), flat_parameters(reference),
                                   rtol=1e-10, atol=1e-12)
    assert clipped == (kl_clip > 0)


@pytest.mark.parametrize("bad", [{"lr": 0.0}, {"damping": 0.0}, {"stat_decay": 1.0},
                                 {"kl_clip": -1.0}])
def test_bad_options_raise(bad):
    with pytest.raises(ValueError):
        Eva(tiny_mlp(4, 3, 2), loss=CrossEntropyLoss(), **bad)
