"""Sample-space Gauss–Newton / natural gradient: the damped solve by the Woodbury identity.

With the curvature factor ``U`` of :mod:`.ggn_exact` (``C = UᵀU``; ``M`` rows: ``N·K`` for the
GGN, ``K = D − 1`` for softmax cross-entropy and ``D`` otherwise, ``N`` for the empirical
Fisher) and ``M ≪ P``,

    (UᵀU + λI)⁻¹ g = (g − Uᵀ (U Uᵀ + λI)⁻¹ U g) / λ,

so one step solves an ``M × M`` system (the Gram or neural-tangent-kernel matrix of the batch)
instead of a ``P × P`` one: ``O(M² P + M³)`` work and ``O(M P)`` memory. When ``M ≥ P`` the
step is solved in parameter space instead (the same step, the smaller system). With the GGN this is
Gram–Gauss–Newton (Cai et al. 2019; for squared error ``U Uᵀ`` is the batch's NTK Gram matrix);
with the empirical Fisher it is the exact sample-space solve that SENG (Yang et al. 2021)
sketches. The step equals ``ggn-exact`` / ``ngd-exact`` up to rounding (checked to ``1e-10`` in
float64); the subtraction loses digits when ``λ`` is tiny against ``‖U‖²`` in float32.

Defaults: ``α = 1``, ``λ = 1e-2`` (as ``ggn-exact``), the GGN. Models above
``max_parameters`` are refused (the per-sample Jacobians take ``N·D·P`` memory).

Reference: Cai, Gao, Hou, Chen, Wang, He, Zhang & Wang 2019, "Gram-Gauss-Newton method:
learning overparameterized neural networks for regression problems" (arXiv 1905.11675); Yang,
Xu, Wen & Zhang 2021, "Sketchy empirical natural gradient methods for deep learning" (SENG,
arXiv 2006.05924); Woodbury 1950.
"""

from __future__ import annotations

import torch

from curvebench.optimizers.ggn_exact import ExactGaussNewton, exact_factory
from curvebench.optimizers.spec import Choice, LogUniform, OptimizerSpec, register_optimizer

__all__ = ["WoodburyGaussNewton", "WOODBURY_MAX_PARAMETERS"]

#: Largest model ``ggn-woodbury`` accepts. The Gram matrix ``U Uᵀ`` costs ``(N·K)² P``: at batch
#: 128 with 10 classes and ``P = 8970`` (``digits-mlp``) that was 0.33 s of one core per step
#: with ``K = 10`` (``(9/10)²`` of it with today's ``K = 9``), too slow for the studies'
#: budgets; ``P ≤ 5000`` keeps a step well under 0.2 s.
WOODBURY_MAX_PARAMETERS = 5_000


class WoodburyGaussNewton(ExactGaussNewton):
    """:class:`~curvebench.optimizers.ggn_exact.ExactGaussNewton` solved in sample space."""

    method = "ggn-woodbury"

    def solve(self, factor: torch.Tensor, gradient: torch.Tensor, *,
              damping: float) -> torch.Tensor:
        """``−(UᵀU + λI)⁻¹ g = −(g − Uᵀ (UUᵀ + λI)⁻¹ U g) / λ``.

        When the factor has at least as many rows as columns (``M ≥ P``: small models, large
        batches) the sample-space system is the larger one, and the same step is solved in
        parameter space instead (``step_info["sample_space"]`` says which).
        """
        rows, columns = factor.shape
        self.step_info["sample_space"] = float(rows < columns)
        if rows >= columns:
            return super().solve(factor, gradient, damping=damping)
        gram = factor @ factor.T
        gram.diagonal().add_(damping)
        cholesky = torch.linalg.cholesky(gram)
        inner = torch.cholesky_solve((factor @ gradient).unsqueeze(1), cholesky).squeeze(1)
        return (factor.T @ inner - gradient) / damping


def _factory(*, model, loss, curvature: str = "ggn", **hyperparameters):
    build = exact_factory(WoodburyGaussNewton, curvature=curvature,
                          max_parameters=WOODBURY_MAX_PARAMETERS)
    return build(model=model, loss=loss, **hyperparameters)


register_optimizer(OptimizerSpec(
    name="ggn-woodbury",
    description="Sample-space Gauss-Newton (Gram-Gauss-Newton) or empirical natural gradient "
                "(SENG without sketching): damped solve by the Woodbury identity.",
    factory=_factory,
    defaults={"lr": 1.0, "damping": 1e-2, "curvature": "ggn"},
    search_space={"lr": LogUniform(1e-2, 1.0), "damping": LogUniform(1e-6, 10.0),
                  "curvature": Choice(("ggn", "empirical_fisher"))},
    needs_curvature=True,
    supports_conv=True,
    deterministic=True,
    max_parameters=WOODBURY_MAX_PARAMETERS,
    reference="Cai et al. 2019, 'Gram-Gauss-Newton method' (arXiv 1905.11675); Yang et al. "
              "2021, SENG (arXiv 2006.05924); the Woodbury identity.",
))
