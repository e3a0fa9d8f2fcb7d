"""K-BFGS(L): block-diagonal quasi-Newton with Kronecker-factored BFGS inverses per layer.

For every Linear or convolution layer (:mod:`curvebench.optimizers.layerwise`) the inverse of
the layer's curvature block is approximated by ``H_A ⊗ H_G`` and the step for its gradient
matrix ``V = [∇W, ∇b]`` is ``U = H_G V H_A`` (Goldfarb, Ren & Bahamou 2020):

* ``H_A ≈ (A + λ_A I)⁻¹`` for the input factor ``A = (1/N) Σ_{n,t} ã ãᵀ`` (moving average
  ``A ← β A + (1 − β) Â``, first value as is): the damped inverse at the first step, then one
  *Hessian-action* BFGS update per step with ``s = H_A ā``, ``y = A s + λ_A s`` (``ā`` the mean
  input).
* ``H_G`` for the output side, from the change the step makes on the *same* batch: a second
  forward and backward pass after the update gives ``s = h̄⁺ − h̄`` (mean layer outputs) and
  ``y = ḡ⁺ − ḡ`` (mean per-example output gradients). Double damping keeps the pair positive:
  Powell's, ``s ← θ s + (1 − θ) H_G y`` with ``θ = (1 − μ₁) yᵀH_G y / (yᵀH_G y − sᵀy)`` when
  ``sᵀy < μ₁ yᵀH_G y``, then Levenberg–Marquardt's, ``y ← y + λ_G s``. ``memory = 0`` keeps
  ``H_G`` as a matrix updated by BFGS (K-BFGS); ``memory = p > 0`` keeps the last ``p`` pairs
  and applies ``H_G`` by the L-BFGS two-loop recursion from ``H₀ = I`` (K-BFGS(L)).

BFGS: ``H ← (I − ρ s yᵀ) H (I − ρ y sᵀ) + ρ s sᵀ``, ``ρ = 1/(sᵀy)``. The damping is split as
``λ_A = λ_G = √λ``. Then heavy-ball momentum and ``θ ← θ − α m``; before the first pair ``H_G``
is the identity. Parameters of other layers take the plain gradient. Each step costs two
forward and two backward passes.

Reference: Goldfarb, Ren & Bahamou 2020, "Practical quasi-Newton methods for training deep
neural networks" (NeurIPS). Defaults as we read the paper's experiments (λ = 0.3, μ₁ = 0.2,
β = 0.9, momentum 0.9, p = 100 pairs); lr 0.1 is our choice (the paper tunes it).
ASDL's ``KronBfgsGradientMaker`` implements K-BFGS with a full ``H_G``, but its Powell step
subtracts ``(1 − θ) H y`` where the paper adds it, so it is not used as a peer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from curvebench.losses import CurvatureLoss
from curvebench.optimizers.layerwise import (
    LayerBatch,
    LayerwiseOptimizer,
    check,
)
from curvebench.optimizers.spec import (
    IntUniform,
    LogUniform,
    OptimizerSpec,
    Uniform,
    curvature_optimizer_factory,
    register_optimizer,
)

__all__ = ["KBFGS", "bfgs_inverse_update", "double_damping"]


def bfgs_inverse_update(inverse: torch.Tensor, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(I − ρ s yᵀ) H (I − ρ y sᵀ) + ρ s sᵀ`` with ``ρ = 1/(sᵀy)``."""
    rho = 1.0 / (s @ y)
    hy = inverse @ y
    return (inverse - rho * (torch.outer(s, hy) + torch.outer(hy, s))
            + (rho**2 * (y @ hy) + rho) * torch.outer(s, s))


def double_damping(s: torch.Tensor, y: torch.Tensor, hy: torch.Tensor, *, mu1: float,
                   mu2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Powell's damping of ``s`` (with ``hy = H y``), then Levenberg–Marquardt's of ``y``."""
    yhy, sy = y @ hy, s @ y
    if sy < mu1 * yhy:
        theta = (1 - mu1) * yhy / (yhy - sy)
        s = theta * s + (1 - theta) * hy
    return s, y + mu2 * s


class KBFGS(LayerwiseOptimizer):
    """K-BFGS / K-BFGS(L) (see the module docstring).

    Args:
        model: the network.
        loss: its loss.
        lr: ``α``.
        damping: ``λ``.
        momentum: heavy-ball ``μ``.
        weight_decay: ``η`` (added to the gradient).
        stat_decay: ``β`` of ``A``.
        mu1: Powell's ``μ₁ ∈ (0, 1)``.
        memory: L-BFGS pairs ``p`` (0: full BFGS matrix).
        params: parameters (default: the model's trainable parameters).
    """

    def __init__(self, model: nn.Module, *, loss: CurvatureLoss, lr: float = 0.1,
                 damping: float = 0.3, momentum: float = 0.9, weight_decay: float = 0.0,
                 stat_decay: float = 0.9, mu1: float = 0.2, memory: int = 100,
                 params: Iterable[torch.Tensor] | None = None) -> None:
        check(damping > 0, f"damping must be positive, got {damping}")
        check(0 <= stat_decay < 1, f"stat_decay must be in [0, 1), got {stat_decay}")
        check(0 < mu1 < 1, f"mu1 must be in (0, 1), got {mu1}")
        check(memory >= 0, f"memory must be >= 0, got {memory}")
        super().__init__(model, loss=loss, params=params,
                         defaults={"lr": lr, "damping": damping, "momentum": momentum,
                                   "weight_decay": weight_decay})
        self.stat_decay = stat_decay
        self.mu1 = mu1
        self.memory = memory

    def _root_damping(self, layer: nn.Module) -> float:
        return math.sqrt(self._group(layer.weight)["damping"])

    def _means(self, layer: nn.Module, batch: LayerBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h̄, ḡ)``: mean layer output and mean per-example output gradient."""
        n = batch.output_gradients.shape[0]
        outputs = self.per_position(layer, batch.outputs)
        return (outputs.mean(dim=(0, 1)),
                n * batch.output_gradients.mean(dim=(0, 1)))

    def update_statistics(self, step: int, batches: dict[nn.Module, LayerBatch],
                          matrices: dict[nn.Module, torch.Tensor], output: torch.Tensor) -> None:
        for layer, batch in batches.items():
            state = self.state[layer.weight]
            x = batch.inputs
            flat = x.reshape(-1, x.shape[-1])
            new = flat.T @ flat / x.shape[0]
            damping = self._root_damping(layer)
            if "A" not in state:
                state["A"] = new.clone()
                eye = torch.eye(new.shape[0], dtype=new.dtype, device=new.device)
                state["H_A"] = torch.linalg.inv(new + damping * eye)
            else:
                state["A"].mul_(self.stat_decay).add_(new, alpha=1 - self.stat_decay)
                s = state["H_A"] @ x.mean(dim=(0, 1))
                y = state["A"] @ s + damping * s
                state["H_A"] = bfgs_inverse_update(state["H_A"], s, y)
            state["h_mean"], state["g_mean"] = self._means(layer, batch)

    def _apply_h_g(self, state: dict, matrix: torch.Tensor) -> torch.Tensor:
        """``H_G`` applied to the columns of ``matrix`` (identity before the first pair)."""
        if self.memory == 0:
            return state["H_G"] @ matrix if "H_G" in state else matrix
        count = int(state.get("pairs", 0))
        if count == 0:
            return matrix
        ss, ys = state["S_pairs"][:count], state["Y_pairs"][:count]
        rho = 1.0 / (ss * ys).sum(dim=1)
        q, alphas = matrix.clone(), []
        for i in reversed(range(count)):                      # newest pair first
            alpha = rho[i] * (ss[i] @ q)
            q -= torch.outer(ys[i], alpha)
            alphas.append(alpha)
        for i, alpha in zip(range(count), reversed(alphas), strict=True):
            beta = rho[i] * (ys[i] @ q)
            q += torch.outer(ss[i], alpha - beta)
        return q

    def layer_direction(self, layer: nn.Module, matrix: torch.Tensor) -> torch.Tensor:
        state = self.state[layer.weight]
        if "H_A" not in state:                     # no statistics yet (layer not reached)
            return matrix
        return self._apply_h_g(state, matrix @ state["H_A"])

    def curvature_step(self, *, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = super().curvature_step(inputs=inputs, targets=targets)
        if not self.layers:
            return loss
        with self.phase_timer.phase("curvature"):
            _, _, batches, _ = self.forward_backward(inputs, targets)
            for layer, batch in batches.items():
                self._add_pair(layer, batch)
        return loss

    def _add_pair(self, layer: nn.Module, batch: LayerBatch) -> None:
        state = self.state[layer.weight]
        h_new, g_new = self._means(layer, batch)
        s, y = h_new - state["h_mean"], g_new - state["g_mean"]
        hy = self._apply_h_g(state, y.unsqueeze(1)).squeeze(1)
        s, y = double_damping(s, y, hy, mu1=self.mu1, mu2=self._root_damping(layer))
        if not (s @ y > 0 and torch.isfinite(s).all() and torch.isfinite(y).all()):
            return                                  # a zero step: nothing to learn from
        if self.memory == 0:
            eye = torch.eye(s.numel(), dtype=s.dtype, device=s.device)
            state["H_G"] = bfgs_inverse_update(state.get("H_G", eye), s, y)
            return
        if "S_pairs" not in state:
            state["S_pairs"] = s.new_zeros(self.memory, s.numel())
            state["Y_pairs"] = s.new_zeros(self.memory, s.numel())
            state["pairs"] = 0
        count = int(state["pairs"])
        if count == self.memory:                    # drop the oldest
            state["S_pairs"] = state["S_pairs"].roll(-1, dims=0)
            state["Y_pairs"] = state["Y_pairs"].roll(-1, dims=0)
            count -= 1
        state["S_pairs"][count], state["Y_pairs"][count] = s, y
        state["pairs"] = count + 1


register_optimizer(
    OptimizerSpec(
        name="kbfgs",
        description="K-BFGS(L): per-layer Kronecker-factored BFGS inverses (Hessian-action BFGS "
                    "for the input side, damped L-BFGS pairs for the output side).",
        factory=curvature_optimizer_factory(KBFGS),
        defaults={"lr": 0.1, "damping": 0.3, "momentum": 0.9, "weight_decay": 0.0,
                  "stat_decay": 0.9, "mu1": 0.2, "memory": 100},
        search_space={"lr": LogUniform(1e-4, 1.0), "damping": LogUniform(1e-3, 10.0),
                      "momentum": Uniform(0.0, 0.99), "memory": IntUniform(0, 100)},
        needs_curvature=True,
        reference="Goldfarb, Ren & Bahamou 2020, 'Practical quasi-Newton methods for training "
                  "deep neural networks' (NeurIPS). Defaults as we read the paper (damping 0.3, "
                  "μ₁ 0.2, β 0.9, momentum 0.9, 100 L-BFGS pairs); lr 0.1 ours.",
    )
)
