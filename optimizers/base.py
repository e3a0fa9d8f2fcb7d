"""The interface of optimizers that need curvature: the model, the loss and the batch.

A :class:`CurvatureOptimizer` is a ``torch.optim.Optimizer`` (``param_groups``,
``state_dict``, ``zero_grad`` work as usual) constructed with the model and a
:class:`~curvebench.losses.CurvatureLoss`. Its ``step`` takes the current batch instead of a
closure, because Gauss-Newton methods must re-run the network on that batch (GGN-vector
products, per-layer statistics, line searches)::

    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10))
    optimizer = SGN(model, loss=CrossEntropyLoss(), cg_iterations=3)
    for inputs, targets in batches:
        loss = optimizer.step(inputs=inputs, targets=targets)  # forward, backward, solve, update

During a step the optimizer fills :attr:`counters` (work done: ``forward_passes``,
``backward_passes``, ``ggn_products``, ``cg_iterations``, ``function_evaluations``) and
:attr:`step_info` (per-step diagnostics such as ``damping``, ``step_size``,
``cg_relative_residual``); the harness reads both after each step, and times phases through
:attr:`phase_timer`. This is the step protocol of :mod:`curvebench.stepping`.
"""

from __future__ import annotations

import abc
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from curvebench.losses import CurvatureLoss
from curvebench.timing import NullPhaseTimer, PhaseTimer

__all__ = ["CurvatureOptimizer", "COUNTERS"]

#: Counter names the harness and reports know.
COUNTERS = (
    "forward_passes",
    "backward_passes",
    "ggn_products",
    "hessian_products",
    "cg_iterations",
    "function_evaluations",
    "factor_updates",
    "inverse_updates",
    "jacobian_vector_products",
)

#: Key of the optimizer's own random-number generator state in ``state_dict``.
_RANDOM_STATE = "random_generator"


class CurvatureOptimizer(torch.optim.Optimizer, abc.ABC):
    """Base class of optimizers whose step needs the model, loss and current batch.

    Subclasses implement :meth:`curvature_step`.

    Args:
        model: the network being trained; its parameters are optimised.
        loss: the loss, which knows its Hessian with respect to the network output.
        defaults: per-parameter-group defaults as in ``torch.optim.Optimizer``.
        params: parameters to optimise (default: all of ``model``'s parameters that require
            gradients).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        loss: CurvatureLoss,
        defaults: Mapping[str, Any],
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"{type(self).__name__} needs the model (nn.Module) as first argument")
        if not isinstance(loss, CurvatureLoss):
            raise TypeError(
                f"{type(self).__name__} needs a curvebench.losses.CurvatureLoss, "
                f"got {type(loss).__name__}"
            )
        if params is None:
            params = [p for p in model.parameters() if p.requires_grad]
        super().__init__(params, dict(defaults))
        self.model = model
        self.loss = loss
        self.phase_timer: PhaseTimer = NullPhaseTimer()
        self.counters: Counter[str] = Counter()
        self.step_info: dict[str, float] = {}
        #: What the run record should note (subclasses fill it, e.g. layers without a block).
        self.run_notes: dict[str, Any] = {}

    @property
    def notes(self) -> dict[str, Any]:
        """A copy of :attr:`run_notes` (the step protocol's declared notes)."""
        return dict(self.run_notes)

    def step(  # type: ignore[override]
        self,
        closure: None = None,
        *,
        inputs: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Take one step on the batch ``(inputs, targets)``; return the loss before the step.

        Raises:
            TypeError: when called with a closure or without a batch.
        """
        if closure is not None or inputs is None or targets is None:
            raise TypeError(
                f"{type(self).__name__}.step needs the batch: step(inputs=..., targets=...)"
            )
        self.step_info = {}
        return self.curvature_step(inputs=inputs, targets=targets)

    @abc.abstractmethod
    def curvature_step(self, *, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Do the work of :meth:`step`; return the (detached) batch loss at the old parameters."""

    #: This optimizer's own random-number generator (see :meth:`seed_generator`), or ``None``.
    generator: torch.Generator | None = None

    def seed_generator(self) -> None:
        """Give this optimizer its own random-number generator, :attr:`generator`.

        Optimizers that draw probes (Rademacher or Gaussian vectors) or Monte-Carlo labels call
        this once in ``__init__`` and draw only from :attr:`generator`. Its seed is one draw
        from the global generator at construction (which the harness seeds), it lives on the
        parameters' device, and its state travels in ``state_dict``, so the same seed gives the
        same trajectory and a restored optimizer draws what the original would have drawn.
        """
        seed = int(torch.randint(0, 2**62, (1,)).item())
        self.generator = torch.Generator(device=self.parameters_list()[0].device)
        self.generator.manual_seed(seed)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.generator is not None:
            state[_RANDOM_STATE] = self.generator.get_state()
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        state_dict = dict(state_dict)
        generator_state = state_dict.pop(_RANDOM_STATE, None)
        super().load_state_dict(state_dict)
        if generator_state is not None and self.generator is not None:
            self.generator.set_state(generator_state)

    def parameters_list(self) -> list[torch.Tensor]:
        """The optimised parameters, in parameter-group order."""
        return [p for group in self.param_groups for p in group["params"]]
