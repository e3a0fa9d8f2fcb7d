"""Exact damped Gauss–Newton for small models: the dense GGN and a Cholesky solve.

One step on a batch with loss ``L = (1/N) Σ_n ℓ_n`` and parameters ``θ ∈ ℝᴾ``:

1. The per-sample Jacobians ``J_n = ∂f(x_n)/∂θ`` (``D × P``) in one vectorised pass
   (``torch.func.vmap`` of ``jacrev`` over the samples: ``D`` reverse passes per sample, the
   work of ``D`` mini-batch backward passes), the gradient ``g = Σ_n J_nᵀ ∂L/∂f_n``.
2. A factor ``U`` with ``C = UᵀU``: for the GGN (``G = Σ_n J_nᵀ H_n J_n``) the rows are
   ``S_nᵀ J_n`` with the loss's Hessian factor ``H_n = S_n S_nᵀ``
   (:meth:`~curvebench.losses.CurvatureLoss.hessian_factor`, ``K`` columns), ``N·K`` rows
   (``K = D − 1`` for softmax cross-entropy, else ``D``); for the empirical
   Fisher ``F = (1/N) Σ_n ∇ℓ_n ∇ℓ_nᵀ`` (``ngd-exact``) the rows are ``∇ℓ_n / √N``, ``N`` rows.
3. ``d = −(C + λI)⁻¹ g`` by a dense Cholesky solve of the ``P × P`` matrix (here) or in sample
   space by the Woodbury identity (``ggn-woodbury``, :mod:`.ggn_woodbury`), then
   ``θ ← θ + α d``.

For the losses here (softmax cross-entropy, squared error, sigmoid cross-entropy: exponential
families with their canonical links) the GGN *is* the exact Fisher information, so ``ggn-exact``
is also exact natural gradient descent with the true Fisher (Martens 2020, §9.2); ``ngd-exact``
is the natural gradient with the empirical Fisher, as in SENG.

The dense matrix costs ``P²`` memory and ``P³/3`` work per step, so models above
``max_parameters`` (the spec's capability flag) are refused at construction, before any step.
Defaults: ``α = 1`` (the Gauss–Newton step), ``λ = 1e-2`` (``1e-3`` diverged on
``digits-logreg`` at batch 128); the study grids ``λ``.

Reference: Nocedal & Wright 2006, "Numerical Optimization", §10.3 (Gauss–Newton, Levenberg
damping); Schraudolph 2002; Martens 2020, "New insights and perspectives on the natural
gradient method" (JMLR).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from curvebench.curvature import check_supported, unflatten
from curvebench.losses import CurvatureLoss
from curvebench.optimizers.adahessian import check_number
from curvebench.optimizers.base import CurvatureOptimizer
from curvebench.optimizers.spec import LogUniform, OptimizerSpec, register_optimizer

__all__ = ["ExactGaussNewton", "sample_jacobians", "curvature_factor", "EXACT_MAX_PARAMETERS",
           "EXACT_SPEC_FIELDS", "exact_factory"]

Curvature = Literal["ggn", "empirical_fisher"]

#: Largest model ``ggn-exact`` and ``ngd-exact`` accept (a 2000 × 2000 solve per step).
EXACT_MAX_PARAMETERS = 2_000


def sample_jacobians(model: nn.Module, inputs: torch.Tensor,
                     params: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The output ``f`` ``(N, D)`` and the per-sample Jacobians ``(N, D, P)`` (flat layout)."""
    names = {id(p): name for name, p in model.named_parameters()}
    keys = [names[id(p)] for p in params]
    fixed = {name: p.detach() for name, p in model.named_parameters() if id(p) not in
             {id(q) for q in params}}

    def single(values: tuple[torch.Tensor, ...], x: torch.Tensor) -> torch.Tensor:
        state = {**fixed, **dict(zip(keys, values, strict=True))}
        out = functional_call(model, state, (x.unsqueeze(0),)).squeeze(0)
        return out, out

    values = tuple(p.detach() for p in params)
    jacobians, output = vmap(jacrev(single, has_aux=True), in_dims=(None, 0))(values, inputs)
    n, d = output.shape
    return output, torch.cat([j.reshape(n, d, -1) for j in jacobians], dim=2)


def curvature_factor(loss: CurvatureLoss, output: torch.Tensor, jacobians: torch.Tensor,
                     output_gradient: torch.Tensor, *, curvature: Curvature) -> torch.Tensor:
    """Rows ``U`` with ``C = UᵀU``: ``S_nᵀ J_n`` (GGN) or ``√N J_nᵀ ∂L/∂f_n`` (empirical Fisher)."""
    n, d, p = jacobians.shape
    if curvature == "ggn":
        factor = loss.hessian_factor(output)  # (N, D, K), H_n = S_n S_nᵀ
        return torch.einsum("nde,ndp->nep", factor, jacobians).reshape(-1, p)
    return torch.einsum("nd,ndp->np", output_gradient, jacobians) * math.sqrt(n)


class ExactGaussNewton(CurvatureOptimizer):
    """Damped Gauss–Newton / natural-gradient steps from the dense curvature (module docstring).

    Args:
        model: the network (at most ``max_parameters`` optimised parameters).
        loss: its :class:`~curvebench.losses.CurvatureLoss`.
        lr: step size ``α > 0``.
        damping: ``λ > 0``.
        curvature: ``"ggn"`` or ``"empirical_fisher"``.
        max_parameters: the size limit (the spec's capability flag).
        params: parameters to optimise (default: all that require gradients).

    Raises:
        ValueError: an out-of-range hyperparameter or a model above the size limit.
    """

    #: Name used in the size-limit message.
    method = "ggn-exact"

    def __init__(self, model: nn.Module, *, loss: CurvatureLoss, lr: float = 1.0,
                 damping: float = 1e-2, curvature: Curvature = "ggn",
                 max_parameters: int = EXACT_MAX_PARAMETERS,
                 params: Sequence[torch.Tensor] | None = None) -> None:
        check_number("lr", lr, low=0.0, open_low=True)
        check_number("damping", damping, low=0.0, open_low=True)
        if curvature not in ("ggn", "empirical_fisher"):
            raise ValueError(f"curvature must be 'ggn' or 'empirical_fisher', got {curvature!r}")
        check_supported(model)
        super().__init__(model, loss=loss, params=params,
                         defaults=dict(lr=lr, damping=damping))
        size = sum(p.numel() for p in self.parameters_list())
        if size > max_parameters:
            raise ValueError(f"{self.method} builds dense curvature matrices; the model has "
                             f"{size} parameters, the limit is {max_parameters}")
        self.curvature: Curvature = curvature

    def curvature_step(self, *, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        group = self.param_groups[0]
        params = self.parameters_list()
        with self.phase_timer.phase("curvature"):
            output, jacobians = sample_jacobians(self.model, inputs, params)
            detached = output.detach().requires_grad_(True)
            with torch.enable_grad():
                value = self.loss(detached, targets)
                (output_gradient,) = torch.autograd.grad(value, detached)
            gradient = torch.einsum("nd,ndp->p", output_gradient, jacobians)
            factor = curvature_factor(self.loss, output, jacobians, output_gradient,
                                      curvature=self.curvature)
        self.counters.update(forward_passes=1, backward_passes=output.shape[1])
        with self.phase_timer.phase("solve"):
            direction = self.solve(factor, gradient, damping=group["damping"])
        with self.phase_timer.phase("update"), torch.no_grad():
            for p, d in zip(params, unflatten(direction, params), strict=True):
                p.add_(d, alpha=group["lr"])
        return value.detach()

    def solve(self, factor: torch.Tensor, gradient: torch.Tensor, *,
              damping: float) -> torch.Tensor:
        """``−(UᵀU + λI)⁻¹ g`` by a dense Cholesky solve in parameter space."""
        matrix = factor.T @ factor
        matrix.diagonal().add_(damping)
        cholesky = torch.linalg.cholesky(matrix)
        return -torch.cholesky_solve(gradient.unsqueeze(1), cholesky).squeeze(1)


def exact_factory(cls: type[ExactGaussNewton], *, curvature: Curvature, max_parameters: int):
    """A spec factory for ``cls`` with the size limit fixed and the curvature as its setting."""

    def factory(*, model: nn.Module, loss: CurvatureLoss, **hyperparameters: Any):
        return cls(model, loss=loss, max_parameters=max_parameters,
                   **{"curvature": curvature, **hyperparameters})

    factory.settings = {"curvature": curvature}  # type: ignore[attr-defined]
    return factory


#: Spec fields ``ggn-exact`` and ``ngd-exact`` share.
EXACT_SPEC_FIELDS: dict[str, Any] = dict(
    defaults={"lr": 1.0, "damping": 1e-2},
    search_space={"lr": LogUniform(1e-2, 1.0), "damping": LogUniform(1e-6, 10.0)},
    needs_curvature=True,
    supports_conv=True,
    deterministic=True,
    max_parameters=EXACT_MAX_PARAMETERS,
)

register_optimizer(OptimizerSpec(
    name="ggn-exact",
    description="Exact damped Gauss-Newton (= true-Fisher natural gradient here): dense GGN "
                "from per-sample Jacobians and a Cholesky solve; small models only.",
    factory=exact_factory(ExactGaussNewton, curvature="ggn",
                          max_parameters=EXACT_MAX_PARAMETERS),
    **EXACT_SPEC_FIELDS,
    reference="Gauss-Newton with Levenberg damping (Nocedal & Wright 2006, §10.3) on the "
              "generalized Gauss-Newton matrix (Schraudolph 2002); equals the Fisher for "
              "canonical-link losses (Martens 2020, §9.2).",
))
