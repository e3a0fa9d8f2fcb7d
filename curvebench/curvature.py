"""Curvature core: gradients, GGN- and Hessian-vector products from one linearisation per step.

Every curvature optimizer builds one :class:`Linearization` per step (one forward pass and one
backward pass on the batch) and then applies

* ``J v``  — the Jacobian of the network output ``f(θ) ∈ ℝ^{N×D}`` with respect to the
  parameters, applied to a parameter-space vector (forward mode);
* ``Jᵀ u`` — its transpose applied to an output-space vector (reverse mode);
* ``G v = Jᵀ H J v`` — the generalized Gauss-Newton (GGN) matrix of the batch loss, with ``H``
  the closed-form Hessian of the loss with respect to the output, owned by
  :mod:`curvebench.losses` (Schraudolph 2002);
* ``∇²L v`` — the Hessian of the batch loss (double backward; for diagnostics)

as often as it likes, without running the network again.

**Vectors.** Parameter-space vectors are *flat* 1-D tensors: the concatenation of the
parameters in the order given to the linearisation (by default ``model.parameters()`` order
restricted to parameters that require gradients), in the parameters' dtype and device.
:func:`flatten` and :func:`unflatten` convert between flat vectors and lists of tensors.
Output-space vectors have the output's shape ``(N, D)``.

**How J v is computed (the choice and why).** The forward pass is kept with its autograd
graph, so ``Jᵀ w`` can be a plain backward through it (``retain_graph``); with the ``"layers"``
method below, where every layer has a reverse rule, it is the transposes of the layers' tangent
rules instead (:meth:`Linearization.vector_jacobian_product`; the gradient too, as ``Jᵀ ∂L/∂f``
with ``∂L/∂f`` from a backward through the loss alone), which write the parameter
gradients straight into the flat vector and differentiate an activation followed by max
pooling on the pooled gradient (measured, CPU, one thread, ``benchmarks/sgn_costs.py``'s
workloads: ``Jᵀ u`` on the 784-256-256-10 MLP at batch 512 2.85 → 2.63 ms; SGN steps ÷ SGD
steps in-process, MLP k = 1 2.57 → 2.55, k = 10 14.10 → 13.76, CNN k = 1 2.42 → 2.37).
For ``J v`` there are two methods (``jvp_method``), both without re-running the forward pass:

* ``"layers"`` (chosen automatically for an ``nn.Sequential``, nested ones included, of
  Linear, Conv1d/2d/3d, Tanh, Sigmoid, ReLU, LeakyReLU, max/average pooling, Flatten,
  Unflatten, Identity and eval-mode Dropout): the linearising forward pass records each layer's
  input and output, and ``J v`` is pushed through the layers with their tangent rules,
  ``t ← t Wᵀ + x V_Wᵀ + v_b`` (Linear, likewise Conv), ``t ← σ'(x) ⊙ t`` (activations, through
  the same fused kernels autograd uses for their backward), ``t ← t[argmax]`` (max pooling).
* ``"double_vjp"`` (any other model): the backward pass is run once with ``create_graph=True``
  from a cotangent leaf ``u`` set to ``∂L/∂f`` (so it also yields the gradient). ``u ↦ Jᵀ u`` is
  linear, so differentiating that recorded backward graph with respect to ``u`` along ``v``
  gives ``J v``.

Both cost about two matrix products per layer for ``J v`` and two for ``Jᵀ w`` (one fewer for
the first layer, which needs no input tangent) against three per layer for a gradient, so a
GGN product is about 1.2–1.3 gradients in theory. Measured with ``benchmarks/sgn_costs.py``
(CPU, one thread, batch 512, process CPU time, GGN product ÷ gradient): MLP 784-256-256-10
1.14 (``"layers"``) and 1.16 (``"double_vjp"``); ``mnist1d-cnn`` 1.06 against 2.35 (PyTorch's
convolution double-backward does much more work than two forward convolutions); ``digits-mlp``
0.89 against 1.06; a naive ``torch.func.jvp`` + ``torch.func.vjp`` per product, which re-runs the
forward pass, 2.5–3. ``torch.func.vjp`` of a cached ``vjp_fn`` (the double-vjp with functorch's
overhead) was no faster than ``"double_vjp"``; ``torch.func.linearize`` re-traces on every call.

**Stochastic layers.** The graph is recorded once, so dropout masks are fixed for every product
of a step; :meth:`Linearization.evaluate_loss` re-runs the network with the random-number state
captured before the linearising forward pass, so function evaluations (line searches,
reduction ratios) see the same masks. BatchNorm in training mode is refused
(:func:`check_supported`): its running statistics would be updated by every function
evaluation and its output for one sample depends on the whole batch.

Reference: Schraudolph 2002, "Fast curvature matrix-vector products for second-order gradient
descent"; Pearlmutter 1994, "Fast exact multiplication by the Hessian"; Gargiani, Zanelli,
Diehl, Hutter 2020, "On the promise of the stochastic generalized Gauss-Newton method for
training DNNs" (arXiv 2006.02409).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from curvebench.losses import CurvatureLoss
from curvebench.timing import NullPhaseTimer, PhaseTimer

__all__ = [
    "JVPMethod",
    "Linearization",
    "UnsupportedModelError",
    "check_supported",
    "flatten",
    "unflatten",
    "ggn_vector_product",
    "hessian_vector_product",
    "gradient",
]


#: How :meth:`Linearization.jacobian_vector_product` is computed: ``"layers"`` (forward-mode
#: rules per layer of an ``nn.Sequential``), ``"double_vjp"`` (any model), ``"auto"`` (layers
#: when every layer has a rule, else double-vjp).
JVPMethod = Literal["auto", "layers", "double_vjp"]


class UnsupportedModelError(ValueError):
    """The model contains a layer the curvature core cannot linearise (message is one line)."""


def check_supported(model: nn.Module) -> None:
    """Raise if ``model`` has layers whose curvature products would be wrong or have side effects.

    Raises:
        UnsupportedModelError: a BatchNorm (or other ``_NormBase`` with running statistics)
            layer in training mode. Put it in eval mode or remove it.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            raise UnsupportedModelError(
                f"layer {name or type(module).__name__!r} ({type(module).__name__}) is in "
                "training mode: Gauss-Newton products need per-sample outputs and side-effect-free "
                "function evaluations; call .eval() on it or use a model without BatchNorm"
            )


def flatten(tensors: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate ``tensors`` into one flat vector; ``None`` entries become zeros.

    Args:
        tensors: one tensor (or ``None``) per parameter.
        like: the parameters, giving shapes, dtype and device for ``None`` entries.

    Returns:
        A 1-D tensor of length ``Σ p.numel()``.
    """
    return torch.cat([
        (t if t is not None else torch.zeros_like(p)).reshape(-1)
        for t, p in zip(tensors, like, strict=True)
    ])


def unflatten(vector: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Split a flat ``vector`` into views shaped like ``like`` (no copy).

    Raises:
        ValueError: when the length does not match.
    """
    total = sum(p.numel() for p in like)
    if vector.dim() != 1 or vector.numel() != total:
        raise ValueError(f"expected a flat vector of length {total}, got shape "
                         f"{tuple(vector.shape)}")
    return [chunk.view_as(p) for chunk, p in
            zip(torch.split(vector, [p.numel() for p in like]), like, strict=True)]


class Linearization:
    """The network linearised on one batch: ``f(θ + v) ≈ f(θ) + J v``, with the loss's curvature.

    Construction runs the forward pass once (keeping its graph) and one backward pass that yields
    the gradient and records what forward-mode products need (see the module docstring; where
    every layer has a reverse rule, the gradient comes from the layers' reverse pass). Every
    product afterwards reuses them. Parameters must not be modified in place while products
    are still needed (autograd would refuse the stale graph).

    Args:
        model: the network; its output must be ``(N, D)``.
        loss: the mean-reduced loss, which owns ``H = ∂²L/∂f²``.
        inputs: the batch inputs.
        targets: the batch targets.
        params: the parameters to differentiate with respect to (default: the model's
            parameters that require gradients), defining the flat-vector layout.
        phase_timer: times the forward pass as ``"forward"`` and the gradient-and-linearisation
            backward pass as ``"backward"``.
        jvp_method: how ``J v`` is computed (see the module docstring); ``"auto"`` picks
            ``"layers"`` where every layer has a tangent rule, else ``"double_vjp"``.

    Raises:
        UnsupportedModelError: see :func:`check_supported`; also ``jvp_method="layers"`` on a
            model that is not a chain of supported layers.
        ValueError: when the model's output is not 2-D or ``jvp_method`` is unknown.

    Attributes:
        params: the parameters, in flat-vector order.
        output: the detached network output ``f(θ)``, ``(N, D)``.
        loss_value: the detached batch loss ``L(f(θ), y)`` (0-d tensor).
        gradient: the flat gradient ``∇L = Jᵀ ∂L/∂f``.
        output_gradient: ``∂L/∂f``, ``(N, D)``.
        jvp_method: the method in use, ``"layers"`` or ``"double_vjp"``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        loss: CurvatureLoss,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        params: Sequence[torch.Tensor] | None = None,
        phase_timer: PhaseTimer | None = None,
        jvp_method: JVPMethod = "auto",
    ) -> None:
        if jvp_method not in ("auto", "layers", "double_vjp"):
            raise ValueError(f"jvp_method must be 'auto', 'layers' or 'double_vjp', got "
                             f"{jvp_method!r}")
        check_supported(model)
        timer = phase_timer if phase_timer is not None else NullPhaseTimer()
        self.model = model
        self.loss = loss
        self.inputs = inputs
        self.targets = targets
        self.params = list(params) if params is not None else [
            p for p in model.parameters() if p.requires_grad
        ]
        self._rng_state = torch.random.get_rng_state()
        self._cuda_rng_state = (torch.cuda.get_rng_state_all()
                                if torch.cuda.is_available() and torch.cuda.is_initialized()
                                else None)
        layers = _layer_chain(model, self.params) if jvp_method != "double_vjp" else None
        if jvp_method == "layers" and layers is None:
            raise UnsupportedModelError(
                "jvp_method='layers' needs an nn.Sequential of supported layers "
                f"({', '.join(t.__name__ for t in _TANGENT_RULES)}) owning all parameters")
        self.jvp_method: JVPMethod = "layers" if layers is not None else "double_vjp"
        self._layers: list[_CapturedLayer] = []
        with torch.enable_grad():
            with timer.phase("forward"):
                if layers is not None:
                    output = _capturing_forward(model, inputs, layers, self._layers)
                    if not self._layers:  # the layers did not run once each, in order
                        if jvp_method == "layers":
                            raise UnsupportedModelError(
                                "jvp_method='layers': the model did not run its layers once "
                                "each, in order")
                        self.jvp_method = "double_vjp"
                else:
                    output = model(inputs)
                if output.dim() != 2:
                    raise ValueError(f"the model's output must be (N, D), got shape "
                                     f"{tuple(output.shape)}")
                double_vjp = self.jvp_method == "double_vjp"
                self._reverse_by_layers = (
                    not double_vjp and bool(self._layers)
                    and all(_has_input_gradient_rule(layer.module) for layer in self._layers)
                    and any(layer.weight is not None or layer.bias is not None
                            for layer in self._layers))
                detached = output.detach().requires_grad_(True) if double_vjp else output
                loss_value = loss(detached, targets)
            with timer.phase("backward"):
                if double_vjp:
                    (output_gradient,) = torch.autograd.grad(loss_value, detached)
                    # The cotangent is a leaf so that the backward graph below is
                    # differentiable in it; its value ∂L/∂f makes the same pass return the
                    # gradient.
                    self._cotangent = output_gradient.detach().requires_grad_(True)
                    grads = torch.autograd.grad(output, self.params, self._cotangent,
                                                create_graph=True, retain_graph=True,
                                                allow_unused=True)
                elif self._reverse_by_layers:  # ∂L/∂f, then the gradient by the layers' rules
                    (output_gradient,) = torch.autograd.grad(loss_value, output,
                                                             retain_graph=True)
                    self._cotangent = output_gradient
                    self.gradient = _layerwise_vjp(self._layers, output_gradient, self.params)
                    grads = []
                else:  # one backward pass gives ∂L/∂f and the gradient
                    output_gradient, *grads = torch.autograd.grad(
                        loss_value, [output, *self.params], retain_graph=True,
                        allow_unused=True)
                    self._cotangent = output_gradient
        self._output_graph = output
        self._vjp_graph = [g for g in grads if g is not None and g.requires_grad]
        self._vjp_index = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        self.output = output.detach()
        self.loss_value = loss_value.detach()
        self.output_gradient = output_gradient.detach() if double_vjp else output_gradient
        if not self._reverse_by_layers:
            with torch.no_grad():
                self.gradient = flatten(grads, self.params)
        self._hessian_graph: list[torch.Tensor | None] | None = None
        self._input_layer = _input_layer_index(self._layers)
        self.input_layer_tangent: torch.Tensor | None = None

    @property
    def graph_output(self) -> torch.Tensor:
        """The network output still in the forward graph (retained), for callers that
        backpropagate further vectors through this step's forward pass (e.g. K-FAC's factors)."""
        return self._output_graph

    @property
    def num_parameters(self) -> int:
        """Length of the flat parameter vectors."""
        return sum(p.numel() for p in self.params)

    def jacobian_vector_product(self, vector: torch.Tensor) -> torch.Tensor:
        """``J v``: the output's directional derivative along the flat parameter vector ``v``.

        Returns:
            A tensor shaped like :attr:`output`.
        """
        chunks = unflatten(vector, self.params)
        if self.jvp_method == "layers":
            jv, self.input_layer_tangent = _layerwise_jvp(self._layers, chunks,
                                                          keep=self._input_layer)
            return jv
        if not self._vjp_graph:
            return torch.zeros_like(self.output)
        (jv,) = torch.autograd.grad(
            self._vjp_graph, self._cotangent, [chunks[i] for i in self._vjp_index],
            retain_graph=True, allow_unused=True,
        )
        return jv if jv is not None else torch.zeros_like(self.output)

    def vector_jacobian_product(self, output_vector: torch.Tensor) -> torch.Tensor:
        """``Jᵀ u`` for an output-space ``u`` shaped like :attr:`output`; returns a flat vector.

        With the ``"layers"`` method, and every layer of the chain with a reverse rule
        (:func:`_has_input_gradient_rule`), by the layers' own rules (:func:`_layerwise_vjp`:
        the parameter gradients straight into the flat vector, and an activation's derivative
        on the pooled gradient before unpooling); else one backward through the retained graph.
        """
        if self._reverse_by_layers:
            return _layerwise_vjp(self._layers, output_vector, self.params)
        grads = torch.autograd.grad(self._output_graph, self.params, output_vector,
                                    retain_graph=True, allow_unused=True)
        return flatten(grads, self.params)

    def ggn_vector_product(self, vector: torch.Tensor) -> torch.Tensor:
        """``G v = Jᵀ H J v`` with ``H`` the loss's closed-form output Hessian; flat in, flat out.

        ``G`` is symmetric positive semi-definite because every loss here is convex in ``f``.
        """
        jv = self.jacobian_vector_product(vector)
        hjv = self.loss.hessian_vector_product(self.output, jv)
        return self.vector_jacobian_product(hjv)

    def ggn_quadratic_form(self, vector: torch.Tensor) -> torch.Tensor:
        """``vᵀ G v = (J v)ᵀ H (J v)`` (0-dimensional): the forward-mode half of a product.

        Sets :attr:`input_layer_tangent` as a product does.
        """
        jv = self.jacobian_vector_product(vector)
        return torch.dot(jv.reshape(-1),
                         self.loss.hessian_vector_product(self.output, jv).reshape(-1))

    def hessian_vector_product(self, vector: torch.Tensor) -> torch.Tensor:
        """``∇²L v``: the exact Hessian of the batch loss times ``v`` (Pearlmutter 1994).

        The first call records the gradient's graph (one extra backward pass through the
        retained forward graph); later calls cost one double-backward each.
        """
        if self._hessian_graph is None:
            with torch.enable_grad():
                value = self.loss(self._output_graph, self.targets)
                self._hessian_graph = list(torch.autograd.grad(
                    value, self.params, create_graph=True, retain_graph=True, allow_unused=True))
        pairs = [(g, v) for g, v in zip(self._hessian_graph, unflatten(vector, self.params),
                                         strict=True) if g is not None and g.requires_grad]
        if not pairs:
            return torch.zeros_like(vector)
        hv = torch.autograd.grad([g for g, _ in pairs], self.params, [v for _, v in pairs],
                                 retain_graph=True, allow_unused=True)
        return flatten(hv, self.params)

    @property
    def tracks_input_layer(self) -> bool:
        """Whether products keep :attr:`input_layer_tangent` (see :meth:`evaluate_loss`).

        True for the ``"layers"`` method when the first layer with parameters is an
        ``nn.Linear`` with at least :data:`TRACKED_FAN_IN` inputs and an optimised weight, its
        input is the batch itself (only parameter-free layers before it), and no layer works
        in place. Its output is affine in its parameters, so at ``θ + αd`` it is
        ``f₁(θ) + α (J₁ d)`` exactly, with ``J₁ d`` a linear combination of the ``J₁ v`` of
        CG's products; a wide input (784 pixels) makes that layer most of a forward pass. Not
        for a first convolution: measured on the 1→32-channel 3×3 one of
        ``benchmarks/sgn_costs.py``'s CNN, carrying its output-sized tangent through CG cost as
        much as re-running it (CPU, one thread).
        """
        return self._input_layer is not None

    @torch.no_grad()
    def evaluate_loss(self, *, regularizer: float = 0.0, step: float = 1.0,
                      input_layer_tangent: torch.Tensor | None = None) -> torch.Tensor:
        """Batch loss at the parameters' *current* values, with this step's dropout masks.

        Re-runs the forward pass (no graph) with the random-number state captured before the
        linearising pass, so stochastic layers draw the same masks.

        Args:
            regularizer: adds ``(regularizer / 2) ‖θ‖²`` over :attr:`params` (weight decay).
            step: ``α`` when ``input_layer_tangent`` is given.
            input_layer_tangent: ``J₁ d``, the input layer's output tangent along ``d``
                (combined from :attr:`input_layer_tangent` of the products ``d`` is made of),
                when the parameters now hold ``θ + α d`` (see :attr:`tracks_input_layer`):
                the input layer's output is then ``f₁(θ) + α J₁ d`` and only the layers
                after it run.

        Returns:
            The detached scalar loss.

        Raises:
            ValueError: ``input_layer_tangent`` when :attr:`tracks_input_layer` is false.
        """
        if input_layer_tangent is not None and self._input_layer is None:
            raise ValueError("this linearisation does not track its input layer")
        with torch.random.fork_rng(devices=[] if self._cuda_rng_state is None else None):
            torch.random.set_rng_state(self._rng_state)
            if self._cuda_rng_state is not None:
                torch.cuda.set_rng_state_all(self._cuda_rng_state)
            if input_layer_tangent is None:
                output = self.model(self.inputs)
            else:
                first = self._input_layer
                output = torch.add(self._layers[first].output, input_layer_tangent, alpha=step)
                for layer in self._layers[first + 1:]:
                    output = layer.module(output)
            value = self.loss(output, self.targets)
        if regularizer:
            value = value + 0.5 * regularizer * sum((p * p).sum() for p in self.params)
        return value.detach()


def gradient(model: nn.Module, *, loss: CurvatureLoss, inputs: torch.Tensor,
             targets: torch.Tensor) -> torch.Tensor:
    """Flat gradient ``∇_θ L`` of the batch loss over the parameters that require gradients."""
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.enable_grad():
        value = loss(model(inputs), targets)
        grads = torch.autograd.grad(value, params, allow_unused=True)
    return flatten(grads, params)


def ggn_vector_product(model: nn.Module, *, loss: CurvatureLoss, inputs: torch.Tensor,
                       targets: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """One-shot ``G v = Jᵀ H J v`` (builds a :class:`Linearization`; reuse one for many ``v``)."""
    return Linearization(model, loss=loss, inputs=inputs, targets=targets).ggn_vector_product(
        vector)


def hessian_vector_product(model: nn.Module, *, loss: CurvatureLoss, inputs: torch.Tensor,
                           targets: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """One-shot ``∇²L v`` (builds a :class:`Linearization`; reuse one for many ``v``)."""
    lin = Linearization(model, loss=loss, inputs=inputs, targets=targets)
    return lin.hessian_vector_product(vector)


# --- Layer-wise forward mode ---------------------------------------------------------------
#
# For an nn.Sequential of layers with known tangent rules, J v is propagated layer by layer from
# the inputs and outputs captured during the linearising forward pass:
#     t_out = (∂layer/∂input) t_in + (∂layer/∂θ_layer) v_layer,
# e.g. t_out = t_in Wᵀ + x V_Wᵀ + v_b for a Linear layer and t_out = σ'(x) ⊙ t_in for an
# activation. That is the same arithmetic as the double-vjp trick without autograd's
# bookkeeping, and it avoids PyTorch's convolution double-backward, which was measured to cost
# about twice a forward convolution per product here.


@dataclass
class _CapturedLayer:
    """One layer of the chain with what its tangent rule needs."""

    module: nn.Module
    weight: int | None  # index of the weight in the flat layout (None: not optimised/absent)
    bias: int | None
    inputs: torch.Tensor | None = None
    output: torch.Tensor | None = None
    indices: torch.Tensor | None = None  # max-pooling argmax


Tangent = torch.Tensor | None  # None: the zero tangent


def _linear_rule(layer: _CapturedLayer, t: Tangent, chunks: list[torch.Tensor]) -> Tangent:
    module = layer.module
    out = None if t is None else F.linear(t, module.weight)  # under no_grad
    if layer.weight is not None or layer.bias is not None:
        v_weight = chunks[layer.weight] if layer.weight is not None else None
        v_bias = chunks[layer.bias] if layer.bias is not None else None
        if v_weight is not None:
            own = F.linear(layer.inputs, v_weight, v_bias)
        else:
            own = v_bias.expand_as(layer.output)
        out = own if out is None else out.add_(own)
    return out


def _conv_rule(layer: _CapturedLayer, t: Tangent, chunks: list[torch.Tensor]) -> Tangent:
    module = layer.module
    out = None if t is None else module._conv_forward(t, module.weight, None)  # no_grad
    if layer.weight is not None or layer.bias is not None:
        v_weight = chunks[layer.weight] if layer.weight is not None else None
        v_bias = chunks[layer.bias] if layer.bias is not None else None
        if v_weight is not None:
            own = module._conv_forward(layer.inputs, v_weight, v_bias)
        else:
            shape = (1, -1) + (1,) * (layer.output.dim() - 2)
            own = v_bias.view(shape).expand_as(layer.output)
        out = own if out is None else out.add_(own)
    return out


def _activation(backward: Callable[[torch.Tensor, _CapturedLayer], torch.Tensor]):
    """Rule ``t ↦ σ'(x) ⊙ t`` through the fused kernel autograd itself uses for ``σ``."""
    def rule(layer: _CapturedLayer, t: Tangent, chunks: list[torch.Tensor]) -> Tangent:
        return None if t is None else backward(t, layer)
    return rule


def _linear_map(layer: _CapturedLayer, t: Tangent, chunks: list[torch.Tensor]) -> Tangent:
    return None if t is None else layer.module(t)


def _max_pool_rule(layer: _CapturedLayer, t: Tangent, chunks: list[torch.Tensor]) -> Tangent:
    if t is None:
        return None
    gathered = t.flatten(2).gather(2, layer.indices.flatten(2))
    return gathered.view_as(layer.output)


#: ``(t, y) ↦ σ'(x) ⊙ t`` from the output ``y = σ(x)``, for activations whose derivative is a
#: function of their output.
_OUTPUT_DERIVATIVES: dict[type[nn.Module], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    nn.Tanh: torch.ops.aten.tanh_backward,
    nn.Sigmoid: torch.ops.aten.sigmoid_backward,
    nn.ReLU: lambda t, y: torch.ops.aten.threshold_backward(t, y, 0),
}

_TANGENT_RULES: dict[type[nn.Module], Callable[..., Tangent]] = {
    nn.Linear: _linear_rule,
    nn.Conv1d: _conv_rule,
    nn.Conv2d: _conv_rule,
    nn.Conv3d: _conv_rule,
    **{kind: _activation(lambda t, layer, derivative=derivative: derivative(t, layer.output))
       for kind, derivative in _OUTPUT_DERIVATIVES.items()},
    nn.LeakyReLU: _activation(lambda t, layer: torch.ops.aten.leaky_relu_backward(
        t, layer.inputs, layer.module.negative_slope, False)),
    nn.Flatten: _linear_map,
    nn.Unflatten: _linear_map,
    nn.Identity: _linear_map,
    nn.Dropout: _linear_map,  # only in eval mode (identity); see _layer_chain
    nn.AvgPool1d: _linear_map,
    nn.AvgPool2d: _linear_map,
    nn.AvgPool3d: _linear_map,
    nn.AdaptiveAvgPool1d: _linear_map,
    nn.AdaptiveAvgPool2d: _linear_map,
    nn.MaxPool1d: _max_pool_rule,
    nn.MaxPool2d: _max_pool_rule,
}

_MAX_POOL = (nn.MaxPool1d, nn.MaxPool2d)


def _leaves(module: nn.Module) -> list[nn.Module]:
    """The layers of nested plain ``nn.Sequential`` containers, in execution order."""
    if (isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward
            and "forward" not in vars(module)):
        return [leaf for child in module for leaf in _leaves(child)]
    return [module]


def _layer_chain(model: nn.Module, params: Sequence[torch.Tensor]) -> list[_CapturedLayer] | None:
    """The model as a chain of layers with tangent rules, or ``None`` when it is not one."""
    leaves = _leaves(model)
    if len({id(leaf) for leaf in leaves}) != len(leaves):
        return None  # a layer used twice
    index = {id(p): i for i, p in enumerate(params)}
    covered: set[int] = set()
    chain = []
    for leaf in leaves:
        if type(leaf) not in _TANGENT_RULES or (isinstance(leaf, nn.Dropout) and leaf.training):
            return None
        if isinstance(leaf, _MAX_POOL) and leaf.return_indices:
            return None  # its output is a tuple: not a chain of tensors
        if any(True for _ in leaf.buffers()):
            return None
        weight = getattr(leaf, "weight", None)
        bias = getattr(leaf, "bias", None)
        own = [index.get(id(p)) if isinstance(p, torch.Tensor) else None for p in (weight, bias)]
        covered.update(i for i in own if i is not None)
        if {id(p) for p in leaf.parameters()} - {id(p) for p in (weight, bias)}:
            return None
        chain.append(_CapturedLayer(module=leaf, weight=own[0], bias=own[1]))
    if covered != set(range(len(params))):
        return None  # some optimised parameter lives outside the chain
    return chain


def _capturing_forward(model: nn.Module, inputs: torch.Tensor, chain: list[_CapturedLayer],
                       captured: list[_CapturedLayer]) -> torch.Tensor:
    """Run ``model(inputs)`` recording each layer's input and output (detached) into ``captured``.

    ``captured`` stays empty when the layers did not run exactly once each, in chain order.
    """
    order: list[int] = []

    def hook_for(position: int):
        def hook(module, args, output):
            layer = chain[position]
            if type(module) in _MAX_POOL:  # the pre-hook asked for the argmax: take it
                output, layer.indices = output
            # Kept as they are (in the graph): the tangent rules and evaluate_loss read them
            # under no_grad, and a detached view per tensor is one more operation per layer.
            layer.inputs = args[0]
            layer.output = output
            order.append(position)
            return output
        return hook

    def ask_for_indices(module, args) -> None:
        module.return_indices = True

    pools = [layer.module for layer in chain if type(layer.module) in _MAX_POOL]
    saved = [pool.return_indices for pool in pools]
    handles = [layer.module.register_forward_hook(hook_for(i)) for i, layer in enumerate(chain)]
    handles += [pool.register_forward_pre_hook(ask_for_indices) for pool in pools]
    try:
        output = model(inputs)
    finally:
        for handle in handles:
            handle.remove()
        for pool, value in zip(pools, saved, strict=True):
            pool.return_indices = value
    if order == list(range(len(chain))):
        captured.extend(chain)
    return output


#: Smallest input width for which :attr:`Linearization.tracks_input_layer` holds. Measured with
#: SGN on CPU, one thread: at 784 inputs (batch 512) a function evaluation fell from 0.50 to
#: 0.23 SGD steps; at 40 and 64 inputs (``mnist1d-mlp``, ``digits-mlp``, batch 128) the
#: bookkeeping cost as much as the layer (steps 4–5% slower at k = 1, 0–3% faster at k = 10).
TRACKED_FAN_IN = 128


def _input_layer_index(chain: list[_CapturedLayer]) -> int | None:
    """Index of the chain's first layer with parameters if it is a ``Linear`` layer with an
    optimised weight (see :attr:`Linearization.tracks_input_layer`), else ``None``.

    Also ``None`` when a layer works in place: it would overwrite the captured output.
    """
    if any(getattr(layer.module, "inplace", False) for layer in chain):
        return None
    for i, layer in enumerate(chain):
        if layer.weight is not None or layer.bias is not None:
            wide = type(layer.module) is nn.Linear and layer.module.in_features >= TRACKED_FAN_IN
            return i if wide and layer.weight is not None else None
    return None


@torch.no_grad()
def _layerwise_jvp(chain: list[_CapturedLayer], chunks: list[torch.Tensor], *,
                   keep: int | None = None) -> tuple[torch.Tensor, Tangent]:
    """``J v`` through the chain, and the tangent after layer ``keep`` (``None`` if not asked).

    No rule modifies its input tangent in place, so the kept tangent stays valid. An activation
    of :data:`_OUTPUT_DERIVATIVES` followed by max pooling takes the pooling first: ``(σ'(x) ⊙
    t)[argmax] = σ'(x)[argmax] ⊙ t[argmax]``, and ``σ(x)[argmax]`` is the pool's output, so the
    derivative is applied to the pooled tangent (a quarter of the elements for 2×2 windows) with
    the same arithmetic on the same numbers.
    """
    tangent: Tangent = None
    kept: Tangent = None
    i = 0
    while i < len(chain):
        layer = chain[i]
        derivative = _OUTPUT_DERIVATIVES.get(type(layer.module))
        pool = chain[i + 1] if i + 1 < len(chain) else None
        if (derivative is not None and tangent is not None and pool is not None
                and type(pool.module) in _MAX_POOL and keep not in (i, i + 1)):
            tangent = derivative(_max_pool_rule(pool, tangent, chunks), pool.output)
            i += 2
            continue
        tangent = _TANGENT_RULES[type(layer.module)](layer, tangent, chunks)
        if i == keep:
            kept = tangent
        i += 1
    output = tangent if tangent is not None else torch.zeros_like(chain[-1].output)
    return output, kept


# -- reverse mode through a chain: Jᵀ u by the layers' own rules --------------------------------
#
# The transposes of the tangent rules above. Autograd's backward through an activation followed
# by max pooling applies the activation's derivative to the unpooled gradient, a tensor the
# size of the activation; these rules apply it to the pooled gradient before unpooling (the
# reverse of _layerwise_jvp's pooled tangent), a quarter of the elements behind 2×2 windows.


def _conv_backward(module: nn.Module, g: torch.Tensor, inputs: torch.Tensor, *,
                   mask: tuple[bool, bool, bool]) -> tuple[torch.Tensor | None, ...]:
    """``(gradient at the input, at the weight, at the bias)`` of a convolution, those in
    ``mask`` (one kernel call, as autograd's)."""
    return torch.ops.aten.convolution_backward(
        g, inputs, module.weight, [module.out_channels] if mask[2] else None, module.stride,
        module.padding, module.dilation, False, [0] * len(module.stride), module.groups,
        list(mask))


def _unpool(module: nn.Module, g: torch.Tensor, inputs: torch.Tensor,
            indices: torch.Tensor) -> torch.Tensor:
    """The gradient ``g`` of a ``MaxPool2d``'s output at its input (autograd's kernel: a
    zeroed input-sized tensor with ``g`` added at the argmax positions)."""
    def pair(value: int | Sequence[int]) -> list[int]:
        return [value, value] if isinstance(value, int) else list(value)

    return torch.ops.aten.max_pool2d_with_indices_backward(
        g, inputs, pair(module.kernel_size), pair(module.stride), pair(module.padding),
        pair(module.dilation), module.ceil_mode, indices)


def _reshape_back(module: nn.Module, g: torch.Tensor, inputs: torch.Tensor,
                  output: torch.Tensor, indices: torch.Tensor | None) -> torch.Tensor:
    """The gradient of a reshaping layer's output in its input's shape (any leading batch of
    vectors kept)."""
    return g.reshape(*g.shape[:g.dim() - output.dim()], *inputs.shape)


#: ``(module, g, input, output, argmax) ↦ gradient at the input`` of a layer, for a gradient
#: ``g`` at its output; ``g`` may carry a leading batch of vectors for the elementwise rules,
#: Linear and the reshapes.
_INPUT_GRADIENT_RULES: dict[type[nn.Module], Callable[..., torch.Tensor]] = {
    nn.Linear: lambda module, g, inputs, output, indices: g @ module.weight,
    nn.Conv1d: lambda module, g, inputs, output, indices: _conv_backward(
        module, g, inputs, mask=(True, False, False))[0],
    nn.Conv2d: lambda module, g, inputs, output, indices: _conv_backward(
        module, g, inputs, mask=(True, False, False))[0],
    **{kind: (lambda module, g, inputs, output, indices, derivative=derivative:
              derivative(g, output))
       for kind, derivative in _OUTPUT_DERIVATIVES.items()},
    nn.LeakyReLU: lambda module, g, inputs, output, indices: torch.ops.aten.leaky_relu_backward(
        g, inputs, module.negative_slope, False),
    nn.MaxPool2d: lambda module, g, inputs, output, indices: _unpool(module, g, inputs, indices),
    nn.Flatten: _reshape_back,
    nn.Unflatten: _reshape_back,
    nn.Identity: lambda module, g, inputs, output, indices: g,
}


def _has_input_gradient_rule(module: nn.Module) -> bool:
    """Whether :data:`_INPUT_GRADIENT_RULES` takes a gradient back through ``module``: a layer
    with a rule that does not work in place, convolutions zero-padded by numbers, max pools
    that return no indices."""
    if type(module) not in _INPUT_GRADIENT_RULES or getattr(module, "inplace", False):
        return False
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return not isinstance(module.padding, str) and module.padding_mode == "zeros"
    return not (isinstance(module, nn.MaxPool2d) and module.return_indices)


def _input_gradient(chain: Sequence[tuple[nn.Module, torch.Tensor, torch.Tensor,
                                         torch.Tensor | None]],
                   index: int, g: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The gradient ``g`` at the output of ``chain[index]`` (entries ``(module, input, output,
    argmax)``) taken back through that layer, and the index of the layer whose output it is
    then at: ``index − 1``, or ``index − 2`` where an activation of :data:`_OUTPUT_DERIVATIVES`
    and its max pooling are taken together (the derivative on the pooled gradient)."""
    module, inputs, output, indices = chain[index]
    previous = chain[index - 1][0] if index > 0 else None
    if isinstance(module, nn.MaxPool2d) and type(previous) in _OUTPUT_DERIVATIVES:
        g = _OUTPUT_DERIVATIVES[type(previous)](g, output)
        return _unpool(module, g, inputs, indices), index - 2
    return _INPUT_GRADIENT_RULES[type(module)](module, g, inputs, output, indices), index - 1


@torch.no_grad()
def _layerwise_vjp(chain: list[_CapturedLayer], cotangent: torch.Tensor,
                   params: Sequence[torch.Tensor]) -> torch.Tensor:
    """``Jᵀ u`` through the chain, flat: each layer's parameter gradients written into their
    place in the flat vector, the gradient taken back by :func:`_input_gradient` down to the
    first layer with parameters."""
    flat = cotangent.new_empty(sum(p.numel() for p in params))
    chunks = unflatten(flat, params)
    entries = [(layer.module, layer.inputs, layer.output, layer.indices) for layer in chain]
    first = min(i for i, layer in enumerate(chain)
                if layer.weight is not None or layer.bias is not None)
    g, i = cotangent, len(chain) - 1
    while True:
        layer = chain[i]
        module = layer.module
        if isinstance(module, nn.Linear) and (layer.weight is not None or layer.bias is not None):
            rows = g.reshape(-1, module.out_features)
            if layer.weight is not None:
                torch.mm(rows.T, layer.inputs.reshape(-1, module.in_features),
                         out=chunks[layer.weight])
            if layer.bias is not None:
                torch.sum(rows, dim=0, out=chunks[layer.bias])
        elif layer.weight is not None or layer.bias is not None:  # a convolution
            mask = (i > first, layer.weight is not None, layer.bias is not None)
            back, weight, bias = _conv_backward(module, g, layer.inputs, mask=mask)
            for position, value in ((layer.weight, weight), (layer.bias, bias)):
                if position is not None:
                    chunks[position].copy_(value)
            if i == first:
                break
            g, i = back, i - 1
            continue
        if i == first:
            break
        g, i = _input_gradient(entries, i, g)
    return flat
