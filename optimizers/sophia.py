"""Sophia: sign-like steps preconditioned by a clipped diagonal curvature estimate.

One step ``t = 1, 2, …`` on a batch with loss ``L`` (Liu, Li, Hall, Liang, Ma 2023,
Algorithm 3):

1. ``m ← β₁ m + (1 − β₁) g`` with the mini-batch gradient ``g``.
2. When ``(t − 1) mod k = 0`` (steps 1, k+1, 2k+1, …), on the same batch and parameters,
   ``h ← β₂ h + (1 − β₂) ĥ`` with a diagonal estimate ``ĥ``:

   * ``sophia-g`` — Gauss–Newton–Bartlett: labels ``ŷ`` are sampled from the model's own
     predictive distribution and ``ĥ = B · ĝ ⊙ ĝ`` with ``ĝ`` the gradient of the mean loss on
     ``(x, ŷ)`` over the batch of ``B`` samples. Here ``ĥ = (Jᵀ g̃) ⊙ (Jᵀ g̃)`` with the loss's
     Monte-Carlo output gradient ``g̃`` (:meth:`~curvebench.losses.CurvatureLoss.
     sampled_output_gradient`, scaled by ``1/√B``), which is the same quantity and works for
     every loss here; ``Jᵀ g̃`` is one backward pass through the linearisation's retained graph.
   * ``sophia-h`` — Hutchinson: ``ĥ = z ⊙ H z`` with a Gaussian probe ``z``.

3. ``θ ← θ − η ω θ`` (decoupled weight decay), then
   ``θ ← θ − η · clip(m / max(ρ h, ε), −1, 1)``, per coordinate.

Defaults: ``sophia-g`` takes ``β = (0.965, 0.99)``, ``ρ = 0.04``, ``ω = 0.1`` and ``k = 10``
from the authors' code (package ``sophia_opt``, ``SophiaG``; ``hess_interval = 10`` in their
training script); ``sophia-h`` takes ``β = (0.96, 0.99)``, ``k = 10`` and ``ρ = 0.01``
(``p = 0.01``), Gaussian probes, from pytorch-optimizer's ``SophiaH``. The learning rates differ
from both: theirs (``1e-4``–``6e-4``) are for language-model pre-training and barely move the
small benchmark models in a few hundred steps; ``η = 0.01`` here, and the study tunes it.
The authors' code divides by ``ρ·B·h + 1e-15`` where Algorithm 3 (used here) takes
``max(ρ h, ε)``; with ``ε`` tiny the two agree to ``ε / (ρ h)`` relative.

Reference: Liu, Li, Hall, Liang & Ma 2023, "Sophia: A scalable stochastic second-order
optimizer for language model pre-training" (arXiv 2305.14342).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from curvebench.curvature import Linearization, unflatten
from curvebench.losses import CurvatureLoss
from curvebench.optimizers.adahessian import HessianBatch, check_number
from curvebench.optimizers.base import CurvatureOptimizer
from curvebench.optimizers.spec import (
    LogUniform,
    OptimizerSpec,
    curvature_optimizer_factory,
    register_optimizer,
)

__all__ = ["Sophia"]

Estimator = Literal["gnb", "hutchinson"]


class Sophia(CurvatureOptimizer):
    """Sophia with the Gauss–Newton–Bartlett or the Hutchinson estimator (module docstring).

    Args:
        model: the network.
        loss: its :class:`~curvebench.losses.CurvatureLoss`.
        estimator: ``"gnb"`` (Sophia-G) or ``"hutchinson"`` (Sophia-H).
        lr: ``η > 0``.
        beta1: gradient moving-average rate ``β₁ ∈ [0, 1)``.
        beta2: curvature moving-average rate ``β₂ ∈ [0, 1)``.
        rho: clipping scale ``ρ > 0``.
        eps: floor ``ε > 0`` of the denominator.
        weight_decay: decoupled weight decay ``ω ≥ 0``.
        update_period: ``k ≥ 1``: the estimate is refreshed every ``k`` steps.
        params: parameters to optimise (default: all that require gradients).

    Raises:
        ValueError: an out-of-range hyperparameter or an unknown estimator.
    """

    def __init__(self, model: nn.Module, *, loss: CurvatureLoss, estimator: Estimator = "gnb",
                 lr: float = 0.01, beta1: float = 0.965, beta2: float = 0.99, rho: float = 0.04,
                 eps: float = 1e-15, weight_decay: float = 0.1, update_period: int = 10,
                 params: Sequence[torch.Tensor] | None = None) -> None:
        if estimator not in ("gnb", "hutchinson"):
            raise ValueError(f"estimator must be 'gnb' or 'hutchinson', got {estimator!r}")
        check_number("lr", lr, low=0.0, open_low=True)
        check_number("beta1", beta1, low=0.0, high=1.0, open_high=True)
        check_number("beta2", beta2, low=0.0, high=1.0, open_high=True)
        check_number("rho", rho, low=0.0, open_low=True)
        check_number("eps", eps, low=0.0, open_low=True)
        check_number("weight_decay", weight_decay, low=0.0)
        check_number("update_period", update_period, low=1, integer=True)
        defaults = dict(lr=lr, beta1=beta1, beta2=beta2, rho=rho, eps=eps,
                        weight_decay=weight_decay, update_period=update_period)
        super().__init__(model, loss=loss, defaults=defaults, params=params)
        self.estimator: Estimator = estimator
        self.state["sophia"] = {"step": 0}
        self.seed_generator()

    def curvature_step(self, *, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        global_state = self.state["sophia"]
        global_state["step"] += 1
        refresh = (global_state["step"] - 1) % self.param_groups[0]["update_period"] == 0
        params = self.parameters_list()
        with self.phase_timer.phase("curvature"):
            value, gradient, estimate = self._gradient_and_estimate(inputs, targets, params,
                                                                    refresh=refresh)
        with self.phase_timer.phase("update"), torch.no_grad():
            index = {id(p): i for i, p in enumerate(params)}
            for group in self.param_groups:
                for p in group["params"]:
                    i = index[id(p)]
                    self._update(group, p, gradient[i],
                                 None if estimate is None else estimate[i])
        self.step_info = {"curvature_refreshed": float(refresh)}
        return value

    def _gradient_and_estimate(self, inputs, targets, params, *, refresh: bool):
        """``(loss, gradient, ĥ or None)``, counting the passes."""
        if not refresh:
            with torch.enable_grad():
                value = self.loss(self.model(inputs), targets)
                gradient = list(torch.autograd.grad(value, params))
            self.counters.update(forward_passes=1, backward_passes=1)
            return value.detach(), gradient, None
        generator = self.generator
        if self.estimator == "gnb":
            linearization = Linearization(self.model, loss=self.loss, inputs=inputs,
                                          targets=targets, params=params)
            sampled = self.loss.sampled_output_gradient(linearization.output,
                                                        generator=generator)
            jt_sampled = linearization.vector_jacobian_product(sampled)
            estimate = unflatten(jt_sampled * jt_sampled, params)
            gradient = unflatten(linearization.gradient, params)
            value = linearization.loss_value
            self.counters.update(forward_passes=1, backward_passes=2)
        else:
            batch = HessianBatch(self.model, loss=self.loss, inputs=inputs, targets=targets,
                                 params=params)
            estimate = batch.hutchinson_diagonal(probes=1, distribution="gaussian",
                                                 generator=generator)
            gradient, value = batch.gradient, batch.loss_value
            self.counters.update(forward_passes=1, backward_passes=1, hessian_products=1)
        return value, gradient, estimate

    def _update(self, group: dict[str, Any], p: torch.Tensor, gradient: torch.Tensor,
                estimate: torch.Tensor | None) -> None:
        state = self.state[p]
        if not state:
            state["exp_avg"] = torch.zeros_like(p)
            state["hessian"] = torch.zeros_like(p)
        state["exp_avg"].mul_(group["beta1"]).add_(gradient, alpha=1 - group["beta1"])
        if estimate is not None:
            state["hessian"].mul_(group["beta2"]).add_(estimate, alpha=1 - group["beta2"])
        if group["weight_decay"]:
            p.mul_(1 - group["lr"] * group["weight_decay"])
        denominator = (state["hessian"] * group["rho"]).clamp_(min=group["eps"])
        ratio = (state["exp_avg"] / denominator).clamp_(-1.0, 1.0)
        p.add_(ratio, alpha=-group["lr"])



_REFERENCE = ("Liu, Li, Hall, Liang & Ma 2023, 'Sophia: A scalable stochastic second-order "
              "optimizer for language model pre-training' (arXiv 2305.14342), Algorithm 3; ")

register_optimizer(OptimizerSpec(
    name="sophia-g",
    description="Sophia-G: clipped steps preconditioned by a Gauss-Newton-Bartlett diagonal "
                "(sampled labels) refreshed every k steps.",
    factory=curvature_optimizer_factory(Sophia, estimator="gnb"),
    defaults={"lr": 0.01, "beta1": 0.965, "beta2": 0.99, "rho": 0.04, "eps": 1e-15,
              "weight_decay": 0.1, "update_period": 10},
    search_space={"lr": LogUniform(1e-4, 1.0), "rho": LogUniform(1e-3, 1.0)},
    needs_curvature=True,
    supports_conv=True,
    deterministic=True,
    reference=_REFERENCE + "β, ρ, ω, k from the authors' code (sophia_opt.SophiaG and their "
                           "training script); η = 0.01 for small models (see module docstring).",
))

register_optimizer(OptimizerSpec(
    name="sophia-h",
    description="Sophia-H: clipped steps preconditioned by a Hutchinson (Gaussian) Hessian "
                "diagonal refreshed every k steps.",
    factory=curvature_optimizer_factory(Sophia, estimator="hutchinson"),
    defaults={"lr": 0.01, "beta1": 0.96, "beta2": 0.99, "rho": 0.01, "eps": 1e-15,
              "weight_decay": 0.0, "update_period": 10},
    search_space={"lr": LogUniform(1e-4, 1.0), "rho": LogUniform(1e-3, 1.0)},
    needs_curvature=True,
    supports_conv=True,
    deterministic=True,
    reference=_REFERENCE + "β, ρ (p), k and Gaussian probes from pytorch-optimizer's SophiaH; "
                           "η = 0.01 for small models (see module docstring).",
))
