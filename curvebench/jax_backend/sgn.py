"""SGN in JAX: one jit-compiled step with GGN products, truncated CG and the line search.

The same algorithm, rules and defaults as the torch :class:`curvebench.optimizers.sgn.
GaussNewtonCG` registered as ``sgn`` (see that module for the maths): damped system
``(G + ωI + λI) d = −g`` solved by at most ``k`` CG iterations from zero (``k`` of the warm-up
during the first ``warmup_steps`` steps), relative-residual and non-positive-curvature stops,
reduction ratio ``r`` with the Levenberg–Marquardt damping rule and floor, Armijo backtracking,
weight decay and bias-corrected gradient momentum. Everything, CG and backtracking included,
runs inside one compiled function (``lax.while_loop``), so a step costs no host round trip.

Settings are read from the torch registry at build time (:func:`sgn_settings` builds the
torch optimizer on a one-weight model and reads its ``param_groups[0]``), so defaults and fixed
knobs (Armijo constant, backtracking factor, …) cannot drift between the backends. Not
supported in JAX yet (they raise): ``cg_relative_progress`` and ``warm_start_decay > 0`` (the
``hf`` variant). As in torch, CG's last iteration takes ``sᵀ(G + λI)s`` from ``J s`` alone
(no reverse pass) except on the steps that record the final residual (``residual_every``); the
choice is a ``lax.cond`` inside the CG loop, so only the branch taken runs.

Reference: Gargiani, Zanelli, Diehl, Hutter 2020, "On the promise of the stochastic generalized
Gauss-Newton method for training DNNs" (arXiv 2006.02409).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from curvebench.jax_backend.curvature import linearize
from curvebench.jax_backend.losses import JaxLoss
from curvebench.jax_backend.training import Update

__all__ = ["sgn_settings", "sgn_state", "sgn_update", "conjugate_gradient_jax"]


def sgn_settings(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The torch ``sgn`` spec's effective settings with ``overrides``, fixed knobs included.

    Raises:
        HyperparameterError: unknown, ill-typed or out-of-range values (the torch checks).
        ValueError: settings the JAX step does not implement.
    """
    from torch import nn

    from curvebench.losses import MSELoss
    from curvebench.optimizers import get_optimizer

    torch_optimizer = get_optimizer("sgn").build(model=nn.Linear(1, 1), loss=MSELoss(),
                                                 hyperparameters=overrides)
    settings = {key: value for key, value in torch_optimizer.param_groups[0].items()
                if key != "params"}
    if settings["cg_relative_progress"] or settings["warm_start_decay"] > 0:
        raise ValueError("JAX SGN does not implement cg_relative_progress or warm starts")
    return settings


def sgn_state(params: Any, settings: Mapping[str, Any]) -> dict[str, jax.Array]:
    """The initial state: step count, damping ``λ₀`` and the gradient average."""
    flat, _ = ravel_pytree(params)
    return {"step": jnp.zeros((), jnp.int32),
            "damping": jnp.asarray(settings["damping"], flat.dtype),
            "gradient_average": jnp.zeros_like(flat)}


def conjugate_gradient_jax(matvec: Callable[[jax.Array], jax.Array], *, gradient: jax.Array,
                           damping: jax.Array, max_iterations: jax.Array, tolerance: float,
                           quadratic_form: Callable[[jax.Array], jax.Array] | None = None,
                           by_form: jax.Array | bool = False) -> dict[str, jax.Array]:
    """Truncated CG on ``(A + λI) d = −g`` from ``d = 0``, as :func:`curvebench.
    conjugate_gradient.conjugate_gradient` without warm start, preconditioner or
    relative-progress rule.

    ``quadratic_form`` (``v ↦ vᵀAv``) takes the place of the product in the iteration that
    reaching ``max_iterations`` makes the last one, where ``by_form`` (traced) is true: the
    final residual is then NaN and ``q``, ``dᵀ(A+λI)d`` come from the move (as in torch).

    Returns:
        ``direction``, ``iterations``, ``products``, ``forms`` (0 or 1: the last iteration by
        ``quadratic_form``), ``relative_residual``, ``quadratic_value``
        (``q(d) = gᵀd + ½dᵀ(A+λI)d``) and ``curvature`` (``dᵀ(A+λI)d``).
    """
    g_norm = jnp.linalg.norm(gradient)
    zero_gradient = g_norm == 0
    safe_norm = jnp.where(zero_gradient, 1.0, g_norm)
    r = -gradient
    residual = jnp.linalg.norm(r) / safe_norm
    count, zero = jnp.zeros((), jnp.int32), jnp.zeros((), gradient.dtype)
    carry = {"x": jnp.zeros_like(gradient), "r": r, "p": r, "rz": r @ r,
             "iterations": count, "products": count, "forms": count,
             "residual": jnp.where(zero_gradient, 0.0, residual), "value": zero,
             "done": zero_gradient | (residual <= tolerance)}

    def product(c: dict[str, jax.Array]) -> tuple[jax.Array, ...]:
        ap = matvec(c["p"]) + damping * c["p"]
        return ap, c["p"] @ ap, zero, zero

    def form(c: dict[str, jax.Array]) -> tuple[jax.Array, ...]:
        # No (A+λI)p, so r is not updated; q(x) = −½ xᵀ(r − g) and pᵀr for q after the move.
        p = c["p"]
        return (jnp.zeros_like(p), quadratic_form(p) + damping * (p @ p),
                -0.5 * (c["x"] @ (c["r"] - gradient)), p @ c["r"])

    def condition(c: dict[str, jax.Array]) -> jax.Array:
        return (~c["done"]) & (c["iterations"] < max_iterations)

    def body(c: dict[str, jax.Array]) -> dict[str, jax.Array]:
        last = (jnp.asarray(by_form) & (c["iterations"] + 1 == max_iterations)
                if quadratic_form is not None else jnp.asarray(False))
        ap, curvature, value, p_r = (jax.lax.cond(last, form, product, c)
                                     if quadratic_form is not None else product(c))
        bad = ~(curvature > 0) | ~jnp.isfinite(curvature)
        step = c["rz"] / curvature
        x = c["x"] + step * c["p"]
        r = c["r"] - step * ap
        residual = jnp.where(last, jnp.nan, jnp.linalg.norm(r) / safe_norm)
        rz = r @ r
        p = (rz / c["rz"]) * c["p"] + r
        value = value - step * p_r + 0.5 * step * step * curvature  # q(x + αp), ∇q(x) = −r
        keep = lambda new, old: jnp.where(bad, old, new)  # noqa: E731
        return {"x": keep(x, c["x"]), "r": keep(r, c["r"]), "p": keep(p, c["p"]),
                "rz": keep(rz, c["rz"]), "iterations": c["iterations"] + (~bad),
                "products": c["products"] + (~last), "forms": c["forms"] + last,
                "residual": keep(residual, c["residual"]), "value": value,
                "done": bad | last | (residual <= tolerance)}

    c = jax.lax.while_loop(condition, body, carry)
    x, r = c["x"], c["r"]
    moved = ~jnp.isnan(c["residual"])  # else the last move was by the form: ρ is stale
    quadratic_value = jnp.where(moved, -0.5 * (x @ (r - gradient)), c["value"])
    curvature = jnp.where(moved, -(x @ (r + gradient)), 2.0 * (quadratic_value - gradient @ x))
    return {"direction": x, "iterations": c["iterations"], "products": c["products"],
            "forms": c["forms"], "relative_residual": c["residual"],
            "quadratic_value": quadratic_value, "curvature": curvature}


def _update_damping(damping: jax.Array, ratio: jax.Array, minimum: float) -> jax.Array:
    """The torch rule :func:`curvebench.optimizers.sgn.update_damping`, traced."""
    increased = 1.5 * damping
    decreased = jnp.maximum(2.0 / 3.0 * damping, minimum)
    return jnp.where(~jnp.isfinite(ratio) | (ratio < 0.25), increased,
                     jnp.where(ratio > 0.75, decreased, damping))


def sgn_update(*, apply: Callable[[Any, jax.Array], jax.Array], loss: JaxLoss,
               settings: Mapping[str, Any],
               reverse_apply: Callable[[Any, jax.Array], jax.Array] | None = None) -> Update:
    """The pure SGN update ``(params, state, x, y) -> (params, state, loss, info)``.

    ``reverse_apply``: ``apply`` with reverse-mode rules XLA runs fast inside the CG loop
    (``compile_architecture(…, canonical_transposes=True)``; see :func:`curvebench.
    jax_backend.curvature.linearize`). Without it a CNN's products inside the loop run
    through XLA CPU's generic convolution loop (measured: mnist1d-cnn's step 7× a torch step).
    """
    h = dict(settings)
    decay = h["weight_decay"]
    beta = h["momentum"]

    def update(params: Any, state: dict[str, jax.Array], inputs: jax.Array,
               targets: jax.Array):
        theta, unravel = ravel_pytree(params)

        def model(flat: jax.Array, x: jax.Array) -> jax.Array:
            return apply(unravel(flat), x)

        reverse_model = None if reverse_apply is None else (
            lambda flat, x: reverse_apply(unravel(flat), x))
        lin = linearize(model, loss=loss, params=theta, inputs=inputs, targets=targets,
                        reverse_apply=reverse_model)
        grad = lin.gradient + decay * theta if decay else lin.gradient
        step = state["step"] + 1
        average = state["gradient_average"]
        rhs = grad
        if beta:
            average = beta * average + (1 - beta) * grad
            rhs = average / (1 - beta ** step.astype(theta.dtype))

        def matvec(vector: jax.Array) -> jax.Array:
            product = lin.ggn_vector_product(vector)
            return product + decay * vector if decay else product

        def quadratic_form(vector: jax.Array) -> jax.Array:  # vᵀ(G + ωI)v from J v alone
            jv = lin.jvp(vector)
            value = jnp.sum(jv * loss.hessian_vector_product(lin.output, jv))
            return value + decay * (vector @ vector) if decay else value

        damping = state["damping"]
        iterations = jnp.where(step <= h["warmup_steps"], h["warmup_cg_iterations"],
                               h["cg_iterations"])
        cg = conjugate_gradient_jax(matvec, gradient=rhs, damping=damping,
                                    max_iterations=iterations, tolerance=h["cg_tolerance"],
                                    quadratic_form=quadratic_form,
                                    by_form=(step - 1) % h["residual_every"] != 0)
        direction = cg["direction"]
        f0 = lin.loss_value + (0.5 * decay * (theta @ theta) if decay else 0.0)
        slope = cg["quadratic_value"] - 0.5 * cg["curvature"]

        def evaluate(alpha: jax.Array) -> jax.Array:
            trial = theta + alpha * direction
            value = loss.value(model(trial, inputs), targets)
            return value + 0.5 * decay * (trial @ trial) if decay else value

        alpha = jnp.asarray(h["step_size"], theta.dtype)
        ratio = jnp.asarray(jnp.nan, theta.dtype)
        evaluations = jnp.zeros((), jnp.int32)
        new_damping = damping
        if h["adaptive_damping"] or h["line_search"]:
            first = evaluate(alpha)
            evaluations = evaluations + 1
            predicted = alpha * slope + 0.5 * alpha * alpha * cg["curvature"]
            ratio = jnp.where(predicted < 0, (first - f0) / jnp.where(predicted < 0, predicted,
                                                                      -1.0), -jnp.inf)
            if h["adaptive_damping"]:
                new_damping = _update_damping(damping, ratio, h["damping_min"])
            if h["line_search"]:
                c, factor = h["armijo_c"], h["backtrack_factor"]

                def insufficient(carry: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
                    a, current, backtracks = carry
                    return (~(current <= f0 + c * a * slope)) & (backtracks < h["max_backtracks"])

                def shrink(carry: tuple[jax.Array, jax.Array, jax.Array]):
                    a, _, backtracks = carry
                    a = a * factor
                    return a, evaluate(a), backtracks + 1

                alpha, _, backtracks = jax.lax.while_loop(
                    insufficient, shrink, (alpha, first, jnp.zeros((), jnp.int32)))
                evaluations = evaluations + backtracks
        new_state = {"step": step, "damping": new_damping, "gradient_average": average}
        info = {"cg_iterations": cg["iterations"], "ggn_products": cg["products"],
                "jacobian_vector_products": cg["forms"],
                "cg_relative_residual": cg["relative_residual"], "damping": damping,
                "step_size": alpha, "reduction_ratio": ratio,
                "quadratic_model": cg["quadratic_value"], "function_evaluations": evaluations}
        return unravel(theta + alpha * direction), new_state, lin.loss_value, info

    return update
