"""AdaHessian: Adam with a Hutchinson estimate of the Hessian diagonal in place of g².

One step on a batch with loss ``L`` (Yao, Gholami, Shen, Mustafa, Keutzer, Mahoney 2021,
Algorithm 1):

1. One forward pass and one differentiable backward pass give ``g = ∇L`` and the graph of
   ``g``; with a Rademacher probe ``z`` (entries ±1), one more backward gives ``H z``, and
   ``D = z ⊙ H z`` is an unbiased estimate of ``diag(H)`` (Hutchinson 1990; averaged over
   ``num_probes`` probes).
2. Spatial averaging: for a convolution kernel ``(out, in, k₁, k₂)`` the estimate is replaced
   by the mean of ``|D|`` over the kernel's spatial positions (the authors' code; other
   parameters keep ``|D|``, which the squares below make irrelevant).
3. ``m ← β₁ m + (1 − β₁) g``, ``v ← β₂ v + (1 − β₂) D²``, and
   ``θ ← θ − α [ m / (1 − β₁ᵗ) ] / ( (v / (1 − β₂ᵗ))^{k/2} + ε ) − α ω θ`` with the Hessian
   power ``k ∈ (0, 1]`` and decoupled weight decay ``ω``.

Defaults are those of the authors' code (repository ``amirgholami/adahessian``, file
``image_classification/optim_adahessian.py``): ``α = 0.15``, ``β = (0.9, 0.999)``,
``ε = 1e-4``, ``k = 1``, ``ω = 0``, one probe per step.

The Hessian-vector products here come from one differentiable backward pass
(:class:`HessianBatch`), not from :class:`~curvebench.curvature.Linearization`, whose Hessian
products cost one more backward pass on top of its gradient pass. Sophia-H, ESGD and LiSSA's
Hessian mode share :class:`HessianBatch` and :func:`draw_probes`.

Reference: Yao et al. 2021, "ADAHESSIAN: An adaptive second order optimizer for machine
learning" (AAAI; arXiv 2006.00719).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from curvebench.losses import CurvatureLoss
from curvebench.optimizers.base import CurvatureOptimizer
from curvebench.optimizers.spec import (
    LogUniform,
    OptimizerSpec,
    Uniform,
    curvature_optimizer_factory,
    register_optimizer,
)

__all__ = ["AdaHessian", "HessianBatch", "draw_probes", "check_number"]

Distribution = Literal["rademacher", "gaussian"]


def check_number(name: str, value: Any, *, low: float, high: float = float("inf"),
                 open_low: bool = False, open_high: bool = False,
                 integer: bool = False) -> None:
    """Raise a one-line ``ValueError`` unless ``value`` is a finite number in the range."""
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value != value or abs(
            value) == float("inf"):
        raise ValueError(f"{name} must be a finite {'integer' if integer else 'number'}, "
                         f"got {value!r}")
    below = value <= low if open_low else value < low
    above = value >= high if open_high else value > high
    if below or above:
        left, right = "(" if open_low else "[", ")" if open_high or high == float("inf") else "]"
        raise ValueError(f"{name} must be in {left}{low:g}, {high:g}{right}, got {value!r}")


def draw_probes(params: Sequence[torch.Tensor], *, distribution: Distribution,
                generator: torch.Generator) -> list[torch.Tensor]:
    """One probe vector shaped like ``params``: Rademacher (±1) or standard Gaussian entries.

    Drawn parameter by parameter, in order, from ``generator`` only.
    """
    if distribution == "rademacher":
        return [torch.randint(0, 2, p.shape, generator=generator, device=p.device).to(p.dtype)
                .mul_(2).sub_(1) for p in params]
    if distribution == "gaussian":
        return [torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype)
                for p in params]
    raise ValueError(f"distribution must be 'rademacher' or 'gaussian', got {distribution!r}")


class HessianBatch:
    """The batch loss with a differentiable gradient: ``g`` and ``H v`` for many ``v``.

    One forward pass and one backward pass with ``create_graph=True``; each
    :meth:`hessian_vector_product` is one more backward pass through the gradient's graph
    (Pearlmutter 1994).

    Attributes:
        loss_value: the detached batch loss.
        gradient: the detached gradient, one tensor per parameter.
    """

    def __init__(self, model: nn.Module, *, loss: CurvatureLoss, inputs: torch.Tensor,
                 targets: torch.Tensor, params: Sequence[torch.Tensor]) -> None:
        self.params = list(params)
        with torch.enable_grad():
            value = loss(model(inputs), targets)
            self._grads = torch.autograd.grad(value, self.params, create_graph=True)
        self.loss_value = value.detach()
        self.gradient = [g.detach() for g in self._grads]

    def hessian_vector_product(self, vectors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``H v`` for ``v`` given as one tensor per parameter."""
        products = torch.autograd.grad(self._grads, self.params, list(vectors),
                                       retain_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if h is None else h for h, p in
                zip(products, self.params, strict=True)]

    def hutchinson_diagonal(self, *, probes: int, distribution: Distribution,
                            generator: torch.Generator) -> list[torch.Tensor]:
        """``(1/S) Σ_s z_s ⊙ H z_s``: unbiased estimate of ``diag(H)`` from ``S`` probes."""
        total = [torch.zeros_like(p) for p in self.params]
        for _ in range(probes):
            z = draw_probes(self.params, distribution=distribution, generator=generator)
            for t, hz, zi in zip(total, self.hessian_vector_product(z), z, strict=True):
                t.addcmul_(hz, zi, value=1.0 / probes)
        return total


def spatial_average(estimate: torch.Tensor) -> torch.Tensor:
    """``|D|`` averaged over the spatial positions of a 4-D convolution kernel (else ``|D|``)."""
    if estimate.dim() == 4:
        return estimate.abs().mean(dim=(2, 3), keepdim=True).expand_as(estimate)
    return estimate.abs()


class AdaHessian(CurvatureOptimizer):
    """AdaHessian (see the module docstring for the update).

    Args:
        model: the network.
        loss: its :class:`~curvebench.losses.CurvatureLoss`.
        lr: step size ``α > 0``.
        beta1: gradient moving-average rate ``β₁ ∈ [0, 1)``.
        beta2: Hessian-diagonal moving-average rate ``β₂ ∈ [0, 1)``.
        eps: ``ε > 0`` added to the denominator.
        hessian_power: ``k ∈ (0, 1]``.
        weight_decay: decoupled weight decay ``ω ≥ 0``.
        num_probes: Rademacher probes per step (``≥ 1``).
        params: parameters to optimise (default: all that require gradients).

    Raises:
        ValueError: an out-of-range hyperparameter.
    """

    def __init__(self, model: nn.Module, *, loss: CurvatureLoss, lr: float = 0.15,
                 beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-4,
                 hessian_power: float = 1.0, weight_decay: float = 0.0, num_probes: int = 1,
                 params: Sequence[torch.Tensor] | None = None) -> None:
        check_number("lr", lr, low=0.0, open_low=True)
        check_number("beta1", beta1, low=0.0, high=1.0, open_high=True)
        check_number("beta2", beta2, low=0.0, high=1.0, open_high=True)
        check_number("eps", eps, low=0.0, open_low=True)
        check_number("hessian_power", hessian_power, low=0.0, high=1.0, open_low=True)
        check_number("weight_decay", weight_decay, low=0.0)
        check_number("num_probes", num_probes, low=1, integer=True)
        defaults = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, hessian_power=hessian_power,
                        weight_decay=weight_decay, num_probes=num_probes)
        super().__init__(model, loss=loss, defaults=defaults, params=params)
        self.seed_generator()

    def curvature_step(self, *, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        h = self.param_groups[0]
        params = self.parameters_list()
        with self.phase_timer.phase("curvature"):
            batch = HessianBatch(self.model, loss=self.loss, inputs=inputs, targets=targets,
                                 params=params)
            generator = self.generator
            diagonal = batch.hutchinson_diagonal(probes=h["num_probes"],
                                                 distribution="rademacher", generator=generator)
        self.counters.update(forward_passes=1, backward_passes=1,
                             hessian_products=h["num_probes"])
        with self.phase_timer.phase("update"), torch.no_grad():
            for group in self.param_groups:
                self._update(group, batch, diagonal, params)
        return batch.loss_value

    def _update(self, group: dict[str, Any], batch: HessianBatch,
                diagonal: list[torch.Tensor], params: list[torch.Tensor]) -> None:
        index = {id(p): i for i, p in enumerate(params)}
        beta1, beta2 = group["beta1"], group["beta2"]
        for p in group["params"]:
            i = index[id(p)]
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_hessian_diag_sq"] = torch.zeros_like(p)
            state["step"] += 1
            t = state["step"]
            estimate = spatial_average(diagonal[i])
            state["exp_avg"].mul_(beta1).add_(batch.gradient[i], alpha=1 - beta1)
            state["exp_hessian_diag_sq"].mul_(beta2).addcmul_(estimate, estimate,
                                                              value=1 - beta2)
            denominator = (state["exp_hessian_diag_sq"] / (1 - beta2 ** t)).pow_(
                group["hessian_power"] / 2).add_(group["eps"])
            if group["weight_decay"]:
                p.mul_(1 - group["lr"] * group["weight_decay"])
            p.addcdiv_(state["exp_avg"], denominator, value=-group["lr"] / (1 - beta1 ** t))



register_optimizer(OptimizerSpec(
    name="adahessian",
    description="AdaHessian: Adam with a Hutchinson (Rademacher) Hessian-diagonal estimate, "
                "spatially averaged over convolution kernels.",
    factory=curvature_optimizer_factory(AdaHessian),
    defaults={"lr": 0.15, "beta1": 0.9, "beta2": 0.999, "eps": 1e-4, "hessian_power": 1.0,
              "weight_decay": 0.0, "num_probes": 1},
    search_space={"lr": LogUniform(1e-3, 1.0), "hessian_power": Uniform(0.5, 1.0),
                  "eps": LogUniform(1e-8, 1e-2)},
    needs_curvature=True,
    supports_conv=True,
    deterministic=True,
    reference="Yao, Gholami, Shen, Mustafa, Keutzer & Mahoney 2021, 'ADAHESSIAN: An adaptive "
              "second order optimizer for machine learning' (arXiv 2006.00719); defaults from "
              "the authors' code (amirgholami/adahessian, "
              "image_classification/optim_adahessian.py).",
))
