"""EKFAC: K-FAC's eigenbasis with the curvature's diagonal re-estimated in it.

For every Linear or convolution layer (:mod:`curvebench.optimizers.layerwise`) EKFAC keeps the
K-FAC factors ``A`` and ``S`` (moving averages with decay ``ε``, with the conventions of
:mod:`curvebench.kronecker`: ``A = (1/N) Σ_{n,t} ã ãᵀ``, ``S = (1/T) Σ_{k,n,t} B Bᵀ``), their
eigenvectors ``Q_A``, ``Q_S``, and a scaling ``s`` with one entry per weight: the second moment of
the per-example gradients projected onto the Kronecker eigenbasis,

    s = Σ_k (1/N) Σ_n ( Q_Sᵀ Ĝ_{k,n} Q_A )²,     Ĝ_{k,n} = Σ_t ĉ_{k,n,t} ã_{n,t}ᵀ,

``ĉ_{k,n,t}`` the per-example backpropagation of vector ``k`` of a factor of the loss's output
Hessian: its exact columns (``curvature="kflr"``: the Fisher/GGN in closed form; ``D − 1`` for
softmax cross-entropy, ``D`` otherwise; ``s`` depends on them only through ``C_n C_nᵀ``), or
``mc_samples`` Monte-Carlo draws (``"kfac"``, the paper's choice). K-FAC's own diagonal would
be ``λ_S ⊗ λ_A``; ``s`` is the best diagonal in that basis in Frobenius norm (George et al.,
Theorem 1). The step for the layer's gradient matrix ``V`` is

    U = Q_S [ (Q_Sᵀ V Q_A) / (s + λ) ] Q_Aᵀ

then KL clipping, heavy-ball momentum and ``θ ← θ − α ν m`` as in K-FAC. The factors are updated
every ``cov_update_period`` steps, the eigenbasis every ``eigen_update_period`` steps (when the
scaling is re-estimated from the batch), and the scaling, a moving average with the same ``ε``,
every ``scale_update_period`` steps. Parameters of other layers take the plain gradient.

Reference: George, Laurent, Bouthillier, Ballas & Vincent 2018, "Fast approximate natural
gradient descent in a Kronecker-factored eigenbasis" (NeurIPS). Defaults: damping 1e-3, ε 0.95
and KL clipping 1e-2 as this package's K-FAC, lr 0.1 (ours: there is no damping adaptation
here), one Monte-Carlo sample, the eigenbasis every 20 steps and the scaling every step (the
paper amortises the eigendecomposition and re-estimates the scaling more often).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from curvebench.kronecker import gram
from curvebench.losses import CurvatureLoss
from curvebench.optimizers.layerwise import LayerBatch, LayerwiseOptimizer, check
from curvebench.optimizers.spec import (
    Choice,
    LogUniform,
    OptimizerSpec,
    Uniform,
    curvature_optimizer_factory,
    register_optimizer,
)

__all__ = ["EKFAC", "EKFAC_CURVATURES"]

EKFAC_CURVATURES = ("kfac", "kflr")


class EKFAC(LayerwiseOptimizer):
    """EKFAC (see the module docstring).

    Args:
        model: the network.
        loss: its loss.
        curvature: ``"kfac"`` (Monte-Carlo) or ``"kflr"`` (exact columns).
        lr: ``α``.
        damping: ``λ``.
        momentum: heavy-ball ``μ``.
        weight_decay: ``η`` (added to the gradient).
        ema_decay: ``ε``.
        cov_update_period: steps between factor updates.
        eigen_update_period: steps between eigendecompositions.
        scale_update_period: steps between scaling updates.
        mc_samples: Monte-Carlo samples (``kfac``).
        kl_clip: ``κ`` (0: none).
        params: parameters (default: the model's trainable parameters).
    """

    def __init__(self, model: nn.Module, *, loss: CurvatureLoss, curvature: str = "kfac",
                 lr: float = 0.1, damping: float = 1e-3, momentum: float = 0.0,
                 weight_decay: float = 0.0, ema_decay: float = 0.95, cov_update_period: int = 1,
                 eigen_update_period: int = 20, scale_update_period: int = 1,
                 mc_samples: int = 1, kl_clip: float = 1e-2,
                 params: Iterable[torch.Tensor] | None = None) -> None:
        check(curvature in EKFAC_CURVATURES,
              f"curvature must be one of {EKFAC_CURVATURES}, got {curvature!r}")
        check(damping > 0, f"damping must be positive, got {damping}")
        check(0 <= ema_decay < 1, f"ema_decay must be in [0, 1), got {ema_decay}")
        check(min(cov_update_period, eigen_update_period, scale_update_period) >= 1,
              "update periods must be >= 1")
        check(mc_samples >= 1, f"mc_samples must be >= 1, got {mc_samples}")
        super().__init__(model, loss=loss, kl_clip=kl_clip, params=params,
                         defaults={"lr": lr, "damping": damping, "momentum": momentum,
                                   "weight_decay": weight_decay})
        self.curvature = curvature
        self.ema_decay = ema_decay
        self.cov_update_period = cov_update_period
        self.eigen_update_period = eigen_update_period
        self.scale_update_period = scale_update_period
        self.mc_samples = mc_samples
        self.seed_generator()

    def _average(self, state: dict, key: str, value: torch.Tensor) -> None:
        if key in state:
            state[key].mul_(self.ema_decay).add_(value, alpha=1 - self.ema_decay)
        else:
            state[key] = value.clone()

    def _output_vectors(self, output: torch.Tensor) -> torch.Tensor:
        """``(K, N, D)`` factor vectors of the batch-mean loss's output Hessian."""
        if self.curvature == "kflr":
            return self.loss.hessian_factor(output.detach()).permute(2, 0, 1)
        return torch.stack([self.loss.sampled_output_gradient(output, generator=self.generator)
                            for _ in range(self.mc_samples)]) / self.mc_samples**0.5

    def _schedule(self, step: int) -> tuple[bool, bool, bool]:
        """``(update factors, new eigenbasis, update scaling)`` at step ``step``."""
        new_basis = step % self.eigen_update_period == 0
        return (step % self.cov_update_period == 0 or new_basis, new_basis,
                step % self.scale_update_period == 0 or new_basis)

    def needs_graph(self, step: int) -> bool:
        update_factors, _, update_scale = self._schedule(step)
        return update_factors or update_scale

    def update_statistics(self, step: int, batches: dict[nn.Module, LayerBatch],
                          matrices: dict[nn.Module, torch.Tensor], output: torch.Tensor) -> None:
        update_factors, new_basis, update_scale = self._schedule(step)
        self.step_info.update({"factors_updated": float(update_factors),
                               "inverses_updated": float(new_basis)})
        if not (update_factors or update_scale) or not batches:
            return
        vectors = self._output_vectors(output)
        layers = list(batches)
        backpropagated = torch.autograd.grad(
            output, [batches[m].outputs for m in layers], grad_outputs=vectors,
            is_grads_batched=True)
        self.counters["backward_passes"] += vectors.shape[0]
        for layer, b in zip(layers, backpropagated, strict=True):
            per_position = self.per_position(layer, b.flatten(0, 1))
            b = per_position.reshape(b.shape[0], b.shape[1], *per_position.shape[1:])
            self._update_layer(layer, batches[layer], b, update_factors, new_basis,
                               update_scale)
        self.counters["factor_updates"] += int(update_factors)
        self.counters["inverse_updates"] += int(new_basis)

    def _update_layer(self, layer: nn.Module, batch: LayerBatch, b: torch.Tensor,
                      update_factors: bool, new_basis: bool, update_scale: bool) -> None:
        """Fold one batch into the layer's factors, eigenbasis and scaling.

        ``b``: ``(K, N, T, d_out)`` backpropagated vectors; ``batch.inputs``: ``(N, T, d_in)``.
        """
        state = self.state[layer.weight]
        x = batch.inputs
        n, positions = x.shape[0], x.shape[1]
        if update_factors:
            flat_x, flat_b = x.reshape(-1, x.shape[-1]), b.reshape(-1, b.shape[-1])
            for key, rows, scale in (("A", flat_x, 1 / n), ("S", flat_b, 1 / positions)):
                state[key] = gram(rows.T, scale=scale, running=state.get(key),
                                  decay=self.ema_decay)
        if new_basis:
            for key in ("A", "S"):
                state[f"Q{key}"] = torch.linalg.eigh(state[key])[1]
        if update_scale:
            scale = _projected_second_moment(x @ state["QA"], b @ state["QS"])
            if new_basis:
                state["scale"] = scale
            else:
                self._average(state, "scale", scale)

    def layer_direction(self, layer: nn.Module, matrix: torch.Tensor) -> torch.Tensor:
        state = self.state[layer.weight]
        if "scale" not in state:
            return matrix
        damping = self._group(layer.weight)["damping"]
        q_a, q_s = state["QA"], state["QS"]
        return q_s @ ((q_s.T @ matrix @ q_a) / (state["scale"] + damping)) @ q_a.T


def _projected_second_moment(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``Σ_{k,n} (Σ_t b_{k,n,t} x_{n,t}ᵀ)²`` elementwise, ``(d_out, d_in)``.

    ``x``: ``(N, T, d_in)``, ``b``: ``(K, N, T, d_out)``, both already in the eigenbases. With
    one position the square factorises, ``Σ_n (Σ_k b²)ᵀ x²``, one matrix product; otherwise the
    per-example gradients are formed one vector ``k`` at a time (``N·d_out·d_in`` memory).
    """
    if x.shape[1] == 1:
        return b.square().sum(dim=0)[:, 0].T @ x[:, 0].square()
    total = x.new_zeros(b.shape[-1], x.shape[-1])
    for bk in b:
        total += (bk.transpose(1, 2) @ x).square().sum(dim=0)
    return total


register_optimizer(
    OptimizerSpec(
        name="ekfac",
        description="EKFAC: K-FAC eigenbasis with per-coordinate second moments re-estimated "
                    "in it.",
        factory=curvature_optimizer_factory(EKFAC),
        defaults={"curvature": "kfac", "lr": 0.1, "damping": 1e-3, "momentum": 0.0,
                  "weight_decay": 0.0, "ema_decay": 0.95, "cov_update_period": 1,
                  "eigen_update_period": 20, "scale_update_period": 1, "mc_samples": 1,
                  "kl_clip": 1e-2},
        search_space={"lr": LogUniform(1e-3, 10.0), "damping": LogUniform(1e-6, 1.0),
                      "momentum": Uniform(0.0, 0.99), "curvature": Choice(EKFAC_CURVATURES)},
        needs_curvature=True,
        reference="George et al. 2018, 'Fast approximate natural gradient descent in a "
                  "Kronecker-factored eigenbasis' (NeurIPS). Defaults: damping 1e-3, ε 0.95, KL "
                  "clip 1e-2 as this package's K-FAC; lr 0.1 ours; 1 MC sample, eigenbasis "
                  "every 20 steps, scaling every step (the paper amortises the "
                  "eigendecomposition).",
    )
)
