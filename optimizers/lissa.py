"""LiSSA: Newton-like steps from a truncated Neumann series for the inverse curvature.

For a symmetric ``A = C + λI`` with ``0 ≺ A ≺ s I`` (``C`` the GGN or the Hessian of the
batch loss, ``λ`` the damping, ``s`` a scale above the largest eigenvalue),
``A⁻¹ = (1/s) Σ_{j≥0} (I − A/s)ʲ``, so the recursion

    d₀ = g,   d_j = g + (I − A/s) d_{j−1}   (j = 1, …, J)

gives ``d_J / s → A⁻¹ g`` geometrically, with one curvature-vector product per term
(Agarwal, Bullins & Hazan 2017, Algorithm 1 with ``S₁ = 1`` repetition; all terms use the
current batch's curvature, from one :class:`~curvebench.curvature.Linearization`). The step is
``θ ← θ − α d_J / s``. Directions with eigenvalues far below ``s`` get ``(J + 1)/s`` times
the gradient, so a short series is a preconditioned gradient step and a long one a damped
Newton step.

Defaults: ``s = 25`` and ``λ = 0.01`` from Koh & Liang's influence-function code, which made
LiSSA's inverse-Hessian-vector products popular; ``J = 10`` terms per step (their 5000-term
series is for one-off products, not a training step); the GGN (positive semi-definite, so
``λ > 0`` suffices) by default, the Hessian on request; ``α = 1``.

Reference: Agarwal, Bullins & Hazan 2017, "Second-order stochastic optimization for machine
learning in linear time" (JMLR 18; arXiv 1602.03943); Koh & Liang 2017, "Understanding
black-box predictions via influence functions" (ICML).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import nn

from curvebench.curvature import Linearization, unflatten
from curvebench.losses import CurvatureLoss
from curvebench.optimizers.adahessian import check_number
from curvebench.optimizers.base import CurvatureOptimizer
from curvebench.optimizers.spec import (
    Choice,
    LogUniform,
    OptimizerSpec,
    curvature_optimizer_factory,
    register_optimizer,
)

__all__ = ["LiSSA", "neumann_inverse"]


def neumann_inverse(matvec: Callable[[torch.Tensor], torch.Tensor], vector: torch.Tensor, *,
                    damping: float, scale: float, depth: int) -> torch.Tensor:
    """``(1/s) d_J`` with ``d_j = v + (I − (C + λI)/s) d_{j−1}``, ``d₀ = v``: ``≈ (C + λI)⁻¹ v``.

    Args:
        matvec: ``u ↦ C u``.
        vector: ``v``.
        damping: ``λ``.
        scale: ``s``, above the largest eigenvalue of ``C + λI`` for convergence.
        depth: ``J`` (``J`` products).
    """
    estimate = vector.clone()
    for _ in range(depth):
        product = matvec(estimate).add_(estimate, alpha=damping)
        estimate = vector + estimate - product / scale
    return estimate / scale


class LiSSA(CurvatureOptimizer):
    """LiSSA steps (see the module docstring).

    Args:
        model: the network.
        loss: its :class:`~curvebench.losses.CurvatureLoss`.
        lr: ``α > 0``.
        damping: ``λ ≥ 0``.
        scale: ``s > 0``.
        depth: ``J ≥ 0`` series terms (curvature products) per step.
        curvature: ``"ggn"`` or ``"hessian"``.
        params: parameters to optimise (default: all that require gradients).

    Raises:
        ValueError: an out-of-range hyperparameter.
    """

    def __init__(self, model: nn.Module, *, loss: CurvatureLoss, lr: float = 1.0,
                 damping: float = 0.01, scale: float = 25.0, depth: int = 10,
                 curvature: Literal["ggn", "hessian"] = "ggn",
                 params: Sequence[torch.Tensor] | None = None) -> None:
        check_number("lr", lr, low=0.0, open_low=True)
        check_number("damping", damping, low=0.0)
        check_number("scale", scale, low=0.0, open_low=True)
        check_number("depth", depth, low=0, integer=True)
        if curvature not in ("ggn", "hessian"):
            raise ValueError(f"curvature must be 'ggn' or 'hessian', got {curvature!r}")
        super().__init__(model, loss=loss, params=params, defaults=dict(
            lr=lr, damping=damping, scale=scale, depth=depth, curvature=curvature))

    def curvature_step(self, *, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        h = self.param_groups[0]
        params = self.parameters_list()
        linearization = Linearization(self.model, loss=self.loss, inputs=inputs,
                                      targets=targets, params=params,
                                      phase_timer=self.phase_timer)
        self.counters.update(forward_passes=1, backward_passes=1)
        if h["curvature"] == "ggn":
            matvec = linearization.ggn_vector_product
            self.counters.update(ggn_products=h["depth"])
        else:
            matvec = linearization.hessian_vector_product
            # the first Hessian product records the gradient's graph: one more backward pass
            self.counters.update(hessian_products=h["depth"], backward_passes=int(h["depth"] > 0))
        with self.phase_timer.phase("solve"):
            direction = neumann_inverse(matvec, linearization.gradient, damping=h["damping"],
                                        scale=h["scale"], depth=h["depth"])
        with self.phase_timer.phase("update"), torch.no_grad():
            for p, d in zip(params, unflatten(direction, params), strict=True):
                p.sub_(d, alpha=h["lr"])
        return linearization.loss_value



register_optimizer(OptimizerSpec(
    name="lissa",
    description="LiSSA: truncated Neumann series for the damped inverse GGN (or Hessian) "
                "times the gradient, one curvature product per term.",
    factory=curvature_optimizer_factory(LiSSA),
    defaults={"lr": 1.0, "damping": 0.01, "scale": 25.0, "depth": 10, "curvature": "ggn"},
    search_space={"scale": LogUniform(1.0, 1000.0), "damping": LogUniform(1e-4, 1.0),
                  "depth": Choice((1, 5, 10, 20)), "curvature": Choice(("ggn", "hessian"))},
    needs_curvature=True,
    supports_conv=True,
    deterministic=True,
    reference="Agarwal, Bullins & Hazan 2017, 'Second-order stochastic optimization for "
              "machine learning in linear time' (arXiv 1602.03943), Algorithm 1; s = 25, "
              "λ = 0.01 from Koh & Liang 2017's influence-function code.",
))
