"""Eva: Kronecker-vectorised curvature, inverted by Sherman–Morrison.

For every Linear or convolution layer (:mod:`curvebench.optimizers.layerwise`), Eva keeps two
vectors instead of K-FAC's two matrices: the mean layer input ``a = mean_{n,t} ã_{n,t}`` and the
mean output gradient ``g = mean_{n,t} b_{n,t}`` (``b`` the gradient of the batch-mean loss; both
exactly as the authors' ``get_vector_a``/``get_vector_g``), averaged over steps as
``a ← ξ a + (1 − ξ) a_new`` (first value taken as is). The curvature of the layer is the rank-one
Kronecker vector ``(a ⊗ g)(a ⊗ g)ᵀ`` plus damping ``γ I``, whose inverse is a Sherman–Morrison
update, so the step for the layer's gradient matrix ``V = [∇W, ∇b]`` costs a few matrix-vector
products:

    U = (1/γ) ( V − (gᵀ V a) / (γ + ‖a‖² ‖g‖²) · g aᵀ )

then KL clipping ``ν = min(1, √(κ / (α² Σ ⟨U, V⟩)))`` over all layers, heavy-ball momentum and
``θ ← θ − α ν m``. Parameters of other layers take the plain gradient.

Reference: Zhang, Shi & Li 2023, "Eva: Practical second-order optimization with
Kronecker-vectorized approximation" (ICLR). Defaults from the authors' code (``kfac/eva.py``:
lr 0.1, damping 0.03, kl_clip 0.001; their ``factor_decay = 0.95`` weights the *new* vector, so
``ξ = 0.05`` here) and training scripts (SGD momentum 0.9). The authors compute the vectors on
the first 16 examples of the batch (``kfac_batch_size``); we use the whole batch.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from curvebench.losses import CurvatureLoss
from curvebench.optimizers.layerwise import LayerBatch, LayerwiseOptimizer, check
from curvebench.optimizers.spec import (
    LogUniform,
    OptimizerSpec,
    Uniform,
    curvature_optimizer_factory,
    register_optimizer,
)

__all__ = ["Eva"]


class Eva(LayerwiseOptimizer):
    """Eva (see the module docstring).

    Args:
        model: the network.
        loss: its loss.
        lr: ``α``.
        damping: ``γ``.
        momentum: heavy-ball ``μ``.
        weight_decay: ``η`` (added to the gradient).
        kl_clip: ``κ`` (0: none).
        stat_decay: ``ξ``, the weight of the old average.
        params: parameters (default: the model's trainable parameters).
    """

    def __init__(self, model: nn.Module, *, loss: CurvatureLoss, lr: float = 0.1,
                 damping: float = 0.03, momentum: float = 0.9, weight_decay: float = 0.0,
                 kl_clip: float = 1e-3, stat_decay: float = 0.05,
                 params: Iterable[torch.Tensor] | None = None) -> None:
        check(damping > 0, f"damping must be positive, got {damping}")
        check(0 <= stat_decay < 1, f"stat_decay must be in [0, 1), got {stat_decay}")
        super().__init__(model, loss=loss, kl_clip=kl_clip, params=params,
                         defaults={"lr": lr, "damping": damping, "momentum": momentum,
                                   "weight_decay": weight_decay})
        self.stat_decay = stat_decay

    def update_statistics(self, step: int, batches: dict[nn.Module, LayerBatch],
                          matrices: dict[nn.Module, torch.Tensor], output: torch.Tensor) -> None:
        for layer, batch in batches.items():
            state = self.state[layer.weight]
            new = {"a": batch.inputs.mean(dim=(0, 1)),
                   "g": batch.output_gradients.mean(dim=(0, 1))}
            for key, value in new.items():
                if key in state:
                    state[key].mul_(self.stat_decay).add_(value, alpha=1 - self.stat_decay)
                else:
                    state[key] = value.clone()

    def layer_direction(self, layer: nn.Module, matrix: torch.Tensor) -> torch.Tensor:
        state = self.state[layer.weight]
        if "a" not in state:                       # no statistics yet (layer not reached)
            return matrix
        damping = self._group(layer.weight)["damping"]
        a, g = state["a"], state["g"]
        coefficient = (g @ matrix @ a) / (damping + (a @ a) * (g @ g))
        return (matrix - coefficient * torch.outer(g, a)) / damping


register_optimizer(
    OptimizerSpec(
        name="eva",
        description="Eva: rank-one Kronecker-vector curvature per layer, Sherman-Morrison "
                    "inverse, KL clipping.",
        factory=curvature_optimizer_factory(Eva),
        defaults={"lr": 0.1, "damping": 0.03, "momentum": 0.9, "weight_decay": 0.0,
                  "kl_clip": 1e-3, "stat_decay": 0.05},
        search_space={"lr": LogUniform(1e-3, 10.0), "damping": LogUniform(1e-4, 1.0),
                      "momentum": Uniform(0.0, 0.99)},
        needs_curvature=True,
        reference="Zhang, Shi & Li 2023, 'Eva: Practical second-order optimization with "
                  "Kronecker-vectorized approximation' (ICLR). Defaults: the authors' "
                  "kfac/eva.py (lr 0.1, damping 0.03, kl_clip 0.001, factor_decay 0.95 on the "
                  "new vector) and training scripts (momentum 0.9).",
    )
)
