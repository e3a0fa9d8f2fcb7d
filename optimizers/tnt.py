"""TNT: Tensor Normal Training, a Kronecker-factored Fisher from the sampled gradient's covariances.

For every Linear or convolution layer (:mod:`curvebench.optimizers.layerwise`) TNT models the
gradient of the loss with labels sampled from the model, arranged as the matrix
``G̃ = [∇W, ∇b]`` of shape ``(m, n)``, as tensor-normal: ``vec(G̃) ~ N(0, Σ₂ ⊗ Σ₁)``. Its
moments identify the two covariances up to one shared scale,
``E[G̃ G̃ᵀ] = tr(Σ₂) Σ₁`` and ``E[G̃ᵀ G̃] = tr(Σ₁) Σ₂``, so with moving averages
``U₁ ← β U₁ + (1 − β) G̃ G̃ᵀ`` and ``U₂ ← β U₂ + (1 − β) G̃ᵀ G̃`` (first value as is; both have
the trace ``t``) the Fisher block is ``F ≈ Σ₂ ⊗ Σ₁ = (U₂ ⊗ U₁) / t``. TNT splits ``t`` evenly,
``Σ̂ᵢ = Uᵢ / √t``, damps each factor and preconditions the true gradient ``V``:

    U = (Σ̂₁ + √λ I)⁻¹ V (Σ̂₂ + √λ I)⁻¹

followed by heavy-ball momentum and ``θ ← θ − α m``. The statistics are updated every step from
one sampled gradient (one more backward pass of a Monte-Carlo output vector, drawn from the
optimizer's own generator); the damped inverses every ``inv_update_period`` steps. The sampled
gradient is scaled by ``√N`` (``N`` the batch size), so ``E[vec G̃ vec G̃ᵀ]`` is the Fisher of
the batch-mean loss whatever the batch size. Parameters of other layers take the plain
gradient.

Reference: Ren & Goldfarb 2021, "Tensor normal training for deep learning models" (NeurIPS).
Differences: convolution kernels are matrices ``(C_out, C_in·k_h·k_w + 1)`` here (the paper also
allows higher-order tensors), and the √N scaling (the paper's mini-batch sampled gradient has
a covariance ``1/N`` times ours). Defaults as in the paper's experiments where we could read
them (momentum 0.9, statistics decay 0.9, inverses every 10 steps); lr 0.01 and damping 0.01
are our choices for these problems (the paper tunes both).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from curvebench.losses import CurvatureLoss
from curvebench.optimizers.layerwise import (
    LayerBatch,
    LayerwiseOptimizer,
    check,
)
from curvebench.optimizers.spec import (
    LogUniform,
    OptimizerSpec,
    Uniform,
    curvature_optimizer_factory,
    register_optimizer,
)

__all__ = ["TNT"]


class TNT(LayerwiseOptimizer):
    """Tensor Normal Training (see the module docstring).

    Args:
        model: the network.
        loss: its loss.
        lr: ``α``.
        damping: ``λ``.
        momentum: heavy-ball ``μ``.
        weight_decay: ``η`` (added to the gradient).
        stat_decay: ``β``.
        inv_update_period: steps between the damped inverses.
        kl_clip: ``κ`` (0: none).
        params: parameters (default: the model's trainable parameters).
    """

    def __init__(self, model: nn.Module, *, loss: CurvatureLoss, lr: float = 0.01,
                 damping: float = 0.01, momentum: float = 0.9, weight_decay: float = 0.0,
                 stat_decay: float = 0.9, inv_update_period: int = 10, kl_clip: float = 0.0,
                 params: Iterable[torch.Tensor] | None = None) -> None:
        check(damping > 0, f"damping must be positive, got {damping}")
        check(0 <= stat_decay < 1, f"stat_decay must be in [0, 1), got {stat_decay}")
        check(inv_update_period >= 1, "inv_update_period must be >= 1")
        super().__init__(model, loss=loss, kl_clip=kl_clip, params=params,
                         defaults={"lr": lr, "damping": damping, "momentum": momentum,
                                   "weight_decay": weight_decay})
        self.stat_decay = stat_decay
        self.inv_update_period = inv_update_period
        self.seed_generator()

    def needs_graph(self, step: int) -> bool:
        return bool(self.layers)

    def update_statistics(self, step: int, batches: dict[nn.Module, LayerBatch],
                          matrices: dict[nn.Module, torch.Tensor], output: torch.Tensor) -> None:
        if not self.layers:
            return
        sampled = self.loss.sampled_output_gradient(output, generator=self.generator)
        params = [p for m in self.layers for p in (m.weight, m.bias) if p is not None]
        gradients = dict(zip(map(id, params), torch.autograd.grad(output, params, sampled),
                             strict=True))
        self.counters["backward_passes"] += 1
        refresh = step % self.inv_update_period == 0
        for layer in self.layers:
            bias = gradients[id(layer.bias)] if layer.bias is not None else None
            g = self.layer_matrix(layer, gradients[id(layer.weight)], bias)
            state = self.state[layer.weight]
            for key, value in (("U1", g @ g.T), ("U2", g.T @ g)):
                if key in state:
                    state[key].mul_(self.stat_decay).add_(value, alpha=1 - self.stat_decay)
                else:
                    state[key] = value.clone()
            if refresh or "inverse_1" not in state:
                root = math.sqrt(self._group(layer.weight)["damping"])
                scale = math.sqrt(max(float(state["U1"].trace()), torch.finfo(g.dtype).tiny))
                for i in ("1", "2"):
                    factor = state[f"U{i}"] / scale
                    eye = torch.eye(factor.shape[0], dtype=factor.dtype, device=factor.device)
                    state[f"inverse_{i}"] = torch.linalg.inv(factor + root * eye)
        self.counters["inverse_updates"] += int(refresh)
        self.step_info["inverses_updated"] = float(refresh)

    def layer_direction(self, layer: nn.Module, matrix: torch.Tensor) -> torch.Tensor:
        state = self.state[layer.weight]
        if "inverse_1" not in state:               # no statistics yet (layer not reached)
            return matrix
        return state["inverse_1"] @ matrix @ state["inverse_2"]


register_optimizer(
    OptimizerSpec(
        name="tnt",
        description="Tensor Normal Training: Kronecker-factored Fisher from the covariances of "
                    "the sampled gradient's matrix unfoldings.",
        factory=curvature_optimizer_factory(TNT),
        defaults={"lr": 0.01, "damping": 0.01, "momentum": 0.9, "weight_decay": 0.0,
                  "stat_decay": 0.9, "inv_update_period": 10, "kl_clip": 0.0},
        search_space={"lr": LogUniform(1e-4, 1.0), "damping": LogUniform(1e-5, 1.0),
                      "momentum": Uniform(0.0, 0.99)},
        needs_curvature=True,
        reference="Ren & Goldfarb 2021, 'Tensor normal training for deep learning models' "
                  "(NeurIPS). Defaults: momentum 0.9, statistics decay 0.9, inverses every 10 "
                  "steps as in the paper's experiments; lr 0.01 and damping 0.01 ours (tuned "
                  "per problem in the paper).",
    )
)
