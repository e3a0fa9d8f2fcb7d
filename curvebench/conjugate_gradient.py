"""Truncated (preconditioned) conjugate gradient on the damped Gauss-Newton system.

Solves ``(G + λI) d = −g`` approximately, where ``G`` is applied only through products
``v ↦ G v`` (see :mod:`curvebench.curvature`), and tracks the value of the quadratic model

    q(d) = gᵀd + ½ dᵀ(G + λI) d

which CG decreases monotonically. With the residual ``r = −g − (G + λI) d`` the model value
is available without another product: ``q(d) = −½ dᵀ(r − g)``.

Stopping (whichever comes first): ``max_iterations``; the relative residual
``‖r‖ / ‖g‖ ≤ tolerance``; non-positive curvature ``pᵀ(G + λI)p ≤ 0`` along a search direction;
and, optionally, Martens' relative-progress rule: stop at iteration ``i`` when
``i > k`` and ``q_i < 0`` and ``(q_i − q_{i−k}) / q_i < k ε`` with ``k = max(10, ⌈0.1 i⌉)``.

Reference: Hestenes & Stiefel 1952; Nocedal & Wright 2006, "Numerical Optimization",
Algorithm 5.3 (preconditioned CG); Martens 2010, "Deep learning via Hessian-free
optimization", Section 4.4 (stopping rule, warm start).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["CGResult", "conjugate_gradient", "StopReason"]

StopReason = Literal["max_iterations", "tolerance", "relative_progress", "nonpositive_curvature",
                     "zero_gradient"]


@dataclass(frozen=True)
class CGResult:
    """Outcome of :func:`conjugate_gradient`.

    Attributes:
        direction: the approximate solution ``d`` (flat tensor).
        iterations: CG iterations done (= matrix-vector products, excluding the one a warm start
            costs).
        products: all products with ``G`` (iterations, plus one for a non-zero initial guess).
        residual_history: relative residuals ``‖r_i‖ / ‖g‖`` for ``i = 0 … iterations``.
        model_values: quadratic-model values ``q(d_i)`` for ``i = 0 … iterations``.
        quadratic_value: ``q(d)`` of the returned direction.
        curvature: ``dᵀ(G + λI)d`` of the returned direction.
        stop_reason: why CG stopped.
        warm_started: whether CG started from the given initial guess (it is dropped when
            ``q(d₀) ≥ 0``).
    """

    direction: torch.Tensor
    iterations: int
    products: int
    residual_history: tuple[float, ...]
    model_values: tuple[float, ...]
    quadratic_value: float
    curvature: float
    stop_reason: StopReason
    warm_started: bool = False

    @property
    def relative_residual(self) -> float:
        """The final ``‖r‖ / ‖g‖``."""
        return self.residual_history[-1]


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    *,
    gradient: torch.Tensor,
    damping: float = 0.0,
    max_iterations: int,
    tolerance: float = 0.0,
    initial: torch.Tensor | None = None,
    preconditioner: torch.Tensor | None = None,
    relative_progress: bool = False,
    progress_epsilon: float = 5e-4,
) -> CGResult:
    """Approximately solve ``(G + λI) d = −g`` by (preconditioned) conjugate gradient.

    Args:
        matvec: ``v ↦ G v`` for flat vectors (``G`` symmetric positive semi-definite).
        gradient: ``g`` (flat); the right-hand side is ``−g``.
        damping: ``λ ≥ 0`` added to the diagonal.
        max_iterations: at most this many iterations (products with ``G``).
        tolerance: stop when ``‖r‖ / ‖g‖ ≤ tolerance`` (0 disables).
        initial: warm start ``d₀`` (e.g. the previous step's direction times a decay);
            costs one extra product. Ignored if it does not decrease ``q`` below 0 — then
            ``d₀ = 0``.
        preconditioner: diagonal ``M`` (flat, positive); CG runs on ``M⁻¹(G + λI)``.
        relative_progress: apply Martens' relative-progress stopping rule.
        progress_epsilon: ``ε`` of that rule.

    Returns:
        A :class:`CGResult`.

    Raises:
        ValueError: negative damping or tolerance, ``max_iterations < 0``, shape mismatch or a
            non-positive preconditioner.
    """
    if damping < 0 or tolerance < 0 or max_iterations < 0:
        raise ValueError("damping, tolerance and max_iterations must be non-negative")
    if gradient.dim() != 1:
        raise ValueError("gradient must be a flat vector")
    if preconditioner is not None and (
        preconditioner.shape != gradient.shape or not bool((preconditioner > 0).all())
    ):
        raise ValueError("preconditioner must be a positive vector shaped like the gradient")

    def apply(v: torch.Tensor) -> torch.Tensor:
        product = matvec(v)
        return product.add(v, alpha=damping) if damping else product

    g_norm = float(gradient.norm())
    products = 0
    warm_started = False
    x = torch.zeros_like(gradient)
    r = -gradient.clone()
    if g_norm == 0.0:
        return CGResult(direction=x, iterations=0, products=0, residual_history=(0.0,),
                        model_values=(0.0,), quadratic_value=0.0, curvature=0.0,
                        stop_reason="zero_gradient")
    if initial is not None:
        if initial.shape != gradient.shape:
            raise ValueError("initial guess must be shaped like the gradient")
        a_initial = apply(initial)
        products += 1
        r_initial = -gradient - a_initial
        # q(d0) = -0.5 d0ᵀ(r0 - g)
        if float(initial @ (r_initial - gradient)) > 0:
            x, r = initial.clone(), r_initial
            warm_started = True

    def model_value(x: torch.Tensor, r: torch.Tensor) -> float:
        return -0.5 * float(x @ (r - gradient))

    z = r / preconditioner if preconditioner is not None else r
    p = z.clone()
    rz = float(r @ z)
    residuals = [float(r.norm()) / g_norm]
    values = [model_value(x, r)]
    stop: StopReason = "max_iterations"
    iterations = 0
    if residuals[0] <= tolerance:
        stop = "tolerance"
    else:
        while iterations < max_iterations:
            ap = apply(p)
            products += 1
            curvature = float(p @ ap)
            if not curvature > 0 or not math.isfinite(curvature):
                stop = "nonpositive_curvature"
                break
            step = rz / curvature
            x.add_(p, alpha=step)
            r.sub_(ap, alpha=step)
            iterations += 1
            residuals.append(float(r.norm()) / g_norm)
            values.append(model_value(x, r))
            if residuals[-1] <= tolerance:
                stop = "tolerance"
                break
            if relative_progress and _stalled(values, iterations, progress_epsilon):
                stop = "relative_progress"
                break
            z = r / preconditioner if preconditioner is not None else r
            rz_new = float(r @ z)
            p.mul_(rz_new / rz).add_(z)
            rz = rz_new
    # dᵀ(G+λI)d = -dᵀ(r + g) since (G+λI)d = -g - r
    curvature_of_x = -float(x @ (r + gradient))
    return CGResult(direction=x, iterations=iterations, products=products,
                    residual_history=tuple(residuals), model_values=tuple(values),
                    quadratic_value=values[-1], curvature=curvature_of_x, stop_reason=stop,
                    warm_started=warm_started)


def _stalled(values: list[float], iteration: int, epsilon: float) -> bool:
    """Martens' 2010 rule: too little relative decrease of ``q`` over the last ``k`` iterations."""
    window = max(10, math.ceil(0.1 * iteration))
    if iteration <= window:
        return False
    current, before = values[iteration], values[iteration - window]
    return current < 0 and (current - before) / current < window * epsilon
