"""The network linearised on one batch in JAX: gradient and GGN-vector products.

``G v = Jᵀ H J v`` with ``J`` the Jacobian of the network output with respect to the
parameters (forward mode: ``jax.linearize``), ``H`` the loss's closed-form output Hessian
(:mod:`curvebench.jax_backend.losses`) and ``Jᵀ`` the transpose of the same linear map
(``jax.linear_transpose``), so one forward pass serves the gradient and every product; all of
it traces into the caller's ``jit``. Given ``reverse_apply`` (the same function with reverse-mode
rules that XLA runs fast inside loops, see :func:`curvebench.jax_backend.models.
compile_architecture`), ``Jᵀ`` is its ``jax.vjp`` instead; XLA merges the two forward passes.

Reference: Schraudolph 2002, "Fast curvature matrix-vector products for second-order gradient
descent"; the torch version is :class:`curvebench.curvature.Linearization`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from curvebench.jax_backend.losses import JaxLoss

__all__ = ["JaxLinearization", "linearize", "ggn_vector_product"]


class JaxLinearization(NamedTuple):
    """One batch's loss, gradient and GGN product (parameters are any pytree)."""

    output: jax.Array
    loss_value: jax.Array
    gradient: Any
    jvp: Callable[[Any], jax.Array]
    vjp: Callable[[jax.Array], Any]
    ggn_vector_product: Callable[[Any], Any]


def linearize(apply: Callable[[Any, jax.Array], jax.Array], *, loss: JaxLoss, params: Any,
              inputs: jax.Array, targets: jax.Array,
              reverse_apply: Callable[[Any, jax.Array], jax.Array] | None = None
              ) -> JaxLinearization:
    """Linearise ``params ↦ apply(params, inputs)`` and attach the loss's curvature.

    Args:
        reverse_apply: ``apply`` written for reverse mode (see the module docstring); its
            vector-Jacobian product is ``Jᵀ``. Default: the transpose of ``apply``'s ``J``.
    """
    output, jvp = jax.linearize(lambda p: apply(p, inputs), params)
    if reverse_apply is None:
        transpose = jax.linear_transpose(jvp, params)
    else:
        _, transpose = jax.vjp(lambda p: reverse_apply(p, inputs), params)

    def vjp(cotangent: jax.Array) -> Any:
        return transpose(cotangent)[0]

    value, output_gradient = jax.value_and_grad(lambda f: loss.value(f, targets))(output)

    def ggn_vector_product(vector: Any) -> Any:
        return vjp(loss.hessian_vector_product(output, jvp(vector)))

    return JaxLinearization(output=output, loss_value=value, gradient=vjp(output_gradient),
                            jvp=jvp, vjp=vjp, ggn_vector_product=ggn_vector_product)


def ggn_vector_product(apply: Callable[[Any, jax.Array], jax.Array], *, loss: JaxLoss,
                       params: Any, inputs: jax.Array, targets: jax.Array, vector: Any,
                       reverse_apply: Callable[[Any, jax.Array], jax.Array] | None = None
                       ) -> Any:
    """``G v`` at ``params`` on one batch (a pytree shaped like ``params``)."""
    return linearize(apply, loss=loss, params=params, inputs=inputs, targets=targets,
                     reverse_apply=reverse_apply).ggn_vector_product(vector)
