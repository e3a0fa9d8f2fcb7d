"""The one step protocol every built optimizer is driven by, and the one step function.

Every optimizer the harness, the asv suite and the tests drive, first-order included, is a
:class:`Stepper`: ``step(inputs=, targets=) -> loss`` (the batch loss before the step), with

* ``counters`` — work done since they were last drained (``forward_passes``,
  ``backward_passes``, ``ggn_products``, …);
* ``step_info`` — the last step's diagnostics (damping, step size, CG residual, …);
* ``phase_timer`` — the :class:`~curvebench.timing.PhaseTimer` the step charges its phases to;
* ``notes`` — what the run record should say about how the optimizer ran (layers without a
  curvature block, fallback rules).

Curvature optimizers (:class:`~curvebench.optimizers.CurvatureOptimizer`) and the JAX steppers
implement it themselves; :class:`TorchFirstOrderStepper` adapts a plain ``torch.optim``
optimizer (users calling ``spec.factory`` or the class still get the raw torch optimizer).
:func:`take_step` is the one step function: the harness's backends, the asv suite and the
contract tests all call it, so a step is fetched, run, timed and drained the same way
everywhere.

This module imports neither torch nor jax.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["Stepper", "StepOutcome", "TorchFirstOrderStepper", "as_stepper", "build_stepper",
           "take_step", "FIRST_ORDER_COUNTS"]

#: Work of one first-order step.
FIRST_ORDER_COUNTS: Mapping[str, int] = {"forward_passes": 1, "backward_passes": 1}


@runtime_checkable
class Stepper(Protocol):
    """An optimizer driven batch by batch (see the module docstring)."""

    counters: Counter[str]
    step_info: dict[str, float]
    phase_timer: Any

    @property
    def notes(self) -> dict[str, Any]: ...

    def step(self, *, inputs: Any, targets: Any) -> Any: ...


class TorchFirstOrderStepper:
    """A plain ``torch.optim`` optimizer behind the step protocol.

    ``step`` runs forward, backward and the optimizer's update, charging them to the phases
    ``forward``, ``backward`` and ``update`` (one clock reading per boundary), and counts one
    forward and one backward pass.

    Args:
        optimizer: the torch optimizer (kept as :attr:`optimizer`).
        model: the network whose parameters it optimises.
        loss: the loss ``loss(output, targets) -> scalar``.
    """

    def __init__(self, optimizer: Any, *, model: Any, loss: Callable[[Any, Any], Any]) -> None:
        from curvebench.timing import NullPhaseTimer

        self.optimizer = optimizer
        self.model = model
        self.loss = loss
        self.counters: Counter[str] = Counter()
        self.step_info: dict[str, float] = {}
        self.phase_timer = NullPhaseTimer()

    @property
    def notes(self) -> dict[str, Any]:
        """Nothing to note for a plain first-order optimizer."""
        return {}

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    def step(self, *, inputs: Any, targets: Any) -> Any:
        """Forward, backward, update on the batch; returns the detached batch loss."""
        timer = self.phase_timer
        timer.start_laps()
        value = self.loss(self.model(inputs), targets)
        timer.lap("forward")
        self.optimizer.zero_grad(set_to_none=True)
        value.backward()
        timer.lap("backward")
        self.optimizer.step()
        timer.lap("update")
        self.counters.update(FIRST_ORDER_COUNTS)
        return value.detach()


def as_stepper(optimizer: Any, *, model: Any, loss: Callable[[Any, Any], Any]) -> Stepper:
    """``optimizer`` itself when it implements the protocol, else wrapped in the adapter."""
    if isinstance(optimizer, Stepper):
        return optimizer
    return TorchFirstOrderStepper(optimizer, model=model, loss=loss)


def build_stepper(spec: Any, *, model: Any, loss: Any,
                  hyperparameters: Mapping[str, Any] | None = None,
                  settings: Mapping[str, Any] | None = None) -> Stepper:
    """Build a registered optimizer (``spec.build``) and return it as a :class:`Stepper`.

    Raises:
        HyperparameterError: as ``spec.build``.
        TypeError: the spec needs curvature but its factory returned a plain optimizer.
    """
    optimizer = spec.build(model=model, loss=loss, hyperparameters=hyperparameters,
                           settings=settings)
    stepper = as_stepper(optimizer, model=model, loss=loss)
    if spec.needs_curvature and isinstance(stepper, TorchFirstOrderStepper):
        raise TypeError(f"optimizer {spec.name!r} needs curvature but its factory did not "
                        "return a CurvatureOptimizer")
    return stepper


@dataclass(frozen=True)
class StepOutcome:
    """What one step did.

    Attributes:
        loss: the batch loss before the step.
        seconds: the step's time from a synchronised clock reading before fetching the batch
            to one after the update.
        phases: seconds per phase charged during the step (exclusive, at most ``seconds``).
        counters: work done in the step.
        info: the step's diagnostics.
    """

    loss: float
    seconds: float
    phases: dict[str, float]
    counters: dict[str, float]
    info: dict[str, float]


def take_step(stepper: Stepper, batches: Iterator[tuple[Any, Any]], *,
              clock: Callable[[], float]) -> StepOutcome:
    """Fetch the next batch, step on it, and drain the stepper's timer and counters.

    ``clock`` is the backend's synchronised clock (it waits for queued device work before it
    reads the time), read once before the batch is fetched and once after the step, so the
    step's time covers the batch, forward, backward, curvature work and update, and nothing
    else.
    """
    start = clock()
    inputs, targets = next(batches)
    loss = stepper.step(inputs=inputs, targets=targets)
    seconds = clock() - start
    phases = stepper.phase_timer.collect()
    counters = dict(stepper.counters)
    stepper.counters.clear()
    return StepOutcome(loss=float(loss), seconds=seconds, phases=phases, counters=counters,
                       info=dict(stepper.step_info))
