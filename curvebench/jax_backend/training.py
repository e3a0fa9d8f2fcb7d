"""The JAX training-step driver: ``step(inputs=, targets=) -> loss`` for every JAX optimizer.

An optimizer is a pure, jit-compiled update ``(params, state, inputs, targets) ->
(params, state, loss, info)``; :class:`JaxStepper` holds the parameters and state between
steps. Compilation is ahead of time on the first batch of each shape, timed apart in
:attr:`JaxStepper.compile_seconds`, so the time of a :meth:`JaxStepper.step` call is that of
the compiled step; the step waits on its results (``block_until_ready``) before it returns,
so a clock read after it is synchronised. Both steppers implement the step protocol of
:mod:`curvebench.stepping` (``counters``, ``step_info``, ``phase_timer``, ``notes``); a compiled
step is one fused computation, so it has no phases to time.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["JaxStepper", "Update", "as_array", "NoPhases", "COUNTED_INFO"]

#: Entries of an update's ``info`` that count work (also added to ``counters``).
COUNTED_INFO = ("cg_iterations", "ggn_products", "jacobian_vector_products",
                "function_evaluations")


class NoPhases:
    """The phase timer of a compiled step: nothing inside it can be timed apart."""

    def phase(self, name: str) -> Any:
        import contextlib

        return contextlib.nullcontext()

    def collect(self) -> dict[str, float]:
        return {}

#: ``(params, state, inputs, targets) -> (params, state, loss, info)``
Update = Callable[[Any, Any, jax.Array, jax.Array], tuple[Any, Any, jax.Array, Mapping[str, Any]]]


def as_array(values: Any) -> jax.Array:
    """A batch (JAX array, numpy array or CPU torch tensor) as a JAX array without a dtype
    change (a JAX array is returned as it is, without a round trip through the host)."""
    if isinstance(values, jax.Array):
        return values
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return jnp.asarray(np.asarray(values))


class JaxStepper:
    """Drives a pure update: holds ``params`` and ``state``; one :meth:`step` per batch.

    Args:
        update: the pure update (see :data:`Update`); it is compiled here.
        params: initial parameter pytree.
        state: initial optimizer state pytree.
        name: the optimizer's name (for messages).
        counts: work counted per step on top of the update's counted ``info`` entries
            (:data:`COUNTED_INFO`), e.g. one forward and one backward pass.

    Attributes:
        params: the current parameters.
        state: the current optimizer state.
        compile_seconds: wall time spent compiling (summed over batch shapes).
        step_info: the last step's diagnostics as floats (empty for first-order methods).
    """

    def __init__(self, *, update: Update, params: Any, state: Any, name: str,
                 counts: Mapping[str, int] | None = None) -> None:
        self.name = name
        self.params = params
        self.state = state
        self.compile_seconds = 0.0
        self.step_info: dict[str, float] = {}
        self.counters: Counter[str] = Counter()
        self.phase_timer: Any = NoPhases()
        self._counts = dict(counts or {})
        self._jitted = jax.jit(update)
        self._compiled: dict[tuple[Any, ...], Any] = {}

    def _executable(self, inputs: jax.Array, targets: jax.Array) -> Any:
        key = (inputs.shape, inputs.dtype, targets.shape, targets.dtype)
        executable = self._compiled.get(key)
        if executable is None:
            start = time.perf_counter()
            executable = self._jitted.lower(self.params, self.state, inputs, targets).compile()
            self.compile_seconds += time.perf_counter() - start
            self._compiled[key] = executable
        return executable

    def compile(self, *, inputs: Any, targets: Any) -> float:
        """Compile for batches shaped like these (no step); returns the seconds it took."""
        before = self.compile_seconds
        self._executable(as_array(inputs), as_array(targets))
        return self.compile_seconds - before

    def step(self, *, inputs: Any, targets: Any) -> float:
        """One optimizer step on a batch; returns the batch loss before the step."""
        x, y = as_array(inputs), as_array(targets)
        executable = self._executable(x, y)
        self.params, self.state, loss, info = executable(self.params, self.state, x, y)
        jax.block_until_ready((self.params, self.state))
        values = {key: float(value) for key, value in info.items()}
        self.counters.update(self._counts)
        self.counters.update({key: values[key] for key in COUNTED_INFO if key in values})
        self.step_info = values
        return float(loss)

    @property
    def notes(self) -> dict[str, Any]:
        """Nothing to note."""
        return {}
