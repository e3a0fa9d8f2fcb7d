"""L-BFGS with a strong-Wolfe line search, driven through the batch-step protocol.

``torch.optim.LBFGS`` needs a closure that re-evaluates the loss and gradient. A
:class:`CurvatureOptimizer` receives the batch instead, so :class:`LBFGS` builds that closure
itself from :attr:`model`, :attr:`loss` and the batch, and hands it to a
``torch.optim.LBFGS`` over the same parameters: the harness, the suite and user loops call
``step(inputs=..., targets=...)`` as for any curvature method, with no special case. Every
closure call is one forward and one backward pass and one function evaluation in
:attr:`counters`.

On a fixed batch (full-batch training) this is L-BFGS (Liu & Nocedal 1989) with the
strong-Wolfe line search of Nocedal & Wright (Algorithms 3.5–3.6, cubic interpolation). With a
new mini-batch each step the curvature pairs ``(s, y)`` mix batches: ``y`` is the difference of
gradients on two different batches, the naive stochastic L-BFGS (not the multi-batch variants
that evaluate both gradients on one batch).

Defaults are ``torch.optim.LBFGS``'s (``lr = 1``, ``history_size = 100``,
``tolerance_grad = 1e-7``, ``tolerance_change = 1e-9``) with ``line_search_fn = "strong_wolfe"``
and one L-BFGS iteration per ``step`` (``max_iter = 1``, torch's 20 would make one "step"
twenty iterations; ``max_eval`` is torch's ``max_iter · 5/4`` rule on top of the line
search's own 25-evaluation cap).

Reference: Liu & Nocedal 1989, "On the limited memory BFGS method for large scale
optimization"; Nocedal & Wright 2006, "Numerical Optimization", Algorithms 7.4, 3.5, 3.6.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from curvebench.losses import CurvatureLoss
from curvebench.optimizers.adahessian import check_number
from curvebench.optimizers.base import CurvatureOptimizer
from curvebench.optimizers.spec import (
    Choice,
    LogUniform,
    OptimizerSpec,
    curvature_optimizer_factory,
    register_optimizer,
)

__all__ = ["LBFGS"]

_INNER_KEYS = ("lr", "max_iter", "max_eval", "tolerance_grad", "tolerance_change",
               "history_size", "line_search_fn")


class LBFGS(CurvatureOptimizer):
    """``torch.optim.LBFGS`` behind ``step(inputs=, targets=)`` (see the module docstring).

    Args:
        model: the network.
        loss: its :class:`~curvebench.losses.CurvatureLoss`.
        lr: initial step length ``> 0`` of each line search.
        max_iter: L-BFGS iterations per step (``≥ 1``).
        history_size: stored curvature pairs ``m ≥ 1``.
        tolerance_grad: stop when ``max |g_i| ≤`` this.
        tolerance_change: stop when the step or loss change is below this.
        line_search: ``"strong_wolfe"`` or ``"none"`` (fixed step ``lr``).
        params: parameters to optimise (default: all that require gradients).

    Raises:
        ValueError: an out-of-range hyperparameter.
    """

    def __init__(self, model: nn.Module, *, loss: CurvatureLoss, lr: float = 1.0,
                 max_iter: int = 1, history_size: int = 100, tolerance_grad: float = 1e-7,
                 tolerance_change: float = 1e-9, line_search: str = "strong_wolfe",
                 params: Sequence[torch.Tensor] | None = None) -> None:
        check_number("lr", lr, low=0.0, open_low=True)
        check_number("max_iter", max_iter, low=1, integer=True)
        check_number("history_size", history_size, low=1, integer=True)
        check_number("tolerance_grad", tolerance_grad, low=0.0)
        check_number("tolerance_change", tolerance_change, low=0.0)
        if line_search not in ("strong_wolfe", "none"):
            raise ValueError(f"line_search must be 'strong_wolfe' or 'none', got {line_search!r}")
        settings = dict(lr=lr, max_iter=max_iter, max_eval=max_iter * 5 // 4,
                        tolerance_grad=tolerance_grad, tolerance_change=tolerance_change,
                        history_size=history_size,
                        line_search_fn=None if line_search == "none" else line_search)
        super().__init__(model, loss=loss, defaults=settings, params=params)
        self.inner = torch.optim.LBFGS(self.parameters_list(), **settings)

    def curvature_step(self, *, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        group = self.param_groups[0]
        self.inner.param_groups[0].update({k: group[k] for k in _INNER_KEYS})
        evaluations = 0

        def closure() -> torch.Tensor:
            nonlocal evaluations
            evaluations += 1
            self.inner.zero_grad(set_to_none=False)
            with torch.enable_grad():
                value = self.loss(self.model(inputs), targets)
                value.backward()
            return value

        with self.phase_timer.phase("line_search"):
            value = self.inner.step(closure)
        self.counters.update(forward_passes=evaluations, backward_passes=evaluations,
                             function_evaluations=evaluations)
        self.step_info = {"function_evaluations": float(evaluations),
                          "step_size": float(self.inner.state[self.inner._params[0]].get(
                              "t", float("nan")))}
        return value.detach()

    def state_dict(self) -> dict[str, Any]:
        """The wrapper's settings and the inner ``torch.optim.LBFGS``'s history."""
        return {**super().state_dict(), "lbfgs": self.inner.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        self.inner.load_state_dict(state_dict.pop("lbfgs"))
        super().load_state_dict(state_dict)



register_optimizer(OptimizerSpec(
    name="lbfgs",
    description="L-BFGS with a strong-Wolfe line search (torch.optim.LBFGS driven by a "
                "closure built from the batch); one iteration per step.",
    factory=curvature_optimizer_factory(LBFGS),
    defaults={"lr": 1.0, "max_iter": 1, "history_size": 100, "tolerance_grad": 1e-7,
              "tolerance_change": 1e-9, "line_search": "strong_wolfe"},
    search_space={"lr": LogUniform(1e-2, 1.0), "history_size": Choice((5, 10, 20, 100))},
    needs_curvature=True,
    supports_conv=True,
    deterministic=True,
    reference="Liu & Nocedal 1989, 'On the limited memory BFGS method for large scale "
              "optimization'; strong-Wolfe line search of Nocedal & Wright 2006 (Algorithms "
              "3.5-3.6) as in torch.optim.LBFGS, whose defaults are used (max_iter = 1).",
))
