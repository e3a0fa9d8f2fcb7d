"""Truncated (preconditioned) conjugate gradient on the damped Gauss-Newton system.

Solves ``(G + λI) d = −g`` approximately, where ``G`` is applied only through products
``v ↦ G v`` (see :mod:`curvebench.curvature`), and tracks the value of the quadratic model

    q(d) = gᵀd + ½ dᵀ(G + λI) d

which CG decreases monotonically. CG here carries the model's gradient
``ρ = ∇q(d) = g + (G + λI) d`` (the negated residual) and the negated search direction
``s``: both start as ``g`` itself, so a solve from zero copies nothing before its first
product, and the first update of ``ρ`` is written into that product. The model value is
available without another product: ``q(d) = ½ dᵀ(ρ + g)``.

The last iteration needs only ``sᵀ(G + λI)s`` (its step length), not the product: given
``quadratic_form`` (``v ↦ vᵀGv``, for a Gauss-Newton matrix ``‖H^½ J v‖²``, a forward-mode pass
without the reverse one), the iteration known in advance to be the last uses it instead, and
the final residual is not computed (NaN in ``residual_history``, and the tolerance is not
tested after it). ``q`` and ``dᵀ(G + λI)d`` of the result are then exact by
``q(d − αs) = q(d) − α sᵀρ + ½ α² sᵀ(G + λI)s`` and ``dᵀ(G + λI)d = 2 (q(d) − gᵀd)``.

Stopping (whichever comes first): ``max_iterations``; the relative residual
``‖r‖ / ‖g‖ ≤ tolerance``; non-positive curvature ``pᵀ(G + λI)p ≤ 0`` along a search direction;
and, optionally, Martens' relative-progress rule: stop at iteration ``i`` when
``i > k`` and ``q_i < 0`` and ``(q_i − q_{i−k}) / q_i < k ε`` with ``k = max(10, ⌈0.1 i⌉)``.

Host synchronisation: each of those tests needs a scalar on the host, and on a GPU every such
read stalls the queue. Without the relative-progress rule, a preconditioner or a warm start,
the tests left are the tolerance and non-positive curvature, which a truncated solve of a few
iterations rarely meets before its last one; CG then runs all ``max_iterations`` with its
scalars (``α``, ``β``, ``rᵀr``) as 0-dimensional tensors on the device and reads every scalar
it reports in one transfer at the end. If that read shows a stopping condition before the last
iteration, the pass is discarded (``on_restart``) and replayed with a test after every
product, so the result is the same either way; only that solve pays its products twice. This
is done with tolerance 0 everywhere (only a zero residual or non-positive curvature stops such
a solve early, which a healthy one never meets) and with a positive tolerance where host reads
stall (:func:`host_reads_stall`: not on a CPU, where a read costs nothing and a replay would
only waste products). Measured with SGN's defaults (tolerance 10⁻⁶, 10 iterations in the
warm-up steps, 3 after): 3 of 150 solves on ``digits-mlp`` and 4 of 150 on ``mnist1d-cnn`` met
the tolerance early, all in warm-up steps, and were replayed.

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

__all__ = ["CGResult", "conjugate_gradient", "host_reads_stall", "StopReason"]

StopReason = Literal["max_iterations", "tolerance", "relative_progress", "nonpositive_curvature",
                     "zero_gradient"]


@dataclass(frozen=True)
class CGResult:
    """Outcome of :func:`conjugate_gradient`.

    Attributes:
        direction: the approximate solution ``d`` (flat tensor).
        iterations: CG iterations done (= matrix-vector products, excluding the one a warm start
            costs).
        products: all products with ``G`` (iterations, plus one for a non-zero initial guess,
            less the last iteration when it used ``quadratic_form``).
        residual_history: relative residuals ``‖r_i‖ / ‖g‖`` for ``i = 0 … iterations`` (the
            last NaN when the last iteration used ``quadratic_form``).
        model_values: quadratic-model values ``q(d_i)`` for ``i = 0 … iterations`` (by CG's
            recurrence ``q_{i+1} = q_i − ½ α_i r_iᵀz_i``; the last one recomputed exactly).
        quadratic_value: ``q(d)`` of the returned direction.
        curvature: ``dᵀ(G + λI)d`` of the returned direction.
        stop_reason: why CG stopped.
        warm_started: whether CG started from the given initial guess (it is dropped when
            ``q(d₀) ≥ 0``).
        quadratic_forms: 1 when the last iteration used ``quadratic_form`` instead of a
            product, else 0.
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
    quadratic_forms: int = 0

    @property
    def relative_residual(self) -> float:
        """The final ``‖r‖ / ‖g‖`` (NaN when the last iteration used ``quadratic_form``)."""
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
    on_step: Callable[[float | torch.Tensor], None] | None = None,
    on_restart: Callable[[], None] | None = None,
    quadratic_form: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> CGResult:
    """Approximately solve ``(G + λI) d = −g`` by (preconditioned) conjugate gradient.

    Args:
        matvec: ``v ↦ G v`` for flat vectors (``G`` symmetric positive semi-definite). CG
            may overwrite the products it is given (one that shares memory with ``v`` is
            copied first); each ``v`` is CG's own and changes after the call. ``gradient`` and
            ``initial`` are never written.
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
        on_step: called as ``on_step(α)`` whenever the iterate moves, ``d ← d + α v``, where
            ``v`` is the vector of the latest ``matvec`` call (``α = 1`` when a warm start is
            accepted): a caller that keeps something linear in ``v`` from each product (e.g.
            the first layer's output tangent) can accumulate it for ``d`` without another
            product. ``α`` is a float, or a 0-dimensional tensor on the solve without host
            synchronisation (see the module docstring), which needs ``on_restart`` too.
        on_restart: called when CG discards the iterations done so far, before replaying
            them with a test after each (see the module docstring); a caller accumulating
            from ``on_step`` starts again from zero. Without it, a solve with ``on_step``
            tests after every product.
        quadratic_form: ``v ↦ vᵀGv`` (a 0-dimensional tensor; ``G`` as ``matvec``'s, without
            ``damping``), for the iteration that reaching ``max_iterations`` makes the last
            one: it then costs this instead of a product, and the final residual is unknown
            (see the module docstring). ``on_step`` after it refers to this call's ``v``.

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
    if initial is not None and initial.shape != gradient.shape:
        raise ValueError("initial guess must be shaped like the gradient")

    def apply(v: torch.Tensor) -> torch.Tensor:  # a tensor CG may overwrite
        product = matvec(v)
        if damping:
            return product.add(v, alpha=damping)
        return product.clone() if _shares_memory(product, v) else product

    last = None if quadratic_form is None else (
        lambda v: quadratic_form(v) + damping * torch.dot(v, v) if damping else quadratic_form(v))

    if ((tolerance == 0 or (tolerance < 1 and host_reads_stall(gradient.device)))
            and not relative_progress and preconditioner is None and initial is None
            and max_iterations > 0 and (on_step is None or on_restart is not None)):
        result = _unsynchronised(apply, gradient=gradient, max_iterations=max_iterations,
                                 tolerance=tolerance, on_step=on_step, last=last)
        if result is not None:
            return result
        if on_restart is not None:
            on_restart()
    return _synchronised(apply, gradient=gradient, max_iterations=max_iterations,
                         tolerance=tolerance, initial=initial, preconditioner=preconditioner,
                         relative_progress=relative_progress, progress_epsilon=progress_epsilon,
                         on_step=on_step, last=last)


def host_reads_stall(device: torch.device) -> bool:
    """Whether reading a value of ``device`` on the host waits for its queued work (every
    device but the CPU)."""
    return device.type != "cpu"


def _unsynchronised(apply: Callable[[torch.Tensor], torch.Tensor], *, gradient: torch.Tensor,
                    max_iterations: int, tolerance: float,
                    on_step: Callable[[torch.Tensor], None] | None,
                    last: Callable[[torch.Tensor], torch.Tensor] | None) -> CGResult | None:
    """``max_iterations`` CG iterations from zero, unpreconditioned, with no test in between.

    The scalars stay on the device and are read in one transfer at the end; the tests the
    synchronised loop makes after each product are replayed on them. Returns ``None`` when one
    of them would have stopped CG before the last iteration (then the caller replays it).
    ``last``: ``v ↦ vᵀ(G + λI)v`` for the last iteration, in place of a product.
    """
    g_squared = torch.dot(gradient, gradient)
    rho = s = gradient  # ∇q(0) and the negated first direction: g, until they are updated
    x: torch.Tensor | None = None
    rz = g_squared
    curvatures: list[torch.Tensor] = []
    squared_residuals: list[torch.Tensor] = []
    before_last: list[torch.Tensor] = []  # sᵀρ, dᵀρ, dᵀg before a last iteration by `last`
    for iteration in range(1, max_iterations + 1):
        by_form = last is not None and iteration == max_iterations
        a_s = None if by_form else apply(s)
        curvature = last(s) if a_s is None else torch.dot(s, a_s)
        step = rz / curvature
        minus = step.neg()  # d ← d − step·s and ρ ← ρ − step·(G + λI)s
        curvatures.append(curvature)
        if a_s is None:
            before_last = [torch.dot(s, rho)] + ([] if x is None else [torch.dot(x, rho),
                                                                       torch.dot(x, gradient)])
        x = torch.mul(s, minus) if x is None else x.addcmul_(s, minus)
        if on_step is not None:
            on_step(minus)
        if a_s is None:
            break
        rho = (torch.addcmul(gradient, a_s, minus, out=a_s) if rho is gradient
               else rho.addcmul_(a_s, minus))
        rz_new = torch.dot(rho, rho)
        squared_residuals.append(rz_new)
        if iteration < max_iterations:
            s = (torch.addcmul(rho, s, rz_new / rz) if s is gradient
                 else torch.addcmul(rho, s, rz_new / rz, out=s))
            rz = rz_new
    assert x is not None
    tail = before_last if before_last else [torch.dot(x, rho)]
    scalars = torch.stack([g_squared, *curvatures, *squared_residuals, *tail,
                           torch.dot(x, gradient)]).tolist()  # the one host synchronisation
    g_squared_value, x_g = scalars[0], scalars[-1]
    if g_squared_value == 0.0:
        return None
    squared_values = scalars[1 + max_iterations:1 + max_iterations + len(squared_residuals)]
    tail_values = scalars[1 + max_iterations + len(squared_residuals):-1]
    g_norm = math.sqrt(g_squared_value)
    rz_value = g_squared_value
    residuals, values = [math.sqrt(rz_value) / g_norm], [0.0]
    value = 0.0
    stop: StopReason = "max_iterations"
    for iteration, curvature_value in enumerate(scalars[1:1 + max_iterations], start=1):
        if not curvature_value > 0 or not math.isfinite(curvature_value):
            return None
        value -= 0.5 * (rz_value / curvature_value) * rz_value
        values.append(value)
        if iteration > len(squared_values):  # the last iteration, by `last`
            residuals.append(math.nan)
            break
        rz_new_value = squared_values[iteration - 1]
        residuals.append(math.sqrt(max(rz_new_value, 0.0)) / g_norm)
        if residuals[-1] <= tolerance:
            if iteration < max_iterations:
                return None
            stop = "tolerance"
        rz_value = rz_new_value
    if before_last:
        quadratic_value = _moved_value(tail_values, step=rz_value / curvature_value,
                                       curvature=curvature_value)
        curvature_of_x = 2.0 * (quadratic_value - x_g)
    else:
        quadratic_value, curvature_of_x = 0.5 * (tail_values[0] + x_g), tail_values[0] - x_g
    values[-1] = quadratic_value
    return CGResult(direction=x, iterations=max_iterations,
                    products=max_iterations - bool(before_last),
                    residual_history=tuple(residuals), model_values=tuple(values),
                    quadratic_value=quadratic_value, curvature=curvature_of_x, stop_reason=stop,
                    quadratic_forms=int(bool(before_last)))


def _moved_value(before: list[float], *, step: float, curvature: float) -> float:
    """``q(d − α s) = q(d) − α sᵀρ + ½ α² sᵀ(G + λI)s`` from ``before = [sᵀρ, dᵀρ, dᵀg]``
    (``[sᵀρ]`` for ``d = 0``), with ``q(d) = ½ dᵀ(ρ + g)``."""
    s_rho, *d_parts = before
    return 0.5 * sum(d_parts) - step * s_rho + 0.5 * step * step * curvature


def _synchronised(apply: Callable[[torch.Tensor], torch.Tensor], *, gradient: torch.Tensor,
                  max_iterations: int, tolerance: float, initial: torch.Tensor | None,
                  preconditioner: torch.Tensor | None, relative_progress: bool,
                  progress_epsilon: float, on_step: Callable[[float], None] | None,
                  last: Callable[[torch.Tensor], torch.Tensor] | None) -> CGResult:
    """CG with the stopping tests after every product (one host read each); ``last``:
    ``v ↦ vᵀ(G + λI)v`` for the last iteration, in place of a product."""

    def precondition(rho: torch.Tensor) -> torch.Tensor:
        return rho / preconditioner if preconditioner is not None else rho

    g_squared = float(gradient @ gradient)
    g_norm = math.sqrt(g_squared)
    if g_norm == 0.0:
        return CGResult(direction=torch.zeros_like(gradient), iterations=0, products=0,
                        residual_history=(0.0,), model_values=(0.0,), quadratic_value=0.0,
                        curvature=0.0, stop_reason="zero_gradient")
    # Every pass over a parameter-sized vector costs about as much as a small layer, so the
    # loop below allocates nothing but the products, the iterate and (once) the direction, and
    # reads each vector as few times as it can: x starts as None (zero) until the first step,
    # ρ and s start as g itself, ρ is then updated in place, ‖ρ‖² is ρᵀζ without a
    # preconditioner, and q is updated by a scalar recurrence.
    products = quadratic_forms = 0
    before_last: list[float] = []  # sᵀρ, dᵀρ, dᵀg before a last iteration by `last`
    warm_started = False
    x: torch.Tensor | None = None
    rho = gradient  # ∇q(x) = g + (G + λI) x, never written while it is g
    value = 0.0
    if initial is not None:
        a_initial = apply(initial)
        products += 1
        rho_initial = a_initial.add_(gradient)
        initial_value = 0.5 * (float(initial @ rho_initial) + float(initial @ gradient))
        if initial_value < 0:
            x, rho, value = initial.clone(), rho_initial, initial_value
            warm_started = True
            if on_step is not None:
                on_step(1.0)

    zeta = precondition(rho)
    s = zeta.clone() if zeta is rho and warm_started else zeta  # the negated direction
    rz = g_squared if zeta is rho and not warm_started else float(rho @ zeta)
    rho_norm = math.sqrt(rz) if preconditioner is None else float(rho.norm())
    residuals = [rho_norm / g_norm]
    values = [value]
    stop: StopReason = "max_iterations"
    iterations = 0
    if residuals[0] <= tolerance:
        stop = "tolerance"
    else:
        while iterations < max_iterations:
            if last is not None and iterations + 1 == max_iterations:
                a_s = None
                quadratic_forms += 1
                curvature, *before_last = torch.stack(
                    [last(s), torch.dot(s, rho)]
                    + ([] if x is None else [torch.dot(x, rho), torch.dot(x, gradient)])).tolist()
            else:
                a_s = apply(s)
                products += 1
                curvature = float(s @ a_s)
            if not curvature > 0 or not math.isfinite(curvature):
                stop = "nonpositive_curvature"
                before_last = []
                break
            step = rz / curvature
            x = torch.mul(s, -step) if x is None else x.add_(s, alpha=-step)
            if on_step is not None:
                on_step(-step)
            if a_s is None:  # the last iteration, by `last`: ρ is not updated
                iterations += 1
                value = _moved_value(before_last, step=step, curvature=curvature)
                values.append(value)
                residuals.append(math.nan)
                break
            rho = (torch.add(gradient, a_s, alpha=-step, out=a_s) if rho is gradient
                   else rho.add_(a_s, alpha=-step))
            iterations += 1
            # q(x − αs) = q(x) − α sᵀρ + ½ α² sᵀAs and sᵀρ = ρᵀζ along CG's directions.
            value -= 0.5 * step * rz
            values.append(value)
            zeta = precondition(rho)
            rz_new = float(rho @ zeta)
            rho_norm = (math.sqrt(max(rz_new, 0.0)) if preconditioner is None
                        else float(rho.norm()))
            residuals.append(rho_norm / g_norm)
            if residuals[-1] <= tolerance:
                stop = "tolerance"
                break
            if relative_progress and _stalled(values, iterations, progress_epsilon):
                stop = "relative_progress"
                break
            if iterations == max_iterations:
                break
            s = (torch.add(zeta, s, alpha=rz_new / rz) if s is gradient
                 else torch.add(zeta, s, alpha=rz_new / rz, out=s))
            rz = rz_new
    if x is None:
        x = torch.zeros_like(gradient)
        values[-1] = quadratic_value = curvature_of_x = 0.0
    elif before_last:  # ρ is that of the iterate before the last move; q came with the move
        quadratic_value = value
        curvature_of_x = 2.0 * (quadratic_value - float(x @ gradient))
    else:
        # Exact values of the returned direction (the recurrence drifts by rounding):
        # q(d) = ½ dᵀ(ρ + g) and dᵀ(G+λI)d = dᵀ(ρ − g), since (G+λI)d = ρ − g.
        x_rho, x_g = float(x @ rho), float(x @ gradient)
        quadratic_value, curvature_of_x = 0.5 * (x_rho + x_g), x_rho - x_g
        values[-1] = quadratic_value
    return CGResult(direction=x, iterations=iterations, products=products,
                    residual_history=tuple(residuals), model_values=tuple(values),
                    quadratic_value=quadratic_value, curvature=curvature_of_x,
                    stop_reason=stop, warm_started=warm_started,
                    quadratic_forms=quadratic_forms)


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` are views of the same storage (a matvec returning its input)."""
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _stalled(values: list[float], iteration: int, epsilon: float) -> bool:
    """Martens' 2010 rule: too little relative decrease of ``q`` over the last ``k`` iterations."""
    window = max(10, math.ceil(0.1 * iteration))
    if iteration <= window:
        return False
    current, before = values[iteration], values[iteration - window]
    return current < 0 and (current - before) / current < window * epsilon
