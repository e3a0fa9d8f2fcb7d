"""The losses of :mod:`curvebench.losses` in JAX, with the same output-Hessian algebra.

Same names, same mean reduction, same Hessian of the batch loss with respect to the network
output ``f`` (``N`` samples, ``D`` outputs, ``p`` the predicted probabilities):

=================  ==============================  =====================================
loss               value                           ``H v`` per sample
=================  ==============================  =====================================
``mse``            ``(1/(N·D)) Σ ‖f_n − y_n‖²``     ``2/(N·D) · v_n``
``cross_entropy``  ``(1/N) Σ −log softmax(f_n)[y]`` ``(1/N)(p_n ⊙ v_n − p_n (p_nᵀ v_n))``
``bce_logits``     mean over all ``N·D`` elements   ``1/(N·D) · p_n(1 − p_n) ⊙ v_n``
=================  ==============================  =====================================

Reference: Schraudolph 2002, "Fast curvature matrix-vector products for second-order gradient
descent".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp

__all__ = ["JaxLoss", "JAX_LOSSES", "jax_loss_by_name"]


@dataclass(frozen=True)
class JaxLoss:
    """A mean-reduced loss ``L(f, y)`` and its output-Hessian product ``v ↦ ∂²L/∂f² v``.

    Attributes:
        name: the name of the matching :class:`curvebench.losses.CurvatureLoss`.
        value: ``(output, target) -> scalar``.
        hessian_vector_product: ``(output, vector) -> H vector`` (shaped like ``output``).
    """

    name: str
    value: Callable[[jax.Array, jax.Array], jax.Array]
    hessian_vector_product: Callable[[jax.Array, jax.Array], jax.Array]


def _mse(output: jax.Array, target: jax.Array) -> jax.Array:
    return jnp.mean((output - target) ** 2)


def _mse_hvp(output: jax.Array, vector: jax.Array) -> jax.Array:
    return vector * (2.0 / output.size)


def _cross_entropy(output: jax.Array, target: jax.Array) -> jax.Array:
    log_p = jax.nn.log_softmax(output, axis=1)
    return -jnp.mean(jnp.take_along_axis(log_p, target[:, None], axis=1))


def _cross_entropy_hvp(output: jax.Array, vector: jax.Array) -> jax.Array:
    p = jax.nn.softmax(output, axis=1)
    return (p * vector - p * jnp.sum(p * vector, axis=1, keepdims=True)) / output.shape[0]


def _bce_logits(output: jax.Array, target: jax.Array) -> jax.Array:
    # max(f, 0) − f y + log(1 + e^{−|f|}), the stable form torch uses
    return jnp.mean(jnp.maximum(output, 0) - output * target + jnp.log1p(jnp.exp(-jnp.abs(output))))


def _bce_logits_hvp(output: jax.Array, vector: jax.Array) -> jax.Array:
    p = jax.nn.sigmoid(output)
    return p * (1 - p) * vector / output.size


#: The losses by name (the names of :data:`curvebench.losses.LOSSES`).
JAX_LOSSES: dict[str, JaxLoss] = {
    loss.name: loss for loss in (
        JaxLoss("mse", _mse, _mse_hvp),
        JaxLoss("cross_entropy", _cross_entropy, _cross_entropy_hvp),
        JaxLoss("bce_logits", _bce_logits, _bce_logits_hvp),
    )
}


def jax_loss_by_name(name: str) -> JaxLoss:
    """The JAX loss called ``name``.

    Raises:
        KeyError: for an unknown name, listing the known ones.
    """
    try:
        return JAX_LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown loss {name!r}; known: {', '.join(sorted(JAX_LOSSES))}") from None
