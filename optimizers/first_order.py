"""First-order baselines from ``torch.optim``: SGD (momentum, Nesterov), Adam and AdamW.

Any ``torch.optim.Optimizer`` is registered the same way: wrap its class with
:func:`~curvebench.optimizers.spec.torch_optimizer_factory` and give defaults and a search space.
"""

from __future__ import annotations

import torch

from curvebench.optimizers.spec import (
    LogUniform,
    OptimizerSpec,
    Uniform,
    register_optimizer,
    torch_optimizer_factory,
)

_BETAS = {"betas": ("beta1", "beta2")}
#: The fixed variants (``OptimizerSpec.settings``, part of a run's identity): every constructor
#: argument of the torch class that changes the result and is not a hyperparameter here.
_SGD_FIXED = {"maximize": False}
_ADAMW_FIXED = {"amsgrad": False, "maximize": False}
_ADAM_FIXED = {**_ADAMW_FIXED, "decoupled_weight_decay": False}
#: torch.optim here, optax in the JAX backend (:mod:`curvebench.jax_backend.first_order`).
_BOTH = ("torch", "jax")

register_optimizer(
    OptimizerSpec(
        name="sgd",
        description="Stochastic gradient descent with optional (Nesterov) momentum.",
        factory=torch_optimizer_factory(torch.optim.SGD, settings=_SGD_FIXED),
        defaults={"lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0,
                  "dampening": 0.0},
        search_space={"lr": LogUniform(1e-3, 10.0), "momentum": Uniform(0.0, 0.99)},
        reference="Robbins & Monro 1951; Polyak 1964; Sutskever et al. 2013 (Nesterov).",
        backends=_BOTH,
    )
)

register_optimizer(
    OptimizerSpec(
        name="adam",
        description="Adam with bias correction.",
        factory=torch_optimizer_factory(torch.optim.Adam, tuples=_BETAS, settings=_ADAM_FIXED),
        defaults={"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
        search_space={"lr": LogUniform(1e-5, 1.0)},
        reference="Kingma & Ba 2015, 'Adam: A method for stochastic optimization'.",
        backends=_BOTH,
    )
)

register_optimizer(
    OptimizerSpec(
        name="adamw",
        description="Adam with decoupled weight decay.",
        factory=torch_optimizer_factory(torch.optim.AdamW, tuples=_BETAS,
                                        settings=_ADAMW_FIXED),
        defaults={"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01},
        search_space={"lr": LogUniform(1e-5, 1.0), "weight_decay": LogUniform(1e-5, 1.0)},
        reference="Loshchilov & Hutter 2019, 'Decoupled weight decay regularization'.",
        backends=_BOTH,
    )
)
