"""M-FAC: inverse empirical-Fisher-vector products from a sliding window of the last m gradients.

With ``G`` the ``m × d`` matrix of the last ``m`` (weight-decayed) gradients (a ring buffer;
rows not yet filled are zero, as in the authors' code), the damped empirical Fisher is

    F = λ I + (1/m) Σ_i g_i g_iᵀ = λ I + (1/m) GᵀG,

and each step, after replacing the oldest row with the new gradient ``g``,

    u = F⁻¹ g = (1/λ) (g − Gᵀ (mλ I + G Gᵀ)⁻¹ G g)                     (Woodbury)
    v ← β v + (1 − β) u   (β > 0),   θ ← θ − α v  (or α u).

``G Gᵀ`` is kept up to date by one row per step (``m·d`` work) and the ``m × m`` system is
solved by a Cholesky factorisation (``m³/3``); the authors' dynamic algorithm reaches the same
product with an LU-based recursion of the same order. Parameters are flattened into one
vector, so every layer type is supported.

Reference: Frantar, Kurtic & Alistarh 2021, "M-FAC: Efficient matrix-free approximations of
second-order information" (NeurIPS). Defaults from the authors' ``MFAC`` optimizer (lr 1e-3,
λ = 1e-5, moving-average momentum 0) except the window: ``m = 128`` instead of 1024, since the
buffer holds ``m`` copies of the gradient (1024 would be 1 GB on a 270k-parameter MLP).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from curvebench.optimizers.spec import (
    IntLogUniform,
    LogUniform,
    OptimizerSpec,
    Uniform,
    register_optimizer,
    torch_optimizer_factory,
)

__all__ = ["MFAC"]


class MFAC(torch.optim.Optimizer):
    """M-FAC with a window of ``ngrads`` gradients (see the module docstring).

    Args:
        params: parameters (one group: the Fisher couples all of them).
        lr: ``α``.
        momentum: ``β`` (moving average of the preconditioned gradients).
        weight_decay: added to the gradient before it enters the window.
        ngrads: ``m``.
        damping: ``λ``.
    """

    def __init__(self, params: Iterable[torch.Tensor], *, lr: float = 1e-3,
                 momentum: float = 0.0, weight_decay: float = 0.0, ngrads: int = 128,
                 damping: float = 1e-5) -> None:
        checks = [
            (lr > 0, f"lr must be positive, got {lr}"),
            (0 <= momentum < 1, f"momentum must be in [0, 1), got {momentum}"),
            (weight_decay >= 0, f"weight_decay must be >= 0, got {weight_decay}"),
            (ngrads >= 1, f"ngrads must be >= 1, got {ngrads}"),
            (damping > 0, f"damping must be positive, got {damping}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      ngrads=ngrads, damping=damping))
        if len(self.param_groups) != 1:
            raise ValueError("M-FAC takes one parameter group (its Fisher couples all of them)")

    def _window(self, d: int, like: torch.Tensor, m: int) -> dict:
        state = self.state[self.param_groups[0]["params"][0]]
        if "gradients" not in state:
            state["gradients"] = like.new_zeros(m, d)
            state["gram"] = like.new_zeros(m, m)
            state["next"] = 0
            state["step"] = 0
        return state

    def inverse_fisher_product(self, vector: torch.Tensor, state: dict) -> torch.Tensor:
        """``F⁻¹ x`` for the current window (Woodbury, one Cholesky solve of size ``m``)."""
        group = self.param_groups[0]
        damping, gradients = group["damping"], state["gradients"]
        m = gradients.shape[0]
        system = state["gram"] + m * damping * torch.eye(m, dtype=vector.dtype,
                                                         device=vector.device)
        coefficients = torch.cholesky_solve((gradients @ vector).unsqueeze(1),
                                            torch.linalg.cholesky(system)).squeeze(1)
        return (vector - gradients.T @ coefficients) / damping

    @torch.no_grad()
    def step(self, closure=None):
        """One step; ``closure`` (optional) re-evaluates the loss as in ``torch.optim``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        params = [p for p in group["params"]]
        flat_params = torch.cat([p.detach().reshape(-1) for p in params])
        gradient = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                              for p in params])
        if group["weight_decay"]:
            gradient = gradient + group["weight_decay"] * flat_params
        state = self._window(gradient.numel(), gradient, group["ngrads"])
        row = state["next"]
        state["gradients"][row] = gradient
        dots = state["gradients"] @ gradient
        state["gram"][row, :] = dots
        state["gram"][:, row] = dots
        state["next"] = (row + 1) % group["ngrads"]
        state["step"] += 1
        update = self.inverse_fisher_product(gradient, state)
        if group["momentum"] > 0:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(update)
            state["momentum_buffer"].lerp_(update, 1 - group["momentum"])
            update = state["momentum_buffer"]
        offset = 0
        for p in params:
            p.add_(update[offset:offset + p.numel()].view_as(p), alpha=-group["lr"])
            offset += p.numel()
        return loss


register_optimizer(
    OptimizerSpec(
        name="mfac",
        description="M-FAC: inverse damped empirical Fisher of the last m gradients (Woodbury).",
        factory=torch_optimizer_factory(MFAC),
        defaults={"lr": 1e-3, "momentum": 0.0, "weight_decay": 0.0, "ngrads": 128,
                  "damping": 1e-5},
        search_space={"lr": LogUniform(1e-5, 1.0), "damping": LogUniform(1e-8, 1e-1),
                      "momentum": Uniform(0.0, 0.99), "ngrads": IntLogUniform(8, 1024)},
        reference="Frantar, Kurtic & Alistarh 2021, 'M-FAC: Efficient matrix-free "
                  "approximations of second-order information'. Defaults: the authors' MFAC "
                  "optimizer (lr 1e-3, damp 1e-5, momentum 0), window m = 128 instead of 1024 "
                  "(memory).",
    )
)
