"""What the layer-wise Kronecker methods (Eva, MKOR, TNT, K-BFGS) share: layers, statistics, steps.

:class:`LayerwiseOptimizer` runs the forward and backward pass of a step and records, for every
Linear or convolution layer whose weight and bias are both optimised (the layers with a
Kronecker block, :func:`curvebench.kronecker.kronecker_layers`):

* ``ã``: its inputs per position with a homogeneous coordinate for the bias, ``(N, T, d_in+1)``;
* ``b``: the gradient of the batch-mean loss with respect to its outputs, ``(N, T, d_out)``;

and presents the layer's gradient as the matrix ``V = [∇W, ∇b]`` of
:func:`curvebench.kronecker.parameter_matrix`, so that a Kronecker preconditioner
``(A ⊗ S)⁻¹`` acts as ``S⁻¹ V A⁻¹``. A subclass turns ``V`` into a direction
(:meth:`LayerwiseOptimizer.layer_direction`); parameters outside these layers take the gradient
itself (listed in :attr:`LayerwiseOptimizer.run_notes`). The step then applies the optional KL
clipping ``ν = min(1, √(κ / (α² Σ ⟨U, V⟩)))`` (Ba, Grosse & Martens 2017), heavy-ball momentum
``m ← μ m + νU`` and ``θ ← θ − α m``, with the weight decay ``η θ`` in ``V``.

Everything this package takes from :mod:`curvebench.kronecker` goes through this module.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from curvebench.kronecker import (
    kronecker_layers,
    layer_inputs,
    layer_pre_activations,
    parameter_matrix,
    split_parameter_matrix,
)
from curvebench.losses import CurvatureLoss
from curvebench.optimizers.base import CurvatureOptimizer

__all__ = ["LayerwiseOptimizer", "LayerBatch", "check"]


def check(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``condition`` (hyperparameter validation)."""
    if not condition:
        raise ValueError(message)


class LayerBatch:
    """One layer's recorded tensors for the current batch.

    Attributes:
        inputs: ``ã``, ``(N, T, d_in + 1)`` (no extra column without a bias).
        output_gradients: ``b = ∂L/∂s``, ``(N, T, d_out)``, of the batch-mean loss.
        outputs: the layer's output ``s`` as produced by the forward pass; still in the graph
            (for backpropagating more vectors) when the graph was retained, else detached.
    """

    def __init__(self, inputs: torch.Tensor, output_gradients: torch.Tensor,
                 outputs: torch.Tensor) -> None:
        self.inputs = inputs
        self.output_gradients = output_gradients
        self.outputs = outputs


class _Recorder:
    """Forward hooks recording inputs and output gradients while :attr:`capturing`.

    A separate object (not the optimizer), so that a deep copy of the model copies a working
    hook rather than a partial optimizer.
    """

    def __init__(self, layers: list[nn.Module]) -> None:
        self.capturing = False
        self.recorded: dict[nn.Module, list[torch.Tensor]] = {}
        self.handles = [m.register_forward_hook(self.hook) for m in layers]

    def hook(self, module: nn.Module, inputs, output) -> None:
        if not self.capturing or not output.requires_grad:
            return
        record = [inputs[0].detach(), output]
        self.recorded[module] = record

        def keep_first(gradient: torch.Tensor) -> None:
            if len(record) == 2:  # only the loss's backward pass, not later ones
                record.append(gradient.detach())

        output.register_hook(keep_first)


class LayerwiseOptimizer(CurvatureOptimizer):
    """Base of layer-wise Kronecker preconditioners (see the module docstring).

    Args:
        model: the network.
        loss: its loss.
        defaults: parameter-group defaults; must hold ``lr``, ``momentum``, ``weight_decay``.
        kl_clip: ``κ`` (0: no clipping).
        params: parameters (default: the model's trainable parameters).
    """

    def __init__(self, model: nn.Module, *, loss: CurvatureLoss, defaults: Mapping[str, Any],
                 kl_clip: float = 0.0, params: Iterable[torch.Tensor] | None = None) -> None:
        check(defaults["lr"] > 0, f"lr must be positive, got {defaults['lr']}")
        check(0 <= defaults["momentum"] < 1,
              f"momentum must be in [0, 1), got {defaults['momentum']}")
        check(defaults["weight_decay"] >= 0,
              f"weight_decay must be >= 0, got {defaults['weight_decay']}")
        check(kl_clip >= 0, f"kl_clip must be >= 0, got {kl_clip}")
        super().__init__(model, loss=loss, defaults=defaults, params=params)
        self.kl_clip = kl_clip
        optimised = {id(p) for p in self.parameters_list()}
        self.layers: list[nn.Module] = []
        names = []
        for name, module in kronecker_layers(model):
            own = [p for p in (module.weight, module.bias) if p is not None]
            if all(id(p) in optimised for p in own):
                self.layers.append(module)
                names.append(name)
        in_layers = {id(p) for m in self.layers for p in (m.weight, m.bias) if p is not None}
        parameter_names = {id(p): n for n, p in model.named_parameters()}
        self.run_notes: dict[str, Any] = {
            "layers": names,
            "fallback_parameters": [parameter_names.get(id(p), "?") for p in
                                    self.parameters_list() if id(p) not in in_layers],
            "fallback_rule": "the gradient itself (with the same lr, momentum and clipping)",
        }
        self.recorder = _Recorder(self.layers)

    # -- the pieces of a step --------------------------------------------------------------

    def forward_backward(
        self, inputs: torch.Tensor, targets: torch.Tensor, *, record: bool = True,
        retain_graph: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor], dict[nn.Module, LayerBatch], torch.Tensor]:
        """Loss, gradients of :meth:`parameters_list`, each layer's batch (``record``) and the
        network output (in the graph when ``retain_graph``)."""
        params = self.parameters_list()
        recorder = self.recorder
        recorder.recorded = {}
        recorder.capturing = record
        try:
            with self.phase_timer.phase("forward"):
                output = self.model(inputs)
                loss = self.loss(output, targets)
            with self.phase_timer.phase("backward"):
                grads = torch.autograd.grad(loss, params, allow_unused=True,
                                            retain_graph=retain_graph)
        finally:
            recorder.capturing = False
        self.counters["forward_passes"] += 1
        self.counters["backward_passes"] += 1
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads,
                                                                          strict=True)]
        batches = {}
        for layer, (x, out, *gradient) in recorder.recorded.items():
            if not gradient:
                continue
            patches = layer_inputs(layer, x)
            if layer.bias is not None:
                patches = torch.cat([patches, patches.new_ones(*patches.shape[:-1], 1)], -1)
            batches[layer] = LayerBatch(patches, layer_pre_activations(layer, gradient[0]),
                                        out if retain_graph else out.detach())
        recorder.recorded = {}
        return loss.detach(), grads, batches, output

    @staticmethod
    def per_position(layer: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
        """A layer-output-shaped tensor as ``(N, T, d_out)``."""
        return layer_pre_activations(layer, tensor)

    @staticmethod
    def layer_matrix(layer: nn.Module, weight: torch.Tensor,
                     bias: torch.Tensor | None) -> torch.Tensor:
        """``[W, b]`` of weight- and bias-shaped tensors, ``(d_out, d_in + 1)``."""
        return parameter_matrix(layer, weight, bias)

    def gradient_matrices(self, grads: list[torch.Tensor]) -> dict[nn.Module, torch.Tensor]:
        """``V = [∇W + ηW, ∇b + ηb]`` of every layer, from the gradients in parameter order."""
        index = {id(p): i for i, p in enumerate(self.parameters_list())}
        matrices = {}
        for layer in self.layers:
            weight = grads[index[id(layer.weight)]]
            bias = grads[index[id(layer.bias)]] if layer.bias is not None else None
            matrices[layer] = self.layer_matrix(layer, weight, bias)
        return matrices

    def with_weight_decay(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """``∇θ + ηθ`` per parameter."""
        decay = [self._group(p)["weight_decay"] for p in self.parameters_list()]
        return [g + d * p.detach() if d else g
                for p, g, d in zip(self.parameters_list(), grads, decay, strict=True)]

    def _group(self, p: torch.Tensor) -> dict[str, Any]:
        return next(g for g in self.param_groups if any(q is p for q in g["params"]))

    def apply_directions(self, grads: list[torch.Tensor],
                         directions: dict[nn.Module, torch.Tensor]) -> list[torch.Tensor]:
        """Clip, add momentum and update the parameters; return the parameter changes.

        Args:
            grads: ``∇θ + ηθ`` per parameter (the fallback direction and the clipping's ``V``).
            directions: ``U`` per layer, shaped like its gradient matrix.
        """
        params = self.parameters_list()
        index = {id(p): i for i, p in enumerate(params)}
        updates = [g.clone() for g in grads]
        for layer, matrix in directions.items():
            weight, bias = split_parameter_matrix(layer, matrix)
            updates[index[id(layer.weight)]] = weight
            if bias is not None:
                updates[index[id(layer.bias)]] = bias
        lr = float(self.param_groups[0]["lr"])
        nu = 1.0
        if self.kl_clip > 0:
            inner = float(sum((u * g).sum() for u, g in zip(updates, grads, strict=True)))
            if inner > 0 and lr**2 * inner > self.kl_clip:
                nu = math.sqrt(self.kl_clip / (lr**2 * inner))
        changes = []
        with torch.no_grad():
            for p, u in zip(params, updates, strict=True):
                group, state = self._group(p), self.state[p]
                u = u * nu if nu != 1.0 else u
                if group["momentum"]:
                    if "momentum_buffer" in state:
                        u = state["momentum_buffer"].mul_(group["momentum"]).add_(u)
                    else:
                        state["momentum_buffer"] = u = u.clone()
                change = -group["lr"] * u
                p.add_(change)
                changes.append(change)
        self.step_info.update({"step_size": lr * nu, "lr": lr})
        return changes

    def curvature_step(self, *, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        first = self.state[self.parameters_list()[0]]
        step = first.get("step", 0)
        first["step"] = step + 1
        loss, grads, batches, output = self.forward_backward(
            inputs, targets, retain_graph=self.needs_graph(step))
        grads = self.with_weight_decay(grads)
        matrices = self.gradient_matrices(grads)
        with self.phase_timer.phase("curvature"):
            self.update_statistics(step, batches, matrices, output)
        with self.phase_timer.phase("solve"):
            directions = {layer: self.layer_direction(layer, matrix)
                          for layer, matrix in matrices.items()}
        with self.phase_timer.phase("update"):
            self.apply_directions(grads, directions)
        return loss

    # -- what a method adds ----------------------------------------------------------------

    def needs_graph(self, step: int) -> bool:
        """Whether step ``step`` (from 0) backpropagates more vectors after the loss's."""
        return False

    @abc.abstractmethod
    def update_statistics(self, step: int, batches: dict[nn.Module, LayerBatch],
                          matrices: dict[nn.Module, torch.Tensor], output: torch.Tensor) -> None:
        """Fold step ``step``'s batch into the state (``output``: the network's output, in the
        graph when :meth:`needs_graph`)."""

    @abc.abstractmethod
    def layer_direction(self, layer: nn.Module, matrix: torch.Tensor) -> torch.Tensor:
        """The preconditioned direction ``U`` for the layer's gradient matrix ``V``."""
