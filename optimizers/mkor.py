"""MKOR: Kronecker-factored preconditioning with rank-one Sherman–Morrison updates of the inverses.

For every Linear or convolution layer (:mod:`curvebench.optimizers.layerwise`) MKOR keeps the
*inverse* factors ``A⁻¹`` (input side) and ``S⁻¹`` (output side) directly and never inverts a
matrix. Every ``inv_update_period`` steps (``f``) it summarises the batch in two vectors, the
mean input ``a = mean_n clamp(mean_t ã_{n,t})`` and the mean per-example output gradient
``g = mean_n clamp(N · mean_t b_{n,t})`` (each example clamped to ``±c``), and updates

    P ← γ P + (1 − γ) I,      P ← P − (P v)(vᵀ P) / (1 + vᵀ P v)          (v = a or g)

i.e. ``P⁻¹ ← (γ P + (1 − γ) I)⁻¹ + v vᵀ`` by Sherman–Morrison (``γ = stat_decay``). At the
first update both inverses are the identity. When an entry of either inverse exceeds 2 in
magnitude (the norm-based stabiliser), the next update instead resets them to
``(1 − ζ) P + ζ I`` (``ζ = stabilization_factor``). The layer's step is

    U = S⁻¹ V A⁻¹ · (‖V_W‖ + ‖V_b‖) / (‖U_W‖ + ‖U_b‖)      (the gradient's norm restored)

followed by heavy-ball momentum and ``θ ← θ − α m`` (the authors wrap SGD). Parameters of other
layers take the plain gradient.

Reference: Mozaffari, Li, Zhang & Mehri Dehnavi 2023, "MKOR: Momentum-enabled Kronecker-factor-
based optimizer using rank-1 updates" (NeurIPS). Defaults from the authors' ``MKOR`` class
(stat_decay 0.95, inv_freq 10, stabilization_factor 0.1, clipping_value 100) with SGD momentum
0.9 and lr 0.1. Differences: the authors' code hard-codes 0.95/0.05 in the rank-one update
(``γ`` here, equal at the default) and its reset branch always returns the identity; we follow
the paper's stabiliser ``(1 − ζ) P + ζ I``. Weight decay is added to the gradient before
preconditioning (the authors' SGD adds it after).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from curvebench.losses import CurvatureLoss
from curvebench.optimizers.layerwise import LayerBatch, LayerwiseOptimizer, check
from curvebench.optimizers.spec import (
    IntLogUniform,
    LogUniform,
    OptimizerSpec,
    Uniform,
    curvature_optimizer_factory,
    register_optimizer,
)

__all__ = ["MKOR", "sherman_morrison_update", "STABILIZER_THRESHOLD"]

#: An inverse factor with an entry above this (in magnitude) is stabilised at the next update.
STABILIZER_THRESHOLD = 2.0


def sherman_morrison_update(inverse: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """``(P⁻¹ + v vᵀ)⁻¹ = P − (P v)(vᵀ P) / (1 + vᵀ P v)`` for symmetric ``P``."""
    pv = inverse @ vector
    return inverse - torch.outer(pv, pv) / (1 + vector @ pv)


class MKOR(LayerwiseOptimizer):
    """MKOR (see the module docstring).

    Args:
        model: the network.
        loss: its loss.
        lr: ``α``.
        momentum: heavy-ball ``μ``.
        weight_decay: ``η`` (added to the gradient).
        stat_decay: ``γ``.
        inv_update_period: ``f``, steps between inverse-factor updates.
        stabilization_factor: ``ζ``.
        clipping_value: ``c``, the clamp of the per-example vectors.
        params: parameters (default: the model's trainable parameters).
    """

    def __init__(self, model: nn.Module, *, loss: CurvatureLoss, lr: float = 0.1,
                 momentum: float = 0.9, weight_decay: float = 0.0, stat_decay: float = 0.95,
                 inv_update_period: int = 10, stabilization_factor: float = 0.1,
                 clipping_value: float = 100.0,
                 params: Iterable[torch.Tensor] | None = None) -> None:
        check(0 < stat_decay <= 1, f"stat_decay must be in (0, 1], got {stat_decay}")
        check(inv_update_period >= 1, "inv_update_period must be >= 1")
        check(0 < stabilization_factor <= 1,
              f"stabilization_factor must be in (0, 1], got {stabilization_factor}")
        check(clipping_value > 0, f"clipping_value must be positive, got {clipping_value}")
        super().__init__(model, loss=loss, params=params,
                         defaults={"lr": lr, "momentum": momentum, "weight_decay": weight_decay})
        self.stat_decay = stat_decay
        self.inv_update_period = inv_update_period
        self.stabilization_factor = stabilization_factor
        self.clipping_value = clipping_value

    def _vectors(self, batch: LayerBatch) -> tuple[torch.Tensor, torch.Tensor]:
        c, n = self.clipping_value, batch.inputs.shape[0]
        a = batch.inputs.mean(dim=1).clamp(-c, c).mean(dim=0)
        g = (n * batch.output_gradients.mean(dim=1)).clamp(-c, c).mean(dim=0)
        return a, g

    def update_statistics(self, step: int, batches: dict[nn.Module, LayerBatch],
                          matrices: dict[nn.Module, torch.Tensor], output: torch.Tensor) -> None:
        self.step_info["inverses_updated"] = float(step % self.inv_update_period == 0)
        if step % self.inv_update_period:
            return
        self.counters["inverse_updates"] += 1
        zeta, gamma = self.stabilization_factor, self.stat_decay
        for layer, batch in batches.items():
            state = self.state[layer.weight]
            vectors = dict(zip(("A_inv", "S_inv"), self._vectors(batch), strict=True))
            for key, v in vectors.items():
                eye = torch.eye(v.numel(), dtype=v.dtype, device=v.device)
                if key not in state:
                    state[key] = eye
                elif state.get("reset", False):
                    state[key] = (1 - zeta) * state[key] + zeta * eye
                else:
                    state[key] = sherman_morrison_update(gamma * state[key] + (1 - gamma) * eye,
                                                         v)
            state["reset"] = any(bool(state[k].abs().max() > STABILIZER_THRESHOLD)
                                 for k in vectors)

    def layer_direction(self, layer: nn.Module, matrix: torch.Tensor) -> torch.Tensor:
        state = self.state[layer.weight]
        if "A_inv" not in state:
            return matrix
        direction = state["S_inv"] @ matrix @ state["A_inv"]
        ratio = _layer_norm(layer, matrix) / _layer_norm(layer, direction)
        return direction * ratio if torch.isfinite(ratio) else matrix


def _layer_norm(layer: nn.Module, matrix: torch.Tensor) -> torch.Tensor:
    """``‖V_W‖ + ‖V_b‖`` (the authors' sum of the weight's and the bias's norms)."""
    if layer.bias is None:
        return matrix.norm()
    return matrix[:, :-1].norm() + matrix[:, -1].norm()


register_optimizer(
    OptimizerSpec(
        name="mkor",
        description="MKOR: Kronecker factors kept as inverses, updated by rank-one "
                    "Sherman-Morrison steps; gradient norm restored per layer.",
        factory=curvature_optimizer_factory(MKOR),
        defaults={"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0, "stat_decay": 0.95,
                  "inv_update_period": 10, "stabilization_factor": 0.1,
                  "clipping_value": 100.0},
        search_space={"lr": LogUniform(1e-3, 10.0), "momentum": Uniform(0.0, 0.99),
                      "inv_update_period": IntLogUniform(1, 100)},
        needs_curvature=True,
        reference="Mozaffari, Li, Zhang & Mehri Dehnavi 2023, 'MKOR: Momentum-enabled "
                  "Kronecker-factor-based optimizer using rank-1 updates' (NeurIPS). Defaults: "
                  "the authors' MKOR class (stat_decay 0.95, inv_freq 10, stabilization 0.1, "
                  "clipping 100) wrapping SGD (momentum 0.9, lr 0.1).",
    )
)
