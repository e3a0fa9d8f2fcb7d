"""PSGD with a Kronecker-factored preconditioner fitted on the Lie group of triangular matrices.

Each parameter, viewed as a matrix ``G`` of shape ``(m, n)`` (a convolution kernel as
``(C_out, C_in·k_h·k_w)``; a vector as ``(m,)``), has a preconditioner
``P = (Q₂ᵀQ₂) ⊗ (Q₁ᵀQ₁)`` with ``Q₁``, ``Q₂`` upper triangular, or diagonal for a dimension
larger than ``max_size`` or more than ``max_skew`` times the other one. Every step, with a
Gaussian probe ``V`` (one per parameter, from the optimizer's own generator) and the exact
Hessian-vector product ``H = ∇²L · V`` (double backward), PSGD (Li 2015, 2019) minimises
``E[hᵀPh + vᵀP⁻¹v]`` by one normalised step on the group:

    A = Q₁ H Q₂ᵀ,   B = Q₁⁻ᵀ V Q₂⁻¹
    Q₁ ← Q₁ − μ / ‖A Aᵀ + B Bᵀ‖ · triu(A Aᵀ − B Bᵀ) Q₁      (Q₂ likewise with AᵀA, BᵀB)

``‖·‖`` a cheap lower bound of the spectral norm (the author's), ``μ = lr_preconditioner``; a
diagonal factor uses ``max |·|`` and the elementwise product. The update is
``θ ← θ − α P m`` with ``m`` the moving average ``β m + (1 − β) g`` (``m = g`` when ``β = 0``).
``Q`` starts at ``s^{1/k} I`` per factor (``k`` factors), ``s = init_scale``, or, when
``init_scale = 0``, ``s = (vᵀv / hᵀh)^{1/4}`` from the first probe, as in the author's code.
``update_probability < 1`` skips the fit on a step with that probability (draws from the same
generator).

Differences from the author's ``psgd_torch.Kron``: its random rebalancing of the factor scales
(an exact invariance of ``P`` and of the fit) is left out; tensors of order three and more are
matrices here; the probe generator is the optimizer's own, seeded from the global generator at
construction and saved in the state, so the trajectory depends only on the seed.

References: Li 2015/2018, "Preconditioned stochastic gradient descent" (IEEE TNNLS 2018);
Li 2019, "Preconditioner on matrix Lie group for SGD" (ICLR); defaults from the author's
``psgd_torch`` (``Kron``: Newton type, lr 0.01, preconditioner lr 0.1 with the second-order
normaliser, max skew 10).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from curvebench.losses import CurvatureLoss
from curvebench.optimizers.base import CurvatureOptimizer
from curvebench.optimizers.spec import (
    LogUniform,
    OptimizerSpec,
    Uniform,
    curvature_optimizer_factory,
    register_optimizer,
)

__all__ = ["PSGDKron", "spectral_norm_lower_bound"]


def spectral_norm_lower_bound(matrix: torch.Tensor) -> torch.Tensor:
    """A cheap lower bound of ``‖M‖₂`` (within about √2 of it; Li's ``norm_lower_bound``).

    Takes the row or column of largest norm as a start vector for one power-iteration step.
    """
    scale = matrix.abs().max()
    if scale == 0:
        return scale
    a = matrix / scale
    squares = a * a
    column, i = squares.sum(dim=0).max(0)
    row, j = squares.sum(dim=1).max(0)
    if column > row:
        x = a[:, i] @ a
        return scale * torch.linalg.vector_norm((x / torch.linalg.vector_norm(x)) @ a.T)
    x = a @ a[j]
    return scale * torch.linalg.vector_norm(a.T @ (x / torch.linalg.vector_norm(x)))


def _apply(factor: torch.Tensor, x: torch.Tensor, dim: int) -> torch.Tensor:
    """``Q`` applied along ``dim`` of the matrix ``x`` (``Q x`` for rows, ``x Qᵀ`` for columns)."""
    if factor.dim() == 1:
        return x * (factor if dim == 1 or x.dim() == 1 else factor.unsqueeze(1))
    return factor @ x if dim == 0 else x @ factor.T


def _solve_transposed(factor: torch.Tensor, x: torch.Tensor, dim: int) -> torch.Tensor:
    """``Q⁻ᵀ`` applied along ``dim``: ``Q⁻ᵀ x`` for rows, ``x Q⁻¹`` for columns."""
    if factor.dim() == 1:
        return x / (factor if dim == 1 or x.dim() == 1 else factor.unsqueeze(1))
    if x.dim() == 1:
        return torch.linalg.solve_triangular(factor.T, x.unsqueeze(1), upper=False).squeeze(1)
    if dim == 0:
        return torch.linalg.solve_triangular(factor.T, x, upper=False)
    return torch.linalg.solve_triangular(factor, x, upper=True, left=False)


class PSGDKron(CurvatureOptimizer):
    """PSGD, Kronecker-factored Newton-type preconditioner (see the module docstring).

    Args:
        model: the network.
        loss: its loss.
        lr: ``α`` (normalised: the preconditioner carries the scale).
        lr_preconditioner: ``μ``.
        momentum: ``β`` of the gradient's moving average.
        init_scale: ``s`` (0: from the first probe).
        max_size: dimensions above this get a diagonal factor.
        max_skew: a dimension more than this times the other one gets a diagonal factor.
        update_probability: chance of fitting the preconditioner on a step.
        params: parameters (default: the model's trainable parameters).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        loss: CurvatureLoss,
        lr: float = 0.01,
        lr_preconditioner: float = 0.1,
        momentum: float = 0.0,
        init_scale: float = 0.0,
        max_size: int = 4096,
        max_skew: float = 10.0,
        update_probability: float = 1.0,
        params: Iterable[torch.Tensor] | None = None,
    ) -> None:
        checks = [
            (lr > 0, f"lr must be positive, got {lr}"),
            (0 < lr_preconditioner < 1, f"lr_preconditioner must be in (0, 1), got "
                                        f"{lr_preconditioner}"),
            (0 <= momentum < 1, f"momentum must be in [0, 1), got {momentum}"),
            (init_scale >= 0, f"init_scale must be >= 0, got {init_scale}"),
            (max_size >= 1 and max_skew > 0, "max_size must be >= 1 and max_skew positive"),
            (0 < update_probability <= 1, "update_probability must be in (0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        super().__init__(model, loss=loss, params=params,
                         defaults={"lr": lr, "lr_preconditioner": lr_preconditioner,
                                   "momentum": momentum})
        self.init_scale = init_scale
        self.max_size = max_size
        self.max_skew = max_skew
        self.update_probability = update_probability
        self.seed_generator()

    def _factors(self, p: torch.Tensor, scale: float) -> list[torch.Tensor]:
        shape = (p.shape[0], p[0].numel()) if p.dim() >= 2 else tuple(p.shape)
        factor_scale = scale ** (1.0 / len(shape))
        factors = []
        for i, size in enumerate(shape):
            other = shape[1 - i] if len(shape) == 2 else 1
            if size == 1 or size > self.max_size or size > self.max_skew * other:
                factors.append(torch.full((size,), factor_scale, dtype=p.dtype, device=p.device))
            else:
                factors.append(factor_scale * torch.eye(size, dtype=p.dtype, device=p.device))
        return factors

    def curvature_step(self, *, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        params = self.parameters_list()
        fit = self.update_probability >= 1 or float(
            torch.rand((), generator=self.generator,
                       device=self.generator.device)) < self.update_probability
        with self.phase_timer.phase("forward"):
            loss = self.loss(self.model(inputs), targets)
        self.counters["forward_passes"] += 1
        with self.phase_timer.phase("backward"):
            grads = torch.autograd.grad(loss, params, create_graph=fit)
        self.counters["backward_passes"] += 1
        if fit:
            with self.phase_timer.phase("curvature"):
                probes = [torch.randn(p.shape, generator=self.generator, dtype=p.dtype,
                                      device=p.device)
                          for p in params]
                hvps = torch.autograd.grad(grads, params, probes)
                self._fit(params, probes, hvps)
            self.counters["hessian_products"] += 1
            self.counters["backward_passes"] += 1
        with self.phase_timer.phase("update"), torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                group, state = self._group(p), self.state[p]
                direction = g.detach()
                if group["momentum"] > 0:
                    if "momentum_buffer" in state:
                        state["momentum_buffer"].lerp_(direction, 1 - group["momentum"])
                    else:
                        state["momentum_buffer"] = (1 - group["momentum"]) * direction
                    direction = state["momentum_buffer"]
                p.sub_(self.precondition(p, direction), alpha=group["lr"])
        self.step_info["preconditioner_updated"] = float(fit)
        return loss.detach()

    def _group(self, p: torch.Tensor) -> dict:
        return next(g for g in self.param_groups if any(q is p for q in g["params"]))

    def precondition(self, p: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        """``P d = Q₁ᵀQ₁ D Q₂ᵀQ₂`` for the parameter ``p`` (identity before the first fit)."""
        state = self.state[p]
        if "Q0" not in state:
            return direction.clone()
        x = direction.reshape(state["Q0"].shape[0], -1) if p.dim() >= 2 else direction
        factors = [state[f"Q{i}"] for i in range(x.dim())]
        for dim, q in enumerate(factors):
            x = _apply(q, x, dim)
        for dim, q in enumerate(factors):
            x = _apply(q.T if q.dim() == 2 else q, x, dim)
        return x.reshape(direction.shape)

    @torch.no_grad()
    def _fit(self, params, probes, hvps) -> None:
        for p, v, h in zip(params, probes, hvps, strict=True):
            state = self.state[p]
            if "Q0" not in state:
                scale = self.init_scale or float((v * v).sum() / (h * h).sum()) ** 0.25
                for i, q in enumerate(self._factors(p, scale)):
                    state[f"Q{i}"] = q
            mu = self._group(p)["lr_preconditioner"]
            matrix = (lambda t: t.reshape(t.shape[0], -1)) if p.dim() >= 2 else (lambda t: t)
            a, b = matrix(h), matrix(v)
            factors = [state[f"Q{i}"] for i in range(a.dim())]
            for dim, q in enumerate(factors):
                a = _apply(q, a, dim)
                b = _solve_transposed(q, b, dim)
            tiny = torch.finfo(p.dtype).tiny
            for dim, q in enumerate(factors):
                if a.dim() == 1:
                    outer = q.dim() == 2
                    term_a = torch.outer(a, a) if outer else a * a
                    term_b = torch.outer(b, b) if outer else b * b
                elif q.dim() == 1:  # only the diagonal of a aᵀ (or aᵀa): no n × n product
                    other = 1 - dim
                    term_a, term_b = (a * a).sum(dim=other), (b * b).sum(dim=other)
                else:
                    term_a, term_b = (a @ a.T, b @ b.T) if dim == 0 else (a.T @ a, b.T @ b)
                if q.dim() == 1:
                    q.sub_(mu / ((term_a + term_b).abs().max() + tiny) * (term_a - term_b) * q)
                else:
                    q.sub_(mu / (spectral_norm_lower_bound(term_a + term_b) + tiny)
                           * torch.triu(term_a - term_b) @ q)


register_optimizer(
    OptimizerSpec(
        name="psgd-kron",
        description="PSGD: Kronecker-factored Newton-type preconditioner fitted on the Lie group "
                    "of triangular matrices from Hessian-vector products with random probes.",
        factory=curvature_optimizer_factory(PSGDKron),
        defaults={"lr": 0.01, "lr_preconditioner": 0.1, "momentum": 0.0, "init_scale": 0.0,
                  "max_size": 4096, "max_skew": 10.0, "update_probability": 1.0},
        search_space={"lr": LogUniform(1e-4, 1.0), "lr_preconditioner": LogUniform(1e-3, 0.5),
                      "momentum": Uniform(0.0, 0.99)},
        needs_curvature=True,
        reference="Li 2018, 'Preconditioned stochastic gradient descent' (IEEE TNNLS); Li 2019, "
                  "'Preconditioner on matrix Lie group for SGD' (ICLR). Defaults: the author's "
                  "psgd_torch Kron (Newton type, lr 0.01, preconditioner lr 0.1, '2nd' step "
                  "normaliser, max skew 10, automatic initial scale).",
    )
)
