"""Equilibrated SGD: gradient steps divided by an estimate of the Hessian's row norms.

The equilibration preconditioner of a symmetric ``H`` is ``D_ii = ‖H_{i,·}‖``; with a Gaussian
probe ``v ~ N(0, I)``, ``E[(H v)_i²] = Σ_j H_ij² = D_ii²``, so a running mean of ``(H v)²``
estimates ``D²`` from Hessian-vector products only — unlike ``diag(H)``, it stays positive
near saddle points (Dauphin, de Vries & Bengio 2015, Algorithm 1)::

    D ← D + (H v)²                        (every k steps: steps 1, k+1, 2k+1, …)
    θ ← θ − ε g / (√(D / n) + λ)          (n: estimates so far)

Defaults: ``k = 20`` (the paper amortises the estimate by refreshing it every 20 iterations),
one probe per estimate. The paper tunes ``ε`` and ``λ`` per problem; ``ε = 0.03`` and
``λ = 0.01`` here (on ``digits-mlp`` at batch 128, ``λ = 1e-4`` diverged for ``ε ≥ 0.03``: a
single probe leaves some row-norm estimates near zero). The paper's Algorithm 1 starts
with ``D = 0`` and updates it from iteration ``k``; here the first estimate is taken at step
1, so the first steps are not divided by ``λ`` alone.

Reference: Dauphin, de Vries & Bengio 2015, "Equilibrated adaptive learning rates for
non-convex optimization" (NeurIPS; arXiv 1502.04390).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

import curvebench.optimizers.adahessian as _probes
from curvebench.losses import CurvatureLoss
from curvebench.optimizers.adahessian import HessianBatch, check_number
from curvebench.optimizers.base import CurvatureOptimizer
from curvebench.optimizers.spec import (
    LogUniform,
    OptimizerSpec,
    curvature_optimizer_factory,
    register_optimizer,
)

__all__ = ["EquilibratedSGD"]


class EquilibratedSGD(CurvatureOptimizer):
    """ESGD (see the module docstring).

    Args:
        model: the network.
        loss: its :class:`~curvebench.losses.CurvatureLoss`.
        lr: ``ε > 0``.
        damping: ``λ > 0``.
        update_period: ``k ≥ 1``.
        params: parameters to optimise (default: all that require gradients).

    Raises:
        ValueError: an out-of-range hyperparameter.
    """

    def __init__(self, model: nn.Module, *, loss: CurvatureLoss, lr: float = 0.03,
                 damping: float = 0.01, update_period: int = 20,
                 params: Sequence[torch.Tensor] | None = None) -> None:
        check_number("lr", lr, low=0.0, open_low=True)
        check_number("damping", damping, low=0.0, open_low=True)
        check_number("update_period", update_period, low=1, integer=True)
        super().__init__(model, loss=loss, params=params,
                         defaults=dict(lr=lr, damping=damping, update_period=update_period))
        self.state["esgd"] = {"step": 0, "estimates": 0}
        self.seed_generator()

    def curvature_step(self, *, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        global_state = self.state["esgd"]
        global_state["step"] += 1
        refresh = (global_state["step"] - 1) % self.param_groups[0]["update_period"] == 0
        params = self.parameters_list()
        with self.phase_timer.phase("curvature"):
            if refresh:
                batch = HessianBatch(self.model, loss=self.loss, inputs=inputs,
                                     targets=targets, params=params)
                generator = self.generator
                probe = _probes.draw_probes(params, distribution="gaussian",
                                            generator=generator)
                squares = [hv * hv for hv in batch.hessian_vector_product(probe)]
                gradient, value = batch.gradient, batch.loss_value
                global_state["estimates"] += 1
                self.counters.update(hessian_products=1)
            else:
                with torch.enable_grad():
                    value = self.loss(self.model(inputs), targets)
                    gradient = list(torch.autograd.grad(value, params))
                value, squares = value.detach(), None
        self.counters.update(forward_passes=1, backward_passes=1)
        with self.phase_timer.phase("update"), torch.no_grad():
            index = {id(p): i for i, p in enumerate(params)}
            count = global_state["estimates"]
            for group in self.param_groups:
                for p in group["params"]:
                    i = index[id(p)]
                    state = self.state[p]
                    if not state:
                        state["sum_squares"] = torch.zeros_like(p)
                    if squares is not None:
                        state["sum_squares"].add_(squares[i])
                    denominator = (state["sum_squares"] / count).sqrt_().add_(group["damping"])
                    p.addcdiv_(gradient[i], denominator, value=-group["lr"])
        self.step_info = {"curvature_refreshed": float(refresh)}
        return value



register_optimizer(OptimizerSpec(
    name="esgd",
    description="Equilibrated SGD: gradient steps divided by running row-norm estimates "
                "sqrt(mean (Hv)^2) from Gaussian Hessian-vector products.",
    factory=curvature_optimizer_factory(EquilibratedSGD),
    defaults={"lr": 0.03, "damping": 0.01, "update_period": 20},
    search_space={"lr": LogUniform(1e-3, 10.0), "damping": LogUniform(1e-6, 1e-1)},
    needs_curvature=True,
    supports_conv=True,
    deterministic=True,
    reference="Dauphin, de Vries & Bengio 2015, 'Equilibrated adaptive learning rates for "
              "non-convex optimization' (arXiv 1502.04390), Algorithm 1, with its "
              "estimate refreshed every k = 20 iterations as in the paper.",
))
