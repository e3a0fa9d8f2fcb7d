"""CurveBall: one Gauss–Newton product per step, interleaved with the step direction's update.

Instead of solving ``(G + λI) z = −g`` each step, CurveBall keeps the direction ``z`` as
optimizer state and takes one gradient step on the quadratic model
``M(z) = gᵀz + ½ zᵀ(G + λI) z`` per training step (Henriques, Ehrhardt, Albanie & Vedaldi
2019, Algorithm 1)::

    Δz = (G + λI) z + g                      (∇M at z: one J z, one Jᵀ(·) for G z and g)
    z  ← ρ z − β Δz
    θ  ← θ + z

with ``β`` and ``ρ`` chosen automatically as the minimisers of ``M(ρ z − β Δz)``: with
``Ĝ = G + λI``, ``[β, −ρ]`` solves the 2 × 2 system
``[[ΔzᵀĜΔz, zᵀĜΔz], [zᵀĜΔz, zᵀĜz]] x = [gᵀΔz, gᵀz]`` (pseudo-inverse; ``ρ = 0`` on the first
step, where ``z = 0``), which needs one more ``J Δz``. ``λ`` follows the authors'
Levenberg–Marquardt rule every ``T`` steps: with the reduction ratio
``r = (f(θ + z) − f(θ)) / M`` at the chosen ``(β, ρ)``, ``λ ← λ / ω^T`` when ``r < r_low`` and
``λ ← λ ω^T`` when ``r > r_high``.

Defaults from the authors' PyTorch code (repository ``jotaf98/pytorch-curveball``, file
``curveball.py``): ``λ₀ = 10``, ``ω = 0.999``, ``r_low = 0.5``, ``r_high = 1.5``, ``T = 5``,
adaptation on steps ``1, T + 1, …``. All products come from one
:class:`~curvebench.curvature.Linearization` per step (one forward and one backward pass):
``J z`` and ``J Δz`` are forward-mode products, ``Jᵀ(H J z + ∂L/∂f)`` one reverse pass.

Reference: Henriques, Ehrhardt, Albanie & Vedaldi 2019, "Small steps and giant leaps: minimal
Newton solvers for deep learning" (ICCV; arXiv 1805.08095).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from curvebench.curvature import Linearization, flatten, unflatten
from curvebench.losses import CurvatureLoss
from curvebench.optimizers.adahessian import check_number
from curvebench.optimizers.base import CurvatureOptimizer
from curvebench.optimizers.spec import (
    LogUniform,
    OptimizerSpec,
    curvature_optimizer_factory,
    register_optimizer,
)

__all__ = ["CurveBall"]

_STATE = "curveball"


class CurveBall(CurvatureOptimizer):
    """CurveBall with automatic ``β``, ``ρ`` and ``λ`` (see the module docstring).

    Args:
        model: the network.
        loss: its :class:`~curvebench.losses.CurvatureLoss`.
        damping: initial ``λ₀ ≥ 0``.
        auto_damping: adapt ``λ`` by the reduction ratio.
        damping_factor: ``ω ∈ (0, 1]``.
        ratio_low: ``r_low``.
        ratio_high: ``r_high ≥ r_low``.
        damping_interval: ``T ≥ 1``.
        params: parameters to optimise (default: all that require gradients).

    Raises:
        ValueError: an out-of-range hyperparameter.
    """

    def __init__(self, model: nn.Module, *, loss: CurvatureLoss, damping: float = 10.0,
                 auto_damping: bool = True, damping_factor: float = 0.999,
                 ratio_low: float = 0.5, ratio_high: float = 1.5, damping_interval: int = 5,
                 params: Sequence[torch.Tensor] | None = None) -> None:
        check_number("damping", damping, low=0.0)
        check_number("damping_factor", damping_factor, low=0.0, high=1.0, open_low=True)
        check_number("ratio_low", ratio_low, low=-float("inf"))
        check_number("ratio_high", ratio_high, low=ratio_low)
        check_number("damping_interval", damping_interval, low=1, integer=True)
        super().__init__(model, loss=loss, params=params, defaults=dict(
            damping=damping, auto_damping=bool(auto_damping), damping_factor=damping_factor,
            ratio_low=ratio_low, ratio_high=ratio_high, damping_interval=damping_interval))
        self.state[_STATE] = {"count": 0, "damping": float(damping)}

    def curvature_step(self, *, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        h = self.param_groups[0]
        state = self.state[_STATE]
        params = self.parameters_list()
        lam = float(state["damping"])
        linearization = Linearization(self.model, loss=self.loss, inputs=inputs,
                                      targets=targets, params=params,
                                      phase_timer=self.phase_timer)
        output, output_gradient = linearization.output, linearization.output_gradient
        z = state.get("direction")
        if z is None:
            z = torch.zeros_like(linearization.gradient)
        with self.phase_timer.phase("curvature"):
            jz = linearization.jacobian_vector_product(z)
            hjz = self.loss.hessian_vector_product(output, jz)
            delta = linearization.vector_jacobian_product(hjz + output_gradient).add_(
                z, alpha=lam)
            jdelta = linearization.jacobian_vector_product(delta)
            hjdelta = self.loss.hessian_vector_product(output, jdelta)
        self.counters.update(forward_passes=1, backward_passes=2, jacobian_vector_products=2)

        with self.phase_timer.phase("solve"):
            a11 = lam * float(delta @ delta) + float((jdelta * hjdelta).sum())
            a12 = lam * float(delta @ z) + float((jz * hjdelta).sum())
            a22 = lam * float(z @ z) + float((jz * hjz).sum())
            b = torch.tensor([float((output_gradient * jdelta).sum()),
                              float((output_gradient * jz).sum())], dtype=torch.float64)
            system = torch.tensor([[a11, a12], [a12, a22]], dtype=torch.float64)
            solution = torch.linalg.pinv(system) @ b
            beta, rho = float(solution[0]), -float(solution[1])
            z = z.mul(rho).sub_(delta, alpha=beta)
        state["direction"] = z
        with self.phase_timer.phase("update"), torch.no_grad():
            for p, step in zip(params, unflatten(z, params), strict=True):
                p.add_(step)

        ratio = float("nan")
        if h["auto_damping"] and state["count"] % h["damping_interval"] == 0:
            with self.phase_timer.phase("line_search"):
                new_value = float(linearization.evaluate_loss())
            self.counters.update(forward_passes=1, function_evaluations=1)
            predicted = -0.5 * float(solution @ b)
            # a zero step (a zero gradient) predicts nothing: ρ = NaN keeps λ
            change = new_value - float(linearization.loss_value)
            ratio = change / predicted if predicted != 0.0 else math.nan
            factor = h["damping_factor"] ** h["damping_interval"]
            if ratio < h["ratio_low"]:
                lam /= factor
            if ratio > h["ratio_high"]:
                lam *= factor
            state["damping"] = lam
        state["count"] += 1
        self.step_info = {"damping": float(state["damping"]), "step_size": beta,
                          "momentum": rho, "reduction_ratio": ratio}
        return linearization.loss_value

    def direction(self) -> torch.Tensor:
        """The current ``z`` (flat), zeros before the first step."""
        params = self.parameters_list()
        z = self.state[_STATE].get("direction")
        return z if z is not None else flatten([None] * len(params), params)



register_optimizer(OptimizerSpec(
    name="curveball",
    description="CurveBall: one GGN product per step updates a persistent direction; step "
                "size, momentum (closed-form 2x2 solve) and damping set automatically.",
    factory=curvature_optimizer_factory(CurveBall),
    defaults={"damping": 10.0, "auto_damping": True, "damping_factor": 0.999,
              "ratio_low": 0.5, "ratio_high": 1.5, "damping_interval": 5},
    search_space={"damping": LogUniform(1e-3, 100.0)},
    needs_curvature=True,
    supports_conv=True,
    deterministic=True,
    reference="Henriques, Ehrhardt, Albanie & Vedaldi 2019, 'Small steps and giant leaps: "
              "minimal Newton solvers for deep learning' (arXiv 1805.08095); defaults from the "
              "authors' code (jotaf98/pytorch-curveball, curveball.py).",
))
