"""MKOR (optimizers/mkor.py) against a dense float64 derivation of its own formula.

The reference keeps the inverse factors by dense inversion, ``P ← (inv(γP + (1−γ)I) + v vᵀ)⁻¹``,
with the vectors from an explicit forward pass, and restores the gradient's norm per layer; the
parameters must agree to 1e-10 over several steps with an update period of 2 and momentum.
"""

from __future__ import annotations

import pytest
import torch

from curvebench.losses import CrossEntropyLoss
from curvebench.optimizers.mkor import MKOR, STABILIZER_THRESHOLD
from tests.layerwise_reference import (
    DTYPE,
    classification_batches,
    flat_parameters,
    heavy_ball_layer_step,
    layer_tensors,
    tiny_mlp,
)


def _norm(matrix):
    return matrix[:, :-1].norm() + matrix[:, -1].norm()


def test_matches_dense_inverse_factors():
    lr, momentum, gamma, clip, period = 0.2, 0.5, 0.7, 0.3, 2
    model, reference = tiny_mlp(4, 3, 2), tiny_mlp(4, 3, 2)
    optimizer = MKOR(model, loss=CrossEntropyLoss(), lr=lr, momentum=momentum, stat_decay=gamma,
                     inv_update_period=period, clipping_value=clip)
    inverses, buffers = {}, {}
    for step, (inputs, targets) in enumerate(classification_batches(6, n=8, d_in=4, classes=2)):
        optimizer.step(inputs=inputs, targets=targets)

        for i, (a_tilde, b, v) in enumerate(layer_tensors(reference, inputs, targets)):
            if step % period == 0:
                a = a_tilde.clamp(-clip, clip).mean(0)
                g = (len(b) * b).clamp(-clip, clip).mean(0)
                if i not in inverses:
                    inverses[i] = [torch.eye(len(a), dtype=DTYPE), torch.eye(len(g), dtype=DTYPE)]
                else:
                    for k, vector in enumerate((a, g)):
                        eye = torch.eye(len(vector), dtype=DTYPE)
                        damped = torch.linalg.inv(gamma * inverses[i][k] + (1 - gamma) * eye)
                        inverses[i][k] = torch.linalg.inv(damped + torch.outer(vector, vector))
            u = inverses[i][1] @ v @ inverses[i][0]
            u = u * _norm(v) / _norm(u)
            heavy_ball_layer_step(reference, buffers, i, u, lr=lr, momentum=momentum)
        torch.testing.assert_close(flat_parameters(model), flat_parameters(reference),
                                   rtol=1e-10, atol=1e-12)
    assert not torch.equal(optimizer.state[model[0].weight]["A_inv"], torch.eye(5, dtype=DTYPE))


def test_stabiliser_resets_a_large_inverse():
    model = tiny_mlp(4, 3, 2)
    optimizer = MKOR(model, loss=CrossEntropyLoss(), inv_update_period=1,
                     stabilization_factor=0.25)
    inputs, targets = classification_batches(1, n=8, d_in=4, classes=2)[0]
    optimizer.step(inputs=inputs, targets=targets)
    state = optimizer.state[model[0].weight]
    large = 2 * STABILIZER_THRESHOLD * torch.eye(5, dtype=DTYPE)
    state["A_inv"] = large.clone()
    optimizer.step(inputs=inputs, targets=targets)   # flags the layer
    assert state["reset"]
    flagged = state["A_inv"].clone()
    optimizer.step(inputs=inputs, targets=targets)   # stabilises instead of updating
    eye = torch.eye(5, dtype=DTYPE)
    torch.testing.assert_close(state["A_inv"], 0.75 * flagged + 0.25 * eye)


@pytest.mark.parametrize("bad", [{"lr": 0.0}, {"stat_decay": 0.0}, {"inv_update_period": 0},
                                 {"stabilization_factor": 0.0}, {"clipping_value": 0.0}])
def test_bad_options_raise(bad):
    with pytest.raises(ValueError):
        MKOR(tiny_mlp(4, 3, 2), loss=CrossEntropyLoss(), **bad)
