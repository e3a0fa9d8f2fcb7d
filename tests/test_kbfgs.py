"""K-BFGS (optimizers/kbfgs.py) against a dense float64 derivation of its own formula.

The reference runs the algorithm from scratch on an explicit copy of the model: the damped
inverse of ``A`` then Hessian-action BFGS updates, the step ``H_G V H_A`` with momentum, and a
second pass on the same batch for the damped ``(s, y)`` pair of the output side, with the BFGS
update written as the product ``(I − ρ s yᵀ) H (I − ρ y sᵀ) + ρ s sᵀ``. The full-matrix variant
must agree to 1e-10, and the L-BFGS variant with room for every pair must agree with it.
"""

from __future__ import annotations

import math

import pytest
import torch

from curvebench.losses import CrossEntropyLoss
from curvebench.optimizers.kbfgs import KBFGS
from tests.layerwise_reference import (
    DTYPE,
    classification_batches,
    flat_parameters,
    heavy_ball_layer_step,
    layer_tensors,
    tiny_mlp,
)

SETTINGS = dict(lr=0.3, damping=0.09, momentum=0.5, stat_decay=0.6, mu1=0.9)  # Powell acts


def _bfgs(h, s, y):
    rho = 1 / (s @ y)
    eye = torch.eye(len(s), dtype=DTYPE)
    return (eye - rho * torch.outer(s, y)) @ h @ (eye - rho * torch.outer(y, s)) \
        + rho * torch.outer(s, s)


def _means(reference, inputs, targets):
    result = []
    for i, (a_tilde, b, _) in enumerate(layer_tensors(reference, inputs, targets)):
        layer = reference[2 * i]
        weights = torch.cat([layer.weight, layer.bias.unsqueeze(1)], 1).detach()
        result.append(((a_tilde @ weights.T).mean(0), len(b) * b.mean(0)))
    return result


def _dense_run(batches):
    lr, damping, momentum, decay, mu1 = (SETTINGS[k] for k in
                                         ("lr", "damping", "momentum", "stat_decay", "mu1"))
    root = math.sqrt(damping)
    reference = tiny_mlp(4, 3, 2)
    factors, h_a, h_g, buffers, trajectory = {}, {}, {}, {}, []
    for inputs, targets in batches:
        before = _means(reference, inputs, targets)
        for i, (a_tilde, _, v) in enumerate(layer_tensors(reference, inputs, targets)):
            new = a_tilde.T @ a_tilde / len(a_tilde)
            if i not in factors:
                factors[i] = new
                h_a[i] = torch.linalg.inv(new + root * torch.eye(len(new), dtype=DTYPE))
                h_g[i] = torch.eye(v.shape[0], dtype=DTYPE)
            else:
                factors[i] = decay * factors[i] + (1 - decay) * new
                s = h_a[i] @ a_tilde.mean(0)
                h_a[i] = _bfgs(h_a[i], s, factors[i] @ s + root * s)
            heavy_ball_layer_step(reference, buffers, i, h_g[i] @ v @ h_a[i], lr=lr,
                                  momentum=momentum)
        after = _means(reference, inputs, targets)
        for i, ((h0, g0), (h1, g1)) in enumerate(zip(before, after, strict=True)):
            s, y = h1 - h0, g1 - g0
            hy = h_g[i] @ y
            if s @ y < mu1 * (y @ hy):
                theta = (1 - mu1) * (y @ hy) / (y @ hy - s @ y)
                s = theta * s + (1 - theta) * hy
            h_g[i] = _bfgs(h_g[i], s, y + root * s)
        trajectory.append(flat_parameters(reference))
    return trajectory


def _run(memory, batches):
    model = tiny_mlp(4, 3, 2)
    optimizer = KBFGS(model, loss=CrossEntropyLoss(), memory=memory, **SETTINGS)
    trajectory = []
    for inputs, targets in batches:
        optimizer.step(inputs=inputs, targets=targets)
        trajectory.append(flat_parameters(model))
    return trajectory


def test_full_bfgs_matches_dense_derivation_and_lbfgs_matches_full():
    batches = classification_batches(5, n=8, d_in=4, classes=2)
    dense = _dense_run(batches)
    for memory in (0, 10):
        for ours, expected in zip(_run(memory, batches), dense, strict=True):
            torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(dense[-1], dense[0])


def test_lbfgs_forgets_the_oldest_pairs():
    batches = classification_batches(5, n=8, d_in=4, classes=2)
    short, full = _run(2, batches), _run(0, batches)
    torch.testing.assert_close(short[2], full[2], rtol=1e-10, atol=1e-12)   # 2 pairs so far
    assert not torch.allclose(short[-1], full[-1])


@pytest.mark.parametrize("bad", [{"lr": 0.0}, {"damping": 0.0}, {"mu1": 1.0},
                                 {"memory": -1}, {"stat_decay": 1.0}])
def test_bad_options_raise(bad):
    with pytest.raises(ValueError):
        KBFGS(tiny_mlp(4, 3, 2), loss=CrossEntropyLoss(), **bad)
