"""K-FAC from kfac-jax (the reference implementation) in its standard adaptive configuration.

``kfac_jax.Optimizer`` with adaptive learning rate and momentum (chosen each step by
minimising the quadratic model over the two-dimensional subspace of the preconditioned
gradient and the previous update), adaptive Levenberg–Marquardt damping, a 0.95 moving
average of the curvature and factor inverses every 5 steps, as in the library's examples
(without its curvature burn-in, which needs a data iterator where ``step`` gets one batch).
Layers are found by kfac-jax's own graph matcher: :mod:`curvebench.jax_backend.models` writes dense
layers as ``x @ W + b`` and convolutions as ``NHWC``/``HWIO`` ``conv_general_dilated`` (1-D ones as
height 1), the patterns it recognises. The loss is registered with kfac-jax's matching loss
(its weights make kfac-jax's losses equal ours: softmax cross-entropy weight 1; sigmoid
cross-entropy ``1/D``; squared error ``2/D``, since kfac-jax's is ``½‖f − y‖²`` per sample).

Reference: Martens & Grosse 2015, "Optimizing neural networks with Kronecker-factored
approximate curvature"; Botev & Martens, kfac-jax (github.com/google-deepmind/kfac-jax).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import kfac_jax

from curvebench.jax_backend.losses import JaxLoss
from curvebench.jax_backend.models import Apply
from curvebench.jax_backend.training import NoPhases, as_array
from curvebench.optimizers.kfac_jax import KFAC_JAX_DEFAULTS

__all__ = ["KFAC_JAX_DEFAULTS", "KfacJaxStepper", "kfac_jax_version"]

def kfac_jax_version() -> str:
    """The installed kfac-jax version (for records)."""
    return str(getattr(kfac_jax, "__version__", "unknown"))


def _register_loss(loss: JaxLoss, output: jax.Array, targets: jax.Array) -> None:
    features = output.shape[1]
    if loss.name == "cross_entropy":
        kfac_jax.register_softmax_cross_entropy_loss(output, targets)
    elif loss.name == "bce_logits":
        kfac_jax.register_sigmoid_cross_entropy_loss(output, targets, weight=1.0 / features)
    elif loss.name == "mse":
        kfac_jax.register_squared_error_loss(output, targets, weight=2.0 / features)
    else:
        raise ValueError(f"kfac-jax: no registration for loss {loss.name!r}")


class KfacJaxStepper:
    """kfac-jax's optimizer behind ``step(inputs=, targets=) -> loss`` (the step protocol of
    :mod:`curvebench.stepping`).

    :meth:`compile` initialises kfac-jax (graph matching) and compiles its step by taking
    one damping-adaptation interval of steps on copies of the parameters and state, whose
    results are thrown away (kfac-jax is functional), so every step variant it compiles (first
    step, with and without a damping update) exists before training; its time is
    :attr:`compile_seconds`. Without it, the first :meth:`step` does the
    same work and its time is :attr:`compile_seconds` (it then includes that step). Steps wait
    on their results before returning.

    Args:
        apply: the compiled model.
        loss: its loss.
        params: initial parameters.
        hyperparameters: overrides of :data:`KFAC_JAX_DEFAULTS`.
        seed: seeds kfac-jax's sampled-Fisher random numbers.

    Raises:
        ValueError: unknown or out-of-range hyperparameters.
    """

    def __init__(self, *, apply: Apply, loss: JaxLoss, params: Any,
                 hyperparameters: Mapping[str, Any] | None = None, seed: int = 0) -> None:
        unknown = set(hyperparameters or {}) - set(KFAC_JAX_DEFAULTS)
        if unknown:
            raise ValueError(f"kfac-jax has no hyperparameter {sorted(unknown)[0]!r}; known: "
                             f"{', '.join(sorted(KFAC_JAX_DEFAULTS))}")
        h = {**KFAC_JAX_DEFAULTS, **(hyperparameters or {})}
        if not h["initial_damping"] > 0 or h["min_damping"] < 0 or h["l2_reg"] < 0:
            raise ValueError("kfac-jax: initial_damping must be positive, min_damping and "
                             "l2_reg non-negative")
        self.hyperparameters = h
        self.name = "kfac-jax"

        def objective(p: Any, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
            inputs, targets = batch
            output = apply(p, inputs)
            _register_loss(loss, output, targets)
            return loss.value(output, targets)

        self._optimizer = kfac_jax.Optimizer(
            value_and_grad_func=jax.value_and_grad(objective),
            l2_reg=h["l2_reg"],
            use_adaptive_learning_rate=True,
            use_adaptive_momentum=True,
            use_adaptive_damping=True,
            initial_damping=h["initial_damping"],
            min_damping=h["min_damping"],
            curvature_ema=h["curvature_ema"],
            inverse_update_period=int(h["inverse_update_period"]),
            damping_adaptation_interval=int(h["damping_adaptation_interval"]),
            num_burnin_steps=0,  # one batch per step: no iterator to burn in on
            multi_device=False,
        )
        self.params = params
        self.state: Any = None
        self.compile_seconds = 0.0
        self.step_info: dict[str, float] = {}
        self.counters: Counter[str] = Counter()
        self.phase_timer: Any = NoPhases()
        self._rng = jax.random.PRNGKey(seed)
        self._compile_key = jax.random.PRNGKey(seed ^ 0x5EED)
        self._steps = 0
        self._compiled = False

    @property
    def notes(self) -> dict[str, Any]:
        """The library's version and kfac-jax's curvature block per layer."""
        return {"library": f"kfac-jax {kfac_jax_version()}", "layer_blocks": self.layer_blocks}

    def compile(self, *, inputs: Any, targets: Any) -> float:
        """Initialise kfac-jax and compile its step on a batch (see the class docstring);
        returns the seconds it took."""
        batch = (as_array(inputs), as_array(targets))
        start = time.perf_counter()
        rng, init_key = jax.random.split(self._compile_key)
        if self.state is None:
            self.state = self._optimizer.init(self.params, init_key, batch)
        # kfac-jax compiles a step per (curvature update, damping update) pair and per state
        # layout (the initial state's differs from later ones), and donates the parameters and
        # state: take one damping-adaptation interval of steps on copies and discard them
        params, state = jax.tree.map(jnp.copy, (self.params, self.state))
        interval = int(self.hyperparameters["damping_adaptation_interval"])
        for step in range(self._steps, self._steps + interval):
            rng, _, step_key = jax.random.split(rng, 3)
            params, state, stats = self._optimizer.step(params, state, step_key, batch=batch,
                                                        global_step_int=step)
            float(stats["loss"])
        jax.block_until_ready((params, state))
        seconds = time.perf_counter() - start
        self.compile_seconds += seconds
        self._compiled = True
        return seconds

    @property
    def layer_blocks(self) -> list[str]:
        """kfac-jax's curvature block per layer it found (after the first step)."""
        if self.state is None:
            return []
        return [type(block).__name__ for block in self._optimizer._estimator.blocks]

    def step(self, *, inputs: Any, targets: Any) -> float:
        """One K-FAC step; returns the batch loss before it."""
        batch = (as_array(inputs), as_array(targets))
        start = time.perf_counter()
        self._rng, init_key, step_key = jax.random.split(self._rng, 3)
        if self.state is None:
            self.state = self._optimizer.init(self.params, init_key, batch)
        self.params, self.state, stats = self._optimizer.step(
            self.params, self.state, step_key, batch=batch, global_step_int=self._steps)
        jax.block_until_ready((self.params, self.state))
        if not self._compiled:
            self.compile_seconds = time.perf_counter() - start
            self._compiled = True
        self._steps += 1
        self.step_info = {key: float(stats[key]) for key in
                          ("learning_rate", "momentum", "damping") if key in stats}
        return float(stats["loss"])
