"""Shampoo with the practical recipe of Anil et al.: grafting, ε, delayed inverse p-th roots.

A parameter with two or more dimensions is viewed as a matrix ``G`` of shape
``(d_0, d_1 ⋯ d_k)`` (a Linear weight as is; a convolution kernel ``(C_out, C_in·k_h·k_w)``).
Every step (Gupta, Koren & Singer 2018; Anil et al. 2020, Algorithm 1):

    L ← β₂ L + (1 − β₂) G Gᵀ,   R ← β₂ R + (1 − β₂) Gᵀ G       (L₀ = R₀ = ε I; β₂ = 1: sums)
    D = L̂^{-1/4} G R̂^{-1/4},    L̂ = L + δ λ_max(L) I            (inverse roots every T steps)
    g̃ = graft(G),               D ← D · ‖g̃‖ / ‖D‖                (layer-wise grafting)
    m ← β₁ m + (1 − β₁) (D + η θ),  u = β₁ m + (1 − β₁)(D + η θ)  (Nesterov) or u = m
    θ ← θ − α u

The roots are recomputed every ``inverse_update_period`` steps (``T``, the "delayed" roots) and
at the first preconditioned step, by a symmetric eigendecomposition in float64 (float32 for
lower precisions); ``δ`` (``relative_ridge``) is the authors' ridge relative to the largest
eigenvalue. Before ``start_preconditioning_step`` the update is the grafted method's own
(``g̃`` with its own momentum buffer), as in the authors' code. Graft ``"adagrad"``:
``g̃ = G / (√(Σ G²) + ε_d)``; ``"adam"``: ``g̃ = G / (√(v / (1 − β₂ᵗ)) + ε_d)`` with
``v ← β₂ v + (1 − β₂) G²``; ``"sgd"``: ``g̃ = G``; ``"none"``: no norm matching. Parameters
with one dimension, or with a dimension above ``max_preconditioner_dim``, take the graft step.

Differences from the reference implementations: no partitioning of large dimensions into
blocks (``block_size`` of the authors' code; our layers are small), matrices rather than
higher-order tensors for convolution kernels, and exact eigendecomposition roots (the authors
use a coupled Newton iteration to a tolerance).

References: Gupta, Koren & Singer 2018, "Shampoo: Preconditioned stochastic tensor
optimization"; Anil, Gupta, Koren, Regan & Singer 2020, "Scalable second order optimization for
deep learning" (grafting, ε, delayed roots; defaults of their ``distributed_shampoo``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from curvebench.optimizers.spec import (
    Choice,
    LogUniform,
    OptimizerSpec,
    Uniform,
    register_optimizer,
    torch_optimizer_factory,
)

__all__ = ["Shampoo", "GRAFTS", "inverse_root"]

GRAFTS = ("adagrad", "adam", "sgd", "none")


def inverse_root(matrix: torch.Tensor, *, power: int, relative_ridge: float) -> torch.Tensor:
    """``(M + δ λ_max I)^{-1/p}`` of a symmetric PSD matrix by eigendecomposition.

    Eigenvalues are clamped at the smallest positive normal number before the power, so a
    singular ``M`` with ``δ = 0`` gives a finite (large) root instead of infinities.
    """
    work = matrix.double() if matrix.dtype == torch.float64 else matrix.float()
    values, vectors = torch.linalg.eigh(work)
    values = values + relative_ridge * values.max().clamp(min=0.0)
    values = values.clamp(min=torch.finfo(work.dtype).tiny)
    return ((vectors * values.pow(-1.0 / power)) @ vectors.T).to(matrix.dtype)


class Shampoo(torch.optim.Optimizer):
    """Shampoo with grafting (see the module docstring for the update).

    Args:
        params: parameters or parameter groups.
        lr: ``α``.
        beta1: momentum ``β₁`` (moving average).
        beta2: decay ``β₂`` of the statistics and of the Adam graft (1: plain sums).
        matrix_eps: ``ε``, the initial statistics ``ε I``.
        relative_ridge: ``δ``, added as ``δ λ_max`` before the inverse root.
        diagonal_eps: ``ε_d`` of the AdaGrad/Adam graft.
        weight_decay: ``η``, added to the grafted update.
        graft: one of :data:`GRAFTS`.
        nesterov: Nesterov momentum.
        start_preconditioning_step: first step (counted from 1) that uses the roots.
        inverse_update_period: ``T``.
        max_preconditioner_dim: dimensions above this are not preconditioned.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        *,
        lr: float = 1e-3,
        beta1: float = 0.9,
        beta2: float = 0.999,
        matrix_eps: float = 1e-6,
        relative_ridge: float = 1e-6,
        diagonal_eps: float = 1e-10,
        weight_decay: float = 0.0,
        graft: str = "adam",
        nesterov: bool = True,
        start_preconditioning_step: int = 5,
        inverse_update_period: int = 10,
        max_preconditioner_dim: int = 4096,
    ) -> None:
        checks = [
            (lr > 0, f"lr must be positive, got {lr}"),
            (0 <= beta1 < 1, f"beta1 must be in [0, 1), got {beta1}"),
            (0 < beta2 <= 1, f"beta2 must be in (0, 1], got {beta2}"),
            (matrix_eps > 0, f"matrix_eps must be positive, got {matrix_eps}"),
            (relative_ridge >= 0, f"relative_ridge must be >= 0, got {relative_ridge}"),
            (diagonal_eps >= 0, f"diagonal_eps must be >= 0, got {diagonal_eps}"),
            (weight_decay >= 0, f"weight_decay must be >= 0, got {weight_decay}"),
            (graft in GRAFTS, f"graft must be one of {GRAFTS}, got {graft!r}"),
            (start_preconditioning_step >= 1, "start_preconditioning_step must be >= 1"),
            (inverse_update_period >= 1, "inverse_update_period must be >= 1"),
            (max_preconditioner_dim >= 1, "max_preconditioner_dim must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        defaults = dict(lr=lr, beta1=beta1, beta2=beta2, matrix_eps=matrix_eps,
                        relative_ridge=relative_ridge, diagonal_eps=diagonal_eps,
                        weight_decay=weight_decay, graft=graft, nesterov=nesterov,
                        start_preconditioning_step=start_preconditioning_step,
                        inverse_update_period=inverse_update_period,
                        max_preconditioner_dim=max_preconditioner_dim)
        super().__init__(params, defaults)

    @staticmethod
    def _preconditioned(p: torch.Tensor, group: dict) -> bool:
        return p.dim() >= 2 and max(p.shape[0], p[0].numel()) <= group["max_preconditioner_dim"]

    def _init_state(self, p: torch.Tensor, group: dict) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["graft_statistics"] = torch.zeros_like(p)
            state["graft_momentum"] = torch.zeros_like(p)
            state["momentum"] = torch.zeros_like(p)
            if self._preconditioned(p, group):
                for key, dim in (("L", p.shape[0]), ("R", p[0].numel())):
                    eye = torch.eye(dim, dtype=p.dtype, device=p.device)
                    state[key] = group["matrix_eps"] * eye
                    state[f"root_{key}"] = eye.clone()
        return state

    def _graft(self, grad: torch.Tensor, state: dict, group: dict) -> torch.Tensor:
        graft, beta2, step = group["graft"], group["beta2"], state["step"]
        statistics = state["graft_statistics"]
        if graft == "adagrad":
            statistics.addcmul_(grad, grad)
            return grad / (statistics.sqrt() + group["diagonal_eps"])
        if graft == "adam":
            statistics.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            corrected = statistics / (1 - beta2**step) if beta2 < 1 else statistics / step
            return grad / (corrected.sqrt() + group["diagonal_eps"])
        return grad.clone()

    def _shampoo_direction(self, grad: torch.Tensor, state: dict, group: dict) -> torch.Tensor:
        matrix = grad.reshape(grad.shape[0], -1)
        beta2 = group["beta2"]
        weight = 1.0 if beta2 == 1 else 1 - beta2
        state["L"].mul_(beta2).addmm_(matrix, matrix.T, alpha=weight)
        state["R"].mul_(beta2).addmm_(matrix.T, matrix, alpha=weight)
        step, start = state["step"], group["start_preconditioning_step"]
        if step % group["inverse_update_period"] == 0 or step == start:
            for key in ("L", "R"):
                state[f"root_{key}"] = inverse_root(state[key], power=4,
                                                    relative_ridge=group["relative_ridge"])
        return (state["root_L"] @ matrix @ state["root_R"]).reshape(grad.shape)

    @torch.no_grad()
    def step(self, closure=None):
        """One step; ``closure`` (optional) re-evaluates the loss as in ``torch.optim``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, lr = group["beta1"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self._init_state(p, group)
                state["step"] += 1
                grafted = self._graft(grad, state, group)
                if "L" in state:
                    direction = self._shampoo_direction(grad, state, group)
                    if group["graft"] != "none":
                        direction.mul_(grafted.norm() / (direction.norm() + 1e-16))
                else:
                    direction = grafted.clone()
                if group["weight_decay"]:
                    grafted.add_(p, alpha=group["weight_decay"])
                    direction.add_(p, alpha=group["weight_decay"])
                state["momentum"].lerp_(direction, 1 - beta1)
                state["graft_momentum"].lerp_(grafted, 1 - beta1)
                preconditioning = state["step"] >= group["start_preconditioning_step"]
                momentum = state["momentum"] if preconditioning else state["graft_momentum"]
                current = direction if preconditioning else grafted
                update = momentum.lerp(current, 1 - beta1) if group["nesterov"] else momentum
                p.add_(update, alpha=-lr)
        return loss


register_optimizer(
    OptimizerSpec(
        name="shampoo",
        description="Shampoo: Kronecker-factored full-matrix AdaGrad with grafting and delayed "
                    "inverse fourth roots.",
        factory=torch_optimizer_factory(Shampoo),
        defaults={"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "matrix_eps": 1e-6,
                  "relative_ridge": 1e-6, "diagonal_eps": 1e-10, "weight_decay": 0.0,
                  "graft": "adam", "nesterov": True, "start_preconditioning_step": 5,
                  "inverse_update_period": 10, "max_preconditioner_dim": 4096},
        search_space={"lr": LogUniform(1e-5, 1.0), "beta1": Uniform(0.0, 0.99),
                      "matrix_eps": LogUniform(1e-10, 1e-2),
                      "graft": Choice(("adam", "adagrad"))},
        reference="Gupta, Koren & Singer 2018 (Shampoo); Anil et al. 2020, 'Scalable second "
                  "order optimization for deep learning' (grafting, ε, delayed roots). Defaults: "
                  "the authors' distributed_shampoo (β₁ 0.9, β₂ 0.999, ε 1e-6, ε_d 1e-10, "
                  "start step 5, Nesterov); root period 10 and the Adam graft chosen for short "
                  "runs (the authors recompute roots every 1-1000 steps).",
    )
)
