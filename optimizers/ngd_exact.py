"""Exact damped natural gradient with the empirical Fisher, for small models.

``d = −(F + λI)⁻¹ g`` with ``F = (1/N) Σ_n ∇ℓ_n ∇ℓ_nᵀ`` built densely from the per-sample
gradients of the batch (rows ``∇ℓ_n / √N`` of the factor in :mod:`.ggn_exact`, which holds the
shared machinery) and a Cholesky solve; ``θ ← θ + α d``. The true Fisher of the losses here is
the GGN, so exact natural gradient with the true Fisher is ``ggn-exact``; this is the
empirical-Fisher variant that SENG (Yang et al. 2021) approximates in sample space. Kunstner,
Hennig & Balles 2019 explain why the empirical Fisher is a poor curvature model; this row shows
it. Defaults: ``α = 1``, ``λ = 1e-2`` (``F`` has rank at most ``N``, so ``λ`` matters more than
for the GGN; the study grids it).

Reference: Amari 1998, "Natural gradient works efficiently in learning"; Yang, Xu, Wen & Zhang
2021, "Enhance curvature information by structured stochastic quasi-Newton methods" / SENG,
"Sketchy empirical natural gradient methods for deep learning" (arXiv 2006.05924); Kunstner,
Hennig & Balles 2019, "Limitations of the empirical Fisher approximation".
"""

from __future__ import annotations

from curvebench.optimizers.ggn_exact import (
    EXACT_MAX_PARAMETERS,
    EXACT_SPEC_FIELDS,
    ExactGaussNewton,
    exact_factory,
)
from curvebench.optimizers.spec import OptimizerSpec, register_optimizer

__all__ = ["ExactNaturalGradient"]


class ExactNaturalGradient(ExactGaussNewton):
    """:class:`~curvebench.optimizers.ggn_exact.ExactGaussNewton` on the empirical Fisher."""

    method = "ngd-exact"


register_optimizer(OptimizerSpec(
    name="ngd-exact",
    description="Exact damped natural gradient with the empirical Fisher (per-sample "
                "gradients, dense Cholesky solve); small models only.",
    factory=exact_factory(ExactNaturalGradient, curvature="empirical_fisher",
                          max_parameters=EXACT_MAX_PARAMETERS),
    **EXACT_SPEC_FIELDS,
    reference="Amari 1998, 'Natural gradient works efficiently in learning'; empirical Fisher "
              "as in SENG (Yang et al. 2021, arXiv 2006.05924); see Kunstner, Hennig & Balles "
              "2019 on its limits.",
))
