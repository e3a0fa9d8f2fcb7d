"""SGD (momentum, Nesterov), Adam and AdamW from optax, with the torch specs' names and defaults.

The hyperparameters are resolved by the torch registry's own spec
(:meth:`~curvebench.optimizers.spec.OptimizerSpec.resolve`), so names, defaults and type checks
cannot drift between backends. Mapping to optax (same update rules as ``torch.optim``):

* ``sgd``: ``weight_decay`` adds ``ωθ`` to the gradient, then ``optax.sgd`` with ``momentum``
  and ``nesterov`` (torch's buffer starts at the first gradient, like optax's trace).
  ``dampening`` other than 0 has no optax equivalent and raises.
* ``adam``: ``weight_decay`` adds ``ωθ`` to the gradient (L2, as torch), then ``optax.adam``
  with ``b1 = beta1``, ``b2 = beta2``, ``eps`` outside the square root.
* ``adamw``: ``optax.adamw`` (decoupled decay ``θ ← θ − lr·ω·θ``, as torch).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import optax

from curvebench.jax_backend.losses import JaxLoss
from curvebench.jax_backend.models import Apply
from curvebench.jax_backend.training import Update

__all__ = ["FIRST_ORDER", "optax_transformation", "first_order_update"]

#: The first-order optimizers with a JAX version (names of the torch registry).
FIRST_ORDER = ("sgd", "adam", "adamw")


def optax_transformation(name: str,
                         hyperparameters: Mapping[str, Any]) -> optax.GradientTransformation:
    """The optax transformation of a resolved first-order hyperparameter set.

    Raises:
        ValueError: for an unknown name or settings optax cannot express.
    """
    h = dict(hyperparameters)
    if name == "sgd":
        if h["dampening"]:
            raise ValueError("sgd: dampening other than 0 has no optax equivalent")
        if h["nesterov"] and not h["momentum"] > 0:
            raise ValueError("sgd: Nesterov momentum requires a momentum > 0")
        chain = [optax.add_decayed_weights(h["weight_decay"])] if h["weight_decay"] else []
        return optax.chain(*chain, optax.sgd(h["lr"], momentum=h["momentum"] or None,
                                             nesterov=h["nesterov"]))
    if name == "adam":
        chain = [optax.add_decayed_weights(h["weight_decay"])] if h["weight_decay"] else []
        return optax.chain(*chain, optax.adam(h["lr"], b1=h["beta1"], b2=h["beta2"],
                                              eps=h["eps"]))
    if name == "adamw":
        return optax.adamw(h["lr"], b1=h["beta1"], b2=h["beta2"], eps=h["eps"],
                           weight_decay=h["weight_decay"])
    raise ValueError(f"no JAX first-order optimizer {name!r}; known: {', '.join(FIRST_ORDER)}")


def first_order_update(*, apply: Apply, loss: JaxLoss,
                       transformation: optax.GradientTransformation) -> Update:
    """The pure update ``(params, state, x, y) -> (params, state, loss, {})`` of ``transformation``.
    """

    def objective(params: Any, inputs: jax.Array, targets: jax.Array) -> jax.Array:
        return loss.value(apply(params, inputs), targets)

    def update(params: Any, state: Any, inputs: jax.Array, targets: jax.Array):
        value, grads = jax.value_and_grad(objective)(params, inputs, targets)
        updates, state = transformation.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value, {}

    return update
