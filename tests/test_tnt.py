"""TNT (optimizers/tnt.py) against a dense float64 derivation of its own formula.

The reference draws the same Monte-Carlo labels (a generator seeded like the optimizer's),
backpropagates them through an explicit copy of the model, builds the Fisher block
``(U₂ ⊗ U₁) / tr U₁ `` as a dense matrix with the damping split ``(Σ̂₁ + √λI) ⊗ (Σ̂₂ + √λI)``
(column-major: ``kron(Σ̂₂ + √λI, Σ̂₁ + √λI)``) and solves with it; parameters must agree to 1e-10
over several steps with an inverse period of 2 and momentum.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from curvebench.losses import CrossEntropyLoss
from curvebench.optimizers.tnt import TNT
from tests.layerwise_reference import (
    DTYPE,
    classification_batches,
    flat_parameters,
    heavy_ball_layer_step,
    tiny_mlp,
    unvec,
    vec,
)


def _layer_gradients(model, output_vector, output):
    layers = [m for m in model if isinstance(m, nn.Linear)]
    params = [p for m in layers for p in (m.weight, m.bias)]
    grads = torch.autograd.grad(output, params, output_vector, retain_graph=True)
    return [torch.cat([w, b.unsqueeze(1)], 1) for w, b in zip(grads[::2], grads[1::2],
                                                                strict=True)]


def test_matches_dense_kronecker_solve():
    lr, damping, momentum, decay, period = 0.2, 0.05, 0.5, 0.6, 2
    loss = CrossEntropyLoss()
    model, reference = tiny_mlp(4, 3, 2), tiny_mlp(4, 3, 2)
    optimizer = TNT(model, loss=loss, lr=lr, damping=damping, momentum=momentum,
                    stat_decay=decay, inv_update_period=period)
    generator = torch.Generator().manual_seed(optimizer.generator.initial_seed())
    statistics, dense_inverses, buffers = {}, {}, {}
    for step, (inputs, targets) in enumerate(classification_batches(5, n=8, d_in=4,
                                                                     classes=2)):
        optimizer.step(inputs=inputs, targets=targets)

        output = reference(inputs)
        true = _layer_gradients(reference, torch.autograd.grad(loss(output, targets), output,
                                                               retain_graph=True)[0],
                                output)
        sampled = _layer_gradients(reference, loss.sampled_output_gradient(
            output, generator=generator), output)
        for i, (g, v) in enumerate(zip(sampled, true, strict=True)):
            u1, u2 = g @ g.T, g.T @ g
            if i in statistics:
                u1 = decay * statistics[i][0] + (1 - decay) * u1
                u2 = decay * statistics[i][1] + (1 - decay) * u2
            statistics[i] = (u1, u2)
            if step % period == 0:
                t = math.sqrt(u1.trace())
                eye1, eye2 = torch.eye(len(u1), dtype=DTYPE), torch.eye(len(u2), dtype=DTYPE)
                block = torch.kron(u2 / t + damping**0.5 * eye2, u1 / t + damping**0.5 * eye1)
                dense_inverses[i] = torch.linalg.inv(block)
            u = unvec(dense_inverses[i] @ vec(v), v.shape[0])
            heavy_ball_layer_step(reference, buffers, i, u, lr=lr, momentum=momentum)
        torch.testing.assert_close(flat_parameters(model), flat_parameters(reference),
                                   rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bad", [{"lr": 0.0}, {"damping": 0.0}, {"stat_decay": 1.0},
                                 {"inv_update_period": 0}])
def test_bad_options_raise(bad):
    with pytest.raises(ValueError):
        TNT(tiny_mlp(4, 3, 2), loss=CrossEntropyLoss(), **bad)
